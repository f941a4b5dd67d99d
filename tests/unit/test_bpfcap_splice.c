// SPDX-License-Identifier: Apache-2.0
/* The in-kernel splice (intercept/splice.h, bpf/splice.bpf.c) under the
 * relay, on loopback: a relayed connection is spliced once its first bytes
 * are through, bulk bytes both ways arrive in order, a slow reader is held
 * back, half-close and the end leave the maps empty. Named test_bpfcap_* so
 * that vmtest runs it on Linux 6.1 as well (needs root: it loads BPF). The
 * original destination is faked as in test_relay. */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "intercept/origdst.h"
#include "intercept/splice.h"
#include "proxy_harness.h"

/* The original destination, faked as in test_relay, but without a link
 * option: this file defines every symbol of intercept/origdst.c, so the
 * linker never takes that object from the library. */
static struct sockaddr_storage fake_dst;
bool origdst_shortcut_enabled;

enum origdst_result origdst_get(int fd, const struct sockaddr_storage *local,
                                const struct sockaddr_storage *peer, struct sockaddr_storage *out)
{
        (void)fd;
        (void)local;
        (void)peer;
        *out = fake_dst;
        return ORIGDST_OK;
}

void origdst_use_bpf(struct bpfcap *b)
{
        (void)b;
}

void origdst_use_bpf_thread(struct bpfcap *b)
{
        (void)b;
}

void origdst_forget(int fd)
{
        (void)fd;
}

void origdst_use_ebpf_without_maps(void)
{
}

int origdst_selftest(char *why, size_t whylen)
{
        (void)why;
        (void)whylen;
        return 0;
}

/* One direction of bulk bytes: byte i is pattern(i), so a lost, doubled or
 * reordered byte shows at its offset. */
struct stream {
        int from, to;
        uint64_t sent, got, total;
        bool eof, bad;
};

static uint8_t pattern(uint64_t i)
{
        return (uint8_t)(i * 131 + (i >> 9) * 7 + (i >> 17));
}

struct t {
        struct harness h;
        int front, lfd;
        struct sockaddr_storage front_addr, app_addr;
        int cli, app;
        struct stream up, down;
        bool reader_paused; /* the application reads nothing */
};

static int setup(void **state)
{
        struct t *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        harness_init(&t->h);
        t->h.cfg->protocol_detection_timeout_ms = 20;
        t->h.cfg->tcp_splice = 1; /* auto (off by default) */
        char why[256];
        if (splice_open(why, sizeof(why)) < 0)
                fail_msg("the kernel cannot splice: %s", why);
        t->h.p->splice = true; /* proxy_free closes it */
        t->front = app_listen(&t->front_addr);
        t->lfd = app_listen(&t->app_addr);
        t->cli = t->app = -1;
        fake_dst = t->app_addr;
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        struct t *t = *state;
        harness_free(&t->h);
        if (t->cli >= 0)
                close(t->cli);
        if (t->app >= 0)
                close(t->app);
        close(t->front);
        close(t->lfd);
        free(t);
        return 0;
}

