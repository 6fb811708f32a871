/*
 * kvs_conn: framed connection, per-turn write batching, and the bounds that
 * keep one peer from costing the process more than its share.
 *
 * Invariants:
 *  - At most one uv_write is in flight (KVS_CONN_WRITING); its bytes are
 *    wbuf[woff, woff + wchunk), and nobody touches wbuf until the write
 *    callback. Output appended meanwhile waits in `out`, which becomes the
 *    next wbuf once the current one is written. So bytes leave in exactly
 *    the order they were appended, in writes of at most max_write bytes.
 *  - Frames are delivered only from the read callback, kvs_conn_resume and
 *    the delivery kick (a zero-delay timer), never from a flush: a flush can
 *    run inside a flusher's turn-end step, where executing a request would
 *    put its answer out ahead of the commit it depends on.
 *  - KVS_CONN_DELIVERING is set while frames are being delivered; pause,
 *    resume and close requested from inside a frame callback take effect
 *    when the callback returns, never under the delivering loop's feet.
 *  - One delivery runs frames for at most KVS_CONN_SLICE_NS (5 ms): past
 *    it the rest wait for the delivery kick, so one connection's pipeline
 *    of costly requests (a router's local reads of whole tables) never
 *    keeps the loop from other connections or its timers (the heartbeat
 *    the master watches). libuv reads a readable stream up to 32 times in
 *    one go, each read delivering for a slice of its own: once a loop
 *    turn's deliveries of a connection took KVS_CONN_TURN_NS (20 ms; the
 *    owner may set less, turn_budget_ns), reading stops
 *    (KVS_CONN_YIELDED) until the kick, in a later turn.
 *    Without that, a client pipelining megabyte requests kept the router's
 *    loop for 32 of them (seconds), its links' answers unread and its
 *    requests to the workers unsent, until the links were taken for hung;
 *    the turn's budget, larger than a slice, keeps a busy worker's batch
 *    (one commit a turn) as large as several reads.
 *  - Delivery is allowed iff not paused, framing intact, not shutting or
 *    closing, and pending output below high_water. Reading is on iff
 *    delivery is allowed, or only the output stops it and fewer than
 *    high_water bytes of input wait (conn_reads_ahead), and input has not
 *    ended or been stopped. Neither is stored: conn_can_deliver and
 *    conn_update_reading derive them. Reading ahead is what lets a peer
 *    that sends its whole pipeline before it reads any answer finish
 *    sending: stopping both at the mark left it blocked in its write and
 *    us waiting for it to read, for good.
 *  - The conn's memory is the owner's; it is released only from on_close,
 *    which runs after libuv is done with both handles (and after a
 *    cancelled write's callback).
 *
 * TLS: `c->tls` set means ciphertext on the wire. Reads go into the
 * session (kvs_tls_in_space/commit) and are pumped at once, entirely, into
 * the decoder (conn_tls_input), so no plaintext ever waits inside OpenSSL
 * for a read that may not come; delivery then runs as for plaintext. A
 * flush encrypts all of `out` into `cout` (conn_tls_seal) and writes `cout`
 * where a plaintext connection writes `out`; handshake output goes from
 * `cout` to the socket as soon as it is made (conn_tls_send), never taking
 * `out` along. On a shutdown, close_notify is sealed after the last answer.
 *
 * Groups: the members of a kvs_conn_group are on an intrusive list, swept
 * once a second for frame, output and idle timeouts (a timer per connection would
 * cost a heap operation per read on the hot path). Decoder memory beyond
 * KVS_CONN_INPUT_FREE per member is charged to the group before it is
 * allocated; it is uncharged when the buffer shrinks or the member closes.
 * The sweep also gives back the empty buffers of members that read nothing
 * since the last sweep (conn_trim_idle), and the heap's free memory to the
 * system when much of it is free (kvs_mem).
 */
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_mem.h"
#include "kvs_time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_SIZE 65536
#define TLS_RECORD 16384 /* most plaintext one TLS record holds: decrypted one at a time */
#define SWEEP_MS 1000

_Static_assert(KVS_CONN_MAX_WRITE <= UINT32_MAX, "a write must fit uv_buf_t's unsigned length");
_Static_assert((int)KVS_TLS_PEER_NONE == KVS_CLIENT_CERT_NONE &&
                   (int)KVS_TLS_PEER_OPTIONAL == KVS_CLIENT_CERT_OPTIONAL &&
                   (int)KVS_TLS_PEER_REQUIRE == KVS_CLIENT_CERT_REQUIRE,
               "tls.*.client_cert maps onto kvs_tls_peer_t");

static void conn_update_reading(kvs_conn_t *c);
static void conn_linger(kvs_conn_t *c);
static void conn_deliver(kvs_conn_t *c);
static void conn_kick(kvs_conn_t *c);
static void conn_kick_after(kvs_conn_t *c, uint64_t ms);
static void conn_tls_input(kvs_conn_t *c);
static void conn_tls_send(kvs_conn_t *c);
static int conn_write_queue(kvs_conn_t *c, kvs_buf_t *q);

static int has(const kvs_conn_t *c, unsigned f)
{
    return (c->flags & f) != 0;
}

int kvs_conn_init(kvs_conn_t *c, uv_loop_t *loop, int is_unix, uint32_t max_frame,
                  kvs_conn_frame_cb on_frame, kvs_conn_error_cb on_error,
                  kvs_conn_close_cb on_close)
{
    memset(c, 0, sizeof(*c));
    kvs_frame_dec_init(&c->dec, max_frame);
    kvs_buf_init(&c->out);
    kvs_buf_init(&c->cout);
    kvs_buf_init(&c->wbuf);
    c->high_water = KVS_CONN_DEFAULT_HIGH_WATER;
    if (c->high_water < 2u * (size_t)max_frame)
        c->high_water = 2u * (size_t)max_frame;
    c->max_write = KVS_CONN_MAX_WRITE;
    c->on_frame = on_frame;
    c->on_error = on_error;
    c->on_close = on_close;
    snprintf(c->peer, sizeof(c->peer), "%s", is_unix ? "unix socket peer" : "TCP peer");
    int rc = is_unix ? uv_pipe_init(loop, &c->h.pipe, 0) : uv_tcp_init(loop, &c->h.tcp);
    c->h.handle.data = c;
    if (rc != 0)
        return rc;
    c->open_handles = 1;
    rc = uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    if (rc == 0)
        c->open_handles = 2;
    return rc;
}

void kvs_conn_set_max_frame(kvs_conn_t *c, uint32_t max_frame)
{
    if (c->dec.max != max_frame)
        c->flags &= ~KVS_CONN_HEAD_READY; /* (an error under the old limit may not be one now) */
    c->dec.max = max_frame;
}

/* A group member's high-water mark: the group's (or the default), under
 * the member's cap. */
static size_t member_high_water(const kvs_conn_t *c, const kvs_conn_limits_t *limits)
{
    size_t base =
        limits != NULL && limits->high_water > 0 ? limits->high_water : KVS_CONN_DEFAULT_HIGH_WATER;
    return c->output_cap > 0 && c->output_cap < base ? c->output_cap : base;
}

void kvs_conn_cap_output(kvs_conn_t *c, size_t cap)
{
    c->output_cap = cap;
    c->high_water = member_high_water(c, c->group != NULL ? &c->group->limits : NULL);
    if (has(c, KVS_CONN_OUTPUT_FULL) && kvs_conn_pending(c) < c->high_water) {
        c->flags &= ~KVS_CONN_OUTPUT_FULL;
        conn_kick(c);
    }
}

void kvs_conn_set_deadline(kvs_conn_t *c, uint64_t ms, const char *why)
{
    c->deadline_wait_ms = ms;
    c->deadline_ms = 0; /* the sweep starts counting once nothing waits to be written */
    c->deadline_why = why;
}

void kvs_conn_set_min_progress(kvs_conn_t *c, size_t min_bytes, uint64_t window_ms, const char *why)
{
    c->progress_min = min_bytes;
    c->progress_window_ms = window_ms;
    c->progress_since_ms = 0; /* the sweep starts a window when it finds output waiting */
    c->progress_why = why;
}

void kvs_conn_set_unproven(kvs_conn_t *c, int unproven)
{
    if (!unproven)
        c->unproven_since_ms = 0;
    else if (c->unproven_since_ms == 0)
        c->unproven_since_ms = uv_now(c->h.handle.loop) + 1; /* never 0 */
}

int kvs_conn_tls_pending(const kvs_conn_t *c)
{
    return c->tls != NULL && !has(c, KVS_CONN_TLS_READY);
}

void kvs_unproven_init(kvs_unproven_t *u)
{
    memset(u, 0, sizeof(*u));
    kvs_list_init(&u->conns);
}

static void unproven_unlink(kvs_unproven_t *u, kvs_conn_t *c)
{
    if (c->un_list != u)
        return;
    kvs_list_remove(&c->un_link);
    c->un_list = NULL;
}

void kvs_unproven_set(kvs_unproven_t *u, kvs_conn_t *c, int unproven)
{
    kvs_conn_set_unproven(c, unproven);
    if (!unproven)
        unproven_unlink(u, c);
    else if (c->un_list != u && !c->evicted && !has(c, KVS_CONN_CLOSING)) {
        kvs_list_push_back(&u->conns, &c->un_link);
        c->un_list = u;
    }
}

void kvs_unproven_to_front(kvs_unproven_t *u, kvs_conn_t *c)
{
    if (c->unproven_since_ms == 0 || c->evicted || has(c, KVS_CONN_CLOSING))
        return;
    unproven_unlink(u, c);
    kvs_list_push_front(&u->conns, &c->un_link);
    c->un_list = u;
}

void kvs_unproven_closed(kvs_unproven_t *u, kvs_conn_t *c)
{
    unproven_unlink(u, c);
    if (c->evicted) {
        c->evicted = 0;
        u->evicting--;
    }
}

int kvs_unproven_evict(kvs_unproven_t *u, int (*spared)(const kvs_conn_t *c), int max_spared)
{
    kvs_conn_t *c = NULL;
    int skipped = 0;
    kvs_list_t *pos;
    KVS_LIST_EACH(pos, &u->conns)
    {
        c = KVS_LIST_ENTRY(pos, kvs_conn_t, un_link);
        if (spared == NULL || !spared(c))
            break;
        if (skipped++ == max_spared)
            return 0;
        c = NULL;
    }
    if (c == NULL)
        return 0;
    if (kvs_conn_may_log(c))
        kvs_info("closing %s %s: limits.max_clients reached, and it is the oldest of the "
                 "%ss that have not authenticated",
                 c->group != NULL ? c->group->what : "client", c->peer,
                 c->group != NULL ? c->group->what : "client");
    unproven_unlink(u, c);
    u->evicted++;
    u->evicting++; /* its place is free now, though counted until it has closed */
    c->evicted = 1;
    kvs_conn_abort(c);
    return 1;
}

/* What the in-flight uv_write has already handed to the socket: libuv
 * writes it piece by piece as the peer reads, and counts down the
 * stream's write queue as it goes, long before the write completes (a
 * write of a whole high-water mark to a slow reader takes a while). */
static size_t conn_in_flight_sent(const kvs_conn_t *c)
{
    if (!has(c, KVS_CONN_WRITING) || has(c, KVS_CONN_CLOSING))
        return 0;
    size_t queued = uv_stream_get_write_queue_size(&c->h.stream);
    return queued < c->wchunk ? c->wchunk - queued : 0;
}

size_t kvs_conn_backlog(const kvs_conn_t *c)
{
    return c->out.len + c->cout.len + (c->wbuf.len - c->woff);
}

