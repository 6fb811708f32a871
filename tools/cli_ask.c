/*
 * cli_ask: one request, one answer (see cli_ask.h), through cli_net.
 */
#include "cli_ask.h"
#include "kvs_err.h"
#include "kvs_frame.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ANSWER_STEP (1u << 20) /* an answer's buffer starts at this and doubles */

/* Reads one answer frame before `deadline`. Its buffer grows with the bytes
 * that came, so a header announcing a large answer costs nothing until
 * the answer does. */
static int read_answer(cli_net_t *net, double deadline, kvs_arena_t *arena,
                       Kvs__CommandResponse **out, char *why, size_t len)
{
    uint8_t h[KVS_FRAME_HEADER];
    int compressed, rc = cli_net_recv(net, h, sizeof(h), deadline);
    if (rc != 0)
        return rc;
    uint32_t n = kvs_frame_get_header(h, &compressed);
    if (compressed) {
        snprintf(why, len, "reply frame has the compressed bit set (unsupported)");
        return KVS_EPROTO;
    }
    if (n > CLI_ASK_MAX_ANSWER) {
        snprintf(why, len,
                 "reply frame announces %" PRIu32 " bytes (the limit is 1 GiB, the largest "
                 "limits.max_frame)",
                 n);
        return KVS_EPROTO;
    }
    size_t cap = n < ANSWER_STEP ? n : ANSWER_STEP, got = 0;
    uint8_t *payload = malloc(cap ? cap : 1);
    if (payload == NULL)
        return -ENOMEM;
    while (rc == 0 && got < n) {
        if (got == cap) {
            size_t more = cap * 2 < n ? cap * 2 : n;
            uint8_t *p = realloc(payload, more);
            if (p == NULL) {
                free(payload);
                return -ENOMEM;
            }
            payload = p;
            cap = more;
        }
        rc = cli_net_recv(net, payload + got, cap - got, deadline);
        if (rc == 0)
            got = cap;
    }
    uint32_t status = 0;
    if (rc == 0) /* unpacking copies what it keeps */
        *out = kvs_msg_decode_response(arena, payload, n, &status);
    free(payload);
    if (rc == 0 && *out == NULL && status == KVS_STATUS_INTERNAL)
        return -ENOMEM;
    if (rc == 0 && *out == NULL) {
        if (status == KVS_STATUS_TOO_LARGE)
            snprintf(why, len,
                     "reply (%" PRIu32 " bytes) would take more than %zu bytes decoded, more "
                     "than any kvs answer of its size",
                     n, kvs_msg_decode_budget(n));
        else
            snprintf(why, len, "reply (%" PRIu32 " bytes) is not a kvs.CommandResponse", n);
        return KVS_EPROTO;
    }
    return rc;
}

int cli_ask_on(cli_net_t *net, const Kvs__CommandRequest *q, double timeout, kvs_arena_t *arena,
               Kvs__CommandResponse **out, char *why, size_t len)
{
    size_t waiting = cli_net_unsolicited(net);
    if (waiting > 0) {
        snprintf(why, len,
                 "the server sent %zu%s bytes nobody asked for: its answers no longer match "
                 "the requests",
                 waiting, waiting >= 4096 ? " or more" : "");
        return KVS_EPROTO;
    }
    size_t n = kvs__command_request__get_packed_size(q);
    if (n > KVS_FRAME_LEN_MASK) {
        snprintf(why, len, "request of %zu bytes cannot be framed (limit 2 GiB)", n);
        return KVS_EPROTO;
    }
    uint8_t *buf = malloc(KVS_FRAME_HEADER + n);
    if (buf == NULL)
        return -ENOMEM;
    kvs_frame_put_header(buf, (uint32_t)n);
    kvs__command_request__pack(q, buf + KVS_FRAME_HEADER);
    double deadline = cli_net_deadline(timeout);
    int rc = cli_net_send(net, buf, KVS_FRAME_HEADER + n, deadline);
    free(buf);
    if (rc == 0)
        return read_answer(net, deadline, arena, out, why, len);
    if (rc != -EPIPE && rc != -ECONNRESET)
        return rc;
    return read_answer(net, deadline, arena, out, why, len) == 0 ? 0 : rc;
}

Kvs__CommandResponse *cli_ask(const kvs_addr_t *a, kvs_tls_ctx_t *tls, const Kvs__CommandRequest *q,
                              double timeout, char *why, size_t len)
{
    cli_net_t net = {.fd = -1, .tls_ctx = a->is_unix ? NULL : tls};
    Kvs__CommandResponse *r = NULL;
    char port[8], err[400] = "";
    snprintf(port, sizeof(port), "%u", a->port);
    if (cli_net_open(&net, a->is_unix ? a->path : NULL, a->host, port, timeout, err, sizeof(err)) !=
        0) {
        snprintf(why, len, "cannot connect: %s", err);
        return NULL;
    }
    int rc = cli_ask_on(&net, q, timeout, NULL, &r, err, sizeof(err));
    if (rc == -ETIMEDOUT)
        snprintf(why, len, "no answer within %g s (--timeout): the worker hangs or is overloaded",
                 timeout);
    else if (rc != 0)
        snprintf(why, len, "no answer: %s",
                 rc == KVS_EPROTO    ? err
                 : rc == KVS_ETLS    ? cli_net_tls_error(&net)
                 : rc == KVS_ECLOSED ? "the connection closed"
                                     : strerror(-rc));
    cli_net_close(&net);
    return rc == 0 ? r : NULL;
}

/* ---- walks ------------------------------------------------------------------- */

/* The name a replica's node is known by in a walk, or NULL (a local
 * worker's unix socket). */
static const char *walk_key(const kvs_replica_t *rep)
{
    if (rep->node[0] != '\0')
        return rep->node;
    return rep->addr.is_unix ? NULL : rep->addr.host;
}

static int walk_silent(const cli_walk_t *w, const char *key)
{
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->silent[i], key) == 0)
            return 1;
    return 0;
}

Kvs__CommandResponse *cli_walk_ask(cli_walk_t *w, const kvs_replica_t *rep, kvs_tls_ctx_t *tls,
                                   const Kvs__CommandRequest *q, double timeout, char *why,
                                   size_t len, int *skipped)
{
    const char *key = walk_key(rep);
    if (skipped != NULL)
        *skipped = 0;
    if (key != NULL && walk_silent(w, key)) {
        snprintf(why, len,
                 "not asked: node %s left a question unanswered for the whole timeout earlier "
                 "in this command",
                 key);
        if (skipped != NULL)
            *skipped = 1;
        return NULL;
    }
    double start = cli_net_now();
    Kvs__CommandResponse *r = cli_ask(&rep->addr, tls, q, timeout, why, len);
    /* Only a failure that took the whole timeout: a refused connection or
     * an error answer costs nothing to meet again. */
    if (r == NULL && key != NULL && timeout > 0 && cli_net_now() - start >= timeout * 0.9 &&
        w->n < CLI_WALK_MAX && strlen(key) < sizeof(w->silent[0]))
        snprintf(w->silent[w->n++], sizeof(w->silent[0]), "%s", key);
    return r;
}
