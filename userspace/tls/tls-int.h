/* SPDX-License-Identifier: Apache-2.0 */
/* Private to userspace/tls: the snapshot layout shared by store.c and conn.c. */
#ifndef SHUNT_TLS_INT_H
#define SHUNT_TLS_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
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
        struct tls_federation *fed; /* borrowed (outlives the store), or NULL */
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

/* federation.c: the verification side. A set is the bundles of every
 * federated domain at one moment (tls_fed_acquire: a reference, NULL when
 * there are none); a domain's index is fixed for the federation's life. */
struct tls_federation;
struct tls_fed_set;
struct tls_fed_set *tls_fed_acquire(struct tls_federation *fed);
void tls_fed_release(struct tls_fed_set *set);
int tls_fed_find(const struct tls_federation *fed, const char *td); /* index or -1 */
size_t tls_fed_domains(const struct tls_federation *fed);
const char *tls_fed_name(const struct tls_federation *fed, int i);
X509_STORE *tls_fed_store(const struct tls_fed_set *set, int i); /* NULL when out of range */
/* Counts a handshake with a peer claiming domain i (server: inbound). */
void tls_fed_count(struct tls_federation *fed, int i, bool server, bool ok);

/* conn.c: builds snap->server and snap->client from m (snap's other fields
 * already set). 0 or -errno (logged). */
int tls_ctx_build(struct tls_snapshot *snap, const struct tls_material *m);

#endif
