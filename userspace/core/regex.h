/* SPDX-License-Identifier: Apache-2.0 */
/* A bounded regular-expression matcher for route matches (paths, header and
 * query values).
 *
 * Syntax, a subset of RE2/POSIX ERE: literals, '.', character classes
 * ("[a-z0-9_]", "[^/]"), the escapes \d \w \s (\D \W \S) and escaped
 * metacharacters, groups "(...)" and "(?:...)", alternation '|', and the
 * quantifiers * + ? {n} {n,} {n,m} (n, m <= REGEX_MAX_REPEAT). A leading
 * '^' and a trailing '$' are accepted and change nothing: a pattern always
 * matches the whole value (as Envoy and Istio do for route regexes). No
 * backreferences, lookaround or lazy quantifiers: anything else is refused
 * when compiled, with the reason.
 *
 * Bounded cost: the pattern is compiled to at most REGEX_MAX_PROG
 * instructions (a counted repetition is unrolled, so "(a{50}){50}" is
 * refused as too large, not accepted and slow) and matched by a Thompson
 * NFA simulation: one pass over the input, at most REGEX_MAX_PROG states
 * alive per byte, so a match costs O(len(input) x program size) and never
 * backtracks. Matching allocates nothing, takes no lock and only reads the
 * compiled program, so workers share one. */
#ifndef SHUNT_CORE_REGEX_H
#define SHUNT_CORE_REGEX_H

#include <stdbool.h>
#include <stddef.h>

#define REGEX_MAX_PATTERN 256 /* bytes of pattern */
#define REGEX_MAX_PROG    512 /* compiled instructions */
#define REGEX_MAX_REPEAT  100 /* n and m of {n,m} */
#define REGEX_MAX_DEPTH   16  /* nested groups */

struct regex;

/* Compiles pattern. NULL with a one-line reason in err (syntax, or too
 * large / too expensive) on failure. */
struct regex *regex_compile(const char *pattern, char *err, size_t errlen);
void regex_free(struct regex *re);
/* Whether re matches all of s[0..n). */
bool regex_match(const struct regex *re, const char *s, size_t n);
/* Instructions in the compiled program (for tests and /routes). */
size_t regex_size(const struct regex *re);

#endif
