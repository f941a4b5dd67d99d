/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers shared by the C benchmark programs: a monotonic clock in
 * nanoseconds and percentiles of sorted samples. */
#ifndef SHUNT_BENCH_UTIL_H
#define SHUNT_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* qsort comparator for uint64_t samples. */
static inline int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* The p-quantile (0..1) of n sorted samples; 0 when there are none. */
static inline uint64_t pct(const uint64_t *v, size_t n, double p)
{
        if (!n)
                return 0;
        size_t i = (size_t)(p * (double)(n - 1) + 0.5);
        return v[i < n ? i : n - 1];
}

#endif
