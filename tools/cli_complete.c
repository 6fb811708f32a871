/*
 * cli_complete: completion and argument hints for kvs-cli's line editor.
 *
 * Everything starts from scan(), which cuts a line into raw tokens with the
 * session's quoting rules (see kvs_cli.c split_line) but decodes nothing:
 * a token is a span of the line, plus whether the line ends inside it (the
 * token being typed). Completion looks at the token under the cursor; the
 * hint counts the arguments already ended and walks the command's argument
 * spec past them (spec_rest).
 *
 * No state, no allocation: callers pass the buffers.
 */
#include "cli_complete.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#define MAX_TOKENS 64 /* the hint and completion look at no more than this */

typedef struct {
    size_t start, end; /* line[start..end) */
} span_t;

/* Cuts s[0..len) into tokens; stores the first `max` in sp. Returns the
 * number of tokens, and sets *quoted when s ends inside quotes. */
static size_t scan(const char *s, size_t len, span_t *sp, size_t max, int *quoted)
{
    size_t i = 0, n = 0;
    *quoted = 0;
    for (;;) {
        while (i < len && isspace((unsigned char)s[i]))
            i++;
        if (i >= len)
            return n;
        size_t start = i;
        while (i < len && !isspace((unsigned char)s[i])) {
            char q = s[i++];
            if (q != '"' && q != '\'')
                continue;
            while (i < len && s[i] != q) {
                if (s[i] == '\\' && i + 1 < len && (q == '"' || s[i + 1] == '\''))
                    i++;
                i++;
            }
            if (i >= len) {
                *quoted = 1;
                break;
            }
            i++; /* the closing quote */
        }
        if (n < max)
            sp[n] = (span_t){start, i};
        n++;
    }
}

static int is_option(const char *s, const span_t *t)
{
    return t->end - t->start > 2 && s[t->start] == '-' && s[t->start + 1] == '-';
}

int cli_complete_span(const char *line, size_t cursor, size_t *start)
{
    span_t sp[MAX_TOKENS];
    int quoted;
    size_t n = scan(line, cursor, sp, MAX_TOKENS, &quoted);
    int open = cursor > 0 && !isspace((unsigned char)line[cursor - 1]); /* last token typed */
    if (quoted || n > MAX_TOKENS)
        return 0;
    size_t k = 0;
    while (k < n && is_option(line, &sp[k]) && !(open && k == n - 1))
        k++;
    if (k == n && !open) { /* no command yet: it starts at the cursor */
        *start = cursor;
        return 1;
    }
    if (k != n - 1 || !open || line[sp[k].start] == '-')
        return 0;
    *start = sp[k].start;
    return 1;
}

size_t cli_complete_matches(const cli_word_t *words, size_t n, const char *prefix, size_t plen,
                            size_t *idx)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (strlen(words[i].name) >= plen && strncasecmp(words[i].name, prefix, plen) == 0)
            idx[m++] = i;
    return m;
}

size_t cli_complete_common(const cli_word_t *words, const size_t *idx, size_t m)
{
    const char *first = words[idx[0]].name;
    size_t len = strlen(first);
    for (size_t i = 1; i < m; i++) {
        const char *name = words[idx[i]].name;
        size_t k = 0;
        while (k < len && name[k] != '\0' &&
               tolower((unsigned char)name[k]) == tolower((unsigned char)first[k]))
            k++;
        len = k;
    }
    return len;
}

/* ---- hints ------------------------------------------------------------------ */

/* Appends text[0..n) to out (with a space between items), cut to cap. */
static void put(char *out, size_t cap, const char *text, size_t n)
{
    size_t w = strlen(out);
    if (w > 0 && w + 1 < cap)
        out[w++] = ' ';
    if (w + n >= cap)
        n = cap - 1 - w;
    memcpy(out + w, text, n);
    out[w + n] = '\0';
}

/* The bracket matching spec[open] == '[', or the end of spec. */
static const char *closing(const char *p)
{
    int depth = 0;
    for (; *p != '\0'; p++) {
        if (*p == '[')
            depth++;
        else if (*p == ']' && --depth == 0)
            return p;
    }
    return p;
}

/* Writes to out what is left of spec[0..len) after `n` arguments. */
static void spec_rest(const char *spec, size_t len, size_t n, char *out, size_t cap)
{
    const char *p = spec, *end = spec + len;
    while (n > 0) {
        while (p < end && *p == ' ')
            p++;
        if (p >= end)
            return; /* more arguments than the spec takes */
        if (*p != '[') {
            while (p < end && *p != ' ')
                p++;
            n--;
            continue;
        }
        const char *close = closing(p);
        size_t inner = (size_t)(close - p - 1);
        if (inner >= 4 && memcmp(close - 4, " ...", 4) == 0) {
            /* A repeated group: n arguments go round it; what is left of
             * the current round, then the group again. */
            const char *w = p + 1, *stop = close - 4;
            size_t words = 0;
            for (const char *q = w; q < stop; q++)
                words += (q == w || q[-1] == ' ') && *q != ' ';
            if (words == 0)
                return; /* "[ ...]": nothing to show */
            size_t skip = n % words;
            for (size_t i = 0; w < stop; i++) {
                const char *e = w;
                while (e < stop && *e != ' ')
                    e++;
                if (i >= skip && skip > 0)
                    put(out, cap, w, (size_t)(e - w));
                w = e + 1;
            }
            put(out, cap, p, (size_t)(close - p + 1));
            return;
        }
        /* An optional group: the arguments go into it. */
        spec_rest(p + 1, inner, n, out, cap);
        return;
    }
    while (p < end && *p == ' ')
        p++;
    if (p < end)
        put(out, cap, p, (size_t)(end - p));
}

void cli_complete_hint(const cli_word_t *words, size_t n, const char *line, size_t len, char *out,
                       size_t cap)
{
    span_t sp[MAX_TOKENS];
    int quoted;
    if (cap == 0)
        return;
    out[0] = '\0';
    size_t count = scan(line, len, sp, MAX_TOKENS, &quoted);
    if (count > MAX_TOKENS)
        return;
    int open = quoted || (len > 0 && !isspace((unsigned char)line[len - 1]));
    size_t k = 0;
    while (k < count && is_option(line, &sp[k]))
        k++;
    if (k == count)
        return;
    const span_t *cmd = &sp[k];
    size_t clen = cmd->end - cmd->start;
    for (size_t i = 0; i < n; i++) {
        if (strlen(words[i].name) != clen ||
            strncasecmp(words[i].name, line + cmd->start, clen) != 0)
            continue;
        size_t done = count - k - 1 - (open && k + 1 < count);
        spec_rest(words[i].args, strlen(words[i].args), done, out, cap);
        return;
    }
}
