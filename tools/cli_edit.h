/*
 * cli_edit: kvs-cli's interactive line editor, on libedit (the only file
 * that includes histedit.h): emacs-style editing (or what ~/.editrc says),
 * history kept across sessions in a file, TAB completion of command names
 * and a hint of the arguments a command still takes, shown at the right
 * end of the input line while typing. See cli_edit.c for how.
 *
 * Used only when stdin and stdout are both terminals; kvs-cli reads piped
 * input with plain getline, unchanged.
 */
#ifndef CLI_EDIT_H
#define CLI_EDIT_H

#include "cli_complete.h"

#include <stddef.h>

typedef struct cli_edit_s cli_edit_t;

/* Starts editing on the terminal (stdin, stdout) with `prompt` (copied),
 * completion and hints over words[0..n) (kept: the caller's table must
 * outlive the editor), and the history file `history` (copied; NULL: no
 * file), whose lines are loaded now. Returns NULL when libedit cannot start
 * (the caller then reads lines without editing). */
cli_edit_t *cli_edit_new(const char *prog, const char *prompt, const cli_word_t *words, size_t n,
                         const char *history);

/* Reads one line. Returns it, with its newline, in a buffer the editor owns
 * until the next call, and sets *len; NULL at the end of input (Ctrl-D on
 * an empty line) or on a read error. */
const char *cli_edit_gets(cli_edit_t *e, size_t *len);

/* Adds line[0..len) (a trailing newline is dropped) to the history and
 * rewrites the history file (mode 0600, replaced atomically). The caller
 * decides which lines may be kept. A file that cannot be written is
 * reported once on stderr. */
void cli_edit_remember(cli_edit_t *e, const char *line, size_t len);

/* Saves nothing more, restores the terminal and frees the editor. NULL is
 * allowed. */
void cli_edit_free(cli_edit_t *e);

/* The history file: $KVSCLI_HISTFILE when set (empty: none), else
 * ~/.kvscli_history ($HOME, or the user's home directory from the password
 * database). Writes it to out[0..cap) and returns 0, or returns -1 when
 * there is none (or it does not fit). */
int cli_edit_history_path(char *out, size_t cap);

#endif
