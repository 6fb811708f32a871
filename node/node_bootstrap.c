/*
 * node_bootstrap: copying a peer's environment at a new replica's first
 * start (see node_bootstrap.h).
 *
 * When: <data_dir>/shard-N/data.mdb does not exist (a new replica, or one
 * whose data was removed), cluster.bootstrap is `snapshot` (the default),
 * and cluster.nodes names other replicas of the shard. Otherwise, or when
 * no peer can send a snapshot, the worker starts empty and ingestion
 * replays every bound topic from its beginning (auto.offset.reset
 * earliest), which is correct for those tables, only slower. A peer busy
 * sending another snapshot, one that cannot be reached, or a shard moving
 * in from nodes that hold its only copies, is not "cannot": the peers are
 * asked again until one sends (next_peer), since tables bound to no topic
 * exist only in their copies.
 *
 * How: the peers are tried in map order. For each, a TCP connection to its
 * worker (the map's address + shard id; TLS with this node's tls.link
 * certificate when tls.link is enabled, as the router's links to remote
 * workers, so a peer with tls.node and users authorizes it by that
 * certificate) carries one Snapshot request; the
 * answer is a stream of 206 chunks and a final 200 with the total length
 * and XXH3-128 of the bytes (kvs.proto). Chunks go to data.mdb.part in the
 * shard's directory through libuv's file system thread pool, one write in
 * flight (the connection is paused meanwhile, so memory stays at one
 * chunk). Once the final frame matches what arrived, the file is synced,
 * checked to be an environment of this shard (format, shard id and
 * placement, as the store checks them when it opens it) and renamed to
 * data.mdb (and the directory synced): a crash at any point leaves either
 * no data.mdb (the next start bootstraps again; a stale .part is removed
 * first, and node_store_open removes one left when no copy is made) or a
 * complete one. A peer that sends less than MIN_PROGRESS bytes
 * in limits.frame_timeout (30 s by default: a stall, or a trickle of a few
 * bytes at a time) is given up, as is one that
 * answers an error, closes early, sends bytes that do not match, or sends
 * an environment of another shard or cluster layout, or more than the disk
 * can hold with DISK_RESERVE to spare (disk_short). That deadline times
 * the peer only: it stops while a chunk is being written and once the
 * final frame arrived (syncing a large copy may take longer), and a chunk
 * of no bytes does not move it.
 *
 * The copy carries the peer's offsets in its __kvs metadata, written in
 * the same transactions as the data: ingestion resumes exactly there, and
 * the catch-up gate keeps the new replica from serving until it reached
 * the topic's end (kafka.max_lag).
 *
 * Meanwhile the worker's own addresses (its unix socket, its TCP port,
 * with tls.node's TLS as the server's: a client without the certificate
 * the server would want gets no answer) answer every request with 503
 * "copying a snapshot", so its router comes
 * up and serves the shard from other replicas. Their clients are bounded
 * as the ordinary server's are (limits.frame_timeout, input_buffers,
 * client_output: one kvs_conn group), since anyone who can reach the TCP
 * port can be one before any Auth. They are closed when the copy ends;
 * the ordinary server binds them again right after.
 *
 * The shard directory's kvs.lock is held while copying, so a second
 * worker for the same shard waits its turn (as it would for the store).
 */
#include "node_bootstrap.h"
#include "node_ack.h"
#include "node_snapshot.h"
#include "kvs_cluster.h"
#include "kvs_conn.h"
#include "kvs_copied.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_fs.h"
#include "kvs_hash.h"
#include "kvs_lmdb.h"
#include "kvs_log.h"
#include "kvs_lookup.h"
#include "kvs_msg.h"
#include "kvs_schema.h"
#include "kvs_testhook.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <math.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_WAITING 256 /* clients answered 503 at once, at most */
/* What a peer must send per limits.frame_timeout to keep the copy going: a
 * stall and a trickle are alike (a legitimate sender, even over a slow
 * link, sends this much in a fraction of a second). */
#define MIN_PROGRESS (64u * 1024u)
#define DISK_RESERVE (64ull << 20) /* a copy leaves at least this much free (disk_short) */
#define BUSY_RETRY_MS 1000u        /* peers are asked again after this (next_peer) */
/* A peer says something (its first frame: a chunk, or a 503 "busy") this
 * soon after it is asked, or limits.frame_timeout if shorter; a worker
 * answers a Snapshot at once. A peer that hangs (stopped, or an address
 * that accepts and says nothing) is given up for the next one this soon,
 * not after frame_timeout, which may be as long as router.ready_timeout
 * (30 s each by default) and so would fail a membership change that adds
 * a replica while the first peer in the map hangs. */
#define FIRST_ANSWER_MS 5000u

/* How long looking up a peer's name may take, before the 5 s start: the
 * resolver's own worst case by default (resolv.conf's timeout of 5 s, two
 * attempts, three nameservers). The loop goes on meanwhile, and does not
 * wait for a lookup it gave up on (kvs_lookup). */
#define LOOKUP_MS 30000u

typedef struct node_bootstrap_s boot_t;

/* One connection to a peer, freed once closed. It has its own connect
 * request: an abandoned connection's request is called back (canceled)
 * only once its handle closes, after the next connection began. */
typedef struct dial_s {
    kvs_conn_t conn; /* first: the close callback's pointer is the dial's */
    uv_connect_t connect;
} dial_t;

typedef struct waiter_s { /* a client of the 503 listener */
    kvs_conn_t conn;
    boot_t *b;
    kvs_list_t link; /* on the list of waiters */
} waiter_t;

