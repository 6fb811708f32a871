/*
 * router_master: the kvs-router process the user or systemd starts: the
 * node's supervisor (nginx's master). It reads the config, takes the
 * lock, starts and supervises the kvs-node workers and the router
 * processes (router_procs.h), tells systemd when the node is ready, and
 * runs the shutdown in order: routers drain their clients, then workers
 * stop. It accepts no client itself.
 */
#ifndef ROUTER_MASTER_H
#define ROUTER_MASTER_H

#include "kvs_config.h"
#include "kvs_tls.h"

#include <stddef.h>

/* Runs the node from the config file at `config_path` until it stops;
 * `argv0` locates the binaries when /proc/self/exe cannot. Returns the
 * process's exit status (see router_main.c). */
int router_master_run(const char *config_path, const char *argv0);

/* Builds the TLS contexts the config asks for: tls.router (the client
 * listener) into *tls, tls.link (links to remote workers, when there are
 * any) into *link_tls, and tls.metrics (the metrics port, when it is
 * set) into *metrics_tls when metrics_tls is not NULL; each is left NULL
 * when not enabled. Returns 0, or KVS_ECONFIG with the reason in err (a
 * file that does not load), nothing then being left allocated. The
 * master checks the material this way before anything starts; each router
 * process builds its own, the master the metrics port's. */
int router_tls_load(const kvs_config_t *cfg, kvs_tls_ctx_t **tls, kvs_tls_ctx_t **link_tls,
                    kvs_tls_ctx_t **metrics_tls, char *err, size_t errlen);

#endif
