/* SPDX-License-Identifier: Apache-2.0 */
/* HTTP/1.1 message heads and chunked bodies (RFC 9110, RFC 9112).
 *
 * Incremental, zero-copy, non-allocating. The caller keeps the bytes of a
 * connection in one buffer that grows as they arrive and calls
 * http1_parse_request_head() / http1_parse_response_head() with the whole
 * buffer each time; the parser remembers how far it has scanned, so feeding
 * byte by byte costs O(n) in total. When the head is complete the return
 * value is its length; the parsed views (method, target, header names and
 * values) then point into the caller's buffer and stay valid while it is not
 * moved or changed.
 *
 * Return value of the head parsers:
 *   > 0   the head is complete; the value is its length in bytes (the body,
 *         or the next pipelined message, starts there)
 *   0     need more bytes (the head so far is within every bound)
 *   -EPROTO the head is malformed or over a bound: msg->error says why,
 *         http1_error_str() gives a one-line text and http1_error_status()
 *         the status code a server answers with (400, 414, 431, 501, 505).
 *
 * Framing is strict to rule out request smuggling: Content-Length together
 * with Transfer-Encoding, differing Content-Length values, a signed or
 * spaced length, obs-fold, bare CR or LF, NUL or other controls in a field,
 * and (in requests) any transfer coding other than one final "chunked" are
 * errors.
 *
 * Bodies: msg->body says how the body is framed. A chunked body is decoded
 * by struct http1_chunked, which streams: it never holds more than its
 * small state, and reports payload ranges inside the bytes it is fed. */
#ifndef SHUNT_HTTP_HTTP1_H
#define SHUNT_HTTP_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

struct strbuf;

/* Hard capacity of the header table in struct http1_msg; limits.max_headers
 * may be lower, never higher. */
#define HTTP1_HEADERS_CAP 128

#define HTTP1_DEFAULT_MAX_HEAD      (64 * 1024)
#define HTTP1_DEFAULT_MAX_LINE      (16 * 1024)
#define HTTP1_DEFAULT_MAX_HEADERS   100
#define HTTP1_DEFAULT_MAX_CHUNK_EXT 1024
#define HTTP1_DEFAULT_MAX_TRAILER   (16 * 1024)

struct http1_limits {
        size_t max_head;      /* whole head incl. request/status line and final CRLF */
        size_t max_line;      /* one line without its CRLF */
        size_t max_headers;   /* header field lines, at most HTTP1_HEADERS_CAP */
        size_t max_chunk_ext; /* bytes after the chunk size up to its CRLF */
        size_t max_trailer;   /* whole trailer section of a chunked body */
};

/* Fills in the defaults above. */
void http1_limits_default(struct http1_limits *lim);

enum http1_error {
        HTTP1_OK = 0,
        HTTP1_E_REQUEST_LINE,      /* malformed request line (method, spaces, target) */
        HTTP1_E_STATUS_LINE,       /* malformed status line or status code */
        HTTP1_E_VERSION,           /* not HTTP/1.x → 505 */
        HTTP1_E_LINE_TOO_LONG,     /* request line over max_line → 414 */
        HTTP1_E_HEAD_TOO_LARGE,    /* head over max_head or a field line over max_line → 431 */
        HTTP1_E_TOO_MANY_HEADERS,  /* more than max_headers field lines → 431 */
        HTTP1_E_LINE_ENDING,       /* bare CR or bare LF */
        HTTP1_E_OBS_FOLD,          /* a field line starting with SP or HTAB */
        HTTP1_E_HEADER_NAME,       /* empty or non-token field name, space before ':' */
        HTTP1_E_HEADER_VALUE,      /* NUL or other control byte in a field value */
        HTTP1_E_CONTENT_LENGTH,    /* Content-Length not 1*DIGIT or too large */
        HTTP1_E_CL_CONFLICT,       /* Content-Length values differ */
        HTTP1_E_CL_AND_TE,         /* both Content-Length and Transfer-Encoding */
        HTTP1_E_TE_NOT_CHUNKED,    /* request transfer coding list not ending in one chunked */
        HTTP1_E_TE_UNSUPPORTED,    /* request transfer coding other than chunked → 501 */
        HTTP1_E_TE_HTTP10,         /* Transfer-Encoding in an HTTP/1.0 request */
        HTTP1_E_MISSING_HOST,      /* HTTP/1.1 request without Host */
        HTTP1_E_BAD_HOST,          /* several Host fields or an invalid Host value */
        HTTP1_E_CHUNK_SIZE,        /* chunk size not hex, empty or overflowing */
        HTTP1_E_CHUNK_EXT,         /* chunk extension too long or with control bytes */
        HTTP1_E_CHUNK_CRLF,        /* chunk size line or chunk data not ended by CRLF */
        HTTP1_E_TRAILER,           /* malformed trailer field line */
        HTTP1_E_TRAILER_TOO_LARGE, /* trailer section over max_trailer */
        HTTP1_E_TRAILER_FORBIDDEN, /* a trailer field that frames, routes or authorizes */
        HTTP1_E_COUNT
};

