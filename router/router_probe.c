/*
 * router_probe: Ping on links to local workers until each answers 200
 * (see router_probe.h).
 *
 * The probe's memory holds uv handles (the links' timers, the flusher's
 * check, its own timer) that libuv touches until their close callbacks
 * ran, so it is freed only by router_probe_free, which the master calls
 * once the loop ran (at the next change, or at exit).
 */
#include "router_probe.h"
#include "kvs_cluster.h"
#include "kvs_conn.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "router_link.h"

#include <stdlib.h>

#define PROBE_EVERY_MS 100
#define PROBE_TIMEOUT_MS 2000

/* CommandRequest{ping: {}}: field 11, an empty message. */
static const uint8_t ping[] = {0x5a, 0x00};

struct router_probe_s {
    router_link_t *links;
    uint8_t *ok, *asking;
    size_t n, n_ok;
    kvs_flusher_t flusher;
    uv_timer_t timer;
    router_probe_done_cb done;
    void *arg;
    int stopped, flusher_on, timer_on;
};

static void on_reply(void *ctx, uint32_t part, const uint8_t *payload, size_t len,
                     const char *failure)
{
    router_probe_t *p = ctx;
    if (p->stopped || part >= p->n)
        return;
    p->asking[part] = 0;
    if (failure != NULL || p->ok[part])
        return;
    Kvs__CommandResponse *r = kvs__command_response__unpack(NULL, len, payload);
    if (r != NULL && r->status == 200) {
        p->ok[part] = 1;
        p->n_ok++;
        kvs_info("membership change: shard %u's new worker serves", p->links[part].shard);
    }
    kvs__command_response__free_unpacked(r, NULL);
}

static void on_tick(uv_timer_t *t)
{
    router_probe_t *p = t->data;
    if (p->n_ok == p->n) {
        router_probe_done_cb done = p->done;
        router_probe_stop(p);
        done(p->arg);
        return;
    }
    for (size_t i = 0; i < p->n; i++) {
        if (p->ok[i] || p->asking[i])
            continue;
        if (router_link_send(&p->links[i], ping, sizeof(ping), p, (uint32_t)i) == 0)
            p->asking[i] = 1;
    }
}

/* Where the worker of `shard` listens on this node: its unix socket. */
static int local_addr(const kvs_config_t *cfg, uint32_t shard, kvs_addr_t *out)
{
    kvs_replica_t reps[KVS_MAX_REPLICAS];
    int n = kvs_cluster_replicas(cfg, shard, reps, KVS_MAX_REPLICAS, NULL, 0);
    for (int i = 0; i < n && i < KVS_MAX_REPLICAS; i++) {
        if (reps[i].local) {
            *out = reps[i].addr;
            return 0;
        }
    }
    return UV_EINVAL;
}

int router_probe_start(uv_loop_t *loop, const kvs_config_t *cfg, const uint32_t *shards, size_t n,
                       router_probe_done_cb done, void *arg, router_probe_t **out)
{
    *out = NULL;
    router_probe_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return UV_ENOMEM;
    p->links = calloc(n ? n : 1, sizeof(*p->links));
    p->ok = calloc(n ? n : 1, 1);
    p->asking = calloc(n ? n : 1, 1);
    p->done = done;
    p->arg = arg;
    int rc = p->links == NULL || p->ok == NULL || p->asking == NULL ? UV_ENOMEM : 0;
    if (rc == 0)
        rc = kvs_flusher_init(&p->flusher, loop, NULL, p);
    p->flusher_on = rc == 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        kvs_addr_t addr;
        rc = local_addr(cfg, shards[i], &addr);
        if (rc == 0)
            rc = router_link_start(&p->links[i], loop, shards[i], &addr, PROBE_TIMEOUT_MS,
                                   (uint32_t)cfg->max_frame, &p->flusher, NULL, on_reply, NULL);
        if (rc == 0)
            p->n = i + 1;
    }
    if (rc == 0) {
        uv_timer_init(loop, &p->timer);
        p->timer.data = p;
        p->timer_on = 1;
        uv_timer_start(&p->timer, on_tick, PROBE_EVERY_MS, PROBE_EVERY_MS);
    }
    *out = p;
    if (rc != 0) {
        kvs_error("membership change: cannot reach the new workers: %s", uv_strerror(rc));
        router_probe_stop(p); /* the master frees it later, as a stopped one */
    }
    return rc;
}

void router_probe_stop(router_probe_t *p)
{
    if (p == NULL || p->stopped)
        return;
    p->stopped = 1;
    if (p->timer_on)
        uv_close((uv_handle_t *)&p->timer, NULL);
    for (size_t i = 0; i < p->n; i++)
        router_link_stop(&p->links[i]);
    if (p->flusher_on)
        kvs_flusher_close(&p->flusher);
}

void router_probe_free(router_probe_t *p)
{
    if (p == NULL)
        return;
    free(p->links);
    free(p->ok);
    free(p->asking);
    free(p);
}
