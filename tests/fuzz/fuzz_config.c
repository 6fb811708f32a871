/*
 * fuzz_config: config loading (common/kvs_config.h) on arbitrary text.
 *
 * The input is the whole file: kvs_config_parse must either return 0 with
 * a config or KVS_ECONFIG with no config and a non-empty, NUL-terminated
 * "name:line:column: message" in err. A config that loads is then read
 * through every accessor (bindings, remotes, per-table partitions) and
 * checked against the documented ranges, and freed. An error must name a
 * line and column inside the input. The input is handed over without a
 * trailing NUL, exactly as sized, so a loader that relies on one reads out
 * of bounds and ASan says so.
 *
 * Short inputs are also tried as a size and as a duration (the two scalar
 * parsers the loader uses), which need a C string. Leaks, memory errors and
 * UB are the sanitizers' job.
 */
#include "kvs_config.h"
#include "kvs_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Checks what the header promises about a config that loaded. */
static void check_config(const kvs_config_t *cfg)
{
    FUZZ_CHECK(cfg->data_dir != NULL && cfg->router_listen != NULL && cfg->node_listen != NULL);
    FUZZ_CHECK(cfg->kafka_brokers != NULL && cfg->kafka_group_id != NULL);
    FUZZ_CHECK(cfg->log_level != NULL && strlen(cfg->path) > 0);
    FUZZ_CHECK(cfg->shards >= 1 && cfg->shards <= 1024);
    FUZZ_CHECK(cfg->partitions >= cfg->shards && cfg->partitions <= 65536);
    FUZZ_CHECK(cfg->max_tables >= 1 && cfg->max_tables <= 32000);
    FUZZ_CHECK(cfg->max_frame >= 1024 && cfg->max_frame <= (1u << 30));
    FUZZ_CHECK(cfg->max_inflight >= 1 && cfg->max_inflight <= 1000000);
    FUZZ_CHECK(cfg->sync <= KVS_SYNC_NONE);
    FUZZ_CHECK(cfg->log_format == KVS_LOG_TEXT || cfg->log_format == KVS_LOG_JSON);
    for (size_t i = 0; i < cfg->n_bindings; i++) {
        const kvs_binding_t *b = &cfg->bindings[i];
        FUZZ_CHECK(b->topic != NULL && b->table != NULL && b->format <= KVS_FORMAT_VALUE);
        FUZZ_CHECK(b->partitioner <= KVS_PARTITIONER_NONE && b->table_len == strlen(b->table));
        FUZZ_CHECK(kvs_config_binding(cfg, b->table) == b); /* tables are unique */
        uint32_t parts = kvs_config_table_partitions(cfg, b->table);
        FUZZ_CHECK(parts == (b->partitions ? b->partitions : cfg->partitions));
    }
    for (size_t i = 0; i < cfg->n_remote; i++) {
        const kvs_remote_t *r = &cfg->remote[i];
        FUZZ_CHECK(r->shard < cfg->shards && r->address != NULL);
        FUZZ_CHECK(i == 0 || cfg->remote[i - 1].shard < r->shard); /* sorted, unique */
        FUZZ_CHECK(kvs_config_remote(cfg, r->shard) == r);
    }
    for (size_t i = 0; i < cfg->n_kafka_properties; i++)
        FUZZ_CHECK(cfg->kafka_properties[i].key != NULL && cfg->kafka_properties[i].value != NULL);
    for (size_t i = 0; i < cfg->n_plugins; i++) {
        const kvs_plugin_conf_t *pl = &cfg->plugins[i];
        FUZZ_CHECK(pl->path != NULL && pl->path[0] != '\0' && pl->arg != NULL && pl->line >= 1);
    }
    FUZZ_CHECK(cfg->metrics_listen != NULL && cfg->slow_max >= 1 && cfg->slow_max <= 100000);
    FUZZ_CHECK(cfg->slow_threshold_ms == KVS_SLOWLOG_OFF || cfg->slow_threshold_ms <= 3600000);
    char changed[256], fixed[256];
    FUZZ_CHECK(kvs_config_reload_check(cfg, cfg, changed, sizeof(changed), fixed, sizeof(fixed)) ==
                   0 &&
               changed[0] == '\0' && fixed[0] == '\0'); /* a config is itself */
    FUZZ_CHECK(kvs_config_binding(cfg, "") == NULL);
    FUZZ_CHECK(kvs_config_table_partitions(cfg, "__no_such_table") == cfg->partitions);
}

/* The size and duration parsers, on the input as a C string. */
static void scalars(const uint8_t *data, size_t size)
{
    char s[64];
    if (size >= sizeof(s))
        return;
    memcpy(s, data, size);
    s[size] = '\0';
    uint64_t v = 12345;
    int rc = kvs_config_parse_size(s, &v);
    FUZZ_CHECK(rc == 0 || (rc == KVS_EINVAL && v == 12345));
    v = 12345;
    rc = kvs_config_parse_duration_ms(s, &v);
    FUZZ_CHECK(rc == 0 || (rc == KVS_EINVAL && v == 12345));
}

/* Every error names its place as "fuzz.yaml:LINE:COLUMN: ", with a line
 * that exists in the input (a file of n line breaks has n + 1 lines), so a
 * user can go straight to it; only running out of memory has no place. */
static int has_position(const char *err, const uint8_t *data, size_t size)
{
    unsigned long line = 0, col = 0;
    int used = 0;
    if (strcmp(err, "fuzz.yaml: out of memory") == 0)
        return 1;
    if (sscanf(err, "fuzz.yaml:%lu:%lu: %n", &line, &col, &used) != 2 || used == 0)
        return 0;
    size_t breaks = 0;
    for (size_t i = 0; i < size; i++)
        breaks += data[i] == '\n' || data[i] == '\r' || data[i] == 0x85 || data[i] == 0xa8 ||
                  data[i] == 0xa9; /* and a bound for NEL, LS, PS */
    return line >= 1 && col >= 1 && line <= breaks + 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    kvs_config_t *cfg = NULL;
    memset(err, 0x5a, sizeof(err));
    int rc = kvs_config_parse("fuzz.yaml", (const char *)data, size, &cfg, err, sizeof(err));
    if (rc == 0) {
        FUZZ_CHECK(cfg != NULL);
        check_config(cfg);
    } else {
        FUZZ_CHECK(rc == KVS_ECONFIG && cfg == NULL);
        size_t n = strnlen(err, sizeof(err));
        FUZZ_CHECK(n > 0 && n < sizeof(err));
        FUZZ_CHECK(has_position(err, data, size)); /* says where */
    }
    kvs_config_free(cfg);
    scalars(data, size);
    return 0;
}
