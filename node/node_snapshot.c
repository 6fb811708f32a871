/*
 * node_snapshot: Snapshot's sender (see kvs.proto for the stream).
 *
 * The copy: LMDB's compacted hot copy (node_store_view_copy:
 * mdb_env_copyfd2, MDB_CP_COMPACT) runs in libuv's thread pool and writes
 * into a pipe; it reads one consistent snapshot, so the worker keeps
 * serving and writing, and the copy holds exactly the Kafka offsets of the
 * data in it. The loop reads the pipe's other end and turns each read into
 * one chunk frame (status 206, the bytes as values[0].binary_value, at
 * most limits.max_frame) on the receiver's connection, hashing every byte
 * (XXH3-128); when the pipe ends and the copy reported success, a final
 * frame carries the total and the hash, and the connection is closed once
 * it is written.
 *
 * Memory stays bounded: while the connection owes the receiver a quarter
 * of its output limit (its high-water mark) the pipe is not read, so the
 * copy thread blocks in write(); a check handle (run after each poll,
 * never keeping the loop awake) reads on once the receiver took enough.
 * A receiver that takes less than MIN_PROGRESS bytes in `stall_ms` of
 * being waited for (a stall, or a trickle of a few bytes at a time: as
 * node_bootstrap asks of a sender) is given up, by the connection's own
 * rule (kvs_conn_set_min_progress), set as the stream starts and kept to
 * its end: the copy holds a read snapshot, which keeps LMDB from reusing
 * pages and the map from growing (node_store views), so it must not last
 * for ever, and a client slot, and up to the high-water mark of output,
 * must not wait for ever either. The clock runs only while output waits
 * for the receiver, not while the stream waits for the copy thread (this
 * worker's own disk).
 *
 * Ending early: when the connection closes (the receiver left, a stall,
 * shutdown), the pipe's read end is closed; the copy thread's next write
 * fails with EPIPE (SIGPIPE is ignored in kvs-node), LMDB stops, and the
 * work's completion releases the view. One snapshot at a time per worker.
 */
#include "node_snapshot.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_hash.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "kvs_resp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK_MAX (1u << 20) /* bytes per chunk frame, at most (and below max_frame) */
#define CHUNK_OVERHEAD 32    /* a chunk frame's own bytes beside the data */
/* What a receiver must take per stall_ms of being waited for. */
#define MIN_PROGRESS (64u * 1024u)

struct node_snapshot_s {
    uv_loop_t *loop;
    node_store_t *store;
    uint32_t shard;
    size_t chunk;
    uint64_t stall_ms;
    int active; /* a snapshot is under way (until the copy and the pipe both ended) */
    int keep;   /* its receiver acknowledges: the connection outlives the stream */
    int due;    /* started, its copy not yet: it waits for the turn's commit */
    node_snapshot_done_cb done_cb;
    void *done_arg;
    kvs_conn_t *conn; /* the receiver; NULL once gone */
    node_store_view_t *view;
    uv_work_t work;
    int work_busy;
    int copy_rc; /* the copy thread's result */
    int wfd;     /* the pipe's write end: the copy thread's, closed by it */
    uv_pipe_t pipe;
    int pipe_open;
    uv_check_t check;
    int checking;
    kvs_hash_t *hash;
    uint64_t total;
    uint8_t digest[KVS_HASH_LEN]; /* the final frame's checksum */
    uint8_t *rbuf;
};

node_snapshot_t *node_snapshot_new(uv_loop_t *loop, node_store_t *store, uint32_t shard,
                                   size_t max_frame, uint64_t stall_ms)
{
    node_snapshot_t *sn = calloc(1, sizeof(*sn));
    if (sn == NULL)
        return NULL;
    sn->loop = loop;
    sn->store = store;
    sn->shard = shard;
    sn->chunk = max_frame - CHUNK_OVERHEAD < CHUNK_MAX ? max_frame - CHUNK_OVERHEAD : CHUNK_MAX;
    sn->stall_ms = stall_ms;
    sn->wfd = -1;
    uv_check_init(loop, &sn->check);
    uv_unref((uv_handle_t *)&sn->check);
    sn->check.data = sn;
    return sn;
}

void node_snapshot_set_done(node_snapshot_t *sn, node_snapshot_done_cb cb, void *arg)
{
    sn->done_cb = cb;
    sn->done_arg = arg;
}

