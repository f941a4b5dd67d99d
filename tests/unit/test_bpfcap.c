// SPDX-License-Identifier: Apache-2.0
/* eBPF capture (intercept/bpfcap.h, bpf/capture.bpf.c) on the running kernel.
 *
 * The process enters a private network namespace (only its own loopback
 * carries traffic), loads and attaches the programs to a throwaway cgroup
 * (<cgroup2 mount>/shunt-test-<pid>, the mount found in /proc/self/mountinfo:
 * /sys/fs/cgroup on a pure cgroup v2 host, /sys/fs/cgroup/unified on a
 * hybrid one) with pins under a throwaway root (/sys/fs/bpf/shunt-test-<pid>),
 * and runs every scenario in a forked child moved into that cgroup.
 * Everything is removed at the end, also when a test fails. Needs root, a
 * cgroup v2 mount and a kernel that loads the programs: without them every
 * live test fails naming what is missing, unless SHUNT_ALLOW_SKIP allows it
 * (require.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/sockaddr.h"
#include "intercept/bpfcap.h"
#include "require.h"

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif
#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

#define MARK       0x539u
#define EXCL_PORT  9999
#define SHORT_CONN 1000

static char g_cgroup[256];
static char g_pins[256];
static uint16_t g_port;
static struct bpfcap *g_cap;
static char g_cgroup2[200]; /* where cgroup v2 is mounted */
static bool g_live;
static const char *g_skip_name; /* what the live tests miss (require.h) */
static char g_skip_why[1024];
static struct cidr g_excl_cidr;

/* ---- environment ------------------------------------------------------------ */

static int lo_up(void)
{
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0)
                return -1;
        struct ifreq ifr;
        memset(&ifr, 0, sizeof(ifr));
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
        int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
        if (rc == 0) {
                ifr.ifr_flags |= IFF_UP;
                rc = ioctl(s, SIOCSIFFLAGS, &ifr);
        }
        close(s);
        return rc;
}

/* The mount point of the cgroup v2 hierarchy, from mountinfo
 * ("ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS] - FSTYPE ..."). */
static int find_cgroup2(char *out, size_t len)
{
        FILE *f = fopen("/proc/self/mountinfo", "r");
        if (!f)
                return -1;
        char line[1024], mnt[512];
        int rc = -1;
        while (rc < 0 && fgets(line, sizeof(line), f)) {
                const char *fs = strstr(line, " - ");
                if (fs && strncmp(fs + 3, "cgroup2 ", 8) == 0 &&
                    sscanf(line, "%*s %*s %*s %*s %511s", mnt) == 1)
                        rc = snprintf(out, len, "%s", mnt) < (int)len ? 0 : -1;
        }
        fclose(f);
        return rc;
}

/* A port on the private namespace's loopback: nothing else runs in that
 * namespace, so the port cannot be taken between this probe and the bind. */
static uint16_t free_port(void)
{
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t l = sizeof(a);
        if (s < 0 || bind(s, (void *)&a, sizeof(a)) < 0 || getsockname(s, (void *)&a, &l) < 0)
                return 0;
        close(s);
        return ntohs(a.sin_port);
}

static void options(struct bpfcap_options *o)
{
        static uint16_t ports[] = {EXCL_PORT};
        memset(o, 0, sizeof(*o));
        o->pin_root = g_pins;
        o->cgroup_path = g_cgroup;
        o->outbound_port = g_port;
        o->mark = MARK;
        o->uid = SHUNT_UID_NONE;
        o->shortcut = true;
        o->exclude_ports = ports;
        o->n_exclude_ports = 1;
        o->exclude_cidrs = &g_excl_cidr;
        o->n_exclude_cidrs = 1;
}

static int group_setup(void **state)
{
        if (geteuid() != 0) {
                g_skip_name = "root";
                snprintf(g_skip_why, sizeof(g_skip_why), "eBPF capture tests need root");
                return 0;
        }
        if (unshare(CLONE_NEWNET) < 0 || lo_up() < 0) {
                g_skip_name = "netns";
                snprintf(g_skip_why, sizeof(g_skip_why), "private network namespace: %s",
                         strerror(errno));
                return 0;
        }
        if (!g_cgroup2[0]) {
                g_skip_name = "cgroup2";
                snprintf(g_skip_why, sizeof(g_skip_why),
                         "no cgroup v2 hierarchy in /proc/self/mountinfo");
                return 0;
        }
        char why[256];
        snprintf(g_cgroup, sizeof(g_cgroup), "%s/shunt-test-%d", g_cgroup2, (int)getpid());
        snprintf(g_pins, sizeof(g_pins), "/sys/fs/bpf/shunt-test-%d", (int)getpid());
        if (mkdir(g_cgroup, 0755) < 0) {
                g_skip_name = "cgroup2";
                snprintf(g_skip_why, sizeof(g_skip_why), "mkdir %s: %s", g_cgroup, strerror(errno));
                g_cgroup[0] = '\0';
                return 0;
        }
        if (bpfcap_probe(g_cgroup, why, sizeof(why)) < 0) {
                g_skip_name = "bpf";
                snprintf(g_skip_why, sizeof(g_skip_why), "probe: %s", why);
                rmdir(g_cgroup);
                g_cgroup[0] = '\0';
                return 0;
        }
        g_port = free_port();
        assert_true(g_port != 0);
        assert_int_equal(parse_cidr("10.99.0.0/16", &g_excl_cidr), 0);
        struct bpfcap_options o;
        options(&o);
        char err[512];
        g_cap = bpfcap_open(&o, err, sizeof(err));
        if (!g_cap) {
                fprintf(stderr, "bpfcap_open: %s\n", err);
                return -1;
        }
        g_live = true;
        return 0;
}

