/*
 * Tests for router_procs (the master/router process contract: how many,
 * limit shares, id spaces, the notify line) and router_ports (shared
 * listeners, and who else listens on a port), with real sockets on
 * 127.0.0.1 for the latter.
 */
#include "kvs_test.h"
#include "kvs_config.h"
#include "kvs_err.h"
#include "router_ports.h"
#include "router_procs.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- router_procs ----------------------------------------------------------------- */

KVS_TEST(count_auto_and_configured)
{
    CHECK_EQ(router_procs_count(3), 3);
    CHECK_EQ(router_procs_count(64), 64);
    uint32_t a = router_procs_count(0);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(a >= 1 && a <= ROUTER_PROCS_AUTO_MAX);
    CHECK(a <= (uint32_t)online);
}

KVS_TEST(parts_add_up_and_never_zero)
{
    CHECK_EQ(router_procs_part(10000, 0, 1), 10000);
    CHECK_EQ(router_procs_part(10, 0, 3), 4);
    CHECK_EQ(router_procs_part(10, 1, 3), 3);
    CHECK_EQ(router_procs_part(10, 2, 3), 3);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < 7; i++)
        sum += router_procs_part(1000003, i, 7);
    CHECK_EQ(sum, 1000003);
    CHECK_EQ(router_procs_part(1, 0, 2), 1);
    CHECK_EQ(router_procs_part(1, 1, 2), 1); /* never 0 */
}

KVS_TEST(share_splits_node_limits)
{
    kvs_config_t *cfg = NULL;
    const char text[] = "limits: {max_clients: 10001, input_buffers: 256MiB, max_frame: 4MiB, "
                        "max_inflight: 7, client_output: 64MiB, auth_failures_per_minute: 20, "
                        "output_buffers: 1GiB}\n";
    CHECK_EQ(kvs_config_parse("c", text, strlen(text), &cfg, NULL, 0), 0);
    router_procs_share(cfg, 1, 1); /* one router: nothing changes */
    CHECK_EQ(cfg->max_clients, 10001);
    CHECK_EQ(cfg->input_buffers, 256ull << 20);
    CHECK_EQ(cfg->output_buffers, 1ull << 30);
    router_procs_share(cfg, 0, 2);
    CHECK_EQ(cfg->max_clients, 5001);
    CHECK_EQ(cfg->input_buffers, 128ull << 20);
    CHECK_EQ(cfg->output_buffers, 512ull << 20);
    CHECK_EQ(cfg->max_inflight, 7);              /* per connection */
    CHECK_EQ(cfg->client_output, 64ull << 20);   /* per connection */
    CHECK_EQ(cfg->auth_failures_per_minute, 20); /* per router process */
    router_procs_share(cfg, 1, 64);              /* 128MiB / 64 = 2MiB < max_frame */
    CHECK_EQ(cfg->input_buffers, 4ull << 20);
    CHECK_EQ(cfg->output_buffers, 64ull << 20); /* 512MiB / 64 = 8MiB < client_output */
    kvs_config_free(cfg);
}

KVS_TEST(id_spaces_are_disjoint_and_below_2_53)
{
    CHECK_EQ(router_procs_id_base(0, 0), 0); /* one router counts 1, 2, 3 as always */
    uint64_t seen[64 * 3];
    size_t n = 0;
    for (uint32_t i = 0; i < 64; i++) {
        for (uint32_t g = 0; g < 3; g++) {
            uint64_t b = router_procs_id_base(i, g);
            CHECK_EQ(b & ROUTER_ID_COUNTER_MASK, 0);
            CHECK_EQ(router_procs_id_router(b | 12345), i);
            for (size_t k = 0; k < n; k++)
                CHECK(seen[k] != b);
            seen[n++] = b;
        }
    }
    uint64_t top = router_procs_id_base(63, 127) | ROUTER_ID_COUNTER_MASK;
    CHECK(top < (UINT64_C(1) << 53));
    CHECK(top < ROUTER_ID_LIMIT);
    CHECK_EQ(router_procs_id_base(2, 128), router_procs_id_base(2, 0)); /* generations wrap */
}

KVS_TEST(a_new_generation_hands_out_no_serving_process_ids)
{
    /* Each new process starts at the base; old process i runs next[i] - 1. */
    const uint32_t fresh[] = {1, 1, 1};
    CHECK_EQ(router_procs_next_gen_base(fresh, 3), 1);
    const uint32_t some[] = {3, 9, 5};
    CHECK_EQ(router_procs_next_gen_base(some, 3), 9);
    /* Router 1 restarted 127 times more than router 0: 128 would be router
     * 0's own generation 0 again, modulo 128. */
    const uint32_t skewed[] = {1, 128};
    uint32_t b = router_procs_next_gen_base(skewed, 2);
    CHECK(b >= 128);
    for (uint32_t i = 0; i < 2; i++)
        CHECK(router_procs_id_base(i, b) != router_procs_id_base(i, skewed[i] - 1));
    /* Every residue but one taken by some router's running process. */
    uint32_t many[64];
    for (uint32_t i = 0; i < 64; i++)
        many[i] = 1000 + i; /* running 999 + i */
    b = router_procs_next_gen_base(many, 64);
    CHECK(b >= 1063);
    for (uint32_t i = 0; i < 64; i++)
        CHECK(router_procs_id_base(i, b) != router_procs_id_base(i, many[i] - 1));
    const uint32_t none[] = {0};
    CHECK_EQ(router_procs_next_gen_base(none, 1), 0); /* nothing ran: nothing to avoid */
}

