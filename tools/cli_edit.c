/*
 * cli_edit: kvs-cli's line editor, on libedit's native API (histedit.h).
 *
 * Editing is libedit's: emacs key bindings by default, ~/.editrc (or
 * $EDITRC) read at start for anyone who wants vi mode or other bindings
 * ("kvs-cli:" prefixes lines meant only for kvs-cli). On top of it:
 *
 *  - History: libedit's history list, loaded from the history file at start
 *    and written back after every line kvs-cli chose to remember (never an
 *    `auth` line: kvs_cli.c decides), in libedit's own format. The file is
 *    written to a temporary name and renamed over the old one, so a crash
 *    or a second session writing at the same moment never leaves half a
 *    file; libedit makes it mode 0600.
 *
 *  - Completion: TAB is bound to complete(), which completes the command
 *    name under the cursor (cli_complete): the one match in full and a
 *    space, or the longest common prefix, or, when that adds nothing, the
 *    list of candidates printed below the line (CC_REDISPLAY then draws the
 *    prompt and the line again under it).
 *
 *  - Hints: libedit has no hint API like linenoise's. It does have a right
 *    prompt (EL_RPROMPT, as zsh's RPROMPT): a function whose text libedit
 *    draws at the right end of the input line on every full redraw, and
 *    drops by itself when the input reaches it or wraps. hint() returns the
 *    arguments the typed command still takes (cli_complete_hint). Typing a
 *    character at the end of the line normally takes a fast path that draws
 *    only that character and never asks the right prompt again, except
 *    when a right prompt is on the screen (libedit then redraws the line,
 *    diffing against the screen, to keep the prompt clear of the input).
 *    So when there is no hint, hint() returns a single space: a right
 *    prompt is always there, invisible, and every keystroke redraws with a
 *    fresh hint, without rebinding any key (rebinding the printable keys
 *    would end Ctrl-R's incremental search at the first letter).
 *
 *  - Enter: the terminal sends ^M, which libedit's edit mode (ICRNL) reads
 *    as ^J. ^J is bound to accept_line(), which clears the hint, has the line
 *    redrawn without it, and then feeds ^M (libedit's ed-newline) back to
 *    the editor with el_push (pushed keys bypass the terminal), so the
 *    accepted line stays on the screen without a stale hint and libedit
 *    ends the line its own way.
 *
 * libedit restores the terminal's mode on signals (EL_SIGNAL) and before
 * el_gets returns, so Ctrl-C (which ends kvs-cli) and Ctrl-Z leave a sane
 * terminal.
 */
#include "cli_edit.h"

#include <errno.h>
#include <histedit.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HISTORY_SIZE 1000 /* lines kept in memory and in the file */
#define HINT_MAX 160

struct cli_edit_s {
    EditLine *el;
    History *hist;
    HistEvent ev;
    const cli_word_t *words;
    size_t n_words;
    size_t *idx; /* n_words entries, for completion matches */
    char *prompt;
    char *history; /* file, or NULL */
    int reported;  /* a failed history write was reported */
    int accepted;  /* the line was accepted: no hint */
    char hint[HINT_MAX];
};

static cli_edit_t *editor_of(EditLine *el)
{
    void *e = NULL;
    el_get(el, EL_CLIENTDATA, &e);
    return e;
}

static char *prompt(EditLine *el)
{
    return editor_of(el)->prompt;
}

/* The right prompt: the hint for the whole line, or " " (see the file's
 * opening comment). Plain text: libedit redraws a line by rewriting only
 * what changed, without tracking terminal attributes, so a faint hint
 * (EL_RPROMPT_ESC with SGR 2) leaks its attribute into the text typed
 * before it. */
static char *hint(EditLine *el)
{
    cli_edit_t *e = editor_of(el);
    e->hint[0] = '\0';
    if (e->accepted)
        return e->hint;
    const LineInfo *li = el_line(el);
    cli_complete_hint(e->words, e->n_words, li->buffer, (size_t)(li->lastchar - li->buffer),
                      e->hint, sizeof(e->hint));
    if (e->hint[0] == '\0')
        snprintf(e->hint, sizeof(e->hint), " "); /* keeps keystrokes redrawing */
    return e->hint;
}

static unsigned char accept_line(EditLine *el, int ch)
{
    (void)ch;
    editor_of(el)->accepted = 1;
    el_push(el, "\r");
    return CC_REFRESH;
}

/* Prints the names of words[idx[0..m)] below the line. */
static void list_matches(const cli_edit_t *e, size_t m)
{
    fputc('\n', stdout);
    for (size_t i = 0; i < m; i++)
        fprintf(stdout, "%s%s", i ? "  " : "", e->words[e->idx[i]].name);
    fputc('\n', stdout);
    fflush(stdout);
}

/* Whether the letters of s[0..n) are all upper case (and there is one). */
static int typed_upper(const char *s, size_t n)
{
    int upper = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 'a' && s[i] <= 'z')
            return 0;
        upper |= s[i] >= 'A' && s[i] <= 'Z';
    }
    return upper;
}