int node_snapshot_busy(const node_snapshot_t *sn)
{
    return sn != NULL && sn->active;
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Appends CommandResponse {status: 206, values: [{binary_value: p[0..n)]}]
 * as one frame, written by hand: it is the bulk of the stream. */
static int append_chunk(kvs_buf_t *out, const uint8_t *p, size_t n)
{
    size_t value = 1 + varint_len(n) + n;            /* Value: field 2, bytes */
    size_t body = 3 + 1 + varint_len(value) + value; /* status 206; values: field 3 */
    uint8_t head[KVS_FRAME_HEADER + 32], *q = head + KVS_FRAME_HEADER;
    if (kvs_buf_reserve(out, KVS_FRAME_HEADER + body) != 0)
        return -ENOMEM;
    kvs_frame_put_header(head, (uint32_t)body);
    *q++ = 0x08; /* status */
    q = put_varint(q, 206);
    *q++ = 0x1a; /* values */
    q = put_varint(q, value);
    *q++ = 0x12; /* binary_value */
    q = put_varint(q, n);
    kvs_buf_put(out, head, (size_t)(q - head));
    kvs_buf_put(out, p, n);
    return 0;
}

/* ---- the end -------------------------------------------------------------------- */

static void on_check(uv_check_t *h);

/* The copy and the pipe have both ended: the final frame (if anyone
 * listens), then everything is released. */
static void finish(node_snapshot_t *sn)
{
    if (sn->work_busy || sn->pipe_open || !sn->active || sn->due)
        return;
    kvs_conn_t *c = sn->conn;
    if (c != NULL && sn->copy_rc == 0) {
        kvs_resp_t r;
        uint8_t digest[KVS_HASH_LEN], enc[KVS_HASH_LEN + 12];
        kvs_hash_digest(sn->hash, digest);
        memcpy(sn->digest, digest, KVS_HASH_LEN);
        kvs_resp_begin(&r, &c->out);
        kvs_resp_status(&r, KVS_STATUS_OK);
        kvs_resp_message(&r, "snapshot of shard %u: %llu bytes", sn->shard,
                         (unsigned long long)sn->total);
        kvs_resp_value(&r, enc, kvs_value_encode_int(enc, (int64_t)sn->total));
        kvs_resp_value(&r, enc, kvs_value_encode_bytes(enc, 0, digest, KVS_HASH_LEN));
        kvs_resp_end(&r);
        kvs_info("snapshot sent to %s: %llu bytes", c->peer, (unsigned long long)sn->total);
    } else if (c != NULL) {
        kvs_msg_append_status(&c->out, KVS_STATUS_INTERNAL,
                              "the snapshot of shard %u failed after %llu bytes: %s; discard it",
                              sn->shard, (unsigned long long)sn->total, kvs_strerror(sn->copy_rc));
        kvs_error("snapshot to %s failed: %s", c->peer, kvs_strerror(sn->copy_rc));
    }
    /* Nothing more follows what is queued; the pace rule set at the start
     * stays with the connection until the receiver has taken it all. */
    int delivered = c != NULL && sn->copy_rc == 0;
    kvs_conn_t *kept = delivered && sn->keep && sn->done_cb != NULL ? c : NULL;
    if (c != NULL && kept == NULL)
        kvs_conn_close_after_flush(c);
    else if (kept != NULL)
        kvs_conn_queue(c); /* the final frame goes out; the connection stays */
    if (sn->done_cb != NULL)
        sn->done_cb(sn->done_arg, kept, delivered ? sn->digest : NULL);
    node_store_view_close(sn->view);
    sn->view = NULL;
    kvs_hash_free(sn->hash);
    sn->hash = NULL;
    sn->active = 0;
    sn->conn = NULL;
}

static void on_pipe_closed(uv_handle_t *h)
{
    node_snapshot_t *sn = h->data;
    sn->pipe_open = 0;
    finish(sn);
}

static void close_pipe(node_snapshot_t *sn)
{
    if (sn->pipe_open && !uv_is_closing((uv_handle_t *)&sn->pipe))
        uv_close((uv_handle_t *)&sn->pipe, on_pipe_closed);
    if (sn->checking) {
        uv_check_stop(&sn->check);
        sn->checking = 0;
    }
}

static void copy_work(uv_work_t *w)
{
    node_snapshot_t *sn = w->data;
    sn->copy_rc = node_store_view_copy(sn->view, sn->wfd);
    close(sn->wfd); /* the reader sees the end */
    sn->wfd = -1;
}

static void copy_done(uv_work_t *w, int status)
{
    node_snapshot_t *sn = w->data;
    sn->work_busy = 0;
    if (status != 0 && sn->copy_rc == 0)
        sn->copy_rc = status;
    finish(sn);
}

/* ---- the pipe -------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    node_snapshot_t *sn = h->data;
    (void)hint;
    *buf = uv_buf_init((char *)sn->rbuf, (unsigned)sn->chunk);
}

/* Past the connection's high-water mark: stop reading the pipe (the copy
 * thread then waits in write) until the receiver took enough. */
static void hold_back(node_snapshot_t *sn)
{
    uv_read_stop((uv_stream_t *)&sn->pipe);
    sn->checking = 1;
    uv_check_start(&sn->check, on_check);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    node_snapshot_t *sn = s->data;
    (void)buf;
    if (n == 0)
        return;
    if (n < 0) { /* UV_EOF: the copy ended (its result comes with the work) */
        close_pipe(sn);
        return;
    }
    kvs_hash_update(sn->hash, sn->rbuf, (size_t)n);
    sn->total += (uint64_t)n;
    if (sn->conn == NULL)
        return;
    if (append_chunk(&sn->conn->out, sn->rbuf, (size_t)n) != 0) {
        kvs_error("snapshot to %s: out of memory; closing it", sn->conn->peer);
        kvs_conn_close(sn->conn); /* node_snapshot_gone follows */
        return;
    }
    kvs_conn_queue(sn->conn);
    if (sn->conn != NULL && kvs_conn_backlog(sn->conn) >= sn->conn->high_water)
        hold_back(sn);
}

static void on_check(uv_check_t *h)
{
    node_snapshot_t *sn = h->data;
    if (sn->conn == NULL || !sn->pipe_open) {
        uv_check_stop(h);
        sn->checking = 0;
        return;
    }
    /* The pipe is read on once the connection's own backlog is down
     * (memory: at most the high-water mark waits in this process). */
    if (kvs_conn_backlog(sn->conn) < sn->conn->high_water / 2) {
        uv_check_stop(h);
        sn->checking = 0;
        uv_read_start((uv_stream_t *)&sn->pipe, on_alloc, on_read);
    }
}

/* ---- API -------------------------------------------------------------------------- */

/* Opens the view, the pipe and the read side. Returns 0 or an error (then
 * nothing is left open). */
static int open_stream(node_snapshot_t *sn)
{
    int fds[2];
    if (sn->rbuf == NULL && (sn->rbuf = malloc(sn->chunk)) == NULL)
        return -ENOMEM;
    if ((sn->hash = kvs_hash_new()) == NULL)
        return -ENOMEM;
    int rc = node_store_view_open(sn->store, NULL, &sn->view);
    if (rc != 0)
        goto fail;
    if (pipe2(fds, O_CLOEXEC) != 0) {
        rc = -errno;
        goto fail;
    }
    uv_pipe_init(sn->loop, &sn->pipe, 0);
    sn->pipe.data = sn;
    sn->pipe_open = 1;
    if ((rc = uv_pipe_open(&sn->pipe, fds[0])) != 0 ||
        (rc = uv_read_start((uv_stream_t *)&sn->pipe, on_alloc, on_read)) != 0) {
        close(fds[1]);
        uv_close((uv_handle_t *)&sn->pipe, on_pipe_closed);
        return rc; /* the view and hash are released when the pipe is closed */
    }
    sn->wfd = fds[1];
    return 0;
fail:
    node_store_view_close(sn->view);
    sn->view = NULL;
    kvs_hash_free(sn->hash);
    sn->hash = NULL;
    return rc;
}

int node_snapshot_start(node_snapshot_t *sn, kvs_conn_t *conn, int keep, kvs_buf_t *out)
{
    if (sn->active) {
        int rc = kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE,
                                       "shard %u " NODE_SNAPSHOT_BUSY " (one at a time); "
                                       "retry shortly, or ask another replica",
                                       sn->shard);
        return rc == 0 ? 1 : rc;
    }
    sn->total = 0;
    sn->copy_rc = 0;
    sn->conn = conn;
    sn->keep = keep;
    sn->active = 1;
    int rc = open_stream(sn);
    if (rc == 0) {
        if (sn->stall_ms > 0)
            kvs_conn_set_min_progress(conn, MIN_PROGRESS, sn->stall_ms,
                                      "its snapshot stream is not being read "
                                      "(limits.frame_timeout)");
        sn->due = 1; /* node_snapshot_turn_end starts the copy */
        kvs_info("sending a snapshot of shard %u to %s", sn->shard, conn->peer);
        return 0;
    }
    sn->active = sn->pipe_open; /* a pipe being closed still finishes it */
    if (!sn->active)
        sn->conn = NULL;
    if (sn->active) {
        sn->copy_rc = rc;
        return 0;
    }
    rc = kvs_msg_append_status(out, KVS_STATUS_INTERNAL, "cannot start a snapshot of shard %u: %s",
                               sn->shard, kvs_strerror(rc));
    return rc == 0 ? 1 : rc;
}

