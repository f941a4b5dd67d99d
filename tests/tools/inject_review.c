// SPDX-License-Identifier: Apache-2.0
/* Test driver for userspace/inject: `inject_review CONFIG < review.json`
 * prints what the webhook would answer and, on stderr, "status N: note". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/strbuf.h"
#include "inject/inject.h"

int main(int argc, char **argv)
{
        if (argc != 2) {
                fprintf(stderr, "usage: inject_review CONFIG < ADMISSION-REVIEW\n");
                return 2;
        }
        char err[600];
        struct inject_config *cfg;
        if (inject_config_load(argv[1], &cfg, err, sizeof(err)) < 0) {
                fprintf(stderr, "%s\n", err);
                return 2;
        }
        struct strbuf in;
        strbuf_init(&in);
        char buf[65536];
        ssize_t n;
        while ((n = read(0, buf, sizeof(buf))) > 0)
                strbuf_appendn(&in, buf, (size_t)n);
        if (n < 0 || in.truncated) {
                fprintf(stderr, "inject_review: reading stdin failed\n");
                return 2;
        }
        struct strbuf out;
        strbuf_init(&out);
        char note[700];
        int rc = inject_review(cfg, in.data ? in.data : "", in.len, &out, note, sizeof(note));
        fprintf(stderr, "status %d: %s\n", inject_http_status(rc), note);
        fwrite(out.data ? out.data : "", 1, out.len, stdout);
        fputc('\n', stdout);
        strbuf_free(&in);
        strbuf_free(&out);
        inject_config_free(cfg);
        return rc == 0 || rc == -EINVAL || rc == -EMSGSIZE ? 0 : 1;
}
