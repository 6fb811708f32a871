/*
 * kvs_tls: OpenSSL behind kvs's own buffers. The only file that includes
 * libssl's headers.
 *
 * Each session's SSL object reads and writes through one BIO of our own
 * (a "memory BIO" whose memory is kvs's): writes append to the kvs_buf_t
 * the owner gave kvs_tls_new, so ciphertext goes from OpenSSL's record
 * buffer straight into the connection's output queue (one copy, the one
 * OpenSSL makes anyway); reads take from the ciphertext the owner just
 * read from the socket. An empty source answers "retry" (never EOF):
 * end of stream is the owner's business, told to us by not calling.
 *
 * Input memory: a connection usually consumes all the ciphertext of a
 * read before the next one, so the read buffer is one per thread
 * (thread_local), not one per connection; only ciphertext left unread
 * (the owner stopped early) is copied into the session's own buffer, by
 * kvs_tls_in_done. With SSL_MODE_RELEASE_BUFFERS, OpenSSL's own record
 * buffers are freed while a connection is idle too: an idle TLS
 * connection costs what OpenSSL keeps of the session (about 24 KB), not
 * its 16 KiB record buffers besides.
 *
 * Contexts: an SSL_CTX per endpoint, built from the options and rebuilt on
 * reload. SSL objects hold a reference to the SSL_CTX they were made from,
 * so replacing the context's SSL_CTX never disturbs an open session.
 *
 * Errors: OpenSSL keeps an error queue per thread; it is cleared before
 * each call that may fail and read right after, so one session's error is
 * never blamed on another.
 */
#include "kvs_tls.h"
#include "kvs_err.h"
#include "kvs_fs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define SHARED_IN 65536u /* the per-thread ciphertext read buffer */
#define KEEP_IN 65536u   /* a session's own input buffer above this is freed once empty */

struct kvs_tls_ctx_s {
    SSL_CTX *ssl;
    kvs_tls_opts_t o; /* strings below are copies */
    char *cert, *key, *ca, *ciphers, *ciphersuites, *what;
    uint64_t reloads[2]; /* kvs_tls_ctx_reload: taken, failed */
};

/* Where a byte stream stands among units that are a header (a type byte,
 * then at its end the body's length, big-endian) and a body: TLS records
 * (5-byte headers, the length in bytes 3-4) or the handshake messages
 * that records of type handshake carry (4-byte headers, bytes 1-3). */
typedef struct {
    unsigned hdr; /* header bytes of the next unit seen so far */
    uint8_t type; /* the latest header's type */
    size_t len;   /* the latest header's length, assembled */
    size_t left;  /* body bytes of the current unit still to come */
} unit_pos_t;

enum { REC_HDR = 5, REC_LEN_AT = 3, HS_HDR = 4, HS_LEN_AT = 1 };
enum { REC_CCS = 20, REC_HANDSHAKE = 22, HS_CERTIFICATE = 11, HS_CERTIFICATE_REQUEST = 13 };

struct kvs_tls_s {
    SSL *ssl;
    kvs_buf_t *out;     /* where ciphertext goes */
    kvs_buf_t own;      /* unread ciphertext kept by the session */
    size_t own_off;     /* bytes of `own` already consumed */
    const uint8_t *src; /* the shared buffer being read from, or NULL */
    size_t src_len, src_off;
    int in_shared; /* the last kvs_tls_in_space returned the shared buffer */
    int role;
    int ready;
    int failed; /* 0, KVS_ETLS or KVS_ENOTLS */
    int nomem;  /* an output append failed */
    int shut;
    int touched;        /* ciphertext arrived */
    int checked;        /* the first bytes were checked for TLS */
    unit_pos_t arrived; /* the peer's records as they arrive, for kvs_tls_mid_record */
    /* Until the handshake is done, the ciphertext OpenSSL reads is followed
     * to bound the handshake messages the peer announces (bound_handshake). */
    unit_pos_t given; /* its records */
    unit_pos_t hs;    /* the handshake messages in its plaintext handshake records */
    int peer_ccs;     /* the peer sent ChangeCipherSpec */
    char err[320];
};

static _Thread_local uint8_t shared_in[SHARED_IN];

/* Moves u over the first bytes of p[0..n), n > 0: those of the current
 * body, else one header byte (hdr_size bytes a header, its length from
 * len_at). Returns how many. A header just completed when it returns 0 in
 * *body and u->hdr is 0; u->type and u->len are then what it announced. */
