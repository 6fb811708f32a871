/*
 * test_metrics: the pieces operations are built from, without processes:
 * histograms and the Prometheus text renderer (kvs_metrics), the request
 * hook chain (kvs_hook) and the slow log ring (kvs_slowlog). The rendered
 * text is compared exactly: it is what Prometheus parses (the integration
 * tests run promtool over a live node's).
 */
#include "kvs_hook.h"
#include "kvs_msg.h"
#include "kvs_metrics.h"
#include "kvs_slowlog.h"
#include "kvs_test.h"

#include <stdint.h>

static char *render(kvs_mb_t *b)
{
    static kvs_buf_t out;
    out.len = 0;
    CHECK(!b->failed);
    CHECK_EQ(kvs_metrics_render(b->fams, b->n, &out), 0);
    CHECK_EQ(kvs_buf_append(&out, "", 1), 0);
    return (char *)out.data;
}

KVS_TEST(histogram_buckets_are_le)
{
    static const uint64_t bounds[] = {10, 20, 30};
    kvs_hist_t h = {0};
    kvs_hist_observe(&h, bounds, 3, 0);
    kvs_hist_observe(&h, bounds, 3, 10); /* on the bound: that bucket (le) */
    kvs_hist_observe(&h, bounds, 3, 11);
    kvs_hist_observe(&h, bounds, 3, 30);
    kvs_hist_observe(&h, bounds, 3, 31); /* past the last: +Inf */
    CHECK_EQ(h.buckets[0], 2);
    CHECK_EQ(h.buckets[1], 1);
    CHECK_EQ(h.buckets[2], 1);
    CHECK_EQ(h.buckets[3], 1);
    CHECK_EQ(h.sum, 82);
}

KVS_TEST(counter_and_gauge_text)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    kvs_mb_t b;
    kvs_mb_init(&b, &a);
    Kvs__MetricFamily *f = kvs_mb_family(&b, "kvs_things_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                                         "Things\\counted\nso far.");
    kvs_mb_sample(&b, f, 3, 2, "shard", "1", "table", "a\"b\\c\nd");
    kvs_mb_sample(&b, f, 12345678901234.0, 0);
    Kvs__MetricFamily *g = kvs_mb_family(&b, "kvs_level", KVS__METRIC_FAMILY__TYPE__GAUGE, "Lvl.");
    kvs_mb_sample(&b, g, 0.25, 1, "x", "y");
    kvs_mb_sample(&b, g, -1, 1, "bad-name", "dropped");
    CHECK_STR(render(&b), "# HELP kvs_things_total Things\\\\counted\\nso far.\n"
                          "# TYPE kvs_things_total counter\n"
                          "kvs_things_total{shard=\"1\",table=\"a\\\"b\\\\c\\nd\"} 3\n"
                          "kvs_things_total 12345678901234\n"
                          "# HELP kvs_level Lvl.\n"
                          "# TYPE kvs_level gauge\n"
                          "kvs_level{x=\"y\"} 0.25\n"
                          "kvs_level -1\n");
    kvs_arena_close(&a);
}

KVS_TEST(histogram_text_is_cumulative_with_shortest_bounds)
{
    static const uint64_t bounds[] = {250000, 1000000};
    kvs_arena_t a;
    kvs_arena_init(&a);
    kvs_mb_t b;
    kvs_mb_init(&b, &a);
    kvs_hist_t h = {0};
    kvs_hist_observe(&h, bounds, 2, 100000);
    kvs_hist_observe(&h, bounds, 2, 500000);
    kvs_hist_observe(&h, bounds, 2, 2000000000);
    Kvs__MetricFamily *f =
        kvs_mb_family(&b, "kvs_t_seconds", KVS__METRIC_FAMILY__TYPE__HISTOGRAM, "T.");
    kvs_mb_hist(&b, f, &h, bounds, 2, 1e-9, 1, "command", "Hget");
    CHECK_STR(render(&b), "# HELP kvs_t_seconds T.\n"
                          "# TYPE kvs_t_seconds histogram\n"
                          "kvs_t_seconds_bucket{command=\"Hget\",le=\"0.00025\"} 1\n"
                          "kvs_t_seconds_bucket{command=\"Hget\",le=\"0.001\"} 2\n"
                          "kvs_t_seconds_bucket{command=\"Hget\",le=\"+Inf\"} 3\n"
                          "kvs_t_seconds_sum{command=\"Hget\"} 2.0006\n"
                          "kvs_t_seconds_count{command=\"Hget\"} 3\n");
    kvs_arena_close(&a);
}

