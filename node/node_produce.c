/*
 * node_produce: an idempotent librdkafka producer on a libuv loop (see
 * node_produce.h).
 *
 * librdkafka runs its own threads; its events (delivery reports, errors,
 * logs) wait in the producer's main queue, which signals a pipe when it
 * goes from empty to non-empty. A uv_poll on that pipe serves the queue on
 * the loop thread (rd_kafka_poll until it is empty), so every callback
 * here runs on the loop thread, like the rest of the worker.
 *
 * Why these defaults: enable.idempotence makes retries safe (the broker
 * drops a retried batch it already has) and implies acks=all and at most 5
 * requests in flight per broker, which keeps each partition's records in
 * the order they were sent; linger.ms=0 sends at once (records still batch
 * while earlier requests are in flight, which is when batching pays);
 * message.timeout.ms stays within the time a worker lets a write wait, so a
 * record is either acknowledged or given up by then; the queue is capped
 * at 64 MiB per worker so that a broker outage cannot make a worker buffer
 * without bound (sends beyond it fail at once, and the client is told);
 * allow.auto.create.topics is off (librdkafka turns it on for producers),
 * since the producer names the bound topics to the brokers as soon as it
 * starts: brokers that create topics on demand would otherwise create a
 * bound topic that does not exist, or was deleted to be created again,
 * with their default partition count.
 */
#include "node_produce.h"
#include "kvs_err.h"
#include "kvs_log.h"
#include "node_kafka.h"
#include "node_slot.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct node_produce_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    node_delivery_cb on_delivery;
    node_produce_fatal_cb on_fatal;
    void *arg;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;    /* the main queue: delivery reports, errors */
    rd_kafka_topic_t **rkt; /* one per binding, in cfg->bindings order */
    int pipefd[2];
    uv_poll_t poll;
    size_t outstanding;
    size_t max_record; /* message.max.bytes: larger records are refused (node_produce_fits) */
    int stopping;
    int failed; /* a fatal error: no more sends */
    /* A batch acknowledged without an offset (a broker answering
     * DUPLICATE_SEQUENCE_NUMBER): librdkafka numbers its records from the
     * base offset it got, -1, so its first record says -1 and the others
     * 0, 1, ..., which are not theirs. Their reports come one after the
     * other (one report per batch, in order): the partition and the next
     * such number while they come. A batch whose base offset really is 0
     * right after such a batch is taken for one too: its writes are
     * answered "may or may not" (and applied when ingestion reads them),
     * never with an offset that is not theirs. */
    const rd_kafka_topic_t *nooff_rkt;
    int32_t nooff_part; /* -1: none */
    int64_t nooff_next;
};

/* The offset of an acknowledged record as librdkafka reports it, or -1
 * when the broker gave none (see nooff_part). */
static int64_t acked_offset(node_produce_t *pr, const rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && pr->nooff_part >= 0 && m->rkt == pr->nooff_rkt &&
        m->partition == pr->nooff_part && m->offset == pr->nooff_next) {
        pr->nooff_next++;
        return -1;
    }
    pr->nooff_part = -1;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return -1;
    if (m->offset >= 0)
        return m->offset;
    pr->nooff_rkt = m->rkt;
    pr->nooff_part = m->partition;
    pr->nooff_next = m->offset + 1;
    return -1;
}

/* ---- events ------------------------------------------------------------------ */

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    node_produce_t *pr = opaque;
    (void)rk;
    node_delivery_t d = {
        .opaque = m->_private,
        .ok = m->err == RD_KAFKA_RESP_ERR_NO_ERROR,
        .why = m->err ? rd_kafka_err2str(m->err) : NULL,
        .not_written =
            m->err != 0 && rd_kafka_message_status(m) == RD_KAFKA_MSG_STATUS_NOT_PERSISTED,
        .too_large = m->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
        .partition = m->partition,
        .offset = acked_offset(pr, m),
        .key = m->key,
        .key_len = m->key_len,
        .payload = m->payload,
        .len = m->len,
        .record = m,
    };
    pr->outstanding--;
    pr->on_delivery(pr->arg, &d);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    node_produce_t *pr = opaque;
    char why[512], line[1024];
    if (err != RD_KAFKA_RESP_ERR__FATAL) {
        snprintf(line, sizeof(line), "%s", reason);
        node_kafka_scrub(pr->cfg, line);
        kvs_debug("kafka producer: %s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), line);
        return;
    }
    rd_kafka_fatal_error(rk, why, sizeof(why));
    node_kafka_scrub(pr->cfg, why);
    if (pr->failed)
        return;
    pr->failed = 1;
    char msg[700];
    snprintf(msg, sizeof(msg), "the Kafka producer failed for good (%s); restarting the worker",
             why);
    pr->on_fatal(pr->arg, msg);
}

