/*
 * kvs-cli: a redis-cli-like client for kvs routers and nodes.
 *
 *   kvs-cli [OPTIONS] COMMAND ARGS...   run one command; the exit status says how it went
 *   kvs-cli [OPTIONS]                   a session: commands read line by line from stdin
 *
 * The client is deliberately simple: one blocking socket, one request in
 * flight, no event loop. Each command becomes one kvs.CommandRequest sent as
 * a length-prefixed frame; the reply frame is checked (bit 31 set or more
 * than 1 GiB, the largest limits.max_frame, is a protocol error, since no
 * server sends that; its buffer grows as its bytes come) and decoded
 * with protobuf-c within the budget a server gives a request of its size
 * (kvs_msg_decode_response: 20 times it and 2 MiB; more is a protocol
 * error, so a hostile server's flood of empty pairs cannot cost 45 times
 * what it sent). `--timeout` bounds connecting and waiting for each reply.
 *
 * Memory: two arenas. `arena` holds what one command builds (its request,
 * values read from files, a session line's argument table) and is reset
 * before the next command; `reply` holds one packed request and one decoded
 * response and is reset before every exchange, so `hscanall` can walk a
 * table of any size with the memory of one page.
 *
 * Exit status (also the result of every internal command runner):
 *   0 the server answered 200;
 *   1 it answered anything else (hget of a missing key prints (nil) too);
 *   2 usage error, connection failure, timeout or protocol error;
 *   3 it answered that the write may or may not have happened
 *     (CommandResponse.outcome_unknown): read the keys to find out.
 * A session ends with 1 when any of its commands failed, else 0.
 *
 * Session lines are split like a shell would: whitespace separates tokens,
 * "double quotes" understand \n \t \r \\ \" \xHH, 'single quotes' are literal
 * except \'. Tokens are byte strings (a \x00 is allowed), so keys and binary
 * values can hold any byte; table names must be NUL-free UTF-8, and string
 * values UTF-8 (where a \x00 is a character like any other). Options may
 * lead a session line (`--int hset t k 5`) and then apply to that line only.
 *
 * Options must come before the command, so that a value such as -5 is never
 * taken for an option.
 *
 * On a terminal (stdin and stdout both ttys), a session reads lines through
 * cli_edit (libedit): editing, history in ~/.kvscli_history (never a line
 * whose command is `auth` or `hash-token`, nor one that does not parse), TAB completion of
 * command names and a hint of their arguments. Piped input is read with
 * getline exactly as without a terminal.
 *
 * Tables bound to Kafka topics: --position prints a write's position (as
 * text, "topic:partition:offset,..."), --min-position POS sends it back
 * with every request (reads then see at least those writes, from any
 * connection), --stale lets reads be served by a worker that is catching
 * up. Within one session the router attaches the session's own positions
 * by itself.
 *
 * Authentication: with --user (and --token, or the environment variable
 * KVS_TOKEN, which stays out of `ps`), every new connection sends Auth
 * first, as redis-cli does with -a; `auth USER TOKEN` does it by hand in a
 * session. `hash-token` talks to no server: it prints the stored form of a
 * token (kvs_token) for the `users:` section of config.yaml.
 *
 * `keyslot TABLE KEY` talks to no server: it computes the partition and
 * shard of a key from the node's config (`--config FILE`, the file
 * kvs-router runs with) with the same kvs_place functions the router uses,
 * so a user can check by hand where a key lives and where a producer should
 * have put it.
 */
#include "cli_ask.h"
#include "cli_text.h"
#include "cli_digest.h"
#include "cli_rebuild.h"
#include "cli_edit.h"
#include "cli_net.h"
#include "kvs_config.h"
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_fs.h"
#include "kvs_hash.h"
#include "kvs_msg.h"
#include "kvs_place.h"
#include "kvs_pos.h"
#include "kvs_token.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2, CLI_UNKNOWN = 3 };

typedef enum { VT_STRING, VT_INT, VT_FLOAT, VT_BOOL, VT_BINARY } cli_vtype_t;

/* What a reply carries, and so how it is printed. */
typedef enum {
    SHAPE_PING,
    SHAPE_VALUE,
    SHAPE_LIST,
    SHAPE_PAIRS,
    SHAPE_KEYS,
    SHAPE_SCAN
} cli_shape_t;

/* One argument: bytes, not necessarily NUL-terminated. */
typedef struct cli_arg_s {
    const char *p;
    size_t len;
} cli_arg_t;

typedef struct cli_s {
    const char *host;
    char host_buf[256]; /* --host "[v6]" without its brackets */
    const char *port;
    const char *socket; /* overrides host/port when set */
    double timeout;     /* seconds; 0 = wait forever */
    cli_vtype_t vtype;  /* type of hset/hmset values */
    int raw;
    int session;     /* commands come from stdin */
    int stdin_taken; /* stdin carries commands or "@-" was read */
    int connected;   /* a connection to the server was made once */
    int unreachable; /* the first connection failed (a piped session ends there) */
    cli_net_t net;   /* the connection; net.fd is -1 when not connected */
    int use_tls;     /* --tls */
    const char *cacert, *cert, *key;
    int insecure;
    const char *user, *token; /* --user, --token (or KVS_TOKEN): Auth on every connection */
    char name[400];           /* "127.0.0.1:9527" or "unix:/path", for messages */
    const char *config_path;  /* --config, for keyslot */
    kvs_config_t *cfg;        /* loaded on first use */
    kvs_arena_t arena;
    kvs_arena_t reply;
    int show_position;      /* --position: print the position of writes */
    kvs_buf_t min_position; /* --min-position, as a token */
    int stale;              /* --stale */
} cli_t;

typedef struct cli_cmd_s cli_cmd_t;
typedef int (*cli_build_fn)(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                            Kvs__CommandRequest *req);
typedef int (*cli_run_fn)(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc);

struct cli_cmd_s {
    const char *name;
    const char *args;
    const char *help;
    int min, max; /* argument count after the name; max -1 = no limit */
    int step;     /* arguments past `min` come in groups of `step` */
    Kvs__CommandRequest__CommandCase cc;
    cli_build_fn build;
    cli_shape_t shape;
    cli_run_fn run;
};

/* ---- memory -------------------------------------------------------------------- */

/* Allocates from an arena; a command-line tool has nothing better to do than
 * exit when memory runs out. */
static void *cli_alloc(kvs_arena_t *a, size_t n)
{
    void *p = kvs_arena_alloc(a, n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "kvs-cli: out of memory\n");
        exit(CLI_USAGE);
    }
    return p;
}

static int arg_is(cli_arg_t a, const char *word)
{
    size_t n = strlen(word);
    return a.len == n && strncasecmp(a.p, word, n) == 0;
}

/* ---- transport ------------------------------------------------------------------ */

/* The TLS settings of --tls, --cacert, --cert, --key and --insecure, made
 * once. Returns 0, or CLI_USAGE after saying why they do not load. */
static int cli_tls_setup(cli_t *c)
{
    char err[600];
    if (!c->use_tls || c->net.tls_ctx != NULL)
        return 0;
    kvs_tls_opts_t o = {
        .role = KVS_TLS_CLIENT,
        .cert = c->cert,
        .key = c->key != NULL ? c->key : c->cert, /* a PEM file may hold both */
        .ca = c->cacert,
        .peer = c->insecure ? KVS_TLS_PEER_NONE : KVS_TLS_PEER_REQUIRE,
        .min_version = KVS_TLS_V12,
        .max_version = KVS_TLS_V13,
        .what = "--tls",
    };
    int rc = kvs_tls_ctx_new(&o, &c->net.tls_ctx, err, sizeof(err));
    if (rc == 0)
        return 0;
    fprintf(stderr, "kvs-cli: %s\n", rc == KVS_ECONFIG ? err : kvs_strerror(rc));
    return CLI_USAGE;
}

/* Connects c->net. Returns 0, or CLI_USAGE after saying why it could not. */
static int cli_connect(cli_t *c)
{
    char why[700];
    if (cli_tls_setup(c) != 0)
        return CLI_USAGE;
    int rc = cli_net_open(&c->net, c->socket, c->host, c->port, c->timeout, why, sizeof(why));
    if (rc == 0) {
        c->connected = 1;
        return 0;
    }
    if (rc == KVS_ENOTFOUND)
        fprintf(stderr, "kvs-cli: cannot resolve host \"%s\": %s\n", c->host, why);
    else if (rc == KVS_ETLS)
        fprintf(stderr, "kvs-cli: %s: %s\n", c->name, why);
    else
        fprintf(stderr, "kvs-cli: cannot connect to %s: %s\n", c->name, why);
    return CLI_USAGE;
}

static void cli_disconnect(cli_t *c)
{
    cli_net_close(&c->net);
}

/* Sends one request and reads its response (cli_ask_on), the response in
 * c->reply memory. */
static int exchange(cli_t *c, const Kvs__CommandRequest *req, Kvs__CommandResponse **out, char *why,
                    size_t len)
{
    return cli_ask_on(&c->net, req, c->timeout, &c->reply, out, why, len);
}

static void report_io_error(const cli_t *c, int rc, const char *why)
{
    if (rc == -ETIMEDOUT)
        fprintf(stderr, "kvs-cli: %s: no reply within %g s (see --timeout)\n", c->name, c->timeout);
    else if (rc == KVS_ECLOSED)
        fprintf(stderr, "kvs-cli: %s: the server closed the connection\n", c->name);
    else if (rc == KVS_EPROTO)
        fprintf(stderr, "kvs-cli: %s: protocol error: %s (is this a kvs server?)\n", c->name, why);
    else if (rc == KVS_ETLS)
        fprintf(stderr, "kvs-cli: %s: TLS: %s\n", c->name, cli_net_tls_error(&c->net));
    else
        fprintf(stderr, "kvs-cli: %s: %s\n", c->name, strerror(-rc));
}

/* --user: authenticates a new connection. Returns 0, CLI_FAILED (the
 * server refused: said why), CLI_USAGE (an answer no kvs server gives:
 * said so), or an exchange error (negative) with why set. */
