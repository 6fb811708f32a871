/*
 * router_local: reads of local shards answered from their environments
 * (see router_local.h for what is promised and when a shard is read here).
 *
 * Per read: the gate (link up or hung; the state page live and naming the files
 * this router has open), one snapshot begun (kvs_lmdb_reader_begin: a
 * renewed read txn), for a bound table the freshness walk over that
 * snapshot's applied offsets and the page's end offsets, the answer built
 * by kvs_reads straight into the caller's buffer, the snapshot ended. A
 * storage error, or any verdict but "serve", sends the read to the worker
 * instead: the worker's answer is always right, this one only faster.
 *
 * Opening happens at a link's coming up, on a read that finds the shard
 * not open, and on the upkeep timer (a failed open is retried after
 * RETRY_MS). A shard whose worker names other files than the open ones is
 * reopened by the read or the tick that notices, whichever comes first
 * (so a replaced data.mdb's space is not kept mapped for long); the old
 * environment is closed first, so no snapshot of it survives.
 *
 * Memory and lifetimes: environments and pages are owned here and closed
 * by router_local_free; answers go into caller buffers.
 */
#include "router_local.h"
#include "kvs_err.h"
#include "kvs_freshreq.h"
#include "kvs_lmdb.h"
#include "kvs_log.h"
#include "kvs_reads.h"
#include "kvs_schema.h"
#include "kvs_shardstate.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAINT_MS 1000         /* stale reader slots, a recreated state page */
#define RETRY_MS 1000         /* after an environment failed to open */
#define HEARTBEAT_MAX_MS 3000 /* a worker that has not ticked for longer: its Kafka view is old */
#define ERROR_LOG_MS 10000

typedef struct lshard_s {
    uint32_t id;
    const router_link_t *link; /* the link to this node's worker of the shard; NULL: none */
    kvs_lmdb_reader_t *env;    /* NULL: not open */
    kvs_shardstate_t *state;
    uint64_t retry_at;     /* uv_now before which no open is tried */
    int warned;            /* the current failure to open was logged */
    uint64_t remaps;       /* map growths followed, as last logged */
    int refuse;            /* test hook: opening fails (KVS_TEST_LOCAL_READS_REFUSE) */
    int held;              /* its snapshot stays open until router_local_release */
    kvs_lmdb_ident_t seen; /* the files its worker named at the last look */
    kvs_lmdb_ident_t bad;  /* files a read of faulted on (has_bad): never opened again */
    int has_bad;
    uint64_t state_retry_at; /* after its state page faulted: not mapped again before */
    int state_warned;        /* ... which was logged, and no read went through since */
} lshard_t;

struct router_local_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    lshard_t *shards;
    char placement[64];
    uv_timer_t timer;
    int timer_started;
    kvs_arena_t arena; /* positions collected by a freshness walk */
    uint64_t error_log_ms;
    int holding;    /* router_local_hold calls not yet released (runs may nest) */
    uint32_t *held; /* shards whose snapshot is held, n_held of them */
    uint32_t n_held;
};