KVS_TEST(families_of_one_name_merge)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    kvs_mb_t b;
    kvs_mb_init(&b, &a);
    /* The router's and two workers' process metrics, as the router merges them. */
    Kvs__MetricFamily *f =
        kvs_mb_family(&b, "kvs_rss_bytes", KVS__METRIC_FAMILY__TYPE__GAUGE, "RSS.");
    kvs_mb_sample(&b, f, 1, 1, "role", "router");
    Kvs__MetricFamily *other =
        kvs_mb_family(&b, "kvs_other", KVS__METRIC_FAMILY__TYPE__GAUGE, "Other.");
    kvs_mb_sample(&b, other, 7, 0);
    f = kvs_mb_family(&b, "kvs_rss_bytes", KVS__METRIC_FAMILY__TYPE__GAUGE, "RSS.");
    kvs_mb_sample(&b, f, 2, 2, "role", "node", "shard", "0");
    f = kvs_mb_family(&b, "kvs_rss_bytes", KVS__METRIC_FAMILY__TYPE__COUNTER, "Wrong type.");
    kvs_mb_sample(&b, f, 3, 0);
    f = kvs_mb_family(&b, "9bad", KVS__METRIC_FAMILY__TYPE__GAUGE, "Bad name.");
    kvs_mb_sample(&b, f, 3, 0);
    CHECK_STR(render(&b), "# HELP kvs_rss_bytes RSS.\n"
                          "# TYPE kvs_rss_bytes gauge\n"
                          "kvs_rss_bytes{role=\"router\"} 1\n"
                          "kvs_rss_bytes{role=\"node\",shard=\"0\"} 2\n"
                          "# HELP kvs_other Other.\n"
                          "# TYPE kvs_other gauge\n"
                          "kvs_other 7\n");
    kvs_arena_close(&a);
}

KVS_TEST(request_families_by_command_and_status)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    kvs_mb_t b;
    kvs_mb_init(&b, &a);
    static kvs_req_metrics_t m;
    kvs_req_metrics_count(&m, KVS__COMMAND_REQUEST__COMMAND_HSET, 200, 50000);
    kvs_req_metrics_count(&m, KVS__COMMAND_REQUEST__COMMAND_HSET, 200, 50000);
    kvs_req_metrics_count(&m, KVS__COMMAND_REQUEST__COMMAND_HGET, 404, 3000000);
    kvs_req_metrics_count(&m, 99, 299, 1); /* unknown command and status: counted, not lost */
    static const char *const labels[] = {"shard", "3"};
    kvs_mb_requests(&b, &m, "kvs_worker_", "a worker executed", 1, labels);
    CHECK_EQ(b.n, 2);
    char *text = render(&b);
    CHECK_CONTAINS(text, "# TYPE kvs_worker_requests_total counter\n");
    CHECK_CONTAINS(text,
                   "kvs_worker_requests_total{shard=\"3\",command=\"Hset\",status=\"200\"} 2\n");
    CHECK_CONTAINS(text,
                   "kvs_worker_requests_total{shard=\"3\",command=\"Hget\",status=\"404\"} 1\n");
    CHECK_CONTAINS(text,
                   "kvs_worker_requests_total{shard=\"3\",command=\"none\",status=\"other\"} 1\n");
    CHECK_CONTAINS(text, "kvs_worker_request_duration_seconds_bucket{shard=\"3\",command=\"Hget\","
                         "le=\"0.0025\"} 0\n");
    CHECK_CONTAINS(text, "kvs_worker_request_duration_seconds_bucket{shard=\"3\",command=\"Hget\","
                         "le=\"0.005\"} 1\n");
    CHECK_CONTAINS(text,
                   "kvs_worker_request_duration_seconds_count{shard=\"3\",command=\"Hset\"} 2\n");
    CHECK(strstr(text, "command=\"Hmset\"") == NULL); /* nothing counted: no sample */
    kvs_arena_close(&a);
}