static int cli_auth(cli_t *c, char *why, size_t len)
{
    Kvs__CommandRequest req = KVS__COMMAND_REQUEST__INIT;
    Kvs__Auth m = KVS__AUTH__INIT;
    Kvs__CommandResponse *r;
    m.user = (char *)c->user;
    m.token = (char *)(c->token != NULL ? c->token : "");
    req.command_case = KVS__COMMAND_REQUEST__COMMAND_AUTH;
    req.auth = &m;
    int rc = exchange(c, &req, &r, why, len);
    if (rc != 0 || r->status == KVS_STATUS_OK)
        return rc;
    fflush(stdout);
    if (r->status < 100 || r->status > 599) { /* as check_status: no kvs server's answer */
        fprintf(stderr,
                "kvs-cli: %s: protocol error: the answer to Auth has %s (is this a kvs "
                "server?)\n",
                c->name, r->status == 0 ? "no status" : "a status none kvs sends");
        return CLI_USAGE;
    }
    fprintf(stderr, "kvs-cli: %s: authentication as \"%s\" failed: %" PRIu32 " ", c->name, c->user,
            r->status);
    cli_text_put(stderr, r->message);
    putc('\n', stderr);
    return CLI_FAILED;
}

/* Connects if needed (and authenticates, with --user), sends `req` and
 * decodes the response into c->reply memory (valid until the next call).
 * Returns 0, CLI_FAILED when authentication was refused, or CLI_USAGE
 * after saying what went wrong; the connection is dropped then, and the
 * next call reconnects. */
static int cli_call(cli_t *c, const Kvs__CommandRequest *req, Kvs__CommandResponse **resp)
{
    char why[160] = "";
    Kvs__CommandRequest with = *req; /* the request-level options of the command line */
    with.min_position.data = c->min_position.data;
    with.min_position.len = c->min_position.len;
    with.accept_stale = c->stale;
    int rc = 0;
    kvs_arena_reset(&c->reply);
    if (c->net.fd >= 0 && cli_net_ended(&c->net)) {
        /* Closed while idle (limits.idle_timeout): nothing was sent yet, so
         * a new connection takes the command; but an answer nobody asked
         * for before the close is still the server's protocol error. */
        rc = cli_ask_unsolicited(&c->net, why, sizeof(why));
        cli_disconnect(c);
        if (rc != 0) {
            fflush(stdout);
            report_io_error(c, rc, why);
            return CLI_USAGE;
        }
    }
    if (c->net.fd < 0) {
        if (cli_connect(c) != 0) {
            c->unreachable = !c->connected;
            return CLI_USAGE;
        }
        if (c->user != NULL && (rc = cli_auth(c, why, sizeof(why))) > 0) {
            cli_disconnect(c); /* refused (CLI_FAILED), or no kvs server's answer (CLI_USAGE) */
            return rc;
        }
    }
    if (rc == 0)
        rc = exchange(c, &with, resp, why, sizeof(why));
    if (rc == 0)
        return 0;
    fflush(stdout);
    report_io_error(c, rc, why);
    cli_disconnect(c);
    return CLI_USAGE;
}

/* ---- output ----------------------------------------------------------------------- */

/* Prints bytes in double quotes; quotes and backslashes are escaped and every
 * byte outside printable ASCII becomes \xHH. */
static void put_quoted_to(FILE *f, const void *data, size_t n)
{
    const unsigned char *p = data;
    putc('"', f);
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '"' || p[i] == '\\')
            fprintf(f, "\\%c", p[i]);
        else if (p[i] >= 0x20 && p[i] < 0x7f)
            putc(p[i], f);
        else
            fprintf(f, "\\x%02x", p[i]);
    }
    putc('"', f);
}

/* Writes bytes as they are (for --raw). */
static void put_bytes(const void *data, size_t n)
{
    if (n > 0)
        fwrite(data, 1, n, stdout);
}

static void put_quoted(const void *data, size_t n)
{
    put_quoted_to(stdout, data, n);
}

/* The shortest %g form that reads back as the same double (at most %.17g). */
static void format_double(double d, char *buf, size_t len)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

static void put_value_raw(const Kvs__Value *v)
{
    char num[64];
    switch (v == NULL ? KVS__VALUE__KIND__NOT_SET : v->kind_case) {
    case KVS__VALUE__KIND_STRING_VALUE:
        put_bytes(v->string_value.data, v->string_value.len);
        break;
    case KVS__VALUE__KIND_BINARY_VALUE:
        put_bytes(v->binary_value.data, v->binary_value.len);
        break;
    case KVS__VALUE__KIND_INTEGER_VALUE:
        printf("%" PRId64, v->integer_value);
        break;
    case KVS__VALUE__KIND_FLOAT_VALUE:
        format_double(v->float_value, num, sizeof(num));
        fputs(num, stdout);
        break;
    case KVS__VALUE__KIND_BOOL_VALUE:
        fputs(v->bool_value ? "true" : "false", stdout);
        break;
    default:
        break;
    }
}

/* Prints one value without a newline, tagged by type (or bare with --raw). */
static void put_value(const cli_t *c, const Kvs__Value *v)
{
    char num[64];
    if (c->raw) {
        put_value_raw(v);
        return;
    }
    switch (v == NULL ? KVS__VALUE__KIND__NOT_SET : v->kind_case) {
    case KVS__VALUE__KIND_STRING_VALUE:
        put_quoted(v->string_value.data, v->string_value.len);
        break;
    case KVS__VALUE__KIND_BINARY_VALUE:
        fputs("(binary) ", stdout);
        put_quoted(v->binary_value.data, v->binary_value.len);
        break;
    case KVS__VALUE__KIND_INTEGER_VALUE:
        printf("(integer) %" PRId64, v->integer_value);
        break;
    case KVS__VALUE__KIND_FLOAT_VALUE:
        format_double(v->float_value, num, sizeof(num));
        printf("(float) %s", num);
        break;
    case KVS__VALUE__KIND_BOOL_VALUE:
        fputs(v->bool_value ? "(true)" : "(false)", stdout);
        break;
    default:
        fputs("(nil)", stdout);
        break;
    }
}

static void put_values(const cli_t *c, const Kvs__CommandResponse *r)
{
    if (r->n_values == 0 && !c->raw)
        puts("(empty)");
    for (size_t i = 0; i < r->n_values; i++) {
        if (!c->raw)
            printf("%zu) ", i + 1);
        put_value(c, r->values[i]);
        putchar('\n');
    }
}

/* Prints pairs numbered from first + 1 (`1) "key" => value`); with --raw,
 * a key line then a value line. */
static void put_pairs(const cli_t *c, Kvs__Kvpair *const *pairs, size_t n, size_t first)
{
    for (size_t i = 0; i < n; i++) {
        if (c->raw) {
            put_bytes(pairs[i]->key.data, pairs[i]->key.len);
            putchar('\n');
        } else {
            printf("%zu) ", first + i + 1);
            put_quoted(pairs[i]->key.data, pairs[i]->key.len);
            fputs(" => ", stdout);
        }
        put_value(c, pairs[i]->value);
        putchar('\n');
    }
}

/* The keys of pairs answered without values (hkeys). */
static void put_keys(const cli_t *c, Kvs__Kvpair *const *pairs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (c->raw) {
            put_bytes(pairs[i]->key.data, pairs[i]->key.len);
        } else {
            printf("%zu) ", i + 1);
            put_quoted(pairs[i]->key.data, pairs[i]->key.len);
        }
        putchar('\n');
    }
}

static void put_cursor(const cli_t *c, const ProtobufCBinaryData *cur)
{
    if (c->raw) {
        put_bytes(cur->data, cur->len);
    } else if (cur->len == 0) {
        fputs("cursor: (end)", stdout);
    } else {
        fputs("cursor: ", stdout);
        put_quoted(cur->data, cur->len);
    }
    putchar('\n');
}

static void put_reply(const cli_t *c, cli_shape_t shape, const Kvs__CommandResponse *r)
{
    switch (shape) {
    case SHAPE_PING:
        cli_text_put(stdout, r->message[0] != '\0' ? r->message : "PONG");
        putchar('\n');
        break;
    case SHAPE_VALUE:
        put_value(c, r->n_values > 0 ? r->values[0] : NULL);
        putchar('\n');
        break;
    case SHAPE_LIST:
        put_values(c, r);
        break;
    case SHAPE_PAIRS:
        if (r->n_pairs == 0 && !c->raw)
            puts("(empty)");
        put_pairs(c, r->pairs, r->n_pairs, 0);
        break;
    case SHAPE_KEYS:
        if (r->n_pairs == 0 && !c->raw)
            puts("(empty)");
        put_keys(c, r->pairs, r->n_pairs);
        break;
    case SHAPE_SCAN:
        if (c->raw) /* cursor first, as redis-cli --raw scan does */
            put_cursor(c, &r->cursor);
        if (r->n_pairs == 0 && !c->raw)
            puts("(empty)");
        put_pairs(c, r->pairs, r->n_pairs, 0);
        if (!c->raw)
            put_cursor(c, &r->cursor);
        break;
    }
}

/* --position: a write's position, as text ("topic:partition:offset,...");
 * pass it to --min-position to read at least that fresh. */
static void put_position(const cli_t *c, const Kvs__CommandResponse *r)
{
    char text[4096];
    if (!c->show_position || r->position.len == 0)
        return;
    if (kvs_pos_format(r->position.data, r->position.len, text, sizeof(text)) != 0)
        snprintf(text, sizeof(text), "(not a position token)");
    printf(c->raw ? "%s\n" : "position: %s\n", text);
}

/* Turns a response status into an exit status, printing any error. */
static int check_status(const cli_t *c, const cli_cmd_t *cmd, const Kvs__CommandResponse *r)
{
    if (r->status == KVS_STATUS_OK)
        return CLI_OK;
    if (r->status < 100 || r->status > 599) { /* kvs's are HTTP's: this is no kvs server's */
        fflush(stdout);
        if (r->status == 0)
            fprintf(stderr,
                    "kvs-cli: %s: protocol error: the answer has no status (is this a kvs "
                    "server?)\n",
                    c->name);
        else
            fprintf(stderr,
                    "kvs-cli: %s: protocol error: the answer's status %" PRIu32
                    " is none kvs sends (is this a kvs server?)\n",
                    c->name, r->status);
        return CLI_USAGE;
    }
    if (r->status == KVS_STATUS_NOT_FOUND && cmd->cc == KVS__COMMAND_REQUEST__COMMAND_HGET) {
        puts(c->raw ? "" : "(nil)");
        return CLI_FAILED;
    }
    fflush(stdout);
    fprintf(stderr, "(error) %" PRIu32 " ", r->status);
    cli_text_put(stderr, r->message);
    putc('\n', stderr);
    return r->outcome_unknown ? CLI_UNKNOWN : CLI_FAILED;
}