/* ---- faults ---------------------------------------------------------------------
 *
 * LMDB reads pages through a map of data.mdb, and the state page is mapped
 * too: a read of a mapped page past the end of its file is SIGBUS. A file
 * cut short under a running cluster (truncated, a damaged disk) would kill
 * this router process, and every client on it, at the first read of a
 * missing page. A healthy environment never lacks a page its snapshot
 * reads (LMDB writes every page a commit uses before the commit's meta
 * page), so such a fault means the files are damaged.
 *
 * Every use of a shard's files here (a read, an opening, the upkeep) runs
 * guarded: sigsetjmp, then `guard_armed`. A SIGBUS while armed jumps back
 * there (siglongjmp out of the handler: the fault is in LMDB's page
 * reading or our copy from the map, which hold no lock), and `faulted`
 * closes the shard's files and never opens those files again (by device
 * and inode: until its worker serves from other ones); its reads go to
 * the worker, which answers or fails as its own files allow. A fault in
 * the state page (its address, si_addr, is in the page's map) says
 * nothing of data.mdb: only the page is closed, and mapped again a
 * second later at the earliest (a page cut short is not mapped while it
 * is short; a worker's next start writes it whole), so a page that
 * faults for good costs a fault a second, logged once. What the
 * jump abandons: at most a read transaction LMDB was creating (its
 * memory, once per damaged file). A scan's cursor is the reader's until
 * the scan ends (kvs_lmdb_reader_close closes it), and an environment
 * being opened is already ls->env, and closed. A SIGBUS
 * while not armed, or in another thread, is not ours: the previous
 * disposition is put back and the faulting access, run again, meets it;
 * nor is one sent (kill -BUS: si_code <= 0), which is raised again to
 * meet it. Cost per read: a sigsetjmp that does not save the signal mask
 * (no system call). */

static sigjmp_buf guard_jump;
static volatile sig_atomic_t guard_armed;
static void *volatile guard_addr;   /* the address of the fault that jumped */
static pthread_t guard_thread;      /* the loop's: the only one that arms */
static struct sigaction guard_prev; /* SIGBUS's disposition before ours */

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
    (void)uctx;
    int fault = si->si_code > 0; /* the kernel's (BUS_ADRERR, ...), not kill(2)'s */
    if (fault && guard_armed && pthread_equal(pthread_self(), guard_thread)) {
        guard_armed = 0;
        guard_addr = si->si_addr;
        siglongjmp(guard_jump, 1);
    }
    sigaction(sig, &guard_prev, NULL); /* not ours: the access runs again, and meets it */
    if (!fault)
        raise(sig); /* sent: no access repeats it; delivered now (SA_NODEFER) */
}

/* Installs the handler once per process. Returns 0 or -errno. */
static int guard_install(void)
{
    static int installed;
    struct sigaction sa;
    if (installed)
        return 0;
    guard_thread = pthread_self();
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER; /* not blocked after the jump: no mask to restore */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &guard_prev) != 0)
        return -errno;
    installed = 1;
    return 0;
}

/* ---- opening and closing ------------------------------------------------------ */

static void close_env(lshard_t *ls)
{
    kvs_lmdb_reader_close(ls->env); /* also ends a held snapshot */
    ls->env = NULL;
}

static void close_state(lshard_t *ls)
{
    kvs_shardstate_close(ls->state);
    ls->state = NULL;
}

static int same_files(const kvs_lmdb_ident_t *a, const kvs_lmdb_ident_t *b)
{
    return a->data_ino == b->data_ino && a->data_dev == b->data_dev && a->lock_ino == b->lock_ino &&
           a->lock_dev == b->lock_dev;
}

/* Maps the shard's state page if it is not yet. Returns whether it is. */
static int have_state(router_local_t *lc, lshard_t *ls)
{
    char path[4200];
    if (ls->state != NULL)
        return 1;
    if (uv_now(lc->loop) < ls->state_retry_at)
        return 0; /* it faulted a moment ago (faulted) */
    if (kvs_schema_state_path(path, sizeof(path), lc->cfg->data_dir, ls->id) != 0)
        return 0;
    return kvs_shardstate_open_reader(path, lc->cfg, ls->id, &ls->state) == 0;
}

static void open_failed(router_local_t *lc, lshard_t *ls, const char *why)
{
    ls->retry_at = uv_now(lc->loop) + RETRY_MS;
    if (ls->warned)
        return;
    ls->warned = 1;
    kvs_warn("shard %u: cannot read its environment here (%s); its reads go to its worker, and "
             "opening it is tried again every %d s",
             ls->id, why, RETRY_MS / 1000);
}

/* Opens the environment the worker serves from (`want`), closing one it
 * left. Returns whether it is open now. */
