/*
 * router_http: the metrics listener (router.metrics_listen). Serves
 * Prometheus text exposition on GET /metrics over HTTP/1.1, requests
 * parsed by libhttp-parser (Debian's libhttp-parser-dev; the only file that
 * includes http_parser.h). What a scrape returns is the owner's business
 * (the master's router_scrape); see router_http.c for the bounds.
 */
#ifndef ROUTER_HTTP_H
#define ROUTER_HTTP_H

#include "kvs_auth.h"
#include "kvs_tls.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct router_http_s router_http_t;

/* One GET /metrics waiting for its answer (owned by the listener). */
typedef struct router_http_scrape_s router_http_scrape_t;

/* A GET /metrics arrived: the owner answers it with router_http_done,
 * exactly once, now or later (the connection reads nothing meanwhile). */
typedef void (*router_http_scrape_cb)(void *arg, router_http_scrape_t *s);

/* Listens on `listen` (HOST:PORT), speaking HTTPS with `tls` (or HTTP
 * when NULL); with `auth`, a scrape must come from one of its users
 * holding admin (HTTP Basic user:token, or a client certificate naming
 * the user), else 401 or 403. Both must outlive the server. Returns 0
 * and *out, or a uv error (logged); *out may then still be set
 * (router_http_stop and router_http_free it like a running one, after
 * which run the loop). */
int router_http_start(uv_loop_t *loop, const char *listen, kvs_tls_ctx_t *tls, kvs_auth_t *auth,
                      router_http_scrape_cb on_scrape, void *arg, router_http_t **out);

/* The deadline a X-Prometheus-Scrape-Timeout-Seconds value asks for, in
 * ms: seconds as Prometheus writes them ("10", "9.5"), trailing blanks
 * allowed, above 0 and below a day (a value under a millisecond is 1);
 * 0 for anything else (no deadline: router.timeout applies). */
uint64_t router_http_timeout_ms(const char *value);

/* The scraper's own deadline for `s` in ms (Prometheus's
 * X-Prometheus-Scrape-Timeout-Seconds header), or 0 when it gave none. */
uint64_t router_http_scrape_timeout_ms(const router_http_scrape_t *s);

/* Answers scrape `s`: 200 with the exposition text body[0..len), or
 * another status with a short text. `s` is freed; when its connection
 * closed meanwhile, the answer is dropped. */
void router_http_done(router_http_scrape_t *s, int status, const void *body, size_t len);

/* Stops listening and closes every connection (a scrape in flight keeps
 * its token, whose answer is then dropped). Idempotent; NULL is allowed. */
void router_http_stop(router_http_t *h);

/* Frees the server once the loop closed its handles (after uv_run). NULL
 * is allowed. */
void router_http_free(router_http_t *h);

#endif