/* Bytes in the socket's send queue its peer has not taken yet (TCP: not
 * acknowledged; a unix socket: not read): the kernel may hold megabytes
 * (TCP grows the buffer by itself), and wakes libuv to write more only
 * once a third of it drained, so what the socket took says little of a
 * slow reader's pace. 0 when it cannot tell. */
static size_t conn_socket_queued(const kvs_conn_t *c)
{
    uv_os_fd_t fd;
    int n = 0;
    if (has(c, KVS_CONN_CLOSING) || uv_fileno(&c->h.handle, &fd) != 0 ||
        ioctl(fd, SIOCOUTQ, &n) != 0 || n < 0)
        return 0;
    return (size_t)n;
}

size_t kvs_conn_untaken(const kvs_conn_t *c)
{
    return kvs_conn_backlog(c) - conn_in_flight_sent(c) + conn_socket_queued(c);
}

uint64_t kvs_conn_taken(const kvs_conn_t *c)
{
    uint64_t handed = c->written + conn_in_flight_sent(c);
    size_t queued = conn_socket_queued(c);
    return queued < handed ? handed - queued : 0;
}

uint64_t kvs_conn_queued_total(const kvs_conn_t *c)
{
    return c->written + kvs_conn_backlog(c);
}

size_t kvs_conn_pending(const kvs_conn_t *c)
{
    return kvs_conn_backlog(c) + c->held + c->reserved;
}

int kvs_conn_output_full(kvs_conn_t *c, size_t not_output)
{
    size_t pending = kvs_conn_pending(c);
    if (not_output > pending)
        not_output = pending;
    if (pending - not_output < c->high_water)
        return 0;
    c->resume_below = c->high_water + not_output; /* conn_output_drained kicks a delivery */
    return 1;
}

/* A codec's plaintext stream that starts with a TLS record header: a TLS
 * client on a plaintext port. (A kvs frame decoder sees the same bytes as
 * an oversized frame: conn_frame_error.) */
