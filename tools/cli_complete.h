/*
 * cli_complete: what kvs-cli's line editor offers while a line is typed:
 * completion of the command name and a hint of the arguments still to
 * come. Pure functions on the line's text (no terminal, no allocation), so
 * they are unit-tested apart from the editor (cli_edit) that calls them.
 *
 * Lines are cut into tokens by the session's rules (kvs_cli.c split_line):
 * whitespace separates tokens outside quotes, "double quotes" take
 * backslash escapes, 'single quotes' take \' only. Tokens are not decoded
 * here: only their boundaries matter. Leading tokens that start with "--"
 * are a line's value options (--int ...), not its command.
 *
 * Argument specs are the ones `help` prints: words ("TABLE KEY"), optional
 * groups in brackets ("[CURSOR [COUNT]]") and repeated groups ending in
 * "..." ("[KEY VALUE ...]").
 */
#ifndef CLI_COMPLETE_H
#define CLI_COMPLETE_H

#include <stddef.h>

/* A command the editor knows: its name and its argument spec ("" for none). */
typedef struct cli_word_s {
    const char *name;
    const char *args;
} cli_word_t;

/* When line[0..cursor) ends inside the command-name token (or where it
 * would start), returns 1 and sets *start to the token's first byte;
 * returns 0 when the cursor is in an option or an argument, or inside
 * quotes. */
int cli_complete_span(const char *line, size_t cursor, size_t *start);

/* The words whose name starts with prefix[0..plen) (case-insensitively):
 * their indexes go to idx[0..n) in table order; returns how many. */
size_t cli_complete_matches(const cli_word_t *words, size_t n, const char *prefix, size_t plen,
                            size_t *idx);

/* The length of the longest prefix (case-insensitive) the names of
 * words[idx[0..m)] share; m must be at least 1. */
size_t cli_complete_common(const cli_word_t *words, const size_t *idx, size_t m);

/* The hint for line[0..len): once the command name is typed (the first
 * non-option token names a word exactly, case-insensitively), the part of
 * its argument spec that the arguments already ended by whitespace do not
 * cover: "hget" and "hget t" give "TABLE KEY", "hget t " and "hget t k"
 * give "KEY", "hmset t k v k2 " gives "VALUE [KEY VALUE ...]". Writes it
 * to out[0..cap) (NUL-terminated, cut if longer); "" when there is none:
 * no known command, every argument given, or more than the command takes. */
void cli_complete_hint(const cli_word_t *words, size_t n, const char *line, size_t len, char *out,
                       size_t cap);

#endif
