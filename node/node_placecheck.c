/*
 * node_placecheck: are the records of a bound topic on the partitions their
 * keys belong to?
 *
 * Partition-aligned ingestion only works when kvs computes the partition of
 * a key exactly as the topic's producers did. When it does not (a binding
 * with the Java murmur2 for a topic written by kcat, which hashes with
 * CRC-32; records sent to explicit partitions), nothing fails: records are
 * ingested, just on shards the router never asks for their keys. So each
 * applied keyed record is checked here, and the misplaced ones are made
 * loud:
 *
 *  - the caller counts them per partition (Info `misplaced`, persisted with
 *    the other counters);
 *  - a report names the topic, an example key (escaped), the partition it
 *    came on and the one kvs expected, and what to do. From the first
 *    misplaced record on, every other known partitioner is tried on each
 *    record (placed right or not), counting the records it would not have
 *    placed where they came; one that misses more than an eighth (and a
 *    few) of at least NODE_PLACECHECK_TRY_MIN records (so that a few
 *    strays first cannot rule out the producers' partitioner for good) is
 *    tried no more, so in a topic whose binding is right a stray
 *    record costs a few hashes, not one per record after it. The evidence
 *    is never reset: a slow topic gathers it over many reports. The
 *    advice is, in order:
 *      - the partitioner that places all but at most 1/16 of those
 *        records where they came (the rest: strays, sent to partitions of
 *        their producers' choosing), when a partitioner that is not the
 *        producers' would do as well by chance less than once in 10,000
 *        (each record fits a wrong hash 1 time in P: one stray record
 *        fits some hash about one time in four with 8 partitions, and
 *        naming it would mislead; the bound counts both candidates, and
 *        the evidence only grows, so a wrong one is not named a report
 *        later by luck);
 *      - else, when most records of the period came where the binding
 *        puts them (and so many that a wrong hash would place them so by
 *        chance less than once in 1,000), that the misplaced ones were
 *        sent elsewhere by their producers; a period of fewer than
 *        NODE_PLACECHECK_JUDGE_MIN records tells nothing alone (a stray
 *        that came a fetch after the others was reported as "too few to
 *        tell" in a topic of thousands placed right), so it is judged on
 *        every record the worker took;
 *      - else that the records are too few to tell (naming what fits);
 *      - else `partitioner: none` (no hash fits);
 *  - the first report comes at the end of the first batch with a misplaced
 *    record (within a second of ingestion starting), later ones at most
 *    every NODE_PLACECHECK_EVERY_MS per topic;
 *  - the first batch of at least NODE_PLACECHECK_JUDGE_MIN keyed records is
 *    judged (fewer tell nothing: one stray record is "all" of a batch of
 *    one): if it is nearly all misplaced, the binding names the wrong
 *    partitioner and the report is an ERROR. "Nearly all" is relative to
 *    what a wrong hash would do: a record still lands on its expected
 *    partition by chance 1 time in P, so a wrong partitioner misplaces
 *    about (P-1)/P of the records; at least three quarters of that share
 *    counts (6 in 16 records with 2 partitions, 21 in 32 with 8).
 *
 * What happens to a misplaced record is the caller's decision (it is
 * stored: see node_ingest.c); this module only counts and words.
 */
#include "node_placecheck.h"

#include "kvs_log.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void node_placecheck_init(node_placecheck_t *c, kvs_partitioner_t partitioner, uint32_t partitions)
{
    memset(c, 0, sizeof(*c));
    c->partitioner = partitioner;
    c->partitions = partitions;
}

void node_placecheck_escape(const void *key, size_t n, size_t shown, char *out, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *k = key;
    size_t w = 0;
    for (size_t i = 0; i < n && i < shown && w + 5 < len; i++) {
        unsigned char b = k[i];
        if (b >= 0x20 && b <= 0x7e && b != '"' && b != '\\') {
            out[w++] = (char)b;
        } else {
            out[w++] = '\\';
            out[w++] = 'x';
            out[w++] = hex[b >> 4];
            out[w++] = hex[b & 15];
        }
    }
    if (n > shown && w + 4 <= len) {
        memcpy(out + w, "...", 3);
        w += 3;
    }
    out[w < len ? w : len - 1] = '\0';
}

/* True when partitioner q places the record with `key` on `partition`
 * (never when the record came without one). */
static int fits(const node_placecheck_t *c, int q, const void *key, size_t len, int32_t partition)
{
    return partition >= 0 && kvs_place_partition_by((kvs_partitioner_t)q, key, len,
                                                    c->partitions) == (uint32_t)partition;
}

/* From the first misplaced record on: counts the record in `seen` and,
 * for each partitioner still tried, whether it would have placed it
 * elsewhere; one that misses more than an eighth of them (and four), once
 * they are NODE_PLACECHECK_TRY_MIN, is tried no more. */
