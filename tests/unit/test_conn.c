/*
 * test_conn: kvs_conn and kvs_flusher on a real libuv loop.
 *
 * Each case starts an echo-style server (kvs_listen on 127.0.0.1 port 0 or
 * a unix socket in a temporary directory; every frame is echoed back by
 * appending header + payload to the connection's output and queueing it on
 * a kvs_flusher) and runs a plain blocking client in a second thread. The
 * client's checks run in its own thread (a failed CHECK aborts the whole
 * process); when it is done it wakes the loop with a uv_async, which closes
 * every handle so uv_run returns, and the server-side checks run after.
 *
 * Every loop run is bounded: a 5-second timer aborts the case with the
 * server's state, so a hang fails loudly instead of stalling ctest.
 */
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_test.h"
#include "kvs_time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define DEADLINE_MS 5000
/* The groups' sweep runs this often here (once a second in the servers):
 * the timeout cases wait for their timeout and a sweep or two after it. */
#define SWEEP_MS 200

typedef struct server_s server_t;

/* The client side of a case: runs in its own thread on a connected socket. */
typedef void (*client_fn)(server_t *s, int fd);

struct server_s {
    uv_loop_t loop;
    kvs_listener_t lis;
    kvs_flusher_t flusher;
    uv_timer_t deadline;
    uv_timer_t tick; /* optional periodic hook (on_tick) */
    uv_check_t turn; /* counts the loop's turns (turns), after each poll */
    uv_async_t done;
    kvs_conn_t conn;
    pthread_t thread;

    /* Set by the case before server_run. */
    int is_unix;
    uint32_t max_frame;
    size_t high_water; /* 0: the connection's default */
    int send_buffer;   /* 0: the kernel's default */
    int client_rcvbuf; /* 0: the kernel's default */
    client_fn client;
    kvs_conn_frame_cb on_frame;
    kvs_conn_ready_cb on_delivered;
    kvs_flusher_cb before;
    void (*on_tick)(server_t *s);
    unsigned tick_ms;
    void (*on_start)(server_t *s); /* optional: once, after the group is set up */
    int use_group;                 /* the connection joins a group with `limits` */
    int unproven;                  /* the connection starts unproven (a frame "auth" proves it) */
    kvs_conn_limits_t limits;      /* for use_group */
    kvs_conn_group_t group;
    size_t max_write;      /* 0: the connection's default */
    uint64_t deadline_ms;  /* the case's bound (0: DEADLINE_MS) */
    size_t hold_per_frame; /* echo also holds this many bytes per frame (kvs_conn_hold) */
    size_t output_cap;     /* kvs_conn_cap_output after joining (0: none) */

    /* Where the client connects. */
    uint16_t port;
    char dir[64];
    char path[108];

    /* What happened, recorded on the loop thread. */
    int accepted, closed, closed_before_done;
    int frames, errors, last_err;
    uint32_t bad_len;
    char events[64];
    size_t n_events;

    /* Case-specific state. */
    size_t patch_pos;
    int patch_pending;
    int stopped, frames_after_stop;
    size_t max_backlog, max_dec_cap;
    size_t charged_at_full; /* the input charged when the output first reached the mark */
    int full_seen;
    size_t capped_backlog; /* max_backlog when the cap came off */
    size_t min_hard;       /* the lowest hard limit a tick saw */
    atomic_int drain;
    int ticks_paused, resumed;
    int runs, run_frames, max_run;                   /* on_delivered: runs of frames */
    int turns, frame_turn, same_turn, max_same_turn; /* frames per loop turn */
    uint64_t frame_ns;                               /* costly_frame: each one's cost */
    uint64_t turn_budget_ns;                         /* the connection's (0: the default) */
    uint64_t group_turn_ns;                          /* its group's bound (use_group) */
    uint64_t share_ns;                               /* ... its shared slice (use_group) */
};

/* ---- server side --------------------------------------------------------- */

static void record(server_t *s, char e)
{
    CHECK(s->n_events + 1 < sizeof(s->events));
    s->events[s->n_events++] = e;
    s->events[s->n_events] = '\0';
}

/* Appends one frame holding p[0..len) to `out`. */
static void append_frame(kvs_buf_t *out, const void *p, size_t len)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_put_header(hdr, (uint32_t)len);
    CHECK_EQ(kvs_buf_append(out, hdr, sizeof(hdr)), 0);
    CHECK_EQ(kvs_buf_append(out, p, len), 0);
}

/* Queues one frame holding `p[0..len)` on `c`. */
static void send_back(kvs_conn_t *c, const void *p, size_t len)
{
    append_frame(&c->out, p, len);
    kvs_conn_queue(c);
}

static void echo_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    s->frames++;
    send_back(c, p, len);
}

/* Either way reading has stopped. A framing error gets one last response
 * ("bye"); then the connection closes once what it owes is written. */
static void on_conn_error(kvs_conn_t *c, int err)
{
    server_t *s = c->data;
    s->errors++;
    s->last_err = err;
    CHECK(!(c->flags & KVS_CONN_READING));
    if (err != KVS_ECLOSED) {
        s->bad_len = c->dec.bad_len;
        send_back(c, "bye", 3);
    }
    kvs_conn_close_after_flush(c);
}

static void on_conn_close(kvs_conn_t *c)
{
    server_t *s = c->data;
    CHECK(!s->closed); /* exactly once */
    s->closed = 1;
}

static void on_connection(uv_stream_t *server, int status)
{
    server_t *s = server->data;
    CHECK_EQ(status, 0);
    CHECK(!s->accepted); /* one client per case */
    CHECK_EQ(kvs_conn_init(&s->conn, &s->loop, s->is_unix, s->max_frame, s->on_frame, on_conn_error,
                           on_conn_close),
             0);
    s->conn.data = s;
    s->conn.flusher = &s->flusher;
    s->conn.on_delivered = s->on_delivered;
    s->conn.turn_budget_ns = s->turn_budget_ns;
    if (s->use_group)
        kvs_conn_join(&s->conn, &s->group);
    if (s->high_water != 0)
        s->conn.high_water = s->high_water;
    if (s->output_cap != 0)
        kvs_conn_cap_output(&s->conn, s->output_cap);
    if (s->max_write != 0)
        s->conn.max_write = s->max_write;
    CHECK_EQ(kvs_conn_accept(&s->conn, server), 0);
    CHECK(s->conn.flags & KVS_CONN_READING);
    if (s->unproven)
        kvs_conn_set_unproven(&s->conn, 1);
    if (s->send_buffer != 0) {
        int v = s->send_buffer;
        CHECK_EQ(uv_send_buffer_size(&s->conn.h.handle, &v), 0);
    }
    s->accepted = 1;
}

static void on_deadline(uv_timer_t *t)
{
    server_t *s = t->data;
    fprintf(stderr,
            "case timed out after %d ms: accepted %d closed %d frames %d errors %d "
            "reading %d backlog %zu stopped %d events \"%s\"\n",
            s->deadline_ms ? (int)s->deadline_ms : DEADLINE_MS, s->accepted, s->closed, s->frames,
            s->errors, s->accepted ? (int)(s->conn.flags & KVS_CONN_READING) : -1,
            s->accepted ? kvs_conn_backlog(&s->conn) : 0, s->stopped, s->events);
    abort();
}

static void on_tick(uv_timer_t *t)
{
    server_t *s = t->data;
    if (s->accepted && !s->closed)
        s->on_tick(s);
}

/* After each poll: a loop turn ends (its timers, then its I/O, ran). */
static void on_turn(uv_check_t *h)
{
    server_t *s = h->data;
    s->turns++;
}

/* The client finished: close every handle so uv_run returns. */
static void on_done(uv_async_t *a)
{
    server_t *s = a->data;
    /* Closed, or closing (its close callback may run after this one). */
    s->closed_before_done = s->closed || (s->accepted && (s->conn.flags & KVS_CONN_CLOSING));
    if (s->accepted)
        kvs_conn_close(&s->conn);
    uv_close(&s->lis.handle, NULL);
    kvs_flusher_close(&s->flusher, NULL);
    if (s->use_group)
        kvs_conn_group_close(&s->group);
    uv_close((uv_handle_t *)&s->deadline, NULL);
    uv_close((uv_handle_t *)&s->tick, NULL);
    uv_close((uv_handle_t *)&s->turn, NULL);
    uv_close((uv_handle_t *)&s->done, NULL);
}

static void server_listen(server_t *s)
{
    kvs_addr_t addr;
    memset(&addr, 0, sizeof(addr));
    if (s->is_unix) {
        snprintf(s->dir, sizeof(s->dir), "/tmp/kvs-test-conn-XXXXXX");
        CHECK(mkdtemp(s->dir) != NULL);
        snprintf(s->path, sizeof(s->path), "%s/kvs.sock", s->dir);
        addr.is_unix = 1;
        snprintf(addr.path, sizeof(addr.path), "%s", s->path);
    } else {
        snprintf(addr.host, sizeof(addr.host), "127.0.0.1");
        addr.port = 0;
    }
    CHECK_EQ(kvs_listen(&s->loop, &addr, &s->lis, on_connection), 0);
    s->lis.handle.data = s;
    if (!s->is_unix) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        CHECK_EQ(uv_tcp_getsockname(&s->lis.tcp, (struct sockaddr *)&ss, &len), 0);
        CHECK_EQ(ss.ss_family, AF_INET);
        s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        CHECK(s->port != 0);
    }
}

/* ---- client side ------------------------------------------------------------ */

static int client_connect(const server_t *s)
{
    int fd;
    if (s->is_unix) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", s->path);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(fd >= 0);
        CHECK_EQ(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
        return fd;
    }
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(s->port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    if (s->client_rcvbuf != 0) /* before connect, so the window is small from the start */
        CHECK_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &s->client_rcvbuf, sizeof(int)), 0);
    CHECK_EQ(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

static void *client_main(void *arg)
{
    server_t *s = arg;
    int fd = client_connect(s);
    s->client(s, fd);
    close(fd);
    CHECK_EQ(uv_async_send(&s->done), 0);
    return NULL;
}

static void send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        CHECK(w > 0);
        b += w;
        n -= (size_t)w;
    }
}

/* Reads exactly n bytes; returns 0, or -1 on EOF before the first byte. */
static int recv_all(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, b + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0);
        if (r == 0) {
            CHECK_EQ(got, 0); /* EOF in the middle of a frame */
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

static void send_frame(int fd, const void *p, size_t len)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_put_header(hdr, (uint32_t)len);
    send_all(fd, hdr, sizeof(hdr));
    send_all(fd, p, len);
}

/* Reads one frame into buf (cap bytes) and returns its length. */
static size_t read_frame(int fd, uint8_t *buf, size_t cap)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    CHECK_EQ(recv_all(fd, hdr, sizeof(hdr)), 0);
    int compressed;
    uint32_t len = kvs_frame_get_header(hdr, &compressed);
    CHECK_EQ(compressed, 0);
    CHECK(len <= cap);
    CHECK_EQ(recv_all(fd, buf, len), 0);
    return len;
}

