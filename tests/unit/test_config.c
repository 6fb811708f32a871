/*
 * test_config: kvs_config loads config.yaml into a kvs_config_t with every
 * default, refuses bad files with "file:line:column: message", and parses
 * sizes and durations. Messages are checked exactly (they are the user
 * interface), and so are their positions.
 */
#include "kvs_config.h"
#include "kvs_err.h"
#include "kvs_test.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

static char err[512];

/* Parses `text` as "config.yaml"; expects success. */
static kvs_config_t *parse_ok(const char *text)
{
    kvs_config_t *cfg = NULL;
    int rc = kvs_config_parse("config.yaml", text, strlen(text), &cfg, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "unexpected error: %s\n", err);
    CHECK_EQ(rc, 0);
    CHECK(cfg != NULL);
    return cfg;
}

/* Parses `text` as "config.yaml"; expects KVS_ECONFIG and exactly `msg`. */
static void parse_fails(const char *text, const char *msg)
{
    kvs_config_t *cfg = (kvs_config_t *)&cfg; /* must be reset to NULL */
    int rc = kvs_config_parse("config.yaml", text, strlen(text), &cfg, err, sizeof(err));
    CHECK_EQ(rc, KVS_ECONFIG);
    CHECK(cfg == NULL);
    CHECK_STR(err, msg);
}

static void check_defaults(const kvs_config_t *c)
{
    CHECK_STR(c->data_dir, "./data");
    CHECK_EQ(c->shards, 4);
    CHECK_EQ(c->partitions, 64);
    CHECK_STR(c->router_listen, "127.0.0.1:9527");
    CHECK_STR(c->node_listen, "");
    CHECK_EQ(c->sync, KVS_SYNC_BATCH);
    CHECK_EQ(c->sync_interval_ms, 1000);
    CHECK_EQ(c->map_size, 1ull << 30);
    CHECK_EQ(c->max_tables, 256);
    CHECK_EQ(c->max_keys, 250000);
    CHECK_EQ(c->max_frame, 4ull << 20);
    CHECK_EQ(c->client_output, 64ull << 20);
    CHECK_EQ(c->output_buffers, 1ull << 30);
    CHECK_STR(c->kafka_brokers, "");
    CHECK_STR(c->kafka_group_id, "kvs");
    CHECK_EQ(c->kafka_max_lag, 10000);
    CHECK_EQ(c->n_bindings, 0);
    CHECK(c->bindings == NULL);
    CHECK_EQ(c->n_kafka_properties, 0);
    CHECK(c->kafka_properties == NULL);
    CHECK_STR(c->log_level, "info");
    CHECK_EQ(c->log_format, KVS_LOG_TEXT);
    CHECK_EQ(c->router_ready_timeout_ms, 30000);
    CHECK_EQ(c->router_liveness_timeout_ms, 10000);
    CHECK_EQ(c->router_processes, 0); /* auto */
    CHECK(!c->tls_router.enabled && !c->tls_node.enabled && !c->tls_link.enabled);
    CHECK_EQ(c->tls_router.client_cert, KVS_CLIENT_CERT_NONE);
    CHECK_EQ(c->tls_node.client_cert, KVS_CLIENT_CERT_REQUIRE);
    CHECK_EQ(c->tls_link.verify_host, 1);
    CHECK_EQ(c->tls_min_version, 0);
    CHECK_EQ(c->tls_max_version, 1);
    CHECK_EQ(c->n_users, 0);
    CHECK_EQ(c->auth_failures, 3);
    CHECK_EQ(c->auth_failures_per_minute, 20);
}

KVS_TEST(defaults_from_empty_string)
{
    kvs_config_t *c = parse_ok("");
    check_defaults(c);
    CHECK_STR(c->path, "<string>");
    kvs_config_free(c);
}

KVS_TEST(comments_and_empty_sections_are_defaults)
{
    static const char *const texts[] = {
        "# nothing but comments\n\n   # indented comment\n",
        "---\n",
        "~\n",
        "cluster:\n  # shards: 8\nkafka:\n  bindings: []\n  properties: {}\nlog: ~\n",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        kvs_config_t *c = parse_ok(texts[i]);
        check_defaults(c);
        kvs_config_free(c);
    }
}

static const char full_yaml[] = "# kvs node configuration\n"
                                "data_dir: /var/lib/kvs       # shard-<id>/ lives here\n"
                                "cluster:\n"
                                "  shards: 8\n"
                                "  partitions: 128\n"
                                "router:\n"
                                "  listen: \"[::1]:7000\"\n"
                                "node:\n"
                                "  listen: 0.0.0.0:7100\n"
                                "storage:\n"
                                "  sync: full\n"
                                "  sync_interval: 250ms\n"
                                "  map_size: 2GiB\n"
                                "  max_tables: 1000\n"
                                "limits:\n"
                                "  max_frame: 16MiB\n"
                                "kafka:\n"
                                "  brokers: \"k1:9092,k2:9092\"\n"
                                "  group_id: kvs-prod\n"
                                "  max_lag: 0\n"
                                "  bindings:\n"
                                "    - {topic: users, table: users, format: raw, partitions: 12}\n"
                                "    - topic: events.v1\n"
                                "      table: events\n"
                                "      format: value\n"
                                "    - {topic: names, table: names}\n"
                                "  properties:\n"
                                "    security.protocol: ssl\n"
                                "    fetch.wait.max.ms: 50\n"
                                "    enable.partition.eof: false\n"
                                "log:\n"
                                "  level: debug\n";

KVS_TEST(full_file_parses)
{
    kvs_config_t *c = parse_ok(full_yaml);
    CHECK_STR(c->data_dir, "/var/lib/kvs");
    CHECK_EQ(c->shards, 8);
    CHECK_EQ(c->partitions, 128);
    CHECK_STR(c->router_listen, "[::1]:7000");
    CHECK_STR(c->node_listen, "0.0.0.0:7100");
    CHECK_EQ(c->sync, KVS_SYNC_FULL);
    CHECK_EQ(c->sync_interval_ms, 250);
    CHECK_EQ(c->map_size, 2ull << 30);
    CHECK_EQ(c->max_tables, 1000);
    CHECK_EQ(c->max_frame, 16ull << 20);
    CHECK_STR(c->kafka_brokers, "k1:9092,k2:9092");
    CHECK_STR(c->kafka_group_id, "kvs-prod");
    CHECK_EQ(c->kafka_max_lag, 0);
    CHECK_EQ(c->n_bindings, 3);
    CHECK_STR(c->bindings[0].topic, "users");
    CHECK_STR(c->bindings[0].table, "users");
    CHECK_EQ(c->bindings[0].format, KVS_FORMAT_RAW);
    CHECK_STR(c->bindings[1].topic, "events.v1");
    CHECK_STR(c->bindings[1].table, "events");
    CHECK_EQ(c->bindings[1].format, KVS_FORMAT_VALUE);
    CHECK_STR(c->bindings[2].topic, "names");
    CHECK_EQ(c->bindings[2].format, KVS_FORMAT_RAW);
    CHECK_EQ(c->bindings[0].partitions, 12);
    CHECK_EQ(c->bindings[1].partitions, 0);
    CHECK_EQ(kvs_config_table_partitions(c, "users"), 12);
    CHECK_EQ(kvs_config_table_partitions(c, "events"), 128);
    CHECK_EQ(kvs_config_table_partitions(c, "unbound"), 128);
    CHECK_EQ(c->n_kafka_properties, 3);
    CHECK_STR(c->kafka_properties[0].key, "security.protocol");
    CHECK_STR(c->kafka_properties[0].value, "ssl");
    CHECK_STR(c->kafka_properties[1].key, "fetch.wait.max.ms");
    CHECK_STR(c->kafka_properties[1].value, "50");
    CHECK_STR(c->kafka_properties[2].key, "enable.partition.eof");
    CHECK_STR(c->kafka_properties[2].value, "false");
    CHECK_STR(kvs_config_kafka_property(c, "fetch.wait.max.ms"), "50");
    CHECK(kvs_config_kafka_property(c, "fetch.wait.max") == NULL);
    CHECK_STR(c->log_level, "debug");
    kvs_config_free(c);
}

KVS_TEST(unknown_top_level_key)
{
    parse_fails("data_dir: /x\nshards: 4\n", "config.yaml:2:1: unknown key \"shards\"");
    /* A dotted key is not a shorthand for a nested one. */
    parse_fails("cluster.shards: 4\n", "config.yaml:1:1: unknown key \"cluster.shards\"");
}

KVS_TEST(unknown_nested_key)
{
    parse_fails("cluster:\n"
                "    shards: 4\n"
                "    shard: 4\n",
                "config.yaml:3:5: unknown key \"shard\" in \"cluster\"");
    parse_fails("storage:\n  sync: full\n  fsync: yes\n",
                "config.yaml:3:3: unknown key \"fsync\" in \"storage\"");
}

KVS_TEST(duplicate_key)
{
    parse_fails("cluster:\n  shards: 4\n  shards: 8\n",
                "config.yaml:3:3: duplicate key \"shards\" in \"cluster\" (first at line 2)");
    parse_fails("log: {level: info}\ncluster: {}\nlog: {level: debug}\n",
                "config.yaml:3:1: duplicate key \"log\" (first at line 1)");
}

KVS_TEST(shards_range_and_type)
{
    parse_fails("cluster:\n  shards: 0\n",
                "config.yaml:2:11: cluster.shards must be an integer from 1 to 1024 (got \"0\")");
    parse_fails(
        "cluster:\n  shards: 1025\n",
        "config.yaml:2:11: cluster.shards must be an integer from 1 to 1024 (got \"1025\")");
    parse_fails("cluster:\n  shards: -1\n",
                "config.yaml:2:11: cluster.shards must be an integer from 1 to 1024 (got \"-1\")");
    /* YAML 1.1 reads 010 as 8: the file's author may have meant either. */
    parse_fails("cluster:\n  shards: 010\n",
                "config.yaml:2:11: cluster.shards: \"010\" starts with 0, which YAML 1.1 reads as "
                "an octal number; write it without the leading zero");
    /* So in lists too: "08" is not out of range, it is written oddly. */
    parse_fails("cluster: {shards: 2, nodes: [{name: a, address: \"h:1\", shards: [00, 1]}]}\n",
                "config.yaml:1:65: cluster.nodes[0].shards: \"00\" starts with 0, which YAML 1.1 "
                "reads as an octal number; write it without the leading zero");
    parse_fails("cluster: {shards: 2, remote: [{shard: 01, address: \"h:1\"}]}\n",
                "config.yaml:1:39: cluster.remote[0].shard: \"01\" starts with 0, which YAML 1.1 "
                "reads as an octal number; write it without the leading zero");
    parse_fails("kafka: {brokers: \"h:1\", bindings: [{topic: t, table: t, format: raw, "
                "partitions: 08}]}\n",
                "config.yaml:1:82: kafka.bindings[0].partitions: \"08\" starts with 0, which YAML "
                "1.1 reads as an octal number; write it without the leading zero");
    parse_fails("cluster:\n  shards: {a: 1}\n",
                "config.yaml:2:11: cluster.shards: expected an integer, got a mapping");
    kvs_config_t *k = parse_ok("limits: {max_keys: 100000000}\n");
    CHECK_EQ(k->max_keys, 100000000);
    kvs_config_free(k);
    parse_fails("limits: {max_keys: 0}\n", "config.yaml:1:20: limits.max_keys must be an integer "
                                           "from 1 to 100000000 (got \"0\")");
    parse_fails("limits: {max_keys: 100000001}\n",
                "config.yaml:1:20: limits.max_keys must be an integer from 1 to 100000000 (got "
                "\"100000001\")");
    parse_fails("storage: {max_tables: 32001}\n",
                "config.yaml:1:23: storage.max_tables must be an integer from 1 to 32000 (got "
                "\"32001\")");
}

KVS_TEST(partitions_less_than_shards)
{
    parse_fails("data_dir: ./d\n"
                "cluster:\n"
                "  shards: 4\n"
                "  partitions: 2\n",
                "config.yaml:4:15: cluster.partitions (2) must be >= cluster.shards (4)");
    /* Defaulted partitions: point at shards and say the 64 was not written. */
    parse_fails("cluster:\n  shards: 128\n",
                "config.yaml:2:11: cluster.partitions (64, the default) must be >= "
                "cluster.shards (128)");
    kvs_config_t *c = parse_ok("cluster: {shards: 128, partitions: 128}\n");
    CHECK_EQ(c->partitions, 128);
    kvs_config_free(c);
}

KVS_TEST(bad_sync_enum)
{
    parse_fails("data_dir: ./d\n"
                "cluster:\n"
                "  shards: 4\n"
                "router:\n"
                "  listen: 127.0.0.1:1\n"
                "storage:\n"
                "  sync: fast\n",
                "config.yaml:7:9: storage.sync must be one of full, batch, none (got \"fast\")");
    kvs_config_t *c = parse_ok("storage: {sync: none}\n");
    CHECK_EQ(c->sync, KVS_SYNC_NONE);
    kvs_config_free(c);
}

KVS_TEST(bad_size_values)
{
    parse_fails("limits:\n  max_frame: 4 megs\n",
                "config.yaml:2:14: limits.max_frame: \"4 megs\" is not a size (write bytes, or a "
                "number with B, KiB, MiB, GiB, TiB, kB, MB, GB or TB, as in 4MiB)");
    parse_fails("limits:\n  max_frame: 2GiB\n",
                "config.yaml:2:14: limits.max_frame must be from 1KiB to 1GiB (got \"2GiB\")");
    parse_fails("limits:\n  max_frame: 1023\n",
                "config.yaml:2:14: limits.max_frame must be from 1KiB to 1GiB (got \"1023\")");
    parse_fails("limits:\n  max_frame: 04MiB\n",
                "config.yaml:2:14: limits.max_frame: \"04MiB\" starts with 0, which YAML 1.1 reads "
                "as an octal number; write it without the leading zero");
    parse_fails("storage:\n  map_size: 1000kB\n",
                "config.yaml:2:13: storage.map_size must be from 1MiB to 16TiB (the map grows "
                "by itself when full) (got \"1000kB\")");
    /* A map past the address space: every worker failed to open its
     * environment (ENOMEM) and was restarted for ever. */
    parse_fails("storage:\n  map_size: 100TiB\n",
                "config.yaml:2:13: storage.map_size must be from 1MiB to 16TiB (the map grows "
                "by itself when full) (got \"100TiB\")");
    parse_fails("storage:\n  map_size: 18446744073709551615\n",
                "config.yaml:2:13: storage.map_size must be from 1MiB to 16TiB (the map grows "
                "by itself when full) (got \"18446744073709551615\")");
    kvs_config_t *c = parse_ok("limits: {max_frame: 1GiB}\nstorage: {map_size: 1MiB}\n");
    CHECK_EQ(c->max_frame, 1ull << 30);
    CHECK_EQ(c->map_size, 1ull << 20);
    CHECK_EQ(c->client_output, 4ull << 30);  /* defaults grow with max_frame */
    CHECK_EQ(c->output_buffers, 4ull << 30); /* ... and with client_output */
    kvs_config_free(c);
    /* All clients' answers together must hold one client's bound. */
    parse_fails("limits:\n  client_output: 64MiB\n  output_buffers: 16MiB\n",
                "config.yaml:3:19: limits.output_buffers (16777216 bytes) must be at least "
                "limits.client_output (67108864 bytes), or one client within its own bound would "
                "have others closed");
    c = parse_ok("limits: {max_frame: 256KiB, client_output: 1MiB, output_buffers: 1MiB}\n");
    CHECK_EQ(c->output_buffers, 1ull << 20);
    kvs_config_free(c);
    c = parse_ok("storage: {map_size: 16TiB}\n");
    CHECK_EQ(c->map_size, 16ull << 40);
    kvs_config_free(c);
}

