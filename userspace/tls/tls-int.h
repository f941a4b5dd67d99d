/* SPDX-License-Identifier: Apache-2.0 */
/* Private to userspace/tls: the snapshot layout shared by store.c and conn.c. */
#ifndef SHUNT_TLS_INT_H
#define SHUNT_TLS_INT_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/ssl.h>

#include "core/snapshot.h"
#include "tls/cert.h"
#include "tls/conn.h"

struct tls_stats {
        _Atomic uint64_t ok[2]; /* [0] inbound (server), [1] outbound */
        _Atomic uint64_t fail[2][TLS_FAIL__COUNT];
};

struct tls_snapshot {
        struct snapshot base;
        SSL_CTX *server;
        SSL_CTX *client;
        X509_STORE *trust;
        X509 *leaf;
        char serial[80];
        int64_t not_before, not_after;
        char *identity;
        char *trust_domain;
        uint32_t skew_s;
        bool require_port;
        struct tls_stats *stats;
        _Atomic int64_t conns;
};

/* source.c: what identifies one version of a file (device, inode, size,
 * mtime, ctime, or the errno of stat), so that a symlink swap and an
 * in-place rewrite are both seen. */
struct tls_file_sig {
        dev_t dev;
        ino_t ino;
        off_t size;
        struct timespec mtime, ctime;
        int err;
};
void tls_file_sig_get(const char *path, struct tls_file_sig *s);
bool tls_file_sig_eq(const struct tls_file_sig *a, const struct tls_file_sig *b);

/* conn.c: builds snap->server and snap->client from m (snap's other fields
 * already set). 0 or -errno (logged). */
int tls_ctx_build(struct tls_snapshot *snap, const struct tls_material *m);

#endif
