/*
 * test_probe: router_probe against fake workers of the test's own, on the
 * unix sockets a config without cluster.nodes gives every local shard
 * (<data_dir>/shard-N.sock). A probe calls `done` once every worker it
 * waits for answered a Ping with 200 (a 503 first, as a worker copying a
 * snapshot gives, is asked again), and never before; freeing a probe is
 * safe at any moment, also in the same callback that stopped it, while
 * its handles are still closing (the build with ASan checks the memory);
 * a shard this node does not serve fails the start.
 */
#include "kvs_config.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "kvs_test.h"
#include "router_probe.h"

#include <stdlib.h>
#include <uv.h>

#define WORKERS 2

typedef struct fake_s fake_t;

/* One fake worker: a listener, and the one connection a probe makes. */
struct fake_s {
    uv_pipe_t server, peer;
    int accepted;
    int fail_first; /* Pings answered 503 before the first 200 */
    int silent;     /* hung: reads, never answers */
    int pings;
    uint8_t in[256];
    size_t n_in;
};

typedef struct {
    uv_loop_t loop;
    fake_t fake[WORKERS];
    kvs_config_t *cfg;
    router_probe_t *probe;
    int done_calls;
    int free_in_done;   /* router_probe_free from inside `done` */
    uv_timer_t stopper; /* stops and frees the probe from a callback */
} tctx_t;

static void on_written(uv_write_t *w, int status)
{
    (void)status; /* the probe may have gone: EPIPE is fine */
    free(w);
}

/* Answers one Ping with `status`. */
static void answer(fake_t *f, uint32_t status)
{
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = status;
    size_t n = kvs__command_response__get_packed_size(&r);
    struct {
        uv_write_t w;
        uint8_t buf[64];
    } *out = malloc(sizeof(*out));
    CHECK(out != NULL);
    CHECK(n + KVS_FRAME_HEADER <= sizeof(out->buf));
    kvs_frame_put_header(out->buf, (uint32_t)n);
    kvs__command_response__pack(&r, out->buf + KVS_FRAME_HEADER);
    uv_buf_t b = uv_buf_init((char *)out->buf, (unsigned)(n + KVS_FRAME_HEADER));
    CHECK_EQ(uv_write(&out->w, (uv_stream_t *)&f->peer, &b, 1, on_written), 0);
}