KVS_TEST(bad_duration_values)
{
    parse_fails("storage:\n  sync_interval: soon\n",
                "config.yaml:2:18: storage.sync_interval: \"soon\" is not a duration (write "
                "milliseconds, or a number with ms, s, m, h or d, as in 1s)");
    parse_fails("storage:\n  sync_interval: 0ms\n",
                "config.yaml:2:18: storage.sync_interval must be from 1ms to 1h (got \"0ms\")");
    parse_fails("storage:\n  sync_interval: 61m\n",
                "config.yaml:2:18: storage.sync_interval must be from 1ms to 1h (got \"61m\")");
    parse_fails("storage:\n  sync_interval: 2h\n",
                "config.yaml:2:18: storage.sync_interval must be from 1ms to 1h (got \"2h\")");
    kvs_config_t *c = parse_ok("storage: {sync_interval: 60m}\n");
    CHECK_EQ(c->sync_interval_ms, 3600000);
    kvs_config_free(c);
    c = parse_ok("storage: {sync_interval: 1h}\n"); /* the bound the message names parses */
    CHECK_EQ(c->sync_interval_ms, 3600000);
    kvs_config_free(c);
}

KVS_TEST(listen_addresses)
{
    parse_fails("router:\n  listen: localhost:0\n",
                "config.yaml:2:11: router.listen must be HOST:PORT or [IPV6]:PORT (got "
                "\"localhost:0\"): port must be 1-65535");
    parse_fails("router:\n  listen: \"::1:80\"\n",
                "config.yaml:2:11: router.listen must be HOST:PORT or [IPV6]:PORT (got "
                "\"::1:80\"): an IPv6 address must be in brackets, as in [::1]:9527");
    parse_fails("router:\n  listen: \":80\"\n",
                "config.yaml:2:11: router.listen must be HOST:PORT or [IPV6]:PORT (got "
                "\":80\"): missing host (use 0.0.0.0:PORT for every interface)");
    parse_fails("router: {listen: \"\"}\n", "config.yaml:1:18: router.listen must be HOST:PORT "
                                            "or [IPV6]:PORT (got \"\"): missing :PORT");
    parse_fails("node:\n  listen: myhost\n",
                "config.yaml:2:11: node.listen must be \"\", HOST:PORT or [IPV6]:PORT (got "
                "\"myhost\"): missing :PORT");
    /* Shard N listens on PORT+N: 65534 + 3 does not fit. */
    parse_fails("node:\n  listen: 0.0.0.0:65534\n",
                "config.yaml:2:11: node.listen port 65534 + highest shard id 3 is past 65535 "
                "(shard N listens on PORT+N)");
    /* Hosts are checked completely at load, not when first bound. */
    parse_fails("router:\n  listen: 300.1.1.1:9527\n",
                "config.yaml:2:11: router.listen must be HOST:PORT or [IPV6]:PORT (got "
                "\"300.1.1.1:9527\"): not a valid IPv4 address (four numbers 0-255, as in "
                "10.0.0.1)");
    parse_fails("router:\n  listen: \"[::g]:9527\"\n",
                "config.yaml:2:11: router.listen must be HOST:PORT or [IPV6]:PORT (got "
                "\"[::g]:9527\"): not a valid IPv6 address");
    parse_fails("router: {listen: \"my host:1\"}\n",
                "config.yaml:1:18: router.listen must be HOST:PORT or [IPV6]:PORT (got \"my "
                "host:1\"): spaces are not allowed");
    parse_fails("node:\n  listen: bad_-.example:7000\n",
                "config.yaml:2:11: node.listen must be \"\", HOST:PORT or [IPV6]:PORT (got "
                "\"bad_-.example:7000\"): a host name label must not start or end with '-'");
    parse_fails("router: {listen: \"unix:/tmp/r.sock\"}\n",
                "config.yaml:1:18: router.listen must be HOST:PORT or [IPV6]:PORT (got "
                "\"unix:/tmp/r.sock\"): a unix socket is not allowed here");
    kvs_config_t *c = parse_ok("router: {listen: \"[fe80::1]:1\"}\nnode: {listen: h:65532}\n");
    CHECK_STR(c->router_listen, "[fe80::1]:1");
    CHECK_STR(c->node_listen, "h:65532");
    kvs_config_free(c);
}

/* kafka.brokers goes to librdkafka as bootstrap.servers; its hosts are
 * checked at load like every other address. */
/* Parses `text`; expects KVS_ECONFIG with a message containing `part`. */
static void parse_fails_with(const char *text, const char *part)
{
    kvs_config_t *cfg = NULL;
    CHECK_EQ(kvs_config_parse("config.yaml", text, strlen(text), &cfg, err, sizeof(err)),
             KVS_ECONFIG);
    CHECK(cfg == NULL);
    CHECK_CONTAINS(err, part);
}

KVS_TEST(kafka_brokers_addresses)
{
    static const char *const good[] = {
        "k1:9092,k2:9092",
        "[::1]:9092",
        "[::1]",
        "kafka",
        "10.0.0.1",
        "PLAINTEXT://[::1]:9092, SSL://k2:9093",
        " k1:1 ,\t[2001:db8::5]:9092 ",
        "[fe80::1%eth0]:9092",
        "[::ffff:127.0.0.1]:9092",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char text[200];
        snprintf(text, sizeof(text), "kafka: {brokers: \"%s\"}\n", good[i]);
        kvs_config_t *c = parse_ok(text);
        CHECK_STR(c->kafka_brokers, good[i]);
        kvs_config_free(c);
    }
    parse_fails("kafka:\n  brokers: \"::1:9092\"\n",
                "config.yaml:2:12: kafka.brokers must be HOST[:PORT] or [IPV6][:PORT] entries "
                "separated by commas (got \"::1:9092\"): an IPv6 address must be in brackets, as "
                "in [::1]:9527");
    parse_fails_with("kafka:\n  brokers: \"k1:9092,2001:db8::1\"\n",
                     "(got \"2001:db8::1\"): an IPv6 address must be in brackets");
    parse_fails_with("kafka: {brokers: \"[::1]9092\"}\n", "(got \"[::1]9092\"): missing :PORT");
    parse_fails_with("kafka: {brokers: \"[::1\"}\n", "missing ']' after the IPv6 address");
    parse_fails_with("kafka: {brokers: \"k1:0\"}\n", "(got \"k1:0\"): port must be 1-65535");
    parse_fails_with("kafka: {brokers: \"300.1.1.1:9092\"}\n", "not a valid IPv4 address");
    parse_fails_with("kafka: {brokers: \"k1:9092,,k2:9092\"}\n", "(got \"\"): empty entry");
    parse_fails_with("kafka: {brokers: \"k1:9092,\"}\n", "(got \"\"): empty entry");
    parse_fails_with("kafka: {brokers: \"SSL://\"}\n", "(got \"SSL://\"): missing host");
    parse_fails_with("kafka: {brokers: \"unix:/tmp/k.sock\"}\n",
                     "a unix socket is not allowed here");
    /* At most KVS_MAX_BROKERS entries: the 64th is taken, the 65th named. */
    char many[64 * 16 + 64];
    size_t at = (size_t)snprintf(many, sizeof(many), "kafka: {brokers: \"");
    for (int i = 1; i <= KVS_MAX_BROKERS; i++)
        at += (size_t)snprintf(many + at, sizeof(many) - at, "%sk%d:9092", i > 1 ? "," : "", i);
    snprintf(many + at, sizeof(many) - at, "\"}\n");
    kvs_config_t *c = parse_ok(many);
    kvs_config_free(c);
    snprintf(many + at, sizeof(many) - at, ",k65:9092\"}\n");
    parse_fails_with(many, "(got \"k65:9092\"): more than 64 entries");
}

KVS_TEST(null_and_wrong_type_values)
{
    parse_fails("data_dir: ~\n", "config.yaml:1:11: data_dir: expected a string, got null");
    parse_fails("data_dir:\n", "config.yaml:1:10: data_dir: expected a string, got null");
    parse_fails("data_dir: \"\"\n", "config.yaml:1:11: data_dir must not be empty");
    parse_fails("data_dir: [a, b]\n", "config.yaml:1:11: data_dir: expected a string, got a list");
    /* A block scalar's newline made --print data_dir print two lines (the
     * start script then checked the lock of another directory). */
    parse_fails_with("data_dir: |\n  /tmp/x\n",
                     "data_dir must not contain control characters (byte 0x0a at offset 6; a "
                     "block scalar such as | ends its text with a newline)");
    parse_fails_with("tls:\n  cert: \"a\\rb.pem\"\n",
                     "tls.cert must not contain control characters (byte 0x0d at offset 1");
    parse_fails_with("kafka: {group_id: \"g\\x7f\"}\n", "byte 0x7f at offset 1");
    parse_fails("cluster: 4\n", "config.yaml:1:10: cluster: expected a mapping, got \"4\"");
    parse_fails("kafka:\n  group_id: \"\"\n", "config.yaml:2:13: kafka.group_id must not be empty");
    parse_fails("kafka:\n  max_lag: -1\n",
                "config.yaml:2:12: kafka.max_lag must be an integer from 0 to 4294967295 (got "
                "\"-1\")");
    /* Quoted "" is a string: Kafka off. */
    kvs_config_t *c = parse_ok("kafka: {brokers: \"\"}\n");
    CHECK_STR(c->kafka_brokers, "");
    kvs_config_free(c);
    /* A grant's pattern with a typo in a set (README, Security). */
    parse_fails_with("users: [{name: u, allow: {\"[![:alphanum:]]*\": read}}]\n",
                     "users[0].allow[\"[![:alphanum:]]*\"]: a set in it names a character class "
                     "there is none of");
}

