// SPDX-License-Identifier: Apache-2.0
/* DNS backend pieces: the TTL read from an answer's records (names with
 * compression pointers, several types, the RFC 2181 rule for a TTL with the
 * top bit set, truncated and malformed messages). The lookups themselves
 * run against dnsmasq in tests/integration/test_dns.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "discovery/dns.h"

static size_t put_rr(unsigned char *p, int type, uint32_t ttl, const unsigned char *rdata,
                     size_t rdlen)
{
        size_t o = 0;
        p[o++] = 0xc0; /* a pointer to the question's name at 12 */
        p[o++] = 12;
        p[o++] = (unsigned char)(type >> 8);
        p[o++] = (unsigned char)type;
        p[o++] = 0;
        p[o++] = 1;
        p[o++] = (unsigned char)(ttl >> 24);
        p[o++] = (unsigned char)(ttl >> 16);
        p[o++] = (unsigned char)(ttl >> 8);
        p[o++] = (unsigned char)ttl;
        p[o++] = (unsigned char)(rdlen >> 8);
        p[o++] = (unsigned char)rdlen;
        memcpy(p + o, rdata, rdlen);
        return o + rdlen;
}

/* A response for "web.test" with n answers of (type, ttl). */
static int build(unsigned char *msg, const int *types, const uint32_t *ttls, int n)
{
        static const unsigned char hdr[12] = {0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0};
        static const unsigned char q[] = {3, 'w', 'e', 'b', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
        static const unsigned char a4[4] = {10, 0, 0, 1};
        static const unsigned char srv[] = {0, 1, 0, 2, 0x1f, 0x90, 3, 'e', 'p', 'a', 0xc0, 16};
        memcpy(msg, hdr, sizeof(hdr));
        msg[7] = (unsigned char)n;
        size_t o = sizeof(hdr);
        memcpy(msg + o, q, sizeof(q));
        o += sizeof(q);
        for (int i = 0; i < n; i++)
                o += types[i] == 33 ? put_rr(msg + o, 33, ttls[i], srv, sizeof(srv))
                                    : put_rr(msg + o, types[i], ttls[i], a4, sizeof(a4));
        return (int)o;
}

static void test_min_ttl(void **state)
{
        (void)state;
        unsigned char msg[512];
        const int t1[] = {1, 1, 33};
        const uint32_t l1[] = {300, 30, 60};
        int len = build(msg, t1, l1, 3);
        assert_int_equal(disc_dns_min_ttl(msg, len, 1), 30);
        assert_int_equal(disc_dns_min_ttl(msg, len, 33), 60);
        assert_int_equal(disc_dns_min_ttl(msg, len, 28), -1); /* none of that type */
        /* RFC 2181: a TTL with the top bit set counts as 0 */
        const int t2[] = {33};
        const uint32_t l2[] = {0x80000001u};
        len = build(msg, t2, l2, 1);
        assert_int_equal(disc_dns_min_ttl(msg, len, 33), 0);
}

static void test_malformed(void **state)
{
        (void)state;
        unsigned char msg[512];
        const int t[] = {1, 1};
        const uint32_t l[] = {5, 7};
        int len = build(msg, t, l, 2);
        assert_int_equal(disc_dns_min_ttl(msg, len, 1), 5);
        /* every truncation is refused, none read past the end */
        for (int cut = 0; cut < len; cut++)
                assert_true(disc_dns_min_ttl(msg, cut, 1) == -1 ||
                            disc_dns_min_ttl(msg, cut, 1) == 5);
        assert_int_equal(disc_dns_min_ttl(msg, len - 1, 1), -1);
        assert_int_equal(disc_dns_min_ttl(NULL, 0, 1), -1);
        /* more answers announced than present */
        msg[7] = 9;
        assert_int_equal(disc_dns_min_ttl(msg, len, 1), -1);
        msg[7] = 2;
        /* a name pointer that loops on itself */
        msg[12 + 14] = 0xc0;
        msg[12 + 14 + 1] = (unsigned char)(12 + 14);
        assert_int_equal(disc_dns_min_ttl(msg, len, 1), -1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_min_ttl),
            cmocka_unit_test(test_malformed),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