/* Called from librdkafka's threads (node_kafka_log). */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    static _Atomic long last_warn;
    const node_produce_t *pr = rd_kafka_opaque(rk);
    node_kafka_log(&last_warn, pr != NULL ? pr->cfg : NULL, "producer ", level, fac, buf);
}

static void serve(node_produce_t *pr)
{
    /* A batch's reports are all served by one rd_kafka_poll: a run of
     * numbers (nooff_part) never spans two calls of this. */
    pr->nooff_part = -1;
    while (rd_kafka_poll(pr->rk, 0) > 0) {
    }
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    node_produce_t *pr = h->data;
    char buf[256];
    (void)events;
    if (status < 0)
        return;
    while (read(pr->pipefd[0], buf, sizeof(buf)) > 0) {
    }
    serve(pr);
}

/* ---- sending ----------------------------------------------------------------- */

static rd_kafka_topic_t *topic_of(node_produce_t *pr, const kvs_binding_t *b)
{
    for (size_t i = 0; i < pr->cfg->n_bindings; i++)
        if (&pr->cfg->bindings[i] == b)
            return pr->rkt[i];
    return NULL;
}

int node_produce_send(node_produce_t *pr, const kvs_binding_t *b, int32_t partition,
                      const void *key, size_t klen, const void *payload, size_t len,
                      const uint8_t id[KVS_RECORD_ID_LEN], void *opaque, char *why, size_t whylen)
{
    rd_kafka_topic_t *rkt = topic_of(pr, b);
    if (pr->stopping || pr->failed || rkt == NULL) {
        snprintf(why, whylen, "%s",
                 pr->failed ? "the Kafka producer failed for good" : "the worker is stopping");
        return KVS_ECLOSED;
    }
    size_t plen = payload != NULL ? len : 0;
    rd_kafka_resp_err_t err =
        rd_kafka_producev(pr->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(partition),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, klen),
                          RD_KAFKA_V_VALUE((void *)payload, plen),
                          RD_KAFKA_V_HEADER(KVS_RECORD_HEADER, id, KVS_RECORD_ID_LEN),
                          RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        pr->outstanding++;
        return 0;
    }
    snprintf(why, whylen, "%s", rd_kafka_err2str(err));
    switch (err) {
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return KVS_ELIMIT;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        return KVS_ETOOBIG;
    case RD_KAFKA_RESP_ERR__FATAL:
        return KVS_ECLOSED;
    default:
        return KVS_EINVAL;
    }
}

int node_produce_fits(const node_produce_t *pr, size_t klen, size_t len, size_t *size, size_t *max)
{
    *size = kvs_record_size(klen, len);
    *max = pr->max_record;
    return *size <= *max;
}

size_t node_produce_outstanding(const node_produce_t *pr)
{
    return pr->outstanding;
}

/* ---- start / stop ------------------------------------------------------------ */

uint64_t node_produce_timeout_ms(const kvs_config_t *cfg)
{
    uint64_t wait = node_wait_ms(cfg);
    return wait > 8 ? wait - wait / 8 : 1;
}

static rd_kafka_conf_t *make_conf(node_produce_t *pr, uint32_t shard, char *err, size_t errlen)
{
    char client_id[64 + KVS_NODE_NAME_MAX], timeout[32];
    node_kafka_client_id(pr->cfg, shard, "writer", client_id, sizeof(client_id));
    snprintf(timeout, sizeof(timeout), "%llu",
             (unsigned long long)node_produce_timeout_ms(pr->cfg));
    const node_kafka_prop_t defaults[] = {
        {"bootstrap.servers", pr->cfg->kafka_brokers},
        {"client.id", client_id},
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"linger.ms", "0"},
        {"message.timeout.ms", timeout},
        {"queue.buffering.max.kbytes", "65536"},
        {"allow.auto.create.topics", "false"},
        {"log.connection.close", "false"},
    };
    rd_kafka_conf_t *conf = node_kafka_conf(defaults, sizeof(defaults) / sizeof(defaults[0]),
                                            pr->cfg, "the producer of writes", err, errlen);
    if (conf == NULL)
        return NULL;
    rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_opaque(conf, pr);
    return conf;
}

