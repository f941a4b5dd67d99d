/* SPDX-License-Identifier: Apache-2.0 */
/* Prometheus text exposition format (version 0.0.4) writer.
 *
 * A metric family is written as its HELP and TYPE lines followed by its
 * samples:
 *
 *   prom_family(sb, "shunt_connections_accepted_total", "counter", "Connections accepted.");
 *   prom_sample_u64(sb, "shunt_connections_accepted_total", "listener=\"inbound\"", 12);
 *
 * Names must match [a-zA-Z_:][a-zA-Z0-9_:]*; counter names end in "_total".
 * Label values built from run-time data must be escaped: prom_label() appends
 * one key="value" pair (with the separating comma) to a label string. Every
 * function validates its input and returns 0 or -EINVAL without writing
 * anything when it is invalid. */
#ifndef SHUNT_CORE_PROM_H
#define SHUNT_CORE_PROM_H

#include <stdbool.h>
#include <stdint.h>

#include "core/strbuf.h"

/* The Content-Type of a text exposition. */
#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

bool prom_name_valid(const char *name);
/* [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved). */
bool prom_label_name_valid(const char *name);

/* type is "counter" or "gauge". help may be NULL (no HELP line). */
int prom_family(struct strbuf *sb, const char *name, const char *type, const char *help);

/* labels: NULL or "" for none, else the text between the braces, e.g.
 * "proto=\"http1\",dir=\"in\"". */
int prom_sample(struct strbuf *sb, const char *name, const char *labels, double value);
int prom_sample_u64(struct strbuf *sb, const char *name, const char *labels, uint64_t value);

/* Appends value escaped for use inside a quoted label value (backslash,
 * double quote and newline are escaped). */
void prom_label_escape(struct strbuf *sb, const char *value);
/* Appends name="escaped value" to labels, preceded by a comma when labels is
 * not empty. */
int prom_label(struct strbuf *labels, const char *name, const char *value);

#endif
