/*
 * router_link: one connection per shard, a FIFO of pending requests, and
 * the reconnect/timeout machinery.
 *
 * Invariants:
 *  - fifo[head .. head+count) are the requests sent on the current
 *    connection, oldest first; the worker answers them in that order.
 *  - Every pending request gets exactly one on_reply: its answer, or a
 *    failure when the connection breaks, times out or the link stops.
 *  - A kvs_conn belongs to one connection attempt; it is heap memory freed
 *    in its close callback, so a broken connection can be dropped while the
 *    link immediately starts another.
 *  - One timer serves three purposes: while down it is the reconnect
 *    backoff, during a TLS handshake its deadline (router.timeout: a worker
 *    that accepts but never answers must not hold the link forever), while
 *    up it fires at the oldest request's deadline: router.timeout after it
 *    was sent or after the answer before it arrived, whichever is later
 *    (or a later request's, when a reload lowered router.timeout: fifo_push).
 *    While the worker still reads the oldest request (link_taking) its
 *    clock starts again: a request of megabytes is sent only once it was
 *    read, as long as the worker takes LINK_MIN_TAKE of it per timeout.
 *  - The backoff grows while attempts fail, and also while connections
 *    come up and go down at once: it starts over only when a connection
 *    that stayed up for BACKOFF_MAX_MS goes down. A peer that accepts and
 *    then closes or sends something nobody asked for (a wrong service on
 *    the port, a worker refusing clients) is dialled, and logged, about
 *    once a second, not every BACKOFF_MIN_MS.
 *  - A remote shard named by host name is resolved again on every
 *    (re)connect, so a moved node is found, and asynchronously
 *    (kvs_lookup: a thread of its own): a slow resolver delays only this
 *    link, never the loop. `resolving` is set while a lookup is in
 *    flight; it counts as connecting (no second attempt starts). A lookup
 *    that has not answered within LINK_LOOKUP_MS is given up (a resolver
 *    that hangs for good would hold the link for ever) and tried again
 *    after the backoff; router_link_stop gives up the one in flight, so a
 *    router's shutdown never waits for a resolver. Numeric addresses are
 *    not resolved at all. When a name has several addresses, a failed connect
 *    tries the next one at once (ai_next walks ai_list, freed once up, out
 *    of addresses, or stopped).
 *  - An answer larger than limits.max_frame does not break the link: the
 *    decoder steps over it (kvs_frame_dec_skip_oversized), buffering none
 *    of it, and that one request fails (on_reply with no payload and the
 *    answer's length); the answers after it are matched as usual. Workers
 *    never send one (node_cmd checks every answer); a node whose
 *    limits.max_frame is larger than this router's could, and one request
 *    is all it may cost.
 *  - A replica router_replica avoids keeps its avoidance across a
 *    reconnect: a peer that accepts and then fails every request (a
 *    crash-looping worker, a broken node) would otherwise be handed a
 *    client's request, and fail it, at every reconnect. Instead the link
 *    asks the new connection's worker itself: a Ping of its own (ctx: the
 *    link, never a request), sent as it comes up; a 200 ends the
 *    avoidance (a worker that restarted, or ended a snapshot copy and
 *    serves now, is not passed over for up to 30 s); anything else, or no
 *    answer, counts as a failure (router_link_avoid). Nobody else sees the
 *    Ping or its answer. A link reset because its worker hung asks too: a
 *    worker that still hangs leaves the Ping unanswered, so the link is
 *    passed over until the Ping times out, and again at the next
 *    connection, rather than handed clients' requests each time its
 *    avoidance runs out. While it
 *    is unanswered (router_link_asking) the link counts as avoided even if the
 *    avoidance ran out meanwhile: the Ping is the one request that tries
 *    the new connection, and what a client sent behind it would fail
 *    with it.
 */
#include "router_link.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_hash.h"
#include "kvs_log.h"
#include "kvs_lookup.h"
#include "kvs_msg.h"
#include "kvs_testhook.h"
#include "router_liveness.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000
#define LINK_LOOKUP_MS 30000u /* a host name's lookup not answered by then is given up */

/* LINK_LOOKUP_MS, or KVS_TEST_LINK_LOOKUP_MS in test builds: read at the
 * first link's start (one loop per process). */
static uint64_t link_lookup_ms;
/* A link that keeps failing the same way (a TLS handshake the worker
 * refuses) reconnects every BACKOFF_MAX_MS: its connections' lines are
 * budgeted, then counted (one line a minute says how many were left out). */
#define LINK_LOG_LINES 3
#define LINK_LOG_WINDOW_MS 60000

/* CommandRequest {ping: {}}: the hello (invariants). */
static const uint8_t link_ping[] = {0x5a, 0x00};
/* Map Pings a link lets go unanswered (dropped, timed out) before it asks
 * no more (link_map_ask). */
#define LINK_MAP_LOST 1

static void link_connect(router_link_t *l);
static void link_arm_timer(router_link_t *l);
static void on_timer(uv_timer_t *t);
static void link_retry(router_link_t *l);