KVS_TEST(log_levels)
{
    static const char *const ok[][2] = {
        {"debug", "debug"},     {"info", "info"},   {"warn", "warn"},
        {"warning", "warning"}, {"ERROR", "error"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char text[64];
        snprintf(text, sizeof(text), "log: {level: %s}\n", ok[i][0]);
        kvs_config_t *c = parse_ok(text);
        CHECK_STR(c->log_level, ok[i][1]);
        kvs_config_free(c);
    }
    parse_fails("log:\n  level: loud\n", "config.yaml:2:10: log.level must be one of debug, info, "
                                         "warn, error (got \"loud\")");
}

KVS_TEST(log_formats)
{
    static const struct {
        const char *text;
        kvs_log_format_t want;
    } ok[] = {{"text", KVS_LOG_TEXT}, {"json", KVS_LOG_JSON}, {"JSON", KVS_LOG_JSON}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char text[64];
        snprintf(text, sizeof(text), "log: {level: debug, format: %s}\n", ok[i].text);
        kvs_config_t *c = parse_ok(text);
        CHECK_EQ(c->log_format, ok[i].want);
        CHECK_STR(c->log_level, "debug");
        kvs_config_free(c);
    }
    parse_fails("log:\n  level: info\n  format: yaml\n",
                "config.yaml:3:11: log.format must be one of text, json (got \"yaml\")");
    parse_fails("log: {format: \"\"}\n",
                "config.yaml:1:15: log.format must be one of text, json (got \"\")");
    parse_fails("log: {format: [json]}\n",
                "config.yaml:1:15: log.format: expected a string, got a list");
    parse_fails("log: {format: json, format: text}\n",
                "config.yaml:1:21: duplicate key \"format\" in \"log\" (first at line 1)");
}

KVS_TEST(bindings_default_format_and_block_style)
{
    kvs_config_t *c = parse_ok("kafka:\n"
                               "  brokers: localhost:9092\n"
                               "  bindings:\n"
                               "    - topic: users\n"
                               "      table: users_t\n"
                               "    - topic: names\n"
                               "      table: names\n"
                               "      format: string\n");
    CHECK_EQ(c->n_bindings, 2);
    CHECK_STR(c->bindings[0].topic, "users");
    CHECK_STR(c->bindings[0].table, "users_t");
    CHECK_EQ(c->bindings[0].format, KVS_FORMAT_RAW);
    CHECK_STR(c->bindings[1].topic, "names");
    CHECK_EQ(c->bindings[1].format, KVS_FORMAT_STRING);
    kvs_config_free(c);
}

KVS_TEST(bindings_errors)
{
    parse_fails("kafka:\n  bindings:\n    - {topic: t, table: t, format: json}\n",
                "config.yaml:3:36: kafka.bindings[0].format must be one of raw, string, value "
                "(got \"json\")");
    parse_fails("kafka:\n  bindings:\n    - {topic: t}\n",
                "config.yaml:3:7: kafka.bindings[0]: missing \"table\"");
    parse_fails("kafka:\n  bindings:\n    - {table: t}\n",
                "config.yaml:3:7: kafka.bindings[0]: missing \"topic\"");
    parse_fails("kafka:\n  bindings:\n    - {topic: t, table: t, partition: 3}\n",
                "config.yaml:3:28: unknown key \"partition\" in \"kafka.bindings[0]\"");
    parse_fails("kafka:\n  bindings:\n    - {topic: t, table: t, partitions: 0}\n",
                "config.yaml:3:40: kafka.bindings[0].partitions must be the topic's partition "
                "count, 1 to 100000 (got \"0\")");
    parse_fails("kafka:\n  bindings:\n    - {topic: t, table: __kvs}\n",
                "config.yaml:3:25: kafka.bindings[0].table: table names must not start with "
                "\"__\" (reserved) (got \"__kvs\")");
    parse_fails("kafka:\n  bindings:\n    - {topic: \"\", table: t}\n",
                "config.yaml:3:15: kafka.bindings[0].topic: topic names must not be empty (got "
                "\"\")");
    parse_fails("kafka:\n  bindings:\n    - {topic: a b, table: t}\n",
                "config.yaml:3:15: kafka.bindings[0].topic: Kafka topic names use only letters, "
                "digits, '.', '_' and '-' (got \"a b\")");
    parse_fails("kafka:\n  bindings:\n    - {topic: t, topic: u, table: x}\n",
                "config.yaml:3:18: duplicate key \"topic\" in \"kafka.bindings[0]\" (first at "
                "line 3)");
    parse_fails("kafka:\n  bindings:\n    - users\n",
                "config.yaml:3:7: kafka.bindings[0]: expected a mapping with topic and table, "
                "got \"users\"");
    parse_fails("kafka:\n  bindings: {topic: t}\n",
                "config.yaml:2:13: kafka.bindings: expected a list of {topic, table, format}, got "
                "a mapping");
}

KVS_TEST(bindings_table_name_length)
{
    char text[512], name[202];
    memset(name, 'x', 201);
    name[201] = '\0';
    snprintf(text, sizeof(text), "kafka: {bindings: [{topic: t, table: %s}]}\n", name);
    kvs_config_t *c = NULL;
    CHECK_EQ(kvs_config_parse("config.yaml", text, strlen(text), &c, err, sizeof(err)),
             KVS_ECONFIG);
    CHECK_CONTAINS(err, "config.yaml:1:38: kafka.bindings[0].table: table names must be at "
                        "most 200 bytes");
    name[200] = '\0'; /* exactly 200 is fine */
    snprintf(text, sizeof(text), "kafka: {bindings: [{topic: t, table: %s}]}\n", name);
    c = parse_ok(text);
    CHECK_EQ(strlen(c->bindings[0].table), 200);
    kvs_config_free(c);
}

KVS_TEST(bindings_duplicates)
{
    parse_fails("kafka:\n"
                "  bindings:\n"
                "    - {topic: users, table: a}\n"
                "    - {topic: users, table: b}\n",
                "config.yaml:4:15: kafka.bindings[1].topic: topic \"users\" is already bound in "
                "kafka.bindings[0]");
    parse_fails("kafka:\n"
                "  bindings:\n"
                "    - {topic: t1, table: a}\n"
                "    - {topic: t2, table: a}\n",
                "config.yaml:4:26: kafka.bindings[1].table: table \"a\" is already bound to topic "
                "\"t1\" in kafka.bindings[0] (a table takes its partitions from one topic)");
}

KVS_TEST(kafka_properties)
{
    kvs_config_t *c = parse_ok("kafka:\n"
                               "  properties:\n"
                               "    socket.timeout.ms: 5000\n"
                               "    api.version.request: true\n"
                               "    client.id: \"kvs node\"\n");
    CHECK_EQ(c->n_kafka_properties, 3);
    CHECK_STR(c->kafka_properties[0].key, "socket.timeout.ms");
    CHECK_STR(c->kafka_properties[0].value, "5000");
    CHECK_STR(c->kafka_properties[1].key, "api.version.request");
    CHECK_STR(c->kafka_properties[1].value, "true");
    CHECK_STR(c->kafka_properties[2].key, "client.id");
    CHECK_STR(c->kafka_properties[2].value, "kvs node");
    kvs_config_free(c);
    parse_fails("kafka:\n  properties:\n    acks: [1, 2]\n",
                "config.yaml:3:11: kafka.properties.acks: expected a string, got a list");
    parse_fails("kafka:\n  properties:\n    acks: ~\n",
                "config.yaml:3:11: kafka.properties.acks: expected a string, got null");
    parse_fails(
        "kafka:\n  properties:\n    acks: all\n    acks: 1\n",
        "config.yaml:4:5: duplicate key \"acks\" in \"kafka.properties\" (first at line 3)");
    parse_fails("kafka:\n  properties: [acks]\n",
                "config.yaml:2:15: kafka.properties: expected a mapping of librdkafka "
                "properties, got a list");
}

/* Parses kafka.properties with one property `k` set to `v`; expects
 * success, or the error `msg` (positions: line 3, column 5 + len(k) + 2). */
static void kafka_file_property(const char *k, const char *v, const char *msg)
{
    char text[512];
    snprintf(text, sizeof(text), "kafka:\n  properties:\n    %s: \"%s\"\n", k, v);
    if (msg == NULL)
        kvs_config_free(parse_ok(text));
    else
        parse_fails(text, msg);
}

KVS_TEST(kafka_file_properties_are_checked)
{
    char dir[] = "/tmp/kvs-test-config-XXXXXX", fifo[64], pem[64], msg[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(fifo, sizeof(fifo), "%s/ca.pem", dir);
    snprintf(pem, sizeof(pem), "%s/key.pem", dir);
    CHECK_EQ(mkfifo(fifo, 0600), 0);
    FILE *f = fopen(pem, "w");
    CHECK(f != NULL);
    CHECK_EQ(fclose(f), 0);
    /* A FIFO would block librdkafka's open: refused with its line. */
    static const char *const files[] = {"ssl.ca.location",       "ssl.certificate.location",
                                        "ssl.key.location",      "ssl.crl.location",
                                        "ssl.keystore.location", "ssl.engine.location",
                                        "sasl.kerberos.keytab"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        int ca = i == 0;
        snprintf(msg, sizeof(msg),
                 "config.yaml:3:%zu: kafka.properties.%s %s: a FIFO, not a file%s: name %s",
                 strlen(files[i]) + 7, files[i], fifo, ca ? " or a directory" : "",
                 ca ? "a PEM file or a directory of CA certificates"
                    : "the file librdkafka is to read");
        kafka_file_property(files[i], fifo, msg);
        kafka_file_property(files[i], pem, NULL); /* a file is what they name */
    }
    /* A directory: only ssl.ca.location may name one. */
    kafka_file_property("ssl.ca.location", dir, NULL);
    snprintf(msg, sizeof(msg),
             "config.yaml:3:23: kafka.properties.ssl.key.location %s: a directory, not a file: "
             "name the file librdkafka is to read",
             dir);
    kafka_file_property("ssl.key.location", dir, msg);
    /* A device too. */
    kafka_file_property("ssl.certificate.location", "/dev/zero",
                        "config.yaml:3:31: kafka.properties.ssl.certificate.location /dev/zero: "
                        "a device, not a file: name the file librdkafka is to read");
    /* What does not stat is librdkafka's to report; "probe" is its own
     * word; other properties are not paths. */
    kafka_file_property("ssl.key.location", "/nonexistent/key.pem", NULL);
    kafka_file_property("ssl.ca.location", "probe", NULL);
    kafka_file_property("client.id", fifo, NULL);
    CHECK_EQ(unlink(fifo), 0);
    CHECK_EQ(unlink(pem), 0);
    CHECK_EQ(rmdir(dir), 0);
}

KVS_TEST(kafka_plugin_paths_are_checked)
{
    char dir[] = "/tmp/kvs-test-config-XXXXXX", lib[64], fifo[64], v[256], msg[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(lib, sizeof(lib), "%s/libmon.so", dir);
    snprintf(fifo, sizeof(fifo), "%s/fifo.so", dir);
    FILE *f = fopen(lib, "w");
    CHECK(f != NULL);
    CHECK_EQ(fclose(f), 0);
    CHECK_EQ(mkfifo(fifo, 0600), 0);
    /* Files, with or without the ".so" librdkafka appends, and names for
     * dlopen's search path: taken. */
    snprintf(v, sizeof(v), "%s;%s/libmon;monitoring-interceptor", lib, dir);
    kafka_file_property("plugin.library.paths", v, NULL);
    /* A path that names nothing, the second of two. */
    snprintf(v, sizeof(v), "%s;%s/missing", lib, dir);
    snprintf(msg, sizeof(msg),
             "config.yaml:3:27: kafka.properties.plugin.library.paths: %s/missing: No such file "
             "or directory; name the plugin library librdkafka is to load",
             dir);
    kafka_file_property("plugin.library.paths", v, msg);
    /* A directory, a FIFO: not a library. */
    snprintf(msg, sizeof(msg),
             "config.yaml:3:27: kafka.properties.plugin.library.paths: %s: a directory, not a "
             "file: name the plugin library librdkafka is to load",
             dir);
    kafka_file_property("plugin.library.paths", dir, msg);
    snprintf(msg, sizeof(msg),
             "config.yaml:3:27: kafka.properties.plugin.library.paths: %s: a FIFO, not a file: "
             "name the plugin library librdkafka is to load",
             fifo);
    kafka_file_property("plugin.library.paths", fifo, msg);
    CHECK_EQ(unlink(fifo), 0);
    CHECK_EQ(unlink(lib), 0);
    CHECK_EQ(rmdir(dir), 0);
}

KVS_TEST(yaml_syntax_error)
{
    parse_fails(
        "cluster:\n  shards: 4\n partitions: 8\n",
        "config.yaml:3:2: did not find expected key (while parsing a block mapping at line 1 "
        "column 1)");
    parse_fails("data_dir: a: b\n",
                "config.yaml:1:12: mapping values are not allowed in this context");
    parse_fails("cluster: {shards: 4\n",
                "config.yaml:2:1: did not find expected ',' or '}' (while parsing a flow "
                "mapping at line 1 column 10)");
    /* At the end of a text without a final line break: its end, not a
     * line after the last (libyaml's mark). */
    parse_fails("cluster: {shards: 4",
                "config.yaml:1:20: did not find expected ',' or '}' (while parsing a flow "
                "mapping at line 1 column 10)");
    /* kvs's own errors too: an empty second document at the very end. */
    parse_fails("data_dir: a\n---", "config.yaml:2:4: only one YAML document is allowed");
    /* libyaml counts characters: an é is one, though it is two bytes. */
    parse_fails("cluster: {shards: \xc3\xa9",
                "config.yaml:1:20: did not find expected ',' or '}' (while parsing a flow "
                "mapping at line 1 column 10)");
    parse_fails("\tcluster: {}\n", "config.yaml:1:1: found character that cannot start any "
                                   "token (while scanning for the next token at line 1 column 1)");
}

/* Bytes that are not UTF-8 text are named by line and column, like every
 * other error (libyaml itself only gives a byte offset for them). */
KVS_TEST(reader_errors_have_positions)
{
    static const char nul[] = "router: {listen: \"h:1\"}\ndata_dir: a\0b\n";
    kvs_config_t *c = NULL;
    CHECK_EQ(kvs_config_parse("config.yaml", nul, sizeof(nul) - 1, &c, err, sizeof(err)),
             KVS_ECONFIG);
    CHECK(c == NULL);
    CHECK_STR(err, "config.yaml:2:12: control characters are not allowed (byte 0x00); the file "
                   "must be UTF-8 text");
    parse_fails("log:\n  level: \"d\xc3\xa9"
                "bug\"\r\n  x: \xff\n",
                "config.yaml:3:6: invalid leading UTF-8 octet (byte 0xff); the file must be "
                "UTF-8 text");
    /* Columns count characters: "é" before the bad byte is one column. */
    parse_fails("data_dir: \"\xc3\xa9\xc3(\"\n",
                "config.yaml:1:14: invalid trailing UTF-8 octet (byte 0x28); the file must be "
                "UTF-8 text");
    parse_fails("# a\rdata_dir: \x01\n", "config.yaml:2:11: control characters are not allowed "
                                         "(byte 0x01); the file must be UTF-8 text");
}

/* Paths derived from data_dir are checked at load: a worker socket that
 * does not fit sun_path would otherwise fail only once workers start. */
KVS_TEST(data_dir_length)
{
    char text[5000], want[600], dir[4200];
    /* "/shard-3.sock" is 13 bytes: a 94-byte data_dir makes 107, the most. */
    memset(dir, 'd', 94);
    dir[0] = '/';
    dir[94] = '\0';
    snprintf(text, sizeof(text), "data_dir: %s\n", dir);
    kvs_config_t *c = parse_ok(text);
    kvs_config_free(c);
    memcpy(dir + 94, "d", 2);
    snprintf(text, sizeof(text), "cluster: {shards: 4}\ndata_dir: %s\n", dir);
    snprintf(want, sizeof(want),
             "config.yaml:2:11: data_dir is too long for the workers' unix sockets: "
             "\"%.80s.../shard-3.sock\" is 108 bytes, a unix socket path may have at most 107; "
             "use a shorter data_dir (a symlink to the real directory works)",
             dir);
    parse_fails(text, want);
    /* Shard 10 has one digit more than shard 9... */
    dir[94] = '\0';
    snprintf(text, sizeof(text), "data_dir: %s\ncluster: {shards: 11}\n", dir);
    parse_fails(text, "config.yaml:1:11: data_dir is too long for the workers' unix sockets: "
                      "\"/ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
                      "dddddddd.../shard-10.sock\" is 108 bytes, a unix socket path may have at "
                      "most 107; use a shorter data_dir (a symlink to the real directory works)");
    /* ...but only local shards have sockets: with shard 10 remote, it fits. */
    snprintf(text, sizeof(text),
             "data_dir: %s\ncluster: {shards: 11, remote: [{shard: 10, address: \"h:1\"}]}\n", dir);
    c = parse_ok(text);
    kvs_config_free(c);
    /* Every shard remote: no worker socket, but each router process has
     * its own, <data_dir>/routerI.sock (I < router.processes; auto: 8). */
    snprintf(text, sizeof(text),
             "cluster: {shards: 1, remote: [{shard: 0, address: \"h:1\"}]}\ndata_dir: %s\n", dir);
    c = parse_ok(text);
    kvs_config_free(c);
    snprintf(text, sizeof(text),
             "cluster: {shards: 1, remote: [{shard: 0, address: \"h:1\"}]}\nrouter: {processes: "
             "10}\ndata_dir: %s\n",
             dir);
    c = parse_ok(text); /* "/router9.sock": 107 bytes, the most */
    kvs_config_free(c);
    snprintf(text, sizeof(text),
             "cluster: {shards: 1, remote: [{shard: 0, address: \"h:1\"}]}\nrouter: {processes: "
             "11}\ndata_dir: %s\n",
             dir);
    snprintf(want, sizeof(want),
             "config.yaml:3:11: data_dir is too long for the router processes' unix sockets: "
             "\"%.80s.../router10.sock\" is 108 bytes, a unix socket path may have at most 107; "
             "use a shorter data_dir (a symlink to the real directory works)",
             dir);
    parse_fails(text, want);
}

KVS_TEST(local_reads)
{
    kvs_config_t *c = parse_ok("");
    CHECK_EQ(c->router_local_reads, 1);
    CHECK_EQ(c->metrics_auth, 1); /* with users, scrapes authenticate */
    CHECK_EQ(c->tls_metrics.enabled, 0);
    kvs_config_free(c);
    c = parse_ok("router: {local_reads: false}\n");
    CHECK_EQ(c->router_local_reads, 0);
    kvs_config_free(c);
    parse_fails("router:\n  local_reads: sometimes\n",
                "config.yaml:2:16: router.local_reads must be true or false (got \"sometimes\")");
}

KVS_TEST(ready_timeout)
{
    kvs_config_t *c = parse_ok("router: {ready_timeout: 2m}\n");
    CHECK_EQ(c->router_ready_timeout_ms, 120000);
    kvs_config_free(c);
    parse_fails("router:\n  ready_timeout: 0s\n",
                "config.yaml:2:18: router.ready_timeout must be from 1ms to 1h (got \"0s\")");
}

KVS_TEST(liveness_timeout)
{
    char changed[512], fixed[512];
    kvs_config_t *c = parse_ok("");
    CHECK_EQ(c->router_liveness_timeout_ms, 10000);
    kvs_config_free(c);
    c = parse_ok("router: {liveness_timeout: 1s}\n");
    CHECK_EQ(c->router_liveness_timeout_ms, 1000);
    kvs_config_free(c);
    c = parse_ok("router: {liveness_timeout: 1000ms}\n");
    CHECK_EQ(c->router_liveness_timeout_ms, 1000);
    kvs_config_free(c);
    c = parse_ok("router: {liveness_timeout: 1h}\n");
    CHECK_EQ(c->router_liveness_timeout_ms, 3600000);
    kvs_config_free(c);
    /* 0 turns the check off, with or without a unit. */
    c = parse_ok("router: {liveness_timeout: 0}\n");
    CHECK_EQ(c->router_liveness_timeout_ms, 0);
    kvs_config_free(c);
    c = parse_ok("router:\n  liveness_timeout: 0s\n");
    CHECK_EQ(c->router_liveness_timeout_ms, 0);
    kvs_config_free(c);
    parse_fails("router:\n  liveness_timeout: 999ms\n",
                "config.yaml:2:21: router.liveness_timeout must be 0 (off) or from 1s to 1h "
                "(got \"999ms\")");
    parse_fails("router:\n  liveness_timeout: 61m\n",
                "config.yaml:2:21: router.liveness_timeout must be 0 (off) or from 1s to 1h "
                "(got \"61m\")");
    parse_fails("router:\n  liveness_timeout: off\n",
                "config.yaml:2:21: router.liveness_timeout: \"off\" is not a duration (write "
                "milliseconds, or a number with ms, s, m, h or d, as in 1s)");
    parse_fails("router: {liveness_timeout: [1s]}\n",
                "config.yaml:1:28: router.liveness_timeout: expected a duration such as 1s, got "
                "a list");
    /* Live: a reload may change it (the master and every router process
     * take it together, see router_master_live.c). */
    kvs_config_t *a = parse_ok("");
    kvs_config_t *b = parse_ok("router: {liveness_timeout: 2s}\n");
    CHECK_EQ(kvs_config_reload_check(a, b, changed, sizeof(changed), fixed, sizeof(fixed)), 0);
    CHECK_STR(changed, "router.liveness_timeout");
    CHECK_STR(fixed, "");
    kvs_config_apply_live(a, b);
    CHECK_EQ(a->router_liveness_timeout_ms, 2000);
    kvs_config_free(a);
    kvs_config_free(b);
}

KVS_TEST(router_processes)
{
    kvs_config_t *c = parse_ok("router: {processes: 3}\n");
    CHECK_EQ(c->router_processes, 3);
    kvs_config_free(c);
    c = parse_ok("router:\n  processes: AUTO\n");
    CHECK_EQ(c->router_processes, 0);
    kvs_config_free(c);
    c = parse_ok("router: {processes: 64}\n");
    CHECK_EQ(c->router_processes, 64);
    kvs_config_free(c);
    parse_fails("router:\n  processes: 0\n",
                "config.yaml:2:14: router.processes must be auto or an integer from 1 to 64 "
                "(got \"0\")");
    parse_fails("router: {processes: 65}\n",
                "config.yaml:1:21: router.processes must be auto or an integer from 1 to 64 "
                "(got \"65\")");
    parse_fails("router: {processes: 99999999999999999999}\n",
                "config.yaml:1:21: router.processes must be auto or an integer from 1 to 64 "
                "(got \"99999999999999999999\")");
    parse_fails("router: {processes: two}\n",
                "config.yaml:1:21: router.processes must be auto or an integer from 1 to 64 "
                "(got \"two\")");
    parse_fails("router: {processes: -1}\n",
                "config.yaml:1:21: router.processes must be auto or an integer from 1 to 64 "
                "(got \"-1\")");
    /* Keys without F_AUTO do not take "auto". */
    parse_fails("cluster: {shards: auto}\n",
                "config.yaml:1:19: cluster.shards must be an integer from 1 to 1024 "
                "(got \"auto\")");
}

/* A reload's text: the snapshot another process holds, through
 * /proc/PID/fd/N, named after the config file; the file itself when the
 * snapshot cannot be opened (saying why) or is not given. */
KVS_TEST(load_from_a_snapshot_or_the_file)
{
    char file[] = "/tmp/kvs_test_config_XXXXXX", snap[] = "/tmp/kvs_test_snap_XXXXXX";
    const char file_text[] = "cluster: {shards: 3}\n", snap_text[] = "cluster: {shards: 5}\n";
    int ffd = mkstemp(file), sfd = mkstemp(snap);
    CHECK(ffd >= 0 && sfd >= 0);
    CHECK_EQ(write(ffd, file_text, strlen(file_text)), (long long)strlen(file_text));
    CHECK_EQ(write(sfd, snap_text, strlen(snap_text)), (long long)strlen(snap_text));
    char from[64];
    snprintf(from, sizeof(from), "/proc/%ld/fd/%d", (long)getpid(), sfd);
    kvs_config_t *c = NULL;
    int fell_back = -1;
    CHECK_EQ(kvs_config_load_from(file, from, &c, err, sizeof(err), &fell_back), 0);
    CHECK_EQ(fell_back, 0);
    CHECK_EQ(c->shards, 5);
    CHECK_STR(c->path, file);
    kvs_config_free(c);
    CHECK_EQ(kvs_config_load_from(file, NULL, &c, err, sizeof(err), &fell_back), 0);
    CHECK_EQ(fell_back, 0);
    CHECK_EQ(c->shards, 3);
    kvs_config_free(c);
    CHECK_EQ(kvs_config_load_from(file, "/proc/1/fd/999999", &c, err, sizeof(err), &fell_back), 0);
    CHECK(fell_back == ENOENT || fell_back == EACCES);
    CHECK_EQ(c->shards, 3);
    kvs_config_free(c);
    /* A snapshot that does not load is an error naming the file. */
    CHECK_EQ(ftruncate(sfd, 0), 0);
    CHECK_EQ(pwrite(sfd, "cluster: [\n", 11, 0), 11);
    CHECK(kvs_config_load_from(file, from, &c, err, sizeof(err), &fell_back) != 0);
    CHECK(c == NULL);
    CHECK_EQ(strncmp(err, file, strlen(file)), 0);
    close(ffd);
    close(sfd);
    unlink(file);
    unlink(snap);
}

/* The snapshot a router process loads: the descriptor's whole content from
 * offset 0, whatever its current offset, which stays where it was. */
KVS_TEST(load_from_descriptor)
{
    char path[] = "/tmp/kvs_test_config_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, full_yaml, strlen(full_yaml)), (long long)strlen(full_yaml));
    CHECK_EQ(lseek(fd, 5, SEEK_SET), 5);
    kvs_config_t *c = NULL;
    CHECK_EQ(kvs_config_load_fd("/etc/kvs/config.yaml", fd, &c, err, sizeof(err)), 0);
    CHECK_STR(c->path, "/etc/kvs/config.yaml");
    CHECK_EQ(c->shards, 8);
    CHECK_EQ(c->n_bindings, 3);
    kvs_config_free(c);
    CHECK_EQ(lseek(fd, 0, SEEK_CUR), 5);
    /* Errors name the path given. */
    CHECK_EQ(ftruncate(fd, 0), 0);
    const char bad[] = "storage:\n  sync: fast\n";
    CHECK_EQ(pwrite(fd, bad, strlen(bad), 0), (long long)strlen(bad));
    CHECK_EQ(kvs_config_load_fd("/etc/kvs/config.yaml", fd, &c, err, sizeof(err)), KVS_ECONFIG);
    CHECK(c == NULL);
    CHECK_STR(err, "/etc/kvs/config.yaml:2:9: storage.sync must be one of full, batch, none "
                   "(got \"fast\")");
    close(fd);
    unlink(path);
    CHECK_EQ(kvs_config_load_fd("snap", fd, &c, err, sizeof(err)), -EBADF);
    CHECK_STR(err, "snap: cannot read: Bad file descriptor");
}

KVS_TEST(top_level_must_be_one_mapping)
{
    parse_fails("- data_dir: x\n", "config.yaml:1:1: the top level must be a mapping of keys "
                                   "such as \"data_dir: ./data\", got a list");
    parse_fails("hello\n", "config.yaml:1:1: the top level must be a mapping of keys such as "
                           "\"data_dir: ./data\", got \"hello\"");
    parse_fails("data_dir: a\n---\ndata_dir: b\n",
                "config.yaml:3:1: only one YAML document is allowed");
}

KVS_TEST(aliases_are_bounded)
{
    /* An alias inside the value it repeats (a cycle) is refused. */
    parse_fails("kafka: &k\n  properties: *k\n",
                "config.yaml:2:15: kafka.properties: the alias *k is inside the value it "
                "repeats; write the value out");
    kvs_config_t *c = parse_ok("cluster:\n  shards: &n 16\n  partitions: *n\n");
    CHECK_EQ(c->partitions, 16);
    kvs_config_free(c);
    /* A merge key is not applied (libyaml does not): said so. */
    parse_fails("tls: &t {cert: a.pem, key: a.key}\nlog:\n  <<: *t\n",
                "config.yaml:3:3: unknown key \"<<\" in \"log\" (YAML merge keys are not "
                "supported: write the keys out)");
    /* What anchors are for: users sharing one allow mapping. */
    c = parse_ok("users:\n  - {name: a, allow: &r {\"*\": read}}\n  - {name: b, allow: *r}\n");
    CHECK_EQ(c->n_users, 2);
    CHECK_EQ(c->users[1].n_grants, 1);
    CHECK_EQ(c->users[1].grants[0].rights, KVS_RIGHT_READ);
    kvs_config_free(c);
}

/* A text built piece by piece (aborts on a full heap: a test). */
typedef struct {
    char *text;
    size_t len, cap;
} text_t;

static void grow(text_t *b, const char *more, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *bigger = realloc(b->text, cap);
        CHECK(bigger != NULL);
        b->text = bigger;
        b->cap = cap;
    }
    memcpy(b->text + b->len, more, n);
    b->len += n;
    b->text[b->len] = '\0';
}

static void add(text_t *b, const char *more)
{
    grow(b, more, strlen(more));
}

KVS_TEST(alias_expansion_is_bounded)
{
    /* 100 uses of a 1 MiB value: the walk would copy 100 MiB. The text
     * is refused where its values, aliases counted as what they repeat,
     * pass KVS_CONFIG_MAX_FILE. */
    text_t b = {0};
    char *big = malloc(1u << 20);
    CHECK(big != NULL);
    memset(big, 'a', 1u << 20);
    add(&b, "plugins:\n  - &p {path: /x, arg: ");
    grow(&b, big, 1u << 20);
    add(&b, "}\n");
    for (int i = 0; i < 100; i++)
        add(&b, "  - *p\n");
    parse_fails(b.text,
                "config.yaml:65:5: plugins[63]: the file's values add up to more than 64 MiB "
                "of text (aliases count as the values they repeat); write each value out "
                "once");
    /* Billion laughs: each level repeats the one before ten times. */
    b.len = 0;
    add(&b, "a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (char l = 'b'; l <= 'i'; l++) {
        char line[80];
        int n = snprintf(line, sizeof(line),
                         "%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n", l, l,
                         l - 1, l - 1, l - 1, l - 1, l - 1, l - 1, l - 1, l - 1, l - 1, l - 1);
        grow(&b, line, (size_t)n);
    }
    parse_fails(b.text, "config.yaml:6:20: f[3]: the file holds more than 500000 values (aliases "
                        "count as the values they repeat); no kvs config needs that many");
    free(big);
    free(b.text);
}

KVS_TEST(nesting_is_bounded)
{
    /* libyaml's scanner takes time quadratic in the depth of flow nesting
     * (100000 levels: half a minute); no kvs key nests past 5. */
    text_t b = {0};
    add(&b, "plugins: ");
    for (int i = 0; i < 100000; i++)
        add(&b, "[");
    for (int i = 0; i < 100000; i++)
        add(&b, "]");
    parse_fails(b.text, "config.yaml:1:25: plugins[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: "
                        "nested more than 16 levels deep; a kvs config nests 5 at most (look for a "
                        "stray bracket or indentation)");
    b.len = 0;
    for (int i = 0; i < 17; i++) {
        char line[64];
        int n = snprintf(line, sizeof(line), "%*sk:\n", 2 * i, "");
        grow(&b, line, (size_t)n);
    }
    parse_fails(b.text, "config.yaml:17:33: k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k: nested more than 16 "
                        "levels deep; a kvs config nests 5 at most (look for a stray bracket or "
                        "indentation)");
    free(b.text);
}

KVS_TEST(tags_are_refused)
{
    parse_fails("cluster:\n  shards: !!binary AAAA\n",
                "config.yaml:2:11: cluster.shards: YAML tags are not supported (got !!binary): kvs "
                "reads every value as plain text; remove the tag");
    parse_fails("plugins:\n  - !!python/object:os.system x\n",
                "config.yaml:2:5: plugins[0]: YAML tags are not supported (got "
                "!!python/object:os.system): kvs reads every value as plain text; remove the tag");
    parse_fails("cluster: !local\n  shards: 4\n",
                "config.yaml:1:10: cluster: YAML tags are not supported (got !local): kvs reads "
                "every value as plain text; remove the tag");
    parse_fails("limits: {max_frame: !!int 4096}\n",
                "config.yaml:1:21: limits.max_frame: YAML tags are not supported (got !!int): kvs "
                "reads every value as plain text; remove the tag");
    /* The tag each node has anyway changes nothing. */
    kvs_config_t *c =
        parse_ok("data_dir: !!str ./x\ncluster: !!map {shards: 8}\nplugins: !!seq []\n");
    CHECK_STR(c->data_dir, "./x");
    CHECK_EQ(c->shards, 8);
    kvs_config_free(c);
}

KVS_TEST(many_keys_cost_n_log_n)
{
    /* Duplicate keys were found by comparing each key with every one
     * before it: 200000 kafka.properties took minutes. */
    text_t b = {0};
    add(&b, "kafka:\n  properties:\n");
    for (int i = 0; i < 200000; i++) {
        char line[40];
        int n = snprintf(line, sizeof(line), "    p%d: v\n", i);
        grow(&b, line, (size_t)n);
    }
    add(&b, "    p7: w\n    p3: w\n");
    parse_fails(b.text, "config.yaml:200003:5: duplicate key \"p7\" in \"kafka.properties\" (first "
                        "at line 10)");
    free(b.text);
}

KVS_TEST(long_broker_lists_cost_their_length)
{
    /* Each kafka.brokers entry is looked at alone: a scheme was searched
     * for in the whole rest of the list, so 400,000 entries took 8 s
     * (minutes under ASan). Now the 65th entry ends the look. */
    text_t b = {0};
    add(&b, "kafka: {brokers: \"");
    for (int i = 0; i < 400000; i++)
        add(&b, "k:1,");
    add(&b, "::1:9092\"}\n");
    parse_fails_with(b.text, "(got \"k:1\"): more than 64 entries");
    free(b.text);
}

KVS_TEST(unique_lists_are_bounded)
{
    /* Each entry of these lists is compared with the ones before it. */
    static const struct {
        const char *head, *entry, *msg;
        int n;
    } cases[] = {
        {"users:\n", "  - {name: u%d}\n",
         "config.yaml:2:3: users: 10001 entries; at most 10000 are allowed", 10001},
        {"kafka:\n  bindings:\n", "    - {topic: t%d, table: x%d}\n",
         "config.yaml:3:5: kafka.bindings: 4097 entries; at most 4096 are allowed", 4097},
        {"cluster:\n  nodes:\n", "    - {name: n%d, address: \"h%d:1000\", shards: [0]}\n",
         "config.yaml:3:5: cluster.nodes: 1025 entries; at most 1024 are allowed", 1025},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        text_t b = {0};
        add(&b, cases[k].head);
        for (int i = 0; i < cases[k].n; i++) {
            char line[96];
            int n = snprintf(line, sizeof(line), cases[k].entry, i, i);
            grow(&b, line, (size_t)n);
        }
        parse_fails(b.text, cases[k].msg);
        free(b.text);
    }
    kvs_config_t *c = NULL;
    text_t b = {0};
    add(&b, "users:\n");
    for (int i = 0; i < 10000; i++) {
        char line[40];
        int n = snprintf(line, sizeof(line), "  - {name: u%d}\n", i);
        grow(&b, line, (size_t)n);
    }
    c = parse_ok(b.text);
    CHECK_EQ(c->n_users, 10000);
    kvs_config_free(c);
    free(b.text);
}

KVS_TEST(error_buffer_is_optional_and_bounded)
{
    const char *text = "cluster:\n  shard: 4\n";
    kvs_config_t *c = NULL;
    CHECK_EQ(kvs_config_parse("config.yaml", text, strlen(text), &c, NULL, 0), KVS_ECONFIG);
    CHECK(c == NULL);
    char small[16];
    memset(small, 'z', sizeof(small));
    CHECK_EQ(kvs_config_parse("config.yaml", text, strlen(text), &c, small, sizeof(small)),
             KVS_ECONFIG);
    CHECK_STR(small, "config.yaml:2:3");
}

KVS_TEST(load_from_temp_file)
{
    char path[] = "/tmp/kvs_test_config_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, full_yaml, strlen(full_yaml)), (long long)strlen(full_yaml));
    close(fd);
    kvs_config_t *c = NULL;
    int rc = kvs_config_load(path, &c, err, sizeof(err));
    CHECK_EQ(rc, 0);
    CHECK_STR(c->path, path);
    CHECK_EQ(c->shards, 8);
    CHECK_EQ(c->n_bindings, 3);
    CHECK_STR(c->log_level, "debug");
    kvs_config_free(c);

    /* Errors from a file name the file. */
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs("storage:\n  sync: fast\n", f);
    fclose(f);
    CHECK_EQ(kvs_config_load(path, &c, err, sizeof(err)), KVS_ECONFIG);
    CHECK(c == NULL);
    char want[256];
    snprintf(want, sizeof(want),
             "%s:2:9: storage.sync must be one of full, batch, none (got \"fast\")", path);
    CHECK_STR(err, want);
    unlink(path);
}

KVS_TEST(load_missing_file_and_directory)
{
    kvs_config_t *c = (kvs_config_t *)&c;
    CHECK_EQ(kvs_config_load("/nonexistent/kvs/config.yaml", &c, err, sizeof(err)), -ENOENT);
    CHECK(c == NULL);
    CHECK_STR(err, "/nonexistent/kvs/config.yaml: cannot open: No such file or directory");
    CHECK_EQ(kvs_config_load("/tmp", &c, err, sizeof(err)), -EISDIR);
    CHECK_STR(err, "/tmp: cannot read: Is a directory");
}

KVS_TEST(parse_size_table)
{
    static const struct {
        const char *in;
        int rc;
        uint64_t want;
    } cases[] = {
        {"0", 0, 0},
        {"0MiB", 0, 0},
        {"010", KVS_EINVAL, 0}, /* octal in YAML 1.1 */
        {"00", KVS_EINVAL, 0},
        {"1000", 0, 1000},
        {"17B", 0, 17},
        {"1KiB", 0, 1024},
        {"4MiB", 0, 4ull << 20},
        {"3GiB", 0, 3ull << 30},
        {"2TiB", 0, 2ull << 40},
        {"5kB", 0, 5000},
        {"2MB", 0, 2000000},
        {"2GB", 0, 2000000000ull},
        {"1TB", 0, 1000000000000ull},
        {"18446744073709551615", 0, UINT64_MAX},
        {"16777215TiB", 0, 16777215ull << 40},
        {"18446744073709551616", KVS_EINVAL, 0}, /* digits overflow */
        {"16777216TiB", KVS_EINVAL, 0},          /* multiplication overflows */
        {"", KVS_EINVAL, 0},
        {"-1", KVS_EINVAL, 0},
        {"+1", KVS_EINVAL, 0},
        {"MiB", KVS_EINVAL, 0},
        {"4 MiB", KVS_EINVAL, 0},
        {" 4", KVS_EINVAL, 0},
        {"4mib", KVS_EINVAL, 0},
        {"4KB", KVS_EINVAL, 0},
        {"1.5GiB", KVS_EINVAL, 0},
        {"4MiBx", KVS_EINVAL, 0},
        {"0x10", KVS_EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 12345;
        int rc = kvs_config_parse_size(cases[i].in, &v);
        if (rc != cases[i].rc)
            fprintf(stderr, "case \"%s\"\n", cases[i].in);
        CHECK_EQ(rc, cases[i].rc);
        if (rc == 0)
            CHECK(v == cases[i].want);
        else
            CHECK_EQ(v, 12345); /* untouched on failure */
    }
}

KVS_TEST(parse_duration_table)
{
    static const struct {
        const char *in;
        int rc;
        uint64_t want;
    } cases[] = {
        {"0", 0, 0},
        {"500", 0, 500},
        {"250ms", 0, 250},
        {"1s", 0, 1000},
        {"2m", 0, 120000},
        {"60m", 0, 3600000},
        {"18446744073709551615ms", 0, UINT64_MAX},
        {"18446744073709551615s", KVS_EINVAL, 0},
        {"", KVS_EINVAL, 0},
        {"-5s", KVS_EINVAL, 0},
        {"s", KVS_EINVAL, 0},
        {"1h", 0, 3600000},
        {"7d", 0, 604800000},
        {"1H", KVS_EINVAL, 0},
        {"1w", KVS_EINVAL, 0},
        {"213503982335d", KVS_EINVAL, 0},
        {"1 s", KVS_EINVAL, 0},
        {"1.5s", KVS_EINVAL, 0},
        {"10sec", KVS_EINVAL, 0},
        {"1S", KVS_EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 777;
        int rc = kvs_config_parse_duration_ms(cases[i].in, &v);
        if (rc != cases[i].rc)
            fprintf(stderr, "case \"%s\"\n", cases[i].in);
        CHECK_EQ(rc, cases[i].rc);
        if (rc == 0)
            CHECK(v == cases[i].want);
        else
            CHECK_EQ(v, 777);
    }
}

KVS_TEST(free_accepts_null)
{
    kvs_config_free(NULL);
    kvs_config_t *c = parse_ok("log: {level: warn}\n");
    CHECK_STR(c->log_level, "warn");
    kvs_config_free(c);
}

KVS_TEST(cluster_remote_and_router_keys)
{
    kvs_config_t *c = parse_ok("cluster:\n"
                               "  shards: 4\n"
                               "  remote:\n"
                               "    - {shard: 3, address: \"127.0.0.1:9803\"}\n"
                               "    - {shard: 2, address: \"10.1.2.3:9802\"}\n"
                               "router:\n"
                               "  timeout: 250ms\n"
                               "limits:\n"
                               "  max_inflight: 8\n");
    CHECK_EQ(c->n_remote, 2);
    CHECK_EQ(c->remote[0].shard, 2); /* sorted by shard */
    CHECK_STR(c->remote[0].address, "10.1.2.3:9802");
    CHECK(kvs_config_remote(c, 3) != NULL);
    CHECK(kvs_config_remote(c, 0) == NULL);
    CHECK_EQ(c->router_timeout_ms, 250);
    CHECK_EQ(c->max_inflight, 8);
    kvs_config_free(c);
    c = parse_ok("");
    CHECK_EQ(c->n_remote, 0);
    CHECK_EQ(c->router_timeout_ms, 5000);
    CHECK_EQ(c->max_inflight, 1024);
    kvs_config_free(c);
    parse_fails("cluster:\n  remote:\n    - {shard: 9, address: \"h:1\"}\n",
                "config.yaml:3:15: cluster.remote[0].shard must be a shard id from 0 to 3 "
                "(cluster.shards - 1), got \"9\"");
    parse_fails("cluster:\n  remote:\n    - {shard: 1}\n",
                "config.yaml:3:7: cluster.remote[0]: missing \"address\"");
    parse_fails("cluster:\n  remote:\n    - {shard: 1, address: h:1}\n    - {shard: 1, "
                "address: h:2}\n",
                "config.yaml:4:7: cluster.remote[1]: shard 1 is already listed in "
                "cluster.remote[0]");
    parse_fails("cluster:\n  remote:\n    - {shard: 1, address: nope}\n",
                "config.yaml:3:27: cluster.remote[0].address: missing :PORT (got \"nope\")");
    parse_fails("cluster:\n  remote:\n    - {shard: 1, address: \"300.1.1.1:9527\"}\n",
                "config.yaml:3:27: cluster.remote[0].address: not a valid IPv4 address (four "
                "numbers 0-255, as in 10.0.0.1) (got \"300.1.1.1:9527\")");
    parse_fails("cluster:\n  remote:\n    - {shard: 1, address: \"a..b:1\"}\n",
                "config.yaml:3:27: cluster.remote[0].address: empty label in the host name (two "
                "dots in a row, or a leading dot) (got \"a..b:1\")");
    parse_fails("cluster:\n  remote:\n    - {shard: 3, address: \"h:1\"}\n  shards: 2\n",
                "config.yaml:3:5: cluster.remote names shard 3 but cluster.shards is 2 (ids 0..1)");
    parse_fails("cluster:\n  remote: h:1\n",
                "config.yaml:2:11: cluster.remote: expected a list of {shard, address}, got "
                "\"h:1\"");
    parse_fails("cluster:\n  nodes: {a: 1}\n",
                "config.yaml:2:10: cluster.nodes: expected a list of {name, address, shards}, got "
                "a mapping");
    c = parse_ok("cluster:\n  remote: []\n  nodes: ~\nplugins: []\nusers: []\n");
    CHECK_EQ(c->n_remote, 0);
    CHECK_EQ(c->n_nodes, 0);
    CHECK_EQ(c->n_plugins, 0);
    CHECK_EQ(c->n_users, 0);
    kvs_config_free(c);
}

KVS_TEST(bindings_partitioner)
{
    kvs_config_t *c = parse_ok("kafka:\n"
                               "  bindings:\n"
                               "    - {topic: a, table: ta}\n"
                               "    - {topic: b, table: tb, partitioner: murmur2}\n"
                               "    - {topic: c, table: tc, partitioner: crc32}\n"
                               "    - {topic: d, table: td, partitioner: FNV1A}\n"
                               "    - {topic: e, table: te, partitioner: none, partitions: 8}\n");
    CHECK_EQ(c->n_bindings, 5);
    CHECK_EQ(c->bindings[0].partitioner, KVS_PARTITIONER_MURMUR2); /* the default */
    CHECK_EQ(c->bindings[1].partitioner, KVS_PARTITIONER_MURMUR2);
    CHECK_EQ(c->bindings[2].partitioner, KVS_PARTITIONER_CRC32);
    CHECK_EQ(c->bindings[3].partitioner, KVS_PARTITIONER_FNV1A);
    CHECK_EQ(c->bindings[4].partitioner, KVS_PARTITIONER_NONE);
    CHECK_EQ(c->bindings[4].partitions, 8);
    /* lookups by a length-delimited name */
    CHECK(kvs_config_binding_n(c, "tcx", 2) == &c->bindings[2]);
    CHECK(kvs_config_binding_n(c, "tc", 1) == NULL);
    CHECK(kvs_config_binding_n(c, "tcx", 3) == NULL);
    CHECK(kvs_config_binding(c, "te") == &c->bindings[4]);
    CHECK_EQ(c->bindings[4].table_len, 2);
    kvs_config_free(c);

    parse_fails("kafka:\n  bindings:\n    - {topic: t, table: t, partitioner: murmur3}\n",
                "config.yaml:3:41: kafka.bindings[0].partitioner must be one of murmur2 (Java "
                "client default), crc32 (librdkafka default: kcat, confluent-kafka), fnv1a "
                "(Sarama default), none (got \"murmur3\")");
    parse_fails("kafka:\n  bindings:\n    - topic: t\n      table: t\n"
                "      partitioner: consistent_random\n",
                "config.yaml:5:20: kafka.bindings[0].partitioner: \"consistent_random\" is "
                "librdkafka's name; the kvs name of that partitioner is crc32 (one of murmur2, "
                "crc32, fnv1a, none)");
    parse_fails("kafka:\n  bindings:\n    - {topic: t, table: t, partitioner: murmur2_random}\n",
                "config.yaml:3:41: kafka.bindings[0].partitioner: \"murmur2_random\" is "
                "librdkafka's name; the kvs name of that partitioner is murmur2 (one of murmur2, "
                "crc32, fnv1a, none)");
    parse_fails("kafka:\n  bindings:\n    - {topic: t, table: t, partitioner: [crc32]}\n",
                "config.yaml:3:41: kafka.bindings[0].partitioner: expected a string, got a list");
}

KVS_TEST(ops_keys_defaults_and_values)
{
    kvs_config_t *c = parse_ok("");
    CHECK_STR(c->metrics_listen, "");
    CHECK_EQ(c->slow_threshold_ms, 10);
    CHECK_EQ(c->slow_max, 128);
    CHECK_EQ(c->n_plugins, 0);
    kvs_config_free(c);
    c = parse_ok("router: {metrics_listen: \"127.0.0.1:9100\"}\n"
                 "log: {slow_threshold: 0, slow_max: 5}\n");
    CHECK_STR(c->metrics_listen, "127.0.0.1:9100");
    CHECK_EQ(c->slow_threshold_ms, 0);
    CHECK_EQ(c->slow_max, 5);
    kvs_config_free(c);
    c = parse_ok("log: {slow_threshold: off}\n");
    CHECK_EQ(c->slow_threshold_ms, KVS_SLOWLOG_OFF);
    kvs_config_free(c);
    c = parse_ok("log: {slow_threshold: 2s}\n");
    CHECK_EQ(c->slow_threshold_ms, 2000);
    kvs_config_free(c);
    parse_fails("log: {slow_threshold: soon}\n",
                "config.yaml:1:23: log.slow_threshold: \"soon\" is not a duration (write "
                "milliseconds, or a number with ms, s, m, h or d, as in 1s; or off)");
    parse_fails("log: {slow_max: 0}\n",
                "config.yaml:1:17: log.slow_max must be an integer from 1 to 100000 (got \"0\")");
    parse_fails("router: {metrics_listen: \"unix:/x\"}\n",
                "config.yaml:1:26: router.metrics_listen must be \"\", HOST:PORT or [IPV6]:PORT "
                "(got \"unix:/x\"): a unix socket is not allowed here");
}

KVS_TEST(plugins_list)
{
    kvs_config_t *c = parse_ok("log: {level: info}\n"
                               "plugins:\n"
                               "  - ./a.so\n"
                               "  - {path: /opt/b.so, arg: \"file=/tmp/x\"}\n");
    CHECK_EQ(c->n_plugins, 2);
    CHECK_STR(c->plugins[0].path, "./a.so");
    CHECK_STR(c->plugins[0].arg, "");
    CHECK_EQ(c->plugins[0].line, 3);
    CHECK_EQ(c->plugins[0].column, 5);
    CHECK_STR(c->plugins[1].path, "/opt/b.so");
    CHECK_STR(c->plugins[1].arg, "file=/tmp/x");
    CHECK_EQ(c->plugins[1].line, 4);
    kvs_config_free(c);
    c = parse_ok("plugins: []\n");
    CHECK_EQ(c->n_plugins, 0);
    kvs_config_free(c);
    parse_fails("plugins: ./a.so\n",
                "config.yaml:1:10: plugins: expected a list of shared object paths, got "
                "\"./a.so\"");
    parse_fails("plugins:\n  - {arg: x}\n", "config.yaml:2:5: plugins[0]: missing \"path\"");
    parse_fails("plugins:\n  - {path: a.so, args: x}\n",
                "config.yaml:2:18: unknown key \"args\" in \"plugins[0]\"");
    parse_fails("plugins:\n  - \"\"\n", "config.yaml:2:5: plugins[0]: the path is empty");
    parse_fails("plugins:\n  - [a.so]\n",
                "config.yaml:2:5: plugins[0]: expected a path or {path, arg}, got a list");
}

KVS_TEST(reload_check_names_the_keys)
{
    char changed[256], fixed[256];
    kvs_config_t *a = parse_ok("log: {level: info}\nlimits: {max_inflight: 10}\n");
    kvs_config_t *same = parse_ok("limits: {max_inflight: 10}\n");
    CHECK_EQ(kvs_config_reload_check(a, same, changed, sizeof(changed), fixed, sizeof(fixed)), 0);
    CHECK_STR(changed, "");
    CHECK_STR(fixed, "");
    kvs_config_t *live = parse_ok("log: {level: debug, slow_threshold: off}\n"
                                  "limits: {max_inflight: 20, client_output: 128MiB}\n"
                                  "router: {timeout: 1s}\n");
    CHECK_EQ(kvs_config_reload_check(a, live, changed, sizeof(changed), fixed, sizeof(fixed)), 0);
    CHECK_STR(changed, "router.timeout, limits.max_inflight, limits.client_output, log.level, "
                       "log.slow_threshold");
    CHECK_STR(fixed, "");
    kvs_config_t *not_live =
        parse_ok("log: {level: debug}\ncluster: {shards: 2}\nlimits: {max_inflight: 10, "
                 "max_frame: 1MiB}\nkafka: {bindings: [{topic: t, table: t}]}\n"
                 "plugins: [x.so]\n");
    CHECK_EQ(kvs_config_reload_check(a, not_live, changed, sizeof(changed), fixed, sizeof(fixed)),
             KVS_ECONFIG);
    CHECK_STR(changed, "log.level");
    CHECK_STR(fixed, "cluster.shards, limits.max_frame, kafka.bindings, plugins");
    kvs_config_free(a);
    kvs_config_free(same);
    kvs_config_free(live);
    kvs_config_free(not_live);
}

KVS_TEST(reload_refusal_names_file_and_line)
{
    char msg[512];
    kvs_config_t *a = parse_ok("storage: {sync: batch}\ncluster:\n  shards: 4\n");
    /* One key: its place leads, as in a startup error. */
    kvs_config_t *b = parse_ok("log: {level: debug}\ncluster:\n  shards: 8\n"
                               "storage: {sync: batch}\n");
    kvs_config_reload_refusal(a, b, "/etc/kvs/config.yaml", msg, sizeof(msg));
    CHECK_STR(msg, "/etc/kvs/config.yaml:3:11: cluster.shards changed, which cannot change while "
                   "the node runs (restart it for that)");
    /* Several: the first leads, the others name their line. */
    kvs_config_t *c = parse_ok("cluster:\n  shards: 8\nstorage:\n  sync: full\n"
                               "plugins:\n  - x.so\n");
    kvs_config_reload_refusal(a, c, "config.yaml", msg, sizeof(msg));
    CHECK_STR(msg, "config.yaml:2:11: cluster.shards, storage.sync (line 4), plugins (line 6) "
                   "changed, which cannot change while the node runs (restart it for that)");
    /* A key the file no longer sets has no line: a key that has one
     * leads, or else the file alone. */
    kvs_config_t *d = parse_ok("storage: {sync: full}\n");
    kvs_config_t *e = parse_ok("storage: {sync: full}\ncluster: {shards: 8}\n");
    kvs_config_reload_refusal(e, d, "config.yaml", msg, sizeof(msg));
    CHECK_STR(msg, "config.yaml: cluster.shards (no longer set) changed, which cannot change "
                   "while the node runs (restart it for that)");
    kvs_config_t *f = parse_ok("storage: {sync: batch}\n");
    kvs_config_reload_refusal(e, f, "config.yaml", msg, sizeof(msg));
    CHECK_STR(msg, "config.yaml:1:17: storage.sync, cluster.shards (no longer set) changed, "
                   "which cannot change while the node runs (restart it for that)");
    kvs_config_reload_refusal(a, e, "config.yaml", msg, sizeof(msg));
    CHECK_STR(msg, "config.yaml:2:19: cluster.shards, storage.sync (line 1) changed, which cannot "
                   "change while the node runs (restart it for that)");
    /* Keys set in neither file whose defaults follow tls.cert and tls.key
     * (tls.router.cert, ...) changed with them: not named beside them. */
    kvs_config_t *g = parse_ok("tls: {cert: /a.pem, key: /a.key}\n");
    kvs_config_t *h = parse_ok("tls: {cert: /b.pem, key: /b.key}\n");
    kvs_config_reload_refusal(g, h, "config.yaml", msg, sizeof(msg));
    CHECK_STR(msg, "config.yaml:1:13: tls.cert, tls.key (line 1) changed, which cannot change "
                   "while the node runs (restart it for that)");
    kvs_config_free(a);
    kvs_config_free(b);
    kvs_config_free(c);
    kvs_config_free(d);
    kvs_config_free(e);
    kvs_config_free(f);
    kvs_config_free(g);
    kvs_config_free(h);
}

KVS_TEST(tls_sections_inherit_and_check)
{
    kvs_config_t *c = parse_ok("tls:\n"
                               "  cert: /n.crt\n"
                               "  key: /n.key\n"
                               "  ca: /ca.crt\n"
                               "  min_version: tls1.3\n"
                               "  router: {enabled: yes, client_cert: optional, cert: /r.crt}\n"
                               "  node: {enabled: true}\n"
                               "  link: {enabled: on, verify_host: false}\n"
                               "  metrics: {enabled: true, ca: /m.crt}\n"
                               "router: {metrics_auth: false}\n");
    CHECK(c->tls_router.enabled && c->tls_node.enabled && c->tls_link.enabled);
    CHECK(c->tls_metrics.enabled);
    CHECK_STR(c->tls_metrics.ca, "/m.crt");
    CHECK_STR(c->tls_metrics.cert, "/n.crt");
    CHECK_EQ(c->tls_metrics.client_cert, KVS_CLIENT_CERT_NONE); /* scrapers: none asked */
    CHECK_EQ(c->metrics_auth, 0);
    CHECK_STR(c->tls_router.cert, "/r.crt"); /* its own */
    CHECK_STR(c->tls_router.key, "/n.key");  /* inherited */
    CHECK_STR(c->tls_node.ca, "/ca.crt");
    CHECK_EQ(c->tls_router.client_cert, KVS_CLIENT_CERT_OPTIONAL);
    CHECK_EQ(c->tls_link.verify_host, 0);
    CHECK_EQ(c->tls_min_version, 1);
    kvs_config_free(c);
    parse_fails("tls:\n  router:\n    enabled: true\n",
                "config.yaml:3:14: tls.router.enabled is true but there is no certificate and "
                "key: set tls.cert and tls.key (or tls.router.cert and tls.router.key)");
    parse_fails("tls: {cert: a, key: b, node: {enabled: true}}\n",
                "config.yaml:1:40: tls.node.enabled is true but there is no CA bundle to verify "
                "client certificates with: set tls.ca (or tls.node.ca), or client_cert: none");
    parse_fails("tls:\n  metrics:\n    enabled: true\n",
                "config.yaml:3:14: tls.metrics.enabled is true but there is no certificate and "
                "key: set tls.cert and tls.key (or tls.metrics.cert and tls.metrics.key)");
    parse_fails("tls: {cert: a, key: b, metrics: {enabled: true, client_cert: require}}\n",
                "config.yaml:1:43: tls.metrics.enabled is true but there is no CA bundle to "
                "verify client certificates with: set tls.ca (or tls.metrics.ca), or "
                "client_cert: none");
    parse_fails("tls: {cert: a, key: b, link: {enabled: true}}\n",
                "config.yaml:1:40: tls.link.enabled is true but there is no CA bundle to verify "
                "the workers' certificates with: set tls.ca (or tls.link.ca)");
    parse_fails("tls: {router: {enabled: maybe}}\n",
                "config.yaml:1:25: tls.router.enabled must be true or false (got \"maybe\")");
    parse_fails("tls: {router: {port: 1}}\n",
                "config.yaml:1:16: unknown key \"port\" in \"tls.router\"");
    parse_fails("tls: {min_version: TLS1.3, max_version: TLS1.2}\n",
                "config.yaml:1:20: tls.min_version is above tls.max_version");
    parse_fails("tls: {min_version: SSLv3}\n", "config.yaml:1:20: tls.min_version must be one of "
                                               "TLS1.2, TLS1.3 (got \"SSLv3\")");
}

#define HASH "pbkdf2-sha256$1000$c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE"

KVS_TEST(users_and_their_grants)
{
    kvs_config_t *c = parse_ok("users:\n"
                               "  - name: alice\n"
                               "    token: " HASH "\n"
                               "    allow: {\"orders*\": [read, write], \"*\": read}\n"
                               "  - name: router-b\n"
                               "    allow:\n"
                               "      \"*\": [read, write, admin]\n"
                               "limits: {auth_failures: 5, auth_failures_per_minute: 7}\n");
    CHECK_EQ(c->n_users, 2);
    CHECK_STR(c->users[0].name, "alice");
    CHECK_STR(c->users[0].token, HASH);
    CHECK_EQ(c->users[0].n_grants, 2);
    CHECK_STR(c->users[0].grants[0].pattern, "orders*");
    CHECK_EQ(c->users[0].grants[0].rights, KVS_RIGHT_READ | KVS_RIGHT_WRITE);
    CHECK_EQ(c->users[0].grants[1].rights, KVS_RIGHT_READ);
    CHECK(c->users[1].token == NULL);
    CHECK_EQ(c->users[1].grants[0].rights, KVS_RIGHT_READ | KVS_RIGHT_WRITE | KVS_RIGHT_ADMIN);
    CHECK_EQ(c->auth_failures, 5);
    CHECK_EQ(c->auth_failures_per_minute, 7);
    kvs_config_free(c);
    parse_fails("users: [{token: " HASH "}]\n", "config.yaml:1:9: users[0]: missing \"name\"");
    parse_fails("users: [{name: a}, {name: a}]\n",
                "config.yaml:1:20: users[1]: user \"a\" is already users[0]");
    parse_fails("users: [{name: a, token: hunter2}]\n",
                "config.yaml:1:26: users[0].token: not a token hash: expected "
                "pbkdf2-sha256$ITERATIONS$SALT$HASH (make one with kvs-cli hash-token)");
    parse_fails("users: [{name: a, token: \"pbkdf2-sha256$10$c2FsdHNhbHRzYWx0$YWFh\"}]\n",
                "config.yaml:1:26: users[0].token: the iteration count must be a number from "
                "1000 to 100000000");
    parse_fails("users: [{name: a, token: \"pbkdf2-sha256$1000$c2FsdHNhbHRzYWx0$YWFh\"}]\n",
                "config.yaml:1:26: users[0].token: the hash must be 32 bytes in base64 (RFC "
                "4648, no padding)");
    parse_fails("users: [{name: a, allow: {t: [read, drop]}}]\n",
                "config.yaml:1:37: users[0].allow[\"t\"]: \"drop\" is not a right (read, write "
                "or admin)");
    parse_fails("users: [{name: a, allow: [t]}]\n",
                "config.yaml:1:26: users[0].allow: expected a mapping of table pattern to "
                "rights, as in {\"orders*\": [read, write]}, got a list");
    parse_fails("users: [{name: a, allow: {t: []}}]\n",
                "config.yaml:1:30: users[0].allow[\"t\"]: give at least one right");
    parse_fails("users: [{name: a, role: x}]\n",
                "config.yaml:1:19: unknown key \"role\" in \"users[0]\"");
    parse_fails("users: [{name: \"a\\tb\"}]\n",
                "config.yaml:1:16: users[0].name must not contain control characters");
    parse_fails("users: {a: 1}\n",
                "config.yaml:1:8: users: expected a list of {name, token, allow}, got a mapping");
}

/* Writes `text` to a fresh file of mode `mode`, loads it and returns what
 * kvs_config_file_warning says of it (in err). */
static int file_warning(const char *text, unsigned mode, char *path)
{
    strcpy(path, "/tmp/kvs_test_config_XXXXXX");
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, text, strlen(text)), (long long)strlen(text));
    close(fd);
    CHECK_EQ(chmod(path, mode), 0);
    kvs_config_t *c = NULL;
    CHECK_EQ(kvs_config_load(path, &c, err, sizeof(err)), 0);
    int rc = kvs_config_file_warning(c, path, err, sizeof(err));
    kvs_config_free(c);
    unlink(path);
    return rc;
}

KVS_TEST(file_mode_warnings)
{
    static const char users[] = "users: [{name: a, token: \"" HASH "\"}]\n";
    static const char sasl[] = "kafka: {properties: {sasl.password: pw, client.id: x}}\n";
    char path[64], want[512];
    /* Writable by others: whoever may write it runs code here (plugins). */
    CHECK_EQ(file_warning("data_dir: ./d\n", 0666, path), 1);
    snprintf(want, sizeof(want),
             "%s is writable by its group and others (mode 0666): whoever may write it decides "
             "what this node runs (plugins load code, users grant rights); chmod go-w %s",
             path, path);
    CHECK_STR(err, want);
    CHECK_EQ(file_warning("data_dir: ./d\n", 0620, path), 1);
    CHECK(strstr(err, "is writable by its group (mode 0620)") != NULL);
    /* Readable by others while it holds secrets. */
    CHECK_EQ(file_warning(users, 0644, path), 1);
    snprintf(want, sizeof(want),
             "%s is readable by others (mode 0644) and holds secrets (users' token hashes); "
             "chmod o-r %s (and keep it readable by the node's user only)",
             path, path);
    CHECK_STR(err, want);
    CHECK_EQ(file_warning(sasl, 0604, path), 1);
    CHECK(strstr(err, "holds secrets (kafka.properties sasl.password); chmod o-r") != NULL);
    /* Fine: no secrets, or not readable by others (root:kvs 0640). */
    CHECK_EQ(file_warning("data_dir: ./d\n", 0644, path), 0);
    CHECK_STR(err, "");
    CHECK_EQ(file_warning(users, 0640, path), 0);
    CHECK_EQ(file_warning(sasl, 0600, path), 0);
    CHECK_STR(err, "");
}

KVS_TEST(secret_kafka_properties)
{
    static const char *const secret[] = {"sasl.password",         "sasl.username",
                                         "sasl.mechanism",        "sasl.oauthbearer.client.secret",
                                         "ssl.key.password",      "ssl.key.pem",
                                         "ssl.keystore.password", "x.password"};
    static const char *const open[] = {"bootstrap.servers",
                                       "security.protocol",
                                       "ssl.ca.location",
                                       "ssl.certificate.pem",
                                       "password",
                                       "ssl.keystore.location",
                                       "debug"};
    for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++)
        CHECK(kvs_config_secret_key(secret[i]));
    for (size_t i = 0; i < sizeof(open) / sizeof(open[0]); i++)
        CHECK(!kvs_config_secret_key(open[i]));
}

/* ---- cluster.nodes: the map with replicas ---------------------------------------- */

#define MAP3                                                                                       \
    "cluster:\n"                                                                                   \
    "  shards: 4\n"                                                                                \
    "  nodes:\n"                                                                                   \
    "    - {name: a, address: \"127.0.0.1:9700\", shards: [0, 1, 2, 3]}\n"                         \
    "    - {name: b, address: \"127.0.0.1:9710\", shards: [1, 0]}\n"                               \
    "    - {name: c-2.x, address: \"host.example:9700\", shards: [2, 3]}\n"

/* The map's digest: what a worker's Ping carries and a router compares.
 * Order does not count (nodes by name, shards sorted); every field does. */
KVS_TEST(cluster_map_digest)
{
    static const char *const same[] = {
        "node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
        "    - {name: a, address: \"h:1\", shards: [0, 1]}\n"
        "    - {name: b, address: \"g:1\", shards: [1]}\n",
        "node: {name: b}\ncluster:\n  shards: 2\n  nodes:\n"
        "    - {name: b, address: \"g:1\", shards: [1]}\n"
        "    - {name: a, address: \"h:1\", shards: [1, 0]}\n",
    };
    static const char *const other[] = {
        "node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n" /* b's shards */
        "    - {name: a, address: \"h:1\", shards: [0, 1]}\n"
        "    - {name: b, address: \"g:1\", shards: [0]}\n",
        "node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n" /* b's address */
        "    - {name: a, address: \"h:1\", shards: [0, 1]}\n"
        "    - {name: b, address: \"g:2\", shards: [1]}\n",
        "node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n" /* b's name */
        "    - {name: a, address: \"h:1\", shards: [0, 1]}\n"
        "    - {name: c, address: \"g:1\", shards: [1]}\n",
        "node: {name: a}\ncluster:\n  shards: 2\n  partitions: 8\n  nodes:\n"
        "    - {name: a, address: \"h:1\", shards: [0, 1]}\n"
        "    - {name: b, address: \"g:1\", shards: [1]}\n",
    };
    kvs_config_t *x = parse_ok(same[0]), *y = parse_ok(same[1]);
    CHECK(x->has_map_digest && y->has_map_digest);
    CHECK_EQ(memcmp(x->map_digest, y->map_digest, sizeof(x->map_digest)), 0);
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        kvs_config_t *z = parse_ok(other[i]);
        CHECK(z->has_map_digest);
        CHECK(memcmp(x->map_digest, z->map_digest, sizeof(x->map_digest)) != 0);
        /* a reload's new map brings its digest (the worker's Ping) */
        kvs_config_apply_map(y, z);
        CHECK(memcmp(y->map_digest, z->map_digest, sizeof(y->map_digest)) != 0);
        kvs_config_apply_map(y, z); /* and back */
        CHECK_EQ(memcmp(x->map_digest, y->map_digest, sizeof(x->map_digest)), 0);
        kvs_config_free(z);
    }
    kvs_config_free(y);
    y = parse_ok("cluster: {shards: 2}\n"); /* no map: no digest */
    CHECK(!y->has_map_digest);
    kvs_config_free(y);
    kvs_config_free(x);
}

