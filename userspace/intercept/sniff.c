// SPDX-License-Identifier: Apache-2.0
/* Protocol sniffing on the client's first bytes.
 *
 * sniff() is stateless: every call re-parses the buffer from the start. Each
 * candidate protocol is a small parser that walks the bytes in order and
 * decides at the earliest byte where the answer is certain, looking at no byte
 * beyond that point. A prefix therefore either asks for more or gives exactly
 * the answer the whole input gives, however the bytes are split into reads.
 *
 * Bytes past SNIFF_MAX_BYTES are never looked at: a buffer that long is
 * treated as if the peer had closed after SNIFF_MAX_BYTES bytes.
 *
 * Decisions:
 *  - HTTP/1: "METHOD SP target SP HTTP/1." (method: 1-15 RFC 9110 token chars,
 *    target: visible ASCII) within the first 8 KiB. TCP at the first byte that
 *    breaks this; a partial request line at eof is TCP.
 *  - HTTP/2: the 24-byte preface, then frames up to the first complete header
 *    block (HEADERS + CONTINUATION). gRPC when its first content-type is
 *    application/grpc[+...|;...]; anything else, a malformed block, eof or the
 *    bound before the block is complete: plain HTTP/2. A partial preface at
 *    eof is TCP.
 *  - TLS: a handshake record (0x16, version 3.0-3.4, length 1..2^14) whose
 *    first handshake byte is ClientHello. That alone makes it TLS; SNI and ALPN
 *    are filled only from a complete, well-formed hello (which may span
 *    records), otherwise left empty.
 *  - Everything else, and nothing at all at eof, is TCP. */
#include "intercept/sniff.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include <nghttp2/nghttp2.h>

/* Longest HTTP/1 request line prefix we wait for ("METHOD target HTTP/1."). */
#define HTTP1_MAX_LINE   8192
#define HTTP1_MAX_METHOD 15

enum verdict {
        V_NO = 0, /* the bytes cannot be this protocol */
        V_MORE,   /* could still be this protocol: need more bytes */
        V_YES,    /* decided: result filled */
};

/* ---- HTTP/1.x ------------------------------------------------------------ */

