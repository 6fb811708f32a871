/*
 * kvs_shardstate: the worker's state page (see kvs_shardstate.h).
 *
 * The page is plain memory shared through a MAP_SHARED mapping of a small
 * file; every field a reader looks at is a lock-free 64-bit atomic
 * (static_assert below), which is what makes C11 atomics work between
 * processes. The writer publishes header fields in this order: seq odd,
 * fields, seq even (release); a reader loads seq (acquire), the fields,
 * and seq again, and trusts what it read only if both loads are equal and
 * even. Kafka slots are single values and need no sequence.
 *
 * Slot index: partition p of binding i, owned by this shard (p % shards ==
 * shard), is slot base[i] + p / shards.
 */
#include "kvs_shardstate.h"
#include "kvs_err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "KVSSTATE"
#define VERSION 3 /* 2: slots say whether the partition diverged; 3: and whether the topic grew */

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "shared-memory atomics must be lock-free");

typedef struct page_s {
    char magic[8];
    uint32_t version;
    uint32_t head_size;
    uint64_t layout; /* fingerprint of the slots' layout */
    uint64_t nslots;
    _Atomic uint64_t seq;
    _Atomic uint64_t live;
    _Atomic uint64_t data_dev, data_ino, lock_dev, lock_ino;
    _Atomic int64_t settle_until_ms;
    _Atomic int64_t heartbeat_ms;
    _Atomic int64_t pid;
    _Atomic int64_t tight; /* the worker's disk is full (kvs_shardstate_set_tight); 0 in pages
                              of workers that never set it: the same version */
    uint8_t pad[128 - 112];
} page_t;

_Static_assert(sizeof(page_t) == 128, "the header keeps its size");

typedef struct slot_s {
    _Atomic int64_t end;
    _Atomic int64_t start;
    _Atomic int64_t diverged;         /* 0 or 1 */
    _Atomic int64_t topic_partitions; /* the topic's count when it is not the placed one; 0 */
} slot_t;

struct kvs_shardstate_s {
    int fd;
    int writer;
    page_t *page;
    size_t size;   /* mapped */
    slot_t *slots; /* page + 1 */
    uint64_t nslots;
    uint32_t *base; /* per binding: its first slot */
    uint32_t shard, shards;
    size_t n_bindings;
    uint64_t dev, ino; /* the file */
};

/* ---- layout ------------------------------------------------------------------ */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Slots per binding and the layout's fingerprint. Returns 0 or -ENOMEM. */
static int layout(kvs_shardstate_t *s, const kvs_config_t *cfg, uint32_t shard, uint64_t *fp)
{
    uint64_t h = 14695981039346656037ull;
    s->shard = shard;
    s->shards = cfg->shards;
    s->n_bindings = cfg->n_bindings;
    s->base = calloc(cfg->n_bindings + 1, sizeof(*s->base));
    if (s->base == NULL)
        return -ENOMEM;
    h = fnv(h, &shard, sizeof(shard));
    h = fnv(h, &cfg->shards, sizeof(cfg->shards));
    for (size_t i = 0; i < cfg->n_bindings; i++) {
        const kvs_binding_t *b = &cfg->bindings[i];
        uint32_t parts = b->partitions > 0 ? b->partitions : cfg->partitions;
        uint32_t owned = parts > shard ? (parts - shard - 1) / cfg->shards + 1 : 0;
        s->base[i + 1] = s->base[i] + owned;
        h = fnv(h, b->topic, strlen(b->topic) + 1);
        h = fnv(h, &parts, sizeof(parts));
    }
    s->nslots = s->base[cfg->n_bindings];
    *fp = h;
    return 0;
}

static slot_t *slot_of(const kvs_shardstate_t *s, uint32_t binding, uint32_t p)
{
    if (binding >= s->n_bindings || p % s->shards != s->shard)
        return NULL;
    uint64_t i = (uint64_t)s->base[binding] + p / s->shards;
    return i < s->base[binding + 1] ? &s->slots[i] : NULL;
}

