/*
 * cli_ask: one request, one answer (see cli_ask.h), through cli_net.
 */
#include "cli_ask.h"
#include "kvs_err.h"
#include "kvs_frame.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ANSWER_STEP (1u << 20) /* an answer's buffer starts at this and doubles */

/* Reads one answer frame before `deadline`. Its buffer grows with the bytes
 * that came, so a header announcing a large answer costs nothing until
 * the answer does. */
static int read_answer(cli_net_t *net, double deadline, kvs_arena_t *arena,
                       Kvs__CommandResponse **out, char *why, size_t len)
{
    uint8_t h[KVS_FRAME_HEADER];
    int compressed, rc = cli_net_recv(net, h, sizeof(h), deadline);
    if (rc != 0)
        return rc;
    uint32_t n = kvs_frame_get_header(h, &compressed);
    if (compressed) {
        snprintf(why, len, "reply frame has the compressed bit set (unsupported)");
        return KVS_EPROTO;
    }
    if (n > CLI_ASK_MAX_ANSWER) {
        snprintf(why, len,
                 "reply frame announces %" PRIu32 " bytes (the limit is 1 GiB, the largest "
                 "limits.max_frame)",
                 n);
        return KVS_EPROTO;
    }
    size_t cap = n < ANSWER_STEP ? n : ANSWER_STEP, got = 0;
    uint8_t *payload = malloc(cap ? cap : 1);
    if (payload == NULL)
        return -ENOMEM;
    while (rc == 0 && got < n) {
        if (got == cap) {
            size_t more = cap * 2 < n ? cap * 2 : n;
            uint8_t *p = realloc(payload, more);
            if (p == NULL) {
                free(payload);
                return -ENOMEM;
            }
            payload = p;
            cap = more;
        }
        rc = cli_net_recv(net, payload + got, cap - got, deadline);
        if (rc == 0)
            got = cap;
    }
    uint32_t status = 0;
    if (rc == 0) /* unpacking copies what it keeps */
        *out = kvs_msg_decode_response(arena, payload, n, &status);
    free(payload);
    if (rc == 0 && *out == NULL && status == KVS_STATUS_INTERNAL)
        return -ENOMEM;
    if (rc == 0 && *out == NULL) {
        if (status == KVS_STATUS_TOO_LARGE)
            snprintf(why, len,
                     "reply (%" PRIu32 " bytes) would take more than %zu bytes decoded, more "
                     "than any kvs answer of its size",
                     n, kvs_msg_decode_budget(n));
        else
            snprintf(why, len, "reply (%" PRIu32 " bytes) is not a kvs.CommandResponse", n);
        return KVS_EPROTO;
    }
    return rc;
}

int cli_ask_unsolicited(cli_net_t *net, char *why, size_t len)
{
    size_t waiting = cli_net_unsolicited(net);
    if (waiting == 0)
        return 0;
    snprintf(why, len,
             "the server sent %zu%s bytes nobody asked for: its answers no longer match the "
             "requests",
             waiting, waiting >= 4096 ? " or more" : "");
    return KVS_EPROTO;
}

int cli_ask_on(cli_net_t *net, const Kvs__CommandRequest *q, double timeout, kvs_arena_t *arena,
               Kvs__CommandResponse **out, char *why, size_t len)
{
    int unsolicited = cli_ask_unsolicited(net, why, len);
    if (unsolicited != 0)
        return unsolicited;
    size_t n = kvs__command_request__get_packed_size(q);
    if (n > KVS_FRAME_LEN_MASK) {
        snprintf(why, len, "request of %zu bytes cannot be framed (limit 2 GiB)", n);
        return KVS_EPROTO;
    }
    uint8_t *buf = malloc(KVS_FRAME_HEADER + n);
    if (buf == NULL)
        return -ENOMEM;
    kvs_frame_put_header(buf, (uint32_t)n);
    kvs__command_request__pack(q, buf + KVS_FRAME_HEADER);
    double deadline = cli_net_deadline(timeout);
    int rc = cli_net_send(net, buf, KVS_FRAME_HEADER + n, deadline);
    free(buf);
    if (rc == 0)
        return read_answer(net, deadline, arena, out, why, len);
    if (rc != -EPIPE && rc != -ECONNRESET)
        return rc;
    return read_answer(net, deadline, arena, out, why, len) == 0 ? 0 : rc;
}

Kvs__CommandResponse *cli_ask(const kvs_addr_t *a, kvs_tls_ctx_t *tls, const Kvs__CommandRequest *q,
                              double timeout, char *why, size_t len)
{
    cli_net_t net = {.fd = -1, .tls_ctx = a->is_unix ? NULL : tls};
    Kvs__CommandResponse *r = NULL;
    char port[8], err[400] = "";
    snprintf(port, sizeof(port), "%u", a->port);
    if (cli_net_open(&net, a->is_unix ? a->path : NULL, a->host, port, timeout, err, sizeof(err)) !=
        0) {
        if (a->is_unix)
            snprintf(why, len, "cannot connect to unix:%s: %s%s", a->path, err,
                     a->path[0] != '/' ? " (data_dir is relative: to the node's working "
                                         "directory, and kvs-cli was run elsewhere)"
                                       : "");
        else
            snprintf(why, len, "cannot connect to %s:%u: %s", a->host, a->port, err);
        return NULL;
    }
    int rc = cli_ask_on(&net, q, timeout, NULL, &r, err, sizeof(err));
    if (rc == -ETIMEDOUT)
        snprintf(why, len, "no answer within %g s (--timeout): the worker hangs or is overloaded",
                 timeout);
    else if (rc != 0)
        snprintf(why, len, "no answer: %s",
                 rc == KVS_EPROTO    ? err
                 : rc == KVS_ETLS    ? cli_net_tls_error(&net)
                 : rc == KVS_ECLOSED ? "the connection closed"
                                     : strerror(-rc));
    cli_net_close(&net);
    return rc == 0 ? r : NULL;
}