struct node_bootstrap_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    uint32_t shard;
    char dir[4200], part[4300], final[4300], marker[4300];
    kvs_replica_t peers[KVS_MAX_REPLICAS];
    char names[KVS_MAX_REPLICAS][KVS_NODE_NAME_MAX + 1]; /* of peers read from the marker */
    int n_peers, next_peer;
    int busy;                   /* a peer is busy sending another snapshot: ask them all again */
    int unreachable;            /* a peer could not be reached: it may hold rows only it has */
    uint64_t short_need;        /* a copy stopped short of disk: the free bytes it needed, or 0 */
    int disk_turn;              /* the node's bootstrap-disk.lock, held while copying after
                                 * a shortage (one shard at a time), or -1 */
    kvs_lookup_t *lookup;       /* the peer's name's lookup, or NULL */
    struct addrinfo *addrs;     /* what it resolved to ... */
    struct addrinfo *next_addr; /* ... and the next to try if this connection fails */
    int connected;              /* the connection to the peer being asked completed */
    int heard;                  /* ... and the peer sent a frame on it */
    int moving_in;              /* the map has no replica here: the shard moves in (see wanted) */
    int from_marker;            /* its previous owners are the marker's (a move a stop cut off) */
    char last[800];             /* why the latest attempt failed, for the retry's log line */
    unsigned rounds;            /* rounds asked again so far (logged every 30th) */
    const kvs_replica_t *asked; /* the peer being asked */
    const char *peer;           /* its name */
    kvs_listener_t listeners[2];
    kvs_tls_ctx_t *listener_tls[2]; /* tls.node on a TCP listener, as the server's; or NULL */
    int n_listeners;
    size_t n_waiting;
    kvs_conn_group_t waiting; /* the waiters' limits (limits.*) */
    kvs_list_t waiters;       /* waiter_t, newest first */
    uv_timer_t timer;         /* the peer's stall deadline */
    uint64_t window_got;      /* bytes since the deadline was last set afresh */
    uint64_t window_ms;       /* its time left while a chunk is written */
    kvs_conn_t *conn;         /* to the peer (a dial_t's); NULL between attempts */
    uv_fs_t fs;
    uv_work_t work;     /* install_work */
    kvs_tls_ctx_t *tls; /* tls.link: peers' workers speak TLS; or NULL */
    int fd;             /* data.mdb.part, or -1 */
    int writing;
    uint8_t *wbuf;
    size_t wlen;
    kvs_hash_t *hash;
    uint64_t got;
    uint8_t digest[KVS_HASH_LEN]; /* what arrived, checked against the final frame */
    int verified;                 /* the final frame matched: sync, check, rename */
    char abandon[400];            /* why the attempt failed while a write was in flight ("" = no) */
    char install_err[400];        /* why install_work refused the copy ("" = it did not) */
    char placement[64];           /* kvs_schema_placement of this config: the copy's must be it */
    int done;                     /* copied, or gave up: close everything */
    int canceled;
    uint64_t sync_delay_ms; /* KVS_TEST_SNAPSHOT_SYNC_DELAY_MS (test builds), or 0 */
    uint64_t end_delay_ms;  /* KVS_TEST_SNAPSHOT_END_DELAY_MS (test builds), or 0 */
    uint64_t lookup_ms;     /* LOOKUP_MS, or KVS_TEST_SNAPSHOT_LOOKUP_MS (test builds) */
    atomic_int stop_check;  /* the worker is stopping: end the page check (check_pages) */
};

static void next_peer(boot_t *b);

/* ---- the 503 listener --------------------------------------------------------- */

static void on_waiter_frame(kvs_conn_t *c, const uint8_t *payload, size_t len)
{
    waiter_t *w = c->data;
    (void)payload;
    (void)len;
    const boot_t *b = w->b;
    if (b->conn == NULL && !b->writing && b->last[0] != '\0') /* between rounds */
        kvs_msg_append_status(&c->out, KVS_STATUS_UNAVAILABLE,
                              "shard %u is copying a snapshot to start as a new replica, "
                              "between attempts (the last: %s); ask another replica",
                              b->shard, b->last);
    else
        kvs_msg_append_status(&c->out, KVS_STATUS_UNAVAILABLE,
                              "shard %u is copying a snapshot from %s (%llu bytes so far) to "
                              "start as a new replica; ask another replica",
                              b->shard, b->peer ? b->peer : "a peer", (unsigned long long)b->got);
    kvs_conn_queue(c);
}

static void on_waiter_closed(kvs_conn_t *c)
{
    waiter_t *w = c->data;
    kvs_list_remove(&w->link);
    w->b->n_waiting--;
    free(w);
}

static void on_waiter(uv_stream_t *server, int status)
{
    boot_t *b = server->data;
    waiter_t *w = status == 0 && b->n_waiting < MAX_WAITING ? calloc(1, sizeof(*w)) : NULL;
    kvs_tls_ctx_t *tls = b->listener_tls[(kvs_listener_t *)server == &b->listeners[1]];
    if (w == NULL) {
        kvs_buf_t msg;
        kvs_buf_init(&msg);
        if (kvs_msg_append_status(&msg, KVS_STATUS_UNAVAILABLE, "shard %u is starting", b->shard) !=
            0)
            msg.len = 0; /* no memory for the reason: refused all the same */
        /* Plaintext to a TLS client is noise: a TLS port refuses silently. */
        kvs_conn_refuse(server, msg.len > 0 && tls == NULL ? msg.data : NULL,
                        tls == NULL ? msg.len : 0);
        kvs_buf_free(&msg);
        return;
    }
    w->b = b;
    b->n_waiting++;
    kvs_list_push_front(&b->waiters, &w->link);
    kvs_conn_init(&w->conn, b->loop, server->type == UV_NAMED_PIPE, (uint32_t)b->cfg->max_frame,
                  on_waiter_frame, NULL, on_waiter_closed);
    w->conn.data = w;
    kvs_conn_join(&w->conn, &b->waiting);
    if (kvs_conn_accept_tls(&w->conn, server, tls) != 0)
        kvs_conn_close(&w->conn);
}

/* ---- the end ---------------------------------------------------------------------- */

/* Gives up the node's turn to copy after a shortage (disk_room). */
static void disk_turn_end(boot_t *b)
{
    if (b->disk_turn >= 0)
        close(b->disk_turn);
    b->disk_turn = -1;
}

static void end_all(boot_t *b)
{
    b->done = 1;
    disk_turn_end(b);
    for (int i = 0; i < b->n_listeners; i++)
        uv_close(&b->listeners[i].handle, NULL);
    b->n_listeners = 0;
    kvs_list_t *pos;
    KVS_LIST_EACH(pos, &b->waiters)
    {
        /* freed in on_waiter_closed, later */
        kvs_conn_close(&KVS_LIST_ENTRY(pos, waiter_t, link)->conn);
    }
    kvs_conn_group_close(&b->waiting);
    uv_close((uv_handle_t *)&b->timer, NULL);
}

/* The attempt's lookup, if one runs, is ignored when it returns (and
 * canceled if it has not started), and its addresses are freed. */
static void forget_addrs(boot_t *b)
{
    if (b->lookup != NULL) /* its thread runs on, and frees what it finds */
        kvs_lookup_abandon(b->lookup);
    b->lookup = NULL;
    uv_freeaddrinfo(b->addrs);
    b->addrs = b->next_addr = NULL;
}

/* This peer's attempt is over (`why` != NULL: it failed). */
static void attempt_over(boot_t *b, const char *why)
{
    uv_timer_stop(&b->timer);
    forget_addrs(b);
    if (b->writing) {          /* the file is in use by a thread: finish once the write returns */
        if (why != b->abandon) /* kept, cut to fit, until the write returns */
            snprintf(b->abandon, sizeof(b->abandon), "%.*s", (int)sizeof(b->abandon) - 1,
                     why ? why : "stopped");
        if (b->conn != NULL) {
            b->conn->data = NULL;
            kvs_conn_close(b->conn);
            b->conn = NULL;
        }
        return;
    }
    if (b->conn != NULL) {
        b->conn->data = NULL;
        kvs_conn_close(b->conn);
        b->conn = NULL;
    }
    if (b->fd >= 0) {
        close(b->fd);
        b->fd = -1;
    }
    disk_turn_end(b);
    if (why != NULL) {
        if (b->rounds % 30 == 0) /* asked again every second, maybe for long: said now and then */
            kvs_warn("snapshot from %s failed: %s", b->peer, why);
        snprintf(b->last, sizeof(b->last), "%s: %.*s", b->peer, (int)sizeof(b->last) - 70, why);
        unlink(b->part);
    }
    if (b->canceled || why == NULL) {
        end_all(b);
        return;
    }
    next_peer(b);
}

