/*
 * node_kafka: a librdkafka client configuration as a worker builds it, for
 * its consumer (node_ingest) and its producer of writes (node_produce): the
 * settings kvs ships with, then the user's kafka.properties, which win.
 *
 * A value librdkafka refuses is named in the error, unless its key may hold
 * a secret (kvs_config_secret_key: passwords, keys): those are never
 * written anywhere.
 */
#ifndef NODE_KAFKA_H
#define NODE_KAFKA_H

#include "kvs_config.h"

#include <stddef.h>

struct rd_kafka_conf_s; /* rdkafka.h's rd_kafka_conf_t */

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

/* The client.id of shard `shard`'s client `role` ("" or "writer"):
 * kvs-[<node.name>-]shard-<N>[-<role>], so a broker's logs and quotas name
 * the node and shard. */
void node_kafka_client_id(const kvs_config_t *cfg, uint32_t shard, const char *role, char *out,
                          size_t len);

#endif
