// SPDX-License-Identifier: Apache-2.0
/* Worker services every connection kind uses (the relay in relay.c and the
 * protocol engines it hands over to): the buffer cache, the end of a
 * session's accounting, the protocol engines' table and its loops over
 * every engine, and the names and /connections fields all kinds share. */
#include <stdlib.h>

#include "core/sockaddr.h"
#include "proxy/mirror-int.h"
#include "proxy/proxy-int.h"

/* Protocol engines, by the protocol they take over (see proxy-int.h). */
static const struct proto_engine *const engines[PROTO__COUNT] = {
    [PROTO_HTTP1] = &h1_engine,
    [PROTO_HTTP2] = &h2_engine,
    [PROTO_GRPC] = &h2_engine,
};

static const char *const reason_names[REASON__COUNT] = {
    [REASON_DONE] = "done",
    [REASON_CLIENT_RESET] = "client_reset",
    [REASON_UPSTREAM_RESET] = "upstream_reset",
    [REASON_CONNECT_REFUSED] = "connect_refused",
    [REASON_CONNECT_TIMEOUT] = "connect_timeout",
    [REASON_IDLE_TIMEOUT] = "idle_timeout",
    [REASON_NO_ORIGINAL_DST] = "no_original_dst",
    [REASON_LOOP] = "loop",
    [REASON_OVERLOAD] = "overload",
    [REASON_NO_MEMORY] = "no_memory",
    [REASON_SOCKET] = "socket",
    [REASON_SHUTDOWN] = "shutdown",
    [REASON_NO_ENDPOINT] = "no_endpoint",
    [REASON_UNKNOWN_DESTINATION] = "unknown_destination",
    [REASON_TLS_HANDSHAKE] = "tls_handshake",
    [REASON_PLAINTEXT_REFUSED] = "plaintext_refused",
    [REASON_TLS_PORT_MISMATCH] = "tls_port_mismatch",
    [REASON_AUTHZ_REFUSED] = "authz_refused",
    [REASON_MTLS_REQUIRED] = "mtls_required",
    [REASON_NOT_READY] = "not_ready",
};

const char *conn_reason_name(enum conn_reason r)
{
        return (unsigned)r < REASON__COUNT ? reason_names[r] : "unknown";
}

const char *conn_dir_name(enum conn_dir d)
{
        return d == DIR_INBOUND ? "inbound" : "outbound";
}

/* ---- buffers ------------------------------------------------------------ */

uint8_t *worker_buf_take(struct worker *w, uint32_t *cap)
{
        uint32_t size = worker_cfg(w)->buffer_size;
        if (w->buf_cache_size != size) {
                while (w->n_buf_cache)
                        free(w->buf_cache[--w->n_buf_cache]);
                w->buf_cache_size = size;
        }
        uint8_t *b = w->n_buf_cache ? w->buf_cache[--w->n_buf_cache] : malloc(size);
        *cap = b ? size : 0;
        return b;
}

void worker_buf_give(struct worker *w, uint8_t *buf, uint32_t cap)
{
        if (!buf)
                return;
        if (cap == w->buf_cache_size && w->n_buf_cache < WORKER_BUF_CACHE)
                w->buf_cache[w->n_buf_cache++] = buf;
        else
                free(buf);
}

void session_end(struct worker *w, enum conn_dir dir, enum conn_reason reason)
{
        stat_sub(&w->stats, dir == DIR_INBOUND ? ST_ACTIVE_IN : ST_ACTIVE_OUT, 1);
        stat_add(&w->stats, ST_REASON_FIRST + reason, 1);
        atomic_fetch_sub_explicit(&w->proxy->active, 1, memory_order_relaxed);
}

/* Each engine once, though it may be listed under several protocols. */
static const struct proto_engine *engine_at(int i)
{
        for (int j = 0; j < i; j++)
                if (engines[j] == engines[i])
                        return NULL;
        return engines[i];
}

void engines_close_all(struct worker *w, enum conn_reason reason)
{
        for (int i = 0; i < PROTO__COUNT; i++)
                if (engine_at(i))
                        engines[i]->close_all(w, (int)reason);
}

void engines_drain(struct worker *w)
{
        for (int i = 0; i < PROTO__COUNT; i++)
                if (engine_at(i) && engines[i]->drain)
                        engines[i]->drain(w);
}

void engines_worker_free(struct worker *w)
{
        for (int i = 0; i < PROTO__COUNT; i++)
                if (engine_at(i))
                        engines[i]->worker_free(w);
        mirrors_free(w->mirrors); /* after the engines: their requests' copies first */
        w->mirrors = NULL;
}

const struct proto_engine *engine_for(enum proto p)
{
        return (unsigned)p < PROTO__COUNT ? engines[p] : NULL;
}

void conn_render_open(struct strbuf *out, bool *first, struct worker *w, uint64_t id,
                      enum conn_dir dir, const struct sockaddr_storage *client,
                      const struct sockaddr_storage *orig_dst, const char *upstream,
                      const char *service)
{
        char buf[SOCKADDR_STRLEN];
        strbuf_append(out, *first ? "" : ",");
        *first = false;
        strbuf_appendf(out, "{\"id\":%llu,\"worker\":%d,\"direction\":\"%s\",",
                       (unsigned long long)id, w->index, conn_dir_name(dir));
        strbuf_append(out, "\"client\":");
        strbuf_append_json_string(out, sockaddr_format(client, buf, sizeof(buf)));
        strbuf_append(out, ",\"original_dst\":");
        strbuf_append_json_string(out, sockaddr_format(orig_dst, buf, sizeof(buf)));
        strbuf_append(out, ",\"upstream\":");
        strbuf_append_json_string(out, upstream);
        strbuf_append(out, ",\"service\":");
        strbuf_append_json_string(out, service);
}

void engines_render(struct worker *w, struct strbuf *out, bool *first)
{
        for (int i = 0; i < PROTO__COUNT; i++)
                if (engine_at(i))
                        engines[i]->render(w, out, first);
}