static int start_poll(node_produce_t *pr)
{
    if (pipe2(pr->pipefd, O_NONBLOCK | O_CLOEXEC) != 0)
        return -errno;
    pr->q = rd_kafka_queue_get_main(pr->rk);
    int rc = node_kafka_queue_pipe(pr->q, pr->pipefd[1]);
    if (rc == 0)
        rc = uv_poll_init(pr->loop, &pr->poll, pr->pipefd[0]);
    if (rc != 0)
        return rc;
    pr->poll.data = pr;
    return uv_poll_start(&pr->poll, UV_READABLE, on_readable);
}

int node_produce_start(const node_produce_opts_t *o, node_produce_t **out, char *err, size_t errlen)
{
    char why[512];
    node_produce_t *pr = calloc(1, sizeof(*pr));
    if (pr == NULL)
        return -ENOMEM;
    pr->loop = o->loop;
    pr->cfg = o->cfg;
    pr->on_delivery = o->on_delivery;
    pr->on_fatal = o->on_fatal;
    pr->arg = o->arg;
    pr->pipefd[0] = pr->pipefd[1] = -1;
    pr->nooff_part = -1;
    *out = pr;
    rd_kafka_conf_t *conf = make_conf(pr, o->shard, err, errlen);
    if (conf == NULL)
        return KVS_ECONFIG;
    pr->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof(why));
    if (pr->rk == NULL) {
        node_kafka_scrub(pr->cfg, why);
        snprintf(err, errlen, "cannot create the Kafka producer of writes: %s", why);
        rd_kafka_conf_destroy(conf);
        return KVS_ECONFIG;
    }
    char max[32] = "1000000";
    size_t n = sizeof(max);
    rd_kafka_conf_get(rd_kafka_conf(pr->rk), "message.max.bytes", max, &n);
    pr->max_record = (size_t)strtoull(max, NULL, 10);
    pr->rkt = calloc(o->cfg->n_bindings ? o->cfg->n_bindings : 1, sizeof(*pr->rkt));
    if (pr->rkt == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < o->cfg->n_bindings; i++)
        pr->rkt[i] = rd_kafka_topic_new(pr->rk, o->cfg->bindings[i].topic, NULL);
    int rc = start_poll(pr);
    if (rc != 0)
        snprintf(err, errlen, "cannot start the Kafka producer of writes: %s", kvs_strerror(rc));
    return rc;
}

struct rd_kafka_s *node_produce_kafka(node_produce_t *pr)
{
    return pr->rk;
}

void node_produce_stop(node_produce_t *pr)
{
    if (pr == NULL || pr->stopping)
        return;
    pr->stopping = 1;
    if (pr->rk != NULL) {
        rd_kafka_purge(pr->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        serve(pr); /* the purged records' reports */
    }
    if (pr->poll.loop != NULL)
        uv_close((uv_handle_t *)&pr->poll, NULL);
}

void node_produce_free(node_produce_t *pr)
{
    if (pr == NULL)
        return;
    if (pr->q != NULL) {
        rd_kafka_queue_io_event_enable(pr->q, -1, NULL, 0);
        rd_kafka_queue_destroy(pr->q);
    }
    for (size_t i = 0; pr->rkt != NULL && i < pr->cfg->n_bindings; i++)
        if (pr->rkt[i] != NULL)
            rd_kafka_topic_destroy(pr->rkt[i]);
    free(pr->rkt);
    if (pr->rk != NULL && node_kafka_destroy(pr->rk, 0, NODE_KAFKA_CLOSE_MS, "producer") != 0)
        return; /* pr stays: the client may still call back */
    if (pr->pipefd[0] >= 0)
        close(pr->pipefd[0]);
    if (pr->pipefd[1] >= 0)
        close(pr->pipefd[1]);
    free(pr);
}
