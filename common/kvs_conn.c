/*
 * kvs_conn: framed connection, per-turn write batching and back-pressure.
 *
 * Invariants:
 *  - At most one uv_write is in flight (`writing`); its bytes live in
 *    `wbuf`, which nobody touches until the write callback. Output appended
 *    meanwhile waits in `out`; the write callback sends it. So bytes leave
 *    in exactly the order they were appended.
 *  - `in_frames` is set while frames are being delivered; pause, resume and
 *    close requested from inside a frame callback take effect when the
 *    callback returns, never under the delivering loop's feet.
 *  - Reading is on iff not paused, not closing, not over the high-water mark.
 *  - The conn's memory is the owner's; it is released only from on_close,
 *    which runs after libuv is done with the handle (and after a cancelled
 *    write's callback).
 */
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_log.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_SIZE 65536
#define DEFAULT_HIGH_WATER (16u * 1024u * 1024u)

static void conn_update_reading(kvs_conn_t *c);
static void conn_linger(kvs_conn_t *c);
static void conn_deliver(kvs_conn_t *c);

int kvs_conn_init(kvs_conn_t *c, uv_loop_t *loop, int is_unix, uint32_t max_frame,
                  kvs_conn_frame_cb on_frame, kvs_conn_error_cb on_error,
                  kvs_conn_close_cb on_close)
{
    memset(c, 0, sizeof(*c));
    kvs_frame_dec_init(&c->dec, max_frame);
    kvs_buf_init(&c->out);
    kvs_buf_init(&c->wbuf);
    c->high_water = DEFAULT_HIGH_WATER;
    if (c->high_water < 2u * max_frame)
        c->high_water = 2u * max_frame;
    c->on_frame = on_frame;
    c->on_error = on_error;
    c->on_close = on_close;
    int rc = is_unix ? uv_pipe_init(loop, &c->h.pipe, 0) : uv_tcp_init(loop, &c->h.tcp);
    c->h.handle.data = c;
    if (rc != 0)
        return rc;
    c->open_handles = 1;
    rc = uv_timer_init(loop, &c->linger);
    c->linger.data = c;
    if (rc == 0)
        c->open_handles = 2;
    return rc;
}

size_t kvs_conn_backlog(const kvs_conn_t *c)
{
    return c->out.len + c->wbuf.len;
}

/* ---- reading ---------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    kvs_conn_t *c = h->data;
    uint8_t *base;
    size_t len;
    (void)suggested;
    if (kvs_frame_dec_space(&c->dec, READ_SIZE, &base, &len) != 0) {
        buf->base = NULL; /* libuv reports UV_ENOBUFS to on_read */
        buf->len = 0;
        return;
    }
    buf->base = (char *)base;
    buf->len = len;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    kvs_conn_t *c = s->data;
    (void)buf;
    if (c->lingering) { /* discard input until the peer closes */
        if (n < 0)
            kvs_conn_close(c);
        return;
    }
    if (n > 0) {
        kvs_frame_dec_commit(&c->dec, (size_t)n);
        conn_deliver(c);
        return;
    }
    if (n == 0)
        return; /* EAGAIN */
    if (n != UV_EOF)
        kvs_debug("connection read error: %s", uv_strerror((int)n));
    /* Peer closed its side (or broke). Requests already received still get
     * their answers (a half-closed peer reads them; for a vanished one the
     * write fails and we close then). The owner decides when to close,
     * since only it knows what is still pending. */
    c->eof = 1;
    c->peer_eof = 1;
    conn_update_reading(c);
    if (c->on_error != NULL)
        c->on_error(c, KVS_ECLOSED);
    else
        kvs_conn_close_after_flush(c);
}

/* The stream cannot be resynchronized: stop reading and delivering, and let
 * the owner answer what it still owes before it closes. */
static void conn_frame_error(kvs_conn_t *c, int err)
{
    c->eof = 1;
    c->broken = 1;
    conn_update_reading(c);
    if (c->on_error != NULL)
        c->on_error(c, err);
    else
        kvs_conn_close_after_flush(c);
}

