/*
 * router_scrape: the master's GET /metrics (see router_scrape.h).
 *
 * Links: [0, n_procs) reach the router processes' own sockets, then one
 * slot per shard id: a link to this node's worker's unix socket
 * (kvs_cluster: the local replica) for each local shard, started when the
 * shard becomes local (at connect, or at a remap after cluster.nodes
 * changed); the slots of other shards are not asked. A router process
 * that replaces another takes its socket's path over, so its link reaches
 * the new one once the old one closed it. Each link is a router_link, so a request that is not
 * answered within router.timeout fails (and the link starts over), and a
 * process that restarts is reached again once it listens.
 *
 * Any client that reaches the port may scrape as fast as it can, and
 * each scrape costs every process of the node a Metrics answer. So
 * scrapes are not asked one by one: a fan-out (scrape_t) asks every
 * process once for every scraper waiting when it starts, and fan-outs
 * start at least SCRAPE_SPACING_MS apart (a scrape meanwhile waits for
 * the next one: every answer holds what the processes said after it was
 * asked). A fan-out holds one answer slot per link. Parts that cannot be
 * sent (the link is down) fail at once; the others answer through
 * on_reply. The last one to finish builds the families in the scraper's
 * arena (the master's own, then each answer's, decoded in place), renders
 * them once, and hands the text to router_http for every waiter.
 *
 * A scraper's own deadline (Prometheus's header) shorter than
 * router.timeout is its own, not the links': links are shared by every
 * fan-out in flight, so a request of one may wait behind another's, and a
 * link torn down at one scraper's whim would cost every other scrape its
 * process. The fan-out keeps a timer instead, for its earliest waiter's
 * deadline: when it fires, the waiters whose deadline passed are answered
 * with what came (scrape_answer), and the scrape_t lives on until every
 * link has replied (answers after its last waiter's are dropped), since
 * each link holds it as the context of a request.
 */
#include "router_scrape.h"
#include "kvs_cluster.h"
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "router_http.h"
#include "router_link.h"
#include "router_procs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* CommandRequest{metrics: {own: true}} and CommandRequest{metrics: {}}. */
static const uint8_t ask_router[] = {0x82, 0x01, 0x02, 0x08, 0x01};
static const uint8_t ask_worker[] = {0x82, 0x01, 0x00};
/* Bytes of asks a link may hold unanswered before a scrape leaves its
 * process out: far more than the metrics port's 16 connections ask at
 * once, but a bound on the scrapes answered at their own deadline that
 * wait, each with its ask, for a hung process's reply (up to
 * router.timeout, which may be ten minutes). */
#define SCRAPE_MAX_QUEUE 4096u
/* Fan-outs start at least this far apart (scrapes meanwhile wait for the
 * next one, which answers them all), and at most this many scrapes wait. */
#define SCRAPE_SPACING_MS 100u
/* ... sooner for a scraper whose own deadline is near (it gets half its
 * wait for the answers), but never closer than this to the last one. */
#define SCRAPE_MIN_GAP_MS 20u
#define SCRAPE_MAX_PENDING 256u

/* A scraper waiting for a fan-out: its token (NULL once answered), how
 * long it waits for a process (scrape_wait_ms) and the loop time that
 * wait ends, counted from its arrival, when it is shorter than
 * router.timeout (else UINT64_MAX: the links' own timeout ends it). */
typedef struct waiter_s {
    router_http_scrape_t *token;
    uint64_t wait_ms, due_ms;
} waiter_t;

struct router_scrape_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    kvs_flusher_t flusher;
    int flusher_on;
    router_link_t *links;
    uint32_t n_links, n_procs; /* n_procs router links, then one per shard id */
    router_http_t *http;
    router_scrape_own_cb own;
    void *arg;
    kvs_arena_t arena;
    kvs_log_budget_t log_budget;          /* lines about processes left out of a scrape */
    waiter_t pending[SCRAPE_MAX_PENDING]; /* scrapes for the next fan-out */
    uint32_t n_pending;
    uv_timer_t spacing; /* starts the next fan-out */
    int spacing_on;     /* spacing was initialized (closed at the stop) */
    int started;        /* a fan-out ever started */
    uint64_t last_start_ms;
    int stopped;
};

