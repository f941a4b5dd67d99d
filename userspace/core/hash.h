/* SPDX-License-Identifier: Apache-2.0 */
/* The one 64-bit mixer the registry and the load balancer hash with. */
#ifndef SHUNT_CORE_HASH_H
#define SHUNT_CORE_HASH_H

#include <stdint.h>

/* murmur3's 64-bit finalizer: every input bit affects every output bit. */
static inline uint64_t hash_fmix64(uint64_t k)
{
        k ^= k >> 33;
        k *= 0xff51afd7ed558ccdull;
        k ^= k >> 33;
        k *= 0xc4ceb9fe1a85ec53ull;
        k ^= k >> 33;
        return k;
}

#endif