static size_t unit_step(unit_pos_t *u, unsigned hdr_size, unsigned len_at, const uint8_t *p,
                        size_t n, int *body)
{
    if (u->left > 0) {
        size_t k = n < u->left ? n : u->left;
        u->left -= k;
        *body = 1;
        return k;
    }
    *body = 0;
    if (u->hdr == 0) {
        u->type = *p;
        u->len = 0;
    } else if (u->hdr >= len_at) {
        u->len = u->len << 8 | *p;
    }
    if (++u->hdr == hdr_size) {
        u->hdr = 0;
        u->left = u->len;
    }
    return 1;
}

/* Marks the session failed with `code` and a reason. Returns code. */
__attribute__((format(printf, 3, 4))) static int tls_fail(kvs_tls_t *t, int code, const char *fmt,
                                                          ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof(t->err), fmt, ap);
    va_end(ap);
    t->failed = code;
    ERR_clear_error();
    return code;
}

/* ---- the BIO --------------------------------------------------------------- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int bio_write(BIO *b, const char *data, size_t len, size_t *written)
{
    kvs_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (kvs_buf_append(t->out, data, len) != 0) {
        t->nomem = 1;
        return 0;
    }
    *written = len;
    return 1;
}

/* Follows p[0..n), ciphertext about to be handed to OpenSSL during the
 * handshake, and fails the session (returns KVS_ETLS) when a handshake
 * message sent in the clear announces more than KVS_TLS_MAX_HANDSHAKE:
 * before OpenSSL reads its header and sets aside room for it all. Its
 * Certificate and CertificateRequest messages are OpenSSL's to bound
 * (max_cert_list). Handshake records are plaintext but for TLS 1.2's
 * Finished, which follows the peer's ChangeCipherSpec (TLS 1.3 encrypts
 * in records of another type, and sends ChangeCipherSpec before a second
 * ClientHello too, so its handshake records stay plaintext). OpenSSL reads
 * a record once it has handled the ones before, so by the peer's
 * ChangeCipherSpec it knows the version. */
static int bound_handshake(kvs_tls_t *t, const uint8_t *p, size_t n)
{
    int body;
    for (size_t k; n > 0; p += k, n -= k) {
        k = unit_step(&t->given, REC_HDR, REC_LEN_AT, p, n, &body);
        if (!body) {
            if (t->given.hdr == 0 && t->given.type == REC_CCS)
                t->peer_ccs = 1;
            continue;
        }
        if (t->given.type != REC_HANDSHAKE ||
            (t->peer_ccs && SSL_version(t->ssl) <= TLS1_2_VERSION))
            continue;
        for (size_t i = 0, m; i < k; i += m) {
            m = unit_step(&t->hs, HS_HDR, HS_LEN_AT, p + i, k - i, &body);
            uint8_t type = t->hs.type;
            if (body || t->hs.hdr != 0 || t->hs.len <= KVS_TLS_MAX_HANDSHAKE - HS_HDR ||
                type == HS_CERTIFICATE || type == HS_CERTIFICATE_REQUEST)
                continue;
            const char *name = type == 1   ? "ClientHello"
                               : type == 2 ? "ServerHello"
                                           : "handshake message";
            return tls_fail(t, KVS_ETLS,
                            "its %s (type %u) announces %zu bytes, more than the %d a handshake "
                            "message may have",
                            name, type, t->hs.len, KVS_TLS_MAX_HANDSHAKE - HS_HDR);
        }
    }
    return 0;
}

static int bio_read(BIO *b, char *data, size_t len, size_t *readbytes)
{
    kvs_tls_t *t = BIO_get_data(b);
    const uint8_t *p;
    size_t avail;
    BIO_clear_retry_flags(b);
    if (t->src != NULL) {
        p = t->src + t->src_off;
        avail = t->src_len - t->src_off;
    } else {
        p = t->own.data + t->own_off;
        avail = t->own.len - t->own_off;
    }
    size_t n = len < avail ? len : avail;
    if (!t->ready && !t->failed)
        bound_handshake(t, p, n); /* may fail the session */
    if (n == 0 || t->failed) {    /* a failed session takes nothing more */
        BIO_set_retry_read(b);    /* more may come: the owner decides about EOF */
        return 0;
    }
    memcpy(data, p, n);
    if (t->src != NULL)
        t->src_off += n;
    else
        t->own_off += n;
    *readbytes = n;
    return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "kvs buffers");
    if (m == NULL)
        return;
    BIO_meth_set_write_ex(m, bio_write);
    BIO_meth_set_read_ex(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    bio_method = m;
}

/* ---- contexts ------------------------------------------------------------- */

/* The most recent OpenSSL error in words, or `fallback`; a system call's
 * error (a file that cannot be opened) when there is one, which OpenSSL 3
 * reports only as "system lib" further up. Clears the queue. */