/* Hands every complete buffered frame to on_frame, until paused or closed. */
static void conn_deliver(kvs_conn_t *c)
{
    if (c->in_frames)
        return; /* the outer loop picks up the rest */
    c->in_frames = 1;
    while (!c->paused && !c->closing && !c->close_after_flush && !c->broken) {
        const uint8_t *p;
        size_t len;
        int rc = kvs_frame_dec_next(&c->dec, &p, &len);
        if (rc == 0)
            break;
        if (rc < 0) {
            conn_frame_error(c, rc);
            break;
        }
        c->on_frame(c, p, len);
    }
    c->in_frames = 0;
    conn_update_reading(c);
}

static void conn_update_reading(kvs_conn_t *c)
{
    if (c->closing || c->lingering)
        return;
    int want =
        !c->paused && !c->close_after_flush && !c->eof && kvs_conn_backlog(c) < c->high_water;
    if (want && !c->reading) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
            c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = 0;
    }
}

int kvs_conn_accept(kvs_conn_t *c, uv_stream_t *server)
{
    int rc = uv_accept(server, &c->h.stream);
    if (rc != 0)
        return rc;
    return kvs_conn_start(c);
}

int kvs_conn_start(kvs_conn_t *c)
{
    if (c->h.handle.type == UV_TCP)
        uv_tcp_nodelay(&c->h.tcp, 1);
    int rc = uv_read_start(&c->h.stream, on_alloc, on_read);
    if (rc == 0)
        c->reading = 1;
    return rc;
}

void kvs_conn_stop_reading(kvs_conn_t *c)
{
    c->eof = 1; /* as if the peer had finished sending */
    conn_update_reading(c);
}

void kvs_conn_pause(kvs_conn_t *c)
{
    c->paused = 1;
    conn_update_reading(c);
}

void kvs_conn_resume(kvs_conn_t *c)
{
    if (!c->paused)
        return;
    c->paused = 0;
    conn_deliver(c);
}

/* ---- writing ---------------------------------------------------------- */

/* A write failed: the peer is gone. The owner hears of it as an EOF (so
 * a router link fails its pending requests now, not at their deadline),
 * then the connection closes without lingering. */
static void conn_write_failed(kvs_conn_t *c, int status)
{
    if (c->closing)
        return;
    kvs_debug("connection write error: %s", uv_strerror(status));
    c->eof = 1;
    c->peer_eof = 1;
    c->out.len = 0;
    if (c->on_error != NULL && !c->broken)
        c->on_error(c, KVS_ECLOSED);
    kvs_conn_close(c);
}

static void on_write(uv_write_t *req, int status)
{
    kvs_conn_t *c = req->data;
    c->writing = 0;
    c->wbuf.len = 0;
    if (status != 0) {
        if (status != UV_ECANCELED)
            conn_write_failed(c, status);
        else
            kvs_conn_close(c);
        return;
    }
    /* Never flush from here when a flusher owns this connection: output
     * appended earlier in this loop turn may wait on the flusher's `before`
     * step (e.g. a commit) and must not leave ahead of it. */
    kvs_conn_queue(c);
    conn_update_reading(c);
}

void kvs_conn_flush(kvs_conn_t *c)
{
    if (c->closing || c->writing)
        return;
    size_t done = 0;
    if (c->out.len > 0) {
        uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
        int n = uv_try_write(&c->h.stream, &b, 1);
        if (n > 0) {
            done = (size_t)n;
        } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
            conn_write_failed(c, n);
            return;
        }
    }
    if (done == c->out.len) {
        c->out.len = 0;
        if (c->close_after_flush) {
            conn_linger(c);
            return;
        }
    } else {
        /* The rest goes through a uv_write that owns the bytes: swap the
         * buffers so `out` keeps accepting (into wbuf's old storage), and
         * write from where uv_try_write stopped (no memmove). */
        kvs_buf_t t = c->wbuf;
        c->wbuf = c->out;
        c->out = t;
        c->out.len = 0;
        uv_buf_t b = uv_buf_init((char *)c->wbuf.data + done, (unsigned)(c->wbuf.len - done));
        c->wreq.data = c;
        int rc = uv_write(&c->wreq, &c->h.stream, &b, 1, on_write);
        if (rc != 0) {
            c->wbuf.len = 0;
            conn_write_failed(c, rc);
            return;
        }
        c->writing = 1;
    }
    conn_update_reading(c);
}

