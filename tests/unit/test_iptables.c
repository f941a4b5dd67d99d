// SPDX-License-Identifier: Apache-2.0
/* iptables capture: rendering (golden), and live install/remove/counters and
 * real redirected traffic inside a private network namespace that this
 * process enters at start-up (it dies with the process; the host's tables
 * are never touched). The live tests fail when root, the namespace or
 * iptables-save is missing, unless SHUNT_ALLOW_SKIP allows it (require.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "intercept/iptables.h"
#include "require.h"

#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

static bool g_live;             /* inside our own network namespace, as root */
static const char *g_skip_name; /* what the live tests miss (require.h) */
static char g_skip_why[256];    /* and why */

/* ---- helpers ------------------------------------------------------------ */

/* Runs argv with input on stdin; stdout (and stderr) into out. Returns the
 * exit status or -1. */
static int run(const char *input, char **out, char *const argv[])
{
        int in_p[2], out_p[2];
        if (pipe(in_p) < 0 || pipe(out_p) < 0)
                return -1;
        pid_t pid = fork();
        if (pid < 0)
                return -1;
        if (pid == 0) {
                dup2(in_p[0], 0);
                dup2(out_p[1], 1);
                dup2(out_p[1], 2);
                close(in_p[0]);
                close(in_p[1]);
                close(out_p[0]);
                close(out_p[1]);
                execvp(argv[0], argv);
                _exit(127);
        }
        close(in_p[0]);
        close(out_p[1]);
        if (input)
                (void)!write(in_p[1], input, strlen(input)); /* small: fits the pipe */
        close(in_p[1]);
        size_t cap = 4096, len = 0;
        char *buf = malloc(cap);
        for (;;) {
                if (len + 1024 > cap)
                        buf = realloc(buf, cap *= 2);
                ssize_t n = read(out_p[0], buf + len, cap - len - 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                len += (size_t)n;
        }
        buf[len] = '\0';
        close(out_p[0]);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        if (out)
                *out = buf;
        else
                free(buf);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define RUN(input, out, ...) run(input, out, (char *const[]){__VA_ARGS__, NULL})

static char *nat_save(bool v6)
{
        char *out = NULL;
        int rc = RUN(NULL, &out, v6 ? "ip6tables-save" : "iptables-save", "-t", "nat");
        assert_int_equal(rc, 0);
        return out;
}

/* How many lines of text equal line exactly. */
static int count_line(const char *text, const char *line)
{
        int n = 0;
        size_t ll = strlen(line);
        for (const char *p = text; p && *p;) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t)(nl - p) : strlen(p);
                if (len == ll && !memcmp(p, line, ll))
                        n++;
                p = nl ? nl + 1 : NULL;
        }
        return n;
}

/* The "-A <chain> ..." lines of a save for one chain, joined by '\n'. */
static char *chain_lines(const char *text, const char *chain)
{
        char prefix[80];
        snprintf(prefix, sizeof(prefix), "-A %s ", chain);
        size_t cap = strlen(text) + 1, len = 0;
        char *res = calloc(1, cap);
        for (const char *p = text; p && *p;) {
                const char *nl = strchr(p, '\n');
                size_t l = nl ? (size_t)(nl - p) + 1 : strlen(p);
                if (!strncmp(p, prefix, strlen(prefix))) {
                        memcpy(res + len, p, l);
                        len += l;
                }
                p = nl ? nl + 1 : NULL;
        }
        res[len] = '\0';
        return res;
}

static const uint16_t EXCL_IN[] = {22, 15003};
static const uint16_t EXCL_OUT[] = {5432, 5432};
static struct cidr g_cidrs[3];

static void base_options(struct ipt_options *o)
{
        memset(o, 0, sizeof(*o));
        o->inbound_port = 15001;
        o->outbound_port = 15002;
        o->mark = 0x539;
        o->uid = 1337;
        o->exclude_inbound_ports = EXCL_IN;
        o->n_exclude_inbound_ports = 2;
        o->exclude_outbound_ports = EXCL_OUT;
        o->n_exclude_outbound_ports = 2;
        memset(g_cidrs, 0, sizeof(g_cidrs));
        g_cidrs[0].family = AF_INET;
        inet_pton(AF_INET, "10.0.0.0", &g_cidrs[0].addr.v4);
        g_cidrs[0].prefix_len = 8;
        g_cidrs[1].family = AF_INET6;
        inet_pton(AF_INET6, "fd00::1", &g_cidrs[1].addr.v6); /* host bits: cleared */
        g_cidrs[1].prefix_len = 8;
        g_cidrs[2].family = AF_INET;
        inet_pton(AF_INET, "192.168.7.7", &g_cidrs[2].addr.v4);
        g_cidrs[2].prefix_len = 16;
        o->exclude_outbound_cidrs = g_cidrs;
        o->n_exclude_outbound_cidrs = 3;
        o->ipv6 = true;
}

/* ---- rendering ---------------------------------------------------------- */

#define C " -m comment --comment shunt"