static void weigh(node_placecheck_t *c, const void *key, size_t len, int32_t partition)
{
    c->seen++;
    for (int q = 0; q < KVS_PARTITIONER_HASHES; q++) {
        if (!c->tried[q])
            continue;
        if (!fits(c, q, key, len, partition))
            c->miss[q]++;
        if (c->miss[q] > c->seen / 8 + 4 && c->seen >= NODE_PLACECHECK_TRY_MIN)
            c->tried[q] = 0;
    }
}

int node_placecheck_record(node_placecheck_t *c, const void *key, size_t len, int32_t partition)
{
    if (c->partitioner == KVS_PARTITIONER_NONE)
        return 0;
    c->batch_checked++;
    c->checked++;
    c->total++;
    uint32_t want = kvs_place_partition_by(c->partitioner, key, len, c->partitions);
    if (partition >= 0 && want == (uint32_t)partition) {
        if (c->seen > 0)
            weigh(c, key, len, partition);
        return 0;
    }
    c->batch_misplaced++;
    c->total_misplaced++;
    int first = c->pending++ == 0;
    if (c->seen == 0) /* the first ever: the evidence starts */
        for (int q = 0; q < KVS_PARTITIONER_HASHES; q++)
            c->tried[q] = q != (int)c->partitioner;
    weigh(c, key, len, partition);
    if (first) {
        node_placecheck_escape(key, len, NODE_PLACECHECK_KEY_SHOWN, c->example, sizeof(c->example));
        c->example_came = partition;
        c->example_want = want;
        for (int q = 0; q < KVS_PARTITIONER_HASHES; q++)
            c->example_matches[q] = q != (int)c->partitioner && fits(c, q, key, len, partition);
    }
    return 1;
}

/* Names the partitioners set in `which` ("crc32", "crc32 and fnv1a").
 * Returns how many. */
static int names(const int *which, char *out, size_t len)
{
    int n = 0;
    out[0] = '\0';
    for (int q = 0; q < KVS_PARTITIONER_HASHES; q++) {
        if (!which[q])
            continue;
        size_t used = strlen(out);
        snprintf(out + used, len - used, "%s%s", n > 0 ? " and " : "",
                 kvs_place_partitioner_name((kvs_partitioner_t)q));
        n++;
    }
    return n;
}

/* True when `misplaced` of `checked` records is nearly the share a wrong
 * partitioner misplaces: misplaced >= 3/4 * (P-1)/P * checked. */
static int nearly_all(uint64_t misplaced, uint64_t checked, uint32_t partitions)
{
    return partitions > 1 && misplaced > 0 &&
           misplaced * 4 * partitions >= checked * 3 * (uint64_t)(partitions - 1);
}

/* An upper bound of the chance that a partitioner which is not the
 * producers' places at least n - k of n records where they came, each
 * with chance p = 1/P: the tail of Binomial(n, p) from n - k, k + 1 terms
 * each at most its first (k <= n/16, p <= 1/2). */
static double by_chance(uint64_t n, uint64_t k, uint32_t partitions)
{
    double p = 1.0 / partitions, fit = (double)(n - k), off = (double)k;
    double lt =
        lgamma((double)n + 1) - lgamma(off + 1) - lgamma(fit + 1) + fit * log(p) + off * log1p(-p);
    return (off + 1) * exp(lt);
}

/* The partitioners still tried that place all but at most 1/16 of the
 * evidence where it came (`which`), and how many; *sure when the best of
 * them could not do as well by chance but one time in 10,000 (counting
 * every candidate), *best its misses. */
static int candidates(const node_placecheck_t *c, int *which, int *sure, uint64_t *best)
{
    int n = 0;
    *best = UINT64_MAX;
    for (int q = 0; q < KVS_PARTITIONER_HASHES; q++) {
        which[q] = c->tried[q] && c->miss[q] * 16 <= c->seen;
        if (!which[q])
            continue;
        n++;
        if (c->miss[q] < *best)
            *best = c->miss[q];
    }
    *sure = n > 0 && c->partitions > 1 &&
            by_chance(c->seen, *best, c->partitions) * (KVS_PARTITIONER_HASHES - 1) < 1e-4;
    return n;
}

/* The advice: what the evidence tells of the producers' partitioner (the
 * order is the file comment's). */
