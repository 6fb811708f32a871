/*
 * node_handoff: the fence on writes to unbound tables after a snapshot
 * (see node_handoff.h for the rule). The file is a few lines of text:
 *
 *   # kvs: ... (what it is, for whoever finds it)
 *   peer HOST:PORT        who asked for the snapshot
 *   time 2026-12-03T15:05:35Z
 *   node NAME             the node of the map that asked (Snapshot.node),
 *                         one line per node that copied; none for a client
 *
 * The master reads the node lines (router_master_copied_by) before a
 * reload takes the shard from this node.
 */
#include "node_handoff.h"
#include "kvs_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FILE_NAME "copied-out"
#define FILE_MAX 4096 /* larger is not a file this module wrote */

struct node_handoff_s {
    uint32_t shard;
    char *path; /* <shard_dir>/copied-out */
    char *dir;  /* <shard_dir> */
    int fenced; /* writes to unbound tables are refused */
    char why[600];
};

static void set_why(node_handoff_t *h, const char *peer, const char *when)
{
    snprintf(h->why, sizeof(h->why),
             "shard %u was copied to %.100s at %.40s for another node (%.300s): until this "
             "node's map moves the shard, a write here would reach this copy only",
             h->shard, peer, when, h->path);
}

/* The value of the line "<key> VALUE" in `text`, copied into out[cap]:
 * 0, or -1 when there is none. */
static int line_value(const char *text, const char *key, char *out, size_t cap)
{
    size_t k = strlen(key);
    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *end = strchr(p, '\n');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n > k && strncmp(p, key, k) == 0 && p[k] == ' ') {
            snprintf(out, cap, "%.*s", (int)(n - k - 1), p + k + 1);
            return 0;
        }
        p = end != NULL ? end + 1 : NULL;
    }
    return -1;
}

/* Reads the file into h (fenced), or leaves h unfenced when there is none. */
static void load(node_handoff_t *h)
{
    char text[FILE_MAX + 1], peer[128], when[64];
    int fd = open(h->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT)
        return;
    ssize_t got = fd >= 0 ? read(fd, text, FILE_MAX + 1) : -1;
    int err = fd < 0 || got < 0 ? errno : 0;
    if (fd >= 0)
        close(fd);
    h->fenced = 1;
    if (got >= 0 && got <= FILE_MAX) {
        text[got] = '\0';
        if (line_value(text, "peer", peer, sizeof(peer)) == 0 &&
            line_value(text, "time", when, sizeof(when)) == 0) {
            set_why(h, peer, when);
            return;
        }
    }
    snprintf(h->why, sizeof(h->why),
             "%.300s cannot be %s: it says this shard was copied to another node; remove it and "
             "reload once the shard's move is over or abandoned",
             h->path, err != 0 ? strerror(err) : "understood");
}

int node_handoff_open(const char *shard_dir, uint32_t shard, const kvs_config_t *cfg,
                      node_handoff_t **out)
{
    node_handoff_t *h = calloc(1, sizeof(*h));
    size_t n = strlen(shard_dir) + sizeof("/" FILE_NAME);
    if (h == NULL || (h->dir = strdup(shard_dir)) == NULL || (h->path = malloc(n)) == NULL) {
        node_handoff_free(h);
        return -ENOMEM;
    }
    h->shard = shard;
    snprintf(h->path, n, "%s/" FILE_NAME, shard_dir);
    load(h);
    if (h->fenced)
        kvs_warn("%s; writes to tables bound to no topic are refused here (503) until then",
                 h->why);
    node_handoff_update(h, cfg);
    *out = h;
    return 0;
}

static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* Writes text[0..n) to path, synced: the file, and the directory for a
 * new file; `append` adds it at the end of the existing file instead. */
static int write_synced(const char *path, const char *dir, const char *text, size_t n, int append)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | (append ? O_APPEND : O_CREAT | O_TRUNC),
                  0600);
    if (fd < 0)
        return -errno;
    int rc = 0;
    for (size_t off = 0; rc == 0 && off < n;) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno != EINTR)
            rc = -errno;
        else if (w > 0)
            off += (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    return rc == 0 && !append ? sync_dir(dir) : rc; /* appended: the entry is there already */
}