static int conn_codec_hello(const kvs_conn_t *c, const uint8_t *p, size_t n)
{
    if (has(c, KVS_CONN_START_SEEN) || c->tls != NULL || c->codec->plain_only || n < 3)
        return 0;
    return kvs_tls_looks_like_hello((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                                    (uint32_t)p[2] << 8);
}

/* The next message: 1 with its bytes, 0 when incomplete, or an error. */
static int conn_next(kvs_conn_t *c, const uint8_t **msg, size_t *len)
{
    if (c->codec == NULL)
        return kvs_frame_dec_next(&c->dec, msg, len);
    const uint8_t *p;
    size_t n, used = 0;
    c->flags &= ~KVS_CONN_HEAD_READY; /* what this finds is what counts */
    kvs_frame_dec_data(&c->dec, &p, &n);
    if (conn_codec_hello(c, p, n))
        return KVS_ETLSHELLO;
    int rc = c->codec->next(c->codec->state, p, n, c->dec.max, &used, 0);
    if (rc <= 0)
        return rc < 0 ? KVS_EPROTO : 0;
    c->flags |= KVS_CONN_START_SEEN;
    kvs_frame_dec_consume(&c->dec, used);
    *msg = p;
    *len = used;
    return 1;
}

/* Whether a complete message (or an error) waits in the decoder. A codec
 * is asked with peek (it keeps its progress and builds nothing), once: a
 * message found whole stays whole whatever comes after it, until
 * conn_next takes it. Asked at every read while requests wait (reading
 * ahead), a codec that measured a whole message of a million arguments
 * again each time made every byte a client trickled in cost milliseconds. */
static int conn_ready(kvs_conn_t *c)
{
    if (c->codec == NULL)
        return kvs_frame_dec_ready(&c->dec);
    if (has(c, KVS_CONN_HEAD_READY))
        return 1;
    const uint8_t *p;
    size_t n, used;
    kvs_frame_dec_data(&c->dec, &p, &n);
    if (n == 0 || !(conn_codec_hello(c, p, n) ||
                    c->codec->next(c->codec->state, p, n, c->dec.max, &used, 1) != 0))
        return 0;
    c->flags |= KVS_CONN_HEAD_READY;
    return 1;
}

int kvs_conn_has_frame(kvs_conn_t *c)
{
    return !has(c, KVS_CONN_FRAME_ERROR) && conn_ready(c);
}

/* ---- limits --------------------------------------------------------------- */

int kvs_conn_may_log(kvs_conn_t *c)
{
    kvs_conn_group_t *g = c->group;
    if (g != NULL)
        return kvs_log_budget_take(&g->log_budget, uv_now(g->loop));
    return c->log_budget == NULL || kvs_log_budget_take(c->log_budget, uv_now(c->h.handle.loop));
}

/* Notes when pending output started to wait, for the output timeout. */
static void conn_track_output(kvs_conn_t *c)
{
    if (c->group == NULL || c->group->limits.output_timeout_ms == 0)
        return; /* no output timeout here (only the metrics port has one) */
    if (c->output_since_ms == 0 && kvs_conn_pending(c) > 0 && !has(c, KVS_CONN_CLOSING))
        c->output_since_ms = uv_now(c->h.handle.loop) + 1; /* never 0 */
}

/* Past the hard limit the peer is not reading what it asked for: close it
 * (its output is dropped), naming it. Returns 1 if it was closed. */
static int conn_check_hard(kvs_conn_t *c)
{
    if (c->hard_limit == 0 || has(c, KVS_CONN_CLOSING) || kvs_conn_pending(c) <= c->hard_limit)
        return 0;
    if (kvs_conn_may_log(c))
        kvs_warn("closing %s: %zu bytes of answers are waiting for it, more than "
                 "limits.client_output (%zu); it sends requests faster than it reads the answers",
                 c->peer, kvs_conn_pending(c), c->hard_limit);
    kvs_conn_close(c);
    return 1;
}

/* Keeps c's part of its group's output_used current: the memory its
 * output takes (its buffers, whatever they hold, and the answers its
 * owner holds for it), or nothing for a member the budget spares. */
static void conn_count_output(kvs_conn_t *c)
{
    kvs_conn_group_t *g = c->group;
    if (g == NULL)
        return;
    size_t now = c->turn_exempt ? 0 : c->out.cap + c->cout.cap + c->wbuf.cap + c->held;
    g->output_used = g->output_used - c->out_counted + now;
    c->out_counted = now;
}

static int group_over_budget(const kvs_conn_group_t *g)
{
    return g->limits.output_budget != 0 && g->output_used > g->limits.output_budget;
}

/* Frees c's output buffers that hold nothing and are larger than `keep`
 * bytes (0: all of them): memory a burst left behind (KVS_CONN_KEEP_BUFFER,
 * once drained), an idle connection's (KVS_CONN_IDLE_KEEP), or every empty
 * one when its group is past its output budget. The caller counts. */
static void conn_free_empty(kvs_conn_t *c, size_t keep)
{
    if (c->out.len == 0 && c->out.cap > keep)
        kvs_buf_free(&c->out);
    if (c->cout.len == 0 && c->cout.cap > keep)
        kvs_buf_free(&c->cout);
    if (!has(c, KVS_CONN_WRITING) && c->wbuf.len == 0 && c->wbuf.cap > keep)
        kvs_buf_free(&c->wbuf);
}

/* Frees c's output buffers that hold nothing (kept for the next answer). */
static void conn_trim_drained(kvs_conn_t *c)
{
    if (has(c, KVS_CONN_CLOSING | KVS_CONN_DELIVERING))
        return;
    conn_free_empty(c, 0);
    conn_count_output(c);
}

/* The members' output together is past the group's budget: first every
 * member's empty buffers are given back (members that read hold little
 * else), then, while it is still past, the member whose output takes the
 * most is closed (the clients that stopped reading, not the many that
 * read), naming it. Scans of the members: one, and one a close, only when
 * past the budget. Returns 1 if `c` (may be NULL) was closed. */
static int group_relieve(kvs_conn_group_t *g, const kvs_conn_t *c)
{
    if (!group_over_budget(g))
        return 0;
    kvs_list_t *pos, *tmp;
    KVS_LIST_EACH_SAFE(pos, tmp, &g->members)
    {
        conn_trim_drained(KVS_LIST_ENTRY(pos, kvs_conn_t, grp_link));
    }
    int closed_c = 0;
    while (group_over_budget(g)) {
        kvs_conn_t *most = NULL;
        KVS_LIST_EACH(pos, &g->members)
        {
            kvs_conn_t *m = KVS_LIST_ENTRY(pos, kvs_conn_t, grp_link);
            if (most == NULL || m->out_counted > most->out_counted)
                most = m;
        }
        if (most == NULL || most->out_counted == 0)
            break; /* cannot be: output_used sums the members' parts */
        if (kvs_conn_may_log(most))
            kvs_warn("closing %s: its answers waiting take %zu bytes, the most of any %s, and "
                     "all %ss' waiting answers together (%zu bytes) passed "
                     "limits.output_buffers (%zu); it reads its answers slower than it asks "
                     "for them",
                     most->peer, most->out_counted, g->what, g->what, g->output_used,
                     g->limits.output_budget);
        g->output_evicted++;
        closed_c |= most == c;
        kvs_conn_close(most); /* leaves the group: output_used drops by its part */
    }
    return closed_c;
}

/* c's output grew and its group is past its budget: the group is relieved
 * once this loop turn's output has gone into the sockets (by c's flusher,
 * after its flush), so that what clients that read were just given is
 * not taken for waiting; without a flusher, at once. Returns 1 if `c`
 * itself was closed. */
static int group_check_output(kvs_conn_t *c)
{
    kvs_conn_group_t *g = c->group;
    if (g == NULL || !group_over_budget(g))
        return 0;
    kvs_flusher_t *f = c->flusher;
    if (f == NULL || f->closing)
        return group_relieve(g, c);
    if (!kvs_list_linked(&g->relieve_link))
        kvs_list_push_back(&f->relieve, &g->relieve_link);
    kvs_flusher_wake(f);
    return 0;
}

/* A member's hard limit once its group's is `hard`: that, or in a group
 * whose members drain past it, what it owes on top of that, down to it as
 * it drains (conn_output_drained), but never more than it had: reloads
 * do not add up. 0: none. */
static size_t drained_limit(const kvs_conn_t *c, size_t hard)
{
    if (!c->group->drain_past_limit || hard == 0)
        return hard;
    size_t had = c->hard_limit != 0 ? c->hard_limit : SIZE_MAX;
    size_t grace = kvs_conn_pending(c) + hard;
    if (grace > had)
        grace = had;
    return grace > hard ? grace : hard;
}

/* Pending output went down: if delivery stopped at the high-water mark and
 * may go on now, schedule it (never deliver from here: see invariants). */
static void conn_output_drained(kvs_conn_t *c)
{
    conn_count_output(c);
    const kvs_conn_group_t *g = c->group;
    if (g != NULL && c->hard_limit > g->limits.hard_limit) /* draining past a lowered limit */
        c->hard_limit = drained_limit(c, g->limits.hard_limit);
    if (kvs_conn_pending(c) == 0)
        c->output_since_ms = 0; /* all taken: the output timeout starts over */
    if (has(c, KVS_CONN_OUTPUT_FULL) && kvs_conn_pending(c) < c->high_water) {
        c->flags &= ~KVS_CONN_OUTPUT_FULL;
        conn_kick(c);
    }
    if (c->resume_below != 0 && kvs_conn_pending(c) < c->resume_below) {
        c->resume_below = 0;
        conn_kick(c);
    }
    conn_update_reading(c);
}

/* kvs_conn_hold and kvs_conn_reserve: `delta` more (or fewer) bytes of
 * *owed, the one or the other. */
static void conn_owe(kvs_conn_t *c, size_t *owed, ptrdiff_t delta)
{
    if (delta < 0 && (size_t)-delta > *owed)
        delta = -(ptrdiff_t)*owed;
    *owed = (size_t)((ptrdiff_t)*owed + delta);
    conn_track_output(c);
    if (delta > 0) {
        conn_count_output(c);
        if (!conn_check_hard(c))
            group_check_output(c);
    } else if (delta < 0)
        conn_output_drained(c);
}

void kvs_conn_hold(kvs_conn_t *c, ptrdiff_t delta)
{
    conn_owe(c, &c->held, delta);
}

void kvs_conn_reserve(kvs_conn_t *c, ptrdiff_t delta)
{
    conn_owe(c, &c->reserved, delta);
}

/* ---- input accounting (groups) ------------------------------------------- */

static size_t chargeable(size_t cap)
{
    return cap > KVS_CONN_INPUT_FREE ? cap - KVS_CONN_INPUT_FREE : 0;
}

/* Brings the group's charge for this member in line with `cap`. */
static void conn_charge(kvs_conn_t *c, size_t cap)
{
    kvs_conn_group_t *g = c->group;
    size_t want = chargeable(cap);
    if (g == NULL)
        return;
    g->input_used = g->input_used - c->charged + want;
    c->charged = want;
}

/* Gives back what buffers still hold for a connection that read nothing
 * for a whole sweep: everything above KVS_CONN_IDLE_KEEP in a buffer with
 * nothing in it. Trimming on drain keeps up to KVS_CONN_KEEP_BUFFER per
 * buffer, so that a busy connection does not allocate per request; an
 * idle one keeping that much for each of its buffers would let a pool of
 * connections, each sent one large request or answer, hold hundreds of
 * kilobytes apiece for as long as they stay connected. */
static void conn_trim_idle(kvs_conn_t *c)
{
    if (has(c, KVS_CONN_CLOSING | KVS_CONN_DELIVERING))
        return;
    conn_free_empty(c, KVS_CONN_IDLE_KEEP);
    conn_count_output(c);
    if (kvs_frame_dec_shrink(&c->dec, KVS_CONN_IDLE_KEEP))
        conn_charge(c, 0);
}

/* Whether growing the decoder to `cap` fits the group's input budget, or
 * its 1/`share` (reading ahead: conn_reads_ahead). */
static int conn_budget_share_allows(const kvs_conn_t *c, size_t cap, size_t share)
{
    const kvs_conn_group_t *g = c->group;
    if (g == NULL || g->limits.input_budget == 0 || chargeable(cap) <= c->charged)
        return 1;
    return g->input_used - c->charged + chargeable(cap) <= g->limits.input_budget / share;
}

static int conn_budget_allows(const kvs_conn_t *c, size_t cap)
{
    return conn_budget_share_allows(c, cap, 1);
}

/* ---- reading ---------------------------------------------------------- */

/* Delivery is stopped by something other than the output (see the file
 * comment). */
static int conn_held_back(const kvs_conn_t *c)
{
    return has(c, KVS_CONN_PAUSED | KVS_CONN_FRAME_ERROR | KVS_CONN_SHUTTING | KVS_CONN_LINGERING |
                      KVS_CONN_CLOSING);
}

static int conn_can_deliver(const kvs_conn_t *c);

/* What a connection whose output alone stops delivery may still read:
 * high_water bytes of input waiting, less those that do. */
static size_t conn_ahead_room(const kvs_conn_t *c)
{
    size_t have = kvs_frame_dec_pending(&c->dec);
    return have < c->high_water ? c->high_water - have : 0;
}

/* Reading on past the high-water mark: requests are read and buffered,
 * not run, while only the output stops delivery, up to conn_ahead_room,
 * and never into the last half of the group's input budget: peers that
 * do not read cannot leave the others' incomplete requests without room
 * (which closes them). Reaching either bound stops reading, nothing more. */
static int conn_reads_ahead(const kvs_conn_t *c)
{
    return !conn_held_back(c) && conn_ahead_room(c) > 0 &&
           conn_budget_share_allows(c, kvs_frame_dec_space_cap(&c->dec, READ_SIZE), 2);
}

/* A read's length, cut to the room left when reading ahead (at least one
 * byte: reading stops after the read that fills it). */
static size_t conn_read_len(const kvs_conn_t *c, size_t len)
{
    if (conn_can_deliver(c))
        return len;
    size_t room = conn_ahead_room(c);
    return room == 0 ? 1 : room < len ? room : len;
}

/* Room in the decoder for `want` more bytes, charged to the group: 0 with
 * the space, 1 when not even the least growth fits the input budget, or
 * -ENOMEM. The decoder grows by half at a time past a maximal frame
 * (kvs_frame_dec_space_cap); when the budget refuses that, by what the
 * read needs, as a connection is closed only for what it must have. */
static int conn_dec_space(kvs_conn_t *c, size_t want, uint8_t **base, size_t *len)
{
    int least = !conn_budget_allows(c, kvs_frame_dec_space_cap(&c->dec, want));
    if (least && !conn_budget_allows(c, kvs_frame_dec_space_cap_least(&c->dec, want)))
        return 1;
    int rc = least ? kvs_frame_dec_space_least(&c->dec, want, base, len)
                   : kvs_frame_dec_space(&c->dec, want, base, len);
    if (rc != 0)
        return rc;
    conn_charge(c, c->dec.cap);
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    kvs_conn_t *c = h->data;
    uint8_t *base;
    size_t len;
    (void)suggested;
    buf->base = NULL; /* on failure libuv reports UV_ENOBUFS to on_read */
    buf->len = 0;
    if (has(c, KVS_CONN_LINGERING)) { /* discarding: any small buffer will do */
        static char sink[4096];
        buf->base = sink;
        buf->len = sizeof(sink);
        return;
    }
    if (c->tls != NULL) { /* ciphertext: into the session, pumped into the decoder */
        if (kvs_tls_in_space(c->tls, READ_SIZE, &base, &len) == 0) {
            buf->base = (char *)base;
            buf->len = conn_read_len(c, len);
        }
        return;
    }
    if (conn_dec_space(c, READ_SIZE, &base, &len) != 0)
        return;
    buf->base = (char *)base;
    buf->len = conn_read_len(c, len);
}

/* Input has ended for `err`: tell the owner once, or close after flushing
 * when it has no on_error. */
static void conn_input_ended(kvs_conn_t *c, int err)
{
    conn_update_reading(c);
    if (has(c, KVS_CONN_ERROR_TOLD))
        return;
    c->flags |= KVS_CONN_ERROR_TOLD;
    if (c->on_error != NULL)
        c->on_error(c, err);
    else
        kvs_conn_close_after_flush(c);
}

/* The next frame does not fit the group's input budget. */
static void conn_over_budget(kvs_conn_t *c)
{
    if (kvs_conn_may_log(c))
        kvs_warn("closing %s: its incomplete request would take the memory held by all clients' "
                 "incomplete requests past limits.input_buffers (%zu bytes)",
                 c->peer, c->group->limits.input_budget);
    c->flags |= KVS_CONN_READ_REFUSED;
    c->partial_since_ms = 0;
    conn_input_ended(c, KVS_ELIMIT);
}

/* A TLS handshake not yet complete (a TLS client sends its ClientHello as
 * soon as it connects: one that sends nothing is hanging too), or a TLS
 * record the peer left unfinished (its bytes wait inside the session,
 * where the decoder cannot see them). */
static int conn_tls_partial(const kvs_conn_t *c)
{
    if (c->tls == NULL)
        return 0;
    if (!has(c, KVS_CONN_TLS_READY))
        return 1;
    return kvs_tls_mid_record(c->tls);
}

/* Notes when an incomplete frame (or TLS handshake or record) started to
 * wait, for the frame timeout. */
static void conn_track_partial(kvs_conn_t *c)
{
    int partial = has(c, KVS_CONN_READING) &&
                  ((kvs_frame_dec_pending(&c->dec) > 0 && !conn_ready(c)) || conn_tls_partial(c));
    if (!partial)
        c->partial_since_ms = 0;
    else if (c->partial_since_ms == 0)
        c->partial_since_ms = uv_now(c->h.handle.loop) + 1; /* never 0 */
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    kvs_conn_t *c = s->data;
    (void)buf;
    if (has(c, KVS_CONN_LINGERING)) { /* discard input until the peer closes */
        if (n < 0)
            kvs_conn_close(c);
        return;
    }
    if (n > 0) { /* bytes as they came (over TLS, records), and when */
        if (c->group != NULL)
            c->group->bytes_in += (uint64_t)n;
        if (c->stamp_reads) { /* one clock read per read, however many requests it holds */
            c->read_ns = kvs_now_ns();
            if (c->flusher != NULL)
                c->flusher->now_ns = c->read_ns;
        }
        c->last_input_ms = uv_now(c->h.handle.loop);
        if (c->tls != NULL) {
            kvs_tls_in_commit(c->tls, (size_t)n);
            conn_tls_input(c);
            return;
        }
        kvs_frame_dec_commit(&c->dec, (size_t)n);
        conn_deliver(c);
        conn_track_partial(c);
        return;
    }
    if (n == 0)
        return; /* EAGAIN */
    if (n == UV_ENOBUFS &&
        !conn_budget_allows(c, kvs_frame_dec_space_cap_least(&c->dec, READ_SIZE))) {
        conn_over_budget(c);
        return;
    }
    if (n != UV_EOF)
        kvs_debug("%s: read error: %s", c->peer, uv_strerror((int)n));
    /* Peer closed its side (or broke). Requests already received still get
     * their answers (a half-closed peer reads them; for a vanished one the
     * write fails and we close then). The owner decides when to close,
     * since only it knows what is still pending. */
    c->flags |= KVS_CONN_READ_EOF;
    c->partial_since_ms = 0;
    if (n == UV_EOF && conn_ready(c)) {
        /* Read ahead of delivery (conn_reads_ahead): the requests before
         * the EOF run first, and conn_deliver tells it after the last. */
        c->flags |= KVS_CONN_EOF_PENDING;
        conn_update_reading(c);
        return;
    }
    conn_input_ended(c, KVS_ECLOSED);
}

/* The stream cannot be resynchronized: no more frames; let the owner answer
 * what it still owes before it closes. */
static void conn_frame_error(kvs_conn_t *c, int err)
{
    /* A header of 0x16 0x03 0x0N...: a TLS client on a plaintext port (read
     * as a frame of over 352 MiB, so always KVS_ETOOBIG below that max). */
    if (err == KVS_ETOOBIG && c->tls == NULL && kvs_tls_looks_like_hello(c->dec.bad_len))
        err = KVS_ETLSHELLO;
    if (err == KVS_ETLSHELLO && kvs_conn_may_log(c))
        kvs_warn("closing %s: it started a TLS handshake on a plaintext port (enable TLS on this "
                 "listener, or connect without TLS)",
                 c->peer);
    c->flags |= KVS_CONN_FRAME_ERROR;
    c->partial_since_ms = 0;
    conn_input_ended(c, err);
}

/* turn_ms after a kick's delivery: the next delivery continues its turn. */
#define TURN_KICKED UINT64_MAX

static int conn_can_deliver(const kvs_conn_t *c)
{
    return !conn_held_back(c) && kvs_conn_pending(c) < c->high_water;
}

/* Whether c's group bounds its deliveries of a turn. */
static int group_bounds(const kvs_conn_t *c)
{
    return c->group != NULL && c->group->turn_budget_ns != 0 && !c->turn_exempt;
}

/* Whether c's group has spent its bound on this turn's deliveries, with
 * `extra` ns of c's current delivery counted in. */
static int group_turn_spent(const kvs_conn_t *c, uint64_t extra)
{
    return group_bounds(c) && c->group->turn_spent_ns + extra >= c->group->turn_budget_ns;
}

static void on_group_turn(uv_timer_t *t);
static void conn_kicked(kvs_conn_t *c);

/* Queues c (frames left, reading stopped) behind the members held before
 * it: the group's timer gives them their turns in that order, in a later
 * loop turn (kicks of their own would run in the order libuv's timer heap
 * keeps, which puts a member that ran, kicked again before the members it
 * then held, first again: whole pipelines ran one after another). */
static void group_hold(kvs_conn_t *c)
{
    kvs_conn_group_t *g = c->group;
    if (kvs_list_linked(&c->held_link) || has(c, KVS_CONN_CLOSING | KVS_CONN_LINGERING))
        return;
    kvs_list_push_back(&g->turn_queue, &c->held_link);
    g->n_held++;
    if (!uv_is_active((uv_handle_t *)&g->turn_timer))
        uv_timer_start(&g->turn_timer, on_group_turn, 1, 0);
}

static void group_unhold(kvs_conn_t *c)
{
    if (!kvs_list_linked(&c->held_link))
        return;
    kvs_list_remove(&c->held_link);
    c->group->n_held--;
}

/* A later loop turn: the held members take their turns in order, each
 * once, until the group's bound for this turn is spent; those left wait
 * for the next turn, first. Runs among the loop's timers, before the
 * poll's reads, which then get what is left of the bound. */
static void on_group_turn(uv_timer_t *t)
{
    kvs_conn_group_t *g = t->data;
    for (size_t n = g->n_held; n > 0 && !kvs_list_empty(&g->turn_queue); n--) {
        if (g->turn_budget_ns != 0 && g->turn_spent_ns >= g->turn_budget_ns)
            break; /* (a bound lifted lets those held under it all go) */
        kvs_conn_t *c = KVS_LIST_ENTRY(kvs_list_first(&g->turn_queue), kvs_conn_t, held_link);
        group_unhold(c);
        conn_kicked(c); /* held again, at the tail, if frames are left */
    }
    if (!kvs_list_empty(&g->turn_queue))
        uv_timer_start(&g->turn_timer, on_group_turn, 1, 0);
}

/* Whether c's group shares its slices (kvs_conn_group_share_slices). */
static int conn_shares(const kvs_conn_t *c)
{
    return c->group != NULL && c->group->shared_slice_ns != 0 && !c->turn_exempt;
}

/* The slice of c's delivery starting at loop time `turn`: the group's
 * shared slice while its members take turns (another one ran requests
 * last, or less than KVS_CONN_SHARED_MS ago), else KVS_CONN_SLICE_NS. */
static uint64_t conn_slice(const kvs_conn_t *c, uint64_t turn)
{
    const kvs_conn_group_t *g = c->group;
    if (!conn_shares(c))
        return KVS_CONN_SLICE_NS;
    int others = (g->last_member != NULL && g->last_member != c) ||
                 (g->switch_ms != 0 && turn + 1 - g->switch_ms < KVS_CONN_SHARED_MS);
    return others ? g->shared_slice_ns : KVS_CONN_SLICE_NS;
}

/* c ran requests at loop time `turn`: the group remembers who ran last,
 * and when that changed. */
static void conn_ran(kvs_conn_t *c, uint64_t turn)
{
    kvs_conn_group_t *g = c->group;
    if (!conn_shares(c) || g->last_member == c)
        return;
    if (g->last_member != NULL)
        g->switch_ms = turn + 1; /* + 1: never 0 */
    g->last_member = c;
}

/* Hands every complete buffered frame to on_frame, until delivery is no
 * longer allowed. */
static void conn_deliver(kvs_conn_t *c)
{
    if (has(c, KVS_CONN_DELIVERING))
        return; /* the outer loop picks up the rest */
    c->flags |= KVS_CONN_DELIVERING;
    uint64_t since = kvs_now_ns(), now = since, turn = uv_now(c->h.handle.loop);
    kvs_conn_group_t *g = c->group;
    int more = 0; /* frames left for the next turn: the slice is over */
    int held = 0; /* ... or the group's turn is */
    int ran = 0;  /* a frame was delivered */
    /* What this loop turn's deliveries of c took so far (a kick's, then a
     * read's: see conn_kicked), against c's budget of a turn: a read after
     * a kick that spent it delivers nothing (one more slice a turn would
     * double what a pipelining peer keeps the others waiting). */
    uint64_t before = c->turn_ms == turn || c->turn_ms == TURN_KICKED ? c->turn_ns : 0;
    uint64_t budget = c->turn_budget_ns ? c->turn_budget_ns : KVS_CONN_TURN_NS;
    uint64_t slice = conn_slice(c, turn);
    if (slice < KVS_CONN_SLICE_NS && budget > slice)
        budget = slice; /* members take turns: a shared slice a turn */
    while (conn_can_deliver(c)) {
        if (group_turn_spent(c, now - since) && conn_ready(c)) {
            held = 1;
            break;
        }
        if (before + (now - since) >= budget && conn_ready(c)) {
            more = 1;
            break;
        }
        const uint8_t *p;
        size_t len;
        int rc = conn_next(c, &p, &len);
        if (rc == 0)
            break;
        if (rc < 0) {
            conn_frame_error(c, rc);
            break;
        }
        c->on_frame(c, p, len);
        ran = 1;
        now = kvs_now_ns(); /* one clock read a frame, the turn's count's too */
        if (now - since >= slice) {
            more = 1;
            break;
        }
    }
    c->flags &= ~KVS_CONN_DELIVERING;
    if (ran)
        conn_ran(c, turn);
    if (has(c, KVS_CONN_EOF_PENDING) && !has(c, KVS_CONN_CLOSING) && !conn_ready(c)) {
        c->flags &= ~KVS_CONN_EOF_PENDING;
        conn_input_ended(c, KVS_ECLOSED);
    }
    if (c->on_delivered != NULL)
        c->on_delivered(c);
    if (has(c, KVS_CONN_CLOSING))
        return;
    if (kvs_conn_pending(c) >= c->high_water && conn_ready(c))
        c->flags |= KVS_CONN_OUTPUT_FULL; /* resumes when the output drains */
    if (kvs_frame_dec_shrink(&c->dec, KVS_CONN_KEEP_BUFFER))
        conn_charge(c, 0);
    if (c->turn_ms != turn) { /* the first delivery of this loop turn */
        if (c->turn_ms != TURN_KICKED)
            c->turn_ns = 0;
        c->turn_ms = turn;
    }
    c->turn_ns += now - since;
    if (g != NULL)
        g->turn_spent_ns += now - since;
    if (held) {
        g->turns_held++;
        c->flags |= KVS_CONN_YIELDED;
    }
    /* Past the turn's budget reading stops, whether this delivery ran out
     * of its slice or not: reads whose frames each take less than a
     * slice would otherwise go on for all of libuv's 32. The rest after
     * the loop polled: a zero-delay timer started from the kick itself
     * would be due again in the same run of timers, and the loop would
     * never poll (libuv runs due timers until none is). */
    int spent = c->turn_ns >= budget;
    if (spent)
        c->flags |= KVS_CONN_YIELDED;
    if ((more || spent || held) && group_bounds(c)) {
        /* Its turn comes after the members held before it (group_hold). */
        c->flags |= KVS_CONN_YIELDED;
        group_hold(c);
    } else if (more || spent || held) {
        conn_kick_after(c, 1);
    }
    conn_update_reading(c);
}

/* Delivers c's buffered frames: its kick, or its turn in its group's
 * queue of held members. */
static void conn_kicked(kvs_conn_t *c)
{
    c->flags &= ~KVS_CONN_YIELDED; /* conn_deliver reads on, or yields again */
    if (c->turn_ms == TURN_KICKED)
        c->turn_ms = 0; /* a kick always begins a turn of its own (below) */
    conn_deliver(c);
    /* The kick runs among the loop's timers, before its poll, and libuv
     * updates its time after the poll: the reads of the same turn would
     * look like a new one and deliver for a whole budget more. The next
     * delivery counts on from the kick's instead (if it comes in a later
     * turn, that turn's budget is spent the sooner, by a slice at most);
     * the next kick starts over, else a connection whose kicks alone
     * spent the budget would yield at every kick, never reading again. */
    if (!has(c, KVS_CONN_CLOSING))
        c->turn_ms = TURN_KICKED;
    conn_track_partial(c);
    /* The answers just produced would otherwise wait for the flusher's
     * check step, which runs only after the loop polled, and a poll with
     * nothing else to wake it can block for a long time. Running the
     * flusher here keeps its order: `before` (the commit), then writes. */
    if (c->flusher != NULL && c->queued)
        kvs_flusher_run(c->flusher);
}

static void on_kick(uv_timer_t *t)
{
    conn_kicked(t->data);
}

/* Delivers buffered frames after `ms` (0: on the next loop turn). */
static void conn_kick_after(kvs_conn_t *c, uint64_t ms)
{
    if (has(c, KVS_CONN_CLOSING | KVS_CONN_LINGERING) || c->open_handles < 2)
        return;
    uv_timer_start(&c->timer, on_kick, ms, 0);
}

static void conn_kick(kvs_conn_t *c)
{
    conn_kick_after(c, 0);
}

static void conn_update_reading(kvs_conn_t *c)
{
    if (has(c, KVS_CONN_CLOSING | KVS_CONN_LINGERING))
        return;
    int want = (conn_can_deliver(c) || conn_reads_ahead(c)) &&
               !has(c, KVS_CONN_READ_STOPPED | KVS_CONN_READ_EOF | KVS_CONN_READ_REFUSED |
                           KVS_CONN_YIELDED);
    if (want && !has(c, KVS_CONN_READING)) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
            c->flags |= KVS_CONN_READING;
        conn_track_partial(c); /* a wait we caused does not count against the peer */
    } else if (!want && has(c, KVS_CONN_READING)) {
        uv_read_stop(&c->h.stream);
        c->flags &= ~KVS_CONN_READING;
        c->partial_since_ms = 0;
    }
}

