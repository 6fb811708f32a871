/*
 * kvs_auth: who a connection is, and what it may do.
 *
 * Users come from config.yaml (`users:`). A connection is authenticated as
 * a user by its client certificate (the subject's CN or a subjectAltName
 * names the user; see kvs_tls_peer_names) or by an Auth command whose token
 * matches the user's stored hash. With no users configured there is no
 * kvs_auth_t at all, and nothing is checked: callers test the pointer.
 *
 * Authorization: every command needs a right on its table (read: Hget
 * Hmget Hexist Hmexist Hgetall Hscan Hlen; write: Hset Hmset Hdel Hmdel
 * Hincr Hclear; admin: Info, Metrics, Slowlog and Snapshot on the pattern "*",
 * Digest and Rebuild on their table); Ping and Auth need none. A user's
 * rights on a table are the union of its grants whose glob matches the
 * table's name.
 * A connection that is not authenticated gets 401 for anything but Ping and
 * Auth; a forbidden command gets 403 naming user, command and table.
 * Connections over a unix socket are trusted (the socket is private to the
 * node's user) and may do everything.
 *
 * Checking a token costs a PBKDF2 (a good fraction of a second at the
 * default cost), so it runs in libuv's thread pool, at most
 * KVS_AUTH_MAX_WORKERS at a time, the rest waiting in order; the caller
 * pauses the connection meanwhile, so later requests wait for the answer.
 * A token that was checked once is remembered (an HMAC of it under a key
 * drawn at start, never the token), so reconnecting clients are answered
 * at once; failures always pay the full cost, unknown users included
 * (checked against a decoy hash), so timing tells nothing.
 *
 * Limits: tokens are accepted only where they cannot be overheard (TLS, a
 * unix socket, loopback); limits.auth_failures failures close a connection;
 * a client address with limits.auth_failures_per_minute failures in the
 * last 60 s (sliding, kvs_window) is refused without a check until enough
 * of them are a minute old (an IPv6
 * address counts as its /64, an IPv4-mapped one as the IPv4 address). An address
 * has one check at a time: its other attempts wait (on whichever of its
 * connections sent them) and are decided when that check ends, so the
 * limit holds however many connections it opens, and one address cannot
 * keep the others' Auth waiting. Failures are logged with the peer's
 * address, at most KVS_AUTH_LOG_PER_SECOND lines a second (the rest are
 * counted and summed up).
 *
 * Threads: everything runs on the loop's thread except the hash check.
 */
#ifndef KVS_AUTH_H
#define KVS_AUTH_H

#include "kvs_config.h"
#include "kvs_conn.h"
#include "kvs_msg.h"
#include "kvs_tls.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define KVS_AUTH_MAX_WORKERS 2    /* hash checks running at once */
#define KVS_AUTH_LOG_PER_SECOND 5 /* failure log lines per second */
#define KVS_AUTH_ADDRESSES 1024   /* client addresses whose failures are counted */
#define KVS_AUTH_SPARED (KVS_AUTH_ADDRESSES + KVS_AUTH_MAX_WORKERS)
/* The largest request (frame payload, or RESP command) a client may send
 * before it authenticates: room for Ping, Auth (a user name and a token of
 * at most KVS_TOKEN_MAX bytes) and HELLO ... AUTH ... SETNAME. Its input
 * then stays within what a connection holds uncharged (kvs_conn's
 * KVS_CONN_INPUT_FREE), so clients nobody knows cannot take the input
 * budget (limits.input_buffers) that users' large requests need. */
#define KVS_AUTH_UNAUTH_FRAME 16384u
/* The output a client that has not authenticated may have waiting before
 * none of its requests are read (kvs_conn_cap_output): its answers are
 * errors, Auth's and HELLO's, so a client reading them never meets it. */
#define KVS_AUTH_UNAUTH_OUTPUT (64u * 1024u)

/* A server's bounds on client `c` for who it is now: limits.max_frame
 * (`max_frame`) and no output cap once `proven` (authenticated, or no
 * users configured), else KVS_AUTH_UNAUTH_FRAME and
 * KVS_AUTH_UNAUTH_OUTPUT; and its place in `u` (limits.auth_timeout and
 * limits.max_clients's eviction order), where a TLS handshake not done
 * yet counts as nobody, users or not. Servers call it at accept, when the
 * handshake ends and after each Auth. */
void kvs_auth_bound_conn(kvs_conn_t *c, kvs_unproven_t *u, uint32_t max_frame, int proven);

typedef struct kvs_auth_s kvs_auth_t;
typedef struct kvs_auth_user_s kvs_auth_user_t;
typedef struct kvs_auth_attempt_s kvs_auth_attempt_t;