static bool app_accepted(void *arg)
{
        struct t *t = arg;
        if (t->app < 0)
                t->app = accept4(t->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        return t->app >= 0;
}

static void connect_through(struct t *t)
{
        t->cli = harness_relay_connect(&t->h, t->front, &t->front_addr, DIR_OUTBOUND);
        run_until(&t->h, app_accepted, t, "the upstream connection");
}

/* Moves what it can of one stream; true when it is complete. */
static bool stream_step(struct stream *s, bool read)
{
        uint8_t buf[65536];
        while (s->sent < s->total) {
                size_t n = s->total - s->sent < sizeof(buf) ? s->total - s->sent : sizeof(buf);
                for (size_t i = 0; i < n; i++)
                        buf[i] = pattern(s->sent + i);
                ssize_t k = send(s->from, buf, n, MSG_NOSIGNAL);
                if (k <= 0)
                        break;
                s->sent += (uint64_t)k;
        }
        if (s->sent == s->total && !s->eof) {
                shutdown(s->from, SHUT_WR);
                s->eof = true;
        }
        while (read) {
                ssize_t k = recv(s->to, buf, sizeof(buf), 0);
                if (k <= 0)
                        break;
                for (ssize_t i = 0; i < k; i++)
                        if (buf[i] != pattern(s->got + (uint64_t)i))
                                s->bad = true;
                s->got += (uint64_t)k;
        }
        return s->got >= s->total;
}

struct one_byte {
        int fd;
        char c;
};

static bool got_byte(void *arg)
{
        struct one_byte *b = arg;
        return recv(b->fd, &b->c, 1, 0) == 1;
}

static bool echo_byte(struct t *t, int from, int to)
{
        struct one_byte b = {.fd = to};
        if (send(from, "\x01", 1, MSG_NOSIGNAL) != 1)
                return false;
        run_until(&t->h, got_byte, &b, "one byte through");
        return b.c == 1;
}

static bool spliced(void *arg)
{
        struct t *t = arg;
        return harness_stat(&t->h, ST_SPLICE_STARTED) == 1;
}

static bool both_done(void *arg)
{
        struct t *t = arg;
        bool a = stream_step(&t->up, !t->reader_paused);
        bool b = stream_step(&t->down, true);
        return a && b;
}

static bool ended(void *arg)
{
        struct t *t = arg;
        char c;
        /* Both peers see EOF: the FINs were passed on. */
        return recv(t->cli, &c, 1, 0) == 0 && recv(t->app, &c, 1, 0) == 0 &&
               harness_stat(&t->h, ST_SPLICE_ACTIVE) == 0;
}

static void splice_connection(struct t *t)
{
        connect_through(t);
        assert_true(echo_byte(t, t->cli, t->app)); /* sniffed: TCP, relayed */
        assert_true(echo_byte(t, t->app, t->cli));
        run_until(&t->h, spliced, t, "the connection spliced");
        assert_int_equal(splice_sockets(), 2);
}

/* Bulk both ways at once through a spliced connection, then half-close each
 * way: every byte in place, FINs passed on, the maps empty at the end. */
static void test_bulk_both_ways_and_half_close(void **state)
{
        struct t *t = *state;
        splice_connection(t);
        t->up = (struct stream){.from = t->cli, .to = t->app, .total = 24u << 20};
        t->down = (struct stream){.from = t->app, .to = t->cli, .total = 24u << 20};
        run_until(&t->h, both_done, t, "24 MiB each way");
        assert_false(t->up.bad);
        assert_false(t->down.bad);
        run_until(&t->h, ended, t, "both FINs through, the connection ended");
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_DONE), 1);
        assert_int_equal(splice_halves(), 0);
        assert_int_equal(splice_sockets(), 0);
}

static bool writer_stuck(void *arg)
{
        struct t *t = arg;
        static int still;
        uint64_t before = t->up.sent;
        stream_step(&t->up, false);
        still = t->up.sent == before && t->up.sent > 0 ? still + 1 : 0;
        return still >= 500; /* half a second of loop time without progress */
}

/* The application reads nothing: the client is held back within the
 * kernel's bounded queues (not the 256 MiB it wants to send), a spliced
 * direction goes back to the relay, and once the application reads every
 * byte arrives in place. */
static void test_slow_reader_held_back(void **state)
{
        struct t *t = *state;
        splice_connection(t);
        t->up = (struct stream){.from = t->cli, .to = t->app, .total = 256u << 20};
        t->down = (struct stream){.from = t->app, .to = t->cli, .total = 0, .eof = true};
        t->reader_paused = true;
        run_until(&t->h, writer_stuck, t, "the writer held back");
        assert_true(t->up.sent < (64u << 20));
        assert_true(harness_stat(&t->h, ST_SPLICE_RETURNED_FLOW) >= 1);
        t->reader_paused = false;
        run_until(&t->h, both_done, t, "every byte once the reader reads");
        assert_false(t->up.bad);
}

