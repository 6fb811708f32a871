/*
 * kvs_slowlog: see kvs_slowlog.h. The ring is an array of `cap` slots;
 * `head` is where the next entry goes, so the newest is at head - 1 and
 * entry i (newest first) at head - 1 - i, modulo cap.
 *
 * Hooks see every request, those refused for their table name included,
 * so an entry's table is whatever bytes a client sent. Answers carry it in
 * a protobuf string, which strict runtimes (Python's, Go's) refuse unless
 * it is UTF-8, failing the whole answer: a table that is not UTF-8, holds
 * a NUL, or is longer than a table may be is kept as kvs_msg_quote's
 * text for it instead (\xHH escapes, "..." past the slot's room).
 */
#include "kvs_slowlog.h"
#include "kvs_config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

void kvs_slowlog_init(kvs_slowlog_t *s)
{
    memset(s, 0, sizeof(*s));
    s->next_id = 1;
    s->threshold_ns = UINT64_MAX;
}

int kvs_slowlog_configure(kvs_slowlog_t *s, uint64_t threshold_ms, uint32_t max)
{
    if (max == 0)
        max = 1;
    if (max != s->cap) {
        kvs_slowlog_entry_t *ring = calloc(max, sizeof(*ring));
        if (ring == NULL)
            return -ENOMEM;
        uint32_t keep = s->len < max ? s->len : max;
        for (uint32_t i = 0; i < keep; i++) /* newest first into keep-1 .. 0 */
            ring[keep - 1 - i] = *kvs_slowlog_get(s, i);
        free(s->ring);
        s->ring = ring;
        s->cap = max;
        s->len = keep;
        s->head = keep % max;
    }
    s->threshold_ns = threshold_ms == KVS_SLOWLOG_OFF || threshold_ms > UINT64_MAX / 1000000u
                          ? UINT64_MAX
                          : threshold_ms * 1000000u;
    return 0;
}

int kvs_slowlog_on(const kvs_slowlog_t *s)
{
    return s->threshold_ns != UINT64_MAX && s->cap > 0;
}

/* The table as it came when it is a table name kvs could hold, else its
 * escaped text; always UTF-8. */
static void copy_table(char *dst, size_t cap, const char *src, size_t n)
{
    if (src == NULL)
        n = 0;
    if (n < cap && kvs_utf8_valid(src, n) && (n == 0 || memchr(src, '\0', n) == NULL)) {
        if (n > 0)
            memcpy(dst, src, n);
        dst[n] = '\0';
        return;
    }
    kvs_msg_quote(dst, cap, src, n);
}

static void copy_text(char *dst, size_t cap, const char *src, size_t n)
{
    if (src == NULL)
        n = 0;
    if (n >= cap)
        n = cap - 1;
    if (n > 0)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

/* A client name (printable ASCII, which the front door checked), its
 * first cap - 4 bytes and "..." when it does not fit. */
static void copy_name(char *dst, size_t cap, const char *name)
{
    size_t n = name != NULL ? strlen(name) : 0;
    if (n < cap) {
        copy_text(dst, cap, name, n);
        return;
    }
    copy_text(dst, cap - 3, name, n);
    memcpy(dst + cap - 4, "...", 4);
}

uint32_t kvs_slowlog_hook(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req,
                          char *msg, size_t msglen)
{
    kvs_slowlog_t *s = state;
    (void)ev;
    (void)msg;
    (void)msglen;
    uint64_t d = req->now_ns - req->received_ns;
    if ((d <= s->threshold_ns && s->threshold_ns != 0) || s->cap == 0)
        return 0;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    kvs_slowlog_entry_t *e = &s->ring[s->head];
    e->id = s->next_id++;
    e->time_us = (int64_t)tv.tv_sec * 1000000 + tv.tv_usec - (int64_t)(d / 1000);
    e->duration_us = d / 1000;
    e->command = req->command;
    e->keys = req->keys;
    e->status = req->status;
    copy_table(e->table, sizeof(e->table), req->table, req->table_len);
    copy_text(e->client, sizeof(e->client), req->peer, req->peer ? strlen(req->peer) : 0);
    copy_name(e->client_name, sizeof(e->client_name), req->client_name);
    s->head = (s->head + 1) % s->cap;
    if (s->len < s->cap)
        s->len++;
    return 0;
}

const kvs_slowlog_entry_t *kvs_slowlog_get(const kvs_slowlog_t *s, uint32_t i)
{
    if (i >= s->len)
        return NULL;
    return &s->ring[(s->head + s->cap - 1 - i) % s->cap];
}

void kvs_slowlog_reset(kvs_slowlog_t *s)
{
    s->len = 0;
    s->head = 0;
}

int kvs_slowlog_answer(const kvs_slowlog_t *s, uint32_t count, kvs_arena_t *arena,
                       Kvs__OpsAnswer *ops)
{
    uint32_t n = count == 0 ? KVS_SLOWLOG_DEFAULT_COUNT : count;
    if (n > s->len)
        n = s->len;
    ops->slowlog_len = s->len;
    ops->n_slowlog = 0;
    ops->slowlog = kvs_arena_alloc(arena, (n ? n : 1) * sizeof(*ops->slowlog));
    if (ops->slowlog == NULL)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        const kvs_slowlog_entry_t *e = kvs_slowlog_get(s, i);
        Kvs__SlowlogEntry *x = kvs_arena_alloc(arena, sizeof(*x));
        if (x == NULL)
            return -ENOMEM;
        kvs__slowlog_entry__init(x);
        x->id = e->id;
        x->time_us = e->time_us;
        x->duration_us = e->duration_us;
        x->command = (char *)kvs_msg_command_name((Kvs__CommandRequest__CommandCase)e->command);
        x->table = (char *)e->table;
        x->keys = e->keys;
        x->client = (char *)e->client;
        x->client_name = (char *)e->client_name;
        x->status = e->status;
        ops->slowlog[ops->n_slowlog++] = x;
    }
    return 0;
}

void kvs_slowlog_free(kvs_slowlog_t *s)
{
    free(s->ring);
    s->ring = NULL;
    s->cap = s->len = s->head = 0;
}