static void test_render_v4(void **state)
{
        struct ipt_options o;
        base_options(&o);
        struct strbuf sb;
        strbuf_init(&sb);
        ipt_render(&o, AF_INET, &sb);
        const char *want =
            "*nat\n"
            ":SIDECAR_PROXY_INBOUND - [0:0]\n"
            ":SIDECAR_PROXY_OUTBOUND - [0:0]\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 22" C " -j RETURN\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15003" C " -j RETURN\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15001" C " -j RETURN\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15002" C " -j RETURN\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp" C " -j REDIRECT --to-ports 15001\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -m mark --mark 0x539/0xffffffff" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -m owner --uid-owner 1337" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -o lo" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -d 127.0.0.0/8" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp --dport 5432" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -d 10.0.0.0/8" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -d 192.168.0.0/16" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp" C " -j REDIRECT --to-ports 15002\n"
            "-A PREROUTING -p tcp" C " -j SIDECAR_PROXY_INBOUND\n"
            "-A OUTPUT -p tcp" C " -j SIDECAR_PROXY_OUTBOUND\n"
            "COMMIT\n";
        assert_string_equal(sb.data, want);
        strbuf_free(&sb);
}

static void test_render_inbound_only(void **state)
{
        struct ipt_options o;
        base_options(&o);
        o.inbound_only = true;
        o.metrics_port = 15020; /* reached from outside: never captured */
        struct strbuf sb;
        strbuf_init(&sb);
        ipt_render(&o, AF_INET, &sb);
        const char *want = "*nat\n"
                           ":SIDECAR_PROXY_INBOUND - [0:0]\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 22" C " -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15003" C " -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15001" C " -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15002" C " -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15020" C " -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp" C " -j REDIRECT --to-ports 15001\n"
                           "-A PREROUTING -p tcp" C " -j SIDECAR_PROXY_INBOUND\n"
                           "COMMIT\n";
        assert_string_equal(sb.data, want);
        strbuf_free(&sb);
}

static void test_render_v6(void **state)
{
        struct ipt_options o;
        base_options(&o);
        struct strbuf sb;
        strbuf_init(&sb);
        ipt_render(&o, AF_INET6, &sb);
        const char *want =
            "*nat\n"
            ":SIDECAR_PROXY_INBOUND - [0:0]\n"
            ":SIDECAR_PROXY_OUTBOUND - [0:0]\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 22" C " -j RETURN\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15003" C " -j RETURN\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15001" C " -j RETURN\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15002" C " -j RETURN\n"
            "-A SIDECAR_PROXY_INBOUND -p tcp" C " -j REDIRECT --to-ports 15001\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -m mark --mark 0x539/0xffffffff" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -m owner --uid-owner 1337" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -o lo" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -d ::1/128" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp --dport 5432" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp -d fd00::/8" C " -j RETURN\n"
            "-A SIDECAR_PROXY_OUTBOUND -p tcp" C " -j REDIRECT --to-ports 15002\n"
            "-A PREROUTING -p tcp" C " -j SIDECAR_PROXY_INBOUND\n"
            "-A OUTPUT -p tcp" C " -j SIDECAR_PROXY_OUTBOUND\n"
            "COMMIT\n";
        assert_string_equal(sb.data, want);
        strbuf_free(&sb);
}

static void test_render_no_mark_no_uid_no_comment(void **state)
{
        struct ipt_options o;
        base_options(&o);
        o.mark = 0; /* a mark rule for 0 would exempt every unmarked packet */
        o.uid = IPT_UID_NONE;
        o.no_comments = true;
        o.n_exclude_outbound_cidrs = 0;
        o.n_exclude_outbound_ports = 0;
        uint16_t in[] = {15001, 22, 22, 15020}; /* duplicates and our own ports */
        o.exclude_inbound_ports = in;
        o.n_exclude_inbound_ports = 4;
        o.metrics_port = 15020;
        struct strbuf sb;
        strbuf_init(&sb);
        ipt_render(&o, AF_INET, &sb);
        const char *want = "*nat\n"
                           ":SIDECAR_PROXY_INBOUND - [0:0]\n"
                           ":SIDECAR_PROXY_OUTBOUND - [0:0]\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15001 -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 22 -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15020 -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp --dport 15002 -j RETURN\n"
                           "-A SIDECAR_PROXY_INBOUND -p tcp -j REDIRECT --to-ports 15001\n"
                           "-A SIDECAR_PROXY_OUTBOUND -p tcp -o lo -j RETURN\n"
                           "-A SIDECAR_PROXY_OUTBOUND -p tcp -d 127.0.0.0/8 -j RETURN\n"
                           "-A SIDECAR_PROXY_OUTBOUND -p tcp -j REDIRECT --to-ports 15002\n"
                           "-A PREROUTING -p tcp -j SIDECAR_PROXY_INBOUND\n"
                           "-A OUTPUT -p tcp -j SIDECAR_PROXY_OUTBOUND\n"
                           "COMMIT\n";
        assert_string_equal(sb.data, want);
        strbuf_free(&sb);
}

