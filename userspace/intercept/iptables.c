// SPDX-License-Identifier: Apache-2.0
/* iptables capture: renders the nat-table fragment, installs it atomically
 * with iptables-restore --noflush (stale jumps deleted and stale chains
 * flushed in the same transaction), removes it, and reports counters.
 *
 * Every external command runs through fork/execv with its stdin from a
 * memfd and its stdout/stderr read through pipes, bounded in time and size.
 * No shell is involved. */
#include "intercept/iptables.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"

#define COMP "iptables"

#define CMD_TIMEOUT_MS 10000
#define CMD_OUTPUT_MAX (16u << 20) /* bytes of stdout kept from one command */
#define CMD_ERR_MAX    4096        /* bytes of stderr kept */
#define INSTALL_TRIES  4
#define REMOVE_TRIES   6
#define COMMENT_TEXT   "shunt"
#define EXTRA_PATH     "/usr/sbin:/sbin:/usr/bin:/bin"

extern char **environ;

struct family_tools {
        int family;
        const char *label; /* "ipv4" / "ipv6" */
        const char *restore;
        const char *save;
};

static const struct family_tools FAM_V4 = {AF_INET, "ipv4", "iptables-restore", "iptables-save"};
static const struct family_tools FAM_V6 = {AF_INET6, "ipv6", "ip6tables-restore", "ip6tables-save"};

/* ---- running commands --------------------------------------------------- */

/* Finds prog in $PATH, then in /usr/sbin:/sbin:/usr/bin:/bin (iptables lives
 * in sbin, often missing from a non-root PATH). Resolved in the parent so the
 * child only calls async-signal-safe functions. */
static int resolve_program(const char *prog, char *out, size_t outlen)
{
        const char *env = getenv("PATH");
        for (int pass = 0; pass < 2; pass++) {
                const char *p = pass == 0 ? (env ? env : "") : EXTRA_PATH;
                while (*p) {
                        const char *colon = strchr(p, ':');
                        size_t n = colon ? (size_t)(colon - p) : strlen(p);
                        if (n > 0) {
                                int w = snprintf(out, outlen, "%.*s/%s", (int)n, p, prog);
                                if (w > 0 && (size_t)w < outlen && access(out, X_OK) == 0)
                                        return 0;
                        }
                        p += n;
                        if (*p == ':')
                                p++;
                }
        }
        return -ENOENT;
}

/* Appends what fd has to sb (at most max bytes kept). Returns 1 on EOF,
 * 0 when more may come, negative errno on a read error. */
static int drain_fd(int fd, struct strbuf *sb, size_t max)
{
        char buf[8192];
        for (;;) {
                ssize_t n = read(fd, buf, sizeof(buf));
                if (n == 0)
                        return 1;
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return -errno;
                }
                if (sb && sb->len < max) {
                        size_t keep = (size_t)n;
                        if (keep > max - sb->len)
                                keep = max - sb->len;
                        strbuf_appendn(sb, buf, keep);
                }
        }
}

/* Runs argv[0] (looked up as above) with input on stdin. Returns the exit
 * status (0..255), -ENOENT when the program is not installed, -ETIMEDOUT
 * when it ran too long (it is killed), or another negative errno. */
static int run_cmd(char *const argv[], const char *input, size_t inlen, struct strbuf *out,
                   struct strbuf *errout)
{
        char path[PATH_MAX];
        int rc = resolve_program(argv[0], path, sizeof(path));
        if (rc < 0)
                return rc;

