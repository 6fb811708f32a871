/*
 * test_lookup: kvs_lookup answers on the loop with every address of a
 * name, and a lookup given up on calls nothing back and holds up no loop
 * (its thread frees what it finds: the sanitizer build checks that).
 */
#include "kvs_addr.h"
#include "kvs_lookup.h"
#include "kvs_test.h"

#include <arpa/inet.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int calls, status, n, first_family;
    unsigned port;
    kvs_lookup_t *lk;
} seen_t;

static void on_answer(kvs_lookup_t *lk, void *data, int status, struct addrinfo *res)
{
    seen_t *s = data;
    CHECK(lk == s->lk);
    s->calls++;
    s->status = status;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (s->n++ == 0) {
            s->first_family = ai->ai_family;
            s->port = ntohs(ai->ai_family == AF_INET
                                ? ((const struct sockaddr_in *)ai->ai_addr)->sin_port
                                : ((const struct sockaddr_in6 *)ai->ai_addr)->sin6_port);
        }
    }
    if (res != NULL)
        freeaddrinfo(res);
}

static kvs_addr_t addr(const char *text)
{
    kvs_addr_t a;
    CHECK_EQ(kvs_addr_parse(text, 0, &a, NULL, 0), 0);
    return a;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *calls is set (5 s at most), with a timer to keep
 * it alive: the lookup does not (its owner has a deadline of its own). */
static void wait_for(uv_loop_t *loop, const int *calls)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, on_tick, 10, 10);
    for (int i = 0; i < 500 && *calls == 0; i++)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

/* A numeric address and a name of /etc/hosts: the callback runs once on
 * the loop, with the port asked for. */
KVS_TEST(answers_on_the_loop)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    seen_t s = {0};
    kvs_addr_t a = addr("127.0.0.1:9527");
    CHECK_EQ(kvs_lookup_start(&loop, &a, on_answer, &s, &s.lk), 0);
    wait_for(&loop, &s.calls);
    CHECK_EQ(s.calls, 1);
    CHECK_EQ(s.status, 0);
    CHECK_EQ(s.first_family, AF_INET);
    CHECK_EQ(s.port, 9527u);
    seen_t l = {0};
    a = addr("localhost:80");
    CHECK_EQ(kvs_lookup_start(&loop, &a, on_answer, &l, &l.lk), 0);
    wait_for(&loop, &l.calls);
    CHECK_EQ(l.calls, 1);
    CHECK_EQ(l.status, 0);
    CHECK(l.n >= 1);
    CHECK_EQ(l.port, 80u);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0); /* the handles closed */
    CHECK_EQ(uv_loop_close(&loop), 0);
}

/* Given up on at once, or once its thread answered: no callback, and the
 * loop ends without waiting for anything. */
KVS_TEST(abandoned_calls_nothing_back)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    seen_t s = {0}, t = {0};
    kvs_addr_t a = addr("127.0.0.1:1");
    CHECK_EQ(kvs_lookup_start(&loop, &a, on_answer, &s, &s.lk), 0);
    kvs_lookup_abandon(s.lk);
    CHECK_EQ(kvs_lookup_start(&loop, &a, on_answer, &t, &t.lk), 0);
    usleep(200000); /* its thread has answered: the answer waits on the loop */
    kvs_lookup_abandon(t.lk);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(s.calls + t.calls, 0);
    CHECK_EQ(uv_loop_close(&loop), 0);
    usleep(200000); /* the first thread frees what it found (LeakSanitizer) */
}

/* The threads are bounded: past the bound a lookup is refused at once
 * (UV_EAGAIN: its caller tries again later), and a thread that ends, its
 * lookup given up on or not, makes room again. */
KVS_TEST(threads_are_bounded)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    seen_t s = {0}, t = {0};
    kvs_addr_t a = addr("127.0.0.1:1");
    kvs_lookup_t *lk = NULL;
    kvs_lookup_set_max_threads(0);
    CHECK_EQ(kvs_lookup_start(&loop, &a, on_answer, &s, &lk), UV_EAGAIN);
    CHECK(lk == NULL);
    kvs_lookup_set_max_threads(1);
    CHECK_EQ(kvs_lookup_start(&loop, &a, on_answer, &s, &s.lk), 0);
    kvs_lookup_abandon(s.lk);
    int rc = UV_EAGAIN;
    for (int i = 0; i < 500 && rc == UV_EAGAIN; i++) { /* once the given-up one's thread ends */
        rc = kvs_lookup_start(&loop, &a, on_answer, &t, &t.lk);
        if (rc == UV_EAGAIN)
            usleep(10000);
    }
    CHECK_EQ(rc, 0);
    wait_for(&loop, &t.calls);
    CHECK_EQ(t.calls, 1);
    CHECK_EQ(s.calls, 0);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

KVS_TEST_MAIN(KVS_CASE(answers_on_the_loop), KVS_CASE(abandoned_calls_nothing_back),
              KVS_CASE(threads_are_bounded))
