/*
 * cli_ask: one request to one server named by an address (a worker's unix
 * socket, or host:port over TCP with TLS when a context is given), one
 * answer, every wait bounded: how kvs-cli talks to each replica of a shard
 * (digest, rebuild) when it walks the cluster map.
 */
#ifndef CLI_ASK_H
#define CLI_ASK_H

#include "kvs.pb-c.h"
#include "kvs_addr.h"
#include "kvs_tls.h"

#include <stddef.h>

/* Sends `q` to `a` (over TLS with `tls` when `a` is TCP and `tls` is set)
 * and reads one answer within `timeout` seconds. Returns the answer (free
 * it with kvs__command_response__free_unpacked(r, NULL)), or NULL with
 * why[0..len) saying what went wrong (no connection, no answer in time, an
 * answer that is no CommandResponse or larger than 64 MiB). */
Kvs__CommandResponse *cli_ask(const kvs_addr_t *a, kvs_tls_ctx_t *tls, const Kvs__CommandRequest *q,
                              double timeout, char *why, size_t len);

#endif