/* No silent cap on the number of exclusions. */
static void test_render_many_ports(void **state)
{
        struct ipt_options o;
        base_options(&o);
        uint16_t ports[200];
        for (int i = 0; i < 200; i++)
                ports[i] = (uint16_t)(1000 + i % 100); /* 100 distinct, each twice */
        o.exclude_outbound_ports = ports;
        o.n_exclude_outbound_ports = 200;
        struct strbuf sb;
        strbuf_init(&sb);
        ipt_render(&o, AF_INET, &sb);
        for (int i = 0; i < 100; i++) {
                char line[160];
                snprintf(line, sizeof(line),
                         "-A SIDECAR_PROXY_OUTBOUND -p tcp --dport %d" C " -j RETURN", 1000 + i);
                assert_int_equal(count_line(sb.data, line), 1);
        }
        strbuf_free(&sb);
}

static void test_options_from_config(void **state)
{
        struct shunt_config *cfg = calloc(1, sizeof(*cfg));
        cfg->inbound_port = 16001;
        cfg->outbound_port = 16002;
        cfg->metrics_port = 16020;
        snprintf(cfg->metrics_address, sizeof(cfg->metrics_address), "::");
        cfg->proxy_mark = 0x77;
        cfg->proxy_uid = -1;
        cfg->exclude_inbound_ports[0] = 22;
        cfg->exclude_inbound_ports[1] = 16003;
        cfg->n_exclude_inbound_ports = 2;
        cfg->exclude_outbound_ports[0] = 9;
        cfg->n_exclude_outbound_ports = 1;
        cfg->exclude_outbound_cidrs[0].family = AF_INET;
        cfg->exclude_outbound_cidrs[0].prefix_len = 24;
        cfg->n_exclude_outbound_cidrs = 1;
        struct ipt_options o;
        ipt_options_from_config(&o, cfg, 4242);
        assert_int_equal(o.inbound_port, 16001);
        assert_int_equal(o.outbound_port, 16002);
        assert_int_equal(o.metrics_port, 16020);
        assert_int_equal(o.mark, 0x77);
        assert_int_equal(o.uid, 4242); /* proxy_uid -1: the caller's uid */
        assert_int_equal(o.n_exclude_inbound_ports, 2);
        assert_int_equal(o.exclude_inbound_ports[1], 16003);
        assert_int_equal(o.n_exclude_outbound_ports, 1);
        assert_int_equal(o.exclude_outbound_ports[0], 9);
        assert_int_equal(o.n_exclude_outbound_cidrs, 1);
        assert_int_equal(o.exclude_outbound_cidrs[0].prefix_len, 24);
        assert_true(o.ipv6);
        ipt_options_from_config(&o, cfg, IPT_UID_NONE);
        assert_true(o.uid == IPT_UID_NONE);
        cfg->proxy_uid = 999; /* explicit configuration wins */
        ipt_options_from_config(&o, cfg, 4242);
        assert_int_equal(o.uid, 999);
        snprintf(cfg->metrics_address, sizeof(cfg->metrics_address), "off");
        ipt_options_from_config(&o, cfg, 4242);
        assert_int_equal(o.metrics_port, 0); /* no listener: nothing to exempt */
        free(cfg);
}

/* ---- live: install, reinstall, stale, remove ----------------------------- */

#define LIVE()                                                                                     \
        do {                                                                                       \
                if (!g_live)                                                                       \
                        require_missing(g_skip_name, g_skip_why);                                  \
        } while (0)

static const char *const JUMP_IN = "-A PREROUTING -p tcp" C " -j SIDECAR_PROXY_INBOUND";
static const char *const JUMP_OUT = "-A OUTPUT -p tcp" C " -j SIDECAR_PROXY_OUTBOUND";

/* What iptables-save shows for base_options (it adds "-m tcp" before
 * --dport and drops a full /0xffffffff mask). */
static const char *const SAVED_IN_V4 =
    "-A SIDECAR_PROXY_INBOUND -p tcp -m tcp --dport 22" C " -j RETURN\n"
    "-A SIDECAR_PROXY_INBOUND -p tcp -m tcp --dport 15003" C " -j RETURN\n"
    "-A SIDECAR_PROXY_INBOUND -p tcp -m tcp --dport 15001" C " -j RETURN\n"
    "-A SIDECAR_PROXY_INBOUND -p tcp -m tcp --dport 15002" C " -j RETURN\n"
    "-A SIDECAR_PROXY_INBOUND -p tcp" C " -j REDIRECT --to-ports 15001\n";
static const char *const SAVED_OUT_V4 =
    "-A SIDECAR_PROXY_OUTBOUND -p tcp -m mark --mark 0x539" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -p tcp -m owner --uid-owner 1337" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -o lo -p tcp" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -d 127.0.0.0/8 -p tcp" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -p tcp -m tcp --dport 5432" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -d 10.0.0.0/8 -p tcp" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -d 192.168.0.0/16 -p tcp" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -p tcp" C " -j REDIRECT --to-ports 15002\n";
static const char *const SAVED_OUT_V6 =
    "-A SIDECAR_PROXY_OUTBOUND -p tcp -m mark --mark 0x539" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -p tcp -m owner --uid-owner 1337" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -o lo -p tcp" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -d ::1/128 -p tcp" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -p tcp -m tcp --dport 5432" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -d fd00::/8 -p tcp" C " -j RETURN\n"
    "-A SIDECAR_PROXY_OUTBOUND -p tcp" C " -j REDIRECT --to-ports 15002\n";

