/* SPDX-License-Identifier: Apache-2.0 */
/* In-kernel splice of plain TCP relays: loads bpf/splice.bpf.c (a sockhash
 * with an sk_skb stream verdict program, not pinned: it goes with the
 * process) and puts a relay's two sockets in it. See the program's header
 * for what the kernel does, and docs/architecture.md, "Splice", for the
 * switch-over and the way back to the userspace relay.
 *
 * The two sockets of a pair are numbered 0 (the accepted client socket) and
 * 1 (the upstream socket); half i is the bytes arriving on socket i and
 * leaving by socket 1 - i. Process-wide; the pair calls are made by the
 * worker that owns the connection. */
#ifndef SHUNT_INTERCEPT_SPLICE_H
#define SHUNT_INTERCEPT_SPLICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/strbuf.h"

/* Loads the program and its maps (CAP_BPF and CAP_NET_ADMIN, a kernel with
 * sockhash, sk_skb stream verdict and the helpers it calls). 0, or -1 with
 * one line in why. SHUNT_SPLICE_REFUSE=1 fails it as an old kernel would
 * (tests of the fallback); SHUNT_SPLICE_TEST_MAP_MAX=N (tests only) holds
 * the maps to N sockets so a test can fill them. */
int splice_open(char *why, size_t whylen);
void splice_close(void);
bool splice_available(void);

struct splice_pair {
        uint64_t cookie[2];
        uint64_t base[2]; /* bytes written into socket i (acked + send queue) when spliced */
};

enum splice_result {
        SPLICE_OK = 0,
        SPLICE_UNAVAILABLE, /* not loaded (off, or the kernel cannot) */
        SPLICE_MAP_FULL,    /* a map had no room */
        SPLICE_ERROR,       /* the kernel refused the insert, or a socket could not be read */
};

/* Splices fd[0] and fd[1]: nothing may be written into either by anyone
 * else from now on (shuntd writes a half's bytes only after
 * splice_half_drained). Bytes already in a receive queue go first: the
 * verdict program is run on them right away. On anything but SPLICE_OK
 * nothing is left in the maps and the relay goes on in userspace. */
enum splice_result splice_start(const int fd[2], struct splice_pair *p);

/* Sends half i back to shuntd for good: from the next skb on, its bytes
 * wait in socket i for shuntd to read. */
int splice_stop_half(const struct splice_pair *p, int i);

/* Bytes the kernel sent on for half i, and whether the half still
 * redirects. 0 or negative errno. */
int splice_half_state(const struct splice_pair *p, int i, uint64_t *redirected, bool *kernel);

/* Bytes the program left to shuntd in half i's source socket so far. A
 * read of that socket may return EAGAIN, or EOF after a FIN, while some of
 * them still wait in the kernel's psock queue: shuntd takes EOF only once
 * it has read them all. 0 or negative errno. */
int splice_half_passed(const struct splice_pair *p, int i, uint64_t *passed);

/* 1 when every byte the kernel took for half i is in the send queue of its
 * destination fd_dst (so shuntd may write there after them), 0 when some
 * are still on their way, SPLICE_DRAIN_OVERRUN when fd_dst holds MORE bytes
 * from the kernel than the program redirected (the kernel's socket-map
 * worker wrote some twice: the stream is corrupt), negative errno.
 * user_written: bytes shuntd wrote into fd_dst since splice_start. moved and
 * gave (either may be NULL): the kernel's bytes found in fd_dst, and the
 * bytes the program redirected. SPLICE_DRAIN_BROKEN: the program met an
 * skb repeating bytes it could not cut (fd_dst would get them twice). */
#define SPLICE_DRAIN_OVERRUN 2
#define SPLICE_DRAIN_BROKEN  3
int splice_half_drained(const struct splice_pair *p, int i, int fd_dst, uint64_t user_written,
                        uint64_t *moved, uint64_t *gave);

/* Bytes the kernel moved for each half; removes the pair's entries (the
 * sockets leave the sockhash when they close). */
void splice_end(const struct splice_pair *p, uint64_t redirected[2]);

/* Milliseconds since fd last received data (tcp_info), or UINT64_MAX. */
uint64_t splice_idle_ms(int fd);

/* Sockets in the sockhash and halves in the map now (walks the keys). */
long splice_sockets(void);
long splice_halves(void);

/* shunt_splice_* counters of the program (Prometheus text). */
void splice_render_metrics(struct strbuf *out);

#endif
