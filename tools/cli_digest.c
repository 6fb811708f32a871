/*
 * cli_digest: compares the replicas of each shard (see cli_digest.h).
 *
 * For each shard, every replica (kvs_cluster: this node's own over its
 * unix socket, the others over TCP) is asked for Digest {table}. Digests
 * only mean something at one position: while positions differ (a replica
 * has applied fewer records, or writes keep coming), all are asked again
 * every 100 ms until they match or the time is up. Equal positions and
 * equal digests: the shard's copies hold the same pairs.
 *
 * A small blocking client of its own (one request, one answer per
 * connection): kvs-cli's is built around one server.
 */
#include "cli_digest.h"
#include "kvs_cluster.h"
#include "kvs_frame.h"
#include "kvs_hash.h"
#include "kvs_msg.h"
#include "kvs_pos.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef struct answer_s {
    int ok;                       /* 200 with a digest */
    char why[300];                /* otherwise */
    uint8_t digest[KVS_HASH_LEN]; /* when ok */
    int64_t keys;
    uint8_t pos[1024];
    size_t pos_len;
} answer_t;

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dial(const kvs_addr_t *a, double timeout)
{
    int fd = -1;
    if (a->is_unix) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", a->path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
            close(fd);
            fd = -1;
        }
    } else {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
        char port[8];
        snprintf(port, sizeof(port), "%u", a->port);
        if (getaddrinfo(a->host, port, &hints, &res) != 0)
            return -1;
        for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
            fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
                close(fd);
                fd = -1;
            }
        }
        freeaddrinfo(res);
    }
    if (fd >= 0) {
        struct timeval tv = {(time_t)timeout,
                             (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6)};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    return fd;
}

