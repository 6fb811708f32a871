/*
 * test_kafka_conf: node_kafka builds a worker's librdkafka configuration:
 * kvs's settings, then kafka.properties, which win; a refused value is
 * named unless its key may hold a secret; client ids name node and shard.
 * And it ends a client within a bound: a close librdkafka holds up is left
 * running after it. librdkafka's own log lines reach kvs's log scrubbed of
 * secrets, warnings at most one a second.
 */
#include "kvs_log.h"
#include "kvs_test.h"
#include "node_kafka.h"
#include "node_produce.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

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

KVS_TEST(librdkafka_lines_are_scrubbed_and_warnings_rate_limited)
{
    kvs_config_t *cfg = load("kafka:\n  properties: {sasl.password: \"hunter22\"}\n");
    kvs_log_init("node", 0, KVS_LOG_DEBUG);
    static _Atomic long last_warn;
    struct timespec ts;
    /* Not at the turn of a second: the two warnings below share one. */
    do {
        clock_gettime(CLOCK_MONOTONIC, &ts);
    } while (ts.tv_nsec > 800000000L);
    kvs_capture_t c;
    kvs_capture_start(&c);
    node_kafka_log(&last_warn, cfg, "producer ", 4, "FAIL", "login hunter22 refused");
    node_kafka_log(&last_warn, cfg, "producer ", 3, "FAIL", "second hunter22");
    node_kafka_log(&last_warn, cfg, "producer ", 6, "STATE", "info hunter22 passes");
    node_kafka_log(&last_warn, NULL, "", 7, "DBG", "no config");
    char *text = kvs_capture_end(&c, NULL);
    CHECK(strstr(text, "hunter22") == NULL);
    CHECK_CONTAINS(text, "librdkafka producer FAIL: login ******** refused");
    CHECK(strstr(text, "second") == NULL); /* the second warning of that second */
    CHECK_CONTAINS(text, "librdkafka producer STATE: info ******** passes");
    CHECK_CONTAINS(text, "librdkafka DBG: no config");
    free(text);
    kvs_config_free(cfg);
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

static void no_delivery(void *arg, const node_delivery_t *d)
{
    (void)arg;
    (void)d;
}

static void no_fatal(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

/* The producer of writes names the bound topics to the brokers at once
 * (librdkafka asks where their partitions lead): with librdkafka's
 * default for producers, brokers that create topics on demand would
 * create a bound topic that does not exist (with their default partition
 * count), or one deleted to be created again. kafka.properties may still
 * allow it. */
KVS_TEST(producer_never_asks_brokers_to_create_topics)
{
    static const char *yamls[][2] = {
        {"kafka:\n  brokers: \"127.0.0.1:1\"\n  bindings:\n    - {topic: t, table: t}\n"
         "  properties: {log_level: \"0\"}\n",
         "false"},
        {"kafka:\n  brokers: \"127.0.0.1:1\"\n  bindings:\n    - {topic: t, table: t}\n"
         "  properties: {allow.auto.create.topics: \"true\", log_level: \"0\"}\n",
         "true"},
    };
    for (size_t i = 0; i < sizeof(yamls) / sizeof(yamls[0]); i++) {
        kvs_config_t *cfg = load(yamls[i][0]);
        uv_loop_t loop;
        CHECK_EQ(uv_loop_init(&loop), 0);
        node_produce_opts_t o = {.loop = &loop,
                                 .cfg = cfg,
                                 .shard = 0,
                                 .on_delivery = no_delivery,
                                 .on_fatal = no_fatal};
        node_produce_t *pr = NULL;
        char err[512] = "", v[16];
        size_t n = sizeof(v);
        CHECK_EQ(node_produce_start(&o, &pr, err, sizeof(err)), 0);
        CHECK_EQ(rd_kafka_conf_get(rd_kafka_conf(node_produce_kafka(pr)),
                                   "allow.auto.create.topics", v, &n),
                 RD_KAFKA_CONF_OK);
        CHECK(strcmp(v, yamls[i][1]) == 0);
        node_produce_stop(pr);
        CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
        node_produce_free(pr);
        CHECK_EQ(uv_loop_close(&loop), 0);
        kvs_config_free(cfg);
    }
}

/* A consumer of group "kvs-test" whose brokers cannot be reached. */
static rd_kafka_t *consumer(const char *session_timeout_ms)
{
    static const char *props[][2] = {
        {"bootstrap.servers", "127.0.0.1:1"}, /* nothing listens */
        {"group.id", "kvs-test"},
        {"log_level", "0"},
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char why[256];
    for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++)
        CHECK_EQ(rd_kafka_conf_set(conf, props[i][0], props[i][1], why, sizeof(why)),
                 RD_KAFKA_CONF_OK);
    CHECK_EQ(rd_kafka_conf_set(conf, "session.timeout.ms", session_timeout_ms, why, sizeof(why)),
             RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    CHECK(rk != NULL);
    return rk;
}

static double ms_since(uint64_t t0)
{
    return (double)(uv_hrtime() - t0) / 1e6;
}

KVS_TEST(destroy_within_the_bound_frees_the_client)
{
    rd_kafka_t *rk = consumer("45000");
    uint64_t t0 = uv_hrtime();
    CHECK_EQ(node_kafka_destroy(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE, 5000, "consumer"), 0);
    CHECK(ms_since(t0) < 5000);
    CHECK(!node_kafka_left_running());
    CHECK_EQ(rd_kafka_thread_cnt(), 0);
}

/* A consumer whose close waits: an offset commit waits for a coordinator
 * (none can be found) up to session.timeout.ms, and the close for it. */
static rd_kafka_t *held_up_consumer(void)
{
    rd_kafka_t *rk = consumer("2500");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, "t", 0)->offset = 5;
    CHECK_EQ(rd_kafka_commit(rk, l, 1), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(l);
    return rk;
}

KVS_TEST(destroy_held_up_by_a_commit_is_left_after_the_bound)
{
    rd_kafka_t *rk = held_up_consumer(), *rk2 = held_up_consumer();
    uint64_t t0 = uv_hrtime();
    CHECK_EQ(node_kafka_destroy(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE, 300, "consumer"),
             -ETIMEDOUT);
    double took = ms_since(t0);
    CHECK(took >= 290 && took < 2000);
    CHECK(node_kafka_left_running());
    CHECK(rd_kafka_thread_cnt() > 0); /* still closing, as told */
    /* The clients share the budget: the first used it all up. */
    t0 = uv_hrtime();
    CHECK_EQ(node_kafka_destroy(rk2, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE, 300, "consumer"),
             -ETIMEDOUT);
    CHECK(ms_since(t0) < 250);
    /* It ends by itself once the commit times out. */
    for (int i = 0; i < 100 && rd_kafka_thread_cnt() > 0; i++)
        usleep(100 * 1000);
    CHECK_EQ(rd_kafka_thread_cnt(), 0);
}

KVS_TEST_MAIN(KVS_CASE(properties_win_over_defaults),
              KVS_CASE(refused_value_is_named_with_its_client),
              KVS_CASE(refused_secret_is_never_shown), KVS_CASE(client_ids_name_node_and_shard),
              KVS_CASE(librdkafka_lines_are_scrubbed_and_warnings_rate_limited),
              KVS_CASE(producer_never_asks_brokers_to_create_topics),
              KVS_CASE(destroy_within_the_bound_frees_the_client),
              KVS_CASE(destroy_held_up_by_a_commit_is_left_after_the_bound))
