/*
 * kvs_conn: one framed connection over a libuv stream (TCP or unix socket).
 *
 * Reading: bytes go straight into the frame decoder's buffer; every complete
 * frame is handed to frame_cb, in order. The payload pointer is valid only
 * during the callback.
 *
 * Writing: the owner appends encoded frames to `out` (kvs_msg_append) and
 * calls kvs_conn_queue, which flushes once per loop turn through a
 * kvs_flusher (or at once without one), so many responses leave in one
 * system call. At most one uv_write is in flight per connection; bytes
 * appended meanwhile wait in `out` and go with the next. No single write is
 * larger than KVS_CONN_MAX_WRITE, whatever the backlog.
 *
 * Output bounds (Redis's client output buffer limits are the model). A
 * connection's *pending output* is what it owes the peer: bytes queued or in
 * flight, plus bytes its owner holds for it elsewhere (kvs_conn_hold: the
 * router keeps answers that wait for an earlier request's). While pending
 * output is at or above `high_water`, no more frames are *delivered* (so no
 * more requests are executed, and nothing more is read); delivery resumes
 * by itself once the peer has taken enough. Past `hard_limit` the
 * connection is closed and the peer named in the log. So a peer that
 * pipelines without reading costs at most high_water plus what its
 * requests already in flight produce, and never more than hard_limit.
 *
 * Input bounds, for members of a kvs_conn_group (a listener's clients): a
 * frame that has started must complete within the group's frame timeout;
 * the decoder memory all members hold beyond KVS_CONN_INPUT_FREE bytes each
 * is capped by the group's input budget (a connection whose next frame
 * would pass it gets on_error(KVS_ELIMIT)); an optional idle timeout closes
 * members that sent nothing for that long and are owed nothing. Buffers
 * that grew far past their usual size are given back once they drain.
 * Output bound for the group as a whole (Redis 7's maxmemory-clients is
 * the model): the memory the members' output takes (their buffers, full
 * or kept for the next answer, and what their owner holds for them) is
 * counted; once it passes the group's output budget, at the end of the
 * loop turn, after the flush (what clients that read were given has gone
 * into their sockets by then), every member's empty buffers are given
 * back, and then, while it is still past, the member whose output takes
 * the most is closed, so peers that each stay within their own limits
 * cannot, together, hold more than the budget (the owner's own peers,
 * turn_exempt, are neither counted nor closed).
 *
 * TLS (kvs_conn_use_tls) lives entirely below the framing: ciphertext read
 * from the socket goes into the session and the plaintext it yields into
 * the frame decoder's buffer, under the same input budget; when `out` is
 * flushed it is encrypted into `cout`, which then takes the place `out`
 * has for a plaintext connection (the same write sizes, the same
 * high-water and hard limits, which count `cout` too). Handshake bytes
 * leave as soon as they are made; `out` is encrypted only where a
 * plaintext connection would have written it, so nothing that waits on a
 * flusher's `before` step leaves early. Frames are delivered only once the
 * handshake completed (on_ready runs first). A handshake that fails, or a
 * plaintext peer on a TLS connection (the first byte is not a TLS
 * record), is logged once, naming the peer, and ends input with
 * KVS_ETLS / KVS_ENOTLS; after KVS_ENOTLS the connection is plaintext
 * again, so the owner can say in the peer's own protocol why it is closed.
 * A plaintext connection whose stream starts with a TLS record (a
 * ClientHello), whether it carries kvs frames or a codec's messages,
 * reports KVS_ETLSHELLO the same way. A TLS record the peer started and
 * did not finish counts as a started frame for the frame timeout. The
 * plaintext path pays one branch per read and per flush for all this.
 *
 * State: one bit per condition, each with one meaning (KVS_CONN_* flags,
 * libuv style); whether to read and whether to deliver are derived from
 * them, never stored.
 *
 * Lifetime: kvs_conn_close starts an asynchronous close; close_cb runs once
 * the handles are closed, and only then may the owner free the memory.
 * After close no callback but close_cb runs.
 */
#ifndef KVS_CONN_H
#define KVS_CONN_H

#include "kvs_addr.h"
#include "kvs_buf.h"
#include "kvs_config.h"
#include "kvs_frame.h"
#include "kvs_list.h"
#include "kvs_log.h"
#include "kvs_tls.h"

#include <uv.h>

#define KVS_CONN_LINGER_MS 2000
#define KVS_CONN_MAX_WRITE (1u << 30)           /* bytes per uv_write: fits uv_buf_t's unsigned */
#define KVS_CONN_INPUT_FREE (128u * 1024u)      /* decoder bytes per connection not charged */
#define KVS_CONN_KEEP_BUFFER (256u * 1024u)     /* a drained buffer above this is given back */
#define KVS_CONN_IDLE_KEEP 4096u                /* ... and above this, once idle for a sweep */
#define KVS_CONN_DEFAULT_HIGH_WATER (16u << 20) /* when the owner sets none */
/* TCP keepalive on every TCP connection, accepted or made: a peer whose
 * host vanished without a FIN or a reset (power lost, a NAT or firewall
 * that dropped the flow) is found out after 300 s idle and three probes
 * 100 s apart, and its connection closed (a client's max_clients slot, a
 * router's link), as Redis's tcp-keepalive 300 does. */