/* Notes "address:port" of the peer of an accepted TCP connection. */
static void conn_note_peer(kvs_conn_t *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char host[INET6_ADDRSTRLEN];
    if (c->h.handle.type != UV_TCP ||
        uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(c->peer, sizeof(c->peer), "%s:%u", host, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        /* An IPv4 client of a dual-stack listener is named as the IPv4
         * address it is, as on an IPv4 listener (logs, audit lines, hooks
         * and authentication name one client one way). */
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
            inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], host, sizeof(host));
            snprintf(c->peer, sizeof(c->peer), "%s:%u", host, ntohs(a->sin6_port));
        } else {
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
            snprintf(c->peer, sizeof(c->peer), "[%s]:%u", host, ntohs(a->sin6_port));
        }
    }
}

int kvs_conn_accept(kvs_conn_t *c, uv_stream_t *server)
{
    int rc = uv_accept(server, &c->h.stream);
    if (rc != 0)
        return rc;
    return kvs_conn_start(c);
}

int kvs_conn_accept_tls(kvs_conn_t *c, uv_stream_t *server, kvs_tls_ctx_t *tls)
{
    int rc = tls != NULL ? kvs_conn_use_tls(c, tls, NULL) : 0;
    int arc = uv_accept(server, &c->h.stream); /* whatever happened: see kvs_conn.h */
    if (rc != 0)
        return rc;
    if (arc != 0)
        return arc;
    return kvs_conn_start(c);
}

