/*
 * kvs_copied: the copied-out file's format (see kvs_copied.h).
 */
#include "kvs_copied.h"
#include "kvs_err.h"
#include "kvs_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int kvs_copied_name_ok(const char *node)
{
    return node != NULL && kvs_config_node_name_problem(node) == NULL;
}

int kvs_copied_gone(const kvs_copied_t *c, const char *node)
{
    for (size_t i = 0; i < c->n_gone; i++)
        if (strcmp(c->gone[i], node) == 0)
            return 1;
    return 0;
}

int kvs_copied_names(const kvs_copied_t *c, const char *node)
{
    for (size_t i = 0; i < c->n_names; i++)
        if (strcmp(c->names[i], node) == 0)
            return 1;
    return 0;
}

/* The entry of the copy last sent to `node`, or NULL. */
static kvs_copied_sent_t *sent_to(const kvs_copied_t *c, const char *node)
{
    for (size_t i = 0; i < c->n_sent; i++)
        if (strcmp(c->sent[i].node, node) == 0)
            return (kvs_copied_sent_t *)&c->sent[i];
    return NULL;
}

int kvs_copied_sent_any(const kvs_copied_t *c, const char *node)
{
    return sent_to(c, node) != NULL;
}

int kvs_copied_was_sent(const kvs_copied_t *c, const char *node, const uint8_t digest[KVS_HASH_LEN])
{
    const kvs_copied_sent_t *s = sent_to(c, node);
    return s != NULL && memcmp(s->digest, digest, KVS_HASH_LEN) == 0;
}

/* "sent NAME HEX" (value: "NAME HEX") into *s: 1, else 0. */
static int sent_of(const char *value, kvs_copied_sent_t *s)
{
    const char *sp = strchr(value, ' ');
    size_t n = sp != NULL ? (size_t)(sp - value) : 0;
    if (n == 0 || n > KVS_NODE_NAME_MAX || kvs_hash_unhex(sp + 1, strlen(sp + 1), s->digest) != 0)
        return 0;
    memcpy(s->node, value, n);
    s->node[n] = '\0';
    return kvs_copied_name_ok(s->node);
}

/* Copies line[0..n) into out[cap] when it is "<key> VALUE" and fits:
 * 1, else 0. */
static int value_of(const char *line, size_t n, const char *key, char *out, size_t cap)
{
    size_t k = strlen(key);
    if (n <= k + 1 || strncmp(line, key, k) != 0 || line[k] != ' ' || n - k - 1 >= cap)
        return 0;
    memcpy(out, line + k + 1, n - k - 1);
    out[n - k - 1] = '\0';
    return 1;
}

/* kvs_copied_parse's lines, whatever the head says. */
static int parse_lines(const char *text, size_t len, kvs_copied_t *out)
{
    memset(out, 0, sizeof(*out));
    if (memchr(text, '\0', len) != NULL)
        return KVS_EINVAL;
    out->whole = len == 0 || text[len - 1] == '\n';
    char name[KVS_NODE_NAME_MAX + 1], value[KVS_NODE_NAME_MAX + 2 * KVS_HASH_LEN + 2];
    kvs_copied_sent_t sent;
    for (size_t at = 0; at < len;) {
        const char *line = text + at, *end = memchr(line, '\n', len - at);
        if (end == NULL)
            break; /* cut short by a crash mid-append: not a line yet */
        size_t n = (size_t)(end - line);
        at += n + 1;
        if (out->peer[0] == '\0' && value_of(line, n, "peer", out->peer, sizeof(out->peer)))
            continue;
        if (out->time[0] == '\0' && value_of(line, n, "time", out->time, sizeof(out->time)))
            continue;
        if (value_of(line, n, "withdrawals", value, sizeof(value))) {
            out->withdrawals = strtoull(value, NULL, 10);
            continue;
        }
        if (value_of(line, n, "withdrawn", name, sizeof(name))) {
            if (kvs_copied_name_ok(name) && !kvs_copied_gone(out, name) &&
                out->n_gone < KVS_COPIED_NAMES)
                memcpy(out->gone[out->n_gone++], name, sizeof(name));
            continue;
        }
        if (value_of(line, n, "sent", value, sizeof(value))) {
            kvs_copied_sent_t *had;
            out->sent_lines++;
            if (!sent_of(value, &sent))
                continue;
            if ((had = sent_to(out, sent.node)) != NULL)
                memcpy(had->digest, sent.digest, KVS_HASH_LEN); /* a later copy */
            else if (out->n_sent < KVS_COPIED_SENT)
                out->sent[out->n_sent++] = sent;
            continue;
        }
        if (!value_of(line, n, "node", name, sizeof(name)) || !kvs_copied_name_ok(name) ||
            kvs_copied_names(out, name))
            continue;
        if (out->n_names == KVS_COPIED_NAMES)
            return KVS_EINVAL;
        memcpy(out->names[out->n_names++], name, sizeof(name));
    }
    return 0;
}

int kvs_copied_parse(const char *text, size_t len, kvs_copied_t *out)
{
    int rc = parse_lines(text, len, out);
    return rc != 0 || (out->peer[0] != '\0' && out->time[0] != '\0') ? rc : KVS_EINVAL;
}

/* Reads `path` whole (not following a symlink, never waiting on a FIFO)
 * into a new *text of *got bytes. Returns 0, -ENOENT, KVS_EINVAL (not a
 * regular file, or larger than KVS_COPIED_MAX: not one kvs wrote) or
 * another negative errno; *text is the caller's to free either way. */
