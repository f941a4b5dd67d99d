// SPDX-License-Identifier: Apache-2.0
/* Host checks of shuntctl check: the kernel's eBPF support, BTF, cgroup v2,
 * iptables, connection tracking and this process's capabilities. The probes
 * are the ones shuntd runs at start (intercept/), so a PASS here means the
 * same code will work there. */
#include <bpf/btf.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check/check-int.h"
#include "core/mount.h"
#include "intercept/bpfcap.h"
#include "intercept/iptables.h"
#include "intercept/origdst.h"

#define TEXT_MAX CHECK_TEXT_MAX

static bool redirect_is(const struct check_ctx *c, const char *mode)
{
        return c->admin_up && strcmp(check_config_str(c, "redirect"), mode) == 0;
}

static bool may_load_bpf(const struct check_ctx *c)
{
        return c->caps & (CHECK_CAP(CAP_BPF_BIT) | CHECK_CAP(CAP_SYS_ADMIN_BIT));
}

/* Why a missing kernel feature does not fail: shuntd does not use eBPF. */
static void not_needed(const struct check_ctx *c, struct check_result *res)
{
        if (c->want_ebpf)
                return;
        size_t n = strlen(res->advice);
        snprintf(res->advice + n, sizeof(res->advice) - n,
                 "%s(not needed now: shuntd runs with --redirect %s)", n ? " " : "",
                 check_config_str(c, "redirect"));
}

static void check_kernel_bpf(struct check_ctx *c)
{
        char why[512];
        int rc = bpfcap_probe_kernel(why, sizeof(why));
        struct check_result *res;
        if (rc == 0) {
                res = check_add(c, CHECK_PASS, "kernel-bpf");
                snprintf(res->detail, TEXT_MAX,
                         "programs cgroup/connect4/6, sockops, sk_msg and cgroup/getsockopt, maps "
                         "sockhash, lpm_trie and percpu_array and the helpers eBPF capture calls "
                         "all load");
                return;
        }
        enum check_status bad = c->want_ebpf ? CHECK_FAIL : CHECK_WARN;
        if (!may_load_bpf(c)) {
                /* The probe says nothing about the kernel without the right
                 * to load programs. Before an install that is a failure (the
                 * installing user needs it); in a proxy container it is how
                 * it should be. */
                res = check_add(c, c->o->pre ? bad : CHECK_WARN, "kernel-bpf");
                snprintf(res->detail, TEXT_MAX,
                         "not probed: %s (this process holds neither "
                         "CAP_BPF nor CAP_SYS_ADMIN)",
                         why);
                snprintf(res->advice, TEXT_MAX,
                         c->o->pre ? "run the check as the user who installs capture (root, or "
                                     "with CAP_BPF and CAP_NET_ADMIN)"
                                   : "run 'shuntctl check --pre' as root on the node to probe the "
                                     "kernel (the proxy container holds no capability by design)");
        } else if (rc == -EPERM || rc == -EACCES) {
                res = check_add(c, bad, "kernel-bpf");
                snprintf(res->detail, TEXT_MAX, "%s, although this process holds %s%s", why,
                         c->caps & CHECK_CAP(CAP_BPF_BIT) ? "CAP_BPF" : "CAP_SYS_ADMIN",
                         c->userns ? " (in a user namespace, where it does not count for bpf())"
                                   : "");
                snprintf(res->advice, TEXT_MAX,
                         "the kernel refuses bpf() to this process: a user namespace (rootless "
                         "container), a seccomp profile or kernel lockdown denies it; install "
                         "capture from the host's user namespace with CAP_BPF and CAP_NET_ADMIN "
                         "and no seccomp filter on bpf() (shuntd init, or shuntd itself), or use "
                         "--redirect iptables");
        } else {
                res = check_add(c, bad, "kernel-bpf");
                snprintf(res->detail, TEXT_MAX, "%s", why);
                snprintf(res->advice, TEXT_MAX,
                         "eBPF capture needs Linux 6.1 or later built with CONFIG_BPF_SYSCALL, "
                         "CONFIG_CGROUP_BPF, CONFIG_BPF_STREAM_PARSER and CONFIG_BPF_JIT; "
                         "--redirect auto falls back to iptables (say --redirect iptables to "
                         "choose it)");
        }
        not_needed(c, res);
}