static int group_teardown(void **state)
{
        if (g_cap)
                bpfcap_close(g_cap, true);
        g_cap = NULL;
        if (g_pins[0])
                bpfcap_remove_pins(g_pins);
        char other[300];
        snprintf(other, sizeof(other), "%s/old", g_cgroup);
        if (g_cgroup[0])
                rmdir(other);
        if (g_cgroup[0] && rmdir(g_cgroup) < 0 && errno != ENOENT)
                fprintf(stderr, "rmdir %s: %s\n", g_cgroup, strerror(errno));
        return 0;
}

#define LIVE()                                                                                     \
        do {                                                                                       \
                if (!g_live)                                                                       \
                        require_missing(g_skip_name, g_skip_why);                                  \
        } while (0)

/* ---- a child in the cgroup ------------------------------------------------------ */

struct result {
        int ok;        /* 1 when every step in the child worked */
        char msg[256]; /* the first step that failed */
        char orig_sockopt[64];
        char orig_lookup[64];
        char client_peer[64];
        int n;
        uint64_t v[4];
};

static void step_fail(struct result *r, const char *step)
{
        if (r->ok) {
                r->ok = 0;
                snprintf(r->msg, sizeof(r->msg), "%s: %s", step, strerror(errno));
        }
}

static void fmt(const struct sockaddr_storage *ss, char *buf, size_t len)
{
        char a[INET6_ADDRSTRLEN] = "?";
        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *s = (const void *)ss;
                inet_ntop(AF_INET, &s->sin_addr, a, sizeof(a));
                snprintf(buf, len, "%s:%u", a, ntohs(s->sin_port));
        } else if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *s = (const void *)ss;
                inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof(a));
                snprintf(buf, len, "[%s]:%u", a, ntohs(s->sin6_port));
        } else {
                snprintf(buf, len, "family %d", ss->ss_family);
        }
}

/* Runs fn in a child that first joins the test cgroup; returns its result. */
static void in_cgroup(void (*fn)(struct result *, void *), void *arg, struct result *out)
{
        int p[2];
        assert_int_equal(pipe(p), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                close(p[0]);
                struct result r;
                memset(&r, 0, sizeof(r));
                r.ok = 1;
                char procs[300];
                snprintf(procs, sizeof(procs), "%s/cgroup.procs", g_cgroup);
                int fd = open(procs, O_WRONLY | O_CLOEXEC);
                if (fd < 0 || write(fd, "0\n", 2) != 2)
                        step_fail(&r, "joining the cgroup");
                else
                        fn(&r, arg);
                if (fd >= 0)
                        close(fd);
                ssize_t w = write(p[1], &r, sizeof(r));
                _exit(w == (ssize_t)sizeof(r) ? 0 : 1);
        }
        close(p[1]);
        memset(out, 0, sizeof(*out));
        ssize_t n = read(p[0], out, sizeof(*out));
        close(p[0]);
        int status;
        waitpid(pid, &status, 0);
        assert_int_equal(n, (ssize_t)sizeof(*out));
        if (!out->ok)
                print_message("child: %s\n", out->msg);
}

static int listener(int family)
{
        struct sockaddr_storage ss;
        sockaddr_from_string(family == AF_INET ? "127.0.0.1" : "::1", g_port, &ss);
        int s = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (family == AF_INET6)
                setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (s < 0 || bind(s, (void *)&ss, sockaddr_len(&ss)) < 0 || listen(s, 64) < 0) {
                if (s >= 0)
                        close(s);
                return -1;
        }
        return s;
}

/* One captured connection: connect to dst (rewritten to our listener),
 * accept, ask for the original destination both ways, exchange bytes. */