/* One-line text for an error ("both Content-Length and Transfer-Encoding"). */
const char *http1_error_str(enum http1_error e);
/* Status code a server answers a request with this error with: 400, 414,
 * 431, 501 or 505 (0 for HTTP1_OK). */
int http1_error_status(enum http1_error e);

enum http1_method {
        HTTP1_M_OTHER = 0, /* any other token: see msg->method_str */
        HTTP1_M_GET,
        HTTP1_M_HEAD,
        HTTP1_M_POST,
        HTTP1_M_PUT,
        HTTP1_M_DELETE,
        HTTP1_M_CONNECT,
        HTTP1_M_OPTIONS,
        HTTP1_M_TRACE,
        HTTP1_M_PATCH,
};

enum http1_target_form {
        HTTP1_T_ORIGIN = 0, /* /path?query */
        HTTP1_T_ABSOLUTE,   /* http://host/path */
        HTTP1_T_AUTHORITY,  /* host:port (CONNECT) */
        HTTP1_T_ASTERISK,   /* * (OPTIONS) */
};

enum http1_body {
        HTTP1_BODY_NONE = 0,
        HTTP1_BODY_LENGTH,      /* content_length bytes (> 0) */
        HTTP1_BODY_CHUNKED,     /* decode with struct http1_chunked */
        HTTP1_BODY_UNTIL_CLOSE, /* responses only: body ends when the server closes */
};

/* A view into the caller's buffer; not NUL-terminated. */
struct http1_slice {
        const char *p;
        size_t n;
};

struct http1_header {
        struct http1_slice name;  /* as sent (case kept) */
        struct http1_slice value; /* without leading/trailing SP/HTAB */
};

/* A request or a response head. Reset it (http1_msg_reset) before parsing
 * a new message; between calls for the same message do not touch it. */
struct http1_msg {
        /* result, valid once the parser returned > 0 */
        bool is_request;
        enum http1_method method;      /* requests */
        struct http1_slice method_str; /* requests */
        struct http1_slice target;     /* requests */
        enum http1_target_form form;   /* requests */
        struct http1_slice authority;  /* requests: absolute-form or authority-form host[:port] */
        int status;                    /* responses */
        struct http1_slice reason;     /* responses */
        int version_minor;             /* 0 for HTTP/1.0, 1 for HTTP/1.1 and above */
        size_t nheaders;
        struct http1_header headers[HTTP1_HEADERS_CAP];
        struct http1_slice host; /* requests: the Host value (may be empty for 1.0) */
        enum http1_body body;
        uint64_t content_length; /* HTTP1_BODY_LENGTH */
        bool keep_alive;         /* the connection may carry another message after this one */
        bool expect_continue;    /* request: Expect: 100-continue (HTTP/1.1 only) */
        bool upgrade;            /* Upgrade header listed in Connection (or a 101 response) */
        size_t head_len;
        enum http1_error error;