/* ---- FIFO -------------------------------------------------------------- */

static int fifo_push(router_link_t *l, void *ctx, uint32_t part)
{
    if (l->count == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        router_link_pending_t *n = malloc(cap * sizeof(*n));
        if (n == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < l->count; i++)
            n[i] = l->fifo[(l->head + i) % l->cap];
        free(l->fifo);
        l->fifo = n;
        l->cap = cap;
        l->head = 0;
    }
    router_link_pending_t *p = &l->fifo[(l->head + l->count) % l->cap];
    p->ctx = ctx;
    p->part = part;
    p->start = p->end = kvs_conn_queued_total(l->conn); /* the caller sets end once it appended */
    p->deadline = uv_now(l->loop) + l->timeout_ms;
    /* The worker answers in order, so a request's answer comes after the
     * oldest's: only a router.timeout lowered by a reload makes this one's
     * deadline the earlier, and then the oldest's is brought to it (the
     * timer watches the oldest): a worker that sends nothing for the new
     * timeout after this was sent is hung by the new rule. */
    int sooner = l->count > 0 && l->fifo[l->head].deadline > p->deadline;
    if (sooner)
        l->fifo[l->head].deadline = p->deadline;
    l->count++;
    if (sooner)
        link_arm_timer(l);
    return 0;
}

/* The newest request's bytes were appended to the connection's output. */
static void fifo_sent(router_link_t *l)
{
    l->fifo[(l->head + l->count - 1) % l->cap].end = kvs_conn_queued_total(l->conn);
}

/* Pops the oldest request. The next one's clock starts no earlier than
 * now: a worker working through a deep pipeline of large requests is
 * making progress, and only a worker that owes answers and sends none for
 * router.timeout is taken for hung. */
static router_link_pending_t fifo_pop(router_link_t *l)
{
    router_link_pending_t p = l->fifo[l->head];
    l->head = (l->head + 1) % l->cap;
    l->count--;
    l->taking = 0;
    if (l->count > 0) {
        uint64_t dl = uv_now(l->loop) + l->timeout_ms;
        if (l->fifo[l->head].deadline < dl)
            l->fifo[l->head].deadline = dl;
    }
    return p;
}

/* What the link reaches, and who is at its other end, for log lines. */
static const char *link_what(const router_link_t *l)
{
    return l->what != NULL ? l->what : "shard";
}

static const char *link_peer(const router_link_t *l)
{
    return l->what != NULL ? "peer" : "worker";
}

/* The link's map Ping (ctx: &map_ask), on a connection that has not
 * had one answered 200: on the first connection, and again on a later one
 * (or on this one, once a client's request was answered, a second on)
 * while the worker answers it otherwise (a worker copying a snapshot, or
 * starting, answers 503). Asked no more once an ask went unanswered
 * (LINK_MAP_LOST): a peer that drops connections it is sent anything on
 * would otherwise have every one flap at the Ping. */
static void link_map_ask(router_link_t *l)
{
    if (l->map_digest == NULL || l->map_answered || l->map_asking || l->map_lost >= LINK_MAP_LOST)
        return;
    l->map_next_ms = uv_now(l->loop) + 1000;
    if (router_link_send(l, link_ping, sizeof(link_ping), &l->map_ask, 0) == 0)
        l->map_asking = 1;
}

/* The answer to the link's map Ping: the worker's map digest, when it
 * has one (workers of earlier builds, or without cluster.nodes, send
 * none), against this router's. Maps differ while a membership change is
 * rolled out to the nodes one by one; one that stays is a mistake: the
 * nodes place keys and replicas differently (each may take itself for a
 * shard's only holder and take writes the other never sees). */
static void link_map_answer(router_link_t *l, const uint8_t *payload, size_t len)
{
    const uint8_t *d;
    size_t n;
    l->map_asking = 0;
    if (payload == NULL) {
        l->map_lost++;
        return;
    }
    if (kvs_msg_answer_status(payload, len) != KVS_STATUS_OK)
        return; /* asked again (link_map_ask) */
    l->map_answered = 1;
    if (kvs_msg_find_bytes(payload, len, 9, &d, &n) != 1 || n != KVS_HASH_LEN ||
        memcmp(d, l->map_digest, KVS_HASH_LEN) == 0)
        return;
    char theirs[2 * KVS_HASH_LEN + 1], ours[2 * KVS_HASH_LEN + 1];
    l->map_differs++;
    kvs_hash_hex(d, theirs);
    kvs_hash_hex(l->map_digest, ours);
    kvs_warn("link to %s %u (%s%s%s): the worker there runs another cluster map (digest %.12s, "
             "this router's %.12s): cluster.shards, cluster.partitions or cluster.nodes differ "
             "between the nodes' configs, so they place keys and replicas differently. "
             "Expected only while a membership change is being reloaded into every node; "
             "otherwise give every node the same map",
             link_what(l), l->shard, l->addr_text, l->node != NULL && l->node[0] ? ", node " : "",
             l->node != NULL ? l->node : "", theirs, ours);
}