static void one_conn(struct result *r, int ls, const char *ip, uint16_t port, bool check_lookup,
                     bool exchange)
{
        struct sockaddr_storage dst, local, peer, orig;
        sockaddr_from_string(ip, port, &dst);
        int c = socket(dst.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c < 0 || connect(c, (void *)&dst, sockaddr_len(&dst)) < 0) {
                step_fail(r, "connect");
                if (c >= 0)
                        close(c);
                return;
        }
        socklen_t l = sizeof(peer);
        getpeername(c, (void *)&peer, &l);
        fmt(&peer, r->client_peer, sizeof(r->client_peer));
        int a = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (a < 0) {
                step_fail(r, "accept");
                close(c);
                return;
        }
        socklen_t ol = sizeof(orig);
        memset(&orig, 0, sizeof(orig));
        int rc = dst.ss_family == AF_INET
                     ? getsockopt(a, SOL_IP, SO_ORIGINAL_DST, &orig, &ol)
                     : getsockopt(a, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &orig, &ol);
        if (rc < 0)
                step_fail(r, "getsockopt(SO_ORIGINAL_DST)");
        else
                fmt(&orig, r->orig_sockopt, sizeof(r->orig_sockopt));
        if (check_lookup) {
                l = sizeof(local);
                getsockname(a, (void *)&local, &l);
                l = sizeof(peer);
                getpeername(a, (void *)&peer, &l);
                rc = bpfcap_lookup(g_cap, &peer, &local, &orig, false);
                if (rc < 0) {
                        errno = -rc;
                        step_fail(r, "bpfcap_lookup");
                } else {
                        fmt(&orig, r->orig_lookup, sizeof(r->orig_lookup));
                }
        }
        if (exchange) {
                /* Both ends are in the cgroup, so both are paired: these
                 * bytes take the sk_msg shortcut. */
                char buf[4096], got[4096];
                memset(buf, 'x', sizeof(buf));
                for (int i = 0; i < 16 && r->ok; i++) {
                        if (send(c, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
                                step_fail(r, "send app->proxy");
                        size_t have = 0;
                        while (have < sizeof(got) && r->ok) {
                                ssize_t n = recv(a, got + have, sizeof(got) - have, 0);
                                if (n <= 0)
                                        step_fail(r, "recv at proxy");
                                else
                                        have += (size_t)n;
                        }
                        if (r->ok && send(a, got, have, 0) != (ssize_t)have)
                                step_fail(r, "send proxy->app");
                        have = 0;
                        while (have < sizeof(got) && r->ok) {
                                ssize_t n = recv(c, got + have, sizeof(got) - have, 0);
                                if (n <= 0)
                                        step_fail(r, "recv at app");
                                else
                                        have += (size_t)n;
                        }
                        if (r->ok && memcmp(got, buf, sizeof(buf)) != 0) {
                                errno = EIO;
                                step_fail(r, "echoed bytes differ");
                        }
                }
        }
        close(c);
        close(a);
}

static void child_v4(struct result *r, void *arg)
{
        int ls = listener(AF_INET);
        if (ls < 0) {
                step_fail(r, "listen");
                return;
        }
        one_conn(r, ls, "10.200.0.1", 8080, true, true);
        close(ls);
}

static void child_v6(struct result *r, void *arg)
{
        int ls = listener(AF_INET6);
        if (ls < 0) {
                step_fail(r, "listen v6");
                return;
        }
        one_conn(r, ls, "fd00:1::5", 443, true, true);
        close(ls);
}

static void port_text(char *buf, size_t len, const char *addr, uint16_t port)
{
        snprintf(buf, len, "%s:%u", addr, port);
}

static void test_ipv4_capture(void **state)
{
        LIVE();
        struct shunt_counters before, after;
        assert_int_equal(bpfcap_counters(g_cap, &before), 0);
        struct result r;
        in_cgroup(child_v4, NULL, &r);
        assert_true(r.ok);
        char want[64];
        port_text(want, sizeof(want), "127.0.0.1", g_port);
        assert_string_equal(r.client_peer, want); /* the connect went to the listener */
        assert_string_equal(r.orig_sockopt, "10.200.0.1:8080");
        assert_string_equal(r.orig_lookup, "10.200.0.1:8080");
        assert_int_equal(bpfcap_counters(g_cap, &after), 0);
        assert_true(after.redirected >= before.redirected + 1);
        assert_true(after.established >= before.established + 1);
        assert_true(after.getsockopt_answered >= before.getsockopt_answered + 1);
        assert_true(after.sockhash_added >= before.sockhash_added + 2);
        /* 16 x 4 KiB each way went through the shortcut. */
        assert_true(after.shortcut_bytes >= before.shortcut_bytes + 2 * 16 * 4096);
        assert_true(after.shortcut_msgs > before.shortcut_msgs);
}

static void test_ipv6_capture(void **state)
{
        LIVE();
        struct result r;
        in_cgroup(child_v6, NULL, &r);
        assert_true(r.ok);
        char want[64];
        snprintf(want, sizeof(want), "[::1]:%u", g_port);
        assert_string_equal(r.client_peer, want);
        assert_string_equal(r.orig_sockopt, "[fd00:1::5]:443");
        assert_string_equal(r.orig_lookup, "[fd00:1::5]:443");
}

/* Connects that must not be captured: a socket with shuntd's mark, an
 * excluded port, an excluded CIDR. None may reach the listener. */
static void child_not_captured(struct result *r, void *arg)
{
        int ls = listener(AF_INET);
        if (ls < 0) {
                step_fail(r, "listen");
                return;
        }
        const struct {
                const char *ip;
                uint16_t port;
                bool mark;
        } cases[] = {
            {"10.200.0.1", 8080, true}, {"10.200.0.1", EXCL_PORT, false}, {"10.99.3.4", 80, false}};
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct sockaddr_storage dst;
                sockaddr_from_string(cases[i].ip, cases[i].port, &dst);
                int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                uint32_t mark = MARK;
                if (cases[i].mark && setsockopt(c, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
                        step_fail(r, "SO_MARK");
                /* In this namespace only lo is up: an uncaptured connect to
                 * 10.x fails at once (ENETUNREACH), a captured one would
                 * reach the listener. */
                int rc = connect(c, (void *)&dst, sockaddr_len(&dst));
                if (rc == 0 || errno != ENETUNREACH) {
                        errno = rc == 0 ? EISCONN : errno;
                        r->n = (int)i;
                        step_fail(r, "an excluded connect was not left alone");
                }
                uint64_t cookie = 0;
                socklen_t cl = sizeof(cookie);
                struct shunt_origdst od;
                if (getsockopt(c, SOL_SOCKET, SO_COOKIE, &cookie, &cl) < 0)
                        step_fail(r, "SO_COOKIE");
                else if (bpf_map_lookup_elem(bpfcap_map_fd(g_cap, BPFCAP_ORIG_BY_COOKIE), &cookie,
                                             &od) == 0) {
                        errno = EEXIST;
                        step_fail(r, "an excluded socket has a cookie entry");
                }
                close(c);
        }
        struct pollfd pfd = {.fd = ls, .events = POLLIN};
        if (poll(&pfd, 1, 100) != 0) {
                errno = EISCONN;
                step_fail(r, "the listener got a connection");
        }
        close(ls);
}

static void test_not_captured(void **state)
{
        LIVE();
        struct shunt_counters before, after;
        assert_int_equal(bpfcap_counters(g_cap, &before), 0);
        struct result r;
        in_cgroup(child_not_captured, NULL, &r);
        assert_true(r.ok);
        assert_int_equal(bpfcap_counters(g_cap, &after), 0);
        assert_int_equal(after.redirected, before.redirected);
        assert_int_equal(after.skipped_own, before.skipped_own + 1);
        assert_int_equal(after.skipped_excluded, before.skipped_excluded + 2);
}

/* Not in the cgroup: nothing is captured at all. */
static void test_outside_cgroup_untouched(void **state)
{
        LIVE();
        struct sockaddr_storage dst;
        sockaddr_from_string("10.200.0.1", 8080, &dst);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(c >= 0);
        assert_int_equal(connect(c, (void *)&dst, sockaddr_len(&dst)), -1);
        assert_int_equal(errno, ENETUNREACH);
        close(c);
}

static void child_many(struct result *r, void *arg)
{
        int ls = listener(AF_INET);
        int ls6 = listener(AF_INET6);
        if (ls < 0 || ls6 < 0) {
                step_fail(r, "listen");
                return;
        }
        for (int i = 0; i < SHORT_CONN && r->ok; i++) {
                bool v6 = i % 4 == 3;
                one_conn(r, v6 ? ls6 : ls, v6 ? "fd00:1::7" : "10.200.0.2", (uint16_t)(1000 + i),
                         false, false);
                char want[64];
                if (v6)
                        snprintf(want, sizeof(want), "[fd00:1::7]:%u", 1000 + i);
                else
                        snprintf(want, sizeof(want), "10.200.0.2:%u", 1000 + i);
                if (r->ok && strcmp(r->orig_sockopt, want) != 0) {
                        errno = EINVAL;
                        snprintf(r->msg, sizeof(r->msg), "connection %d: got %s, want %s", i,
                                 r->orig_sockopt, want);
                        r->ok = 0;
                }
                r->n = i + 1;
        }
        close(ls);
        close(ls6);
}

static long entries_settled(enum bpfcap_map m)
{
        long n = -1;
        for (int i = 0; i < 100; i++) { /* up to 2 s for the last closes */
                n = bpfcap_map_entries(g_cap, m);
                if (n == 0)
                        break;
                struct timespec ts = {0, 20 * 1000 * 1000};
                nanosleep(&ts, NULL);
        }
        return n;
}

static void test_no_entries_left(void **state)
{
        LIVE();
        struct shunt_counters before, after;
        assert_int_equal(bpfcap_counters(g_cap, &before), 0);
        struct result r;
        in_cgroup(child_many, NULL, &r);
        assert_true(r.ok);
        assert_int_equal(r.n, SHORT_CONN);
        assert_int_equal(bpfcap_counters(g_cap, &after), 0);
        assert_int_equal(after.redirected - before.redirected, SHORT_CONN);
        assert_int_equal(after.getsockopt_answered - before.getsockopt_answered, SHORT_CONN);
        assert_int_equal(after.map_full, before.map_full);
        assert_int_equal(entries_settled(BPFCAP_ORIG_BY_COOKIE), 0);
        assert_int_equal(entries_settled(BPFCAP_ORIG_BY_TUPLE), 0);
        assert_int_equal(entries_settled(BPFCAP_SOCKHASH), 0);
        assert_int_equal(entries_settled(BPFCAP_SHORTCUT_OFF), 0);
}

/* The shortcut flag: off, the bytes take the TCP stack and are counted so. */
static void child_flag(struct result *r, void *arg)
{
        int ls = listener(AF_INET);
        struct sockaddr_storage dst;
        sockaddr_from_string("10.200.0.1", 8080, &dst);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ls < 0 || c < 0 || connect(c, (void *)&dst, sockaddr_len(&dst)) < 0) {
                step_fail(r, "connect");
                return;
        }
        int a = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        int rc = bpfcap_shortcut_set(g_cap, a, false);
        if (rc < 0) {
                errno = -rc;
                step_fail(r, "bpfcap_shortcut_set off");
        }
        r->n = (int)bpfcap_map_entries(g_cap, BPFCAP_SHORTCUT_OFF);
        char buf[100] = "ping", got[100];
        if (send(c, buf, 4, 0) != 4 || recv(a, got, sizeof(got), 0) != 4)
                step_fail(r, "exchange with the shortcut off");
        close(c);
        close(a);
        close(ls);
}

static void test_shortcut_flag(void **state)
{
        LIVE();
        struct shunt_counters before, after;
        assert_int_equal(bpfcap_counters(g_cap, &before), 0);
        struct result r;
        in_cgroup(child_flag, NULL, &r);
        assert_true(r.ok);
        assert_int_equal(r.n, 2); /* both directions */
        assert_int_equal(bpfcap_counters(g_cap, &after), 0);
        assert_int_equal(after.shortcut_bytes, before.shortcut_bytes);
        assert_true(after.shortcut_off >= before.shortcut_off + 1);
        /* Closing removed the flags. */
        assert_int_equal(entries_settled(BPFCAP_SHORTCUT_OFF), 0);
}

/* ---- flow control ------------------------------------------------------------ */

/* The byte at stream offset i: a reordered, lost or repeated chunk of the
 * stream shows as a mismatch. */
static uint8_t pattern(uint64_t i)
{
        return (uint8_t)(i ^ (i >> 8) ^ (i >> 16) ^ (i >> 24));
}

/* Sends the pattern from stream offset off on w until the kernel takes no
 * more (EAGAIN) or max bytes went; the bytes sent, or -1. */
static int64_t fill(int w, uint64_t off, uint64_t max)
{
        static uint8_t buf[65536];
        uint64_t n = 0;
        while (n < max) {
                size_t len = max - n < sizeof(buf) ? (size_t)(max - n) : sizeof(buf);
                for (size_t k = 0; k < len; k++)
                        buf[k] = pattern(off + n + k);
                ssize_t s = send(w, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (s < 0 && errno == EINTR)
                        continue;
                if (s < 0)
                        return errno == EAGAIN ? (int64_t)n : -1;
                n += (uint64_t)s;
        }
        return (int64_t)n;
}

#define FLOW_OFFER (64ull << 20) /* what the writer offers while nobody reads */
#define FLOW_MORE  (8ull << 20)  /* written afterwards while the reader keeps up */
#define FLOW_CHUNK (256u << 10)

/* One direction of a paired connection, w -> rd: the writer offers
 * FLOW_OFFER while rd reads nothing, then rd reads everything and checks
 * it while w writes FLOW_MORE. v[0]: taken while rd slept, v[1]: shortcut
 * bytes meanwhile, v[2]: pauses meanwhile, v[3]: resumes afterwards. */
static void flow_one_way(struct result *r, int w, int rd)
{
        struct shunt_counters c0, c1, c2;
        bpfcap_counters(g_cap, &c0);
        int64_t took = fill(w, 0, FLOW_OFFER);
        if (took < 0) {
                step_fail(r, "writing while the reader sleeps");
                return;
        }
        bpfcap_counters(g_cap, &c1);
        r->v[0] = (uint64_t)took;
        r->v[1] = c1.shortcut_bytes - c0.shortcut_bytes;
        r->v[2] = c1.flow_paused - c0.flow_paused;
        uint64_t wr = (uint64_t)took, got = 0, goal = wr + FLOW_MORE;
        static uint8_t buf[65536];
        for (int rounds = 0; got < goal && rounds < 200000 && r->ok; rounds++) {
                ssize_t n = recv(rd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n > 0) {
                        for (ssize_t k = 0; k < n; k++) {
                                if (buf[k] != pattern(got + (uint64_t)k)) {
                                        errno = EIO;
                                        step_fail(r, "a byte out of place");
                                        break;
                                }
                        }
                        got += (uint64_t)n;
                        continue;
                }
                if (n == 0 || errno != EAGAIN) {
                        step_fail(r, "reading");
                        break;
                }
                if (wr < goal) {
                        int64_t more = fill(w, wr, goal - wr < FLOW_CHUNK ? goal - wr : FLOW_CHUNK);
                        if (more < 0)
                                step_fail(r, "writing while the reader keeps up");
                        else
                                wr += (uint64_t)more;
                } else {
                        struct pollfd p = {.fd = rd, .events = POLLIN};
                        if (poll(&p, 1, 5000) == 0) {
                                errno = ETIMEDOUT;
                                step_fail(r, "waiting for the last bytes");
                        }
                }
        }
        if (r->ok && got != goal) {
                errno = EIO;
                step_fail(r, "not every byte arrived");
        }
        bpfcap_counters(g_cap, &c2);
        r->v[3] = c2.flow_resumed - c1.flow_resumed;
}

static void child_flow(struct result *r, void *arg)
{
        bool to_app = *(bool *)arg;
        int ls = listener(AF_INET);
        struct sockaddr_storage dst;
        sockaddr_from_string("10.200.0.2", 8080, &dst);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ls < 0 || c < 0 || connect(c, (void *)&dst, sockaddr_len(&dst)) < 0) {
                step_fail(r, "connect");
                return;
        }
        int a = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (a < 0)
                step_fail(r, "accept");
        else if (to_app)
                flow_one_way(r, a, c); /* the proxy writes, the application sleeps */
        else
                flow_one_way(r, c, a); /* the application writes, the proxy sleeps */
        close(c);
        if (a >= 0)
                close(a);
        close(ls);
}

/* Pitfall 1: a reader that stops reading holds at most SHUNT_FLOW_HIGH
 * shortcut bytes; the writer's further bytes take TCP, whose window stops
 * it; once the reader has caught up the shortcut resumes, and every byte
 * arrives in order. Each direction. */
static void test_flow_control(void **state)
{
        LIVE();
        for (int dir = 0; dir < 2; dir++) {
                bool to_app = dir == 1;
                struct result r;
                in_cgroup(child_flow, &to_app, &r);
                print_message("%s: taken while the reader slept %llu, by the shortcut %llu, "
                              "pauses %llu, resumes %llu\n",
                              to_app ? "proxy -> app" : "app -> proxy", (unsigned long long)r.v[0],
                              (unsigned long long)r.v[1], (unsigned long long)r.v[2],
                              (unsigned long long)r.v[3]);
                assert_true(r.ok);
                assert_true(r.v[0] < FLOW_OFFER);      /* held back */
                assert_true(r.v[0] > SHUNT_FLOW_HIGH); /* TCP took more */
                assert_true(r.v[1] > 0 && r.v[1] <= SHUNT_FLOW_HIGH);
                assert_true(r.v[2] >= 1);
                assert_true(r.v[3] >= 1);
        }
        assert_int_equal(entries_settled(BPFCAP_FLOW), 0);
}

/* ---- pins ---------------------------------------------------------------------- */

static bool exists(const char *dir, const char *name)
{
        char p[512];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, name);
        return stat(p, &st) == 0;
}

static const char *const pinned[] = {
    "shunt_orig_by_cookie", "shunt_orig_by_tuple", "shunt_sockhash",      "shunt_shortcut_off",
    "shunt_config",         "shunt_exclude_ports", "shunt_exclude_cidrs", "shunt_counters",
    "shunt_flow",           "link_connect4",       "link_connect6",       "link_sockops",
    "link_getsockopt",
};

/* bpftool, a real reader of the pins, prints the counters by name. */
/* ---- capture by an init process: the proxy without privileges ---------------------- */

#define PROXY_ID 1337

/* Whether this kernel lets a process without CAP_BPF use the objects it may
 * open from bpffs: from 5.19 always (kernel.unprivileged_bpf_disabled then
 * refuses only creating maps and loading programs, and ids), before only
 * when that sysctl is 0. 6.1 and 6.18 both allow it. */
static bool unprivileged_map_access(void)
{
        struct utsname u;
        int major = 0, minor = 0;
        if (uname(&u) == 0)
                sscanf(u.release, "%d.%d", &major, &minor);
        if (major > 5 || (major == 5 && minor >= 19))
                return true;
        FILE *f = fopen("/proc/sys/kernel/unprivileged_bpf_disabled", "re");
        int v = 1;
        if (f) {
                if (fscanf(f, "%d", &v) != 1)
                        v = 1;
                fclose(f);
        }
        return v == 0;
}

/* As the proxy container: uid and gid 1337, no capability in any set. */
static int drop_privileges(void)
{
        for (int cap = 0; cap <= 63; cap++)
                if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
                        return -1;
        if (setgroups(0, NULL) < 0 || setresgid(PROXY_ID, PROXY_ID, PROXY_ID) < 0 ||
            setresuid(PROXY_ID, PROXY_ID, PROXY_ID) < 0)
                return -1;
        return 0;
}

/* v[0]: bpfcap_open_pinned's result; v[1]: a lookup through it worked;
 * v[2]: a write through it failed with EPERM; v[3]: a link pin stayed
 * closed. orig_sockopt: SO_ORIGINAL_DST, answered by the program either way. */
static void child_unprivileged(struct result *r, void *arg)
{
        /* The pin root seen through a bind mount, as a pod mounts a host
         * directory: the bpffs root above it may be closed (mode 0700). */
        const char *pins = "/tmp/pins";
        int ls = listener(AF_INET);
        if (ls < 0 || unshare(CLONE_NEWNS) < 0 ||
            mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("tmpfs", "/tmp", "tmpfs", 0, "mode=0755") < 0 || mkdir(pins, 0755) < 0 ||
            mount(g_pins, pins, NULL, MS_BIND, NULL) < 0 || drop_privileges() < 0) {
                step_fail(r, "listener, pin root mount, then dropping privileges");
                return;
        }
        struct bpfcap *pinned_cap = NULL;
        char err[512];
        int rc = bpfcap_open_pinned(pins, &pinned_cap, err, sizeof(err));
        r->v[0] = (uint64_t)(int64_t)rc;
        struct sockaddr_storage dst, local, peer, orig;
        sockaddr_from_string("10.200.0.7", 8081, &dst);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c < 0 || connect(c, (void *)&dst, sockaddr_len(&dst)) < 0) {
                step_fail(r, "connect as uid 1337");
                goto out;
        }
        int a = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (a < 0) {
                step_fail(r, "accept");
                goto out;
        }
        socklen_t ol = sizeof(orig);
        if (getsockopt(a, SOL_IP, SO_ORIGINAL_DST, &orig, &ol) < 0)
                step_fail(r, "getsockopt(SO_ORIGINAL_DST) without privileges");
        else
                fmt(&orig, r->orig_sockopt, sizeof(r->orig_sockopt));
        if (pinned_cap) {
                socklen_t l = sizeof(local);
                getsockname(a, (void *)&local, &l);
                l = sizeof(peer);
                getpeername(a, (void *)&peer, &l);
                r->v[1] = bpfcap_lookup(pinned_cap, &peer, &local, &orig, true) == 0;
                if (r->v[1])
                        fmt(&orig, r->orig_lookup, sizeof(r->orig_lookup));
                r->v[2] = bpfcap_shortcut_set(pinned_cap, a, false) == -EPERM;
        }
        char link[512];
        snprintf(link, sizeof(link), "%s/link_connect4", pins);
        r->v[3] = bpf_obj_get(link) < 0;
        close(a);
out:
        if (c >= 0)
                close(c);
        bpfcap_close(pinned_cap, true); /* borrowed: detaches nothing */
        close(ls);
}

