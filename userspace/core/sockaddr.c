// SPDX-License-Identifier: Apache-2.0
#include "core/sockaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

const char *sockaddr_format(const struct sockaddr_storage *ss, char *buf, size_t len)
{
        char ip[INET6_ADDRSTRLEN];
        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *a = (const void *)ss;
                inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
                snprintf(buf, len, "%s:%u", ip, ntohs(a->sin_port));
        } else if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const void *)ss;
                inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
                snprintf(buf, len, "[%s]:%u", ip, ntohs(a->sin6_port));
        } else {
                snprintf(buf, len, "-");
        }
        return buf;
}

uint16_t sockaddr_port(const struct sockaddr_storage *ss)
{
        if (ss->ss_family == AF_INET)
                return ntohs(((const struct sockaddr_in *)(const void *)ss)->sin_port);
        if (ss->ss_family == AF_INET6)
                return ntohs(((const struct sockaddr_in6 *)(const void *)ss)->sin6_port);
        return 0;
}

socklen_t sockaddr_len(const struct sockaddr_storage *ss)
{
        return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

int sockaddr_from_string(const char *ip, uint16_t port, struct sockaddr_storage *out)
{
        memset(out, 0, sizeof(*out));
        struct sockaddr_in *a4 = (void *)out;
        struct sockaddr_in6 *a6 = (void *)out;
        if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
                a4->sin_family = AF_INET;
                a4->sin_port = htons(port);
                return 0;
        }
        if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
                a6->sin6_family = AF_INET6;
                a6->sin6_port = htons(port);
                return 0;
        }
        return -EINVAL;
}

bool sockaddr_is_any(const struct sockaddr_storage *ss)
{
        if (ss->ss_family == AF_INET)
                return ((const struct sockaddr_in *)(const void *)ss)->sin_addr.s_addr ==
                       INADDR_ANY;
        if (ss->ss_family == AF_INET6)
                return IN6_IS_ADDR_UNSPECIFIED(
                    &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr);
        return false;
}

bool sockaddr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
        if (a->ss_family != b->ss_family)
                return false;
        if (a->ss_family == AF_INET) {
                const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
                return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
        }
        if (a->ss_family != AF_INET6)
                return false;
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 &&
               x->sin6_scope_id == y->sin6_scope_id;
}
