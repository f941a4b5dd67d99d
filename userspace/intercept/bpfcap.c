// SPDX-License-Identifier: Apache-2.0
/* eBPF capture loader: see bpfcap.h and bpf/capture.bpf.c. */
#include "intercept/bpfcap.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "capture.skel.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/prom.h"

#define PIN_PATH_MAX 512

/* The cgroup links, each pinned as <root>/link_<name>. */
struct link_desc {
        const char *name;
        enum bpf_attach_type type;
};
static const struct link_desc link_descs[] = {
    {"connect4", BPF_CGROUP_INET4_CONNECT},
    {"connect6", BPF_CGROUP_INET6_CONNECT},
    {"sockops", BPF_CGROUP_SOCK_OPS},
    {"getsockopt", BPF_CGROUP_GETSOCKOPT},
};
#define N_LINKS (sizeof(link_descs) / sizeof(link_descs[0]))

/* The maps, each pinned as <root>/<name>. */
static const char *const pinned_maps[] = {
    "shunt_orig_by_cookie", "shunt_orig_by_tuple", "shunt_sockhash",
    "shunt_shortcut_off",   "shunt_config",        "shunt_exclude_ports",
    "shunt_exclude_cidrs",  "shunt_counters",      "shunt_flow",
};
#define N_PINNED_MAPS (sizeof(pinned_maps) / sizeof(pinned_maps[0]))

struct bpfcap {
        struct shunt_capture *skel;
        char pin_root[PIN_PATH_MAX];
        int cgroup_fd;
        int link_fds[N_LINKS];
        bool msg_attached;
        bool borrowed; /* bpfcap_open_pinned: maps read-only, nothing ever detached */
        bool adopt;    /* bpfcap_options.adopt */
};

/* ---- libbpf messages into our log ------------------------------------------ */

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
        if (level == LIBBPF_DEBUG && !log_enabled(LOG_DEBUG))
                return 0;
        char line[1024];
        vsnprintf(line, sizeof(line), fmt, ap);
        size_t n = strlen(line);
        while (n && line[n - 1] == '\n')
                line[--n] = '\0';
        if (n == 0)
                return 0;
        if (level == LIBBPF_WARN)
                log_warn("bpf", 0, "libbpf: %s", line);
        else
                log_debug("bpf", 0, "libbpf: %s", line);
        return 0;
}

static void libbpf_setup(void)
{
        static bool done;
        if (!done) {
                libbpf_set_print(libbpf_log);
                done = true;
        }
}

/* ---- options ------------------------------------------------------------------ */

void bpfcap_options_from_config(struct bpfcap_options *o, const struct shunt_config *cfg,
                                uint32_t uid)
{
        memset(o, 0, sizeof(*o));
        o->pin_root = cfg->bpf_pin_root[0] ? cfg->bpf_pin_root : SHUNT_PIN_ROOT;
        o->cgroup_path = cfg->redirect_cgroup;
        o->outbound_port = cfg->outbound_port;
        o->mark = cfg->proxy_mark;
        o->uid = cfg->proxy_uid >= 0 ? (uint32_t)cfg->proxy_uid : uid;
        o->shortcut = cfg->bpf_shortcut == 1;
        o->fail_open = cfg->failure_mode == FAILURE_OPEN;
        o->exclude_ports = cfg->exclude_outbound_ports;
        o->n_exclude_ports = cfg->n_exclude_outbound_ports;
        o->exclude_cidrs = cfg->exclude_outbound_cidrs;
        o->n_exclude_cidrs = cfg->n_exclude_outbound_cidrs;
}

/* ---- probe ------------------------------------------------------------------------ */

static int check_cgroup(const char *path, char *why, size_t whylen)
{
        struct statfs sf;
        if (!path || !*path) {
                snprintf(why, whylen, "redirect_cgroup is not set (the workload's cgroup v2 path)");
                return -EINVAL;
        }
        if (statfs(path, &sf) < 0) {
                int e = errno;
                snprintf(why, whylen, "redirect_cgroup %s: %s", path, strerror(e));
                return -e;
        }
        if (sf.f_type != CGROUP2_SUPER_MAGIC) {
                snprintf(why, whylen, "redirect_cgroup %s: not a cgroup v2 directory", path);
                return -ENOTDIR;
        }
        return 0;
}