static const char oom_text[] = "the kvs-router master is out of memory\n";

typedef struct scrape_s {
    router_scrape_t *sc;
    waiter_t *waiters;   /* the scrapers this fan-out answers */
    uint32_t n_waiters;  /* ... */
    uint32_t open;       /* ... not answered yet */
    uint32_t left;       /* link replies to come (+1 while sending) */
    uv_timer_t deadline; /* fires at the earliest open waiter's due_ms; its memory is x's */
    int timer_on;        /* deadline was initialized (closed before x is freed) */
    kvs_buf_t *answers;  /* per link: the answer's payload */
    uint8_t *asked;      /* per link: a request is out */
    uint8_t *ok;         /* per link: it answered */
} scrape_t;

static void scrape_free(scrape_t *x)
{
    for (uint32_t i = 0; x->answers != NULL && i < x->sc->n_links; i++)
        kvs_buf_free(&x->answers[i]);
    free(x->answers);
    free(x->asked);
    free(x->ok);
    free(x->waiters);
    free(x);
}

static void on_deadline_closed(uv_handle_t *h)
{
    scrape_free(h->data);
}

/* Every link has replied: frees x (once its timer is closed). */
static void scrape_release(scrape_t *x)
{
    if (!x->timer_on) {
        scrape_free(x);
        return;
    }
    uv_timer_stop(&x->deadline);
    uv_close((uv_handle_t *)&x->deadline, on_deadline_closed);
}

/* Whether link i (a worker's) is asked: its shard is local in the map as
 * it is now (cluster.nodes is live: router_scrape_remap). */
static int worker_asked(const router_scrape_t *sc, uint32_t i)
{
    return sc->links[i].loop != NULL && kvs_config_local(sc->cfg, i - sc->n_procs);
}

/* Which processes answered this scrape. */
static void source_metrics(const scrape_t *x, kvs_mb_t *b)
{
    router_scrape_t *sc = x->sc;
    Kvs__MetricFamily *f = kvs_mb_family(
        b, "kvs_metrics_source_up", KVS__METRIC_FAMILY__TYPE__GAUGE,
        "1 when the process (a router process, or a shard's worker) answered this "
        "scrape within router.timeout (or the scraper's own deadline); its metrics are "
        "left out when 0.");
    for (uint32_t i = 0; i < sc->n_links; i++) {
        if (i < sc->n_procs)
            kvs_mb_sample(b, f, x->ok[i], 1, "router", kvs_mb_printf(b, "%u", i));
        else if (worker_asked(sc, i))
            kvs_mb_sample(b, f, x->ok[i], 1, "shard", kvs_mb_printf(b, "%u", i - sc->n_procs));
    }
}

/* Every part is in (all), or the deadline of some waiters came (those
 * whose due_ms is `now` or before): the families of what answered,
 * rendered once, as text to each of them. x stays (see the top). */
static void scrape_answer(scrape_t *x, int all, uint64_t now)
{
    router_scrape_t *sc = x->sc;
    kvs_mb_t b;
    kvs_buf_t body;
    kvs_buf_init(&body);
    kvs_mb_init(&b, &sc->arena);
    if (sc->own != NULL)
        sc->own(sc->arg, &b);
    source_metrics(x, &b);
    for (uint32_t i = 0; i < sc->n_links; i++) {
        if (!x->ok[i])
            continue;
        Kvs__CommandResponse *a =
            kvs__command_response__unpack(&sc->arena.pb, x->answers[i].len, x->answers[i].data);
        if (a == NULL || a->status != KVS_STATUS_OK || a->ops == NULL)
            continue;
        for (size_t k = 0; k < a->ops->n_metrics; k++)
            kvs_mb_add(&b, a->ops->metrics[k]);
    }
    int failed = b.failed || kvs_metrics_render(b.fams, b.n, &body) != 0;
    for (uint32_t w = 0; w < x->n_waiters; w++) {
        waiter_t *wt = &x->waiters[w];
        if (wt->token == NULL || (!all && wt->due_ms > now))
            continue;
        if (failed)
            router_http_done(wt->token, 500, oom_text, sizeof(oom_text) - 1);
        else
            router_http_done(wt->token, 200, body.data, body.len);
        wt->token = NULL;
        x->open--;
    }
    kvs_buf_free(&body);
    kvs_arena_reset(&sc->arena);
    if (x->open > 0)
        return;
    /* x may wait for late replies for up to router.timeout (see the top):
     * it keeps no answers meanwhile, so a scraper that asks again and
     * again while a process hangs holds a few bytes per scrape. */
    for (uint32_t i = 0; i < sc->n_links; i++)
        kvs_buf_free(&x->answers[i]);
}

