// SPDX-License-Identifier: Apache-2.0
/* Hash functions and request-key helpers. */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "core/hash.h"
#include "lb/lb.h"

#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME  0x100000001b3ull

uint64_t lb_hash(const void *data, size_t len)
{
        const unsigned char *p = data;
        uint64_t h = FNV64_OFFSET;
        for (size_t i = 0; i < len; i++) {
                h ^= p[i];
                h *= FNV64_PRIME;
        }
        /* Fold the length in so that prefixes of zero bytes differ. */
        return hash_fmix64(h ^ (uint64_t)len);
}

uint64_t lb_mix64(uint64_t x)
{
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

static bool ows(char c)
{
        return c == ' ' || c == '\t';
}

uint64_t lb_hash_header_value(const char *value, size_t len)
{
        if (!value)
                len = 0;
        while (len > 0 && ows(value[0])) {
                value++;
                len--;
        }
        while (len > 0 && ows(value[len - 1]))
                len--;
        return lb_hash(value, len);
}

uint64_t lb_hash_source_ip(const struct sockaddr_storage *addr)
{
        if (addr->ss_family == AF_INET) {
                const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
                return lb_hash(&a->sin_addr, sizeof(a->sin_addr));
        }
        if (addr->ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
                /* An IPv4-mapped address hashes like the plain IPv4 one. */
                if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
                        return lb_hash(&a->sin6_addr.s6_addr[12], 4);
                return lb_hash(&a->sin6_addr, sizeof(a->sin6_addr));
        }
        return lb_hash(NULL, 0);
}

/* Cookie header (RFC 6265 section 4.2): cookie-pair *( ";" SP cookie-pair ),
 * read leniently: any whitespace around pairs, names compared exactly. */
int lb_hash_cookie(const char *hdr, size_t len, const char *name, uint64_t *out)
{
        if (!hdr || !name || !name[0])
                return -ENOENT;
        size_t nlen = strlen(name);
        size_t i = 0;
        while (i < len) {
                while (i < len && (ows(hdr[i]) || hdr[i] == ';'))
                        i++;
                size_t start = i;
                while (i < len && hdr[i] != ';')
                        i++;
                size_t end = i; /* pair is hdr[start, end) */
                while (end > start && ows(hdr[end - 1]))
                        end--;
                const char *eq = memchr(hdr + start, '=', end - start);
                if (!eq)
                        continue;
                size_t klen = (size_t)(eq - (hdr + start));
                while (klen > 0 && ows(hdr[start + klen - 1]))
                        klen--;
                if (klen != nlen || memcmp(hdr + start, name, nlen) != 0)
                        continue;
                const char *v = eq + 1;
                size_t vlen = (size_t)(hdr + end - v);
                while (vlen > 0 && ows(v[0])) {
                        v++;
                        vlen--;
                }
                /* A quoted value hashes like the unquoted one. */
                if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
                        v++;
                        vlen -= 2;
                }
                if (vlen == 0)
                        return -ENOENT;
                *out = lb_hash(v, vlen);
                return 0;
        }
        return -ENOENT;
}
