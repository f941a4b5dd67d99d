/* SPDX-License-Identifier: Apache-2.0 */
/* Missing prerequisites in the cmocka unit tests: no silent skips.
 *
 * A test that cannot run because a tool, a kernel feature or a privilege is
 * missing FAILS with one line naming it, so a machine without bpftool or
 * promtool never reports "Passed" for checks it did not make. Only when the
 * environment variable SHUNT_ALLOW_SKIP names the prerequisite (a comma or
 * space separated list, e.g. SHUNT_ALLOW_SKIP=promtool,root) is the test
 * skipped instead. scripts/test.sh and CI leave it unset. The integration
 * tests follow the same rule (tests/integration/shuntlib.py, missing()).
 * Include after <cmocka.h>. */
#ifndef SHUNT_TEST_REQUIRE_H
#define SHUNT_TEST_REQUIRE_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether SHUNT_ALLOW_SKIP lists name as a whole word. */
static inline bool require_allowed(const char *name)
{
        const char *list = getenv("SHUNT_ALLOW_SKIP");
        size_t n = strlen(name);
        while (list && *list) {
                list += strspn(list, ", \t");
                size_t w = strcspn(list, ", \t");
                if (w == n && strncmp(list, name, n) == 0)
                        return true;
                list += w;
        }
        return false;
}

/* The prerequisite name is missing for the reason why: fails the running
 * test, or skips it when SHUNT_ALLOW_SKIP allows that name. */
static inline void require_missing(const char *name, const char *why)
{
        if (require_allowed(name)) {
                print_message("skipped, allowed by SHUNT_ALLOW_SKIP=%s: %s\n", name, why);
                skip();
        }
        fail_msg("missing %s: %s (set SHUNT_ALLOW_SKIP=%s to skip instead)", name, why, name);
}

/* Whether the executable tool is on PATH. */
static inline bool require_have_tool(const char *tool)
{
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "command -v '%s' >/dev/null 2>&1", tool);
        return system(cmd) == 0;
}

/* The running test needs tool (from the Debian package pkg). */
static inline void require_tool(const char *tool, const char *pkg)
{
        if (!require_have_tool(tool)) {
                char why[256];
                snprintf(why, sizeof(why),
                         "%s is not installed (Debian package %s; scripts/bootstrap.sh)", tool,
                         pkg);
                require_missing(tool, why);
        }
}

#endif