/* A process answered the scrape's ask with an error instead of its
 * families (413: they do not fit limits.max_frame; 500: out of memory):
 * it is left out, as one that did not answer (kvs_metrics_source_up 0),
 * and the log says why, within the scraper's budget. */
static void answer_refused(router_scrape_t *sc, uint32_t part, const uint8_t *payload, size_t len)
{
    kvs_answer_peek_t a;
    if (!kvs_log_budget_take(&sc->log_budget, uv_now(sc->loop)))
        return;
    if (!kvs_msg_answer_peek(payload, len, &a) || a.status == 0) {
        a.status = kvs_msg_answer_status(payload, len);
        a.message = NULL;
        a.message_len = 0;
    }
    int mlen = a.message_len > 300 ? 300 : (int)a.message_len;
    kvs_warn("metrics: %s %u answered %u (%.*s); left out of this scrape",
             part < sc->n_procs ? "router" : "shard",
             part < sc->n_procs ? part : part - sc->n_procs, a.status, mlen,
             a.message != NULL ? (const char *)a.message : "");
}

/* A link's answer to a scrape's request, or its failure. */
static void on_reply(void *ctx, uint32_t part, const uint8_t *payload, size_t len,
                     const char *failure)
{
    scrape_t *x = ctx;
    if (x == NULL || part >= x->sc->n_links)
        return;
    /* After every waiter's deadline: too late, dropped. */
    if (x->open > 0 && failure == NULL) {
        if (kvs_msg_answer_status(payload, len) != KVS_STATUS_OK)
            answer_refused(x->sc, part, payload, len);
        else if (kvs_buf_append(&x->answers[part], payload, len) == 0)
            x->ok[part] = 1;
    }
    if (--x->left > 0)
        return;
    if (x->open > 0)
        scrape_answer(x, 1, 0);
    scrape_release(x);
}

static void on_deadline(uv_timer_t *t);

/* Arms x's timer for its earliest open waiter with a deadline, if any. */
static void arm_deadline(scrape_t *x, uint64_t now)
{
    uint64_t due = UINT64_MAX;
    for (uint32_t w = 0; w < x->n_waiters; w++)
        if (x->waiters[w].token != NULL && x->waiters[w].due_ms < due)
            due = x->waiters[w].due_ms;
    if (due == UINT64_MAX || !x->timer_on)
        return;
    uv_timer_start(&x->deadline, on_deadline, due > now ? due - now : 0, 0);
}

/* A scraper's deadline (less its margin) came first: it is answered with
 * what is in; the links' requests run on to router.timeout (a process
 * that is only slow is not cut off for every other scrape). A client
 * chooses the deadline, so the line is within the scraper's log budget. */
static void on_deadline(uv_timer_t *t)
{
    scrape_t *x = t->data;
    router_scrape_t *sc = x->sc;
    uint64_t now = uv_now(sc->loop), wait = 0;
    char who[256];
    size_t n = 0;
    who[0] = '\0';
    for (uint32_t w = 0; w < x->n_waiters; w++)
        if (x->waiters[w].token != NULL && x->waiters[w].due_ms <= now)
            wait = x->waiters[w].wait_ms;
    for (uint32_t i = 0; i < sc->n_links && n < sizeof(who); i++) {
        if (!x->asked[i] || x->ok[i])
            continue;
        int k =
            i < sc->n_procs
                ? snprintf(who + n, sizeof(who) - n, "%srouter %u", n ? ", " : "", i)
                : snprintf(who + n, sizeof(who) - n, "%sshard %u", n ? ", " : "", i - sc->n_procs);
        n += k > 0 ? (size_t)k : 0;
    }
    if (wait > 0 && kvs_log_budget_take(&sc->log_budget, now))
        kvs_warn("metrics: a scrape's own deadline (%llu ms: its "
                 "X-Prometheus-Scrape-Timeout-Seconds less a margin) passed before %s answered; "
                 "left out of it",
                 (unsigned long long)wait, who);
    scrape_answer(x, 0, now);
    arm_deadline(x, now);
}