static void expect_frame(int fd, const char *text)
{
    uint8_t buf[256];
    size_t n = read_frame(fd, buf, sizeof(buf) - 1);
    buf[n] = '\0';
    CHECK_EQ(n, strlen(text));
    CHECK_STR((char *)buf, text);
}

static void expect_eof(int fd)
{
    uint8_t b;
    ssize_t r;
    do
        r = recv(fd, &b, 1, 0);
    while (r < 0 && errno == EINTR);
    CHECK_EQ(r, 0);
}

/* ---- running a case ---------------------------------------------------------- */

static void server_init(server_t *s, int is_unix, client_fn client)
{
    memset(s, 0, sizeof(*s));
    s->is_unix = is_unix;
    s->max_frame = KVS_FRAME_DEFAULT_MAX;
    s->client = client;
    s->on_frame = echo_frame;
    atomic_init(&s->drain, 0);
}

static void server_run(server_t *s)
{
    CHECK_EQ(uv_loop_init(&s->loop), 0);
    CHECK_EQ(kvs_flusher_init(&s->flusher, &s->loop, s->before, s), 0);
    CHECK_EQ(uv_timer_init(&s->loop, &s->deadline), 0);
    s->deadline.data = s;
    CHECK_EQ(
        uv_timer_start(&s->deadline, on_deadline, s->deadline_ms ? s->deadline_ms : DEADLINE_MS, 0),
        0);
    CHECK_EQ(uv_timer_init(&s->loop, &s->tick), 0);
    s->tick.data = s;
    if (s->on_tick != NULL)
        CHECK_EQ(uv_timer_start(&s->tick, on_tick, s->tick_ms, s->tick_ms), 0);
    CHECK_EQ(uv_check_init(&s->loop, &s->turn), 0);
    s->turn.data = s;
    CHECK_EQ(uv_check_start(&s->turn, on_turn), 0);
    CHECK_EQ(uv_async_init(&s->loop, &s->done, on_done), 0);
    s->done.data = s;
    if (s->use_group) {
        CHECK_EQ(kvs_conn_group_init(&s->group, &s->loop, &s->limits, "test client"), 0);
        kvs_conn_group_sweep_every(&s->group, SWEEP_MS);
    }
    if (s->group_turn_ns != 0)
        CHECK_EQ(kvs_conn_group_bound_turn(&s->group, s->group_turn_ns), 0);
    if (s->share_ns != 0)
        kvs_conn_group_share_slices(&s->group, s->share_ns);
    if (s->on_start != NULL)
        s->on_start(s);
    server_listen(s);

    CHECK_EQ(pthread_create(&s->thread, NULL, client_main, s), 0);
    CHECK_EQ(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(pthread_join(s->thread, NULL), 0);
    CHECK_EQ(uv_loop_close(&s->loop), 0); /* every handle was closed */
    CHECK(!s->accepted || s->closed);
    if (s->is_unix) {
        CHECK(unlink(s->path) == 0 || errno == ENOENT);
        CHECK_EQ(rmdir(s->dir), 0);
    }
}

/* ---- cases ------------------------------------------------------------------------ */

#define PIPELINED 1000

static size_t pipelined_len(unsigned i)
{
    return (i * 37u) % 1500u;
}

static uint8_t pipelined_byte(unsigned i, size_t j)
{
    return (uint8_t)(i * 7u + j * 13u);
}

/* Sends PIPELINED frames of assorted sizes in one go, then reads them all
 * back and checks each, in order. */
static void client_pipelined(server_t *s, int fd)
{
    (void)s;
    kvs_buf_t out;
    kvs_buf_init(&out);
    for (unsigned i = 0; i < PIPELINED; i++) {
        uint8_t hdr[KVS_FRAME_HEADER];
        size_t len = pipelined_len(i);
        kvs_frame_put_header(hdr, (uint32_t)len);
        CHECK_EQ(kvs_buf_append(&out, hdr, sizeof(hdr)), 0);
        CHECK_EQ(kvs_buf_reserve(&out, len), 0);
        for (size_t j = 0; j < len; j++)
            out.data[out.len++] = pipelined_byte(i, j);
    }
    send_all(fd, out.data, out.len);
    kvs_buf_free(&out);

    static uint8_t buf[2000];
    for (unsigned i = 0; i < PIPELINED; i++) {
        size_t n = read_frame(fd, buf, sizeof(buf));
        CHECK_EQ(n, pipelined_len(i));
        for (size_t j = 0; j < n; j++)
            CHECK_EQ(buf[j], pipelined_byte(i, j));
    }
}

static void run_pipelined(int is_unix)
{
    server_t s;
    server_init(&s, is_unix, client_pipelined);
    server_run(&s);
    CHECK_EQ(s.frames, PIPELINED);
    CHECK(s.errors == 0 || s.last_err == KVS_ECLOSED);
}

KVS_TEST(echo_pipelined_frames_tcp)
{
    run_pipelined(0);
}

KVS_TEST(echo_pipelined_frames_unix)
{
    run_pipelined(1);
}

/* One good frame, then a header announcing max + 1. */
static void client_oversized(server_t *s, int fd)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    send_frame(fd, "hello", 5);
    kvs_frame_put_header(hdr, s->max_frame + 1);
    send_all(fd, hdr, sizeof(hdr));
    expect_frame(fd, "hello");
    expect_frame(fd, "bye"); /* the server's last response */
    expect_eof(fd);
}

KVS_TEST(oversized_header_gets_last_response_then_close)
{
    server_t s;
    server_init(&s, 0, client_oversized);
    s.max_frame = 1024;
    server_run(&s);
    CHECK_EQ(s.frames, 1);
    CHECK_EQ(s.errors, 1);
    CHECK_EQ(s.last_err, KVS_ETOOBIG);
    CHECK_EQ(s.bad_len, 1025);
    /* client_oversized saw EOF right after "bye": the server shut its side
     * down; it then lingers until the client closes (no reset). */
}

/* A frame with the compressed bit set. */
static void client_compressed(server_t *s, int fd)
{
    (void)s;
    static const uint8_t f[] = {0x80, 0, 0, 5, 'a', 'b', 'c', 'd', 'e'};
    send_all(fd, f, sizeof(f));
    expect_frame(fd, "bye");
    expect_eof(fd);
}

KVS_TEST(compressed_frame_is_eproto_then_close)
{
    server_t s;
    server_init(&s, 1, client_compressed);
    server_run(&s);
    CHECK_EQ(s.frames, 0);
    CHECK_EQ(s.errors, 1);
    CHECK_EQ(s.last_err, KVS_EPROTO);
    /* The client saw EOF after "bye" (client_compressed checks it): the
     * server shut its side down and lingers until the client closes, so
     * the kernel never resets the connection under the answer. */
}

/* Sends a frame and closes its writing side: the answer must still come. */
static void client_half_close(server_t *s, int fd)
{
    (void)s;
    send_frame(fd, "last words", 10);
    CHECK_EQ(shutdown(fd, SHUT_WR), 0);
    expect_frame(fd, "last words");
    expect_eof(fd);
}

KVS_TEST(peer_eof_is_eclosed)
{
    server_t s;
    server_init(&s, 0, client_half_close);
    server_run(&s);
    CHECK_EQ(s.frames, 1);
    CHECK_EQ(s.errors, 1);
    CHECK_EQ(s.last_err, KVS_ECLOSED);
    CHECK(s.closed_before_done);
}

/* The response is queued as "pending"; the flusher's `before` step turns it
 * into "commit!" in place. If bytes left before `before` ran, the client
 * would see "pending". */
static void patch_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    (void)p, (void)len;
    s->frames++;
    record(s, 'F');
    s->patch_pos = c->out.len + KVS_FRAME_HEADER;
    s->patch_pending = 1;
    send_back(c, "pending", 7);
}

static void before_flush(kvs_flusher_t *f)
{
    server_t *s = f->data;
    if (!s->patch_pending)
        return;
    record(s, 'B');
    CHECK(!(s->conn.flags & KVS_CONN_WRITING));
    CHECK(s->conn.out.len >= s->patch_pos + 7); /* still queued, not written */
    memcpy(s->conn.out.data + s->patch_pos, "commit!", 7);
    s->patch_pending = 0;
}

static void client_request_reply(server_t *s, int fd)
{
    (void)s;
    for (int i = 0; i < 3; i++) {
        send_frame(fd, "q", 1);
        expect_frame(fd, "commit!");
    }
}

KVS_TEST(flusher_before_runs_before_bytes_leave)
{
    server_t s;
    server_init(&s, 0, client_request_reply);
    s.on_frame = patch_frame;
    s.before = before_flush;
    server_run(&s);
    CHECK_EQ(s.frames, 3);
    CHECK_STR(s.events, "FBFBFB");
}

/* ---- back-pressure ------------------------------------------------------------- */

#define BP_FRAME (32u * 1024u)
#define BP_FRAMES 256u
#define BP_HIGH_WATER (256u * 1024u)

/* Echo, watching how far the backlog grows. */
static void bp_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    echo_frame(c, p, len);
    if (s->stopped)
        s->frames_after_stop++; /* only a resumed read can deliver these */
    if (kvs_conn_backlog(c) > s->max_backlog)
        s->max_backlog = kvs_conn_backlog(c);
    if (c->dec.cap > s->max_dec_cap)
        s->max_dec_cap = c->dec.cap;
}

/* Once the server has stopped reading because of its backlog, let the
 * client start reading. (Reading also stops for a while when a loop
 * turn's delivery budget is spent, KVS_CONN_YIELDED, as on a loaded
 * machine: that is not the stop this waits for.) */
static void bp_tick(server_t *s)
{
    kvs_conn_t *c = &s->conn;
    if (s->stopped || (c->flags & (KVS_CONN_READING | KVS_CONN_YIELDED)))
        return;
    CHECK(kvs_conn_backlog(c) >= c->high_water);
    s->stopped = 1;
    atomic_store(&s->drain, 1);
}

/* Sends BP_FRAMES frames without reading until told to drain; then reads
 * and sends until every byte came back, and checks the echo is the input. */