static void check_kernel_btf(struct check_ctx *c)
{
        struct btf *btf = btf__load_vmlinux_btf();
        int e = errno;
        struct check_result *res;
        if (btf) {
                res = check_add(c, CHECK_PASS, "kernel-btf");
                snprintf(res->detail, TEXT_MAX, "/sys/kernel/btf/vmlinux: %u types",
                         btf__type_cnt(btf));
                btf__free(btf);
                return;
        }
        res = check_add(c, c->want_ebpf ? CHECK_FAIL : CHECK_WARN, "kernel-btf");
        snprintf(res->detail, TEXT_MAX, "no kernel BTF (/sys/kernel/btf/vmlinux: %s)", strerror(e));
        snprintf(res->advice, TEXT_MAX,
                 "the capture programs are compiled once (CO-RE) and relocated against the "
                 "kernel's BTF: boot a kernel built with CONFIG_DEBUG_INFO_BTF=y; iptables "
                 "capture does not need it");
        not_needed(c, res);
}

static void check_cgroup_v2(struct check_ctx *c)
{
        char path[512], why[512];
        const char *configured = c->admin_up ? check_config_str(c, "redirect_cgroup") : "";
        struct check_result *res;
        enum check_status bad = c->want_ebpf ? CHECK_FAIL : CHECK_WARN;
        if (configured[0]) {
                snprintf(path, sizeof(path), "%s", configured);
        } else if (cgroup2_mount("/proc/self/mountinfo", path, sizeof(path)) < 0) {
                res = check_add(c, bad, "cgroup-v2");
                snprintf(res->detail, TEXT_MAX, "no cgroup v2 hierarchy is mounted");
                snprintf(res->advice, TEXT_MAX,
                         "eBPF capture attaches to a cgroup v2 directory: boot with "
                         "systemd.unified_cgroup_hierarchy=1, or mount -t cgroup2 none "
                         "/sys/fs/cgroup");
                not_needed(c, res);
                return;
        }
        if (bpfcap_check_cgroup(path, why, sizeof(why)) < 0) {
                res = check_add(c, bad, "cgroup-v2");
                snprintf(res->detail, TEXT_MAX, "%s", why);
                snprintf(res->advice, TEXT_MAX,
                         "redirect_cgroup must name the workload's cgroup v2 directory (e.g. "
                         "/sys/fs/cgroup/kubepods.slice/...); eBPF capture attaches there");
                not_needed(c, res);
                return;
        }
        res = check_add(c, CHECK_PASS, "cgroup-v2");
        snprintf(res->detail, TEXT_MAX, "cgroup v2 at %s%s", path,
                 configured[0] ? " (redirect_cgroup)" : "");
}

static bool file_has_word(const char *path, const char *word)
{
        FILE *f = fopen(path, "r");
        if (!f)
                return false;
        char line[128];
        bool found = false;
        while (!found && fgets(line, sizeof(line), f))
                found = strncmp(line, word, strlen(word)) == 0 && line[strlen(word)] == '\n';
        fclose(f);
        return found;
}

