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
 * One request, one answer per connection, through cli_walk_ask (every
 * wait bounded, TLS when the replica is over TCP and a TLS context is
 * given; a node that let a question time out, or could not be connected
 * to for a second, is asked nothing more).
 */
#include "cli_digest.h"
#include "cli_ask.h"
#include "cli_net.h"
#include "cli_text.h"
#include "kvs_cluster.h"
#include "kvs_hash.h"
#include "kvs_msg.h"
#include "kvs_pos.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct answer_s {
    int ok;                       /* 200 with a digest */
    int skipped;                  /* its node is silent or down (cli_walk_ask): not asked */
    int refused;                  /* it answered 4xx: the request itself is wrong, as it would be
                                     at every replica and in every round */
    char why[500];                /* otherwise */
    uint8_t digest[KVS_HASH_LEN]; /* when ok */
    int64_t keys;
    uint8_t *pos; /* malloc'd: a shard of many partitions has a long one */
    size_t pos_len;
} answer_t;

int cli_digest_is_answer(const Kvs__CommandResponse *r)
{
    return r->status == 200 && r->n_values == 2 &&
           r->values[0]->kind_case == KVS__VALUE__KIND_BINARY_VALUE &&
           r->values[0]->binary_value.len == KVS_HASH_LEN &&
           r->values[1]->kind_case == KVS__VALUE__KIND_INTEGER_VALUE;
}

/* Sends Digest {table} to `a` (over TLS with `tls` when it is TCP and
 * `tls` is set), waiting `limit` seconds at most (cli_walk_ask), and reads
 * the answer into *out (zeroed); `prev` is the round before's. */
static void ask(cli_walk_t *w, const kvs_replica_t *rep, kvs_tls_ctx_t *tls, const char *table,
                double timeout, double limit, const answer_t *prev, answer_t *out)
{
    char before[sizeof(out->why)]; /* the failure of the round before, if any */
    snprintf(before, sizeof(before), "%s", prev->ok || prev->skipped ? "" : prev->why);
    Kvs__Digest d = KVS__DIGEST__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    d.table = (char *)table;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_DIGEST;
    q.digest = &d;
    Kvs__CommandResponse *r =
        cli_walk_ask(w, rep, tls, &q, timeout, limit, out->why, sizeof(out->why), &out->skipped);
    if (r == NULL && out->skipped && before[0] != '\0') /* given up in this shard's rounds */
        snprintf(out->why, sizeof(out->why), "%.400s (again and again: asked nothing more)",
                 before);
    if (r == NULL)
        return;
    if (r->status == 200 && !cli_digest_is_answer(r)) {
        snprintf(out->why, sizeof(out->why), "the answer holds no digest (%u %s)", r->status,
                 r->message);
    } else if (r->status != 200) {
        snprintf(out->why, sizeof(out->why), "%u %s", r->status, r->message);
        out->refused = r->status >= 400 && r->status < 500;
    } else if (r->position.len > 0 && (out->pos = malloc(r->position.len)) == NULL) {
        snprintf(out->why, sizeof(out->why), "out of memory");
    } else {
        out->ok = 1;
        memcpy(out->digest, r->values[0]->binary_value.data, KVS_HASH_LEN);
        out->keys = r->values[1]->integer_value;
        if (r->position.len > 0)
            memcpy(out->pos, r->position.data, r->position.len);
        out->pos_len = r->position.len;
    }
    kvs__command_response__free_unpacked(r, NULL);
}

static int same_position(const answer_t *a, const answer_t *b)
{
    return a->pos_len == b->pos_len && (a->pos_len == 0 || memcmp(a->pos, b->pos, a->pos_len) == 0);
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
 * time is up: a question of a later round waits only what is left of it,
 * and one it cuts short keeps the replica's answer (or failure) of the
 * round before.
 * Returns 0 (agree), 1 (differ or not comparable). */
static int digest_shard(cli_walk_t *w, const kvs_config_t *cfg, kvs_tls_ctx_t *tls, uint32_t shard,
                        const char *table, double timeout, int raw)
{
    kvs_replica_t reps[KVS_MAX_REPLICAS];
    answer_t *ans = calloc(KVS_MAX_REPLICAS, sizeof(*ans));
    int n = kvs_cluster_replicas(cfg, shard, reps, KVS_MAX_REPLICAS, NULL, 0);
    cli_replicas_reach(cfg, shard, reps, n);
    if (ans == NULL || n <= 0) {
        free(ans);
        fprintf(stderr, "kvs-cli: shard %u: no replica address\n", shard);
        return 1;
    }
    double deadline = cli_net_now() + timeout;
    int settled = 0, failed = -1, skipped = 0, refused = 0;
    for (int round = 0; !settled; round++) {
        failed = -1;
        for (int i = 0; i < n; i++) {
            double left = deadline - cli_net_now();
            if (round == 0 || left > 0) { /* else the time is up: the last answer stands */
                answer_t next;
                memset(&next, 0, sizeof(next));
                ask(w, &reps[i], tls, table, timeout, round == 0 ? 0 : left, &ans[i], &next);
                if (round > 0 && !next.ok && !next.refused && cli_net_now() >= deadline) {
                    free(next.pos); /* cut short by the time: the last answer stands */
                } else {
                    free(ans[i].pos);
                    ans[i] = next;
                }
            }
            if (!ans[i].ok && failed < 0)
                failed = i;
            skipped |= ans[i].skipped;
            refused |= ans[i].refused;
        }
        settled = failed < 0;
        for (int i = 1; settled && i < n; i++)
            settled = same_position(&ans[0], &ans[i]);
        if (settled || cli_net_now() >= deadline || skipped || refused)
            break; /* a silent node will not answer the next round either, nor a refusal change */
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int agree = settled;
    for (int i = 1; agree && i < n; i++)
        agree =
            memcmp(ans[0].digest, ans[i].digest, KVS_HASH_LEN) == 0 && ans[0].keys == ans[i].keys;
    if (!raw)
        printf("shard %u: %s\n", shard,
               refused       ? "the request was refused"
               : failed >= 0 ? "not every replica answered"
               : !settled ? "replicas did not reach one position in time (writes still coming, or "
                            "one stopped ingesting: see its Info for diverged or halted "
                            "partitions)"
               : agree    ? (n > 1 ? "replicas agree" : "one copy")
                          : "REPLICAS DIFFER");
    for (int i = 0; i < n; i++) {
        if (ans[i].ok)
            put_replica(&reps[i], &ans[i], raw, shard);
        else {
            FILE *f = raw ? stderr : stdout;
            fprintf(f, "  %-16s error: ", reps[i].node[0] ? reps[i].node : "(this node)");
            cli_text_put(f, ans[i].why);
            putc('\n', f);
        }
    }
    for (int i = 0; i < n; i++)
        free(ans[i].pos);
    free(ans);
    return agree ? 0 : 1;
}

int cli_digest_run(const kvs_config_t *cfg, kvs_tls_ctx_t *tls, const char *table,
                   const kvs_node_t *only, double timeout, int raw)
{
    int rc = 0;
    cli_walk_t walk = {0};
    for (uint32_t s = 0; s < cfg->shards; s++)
        if (only == NULL || kvs_node_serves(only, s))
            rc |= digest_shard(&walk, cfg, tls, s, table, timeout, raw);
    cli_walk_free(&walk);
    return rc;
}