        /* scanner state (private) */
        size_t scan;       /* bytes examined so far */
        size_t line_start; /* start of the line being scanned */
        size_t lines;      /* non-empty lines seen */
        bool cr;           /* the previous byte was CR */
        bool started;      /* saw the first non-empty line */
};

void http1_msg_reset(struct http1_msg *msg);

/* lim may be NULL for the defaults. */
int http1_parse_request_head(const char *buf, size_t len, const struct http1_limits *lim,
                             struct http1_msg *req);
/* req_method is the method of the request this answers (HEAD and CONNECT
 * change the body framing). */
int http1_parse_response_head(const char *buf, size_t len, const struct http1_limits *lim,
                              enum http1_method req_method, struct http1_msg *resp);

/* ---- header helpers (case-insensitive names) ---- */

/* ASCII case-insensitive comparison of n bytes. */
bool http1_mem_eq_ci(const char *a, const char *b, size_t n);
/* s equals lit: exact bytes, or ASCII case-insensitive. Inline, so that a
 * literal's length is a constant and most names differ by length alone. */
static inline bool http1_slice_eq(struct http1_slice s, const char *lit)
{
        size_t n = strlen(lit);
        return s.n == n && memcmp(s.p, lit, n) == 0;
}
static inline bool http1_slice_eq_ci(struct http1_slice s, const char *lit)
{
        size_t n = strlen(lit);
        return s.n == n && http1_mem_eq_ci(s.p, lit, n);
}
/* Character classes for writers that build heads: s[0..n) is a non-empty
 * token (RFC 9110 5.6.2: methods, field names); visible ASCII without blanks
 * (request targets); a Host value (RFC 3986 host[:port], no userinfo). */
bool http1_is_token(const char *s, size_t n);
bool http1_is_visible(const char *s, size_t n);
bool http1_is_host(const char *s, size_t n);
/* The value of a hex digit (chunk sizes, percent escapes), or -1. */
int http1_hex_digit(unsigned char c);
/* True when the comma-separated list in s holds token (case-insensitive). */
bool http1_list_has(struct http1_slice s, const char *token);

/* Index of the first header named name at index >= from, or -1. Loop with
 * from = previous + 1 to visit all of them. */
int http1_header_find(const struct http1_msg *msg, const char *name, size_t from);
/* Value of the first header named name: 0 or -ENOENT. */
int http1_header_get(const struct http1_msg *msg, const char *name, struct http1_slice *value);
/* True when an X-Request-ID header with a non-empty value is present. */
bool http1_has_request_id(const struct http1_msg *msg);
/* Value of cookie name in the request's Cookie header(s): 0 or -ENOENT. */
int http1_cookie_get(const struct http1_msg *msg, const char *name, struct http1_slice *value);

enum http1_key_source {
        HTTP1_KEY_HEADER = 0, /* a header (X-Request-Key by default) */
        HTTP1_KEY_COOKIE,     /* a cookie */
};
#define HTTP1_DEFAULT_KEY_HEADER "X-Request-Key"

/* The consistent-hash key of a request: the value of header or cookie name
 * (NULL → X-Request-Key for headers). 0 or -ENOENT when absent or empty (the
 * caller then falls back, e.g. to the source address). */
int http1_hash_key(const struct http1_msg *req, enum http1_key_source src, const char *name,
                   struct http1_slice *key);

/* True for the hop-by-hop fields a proxy never forwards: Connection,
 * Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade, and any field named in
 * a Connection header of msg except Host, Content-Length and
 * Transfer-Encoding (those frame the message and are always forwarded). */
bool http1_is_hop_by_hop(const struct http1_msg *msg, struct http1_slice name);

/* ---- writing heads when forwarding ---- */

