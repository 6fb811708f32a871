/*
 * kvs_slowlog: the slow log, a bounded ring of the requests that took
 * longer than log.slow_threshold (like Redis's SLOWLOG).
 *
 * The log is a request hook (kvs_slowlog_hook): the router registers it at
 * AFTER_SEND (its duration is the whole time from receiving a request to
 * queueing its answer), a worker at EXECUTED (its service time). A fast
 * request costs one comparison; a slow one copies its command, table, key
 * count, client address and name and times into the oldest slot. The ring holds
 * log.slow_max entries (about 370 bytes each, allocated when the log is
 * configured); the newest evicts the oldest.
 *
 * Threads: the owner's loop thread only.
 */
#ifndef KVS_SLOWLOG_H
#define KVS_SLOWLOG_H

#include "kvs_hook.h"
#include "kvs_msg.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_SLOWLOG_DEFAULT_COUNT 10 /* entries a Slowlog with count 0 returns */
#define KVS_SLOWLOG_NAME 63          /* bytes of a client name an entry keeps */

typedef struct kvs_slowlog_entry_s {
    uint64_t id;     /* 1, 2, 3, ... never reused */
    int64_t time_us; /* when the request arrived, Unix time in microseconds */
    uint64_t duration_us;
    uint32_t command; /* CommandRequest case */
    uint32_t keys;
    uint32_t status;
    char table[KVS_MAX_TABLE + 1];
    char client[64];
    char client_name[KVS_SLOWLOG_NAME + 1]; /* cut to its first 60 bytes and "..." */
} kvs_slowlog_entry_t;

typedef struct kvs_slowlog_s {
    kvs_slowlog_entry_t *ring;
    uint32_t cap;  /* log.slow_max */
    uint32_t len;  /* entries kept */
    uint32_t head; /* slot of the next entry */
    uint64_t next_id;
    uint64_t threshold_ns; /* UINT64_MAX: off */
} kvs_slowlog_t;

/* Sets up an empty, unconfigured log (no memory). */
void kvs_slowlog_init(kvs_slowlog_t *s);

/* Applies log.slow_threshold (ms, KVS_SLOWLOG_OFF = off) and log.slow_max:
 * a smaller ring keeps the newest entries. Returns 0, or -ENOMEM (the log
 * is unchanged). */
int kvs_slowlog_configure(kvs_slowlog_t *s, uint64_t threshold_ms, uint32_t max);

/* Whether the log is on (its hook should be in the chain). */
int kvs_slowlog_on(const kvs_slowlog_t *s);

/* The hook (state = the log): notes `req` when req->now_ns -
 * req->received_ns passes the threshold (0: every request). Never stops a
 * request. */
uint32_t kvs_slowlog_hook(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req,
                          char *msg, size_t msglen);

/* Entry `i`, 0 being the newest, or NULL past the end. */
const kvs_slowlog_entry_t *kvs_slowlog_get(const kvs_slowlog_t *s, uint32_t i);

/* Empties the log (ids keep growing). */
void kvs_slowlog_reset(kvs_slowlog_t *s);

/* Fills ops->slowlog with the newest `count` entries (0: the default 10),
 * newest first, and ops->slowlog_len, in arena memory. Returns 0 or
 * -ENOMEM. */
int kvs_slowlog_answer(const kvs_slowlog_t *s, uint32_t count, kvs_arena_t *arena,
                       Kvs__OpsAnswer *ops);

/* Frees the ring. */
void kvs_slowlog_free(kvs_slowlog_t *s);

#endif