static int open_env(router_local_t *lc, lshard_t *ls, const kvs_lmdb_ident_t *want)
{
    char dir[4200], err[600];
    if (uv_now(lc->loop) < ls->retry_at || (ls->has_bad && same_files(want, &ls->bad)))
        return 0; /* not yet again; or files a read faulted on (faulted) */
    int reopen = ls->env != NULL;
    close_env(ls); /* the worker has other files now: none of these is read again */
    if (kvs_schema_shard_dir(dir, sizeof(dir), lc->cfg->data_dir, ls->id) != 0) {
        open_failed(lc, ls, "its path is too long");
        return 0;
    }
    kvs_lmdb_reader_opts_t o = {dir, ls->id, lc->placement, lc->cfg->max_tables};
    int rc = KVS_ESTORE;
    if (ls->refuse)
        snprintf(err, sizeof(err), "test hook KVS_TEST_LOCAL_READS_REFUSE");
    else
        rc = kvs_lmdb_reader_open(&o, &ls->env, err, sizeof(err));
    if (rc == 0 && !same_files(kvs_lmdb_reader_ident(ls->env), want)) {
        close_env(ls); /* replaced again meanwhile: try once more soon */
        snprintf(err, sizeof(err), "its files changed while they were being opened");
        rc = -EAGAIN;
    }
    if (rc != 0) {
        open_failed(lc, ls, rc == -ENOMEM ? "out of memory" : err);
        return 0;
    }
    ls->warned = 0;
    ls->remaps = 0;
    if (reopen)
        kvs_info("shard %u: its worker serves from other files now (%s replaced or recreated); "
                 "reopened them for local reads",
                 ls->id, dir);
    else
        kvs_info("shard %u: answering its reads from %s (read-only)", ls->id, dir);
    return 1;
}

/* The gate of every local read (router_local.h). Returns 1 with the page's
 * header in *h when the shard may be read here now. */
static int ready(router_local_t *lc, lshard_t *ls, kvs_shardstate_head_t *h)
{
    /* A link reset because its worker did not answer in time (a commit
     * stuck on a slow disk, a stopped process) leaves the worker serving
     * from these files: reads go on here, between that reset and the
     * next connection's outcome, instead of failing with 503 while the
     * link waits to reconnect. */
    if (!(ls->link->up || ls->link->hung) || !have_state(lc, ls))
        return 0;
    if (kvs_shardstate_head(ls->state, h) != 0 || !h->live)
        return 0; /* starting, stopped, or publishing this very moment */
    if (h->tight)
        return 0; /* its disk is full: no snapshot here may pin what deletes free */
    ls->seen = h->ident;
    ls->state_warned = 0; /* its page reads again */
    if (ls->env != NULL && same_files(kvs_lmdb_reader_ident(ls->env), &h->ident))
        return 1;
    return open_env(lc, ls, &h->ident);
}

/* ---- freshness of bound tables ----------------------------------------------------- */

typedef struct fresh_ctx_s {
    router_local_t *lc;
    lshard_t *ls;
    const kvs_shardstate_head_t *h;
} fresh_ctx_t;

/* What this snapshot and the worker's page say of partition p: the applied
 * offset from the snapshot (or where ingestion starts one with none
 * stored), the end offset and settling from the page. With Kafka off, as
 * for the worker: nothing. */
static int fresh_lookup(void *arg, const kvs_binding_t *b, uint32_t p, kvs_fresh_part_t *out)
{
    fresh_ctx_t *c = arg;
    const kvs_config_t *cfg = c->lc->cfg;
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    kvs_slice_t v;
    kvs_schema_offsets_t o;
    int64_t start;
    if (cfg->kafka_brokers[0] == '\0')
        return 0;
    kvs_shardstate_part(c->ls->state, (uint32_t)(b - cfg->bindings), p, &out->end, &start);
    out->next = start;
    if (kvs_schema_offsets_key(key, sizeof(key), b->topic, (int32_t)p) > 0 &&
        kvs_lmdb_reader_meta(c->ls->env, key, &v) == 0 &&
        kvs_schema_offsets_decode(v.p, v.len, &o) == 0 && o.next >= 0)
        out->next = o.next; /* negative: rebuilt, read from the start (kvs_schema) */
    out->settling = out->end < 0 && (int64_t)uv_now(c->lc->loop) < c->h->settle_until_ms;
    out->diverged = kvs_shardstate_diverged(c->ls->state, (uint32_t)(b - cfg->bindings), p);
    out->topic_partitions = kvs_shardstate_resized(c->ls->state, (uint32_t)(b - cfg->bindings), p);
    return 0;
}