        int in_fd = -1, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, exec_pipe[2] = {-1, -1};
        in_fd = memfd_create("shunt-ipt-input", MFD_CLOEXEC);
        if (in_fd < 0)
                return -errno;
        size_t off = 0;
        while (off < inlen) {
                ssize_t w = write(in_fd, input + off, inlen - off);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        rc = -errno;
                        close(in_fd);
                        return rc;
                }
                off += (size_t)w;
        }
        if (lseek(in_fd, 0, SEEK_SET) < 0 || pipe2(out_pipe, O_CLOEXEC) < 0 ||
            pipe2(err_pipe, O_CLOEXEC) < 0 || pipe2(exec_pipe, O_CLOEXEC) < 0) {
                rc = -errno;
                goto out_close;
        }

        pid_t pid = fork();
        if (pid < 0) {
                rc = -errno;
                goto out_close;
        }
        if (pid == 0) {
                /* Child: only async-signal-safe calls from here on. */
                sigset_t all;
                sigemptyset(&all);
                sigprocmask(SIG_SETMASK, &all, NULL);
                signal(SIGPIPE, SIG_DFL);
                if (dup2(in_fd, 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0) {
                        int e = errno;
                        (void)!write(exec_pipe[1], &e, sizeof(e));
                        _exit(127);
                }
                execve(path, argv, environ);
                int e = errno;
                (void)!write(exec_pipe[1], &e, sizeof(e));
                _exit(127);
        }

        close(in_fd);
        in_fd = -1;
        close(out_pipe[1]);
        out_pipe[1] = -1;
        close(err_pipe[1]);
        err_pipe[1] = -1;
        close(exec_pipe[1]);
        exec_pipe[1] = -1;
        fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
        fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);

        uint64_t deadline = clock_mono_ms() + CMD_TIMEOUT_MS;
        bool out_open = true, err_open = true, timed_out = false;
        while (out_open || err_open) {
                struct pollfd pf[2];
                int n = 0;
                if (out_open)
                        pf[n++] = (struct pollfd){.fd = out_pipe[0], .events = POLLIN};
                if (err_open)
                        pf[n++] = (struct pollfd){.fd = err_pipe[0], .events = POLLIN};
                long long left = (long long)deadline - (long long)clock_mono_ms();
                if (left <= 0) {
                        timed_out = true;
                        break;
                }
                int pr = poll(pf, (nfds_t)n, (int)left);
                if (pr < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                for (int i = 0; i < n; i++) {
                        if (!pf[i].revents)
                                continue;
                        bool is_out = pf[i].fd == out_pipe[0];
                        int d = drain_fd(pf[i].fd, is_out ? out : errout,
                                         is_out ? CMD_OUTPUT_MAX : CMD_ERR_MAX);
                        if (d != 0) {
                                if (is_out)
                                        out_open = false;
                                else
                                        err_open = false;
                        }
                }
        }
        if (timed_out || out_open || err_open)
                kill(pid, SIGKILL);

        /* The child may have closed its output and still be running: wait
         * for it until the same deadline, then kill it. */
        int status = 0;
        for (;;) {
                pid_t w = waitpid(pid, &status, timed_out ? 0 : WNOHANG);
                if (w == pid)
                        break;
                if (w < 0 && errno != EINTR) {
                        rc = -errno;
                        goto out_close;
                }
                if (w == 0) {
                        if (clock_mono_ms() >= deadline) {
                                timed_out = true;
                                kill(pid, SIGKILL);
                        } else {
                                struct timespec ts = {0, 2 * 1000 * 1000};
                                nanosleep(&ts, NULL);
                        }
                }
        }
        int exec_errno = 0;
        ssize_t got;
        do {
                got = read(exec_pipe[0], &exec_errno, sizeof(exec_errno));
        } while (got < 0 && errno == EINTR);
        if (got == (ssize_t)sizeof(exec_errno) && exec_errno)
                rc = -exec_errno;
        else if (timed_out)
                rc = -ETIMEDOUT;
        else if (WIFEXITED(status))
                rc = WEXITSTATUS(status);
        else
                rc = 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);

out_close:
        if (in_fd >= 0)
                close(in_fd);
        for (int i = 0; i < 2; i++) {
                if (out_pipe[i] >= 0)
                        close(out_pipe[i]);
                if (err_pipe[i] >= 0)
                        close(err_pipe[i]);
                if (exec_pipe[i] >= 0)
                        close(exec_pipe[i]);
        }
        return rc;
}

/* Copies stderr text into err as "<what>: <first lines>". */
static void set_err(char *err, size_t errlen, const char *what, int rc, const struct strbuf *se)
{
        if (!err || !errlen)
                return;
        char detail[512] = "";
        if (se && se->len) {
                size_t j = 0;
                for (size_t i = 0; i < se->len && j + 1 < sizeof(detail); i++)
                        detail[j++] = se->data[i] == '\n' ? ' ' : se->data[i];
                while (j > 0 && detail[j - 1] == ' ')
                        j--;
                detail[j] = '\0';
        }
        if (rc < 0)
                snprintf(err, errlen, "%s: %s%s%s", what,
                         rc == -ENOENT ? "not found in PATH or " EXTRA_PATH " (install 'iptables')"
                                       : strerror(-rc),
                         detail[0] ? ": " : "", detail);
        else
                snprintf(err, errlen, "%s: exit status %d%s%s", what, rc, detail[0] ? ": " : "",
                         detail);
}

static int run_restore(const struct family_tools *ft, const struct strbuf *input, char *err,
                       size_t errlen, bool *comment_missing)
{
        char *argv[] = {(char *)ft->restore, "-w", "5", "--noflush", NULL};
        struct strbuf se;
        strbuf_init(&se);
        int rc = run_cmd(argv, input->data ? input->data : "", input->len, NULL, &se);
        if (rc != 0) {
                char what[64];
                snprintf(what, sizeof(what), "%s --noflush", ft->restore);
                set_err(err, errlen, what, rc, &se);
                if (comment_missing)
                        *comment_missing = se.data && strstr(se.data, "comment") != NULL;
                if (rc > 0)
                        rc = -EIO;
        }
        strbuf_free(&se);
        return rc;
}

