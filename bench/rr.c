// SPDX-License-Identifier: Apache-2.0
/* rr: request-response load tool for shunt's benchmarks (bench/run.sh).
 *
 *   rr server ADDR PORT
 *       epoll echo server: every byte read is written back. Prints "READY" once
 *       listening. Runs until SIGTERM/SIGINT.
 *   rr ping ADDR PORT SIZE COUNT WARMUP
 *       one connection (TCP_NODELAY): COUNT round trips of SIZE bytes after
 *       WARMUP unmeasured ones. Prints JSON: p50/p99/p99.9/mean/min/max in µs.
 *   rr conn ADDR PORT SIZE COUNT
 *       COUNT times: connect, one round trip of SIZE bytes, close. Prints JSON:
 *       connections per second and percentiles of connect() time and of the
 *       whole connect + first reply ("setup") in µs.
 *   rr hold ADDR PORT N SECONDS
 *       opens N connections, each confirmed end to end by a 1-byte echo, prints
 *       "HELD N", then keeps them open until stdin reaches EOF or SECONDS pass.
 *
 * Every loop is bounded by its arguments or by a deadline; every error ends the
 * program with a message naming what failed and exit status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE      (1u << 20)
#define MAX_COUNT     10000000L
#define MAX_HOLD      200000L
#define IO_TIMEOUT_MS 10000

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
        (void)sig;
        stop_flag = 1;
}

static void die(const char *what, const char *arg)
{
        fprintf(stderr, "rr: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
        exit(1);
}

static void fail(const char *msg, const char *arg)
{
        fprintf(stderr, "rr: %s%s%s\n", msg, arg ? " " : "", arg ? arg : "");
        exit(1);
}

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long parse_long(const char *s, long min, long max, const char *name)
{
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || *end || end == s || v < min || v > max) {
                fprintf(stderr, "rr: %s: expected an integer %ld..%ld, got \"%s\"\n", name, min,
                        max, s);
                exit(1);
        }
        return v;
}

static void parse_addr(const char *host, const char *port, struct sockaddr_storage *ss,
                       socklen_t *len)
{
        long p = parse_long(port, 1, 65535, "port");
        memset(ss, 0, sizeof(*ss));
        struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
                a4->sin_family = AF_INET;
                a4->sin_port = htons((uint16_t)p);
                *len = sizeof(*a4);
        } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
                a6->sin6_family = AF_INET6;
                a6->sin6_port = htons((uint16_t)p);
                *len = sizeof(*a6);
        } else {
                fail("not an IPv4 or IPv6 address:", host);
        }
}

static void raise_nofile(void)
{
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
}

/* Waits until fd is ready for events or IO_TIMEOUT_MS pass. */
static void wait_fd(int fd, short events, const char *what)
{
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, IO_TIMEOUT_MS);
        if (n == 0)
                fail("timed out:", what);
        if (n < 0)
                die("poll", what);
}

static void send_all(int fd, const char *buf, size_t len)
{
        size_t off = 0;
        while (off < len) {
                ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        wait_fd(fd, POLLOUT, "send");
                        continue;
                }
                if (n < 0)
                        die("send", NULL);
                off += (size_t)n;
        }
}

static void recv_all(int fd, char *buf, size_t len)
{
        size_t off = 0;
        while (off < len) {
                ssize_t n = recv(fd, buf + off, len - off, 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN) {
                        wait_fd(fd, POLLIN, "recv");
                        continue;
                }
                if (n < 0)
                        die("recv", NULL);
                if (n == 0)
                        fail("connection closed by peer before the reply was complete", NULL);
                off += (size_t)n;
        }
}

static int connect_to(const struct sockaddr_storage *ss, socklen_t len)
{
        int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                die("socket", NULL);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct timeval tv = {.tv_sec = IO_TIMEOUT_MS / 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, (const struct sockaddr *)ss, len) < 0)
                die("connect", NULL);
        return fd;
}

/* Opaque bytes starting with 0x00: no protocol sniffer (shunt's waits for
 * more bytes of a possible HTTP or TLS start) can take them for a protocol, so
 * every contender relays them as plain TCP at once. */
