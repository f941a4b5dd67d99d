// SPDX-License-Identifier: Apache-2.0
/* HTTP/1.1 head parser, chunked decoder and head writer (see http1.h). */
#include "http/http1.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "core/strbuf.h"

#define COMP "http1"

void http1_limits_default(struct http1_limits *lim)
{
        lim->max_head = HTTP1_DEFAULT_MAX_HEAD;
        lim->max_line = HTTP1_DEFAULT_MAX_LINE;
        lim->max_headers = HTTP1_DEFAULT_MAX_HEADERS;
        lim->max_chunk_ext = HTTP1_DEFAULT_MAX_CHUNK_EXT;
        lim->max_trailer = HTTP1_DEFAULT_MAX_TRAILER;
}

static const struct {
        const char *text;
        int status;
} errors[HTTP1_E_COUNT] = {
    [HTTP1_OK] = {"ok", 0},
    [HTTP1_E_REQUEST_LINE] = {"malformed request line", 400},
    [HTTP1_E_STATUS_LINE] = {"malformed status line", 502},
    [HTTP1_E_VERSION] = {"unsupported HTTP version", 505},
    [HTTP1_E_LINE_TOO_LONG] = {"request line too long", 414},
    [HTTP1_E_HEAD_TOO_LARGE] = {"header section too large", 431},
    [HTTP1_E_TOO_MANY_HEADERS] = {"too many header fields", 431},
    [HTTP1_E_LINE_ENDING] = {"bare CR or LF", 400},
    [HTTP1_E_OBS_FOLD] = {"obsolete line folding", 400},
    [HTTP1_E_HEADER_NAME] = {"invalid header field name", 400},
    [HTTP1_E_HEADER_VALUE] = {"invalid byte in header field value", 400},
    [HTTP1_E_CONTENT_LENGTH] = {"invalid Content-Length", 400},
    [HTTP1_E_CL_CONFLICT] = {"conflicting Content-Length values", 400},
    [HTTP1_E_CL_AND_TE] = {"both Content-Length and Transfer-Encoding", 400},
    [HTTP1_E_TE_NOT_CHUNKED] = {"Transfer-Encoding does not end in one chunked", 400},
    [HTTP1_E_TE_UNSUPPORTED] = {"unsupported transfer coding", 501},
    [HTTP1_E_TE_HTTP10] = {"Transfer-Encoding in an HTTP/1.0 request", 400},
    [HTTP1_E_MISSING_HOST] = {"missing Host header", 400},
    [HTTP1_E_BAD_HOST] = {"invalid or repeated Host header", 400},
    [HTTP1_E_CHUNK_SIZE] = {"invalid chunk size", 400},
    [HTTP1_E_CHUNK_EXT] = {"invalid or too long chunk extension", 400},
    [HTTP1_E_CHUNK_CRLF] = {"chunk not terminated by CRLF", 400},
    [HTTP1_E_TRAILER] = {"malformed trailer field", 400},
    [HTTP1_E_TRAILER_TOO_LARGE] = {"trailer section too large", 431},
    [HTTP1_E_TRAILER_FORBIDDEN] = {"framing, routing or authorization field in a trailer", 400},
};

const char *http1_error_str(enum http1_error e)
{
        if ((unsigned)e >= HTTP1_E_COUNT)
                return "unknown error";
        return errors[e].text;
}

int http1_error_status(enum http1_error e)
{
        if ((unsigned)e >= HTTP1_E_COUNT)
                return 400;
        return errors[e].status;
}

/* ---- character classes (RFC 9110 5.6.2, 5.5) ---- */

/* One table for the two classes every byte of a head is checked against. */
enum { CC_VALUE = 1, CC_TCHAR = 2, CC_BOTH = CC_VALUE | CC_TCHAR };
static const uint8_t char_class[256] = {
    ['\t'] = CC_VALUE,        [' '] = CC_VALUE,
    ['!'] = CC_BOTH,          ['"'] = CC_VALUE,
    ['#' ... '\''] = CC_BOTH, ['(' ... ')'] = CC_VALUE,
    ['*' ... '+'] = CC_BOTH,  [','] = CC_VALUE,
    ['-' ... '.'] = CC_BOTH,  ['/'] = CC_VALUE,
    ['0' ... '9'] = CC_BOTH,  [':' ... '@'] = CC_VALUE,
    ['A' ... 'Z'] = CC_BOTH,  ['[' ... ']'] = CC_VALUE,
    ['^' ... 'z'] = CC_BOTH,  ['{'] = CC_VALUE,
    ['|'] = CC_BOTH,          ['}'] = CC_VALUE,
    ['~'] = CC_BOTH,          [0x80 ... 0xff] = CC_VALUE,
};

/* token characters (RFC 9110 5.6.2) */
static inline bool is_tchar(unsigned char c)
{
        return char_class[c] & CC_TCHAR;
}

/* field-vchar / SP / HTAB, obs-text allowed */
static inline bool is_value_char(unsigned char c)
{
        return char_class[c] & CC_VALUE;
}

static bool is_ows(char c)
{
        return c == ' ' || c == '\t';
}

bool http1_mem_eq_ci(const char *a, const char *b, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
                if (x != y && ((x | 0x20) != (y | 0x20) || (unsigned char)((x | 0x20) - 'a') > 25))
                        return false;
        }
        return true;
}

static struct http1_slice trim(const char *p, size_t n)
{
        while (n && is_ows(p[0])) {
                p++;
                n--;
        }
        while (n && is_ows(p[n - 1]))
                n--;
        return (struct http1_slice){p, n};
}

/* Iterates the elements of a comma-separated list (RFC 9110 5.6.1), skipping
 * empty ones. *pos is the cursor; returns false at the end. */