/* ---- walks ------------------------------------------------------------------- */

/* The name a replica is known by in a walk: for a question left
 * unanswered (`hung`), its node's (its name in the map, or its host; a
 * local worker's unix socket without a node name: its path), as a node
 * that hangs hangs for all its shards; for connections that fail, a local
 * worker's socket path, as each is one process (one that crash-loops says
 * nothing of the others). */
static const char *walk_key(const kvs_replica_t *rep, int hung)
{
    if (rep->addr.is_unix && (!hung || rep->node[0] == '\0'))
        return rep->addr.path;
    return rep->node[0] != '\0' ? rep->node : rep->addr.host;
}

/* The walk's entry for `key`; a new one when `add` (NULL when out of
 * memory: that node is not remembered). */
static cli_walk_node_t *walk_node(cli_walk_t *w, const char *key, int add)
{
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->nodes[i].key, key) == 0)
            return &w->nodes[i];
    if (!add || strlen(key) >= sizeof(w->nodes[0].key))
        return NULL;
    if (w->n == w->cap) {
        int cap = w->cap > 0 ? 2 * w->cap : 16;
        cli_walk_node_t *more = realloc(w->nodes, (size_t)cap * sizeof(*more));
        if (more == NULL)
            return NULL;
        w->nodes = more;
        w->cap = cap;
    }
    cli_walk_node_t *n = &w->nodes[w->n++];
    memset(n, 0, sizeof(*n));
    snprintf(n->key, sizeof(n->key), "%s", key);
    return n;
}

void cli_walk_free(cli_walk_t *w)
{
    free(w->nodes);
    memset(w, 0, sizeof(*w));
}

Kvs__CommandResponse *cli_walk_ask(cli_walk_t *w, const kvs_replica_t *rep, kvs_tls_ctx_t *tls,
                                   const Kvs__CommandRequest *q, double timeout, double limit,
                                   char *why, size_t len, int *skipped)
{
    double wait = limit > 0 && (timeout <= 0 || limit < timeout) ? limit : timeout;
    double down_s = timeout > 0 && timeout < CLI_WALK_DOWN_S ? timeout : CLI_WALK_DOWN_S;
    const char *hung_key = walk_key(rep, 1), *down_key = walk_key(rep, 0);
    cli_walk_node_t *hung = walk_node(w, hung_key, 0), *down = walk_node(w, down_key, 0);
    if (skipped != NULL)
        *skipped = 0;
    if ((hung != NULL && hung->silent == 1) || (down != NULL && down->silent == 2)) {
        if (hung != NULL && hung->silent == 1)
            snprintf(why, len,
                     "not asked: node %s left a question unanswered for the whole timeout earlier "
                     "in this command",
                     hung_key);
        else
            snprintf(why, len, "not asked: %s %s gave no answer for %g s earlier in this command",
                     rep->addr.is_unix ? "the worker at" : "node", down_key, down_s);
        if (skipped != NULL)
            *skipped = 1;
        return NULL;
    }
    double start = cli_net_now();
    Kvs__CommandResponse *r = cli_ask(&rep->addr, tls, q, wait, why, len);
    double now = cli_net_now();
    /* A wait the caller cut short that ran out tells nothing of the node:
     * neither mark (a slow node must not be taken for a down one). */
    if (r == NULL && wait < timeout && now - start >= wait * 0.9)
        return r;
    /* An answer, even an error, shows a node serving. A connection made
     * and then closed, or garbage, shows none: a peer that accepts and
     * closes at once would otherwise be asked again and again. */
    if (r != NULL) {
        if (down != NULL)
            down->unreachable_since = 0;
    } else if (down != NULL || (down = walk_node(w, down_key, 1)) != NULL) {
        if (down->unreachable_since == 0)
            down->unreachable_since = start;
        if (now - down->unreachable_since >= down_s)
            down->silent = 2;
    }
    /* Only a failure that took the whole timeout: an error answer costs
     * nothing to meet again. */
    if (r == NULL && timeout > 0 && wait >= timeout && now - start >= timeout * 0.9 &&
        (hung != NULL || (hung = walk_node(w, hung_key, 1)) != NULL))
        hung->silent = 1;
    return r;
}

void cli_replicas_reach(const kvs_config_t *cfg, uint32_t shard, kvs_replica_t *reps, int n)
{
    struct stat st;
    for (int i = 0; i < n; i++) {
        kvs_replica_t *r = &reps[i];
        kvs_addr_t tcp;
        if (r->local && r->addr.is_unix && stat(r->addr.path, &st) != 0 && cfg->self != NULL &&
            kvs_cluster_node_addr(cfg->self, shard, &tcp) == 0)
            r->addr = tcp;
    }
}