/* Every command of the schema is counted under its own name: the table is
 * KVS_METRICS_COMMANDS wide, a number kept by hand, so a command added to
 * kvs.proto past it would be counted as "none" (Rebuild was, until
 * Hclear's turn widened it). Rendered, not only compared to the width. */
KVS_TEST(every_command_of_the_schema_has_its_own_row)
{
    const ProtobufCMessageDescriptor *d = &kvs__command_request__descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) == 0)
            continue; /* request options (min_position ...): not commands */
        kvs_arena_t a;
        kvs_arena_init(&a);
        kvs_mb_t b;
        kvs_mb_init(&b, &a);
        static kvs_req_metrics_t m;
        memset(&m, 0, sizeof(m));
        kvs_req_metrics_count(&m, f->id, 200, 1000);
        kvs_mb_requests(&b, &m, "kvs_", "executed", 0, NULL);
        char want[96];
        snprintf(want, sizeof(want), "kvs_requests_total{command=\"%s\",status=\"200\"} 1\n",
                 kvs_msg_command_name((Kvs__CommandRequest__CommandCase)f->id));
        CHECK(f->id < KVS_METRICS_COMMANDS);
        CHECK_CONTAINS(render(&b), want);
        CHECK(strcmp(kvs_msg_command_name((Kvs__CommandRequest__CommandCase)f->id), "none") != 0);
        kvs_arena_close(&a);
    }
}

KVS_TEST(process_families_are_plausible)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    kvs_mb_t b;
    kvs_mb_init(&b, &a);
    static const char *const labels[] = {"role", "router"};
    kvs_mb_process(&b, 1700000000.5, 1, labels);
    CHECK_EQ(b.n, 5);
    CHECK_STR(b.fams[0]->name, "kvs_process_resident_memory_bytes");
    CHECK(b.fams[0]->samples[0]->value > 100000); /* a process takes more than 100 kB */
    CHECK_STR(b.fams[2]->name, "kvs_process_open_fds");
    CHECK(b.fams[2]->samples[0]->value >= 3); /* stdin, stdout, stderr */
    CHECK_CONTAINS(render(&b), "kvs_process_start_time_seconds{role=\"router\"} 1700000000.5\n");
    kvs_arena_close(&a);
}

/* ---- hooks -------------------------------------------------------------------- */

static char calls[64];

static uint32_t hook_a(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req, char *msg,
                       size_t msglen)
{
    (void)state;
    (void)msg;
    (void)msglen;
    (void)req;
    strncat(calls, ev == KVS_HOOK_RECEIVED ? "a" : "A", sizeof(calls) - strlen(calls) - 1);
    return 0;
}

static uint32_t hook_stop(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req,
                          char *msg, size_t msglen)
{
    (void)ev;
    strncat(calls, "s", sizeof(calls) - strlen(calls) - 1);
    if (req->table != NULL && req->table_len == 6 && memcmp(req->table, "locked", 6) == 0) {
        snprintf(msg, msglen, "table %.*s is locked", (int)req->table_len, req->table);
        return *(uint32_t *)state;
    }
    return 0;
}

KVS_TEST(hooks_run_in_order_and_stop)
{
    kvs_hook_chain_t c;
    char msg[KVS_HOOK_MSG];
    uint32_t status = 403;
    kvs_hook_chain_init(&c);
    kvs_request_info_t req = {.struct_size = sizeof(req), .table = "users", .table_len = 5};
    CHECK_EQ(kvs_hook_run(&c, KVS_HOOK_RECEIVED, &req, msg, sizeof(msg)), 0); /* empty chain */
    CHECK_EQ(kvs_hook_add(&c, KVS_HOOK_MASK(KVS_HOOK_RECEIVED) | KVS_HOOK_MASK(KVS_HOOK_AFTER_SEND),
                          hook_a, NULL, 0),
             0);
    CHECK(!kvs_hook_keep_request(&c));
    CHECK_EQ(kvs_hook_add(&c, KVS_HOOK_ALL, hook_stop, &status, KVS_HOOK_KEEP_REQUEST), 0);
    CHECK(kvs_hook_keep_request(&c));
    CHECK_EQ(kvs_hook_add(&c, KVS_HOOK_MASK(KVS_HOOK_RECEIVED), hook_a, NULL, 0), 0);
    CHECK_EQ(kvs_hook_run(&c, KVS_HOOK_RECEIVED, &req, msg, sizeof(msg)), 0);
    CHECK_STR(calls, "asa");
    req.table = "locked";
    req.table_len = 6;
    calls[0] = '\0';
    CHECK_EQ(kvs_hook_run(&c, KVS_HOOK_RECEIVED, &req, msg, sizeof(msg)), 403);
    CHECK_STR(calls, "as"); /* the first stop ends the chain */
    CHECK_STR(msg, "table locked is locked");
    calls[0] = '\0';
    CHECK_EQ(kvs_hook_run(&c, KVS_HOOK_AFTER_SEND, &req, msg, sizeof(msg)), 0);
    CHECK_STR(calls, "As"); /* a stop at a send event is ignored */
    status = 200;           /* not an error status: a broken hook, 500 */
    CHECK_EQ(kvs_hook_run(&c, KVS_HOOK_EXECUTED, &req, msg, sizeof(msg)), 500);
    CHECK_CONTAINS(msg, "returned 200");
}