static bool list_next(struct http1_slice list, size_t *pos, struct http1_slice *elem)
{
        while (*pos < list.n) {
                size_t start = *pos;
                const char *comma = memchr(list.p + start, ',', list.n - start);
                size_t end = comma ? (size_t)(comma - list.p) : list.n;
                *pos = comma ? end + 1 : list.n;
                *elem = trim(list.p + start, end - start);
                if (elem->n)
                        return true;
        }
        return false;
}

bool http1_list_has(struct http1_slice s, const char *token)
{
        size_t pos = 0;
        struct http1_slice e;
        while (list_next(s, &pos, &e))
                if (http1_slice_eq_ci(e, token))
                        return true;
        return false;
}

void http1_msg_reset(struct http1_msg *msg)
{
        /* Only the small fields: the header table is rewritten by the parser. */
        memset(msg, 0, offsetof(struct http1_msg, headers));
        msg->nheaders = 0;
        memset(&msg->host, 0, sizeof(*msg) - offsetof(struct http1_msg, host));
}

/* ---- incremental scanner: finds the end of the head, checks bounds ---- */

static int fail(struct http1_msg *m, enum http1_error e, size_t at)
{
        m->error = e;
        log_debug(COMP, 0, "%s head rejected at byte %zu: %s",
                  m->is_request ? "request" : "response", at, http1_error_str(e));
        return -EPROTO;
}

/* Fails the byte at i of a line: over the head's or the line's limit. */
static int scan_limit(struct http1_msg *m, const struct http1_limits *lim, size_t i)
{
        if (i >= lim->max_head)
                return fail(m, HTTP1_E_HEAD_TOO_LARGE, i);
        if (!m->started && m->is_request)
                return fail(m, HTTP1_E_LINE_TOO_LONG, i);
        return fail(m, HTTP1_E_HEAD_TOO_LARGE, i);
}

/* Returns 1 when the head ends at m->head_len, 0 for more, -EPROTO. Lines
 * are found with memchr; the bytes between are checked by the parser. */
static int scan(const char *buf, size_t len, const struct http1_limits *lim, struct http1_msg *m)
{
        size_t i = m->scan;
        while (i < len) {
                if (i >= lim->max_head)
                        return fail(m, HTTP1_E_HEAD_TOO_LARGE, i);
                if (m->cr) {
                        if (buf[i] != '\n')
                                return fail(m, HTTP1_E_LINE_ENDING, i);
                        m->cr = false;
                        size_t line_len = i - 1 - m->line_start;
                        if (line_len == 0) {
                                if (m->started) {
                                        m->head_len = i + 1;
                                        m->scan = i + 1;
                                        return 1;
                                }
                                /* An empty line before the start line is
                                 * ignored (RFC 9112 2.2). */
                        } else {
                                m->started = true;
                                m->lines++;
                                if (m->lines - 1 > lim->max_headers)
                                        return fail(m, HTTP1_E_TOO_MANY_HEADERS, i);
                        }
                        m->line_start = ++i;
                        continue;
                }
                /* Bytes i..stop are the line's own up to its CR (or a bare
                 * LF, or the end of what has arrived). */
                const char *cr = memchr(buf + i, '\r', len - i);
                size_t stop = cr ? (size_t)(cr - buf) : len;
                const char *lf = memchr(buf + i, '\n', stop - i);
                if (lf)
                        stop = (size_t)(lf - buf);
                size_t first_bad = lim->max_head;
                if (lim->max_line < first_bad - m->line_start && m->line_start < first_bad)
                        first_bad = m->line_start + lim->max_line;
                if (first_bad < i)
                        first_bad = i;
                if (first_bad < stop || (stop < len && stop >= lim->max_head))
                        return scan_limit(m, lim, first_bad < stop ? first_bad : stop);
                if (stop == len) {
                        i = len;
                        break;
                }
                if (lf)
                        return fail(m, HTTP1_E_LINE_ENDING, stop);
                m->cr = true;
                i = stop + 1;
        }
        m->scan = i;
        return 0;
}

/* ---- start lines ---- */

/* "HTTP/" DIGIT "." DIGIT */
static int parse_version(const char *p, size_t n, int *minor, bool *major_ok)
{
        if (n != 8 || memcmp(p, "HTTP/", 5) != 0 || p[6] != '.' || p[5] < '0' || p[5] > '9' ||
            p[7] < '0' || p[7] > '9')
                return -1;
        *major_ok = p[5] == '1';
        *minor = p[7] == '0' ? 0 : 1;
        return 0;
}

static const struct {
        const char *name;
        enum http1_method m;
} methods[] = {
    {"GET", HTTP1_M_GET},         {"HEAD", HTTP1_M_HEAD},     {"POST", HTTP1_M_POST},
    {"PUT", HTTP1_M_PUT},         {"DELETE", HTTP1_M_DELETE}, {"CONNECT", HTTP1_M_CONNECT},
    {"OPTIONS", HTTP1_M_OPTIONS}, {"TRACE", HTTP1_M_TRACE},   {"PATCH", HTTP1_M_PATCH},
};

static bool is_target_char(unsigned char c)
{
        return c > 0x20 && c < 0x7f;
}

/* RFC 3986 host [":" port]: unreserved, pct-encoded, sub-delims but ',', ':'
 * and the IP-literal brackets. No userinfo ('@'), path, query or space. */
static bool is_host_char(unsigned char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c && strchr("-._~%!$&'()*+;=:[]", c) != NULL);
}

bool http1_is_token(const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (!is_tchar((unsigned char)s[i]))
                        return false;
        return n > 0;
}

bool http1_is_visible(const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (!is_target_char((unsigned char)s[i]))
                        return false;
        return n > 0;
}

bool http1_is_host(const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (!is_host_char((unsigned char)s[i]))
                        return false;
        return true;
}

