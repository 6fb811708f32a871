/*
 * wrong_abi: a test plugin built for a plugin ABI this kvs does not have
 * (one version ahead). kvs must refuse to start with it, naming the file,
 * its line in config.yaml and both versions. Used by test_ops.py.
 */
#include "kvs_plugin.h"

static int never_init(const kvs_plugin_host_t *host, void **state)
{
    (void)host;
    (void)state;
    return 0;
}

KVS_PLUGIN_EXPORT const kvs_plugin_t kvs_plugin = {
    .struct_size = sizeof(kvs_plugin_t),
    .abi_version = KVS_PLUGIN_ABI_VERSION + 1,
    .name = "wrong_abi",
    .init = never_init,
};