/* The link's own Ping (invariants: a reconnect's hello) is answered
 * here; everything else goes to on_reply. A 200 ends the avoidance; a
 * hello that failed, or was answered anything else, is a failure like a
 * request's: the avoidance goes on, renewed (doubled) if it ran out while
 * the Ping was on its way. */
static void link_answer(router_link_t *l, router_link_pending_t p, const uint8_t *payload,
                        size_t len, const char *failure)
{
    if (p.ctx == &l->map_ask) {
        link_map_answer(l, payload, len);
        return;
    }
    if (p.ctx != l) {
        l->on_reply(p.ctx, p.part, payload, len, failure);
        if (l->map_digest != NULL && !l->map_answered && payload != NULL && l->up &&
            uv_now(l->loop) >= l->map_next_ms)
            link_map_ask(l); /* (local links have no digest: one load on the hot path) */
        return;
    }
    if (payload != NULL && kvs_msg_answer_status(payload, len) == KVS_STATUS_OK)
        router_link_trust(l);
    else
        router_link_avoid(l, uv_now(l->loop));
}

/* Fails every pending request with `why`. Callbacks may send new requests
 * (they fail at once, the link being down), so pop one at a time. */
static void fail_all(router_link_t *l, const char *why)
{
    char msg[400];
    snprintf(msg, sizeof(msg), "%s %u is unavailable: %s", link_what(l), l->shard, why);
    while (l->count > 0) {
        router_link_pending_t p = fifo_pop(l);
        link_answer(l, p, NULL, 0, msg);
    }
}

/* ---- connection ---------------------------------------------------------- */

static void link_down(router_link_t *l, const char *why);

/* Every close the link asks for clears c->data first; one it did not ask
 * for is kvs_conn's own, when it cannot go on (out of memory encrypting
 * or decrypting TLS): the link is down, and what was pending on it fails
 * now rather than at router.timeout (and l->conn does not outlive c). */
static void on_conn_closed(kvs_conn_t *c)
{
    router_link_t *l = c->data;
    int current = l != NULL && l->conn == c;
    free(c);
    if (!current)
        return;
    l->conn = NULL;
    char why[80];
    snprintf(why, sizeof(why), "the connection to the %s failed (see above)", link_peer(l));
    link_down(l, why);
}

static void link_forget_addrs(router_link_t *l)
{
    if (l->ai_list != NULL)
        uv_freeaddrinfo(l->ai_list);
    l->ai_list = l->ai_next = NULL;
}

/* Drops the connection, fails what was pending with `why`, and schedules
 * a reconnect. `state` (NULL: `why`) is kept as last_error, what requests
 * refused while the link is down are told: they are never sent, so it
 * says why the link is down, not what became of the pending ones. */
static void link_down_state(router_link_t *l, const char *why, const char *state)
{
    int was_up = l->up;
    l->hung = 0; /* on_timer sets it again when that is why */
    snprintf(l->last_error, sizeof(l->last_error), "%s", state != NULL ? state : why);
    if (l->conn != NULL) {
        l->conn->data = NULL;
        /* Requests pending on it are answered 503 below, and the client
         * may write the same keys again elsewhere: a reset tells a worker
         * that reads them only now not to run them (kvs_conn_abort). */
        if (l->count > 0)
            kvs_conn_abort(l->conn);
        else
            kvs_conn_close(l->conn);
        l->conn = NULL;
    }
    l->up = 0;
    l->downs += was_up != 0;
    if (was_up && uv_now(l->loop) - l->up_since >= BACKOFF_MAX_MS)
        l->backoff_ms = BACKOFF_MIN_MS; /* it worked for a while: reconnect soon */
    l->handshaking = 0;
    /* A connection that went down within BACKOFF_MAX_MS of coming up (a
     * worker that refuses the TLS client certificate once the handshake
     * is over, at every reconnect) flaps: its up and down lines are
     * budgeted with its connections' own, until one stays up. */
    uint64_t now = uv_now(l->loop);
    if (was_up)
        l->flapping = now - l->up_since < BACKOFF_MAX_MS;
    if (was_up && l->unanswered > 1)
        kvs_debug("link to %s %u (%s) down: %s", link_what(l), l->shard, l->addr_text, why);
    else if (was_up && (!l->flapping || kvs_log_budget_take(&l->log_budget, now)))
        kvs_warn("link to %s %u (%s) down: %s", link_what(l), l->shard, l->addr_text, why);
    /* The requests are told the state: a write's answer adds that it may
     * have been applied (router_route), a read's must not say so. */
    fail_all(l, state != NULL ? state : why);
    if (was_up && l->on_state != NULL)
        l->on_state(l, 0);
    link_arm_timer(l);
}

static void link_down(router_link_t *l, const char *why)
{
    link_down_state(l, why, NULL);
}