/* KVS_CONN_KEEPALIVE_S: libuv sets the idle time; the probes' interval and
 * count are the kernel's own (75 s, 9) unless set. Best effort: a socket
 * that refuses is served without. */
static void conn_keepalive(kvs_conn_t *c)
{
    uv_os_fd_t fd;
    int interval = KVS_CONN_KEEPALIVE_S / 3, count = 3;
    if (uv_tcp_keepalive(&c->h.tcp, 1, KVS_CONN_KEEPALIVE_S) != 0 ||
        uv_fileno(&c->h.handle, &fd) != 0)
        return;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

int kvs_conn_start(kvs_conn_t *c)
{
    if (c->h.handle.type == UV_TCP) {
        uv_tcp_nodelay(&c->h.tcp, 1);
        conn_keepalive(c);
        conn_note_peer(c);
    }
    c->last_input_ms = uv_now(c->h.handle.loop);
    int rc = uv_read_start(&c->h.stream, on_alloc, on_read);
    if (rc != 0)
        return rc;
    c->flags |= KVS_CONN_READING;
    if (c->tls != NULL) { /* a client's ClientHello; a server waits for one */
        rc = kvs_tls_handshake(c->tls);
        if (rc != 0 && rc != -EAGAIN)
            return KVS_ETLS;
        conn_tls_send(c);      /* `out` waits for the handshake */
        conn_track_partial(c); /* the handshake's time runs from now */
    }
    return 0;
}

int kvs_conn_use_tls(kvs_conn_t *c, kvs_tls_ctx_t *ctx, const char *host)
{
    return kvs_tls_new(ctx, host, &c->cout, &c->tls);
}

int kvs_conn_peer_is_local(const kvs_conn_t *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (c->h.handle.type != UV_TCP)
        return 1;
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss.ss_family != AF_INET6)
        return 0;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

const char *kvs_conn_tls_error(const kvs_conn_t *c)
{
    return c->tls != NULL ? kvs_tls_error(c->tls) : "";
}

void kvs_conn_stop_reading(kvs_conn_t *c)
{
    c->flags |= KVS_CONN_READ_STOPPED;
    conn_update_reading(c);
}

void kvs_conn_pause(kvs_conn_t *c)
{
    c->flags |= KVS_CONN_PAUSED;
    conn_update_reading(c);
}

void kvs_conn_resume(kvs_conn_t *c)
{
    if (!has(c, KVS_CONN_PAUSED))
        return;
    c->flags &= ~KVS_CONN_PAUSED;
    conn_deliver(c);
    conn_track_partial(c);
}

/* ---- writing ---------------------------------------------------------- */

/* A write failed: the peer is gone. The owner hears of it as an EOF (so
 * a router link fails its pending requests now, not at their deadline),
 * then the connection closes without lingering. */
static void conn_write_failed(kvs_conn_t *c, int status)
{
    if (has(c, KVS_CONN_CLOSING))
        return;
    kvs_debug("%s: write error: %s", c->peer, uv_strerror(status));
    c->out.len = 0;
    conn_input_ended(c, KVS_ECLOSED);
    kvs_conn_close(c);
}

static void on_write(uv_write_t *req, int status);

/* Writes wbuf[woff..len) in chunks of at most max_write bytes: what the
 * socket takes at once through uv_try_write, the rest of a chunk through a
 * uv_write. Returns 0 (all written, or a write in flight) or an error. */
static int conn_write_wbuf(kvs_conn_t *c)
{
    while (c->woff < c->wbuf.len) {
        size_t left = c->wbuf.len - c->woff;
        size_t chunk = left < c->max_write ? left : c->max_write;
        uv_buf_t b = uv_buf_init((char *)c->wbuf.data + c->woff, (unsigned)chunk);
        int n = uv_try_write(&c->h.stream, &b, 1);
        if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS)
            return n;
        if (n > 0) {
            c->woff += (size_t)n;
            c->written += (uint64_t)n;
            if (c->group != NULL)
                c->group->bytes_out += (uint64_t)n;
            if ((size_t)n == chunk)
                continue;
            b = uv_buf_init((char *)c->wbuf.data + c->woff, (unsigned)(chunk - (size_t)n));
        }
        c->wreq.data = c;
        c->wchunk = b.len;
        int rc = uv_write(&c->wreq, &c->h.stream, &b, 1, on_write);
        if (rc != 0)
            return rc;
        c->flags |= KVS_CONN_WRITING;
        return 0;
    }
    c->wbuf.len = 0;
    c->woff = 0;
    return 0;
}

static void on_write(uv_write_t *req, int status)
{
    kvs_conn_t *c = req->data;
    c->flags &= ~KVS_CONN_WRITING;
    if (status != 0) {
        c->wbuf.len = c->woff = 0;
        if (status != UV_ECANCELED)
            conn_write_failed(c, status);
        else
            kvs_conn_close(c);
        return;
    }
    c->woff += c->wchunk;
    c->written += c->wchunk;
    if (c->group != NULL)
        c->group->bytes_out += c->wchunk;
    int rc = conn_write_wbuf(c);
    if (rc != 0) {
        conn_write_failed(c, rc);
        return;
    }
    if (!has(c, KVS_CONN_WRITING)) {
        /* Never flush `out` from here when a flusher owns this connection:
         * output appended earlier in this loop turn may wait on the
         * flusher's `before` step (e.g. a commit) and must not leave ahead
         * of it. */
        conn_free_empty(c, KVS_CONN_KEEP_BUFFER); /* what a burst left */
        kvs_conn_queue(c);
    }
    conn_output_drained(c);
}

/* Writes the bytes queued in `q` (`out`, or `cout` under TLS). wbuf is
 * empty here: swap, so `q` keeps accepting while the bytes it held are
 * written from wbuf. Returns 0, or an error after the connection was
 * closed. */
static int conn_write_queue(kvs_conn_t *c, kvs_buf_t *q)
{
    kvs_buf_t t = c->wbuf;
    c->wbuf = *q;
    *q = t;
    q->len = 0;
    c->woff = 0;
    int rc = conn_write_wbuf(c);
    if (rc != 0) {
        c->wbuf.len = c->woff = 0;
        conn_write_failed(c, rc);
    }
    return rc;
}

static int conn_tls_seal(kvs_conn_t *c);

void kvs_conn_flush(kvs_conn_t *c)
{
    if (has(c, KVS_CONN_CLOSING | KVS_CONN_WRITING | KVS_CONN_LINGERING))
        return;
    kvs_buf_t *q = &c->out;
    if (c->tls != NULL) {
        if (conn_tls_seal(c) != 0)
            return;
        q = &c->cout;
    }
    if (q->len > 0 && conn_write_queue(c, q) != 0)
        return;
    if (!has(c, KVS_CONN_WRITING)) {
        conn_free_empty(c, KVS_CONN_KEEP_BUFFER); /* what a burst left */
        if (has(c, KVS_CONN_SHUTTING)) {
            conn_linger(c);
            return;
        }
    }
    conn_output_drained(c);
}

void kvs_conn_queue(kvs_conn_t *c)
{
    conn_track_output(c);
    conn_count_output(c);
    if (conn_check_hard(c) || group_check_output(c))
        return;
    kvs_flusher_t *f = c->flusher;
    if (f == NULL) {
        kvs_conn_flush(c);
        return;
    }
    if (c->queued || has(c, KVS_CONN_CLOSING))
        return;
    c->queued = 1;
    c->flush_next = f->head;
    f->head = c;
    kvs_flusher_wake(f);
}

/* ---- TLS --------------------------------------------------------------- */

/* Hands the ciphertext the session just made (handshake messages, alerts,
 * tickets) to the socket now, unless a write is in flight (its callback
 * queues a flush). Never touches `out`. */
static void conn_tls_send(kvs_conn_t *c)
{
    if (c->cout.len == 0 || has(c, KVS_CONN_CLOSING | KVS_CONN_WRITING | KVS_CONN_LINGERING))
        return;
    conn_write_queue(c, &c->cout);
}

/* TLS failed (the handshake, or a record): one line naming the peer, the
 * alert goes out, no more frames; the owner hears `err`. */
static void conn_tls_failed(kvs_conn_t *c, int err)
{
    if (kvs_conn_may_log(c))
        kvs_warn("closing %s: TLS %s failed: %s", c->peer,
                 has(c, KVS_CONN_TLS_READY) ? "connection" : "handshake", kvs_tls_error(c->tls));
    c->flags |= KVS_CONN_TLS_FAILED | KVS_CONN_FRAME_ERROR;
    c->partial_since_ms = 0;
    conn_tls_send(c);
    conn_input_ended(c, err == KVS_ENOTLS ? KVS_ENOTLS : KVS_ETLS);
}

/* A server's peer sent plaintext: drop TLS, so the owner can answer in the
 * clear (a plaintext client would read nothing else), and end input. */
static void conn_not_tls(kvs_conn_t *c)
{
    if (kvs_conn_may_log(c))
        kvs_warn("closing %s: %s", c->peer, kvs_tls_error(c->tls));
    kvs_tls_free(c->tls);
    c->tls = NULL;
    c->cout.len = 0;
    c->flags |= KVS_CONN_FRAME_ERROR;
    c->partial_since_ms = 0;
    conn_input_ended(c, KVS_ENOTLS);
}

/* Advances the handshake with the input just read. Returns 1 once it is
 * complete (on_ready has run and the connection is still open), else 0:
 * it waits for more input, or it failed (handled here). */
static int conn_tls_handshake(kvs_conn_t *c)
{
    int rc = kvs_tls_handshake(c->tls);
    if (rc == -EAGAIN) {
        kvs_tls_in_done(c->tls);
        conn_tls_send(c);
        conn_track_partial(c);
        return 0;
    }
    if (rc != 0) {
        kvs_tls_in_done(c->tls);
        if (rc == KVS_ENOTLS && kvs_tls_is_server(c->tls))
            conn_not_tls(c);
        else
            conn_tls_failed(c, rc);
        return 0;
    }
    c->flags |= KVS_CONN_TLS_READY;
    conn_tls_send(c);
    kvs_debug("%s: %s %s", c->peer, kvs_tls_version(c->tls), kvs_tls_cipher(c->tls));
    if (c->on_ready != NULL)
        c->on_ready(c);
    if (has(c, KVS_CONN_CLOSING))
        return 0;
    if (c->out.len > 0)
        kvs_conn_queue(c); /* output that waited for the handshake */
    return 1;
}

/* Decrypts every buffered record into the decoder, under the group's input
 * budget. Returns -EAGAIN when all input is consumed, KVS_ECLOSED on the
 * peer's close_notify, KVS_ELIMIT after refusing input over the budget,
 * or another error. */
static int conn_tls_decrypt(kvs_conn_t *c)
{
    for (;;) {
        uint8_t *base;
        size_t len, got;
        int rc = conn_dec_space(c, TLS_RECORD, &base, &len);
        if (rc > 0) {
            conn_over_budget(c);
            return KVS_ELIMIT;
        }
        if (rc != 0)
            return rc;
        rc = kvs_tls_read(c->tls, base, len, &got);
        if (rc != 0)
            return rc;
        kvs_frame_dec_commit(&c->dec, got);
    }
}

