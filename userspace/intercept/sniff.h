/* SPDX-License-Identifier: Apache-2.0 */
/* Protocol sniffing on the first bytes a client sends.
 *
 * sniff() looks at what has arrived so far and either decides or asks for more.
 * The caller replays every sniffed byte upstream unchanged and gives up
 * waiting after protocol_detection_timeout (then the connection is TCP). */
#ifndef SHUNT_INTERCEPT_SNIFF_H
#define SHUNT_INTERCEPT_SNIFF_H

#include <stddef.h>
#include <stdint.h>

#include "core/proto.h"

enum sniff_status {
        SNIFF_DONE = 0,  /* result->proto is final */
        SNIFF_NEED_MORE, /* call again when more bytes arrive (or time out: TCP) */
};

/* Upper bound on the bytes sniff() will ever ask for; past it, it decides. */
#define SNIFF_MAX_BYTES 16384

struct sniff_result {
        enum proto proto;
        char http_method[16];       /* PROTO_HTTP1: "GET", ... */
        char sni[256];              /* PROTO_TLS: server_name, "" if absent */
        char alpn[64];              /* PROTO_TLS: ALPN protocols offered, comma-separated */
        char grpc_content_type[64]; /* PROTO_GRPC */
};

/* buf holds every byte received so far (len of them). Never reads past len.
 * When eof is set no more bytes will come: the result is final. */
enum sniff_status sniff(const uint8_t *buf, size_t len, int eof, struct sniff_result *result);

#endif
