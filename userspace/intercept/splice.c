// SPDX-License-Identifier: Apache-2.0
/* In-kernel splice loader and pair operations: see splice.h. */
#include "intercept/splice.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/prom.h"
#include "shunt/splice.h"
#include "splice.skel.h"

static pthread_mutex_t splice_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shunt_splice *skel;
static int socks_fd = -1, halves_fd = -1, stop_fd = -1;
static int opens; /* splice_open calls not yet closed (node mode: one per pod proxy) */

bool splice_available(void)
{
        return socks_fd >= 0;
}

static int load(char *why, size_t whylen)
{
        const char *refuse = getenv("SHUNT_SPLICE_REFUSE");
        if (refuse && *refuse && strcmp(refuse, "0") != 0) {
                snprintf(why, whylen,
                         "sk_skb programs not supported (simulated: "
                         "SHUNT_SPLICE_REFUSE is set)");
                return -EOPNOTSUPP;
        }
        int rc = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_SKB, NULL);
        if (rc <= 0) {
                snprintf(why, whylen, "BPF program type sk_skb: %s",
                         rc == 0 ? "not supported by this kernel" : strerror(-rc));
                return rc == 0 ? -EOPNOTSUPP : rc;
        }
        struct shunt_splice *s = shunt_splice__open();
        if (!s) {
                rc = -errno;
                snprintf(why, whylen, "opening the splice BPF object: %s", strerror(errno));
                return rc;
        }
        const char *v = getenv("SHUNT_SPLICE_TEST_MAP_MAX");
        if (v && *v) {
                char *end;
                unsigned long n = strtoul(v, &end, 10);
                if (*end || n < 2 || n > SHUNT_SPLICE_MAX_SOCKETS) {
                        snprintf(why, whylen, "SHUNT_SPLICE_TEST_MAP_MAX %s: want 2..%d", v,
                                 SHUNT_SPLICE_MAX_SOCKETS);
                        shunt_splice__destroy(s);
                        return -EINVAL;
                }
                log_warn("splice", 0,
                         "SHUNT_SPLICE_TEST_MAP_MAX: splice maps limited to %lu (testing)", n);
                bpf_map__set_max_entries(s->maps.splice_socks, (uint32_t)n);
                bpf_map__set_max_entries(s->maps.splice_halves, (uint32_t)n);
                bpf_map__set_max_entries(s->maps.splice_stop, (uint32_t)n);
        }
        bool keep = getenv("SHUNT_SPLICE_TEST_KEEP_REPEATS") &&
                    strcmp(getenv("SHUNT_SPLICE_TEST_KEEP_REPEATS"), "1") == 0;
        rc = shunt_splice__load(s);
        if (rc < 0) {
                snprintf(why, whylen, "loading the splice program: %s", strerror(-rc));
                shunt_splice__destroy(s);
                return rc;
        }
        if (bpf_prog_attach(bpf_program__fd(s->progs.shunt_splice_verdict),
                            bpf_map__fd(s->maps.splice_socks), BPF_SK_SKB_STREAM_VERDICT, 0) < 0) {
                rc = -errno;
                snprintf(why, whylen, "attaching the stream verdict to the sockhash: %s",
                         strerror(errno));
                shunt_splice__destroy(s);
                return rc;
        }
        if (keep) {
                /* Tests only: the kernel's repeated bytes go on uncut, as
                 * before the program cut them (the reproducer's control). */
                uint32_t zero = 0;
                struct shunt_splice_config cfg = {.keep_repeats = 1};
                log_warn(
                    "splice", 0,
                    "SHUNT_SPLICE_TEST_KEEP_REPEATS: retransmitted bytes go on twice (testing)");
                bpf_map_update_elem(bpf_map__fd(s->maps.splice_cfg), &zero, &cfg, BPF_ANY);
        }
        skel = s;
        halves_fd = bpf_map__fd(s->maps.splice_halves);
        stop_fd = bpf_map__fd(s->maps.splice_stop);
        socks_fd = bpf_map__fd(s->maps.splice_socks);
        return 0;
}

int splice_open(char *why, size_t whylen)
{
        pthread_mutex_lock(&splice_lock);
        int rc = skel ? 0 : load(why, whylen);
        if (rc == 0)
                opens++;
        pthread_mutex_unlock(&splice_lock);
        return rc < 0 ? -1 : 0;
}

void splice_close(void)
{
        pthread_mutex_lock(&splice_lock);
        if (opens > 0 && --opens == 0 && skel) {
                /* Sockets still in the map leave it with the map: their
                 * queued bytes go with it (shuntd closes them anyway). */
                socks_fd = halves_fd = stop_fd = -1;
                shunt_splice__destroy(skel);
                skel = NULL;
        }
        pthread_mutex_unlock(&splice_lock);
}