/* Whether the worker's view of Kafka on the page is current enough to
 * judge a bound table's freshness by. */
static int heartbeat_ok(const router_local_t *lc, const kvs_shardstate_head_t *h)
{
    if (lc->cfg->kafka_brokers[0] == '\0')
        return 1; /* nothing to hear of: the rules need no end offsets */
    return h->heartbeat_ms > 0 && (int64_t)uv_now(lc->loop) - h->heartbeat_ms <= HEARTBEAT_MAX_MS;
}

static void fresh_init(router_local_t *lc, lshard_t *ls, const kvs_shardstate_head_t *h,
                       const kvs_binding_t *b, fresh_ctx_t *ctx, kvs_freshreq_t *c)
{
    *ctx = (fresh_ctx_t){lc, ls, h};
    kvs_freshreq_init(c, lc->cfg, ls->id, b, fresh_lookup, ctx);
}

/* ---- answering ------------------------------------------------------------------------- */

static int src_get(void *arg, const char *table, const void *key, size_t klen, kvs_slice_t *val)
{
    return kvs_lmdb_reader_get(arg, table, key, klen, val);
}

static int src_scan(void *arg, const char *table, const void *from, size_t flen,
                    kvs_lmdb_scan_cb cb, void *cb_arg)
{
    return kvs_lmdb_reader_scan(arg, table, from, flen, cb, cb_arg);
}

static int src_count(void *arg, const char *table, uint64_t *n)
{
    return kvs_lmdb_reader_count(arg, table, n);
}

/* A local read failed with `rc` (`why`: LMDB's reason, or NULL). A
 * failure that lasts (every reader slot taken) meets every read: logged
 * at most every ERROR_LOG_MS. */
static void log_error(router_local_t *lc, lshard_t *ls, int rc, const char *why)
{
    uint64_t now = uv_now(lc->loop);
    if (lc->error_log_ms != 0 && now - lc->error_log_ms < ERROR_LOG_MS)
        return;
    lc->error_log_ms = now;
    kvs_warn("shard %u: a local read failed (%s%s%s); it went to the worker (logged at most "
             "every %d s)",
             ls->id, kvs_strerror(rc), why != NULL ? ": " : "", why != NULL ? why : "",
             ERROR_LOG_MS / 1000);
}

/* Builds the answer of `q` (or of the peeked Hget/Hexist `pk`) from the open
 * snapshot into `out`. Returns 1, or 0 with `out` unchanged. */
static int answer(router_local_t *lc, lshard_t *ls, const Kvs__CommandRequest *q,
                  const kvs_peek_t *pk, kvs_buf_t *out)
{
    char table[KVS_MAX_TABLE + 1];
    kvs_reads_src_t src = {src_get, src_scan, src_count, ls->env, (size_t)lc->cfg->max_frame};
    Kvs__CommandRequest__CommandCase cmd = q != NULL ? q->command_case : pk->cmd;
    size_t before = out->len;
    kvs_resp_t r;
    kvs_resp_begin(&r, out);
    int rc;
    if (q != NULL) {
        rc = kvs_reads_execute(&src, q, &r);
    } else {
        memcpy(table, pk->table, pk->table_len);
        table[pk->table_len] = '\0';
        rc = kvs_reads_key(&src, pk->cmd, table, pk->key, pk->key_len, &r);
    }
    if (rc != 0) {
        kvs_resp_abort(&r);
        log_error(lc, ls, rc, NULL);
        return 0;
    }
    if (kvs_reads_finish(&r, src.max_frame, cmd) != 0) {
        out->len = before;
        return 0;
    }
    return 1;
}