static const char *ssl_reason(char *buf, size_t len, const char *fallback)
{
    unsigned long e, last = 0;
    int sys = 0;
    while ((e = ERR_get_error()) != 0) {
        last = e;
        if (sys == 0 && ERR_SYSTEM_ERROR(e))
            sys = ERR_GET_REASON(e);
    }
    if (sys != 0) {
        snprintf(buf, len, "%s", strerror(sys));
        return buf;
    }
    if (last == 0)
        return fallback;
    const char *r = ERR_reason_error_string(last);
    if (r != NULL)
        snprintf(buf, len, "%s", r);
    else
        ERR_error_string_n(last, buf, len);
    return buf;
}

__attribute__((format(printf, 3, 4))) static int ctx_error(char *err, size_t errlen,
                                                           const char *fmt, ...)
{
    va_list ap;
    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    ERR_clear_error();
    return KVS_ECONFIG;
}

static int set_versions(SSL_CTX *s, const kvs_tls_ctx_t *c, char *err, size_t errlen)
{
    static const int v[] = {TLS1_2_VERSION, TLS1_3_VERSION};
    if (c->o.min_version > c->o.max_version)
        return ctx_error(err, errlen, "%s: min_version is above max_version", c->what);
    if (!SSL_CTX_set_min_proto_version(s, v[c->o.min_version]) ||
        !SSL_CTX_set_max_proto_version(s, v[c->o.max_version]))
        return ctx_error(err, errlen, "%s: cannot set the protocol versions", c->what);
    return 0;
}

static int set_ciphers(SSL_CTX *s, const kvs_tls_ctx_t *c, char *err, size_t errlen)
{
    char why[160];
    if (!SSL_CTX_set_cipher_list(s, c->ciphers))
        return ctx_error(err, errlen, "%s.ciphers \"%.200s\": %s (OpenSSL cipher list syntax)",
                         c->what, c->ciphers, ssl_reason(why, sizeof(why), "no usable cipher"));
    if (!SSL_CTX_set_ciphersuites(s, c->ciphersuites))
        return ctx_error(err, errlen,
                         "%s.ciphersuites \"%.200s\": %s (TLS 1.3 suites such as "
                         "TLS_AES_128_GCM_SHA256, separated by ':')",
                         c->what, c->ciphersuites, ssl_reason(why, sizeof(why), "no usable suite"));
    return 0;
}

/* The passphrase of an encrypted key: none (*arg notes it was asked).
 * OpenSSL's default asks on the terminal (or prints "Enter PEM pass
 * phrase:" to stderr), which a server must never do, at start or at a
 * SIGHUP's reload. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag;
    if (arg != NULL)
        *(int *)arg = 1;
    return 0;
}

static int load_identity(SSL_CTX *s, const kvs_tls_ctx_t *c, char *err, size_t errlen)
{
    char why[160];
    if (c->cert[0] == '\0') {
        if (c->o.role == KVS_TLS_SERVER)
            return ctx_error(err, errlen, "%s: a TLS listener needs a certificate (cert) and key",
                             c->what);
        return 0;
    }
    if (c->key[0] == '\0')
        return ctx_error(err, errlen, "%s: cert is set but key is not", c->what);
    if (!SSL_CTX_use_certificate_chain_file(s, c->cert))
        return ctx_error(err, errlen, "%s.cert %s: cannot load: %s", c->what, c->cert,
                         ssl_reason(why, sizeof(why), "not a PEM certificate"));
    int asked = 0;
    SSL_CTX_set_default_passwd_cb(s, no_passphrase);
    SSL_CTX_set_default_passwd_cb_userdata(s, &asked);
    int loaded = SSL_CTX_use_PrivateKey_file(s, c->key, SSL_FILETYPE_PEM);
    SSL_CTX_set_default_passwd_cb_userdata(s, NULL); /* `asked` dies here */
    if (!loaded) {
        const char *r = ssl_reason(why, sizeof(why), "not a PEM private key");
        if (asked)
            return ctx_error(err, errlen,
                             "%s.key %s: cannot load: %s (the key is protected by a passphrase, "
                             "which kvs does not ask for: store it without one, e.g. openssl "
                             "pkey -in KEY -out PLAIN)",
                             c->what, c->key, r);
        if (strstr(r, "mismatch") != NULL)
            return ctx_error(err, errlen, "%s.key %s does not belong to the certificate in %s",
                             c->what, c->key, c->cert);
        return ctx_error(err, errlen, "%s.key %s: cannot load: %s", c->what, c->key, r);
    }
    if (!SSL_CTX_check_private_key(s))
        return ctx_error(err, errlen, "%s.key %s does not belong to the certificate in %s", c->what,
                         c->key, c->cert);
    return 0;
}

