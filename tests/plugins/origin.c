/*
 * origin: a test plugin linked to a library of its own (origin_helper)
 * that the dynamic loader finds through the plugin's RUNPATH $ORIGIN, as
 * a plugin that ships its libraries beside itself does. Its init logs the
 * helper's word. Used by test_ops.py.
 */
#include "kvs_plugin.h"

const char *origin_helper_word(void);

static int origin_init(const kvs_plugin_host_t *host, void **state)
{
    *state = NULL;
    host->log(1, "origin: helper %s", origin_helper_word());
    return 0;
}

KVS_PLUGIN_EXPORT const kvs_plugin_t kvs_plugin = {
    .struct_size = sizeof(kvs_plugin_t),
    .abi_version = KVS_PLUGIN_ABI_VERSION,
    .name = "origin",
    .init = origin_init,
};
