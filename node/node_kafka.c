/*
 * node_kafka: see node_kafka.h. With node_ingest.c and node_produce.c, the
 * only files that include rdkafka.h.
 */
#include "node_kafka.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>

static int set_prop(rd_kafka_conf_t *conf, const char *k, const char *v, const char *client,
                    char *err, size_t errlen)
{
    char why[256];
    if (rd_kafka_conf_set(conf, k, v, why, sizeof(why)) == RD_KAFKA_CONF_OK)
        return 0;
    if (kvs_config_secret_key(k))
        snprintf(err, errlen,
                 "kafka property %s (for %s): librdkafka refused its value (not shown: it may be "
                 "a secret); see librdkafka's CONFIGURATION.md for what it accepts",
                 k, client);
    else
        snprintf(err, errlen, "kafka property %s=%s (for %s): %s", k, v, client, why);
    return -1;
}

rd_kafka_conf_t *node_kafka_conf(const node_kafka_prop_t *defaults, size_t n,
                                 const kvs_config_t *cfg, const char *client, char *err,
                                 size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = set_prop(conf, defaults[i].key, defaults[i].value, client, err, errlen);
    for (size_t i = 0; rc == 0 && i < cfg->n_kafka_properties; i++)
        rc = set_prop(conf, cfg->kafka_properties[i].key, cfg->kafka_properties[i].value, client,
                      err, errlen);
    if (rc != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

void node_kafka_client_id(const kvs_config_t *cfg, uint32_t shard, const char *role, char *out,
                          size_t len)
{
    snprintf(out, len, "kvs-%s%sshard-%u%s%s", cfg->node_name, cfg->node_name[0] ? "-" : "",
             shard, role[0] ? "-" : "", role);
}