static lshard_t *shard_of(router_local_t *lc, uint32_t shard)
{
    return shard < lc->cfg->shards && lc->shards[shard].link != NULL ? &lc->shards[shard] : NULL;
}

/* The common frame of both entries: gate, snapshot, freshness, answer. */
static int serve_here(router_local_t *lc, lshard_t *ls, const Kvs__CommandRequest *q,
                      const kvs_peek_t *pk, const kvs_binding_t *b, int64_t min_offset,
                      kvs_buf_t *out)
{
    kvs_shardstate_head_t h;
    int ok = ready(lc, ls, &h);
    int rc = ok ? kvs_lmdb_reader_begin(ls->env) : 0;
    if (rc != 0)
        log_error(lc, ls, rc, kvs_lmdb_reader_why(ls->env));
    if (rc != 0 && kvs_lmdb_reader_unmapped(ls->env)) {
        close_env(ls); /* its map is gone: opened again (mapped anew) in RETRY_MS */
        ls->retry_at = uv_now(lc->loop) + RETRY_MS;
    }
    if (!ok || rc != 0)
        return 0;
    if (b != NULL && kvs_freshreq_applies(q != NULL ? q->command_case : pk->cmd)) {
        fresh_ctx_t ctx;
        kvs_freshreq_t c;
        kvs_pos_entry_t pos = {b->topic, strlen(b->topic), 0, min_offset};
        fresh_init(lc, ls, &h, b, &ctx, &c);
        ok = heartbeat_ok(lc, &h);
        if (ok && q != NULL) {
            ok = kvs_freshreq_request(&c, q, &lc->arena) == 0;
        } else if (ok) {
            if (min_offset >= 0) {
                pos.partition =
                    kvs_place_partition_by(b->partitioner, pk->key, pk->key_len, c.partitions);
                c.pos = &pos;
                c.npos = 1;
            }
            kvs_freshreq_key(&c, pk->key, pk->key_len);
        }
        ok = ok && c.verdict == KVS_FRESH_SERVE;
        kvs_arena_reset(&lc->arena);
    }
    ok = ok && answer(lc, ls, q, pk, out);
    if (!lc->holding) {
        kvs_lmdb_reader_end(ls->env);
    } else if (!ls->held) {
        ls->held = 1;
        lc->held[lc->n_held++] = ls->id;
    }
    return ok;
}

/* A guarded use of ls's files faulted (see "faults"): they are closed and
 * never read here again; the snapshot and what was being built are gone. */
static void faulted(router_local_t *lc, lshard_t *ls)
{
    kvs_arena_reset(&lc->arena);
    if (ls->state != NULL && kvs_shardstate_maps(ls->state, guard_addr)) {
        close_env(ls); /* (ends the snapshot the read began) */
        close_state(ls);
        ls->state_retry_at = uv_now(lc->loop) + RETRY_MS;
        if (!ls->state_warned)
            kvs_error("shard %u: reading its state page faulted (SIGBUS: the file is shorter "
                      "than the page: cut short or damaged); its reads go to its worker until "
                      "the page reads again (a worker's start writes it whole)",
                      ls->id);
        ls->state_warned = 1;
        return;
    }
    ls->bad = ls->seen;
    ls->has_bad = 1;
    close_env(ls); /* touches no page of the map: ends the txn, unmaps */
    close_state(ls);
    kvs_error("shard %u: reading its files faulted (SIGBUS: data.mdb is shorter than the "
              "pages it names: cut short or damaged); they are not read here again, its reads "
              "go to its worker until it serves from other files",
              ls->id);
}

