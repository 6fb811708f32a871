/*
 * node_kafka: see node_kafka.h. With node_ingest.c and node_produce.c, the
 * only files that include rdkafka.h.
 */
#include "node_kafka.h"

#include "kvs_log.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

void node_kafka_scrub(const kvs_config_t *cfg, char *line)
{
    for (size_t i = 0; i < cfg->n_kafka_properties; i++) {
        const kvs_kv_t *kv = &cfg->kafka_properties[i];
        size_t n = strlen(kv->value);
        if (n < 4 || !kvs_config_secret_key(kv->key))
            continue;
        for (char *p = strstr(line, kv->value); p != NULL; p = strstr(p + n, kv->value))
            memset(p, '*', n);
    }
}

void node_kafka_log(_Atomic long *last_warn, const kvs_config_t *cfg, const char *client, int level,
                    const char *fac, const char *buf)
{
    if (level <= 4) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (ts.tv_sec == *last_warn)
            return;
        *last_warn = ts.tv_sec;
    }
    char line[2048];
    snprintf(line, sizeof(line), "%s", buf);
    if (cfg != NULL)
        node_kafka_scrub(cfg, line);
    /* syslog levels: 0-3 errors, 4 warning, 5-6 notice/info, 7 debug */
    kvs_log(level <= 3   ? KVS_LOG_ERROR
            : level == 4 ? KVS_LOG_WARN
            : level <= 6 ? KVS_LOG_INFO
                         : KVS_LOG_DEBUG,
            "librdkafka %s%s: %s", client, fac, line);
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
    snprintf(out, len, "kvs-%s%sshard-%u%s%s", cfg->node_name, cfg->node_name[0] ? "-" : "", shard,
             role[0] ? "-" : "", role);
}

int node_kafka_queue_pipe(rd_kafka_queue_t *q, int fd)
{
    rd_kafka_queue_io_event_enable(q, fd, "1", 1);
    return write(fd, "1", 1) == 1 ? 0 : -errno;
}

/* ---- bounded destroy ------------------------------------------------------------- */

typedef struct closer_s {
    rd_kafka_t *rk;
    int flags;
    struct closer_s *next;
} closer_t;

static closer_t *left;          /* the closers left running: still theirs, never freed */
static uint64_t close_deadline; /* CLOCK_MONOTONIC ns: the first destroy's start + its timeout */

static void *closer_run(void *arg)
{
    const closer_t *c = arg;
    rd_kafka_destroy_flags(c->rk, c->flags);
    return NULL;
}

static uint64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int node_kafka_destroy(rd_kafka_t *rk, int flags, uint64_t timeout_ms, const char *client)
{
    closer_t *c = calloc(1, sizeof(*c));
    pthread_t t;
    if (c != NULL) {
        c->rk = rk;
        c->flags = flags;
    }
    if (c == NULL || pthread_create(&t, NULL, closer_run, c) != 0) {
        free(c);
        rd_kafka_destroy_flags(rk, flags); /* cannot be bounded: unbounded, never skipped */
        return 0;
    }
    /* One budget for every client of the process, not one each: a
     * worker's stop closes its producer, then its consumer. */
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    if (close_deadline == 0)
        close_deadline = now + timeout_ms * 1000000u;
    /* pthread_timedjoin_np waits until a CLOCK_REALTIME time. */
    uint64_t until = now_ns(CLOCK_REALTIME) + (close_deadline > now ? close_deadline - now : 0);
    struct timespec ts = {.tv_sec = (time_t)(until / 1000000000u),
                          .tv_nsec = (long)(until % 1000000000u)};
    int rc;
    while ((rc = pthread_timedjoin_np(t, NULL, &ts)) == EINTR)
        ;
    if (rc == 0) {
        free(c);
        return 0;
    }
    c->next = left; /* the thread still runs */
    left = c;
    kvs_warn("kafka: the %s did not close within %llu ms (the time a stop gives its "
             "Kafka clients; a consumer waits for its group's offset commits, and for a "
             "coordinator to take them); leaving it to the process exit. Nothing is "
             "lost: LMDB holds what was applied.",
             client, (unsigned long long)timeout_ms);
    return -ETIMEDOUT;
}

int node_kafka_left_running(void)
{
    return left != NULL;
}
