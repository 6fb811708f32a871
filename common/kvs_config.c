/*
 * kvs_config: config.yaml -> kvs_config_t, nginx style: a table of
 * directives says, for every key, where it goes, what type it is, its default
 * and its range. The loader only walks the YAML tree and looks keys up in the
 * table, so adding a key is adding one row (plus the struct field).
 *
 * How it works: libyaml composes the whole file into a yaml_document_t (one
 * document only). A fresh config is first filled with the defaults, which are
 * written in the table as text and parsed by the same setters as the file's
 * values, so a default can never be out of its own range. The walk then
 * visits the top-level mapping; a key that is a section ("cluster", or
 * "tls.router") recurses, a key that is a directive ("cluster.shards") is set, anything
 * else is an unknown key. Cross-key rules (partitions >= shards, ...) are
 * checked last, pointing at the value the user wrote.
 *
 * Errors: the first problem found stops the load and becomes one message,
 * "file:line:column: what is wrong", with the 1-based position of the
 * offending node (libyaml marks are 0-based). Nothing is logged here; the
 * caller decides.
 *
 * Ownership: every string and array hangs off the kvs_config_t and is freed by
 * kvs_config_free; on any error the half-built config is freed before
 * returning, so callers never see one. The yaml document lives only for the
 * duration of a parse.
 *
 * Cost: a text is read once as events (prescan) before it is composed, and
 * refused when it would cost far more than its size: nesting past 16 levels,
 * more than 500000 values or 64 MiB of text once every alias is counted as
 * the value it repeats, an alias inside its own value, more than 100
 * anchors. Duplicate keys are found by sorting each mapping's keys once, and
 * the lists whose entries must be unique (users, cluster.nodes,
 * kafka.bindings) have a maximum length, so no text makes the load take more
 * than about a second.
 *
 * Threads: no global state; parse as many configs in parallel as you like.
 */
#include "kvs_config.h"
#include "kvs_glob.h"

#include "kvs_addr.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_hash.h"
#include "kvs_msg.h"
#include "kvs_pos.h"
#include "kvs_token.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define KVS_SOCKET_PATH_MAX 107 /* sizeof(sockaddr_un.sun_path) - 1 */
#define KVS_PATH_MAX 4096       /* PATH_MAX, with the NUL */

typedef enum {
    D_STRING,     /* char *; F_NONEMPTY forbids "" */
    D_LISTEN,     /* char *, HOST:PORT or [V6]:PORT; F_OPTIONAL allows "" */
    D_UINT32,     /* uint32_t in [min, max] */
    D_SIZE,       /* uint64_t bytes in [min, max] */
    D_DURATION,   /* uint64_t milliseconds in [min, max] */
    D_ENUM,       /* one of names (case-insensitive): int index, or F_TEXT: char * */
    D_BOOL,       /* int 0/1: true/false, yes/no, on/off */
    D_BINDINGS,   /* kafka.bindings list */
    D_PROPERTIES, /* kafka.properties mapping */
    D_REMOTE,     /* cluster.remote list */
    D_USERS,      /* users list */
    D_NODES,      /* cluster.nodes list */
    D_PLUGINS,    /* plugins list */
} dtype_t;

#define F_NONEMPTY 1u
#define F_OPTIONAL 2u
#define F_TEXT 4u
#define F_AUTO 8u      /* D_UINT32: "auto" is accepted and stored as 0 */
#define F_LIVE 16u     /* may change in a running process (SIGHUP) */
#define F_OFF 32u      /* D_DURATION: "off" is accepted and stored as UINT64_MAX */
#define F_ZERO 64u     /* D_DURATION: 0 (off) is accepted besides [min, max] */
#define F_BROKERS 128u /* D_STRING: a list of Kafka bootstrap servers (check_brokers) */

typedef struct {
    const char *path;         /* "section.key" or "key" */
    dtype_t type;             /* how the value is parsed and stored */
    size_t off;               /* field in kvs_config_t */
    const char *def;          /* default, parsed like a value from the file */
    uint64_t min, max;        /* numeric range */
    const char *range;        /* range or choices in words, for messages */
    const char *const *names; /* D_ENUM: accepted words; the index is the value */
    unsigned flags;
} directive_t;

static const char *const sync_names[] = {"full", "batch", "none", NULL};
static const char *const level_names[] = {"debug", "info", "warn", "warning", "error", NULL};
static const char *const format_names[] = {"raw", "string", "value", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};
static const char *const version_names[] = {"TLS1.2", "TLS1.3", NULL};
static const char *const client_cert_names[] = {"none", "optional", "require", NULL};
static const char *const bootstrap_names[] = {"snapshot", "replay", NULL};

_Static_assert(KVS_SYNC_FULL == 0 && KVS_SYNC_BATCH == 1 && KVS_SYNC_NONE == 2,
               "sync_names order must match kvs_sync_t");
_Static_assert(KVS_FORMAT_RAW == 0 && KVS_FORMAT_STRING == 1 && KVS_FORMAT_VALUE == 2,
               "format_names order must match kvs_format_t");
_Static_assert(KVS_LOG_TEXT == 0 && KVS_LOG_JSON == 1,
               "log_format_names order must match kvs_log_format_t");
_Static_assert(KVS_BOOTSTRAP_SNAPSHOT == 0 && KVS_BOOTSTRAP_REPLAY == 1,
               "bootstrap_names order must match kvs_bootstrap_t");
_Static_assert(sizeof(kvs_bootstrap_t) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(kvs_sync_t) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(kvs_log_format_t) == sizeof(int), "enum fields are stored as int");
_Static_assert(KVS_CLIENT_CERT_NONE == 0 && KVS_CLIENT_CERT_OPTIONAL == 1 &&
                   KVS_CLIENT_CERT_REQUIRE == 2,
               "client_cert_names order must match kvs_client_cert_t");

#define OFF(field) offsetof(kvs_config_t, field)
#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

static const directive_t directives[] = {
    {"data_dir", D_STRING, OFF(data_dir), "./data", 0, 0, NULL, NULL, F_NONEMPTY},
    {"cluster.shards", D_UINT32, OFF(shards), "4", 1, KVS_SHARDS_MAX, NULL, NULL, 0},
    {"cluster.partitions", D_UINT32, OFF(partitions), "64", 1, 65536, NULL, NULL, 0},
    {"cluster.remote", D_REMOTE, 0, NULL, 0, 0, NULL, NULL, 0},
    {"cluster.nodes", D_NODES, 0, NULL, 0, 0, NULL, NULL, F_LIVE}, /* see map_live */
    {"cluster.bootstrap", D_ENUM, OFF(bootstrap), "snapshot", 0, 0, "snapshot, replay",
     bootstrap_names, F_LIVE},
    {"router.listen", D_LISTEN, OFF(router_listen), "127.0.0.1:9527", 0, 0, NULL, NULL, 0},
    {"router.resp_listen", D_LISTEN, OFF(resp_listen), "", 0, 0, NULL, NULL, F_OPTIONAL},
    {"router.timeout", D_DURATION, OFF(router_timeout_ms), "5s", 1, 600000, "from 1ms to 10m", NULL,
     F_LIVE},
    {"router.processes", D_UINT32, OFF(router_processes), "auto", 1, KVS_ROUTER_PROCESSES_MAX, NULL,
     NULL, F_AUTO},
    {"router.ready_timeout", D_DURATION, OFF(router_ready_timeout_ms), "30s", 1, 3600000,
     "from 1ms to 1h", NULL, F_LIVE},
    {"router.liveness_timeout", D_DURATION, OFF(router_liveness_timeout_ms), "10s", 1000, 3600000,
     "0 (off) or from 1s to 1h", NULL, F_LIVE | F_ZERO},
    {"router.local_reads", D_BOOL, OFF(router_local_reads), "true", 0, 0, NULL, NULL, 0},
    {"router.retry_percent", D_UINT32, OFF(retry_percent), "10", 0, 100, NULL, NULL, F_LIVE},
    {"router.retry_burst", D_UINT32, OFF(retry_burst), "100", 0, 100000, NULL, NULL, F_LIVE},
    {"router.metrics_listen", D_LISTEN, OFF(metrics_listen), "", 0, 0, NULL, NULL, F_OPTIONAL},
    {"router.metrics_auth", D_BOOL, OFF(metrics_auth), "true", 0, 0, NULL, NULL, 0},
    {"node.name", D_STRING, OFF(node_name), "", 0, 0, NULL, NULL, 0},
    {"node.listen", D_LISTEN, OFF(node_listen), "", 0, 0, NULL, NULL, F_OPTIONAL},
    {"storage.sync", D_ENUM, OFF(sync), "batch", 0, 0, "full, batch, none", sync_names, 0},
    {"storage.sync_interval", D_DURATION, OFF(sync_interval_ms), "1s", 1, 3600000, "from 1ms to 1h",
     NULL, F_LIVE},
    {"storage.map_size", D_SIZE, OFF(map_size), "1GiB", MIB, 16 * 1024 * GIB,
     "from 1MiB to 16TiB (the map grows by itself when full)", NULL, 0},
    {"storage.max_tables", D_UINT32, OFF(max_tables), "256", 1, 32000, NULL, NULL, 0},
    {"limits.max_frame", D_SIZE, OFF(max_frame), "4MiB", KIB, GIB, "from 1KiB to 1GiB", NULL, 0},
    {"limits.max_inflight", D_UINT32, OFF(max_inflight), "1024", 1, 1000000, NULL, NULL, F_LIVE},
    {"limits.max_keys", D_UINT32, OFF(max_keys), "250000", 1, 100000000, NULL, NULL, 0},
    {"limits.client_output", D_SIZE, OFF(client_output), "64MiB", 64 * KIB, UINT64_MAX / 4,
     "at least 64KiB", NULL, F_LIVE},
    {"limits.max_clients", D_UINT32, OFF(max_clients), "10000", 1, 1000000, NULL, NULL, F_LIVE},
    {"limits.idle_timeout", D_DURATION, OFF(idle_timeout_ms), "0", 0, 604800000,
     "from 0 (never) to 7 days", NULL, F_LIVE},
    {"limits.frame_timeout", D_DURATION, OFF(frame_timeout_ms), "30s", 0, 3600000,
     "from 0 (never) to 1h", NULL, F_LIVE},
    {"limits.auth_timeout", D_DURATION, OFF(auth_timeout_ms), "10s", 0, 3600000,
     "from 0 (never) to 1h", NULL, F_LIVE},
    {"limits.input_buffers", D_SIZE, OFF(input_buffers), "256MiB", MIB, UINT64_MAX / 4,
     "at least 1MiB", NULL, F_LIVE},
    {"limits.output_buffers", D_SIZE, OFF(output_buffers), "1GiB", MIB, UINT64_MAX / 4,
     "at least 1MiB", NULL, F_LIVE},
    {"limits.auth_failures", D_UINT32, OFF(auth_failures), "3", 1, 100, NULL, NULL, F_LIVE},
    {"limits.auth_failures_per_minute", D_UINT32, OFF(auth_failures_per_minute), "20", 1, 100000,
     NULL, NULL, F_LIVE},
    {"kafka.brokers", D_STRING, OFF(kafka_brokers), "", 0, 0, NULL, NULL, F_BROKERS},
    {"kafka.group_id", D_STRING, OFF(kafka_group_id), "kvs", 0, 0, NULL, NULL, F_NONEMPTY},
    {"kafka.bindings", D_BINDINGS, 0, NULL, 0, 0, NULL, NULL, 0},
    {"kafka.max_lag", D_UINT32, OFF(kafka_max_lag), "10000", 0, UINT32_MAX, NULL, NULL, F_LIVE},
    {"kafka.properties", D_PROPERTIES, 0, NULL, 0, 0, NULL, NULL, 0},
    {"log.level", D_ENUM, OFF(log_level), "info", 0, 0, "debug, info, warn, error", level_names,
     F_TEXT | F_LIVE},
    {"log.format", D_ENUM, OFF(log_format), "text", 0, 0, "text, json", log_format_names, F_LIVE},
    {"log.slow_threshold", D_DURATION, OFF(slow_threshold_ms), "10ms", 0, 3600000,
     "from 0 (every request) to 1h, or off", NULL, F_LIVE | F_OFF},
    {"log.slow_max", D_UINT32, OFF(slow_max), "128", 1, 100000, NULL, NULL, F_LIVE},
    {"tls.cert", D_STRING, OFF(tls_cert), "", 0, 0, NULL, NULL, 0},
    {"tls.key", D_STRING, OFF(tls_key), "", 0, 0, NULL, NULL, 0},
    {"tls.ca", D_STRING, OFF(tls_ca), "", 0, 0, NULL, NULL, 0},
    {"tls.min_version", D_ENUM, OFF(tls_min_version), "TLS1.2", 0, 0, "TLS1.2, TLS1.3",
     version_names, 0},
    {"tls.max_version", D_ENUM, OFF(tls_max_version), "TLS1.3", 0, 0, "TLS1.2, TLS1.3",
     version_names, 0},
    {"tls.ciphers", D_STRING, OFF(tls_ciphers), "", 0, 0, NULL, NULL, 0},
    {"tls.ciphersuites", D_STRING, OFF(tls_ciphersuites), "", 0, 0, NULL, NULL, 0},
    {"tls.router.enabled", D_BOOL, OFF(tls_router.enabled), "false", 0, 0, NULL, NULL, 0},
    {"tls.router.client_cert", D_ENUM, OFF(tls_router.client_cert), "none", 0, 0,
     "none, optional, require", client_cert_names, 0},
    {"tls.router.cert", D_STRING, OFF(tls_router.cert), "", 0, 0, NULL, NULL, 0},
    {"tls.router.key", D_STRING, OFF(tls_router.key), "", 0, 0, NULL, NULL, 0},
    {"tls.router.ca", D_STRING, OFF(tls_router.ca), "", 0, 0, NULL, NULL, 0},
    {"tls.metrics.enabled", D_BOOL, OFF(tls_metrics.enabled), "false", 0, 0, NULL, NULL, 0},
    {"tls.metrics.client_cert", D_ENUM, OFF(tls_metrics.client_cert), "none", 0, 0,
     "none, optional, require", client_cert_names, 0},
    {"tls.metrics.cert", D_STRING, OFF(tls_metrics.cert), "", 0, 0, NULL, NULL, 0},
    {"tls.metrics.key", D_STRING, OFF(tls_metrics.key), "", 0, 0, NULL, NULL, 0},
    {"tls.metrics.ca", D_STRING, OFF(tls_metrics.ca), "", 0, 0, NULL, NULL, 0},
    {"tls.node.enabled", D_BOOL, OFF(tls_node.enabled), "false", 0, 0, NULL, NULL, 0},
    {"tls.node.client_cert", D_ENUM, OFF(tls_node.client_cert), "require", 0, 0,
     "none, optional, require", client_cert_names, 0},
    {"tls.node.cert", D_STRING, OFF(tls_node.cert), "", 0, 0, NULL, NULL, 0},
    {"tls.node.key", D_STRING, OFF(tls_node.key), "", 0, 0, NULL, NULL, 0},
    {"tls.node.ca", D_STRING, OFF(tls_node.ca), "", 0, 0, NULL, NULL, 0},
    {"tls.link.enabled", D_BOOL, OFF(tls_link.enabled), "false", 0, 0, NULL, NULL, 0},
    {"tls.link.cert", D_STRING, OFF(tls_link.cert), "", 0, 0, NULL, NULL, 0},
    {"tls.link.key", D_STRING, OFF(tls_link.key), "", 0, 0, NULL, NULL, 0},
    {"tls.link.ca", D_STRING, OFF(tls_link.ca), "", 0, 0, NULL, NULL, 0},
    {"tls.link.verify_host", D_BOOL, OFF(tls_link.verify_host), "true", 0, 0, NULL, NULL, 0},
    {"users", D_USERS, 0, NULL, 0, 0, NULL, NULL, 0},
    {"plugins", D_PLUGINS, 0, NULL, 0, 0, NULL, NULL, 0},
};

#define N_DIRECTIVES (sizeof(directives) / sizeof(directives[0]))

/* kvs_config_t.key_pos: per directive, where the file set it (1-based; 0
 * when it was defaulted). */
struct kvs_config_pos_s {
    uint32_t line, column;
};

typedef struct {
    const char *name; /* file name for messages */
    const char *text; /* the whole file, for positions of reader errors */
    size_t len;
    yaml_document_t *doc;
    kvs_config_t *cfg;
    char *err;
    size_t errlen;
    unsigned char seen[N_DIRECTIVES]; /* set by the file, not defaulted */
    yaml_mark_t marks[N_DIRECTIVES];  /* where the file set it */
    yaml_mark_t *node_marks;          /* cluster.nodes[i]: name, address, shards (3 each) */
    struct map_dup_s *dups;           /* per document node: its first duplicate key (find_dups) */
    char desc[64];                    /* scratch for describe() */
} cfg_ctx_t;