static int parse_request_line(const char *p, size_t n, struct http1_msg *m, size_t off)
{
        const char *sp1 = memchr(p, ' ', n);
        if (!sp1 || sp1 == p)
                return fail(m, HTTP1_E_REQUEST_LINE, off);
        size_t mlen = (size_t)(sp1 - p);
        for (size_t i = 0; i < mlen; i++)
                if (!is_tchar((unsigned char)p[i]))
                        return fail(m, HTTP1_E_REQUEST_LINE, off + i);
        m->method_str = (struct http1_slice){p, mlen};
        m->method = HTTP1_M_OTHER;
        for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
                if (http1_slice_eq(m->method_str, methods[i].name))
                        m->method = methods[i].m;

        const char *t = sp1 + 1;
        size_t rest = n - mlen - 1;
        const char *sp2 = memchr(t, ' ', rest);
        if (!sp2 || sp2 == t)
                return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1);
        size_t tlen = (size_t)(sp2 - t);
        for (size_t i = 0; i < tlen; i++)
                if (!is_target_char((unsigned char)t[i]))
                        return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1 + i);
        m->target = (struct http1_slice){t, tlen};

        const char *v = sp2 + 1;
        size_t vlen = rest - tlen - 1;
        bool major_ok;
        if (parse_version(v, vlen, &m->version_minor, &major_ok) < 0)
                return fail(m,
                            vlen >= 5 && memcmp(v, "HTTP/", 5) == 0 && !memchr(v, ' ', vlen)
                                ? HTTP1_E_VERSION
                                : HTTP1_E_REQUEST_LINE,
                            off + (size_t)(v - p));
        if (!major_ok)
                return fail(m, HTTP1_E_VERSION, off + (size_t)(v - p));

        /* Target form (RFC 9112 3.2). */
        if (m->method == HTTP1_M_CONNECT) {
                /* authority-form: host ":" port, nothing else */
                const char *colon = memrchr(t, ':', tlen);
                if (!colon || colon == t || colon + 1 == t + tlen || t[0] == '/' ||
                    memchr(t, '/', tlen) || memchr(t, '@', tlen))
                        return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1);
                for (const char *q = colon + 1; q < t + tlen; q++)
                        if (*q < '0' || *q > '9')
                                return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1);
                m->form = HTTP1_T_AUTHORITY;
                m->authority = m->target;
        } else if (tlen == 1 && t[0] == '*') {
                if (m->method != HTTP1_M_OPTIONS)
                        return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1);
                m->form = HTTP1_T_ASTERISK;
        } else if (t[0] == '/') {
                m->form = HTTP1_T_ORIGIN;
        } else {
                /* absolute-form: scheme "://" authority [path] */
                size_t i = 0;
                if (!((t[0] >= 'a' && t[0] <= 'z') || (t[0] >= 'A' && t[0] <= 'Z')))
                        return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1);
                while (i < tlen &&
                       (((t[i] | 0x20) >= 'a' && (t[i] | 0x20) <= 'z') ||
                        (t[i] >= '0' && t[i] <= '9') || t[i] == '+' || t[i] == '-' || t[i] == '.'))
                        i++;
                if (tlen - i < 3 || memcmp(t + i, "://", 3) != 0)
                        return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1);
                size_t a = i + 3, e = a;
                while (e < tlen && t[e] != '/' && t[e] != '?' && t[e] != '#')
                        e++;
                if (e == a)
                        return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1);
                /* No userinfo (RFC 9110 4.2.4): it goes out as the Host. */
                for (size_t k = a; k < e; k++)
                        if (!is_host_char((unsigned char)t[k]))
                                return fail(m, HTTP1_E_REQUEST_LINE, off + mlen + 1 + k);
                m->form = HTTP1_T_ABSOLUTE;
                m->authority = (struct http1_slice){t + a, e - a};
        }
        return 0;
}

static int parse_status_line(const char *p, size_t n, struct http1_msg *m, size_t off)
{
        if (n < 12 || p[8] != ' ')
                return fail(m,
                            n >= 8 && memcmp(p, "HTTP/", 5) == 0 && p[5] != '1'
                                ? HTTP1_E_VERSION
                                : HTTP1_E_STATUS_LINE,
                            off);
        bool major_ok;
        if (parse_version(p, 8, &m->version_minor, &major_ok) < 0)
                return fail(m, HTTP1_E_STATUS_LINE, off);
        if (!major_ok)
                return fail(m, HTTP1_E_VERSION, off);
        int st = 0;
        for (int i = 9; i < 12; i++) {
                if (p[i] < '0' || p[i] > '9')
                        return fail(m, HTTP1_E_STATUS_LINE, off + (size_t)i);
                st = st * 10 + (p[i] - '0');
        }
        if (st < 100 || st > 599)
                return fail(m, HTTP1_E_STATUS_LINE, off + 9);
        m->status = st;
        if (n == 12) {
                m->reason = (struct http1_slice){p + 12, 0};
                return 0;
        }
        if (p[12] != ' ')
                return fail(m, HTTP1_E_STATUS_LINE, off + 12);
        for (size_t i = 13; i < n; i++)
                if (!is_value_char((unsigned char)p[i]))
                        return fail(m, HTTP1_E_STATUS_LINE, off + i);
        m->reason = (struct http1_slice){p + 13, n - 13};
        return 0;
}

/* ---- field lines ---- */

static int parse_field(const char *p, size_t n, struct http1_msg *m, size_t off)
{
        if (is_ows(p[0]))
                return fail(m, HTTP1_E_OBS_FOLD, off);
        size_t i = 0;
        while (i < n && p[i] != ':') {
                if (!is_tchar((unsigned char)p[i]))
                        return fail(m, HTTP1_E_HEADER_NAME, off + i);
                i++;
        }
        if (i == 0 || i == n)
                return fail(m, HTTP1_E_HEADER_NAME, off + i);
        for (size_t j = i + 1; j < n; j++)
                if (!is_value_char((unsigned char)p[j]))
                        return fail(m, HTTP1_E_HEADER_VALUE, off + j);
        struct http1_header *h = &m->headers[m->nheaders++];
        h->name = (struct http1_slice){p, i};
        h->value = trim(p + i + 1, n - i - 1);
        return 0;
}