static size_t bytes_for(uint64_t nslots)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t n = sizeof(page_t) + nslots * sizeof(slot_t);
    return (n + page - 1) / page * page;
}

static int map_file(kvs_shardstate_t *s, size_t size, int prot)
{
    void *p = mmap(NULL, size, prot, MAP_SHARED, s->fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    s->page = p;
    s->size = size;
    s->slots = (slot_t *)(s->page + 1);
    return 0;
}

/* ---- the worker ------------------------------------------------------------------ */

static void begin_write(page_t *pg)
{
    atomic_fetch_add_explicit(&pg->seq, 1, memory_order_acq_rel); /* odd */
    atomic_thread_fence(memory_order_release);
}

static void end_write(page_t *pg)
{
    atomic_fetch_add_explicit(&pg->seq, 1, memory_order_release); /* even */
}

/* What a page left by an earlier worker says it had open (version 1's
 * header is the same as this one's: only its slots were smaller). */
static int last_ident(const page_t *pg, kvs_lmdb_ident_t *last)
{
    if (memcmp(pg->magic, MAGIC, 8) != 0 || (pg->version != VERSION && pg->version != 1))
        return 0;
    last->data_dev = atomic_load(&pg->data_dev);
    last->data_ino = atomic_load(&pg->data_ino);
    last->lock_dev = atomic_load(&pg->lock_dev);
    last->lock_ino = atomic_load(&pg->lock_ino);
    return last->data_ino != 0;
}

/* A page another version of kvs left (its slots laid out otherwise) is
 * not rewritten in place: a router of that version may have it mapped and
 * would read this version's slots as its own. The file is replaced (a new
 * inode, which such a router notices and opens anew, then refuses by its
 * version); *last gets the files the old page named. Returns 0 or -errno
 * (-EBUSY: another worker took the new file first). */
static int replace_other_version(kvs_shardstate_t *s, const char *path, kvs_lmdb_ident_t *last,
                                 int *had_last)
{
    page_t old;
    if (pread(s->fd, &old, sizeof(old), 0) != (ssize_t)sizeof(old) ||
        memcmp(old.magic, MAGIC, 8) != 0 || old.version == VERSION)
        return 0;
    *had_last = last_ident(&old, last);
    if (unlink(path) != 0)
        return -errno;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == EEXIST ? -EBUSY : -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
        close(fd);
        return rc;
    }
    close(s->fd); /* and its lock */
    s->fd = fd;
    return 0;
}

/* Sizes and maps the page, and starts it over: not live, nothing known.
 * *had_last and *last are set when the page names the last files. */
static int writer_init(kvs_shardstate_t *s, uint64_t fp, kvs_lmdb_ident_t *last, int *had_last)
{
    struct stat st;
    if (fstat(s->fd, &st) != 0)
        return -errno;
    size_t need = bytes_for(s->nslots), size = (size_t)st.st_size;
    /* Its blocks are allocated, not left a hole (ftruncate): the page is
     * written through a map, and a hole that cannot be filled (a full
     * disk) would be a SIGBUS there, not an error here. Grows only:
     * readers' maps stay valid. */
    int err = posix_fallocate(s->fd, 0, (off_t)(size > need ? size : need));
    if (err != 0)
        return -err;
    if (size < need)
        size = need;
    int rc = map_file(s, size, PROT_READ | PROT_WRITE);
    if (rc != 0)
        return rc;
    page_t *pg = s->page;
    if (size >= sizeof(page_t) && last_ident(pg, last))
        *had_last = 1;
    begin_write(pg);
    atomic_store(&pg->live, 0);
    memcpy(pg->magic, MAGIC, 8);
    pg->version = VERSION;
    pg->head_size = sizeof(page_t);
    pg->layout = fp;
    pg->nslots = s->nslots;
    atomic_store(&pg->pid, (int64_t)getpid());
    atomic_store(&pg->settle_until_ms, 0);
    atomic_store(&pg->heartbeat_ms, 0);
    atomic_store(&pg->tight, 0); /* the new worker says it again if its disk is full */
    for (uint64_t i = 0; i < s->nslots; i++) {
        atomic_store(&s->slots[i].end, -1);
        atomic_store(&s->slots[i].start, -1);
        atomic_store(&s->slots[i].diverged, 0);
        atomic_store(&s->slots[i].topic_partitions, 0);
    }
    end_write(pg);
    s->dev = (uint64_t)st.st_dev;
    s->ino = (uint64_t)st.st_ino;
    return 0;
}