/* Runs "<save> -t nat" (with -c when counters), stdout into out. */
static int run_save(const struct family_tools *ft, bool counters, struct strbuf *out, char *err,
                    size_t errlen)
{
        char *argv_c[] = {(char *)ft->save, "-c", "-t", "nat", NULL};
        char *argv_n[] = {(char *)ft->save, "-t", "nat", NULL};
        struct strbuf se;
        strbuf_init(&se);
        int rc = run_cmd(counters ? argv_c : argv_n, NULL, 0, out, &se);
        if (rc != 0) {
                char what[64];
                snprintf(what, sizeof(what), "%s -t nat", ft->save);
                set_err(err, errlen, what, rc, &se);
                if (rc > 0)
                        rc = -EIO;
        } else if (out->truncated) {
                snprintf(err, errlen, "%s -t nat: output too large", ft->save);
                rc = -E2BIG;
        }
        strbuf_free(&se);
        return rc;
}

int ipt_probe(int family, char *version, size_t vlen, char *err, size_t errlen)
{
        const struct family_tools *ft = family == AF_INET6 ? &FAM_V6 : &FAM_V4;
        char *argv[] = {(char *)ft->save, "--version", NULL};
        struct strbuf out, se;
        strbuf_init(&out);
        strbuf_init(&se);
        version[0] = '\0';
        int rc = run_cmd(argv, NULL, 0, &out, &se);
        if (rc != 0) {
                char what[64];
                snprintf(what, sizeof(what), "%s --version", ft->save);
                set_err(err, errlen, what, rc, &se);
                rc = rc > 0 ? -EIO : rc;
        } else {
                /* "iptables-save v1.8.9 (nf_tables)": keep the first line. */
                snprintf(version, vlen, "%.*s", (int)strcspn(out.data ? out.data : "", "\n"),
                         out.data ? out.data : "");
                strbuf_reset(&out);
                rc = run_save(ft, false, &out, err, errlen);
        }
        strbuf_free(&out);
        strbuf_free(&se);
        return rc;
}

int ipt_notrack_rules(int family)
{
        const struct family_tools *ft = family == AF_INET6 ? &FAM_V6 : &FAM_V4;
        char *argv[] = {(char *)ft->save, "-t", "raw", NULL};
        struct strbuf out;
        strbuf_init(&out);
        int rc = run_cmd(argv, NULL, 0, &out, NULL);
        int n = 0;
        if (rc != 0) {
                n = rc > 0 ? -EIO : rc;
        } else {
                for (const char *p = out.data; p && *p;) {
                        size_t len = strcspn(p, "\n");
                        if (len > 3 && memcmp(p, "-A ", 3) == 0 &&
                            (memmem(p, len, "-j NOTRACK", 10) || memmem(p, len, "--notrack", 9)))
                                n++;
                        p += len + (p[len] == '\n');
                }
        }
        strbuf_free(&out);
        return n;
}

/* ---- rendering ---------------------------------------------------------- */

static void rule(struct strbuf *out, const char *chain, const char *match, bool comments,
                 const char *target)
{
        strbuf_appendf(out, "-A %s -p tcp%s%s%s -j %s\n", chain, match[0] ? " " : "", match,
                       comments ? " -m comment --comment " COMMENT_TEXT : "", target);
}

static bool port_seen(const uint16_t *ports, size_t n, uint16_t p)
{
        for (size_t i = 0; i < n; i++)
                if (ports[i] == p)
                        return true;
        return false;
}

/* "a.b.c.d/len" or "x::/len" with host bits cleared (as iptables-save shows). */
static bool cidr_text(const struct cidr *c, int family, char *buf, size_t len)
{
        if (c->family != family)
                return false;
        unsigned char bytes[16];
        size_t nbytes = family == AF_INET ? 4 : 16;
        unsigned maxlen = (unsigned)nbytes * 8;
        unsigned plen = c->prefix_len > maxlen ? maxlen : c->prefix_len;
        memcpy(bytes, family == AF_INET ? (const void *)&c->addr.v4 : (const void *)&c->addr.v6,
               nbytes);
        for (size_t i = 0; i < nbytes; i++) {
                unsigned bit = (unsigned)i * 8;
                if (bit >= plen)
                        bytes[i] = 0;
                else if (plen - bit < 8)
                        bytes[i] &= (unsigned char)(0xff << (8 - (plen - bit)));
        }
        char a[INET6_ADDRSTRLEN];
        if (!inet_ntop(family, bytes, a, sizeof(a)))
                return false;
        snprintf(buf, len, "%s/%u", a, plen);
        return true;
}