KVS_TEST(listening_line_round_trip)
{
    char line[64];
    uint64_t in[2] = {123456, 42}, out[2];
    size_t n = 0;
    size_t len = router_procs_listening_line(line, sizeof(line), in, 2);
    CHECK_STR(line, "listening 123456 42\n");
    CHECK_EQ(len, strlen(line));
    line[len - 1] = '\0';
    CHECK_EQ(router_procs_parse_listening(line, out, &n), 0);
    CHECK_EQ(n, 2);
    CHECK_EQ(out[0], 123456);
    CHECK_EQ(out[1], 42);
    CHECK_EQ(router_procs_listening_line(line, sizeof(line), in, 1), strlen("listening 123456\n"));
    CHECK_EQ(router_procs_listening_line(line, 8, in, 1), 0); /* does not fit */
    CHECK_EQ(router_procs_listening_line(line, sizeof(line), in, 0), 0);
    CHECK_EQ(router_procs_parse_listening("listening 7", out, &n), 0);
    CHECK_EQ(n, 1);
    const char *bad[] = {
        "listening", "listening ", "listening x", "listening 1 2 3", "listening 1x", "ready 1", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_EQ(router_procs_parse_listening(bad[i], out, &n), KVS_EINVAL);
}

/* ---- router_ports ----------------------------------------------------------------- */

static struct sockaddr_storage sa_of(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':') != NULL) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        CHECK_EQ(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        CHECK_EQ(inet_pton(AF_INET, ip, &a->sin_addr), 1);
    }
    return ss;
}