/* Ciphertext arrived: finish the handshake, decrypt everything, deliver. */
static void conn_tls_input(kvs_conn_t *c)
{
    if (!has(c, KVS_CONN_TLS_READY) && !conn_tls_handshake(c))
        return;
    int rc = conn_tls_decrypt(c);
    kvs_tls_in_done(c->tls);
    conn_tls_send(c); /* TLS 1.3 tickets, key updates */
    if (rc == KVS_ELIMIT || has(c, KVS_CONN_CLOSING))
        return;
    conn_deliver(c);
    conn_track_partial(c);
    if (rc == -EAGAIN || has(c, KVS_CONN_CLOSING))
        return;
    if (rc == KVS_ECLOSED) { /* close_notify: an orderly EOF */
        c->flags |= KVS_CONN_READ_EOF;
        c->partial_since_ms = 0;
        /* Decryption ran ahead of a paused owner: the messages before the
         * EOF come first (conn_deliver tells it after the last), as they
         * do in plaintext, where a paused owner's socket is not read. */
        if (conn_ready(c)) {
            c->flags |= KVS_CONN_EOF_PENDING;
            conn_update_reading(c);
            return;
        }
        conn_input_ended(c, KVS_ECLOSED);
        return;
    }
    if (rc == -ENOMEM) {
        kvs_error("closing %s: out of memory decrypting its input", c->peer);
        kvs_conn_close(c);
        return;
    }
    conn_tls_failed(c, rc);
}

/* A flush under TLS: encrypts all of `out` into `cout` once the handshake
 * is complete (before, `out` waits), and seals close_notify after the last
 * answer of a shutdown. Output that can no longer be sent securely (TLS
 * failed, or a shutdown before the handshake completed) is dropped: only
 * what `cout` already holds (an alert) leaves. Returns 0, or an error after
 * the connection was closed. */
static int conn_tls_seal(kvs_conn_t *c)
{
    if (has(c, KVS_CONN_TLS_FAILED) || (has(c, KVS_CONN_SHUTTING) && !has(c, KVS_CONN_TLS_READY))) {
        c->out.len = 0;
        return 0;
    }
    if (!has(c, KVS_CONN_TLS_READY))
        return 0;
    if (c->out.len > 0) {
        int rc = kvs_tls_write(c->tls, c->out.data, c->out.len);
        c->out.len = 0;
        if (rc != 0) {
            kvs_error("closing %s: cannot encrypt its answers: %s", c->peer,
                      rc == -ENOMEM ? "out of memory" : kvs_tls_error(c->tls));
            kvs_conn_close(c);
            return rc;
        }
    }
    if (has(c, KVS_CONN_SHUTTING) && !has(c, KVS_CONN_TLS_SHUT)) {
        c->flags |= KVS_CONN_TLS_SHUT;
        kvs_tls_shutdown(c->tls); /* close_notify, after the last answer */
    }
    return 0;
}

/* ---- closing ---------------------------------------------------------- */

/* Refused connections lingering now (kvs_conn_refuse, kvs_conn_refuse_accepted):
 * at most LINGER_MAX, each for at most REFUSED_LINGER_MS (see "refusing"). */
#define LINGER_MAX 16
#define REFUSED_LINGER_MS 500
static size_t n_lingering;

static void on_linger_timeout(uv_timer_t *t)
{
    kvs_conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    kvs_conn_t *c = req->data;
    if (has(c, KVS_CONN_CLOSING))
        return;
    if (status != 0 || uv_read_start(&c->h.stream, on_alloc, on_read) != 0) {
        kvs_conn_close(c);
        return;
    }
    c->flags |= KVS_CONN_READING;
    uv_timer_start(&c->timer, on_linger_timeout,
                   has(c, KVS_CONN_REFUSED) ? REFUSED_LINGER_MS : KVS_CONN_LINGER_MS, 0);
}

/* Everything owed is written: close, lingering if the peer may still be
 * sending (see kvs_conn_close_after_flush). */
static void conn_linger(kvs_conn_t *c)
{
    if (has(c, KVS_CONN_READ_EOF | KVS_CONN_LINGERING) || c->open_handles < 2) {
        kvs_conn_close(c);
        return;
    }
    c->flags |= KVS_CONN_LINGERING;
    uv_timer_stop(&c->timer); /* no delivery kicks any more */
    conn_trim_drained(c);     /* nothing more is written: its output buffers go */
    if (has(c, KVS_CONN_READING)) {
        uv_read_stop(&c->h.stream);
        c->flags &= ~KVS_CONN_READING;
    }
    /* Input from now on is discarded: give the decoder's memory back. */
    kvs_frame_dec_close(&c->dec);
    conn_charge(c, 0);
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, &c->h.stream, on_shutdown) != 0)
        kvs_conn_close(c);
}

static void group_leave(kvs_conn_t *c)
{
    kvs_conn_group_t *g = c->group;
    if (g == NULL)
        return;
    group_unhold(c);
    conn_charge(c, 0);
    g->output_used -= c->out_counted;
    c->out_counted = 0;
    kvs_list_remove(&c->grp_link);
    g->count--;
    if (g->last_member == c)
        g->last_member = NULL;
    c->group = NULL;
}

static void on_handle_closed(uv_handle_t *h)
{
    kvs_conn_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    if (has(c, KVS_CONN_REFUSED))
        n_lingering--;
    kvs_frame_dec_close(&c->dec);
    kvs_buf_free(&c->out);
    kvs_buf_free(&c->cout);
    kvs_buf_free(&c->wbuf);
    kvs_tls_free(c->tls);
    c->tls = NULL;
    c->on_close(c);
}

void kvs_conn_close_after_flush(kvs_conn_t *c)
{
    if (has(c, KVS_CONN_CLOSING | KVS_CONN_SHUTTING))
        return;
    c->flags |= KVS_CONN_SHUTTING;
    conn_update_reading(c);
    if (has(c, KVS_CONN_WRITING))
        return; /* on_write queues the rest; the flush then closes */
    kvs_conn_queue(c);
}

static void conn_close(kvs_conn_t *c, int reset)
{
    if (has(c, KVS_CONN_CLOSING))
        return;
    c->flags |= KVS_CONN_CLOSING;
    group_leave(c);
    if (c->flusher != NULL && c->queued)
        kvs_flusher_forget(c->flusher, c);
    if (has(c, KVS_CONN_READING))
        uv_read_stop(&c->h.stream);
    c->flags &= ~KVS_CONN_READING;
    if (c->open_handles > 1)
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    /* A reset fails on a socket never connected or being shut down: then
     * an ordinary close. */
    if (!reset || c->h.handle.type != UV_TCP ||
        uv_tcp_close_reset(&c->h.tcp, on_handle_closed) != 0)
        uv_close(&c->h.handle, on_handle_closed);
}

void kvs_conn_close(kvs_conn_t *c)
{
    conn_close(c, 0);
}

void kvs_conn_abort(kvs_conn_t *c)
{
    conn_close(c, 1);
}

int kvs_conn_reset_on_close(kvs_conn_t *c)
{
    uv_os_fd_t fd;
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    if (c->h.handle.type != UV_TCP)
        return 0;
    int rc = uv_fileno(&c->h.handle, &fd);
    if (rc != 0)
        return rc;
    return setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0
               ? 0
               : uv_translate_sys_error(errno);
}

int kvs_conn_peer_gone(const kvs_conn_t *c)
{
    uv_os_fd_t fd;
    if (has(c, KVS_CONN_CLOSING) || uv_fileno(&c->h.handle, &fd) != 0)
        return 0;
    struct pollfd p = {.fd = fd, .events = 0, .revents = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)) != 0;
}

/* ---- groups ------------------------------------------------------------- */

/* Once the process has no descriptor left, libuv takes each new
 * connection and closes it at once (its EMFILE trick, which frees the
 * listener's backlog) without telling the listener's owner: clients are
 * dropped with no line in the log. So each sweep asks for a descriptor
 * (a dup, closed at once) and says, at most once a minute, when none is
 * free: the limit was lowered under the process (prlimit), or its own
 * files and connections took them all. */
static void descriptors_check(uv_loop_t *loop, uint64_t now)
{
    static uint64_t said_ms;
    if (said_ms != 0 && now - said_ms < 60000)
        return;
    int fd = fcntl(uv_backend_fd(loop), F_DUPFD_CLOEXEC, 0);
    if (fd >= 0) {
        close(fd);
        return;
    }
    int err = errno;
    if (err != EMFILE && err != ENFILE)
        return;
    said_ms = now;
    struct rlimit rl;
    unsigned long long limit =
        getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (unsigned long long)rl.rlim_cur : 0;
    if (err == ENFILE)
        kvs_warn("the system has no file descriptor left (ENFILE): new connections are closed as "
                 "they come, without an answer, until descriptors are free again");
    else
        kvs_warn("this process has no file descriptor left (RLIMIT_NOFILE %llu): new connections "
                 "are closed as they come, without an answer, until some close; raise the limit "
                 "(LimitNOFILE=, ulimit -n) or lower limits.max_clients (logged at most once a "
                 "minute)",
                 limit);
}

/* Closes members whose started frame is overdue, members that do not take
 * their output, and idle members; says how many lines about members were
 * left out once their window is over. */
static void on_sweep(uv_timer_t *t)
{
    kvs_conn_group_t *g = t->data;
    uint64_t now = uv_now(g->loop);
    const kvs_conn_limits_t *lim = &g->limits;
    kvs_log_budget_flush(&g->log_budget, now);
    kvs_mem_give_back(now); /* what members that closed, or trimmed, freed */
    descriptors_check(g->loop, now);
    kvs_list_t *pos, *tmp;
    KVS_LIST_EACH_SAFE(pos, tmp, &g->members) /* closing c unlinks it */
    {
        kvs_conn_t *c = KVS_LIST_ENTRY(pos, kvs_conn_t, grp_link);
        if (lim->frame_timeout_ms > 0 && c->partial_since_ms != 0 &&
            now - (c->partial_since_ms - 1) >= lim->frame_timeout_ms) {
            if (!kvs_log_budget_take(&g->log_budget, now))
                ; /* counted: the summary says how many */
            else if (c->tls != NULL && !has(c, KVS_CONN_TLS_READY))
                kvs_warn("closing %s: its TLS handshake did not complete within "
                         "limits.frame_timeout (%llu ms)",
                         c->peer, (unsigned long long)lim->frame_timeout_ms);
            else if (kvs_frame_dec_pending(&c->dec) == 0)
                kvs_warn("closing %s: a TLS record it started did not complete within "
                         "limits.frame_timeout (%llu ms)",
                         c->peer, (unsigned long long)lim->frame_timeout_ms);
            else
                kvs_warn("closing %s %s: a %s it started (%zu bytes so far) did not complete "
                         "within %s (%llu ms)",
                         g->what, c->peer, lim->frame_word ? lim->frame_word : "request frame",
                         kvs_frame_dec_pending(&c->dec),
                         lim->frame_timeout_name ? lim->frame_timeout_name : "limits.frame_timeout",
                         (unsigned long long)lim->frame_timeout_ms);
            kvs_conn_close(c);
            continue;
        }
        if (lim->output_timeout_ms > 0 && c->output_since_ms != 0 && kvs_conn_pending(c) > 0 &&
            now - (c->output_since_ms - 1) >= lim->output_timeout_ms) {
            if (kvs_log_budget_take(&g->log_budget, now))
                kvs_warn("closing %s %s: it did not take %zu bytes owed to it within %llu ms "
                         "(it does not read)",
                         g->what, c->peer, kvs_conn_pending(c),
                         (unsigned long long)lim->output_timeout_ms);
            kvs_conn_close(c);
            continue;
        }
        if (c->progress_min != 0) {
            /* Output waits for the peer wherever it is: in this process or
             * in the socket's send queue, which a slow reader's kernel
             * drains (and wakes libuv to refill) a third at a time, so the
             * process's own backlog is often empty between its reads. */
            size_t owed = kvs_conn_untaken(c) + c->held + c->reserved;
            uint64_t taken = owed > 0 ? kvs_conn_taken(c) : 0;
            if (owed == 0) {
                c->progress_since_ms = 0; /* nothing waits: no clock */
            } else if (c->progress_since_ms == 0 || taken - c->progress_mark >= c->progress_min) {
                c->progress_since_ms = now + 1; /* a new window (never 0) */
                c->progress_mark = taken;
            } else if (now - (c->progress_since_ms - 1) >= c->progress_window_ms) {
                if (kvs_log_budget_take(&g->log_budget, now))
                    kvs_warn("closing %s %s: %s: it took less than %zu bytes in %llu ms, "
                             "%zu bytes still owed to it",
                             g->what, c->peer, c->progress_why, c->progress_min,
                             (unsigned long long)c->progress_window_ms, owed);
                kvs_conn_close(c);
                continue;
            }
        }
        if (c->deadline_wait_ms != 0) {
            if (kvs_conn_pending(c) > 0)
                c->deadline_ms = 0; /* still being written: the wait has not begun */
            else if (c->deadline_ms == 0)
                c->deadline_ms = now + c->deadline_wait_ms;
            else if (now >= c->deadline_ms) {
                if (kvs_log_budget_take(&g->log_budget, now))
                    kvs_warn("closing %s %s: %s", g->what, c->peer, c->deadline_why);
                kvs_conn_close(c);
                continue;
            }
        }
        /* Closing after its output is written (SHUTTING) spares no one:
         * a peer that hung up its sending side and reads nothing would
         * hold the connection for ever (only the metrics port has an
         * output timeout). */
        if (lim->auth_timeout_ms > 0 && c->unproven_since_ms != 0 && c->owed == 0 &&
            now - (c->unproven_since_ms - 1) >= lim->auth_timeout_ms) {
            if (kvs_log_budget_take(&g->log_budget, now))
                kvs_info("closing %s %s: it did not %s within limits.auth_timeout (%llu ms)",
                         g->what, c->peer,
                         kvs_conn_tls_pending(c) ? "finish its TLS handshake" : "authenticate",
                         (unsigned long long)lim->auth_timeout_ms);
            kvs_conn_close(c);
            continue;
        }
        if (now - c->last_input_ms >= SWEEP_MS)
            conn_trim_idle(c);
        if (lim->idle_timeout_ms > 0 && !c->keep_idle && c->owed == 0 && kvs_conn_pending(c) == 0 &&
            kvs_frame_dec_pending(&c->dec) == 0 && !has(c, KVS_CONN_SHUTTING) &&
            now - c->last_input_ms >= lim->idle_timeout_ms) {
            if (kvs_log_budget_take(&g->log_budget, now))
                kvs_info("closing %s %s: idle for limits.idle_timeout (%llu ms)", g->what, c->peer,
                         (unsigned long long)lim->idle_timeout_ms);
            kvs_conn_close(c);
        }
    }
}

