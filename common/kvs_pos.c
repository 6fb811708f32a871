/*
 * kvs_pos: the position token (see kvs_pos.h for the encoding).
 *
 * Reading is a single forward walk with no allocation: every check a
 * canonical token must pass (ordering, ranges, lengths) is made as the
 * walk goes, so kvs_pos_valid is just a walk to the end. Building sorts the
 * collected entries once, merging duplicates by keeping the highest
 * offset, and writes groups in that order; the result is canonical by
 * construction and decodes to exactly the set it came from.
 */
#include "kvs_pos.h"
#include "kvs_err.h"
#include "kvs_varint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PARTITION_LIMIT 0x80000000u

/* Byte order of topic names, shorter first on a common prefix. */
static int topic_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c != 0 ? c : (al > bl) - (al < bl);
}

/* ---- reading ---------------------------------------------------------- */

int kvs_pos_iter_init(kvs_pos_iter_t *it, const uint8_t *tok, size_t len)
{
    memset(it, 0, sizeof(*it));
    it->p = tok;
    it->end = tok + len;
    if (len == 0)
        return 0;
    if (tok[0] != KVS_POS_VERSION)
        return KVS_EPROTO;
    it->p++;
    if (it->p == it->end)
        return KVS_EPROTO; /* a version byte alone: not a token */
    return 0;
}

/* Reads the next group's header; the new topic must sort after the last. */
static int next_group(kvs_pos_iter_t *it)
{
    uint64_t tl, count;
    if (kvs_varint_get(&it->p, it->end, &tl) != 0 || tl == 0 || tl > KVS_POS_TOPIC_MAX ||
        tl > (uint64_t)(it->end - it->p))
        return KVS_EPROTO;
    const char *topic = (const char *)it->p;
    it->p += tl;
    if (it->topic != NULL && topic_cmp(it->topic, it->topic_len, topic, (size_t)tl) >= 0)
        return KVS_EPROTO;
    if (kvs_varint_get(&it->p, it->end, &count) != 0 || count == 0)
        return KVS_EPROTO;
    it->topic = topic;
    it->topic_len = (size_t)tl;
    it->left = count;
    it->last_partition = -1;
    return 0;
}

int kvs_pos_iter_next(kvs_pos_iter_t *it, kvs_pos_entry_t *e)
{
    uint64_t part, off;
    if (it->left == 0) {
        if (it->p == it->end)
            return 0;
        if (next_group(it) != 0)
            return KVS_EPROTO;
    }
    if (kvs_varint_get(&it->p, it->end, &part) != 0 || part >= PARTITION_LIMIT ||
        (int64_t)part <= it->last_partition || kvs_varint_get(&it->p, it->end, &off) != 0 ||
        off > (uint64_t)INT64_MAX)
        return KVS_EPROTO;
    it->left--;
    it->last_partition = (int64_t)part;
    e->topic = it->topic;
    e->topic_len = it->topic_len;
    e->partition = (uint32_t)part;
    e->offset = (int64_t)off;
    return 1;
}

int kvs_pos_valid(const uint8_t *tok, size_t len)
{
    kvs_pos_iter_t it;
    kvs_pos_entry_t e;
    int rc = kvs_pos_iter_init(&it, tok, len);
    while (rc == 0 && (rc = kvs_pos_iter_next(&it, &e)) == 1)
        rc = 0;
    return rc == 0;
}

int64_t kvs_pos_find(const uint8_t *tok, size_t len, const char *topic, size_t topic_len,
                     uint32_t partition)
{
    kvs_pos_iter_t it;
    kvs_pos_entry_t e;
    if (kvs_pos_iter_init(&it, tok, len) != 0)
        return -1;
    while (kvs_pos_iter_next(&it, &e) == 1)
        if (e.partition == partition && e.topic_len == topic_len &&
            memcmp(e.topic, topic, topic_len) == 0)
            return e.offset;
    return -1;
}

int kvs_pos_topic_chars_ok(const void *t, size_t n)
{
    const unsigned char *c = t;
    if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((c[i] >= 'a' && c[i] <= 'z') || (c[i] >= 'A' && c[i] <= 'Z') ||
              (c[i] >= '0' && c[i] <= '9') || c[i] == '.' || c[i] == '_' || c[i] == '-'))
            return 0;
    return 1;
}

