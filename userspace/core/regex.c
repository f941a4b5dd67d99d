// SPDX-License-Identifier: Apache-2.0
/* Bounded regular expressions: a recursive-descent parser to a small tree,
 * a Thompson program, and a state-set simulation; see regex.h. */
#include "core/regex.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_EMPTY, N_CHAR, N_ANY, N_CLASS, N_CAT, N_ALT, N_REPEAT };
enum { OP_CHAR, OP_ANY, OP_CLASS, OP_SPLIT, OP_JMP, OP_MATCH };

#define MAX_NODES (4 * REGEX_MAX_PATTERN + 8)
#define REP_INF   (-1)

struct node {
        uint8_t type;
        uint8_t c;
        uint16_t cls;
        int16_t min, max; /* N_REPEAT; max REP_INF for none */
        int a, b;         /* children */
};

struct cls {
        uint64_t bits[4];
};

struct inst {
        uint8_t op;
        uint8_t c;
        uint16_t x, y; /* OP_CLASS: x is the class; SPLIT x, y; JMP x */
};

struct regex {
        struct inst *prog;
        size_t n;
        struct cls *classes;
};

struct parser {
        const char *p, *end, *start;
        struct node nodes[MAX_NODES];
        int n_nodes;
        struct cls *classes;
        int n_classes;
        int depth;
        char *err;
        size_t errlen;
        bool failed;
};