static void render(const struct ipt_options *o, int family, const char *stale_deletes,
                   bool have_stale_outbound, bool comments, struct strbuf *out)
{
        char m[160];
        strbuf_append(out, "*nat\n");
        /* In a --noflush restore, declaring a chain creates it or flushes it. */
        strbuf_append(out, ":" IPT_CHAIN_INBOUND " - [0:0]\n");
        if (!o->inbound_only || have_stale_outbound)
                strbuf_append(out, ":" IPT_CHAIN_OUTBOUND " - [0:0]\n");
        if (stale_deletes)
                strbuf_append(out, stale_deletes);
        /* Inbound only: a stale outbound chain (flushed by its declaration
         * above, its jumps deleted) goes away. */
        if (o->inbound_only && have_stale_outbound)
                strbuf_append(out, "-X " IPT_CHAIN_OUTBOUND "\n");

        /* Inbound: excluded ports, our own ports (no double redirect), capture. */
        const uint16_t *in_ex = o->exclude_inbound_ports;
        size_t n_in_ex = in_ex ? o->n_exclude_inbound_ports : 0;
        for (size_t i = 0; i < n_in_ex; i++) {
                if (port_seen(in_ex, i, in_ex[i]))
                        continue; /* a duplicate: one rule is enough */
                snprintf(m, sizeof(m), "--dport %u", in_ex[i]);
                rule(out, IPT_CHAIN_INBOUND, m, comments, "RETURN");
        }
        uint16_t own[3] = {o->inbound_port, o->outbound_port, o->metrics_port};
        for (size_t i = 0; i < 3; i++) {
                if (!own[i] || port_seen(in_ex, n_in_ex, own[i]) || port_seen(own, i, own[i]))
                        continue;
                snprintf(m, sizeof(m), "--dport %u", own[i]);
                rule(out, IPT_CHAIN_INBOUND, m, comments, "RETURN");
        }
        char target[64];
        snprintf(target, sizeof(target), "REDIRECT --to-ports %u", o->inbound_port);
        rule(out, IPT_CHAIN_INBOUND, "", comments, target);

        if (o->inbound_only) {
                rule(out, "PREROUTING", "", comments, IPT_CHAIN_INBOUND);
                strbuf_append(out, "COMMIT\n");
                return;
        }

        /* Outbound, in order: shuntd's mark, shuntd's uid, loopback, excluded
         * ports, excluded CIDRs of this family, capture. */
        if (o->mark) {
                snprintf(m, sizeof(m), "-m mark --mark 0x%x/0xffffffff", o->mark);
                rule(out, IPT_CHAIN_OUTBOUND, m, comments, "RETURN");
        }
        if (o->uid != IPT_UID_NONE) {
                snprintf(m, sizeof(m), "-m owner --uid-owner %u", o->uid);
                rule(out, IPT_CHAIN_OUTBOUND, m, comments, "RETURN");
        }
        rule(out, IPT_CHAIN_OUTBOUND, "-o lo", comments, "RETURN");
        rule(out, IPT_CHAIN_OUTBOUND, family == AF_INET ? "-d 127.0.0.0/8" : "-d ::1/128", comments,
             "RETURN");
        const uint16_t *out_ex = o->exclude_outbound_ports;
        size_t n_out_ex = out_ex ? o->n_exclude_outbound_ports : 0;
        for (size_t i = 0; i < n_out_ex; i++) {
                if (port_seen(out_ex, i, out_ex[i]))
                        continue;
                snprintf(m, sizeof(m), "--dport %u", out_ex[i]);
                rule(out, IPT_CHAIN_OUTBOUND, m, comments, "RETURN");
        }
        for (size_t i = 0; o->exclude_outbound_cidrs && i < o->n_exclude_outbound_cidrs; i++) {
                char c[INET6_ADDRSTRLEN + 8];
                if (!cidr_text(&o->exclude_outbound_cidrs[i], family, c, sizeof(c)))
                        continue;
                snprintf(m, sizeof(m), "-d %s", c);
                rule(out, IPT_CHAIN_OUTBOUND, m, comments, "RETURN");
        }
        snprintf(target, sizeof(target), "REDIRECT --to-ports %u", o->outbound_port);
        rule(out, IPT_CHAIN_OUTBOUND, "", comments, target);

        /* The jumps, last: the chains are complete when traffic first enters. */
        rule(out, "PREROUTING", "", comments, IPT_CHAIN_INBOUND);
        rule(out, "OUTPUT", "", comments, IPT_CHAIN_OUTBOUND);
        strbuf_append(out, "COMMIT\n");
}

void ipt_render(const struct ipt_options *o, int family, struct strbuf *out)
{
        render(o, family, NULL, false, !o->no_comments, out);
}