static void client_slow_reader(server_t *s, int fd)
{
    const size_t total = (size_t)BP_FRAMES * (KVS_FRAME_HEADER + BP_FRAME);
    uint8_t *in = malloc(total), *back = malloc(total);
    CHECK(in != NULL && back != NULL);
    for (size_t off = 0, i = 0; i < BP_FRAMES; i++, off += KVS_FRAME_HEADER + BP_FRAME) {
        kvs_frame_put_header(in + off, BP_FRAME);
        for (size_t j = 0; j < BP_FRAME; j++)
            in[off + KVS_FRAME_HEADER + j] = (uint8_t)(i + j * 3);
    }
    size_t sent = 0, got = 0;
    while (sent < total || got < total) {
        int drain = atomic_load(&s->drain);
        struct pollfd p = {fd, (short)((sent < total ? POLLOUT : 0) | (drain ? POLLIN : 0)), 0};
        int rc = poll(&p, 1, 10);
        CHECK(rc >= 0 || errno == EINTR);
        if (rc <= 0)
            continue;
        CHECK((p.revents & (POLLERR | POLLHUP)) == 0);
        if (p.revents & POLLOUT) {
            size_t n = total - sent < 65536 ? total - sent : 65536;
            ssize_t w = send(fd, in + sent, n, MSG_DONTWAIT | MSG_NOSIGNAL);
            CHECK(w > 0 || errno == EAGAIN || errno == EINTR);
            sent += w > 0 ? (size_t)w : 0;
        }
        if (p.revents & POLLIN) {
            ssize_t r = recv(fd, back + got, total - got, MSG_DONTWAIT);
            CHECK(r > 0 || (r < 0 && (errno == EAGAIN || errno == EINTR)));
            got += r > 0 ? (size_t)r : 0;
        }
    }
    CHECK(memcmp(in, back, total) == 0);
    free(in);
    free(back);
}

KVS_TEST(backpressure_stops_and_resumes_reading)
{
    server_t s;
    server_init(&s, 0, client_slow_reader);
    s.max_frame = 64u * 1024u;
    s.high_water = BP_HIGH_WATER;
    s.send_buffer = 64 * 1024;
    s.client_rcvbuf = 16 * 1024;
    s.on_frame = bp_frame;
    s.on_tick = bp_tick;
    s.tick_ms = 2;
    server_run(&s);
    CHECK_EQ(s.frames, BP_FRAMES);
    CHECK(s.stopped);               /* it stopped reading... */
    CHECK(s.frames_after_stop > 0); /* ...and resumed once the client drained */
    /* Output grows past the mark only by what one read delivered. */
    CHECK(s.max_backlog <= BP_HIGH_WATER + s.max_dec_cap);
}

/* ---- pause / resume ---------------------------------------------------------------- */

static const char *const pause_texts[] = {"one", "two", "three"};

static void pause_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    CHECK(s->frames < 3);
    CHECK_EQ(len, strlen(pause_texts[s->frames]));
    CHECK(memcmp(p, pause_texts[s->frames], len) == 0);
    echo_frame(c, p, len);
    if (s->frames == 1) {
        kvs_conn_pause(c); /* from inside the callback */
        record(s, 'P');
    }
}

/* A few ticks after the pause, frames two and three are still buffered:
 * resume must hand them over before it returns. */
static void pause_tick(server_t *s)
{
    kvs_conn_t *c = &s->conn;
    if (s->resumed || s->frames == 0)
        return;
    CHECK_EQ(s->frames, 1);
    CHECK(c->flags & KVS_CONN_PAUSED);
    CHECK(!(c->flags & KVS_CONN_READING));
    CHECK_EQ(kvs_frame_dec_pending(&c->dec), 2 * KVS_FRAME_HEADER + strlen("two") + 5);
    if (++s->ticks_paused < 3)
        return;
    kvs_conn_resume(c);
    record(s, 'R');
    s->resumed = 1;
    CHECK_EQ(s->frames, 3);
    CHECK_EQ(kvs_frame_dec_pending(&c->dec), 0);
    CHECK(!(c->flags & KVS_CONN_PAUSED));
    CHECK(c->flags & KVS_CONN_READING);
}

static void client_three_at_once(server_t *s, int fd)
{
    (void)s;
    uint8_t buf[64];
    size_t n = 0;
    for (int i = 0; i < 3; i++) { /* one send: one read on the server */
        size_t len = strlen(pause_texts[i]);
        kvs_frame_put_header(buf + n, (uint32_t)len);
        memcpy(buf + n + KVS_FRAME_HEADER, pause_texts[i], len);
        n += KVS_FRAME_HEADER + len;
    }
    send_all(fd, buf, n);
    for (int i = 0; i < 3; i++)
        expect_frame(fd, pause_texts[i]);
}

KVS_TEST(pause_resume_delivers_buffered_frames)
{
    server_t s;
    server_init(&s, 1, client_three_at_once);
    s.on_frame = pause_frame;
    s.on_tick = pause_tick;
    s.tick_ms = 20;
    server_run(&s);
    CHECK_EQ(s.frames, 3);
    CHECK(s.resumed);
    CHECK_STR(s.events, "PR");
}

/* ---- work left for the turn's end outside the poll phase --------------------------- */

/* The answer is made by a timer, not in the read callback: libuv runs
 * timers before it polls, and the flusher runs after the poll, so without
 * kvs_flusher_wake the answer waited for the loop's next event (here the
 * next tick, LATE_TICK_MS later). */
#define LATE_TICK_MS 500

static void late_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    (void)p;
    (void)len;
    s->frames++; /* answered by late_tick */
}

static void late_tick(server_t *s)
{
    if (s->frames == 1 && !s->resumed) {
        s->resumed = 1;
        send_back(&s->conn, "late", 4);
    }
}

static void client_times_the_late_answer(server_t *s, int fd)
{
    (void)s;
    uint8_t buf[KVS_FRAME_HEADER + 1];
    kvs_frame_put_header(buf, 1);
    buf[KVS_FRAME_HEADER] = 'x';
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    send_all(fd, buf, sizeof(buf));
    expect_frame(fd, "late");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    if (ms >= LATE_TICK_MS + 350)
        fprintf(stderr, "the answer made at the first tick came after %ld ms\n", ms);
    CHECK(ms < LATE_TICK_MS + 350); /* not at the second tick */
}

KVS_TEST(output_queued_by_a_timer_leaves_without_waiting_for_the_next_event)
{
    server_t s;
    server_init(&s, 1, client_times_the_late_answer);
    s.on_frame = late_frame;
    s.on_tick = late_tick;
    s.tick_ms = LATE_TICK_MS;
    server_run(&s);
    CHECK_EQ(s.frames, 1);
    CHECK(s.resumed);
}

/* A flusher whose check handle was stopped and closed on its own (as
 * node_server's and router_scrape's shutdowns do, the idle handle being
 * left for kvs_loop_close_all): a wake from before or after that must not
 * keep the idle handle active, which would make the loop poll without
 * waiting, spinning a core, until something else closed it. The guard
 * timer keeps nothing alive: it fires only while the loop spins. */
typedef struct spin_s {
    kvs_flusher_t f;
    int spun;
} spin_t;

static void stop_spinning(uv_timer_t *t)
{
    spin_t *x = t->data;
    x->spun = 1;
    uv_idle_stop(&x->f.idle);
}

