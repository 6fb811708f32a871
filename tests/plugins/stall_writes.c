/*
 * stall_writes: a test plugin whose RECEIVED hook, in a worker (role
 * "node"), holds up the worker's loop on each request of one command, then
 * lets it go on. Its arg is "COMMAND MS" (default "Hdel 2000"): the command
 * name as kvs spells it, and the milliseconds to hold. It stands for a
 * worker that hangs in the middle of the requests it read at once (a slow
 * disk under one of them): what a router gave up on meanwhile must not be
 * run when it resumes. In a router it does nothing. Used by
 * test_replicas.py.
 */
#include "kvs_plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct stall_s {
    char command[32];
    long ms;
} stall_t;

static uint32_t stall_hook(void *state, kvs_hook_event_t event, const kvs_request_info_t *req,
                           char *msg, size_t msglen)
{
    const stall_t *s = state;
    (void)event;
    (void)msg;
    (void)msglen;
    if (strcmp(req->command_name, s->command) == 0) {
        struct timespec t = {s->ms / 1000, (s->ms % 1000) * 1000000L};
        while (nanosleep(&t, &t) != 0)
            ;
    }
    return 0;
}

static int stall_init(const kvs_plugin_host_t *host, void **state)
{
    stall_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -1;
    s->ms = 2000;
    snprintf(s->command, sizeof(s->command), "Hdel");
    if (host->arg[0] && sscanf(host->arg, "%31s %ld", s->command, &s->ms) != 2) {
        snprintf(host->error, host->error_len, "arg must be \"COMMAND MS\"");
        free(s);
        return -1;
    }
    if (strcmp(host->role, "node") == 0 &&
        host->add_hook(host, KVS_HOOK_MASK(KVS_HOOK_RECEIVED), stall_hook, s) != 0) {
        snprintf(host->error, host->error_len, "cannot register the hook");
        free(s);
        return -1;
    }
    *state = s;
    return 0;
}

KVS_PLUGIN_EXPORT const kvs_plugin_t kvs_plugin = {
    .struct_size = sizeof(kvs_plugin_t),
    .abi_version = KVS_PLUGIN_ABI_VERSION,
    .name = "stall_writes",
    .init = stall_init,
    .fini = free,
};