KVS_TEST(cluster_nodes_map)
{
    kvs_config_t *c = parse_ok("node: {name: b}\n" MAP3 "router: {retry_percent: 20, "
                               "retry_burst: 7}\n");
    CHECK_EQ(c->n_nodes, 3);
    CHECK_STR(c->node_name, "b");
    CHECK(c->self == &c->nodes[1]);
    CHECK_EQ(c->nodes[1].n_shards, 2);
    CHECK_EQ(c->nodes[1].shards[0], 0); /* sorted */
    CHECK_EQ(c->nodes[1].shards[1], 1);
    CHECK(kvs_config_local(c, 0) && kvs_config_local(c, 1));
    CHECK(!kvs_config_local(c, 2) && !kvs_config_local(c, 3));
    CHECK_EQ(kvs_config_replica_count(c, 0), 2);
    CHECK_EQ(kvs_config_replica_count(c, 3), 2);
    CHECK(kvs_config_node(c, "c-2.x") == &c->nodes[2]);
    CHECK(kvs_config_node(c, "d") == NULL);
    CHECK_EQ(c->bootstrap, KVS_BOOTSTRAP_SNAPSHOT);
    CHECK_EQ(c->retry_percent, 20);
    CHECK_EQ(c->retry_burst, 7);
    kvs_config_free(c);
    c = parse_ok("cluster: {bootstrap: replay}\n");
    CHECK_EQ(c->bootstrap, KVS_BOOTSTRAP_REPLAY);
    CHECK_EQ(c->retry_percent, 10);
    CHECK_EQ(c->retry_burst, 100);
    CHECK(c->self == NULL);
    CHECK(kvs_config_local(c, 3)); /* no map, no remote: every shard here */
    CHECK_EQ(kvs_config_replica_count(c, 3), 1);
    kvs_config_free(c);
    /* A node serving nothing routes only. */
    c = parse_ok("node: {name: r}\ncluster:\n  shards: 1\n  nodes:\n"
                 "    - {name: a, address: \"h:1\", shards: [0]}\n"
                 "    - {name: r, address: \"h:2\", shards: []}\n");
    CHECK(!kvs_config_local(c, 0));
    kvs_config_free(c);
}