static void wake_and_close_the_check_only(int wake_first)
{
    uv_loop_t loop;
    spin_t x = {.spun = 0};
    uv_timer_t guard;
    CHECK_EQ(uv_loop_init(&loop), 0);
    CHECK_EQ(kvs_flusher_init(&x.f, &loop, NULL, NULL), 0);
    CHECK_EQ(uv_timer_init(&loop, &guard), 0);
    guard.data = &x;
    CHECK_EQ(uv_timer_start(&guard, stop_spinning, 500, 0), 0);
    uv_unref((uv_handle_t *)&guard);
    if (wake_first)
        kvs_flusher_wake(&x.f);
    uv_check_stop(&x.f.check);
    uv_close((uv_handle_t *)&x.f.check, NULL);
    if (!wake_first)
        kvs_flusher_wake(&x.f);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK(!x.spun); /* the loop ended at once, not at the guard */
    kvs_loop_close_all(&loop);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

KVS_TEST(a_wake_never_spins_a_flusher_whose_check_is_gone)
{
    wake_and_close_the_check_only(1);
    wake_and_close_the_check_only(0);
}

/* ---- output bounds ----------------------------------------------------------------- */

#define OB_FRAME 1024u
#define OB_FRAMES 2000u
#define OB_HIGH_WATER (64u * 1024u)

/* Sends OB_FRAMES frames in as few writes as the socket takes, reading
 * nothing until told to; then reads every echo back and checks it. */
static void client_flood_then_read(server_t *s, int fd)
{
    const size_t one = KVS_FRAME_HEADER + OB_FRAME, total = (size_t)OB_FRAMES * one;
    uint8_t *in = malloc(total), *back = malloc(total);
    CHECK(in != NULL && back != NULL);
    for (size_t i = 0; i < OB_FRAMES; i++) {
        kvs_frame_put_header(in + i * one, OB_FRAME);
        memset(in + i * one + KVS_FRAME_HEADER, (int)(i & 0xff), OB_FRAME);
    }
    size_t sent = 0, got = 0;
    while (sent < total || got < total) {
        int drain = atomic_load(&s->drain);
        struct pollfd p = {fd, (short)((sent < total ? POLLOUT : 0) | (drain ? POLLIN : 0)), 0};
        int rc = poll(&p, 1, 10);
        CHECK(rc >= 0 || errno == EINTR);
        if (rc <= 0)
            continue;
        if (p.revents & POLLOUT) {
            ssize_t w = send(fd, in + sent, total - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            CHECK(w > 0 || errno == EAGAIN || errno == EINTR);
            sent += w > 0 ? (size_t)w : 0;
        }
        if (p.revents & POLLIN) {
            ssize_t r = recv(fd, back + got, total - got, MSG_DONTWAIT);
            CHECK(r > 0 || (r < 0 && (errno == EAGAIN || errno == EINTR)));
            got += r > 0 ? (size_t)r : 0;
        }
    }
    CHECK(memcmp(in, back, total) == 0);
    free(in);
    free(back);
}

/* Echo, recording how far pending output grows, and how many frames were
 * executed after delivery first stopped at the mark. */
static void ob_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    size_t before = kvs_conn_pending(c);
    CHECK(before < c->high_water); /* never executed at or above the mark */
    echo_frame(c, p, len);
    if (s->stopped)
        s->frames_after_stop++;
    if (kvs_conn_pending(c) > s->max_backlog)
        s->max_backlog = kvs_conn_pending(c);
    if (!s->full_seen && kvs_conn_pending(c) >= c->high_water) {
        s->full_seen = 1;
        s->charged_at_full = c->charged; /* read while frames ran */
    }
}

/* Once delivery has stopped with frames still buffered, and reading too
 * (past the mark it reads on, runs nothing, up to another high_water of
 * input: a peer that sends all before it reads must be able to finish),
 * let the client read. */
static void ob_tick(server_t *s)
{
    kvs_conn_t *c = &s->conn;
    if (s->stopped || !(c->flags & KVS_CONN_OUTPUT_FULL) ||
        (c->flags & (KVS_CONN_READING | KVS_CONN_YIELDED)))
        return;
    CHECK(kvs_conn_has_frame(c)); /* received, not executed */
    /* read ahead to the mark at least (past it by what reads that came
     * while frames still ran left: one, or more on a loaded machine where
     * deliveries run out of their slices) */
    CHECK(kvs_frame_dec_pending(&c->dec) >= c->high_water);
    s->stopped = 1;
    atomic_store(&s->drain, 1);
}

/* A peer that sends without reading gets its requests executed only until
 * its answers reach the high-water mark, even when they all arrived in one
 * read; the rest run once it reads. */
KVS_TEST(output_mark_stops_execution_not_just_reading)
{
    server_t s;
    server_init(&s, 0, client_flood_then_read);
    s.high_water = OB_HIGH_WATER;
    s.send_buffer = 16 * 1024;
    s.client_rcvbuf = 16 * 1024;
    s.on_frame = ob_frame;
    s.on_tick = ob_tick;
    s.tick_ms = 2;
    server_run(&s);
    CHECK_EQ(s.frames, OB_FRAMES);
    CHECK(s.stopped);
    CHECK(s.frames_after_stop > 0);
    /* At most one answer past the mark. */
    CHECK(s.max_backlog < OB_HIGH_WATER + KVS_FRAME_HEADER + OB_FRAME);
}

/* As ob_tick, where reading ahead stops at half the group's input budget,
 * short of the mark of input. */
static void ahead_budget_tick(server_t *s)
{
    kvs_conn_t *c = &s->conn;
    if (s->stopped || !(c->flags & KVS_CONN_OUTPUT_FULL) ||
        (c->flags & (KVS_CONN_READING | KVS_CONN_YIELDED)))
        return;
    CHECK(kvs_conn_has_frame(c));
    CHECK(kvs_frame_dec_pending(&c->dec) < c->high_water); /* the budget stopped it */
    /* reading ahead took nothing past half (what reads took while frames
     * still ran, on a loaded machine, may have) */
    size_t half = s->limits.input_budget / 2;
    CHECK(s->full_seen);
    CHECK(s->group.input_used <= (s->charged_at_full > half ? s->charged_at_full : half));
    s->stopped = 1;
    atomic_store(&s->drain, 1);
}

/* Peers that send without reading read ahead only into the first half of
 * the group's input budget: the others' incomplete requests keep the rest
 * (past it they are closed). Reaching it stops reading, and closes
 * nothing: every frame is answered once the client reads. */
KVS_TEST(reading_ahead_leaves_half_the_input_budget)
{
    server_t s;
    server_init(&s, 0, client_flood_then_read);
    s.use_group = 1;
    s.limits.high_water = 1u << 20;
    s.limits.input_budget = 512u * 1024u;
    s.send_buffer = 16 * 1024;
    s.client_rcvbuf = 16 * 1024;
    s.on_frame = ob_frame;
    s.on_tick = ahead_budget_tick;
    s.tick_ms = 2;
    server_run(&s);
    CHECK(s.stopped);
    CHECK_EQ(s.frames, OB_FRAMES);
}

/* Once delivery stopped at the cap: a reload of the group's limits keeps
 * the cap (it stays stopped); lifting the cap resumes delivery at once,
 * before the client reads anything; then the client reads. */
static void cap_tick(server_t *s)
{
    kvs_conn_t *c = &s->conn;
    if (s->stopped) {
        if (s->frames_after_stop > 0)
            atomic_store(&s->drain, 1);
        return;
    }
    if (!(c->flags & KVS_CONN_OUTPUT_FULL))
        return;
    kvs_conn_group_set_limits(&s->group, &s->limits); /* a live reload */
    CHECK_EQ(c->high_water, OB_HIGH_WATER);
    CHECK(c->flags & KVS_CONN_OUTPUT_FULL);
    s->stopped = 1;
    s->capped_backlog = s->max_backlog;
    kvs_conn_cap_output(c, 0); /* authenticated */
    CHECK_EQ(c->high_water, s->limits.high_water);
}

/* A client not authenticated yet is held to its cap, under a group mark
 * far above it, across a reload of the group's limits; once the cap is
 * lifted its frames run again without waiting for it to read. */
KVS_TEST(output_cap_holds_across_a_reload_and_lifts)
{
    server_t s;
    server_init(&s, 0, client_flood_then_read);
    s.use_group = 1;
    s.limits.high_water = 1u << 30;
    s.output_cap = OB_HIGH_WATER;
    s.send_buffer = 16 * 1024;
    s.client_rcvbuf = 16 * 1024;
    s.on_frame = ob_frame;
    s.on_tick = cap_tick;
    s.tick_ms = 2;
    server_run(&s);
    CHECK_EQ(s.frames, OB_FRAMES);
    CHECK(s.stopped);
    CHECK(s.capped_backlog < OB_HIGH_WATER + KVS_FRAME_HEADER + OB_FRAME);
    CHECK(s.max_backlog > OB_HIGH_WATER + KVS_FRAME_HEADER + OB_FRAME); /* lifted: ran unread */
}

#define DRAIN_HARD (16u * 1024u)

/* Once delivery stopped at the mark: a reload lowers the hard limit below
 * what the connection owes, in a group whose members drain past it. */
static void drain_tick(server_t *s)
{
    kvs_conn_t *c = &s->conn;
    if (s->stopped) {
        if (c->hard_limit < s->min_hard)
            s->min_hard = c->hard_limit;
        return;
    }
    if (!(c->flags & KVS_CONN_OUTPUT_FULL))
        return;
    size_t owed = kvs_conn_pending(c);
    CHECK(owed > DRAIN_HARD);
    kvs_conn_limits_t l = s->limits;
    l.hard_limit = DRAIN_HARD;
    l.high_water = DRAIN_HARD / 4;
    kvs_conn_group_drain_past_limit(&s->group);
    kvs_conn_group_set_limits(&s->group, &l); /* a live reload */
    CHECK(!(c->flags & KVS_CONN_CLOSING));
    CHECK_EQ(c->hard_limit, owed + DRAIN_HARD);
    CHECK_EQ(c->high_water, DRAIN_HARD / 4);
    kvs_conn_group_set_limits(&s->group, &l); /* reloads do not add up */
    CHECK_EQ(c->hard_limit, owed + DRAIN_HARD);
    s->stopped = 1;
    s->min_hard = c->hard_limit;
    atomic_store(&s->drain, 1);
}

/* A member past a lowered hard limit in a group that lets its members
 * drain (a worker's unix socket: its router's links) is not closed: it
 * owes what it owed on top of the new limit, which comes down to the
 * limit as it drains; every frame is answered. */
KVS_TEST(a_lowered_hard_limit_lets_a_draining_member_finish)
{
    server_t s;
    server_init(&s, 0, client_flood_then_read);
    s.use_group = 1;
    s.limits.high_water = OB_HIGH_WATER;
    s.limits.hard_limit = 4 * OB_HIGH_WATER;
    s.send_buffer = 16 * 1024;
    s.client_rcvbuf = 16 * 1024;
    s.on_frame = echo_frame;
    s.on_tick = drain_tick;
    s.tick_ms = 2;
    server_run(&s);
    CHECK(s.stopped);
    CHECK_EQ(s.frames, OB_FRAMES);
    CHECK_EQ(s.min_hard, DRAIN_HARD); /* drained: the new limit alone */
}

/* Echo that also holds bytes for the peer, as the router holds answers
 * waiting for an earlier one, and never gives them back. */
static void hold_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    echo_frame(c, p, len);
    kvs_conn_hold(c, (ptrdiff_t)s->hold_per_frame);
}

/* Sends frames one by one without reading; the server must close the
 * connection once it owes more than the hard limit. */
static void client_until_closed(server_t *s, int fd)
{
    (void)s;
    uint8_t frame[KVS_FRAME_HEADER + 100];
    kvs_frame_put_header(frame, 100);
    memset(frame + KVS_FRAME_HEADER, 'x', 100);
    for (int i = 0; i < 100000; i++) {
        ssize_t w = send(fd, frame, sizeof(frame), MSG_NOSIGNAL);
        if (w < 0)
            return; /* reset by the server: closed */
        struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
        if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR)))
            return;
        usleep(100);
    }
    CHECK(!"the server never closed the connection");
}

KVS_TEST(hard_limit_closes_with_held_output)
{
    server_t s;
    server_init(&s, 0, client_until_closed);
    s.use_group = 1;
    s.limits.high_water = 1u << 30; /* only the hard limit acts */
    s.limits.hard_limit = 64 * 1024;
    s.hold_per_frame = 1000;
    s.on_frame = hold_frame;
    server_run(&s);
    CHECK(s.closed_before_done);
    CHECK(s.frames >= 60 && s.frames <= 70); /* 64 KiB / 1000 held + echoed bytes */
}

/* ---- writes of bounded size ------------------------------------------------------------ */

#define BIG_FRAME (300u * 1024u)

static void client_one_big_echo(server_t *s, int fd)
{
    (void)s;
    uint8_t *in = malloc(BIG_FRAME), *back = malloc(BIG_FRAME);
    CHECK(in != NULL && back != NULL);
    for (size_t i = 0; i < BIG_FRAME; i++)
        in[i] = (uint8_t)(i * 31u + 7u);
    send_frame(fd, in, BIG_FRAME);
    CHECK_EQ(read_frame(fd, back, BIG_FRAME), BIG_FRAME);
    CHECK(memcmp(in, back, BIG_FRAME) == 0);
    free(in);
    free(back);
}

/* Output larger than one write's limit leaves in several writes, all of it,
 * in order (the limit keeps every write within uv_buf_t's unsigned length
 * whatever the backlog; a small one here exercises the same path). */
KVS_TEST(output_larger_than_a_write_leaves_whole)
{
    server_t s;
    server_init(&s, 0, client_one_big_echo);
    s.max_write = 1000;
    s.send_buffer = 8 * 1024;
    s.client_rcvbuf = 8 * 1024;
    server_run(&s);
    CHECK_EQ(s.frames, 1);
}

/* ---- buffers are given back ---------------------------------------------------------------- */

static void client_burst_then_wait(server_t *s, int fd)
{
    client_one_big_echo(s, fd);
    atomic_store(&s->drain, 1); /* the burst is over */
    while (atomic_load(&s->drain) != 2)
        usleep(1000);
}

static void shrink_tick(server_t *s)
{
    kvs_conn_t *c = &s->conn;
    if (atomic_load(&s->drain) != 1)
        return;
    if (c->dec.cap > KVS_CONN_KEEP_BUFFER || c->out.cap > KVS_CONN_KEEP_BUFFER ||
        c->wbuf.cap > KVS_CONN_KEEP_BUFFER)
        return; /* not yet: the last write may still be in flight */
    s->resumed = 1;
    atomic_store(&s->drain, 2);
}

KVS_TEST(buffers_shrink_after_a_burst)
{
    server_t s;
    server_init(&s, 1, client_burst_then_wait);
    s.on_tick = shrink_tick;
    s.tick_ms = 5;
    server_run(&s);
    CHECK(s.resumed); /* every buffer went back under KVS_CONN_KEEP_BUFFER */
}

/* ---- input bounds (groups) --------------------------------------------------------------------
 */

/* Starts a 1000-byte frame, sends 10 bytes of it, and waits for the server
 * to close the connection. */
static void client_stall_mid_frame(server_t *s, int fd)
{
    (void)s;
    uint8_t part[KVS_FRAME_HEADER + 10];
    kvs_frame_put_header(part, 1000);
    memset(part + KVS_FRAME_HEADER, 'y', 10);
    send_all(fd, part, sizeof(part));
    expect_eof(fd);
}