/* Bytes ever written into fd (acked + still in the send queue), not more
 * than the truth: tcp_info is read before the queue, so an ACK in between
 * can only make it smaller. exact: retried until no ACK came in between
 * (only right while nothing writes into fd). */
static int written(int fd, bool exact, uint64_t *out)
{
        for (int attempt = 0; attempt < 16; attempt++) {
                int q1 = 0, q2 = 0;
                struct tcp_info ti;
                socklen_t len = sizeof(ti);
                memset(&ti, 0, sizeof(ti));
                if (exact && ioctl(fd, SIOCOUTQ, &q1) < 0)
                        return -errno;
                if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
                        return -errno;
                if (len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked))
                        return -EOPNOTSUPP;
                if (ioctl(fd, SIOCOUTQ, &q2) < 0)
                        return -errno;
                if (!exact || q1 == q2) {
                        *out = ti.tcpi_bytes_acked + (uint64_t)q2;
                        return 0;
                }
        }
        return -EAGAIN;
}

static int cookie_of(int fd, uint64_t *c)
{
        socklen_t len = sizeof(*c);
        return getsockopt(fd, SOL_SOCKET, SO_COOKIE, c, &len) < 0 ? -errno : 0;
}

static enum splice_result fail(int err)
{
        return err == -E2BIG || err == -ENOMEM || err == -ENOSPC ? SPLICE_MAP_FULL : SPLICE_ERROR;
}