static void assert_installed_once(bool v6)
{
        char *s = nat_save(v6);
        assert_int_equal(count_line(s, JUMP_IN), 1);
        assert_int_equal(count_line(s, JUMP_OUT), 1);
        /* No other rule anywhere refers to our chains. */
        int refs = 0;
        for (const char *p = s; (p = strstr(p, "-j SIDECAR_PROXY_")); p++)
                refs++;
        if (refs != 2) {
                print_error("%s", s);
                free(s);
                fail_msg("%d rules refer to our chains, want 2", refs);
        }
        char *in = chain_lines(s, IPT_CHAIN_INBOUND);
        char *out = chain_lines(s, IPT_CHAIN_OUTBOUND);
        assert_string_equal(in, SAVED_IN_V4); /* the inbound chain is the same in v6 */
        assert_string_equal(out, v6 ? SAVED_OUT_V6 : SAVED_OUT_V4);
        free(in);
        free(out);
        free(s);
}

static void assert_nothing_left(bool v6)
{
        char *s = nat_save(v6);
        assert_null(strstr(s, "SIDECAR_PROXY"));
        free(s);
}

static void test_install_idempotent(void **state)
{
        LIVE();
        char err[512];
        struct ipt_options o;
        base_options(&o);
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        assert_false(ipt_installed(AF_INET));
        for (int i = 0; i < 3; i++) {
                int rc = ipt_install(&o, err, sizeof(err));
                if (rc)
                        fail_msg("install %d: %s", i, err);
                assert_true(ipt_installed(AF_INET));
                assert_installed_once(false);
                assert_installed_once(true);
        }
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
}

/* eBPF mode: only the inbound half. Installed over a full set it removes the
 * outbound chain and its jump; ipt_installed (both halves) is then false. */
static void test_install_inbound_only(void **state)
{
        LIVE();
        char err[512];
        struct ipt_options o;
        base_options(&o);
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        int rc = ipt_install(&o, err, sizeof(err));
        if (rc)
                fail_msg("full install: %s", err);
        assert_true(ipt_installed(AF_INET));
        o.inbound_only = true;
        for (int i = 0; i < 2; i++) {
                rc = ipt_install(&o, err, sizeof(err));
                if (rc)
                        fail_msg("inbound-only install %d: %s", i, err);
                for (int v6 = 0; v6 < 2; v6++) {
                        char *s = nat_save(v6);
                        assert_int_equal(count_line(s, JUMP_IN), 1);
                        assert_null(strstr(s, IPT_CHAIN_OUTBOUND));
                        char *in = chain_lines(s, IPT_CHAIN_INBOUND);
                        assert_string_equal(in, SAVED_IN_V4);
                        free(in);
                        free(s);
                }
                assert_true(ipt_inbound_installed(AF_INET));
                assert_true(ipt_inbound_installed(AF_INET6));
                assert_false(ipt_installed(AF_INET));
        }
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        assert_false(ipt_inbound_installed(AF_INET));
        assert_nothing_left(false);
        assert_nothing_left(true);
}

static void test_stale_set_replaced(void **state)
{
        LIVE();
        char err[512];
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        /* What a crashed run of an older version might have left: other rules,
         * duplicate jumps, a jump without -p tcp, one from INPUT, a goto. */
        const char *stale = "*nat\n"
                            ":SIDECAR_PROXY_INBOUND - [0:0]\n"
                            ":SIDECAR_PROXY_OUTBOUND - [0:0]\n"
                            "-A SIDECAR_PROXY_INBOUND -p tcp --dport 9999 -j RETURN\n"
                            "-A SIDECAR_PROXY_OUTBOUND -p tcp -j REDIRECT --to-ports 9998\n"
                            "-A SIDECAR_PROXY_OUTBOUND -p tcp --dport 1 -j SIDECAR_PROXY_INBOUND\n"
                            "-A PREROUTING -p tcp -j SIDECAR_PROXY_INBOUND\n"
                            "-A PREROUTING -p tcp -j SIDECAR_PROXY_INBOUND\n"
                            "-A INPUT -p tcp -m comment --comment \"old shunt\" -j "
                            "SIDECAR_PROXY_INBOUND\n"
                            "-A OUTPUT -j SIDECAR_PROXY_OUTBOUND\n"
                            "-A OUTPUT -p tcp -g SIDECAR_PROXY_OUTBOUND\n"
                            "-A OUTPUT -p udp --dport 53 -j RETURN\n"
                            "COMMIT\n";
        char *out = NULL, msg[512];
        int rc = RUN(stale, &out, "iptables-restore", "--noflush");
        snprintf(msg, sizeof(msg), "%s", out);
        free(out);
        if (rc)
                fail_msg("creating the stale set: %s", msg);
        rc = RUN(stale, &out, "ip6tables-restore", "--noflush");
        snprintf(msg, sizeof(msg), "%s", out);
        free(out);
        if (rc)
                fail_msg("creating the stale v6 set: %s", msg);

        struct ipt_options o;
        base_options(&o);
        rc = ipt_install(&o, err, sizeof(err));
        if (rc)
                fail_msg("install over a stale set: %s", err);
        assert_installed_once(false);
        assert_installed_once(true);
        char *s = nat_save(false);
        assert_null(strstr(s, "9999"));
        assert_null(strstr(s, "9998"));
        /* Someone else's rule in OUTPUT is left alone. */
        assert_int_equal(count_line(s, "-A OUTPUT -p udp -m udp --dport 53 -j RETURN"), 1);
        free(s);

        /* Remove takes a stale set with extra jumps too. */
        rc = RUN(stale, &out, "iptables-restore", "--noflush");
        assert_int_equal(rc, 0);
        free(out);
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        assert_nothing_left(false);
        assert_nothing_left(true);
        s = nat_save(false);
        assert_int_equal(count_line(s, "-A OUTPUT -p udp -m udp --dport 53 -j RETURN"), 2);
        free(s);
        rc = RUN(NULL, NULL, "iptables", "-t", "nat", "-F", "OUTPUT");
        assert_int_equal(rc, 0);
        rc = RUN(NULL, NULL, "ip6tables", "-t", "nat", "-F", "OUTPUT");
        assert_int_equal(rc, 0);
}

