/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers shared by the tls unit tests: temporary directories, running real
 * peers (openssl), writing certificates to files, TCP on 127.0.0.1. */
#ifndef SHUNT_TEST_TLS_UTIL_H
#define SHUNT_TEST_TLS_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tls/cert.h"

static char *tu_mkdtemp(void)
{
        char *d = strdup("/tmp/shunt-tls-test-XXXXXX");
        if (!d || !mkdtemp(d))
                abort();
        return d;
}

static inline void tu_rmrf(const char *dir)
{
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
                fprintf(stderr, "cannot remove %s\n", dir);
}

static inline void tu_path(char *buf, size_t len, const char *dir, const char *name)
{
        if (snprintf(buf, len, "%s/%s", dir, name) >= (int)len)
                abort();
}

/* Writes <dir>/<name>.pem (leaf + chain) and <dir>/<name>-key.pem. */
static inline void tu_write_material(const struct tls_material *m, const char *dir,
                                     const char *name)
{
        char p[512];
        X509 *certs[8];
        size_t n = 0;
        certs[n++] = m->leaf;
        for (size_t i = 0; i < sk_X509_num(m->chain) && n < 8; i++)
                certs[n++] = sk_X509_value(m->chain, i);
        snprintf(p, sizeof(p), "%s/%s.pem", dir, name);
        if (tls_pem_write_certs(p, certs, n, 0644) != 0)
                abort();
        snprintf(p, sizeof(p), "%s/%s-key.pem", dir, name);
        if (tls_pem_write_key(p, m->key, 0600) != 0)
                abort();
}

static inline void tu_write_certs(const char *path, X509 *const *certs, size_t n)
{
        if (tls_pem_write_certs(path, certs, n, 0644) != 0)
                abort();
}

/* Runs argv (NULL-terminated) with stdin from in (may be NULL), stdout and
 * stderr into out (NUL-terminated, truncated to outlen). Kills it after
 * timeout_ms. Returns the exit status, or 128+signal. */
static inline int tu_run(char *const argv[], const char *in, char *out, size_t outlen,
                         int timeout_ms)
{
        int pin[2], pout[2];
        if (pipe(pin) < 0 || pipe(pout) < 0)
                abort();
        pid_t pid = fork();
        if (pid < 0)
                abort();
        if (pid == 0) {
                dup2(pin[0], 0);
                dup2(pout[1], 1);
                dup2(pout[1], 2);
                close(pin[1]);
                close(pout[0]);
                execvp(argv[0], argv);
                _exit(127);
        }
        close(pin[0]);
        close(pout[1]);
        if (in) {
                /* A child that exits without reading its input must not kill
                 * us with SIGPIPE, whatever our disposition. */
                void (*old)(int) = signal(SIGPIPE, SIG_IGN);
                size_t l = strlen(in);
                if (write(pin[1], in, l) != (ssize_t)l)
                        fprintf(stderr, "short write to child\n");
                signal(SIGPIPE, old);
        }
        close(pin[1]);
        size_t used = 0;
        int waited = 0;
        for (;;) {
                struct pollfd p = {.fd = pout[0], .events = POLLIN};
                int r = poll(&p, 1, 50);
                if (r > 0) {
                        char tmp[4096];
                        ssize_t n = read(pout[0], tmp, sizeof(tmp));
                        if (n <= 0)
                                break;
                        if (outlen && used < outlen - 1) {
                                size_t k = (size_t)n;
                                if (k > outlen - 1 - used)
                                        k = outlen - 1 - used;
                                memcpy(out + used, tmp, k);
                                used += k;
                        }
                } else if (r == 0) {
                        waited += 50;
                        if (waited >= timeout_ms) {
                                kill(pid, SIGKILL);
                                break;
                        }
                }
        }
        if (outlen)
                out[used] = 0;
        close(pout[0]);
        int st;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline int tu_listen(uint16_t *port)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t l = sizeof(a);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0 ||
            getsockname(fd, (struct sockaddr *)&a, &l) < 0)
                abort();
        *port = ntohs(a.sin_port);
        return fd;
}

/* A port nothing answers on: bound, never listened on, so a connect is
 * refused and no other process (ctest -j) can take it while *fd is open. */
static inline uint16_t tu_closed_port(int *fd)
{
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t l = sizeof(a);
        *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (*fd < 0 || bind(*fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
            getsockname(*fd, (struct sockaddr *)&a, &l) < 0)
                abort();
        return ntohs(a.sin_port);
}

/* Starts `openssl s_server -accept 127.0.0.1:0 args...` in dir (NULL: here)
 * and reads the port it bound from its "ACCEPT 127.0.0.1:PORT" line: no
 * free-port probe that another process could race. args must not hold
 * -accept or -quiet (which hides that line). The server's stdout stays
 * on *out (close it once the server is stopped); stderr goes to /dev/null.
 * Returns the pid; *port is 0 when no ACCEPT line came within 10 s. */
static inline pid_t tu_s_server(char *const args[], const char *dir, uint16_t *port, int *out)
{
        char *argv[40] = {"openssl", "s_server", "-accept", "127.0.0.1:0"};
        size_t n = 4;
        for (size_t i = 0; args[i] && n < 39; i++)
                argv[n++] = args[i];
        argv[n] = NULL;
        int p[2];
        if (pipe(p) < 0)
                abort();
        pid_t pid = fork();
        if (pid < 0)
                abort();
        if (pid == 0) {
                int null = open("/dev/null", O_RDWR);
                dup2(null, 0);
                dup2(p[1], 1);
                dup2(null, 2);
                close(p[0]);
                if (dir && chdir(dir) < 0)
                        _exit(127);
                execvp(argv[0], argv);
                _exit(127);
        }
        close(p[1]);
        *out = p[0];
        *port = 0;
        char buf[4096];
        size_t used = 0;
        struct pollfd pfd = {.fd = p[0], .events = POLLIN};
        while (!*port && used < sizeof(buf) - 1 && poll(&pfd, 1, 10000) > 0) {
                ssize_t r = read(p[0], buf + used, sizeof(buf) - 1 - used);
                if (r <= 0)
                        break;
                used += (size_t)r;
                buf[used] = '\0';
                const char *a = strstr(buf, "ACCEPT 127.0.0.1:");
                if (a && strchr(a, '\n'))
                        *port = (uint16_t)atoi(a + strlen("ACCEPT 127.0.0.1:"));
        }
        return pid;
}

static inline int tu_connect(uint16_t port, bool nonblock)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                .sin_port = htons(port)};
        if (fd < 0)
                abort();
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                close(fd);
                return -1;
        }
        if (nonblock)
                fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        return fd;
}

static inline uint64_t tu_now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline void tu_sleep_ms(int ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
}

#endif