KVS_TEST(frame_timeout_closes_a_stalled_frame)
{
    server_t s;
    server_init(&s, 0, client_stall_mid_frame);
    s.use_group = 1;
    s.limits.frame_timeout_ms = 200;
    server_run(&s);
    CHECK_EQ(s.frames, 0);
    CHECK(s.closed_before_done);
}

/* A frame sent slowly but completed in time is served. */
static void client_slow_but_whole(server_t *s, int fd)
{
    (void)s;
    uint8_t frame[KVS_FRAME_HEADER + 4];
    kvs_frame_put_header(frame, 4);
    memcpy(frame + KVS_FRAME_HEADER, "slow", 4);
    for (size_t i = 0; i < sizeof(frame); i++) {
        send_all(fd, frame + i, 1);
        usleep(50 * 1000); /* 0.4 s in all, two sweeps */
    }
    expect_frame(fd, "slow");
}

KVS_TEST(frame_timeout_spares_a_frame_that_completes)
{
    server_t s;
    server_init(&s, 0, client_slow_but_whole);
    s.use_group = 1;
    s.limits.frame_timeout_ms = 1000;
    server_run(&s);
    CHECK_EQ(s.frames, 1); /* and the client got its echo: not closed on the way */
}

/* Announces a 2 MiB frame and sends 1 MiB of it: more than the group's
 * input budget allows one connection to buffer. */
static void client_big_partial(server_t *s, int fd)
{
    (void)s;
    const size_t part = 1u << 20;
    uint8_t *buf = calloc(1, KVS_FRAME_HEADER + part);
    CHECK(buf != NULL);
    kvs_frame_put_header(buf, 2u << 20);
    ssize_t n = 0;
    for (size_t off = 0; off < KVS_FRAME_HEADER + part; off += (size_t)n) {
        n = send(fd, buf + off, KVS_FRAME_HEADER + part - off, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the server may close while we still send */
    }
    free(buf);
    expect_frame(fd, "bye");
}

KVS_TEST(input_budget_refuses_a_frame_that_does_not_fit)
{
    server_t s;
    server_init(&s, 0, client_big_partial);
    s.max_frame = 4u << 20;
    s.use_group = 1;
    s.limits.input_budget = 256 * 1024;
    server_run(&s);
    CHECK_EQ(s.errors, 1);
    CHECK_EQ(s.last_err, KVS_ELIMIT);
    CHECK_EQ(s.frames, 0);
    CHECK_EQ(s.group.input_used, 0); /* its charge went back when it closed */
}

/* ---- the group's output budget ------------------------------------------- */

static void budget_member_closed(kvs_conn_t *c)
{
    int *closed = c->data;
    (*closed)++;
}

/* `g` on `loop` with only an output budget, of 100,000 bytes (`l`). */
static void budget_group(kvs_conn_group_t *g, uv_loop_t *loop, kvs_conn_limits_t *l)
{
    memset(l, 0, sizeof(*l));
    l->high_water = 1u << 30;
    l->output_budget = 100000;
    CHECK_EQ(kvs_conn_group_init(g, loop, l, "client"), 0);
}

/* `c`, a member of `g` on one end of a socketpair whose send buffer is
 * `sndbuf` bytes, counting its close in *closed. Returns the other end,
 * which never reads. */
static int budget_member(kvs_conn_t *c, uv_loop_t *loop, kvs_conn_group_t *g, int sndbuf,
                         int *closed)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
    CHECK_EQ(kvs_conn_init(c, loop, 1, 1u << 20, NULL, NULL, budget_member_closed), 0);
    c->data = closed;
    kvs_conn_join(c, g);
    CHECK_EQ(uv_pipe_open(&c->h.pipe, sv[0]), 0);
    CHECK_EQ(kvs_conn_start(c), 0);
    return sv[1];
}

/* Members on one end of a socketpair each, whose peers never read: what
 * they are owed is held (kvs_conn_hold) or queued past a small socket
 * buffer. Past the group's budget the member owed the most is closed, the
 * others keep their connections; the owner's own peers are neither counted
 * nor closed; a lower budget at a reload closes at once. */
KVS_TEST(output_budget_closes_the_member_owed_the_most)
{
    enum { N = 4 };
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    kvs_conn_limits_t l;
    kvs_conn_group_t g;
    budget_group(&g, &loop, &l);
    kvs_conn_t m[N];
    int peer[N], closed[N] = {0};
    for (int i = 0; i < N; i++)
        peer[i] = budget_member(&m[i], &loop, &g, 16 * 1024, &closed[i]);
    m[3].turn_exempt = 1; /* the owner's own peer */
    kvs_conn_hold(&m[3], 500000);
    CHECK_EQ(g.output_used, 0);
    kvs_conn_hold(&m[0], 30000);
    kvs_conn_hold(&m[1], 40000);
    kvs_conn_hold(&m[2], 20000);
    CHECK_EQ(g.output_used, 90000);
    CHECK_EQ(g.output_evicted, 0);
    kvs_conn_hold(&m[2], 15000); /* 105000: m[1], owed the most, goes */
    CHECK(m[1].flags & KVS_CONN_CLOSING);
    CHECK(!(m[0].flags & KVS_CONN_CLOSING) && !(m[2].flags & KVS_CONN_CLOSING));
    CHECK_EQ(g.output_evicted, 1);
    CHECK_EQ(g.output_used, 65000);
    kvs_conn_hold(&m[0], -30000);
    CHECK_EQ(g.output_used, 35000);
    /* Output queued past what the socket takes counts as well: 200 KB on
     * m[0] leaves it owed the most, and it goes, not m[2]. */
    static uint8_t big[200000];
    append_frame(&m[0].out, big, sizeof(big));
    kvs_conn_queue(&m[0]);
    CHECK(m[0].flags & KVS_CONN_CLOSING);
    CHECK(!(m[2].flags & KVS_CONN_CLOSING));
    CHECK_EQ(g.output_evicted, 2);
    CHECK_EQ(g.output_used, 35000);
    /* A reload that lowers the budget closes the member now past it. */
    l.output_budget = 30000;
    kvs_conn_group_set_limits(&g, &l);
    CHECK(m[2].flags & KVS_CONN_CLOSING);
    CHECK_EQ(g.output_evicted, 3);
    CHECK_EQ(g.output_used, 0);
    CHECK(!(m[3].flags & KVS_CONN_CLOSING)); /* exempt, whatever it holds */
    kvs_conn_close(&m[3]);
    kvs_conn_group_close(&g);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    for (int i = 0; i < N; i++) {
        CHECK_EQ(closed[i], 1);
        close(peer[i]);
    }
    CHECK_EQ(uv_loop_close(&loop), 0);
}

/* With a flusher, the budget is looked at once the turn's output went
 * into the sockets: a member given a large answer that its socket takes
 * whole is not taken for one that does not read, and its emptied buffers
 * are given back; a member whose answers stay is closed. */
KVS_TEST(output_budget_looks_after_the_flush)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    kvs_flusher_t f;
    CHECK_EQ(kvs_flusher_init(&f, &loop, NULL, NULL), 0);
    kvs_conn_limits_t l;
    kvs_conn_group_t g;
    budget_group(&g, &loop, &l);
    kvs_conn_t m[2];
    int peer[2], closed[2] = {0};
    for (int i = 0; i < 2; i++)
        peer[i] = budget_member(&m[i], &loop, &g, 1 << 20, &closed[i]);
    m[1].flusher = &f;
    kvs_conn_hold(&m[0], 60000); /* answers waiting for m[0] */
    static uint8_t answer[80000];
    append_frame(&m[1].out, answer, sizeof(answer));
    kvs_conn_queue(&m[1]); /* past the budget until it is flushed */
    CHECK(g.output_used > l.output_budget);
    CHECK(!(m[1].flags & KVS_CONN_CLOSING));
    kvs_flusher_run(&f); /* the socket takes it all; its buffers go */
    CHECK(!(m[0].flags & KVS_CONN_CLOSING) && !(m[1].flags & KVS_CONN_CLOSING));
    CHECK_EQ(g.output_evicted, 0);
    CHECK_EQ(g.output_used, 60000);
    CHECK_EQ(m[1].out.cap + m[1].wbuf.cap, 0);
    kvs_conn_hold(&m[0], 50000); /* no flusher: looked at now, and it goes */
    CHECK(m[0].flags & KVS_CONN_CLOSING);
    CHECK_EQ(g.output_evicted, 1);
    CHECK_EQ(g.output_used, 0);
    kvs_conn_close(&m[1]);
    kvs_conn_group_close(&g);
    kvs_flusher_close(&f, NULL);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(closed[i], 1);
        close(peer[i]);
    }
    CHECK_EQ(uv_loop_close(&loop), 0);
}

static void client_idle(server_t *s, int fd)
{
    (void)s;
    send_frame(fd, "hi", 2);
    expect_frame(fd, "hi");
    expect_eof(fd); /* closed by the idle timeout */
}

KVS_TEST(idle_timeout_closes_an_idle_member)
{
    server_t s;
    server_init(&s, 1, client_idle);
    s.use_group = 1;
    s.limits.idle_timeout_ms = 300;
    server_run(&s);
    CHECK_EQ(s.frames, 1);
    CHECK(s.closed_before_done);
}

/* A member that has not authenticated is closed after auth_timeout even
 * while it keeps talking (ping); one that did is spared, idle or not. */
static void auth_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    if (len == 4 && memcmp(p, "auth", 4) == 0)
        kvs_conn_set_unproven(c, 0);
    echo_frame(c, p, len);
}

static void client_never_authenticates(server_t *s, int fd)
{
    (void)s;
    for (int i = 0; i < 3; i++) { /* talking does not count */
        send_frame(fd, "ping", 4);
        expect_frame(fd, "ping");
        usleep(100 * 1000);
    }
    expect_eof(fd); /* closed by the auth timeout */
}

KVS_TEST(auth_timeout_closes_a_member_that_never_authenticates)
{
    server_t s;
    server_init(&s, 0, client_never_authenticates);
    s.use_group = 1;
    s.unproven = 1;
    s.on_frame = auth_frame;
    s.limits.auth_timeout_ms = 400;
    server_run(&s);
    CHECK_EQ(s.frames, 3);
    CHECK(s.closed_before_done);
}

static void client_authenticates(server_t *s, int fd)
{
    (void)s;
    send_frame(fd, "auth", 4);
    expect_frame(fd, "auth");
    usleep(700 * 1000); /* past the timeout and two sweeps after it */
    send_frame(fd, "ping", 4);
    expect_frame(fd, "ping");
}

KVS_TEST(auth_timeout_spares_a_member_that_authenticated)
{
    server_t s;
    server_init(&s, 0, client_authenticates);
    s.use_group = 1;
    s.unproven = 1;
    s.on_frame = auth_frame;
    s.limits.auth_timeout_ms = 300;
    server_run(&s);
    CHECK_EQ(s.frames, 2); /* the second answered after the timeout: still open */
}