#define KVS_CONN_KEEPALIVE_S 300u
#define KVS_CONN_SLICE_NS 5000000u /* frames run at most this long a delivery */
#define KVS_CONN_TURN_NS 20000000u /* ... and deliveries this long a loop turn */
/* A group's members deliver "together" while another member delivered
 * less than this long ago (kvs_conn_group_share_slices). */
#define KVS_CONN_SHARED_MS 10000u

typedef struct kvs_conn_s kvs_conn_t;
typedef struct kvs_flusher_s kvs_flusher_t;
typedef struct kvs_conn_group_s kvs_conn_group_t;

/* Connection state bits (kvs_conn_t.flags). Each says one thing. */
enum {
    KVS_CONN_READING = 1u << 0,       /* uv_read_start is active */
    KVS_CONN_WRITING = 1u << 1,       /* a uv_write is in flight (its bytes are in wbuf) */
    KVS_CONN_PAUSED = 1u << 2,        /* the owner paused delivery (kvs_conn_pause) */
    KVS_CONN_READ_STOPPED = 1u << 3,  /* the owner stopped reading for good (drain) */
    KVS_CONN_READ_EOF = 1u << 4,      /* the peer sent EOF, or reading failed: no more input */
    KVS_CONN_FRAME_ERROR = 1u << 5,   /* the input broke a framing rule: no more frames */
    KVS_CONN_OUTPUT_FULL = 1u << 6,   /* delivery stopped at high_water, waits for a drain */
    KVS_CONN_DELIVERING = 1u << 7,    /* inside the frame delivery loop */
    KVS_CONN_SHUTTING = 1u << 8,      /* close once the queued output is written */
    KVS_CONN_LINGERING = 1u << 9,     /* write side shut; input discarded until EOF or timeout */
    KVS_CONN_CLOSING = 1u << 10,      /* uv_close was called */
    KVS_CONN_ERROR_TOLD = 1u << 11,   /* on_error has run (it runs at most once) */
    KVS_CONN_READ_REFUSED = 1u << 12, /* the group's input budget refused more input */
    KVS_CONN_TLS_READY = 1u << 13,    /* the TLS handshake completed */
    KVS_CONN_TLS_FAILED = 1u << 14,   /* TLS broke: nothing more is encrypted or decrypted */
    KVS_CONN_TLS_SHUT = 1u << 15,     /* close_notify is queued */
    KVS_CONN_START_SEEN = 1u << 16,   /* codec: the stream's start was checked for TLS */
    KVS_CONN_EOF_PENDING = 1u << 17,  /* TLS EOF: on_error once the messages before it are in */
    KVS_CONN_YIELDED = 1u << 18,      /* the turn's delivery budget ran out: no reading until
                                         the kick */
    KVS_CONN_REFUSED = 1u << 19,      /* refused after it was accepted: lingers as kvs_conn_refuse's
                                         do, counted with them */
    KVS_CONN_HEAD_READY = 1u << 20,   /* codec: the message at the head is whole (conn_ready) */
};

/* A message codec other than kvs frames (the Redis protocol), set by the
 * owner before traffic starts. `next` takes the next complete message from
 * the buffered bytes p[0..len): it returns 1 with *used = the message's
 * length in bytes (the message itself, parsed, is in the codec's state and
 * valid until the next call), 0 when more bytes are needed (progress may
 * be kept in the state, relative to p), or a negative error after which
 * the stream cannot go on. A message may be at most `max` bytes. With
 * `peek` it only tells whether a message (or an error) is there: nothing
 * is built for it, and the progress is kept, so that asking again costs
 * little and the call that takes the message (peek 0) goes on from there
 * (kvs_conn asks so while requests wait, for every read). */
typedef struct kvs_codec_s {
    int (*next)(void *state, const uint8_t *p, size_t len, size_t max, size_t *used, int peek);
    void *state;
    /* The port has no TLS setting: a TLS handshake is input like any
     * other, for next() to refuse (otherwise it ends the input with
     * KVS_ETLSHELLO, logged as a TLS client on a plaintext port). */
    int plain_only;
} kvs_codec_t;

/* A complete frame (or codec message: its bytes) arrived. The owner may
 * append output, pause, or close. When the owner made the decoder skip
 * oversized frames (kvs_frame_dec_skip_oversized on c->dec, without a
 * codec), payload is NULL for a frame that was stepped over and len is its
 * announced length. */
typedef void (*kvs_conn_frame_cb)(kvs_conn_t *c, const uint8_t *payload, size_t len);

/* Input has ended, once per connection:
 *   KVS_ECLOSED  the peer closed its side, or a read or write failed;
 *   KVS_ETOOBIG  a frame header announced more than max_frame (the length
 *                is in c->dec.bad_len);
 *   KVS_EPROTO   a frame header had the reserved compression bit set, or
 *                the codec found a protocol error (its state says which);
 *   KVS_ELIMIT   the group's input budget has no room for the next frame;
 *   KVS_ETLS     the TLS handshake or a record failed (logged, with the
 *                reason in kvs_conn_tls_error); nothing more can be sent
 *                but the alert already queued;
 *   KVS_ENOTLS   TLS connection: the peer sent plaintext, or a server
 *                answered plaintext (logged); a server-side connection is
 *                plaintext from now on, so an answer appended now is sent
 *                in the clear;
 *   KVS_ETLSHELLO plaintext connection: the peer started a TLS handshake
 *                (logged).
 * No more frames are read; frames already buffered are still delivered
 * after KVS_ECLOSED (the peer may be half-closed), not after the others.
 * The owner appends its last response(s) and closes, usually with
 * kvs_conn_close_after_flush once it owes the peer nothing more. Without an
 * on_error callback the connection closes after flushing. */