__attribute__((format(printf, 2, 3))) static int perr(struct parser *ps, const char *fmt, ...)
{
        if (ps->failed)
                return -1;
        ps->failed = true;
        char msg[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        snprintf(ps->err, ps->errlen, "%s at offset %zu", msg, (size_t)(ps->p - ps->start));
        return -1;
}

static int node(struct parser *ps, uint8_t type, int a, int b)
{
        if (ps->n_nodes >= MAX_NODES)
                return perr(ps, "pattern too complex");
        struct node *n = &ps->nodes[ps->n_nodes];
        memset(n, 0, sizeof(*n));
        n->type = type;
        n->a = a;
        n->b = b;
        return ps->n_nodes++;
}

static void cls_set(struct cls *c, unsigned ch)
{
        c->bits[ch >> 6] |= 1ull << (ch & 63);
}

static void cls_range(struct cls *c, unsigned lo, unsigned hi)
{
        for (unsigned ch = lo; ch <= hi; ch++)
                cls_set(c, ch);
}

/* \d \w \s and their negations into c; false when e is none of them. */
static bool cls_escape(struct cls *c, char e)
{
        struct cls t = {{0}};
        switch (e | 0x20) {
        case 'd':
                cls_range(&t, '0', '9');
                break;
        case 'w':
                cls_range(&t, '0', '9');
                cls_range(&t, 'a', 'z');
                cls_range(&t, 'A', 'Z');
                cls_set(&t, '_');
                break;
        case 's':
                cls_set(&t, ' ');
                cls_range(&t, '\t', '\r');
                break;
        default:
                return false;
        }
        if (e >= 'A' && e <= 'Z')
                for (int i = 0; i < 4; i++)
                        t.bits[i] = ~t.bits[i];
        for (int i = 0; i < 4; i++)
                c->bits[i] |= t.bits[i];
        return true;
}

static int new_class(struct parser *ps, const struct cls *c)
{
        if (ps->n_classes >= REGEX_MAX_PATTERN)
                return perr(ps, "too many character classes");
        ps->classes[ps->n_classes] = *c;
        int n = node(ps, N_CLASS, -1, -1);
        if (n >= 0)
                ps->nodes[n].cls = (uint16_t)ps->n_classes++;
        return n;
}

static bool is_meta(char c)
{
        return strchr("\\.+*?()|[]{}^$-/", c) != NULL;
}

/* The byte an escape stands for inside or outside a class, or -1. */
static int escape_char(struct parser *ps, char e)
{
        if (e >= '0' && e <= '9')
                return perr(ps, "backreferences are not supported");
        if (e == 'n')
                return '\n';
        if (e == 't')
                return '\t';
        if (e == 'r')
                return '\r';
        if (is_meta(e))
                return (unsigned char)e;
        return perr(ps, "unsupported escape '\\%c'", e);
}

static int parse_class(struct parser *ps)
{
        struct cls c = {{0}};
        bool neg = false;
        ps->p++; /* [ */
        if (ps->p < ps->end && *ps->p == '^') {
                neg = true;
                ps->p++;
        }
        bool first = true;
        for (;;) {
                if (ps->p >= ps->end)
                        return perr(ps, "missing ']'");
                char ch = *ps->p;
                if (ch == ']' && !first)
                        break;
                first = false;
                if (ch == '[' && ps->p + 1 < ps->end && ps->p[1] == ':')
                        return perr(ps, "POSIX classes ([:alpha:]) are not supported");
                int lo;
                ps->p++;
                if (ch == '\\') {
                        if (ps->p >= ps->end)
                                return perr(ps, "trailing '\\'");
                        char e = *ps->p++;
                        if (cls_escape(&c, e))
                                continue;
                        if ((lo = escape_char(ps, e)) < 0)
                                return -1;
                } else {
                        lo = (unsigned char)ch;
                }
                int hi = lo;
                if (ps->p + 1 < ps->end && *ps->p == '-' && ps->p[1] != ']') {
                        ps->p++;
                        char h = *ps->p++;
                        if (h == '\\') {
                                if (ps->p >= ps->end)
                                        return perr(ps, "trailing '\\'");
                                if ((hi = escape_char(ps, *ps->p++)) < 0)
                                        return -1;
                        } else {
                                hi = (unsigned char)h;
                        }
                        if (hi < lo)
                                return perr(ps, "invalid range %c-%c", lo, hi);
                }
                cls_range(&c, (unsigned)lo, (unsigned)hi);
        }
        ps->p++; /* ] */
        if (neg)
                for (int i = 0; i < 4; i++)
                        c.bits[i] = ~c.bits[i];
        return new_class(ps, &c);
}

static int parse_alt(struct parser *ps);

static int parse_atom(struct parser *ps)
{
        char ch = *ps->p;
        switch (ch) {
        case '(': {
                ps->p++;
                if (ps->p < ps->end && *ps->p == '?') {
                        if (ps->p + 1 < ps->end && ps->p[1] == ':')
                                ps->p += 2;
                        else
                                return perr(ps, "only (?:...) groups are supported");
                }
                if (++ps->depth > REGEX_MAX_DEPTH)
                        return perr(ps, "groups nested deeper than %d", REGEX_MAX_DEPTH);
                int n = parse_alt(ps);
                ps->depth--;
                if (n < 0)
                        return -1;
                if (ps->p >= ps->end || *ps->p != ')')
                        return perr(ps, "missing ')'");
                ps->p++;
                return n;
        }
        case '[':
                return parse_class(ps);
        case '.':
                ps->p++;
                return node(ps, N_ANY, -1, -1);
        case '\\': {
                ps->p++;
                if (ps->p >= ps->end)
                        return perr(ps, "trailing '\\'");
                char e = *ps->p++;
                struct cls c = {{0}};
                if (cls_escape(&c, e))
                        return new_class(ps, &c);
                if (e == 'b' || e == 'B')
                        return perr(ps, "word boundaries are not supported");
                int v = escape_char(ps, e);
                if (v < 0)
                        return -1;
                int n = node(ps, N_CHAR, -1, -1);
                if (n >= 0)
                        ps->nodes[n].c = (uint8_t)v;
                return n;
        }
        case '^':
                if (ps->p != ps->start)
                        return perr(ps, "'^' is only allowed at the start");
                ps->p++;
                return node(ps, N_EMPTY, -1, -1);
        case '$':
                if (ps->p + 1 != ps->end)
                        return perr(ps, "'$' is only allowed at the end");
                ps->p++;
                return node(ps, N_EMPTY, -1, -1);
        case '*':
        case '+':
        case '?':
        case '{':
                return perr(ps, "missing argument to repetition operator '%c'", ch);
        case ')':
                return perr(ps, "unexpected ')'");
        default:
                if ((unsigned char)ch < 0x20 || ch == 0x7f)
                        return perr(ps, "control character in pattern");
                ps->p++;
                int n = node(ps, N_CHAR, -1, -1);
                if (n >= 0)
                        ps->nodes[n].c = (uint8_t)ch;
                return n;
        }
}

static int parse_count(struct parser *ps, int *out)
{
        int v = 0, digits = 0;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
                v = v * 10 + (*ps->p++ - '0');
                if (v > REGEX_MAX_REPEAT)
                        return perr(ps, "repetition count above %d", REGEX_MAX_REPEAT);
                digits++;
        }
        if (!digits)
                return perr(ps, "bad repetition count");
        *out = v;
        return 0;
}

