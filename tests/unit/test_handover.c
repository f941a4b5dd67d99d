// SPDX-License-Identifier: Apache-2.0
/* The upgrade handover protocol (proxy/handover.c), both ends in one
 * process: a server on an event loop in a thread offers real sockets, the
 * blocking client receives them. What a lying or broken peer offers (a UDP
 * socket, a socket that does not listen, a wrong address) is refused with
 * one line; a client that goes away leaves the server as it was. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/loop.h"
#include "proxy/handover.h"

#define N_MANY  70 /* more than one message of HANDOVER_FDS_PER_MSG */
#define WAIT_MS 5000

struct fx {
        struct loop *loop;
        pthread_t thread;
        struct handover_server *srv;
        char dir[64];
        char path[108];
        struct handover_listener offer[N_MANY];
        size_t n_offer;
        size_t n_main; /* offer[0..n_main): the daemon's; then 2 per pod (0: all the daemon's) */
        pthread_mutex_t mu;
        pthread_cond_t cv;
        int begun, aborted, committed;
};

static int on_offer(void *ctx, struct handover_listener *out, size_t max, char *capture,
                    size_t caplen, char *pin_root, size_t pinlen)
{
        struct fx *f = ctx;
        size_t n = f->n_main ? f->n_main : f->n_offer;
        n = n < max ? n : max;
        memcpy(out, f->offer, n * sizeof(*out));
        snprintf(capture, caplen, "iptables");
        snprintf(pin_root, pinlen, "%s", "");
        return (int)n;
}

/* Pod i: offer[n_main + 2i], offer[n_main + 2i + 1], uid "uid-<i>". */
static int on_offer_pod(void *ctx, size_t index, char *uid, size_t uidlen,
                        struct handover_listener *out, size_t max)
{
        struct fx *f = ctx;
        size_t first = f->n_main + 2 * index;
        if (!f->n_main || first + 2 > f->n_offer || max < 2)
                return -ENOENT;
        snprintf(uid, uidlen, "uid-%zu", index);
        memcpy(out, &f->offer[first], 2 * sizeof(*out));
        return 2;
}

static void bump(struct fx *f, int *what)
{
        pthread_mutex_lock(&f->mu);
        (*what)++;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
}

static void on_begin(void *ctx, pid_t peer)
{
        (void)peer;
        struct fx *f = ctx;
        bump(f, &f->begun);
}

static void on_abort(void *ctx, pid_t peer, const char *why)
{
        (void)peer;
        (void)why;
        struct fx *f = ctx;
        bump(f, &f->aborted);
}

static void on_commit(void *ctx, pid_t peer)
{
        (void)peer;
        struct fx *f = ctx;
        bump(f, &f->committed);
}

static const struct handover_server_ops ops = {.offer = on_offer,
                                               .begin = on_begin,
                                               .abort = on_abort,
                                               .commit = on_commit,
                                               .offer_pod = on_offer_pod};

/* Waits (bounded) until *what reaches n. */
static int wait_count(struct fx *f, int *what, int n)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += WAIT_MS / 1000;
        pthread_mutex_lock(&f->mu);
        int rc = 0;
        while (*what < n && rc == 0)
                rc = pthread_cond_timedwait(&f->cv, &f->mu, &ts);
        int got = *what;
        pthread_mutex_unlock(&f->mu);
        return got;
}

static void *loop_main(void *arg)
{
        struct fx *f = arg;
        loop_run(f->loop);
        return NULL;
}

static int setup(void **state)
{
        struct fx *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        pthread_mutex_init(&f->mu, NULL);
        pthread_cond_init(&f->cv, NULL);
        snprintf(f->dir, sizeof(f->dir), "/tmp/shunt-handover-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->path, sizeof(f->path), "%s/run/upgrade.sock", f->dir);
        f->loop = loop_new();
        assert_non_null(f->loop);
        char err[512];
        assert_int_equal(
            handover_server_open(f->loop, f->path, false, &ops, f, &f->srv, err, sizeof(err)), 0);
        assert_int_equal(pthread_create(&f->thread, NULL, loop_main, f), 0);
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fx *f = *state;
        loop_stop(f->loop);
        pthread_join(f->thread, NULL);
        handover_server_free(f->srv, true);
        loop_free(f->loop);
        for (size_t i = 0; i < f->n_offer; i++)
                close(f->offer[i].fd);
        char run[80];
        snprintf(run, sizeof(run), "%s/run", f->dir);
        rmdir(run);
        rmdir(f->dir);
        pthread_mutex_destroy(&f->mu);
        pthread_cond_destroy(&f->cv);
        free(f);
        return 0;
}

/* A socket on 127.0.0.1, port chosen by the kernel; listening or not. */
static void offer_socket(struct fx *f, int type, bool listening, enum handover_role role)
{
        int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        if (listening)
                assert_int_equal(listen(fd, 8), 0);
        struct handover_listener *l = &f->offer[f->n_offer++];
        memset(l, 0, sizeof(*l));
        l->fd = fd;
        l->role = role;
        l->worker = (int)f->n_offer - 1;
        socklen_t sl = sizeof(l->addr);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&l->addr, &sl), 0);
}