static void advice(const node_placecheck_t *c, const char *topic, char *out, size_t len)
{
    char list[64], strays[160] = "";
    int which[KVS_PARTITIONER_HASHES], sure;
    uint64_t best;
    int n = candidates(c, which, &sure, &best);
    names(which, list, sizeof(list));
    const char *by = kvs_place_partitioner_name(c->partitioner);
    int whole = c->checked < NODE_PLACECHECK_JUDGE_MIN; /* the period tells nothing alone */
    uint64_t bad = whole ? c->total_misplaced : c->pending, all = whole ? c->total : c->checked;
    if (sure && best > 0)
        snprintf(strays, sizeof(strays),
                 " (the other %llu were sent to partitions of their producers' choosing)",
                 (unsigned long long)best);
    if (sure && n == 1)
        snprintf(out, len,
                 "partitioner: %s places %llu of the %llu record(s) since the first misplaced "
                 "one where they came%s: set partitioner: %s in the kafka.bindings entry of "
                 "topic %s",
                 list, (unsigned long long)(c->seen - best), (unsigned long long)c->seen, strays,
                 list, topic);
    else if (sure)
        snprintf(out, len,
                 "partitioners %s each place nearly all %llu record(s) since the first misplaced "
                 "one where they came: set the one the producers use in the kafka.bindings entry "
                 "of topic %s",
                 list, (unsigned long long)c->seen, topic);
    else if (!nearly_all(bad, all, c->partitions) && c->partitions > 1 &&
             by_chance(all - bad, 0, c->partitions) < 1e-3)
        snprintf(out, len,
                 "the other %llu of %llu record(s)%s came where partitioner: %s puts them: the "
                 "misplaced ones were sent to partitions of their producers' choosing (explicit "
                 "partitions or another partitioner): produce them with the topic's "
                 "partitioner, or, if the producers choose partitions themselves, set "
                 "partitioner: none in the kafka.bindings entry of topic %s",
                 (unsigned long long)(all - bad), (unsigned long long)all,
                 whole ? " this worker has taken" : "", by, topic);
    else if (n > 0)
        snprintf(out, len,
                 "%s %s %s them where they came, but %llu record(s) since the first misplaced one "
                 "are too few to tell a partitioner from chance: set the partitioner the "
                 "producers use (none if they choose partitions themselves) in the "
                 "kafka.bindings entry of topic %s",
                 n > 1 ? "partitioners" : "partitioner:", list, n > 1 ? "each place" : "places",
                 (unsigned long long)c->seen, topic);
    else if ((n = names(c->example_matches, list, sizeof(list))) > 0)
        snprintf(out, len,
                 "no partitioner kvs knows places all of them where they came (%s %s the "
                 "example only): if the producers choose partitions themselves, set partitioner: "
                 "none in the kafka.bindings entry of topic %s",
                 list, n > 1 ? "fit" : "fits", topic);
    else
        snprintf(out, len,
                 "no partitioner kvs knows (murmur2, crc32, fnv1a) places them where they came: "
                 "the producers choose partitions themselves (explicit partitions or a custom "
                 "partitioner), so set partitioner: none in the kafka.bindings entry of topic %s",
                 topic);
}

/* Writes the report of the pending records and starts a new period. */
static void report(node_placecheck_t *c, const char *topic, const char *lead, uint64_t now_ms,
                   char *buf, size_t len)
{
    char tip[768];
    advice(c, topic, tip, sizeof(tip));
    snprintf(buf, len,
             "kafka %s: %s%llu record(s) came on another partition than partitioner: %s gives "
             "their key, e.g. key \"%s\" came on partition %d where kvs expected %u; %s. Misplaced "
             "records are stored and counted (Info kafka.%s.<partition>.misplaced), but point "
             "reads through the router look on the expected shard and miss them (reported at "
             "most every %d s)",
             topic, lead, (unsigned long long)c->pending,
             kvs_place_partitioner_name(c->partitioner), c->example, c->example_came,
             c->example_want, tip, topic, NODE_PLACECHECK_EVERY_MS / 1000);
    c->pending = c->checked = 0; /* (the evidence stays) */
    c->reported = 1;
    c->last_report_ms = now_ms;
}

int node_placecheck_batch_end(node_placecheck_t *c, const char *topic, uint64_t now_ms, char *buf,
                              size_t len)
{
    int error = 0;
    char lead[160] = "";
    if (!c->judged && c->batch_checked >= NODE_PLACECHECK_JUDGE_MIN) {
        c->judged = 1;
        error = nearly_all(c->batch_misplaced, c->batch_checked, c->partitions);
        if (error)
            snprintf(lead, sizeof(lead),
                     "nearly all records of the first batch (%llu of %llu) are misplaced, so "
                     "the binding's partitioner is not the producers': ",
                     (unsigned long long)c->batch_misplaced, (unsigned long long)c->batch_checked);
    }
    c->batch_checked = c->batch_misplaced = 0;
    if (c->pending == 0)
        return -1;
    if (!error && c->reported && now_ms - c->last_report_ms < NODE_PLACECHECK_EVERY_MS)
        return -1;
    report(c, topic, lead, now_ms, buf, len);
    return error ? KVS_LOG_ERROR : KVS_LOG_WARN;
}

int node_placecheck_tick(node_placecheck_t *c, const char *topic, uint64_t now_ms, char *buf,
                         size_t len)
{
    if (c->pending == 0 || (c->reported && now_ms - c->last_report_ms < NODE_PLACECHECK_EVERY_MS))
        return -1;
    report(c, topic, "", now_ms, buf, len);
    return KVS_LOG_WARN;
}