/* A deadline closes a member whatever it does meanwhile; one taken away
 * (0) closes nothing. */
static void deadline_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    if (len >= 4 && memcmp(p, "soon", 4) == 0)
        kvs_conn_set_deadline(c, 300, "it was given 300 ms");
    else if (len == 4 && memcmp(p, "ever", 4) == 0)
        kvs_conn_set_deadline(c, 0, NULL);
    echo_frame(c, p, len);
}

static void client_past_its_deadline(server_t *s, int fd)
{
    (void)s;
    send_frame(fd, "soon", 4);
    expect_frame(fd, "soon");
    for (int i = 0; i < 3; i++) { /* talking does not count */
        send_frame(fd, "ping", 4);
        expect_frame(fd, "ping");
        usleep(100 * 1000);
    }
    expect_eof(fd); /* closed by its deadline (and the sweep after it) */
}

KVS_TEST(deadline_closes_a_member_that_keeps_talking)
{
    server_t s;
    server_init(&s, 0, client_past_its_deadline);
    s.use_group = 1;
    s.on_frame = deadline_frame;
    server_run(&s);
    CHECK_EQ(s.frames, 4);
    CHECK(s.closed_before_done);
}

static void client_deadline_taken_away(server_t *s, int fd)
{
    (void)s;
    send_frame(fd, "soon", 4);
    expect_frame(fd, "soon");
    send_frame(fd, "ever", 4);
    expect_frame(fd, "ever");
    usleep(700 * 1000); /* past the deadline and two sweeps after it */
    send_frame(fd, "ping", 4);
    expect_frame(fd, "ping");
}

/* The wait begins once what the peer is owed has been written: a peer
 * that takes a large answer slowly is not closed with it unsent. */
static void client_slow_reader_past_the_deadline(server_t *s, int fd)
{
    (void)s;
    uint8_t *in = calloc(1, BIG_FRAME), *back = malloc(BIG_FRAME);
    CHECK(in != NULL && back != NULL);
    memcpy(in, "soon", 4);
    send_frame(fd, in, BIG_FRAME);
    usleep(900 * 1000); /* past the deadline and sweeps after it, reading nothing */
    CHECK_EQ(read_frame(fd, back, BIG_FRAME), BIG_FRAME);
    CHECK(memcmp(in, back, BIG_FRAME) == 0);
    expect_eof(fd); /* and then closed, once the wait has passed */
    free(in);
    free(back);
}

KVS_TEST(deadline_counts_once_the_output_is_written)
{
    server_t s;
    server_init(&s, 0, client_slow_reader_past_the_deadline);
    s.use_group = 1;
    s.on_frame = deadline_frame;
    s.send_buffer = 8 * 1024;
    s.client_rcvbuf = 8 * 1024;
    server_run(&s);
    CHECK_EQ(s.frames, 1);
    CHECK(s.closed_before_done);
}

KVS_TEST(deadline_taken_away_closes_nothing)
{
    server_t s;
    server_init(&s, 0, client_deadline_taken_away);
    s.use_group = 1;
    s.on_frame = deadline_frame;
    server_run(&s);
    CHECK_EQ(s.frames, 3);
}

/* Asks for a 300 KiB echo and reads none of it for longer than the output
 * timeout (and the sweep after it); then finds that the server gave up on
 * it: the echo ends early, only what the kernels' buffers held. */
static void client_never_reads(server_t *s, int fd)
{
    (void)s;
    uint8_t *big = calloc(1, BIG_FRAME);
    CHECK(big != NULL);
    send_frame(fd, big, BIG_FRAME);
    usleep(1000 * 1000); /* the timeout and sweeps after it */
    struct timeval tv = {5, 0};
    CHECK_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    size_t got = 0;
    while (got < KVS_FRAME_HEADER + BIG_FRAME) { /* all of it: not closed */
        ssize_t r = recv(fd, big, BIG_FRAME, 0);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0 || errno == ECONNRESET); /* not a timeout: the server is done */
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    free(big);
    CHECK(got < BIG_FRAME);
}

KVS_TEST(output_timeout_closes_a_member_that_does_not_read)
{
    server_t s;
    server_init(&s, 0, client_never_reads);
    s.send_buffer = 8 * 1024;
    s.client_rcvbuf = 8 * 1024;
    s.use_group = 1;
    s.limits.output_timeout_ms = 300;
    server_run(&s);
    CHECK_EQ(s.frames, 1);
}

/* Two big echoes read whole, with a pause longer than the output timeout
 * between them: output that is taken in time never times out. */
static void client_reads_in_time(server_t *s, int fd)
{
    client_one_big_echo(s, fd);
    usleep(700 * 1000);
    client_one_big_echo(s, fd);
}

KVS_TEST(output_timeout_spares_a_member_that_reads)
{
    server_t s;
    server_init(&s, 0, client_reads_in_time);
    s.send_buffer = 8 * 1024;
    s.client_rcvbuf = 8 * 1024;
    s.use_group = 1;
    s.limits.output_timeout_ms = 400;
    server_run(&s);
    CHECK_EQ(s.frames, 2); /* and the client read both echoes: never closed on the way */
}

/* A member owed a last stretch of output must take 16 KiB of it per
 * 300 ms (kvs_conn_set_min_progress) while it waits: one that stops
 * reading is closed; one that reads slowly but on is not, though the one
 * write that carries its answer lasts much longer than 300 ms. */
static void progress_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    kvs_conn_set_min_progress(c, 16 * 1024, 300, "the test's answer is not being read");
    echo_frame(c, p, len);
}

/* Sends a frame of `size` bytes, reads nothing for `wait_us` (the window
 * and the sweeps after it), then reads to the end, which must come (EOF or
 * a reset, not a timeout: the server closed it). Returns the bytes read. */
static size_t send_then_ignore(int fd, size_t size, useconds_t wait_us)
{
    uint8_t *big = calloc(1, size);
    CHECK(big != NULL);
    send_frame(fd, big, size);
    usleep(wait_us);
    struct timeval tv = {5, 0};
    CHECK_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    size_t got = 0;
    for (;;) {
        ssize_t r = recv(fd, big, size, 0);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0 || errno == ECONNRESET); /* not a timeout: the server is done */
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    free(big);
    return got;
}

static void client_stops_reading(server_t *s, int fd)
{
    (void)s;
    /* late sweeps too; only what the kernels' buffers held comes */
    CHECK(send_then_ignore(fd, BIG_FRAME, 1200 * 1000) < BIG_FRAME);
}

/* Runs `client` against a member with the progress rule, with these
 * buffer sizes: the member must be closed before the client is done. */
static void closed_by_min_progress(void (*client)(server_t *, int), int send_buffer,
                                   int client_rcvbuf)
{
    server_t s;
    server_init(&s, 0, client);
    s.send_buffer = send_buffer;
    s.client_rcvbuf = client_rcvbuf;
    s.use_group = 1;
    s.on_frame = progress_frame;
    server_run(&s);
    CHECK_EQ(s.frames, 1);
    CHECK(s.closed_before_done);
}

KVS_TEST(min_progress_closes_a_member_that_stops_reading)
{
    closed_by_min_progress(client_stops_reading, 8 * 1024, 8 * 1024);
}

/* The same rule when the whole answer left this process: the socket's
 * send queue holds what the peer has not taken (its receive buffer is
 * small, the server's send buffer large), the process's own backlog is
 * empty, and the peer reads nothing. The clock runs on what the socket
 * holds too, so the member is closed all the same (when it counted only
 * the process's backlog, it waited for ever). */
#define QUEUED_FRAME (48u * 1024u)

static void client_leaves_it_in_the_queue(server_t *s, int fd)
{
    (void)s;
    send_then_ignore(fd, QUEUED_FRAME, 1000 * 1000);
}

KVS_TEST(min_progress_counts_what_the_socket_still_holds)
{
    closed_by_min_progress(client_leaves_it_in_the_queue, 512 * 1024, 4 * 1024);
}

/* Echoes `size` bytes and reads the answer `step` bytes per `pause_us`
 * for `slow` steps (all of it: SIZE_MAX), then the rest at once; any
 * close on the way fails the read. */
static void slow_echo(int fd, size_t size, size_t step, unsigned pause_us, size_t slow)
{
    uint8_t *in = malloc(size), *back = malloc(size);
    CHECK(in != NULL && back != NULL);
    for (size_t i = 0; i < size; i++)
        in[i] = (uint8_t)(i * 31u + 7u);
    send_frame(fd, in, size);
    uint8_t hdr[KVS_FRAME_HEADER];
    CHECK_EQ(recv_all(fd, hdr, sizeof(hdr)), 0);
    size_t got = 0;
    for (size_t k = 0; k < slow && got < size; k++) {
        size_t n = size - got < step ? size - got : step;
        CHECK_EQ(recv_all(fd, back + got, n), 0);
        got += n;
        usleep(pause_us);
    }
    if (got < size)
        CHECK_EQ(recv_all(fd, back + got, size - got), 0);
    CHECK(memcmp(in, back, size) == 0);
    free(in);
    free(back);
}

static void client_reads_slowly(server_t *s, int fd)
{
    (void)s;
    slow_echo(fd, BIG_FRAME, 4096, 15 * 1000, SIZE_MAX); /* over 1 s in all, past sweeps */
}

KVS_TEST(min_progress_spares_a_member_that_reads_slowly)
{
    server_t s;
    server_init(&s, 0, client_reads_slowly);
    s.send_buffer = 8 * 1024;
    s.client_rcvbuf = 8 * 1024;
    s.use_group = 1;
    s.on_frame = progress_frame;
    s.deadline_ms = 15000;
    server_run(&s);
    CHECK_EQ(s.frames, 1); /* and the client read the whole echo: never closed on the way */
}

/* The same pace behind a large kernel send buffer (512 KiB here; TCP
 * grows one to megabytes by itself): the socket takes a third of it at a
 * time, seconds apart, but the peer takes its bytes all along, and that
 * is what counts (kvs_conn_untaken). */
#define HUGE_ECHO (1024u * 1024u)

static void client_reads_slowly_behind_a_big_buffer(server_t *s, int fd)
{
    (void)s;
    slow_echo(fd, HUGE_ECHO, 8192, 80 * 1000, 15); /* 1.2 s: sweeps, and no new write */
}

KVS_TEST(min_progress_counts_what_the_peer_took_not_what_the_socket_took)
{
    server_t s;
    server_init(&s, 0, client_reads_slowly_behind_a_big_buffer);
    s.max_frame = 2 * HUGE_ECHO;
    s.send_buffer = 256 * 1024;
    s.client_rcvbuf = 8 * 1024;
    s.use_group = 1;
    s.on_frame = progress_frame;
    s.deadline_ms = 20000;
    server_run(&s);
    CHECK_EQ(s.frames, 1); /* and the client read the whole echo: never closed on the way */
}