void kvs_conn_queue(kvs_conn_t *c)
{
    kvs_flusher_t *f = c->flusher;
    if (f == NULL) {
        kvs_conn_flush(c);
        return;
    }
    if (c->queued || c->closing)
        return;
    c->queued = 1;
    c->flush_next = f->head;
    f->head = c;
}

/* ---- closing ---------------------------------------------------------- */

static void on_linger_timeout(uv_timer_t *t)
{
    kvs_conn_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    kvs_conn_t *c = req->data;
    if (c->closing)
        return;
    if (status != 0 || uv_read_start(&c->h.stream, on_alloc, on_read) != 0) {
        kvs_conn_close(c);
        return;
    }
    c->reading = 1;
    uv_timer_start(&c->linger, on_linger_timeout, KVS_CONN_LINGER_MS, 0);
}

/* Everything owed is written: close, lingering if the peer may still be
 * sending (see kvs_conn_close_after_flush). */
static void conn_linger(kvs_conn_t *c)
{
    if (c->peer_eof || c->lingering || c->open_handles < 2) {
        kvs_conn_close(c);
        return;
    }
    c->lingering = 1;
    if (c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = 0;
    }
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, &c->h.stream, on_shutdown) != 0)
        kvs_conn_close(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    kvs_conn_t *c = h->data;
    if (--c->open_handles > 0)
        return;
    kvs_frame_dec_close(&c->dec);
    kvs_buf_free(&c->out);
    kvs_buf_free(&c->wbuf);
    c->on_close(c);
}

void kvs_conn_close_after_flush(kvs_conn_t *c)
{
    if (c->closing)
        return;
    c->close_after_flush = 1;
    conn_update_reading(c);
    if (c->writing)
        return; /* on_write flushes the rest, then closes */
    kvs_conn_queue(c);
}

void kvs_conn_close(kvs_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->flusher != NULL && c->queued)
        kvs_flusher_forget(c->flusher, c);
    if (c->reading)
        uv_read_stop(&c->h.stream);
    c->reading = 0;
    if (c->open_handles > 1)
        uv_close((uv_handle_t *)&c->linger, on_handle_closed);
    uv_close(&c->h.handle, on_handle_closed);
}

/* ---- flusher ---------------------------------------------------------- */

void kvs_flusher_run(kvs_flusher_t *f)
{
    if (f->before != NULL)
        f->before(f);
    while (f->head != NULL) {
        kvs_conn_t *c = f->head;
        f->head = c->flush_next;
        c->queued = 0;
        c->flush_next = NULL;
        kvs_conn_flush(c);
    }
}

static void on_check(uv_check_t *h)
{
    kvs_flusher_run(h->data);
}

int kvs_flusher_init(kvs_flusher_t *f, uv_loop_t *loop, kvs_flusher_cb before, void *data)
{
    memset(f, 0, sizeof(*f));
    f->before = before;
    f->data = data;
    int rc = uv_check_init(loop, &f->check);
    if (rc != 0)
        return rc;
    f->check.data = f;
    return uv_check_start(&f->check, on_check);
}

void kvs_flusher_close(kvs_flusher_t *f)
{
    uv_check_stop(&f->check);
    uv_close((uv_handle_t *)&f->check, NULL);
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
    uv_getaddrinfo_t req;
    struct addrinfo hints;
    char port[8];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%u", a->port);
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
    return uv_pipe_bind(&l->pipe, a->path);
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