typedef void (*kvs_conn_error_cb)(kvs_conn_t *c, int err);

/* The handles are closed; the owner may free the connection now. */
typedef void (*kvs_conn_close_cb)(kvs_conn_t *c);

/* TLS: the handshake completed (the peer's certificate, if any, is
 * verified: kvs_tls_peer_names). No frame was delivered before. The owner
 * may close. */
typedef void (*kvs_conn_ready_cb)(kvs_conn_t *c);

struct kvs_conn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    kvs_frame_dec_t dec;      /* input buffer; frames unless `codec` is set */
    const kvs_codec_t *codec; /* NULL: kvs frames */
    kvs_buf_t out;            /* queued, not yet handed to the socket (TLS: not yet encrypted) */
    kvs_buf_t cout;           /* TLS: ciphertext queued, not yet handed to the socket */
    kvs_tls_t *tls;           /* NULL: plaintext */
    kvs_buf_t wbuf;           /* being written: [woff, wlen) of it is in flight or next */
    size_t woff;              /* bytes of wbuf already written */
    size_t wchunk;            /* bytes the in-flight uv_write covers */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    uv_timer_t timer;  /* lingering deadline; otherwise a zero-delay delivery kick */
    int open_handles;  /* stream + timer; on_close runs when both closed */
    unsigned flags;    /* KVS_CONN_* */
    size_t high_water; /* no frames are delivered while pending output is at or above */
    size_t hard_limit; /* close when pending output passes this (0: no limit) */
    size_t output_cap; /* kvs_conn_cap_output's cap on high_water, kept across reloads (0: none) */
    size_t held;       /* output the owner holds for this peer outside `out` */
    size_t reserved;   /* output the owner expects for this peer and holds nothing of yet */
    size_t resume_below; /* kvs_conn_output_full said yes: kick when pending is below */
    size_t owed;         /* requests the owner has not answered yet (for the idle timeout) */
    size_t max_write;    /* bytes per write (KVS_CONN_MAX_WRITE; smaller in tests) */
    kvs_conn_frame_cb on_frame;
    kvs_conn_error_cb on_error;
    kvs_conn_close_cb on_close;
    kvs_conn_ready_cb on_ready; /* TLS only; optional */
    /* Optional: called after each run of on_frame calls (the frames of one
     * read, or those a kick delivers), with every frame of the run read
     * from the socket before the first was delivered. */
    kvs_conn_ready_cb on_delivered;
    kvs_flusher_t *flusher;         /* optional */
    kvs_conn_t *flush_next;         /* flusher's intrusive list */
    int queued;                     /* on the flusher's list */
    kvs_conn_group_t *group;        /* optional, see kvs_conn_join */
    kvs_list_t grp_link;            /* on its group's list of members */
    size_t charged;                 /* decoder bytes charged to the group's input budget */
    size_t out_counted;             /* output memory counted in the group's output_used */
    uint64_t last_input_ms;         /* loop time of the last bytes read */
    uint64_t turn_ms;               /* loop time of the turn turn_ns counts deliveries of */
    uint64_t turn_ns;               /* time spent delivering frames in that loop turn */
    uint64_t turn_budget_ns;        /* the owner's: deliveries a turn (0: KVS_CONN_TURN_NS) */
    int turn_exempt;                /* not held by its group's bound on a turn, nor counted in
                                       or closed by its output budget (the owner's own peers:
                                       the master's scrape link) */
    kvs_list_t held_link;           /* on its group's queue of held members */
    uint64_t read_ns;               /* kvs_now_ns() of the last read, when stamp_reads is set */
    int stamp_reads;                /* the owner wants read_ns (request latency from arrival) */
    uint64_t partial_since_ms;      /* loop time + 1 an incomplete frame started to wait (0:
                                       none; the 1 keeps it from 0) */
    uint64_t output_since_ms;       /* loop time pending output started to wait (0: none) */
    uint64_t unproven_since_ms;     /* loop time its owner started to wait for it to authenticate
                                       (kvs_conn_set_unproven; 0: authenticated, or no need) */
    struct kvs_unproven_s *un_list; /* the unproven list it is on (kvs_unproven_set), or NULL */
    kvs_list_t un_link;             /* its place there */
    int evicted;                    /* closed by kvs_unproven_evict */
    int keep_idle;                  /* never closed by its group's idle timeout (the owner's own
                                       peers: a link that is idle whenever nobody uses it) */
    uint64_t deadline_wait_ms;      /* kvs_conn_set_deadline's wait (0: no deadline) */
    uint64_t deadline_ms;           /* loop time it ends, counted once its output was all
                                       written (0: not counting yet) */
    const char *deadline_why;       /* what it did not do by then, for the log line */
    uint64_t written;               /* bytes it wrote to its socket, ever */
    size_t progress_min;            /* kvs_conn_set_min_progress's bytes (0: no rule) */
    uint64_t progress_window_ms;    /* ... per this long */
    uint64_t progress_since_ms;     /* loop time + 1 the current window began (0: none) */
    uint64_t progress_mark;         /* bytes its peer had taken then */
    const char *progress_why;       /* what it does not read, for the log line */
    kvs_log_budget_t *log_budget;   /* optional, for a connection of no group: the budget
                                       of the lines its peer causes (kvs_conn_may_log) */
    char peer[64];                  /* "1.2.3.4:5678", for log lines about this peer */
    void *data;                     /* the owner's */
};

