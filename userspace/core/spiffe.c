// SPDX-License-Identifier: Apache-2.0
/* SPIFFE ID parsing and validation: see spiffe.h for the rules. */
#include "core/spiffe.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"

static bool td_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

static bool path_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '-' || c == '_';
}

static const char *td_check(const char *td, size_t len)
{
        if (len == 0)
                return "trust domain is empty";
        if (len > SPIFFE_TD_MAX)
                return "trust domain is longer than 255 characters";
        for (size_t i = 0; i < len; i++) {
                char c = td[i];
                if (td_char(c))
                        continue;
                if (c >= 'A' && c <= 'Z')
                        return "trust domain has an upper-case letter";
                if (c == ':')
                        return "trust domain has a port";
                if (c == '@')
                        return "trust domain has user info";
                if (c == '%')
                        return "trust domain has percent-encoding";
                return "trust domain has a character outside [a-z0-9.-_]";
        }
        return NULL;
}

bool spiffe_trust_domain_valid(const char *td)
{
        return td && !td_check(td, strlen(td));
}

static const char *segment_check(const char *seg, size_t len)
{
        if (len == 0)
                return "path has an empty segment";
        if ((len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
                return "path has a dot segment";
        for (size_t i = 0; i < len; i++) {
                if (path_char(seg[i]))
                        continue;
                if (seg[i] == '%')
                        return "path has percent-encoding";
                return "path has a character outside [a-zA-Z0-9.-_]";
        }
        return NULL;
}

bool spiffe_name_valid(const char *name)
{
        if (!name)
                return false;
        size_t len = strlen(name);
        return len <= SPIFFE_NAME_MAX && !segment_check(name, len);
}

int spiffe_id_parse(const char *s, struct spiffe_id *out, const char **why)
{
        static const char scheme[] = "spiffe://";
        const char *err = NULL;
        const char *dummy;
        if (!why)
                why = &dummy;
        *why = NULL;
        if (!s || !out) {
                *why = "no SPIFFE ID";
                return -EINVAL;
        }
        memset(out, 0, sizeof(*out));
        size_t len = strnlen(s, SPIFFE_ID_MAX + 1);
        if (len > SPIFFE_ID_MAX) {
                *why = "SPIFFE ID is longer than 2048 bytes";
                return -EINVAL;
        }
        if (strncmp(s, scheme, sizeof(scheme) - 1) != 0) {
                *why = strncasecmp(s, scheme, sizeof(scheme) - 1) == 0
                           ? "scheme is not lower-case \"spiffe\""
                           : "does not start with spiffe://";
                return -EINVAL;
        }
        if (strpbrk(s, "?")) {
                *why = "SPIFFE ID has a query";
                return -EINVAL;
        }
        if (strpbrk(s, "#")) {
                *why = "SPIFFE ID has a fragment";
                return -EINVAL;
        }
        const char *td = s + sizeof(scheme) - 1;
        const char *slash = strchr(td, '/');
        size_t td_len = slash ? (size_t)(slash - td) : strlen(td);
        if ((err = td_check(td, td_len))) {
                *why = err;
                return -EINVAL;
        }
        /* Path: zero or more "/segment". */
        const char *segs[4];
        size_t seg_len[4];
        size_t nseg = 0;
        const char *p = slash;
        while (p) {
                const char *seg = p + 1;
                const char *next = strchr(seg, '/');
                size_t l = next ? (size_t)(next - seg) : strlen(seg);
                if (l == 0 && !next) {
                        *why = "path has a trailing slash";
                        return -EINVAL;
                }
                if ((err = segment_check(seg, l))) {
                        *why = err;
                        return -EINVAL;
                }
                if (nseg < 4) {
                        segs[nseg] = seg;
                        seg_len[nseg] = l;
                }
                nseg++;
                p = next;
        }
        memcpy(out->uri, s, len);
        memcpy(out->trust_domain, td, td_len);
        if (nseg == 4 && seg_len[0] == 2 && memcmp(segs[0], "ns", 2) == 0 && seg_len[2] == 2 &&
            memcmp(segs[2], "sa", 2) == 0 && seg_len[1] <= SPIFFE_NAME_MAX &&
            seg_len[3] <= SPIFFE_NAME_MAX) {
                out->mesh = true;
                memcpy(out->ns, segs[1], seg_len[1]);
                memcpy(out->sa, segs[3], seg_len[3]);
        }
        return 0;
}

int spiffe_id_build(const char *trust_domain, const char *ns, const char *sa, struct spiffe_id *out)
{
        if (!spiffe_trust_domain_valid(trust_domain)) {
                log_error("tls", 0,
                          "trust domain \"%s\" is not valid: 1-255 characters of [a-z0-9.-_]",
                          trust_domain ? trust_domain : "");
                return -EINVAL;
        }
        if (!spiffe_name_valid(ns)) {
                log_error("tls", 0,
                          "namespace \"%s\" is not a valid SPIFFE path segment: 1-253 characters "
                          "of [a-zA-Z0-9.-_], not . or ..",
                          ns ? ns : "");
                return -EINVAL;
        }
        if (!spiffe_name_valid(sa)) {
                log_error("tls", 0,
                          "service account \"%s\" is not a valid SPIFFE path segment: 1-253 "
                          "characters of [a-zA-Z0-9.-_], not . or ..",
                          sa ? sa : "");
                return -EINVAL;
        }
        char buf[SPIFFE_ID_MAX + 2];
        int n = snprintf(buf, sizeof(buf), "spiffe://%s/ns/%s/sa/%s", trust_domain, ns, sa);
        if (n < 0 || (size_t)n > SPIFFE_ID_MAX) {
                log_error("tls", 0, "SPIFFE ID for %s/%s in %s is longer than %d bytes", ns, sa,
                          trust_domain, SPIFFE_ID_MAX);
                return -EINVAL;
        }
        const char *why;
        int rc = spiffe_id_parse(buf, out, &why);
        if (rc < 0)
                log_error("tls", 0, "SPIFFE ID \"%s\" is not valid: %s", buf, why);
        return rc;
}