static void check_iptables(struct check_ctx *c)
{
        char version[128], err[512];
        struct check_result *res;
        enum check_status bad = redirect_is(c, "off") ? CHECK_WARN : CHECK_FAIL;
        int rc = ipt_probe(AF_INET, version, sizeof(version), err, sizeof(err));
        if (rc < 0) {
                bool priv = c->caps & CHECK_CAP(CAP_NET_ADMIN_BIT);
                res = check_add(c, !priv && !c->o->pre ? CHECK_WARN : bad, "iptables");
                snprintf(res->detail, TEXT_MAX, "%s%s%s", version, version[0] ? ": " : "", err);
                if (rc == -ENOENT)
                        snprintf(res->advice, TEXT_MAX,
                                 "install iptables (Debian: apt-get install iptables): capture's "
                                 "rules go in with iptables-restore");
                else if (!priv || c->userns || strstr(err, "Permission denied"))
                        snprintf(res->advice, TEXT_MAX,
                                 "reading the nat table needs CAP_NET_ADMIN: run the check as "
                                 "root (or 'shuntctl check --pre' on the node)");
                else
                        snprintf(res->advice, TEXT_MAX,
                                 "the kernel must provide the nat table in this network "
                                 "namespace: modprobe iptable_nat (legacy) or nft_chain_nat "
                                 "(nf_tables)");
                return;
        }
        char err6[512], version6[128];
        int rc6 = ipt_probe(AF_INET6, version6, sizeof(version6), err6, sizeof(err6));
        /* Two backends each holding nat rules: each tool lists only its own,
         * but the kernel applies both. */
        bool mixed =
            strstr(version, "nf_tables") && file_has_word("/proc/net/ip_tables_names", "nat");
        if (rc6 < 0) {
                res = check_add(c, CHECK_WARN, "iptables");
                snprintf(res->detail, TEXT_MAX, "%s: nat table usable; IPv6: %s", version, err6);
                snprintf(res->advice, TEXT_MAX,
                         "IPv6 connections will not be captured: install ip6tables and the ip6 "
                         "nat table (modprobe ip6table_nat or nft_chain_nat), or ignore this on "
                         "an IPv4-only network");
        } else if (mixed) {
                res = check_add(c, CHECK_WARN, "iptables");
                snprintf(res->detail, TEXT_MAX,
                         "%s: nat table usable, but the legacy nat table is in use in this "
                         "network namespace too",
                         version);
                snprintf(res->advice, TEXT_MAX,
                         "the kernel applies both sets of rules and each tool shows only its "
                         "own: use one backend (update-alternatives --set iptables "
                         "/usr/sbin/iptables-nft) and remove the other's rules");
        } else {
                res = check_add(c, CHECK_PASS, "iptables");
                snprintf(res->detail, TEXT_MAX, "%s: nat table usable (IPv4 and IPv6)", version);
        }
}

static int lo_up(char *msg, size_t len)
{
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct ifreq ifr;
        memset(&ifr, 0, sizeof(ifr));
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
        if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0 ||
            (ifr.ifr_flags |= IFF_UP, ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)) {
                snprintf(msg, len, "bringing up lo in a scratch network namespace: %s",
                         strerror(errno));
                if (fd >= 0)
                        close(fd);
                return -1;
        }
        close(fd);
        return 0;
}

enum scratch_result {
        SCRATCH_OK = 0,
        SCRATCH_SELFTEST = 1, /* conntrack did not answer */
        SCRATCH_NO_NETNS = 2, /* could not test */
        SCRATCH_IPTABLES = 3, /* the nat rules could not go in */
};

/* Capture is not installed here yet: install it, as shuntd would, in a
 * network namespace of its own that dies with a child process, and run
 * shuntd's start-up self-test there. Nothing of this network namespace is
 * touched. */