/* Initializes `c` for `loop`. is_unix picks a pipe or a TCP handle. The
 * callbacks may be NULL except on_close. high_water starts at
 * KVS_CONN_DEFAULT_HIGH_WATER (at least 2 * max_frame) and hard_limit at 0;
 * the owner may change both before traffic starts. Returns 0 or a uv error
 * (then still kvs_conn_close it). */
int kvs_conn_init(kvs_conn_t *c, uv_loop_t *loop, int is_unix, uint32_t max_frame,
                  kvs_conn_frame_cb on_frame, kvs_conn_error_cb on_error,
                  kvs_conn_close_cb on_close);

/* The largest frame (or codec request) `c` takes from now on: a frame
 * already read is judged by it when it comes to be delivered. Servers
 * with users lower it for a client until it authenticates (kvs_auth.h,
 * KVS_AUTH_UNAUTH_FRAME), so that such a client's input stays within
 * KVS_CONN_INPUT_FREE and never draws on the group's input budget. */
void kvs_conn_set_max_frame(kvs_conn_t *c, uint32_t max_frame);

/* Caps `c`'s high-water mark at `cap` bytes (0: no cap, the group's mark,
 * or KVS_CONN_DEFAULT_HIGH_WATER outside a group). Servers with users cap
 * a client's until it authenticates (KVS_AUTH_UNAUTH_OUTPUT), so that one
 * nobody knows, sending requests it never reads the answers of, holds
 * that much output at most rather than limits.client_output / 4. Raising
 * the mark lets delivery go on at once if it stopped at the old one. */
void kvs_conn_cap_output(kvs_conn_t *c, size_t cap);

/* Whether `c` has yet to prove who it is (servers with users, until the
 * client authenticates). An unproven member owed no answer is closed once
 * it has been unproven for its group's auth_timeout_ms, counted from the
 * first call that made it unproven (clients nobody knows cannot hold
 * connection slots for ever). Servers call it at accept and at each change
 * of the client's identity. */
void kvs_conn_set_unproven(kvs_conn_t *c, int unproven);

/* Closes `c`, a group member, once `ms` milliseconds have passed with
 * none of its output left to write (at its group's next sweep after them,
 * within a second), whatever it sends meanwhile: the time counts from the
 * moment what it is owed has all been written, and again from the start
 * whenever output waits. 0 takes a deadline away. `why` (static) says in
 * the log line what the peer did not do in time. For a connection that
 * now waits for one last thing from its peer, once it has what it asked
 * for (a peer that reads slowly is not cut off with it unsent). */
void kvs_conn_set_deadline(kvs_conn_t *c, uint64_t ms, const char *why);

/* Closes `c`, a group member, once output has waited for it for
 * `window_ms` in which it took less than `min_bytes` (checked at its
 * group's sweep, once a second): for a stream's receiver (node_snapshot
 * sets it for the whole stream), so that a peer that stops reading, or
 * trickles, does not hold the connection, and what waits for it, for
 * ever. A peer that reads slowly but on keeps it. The clock runs only
 * while output waits for the peer, in this process or in the socket's
 * send queue (kvs_conn_untaken). 0 bytes takes the rule away. `why`
 * (static) says, in the log line, what the peer does not read. */
void kvs_conn_set_min_progress(kvs_conn_t *c, size_t min_bytes, uint64_t window_ms,
                               const char *why);

/* Whether `c` speaks TLS and its handshake has not completed: a peer that
 * is nobody yet, users or not (servers count it unproven: it has
 * limits.auth_timeout to finish, and makes room at limits.max_clients). */
int kvs_conn_tls_pending(const kvs_conn_t *c);

/* ---- unproven lists: who makes room at limits.max_clients ---------------- */

/* A listener's connections that have yet to authenticate, oldest first.
 * When the listener is at limits.max_clients, a new connection takes the
 * place of the oldest of them instead of being refused
 * (kvs_unproven_evict), so that clients nobody knows, however many and
 * however fast, never keep a user out: a client that authenticates within
 * the time a flood needs to open as many connections as there are
 * unproven ones keeps its place. The router's front doors and a worker's
 * TCP listener each keep one. */
typedef struct kvs_unproven_s {
    kvs_list_t conns; /* oldest first */
    size_t evicting;  /* closed to make room, their close callback still to come */
    uint64_t evicted; /* closed to make room, ever */
} kvs_unproven_t;

/* Makes `u` an empty list. */
void kvs_unproven_init(kvs_unproven_t *u);