/* RFC 9110 tchar. */
static bool is_tchar(uint8_t c)
{
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
                return true;
        return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Visible ASCII, what a request-target is made of. */
static bool is_vchar(uint8_t c)
{
        return c > 0x20 && c < 0x7f;
}

static enum verdict sniff_http1(const uint8_t *buf, size_t len, bool final, struct sniff_result *r)
{
        static const char version[] = "HTTP/1.";
        const size_t vlen = sizeof(version) - 1;
        size_t i = 0;

        /* method */
        while (i < len && is_tchar(buf[i])) {
                if (++i > HTTP1_MAX_METHOD)
                        return V_NO;
        }
        if (i == len)
                return final ? V_NO : V_MORE;
        if (i == 0 || buf[i] != ' ')
                return V_NO;
        size_t method_len = i++;

        /* request-target */
        size_t target = i;
        while (i < len && is_vchar(buf[i])) {
                if (++i + 1 + vlen > HTTP1_MAX_LINE)
                        return V_NO;
        }
        if (i == len)
                return final ? V_NO : V_MORE;
        if (i == target || buf[i] != ' ')
                return V_NO;
        i++;

        /* version: decided as soon as "HTTP/1." is complete */
        for (size_t k = 0; k < vlen; k++, i++) {
                if (i == len)
                        return final ? V_NO : V_MORE;
                if (buf[i] != (uint8_t)version[k])
                        return V_NO;
        }
        r->proto = PROTO_HTTP1;
        memcpy(r->http_method, buf, method_len);
        r->http_method[method_len] = '\0';
        return V_YES;
}

/* ---- HTTP/2 and gRPC ----------------------------------------------------- */

static const uint8_t h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN   24
#define H2_FRAME_HDR     9
#define H2_HEADERS       0x1
#define H2_CONTINUATION  0x9
#define H2_END_HEADERS   0x4
#define H2_PADDED        0x8
#define H2_PRIORITY      0x20
#define H2_MAX_FRAGMENTS 64

struct h2_frame {
        size_t payload; /* offset of the payload in buf */
        uint32_t length;
        uint8_t type;
        uint8_t flags;
        uint32_t stream;
};

static void h2_frame_at(const uint8_t *p, size_t off, struct h2_frame *f)
{
        f->length = (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
        f->type = p[3];
        f->flags = p[4];
        f->stream = ((uint32_t)p[5] << 24 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 8 | p[8]) &
                    0x7fffffffu;
        f->payload = off + H2_FRAME_HDR;
}

struct fragment {
        const uint8_t *p;
        size_t len;
};

static bool grpc_content_type(const uint8_t *v, size_t n)
{
        static const char grpc[] = "application/grpc";
        const size_t glen = sizeof(grpc) - 1;
        if (n < glen || strncasecmp((const char *)v, grpc, glen) != 0)
                return false;
        return n == glen || v[glen] == '+' || v[glen] == ';';
}

/* gRPC. The value is kept only if it fits whole (printable ASCII). */
static void grpc_found(struct sniff_result *r, const uint8_t *v, size_t n)
{
        r->proto = PROTO_GRPC;
        if (n >= sizeof(r->grpc_content_type))
                return;
        for (size_t k = 0; k < n; k++)
                if (v[k] < 0x20 || v[k] > 0x7e)
                        return;
        memcpy(r->grpc_content_type, v, n);
        r->grpc_content_type[n] = '\0';
}

/* Decodes one complete header block (split in fragments) and looks for a gRPC
 * content-type. A block that does not decode is plain HTTP/2. */
static void h2_inspect_headers(const struct fragment *frag, size_t nfrag, struct sniff_result *r)
{
        nghttp2_hd_inflater *inf;
        if (nghttp2_hd_inflate_new(&inf) != 0)
                return; /* out of memory: stays PROTO_HTTP2 */
        bool done = false;
        for (size_t k = 0; k < nfrag && !done; k++) {
                const uint8_t *in = frag[k].p;
                size_t inlen = frag[k].len;
                int last = k + 1 == nfrag;
                for (;;) {
                        nghttp2_nv nv;
                        int flags = 0;
                        ssize_t n = nghttp2_hd_inflate_hd2(inf, &nv, &flags, in, inlen, last);
                        if (n < 0) {
                                done = true;
                                break;
                        }
                        in += n;
                        inlen -= (size_t)n;
                        if (flags & NGHTTP2_HD_INFLATE_EMIT) {
                                if (nv.namelen == 12 && memcmp(nv.name, "content-type", 12) == 0) {
                                        if (grpc_content_type(nv.value, nv.valuelen))
                                                grpc_found(r, nv.value, nv.valuelen);
                                        done = true; /* the first content-type decides */
                                        break;
                                }
                        }
                        if (flags & NGHTTP2_HD_INFLATE_FINAL) {
                                nghttp2_hd_inflate_end_headers(inf);
                                done = true;
                                break;
                        }
                        if (!(flags & NGHTTP2_HD_INFLATE_EMIT) && inlen == 0)
                                break; /* this fragment is consumed */
                        if (!(flags & NGHTTP2_HD_INFLATE_EMIT) && n == 0) {
                                done = true; /* no progress: give up, plain HTTP/2 */
                                break;
                        }
                }
        }
        nghttp2_hd_inflate_del(inf);
}

static enum verdict sniff_http2(const uint8_t *buf, size_t len, bool final, struct sniff_result *r)
{
        size_t n = len < H2_PREFACE_LEN ? len : H2_PREFACE_LEN;
        if (memcmp(buf, h2_preface, n) != 0)
                return V_NO;
        if (len < H2_PREFACE_LEN)
                return final ? V_NO : V_MORE;

        /* From here on it is HTTP/2; the frames tell whether it is gRPC. */
        r->proto = PROTO_HTTP2;
        struct fragment frag[H2_MAX_FRAGMENTS];
        size_t nfrag = 0;
        uint32_t stream = 0;
        size_t off = H2_PREFACE_LEN;
        for (;;) {
                if (len - off < H2_FRAME_HDR)
                        return final ? V_YES : V_MORE;
                struct h2_frame f;
                h2_frame_at(buf + off, off, &f);
                size_t end = f.payload + f.length;
                bool in_block = nfrag > 0;
                if (!in_block && f.type != H2_HEADERS) {
                        /* SETTINGS, WINDOW_UPDATE, PRIORITY, PING, unknown: skip */
                        if (end > SNIFF_MAX_BYTES)
                                return V_YES; /* the first request lies past the bound */
                        if (end > len)
                                return final ? V_YES : V_MORE;
                        off = end;
                        continue;
                }
                if (in_block && (f.type != H2_CONTINUATION || f.stream != stream))
                        return V_YES; /* broken header block: plain HTTP/2 */
                if (end > SNIFF_MAX_BYTES)
                        return V_YES;
                if (end > len)
                        return final ? V_YES : V_MORE;

                const uint8_t *p = buf + f.payload;
                size_t plen = f.length;
                if (f.type == H2_HEADERS) {
                        if (f.stream == 0)
                                return V_YES;
                        stream = f.stream;
                        size_t pad = 0;
                        if (f.flags & H2_PADDED) {
                                if (plen < 1)
                                        return V_YES;
                                pad = p[0];
                                p++;
                                plen--;
                        }
                        if (f.flags & H2_PRIORITY) {
                                if (plen < 5)
                                        return V_YES;
                                p += 5;
                                plen -= 5;
                        }
                        if (pad > plen)
                                return V_YES;
                        plen -= pad;
                }
                if (nfrag == H2_MAX_FRAGMENTS)
                        return V_YES;
                frag[nfrag].p = p;
                frag[nfrag].len = plen;
                nfrag++;
                off = end;
                if (f.flags & H2_END_HEADERS) {
                        h2_inspect_headers(frag, nfrag, r);
                        return V_YES;
                }
        }
}

/* ---- TLS ClientHello ----------------------------------------------------- */

#define TLS_HANDSHAKE       0x16
#define TLS_CLIENT_HELLO    0x01
#define TLS_RECORD_HDR      5
#define TLS_MAX_RECORD      16384
#define TLS_EXT_SERVER_NAME 0
#define TLS_EXT_ALPN        16
#define TLS_SNI_HOST_NAME   0

/* A bounds-checked reader over a byte range. */
struct rd {
        const uint8_t *p;
        size_t left;
        bool bad;
};

static const uint8_t *rd_take(struct rd *c, size_t n)
{
        if (c->bad || n > c->left) {
                c->bad = true;
                return NULL;
        }
        const uint8_t *p = c->p;
        c->p += n;
        c->left -= n;
        return p;
}

static size_t rd_uint(struct rd *c, size_t bytes)
{
        const uint8_t *p = rd_take(c, bytes);
        size_t v = 0;
        for (size_t k = 0; p && k < bytes; k++)
                v = v << 8 | p[k];
        return v;
}

/* A sub-reader over the next n bytes (an opaque vector's body). */
static struct rd rd_sub(struct rd *c, size_t n)
{
        struct rd s = {.p = NULL, .left = 0, .bad = false};
        const uint8_t *p = rd_take(c, n);
        if (!p) {
                s.bad = true;
                return s;
        }
        s.p = p;
        s.left = n;
        return s;
}

static bool printable(const uint8_t *p, size_t n)
{
        for (size_t k = 0; k < n; k++)
                if (p[k] < 0x21 || p[k] > 0x7e)
                        return false;
        return true;
}

static bool tls_server_name(struct rd e, struct sniff_result *r)
{
        struct rd list = rd_sub(&e, rd_uint(&e, 2));
        if (e.bad || e.left != 0)
                return false;
        while (list.left > 0) {
                size_t type = rd_uint(&list, 1);
                size_t n = rd_uint(&list, 2);
                const uint8_t *name = rd_take(&list, n);
                if (list.bad)
                        return false;
                if (type != TLS_SNI_HOST_NAME || r->sni[0] != '\0')
                        continue;
                if (n == 0 || n >= sizeof(r->sni) || !printable(name, n))
                        return false;
                memcpy(r->sni, name, n);
                r->sni[n] = '\0';
        }
        return true;
}

static bool tls_alpn(struct rd e, struct sniff_result *r)
{
        struct rd list = rd_sub(&e, rd_uint(&e, 2));
        if (e.bad || e.left != 0)
                return false;
        size_t used = 0;
        bool full = false;
        while (list.left > 0) {
                size_t n = rd_uint(&list, 1);
                const uint8_t *name = rd_take(&list, n);
                if (list.bad || n == 0)
                        return false;
                /* Names that would not read back from a comma list are left out,
                 * and so is whatever does not fit: the list stays whole entries. */
                if (full || !printable(name, n) || memchr(name, ',', n))
                        continue;
                size_t need = n + (used ? 1 : 0);
                if (used + need >= sizeof(r->alpn)) {
                        full = true;
                        continue;
                }
                if (used)
                        r->alpn[used++] = ',';
                memcpy(r->alpn + used, name, n);
                used += n;
                r->alpn[used] = '\0';
        }
        return true;
}

/* Parses a complete ClientHello body. Leaves sni and alpn empty when any
 * length is inconsistent. */
static void tls_parse_hello(const uint8_t *body, size_t n, struct sniff_result *r)
{
        struct rd c = {.p = body, .left = n, .bad = false};
        rd_take(&c, 2 + 32);            /* legacy_version, random */
        rd_take(&c, rd_uint(&c, 1));    /* legacy_session_id */
        size_t suites = rd_uint(&c, 2); /* cipher_suites */
        if (suites < 2 || suites % 2)
                c.bad = true;
        rd_take(&c, suites);
        size_t comp = rd_uint(&c, 1); /* legacy_compression_methods */
        if (comp < 1)
                c.bad = true;
        rd_take(&c, comp);
        if (c.bad)
                return;
        if (c.left == 0)
                return; /* no extensions at all */
        struct rd exts = rd_sub(&c, rd_uint(&c, 2));
        if (c.bad || c.left != 0)
                return;
        bool ok = true, seen_sni = false, seen_alpn = false;
        while (ok && exts.left > 0) {
                size_t type = rd_uint(&exts, 2);
                struct rd e = rd_sub(&exts, rd_uint(&exts, 2));
                if (exts.bad) {
                        ok = false;
                        break;
                }
                if (type == TLS_EXT_SERVER_NAME) {
                        ok = !seen_sni && tls_server_name(e, r);
                        seen_sni = true;
                } else if (type == TLS_EXT_ALPN) {
                        ok = !seen_alpn && tls_alpn(e, r);
                        seen_alpn = true;
                }
        }
        if (!ok) {
                r->sni[0] = '\0';
                r->alpn[0] = '\0';
        }
}

static enum verdict sniff_tls(const uint8_t *buf, size_t len, bool final, struct sniff_result *r)
{
        /* record header: type, version (3, 0..4), length; then handshake type */
        static const uint8_t lo[] = {TLS_HANDSHAKE, 0x03, 0x00, 0x00, 0x00, TLS_CLIENT_HELLO};
        static const uint8_t hi[] = {TLS_HANDSHAKE, 0x03, 0x04, 0xff, 0xff, TLS_CLIENT_HELLO};
        for (size_t k = 0; k < sizeof(lo); k++) {
                if (k == 5) {
                        size_t rlen = (size_t)buf[3] << 8 | buf[4];
                        if (rlen == 0 || rlen > TLS_MAX_RECORD)
                                return V_NO;
                }
                if (k == len)
                        return final ? V_NO : V_MORE;
                if (buf[k] < lo[k] || buf[k] > hi[k])
                        return V_NO;
        }

        /* A TLS ClientHello. Gather the handshake message, which may span
         * several records, to read SNI and ALPN from it. */
        r->proto = PROTO_TLS;
        uint8_t hs[SNIFF_MAX_BYTES];
        size_t have = 0, want = 0; /* want: handshake message size, 0 until known */
        size_t off = 0;
        bool partial = false;
        for (;;) {
                if (want == 0 && have >= 4) {
                        want = 4 + ((size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3]);
                        if (TLS_RECORD_HDR + want > SNIFF_MAX_BYTES)
                                return V_YES; /* can never arrive within the bound */
                }
                if (want != 0 && have >= want)
                        break;
                if (partial || len - off < TLS_RECORD_HDR)
                        return final ? V_YES : V_MORE;
                const uint8_t *h = buf + off;
                if (h[0] != TLS_HANDSHAKE || h[1] != 0x03 || h[2] > 0x04)
                        return V_YES; /* the hello stops short: fields left empty */
                size_t n = (size_t)h[3] << 8 | h[4];
                if (n == 0 || n > TLS_MAX_RECORD)
                        return V_YES;
                off += TLS_RECORD_HDR;
                size_t avail = len - off < n ? len - off : n;
                /* have + avail <= len <= SNIFF_MAX_BYTES: always fits */
                memcpy(hs + have, buf + off, avail);
                have += avail;
                off += avail;
                partial = avail < n;
        }
        tls_parse_hello(hs + 4, want - 4, r);
        return V_YES;
}

/* ---- entry points -------------------------------------------------------- */

enum sniff_status sniff(const uint8_t *buf, size_t len, int eof, struct sniff_result *result)
{
        memset(result, 0, sizeof(*result));
        bool final = eof != 0;
        if (len >= SNIFF_MAX_BYTES) {
                len = SNIFF_MAX_BYTES;
                final = true;
        }
        if (len == 0) {
                if (!final)
                        return SNIFF_NEED_MORE;
                result->proto = PROTO_TCP;
                return SNIFF_DONE;
        }

        enum verdict (*const candidates[])(const uint8_t *, size_t, bool, struct sniff_result *) = {
            sniff_tls,
            sniff_http2,
            sniff_http1,
        };
        bool more = false;
        for (size_t k = 0; k < sizeof(candidates) / sizeof(candidates[0]); k++) {
                struct sniff_result r;
                memset(&r, 0, sizeof(r));
                enum verdict v = candidates[k](buf, len, final, &r);
                if (v == V_YES) {
                        *result = r;
                        return SNIFF_DONE;
                }
                if (v == V_MORE)
                        more = true;
        }
        if (more)
                return SNIFF_NEED_MORE;
        result->proto = PROTO_TCP;
        return SNIFF_DONE;
}