void ipt_options_from_config(struct ipt_options *o, const struct shunt_config *cfg, uint32_t uid)
{
        memset(o, 0, sizeof(*o));
        o->inbound_port = cfg->inbound_port;
        o->outbound_port = cfg->outbound_port;
        o->metrics_port = config_metrics_enabled(cfg) ? cfg->metrics_port : 0;
        o->mark = cfg->proxy_mark;
        o->uid = cfg->proxy_uid >= 0 ? (uint32_t)cfg->proxy_uid : uid;
        o->exclude_inbound_ports = cfg->exclude_inbound_ports;
        o->n_exclude_inbound_ports = cfg->n_exclude_inbound_ports;
        o->exclude_outbound_ports = cfg->exclude_outbound_ports;
        o->n_exclude_outbound_ports = cfg->n_exclude_outbound_ports;
        o->exclude_outbound_cidrs = cfg->exclude_outbound_cidrs;
        o->n_exclude_outbound_cidrs = cfg->n_exclude_outbound_cidrs;
        o->ipv6 = true;
}

/* ---- reading the current state ------------------------------------------ */

static bool is_our_chain(const char *s, size_t n)
{
        return (n == strlen(IPT_CHAIN_INBOUND) && !memcmp(s, IPT_CHAIN_INBOUND, n)) ||
               (n == strlen(IPT_CHAIN_OUTBOUND) && !memcmp(s, IPT_CHAIN_OUTBOUND, n));
}

/* Next whitespace-separated word of [*p, end), a "quoted string" counting
 * as one word (iptables-save quotes comments with spaces). */
static bool next_word(const char **p, const char *end, const char **w, size_t *wl)
{
        const char *s = *p;
        while (s < end && *s == ' ')
                s++;
        if (s == end)
                return false;
        const char *e = s;
        bool quoted = false;
        while (e < end && (quoted || *e != ' ')) {
                if (*e == '\\' && e + 1 < end)
                        e++;
                else if (*e == '"')
                        quoted = !quoted;
                e++;
        }
        *w = s;
        *wl = (size_t)(e - s);
        *p = e;
        return true;
}

static bool word_is(const char *w, size_t wl, const char *lit)
{
        return wl == strlen(lit) && !memcmp(w, lit, wl);
}

/* The chain a rule jumps or goes to when it is one of ours, else NULL. */
static const char *our_target(const char *spec, size_t len)
{
        const char *p = spec, *end = spec + len, *w;
        size_t wl;
        while (next_word(&p, end, &w, &wl)) {
                if (!word_is(w, wl, "-j") && !word_is(w, wl, "-g") && !word_is(w, wl, "--jump") &&
                    !word_is(w, wl, "--goto"))
                        continue;
                if (!next_word(&p, end, &w, &wl))
                        break;
                if (word_is(w, wl, IPT_CHAIN_INBOUND))
                        return IPT_CHAIN_INBOUND;
                if (word_is(w, wl, IPT_CHAIN_OUTBOUND))
                        return IPT_CHAIN_OUTBOUND;
        }
        return NULL;
}

struct nat_state {
        bool have_inbound, have_outbound; /* chains exist */
        size_t pre_jumps;                 /* PREROUTING -p tcp ... -j SIDECAR_PROXY_INBOUND */
        size_t out_jumps;                 /* OUTPUT ... -j SIDECAR_PROXY_OUTBOUND */
        size_t refs;                      /* all rules outside our chains that target them */
        struct strbuf deletes;            /* "-D CHAIN spec" for each of those */
};

/* One "[p:b] -A CHAIN spec" or "-A CHAIN spec" line of iptables-save. */
struct save_rule {
        bool has_counters;
        unsigned long long packets, bytes;
        const char *chain;
        size_t chain_len;
        const char *spec; /* after the chain name and one space ("" if none) */
        size_t spec_len;
};

static bool parse_rule_line(const char *line, size_t len, struct save_rule *r)
{
        memset(r, 0, sizeof(*r));
        const char *p = line, *end = line + len;
        if (p < end && *p == '[') {
                char tmp[64];
                const char *close = memchr(p, ']', (size_t)(end - p));
                if (!close || (size_t)(close - p) >= sizeof(tmp))
                        return false;
                memcpy(tmp, p + 1, (size_t)(close - p - 1));
                tmp[close - p - 1] = '\0';
                if (sscanf(tmp, "%llu:%llu", &r->packets, &r->bytes) != 2)
                        return false;
                r->has_counters = true;
                p = close + 1;
                while (p < end && *p == ' ')
                        p++;
        }
        if (end - p < 4 || memcmp(p, "-A ", 3) != 0)
                return false;
        p += 3;
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        r->chain = p;
        r->chain_len = sp ? (size_t)(sp - p) : (size_t)(end - p);
        r->spec = sp ? sp + 1 : end;
        r->spec_len = (size_t)(end - r->spec);
        return r->chain_len > 0;
}

