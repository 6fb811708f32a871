/*
 * Unit tests for node_ack: the acknowledgement a copy owes its sender,
 * written before the copy is in place and sent on a connection of its
 * own until the sender answers. The sender is the test's own listener on
 * 127.0.0.1, answering each request with the next status of a script.
 */
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "kvs_test.h"
#include "kvs.pb-c.h"
#include "node_ack.h"
#include "node_bootstrap.h"

#include <sys/stat.h>
#include <uv.h>

static char dir[64], shard_dir[96], file[128];

static void remove_dir(void)
{
    unlink(file);
    rmdir(shard_dir);
    rmdir(dir);
}

static void fresh_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/kvs-test-ack-%d", (int)getpid());
    snprintf(shard_dir, sizeof(shard_dir), "%s/shard-1", dir);
    snprintf(file, sizeof(file), "%s/" NODE_ACK_FILE, shard_dir);
    remove_dir();
    CHECK_EQ(mkdir(dir, 0700), 0);
    CHECK_EQ(mkdir(shard_dir, 0700), 0);
    atexit(remove_dir);
}

static kvs_config_t *config(void)
{
    kvs_log_init("test", -1, KVS_LOG_INFO);
    char text[512], err[256];
    kvs_config_t *cfg = NULL;
    snprintf(text, sizeof(text), "data_dir: %s\nnode: {name: a}\ncluster: {shards: 2}\n", dir);
    int rc = kvs_config_parse("test", text, strlen(text), &cfg, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "%s\n", err);
    CHECK_EQ(rc, 0);
    return cfg;
}