/* ---- arguments ------------------------------------------------------------------- */

/* 1 when p[0..n) is well-formed UTF-8 (no overlongs, surrogates or code
 * points past U+10FFFF), as protobuf requires of `string` fields. */
static int utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned b = p[i];
        size_t k;
        uint32_t cp, min;
        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xc2 && b <= 0xdf)
            k = 1, cp = b & 0x1f, min = 0x80;
        else if (b >= 0xe0 && b <= 0xef)
            k = 2, cp = b & 0x0f, min = 0x800;
        else if (b >= 0xf0 && b <= 0xf4)
            k = 3, cp = b & 0x07, min = 0x10000;
        else
            return 0;
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Copies an argument into a NUL-terminated string for a protobuf `string`
 * field. Returns 0, or CLI_USAGE after saying what is wrong with it. */
static int arg_string(cli_t *c, const char *what, cli_arg_t a, char **out)
{
    if (memchr(a.p, '\0', a.len) != NULL) {
        fprintf(stderr, "kvs-cli: the %s contains a NUL byte\n", what);
        return CLI_USAGE;
    }
    if (!utf8_valid((const unsigned char *)a.p, a.len)) {
        fprintf(stderr, "kvs-cli: the %s is not valid UTF-8\n", what);
        return CLI_USAGE;
    }
    char *s = cli_alloc(&c->arena, a.len + 1);
    memcpy(s, a.p, a.len);
    s[a.len] = '\0';
    *out = s;
    return 0;
}

static ProtobufCBinaryData arg_bytes(cli_arg_t a)
{
    ProtobufCBinaryData b = {.len = a.len, .data = (uint8_t *)a.p};
    return b;
}

/* A string value: UTF-8, where a NUL is a character like any other (the C
 * binding carries string_value with its length). Returns 0 or CLI_USAGE. */
static int arg_text(cli_arg_t a, ProtobufCBinaryData *out)
{
    if (!utf8_valid((const unsigned char *)a.p, a.len)) {
        fprintf(stderr, "kvs-cli: the value is not valid UTF-8; pass --binary to store bytes\n");
        return CLI_USAGE;
    }
    *out = arg_bytes(a);
    return 0;
}

/* Copies a short argument into buf for strto*(); 0 or -1 if it cannot be a
 * number (too long, empty, or holds a NUL). */
static int arg_number_text(cli_arg_t a, char *buf, size_t len)
{
    if (a.len == 0 || a.len >= len || memchr(a.p, '\0', a.len) != NULL ||
        isspace((unsigned char)a.p[0]))
        return -1;
    memcpy(buf, a.p, a.len);
    buf[a.len] = '\0';
    return 0;
}

static int value_int(cli_arg_t a, Kvs__Value *v)
{
    char buf[64], *end;
    int ok = arg_number_text(a, buf, sizeof(buf)) == 0;
    if (ok) {
        errno = 0;
        v->integer_value = strtoll(buf, &end, 10);
        ok = errno == 0 && *end == '\0';
    }
    if (!ok) {
        fprintf(stderr, "kvs-cli: --int value \"%.*s\" is not a signed 64-bit integer\n",
                (int)(a.len > 64 ? 64 : a.len), a.p);
        return CLI_USAGE;
    }
    v->kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    return 0;
}

static int value_float(cli_arg_t a, Kvs__Value *v)
{
    char buf[400], *end;
    int ok = arg_number_text(a, buf, sizeof(buf)) == 0;
    if (ok) {
        errno = 0;
        v->float_value = strtod(buf, &end);
        ok = *end == '\0' && !(errno == ERANGE && isinf(v->float_value));
    }
    if (!ok) {
        fprintf(stderr, "kvs-cli: --float value \"%.*s\" is not a number a double can hold\n",
                (int)(a.len > 64 ? 64 : a.len), a.p);
        return CLI_USAGE;
    }
    v->kind_case = KVS__VALUE__KIND_FLOAT_VALUE;
    return 0;
}

static int value_bool(cli_arg_t a, Kvs__Value *v)
{
    v->kind_case = KVS__VALUE__KIND_BOOL_VALUE;
    if (arg_is(a, "true") || arg_is(a, "yes") || arg_is(a, "1")) {
        v->bool_value = 1;
        return 0;
    }
    if (arg_is(a, "false") || arg_is(a, "no") || arg_is(a, "0")) {
        v->bool_value = 0;
        return 0;
    }
    fprintf(stderr, "kvs-cli: --bool value \"%.*s\" is not one of true/false, yes/no, 1/0\n",
            (int)(a.len > 64 ? 64 : a.len), a.p);
    return CLI_USAGE;
}

/* Reads all of `fd` into a malloc'ed buffer. Returns 0 or -errno. */
#define VALUE_FILE_MAX (1u << 30) /* the largest limits.max_frame: no server takes more */

static int read_fd_all(int fd, uint8_t **out, size_t *len)
{
    size_t cap = 65536, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (buf == NULL)
            return -ENOMEM;
        if (n > VALUE_FILE_MAX) { /* /dev/zero, or a file no frame holds */
            free(buf);
            return -EFBIG;
        }
        ssize_t k = read(fd, buf + n, cap - n); /* cap: at most VALUE_FILE_MAX + 1 */
        if (k == 0)
            break;
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int err = -errno;
            free(buf);
            return err;
        }
        n += (size_t)k;
        if (n == cap && n <= VALUE_FILE_MAX) {
            cap = cap * 2 > (size_t)VALUE_FILE_MAX + 1 ? (size_t)VALUE_FILE_MAX + 1 : cap * 2;
            uint8_t *p = realloc(buf, cap);
            if (p == NULL)
                free(buf);
            buf = p;
        }
    }
    *out = buf;
    *len = n;
    return 0;
}

/* --binary @FILE / @-: the value is the file's (or stdin's) content. */
static int value_file(cli_t *c, cli_arg_t a, Kvs__Value *v)
{
    char *path;
    cli_arg_t name = {a.p + 1, a.len - 1};
    if (arg_string(c, "file name", name, &path) != 0)
        return CLI_USAGE;
    int is_stdin = strcmp(path, "-") == 0;
    if (is_stdin && c->stdin_taken) {
        fprintf(stderr, "kvs-cli: @- cannot read stdin: it is %s\n",
                c->session ? "where commands come from" : "already read by an earlier @-");
        return CLI_USAGE;
    }
    int fd = is_stdin ? 0 : open(path, O_RDONLY | O_CLOEXEC);
    uint8_t *data = NULL;
    size_t n = 0;
    int rc = fd < 0 ? -errno : read_fd_all(fd, &data, &n);
    if (!is_stdin && fd >= 0)
        close(fd);
    c->stdin_taken |= is_stdin;
    if (rc == -EFBIG) {
        fprintf(stderr,
                "kvs-cli: %s holds more than 1 GiB, more than any kvs frame (limits.max_frame) "
                "can carry\n",
                is_stdin ? "stdin" : path);
        return CLI_USAGE;
    }
    if (rc != 0) {
        fprintf(stderr, "kvs-cli: cannot read %s: %s\n", is_stdin ? "stdin" : path, strerror(-rc));
        return CLI_USAGE;
    }
    v->kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    v->binary_value.data = cli_alloc(&c->arena, n);
    v->binary_value.len = n;
    memcpy(v->binary_value.data, data, n);
    free(data);
    return 0;
}

/* Builds a Value from an argument, typed by c->vtype. Returns 0 or
 * CLI_USAGE after saying why the argument does not fit the type. */
static int arg_value(cli_t *c, cli_arg_t a, Kvs__Value **out)
{
    Kvs__Value *v = cli_alloc(&c->arena, sizeof(*v));
    kvs__value__init(v);
    *out = v;
    switch (c->vtype) {
    case VT_INT:
        return value_int(a, v);
    case VT_FLOAT:
        return value_float(a, v);
    case VT_BOOL:
        return value_bool(a, v);
    case VT_BINARY:
        if (a.len > 0 && a.p[0] == '@')
            return value_file(c, a, v);
        v->kind_case = KVS__VALUE__KIND_BINARY_VALUE;
        v->binary_value = arg_bytes(a);
        return 0;
    default:
        v->kind_case = KVS__VALUE__KIND_STRING_VALUE;
        return arg_text(a, &v->string_value);
    }
}

/* hscan's COUNT: 0..UINT32_MAX (0 lets the server choose). */
static int arg_count(cli_arg_t a, uint32_t *out)
{
    char buf[32], *end;
    unsigned long long n = 0;
    int ok = arg_number_text(a, buf, sizeof(buf)) == 0 && isdigit((unsigned char)buf[0]);
    if (ok) {
        errno = 0;
        n = strtoull(buf, &end, 10);
        ok = errno == 0 && *end == '\0' && n <= UINT32_MAX;
    }
    if (!ok) {
        fprintf(stderr, "kvs-cli: COUNT \"%.*s\" is not a number from 0 to 4294967295\n",
                (int)(a.len > 64 ? 64 : a.len), a.p);
        return CLI_USAGE;
    }
    *out = (uint32_t)n;
    return 0;
}

/* ---- request builders ----------------------------------------------------------- */

/* A new, initialized protobuf-c message of descriptor `d` in c->arena. */
static void *cli_new(cli_t *c, const ProtobufCMessageDescriptor *d)
{
    void *p = cli_alloc(&c->arena, d->sizeof_message);
    protobuf_c_message_init(d, p);
    return p;
}

static int build_ping(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                      Kvs__CommandRequest *req)
{
    (void)argv;
    req->ping = cli_new(c, &kvs__ping__descriptor);
    req->command_case = cmd->cc;
    return 0;
}

static int build_info(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                      Kvs__CommandRequest *req)
{
    (void)argv;
    req->info = cli_new(c, &kvs__info__descriptor);
    req->command_case = cmd->cc;
    return 0;
}

/* hget, hdel, hexist: TABLE KEY. */
static int build_key(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                     Kvs__CommandRequest *req)
{
    char *table;
    if (arg_string(c, "table name", argv[0], &table) != 0)
        return CLI_USAGE;
    ProtobufCBinaryData key = arg_bytes(argv[1]);
    req->command_case = cmd->cc;
    if (cmd->cc == KVS__COMMAND_REQUEST__COMMAND_HGET) {
        req->hget = cli_new(c, &kvs__hget__descriptor);
        req->hget->table = table;
        req->hget->key = key;
    } else if (cmd->cc == KVS__COMMAND_REQUEST__COMMAND_HDEL) {
        req->hdel = cli_new(c, &kvs__hdel__descriptor);
        req->hdel->table = table;
        req->hdel->key = key;
    } else {
        req->hexist = cli_new(c, &kvs__hexist__descriptor);
        req->hexist->table = table;
        req->hexist->key = key;
    }
    return 0;
}