/* An answer over max_frame was stepped over: its request fails alone. */
static void on_oversized(router_link_t *l, router_link_pending_t p, size_t len)
{
    char why[320];
    uint64_t now = uv_now(l->loop);
    if (l->oversized_log_ms == 0 || now - l->oversized_log_ms >= 10000) {
        l->oversized_log_ms = now;
        kvs_warn("shard %u (%s) sent an answer of %zu bytes, more than limits.max_frame (%u); "
                 "it was dropped and its request failed, the link stays up (does that node "
                 "have a larger limits.max_frame? logged at most every 10 s)",
                 l->shard, l->addr_text, len, l->max_frame);
    }
    snprintf(why, sizeof(why),
             "shard %u answered with %zu bytes, more than limits.max_frame (%u bytes) allows, "
             "so the answer was dropped (that node's limits.max_frame is larger than this "
             "router's: give every node the same)",
             l->shard, len, l->max_frame);
    link_answer(l, p, NULL, len, why);
}

static void on_frame(kvs_conn_t *c, const uint8_t *payload, size_t len)
{
    router_link_t *l = c->data;
    if (l->count == 0) {
        link_down(l, "worker sent an answer nobody asked for");
        return;
    }
    router_link_pending_t p = fifo_pop(l);
    if (payload == NULL)
        on_oversized(l, p, len);
    else
        link_answer(l, p, payload, len, NULL);
    if (l->conn == c)
        link_arm_timer(l);
}

static void on_conn_error(kvs_conn_t *c, int err)
{
    router_link_t *l = c->data;
    char why[300];
    if (l == NULL)
        return;
    if (err == KVS_ETLS || err == KVS_ENOTLS) {
        snprintf(why, sizeof(why), "TLS with the %s failed: %s", link_peer(l),
                 kvs_conn_tls_error(c));
        link_down(l, why);
        return;
    }
    char closed[40];
    snprintf(closed, sizeof(closed), "%s closed the connection", link_peer(l));
    link_down(l, err == KVS_ECLOSED ? closed : kvs_strerror(err));
}

/* The connection can carry requests: connected, and for TLS, handshaken. */
static void link_up(router_link_t *l)
{
    link_forget_addrs(l);
    l->handshaking = 0;
    /* An avoided replica's new connection may reach a worker that serves
     * now (it restarted, ended a snapshot copy, or resumed after a hang):
     * it is asked (invariants: the hello). A worker that still hangs
     * leaves the Ping unanswered, and the link passed over, until the
     * Ping times out and the link starts over: no client's request waits
     * out router.timeout there meanwhile. */
    int hello = l->avoid_ms != 0 || l->avoid_until != 0;
    l->hung = 0;
    l->taken_mark = 0;
    l->taking = 0;
    l->up = 1;
    l->up_since = uv_now(l->loop);
    l->last_error[0] = '\0';
    if (l->unanswered > 0)
        kvs_debug("link to %s %u (%s) up%s; asking its worker again", link_what(l), l->shard,
                  l->addr_text, l->tls ? " (TLS)" : "");
    else if (!l->flapping || kvs_log_budget_take(&l->log_budget, l->up_since))
        kvs_info("link to %s %u (%s) up%s", link_what(l), l->shard, l->addr_text,
                 l->tls ? " (TLS)" : "");
    link_arm_timer(l); /* ends a handshake deadline */
    /* Lines were left out: once this connection has stayed up for
     * BACKOFF_MAX_MS, on_timer says how many (a timer due sooner is kept:
     * it re-arms through link_arm_timer). */
    if (l->log_budget.dropped > 0 && (!uv_is_active((uv_handle_t *)&l->timer) ||
                                      uv_timer_get_due_in(&l->timer) > BACKOFF_MAX_MS))
        uv_timer_start(&l->timer, on_timer, BACKOFF_MAX_MS, 0);
    if (hello && router_link_send(l, link_ping, sizeof(link_ping), l, 0) != 0)
        kvs_warn("link to %s %u (%s): cannot ask its worker whether it serves (out of memory); "
                 "it stays avoided until a request it is sent succeeds",
                 link_what(l), l->shard, l->addr_text);
    link_map_ask(l);
    if (l->on_state != NULL)
        l->on_state(l, 1);
}

static void on_tls_ready(kvs_conn_t *c)
{
    router_link_t *l = c->data;
    if (l != NULL && c == l->conn)
        link_up(l);
}

static void link_maybe_closed(router_link_t *l);

/* The parent of process `pid` (/proc/PID/status), or 0 when it cannot be
 * read. */
static pid_t parent_of(pid_t pid)
{
    router_proc_state_t st;
    return router_liveness_inspect(pid, &st) == 0 ? st.ppid : 0;
}

/* Whether /proc is this process's pid namespace's (/proc/self names
 * getpid()): in a namespace without a /proc of its own (unshare -p without
 * one mounted), the pid a socket names there is another process's. */