static unsigned char complete(EditLine *el, int ch)
{
    (void)ch;
    cli_edit_t *e = editor_of(el);
    const LineInfo *li = el_line(el);
    size_t cursor = (size_t)(li->cursor - li->buffer), start;
    if (!cli_complete_span(li->buffer, cursor, &start))
        return CC_ERROR;
    size_t plen = cursor - start;
    size_t m = cli_complete_matches(e->words, e->n_words, li->buffer + start, plen, e->idx);
    if (m == 0)
        return CC_ERROR;
    size_t common = cli_complete_common(e->words, e->idx, m);
    int upper = typed_upper(li->buffer + start, plen);
    int spaced = li->cursor < li->lastchar && *li->cursor == ' ';
    char add[64]; /* li is invalid once the line changes: decide first */
    size_t w = 0;
    const char *name = e->words[e->idx[0]].name;
    for (size_t i = plen; i < common && w + 2 < sizeof(add); i++)
        add[w++] =
            upper && name[i] >= 'a' && name[i] <= 'z' ? (char)(name[i] - 'a' + 'A') : name[i];
    if (m == 1 && !spaced)
        add[w++] = ' ';
    add[w] = '\0';
    if (w > 0)
        return el_insertstr(el, add) == 0 ? CC_REFRESH : CC_ERROR;
    if (m == 1)
        return CC_NORM;
    list_matches(e, m);
    return CC_REDISPLAY;
}

/* Binds the keys described in the file's opening comment. */
static void bind_keys(EditLine *el)
{
    /* The wide call: libedit keeps these strings, and its narrow el_set
     * copies them into memory it never frees. */
    el_wset(el, EL_ADDFN, L"kvs-complete", L"complete a kvs-cli command name", complete);
    el_wset(el, EL_ADDFN, L"kvs-accept", L"accept the line without its hint", accept_line);
    el_set(el, EL_BIND, "^I", "kvs-complete", NULL);
    el_set(el, EL_BIND, "^J", "kvs-accept", NULL);
    el_set(el, EL_BIND, "^M", "ed-newline", NULL);
}

cli_edit_t *cli_edit_new(const char *prog, const char *prompt_text, const cli_word_t *words,
                         size_t n, const char *history_file)
{
    cli_edit_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->words = words;
    e->n_words = n;
    e->idx = calloc(n ? n : 1, sizeof(*e->idx));
    e->prompt = strdup(prompt_text);
    e->history = history_file ? strdup(history_file) : NULL;
    e->hist = history_init();
    e->el = el_init(prog, stdin, stdout, stderr);
    if (e->idx == NULL || e->prompt == NULL || (history_file && !e->history) || e->hist == NULL ||
        e->el == NULL) {
        cli_edit_free(e);
        return NULL;
    }
    history(e->hist, &e->ev, H_SETSIZE, HISTORY_SIZE);
    history(e->hist, &e->ev, H_SETUNIQUE, 1);
    if (e->history != NULL)
        history(e->hist, &e->ev, H_LOAD, e->history); /* a missing file is a first session */
    el_set(e->el, EL_CLIENTDATA, e);
    el_set(e->el, EL_EDITOR, "emacs");
    el_set(e->el, EL_SIGNAL, 1);
    el_set(e->el, EL_HIST, history, e->hist);
    el_set(e->el, EL_PROMPT, prompt);
    el_set(e->el, EL_RPROMPT, hint);
    el_source(e->el, NULL);
    bind_keys(e->el);
    return e;
}

const char *cli_edit_gets(cli_edit_t *e, size_t *len)
{
    int count = 0;
    e->accepted = 0;
    const char *line = el_gets(e->el, &count);
    if (line == NULL || count <= 0)
        return NULL;
    *len = (size_t)count;
    return line;
}

/* Writes the history to a temporary file and renames it over the file. */
static int save_history(cli_edit_t *e)
{
    size_t n = strlen(e->history) + 32;
    char *tmp = malloc(n);
    if (tmp == NULL)
        return -ENOMEM;
    snprintf(tmp, n, "%s.tmp.%ld", e->history, (long)getpid());
    int rc = 0;
    if (history(e->hist, &e->ev, H_SAVE, tmp) < 0 || rename(tmp, e->history) != 0) {
        rc = errno ? -errno : -EIO;
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

void cli_edit_remember(cli_edit_t *e, const char *line, size_t len)
{
    if (len > 0 && line[len - 1] == '\n')
        len--;
    char *copy = strndup(line, len);
    if (copy == NULL)
        return;
    history(e->hist, &e->ev, H_ENTER, copy);
    free(copy);
    if (e->history == NULL)
        return;
    errno = 0;
    int rc = save_history(e);
    if (rc != 0 && !e->reported) {
        e->reported = 1;
        fprintf(stderr,
                "kvs-cli: cannot write the history file %s: %s (history is kept for "
                "this session only; set KVSCLI_HISTFILE to another file, or to \"\" for "
                "none)\n",
                e->history, strerror(-rc));
    }
}

void cli_edit_free(cli_edit_t *e)
{
    if (e == NULL)
        return;
    if (e->el != NULL)
        el_end(e->el);
    if (e->hist != NULL)
        history_end(e->hist);
    free(e->idx);
    free(e->prompt);
    free(e->history);
    free(e);
}

int cli_edit_history_path(char *out, size_t cap)
{
    const char *env = getenv("KVSCLI_HISTFILE");
    if (env != NULL) {
        if (env[0] == '\0')
            return -1;
        int k = snprintf(out, cap, "%s", env);
        return k >= 0 && (size_t)k < cap ? 0 : -1;
    }
    const char *home = getenv("HOME");
    if (home == NULL || home[0] == '\0') {
        const struct passwd *pw = getpwuid(getuid());
        home = pw != NULL ? pw->pw_dir : NULL;
    }
    if (home == NULL || home[0] == '\0')
        return -1;
    int k = snprintf(out, cap, "%s/.kvscli_history", home);
    return k >= 0 && (size_t)k < cap ? 0 : -1;
}