int bpfcap_probe_kernel(char *why, size_t whylen)
{
        libbpf_setup();
        const char *refuse = getenv("SHUNT_BPF_REFUSE");
        if (refuse && *refuse && strcmp(refuse, "0") != 0) {
                snprintf(why, whylen,
                         "BPF program load refused: Operation not permitted (simulated: "
                         "SHUNT_BPF_REFUSE is set)");
                return -EPERM;
        }
        /* libbpf's probes report a refused load as "not supported": one load
         * of our own first tells a refusal (EPERM: no CAP_BPF/CAP_NET_ADMIN,
         * a user namespace, seccomp, lockdown) from a kernel that lacks it. */
        const struct bpf_insn ret1[] = {
            {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1},
            {.code = BPF_JMP | BPF_EXIT},
        };
        LIBBPF_OPTS(bpf_prog_load_opts, lo, .expected_attach_type = BPF_CGROUP_INET4_CONNECT);
        int pfd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, NULL, "GPL", ret1, 2, &lo);
        if (pfd >= 0) {
                close(pfd);
        } else if (errno == EPERM || errno == EACCES) {
                int e = errno;
                snprintf(why, whylen, "BPF program load refused: %s", strerror(e));
                return -e;
        }
        static const struct {
                enum bpf_prog_type type;
                const char *name;
        } progs[] = {
            {BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "cgroup/connect"},
            {BPF_PROG_TYPE_SOCK_OPS, "sockops"},
            {BPF_PROG_TYPE_SK_MSG, "sk_msg"},
            {BPF_PROG_TYPE_CGROUP_SOCKOPT, "cgroup/getsockopt"},
        };
        for (size_t i = 0; i < sizeof(progs) / sizeof(progs[0]); i++) {
                int rc = libbpf_probe_bpf_prog_type(progs[i].type, NULL);
                if (rc <= 0) {
                        snprintf(why, whylen, "BPF program type %s: %s", progs[i].name,
                                 rc == 0 ? "not supported by this kernel" : strerror(-rc));
                        return rc == 0 ? -EOPNOTSUPP : rc;
                }
        }
        static const struct {
                enum bpf_map_type type;
                const char *name;
        } maps[] = {
            {BPF_MAP_TYPE_SOCKHASH, "sockhash"},
            {BPF_MAP_TYPE_LPM_TRIE, "lpm_trie"},
            {BPF_MAP_TYPE_PERCPU_ARRAY, "percpu_array"},
        };
        for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); i++) {
                int rc = libbpf_probe_bpf_map_type(maps[i].type, NULL);
                if (rc <= 0) {
                        snprintf(why, whylen, "BPF map type %s: %s", maps[i].name,
                                 rc == 0 ? "not supported by this kernel" : strerror(-rc));
                        return rc == 0 ? -EOPNOTSUPP : rc;
                }
        }
        static const struct {
                enum bpf_prog_type prog;
                enum bpf_func_id helper;
                const char *name;
        } helpers[] = {
            {BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_socket_cookie, "get_socket_cookie"},
            {BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_current_uid_gid, "get_current_uid_gid"},
            {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_socket_cookie, "get_socket_cookie (sockops)"},
            {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_hash_update, "sock_hash_update"},
            {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_ops_cb_flags_set, "sock_ops_cb_flags_set"},
            {BPF_PROG_TYPE_SK_MSG, BPF_FUNC_msg_redirect_hash, "msg_redirect_hash"},
            {BPF_PROG_TYPE_SK_MSG, BPF_FUNC_skc_to_tcp_sock, "skc_to_tcp_sock (sk_msg)"},
            {BPF_PROG_TYPE_SK_MSG, BPF_FUNC_probe_read_kernel, "probe_read_kernel (sk_msg)"},
        };
        for (size_t i = 0; i < sizeof(helpers) / sizeof(helpers[0]); i++) {
                int rc = libbpf_probe_bpf_helper(helpers[i].prog, helpers[i].helper, NULL);
                if (rc <= 0) {
                        snprintf(why, whylen, "BPF helper %s: %s", helpers[i].name,
                                 rc == 0 ? "not available" : strerror(-rc));
                        return rc == 0 ? -EOPNOTSUPP : rc;
                }
        }
        return 0;
}

int bpfcap_check_cgroup(const char *cgroup_path, char *why, size_t whylen)
{
        return check_cgroup(cgroup_path, why, whylen);
}

int bpfcap_probe(const char *cgroup_path, char *why, size_t whylen)
{
        if (bpfcap_probe_kernel(why, whylen) < 0 || check_cgroup(cgroup_path, why, whylen) < 0)
                return -1;
        return 0;
}

/* ---- pins ---------------------------------------------------------------------------- */