static void test_remove_idempotent(void **state)
{
        LIVE();
        char err[512];
        struct ipt_options o;
        base_options(&o);
        int rc = ipt_install(&o, err, sizeof(err));
        if (rc)
                fail_msg("install: %s", err);
        assert_true(ipt_installed(AF_INET));
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        assert_false(ipt_installed(AF_INET));
        assert_nothing_left(false);
        assert_nothing_left(true);
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        assert_nothing_left(false);

        /* Chains without jumps are not "installed"; jumps gone by hand too. */
        rc = ipt_install(&o, err, sizeof(err));
        assert_int_equal(rc, 0);
        rc = RUN(NULL, NULL, "iptables", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-m", "comment",
                 "--comment", "shunt", "-j", "SIDECAR_PROXY_OUTBOUND");
        assert_int_equal(rc, 0);
        assert_false(ipt_installed(AF_INET));
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        assert_nothing_left(false);
        assert_nothing_left(true);
}

static int connect_to(int family, const char *addr, uint16_t port, uint32_t mark)
{
        int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
        assert_true(fd >= 0);
        if (mark)
                assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)), 0);
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        socklen_t len;
        if (family == AF_INET) {
                struct sockaddr_in *a = (struct sockaddr_in *)&ss;
                a->sin_family = AF_INET;
                a->sin_port = htons(port);
                assert_int_equal(inet_pton(AF_INET, addr, &a->sin_addr), 1);
                len = sizeof(*a);
        } else {
                struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
                a->sin6_family = AF_INET6;
                a->sin6_port = htons(port);
                assert_int_equal(inet_pton(AF_INET6, addr, &a->sin6_addr), 1);
                len = sizeof(*a);
        }
        int rc = connect(fd, (struct sockaddr *)&ss, len);
        assert_true(rc == 0 || errno == EINPROGRESS);
        return fd;
}

/* 1 connected, 0 still pending after ms, -1 failed. */
static int wait_connected(int fd, int ms)
{
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        int n = poll(&pf, 1, ms);
        if (n == 0)
                return 0;
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        return soerr == 0 ? 1 : -1;
}