/* kvs_conn_set_unproven(c, unproven), and `c` joins the tail of `u` while
 * unproven (unless it is closing or was evicted) or leaves it once
 * proven. Servers call it at accept and at each change of the client's
 * identity. */
void kvs_unproven_set(kvs_unproven_t *u, kvs_conn_t *c, int unproven);

/* `c`, still unproven, failed to authenticate: it goes to the head of
 * `u`, the first to make room. A wrong token is no reason to be spared
 * longer than the clients that have not tried yet, and a flood that fails
 * now and then must not keep its connections younger than theirs. Nothing
 * for a connection that is proven or closing. */
void kvs_unproven_to_front(kvs_unproven_t *u, kvs_conn_t *c);

/* From the owner's close callback: `c` leaves `u` (and, evicted, stops
 * counting in u->evicting). */
void kvs_unproven_closed(kvs_unproven_t *u, kvs_conn_t *c);

/* The listener of `u` is at limits.max_clients: closes (kvs_conn_abort)
 * the oldest member, passing over those `spared` says to spare (a client
 * whose Auth is being checked or waits its turn), at most `max_spared` of them.
 * Returns 1 when one was closed: its place is free (its descriptor goes
 * at once; the owner counts it until its close callback, so subtract
 * u->evicting from the connections counted against the cap). */
int kvs_unproven_evict(kvs_unproven_t *u, int (*spared)(const kvs_conn_t *c), int max_spared);

/* Makes `c` (initialized; not yet accepted or started) speak TLS with the
 * settings of `ctx`, as a server or a client by ctx's role. A client
 * verifies that the server's certificate names `host` (see kvs_tls_new;
 * may be NULL). Returns 0 or -ENOMEM. */
int kvs_conn_use_tls(kvs_conn_t *c, kvs_tls_ctx_t *ctx, const char *host);

/* True when the peer is on this machine: a unix socket, or TCP from a
 * loopback address (127.0.0.0/8, ::1, or IPv4-mapped 127.x). */
int kvs_conn_peer_is_local(const kvs_conn_t *c);

/* Why TLS failed on `c` ("" when it did not, or c is plaintext). */
const char *kvs_conn_tls_error(const kvs_conn_t *c);

/* Accepts a pending connection from `server` into an initialized `c`, notes
 * the peer's address and starts reading. On failure the caller must still
 * kvs_conn_close(c). */
int kvs_conn_accept(kvs_conn_t *c, uv_stream_t *server);

/* kvs_conn_accept, speaking TLS with the settings of `tls` (a server
 * context) unless it is NULL. The connection is taken off the listener's
 * backlog even when its TLS session cannot be made (out of memory): one
 * left there stops libuv accepting any other. On failure the caller must
 * still kvs_conn_close(c). */
int kvs_conn_accept_tls(kvs_conn_t *c, uv_stream_t *server, kvs_tls_ctx_t *tls);

/* Starts reading on a connected stream (after a uv_connect); a TLS
 * client sends its ClientHello. Returns 0, a uv error, or KVS_ETLS. */
int kvs_conn_start(kvs_conn_t *c);

/* Hands queued output to the socket (uv_try_write, then uv_write for the
 * rest). Never delivers frames. Safe to call at any time; a no-op while
 * closing. */
void kvs_conn_flush(kvs_conn_t *c);

/* Call after appending to `out`: checks the hard limit (closing the
 * connection past it), then puts `c` on its flusher's list so it is flushed
 * at the end of this loop turn; without a flusher, flushes now. */
void kvs_conn_queue(kvs_conn_t *c);

/* The owner holds `delta` more (or, negative, fewer) bytes of output for
 * this peer outside `out` (for example answers waiting for an earlier one).
 * They count as pending output for the limits; past hard_limit the
 * connection is closed. */
void kvs_conn_hold(kvs_conn_t *c, ptrdiff_t delta);

/* The owner expects `delta` more (or, negative, fewer) bytes of output for
 * this peer that it holds no memory for yet: room kept for an answer on
 * its way (a whole-table read's frame). They count as pending output for
 * the peer's own limits, as held output does, but not in its group's
 * output budget, which counts memory. */
void kvs_conn_reserve(kvs_conn_t *c, ptrdiff_t delta);

/* Stops reading new bytes for good; frames already buffered are still
 * delivered (unless paused). For draining at shutdown. */
void kvs_conn_stop_reading(kvs_conn_t *c);

/* Stops delivering frames (and reading) until kvs_conn_resume. Frames
 * already buffered are kept. */
void kvs_conn_pause(kvs_conn_t *c);

/* Resumes delivery: buffered frames are delivered before this returns
 * (unless the output is full; then once it drains). */
void kvs_conn_resume(kvs_conn_t *c);

/* True when a complete frame waits in the decoder, not yet delivered: a
 * request received but not yet executed (paused, or held back by the output
 * limit). */
int kvs_conn_has_frame(kvs_conn_t *c);

/* Closes once queued output is written (or at once if there is none).
 * No more frames are delivered. Unless the peer already sent EOF, the close
 * lingers (nginx style): the sending side is shut down and input is read
 * and discarded until the peer closes or KVS_CONN_LINGER_MS pass, so that
 * unread pipelined requests do not make the kernel reset the connection
 * and destroy answers the peer has not read yet. */