static const char *rude_text; /* what hook_rude writes; NULL: fill the buffer with "é" */

static uint32_t hook_rude(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req,
                          char *msg, size_t msglen)
{
    (void)state;
    (void)ev;
    (void)req;
    if (rude_text != NULL) {
        snprintf(msg, msglen, "%s", rude_text);
    } else {
        for (size_t i = 0; i + 1 < msglen; i += 2)
            msg[i] = (char)0xc3, msg[i + 1] = (char)0xa9;
        msg[msglen - 1] = (char)0xc3; /* no NUL at all: to the brim */
    }
    return 403;
}

/* A stopping hook's message becomes CommandResponse.message, a protobuf
 * string: invalid UTF-8 made the answer unparsable, a control character
 * reached terminals. The host escapes both and cuts at a whole character. */
KVS_TEST(a_hooks_message_is_made_printable_text)
{
    kvs_hook_chain_t c;
    char msg[KVS_HOOK_MSG];
    kvs_hook_chain_init(&c);
    kvs_request_info_t req = {.struct_size = sizeof(req), .table = "t", .table_len = 1};
    CHECK_EQ(kvs_hook_add(&c, KVS_HOOK_MASK(KVS_HOOK_RECEIVED), hook_rude, NULL, 0), 0);
    rude_text = "no \xff\xfe \x1b[31m\r\n \xc3\xa9 \xe2\x9c\x93";
    CHECK_EQ(kvs_hook_run(&c, KVS_HOOK_RECEIVED, &req, msg, sizeof(msg)), 403);
    CHECK_STR(msg, "no \\xff\\xfe \\x1b[31m\\x0d\\x0a \xc3\xa9 \xe2\x9c\x93");
    rude_text = NULL;
    CHECK_EQ(kvs_hook_run(&c, KVS_HOOK_RECEIVED, &req, msg, sizeof(msg)), 403);
    size_t n = strlen(msg);
    CHECK(n > 0 && n < sizeof(msg));
    CHECK(kvs_utf8_valid(msg, n));
    CHECK_EQ((unsigned char)msg[n - 1], 0xa9); /* ends at a whole character */
}

KVS_TEST(hook_chain_is_bounded)
{
    kvs_hook_chain_t c;
    kvs_hook_chain_init(&c);
    for (int i = 0; i < KVS_HOOK_MAX; i++)
        CHECK_EQ(kvs_hook_add(&c, KVS_HOOK_MASK(KVS_HOOK_EXECUTED), hook_a, NULL, 0), 0);
    /* Full for EXECUTED: a registration naming it adds nothing anywhere. */
    CHECK_EQ(kvs_hook_add(&c, KVS_HOOK_MASK(KVS_HOOK_EXECUTED) | KVS_HOOK_MASK(KVS_HOOK_RECEIVED),
                          hook_a, NULL, 0),
             -1);
    CHECK_EQ(c.n[KVS_HOOK_RECEIVED], 0);
    CHECK_EQ(kvs_hook_add(&c, 0, hook_a, NULL, 0), -1);
}

/* ---- slow log ---------------------------------------------------------------------- */