/* The common frame of both entries, guarded (see "faults"). */
static int serve(router_local_t *lc, lshard_t *ls, const Kvs__CommandRequest *q,
                 const kvs_peek_t *pk, const kvs_binding_t *b, int64_t min_offset, kvs_buf_t *out)
{
    size_t before = out->len;
    if (sigsetjmp(guard_jump, 0) != 0) {
        out->len = before;
        faulted(lc, ls);
        return 0;
    }
    guard_armed = 1;
    int ok = serve_here(lc, ls, q, pk, b, min_offset, out);
    guard_armed = 0;
    return ok;
}

/* Runs fn(lc, ls) guarded (see "faults"): the upkeep's and a link's look
 * at the shard, which may open its files or read their meta pages. */
static void guarded(router_local_t *lc, lshard_t *ls, void (*fn)(router_local_t *, lshard_t *))
{
    if (sigsetjmp(guard_jump, 0) != 0) {
        faulted(lc, ls);
        return;
    }
    guard_armed = 1;
    fn(lc, ls);
    guard_armed = 0;
}

void router_local_hold(router_local_t *lc)
{
    if (lc != NULL)
        lc->holding++;
}

void router_local_release(router_local_t *lc)
{
    if (lc == NULL || lc->holding == 0)
        return;
    if (--lc->holding > 0)
        return; /* an outer run still reads from the held snapshots */
    for (uint32_t i = 0; i < lc->n_held; i++) {
        lshard_t *ls = &lc->shards[lc->held[i]];
        ls->held = 0;
        if (ls->env != NULL)
            kvs_lmdb_reader_end(ls->env);
    }
    lc->n_held = 0;
}

int router_local_read(router_local_t *lc, uint32_t shard, const Kvs__CommandRequest *q,
                      const kvs_binding_t *b, kvs_buf_t *out)
{
    lshard_t *ls = shard_of(lc, shard);
    if (ls == NULL || !kvs_reads_is_read(q->command_case))
        return 0;
    return serve(lc, ls, q, NULL, b, -1, out);
}

int router_local_read_key(router_local_t *lc, uint32_t shard, const kvs_peek_t *pk,
                          const kvs_binding_t *b, int64_t min_offset, kvs_buf_t *out)
{
    lshard_t *ls = shard_of(lc, shard);
    if (ls == NULL || (pk->cmd != KVS__COMMAND_REQUEST__COMMAND_HGET &&
                       pk->cmd != KVS__COMMAND_REQUEST__COMMAND_HEXIST))
        return 0;
    return serve(lc, ls, NULL, pk, b, min_offset, out);
}

/* ---- upkeep ---------------------------------------------------------------------------- */

/* A state page removed and created anew (its path names another file):
 * the mapped one is no longer written. */
