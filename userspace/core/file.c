// SPDX-License-Identifier: Apache-2.0
/* Bounded whole-file reads (see file.h). */
#include "core/file.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int file_read_fd(int fd, size_t max, char **out, size_t *len)
{
        /* Grows as it reads: a pipe has no size to ask for, and a file may
         * change between a stat and the read. */
        size_t cap = max < 4096 ? max + 1 : 4096, got = 0;
        char *buf = malloc(cap);
        *out = NULL;
        *len = 0;
        while (buf) {
                if (got + 1 == cap) {
                        if (got > max)
                                break;
                        size_t ncap = cap * 2 > max + 2 ? max + 2 : cap * 2;
                        char *nb = realloc(buf, ncap);
                        if (!nb) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = nb;
                        cap = ncap;
                }
                ssize_t r = read(fd, buf + got, cap - 1 - got);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0) {
                        int e = errno;
                        free(buf);
                        return -e;
                }
                if (r == 0)
                        break;
                got += (size_t)r;
        }
        if (!buf)
                return -ENOMEM;
        if (got > max) {
                free(buf);
                return -EFBIG;
        }
        buf[got] = '\0';
        *out = buf;
        *len = got;
        return 0;
}

int file_read(const char *path, size_t max, char **out, size_t *len, char *err, size_t errlen)
{
        *out = NULL;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                int e = errno;
                snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
                return -e;
        }
        int rc = file_read_fd(fd, max, out, len);
        close(fd);
        if (rc == -EFBIG)
                snprintf(err, errlen, "%s: larger than %zu bytes", path, max);
        else if (rc < 0)
                snprintf(err, errlen, "%s: cannot read: %s", path, strerror(-rc));
        return rc;
}

int file_read_token(const char *path, size_t max, char **out, size_t *len, char *err, size_t errlen)
{
        int rc = file_read(path, max, out, len, err, errlen);
        if (rc < 0)
                return rc;
        char *b = *out;
        size_t n = *len, start = 0;
        while (n && isspace((unsigned char)b[n - 1]))
                n--;
        while (start < n && isspace((unsigned char)b[start]))
                start++;
        memmove(b, b + start, n - start);
        n -= start;
        b[n] = '\0';
        *len = n;
        if (n == 0) {
                snprintf(err, errlen, "%s: empty", path);
                free(b);
                *out = NULL;
                return -EINVAL;
        }
        return 0;
}
