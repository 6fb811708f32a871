/*
 * node_kafka: see node_kafka.h. With node_ingest.c and node_produce.c, the
 * only files that include rdkafka.h.
 */
#include "node_kafka.h"

#include "kvs_log.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

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

/* ---- bounded destroy ------------------------------------------------------------- */

typedef struct closer_s {
    rd_kafka_t *rk;
    int flags;
    uv_mutex_t mu;
    uv_cond_t cv;
    int done;
    struct closer_s *next;
} closer_t;

static atomic_int left_running;
static closer_t *left;          /* the closers left running: still theirs, never freed */
static uint64_t close_deadline; /* uv_hrtime: the first destroy's start + its timeout */

static void closer_run(void *arg)
{
    closer_t *c = arg;
    rd_kafka_destroy_flags(c->rk, c->flags);
    uv_mutex_lock(&c->mu);
    c->done = 1;
    uv_cond_signal(&c->cv);
    uv_mutex_unlock(&c->mu);
}

int node_kafka_destroy(rd_kafka_t *rk, int flags, uint64_t timeout_ms, const char *client)
{
    closer_t *c = calloc(1, sizeof(*c));
    uv_thread_t t;
    if (c == NULL || uv_mutex_init(&c->mu) != 0) {
        free(c);
        rd_kafka_destroy_flags(rk, flags); /* unbounded, but never skipped */
        return 0;
    }
    if (uv_cond_init(&c->cv) != 0) {
        uv_mutex_destroy(&c->mu);
        free(c);
        rd_kafka_destroy_flags(rk, flags);
        return 0;
    }
    c->rk = rk;
    c->flags = flags;
    if (uv_thread_create(&t, closer_run, c) != 0) {
        closer_run(c);
    } else {
        /* One budget for every client of the process, not one each: a
         * worker's stop closes its producer, then its consumer. */
        if (close_deadline == 0)
            close_deadline = uv_hrtime() + timeout_ms * 1000000u;
        uint64_t deadline = close_deadline;
        uv_mutex_lock(&c->mu);
        for (uint64_t now = uv_hrtime(); !c->done && now < deadline; now = uv_hrtime())
            (void)uv_cond_timedwait(&c->cv, &c->mu, deadline - now);
        int done = c->done;
        uv_mutex_unlock(&c->mu);
        if (!done) {
            c->next = left; /* the thread still uses it */
            left = c;
            atomic_store(&left_running, 1);
            kvs_warn("kafka: the %s did not close within %llu ms (the time a stop gives its "
                     "Kafka clients; a consumer waits for its group's offset commits, and for a "
                     "coordinator to take them); leaving it to the process exit. Nothing is "
                     "lost: LMDB holds what was applied.",
                     client, (unsigned long long)timeout_ms);
            return -ETIMEDOUT;
        }
        uv_thread_join(&t);
    }
    uv_cond_destroy(&c->cv);
    uv_mutex_destroy(&c->mu);
    free(c);
    return 0;
}

int node_kafka_left_running(void)
{
    return atomic_load(&left_running);
}