static ino_t inode_of(int fd)
{
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        return st.st_ino;
}

static void test_hands_over_every_socket_and_commits(void **state)
{
        struct fx *f = *state;
        for (int i = 0; i < N_MANY; i++)
                offer_socket(f, SOCK_STREAM, true, i % 2 ? HANDOVER_OUTBOUND : HANDOVER_INBOUND);
        struct stat st;
        assert_int_equal(stat(f->path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);

        struct handover_client *c;
        char err[512] = "";
        assert_int_equal(handover_client_connect(f->path, &c, err, sizeof(err)), 0);
        assert_int_equal(handover_client_peer(c), getpid());
        assert_string_equal(handover_client_capture(c), "iptables");
        size_t n;
        struct handover_listener *ls = handover_client_listeners(c, &n);
        assert_int_equal(n, N_MANY);
        for (size_t i = 0; i < n; i++) {
                /* The same socket under a descriptor of our own. */
                assert_int_not_equal(ls[i].fd, f->offer[i].fd);
                assert_int_equal(inode_of(ls[i].fd), inode_of(f->offer[i].fd));
                assert_int_equal(ls[i].role, f->offer[i].role);
                assert_int_equal(ls[i].worker, (int)i);
        }
        assert_int_equal(wait_count(f, &f->begun, 1), 1);
        assert_int_equal(wait_count(f, &f->committed, 0), 0); /* not before READY */
        assert_int_equal(handover_client_ready(c, err, sizeof(err)), 0);
        assert_int_equal(wait_count(f, &f->committed, 1), 1);
        handover_client_free(c);
        struct handover_counts counts;
        handover_server_counts(f->srv, &counts);
        assert_int_equal(counts.completed, 1);
        assert_int_equal(counts.failed, 0);
}

/* Node mode: each pod's listeners after the daemon's, under its uid. */
static void test_hands_over_pods_listeners(void **state)
{
        struct fx *f = *state;
        f->n_main = 2;
        for (int i = 0; i < 2 + 2 * 30; i++) /* 30 pods: a message each */
                offer_socket(f, SOCK_STREAM, true, i % 2 ? HANDOVER_OUTBOUND : HANDOVER_INBOUND);
        struct handover_client *c;
        char err[512] = "";
        int rc = handover_client_connect(f->path, &c, err, sizeof(err));
        if (rc)
                print_message("%s\n", err);
        assert_int_equal(rc, 0);
        size_t n, np;
        handover_client_listeners(c, &n);
        assert_int_equal(n, 2);
        struct handover_pod *pods = handover_client_pods(c, &np);
        assert_int_equal(np, 30);
        for (size_t i = 0; i < np; i++) {
                char uid[32];
                snprintf(uid, sizeof(uid), "uid-%zu", i);
                assert_string_equal(pods[i].uid, uid);
                assert_int_equal(pods[i].n, 2);
                for (size_t j = 0; j < 2; j++) {
                        const struct handover_listener *want = &f->offer[2 + 2 * i + j];
                        assert_int_equal(inode_of(pods[i].ls[j].fd), inode_of(want->fd));
                        assert_int_equal(pods[i].ls[j].role, want->role);
                }
        }
        assert_int_equal(handover_client_ready(c, err, sizeof(err)), 0);
        assert_int_equal(wait_count(f, &f->committed, 1), 1);
        handover_client_free(c); /* closes the pods' descriptors not taken */
}

static void expect_refused(struct fx *f, const char *want, const char *want2)
{
        struct handover_client *c = NULL;
        char err[512] = "";
        assert_int_equal(handover_client_connect(f->path, &c, err, sizeof(err)), -EPROTO);
        assert_null(c);
        if (!strstr(err, want) || !strstr(err, want2))
                fail_msg("error %s, want %s and %s", err, want, want2);
        /* The server saw the client go before READY: it owns everything still. */
        assert_int_equal(wait_count(f, &f->aborted, 1), 1);
        assert_int_equal(wait_count(f, &f->committed, 0), 0);
}

static void test_refuses_a_udp_socket(void **state)
{
        struct fx *f = *state;
        offer_socket(f, SOCK_STREAM, true, HANDOVER_INBOUND);
        offer_socket(f, SOCK_DGRAM, false, HANDOVER_OUTBOUND);
        expect_refused(f, "outbound listener 127.0.0.1:", "not a listening TCP socket");
}

static void test_refuses_a_socket_that_does_not_listen(void **state)
{
        struct fx *f = *state;
        offer_socket(f, SOCK_STREAM, false, HANDOVER_ADMIN);
        expect_refused(f, "admin listener 127.0.0.1:", "not a listening TCP socket");
}

static void test_refuses_a_wrong_address(void **state)
{
        struct fx *f = *state;
        offer_socket(f, SOCK_STREAM, true, HANDOVER_INBOUND);
        struct sockaddr_in *sin = (struct sockaddr_in *)&f->offer[0].addr;
        sin->sin_port = htons((uint16_t)(ntohs(sin->sin_port) ^ 1));
        expect_refused(f, "inbound listener: said 127.0.0.1:", "is bound to 127.0.0.1:");
}

static void test_client_gone_before_ready(void **state)
{
        struct fx *f = *state;
        offer_socket(f, SOCK_STREAM, true, HANDOVER_INBOUND);
        struct handover_client *c;
        char err[512];
        assert_int_equal(handover_client_connect(f->path, &c, err, sizeof(err)), 0);
        handover_client_free(c);
        assert_int_equal(wait_count(f, &f->aborted, 1), 1);
        assert_int_equal(wait_count(f, &f->committed, 0), 0);
        struct handover_counts counts;
        handover_server_counts(f->srv, &counts);
        assert_int_equal(counts.failed, 1);
        /* The next one is served as if nothing happened. */
        assert_int_equal(handover_client_connect(f->path, &c, err, sizeof(err)), 0);
        assert_int_equal(handover_client_ready(c, err, sizeof(err)), 0);
        assert_int_equal(wait_count(f, &f->committed, 1), 1);
        handover_client_free(c);
}

static void test_live_path_is_not_taken(void **state)
{
        struct fx *f = *state;
        struct loop *l = loop_new();
        struct handover_server *s = NULL;
        char err[512] = "";
        assert_int_equal(handover_server_open(l, f->path, false, &ops, f, &s, err, sizeof(err)),
                         -EADDRINUSE);
        assert_null(s);
        assert_non_null(strstr(err, "is served by another shuntd"));
        /* The shuntd that took over replaces it. */
        assert_int_equal(handover_server_open(l, f->path, true, &ops, f, &s, err, sizeof(err)), 0);
        handover_server_free(s, false);
        loop_free(l);
}

static void test_nothing_to_take_over(void **state)
{
        struct fx *f = *state;
        char path[96], err[512];
        struct handover_client *c = NULL;
        snprintf(path, sizeof(path), "%s/none.sock", f->dir);
        assert_int_equal(handover_client_connect(path, &c, err, sizeof(err)), -ENOENT);
        /* A socket file nobody serves any more. */
        int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
        assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
        close(fd);
        assert_int_equal(handover_client_connect(path, &c, err, sizeof(err)), -ECONNREFUSED);
        unlink(path);
        /* Not a socket at all. */
        fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        close(fd);
        assert_int_equal(handover_client_connect(path, &c, err, sizeof(err)), -EPERM);
        assert_non_null(strstr(err, "not a socket"));
        unlink(path);
        assert_null(c);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_hands_over_every_socket_and_commits, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_hands_over_pods_listeners, setup, teardown),
            cmocka_unit_test_setup_teardown(test_refuses_a_udp_socket, setup, teardown),
            cmocka_unit_test_setup_teardown(test_refuses_a_socket_that_does_not_listen, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_refuses_a_wrong_address, setup, teardown),
            cmocka_unit_test_setup_teardown(test_client_gone_before_ready, setup, teardown),
            cmocka_unit_test_setup_teardown(test_live_path_is_not_taken, setup, teardown),
            cmocka_unit_test_setup_teardown(test_nothing_to_take_over, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
