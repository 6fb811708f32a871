/*
 * audit_log: an example kvs plugin. Writes one line per write request the
 * router executed (Hset Hmset Hdel Hmdel Hincr) to a file:
 *
 *   2026-11-22T02:43:41.123Z client=127.0.0.1:51234 user="alice" command=Hset table="users"
 *   keys=1 status=200
 *
 * (one line), time (UTC, when the write arrived), the client's address,
 * the user it authenticated as (user=- when nobody: no users configured,
 * or a trusted unix socket peer), the command, the table (quoted, as the
 * user; `"` and `\` escaped, other bytes outside printable ASCII as \xHH),
 * how many keys it named, and its answer's status (a write refused, or
 * applied only in part, is audited too, with that status). Both front
 * doors (kvs protocol and RESP) are audited alike.
 *
 * Configure it in config.yaml with the file as its argument:
 *
 *   plugins:
 *     - {path: /usr/lib/kvs/audit_log.so, arg: /var/log/kvs/audit.log}
 *
 * It hooks the router only (where clients' addresses are known); in the
 * workers it registers nothing. The file is opened for appending at start
 * (a file that cannot be opened refuses the start, naming it) and each
 * line is one write(2) in append mode, so lines never interleave, not even
 * those of several router processes (router.processes) sharing the file. That
 * is one system call per write request on the router's loop: fine for an
 * audit trail on a local disk, and a real deployment that cannot afford it
 * would buffer lines and flush them from a timer.
 *
 * Built against include/kvs_plugin.h only, as a third party would.
 */
#include "kvs_plugin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 2048

typedef struct audit_s {
    int fd;
    void (*log)(int level, const char *fmt, ...);
    int failed; /* a write failed: said once */
} audit_t;

/* Appends a table or user name, quoted and escaped, to line[*n..cap). */
static void put_table(char *line, size_t *n, size_t cap, const char *t, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (*n + 1 < cap)
        line[(*n)++] = '"';
    for (size_t i = 0; i < len && *n + 5 < cap; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c == '"' || c == '\\') {
            line[(*n)++] = '\\';
            line[(*n)++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            line[(*n)++] = (char)c;
        } else {
            line[(*n)++] = '\\';
            line[(*n)++] = 'x';
            line[(*n)++] = hex[c >> 4];
            line[(*n)++] = hex[c & 15];
        }
    }
    if (*n + 1 < cap)
        line[(*n)++] = '"';
}

/* When the request arrived, as UTC text with milliseconds. */
static void stamp(char *out, size_t cap, const kvs_request_info_t *req)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    int64_t ago_us = (int64_t)((req->now_ns - req->received_ns) / 1000);
    int64_t us = (int64_t)tv.tv_sec * 1000000 + tv.tv_usec - ago_us;
    time_t sec = (time_t)(us / 1000000);
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03dZ", (int)(us % 1000000 / 1000));
}

static uint32_t audit_hook(void *state, kvs_hook_event_t event, const kvs_request_info_t *req,
                           char *msg, size_t msglen)
{
    audit_t *a = state;
    char line[LINE_MAX_BYTES], when[64];
    (void)event;
    (void)msg;
    (void)msglen;
    if (!req->write)
        return 0;
    stamp(when, sizeof(when), req);
    int k = snprintf(line, sizeof(line), "%s client=%s user=", when, req->peer);
    size_t n = k > 0 && (size_t)k < sizeof(line) ? (size_t)k : 0;
    const char *user = KVS_PLUGIN_HAS(req, identity) && req->identity != NULL ? req->identity : "";
    if (user[0] == '\0') {
        line[n++] = '-';
    } else {
        put_table(line, &n, sizeof(line) / 2, user, strlen(user));
    }
    k = snprintf(line + n, sizeof(line) - n, " command=%s table=", req->command_name);
    n += k > 0 && (size_t)k < sizeof(line) - n ? (size_t)k : 0;
    put_table(line, &n, sizeof(line) - 40, req->table ? req->table : "", req->table_len);
    k = snprintf(line + n, sizeof(line) - n, " keys=%u status=%u\n", req->keys, req->status);
    n += k > 0 ? (size_t)k : 0;
    if (write(a->fd, line, n) != (ssize_t)n && !a->failed) {
        a->failed = 1;
        a->log(3, "audit_log: cannot write the audit file: %s (audit lines are being lost)",
               strerror(errno));
    }
    return 0;
}

static int audit_init(const kvs_plugin_host_t *host, void **state)
{
    *state = NULL;
    if (strcmp(host->role, "router") != 0)
        return 0; /* workers see no client addresses: nothing to do there */
    if (host->arg[0] == '\0') {
        snprintf(host->error, host->error_len,
                 "audit_log needs the audit file as its arg (plugins: - {path: ..., arg: FILE})");
        return -1;
    }
    audit_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(host->error, host->error_len, "out of memory");
        return -1;
    }
    a->log = host->log;
    a->fd = open(host->arg, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (a->fd < 0) {
        snprintf(host->error, host->error_len, "cannot open the audit file %s: %s", host->arg,
                 strerror(errno));
        free(a);
        return -1;
    }
    if (host->add_hook(host, KVS_HOOK_MASK(KVS_HOOK_EXECUTED), audit_hook, a) != 0) {
        snprintf(host->error, host->error_len, "the request hook chain is full");
        close(a->fd);
        free(a);
        return -1;
    }
    *state = a;
    host->log(1, "audit_log: auditing writes to %s", host->arg);
    return 0;
}

static void audit_fini(void *state)
{
    audit_t *a = state;
    if (a == NULL)
        return;
    close(a->fd);
    free(a);
}

KVS_PLUGIN_EXPORT const kvs_plugin_t kvs_plugin = {
    .struct_size = sizeof(kvs_plugin_t),
    .abi_version = KVS_PLUGIN_ABI_VERSION,
    .name = "audit_log",
    .init = audit_init,
    .fini = audit_fini,
};
