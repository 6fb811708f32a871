/*
 * kvs_log: levelled logging to stderr, one line per event, as text
 *
 *   2026-11-22T02:43:41.123Z node[2] INFO  opened shard-2 (3 tables)
 *
 * or (log.format: json) as one JSON object per line, for log shippers:
 *
 *   {"time":"2026-11-22T02:43:41.123Z","level":"info","role":"node","shard":2,
 *    "message":"opened shard-2 (3 tables)"}
 *
 * (on one line). "shard" is present only when the process has one; a
 * router process of a node running several (router.processes) has its
 * index instead, as "router[1]" in text and "router":1 in JSON. Every
 * string is valid JSON text whatever the message holds: quotes, backslashes
 * and control characters are escaped, and bytes that are not UTF-8 become
 * U+FFFD, one per maximal invalid sequence (Unicode's recommended practice).
 * A line is at most 4 KiB (PIPE_BUF, so it reaches a pipe whole); a longer
 * message is cut at a character boundary and the line still closes.
 *
 * The role ("node", "router", "cli", ...) and shard id (-1 = none) are set
 * once at start by kvs_log_init, the format by kvs_log_set_format once the
 * config is loaded (lines before that, such as a config error, are text).
 * Logging is process-global by nature; it is the only process-wide state in
 * common/, written only at start, so kvs_log may be called from any thread
 * (librdkafka's log callback runs on its own threads).
 */
#ifndef KVS_LOG_H
#define KVS_LOG_H

#include <stdint.h>

typedef enum {
    KVS_LOG_DEBUG = 0,
    KVS_LOG_INFO = 1,
    KVS_LOG_WARN = 2,
    KVS_LOG_ERROR = 3,
} kvs_log_level_t;

typedef enum {
    KVS_LOG_TEXT = 0, /* the human-readable line above */
    KVS_LOG_JSON = 1, /* one JSON object per line */
} kvs_log_format_t;

/* Sets the role name (copied, truncated to 15 bytes), the shard id shown in
 * brackets (negative: none) and the minimum level that is printed. */
void kvs_log_init(const char *role, int shard, kvs_log_level_t level);

/* Sets the index shown in brackets after the role (negative: none) and
 * the JSON field that holds it (`key`, copied, at most 15 bytes, plain
 * letters: it is written unescaped): kvs_log_set_index("router", 1) gives
 * "router[1]" and "router":1. kvs_log_init resets the key to "shard". */
void kvs_log_set_index(const char *key, int index);

/* Changes the minimum level. */
void kvs_log_set_level(kvs_log_level_t level);

/* Sets the line format (kvs_log_init does not change it; the default is
 * KVS_LOG_TEXT). */
void kvs_log_set_format(kvs_log_format_t format);

/* Parses "debug", "info", "warn"/"warning", "error". Returns 0 and sets *out,
 * or KVS_EINVAL for any other string. */
int kvs_log_level_parse(const char *s, kvs_log_level_t *out);

/* True when a message at `level` would be printed. */
int kvs_log_enabled(kvs_log_level_t level);

/* Prints one line (a trailing newline is added). */
void kvs_log(kvs_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A budget for lines a remote peer can cause at will (one per connection
 * it opens, one per failed Auth): at most `max_lines` of them per
 * `window_ms` (whole seconds).
 * The lines past it are counted, not printed, and one line says how many
 * were left out once the window is over (at the next take, or at
 * kvs_log_budget_flush, which an owner calls from a timer). Not locked: a
 * budget belongs to one event loop. */
typedef struct {
    const char *what;   /* what is counted, plural: "lines about clients" */
    uint32_t max_lines; /* per window */
    uint32_t window_ms;
    uint64_t start_ms; /* when the current window started */
    uint32_t lines;    /* printed in it */
    uint64_t dropped;  /* left out in it */
} kvs_log_budget_t;

/* The budget of the lines a connection's peer causes: 20 per 10 s. */
#define KVS_LOG_PEER_LINES 20
#define KVS_LOG_PEER_WINDOW_MS 10000

/* Sets up an empty budget; `what` must outlive it. */
void kvs_log_budget_init(kvs_log_budget_t *b, const char *what, uint32_t max_lines,
                         uint32_t window_ms);
/* 1 when one more line may be printed at `now_ms` (a loop's clock, in ms;
 * the line is counted), 0 when it must be left out (and it is counted as
 * such). */
int kvs_log_budget_take(kvs_log_budget_t *b, uint64_t now_ms);
/* Prints the summary of a window that is over, if lines were left out. */
void kvs_log_budget_flush(kvs_log_budget_t *b, uint64_t now_ms);
/* Ends the window now, over or not (what caused the lines is over: a
 * link came up): its summary, if lines were left out, and a new window. */
void kvs_log_budget_end(kvs_log_budget_t *b, uint64_t now_ms);

#define kvs_debug(...) kvs_log(KVS_LOG_DEBUG, __VA_ARGS__)
#define kvs_info(...) kvs_log(KVS_LOG_INFO, __VA_ARGS__)
#define kvs_warn(...) kvs_log(KVS_LOG_WARN, __VA_ARGS__)
#define kvs_error(...) kvs_log(KVS_LOG_ERROR, __VA_ARGS__)

#endif
