/*
 * kvs_plugins: loads the shared objects config.yaml names under `plugins`
 * (dlopen, at start), checks their ABI, runs their init, and keeps the
 * hooks they register so they can be added to a hook chain (and added again
 * whenever the chain is rebuilt by a live reload). The ABI is
 * include/kvs_plugin.h.
 */
#ifndef KVS_PLUGINS_H
#define KVS_PLUGINS_H

#include "kvs_config.h"
#include "kvs_hook.h"

#include <stddef.h>

typedef struct kvs_plugins_s kvs_plugins_t;

/* Loads every plugin of cfg->plugins in order, for a process of `role`
 * ("router" or "node") and `shard` (-1 for the router). Returns 0 and *out
 * (NULL when there are no plugins), or KVS_ECONFIG with err[0..errlen)
 * saying which entry failed and why, positioned as
 * "config.yaml:LINE:COL: plugins[i]: ...": the file cannot be loaded (the
 * loader's reason: missing, not a shared object, unresolved symbols), it
 * exports no kvs_plugin symbol, its abi_version or struct_size do not match
 * this kvs, or its init refused (with its message). Plugins loaded before
 * the failing one are unloaded again. */
int kvs_plugins_load(const kvs_config_t *cfg, const char *role, int shard, kvs_plugins_t **out,
                     char *err, size_t errlen);

/* Adds every hook the plugins registered to `chain`, in load order.
 * Returns 0, or -1 when the chain is full (hooks added so far stay). NULL
 * plugins is allowed. */
int kvs_plugins_attach(const kvs_plugins_t *p, kvs_hook_chain_t *chain);

/* Number of plugins loaded. */
size_t kvs_plugins_count(const kvs_plugins_t *p);

/* Runs every plugin's fini (in reverse order) and unloads them. NULL is
 * allowed. No hook of theirs may run afterwards. */
void kvs_plugins_free(kvs_plugins_t *p);

#endif