enum splice_result splice_start(const int fd[2], struct splice_pair *p)
{
        memset(p, 0, sizeof(*p));
        if (!splice_available())
                return SPLICE_UNAVAILABLE;
        for (int i = 0; i < 2; i++) {
                if (cookie_of(fd[i], &p->cookie[i]) < 0 || written(fd[i], true, &p->base[i]) < 0)
                        return SPLICE_ERROR;
        }
        int err = 0;
        int made = 0;
        for (; made < 2; made++) {
                struct shunt_splice_half h = {.peer = p->cookie[1 - made]};
                if (bpf_map_update_elem(halves_fd, &p->cookie[made], &h, BPF_NOEXIST) < 0) {
                        err = -errno;
                        break;
                }
        }
        /* The upstream first: until the client socket is in, anything the
         * upstream receives finds no peer and waits for shuntd (its half
         * goes back to the relay; nothing is lost or reordered). */
        int in = 0;
        for (; !err && in < 2; in++) {
                uint64_t v = (uint64_t)fd[1 - in];
                if (bpf_map_update_elem(socks_fd, &p->cookie[1 - in], &v, BPF_NOEXIST) < 0)
                        err = -errno;
        }
        if (err) {
                if (in == 0) {
                        /* Nothing in the sockhash: the halves go, no trace left. */
                        for (int i = 0; i < made; i++)
                                bpf_map_delete_elem(halves_fd, &p->cookie[i]);
                        memset(p, 0, sizeof(*p));
                        return fail(err);
                }
                /* The upstream is in and may have received bytes already
                 * (waiting in its queue for shuntd): it stays until it
                 * closes, its half stopped. */
                splice_stop_half(p, 1);
                bpf_map_delete_elem(halves_fd, &p->cookie[0]);
                return fail(err);
        }
        /* Bytes that arrived before the insert wait in the receive queues:
         * setting SO_RCVLOWAT runs the socket's data_ready, which now hands
         * them to the verdict program, ahead of anything newer. */
        int one = 1;
        for (int i = 0; i < 2; i++)
                setsockopt(fd[i], SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
        return SPLICE_OK;
}

int splice_stop_half(const struct splice_pair *p, int i)
{
        uint8_t one = 1;
        if (stop_fd < 0)
                return -ENOENT;
        return bpf_map_update_elem(stop_fd, &p->cookie[i], &one, BPF_ANY) < 0 ? -errno : 0;
}

int splice_half_state(const struct splice_pair *p, int i, uint64_t *redirected, bool *kernel)
{
        struct shunt_splice_half h;
        if (halves_fd < 0 || bpf_map_lookup_elem(halves_fd, &p->cookie[i], &h) < 0)
                return halves_fd < 0 ? -ENOENT : -errno;
        *redirected = h.redirected;
        if (kernel)
                *kernel = h.state == SHUNT_SPLICE_KERNEL;
        return 0;
}

int splice_half_passed(const struct splice_pair *p, int i, uint64_t *passed)
{
        struct shunt_splice_half h;
        if (halves_fd < 0 || bpf_map_lookup_elem(halves_fd, &p->cookie[i], &h) < 0)
                return halves_fd < 0 ? -ENOENT : -errno;
        *passed = h.passed;
        return 0;
}

int splice_half_drained(const struct splice_pair *p, int i, int fd_dst, uint64_t user_written,
                        uint64_t *moved, uint64_t *gave)
{
        uint64_t redirected = 0, now = 0;
        struct shunt_splice_half h;
        if (halves_fd < 0 || bpf_map_lookup_elem(halves_fd, &p->cookie[i], &h) < 0)
                return halves_fd < 0 ? -ENOENT : -errno;
        if (h.state == SHUNT_SPLICE_BROKEN)
                return SPLICE_DRAIN_BROKEN;
        redirected = h.redirected;
        int rc;
        rc = written(fd_dst, false, &now);
        if (rc < 0)
                return rc;
        if (gave)
                *gave = redirected;
        if (now < p->base[1 - i] + user_written)
                return 0;
        /* now is never more than the truth (see written), so more bytes
         * than the program redirected means the kernel wrote some twice. */
        uint64_t kernel_in = now - p->base[1 - i] - user_written;
        if (moved)
                *moved = kernel_in;
        if (kernel_in > redirected)
                return SPLICE_DRAIN_OVERRUN;
        return kernel_in == redirected;
}

void splice_end(const struct splice_pair *p, uint64_t redirected[2])
{
        for (int i = 0; i < 2; i++) {
                redirected[i] = 0;
                if (!p->cookie[i])
                        continue;
                splice_half_state(p, i, &redirected[i], NULL);
                if (halves_fd >= 0)
                        bpf_map_delete_elem(halves_fd, &p->cookie[i]);
                if (stop_fd >= 0)
                        bpf_map_delete_elem(stop_fd, &p->cookie[i]);
        }
}

uint64_t splice_idle_ms(int fd)
{
        struct tcp_info ti;
        socklen_t len = sizeof(ti);
        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
                return UINT64_MAX;
        return ti.tcpi_last_data_recv;
}

static long entries(int fd)
{
        if (fd < 0)
                return 0;
        uint64_t key, next;
        void *prev = NULL;
        long n = 0;
        while (n <= SHUNT_SPLICE_MAX_SOCKETS && bpf_map_get_next_key(fd, prev, &next) == 0) {
                key = next;
                prev = &key;
                n++;
        }
        return n;
}

long splice_sockets(void)
{
        return entries(socks_fd);
}

long splice_halves(void)
{
        return entries(halves_fd);
}

static const struct {
        const char *name, *help;
        size_t off;
} rows[] = {
#define ROW(f, h)                                                                                  \
        {                                                                                          \
                "shunt_splice_" #f "_total", h, offsetof(struct shunt_splice_counters, f)          \
        }
    ROW(redirected_skbs, "Socket buffers the kernel moved between spliced sockets."),
    ROW(redirected_bytes, "Bytes the kernel moved between spliced sockets (no userspace copy)."),
    ROW(passed_bytes, "Bytes of spliced halves that went back to the userspace relay."),
    ROW(paused, "Spliced halves sent back to the userspace relay by flow control (the "
                "destination socket was full)."),
    ROW(stopped, "Socket buffers that found their half stopped by shuntd (FIN, error, end)."),
    ROW(no_peer, "Socket buffers whose destination socket was not in the splice map."),
    ROW(fins, "Bare FINs on spliced sockets left to shuntd."),
    ROW(repeats, "Socket buffers of spliced sockets that began with bytes already taken (a TCP "
                 "retransmission overlapping received bytes): the repeated head is cut."),
    ROW(repeated_bytes, "Bytes cut from the head of those socket buffers (never delivered twice)."),
#undef ROW
};

void splice_render_metrics(struct strbuf *out)
{
        struct shunt_splice_counters sum;
        memset(&sum, 0, sizeof(sum));
        pthread_mutex_lock(&splice_lock);
        if (skel) {
                int ncpu = libbpf_num_possible_cpus();
                struct shunt_splice_counters *per =
                    ncpu > 0 ? calloc((size_t)ncpu, sizeof(*per)) : NULL;
                uint32_t zero = 0;
                if (per &&
                    bpf_map_lookup_elem(bpf_map__fd(skel->maps.splice_stats), &zero, per) == 0) {
                        for (int c = 0; c < ncpu; c++)
                                for (size_t f = 0; f < sizeof(sum) / sizeof(uint64_t); f++)
                                        ((uint64_t *)&sum)[f] += ((const uint64_t *)&per[c])[f];
                }
                free(per);
        }
        long socks = entries(socks_fd);
        pthread_mutex_unlock(&splice_lock);
        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                uint64_t v;
                memcpy(&v, (const char *)&sum + rows[i].off, sizeof(v));
                prom_family(out, rows[i].name, "counter", rows[i].help);
                prom_sample_u64(out, rows[i].name, NULL, v);
        }
        prom_family(out, "shunt_splice_sockets", "gauge",
                    "Sockets in the splice map now (two per spliced connection).");
        prom_sample_u64(out, "shunt_splice_sockets", NULL, (uint64_t)socks);
}