static void check_state_file(router_local_t *lc, lshard_t *ls)
{
    char path[4200];
    struct stat st;
    uint64_t dev, ino;
    if (ls->state == NULL ||
        kvs_schema_state_path(path, sizeof(path), lc->cfg->data_dir, ls->id) != 0)
        return;
    kvs_shardstate_file(ls->state, &dev, &ino);
    if (stat(path, &st) != 0 || (uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino)
        close_state(ls);
}

/* Opens what can be opened now, so the first reads need not. */
static void look(router_local_t *lc, lshard_t *ls)
{
    kvs_shardstate_head_t h;
    ready(lc, ls, &h);
}

/* The upkeep of one shard (on_timer). */
static void upkeep(router_local_t *lc, lshard_t *ls)
{
    int cleared = 0;
    kvs_shardstate_head_t h;
    ready(lc, ls, &h); /* follows a worker that moved to other files, opens a new one's */
    if (ls->env == NULL)
        return;
    if (kvs_lmdb_reader_check(ls->env, &cleared) == 0 && cleared > 0)
        kvs_info("shard %u: cleared %d reader slot(s) left by processes that died", ls->id,
                 cleared);
    uint64_t remaps = kvs_lmdb_reader_remaps(ls->env);
    if (remaps != ls->remaps)
        kvs_info("shard %u: its worker grew the map; local reads follow it (%llu MiB)", ls->id,
                 (unsigned long long)(kvs_lmdb_reader_map_size(ls->env) >> 20));
    ls->remaps = remaps;
}

static void on_timer(uv_timer_t *t)
{
    router_local_t *lc = t->data;
    for (uint32_t s = 0; s < lc->cfg->shards; s++) {
        lshard_t *ls = &lc->shards[s];
        if (ls->link == NULL)
            continue;
        check_state_file(lc, ls);
        guarded(lc, ls, upkeep);
    }
}

void router_local_link_up(router_local_t *lc, uint32_t shard)
{
    lshard_t *ls = shard_of(lc, shard);
    if (ls == NULL)
        return;
    check_state_file(lc, ls);
    ls->retry_at = 0;
    guarded(lc, ls, look);
    if (!lc->timer_started) {
        uv_timer_start(&lc->timer, on_timer, MAINT_MS, MAINT_MS);
        lc->timer_started = 1;
    }
}

int router_local_is_local(const router_local_t *lc, uint32_t shard)
{
    return shard < lc->cfg->shards && lc->shards[shard].link != NULL;
}

/* KVS_TEST_LOCAL_READS_REFUSE=<shard>[,<shard>...] (test builds only):
 * opening those shards' environments fails, as a broken one would. */
static void read_test_hooks(router_local_t *lc)
{
#ifdef KVS_TEST_HOOKS
    const char *v = getenv("KVS_TEST_LOCAL_READS_REFUSE");
    while (v != NULL && *v != '\0') {
        char *end;
        unsigned long s = strtoul(v, &end, 10);
        if (end == v)
            break;
        if (s < lc->cfg->shards)
            lc->shards[s].refuse = 1;
        v = *end == ',' ? end + 1 : end;
    }
#else
    (void)lc;
#endif
}

int router_local_new(uv_loop_t *loop, const kvs_config_t *cfg, const router_link_t *links,
                     uint32_t n_links, router_local_t **out)
{
    int rc = guard_install();
    if (rc != 0)
        return rc;
    router_local_t *lc = calloc(1, sizeof(*lc));
    if (lc == NULL)
        return -ENOMEM;
    lc->shards = calloc(cfg->shards, sizeof(*lc->shards));
    lc->held = calloc(cfg->shards, sizeof(*lc->held));
    if (lc->shards == NULL || lc->held == NULL) {
        free(lc->shards);
        free(lc->held);
        free(lc);
        return -ENOMEM;
    }
    lc->loop = loop;
    lc->cfg = cfg;
    kvs_schema_placement(lc->placement, sizeof(lc->placement), cfg->shards, cfg->partitions);
    for (uint32_t s = 0; s < cfg->shards; s++)
        lc->shards[s].id = s;
    for (uint32_t i = 0; i < n_links; i++) /* this node's own workers: over unix sockets */
        if (links[i].addr.is_unix && links[i].shard < cfg->shards)
            lc->shards[links[i].shard].link = &links[i];
    read_test_hooks(lc);
    kvs_arena_init(&lc->arena);
    uv_timer_init(loop, &lc->timer);
    lc->timer.data = lc;
    uv_unref((uv_handle_t *)&lc->timer); /* upkeep never keeps the router running */
    *out = lc;
    return 0;
}

void router_local_stop(router_local_t *lc)
{
    if (lc != NULL && !uv_is_closing((uv_handle_t *)&lc->timer))
        uv_close((uv_handle_t *)&lc->timer, NULL);
}

void router_local_free(router_local_t *lc)
{
    if (lc == NULL)
        return;
    for (uint32_t s = 0; s < lc->cfg->shards; s++) {
        close_env(&lc->shards[s]);
        close_state(&lc->shards[s]);
    }
    kvs_arena_close(&lc->arena);
    free(lc->shards);
    free(lc->held);
    free(lc);
}