static int pin_path(char *buf, size_t len, const char *root, const char *prefix, const char *name)
{
        int n = snprintf(buf, len, "%s/%s%s", root, prefix, name);
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* The pin root must be on a bpffs; when its parent is /sys/fs/bpf and no bpffs
 * is mounted there, mount one (as systemd does on most distributions). */
static int ensure_pin_root(const char *root, char *err, size_t errlen)
{
        char parent[PIN_PATH_MAX];
        if (!root || root[0] != '/' || strlen(root) >= sizeof(parent)) {
                snprintf(err, errlen, "bpf_pin_root %s: must be an absolute path under a bpffs",
                         root ? root : "(null)");
                return -EINVAL;
        }
        snprintf(parent, sizeof(parent), "%s", root);
        char *slash = strrchr(parent, '/');
        if (slash == parent)
                slash[1] = '\0';
        else
                *slash = '\0';
        struct statfs sf;
        if (statfs(parent, &sf) < 0) {
                int e = errno;
                snprintf(err, errlen, "bpf_pin_root %s: %s: %s", root, parent, strerror(e));
                return -e;
        }
        if (sf.f_type != BPF_FS_MAGIC) {
                if (strcmp(parent, "/sys/fs/bpf") != 0) {
                        snprintf(err, errlen, "bpf_pin_root %s: %s is not a bpffs", root, parent);
                        return -EINVAL;
                }
                if (mount("bpf", parent, "bpf", 0, "mode=0700") < 0) {
                        int e = errno;
                        snprintf(err, errlen, "bpf_pin_root %s: mounting bpffs on %s: %s", root,
                                 parent, strerror(e));
                        return -e;
                }
                log_info("bpf", 0, "mounted bpffs on %s", parent);
        }
        if (mkdir(root, 0700) < 0 && errno != EEXIST) {
                int e = errno;
                snprintf(err, errlen, "bpf_pin_root %s: %s", root, strerror(e));
                return -e;
        }
        return 0;
}

int bpfcap_pin_dir(const char *dir, char *err, size_t errlen)
{
        return ensure_pin_root(dir, err, errlen);
}

int bpfcap_remove_pins(const char *pin_root)
{
        char path[PIN_PATH_MAX];
        for (size_t i = 0; i < N_LINKS; i++) {
                if (pin_path(path, sizeof(path), pin_root, "link_", link_descs[i].name) < 0)
                        return -ENAMETOOLONG;
                int fd = bpf_obj_get(path);
                if (fd >= 0) {
                        bpf_link_detach(fd);
                        close(fd);
                }
                if (unlink(path) < 0 && errno != ENOENT)
                        log_warn("bpf", 0, "removing %s: %s", path, strerror(errno));
        }
        /* The sk_msg program is attached to the sockhash: it goes with the map. */
        for (size_t i = 0; i < N_PINNED_MAPS; i++) {
                if (pin_path(path, sizeof(path), pin_root, "", pinned_maps[i]) < 0)
                        return -ENAMETOOLONG;
                if (unlink(path) < 0 && errno != ENOENT)
                        log_warn("bpf", 0, "removing %s: %s", path, strerror(errno));
        }
        if (rmdir(pin_root) < 0 && errno != ENOENT) {
                int e = errno;
                log_warn("bpf", 0, "removing %s: %s (something else is pinned there)", pin_root,
                         strerror(e));
                return -e;
        }
        return 0;
}

/* The kernel's info on the object pinned as <root>/<prefix><name> (path
 * filled for messages). 0, or -1 with what naming the pin. */
static int pinned_info(const char *root, const char *prefix, const char *name, void *info,
                       uint32_t infolen, char *path, size_t pathlen, char *what, size_t len)
{
        if (pin_path(path, pathlen, root, prefix, name) < 0) {
                snprintf(what, len, "%s: path too long", root);
                return -1;
        }
        int fd = bpf_obj_get(path);
        if (fd < 0) {
                snprintf(what, len, "%s %s: %s", prefix[0] ? "link" : "map", path, strerror(errno));
                return -1;
        }
        memset(info, 0, infolen);
        int rc = bpf_obj_get_info_by_fd(fd, info, &infolen);
        int e = errno;
        close(fd);
        if (rc < 0) {
                snprintf(what, len, "%s: %s", path, strerror(e));
                return -1;
        }
        return 0;
}

int bpfcap_pins_check(const char *pin_root, const char *cgroup_path, char *what, size_t len)
{
        char path[PIN_PATH_MAX];
        struct statfs sf;
        if (statfs(pin_root, &sf) < 0) {
                snprintf(what, len, "%s: %s", pin_root, strerror(errno));
                return -1;
        }
        if (sf.f_type != BPF_FS_MAGIC) {
                snprintf(what, len, "%s is not on a bpffs", pin_root);
                return -1;
        }
        uint64_t want_cgroup = 0;
        if (cgroup_path && *cgroup_path) {
                struct stat st;
                if (stat(cgroup_path, &st) < 0) {
                        snprintf(what, len, "redirect_cgroup %s: %s", cgroup_path, strerror(errno));
                        return -1;
                }
                want_cgroup = (uint64_t)st.st_ino;
        }
        uint64_t cgroup = 0;
        for (size_t i = 0; i < N_LINKS; i++) {
                struct bpf_link_info info;
                if (pinned_info(pin_root, "link_", link_descs[i].name, &info, sizeof(info), path,
                                sizeof(path), what, len) < 0)
                        return -1;
                if (info.type != BPF_LINK_TYPE_CGROUP ||
                    info.cgroup.attach_type != link_descs[i].type) {
                        snprintf(what, len, "%s is not a cgroup %s link", path, link_descs[i].name);
                        return -1;
                }
                if (info.prog_id == 0 || info.cgroup.cgroup_id == 0) {
                        snprintf(what, len, "link %s is detached (its cgroup is gone?)", path);
                        return -1;
                }
                if (want_cgroup && info.cgroup.cgroup_id != want_cgroup) {
                        snprintf(what, len,
                                 "link %s is attached to cgroup id %llu, not to redirect_cgroup "
                                 "%s (id %llu)",
                                 path, (unsigned long long)info.cgroup.cgroup_id, cgroup_path,
                                 (unsigned long long)want_cgroup);
                        return -1;
                }
                cgroup = info.cgroup.cgroup_id;
        }
        for (size_t i = 0; i < N_PINNED_MAPS; i++) {
                struct bpf_map_info info;
                if (pinned_info(pin_root, "", pinned_maps[i], &info, sizeof(info), path,
                                sizeof(path), what, len) < 0)
                        return -1;
                /* The kernel keeps the first BPF_OBJ_NAME_LEN - 1 bytes of a name. */
                if (!info.name[0] || strncmp(info.name, pinned_maps[i], strlen(info.name)) != 0) {
                        snprintf(what, len, "%s is not the map %s", path, pinned_maps[i]);
                        return -1;
                }
        }
        snprintf(what, len, "%zu links attached to cgroup id %llu, %zu maps pinned under %s",
                 N_LINKS, (unsigned long long)cgroup, N_PINNED_MAPS, pin_root);
        return 0;
}

static int set_pin_paths(struct shunt_capture *skel, const char *root)
{
        struct bpf_map *m;
        char path[PIN_PATH_MAX];
        bpf_object__for_each_map(m, skel->obj)
        {
                if (pin_path(path, sizeof(path), root, "", bpf_map__name(m)) < 0)
                        return -ENAMETOOLONG;
                int rc = bpf_map__set_pin_path(m, path);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

/* map_max (bpfcap_options), or SHUNT_BPF_TEST_MAP_MAX=N (tests only, wins):
 * orig_by_cookie, orig_by_tuple, the
 * sockhash, shortcut_off and flow hold at most N entries, so a test can fill
 * them. */
static int apply_test_map_max(struct shunt_capture *skel, uint32_t map_max)
{
        const char *v = getenv("SHUNT_BPF_TEST_MAP_MAX");
        unsigned long n = map_max;
        if (v && *v) {
                char *end;
                n = strtoul(v, &end, 10);
                if (*end || n < 1 || n > SHUNT_MAX_SOCKETS) {
                        log_error("bpf", 0, "SHUNT_BPF_TEST_MAP_MAX %s: want 1..%d", v,
                                  SHUNT_MAX_SOCKETS);
                        return -EINVAL;
                }
                log_warn("bpf", 0,
                         "SHUNT_BPF_TEST_MAP_MAX: capture maps limited to %lu entries (testing)",
                         n);
        }
        if (n == 0 || n > SHUNT_MAX_SOCKETS)
                return 0;
        struct bpf_map *maps[] = {skel->maps.shunt_orig_by_cookie, skel->maps.shunt_orig_by_tuple,
                                  skel->maps.shunt_sockhash, skel->maps.shunt_shortcut_off,
                                  skel->maps.shunt_flow};
        for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); i++) {
                int rc = bpf_map__set_max_entries(maps[i], (uint32_t)n);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

/* Opens and loads the skeleton with its maps pinned under root; pinned maps
 * of a previous run are reused so live connections keep their entries. */
static struct shunt_capture *load(const char *root, bool adopt, uint32_t map_max, bool *reused,
                                  char *err, size_t errlen)
{
        for (int attempt = 0; attempt < 2; attempt++) {
                struct shunt_capture *skel = shunt_capture__open();
                if (!skel) {
                        snprintf(err, errlen, "opening the BPF object: %s", strerror(errno));
                        return NULL;
                }
                int rc = set_pin_paths(skel, root);
                if (rc == 0)
                        rc = apply_test_map_max(skel, map_max);
                if (rc == 0)
                        rc = shunt_capture__load(skel);
                if (rc == 0) {
                        *reused = attempt == 0;
                        return skel;
                }
                shunt_capture__destroy(skel);
                if (attempt == 0 && !adopt && rc != -EPERM && rc != -EACCES) {
                        /* Maybe pins of an incompatible build: start clean. */
                        log_warn("bpf", 0,
                                 "loading with the pins in %s failed (%s): removing them and "
                                 "retrying",
                                 root, strerror(-rc));
                        bpfcap_remove_pins(root);
                        if (mkdir(root, 0700) < 0 && errno != EEXIST) {
                                snprintf(err, errlen, "bpf_pin_root %s: %s", root, strerror(errno));
                                return NULL;
                        }
                        continue;
                }
                snprintf(err, errlen, "loading the BPF programs: %s", strerror(-rc));
                return NULL;
        }
        return NULL;
}

static uint64_t cgroup_id(int cgroup_fd)
{
        struct stat st;
        return fstat(cgroup_fd, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* Attaches prog to the cgroup through the pinned link path: a pinned link
 * on the same cgroup and hook gets the new program in place (no moment
 * without capture); anything else there is detached and replaced. */
static int attach_link(struct bpfcap *b, size_t i, int prog_fd, char *err, size_t errlen)
{
        char path[PIN_PATH_MAX];
        if (pin_path(path, sizeof(path), b->pin_root, "link_", link_descs[i].name) < 0) {
                snprintf(err, errlen, "bpf_pin_root %s: path too long", b->pin_root);
                return -ENAMETOOLONG;
        }
        int fd = bpf_obj_get(path);
        if (fd >= 0) {
                struct bpf_link_info info;
                uint32_t len = sizeof(info);
                memset(&info, 0, sizeof(info));
                if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 &&
                    info.type == BPF_LINK_TYPE_CGROUP &&
                    info.cgroup.cgroup_id == cgroup_id(b->cgroup_fd) &&
                    info.cgroup.attach_type == link_descs[i].type &&
                    bpf_link_update(fd, prog_fd, NULL) == 0) {
                        b->link_fds[i] = fd;
                        log_info("bpf", 0, "%s: pinned link reused, program replaced in place",
                                 link_descs[i].name);
                        return 0;
                }
                if (b->adopt) {
                        snprintf(err, errlen,
                                 "%s: the pinned link %s is not one of redirect_cgroup's or "
                                 "cannot take the new program: not adopted",
                                 link_descs[i].name, path);
                        close(fd);
                        return -ESTALE;
                }
                log_warn("bpf", 0, "%s: stale pinned link %s replaced", link_descs[i].name, path);
                bpf_link_detach(fd);
                close(fd);
                unlink(path);
        }
        if (b->adopt) {
                snprintf(err, errlen, "%s: nothing pinned at %s: not adopted", link_descs[i].name,
                         path);
                return -ENOENT;
        }
        fd = bpf_link_create(prog_fd, b->cgroup_fd, link_descs[i].type, NULL);
        if (fd < 0) {
                int e = errno;
                snprintf(err, errlen, "attaching %s to cgroup %s: %s", link_descs[i].name,
                         b->pin_root, strerror(e));
                return -e;
        }
        if (bpf_obj_pin(fd, path) < 0) {
                int e = errno;
                snprintf(err, errlen, "pinning %s: %s", path, strerror(e));
                bpf_link_detach(fd);
                close(fd);
                return -e;
        }
        b->link_fds[i] = fd;
        return 0;
}

static int prog_fd_for(struct bpfcap *b, size_t i)
{
        struct shunt_capture *s = b->skel;
        struct bpf_program *p[N_LINKS] = {s->progs.shunt_connect4, s->progs.shunt_connect6,
                                          s->progs.shunt_sockops, s->progs.shunt_getsockopt};
        return bpf_program__fd(p[i]);
}

/* ---- configuration maps ---------------------------------------------------------------- */

static void clear_map(int fd, size_t key_size)
{
        unsigned char key[64], next[64];
        if (key_size > sizeof(key))
                return;
        /* Bounded: at most the map's own capacity of deletions. */
        for (int i = 0; i < SHUNT_MAX_EXCLUDES * 2; i++) {
                if (bpf_map_get_next_key(fd, NULL, next) < 0)
                        break;
                memcpy(key, next, key_size);
                bpf_map_delete_elem(fd, key);
        }
}

int bpfcap_configure(struct bpfcap *b, const struct bpfcap_options *o, char *err, size_t errlen)
{
        struct shunt_capture *s = b->skel;
        int ports_fd = bpf_map__fd(s->maps.shunt_exclude_ports);
        int cidrs_fd = bpf_map__fd(s->maps.shunt_exclude_cidrs);
        if (o->n_exclude_ports > SHUNT_MAX_EXCLUDES || o->n_exclude_cidrs > SHUNT_MAX_EXCLUDES) {
                snprintf(err, errlen, "more than %d excluded ports or CIDRs", SHUNT_MAX_EXCLUDES);
                return -E2BIG;
        }
        clear_map(ports_fd, sizeof(uint16_t));
        clear_map(cidrs_fd, sizeof(struct shunt_cidr_key));
        uint8_t one = 1;
        for (size_t i = 0; i < o->n_exclude_ports; i++) {
                uint16_t port = o->exclude_ports[i];
                if (bpf_map_update_elem(ports_fd, &port, &one, BPF_ANY) < 0) {
                        int e = errno;
                        snprintf(err, errlen, "excluded port %u: %s", port, strerror(e));
                        return -e;
                }
        }
        for (size_t i = 0; i < o->n_exclude_cidrs; i++) {
                const struct cidr *c = &o->exclude_cidrs[i];
                struct shunt_cidr_key k;
                memset(&k, 0, sizeof(k));
                k.family = c->family == AF_INET ? SHUNT_AF_INET : SHUNT_AF_INET6;
                k.prefixlen = 8u + c->prefix_len;
                memcpy(k.addr, &c->addr, c->family == AF_INET ? 4 : 16);
                if (bpf_map_update_elem(cidrs_fd, &k, &one, BPF_ANY) < 0) {
                        int e = errno;
                        snprintf(err, errlen, "excluded CIDR #%zu: %s", i, strerror(e));
                        return -e;
                }
        }
        struct shunt_capture_config cfg = {
            .enabled = 1,
            .mark = o->mark,
            .uid = o->uid,
            .outbound_port_host = o->outbound_port,
            .shortcut = o->shortcut ? 1 : 0,
            .flow_high = SHUNT_FLOW_HIGH,
            .flow_low = SHUNT_FLOW_LOW,
            .fail_open = o->fail_open ? 1 : 0,
        };
        uint32_t zero = 0;
        if (bpf_map_update_elem(bpf_map__fd(s->maps.shunt_config), &zero, &cfg, BPF_ANY) < 0) {
                int e = errno;
                snprintf(err, errlen, "writing the capture configuration: %s", strerror(e));
                return -e;
        }
        return 0;
}

/* ---- open / close -------------------------------------------------------------------------- */

struct bpfcap *bpfcap_open(const struct bpfcap_options *o, char *err, size_t errlen)
{
        libbpf_setup();
        if (check_cgroup(o->cgroup_path, err, errlen) < 0)
                return NULL;
        if (o->outbound_port == 0) {
                snprintf(err, errlen, "outbound_port 0: captured connections need a listener");
                return NULL;
        }
        struct bpfcap *b = calloc(1, sizeof(*b));
        if (!b) {
                snprintf(err, errlen, "out of memory");
                return NULL;
        }
        b->cgroup_fd = -1;
        for (size_t i = 0; i < N_LINKS; i++)
                b->link_fds[i] = -1;
        if (strlen(o->pin_root) >= sizeof(b->pin_root)) {
                snprintf(err, errlen, "bpf_pin_root %s: too long", o->pin_root);
                goto fail;
        }
        snprintf(b->pin_root, sizeof(b->pin_root), "%s", o->pin_root);
        if (ensure_pin_root(b->pin_root, err, errlen) < 0)
                goto fail;
        b->cgroup_fd = open(o->cgroup_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (b->cgroup_fd < 0) {
                snprintf(err, errlen, "redirect_cgroup %s: %s", o->cgroup_path, strerror(errno));
                goto fail;
        }
        bool reused = false;
        b->adopt = o->adopt;
        b->skel = load(b->pin_root, o->adopt, o->map_max, &reused, err, errlen);
        if (!b->skel)
                goto fail;
        if (bpfcap_configure(b, o, err, errlen) < 0)
                goto fail;
        /* sk_msg before sockops: a socket paired by sockops must find the
         * verdict program already on the map. */
        if (bpf_prog_attach(bpf_program__fd(b->skel->progs.shunt_msg),
                            bpf_map__fd(b->skel->maps.shunt_sockhash), BPF_SK_MSG_VERDICT, 0) < 0) {
                snprintf(err, errlen, "attaching sk_msg to the sockhash: %s", strerror(errno));
                goto fail;
        }
        b->msg_attached = true;
        for (size_t i = 0; i < N_LINKS; i++)
                if (attach_link(b, i, prog_fd_for(b, i), err, errlen) < 0)
                        goto fail;
        log_info("bpf", 0, "eBPF capture attached to %s (pins in %s%s): outbound -> %u",
                 o->cgroup_path, b->pin_root,
                 o->adopt ? ", adopted"
                 : reused ? ", maps reused"
                          : "",
                 o->outbound_port);
        return b;
fail:
        bpfcap_close(b, !o->adopt);
        return NULL;
}

/* ---- capture installed by another process (shuntd init) ------------------------------------ */

/* The maps a capture=init shuntd reads; the links stay root's. */
#define SHARE_DIR_MODE 0750
#define SHARE_MAP_MODE 0640

int bpfcap_share(struct bpfcap *b, uint32_t gid, char *err, size_t errlen)
{
        char path[PIN_PATH_MAX];
        if (chown(b->pin_root, (uid_t)-1, (gid_t)gid) < 0 ||
            chmod(b->pin_root, SHARE_DIR_MODE) < 0) {
                int e = errno;
                snprintf(err, errlen, "%s: group %u, mode %o: %s", b->pin_root, gid, SHARE_DIR_MODE,
                         strerror(e));
                return -e;
        }
        struct bpf_map *m;
        bpf_object__for_each_map(m, b->skel->obj)
        {
                if (pin_path(path, sizeof(path), b->pin_root, "", bpf_map__name(m)) < 0)
                        return -ENAMETOOLONG;
                if (chown(path, (uid_t)-1, (gid_t)gid) < 0 || chmod(path, SHARE_MAP_MODE) < 0) {
                        int e = errno;
                        snprintf(err, errlen, "%s: group %u, mode %o: %s", path, gid,
                                 SHARE_MAP_MODE, strerror(e));
                        return -e;
                }
        }
        return 0;
}

int bpfcap_open_pinned(const char *pin_root, struct bpfcap **out, char *err, size_t errlen)
{
        libbpf_setup();
        *out = NULL;
        struct bpfcap *b = calloc(1, sizeof(*b));
        if (!b) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        b->borrowed = true;
        b->cgroup_fd = -1;
        for (size_t i = 0; i < N_LINKS; i++)
                b->link_fds[i] = -1;
        int rc = -ENAMETOOLONG;
        if (strlen(pin_root) >= sizeof(b->pin_root)) {
                snprintf(err, errlen, "bpf_pin_root %s: too long", pin_root);
                goto fail;
        }
        snprintf(b->pin_root, sizeof(b->pin_root), "%s", pin_root);
        /* Opened, never loaded: the object only names and types the maps. */
        b->skel = shunt_capture__open();
        if (!b->skel) {
                rc = -errno;
                snprintf(err, errlen, "opening the BPF object: %s", strerror(errno));
                goto fail;
        }
        char path[PIN_PATH_MAX];
        struct bpf_map *m;
        bpf_object__for_each_map(m, b->skel->obj)
        {
                if (pin_path(path, sizeof(path), pin_root, "", bpf_map__name(m)) < 0) {
                        snprintf(err, errlen, "bpf_pin_root %s: too long", pin_root);
                        goto fail;
                }
                LIBBPF_OPTS(bpf_obj_get_opts, ro, .file_flags = BPF_F_RDONLY);
                int fd = bpf_obj_get_opts(path, &ro);
                if (fd < 0) {
                        rc = -errno;
                        snprintf(err, errlen, "%s: %s", path, strerror(errno));
                        goto fail;
                }
                rc = bpf_map__reuse_fd(m, fd);
                close(fd);
                if (rc < 0) {
                        snprintf(err, errlen, "%s: not a map of this build (%s)", path,
                                 strerror(-rc));
                        goto fail;
                }
        }
        *out = b;
        return 0;
fail:
        bpfcap_close(b, false);
        return rc;
}

void bpfcap_close(struct bpfcap *b, bool detach)
{
        if (!b)
                return;
        if (b->borrowed)
                detach = false; /* shuntd init's pins: not ours to remove */
        if (detach) {
                /* Stop capturing first, so nothing new lands in the maps. */
                for (size_t i = 0; i < N_LINKS; i++) {
                        if (b->link_fds[i] >= 0)
                                bpf_link_detach(b->link_fds[i]);
                }
                if (b->msg_attached && b->skel)
                        bpf_prog_detach2(bpf_program__fd(b->skel->progs.shunt_msg),
                                         bpf_map__fd(b->skel->maps.shunt_sockhash),
                                         BPF_SK_MSG_VERDICT);
        }
        for (size_t i = 0; i < N_LINKS; i++)
                if (b->link_fds[i] >= 0)
                        close(b->link_fds[i]);
        if (b->skel)
                shunt_capture__destroy(b->skel);
        if (detach && b->pin_root[0])
                bpfcap_remove_pins(b->pin_root);
        if (b->cgroup_fd >= 0)
                close(b->cgroup_fd);
        free(b);
}

int bpfcap_excluded_uid(struct bpfcap *b, uint32_t *uid)
{
        struct shunt_capture_config cfg;
        uint32_t zero = 0;
        if (bpf_map_lookup_elem(bpf_map__fd(b->skel->maps.shunt_config), &zero, &cfg) < 0)
                return -errno;
        *uid = cfg.uid;
        return 0;
}

const char *bpfcap_pin_root(const struct bpfcap *b)
{
        return b->pin_root;
}

/* ---- lookups ------------------------------------------------------------------------------- */

static int addr_into(const struct sockaddr_storage *ss, uint8_t out[16], uint16_t *port)
{
        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *s = (const void *)ss;
                memset(out, 0, 16);
                memcpy(out, &s->sin_addr, 4);
                *port = s->sin_port;
                return SHUNT_AF_INET;
        }
        if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *s = (const void *)ss;
                memcpy(out, &s->sin6_addr, 16);
                *port = s->sin6_port;
                return SHUNT_AF_INET6;
        }
        return -EAFNOSUPPORT;
}

static int make_tuple(const struct sockaddr_storage *src, const struct sockaddr_storage *dst,
                      struct shunt_tuple *t)
{
        memset(t, 0, sizeof(*t));
        int f1 = addr_into(src, t->saddr, &t->sport);
        int f2 = addr_into(dst, t->daddr, &t->dport);
        if (f1 < 0 || f1 != f2)
                return -EAFNOSUPPORT;
        t->family = (uint16_t)f1;
        return 0;
}

int bpfcap_lookup(struct bpfcap *b, const struct sockaddr_storage *client,
                  const struct sockaddr_storage *local, struct sockaddr_storage *out, bool consume)
{
        struct shunt_tuple t;
        if (make_tuple(client, local, &t) < 0)
                return -EAFNOSUPPORT;
        struct shunt_origdst od;
        int fd = bpf_map__fd(b->skel->maps.shunt_orig_by_tuple);
        int rc = bpf_map_lookup_elem(fd, &t, &od);
        if (rc < 0)
                return -errno;
        /* A watched entry leaves with the connection (sockops); only an
         * unwatched one would leak if not deleted here. */
        if (consume && !(od.flags & SHUNT_OD_WATCHED))
                bpf_map_delete_elem(fd, &t);
        memset(out, 0, sizeof(*out));
        if (od.family == SHUNT_AF_INET) {
                struct sockaddr_in *s = (void *)out;
                s->sin_family = AF_INET;
                s->sin_port = od.port;
                memcpy(&s->sin_addr, od.addr, 4);
        } else if (od.family == SHUNT_AF_INET6) {
                struct sockaddr_in6 *s = (void *)out;
                s->sin6_family = AF_INET6;
                s->sin6_port = od.port;
                memcpy(&s->sin6_addr, od.addr, 16);
        } else {
                return -EINVAL;
        }
        return 0;
}

int bpfcap_shortcut_set(struct bpfcap *b, int fd, bool on)
{
        struct sockaddr_storage local, peer;
        socklen_t ll = sizeof(local), pl = sizeof(peer);
        if (getsockname(fd, (void *)&local, &ll) < 0 || getpeername(fd, (void *)&peer, &pl) < 0)
                return -errno;
        struct shunt_tuple mine, theirs;
        if (make_tuple(&local, &peer, &mine) < 0 || make_tuple(&peer, &local, &theirs) < 0)
                return -EAFNOSUPPORT;
        int mfd = bpf_map__fd(b->skel->maps.shunt_shortcut_off);
        uint8_t one = 1;
        for (int i = 0; i < 2; i++) {
                const struct shunt_tuple *t = i == 0 ? &mine : &theirs;
                int rc = on ? bpf_map_delete_elem(mfd, t) : bpf_map_update_elem(mfd, t, &one, 0);
                if (rc < 0 && !(on && errno == ENOENT))
                        return -errno;
        }
        return 0;
}

int bpfcap_counters(struct bpfcap *b, struct shunt_counters *out)
{
        int ncpu = libbpf_num_possible_cpus();
        if (ncpu <= 0)
                return ncpu < 0 ? ncpu : -EINVAL;
        struct shunt_counters *per = calloc((size_t)ncpu, sizeof(*per));
        if (!per)
                return -ENOMEM;
        uint32_t zero = 0;
        int rc = bpf_map_lookup_elem(bpf_map__fd(b->skel->maps.shunt_counters), &zero, per);
        if (rc < 0) {
                rc = -errno;
                free(per);
                return rc;
        }
        memset(out, 0, sizeof(*out));
        uint64_t *sum = (uint64_t *)out;
        for (int c = 0; c < ncpu; c++) {
                const uint64_t *v = (const uint64_t *)&per[c];
                for (size_t f = 0; f < sizeof(*out) / sizeof(uint64_t); f++)
                        sum[f] += v[f];
        }
        free(per);
        return 0;
}

size_t bpfcap_memory_bytes(struct bpfcap *b)
{
        size_t total = 0;
        struct bpf_map *m;
        bpf_object__for_each_map(m, b->skel->obj)
        {
                char path[64], line[128];
                snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", bpf_map__fd(m));
                FILE *f = fopen(path, "re");
                if (!f)
                        continue;
                unsigned long long v;
                while (fgets(line, sizeof(line), f))
                        if (sscanf(line, "memlock: %llu", &v) == 1)
                                total += (size_t)v;
                fclose(f);
        }
        return total;
}

int bpfcap_map_fd(struct bpfcap *b, enum bpfcap_map m)
{
        struct shunt_capture *s = b->skel;
        switch (m) {
        case BPFCAP_ORIG_BY_COOKIE:
                return bpf_map__fd(s->maps.shunt_orig_by_cookie);
        case BPFCAP_ORIG_BY_TUPLE:
                return bpf_map__fd(s->maps.shunt_orig_by_tuple);
        case BPFCAP_SOCKHASH:
                return bpf_map__fd(s->maps.shunt_sockhash);
        case BPFCAP_SHORTCUT_OFF:
                return bpf_map__fd(s->maps.shunt_shortcut_off);
        case BPFCAP_FLOW:
                return bpf_map__fd(s->maps.shunt_flow);
        }
        return -EINVAL;
}

long bpfcap_map_entries(struct bpfcap *b, enum bpfcap_map m)
{
        int fd = bpfcap_map_fd(b, m);
        if (fd < 0)
                return fd;
        struct shunt_tuple key, next; /* the largest key of these maps */
        long n = 0;
        void *prev = NULL;
        while (n <= (long)SHUNT_MAX_ORIGDST && bpf_map_get_next_key(fd, prev, &next) == 0) {
                key = next;
                prev = &key;
                n++;
        }
        return n;
}

static const struct counter_row {
        const char *field, *name, *help;
        size_t off;
} counter_rows[] = {
#define ROW(f, h)                                                                                  \
        {                                                                                          \
#f, "shunt_bpf_" #f "_total", h, offsetof(struct shunt_counters, f)                \
        }
    ROW(redirected, "Application connects redirected to the outbound listener."),
    ROW(skipped_own, "Connects of shuntd's own sockets (mark or uid) left alone."),
    ROW(skipped_excluded, "Connects to loopback or excluded ports and CIDRs left alone."),
    ROW(established, "Captured connections whose original destination moved to the "
                     "4-tuple map."),
    ROW(sockhash_added, "Sockets paired in the sockhash for the shortcut."),
    ROW(shortcut_msgs, "Sends redirected to the peer socket (not in ss or tcpdump)."),
    ROW(shortcut_bytes, "Bytes redirected to the peer socket (not in ss or tcpdump)."),
    ROW(shortcut_off, "Sends that took the TCP stack because the shortcut was off."),
    ROW(getsockopt_answered, "SO_ORIGINAL_DST answered from the map."),
    ROW(lookup_missed, "SO_ORIGINAL_DST asked for a connection that was not captured."),
    ROW(map_full, "Inserts refused by a full map (connection took the normal path)."),
    ROW(flow_paused, "Shortcut paused: the reader had the flow-control threshold unread, its "
                     "sender's bytes went to TCP."),
    ROW(flow_resumed, "Shortcut resumed: the reader caught up, TCP bytes all read."),
    ROW(flow_tcp_msgs, "Sends that took TCP for flow control (paused or draining)."),
    ROW(flow_tcp_bytes, "Bytes that took TCP for flow control."),
    ROW(flow_unknown, "Sends that took TCP because the reader's queue could not be read."),
    ROW(skipped_no_listener, "failure_mode open: connects left alone because shuntd's outbound "
                             "listener was gone."),
#undef ROW
};
#define N_COUNTER_ROWS (sizeof(counter_rows) / sizeof(counter_rows[0]))

static uint64_t counter_value(const struct shunt_counters *c, size_t i)
{
        uint64_t v;
        memcpy(&v, (const char *)c + counter_rows[i].off, sizeof(v));
        return v;
}

void bpfcap_render_metrics(struct bpfcap *b, struct strbuf *out)
{
        struct shunt_counters c;
        if (bpfcap_counters(b, &c) < 0)
                return;
        for (size_t i = 0; i < N_COUNTER_ROWS; i++) {
                prom_family(out, counter_rows[i].name, "counter", counter_rows[i].help);
                prom_sample_u64(out, counter_rows[i].name, NULL, counter_value(&c, i));
        }
}

/* ---- maps as JSON ------------------------------------------------------------------------- */

/* "1.2.3.4:80" or "[::1]:80" (family SHUNT_AF_*; port in network order). */
static void append_endpoint(struct strbuf *out, uint16_t family, const uint8_t addr[16],
                            uint16_t port_be)
{
        char a[INET6_ADDRSTRLEN] = "?";
        int af = family == SHUNT_AF_INET ? AF_INET : AF_INET6;
        if (family != SHUNT_AF_INET && family != SHUNT_AF_INET6)
                snprintf(a, sizeof(a), "family-%u", family);
        else
                inet_ntop(af, addr, a, sizeof(a));
        strbuf_appendf(out, af == AF_INET6 ? "\"[%s]:%u\"" : "\"%s:%u\"", a, ntohs(port_be));
}

static void append_origdst(struct strbuf *out, const struct shunt_origdst *od, uint64_t now)
{
        strbuf_append(out, "\"original_dst\":");
        append_endpoint(out, od->family, od->addr, od->port);
        uint64_t age = now > od->created_ns ? (now - od->created_ns) / 1000000 : 0;
        strbuf_appendf(out, ",\"pid\":%u,\"age_ms\":%llu,\"watched\":%s", od->pid,
                       (unsigned long long)age, od->flags & SHUNT_OD_WATCHED ? "true" : "false");
}

/* Walks map fd (keys of key_size, at most its max entries): "entries",
 * "max" and, for the first BPFCAP_MAP_ITEMS_MAX, "items" rendered by item()
 * (NULL: no items). */
static void render_map(struct strbuf *out, const char *name, struct bpf_map *m,
                       void (*item)(struct strbuf *, int, const void *, uint64_t))
{
        int fd = bpf_map__fd(m);
        uint32_t max = bpf_map__max_entries(m);
        size_t ksz = bpf_map__key_size(m);
        unsigned char key[64], next[64];
        uint64_t now = clock_mono_ns();
        strbuf_appendf(out, "\"%s\":{", name);
        if (ksz > sizeof(key)) {
                strbuf_append(out, "\"error\":\"key too large\"}");
                return;
        }
        long n = 0;
        void *prev = NULL;
        bool first = true;
        if (item)
                strbuf_append(out, "\"items\":[");
        while (n <= (long)max && bpf_map_get_next_key(fd, prev, next) == 0) {
                memcpy(key, next, ksz);
                prev = key;
                if (item && n < BPFCAP_MAP_ITEMS_MAX) {
                        strbuf_append(out, first ? "{" : ",{");
                        item(out, fd, key, now);
                        strbuf_append(out, "}");
                        first = false;
                }
                n++;
        }
        if (item)
                strbuf_append(out, "],");
        strbuf_appendf(out, "\"entries\":%ld,\"max\":%u,\"truncated\":%s}", n, max,
                       item && n > BPFCAP_MAP_ITEMS_MAX ? "true" : "false");
}

static void item_by_cookie(struct strbuf *out, int fd, const void *key, uint64_t now)
{
        uint64_t cookie;
        memcpy(&cookie, key, sizeof(cookie));
        strbuf_appendf(out, "\"cookie\":%llu,", (unsigned long long)cookie);
        struct shunt_origdst od;
        if (bpf_map_lookup_elem(fd, key, &od) == 0)
                append_origdst(out, &od, now);
        else
                strbuf_append(out, "\"gone\":true");
}

static void item_by_tuple(struct strbuf *out, int fd, const void *key, uint64_t now)
{
        struct shunt_tuple t;
        memcpy(&t, key, sizeof(t));
        if (t.family == 0) {
                /* A connect's reserved slot (bpf/capture.bpf.c reservation()). */
                uint64_t cookie;
                memcpy(&cookie, t.saddr, sizeof(cookie));
                strbuf_appendf(out, "\"reserved_for_cookie\":%llu", (unsigned long long)cookie);
                return;
        }
        strbuf_append(out, "\"app\":");
        append_endpoint(out, t.family, t.saddr, t.sport);
        strbuf_append(out, ",\"listener\":");
        append_endpoint(out, t.family, t.daddr, t.dport);
        struct shunt_origdst od;
        if (bpf_map_lookup_elem(fd, key, &od) == 0) {
                strbuf_append(out, ",");
                append_origdst(out, &od, now);
        }
}

static void item_tuple_only(struct strbuf *out, int fd, const void *key, uint64_t now)
{
        (void)fd;
        (void)now;
        struct shunt_tuple t;
        memcpy(&t, key, sizeof(t));
        strbuf_append(out, "\"local\":");
        append_endpoint(out, t.family, t.saddr, t.sport);
        strbuf_append(out, ",\"remote\":");
        append_endpoint(out, t.family, t.daddr, t.dport);
}

static void item_flow(struct strbuf *out, int fd, const void *key, uint64_t now)
{
        item_tuple_only(out, fd, key, now);
        struct shunt_flow f;
        if (bpf_map_lookup_elem(fd, key, &f) < 0)
                return;
        static const char *const states[] = {"redirect", "tcp", "start"};
        strbuf_appendf(out, ",\"cookie\":%llu,\"state\":\"%s\"", (unsigned long long)f.cookie,
                       f.state < 3 ? states[f.state] : "?");
}

static void item_port(struct strbuf *out, int fd, const void *key, uint64_t now)
{
        (void)fd;
        (void)now;
        uint16_t port;
        memcpy(&port, key, sizeof(port));
        strbuf_appendf(out, "\"port\":%u", port);
}

static void item_cidr(struct strbuf *out, int fd, const void *key, uint64_t now)
{
        (void)fd;
        (void)now;
        struct shunt_cidr_key k;
        memcpy(&k, key, sizeof(k));
        char a[INET6_ADDRSTRLEN] = "?";
        inet_ntop(k.family == SHUNT_AF_INET ? AF_INET : AF_INET6, k.addr, a, sizeof(a));
        strbuf_appendf(out, "\"cidr\":\"%s/%u\"", a, k.prefixlen > 8 ? k.prefixlen - 8 : 0);
}

void bpfcap_render_maps(struct bpfcap *b, struct strbuf *out)
{
        struct shunt_capture *s = b->skel;
        strbuf_append(out, "{\"pin_root\":");
        strbuf_append_json_string(out, b->pin_root);
        struct shunt_capture_config cfg;
        uint32_t zero = 0;
        if (bpf_map_lookup_elem(bpf_map__fd(s->maps.shunt_config), &zero, &cfg) == 0) {
                strbuf_appendf(out,
                               ",\"config\":{\"enabled\":%s,\"mark\":%u,\"uid\":%lld,"
                               "\"outbound_port\":%u,\"shortcut\":%s,\"flow_high\":%u,"
                               "\"flow_low\":%u}",
                               cfg.enabled ? "true" : "false", cfg.mark,
                               cfg.uid == SHUNT_UID_NONE ? -1LL : (long long)cfg.uid,
                               cfg.outbound_port_host, cfg.shortcut ? "true" : "false",
                               cfg.flow_high, cfg.flow_low);
        }
        struct shunt_counters c;
        if (bpfcap_counters(b, &c) == 0) {
                strbuf_append(out, ",\"counters\":{");
                for (size_t i = 0; i < N_COUNTER_ROWS; i++)
                        strbuf_appendf(out, "%s\"%s\":%llu", i ? "," : "", counter_rows[i].field,
                                       (unsigned long long)counter_value(&c, i));
                strbuf_append(out, "}");
        }
        strbuf_append(out, ",");
        render_map(out, "orig_by_cookie", s->maps.shunt_orig_by_cookie, item_by_cookie);
        strbuf_append(out, ",");
        render_map(out, "orig_by_tuple", s->maps.shunt_orig_by_tuple, item_by_tuple);
        strbuf_append(out, ",");
        render_map(out, "sockhash", s->maps.shunt_sockhash, NULL);
        strbuf_append(out, ",");
        render_map(out, "shortcut_off", s->maps.shunt_shortcut_off, item_tuple_only);
        strbuf_append(out, ",");
        render_map(out, "flow", s->maps.shunt_flow, item_flow);
        strbuf_append(out, ",");
        render_map(out, "exclude_ports", s->maps.shunt_exclude_ports, item_port);
        strbuf_append(out, ",");
        render_map(out, "exclude_cidrs", s->maps.shunt_exclude_cidrs, item_cidr);
        strbuf_append(out, "}");
}
