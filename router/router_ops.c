/*
 * router_ops: the router's request hooks, metrics and slow log.
 *
 * The chain (kvs_hook) is, in order: the metrics hook (AFTER_SEND: one
 * counter and one histogram observation per answer, end to end, from the
 * moment the request was received to the moment its answer is queued for
 * the client), the slow log (AFTER_SEND, while log.slow_threshold is not
 * off), then every plugin's hooks. RECEIVED runs here, called by
 * router_route once a request is understood (router_ops_received);
 * EXECUTED runs in router_route as answers complete, the send events in
 * router_client as answers go out.
 *
 * Metrics: router_ops_metrics builds the router's own families at scrape
 * time from the counters the hot path keeps (requests, connections, bytes,
 * links); workers' come from their Metrics answers (router_route's
 * merge_metrics), and r->add_metrics adds what router_main knows (worker
 * restarts, reloads, the process).
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

/* Fills what hooks see of a request. The table is copied into the
 * request only while some hook reads it after RECEIVED (the slow log,
 * plugins): returns 1 then; otherwise req->info.table points into the
 * client's bytes, and the caller clears it (forget_table) before they go. */
static int note_request(router_t *r, router_req_t *req, uint32_t cmd, const void *table,
                        size_t tlen, uint32_t keys)
{
    kvs_request_info_t *in = &req->info;
    in->command = cmd < KVS_METRICS_COMMANDS ? cmd : 0;
    in->command_name = kvs_msg_command_name((Kvs__CommandRequest__CommandCase)cmd);
    in->keys = keys;
    in->write = (uint32_t)kvs_msg_is_write((Kvs__CommandRequest__CommandCase)cmd);
    int keep = !req->internal && kvs_hook_keep_request(&r->chain) && table != NULL;
    if (keep) {
        tlen = tlen <= KVS_MAX_TABLE ? tlen : KVS_MAX_TABLE;
        memcpy(req->table_copy, table, tlen);
        table = req->table_copy;
    }
    in->table = table;
    in->table_len = table != NULL ? (uint32_t)tlen : 0;
    return keep;
}

static void forget_table(router_req_t *req, int kept)
{
    if (!kept) {
        req->info.table = NULL;
        req->info.table_len = 0;
    }
}

int router_ops_received(router_t *r, router_req_t *req, uint32_t cmd, const void *table,
                        size_t tlen, uint32_t keys)
{
    char msg[KVS_HOOK_MSG];
    int kept = note_request(r, req, cmd, table, tlen, keys);
    uint32_t st = 0;
    if (!req->internal && kvs_hook_any(&r->chain, KVS_HOOK_RECEIVED)) {
        req->info.now_ns = kvs_now_ns();
        st = kvs_hook_run(&r->chain, KVS_HOOK_RECEIVED, &req->info, msg, sizeof(msg));
    }
    forget_table(req, kept);
    if (st == 0)
        return 0;
    req->stopped = 1;
    router_req_finish_status(req, st, "%s", msg);
    return 1;
}

void router_ops_refused(router_t *r, router_req_t *req, const Kvs__CommandRequest *q, uint32_t st,
                        const char *msg)
{
    const char *table = kvs_msg_request_table(q);
    int kept = note_request(r, req, q->command_case, table, table != NULL ? strlen(table) : 0,
                            kvs_msg_request_keys(q));
    router_req_finish_status(req, st, "%s", msg); /* EXECUTED runs in here */
    forget_table(req, kept);
}

void router_ops_slowlog(router_t *r, router_req_t *req, const Kvs__Slowlog *q)
{
    Kvs__OpsAnswer ops = KVS__OPS_ANSWER__INIT;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    if (kvs_slowlog_answer(&r->slowlog, q->count, &r->arena, &ops) != 0) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    out.status = KVS_STATUS_OK;
    out.ops = &ops;
    req->resp.len = 0;
    int rc = kvs_msg_append(&req->resp, &out.base, r->cfg->max_frame);
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
    Kvs__MetricFamily *f[3] = {
        kvs_mb_family(b, "kvs_client_connections", KVS__METRIC_FAMILY__TYPE__GAUGE,
                      "Client connections open, by protocol."),
        kvs_mb_family(b, "kvs_client_connections_accepted_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Client connections accepted."),
        kvs_mb_family(b, "kvs_client_connections_refused_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Client connections refused at limits.max_clients."),
    };
    for (int p = 0; p < 2; p++) {
        kvs_mb_sample(b, f[0], (double)open[p], 1, "protocol", protos[p]);
        kvs_mb_sample(b, f[1], (double)r->accepted[p], 1, "protocol", protos[p]);
        kvs_mb_sample(b, f[2], (double)r->refused[p], 1, "protocol", protos[p]);
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
}

static void link_metrics(router_t *r, kvs_mb_t *b)
{
    Kvs__MetricFamily *up = kvs_mb_family(b, "kvs_shard_link_up", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                          "1 while the router's link to the shard's worker is "
                                          "connected (its requests are served), else 0.");
    Kvs__MetricFamily *pend =
        kvs_mb_family(b, "kvs_shard_link_pending_requests", KVS__METRIC_FAMILY__TYPE__GAUGE,
                      "Requests sent to the shard and not answered yet.");
    Kvs__MetricFamily *downs =
        kvs_mb_family(b, "kvs_shard_link_failures_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Times the link to the shard went down (its pending requests got 503).");
    for (uint32_t s = 0; s < r->shards && r->links != NULL; s++) {
        const router_link_t *l = &r->links[s];
        const char *shard = kvs_mb_printf(b, "%u", s);
        const char *where = kvs_config_remote(r->cfg, s) != NULL ? "remote" : "local";
        kvs_mb_sample(b, up, l->up ? 1 : 0, 2, "shard", shard, "location", where);
        kvs_mb_sample(b, pend, (double)l->count, 2, "shard", shard, "location", where);
        kvs_mb_sample(b, downs, (double)l->downs, 2, "shard", shard, "location", where);
    }
}

void router_ops_metrics(router_t *r, kvs_mb_t *b)
{
    kvs_mb_requests(b, &r->reqm, "kvs_",
                    "answered by the router to its clients (end to end, both protocols)", 0, NULL);
    client_metrics(r, b);
    link_metrics(r, b);
    kvs_mb_sample(b,
                  kvs_mb_family(b, "kvs_slowlog_length", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                "Entries in the router's slow log."),
                  (double)r->slowlog.len, 0);
    if (r->add_metrics != NULL)
        r->add_metrics(r, b);
}