/* How long this scrape waits for a process: router.timeout (live), but
 * never past the scraper's own deadline (Prometheus's scrape_timeout,
 * sent in its header) less a margin for the rest of the work (half a
 * second, or half of it when it is short): a scrape answered after that
 * is dropped whole by Prometheus, so one hung process would hide every
 * metric, kvs_metrics_source_up included. */
static uint64_t scrape_wait_ms(const router_scrape_t *sc, router_http_scrape_t *token)
{
    uint64_t wait = sc->cfg->router_timeout_ms, theirs = router_http_scrape_timeout_ms(token);
    if (theirs > 0) {
        uint64_t margin = theirs / 2 < 500 ? theirs / 2 : 500;
        if (theirs - margin < wait)
            wait = theirs - margin > 0 ? theirs - margin : 1;
    }
    return wait;
}

/* One fan-out for every scraper waiting: a request to each process, the
 * answers rendered once for all of them. */
static void fan_out(router_scrape_t *sc)
{
    uint32_t n_waiters = sc->n_pending;
    uint64_t now = uv_now(sc->loop);
    sc->n_pending = 0;
    sc->last_start_ms = now;
    sc->started = 1;
    if (sc->spacing_on) /* it takes every scrape waiting: the next one arms it again */
        uv_timer_stop(&sc->spacing);
    scrape_t *x = calloc(1, sizeof(*x));
    if (x != NULL) {
        x->answers = calloc(sc->n_links ? sc->n_links : 1, sizeof(*x->answers));
        x->asked = calloc(sc->n_links ? sc->n_links : 1, 1);
        x->ok = calloc(sc->n_links ? sc->n_links : 1, 1);
        x->waiters = calloc(n_waiters, sizeof(*x->waiters));
    }
    if (x == NULL || x->answers == NULL || x->asked == NULL || x->ok == NULL ||
        x->waiters == NULL) {
        if (x != NULL) {
            free(x->answers);
            free(x->asked);
            free(x->ok);
            free(x->waiters);
            free(x);
        }
        /* An answer may let a connection's next scrape in (on_scrape):
         * the tokens are taken out of `pending` first. */
        waiter_t taken[SCRAPE_MAX_PENDING];
        memcpy(taken, sc->pending, n_waiters * sizeof(*taken));
        for (uint32_t w = 0; w < n_waiters; w++)
            router_http_done(taken[w].token, 500, oom_text, sizeof(oom_text) - 1);
        return;
    }
    x->sc = sc;
    x->n_waiters = x->open = n_waiters;
    memcpy(x->waiters, sc->pending, n_waiters * sizeof(*x->waiters));
    x->left = sc->n_links + 1; /* +1: held until every request is out */
    for (uint32_t i = 0; i < sc->n_links; i++) {
        router_link_t *l = &sc->links[i];
        l->timeout_ms = sc->cfg->router_timeout_ms; /* live: read at every scrape */
        int rc = i < sc->n_procs       ? router_link_send(l, ask_router, sizeof(ask_router), x, i)
                 : worker_asked(sc, i) ? router_link_send(l, ask_worker, sizeof(ask_worker), x, i)
                                       : KVS_ECLOSED;
        if (rc != 0)
            --x->left; /* down: left out */
        else
            x->asked[i] = 1;
    }
    if (--x->left == 0) {
        scrape_answer(x, 1, 0);
        scrape_free(x);
        return;
    }
    /* Failing to start the timer only loses the earlier answers: the
     * links' own timeout still ends the scrape. */
    if (uv_timer_init(sc->loop, &x->deadline) == 0) {
        x->timer_on = 1;
        x->deadline.data = x;
        arm_deadline(x, now);
    }
}