static void test_dump_json(void **state)
{
        LIVE();
        char err[512];
        struct ipt_options o;
        base_options(&o);
        int rc = ipt_install(&o, err, sizeof(err));
        if (rc)
                fail_msg("install: %s", err);

        /* A loopback connection: counted by the OUTPUT jump and "-o lo". */
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(listen(l, 4), 0);
        socklen_t al = sizeof(a);
        getsockname(l, (struct sockaddr *)&a, &al);
        int c = connect_to(AF_INET, "127.0.0.1", ntohs(a.sin_port), 0);
        assert_int_equal(wait_connected(c, 2000), 1);
        close(c);
        close(l);

        struct strbuf sb;
        strbuf_init(&sb);
        assert_int_equal(ipt_dump_json(&sb), 0);
        cJSON *root = cJSON_Parse(sb.data);
        if (!root)
                fail_msg("not JSON: %s", sb.data);
        cJSON *v4 = cJSON_GetObjectItem(root, "ipv4");
        cJSON *v6 = cJSON_GetObjectItem(root, "ipv6");
        assert_true(cJSON_IsArray(v4));
        assert_true(cJSON_IsArray(v6));
        /* 5 inbound + 8 outbound + 2 jumps; v6: one CIDR fewer. */
        assert_int_equal(cJSON_GetArraySize(v4), 15);
        assert_int_equal(cJSON_GetArraySize(v6), 14);
        bool saw_jump = false, saw_lo = false, saw_redirect6 = false;
        cJSON *it;
        cJSON_ArrayForEach(it, v4)
        {
                const char *chain = cJSON_GetStringValue(cJSON_GetObjectItem(it, "chain"));
                const char *r = cJSON_GetStringValue(cJSON_GetObjectItem(it, "rule"));
                cJSON *pk = cJSON_GetObjectItem(it, "packets");
                cJSON *by = cJSON_GetObjectItem(it, "bytes");
                assert_non_null(chain);
                assert_non_null(r);
                assert_true(cJSON_IsNumber(pk) && cJSON_IsNumber(by));
                if (!strcmp(chain, "OUTPUT") && strstr(r, "-j SIDECAR_PROXY_OUTBOUND")) {
                        saw_jump = true;
                        assert_true(pk->valuedouble >= 1);
                        assert_true(by->valuedouble >= 40);
                }
                if (!strcmp(chain, IPT_CHAIN_OUTBOUND) && strstr(r, "-o lo ")) {
                        saw_lo = true;
                        assert_true(pk->valuedouble >= 1);
                }
                if (!strcmp(chain, IPT_CHAIN_OUTBOUND) && strstr(r, "REDIRECT"))
                        assert_true(pk->valuedouble == 0);
        }
        cJSON_ArrayForEach(it, v6)
        {
                const char *r = cJSON_GetStringValue(cJSON_GetObjectItem(it, "rule"));
                if (r && strstr(r, "REDIRECT --to-ports 15002"))
                        saw_redirect6 = true;
        }
        assert_true(saw_jump);
        assert_true(saw_lo);
        assert_true(saw_redirect6);
        cJSON_Delete(root);
        strbuf_free(&sb);

        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        strbuf_init(&sb);
        assert_int_equal(ipt_dump_json(&sb), 0);
        assert_string_equal(sb.data, "{\"ipv4\":[],\"ipv6\":[]}");
        strbuf_free(&sb);
}

/* ---- live: real traffic --------------------------------------------------- */