static int parse_repeat(struct parser *ps)
{
        int a = parse_atom(ps);
        if (a < 0)
                return -1;
        if (ps->p >= ps->end)
                return a;
        int min, max;
        switch (*ps->p) {
        case '*':
                min = 0, max = REP_INF;
                ps->p++;
                break;
        case '+':
                min = 1, max = REP_INF;
                ps->p++;
                break;
        case '?':
                min = 0, max = 1;
                ps->p++;
                break;
        case '{':
                ps->p++;
                if (parse_count(ps, &min) < 0)
                        return -1;
                max = min;
                if (ps->p < ps->end && *ps->p == ',') {
                        ps->p++;
                        max = REP_INF;
                        if (ps->p < ps->end && *ps->p != '}' && parse_count(ps, &max) < 0)
                                return -1;
                }
                if (ps->p >= ps->end || *ps->p != '}')
                        return perr(ps, "missing '}'");
                ps->p++;
                if (max != REP_INF && max < min)
                        return perr(ps, "bad repetition {%d,%d}", min, max);
                break;
        default:
                return a;
        }
        if (ps->p < ps->end && strchr("*+?{", *ps->p))
                return perr(ps, *ps->p == '?' ? "lazy quantifiers are not supported"
                                              : "bad repetition operator");
        int n = node(ps, N_REPEAT, a, -1);
        if (n >= 0) {
                ps->nodes[n].min = (int16_t)min;
                ps->nodes[n].max = (int16_t)max;
        }
        return n;
}

static int parse_cat(struct parser *ps)
{
        int left = -1;
        while (ps->p < ps->end && *ps->p != '|' && *ps->p != ')') {
                int r = parse_repeat(ps);
                if (r < 0)
                        return -1;
                left = left < 0 ? r : node(ps, N_CAT, left, r);
                if (left < 0)
                        return -1;
        }
        return left < 0 ? node(ps, N_EMPTY, -1, -1) : left;
}

static int parse_alt(struct parser *ps)
{
        int left = parse_cat(ps);
        while (left >= 0 && ps->p < ps->end && *ps->p == '|') {
                ps->p++;
                int r = parse_cat(ps);
                if (r < 0)
                        return -1;
                left = node(ps, N_ALT, left, r);
        }
        return left;
}

/* Instructions node n compiles to, saturated above REGEX_MAX_PROG. */
static size_t prog_size(const struct parser *ps, int n)
{
        const struct node *x = &ps->nodes[n];
        size_t a, b;
        switch (x->type) {
        case N_EMPTY:
                return 0;
        case N_CHAR:
        case N_ANY:
        case N_CLASS:
                return 1;
        case N_CAT:
                a = prog_size(ps, x->a), b = prog_size(ps, x->b);
                return a + b > REGEX_MAX_PROG ? REGEX_MAX_PROG + 1 : a + b;
        case N_ALT:
                a = prog_size(ps, x->a), b = prog_size(ps, x->b);
                return a + b + 2 > REGEX_MAX_PROG ? REGEX_MAX_PROG + 1 : a + b + 2;
        default: {
                a = prog_size(ps, x->a);
                size_t total = (size_t)x->min * a;
                if (x->max == REP_INF)
                        total += a + 2;
                else
                        total += (size_t)(x->max - x->min) * (a + 1);
                return total > REGEX_MAX_PROG ? REGEX_MAX_PROG + 1 : total;
        }
        }
}

static void emit(const struct parser *ps, int n, struct inst *prog, size_t *pc)
{
        const struct node *x = &ps->nodes[n];
        switch (x->type) {
        case N_EMPTY:
                return;
        case N_CHAR:
                prog[(*pc)++] = (struct inst){.op = OP_CHAR, .c = x->c};
                return;
        case N_ANY:
                prog[(*pc)++] = (struct inst){.op = OP_ANY};
                return;
        case N_CLASS:
                prog[(*pc)++] = (struct inst){.op = OP_CLASS, .x = x->cls};
                return;
        case N_CAT:
                emit(ps, x->a, prog, pc);
                emit(ps, x->b, prog, pc);
                return;
        case N_ALT: {
                size_t split = (*pc)++;
                emit(ps, x->a, prog, pc);
                size_t jmp = (*pc)++;
                size_t second = *pc;
                emit(ps, x->b, prog, pc);
                prog[split] = (struct inst){
                    .op = OP_SPLIT, .x = (uint16_t)(split + 1), .y = (uint16_t)second};
                prog[jmp] = (struct inst){.op = OP_JMP, .x = (uint16_t)*pc};
                return;
        }
        default:
                for (int i = 0; i < x->min; i++)
                        emit(ps, x->a, prog, pc);
                if (x->max == REP_INF) {
                        size_t split = (*pc)++;
                        emit(ps, x->a, prog, pc);
                        prog[(*pc)++] = (struct inst){.op = OP_JMP, .x = (uint16_t)split};
                        prog[split] = (struct inst){
                            .op = OP_SPLIT, .x = (uint16_t)(split + 1), .y = (uint16_t)*pc};
                        return;
                }
                for (int i = x->min; i < x->max; i++) {
                        size_t split = (*pc)++;
                        emit(ps, x->a, prog, pc);
                        prog[split] = (struct inst){
                            .op = OP_SPLIT, .x = (uint16_t)(split + 1), .y = (uint16_t)*pc};
                }
                return;
        }
}