/* Content-Length: 1*DIGIT, or a list of identical values (RFC 9110 8.6).
 * No sign, no inner spaces, no empty elements. */
static int content_length(struct http1_msg *m, struct http1_slice v, bool *seen, size_t off)
{
        size_t pos = 0;
        for (;;) {
                const char *comma = pos < v.n ? memchr(v.p + pos, ',', v.n - pos) : NULL;
                size_t end = comma ? (size_t)(comma - v.p) : v.n;
                struct http1_slice e = trim(v.p + pos, end - pos);
                if (e.n == 0)
                        return fail(m, HTTP1_E_CONTENT_LENGTH, off);
                uint64_t n = 0;
                for (size_t i = 0; i < e.n; i++) {
                        if (e.p[i] < '0' || e.p[i] > '9')
                                return fail(m, HTTP1_E_CONTENT_LENGTH, off);
                        /* keep lengths below 2^62 so offsets never wrap */
                        if (n > ((UINT64_MAX >> 2) - 9) / 10)
                                return fail(m, HTTP1_E_CONTENT_LENGTH, off);
                        n = n * 10 + (uint64_t)(e.p[i] - '0');
                }
                if (*seen && n != m->content_length)
                        return fail(m, HTTP1_E_CL_CONFLICT, off);
                *seen = true;
                m->content_length = n;
                if (!comma)
                        return 0;
                pos = end + 1;
        }
}

struct te_state {
        bool seen;
        bool chunked_last;
        size_t chunked_count;
        bool other;
};

static void transfer_encoding(struct te_state *te, struct http1_slice v)
{
        size_t pos = 0;
        struct http1_slice e;
        te->seen = true;
        while (list_next(v, &pos, &e)) {
                if (http1_slice_eq_ci(e, "chunked")) {
                        te->chunked_count++;
                        te->chunked_last = true;
                } else {
                        te->other = true;
                        te->chunked_last = false;
                }
        }
}

static int parse_head(const char *buf, const struct http1_limits *lim, struct http1_msg *m,
                      enum http1_method req_method)
{
        (void)lim;
        size_t pos = 0;
        /* Skip leading empty lines. */
        while (buf[pos] == '\r')
                pos += 2;
        const char *line = buf + pos;
        const char *eol = memchr(line, '\r', m->head_len - pos);
        size_t n = (size_t)(eol - line);
        int rc = m->is_request ? parse_request_line(line, n, m, pos)
                               : parse_status_line(line, n, m, pos);
        if (rc < 0)
                return rc;
        pos += n + 2;

        bool cl_seen = false, host_seen = false;
        struct te_state te = {0};
        bool conn_close = false, conn_keep = false, conn_upgrade = false, has_upgrade = false;
        m->nheaders = 0;
        while (pos + 2 < m->head_len) {
                line = buf + pos;
                eol = memchr(line, '\r', m->head_len - pos);
                n = (size_t)(eol - line);
                if (m->nheaders >= HTTP1_HEADERS_CAP)
                        return fail(m, HTTP1_E_TOO_MANY_HEADERS, pos);
                if ((rc = parse_field(line, n, m, pos)) < 0)
                        return rc;
                const struct http1_header *h = &m->headers[m->nheaders - 1];
                if (http1_slice_eq_ci(h->name, "Content-Length")) {
                        if ((rc = content_length(m, h->value, &cl_seen, pos)) < 0)
                                return rc;
                } else if (http1_slice_eq_ci(h->name, "Transfer-Encoding")) {
                        transfer_encoding(&te, h->value);
                } else if (http1_slice_eq_ci(h->name, "Connection")) {
                        conn_close |= http1_list_has(h->value, "close");
                        conn_keep |= http1_list_has(h->value, "keep-alive");
                        conn_upgrade |= http1_list_has(h->value, "upgrade");
                } else if (http1_slice_eq_ci(h->name, "Upgrade")) {
                        has_upgrade = h->value.n > 0;
                } else if (m->is_request && http1_slice_eq_ci(h->name, "Host")) {
                        if (host_seen)
                                return fail(m, HTTP1_E_BAD_HOST, pos);
                        host_seen = true;
                        for (size_t i = 0; i < h->value.n; i++)
                                if (!is_host_char((unsigned char)h->value.p[i]))
                                        return fail(m, HTTP1_E_BAD_HOST, pos);
                        m->host = h->value;
                } else if (m->is_request && http1_slice_eq_ci(h->name, "Expect")) {
                        if (m->version_minor >= 1 && http1_slice_eq_ci(h->value, "100-continue"))
                                m->expect_continue = true;
                }
                pos += n + 2;
        }

        if (m->version_minor >= 1)
                m->keep_alive = !conn_close;
        else
                m->keep_alive = conn_keep && !conn_close;
        m->upgrade = has_upgrade && conn_upgrade;

        if (m->is_request) {
                if (m->version_minor >= 1 && !host_seen)
                        return fail(m, HTTP1_E_MISSING_HOST, 0);
                if (te.seen) {
                        if (cl_seen)
                                return fail(m, HTTP1_E_CL_AND_TE, 0);
                        if (m->version_minor == 0)
                                return fail(m, HTTP1_E_TE_HTTP10, 0);
                        if (!te.chunked_last || te.chunked_count != 1)
                                return fail(m, HTTP1_E_TE_NOT_CHUNKED, 0);
                        if (te.other)
                                return fail(m, HTTP1_E_TE_UNSUPPORTED, 0);
                        m->body = HTTP1_BODY_CHUNKED;
                } else if (cl_seen && m->content_length > 0) {
                        m->body = HTTP1_BODY_LENGTH;
                } else {
                        m->body = HTTP1_BODY_NONE;
                }
                return 0;
        }

