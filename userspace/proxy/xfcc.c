// SPDX-License-Identifier: Apache-2.0
/* X-Forwarded-Client-Cert decisions and values; see xfcc.h. */
#include "proxy/xfcc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls/conn.h"

enum xfcc_action xfcc_action(enum conn_dir dir, enum forward_client_cert mode, bool identified)
{
        if (dir == DIR_OUTBOUND || !identified)
                return XFCC_REMOVE;
        switch (mode) {
        case FCC_SANITIZE:
                return XFCC_REMOVE;
        case FCC_SANITIZE_SET:
                return XFCC_SET;
        case FCC_APPEND_FORWARD:
                return XFCC_APPEND;
        case FCC_FORWARD_ONLY:
                return XFCC_KEEP;
        }
        return XFCC_REMOVE;
}

char *xfcc_element(struct tls_conn *tls)
{
        const char *by = tls_snapshot_identity(tls_conn_snapshot(tls));
        const char *hash = tls_conn_peer_cert_sha256(tls);
        const char *uri = tls_conn_peer_id(tls);
        size_t n = strlen(by) + strlen(hash) + strlen(uri) + sizeof("By=;Hash=;URI=");
        char *out = malloc(n);
        if (out)
                snprintf(out, n, "By=%s;Hash=%s;URI=%s", by, hash, uri);
        return out;
}

void xfcc_list_add(struct strbuf *out, const char *v, size_t n)
{
        if (out->len)
                strbuf_appendn(out, ",", 1);
        strbuf_appendn(out, v, n);
}