/* A loopback connection: *out_client connected to *out_server. */
static void loopback_pair(int *out_client, int *out_server)
{
        struct sockaddr_storage addr;
        int l = app_listen(&addr);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(c >= 0);
        assert_int_equal(connect(c, (struct sockaddr *)&addr, sizeof(struct sockaddr_in)), 0);
        int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        assert_true(s >= 0);
        close(l);
        *out_client = c;
        *out_server = s;
}

/* Reads n bytes of value v from fd (at most 5 s a read). */
static void read_exactly(int fd, size_t n, uint8_t v)
{
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        uint8_t buf[4096];
        while (n > 0) {
                assert_int_equal(poll(&pfd, 1, 5000), 1);
                ssize_t k = recv(fd, buf, n < sizeof(buf) ? n : sizeof(buf), MSG_DONTWAIT);
                assert_true(k > 0);
                for (ssize_t i = 0; i < k; i++)
                        assert_int_equal(buf[i], v);
                n -= (size_t)k;
        }
}

/* The check a direction makes before the relay writes after the kernel's
 * bytes: two loopback connections a-b and c-d, b and c spliced as the
 * relay's two sockets. The kernel's bytes from a reach d and the check
 * finds exactly them in c (drained); a byte written into c by anyone else,
 * as a kernel that repeats bytes would, shows as an overrun (the relay then
 * resets the connection rather than go on with a corrupt stream). */