struct http1_forward {
        const char *request_id;         /* add X-Request-ID: <this> when absent (NULL: don't) */
        const char *default_host;       /* Host for a request without one and without an authority
                                           in its target (NULL: empty Host) */
        const struct http1_header *add; /* extra fields appended as given */
        size_t nadd;
        const char *const *drop; /* fields not forwarded (case-insensitive names) */
        size_t ndrop;
        bool keep_upgrade;  /* forward Upgrade and send Connection: upgrade (msg->upgrade) */
        bool close;         /* send Connection: close */
        const char *target; /* request: written instead of the request's target (NULL: kept) */
};

/* Writes the request head (request line as HTTP/1.1, fields without the
 * hop-by-hop ones, Transfer-Encoding and Content-Length kept because the body
 * is forwarded with its framing unchanged, a Host when the request had none,
 * then the additions) into out. Normalised on the way: an absolute-form
 * target goes out in origin form with Host set to its authority (RFC 9112
 * 3.2.2: a recipient uses the target's authority, never a differing Host);
 * a Content-Length list ("5, 5") goes out as one value; X-Request-ID is
 * added when the request has none that is forwarded (one that Connection
 * nominates is not).
 * Returns 0, or -ENOSPC when out is fixed and too small, -ENOMEM when it
 * could not grow. */
int http1_write_request_head(const struct http1_msg *req, const struct http1_forward *fw,
                             struct strbuf *out);
/* The same for a response head (status line as HTTP/1.1). */
int http1_write_response_head(const struct http1_msg *resp, const struct http1_forward *fw,
                              struct strbuf *out);

/* The reason phrase of a status code ("Not Found"); for codes not listed,
 * one by class ("OK", "Client Error", "Server Error"). */
const char *http1_status_text(int status);

/* A complete short response a proxy generates itself (400, 431, 503, 504,
 * ...): status line, Content-Type: text/plain, X-Shunt-Reason: <reason> (one
 * line, control bytes replaced by spaces), Retry-After when retry_after_s > 0,
 * Connection: close, Content-Length and the reason as body. 0 or -ENOSPC/-ENOMEM. */
int http1_write_error_response(struct strbuf *out, int status, const char *reason,
                               unsigned retry_after_s);
/* The same with X-Request-ID: <request_id> (NULL or "": none; a value with
 * bytes other than visible ASCII is left out). */
int http1_write_error_response_id(struct strbuf *out, int status, const char *reason,
                                  unsigned retry_after_s, const char *request_id);

/* ---- chunked body decoder ---- */

struct http1_chunked {
        int state;
        uint64_t remaining;  /* data bytes left in the current chunk */
        size_t digits;       /* hex digits of the current size */
        size_t ext_len;      /* bytes of the current extension */
        size_t trailer_len;  /* bytes of the trailer section */
        size_t line_len;     /* bytes of the current trailer line */
        bool line_has_colon; /* current trailer line: ':' seen after a valid name */
        bool line_bad_name;  /* current trailer line: non-token byte before ':' */
        char name[24];       /* current trailer field name, lower case, for the forbidden ones */
        size_t max_chunk_ext;
        size_t max_trailer;
        enum http1_error error;
};

/* lim may be NULL for the defaults. */
void http1_chunked_init(struct http1_chunked *c, const struct http1_limits *lim);

/* Feeds bytes of a chunked body. Consumes at most len bytes and stops after
 * the first run of payload bytes so the caller can forward them: returns the
 * number of bytes consumed (>= 0), and sets *data_off and *data_len to the
 * payload range inside buf[0..consumed) (data_len 0 when there is none).
 * Call again with the rest. When http1_chunked_done() turns true the message
 * ended exactly at the consumed position (bytes after it belong to the next
 * message and are not consumed). -EPROTO on malformed input (c->error). */
ssize_t http1_chunked_feed(struct http1_chunked *c, const char *buf, size_t len, size_t *data_off,
                           size_t *data_len);
bool http1_chunked_done(const struct http1_chunked *c);

#endif
