/*
 * router_send: sending one part of a request to a replica of its shard,
 * and sending a read again to another replica when the first one failed
 * it (router_replica.h has the policy; this module does the sending).
 */
#ifndef ROUTER_SEND_H
#define ROUTER_SEND_H

#include "router.h"

/* Sends part `part` of `req` to a replica of `shard` (msg packed, or the
 * raw payload), trying the next replica at once when a link refuses it
 * (down: nothing was sent). `retryable`: a read that may be sent again,
 * whose bytes `t` then keeps. When no replica takes it, the part fails
 * through router_route_reply (503 naming the shard; a frame larger than
 * limits.max_frame, which no link sends, 413 for a read). */
void router_send_part(router_t *r, router_req_t *req, router_try_t *t, uint32_t part,
                      uint32_t shard, const ProtobufCMessage *msg, const uint8_t *raw,
                      size_t rawlen, int retryable);

/* Part `part` of `req`, last sent as `t` says, got its answer (payload)
 * or failed (`failure`, as router_link_reply_cb). Notes how the replica
 * did; for a retryable read that failed there (link loss, timeout, 503,
 * an answer larger than limits.max_frame: a replica with a larger one, or
 * a peer that is not a worker), sends it to another replica when one is
 * left and the budget allows:
 * returns 1 then (the answer will come again), else 0 (use this one). */
int router_send_answered(router_t *r, router_req_t *req, router_try_t *t, uint32_t part,
                         const uint8_t *payload, size_t len, const char *failure);

/* Part `t` is answered, failed or going elsewhere: its units (t->cost)
 * come off the link it was on, and when that brings the link below
 * ROUTER_SHARD_CAP the shard's waiters are told (router_route_cap_changed).
 * Once only: a part not counted on a link is left as it is. */
void router_send_discharge(router_t *r, router_try_t *t);

/* Write part `t` of `req` is answered or failed: it no longer counts among
 * its session's writes in flight to its shard (router_session_t.wshard). */
void router_send_wshard_done(router_req_t *req, router_try_t *t);

/* Whether `req`'s session has writes in flight to `shard` (one with
 * replicas) on another replica than links[link] (-1: none would take it):
 * a write sent there could reach the topic before them. */
int router_send_wshard_other(const router_t *r, const router_req_t *req, uint32_t shard, int link);

/* Where the choice of a replica for a part of `req` starts
 * (router_replica_pick): -1 for a `retryable` read (the next in turn);
 * for anything else the connection's own replica, so that its pipelined
 * writes to a shard reach the topic in the order it sent them (two
 * replicas would race to produce them). */
int64_t router_send_start(const router_req_t *req, int retryable);

/* Why link `l` of `shard` refused a request (router_link_send's error
 * `rc`: down, overloaded with limits.client_output bytes of requests, or
 * KVS_ETOOBIG: a frame larger than limits.max_frame),
 * as a 503's message that says what to do; `who` (may be "") is appended
 * to the first clause. Writes at most `n` bytes of why, NUL included. */
void router_send_refused(uint32_t shard, int rc, const router_link_t *l, const char *who, char *why,
                         size_t n);

/* The status of an encoded CommandResponse (0 when it has none first). */
uint32_t router_send_status(const uint8_t *payload, size_t len);

#endif