/* Removes the file and lowers the fence; 0, or a negative errno (logged:
 * the fence stays). */
static int lift(node_handoff_t *h)
{
    int rc = unlink(h->path) == 0 || errno == ENOENT ? sync_dir(h->dir) : -errno;
    if (rc != 0)
        kvs_error("%s: cannot remove: %s; writes to tables bound to no topic stay refused", h->path,
                  strerror(-rc));
    else
        h->fenced = 0;
    return rc;
}

/* Adds "node NAME" to the file of a fence already up: one more node holds
 * a copy. Returns 0 or a negative errno. */
static int add_node(node_handoff_t *h, const char *node)
{
    char line[160];
    int n = snprintf(line, sizeof(line), "node %.128s\n", node);
    return write_synced(h->path, h->dir, line, (size_t)n, 1);
}

/* A node name fit for a line of the file: printable, no spaces. */
static int name_ok(const char *node)
{
    if (node == NULL || node[0] == '\0' || strlen(node) > 128)
        return 0;
    for (const char *p = node; *p != '\0'; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return 0;
    return 1;
}

int node_handoff_fence(node_handoff_t *h, const char *peer, const char *node,
                       const kvs_config_t *cfg, int *raised)
{
    *raised = 0;
    if (!name_ok(node))
        node = NULL;
    if (h->fenced && node != NULL && kvs_config_replica_count(cfg, h->shard) <= 1) {
        int rc = add_node(h, node);
        if (rc != 0)
            kvs_error("%s: cannot add node %s: %s; the snapshot is not sent", h->path, node,
                      strerror(-rc));
        return rc;
    }
    if (h->fenced || kvs_config_replica_count(cfg, h->shard) > 1)
        return 0; /* up already (its file says since when), or not needed */
    char when[32], text[800];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    int n = snprintf(text, sizeof(text),
                     "# kvs: shard %u was copied to another node; writes to tables bound to no "
                     "topic are refused here until this node's map moves the shard (README, "
                     "\"Moving a shard\")\npeer %.100s\ntime %s\n%s%.128s%s",
                     h->shard, peer, when, node != NULL ? "node " : "", node != NULL ? node : "",
                     node != NULL ? "\n" : "");
    int rc = write_synced(h->path, h->dir, text, (size_t)n, 0);
    if (rc != 0) {
        kvs_error("%s: cannot write: %s; the snapshot is not sent", h->path, strerror(-rc));
        unlink(h->path); /* a part of it would keep the fence up, unreadable, at the next start */
        return rc;
    }
    h->fenced = 1;
    *raised = 1;
    set_why(h, peer, when);
    kvs_info("%s; writes to tables bound to no topic are refused here (503) until then", h->why);
    return 0;
}

void node_handoff_unfence(node_handoff_t *h)
{
    if (h->fenced && lift(h) == 0)
        kvs_info("shard %u: its snapshot was not delivered: writes to tables bound to no topic are "
                 "taken again",
                 h->shard);
}

void node_handoff_update(node_handoff_t *h, const kvs_config_t *cfg)
{
    if (!h->fenced)
        return;
    struct stat st;
    if (lstat(h->path, &st) != 0 && errno == ENOENT) { /* the operator's way out */
        kvs_info("shard %u: %s was removed: writes to tables bound to no topic are taken again",
                 h->shard, h->path);
        h->fenced = 0;
        return;
    }
    if (!kvs_config_local(cfg, h->shard) || kvs_config_replica_count(cfg, h->shard) < 2)
        return;
    if (lift(h) == 0)
        kvs_info("shard %u: the map gives it %u replicas: writes to tables bound to no topic are "
                 "refused for that now (400), and taken again once it is down to one",
                 h->shard, kvs_config_replica_count(cfg, h->shard));
}

const char *node_handoff_why(const node_handoff_t *h)
{
    return h != NULL && h->fenced ? h->why : NULL;
}

void node_handoff_free(node_handoff_t *h)
{
    if (h == NULL)
        return;
    free(h->path);
    free(h->dir);
    free(h);
}