static int proc_is_ours(void)
{
    char buf[32];
    ssize_t n = readlink("/proc/self", buf, sizeof(buf) - 1);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *end;
    long pid = strtol(buf, &end, 10);
    return *end == '\0' && pid == (long)getpid();
}

/* Is the process serving c's socket someone other than a child of
 * l->peer_parent? A worker of an earlier run of the node (its master
 * killed, the worker stopped or hung in the kernel) keeps its listening
 * socket: connecting succeeds, and the link would count as up while
 * nothing answers, so a new node became ready without the shard (its own
 * worker cannot take the shard's lock meanwhile). Returns the peer's pid
 * when it is foreign, else 0 (also when it cannot be told). */
static pid_t link_foreign_peer(const router_link_t *l, kvs_conn_t *c)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    uv_os_fd_t fd;
    if (l->peer_parent <= 0 || !l->addr.is_unix || uv_fileno((uv_handle_t *)&c->h.pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0)
        return 0;
    if (!proc_is_ours())
        return 0; /* cannot be told */
    pid_t parent = parent_of(cred.pid);
    return parent != 0 && parent != l->peer_parent ? cred.pid : 0;
}

static void on_connected(uv_connect_t *req, int status)
{
    router_link_t *l = req->data;
    kvs_conn_t *c = (kvs_conn_t *)req->handle->data;
    int late = l->connect_late && status == UV_ECANCELED; /* given up at router.timeout */
    l->connecting = 0;
    l->connect_late = 0;
    /* Nobody listens: the worker is gone, not slow. Any other failure (a
     * full listen queue, EAGAIN, is what a stuck worker's socket says)
     * tells nothing new: a hung worker stays hung. */
    if (status == UV_ECONNREFUSED || status == UV_ENOENT)
        l->hung = 0;
    if (l->stopping || status != 0 || kvs_conn_start(c) != 0) {
        if (!l->stopping && late)
            snprintf(l->last_error, sizeof(l->last_error),
                     "cannot connect to %s: no connection within router.timeout (%llu ms)",
                     l->addr_text, (unsigned long long)l->timeout_ms);
        else if (!l->stopping && status != 0)
            snprintf(l->last_error, sizeof(l->last_error), "cannot connect to %s: %s", l->addr_text,
                     uv_strerror(status));
        c->data = NULL;
        kvs_conn_close(c);
        if (c == l->conn)
            l->conn = NULL;
        if (!l->stopping)
            link_retry(l); /* the name's next address, or later */
        else
            link_maybe_closed(l);
        return;
    }
    pid_t foreign = link_foreign_peer(l, c);
    if (foreign != 0) {
        snprintf(l->last_error, sizeof(l->last_error),
                 "%s is served by pid %ld, which this node did not start (a kvs-node of an "
                 "earlier run, stopped or hung, still holding the shard: stop it)",
                 l->addr_text, (long)foreign);
        if (foreign != l->foreign_pid)
            kvs_warn("link to %s %u: %s; not using it, and trying again", link_what(l), l->shard,
                     l->last_error);
        l->foreign_pid = foreign;
        l->hung = 0;
        c->data = NULL;
        kvs_conn_close(c);
        l->conn = NULL;
        link_retry(l);
        return;
    }
    /* Whenever this side goes, the link process's death included, the
     * worker is told by a reset, so it does not run requests it reads only
     * after that (kvs_conn_peer_gone): their clients were answered 503, or
     * lost their connections, and may have written the same keys since. */
    int lrc = kvs_conn_reset_on_close(c);
    if (lrc != 0)
        kvs_warn("link to %s %u (%s): cannot set SO_LINGER (%s): a worker may run requests "
                 "of this router that it reads after this router gave up on them",
                 link_what(l), l->shard, l->addr_text, uv_strerror(lrc));
    if (c->tls == NULL) {
        link_up(l);
        return;
    }
    l->handshaking = 1;
    link_arm_timer(l);
}

/* Starts a connection to `sa` (NULL for the unix socket). On failure the
 * reason is kept and a retry is scheduled. */
