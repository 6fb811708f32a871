/*
 * cli_text: escaping a server's text for a terminal (see cli_text.h).
 */
#include "cli_text.h"
#include "kvs_msg.h"

#include <string.h>

/* The next character of p[0..n) as it should be shown (kvs_text_printable
 * decides): writes it (NUL-terminated) into tok and returns how many input
 * bytes it took (at least 1). */
static size_t next_token(const unsigned char *p, size_t n, char tok[8])
{
    size_t k = kvs_text_printable(p, n);
    if (k == 0) {
        snprintf(tok, 8, "\\x%02x", p[0]);
        return 1;
    }
    memcpy(tok, p, k);
    tok[k] = '\0';
    return k;
}

static void put_escaped(FILE *f, const char *s, int backslash)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    char tok[8];
    while (n > 0) {
        size_t k = next_token(p, n, tok);
        fputs(backslash && p[0] == '\\' ? "\\x5c" : tok, f);
        p += k;
        n -= k;
    }
}

void cli_text_put(FILE *f, const char *s)
{
    put_escaped(f, s, 0);
}

void cli_text_put_field(FILE *f, const char *s)
{
    put_escaped(f, s, 1);
}

void cli_text_copy(char *out, size_t cap, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t w = 0, n = strlen(s);
    char tok[8];
    while (n > 0) {
        size_t k = next_token(p, n, tok), t = strlen(tok);
        if (w + t >= cap)
            break;
        memcpy(out + w, tok, t);
        w += t;
        p += k;
        n -= k;
    }
    out[w] = '\0';
}