/* ---- runs of frames (on_delivered) ------------------------------------------------ */

static void run_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    s->run_frames++;
    echo_frame(c, p, len);
}

static void run_ended(kvs_conn_t *c)
{
    server_t *s = c->data;
    if (s->run_frames == 0)
        return; /* a delivery with nothing to deliver (a kick, the end of input) */
    s->runs++;
    if (s->run_frames > s->max_run)
        s->max_run = s->run_frames;
    s->run_frames = 0;
}

/* Three frames in one write, one alone, two in one write; each group's
 * echoes are read before the next is sent. */
static void client_runs(server_t *s, int fd)
{
    (void)s;
    static const char *const groups[3][3] = {
        {"a", "bb", "ccc"}, {"d", NULL, NULL}, {"ee", "f", NULL}};
    for (int g = 0; g < 3; g++) {
        kvs_buf_t out;
        kvs_buf_init(&out);
        for (int i = 0; i < 3 && groups[g][i] != NULL; i++)
            append_frame(&out, groups[g][i], strlen(groups[g][i]));
        send_all(fd, out.data, out.len);
        kvs_buf_free(&out);
        for (int i = 0; i < 3 && groups[g][i] != NULL; i++)
            expect_frame(fd, groups[g][i]);
    }
}

/* on_delivered follows every run of frames: no frame is left after the
 * last call, frames sent in one write are one run, and the runs of writes
 * answered before the next one came are separate. */
KVS_TEST(on_delivered_follows_each_run_of_frames)
{
    server_t s;
    server_init(&s, 1, client_runs);
    s.on_frame = run_frame;
    s.on_delivered = run_ended;
    server_run(&s);
    CHECK_EQ(s.frames, 6);
    CHECK_EQ(s.run_frames, 0); /* the last frame's run ended */
    CHECK(s.runs >= 3);
    CHECK(s.max_run >= 2);
    CHECK(s.max_run <= 3);
}

/* ---- work an owner holds for the output (kvs_conn_output_full) ----------------------- */

/* The first frame makes the output full by what the owner holds, as the
 * router's answers waiting for a client do. */
static void full_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    echo_frame(c, p, len); /* counts it */
    if (s->frames != 1)
        return;
    kvs_conn_hold(c, (ptrdiff_t)c->high_water);
    CHECK_EQ(kvs_conn_output_full(c, c->high_water), 0); /* less what is not output: room */
    CHECK_EQ(kvs_conn_output_full(c, 0), 1);
}

/* The timer gives the held output back: the owner's held work must be
 * told (a delivery runs though no frame came). */
static void full_release(server_t *s)
{
    if (s->frames == 1 && !s->ticks_paused) {
        s->ticks_paused = 1;
        kvs_conn_hold(&s->conn, -(ptrdiff_t)s->conn.high_water);
    }
}

static void full_delivered(kvs_conn_t *c)
{
    server_t *s = c->data;
    if (s->ticks_paused && !s->resumed) {
        s->resumed = 1;
        atomic_store(&s->drain, 1);
    }
}

/* One frame, its echo, then waits (not closing: no end of input to run a
 * delivery) until the server saw the delivery it waits for. */
static void client_one_then_wait(server_t *s, int fd)
{
    send_frame(fd, "x", 1);
    expect_frame(fd, "x");
    for (int i = 0; i < 10000 && !atomic_load(&s->drain); i++)
        usleep(1000);
    CHECK(atomic_load(&s->drain));
}

/* An owner that holds work while its output is full (the router's
 * requests held for a client's answers) learns when the output drained:
 * kvs_conn_output_full arms a delivery, which runs even with no frame to
 * deliver, once pending output is below the mark (the work held not
 * counted). Without it the held work waited for a frame that never came. */
KVS_TEST(output_full_resumes_the_owner_when_it_drains)
{
    server_t s;
    server_init(&s, 1, client_one_then_wait);
    s.on_frame = full_frame;
    s.on_delivered = full_delivered;
    s.on_tick = full_release;
    s.tick_ms = 50;
    server_run(&s);
    CHECK_EQ(s.frames, 1);
    CHECK(s.resumed);
}

#define COSTLY_FRAMES 40
#define COSTLY_SIZE 60000 /* a frame per 64 KiB read */

static void costly_frame(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    uint64_t until = kvs_now_ns() + s->frame_ns;
    while (kvs_now_ns() < until)
        ;
    s->same_turn = s->frames > 0 && s->frame_turn == s->turns ? s->same_turn + 1 : 1;
    s->frame_turn = s->turns;
    if (s->same_turn > s->max_same_turn)
        s->max_same_turn = s->same_turn;
    echo_frame(c, p, len);
}

/* Costly frames in one long write, the socket never empty while they
 * run; the echoes are read once all are sent. */
static void client_costly_pipeline(server_t *s, int fd)
{
    (void)s;
    int big = 8 << 20;
    CHECK_EQ(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big)), 0);
    static uint8_t frame[COSTLY_SIZE], got[COSTLY_SIZE];
    memset(frame, 'c', sizeof(frame));
    kvs_buf_t out;
    kvs_buf_init(&out);
    for (int i = 0; i < COSTLY_FRAMES; i++)
        append_frame(&out, frame, sizeof(frame));
    send_all(fd, out.data, out.len);
    kvs_buf_free(&out);
    for (int i = 0; i < COSTLY_FRAMES; i++)
        CHECK_EQ(read_frame(fd, got, sizeof(got)), sizeof(frame));
}

/* A connection whose frames outlast the delivery slice gives the loop a
 * turn once its deliveries took KVS_CONN_TURN_NS: its other connections,
 * timers and the flusher run between them. libuv reads a readable stream
 * up to 32 times per wakeup, so without reading stopping, each read
 * delivered a slice of its own and a pipeline of costly frames kept the
 * loop for dozens of them (a router's links then went unread for
 * seconds). A check handle counts the loop's turns (a turn's timers, the
 * kick among them, and its reads come before it): at most four 6 ms frames
 * fit a 20 ms turn, one more passes it. */
/* on_tick: lifts the group's bound while the connection waits in its
 * queue, once the bound has held it (a member also queues when its own
 * slice runs out: a loaded machine's preempted frame did, and the bound,
 * lifted before it ever held, left nothing to test). */
static void lift_while_queued(server_t *s)
{
    if (kvs_list_linked(&s->conn.held_link) && s->group.turns_held > 0 &&
        s->group.turn_budget_ns != 0)
        CHECK_EQ(kvs_conn_group_bound_turn(&s->group, 0), 0);
}

static void another_member_delivers(server_t *s);

/* The costly pipeline's most frames in one loop turn, each frame taking
 * frame_ns, the connection's turn budget budget_ns; with group_ns, in a
 * group bounding its turns so, sharing share_ns slices when not 0, and
 * `tick` run every millisecond when not NULL. */
static int costly_group_run(uint64_t frame_ns, uint64_t budget_ns, uint64_t group_ns,
                            uint64_t share_ns, void (*tick)(server_t *))
{
    server_t s;
    server_init(&s, 1, client_costly_pipeline);
    if (tick != NULL) {
        s.on_tick = tick;
        s.tick_ms = 1;
        /* Sharing: the state the tick keeps holds from the first delivery,
         * not only from the first tick (a loaded machine delivered a whole
         * 5 ms slice before the tick's first millisecond had run out). */
        if (share_ns != 0)
            s.on_start = tick;
    }
    s.on_frame = costly_frame;
    s.frame_ns = frame_ns;
    s.turn_budget_ns = budget_ns;
    s.use_group = group_ns != 0;
    s.group_turn_ns = group_ns;
    s.share_ns = share_ns;
    s.deadline_ms = 20000;
    server_run(&s);
    CHECK_EQ(s.frames, COSTLY_FRAMES);
    CHECK(s.max_same_turn >= 1);
    if (group_ns != 0 && share_ns == 0)
        CHECK(s.group.turns_held > 0);
    if (tick == lift_while_queued)
        CHECK_EQ(s.group.turn_budget_ns, 0); /* lifted while it waited */
    if (share_ns != 0 && tick == NULL)
        CHECK_EQ(s.group.switch_ms, 0); /* alone: its slices were never shared */
    return s.max_same_turn;
}

static int costly_run(uint64_t frame_ns, uint64_t budget_ns)
{
    return costly_group_run(frame_ns, budget_ns, 0, 0, NULL);
}

KVS_TEST(costly_frames_yield_the_loop_between_slices)
{
    CHECK(costly_run(6000000, 0) <= 6); /* each past a slice: 4 in 20 ms (+2) */
}

/* Frames under a slice each, one per read: each delivery ends within its
 * slice, and the turn's budget still stops reading (it was checked only
 * when a slice ran out, so 32 reads of 2 ms frames held the loop 64 ms). */
KVS_TEST(frames_within_a_slice_still_yield_at_the_turns_budget)
{
    CHECK(costly_run(2000000, 0) <= 13); /* 10 in 20 ms, one past it (+2) */
}

/* An owner's smaller budget (a router's clients: a slice a turn). */
KVS_TEST(an_owners_turn_budget_is_kept)
{
    CHECK(costly_run(2000000, KVS_CONN_SLICE_NS) <= 5); /* 2 in 5 ms, one past it (+2) */
}

/* A turn's deliveries of a connection, its kick's and then its reads',
 * share one budget: a read after a kick that spent it delivers nothing
 * (each read delivered a frame before the budget was looked at, so a
 * pipelining client kept the others waiting two slices a turn, not one). */
KVS_TEST(a_kick_and_the_reads_after_it_share_the_turns_budget)
{
    CHECK(costly_run(2000000, KVS_CONN_SLICE_NS) <= 3); /* 0, 2 and 4 ms: 6 ms >= 5 */
}

/* A group's bound on its members' deliveries of a turn holds a member
 * whose own budget is larger: the rest wait for a later turn, and every
 * frame is still delivered. Frames a tenth of a slice: a loaded machine
 * that preempts one for a slice's length ends the delivery by the slice,
 * before the bound holds (2 ms frames on a 4 ms bound never held at all
 * with four busy processes on two cores). */
KVS_TEST(a_groups_turn_bound_holds_its_members)
{
    CHECK(costly_group_run(500000, 0, 1000000, 0, NULL) <= 4); /* 2 in 1 ms, one past it (+1) */
}

/* on_tick: as far as the group can tell, another member delivered just
 * now (a client sending one request at a time beside the pipeline). */
static const kvs_conn_t another_member;
static void another_member_delivers(server_t *s)
{
    s->group.last_member = &another_member;
}

/* A router's client: its turn budget a slice, its group's the default. */
static int shared_run(int others)
{
    return costly_group_run(500000, KVS_CONN_SLICE_NS, KVS_CONN_TURN_NS, 1000000,
                            others ? another_member_delivers : NULL);
}

/* While members take turns, a member's deliveries of a turn take the
 * shared slice (1 ms), not its own 5 ms: a client pipelining thousands
 * of requests kept another's single one waiting a whole slice. */
