/*
 * deny_writes: a test plugin whose RECEIVED hook refuses every write to a
 * table whose name starts with the plugin's arg (default "ro_"), with
 * status 403 and a message naming the table; everything else goes on.
 * Registered in the router and in the workers alike, so a write that
 * reaches a worker directly is refused there too. With an arg of
 * "executed:PREFIX" the hook runs at EXECUTED instead: the write has run
 * (or was sent and may have), and the hook replaces its answer with the
 * 403. With an arg of "auth" it refuses every Auth at RECEIVED instead.
 * Used by test_ops.py.
 */
#include "kvs_plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t deny_hook(void *state, kvs_hook_event_t event, const kvs_request_info_t *req,
                          char *msg, size_t msglen)
{
    const char *prefix = state;
    size_t n = strlen(prefix);
    (void)event;
    if (strcmp(prefix, "auth") == 0) {
        if (strcmp(req->command_name, "Auth") != 0)
            return 0;
        snprintf(msg, msglen, "Auth refused by deny_writes");
        return 403;
    }
    if (!req->write || req->table == NULL || req->table_len < n ||
        memcmp(req->table, prefix, n) != 0)
        return 0;
    snprintf(msg, msglen, "%s of table \"%.*s\" refused by deny_writes: tables %s* are read-only",
             req->command_name, (int)req->table_len, req->table, prefix);
    return 403;
}

static int deny_init(const kvs_plugin_host_t *host, void **state)
{
    static const char executed[] = "executed:";
    const char *arg = host->arg;
    kvs_hook_event_t event = KVS_HOOK_RECEIVED;
    if (strncmp(arg, executed, sizeof(executed) - 1) == 0) {
        event = KVS_HOOK_EXECUTED;
        arg += sizeof(executed) - 1;
    }
    char *prefix = strdup(arg[0] ? arg : "ro_");
    if (prefix == NULL || host->add_hook(host, KVS_HOOK_MASK(event), deny_hook, prefix) != 0) {
        free(prefix);
        snprintf(host->error, host->error_len, "cannot register the hook");
        return -1;
    }
    *state = prefix;
    return 0;
}

KVS_PLUGIN_EXPORT const kvs_plugin_t kvs_plugin = {
    .struct_size = sizeof(kvs_plugin_t),
    .abi_version = KVS_PLUGIN_ABI_VERSION,
    .name = "deny_writes",
    .init = deny_init,
    .fini = free,
};