/* In the thread pool: syncs the complete file, then checks that it is an
 * environment of this shard. The checksum proves the bytes arrived as
 * sent, not that they are what this worker needs: a map whose address for
 * the peer is off reaches another shard's worker, which sends a perfectly
 * good copy of that shard, and once in place the store would refuse it at
 * every start. */
/* How long the page check of a copy of `bytes` may take: a minute, plus a
 * second per 64 MiB (reading from the page cache, or a slow disk). Past it
 * the copy is refused: a damaged tree can lead a walk round in circles. */
static uint64_t check_limit_ms(uint64_t bytes)
{
    return 60000 + bytes / (64u << 20) * 1000;
}

/* Reads every page of the copy (kvs-node --check-data: this binary, in a
 * process of its own, where a fault in a damaged page ends the check, not
 * the worker): returns 0 when it says the copy is sound, else -1 with its
 * verdict, or what became of it, in why. */
static int check_pages(boot_t *b, char *why, size_t len)
{
    extern char **environ;
    char out[8192]; /* "PATH: verdict": data_dir may be long */
    size_t n = 0;
    int fds[2], st = 0;
    pid_t pid;
    if (pipe2(fds, O_CLOEXEC) != 0) {
        snprintf(why, len, "cannot check the copy's pages: pipe: %s", strerror(errno));
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none;
    sigemptyset(&none);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawnattr_init(&at);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
    char *argv[] = {"kvs-node", "--check-data", b->part, NULL};
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        snprintf(why, len, "cannot check the copy's pages: cannot start kvs-node --check-data: %s",
                 strerror(rc));
        return -1;
    }
    uint64_t start = uv_hrtime() / 1000000, limit = check_limit_ms(b->got);
    int over = 0, killed = 0, lost = 0;
    for (;;) { /* its verdict, until it closes its side */
        struct pollfd p = {.fd = fds[0], .events = POLLIN};
        int r = poll(&p, 1, 100);
        if (r > 0) {
            char buf[512];
            ssize_t got = read(fds[0], buf, sizeof(buf));
            if (got == 0)
                break;
            if (got < 0 && errno != EINTR && errno != EAGAIN) {
                lost = errno;
                break;
            }
            for (ssize_t i = 0; i < got && n + 1 < sizeof(out); i++)
                out[n++] = buf[i];
        } else if (r < 0 && errno != EINTR) {
            lost = errno;
            break;
        }
        int stop = atomic_load(&b->stop_check);
        if (!killed && (stop || uv_hrtime() / 1000000 - start > limit)) {
            over = !stop;
            kill(pid, SIGKILL);
            killed = 1;
        }
    }
    close(fds[0]);
    if (lost != 0 && !killed) /* no verdict can come: never wait for it */
        kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    out[n] = '\0';
    if (n > 0 && out[n - 1] == '\n')
        out[n - 1] = '\0';
    if (!killed && lost == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 &&
        strstr(out, ": sound: ") != NULL)
        return 0;
    const char *verdict = strstr(out, ": damaged: ");
    if (lost != 0)
        snprintf(why, len, "cannot read the page check's verdict: %s", strerror(lost));
    else if (over)
        snprintf(why, len, "reading every page of the copy took more than %llu s: refused",
                 (unsigned long long)(limit / 1000));
    else if (killed)
        snprintf(why, len, "the worker is stopping");
    else if (verdict != NULL)
        snprintf(why, len, "its pages are damaged: %.200s", verdict + 11);
    else if (WIFSIGNALED(st))
        snprintf(why, len, "reading every page of the copy ended by signal %d", WTERMSIG(st));
    else
        snprintf(why, len, "reading every page of the copy failed (exit status %d): %.200s",
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1, out[0] != '\0' ? out : "no verdict");
    return -1;
}

static void install_work(uv_work_t *w)
{
    boot_t *b = w->data;
    char err[300] = "";
    if (b->sync_delay_ms > 0) /* test hook: a slow disk */
        usleep((useconds_t)(b->sync_delay_ms * 1000));
    if (fsync(b->fd) != 0) {
        snprintf(b->install_err, sizeof(b->install_err), "cannot sync %.200s: %s", b->part,
                 strerror(errno));
        return;
    }
    int rc = kvs_lmdb_check_file(b->part, b->shard, b->placement, err, sizeof(err));
    if (rc != 0)
        snprintf(b->install_err, sizeof(b->install_err),
                 "the copy is not an environment of shard %u: %s", b->shard,
                 err[0] != '\0' ? err : kvs_strerror(rc));
    else if (check_pages(b, err, sizeof(err)) != 0)
        snprintf(b->install_err, sizeof(b->install_err), "the copy is not sound: %s", err);
}

/* The copy is in place (synced, as is its directory): the peer hears so
 * on the stream's connection (kvs.proto, Snapshot.installed), and a
 * sender that holds the shard alone records this node as holding a copy
 * (node_handoff_copied), which a reload taking the shard from it needs.
 * The connection closes once that is written. Without a node name, or
 * when the peer closed first (an older sender), nothing is said: such a
 * reload of the peer is then refused until this node copies again. */
static void acknowledge(boot_t *b)
{
    kvs_conn_t *c = b->conn;
    if (c == NULL || b->cfg->node_name[0] == '\0')
        return;
    c->data = NULL; /* on_peer_closed frees it; the attempt is over */
    b->conn = NULL;
    if (node_ack_append_snapshot(&c->out, b->cfg->node_name, b->digest) != 0) {
        kvs_conn_close(c);
        return;
    }
    kvs_conn_queue(c);
    kvs_conn_close_after_flush(c);
}

