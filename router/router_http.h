/*
 * router_http: the metrics listener (router.metrics_listen). Serves
 * Prometheus text exposition on GET /metrics over HTTP/1.1, requests
 * parsed by libhttp-parser (Debian's libhttp-parser-dev; the only file that
 * includes http_parser.h). See router_http.c for the bounds.
 */
#ifndef ROUTER_HTTP_H
#define ROUTER_HTTP_H

#include "router.h"

typedef struct router_http_s router_http_t;

/* Listens on `listen` (HOST:PORT). Returns 0 and *out, or a uv error
 * (logged). */
int router_http_start(router_t *r, const char *listen, router_http_t **out);

/* Stops listening and closes every connection (a scrape in flight is
 * dropped). Idempotent; NULL is allowed. */
void router_http_stop(router_http_t *h);

/* Frees the server once the loop closed its handles (after uv_run). NULL
 * is allowed. */
void router_http_free(router_http_t *h);

#endif
