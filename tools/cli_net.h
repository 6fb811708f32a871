/*
 * cli_net: kvs-cli's transport. One blocking socket (TCP or unix), every
 * wait bounded by a deadline, and optionally TLS on top (a kvs_tls session
 * driven by hand: ciphertext in from recv, out through send), so the
 * command code above sends and receives plaintext frames either way.
 */
#ifndef CLI_NET_H
#define CLI_NET_H

#include "kvs_buf.h"
#include "kvs_tls.h"

#include <stddef.h>
#include <stdint.h>

typedef struct cli_net_s {
    int fd;                 /* -1 when not connected */
    kvs_tls_ctx_t *tls_ctx; /* NULL: plaintext */
    kvs_tls_t *tls;         /* the session, while connected over TLS */
    kvs_buf_t tls_out;      /* ciphertext waiting to be sent */
    char tls_err[320];      /* why TLS failed, kept past the session */
} cli_net_t;

/* Seconds on a monotonic clock, and a deadline `timeout` seconds from now
 * (0: none). */
double cli_net_now(void);
double cli_net_deadline(double timeout);

/* Connects to the unix socket `path`, or else to host:port (every address
 * the name resolves to is tried), before `timeout` seconds (0: no limit,
 * which also leaves blocking calls unbounded); with a TLS context, then
 * does the handshake (the server's certificate must name `host`).
 * Returns 0, or a negative error with the reason in why[0..len):
 * KVS_ENOTFOUND (the name does not resolve, or not in time: the
 * resolver's words, or cli_resolve's),
 * KVS_ETLS (connected, but the TLS handshake failed: a sentence), or the
 * connect's -errno (its strerror). */
int cli_net_open(cli_net_t *n, const char *path, const char *host, const char *port, double timeout,
                 char *why, size_t len);

/* Sends p[0..len) (encrypted under TLS) before `deadline` (0: none).
 * Returns 0, -ETIMEDOUT, KVS_ETLS or -errno. */
int cli_net_send(cli_net_t *n, const uint8_t *p, size_t len, double deadline);

/* The bytes waiting to be read before a request is sent: an answer
 * nobody asked for, after which answers no longer match requests. Under
 * TLS, the plaintext of the records already there (the server's own
 * records, such as session tickets, are no answer), which is read and
 * dropped (the caller drops the connection). Returns their count (at
 * least 1), or 0. */
size_t cli_net_unsolicited(cli_net_t *n);

/* Whether the server ended the connection (its FIN, a reset) while
 * nothing was asked: a server's idle timeout. Looks without reading. */
int cli_net_ended(const cli_net_t *n);

/* Receives exactly `len` bytes before `deadline`. Returns 0, -ETIMEDOUT,
 * KVS_ECLOSED (the peer closed first), KVS_ETLS (see cli_net_tls_error)
 * or -errno. */
int cli_net_recv(cli_net_t *n, uint8_t *p, size_t len, double deadline);

/* Why TLS failed ("" when it did not). */
const char *cli_net_tls_error(const cli_net_t *n);

/* Closes the connection (the TLS context stays for the next one). */
void cli_net_close(cli_net_t *n);

#endif