static void test_shared_pins_unprivileged(void **state)
{
        LIVE();
        char err[512];
        assert_int_equal(bpfcap_share(g_cap, PROXY_ID, err, sizeof(err)), 0);
        struct stat st;
        assert_int_equal(stat(g_pins, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0750);
        assert_int_equal(st.st_gid, PROXY_ID);
        char path[512];
        snprintf(path, sizeof(path), "%s/shunt_orig_by_tuple", g_pins);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0640);
        snprintf(path, sizeof(path), "%s/link_sockops", g_pins);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);

        struct result r;
        in_cgroup(child_unprivileged, NULL, &r);
        assert_true(r.ok);
        assert_string_equal(r.orig_sockopt, "10.200.0.7:8081");
        assert_true(r.v[3]); /* the links are root's */
        if (unprivileged_map_access()) {
                assert_int_equal((int64_t)r.v[0], 0);
                assert_true(r.v[1]);
                assert_string_equal(r.orig_lookup, "10.200.0.7:8081");
                assert_true(r.v[2]); /* read-only: no writes */
        } else {
                print_message("this kernel refuses bpf() without CAP_BPF: the proxy falls back "
                              "to SO_ORIGINAL_DST\n");
                assert_int_equal((int64_t)r.v[0], -EPERM);
        }
        /* Still capturing for everyone else: the borrowed handle detached nothing. */
        in_cgroup(child_v4, NULL, &r);
        assert_true(r.ok);
        assert_string_equal(r.orig_sockopt, "10.200.0.1:8080");
}