static int slurp(const char *path, char **text, size_t *got)
{
    *got = 0;
    *text = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = (*text = malloc(KVS_COPIED_MAX + 1)) == NULL ? -ENOMEM
             : fstat(fd, &st) != 0                        ? -errno
             : !S_ISREG(st.st_mode)                       ? KVS_EINVAL
                                                          : 0;
    while (rc == 0 && *got <= KVS_COPIED_MAX) {
        ssize_t r = read(fd, *text + *got, KVS_COPIED_MAX + 1 - *got);
        if (r < 0 && errno != EINTR)
            rc = -errno;
        else if (r == 0)
            break;
        else if (r > 0)
            *got += (size_t)r;
    }
    close(fd);
    return rc == 0 && *got > KVS_COPIED_MAX ? KVS_EINVAL : rc;
}

static int read_file(const char *path, kvs_copied_t *out, int head)
{
    char *text;
    size_t got;
    int rc = slurp(path, &text, &got);
    if (rc == 0)
        rc = head ? kvs_copied_parse(text, got, out) : parse_lines(text, got, out);
    free(text);
    return rc;
}

int kvs_copied_read(const char *path, kvs_copied_t *out)
{
    return read_file(path, out, 1);
}

int kvs_copied_read_names(const char *path, kvs_copied_t *out)
{
    return read_file(path, out, 0);
}

int kvs_copied_lock(const char *dir, unsigned wait_ms)
{
    char path[4400];
    if ((size_t)snprintf(path, sizeof(path), "%s/" KVS_COPIED_LOCK, dir) >= sizeof(path))
        return -ENAMETOOLONG;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    for (unsigned waited = 0;; waited++) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        int e = errno;
        if ((e != EWOULDBLOCK && e != EINTR) || waited >= wait_ms) {
            close(fd);
            return e == EWOULDBLOCK ? -ETIMEDOUT : -e;
        }
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

void kvs_copied_unlock(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

/* Whether line[0..n) is "node NAME" or "sent NAME ..." for NAME in
 * names[0..k) (or any NAME, with `all`). */
static int names_one(const char *line, size_t n, const char *const *names, size_t k, int all)
{
    size_t skip = n > 5 && memcmp(line, "node ", 5) == 0   ? 5
                  : n > 5 && memcmp(line, "sent ", 5) == 0 ? 5
                                                           : 0;
    if (skip == 0)
        return 0;
    if (all)
        return 1;
    const char *name = line + skip, *end = memchr(name, ' ', n - skip);
    size_t len = end != NULL ? (size_t)(end - name) : n - skip;
    for (size_t i = 0; i < k; i++)
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
            return 1;
    return 0;
}

static int drop_in(const char *dir, const char *file, const char *const *names, size_t k, int all,
                   size_t *dropped)
{
    char path[4400];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return -ENAMETOOLONG;
    char *text, *out = malloc(KVS_COPIED_MAX + 1);
    size_t got, n = 0, gone = 0;
    int rc = slurp(path, &text, &got);
    if (rc == -ENOENT) {
        free(out);
        free(text);
        return 0;
    }
    if (rc == 0 && (out == NULL || memchr(text, '\0', got) != NULL))
        rc = out == NULL ? -ENOMEM : KVS_EINVAL;
    for (size_t at = 0; rc == 0 && at < got;) {
        const char *line = text + at, *end = memchr(line, '\n', got - at);
        size_t len = end != NULL ? (size_t)(end - line) : got - at;
        at += len + (end != NULL);
        if (end == NULL || names_one(line, len, names, k, all)) {
            gone++; /* named, or cut short by a crash: no name either way */
            continue;
        }
        memcpy(out + n, line, len + 1);
        n += len + 1;
    }
    if (rc == 0 && gone > 0)
        rc = kvs_fs_replace_synced(path, dir, out, n);
    if (rc == 0 && dropped != NULL)
        *dropped += gone;
    free(text);
    free(out);
    return rc;
}

int kvs_copied_drop(const char *dir, const char *const *names, size_t n, int all, size_t *dropped)
{
    int rc = drop_in(dir, KVS_COPIED_FILE, names, n, all, dropped);
    return rc != 0 ? rc : drop_in(dir, KVS_UNBOUND_FILE, names, n, all, dropped);
}

int kvs_copied_write_holders(const char *dir, const char *const *names, size_t n,
                             uint64_t withdrawals, const char *const *gone, size_t n_gone)
{
    size_t cap = 256 + (n + n_gone) * (KVS_NODE_NAME_MAX + 16), len;
    char *text = malloc(cap), path[4400];
    if (text == NULL)
        return -ENOMEM;
    len = (size_t)snprintf(text, cap,
                           "# kvs: this shard's nodes in the map kvs-router last ran; a node "
                           "that leaves them is dropped from copied-out and unbound-rows\n"
                           "withdrawals %llu\n",
                           (unsigned long long)withdrawals);
    for (size_t i = 0; i < n && len < cap; i++)
        len += (size_t)snprintf(text + len, cap - len, "node %s\n", names[i]);
    for (size_t i = 0; i < n_gone && len < cap; i++)
        len += (size_t)snprintf(text + len, cap - len, "withdrawn %s\n", gone[i]);
    int rc = (size_t)snprintf(path, sizeof(path), "%s/" KVS_HOLDERS_FILE, dir) >= sizeof(path)
                 ? -ENAMETOOLONG
                 : kvs_fs_replace_synced(path, dir, text, len < cap ? len : cap - 1);
    free(text);
    return rc;
}