int kvs_pos_format(const uint8_t *tok, size_t len, char *out, size_t cap)
{
    kvs_pos_iter_t it;
    kvs_pos_entry_t e;
    size_t o = 0;
    int rc = kvs_pos_iter_init(&it, tok, len), cut = 0;
    if (cap == 0)
        return KVS_EINVAL;
    out[0] = '\0';
    while (rc == 0 && (rc = kvs_pos_iter_next(&it, &e)) == 1) {
        char one[KVS_POS_TOPIC_MAX + 48];
        /* A topic name is Kafka's: anything else (a terminal's escape
         * sequence from a hostile server) makes the token malformed, never
         * text to print. */
        if (!kvs_pos_topic_chars_ok(e.topic, e.topic_len))
            return KVS_EPROTO;
        int n = snprintf(one, sizeof(one), "%s%.*s:%u:%lld", o > 0 ? "," : "", (int)e.topic_len,
                         e.topic, e.partition, (long long)e.offset);
        rc = 0;
        if (cut || n < 0 || o + (size_t)n + 4 > cap) {
            cut = 1;
            continue; /* keep walking: a malformed tail is still an error */
        }
        memcpy(out + o, one, (size_t)n + 1);
        o += (size_t)n;
    }
    if (rc != 0)
        return KVS_EPROTO;
    if (cut)
        memcpy(out + o, "...", 4);
    return 0;
}

/* ---- building ---------------------------------------------------------- */

size_t kvs_pos_encode_one(uint8_t *out, const char *topic, size_t topic_len, uint32_t partition,
                          int64_t offset)
{
    if (topic_len == 0 || topic_len > KVS_POS_TOPIC_MAX || partition >= PARTITION_LIMIT ||
        offset < 0)
        return 0;
    size_t n = 0;
    out[n++] = KVS_POS_VERSION;
    n += kvs_varint_put(out + n, topic_len);
    memcpy(out + n, topic, topic_len);
    n += topic_len;
    out[n++] = 1;
    n += kvs_varint_put(out + n, partition);
    n += kvs_varint_put(out + n, (uint64_t)offset);
    return n;
}

void kvs_pos_set_init(kvs_pos_set_t *s)
{
    s->e = NULL;
    s->n = s->cap = 0;
}

void kvs_pos_set_clear(kvs_pos_set_t *s)
{
    s->n = 0;
}

void kvs_pos_set_free(kvs_pos_set_t *s)
{
    free(s->e);
    kvs_pos_set_init(s);
}

int kvs_pos_set_add(kvs_pos_set_t *s, const char *topic, size_t topic_len, uint32_t partition,
                    int64_t offset)
{
    if (topic_len == 0 || topic_len > KVS_POS_TOPIC_MAX || partition >= PARTITION_LIMIT ||
        offset < 0)
        return KVS_EINVAL;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        kvs_pos_entry_t *n = realloc(s->e, cap * sizeof(*n));
        if (n == NULL)
            return -ENOMEM;
        s->e = n;
        s->cap = cap;
    }
    s->e[s->n++] = (kvs_pos_entry_t){topic, topic_len, partition, offset};
    return 0;
}

int kvs_pos_set_add_token(kvs_pos_set_t *s, const uint8_t *tok, size_t len)
{
    kvs_pos_iter_t it;
    kvs_pos_entry_t e;
    int rc = kvs_pos_iter_init(&it, tok, len);
    while (rc == 0 && (rc = kvs_pos_iter_next(&it, &e)) == 1)
        rc = kvs_pos_set_add(s, e.topic, e.topic_len, e.partition, e.offset);
    return rc;
}

int kvs_pos_set_add_topic(kvs_pos_set_t *s, const uint8_t *tok, size_t len, const char *topic,
                          size_t topic_len, uint32_t partitions)
{
    kvs_pos_iter_t it;
    kvs_pos_entry_t e;
    int rc = kvs_pos_iter_init(&it, tok, len);
    while (rc == 0 && (rc = kvs_pos_iter_next(&it, &e)) == 1) {
        rc = 0;
        if (e.topic_len != topic_len || memcmp(e.topic, topic, topic_len) != 0 ||
            e.partition >= partitions)
            continue; /* the walk goes on: a malformed tail is still an error */
        rc = kvs_pos_set_add(s, e.topic, e.topic_len, e.partition, e.offset);
    }
    return rc;
}

static int entry_cmp(const void *a, const void *b)
{
    const kvs_pos_entry_t *x = a, *y = b;
    int c = topic_cmp(x->topic, x->topic_len, y->topic, y->topic_len);
    if (c != 0)
        return c;
    return (x->partition > y->partition) - (x->partition < y->partition);
}

static int same_topic(const kvs_pos_entry_t *a, const kvs_pos_entry_t *b)
{
    return a->topic_len == b->topic_len && memcmp(a->topic, b->topic, a->topic_len) == 0;
}

