/*
 * node_server: the worker's listeners, clients and per-turn group commit.
 * See node_server.c for the acknowledgement rule.
 */
#ifndef NODE_SERVER_H
#define NODE_SERVER_H

#include "kvs_addr.h"
#include "kvs_auth.h"
#include "kvs_conn.h"
#include "kvs_plugins.h"
#include "node_digest.h"
#include "node_handoff.h"
#include "node_ingest.h"
#include "node_reads.h"
#include "node_snapshot.h"
#include "node_store.h"
#include "node_writes.h"

#include <uv.h>

typedef struct node_server_s node_server_t;

typedef void (*node_server_stopped_cb)(void *arg);

typedef struct node_server_opts_s {
    uv_loop_t *loop;
    node_store_t *store; /* opened with fail_cb = node_server_fail_cb; see below */
    uint32_t max_frame;
    uint32_t max_tables;
    const kvs_config_t *limits; /* the config: limits.* for clients, the bindings */
    const kvs_addr_t *addrs;    /* 1 or 2 addresses to listen on */
    size_t n_addrs;
    kvs_tls_ctx_t *tls; /* TLS for the TCP listener (tls.node), or NULL; outlives the server */
    kvs_auth_t *auth;   /* users, or NULL when none are configured; outlives the server */
    uint64_t sync_interval_ms; /* > 0: node_store_sync on this period */
    uint32_t shard;
    const kvs_plugins_t *plugins; /* their hooks join the chain (may be NULL) */
} node_server_opts_t;

/* Runs after every turn's commit attempt with its result (Kafka ingestion
 * learns here whether its records are stored). */
typedef void (*node_server_turn_cb)(void *arg, int rc);

/* Sets the turn hook, and the ingest shown by Info (either may be NULL). */
void node_server_set_ingest(node_server_t *srv, node_ingest_t *ingest, node_server_turn_cb cb,
                            void *arg);

/* Sets the freshness rules for reads of bound tables (NULL: none). */
void node_server_set_reads(node_server_t *srv, node_reads_t *reads);

/* Sets the log-first writes of bound tables (NULL: Kafka off). */
void node_server_set_writes(node_server_t *srv, node_writes_t *writes);

/* Sets the Digest command's state (NULL: not available). */
void node_server_set_digest(node_server_t *srv, node_digest_t *digest);

/* Sets the Snapshot command's sender (NULL: not available) and the fence
 * a snapshot raises (node_handoff; NULL: none), which every reload then
 * updates. */
void node_server_set_snapshot(node_server_t *srv, node_snapshot_t *sn, node_handoff_t *handoff);

/* Executes a request now, without freshness checks (node_reads_exec_cb,
 * with the server as `arg`). */
int node_server_execute(void *arg, const uint8_t *payload, size_t len, kvs_buf_t *out);

/* Starts listening. Returns 0 and *out, or a uv error (logged). */
int node_server_start(const node_server_opts_t *o, node_server_t **out);

/* The store's fail_cb. The store is opened before the server exists, so
 * node_main passes a trampoline whose argument it fills in after start. */
void node_server_fail_cb(void *arg, uint64_t gen, int err);

/* Graceful stop: close the listeners, answer what was received, flush and
 * close every client, commit; then `cb` runs (once all handles are closed). */
void node_server_stop(node_server_t *srv, node_server_stopped_cb cb, void *arg);

/* Closes every client at once (drain took too long). */
void node_server_abort_clients(node_server_t *srv);

/* As node_store_flush_logs, for the lines about failed write batches. */
void node_server_flush_logs(node_server_t *srv);

/* Frees the server after it stopped. */
void node_server_free(node_server_t *srv);

size_t node_server_clients(const node_server_t *srv);

/* Applies a reloaded config's live keys (limits.* for the clients, new and
 * connected; log.slow_*; storage.sync_interval). `cfg` is only read during
 * the call. Returns 0 or -ENOMEM (then nothing changed). */
int node_server_reload(node_server_t *srv, const kvs_config_t *cfg);

/* Counts a reload attempt for kvs_config_reloads_total: result "ok",
 * "error" (the file did not load) or "refused" (a key that cannot change
 * live changed). */
void node_server_count_reload(node_server_t *srv, const char *result);

#endif