static void test_drain_check_catches_repeated_bytes(void **state)
{
        (void)state;
        int a, b, c, d;
        loopback_pair(&a, &b);
        loopback_pair(&d, &c);
        const int fds[2] = {b, c};
        struct splice_pair p;
        assert_int_equal(splice_start(fds, &p), SPLICE_OK);
        uint8_t buf[4096];
        memset(buf, 7, sizeof(buf));
        assert_int_equal(send(a, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
        read_exactly(d, sizeof(buf), 7);
        uint64_t moved = 0, gave = 0;
        assert_int_equal(splice_half_drained(&p, 0, c, 0, &moved, &gave), 1);
        assert_int_equal(moved, sizeof(buf));
        assert_int_equal(gave, sizeof(buf));
        assert_int_equal(splice_stop_half(&p, 0), 0);
        /* shuntd's own bytes, declared: still drained. */
        assert_int_equal(send(c, buf, 100, 0), 100);
        assert_int_equal(splice_half_drained(&p, 0, c, 100, &moved, &gave), 1);
        /* Undeclared bytes: more than the kernel was given. */
        assert_int_equal(splice_half_drained(&p, 0, c, 0, &moved, &gave), SPLICE_DRAIN_OVERRUN);
        assert_int_equal(moved, sizeof(buf) + 100);
        read_exactly(d, 100, 7);
        uint64_t redirected[2];
        splice_end(&p, redirected);
        assert_int_equal(redirected[0], sizeof(buf));
        assert_int_equal(redirected[1], 0);
        close(a);
        close(b);
        close(c);
        close(d);
}

/* ---- switch-over with bytes in flight both ways ---------------------------------- */

/* One echo connection driven by three threads (blocking sockets) while the
 * test's thread runs the worker's loop: the client writes total bytes in
 * chunks of varied sizes then half-closes, the application echoes what it
 * reads (in reads of varied sizes) and half-closes at EOF, the client's
 * reader compares every byte it gets with the stream it sent. */
struct echo_run {
        int cli, app;
        _Atomic uint64_t sent, echoed;
        uint64_t total, got, first_bad;
        uint32_t seed;
        atomic_int done; /* threads finished */
        bool bad;
};

static uint32_t rnd_next(uint32_t *s)
{
        *s ^= *s << 13;
        *s ^= *s >> 17;
        *s ^= *s << 5;
        return *s;
}

static void set_blocking(int fd)
{
        int fl = fcntl(fd, F_GETFL);
        assert_true(fl >= 0);
        assert_int_equal(fcntl(fd, F_SETFL, fl & ~O_NONBLOCK), 0);
}

/* Sends n bytes on a blocking socket, adding them to *count as they go. */
static bool send_counted(int fd, const uint8_t *p, size_t n, _Atomic uint64_t *count)
{
        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
                if (k <= 0)
                        return false;
                p += k;
                n -= (size_t)k;
                atomic_fetch_add(count, (uint64_t)k);
        }
        return true;
}

static void *echo_writer(void *arg)
{
        struct echo_run *r = arg;
        static const uint32_t sizes[] = {1, 7, 100, 1400, 9000, 65536, 300000};
        uint32_t s = r->seed;
        uint8_t *buf = malloc(300000);
        uint64_t off = 0;
        bool ok = buf != NULL;
        while (ok && off < r->total) {
                uint64_t n = sizes[rnd_next(&s) % 7];
                if (n > r->total - off)
                        n = r->total - off;
                for (uint64_t i = 0; i < n; i++)
                        buf[i] = pattern(off + i);
                ok = send_counted(r->cli, buf, n, &r->sent);
                off += n;
        }
        if (ok)
                shutdown(r->cli, SHUT_WR);
        free(buf);
        atomic_fetch_add(&r->done, 1);
        return NULL;
}

static void *echo_app(void *arg)
{
        struct echo_run *r = arg;
        static const uint32_t sizes[] = {1, 100, 4096, 65536, 200000};
        uint32_t s = r->seed * 7 + 1;
        uint8_t *buf = malloc(200000);
        bool ok = buf != NULL;
        while (ok) {
                if (r->seed % 2 && rnd_next(&s) % 8 == 0)
                        usleep(rnd_next(&s) % 8000); /* a slow application now and then */
                ssize_t k = recv(r->app, buf, sizes[rnd_next(&s) % 5], 0);
                if (k <= 0)
                        break;
                ok = send_counted(r->app, buf, (size_t)k, &r->echoed);
        }
        if (ok)
                shutdown(r->app, SHUT_WR);
        free(buf);
        atomic_fetch_add(&r->done, 1);
        return NULL;
}

static void *echo_reader(void *arg)
{
        struct echo_run *r = arg;
        uint8_t buf[65536];
        uint32_t s = r->seed * 13 + 5;
        for (;;) {
                if (r->seed % 4 >= 2 && rnd_next(&s) % 8 == 0)
                        usleep(rnd_next(&s) % 8000); /* a slow client now and then */
                ssize_t k = recv(r->cli, buf, sizeof(buf), 0);
                if (k <= 0)
                        break;
                for (ssize_t i = 0; i < k; i++) {
                        if (!r->bad && buf[i] != pattern(r->got + (uint64_t)i)) {
                                r->bad = true;
                                r->first_bad = r->got + (uint64_t)i;
                        }
                }
                r->got += (uint64_t)k;
        }
        atomic_fetch_add(&r->done, 1);
        return NULL;
}

/* run_until without the failure: returns when pred holds or the bound ends. */
static void run_until_or(struct harness *h, harness_pred pred, void *arg)
{
        struct until u = {.pred = pred, .arg = arg, .left = RUN_UNTIL_ROUNDS};
        loop_timer_init(&u.t, until_tick, &u);
        loop_timer_arm(h->w->loop, &u.t, 0);
        loop_run(h->w->loop);
        loop_timer_cancel(h->w->loop, &u.t);
}

static bool echo_finished(void *arg)
{
        struct echo_run *r = arg;
        return atomic_load(&r->done) == 3;
}

/* A switch-over while bytes are in flight both ways, repeated: twenty 1 MiB echo
 * connections, each spliced once both relay buffers are empty between two
 * reads, each returning to the relay at its FINs (or under flow control);
 * every byte arrives once and in order. */
static void test_switch_over_in_flight(void **state)
{
        struct t *t = *state;
        int rounds = 20;
        const char *env = getenv("SHUNT_SPLICE_TEST_ROUNDS"); /* longer hunts by hand */
        if (env && atoi(env) > 0 && atoi(env) <= 10000)
                rounds = atoi(env);
        int bad = 0;
        int first = getenv("SHUNT_SPLICE_TEST_FIRST") ? atoi(getenv("SHUNT_SPLICE_TEST_FIRST")) : 0;
        for (int k = first; k < first + rounds; k++) {
                t->cli = t->app = -1;
                connect_through(t);
                set_blocking(t->cli);
                set_blocking(t->app);
                if (k % 3 == 1) {
                        /* Small receive buffers: the relay's sockets fill sooner. */
                        int small = 16384;
                        setsockopt(t->cli, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
                        setsockopt(t->app, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
                }
                struct echo_run r = {.cli = t->cli,
                                     .app = t->app,
                                     .total = 1u << 20,
                                     .seed = 2463534242u + (uint32_t)k};
                pthread_t th[3];
                assert_int_equal(pthread_create(&th[0], NULL, echo_writer, &r), 0);
                assert_int_equal(pthread_create(&th[1], NULL, echo_app, &r), 0);
                assert_int_equal(pthread_create(&th[2], NULL, echo_reader, &r), 0);
                /* Bounded: 12 rounds of run_until's bound; a slow one is said. */
                for (int wait = 0; wait < 12 && !echo_finished(&r); wait++) {
                        run_until_or(&t->h, echo_finished, &r);
                        if (!echo_finished(&r)) {
                                struct strbuf out;
                                strbuf_init(&out);
                                harness_render(&t->h, NULL, &out);
                                print_message("connection %d still open: sent %llu, echoed %llu, "
                                              "got %llu: %s\n",
                                              k, (unsigned long long)r.sent,
                                              (unsigned long long)r.echoed,
                                              (unsigned long long)r.got, out.data);
                                strbuf_free(&out);
                        }
                }
                bool finished = echo_finished(&r);
                if (!finished) {
                        /* The threads end on the shut sockets before r goes. */
                        shutdown(t->cli, SHUT_RDWR);
                        shutdown(t->app, SHUT_RDWR);
                }
                for (int i = 0; i < 3; i++)
                        pthread_join(th[i], NULL);
                if (!finished)
                        fail_msg("connection %d not done in 60 s of loop time", k);
                if (r.bad || r.got != r.total) {
                        bad++;
                        print_message("connection %d: got %llu bytes of %llu, first difference "
                                      "at %lld (spliced so far %llu, overruns %llu)\n",
                                      k, (unsigned long long)r.got, (unsigned long long)r.total,
                                      r.bad ? (long long)r.first_bad : -1LL,
                                      (unsigned long long)harness_stat(&t->h, ST_SPLICE_STARTED),
                                      (unsigned long long)harness_stat(&t->h, ST_SPLICE_OVERRUN));
                }
                close(t->cli);
                close(t->app);
                t->cli = t->app = -1;
        }
        print_message("%d connections, %llu spliced, %llu back to the relay under flow control, "
                      "%llu at a FIN\n",
                      rounds, (unsigned long long)harness_stat(&t->h, ST_SPLICE_STARTED),
                      (unsigned long long)harness_stat(&t->h, ST_SPLICE_RETURNED_FLOW),
                      (unsigned long long)harness_stat(&t->h, ST_SPLICE_RETURNED_FIN));
        assert_int_equal(bad, 0);
        assert_true(harness_stat(&t->h, ST_SPLICE_STARTED) >= (uint64_t)rounds / 2);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_bulk_both_ways_and_half_close, setup, teardown),
            cmocka_unit_test_setup_teardown(test_slow_reader_held_back, setup, teardown),
            cmocka_unit_test_setup_teardown(test_drain_check_catches_repeated_bytes, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_switch_over_in_flight, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