/* ---- errors ------------------------------------------------------------- */

/* Writes "name:line:col: message" (or "name: message" without a mark) and
 * returns KVS_ECONFIG, so callers can `return cfg_error(...)`. */
static yaml_mark_t offset_mark(const cfg_ctx_t *ctx, size_t off);

__attribute__((format(printf, 3, 4))) static int cfg_error(cfg_ctx_t *ctx, const yaml_mark_t *mark,
                                                           const char *fmt, ...)
{
    if (ctx->err == NULL || ctx->errlen == 0)
        return KVS_ECONFIG;
    /* A mark at the end of the input (a problem found there, an empty
     * document after the last "---") is put by libyaml on the line after
     * the last when the text does not end with a line break: the position
     * given is the end of the text instead. A mark's index counts
     * characters. */
    yaml_mark_t end = offset_mark(ctx, ctx->len);
    if (mark != NULL && mark->index >= end.index)
        mark = &end;
    int n;
    if (mark != NULL)
        n = snprintf(ctx->err, ctx->errlen, "%s:%zu:%zu: ", ctx->name, mark->line + 1,
                     mark->column + 1);
    else
        n = snprintf(ctx->err, ctx->errlen, "%s: ", ctx->name);
    if (n >= 0 && (size_t)n < ctx->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->err + n, ctx->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return KVS_ECONFIG;
}

static int cfg_oom(cfg_ctx_t *ctx)
{
    if (ctx->err != NULL && ctx->errlen > 0)
        snprintf(ctx->err, ctx->errlen, "%s: out of memory", ctx->name);
    return -ENOMEM;
}

/* The mark (0-based, like libyaml's: index and column count characters,
 * so UTF-8 continuation bytes are not counted) of byte `off` of the text:
 * lines end at \n, \r\n, \r, NEL, LS or PS (YAML's line breaks). */
static yaml_mark_t offset_mark(const cfg_ctx_t *ctx, size_t off)
{
    const unsigned char *t = (const unsigned char *)ctx->text;
    yaml_mark_t m = {.index = 0, .line = 0, .column = 0};
    if (off > ctx->len)
        off = ctx->len;
    for (size_t i = 0; i < off; i++)
        m.index += (t[i] & 0xc0) != 0x80;
    for (size_t i = 0; i < off; i++) {
        size_t brk = 0;
        if (t[i] == '\n' || (t[i] == '\r' && (i + 1 >= ctx->len || t[i + 1] != '\n')))
            brk = 1;
        else if (t[i] == 0xc2 && i + 1 < off && t[i + 1] == 0x85)
            brk = 2; /* NEL */
        else if (t[i] == 0xe2 && i + 2 < off && t[i + 1] == 0x80 &&
                 (t[i + 2] == 0xa8 || t[i + 2] == 0xa9))
            brk = 3; /* LS, PS */
        if (brk > 0) {
            m.line++;
            m.column = 0;
            i += brk - 1;
        } else if ((t[i] & 0xc0) != 0x80) {
            m.column++;
        }
    }
    return m;
}

/* Turns a libyaml failure into a message with libyaml's own words. */
static int yaml_error(cfg_ctx_t *ctx, const yaml_parser_t *p)
{
    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return cfg_oom(ctx);
    case YAML_NO_ERROR:
        /* libyaml's loader fails without setting an error when a copy it
         * makes (a node's default tag, an anchor) cannot be allocated:
         * every failure of the input itself sets one. */
        return cfg_oom(ctx);
    case YAML_READER_ERROR: {
        /* libyaml's reader gives only a byte offset (no mark): count the
         * lines and characters before it, as its marks do. */
        yaml_mark_t m = offset_mark(ctx, p->problem_offset);
        const char *what = p->problem ? p->problem : "bad input";
        if (p->problem_value >= 0)
            return cfg_error(ctx, &m, "%s (byte 0x%02x); the file must be UTF-8 text", what,
                             (unsigned)p->problem_value & 0xffu);
        return cfg_error(ctx, &m, "%s; the file must be UTF-8 text", what);
    }
    default:
        break;
    }
    const char *problem = p->problem ? p->problem : "invalid YAML";
    if (p->context == NULL)
        return cfg_error(ctx, &p->problem_mark, "%s", problem);
    return cfg_error(ctx, &p->problem_mark, "%s (%s at line %zu column %zu)", problem, p->context,
                     p->context_mark.line + 1, p->context_mark.column + 1);
}

/* ---- yaml node helpers --------------------------------------------------- */

static yaml_node_t *node_at(const cfg_ctx_t *ctx, int index)
{
    yaml_node_t *n = yaml_document_get_node(ctx->doc, index);
    assert(n != NULL);
    return n;
}

static const char *scalar_text(const yaml_node_t *n)
{
    assert(n->type == YAML_SCALAR_NODE);
    return (const char *)n->data.scalar.value;
}

/* YAML's null: an empty plain scalar, ~, or null. Quoted "" is a string. */
static int is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *s = scalar_text(n);
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

/* What a node is, for "expected X, got Y" messages. Valid until next call. */
static const char *describe(cfg_ctx_t *ctx, const yaml_node_t *n)
{
    if (n->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (n->type == YAML_SEQUENCE_NODE)
        return "a list";
    if (is_null(n))
        return "null";
    const char *s = scalar_text(n);
    snprintf(ctx->desc, sizeof(ctx->desc), "\"%.40s%s\"", s, strlen(s) > 40 ? "..." : "");
    return ctx->desc;
}

/* Fetches the text of a non-null scalar value, or says what `path` expected. */
static int scalar_value(cfg_ctx_t *ctx, const yaml_node_t *n, const char *path, const char *what,
                        const char **text)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n))
        return cfg_error(ctx, &n->start_mark, "%s: expected %s, got %s", path, what,
                         describe(ctx, n));
    if (strlen(scalar_text(n)) != n->data.scalar.length)
        return cfg_error(ctx, &n->start_mark, "%s: NUL bytes are not allowed", path);
    *text = scalar_text(n);
    return 0;
}

/* A mapping's first duplicate key: pairs[dup] repeats the key of
 * pairs[first] (dup < 0: none). */
typedef struct map_dup_s {
    long dup, first;
} map_dup_t;

typedef struct {
    const char *key;
    long pair;
} key_ref_t;

static int cmp_key_ref(const void *a, const void *b)
{
    const key_ref_t *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c != 0 ? c : (x->pair > y->pair) - (x->pair < y->pair);
}

/* Finds every mapping's first duplicate key (in file order) once, sorting
 * its keys, so that a mapping of many keys (or one an alias makes the walk
 * visit again) costs n log n, not n squared. */
static int find_dups(cfg_ctx_t *ctx)
{
    yaml_document_t *doc = ctx->doc;
    size_t n_nodes = (size_t)(doc->nodes.top - doc->nodes.start), cap = 0;
    key_ref_t *refs = NULL;
    if ((ctx->dups = calloc(n_nodes ? n_nodes : 1, sizeof(*ctx->dups))) == NULL)
        return cfg_oom(ctx);
    for (size_t i = 0; i < n_nodes; i++) {
        const yaml_node_t *map = &doc->nodes.start[i];
        map_dup_t *d = &ctx->dups[i];
        d->dup = -1;
        if (map->type != YAML_MAPPING_NODE ||
            map->data.mapping.pairs.top - map->data.mapping.pairs.start < 2)
            continue;
        size_t n = 0, pairs = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
        if (pairs > cap) {
            key_ref_t *bigger = realloc(refs, pairs * sizeof(*refs));
            if (bigger == NULL) {
                free(refs);
                return cfg_oom(ctx);
            }
            refs = bigger;
            cap = pairs;
        }
        for (size_t p = 0; p < pairs; p++) {
            const yaml_node_t *key = node_at(ctx, map->data.mapping.pairs.start[p].key);
            if (key->type == YAML_SCALAR_NODE)
                refs[n++] = (key_ref_t){scalar_text(key), (long)p};
        }
        qsort(refs, n, sizeof(*refs), cmp_key_ref);
        for (size_t k = 1; k < n; k++)
            if (strcmp(refs[k - 1].key, refs[k].key) == 0 &&
                (d->dup < 0 || refs[k].pair < d->dup) &&
                (k < 2 || strcmp(refs[k - 2].key, refs[k].key) != 0)) {
                d->dup = refs[k].pair;
                d->first = refs[k - 1].pair;
            }
    }
    free(refs);
    return 0;
}

/* Checks the key of `pair` (in mapping `map`): a string, not seen before in
 * the same mapping. `where` names the mapping in messages (NULL: top level). */
static int check_key(cfg_ctx_t *ctx, const yaml_node_t *map, const yaml_node_pair_t *pair,
                     const char *where)
{
    const yaml_node_t *key = node_at(ctx, pair->key);
    const char *in = where ? " in " : "", *q = where ? "\"" : "", *w = where ? where : "";
    if (key->type != YAML_SCALAR_NODE || strlen(scalar_text(key)) != key->data.scalar.length)
        return cfg_error(ctx, &key->start_mark, "keys must be plain strings%s%s%s%s", in, q, w, q);
    const map_dup_t *d = &ctx->dups[map - ctx->doc->nodes.start];
    if (d->dup != pair - map->data.mapping.pairs.start)
        return 0;
    const yaml_node_t *prev = node_at(ctx, map->data.mapping.pairs.start[d->first].key);
    return cfg_error(ctx, &key->start_mark, "duplicate key \"%.80s\"%s%s%s%s (first at line %zu)",
                     scalar_text(key), in, q, w, q, prev->start_mark.line + 1);
}

/* "<<" is YAML 1.1's merge key, which libyaml does not apply: say so, or
 * the user is left wondering why the anchor's keys were not taken. */
static int unknown_key(cfg_ctx_t *ctx, const yaml_node_t *key, const char *where)
{
    const char *merge = strcmp(scalar_text(key), "<<") == 0
                            ? " (YAML merge keys are not supported: write the keys out)"
                            : "";
    if (where == NULL)
        return cfg_error(ctx, &key->start_mark, "unknown key \"%.80s\"%s", scalar_text(key), merge);
    return cfg_error(ctx, &key->start_mark, "unknown key \"%.80s\" in \"%s\"%s", scalar_text(key),
                     where, merge);
}

/* ---- value parsers -------------------------------------------------------- */

typedef struct {
    const char *suffix;
    uint64_t mult;
} unit_t;

static const unit_t size_units[] = {
    {"", 1},
    {"B", 1},
    {"KiB", 1ull << 10},
    {"MiB", 1ull << 20},
    {"GiB", 1ull << 30},
    {"TiB", 1ull << 40},
    {"kB", 1000ull},
    {"MB", 1000000ull},
    {"GB", 1000000000ull},
    {"TB", 1000000000000ull},
    {NULL, 0},
};

static const unit_t duration_units[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}, {NULL, 0},
};

/* "010": YAML 1.1 (and so PyYAML, and tools that write YAML from its
 * values) reads it as octal 8, a reader of the text as 10. */
static int leading_zero(const char *s)
{
    return s[0] == '0' && s[1] >= '0' && s[1] <= '9';
}

/* Parses leading decimal digits (at least one, no leading zero) without
 * overflow. */
static int parse_digits(const char *s, uint64_t *out, const char **end)
{
    uint64_t v = 0;
    const char *p = s;
    if (leading_zero(s))
        return KVS_EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return KVS_EINVAL;
        v = v * 10 + d;
    }
    if (p == s)
        return KVS_EINVAL;
    *out = v;
    *end = p;
    return 0;
}

/* "<digits><suffix>" with a suffix from `units`, times its multiplier. */
static int parse_scaled(const char *s, const unit_t *units, uint64_t *out)
{
    uint64_t n;
    const char *end;
    if (s == NULL || parse_digits(s, &n, &end) != 0)
        return KVS_EINVAL;
    for (const unit_t *u = units; u->suffix != NULL; u++) {
        if (strcmp(end, u->suffix) != 0)
            continue;
        if (n > UINT64_MAX / u->mult)
            return KVS_EINVAL;
        *out = n * u->mult;
        return 0;
    }
    return KVS_EINVAL;
}

int kvs_config_parse_size(const char *s, uint64_t *out)
{
    return parse_scaled(s, size_units, out);
}

int kvs_config_parse_duration_ms(const char *s, uint64_t *out)
{
    return parse_scaled(s, duration_units, out);
}

/* Index of `s` in a NULL-terminated word list (case-insensitive), or -1. */
static int match_word(const char *const *names, const char *s)
{
    for (int i = 0; names[i] != NULL; i++)
        if (strcasecmp(names[i], s) == 0)
            return i;
    return -1;
}

/* Checks "HOST:PORT" or "[V6]:PORT" with port 1..65535, completely (see
 * kvs_addr: IPv4 and IPv6 addresses must parse, host names must be
 * syntactically valid), so a bad address is refused at load, not when the
 * router or a worker first binds or connects. A unix socket is not a TCP
 * address. On failure returns -1 and sets *why. */
static int check_listen(const char *s, unsigned *port, const char **why)
{
    kvs_addr_t a;
    if (strncmp(s, "unix:", 5) == 0) {
        *why = "a unix socket is not allowed here";
        return -1;
    }
    if (kvs_addr_parse_why(s, 0, &a, why) != 0)
        return -1;
    *port = a.port;
    return 0;
}

/* ---- setters: one per directive type, from text ------------------------- */

static void *field(cfg_ctx_t *ctx, const directive_t *d)
{
    return (char *)ctx->cfg + d->off;
}

static int store_string(cfg_ctx_t *ctx, char **slot, const char *text)
{
    char *copy = strdup(text);
    if (copy == NULL)
        return cfg_oom(ctx);
    free(*slot);
    *slot = copy;
    return 0;
}

/* Kafka bootstrap servers, "HOST[:PORT],..." as librdkafka reads them, at
 * most KVS_MAX_BROKERS of them: each
 * entry optionally "SCHEME://" (PLAINTEXT://, SSL://, ...), then a host
 * name, an IPv4 address or a bracketed IPv6 address, then ":PORT" (9092
 * when left out); spaces around an entry are skipped. Each host is
 * checked as a listen address's is, so "::1:9092" (which librdkafka would
 * read as the host "::1:9092" on port 9092) is refused at load rather than
 * failing to resolve in every worker. On failure returns -1 and sets *why
 * and the entry [*bad, *bad + *badlen). */
_Static_assert(KVS_MAX_BROKERS == 64, "check_brokers's message names the bound");
static int check_brokers(const char *s, const char **why, const char **bad, size_t *badlen)
{
    const char *p = s;
    for (unsigned count = 1;; count++) {
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = strcspn(p, ",");
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        *bad = p;
        *badlen = n;
        if (count > KVS_MAX_BROKERS) {
            *why = "more than 64 entries (librdkafka starts a thread for each one in every "
                   "Kafka client of every worker; a few brokers of the cluster are enough to find "
                   "the rest)";
            return -1;
        }
        const char *host = p, *end = p + n;
        const char *scheme = memmem(p, n, "://", 3); /* in this entry only */
        if (scheme != NULL)
            host = scheme + 3;
        char entry[300];
        size_t hn = (size_t)(end - host);
        if (n == 0) {
            *why = "empty entry";
            return -1;
        }
        if (hn == 0) {
            *why = "missing host";
            return -1;
        }
        if (hn + sizeof(":9092") > sizeof(entry)) {
            *why = "host name is too long (at most 253 bytes)";
            return -1;
        }
        memcpy(entry, host, hn);
        entry[hn] = '\0';
        /* no port: "host", "[v6]" (an unbracketed IPv6 address has colons) */
        const char *close = hn > 0 && entry[0] == '[' ? memchr(entry, ']', hn) : NULL;
        if (close != NULL ? close[1] == '\0' : memchr(entry, ':', hn) == NULL)
            memcpy(entry + hn, ":9092", sizeof(":9092"));
        kvs_addr_t a;
        if (strncmp(entry, "unix:", 5) == 0) {
            *why = "a unix socket is not allowed here";
            return -1;
        }
        if (kvs_addr_parse_why(entry, 0, &a, why) != 0)
            return -1;
        p += strcspn(p, ",");
        if (*p == '\0')
            return 0;
        p++;
    }
}