/* The file is synced and checked: rename it into place, sync the directory. */
static void on_installed(uv_work_t *w, int status)
{
    boot_t *b = w->data;
    b->writing = 0;
    if (b->abandon[0] != '\0') {
        attempt_over(b, b->abandon);
        return;
    }
    if (status != 0 || b->install_err[0] != '\0') {
        attempt_over(b, status != 0 ? uv_strerror(status) : b->install_err);
        return;
    }
    /* Owed before the copy is in place (node_ack): a stop in between
     * leaves no copy, and the next start voids it (wanted). */
    int owed =
        b->cfg->node_name[0] != '\0' ? node_ack_owe(b->dir, b->shard, b->asked, b->digest) : 0;
    if (owed != 0)
        kvs_warn("%s/" NODE_ACK_FILE ": cannot write: %s; if node %s misses this node's "
                 "acknowledgement of the copy, it is not sent again",
                 b->dir, strerror(-owed), b->peer);
    /* A record of unbound rows left from a directory of the shard this
     * one replaces names copies of that one: the start after this writes
     * one for the copy's rows (node_handoff). */
    char rows[sizeof(b->dir) + sizeof("/" KVS_UNBOUND_FILE)];
    snprintf(rows, sizeof(rows), "%s/" KVS_UNBOUND_FILE, b->dir);
    if (unlink(rows) != 0 && errno != ENOENT) {
        char why[300];
        snprintf(why, sizeof(why), "cannot remove %.200s: %s", rows, strerror(errno));
        node_ack_void(b->dir);
        attempt_over(b, why);
        return;
    }
    if (rename(b->part, b->final) != 0) {
        char why[300];
        snprintf(why, sizeof(why), "cannot install %.200s: %s", b->final, strerror(errno));
        node_ack_void(b->dir);
        attempt_over(b, why);
        return;
    }
    if (unlink(b->marker) != 0 && errno != ENOENT)
        kvs_warn("%s: cannot remove: %s (the next start ignores it: the copy is in place)",
                 b->marker, strerror(errno));
    int rc = kvs_fs_sync_dir(b->dir);
    if (rc != 0)
        kvs_warn("%s: cannot sync the directory: %s", b->dir, strerror(-rc));
    kvs_info("copied shard %u from %s: %llu bytes; ingestion resumes from the offsets in the copy",
             b->shard, b->peer, (unsigned long long)b->got);
    if (rc == 0)
        acknowledge(b);
    else /* the rename may not last: no acknowledgement, now or later */
        node_ack_void(b->dir);
    if (b->end_delay_ms > 0) { /* test hook: a signal caught now is dispatched after the copy */
        uint64_t until = uv_hrtime() + b->end_delay_ms * 1000000ull;
        for (uint64_t now; (now = uv_hrtime()) < until;)
            usleep((useconds_t)((until - now) / 1000)); /* a signal cuts it short: sleep on */
    }
    attempt_over(b, NULL);
}

/* The file is complete: sync and check it (in the thread pool), then
 * on_installed. */
static void install(boot_t *b)
{
    if (b->sync_delay_ms > 0) /* test hook: a test waits for this (the stream has ended) */
        kvs_warn("test hook: the copy of shard %u from %s is whole (%llu bytes): its sync "
                 "starts, %llu ms more",
                 b->shard, b->peer, (unsigned long long)b->got,
                 (unsigned long long)b->sync_delay_ms);
    b->writing = 1;
    b->install_err[0] = '\0';
    b->work.data = b;
    int rc = uv_queue_work(b->loop, &b->work, install_work, on_installed);
    if (rc != 0) {
        b->writing = 0;
        attempt_over(b, uv_strerror(rc));
    }
}

/* ---- the stream --------------------------------------------------------------------- */

static void on_stall(uv_timer_t *t);

/* The peer's deadline: limits.frame_timeout (0, "never", is 30 s here: a
 * copy that never ends holds the shard's lock and its 503s for ever). */
static uint64_t stall_ms(const boot_t *b)
{
    return b->cfg->frame_timeout_ms ? b->cfg->frame_timeout_ms : 30000;
}

/* The deadline for the peer's first frame (FIRST_ANSWER_MS). */
static uint64_t first_answer_ms(const boot_t *b)
{
    return stall_ms(b) < FIRST_ANSWER_MS ? stall_ms(b) : FIRST_ANSWER_MS;
}

static void on_written(uv_fs_t *req)
{
    boot_t *b = req->data;
    ssize_t r = req->result;
    uv_fs_req_cleanup(req);
    b->writing = 0;
    if (b->abandon[0] != '\0') {
        attempt_over(b, b->abandon);
        return;
    }
    if (r < 0 || (size_t)r != b->wlen) {
        char why[200];
        snprintf(why, sizeof(why), "writing %.120s: %s", b->part,
                 r < 0 ? uv_strerror((int)r) : "short write");
        attempt_over(b, why);
        return;
    }
    if (b->verified) {
        install(b);
        return;
    }
    if (b->conn != NULL) {
        /* The peer's turn again: a new deadline once it sent MIN_PROGRESS
         * bytes since the last one, else what was left of that one. */
        uint64_t full = stall_ms(b), due = b->window_ms;
        if (b->window_got >= MIN_PROGRESS) {
            b->window_got = 0;
            due = full;
        }
        uv_timer_start(&b->timer, on_stall, due > 0 ? due : 1, full);
        kvs_conn_resume(b->conn);
    }
}

static void write_chunk(boot_t *b, const uint8_t *p, size_t n)
{
    memcpy(b->wbuf, p, n);
    b->wlen = n;
    b->writing = 1;
    kvs_conn_pause(b->conn); /* one write in flight: memory stays at one chunk */
    /* Our disk's time, not the peer's: its deadline waits. */
    b->window_ms = uv_timer_get_due_in(&b->timer);
    uv_timer_stop(&b->timer);
    uv_buf_t buf = uv_buf_init((char *)b->wbuf, (unsigned)n);
    b->fs.data = b;
    int rc = uv_fs_write(b->loop, &b->fs, b->fd, &buf, 1, -1, on_written);
    if (rc != 0) {
        b->writing = 0;
        attempt_over(b, uv_strerror(rc));
    }
}

/* The final frame: values [total, hash] must match what arrived. Each
 * value's kind is checked before its member is read: the members share a
 * union, so an integer 16 would read as a 16-byte binary_value whose data
 * pointer is NULL. */
static const char *check_final(boot_t *b, const uint8_t *p, size_t len)
{
    Kvs__CommandResponse *r = kvs__command_response__unpack(NULL, len, p);
    const char *why = NULL;
    kvs_hash_digest(b->hash, b->digest);
    if (r == NULL || r->n_values != 2 ||
        r->values[0]->kind_case != KVS__VALUE__KIND_INTEGER_VALUE ||
        r->values[1]->kind_case != KVS__VALUE__KIND_BINARY_VALUE ||
        r->values[1]->binary_value.len != KVS_HASH_LEN)
        why = "the final frame is not a snapshot's";
    else if ((uint64_t)r->values[0]->integer_value != b->got)
        why = "the stream's length differs from what the peer sent";
    else if (memcmp(r->values[1]->binary_value.data, b->digest, KVS_HASH_LEN) != 0)
        why = "the stream's checksum does not match: the copy is damaged";
    kvs__command_response__free_unpacked(r, NULL);
    return why;
}

/* Whether writing `n` more bytes of the copy would leave less than
 * DISK_RESERVE free on the file system of the shard's directory: the copy
 * stops there (why[] says so) rather than fill a disk that other shards,
 * and the log, write to. A peer's environment may simply be larger than
 * this disk (or the peer may send without end): either way a full disk
 * would fail every write on it until the part file is removed. statvfs
 * costs one system call per chunk (up to 1 MiB). */