        /* Responses (RFC 9112 6.3). */
        if (m->status == 101)
                m->upgrade = true;
        if (te.seen && cl_seen)
                return fail(m, HTTP1_E_CL_AND_TE, 0);
        if (req_method == HTTP1_M_HEAD || m->status < 200 || m->status == 204 || m->status == 304 ||
            (req_method == HTTP1_M_CONNECT && m->status < 300)) {
                m->body = HTTP1_BODY_NONE;
        } else if (te.seen) {
                if (te.chunked_last && te.chunked_count == 1 && m->version_minor >= 1) {
                        m->body = HTTP1_BODY_CHUNKED;
                } else {
                        m->body = HTTP1_BODY_UNTIL_CLOSE;
                        m->keep_alive = false;
                }
        } else if (cl_seen) {
                m->body = m->content_length ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
        } else {
                m->body = HTTP1_BODY_UNTIL_CLOSE;
                m->keep_alive = false;
        }
        return 0;
}

static int parse(const char *buf, size_t len, const struct http1_limits *lim, struct http1_msg *m,
                 bool request, enum http1_method req_method)
{
        struct http1_limits dflt;
        if (!lim) {
                http1_limits_default(&dflt);
                lim = &dflt;
        }
        if (m->error)
                return -EPROTO;
        if (m->head_len)
                return (int)m->head_len;
        m->is_request = request;
        if (lim->max_headers > HTTP1_HEADERS_CAP || lim->max_head > INT32_MAX) {
                log_error(COMP, 0,
                          "http1 limits out of range: max_headers %zu (cap %d), max_head %zu",
                          lim->max_headers, HTTP1_HEADERS_CAP, lim->max_head);
                m->error = HTTP1_E_TOO_MANY_HEADERS;
                return -EPROTO;
        }
        int rc = scan(buf, len, lim, m);
        if (rc <= 0)
                return rc;
        if ((rc = parse_head(buf, lim, m, req_method)) < 0) {
                m->head_len = 0;
                return rc;
        }
        return (int)m->head_len;
}

int http1_parse_request_head(const char *buf, size_t len, const struct http1_limits *lim,
                             struct http1_msg *req)
{
        return parse(buf, len, lim, req, true, HTTP1_M_OTHER);
}

int http1_parse_response_head(const char *buf, size_t len, const struct http1_limits *lim,
                              enum http1_method req_method, struct http1_msg *resp)
{
        return parse(buf, len, lim, resp, false, req_method);
}

/* ---- header helpers ---- */

int http1_header_find(const struct http1_msg *msg, const char *name, size_t from)
{
        for (size_t i = from; i < msg->nheaders; i++)
                if (http1_slice_eq_ci(msg->headers[i].name, name))
                        return (int)i;
        return -1;
}

int http1_header_get(const struct http1_msg *msg, const char *name, struct http1_slice *value)
{
        int i = http1_header_find(msg, name, 0);
        if (i < 0)
                return -ENOENT;
        *value = msg->headers[i].value;
        return 0;
}

bool http1_has_request_id(const struct http1_msg *msg)
{
        struct http1_slice v;
        return http1_header_get(msg, "X-Request-ID", &v) == 0 && v.n > 0;
}

/* Cookie: a=b; c=d (RFC 6265 4.2.1), tolerant of missing spaces. */
int http1_cookie_get(const struct http1_msg *msg, const char *name, struct http1_slice *value)
{
        size_t nlen = strlen(name);
        for (int i = http1_header_find(msg, "Cookie", 0); i >= 0;
             i = http1_header_find(msg, "Cookie", (size_t)i + 1)) {
                struct http1_slice v = msg->headers[i].value;
                size_t pos = 0;
                while (pos < v.n) {
                        const char *semi = memchr(v.p + pos, ';', v.n - pos);
                        size_t end = semi ? (size_t)(semi - v.p) : v.n;
                        struct http1_slice pair = trim(v.p + pos, end - pos);
                        pos = semi ? end + 1 : v.n;
                        const char *eq = memchr(pair.p, '=', pair.n);
                        if (!eq)
                                continue;
                        struct http1_slice k = trim(pair.p, (size_t)(eq - pair.p));
                        if (k.n != nlen || memcmp(k.p, name, nlen) != 0)
                                continue;
                        struct http1_slice val = trim(eq + 1, pair.n - (size_t)(eq - pair.p) - 1);
                        if (val.n >= 2 && val.p[0] == '"' && val.p[val.n - 1] == '"') {
                                val.p++;
                                val.n -= 2;
                        }
                        *value = val;
                        return 0;
                }
        }
        return -ENOENT;
}

int http1_hash_key(const struct http1_msg *req, enum http1_key_source src, const char *name,
                   struct http1_slice *key)
{
        struct http1_slice v;
        int rc;
        if (src == HTTP1_KEY_COOKIE) {
                if (!name)
                        return -EINVAL;
                rc = http1_cookie_get(req, name, &v);
        } else {
                rc = http1_header_get(req, name ? name : HTTP1_DEFAULT_KEY_HEADER, &v);
        }
        if (rc < 0 || v.n == 0)
                return -ENOENT;
        *key = v;
        return 0;
}

/* conn: the index of msg's first Connection field, or -1. */
static bool hop_by_hop(const struct http1_msg *msg, struct http1_slice name, int conn)
{
        static const char *const fixed[] = {"Connection", "Keep-Alive", "Proxy-Connection",
                                            "TE",         "Trailer",    "Upgrade"};
        for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
                if (http1_slice_eq_ci(name, fixed[i]))
                        return true;
        /* Fields that frame or route the message are never dropped because a
         * Connection header names them: that would let a client change the
         * framing a proxy forwards. */
        if (http1_slice_eq_ci(name, "Host") || http1_slice_eq_ci(name, "Content-Length") ||
            http1_slice_eq_ci(name, "Transfer-Encoding"))
                return false;
        for (int i = conn; i >= 0; i = http1_header_find(msg, "Connection", (size_t)i + 1)) {
                size_t pos = 0;
                struct http1_slice e;
                while (list_next(msg->headers[i].value, &pos, &e))
                        if (e.n == name.n && http1_mem_eq_ci(e.p, name.p, name.n))
                                return true;
        }
        return false;
}

