/*
 * cli_ask: one request, one answer (see cli_ask.h), through cli_net.
 */
#include "cli_ask.h"
#include "cli_net.h"
#include "kvs_err.h"
#include "kvs_frame.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ANSWER_MAX (64u << 20) /* the largest answer accepted */

/* Why a send or receive failed, in words. */
static const char *failure(const cli_net_t *net, int rc)
{
    return rc == KVS_ETLS      ? cli_net_tls_error(net)
           : rc == -ETIMEDOUT  ? "none in time"
           : rc == KVS_ECLOSED ? "the connection closed"
           : rc != 0           ? strerror(-rc)
                               : "an answer too large";
}

Kvs__CommandResponse *cli_ask(const kvs_addr_t *a, kvs_tls_ctx_t *tls, const Kvs__CommandRequest *q,
                              double timeout, char *why, size_t len)
{
    cli_net_t net = {.fd = -1, .tls_ctx = a->is_unix ? NULL : tls};
    char port[8], err[400];
    snprintf(port, sizeof(port), "%u", a->port);
    if (cli_net_open(&net, a->is_unix ? a->path : NULL, a->host, port, timeout, err, sizeof(err)) !=
        0) {
        snprintf(why, len, "cannot connect: %s", err);
        return NULL;
    }
    size_t n = kvs__command_request__get_packed_size(q);
    uint8_t *buf = malloc(KVS_FRAME_HEADER + n), hdr[KVS_FRAME_HEADER];
    uint8_t *body = NULL;
    uint32_t blen = 0;
    int compressed = 0, rc = -ENOMEM;
    double deadline = cli_net_deadline(timeout);
    if (buf != NULL) {
        kvs_frame_put_header(buf, (uint32_t)n);
        kvs__command_request__pack(q, buf + KVS_FRAME_HEADER);
        if ((rc = cli_net_send(&net, buf, KVS_FRAME_HEADER + n)) == 0 &&
            (rc = cli_net_recv(&net, hdr, sizeof(hdr), deadline)) == 0 &&
            (blen = kvs_frame_get_header(hdr, &compressed)) <= ANSWER_MAX &&
            (body = malloc(blen ? blen : 1)) != NULL)
            rc = cli_net_recv(&net, body, blen, deadline);
        else if (rc == 0)
            rc = blen > ANSWER_MAX ? 0 : -ENOMEM;
    }
    free(buf);
    if (rc != 0 || body == NULL) {
        snprintf(why, len, "no answer: %s", failure(&net, rc));
        cli_net_close(&net);
        free(body);
        return NULL;
    }
    cli_net_close(&net);
    Kvs__CommandResponse *r = kvs__command_response__unpack(NULL, blen, body);
    free(body);
    if (r == NULL)
        snprintf(why, len, "the answer is not a CommandResponse");
    return r;
}
