// SPDX-License-Identifier: Apache-2.0
/* core/file.h: whole-file reads at, below and over their bound, from a
 * file and from a pipe, and tokens trimmed (empty ones refused); and the
 * one address comparison of core/sockaddr.h. */
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/file.h"
#include "core/sockaddr.h"

static char *tmp_with(const char *data, size_t len)
{
        static char path[64];
        snprintf(path, sizeof(path), "/tmp/test_file_XXXXXX");
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, len), (ssize_t)len);
        close(fd);
        return path;
}

static void test_bounds(void **state)
{
        (void)state;
        char data[9000];
        memset(data, 'a', sizeof(data));
        char *p = tmp_with(data, sizeof(data));
        char *buf, err[256];
        size_t len;
        /* exactly the bound, and more room than needed */
        assert_int_equal(file_read(p, sizeof(data), &buf, &len, err, sizeof(err)), 0);
        assert_int_equal(len, sizeof(data));
        assert_int_equal(buf[len], '\0');
        free(buf);
        assert_int_equal(file_read(p, 1 << 20, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal(len, sizeof(data));
        free(buf);
        /* one byte over */
        assert_int_equal(file_read(p, sizeof(data) - 1, &buf, &len, err, sizeof(err)), -EFBIG);
        assert_null(buf);
        assert_non_null(strstr(err, "larger than 8999 bytes"));
        assert_non_null(strstr(err, p));
        assert_int_equal(file_read(p, 0, &buf, &len, err, sizeof(err)), -EFBIG);
        unlink(p);
        /* empty file, missing file */
        p = tmp_with("", 0);
        assert_int_equal(file_read(p, 0, &buf, &len, err, sizeof(err)), 0);
        assert_int_equal(len, 0);
        assert_string_equal(buf, "");
        free(buf);
        unlink(p);
        assert_int_equal(file_read("/nonexistent/x", 10, &buf, &len, err, sizeof(err)), -ENOENT);
        assert_string_equal(err, "/nonexistent/x: cannot open: No such file or directory");
}

static void test_pipe(void **state)
{
        (void)state;
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        assert_int_equal(write(fds[1], "hello\n", 6), 6);
        close(fds[1]);
        char *buf;
        size_t len;
        assert_int_equal(file_read_fd(fds[0], 6, &buf, &len), 0);
        assert_string_equal(buf, "hello\n");
        free(buf);
        close(fds[0]);
        assert_int_equal(pipe(fds), 0);
        assert_int_equal(write(fds[1], "hello\n", 6), 6);
        close(fds[1]);
        assert_int_equal(file_read_fd(fds[0], 5, &buf, &len), -EFBIG);
        close(fds[0]);
}

static void test_token(void **state)
{
        (void)state;
        char *p = tmp_with("\n  s3cret tok \r\n", 16);
        char *buf, err[256];
        size_t len;
        assert_int_equal(file_read_token(p, 64, &buf, &len, err, sizeof(err)), 0);
        assert_string_equal(buf, "s3cret tok");
        assert_int_equal(len, 10);
        free(buf);
        unlink(p);
        p = tmp_with(" \n", 2);
        assert_int_equal(file_read_token(p, 64, &buf, &len, err, sizeof(err)), -EINVAL);
        assert_null(buf);
        assert_non_null(strstr(err, ": empty"));
        unlink(p);
}

static void test_sockaddr_equal(void **state)
{
        (void)state;
        struct sockaddr_storage a, b;
        assert_int_equal(sockaddr_from_string("10.0.0.1", 80, &a), 0);
        assert_int_equal(sockaddr_from_string("10.0.0.1", 80, &b), 0);
        assert_true(sockaddr_equal(&a, &b));
        assert_int_equal(sockaddr_from_string("10.0.0.1", 81, &b), 0);
        assert_false(sockaddr_equal(&a, &b));
        assert_int_equal(sockaddr_from_string("::ffff:10.0.0.1", 80, &b), 0);
        assert_false(sockaddr_equal(&a, &b)); /* another family */
        assert_int_equal(sockaddr_from_string("fd00::1", 80, &a), 0);
        assert_int_equal(sockaddr_from_string("fd00::1", 80, &b), 0);
        assert_true(sockaddr_equal(&a, &b));
        ((struct sockaddr_in6 *)&b)->sin6_scope_id = 2;
        assert_false(sockaddr_equal(&a, &b));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_bounds),
            cmocka_unit_test(test_pipe),
            cmocka_unit_test(test_token),
            cmocka_unit_test(test_sockaddr_equal),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
