/*
 * clock_order: a test plugin that hooks every event and checks the
 * promise of kvs_request_info_t.now_ns: never less than received_ns, nor
 * than an earlier event's now_ns for the same request. In its fini it
 * appends "clock ROLE SHARD EVENTS BACKWARDS" to the file named by its
 * arg. Used by test_ops.py.
 */
#include "kvs_plugin.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SLOTS 4096 /* requests in flight tracked at once (more: some go unchecked) */

typedef struct slot_s {
    uint64_t conn_id, received_ns, last_ns;
} slot_t;

typedef struct clock_s {
    char path[4096];
    char role[16];
    long shard;
    unsigned long long events, backwards;
    slot_t slots[SLOTS];
} clock_t_;

static uint32_t on_event(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req, char *msg,
                         size_t msglen)
{
    clock_t_ *c = state;
    (void)msg;
    (void)msglen;
    c->events++;
    if (req->now_ns < req->received_ns)
        c->backwards++;
    slot_t *s = &c->slots[(req->conn_id * 31 + req->received_ns) % SLOTS];
    if (s->conn_id == req->conn_id && s->received_ns == req->received_ns &&
        req->now_ns < s->last_ns)
        c->backwards++;
    *s = (slot_t){req->conn_id, req->received_ns, req->now_ns};
    if (ev == KVS_HOOK_AFTER_SEND)
        memset(s, 0, sizeof(*s));
    return 0;
}

static int clock_init(const kvs_plugin_host_t *host, void **state)
{
    clock_t_ *c = calloc(1, sizeof(*c));
    if (c == NULL || host->arg[0] == '\0') {
        free(c);
        snprintf(host->error, host->error_len, "clock_order needs a file as its arg");
        return -1;
    }
    snprintf(c->path, sizeof(c->path), "%s", host->arg);
    snprintf(c->role, sizeof(c->role), "%s", host->role);
    c->shard = (long)host->shard;
    *state = c;
    return host->add_hook(host, KVS_HOOK_ALL, on_event, c);
}

static void clock_fini(void *state)
{
    clock_t_ *c = state;
    char line[128];
    int n = snprintf(line, sizeof(line), "clock %s %ld %llu %llu\n", c->role, c->shard, c->events,
                     c->backwards);
    int fd = open(c->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && n > 0) {
        ssize_t w = write(fd, line, (size_t)n); /* a short line: whole or not at all */
        (void)w;
        close(fd);
    }
    free(c);
}

KVS_PLUGIN_EXPORT const kvs_plugin_t kvs_plugin = {
    .struct_size = sizeof(kvs_plugin_t),
    .abi_version = KVS_PLUGIN_ABI_VERSION,
    .name = "clock_order",
    .init = clock_init,
    .fini = clock_fini,
};