void node_snapshot_turn_end(node_snapshot_t *sn)
{
    if (sn == NULL || !sn->due)
        return;
    sn->due = 0;
    int rc = sn->conn == NULL ? -ECANCELED : 0; /* the receiver left meanwhile */
    if (rc == 0) {
        sn->work.data = sn;
        rc = uv_queue_work(sn->loop, &sn->work, copy_work, copy_done);
    }
    if (rc == 0) {
        sn->work_busy = 1;
        return;
    }
    close(sn->wfd);
    sn->wfd = -1;
    sn->copy_rc = rc;
    close_pipe(sn); /* finish() answers the error, if anyone listens */
    finish(sn);     /* now, if the pipe had closed already */
}

void node_snapshot_gone(node_snapshot_t *sn, kvs_conn_t *conn)
{
    if (sn == NULL || sn->conn != conn)
        return;
    sn->conn = NULL;
    close_pipe(sn); /* the copy thread's next write fails: it ends */
}

void node_snapshot_free(node_snapshot_t *sn)
{
    if (sn == NULL)
        return;
    if (sn->wfd >= 0) /* a copy that never started */
        close(sn->wfd);
    node_store_view_close(sn->view); /* its copy never started: finish never ran */
    free(sn->rbuf);
    kvs_hash_free(sn->hash);
    free(sn);
}
