/*
 * router_scrape: the node's metrics, served by the kvs-router master on
 * router.metrics_listen (GET /metrics, router_http).
 *
 * With router.processes router processes, each counts its own clients and
 * requests; a port shared by all of them would show one process per
 * scrape, and counters that jump between processes. So the master serves
 * the port and collects, for every scrape, the families of every process
 * of the node: each router process's own (a Metrics request with `own`
 * on its unix socket <data_dir>/routerI.sock; every sample labelled
 * router="I"), each local worker's (a Metrics request on its unix socket;
 * labelled shard="N"), and the master's own (worker and router process
 * restarts, reloads, the master process). A process that does not answer
 * within router.timeout, or before the scraper's own deadline (Prometheus's
 * X-Prometheus-Scrape-Timeout-Seconds, less a margin) when that comes
 * first, is left out of that scrape, and kvs_metrics_source_up says so.
 *
 * The master keeps one router_link per process, from the moment the node
 * is ready (reconnecting by itself while a process restarts); a fan-out sends one request on
 * each link that is up and answers once every one answered or failed, for every scrape that
 * waited for it. Fan-outs start at least 100 ms apart, however many scrapes come.
 *
 * Threads: the master's loop only.
 */
#ifndef ROUTER_SCRAPE_H
#define ROUTER_SCRAPE_H

#include "kvs_auth.h"
#include "kvs_config.h"
#include "kvs_metrics.h"
#include "kvs_tls.h"

#include <stdint.h>
#include <uv.h>

typedef struct router_scrape_s router_scrape_t;

/* Adds the master's own families to `b`. */
typedef void (*router_scrape_own_cb)(void *arg, kvs_mb_t *b);

/* Starts serving cfg->metrics_listen (cfg must outlive the scraper; its
 * router.timeout is read at every scrape), asking the `n_procs` router
 * processes and every worker of this node; over HTTPS with `tls`, and to
 * users of `auth` holding admin only, when not NULL (see router_http;
 * both must outlive the scraper). Returns 0 and *out, or a uv error
 * (logged); *out may then still be set: router_scrape_stop and
 * router_scrape_free it as a running one. */
int router_scrape_start(uv_loop_t *loop, const kvs_config_t *cfg, uint32_t n_procs,
                        kvs_tls_ctx_t *tls, kvs_auth_t *auth, router_scrape_own_cb own, void *arg,
                        router_scrape_t **out);

/* Connects to the processes (once the node is ready: they all listen by
 * then; before, a scrape has the master's families only). A process that
 * restarts later is reached again when it listens. Returns 0 or a uv
 * error (logged). */
int router_scrape_connect(router_scrape_t *s);

/* The node's map changed (cluster.nodes reloaded; cfg holds the new one):
 * starts links to the workers of shards that became local. Those of shards
 * no longer local are not asked any more. Returns 0 or a uv error
 * (logged). */
int router_scrape_remap(router_scrape_t *s);

/* Stops listening and closes the links and handles (scrapes in flight are
 * answered with what they have, to nobody). Idempotent; NULL is allowed. */
void router_scrape_stop(router_scrape_t *s);

/* Frees the scraper after router_scrape_stop, once the loop ran. NULL is
 * allowed. */
void router_scrape_free(router_scrape_t *s);

#endif