static int set_string(cfg_ctx_t *ctx, const directive_t *d, const char *text, const yaml_mark_t *m)
{
    const char *why, *bad;
    size_t badlen;
    if ((d->flags & F_NONEMPTY) && text[0] == '\0')
        return cfg_error(ctx, m, "%s must not be empty", d->path);
    /* A path, a name or a list: a control character in one (a tab aside:
     * lists may be spaced with them) is a mistake
     * (a block scalar's newline), and would make `--print data_dir`, or a
     * log line, say two things. */
    for (const unsigned char *c = (const unsigned char *)text; *c != '\0'; c++)
        if ((*c < 0x20 && *c != '\t') || *c == 0x7f)
            return cfg_error(ctx, m,
                             "%s must not contain control characters (byte 0x%02x at offset %zu; "
                             "a block scalar such as | ends its text with a newline)",
                             d->path, *c, (size_t)(c - (const unsigned char *)text));
    if ((d->flags & F_BROKERS) && text[0] != '\0' && check_brokers(text, &why, &bad, &badlen) != 0)
        return cfg_error(ctx, m,
                         "%s must be HOST[:PORT] or [IPV6][:PORT] entries separated by commas "
                         "(got \"%.*s\"): %s",
                         d->path, (int)(badlen < 80 ? badlen : 80), bad, why);
    return store_string(ctx, field(ctx, d), text);
}

static int set_listen(cfg_ctx_t *ctx, const directive_t *d, const char *text, const yaml_mark_t *m)
{
    unsigned port;
    const char *why;
    if (!((d->flags & F_OPTIONAL) && text[0] == '\0') && check_listen(text, &port, &why) != 0)
        return cfg_error(ctx, m, "%s must be %sHOST:PORT or [IPV6]:PORT (got \"%.80s\"): %s",
                         d->path, (d->flags & F_OPTIONAL) ? "\"\", " : "", text, why);
    return store_string(ctx, field(ctx, d), text);
}

/* A number at `path` written with a leading zero (leading_zero). */
static int zero_error(cfg_ctx_t *ctx, const char *path, const char *text, const yaml_mark_t *m)
{
    return cfg_error(ctx, m,
                     "%s: \"%.80s\" starts with 0, which YAML 1.1 reads as an octal number; "
                     "write it without the leading zero",
                     path, text);
}

static int set_uint32(cfg_ctx_t *ctx, const directive_t *d, const char *text, const yaml_mark_t *m)
{
    uint64_t v;
    const char *end;
    if ((d->flags & F_AUTO) && strcasecmp(text, "auto") == 0) {
        *(uint32_t *)field(ctx, d) = 0;
        return 0;
    }
    if (leading_zero(text))
        return zero_error(ctx, d->path, text, m);
    if (parse_digits(text, &v, &end) != 0 || *end != '\0' || v < d->min || v > d->max)
        return cfg_error(ctx, m, "%s must be %san integer from %llu to %llu (got \"%.80s\")",
                         d->path, (d->flags & F_AUTO) ? "auto or " : "", (unsigned long long)d->min,
                         (unsigned long long)d->max, text);
    *(uint32_t *)field(ctx, d) = (uint32_t)v;
    return 0;
}

static int set_u64(cfg_ctx_t *ctx, const directive_t *d, const char *text, const yaml_mark_t *m)
{
    uint64_t v;
    if ((d->flags & F_OFF) && strcasecmp(text, "off") == 0) {
        *(uint64_t *)field(ctx, d) = UINT64_MAX;
        return 0;
    }
    if (leading_zero(text))
        return zero_error(ctx, d->path, text, m);
    if (d->type == D_SIZE && kvs_config_parse_size(text, &v) != 0)
        return cfg_error(ctx, m,
                         "%s: \"%.80s\" is not a size (write bytes, or a number with B, KiB, MiB, "
                         "GiB, TiB, kB, MB, GB or TB, as in 4MiB)",
                         d->path, text);
    if (d->type == D_DURATION && kvs_config_parse_duration_ms(text, &v) != 0)
        return cfg_error(ctx, m,
                         "%s: \"%.80s\" is not a duration (write milliseconds, or a number with "
                         "ms, s, m, h or d, as in 1s%s)",
                         d->path, text, (d->flags & F_OFF) ? "; or off" : "");
    if ((v < d->min || v > d->max) && !((d->flags & F_ZERO) && v == 0))
        return cfg_error(ctx, m, "%s must be %s (got \"%.80s\")", d->path, d->range, text);
    *(uint64_t *)field(ctx, d) = v;
    return 0;
}

static int set_bool(cfg_ctx_t *ctx, const directive_t *d, const char *text, const yaml_mark_t *m)
{
    static const char *const names[] = {"false", "true", "no", "yes", "off", "on", NULL};
    int i = match_word(names, text);
    if (i < 0)
        return cfg_error(ctx, m, "%s must be true or false (got \"%.80s\")", d->path, text);
    *(int *)field(ctx, d) = i % 2;
    return 0;
}

static int set_enum(cfg_ctx_t *ctx, const directive_t *d, const char *text, const yaml_mark_t *m)
{
    int i = match_word(d->names, text);
    if (i < 0)
        return cfg_error(ctx, m, "%s must be one of %s (got \"%.80s\")", d->path, d->range, text);
    if (d->flags & F_TEXT)
        return store_string(ctx, field(ctx, d), d->names[i]);
    memcpy(field(ctx, d), &i, sizeof(i));
    return 0;
}

/* Sets a scalar directive from text (a file value or the default). */
static int set_value(cfg_ctx_t *ctx, const directive_t *d, const char *text, const yaml_mark_t *m)
{
    switch (d->type) {
    case D_STRING:
        return set_string(ctx, d, text, m);
    case D_LISTEN:
        return set_listen(ctx, d, text, m);
    case D_UINT32:
        return set_uint32(ctx, d, text, m);
    case D_SIZE:
    case D_DURATION:
        return set_u64(ctx, d, text, m);
    case D_ENUM:
        return set_enum(ctx, d, text, m);
    case D_BOOL:
        return set_bool(ctx, d, text, m);
    default:
        assert(0 && "not a scalar directive");
        return KVS_EINVAL;
    }
}

static const char *expected(const directive_t *d)
{
    switch (d->type) {
    case D_UINT32:
        return "an integer";
    case D_SIZE:
        return "a size such as 4MiB";
    case D_DURATION:
        return "a duration such as 1s";
    case D_LISTEN:
        return "HOST:PORT";
    case D_BOOL:
        return "true or false";
    default:
        return "a string";
    }
}

/* ---- lists ---------------------------------------------------------------- */

/* How many entries the list `seq` has (0 when it is null or empty); a
 * value that is not a list is refused with `what` ("kafka.bindings:
 * expected a list of ..."), and so is one of more than `max` entries (the
 * lists whose entries must be unique: each entry is compared with the
 * ones before it). */
static int list_len(cfg_ctx_t *ctx, const yaml_node_t *seq, const char *what, size_t max, size_t *n)
{
    *n = 0;
    if (is_null(seq))
        return 0;
    if (seq->type != YAML_SEQUENCE_NODE)
        return cfg_error(ctx, &seq->start_mark, "%s, got %s", what, describe(ctx, seq));
    size_t len = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    if (len > max) {
        size_t wl = strcspn(what, ":");
        return cfg_error(ctx, &seq->start_mark, "%.*s: %zu entries; at most %zu are allowed",
                         (int)wl, what, len, max);
    }
    *n = len;
    return 0;
}

/* Gives each entry of the list `seq` to parse, in order, up to the first
 * error. */