static void link_dial(router_link_t *l, const struct sockaddr *sa)
{
    kvs_conn_t *c = malloc(sizeof(*c));
    if (c == NULL) {
        snprintf(l->last_error, sizeof(l->last_error), "out of memory");
        link_arm_timer(l);
        return;
    }
    int rc = kvs_conn_init(c, l->loop, l->addr.is_unix, l->max_frame, on_frame, on_conn_error,
                           on_conn_closed);
    c->data = l;
    c->flusher = l->flusher;
    snprintf(l->log_what, sizeof(l->log_what), "lines about the link to %s %u (%s)", link_what(l),
             l->shard, l->addr_text);
    c->log_budget = &l->log_budget;
    c->stamp_reads = 1; /* answers' arrival times, for request metrics and the slow log */
    kvs_frame_dec_skip_oversized(&c->dec); /* an oversized answer fails its request only */
    /* A link must always read and deliver answers: stopping because its
     * own requests are queued deadlocks against a worker stuck writing
     * answers, and would hold up every client of the shard. Its output is
     * bounded in link_usable instead. */
    c->high_water = SIZE_MAX;
    l->conn = c;
    l->connect_req.data = l;
    if (rc == 0 && l->tls != NULL) {
        rc = kvs_conn_use_tls(c, l->tls, l->addr.host);
        c->on_ready = on_tls_ready;
    }
    if (rc == 0) {
        if (sa == NULL)
            uv_pipe_connect(&l->connect_req, &c->h.pipe, l->addr.path, on_connected);
        else
            rc = uv_tcp_connect(&l->connect_req, &c->h.tcp, sa, on_connected);
    }
    if (rc != 0) {
        snprintf(l->last_error, sizeof(l->last_error), "cannot connect to %s: %s", l->addr_text,
                 uv_strerror(rc));
        c->data = NULL;
        kvs_conn_close(c);
        l->conn = NULL;
        link_retry(l);
        return;
    }
    l->connecting = 1;
    /* A host that drops connection attempts (powered off, or a firewall)
     * would hold the link for the kernel's SYN retries (two minutes)
     * before the name's next address or the next try: on_timer gives it
     * up after router.timeout. */
    uv_timer_start(&l->timer, on_timer, l->timeout_ms, 0);
}

/* Dials the next address the name resolved to. */
static void link_dial_next(router_link_t *l)
{
    const struct addrinfo *ai = l->ai_next;
    l->ai_next = ai->ai_next;
    link_dial(l, ai->ai_addr); /* uv_tcp_connect copies the address */
}

/* A connection attempt failed: a name that resolved to several addresses
 * (IPv6 and IPv4, several A records) tries the next one at once, as
 * clients of such names do; after the last, the backoff timer decides. */
static void link_retry(router_link_t *l)
{
    if (l->ai_next != NULL) {
        link_dial_next(l);
        return;
    }
    link_forget_addrs(l);
    link_arm_timer(l);
}

/* A stopped link's timer closed, its lookup returned, or its connect
 * request was called back: once all are, nothing of libuv holds it. */
static void link_maybe_closed(router_link_t *l)
{
    if (l->timer_closed && !l->resolving && !l->connecting && l->on_closed != NULL)
        l->on_closed(l);
}

static void on_timer_closed(uv_handle_t *h)
{
    router_link_t *l = h->data;
    l->timer_closed = 1;
    link_maybe_closed(l);
}

static void on_resolved(kvs_lookup_t *lk, void *data, int status, struct addrinfo *res)
{
    (void)lk;
    router_link_t *l = data;
    l->lookup = NULL;
    l->resolving = 0;
    if (status != 0 || res == NULL) {
        snprintf(l->last_error, sizeof(l->last_error), "cannot resolve %s: %s", l->addr.host,
                 status != 0 ? uv_strerror(status) : "no address");
        if (res != NULL)
            freeaddrinfo(res);
        link_arm_timer(l);
        return;
    }
    l->ai_list = l->ai_next = res;
    link_dial_next(l);
}

/* The lookup in flight is given up: at LINK_LOOKUP_MS, or as the link stops. */
static void link_abandon_lookup(router_link_t *l)
{
    if (!l->resolving)
        return;
    kvs_lookup_abandon(l->lookup);
    l->lookup = NULL;
    l->resolving = 0;
}

/* Connects: at once to a unix socket or a numeric address, through an
 * asynchronous lookup for a host name. */
