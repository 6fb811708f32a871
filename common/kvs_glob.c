/*
 * kvs_glob: table-name patterns of users' grants (see kvs_glob.h).
 */
#include "kvs_glob.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>

#define INVALID (-2) /* set_match: the set is not one a grant may hold */

/* The character (code point) of UTF-8 text s[0..n) at *i, *i moved past
 * it. Table names and patterns are valid UTF-8 (checked requests, a YAML
 * file); a byte that starts no sequence stands for itself. */
static uint32_t utf8_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s + *i;
    uint32_t c = u[0];
    size_t len = c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (len > n - *i)
        len = 1;
    for (size_t k = 1; k < len; k++)
        if ((u[k] & 0xc0) != 0x80)
            len = 1;
    if (len > 1) {
        c &= 0x7fu >> len;
        for (size_t k = 1; k < len; k++)
            c = c << 6 | (u[k] & 0x3fu);
    }
    *i += len;
    return c;
}

/* Whether ASCII character c is in POSIX class name[0..n) ("alpha", ...):
 * 1 or 0; -1 when there is no such class. */
static int in_class(const char *name, size_t n, uint32_t c)
{
    static const struct {
        const char *name;
        int (*is)(int);
    } classes[] = {{"alnum", isalnum}, {"alpha", isalpha}, {"blank", isblank},
                   {"cntrl", iscntrl}, {"digit", isdigit}, {"graph", isgraph},
                   {"lower", islower}, {"print", isprint}, {"punct", ispunct},
                   {"space", isspace}, {"upper", isupper}, {"xdigit", isxdigit}};
    for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
        if (strlen(classes[i].name) == n && memcmp(classes[i].name, name, n) == 0)
            return c < 0x80 && classes[i].is((int)c) != 0;
    return -1;
}

/* The set "[...]" at p[*j] against character c: 1 when it matches, 0 when
 * not, *j moved past its "]"; -1 (*j unchanged) when it has no "]", and
 * "[" is then a character like any other; INVALID when it names a class
 * there is none of, or a range whose ends are reversed (a typo: negated,
 * such a set would take every character). */
static int set_match(const char *p, size_t n, size_t *j, uint32_t c)
{
    size_t k = *j + 1;
    int neg = k < n && (p[k] == '!' || p[k] == '^'), hit = 0, bad = 0;
    k += (size_t)neg;
    for (int first = 1;; first = 0) {
        if (k >= n)
            return -1;
        if (p[k] == ']' && !first)
            break;
        if (p[k] == '[' && k + 1 < n && p[k + 1] == ':') { /* [:class:] */
            const char *end = strstr(p + k + 2, ":]");
            if (end != NULL) {
                int in = in_class(p + k + 2, (size_t)(end - (p + k + 2)), c);
                bad |= in < 0;
                hit |= in > 0;
                k = (size_t)(end - p) + 2;
                continue;
            }
        }
        if (p[k] == '\\' && k + 1 < n)
            k++;
        uint32_t lo = utf8_next(p, n, &k), hi = lo;
        if (k + 1 < n && p[k] == '-' && p[k + 1] != ']') {
            k++;
            if (p[k] == '\\' && k + 1 < n)
                k++;
            hi = utf8_next(p, n, &k);
        }
        bad |= lo > hi;
        hit |= lo <= c && c <= hi;
    }
    *j = k + 1;
    return bad ? INVALID : hit != neg;
}

/* See kvs_glob.h. Runs in O(|p| x |t|) at worst (one "*" is backtracked
 * to at a time). */
int kvs_glob_match(const char *p, const char *t, size_t tn)
{
    size_t pn = strlen(p), pi = 0, ti = 0, star_p = SIZE_MAX, star_t = 0;
    while (ti < tn) {
        if (pi < pn && p[pi] == '*') {
            star_p = ++pi;
            star_t = ti;
            continue;
        }
        if (pi < pn) {
            size_t tj = ti, pj = pi;
            uint32_t c = utf8_next(t, tn, &tj);
            int ok = -1;
            if (p[pi] == '?') {
                ok = 1;
                pj++;
            } else if (p[pi] == '[') {
                ok = set_match(p, pn, &pj, c);
                if (ok == INVALID)
                    return 0; /* a pattern kvs_glob_problem refuses grants nothing */
            }
            if (ok < 0 && p[pj] == '\\' && pj + 1 == pn) {
                ok = 0;          /* a backslash escaping nothing: matches nothing, as in fnmatch */
            } else if (ok < 0) { /* a character of its own */
                if (p[pj] == '\\')
                    pj++;
                ok = utf8_next(p, pn, &pj) == c;
            }
            if (ok) {
                pi = pj;
                ti = tj;
                continue;
            }
        }
        if (star_p == SIZE_MAX)
            return 0;
        utf8_next(t, tn, &star_t); /* the last "*" takes one more character */
        pi = star_p;
        ti = star_t;
    }
    while (pi < pn && p[pi] == '*')
        pi++;
    return pi == pn;
}

const char *kvs_glob_problem(const char *p)
{
    size_t n = strlen(p);
    for (size_t i = 0; i < n;) {
        if (p[i] == '\\' && i + 1 < n) {
            i += 2;
            continue;
        }
        if (p[i] == '[') {
            size_t j = i;
            int ok = set_match(p, n, &j, 0);
            if (ok == INVALID)
                return "a set in it names a character class there is none of (the classes are "
                       "alnum, alpha, blank, cntrl, digit, graph, lower, print, punct, space, "
                       "upper, xdigit), or a range whose ends are reversed";
            i = ok < 0 ? i + 1 : j;
            continue;
        }
        i++;
    }
    return NULL;
}