/* A CA file must hold a certificate a chain can end at: OpenSSL verifies
 * a peer's chain only up to a self-signed certificate of the file (a root
 * CA, or a pinned self-signed certificate), as kvs does not set
 * X509_V_FLAG_PARTIAL_CHAIN. A leaf, or an intermediate CA alone, copied
 * over the CA file by mistake loads without a word, and then every peer's
 * certificate is refused (unknown ca): after a SIGHUP, every client
 * certificate and every link between nodes at once. Other certificates
 * beside a root (intermediates, even leaves: a full-chain file) are fine.
 * Returns 0 or KVS_ECONFIG. */
static int check_anchors(SSL_CTX *s, const kvs_tls_ctx_t *c, char *err, size_t errlen)
{
    STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(s));
    X509 *first = NULL;
    for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
        X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
        if (x != NULL && X509_self_signed(x, 0) == 1)
            return 0;
        if (first == NULL)
            first = x;
    }
    if (first == NULL)
        return 0; /* no certificate at all: loading it said so already */
    char subject[256], issuer[256];
    X509_NAME_oneline(X509_get_subject_name(first), subject, sizeof(subject));
    X509_NAME_oneline(X509_get_issuer_name(first), issuer, sizeof(issuer));
    return ctx_error(err, errlen,
                     "%s.ca %s holds no self-signed (root) certificate (the first is %s, issued "
                     "by %s): a peer's chain is verified up to a root in this file, so every "
                     "peer's certificate would be refused; name the file of the root CA that "
                     "signs them (intermediates may go with it)",
                     c->what, c->ca, subject, issuer);
}

static int load_trust(SSL_CTX *s, const kvs_tls_ctx_t *c, char *err, size_t errlen)
{
    char why[160];
    int server = c->o.role == KVS_TLS_SERVER;
    if (c->o.peer == KVS_TLS_PEER_NONE)
        return 0;
    if (c->ca[0] == '\0') {
        if (server)
            return ctx_error(err, errlen,
                             "%s: verifying client certificates needs a CA bundle (ca)", c->what);
        if (!SSL_CTX_set_default_verify_paths(s))
            return ctx_error(err, errlen, "%s: cannot load the system's CA certificates", c->what);
        return 0;
    }
    if (!SSL_CTX_load_verify_locations(s, c->ca, NULL))
        return ctx_error(err, errlen, "%s.ca %s: cannot load: %s", c->what, c->ca,
                         ssl_reason(why, sizeof(why), "not a PEM CA bundle"));
    if (check_anchors(s, c, err, errlen) != 0)
        return KVS_ECONFIG;
    if (server) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(c->ca);
        if (names == NULL)
            return ctx_error(err, errlen, "%s.ca %s: no CA certificate in it", c->what, c->ca);
        SSL_CTX_set_client_CA_list(s, names);
    }
    return 0;
}

static int verify_mode(const kvs_tls_ctx_t *c)
{
    if (c->o.peer == KVS_TLS_PEER_NONE)
        return SSL_VERIFY_NONE;
    if (c->o.role == KVS_TLS_CLIENT || c->o.peer == KVS_TLS_PEER_OPTIONAL)
        return SSL_VERIFY_PEER;
    return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
}

/* A PEM file larger than this is a mistake (a CA bundle of every public
 * root is well under 1 MiB). */
#define KVS_TLS_MAX_FILE (16u << 20)

/* OpenSSL opens and reads whatever the path names: a FIFO blocks the
 * process (a reload in a router process's loop: it stops serving, and
 * hears no signal) until some writer comes, a device or a huge file is
 * read to its end. So each file is checked first: a path that does not
 * stat is left to OpenSSL to report. */
static int check_file(const kvs_tls_ctx_t *c, const char *key, const char *path, char *err,
                      size_t errlen)
{
    struct stat st;
    if (path[0] == '\0' || stat(path, &st) != 0)
        return 0;
    if (!S_ISREG(st.st_mode))
        return ctx_error(err, errlen, "%s.%s %s: %s, not a file: name a PEM file", c->what, key,
                         path, kvs_fs_kind(st.st_mode));
    if ((unsigned long long)st.st_size > KVS_TLS_MAX_FILE)
        return ctx_error(err, errlen,
                         "%s.%s %s: %llu bytes, larger than a PEM file for TLS can be (16 MiB)",
                         c->what, key, path, (unsigned long long)st.st_size);
    return 0;
}