static void parse_state(const char *text, struct nat_state *st)
{
        memset(st, 0, sizeof(*st));
        strbuf_init(&st->deletes);
        const char *line = text;
        while (line && *line) {
                const char *nl = strchr(line, '\n');
                size_t len = nl ? (size_t)(nl - line) : strlen(line);
                if (len && line[len - 1] == '\r')
                        len--;
                struct save_rule r;
                if (len > 1 && line[0] == ':') {
                        const char *sp = memchr(line + 1, ' ', len - 1);
                        size_t n = sp ? (size_t)(sp - line - 1) : len - 1;
                        if (n == strlen(IPT_CHAIN_INBOUND) &&
                            !memcmp(line + 1, IPT_CHAIN_INBOUND, n))
                                st->have_inbound = true;
                        if (n == strlen(IPT_CHAIN_OUTBOUND) &&
                            !memcmp(line + 1, IPT_CHAIN_OUTBOUND, n))
                                st->have_outbound = true;
                } else if (parse_rule_line(line, len, &r) && !is_our_chain(r.chain, r.chain_len)) {
                        const char *t = our_target(r.spec, r.spec_len);
                        if (t) {
                                st->refs++;
                                if (r.chain_len == 10 && !memcmp(r.chain, "PREROUTING", 10) &&
                                    !strcmp(t, IPT_CHAIN_INBOUND))
                                        st->pre_jumps++;
                                if (r.chain_len == 6 && !memcmp(r.chain, "OUTPUT", 6) &&
                                    !strcmp(t, IPT_CHAIN_OUTBOUND))
                                        st->out_jumps++;
                                strbuf_appendf(&st->deletes, "-D %.*s %.*s\n", (int)r.chain_len,
                                               r.chain, (int)r.spec_len, r.spec);
                        }
                }
                line = nl ? nl + 1 : NULL;
        }
}

static int read_state(const struct family_tools *ft, struct nat_state *st, char *err, size_t errlen)
{
        struct strbuf out;
        strbuf_init(&out);
        int rc = run_save(ft, false, &out, err, errlen);
        if (rc == 0)
                parse_state(out.data ? out.data : "", st);
        else
                memset(st, 0, sizeof(*st));
        strbuf_free(&out);
        return rc;
}

/* ---- install and remove ------------------------------------------------- */

static int remove_family(const struct family_tools *ft, char *err, size_t errlen)
{
        char errmsg[512] = "";
        int last = 0; /* the latest restore's result */
        for (int attempt = 0;; attempt++) {
                struct nat_state st;
                int rc = read_state(ft, &st, err, errlen);
                if (rc < 0)
                        return rc;
                if (!st.have_inbound && !st.have_outbound && st.refs == 0) {
                        strbuf_free(&st.deletes);
                        return 0;
                }
                if (attempt == REMOVE_TRIES) {
                        strbuf_free(&st.deletes);
                        break;
                }
                struct strbuf in;
                strbuf_init(&in);
                strbuf_append(&in, "*nat\n");
                if (st.deletes.len)
                        strbuf_append(&in, st.deletes.data);
                /* Flush both before deleting either: one may jump to the other. */
                if (st.have_inbound)
                        strbuf_append(&in, "-F " IPT_CHAIN_INBOUND "\n");
                if (st.have_outbound)
                        strbuf_append(&in, "-F " IPT_CHAIN_OUTBOUND "\n");
                if (st.have_inbound)
                        strbuf_append(&in, "-X " IPT_CHAIN_INBOUND "\n");
                if (st.have_outbound)
                        strbuf_append(&in, "-X " IPT_CHAIN_OUTBOUND "\n");
                strbuf_append(&in, "COMMIT\n");
                strbuf_free(&st.deletes);
                last = in.truncated ? -ENOMEM : run_restore(ft, &in, errmsg, sizeof(errmsg), NULL);
                strbuf_free(&in);
                if (last == -ENOENT || last == -ENOMEM)
                        break;
                /* On failure the state may have changed under us: read it again. */
        }
        if (last < 0) {
                snprintf(err, errlen, "%s", errmsg);
                return last;
        }
        snprintf(err, errlen, "%s: chains %s/%s still present after %d attempts", ft->restore,
                 IPT_CHAIN_INBOUND, IPT_CHAIN_OUTBOUND, REMOVE_TRIES);
        return -EBUSY;
}

