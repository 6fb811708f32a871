/*
 * test_link: router_link's connection lifecycle on a real loop, against a
 * listener of the test's own on 127.0.0.1: a link named by host name
 * resolves it without blocking the loop and comes up, a link stopped while
 * its lookup is in flight calls nothing back and leaves a loop that closes
 * cleanly, and stopping a link that never started (a router whose start-up
 * failed half-way) or stopping twice is harmless. An answer larger than
 * max_frame fails its own request and no other: the link stays up. A
 * worker answering slowly but steadily is not timed out; one that stops
 * answering is.
 *
 * "localhost" is the one name used: it resolves from /etc/hosts, no DNS
 * server is asked. It may resolve to ::1 before 127.0.0.1, which the link
 * must get past by trying the next address.
 */
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_test.h"
#include "kvs.pb-c.h"
#include "router_link.h"

#include <uv.h>

typedef struct {
    uv_loop_t loop;
    uv_tcp_t server;
    uv_tcp_t peer;
    int accepted;
    int ups, downs, replies;
    uint16_t port;
    struct {
        uintptr_t ctx;
        size_t len;
        int has_payload;
        char failure[400];
    } got[8]; /* the first replies, in order */
} tctx_t;

static tctx_t *g; /* link callbacks carry no context of their own */

static void on_state(router_link_t *l, int up)
{
    (void)l;
    if (up)
        g->ups++;
    else
        g->downs++;
}

static void on_reply(void *ctx, uint32_t part, const uint8_t *payload, size_t len,
                     const char *failure)
{
    (void)part;
    if (g->replies < 8) {
        g->got[g->replies].ctx = (uintptr_t)ctx;
        g->got[g->replies].len = len;
        g->got[g->replies].has_payload = payload != NULL;
        snprintf(g->got[g->replies].failure, sizeof(g->got[0].failure), "%s",
                 failure ? failure : "");
    }
    g->replies++;
}

static int rude;
static void rude_connection(tctx_t *t, uv_stream_t *server);

static void on_connection(uv_stream_t *server, int status)
{
    tctx_t *t = server->data;
    CHECK_EQ(status, 0);
    if (rude) {
        rude_connection(t, server);
        return;
    }
    CHECK(!t->accepted);
    uv_tcp_init(&t->loop, &t->peer);
    CHECK_EQ(uv_accept(server, (uv_stream_t *)&t->peer), 0);
    t->accepted = 1;
}