static void on_spacing(uv_timer_t *t)
{
    router_scrape_t *sc = t->data;
    if (sc->n_pending > 0 && !sc->stopped)
        fan_out(sc);
}

/* router_http: a GET /metrics. It waits for the next fan-out: at once, or
 * SCRAPE_SPACING_MS after the last one started (sooner for a near deadline
 * of its own), so that however many scrapes come (any client that reaches
 * the port may send them), the processes are asked at most
 * 1000 / SCRAPE_SPACING_MS times a second (1000 / SCRAPE_MIN_GAP_MS with
 * deadlines under twice the spacing), and every answer still holds what
 * the processes said after it was asked. */
static void on_scrape(void *arg, router_http_scrape_t *token)
{
    router_scrape_t *sc = arg;
    /* A guard, not a path a client can reach today: each of the port's
     * 16 connections holds one scrape at a time, and reads nothing more
     * (not even its client leaving) until it is answered. */
    if (sc->n_pending == SCRAPE_MAX_PENDING) {
        static const char busy[] = "too many scrapes waiting; try again\n";
        router_http_done(token, 503, busy, sizeof(busy) - 1);
        return;
    }
    uint64_t now = uv_now(sc->loop), since = now - sc->last_start_ms;
    waiter_t *wt = &sc->pending[sc->n_pending++];
    wt->token = token;
    wt->wait_ms = scrape_wait_ms(sc, token);
    /* The scraper's deadline runs from now, not from the fan-out (up to
     * SCRAPE_SPACING_MS later). */
    wt->due_ms = wt->wait_ms < sc->cfg->router_timeout_ms ? now + wt->wait_ms : UINT64_MAX;
    if (!sc->started || since >= SCRAPE_SPACING_MS || !sc->spacing_on) {
        fan_out(sc);
        return;
    }
    /* The next fan-out: at the spacing's end, or sooner when this
     * scraper's deadline would leave it less than half its wait for the
     * answers, but not within SCRAPE_MIN_GAP_MS of the last one (a client
     * picks its deadline: at most 1000 / SCRAPE_MIN_GAP_MS a second). */
    uint64_t at = sc->last_start_ms + SCRAPE_SPACING_MS;
    if (wt->due_ms != UINT64_MAX && now + wt->wait_ms / 2 < at)
        at = now + wt->wait_ms / 2;
    if (at < sc->last_start_ms + SCRAPE_MIN_GAP_MS)
        at = sc->last_start_ms + SCRAPE_MIN_GAP_MS;
    if (at <= now) {
        fan_out(sc);
    } else if (!uv_is_active((uv_handle_t *)&sc->spacing) ||
               at - now < uv_timer_get_due_in(&sc->spacing)) {
        uv_timer_start(&sc->spacing, on_spacing, at - now, 0);
    }
}

/* ---- links ------------------------------------------------------------------------ */

static int start_link(router_scrape_t *sc, uint32_t i, uint32_t id, const kvs_addr_t *addr)
{
    router_link_t *l = &sc->links[i];
    int rc = router_link_start(l, sc->loop, id, addr, sc->cfg->router_timeout_ms,
                               (uint32_t)sc->cfg->max_frame, &sc->flusher, NULL, on_reply, NULL);
    if (rc != 0)
        kvs_error("metrics: cannot reach %s: %s", l->addr_text, uv_strerror(rc));
    else
        l->max_queue = SCRAPE_MAX_QUEUE;
    return rc;
}

/* Links to the workers of shards local in the map as it is now, that have
 * none yet. A link is never stopped before the scraper stops: one to a
 * worker the node no longer runs just stays down (and is not asked), and
 * reaches the worker again if the shard comes back. */