static int install_family(const struct ipt_options *o, const struct family_tools *ft, char *err,
                          size_t errlen)
{
        bool comments = !o->no_comments;
        char errmsg[512] = "";
        bool restored = false;
        int rc = 0, last = 0; /* last: the latest restore's result */
        for (int attempt = 0;; attempt++) {
                struct nat_state st;
                rc = read_state(ft, &st, err, errlen);
                if (rc < 0)
                        return rc;
                /* Done when our restore went through and exactly our two jumps
                 * refer to the chains (a concurrent editor may have added more). */
                bool settled = o->inbound_only
                                   ? st.have_inbound && !st.have_outbound && st.pre_jumps == 1 &&
                                         st.out_jumps == 0 && st.refs == 1
                                   : st.have_inbound && st.have_outbound && st.pre_jumps == 1 &&
                                         st.out_jumps == 1 && st.refs == 2;
                if (restored && settled) {
                        strbuf_free(&st.deletes);
                        return 0;
                }
                if (attempt == INSTALL_TRIES) {
                        strbuf_free(&st.deletes);
                        break;
                }
                if (!restored && (st.have_inbound || st.have_outbound || st.refs))
                        log_info(COMP, 0, "%s: replacing existing chains (%zu jump(s) to them)",
                                 ft->label, st.refs);
                struct strbuf in;
                strbuf_init(&in);
                render(o, ft->family, st.deletes.data, st.have_outbound, comments, &in);
                strbuf_free(&st.deletes);
                bool comment_missing = false;
                last = in.truncated
                           ? -ENOMEM
                           : run_restore(ft, &in, errmsg, sizeof(errmsg), &comment_missing);
                strbuf_free(&in);
                if (last == 0) {
                        restored = true;
                        continue;
                }
                if (last == -ENOENT || last == -ENOMEM) {
                        snprintf(err, errlen, "%s", errmsg);
                        return last;
                }
                if (comment_missing && comments) {
                        log_warn(COMP, 0,
                                 "%s: the comment match is not available; rules go in without "
                                 "comments",
                                 ft->label);
                        comments = false;
                }
                /* Otherwise the table may have changed between save and restore:
                 * read it again and retry. */
        }
        if (last < 0) {
                snprintf(err, errlen, "%s", errmsg);
                return last;
        }
        snprintf(err, errlen,
                 "%s: rules did not settle after %d attempts (something else edits the nat "
                 "table)",
                 ft->restore, INSTALL_TRIES);
        return -EBUSY;
}

/* IPv6 is usable when the stack is on in this network namespace. */
static bool ipv6_enabled(const char **why)
{
        FILE *f = fopen("/proc/sys/net/ipv6/conf/all/disable_ipv6", "re");
        if (!f) {
                *why = "IPv6 is not available (no /proc/sys/net/ipv6)";
                return false;
        }
        int v = 0;
        int n = fscanf(f, "%d", &v);
        fclose(f);
        if (n == 1 && v == 1) {
                *why = "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1)";
                return false;
        }
        return true;
}

static void log_installed(const char *label, const struct ipt_options *o)
{
        if (o->inbound_only)
                log_info(COMP, 0, "%s: installed %s -> %u (inbound only)", label, IPT_CHAIN_INBOUND,
                         o->inbound_port);
        else
                log_info(COMP, 0, "%s: installed %s -> %u and %s -> %u", label, IPT_CHAIN_INBOUND,
                         o->inbound_port, IPT_CHAIN_OUTBOUND, o->outbound_port);
}

int ipt_install(const struct ipt_options *o, char *err, size_t errlen)
{
        char dummy[8];
        if (!err || !errlen) {
                err = dummy;
                errlen = sizeof(dummy);
        }
        err[0] = '\0';
        if (!o->inbound_port || !o->outbound_port) {
                snprintf(err, errlen,
                         "iptables: inbound_port %u / outbound_port %u: must be 1..65535",
                         o->inbound_port, o->outbound_port);
                return -EINVAL;
        }
        int rc = install_family(o, &FAM_V4, err, errlen);
        if (rc < 0)
                return rc;
        log_installed("ipv4", o);

        const char *why = NULL;
        if (o->ipv6 && ipv6_enabled(&why)) {
                rc = install_family(o, &FAM_V6, err, errlen);
                if (rc == -ENOENT) {
                        log_warn(COMP, 0, "ipv6: %s not found; IPv6 traffic is not captured",
                                 FAM_V6.restore);
                        err[0] = '\0';
                        return 0;
                }
                if (rc < 0) {
                        char ignored[256];
                        if (remove_family(&FAM_V4, ignored, sizeof(ignored)) < 0)
                                log_warn(COMP, 0, "ipv4: roll-back failed: %s", ignored);
                        return rc;
                }
                log_installed("ipv6", o);
                err[0] = '\0';
                return 0;
        }
        if (o->ipv6)
                log_info(COMP, 0, "ipv6: skipped: %s", why);
        /* Not installing v6: still clear a stale v6 set from an earlier run. */
        char ignored[256];
        rc = remove_family(&FAM_V6, ignored, sizeof(ignored));
        if (rc < 0 && rc != -ENOENT)
                log_warn(COMP, 0, "ipv6: could not remove stale chains: %s", ignored);
        err[0] = '\0';
        return 0;
}

