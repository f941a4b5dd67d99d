// SPDX-License-Identifier: Apache-2.0
#include "core/prom.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_alpha_(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
        return c >= '0' && c <= '9';
}

bool prom_name_valid(const char *name)
{
        if (!name || !(is_alpha_(name[0]) || name[0] == ':'))
                return false;
        for (const char *p = name + 1; *p; p++)
                if (!(is_alpha_(*p) || is_digit(*p) || *p == ':'))
                        return false;
        return true;
}

bool prom_label_name_valid(const char *name)
{
        if (!name || !is_alpha_(name[0]))
                return false;
        if (name[0] == '_' && name[1] == '_')
                return false;
        for (const char *p = name + 1; *p; p++)
                if (!(is_alpha_(*p) || is_digit(*p)))
                        return false;
        return true;
}

static bool ends_with(const char *s, const char *suffix)
{
        size_t n = strlen(s), m = strlen(suffix);
        return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

int prom_family(struct strbuf *sb, const char *name, const char *type, const char *help)
{
        if (!prom_name_valid(name) || !type)
                return -EINVAL;
        if (strcmp(type, "counter") == 0) {
                if (!ends_with(name, "_total"))
                        return -EINVAL;
        } else if (strcmp(type, "gauge") != 0) {
                return -EINVAL;
        }
        if (help) {
                strbuf_appendf(sb, "# HELP %s ", name);
                /* HELP text escapes backslash and line feed only. */
                const char *run = help, *p = help;
                for (; *p; p++) {
                        if (*p != '\\' && *p != '\n')
                                continue;
                        strbuf_appendn(sb, run, (size_t)(p - run));
                        strbuf_append(sb, *p == '\\' ? "\\\\" : "\\n");
                        run = p + 1;
                }
                strbuf_appendn(sb, run, (size_t)(p - run));
                strbuf_append(sb, "\n");
        }
        strbuf_appendf(sb, "# TYPE %s %s\n", name, type);
        return 0;
}

void prom_label_escape(struct strbuf *sb, const char *value)
{
        const char *run = value, *p = value;
        for (; *p; p++) {
                const char *rep;
                if (*p == '\\')
                        rep = "\\\\";
                else if (*p == '"')
                        rep = "\\\"";
                else if (*p == '\n')
                        rep = "\\n";
                else
                        continue;
                strbuf_appendn(sb, run, (size_t)(p - run));
                strbuf_append(sb, rep);
                run = p + 1;
        }
        strbuf_appendn(sb, run, (size_t)(p - run));
}

int prom_label(struct strbuf *labels, const char *name, const char *value)
{
        if (!prom_label_name_valid(name) || !value)
                return -EINVAL;
        if (labels->len)
                strbuf_append(labels, ",");
        strbuf_append(labels, name);
        strbuf_append(labels, "=\"");
        prom_label_escape(labels, value);
        strbuf_append(labels, "\"");
        return 0;
}

static void sample_prefix(struct strbuf *sb, const char *name, const char *labels)
{
        strbuf_append(sb, name);
        if (labels && *labels) {
                strbuf_append(sb, "{");
                strbuf_append(sb, labels);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, " ");
}

/* Label text must be balanced: no raw newline (it would end the sample). The
 * full grammar is the caller's job; prom_label() produces it correctly. */
static bool labels_plausible(const char *labels)
{
        return !labels || !strchr(labels, '\n');
}

int prom_sample(struct strbuf *sb, const char *name, const char *labels, double value)
{
        if (!prom_name_valid(name) || !labels_plausible(labels))
                return -EINVAL;
        sample_prefix(sb, name, labels);
        if (isnan(value)) {
                strbuf_append(sb, "NaN\n");
        } else if (isinf(value)) {
                strbuf_append(sb, value > 0 ? "+Inf\n" : "-Inf\n");
        } else {
                /* The shortest %g form that reads back as the same double. */
                char buf[40];
                for (int prec = 15; prec <= 17; prec++) {
                        snprintf(buf, sizeof(buf), "%.*g", prec, value);
                        if (strtod(buf, NULL) == value)
                                break;
                }
                strbuf_append(sb, buf);
                strbuf_append(sb, "\n");
        }
        return 0;
}

int prom_sample_u64(struct strbuf *sb, const char *name, const char *labels, uint64_t value)
{
        if (!prom_name_valid(name) || !labels_plausible(labels))
                return -EINVAL;
        sample_prefix(sb, name, labels);
        strbuf_appendf(sb, "%llu\n", (unsigned long long)value);
        return 0;
}
