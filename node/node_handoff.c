/*
 * node_handoff: the fence on writes to unbound tables after a snapshot,
 * and the record of such rows held here (see node_handoff.h for the
 * rules). Both files' format is kvs_copied's: the master reads their node
 * lines (router_master_config's copied_to_a_holder) before a reload takes
 * the shard from this node.
 */
#include "node_handoff.h"
#include "kvs_copied.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* What unbound-rows says, as this worker left it. */
enum {
    ROWS_NONE,  /* no file (none needed, or it could not be written) */
    ROWS_CLEAN, /* the file names no node: writes may go on */
    ROWS_NAMED, /* it names nodes, or cannot be read: emptied before a write */
};

struct node_handoff_s {
    uint32_t shard;
    char *path;         /* <shard_dir>/copied-out */
    char *rows_path;    /* <shard_dir>/unbound-rows */
    char *dir;          /* <shard_dir> */
    int fenced;         /* writes to unbound tables are refused */
    uint64_t epoch;     /* counts raises and lifts (node_handoff_mark) */
    uint32_t replicas;  /* the shard's in the map last taken (0: none) */
    int open;           /* writes to unbound tables are taken: unfenced, replicas < 2 */
    uint64_t writes;    /* counts the times `open` began (node_handoff_mark) */
    int rows;           /* ROWS_* */
    int rows_fd;        /* unbound-rows as ROWS_CLEAN found it, or -1: removed when unlinked */
    uint64_t rows_turn; /* the write batch node_handoff_writing last looked at it in */
    int rows_failed;    /* the last attempt to write unbound-rows failed (logged) */
    char node[KVS_NODE_NAME_MAX + 1]; /* node.name */
    char why[600];
};

/* A mark's `writes` while writes are taken: no copy is recorded by it. */
#define WRITES_OPEN UINT64_MAX

static int write_rows(node_handoff_t *h, const char *since);
static void rows_clean(node_handoff_t *h);

/* The shard directory's lock: the master changes copied-out and
 * unbound-rows too (kvs_copied_drop), so each change here is made under
 * it. A negative errno when it cannot be taken (the change is not made). */
static int lock(const node_handoff_t *h)
{
    return kvs_copied_lock(h->dir, KVS_COPIED_LOCK_MS);
}

/* `open` follows the fence and the map; each time it begins, a copy taken
 * before may lack rows written since, and the copies unbound-rows names
 * are forgotten: this node holds the shard alone, unfenced, so they are
 * of a move that was abandoned (the fence removed, or the snapshot not
 * delivered) or of nodes the map withdrew, whose copies may be gone. */
static void settle(node_handoff_t *h)
{
    int open = !h->fenced && h->replicas < 2;
    if (open && !h->open) {
        h->writes++;
        int rc = h->rows == ROWS_NAMED ? write_rows(h, "the copies it named are forgotten") : 0;
        if (h->rows == ROWS_NAMED && rc == 0)
            rows_clean(h);
        else if (rc != 0)
            kvs_error("%s: cannot write: %s; it may name nodes whose copies are gone until the "
                      "next write to a table bound to no topic",
                      h->rows_path, strerror(-rc));
    }
    h->open = open;
}

static void now_text(char *when, size_t cap)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* unbound-rows' first lines (what it is, since when) into text[cap]:
 * their length. */