/* A connection's identity; embed one per connection. */
typedef struct kvs_auth_conn_s {
    const kvs_auth_user_t *user; /* NULL: not authenticated */
    int trusted;                 /* a unix socket peer: may do everything */
    int token_ok;                /* tokens may be sent here: TLS, loopback, unix socket */
    uint32_t failures;           /* failed Auth attempts on this connection */
    kvs_auth_attempt_t *pending; /* an Auth being checked, or NULL */
    size_t cache_len;            /* the last table checked (SIZE_MAX: none) ... */
    unsigned cache_rights;       /* ... and the user's rights on it */
    char cache_table[KVS_MAX_TABLE];
} kvs_auth_conn_t;

/* Builds the users of `cfg` (which must outlive the result). *out is NULL
 * when no users are configured. Returns 0, or KVS_EINVAL when no random
 * key could be drawn, or -ENOMEM. */
int kvs_auth_new(const kvs_config_t *cfg, uv_loop_t *loop, kvs_auth_t **out);

/* Frees the users; no Auth may be in flight (run the loop to its end). */
void kvs_auth_free(kvs_auth_t *a);

/* Starts a connection's identity: `trusted` for unix sockets, `token_ok`
 * where tokens cannot be overheard. */
void kvs_auth_conn_init(kvs_auth_conn_t *ac, int trusted, int token_ok);

/* The connection is going away: an Auth still being checked for it is
 * cancelled (its callback never runs). */
void kvs_auth_conn_close(kvs_auth_conn_t *ac);

/* After a TLS handshake: the first name of the peer's verified certificate
 * that is a user's authenticates the connection as that user. Returns the
 * user's name, or NULL (no certificate, or no name is a user's). */
const char *kvs_auth_by_certificate(kvs_auth_t *a, kvs_auth_conn_t *ac, const kvs_tls_t *t);

/* The connection is nobody again (HTTP: every request says who it is). */
void kvs_auth_conn_forget(kvs_auth_conn_t *ac);

/* The user's name, or NULL. */
const char *kvs_auth_user_name(const kvs_auth_conn_t *ac);

/* 1 while the connection's Auth is being checked in the thread pool, or
 * waits its turn in the first lane (its address failed no Auth in the
 * last minute, and has no other attempt in flight): what limits.max_clients
 * spares (kvs_unproven_evict). At most KVS_AUTH_SPARED connections at a
 * time, each of a different address; 0 when it has no Auth, or one that is
 * parked behind its address's or queued behind the addresses that failed
 * nothing. */
int kvs_auth_conn_spared(const kvs_auth_conn_t *ac);

/* May the connection run `cmd` on table[0..tlen) (table NULL for commands
 * without one)? Returns 200, or 401 / 403 with the answer's message in
 * msg[0..mlen). The table must be valid (validated, or vouched for by
 * kvs_msg_peek). Cheap when the table is the one checked last. */
uint32_t kvs_auth_check(kvs_auth_conn_t *ac, Kvs__CommandRequest__CommandCase cmd,
                        const void *table, size_t tlen, char *msg, size_t mlen);

/* Whether a write `cmd` of table[0..tlen) that the connection may run
 * (kvs_auth_check said 200) must be answered with what was stored
 * withheld (CommandRequest.presence_only): its answer tells of it
 * (kvs_msg_shows_stored), and the user has no `read` on the table.
 * Cheap when the table is the one checked last. */
int kvs_auth_withholds(kvs_auth_conn_t *ac, Kvs__CommandRequest__CommandCase cmd, const void *table,
                       size_t tlen);

/* An Auth's outcome: status 200, 401, or 500 when the token could not be
 * checked (hashing failed: out of memory; not counted as a failure), and
 * the answer's message (valid during the call); `close`: the connection
 * failed too often, answer and close it. */
typedef void (*kvs_auth_done_cb)(void *arg, uint32_t status, const char *msg, int close);

/* Starts checking Auth `m` (a validated request; copied) for connection
 * `ac` from `peer` ("1.2.3.4:5678", for the address limit and the log).
 * Returns 0 when the check runs in the background: `cb(arg, ...)` runs
 * later, exactly once, unless kvs_auth_conn_close comes first. Otherwise
 * the answer is decided now: returns its status (200, 401, or 500 when
 * out of memory) with the message in msg[0..mlen) and *close set; `cb`
 * never runs. At most one Auth per connection may be in flight. */
uint32_t kvs_auth_begin(kvs_auth_t *a, kvs_auth_conn_t *ac, const Kvs__Auth *m, const char *peer,
                        kvs_auth_done_cb cb, void *arg, char *msg, size_t mlen, int *close);

#endif