KVS_TEST(cluster_nodes_errors)
{
    parse_fails(MAP3, "config.yaml:4:5: node.name must be set with cluster.nodes: it says which "
                      "of the nodes listed is this one (e.g. \"a\")");
    parse_fails("node: {name: z}\n" MAP3,
                "config.yaml:1:14: node.name \"z\" is not in cluster.nodes (the nodes listed are "
                "\"a\", ...)");
    parse_fails("node: {name: \"a b\"}\n",
                "config.yaml:1:14: node.name: a node name may hold only letters, digits, '.', "
                "'_' and '-' (got \"a b\")");
    parse_fails("node: {name: a}\ncluster:\n  shards: 4\n  nodes:\n"
                "    - {name: a, address: \"h:1\", shards: [0, 1, 3]}\n",
                "config.yaml:5:5: shard 2 is served by no node in cluster.nodes: every shard "
                "from 0 to 3 must be in some node's shards");
    parse_fails("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                "    - {name: a, address: \"h:1\", shards: [0, 1]}\n"
                "  remote: [{shard: 1, address: \"h:9\"}]\n",
                "config.yaml:6:11: cluster.remote and cluster.nodes cannot both be set: list "
                "every node, this one included, with its shards in cluster.nodes and drop "
                "cluster.remote");
    parse_fails("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                "    - {name: a, address: \"h:1\", shards: [0, 1]}\n"
                "    - {name: a, address: \"h:5\", shards: [0]}\n",
                "config.yaml:6:14: cluster.nodes[1].name: \"a\" is already the name of "
                "cluster.nodes[0]");
    parse_fails("node: {name: a}\ncluster:\n  shards: 4\n  nodes:\n"
                "    - {name: a, address: \"h:100\", shards: [0, 1, 2, 3]}\n"
                "    - {name: b, address: \"h:103\", shards: [0]}\n",
                "config.yaml:6:26: cluster.nodes[1].address h:103: its workers' ports (PORT .. "
                "PORT+3) overlap those of cluster.nodes[0] (h:100) on the same host");
    /* One host written two ways (one node's workers would be taken for
     * another's replicas: "replicas agree" with a single copy). */
    parse_fails("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                "    - {name: a, address: \"127.0.0.1:100\", shards: [0, 1]}\n"
                "    - {name: b, address: \"localhost:100\", shards: [0, 1]}\n",
                "config.yaml:6:26: cluster.nodes[1].address localhost:100: its workers' ports "
                "(PORT .. PORT+1) overlap those of cluster.nodes[0] (127.0.0.1:100) on the same "
                "host");
    parse_fails("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                "    - {name: a, address: \"127.0.0.1:100\", shards: [0, 1]}\n"
                "    - {name: b, address: \"[::ffff:127.0.0.1]:101\", shards: [0, 1]}\n",
                "config.yaml:6:26: cluster.nodes[1].address [::ffff:127.0.0.1]:101: its workers' "
                "ports (PORT .. PORT+1) overlap those of cluster.nodes[0] (127.0.0.1:100) on the "
                "same host");
    parse_fails("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                "    - {name: a, address: \"h:1\", shards: [0, 1, 2]}\n",
                "config.yaml:5:41: cluster.nodes[0].shards names shard 2 but cluster.shards is 2 "
                "(ids 0..1)");
    parse_fails("cluster:\n  nodes:\n    - {name: a, address: \"h:1\", shards: [0, 0]}\n",
                "config.yaml:3:45: cluster.nodes[0].shards: shard 0 is listed twice");
    parse_fails("cluster:\n  nodes:\n    - {name: a, address: \"h:1\"}\n",
                "config.yaml:3:7: cluster.nodes[0]: missing \"shards\"");
    parse_fails("cluster:\n  nodes:\n    - {name: a, address: \"h:1\", shards: 3}\n",
                "config.yaml:3:41: cluster.nodes[0].shards: expected a list of shard ids such as "
                "[0, 1], got \"3\"");
    parse_fails("cluster:\n  nodes:\n    - {name: a, address: \"unix:/x\", shards: [0]}\n",
                "config.yaml:3:26: cluster.nodes[0].address must be HOST:PORT or [IPV6]:PORT, "
                "the node's workers' base address (shard N on PORT+N) (got \"unix:/x\"): a unix "
                "socket is not allowed here");
    parse_fails("node: {name: a}\ncluster:\n  shards: 4\n  nodes:\n"
                "    - {name: a, address: \"h:65534\", shards: [0, 1, 2, 3]}\n",
                "config.yaml:5:26: cluster.nodes[0].address port 65534 + highest shard id 3 is "
                "past 65535 (shard N listens on PORT+N)");
    /* "Every address" is no peer's address (a peer would reach itself:
     * one node's workers counted as two replicas). */
    parse_fails("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                "    - {name: a, address: \"127.0.0.1:100\", shards: [0, 1]}\n"
                "    - {name: b, address: \"0.0.0.0:200\", shards: [0, 1]}\n",
                "config.yaml:6:26: cluster.nodes[1].address 0.0.0.0:200: the unspecified address "
                "names no host (a connection to it reaches the connecting machine itself): give "
                "the serving node's own address; node.listen: \"0.0.0.0:PORT\" makes a node's "
                "workers listen on every address");
    parse_fails_with("node: {name: a}\ncluster:\n  shards: 1\n  nodes:\n"
                     "    - {name: a, address: \"[::]:100\", shards: [0]}\n",
                     "cluster.nodes[0].address [::]:100: the unspecified address names no host");
    /* cluster.remote (no map, no replicas) connects where it is told: on
     * one host, 0.0.0.0 reaches the other node's workers, as it did. */
    kvs_config_free(
        parse_ok("cluster:\n  shards: 2\n  remote: [{shard: 1, address: \"0.0.0.0:9\"}]\n"));
    /* This node's listeners on a worker port of the map on this host (a
     * peer, or this node, would link to the listener as to a worker). */
    parse_fails("router: {listen: \"127.0.0.1:201\"}\nnode: {name: a}\ncluster:\n  shards: 2\n"
                "  nodes:\n"
                "    - {name: a, address: \"127.0.0.1:100\", shards: [0, 1]}\n"
                "    - {name: c, address: \"localhost:200\", shards: [1]}\n",
                "config.yaml:1:18: router.listen 127.0.0.1:201: port 201 is the port of shard 1's "
                "worker of cluster.nodes[1] (c, localhost:200: shard N listens on PORT+N) on this "
                "host; choose a port outside every node's PORT .. PORT+1");
    parse_fails_with("router: {resp_listen: \"0.0.0.0:100\"}\nnode: {name: a}\ncluster:\n"
                     "  shards: 2\n  nodes:\n"
                     "    - {name: a, address: \"10.0.0.1:100\", shards: [0, 1]}\n",
                     "router.resp_listen 0.0.0.0:100: port 100 is the port of shard 0's worker of "
                     "cluster.nodes[0] (a, 10.0.0.1:100");
    parse_fails_with("router: {metrics_listen: \"10.0.0.2:201\"}\nnode: {name: a}\ncluster:\n"
                     "  shards: 2\n  nodes:\n"
                     "    - {name: a, address: \"10.0.0.1:100\", shards: [0, 1]}\n"
                     "    - {name: b, address: \"10.0.0.2:200\", shards: [0, 1]}\n",
                     "router.metrics_listen 10.0.0.2:201: port 201 is the port of shard 1's");
    /* The node's own listeners on one port, or on a port of its workers
     * (node.listen): the start failed, blaming "another process". */
    parse_fails("router: {listen: \"127.0.0.1:300\", resp_listen: \"0.0.0.0:300\"}\n",
                "config.yaml:1:48: router.resp_listen 0.0.0.0:300: port 300 is also "
                "router.listen's (127.0.0.1:300); each listener needs a port of its own");
    parse_fails_with("router: {resp_listen: \"127.0.0.1:301\", metrics_listen: "
                     "\"localhost:301\"}\n",
                     "router.metrics_listen localhost:301: port 301 is also "
                     "router.resp_listen's (127.0.0.1:301)");
    parse_fails_with("router: {metrics_listen: \"[::]:9527\"}\n",
                     "router.metrics_listen [::]:9527: port 9527 is also router.listen's "
                     "(127.0.0.1:9527)");
    parse_fails("cluster: {shards: 4}\nnode: {listen: \"127.0.0.1:9525\"}\n",
                "config.yaml:2:16: router.listen 127.0.0.1:9527: port 9527 is where shard 2's "
                "worker listens (node.listen 127.0.0.1:9525: shard N listens on PORT+N); choose "
                "a port outside 9525 .. 9528");
    parse_fails_with("cluster: {shards: 4}\nnode: {listen: \"0.0.0.0:9600\"}\n"
                     "router: {resp_listen: \"127.0.0.1:9603\"}\n",
                     "router.resp_listen 127.0.0.1:9603: port 9603 is where shard 3's worker");
    /* Different hosts, or a shard served elsewhere: no clash. */
    kvs_config_free(parse_ok("router: {listen: \"127.0.0.1:300\", resp_listen: "
                             "\"127.0.0.2:300\", metrics_listen: \"[::1]:300\"}\n"));
    kvs_config_free(parse_ok("cluster:\n  shards: 4\n  remote: [{shard: 2, address: "
                             "\"10.0.0.1:9\"}]\nnode: {listen: \"127.0.0.1:9525\"}\n"));
    /* Ports of shards a node does not serve are no worker's: a routing
     * node (no shards) whose map address is its client port, a node
     * serving shards 2 and 3 only. */
    kvs_config_free(parse_ok("router: {listen: \"0.0.0.0:9700\"}\nnode: {name: r}\ncluster:\n"
                             "  shards: 4\n  nodes:\n"
                             "    - {name: a, address: \"10.0.0.1:9700\", shards: [0, 1, 2, 3]}\n"
                             "    - {name: r, address: \"10.0.0.9:9700\", shards: []}\n"));
    kvs_config_free(parse_ok("router: {listen: \"127.0.0.1:9800\"}\nnode: {name: a}\ncluster:\n"
                             "  shards: 4\n  nodes:\n"
                             "    - {name: a, address: \"127.0.0.1:9700\", shards: [0, 1]}\n"
                             "    - {name: b, address: \"127.0.0.1:9800\", shards: [2, 3]}\n"));
    /* Other hosts' workers, or another address of this host, are no clash. */
    kvs_config_free(parse_ok("router: {listen: \"0.0.0.0:201\", resp_listen: \"127.0.0.1:100\"}\n"
                             "node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                             "    - {name: a, address: \"10.0.0.1:100\", shards: [0, 1]}\n"
                             "    - {name: b, address: \"10.0.0.2:200\", shards: [0, 1]}\n"));
    parse_fails(
        "cluster: {bootstrap: copy}\n",
        "config.yaml:1:22: cluster.bootstrap must be one of snapshot, replay (got \"copy\")");
    parse_fails("router: {retry_percent: 101}\n",
                "config.yaml:1:25: router.retry_percent must be an integer from 0 to 100 (got "
                "\"101\")");
}

KVS_TEST(reload_check_classifies_main_keys)
{
    char changed[512], fixed[512];
    kvs_config_t *a = parse_ok("router: {processes: 2}\n");
    kvs_config_t *live = parse_ok("router: {processes: 2, retry_percent: 20, retry_burst: 5}\n"
                                  "kafka: {max_lag: 7}\n"
                                  "cluster: {bootstrap: replay}\n"
                                  "limits: {auth_failures: 9, auth_failures_per_minute: 99}\n");
    CHECK_EQ(kvs_config_reload_check(a, live, changed, sizeof(changed), fixed, sizeof(fixed)), 0);
    CHECK_STR(changed, "cluster.bootstrap, router.retry_percent, router.retry_burst, "
                       "limits.auth_failures, limits.auth_failures_per_minute, kafka.max_lag");
    CHECK_STR(fixed, "");
    kvs_config_t *not_live =
        parse_ok("router: {processes: 3, resp_listen: \"127.0.0.1:6400\", metrics_listen: "
                 "\"127.0.0.1:9100\"}\n"
                 "node: {name: a}\n"
                 "cluster:\n  nodes:\n    - {name: a, address: \"127.0.0.1:7000\", shards: [0, 1, "
                 "2, 3]}\n"
                 "tls: {min_version: TLS1.3, cert: /c, key: /k}\n"
                 "users: [{name: alice, allow: {\"*\": read}}]\n");
    CHECK_EQ(kvs_config_reload_check(a, not_live, changed, sizeof(changed), fixed, sizeof(fixed)),
             KVS_ECONFIG);
    CHECK_STR(changed, "");
    CHECK_STR(fixed, "cluster.nodes, router.resp_listen, router.processes, "
                     "router.metrics_listen, node.name, tls.cert, tls.key, tls.min_version, "
                     "tls.router.cert, tls.router.key, tls.metrics.cert, tls.metrics.key, "
                     "tls.node.cert, tls.node.key, tls.link.cert, tls.link.key, users");
    kvs_config_free(a);
    kvs_config_free(live);
    kvs_config_free(not_live);
}

KVS_TEST(reload_check_cluster_map_is_live)
{
    char changed[512], fixed[512];
    kvs_config_t *ab = parse_ok("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                                "    - {name: a, address: \"127.0.0.1:7000\", shards: [0, 1]}\n"
                                "    - {name: b, address: \"127.0.0.1:7100\", shards: [0, 1]}\n");
    kvs_config_t *ad = parse_ok("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                                "    - {name: a, address: \"127.0.0.1:7000\", shards: [1]}\n"
                                "    - {name: d, address: \"127.0.0.1:7200\", shards: [0, 1]}\n");
    CHECK(!kvs_config_map_eq(ab, ad));
    CHECK_EQ(kvs_config_reload_check(ab, ad, changed, sizeof(changed), fixed, sizeof(fixed)), 0);
    CHECK_STR(changed, "cluster.nodes");
    CHECK_STR(fixed, "");
    /* With a key that is not live, the whole reload is refused. */
    kvs_config_t *ad_shards =
        parse_ok("node: {name: a}\ncluster:\n  shards: 2\n  partitions: 8\n  nodes:\n"
                 "    - {name: a, address: \"127.0.0.1:7000\", shards: [1]}\n"
                 "    - {name: d, address: \"127.0.0.1:7200\", shards: [0, 1]}\n");
    CHECK_EQ(kvs_config_reload_check(ab, ad_shards, changed, sizeof(changed), fixed, sizeof(fixed)),
             KVS_ECONFIG);
    CHECK_STR(changed, "cluster.nodes");
    CHECK_STR(fixed, "cluster.partitions");
    /* This node's own workers listen at its address: that is not live. */
    kvs_config_t *moved =
        parse_ok("node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n"
                 "    - {name: a, address: \"127.0.0.1:7300\", shards: [0, 1]}\n"
                 "    - {name: b, address: \"127.0.0.1:7100\", shards: [0, 1]}\n");
    CHECK_EQ(kvs_config_reload_check(ab, moved, changed, sizeof(changed), fixed, sizeof(fixed)),
             KVS_ECONFIG);
    CHECK_STR(fixed, "cluster.nodes (this node's own address)");
    /* apply_live leaves the map alone; apply_map swaps it whole. */
    kvs_config_apply_live(ab, ad);
    CHECK_EQ(kvs_config_replica_count(ab, 0), 2);
    CHECK(kvs_config_local(ab, 0));
    kvs_config_apply_map(ab, ad);
    CHECK(!kvs_config_local(ab, 0));
    CHECK(kvs_config_local(ab, 1));
    CHECK_STR(ab->self->name, "a");
    CHECK_STR(ab->nodes[1].name, "d");
    CHECK_STR(ad->nodes[1].name, "b"); /* the old map, freed with ad */
    CHECK(kvs_config_local(ad, 0));
    CHECK(kvs_config_map_eq(ab, ab));
    kvs_config_free(ab);
    kvs_config_free(ad);
    kvs_config_free(ad_shards);
    kvs_config_free(moved);
}

KVS_TEST(apply_live_swaps_only_live_values)
{
    char changed[256], fixed[256];
    kvs_config_t *cur = parse_ok("log: {level: info, slow_threshold: 5ms}\n"
                                 "limits: {max_inflight: 10}\nrouter: {timeout: 2s}\n");
    kvs_config_t *next = parse_ok("log: {level: DEBUG, format: json, slow_threshold: off}\n"
                                  "limits: {max_inflight: 20}\nrouter: {timeout: 3s}\n"
                                  "kafka: {max_lag: 3}\n");
    const kvs_config_t *addr = cur;
    CHECK_EQ(kvs_config_reload_check(cur, next, changed, sizeof(changed), fixed, sizeof(fixed)), 0);
    kvs_config_apply_live(cur, next);
    CHECK(cur == addr);
    CHECK_STR(cur->log_level, "debug");
    CHECK_EQ(cur->log_format, KVS_LOG_JSON);
    CHECK_EQ(cur->slow_threshold_ms, KVS_SLOWLOG_OFF);
    CHECK_EQ(cur->max_inflight, 20);
    CHECK_EQ(cur->router_timeout_ms, 3000);
    CHECK_EQ(cur->kafka_max_lag, 3);
    CHECK_STR(next->log_level, "info"); /* the old values, freed with next */
    CHECK_EQ(next->max_inflight, 10);
    CHECK_STR(cur->router_listen, "127.0.0.1:9527");
    kvs_config_free(next);
    kvs_config_free(cur);
}

/* A key checked after the load (a TLS file, data_dir's mode) is placed in
 * the file by the key its message begins with; a TLS endpoint's file, when
 * the file did not set it, by the tls key it took the value of. */
KVS_TEST(where_a_key_checked_after_the_load_was_set)
{
    kvs_config_t *cfg = parse_ok("data_dir: /d\ntls:\n  cert: /c.crt\n  key: /c.key\n"
                                 "  node: {enabled: true, ca: /ca.crt}\n");
    char where[128];
    CHECK(kvs_config_where(cfg, "data_dir /d is not a directory", where, sizeof(where)));
    CHECK_STR(where, "<string>:1:11"); /* cfg->path of a parse */
    CHECK(kvs_config_where(cfg, "tls.router.cert /c.crt: cannot load", where, sizeof(where)));
    CHECK_STR(where, "<string>:3:9"); /* tls.cert's */
    CHECK(kvs_config_where(cfg, "tls.node.ca /ca.crt: cannot load", where, sizeof(where)));
    CHECK_STR(where, "<string>:5:29");
    CHECK(!kvs_config_where(cfg, "storage.map_size: defaulted", where, sizeof(where)));
    CHECK(!kvs_config_where(cfg, "/some/file: plugins[0]", where, sizeof(where)));
    CHECK(!kvs_config_where(cfg, "", where, sizeof(where)));
    kvs_config_free(cfg);
}

KVS_TEST_MAIN(
    KVS_CASE(where_a_key_checked_after_the_load_was_set),
    KVS_CASE(load_from_a_snapshot_or_the_file), KVS_CASE(tls_sections_inherit_and_check),
    KVS_CASE(users_and_their_grants), KVS_CASE(file_mode_warnings),
    KVS_CASE(secret_kafka_properties), KVS_CASE(cluster_map_digest), KVS_CASE(cluster_nodes_map),
    KVS_CASE(cluster_nodes_errors), KVS_CASE(cluster_remote_and_router_keys),
    KVS_CASE(ops_keys_defaults_and_values), KVS_CASE(plugins_list),
    KVS_CASE(reload_check_names_the_keys), KVS_CASE(reload_refusal_names_file_and_line),
    KVS_CASE(reload_check_classifies_main_keys), KVS_CASE(reload_check_cluster_map_is_live),
    KVS_CASE(apply_live_swaps_only_live_values), KVS_CASE(defaults_from_empty_string),
    KVS_CASE(comments_and_empty_sections_are_defaults), KVS_CASE(full_file_parses),
    KVS_CASE(unknown_top_level_key), KVS_CASE(unknown_nested_key), KVS_CASE(duplicate_key),
    KVS_CASE(shards_range_and_type), KVS_CASE(partitions_less_than_shards), KVS_CASE(bad_sync_enum),
    KVS_CASE(bad_size_values), KVS_CASE(bad_duration_values), KVS_CASE(listen_addresses),
    KVS_CASE(kafka_brokers_addresses), KVS_CASE(null_and_wrong_type_values), KVS_CASE(log_levels),
    KVS_CASE(log_formats), KVS_CASE(bindings_default_format_and_block_style),
    KVS_CASE(bindings_errors), KVS_CASE(bindings_table_name_length), KVS_CASE(bindings_duplicates),
    KVS_CASE(kafka_properties), KVS_CASE(kafka_file_properties_are_checked),
    KVS_CASE(kafka_plugin_paths_are_checked), KVS_CASE(yaml_syntax_error),
    KVS_CASE(top_level_must_be_one_mapping), KVS_CASE(aliases_are_bounded),
    KVS_CASE(alias_expansion_is_bounded), KVS_CASE(nesting_is_bounded), KVS_CASE(tags_are_refused),
    KVS_CASE(many_keys_cost_n_log_n), KVS_CASE(long_broker_lists_cost_their_length),
    KVS_CASE(unique_lists_are_bounded), KVS_CASE(reader_errors_have_positions),
    KVS_CASE(data_dir_length), KVS_CASE(ready_timeout), KVS_CASE(liveness_timeout),
    KVS_CASE(local_reads), KVS_CASE(router_processes), KVS_CASE(load_from_descriptor),
    KVS_CASE(error_buffer_is_optional_and_bounded), KVS_CASE(load_from_temp_file),
    KVS_CASE(load_missing_file_and_directory), KVS_CASE(parse_size_table),
    KVS_CASE(parse_duration_table), KVS_CASE(free_accepts_null), KVS_CASE(bindings_partitioner))
