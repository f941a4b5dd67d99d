/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers shared by the discovery unit tests (test_discovery.c, test_k8s.c):
 * a file's whole text, and the heap's bytes in use (memory bounded under
 * churn). Include after <cmocka.h>. */
#ifndef SHUNT_TEST_DISC_UTIL_H
#define SHUNT_TEST_DISC_UTIL_H

#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

/* The file at path, NUL-terminated, its length in *len (the test fails when
 * it cannot be read). The caller frees it. */
static inline char *slurp_path(const char *path, size_t *len)
{
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *buf = malloc((size_t)n + 1);
        assert_non_null(buf);
        assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
        buf[n] = '\0';
        fclose(f);
        *len = (size_t)n;
        return buf;
}

/* Bytes in use: the sanitizer's own count under ASan (its allocator replaces
 * glibc's, so mallinfo2 would not see it), mallinfo2 otherwise. */
size_t __sanitizer_get_current_allocated_bytes(void) __attribute__((weak));

static inline size_t bytes_in_use(void)
{
        if (__sanitizer_get_current_allocated_bytes)
                return __sanitizer_get_current_allocated_bytes();
        return mallinfo2().uordblks;
}

#endif