bool http1_is_hop_by_hop(const struct http1_msg *msg, struct http1_slice name)
{
        return hop_by_hop(msg, name, http1_header_find(msg, "Connection", 0));
}

/* ---- writers ---- */

static void put(struct strbuf *out, struct http1_slice s)
{
        strbuf_appendn(out, s.p, s.n);
}

static bool is_header_safe(const char *s)
{
        for (; *s; s++)
                if (*s == '\r' || *s == '\n' || *s == '\0')
                        return false;
        return true;
}

static int write_fields(const struct http1_msg *m, const struct http1_forward *fw,
                        struct strbuf *out)
{
        static const struct http1_forward none = {0};
        if (!fw)
                fw = &none;
        bool absolute = m->is_request && m->form == HTTP1_T_ABSOLUTE && m->authority.n;
        bool cl_written = false, id_written = false;
        int conn = http1_header_find(m, "Connection", 0);
        if (absolute) {
                strbuf_append(out, "Host: ");
                put(out, m->authority);
                strbuf_append(out, "\r\n");
        }
        for (size_t i = 0; i < m->nheaders; i++) {
                const struct http1_header *h = &m->headers[i];
                if (hop_by_hop(m, h->name, conn)) {
                        if (!(fw->keep_upgrade && m->upgrade &&
                              http1_slice_eq_ci(h->name, "Upgrade")))
                                continue;
                }
                if (http1_slice_eq_ci(h->name, "Content-Length")) {
                        /* The parser checked every value of every field equal. */
                        if (!cl_written) {
                                strbuf_append(out, "Content-Length: ");
                                strbuf_append_u64(out, m->content_length);
                                strbuf_append(out, "\r\n");
                        }
                        cl_written = true;
                        continue;
                }
                if (absolute && http1_slice_eq_ci(h->name, "Host"))
                        continue; /* replaced by the target's authority, above */
                size_t d = 0;
                while (d < fw->ndrop && !http1_slice_eq_ci(h->name, fw->drop[d]))
                        d++;
                if (d < fw->ndrop)
                        continue;
                if (http1_slice_eq_ci(h->name, "X-Request-ID") && h->value.n)
                        id_written = true;
                put(out, h->name);
                strbuf_append(out, ": ");
                put(out, h->value);
                strbuf_append(out, "\r\n");
        }
        if (!absolute && m->is_request && http1_header_find(m, "Host", 0) < 0) {
                /* An HTTP/1.0 request without Host goes out as HTTP/1.1,
                 * which needs one (RFC 9112 3.2): the target's authority, the
                 * caller's default, or empty. */
                const char *dh = fw->default_host ? fw->default_host : "";
                if (!is_header_safe(dh)) {
                        log_error(COMP, 0, "default host %s has CR/LF, not added", dh);
                        return -EINVAL;
                }
                strbuf_append(out, "Host: ");
                if (m->authority.n)
                        put(out, m->authority);
                else
                        strbuf_append(out, dh);
                strbuf_append(out, "\r\n");
        }
        if (fw->request_id && !id_written) {
                if (!is_header_safe(fw->request_id)) {
                        log_error(COMP, 0, "request id %s has CR/LF, not added", fw->request_id);
                        return -EINVAL;
                }
                strbuf_append(out, "X-Request-ID: ");
                strbuf_append(out, fw->request_id);
                strbuf_append(out, "\r\n");
        }
        for (size_t i = 0; i < fw->nadd; i++) {
                const struct http1_header *h = &fw->add[i];
                for (size_t j = 0; j < h->value.n; j++)
                        if (h->value.p[j] == '\r' || h->value.p[j] == '\n' || h->value.p[j] == 0) {
                                log_error(COMP, 0, "added header %.*s has CR/LF/NUL",
                                          (int)h->name.n, h->name.p);
                                return -EINVAL;
                        }
                put(out, h->name);
                strbuf_append(out, ": ");
                put(out, h->value);
                strbuf_append(out, "\r\n");
        }
        if (fw->keep_upgrade && m->upgrade)
                strbuf_append(out, fw->close ? "Connection: upgrade, close\r\n"
                                             : "Connection: upgrade\r\n");
        else if (fw->close)
                strbuf_append(out, "Connection: close\r\n");
        strbuf_append(out, "\r\n");
        if (out->truncated) {
                log_warn(COMP, 0, "forwarded head does not fit (%zu bytes written)", out->len);
                return out->fixed ? -ENOSPC : -ENOMEM;
        }
        return 0;
}

int http1_write_request_head(const struct http1_msg *req, const struct http1_forward *fw,
                             struct strbuf *out)
{
        put(out, req->method_str);
        strbuf_append(out, " ");
        if (fw && fw->target) {
                strbuf_append(out, fw->target);
        } else if (req->form == HTTP1_T_ABSOLUTE && req->authority.n) {
                /* Origin form: what follows the authority, "/" at least. */
                const char *rest = req->authority.p + req->authority.n;
                size_t n = (size_t)(req->target.p + req->target.n - rest);
                if (n == 0 || rest[0] != '/')
                        strbuf_append(out, "/");
                strbuf_appendn(out, rest, n);
        } else {
                put(out, req->target);
        }
        strbuf_append(out, " HTTP/1.1\r\n");
        return write_fields(req, fw, out);
}