static int disk_short(const boot_t *b, size_t n, char *why, size_t len)
{
    struct statvfs st;
    if (statvfs(b->dir, &st) != 0)
        return 0; /* cannot tell: the write will say */
    uint64_t avail = (uint64_t)st.f_bavail * st.f_frsize;
    if (avail >= n + DISK_RESERVE)
        return 0;
    snprintf(why, len,
             "the copy would leave less than %llu MiB free on the file system of %.300s "
             "(%llu MiB free, %llu bytes copied so far): it stops before it fills the disk; "
             "make room, or give this replica a larger disk",
             DISK_RESERVE >> 20, b->dir, (unsigned long long)(avail >> 20),
             (unsigned long long)b->got);
    return 1;
}

static void on_peer_frame(kvs_conn_t *c, const uint8_t *payload, size_t len)
{
    boot_t *b = c->data;
    kvs_answer_peek_t a;
    kvs_value_peek_t v;
    char why[600];
    if (b == NULL)
        return;
    if (!b->heard) /* it answers: from now on, what it sends is timed (MIN_PROGRESS) */
        uv_timer_start(&b->timer, on_stall, stall_ms(b), stall_ms(b));
    b->heard = 1;
    if (kvs_msg_answer_peek(payload, len, &a) && a.status == 206 && a.n_values == 1 &&
        kvs_msg_value_peek(a.value, a.value_len, &v) && v.kind == KVS__VALUE__KIND_BINARY_VALUE) {
        if (v.len == 0)
            return; /* no progress: the stall deadline runs on */
        if (disk_short(b, v.len, why, sizeof(why))) {
            if (b->short_need < b->got + v.len + DISK_RESERVE)
                b->short_need = b->got + v.len + DISK_RESERVE;
            attempt_over(b, why);
            return;
        }
        b->got += v.len;
        b->window_got += v.len;
        kvs_hash_update(b->hash, v.bytes, v.len);
        write_chunk(b, v.bytes, v.len);
        return;
    }
    uint32_t status = kvs_msg_answer_peek(payload, len, &a) ? a.status : 200;
    if (status == 200) {
        const char *bad = check_final(b, payload, len);
        if (bad != NULL) {
            attempt_over(b, bad);
            return;
        }
        b->verified = 1; /* installed once the last write is done */
        /* The peer owes nothing more; syncing a large copy may take long. */
        uv_timer_stop(&b->timer);
        kvs_conn_pause(c);
        if (!b->writing)
            install(b);
        return;
    }
    /* Busy sending another replica a snapshot: it has the data. Not a peer
     * that answers 503 because it is itself copying or starting (two new
     * replicas would wait for each other for ever). */
    if (status == KVS_STATUS_UNAVAILABLE && a.message != NULL &&
        memmem(a.message, a.message_len, NODE_SNAPSHOT_BUSY, strlen(NODE_SNAPSHOT_BUSY)) != NULL)
        b->busy = 1;
    snprintf(why, sizeof(why), "it answered %u: %.*s", status,
             (int)(a.message_len > 500 ? 500 : a.message_len),
             a.message ? (const char *)a.message : "");
    attempt_over(b, why);
}

static void on_peer_error(kvs_conn_t *c, int err)
{
    boot_t *b = c->data;
    if (b == NULL || b->verified)
        return;
    char why[400];
    if ((err == KVS_ETLS || err == KVS_ENOTLS) && kvs_conn_tls_error(c)[0] != '\0')
        snprintf(why, sizeof(why), "%s", kvs_conn_tls_error(c)); /* why, as the links say it */
    else
        snprintf(why, sizeof(why), "%s",
                 err == KVS_ECLOSED ? "the connection closed before the snapshot ended"
                                    : kvs_strerror(err));
    /* Cut off, not refused: a peer whose worker stopped or died mid-copy
     * (its node restarting it) has the data still, as one that cannot be
     * reached may. */
    if (err == KVS_ECLOSED) /* an EOF, a reset or a failed write: kvs_conn says it so */
        b->unreachable = 1;
    attempt_over(b, why);
}

/* Every close the attempt asks for clears c->data first; one it did not
 * ask for is kvs_conn's own, when it cannot go on (out of memory
 * encrypting or decrypting TLS): the attempt fails now rather than at the
 * stall timer (and b->conn does not outlive c). */
static void on_peer_closed(kvs_conn_t *c)
{
    boot_t *b = c->data;
    int current = b != NULL && b->conn == c;
    free(c);
    if (!current)
        return;
    b->conn = NULL;
    if (!b->verified) /* verified: the copy is whole, being installed */
        attempt_over(b, "the connection to the peer failed (see above)");
}

static int dial_next(boot_t *b, char *why, size_t len);

static void on_stall(uv_timer_t *t)
{
    boot_t *b = t->data;
    char why[100];
    if (!b->connected && b->conn != NULL && b->next_addr != NULL) {
        /* This address drops connection attempts: the name's next one
         * gets a first answer's time of its own. */
        b->conn->data = NULL;
        kvs_conn_close(b->conn);
        b->conn = NULL;
        char err[400];
        if (dial_next(b, err, sizeof(err)) != 0) {
            attempt_over(b, err);
            return;
        }
        uv_timer_start(&b->timer, on_stall, first_answer_ms(b), stall_ms(b));
        return;
    }
    if (b->lookup != NULL) { /* its name: a nameserver down; the peer may be fine */
        b->unreachable = 1;
        snprintf(why, sizeof(why), "the lookup of its name took longer than %llu ms",
                 (unsigned long long)b->lookup_ms);
    } else if (!b->heard) { /* not a peer that answered: one whose node is down, or that hangs */
        b->unreachable = 1;
        snprintf(why, sizeof(why), "no answer within %llu ms (%s)",
                 (unsigned long long)first_answer_ms(b),
                 b->connected ? "connected, nothing said" : "the connection did not complete");
    } else
        snprintf(why, sizeof(why), "it sent less than %u KiB of the copy in limits.frame_timeout",
                 MIN_PROGRESS / 1024);
    attempt_over(b, why);
}

/* Sends the one Snapshot request (after the TLS handshake, under TLS). */
static void send_request(boot_t *b, kvs_conn_t *c)
{
    /* Named: the sender records who copied (node_handoff). */
    if (node_ack_append_snapshot(&c->out, b->cfg->node_name, NULL) != 0) {
        attempt_over(b, "out of memory");
        return;
    }
    kvs_conn_queue(c);
}

static void on_peer_ready(kvs_conn_t *c)
{
    send_request(c->data, c);
}