KVS_TEST(peer_lines)
{
    kvs_replica_t p;
    char name[KVS_NODE_NAME_MAX + 1], line[200];
    CHECK(node_ack_peer_line("to b 7002 127.0.0.1\n", "to", &p, name));
    CHECK_STR(p.node, "b");
    CHECK_STR(p.addr.host, "127.0.0.1");
    CHECK_EQ(p.addr.port, 7002);
    CHECK(!p.local && !p.addr.is_unix);
    CHECK(node_ack_peer_line("from node-2 9 ::1\n", "from", &p, name));
    CHECK_STR(p.node, "node-2");
    CHECK_STR(p.addr.host, "::1");
    CHECK(node_ack_peer_line("to b 1 kvs-b.example\n", "to", &p, name));
    CHECK(!node_ack_peer_line("tob 1 127.0.0.1\n", "to", &p, name));
    CHECK(!node_ack_peer_line("tox b 1 127.0.0.1\n", "to", &p, name));
    CHECK(!node_ack_peer_line("from b 1 127.0.0.1\n", "to", &p, name));
    CHECK(!node_ack_peer_line("to b 0 127.0.0.1\n", "to", &p, name));
    CHECK(!node_ack_peer_line("to b 65536 127.0.0.1\n", "to", &p, name));
    CHECK(!node_ack_peer_line("to b 1\n", "to", &p, name));
    CHECK(!node_ack_peer_line("to b/c 1 127.0.0.1\n", "to", &p, name));
    char longname[KVS_NODE_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    snprintf(line, sizeof(line), "to %s 1 127.0.0.1\n", longname);
    CHECK(!node_ack_peer_line(line, "to", &p, name));
    longname[KVS_NODE_NAME_MAX] = '\0'; /* the longest name there is */
    snprintf(line, sizeof(line), "to %s 1 127.0.0.1\n", longname);
    CHECK(node_ack_peer_line(line, "to", &p, name));
    CHECK_EQ(strlen(p.node), KVS_NODE_NAME_MAX);
}

/* ---- a sender ------------------------------------------------------------------------ */

typedef struct {
    uv_loop_t loop;
    uv_tcp_t server;
    uint16_t port;
    const uint32_t *script; /* the status of each answer; 0: never answer */
    int requests;
    char node[80];
    uint8_t installed[KVS_HASH_LEN];
    kvs_conn_t *conns[8];
    int n_conns;
} sender_t;

static sender_t *g;

#define OVERSIZED 1 /* a script entry: an answer larger than any node_ack takes */

static void on_req(kvs_conn_t *c, const uint8_t *payload, size_t len)
{
    Kvs__CommandRequest *q = kvs__command_request__unpack(NULL, len, payload);
    CHECK(q != NULL && q->command_case == KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT);
    snprintf(g->node, sizeof(g->node), "%s", q->snapshot->node);
    CHECK_EQ(q->snapshot->installed.len, KVS_HASH_LEN);
    memcpy(g->installed, q->snapshot->installed.data, KVS_HASH_LEN);
    kvs__command_request__free_unpacked(q, NULL);
    uint32_t status = g->script[g->requests++];
    if (status == 0)
        return;                /* a sender that hangs */
    if (status == OVERSIZED) { /* a 200 past node_ack's bound on an answer (64 KiB) */
        static uint8_t big[4 + 7 + 100000];
        const uint32_t n = sizeof(big) - 4;
        big[0] = (uint8_t)(n >> 24), big[1] = (uint8_t)(n >> 16);
        big[2] = (uint8_t)(n >> 8), big[3] = (uint8_t)n;
        /* status 200, message of 100,000 bytes (varint a0 8d 06) */
        memcpy(big + 4, "\x08\xc8\x01\x12\xa0\x8d\x06", 7);
        memset(big + 11, 'x', sizeof(big) - 11);
        CHECK_EQ(kvs_buf_append(&c->out, big, sizeof(big)), 0);
    } else
        CHECK_EQ(kvs_msg_append_status(&c->out, status, "scripted %u", status), 0);
    kvs_conn_queue(c);
    kvs_conn_close_after_flush(c);
}

static void on_err(kvs_conn_t *c, int err)
{
    (void)err;
    kvs_conn_close(c);
}

static void on_gone(kvs_conn_t *c)
{
    for (int i = 0; i < g->n_conns; i++)
        if (g->conns[i] == c)
            g->conns[i] = NULL;
    free(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    CHECK_EQ(status, 0);
    CHECK(g->n_conns < 8);
    kvs_conn_t *c = calloc(1, sizeof(*c));
    CHECK_EQ(kvs_conn_init(c, &g->loop, 0, 65536, on_req, on_err, on_gone), 0);
    CHECK_EQ(uv_accept(server, &c->h.stream), 0);
    CHECK_EQ(kvs_conn_start(c), 0);
    g->conns[g->n_conns++] = c;
}

static void sender_init(sender_t *s, const uint32_t *script)
{
    memset(s, 0, sizeof(*s));
    g = s;
    s->script = script;
    CHECK_EQ(uv_loop_init(&s->loop), 0);
    struct sockaddr_in sa;
    CHECK_EQ(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    CHECK_EQ(uv_tcp_init(&s->loop, &s->server), 0);
    CHECK_EQ(uv_tcp_bind(&s->server, (const struct sockaddr *)&sa, 0), 0);
    CHECK_EQ(uv_listen((uv_stream_t *)&s->server, 8, on_connection), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    CHECK_EQ(uv_tcp_getsockname(&s->server, (struct sockaddr *)&ss, &len), 0);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Closes the sender, runs the loop dry: nothing of node_ack is left in it. */
static void sender_close(sender_t *s)
{
    uv_close((uv_handle_t *)&s->server, NULL);
    for (int i = 0; i < s->n_conns; i++)
        if (s->conns[i] != NULL)
            kvs_conn_close(s->conns[i]);
    CHECK_EQ(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&s->loop), 0);
}

static void on_give_up(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Runs the loop until the file is gone (1) or `ms` pass (0); with
 * `whole`, for `ms` whatever happens (returns whether it is gone). */
static int run_loop(sender_t *s, uint64_t ms, int whole)
{
    uv_timer_t t;
    uv_timer_init(&s->loop, &t);
    uv_timer_start(&t, on_give_up, ms, 0);
    int gone = 0;
    while (((gone = access(file, F_OK) != 0) == 0 || whole) && uv_timer_get_due_in(&t) > 0)
        uv_run(&s->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    return gone;
}

static void owe(const sender_t *s, const uint8_t *digest)
{
    kvs_replica_t peer = {.node = "b"};
    char text[64];
    snprintf(text, sizeof(text), "127.0.0.1:%u", s->port);
    CHECK_EQ(kvs_addr_parse(text, 0, &peer.addr, NULL, 0), 0);
    CHECK_EQ(node_ack_owe(shard_dir, 1, &peer, digest), 0);
}

/* Owed, then sent: an answer the sender may give otherwise later (503,
 * or 401 and 403: its users or certificates may be mended) is tried again
 * after a pause; 200 ends it and removes the file. */
KVS_TEST(sent_until_the_sender_records_it)
{
    fresh_dir();
    kvs_config_t *cfg = config();
    static const uint32_t script[] = {503, 403, 200};
    sender_t s;
    sender_init(&s, script);
    uint8_t digest[KVS_HASH_LEN];
    for (int i = 0; i < KVS_HASH_LEN; i++)
        digest[i] = (uint8_t)(i * 7);
    owe(&s, digest);
    char text[1024];
    FILE *f = fopen(file, "r");
    CHECK(f != NULL);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    CHECK_CONTAINS(text, "\nto b ");
    CHECK_CONTAINS(text, " 127.0.0.1\ninstalled 00070e151c232a31383f464d545b6269\n");
    node_ack_t *a = NULL;
    CHECK_EQ(node_ack_start(&s.loop, cfg, 1, &a), 0);
    CHECK(a != NULL);
    CHECK(run_loop(&s, 8000, 0));
    CHECK_EQ(s.requests, 3);
    CHECK_STR(s.node, "a");
    CHECK_EQ(memcmp(s.installed, digest, KVS_HASH_LEN), 0);
    node_ack_stop(a);
    sender_close(&s);
    node_ack_free(a);
    kvs_config_free(cfg);
}

/* A 4xx says the sender has nothing to record: not sent again. */
KVS_TEST(a_refusal_ends_it)
{
    fresh_dir();
    kvs_config_t *cfg = config();
    static const uint32_t script[] = {404, 200};
    sender_t s;
    sender_init(&s, script);
    uint8_t digest[KVS_HASH_LEN] = {1};
    owe(&s, digest);
    node_ack_t *a = NULL;
    CHECK_EQ(node_ack_start(&s.loop, cfg, 1, &a), 0);
    CHECK(run_loop(&s, 5000, 0));
    CHECK(run_loop(&s, 1500, 1)); /* past the first pause: nothing more */
    CHECK_EQ(s.requests, 1);
    node_ack_stop(a);
    sender_close(&s);
    node_ack_free(a);
    kvs_config_free(cfg);
}

/* A sender that never answers: stopping mid-attempt leaves a loop that
 * closes cleanly, and the file for the next start. Nothing owed, or no
 * node name: nothing runs. */
KVS_TEST(stopped_mid_attempt_it_stays_owed)
{
    fresh_dir();
    kvs_config_t *cfg = config();
    static const uint32_t script[] = {0, 0};
    sender_t s;
    sender_init(&s, script);
    node_ack_t *a = NULL;
    CHECK_EQ(node_ack_start(&s.loop, cfg, 1, &a), 0);
    CHECK(a == NULL); /* none owed */
    uint8_t digest[KVS_HASH_LEN] = {2};
    owe(&s, digest);
    CHECK_EQ(node_ack_start(&s.loop, cfg, 1, &a), 0);
    CHECK(a != NULL);
    CHECK(!run_loop(&s, 300, 0));
    CHECK_EQ(s.requests, 1);
    node_ack_stop(a);
    node_ack_stop(a); /* twice: harmless */
    sender_close(&s);
    node_ack_free(a);
    CHECK_EQ(access(file, F_OK), 0);
    node_ack_void(shard_dir); /* the copy is gone: so is what it owed */
    CHECK(access(file, F_OK) != 0);
    kvs_config_free(cfg);
}

/* A start that finds no copy in place voids what an earlier one owed (a
 * stop came between the file and the rename: that copy is not installed,
 * and must not be acknowledged); one that finds a copy keeps it, and
 * removes a moving-in marker the stop left. */
KVS_TEST(a_start_without_a_copy_voids_what_it_owed)
{
    fresh_dir();
    kvs_config_t *cfg = config();
    static const uint32_t script[] = {200};
    sender_t s;
    sender_init(&s, script);
    uint8_t digest[KVS_HASH_LEN] = {3};
    owe(&s, digest);
    char marker[160], data[160], err[256];
    snprintf(marker, sizeof(marker), "%s/moving-in", shard_dir);
    snprintf(data, sizeof(data), "%s/data.mdb", shard_dir);
    node_bootstrap_t *running = NULL;
    CHECK_EQ(node_bootstrap_run(&s.loop, cfg, 1, NULL, 0, NULL, &running, err, sizeof(err)), 0);
    CHECK(access(file, F_OK) != 0);
    owe(&s, digest);
    FILE *f = fopen(data, "w");
    CHECK(f != NULL);
    fclose(f);
    f = fopen(marker, "w");
    CHECK(f != NULL);
    fputs("from b 1 127.0.0.1\n", f);
    fclose(f);
    CHECK_EQ(node_bootstrap_run(&s.loop, cfg, 1, NULL, 0, NULL, &running, err, sizeof(err)), 0);
    CHECK_EQ(access(file, F_OK), 0);
    CHECK(access(marker, F_OK) != 0);
    unlink(data);
    sender_close(&s);
    kvs_config_free(cfg);
}

/* An answer past the bound node_ack reads (64 KiB: a status line) is not
 * read: the connection is dropped and the acknowledgement said again. */
KVS_TEST(an_oversized_answer_is_not_taken)
{
    fresh_dir();
    kvs_config_t *cfg = config();
    static const uint32_t script[] = {OVERSIZED, 200};
    sender_t s;
    sender_init(&s, script);
    uint8_t digest[KVS_HASH_LEN] = {4};
    owe(&s, digest);
    node_ack_t *a = NULL;
    CHECK_EQ(node_ack_start(&s.loop, cfg, 1, &a), 0);
    CHECK(run_loop(&s, 5000, 0));
    CHECK_EQ(s.requests, 2);
    node_ack_stop(a);
    sender_close(&s);
    node_ack_free(a);
    kvs_config_free(cfg);
}

/* A sender that takes the acknowledgement and never answers holds an
 * attempt no longer than its deadline (10 s; 2 s here): then it is said
 * again. */
KVS_TEST(a_silent_sender_is_given_up_at_the_attempts_deadline)
{
    fresh_dir();
    kvs_config_t *cfg = config();
    static const uint32_t script[] = {0, 200};
    sender_t s;
    sender_init(&s, script);
    uint8_t digest[KVS_HASH_LEN] = {5};
    owe(&s, digest);
    node_ack_t *a = NULL;
    node_ack_set_attempt_ms(2000);
    uint64_t start = uv_now(&s.loop);
    CHECK_EQ(node_ack_start(&s.loop, cfg, 1, &a), 0);
    CHECK(!run_loop(&s, 1800, 0)); /* within the deadline: still waiting */
    CHECK_EQ(s.requests, 1);
    CHECK(run_loop(&s, 6000, 0)); /* past it, and the pause: said again, heard */
    CHECK_EQ(s.requests, 2);
    CHECK(uv_now(&s.loop) - start >= 2000);
    node_ack_stop(a);
    sender_close(&s);
    node_ack_free(a);
    kvs_config_free(cfg);
}

KVS_TEST_MAIN(KVS_CASE(an_oversized_answer_is_not_taken),
              KVS_CASE(a_silent_sender_is_given_up_at_the_attempts_deadline), KVS_CASE(peer_lines),
              KVS_CASE(sent_until_the_sender_records_it), KVS_CASE(a_refusal_ends_it),
              KVS_CASE(stopped_mid_attempt_it_stays_owed),
              KVS_CASE(a_start_without_a_copy_voids_what_it_owed))
