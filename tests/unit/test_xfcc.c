// SPDX-License-Identifier: Apache-2.0
/* proxy/xfcc: the X-Forwarded-Client-Cert decision for every direction,
 * mode and identity (outbound and unidentified clients never keep or get
 * one), and the comma-separated value it builds. The element itself is
 * checked against a real certificate in integration/test_xfcc.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "proxy/xfcc.h"

static void test_action(void **state)
{
        (void)state;
        static const enum forward_client_cert modes[] = {FCC_SANITIZE, FCC_SANITIZE_SET,
                                                         FCC_APPEND_FORWARD, FCC_FORWARD_ONLY};
        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
                /* Whatever the mode: an application's own never leaves the
                 * pod, a client without a verified certificate gets none. */
                assert_int_equal(xfcc_action(DIR_OUTBOUND, modes[i], true), XFCC_REMOVE);
                assert_int_equal(xfcc_action(DIR_OUTBOUND, modes[i], false), XFCC_REMOVE);
                assert_int_equal(xfcc_action(DIR_INBOUND, modes[i], false), XFCC_REMOVE);
        }
        assert_int_equal(xfcc_action(DIR_INBOUND, FCC_SANITIZE, true), XFCC_REMOVE);
        assert_int_equal(xfcc_action(DIR_INBOUND, FCC_SANITIZE_SET, true), XFCC_SET);
        assert_int_equal(xfcc_action(DIR_INBOUND, FCC_APPEND_FORWARD, true), XFCC_APPEND);
        assert_int_equal(xfcc_action(DIR_INBOUND, FCC_FORWARD_ONLY, true), XFCC_KEEP);
}

static void test_list(void **state)
{
        (void)state;
        struct strbuf sb;
        strbuf_init(&sb);
        xfcc_list_add(&sb, "By=a;URI=b", 10);
        assert_int_equal(sb.len, 10);
        xfcc_list_add(&sb, "By=c;Hash=00;URI=d", 18);
        assert_int_equal(sb.len, 29);
        assert_memory_equal(sb.data, "By=a;URI=b,By=c;Hash=00;URI=d", 29);
        strbuf_free(&sb);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_action),
            cmocka_unit_test(test_list),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
