/*
 * cli_ask: one request, one answer, every wait bounded: the framed exchange
 * every kvs-cli command makes, on kvs-cli's own connection (cli_ask_on) or
 * on a new one to a server named by an address (cli_ask: a worker's unix
 * socket, or host:port over TCP with TLS when a context is given), which is
 * how kvs-cli talks to each replica of a shard (digest, rebuild) when it
 * walks the cluster map.
 */
#ifndef CLI_ASK_H
#define CLI_ASK_H

#include "cli_net.h"
#include "kvs.pb-c.h"
#include "kvs_addr.h"
#include "kvs_cluster.h"
#include "kvs_msg.h"
#include "kvs_tls.h"

#include <stddef.h>

/* The largest answer accepted: the largest limits.max_frame a server may
 * be configured with (1 GiB), so every answer a server sends is read. */
#define CLI_ASK_MAX_ANSWER (1u << 30)

/* Whether bytes wait on `net` before a request is sent (cli_net_unsolicited:
 * an answer nobody asked for, after which answers no longer match
 * requests): KVS_EPROTO with why[0..len) saying so, else 0. */
int cli_ask_unsolicited(cli_net_t *net, char *why, size_t len);

/* Sends `q` on the open connection `net` and reads one answer frame, the
 * whole exchange within `timeout` seconds (0: none). A server that refuses
 * a request (too large, say) answers and closes, possibly before it read
 * all of it, so a failed send still looks for that answer. Returns 0 with *out unpacked
 * in `arena` (NULL: malloc; then free it with
 * kvs__command_response__free_unpacked), within kvs_msg_decode_budget of
 * its size (a server's answer cannot make kvs-cli spend 45 times what it
 * sent), -ENOMEM, an error of cli_net_send or
 * cli_net_recv, or KVS_EPROTO with why[0..len) saying what is wrong with
 * the answer. */
int cli_ask_on(cli_net_t *net, const Kvs__CommandRequest *q, double timeout, kvs_arena_t *arena,
               Kvs__CommandResponse **out, char *why, size_t len);

/* Connects to `a` (over TLS with `tls` when `a` is TCP and `tls` is set),
 * asks `q` (cli_ask_on) and closes. Returns the answer (free it with
 * kvs__command_response__free_unpacked(r, NULL)), or NULL with why[0..len)
 * saying what went wrong. */
Kvs__CommandResponse *cli_ask(const kvs_addr_t *a, kvs_tls_ctx_t *tls, const Kvs__CommandRequest *q,
                              double timeout, char *why, size_t len);

/* A walk over the cluster map (digest, rebuild): a node that let a question
 * use up the whole timeout without an answer (connect, TLS handshake or
 * the answer itself) is asked nothing more in that walk, so one hung node
 * serving many shards costs one timeout, not one per shard. Nor is one
 * that gave no answer at all (refused, no socket, a failed handshake, a
 * connection closed or garbage instead of an answer) again and again for
 * CLI_WALK_DOWN_S, or the whole timeout when that is shorter: a
 * restarting worker is back well within it, a node that is down is not,
 * and a digest that asks again until replicas agree would otherwise spend
 * its whole timeout on every shard of a node that is down. A node is
 * known by its name in the map, or by its host (cluster.remote), a local
 * worker by its unix socket (one process per shard). Every node that
 * failed once is remembered, however many (memory allowing). */
#define CLI_WALK_DOWN_S 1.0

typedef struct cli_walk_node_s {
    char key[256];
    double
        unreachable_since; /* its first failure without an answer since its last answer; 0: none */
    int silent;            /* asked nothing more: 1 hung, 2 down */
} cli_walk_node_t;

typedef struct cli_walk_s {
    cli_walk_node_t *nodes; /* those that failed once */
    int n, cap;
} cli_walk_t;

/* This node's replicas of `shard` among reps[0..n) are its workers' unix
 * sockets, under data_dir; one that is not there from where kvs-cli runs
 * (a relative data_dir is the node's working directory's: a systemd unit's
 * /var/lib/kvs) is asked at the node's address in the map instead, where
 * the worker listens for other nodes. */
void cli_replicas_reach(const kvs_config_t *cfg, uint32_t shard, kvs_replica_t *reps, int n);

/* Frees what the walk remembers; it may be used again after. */
void cli_walk_free(cli_walk_t *w);

/* cli_ask to one replica, unless its node is known silent in this walk:
 * then NULL at once, why saying so, and *skipped set (may be NULL). The
 * question waits `limit` seconds when that is less than `timeout` (the
 * caller's own deadline is nearer; 0: timeout); only a wait of the whole
 * timeout left unanswered marks the node silent. */
Kvs__CommandResponse *cli_walk_ask(cli_walk_t *w, const kvs_replica_t *rep, kvs_tls_ctx_t *tls,
                                   const Kvs__CommandRequest *q, double timeout, double limit,
                                   char *why, size_t len, int *skipped);

#endif