static void on_connected(uv_connect_t *req, int status)
{
    dial_t *d = req->data;
    boot_t *b = d->conn.data;
    if (b == NULL)
        return; /* abandoned */
    char why[400];
    if (status != 0 || kvs_conn_start(&d->conn) != 0) {
        snprintf(why, sizeof(why), "cannot connect: %s", uv_strerror(status ? status : UV_ENOMEM));
        d->conn.data = NULL;
        kvs_conn_close(&d->conn);
        b->conn = NULL;
        /* The name's next address, if any (one that fails at once too) */
        if (b->next_addr != NULL && dial_next(b, why, sizeof(why)) == 0)
            return;
        b->unreachable = 1;
        attempt_over(b, why);
        return;
    }
    b->connected = 1;
    if (d->conn.tls == NULL)
        send_request(b, &d->conn);
}

/* Starts a connection to `sa`. Returns 0, or an error with `why` set
 * and *refused 1 if connecting to that address failed (0 if anything
 * else did). */
static int dial(boot_t *b, const struct sockaddr *sa, int *refused, char *why, size_t len)
{
    *refused = 0;
    dial_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        snprintf(why, len, "out of memory");
        return -ENOMEM;
    }
    kvs_conn_t *c = &d->conn;
    if (kvs_conn_init(c, b->loop, 0, (uint32_t)b->cfg->max_frame, on_peer_frame, on_peer_error,
                      on_peer_closed) != 0) { /* uv_tcp_init and uv_timer_init do not fail */
        snprintf(why, len, "cannot connect: out of memory");
        kvs_conn_close(c);
        return -ENOMEM;
    }
    c->data = b;
    b->conn = c;
    int rc = 0;
    if (b->tls != NULL) { /* as the router's links to remote workers do */
        c->on_ready = on_peer_ready;
        rc = kvs_conn_use_tls(c, b->tls, b->asked->addr.host);
        if (rc != 0) {
            snprintf(why, len, "cannot start TLS: %s", kvs_strerror(rc));
            return rc;
        }
    }
    d->connect.data = d;
    rc = uv_tcp_connect(&d->connect, &c->h.tcp, sa, on_connected); /* copies sa */
    if (rc != 0) {
        snprintf(why, len, "cannot connect: %s", uv_strerror(rc));
        b->unreachable = 1;
        *refused = 1;
    }
    return rc;
}

/* Connects to the next address the peer's name resolved to; one that
 * fails at once (an IPv6 address on a host without IPv6) passes to the
 * next. Returns 0, or an error with `why` set. */
static int dial_next(boot_t *b, char *why, size_t len)
{
    int rc = UV_EADDRNOTAVAIL, refused = 1;
    while (refused && b->next_addr != NULL) {
        const struct addrinfo *ai = b->next_addr;
        b->next_addr = ai->ai_next;
        if (b->conn != NULL) { /* the last address's, which failed */
            b->conn->data = NULL;
            kvs_conn_close(b->conn);
            b->conn = NULL;
        }
        rc = dial(b, ai->ai_addr, &refused, why, len);
    }
    return rc;
}

static void on_resolved(kvs_lookup_t *lk, void *data, int status, struct addrinfo *res)
{
    boot_t *b = data;
    if (b->lookup != lk) { /* not called once abandoned: never the case */
        uv_freeaddrinfo(res);
        return;
    }
    b->lookup = NULL;
    char why[400];
    if (status != 0 || res == NULL) {
        uv_freeaddrinfo(res);
        snprintf(why, sizeof(why), "cannot resolve %s: %s", b->asked->addr.host,
                 status != 0 ? uv_strerror(status) : "no address");
        b->unreachable = 1;
        attempt_over(b, why);
        return;
    }
    b->addrs = b->next_addr = res;
    uv_timer_start(&b->timer, on_stall, first_answer_ms(b), stall_ms(b)); /* the peer's time */
    if (dial_next(b, why, sizeof(why)) != 0)
        attempt_over(b, why);
}

/* Starts asking peers[i]: looks up its name (kvs_lookup, in a thread:
 * seconds, with a dead nameserver, while the loop answers waiting
 * clients 503; one given up on holds up nothing), then connects. Returns 0, or an error with `why`
 * set. */