/* hmget, hmdel, hmexist: TABLE KEY... (the argument list ends with NULL). */
static int build_keys(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                      Kvs__CommandRequest *req)
{
    char *table;
    if (arg_string(c, "table name", argv[0], &table) != 0)
        return CLI_USAGE;
    size_t n = 0;
    while (argv[1 + n].p != NULL)
        n++;
    ProtobufCBinaryData *keys = cli_alloc(&c->arena, n * sizeof(*keys));
    for (size_t i = 0; i < n; i++)
        keys[i] = arg_bytes(argv[1 + i]);
    req->command_case = cmd->cc;
    if (cmd->cc == KVS__COMMAND_REQUEST__COMMAND_HMGET) {
        Kvs__Hmget *m = req->hmget = cli_new(c, &kvs__hmget__descriptor);
        m->table = table;
        m->n_keys = n;
        m->keys = keys;
    } else if (cmd->cc == KVS__COMMAND_REQUEST__COMMAND_HMDEL) {
        Kvs__Hmdel *m = req->hmdel = cli_new(c, &kvs__hmdel__descriptor);
        m->table = table;
        m->n_keys = n;
        m->keys = keys;
    } else {
        Kvs__Hmexist *m = req->hmexist = cli_new(c, &kvs__hmexist__descriptor);
        m->table = table;
        m->n_keys = n;
        m->keys = keys;
    }
    return 0;
}

static int build_hset(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                      Kvs__CommandRequest *req)
{
    Kvs__Hset *m = cli_new(c, &kvs__hset__descriptor);
    m->pair = cli_new(c, &kvs__kvpair__descriptor);
    if (arg_string(c, "table name", argv[0], &m->table) != 0 ||
        arg_value(c, argv[2], &m->pair->value) != 0)
        return CLI_USAGE;
    m->pair->key = arg_bytes(argv[1]);
    req->command_case = cmd->cc;
    req->hset = m;
    return 0;
}

static int build_hmset(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                       Kvs__CommandRequest *req)
{
    Kvs__Hmset *m = cli_new(c, &kvs__hmset__descriptor);
    if (arg_string(c, "table name", argv[0], &m->table) != 0)
        return CLI_USAGE;
    while (argv[1 + 2 * m->n_pairs].p != NULL)
        m->n_pairs++;
    m->pairs = cli_alloc(&c->arena, m->n_pairs * sizeof(*m->pairs));
    for (size_t i = 0; i < m->n_pairs; i++) {
        Kvs__Kvpair *p = cli_new(c, &kvs__kvpair__descriptor);
        p->key = arg_bytes(argv[1 + 2 * i]);
        if (arg_value(c, argv[2 + 2 * i], &p->value) != 0)
            return CLI_USAGE;
        m->pairs[i] = p;
    }
    req->command_case = cmd->cc;
    req->hmset = m;
    return 0;
}

static int build_hgetall(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                         Kvs__CommandRequest *req)
{
    req->hgetall = cli_new(c, &kvs__hgetall__descriptor);
    req->command_case = cmd->cc;
    req->hgetall->keys_only = cmd->shape == SHAPE_KEYS; /* hkeys */
    return arg_string(c, "table name", argv[0], &req->hgetall->table);
}

/* hlen TABLE, hclear TABLE: {table} alone (Hlen and Hclear look alike). */
static int build_table(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                       Kvs__CommandRequest *req)
{
    Kvs__Hlen *m =
        cli_new(c, cmd->cc == KVS__COMMAND_REQUEST__COMMAND_HLEN ? &kvs__hlen__descriptor
                                                                 : &kvs__hclear__descriptor);
    req->command_case = cmd->cc;
    req->hlen = m; /* the oneof members share storage */
    return arg_string(c, "table name", argv[0], &m->table);
}

/* hscan TABLE [CURSOR [COUNT]]; the cursor is bytes, "" = start. */
static int build_hscan(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                       Kvs__CommandRequest *req)
{
    Kvs__Hscan *m = cli_new(c, &kvs__hscan__descriptor);
    if (arg_string(c, "table name", argv[0], &m->table) != 0)
        return CLI_USAGE;
    if (argv[1].p != NULL)
        m->cursor = arg_bytes(argv[1]);
    if (argv[1].p != NULL && argv[2].p != NULL && arg_count(argv[2], &m->count) != 0)
        return CLI_USAGE;
    req->command_case = cmd->cc;
    req->hscan = m;
    return 0;
}

/* ---- command runners ------------------------------------------------------------- */

/* One request, one reply, printed by the command's shape. */
static int run_simple(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc)
{
    (void)argc;
    Kvs__CommandRequest req;
    kvs__command_request__init(&req);
    int rc = cmd->build(c, cmd, argv, &req);
    Kvs__CommandResponse *r = NULL;
    if (rc == 0)
        rc = cli_call(c, &req, &r);
    if (rc != 0)
        return rc;
    rc = check_status(c, cmd, r);
    /* One value per key, in request order (fewer or more would pair values
     * with the wrong keys); a table's count (hlen, hclear) is one value. */
    uint32_t want = kvs_msg_request_keys(&req);
    if (cmd->shape == SHAPE_VALUE && want == 0)
        want = 1;
    if (rc == 0 && (cmd->shape == SHAPE_LIST || cmd->shape == SHAPE_VALUE) && r->n_values != want) {
        if (kvs_msg_request_keys(&req) > 0)
            fprintf(stderr,
                    "kvs-cli: protocol error: the answer holds %zu values for %" PRIu32
                    " keys; nothing printed\n",
                    r->n_values, want);
        else
            fprintf(stderr,
                    "kvs-cli: protocol error: the answer holds %zu values, not one count; "
                    "nothing printed\n",
                    r->n_values);
        return CLI_USAGE;
    }
    if (rc == 0)
        put_reply(c, cmd->shape, r);
    put_position(c, r); /* a 503 may carry one too: the write may be applied later */
    return rc;
}

/* Holds a copy of the cursor to send next, since each reply's memory is
 * gone by the time the next request is sent. 0 or -ENOMEM. */
static int keep_cursor(ProtobufCBinaryData *keep, const ProtobufCBinaryData *cur)
{
    uint8_t *p = realloc(keep->data, cur->len ? cur->len : 1);
    if (p == NULL)
        return -ENOMEM;
    if (cur->len > 0)
        memcpy(p, cur->data, cur->len);
    keep->data = p;
    keep->len = cur->len;
    return 0;
}

/* Fetches and prints one hscanall page; moves *cursor on (to empty at the
 * end). Returns an exit status. */
static int scan_page(cli_t *c, const cli_cmd_t *cmd, Kvs__CommandRequest *req,
                     ProtobufCBinaryData *cursor, size_t *total)
{
    Kvs__CommandResponse *r;
    req->hscan->cursor = *cursor;
    int rc = cli_call(c, req, &r);
    if (rc == 0)
        rc = check_status(c, cmd, r);
    if (rc != 0)
        return rc;
    put_pairs(c, r->pairs, r->n_pairs, *total);
    *total += r->n_pairs;
    int same = r->cursor.len > 0 && r->cursor.len == cursor->len &&
               memcmp(r->cursor.data, cursor->data, cursor->len) == 0;
    if (same) { /* a kvs page takes its first pair whatever its size (kvs_reads), and its
                 * cursor moves past every page: this walk would not end */
        fflush(stdout);
        fprintf(stderr,
                "kvs-cli: protocol error: the server returned the cursor it was given with %zu "
                "pairs; the walk would never end: stopped\n",
                r->n_pairs);
        return CLI_USAGE;
    }
    if (keep_cursor(cursor, &r->cursor) != 0) {
        fprintf(stderr, "kvs-cli: out of memory\n");
        return CLI_USAGE;
    }
    return CLI_OK;
}

/* hscanall TABLE [COUNT]: hscan pages until the cursor comes back empty. */
static int run_scanall(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc)
{
    Kvs__CommandRequest req;
    kvs__command_request__init(&req);
    req.command_case = KVS__COMMAND_REQUEST__COMMAND_HSCAN;
    req.hscan = cli_new(c, &kvs__hscan__descriptor);
    if (arg_string(c, "table name", argv[0], &req.hscan->table) != 0 ||
        (argc > 1 && arg_count(argv[1], &req.hscan->count) != 0))
        return CLI_USAGE;
    /* A kvs cursor only moves forward: one handed back again means pages
     * that go round in a circle, which would print the same pairs for
     * ever. Brent's method finds any circle keeping one earlier cursor:
     * `seen`, replaced after 1, 2, 4, ... pages. */
    ProtobufCBinaryData cursor = {0, NULL}, seen = {0, NULL};
    size_t total = 0, steps = 0, power = 1;
    int rc;
    for (;;) {
        rc = scan_page(c, cmd, &req, &cursor, &total);
        if (rc != 0 || cursor.len == 0)
            break;
        if (seen.data != NULL && cursor.len == seen.len &&
            memcmp(cursor.data, seen.data, seen.len) == 0) {
            fflush(stdout);
            fprintf(stderr, "kvs-cli: protocol error: the server handed back cursor ");
            put_quoted_to(stderr, cursor.data, cursor.len);
            fprintf(stderr, " again (its pages go round in a circle): stopped\n");
            rc = CLI_USAGE;
            break;
        }
        if (++steps == power) {
            if (keep_cursor(&seen, &cursor) != 0) {
                fprintf(stderr, "kvs-cli: out of memory\n");
                rc = CLI_USAGE;
                break;
            }
            power *= 2;
            steps = 0;
        }
    }
    if (rc == 0 && total == 0 && !c->raw)
        puts("(empty)");
    free(cursor.data);
    free(seen.data);
    return rc;
}

/* ---- keyslot ------------------------------------------------------------------------ */

/* Loads --config once. Returns 0, or CLI_USAGE after saying why not. */
static int cli_config(cli_t *c)
{
    char err[1024];
    if (c->cfg != NULL)
        return 0;
    if (c->config_path == NULL) {
        fprintf(stderr, "kvs-cli: keyslot computes placement from the node's config: pass "
                        "--config FILE (the file kvs-router runs with)\n");
        return CLI_USAGE;
    }
    if (kvs_config_load(c->config_path, &c->cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "kvs-cli: %s\n", err);
        return CLI_USAGE;
    }
    return 0;
}

