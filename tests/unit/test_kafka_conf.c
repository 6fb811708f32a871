/*
 * test_kafka_conf: node_kafka builds a worker's librdkafka configuration:
 * kvs's settings, then kafka.properties, which win; a refused value is
 * named unless its key may hold a secret; client ids name node and shard.
 */
#include "kvs_test.h"
#include "node_kafka.h"

#include <librdkafka/rdkafka.h>
#include <string.h>

static kvs_config_t *load(const char *yaml)
{
    kvs_config_t *cfg = NULL;
    char err[1024];
    int rc = kvs_config_parse("<test>", yaml, strlen(yaml), &cfg, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "config: %s\n", err);
    CHECK_EQ(rc, 0);
    return cfg;
}

static const node_kafka_prop_t defaults[] = {
    {"linger.ms", "0"},
    {"client.id", "kvs-test"},
};

KVS_TEST(properties_win_over_defaults)
{
    kvs_config_t *cfg = load("kafka:\n  properties: {linger.ms: \"7\"}\n");
    char err[512] = "";
    rd_kafka_conf_t *conf = node_kafka_conf(defaults, 2, cfg, "the producer", err, sizeof(err));
    CHECK(conf != NULL);
    char v[64];
    size_t n = sizeof(v);
    CHECK_EQ(rd_kafka_conf_get(conf, "linger.ms", v, &n), RD_KAFKA_CONF_OK);
    CHECK(strcmp(v, "7") == 0);
    n = sizeof(v);
    CHECK_EQ(rd_kafka_conf_get(conf, "client.id", v, &n), RD_KAFKA_CONF_OK);
    CHECK(strcmp(v, "kvs-test") == 0);
    rd_kafka_conf_destroy(conf);
    kvs_config_free(cfg);
}

KVS_TEST(refused_value_is_named_with_its_client)
{
    kvs_config_t *cfg = load("kafka:\n  properties: {fetch.wait.max.ms: \"banana\"}\n");
    char err[512] = "";
    CHECK(node_kafka_conf(defaults, 2, cfg, "the consumer", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "kafka property fetch.wait.max.ms=banana (for the consumer)") != NULL);
    kvs_config_free(cfg);
}

KVS_TEST(refused_secret_is_never_shown)
{
    static const char *const keys[] = {"sasl.kerberos.min.time.before.relogin",
                                       "ssl.key.nonexistent", "my.custom.password"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char yaml[256];
        snprintf(yaml, sizeof(yaml), "kafka:\n  properties: {%s: \"hunter2-xyzzy\"}\n", keys[i]);
        kvs_config_t *cfg = load(yaml);
        char err[512] = "";
        CHECK(node_kafka_conf(defaults, 2, cfg, "the producer of writes", err, sizeof(err)) ==
              NULL);
        CHECK(strstr(err, keys[i]) != NULL);
        CHECK(strstr(err, "not shown: it may be a secret") != NULL);
        CHECK(strstr(err, "hunter2") == NULL);
        kvs_config_free(cfg);
    }
}

KVS_TEST(client_ids_name_node_and_shard)
{
    kvs_config_t *cfg = load("kafka: {}\n");
    char id[128];
    node_kafka_client_id(cfg, 3, "", id, sizeof(id));
    CHECK(strcmp(id, "kvs-shard-3") == 0);
    node_kafka_client_id(cfg, 3, "writer", id, sizeof(id));
    CHECK(strcmp(id, "kvs-shard-3-writer") == 0);
    kvs_config_free(cfg);
    cfg = load("node: {name: b-2}\ncluster:\n  shards: 1\n  nodes:\n"
               "    - {name: b-2, address: \"127.0.0.1:9700\", shards: [0]}\n");
    node_kafka_client_id(cfg, 0, "writer", id, sizeof(id));
    CHECK(strcmp(id, "kvs-b-2-shard-0-writer") == 0);
    kvs_config_free(cfg);
}

KVS_TEST_MAIN(KVS_CASE(properties_win_over_defaults), KVS_CASE(refused_value_is_named_with_its_client),
              KVS_CASE(refused_secret_is_never_shown), KVS_CASE(client_ids_name_node_and_shard))
