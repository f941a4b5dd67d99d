// SPDX-License-Identifier: Apache-2.0
/* Application protocols: names and the declared-protocol parser. */
#include "core/proto.h"

#include <errno.h>
#include <stddef.h>
#include <strings.h>

const char *proto_name(enum proto p)
{
        switch (p) {
        case PROTO_TCP:
                return "tcp";
        case PROTO_HTTP1:
                return "http1";
        case PROTO_HTTP2:
                return "http2";
        case PROTO_GRPC:
                return "grpc";
        case PROTO_TLS:
                return "tls";
        case PROTO_UNKNOWN:
        case PROTO__COUNT:
                break;
        }
        return "unknown";
}

int proto_parse(const char *s, enum proto *out)
{
        static const struct {
                const char *name;
                enum proto proto;
        } names[] = {
            {"http", PROTO_HTTP1}, {"http1", PROTO_HTTP1}, {"http2", PROTO_HTTP2},
            {"grpc", PROTO_GRPC},  {"tcp", PROTO_TCP},     {"tls", PROTO_TLS},
        };
        if (!s)
                return -EINVAL;
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
                if (strcasecmp(s, names[k].name) == 0) {
                        *out = names[k].proto;
                        return 0;
                }
        }
        return -EINVAL;
}