static int each_entry(cfg_ctx_t *ctx, const yaml_node_t *seq,
                      int (*parse)(cfg_ctx_t *ctx, const yaml_node_t *item, size_t idx))
{
    size_t n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    for (size_t i = 0; i < n; i++) {
        int rc = parse(ctx, node_at(ctx, seq->data.sequence.items.start[i]), i);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- kafka.bindings and kafka.properties ---------------------------------- */

/* Table names as every door enforces them (kvs_table_check); scalars
 * hold no NUL (scalar_value) and libyaml reads only UTF-8. */
static const char *table_name_problem(const char *t)
{
    switch (kvs_table_check(t, strlen(t))) {
    case KVS_TABLE_OK:
        return NULL;
    case KVS_TABLE_EMPTY:
        return "table names must not be empty";
    case KVS_TABLE_LONG:
        return "table names must be at most 200 bytes";
    case KVS_TABLE_NUL:
    case KVS_TABLE_NOT_UTF8:
        return "table names must be UTF-8 text";
    case KVS_TABLE_RESERVED:
        break;
    }
    return "table names must not start with \"__\" (reserved)";
}

/* Kafka's own topic rule: 1..249 of [a-zA-Z0-9._-], not "." or "..". */
static const char *topic_name_problem(const char *t)
{
    size_t len = strlen(t);
    if (len == 0)
        return "topic names must not be empty";
    if (len > KVS_POS_TOPIC_MAX)
        return "topic names must be at most 249 characters";
    if (!kvs_pos_topic_chars_ok(t, len))
        return "Kafka topic names use only letters, digits, '.', '_' and '-'";
    return NULL;
}

typedef struct {
    yaml_mark_t topic, table;
} binding_marks_t;

static int binding_name(cfg_ctx_t *ctx, const char *path, const yaml_node_t *val, char **slot,
                        const char *(*problem)(const char *), yaml_mark_t *mark)
{
    const char *text = NULL, *why;
    int rc = scalar_value(ctx, val, path, "a string", &text);
    if (rc != 0)
        return rc;
    if ((why = problem(text)) != NULL)
        return cfg_error(ctx, &val->start_mark, "%s: %s (got \"%.80s\")", path, why, text);
    *mark = val->start_mark;
    return store_string(ctx, slot, text);
}

static int binding_partitions(cfg_ctx_t *ctx, const char *path, const yaml_node_t *val,
                              kvs_binding_t *b)
{
    uint64_t v;
    const char *end, *text = NULL;
    int rc = scalar_value(ctx, val, path, "an integer", &text);
    if (rc != 0)
        return rc;
    if (leading_zero(text))
        return zero_error(ctx, path, text, &val->start_mark);
    if (parse_digits(text, &v, &end) != 0 || *end != '\0' || v < 1 || v > 100000)
        return cfg_error(ctx, &val->start_mark,
                         "%s must be the topic's partition count, 1 to 100000 (got \"%.40s\")",
                         path, text);
    b->partitions = (uint32_t)v;
    return 0;
}

/* partitioner: the kvs names only; librdkafka's names get a hint. */
static int binding_partitioner(cfg_ctx_t *ctx, const char *path, const yaml_node_t *val,
                               kvs_binding_t *b)
{
    const char *text = NULL, *hint = NULL;
    int rc = scalar_value(ctx, val, path, "a string", &text);
    if (rc != 0)
        return rc;
    if (kvs_place_partitioner_parse(text, &b->partitioner, &hint) == 0)
        return 0;
    if (hint != NULL)
        return cfg_error(ctx, &val->start_mark,
                         "%s: \"%.40s\" is librdkafka's name; the kvs name of that partitioner "
                         "is %s (one of murmur2, crc32, fnv1a, none)",
                         path, text, hint);
    return cfg_error(
        ctx, &val->start_mark,
        "%s must be one of murmur2 (Java client default), crc32 (librdkafka "
        "default: kcat, confluent-kafka), fnv1a (Sarama default), none (got \"%.80s\")",
        path, text);
}

static int binding_field(cfg_ctx_t *ctx, const char *label, kvs_binding_t *b,
                         const yaml_node_pair_t *pair, binding_marks_t *marks)
{
    const yaml_node_t *key = node_at(ctx, pair->key), *val = node_at(ctx, pair->value);
    const char *k = scalar_text(key), *text = NULL;
    char path[64];
    snprintf(path, sizeof(path), "%s.%s", label, k);
    if (strcmp(k, "topic") == 0)
        return binding_name(ctx, path, val, &b->topic, topic_name_problem, &marks->topic);
    if (strcmp(k, "table") == 0)
        return binding_name(ctx, path, val, &b->table, table_name_problem, &marks->table);
    if (strcmp(k, "partitions") == 0)
        return binding_partitions(ctx, path, val, b);
    if (strcmp(k, "partitioner") == 0)
        return binding_partitioner(ctx, path, val, b);
    if (strcmp(k, "format") != 0)
        return unknown_key(ctx, key, label);
    int rc = scalar_value(ctx, val, path, "a string", &text);
    if (rc != 0)
        return rc;
    int i = match_word(format_names, text);
    if (i < 0)
        return cfg_error(ctx, &val->start_mark,
                         "%s must be one of raw, string, value (got \"%.80s\")", path, text);
    b->format = (kvs_format_t)i;
    return 0;
}

/* A topic feeds one table, and a table takes its partition count from one
 * topic (placement), so both must be unique across bindings. */
static int binding_unique(cfg_ctx_t *ctx, const char *label, size_t idx,
                          const binding_marks_t *marks)
{
    const kvs_config_t *c = ctx->cfg;
    const kvs_binding_t *b = &c->bindings[idx];
    for (size_t j = 0; j < idx; j++) {
        if (strcmp(c->bindings[j].topic, b->topic) == 0)
            return cfg_error(ctx, &marks->topic,
                             "%s.topic: topic \"%s\" is already bound in kafka.bindings[%zu]",
                             label, b->topic, j);
        if (strcmp(c->bindings[j].table, b->table) == 0)
            return cfg_error(ctx, &marks->table,
                             "%s.table: table \"%s\" is already bound to topic \"%s\" in "
                             "kafka.bindings[%zu] (a table takes its partitions from one topic)",
                             label, b->table, c->bindings[j].topic, j);
    }
    return 0;
}

static int parse_binding(cfg_ctx_t *ctx, const yaml_node_t *item, size_t idx)
{
    char label[40];
    snprintf(label, sizeof(label), "kafka.bindings[%zu]", idx);
    if (item->type != YAML_MAPPING_NODE)
        return cfg_error(ctx, &item->start_mark,
                         "%s: expected a mapping with topic and table, got %s", label,
                         describe(ctx, item));
    kvs_binding_t *b = &ctx->cfg->bindings[ctx->cfg->n_bindings++]; /* zeroed: format raw */
    binding_marks_t marks;
    memset(&marks, 0, sizeof(marks));
    const yaml_node_pair_t *p;
    for (p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top; p++) {
        int rc = check_key(ctx, item, p, label);
        if (rc == 0)
            rc = binding_field(ctx, label, b, p, &marks);
        if (rc != 0)
            return rc;
    }
    if (b->topic == NULL || b->table == NULL)
        return cfg_error(ctx, &item->start_mark, "%s: missing \"%s\"", label,
                         b->topic == NULL ? "topic" : "table");
    b->table_len = strlen(b->table);
    return binding_unique(ctx, label, idx, &marks);
}

static int set_bindings(cfg_ctx_t *ctx, const yaml_node_t *seq)
{
    size_t n;
    int rc = list_len(ctx, seq, "kafka.bindings: expected a list of {topic, table, format}",
                      KVS_BINDINGS_MAX, &n);
    if (rc != 0 || n == 0)
        return rc;
    if ((ctx->cfg->bindings = calloc(n, sizeof(kvs_binding_t))) == NULL)
        return cfg_oom(ctx);
    return each_entry(ctx, seq, parse_binding);
}

/* The librdkafka properties that name a file it opens and reads (OpenSSL
 * loads the TLS ones when the client is made, the engine is dlopen'ed,
 * kinit reads the keytab): a FIFO there blocks a worker's start until some
 * writer comes, a directory fails later with OpenSSL's words. Only
 * ssl.ca.location may name a directory (of CA certificates). */
static const struct kafka_file_s {
    const char *name;
    int dir_ok;
} kafka_files[] = {
    {"ssl.ca.location", 1},      {"ssl.certificate.location", 0}, {"ssl.key.location", 0},
    {"ssl.crl.location", 0},     {"ssl.keystore.location", 0},    {"ssl.engine.location", 0},
    {"sasl.kerberos.keytab", 0},
};

/* Checks what the value of property `k` names, when it names a file
 * librdkafka reads (kafka_files), as kvs_tls checks the router's TLS
 * files: at load and at every reload, so a bad path is refused with its
 * line before any worker hands it to librdkafka. A path that does not
 * stat is left to librdkafka to report; ssl.ca.location "probe" is
 * librdkafka's own. */
static int check_property_file(cfg_ctx_t *ctx, const yaml_node_t *val, const char *k,
                               const char *path)
{
    const struct kafka_file_s *f = NULL;
    for (size_t i = 0; i < sizeof(kafka_files) / sizeof(kafka_files[0]) && f == NULL; i++)
        if (strcmp(k, kafka_files[i].name) == 0)
            f = &kafka_files[i];
    struct stat st;
    if (f == NULL || path[0] == '\0' || (f->dir_ok && strcmp(path, "probe") == 0) ||
        stat(path, &st) != 0 || S_ISREG(st.st_mode) || (f->dir_ok && S_ISDIR(st.st_mode)))
        return 0;
    return cfg_error(ctx, &val->start_mark, "kafka.properties.%s %s: %s, not a file%s: name %s", k,
                     path, kvs_fs_kind(st.st_mode), f->dir_ok ? " or a directory" : "",
                     f->dir_ok ? "a PEM file or a directory of CA certificates"
                               : "the file librdkafka is to read");
}

/* plugin.library.paths: librdkafka dlopen()s each of its ';'-separated
 * libraries while the property is set (a worker's start), retrying with
 * ".so" appended when the name has no extension. An entry with a '/' is a
 * path, checked here at load and at every reload: one that names nothing
 * (with or without the ".so") or anything but a file (a FIFO would block
 * the worker's start, a directory fails in dlopen's words) is refused with
 * its line. An entry without a '/' is a name for dlopen's search path
 * (LD_LIBRARY_PATH, ld.so.cache), left to librdkafka. */
static int check_plugin_paths(cfg_ctx_t *ctx, const yaml_node_t *val, const char *list)
{
    const char *p = list;
    while (*p != '\0') {
        size_t n = strcspn(p, ";");
        char path[PATH_MAX + 4];
        if (n >= PATH_MAX)
            return cfg_error(ctx, &val->start_mark,
                             "kafka.properties.plugin.library.paths: an entry is longer than "
                             "%d bytes",
                             PATH_MAX - 1);
        memcpy(path, p, n);
        path[n] = '\0';
        p += n + (p[n] == ';');
        if (memchr(path, '/', n) == NULL)
            continue;
        struct stat st;
        int found = stat(path, &st) == 0;
        const char *base = strrchr(path, '/') + 1;
        if (!found && strchr(base, '.') == NULL) {
            memcpy(path + n, ".so", 4); /* what librdkafka tries next */
            found = stat(path, &st) == 0;
            if (!found)
                path[n] = '\0';
        }
        if (!found)
            return cfg_error(ctx, &val->start_mark,
                             "kafka.properties.plugin.library.paths: %s: %s; name the plugin "
                             "library librdkafka is to load",
                             path, strerror(errno));
        if (!S_ISREG(st.st_mode))
            return cfg_error(ctx, &val->start_mark,
                             "kafka.properties.plugin.library.paths: %s: %s, not a file: name the "
                             "plugin library librdkafka is to load",
                             path, kvs_fs_kind(st.st_mode));
    }
    return 0;
}

static int add_property(cfg_ctx_t *ctx, const yaml_node_pair_t *pair)
{
    const yaml_node_t *key = node_at(ctx, pair->key), *val = node_at(ctx, pair->value);
    const char *k = scalar_text(key), *text = NULL;
    char path[128];
    if (k[0] == '\0')
        return cfg_error(ctx, &key->start_mark,
                         "kafka.properties: property names must not be empty");
    snprintf(path, sizeof(path), "kafka.properties.%.80s", k);
    int rc = scalar_value(ctx, val, path, "a string", &text);
    if (rc == 0)
        rc = check_property_file(ctx, val, k, text);
    if (rc == 0 && strcmp(k, "plugin.library.paths") == 0)
        rc = check_plugin_paths(ctx, val, text);
    if (rc != 0)
        return rc;
    kvs_kv_t *kv = &ctx->cfg->kafka_properties[ctx->cfg->n_kafka_properties++];
    kv->key = strdup(k);
    kv->value = strdup(text);
    return kv->key == NULL || kv->value == NULL ? cfg_oom(ctx) : 0;
}

static int set_properties(cfg_ctx_t *ctx, const yaml_node_t *map)
{
    if (is_null(map))
        return 0;
    if (map->type != YAML_MAPPING_NODE)
        return cfg_error(ctx, &map->start_mark,
                         "kafka.properties: expected a mapping of librdkafka properties, got %s",
                         describe(ctx, map));
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    if (n == 0)
        return 0;
    ctx->cfg->kafka_properties = calloc(n, sizeof(kvs_kv_t));
    if (ctx->cfg->kafka_properties == NULL)
        return cfg_oom(ctx);
    const yaml_node_pair_t *p;
    for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        int rc = check_key(ctx, map, p, "kafka.properties");
        if (rc == 0)
            rc = add_property(ctx, p);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- cluster.remote ------------------------------------------------------- */

static int remote_field(cfg_ctx_t *ctx, const char *label, kvs_remote_t *r,
                        const yaml_node_pair_t *pair, int *have_shard)
{
    const yaml_node_t *key = node_at(ctx, pair->key), *val = node_at(ctx, pair->value);
    const char *k = scalar_text(key), *text = NULL, *why;
    char path[64];
    unsigned port;
    snprintf(path, sizeof(path), "%s.%s", label, k);
    int rc = scalar_value(ctx, val, path, "a value", &text);
    if (rc != 0)
        return rc;
    if (strcmp(k, "shard") == 0) {
        uint64_t v;
        const char *end;
        if (leading_zero(text))
            return zero_error(ctx, path, text, &val->start_mark);
        if (parse_digits(text, &v, &end) != 0 || *end != '\0' || v >= ctx->cfg->shards)
            return cfg_error(ctx, &val->start_mark,
                             "%s must be a shard id from 0 to %u (cluster.shards - 1), got "
                             "\"%.40s\"",
                             path, ctx->cfg->shards - 1, text);
        r->shard = (uint32_t)v;
        *have_shard = 1;
        return 0;
    }
    if (strcmp(k, "address") != 0)
        return unknown_key(ctx, key, label);
    if (check_listen(text, &port, &why) != 0)
        return cfg_error(ctx, &val->start_mark, "%s: %s (got \"%.80s\")", path, why, text);
    return store_string(ctx, &r->address, text);
}

static int parse_remote(cfg_ctx_t *ctx, const yaml_node_t *item, size_t idx)
{
    char label[40];
    snprintf(label, sizeof(label), "cluster.remote[%zu]", idx);
    if (item->type != YAML_MAPPING_NODE)
        return cfg_error(ctx, &item->start_mark,
                         "%s: expected a mapping {shard: N, address: HOST:PORT}, got %s", label,
                         describe(ctx, item));
    kvs_remote_t *r = &ctx->cfg->remote[ctx->cfg->n_remote++];
    int have_shard = 0;
    const yaml_node_pair_t *p;
    for (p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top; p++) {
        int rc = check_key(ctx, item, p, label);
        if (rc == 0)
            rc = remote_field(ctx, label, r, p, &have_shard);
        if (rc != 0)
            return rc;
    }
    if (!have_shard || r->address == NULL)
        return cfg_error(ctx, &item->start_mark, "%s: missing \"%s\"", label,
                         have_shard ? "address" : "shard");
    for (size_t j = 0; j + 1 < ctx->cfg->n_remote; j++)
        if (ctx->cfg->remote[j].shard == r->shard)
            return cfg_error(ctx, &item->start_mark, "%s: shard %u is already listed in %s[%zu]",
                             label, r->shard, "cluster.remote", j);
    return 0;
}

static int cmp_remote(const void *a, const void *b)
{
    uint32_t x = ((const kvs_remote_t *)a)->shard, y = ((const kvs_remote_t *)b)->shard;
    return x < y ? -1 : x > y;
}

/* Needs cluster.shards, so `cluster.shards` must come first in the file when
 * both are given; check_remote re-validates after the walk. */
static int set_remote(cfg_ctx_t *ctx, const yaml_node_t *seq)
{
    size_t n;
    int rc = list_len(ctx, seq, "cluster.remote: expected a list of {shard, address}",
                      KVS_SHARDS_MAX, &n);
    if (rc != 0 || n == 0)
        return rc;
    if ((ctx->cfg->remote = calloc(n, sizeof(kvs_remote_t))) == NULL)
        return cfg_oom(ctx);
    if ((rc = each_entry(ctx, seq, parse_remote)) != 0)
        return rc;
    qsort(ctx->cfg->remote, ctx->cfg->n_remote, sizeof(kvs_remote_t), cmp_remote);
    return 0;
}

/* ---- cluster.nodes ------------------------------------------------------------ */

const char *kvs_config_node_name_problem(const char *t)
{
    size_t n = strlen(t);
    if (n == 0)
        return "a node name must not be empty";
    if (n > KVS_NODE_NAME_MAX)
        return "a node name may have at most 64 characters";
    for (const char *c = t; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '_' || *c == '-'))
            return "a node name may hold only letters, digits, '.', '_' and '-'";
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* shards: [0, 1, 2]: ids only (checked against cluster.shards after the
 * walk, which may set it later in the file); duplicates refused here. */
static int node_shards(cfg_ctx_t *ctx, const char *path, const yaml_node_t *val, kvs_node_t *n)
{
    if (val->type != YAML_SEQUENCE_NODE)
        return cfg_error(ctx, &val->start_mark,
                         "%s: expected a list of shard ids such as [0, 1], got %s", path,
                         describe(ctx, val));
    size_t cnt = (size_t)(val->data.sequence.items.top - val->data.sequence.items.start);
    n->shards = calloc(cnt ? cnt : 1, sizeof(*n->shards));
    if (n->shards == NULL)
        return cfg_oom(ctx);
    for (size_t i = 0; i < cnt; i++) {
        const yaml_node_t *item = node_at(ctx, val->data.sequence.items.start[i]);
        const char *text = NULL, *end;
        uint64_t v;
        int rc = scalar_value(ctx, item, path, "a shard id", &text);
        if (rc != 0)
            return rc;
        if (leading_zero(text))
            return zero_error(ctx, path, text, &item->start_mark);
        if (parse_digits(text, &v, &end) != 0 || *end != '\0' || v >= 1024)
            return cfg_error(ctx, &item->start_mark,
                             "%s: \"%.40s\" is not a shard id (0 to cluster.shards - 1)", path,
                             text);
        for (size_t j = 0; j < n->n_shards; j++)
            if (n->shards[j] == v)
                return cfg_error(ctx, &item->start_mark, "%s: shard %llu is listed twice", path,
                                 (unsigned long long)v);
        n->shards[n->n_shards++] = (uint32_t)v;
    }
    qsort(n->shards, n->n_shards, sizeof(*n->shards), cmp_u32);
    return 0;
}

static int node_field(cfg_ctx_t *ctx, const char *label, size_t idx, const yaml_node_pair_t *pair)
{
    kvs_node_t *n = &ctx->cfg->nodes[idx];
    yaml_mark_t *marks = &ctx->node_marks[3 * idx];
    const yaml_node_t *key = node_at(ctx, pair->key), *val = node_at(ctx, pair->value);
    const char *k = scalar_text(key), *text = NULL, *why;
    char path[64];
    unsigned port;
    snprintf(path, sizeof(path), "%s.%s", label, k);
    if (strcmp(k, "shards") == 0) {
        marks[2] = val->start_mark;
        return node_shards(ctx, path, val, n);
    }
    if (strcmp(k, "name") != 0 && strcmp(k, "address") != 0)
        return unknown_key(ctx, key, label);
    int rc = scalar_value(ctx, val, path, "a string", &text);
    if (rc != 0)
        return rc;
    if (strcmp(k, "name") == 0) {
        if ((why = kvs_config_node_name_problem(text)) != NULL)
            return cfg_error(ctx, &val->start_mark, "%s: %s (got \"%.80s\")", path, why, text);
        marks[0] = val->start_mark;
        return store_string(ctx, &n->name, text);
    }
    if (check_listen(text, &port, &why) != 0)
        return cfg_error(ctx, &val->start_mark,
                         "%s must be HOST:PORT or [IPV6]:PORT, the node's workers' base address "
                         "(shard N on PORT+N) (got \"%.80s\"): %s",
                         path, text, why);
    marks[1] = val->start_mark;
    return store_string(ctx, &n->address, text);
}

static int parse_node(cfg_ctx_t *ctx, const yaml_node_t *item, size_t idx)
{
    char label[40];
    snprintf(label, sizeof(label), "cluster.nodes[%zu]", idx);
    if (item->type != YAML_MAPPING_NODE)
        return cfg_error(ctx, &item->start_mark,
                         "%s: expected a mapping {name: N, address: HOST:PORT, shards: [..]}, "
                         "got %s",
                         label, describe(ctx, item));
    ctx->cfg->n_nodes++;
    const yaml_node_pair_t *p;
    for (p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top; p++) {
        int rc = check_key(ctx, item, p, label);
        if (rc == 0)
            rc = node_field(ctx, label, idx, p);
        if (rc != 0)
            return rc;
    }
    const kvs_node_t *n = &ctx->cfg->nodes[idx];
    if (n->name == NULL || n->address == NULL || n->shards == NULL)
        return cfg_error(ctx, &item->start_mark, "%s: missing \"%s\"", label,
                         n->name == NULL      ? "name"
                         : n->address == NULL ? "address"
                                              : "shards");
    return 0;
}

static int set_nodes(cfg_ctx_t *ctx, const yaml_node_t *seq)
{
    size_t n;
    int rc = list_len(ctx, seq, "cluster.nodes: expected a list of {name, address, shards}",
                      KVS_NODES_MAX, &n);
    if (rc != 0 || n == 0)
        return rc;
    ctx->cfg->nodes = calloc(n, sizeof(kvs_node_t));
    ctx->node_marks = calloc(3 * n, sizeof(yaml_mark_t));
    if (ctx->cfg->nodes == NULL || ctx->node_marks == NULL)
        return cfg_oom(ctx);
    return each_entry(ctx, seq, parse_node);
}

int kvs_node_serves(const kvs_node_t *node, uint32_t shard)
{
    return bsearch(&shard, node->shards, node->n_shards, sizeof(*node->shards), cmp_u32) != NULL;
}

const kvs_node_t *kvs_config_node(const kvs_config_t *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_nodes; i++)
        if (strcmp(cfg->nodes[i].name, name) == 0)
            return &cfg->nodes[i];
    return NULL;
}

int kvs_config_local(const kvs_config_t *cfg, uint32_t shard)
{
    if (cfg->n_nodes > 0)
        return cfg->self != NULL && kvs_node_serves(cfg->self, shard);
    return kvs_config_remote(cfg, shard) == NULL;
}

uint32_t kvs_config_replica_count(const kvs_config_t *cfg, uint32_t shard)
{
    if (cfg->n_nodes == 0)
        return 1;
    uint32_t n = 0;
    for (size_t i = 0; i < cfg->n_nodes; i++)
        n += (uint32_t)kvs_node_serves(&cfg->nodes[i], shard);
    return n;
}

/* ---- plugins -------------------------------------------------------------------- */

/* One plugins entry: "PATH" or {path: PATH, arg: TEXT}. Whether the file
 * exists and is a plugin is checked where it is loaded (kvs_plugins). */
static int plugin_fields(cfg_ctx_t *ctx, const yaml_node_t *item, size_t idx)
{
    char label[40];
    const char *text = NULL;
    snprintf(label, sizeof(label), "plugins[%zu]", idx);
    kvs_plugin_conf_t *pl = &ctx->cfg->plugins[ctx->cfg->n_plugins++];
    pl->line = (uint32_t)item->start_mark.line + 1;
    pl->column = (uint32_t)item->start_mark.column + 1;
    if (item->type != YAML_MAPPING_NODE) {
        int rc = scalar_value(ctx, item, label, "a path or {path, arg}", &text);
        return rc != 0 ? rc : store_string(ctx, &pl->path, text);
    }
    const yaml_node_pair_t *p;
    for (p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top; p++) {
        const yaml_node_t *key = node_at(ctx, p->key), *val = node_at(ctx, p->value);
        char path[64];
        int rc = check_key(ctx, item, p, label);
        if (rc != 0)
            return rc;
        const char *k = scalar_text(key);
        if (strcmp(k, "path") != 0 && strcmp(k, "arg") != 0)
            return unknown_key(ctx, key, label);
        snprintf(path, sizeof(path), "%s.%s", label, k);
        if ((rc = scalar_value(ctx, val, path, "a string", &text)) != 0 ||
            (rc = store_string(ctx, k[0] == 'p' ? &pl->path : &pl->arg, text)) != 0)
            return rc;
    }
    if (pl->path == NULL)
        return cfg_error(ctx, &item->start_mark, "%s: missing \"path\"", label);
    return 0;
}

static int parse_plugin(cfg_ctx_t *ctx, const yaml_node_t *item, size_t idx)
{
    int rc = plugin_fields(ctx, item, idx);
    kvs_plugin_conf_t *pl = &ctx->cfg->plugins[idx];
    if (rc == 0 && pl->path[0] == '\0')
        rc = cfg_error(ctx, &item->start_mark, "plugins[%zu]: the path is empty", idx);
    if (rc == 0 && pl->arg == NULL)
        rc = store_string(ctx, &pl->arg, "");
    return rc;
}

static int set_plugins(cfg_ctx_t *ctx, const yaml_node_t *seq)
{
    size_t n;
    int rc = list_len(ctx, seq, "plugins: expected a list of shared object paths", SIZE_MAX, &n);
    if (rc != 0 || n == 0)
        return rc;
    if ((ctx->cfg->plugins = calloc(n, sizeof(kvs_plugin_conf_t))) == NULL)
        return cfg_oom(ctx);
    return each_entry(ctx, seq, parse_plugin);
}

const kvs_binding_t *kvs_config_binding(const kvs_config_t *cfg, const char *table)
{
    return kvs_config_binding_n(cfg, table, strlen(table));
}

const kvs_binding_t *kvs_config_binding_n(const kvs_config_t *cfg, const void *table, size_t len)
{
    for (size_t i = 0; i < cfg->n_bindings; i++)
        if (cfg->bindings[i].table_len == len && memcmp(cfg->bindings[i].table, table, len) == 0)
            return &cfg->bindings[i];
    return NULL;
}

uint32_t kvs_config_table_partitions(const kvs_config_t *cfg, const char *table)
{
    const kvs_binding_t *b = kvs_config_binding(cfg, table);
    return b != NULL && b->partitions > 0 ? b->partitions : cfg->partitions;
}

const kvs_remote_t *kvs_config_remote(const kvs_config_t *cfg, uint32_t shard)
{
    for (size_t i = 0; i < cfg->n_remote; i++)
        if (cfg->remote[i].shard == shard)
            return &cfg->remote[i];
    return NULL;
}

/* ---- users ------------------------------------------------------------------ */

#define KVS_USER_NAME_MAX 255

/* Names are matched against certificate names: printable text, no control
 * characters (so a log line naming a user is one line). */
static const char *user_name_problem(const char *n)
{
    size_t len = strlen(n);
    if (len == 0)
        return "must not be empty";
    if (len > KVS_USER_NAME_MAX)
        return "must be at most 255 bytes";
    for (const unsigned char *p = (const unsigned char *)n; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return "must not contain control characters";
    return NULL;
}

static int grant_right(cfg_ctx_t *ctx, const char *path, const yaml_node_t *val, unsigned *rights)
{
    static const char *const words[] = {"read", "write", "admin", NULL};
    const char *text = NULL;
    int rc = scalar_value(ctx, val, path, "read, write or admin", &text);
    if (rc != 0)
        return rc;
    int i = match_word(words, text);
    if (i < 0)
        return cfg_error(ctx, &val->start_mark,
                         "%s: \"%.40s\" is not a right (read, write or admin)", path, text);
    *rights |= 1u << i;
    return 0;
}

/* One `pattern: rights` entry of a user's allow mapping. */
static int parse_grant(cfg_ctx_t *ctx, const char *label, kvs_user_t *u,
                       const yaml_node_pair_t *pair)
{
    const yaml_node_t *key = node_at(ctx, pair->key), *val = node_at(ctx, pair->value);
    const char *pat = scalar_text(key);
    char path[300];
    snprintf(path, sizeof(path), "%s.allow[\"%.200s\"]", label, pat);
    if (pat[0] == '\0' || strlen(pat) > 2 * KVS_MAX_TABLE)
        return cfg_error(ctx, &key->start_mark,
                         "%s.allow: a table pattern must be 1 to 400 bytes (\"*\" is every "
                         "table)",
                         label);
    const char *bad = kvs_glob_problem(pat);
    if (bad != NULL)
        return cfg_error(ctx, &key->start_mark, "%s: %s", path, bad);
    kvs_grant_t *g = &u->grants[u->n_grants++];
    if (store_string(ctx, &g->pattern, pat) != 0)
        return -ENOMEM;
    if (val->type != YAML_SEQUENCE_NODE)
        return grant_right(ctx, path, val, &g->rights);
    for (yaml_node_item_t *it = val->data.sequence.items.start; it < val->data.sequence.items.top;
         it++) {
        int rc = grant_right(ctx, path, node_at(ctx, *it), &g->rights);
        if (rc != 0)
            return rc;
    }
    if (g->rights == 0)
        return cfg_error(ctx, &val->start_mark, "%s: give at least one right", path);
    return 0;
}

static int parse_allow(cfg_ctx_t *ctx, const char *label, kvs_user_t *u, const yaml_node_t *map)
{
    if (is_null(map))
        return 0;
    if (map->type != YAML_MAPPING_NODE)
        return cfg_error(ctx, &map->start_mark,
                         "%s.allow: expected a mapping of table pattern to rights, as in "
                         "{\"orders*\": [read, write]}, got %s",
                         label, describe(ctx, map));
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    u->grants = calloc(n ? n : 1, sizeof(*u->grants));
    if (u->grants == NULL)
        return cfg_oom(ctx);
    char where[48];
    snprintf(where, sizeof(where), "%s.allow", label);
    for (const yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        int rc = check_key(ctx, map, p, where);
        if (rc == 0)
            rc = parse_grant(ctx, label, u, p);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int user_field(cfg_ctx_t *ctx, const char *label, kvs_user_t *u,
                      const yaml_node_pair_t *pair)
{
    const yaml_node_t *key = node_at(ctx, pair->key), *val = node_at(ctx, pair->value);
    const char *k = scalar_text(key), *text = NULL, *why;
    char path[64];
    kvs_token_hash_t h;
    snprintf(path, sizeof(path), "%s.%s", label, k);
    if (strcmp(k, "allow") == 0)
        return parse_allow(ctx, label, u, val);
    if (strcmp(k, "name") != 0 && strcmp(k, "token") != 0)
        return unknown_key(ctx, key, label);
    int rc = scalar_value(ctx, val, path, "a string", &text);
    if (rc != 0)
        return rc;
    if (strcmp(k, "name") == 0) {
        if ((why = user_name_problem(text)) != NULL)
            return cfg_error(ctx, &val->start_mark, "%s %s", path, why);
        return store_string(ctx, &u->name, text);
    }
    if (kvs_token_parse(text, &h, &why) != 0) /* never echo it: it may be a token itself */
        return cfg_error(ctx, &val->start_mark, "%s: %s", path, why);
    return store_string(ctx, &u->token, text);
}

static int parse_user(cfg_ctx_t *ctx, const yaml_node_t *item, size_t idx)
{
    char label[32];
    snprintf(label, sizeof(label), "users[%zu]", idx);
    if (item->type != YAML_MAPPING_NODE)
        return cfg_error(ctx, &item->start_mark,
                         "%s: expected a mapping {name, token, allow}, got %s", label,
                         describe(ctx, item));
    kvs_user_t *u = &ctx->cfg->users[ctx->cfg->n_users++];
    for (const yaml_node_pair_t *p = item->data.mapping.pairs.start;
         p < item->data.mapping.pairs.top; p++) {
        int rc = check_key(ctx, item, p, label);
        if (rc == 0)
            rc = user_field(ctx, label, u, p);
        if (rc != 0)
            return rc;
    }
    if (u->name == NULL)
        return cfg_error(ctx, &item->start_mark, "%s: missing \"name\"", label);
    for (size_t j = 0; j + 1 < ctx->cfg->n_users; j++)
        if (strcmp(ctx->cfg->users[j].name, u->name) == 0)
            return cfg_error(ctx, &item->start_mark, "%s: user \"%s\" is already users[%zu]", label,
                             u->name, j);
    return 0;
}

static int set_users(cfg_ctx_t *ctx, const yaml_node_t *seq)
{
    size_t n;
    int rc =
        list_len(ctx, seq, "users: expected a list of {name, token, allow}", KVS_USERS_MAX, &n);
    if (rc != 0 || n == 0)
        return rc;
    if ((ctx->cfg->users = calloc(n, sizeof(kvs_user_t))) == NULL)
        return cfg_oom(ctx);
    return each_entry(ctx, seq, parse_user);
}

/* ---- the walk ------------------------------------------------------------- */

static const directive_t *find_directive(const char *path)
{
    for (size_t i = 0; i < N_DIRECTIVES; i++)
        if (strcmp(directives[i].path, path) == 0)
            return &directives[i];
    return NULL;
}

static size_t directive_index(const char *path)
{
    const directive_t *d = find_directive(path);
    assert(d != NULL);
    return (size_t)(d - directives);
}

/* True when some directive lives under `path` ("cluster" for "cluster.shards"). */
static int is_section(const char *path)
{
    size_t len = strlen(path);
    for (size_t i = 0; i < N_DIRECTIVES; i++)
        if (strncmp(directives[i].path, path, len) == 0 && directives[i].path[len] == '.')
            return 1;
    return 0;
}

static int apply(cfg_ctx_t *ctx, const directive_t *d, const yaml_node_t *val)
{
    size_t i = (size_t)(d - directives);
    ctx->seen[i] = 1;
    ctx->marks[i] = val->start_mark;
    if (d->type == D_BINDINGS)
        return set_bindings(ctx, val);
    if (d->type == D_PROPERTIES)
        return set_properties(ctx, val);
    if (d->type == D_REMOTE)
        return set_remote(ctx, val);
    if (d->type == D_USERS)
        return set_users(ctx, val);
    if (d->type == D_NODES)
        return set_nodes(ctx, val);
    if (d->type == D_PLUGINS)
        return set_plugins(ctx, val);
    const char *text = NULL;
    int rc = scalar_value(ctx, val, d->path, expected(d), &text);
    if (rc != 0)
        return rc;
    return set_value(ctx, d, text, &val->start_mark);
}

static int walk_map(cfg_ctx_t *ctx, const yaml_node_t *map, const char *section);

/* A section with no value ("cluster:" with every key commented out) keeps
 * its defaults. */
static int walk_section(cfg_ctx_t *ctx, const char *path, const yaml_node_t *val)
{
    if (is_null(val))
        return 0;
    if (val->type != YAML_MAPPING_NODE)
        return cfg_error(ctx, &val->start_mark, "%s: expected a mapping, got %s", path,
                         describe(ctx, val));
    return walk_map(ctx, val, path);
}

static int walk_pair(cfg_ctx_t *ctx, const char *section, const yaml_node_pair_t *pair)
{
    const yaml_node_t *key = node_at(ctx, pair->key), *val = node_at(ctx, pair->value);
    const char *k = scalar_text(key);
    char path[96];
    int n = section ? snprintf(path, sizeof(path), "%s.%s", section, k)
                    : snprintf(path, sizeof(path), "%s", k);
    /* A dotted key ("cluster.shards: 4") is not a shorthand: it is unknown. */
    if (strchr(k, '.') == NULL && n > 0 && (size_t)n < sizeof(path)) {
        const directive_t *d = find_directive(path);
        if (d != NULL)
            return apply(ctx, d, val);
        if (is_section(path))
            return walk_section(ctx, path, val);
    }
    return unknown_key(ctx, key, section);
}

static int walk_map(cfg_ctx_t *ctx, const yaml_node_t *map, const char *section)
{
    const yaml_node_pair_t *p;
    for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        int rc = check_key(ctx, map, p, section);
        if (rc == 0)
            rc = walk_pair(ctx, section, p);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int walk_root(cfg_ctx_t *ctx)
{
    const yaml_node_t *root = yaml_document_get_root_node(ctx->doc);
    if (root == NULL || is_null(root))
        return 0; /* empty file, or only comments */
    if (root->type != YAML_MAPPING_NODE)
        return cfg_error(ctx, &root->start_mark,
                         "the top level must be a mapping of keys such as \"data_dir: ./data\", "
                         "got %s",
                         describe(ctx, root));
    return walk_map(ctx, root, NULL);
}

/* ---- cross-key rules --------------------------------------------------------- */

static int check_partitions(cfg_ctx_t *ctx)
{
    const kvs_config_t *c = ctx->cfg;
    if (c->partitions >= c->shards)
        return 0;
    size_t ip = directive_index("cluster.partitions"), is = directive_index("cluster.shards");
    const yaml_mark_t *m = ctx->seen[ip] ? &ctx->marks[ip] : &ctx->marks[is];
    return cfg_error(ctx, m, "cluster.partitions (%u%s) must be >= cluster.shards (%u)",
                     c->partitions, ctx->seen[ip] ? "" : ", the default", c->shards);
}

/* ---- the cluster map (cluster.nodes) ------------------------------------------ */

static const yaml_mark_t *directive_mark(cfg_ctx_t *ctx, const char *path)
{
    size_t i = directive_index(path);
    return ctx->seen[i] ? &ctx->marks[i] : NULL;
}

/* The map's addresses are where peers connect (a node's own included:
 * its peers read the same map). */
#define UNSPECIFIED_PEER                                                                           \
    "the unspecified address names no host (a connection to it reaches the connecting machine "    \
    "itself): give the serving node's own address; node.listen: \"0.0.0.0:PORT\" makes a "         \
    "node's workers listen on every address"

/* Two nodes on one host whose port ranges (PORT .. PORT+shards-1) overlap
 * would have workers fight for a port, or one node's workers would be
 * taken for another's replicas (127.0.0.1 and localhost: one host). */
static int nodes_collide(const kvs_config_t *c, const kvs_node_t *a, const kvs_node_t *b)
{
    kvs_addr_t x, y;
    if (kvs_addr_parse(a->address, 0, &x, NULL, 0) != 0 ||
        kvs_addr_parse(b->address, 0, &y, NULL, 0) != 0 || !kvs_addr_same_host(&x, &y))
        return 0;
    uint32_t lo = x.port < y.port ? x.port : y.port, hi = x.port < y.port ? y.port : x.port;
    return hi - lo < c->shards;
}

/* One node's entry against the rest of the file: shard ids in range, its
 * ports exist, name and address unique. */
static int check_node(cfg_ctx_t *ctx, size_t i)
{
    const kvs_config_t *c = ctx->cfg;
    const kvs_node_t *n = &c->nodes[i];
    const yaml_mark_t *m = &ctx->node_marks[3 * i];
    kvs_addr_t a;
    for (size_t k = 0; k < n->n_shards; k++)
        if (n->shards[k] >= c->shards)
            return cfg_error(ctx, &m[2],
                             "cluster.nodes[%zu].shards names shard %u but cluster.shards is %u "
                             "(ids 0..%u)",
                             i, n->shards[k], c->shards, c->shards - 1);
    if (kvs_addr_parse(n->address, 0, &a, NULL, 0) == 0 && kvs_addr_is_unspecified(&a))
        return cfg_error(ctx, &m[1], "cluster.nodes[%zu].address %s: %s", i, n->address,
                         UNSPECIFIED_PEER);
    if (kvs_addr_parse(n->address, 0, &a, NULL, 0) == 0 && (uint32_t)a.port + c->shards - 1 > 65535)
        return cfg_error(ctx, &m[1],
                         "cluster.nodes[%zu].address port %u + highest shard id %u is past "
                         "65535 (shard N listens on PORT+N)",
                         i, a.port, c->shards - 1);
    for (size_t j = 0; j < i; j++) {
        if (strcmp(c->nodes[j].name, n->name) == 0)
            return cfg_error(ctx, &m[0],
                             "cluster.nodes[%zu].name: \"%s\" is already the name of "
                             "cluster.nodes[%zu]",
                             i, n->name, j);
        if (nodes_collide(c, &c->nodes[j], n))
            return cfg_error(ctx, &m[1],
                             "cluster.nodes[%zu].address %s: its workers' ports (PORT .. "
                             "PORT+%u) overlap those of cluster.nodes[%zu] (%s) on the same host",
                             i, n->address, c->shards - 1, j, c->nodes[j].address);
    }
    return 0;
}

static int cmp_node_name(const void *a, const void *b)
{
    return strcmp((*(const kvs_node_t *const *)a)->name, (*(const kvs_node_t *const *)b)->name);
}

/* c->map_digest (see kvs_config.h); -ENOMEM. Names are unique. */
static int map_digest(kvs_config_t *c)
{
    const kvs_node_t **by_name = calloc(c->n_nodes, sizeof(*by_name));
    kvs_hash_t *h = kvs_hash_new();
    if (by_name == NULL || h == NULL) {
        free(by_name);
        kvs_hash_free(h);
        return -ENOMEM;
    }
    for (size_t i = 0; i < c->n_nodes; i++)
        by_name[i] = &c->nodes[i];
    qsort(by_name, c->n_nodes, sizeof(*by_name), cmp_node_name);
    uint32_t head[2] = {c->shards, c->partitions};
    kvs_hash_field(h, head, sizeof(head));
    for (size_t i = 0; i < c->n_nodes; i++) {
        const kvs_node_t *n = by_name[i];
        kvs_hash_field(h, n->name, strlen(n->name));
        kvs_hash_field(h, n->address, strlen(n->address));
        kvs_hash_field(h, n->shards, n->n_shards * sizeof(*n->shards));
    }
    kvs_hash_digest(h, c->map_digest);
    c->has_map_digest = 1;
    kvs_hash_free(h);
    free(by_name);
    return 0;
}

/* The map as a whole: not mixed with cluster.remote, this node in it,
 * every shard served, no shard on more than KVS_MAX_REPLICAS nodes. */
static int check_nodes(cfg_ctx_t *ctx)
{
    kvs_config_t *c = ctx->cfg;
    const yaml_mark_t *nodes = directive_mark(ctx, "cluster.nodes");
    const char *why = kvs_config_node_name_problem(c->node_name);
    if (c->node_name[0] != '\0' && why != NULL)
        return cfg_error(ctx, directive_mark(ctx, "node.name"), "node.name: %s (got \"%.80s\")",
                         why, c->node_name);
    if (c->n_nodes == 0)
        return 0;
    if (c->n_remote > 0)
        return cfg_error(ctx, directive_mark(ctx, "cluster.remote"),
                         "cluster.remote and cluster.nodes cannot both be set: list every node, "
                         "this one included, with its shards in cluster.nodes and drop "
                         "cluster.remote");
    for (size_t i = 0; i < c->n_nodes; i++) {
        int rc = check_node(ctx, i);
        if (rc != 0)
            return rc;
    }
    if (c->node_name[0] == '\0')
        return cfg_error(ctx, nodes,
                         "node.name must be set with cluster.nodes: it says which of the nodes "
                         "listed is this one (e.g. \"%s\")",
                         c->nodes[0].name);
    if ((c->self = kvs_config_node(c, c->node_name)) == NULL)
        return cfg_error(ctx, directive_mark(ctx, "node.name"),
                         "node.name \"%s\" is not in cluster.nodes (the nodes listed are \"%s\"%s)",
                         c->node_name, c->nodes[0].name, c->n_nodes > 1 ? ", ..." : "");
    for (uint32_t s = 0; s < c->shards; s++) {
        uint32_t n = kvs_config_replica_count(c, s);
        if (n == 0)
            return cfg_error(ctx, nodes,
                             "shard %u is served by no node in cluster.nodes: every shard from 0 "
                             "to %u must be in some node's shards",
                             s, c->shards - 1);
        if (n > KVS_MAX_REPLICAS)
            return cfg_error(ctx, nodes, "shard %u is served by %u nodes; at most %d may serve one",
                             s, n, KVS_MAX_REPLICAS);
    }
    if (map_digest(c) != 0)
        return cfg_error(ctx, nodes, "out of memory");
    return 0;
}

/* This node's client, RESP and metrics ports against the ports of the
 * workers the map runs on this host (PORT + N for each shard N a node
 * serves): a peer's router would
 * take this node's listener for a worker (and this node's router its own,
 * when the map puts a node's workers on it). A node is on this host when
 * its address is loopback or this node's own (the host compared as
 * kvs_addr_same_host does), and a listener clashes with it when it
 * listens on every address or on that node's. */
static int check_map_ports(cfg_ctx_t *ctx)
{
    const kvs_config_t *c = ctx->cfg;
    static const char *const names[] = {"router.listen", "router.resp_listen",
                                        "router.metrics_listen"};
    const char *specs[] = {c->router_listen, c->resp_listen, c->metrics_listen};
    kvs_addr_t self, l, n;
    if (c->self == NULL || kvs_addr_parse(c->self->address, 0, &self, NULL, 0) != 0)
        return 0;
    for (size_t k = 0; k < sizeof(specs) / sizeof(specs[0]); k++) {
        if (specs[k] == NULL || specs[k][0] == '\0' ||
            kvs_addr_parse(specs[k], 1, &l, NULL, 0) != 0 || l.is_unix)
            continue;
        for (size_t i = 0; i < c->n_nodes; i++) {
            if (kvs_addr_parse(c->nodes[i].address, 0, &n, NULL, 0) != 0 || l.port < n.port ||
                !kvs_node_serves(&c->nodes[i], (uint32_t)(l.port - n.port)))
                continue;
            int here = kvs_addr_is_loopback(&n) || kvs_addr_same_host(&n, &self);
            if (!(kvs_addr_same_host(&l, &n) || (here && kvs_addr_is_unspecified(&l))))
                continue;
            const yaml_mark_t *m = directive_mark(ctx, names[k]); /* else the default's */
            return cfg_error(
                ctx, m != NULL ? m : &ctx->node_marks[3 * i + 1],
                "%s %s: port %u is the port of shard %u's worker of cluster.nodes[%zu] "
                "(%s, %s: shard N listens on PORT+N) on this host; choose a port "
                "outside every node's PORT .. PORT+%u",
                names[k], specs[k], l.port, l.port - n.port, i, c->nodes[i].name,
                c->nodes[i].address, c->shards - 1);
        }
    }
    return 0;
}

int kvs_config_shard_is_local(const kvs_config_t *c, uint32_t s)
{
    if (c->self != NULL)
        return kvs_node_serves(c->self, s);
    for (size_t i = 0; i < c->n_remote; i++)
        if (c->remote[i].shard == s)
            return 0;
    return 1;
}

/* The node's own listeners on one port, or on a port of its workers
 * (node.listen's PORT+N), would fail the start with a port "in use", taken
 * for another process's: refused here, where --check sees it. */
static int check_listener_ports(cfg_ctx_t *ctx)
{
    const kvs_config_t *c = ctx->cfg;
    static const char *const names[] = {"router.listen", "router.resp_listen",
                                        "router.metrics_listen"};
    const char *specs[] = {c->router_listen, c->resp_listen, c->metrics_listen};
    kvs_addr_t l[3], w;
    int tcp[3];
    for (size_t k = 0; k < 3; k++) {
        tcp[k] = specs[k] != NULL && specs[k][0] != '\0' &&
                 kvs_addr_parse(specs[k], 1, &l[k], NULL, 0) == 0 && !l[k].is_unix;
        for (size_t j = 0; tcp[k] && j < k; j++) {
            if (!tcp[j] || !kvs_addr_listeners_clash(&l[j], &l[k]))
                continue;
            const yaml_mark_t *m = directive_mark(ctx, names[k]);
            return cfg_error(ctx, m != NULL ? m : directive_mark(ctx, names[j]),
                             "%s %s: port %u is also %s's (%s); each listener needs a port of "
                             "its own",
                             names[k], specs[k], l[k].port, names[j], specs[j]);
        }
    }
    if (c->node_listen[0] == '\0' || kvs_addr_parse(c->node_listen, 1, &w, NULL, 0) != 0 ||
        w.is_unix)
        return 0;
    uint16_t base = w.port;
    for (uint32_t s = 0; s < c->shards && (uint32_t)base + s <= 65535; s++) {
        if (!kvs_config_shard_is_local(c, s))
            continue;
        w.port = (uint16_t)(base + s);
        for (size_t k = 0; k < 3; k++) {
            if (!tcp[k] || !kvs_addr_listeners_clash(&l[k], &w))
                continue;
            const yaml_mark_t *m = directive_mark(ctx, names[k]);
            return cfg_error(ctx, m != NULL ? m : directive_mark(ctx, "node.listen"),
                             "%s %s: port %u is where shard %u's worker listens (node.listen %s: "
                             "shard N listens on PORT+N); choose a port outside %u .. %u",
                             names[k], specs[k], l[k].port, s, c->node_listen, base,
                             base + c->shards - 1);
        }
    }
    return 0;
}

/* Remote shard ids were checked against cluster.shards as the file set it
 * so far; check again now that every key is known. */
static int check_remote(cfg_ctx_t *ctx)
{
    const kvs_config_t *c = ctx->cfg;
    for (size_t i = 0; i < c->n_remote; i++) {
        if (c->remote[i].shard < c->shards)
            continue;
        size_t ir = directive_index("cluster.remote");
        return cfg_error(ctx, &ctx->marks[ir],
                         "cluster.remote names shard %u but cluster.shards is %u (ids 0..%u)",
                         c->remote[i].shard, c->shards, c->shards - 1);
    }
    return 0;
}

/* Shard N listens on node.listen's PORT+N, so the last shard's port must exist. */
static int check_node_ports(cfg_ctx_t *ctx)
{
    const kvs_config_t *c = ctx->cfg;
    unsigned port;
    const char *why;
    if (c->node_listen[0] == '\0' || check_listen(c->node_listen, &port, &why) != 0)
        return 0;
    if ((uint64_t)port + c->shards - 1 <= 65535)
        return 0;
    size_t i = directive_index("node.listen");
    return cfg_error(ctx, &ctx->marks[i],
                     "node.listen port %u + highest shard id %u is past 65535 (shard N listens "
                     "on PORT+N)",
                     port, c->shards - 1);
}

/* A connection stops being served at a quarter of limits.client_output and
 * may still receive the answers it already asked for; answers are up to
 * max_frame, so the hard limit must leave room for them. An incomplete
 * frame may hold max_frame bytes of input. Defaults grow with max_frame;
 * values the file sets must fit it. */
static int check_limits(cfg_ctx_t *ctx)
{
    kvs_config_t *c = ctx->cfg;
    size_t io = directive_index("limits.client_output"),
           ii = directive_index("limits.input_buffers"),
           ib = directive_index("limits.output_buffers");
    if (!ctx->seen[io] && c->client_output < 4 * c->max_frame)
        c->client_output = 4 * c->max_frame;
    if (!ctx->seen[ii] && c->input_buffers < c->max_frame)
        c->input_buffers = c->max_frame;
    if (!ctx->seen[ib] && c->output_buffers < c->client_output)
        c->output_buffers = c->client_output;
    if (c->client_output < 4 * c->max_frame)
        return cfg_error(ctx, &ctx->marks[io],
                         "limits.client_output (%llu bytes) must be at least 4 x limits.max_frame "
                         "(%llu bytes)",
                         (unsigned long long)c->client_output, (unsigned long long)c->max_frame);
    if (c->output_buffers < c->client_output)
        return cfg_error(ctx, &ctx->marks[ib],
                         "limits.output_buffers (%llu bytes) must be at least "
                         "limits.client_output (%llu bytes), or one client within its own bound "
                         "would have others closed",
                         (unsigned long long)c->output_buffers,
                         (unsigned long long)c->client_output);
    if (c->input_buffers < c->max_frame)
        return cfg_error(ctx, &ctx->marks[ii],
                         "limits.input_buffers (%llu bytes) must be at least limits.max_frame "
                         "(%llu bytes), or no client could send a maximal frame",
                         (unsigned long long)c->input_buffers, (unsigned long long)c->max_frame);
    return 0;
}

/* The highest shard id this node runs itself, or -1 when it runs none. */
static long highest_local_shard(const kvs_config_t *c)
{
    for (long s = (long)c->shards - 1; s >= 0; s--)
        if (kvs_config_local(c, (uint32_t)s))
            return s;
    return -1;
}

/* Paths derived from data_dir must fit where they go: every local worker's
 * socket <data_dir>/shard-N.sock and every router process's
 * <data_dir>/routerI.sock in a unix socket address (107 bytes), and
 * router.lock and the files of <data_dir>/shard-N/ in PATH_MAX. Checked here so a long
 * data_dir is a config error, not a failure after the workers started. */
static int check_paths(cfg_ctx_t *ctx)
{
    const kvs_config_t *c = ctx->cfg;
    size_t i = directive_index("data_dir"), dlen = strlen(c->data_dir);
    const yaml_mark_t *m = ctx->seen[i] ? &ctx->marks[i] : NULL;
    long top = highest_local_shard(c);
    char sock[32];
    int n = top < 0 ? 0 : snprintf(sock, sizeof(sock), "/shard-%ld.sock", top);
    if (n > 0 && dlen + (size_t)n > KVS_SOCKET_PATH_MAX)
        return cfg_error(ctx, m,
                         "data_dir is too long for the workers' unix sockets: \"%.80s%s%s\" is "
                         "%zu bytes, a unix socket path may have at most %d; use a shorter "
                         "data_dir (a symlink to the real directory works)",
                         c->data_dir, dlen > 80 ? "..." : "", sock, dlen + (size_t)n,
                         KVS_SOCKET_PATH_MAX);
    /* Each router process's own socket, <data_dir>/routerI.sock (I below
     * router.processes; auto takes at most 8). */
    n = snprintf(sock, sizeof(sock), "/router%u.sock",
                 (c->router_processes > 0 ? c->router_processes : 8) - 1);
    if (dlen + (size_t)n > KVS_SOCKET_PATH_MAX)
        return cfg_error(ctx, m,
                         "data_dir is too long for the router processes' unix sockets: "
                         "\"%.80s%s%s\" is %zu bytes, a unix socket path may have at most %d; use "
                         "a shorter data_dir (a symlink to the real directory works)",
                         c->data_dir, dlen > 80 ? "..." : "", sock, dlen + (size_t)n,
                         KVS_SOCKET_PATH_MAX);
    n = top < 0 ? snprintf(sock, sizeof(sock), "/router.lock")
                : snprintf(sock, sizeof(sock), "/shard-%ld/data.mdb", top);
    if (n > 0 && dlen + (size_t)n >= KVS_PATH_MAX)
        return cfg_error(ctx, m, "data_dir is too long: paths under it must stay below %d bytes",
                         KVS_PATH_MAX);
    return 0;
}

/* An endpoint's cert, key and ca default to tls.cert, tls.key, tls.ca. */
static int inherit_tls(cfg_ctx_t *ctx, kvs_tls_endpoint_t *e)
{
    kvs_config_t *c = ctx->cfg;
    char **own[] = {&e->cert, &e->key, &e->ca};
    char *shared[] = {c->tls_cert, c->tls_key, c->tls_ca};
    for (size_t i = 0; i < 3; i++)
        if ((*own[i])[0] == '\0' && store_string(ctx, own[i], shared[i]) != 0)
            return -ENOMEM;
    return 0;
}

/* An enabled endpoint must have what its handshakes need. */
static int check_endpoint(cfg_ctx_t *ctx, const char *name, kvs_tls_endpoint_t *e, int listener)
{
    char path[40];
    snprintf(path, sizeof(path), "tls.%s.enabled", name);
    const yaml_mark_t *m = &ctx->marks[directive_index(path)];
    if (!e->enabled)
        return 0;
    if (e->cert[0] == '\0' || e->key[0] == '\0')
        return cfg_error(ctx, m,
                         "%s is true but there is no certificate and key: set tls.cert and "
                         "tls.key (or tls.%s.cert and tls.%s.key)",
                         path, name, name);
    if (e->ca[0] == '\0' && (!listener || e->client_cert != KVS_CLIENT_CERT_NONE))
        return cfg_error(ctx, m,
                         "%s is true but there is no CA bundle to verify %s certificates with: "
                         "set tls.ca (or tls.%s.ca)%s",
                         path, listener ? "client" : "the workers'", name,
                         listener ? ", or client_cert: none" : "");
    return 0;
}

static int check_tls(cfg_ctx_t *ctx)
{
    kvs_config_t *c = ctx->cfg;
    if (c->tls_min_version > c->tls_max_version)
        return cfg_error(ctx, &ctx->marks[directive_index("tls.min_version")],
                         "tls.min_version is above tls.max_version");
    int rc = 0;
    kvs_tls_endpoint_t *eps[] = {&c->tls_router, &c->tls_node, &c->tls_link, &c->tls_metrics};
    for (size_t i = 0; rc == 0 && i < 4; i++)
        rc = inherit_tls(ctx, eps[i]);
    if (rc == 0)
        rc = check_endpoint(ctx, "router", &c->tls_router, 1);
    if (rc == 0)
        rc = check_endpoint(ctx, "metrics", &c->tls_metrics, 1);
    if (rc == 0)
        rc = check_endpoint(ctx, "node", &c->tls_node, 1);
    if (rc == 0)
        rc = check_endpoint(ctx, "link", &c->tls_link, 0);
    return rc;
}

/* ---- entry points ------------------------------------------------------------ */

static int apply_defaults(cfg_ctx_t *ctx)
{
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        if (directives[i].def == NULL)
            continue;
        int rc = set_value(ctx, &directives[i], directives[i].def, NULL);
        assert(rc != KVS_ECONFIG); /* a default outside its own range */
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- the shape of the text, before it is composed ------------------------------ */

/* libyaml composes whatever it is given, and some texts cost far more than
 * their size: an alias re-uses its anchor's whole value wherever it appears,
 * and the walk copies each use (a few aliases of aliases of a long value
 * ask for gigabytes: "billion laughs"); deep flow nesting ("[[[[...") makes
 * libyaml's scanner work in time quadratic in the depth; and each value costs
 * the document a node whatever its size. So the events are read once, cheaply,
 * before the document is composed, and a text past these bounds is refused
 * at the value that crosses them. A kvs config nests five levels at most
 * (users[i].allow.PATTERN[j]). Tags are refused too: every value is read as
 * text, so "!!binary" or "!!python/object" would be silently ignored. */
#define KVS_CONFIG_MAX_DEPTH 16
#define KVS_CONFIG_MAX_ANCHORS 100
#define KVS_CONFIG_MAX_VALUES 500000

typedef struct {
    int map;      /* a mapping (else a list) */
    int want_key; /* mapping: the next event is a key */
    size_t idx;   /* list: the next entry's index */
    char key[48]; /* mapping: the key whose value comes next */
} scan_frame_t;

typedef struct {
    char *name;
    int open;               /* its value is still being read */
    uint64_t values, bytes; /* what one use of it costs, aliases included */
} scan_anchor_t;

typedef struct {
    scan_frame_t frames[KVS_CONFIG_MAX_DEPTH];
    size_t depth;
    scan_anchor_t anchors[KVS_CONFIG_MAX_ANCHORS];
    size_t n_anchors;
    uint64_t open_values[KVS_CONFIG_MAX_DEPTH], open_bytes[KVS_CONFIG_MAX_DEPTH];
    uint64_t values, bytes; /* the document's, every alias counted as its value */
    char path[256];
} scan_t;

/* Where the current event is, as a key path ("users[2].allow"), for messages;
 * "the top level" outside any mapping. */
static const char *scan_path(scan_t *s)
{
    size_t n = 0;
    s->path[0] = '\0';
    for (size_t i = 0; i < s->depth && n < sizeof(s->path); i++) {
        const scan_frame_t *f = &s->frames[i];
        int w;
        if (f->map && f->want_key)
            break; /* at a key: the path is the mapping's */
        if (f->map)
            w = snprintf(s->path + n, sizeof(s->path) - n, "%s%s", n ? "." : "", f->key);
        else
            w = snprintf(s->path + n, sizeof(s->path) - n, "[%zu]", f->idx);
        if (w < 0)
            break;
        n += (size_t)w;
    }
    return s->path[0] ? s->path : "the top level";
}

/* A tag libyaml resolved, as it was written ("!!binary" for yaml.org's). */
static const char *tag_text(const yaml_char_t *tag)
{
    static const char core[] = "tag:yaml.org,2002:";
    const char *t = (const char *)tag;
    return strncmp(t, core, sizeof(core) - 1) == 0 ? t + sizeof(core) - 1 : t;
}

/* Refuses an explicit tag other than the one every such node has anyway
 * (!!str on a scalar, !!seq on a list, !!map on a mapping). */
static int scan_tag(cfg_ctx_t *ctx, scan_t *s, const yaml_event_t *e, const yaml_char_t *tag,
                    const char *plain)
{
    if (tag == NULL || strcmp((const char *)tag, plain) == 0)
        return 0;
    const char *t = tag_text(tag);
    return cfg_error(ctx, &e->start_mark,
                     "%s: YAML tags are not supported (got %s%.60s): kvs reads every value as "
                     "plain text; remove the tag",
                     scan_path(s), t != (const char *)tag ? "!!" : "", t);
}

/* Counts what a value costs the document (`values` nodes, `bytes` of
 * text) against the bounds. */
static int scan_cost(cfg_ctx_t *ctx, scan_t *s, const yaml_event_t *e, uint64_t values,
                     uint64_t bytes)
{
    s->values = values > UINT64_MAX - s->values ? UINT64_MAX : s->values + values;
    s->bytes = bytes > UINT64_MAX - s->bytes ? UINT64_MAX : s->bytes + bytes;
    if (s->values > KVS_CONFIG_MAX_VALUES)
        return cfg_error(ctx, &e->start_mark,
                         "%s: the file holds more than %d values (aliases count as the values "
                         "they repeat); no kvs config needs that many",
                         scan_path(s), KVS_CONFIG_MAX_VALUES);
    if (s->bytes > KVS_CONFIG_MAX_FILE)
        return cfg_error(ctx, &e->start_mark,
                         "%s: the file's values add up to more than %u MiB of text (aliases count "
                         "as the values they repeat); write each value out once",
                         scan_path(s), KVS_CONFIG_MAX_FILE >> 20);
    return 0;
}

/* A node with `anchor` starts: it is remembered, open until its value ends. */
static int scan_anchor(cfg_ctx_t *ctx, scan_t *s, const yaml_event_t *e, const yaml_char_t *anchor)
{
    if (anchor == NULL)
        return 0;
    if (s->n_anchors == KVS_CONFIG_MAX_ANCHORS)
        return cfg_error(ctx, &e->start_mark,
                         "%s: more than %d anchors (&name); no kvs config needs that many",
                         scan_path(s), KVS_CONFIG_MAX_ANCHORS);
    scan_anchor_t *a = &s->anchors[s->n_anchors];
    if ((a->name = strdup((const char *)anchor)) == NULL)
        return cfg_oom(ctx);
    s->n_anchors++;
    a->open = 1;
    a->values = s->values;
    a->bytes = s->bytes;
    return 0;
}

/* Closes the most recent open anchor, if `anchor` named the node that ended:
 * what it repeats is what the document grew by since it opened. */
static void scan_anchor_end(scan_t *s, const yaml_char_t *anchor, uint64_t values, uint64_t bytes)
{
    if (anchor == NULL)
        return;
    for (size_t i = s->n_anchors; i-- > 0;) {
        scan_anchor_t *a = &s->anchors[i];
        if (a->open && strcmp(a->name, (const char *)anchor) == 0) {
            a->open = 0;
            a->values = s->values - values;
            a->bytes = s->bytes - bytes;
            return;
        }
    }
}

static int scan_alias(cfg_ctx_t *ctx, scan_t *s, const yaml_event_t *e)
{
    const char *name = (const char *)e->data.alias.anchor;
    for (size_t i = s->n_anchors; i-- > 0;) {
        const scan_anchor_t *a = &s->anchors[i];
        if (strcmp(a->name, name) != 0)
            continue;
        if (a->open)
            return cfg_error(ctx, &e->start_mark,
                             "%s: the alias *%.60s is inside the value it repeats; write the "
                             "value out",
                             scan_path(s), name);
        return scan_cost(ctx, s, e, a->values, a->bytes);
    }
    return scan_cost(ctx, s, e, 1, 0); /* undefined: the loader says so */
}

/* A value (scalar, alias or whole collection) was read where the top frame
 * expected one: a mapping's key or value, or a list entry. */
static void scan_next(scan_t *s, const yaml_event_t *e)
{
    if (s->depth == 0)
        return;
    scan_frame_t *f = &s->frames[s->depth - 1];
    if (!f->map) {
        f->idx++;
        return;
    }
    if (f->want_key) {
        const char *k =
            e != NULL && e->type == YAML_SCALAR_EVENT ? (const char *)e->data.scalar.value : "?";
        snprintf(f->key, sizeof(f->key), "%.40s%s", k, strlen(k) > 40 ? "..." : "");
    }
    f->want_key = !f->want_key;
}

/* A collection starts (`map`): one level deeper, which must stay within
 * KVS_CONFIG_MAX_DEPTH. */
static int scan_open(cfg_ctx_t *ctx, scan_t *s, const yaml_event_t *e, int map)
{
    const yaml_char_t *anchor = map ? e->data.mapping_start.anchor : e->data.sequence_start.anchor;
    int rc = scan_tag(ctx, s, e, map ? e->data.mapping_start.tag : e->data.sequence_start.tag,
                      map ? YAML_MAP_TAG : YAML_SEQ_TAG);
    if (rc == 0 && s->depth == KVS_CONFIG_MAX_DEPTH)
        rc = cfg_error(ctx, &e->start_mark,
                       "%s: nested more than %d levels deep; a kvs config nests 5 at most "
                       "(look for a stray bracket or indentation)",
                       scan_path(s), KVS_CONFIG_MAX_DEPTH);
    if (rc == 0)
        rc = scan_cost(ctx, s, e, 1, 0);
    if (rc == 0)
        rc = scan_anchor(ctx, s, e, anchor);
    if (rc != 0)
        return rc;
    s->open_values[s->depth] = s->values - 1;
    s->open_bytes[s->depth] = s->bytes;
    scan_frame_t *f = &s->frames[s->depth++];
    memset(f, 0, sizeof(*f));
    f->map = map;
    f->want_key = map;
    return 0;
}

/* One event; `anchors` of collections are kept by the caller until they end. */
static int scan_event(cfg_ctx_t *ctx, scan_t *s, const yaml_event_t *e, const yaml_char_t **open)
{
    int rc = 0;
    switch (e->type) {
    case YAML_SCALAR_EVENT:
        if ((rc = scan_tag(ctx, s, e, e->data.scalar.tag, YAML_STR_TAG)) != 0 ||
            (rc = scan_cost(ctx, s, e, 1, e->data.scalar.length)) != 0)
            return rc;
        if (e->data.scalar.anchor != NULL) {
            if ((rc = scan_anchor(ctx, s, e, e->data.scalar.anchor)) != 0)
                return rc;
            scan_anchor_end(s, e->data.scalar.anchor, s->values - 1,
                            s->bytes - e->data.scalar.length);
        }
        scan_next(s, e);
        return 0;
    case YAML_ALIAS_EVENT:
        if ((rc = scan_alias(ctx, s, e)) != 0)
            return rc;
        scan_next(s, e);
        return 0;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        return scan_open(ctx, s, e, e->type == YAML_MAPPING_START_EVENT);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        assert(s->depth > 0);
        s->depth--;
        scan_anchor_end(s, open[s->depth], s->open_values[s->depth], s->open_bytes[s->depth]);
        scan_next(s, NULL);
        return 0;
    default:
        return 0;
    }
}

/* Reads the events of the text and checks its shape (see above). A text
 * libyaml cannot parse passes: composing it says what is wrong, and where. */
static int prescan(cfg_ctx_t *ctx)
{
    yaml_parser_t parser;
    yaml_event_t e;
    scan_t *s = calloc(1, sizeof(*s));
    yaml_char_t *open[KVS_CONFIG_MAX_DEPTH]; /* anchors of the open collections */
    int rc = 0, done = 0;
    if (s == NULL || !yaml_parser_initialize(&parser)) {
        free(s);
        return cfg_oom(ctx);
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)ctx->text, ctx->len);
    while (rc == 0 && !done && yaml_parser_parse(&parser, &e)) {
        size_t depth = s->depth;
        rc = scan_event(ctx, s, &e, (const yaml_char_t **)open);
        if (rc == 0 && s->depth > depth) { /* keep the anchor's name until its end */
            const yaml_char_t *a = e.type == YAML_MAPPING_START_EVENT
                                       ? e.data.mapping_start.anchor
                                       : e.data.sequence_start.anchor;
            open[depth] = a != NULL ? (yaml_char_t *)strdup((const char *)a) : NULL;
            if (a != NULL && open[depth] == NULL)
                rc = cfg_oom(ctx);
        } else if (s->depth < depth) {
            free(open[s->depth]);
        }
        done = e.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&e);
    }
    /* Out of memory is not a text libyaml cannot parse: passing it on
     * would compose a text whose shape was never checked (an alias bomb,
     * a cycle) once memory is back. */
    if (rc == 0 && !done && parser.error == YAML_MEMORY_ERROR)
        rc = cfg_oom(ctx);
    while (s->depth > 0)
        free(open[--s->depth]);
    for (size_t i = 0; i < s->n_anchors; i++)
        free(s->anchors[i].name);
    free(s);
    yaml_parser_delete(&parser);
    return rc;
}

/* Composes the document and builds the config from it. After the document
 * the stream must end: a second document would be silently ignored. */
/* Keeps where the file set each key (kvs_config_t.key_pos). */
static int keep_positions(cfg_ctx_t *ctx)
{
    struct kvs_config_pos_s *pos = calloc(N_DIRECTIVES, sizeof(*pos));
    if (pos == NULL)
        return cfg_oom(ctx);
    for (size_t i = 0; i < N_DIRECTIVES; i++)
        if (ctx->seen[i]) {
            pos[i].line = (uint32_t)ctx->marks[i].line + 1;
            pos[i].column = (uint32_t)ctx->marks[i].column + 1;
        }
    ctx->cfg->key_pos = pos;
    return 0;
}

static int build(cfg_ctx_t *ctx, yaml_parser_t *parser)
{
    yaml_document_t doc, extra;
    if (!yaml_parser_load(parser, &doc))
        return yaml_error(ctx, parser);
    ctx->doc = &doc;
    int rc = find_dups(ctx);
    if (rc == 0)
        rc = walk_root(ctx);
    if (rc == 0)
        rc = check_partitions(ctx);
    if (rc == 0)
        rc = check_node_ports(ctx);
    if (rc == 0)
        rc = check_remote(ctx);
    if (rc == 0)
        rc = check_nodes(ctx);
    if (rc == 0)
        rc = check_map_ports(ctx);
    if (rc == 0)
        rc = check_listener_ports(ctx);
    if (rc == 0)
        rc = check_paths(ctx);
    if (rc == 0)
        rc = check_limits(ctx);
    if (rc == 0)
        rc = check_tls(ctx);
    if (rc == 0)
        rc = keep_positions(ctx);
    ctx->doc = NULL;
    free(ctx->dups);
    ctx->dups = NULL;
    yaml_document_delete(&doc);
    if (rc != 0)
        return rc;
    if (!yaml_parser_load(parser, &extra))
        return yaml_error(ctx, parser);
    const yaml_node_t *root = yaml_document_get_root_node(&extra);
    if (root != NULL)
        rc = cfg_error(ctx, &root->start_mark, "only one YAML document is allowed");
    yaml_document_delete(&extra);
    return rc;
}

static int parse_as(const char *name, const char *stored_path, const char *text, size_t len,
                    kvs_config_t **out, char *err, size_t errlen)
{
    cfg_ctx_t ctx;
    yaml_parser_t parser;
    memset(&ctx, 0, sizeof(ctx));
    ctx.name = name;
    ctx.text = text ? text : "";
    ctx.len = text ? len : 0;
    ctx.err = err;
    ctx.errlen = errlen;
    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (!yaml_parser_initialize(&parser))
        return cfg_oom(&ctx);
    int rc = -ENOMEM;
    ctx.cfg = calloc(1, sizeof(*ctx.cfg));
    if (ctx.cfg == NULL || (ctx.cfg->path = strdup(stored_path)) == NULL) {
        cfg_oom(&ctx);
        goto done;
    }
    if ((rc = apply_defaults(&ctx)) != 0)
        goto done;
    if ((rc = prescan(&ctx)) != 0)
        goto done;
    yaml_parser_set_input_string(&parser, (const unsigned char *)ctx.text, ctx.len);
    rc = build(&ctx, &parser);
done:
    yaml_parser_delete(&parser);
    free(ctx.node_marks);
    if (rc != 0)
        kvs_config_free(ctx.cfg);
    else
        *out = ctx.cfg;
    return rc;
}

int kvs_config_parse(const char *name, const char *text, size_t len, kvs_config_t **out, char *err,
                     size_t errlen)
{
    return parse_as(name ? name : "<string>", "<string>", text, len, out, err, errlen);
}

/* Reads the whole content of `fd` into a malloc'd buffer: from its
 * offset with read, or, when `from_start`, from offset 0 with pread,
 * leaving its offset alone (it may be shared with other processes).
 * Returns 0 or -errno (-EFBIG past KVS_CONFIG_MAX_FILE). */
static int read_whole(int fd, int from_start, char **text, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (buf == NULL)
        return -ENOMEM;
    for (;;) {
        if (n == cap) {
            char *bigger = cap >= KVS_CONFIG_MAX_FILE ? NULL : realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                return cap >= KVS_CONFIG_MAX_FILE ? -EFBIG : -ENOMEM;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t r = from_start ? pread(fd, buf + n, cap - n, (off_t)n) : read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            return -e;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *text = buf;
    *len = n;
    return 0;
}

static int file_error(const char *path, const char *what, int rc, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: %s: %s", path, what, kvs_strerror(rc));
    return rc;
}

int kvs_config_load_fd(const char *path, int fd, kvs_config_t **out, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = read_whole(fd, 1, &text, &len);
    if (rc != 0)
        return file_error(path, "cannot read", rc, err, errlen);
    rc = parse_as(path, path, text, len, out, err, errlen);
    free(text);
    return rc;
}

static int open_read(const char *path, int flags)
{
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC | flags);
    while (fd < 0 && errno == EINTR);
    return fd;
}

int kvs_config_open(const char *path, int reload, char *err, size_t errlen)
{
    int fd = open_read(path, reload ? O_NONBLOCK : 0);
    if (fd < 0)
        return file_error(path, "cannot open", -errno, err, errlen);
    struct stat st;
    if (reload && fstat(fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
        close(fd);
        if (err != NULL && errlen > 0)
            snprintf(err, errlen,
                     "%s: a pipe, not a file: a reload reads a file and does not wait for a "
                     "writer (put the configuration in a regular file)",
                     path);
        return KVS_ECONFIG;
    }
    return fd;
}

static int load_path(const char *path, int reload, kvs_config_t **out, char *err, size_t errlen);

int kvs_config_load_from(const char *path, const char *from, kvs_config_t **out, char *err,
                         size_t errlen, int *fell_back)
{
    *fell_back = 0;
    if (from != NULL) {
        int fd = open_read(from, 0);
        if (fd >= 0) {
            int rc = kvs_config_load_fd(path, fd, out, err, errlen);
            close(fd);
            return rc;
        }
        *fell_back = errno;
    }
    return load_path(path, 1, out, err, errlen);
}

int kvs_config_load(const char *path, kvs_config_t **out, char *err, size_t errlen)
{
    return load_path(path, 0, out, err, errlen);
}

/* kvs_config_load; `reload`: kvs_config_open's. */
static int load_path(const char *path, int reload, kvs_config_t **out, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int fd = kvs_config_open(path, reload, err, errlen);
    if (fd < 0)
        return fd;
    int rc = read_whole(fd, 0, &text, &len);
    close(fd);
    if (rc != 0)
        return file_error(path, "cannot read", rc, err, errlen);
    rc = parse_as(path, path, text, len, out, err, errlen);
    free(text);
    return rc;
}

const char *kvs_config_kafka_property(const kvs_config_t *cfg, const char *key)
{
    for (size_t i = cfg->n_kafka_properties; i > 0; i--)
        if (strcmp(cfg->kafka_properties[i - 1].key, key) == 0)
            return cfg->kafka_properties[i - 1].value;
    return NULL;
}

int kvs_config_secret_key(const char *key)
{
    size_t n = strlen(key);
    return strncmp(key, "sasl.", 5) == 0 || strncmp(key, "ssl.key.", 8) == 0 ||
           (n >= 9 && strcmp(key + n - 9, ".password") == 0);
}

/* The secrets `cfg` holds, named for a message ("" when none). */
static void secrets_held(const kvs_config_t *cfg, char *out, size_t len)
{
    int tokens = 0;
    const char *prop = NULL;
    for (size_t i = 0; i < cfg->n_users; i++)
        tokens |= cfg->users[i].token != NULL;
    for (size_t i = 0; i < cfg->n_kafka_properties && prop == NULL; i++)
        if (kvs_config_secret_key(cfg->kafka_properties[i].key))
            prop = cfg->kafka_properties[i].key;
    snprintf(out, len, "%s%s%s%.60s", tokens ? "users' token hashes" : "",
             tokens && prop ? ", " : "", prop ? "kafka.properties " : "", prop ? prop : "");
}

int kvs_config_file_warning(const kvs_config_t *cfg, const char *path, char *msg, size_t len)
{
    struct stat st;
    char secrets[160];
    if (len > 0)
        msg[0] = '\0';
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    unsigned mode = (unsigned)st.st_mode & 07777;
    secrets_held(cfg, secrets, sizeof(secrets));
    const char *who = (mode & 022) == 022 ? "its group and others"
                      : (mode & 020)      ? "its group"
                                          : "others";
    if (mode & 022)
        snprintf(msg, len,
                 "%s is writable by %s (mode %04o): whoever may write it decides what this node "
                 "runs (plugins load code, users grant rights); chmod go-w %s",
                 path, who, mode, path);
    else if ((mode & 004) && secrets[0] != '\0')
        snprintf(msg, len,
                 "%s is readable by others (mode %04o) and holds secrets (%s); chmod o-r %s "
                 "(and keep it readable by the node's user only)",
                 path, mode, secrets, path);
    else
        return 0;
    return 1;
}

void kvs_config_free(kvs_config_t *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        const directive_t *d = &directives[i];
        if (d->type == D_STRING || d->type == D_LISTEN ||
            (d->type == D_ENUM && (d->flags & F_TEXT)))
            free(*(char **)((char *)cfg + d->off));
    }
    for (size_t i = 0; i < cfg->n_bindings; i++) {
        free(cfg->bindings[i].topic);
        free(cfg->bindings[i].table);
    }
    free(cfg->bindings);
    for (size_t i = 0; i < cfg->n_remote; i++)
        free(cfg->remote[i].address);
    free(cfg->remote);
    for (size_t i = 0; i < cfg->n_nodes; i++) {
        free(cfg->nodes[i].name);
        free(cfg->nodes[i].address);
        free(cfg->nodes[i].shards);
    }
    free(cfg->nodes);
    for (size_t i = 0; i < cfg->n_kafka_properties; i++) {
        free(cfg->kafka_properties[i].key);
        free(cfg->kafka_properties[i].value);
    }
    free(cfg->kafka_properties);
    for (size_t i = 0; i < cfg->n_users; i++) {
        free(cfg->users[i].name);
        free(cfg->users[i].token);
        for (size_t j = 0; j < cfg->users[i].n_grants; j++)
            free(cfg->users[i].grants[j].pattern);
        free(cfg->users[i].grants);
    }
    free(cfg->users);
    for (size_t i = 0; i < cfg->n_plugins; i++) {
        free(cfg->plugins[i].path);
        free(cfg->plugins[i].arg);
    }
    free(cfg->plugins);
    free(cfg->path);
    free(cfg->key_pos);
    free(cfg);
}

/* ---- live reload ------------------------------------------------------------ */

static int str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static int bindings_eq(const kvs_config_t *a, const kvs_config_t *b)
{
    if (a->n_bindings != b->n_bindings)
        return 0;
    for (size_t i = 0; i < a->n_bindings; i++) {
        const kvs_binding_t *x = &a->bindings[i], *y = &b->bindings[i];
        if (!str_eq(x->topic, y->topic) || !str_eq(x->table, y->table) || x->format != y->format ||
            x->partitions != y->partitions || x->partitioner != y->partitioner)
            return 0;
    }
    return 1;
}

static int properties_eq(const kvs_config_t *a, const kvs_config_t *b)
{
    if (a->n_kafka_properties != b->n_kafka_properties)
        return 0;
    for (size_t i = 0; i < a->n_kafka_properties; i++)
        if (!str_eq(a->kafka_properties[i].key, b->kafka_properties[i].key) ||
            !str_eq(a->kafka_properties[i].value, b->kafka_properties[i].value))
            return 0;
    return 1;
}

static int remote_eq(const kvs_config_t *a, const kvs_config_t *b)
{
    if (a->n_remote != b->n_remote)
        return 0;
    for (size_t i = 0; i < a->n_remote; i++)
        if (a->remote[i].shard != b->remote[i].shard ||
            !str_eq(a->remote[i].address, b->remote[i].address))
            return 0;
    return 1;
}

static int nodes_eq(const kvs_config_t *a, const kvs_config_t *b)
{
    if (a->n_nodes != b->n_nodes)
        return 0;
    for (size_t i = 0; i < a->n_nodes; i++) {
        const kvs_node_t *x = &a->nodes[i], *y = &b->nodes[i];
        if (!str_eq(x->name, y->name) || !str_eq(x->address, y->address) ||
            x->n_shards != y->n_shards ||
            (x->n_shards > 0 && memcmp(x->shards, y->shards, x->n_shards * sizeof(*x->shards))))
            return 0;
    }
    return 1;
}

static int grants_eq(const kvs_user_t *x, const kvs_user_t *y)
{
    if (x->n_grants != y->n_grants)
        return 0;
    for (size_t g = 0; g < x->n_grants; g++)
        if (!str_eq(x->grants[g].pattern, y->grants[g].pattern) ||
            x->grants[g].rights != y->grants[g].rights)
            return 0;
    return 1;
}

static int users_eq(const kvs_config_t *a, const kvs_config_t *b)
{
    if (a->n_users != b->n_users)
        return 0;
    for (size_t i = 0; i < a->n_users; i++) {
        const kvs_user_t *x = &a->users[i], *y = &b->users[i];
        if (!str_eq(x->name, y->name) || (x->token == NULL) != (y->token == NULL) ||
            !str_eq(x->token, y->token) || !grants_eq(x, y))
            return 0;
    }
    return 1;
}

static int plugins_eq(const kvs_config_t *a, const kvs_config_t *b)
{
    if (a->n_plugins != b->n_plugins)
        return 0;
    for (size_t i = 0; i < a->n_plugins; i++)
        if (!str_eq(a->plugins[i].path, b->plugins[i].path) ||
            !str_eq(a->plugins[i].arg, b->plugins[i].arg))
            return 0;
    return 1;
}

/* Whether directive `d` has the same value in both configs. */
static int directive_eq(const directive_t *d, const kvs_config_t *a, const kvs_config_t *b)
{
    const char *pa = (const char *)a + d->off, *pb = (const char *)b + d->off;
    switch (d->type) {
    case D_STRING:
    case D_LISTEN:
        return str_eq(*(char *const *)(const void *)pa, *(char *const *)(const void *)pb);
    case D_ENUM:
        if (d->flags & F_TEXT)
            return str_eq(*(char *const *)(const void *)pa, *(char *const *)(const void *)pb);
        return memcmp(pa, pb, sizeof(int)) == 0;
    case D_BOOL:
        return memcmp(pa, pb, sizeof(int)) == 0;
    case D_UINT32:
        return memcmp(pa, pb, sizeof(uint32_t)) == 0;
    case D_SIZE:
    case D_DURATION:
        return memcmp(pa, pb, sizeof(uint64_t)) == 0;
    case D_BINDINGS:
        return bindings_eq(a, b);
    case D_PROPERTIES:
        return properties_eq(a, b);
    case D_REMOTE:
        return remote_eq(a, b);
    case D_NODES:
        return nodes_eq(a, b);
    case D_USERS:
        return users_eq(a, b);
    case D_PLUGINS:
        return plugins_eq(a, b);
    }
    return 0;
}

/* The size of a live directive's value (live keys are scalars, or a
 * string: log.level). */
static size_t live_size(const directive_t *d)
{
    switch (d->type) {
    case D_ENUM:
        return (d->flags & F_TEXT) ? sizeof(char *) : sizeof(int);
    case D_BOOL:
        return sizeof(int);
    case D_UINT32:
        return sizeof(uint32_t);
    case D_SIZE:
    case D_DURATION:
        return sizeof(uint64_t);
    case D_STRING:
    case D_LISTEN:
        return sizeof(char *);
    default:
        return 0; /* lists are never live */
    }
}

void kvs_config_apply_live(kvs_config_t *cur, kvs_config_t *next)
{
    unsigned char tmp[sizeof(uint64_t) > sizeof(char *) ? sizeof(uint64_t) : sizeof(char *)];
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        const directive_t *d = &directives[i];
        size_t n = live_size(d);
        if (!(d->flags & F_LIVE) || n == 0)
            continue;
        char *pa = (char *)cur + d->off, *pb = (char *)next + d->off;
        memcpy(tmp, pa, n);
        memcpy(pa, pb, n);
        memcpy(pb, tmp, n);
    }
}

/* Appends ", name" (or "name" first) to list[0..len). */
static void list_add(char *list, size_t len, const char *name)
{
    size_t at = strlen(list);
    if (at + 1 < len)
        snprintf(list + at, len - at, "%s%s", at > 0 ? ", " : "", name);
}

/* A changed cluster.nodes is live when both configs have a map and this
 * node's own address in it stays (its workers listen there; node.name,
 * cluster.shards and cluster.partitions are keys of their own, not live).
 * Going from cluster.remote or a single node to a map, or back, is not. */
static int map_live(const kvs_config_t *cur, const kvs_config_t *next)
{
    return cur->self != NULL && next->self != NULL &&
           str_eq(cur->self->address, next->self->address);
}

int kvs_config_map_eq(const kvs_config_t *a, const kvs_config_t *b)
{
    return nodes_eq(a, b);
}

void kvs_config_apply_map(kvs_config_t *cur, kvs_config_t *next)
{
    kvs_node_t *nodes = cur->nodes;
    size_t n = cur->n_nodes;
    const kvs_node_t *self = cur->self; /* points into its own array, which moves with it */
    cur->nodes = next->nodes;
    cur->n_nodes = next->n_nodes;
    cur->self = next->self;
    next->nodes = nodes;
    next->n_nodes = n;
    next->self = self;
    uint8_t digest[sizeof(cur->map_digest)];
    int has = cur->has_map_digest;
    memcpy(digest, cur->map_digest, sizeof(digest));
    memcpy(cur->map_digest, next->map_digest, sizeof(digest));
    cur->has_map_digest = next->has_map_digest;
    memcpy(next->map_digest, digest, sizeof(digest));
    next->has_map_digest = has;
}

/* How directive `d` differs between `cur` and `next`: 0 not at all, 1
 * live, 2 not live (a reload is refused for it; *name says it then). */
static int key_change(const directive_t *d, const kvs_config_t *cur, const kvs_config_t *next,
                      const char **name)
{
    *name = d->path;
    if (directive_eq(d, cur, next))
        return 0;
    if (d->type == D_NODES && !map_live(cur, next)) {
        if (cur->self != NULL && next->self != NULL)
            *name = "cluster.nodes (this node's own address)";
        return 2;
    }
    return d->flags & F_LIVE ? 1 : 2;
}

int kvs_config_reload_check(const kvs_config_t *cur, const kvs_config_t *next, char *changed,
                            size_t clen, char *fixed, size_t flen)
{
    if (clen > 0)
        changed[0] = '\0';
    if (flen > 0)
        fixed[0] = '\0';
    int refused = 0;
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        const char *name;
        int how = key_change(&directives[i], cur, next, &name);
        if (how == 1)
            list_add(changed, clen, name);
        else if (how == 2) {
            list_add(fixed, flen, name);
            refused = 1;
        }
    }
    return refused ? KVS_ECONFIG : 0;
}

/* Where `next` sets directive i (NULL when it does not: its default). */
static const struct kvs_config_pos_s *key_pos(const kvs_config_t *next, size_t i)
{
    return next->key_pos != NULL && next->key_pos[i].line != 0 ? &next->key_pos[i] : NULL;
}

/* The position of the directive named text[0..n), if the file set it. */
static const struct kvs_config_pos_s *pos_named(const kvs_config_t *cfg, const char *text, size_t n)
{
    for (size_t i = 0; i < N_DIRECTIVES; i++)
        if (strlen(directives[i].path) == n && strncmp(directives[i].path, text, n) == 0)
            return key_pos(cfg, i);
    return NULL;
}

int kvs_config_where(const kvs_config_t *cfg, const char *text, char *out, size_t cap)
{
    size_t n = strcspn(text, " :");
    const struct kvs_config_pos_s *p = pos_named(cfg, text, n);
    const char *last = memrchr(text, '.', n);
    char inherited[64];
    /* tls.router.cert and its kind take tls.cert's value when not set */
    if (p == NULL && strncmp(text, "tls.", 4) == 0 && last != NULL && last > text + 4 &&
        (size_t)snprintf(inherited, sizeof(inherited), "tls%.*s", (int)(text + n - last), last) <
            sizeof(inherited))
        p = pos_named(cfg, inherited, strlen(inherited));
    if (p == NULL)
        return 0;
    snprintf(out, cap, "%s:%" PRIu32 ":%" PRIu32, cfg->path != NULL ? cfg->path : "", p->line,
             p->column);
    return 1;
}

void kvs_config_reload_refusal(const kvs_config_t *cur, const kvs_config_t *next, const char *file,
                               char *msg, size_t len)
{
    char keys[512] = "", where[64] = "";
    const char *name;
    size_t lead = N_DIRECTIVES; /* the first key the file sets: its place leads the message */
    for (size_t i = 0; i < N_DIRECTIVES && lead == N_DIRECTIVES; i++)
        if (key_change(&directives[i], cur, next, &name) == 2 && key_pos(next, i) != NULL)
            lead = i;
    if (lead < N_DIRECTIVES) {
        const struct kvs_config_pos_s *p = key_pos(next, lead);
        snprintf(where, sizeof(where), ":%" PRIu32 ":%" PRIu32, p->line, p->column);
        key_change(&directives[lead], cur, next, &name);
        list_add(keys, sizeof(keys), name);
    }
    /* Keys set in neither file changed with a key whose value they take
     * (tls.router.cert follows tls.cert): named only when no other is. */
    char inherited[512] = "";
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        if (i == lead || key_change(&directives[i], cur, next, &name) != 2)
            continue;
        const struct kvs_config_pos_s *p = key_pos(next, i);
        int was_set = key_pos(cur, i) != NULL; /* the running file sets it */
        char item[160];
        if (p != NULL)
            snprintf(item, sizeof(item), "%s (line %" PRIu32 ")", name, p->line);
        else if (was_set) /* back to its default */
            snprintf(item, sizeof(item), "%s (no longer set)", name);
        else
            snprintf(item, sizeof(item), "%s (not set: its default follows another key)", name);
        list_add(p != NULL || was_set ? keys : inherited, sizeof(keys), item);
    }
    snprintf(msg, len,
             "%s%s: %s changed, which cannot change while the node runs (restart it for that)",
             file, where, keys[0] != '\0' ? keys : inherited);
}