static void fill(char *buf, size_t len)
{
        for (size_t i = 0; i < len; i++)
                buf[i] = (char)(i % 251);
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples, in µs. */
static double pct(const uint64_t *s, long n, double p)
{
        long rank = (long)(p / 100.0 * (double)n + 0.999999);
        if (rank < 1)
                rank = 1;
        if (rank > n)
                rank = n;
        return (double)s[rank - 1] / 1000.0;
}

static void print_dist(const char *name, uint64_t *s, long n)
{
        qsort(s, (size_t)n, sizeof(*s), cmp_u64);
        double sum = 0;
        for (long i = 0; i < n; i++)
                sum += (double)s[i];
        printf("\"%s\":{\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"mean_us\":%.2f,"
               "\"min_us\":%.2f,\"max_us\":%.2f}",
               name, pct(s, n, 50), pct(s, n, 99), pct(s, n, 99.9), sum / (double)n / 1000.0,
               (double)s[0] / 1000.0, (double)s[n - 1] / 1000.0);
}

static int cmd_ping(char **argv)
{
        struct sockaddr_storage ss;
        socklen_t len;
        parse_addr(argv[0], argv[1], &ss, &len);
        long size = parse_long(argv[2], 1, MAX_SIZE, "SIZE");
        long count = parse_long(argv[3], 1, MAX_COUNT, "COUNT");
        long warmup = parse_long(argv[4], 0, MAX_COUNT, "WARMUP");
        char *out = malloc((size_t)size), *in = malloc((size_t)size);
        uint64_t *s = calloc((size_t)count, sizeof(*s));
        if (!out || !in || !s)
                fail("out of memory", NULL);
        fill(out, (size_t)size);
        int fd = connect_to(&ss, len);
        for (long i = 0; i < warmup + count; i++) {
                uint64_t t0 = now_ns();
                send_all(fd, out, (size_t)size);
                recv_all(fd, in, (size_t)size);
                if (i >= warmup)
                        s[i - warmup] = now_ns() - t0;
        }
        if (memcmp(in, out, (size_t)size) != 0)
                fail("echoed bytes differ from the bytes sent", NULL);
        close(fd);
        printf("{\"mode\":\"ping\",\"size\":%ld,\"count\":%ld,", size, count);
        print_dist("rtt", s, count);
        printf("}\n");
        free(out);
        free(in);
        free(s);
        return 0;
}

static int cmd_conn(char **argv)
{
        struct sockaddr_storage ss;
        socklen_t len;
        parse_addr(argv[0], argv[1], &ss, &len);
        long size = parse_long(argv[2], 1, MAX_SIZE, "SIZE");
        long count = parse_long(argv[3], 1, MAX_COUNT, "COUNT");
        char *out = malloc((size_t)size), *in = malloc((size_t)size);
        uint64_t *sc = calloc((size_t)count, sizeof(*sc));
        uint64_t *st = calloc((size_t)count, sizeof(*st));
        if (!out || !in || !sc || !st)
                fail("out of memory", NULL);
        fill(out, (size_t)size);
        uint64_t start = now_ns();
        for (long i = 0; i < count; i++) {
                uint64_t t0 = now_ns();
                int fd = connect_to(&ss, len);
                uint64_t t1 = now_ns();
                send_all(fd, out, (size_t)size);
                recv_all(fd, in, (size_t)size);
                uint64_t t2 = now_ns();
                /* An RST close keeps TIME_WAIT off the client's ports. */
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                close(fd);
                sc[i] = t1 - t0;
                st[i] = t2 - t0;
        }
        double secs = (double)(now_ns() - start) / 1e9;
        printf("{\"mode\":\"conn\",\"size\":%ld,\"count\":%ld,\"conn_per_s\":%.1f,", size, count,
               (double)count / secs);
        print_dist("connect", sc, count);
        printf(",");
        print_dist("setup", st, count);
        printf("}\n");
        free(out);
        free(in);
        free(sc);
        free(st);
        return 0;
}

static int cmd_hold(char **argv)
{
        struct sockaddr_storage ss;
        socklen_t len;
        parse_addr(argv[0], argv[1], &ss, &len);
        long n = parse_long(argv[2], 1, MAX_HOLD, "N");
        long secs = parse_long(argv[3], 1, 86400, "SECONDS");
        raise_nofile();
        int *fds = calloc((size_t)n, sizeof(*fds));
        if (!fds)
                fail("out of memory", NULL);
        char c = 0;
        for (long i = 0; i < n; i++) {
                fds[i] = connect_to(&ss, len);
                send_all(fds[i], &c, 1);
                recv_all(fds[i], &c, 1);
        }
        printf("HELD %ld\n", n);
        fflush(stdout);
        uint64_t deadline = now_ns() + (uint64_t)secs * 1000000000u;
        while (!stop_flag && now_ns() < deadline) {
                struct pollfd p = {.fd = 0, .events = POLLIN};
                int r = poll(&p, 1, 200);
                if (r > 0) {
                        char b[64];
                        ssize_t k = read(0, b, sizeof(b));
                        if (k <= 0)
                                break;
                }
        }
        for (long i = 0; i < n; i++)
                close(fds[i]);
        free(fds);
        return 0;
}

struct pending {
        size_t off, len;
        char *buf;
};

static int cmd_server(char **argv)
{
        struct sockaddr_storage ss;
        socklen_t len;
        parse_addr(argv[0], argv[1], &ss, &len);
        raise_nofile();
        int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lfd < 0)
                die("socket", NULL);
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(lfd, (struct sockaddr *)&ss, len) < 0)
                die("bind", argv[1]);
        if (listen(lfd, 4096) < 0)
                die("listen", NULL);
        int ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0)
                die("epoll_create1", NULL);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
                die("epoll_ctl", NULL);
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        size_t maxfd = rl.rlim_cur > 1048576 ? 1048576 : (size_t)rl.rlim_cur;
        struct pending *pend = calloc(maxfd, sizeof(*pend));
        static char buf[65536];
        if (!pend)
                fail("out of memory", NULL);
        printf("READY\n");
        fflush(stdout);
        struct epoll_event evs[256];
        while (!stop_flag) {
                int n = epoll_wait(ep, evs, 256, 500);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        die("epoll_wait", NULL);
                for (int i = 0; i < n; i++) {
                        int fd = evs[i].data.fd;
                        if (fd == lfd) {
                                for (int k = 0; k < 64; k++) {
                                        int c =
                                            accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                                        if (c < 0)
                                                break;
                                        if ((size_t)c >= maxfd) {
                                                close(c);
                                                continue;
                                        }
                                        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                                        struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                                        if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) < 0)
                                                close(c);
                                }
                                continue;
                        }
                        struct pending *p = &pend[fd];
                        int closed = 0;
                        if (p->buf) { /* writable again: flush the rest, then read again */
                                ssize_t w =
                                    send(fd, p->buf + p->off, p->len - p->off, MSG_NOSIGNAL);
                                if (w < 0 && errno != EAGAIN)
                                        closed = 1;
                                if (w > 0)
                                        p->off += (size_t)w;
                                if (!closed && p->off == p->len) {
                                        free(p->buf);
                                        p->buf = NULL;
                                        struct epoll_event ce = {.events = EPOLLIN, .data.fd = fd};
                                        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                                }
                        } else {
                                ssize_t r = recv(fd, buf, sizeof(buf), 0);
                                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                                        closed = 1;
                                ssize_t w = r > 0 ? send(fd, buf, (size_t)r, MSG_NOSIGNAL) : 0;
                                if (w < 0 && errno == EAGAIN)
                                        w = 0;
                                if (w < 0)
                                        closed = 1;
                                if (!closed && w < r) {
                                        p->len = (size_t)(r - w);
                                        p->off = 0;
                                        p->buf = malloc(p->len);
                                        if (!p->buf)
                                                fail("out of memory", NULL);
                                        memcpy(p->buf, buf + w, p->len);
                                        struct epoll_event ce = {.events = EPOLLOUT, .data.fd = fd};
                                        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                                }
                        }
                        if (closed) {
                                free(p->buf);
                                p->buf = NULL;
                                close(fd);
                        }
                }
        }
        return 0;
}

int main(int argc, char **argv)
{
        struct sigaction sa = {.sa_handler = on_signal};
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (argc == 4 && !strcmp(argv[1], "server"))
                return cmd_server(argv + 2);
        if (argc == 7 && !strcmp(argv[1], "ping"))
                return cmd_ping(argv + 2);
        if (argc == 6 && !strcmp(argv[1], "conn"))
                return cmd_conn(argv + 2);
        if (argc == 6 && !strcmp(argv[1], "hold"))
                return cmd_hold(argv + 2);
        fprintf(stderr, "usage: rr server ADDR PORT | rr ping ADDR PORT SIZE COUNT WARMUP |\n"
                        "       rr conn ADDR PORT SIZE COUNT | rr hold ADDR PORT N SECONDS\n");
        return 2;
}