void kvs_conn_close_after_flush(kvs_conn_t *c);

/* Closes now; queued output is dropped. close_cb runs later. Idempotent. */
void kvs_conn_close(kvs_conn_t *c);

/* kvs_conn_close for a connection whose unanswered requests are given up
 * (a router's link to a worker that did not answer in time): a TCP peer is
 * reset (RST) rather than sent an orderly end, so that, should it come to
 * read those requests only now (it was stopped, or the network held them),
 * it can tell that nobody waits for them (kvs_conn_peer_gone) and not run
 * them. A unix socket's peer can tell from the close itself. */
void kvs_conn_abort(kvs_conn_t *c);

/* Makes every close of a connected TCP `c` a reset, kvs_conn_close and
 * the process's end (a crash, kill -9) included, as kvs_conn_abort: for a
 * connection whose peer must never run requests it reads after this side
 * is gone. Nothing for a unix socket (its close says as much). Returns 0
 * or a uv error. */
int kvs_conn_reset_on_close(kvs_conn_t *c);

/* True when the peer is gone for good: it closed a unix socket, or reset
 * a TCP connection (kvs_conn_abort), so no answer will be read. A peer
 * that only shut down its sending side (a client that half-closes and
 * still reads its answers), or closed a TCP connection in order, is not
 * taken for gone. One poll(2) that does not wait. */
int kvs_conn_peer_gone(const kvs_conn_t *c);

/* Bytes queued or being written. */
size_t kvs_conn_backlog(const kvs_conn_t *c);

/* What the peer has yet to take, as a rule about its pace must count it:
 * the backlog less what the write under way already handed to the socket
 * (one uv_write may carry a whole high-water mark, and complete only once
 * a slow reader took it all), plus what waits in the socket's send queue
 * (SIOCOUTQ: megabytes, for a TCP socket whose buffer grew). */
size_t kvs_conn_untaken(const kvs_conn_t *c);

/* Bytes of `c`'s output its peer took, ever: what was handed to the
 * socket less what still waits in its send queue. */
uint64_t kvs_conn_taken(const kvs_conn_t *c);

/* Bytes of output given to `c`, ever: what it wrote and what it still
 * holds. The offset, on kvs_conn_taken's scale, where output appended now
 * starts or ends (with TLS, output not yet encrypted counts at its own
 * size: the offset runs behind by the records' overhead). No system call. */
uint64_t kvs_conn_queued_total(const kvs_conn_t *c);

/* Pending output: the backlog plus what the owner holds (kvs_conn_hold)
 * and expects (kvs_conn_reserve). */
size_t kvs_conn_pending(const kvs_conn_t *c);

/* Whether pending output, less `not_output` bytes of what the owner holds
 * (requests it queued itself, counted as held), is at the high-water
 * mark, where frames stop being delivered. If so, the owner's work held
 * back for it resumes as delivery does: once the output drains, a
 * delivery runs (on_delivered is called, frames or not). */
int kvs_conn_output_full(kvs_conn_t *c, size_t not_output);

/* ---- groups: limits shared by a listener's connections ------------------ */

typedef struct kvs_conn_limits_s {
    size_t high_water;          /* per connection: stop delivering frames at this output */
    size_t hard_limit;          /* per connection: close past this output (0: none) */
    uint64_t frame_timeout_ms;  /* a started frame must complete within this (0: none) */
    uint64_t idle_timeout_ms;   /* close members idle this long (0: never) */
    uint64_t auth_timeout_ms;   /* close members unproven this long (0: never) */
    uint64_t output_timeout_ms; /* close members whose pending output has not all gone
                                   into the socket within this (0: never) */
    size_t input_budget;        /* decoder bytes all members may hold beyond their free
                                   KVS_CONN_INPUT_FREE each (0: no limit) */
    size_t output_budget;       /* pending output all members may hold together; past it the
                                   member owed the most is closed (0: no limit) */
    /* For log lines: what sets frame_timeout_ms, and what a frame is
     * called (NULL: "limits.frame_timeout", "request frame"). */
    const char *frame_timeout_name;
    const char *frame_word;
} kvs_conn_limits_t;

struct kvs_conn_group_s {
    uv_loop_t *loop;
    kvs_conn_limits_t limits;
    uv_timer_t sweep; /* once a second: frame, output and idle timeouts, log budget */
    kvs_list_t members;
    size_t count;
    size_t input_used;           /* decoder bytes charged by all members */
    size_t output_used;          /* memory of all members' output (turn_exempt ones aside) */
    uint64_t output_evicted;     /* members closed because output_used passed output_budget */
    kvs_list_t relieve_link;     /* on a flusher's `relieve`: past the budget, checked after
                                    the flush (group_check_output) */
    const char *what;            /* "client", for log lines */
    uint64_t joined;             /* members ever (connections accepted) */
    uint64_t bytes_in;           /* bytes members read */
    uint64_t bytes_out;          /* bytes members wrote */
    kvs_log_budget_t log_budget; /* the lines members cause (closing a peer that broke a rule) */
    char log_what[64];           /* "lines about clients", the budget's name */
    uint64_t turn_budget_ns;     /* members' deliveries between two polls (0: no bound) */
    uint64_t turn_spent_ns;      /* ... so far since the last poll's callbacks ran */
    uint64_t turns_held;         /* deliveries put off to a later turn by that bound */
    uv_check_t turn_end;         /* after each poll's callbacks: turn_spent_ns starts over */
    int turn_end_on;             /* turn_end and turn_timer were initialized (closed with it) */
    /* Members with frames left for a later turn (the bound, or their own
     * slice, ran out), in the order they were held: turn_timer gives them
     * their turns in that order, in the next loop turn. */
    kvs_list_t turn_queue;
    size_t n_held;
    uv_timer_t turn_timer;
    /* kvs_conn_group_share_slices: the slice while members take turns
     * (0: off), the member that delivered last (compared, never read)
     * and when another one did before it. */
    uint64_t shared_slice_ns;
    const kvs_conn_t *last_member;
    uint64_t switch_ms;
    int drain_past_limit; /* kvs_conn_group_drain_past_limit */
};