int http1_write_response_head(const struct http1_msg *resp, const struct http1_forward *fw,
                              struct strbuf *out)
{
        if (resp->status >= 100 && resp->status <= 999) {
                strbuf_append(out, "HTTP/1.1 ");
                strbuf_append_u64(out, (uint64_t)resp->status);
                strbuf_append(out, " ");
        } else {
                strbuf_appendf(out, "HTTP/1.1 %03d ", resp->status);
        }
        put(out, resp->reason);
        strbuf_append(out, "\r\n");
        return write_fields(resp, fw, out);
}

const char *http1_status_text(int status)
{
        switch (status) {
        case 100:
                return "Continue";
        case 200:
                return "OK";
        case 201:
                return "Created";
        case 202:
                return "Accepted";
        case 204:
                return "No Content";
        case 400:
                return "Bad Request";
        case 401:
                return "Unauthorized";
        case 403:
                return "Forbidden";
        case 404:
                return "Not Found";
        case 405:
                return "Method Not Allowed";
        case 408:
                return "Request Timeout";
        case 409:
                return "Conflict";
        case 411:
                return "Length Required";
        case 413:
                return "Content Too Large";
        case 414:
                return "URI Too Long";
        case 415:
                return "Unsupported Media Type";
        case 422:
                return "Unprocessable Content";
        case 429:
                return "Too Many Requests";
        case 431:
                return "Request Header Fields Too Large";
        case 500:
                return "Internal Server Error";
        case 501:
                return "Not Implemented";
        case 502:
                return "Bad Gateway";
        case 503:
                return "Service Unavailable";
        case 504:
                return "Gateway Timeout";
        case 505:
                return "HTTP Version Not Supported";
        }
        if (status >= 200 && status < 300)
                return "OK";
        if (status >= 400 && status < 500)
                return "Client Error";
        return "Server Error";
}

int http1_write_error_response(struct strbuf *out, int status, const char *reason,
                               unsigned retry_after_s)
{
        return http1_write_error_response_id(out, status, reason, retry_after_s, NULL);
}

static bool visible_ascii(const char *s)
{
        for (; *s; s++)
                if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
                        return false;
        return true;
}

