/*
 * kvs_schema: names and byte layouts of kvs's stored data (see
 * kvs_schema.h). Every function here is pure: the worker and the routers
 * that read an environment call the same ones, so they can never disagree
 * on what a key or a record means.
 */
#include "kvs_schema.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kvs_schema_format_t kvs_schema_format(const void *p, size_t len)
{
    size_t cur = sizeof(KVS_SCHEMA_FORMAT_VERSION) - 1;
    if (p == NULL)
        return KVS_SCHEMA_FORMAT_ABSENT;
    if (len == cur && memcmp(p, KVS_SCHEMA_FORMAT_VERSION, cur) == 0)
        return KVS_SCHEMA_FORMAT_CURRENT;
    if (len == 1 && *(const char *)p == '1')
        return KVS_SCHEMA_FORMAT_OLD;
    return KVS_SCHEMA_FORMAT_OTHER;
}

void kvs_schema_placement(char *buf, size_t len, uint32_t shards, uint32_t partitions)
{
    snprintf(buf, len, "shards=%u partitions=%u", shards, partitions);
}

static int fit(int n, size_t len)
{
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : n;
}

int kvs_schema_shard_dir(char *buf, size_t len, const char *data_dir, uint32_t shard)
{
    int n = fit(snprintf(buf, len, "%s/shard-%u", data_dir, shard), len);
    return n < 0 ? n : 0;
}

int kvs_schema_state_path(char *buf, size_t len, const char *data_dir, uint32_t shard)
{
    int n = fit(snprintf(buf, len, "%s/shard-%u.state", data_dir, shard), len);
    return n < 0 ? n : 0;
}

int kvs_schema_offsets_key(char *buf, size_t len, const char *topic, int32_t partition)
{
    return fit(snprintf(buf, len, "kafka/%s/%d", topic, partition), len);
}

int kvs_schema_offsets_prefix(char *buf, size_t len, const char *topic)
{
    return fit(snprintf(buf, len, "kafka/%s/", topic), len);
}

int kvs_schema_topic_table_key(char *buf, size_t len, const char *topic)
{
    return fit(snprintf(buf, len, "topic/%s", topic), len);
}

int kvs_schema_cluster_key(char *buf, size_t len, const char *topic)
{
    return fit(snprintf(buf, len, "cluster/%s", topic), len);
}

int kvs_schema_table_layout_key(char *buf, size_t len, const void *table, size_t tlen)
{
    static const char prefix[] = "table/";
    size_t plen = sizeof(prefix) - 1;
    if (tlen > INT32_MAX - plen || plen + tlen >= len)
        return -ENAMETOOLONG;
    memcpy(buf, prefix, plen);
    memcpy(buf + plen, table, tlen); /* every byte of the name, a NUL included */
    buf[plen + tlen] = '\0';
    return (int)(plen + tlen);
}

void kvs_schema_layout(char *buf, size_t len, const char *topic, const char *partitioner,
                       uint32_t partitions)
{
    snprintf(buf, len, "topic=%s partitioner=%s partitions=%" PRIu32, topic, partitioner,
             partitions);
}

int kvs_schema_layout_parse(const void *p, size_t n, char *topic, size_t tlen, char *partitioner,
                            size_t plen, uint32_t *partitions)
{
    char text[512], *t, *q, *end;
    if (p == NULL || n == 0 || n >= sizeof(text))
        return -EINVAL;
    memcpy(text, p, n);
    text[n] = '\0';
    if (strncmp(text, "topic=", 6) != 0 || (t = strstr(text, " partitioner=")) == NULL ||
        (q = strstr(t + 1, " partitions=")) == NULL)
        return -EINVAL;
    size_t topic_len = (size_t)(t - (text + 6)), part_len = (size_t)(q - (t + 13));
    if (topic_len == 0 || topic_len >= tlen || part_len == 0 || part_len >= plen)
        return -EINVAL;
    errno = 0;
    unsigned long v = strtoul(q + 12, &end, 10);
    if (errno != 0 || end == q + 12 || *end != '\0' || v == 0 || v > UINT32_MAX)
        return -EINVAL;
    memcpy(topic, text + 6, topic_len);
    topic[topic_len] = '\0';
    memcpy(partitioner, t + 13, part_len);
    partitioner[part_len] = '\0';
    *partitions = (uint32_t)v;
    return 0;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void kvs_schema_offsets_encode(uint8_t *out, const kvs_schema_offsets_t *o)
{
    put_u64(out, (uint64_t)o->next);
    put_u64(out + 8, o->applied);
    put_u64(out + 16, o->skipped);
    put_u64(out + 24, o->misplaced);
}

int kvs_schema_offsets_decode(const void *p, size_t len, kvs_schema_offsets_t *o)
{
    const uint8_t *b = p;
    if (p == NULL || len < KVS_SCHEMA_OFFSETS_V1_LEN)
        return -EINVAL;
    o->next = (int64_t)get_u64(b);
    o->applied = get_u64(b + 8);
    o->skipped = get_u64(b + 16);
    o->misplaced = len >= KVS_SCHEMA_OFFSETS_LEN ? get_u64(b + 24) : 0;
    return 0;
}