/* Prints where a key of a `partitioner: none` table may be. */
static void put_unplaced(const cli_t *c, const kvs_binding_t *b, uint32_t partitions)
{
    uint32_t owners = kvs_place_owning_shards(partitions, c->cfg->shards);
    if (c->raw) {
        printf("none 0-%u\n", owners - 1);
        return;
    }
    printf("partition: chosen by the producers of topic %s (partitioner none, %u partitions)\n",
           b->topic, partitions);
    printf("shard: any of 0..%u (reads ask each of them; writes go through Kafka)\n", owners - 1);
}

/* keyslot TABLE KEY: the partition and shard of KEY, from --config. */
static int run_keyslot(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc)
{
    (void)cmd;
    (void)argc;
    int rc = cli_config(c);
    if (rc != 0)
        return rc;
    if (argv[0].len == 0 || argv[1].len == 0 || argv[1].len > KVS_MAX_KEY) {
        fprintf(stderr, "kvs-cli: keyslot needs a table name and a key of 1 to %d bytes\n",
                KVS_MAX_KEY);
        return CLI_USAGE;
    }
    /* A name every server refuses has no place to show. */
    kvs_table_fault_t fault = kvs_table_check(argv[0].p, argv[0].len);
    if (fault == KVS_TABLE_RESERVED) {
        fprintf(stderr, "kvs-cli: keyslot: table names starting with \"__\" belong to kvs "
                        "(every server refuses this one)\n");
        return CLI_USAGE;
    }
    if (fault != KVS_TABLE_OK) {
        fprintf(stderr,
                "kvs-cli: keyslot: a table name is UTF-8 text of 1 to %d bytes without NUL "
                "bytes (every server refuses this one)\n",
                KVS_MAX_TABLE);
        return CLI_USAGE;
    }
    const kvs_config_t *cfg = c->cfg;
    const kvs_binding_t *b = kvs_config_binding_n(cfg, argv[0].p, argv[0].len);
    uint32_t partitions = b != NULL && b->partitions > 0 ? b->partitions : cfg->partitions;
    kvs_partitioner_t pt = b != NULL ? b->partitioner : KVS_PARTITIONER_MURMUR2;
    if (pt == KVS_PARTITIONER_NONE) {
        put_unplaced(c, b, partitions);
        return CLI_OK;
    }
    uint32_t part = kvs_place_partition_by(pt, argv[1].p, argv[1].len, partitions);
    uint32_t shard = kvs_place_shard(part, cfg->shards);
    const kvs_remote_t *remote = kvs_config_remote(cfg, shard);
    if (c->raw) {
        printf("%u %u\n", part, shard);
        return CLI_OK;
    }
    if (b != NULL)
        printf("partition %u of %u (topic %s, partitioner %s)\n", part, partitions, b->topic,
               kvs_place_partitioner_name(pt));
    else
        printf("partition %u of %u (table bound to no topic: cluster.partitions, murmur2)\n", part,
               partitions);
    if (remote != NULL)
        printf("shard %u of %u (served by %s)\n", shard, cfg->shards, remote->address);
    else
        printf("shard %u of %u\n", shard, cfg->shards);
    return CLI_OK;
}

/* One slow log entry: "1) #7 2026-11-22T02:43:41.123Z 12.345 ms Hset "users" 1 key,
 * status 200, client 127.0.0.1:5000"; with --raw, tab-separated fields. */
