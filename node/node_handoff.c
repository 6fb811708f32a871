/*
 * node_handoff: the fence on writes to unbound tables after a snapshot
 * (see node_handoff.h for the rule). The file is a few lines of text:
 *
 *   # kvs: ... (what it is, for whoever finds it)
 *   peer HOST:PORT        who asked for the snapshot
 *   time 2026-12-03T15:05:35Z
 *   replicas a,b          the shard's replicas in this worker's map then
 *                         (names sorted; empty without cluster.nodes)
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
#define FILE_MAX 65536 /* larger is not a file this module wrote */

struct node_handoff_s {
    uint32_t shard;
    char *path;     /* <shard_dir>/copied-out */
    char *dir;      /* <shard_dir> */
    int fenced;     /* writes to unbound tables are refused */
    char *replicas; /* the map's replicas when fenced; NULL: not known (a damaged file) */
    char why[512];
};

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The shard's replicas in `cfg`: their names, sorted, joined by commas
 * ("" without cluster.nodes), or NULL when out of memory. */
static char *replica_names(const kvs_config_t *cfg, uint32_t shard)
{
    const char **names = calloc(cfg->n_nodes + 1, sizeof(*names));
    size_t n = 0, len = 1;
    if (names == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->n_nodes; i++)
        if (kvs_node_serves(&cfg->nodes[i], shard)) {
            names[n++] = cfg->nodes[i].name;
            len += strlen(cfg->nodes[i].name) + 1;
        }
    qsort(names, n, sizeof(*names), cmp_names);
    char *out = malloc(len);
    if (out != NULL) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++)
            o += (size_t)sprintf(out + o, "%s%s", i > 0 ? "," : "", names[i]);
        out[o] = '\0';
    }
    free(names);
    return out;
}

static void set_why(node_handoff_t *h, const char *peer, const char *when)
{
    snprintf(h->why, sizeof(h->why),
             "shard %u was copied to %s at %s for another node (%s): until this node's map moves "
             "the shard, a write here would reach this copy only",
             h->shard, peer, when, h->path);
}

/* The value of the line "<key> VALUE" in text[0..n), copied, or NULL. */
static char *line_value(const char *text, const char *key)
{
    size_t k = strlen(key);
    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *end = strchr(p, '\n');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n > k && strncmp(p, key, k) == 0 && p[k] == ' ')
            return strndup(p + k + 1, n - k - 1);
        if (n == k && strncmp(p, key, k) == 0)
            return strdup("");
        p = end != NULL ? end + 1 : NULL;
    }
    return NULL;
}

/* Reads the file into h (fenced), or leaves h unfenced when there is none. */
static int load(node_handoff_t *h)
{
    int fd = open(h->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT)
        return 0;
    h->fenced = 1;
    char *text = malloc(FILE_MAX + 1);
    if (text == NULL) {
        if (fd >= 0)
            close(fd);
        return -ENOMEM;
    }
    ssize_t got = fd >= 0 ? read(fd, text, FILE_MAX + 1) : -1;
    int err = fd < 0 || got < 0 ? errno : 0;
    if (fd >= 0)
        close(fd);
    char *peer = NULL, *when = NULL;
    if (got >= 0 && got <= FILE_MAX) {
        text[got] = '\0';
        peer = line_value(text, "peer");
        when = line_value(text, "time");
        h->replicas = line_value(text, "replicas");
    }
    free(text);
    if (peer != NULL && when != NULL && h->replicas != NULL) {
        set_why(h, peer, when);
    } else {
        free(h->replicas);
        h->replicas = NULL;
        snprintf(h->why, sizeof(h->why),
                 "%s cannot be %s: it says this shard was copied to another node; remove it and "
                 "reload once the shard's move is over or abandoned",
                 h->path, err != 0 ? strerror(err) : "understood");
    }
    free(peer);
    free(when);
    return 0;
}

int node_handoff_open(const char *shard_dir, uint32_t shard, const kvs_config_t *cfg,
                      node_handoff_t **out)
{
    node_handoff_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -ENOMEM;
    h->shard = shard;
    size_t n = strlen(shard_dir) + sizeof("/" FILE_NAME);
    h->dir = strdup(shard_dir);
    h->path = malloc(n);
    if (h->dir == NULL || h->path == NULL ||
        (snprintf(h->path, n, "%s/" FILE_NAME, shard_dir), load(h) != 0)) {
        node_handoff_free(h);
        return -ENOMEM;
    }
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

/* Writes text[0..n) to path, synced (file and directory). */
static int write_synced(const char *path, const char *dir, const char *text, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
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
    return rc == 0 ? sync_dir(dir) : rc;
}

int node_handoff_fence(node_handoff_t *h, const char *peer, const kvs_config_t *cfg)
{
    char when[32], *text = NULL;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    char *names = replica_names(cfg, h->shard);
    int n = names == NULL ? -1
                          : asprintf(&text,
                                     "# kvs: shard %u was copied to another node; writes to "
                                     "tables bound to no topic are refused here until this "
                                     "node's map moves the shard (README, \"Moving a shard\")\n"
                                     "peer %s\ntime %s\nreplicas %s\n",
                                     h->shard, peer, when, names);
    h->fenced = 1; /* whatever happens below: the caller may have told no one yet */
    set_why(h, peer, when);
    int rc = n < 0 ? -ENOMEM : write_synced(h->path, h->dir, text, (size_t)n);
    free(text);
    if (rc != 0) {
        kvs_error("%s: cannot write: %s; the snapshot is not sent", h->path, strerror(-rc));
        free(names);
        return rc;
    }
    free(h->replicas);
    h->replicas = names;
    kvs_info("%s; writes to tables bound to no topic are refused here (503) until then", h->why);
    return 0;
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
        free(h->replicas);
        h->replicas = NULL;
        return;
    }
    if (h->replicas == NULL || !kvs_config_local(cfg, h->shard))
        return;
    char *now = replica_names(cfg, h->shard);
    if (now == NULL || strcmp(now, h->replicas) == 0) {
        free(now);
        return;
    }
    int rc = unlink(h->path) == 0 || errno == ENOENT ? sync_dir(h->dir) : -errno;
    if (rc != 0) {
        kvs_error("%s: cannot remove: %s; writes to tables bound to no topic stay refused", h->path,
                  strerror(-rc));
    } else {
        kvs_info("shard %u: the map changed since its snapshot was sent (replicas were \"%s\", "
                 "now \"%s\"): writes to tables bound to no topic are taken again",
                 h->shard, h->replicas, now);
        h->fenced = 0;
        free(h->replicas);
        h->replicas = NULL;
    }
    free(now);
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
    free(h->replicas);
    free(h);
}