static int listen_any(int family, uint16_t port)
{
        int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
        assert_true(fd >= 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        socklen_t len;
        if (family == AF_INET) {
                struct sockaddr_in *a = (struct sockaddr_in *)&ss;
                a->sin_family = AF_INET;
                a->sin_port = htons(port);
                len = sizeof(*a);
        } else {
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
                struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
                a->sin6_family = AF_INET6;
                a->sin6_port = htons(port);
                len = sizeof(*a);
        }
        assert_int_equal(bind(fd, (struct sockaddr *)&ss, len), 0);
        assert_int_equal(listen(fd, 16), 0);
        return fd;
}

static int accept_within(int l, int ms)
{
        struct pollfd pf = {.fd = l, .events = POLLIN};
        if (poll(&pf, 1, ms) != 1)
                return -1;
        return accept(l, NULL, NULL);
}

/* In a child with uid: connects to addr:80 and exits 1 when connected in
 * 300 ms, 0 when still pending (not redirected: the SYN goes out d0). */
static int connect_as_uid(uid_t uid, const char *addr)
{
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (setresgid(uid, uid, uid) || setresuid(uid, uid, uid))
                        _exit(2);
                int fd = connect_to(AF_INET, addr, 80, 0);
                int r = wait_connected(fd, 300);
                _exit(r == 1 ? 1 : r == 0 ? 0 : 3);
        }
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_traffic_redirect(void **state)
{
        LIVE();
        /* d0: a device where nothing ever answers (dummy; ifb where the
         * kernel has no dummy driver: both drop what they transmit). */
        char *out = NULL;
        int rc = RUN(NULL, &out, "ip", "link", "add", "d0", "type", "dummy");
        free(out);
        out = NULL;
        if (rc != 0) {
                rc = RUN(NULL, &out, "ip", "link", "add", "d0", "type", "ifb");
                char msg[256];
                snprintf(msg, sizeof(msg), "%s", out ? out : "");
                free(out);
                if (rc)
                        fail_msg("ip link add d0 type dummy|ifb: %s", msg);
        }
        assert_int_equal(RUN(NULL, NULL, "ip", "addr", "add", "10.200.0.1/24", "dev", "d0"), 0);
        assert_int_equal(
            RUN(NULL, NULL, "ip", "-6", "addr", "add", "fd00:200::1/64", "dev", "d0", "nodad"), 0);
        assert_int_equal(RUN(NULL, NULL, "ip", "link", "set", "d0", "up"), 0);

        /* Listeners on a free port P: P is the outbound port. */
        int l4 = listen_any(AF_INET, 0);
        struct sockaddr_in la;
        socklen_t ll = sizeof(la);
        getsockname(l4, (struct sockaddr *)&la, &ll);
        uint16_t port = ntohs(la.sin_port);
        int l6 = listen_any(AF_INET6, port);

        char err[512];
        struct ipt_options o;
        base_options(&o);
        o.outbound_port = port;
        o.inbound_port = port == 65535 ? 65534 : port + 1;
        o.uid = 65534;
        o.n_exclude_outbound_cidrs = 0;
        rc = ipt_install(&o, err, sizeof(err));
        if (rc)
                fail_msg("install: %s", err);

        /* IPv4: redirected to the listener, original destination kept. */
        int c = connect_to(AF_INET, "10.200.0.2", 80, 0);
        assert_int_equal(wait_connected(c, 2000), 1);
        int a = accept_within(l4, 2000);
        assert_true(a >= 0);
        struct sockaddr_in od;
        socklen_t odl = sizeof(od);
        assert_int_equal(getsockopt(a, SOL_IP, SO_ORIGINAL_DST, &od, &odl), 0);
        char txt[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET, &od.sin_addr, txt, sizeof(txt));
        assert_string_equal(txt, "10.200.0.2");
        assert_int_equal(ntohs(od.sin_port), 80);
        close(a);
        close(c);

        /* IPv6 mirror. */
        c = connect_to(AF_INET6, "fd00:200::2", 80, 0);
        assert_int_equal(wait_connected(c, 2000), 1);
        a = accept_within(l6, 2000);
        assert_true(a >= 0);
        struct sockaddr_in6 od6;
        odl = sizeof(od6);
        assert_int_equal(getsockopt(a, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &od6, &odl), 0);
        inet_ntop(AF_INET6, &od6.sin6_addr, txt, sizeof(txt));
        assert_string_equal(txt, "fd00:200::2");
        assert_int_equal(ntohs(od6.sin6_port), 80);
        close(a);
        close(c);

        /* shuntd's mark: not redirected (the SYN leaves through d0 where
         * nothing answers, so the connect is still pending after 300 ms). */
        c = connect_to(AF_INET, "10.200.0.2", 80, o.mark);
        assert_int_equal(wait_connected(c, 300), 0);
        assert_int_equal(accept_within(l4, 0), -1);
        close(c);
        c = connect_to(AF_INET6, "fd00:200::2", 80, o.mark);
        assert_int_equal(wait_connected(c, 300), 0);
        assert_int_equal(accept_within(l6, 0), -1);
        close(c);

        /* shuntd's uid: not redirected; another uid is. */
        assert_int_equal(connect_as_uid(65534, "10.200.0.2"), 0);
        assert_int_equal(accept_within(l4, 0), -1);
        assert_int_equal(connect_as_uid(65533, "10.200.0.2"), 1);
        a = accept_within(l4, 2000);
        assert_true(a >= 0);
        close(a);

        /* An excluded port is not redirected either. */
        c = connect_to(AF_INET, "10.200.0.2", 5432, 0);
        assert_int_equal(wait_connected(c, 300), 0);
        assert_int_equal(accept_within(l4, 0), -1);
        close(c);

        /* After removal the same connection is no longer captured. */
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        c = connect_to(AF_INET, "10.200.0.2", 80, 0);
        assert_int_equal(wait_connected(c, 300), 0);
        assert_int_equal(accept_within(l4, 0), -1);
        close(c);

        close(l4);
        close(l6);
        assert_int_equal(RUN(NULL, NULL, "ip", "link", "del", "d0"), 0);
}

static char g_wrap_dir[64];
static char g_saved_path[4096];

/* Teardown: the real tools back in PATH, the wrapper gone. */
static int unwrap(void **state)
{
        if (!g_wrap_dir[0] || strcmp(g_wrap_dir, "/tmp/shunt-ipt-XXXXXX") == 0)
                return 0;
        setenv("PATH", g_saved_path, 1);
        char f[128];
        snprintf(f, sizeof(f), "%s/iptables-restore", g_wrap_dir);
        unlink(f);
        rmdir(g_wrap_dir);
        snprintf(g_wrap_dir, sizeof(g_wrap_dir), "/tmp/shunt-ipt-XXXXXX");
        return 0;
}

static void write_script(const char *dir, const char *name, const char *body)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(body, f);
        fclose(f);
        assert_int_equal(chmod(path, 0755), 0);
}

/* Failures of iptables-restore reach the caller with its stderr; a kernel
 * without the comment match gets the rules without comments. The real
 * tools are wrapped by scripts placed first in PATH. */