static size_t rows_head(const node_handoff_t *h, const char *since, const char *when, char *text,
                        size_t cap)
{
    int n = snprintf(text, cap,
                     "# kvs: shard %u may hold rows of tables bound to no topic that no other "
                     "copy holds (%s); a node named below installed a copy of it taken since: "
                     "a reload gives the shard up only to such a node (README, \"Moving a "
                     "shard\")\ntime %.60s\n",
                     h->shard, since, when);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* unbound-rows afresh, naming no node (synced), under the caller's lock;
 * 0 or a negative errno. */
static int write_rows_locked(node_handoff_t *h, const char *since)
{
    char when[32], text[700];
    now_text(when, sizeof(when));
    size_t n = rows_head(h, since, when, text, sizeof(text));
    return kvs_fs_write_synced(h->rows_path, h->dir, text, n, 0);
}

static int write_rows(node_handoff_t *h, const char *since)
{
    int fd = lock(h), rc = fd < 0 ? fd : write_rows_locked(h, since);
    kvs_copied_unlock(fd);
    return rc;
}

/* The rows file as it is now, ROWS_CLEAN: kept open, so that a write sees
 * at the cost of one fstat(2) whether it is still there. */
static void rows_clean(node_handoff_t *h)
{
    if (h->rows_fd >= 0)
        close(h->rows_fd);
    h->rows_fd = open(h->rows_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    h->rows = h->rows_fd >= 0 ? ROWS_CLEAN : ROWS_NAMED;
}

/* The master's holders file (kvs_copied_write_holders): 0 and *c, or a
 * negative errno (-ENOENT: none; no master wrote one). */
static int holders(const node_handoff_t *h, kvs_copied_t *c)
{
    char path[4400];
    snprintf(path, sizeof(path), "%s/" KVS_HOLDERS_FILE, h->dir);
    return kvs_copied_read_names(path, c);
}

/* The master's count of withdrawals, by holders()'s answer rc and *c:
 * 0 without a file, UINT64_MAX (matching no mark) when it cannot be read. */
static uint64_t withdrawals_of(int rc, const kvs_copied_t *c)
{
    return rc == 0 ? c->withdrawals : rc == -ENOENT ? 0 : UINT64_MAX;
}

/* Whether the master's holders file gives the shard to this node alone
 * (or there is none): the map it takes, which this worker may not have
 * taken yet. */
static int holders_alone(const node_handoff_t *h)
{
    kvs_copied_t *c = malloc(sizeof(*c));
    int rc = c == NULL ? -ENOMEM : holders(h, c);
    int alone = rc == -ENOENT || (rc == 0 && (c->n_names == 0 || /* no map: no moves */
                                              (c->n_names == 1 && kvs_copied_names(c, h->node))));
    free(c);
    return alone;
}

/* At the start: unbound-rows as `unbound` (tables bound to no topic that
 * hold rows) wants it. */
static void rows_open(node_handoff_t *h, uint32_t unbound)
{
    kvs_copied_t *c = malloc(sizeof(*c));
    int rc = c == NULL ? -ENOMEM : kvs_copied_read_names(h->rows_path, c);
    if (rc == -ENOENT && unbound > 0) {
        rc = write_rows(h, "found at a start");
        h->rows = ROWS_NONE;
        if (rc == 0)
            rows_clean(h);
        if (rc != 0)
            kvs_error("%s: cannot write: %s; until a write to a table bound to no topic writes "
                      "it, a reload may give shard %u up to a node that holds an older copy",
                      h->rows_path, strerror(-rc), h->shard);
    } else if (rc == -ENOENT) {
        h->rows = ROWS_NONE;
    } else if (unbound == 0 && rc != -ENOMEM) {
        int fd = lock(h);
        rc = fd < 0 ? fd : unlink(h->rows_path) == 0 ? kvs_fs_sync_dir(h->dir) : -errno;
        kvs_copied_unlock(fd);
        h->rows = rc == 0 ? ROWS_NONE : ROWS_NAMED;
        if (rc == 0)
            kvs_info("shard %u holds no rows of tables bound to no topic: %s removed", h->shard,
                     h->rows_path);
    } else if (rc == 0 && c->n_names == 0) {
        rows_clean(h);
    } else {
        h->rows = ROWS_NAMED;
    }
    free(c);
}

static void set_why(node_handoff_t *h, const char *peer, const char *when)
{
    snprintf(h->why, sizeof(h->why),
             "shard %u was copied to %.100s at %.40s for another node (%.300s): until this "
             "node's map moves the shard, a write here would reach this copy only",
             h->shard, peer, when, h->path);
}

/* Reads the file into h (fenced), or leaves h unfenced when there is none. */
static void load(node_handoff_t *h)
{
    kvs_copied_t c;
    int rc = kvs_copied_read(h->path, &c);
    if (rc == -ENOENT)
        return;
    h->fenced = 1;
    h->epoch++;
    if (rc == 0) {
        set_why(h, c.peer, c.time);
        return;
    }
    snprintf(h->why, sizeof(h->why),
             "%.300s cannot be %s: it says this shard was copied to another node; remove it and "
             "reload once the shard's move is over or abandoned",
             h->path, rc == KVS_EINVAL ? "understood" : kvs_strerror(rc));
}

int node_handoff_open(const char *shard_dir, uint32_t shard, const kvs_config_t *cfg,
                      uint32_t unbound, node_handoff_t **out)
{
    node_handoff_t *h = calloc(1, sizeof(*h));
    size_t n = strlen(shard_dir) + sizeof("/" KVS_COPIED_FILE);
    size_t r = strlen(shard_dir) + sizeof("/" KVS_UNBOUND_FILE);
    if (h == NULL || (h->dir = strdup(shard_dir)) == NULL || (h->path = malloc(n)) == NULL ||
        (h->rows_path = malloc(r)) == NULL) {
        node_handoff_free(h);
        return -ENOMEM;
    }
    h->shard = shard;
    h->rows_fd = -1;
    snprintf(h->node, sizeof(h->node), "%s", cfg->node_name != NULL ? cfg->node_name : "");
    snprintf(h->path, n, "%s/" KVS_COPIED_FILE, shard_dir);
    snprintf(h->rows_path, r, "%s/" KVS_UNBOUND_FILE, shard_dir);
    load(h);
    rows_open(h, unbound);
    if (h->fenced)
        kvs_warn("%s; writes to tables bound to no topic are refused here (503) until then",
                 h->why);
    node_handoff_update(h, cfg);
    *out = h;
    return 0;
}

/* Removes the file and lowers the fence; 0, or a negative errno (logged:
 * the fence stays). */
static int lift(node_handoff_t *h)
{
    int fd = lock(h);
    int rc = fd < 0                                    ? fd
             : unlink(h->path) == 0 || errno == ENOENT ? kvs_fs_sync_dir(h->dir)
                                                       : -errno;
    kvs_copied_unlock(fd);
    if (rc != 0)
        kvs_error("%s: cannot remove: %s; writes to tables bound to no topic stay refused", h->path,
                  strerror(-rc));
    else {
        h->fenced = 0;
        h->epoch++;
        settle(h);
    }
    return rc;
}

/* The file's first lines (what it is, who asked, when) into text[cap]:
 * their length. */
static size_t head(const node_handoff_t *h, const char *peer, const char *when, char *text,
                   size_t cap)
{
    int n = snprintf(text, cap,
                     "# kvs: shard %u was copied to another node; writes to tables bound to no "
                     "topic are refused here until this node's map moves the shard (README, "
                     "\"Moving a shard\")\npeer %.100s\ntime %.60s\n",
                     h->shard, peer, when);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

int node_handoff_fence(node_handoff_t *h, const char *peer, const kvs_config_t *cfg, int *raised)
{
    *raised = 0;
    if (h->fenced || kvs_config_replica_count(cfg, h->shard) > 1)
        return 0; /* up already (its file says since when), or not needed */
    char when[32], text[800];
    now_text(when, sizeof(when));
    size_t n = head(h, peer, when, text, sizeof(text));
    int fd = lock(h), rc = fd < 0 ? fd : kvs_fs_write_synced(h->path, h->dir, text, n, 0);
    if (rc != 0 && fd >= 0)
        unlink(h->path); /* a part of it would keep the fence up, unreadable, at the next start */
    kvs_copied_unlock(fd);
    if (rc != 0) {
        kvs_error("%s: cannot write: %s; the snapshot is not sent", h->path, strerror(-rc));
        return rc;
    }
    h->fenced = 1;
    h->epoch++;
    settle(h);
    *raised = 1;
    set_why(h, peer, when);
    kvs_info("%s; writes to tables bound to no topic are refused here (503) until then", h->why);
    return 0;
}

node_handoff_mark_t node_handoff_mark(const node_handoff_t *h)
{
    kvs_copied_t *c = malloc(sizeof(*c));
    int rc = c == NULL ? -ENOMEM : holders(h, c);
    node_handoff_mark_t m = {h->epoch, h->open ? WRITES_OPEN : h->writes, withdrawals_of(rc, c)};
    free(c);
    return m;
}

int node_handoff_writing(node_handoff_t *h, uint64_t batch)
{
    struct stat st;
    if (h == NULL || (h->rows == ROWS_CLEAN && batch != 0 && batch == h->rows_turn))
        return 0; /* looked at in this batch already */
    h->rows_turn = batch;
    if (h->rows == ROWS_CLEAN && fstat(h->rows_fd, &st) == 0 && st.st_nlink > 0)
        return 0;
    /* Removed (the refusal's way out), or renamed over by the master's
     * drop: written afresh below, as a write makes every copy named old. */
    const char *since = h->rows == ROWS_NONE ? "written since this worker started"
                                             : "written since the copies it named";
    int fd = lock(h), rc = fd < 0 ? fd : holders_alone(h) ? write_rows_locked(h, since) : -EAGAIN;
    if (rc == 0)
        rows_clean(h); /* (under the lock: what it opens is what was written) */
    kvs_copied_unlock(fd);
    if (rc == -EAGAIN)
        return rc; /* the map being taken: the caller says so, nothing to log */
    if (rc == 0) {
        h->rows_failed = 0;
    } else if (!h->rows_failed) {
        h->rows_failed = 1;
        kvs_error("%s: cannot write: %s; writes to tables bound to no topic are refused here "
                  "until it can be",
                  h->rows_path, strerror(-rc));
    }
    return rc;
}

/* Writes copied-out afresh from what `c` (its parse) records, with
 * `node`'s latest copy now the one ending with `digest`: one sent line
 * per node, so that a node copying again and again under one fence never
 * fills it. Through a synced file renamed over it: a crash leaves the old
 * file or the new one, and the fence up either way. 0 or a negative
 * errno. */
static int rewrite(node_handoff_t *h, const kvs_copied_t *c, const char *node,
                   const uint8_t *digest)
{
    const char *path = h->path;
    const size_t sent_line = KVS_NODE_NAME_MAX + 2 * KVS_HASH_LEN + 8;
    size_t cap =
        1024 + KVS_COPIED_NAMES * (KVS_NODE_NAME_MAX + 8) + (KVS_COPIED_SENT + 1) * sent_line;
    char *text = malloc(cap), hex[2 * KVS_HASH_LEN + 1];
    int rc = text == NULL ? -ENOMEM : 0;
    if (rc == 0) {
        size_t n = head(h, c->peer, c->time, text, cap);
        for (size_t i = 0; i < c->n_names; i++)
            n += (size_t)snprintf(text + n, cap - n, "node %s\n", c->names[i]);
        for (size_t i = 0; i < c->n_sent; i++)
            if (strcmp(c->sent[i].node, node) != 0) {
                kvs_hash_hex(c->sent[i].digest, hex);
                n += (size_t)snprintf(text + n, cap - n, "sent %s %s\n", c->sent[i].node, hex);
            }
        kvs_hash_hex(digest, hex);
        n += (size_t)snprintf(text + n, cap - n, "sent %s %s\n", node, hex);
        rc = kvs_fs_replace_synced(path, h->dir, text, n);
    }
    free(text);
    return rc;
}

/* Appends "sent NODE HEX" (digest set) or "node NODE" to the file,
 * synced, in one read of it; with `only_if_sent`, the node line only when
 * the file records a copy with that checksum sent to the node. Once the
 * file holds KVS_COPIED_SENT sent lines, a sent line rewrites it instead
 * (each node's latest copy only). Returns 0, 1 when the file already says
 * it (nothing written), -ENOENT for no such copy, KVS_EINVAL (the file
 * cannot be understood, or has no room for another node), or a negative
 * errno. */
static int append_locked(node_handoff_t *h, const char *path, const char *node,
                         const uint8_t *digest, const uint8_t *only_if_sent)
{
    kvs_copied_t *c = malloc(sizeof(*c));
    char line[KVS_NODE_NAME_MAX + 2 * KVS_HASH_LEN + 40], hex[2 * KVS_HASH_LEN + 1];
    int rc = c == NULL              ? -ENOMEM
             : path == h->rows_path ? kvs_copied_read_names(path, c)
                                    : kvs_copied_read(path, c);
    if (rc == 0 &&
        (digest != NULL ? kvs_copied_was_sent(c, node, digest) : kvs_copied_names(c, node)))
        rc = 1;
    else if (rc == 0 && only_if_sent != NULL && !kvs_copied_was_sent(c, node, only_if_sent))
        rc = -ENOENT;
    if (rc != 0) {
        free(c);
        return rc;
    }
    if (digest != NULL ? c->n_sent == KVS_COPIED_SENT && !kvs_copied_sent_any(c, node)
                       : c->n_names == KVS_COPIED_NAMES)
        rc = KVS_EINVAL;
    else if (digest != NULL && c->sent_lines >= KVS_COPIED_SENT)
        rc = rewrite(h, c, node, digest);
    else {
        /* After a line a crash cut short, first end it as no name at all
         * (a cut "node abc" must not read as node "ab"). */
        const char *cut = c->whole ? "" : " (cut off)\n";
        int n;
        if (digest != NULL) {
            kvs_hash_hex(digest, hex);
            n = snprintf(line, sizeof(line), "%ssent %s %s\n", cut, node, hex);
        } else
            n = snprintf(line, sizeof(line), "%snode %s\n", cut, node);
        rc = kvs_fs_write_synced(path, h->dir, line, (size_t)n, 1);
    }
    free(c);
    return rc;
}

/* append_locked under the lock; with `withdrawals`, only while the
 * master's count of withdrawals is still that (else -ESTALE: a map
 * withdrew nodes from the shard since the copy began, its receiver maybe
 * among them). */
static int append_to(node_handoff_t *h, const char *path, const char *node, const uint8_t *digest,
                     const uint8_t *only_if_sent, const uint64_t *withdrawals)
{
    int fd = lock(h), rc = fd < 0 ? fd : 0;
    if (rc == 0 && withdrawals != NULL) {
        kvs_copied_t *c = malloc(sizeof(*c));
        int read = c == NULL ? -ENOMEM : holders(h, c);
        uint64_t now = withdrawals_of(read, c);
        rc = now == *withdrawals && now != UINT64_MAX && (read != 0 || !kvs_copied_gone(c, node))
                 ? 0
                 : -ESTALE;
        free(c);
    }
    if (rc == 0)
        rc = append_locked(h, path, node, digest, only_if_sent);
    kvs_copied_unlock(fd);
    return rc;
}

static int append(node_handoff_t *h, const char *node, const uint8_t *digest,
                  const uint8_t *only_if_sent, const uint64_t *withdrawals)
{
    return append_to(h, h->path, node, digest, only_if_sent, withdrawals);
}

/* Says that `node` was not recorded for the master's withdrawal since its
 * copy began (append_to's -ESTALE). */
static void stale(const node_handoff_t *h, const char *node, const char *path)
{
    kvs_info("shard %u: node %s's copy is not recorded in %s: a map withdrew nodes from the "
             "shard since it began (it may have withdrawn that node)",
             h->shard, node, path);
}

static const char *append_error(int rc)
{
    return rc == KVS_EINVAL ? "the file cannot be understood, or names too many nodes"
                            : kvs_strerror(rc);
}

/* Node `node` installed a copy holding every unbound row this shard
 * acknowledged: unbound-rows names it (when there is such a file). */
static void cover(node_handoff_t *h, const char *node, const uint64_t *withdrawals)
{
    if (h->rows == ROWS_NONE)
        return; /* no rows of unbound tables here that another copy lacks */
    int rc = append_to(h, h->rows_path, node, NULL, NULL, withdrawals);
    if (rc == 0 || rc == 1)
        h->rows = ROWS_NAMED;
    else if (rc == -ESTALE)
        stale(h, node, h->rows_path);
    else
        kvs_error("%s: cannot record that node %s installed a copy of shard %u: %s; a reload "
                  "giving the shard up to it is refused until it copies again",
                  h->rows_path, node, h->shard, append_error(rc));
}

/* Records `node` (see append), and says so; a failure of a request's
 * (only_if_sent) is said in its answer instead, not logged per request. */
static int record_node(node_handoff_t *h, const char *node, const uint8_t *only_if_sent,
                       const uint64_t *withdrawals)
{
    int rc = append(h, node, NULL, only_if_sent, withdrawals);
    if (rc == 1 || rc == -ENOENT || (rc != 0 && only_if_sent != NULL))
        return rc == 1 ? 0 : rc;
    if (rc == -ESTALE)
        stale(h, node, h->path);
    else if (rc != 0)
        kvs_error("%s: cannot record that node %s installed its copy of shard %u: %s; a reload "
                  "giving the shard to %s alone is refused until it copies again",
                  h->path, node, h->shard, append_error(rc), node);
    else
        kvs_info("shard %u: node %s installed its copy (%s names it)", h->shard, node, h->path);
    return rc;
}

int node_handoff_copied(node_handoff_t *h, const char *node, node_handoff_mark_t mark)
{
    if (!kvs_copied_name_ok(node))
        return 0;
    /* A copy of another fence's time, or of none, proves nothing for
     * copied-out now; one taken while no write was taken since does for
     * unbound-rows. */
    int rc =
        h->fenced && h->epoch == mark.fence ? record_node(h, node, NULL, &mark.withdrawals) : 0;
    if (!h->open && h->writes == mark.writes)
        cover(h, node, &mark.withdrawals);
    return rc == -ESTALE ? 0 : rc;
}

int node_handoff_sent(node_handoff_t *h, const char *node, const uint8_t digest[KVS_HASH_LEN],
                      node_handoff_mark_t mark)
{
    if (!h->fenced || h->epoch != mark.fence || !kvs_copied_name_ok(node))
        return 0;
    int rc = append(h, node, digest, NULL, &mark.withdrawals);
    if (rc == 1 || rc == -ESTALE)
        return 0; /* (-ESTALE: nor is its acknowledgement taken later) */
    if (rc != 0)
        kvs_error("%s: cannot record the copy of shard %u sent to node %s: %s; its "
                  "acknowledgement is taken on the stream's connection only",
                  h->path, h->shard, node, append_error(rc));
    return rc;
}

int node_handoff_reack(node_handoff_t *h, const char *node, const uint8_t digest[KVS_HASH_LEN])
{
    if (!h->fenced || !kvs_copied_name_ok(node))
        return -ENOENT;
    /* A sent line is dropped with its node when a map withdraws it: one
     * that is still there was not withdrawn since. */
    int rc = record_node(h, node, digest, NULL); /* named before (the stream's ack came): 0 */
    if (rc == 0)
        cover(h, node, NULL); /* the fence stood since the copy: no write was taken */
    return rc;
}

void node_handoff_unfence(node_handoff_t *h)
{
    if (h->fenced && lift(h) == 0)
        kvs_info("shard %u: its snapshot was not delivered: writes to tables bound to no topic are "
                 "taken again",
                 h->shard);
}

/* The fence, as the file and `cfg` want it (node_handoff_update). */
static void refence(node_handoff_t *h, const kvs_config_t *cfg)
{
    struct stat st;
    if (lstat(h->path, &st) != 0 && errno == ENOENT) { /* the operator's way out */
        kvs_info("shard %u: %s was removed: writes to tables bound to no topic are taken again",
                 h->shard, h->path);
        h->fenced = 0;
        h->epoch++;
        return;
    }
    if (!kvs_config_local(cfg, h->shard) || h->replicas < 2)
        return;
    /* A node that installed a copy from here and keeps the shard may have
     * held it alone since, and taken writes this copy lacks: the fence
     * stays (its reads are the rows as they were at the copy). */
    kvs_copied_t *c = malloc(sizeof(*c));
    const char *keeper = NULL;
    int rc = c == NULL ? -ENOMEM : kvs_copied_read(h->path, c);
    for (size_t i = 0; rc == 0 && keeper == NULL && i < c->n_names; i++) {
        const kvs_node_t *n = kvs_config_node(cfg, c->names[i]);
        if (n != NULL && kvs_node_serves(n, h->shard) && strcmp(c->names[i], cfg->node_name) != 0)
            keeper = c->names[i];
    }
    if (keeper != NULL)
        kvs_warn("shard %u: the map gives it %u replicas, but node %s, one of them, installed a "
                 "copy from here and may have held the shard alone and taken writes this copy "
                 "lacks since: the fence stays, and reads here of tables bound to no topic return "
                 "the rows as they were then (README, \"Moving a shard\")",
                 h->shard, h->replicas, keeper);
    else if (rc != 0)
        kvs_warn("shard %u: the map gives it %u replicas, but %s cannot be read (%s): the fence "
                 "stays",
                 h->shard, h->replicas, h->path, kvs_strerror(rc));
    int keep = rc != 0 || keeper != NULL;
    free(c);
    if (keep)
        return;
    if (lift(h) == 0)
        kvs_info("shard %u: the map gives it %u replicas: writes to tables bound to no topic are "
                 "refused for that now (400), and taken again once it is down to one",
                 h->shard, h->replicas);
}

void node_handoff_update(node_handoff_t *h, const kvs_config_t *cfg)
{
    h->replicas = kvs_config_replica_count(cfg, h->shard);
    if (h->fenced)
        refence(h, cfg);
    struct stat st;
    if (h->rows != ROWS_NONE && lstat(h->rows_path, &st) != 0 && errno == ENOENT) {
        h->rows = ROWS_NONE; /* removed (README's way out): the next such write writes it again */
        if (h->rows_fd >= 0)
            close(h->rows_fd);
        h->rows_fd = -1;
        kvs_info("shard %u: %s was removed; the next write to a table bound to no topic writes "
                 "it again",
                 h->shard, h->rows_path);
    }
    settle(h);
}

const char *node_handoff_why(const node_handoff_t *h)
{
    return h != NULL && h->fenced ? h->why : NULL;
}

void node_handoff_free(node_handoff_t *h)
{
    if (h == NULL)
        return;
    if (h->rows_fd >= 0)
        close(h->rows_fd);
    free(h->path);
    free(h->rows_path);
    free(h->dir);
    free(h);
}