static void test_pins_and_bpftool(void **state)
{
        LIVE();
        require_tool("bpftool", "bpftool");
        for (size_t i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++)
                assert_true(exists(g_pins, pinned[i]));
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "bpftool map dump pinned %s/shunt_counters 2>&1", g_pins);
        FILE *f = popen(cmd, "r");
        assert_non_null(f);
        char out[65536];
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        assert_int_equal(pclose(f), 0);
        assert_non_null(strstr(out, "\"redirected\": "));
        assert_non_null(strstr(out, "\"shortcut_bytes\": "));
}

/* A restart: close without detaching leaves capture running on the pins;
 * the next open reuses them in place; a clean close removes everything and
 * capture stops. */
static void test_restart_and_clean_exit(void **state)
{
        LIVE();
        bpfcap_close(g_cap, false);
        g_cap = NULL;
        for (size_t i = 0; i < sizeof(pinned) / sizeof(pinned[0]); i++)
                assert_true(exists(g_pins, pinned[i]));
        struct bpfcap_options o;
        options(&o);
        char err[512];
        g_cap = bpfcap_open(&o, err, sizeof(err));
        assert_non_null(g_cap);
        /* The counters survived: the maps were reused, not recreated. */
        struct shunt_counters c;
        assert_int_equal(bpfcap_counters(g_cap, &c), 0);
        assert_true(c.redirected >= SHORT_CONN);
        struct result r;
        in_cgroup(child_v4, NULL, &r);
        assert_true(r.ok);
        assert_string_equal(r.orig_sockopt, "10.200.0.1:8080");

        bpfcap_close(g_cap, true);
        g_cap = NULL;
        struct stat st;
        assert_int_equal(stat(g_pins, &st), -1);
        assert_int_equal(errno, ENOENT);
}