static void put_slowlog_entry(const cli_t *c, size_t i, const Kvs__SlowlogEntry *e)
{
    char when[32];
    time_t sec = (time_t)(e->time_us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    if (c->raw) {
        printf("%" PRIu64 "\t%s.%03dZ\t%" PRIu64 "\t", e->id, when,
               (int)(e->time_us % 1000000 / 1000), e->duration_us);
        cli_text_put_field(stdout, e->command);
        putchar('\t');
        cli_text_put_field(stdout, e->table);
        printf("\t%" PRIu32 "\t%" PRIu32 "\t", e->keys, e->status);
        cli_text_put_field(stdout, e->client);
        putchar('\t');
        cli_text_put_field(stdout, e->client_name);
        putchar('\n');
        return;
    }
    printf("%zu) #%" PRIu64 " %s.%03dZ %.3f ms ", i + 1, e->id, when,
           (int)(e->time_us % 1000000 / 1000), (double)e->duration_us / 1000.0);
    cli_text_put(stdout, e->command);
    putchar(' ');
    if (e->table[0] != '\0') {
        put_quoted(e->table, strlen(e->table));
        putchar(' ');
    }
    printf("%" PRIu32 " key%s, status %" PRIu32 ", client ", e->keys, e->keys == 1 ? "" : "s",
           e->status);
    cli_text_put(stdout, e->client);
    if (e->client_name[0] != '\0') {
        fputs(" name ", stdout);
        cli_text_put(stdout, e->client_name);
    }
    putchar('\n');
}

/* slowlog [N|reset]: the router's (or a worker's) slowest recent requests.
 * N 0 shows none, as Redis's SLOWLOG GET 0 (the protocol's count 0 asks
 * for the default, 10): the request still goes, for its errors. */
static int run_slowlog(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc)
{
    Kvs__CommandRequest req = KVS__COMMAND_REQUEST__INIT;
    Kvs__Slowlog *m = cli_new(c, &kvs__slowlog__descriptor);
    Kvs__CommandResponse *r = NULL;
    int none = 0;
    if (argc == 1 && arg_is(argv[0], "reset"))
        m->reset = 1;
    else if (argc == 1 && arg_count(argv[0], &m->count) != 0)
        return CLI_USAGE;
    if (argc == 1 && !m->reset && m->count == 0)
        none = m->count = 1;
    req.command_case = cmd->cc;
    req.slowlog = m;
    int rc = cli_call(c, &req, &r);
    if (rc == 0)
        rc = check_status(c, cmd, r);
    if (rc != 0)
        return rc;
    if (!m->reset && r->ops == NULL) { /* every kvs server answers a log, even empty */
        fprintf(stderr,
                "kvs-cli: %s: protocol error: the Slowlog answer holds no log (is this a kvs "
                "server?)\n",
                c->name);
        cli_disconnect(c);
        return CLI_USAGE;
    }
    if (m->reset)
        puts("OK");
    else if (none || r->ops->n_slowlog == 0)
        puts(c->raw ? "" : "(empty)");
    for (size_t i = 0; !m->reset && !none && i < r->ops->n_slowlog; i++)
        put_slowlog_entry(c, i, r->ops->slowlog[i]);
    return CLI_OK;
}

/* auth USER TOKEN. */
static int build_auth(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv,
                      Kvs__CommandRequest *req)
{
    Kvs__Auth *m = cli_new(c, &kvs__auth__descriptor);
    int rc = arg_string(c, "user name", argv[0], &m->user);
    if (rc == 0)
        rc = arg_string(c, "token", argv[1], &m->token);
    req->auth = m;
    req->command_case = cmd->cc;
    return rc;
}

/* The token to hash: the argument, or (none, or "-") stdin's first line. */
static int token_text(const cli_arg_t *argv, int argc, char *buf, size_t cap, size_t *len)
{
    if (argc >= 1 && !arg_is(argv[0], "-")) {
        if (argv[0].len >= cap)
            return -1;
        memcpy(buf, argv[0].p, argv[0].len);
        *len = argv[0].len;
        return 0;
    }
    /* The first line, whole: a NUL or a lone CR in it is part of it (and
     * refused, or hashed, as in an argument), not its end. */
    size_t n = 0;
    int ch = EOF;
    while (n < cap && (ch = getchar()) != EOF && ch != '\n')
        buf[n++] = (char)ch;
    if (n == cap || (n == 0 && ch == EOF && ferror(stdin)))
        return -1; /* longer than any token, or unreadable */
    if (ch == '\n' && n > 0 && buf[n - 1] == '\r')
        n--; /* a CRLF line end */
    *len = n;
    return 0;
}

/* hash-token [TOKEN|- [ITERATIONS]]: the stored form of a token. */
static int run_hash_token(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc)
{
    char token[KVS_TOKEN_MAX + 2], text[KVS_TOKEN_TEXT];
    size_t len = 0;
    uint64_t iterations = KVS_TOKEN_ITERATIONS;
    kvs_token_hash_t h;
    (void)cmd;
    if ((argc == 0 || arg_is(argv[0], "-")) && c->stdin_taken) {
        /* a session's next line would be taken for the token, and not run */
        fprintf(stderr, "kvs-cli: hash-token: give TOKEN as an argument: stdin is %s\n",
                c->session ? "where commands come from" : "already read by an earlier @-");
        return CLI_USAGE;
    }
    if (argc >= 2) {
        char num[16];
        char *end;
        snprintf(num, sizeof(num), "%.*s", (int)(argv[1].len < 15 ? argv[1].len : 15), argv[1].p);
        iterations = strtoull(num, &end, 10);
        if (*end != '\0' || argv[1].len > 15 || iterations < KVS_TOKEN_MIN_ITERATIONS ||
            iterations > KVS_TOKEN_MAX_ITERATIONS) {
            fprintf(stderr, "kvs-cli: hash-token: ITERATIONS must be a number from %u to %u\n",
                    KVS_TOKEN_MIN_ITERATIONS, KVS_TOKEN_MAX_ITERATIONS);
            return CLI_USAGE;
        }
    }
    c->stdin_taken |= argc == 0 || arg_is(argv[0], "-");
    if (token_text(argv, argc, token, sizeof(token), &len) != 0 || len == 0 ||
        len > KVS_TOKEN_MAX || memchr(token, '\0', len) != NULL ||
        !utf8_valid((const unsigned char *)token, len)) {
        fprintf(stderr,
                "kvs-cli: hash-token: give a token of 1 to %u bytes of UTF-8 text, as "
                "the argument or on stdin\n",
                KVS_TOKEN_MAX);
        return CLI_USAGE;
    }
    int rc = kvs_token_make(token, len, (uint32_t)iterations, &h);
    explicit_bzero(token, sizeof(token));
    if (rc != 0 || kvs_token_format(&h, text, sizeof(text)) != 0) {
        fprintf(stderr, "kvs-cli: hash-token: cannot hash: %s\n", kvs_strerror(rc));
        return CLI_USAGE;
    }
    puts(text);
    return CLI_OK;
}

/* "TABLE [--node NAME]" of digest and rebuild. Returns 0 or CLI_USAGE. */
static int table_and_node(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc,
                          char **table, char **node)
{
    *node = NULL;
    if (argc == 2 || (argc == 3 && !arg_is(argv[1], "--node"))) {
        fprintf(stderr, "usage: kvs-cli [--config FILE] %s %s\n", cmd->name, cmd->args);
        return CLI_USAGE;
    }
    if (arg_string(c, "table name", argv[0], table) != 0 ||
        (argc == 3 && arg_string(c, "node name", argv[2], node) != 0))
        return CLI_USAGE;
    return 0;
}

/* The config (--config) and the TLS context for other nodes' workers:
 * --tls and its flags when given, else this node's own identity (tls.link,
 * as its router's links; *own, freed by the caller). Returns 0 or a
 * CLI_* code. */
static int cluster_setup(cli_t *c, kvs_tls_ctx_t **tls, kvs_tls_ctx_t **own)
{
    *tls = *own = NULL;
    int rc = cli_config(c);
    if (rc != 0)
        return rc;
    if (c->use_tls && cli_tls_setup(c) != 0)
        return CLI_USAGE;
    if (!c->use_tls && c->cfg->tls_link.enabled) {
        char err[600];
        rc = kvs_conn_tls_from_config(c->cfg, &c->cfg->tls_link, "tls.link", 0, own, err,
                                      sizeof(err));
        if (rc != 0) {
            fprintf(stderr, "kvs-cli: %s\n", rc == KVS_ECONFIG ? err : kvs_strerror(rc));
            return CLI_USAGE;
        }
    }
    *tls = c->use_tls ? c->net.tls_ctx : *own;
    return 0;
}

typedef int (*cluster_run_fn)(cli_t *c, kvs_tls_ctx_t *tls, const char *table,
                              const kvs_node_t *only, double timeout);

/* The worker commands about one table, digest and rebuild: "TABLE [--node
 * NAME]". With --config, `cluster` walks every replica the map lists
 * (returns CLI_OK with *r NULL, or the walk's failure); without, the
 * command goes to the one server connected to (a worker: its socket or TCP
 * port), and *r is its answer. Returns a CLI_* code. */
static int worker_command(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc,
                          cluster_run_fn cluster, Kvs__CommandResponse **r)
{
    char *table, *node;
    kvs_tls_ctx_t *tls, *own;
    *r = NULL;
    int rc = table_and_node(c, cmd, argv, argc, &table, &node);
    if (rc != 0)
        return rc;
    if (c->config_path != NULL) {
        const kvs_node_t *only = NULL;
        if ((rc = cluster_setup(c, &tls, &own)) != 0)
            return rc;
        if (node != NULL && (only = kvs_config_node(c->cfg, node)) == NULL) {
            fprintf(stderr, "kvs-cli: no node \"%s\" in cluster.nodes of %s\n", node, c->cfg->path);
            kvs_tls_ctx_free(own);
            return CLI_USAGE;
        }
        /* a walk of the whole cluster is always bounded */
        rc = cluster(c, tls, table, only, c->timeout > 0 ? c->timeout : 10);
        kvs_tls_ctx_free(own);
        return rc == 0 ? CLI_OK : CLI_FAILED;
    }
    Kvs__CommandRequest req;
    kvs__command_request__init(&req);
    req.command_case = cmd->cc;
    if (cmd->cc == KVS__COMMAND_REQUEST__COMMAND_DIGEST) {
        req.digest = cli_new(c, &kvs__digest__descriptor);
        req.digest->table = table;
    } else {
        req.rebuild = cli_new(c, &kvs__rebuild__descriptor);
        req.rebuild->table = table;
    }
    rc = cli_call(c, &req, r);
    return rc == 0 ? check_status(c, cmd, *r) : rc;
}

static int digest_cluster(cli_t *c, kvs_tls_ctx_t *tls, const char *table, const kvs_node_t *only,
                          double timeout)
{
    return cli_digest_run(c->cfg, tls, table, only, timeout, c->raw);
}

/* digest TABLE [--node NAME]: every replica compared (cli_digest), or the
 * one server's digest. */
static int run_digest(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc)
{
    Kvs__CommandResponse *r;
    int rc = worker_command(c, cmd, argv, argc, digest_cluster, &r);
    if (rc != 0 || r == NULL)
        return rc;
    char hex[2 * KVS_HASH_LEN + 1], pos[1024] = "-";
    if (!cli_digest_is_answer(r)) { /* a 200 no kvs server sends: exit 2, as for others */
        fprintf(stderr,
                "kvs-cli: %s: protocol error: the Digest answer holds no digest (is this a kvs "
                "server?)\n",
                c->name);
        cli_disconnect(c);
        return CLI_USAGE;
    }
    kvs_hash_hex(r->values[0]->binary_value.data, hex);
    if (r->position.len > 0 && kvs_pos_format(r->position.data, r->position.len, pos, sizeof(pos)))
        snprintf(pos, sizeof(pos), "(not a position token)");
    printf("%s %lld keys at %s\n", hex, (long long)r->values[1]->integer_value, pos);
    return CLI_OK;
}

static int rebuild_cluster(cli_t *c, kvs_tls_ctx_t *tls, const char *table, const kvs_node_t *only,
                           double timeout)
{
    return cli_rebuild_run(c->cfg, tls, table, only, timeout);
}

/* rebuild TABLE [--node NAME]: every replica (or NAME's copies) rebuilds
 * TABLE from its topic (cli_rebuild), or the one server does. */
static int run_rebuild(cli_t *c, const cli_cmd_t *cmd, const cli_arg_t *argv, int argc)
{
    Kvs__CommandResponse *r;
    int rc = worker_command(c, cmd, argv, argc, rebuild_cluster, &r);
    if (rc == 0 && r != NULL) {
        cli_text_put(stdout, r->message);
        putchar('\n');
    }
    return rc;
}

#define CC(x) KVS__COMMAND_REQUEST__COMMAND_##x

static const cli_cmd_t commands[] = {
    {"ping", "", "check that the server answers", 0, 0, 1, CC(PING), build_ping, SHAPE_PING,
     run_simple},
    {"hget", "TABLE KEY", "the value of KEY", 2, 2, 1, CC(HGET), build_key, SHAPE_VALUE,
     run_simple},
    {"hset", "TABLE KEY VALUE", "set KEY; prints the previous value", 3, 3, 1, CC(HSET), build_hset,
     SHAPE_VALUE, run_simple},
    {"hdel", "TABLE KEY", "delete KEY; prints the previous value", 2, 2, 1, CC(HDEL), build_key,
     SHAPE_VALUE, run_simple},
    {"hexist", "TABLE KEY", "whether KEY exists", 2, 2, 1, CC(HEXIST), build_key, SHAPE_VALUE,
     run_simple},
    {"hmget", "TABLE KEY [KEY ...]", "the value of each KEY", 2, -1, 1, CC(HMGET), build_keys,
     SHAPE_LIST, run_simple},
    {"hmset", "TABLE KEY VALUE [KEY VALUE ...]", "set each KEY; prints the previous values", 3, -1,
     2, CC(HMSET), build_hmset, SHAPE_LIST, run_simple},
    {"hmdel", "TABLE KEY [KEY ...]", "delete each KEY; prints the previous values", 2, -1, 1,
     CC(HMDEL), build_keys, SHAPE_LIST, run_simple},
    {"hmexist", "TABLE KEY [KEY ...]", "whether each KEY exists", 2, -1, 1, CC(HMEXIST), build_keys,
     SHAPE_LIST, run_simple},
    {"hgetall", "TABLE", "every pair of a small table (else use hscan)", 1, 1, 1, CC(HGETALL),
     build_hgetall, SHAPE_PAIRS, run_simple},
    {"hkeys", "TABLE", "every key of a table (its values may be large)", 1, 1, 1, CC(HGETALL),
     build_hgetall, SHAPE_KEYS, run_simple},
    {"hlen", "TABLE", "the number of keys of TABLE", 1, 1, 1, CC(HLEN), build_table, SHAPE_VALUE,
     run_simple},
    {"hclear", "TABLE", "delete every key of TABLE (bound to no topic); prints how many", 1, 1, 1,
     CC(HCLEAR), build_table, SHAPE_VALUE, run_simple},
    {"hscan", "TABLE [CURSOR [COUNT]]", "one page in key order; CURSOR \"\" starts", 1, 3, 1,
     CC(HSCAN), build_hscan, SHAPE_SCAN, run_simple},
    {"hscanall", "TABLE [COUNT]", "every pair, fetched COUNT at a time", 1, 2, 1, CC(HSCAN), NULL,
     SHAPE_PAIRS, run_scanall},
    {"info", "", "node state: per-partition Kafka offsets, lag, skipped records; shards", 0, 0, 1,
     CC(INFO), build_info, SHAPE_PAIRS, run_simple},
    {"slowlog", "[N|reset]", "the N slowest recent requests (default 10), or empty the log", 0, 1,
     1, CC(SLOWLOG), NULL, SHAPE_VALUE, run_slowlog},
    {"keyslot", "TABLE KEY", "the partition and shard of KEY (from --config; no server asked)", 2,
     2, 1, CC(_NOT_SET), NULL, SHAPE_VALUE, run_keyslot},
    {"auth", "USER TOKEN", "authenticate this connection as USER", 2, 2, 1, CC(AUTH), build_auth,
     SHAPE_PING, run_simple},
    {"hash-token", "[TOKEN|- [ITERATIONS]]",
     "print the hash of TOKEN (default: stdin) for config.yaml users (no server asked)", 0, 2, 1,
     CC(_NOT_SET), NULL, SHAPE_VALUE, run_hash_token},
    {"digest", "TABLE [--node NAME]",
     "compare every replica's digest of TABLE (with --config; else the server's own)", 1, 3, 1,
     CC(DIGEST), NULL, SHAPE_VALUE, run_digest},
    {"rebuild", "TABLE [--node NAME]",
     "empty bound TABLE and read its topic again, on every replica (with --config)", 1, 3, 1,
     CC(REBUILD), NULL, SHAPE_VALUE, run_rebuild},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void put_commands(FILE *f)
{
    char line[64];
    for (size_t i = 0; i < N_COMMANDS; i++) {
        snprintf(line, sizeof(line), "%s %s", commands[i].name, commands[i].args);
        fprintf(f, "  %-38s %s\n", line, commands[i].help);
    }
}

static const cli_cmd_t *find_command(cli_arg_t name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (arg_is(name, commands[i].name))
            return &commands[i];
    return NULL;
}

/* Runs argv[0] with its arguments. argv[argc].p must be NULL. */
static int run_command(cli_t *c, const cli_arg_t *argv, int argc)
{
    if (arg_is(argv[0], "help")) {
        put_commands(stdout);
        return CLI_OK;
    }
    const cli_cmd_t *cmd = find_command(argv[0]);
    if (cmd == NULL) {
        fprintf(stderr, "kvs-cli: unknown command \"%.*s\"; %s lists the commands\n",
                (int)(argv[0].len > 64 ? 64 : argv[0].len), argv[0].p,
                c->session ? "'help'" : "'kvs-cli --help'");
        return CLI_USAGE;
    }
    int n = argc - 1;
    if (n < cmd->min || (cmd->max >= 0 && n > cmd->max) || (n - cmd->min) % cmd->step != 0) {
        fprintf(stderr, "kvs-cli: wrong number of arguments for '%s'\nusage: %s%s%s%s\n", cmd->name,
                c->session ? "" : "kvs-cli [OPTIONS] ", cmd->name, cmd->args[0] ? " " : "",
                cmd->args);
        return CLI_USAGE;
    }
    return cmd->run(c, cmd, argv + 1, n);
}

/* ---- sessions -------------------------------------------------------------------- */

/* Decodes a double-quoted token part starting at s[*i] == '"' into s[*w...]
 * (in place: output never overtakes input). Returns 0, -1 if unclosed, or
 * -2 for an escape it does not know (\q, \x4, \xZZ: read as the letters
 * they hold, they would name another key than the one meant). */
static int read_dquoted(char *s, size_t n, size_t *i, size_t *w)
{
    static const char from[] = "ntrab\\\"", to[] = "\n\t\r\a\b\\\"";
    for ((*i)++; *i < n && s[*i] != '"'; (*i)++) {
        if (s[*i] != '\\' || *i + 1 >= n) {
            s[(*w)++] = s[*i];
            continue;
        }
        char e = s[++(*i)];
        const char *m = strchr(from, e);
        if (e == 'x' && *i + 2 < n && isxdigit((unsigned char)s[*i + 1]) &&
            isxdigit((unsigned char)s[*i + 2])) {
            char hex[3] = {s[*i + 1], s[*i + 2], 0};
            s[(*w)++] = (char)strtol(hex, NULL, 16);
            *i += 2;
        } else if (m != NULL && e != '\0') {
            s[(*w)++] = to[m - from];
        } else {
            return -2;
        }
    }
    if (*i >= n)
        return -1;
    (*i)++;
    return 0;
}

/* Single quotes: literal bytes, except \' for a quote. */
static int read_squoted(char *s, size_t n, size_t *i, size_t *w)
{
    for ((*i)++; *i < n && s[*i] != '\''; (*i)++) {
        if (s[*i] == '\\' && *i + 1 < n && s[*i + 1] == '\'')
            (*i)++;
        s[(*w)++] = s[*i];
    }
    if (*i >= n)
        return -1;
    (*i)++;
    return 0;
}

/* Splits a line into tokens, decoding quotes in place. `out` has room for
 * n / 2 + 2 entries; a NULL entry follows the last token. Returns the token
 * count, -1 when a quote is not closed, -2 for an unknown escape. */
static int split_line(char *s, size_t n, cli_arg_t *out)
{
    size_t i = 0, w = 0;
    int count = 0;
    for (;;) {
        while (i < n && isspace((unsigned char)s[i]))
            i++;
        if (i >= n)
            break;
        size_t start = w;
        while (i < n && !isspace((unsigned char)s[i])) {
            int rc = 0;
            if (s[i] == '"')
                rc = read_dquoted(s, n, &i, &w);
            else if (s[i] == '\'')
                rc = read_squoted(s, n, &i, &w);
            else
                s[w++] = s[i++];
            if (rc != 0)
                return rc;
        }
        out[count].p = s + start;
        out[count++].len = w - start;
    }
    out[count].p = NULL;
    out[count].len = 0;
    return count;
}

/* Consumes leading value-type options of a session line. Returns how many
 * tokens were options, or -1 after naming one it does not know. */
static int line_options(cli_t *c, const cli_arg_t *argv, int argc)
{
    static const struct {
        const char *name;
        cli_vtype_t type;
    } types[] = {{"--string", VT_STRING},
                 {"--int", VT_INT},
                 {"--float", VT_FLOAT},
                 {"--bool", VT_BOOL},
                 {"--binary", VT_BINARY}};
    int k = 0;
    for (; k < argc && argv[k].len > 2 && memcmp(argv[k].p, "--", 2) == 0; k++) {
        size_t t = 0;
        while (t < sizeof(types) / sizeof(types[0]) && !arg_is(argv[k], types[t].name))
            t++;
        if (t == sizeof(types) / sizeof(types[0])) {
            fprintf(stderr,
                    "kvs-cli: unknown option \"%.*s\" (a line may start with --string, "
                    "--int, --float, --bool or --binary)\n",
                    (int)(argv[k].len > 64 ? 64 : argv[k].len), argv[k].p);
            return -1;
        }
        c->vtype = types[t].type;
    }
    return k;
}

/* Runs one session line. Returns its exit status; sets *quit on quit/exit. */
static int run_line(cli_t *c, char *line, size_t n, int *quit)
{
    kvs_arena_reset(&c->arena);
    size_t lead = 0;
    while (lead < n && isspace((unsigned char)line[lead]))
        lead++;
    if (lead == n || line[lead] == '#')
        return CLI_OK;
    cli_arg_t *argv = cli_alloc(&c->arena, (n / 2 + 2) * sizeof(*argv));
    int argc = split_line(line, n, argv);
    if (argc == -2) {
        fprintf(stderr, "kvs-cli: unknown escape in a \"quoted\" token: use \\n \\t \\r \\a "
                        "\\b \\\\ \\\" or \\xHH (two hex digits)\n");
        return CLI_USAGE;
    }
    if (argc < 0) {
        fprintf(stderr, "kvs-cli: unbalanced quotes: close every \" and ' on the line\n");
        return CLI_USAGE;
    }
    if (argc == 1 && (arg_is(argv[0], "quit") || arg_is(argv[0], "exit"))) {
        *quit = 1;
        return CLI_OK;
    }
    cli_vtype_t saved = c->vtype;
    int k = line_options(c, argv, argc);
    int rc = k < 0 ? CLI_USAGE : k == argc ? CLI_OK : run_command(c, argv + k, argc - k);
    c->vtype = saved;
    return rc;
}

/* Whether the history may keep line[0..n): it parses, and its command
 * (after the line's options) is neither `auth` nor `hash-token`, whose
 * arguments are secrets. A
 * line that does not parse is not kept either: what it would run is not
 * known, so neither is whether it holds a secret. */
static int history_keeps(cli_t *c, const char *line, size_t n)
{
    char *copy = cli_alloc(&c->arena, n + 1);
    memcpy(copy, line, n);
    cli_arg_t *argv = cli_alloc(&c->arena, (n / 2 + 2) * sizeof(*argv));
    int argc = split_line(copy, n, argv);
    if (argc <= 0)
        return 0;
    int k = 0;
    while (k < argc && argv[k].len > 2 && memcmp(argv[k].p, "--", 2) == 0)
        k++;
    return k == argc || (!arg_is(argv[k], "auth") && !arg_is(argv[k], "hash-token"));
}

/* A session on a terminal, through the line editor. Returns as
 * run_session does. */
static int run_edited(cli_t *c, cli_edit_t *e)
{
    int failed = 0, quit = 0;
    char *line = NULL;
    size_t cap = 0;
    while (!quit) {
        size_t n;
        const char *in = cli_edit_gets(e, &n);
        if (in == NULL) {
            putchar('\n');
            break;
        }
        if (n + 1 > cap) {
            free(line);
            cap = n + 1;
            line = malloc(cap);
            if (line == NULL) {
                fprintf(stderr, "kvs-cli: out of memory\n");
                return CLI_USAGE;
            }
        }
        memcpy(line, in, n); /* run_line decodes it in place */
        kvs_arena_reset(&c->arena);
        if (history_keeps(c, line, n))
            cli_edit_remember(e, line, n);
        failed |= run_line(c, line, n, &quit) != CLI_OK;
        fflush(stdout);
    }
    free(line);
    return failed ? CLI_FAILED : CLI_OK;
}

/* The line editor for a session on a terminal, or NULL (then lines are
 * read without editing). */
static cli_edit_t *session_editor(const cli_t *c)
{
    static cli_word_t words[N_COMMANDS + 3];
    size_t n = 0;
    for (size_t i = 0; i < N_COMMANDS; i++)
        words[n++] = (cli_word_t){commands[i].name, commands[i].args};
    words[n++] = (cli_word_t){"help", ""};
    words[n++] = (cli_word_t){"quit", ""};
    words[n++] = (cli_word_t){"exit", ""};
    /* libedit reads and shows multibyte characters in the user's locale;
     * nothing else in kvs-cli depends on it (tokens are bytes). */
    const char *loc = setlocale(LC_CTYPE, "");
    if (loc == NULL || strcmp(loc, "C") == 0 || strcmp(loc, "POSIX") == 0)
        setlocale(LC_CTYPE, "C.UTF-8");
    char prompt[sizeof(c->name) + 3], history[4096];
    snprintf(prompt, sizeof(prompt), "%s> ", c->name);
    int has_file = cli_edit_history_path(history, sizeof(history)) == 0;
    return cli_edit_new("kvs-cli", prompt, words, n, has_file ? history : NULL);
}

/* Reads commands from stdin until EOF or quit. A prompt is shown only to a
 * terminal (with line editing when stdout is one too); a piped session
 * stops at nothing and reports any failure in its exit status. */
static int run_session(cli_t *c)
{
    int tty = isatty(STDIN_FILENO);
    c->session = 1;
    c->stdin_taken = 1;
    /* A terminal's user hears at once whether the server is there; a
     * piped session connects at its first command that asks the server
     * (keyslot and help need none), and ends there (exit 2) if it cannot. */
    if (tty)
        (void)cli_connect(c);
    cli_edit_t *e = tty && isatty(STDOUT_FILENO) ? session_editor(c) : NULL;
    if (e != NULL) {
        int rc = run_edited(c, e);
        cli_edit_free(e);
        return rc;
    }
    char *line = NULL;
    size_t cap = 0;
    int failed = 0, quit = 0;
    while (!quit) {
        if (tty) {
            printf("%s> ", c->name);
            fflush(stdout);
        }
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            if (tty)
                putchar('\n');
            break;
        }
        failed |= run_line(c, line, (size_t)n, &quit) != CLI_OK;
        fflush(stdout);
        if (!tty && c->unreachable) {
            free(line);
            return CLI_USAGE;
        }
    }
    free(line);
    return failed ? CLI_FAILED : CLI_OK;
}

static int run_oneshot(cli_t *c, int argc, char **argv)
{
    cli_arg_t *args = cli_alloc(&c->arena, ((size_t)argc + 1) * sizeof(*args));
    for (int i = 0; i < argc; i++) {
        args[i].p = argv[i];
        args[i].len = strlen(argv[i]);
    }
    args[argc].p = NULL;
    args[argc].len = 0;
    return run_command(c, args, argc);
}

/* ---- options ---------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: kvs-cli [OPTIONS] [COMMAND [ARG...]]\n"
               "\n"
               "Talks to a kvs router or node. With a COMMAND, runs it once; without one,\n"
               "reads commands line by line from stdin (with a prompt on a terminal).\n"
               "Options come before the command.\n"
               "\n"
               "Connection:\n"
               "  --host HOST        server host (default 127.0.0.1); IPv6 as ::1 or [::1]\n"
               "  --port PORT        server port (default 9527)\n"
               "  --socket PATH      unix socket; overrides --host and --port\n"
               "  --timeout SECONDS  limit on connecting and on each reply (default 10; 0 = none)\n"
               "  --tls              connect with TLS; the server's certificate must name --host\n"
               "  --cacert FILE      CA bundle (PEM) to verify the server with (default: the\n"
               "                     system's CAs)\n"
               "  --cert FILE        client certificate (PEM), for servers that ask for one\n"
               "  --key FILE         its private key (default: --cert, if the file holds both)\n"
               "  --insecure         do not verify the server's certificate (testing only)\n"
               "  --user NAME        authenticate every connection as NAME (Auth)\n"
               "  --token TOKEN      its token (default: the environment variable KVS_TOKEN,\n"
               "                     which other users cannot see in ps)\n"
               "  --config FILE      the node's config.yaml, for keyslot (no server needed),\n"
               "                     digest and rebuild (every replica it lists)\n"
               "Values of hset and hmset (default --string):\n"
               "  --string           UTF-8 text\n"
               "  --int              signed 64-bit integer\n"
               "  --float            double\n"
               "  --bool             true/false, yes/no, 1/0\n"
               "  --binary           the argument's bytes; @FILE reads a file, @- stdin\n"
               "Freshness (tables bound to Kafka topics):\n"
               "  --position         after a write, print its position (topic:partition:offset)\n"
               "  --min-position POS read at least as fresh as POS (as --position prints it);\n"
               "                     waits for it, or 503 \"behind by N records\"\n"
               "  --stale            read even from a worker that is catching up\n"
               "Output:\n"
               "  --raw              bare values, one per line, no quotes or type tags\n"
               "  -h, --help         this help\n"
               "  --version          print the version\n"
               "\n"
               "Commands (names are case-insensitive):\n");
    put_commands(f);
    fprintf(f, "\n"
               "In a session, 'help' lists the commands, 'quit' or 'exit' ends it, tokens\n"
               "may be \"quoted\" (with \\n \\t \\\\ \\\" \\xHH escapes) or 'quoted', and a line\n"
               "may start with a value option (--int hset t k 5). On a terminal, lines are\n"
               "edited with history (~/.kvscli_history; KVSCLI_HISTFILE), TAB completes\n"
               "command names, and a command's arguments are hinted at the right.\n"
               "\n"
               "Exit status: 0 ok; 1 the server answered with an error (or hget found no\n"
               "key); 2 usage error, connection failure, timeout or protocol error; 3 the\n"
               "server answered that a write may or may not have happened (read to find out).\n");
}

static int parse_port(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 65535) {
        fprintf(stderr, "kvs-cli: --port \"%s\" must be a number from 1 to 65535\n", s);
        return -1;
    }
    return 0;
}

static int parse_timeout(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || !(v >= 0) || v > 1e9) {
        fprintf(stderr, "kvs-cli: --timeout \"%s\" must be a number of seconds (0 = none)\n", s);
        return -1;
    }
    *out = v;
    return 0;
}

/* One option. Returns -1 to go on, or an exit status. */
static int apply_option(cli_t *c, int ch, const char *arg)
{
    switch (ch) {
    case 'H': /* "[::1]" as every config address writes it: the address inside */
        c->host = kvs_addr_host_arg(arg, c->host_buf, sizeof(c->host_buf)) == 0 ? c->host_buf : arg;
        return -1;
    case 'p':
        c->port = arg;
        return parse_port(arg) == 0 ? -1 : CLI_USAGE;
    case 's':
        c->socket = arg;
        return -1;
    case 'C':
        c->config_path = arg;
        return -1;
    case 't':
        return parse_timeout(arg, &c->timeout) == 0 ? -1 : CLI_USAGE;
    case 'r':
        c->raw = 1;
        return -1;
    case 'P':
        c->show_position = 1;
        return -1;
    case 'S':
        c->stale = 1;
        return -1;
    case 'M': {
        char err[256];
        kvs_pos_set_t set;
        kvs_pos_set_init(&set);
        int rc = kvs_pos_set_parse(&set, arg, err, sizeof(err));
        c->min_position.len = 0;
        if (rc == 0)
            rc = kvs_pos_set_encode(&set, &c->min_position);
        kvs_pos_set_free(&set);
        if (rc == 0)
            return -1;
        fprintf(stderr, "kvs-cli: --min-position: %s\n", rc == -ENOMEM ? "out of memory" : err);
        return CLI_USAGE;
    }
    case 'T':
        c->use_tls = 1;
        return -1;
    case 'A':
        c->cacert = arg;
        c->use_tls = 1;
        return -1;
    case 'E':
        c->cert = arg;
        c->use_tls = 1;
        return -1;
    case 'K':
        c->key = arg;
        c->use_tls = 1;
        return -1;
    case 'I':
        c->insecure = 1;
        c->use_tls = 1;
        return -1;
    case 'U':
        c->user = arg;
        return -1;
    case 'O':
        c->token = arg;
        return -1;
    case 'h':
        usage(stdout);
        return kvs_fs_stdout_done("kvs-cli"); /* 0 (CLI_OK), or 74 said */
    case 'V':
        printf("kvs-cli %s\n", KVS_VERSION);
        return kvs_fs_stdout_done("kvs-cli");
    case VT_STRING + 1000:
    case VT_INT + 1000:
    case VT_FLOAT + 1000:
    case VT_BOOL + 1000:
    case VT_BINARY + 1000:
        c->vtype = (cli_vtype_t)(ch - 1000);
        return -1;
    case ':':
        fprintf(stderr, "kvs-cli: option %s needs an argument; try 'kvs-cli --help'\n", arg);
        return CLI_USAGE;
    default:
        fprintf(stderr, "kvs-cli: unknown option %s; try 'kvs-cli --help'\n", arg);
        return CLI_USAGE;
    }
}

/* Parses the options before the command. Returns -1 to go on (optind is
 * the command), or an exit status. */
static int parse_options(cli_t *c, int argc, char **argv)
{
    static const struct option opts[] = {{"host", required_argument, NULL, 'H'},
                                         {"port", required_argument, NULL, 'p'},
                                         {"socket", required_argument, NULL, 's'},
                                         {"config", required_argument, NULL, 'C'},
                                         {"timeout", required_argument, NULL, 't'},
                                         {"raw", no_argument, NULL, 'r'},
                                         {"position", no_argument, NULL, 'P'},
                                         {"min-position", required_argument, NULL, 'M'},
                                         {"stale", no_argument, NULL, 'S'},
                                         {"tls", no_argument, NULL, 'T'},
                                         {"cacert", required_argument, NULL, 'A'},
                                         {"cert", required_argument, NULL, 'E'},
                                         {"key", required_argument, NULL, 'K'},
                                         {"insecure", no_argument, NULL, 'I'},
                                         {"user", required_argument, NULL, 'U'},
                                         {"token", required_argument, NULL, 'O'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"string", no_argument, NULL, VT_STRING + 1000},
                                         {"int", no_argument, NULL, VT_INT + 1000},
                                         {"float", no_argument, NULL, VT_FLOAT + 1000},
                                         {"bool", no_argument, NULL, VT_BOOL + 1000},
                                         {"binary", no_argument, NULL, VT_BINARY + 1000},
                                         {NULL, 0, NULL, 0}};
    int ch;
    opterr = 0; /* apply_option words the errors */
    while ((ch = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
        const char *arg = ch == '?' || ch == ':' ? argv[optind - 1] : optarg;
        int rc = apply_option(c, ch, arg);
        if (rc >= 0)
            return rc;
    }
    if (c->user != NULL && c->token == NULL)
        c->token = getenv("KVS_TOKEN");
    if (c->socket != NULL)
        snprintf(c->name, sizeof(c->name), "unix:%s", c->socket);
    else if (strchr(c->host, ':') != NULL)
        snprintf(c->name, sizeof(c->name), "[%s]:%s", c->host, c->port);
    else
        snprintf(c->name, sizeof(c->name), "%s:%s", c->host, c->port);
    return -1;
}

int main(int argc, char **argv)
{
    cli_t c = {.host = "127.0.0.1", .port = "9527", .timeout = 10, .net = {.fd = -1}};
    kvs_arena_init(&c.arena);
    kvs_arena_init(&c.reply);
    signal(SIGPIPE, SIG_IGN);
    int rc = parse_options(&c, argc, argv);
    if (rc < 0)
        rc = optind < argc ? run_oneshot(&c, argc - optind, argv + optind) : run_session(&c);
    cli_disconnect(&c);
    kvs_tls_ctx_free(c.net.tls_ctx);
    kvs_config_free(c.cfg);
    kvs_arena_close(&c.arena);
    kvs_arena_close(&c.reply);
    kvs_buf_free(&c.min_position);
    if (rc != EX_IOERR && (fflush(stdout) != 0 || ferror(stdout))) { /* 74: said already */
        fprintf(stderr, "kvs-cli: cannot write the output: %s\n", strerror(errno));
        if (rc == CLI_OK)
            rc = CLI_USAGE;
    }
    return rc;
}