static int ask_peer(boot_t *b, const kvs_replica_t *p, char *why, size_t len)
{
    b->connected = b->heard = 0;
    b->fd = open(b->part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (b->fd < 0) {
        snprintf(why, len, "cannot create %.200s: %s", b->part, strerror(errno));
        return -errno;
    }
    b->got = 0;
    b->verified = 0;
    b->abandon[0] = '\0';
    kvs_hash_free(b->hash);
    b->hash = kvs_hash_new();
    if (b->hash == NULL) {
        snprintf(why, len, "out of memory");
        return -ENOMEM;
    }
    struct sockaddr_storage ss;
    int rc;
    if (uv_ip4_addr(p->addr.host, p->addr.port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(p->addr.host, p->addr.port, (struct sockaddr_in6 *)&ss) == 0)
        return dial(b, (const struct sockaddr *)&ss, &rc, why, len);
    rc = kvs_lookup_start(b->loop, &p->addr, on_resolved, b, &b->lookup);
    if (rc != 0) {
        b->lookup = NULL;
        snprintf(why, len, "cannot resolve %s: %s", p->addr.host, uv_strerror(rc));
        b->unreachable = 1;
    }
    return rc;
}

/* After a copy stopped short of disk, the next round starts only once
 * the disk has more room than that copy needed, and only in the node's
 * turn: the shards of a new node copy at once, each checking free space on
 * its own, so on a tight disk they would all stop short, and again at
 * every retry. One at a time (an flock on data_dir/bootstrap-disk.lock,
 * held for the attempt), the copies that fit are made. A copy that can
 * never fit waits for ever, saying so every 30 s: starting empty would
 * serve its tables bound to no topic empty. */
static int disk_room(boot_t *b)
{
    struct statvfs st;
    uint64_t avail = 0;
    if (statvfs(b->dir, &st) == 0)
        avail = (uint64_t)st.f_bavail * st.f_frsize;
    if (avail >= b->short_need && b->disk_turn < 0) {
        char path[4300];
        snprintf(path, sizeof(path), "%s/bootstrap-disk.lock", b->cfg->data_dir);
        int fd = kvs_lock_file(path);
        if (fd >= 0) {
            b->disk_turn = fd;
            b->short_need = 0;
            return 1;
        }
        if (fd != -EBUSY && b->rounds % 30 == 0)
            kvs_warn("%s: %s (shard %u copies when it can take it)", path, strerror(-fd), b->shard);
    }
    if (b->rounds++ % 30 != 0)
        return 0;
    if (avail >= b->short_need)
        kvs_info("shard %u: waiting for another shard of this node to finish its copy (after a "
                 "disk shortage, copies go one at a time)",
                 b->shard);
    else
        kvs_info("shard %u: the last copy from %s needed %.1f MiB free and %.1f MiB are: "
                 "copying again once this disk has room (to start it empty instead: "
                 "cluster.bootstrap: replay)",
                 b->shard, b->peer, ceil(b->short_need / 104857.6) / 10,
                 floor(avail / 104857.6) / 10); /* never the same figure for both */
    return 0;
}

static void on_retry(uv_timer_t *t)
{
    next_peer(t->data);
}

/* Asks the next peer; when every one failed, starts empty, which is
 * correct for tables bound to topics only: a table bound to none lives
 * only in the peers' copies. So every peer is asked again a second later,
 * for as long as it takes, when one of them is busy sending another
 * replica a snapshot (it has the data), or when the shard moves in
 * (moving_in: its previous owners hold the only copies; a worker of one
 * restarting, or a copy cut off, must not make it start without them). A
 * membership change gives up at router.ready_timeout, and stops this
 * worker. So is it when a peer could not be reached (its worker
 * restarting, its node down, a replica wiped while its peer was): that
 * peer may hold rows no other has. A peer that answered, even 503 because
 * it is itself copying or starting (a new cluster's replicas, started
 * together), ends its share of the wait at once: it has no copy either.
 * The way out is cluster.bootstrap: replay. */
static void next_peer(boot_t *b)
{
    char why[400];
    if (b->next_peer == b->n_peers &&
        (b->busy || b->moving_in || b->unreachable || b->short_need > 0)) {
        /* The disk first: a move-in waits for room as much as a new replica. */
        const char *wait = b->busy             ? "as one is busy sending another"
                           : b->short_need > 0 ? "once this disk has room for the copy, one "
                                                 "shard of the node at a time"
                           : b->moving_in      ? "as the shard moves here from nodes that "
                                                 "hold its only copies"
                                               : "as one could not be reached and may hold "
                                                 "rows of tables bound to no topic that only "
                                                 "it has";
        if (b->rounds++ % 30 == 0)
            kvs_info("shard %u: no replica sent a snapshot (%s): asking again every %u ms, %s%s",
                     b->shard, b->last, BUSY_RETRY_MS, wait,
                     b->busy        ? ""
                     : b->moving_in ? " (to start it empty instead: cluster.bootstrap: replay, "
                                      "and remove moving-in from its directory)"
                                    : " (to start it empty instead: cluster.bootstrap: replay)");
        b->busy = 0;
        b->unreachable = 0;
        b->next_peer = 0;
        uv_timer_start(&b->timer, on_retry, BUSY_RETRY_MS, 0);
        return;
    }
    if (b->next_peer == 0 && b->short_need > 0 && !disk_room(b)) {
        uv_timer_start(&b->timer, on_retry, BUSY_RETRY_MS, 0);
        return;
    }
    while (b->next_peer < b->n_peers) {
        const kvs_replica_t *p = &b->peers[b->next_peer++];
        b->asked = p;
        b->peer = p->node;
        if (b->rounds % 30 == 0)
            kvs_info("shard %u has no data yet: copying a snapshot from node %s", b->shard,
                     p->node);
        if (ask_peer(b, p, why, sizeof(why)) == 0) {
            b->window_got = 0;
            uv_timer_start(&b->timer, on_stall,
                           b->lookup != NULL ? b->lookup_ms : first_answer_ms(b), stall_ms(b));
            return;
        }
        attempt_over(b, why); /* recurses into next_peer once cleaned up */
        return;
    }
    kvs_warn("no replica of shard %u could send a snapshot: starting empty; ingestion replays "
             "the bound topics from their beginning",
             b->shard);
    end_all(b);
}

void node_bootstrap_stop(node_bootstrap_t *b)
{
    kvs_info("signal during the snapshot copy: stopping");
    b->canceled = 1;
    atomic_store(&b->stop_check, 1);
    if (b->conn != NULL || b->fd >= 0)
        attempt_over(b, "the worker is stopping");
    else if (!b->done)
        end_all(b);
}

/* ---- entry -------------------------------------------------------------------------- */

/* KVS_TEST_SNAPSHOT_SYNC_DELAY_MS (kvs_testhook): a complete copy's sync
 * takes that much longer, for tests of a slow disk.
 * KVS_TEST_SNAPSHOT_END_DELAY_MS: the loop's thread sleeps that long once
 * the copy is installed, before the copy ends: a signal then is caught
 * and dispatched only after it (a test that no signal is lost there). */
static void read_test_hooks(boot_t *b)
{
    b->lookup_ms = LOOKUP_MS;
    if (kvs_test_hook_u64("KVS_TEST_SNAPSHOT_LOOKUP_MS", &b->lookup_ms))
        kvs_warn("test hook: a peer's name may take %llu ms to look up "
                 "(KVS_TEST_SNAPSHOT_LOOKUP_MS)",
                 (unsigned long long)b->lookup_ms);
    if (kvs_test_hook_u64("KVS_TEST_SNAPSHOT_END_DELAY_MS", &b->end_delay_ms))
        kvs_warn("test hook: the loop sleeps %llu ms once a copy is installed "
                 "(KVS_TEST_SNAPSHOT_END_DELAY_MS)",
                 (unsigned long long)b->end_delay_ms);
    if (kvs_test_hook_u64("KVS_TEST_SNAPSHOT_SYNC_DELAY_MS", &b->sync_delay_ms))
        kvs_warn("test hook: syncing a snapshot copy takes %llu ms more "
                 "(KVS_TEST_SNAPSHOT_SYNC_DELAY_MS)",
                 (unsigned long long)b->sync_delay_ms);
}

/* ---- the move's marker ------------------------------------------------------------ */

/* A shard that moves in (moving_in) is copied from its previous owners,
 * which the map a membership change starts this worker with names. The
 * map the node runs afterwards, and reads at a restart, names this node
 * alone: a node killed while the copy ran would start the shard empty,
 * without the rows of its tables bound to no topic, and its previous
 * owner could then be reloaded and retire them. So <shard_dir>/moving-in
 * names those owners, one line "from NODE PORT HOST" each, from before
 * the first request until a copy is in place; a worker that finds it, and
 * no peer in its map, asks them again (and never starts empty: its way
 * out is removing the file). */
#define MARKER_FILE "moving-in"

static void mark_moving_in(boot_t *b)
{
    size_t cap = 400 + (size_t)b->n_peers * (KVS_NODE_NAME_MAX + 280), n = 0;
    char *text = malloc(cap);
    int rc = text == NULL ? -ENOMEM : 0;
    if (rc == 0) {
        n = (size_t)snprintf(text, cap,
                             "# kvs: shard %u moves here from the nodes below, which hold its "
                             "only copies; until one of their copies is in place, this node's "
                             "worker asks them for it at every start (remove this file to start "
                             "the shard empty instead)\n",
                             b->shard);
        for (int i = 0; i < b->n_peers; i++)
            n += (size_t)snprintf(text + n, cap - n, "from %s %u %s\n", b->peers[i].node,
                                  b->peers[i].addr.port, b->peers[i].addr.host);
        rc = kvs_fs_write_synced(b->marker, b->dir, text, n, 0);
    }
    free(text);
    if (rc != 0)
        kvs_error("%s: cannot write: %s; if this node stops before the copy is in place, its "
                  "next start does not know where shard %u comes from",
                  b->marker, strerror(-rc), b->shard);
}

/* The peers a marker names (a move a stop cut off) go first in
 * b->peers, before the map's that are not among them. Returns how many it
 * names, 0 when there is no marker, or -1 when it cannot be read or names
 * none that can be asked. */
static int read_marker(boot_t *b)
{
    FILE *f = fopen(b->marker, "re");
    if (f == NULL)
        return errno == ENOENT ? 0 : -1;
    kvs_replica_t map[KVS_MAX_REPLICAS];
    int n_map = b->n_peers, named = 0;
    memcpy(map, b->peers, sizeof(map[0]) * (size_t)n_map);
    b->n_peers = 0;
    char line[600];
    while (b->n_peers < KVS_MAX_REPLICAS && fgets(line, sizeof(line), f) != NULL)
        if (node_ack_peer_line(line, "from", &b->peers[b->n_peers], b->names[b->n_peers]))
            b->n_peers++;
    fclose(f);
    named = b->n_peers;
    for (int i = 0; i < n_map && b->n_peers < KVS_MAX_REPLICAS; i++) {
        int dup = 0;
        for (int j = 0; j < named && !dup; j++)
            dup = strcmp(b->peers[j].node, map[i].node) == 0;
        if (!dup)
            b->peers[b->n_peers++] = map[i];
    }
    return named > 0 ? named : -1;
}

/* The peers to ask, or 0 when no copy is wanted. */
static int wanted(boot_t *b)
{
    struct stat st;
    snprintf(b->dir, sizeof(b->dir), "%s/shard-%u", b->cfg->data_dir, b->shard);
    snprintf(b->final, sizeof(b->final), "%s/data.mdb", b->dir);
    snprintf(b->part, sizeof(b->part), "%s/data.mdb.part", b->dir);
    snprintf(b->marker, sizeof(b->marker), "%s/" MARKER_FILE, b->dir);
    if (stat(b->final, &st) == 0) {
        unlink(b->marker); /* the copy is in place: a stop came before its removal */
        return 0;
    }
    node_ack_void(b->dir); /* owed for a copy a stop kept from its place */
    if (b->cfg->bootstrap != KVS_BOOTSTRAP_SNAPSHOT || b->cfg->n_nodes == 0)
        return 0;
    kvs_replica_t all[KVS_MAX_REPLICAS];
    int n = kvs_cluster_replicas(b->cfg, b->shard, all, KVS_MAX_REPLICAS, NULL, 0);
    for (int i = 0; i < n; i++)
        if (!all[i].local)
            b->peers[b->n_peers++] = all[i];
    /* A membership change starts the worker of a shard that becomes local
     * with the map the node serves until the switch, in which this node
     * is not a replica of it: the peers are its owners until now. */
    b->moving_in = b->n_peers > 0 && b->n_peers == n;
    if (!b->moving_in) { /* a move a stop cut off: its previous owners first, and wait for one */
        int got = read_marker(b);
        if (got > 0)
            kvs_warn("shard %u has no data, and %s says it was moving here from node %s%s: "
                     "copying from its previous owners again",
                     b->shard, b->marker, b->peers[0].node, got > 1 ? " and others" : "");
        b->moving_in = b->from_marker = got > 0;
        if (got < 0)
            return -1;
    }
    return b->n_peers;
}

static int start(boot_t *b, const kvs_addr_t *addrs, size_t n_addrs, kvs_tls_ctx_t *tls)
{
    kvs_conn_limits_t limits;
    kvs_conn_limits_from_config(&limits, b->cfg);
    if (kvs_conn_group_init(&b->waiting, b->loop, &limits, "client") != 0)
        return -ENOMEM; /* a timer that cannot start: libuv is out of memory */
    uv_timer_init(b->loop, &b->timer);
    b->timer.data = b;
    for (size_t i = 0; i < n_addrs && i < 2; i++) {
        kvs_listener_t *l = &b->listeners[b->n_listeners];
        if (kvs_listen(b->loop, &addrs[i], l, on_waiter) != 0)
            continue; /* the worker's server will say why, when it binds */
        l->handle.data = b;
        b->listener_tls[b->n_listeners] = addrs[i].is_unix ? NULL : tls;
        b->n_listeners++;
    }
    next_peer(b);
    return 0;
}

int node_bootstrap_run(uv_loop_t *loop, const kvs_config_t *cfg, uint32_t shard,
                       const kvs_addr_t *addrs, size_t n_addrs, kvs_tls_ctx_t *tls,
                       node_bootstrap_t **running, char *err, size_t errlen)
{
    boot_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return -ENOMEM;
    kvs_list_init(&b->waiters);
    b->loop = loop;
    b->cfg = cfg;
    b->shard = shard;
    b->fd = -1;
    b->disk_turn = -1;
    kvs_schema_placement(b->placement, sizeof(b->placement), cfg->shards, cfg->partitions);
    int want = wanted(b);
    if (want <= 0) {
        if (want < 0)
            snprintf(err, errlen,
                     "%s cannot be read, or names no node shard %u was moving here from: the "
                     "shard is not started without the rows its previous owners hold; remove "
                     "the file to start it empty",
                     b->marker, shard);
        free(b);
        return want < 0 ? KVS_EDAMAGED : 0;
    }
    char lock[4300];
    int lock_fd = -1, rc = kvs_mkdir_p(b->dir);
    snprintf(lock, sizeof(lock), "%s/kvs.lock", b->dir);
    if (rc == 0 && (lock_fd = kvs_lock_file(lock)) < 0)
        rc = lock_fd;
    b->wbuf = malloc(cfg->max_frame);
    if (rc == 0 && b->wbuf == NULL)
        rc = -ENOMEM;
    if (rc == 0 && cfg->tls_link.enabled) {
        char err[512];
        rc =
            kvs_conn_tls_from_config(cfg, &cfg->tls_link, "tls.link", 0, &b->tls, err, sizeof(err));
        if (rc != 0)
            kvs_error("snapshot copy: %s", rc == KVS_ECONFIG ? err : kvs_strerror(rc));
    }
    if (rc == 0) {
        read_test_hooks(b);
        unlink(b->part); /* a copy a crash interrupted */
        if (b->moving_in && !b->from_marker)
            mark_moving_in(b);
        rc = start(b, addrs, n_addrs, tls);
        if (rc == 0) {
            *running = b; /* node_bootstrap_stop may be called now */
            uv_run(loop, UV_RUN_DEFAULT);
            *running = NULL;
        }
    }
    rc = rc != 0 ? rc : b->canceled ? -ECANCELED : 0;
    if (lock_fd >= 0)
        close(lock_fd);
    uv_freeaddrinfo(b->addrs); /* NULL but for a loop that could not run */
    kvs_hash_free(b->hash);
    kvs_tls_ctx_free(b->tls);
    free(b->wbuf);
    free(b);
    return rc;
}