static void test_stale_pins_replaced(void **state)
{
        LIVE();
        /* A "crashed" run attached to another cgroup. */
        char other[300];
        snprintf(other, sizeof(other), "%s/old", g_cgroup);
        assert_int_equal(mkdir(other, 0755), 0);
        struct bpfcap_options o;
        options(&o);
        o.cgroup_path = other;
        char err[512];
        struct bpfcap *old = bpfcap_open(&o, err, sizeof(err));
        assert_non_null(old);
        bpfcap_close(old, false); /* as if killed: pins stay */
        options(&o);
        g_cap = bpfcap_open(&o, err, sizeof(err));
        assert_non_null(g_cap);
        /* The link now serves the configured cgroup. */
        struct result r;
        in_cgroup(child_v4, NULL, &r);
        assert_true(r.ok);
        assert_string_equal(r.orig_sockopt, "10.200.0.1:8080");
        /* Nothing is attached to the old cgroup any more. */
        int cfd = open(other, O_RDONLY | O_DIRECTORY);
        assert_true(cfd >= 0);
        uint32_t ids[4], cnt = 4;
        assert_int_equal(bpf_prog_query(cfd, BPF_CGROUP_INET4_CONNECT, 0, NULL, ids, &cnt), 0);
        assert_int_equal(cnt, 0);
        close(cfd);
        assert_int_equal(rmdir(other), 0);
}

