/*
 * kvs_conn: one framed connection over a libuv stream (TCP or unix socket).
 *
 * Reading: bytes go straight into the frame decoder's buffer; every complete
 * frame is handed to frame_cb, in order, inside the read callback. The
 * payload pointer is valid only during the callback.
 *
 * Writing: the owner appends encoded frames to `out` (kvs_msg_append) and
 * calls kvs_conn_flush, typically once per loop turn for every connection
 * that got output (kvs_flusher does that bookkeeping), so many responses
 * leave in one system call. At most one uv_write is in flight per
 * connection; bytes appended meanwhile wait in `out` and go with the next.
 *
 * Back-pressure: when queued output exceeds `high_water`, reading stops
 * until the peer has taken it, so a client that pipelines without reading
 * cannot make the server buffer without bound.
 *
 * Lifetime: kvs_conn_close starts an asynchronous close; close_cb runs once
 * the handle is closed, and only then may the owner free the memory. After
 * close no callback but close_cb runs.
 */
#ifndef KVS_CONN_H
#define KVS_CONN_H

#include "kvs_addr.h"
#include "kvs_buf.h"
#include "kvs_frame.h"

#include <uv.h>

#define KVS_CONN_LINGER_MS 2000

typedef struct kvs_conn_s kvs_conn_t;
typedef struct kvs_flusher_s kvs_flusher_t;

/* A complete frame arrived. The owner may append output, pause, or close. */
typedef void (*kvs_conn_frame_cb)(kvs_conn_t *c, const uint8_t *payload, size_t len);

/* Either the stream broke a framing rule (err = KVS_ETOOBIG, with the
 * announced length in c->dec.bad_len, or KVS_EPROTO): reading has stopped
 * for good; the owner appends its last response(s) and closes (usually
 * kvs_conn_close_after_flush) once it owes the peer nothing more; or
 * the peer closed its side (err = KVS_ECLOSED): reading has stopped and the
 * owner closes (usually kvs_conn_close_after_flush) once nothing it owes the
 * peer is pending. Without an on_error callback both close after flush. */
typedef void (*kvs_conn_error_cb)(kvs_conn_t *c, int err);

/* The handle is closed; the owner may free the connection now. */
typedef void (*kvs_conn_close_cb)(kvs_conn_t *c);

struct kvs_conn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    kvs_frame_dec_t dec;
    kvs_buf_t out;  /* queued, not yet handed to the socket */
    kvs_buf_t wbuf; /* handed to the in-flight uv_write */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    uv_timer_t linger; /* bounds a lingering close */
    int open_handles;  /* stream + timer; on_close runs when both closed */
    size_t high_water; /* pause reading above this much queued output */
    unsigned reading : 1, writing : 1, closing : 1, close_after_flush : 1, paused : 1,
        in_frames : 1, eof : 1, broken : 1, lingering : 1, peer_eof : 1;
    kvs_conn_frame_cb on_frame;
    kvs_conn_error_cb on_error;
    kvs_conn_close_cb on_close;
    kvs_flusher_t *flusher; /* optional */
    kvs_conn_t *flush_next; /* flusher's intrusive list */
    int queued;             /* on the flusher's list */
    void *data;             /* the owner's */
};

/* Initializes `c` for `loop`. is_unix picks a pipe or a TCP handle. The
 * callbacks may be NULL except on_close. Returns 0 or a uv error. */
int kvs_conn_init(kvs_conn_t *c, uv_loop_t *loop, int is_unix, uint32_t max_frame,
                  kvs_conn_frame_cb on_frame, kvs_conn_error_cb on_error,
                  kvs_conn_close_cb on_close);

/* Accepts a pending connection from `server` into an initialized `c` and
 * starts reading. On failure the caller must still kvs_conn_close(c). */
int kvs_conn_accept(kvs_conn_t *c, uv_stream_t *server);

/* Starts reading on a connected stream (after a uv_connect). */
int kvs_conn_start(kvs_conn_t *c);

/* Hands queued output to the socket (uv_try_write, then uv_write for the
 * rest). Safe to call at any time; a no-op while closing. */
void kvs_conn_flush(kvs_conn_t *c);

/* Puts `c` on its flusher's list so it is flushed at the end of this loop
 * turn; without a flusher, flushes now. */
void kvs_conn_queue(kvs_conn_t *c);

/* Stops reading new bytes for good; frames already buffered are still
 * delivered (unless paused). For draining at shutdown. */
void kvs_conn_stop_reading(kvs_conn_t *c);

/* Stops delivering frames (and reading) until kvs_conn_resume. Frames
 * already buffered are kept. */
void kvs_conn_pause(kvs_conn_t *c);

/* Resumes delivery: buffered frames are delivered before this returns. */
void kvs_conn_resume(kvs_conn_t *c);

/* Closes once queued output is written (or at once if there is none).
 * No more frames are delivered. Unless the peer already sent EOF, the close
 * lingers (nginx style): the sending side is shut down and input is read
 * and discarded until the peer closes or KVS_CONN_LINGER_MS pass, so that
 * unread pipelined requests do not make the kernel reset the connection
 * and destroy answers the peer has not read yet. */
void kvs_conn_close_after_flush(kvs_conn_t *c);

/* Closes now; queued output is dropped. close_cb runs later. Idempotent. */
void kvs_conn_close(kvs_conn_t *c);

/* Bytes queued or in flight. */
size_t kvs_conn_backlog(const kvs_conn_t *c);

/* ---- flusher: flush every queued connection once per loop turn -------- */

typedef void (*kvs_flusher_cb)(kvs_flusher_t *f);

struct kvs_flusher_s {
    uv_check_t check;
    kvs_conn_t *head;
    kvs_flusher_cb before; /* runs before flushing, e.g. to commit a batch */
    void *data;
};

/* Starts a check handle on `loop` that, after each poll, calls `before`
 * (if set) and then flushes every connection queued with kvs_conn_queue. */
int kvs_flusher_init(kvs_flusher_t *f, uv_loop_t *loop, kvs_flusher_cb before, void *data);

/* Flushes what is queued right now (also used by the check handle). */
void kvs_flusher_run(kvs_flusher_t *f);

/* Stops and closes the check handle (memory of `f` must live until the loop
 * ran once more, as with any uv handle). */
void kvs_flusher_close(kvs_flusher_t *f);

/* Removes `c` from its flusher's list (called by kvs_conn_close). */
void kvs_flusher_forget(kvs_flusher_t *f, kvs_conn_t *c);

/* ---- listening -------------------------------------------------------- */

typedef union kvs_listener_u {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
} kvs_listener_t;

/* Resolves a TCP address (numeric or a name) synchronously: only at
 * start-up (binding listeners, before any client is served) and in tools;
 * anything that resolves while serving uses uv_getaddrinfo with a callback
 * (router_link). Returns 0 or a uv error. */
int kvs_resolve(uv_loop_t *loop, const kvs_addr_t *a, struct sockaddr_storage *out);

/* Binds and listens on `addr` (TCP with SO_REUSEADDR, or a unix socket whose
 * stale file is removed first). `l->handle.data` is left for the caller.
 * Returns 0 or a uv error; on error the handle is closed (no callback). */
int kvs_listen(uv_loop_t *loop, const kvs_addr_t *addr, kvs_listener_t *l, uv_connection_cb cb);

#endif