static int start_worker_links(router_scrape_t *sc)
{
    const kvs_config_t *cfg = sc->cfg;
    for (uint32_t s = 0; s < cfg->shards; s++) {
        kvs_addr_t addr;
        if (!kvs_config_local(cfg, s) || sc->links[sc->n_procs + s].loop != NULL ||
            kvs_cluster_local_addr(cfg, s, &addr) != 0)
            continue;
        int rc = start_link(sc, sc->n_procs + s, s, &addr);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* A link to each router process's own socket, then to each local worker. */
static int start_links(router_scrape_t *sc)
{
    const kvs_config_t *cfg = sc->cfg;
    sc->links = calloc(sc->n_procs + cfg->shards, sizeof(*sc->links));
    if (sc->links == NULL)
        return UV_ENOMEM;
    sc->n_links = sc->n_procs + cfg->shards; /* zeroed links: router_link_stop skips them */
    for (uint32_t i = 0; i < sc->n_procs; i++) {
        kvs_addr_t addr;
        if (router_procs_admin_addr(cfg, i, 0, &addr) != 0) {
            kvs_error("metrics: router %u's socket: %s/router%u.sock is too long", i, cfg->data_dir,
                      i);
            return UV_EINVAL;
        }
        int rc = start_link(sc, i, i, &addr);
        if (rc != 0)
            return rc;
        sc->links[i].what = "router";
    }
    return start_worker_links(sc);
}

/* ---- start / stop ------------------------------------------------------------------ */

int router_scrape_start(uv_loop_t *loop, const kvs_config_t *cfg, uint32_t n_procs,
                        kvs_tls_ctx_t *tls, kvs_auth_t *auth, router_scrape_own_cb own, void *arg,
                        router_scrape_t **out)
{
    router_scrape_t *sc = calloc(1, sizeof(*sc));
    *out = sc;
    if (sc == NULL)
        return UV_ENOMEM;
    sc->loop = loop;
    sc->cfg = cfg;
    sc->n_procs = n_procs;
    sc->own = own;
    sc->arg = arg;
    kvs_arena_init(&sc->arena);
    kvs_log_budget_init(&sc->log_budget, "lines about processes left out of scrapes",
                        KVS_LOG_PEER_LINES, KVS_LOG_PEER_WINDOW_MS);
    int rc = kvs_flusher_init(&sc->flusher, loop, NULL, sc);
    sc->flusher_on = rc == 0;
    if (rc == 0 && uv_timer_init(loop, &sc->spacing) == 0) {
        sc->spacing_on = 1;
        sc->spacing.data = sc;
    }
    if (rc == 0)
        rc = router_http_start(loop, cfg->metrics_listen, tls, auth, on_scrape, sc, &sc->http);
    return rc;
}

int router_scrape_connect(router_scrape_t *sc)
{
    if (sc == NULL || sc->stopped || sc->links != NULL)
        return 0;
    return start_links(sc);
}

int router_scrape_remap(router_scrape_t *sc)
{
    if (sc == NULL || sc->stopped || sc->links == NULL)
        return 0; /* not connected yet: router_scrape_connect reads the map */
    return start_worker_links(sc);
}

void router_scrape_stop(router_scrape_t *sc)
{
    if (sc == NULL || sc->stopped)
        return;
    sc->stopped = 1;
    router_http_stop(sc->http);
    static const char gone[] = "the node is stopping\n";
    for (uint32_t w = 0; w < sc->n_pending; w++) /* to nobody: their connections are closed */
        router_http_done(sc->pending[w].token, 503, gone, sizeof(gone) - 1);
    sc->n_pending = 0;
    if (sc->spacing_on && !uv_is_closing((uv_handle_t *)&sc->spacing))
        uv_close((uv_handle_t *)&sc->spacing, NULL);
    for (uint32_t i = 0; i < sc->n_links; i++)
        router_link_stop(&sc->links[i]); /* fails what is pending: those scrapes finish */
    if (sc->flusher_on && !uv_is_closing((uv_handle_t *)&sc->flusher.check))
        kvs_flusher_close(&sc->flusher, NULL); /* its check and idle handles */
}

void router_scrape_free(router_scrape_t *sc)
{
    if (sc == NULL)
        return;
    router_http_free(sc->http);
    free(sc->links);
    kvs_arena_close(&sc->arena);
    free(sc);
}