static void test_probe_refused(void **state)
{
        char why[256];
        if (geteuid() != 0) /* the probe needs CAP_BPF before it looks at the path */
                require_missing("root", "eBPF capture tests need root");
        if (!g_cgroup2[0])
                require_missing("cgroup2", "no cgroup v2 hierarchy in /proc/self/mountinfo");
        setenv("SHUNT_BPF_REFUSE", "1", 1);
        assert_int_equal(bpfcap_probe(g_cgroup2, why, sizeof(why)), -1);
        unsetenv("SHUNT_BPF_REFUSE");
        assert_non_null(strstr(why, "refused"));
        assert_int_equal(bpfcap_probe("/nonexistent-cgroup", why, sizeof(why)), -1);
        assert_non_null(strstr(why, "/nonexistent-cgroup"));
        assert_int_equal(bpfcap_probe("/tmp", why, sizeof(why)), -1);
        assert_non_null(strstr(why, "not a cgroup v2"));
        assert_int_equal(bpfcap_probe("", why, sizeof(why)), -1);
        assert_non_null(strstr(why, "redirect_cgroup is not set"));
}

int main(void)
{
        log_set_level(LOG_WARN);
        if (find_cgroup2(g_cgroup2, sizeof(g_cgroup2)) < 0)
                g_cgroup2[0] = '\0';
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_probe_refused),
            cmocka_unit_test(test_ipv4_capture),
            cmocka_unit_test(test_ipv6_capture),
            cmocka_unit_test(test_not_captured),
            cmocka_unit_test(test_outside_cgroup_untouched),
            cmocka_unit_test(test_no_entries_left),
            cmocka_unit_test(test_shortcut_flag),
            cmocka_unit_test(test_flow_control),
            cmocka_unit_test(test_shared_pins_unprivileged),
            cmocka_unit_test(test_pins_and_bpftool),
            cmocka_unit_test(test_restart_and_clean_exit),
            cmocka_unit_test(test_stale_pins_replaced),
        };
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