static void test_restore_errors_and_comment_fallback(void **state)
{
        LIVE();
        char *dir = g_wrap_dir;
        assert_non_null(mkdtemp(dir));
        const char *old = getenv("PATH");
        snprintf(g_saved_path, sizeof(g_saved_path), "%s", old ? old : "");
        char path[4096 + 64];
        snprintf(path, sizeof(path), "%s:%s", dir, g_saved_path);
        setenv("PATH", path, 1);

        char err[512];
        struct ipt_options o;
        base_options(&o);
        write_script(dir, "iptables-restore",
                     "#!/bin/sh\ncat >/dev/null\necho 'line 7: bad rule here' >&2\nexit 2\n");
        int rc = ipt_install(&o, err, sizeof(err));
        assert_int_equal(rc, -EIO);
        assert_non_null(strstr(err, "iptables-restore --noflush: exit status 2"));
        assert_non_null(strstr(err, "line 7: bad rule here"));
        assert_false(ipt_installed(AF_INET));

        /* Missing comment match: retried without comments. */
        write_script(dir, "iptables-restore",
                     "#!/bin/sh\nin=$(cat)\n"
                     "if printf '%s' \"$in\" | grep -q -- '-m comment'; then\n"
                     "  echo \"iptables-restore: Couldn't load match 'comment'\" >&2; exit 2\n"
                     "fi\n"
                     "printf '%s\\n' \"$in\" | exec /usr/sbin/iptables-restore \"$@\"\n");
        rc = ipt_install(&o, err, sizeof(err));
        if (rc)
                fail_msg("install without comment match: %s", err);
        assert_true(ipt_installed(AF_INET));
        char *s = nat_save(false);
        assert_null(strstr(s, "comment"));
        assert_int_equal(count_line(s, "-A PREROUTING -p tcp -j SIDECAR_PROXY_INBOUND"), 1);
        assert_int_equal(count_line(s, "-A OUTPUT -p tcp -j SIDECAR_PROXY_OUTBOUND"), 1);
        free(s);
        s = nat_save(true); /* ip6tables-restore was not wrapped: comments there */
        assert_int_equal(count_line(s, JUMP_IN), 1);
        free(s);

        /* Removal failing is reported too. */
        write_script(dir, "iptables-restore",
                     "#!/bin/sh\ncat >/dev/null\necho 'permission denied (you must be root)' >&2\n"
                     "exit 4\n");
        rc = ipt_remove(err, sizeof(err));
        assert_true(rc < 0);
        assert_non_null(strstr(err, "you must be root"));

        unwrap(NULL);
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        assert_nothing_left(false);
        assert_nothing_left(true);

        o.inbound_port = 0;
        assert_int_equal(ipt_install(&o, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "inbound_port 0"));
}

static int write_sysctl(const char *path, const char *v)
{
        FILE *f = fopen(path, "w");
        if (!f)
                return -1;
        int rc = fputs(v, f) < 0 ? -1 : 0;
        return fclose(f) || rc ? -1 : 0;
}

/* Last: IPv6 switched off in the namespace means v4 only, not a failure. */
static void test_ipv6_disabled_skipped(void **state)
{
        LIVE();
        const char *knob = "/proc/sys/net/ipv6/conf/all/disable_ipv6";
        assert_int_equal(write_sysctl(knob, "1"), 0);
        char err[512];
        struct ipt_options o;
        base_options(&o);
        int rc = ipt_install(&o, err, sizeof(err));
        write_sysctl(knob, "0");
        if (rc)
                fail_msg("install with IPv6 disabled: %s", err);
        assert_installed_once(false);
        assert_nothing_left(true);
        assert_int_equal(ipt_remove(err, sizeof(err)), 0);
        assert_nothing_left(false);
}

static int enter_namespace(void **state)
{
        if (geteuid() != 0) {
                g_skip_name = "root";
                snprintf(g_skip_why, sizeof(g_skip_why), "live iptables tests need root");
                return 0;
        }
        if (unshare(CLONE_NEWNET) != 0) {
                g_skip_name = "netns";
                snprintf(g_skip_why, sizeof(g_skip_why), "unshare(CLONE_NEWNET): %s",
                         strerror(errno));
                return 0;
        }
        char *out = NULL;
        if (RUN(NULL, &out, "ip", "link", "set", "lo", "up") != 0) {
                g_skip_name = "netns";
                snprintf(g_skip_why, sizeof(g_skip_why), "ip link set lo up: %s", out ? out : "");
                free(out);
                return 0;
        }
        free(out);
        if (!require_have_tool("iptables-save")) {
                g_skip_name = "iptables-save";
                snprintf(g_skip_why, sizeof(g_skip_why),
                         "iptables-save is not installed (Debian package iptables)");
                return 0;
        }
        if (RUN(NULL, &out, "iptables-save", "-t", "nat") != 0) {
                g_skip_name = "iptables-nat";
                snprintf(g_skip_why, sizeof(g_skip_why), "iptables-save -t nat: %s",
                         out ? out : "");
                free(out);
                return 0;
        }
        free(out);
        g_live = true;
        return 0;
}

int main(void)
{
        /* iptables lives in sbin, which a non-root PATH may lack. */
        const char *path = getenv("PATH");
        char newpath[4096];
        snprintf(newpath, sizeof(newpath), "%s:/usr/sbin:/sbin", path ? path : "/usr/bin:/bin");
        setenv("PATH", newpath, 1);

        snprintf(g_wrap_dir, sizeof(g_wrap_dir), "/tmp/shunt-ipt-XXXXXX");
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_render_v4),
            cmocka_unit_test(test_render_inbound_only),
            cmocka_unit_test(test_render_v6),
            cmocka_unit_test(test_render_no_mark_no_uid_no_comment),
            cmocka_unit_test(test_render_many_ports),
            cmocka_unit_test(test_options_from_config),
            cmocka_unit_test(test_install_idempotent),
            cmocka_unit_test(test_install_inbound_only),
            cmocka_unit_test(test_stale_set_replaced),
            cmocka_unit_test(test_remove_idempotent),
            cmocka_unit_test(test_dump_json),
            cmocka_unit_test(test_traffic_redirect),
            cmocka_unit_test_teardown(test_restore_errors_and_comment_fallback, unwrap),
            cmocka_unit_test(test_ipv6_disabled_skipped),
        };
        return cmocka_run_group_tests(tests, enter_namespace, NULL);
}