void kvs_conn_limits_from_config(kvs_conn_limits_t *l, const kvs_config_t *cfg)
{
    memset(l, 0, sizeof(*l));
    l->hard_limit = (size_t)cfg->client_output;
    l->high_water = l->hard_limit / 4;
    l->frame_timeout_ms = cfg->frame_timeout_ms;
    l->idle_timeout_ms = cfg->idle_timeout_ms;
    l->auth_timeout_ms = cfg->auth_timeout_ms;
    l->input_budget = (size_t)cfg->input_buffers;
    l->output_budget = (size_t)cfg->output_buffers;
}

void kvs_conn_tls_reload(kvs_tls_ctx_t *c)
{
    char err[600];
    if (c == NULL)
        return;
    if (kvs_tls_ctx_reload(c, err, sizeof(err)) == 0)
        kvs_info("%s: certificate, key and CA reloaded; new connections use them",
                 kvs_tls_ctx_what(c));
    else
        kvs_error("%s: reload failed, still using the previous material: %s", kvs_tls_ctx_what(c),
                  err);
}

int kvs_conn_tls_from_config(const kvs_config_t *cfg, const kvs_tls_endpoint_t *e, const char *what,
                             int server, kvs_tls_ctx_t **out, char *err, size_t errlen)
{
    kvs_tls_opts_t o = {
        .role = server ? KVS_TLS_SERVER : KVS_TLS_CLIENT,
        .cert = e->cert,
        .key = e->key,
        .ca = e->ca,
        .peer = server ? (kvs_tls_peer_t)e->client_cert : KVS_TLS_PEER_REQUIRE,
        .skip_host_check = !server && !e->verify_host,
        .min_version = (kvs_tls_version_t)cfg->tls_min_version,
        .max_version = (kvs_tls_version_t)cfg->tls_max_version,
        .ciphers = cfg->tls_ciphers,
        .ciphersuites = cfg->tls_ciphersuites,
        .what = what,
    };
    int rc = kvs_tls_ctx_new(&o, out, err, errlen);
    char why[512];
    if (rc == 0 && kvs_tls_ctx_unusable(*out, why, sizeof(why)))
        kvs_warn("%s: peers that verify it refuse every connection", why);
    return rc;
}

uint64_t kvs_conn_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return UINT64_MAX;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit up = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl.rlim_cur = rl.rlim_max;
    }
    return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
}

uint32_t kvs_conn_max_clients(uint32_t configured, unsigned listeners, unsigned reserve)
{
    uint64_t fds = kvs_conn_fd_limit();
    if (fds == UINT64_MAX)
        return configured;
    uint64_t room = fds > reserve ? (fds - reserve) / (listeners ? listeners : 1) : 0;
    if (room >= configured)
        return configured;
    uint32_t cap = room > 0 ? (uint32_t)room : 1;
    /* Loud only when the cap is low enough to matter. */
    kvs_log(cap < 1000 ? KVS_LOG_WARN : KVS_LOG_INFO,
            "limits.max_clients %u does not fit the descriptor limit (%llu, RLIMIT_NOFILE) with "
            "%u kept for kvs itself; serving at most %u clients per listener (raise the limit "
            "with ulimit -n or LimitNOFILE=)",
            configured, (unsigned long long)fds, reserve, cap);
    return cap;
}

int kvs_conn_group_init(kvs_conn_group_t *g, uv_loop_t *loop, const kvs_conn_limits_t *limits,
                        const char *what)
{
    memset(g, 0, sizeof(*g));
    kvs_list_init(&g->members);
    kvs_list_init(&g->turn_queue);
    g->loop = loop;
    g->limits = *limits;
    g->what = what;
    snprintf(g->log_what, sizeof(g->log_what), "lines about %.40ss", what);
    kvs_log_budget_init(&g->log_budget, g->log_what, KVS_LOG_PEER_LINES, KVS_LOG_PEER_WINDOW_MS);
    int rc = uv_timer_init(loop, &g->sweep);
    if (rc != 0)
        return rc;
    g->sweep.data = g;
    /* Even without timeouts: it also ends the log budget's windows. */
    uv_timer_start(&g->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&g->sweep); /* never keeps the loop alive by itself */
    return 0;
}

void kvs_conn_group_set_limits(kvs_conn_group_t *g, const kvs_conn_limits_t *limits)
{
    g->limits = *limits;
    kvs_list_t *pos, *tmp;
    KVS_LIST_EACH_SAFE(pos, tmp, &g->members) /* a member past the new hard limit leaves */
    {
        kvs_conn_t *c = KVS_LIST_ENTRY(pos, kvs_conn_t, grp_link);
        if (limits->high_water > 0 ||
            c->output_cap > 0) /* a client not authenticated keeps its cap */
            c->high_water = member_high_water(c, limits);
        c->hard_limit = drained_limit(c, limits->hard_limit);
        if (!conn_check_hard(c))
            conn_output_drained(c);
    }
    group_relieve(g, NULL); /* a lower budget closes the members owed the most now */
}

void kvs_conn_group_drain_past_limit(kvs_conn_group_t *g)
{
    g->drain_past_limit = 1;
}

void kvs_conn_group_sweep_every(kvs_conn_group_t *g, uint64_t ms)
{
    uv_timer_start(&g->sweep, on_sweep, ms, ms);
}

static void on_turn_end(uv_check_t *h)
{
    kvs_conn_group_t *g = h->data;
    g->turn_spent_ns = 0;
}

int kvs_conn_group_bound_turn(kvs_conn_group_t *g, uint64_t ns)
{
    if (!g->turn_end_on) {
        int rc = uv_check_init(g->loop, &g->turn_end);
        if (rc != 0)
            return rc;
        rc = uv_timer_init(g->loop, &g->turn_timer);
        if (rc != 0) {
            uv_close((uv_handle_t *)&g->turn_end, NULL);
            return rc;
        }
        g->turn_end.data = g;
        g->turn_timer.data = g;
        g->turn_end_on = 1;
        uv_check_start(&g->turn_end, on_turn_end);
        uv_unref((uv_handle_t *)&g->turn_end);
    }
    g->turn_budget_ns = ns;
    g->turn_spent_ns = 0;
    return 0;
}

void kvs_conn_group_share_slices(kvs_conn_group_t *g, uint64_t ns)
{
    g->shared_slice_ns = ns < KVS_CONN_SLICE_NS ? ns : 0;
}

void kvs_conn_group_close(kvs_conn_group_t *g)
{
    kvs_list_remove(&g->relieve_link); /* off its flusher's list: the group is going */
    uv_timer_stop(&g->sweep);
    uv_close((uv_handle_t *)&g->sweep, NULL);
    if (g->turn_end_on) {
        uv_check_stop(&g->turn_end);
        uv_close((uv_handle_t *)&g->turn_end, NULL);
        uv_timer_stop(&g->turn_timer);
        uv_close((uv_handle_t *)&g->turn_timer, NULL);
        g->turn_end_on = 0;
    }
}

void kvs_conn_join(kvs_conn_t *c, kvs_conn_group_t *g)
{
    c->group = g;
    kvs_list_push_front(&g->members, &c->grp_link);
    g->count++;
    g->joined++;
    if (g->limits.high_water > 0 || c->output_cap > 0)
        c->high_water = member_high_water(c, &g->limits);
    c->hard_limit = g->limits.hard_limit;
}

int kvs_conn_input_waiting(const kvs_conn_t *c)
{
    uv_os_fd_t fd;
    int n = 0;
    if (c->codec == NULL && kvs_frame_dec_ready(&c->dec))
        return 1;
    if (uv_fileno(&c->h.handle, &fd) != 0 || ioctl(fd, FIONREAD, &n) != 0)
        return 0;
    return n > 0;
}

/* Refusing must not need memory: a listener whose pending connection is
 * not accepted stops accepting for good (libuv polls it again only after
 * uv_accept). Without memory for a handle, the spare takes the
 * connection; while the spare is closing, listeners that need it wait
 * (a few: a process has few listeners) and are served from its close
 * callback. Single-threaded, like every loop. */
#define REFUSE_WAITING_MAX 16
static kvs_listener_t refuse_spare;
static int refuse_spare_busy;
static uv_stream_t *refuse_waiting[REFUSE_WAITING_MAX];
static size_t refuse_n_waiting;

static void on_refused_closed(uv_handle_t *h)
{
    if (h != &refuse_spare.handle) {
        free(h);
        return;
    }
    refuse_spare_busy = 0;
    while (refuse_n_waiting > 0 && !refuse_spare_busy) {
        uv_stream_t *server = refuse_waiting[--refuse_n_waiting];
        if (!uv_is_closing((uv_handle_t *)server))
            kvs_conn_refuse(server, NULL, 0);
    }
}

