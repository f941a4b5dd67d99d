/* SPDX-License-Identifier: Apache-2.0 */
/* Whole-file reads with an explicit bound: the one helper for configuration,
 * token, label and registry files. */
#ifndef SHUNT_CORE_FILE_H
#define SHUNT_CORE_FILE_H

#include <stddef.h>

/* Reads what fd holds from its current position to the end (a regular file,
 * a pipe or /dev/stdin), at most max bytes, into a malloc'd NUL-terminated
 * buffer. 0, or -EFBIG when there is more than max, -ENOMEM, or the read's
 * negative errno. fd stays open. */
int file_read_fd(int fd, size_t max, char **out, size_t *len);

/* The same for path. On failure err holds one line "<path>: <why>" (cannot
 * open, larger than <max> bytes, ...) and *out is NULL. */
int file_read(const char *path, size_t max, char **out, size_t *len, char *err, size_t errlen);

/* A secret kept in a file (a bearer or ACL token): read as file_read does,
 * then stripped of surrounding white space. -EINVAL when nothing is left. */
int file_read_token(const char *path, size_t max, char **out, size_t *len, char *err,
                    size_t errlen);

#endif