struct regex *regex_compile(const char *pattern, char *err, size_t errlen)
{
        size_t len = strlen(pattern);
        if (len > REGEX_MAX_PATTERN) {
                snprintf(err, errlen, "pattern longer than %d bytes", REGEX_MAX_PATTERN);
                return NULL;
        }
        struct parser *ps = calloc(1, sizeof(*ps));
        struct regex *re = calloc(1, sizeof(*re));
        if (ps)
                ps->classes = calloc(REGEX_MAX_PATTERN, sizeof(struct cls));
        if (!ps || !re || !ps->classes) {
                snprintf(err, errlen, "out of memory");
                goto fail;
        }
        ps->p = ps->start = pattern;
        ps->end = pattern + len;
        ps->err = err;
        ps->errlen = errlen;
        int root = parse_alt(ps);
        if (root >= 0 && ps->p < ps->end)
                root = perr(ps, "unexpected ')'");
        if (root < 0)
                goto fail;
        size_t size = prog_size(ps, root) + 1;
        if (size > REGEX_MAX_PROG) {
                snprintf(err, errlen,
                         "pattern too expensive: compiles to more than %d instructions "
                         "(counted repetitions are unrolled)",
                         REGEX_MAX_PROG);
                goto fail;
        }
        re->prog = calloc(size, sizeof(*re->prog));
        re->classes = calloc(ps->n_classes ? (size_t)ps->n_classes : 1, sizeof(struct cls));
        if (!re->prog || !re->classes) {
                snprintf(err, errlen, "out of memory");
                goto fail;
        }
        memcpy(re->classes, ps->classes, (size_t)ps->n_classes * sizeof(struct cls));
        size_t pc = 0;
        emit(ps, root, re->prog, &pc);
        re->prog[pc++] = (struct inst){.op = OP_MATCH};
        re->n = pc;
        free(ps->classes);
        free(ps);
        return re;
fail:
        if (ps)
                free(ps->classes);
        free(ps);
        regex_free(re);
        return NULL;
}

void regex_free(struct regex *re)
{
        if (!re)
                return;
        free(re->prog);
        free(re->classes);
        free(re);
}

size_t regex_size(const struct regex *re)
{
        return re->n;
}

struct list {
        uint16_t pc[REGEX_MAX_PROG];
        size_t n;
};

/* Adds pc and what it reaches without consuming input; mark[] == gen
 * means already on the list for this step. */
static void add(const struct regex *re, struct list *l, uint32_t *mark, uint32_t gen, uint16_t pc)
{
        uint16_t stack[REGEX_MAX_PROG * 2 + 2];
        size_t sp = 0;
        stack[sp++] = pc;
        while (sp) {
                uint16_t p = stack[--sp];
                if (mark[p] == gen)
                        continue;
                mark[p] = gen;
                const struct inst *in = &re->prog[p];
                if (in->op == OP_JMP) {
                        stack[sp++] = in->x;
                } else if (in->op == OP_SPLIT) {
                        stack[sp++] = in->y;
                        stack[sp++] = in->x;
                } else {
                        l->pc[l->n++] = p;
                }
        }
}

bool regex_match(const struct regex *re, const char *s, size_t n)
{
        struct list a, b, *cur = &a, *next = &b;
        uint32_t mark[REGEX_MAX_PROG];
        memset(mark, 0, re->n * sizeof(mark[0]));
        uint32_t gen = 1;
        cur->n = 0;
        add(re, cur, mark, gen, 0);
        for (size_t i = 0; i < n && cur->n; i++) {
                unsigned char c = (unsigned char)s[i];
                next->n = 0;
                gen++;
                for (size_t k = 0; k < cur->n; k++) {
                        const struct inst *in = &re->prog[cur->pc[k]];
                        bool ok = false;
                        switch (in->op) {
                        case OP_CHAR:
                                ok = in->c == c;
                                break;
                        case OP_ANY:
                                ok = c != '\n';
                                break;
                        case OP_CLASS:
                                ok = (re->classes[in->x].bits[c >> 6] >> (c & 63)) & 1;
                                break;
                        default:
                                break;
                        }
                        if (ok)
                                add(re, next, mark, gen, (uint16_t)(cur->pc[k] + 1));
                }
                struct list *t = cur;
                cur = next;
                next = t;
        }
        for (size_t k = 0; k < cur->n; k++)
                if (re->prog[cur->pc[k]].op == OP_MATCH)
                        return true;
        return false;
}
