/*
 * router_ops: the router's request hooks, metrics and slow log.
 *
 * The chain (kvs_hook) is, in order: the metrics hook (AFTER_SEND: one
 * counter and one histogram observation per answer, end to end, from the
 * moment the request was received to the moment its answer is queued for
 * the client), the slow log (AFTER_SEND, while log.slow_threshold is not
 * off), then every plugin's hooks. RECEIVED runs here, called by
 * router_route once a request is understood and allowed (access control,
 * kvs_auth, decides first: a request it refuses never reaches RECEIVED,
 * and hooks see its 401 or 403 at EXECUTED); EXECUTED runs in
 * router_route as answers complete, the send events in router_client as
 * answers go out. Both front doors go through here: a RESP command is a
 * kvs request by then.
 *
 * Metrics: router_ops_metrics builds this router process's own families at
 * scrape time from the counters the hot path keeps (requests, connections,
 * bytes, links, replica retries), every sample labelled router="I";
 * workers' come from their Metrics answers (router_route's merge_metrics),
 * and r->add_metrics adds what router_main knows (reloads, the process).
 * The node's whole picture is the master's (router_scrape.c).
 *
 * Threads: the loop thread only.
 */
#include "kvs_err.h"
#include "kvs_log.h"
#include "router.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* The built-in metrics hook. */
static uint32_t metrics_hook(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req,
                             char *msg, size_t msglen)
{
    router_t *r = state;
    (void)ev;
    (void)msg;
    (void)msglen;
    kvs_req_metrics_count(&r->reqm, req->command, req->status, req->now_ns - req->received_ns);
    return 0;
}

static void build_chain(router_t *r)
{
    kvs_hook_chain_init(&r->chain);
    kvs_hook_add(&r->chain, KVS_HOOK_MASK(KVS_HOOK_AFTER_SEND), metrics_hook, r, 0);
    if (kvs_slowlog_on(&r->slowlog))
        kvs_hook_add(&r->chain, KVS_HOOK_MASK(KVS_HOOK_AFTER_SEND), kvs_slowlog_hook, &r->slowlog,
                     KVS_HOOK_KEEP_REQUEST);
    if (kvs_plugins_attach(r->plugins, &r->chain) != 0)
        kvs_warn("the request hook chain is full: some plugin hooks are left out");
}

/* ---- request events ---------------------------------------------------------------- */

void router_ops_note(router_t *r, router_req_t *req, uint32_t cmd, const void *table, size_t tlen,
                     uint32_t keys)
{
    kvs_request_info_t *in = &req->info;
    in->command = cmd < KVS_METRICS_COMMANDS ? cmd : 0;
    in->command_name = kvs_msg_command_name((Kvs__CommandRequest__CommandCase)cmd);
    in->keys = keys;
    in->write = (uint32_t)kvs_msg_is_write((Kvs__CommandRequest__CommandCase)cmd);
    if (table != NULL && req->client != NULL)
        router_client_note_table(req->client, req); /* for Hscan pages read before it */
    if (!req->internal && kvs_hook_keep_request(&r->chain) && table != NULL) {
        /* one byte past the longest name: a longer one (refused) still
         * looks too long to the hooks after (the slow log shows "...") */
        tlen = tlen <= sizeof(req->table_copy) ? tlen : sizeof(req->table_copy);
        memcpy(req->table_copy, table, tlen);
        table = req->table_copy;
    }
    in->table = table;
    in->table_len = table != NULL ? (uint32_t)tlen : 0;
}

void router_ops_forget(router_req_t *req)
{
    /* Kept even when no hook kept it at router_ops_note: a reload may add
     * one (the slow log turned on) while the request is in flight. */
    kvs_request_info_t *in = &req->info;
    if (in->table != NULL && in->table != req->table_copy) {
        size_t n =
            in->table_len <= sizeof(req->table_copy) ? in->table_len : sizeof(req->table_copy);
        memcpy(req->table_copy, in->table, n);
        in->table = req->table_copy;
        in->table_len = (uint32_t)n;
    }
}