int kvs_shardstate_open_writer(const char *path, const kvs_config_t *cfg, uint32_t shard,
                               kvs_shardstate_t **out, kvs_lmdb_ident_t *last, int *had_last)
{
    uint64_t fp;
    kvs_shardstate_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->writer = 1;
    s->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int rc = s->fd < 0 ? -errno : layout(s, cfg, shard, &fp);
    if (rc == 0 && flock(s->fd, LOCK_EX | LOCK_NB) != 0)
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
    memset(last, 0, sizeof(*last));
    *had_last = 0;
    if (rc == 0)
        rc = replace_other_version(s, path, last, had_last);
    if (rc == 0)
        rc = writer_init(s, fp, last, had_last);
    if (rc != 0) {
        s->writer = 0; /* nothing of ours to clear */
        kvs_shardstate_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void kvs_shardstate_publish(kvs_shardstate_t *s, const kvs_lmdb_ident_t *id)
{
    page_t *pg = s->page;
    begin_write(pg);
    atomic_store_explicit(&pg->data_dev, id->data_dev, memory_order_relaxed);
    atomic_store_explicit(&pg->data_ino, id->data_ino, memory_order_relaxed);
    atomic_store_explicit(&pg->lock_dev, id->lock_dev, memory_order_relaxed);
    atomic_store_explicit(&pg->lock_ino, id->lock_ino, memory_order_relaxed);
    atomic_store_explicit(&pg->live, 1, memory_order_relaxed);
    end_write(pg);
}

void kvs_shardstate_set_part(kvs_shardstate_t *s, uint32_t binding, uint32_t p, int64_t end,
                             int64_t start)
{
    slot_t *sl = slot_of(s, binding, p);
    if (sl == NULL)
        return;
    atomic_store_explicit(&sl->end, end, memory_order_release);
    atomic_store_explicit(&sl->start, start, memory_order_release);
}

void kvs_shardstate_set_diverged(kvs_shardstate_t *s, uint32_t binding, uint32_t p, int diverged)
{
    slot_t *sl = slot_of(s, binding, p);
    if (sl != NULL)
        atomic_store_explicit(&sl->diverged, diverged != 0, memory_order_release);
}

void kvs_shardstate_set_resized(kvs_shardstate_t *s, uint32_t binding, uint32_t n)
{
    for (uint64_t i = binding < s->n_bindings ? s->base[binding] : 0;
         binding < s->n_bindings && i < s->base[binding + 1]; i++)
        atomic_store_explicit(&s->slots[i].topic_partitions, (int64_t)n, memory_order_release);
}

void kvs_shardstate_set_settle(kvs_shardstate_t *s, int64_t until_ms)
{
    atomic_store_explicit(&s->page->settle_until_ms, until_ms, memory_order_release);
}

void kvs_shardstate_set_tight(kvs_shardstate_t *s, int tight)
{
    atomic_store_explicit(&s->page->tight, tight != 0, memory_order_release);
}

void kvs_shardstate_heartbeat(kvs_shardstate_t *s, int64_t now_ms)
{
    atomic_store_explicit(&s->page->heartbeat_ms, now_ms, memory_order_release);
}

/* ---- readers ------------------------------------------------------------------------ */

int kvs_shardstate_open_reader(const char *path, const kvs_config_t *cfg, uint32_t shard,
                               kvs_shardstate_t **out)
{
    struct stat st;
    uint64_t fp = 0;
    kvs_shardstate_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc = s->fd < 0 ? -errno : layout(s, cfg, shard, &fp);
    if (rc == 0 && fstat(s->fd, &st) != 0)
        rc = -errno;
    if (rc == 0 && (size_t)st.st_size < bytes_for(s->nslots))
        rc = KVS_EMISMATCH; /* not (yet) a page of this layout */
    if (rc == 0)
        rc = map_file(s, (size_t)st.st_size, PROT_READ);
    if (rc == 0) { /* the mapping is all a reader needs: no descriptor kept */
        close(s->fd);
        s->fd = -1;
    }
    if (rc == 0 && (memcmp(s->page->magic, MAGIC, 8) != 0 || s->page->version != VERSION ||
                    s->page->layout != fp || s->page->nslots != s->nslots))
        rc = KVS_EMISMATCH;
    if (rc != 0) {
        kvs_shardstate_close(s);
        return rc;
    }
    s->dev = (uint64_t)st.st_dev;
    s->ino = (uint64_t)st.st_ino;
    *out = s;
    return 0;
}

int kvs_shardstate_maps(const kvs_shardstate_t *s, const void *addr)
{
    uintptr_t a = (uintptr_t)addr, base = (uintptr_t)s->page;
    return s->page != NULL && a >= base && a - base < s->size;
}

int kvs_shardstate_head(const kvs_shardstate_t *s, kvs_shardstate_head_t *h)
{
    page_t *pg = s->page;
    uint64_t seq = atomic_load_explicit(&pg->seq, memory_order_acquire);
    h->live = (int)atomic_load_explicit(&pg->live, memory_order_relaxed);
    h->ident.data_dev = atomic_load_explicit(&pg->data_dev, memory_order_relaxed);
    h->ident.data_ino = atomic_load_explicit(&pg->data_ino, memory_order_relaxed);
    h->ident.lock_dev = atomic_load_explicit(&pg->lock_dev, memory_order_relaxed);
    h->ident.lock_ino = atomic_load_explicit(&pg->lock_ino, memory_order_relaxed);
    h->settle_until_ms = atomic_load_explicit(&pg->settle_until_ms, memory_order_acquire);
    h->heartbeat_ms = atomic_load_explicit(&pg->heartbeat_ms, memory_order_acquire);
    h->tight = atomic_load_explicit(&pg->tight, memory_order_acquire) != 0;
    atomic_thread_fence(memory_order_acquire);
    if ((seq & 1) != 0 || atomic_load_explicit(&pg->seq, memory_order_relaxed) != seq)
        return -EAGAIN;
    return 0;
}

void kvs_shardstate_part(const kvs_shardstate_t *s, uint32_t binding, uint32_t p, int64_t *end,
                         int64_t *start)
{
    slot_t *sl = slot_of(s, binding, p);
    *end = sl != NULL ? atomic_load_explicit(&sl->end, memory_order_acquire) : -1;
    *start = sl != NULL ? atomic_load_explicit(&sl->start, memory_order_acquire) : -1;
}

int kvs_shardstate_diverged(const kvs_shardstate_t *s, uint32_t binding, uint32_t p)
{
    slot_t *sl = slot_of(s, binding, p);
    return sl != NULL && atomic_load_explicit(&sl->diverged, memory_order_acquire) != 0;
}

uint32_t kvs_shardstate_resized(const kvs_shardstate_t *s, uint32_t binding, uint32_t p)
{
    slot_t *sl = slot_of(s, binding, p);
    return sl != NULL ? (uint32_t)atomic_load_explicit(&sl->topic_partitions, memory_order_acquire)
                      : 0;
}

void kvs_shardstate_file(const kvs_shardstate_t *s, uint64_t *dev, uint64_t *ino)
{
    *dev = s->dev;
    *ino = s->ino;
}

void kvs_shardstate_close(kvs_shardstate_t *s)
{
    if (s == NULL)
        return;
    if (s->writer && s->page != NULL) {
        begin_write(s->page);
        atomic_store(&s->page->live, 0);
        end_write(s->page);
    }
    if (s->page != NULL)
        munmap(s->page, s->size);
    if (s->fd >= 0)
        close(s->fd); /* releases the writer's lock */
    free(s->base);
    free(s);
}
