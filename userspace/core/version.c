// SPDX-License-Identifier: Apache-2.0
/* The version and commit baked in at build time (gen/shunt_version.h), as
 * every binary prints them and /metrics exposes them. */
#include "core/version.h"

#include <stdio.h>
#include <string.h>

#include <openssl/base.h>

#include "core/prom.h"
#include "shunt_version.h"

const char *shunt_version(void)
{
        return SHUNT_VERSION_TEXT;
}

const char *shunt_commit(void)
{
        return SHUNT_COMMIT_TEXT;
}

const char *shunt_tls_library(void)
{
#ifdef OPENSSL_IS_BORINGSSL
        return "boringssl";
#else
        return "openssl";
#endif
}

bool shunt_version_flag(int argc, char *const argv[], const char *prog)
{
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--version") != 0)
                        continue;
                printf("%s %s (commit %s, %s)\n", prog, shunt_version(), shunt_commit(),
                       shunt_tls_library());
                return true;
        }
        return false;
}

int shunt_build_info_render(struct strbuf *sb)
{
        struct strbuf labels;
        strbuf_init(&labels);
        int rc = prom_label(&labels, "version", shunt_version());
        if (!rc)
                rc = prom_label(&labels, "commit", shunt_commit());
        if (!rc)
                rc = prom_label(&labels, "tls", shunt_tls_library());
        if (!rc)
                rc = prom_family(sb, "shunt_build_info", "gauge",
                                 "The running build: version, commit and TLS library (always 1).");
        if (!rc)
                rc = prom_sample_u64(sb, "shunt_build_info", labels.data, 1);
        strbuf_free(&labels);
        return rc;
}