int ipt_remove(char *err, size_t errlen)
{
        char dummy[8];
        if (!err || !errlen) {
                err = dummy;
                errlen = sizeof(dummy);
        }
        err[0] = '\0';
        int rc4 = remove_family(&FAM_V4, err, errlen);
        if (rc4 == -ENOENT) {
                err[0] = '\0';
                rc4 = 0; /* no iptables: nothing can be installed */
        }
        char err6[512] = "";
        int rc6 = remove_family(&FAM_V6, err6, sizeof(err6));
        if (rc6 == -ENOENT)
                rc6 = 0;
        if (rc4 < 0)
                return rc4;
        if (rc6 < 0) {
                snprintf(err, errlen, "%s", err6);
                return rc6;
        }
        return 0;
}

bool ipt_inbound_installed(int family)
{
        struct nat_state st;
        char err[256];
        if (read_state(family == AF_INET6 ? &FAM_V6 : &FAM_V4, &st, err, sizeof(err)) < 0)
                return false;
        strbuf_free(&st.deletes);
        return st.have_inbound && st.pre_jumps > 0;
}

bool ipt_installed(int family)
{
        struct nat_state st;
        char err[256];
        if (read_state(family == AF_INET6 ? &FAM_V6 : &FAM_V4, &st, err, sizeof(err)) < 0)
                return false;
        strbuf_free(&st.deletes);
        return st.have_inbound && st.have_outbound && st.pre_jumps > 0 && st.out_jumps > 0;
}

/* ---- counters ----------------------------------------------------------- */

/* Our rules of one family: as JSON with counters, or (text) one
 * "chain rule" line each, without counters, to compare two readings. */
static void dump_family(const struct family_tools *ft, bool text, struct strbuf *out, int *rc_out)
{
        struct strbuf save;
        strbuf_init(&save);
        char err[512];
        int rc = run_save(ft, !text, &save, err, sizeof(err));
        if (!text)
                strbuf_append(out, "[");
        if (rc == 0) {
                bool first = true;
                const char *line = save.data ? save.data : "";
                while (line && *line) {
                        const char *nl = strchr(line, '\n');
                        size_t len = nl ? (size_t)(nl - line) : strlen(line);
                        struct save_rule r;
                        if (parse_rule_line(line, len, &r) && (is_our_chain(r.chain, r.chain_len) ||
                                                               our_target(r.spec, r.spec_len))) {
                                char *chain = strndup(r.chain, r.chain_len);
                                char *spec = strndup(r.spec, r.spec_len);
                                if (!chain || !spec) {
                                        free(chain);
                                        free(spec);
                                        rc = -ENOMEM;
                                        break;
                                }
                                if (text) {
                                        strbuf_appendf(out, "%s %s\n", chain, spec);
                                } else {
                                        strbuf_append(out, first ? "{\"chain\":" : ",{\"chain\":");
                                        strbuf_append_json_string(out, chain);
                                        strbuf_append(out, ",\"rule\":");
                                        strbuf_append_json_string(out, spec);
                                        strbuf_appendf(out, ",\"packets\":%llu,\"bytes\":%llu}",
                                                       r.packets, r.bytes);
                                }
                                free(chain);
                                free(spec);
                                first = false;
                        }
                        line = nl ? nl + 1 : NULL;
                }
        } else if (rc != -ENOENT) {
                log_warn(COMP, 0, "%s: cannot read counters: %s", ft->label, err);
        }
        if (!text)
                strbuf_append(out, "]");
        strbuf_free(&save);
        if (rc == -ENOENT)
                rc = 0; /* the tool is absent: no rules of that family */
        *rc_out = rc;
}

int ipt_fingerprint(struct strbuf *out)
{
        int rc4 = 0, rc6 = 0;
        dump_family(&FAM_V4, true, out, &rc4);
        strbuf_append(out, "--\n");
        dump_family(&FAM_V6, true, out, &rc6);
        if (out->truncated)
                return -ENOMEM;
        return rc4 < 0 ? rc4 : rc6;
}

int ipt_dump_json(struct strbuf *out)
{
        int rc4 = 0, rc6 = 0;
        strbuf_append(out, "{\"ipv4\":");
        dump_family(&FAM_V4, false, out, &rc4);
        strbuf_append(out, ",\"ipv6\":");
        dump_family(&FAM_V6, false, out, &rc6);
        strbuf_append(out, "}");
        if (out->truncated)
                return -ENOMEM;
        return rc4 < 0 ? rc4 : rc6;
}
