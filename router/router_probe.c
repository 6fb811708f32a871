/*
 * router_probe: Ping on links to local workers until each answers 200
 * (see router_probe.h).
 *
 * The probe's memory holds uv handles (the links' timers, the flusher's
 * check, its own timer) that libuv touches until their close callbacks
 * ran: n_open counts those not closed yet, and router_probe_free leaves
 * the freeing to the last close callback when some are.
 */
#include "router_probe.h"
#include "kvs_cluster.h"
#include "kvs_err.h"
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
    size_t n_open;    /* handles (and links) whose close callback has not run */
    int free_pending; /* router_probe_free was called: the last close frees */
};

static void probe_release(router_probe_t *p)
{
    free(p->links);
    free(p->ok);
    free(p->asking);
    free(p);
}

static void probe_closed(router_probe_t *p)
{
    if (--p->n_open == 0 && p->free_pending)
        probe_release(p);
}

static void on_link_closed(router_link_t *l)
{
    probe_closed(l->data);
}

static void on_handle_closed(uv_handle_t *h)
{
    probe_closed(h->data);
}

static void on_flusher_closed(uv_handle_t *h)
{
    probe_closed(((kvs_flusher_t *)h->data)->data);
}

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
    kvs_flusher_run(&p->flusher); /* now: the check would wait for the next tick's wakeup */
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
    p->n_open += p->flusher_on;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        kvs_addr_t addr;
        rc = kvs_cluster_local_addr(cfg, shards[i], &addr);
        if (rc == 0)
            rc = router_link_start(&p->links[i], loop, shards[i], &addr, PROBE_TIMEOUT_MS,
                                   (uint32_t)cfg->max_frame, &p->flusher, NULL, on_reply, NULL);
        if (rc == 0) {
            p->links[i].data = p;
            p->links[i].on_closed = on_link_closed;
            p->n = i + 1;
            p->n_open++;
        }
    }
    if (rc == 0) {
        uv_timer_init(loop, &p->timer);
        p->timer.data = p;
        p->timer_on = 1;
        p->n_open++;
        uv_timer_start(&p->timer, on_tick, PROBE_EVERY_MS, PROBE_EVERY_MS);
    }
    *out = p;
    if (rc != 0) {
        kvs_error("membership change: cannot reach the new workers: %s", kvs_strerror(rc));
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
        uv_close((uv_handle_t *)&p->timer, on_handle_closed);
    for (size_t i = 0; i < p->n; i++)
        router_link_stop(&p->links[i]);
    if (p->flusher_on)
        kvs_flusher_close(&p->flusher, on_flusher_closed);
}

void router_probe_free(router_probe_t *p)
{
    if (p == NULL)
        return;
    router_probe_stop(p);
    if (p->n_open > 0)
        p->free_pending = 1; /* the last close callback frees it */
    else
        probe_release(p);
}
