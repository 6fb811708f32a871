/*
 * node_kafka: a librdkafka client configuration as a worker builds it, for
 * its consumer (node_ingest) and its producer of writes (node_produce): the
 * settings kvs ships with, then the user's kafka.properties, which win.
 *
 * A value librdkafka refuses is named in the error, unless its key may hold
 * a secret (kvs_config_secret_key: passwords, keys): those are never
 * written anywhere.
 *
 * And the end of such a client, bounded in time (node_kafka_destroy).
 */
#ifndef NODE_KAFKA_H
#define NODE_KAFKA_H

#include "kvs_config.h"

#include <stddef.h>
#include <stdint.h>

struct rd_kafka_conf_s;  /* rdkafka.h's rd_kafka_conf_t */
struct rd_kafka_s;       /* rdkafka.h's rd_kafka_t */
struct rd_kafka_queue_s; /* rdkafka.h's rd_kafka_queue_t */

typedef struct node_kafka_prop_s {
    const char *key;
    const char *value;
} node_kafka_prop_t;

/* A new configuration: defaults[0..n) and then cfg's kafka.properties.
 * `client` names the client in errors ("the consumer", ...). Returns NULL
 * with err filled when a property is refused. */
struct rd_kafka_conf_s *node_kafka_conf(const node_kafka_prop_t *defaults, size_t n,
                                        const kvs_config_t *cfg, const char *client, char *err,
                                        size_t errlen);

/* Overwrites with '*' every occurrence in `line` of the value of a secret
 * kafka.properties key (kvs_config_secret_key; values of 4 bytes and
 * more). librdkafka redacts the properties it deems sensitive in what it
 * logs, not every key kvs counts as a secret (sasl.kerberos.principal, say,
 * is dumped as it is): every text of librdkafka's that kvs logs, from its
 * consumer or its producer, goes through here first. Safe on librdkafka's
 * threads: kafka.properties never changes while the process runs. */
void node_kafka_scrub(const kvs_config_t *cfg, char *line);

/* Logs a line librdkafka logs (its log_cb, on its threads) through
 * kvs_log, prefixed "librdkafka <client><fac>: " (client "" or
 * "producer "), its secrets scrubbed (cfg NULL: none to scrub). While a
 * broker is down librdkafka logs every reconnect attempt: at most one
 * warning or error a second gets through, per `last_warn` (one per client
 * kind; a racy but harmless check: worst case two lines). */
void node_kafka_log(_Atomic long *last_warn, const kvs_config_t *cfg, const char *client, int level,
                    const char *fac, const char *buf);

/* The client.id of shard `shard`'s client `role` ("" or "writer"):
 * kvs-[<node.name>-]shard-<N>[-<role>], so a broker's logs and quotas name
 * the node and shard. */
void node_kafka_client_id(const kvs_config_t *cfg, uint32_t shard, const char *role, char *out,
                          size_t len);

/* How long a worker's stop waits for its Kafka clients to close, all of
 * them together: well within the router's stop grace for a worker (10 s). */
#define NODE_KAFKA_CLOSE_MS 3000

/* Has queue `q` write a byte to pipe end `fd` when events arrive
 * (rd_kafka_queue_io_event_enable), and writes one now. librdkafka writes
 * only when the queue goes from empty to not empty: an event queued
 * before this (the brokers down as the client started: an error within
 * its first milliseconds) would keep it from ever writing, and the queue
 * would never be served again (a producer's delivery reports: writes
 * answered "no acknowledgement" for good while Kafka took them). The
 * byte of kvs's own has the queue served once. Returns 0 or -errno. */
int node_kafka_queue_pipe(struct rd_kafka_queue_s *q, int fd);

/* rd_kafka_destroy_flags(rk, flags), waiting at most timeout_ms from the
 * process's first call (the clients share that budget: a stop closes them
 * one after the other, so the second gets what the first left). A
 * consumer's close waits for its consumer group's offset commits, and
 * librdkafka bounds that wait only by session.timeout.ms (45 s by default:
 * a commit waiting for a coordinator during a Kafka outage) or
 * socket.timeout.ms (a coordinator that does not answer), longer than a
 * worker's stop may take. Returns 0 once rk is destroyed, or -ETIMEDOUT:
 * rk then goes on closing in a thread of its own, whose callbacks (log_cb)
 * may still use the client's opaque, so the caller keeps what they use
 * allocated, and the process leaves with _exit once its own state is safe
 * (node_kafka_left_running tells). `client` names rk in the warning. */
int node_kafka_destroy(struct rd_kafka_s *rk, int flags, uint64_t timeout_ms, const char *client);

/* Whether node_kafka_destroy left a client closing. */
int node_kafka_left_running(void);

#endif