/* The limits config.yaml sets (limits.*): high water at a quarter of
 * client_output, hard limit at client_output. */
void kvs_conn_limits_from_config(kvs_conn_limits_t *l, const kvs_config_t *cfg);

/* A TLS context for endpoint `e` of `cfg` (&cfg->tls_router, ...), named
 * `what` ("tls.router") in messages: a server's for a listener, else a
 * client's (a link: it always verifies the worker; e->verify_host says
 * whether the certificate must also name the host). Returns what
 * kvs_tls_ctx_new returns. */
int kvs_conn_tls_from_config(const kvs_config_t *cfg, const kvs_tls_endpoint_t *e, const char *what,
                             int server, kvs_tls_ctx_t **out, char *err, size_t errlen);

/* SIGHUP: reads the files of TLS context `c` again (NULL: nothing), and
 * logs the outcome naming it; a failure keeps the previous material. */
void kvs_conn_tls_reload(kvs_tls_ctx_t *c);

/* How many clients a listener may take: `configured` (limits.max_clients),
 * lowered so that `listeners` such listeners plus `reserve` descriptors
 * the process needs for itself (links, workers, files, the log) fit the
 * descriptor limit. Raises the soft RLIMIT_NOFILE to the hard one first
 * (as Redis and nginx do). Logs a warning when it had to lower the cap. */
uint32_t kvs_conn_max_clients(uint32_t configured, unsigned listeners, unsigned reserve);

/* The descriptor limit (RLIMIT_NOFILE) after raising the soft limit to
 * the hard one, as kvs_conn_max_clients does; UINT64_MAX when unlimited
 * or unknown. */
uint64_t kvs_conn_fd_limit(void);

/* Starts a group on `loop` with `limits` (copied). `what` names members in
 * log lines and must outlive the group. The lines members cause (one per
 * member closed for breaking a limit or a protocol rule) are logged within
 * the group's kvs_log_budget: a peer that opens connections at will cannot
 * flood the log. Returns 0 or a uv error. */
int kvs_conn_group_init(kvs_conn_group_t *g, uv_loop_t *loop, const kvs_conn_limits_t *limits,
                        const char *what);

/* Whether a line about `c` that its peer caused (it broke a limit or a
 * rule) may be logged: a group member's lines are within the group's
 * budget (and counted there, printed or not), a connection of no group
 * (one of our own, such as a link) within its own log_budget if it has
 * one, else it logs every one. */
int kvs_conn_may_log(kvs_conn_t *c);

/* New limits for a running group (a live reload): members keep their
 * connections; output limits apply to each at once (a member past the new
 * hard limit is closed, unless kvs_conn_group_drain_past_limit), timeouts
 * from the next sweep, the input budget from the next read. */
void kvs_conn_group_set_limits(kvs_conn_group_t *g, const kvs_conn_limits_t *limits);

/* New hard limits (kvs_conn_group_set_limits) close none of g's members:
 * each may owe what it owed then on top of the new limit, which comes
 * down to the new limit as it drains (its high-water mark is the new one
 * at once, so it is given no more work meanwhile). For connections that
 * carry many peers' answers (a worker's unix socket: the node's own
 * router processes' links; never more than the member had, so reloads do
 * not add up), where a reload that lowered
 * limits.client_output below what one held failed every client of the
 * shard at once. */
void kvs_conn_group_drain_past_limit(kvs_conn_group_t *g);

/* Bounds the time the members' frames may take together in one loop
 * turn (from the end of one poll's callbacks to the end of the next:
 * the members held before run first, then the new reads): once `ns` are
 * spent, a member about to deliver holds its frames, stops reading and
 * joins the group's queue; so does one whose own slice or turn budget
 * ran out. The queue's members take their turns in order, one delivery
 * each, in the next loop turn, as far as its bound goes. A
 * connection's own budget (turn_budget_ns) bounds one member; this bounds
 * them all, so many busy members cannot keep the loop from polling, its
 * timers and the connections of no group (links) for members x slice.
 * 0 lifts the bound. Returns 0 or a uv error. */
int kvs_conn_group_bound_turn(kvs_conn_group_t *g, uint64_t ns);

/* While members take turns delivering (one delivered less than
 * KVS_CONN_SHARED_MS after another), each delivery and each member's
 * deliveries of a loop turn take at most `ns` (less than the slice): a
 * client pipelining thousands of requests then keeps another's single
 * request waiting about `ns`, not a whole slice, while one alone keeps
 * its slices (fewer loop turns for the same work). 0: off. */