static void link_connect(router_link_t *l)
{
    struct sockaddr_storage ss;
    if (l->addr.is_unix) {
        link_dial(l, NULL);
        return;
    }
    if (uv_ip4_addr(l->addr.host, l->addr.port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(l->addr.host, l->addr.port, (struct sockaddr_in6 *)&ss) == 0) {
        link_dial(l, (const struct sockaddr *)&ss);
        return;
    }
    int rc = kvs_lookup_start(l->loop, &l->addr, on_resolved, l, &l->lookup);
    if (rc != 0) { /* UV_EAGAIN: as many lookups as a process may run are running */
        snprintf(l->last_error, sizeof(l->last_error), "cannot resolve %s: %s", l->addr.host,
                 uv_strerror(rc));
        link_arm_timer(l);
        return;
    }
    l->resolving = 1;
    uv_timer_start(&l->timer, on_timer, link_lookup_ms, 0);
}

/* ---- timer ------------------------------------------------------------------ */

/* What a worker must take of a request per router.timeout while it reads
 * it for the request's clock to start again: one that reads slower is
 * taken for hung (1 MiB per 5 s, the default, is 200 KiB/s). */
#define LINK_MIN_TAKE (1u << 20)

/* At the oldest request's due deadline: whether the worker is still
 * reading it. A request's router.timeout counts from its sending, and a
 * request of megabytes to a busy worker is sent only once the worker read
 * it. Its clock starts again while, since the last due deadline (or its
 * sending), the worker took LINK_MIN_TAKE of its bytes or the last of
 * them; later requests' bytes do not count (they have deadlines of their
 * own). A request the worker had whole by the last due deadline is hung.
 * At the first due deadline nobody knows when the worker took the last
 * byte: a request of less than LINK_MIN_TAKE is taken to have been read at
 * once (hung: the exact bound for the small requests nearly all are), a
 * larger one gets one more timeout. One ioctl, at due deadlines only. */
static int link_taking(router_link_t *l)
{
    const router_link_pending_t *h = &l->fifo[l->head];
    uint64_t from = l->taking ? l->taken_mark : h->start;
    if (from >= h->end)
        return 0; /* it had the whole request a timeout ago */
    uint64_t taken = kvs_conn_taken(l->conn);
    int first = !l->taking;
    l->taken_mark = taken;
    l->taking = 1;
    if (taken >= h->end) /* read to its end since: from now, or hung at once if small */
        return !first || h->end - h->start >= LINK_MIN_TAKE;
    return taken > from && taken - from >= LINK_MIN_TAKE;
}

static void on_timer(uv_timer_t *t)
{
    router_link_t *l = t->data;
    if (l->stopping)
        return;
    /* The summary of the lines left out: once the link has stayed up for
     * BACKOFF_MAX_MS (its failures are over), else when their window is. */
    if (l->up && l->log_budget.dropped > 0 && uv_now(l->loop) - l->up_since >= BACKOFF_MAX_MS)
        kvs_log_budget_end(&l->log_budget, uv_now(l->loop));
    else
        kvs_log_budget_flush(&l->log_budget, uv_now(l->loop));
    if (l->handshaking) {
        char why[160];
        snprintf(why, sizeof(why),
                 "the TLS handshake with the worker did not complete within router.timeout "
                 "(%llu ms)",
                 (unsigned long long)l->timeout_ms);
        link_down(l, why);
        return;
    }
    if (l->resolving) {
        link_abandon_lookup(l);
        snprintf(l->last_error, sizeof(l->last_error),
                 "cannot resolve %s: no answer within %llu ms", l->addr.host,
                 (unsigned long long)link_lookup_ms);
        link_arm_timer(l);
        return;
    }
    if (l->connecting && l->conn != NULL) {
        /* Given up: its connect request is called back canceled as the
         * handle closes (on_connected), which goes on from there. */
        l->connect_late = 1;
        l->conn->data = NULL;
        kvs_conn_close(l->conn);
        l->conn = NULL;
        return;
    }
    if (!l->up) {
        if (!l->connecting && !l->resolving && l->conn == NULL)
            link_connect(l);
        return;
    }
    int due = l->count > 0 && uv_now(l->loop) >= l->fifo[l->head].deadline;
    if (due && l->conn != NULL && kvs_conn_input_waiting(l->conn)) {
        /* The worker did answer: this process did not read it (its loop
         * was held up: stopped, or busy past the deadline; timers run
         * before the loop polls for input). Its clock starts again. */
        l->fifo[l->head].deadline = uv_now(l->loop) + l->timeout_ms;
    } else if (due && l->conn != NULL && link_taking(l)) {
        l->fifo[l->head].deadline = uv_now(l->loop) + l->timeout_ms;
    } else if (due) {
        char why[200], state[64];
        snprintf(state, sizeof(state), "no answer within router.timeout (%llu ms)",
                 (unsigned long long)l->timeout_ms);
        if (router_link_asking(l)) {
            /* Only its own Ping was waiting (clients' requests go
             * elsewhere meanwhile): the worker still hangs. Said once; the
             * link then keeps asking quietly until it answers. */
            l->unanswered++;
            snprintf(why, sizeof(why),
                     "%s to its own Ping: its worker still does not answer; asking again at each "
                     "reconnect (logged at debug level until it answers)",
                     state);
        } else {
            snprintf(why, sizeof(why),
                     "%s; the requests in flight may or may not have been applied", state);
        }
        link_down_state(l, why, state);
        /* What requests sent before it is up again are told: not that
         * they waited (they are refused at once, unsent). */
        snprintf(l->last_error, sizeof(l->last_error),
                 "its link was reset after a request got no answer within router.timeout "
                 "(%llu ms), and is reconnecting",
                 (unsigned long long)l->timeout_ms);
        l->hung = 1; /* until the next connection says more (router_local reads on) */
        return;
    }
    link_arm_timer(l);
}

static void link_arm_timer(router_link_t *l)
{
    if (l->stopping)
        return;
    if (l->handshaking) {
        uv_timer_start(&l->timer, on_timer, l->timeout_ms, 0);
        return;
    }
    if (!l->up) {
        if (l->connecting || l->resolving)
            return;
        uv_timer_start(&l->timer, on_timer, l->backoff_ms, 0);
        l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
        return;
    }
    /* Up: the timer need only fire no later than the oldest request's
     * deadline. Deadlines move later (but for fifo_push's case, which this
     * re-arms for, as it is sooner than the timer), so a timer already due sooner
     * is kept (it fires early and re-arms), and an idle link keeps its
     * timer until it fires and finds nothing due: re-arming on every
     * answer cost a timer-heap update per request. */
    if (l->count == 0)
        return;
    uint64_t now = uv_now(l->loop), dl = l->fifo[l->head].deadline;
    if (uv_is_active((uv_handle_t *)&l->timer) && now + uv_timer_get_due_in(&l->timer) <= dl)
        return;
    uv_timer_start(&l->timer, on_timer, dl > now ? dl - now : 0, 0);
}

/* ---- API ---------------------------------------------------------------------- */

int router_link_start(router_link_t *l, uv_loop_t *loop, uint32_t shard, const kvs_addr_t *addr,
                      uint64_t timeout_ms, uint32_t max_frame, kvs_flusher_t *flusher,
                      kvs_tls_ctx_t *tls, router_link_reply_cb on_reply,
                      router_link_state_cb on_state)
{
    if (link_lookup_ms == 0) {
        link_lookup_ms = LINK_LOOKUP_MS;
        if (kvs_test_hook_u64("KVS_TEST_LINK_LOOKUP_MS", &link_lookup_ms))
            kvs_warn("test hook: a shard's host name lookup is given up after %llu ms "
                     "(KVS_TEST_LINK_LOOKUP_MS)",
                     (unsigned long long)link_lookup_ms);
    }
    memset(l, 0, sizeof(*l));
    l->loop = loop;
    l->shard = shard;
    l->addr = *addr;
    kvs_addr_format(addr, l->addr_text, sizeof(l->addr_text));
    l->timeout_ms = timeout_ms;
    l->max_frame = max_frame;
    l->flusher = flusher;
    l->tls = tls;
    l->on_reply = on_reply;
    l->on_state = on_state;
    l->backoff_ms = BACKOFF_MIN_MS;
    kvs_log_budget_init(&l->log_budget, l->log_what, LINK_LOG_LINES, LINK_LOG_WINDOW_MS);
    snprintf(l->last_error, sizeof(l->last_error), "not connected yet");
    int rc = uv_timer_init(loop, &l->timer);
    if (rc != 0)
        return rc;
    l->timer.data = l;
    link_connect(l);
    return 0;
}

/* KVS_ECLOSED while the link is down; KVS_ELIMIT while limits.client_output
 * bytes of requests are already queued for a worker that does not take
 * them (hung or overloaded): new requests are refused rather than buffered
 * without bound. */
static int link_usable(router_link_t *l)
{
    if (!l->up || l->conn == NULL || (l->conn->flags & KVS_CONN_CLOSING))
        return KVS_ECLOSED;
    if (l->max_queue > 0 && kvs_conn_backlog(l->conn) >= l->max_queue)
        return KVS_ELIMIT;
    return 0;
}

int router_link_send(router_link_t *l, const uint8_t *payload, size_t len, void *ctx, uint32_t part)
{
    int rc = link_usable(l);
    if (rc != 0)
        return rc;
    if (len > l->max_frame)
        return KVS_ETOOBIG; /* the worker would refuse it and close the link */
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_put_header(hdr, (uint32_t)len);
    if (kvs_buf_reserve(&l->conn->out, sizeof(hdr) + len) != 0 || fifo_push(l, ctx, part) != 0)
        return -ENOMEM;
    kvs_buf_put(&l->conn->out, hdr, sizeof(hdr));
    kvs_buf_put(&l->conn->out, payload, len);
    fifo_sent(l);
    kvs_conn_queue(l->conn);
    if (l->count == 1)
        link_arm_timer(l);
    return 0;
}

int router_link_send_msg(router_link_t *l, const ProtobufCMessage *m, void *ctx, uint32_t part)
{
    int rc = link_usable(l);
    if (rc != 0)
        return rc;
    if (fifo_push(l, ctx, part) != 0)
        return -ENOMEM;
    rc = kvs_msg_append(&l->conn->out, m, l->max_frame); /* KVS_ETOOBIG past it */
    if (rc != 0) {
        l->count--; /* undo the push: nothing was sent */
        return rc;
    }
    fifo_sent(l);
    kvs_conn_queue(l->conn);
    if (l->count == 1)
        link_arm_timer(l);
    return 0;
}

void router_link_stop(router_link_t *l)
{
    if (l->loop == NULL || l->stopping)
        return; /* never started (a failed start-up), or stopped already */
    int pending = l->count > 0;
    kvs_log_budget_end(&l->log_budget, uv_now(l->loop));
    fail_all(l, "the router is shutting down");
    l->stopping = 1;
    if (l->conn != NULL) {
        l->conn->data = NULL;
        if (pending) /* answered 503 just now: not to be run (link_down_state) */
            kvs_conn_abort(l->conn);
        else
            kvs_conn_close(l->conn);
        l->conn = NULL;
    }
    link_abandon_lookup(l); /* its callback is not called: nothing waits for the resolver */
    link_forget_addrs(l);
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, on_timer_closed);
    free(l->fifo);
    l->fifo = NULL;
    l->count = l->cap = 0;
}