static enum scratch_result selftest_scratch(char *msg, size_t len)
{
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) {
                snprintf(msg, len, "pipe: %s", strerror(errno));
                return SCRATCH_NO_NETNS;
        }
        pid_t pid = fork();
        if (pid < 0) {
                snprintf(msg, len, "fork: %s", strerror(errno));
                close(p[0]);
                close(p[1]);
                return SCRATCH_NO_NETNS;
        }
        if (pid == 0) {
                close(p[0]);
                char out[512] = "";
                int rc = SCRATCH_OK;
                struct ipt_options io = {
                    .inbound_port = 15001, .outbound_port = 15002, .uid = IPT_UID_NONE};
                if (unshare(CLONE_NEWNET) < 0) {
                        snprintf(out, sizeof(out), "creating a scratch network namespace: %s",
                                 strerror(errno));
                        rc = SCRATCH_NO_NETNS;
                } else if (lo_up(out, sizeof(out)) < 0) {
                        rc = SCRATCH_NO_NETNS;
                } else if (ipt_install(&io, out, sizeof(out)) < 0) {
                        rc = SCRATCH_IPTABLES;
                } else if (origdst_selftest(out, sizeof(out)) < 0) {
                        rc = SCRATCH_SELFTEST;
                }
                ssize_t w = write(p[1], out, strlen(out));
                (void)w;
                _exit(rc);
        }
        close(p[1]);
        size_t got = 0;
        for (;;) {
                ssize_t n = read(p[0], msg + got, len - 1 - got);
                if (n > 0 && got + (size_t)n < len - 1) {
                        got += (size_t)n;
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n > 0)
                        got += (size_t)n;
                break;
        }
        msg[got] = '\0';
        close(p[0]);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        if (!WIFEXITED(st)) {
                snprintf(msg, len, "the scratch test process died (status %d)", st);
                return SCRATCH_NO_NETNS;
        }
        return (enum scratch_result)WEXITSTATUS(st);
}

/* The self-test's message is "<what>; <what to do>": split there. */
static void split_why(struct check_result *res, const char *why)
{
        const char *semi = strstr(why, "; ");
        if (!semi) {
                snprintf(res->detail, TEXT_MAX, "%s", why);
                return;
        }
        snprintf(res->detail, TEXT_MAX, "%.*s", (int)(semi - why), why);
        snprintf(res->advice, TEXT_MAX, "%s", semi + 2);
}

/* Whether capture's nat rules are in this network namespace: as read here,
 * or (reading needs NET_ADMIN) as reported by a shuntd reached on loopback,
 * which shares this network namespace. */
static bool capture_here(const struct check_ctx *c)
{
        if (ipt_inbound_installed(AF_INET))
                return true;
        const char *a = c->o->admin;
        if (!c->admin_up || !(strncmp(a, "127.", 4) == 0 || strncmp(a, "[::1]", 5) == 0 ||
                              strncmp(a, "localhost:", 10) == 0))
                return false;
        const cJSON *rules = cJSON_GetObjectItemCaseSensitive(c->status, "rules");
        const char *by = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rules, "by"));
        return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rules, "installed")) ||
               (by && strcmp(by, "init") == 0);
}

static void check_conntrack(struct check_ctx *c)
{
        char why[512];
        struct check_result *res;
        if (redirect_is(c, "off")) {
                res = check_add(c, CHECK_PASS, "conntrack");
                snprintf(res->detail, TEXT_MAX, "not used: shuntd runs with --redirect off");
                return;
        }
        if (capture_here(c)) {
                /* Capture is installed in this network namespace: the
                 * self-test shuntd ran at start, again now. */
                if (origdst_selftest(why, sizeof(why)) == 0) {
                        res = check_add(c, CHECK_PASS, "conntrack");
                        snprintf(res->detail, TEXT_MAX,
                                 "SO_ORIGINAL_DST answers in this network namespace");
                        return;
                }
                res = check_add(c, CHECK_FAIL, "conntrack");
                split_why(res, why);
                int notrack = ipt_notrack_rules(AF_INET);
                if (notrack > 0) {
                        char rest[TEXT_MAX];
                        snprintf(rest, sizeof(rest), "%s", res->advice);
                        snprintf(res->advice, TEXT_MAX,
                                 "the raw table here has %d NOTRACK rule%s (iptables -t raw -S): "
                                 "connections they match are not tracked, so REDIRECT and "
                                 "SO_ORIGINAL_DST cannot work for them; remove them for captured "
                                 "traffic%s%.300s",
                                 notrack, notrack == 1 ? "" : "s", rest[0] ? "; else " : "", rest);
                }
                return;
        }
        enum scratch_result sr = selftest_scratch(why, sizeof(why));
        switch (sr) {
        case SCRATCH_OK:
                res = check_add(c, CHECK_PASS, "conntrack");
                snprintf(
                    res->detail, TEXT_MAX,
                    "SO_ORIGINAL_DST answers behind the nat table (tested in a scratch network "
                    "namespace: capture is not installed here)");
                return;
        case SCRATCH_NO_NETNS:
                res = check_add(c, c->o->pre ? CHECK_FAIL : CHECK_WARN, "conntrack");
                snprintf(res->detail, TEXT_MAX, "not tested: %s", why);
                snprintf(res->advice, TEXT_MAX,
                         "capture is not installed in this network namespace, and testing it in "
                         "a scratch one needs CAP_SYS_ADMIN and CAP_NET_ADMIN: run the check as "
                         "root");
                return;
        case SCRATCH_IPTABLES:
                res = check_add(c, CHECK_FAIL, "conntrack");
                snprintf(res->detail, TEXT_MAX, "not tested: capture's nat rules: %s", why);
                snprintf(res->advice, TEXT_MAX, "fix what the iptables check reports");
                return;
        default:
                res = check_add(c, CHECK_FAIL, "conntrack");
                split_why(res, why);
                return;
        }
}