size_t kvs_pos_set_normalize(kvs_pos_set_t *s)
{
    if (s->n < 2)
        return s->n;
    qsort(s->e, s->n, sizeof(*s->e), entry_cmp);
    size_t k = 0;
    for (size_t i = 1; i < s->n; i++) {
        if (same_topic(&s->e[i], &s->e[k]) && s->e[i].partition == s->e[k].partition) {
            if (s->e[i].offset > s->e[k].offset)
                s->e[k].offset = s->e[i].offset;
        } else {
            s->e[++k] = s->e[i];
        }
    }
    s->n = k + 1;
    return s->n;
}

int kvs_pos_set_encode(kvs_pos_set_t *s, kvs_buf_t *out)
{
    if (kvs_pos_set_normalize(s) == 0)
        return 0;
    /* The exact size first: a set may hold a client's million entries, and
     * reserving the worst case (a topic header for each) would take 289
     * bytes for every one of them. Entries are at most 15 bytes, topic
     * headers at most 2 + 249 + 10, and there are at most n of each. */
    if (s->n > (SIZE_MAX - 1) / (KVS_POS_TOPIC_MAX + 40))
        return -ENOMEM;
    size_t need = 1;
    for (size_t i = 0; i < s->n; i++) {
        if (i == 0 || !same_topic(&s->e[i], &s->e[i - 1])) {
            size_t j = i;
            while (j < s->n && same_topic(&s->e[j], &s->e[i]))
                j++;
            need += kvs_varint_len(s->e[i].topic_len) + s->e[i].topic_len + kvs_varint_len(j - i);
        }
        need += kvs_varint_len(s->e[i].partition) + kvs_varint_len((uint64_t)s->e[i].offset);
    }
    if (kvs_buf_reserve(out, need) != 0)
        return -ENOMEM;
    uint8_t *p = out->data + out->len, *start = p;
    *p++ = KVS_POS_VERSION;
    for (size_t i = 0; i < s->n;) {
        size_t j = i;
        while (j < s->n && same_topic(&s->e[j], &s->e[i]))
            j++;
        p += kvs_varint_put(p, s->e[i].topic_len);
        memcpy(p, s->e[i].topic, s->e[i].topic_len);
        p += s->e[i].topic_len;
        p += kvs_varint_put(p, j - i);
        for (; i < j; i++) {
            p += kvs_varint_put(p, s->e[i].partition);
            p += kvs_varint_put(p, (uint64_t)s->e[i].offset);
        }
    }
    out->len += (size_t)(p - start);
    return 0;
}

/* Parses a decimal number of at most `max` into *v; *p moves past it. */
static int parse_num(const char **p, uint64_t max, uint64_t *v)
{
    const char *s = *p;
    *v = 0;
    if (*s < '0' || *s > '9')
        return -1;
    for (; *s >= '0' && *s <= '9'; s++) {
        uint64_t d = (uint64_t)(*s - '0');
        if (*v > (max - d) / 10)
            return -1;
        *v = *v * 10 + d;
    }
    *p = s;
    return 0;
}

int kvs_pos_set_parse(kvs_pos_set_t *s, const char *text, char *err, size_t errlen)
{
    const char *p = text;
    if (*p == '\0') {
        snprintf(err, errlen, "empty position; expected topic:partition:offset[,...]");
        return KVS_EINVAL;
    }
    while (*p != '\0') {
        const char *topic = p, *colon = strchr(p, ':');
        uint64_t part, off;
        if (colon == NULL || colon == p || (size_t)(colon - p) > KVS_POS_TOPIC_MAX ||
            memchr(p, ',', (size_t)(colon - p)) != NULL) {
            snprintf(err, errlen, "\"%.60s\": expected topic:partition:offset", p);
            return KVS_EINVAL;
        }
        p = colon + 1;
        if (parse_num(&p, PARTITION_LIMIT - 1, &part) != 0 || *p++ != ':' ||
            parse_num(&p, (uint64_t)INT64_MAX, &off) != 0 || (*p != ',' && *p != '\0')) {
            snprintf(err, errlen,
                     "\"%.60s\": partition and offset must be numbers (partition below 2^31)",
                     topic);
            return KVS_EINVAL;
        }
        int rc = kvs_pos_set_add(s, topic, (size_t)(colon - topic), (uint32_t)part, (int64_t)off);
        if (rc != 0) {
            snprintf(err, errlen, "out of memory");
            return rc;
        }
        if (*p == ',' && *++p == '\0') {
            snprintf(err, errlen, "position ends with ','; remove it");
            return KVS_EINVAL;
        }
    }
    return 0;
}
