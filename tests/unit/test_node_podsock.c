// SPDX-License-Identifier: Apache-2.0
/* node/podsock.h: a pod's listening sockets made by a child in the pod's
 * cgroup. With a real cgroup of the test's own under the cgroup v2 mount:
 * the child joins the pod's directory; where the pod's directory refuses a
 * process (kubelet's, with controllers enabled below it: here its
 * cgroup.procs leads to /dev/full) the first container directory that takes
 * it; sockets of both families come back non-blocking and close-on-exec and
 * listen; nothing joinable is one error line and no child left. Needs root
 * and cgroup v2 (scripts/test.sh runs as root). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "require.h"

#include "core/mount.h"
#include "node/podsock.h"

struct fixture {
        char cg[512];  /* a real cgroup: the "pod" */
        char ctr[600]; /* a real cgroup below it: a "container" */
        char fake[64]; /* a directory standing for a pod that takes no process */
};

static int setup(void **state)
{
        static struct fixture f;
        char root[256];
        if (geteuid() != 0) {
                require_missing("root", "making cgroups needs root");
                return -1;
        }
        if (cgroup2_mount("/proc/self/mountinfo", root, sizeof(root)) < 0) {
                require_missing("cgroup2", "no cgroup v2 hierarchy mounted");
                return -1;
        }
        snprintf(f.cg, sizeof(f.cg), "%s/test_podsock_%d", root, (int)getpid());
        snprintf(f.ctr, sizeof(f.ctr), "%s/ctr", f.cg);
        if (mkdir(f.cg, 0755) < 0 || mkdir(f.ctr, 0755) < 0) {
                print_error("mkdir %s: %s\n", f.ctr, strerror(errno));
                return -1;
        }
        /* The fake pod: its cgroup.procs refuses every write (ENOSPC), its
         * container directory is the real "ctr" cgroup's. */
        snprintf(f.fake, sizeof(f.fake), "/tmp/test_podsock_XXXXXX");
        if (!mkdtemp(f.fake))
                return -1;
        char p[PATH_MAX], q[PATH_MAX];
        snprintf(p, sizeof(p), "%s/cgroup.procs", f.fake);
        if (symlink("/dev/full", p) < 0)
                return -1;
        snprintf(p, sizeof(p), "%s/ctr", f.fake);
        mkdir(p, 0755);
        snprintf(p, sizeof(p), "%s/ctr/cgroup.procs", f.fake);
        snprintf(q, sizeof(q), "%s/cgroup.procs", f.ctr);
        if (symlink(q, p) < 0)
                return -1;
        *state = &f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/ctr/cgroup.procs", f->fake);
        unlink(p);
        snprintf(p, sizeof(p), "%s/ctr", f->fake);
        rmdir(p);
        snprintf(p, sizeof(p), "%s/cgroup.procs", f->fake);
        unlink(p);
        rmdir(f->fake);
        rmdir(f->ctr);
        rmdir(f->cg);
        return 0;
}

/* Whether pid is listed in cgroup dir's cgroup.procs. */
static bool in_cgroup(const char *dir, pid_t pid)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/cgroup.procs", dir);
        FILE *f = fopen(p, "r");
        long x;
        bool found = false;
        while (f && !found && fscanf(f, "%ld", &x) == 1)
                found = x == pid;
        if (f)
                fclose(f);
        return found;
}

static void check_listens(int fd, int family)
{
        assert_true(fd >= 0);
        assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        int dom = 0;
        socklen_t l = sizeof(dom);
        assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l), 0);
        assert_int_equal(dom, family);
        struct sockaddr_storage a = {.ss_family = (sa_family_t)family};
        if (family == AF_INET)
                ((struct sockaddr_in *)&a)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else
                ((struct sockaddr_in6 *)&a)->sin6_addr = in6addr_loopback;
        assert_int_equal(
            bind(fd, (struct sockaddr *)&a,
                 family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)),
            0);
        assert_int_equal(listen(fd, 4), 0);
        close(fd);
}

static void test_joins_the_pod(void **state)
{
        struct fixture *f = *state;
        struct podsock m;
        char err[256];
        assert_int_equal(podsock_start(&m, f->cg, err, sizeof(err)), 0);
        assert_string_equal(m.joined, "");
        assert_true(in_cgroup(f->cg, m.pid));
        check_listens(podsock_socket(&m, AF_INET), AF_INET);
        int fd6 = podsock_socket(&m, AF_INET6);
        if (fd6 != -EAFNOSUPPORT)
                check_listens(fd6, AF_INET6);
        assert_int_equal(podsock_socket(&m, 12345), -EAFNOSUPPORT);
        pid_t pid = m.pid;
        podsock_stop(&m);
        assert_int_equal(m.pid, -1);
        assert_int_equal(kill(pid, 0), -1); /* reaped */
        assert_int_equal(podsock_socket(&m, AF_INET), -EBADF);
}

static void test_container_when_the_pod_refuses(void **state)
{
        struct fixture *f = *state;
        struct podsock m;
        char err[256];
        assert_int_equal(podsock_start(&m, f->fake, err, sizeof(err)), 0);
        assert_string_equal(m.joined, "ctr");
        assert_true(in_cgroup(f->ctr, m.pid));
        check_listens(podsock_socket(&m, AF_INET), AF_INET);
        podsock_stop(&m);
}

static void test_nothing_joinable(void **state)
{
        struct fixture *f = *state;
        char p[PATH_MAX], err[256];
        struct podsock m;
        /* the container directory gone: the pod's own error, one line */
        snprintf(p, sizeof(p), "%s/ctr/cgroup.procs", f->fake);
        unlink(p);
        assert_int_equal(podsock_start(&m, f->fake, err, sizeof(err)), -ENOSPC);
        assert_non_null(strstr(err, f->fake));
        assert_null(strchr(err, '\n'));
        assert_int_equal(m.pid, -1);
        assert_int_equal(m.fd, -1);
        assert_int_equal(waitpid(-1, NULL, WNOHANG), -1); /* no child left */
        /* not a cgroup at all */
        assert_int_equal(podsock_start(&m, "/nonexistent", err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "/nonexistent/cgroup.procs"));
        char q[PATH_MAX];
        snprintf(q, sizeof(q), "%s/cgroup.procs", f->ctr);
        assert_int_equal(symlink(q, p), 0); /* back for teardown */
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_joins_the_pod),
            cmocka_unit_test(test_container_when_the_pod_refuses),
            cmocka_unit_test(test_nothing_joinable),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