/* A refused connection with a message is closed gently when it can: the
 * message, then the end of our stream (shutdown), then whatever the peer
 * sends is read and dropped until it closes too, for at most REFUSED_LINGER_MS.
 * Closing a socket with unread input sends a reset instead, and a peer
 * that gets the reset may lose the message written just before it (a
 * burst of scrapers that sent their requests at once got resets, not the
 * 503). At most LINGER_MAX at a time (each holds a descriptor, taken from
 * the reserve kept beside max_clients); past that, or without memory, the
 * connection is closed at once after reading what it sent already. */
#define LINGER_READ_MAX 65536 /* bytes read from a lingering peer before it is closed anyway */

typedef struct lingering_s {
    kvs_listener_t sock; /* first: its handle's address is the struct's */
    uv_timer_t timer;
    int open; /* handles not closed yet */
    size_t got;
    kvs_list_t link; /* on `lingering`: kvs_loop_close_all ends them */
    char scratch[1024];
} lingering_t;

static kvs_list_t lingering = {&lingering, &lingering};

static void on_linger_closed(uv_handle_t *h)
{
    lingering_t *l = h->data;
    if (--l->open > 0)
        return;
    kvs_list_remove(&l->link);
    free(l);
    n_lingering--;
}

static void linger_end(lingering_t *l)
{
    if (!uv_is_closing(&l->sock.handle))
        uv_close(&l->sock.handle, on_linger_closed);
    if (!uv_is_closing((uv_handle_t *)&l->timer))
        uv_close((uv_handle_t *)&l->timer, on_linger_closed);
}

static void on_linger_timer(uv_timer_t *t)
{
    linger_end(t->data);
}

static void on_linger_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    lingering_t *l = h->data;
    (void)hint;
    *buf = uv_buf_init(l->scratch, sizeof(l->scratch));
}

static void on_linger_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    lingering_t *l = s->data;
    (void)buf;
    if (n > 0)
        l->got += (size_t)n;
    if (n < 0 || l->got > LINGER_READ_MAX)
        linger_end(l);
}

/* Reads (and drops) what the refused peer has sent already, for a close
 * without lingering. */
static void refuse_drain(uv_stream_t *s)
{
    uv_os_fd_t fd;
    char scratch[4096];
    if (uv_fileno((uv_handle_t *)s, &fd) != 0)
        return;
    for (size_t got = 0; got < LINGER_READ_MAX;) {
        ssize_t n = recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT);
        if (n <= 0)
            return;
        got += (size_t)n;
    }
}

/* `s`, accepted and its message written, lingers (above). Returns 0, or
 * nonzero when it cannot: the caller closes it. */
static int linger(lingering_t *l, uv_loop_t *loop)
{
    uv_os_fd_t fd;
    if (uv_fileno(&l->sock.handle, &fd) != 0 || uv_timer_init(loop, &l->timer) != 0)
        return -1;
    l->sock.handle.data = l;
    l->timer.data = l;
    l->open = 2;
    kvs_list_push_front(&lingering, &l->link);
    n_lingering++;
    shutdown(fd, SHUT_WR);
    if (uv_read_start(&l->sock.stream, on_linger_alloc, on_linger_read) != 0 ||
        uv_timer_start(&l->timer, on_linger_timer, REFUSED_LINGER_MS, 0) != 0)
        linger_end(l);
    return 0;
}

int kvs_conn_refuse(uv_stream_t *server, const void *msg, size_t len)
{
    lingering_t *l = NULL;
    if (msg != NULL && len > 0 && n_lingering < LINGER_MAX)
        l = calloc(1, sizeof(*l)); /* its link on no list */
    kvs_listener_t *h = l != NULL ? &l->sock : malloc(sizeof(*h));
    if (h == NULL && refuse_spare_busy) {
        for (size_t i = 0; i < refuse_n_waiting; i++)
            if (refuse_waiting[i] == server)
                return 0; /* already waiting: one accept per turn of the listener */
        if (refuse_n_waiting == REFUSE_WAITING_MAX)
            return UV_ENOMEM;
        refuse_waiting[refuse_n_waiting++] = server;
        return 0;
    }
    if (h == NULL) {
        h = &refuse_spare;
        refuse_spare_busy = 1;
    }
    int rc = server->type == UV_NAMED_PIPE ? uv_pipe_init(server->loop, &h->pipe, 0)
                                           : uv_tcp_init(server->loop, &h->tcp);
    if (rc != 0) {
        if (h == &refuse_spare)
            refuse_spare_busy = 0;
        else
            free(h); /* the lingering_t, when l: sock is its first member */
        return rc;
    }
    rc = uv_accept(server, &h->stream);
    if (rc == 0 && msg != NULL && len > 0) {
        uv_buf_t b = uv_buf_init((char *)msg, (unsigned)len);
        uv_try_write(&h->stream, &b, 1); /* best effort: the peer learns why */
        if (l != NULL && linger(l, server->loop) == 0)
            return 0;
        refuse_drain(&h->stream);
    }
    uv_close(&h->handle, on_refused_closed);
    return rc;
}

void kvs_conn_refuse_accepted(kvs_conn_t *c, const void *msg, size_t len)
{
    if (has(c, KVS_CONN_CLOSING | KVS_CONN_SHUTTING | KVS_CONN_LINGERING))
        return;
    group_leave(c);
    if (c->tls == NULL && msg != NULL && len > 0) { /* (plaintext only: best effort) */
        uv_buf_t b = uv_buf_init((char *)msg, (unsigned)len);
        uv_try_write(&c->h.stream, &b, 1);
    }
    if (c->tls == NULL && msg != NULL && len > 0 && n_lingering < LINGER_MAX) {
        c->flags |= KVS_CONN_REFUSED; /* counted until its handles are closed */
        n_lingering++;
        conn_linger(c);
        return;
    }
    refuse_drain(&c->h.stream);
    kvs_conn_close(c);
}

/* ---- flusher ---------------------------------------------------------- */

void kvs_flusher_run(kvs_flusher_t *f)
{
    f->running = 1; /* what is queued meanwhile leaves in this run: no wake */
    if (f->before != NULL)
        f->before(f);
    while (f->head != NULL) {
        kvs_conn_t *c = f->head;
        f->head = c->flush_next;
        c->queued = 0;
        c->flush_next = NULL;
        kvs_conn_flush(c);
    }
    kvs_list_t *l;
    while ((l = kvs_list_first(&f->relieve)) != NULL) { /* after the flush: group_check_output */
        kvs_list_remove(l);
        group_relieve(KVS_LIST_ENTRY(l, kvs_conn_group_t, relieve_link), NULL);
    }
    f->running = 0;
    if (f->after != NULL)
        f->after(f);
}

static void on_check(uv_check_t *h)
{
    kvs_flusher_t *f = h->data;
    uv_idle_stop(&f->idle); /* (nothing when not woken) */
    kvs_flusher_run(f);
}

/* An active idle handle is what makes libuv poll without waiting. Only
 * the check stops it: once the check was stopped on its own (a shutdown
 * closing the check and leaving the idle handle to kvs_loop_close_all),
 * it stops itself, or the loop would spin until then. */
static void on_idle_wake(uv_idle_t *h)
{
    kvs_flusher_t *f = h->data;
    if (!uv_is_active((uv_handle_t *)&f->check))
        uv_idle_stop(h);
}

void kvs_flusher_wake(kvs_flusher_t *f)
{
    /* Woken already, running (what is queued leaves in this run), or
     * closing (kvs_flusher_close, or with the loop: kvs_loop_close_all),
     * or its check was stopped: no check would run to stop the idle. */
    if (f->running || uv_is_active((uv_handle_t *)&f->idle) ||
        uv_is_closing((uv_handle_t *)&f->idle) || !uv_is_active((uv_handle_t *)&f->check))
        return;
    uv_idle_start(&f->idle, on_idle_wake);
}

int kvs_flusher_init(kvs_flusher_t *f, uv_loop_t *loop, kvs_flusher_cb before, void *data)
{
    memset(f, 0, sizeof(*f));
    kvs_list_init(&f->relieve);
    f->before = before;
    f->data = data;
    int rc = uv_idle_init(loop, &f->idle);
    if (rc != 0)
        return rc;
    f->idle.data = f;
    rc = uv_check_init(loop, &f->check);
    if (rc != 0) {
        uv_close((uv_handle_t *)&f->idle, NULL);
        return rc;
    }
    f->check.data = f;
    return uv_check_start(&f->check, on_check);
}

static void on_flusher_closed(uv_handle_t *h)
{
    kvs_flusher_t *f = h->data;
    if (--f->closing == 0 && f->close_cb != NULL)
        f->close_cb(h);
}

void kvs_flusher_close(kvs_flusher_t *f, uv_close_cb cb)
{
    uv_check_stop(&f->check);
    uv_idle_stop(&f->idle);
    f->close_cb = cb;
    f->closing = 2;
    uv_close((uv_handle_t *)&f->check, on_flusher_closed);
    uv_close((uv_handle_t *)&f->idle, on_flusher_closed);
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void kvs_loop_close_all(uv_loop_t *loop)
{
    kvs_list_t *pos;
    KVS_LIST_EACH(pos, &lingering)
    {
        lingering_t *l = KVS_LIST_ENTRY(pos, lingering_t, link);
        if (l->timer.loop == loop)
            linger_end(l); /* freed once both handles closed */
    }
    uv_walk(loop, close_any, NULL);
}

void kvs_flusher_forget(kvs_flusher_t *f, kvs_conn_t *c)
{
    for (kvs_conn_t **p = &f->head; *p != NULL; p = &(*p)->flush_next) {
        if (*p == c) {
            *p = c->flush_next;
            break;
        }
    }
    c->queued = 0;
    c->flush_next = NULL;
}

/* ---- listening -------------------------------------------------------- */

int kvs_resolve(uv_loop_t *loop, const kvs_addr_t *a, struct sockaddr_storage *out)
{
    struct addrinfo hints;
    char port[8];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%u", a->port);
    uv_getaddrinfo_t req;
    int rc = uv_getaddrinfo(loop, &req, NULL, a->host, port, &hints); /* synchronous */
    if (rc != 0)
        return rc;
    memcpy(out, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
    uv_freeaddrinfo(req.addrinfo);
    return 0;
}

static int listen_tcp(uv_loop_t *loop, const kvs_addr_t *a, kvs_listener_t *l)
{
    struct sockaddr_storage ss;
    int rc = kvs_resolve(loop, a, &ss);
    if (rc != 0)
        return rc;
    rc = uv_tcp_init(loop, &l->tcp);
    if (rc != 0)
        return rc;
    return uv_tcp_bind(&l->tcp, (const struct sockaddr *)&ss, 0);
}

static int listen_unix(uv_loop_t *loop, const kvs_addr_t *a, kvs_listener_t *l)
{
    int rc = uv_pipe_init(loop, &l->pipe, 0);
    if (rc != 0)
        return rc;
    /* A socket file left by a crashed process would make bind fail; the
     * caller holds the lock that makes this path ours, so remove it. */
    if (unlink(a->path) != 0 && errno != ENOENT)
        return -errno;
    rc = uv_pipe_bind(&l->pipe, a->path);
    /* The node's user only (its directory is private too). */
    if (rc == 0 && chmod(a->path, 0600) != 0)
        return -errno;
    return rc;
}

int kvs_listen(uv_loop_t *loop, const kvs_addr_t *addr, kvs_listener_t *l, uv_connection_cb cb)
{
    memset(l, 0, sizeof(*l));
    int rc = addr->is_unix ? listen_unix(loop, addr, l) : listen_tcp(loop, addr, l);
    if (rc == 0)
        rc = uv_listen(&l->stream, 511, cb);
    if (rc != 0 && l->handle.loop != NULL)
        uv_close(&l->handle, NULL);
    return rc;
}
