/*
 * kvs_tls: TLS 1.2/1.3 (OpenSSL) for kvs connections, below the framing.
 *
 * Two objects. A kvs_tls_ctx_t is one endpoint's settings (certificate,
 * key, CA, whether and how the peer is verified, protocol versions,
 * ciphers), shared by every connection of that endpoint; it can be
 * reloaded from its files at any time (certificate rotation), and
 * connections made afterwards use the new material while those already
 * open keep theirs. A kvs_tls_t is one connection's session.
 *
 * A session does no I/O: the caller moves bytes. Ciphertext read from the
 * socket goes in through kvs_tls_in_space/kvs_tls_in_commit; plaintext comes
 * out of kvs_tls_read; plaintext to send goes into kvs_tls_write, and every
 * ciphertext byte the session produces (handshake messages, records,
 * alerts, close_notify) is appended to the output buffer the caller gave
 * kvs_tls_new, in the order it must leave. So the same session serves an
 * event loop (kvs_conn) and a blocking client (kvs-cli) alike, and
 * whatever protocol runs on top never learns that TLS is there.
 *
 * Functions return 0, -EAGAIN when more ciphertext must arrive first, or a
 * negative error; after KVS_ETLS or KVS_ENOTLS, kvs_tls_error says why in
 * words (an OpenSSL reason, a certificate verification result, or what the
 * peer sent instead of TLS) and the session is dead except that its output
 * (an alert) may still be sent.
 *
 * Threads: a session is used by one thread at a time; contexts may be
 * shared by sessions on several threads, but kvs_tls_ctx_reload must not
 * run concurrently with kvs_tls_new on the same context.
 */
#ifndef KVS_TLS_H
#define KVS_TLS_H

#include "kvs_buf.h"

#include <stddef.h>
#include <stdint.h>

/* Mozilla's "intermediate" TLS 1.2 list: forward secrecy and AEAD only. */
#define KVS_TLS_DEFAULT_CIPHERS                                                                    \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define KVS_TLS_DEFAULT_CIPHERSUITES                                                               \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

/* What a peer's handshake may make OpenSSL hold. OpenSSL buffers each
 * handshake message whole, at the length its 4-byte header announces,
 * before the rest arrives: a peer that announces much and sends less
 * holds that much until its handshake times out. OpenSSL's own limits are
 * 128 KiB for a ClientHello and 100 KiB for a certificate chain.
 * KVS_TLS_MAX_CERT_LIST bounds a Certificate (and CertificateRequest)
 * message, plaintext or encrypted: room for a chain of several RSA-4096
 * certificates, or the CA names of the system's whole CA bundle (about
 * 12 KB; the test CA's chains are under 1 KB). KVS_TLS_MAX_HANDSHAKE
 * bounds every other handshake message sent in the clear, its header
 * included (a ClientHello is a few hundred bytes to a few KB): OpenSSL
 * sets aside 16 KiB for the handshake anyway. A session that is sent more
 * fails. */
#define KVS_TLS_MAX_CERT_LIST 32768
#define KVS_TLS_MAX_HANDSHAKE 16384

typedef struct kvs_tls_ctx_s kvs_tls_ctx_t;
typedef struct kvs_tls_s kvs_tls_t;

typedef enum { KVS_TLS_SERVER = 0, KVS_TLS_CLIENT = 1 } kvs_tls_role_t;

/* What is asked of the peer's certificate. */
typedef enum {
    KVS_TLS_PEER_NONE = 0,     /* server: none asked; client: the server is not verified */
    KVS_TLS_PEER_OPTIONAL = 1, /* server: asked, and verified when the client sends one */
    KVS_TLS_PEER_REQUIRE = 2,  /* server: required and verified; client: verified */
} kvs_tls_peer_t;

typedef enum { KVS_TLS_V12 = 0, KVS_TLS_V13 = 1 } kvs_tls_version_t;

typedef struct kvs_tls_opts_s {
    kvs_tls_role_t role;
    const char *cert; /* PEM certificate chain file; NULL or "": none (clients only) */
    const char *key;  /* PEM private key file (with cert) */
    const char *ca;   /* PEM CA bundle file peers must chain to; NULL or "": the system's
                         default store (clients), none (servers: no client certificates) */
    kvs_tls_peer_t peer;
    int skip_host_check; /* client: verify the chain only, not that it names the host */
    kvs_tls_version_t min_version, max_version;
    const char *ciphers;      /* TLS 1.2 list, OpenSSL syntax; NULL: the default above */
    const char *ciphersuites; /* TLS 1.3 suites; NULL: the default above */
    const char *what;         /* names these settings in messages ("tls.router"); NULL: "tls" */
} kvs_tls_opts_t;

/* ---- contexts ------------------------------------------------------------- */

/* Builds a context from `o` (strings copied; the files are read now).
 * Returns 0 and *out, or KVS_ECONFIG with "what.cert /path: why" in
 * err[0..errlen) (a file that does not load, a key that does not match its
 * certificate, an unknown cipher, versions out of order, a server without
 * certificate, verification without a CA), or -ENOMEM. */
int kvs_tls_ctx_new(const kvs_tls_opts_t *o, kvs_tls_ctx_t **out, char *err, size_t errlen);

/* Reads certificate, key and CA again from the same files. On success new
 * sessions use them (sessions already open keep what they have); on
 * failure nothing changes and err says why: also when the certificate
 * loads but no peer that verifies it would take it (kvs_tls_ctx_unusable).
 * Returns 0 or KVS_ECONFIG. */