int http1_write_error_response_id(struct strbuf *out, int status, const char *reason,
                                  unsigned retry_after_s, const char *request_id)
{
        char line[256];
        size_t n = 0;
        for (const char *s = reason ? reason : ""; *s && n < sizeof(line) - 1; s++)
                line[n++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? ' ' : *s;
        line[n] = '\0';
        if (status < 100 || status > 599) {
                log_error(COMP, 0, "error response status %d out of range", status);
                return -EINVAL;
        }
        strbuf_appendf(out, "HTTP/1.1 %d %s\r\n", status, http1_status_text(status));
        strbuf_append(out, "Content-Type: text/plain\r\n");
        strbuf_appendf(out, "X-Shunt-Reason: %s\r\n", line);
        if (retry_after_s)
                strbuf_appendf(out, "Retry-After: %u\r\n", retry_after_s);
        if (request_id && request_id[0] && visible_ascii(request_id))
                strbuf_appendf(out, "X-Request-ID: %s\r\n", request_id);
        strbuf_appendf(out, "Connection: close\r\nContent-Length: %zu\r\n\r\n%s\n", n + 1, line);
        if (out->truncated) {
                log_warn(COMP, 0, "error response %d does not fit", status);
                return out->fixed ? -ENOSPC : -ENOMEM;
        }
        return 0;
}

/* ---- chunked decoder (RFC 9112 7.1) ---- */

enum {
        CH_SIZE = 0, /* hex digits */
        CH_SIZE_WS,  /* BWS after the size, before ';' */
        CH_EXT,      /* extension bytes up to CR */
        CH_SIZE_LF,  /* CR seen after the size line */
        CH_DATA,     /* remaining data bytes */
        CH_DATA_CR,  /* CR after data */
        CH_DATA_LF,  /* LF after data */
        CH_TRAILER,  /* start or middle of a trailer line */
        CH_TRAILER_LF,
        CH_DONE,
        CH_ERROR,
};

void http1_chunked_init(struct http1_chunked *c, const struct http1_limits *lim)
{
        struct http1_limits dflt;
        if (!lim) {
                http1_limits_default(&dflt);
                lim = &dflt;
        }
        memset(c, 0, sizeof(*c));
        c->state = CH_SIZE;
        c->max_chunk_ext = lim->max_chunk_ext;
        c->max_trailer = lim->max_trailer;
}

bool http1_chunked_done(const struct http1_chunked *c)
{
        return c->state == CH_DONE;
}

static ssize_t chunk_fail(struct http1_chunked *c, enum http1_error e, size_t at)
{
        c->state = CH_ERROR;
        c->error = e;
        log_debug(COMP, 0, "chunked body rejected at byte %zu of this feed: %s", at,
                  http1_error_str(e));
        return -EPROTO;
}

int http1_hex_digit(unsigned char ch)
{
        if (ch >= '0' && ch <= '9')
                return ch - '0';
        if (ch >= 'a' && ch <= 'f')
                return ch - 'a' + 10;
        if (ch >= 'A' && ch <= 'F')
                return ch - 'A' + 10;
        return -1;
}

/* RFC 9110 6.5.1: a trailer must not carry what frames or routes the
 * message, or authorizes it; a recipient that merged one would be fooled.
 * The name's bytes so far are in c->name (lower case, line_len of them). */
static bool trailer_forbidden(const struct http1_chunked *c)
{
        static const char *const names[] = {
            "content-length",
            "transfer-encoding",
            "host",
            "trailer",
            "te",
            "connection",
            "keep-alive",
            "upgrade",
            "content-type",
            "content-encoding",
            "content-range",
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-forwarded-client-cert", /* only a sidecar states an identity (proxy/xfcc.h) */
        };
        if (c->line_len >= sizeof(c->name))
                return false; /* longer than any of them */
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
                if (strlen(names[k]) == c->line_len && !memcmp(names[k], c->name, c->line_len))
                        return true;
        return false;
}

ssize_t http1_chunked_feed(struct http1_chunked *c, const char *buf, size_t len, size_t *data_off,
                           size_t *data_len)
{
        *data_off = 0;
        *data_len = 0;
        if (c->state == CH_ERROR)
                return -EPROTO;
        size_t i = 0;
        while (i < len && c->state != CH_DONE) {
                unsigned char ch = (unsigned char)buf[i];
                switch (c->state) {
                case CH_SIZE: {
                        int h = http1_hex_digit(ch);
                        if (h >= 0) {
                                /* At most 16 hex digits and no leading overflow;
                                 * sizes are also kept below 2^62 so offsets
                                 * added to them never wrap. */
                                if (c->remaining > (UINT64_MAX >> 6))
                                        return chunk_fail(c, HTTP1_E_CHUNK_SIZE, i);
                                c->remaining = (c->remaining << 4) | (uint64_t)h;
                                c->digits++;
                                i++;
                                break;
                        }
                        if (c->digits == 0)
                                return chunk_fail(c, HTTP1_E_CHUNK_SIZE, i);
                        if (ch == '\r') {
                                c->state = CH_SIZE_LF;
                        } else if (ch == ';') {
                                c->state = CH_EXT;
                        } else if (ch == ' ' || ch == '\t') {
                                c->state = CH_SIZE_WS;
                        } else if (ch == '\n') {
                                return chunk_fail(c, HTTP1_E_CHUNK_CRLF, i);
                        } else {
                                return chunk_fail(c, HTTP1_E_CHUNK_SIZE, i);
                        }
                        c->ext_len = 1; /* the ';' or blank just seen */
                        i++;
                        break;
                }
                case CH_SIZE_WS:
                        if (++c->ext_len > c->max_chunk_ext)
                                return chunk_fail(c, HTTP1_E_CHUNK_EXT, i);
                        if (ch == ';')
                                c->state = CH_EXT;
                        else if (ch != ' ' && ch != '\t')
                                return chunk_fail(c, HTTP1_E_CHUNK_SIZE, i);
                        i++;
                        break;
                case CH_EXT:
                        if (ch == '\r') {
                                c->state = CH_SIZE_LF;
                        } else {
                                if (++c->ext_len > c->max_chunk_ext)
                                        return chunk_fail(c, HTTP1_E_CHUNK_EXT, i);
                                if (!is_value_char(ch))
                                        return chunk_fail(c, HTTP1_E_CHUNK_EXT, i);
                        }
                        i++;
                        break;
                case CH_SIZE_LF:
                        if (ch != '\n')
                                return chunk_fail(c, HTTP1_E_CHUNK_CRLF, i);
                        i++;
                        c->digits = 0;
                        if (c->remaining == 0) {
                                c->state = CH_TRAILER;
                                c->line_len = 0;
                                c->line_has_colon = false;
                                c->line_bad_name = false;
                        } else {
                                c->state = CH_DATA;
                        }
                        break;
                case CH_DATA: {
                        size_t avail = len - i;
                        size_t take = c->remaining < avail ? (size_t)c->remaining : avail;
                        *data_off = i;
                        *data_len = take;
                        c->remaining -= take;
                        i += take;
                        if (c->remaining == 0)
                                c->state = CH_DATA_CR;
                        return (ssize_t)i;
                }
                case CH_DATA_CR:
                        if (ch != '\r')
                                return chunk_fail(c, HTTP1_E_CHUNK_CRLF, i);
                        c->state = CH_DATA_LF;
                        i++;
                        break;
                case CH_DATA_LF:
                        if (ch != '\n')
                                return chunk_fail(c, HTTP1_E_CHUNK_CRLF, i);
                        c->state = CH_SIZE;
                        c->remaining = 0;
                        c->digits = 0;
                        i++;
                        break;
                case CH_TRAILER:
                        if (++c->trailer_len > c->max_trailer)
                                return chunk_fail(c, HTTP1_E_TRAILER_TOO_LARGE, i);
                        if (ch == '\r') {
                                if (c->line_len > 0 && !c->line_has_colon)
                                        return chunk_fail(c, HTTP1_E_TRAILER, i);
                                c->state = CH_TRAILER_LF;
                        } else if (c->line_len == 0 && (ch == ' ' || ch == '\t')) {
                                return chunk_fail(c, HTTP1_E_TRAILER, i); /* obs-fold */
                        } else if (!c->line_has_colon) {
                                if (ch == ':') {
                                        if (c->line_len == 0)
                                                return chunk_fail(c, HTTP1_E_TRAILER, i);
                                        if (trailer_forbidden(c))
                                                return chunk_fail(c, HTTP1_E_TRAILER_FORBIDDEN, i);
                                        c->line_has_colon = true;
                                } else if (!is_tchar(ch)) {
                                        return chunk_fail(c, HTTP1_E_TRAILER, i);
                                } else if (c->line_len < sizeof(c->name) - 1) {
                                        c->name[c->line_len] = (char)tolower(ch);
                                }
                                c->line_len++;
                        } else {
                                if (!is_value_char(ch))
                                        return chunk_fail(c, HTTP1_E_TRAILER, i);
                                c->line_len++;
                        }
                        i++;
                        break;
                case CH_TRAILER_LF:
                        if (ch != '\n')
                                return chunk_fail(c, HTTP1_E_CHUNK_CRLF, i);
                        if (++c->trailer_len > c->max_trailer)
                                return chunk_fail(c, HTTP1_E_TRAILER_TOO_LARGE, i);
                        i++;
                        if (c->line_len == 0) {
                                c->state = CH_DONE;
                        } else {
                                c->state = CH_TRAILER;
                                c->line_len = 0;
                                c->line_has_colon = false;
                        }
                        break;
                default:
                        return chunk_fail(c, HTTP1_E_CHUNK_SIZE, i);
                }
        }
        return (ssize_t)i;
}