static void on_alloc(uv_handle_t *h, size_t want, uv_buf_t *buf)
{
    fake_t *f = h->data;
    (void)want;
    *buf = uv_buf_init((char *)f->in + f->n_in, (unsigned)(sizeof(f->in) - f->n_in));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    fake_t *f = s->data;
    (void)buf;
    if (n < 0) {
        uv_read_stop(s);
        return;
    }
    f->n_in += (size_t)n;
    while (f->n_in >= KVS_FRAME_HEADER) {
        int compressed = 0;
        uint32_t len = kvs_frame_get_header(f->in, &compressed);
        if (f->n_in < KVS_FRAME_HEADER + len)
            break;
        Kvs__CommandRequest *req =
            kvs__command_request__unpack(NULL, len, f->in + KVS_FRAME_HEADER);
        CHECK(req != NULL);
        CHECK(req->ping != NULL); /* a probe asks nothing else */
        kvs__command_request__free_unpacked(req, NULL);
        if (!f->silent)
            answer(f, f->pings < f->fail_first ? 503 : 200);
        f->pings++;
        f->n_in -= KVS_FRAME_HEADER + len;
        memmove(f->in, f->in + KVS_FRAME_HEADER + len, f->n_in);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    fake_t *f = server->data;
    CHECK_EQ(status, 0);
    CHECK(!f->accepted); /* one connection per link, and the link stays up */
    CHECK_EQ(uv_pipe_init(server->loop, &f->peer, 0), 0);
    f->peer.data = f;
    CHECK_EQ(uv_accept(server, (uv_stream_t *)&f->peer), 0);
    f->accepted = 1;
    CHECK_EQ(uv_read_start((uv_stream_t *)&f->peer, on_alloc, on_read), 0);
}

static void t_init(tctx_t *t, const char *name)
{
    memset(t, 0, sizeof(*t));
    kvs_log_init("test", -1, KVS_LOG_INFO);
    KVS_TEST_FRESH_DIR(name);
    char text[512], err[512], path[400];
    snprintf(text, sizeof(text), "data_dir: %s\ncluster: {shards: %d}\n", kvs_test_dir(),
             WORKERS + 1);
    CHECK_EQ(kvs_config_parse("config.yaml", text, strlen(text), &t->cfg, err, sizeof(err)), 0);
    CHECK_EQ(uv_loop_init(&t->loop), 0);
    for (int i = 0; i < WORKERS; i++) {
        fake_t *f = &t->fake[i];
        snprintf(path, sizeof(path), "%s/shard-%d.sock", kvs_test_dir(), i);
        CHECK_EQ(uv_pipe_init(&t->loop, &f->server, 0), 0);
        f->server.data = f;
        CHECK_EQ(uv_pipe_bind(&f->server, path), 0);
        CHECK_EQ(uv_listen((uv_stream_t *)&f->server, 4, on_connection), 0);
    }
    uv_timer_init(&t->loop, &t->stopper);
    t->stopper.data = t;
}

/* Closes the test's handles and runs the loop dry: nothing of a freed
 * probe may be left in it. */
static void t_close(tctx_t *t)
{
    for (int i = 0; i < WORKERS; i++) {
        uv_close((uv_handle_t *)&t->fake[i].server, NULL);
        if (t->fake[i].accepted)
            uv_close((uv_handle_t *)&t->fake[i].peer, NULL);
    }
    uv_close((uv_handle_t *)&t->stopper, NULL);
    CHECK_EQ(uv_run(&t->loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&t->loop), 0);
    kvs_config_free(t->cfg);
}

static void on_done(void *arg)
{
    tctx_t *t = arg;
    t->done_calls++;
    for (int i = 0; i < WORKERS; i++)
        CHECK(t->fake[i].pings > t->fake[i].fail_first); /* each answered 200 by now */
    if (t->free_in_done) {
        router_probe_free(t->probe); /* as the master may: handles still closing */
        t->probe = NULL;
    }
}

static void on_wake(uv_timer_t *h)
{
    (void)h;
}

/* Runs the loop until *flag is set or `ms` passed (a timer wakes it:
 * the loop may have nothing else to wait for). */
static void run_until(tctx_t *t, int *flag, uint64_t ms)
{
    uv_timer_t wake;
    uv_timer_init(&t->loop, &wake);
    uv_timer_start(&wake, on_wake, 10, 10);
    uint64_t deadline = uv_now(&t->loop) + ms;
    while (!*flag && uv_now(&t->loop) < deadline)
        uv_run(&t->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&wake, NULL);
    uv_run(&t->loop, UV_RUN_NOWAIT); /* its close callback, before `wake` goes */
}

KVS_TEST(done_once_every_worker_answered_200)
{
    tctx_t t;
    t_init(&t, "probe-done");
    t.fake[1].fail_first = 3; /* still copying its snapshot */
    const uint32_t shards[] = {0, 1};
    CHECK_EQ(router_probe_start(&t.loop, t.cfg, shards, 2, on_done, &t, &t.probe), 0);
    CHECK_EQ(t.done_calls, 0); /* never from inside the start */
    t.free_in_done = 1;
    run_until(&t, &t.done_calls, 10000);
    CHECK_EQ(t.done_calls, 1);
    CHECK(t.probe == NULL);
    CHECK_EQ(t.fake[0].pings, 1); /* a worker that answered 200 is not asked again */
    CHECK_EQ(t.fake[1].pings, 4);
    t_close(&t);
    CHECK_EQ(t.done_calls, 1);
}

/* The master's membership change may stop a probe and free it in one
 * callback (a change that failed, then the next SIGHUP's router_master_change_begin). */
static void on_stopper(uv_timer_t *h)
{
    tctx_t *t = h->data;
    router_probe_stop(t->probe);
    router_probe_stop(t->probe); /* idempotent */
    router_probe_free(t->probe);
    t->probe = NULL;
}

KVS_TEST(freed_right_after_stop_while_its_handles_close)
{
    tctx_t t;
    t_init(&t, "probe-free");
    t.fake[0].fail_first = 1000000; /* never serves */
    const uint32_t shards[] = {0, 1};
    CHECK_EQ(router_probe_start(&t.loop, t.cfg, shards, 2, on_done, &t, &t.probe), 0);
    uv_timer_start(&t.stopper, on_stopper, 550, 0);
    uint64_t deadline = uv_now(&t.loop) + 10000;
    while (t.probe != NULL && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK(t.probe == NULL);
    int never = 0;
    /* A Ping written just before the stop may still be in the fake's
     * socket: it is read within a turn or two of this loop. */
    run_until(&t, &never, 30);
    int pings = t.fake[0].pings;
    CHECK(pings >= 2);          /* asked again and again until stopped */
    run_until(&t, &never, 300); /* three probe periods: nothing is asked any more */
    CHECK_EQ(t.fake[0].pings, pings);
    CHECK_EQ(t.done_calls, 0);
    t_close(&t);
    CHECK_EQ(t.done_calls, 0);
}

/* A hung worker is asked once: no Ping piles up behind the unanswered
 * one (each link has at most one in flight) within its timeout. */
KVS_TEST(a_hung_worker_is_asked_once_at_a_time)
{
    tctx_t t;
    t_init(&t, "probe-hung");
    t.fake[0].silent = 1;
    const uint32_t shards[] = {0, 1};
    CHECK_EQ(router_probe_start(&t.loop, t.cfg, shards, 2, on_done, &t, &t.probe), 0);
    int never = 0;
    run_until(&t, &never, 1000); /* ten probe periods, under the link's 2 s timeout */
    CHECK_EQ(t.fake[0].pings, 1);
    CHECK_EQ(t.fake[1].pings, 1); /* answered 200: not asked again */
    CHECK_EQ(t.done_calls, 0);
    router_probe_free(t.probe);
    t_close(&t);
    CHECK_EQ(t.done_calls, 0);
}

KVS_TEST(a_shard_not_served_here_fails_the_start)
{
    tctx_t t;
    t_init(&t, "probe-remote");
    kvs_config_free(t.cfg);
    char text[600], err[512];
    snprintf(text, sizeof(text),
             "data_dir: %s\nnode: {name: a}\ncluster:\n  shards: 3\n  nodes:\n"
             "    - {name: a, address: \"127.0.0.1:7100\", shards: [0, 1]}\n"
             "    - {name: b, address: \"127.0.0.1:7200\", shards: [0, 1, 2]}\n",
             kvs_test_dir());
    CHECK_EQ(kvs_config_parse("config.yaml", text, strlen(text), &t.cfg, err, sizeof(err)), 0);
    const uint32_t shards[] = {0, 2};
    CHECK(router_probe_start(&t.loop, t.cfg, shards, 2, on_done, &t, &t.probe) != 0);
    CHECK(t.probe != NULL); /* stopped; freed like any */
    router_probe_free(t.probe);
    t_close(&t);
    CHECK_EQ(t.done_calls, 0);
}

KVS_TEST_MAIN(KVS_CASE(done_once_every_worker_answered_200),
              KVS_CASE(freed_right_after_stop_while_its_handles_close),
              KVS_CASE(a_hung_worker_is_asked_once_at_a_time),
              KVS_CASE(a_shard_not_served_here_fails_the_start))
