/*
 * router_redis: the router's second front door, the Redis protocol (RESP2,
 * and RESP3 after HELLO 3), for redis-cli, redis-benchmark and every Redis
 * client library. A Redis key is a kvs table, a hash field is a kvs key.
 *
 * Each RESP command becomes one router request in the client's FIFO, like
 * a protobuf frame (a DEL, UNLINK or EXISTS of several keys one per key,
 * their replies folded into one): commands kvs answers by itself (PING, ECHO, HELLO,
 * COMMAND, CLIENT, SELECT, CONFIG GET, QUIT, AUTH) are finished here with
 * their RESP reply; the hash commands are turned into a kvs CommandRequest
 * and go through router_route, the same routing, fan-out, bounds and
 * limits as protobuf clients, and their kvs answer is turned into the
 * reply shape Redis gives (router_redis_answer).
 *
 * Values: a bulk string written is stored as string_value when it is valid
 * UTF-8, else binary_value; integer, float and bool values read back as
 * decimal text ("1"/"0" for bools).
 */
#ifndef ROUTER_REDIS_H
#define ROUTER_REDIS_H

#include "kvs_buf.h"
#include "kvs_conn.h"

#include <stddef.h>
#include <stdint.h>

typedef struct router_s router_t;
typedef struct router_client_s router_client_t;
typedef struct router_req_s router_req_t;
typedef struct router_redis_s router_redis_t;
typedef struct router_name_s router_name_t;

/* Per-client RESP state (parser, protocol version, name). NULL when out of
 * memory. */
router_redis_t *router_redis_new(router_t *r, uint64_t client_id);
void router_redis_free(router_redis_t *rs);

/* The name the client gave itself (CLIENT SETNAME, HELLO ... SETNAME), or
 * NULL; take a reference (router_name_ref) to keep it. */
router_name_t *router_redis_name(const router_redis_t *rs);

/* The Auth check of `req` ended with `status`. A HELLO ... AUTH takes
 * effect now when it passed (protocol and name, for the commands read
 * after it, as Redis applies HELLO before it reads on): `req` is answered
 * and 1 returned. Otherwise (any other request, or a failed HELLO, which
 * changes nothing) returns 0: the caller answers `status`. */
int router_redis_auth_done(router_redis_t *rs, router_req_t *req, uint32_t status);

/* The codec to set on the client's connection. */
const kvs_codec_t *router_redis_codec(router_redis_t *rs);

/* The connection delivered a complete command (it is in rs's parser):
 * runs it as zero or one request of `cl`. */
void router_redis_command(router_redis_t *rs, router_client_t *cl);

/* Input ended with `err` (KVS_EPROTO: the parser's error; KVS_ELIMIT: the
 * input budget; KVS_ENOTLS / KVS_ETLSHELLO: plaintext on a TLS port or the
 * reverse): writes the error reply Redis would give into `req`.
 * `unauth_max`: the request size limit of a client that has not
 * authenticated (KVS_AUTH_UNAUTH_FRAME), or 0 when it has. */
void router_redis_input_error(router_redis_t *rs, router_req_t *req, int err, size_t unauth_max);

/* Appends the RESP reply for `req` to `out`, given the kvs answer payload
 * (an encoded CommandResponse). Returns 0 or -ENOMEM. */
int router_redis_answer(router_redis_t *rs, router_req_t *req, const uint8_t *payload, size_t len,
                        kvs_buf_t *out);

/* A RESP DEL, UNLINK or EXISTS of several keys runs as one request per key,
 * consecutive in the client's FIFO (router_req_t.rfold): each part's reply
 * is folded into the last one's, which replies for the whole command
 * (router_redis_fold). */
enum { ROUTER_FOLD_NONE = 0, ROUTER_FOLD_PART, ROUTER_FOLD_LAST };

/* Folds the reply `reply[0..len)` (RESP, as the part's own command would
 * have got it) of `req`, a part of a several-key command; for its last
 * part, appends the command's reply to `out`. Returns 0 or -ENOMEM. */
int router_redis_fold(router_redis_t *rs, router_req_t *req, const uint8_t *reply, size_t len,
                      kvs_buf_t *out);

/* The reply to a connection refused at limits.max_clients. */
extern const char router_redis_too_many_clients[];

/* Cursor registry for HSCAN (router-wide): Redis cursors are numbers, kvs
 * cursors are bytes, so the router keeps the bytes and hands out a number.
 * Bounded: the oldest of ROUTER_REDIS_CURSORS entries is forgotten first. */
void router_redis_cursors_free(router_t *r);

#endif