int router_ops_received(router_t *r, router_req_t *req)
{
    char msg[KVS_HOOK_MSG];
    /* A held request that is released ran RECEIVED when it arrived. */
    if (req->internal || req->releasing || !kvs_hook_any(&r->chain, KVS_HOOK_RECEIVED))
        return 0;
    req->info.now_ns = kvs_now_ns();
    uint32_t st = kvs_hook_run(&r->chain, KVS_HOOK_RECEIVED, &req->info, msg, sizeof(msg));
    if (st == 0)
        return 0;
    req->stopped = 1;
    router_req_finish_status(req, st, "%s", msg);
    return 1;
}

void router_ops_slowlog(router_t *r, router_req_t *req, const Kvs__Slowlog *q)
{
    Kvs__OpsAnswer ops = KVS__OPS_ANSWER__INIT;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    if (req->client != NULL && !router_client_is_head(req->client, req)) {
        /* Requests before it are logged when they are answered: it runs
         * once they all were (router_client's flush). */
        req->deferred = 1;
        req->slow_count = q->count;
        req->slow_reset = q->reset;
        return;
    }
    /* An arena of its own: a deferred one runs from a client's flush,
     * which may come inside another request's routing (r->arena's). */
    kvs_arena_t arena;
    kvs_arena_init(&arena);
    if (kvs_slowlog_answer(&r->slowlog, q->count, &arena, &ops) != 0) {
        kvs_arena_close(&arena);
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    out.status = KVS_STATUS_OK;
    out.ops = &ops;
    req->resp.len = 0;
    int rc = kvs_msg_append(&req->resp, &out.base, r->cfg->max_frame);
    kvs_arena_close(&arena);
    if (rc == KVS_ETOOBIG) {
        router_req_finish_status(req, KVS_STATUS_TOO_LARGE,
                                 "Slowlog answer would exceed limits.max_frame (%llu bytes); ask "
                                 "for fewer entries",
                                 (unsigned long long)r->cfg->max_frame);
        return;
    }
    if (rc != 0) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    if (q->reset)
        kvs_slowlog_reset(&r->slowlog);
    router_req_complete(req);
}

int router_ops_init(router_t *r, const kvs_config_t *cfg, const kvs_plugins_t *plugins)
{
    r->plugins = plugins;
    kvs_slowlog_init(&r->slowlog);
    if (kvs_slowlog_configure(&r->slowlog, cfg->slow_threshold_ms, cfg->slow_max) != 0)
        return -ENOMEM;
    build_chain(r);
    return 0;
}

int router_ops_reload(router_t *r, const kvs_config_t *cfg)
{
    if (kvs_slowlog_configure(&r->slowlog, cfg->slow_threshold_ms, cfg->slow_max) != 0)
        return -ENOMEM;
    build_chain(r);
    return 0;
}

void router_ops_close(router_t *r)
{
    kvs_slowlog_free(&r->slowlog);
}

static void client_metrics(router_t *r, kvs_mb_t *b)
{
    static const char *const protos[] = {"kvs", "resp"};
    size_t open[2] = {r->n_clients - r->n_resp_clients, r->n_resp_clients};
    Kvs__MetricFamily *f[4] = {
        kvs_mb_family(b, "kvs_client_connections", KVS__METRIC_FAMILY__TYPE__GAUGE,
                      "Client connections open, by protocol."),
        kvs_mb_family(b, "kvs_client_connections_accepted_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Client connections accepted."),
        kvs_mb_family(b, "kvs_client_connections_refused_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Client connections refused at limits.max_clients."),
        kvs_mb_family(b, "kvs_client_connections_evicted_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Clients that had not authenticated, closed at limits.max_clients to make "
                      "room for a new client."),
    };
    for (int p = 0; p < 2; p++) {
        kvs_mb_sample(b, f[0], (double)open[p], 1, "protocol", protos[p]);
        kvs_mb_sample(b, f[1], (double)r->accepted[p], 1, "protocol", protos[p]);
        kvs_mb_sample(b, f[2], (double)r->refused[p], 1, "protocol", protos[p]);
        kvs_mb_sample(b, f[3], (double)r->unproven[p].evicted, 1, "protocol", protos[p]);
    }
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_client_received_bytes_total",
                                KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Bytes read from clients (both protocols)."),
                  (double)r->group.bytes_in, 0);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_client_sent_bytes_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Bytes written to clients (both protocols)."),
                  (double)r->group.bytes_out, 0);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_client_turns_held_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Times a client's requests waited for a later loop turn because "
                                "all clients' requests had run 20 ms of this one."),
                  (double)r->group.turns_held, 0);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_client_output_bytes", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                "Memory the router process's clients' answers take together: "
                                "their output buffers and the answers held for them (brought "
                                "within its part of limits.output_buffers at each loop turn's "
                                "end)."),
                  (double)r->group.output_used, 0);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_client_output_evictions_total",
                                KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Clients closed, their answers taking the most, because all "
                                "clients' answers together passed limits.output_buffers."),
                  (double)r->group.output_evicted, 0);
}