static int check_files(const kvs_tls_ctx_t *c, char *err, size_t errlen)
{
    int rc = check_file(c, "cert", c->cert, err, errlen);
    if (rc == 0 && c->cert[0] != '\0')
        rc = check_file(c, "key", c->key, err, errlen);
    if (rc == 0 && c->o.peer != KVS_TLS_PEER_NONE)
        rc = check_file(c, "ca", c->ca, err, errlen);
    return rc;
}

/* A fresh SSL_CTX from c's settings and files. */
static int ctx_build(const kvs_tls_ctx_t *c, SSL_CTX **out, char *err, size_t errlen)
{
    SSL_CTX *s =
        SSL_CTX_new(c->o.role == KVS_TLS_SERVER ? TLS_server_method() : TLS_client_method());
    if (s == NULL)
        return ctx_error(err, errlen, "%s: cannot create a TLS context (out of memory?)", c->what);
    SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_max_cert_list(s, KVS_TLS_MAX_CERT_LIST); /* see kvs_tls.h */
    int rc = set_versions(s, c, err, errlen);
    if (rc == 0)
        rc = set_ciphers(s, c, err, errlen);
    if (rc == 0)
        rc = check_files(c, err, errlen);
    if (rc == 0)
        rc = load_identity(s, c, err, errlen);
    if (rc == 0)
        rc = load_trust(s, c, err, errlen);
    if (rc != 0) {
        SSL_CTX_free(s);
        return rc;
    }
    SSL_CTX_set_verify(s, verify_mode(c), NULL);
    if (c->o.role == KVS_TLS_SERVER)
        SSL_CTX_set_session_id_context(s, (const unsigned char *)"kvs", 3);
    if (c->o.role == KVS_TLS_SERVER && c->o.peer != KVS_TLS_PEER_NONE) {
        /* No resumption where client certificates count: a resumed session
         * is not verified again, so a certificate that expired since would
         * keep its access, and its user, for the ticket's lifetime (two
         * hours). Every handshake verifies. */
        SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(s, SSL_OP_NO_TICKET);
        if (!SSL_CTX_set_num_tickets(s, 0)) {
            SSL_CTX_free(s);
            return ctx_error(err, errlen, "%s: cannot turn session tickets off", c->what);
        }
    }
    *out = s;
    return 0;
}

/* `t` as OpenSSL prints it ("Jan  1 00:00:00 2026 GMT"). */
static const char *time_text(const ASN1_TIME *t, char *buf, size_t len)
{
    BIO *b = BIO_new(BIO_s_mem());
    int n = b != NULL && ASN1_TIME_print(b, t) ? BIO_read(b, buf, (int)len - 1) : 0;
    buf[n > 0 ? n : 0] = '\0';
    BIO_free(b);
    ERR_clear_error();
    return n > 0 ? buf : "(a time that does not print)";
}

/* Why s's own certificate is of no use now, into why[0..len), or 0: one
 * that expired or is not valid yet, or not meant for c's role (a server
 * certificate without serverAuth among its extended key usages, or with a
 * key usage that forbids it; clientAuth for a client). Every peer that
 * verifies it refuses it. */
static int cert_unusable(SSL_CTX *s, const kvs_tls_ctx_t *c, char *why, size_t len)
{
    char at[64];
    X509 *x = SSL_CTX_get0_certificate(s);
    if (x == NULL)
        return 0;
    int server = c->o.role == KVS_TLS_SERVER;
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        snprintf(why, len, "%s.cert %s expired on %s", c->what, c->cert,
                 time_text(X509_get0_notAfter(x), at, sizeof(at)));
    else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
        snprintf(why, len, "%s.cert %s is not valid before %s", c->what, c->cert,
                 time_text(X509_get0_notBefore(x), at, sizeof(at)));
    else if (X509_check_purpose(x, server ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT, 0) !=
             1)
        snprintf(why, len,
                 "%s.cert %s is not meant for a TLS %s: its extendedKeyUsage lacks %s (or its "
                 "keyUsage forbids it)",
                 c->what, c->cert, server ? "server" : "client",
                 server ? "serverAuth" : "clientAuth");
    else
        return 0;
    ERR_clear_error();
    return 1;
}

int kvs_tls_ctx_unusable(const kvs_tls_ctx_t *c, char *why, size_t len)
{
    return cert_unusable(c->ssl, c, why, len);
}

static char *dup_or(const char *s, const char *def)
{
    return strdup(s != NULL && s[0] != '\0' ? s : def);
}