KVS_TEST(members_taking_turns_share_shorter_slices)
{
    CHECK(shared_run(1) <= 4); /* 2 in 1 ms, one past it (+1) */
}

/* on_tick: the group turned to this member switched_ago_ms ago (another
 * member ran a request then), and it has run alone since. */
static uint64_t switched_ago_ms;
static void switched_to_it_ago(server_t *s)
{
    s->group.last_member = &s->conn;
    s->group.switch_ms = uv_now(&s->loop) - switched_ago_ms + 1; /* + 1: as conn_ran keeps it */
}

/* Slices stay shared for KVS_CONN_SHARED_MS (10 s) after another member
 * ran: with a 100 ms window a client sending a request every second or
 * so beside a pipelining one found whole slices again each time, and
 * waited one (5-7 ms) for every request. */
KVS_TEST(slices_stay_shared_for_seconds_after_another_member_ran)
{
    switched_ago_ms = 5000;
    CHECK(costly_group_run(500000, KVS_CONN_SLICE_NS, KVS_CONN_TURN_NS, 1000000,
                           switched_to_it_ago) <= 4); /* 2 in 1 ms, one past it (+1) */
}

/* One alone keeps whole slices (fewer loop turns for the same work). */
KVS_TEST(a_member_alone_keeps_whole_slices)
{
    shared_run(0);
}

/* A bound lifted while a member waits in the queue lets it go: every
 * frame is delivered (the queue's timer had kept comparing against a
 * bound of 0, and held it for ever). */
KVS_TEST(a_lifted_turn_bound_releases_its_held_members)
{
    costly_group_run(500000, 0, 1000000, 0, lift_while_queued);
}

static void never(uv_timer_t *t)
{
    (void)t;
    CHECK(0); /* closed before it was due */
}

/* The end of a shutdown: active handles of every kind, one closing
 * already; after kvs_loop_close_all the loop has nothing left to run. */
KVS_TEST(loop_close_all_leaves_nothing_to_run)
{
    uv_loop_t loop;
    uv_timer_t a, b;
    uv_check_t chk;
    uv_tcp_t tcp;
    CHECK_EQ(uv_loop_init(&loop), 0);
    CHECK_EQ(uv_timer_init(&loop, &a), 0);
    CHECK_EQ(uv_timer_init(&loop, &b), 0);
    CHECK_EQ(uv_timer_start(&a, never, 60000, 0), 0);
    CHECK_EQ(uv_check_init(&loop, &chk), 0);
    CHECK_EQ(uv_tcp_init(&loop, &tcp), 0);
    uv_close((uv_handle_t *)&b, NULL); /* closing: left alone */
    kvs_loop_close_all(&loop);
    CHECK(uv_is_closing((uv_handle_t *)&a) && uv_is_closing((uv_handle_t *)&tcp));
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

/* ---- kvs_conn_peer_gone and kvs_conn_abort ----------------------------------------- */

static void closed_noop(kvs_conn_t *c)
{
    (void)c;
}

/* `fd`, one end of a connected pair, as a kvs_conn on `loop` (not reading). */
static void conn_on_fd(uv_loop_t *loop, kvs_conn_t *c, int is_unix, int fd)
{
    CHECK_EQ(kvs_conn_init(c, loop, is_unix, 1024, NULL, NULL, closed_noop), 0);
    CHECK_EQ(is_unix ? uv_pipe_open(&c->h.pipe, fd) : uv_tcp_open(&c->h.tcp, fd), 0);
}

/* Waits (bounded) until `fd` reports one of `events`. */
static int wait_events(int fd, short events)
{
    for (int i = 0; i < 200; i++) {
        struct pollfd p = {.fd = fd, .events = events, .revents = 0};
        if (poll(&p, 1, 10) == 1 && (p.revents & events) != 0)
            return 1;
    }
    return 0;
}

/* A connected TCP pair on 127.0.0.1: fds[0] the accepted end, fds[1] the
 * connecting one. */
static void tcp_pair(int fds[2])
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(l >= 0);
    CHECK_EQ(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    CHECK_EQ(listen(l, 1), 0);
    CHECK_EQ(getsockname(l, (struct sockaddr *)&a, &alen), 0);
    fds[1] = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fds[1] >= 0);
    CHECK_EQ(connect(fds[1], (struct sockaddr *)&a, sizeof(a)), 0);
    fds[0] = accept(l, NULL, NULL);
    CHECK(fds[0] >= 0);
    close(l);
}

/* A peer is gone once it closed a unix socket; not while it only shut
 * down its sending side (it still reads its answers), even with unread
 * requests waiting. */
KVS_TEST(peer_gone_after_a_unix_close_not_a_half_close)
{
    uv_loop_t loop;
    kvs_conn_t c;
    int sv[2];
    CHECK_EQ(uv_loop_init(&loop), 0);
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    conn_on_fd(&loop, &c, 1, sv[0]);
    CHECK(!kvs_conn_peer_gone(&c));
    CHECK_EQ(write(sv[1], "request", 7), 7);
    CHECK_EQ(shutdown(sv[1], SHUT_WR), 0);
    CHECK(wait_events(sv[0], POLLRDHUP));
    CHECK(!kvs_conn_peer_gone(&c));
    close(sv[1]);
    CHECK(kvs_conn_peer_gone(&c));
    kvs_conn_close(&c);
    CHECK(!kvs_conn_peer_gone(&c)); /* closing: nothing more is run anyway */
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

/* Over TCP an orderly close looks like a half close, so it is not taken
 * for gone; a reset is, and kvs_conn_abort sends one, as does any close
 * after kvs_conn_reset_on_close. */
KVS_TEST(peer_gone_after_a_tcp_reset_which_abort_sends)
{
    uv_loop_t loop;
    kvs_conn_t orderly, c, peer;
    int fin[2], rst[2];
    CHECK_EQ(uv_loop_init(&loop), 0);
    tcp_pair(fin);
    conn_on_fd(&loop, &orderly, 0, fin[0]);
    CHECK_EQ(write(fin[1], "request", 7), 7);
    close(fin[1]); /* FIN */
    CHECK(wait_events(fin[0], POLLRDHUP));
    CHECK(!kvs_conn_peer_gone(&orderly));
    kvs_conn_close(&orderly);

    tcp_pair(rst);
    conn_on_fd(&loop, &c, 0, rst[0]);
    conn_on_fd(&loop, &peer, 0, rst[1]);
    CHECK_EQ(write(rst[1], "request", 7), 7);
    CHECK(!kvs_conn_peer_gone(&c));
    kvs_conn_abort(&peer);
    CHECK(wait_events(rst[0], POLLHUP | POLLERR));
    CHECK(kvs_conn_peer_gone(&c));
    char buf[16]; /* what arrived before the reset is still there to read */
    CHECK_EQ(read(rst[0], buf, sizeof(buf)), 7);
    kvs_conn_close(&c);

    /* kvs_conn_reset_on_close: any close resets, an ordinary one included */
    kvs_conn_t later, closer;
    int lin[2];
    tcp_pair(lin);
    conn_on_fd(&loop, &later, 0, lin[0]);
    conn_on_fd(&loop, &closer, 0, lin[1]);
    CHECK_EQ(kvs_conn_reset_on_close(&closer), 0);
    CHECK_EQ(write(lin[1], "request", 7), 7);
    kvs_conn_close(&closer);
    CHECK(wait_events(lin[0], POLLHUP | POLLERR));
    CHECK(kvs_conn_peer_gone(&later));
    kvs_conn_close(&later);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

KVS_TEST_MAIN(
    KVS_CASE(loop_close_all_leaves_nothing_to_run),
    KVS_CASE(output_queued_by_a_timer_leaves_without_waiting_for_the_next_event),
    KVS_CASE(a_wake_never_spins_a_flusher_whose_check_is_gone), KVS_CASE(echo_pipelined_frames_tcp),
    KVS_CASE(echo_pipelined_frames_unix), KVS_CASE(oversized_header_gets_last_response_then_close),
    KVS_CASE(compressed_frame_is_eproto_then_close), KVS_CASE(peer_eof_is_eclosed),
    KVS_CASE(flusher_before_runs_before_bytes_leave),
    KVS_CASE(backpressure_stops_and_resumes_reading),
    KVS_CASE(pause_resume_delivers_buffered_frames),
    KVS_CASE(output_mark_stops_execution_not_just_reading),
    KVS_CASE(reading_ahead_leaves_half_the_input_budget),
    KVS_CASE(output_cap_holds_across_a_reload_and_lifts),
    KVS_CASE(a_lowered_hard_limit_lets_a_draining_member_finish),
    KVS_CASE(hard_limit_closes_with_held_output), KVS_CASE(output_larger_than_a_write_leaves_whole),
    KVS_CASE(buffers_shrink_after_a_burst), KVS_CASE(frame_timeout_closes_a_stalled_frame),
    KVS_CASE(frame_timeout_spares_a_frame_that_completes),
    KVS_CASE(input_budget_refuses_a_frame_that_does_not_fit),
    KVS_CASE(output_budget_closes_the_member_owed_the_most),
    KVS_CASE(output_budget_looks_after_the_flush), KVS_CASE(idle_timeout_closes_an_idle_member),
    KVS_CASE(auth_timeout_closes_a_member_that_never_authenticates),
    KVS_CASE(auth_timeout_spares_a_member_that_authenticated),
    KVS_CASE(deadline_closes_a_member_that_keeps_talking),
    KVS_CASE(deadline_counts_once_the_output_is_written),
    KVS_CASE(deadline_taken_away_closes_nothing),
    KVS_CASE(output_timeout_closes_a_member_that_does_not_read),
    KVS_CASE(output_timeout_spares_a_member_that_reads),
    KVS_CASE(min_progress_closes_a_member_that_stops_reading),
    KVS_CASE(min_progress_counts_what_the_socket_still_holds),
    KVS_CASE(min_progress_spares_a_member_that_reads_slowly),
    KVS_CASE(min_progress_counts_what_the_peer_took_not_what_the_socket_took),
    KVS_CASE(on_delivered_follows_each_run_of_frames),
    KVS_CASE(output_full_resumes_the_owner_when_it_drains),
    KVS_CASE(costly_frames_yield_the_loop_between_slices),
    KVS_CASE(frames_within_a_slice_still_yield_at_the_turns_budget),
    KVS_CASE(an_owners_turn_budget_is_kept),
    KVS_CASE(a_kick_and_the_reads_after_it_share_the_turns_budget),
    KVS_CASE(a_groups_turn_bound_holds_its_members),
    KVS_CASE(a_lifted_turn_bound_releases_its_held_members),
    KVS_CASE(members_taking_turns_share_shorter_slices),
    KVS_CASE(slices_stay_shared_for_seconds_after_another_member_ran),
    KVS_CASE(a_member_alone_keeps_whole_slices),
    KVS_CASE(peer_gone_after_a_unix_close_not_a_half_close),
    KVS_CASE(peer_gone_after_a_tcp_reset_which_abort_sends))