static void link_metrics(router_t *r, kvs_mb_t *b)
{
    Kvs__MetricFamily *up = kvs_mb_family(b, "kvs_shard_link_up", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                          "1 while the router's link to a worker of the shard "
                                          "(a replica, named by node) is connected, else 0.");
    Kvs__MetricFamily *pend =
        kvs_mb_family(b, "kvs_shard_link_pending_requests", KVS__METRIC_FAMILY__TYPE__GAUGE,
                      "Requests sent on the link and not answered yet.");
    Kvs__MetricFamily *downs =
        kvs_mb_family(b, "kvs_shard_link_failures_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Times the link went down (its pending requests got 503, or another "
                      "replica).");
    Kvs__MetricFamily *maps = kvs_mb_family(
        b, "kvs_shard_link_cluster_map_mismatches_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
        "Times the link's worker, on another node, answered the link's map check with another "
        "cluster map than this router's (README, The cluster map).");
    for (uint32_t i = 0; i < r->n_links && r->links != NULL; i++) {
        const router_link_t *l = &r->links[i];
        const char *shard = kvs_mb_printf(b, "%u", l->shard);
        const char *where = l->addr.is_unix ? "local" : "remote";
        const char *node = l->node != NULL ? l->node : "";
        kvs_mb_sample(b, up, l->up ? 1 : 0, 3, "shard", shard, "node", node, "location", where);
        kvs_mb_sample(b, pend, (double)l->count, 3, "shard", shard, "node", node, "location",
                      where);
        kvs_mb_sample(b, downs, (double)l->downs, 3, "shard", shard, "node", node, "location",
                      where);
        kvs_mb_sample(b, maps, (double)l->map_differs, 3, "shard", shard, "node", node, "location",
                      where);
    }
    Kvs__MetricFamily *units = kvs_mb_family(
        b, "kvs_shard_units_at_workers", KVS__METRIC_FAMILY__TYPE__GAUGE,
        "The fair share's units of work (README, Limits) of the requests sent to the shard's "
        "replicas and not answered yet; from 4,096 on one replica, nobody sends it more until "
        "they come down (reads go to another replica below it).");
    for (uint32_t s = 0; s < r->shards && r->sets != NULL; s++) {
        uint64_t sum = 0;
        for (uint32_t i = 0; i < r->sets[s].n; i++)
            sum += r->links[r->sets[s].first + i].units;
        kvs_mb_sample(b, units, (double)sum, 1, "shard", kvs_mb_printf(b, "%u", s));
    }
}

/* Reads sent to shards with replicas, and their second tries
 * (router_replica's budget). */
static void replica_metrics(router_t *r, kvs_mb_t *b)
{
    const router_budget_t *bu = &r->budget;
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_replica_reads_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Reads sent to shards with several replicas (each may be retried "
                                "once on another replica)."),
                  (double)bu->reads, 0);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_replica_retries_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Reads sent again to another replica after one failed them (link "
                                "loss, timeout, 503)."),
                  (double)bu->retries, 0);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_replica_retries_refused_total",
                                KVS__METRIC_FAMILY__TYPE__COUNTER,
                                "Retries the retry budget refused (router.retry_percent, "
                                "router.retry_burst): the failure was answered."),
                  (double)bu->refused, 0);
}

void router_ops_metrics(router_t *r, kvs_mb_t *b)
{
    size_t from = b->n;
    kvs_mb_requests(b, &r->reqm, "kvs_",
                    "answered by the router to its clients (end to end, both protocols)", 0, NULL);
    client_metrics(r, b);
    link_metrics(r, b);
    replica_metrics(r, b);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_slowlog_length", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                "Entries in the router process's slow log."),
                  (double)r->slowlog.len, 0);
    if (r->add_metrics != NULL)
        r->add_metrics(r, b);
    /* Every sample of this process says which router process it is. */
    kvs_mb_label_all(b, from, "router", kvs_mb_printf(b, "%u", r->proc_index));
}