int kvs_tls_ctx_new(const kvs_tls_opts_t *o, kvs_tls_ctx_t **out, char *err, size_t errlen)
{
    *out = NULL;
    pthread_once(&bio_once, bio_method_init);
    if (bio_method == NULL)
        return -ENOMEM;
    kvs_tls_ctx_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->o = *o;
    c->cert = dup_or(o->cert, "");
    c->key = dup_or(o->key, "");
    c->ca = dup_or(o->ca, "");
    c->ciphers = dup_or(o->ciphers, KVS_TLS_DEFAULT_CIPHERS);
    c->ciphersuites = dup_or(o->ciphersuites, KVS_TLS_DEFAULT_CIPHERSUITES);
    c->what = dup_or(o->what, "tls");
    if (!c->cert || !c->key || !c->ca || !c->ciphers || !c->ciphersuites || !c->what) {
        kvs_tls_ctx_free(c);
        return -ENOMEM;
    }
    int rc = ctx_build(c, &c->ssl, err, errlen);
    if (rc != 0) {
        kvs_tls_ctx_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int kvs_tls_ctx_reload(kvs_tls_ctx_t *c, char *err, size_t errlen)
{
    SSL_CTX *s;
    char why[512];
    int rc = ctx_build(c, &s, err, errlen);
    if (rc == 0 && cert_unusable(s, c, why, sizeof(why))) {
        /* Taken, no verifying peer would connect: the material in use
         * may still be good. */
        SSL_CTX_free(s);
        rc = ctx_error(err, errlen, "%s: not taken", why);
    }
    c->reloads[rc != 0]++;
    if (rc != 0)
        return rc;
    SSL_CTX_free(c->ssl); /* open sessions hold their own reference */
    c->ssl = s;
    return 0;
}

void kvs_tls_ctx_reloads(const kvs_tls_ctx_t *c, uint64_t *ok, uint64_t *failed)
{
    *ok = c->reloads[0];
    *failed = c->reloads[1];
}

const char *kvs_tls_ctx_what(const kvs_tls_ctx_t *c)
{
    return c->what;
}

void kvs_tls_ctx_free(kvs_tls_ctx_t *c)
{
    if (c == NULL)
        return;
    SSL_CTX_free(c->ssl);
    free(c->cert);
    free(c->key);
    free(c->ca);
    free(c->ciphers);
    free(c->ciphersuites);
    free(c->what);
    free(c);
}

/* ---- sessions ------------------------------------------------------------- */

/* A client verifies that the server's certificate names `host`: an IP
 * address against its IP SANs, a name against its DNS names (and SNI). */
static int set_host(kvs_tls_t *t, const kvs_tls_ctx_t *c, const char *host)
{
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (!is_ip && !SSL_set_tlsext_host_name(t->ssl, host))
        return -ENOMEM;
    if (c->o.peer == KVS_TLS_PEER_NONE || c->o.skip_host_check)
        return 0;
    X509_VERIFY_PARAM *p = SSL_get0_param(t->ssl);
    X509_VERIFY_PARAM_set_hostflags(p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (is_ip ? !X509_VERIFY_PARAM_set1_ip_asc(p, host) : !X509_VERIFY_PARAM_set1_host(p, host, 0))
        return -ENOMEM;
    return 0;
}

int kvs_tls_new(kvs_tls_ctx_t *ctx, const char *host, kvs_buf_t *out, kvs_tls_t **tp)
{
    *tp = NULL;
    kvs_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    t->out = out;
    t->role = ctx->o.role;
    kvs_buf_init(&t->own);
    BIO *b = BIO_new(bio_method);
    t->ssl = SSL_new(ctx->ssl);
    if (b == NULL || t->ssl == NULL) {
        BIO_free(b);
        kvs_tls_free(t);
        ERR_clear_error();
        return -ENOMEM;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b); /* one reference, owned by the SSL */
    if (t->role == KVS_TLS_SERVER) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (host != NULL && host[0] != '\0' && set_host(t, ctx, host) != 0) {
            kvs_tls_free(t);
            ERR_clear_error();
            return -ENOMEM;
        }
    }
    *tp = t;
    return 0;
}

void kvs_tls_free(kvs_tls_t *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl);
    kvs_buf_free(&t->own);
    free(t);
}

int kvs_tls_in_space(kvs_tls_t *t, size_t want, uint8_t **base, size_t *len)
{
    kvs_tls_in_done(t);
    size_t unread = t->own.len - t->own_off;
    if (unread == 0 && want <= SHARED_IN) {
        t->own.len = t->own_off = 0;
        t->in_shared = 1;
        *base = shared_in;
        *len = SHARED_IN;
        return 0;
    }
    if (t->own_off > 0) { /* compact: consumed ciphertext is free space */
        memmove(t->own.data, t->own.data + t->own_off, unread);
        t->own.len = unread;
        t->own_off = 0;
    }
    if (kvs_buf_reserve(&t->own, want) != 0)
        return -ENOMEM;
    t->in_shared = 0;
    *base = t->own.data + t->own.len;
    *len = t->own.cap - t->own.len;
    return 0;
}

/* Follows the record framing over p[0..n), the next ciphertext bytes. */
static void track_records(kvs_tls_t *t, const uint8_t *p, size_t n)
{
    int body;
    for (size_t k; n > 0; p += k, n -= k)
        k = unit_step(&t->arrived, REC_HDR, REC_LEN_AT, p, n, &body);
}

void kvs_tls_in_commit(kvs_tls_t *t, size_t n)
{
    if (n > 0)
        t->touched = 1;
    track_records(t, t->in_shared ? shared_in : t->own.data + t->own.len, n);
    if (t->in_shared) {
        t->src = shared_in;
        t->src_len = n;
        t->src_off = 0;
        t->in_shared = 0;
    } else {
        t->own.len += n;
    }
}

void kvs_tls_in_done(kvs_tls_t *t)
{
    /* A failed session reads nothing more: its input is not kept (the
     * connection may linger a while before it is freed). */
    if (t->src != NULL && t->src_off < t->src_len && !t->failed) {
        /* Unread: into our own buffer, behind what it still holds. */
        if (kvs_buf_append(&t->own, t->src + t->src_off, t->src_len - t->src_off) != 0)
            t->nomem = 1;
    }
    t->src = NULL;
    t->src_len = t->src_off = 0;
    if (t->own_off == t->own.len) {
        t->own.len = t->own_off = 0;
        if (t->own.cap > KEEP_IN)
            kvs_buf_free(&t->own);
    }
}

/* The next unread ciphertext bytes (up to 4), for the plaintext check. */
static size_t peek_input(const kvs_tls_t *t, uint8_t b[4])
{
    const uint8_t *p = t->src != NULL ? t->src + t->src_off : t->own.data + t->own_off;
    size_t n = t->src != NULL ? t->src_len - t->src_off : t->own.len - t->own_off;
    n = n < 4 ? n : 4;
    if (n > 0)
        memcpy(b, p, n);
    return n;
}

/* Before the first handshake step that reads: the peer's first bytes must
 * be a TLS record (a handshake, or for a client also an alert). */
static int check_first_bytes(kvs_tls_t *t)
{
    uint8_t b[4];
    size_t n = peek_input(t, b);
    if (n == 0 || t->checked)
        return 0;
    t->checked = 1;
    if (b[0] == 0x16 || (t->role == KVS_TLS_CLIENT && b[0] == 0x15))
        return 0;
    char hex[16] = "";
    for (size_t i = 0, o = 0; i < n; i++)
        o += (size_t)snprintf(hex + o, sizeof(hex) - o, "%s%02x", i ? " " : "", b[i]);
    if (t->role == KVS_TLS_SERVER)
        return tls_fail(t, KVS_ENOTLS,
                        "it sent plaintext (first bytes %s), not a TLS handshake, to a TLS port",
                        hex);
    return tls_fail(t, KVS_ENOTLS,
                    "the server answered plaintext (first bytes %s), not TLS: it does not use TLS "
                    "on this port",
                    hex);
}

/* Words for a failed SSL call: the verification result when a certificate
 * was refused, else OpenSSL's reason. */
static int fail_ssl(kvs_tls_t *t, int sslerr)
{
    char why[160];
    if (t->nomem)
        return tls_fail(t, -ENOMEM, "out of memory");
    long vr = SSL_get_verify_result(t->ssl);
    const char *reason = ssl_reason(why, sizeof(why), NULL);
    if (vr != X509_V_OK && reason != NULL && strstr(reason, "certificate verify failed") != NULL)
        return tls_fail(t, KVS_ETLS, "certificate verify failed: %s",
                        X509_verify_cert_error_string(vr));
    if (reason != NULL)
        return tls_fail(t, KVS_ETLS, "%s", reason);
    if (sslerr == SSL_ERROR_ZERO_RETURN)
        return tls_fail(t, KVS_ETLS, "the peer closed TLS during the handshake");
    return tls_fail(t, KVS_ETLS, "TLS error %d", sslerr);
}

int kvs_tls_handshake(kvs_tls_t *t)
{
    if (t->failed)
        return t->failed;
    if (t->ready)
        return 0;
    int rc = check_first_bytes(t);
    if (rc != 0)
        return rc;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (t->failed) { /* bound_handshake refused what OpenSSL was reading */
        ERR_clear_error();
        return t->failed;
    }
    if (r == 1) {
        t->ready = 1;
        return 0;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ && !t->nomem)
        return -EAGAIN;
    return fail_ssl(t, e);
}

int kvs_tls_read(kvs_tls_t *t, void *buf, size_t cap, size_t *got)
{
    if (t->failed)
        return t->failed;
    ERR_clear_error();
    if (SSL_read_ex(t->ssl, buf, cap, got) == 1)
        return 0;
    int e = SSL_get_error(t->ssl, 0);
    if (t->nomem)
        return tls_fail(t, -ENOMEM, "out of memory");
    if (e == SSL_ERROR_WANT_READ)
        return -EAGAIN;
    if (e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return KVS_ECLOSED;
    }
    return fail_ssl(t, e);
}

int kvs_tls_write(kvs_tls_t *t, const void *p, size_t n)
{
    size_t done;
    if (t->failed)
        return t->failed;
    if (n == 0)
        return 0;
    ERR_clear_error();
    if (SSL_write_ex(t->ssl, p, n, &done) == 1 && done == n)
        return 0;
    return fail_ssl(t, SSL_get_error(t->ssl, 0));
}

int kvs_tls_shutdown(kvs_tls_t *t)
{
    if (t->shut || t->failed || !t->ready)
        return t->failed;
    t->shut = 1;
    ERR_clear_error();
    SSL_shutdown(t->ssl); /* 0: sent, the peer's not seen yet; that is all we want */
    ERR_clear_error();
    return t->nomem ? -ENOMEM : 0;
}

int kvs_tls_ready(const kvs_tls_t *t)
{
    return t->ready;
}

int kvs_tls_is_server(const kvs_tls_t *t)
{
    return t->role == KVS_TLS_SERVER;
}

int kvs_tls_untouched(const kvs_tls_t *t)
{
    return !t->touched;
}

int kvs_tls_mid_record(const kvs_tls_t *t)
{
    return t->arrived.hdr > 0 || t->arrived.left > 0;
}

const char *kvs_tls_error(const kvs_tls_t *t)
{
    return t->err;
}

const char *kvs_tls_version(const kvs_tls_t *t)
{
    return SSL_get_version(t->ssl);
}

const char *kvs_tls_cipher(const kvs_tls_t *t)
{
    const char *c = SSL_get_cipher_name(t->ssl);
    return c != NULL ? c : "none";
}

/* Text of an ASN.1 string if it holds no NUL (a NUL would let "alice\0x"
 * pass for "alice"), as a NUL-terminated UTF-8 string to OPENSSL_free. */
static char *asn1_text(const ASN1_STRING *s)
{
    unsigned char *u = NULL;
    int n = ASN1_STRING_to_UTF8(&u, s);
    if (n < 0)
        return NULL;
    if (memchr(u, 0, (size_t)n) != NULL) {
        OPENSSL_free(u);
        return NULL;
    }
    return (char *)u;
}

static int match_text(const ASN1_STRING *s, int (*match)(void *, const char *), void *arg)
{
    char *text = asn1_text(s);
    if (text == NULL)
        return 0;
    int r = match(arg, text);
    OPENSSL_free(text);
    return r;
}

int kvs_tls_peer_verified(const kvs_tls_t *t)
{
    return SSL_get0_peer_certificate(t->ssl) != NULL && SSL_get_verify_result(t->ssl) == X509_V_OK;
}

int kvs_tls_peer_names(const kvs_tls_t *t, int (*match)(void *arg, const char *name), void *arg)
{
    X509 *cert = SSL_get0_peer_certificate(t->ssl);
    if (cert == NULL || SSL_get_verify_result(t->ssl) != X509_V_OK)
        return 0;
    const X509_NAME *subj = X509_get_subject_name(cert);
    int r = 0;
    for (int i = -1; r == 0 && (i = X509_NAME_get_index_by_NID(subj, NID_commonName, i)) >= 0;)
        r = match_text(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, i)), match, arg);
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; r == 0 && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type == GEN_DNS || g->type == GEN_EMAIL || g->type == GEN_URI)
            r = match_text(g->d.ia5, match, arg);
    }
    GENERAL_NAMES_free(sans);
    ERR_clear_error();
    return r;
}

int kvs_tls_looks_like_hello(uint32_t header)
{
    return (header >> 16) == 0x1603 && ((header >> 8) & 0xff) <= 0x04;
}
