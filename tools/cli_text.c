/*
 * cli_text: escaping a server's text for a terminal (see cli_text.h).
 */
#include "cli_text.h"

#include <string.h>

/* The next character of p as it should be shown: writes it (NUL-terminated)
 * into tok and returns how many input bytes it took (at least 1). */
static size_t next_token(const unsigned char *p, char tok[8])
{
    size_t k = p[0] < 0x80                    ? 1
               : p[0] >= 0xc2 && p[0] <= 0xdf ? 2
               : p[0] >= 0xe0 && p[0] <= 0xef ? 3
               : p[0] >= 0xf0 && p[0] <= 0xf4 ? 4
                                              : 0;
    for (size_t i = 1; i < k; i++)
        if ((p[i] & 0xc0) != 0x80)
            k = 0; /* cut short (a NUL ends the loop's reads too) */
    if (k == 1 && p[0] >= 0x20 && p[0] < 0x7f) {
        tok[0] = (char)p[0];
        tok[1] = '\0';
    } else if (k > 1 && !(p[0] == 0xc2 && p[1] < 0xa0)) { /* not a C1 control */
        memcpy(tok, p, k);
        tok[k] = '\0';
    } else {
        snprintf(tok, 8, "\\x%02x", p[0]);
        k = 1;
    }
    return k;
}

void cli_text_put(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    char tok[8];
    while (*p != '\0') {
        p += next_token(p, tok);
        fputs(tok, f);
    }
}

void cli_text_copy(char *out, size_t cap, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t w = 0;
    char tok[8];
    while (*p != '\0') {
        size_t k = next_token(p, tok), n = strlen(tok);
        if (w + n >= cap)
            break;
        memcpy(out + w, tok, n);
        w += n;
        p += k;
    }
    out[w] = '\0';
}