void kvs_conn_group_share_slices(kvs_conn_group_t *g, uint64_t ns);

/* Sweeps the group every `ms` rather than once a second (its timeouts
 * then act within `ms` of passing; the unit tests' faster clock). */
void kvs_conn_group_sweep_every(kvs_conn_group_t *g, uint64_t ms);

/* Closes the group's timer (members must have left or be closing). */
void kvs_conn_group_close(kvs_conn_group_t *g);

/* Makes `c` (initialized, not yet accepted) a member: it takes the group's
 * output limits and is subject to its input limits until it closes. */
void kvs_conn_join(kvs_conn_t *c, kvs_conn_group_t *g);

/* Refuses `c`, accepted (so that its owner could learn where it comes
 * from) and nothing delivered from it yet, as kvs_conn_refuse refuses a
 * connection from a listener: it leaves its group at once, `msg[0..len)`
 * is written if the socket takes it at once, and it lingers (at most
 * 500 ms, under the same cap of lingering refusals: past it, what it sent
 * is read and it is closed at once). */
void kvs_conn_refuse_accepted(kvs_conn_t *c, const void *msg, size_t len);

/* Whether `c` holds input not taken in yet: bytes in its socket the loop
 * has not read, or a whole frame read and not delivered (the peer sent
 * something since). For an owner choosing a connection to close as idle,
 * or about to take a peer that owes answers for hung after this process
 * itself was held up. */
int kvs_conn_input_waiting(const kvs_conn_t *c);

/* Accepts a pending connection from `server` only to refuse it: writes
 * `msg[0..len)` (a complete frame, small enough for the socket buffer; NULL
 * for nothing, as on a TLS listener) if the socket takes it at once, and
 * closes. For a listener at its connection limit, or one that has no
 * memory for a new client: a connection callback must accept or refuse,
 * or libuv stops polling the listener. Needs no memory: without any, a
 * spare handle takes the connection, now or once it is free again.
 * Returns 0 or a uv error. */
int kvs_conn_refuse(uv_stream_t *server, const void *msg, size_t len);

/* ---- flusher: flush every queued connection once per loop turn -------- */

typedef void (*kvs_flusher_cb)(kvs_flusher_t *f);

struct kvs_flusher_s {
    uv_check_t check;
    uv_idle_t idle; /* active while work waits for the check (kvs_flusher_wake) */
    int running, closing;
    uv_close_cb close_cb;
    kvs_conn_t *head;
    kvs_flusher_cb before; /* runs before flushing, e.g. to commit a batch */
    kvs_flusher_cb after;  /* runs after flushing (optional; set after init) */
    kvs_list_t relieve;    /* groups past their output budget, checked after the flush */
    uint64_t now_ns;       /* read_ns of its latest read by a stamp_reads member: the
                              loop's latest precise time, without a clock read per request */
    void *data;
};

/* Starts a check handle on `loop` that, after each poll, calls `before`
 * (if set), flushes every connection queued with kvs_conn_queue, then
 * calls `after` (if set). */
int kvs_flusher_init(kvs_flusher_t *f, uv_loop_t *loop, kvs_flusher_cb before, void *data);

/* Work was left for the turn's end (a connection queued, a batch opened)
 * where libuv would otherwise block in poll before its check handle runs:
 * in a timer callback, say. Keeps the next poll from waiting, so the
 * check runs at once. kvs_conn_queue calls it; cheap when already done. */
void kvs_flusher_wake(kvs_flusher_t *f);

/* Flushes what is queued right now (also used by the check handle). */
void kvs_flusher_run(kvs_flusher_t *f);

/* Stops and closes the flusher's handles; `cb` (may be NULL) runs once
 * both are closed (with one of them, whose data is `f`): until then `f`
 * must stay valid, as with any uv handle. */
void kvs_flusher_close(kvs_flusher_t *f, uv_close_cb cb);

/* Removes `c` from its flusher's list (called by kvs_conn_close). */
void kvs_flusher_forget(kvs_flusher_t *f, kvs_conn_t *c);

/* Closes every handle of `loop` not closing yet (without callbacks): the
 * last step of a process's shutdown, so that uv_run returns. */
void kvs_loop_close_all(uv_loop_t *loop);

/* ---- listening -------------------------------------------------------- */

typedef union kvs_listener_u {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
} kvs_listener_t;

/* Resolves a TCP address (numeric or a name) synchronously, to its first
 * address: only at start-up (binding listeners, before any client is
 * served) and in tools; anything that resolves while serving uses
 * kvs_lookup_start (kvs_lookup.h). Returns 0 or a uv error. */
int kvs_resolve(uv_loop_t *loop, const kvs_addr_t *a, struct sockaddr_storage *out);

/* Binds and listens on `addr` (TCP with SO_REUSEADDR, or a unix socket whose
 * stale file is removed first). `l->handle.data` is left for the caller.
 * Returns 0 or a uv error; on error the handle is closed (no callback). */
int kvs_listen(uv_loop_t *loop, const kvs_addr_t *addr, kvs_listener_t *l, uv_connection_cb cb);

#endif