static int io_all(int fd, uint8_t *p, size_t n, int writing)
{
    while (n > 0) {
        ssize_t k = writing ? write(fd, p, n) : read(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Sends Digest {table} to `a` and reads the answer into *out. */
static void ask(const kvs_addr_t *a, const char *table, double timeout, answer_t *out)
{
    memset(out, 0, sizeof(*out));
    int fd = dial(a, timeout);
    if (fd < 0) {
        snprintf(out->why, sizeof(out->why), "cannot connect: %s", strerror(errno));
        return;
    }
    Kvs__Digest d = KVS__DIGEST__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    d.table = (char *)table;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_DIGEST;
    q.digest = &d;
    uint8_t buf[KVS_FRAME_HEADER + 512], hdr[KVS_FRAME_HEADER];
    size_t n = kvs__command_request__get_packed_size(&q);
    kvs_frame_put_header(buf, (uint32_t)n);
    kvs__command_request__pack(&q, buf + KVS_FRAME_HEADER);
    int compressed = 0;
    uint32_t len = 0;
    uint8_t *body = NULL;
    if (io_all(fd, buf, KVS_FRAME_HEADER + n, 1) != 0 || io_all(fd, hdr, sizeof(hdr), 0) != 0 ||
        (len = kvs_frame_get_header(hdr, &compressed)) > (64u << 20) ||
        (body = malloc(len ? len : 1)) == NULL || io_all(fd, body, len, 0) != 0) {
        snprintf(out->why, sizeof(out->why), "no answer: %s", errno ? strerror(errno) : "closed");
        free(body);
        close(fd);
        return;
    }
    close(fd);
    Kvs__CommandResponse *r = kvs__command_response__unpack(NULL, len, body);
    free(body);
    if (r == NULL || r->status != 200 || r->n_values < 2 || r->position.len > sizeof(out->pos) ||
        r->values[0]->binary_value.len != KVS_HASH_LEN) {
        snprintf(out->why, sizeof(out->why), "%u %s", r ? r->status : 0,
                 r ? r->message : "answer is not a CommandResponse");
    } else {
        out->ok = 1;
        memcpy(out->digest, r->values[0]->binary_value.data, KVS_HASH_LEN);
        out->keys = r->values[1]->integer_value;
        memcpy(out->pos, r->position.data, r->position.len);
        out->pos_len = r->position.len;
    }
    kvs__command_response__free_unpacked(r, NULL);
}

static int same_position(const answer_t *a, const answer_t *b)
{
    return a->pos_len == b->pos_len && memcmp(a->pos, b->pos, a->pos_len) == 0;
}

static void put_replica(const kvs_replica_t *rep, const answer_t *a, int raw, uint32_t shard)
{
    char hex[2 * KVS_HASH_LEN + 1], pos[512];
    kvs_hash_hex(a->digest, hex);
    if (kvs_pos_format(a->pos, a->pos_len, pos, sizeof(pos)) != 0 || a->pos_len == 0)
        snprintf(pos, sizeof(pos), "-");
    const char *name = rep->node[0] ? rep->node : "(this node)";
    if (raw)
        printf("%u %s %s %lld %s\n", shard, name, hex, (long long)a->keys, pos);
    else
        printf("  %-16s %s %lld keys at %s\n", name, hex, (long long)a->keys, pos);
}

/* One shard: asks until every replica answers at one position, or the
 * time is up. Returns 0 (agree), 1 (differ or not comparable). */
static int digest_shard(const kvs_config_t *cfg, uint32_t shard, const char *table, double timeout,
                        int raw)
{
    kvs_replica_t reps[KVS_MAX_REPLICAS];
    answer_t *ans = calloc(KVS_MAX_REPLICAS, sizeof(*ans));
    int n = kvs_cluster_replicas(cfg, shard, reps, KVS_MAX_REPLICAS, NULL, 0);
    if (ans == NULL || n <= 0) {
        free(ans);
        fprintf(stderr, "kvs-cli: shard %u: no replica address\n", shard);
        return 1;
    }
    double deadline = now_sec() + timeout;
    int settled = 0, failed = -1;
    while (!settled) {
        failed = -1;
        for (int i = 0; i < n; i++) {
            ask(&reps[i].addr, table, timeout, &ans[i]);
            if (!ans[i].ok && failed < 0)
                failed = i;
        }
        settled = failed < 0;
        for (int i = 1; settled && i < n; i++)
            settled = same_position(&ans[0], &ans[i]);
        if (settled || now_sec() >= deadline)
            break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int agree = settled;
    for (int i = 1; agree && i < n; i++)
        agree =
            memcmp(ans[0].digest, ans[i].digest, KVS_HASH_LEN) == 0 && ans[0].keys == ans[i].keys;
    if (!raw)
        printf("shard %u: %s\n", shard,
               failed >= 0 ? "not every replica answered"
               : !settled  ? "replicas did not reach one position in time (writes still coming?)"
               : agree     ? (n > 1 ? "replicas agree" : "one copy")
                           : "REPLICAS DIFFER");
    for (int i = 0; i < n; i++) {
        if (ans[i].ok)
            put_replica(&reps[i], &ans[i], raw, shard);
        else
            fprintf(raw ? stderr : stdout, "  %-16s error: %s\n",
                    reps[i].node[0] ? reps[i].node : "(this node)", ans[i].why);
    }
    free(ans);
    return agree ? 0 : 1;
}

int cli_digest_run(const kvs_config_t *cfg, const char *table, const char *node, double timeout,
                   int raw)
{
    const kvs_node_t *only = NULL;
    if (node != NULL && (only = kvs_config_node(cfg, node)) == NULL) {
        fprintf(stderr, "kvs-cli: no node \"%s\" in cluster.nodes of %s\n", node, cfg->path);
        return 2;
    }
    if (timeout <= 0)
        timeout = 10;
    int rc = 0;
    for (uint32_t s = 0; s < cfg->shards; s++)
        if (only == NULL || kvs_node_serves(only, s))
            rc |= digest_shard(cfg, s, table, timeout, raw);
    return rc;
}