static void t_init(tctx_t *t)
{
    memset(t, 0, sizeof(*t));
    g = t;
    kvs_log_init("test", -1, KVS_LOG_INFO);
    CHECK_EQ(uv_loop_init(&t->loop), 0);
    struct sockaddr_in sa;
    CHECK_EQ(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    CHECK_EQ(uv_tcp_init(&t->loop, &t->server), 0);
    t->server.data = t;
    CHECK_EQ(uv_tcp_bind(&t->server, (const struct sockaddr *)&sa, 0), 0);
    CHECK_EQ(uv_listen((uv_stream_t *)&t->server, 8, on_connection), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    CHECK_EQ(uv_tcp_getsockname(&t->server, (struct sockaddr *)&ss, &len), 0);
    t->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Closes the test's handles, runs the loop dry, and checks that nothing of
 * the link is left in it. */
static void t_close(tctx_t *t)
{
    uv_close((uv_handle_t *)&t->server, NULL);
    if (t->accepted)
        uv_close((uv_handle_t *)&t->peer, NULL);
    CHECK_EQ(uv_run(&t->loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&t->loop), 0);
}

static void link_start_timeout(tctx_t *t, router_link_t *l, const char *host, uint64_t timeout_ms)
{
    char text[300], err[256];
    kvs_addr_t addr;
    snprintf(text, sizeof(text), "%s:%u", host, t->port);
    CHECK_EQ(kvs_addr_parse(text, 0, &addr, err, sizeof(err)), 0);
    CHECK_EQ(
        router_link_start(l, &t->loop, 7, &addr, timeout_ms, 4096, NULL, NULL, on_reply, on_state),
        0);
}

static void link_start(tctx_t *t, router_link_t *l, const char *host)
{
    link_start_timeout(t, l, host, 1000);
}

/* Starts `l` on 127.0.0.1 with a `timeout_ms` timeout and runs the loop
 * until it is up and the test's listener accepted it. */
static void link_start_up(tctx_t *t, router_link_t *l, uint64_t timeout_ms)
{
    link_start_timeout(t, l, "127.0.0.1", timeout_ms);
    while (!(l->up && t->accepted))
        uv_run(&t->loop, UV_RUN_ONCE);
}

KVS_TEST(name_is_resolved_and_link_comes_up)
{
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start(&t, &l, "localhost");
    CHECK(l.resolving); /* asynchronous: not resolved inside router_link_start */
    CHECK(!l.up);
    uint64_t deadline = uv_now(&t.loop) + 10000;
    while (!(l.up && t.accepted) && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK(l.up);
    CHECK(t.accepted);
    CHECK_EQ(t.ups, 1);
    CHECK(!l.resolving);
    CHECK(l.ai_list == NULL); /* the addresses are let go once up */
    router_link_stop(&l);
    router_link_stop(&l); /* twice is harmless */
    t_close(&t);
    CHECK_EQ(t.downs, 0);
    CHECK_EQ(t.replies, 0);
}

/* on_closed: counted, and libuv must be done with the link by then. */
static int closed_calls;
static void on_link_closed(router_link_t *l)
{
    CHECK(l->stopping);
    CHECK(!l->resolving);
    CHECK(!l->connecting);
    CHECK(uv_is_closing((uv_handle_t *)&l->timer));
    closed_calls++;
}

KVS_TEST(numeric_address_is_not_resolved)
{
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start(&t, &l, "127.0.0.1");
    CHECK(!l.resolving);
    CHECK(l.connecting);
    while (!l.up)
        uv_run(&t.loop, UV_RUN_ONCE);
    closed_calls = 0;
    l.on_closed = on_link_closed;
    router_link_stop(&l);
    CHECK_EQ(closed_calls, 0); /* its timer closes on the loop */
    router_link_stop(&l);
    t_close(&t);
    CHECK_EQ(closed_calls, 1);
}

KVS_TEST(stop_while_resolving)
{
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start(&t, &l, "localhost");
    CHECK(l.resolving);
    closed_calls = 0;
    l.on_closed = on_link_closed; /* only once the lookup returned too */
    router_link_stop(&l);
    /* The lookup completes (or is cancelled) on the loop, and nothing else
     * happens: no connection, no state change. */
    t_close(&t);
    CHECK_EQ(closed_calls, 1);
    CHECK(!l.resolving);
    CHECK(!t.accepted);
    CHECK_EQ(t.ups, 0);
    CHECK_EQ(t.downs, 0);
    CHECK(l.conn == NULL);
    CHECK(l.ai_list == NULL);
}

static void on_unix_connection(uv_stream_t *server, int status)
{
    (void)server;
    (void)status; /* left in the backlog: the server closes first */
}

/* A unix socket's connect is called back on the loop, after the stop:
 * on_closed waits for it. */
KVS_TEST(stop_while_connecting)
{
    tctx_t t;
    t_init(&t);
    router_link_t l;
    char path[64], err[256], text[80];
    snprintf(path, sizeof(path), "/tmp/kvs-test-link-%d.sock", (int)getpid());
    uv_pipe_t server;
    CHECK_EQ(uv_pipe_init(&t.loop, &server, 0), 0);
    unlink(path);
    CHECK_EQ(uv_pipe_bind(&server, path), 0);
    CHECK_EQ(uv_listen((uv_stream_t *)&server, 8, on_unix_connection), 0);
    snprintf(text, sizeof(text), "unix:%s", path);
    kvs_addr_t addr;
    CHECK_EQ(kvs_addr_parse(text, 0, &addr, err, sizeof(err)), 0);
    CHECK_EQ(router_link_start(&l, &t.loop, 7, &addr, 1000, 4096, NULL, NULL, on_reply, on_state),
             0);
    CHECK(l.connecting);
    closed_calls = 0;
    l.on_closed = on_link_closed;
    router_link_stop(&l);
    uv_close((uv_handle_t *)&server, NULL);
    t_close(&t);
    unlink(path);
    CHECK_EQ(closed_calls, 1);
    CHECK(!l.connecting);
    CHECK_EQ(t.ups, 0);
}

KVS_TEST(stop_of_a_link_never_started)
{
    router_link_t l;
    memset(&l, 0, sizeof(l)); /* what a router's calloc'd link array holds */
    router_link_stop(&l);
    router_link_stop(&l);
    CHECK(!l.stopping); /* untouched */
}

static void on_peer_written(uv_write_t *w, int status)
{
    CHECK_EQ(status, 0);
    free(w);
}

/* Queues `n` bytes (which must stay valid) to the accepted peer; the loop
 * writes them as the link reads. */
static void peer_write(tctx_t *t, const void *p, size_t n)
{
    uv_write_t *w = malloc(sizeof(*w));
    CHECK(w != NULL);
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    CHECK_EQ(uv_write(w, (uv_stream_t *)&t->peer, &b, 1, on_peer_written), 0);
}

static void peer_frame(tctx_t *t, const void *p, uint32_t n)
{
    static uint8_t hdrs[8][KVS_FRAME_HEADER];
    static unsigned next;
    uint8_t *hdr = hdrs[next++ % 8];
    kvs_frame_put_header(hdr, n);
    peer_write(t, hdr, KVS_FRAME_HEADER);
    if (n > 0)
        peer_write(t, p, n);
}

/* A worker answers three pipelined requests, the second with a frame
 * larger than the link's max_frame (4096): that request alone fails, with
 * the answer's size; the first and third get their answers and the link
 * never goes down. */
KVS_TEST(oversized_answer_fails_only_its_request)
{
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start_up(&t, &l, 1000);
    for (uintptr_t i = 1; i <= 3; i++)
        CHECK_EQ(router_link_send(&l, (const uint8_t *)"req", 3, (void *)i, 0), 0);
    static uint8_t big[20000];
    memset(big, 'x', sizeof(big));
    peer_frame(&t, "first", 5);
    peer_frame(&t, big, sizeof(big));
    peer_frame(&t, "third", 5);
    uint64_t deadline = uv_now(&t.loop) + 10000;
    while (t.replies < 3 && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK_EQ(t.replies, 3);
    CHECK_EQ(t.got[0].ctx, 1);
    CHECK(t.got[0].has_payload);
    CHECK_EQ(t.got[0].len, 5);
    CHECK_EQ(t.got[1].ctx, 2);
    CHECK(!t.got[1].has_payload);
    CHECK_EQ(t.got[1].len, sizeof(big));
    CHECK_CONTAINS(t.got[1].failure, "max_frame");
    CHECK_CONTAINS(t.got[1].failure, "shard 7");
    CHECK_EQ(t.got[2].ctx, 3);
    CHECK(t.got[2].has_payload);
    CHECK_EQ(t.got[2].len, 5);
    CHECK(l.up);
    CHECK_EQ(t.downs, 0);
    CHECK(l.conn->dec.cap <= 4096 + KVS_FRAME_HEADER + 65536); /* nothing of it was kept */
    router_link_stop(&l);
    t_close(&t);
}

/* A request frame past max_frame (4096 here) is refused before anything
 * is queued: the worker would close the connection on its header, failing
 * every request on the link. The link stays up and carries the next one. */
KVS_TEST(request_past_max_frame_is_refused_and_the_link_stays_up)
{
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start_up(&t, &l, 1000);
    static uint8_t big[4097];
    memset(big, 'x', sizeof(big));
    CHECK_EQ(router_link_send(&l, big, sizeof(big), (void *)1, 0), KVS_ETOOBIG);
    Kvs__Value v = KVS__VALUE__INIT;
    v.kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    v.binary_value.data = big;
    v.binary_value.len = 4090; /* 4090 + tag + 2-byte length: 4093 bytes, then 4097 */
    CHECK_EQ(router_link_send_msg(&l, &v.base, (void *)2, 0), 0);
    v.binary_value.len = 4094;
    CHECK_EQ(router_link_send_msg(&l, &v.base, (void *)3, 0), KVS_ETOOBIG);
    CHECK_EQ(l.count, 1);
    CHECK_EQ(router_link_send(&l, big, 4096, (void *)4, 0), 0); /* exactly max_frame: sent */
    CHECK_EQ(l.count, 2);
    peer_frame(&t, "a", 1);
    peer_frame(&t, "b", 1);
    uint64_t deadline = uv_now(&t.loop) + 10000;
    while (t.replies < 2 && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK_EQ(t.replies, 2);
    CHECK_EQ(t.got[0].ctx, 2);
    CHECK_EQ(t.got[1].ctx, 4);
    CHECK(l.up);
    CHECK_EQ(t.downs, 0);
    router_link_stop(&l);
    t_close(&t);
}

/* The worker answers at 0.6 s and 1.2 s after three requests were sent,
 * router.timeout being 1 s: the second answer comes later than 1 s after
 * its request but 0.6 s after the answer before it, so the worker is
 * making progress and the link stays up; the third, never answered, fails
 * 1 s after the second answer, and only then does the link go down. */
static void answer_at(uv_timer_t *timer)
{
    peer_frame(timer->data, "answer", 6);
}

KVS_TEST(timeout_counts_from_the_last_answer)
{
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start_up(&t, &l, 1000);
    for (uintptr_t i = 1; i <= 3; i++)
        CHECK_EQ(router_link_send(&l, (const uint8_t *)"req", 3, (void *)i, 0), 0);
    uint64_t sent = uv_now(&t.loop);
    uv_timer_t first, second;
    uv_timer_init(&t.loop, &first);
    uv_timer_init(&t.loop, &second);
    first.data = second.data = &t;
    uv_timer_start(&first, answer_at, 600, 0);
    uv_timer_start(&second, answer_at, 1200, 0);
    uint64_t deadline = sent + 10000;
    while (t.replies < 3 && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK_EQ(t.replies, 3);
    CHECK(t.got[0].has_payload);
    CHECK(t.got[1].has_payload); /* answered 1.2 s after it was sent: still in time */
    CHECK(!t.got[2].has_payload);
    CHECK_CONTAINS(t.got[2].failure, "no answer within router.timeout");
    CHECK(uv_now(&t.loop) - sent >= 2200); /* 1 s after the second answer */
    CHECK_EQ(t.downs, 1);
    router_link_stop(&l);
    uv_close((uv_handle_t *)&first, NULL);
    uv_close((uv_handle_t *)&second, NULL);
    t_close(&t);
}

/* router.timeout fails the requests in flight, which may or may not have
 * been applied, and takes the link down. The requests are told the state
 * alone (a write's answer adds that it may have been applied, in
 * router_route; a read's must not). A request made before the link is up
 * again is refused unsent: what it is told (last_error) is why the link
 * is down, never the fate of the earlier ones. */
KVS_TEST(requests_after_a_timeout_are_not_told_they_may_have_been_applied)
{
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start_up(&t, &l, 300);
    CHECK_EQ(router_link_send(&l, (const uint8_t *)"req", 3, (void *)1, 0), 0);
    uint64_t deadline = uv_now(&t.loop) + 10000;
    while (t.replies < 1 && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK_EQ(t.replies, 1);
    CHECK(!t.got[0].has_payload);
    CHECK_CONTAINS(t.got[0].failure, "no answer within router.timeout (300 ms)");
    CHECK(strstr(t.got[0].failure, "may or may not") == NULL);
    CHECK(!l.up);
    CHECK_EQ(router_link_send(&l, (const uint8_t *)"req", 3, (void *)2, 0), KVS_ECLOSED);
    CHECK_STR(l.last_error, "its link was reset after a request got no answer within "
                            "router.timeout (300 ms), and is reconnecting");
    router_link_stop(&l);
    t_close(&t);
}

/* A "worker" that accepts, sends one frame nobody asked for and closes;
 * once `rude_hold` is set it keeps the connection instead (rude_held). */
static int rude_accepts, rude_hold;
static uv_tcp_t *rude_held;

static void on_rude_closed(uv_handle_t *h)
{
    free(h);
}

static void rude_connection(tctx_t *t, uv_stream_t *server)
{
    static uint8_t unasked[KVS_FRAME_HEADER + 2] = {0, 0, 0, 2, 0x08, 0x00}; /* status 0 */
    uv_tcp_t *c = malloc(sizeof(*c));
    CHECK(c != NULL);
    uv_tcp_init(&t->loop, c);
    CHECK_EQ(uv_accept(server, (uv_stream_t *)c), 0);
    rude_accepts++;
    if (rude_hold) {
        CHECK(rude_held == NULL);
        rude_held = c;
        return;
    }
    uv_buf_t b = uv_buf_init((char *)unasked, sizeof(unasked));
    CHECK_EQ(uv_try_write((uv_stream_t *)c, &b, 1), (int)sizeof(unasked));
    uv_close((uv_handle_t *)c, on_rude_closed);
}

static void on_tick(uv_timer_t *h)
{
    (void)h;
}

/* Runs the loop for `ms` (a timer keeps it from blocking longer). */
static void run_for(tctx_t *t, uint64_t ms)
{
    uv_timer_t tick;
    uv_timer_init(&t->loop, &tick);
    uv_timer_start(&tick, on_tick, ms, 0);
    uint64_t end = uv_now(&t->loop) + ms;
    while (uv_now(&t->loop) < end)
        uv_run(&t->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&t->loop, UV_RUN_NOWAIT); /* finishes the close: `tick` is on this stack */
}

/* A peer that takes each connection and drops it at once (here after an
 * answer nobody asked for) is dialled with a growing backoff: about five
 * times in 1.5 s (50, 100, 200, 400, 800 ms), not every 50 ms, each time
 * an "up" and a "down" in the log. A connection that then stays up for a
 * second is a working link again: when it drops, the link reconnects
 * within the shortest backoff. */
KVS_TEST(a_peer_that_drops_every_connection_is_dialled_with_backoff)
{
    tctx_t t;
    t_init(&t);
    rude = 1;
    router_link_t l;
    link_start(&t, &l, "127.0.0.1");
    run_for(&t, 1500);
    CHECK(rude_accepts >= 3);
    CHECK(rude_accepts <= 7);
    CHECK(t.ups >= 3 && t.ups <= 7);
    CHECK_CONTAINS(l.last_error, "nobody asked for");
    rude_hold = 1;
    uint64_t deadline = uv_now(&t.loop) + 5000;
    while (!(l.up && rude_held != NULL) && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK(l.up && rude_held != NULL);
    run_for(&t, 1100);
    CHECK(l.up);
    uv_close((uv_handle_t *)rude_held, on_rude_closed); /* gone after a good while */
    rude_held = NULL;
    int before = rude_accepts;
    uint64_t closed_at = uv_now(&t.loop);
    while (rude_accepts == before && uv_now(&t.loop) < closed_at + 5000)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK_EQ(rude_accepts, before + 1);
    CHECK(uv_now(&t.loop) - closed_at < 500);
    router_link_stop(&l);
    if (rude_held != NULL)
        uv_close((uv_handle_t *)rude_held, on_rude_closed);
    t_close(&t);
}

/* ---- the hello: an avoided replica's new connection ------------------------ */

static uint8_t peer_in[256];
static size_t peer_in_len;
static int peer_closes;

static void on_peer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    *buf = uv_buf_init((char *)peer_in + peer_in_len, (unsigned)(sizeof(peer_in) - peer_in_len));
}

static void on_peer_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)s;
    (void)buf;
    if (n > 0)
        peer_in_len += (size_t)n;
}

static void on_peer_closed(uv_handle_t *h)
{
    (void)h;
    peer_closes++;
}

/* Drops the accepted peer's connection and waits for the link's next one,
 * whose first bytes it then waits for: returns with the peer reading. */
static void reconnect_and_read(tctx_t *t, router_link_t *l, size_t want)
{
    int closes = peer_closes;
    uv_close((uv_handle_t *)&t->peer, on_peer_closed);
    while (peer_closes == closes)
        uv_run(&t->loop, UV_RUN_ONCE);
    t->accepted = 0;
    peer_in_len = 0;
    uint64_t deadline = uv_now(&t->loop) + 5000;
    while (!(t->accepted && l->up) && uv_now(&t->loop) < deadline)
        uv_run(&t->loop, UV_RUN_ONCE);
    CHECK(t->accepted && l->up);
    CHECK_EQ(uv_read_start((uv_stream_t *)&t->peer, on_peer_alloc, on_peer_read), 0);
    while (peer_in_len < want && uv_now(&t->loop) < deadline)
        run_for(t, 10); /* a timer: nothing else may wake the loop */
}

/* A link router_replica avoids keeps its avoidance across a reconnect and
 * asks the new connection's worker with a Ping of its own: a 503 (or a
 * peer that drops it) is a failure (the avoidance goes on, renewed if it
 * ran out), a 200 ends it; no request's callback hears of it. A link
 * nobody avoids sends nothing of its own. */
KVS_TEST(an_avoided_link_asks_its_new_worker_and_only_a_200_ends_the_avoidance)
{
    static const uint8_t ping[] = {0, 0, 0, 2, 0x5a, 0x00};
    static const uint8_t busy[] = {0, 0, 0, 3, 0x08, 0xf7, 0x03}; /* status 503 */
    static const uint8_t ok[] = {0, 0, 0, 3, 0x08, 0xc8, 0x01};   /* status 200 */
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start_up(&t, &l, 1000);

    reconnect_and_read(&t, &l, 0); /* not avoided: no hello */
    run_for(&t, 200);
    CHECK_EQ(peer_in_len, 0);
    CHECK(!router_link_asking(&l));

    l.avoid_ms = 4000;
    l.avoid_until = uv_now(&t.loop) + 4000;
    uint64_t until = l.avoid_until;
    reconnect_and_read(&t, &l, sizeof(ping));
    CHECK_EQ(peer_in_len, sizeof(ping));
    CHECK(memcmp(peer_in, ping, sizeof(ping)) == 0);
    CHECK_EQ(l.avoid_until, until); /* a new connection alone ends nothing */
    CHECK(router_link_asking(&l));  /* router_replica passes it over until the Ping is answered */
    peer_write(&t, busy, sizeof(busy));
    run_for(&t, 200);
    CHECK_EQ(l.avoid_until, until);
    CHECK_EQ(l.avoid_ms, 4000);
    CHECK(!router_link_asking(&l));

    reconnect_and_read(&t, &l, sizeof(ping)); /* asked again; the peer drops it */
    CHECK(router_link_asking(&l));
    int closes = peer_closes;
    t.accepted = 0;
    uv_close((uv_handle_t *)&t.peer, on_peer_closed);
    while (peer_closes == closes)
        uv_run(&t.loop, UV_RUN_ONCE);
    uint64_t deadline = uv_now(&t.loop) + 5000;
    while (l.up && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK(!l.up);
    CHECK(!router_link_asking(&l));
    CHECK_EQ(l.avoid_until, until);
    while (!(t.accepted && l.up) && uv_now(&t.loop) < deadline) /* it reconnects */
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK(l.up && router_link_asking(&l));

    /* A 503 after the avoidance ran out while the Ping was on its way is a
     * failure like a request's: the avoidance is renewed, doubled. */
    l.avoid_ms = 500;
    l.avoid_until = uv_now(&t.loop) + 50;
    reconnect_and_read(&t, &l, sizeof(ping));
    CHECK(router_link_asking(&l));
    run_for(&t, 100);
    CHECK(l.avoid_until <= uv_now(&t.loop) && router_link_asking(&l));
    peer_write(&t, busy, sizeof(busy));
    run_for(&t, 200);
    CHECK(!router_link_asking(&l));
    CHECK_EQ(l.avoid_ms, 1000);
    CHECK(l.avoid_until > uv_now(&t.loop) + 500);

    reconnect_and_read(&t, &l, sizeof(ping)); /* asked again */
    CHECK_EQ(peer_in_len, sizeof(ping));
    peer_write(&t, ok, sizeof(ok));
    run_for(&t, 200);
    CHECK_EQ(l.avoid_until, 0);
    CHECK_EQ(l.avoid_ms, 0);
    CHECK(!router_link_asking(&l));
    CHECK(l.up);
    CHECK_EQ(t.replies, 0);
    router_link_stop(&l);
    t_close(&t);
}

/* A link reset because its worker left a request unanswered for
 * router.timeout asks the next connection's worker with a Ping too: a
 * worker that still hangs leaves it unanswered, so the link counts as
 * avoided (router_link_asking) until the Ping times out, which renews the
 * avoidance, and the link starts over and asks again. No client's request
 * waits out router.timeout there meanwhile. */
KVS_TEST(a_link_reset_as_hung_asks_its_worker_on_the_next_connection)
{
    static const uint8_t ping[] = {0, 0, 0, 2, 0x5a, 0x00};
    tctx_t t;
    t_init(&t);
    router_link_t l;
    link_start_up(&t, &l, 300);
    router_link_avoid(&l, uv_now(&t.loop)); /* what router_send does at a failure */
    CHECK_EQ(router_link_send(&l, (const uint8_t *)"req", 3, (void *)1, 0), 0);
    uint64_t deadline = uv_now(&t.loop) + 10000;
    while (t.replies < 1 && uv_now(&t.loop) < deadline)
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK_EQ(t.replies, 1);
    CHECK_CONTAINS(t.got[0].failure, "no answer within router.timeout");
    CHECK(l.hung && !l.up);
    reconnect_and_read(&t, &l, sizeof(ping));
    CHECK_EQ(peer_in_len, sizeof(ping));
    CHECK(memcmp(peer_in, ping, sizeof(ping)) == 0);
    CHECK(router_link_asking(&l));
    uint64_t first_until = l.avoid_until;
    while (l.up && uv_now(&t.loop) < deadline) /* the worker still hangs */
        uv_run(&t.loop, UV_RUN_ONCE);
    CHECK(uv_now(&t.loop) > first_until); /* ran out while only the Ping kept it avoided */
    CHECK(!l.up && l.hung);
    CHECK_EQ(l.avoid_ms, 1000); /* the unanswered Ping renewed it, doubled */
    CHECK(l.avoid_until > uv_now(&t.loop));
    CHECK_EQ(t.replies, 1);                   /* the Ping's failure is nobody's answer */
    reconnect_and_read(&t, &l, sizeof(ping)); /* asked again */
    CHECK(memcmp(peer_in, ping, sizeof(ping)) == 0);
    CHECK(router_link_asking(&l));
    router_link_stop(&l);
    t_close(&t);
}

/* One failure event counts once: the requests in flight with the first
 * failure (a connection lost with 8 pending) fail while the link is
 * already avoided and change nothing; a failure after the avoidance ran
 * out doubles it, up to 30 s; an answer ends it. */
KVS_TEST(avoidance_doubles_per_failure_event_not_per_request)
{
    router_link_t l;
    memset(&l, 0, sizeof(l));
    router_link_avoid(&l, 1000);
    CHECK_EQ(l.avoid_ms, 500);
    CHECK_EQ(l.avoid_until, 1500);
    for (int i = 0; i < 7; i++)
        router_link_avoid(&l, 1000 + (uint64_t)i);
    CHECK_EQ(l.avoid_ms, 500);
    CHECK_EQ(l.avoid_until, 1500);
    router_link_avoid(&l, 1499);
    CHECK_EQ(l.avoid_until, 1500);
    router_link_avoid(&l, 1500);
    CHECK_EQ(l.avoid_ms, 1000);
    CHECK_EQ(l.avoid_until, 2500);
    uint64_t now = 2500;
    for (int i = 0; i < 10; i++) {
        router_link_avoid(&l, now);
        now = l.avoid_until;
    }
    CHECK_EQ(l.avoid_ms, 30000);
    router_link_trust(&l);
    CHECK_EQ(l.avoid_ms, 0);
    CHECK_EQ(l.avoid_until, 0);
    router_link_avoid(&l, now);
    CHECK_EQ(l.avoid_ms, 500);
}

KVS_TEST_MAIN(KVS_CASE(name_is_resolved_and_link_comes_up),
              KVS_CASE(numeric_address_is_not_resolved), KVS_CASE(stop_while_resolving),
              KVS_CASE(stop_while_connecting), KVS_CASE(stop_of_a_link_never_started),
              KVS_CASE(oversized_answer_fails_only_its_request),
              KVS_CASE(request_past_max_frame_is_refused_and_the_link_stays_up),
              KVS_CASE(timeout_counts_from_the_last_answer),
              KVS_CASE(requests_after_a_timeout_are_not_told_they_may_have_been_applied),
              KVS_CASE(a_peer_that_drops_every_connection_is_dialled_with_backoff),
              KVS_CASE(an_avoided_link_asks_its_new_worker_and_only_a_200_ends_the_avoidance),
              KVS_CASE(a_link_reset_as_hung_asks_its_worker_on_the_next_connection),
              KVS_CASE(avoidance_doubles_per_failure_event_not_per_request))