int kvs_tls_ctx_reload(kvs_tls_ctx_t *c, char *err, size_t errlen);

/* 1 with why[0..len) saying it when c's own certificate is of no use now
 * (expired, not valid yet, or not meant for c's role by its key usages):
 * every peer that verifies it refuses it. 0 when it is usable, or c has
 * none. A start takes it anyway (nothing older to keep): warn. */
int kvs_tls_ctx_unusable(const kvs_tls_ctx_t *c, char *why, size_t len);

/* How many kvs_tls_ctx_reload calls took new material, and how many
 * failed (the previous material kept), for the metrics. */
void kvs_tls_ctx_reloads(const kvs_tls_ctx_t *c, uint64_t *ok, uint64_t *failed);

/* The settings' name ("tls.router"). */
const char *kvs_tls_ctx_what(const kvs_tls_ctx_t *c);

/* Releases the context; sessions made from it stay valid. NULL is fine. */
void kvs_tls_ctx_free(kvs_tls_ctx_t *c);

/* ---- sessions ------------------------------------------------------------- */

/* Starts a session with ctx's role. Every ciphertext byte it produces is
 * appended to `out`, which must outlive the session. A client's `host`
 * (may be NULL) is sent as SNI when it is a name, and the server's
 * certificate must match it (name or IP address) when the peer is
 * verified. Returns 0 and *t, or -ENOMEM. */
int kvs_tls_new(kvs_tls_ctx_t *ctx, const char *host, kvs_buf_t *out, kvs_tls_t **t);

/* Frees the session (no close_notify is sent: see kvs_tls_shutdown). */
void kvs_tls_free(kvs_tls_t *t);

/* Space for at least `want` bytes of ciphertext read from the peer: a
 * buffer shared by every session of this thread when the session holds
 * no unread ciphertext, else its own. Valid until the next call on any
 * session of this thread. Returns 0 or -ENOMEM. */
int kvs_tls_in_space(kvs_tls_t *t, size_t want, uint8_t **base, size_t *len);

/* `n` bytes were written at the space last returned. */
void kvs_tls_in_commit(kvs_tls_t *t, size_t n);

/* Call when done with the ciphertext committed last (kvs_tls_read returned
 * -EAGAIN, or the caller stopped early): ciphertext not yet consumed is
 * moved into the session's own buffer, so the shared one may be reused. */
void kvs_tls_in_done(kvs_tls_t *t);

/* Advances the handshake. Returns 0 once it is complete (then and later),
 * -EAGAIN when it needs more input, KVS_ENOTLS when the peer's first bytes
 * are not TLS at all (a plaintext client, or a server that answered
 * plaintext), or KVS_ETLS (failed; an alert may be in the output). */
int kvs_tls_handshake(kvs_tls_t *t);

/* Decrypts into buf[0..cap). Returns 0 with *got > 0, -EAGAIN (no whole
 * record buffered), KVS_ECLOSED (the peer sent close_notify), KVS_ETLS, or
 * -ENOMEM. Call after the handshake completed. */
int kvs_tls_read(kvs_tls_t *t, void *buf, size_t cap, size_t *got);

/* Encrypts p[0..n) entirely into the output. Returns 0, KVS_ETLS or -ENOMEM.
 * Call after the handshake completed. */
int kvs_tls_write(kvs_tls_t *t, const void *p, size_t n);

/* Appends close_notify to the output (once). Returns 0 or KVS_ETLS. */
int kvs_tls_shutdown(kvs_tls_t *t);

/* 1 once the handshake completed. */
int kvs_tls_ready(const kvs_tls_t *t);

/* 1 for a server-side session. */
int kvs_tls_is_server(const kvs_tls_t *t);

/* 1 before any ciphertext arrived from the peer. */
int kvs_tls_untouched(const kvs_tls_t *t);

/* 1 when the ciphertext that arrived so far ends inside a TLS record (its
 * header or body): the peer started a record it has not finished. Such a
 * record waits inside the session, invisible to whatever reads the
 * plaintext, so a caller that bounds how long a request may take to
 * arrive must count it as a request started. */
int kvs_tls_mid_record(const kvs_tls_t *t);

/* Why the session failed, in words ("" if it did not). Owned by the
 * session. */
const char *kvs_tls_error(const kvs_tls_t *t);

/* "TLSv1.3 TLS_AES_128_GCM_SHA256", for log lines. Owned by OpenSSL. */
const char *kvs_tls_version(const kvs_tls_t *t);
const char *kvs_tls_cipher(const kvs_tls_t *t);

/* 1 when the peer presented a certificate that verified. */
int kvs_tls_peer_verified(const kvs_tls_t *t);

/* Calls match(arg, name) for every name of the peer's verified certificate
 * (the subject's CN, then each subjectAltName that is a DNS name, an
 * e-mail address or a URI), until it returns non-zero; returns that value,
 * or 0 (no certificate, not verified, or no name matched). */
int kvs_tls_peer_names(const kvs_tls_t *t, int (*match)(void *arg, const char *name), void *arg);

/* True when a frame header's four bytes are a TLS record header (a client
 * starting a handshake, as kvs_frame_dec would read it: 0x16 0x03 0x0N). */
int kvs_tls_looks_like_hello(uint32_t header);

#endif