static void slow(kvs_slowlog_t *s, uint64_t us, const char *table)
{
    kvs_request_info_t req = {.struct_size = sizeof(req),
                              .command = KVS__COMMAND_REQUEST__COMMAND_HSET,
                              .table = table,
                              .table_len = (uint32_t)strlen(table),
                              .keys = 1,
                              .status = 200,
                              .peer = "127.0.0.1:4000",
                              .received_ns = 1000000000,
                              .now_ns = 1000000000 + us * 1000};
    kvs_slowlog_hook(s, KVS_HOOK_AFTER_SEND, &req, NULL, 0);
}

KVS_TEST(slowlog_keeps_the_newest_slow_requests)
{
    kvs_slowlog_t s;
    kvs_slowlog_init(&s);
    CHECK(!kvs_slowlog_on(&s));
    CHECK_EQ(kvs_slowlog_configure(&s, 10, 3), 0);
    CHECK(kvs_slowlog_on(&s));
    slow(&s, 9000, "fast");  /* 9 ms: under 10 ms */
    slow(&s, 10000, "edge"); /* exactly 10 ms: not slower */
    slow(&s, 10001, "t1");
    slow(&s, 20000, "t2");
    slow(&s, 30000, "t3");
    slow(&s, 40000, "t4"); /* evicts t1 */
    CHECK_EQ(s.len, 3);
    CHECK_STR(kvs_slowlog_get(&s, 0)->table, "t4");
    CHECK_STR(kvs_slowlog_get(&s, 2)->table, "t2");
    CHECK(kvs_slowlog_get(&s, 3) == NULL);
    CHECK_EQ(kvs_slowlog_get(&s, 0)->id, 4);
    CHECK_EQ(kvs_slowlog_get(&s, 0)->duration_us, 40000);
    CHECK_STR(kvs_slowlog_get(&s, 0)->client, "127.0.0.1:4000");
    /* A smaller ring keeps the newest; a larger one keeps them all. */
    CHECK_EQ(kvs_slowlog_configure(&s, 10, 2), 0);
    CHECK_STR(kvs_slowlog_get(&s, 0)->table, "t4");
    CHECK_STR(kvs_slowlog_get(&s, 1)->table, "t3");
    CHECK_EQ(kvs_slowlog_configure(&s, 0, 5), 0); /* 0: every request */
    slow(&s, 1, "t5");
    CHECK_EQ(s.len, 3);
    CHECK_STR(kvs_slowlog_get(&s, 0)->table, "t5");
    CHECK_EQ(kvs_slowlog_get(&s, 0)->id, 5);

    kvs_arena_t a;
    kvs_arena_init(&a);
    Kvs__OpsAnswer ops = KVS__OPS_ANSWER__INIT;
    CHECK_EQ(kvs_slowlog_answer(&s, 2, &a, &ops), 0);
    CHECK_EQ(ops.slowlog_len, 3);
    CHECK_EQ(ops.n_slowlog, 2);
    CHECK_STR(ops.slowlog[0]->command, "Hset");
    CHECK_STR(ops.slowlog[1]->table, "t4");
    kvs_slowlog_reset(&s);
    CHECK_EQ(s.len, 0);
    slow(&s, 1, "t6");
    CHECK_EQ(kvs_slowlog_get(&s, 0)->id, 6); /* ids go on after a reset */
    CHECK_EQ(kvs_slowlog_configure(&s, UINT64_MAX, 5), 0);
    CHECK(!kvs_slowlog_on(&s));
    kvs_arena_close(&a);
    kvs_slowlog_free(&s);
}

KVS_TEST_MAIN(KVS_CASE(histogram_buckets_are_le), KVS_CASE(counter_and_gauge_text),
              KVS_CASE(histogram_text_is_cumulative_with_shortest_bounds),
              KVS_CASE(families_of_one_name_merge),
              KVS_CASE(request_families_by_command_and_status),
              KVS_CASE(every_command_of_the_schema_has_its_own_row),
              KVS_CASE(process_families_are_plausible), KVS_CASE(hooks_run_in_order_and_stop),
              KVS_CASE(hook_chain_is_bounded), KVS_CASE(a_hooks_message_is_made_printable_text),
              KVS_CASE(slowlog_keeps_the_newest_slow_requests))