static void check_capabilities(struct check_ctx *c)
{
        char held[512];
        check_caps_names(c->caps, held, sizeof(held));
        uint64_t ipt = CHECK_CAP(CAP_NET_ADMIN_BIT) | CHECK_CAP(CAP_NET_RAW_BIT);
        enum check_status bad = c->o->pre ? CHECK_FAIL : CHECK_WARN;
        struct check_result *res;
        const char *full_advice = "host checks above ran without them and may say less than the "
                                  "truth: run 'shuntctl check --pre' as root on the node";
        if (c->userns) {
                res = check_add(c, bad, "capabilities");
                snprintf(res->detail, TEXT_MAX,
                         "this process (uid %u) holds %s inside a user namespace that is not the "
                         "host's",
                         (unsigned)getuid(), held);
                snprintf(res->advice, TEXT_MAX,
                         "capabilities in a user namespace do not reach bpf() nor networks it "
                         "does not own: install capture from the host's user namespace");
        } else if ((c->caps & ipt) != ipt) {
                char missing[128];
                check_caps_names(ipt & ~c->caps, missing, sizeof(missing));
                res = check_add(c, bad, "capabilities");
                snprintf(res->detail, TEXT_MAX, "this process (uid %u) holds %s: not %s",
                         (unsigned)getuid(), held, missing);
                snprintf(res->advice, TEXT_MAX, "%s",
                         c->o->pre ? "installing capture needs CAP_NET_ADMIN and CAP_NET_RAW "
                                     "(iptables), and CAP_BPF for eBPF capture: run as root, or "
                                     "grant exactly these to the init container"
                                   : full_advice);
        } else if (!may_load_bpf(c)) {
                res = check_add(c, CHECK_WARN, "capabilities");
                snprintf(res->detail, TEXT_MAX,
                         "this process (uid %u) holds %s: neither BPF nor SYS_ADMIN",
                         (unsigned)getuid(), held);
                snprintf(res->advice, TEXT_MAX, "%s",
                         c->o->pre ? "iptables capture can be installed with these, eBPF capture "
                                     "needs CAP_BPF too"
                                   : full_advice);
        } else {
                res = check_add(c, CHECK_PASS, "capabilities");
                snprintf(res->detail, TEXT_MAX, "this process (uid %u) holds %s",
                         (unsigned)getuid(), held);
        }
}

void check_host(struct check_ctx *c)
{
        check_kernel_bpf(c);
        check_kernel_btf(c);
        check_cgroup_v2(c);
        check_iptables(c);
        check_conntrack(c);
        check_capabilities(c);
}