KVS_TEST(overlap_of_listening_addresses)
{
    static const struct {
        const char *a, *b;
        int overlap;
    } cases[] = {
        {"127.0.0.1", "127.0.0.1", 1},
        {"127.0.0.1", "127.0.0.2", 0},
        {"0.0.0.0", "127.0.0.2", 1},
        {"127.0.0.1", "::", 1},
        {"::ffff:127.0.0.1", "127.0.0.1", 1},
        {"::ffff:127.0.0.1", "127.0.0.9", 0},
        {"::1", "::1", 1},
        {"::1", "127.0.0.1", 0},
        {"::1", "fe80::1", 0},
        /* An IPv4 wildcard takes no IPv6 client: a router on [::1]:P does
         * not share its port with another process's 0.0.0.0:P. */
        {"0.0.0.0", "::1", 0},
        {"0.0.0.0", "2001:db8::1", 0},
        {"0.0.0.0", "::ffff:10.0.0.1", 1},
        {"0.0.0.0", "::", 1},
        {"0.0.0.0", "0.0.0.0", 1},
        {"::", "::1", 1},
        {"::", "::", 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sockaddr_storage a = sa_of(cases[i].a, 1), b = sa_of(cases[i].b, 1);
        CHECK_EQ(router_ports_overlap((struct sockaddr *)&a, (struct sockaddr *)&b),
                 cases[i].overlap);
        CHECK_EQ(router_ports_overlap((struct sockaddr *)&b, (struct sockaddr *)&a),
                 cases[i].overlap);
    }
}

static void on_conn(uv_stream_t *s, int status)
{
    (void)s, (void)status;
}

/* A port free right now on 127.0.0.1. */
static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_storage ss = sa_of("127.0.0.1", 0);
    socklen_t len = sizeof(struct sockaddr_in);
    CHECK_EQ(bind(fd, (struct sockaddr *)&ss, len), 0);
    CHECK_EQ(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
    close(fd);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Two router processes' listeners share a port; a socket that does not set
 * SO_REUSEPORT keeps them out; the census tells ours from another's. */
KVS_TEST(shared_listeners_and_census)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    uint16_t port = free_port();
    kvs_addr_t addr;
    char spec[64], err[128];
    snprintf(spec, sizeof(spec), "127.0.0.1:%u", port);
    CHECK_EQ(kvs_addr_parse(spec, 0, &addr, err, sizeof(err)), 0);
    kvs_listener_t a, b, c;
    uint64_t ia = 0, ib = 0, ic = 0;
    CHECK_EQ(router_ports_listen(&loop, &addr, &a, on_conn, &ia), 0);
    CHECK_EQ(router_ports_listen(&loop, &addr, &b, on_conn, &ib), 0);
    CHECK(ia != 0 && ib != 0 && ia != ib);
    struct sockaddr_storage sa = sa_of("127.0.0.1", port), any = sa_of("0.0.0.0", port);
    router_port_sock_t who;
    uint64_t ours[2] = {ia, ib};
    CHECK_EQ(router_ports_foreign((struct sockaddr *)&sa, ours, 2, &who), 0);
    CHECK_EQ(router_ports_foreign((struct sockaddr *)&any, ours, 2, &who), 0);
    CHECK_EQ(router_ports_foreign((struct sockaddr *)&sa, ours, 1, &who), 1);
    CHECK_EQ(who.inode, ib);
    CHECK_EQ(who.uid, getuid());
    struct sockaddr_storage other = sa_of("127.0.0.2", port);
    CHECK_EQ(router_ports_foreign((struct sockaddr *)&other, NULL, 0, &who), 0);
    /* A third router may join... */
    CHECK_EQ(router_ports_listen(&loop, &addr, &c, on_conn, &ic), 0);
    uv_close(&c.handle, NULL);
    uv_close(&a.handle, NULL);
    uv_close(&b.handle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ(router_ports_foreign((struct sockaddr *)&sa, NULL, 0, &who), 0); /* all gone */
    /* ...but not when the port is held by a socket that does not share it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(struct sockaddr_in)), 0);
    CHECK_EQ(listen(fd, 1), 0);
    CHECK_EQ(router_ports_listen(&loop, &addr, &a, on_conn, &ia), UV_EADDRINUSE);
    struct stat st;
    CHECK_EQ(fstat(fd, &st), 0);
    CHECK_EQ(router_ports_foreign((struct sockaddr *)&sa, NULL, 0, &who), 1);
    CHECK_EQ(who.inode, (uint64_t)st.st_ino);
    close(fd);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

/* Each router process's own socket, and the name a membership change's
 * new one listens on until it is renamed over it: as long as each other,
 * so a data_dir the config accepts fits both. */
KVS_TEST(admin_socket_and_its_next_name)
{
    kvs_config_t *cfg = NULL;
    const char text[] = "data_dir: /var/lib/kvs\n";
    CHECK_EQ(kvs_config_parse("c", text, strlen(text), &cfg, NULL, 0), 0);
    kvs_addr_t a;
    CHECK_EQ(router_procs_admin_addr(cfg, 3, 0, &a), 0);
    CHECK(a.is_unix);
    CHECK_STR(a.path, "/var/lib/kvs/router3.sock");
    CHECK_EQ(router_procs_admin_addr(cfg, 63, 1, &a), 0);
    CHECK_STR(a.path, "/var/lib/kvs/router63.next");
    char *dir = cfg->data_dir, longer[200];
    memset(longer, 'd', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    cfg->data_dir = longer; /* what kvs_config refuses: it must not overflow */
    CHECK_EQ(router_procs_admin_addr(cfg, 0, 1, &a), KVS_EINVAL);
    cfg->data_dir = dir;
    kvs_config_free(cfg);
}

/* Worker ports in the kernel's ephemeral range are warned about (an
 * outgoing connection took one, and a restarted worker crash-looped on
 * "address already in use"): counted against the range, less what is
 * reserved. */
KVS_TEST(ports_in_the_ephemeral_range)
{
    unsigned lo = 0, hi = 0;
    CHECK_EQ(router_ports_ephemeral(57030, 57033, "32768\t60999\n", "", &lo, &hi), 4u);
    CHECK_EQ(lo, 32768u);
    CHECK_EQ(hi, 60999u);
    CHECK_EQ(router_ports_ephemeral(9700, 9703, "32768\t60999\n", NULL, &lo, &hi), 0u);
    CHECK_EQ(router_ports_ephemeral(60998, 61001, "32768 60999", "", &lo, &hi), 2u);
    CHECK_EQ(router_ports_ephemeral(57030, 57033, "32768 60999", "57030-57031,57033\n", &lo, &hi),
             1u);
    CHECK_EQ(router_ports_ephemeral(57030, 57033, "", "", &lo, &hi), 0u); /* unreadable */
    CHECK_EQ(router_ports_ephemeral(57030, 57033, "x", "", &lo, &hi), 0u);
}

KVS_TEST_MAIN(KVS_CASE(ports_in_the_ephemeral_range), KVS_CASE(admin_socket_and_its_next_name),
              KVS_CASE(count_auto_and_configured), KVS_CASE(parts_add_up_and_never_zero),
              KVS_CASE(share_splits_node_limits), KVS_CASE(id_spaces_are_disjoint_and_below_2_53),
              KVS_CASE(a_new_generation_hands_out_no_serving_process_ids),
              KVS_CASE(listening_line_round_trip), KVS_CASE(overlap_of_listening_addresses),
              KVS_CASE(shared_listeners_and_census))
