/*
 * cli_text: a server's words, made safe for a terminal.
 *
 * Messages in answers (errors, Ping, Rebuild, slow log fields) are text a
 * server chose; printed as they are, an escape sequence in one could
 * retitle the window, clear the screen or fake further output. These
 * helpers keep printable ASCII and well-formed UTF-8 and write every other
 * byte (controls, DEL, C1 controls, bytes that are not UTF-8) as \xHH.
 */
#ifndef CLI_TEXT_H
#define CLI_TEXT_H

#include <stddef.h>
#include <stdio.h>

/* Writes s to f, escaped as above. */
void cli_text_put(FILE *f, const char *s);

/* Writes s to f escaped as above, and a backslash as \x5c too: a field
 * of machine-read output (--raw), which a reader can then decode
 * exactly (a name holding the text "\x0a" is not one holding a newline). */
void cli_text_put_field(FILE *f, const char *s);

/* Copies s into out[0..cap) escaped as above, cut at a whole character
 * when it does not fit; out is always terminated (cap > 0). */
void cli_text_copy(char *out, size_t cap, const char *s);

#endif
