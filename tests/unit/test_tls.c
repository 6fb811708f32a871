/*
 * test_tls: kvs_tls sessions, and kvs_conn over TLS on a real loop.
 *
 * Certificates come from tests/make_certs.sh, run once into
 * <build>/test-certs (under a lock, so parallel cases share one set).
 *
 * Session cases pump bytes between a client and a server session in
 * memory: no sockets, every step visible. Connection cases run a TLS echo
 * server (kvs_conn + kvs_tls, one loop in the main thread) and a blocking
 * client in a second thread speaking through tools/cli_net (the transport
 * kvs-cli uses), so both ends of kvs's TLS are exercised; every loop run is
 * bounded by a deadline timer that aborts with the server's state.
 */
#include "cli_net.h"
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_test.h"
#include "kvs_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEADLINE_MS 8000

/* ---- certificates ----------------------------------------------------------- */

static char certs[512];

/* Makes <build>/test-certs once (flock: parallel cases wait for the first). */
static const char *certs_dir(void)
{
    struct stat st;
    char lock[600], done[600], cmd[1400];
    snprintf(certs, sizeof(certs), "%s/test-certs", KVS_BUILD_DIR);
    snprintf(lock, sizeof(lock), "%s.lock", certs);
    snprintf(done, sizeof(done), "%s/alice.crt", certs);
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    CHECK_EQ(flock(fd, LOCK_EX), 0);
    if (stat(done, &st) != 0) {
        snprintf(cmd, sizeof(cmd), "%s/tests/make_certs.sh '%s'", KVS_SOURCE_DIR, certs);
        CHECK_EQ(system(cmd), 0);
    }
    close(fd);
    return certs;
}

static const char *cert(const char *name)
{
    static char paths[8][600];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 600, "%s/%s", certs_dir(), name);
    return p;
}

static kvs_tls_ctx_t *make_ctx(kvs_tls_role_t role, const char *crt, const char *key,
                               const char *ca, kvs_tls_peer_t peer)
{
    char err[600] = "";
    kvs_tls_opts_t o = {.role = role,
                        .cert = crt ? cert(crt) : NULL,
                        .key = key ? cert(key) : NULL,
                        .ca = ca ? cert(ca) : NULL,
                        .peer = peer,
                        .min_version = KVS_TLS_V12,
                        .max_version = KVS_TLS_V13,
                        .what = "test"};
    kvs_tls_ctx_t *c = NULL;
    int rc = kvs_tls_ctx_new(&o, &c, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "kvs_tls_ctx_new: %s\n", err);
    CHECK_EQ(rc, 0);
    return c;
}

static kvs_tls_ctx_t *server_ctx(kvs_tls_peer_t peer)
{
    return make_ctx(KVS_TLS_SERVER, "node.crt", "node.key", "ca.crt", peer);
}

/* ---- sessions in memory ----------------------------------------------------- */

typedef struct pair_s {
    kvs_tls_ctx_t *sctx, *cctx;
    kvs_tls_t *s, *c;
    kvs_buf_t sout, cout; /* ciphertext each side produced */
} pair_t;

static void pair_init(pair_t *p, kvs_tls_ctx_t *sctx, kvs_tls_ctx_t *cctx, const char *host)
{
    memset(p, 0, sizeof(*p));
    p->sctx = sctx;
    p->cctx = cctx;
    CHECK_EQ(kvs_tls_new(sctx, NULL, &p->sout, &p->s), 0);
    CHECK_EQ(kvs_tls_new(cctx, host, &p->cout, &p->c), 0);
}

static void pair_free(pair_t *p)
{
    kvs_tls_free(p->s);
    kvs_tls_free(p->c);
    kvs_buf_free(&p->sout);
    kvs_buf_free(&p->cout);
    kvs_tls_ctx_free(p->sctx);
    kvs_tls_ctx_free(p->cctx);
}

/* Moves what `from` produced into `to`'s input. */
static void ship(kvs_buf_t *from, kvs_tls_t *to)
{
    size_t off = 0;
    while (off < from->len) {
        uint8_t *base;
        size_t len;
        CHECK_EQ(kvs_tls_in_space(to, 4096, &base, &len), 0);
        size_t n = from->len - off < len ? from->len - off : len;
        memcpy(base, from->data + off, n);
        kvs_tls_in_commit(to, n);
        off += n;
        kvs_tls_in_done(to);
    }
    from->len = 0;
}

/* Runs both handshakes until each is done or failed; returns the server's
 * result and sets *crc to the client's. */
static int pair_handshake(pair_t *p, int *crc)
{
    int src = -EAGAIN, ccode = -EAGAIN;
    for (int round = 0; round < 10 && (src == -EAGAIN || ccode == -EAGAIN); round++) {
        if (ccode == -EAGAIN)
            ccode = kvs_tls_handshake(p->c);
        ship(&p->cout, p->s);
        if (src == -EAGAIN)
            src = kvs_tls_handshake(p->s);
        ship(&p->sout, p->c);
        if (ccode == -EAGAIN) /* the client's next flight answers the server's */
            ccode = kvs_tls_handshake(p->c);
    }
    *crc = ccode;
    return src;
}

/* Reads everything `t` can decrypt now into out[0..cap); returns the count. */
static size_t drain(kvs_tls_t *t, uint8_t *out, size_t cap, int *last)
{
    size_t total = 0, got;
    int rc;
    while (total < cap && (rc = kvs_tls_read(t, out + total, cap - total, &got)) == 0)
        total += got;
    *last = total < cap ? rc : 0;
    return total;
}

KVS_TEST(session_handshake_data_and_close_notify)
{
    pair_t p;
    int crc;
    pair_init(&p, server_ctx(KVS_TLS_PEER_NONE),
              make_ctx(KVS_TLS_CLIENT, NULL, NULL, "ca.crt", KVS_TLS_PEER_REQUIRE), "localhost");
    CHECK(kvs_tls_untouched(p.s));
    CHECK_EQ(pair_handshake(&p, &crc), 0);
    CHECK_EQ(crc, 0);
    CHECK(kvs_tls_ready(p.s) && kvs_tls_ready(p.c));
    CHECK_STR(kvs_tls_version(p.c), "TLSv1.3");
    /* 200 KB client -> server, in one write: many records. */
    size_t n = 200000;
    uint8_t *msg = malloc(n), *got = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        msg[i] = (uint8_t)(i * 31u);
    CHECK_EQ(kvs_tls_write(p.c, msg, n), 0);
    CHECK(p.cout.len > n); /* ciphertext: records add overhead */
    ship(&p.cout, p.s);
    int last;
    CHECK_EQ(drain(p.s, got, n + 1, &last), n);
    CHECK_EQ(last, -EAGAIN);
    CHECK(memcmp(msg, got, n) == 0);
    /* And back, then close_notify: an orderly end for the reader. */
    CHECK_EQ(kvs_tls_write(p.s, "pong", 4), 0);
    CHECK_EQ(kvs_tls_shutdown(p.s), 0);
    ship(&p.sout, p.c);
    CHECK_EQ(drain(p.c, got, 100, &last), 4);
    CHECK(memcmp(got, "pong", 4) == 0);
    CHECK_EQ(last, KVS_ECLOSED);
    free(msg);
    free(got);
    pair_free(&p);
}

KVS_TEST(session_unread_input_survives_the_shared_buffer)
{
    pair_t p;
    int crc;
    pair_init(&p, server_ctx(KVS_TLS_PEER_NONE),
              make_ctx(KVS_TLS_CLIENT, NULL, NULL, "ca.crt", KVS_TLS_PEER_REQUIRE), "localhost");
    CHECK_EQ(pair_handshake(&p, &crc), 0);
    CHECK_EQ(kvs_tls_write(p.c, "first", 5), 0);
    CHECK_EQ(kvs_tls_write(p.c, "second", 6), 0);
    /* Both records arrive in the shared buffer; the reader takes one and
     * stops; the shared buffer is then reused by another session. */
    uint8_t *base;
    size_t len, got;
    uint8_t buf[16];
    CHECK_EQ(kvs_tls_in_space(p.s, 4096, &base, &len), 0);
    CHECK(len >= p.cout.len);
    memcpy(base, p.cout.data, p.cout.len);
    kvs_tls_in_commit(p.s, p.cout.len);
    p.cout.len = 0;
    CHECK_EQ(kvs_tls_read(p.s, buf, 5, &got), 0);
    CHECK_EQ(got, 5);
    kvs_tls_in_done(p.s);
    CHECK_EQ(kvs_tls_in_space(p.c, 4096, &base, &len), 0); /* clobbers the shared buffer */
    memset(base, 0xee, len);
    kvs_tls_in_commit(p.c, 0);
    kvs_tls_in_done(p.c);
    CHECK_EQ(kvs_tls_read(p.s, buf, sizeof(buf), &got), 0);
    CHECK_EQ(got, 6);
    CHECK(memcmp(buf, "second", 6) == 0);
    pair_free(&p);
}

/* Ships from->data[off..off+n) into `to`. */
static void ship_part(const kvs_buf_t *from, size_t off, size_t n, kvs_tls_t *to)
{
    uint8_t *base;
    size_t len;
    CHECK_EQ(kvs_tls_in_space(to, n ? n : 1, &base, &len), 0);
    CHECK(len >= n);
    memcpy(base, from->data + off, n);
    kvs_tls_in_commit(to, n);
    kvs_tls_in_done(to);
}

/* A record the peer started and did not finish is seen as such, whether it
 * stops in the header or in the body, one byte or many at a time. */
KVS_TEST(session_mid_record_follows_the_peer_framing)
{
    pair_t p;
    int crc, last;
    uint8_t got[64];
    pair_init(&p, server_ctx(KVS_TLS_PEER_NONE),
              make_ctx(KVS_TLS_CLIENT, NULL, NULL, "ca.crt", KVS_TLS_PEER_REQUIRE), "localhost");
    CHECK_EQ(pair_handshake(&p, &crc), 0);
    CHECK_EQ(crc, 0);
    CHECK(!kvs_tls_mid_record(p.s));
    CHECK_EQ(kvs_tls_write(p.c, "ping", 4), 0);
    CHECK_EQ(kvs_tls_write(p.c, "pong", 4), 0); /* two records */
    size_t rec = p.cout.len / 2;
    CHECK(rec > 5 && p.cout.len == 2 * rec);
    ship_part(&p.cout, 0, 3, p.s); /* inside the header */
    CHECK(kvs_tls_mid_record(p.s));
    CHECK_EQ(drain(p.s, got, sizeof(got), &last), 0);
    ship_part(&p.cout, 3, 4, p.s); /* the header and two body bytes */
    CHECK(kvs_tls_mid_record(p.s));
    for (size_t i = 7; i < rec - 1; i++) { /* the body byte by byte, but the last */
        ship_part(&p.cout, i, 1, p.s);
        CHECK(kvs_tls_mid_record(p.s));
    }
    CHECK_EQ(drain(p.s, got, sizeof(got), &last), 0);
    CHECK_EQ(last, -EAGAIN);
    ship_part(&p.cout, rec - 1, 2, p.s); /* the end of one, the start of the next */
    CHECK(kvs_tls_mid_record(p.s));
    CHECK_EQ(drain(p.s, got, sizeof(got), &last), 4);
    CHECK(memcmp(got, "ping", 4) == 0);
    ship_part(&p.cout, rec + 1, rec - 1, p.s);
    CHECK(!kvs_tls_mid_record(p.s));
    CHECK_EQ(drain(p.s, got, sizeof(got), &last), 4);
    CHECK(memcmp(got, "pong", 4) == 0);
    pair_free(&p);
}

/* The server requires a client certificate; the client shows `crt`. The
 * server's failure reason must contain `why`. */
static void refused_client_cert(const char *crt, const char *key, const char *why)
{
    pair_t p;
    int crc;
    pair_init(&p, server_ctx(KVS_TLS_PEER_REQUIRE),
              make_ctx(KVS_TLS_CLIENT, crt, key, "ca.crt", KVS_TLS_PEER_REQUIRE), "127.0.0.1");
    CHECK_EQ(pair_handshake(&p, &crc), KVS_ETLS);
    CHECK_CONTAINS(kvs_tls_error(p.s), why);
    /* The alert reaches the client: it fails too (TLS 1.3: on its read). */
    size_t got;
    uint8_t b[8];
    int rc = crc != 0 ? crc : kvs_tls_read(p.c, b, sizeof(b), &got);
    CHECK_EQ(rc, KVS_ETLS);
    CHECK(kvs_tls_error(p.c)[0] != '\0');
    pair_free(&p);
}

KVS_TEST(session_client_cert_expired_wrong_ca_missing)
{
    refused_client_cert("expired.crt", "expired.key", "certificate has expired");
    refused_client_cert("wrong.crt", "wrong.key", "unable to get local issuer certificate");
    refused_client_cert(NULL, NULL, "certificate");
}

static int collect(void *arg, const char *name)
{
    strcat(arg, name);
    strcat(arg, ",");
    return 0;
}

KVS_TEST(session_peer_names_of_a_verified_client)
{
    pair_t p;
    int crc;
    pair_init(&p, server_ctx(KVS_TLS_PEER_OPTIONAL),
              make_ctx(KVS_TLS_CLIENT, "alice.crt", "alice.key", "ca.crt", KVS_TLS_PEER_REQUIRE),
              "localhost");
    CHECK_EQ(pair_handshake(&p, &crc), 0);
    CHECK_EQ(crc, 0);
    char names[200] = "";
    CHECK_EQ(kvs_tls_peer_names(p.s, collect, names), 0);
    CHECK_STR(names, "alice,alice@example.com,");
    pair_free(&p);
}

/* Commits n bytes one at a time, running the handshake after each: it
 * waits (-EAGAIN) until the last, then returns what it returns then. */
static int handshake_bytewise(kvs_tls_t *t, const uint8_t *p, size_t n)
{
    kvs_buf_t b = {.data = (uint8_t *)p, .len = n, .cap = n};
    for (size_t i = 0; i + 1 < n; i++) {
        ship_part(&b, i, 1, t);
        CHECK_EQ(kvs_tls_handshake(t), -EAGAIN);
    }
    ship_part(&b, n - 1, 1, t);
    return kvs_tls_handshake(t);
}

/* OpenSSL sets aside room for a whole handshake message once its header
 * arrives (128 KiB for a ClientHello): a message sent in the clear that
 * announces more than KVS_TLS_MAX_HANDSHAKE fails the session at its
 * header, even one split across records. */
KVS_TEST(session_handshake_messages_announcing_too_much_are_refused)
{
    static const uint8_t huge[] = {0x16, 3, 1, 0, 2, 0x01, 0x01, /* 131000: 01 ff b8 */
                                   0x16, 3, 1, 0, 2, 0xff, 0xb8};
    static const uint8_t most[] = {0x16, 3, 1, 0x40, 0, 0x01, 0, 0x3f, 0xfc, 3, 3}; /* 16380 */
    static const uint8_t more[] = {0x16, 3, 1, 0x40, 0, 0x01, 0, 0x3f, 0xfd};       /* 16381 */
    kvs_buf_t out;
    kvs_buf_init(&out);
    kvs_tls_ctx_t *sctx = server_ctx(KVS_TLS_PEER_NONE);
    kvs_tls_t *t;
    CHECK_EQ(kvs_tls_new(sctx, NULL, &out, &t), 0);
    CHECK_EQ(handshake_bytewise(t, huge, sizeof(huge)), KVS_ETLS);
    CHECK_STR(kvs_tls_error(t), "its ClientHello (type 1) announces 131000 bytes, more than the "
                                "16380 a handshake message may have");
    kvs_tls_free(t);
    CHECK_EQ(kvs_tls_new(sctx, NULL, &out, &t), 0);
    CHECK_EQ(handshake_bytewise(t, most, sizeof(most)), -EAGAIN);
    kvs_tls_free(t);
    CHECK_EQ(kvs_tls_new(sctx, NULL, &out, &t), 0);
    CHECK_EQ(handshake_bytewise(t, more, sizeof(more)), KVS_ETLS);
    CHECK_CONTAINS(kvs_tls_error(t), "announces 16381 bytes");
    kvs_tls_free(t);
    kvs_tls_ctx_free(sctx);
    kvs_buf_free(&out);
}

/* TLS 1.2 encrypts the Finished that follows ChangeCipherSpec in a
 * handshake record: its bytes are no message header to bound, both ways;
 * the client's Certificate before it is plaintext and passes. */
KVS_TEST(session_tls12_mutual_handshake_passes_the_bound)
{
    char err[600];
    kvs_tls_opts_t co = {.role = KVS_TLS_CLIENT,
                         .cert = cert("alice.crt"),
                         .key = cert("alice.key"),
                         .ca = cert("ca.crt"),
                         .peer = KVS_TLS_PEER_REQUIRE,
                         .min_version = KVS_TLS_V12,
                         .max_version = KVS_TLS_V12};
    kvs_tls_ctx_t *c;
    CHECK_EQ(kvs_tls_ctx_new(&co, &c, err, sizeof(err)), 0);
    for (int i = 0; i < 20; i++) { /* each Finished is random bytes: 20 chances to misread */
        pair_t p;
        int crc;
        pair_init(&p, server_ctx(KVS_TLS_PEER_REQUIRE), c, "localhost");
        CHECK_EQ(pair_handshake(&p, &crc), 0);
        CHECK_EQ(crc, 0);
        CHECK_STR(kvs_tls_version(p.s), "TLSv1.2");
        CHECK(kvs_tls_peer_verified(p.s));
        p.cctx = NULL; /* kept for the next round */
        pair_free(&p);
    }
    kvs_tls_ctx_free(c);
}

KVS_TEST(session_server_name_and_ca_are_checked)
{
    pair_t p;
    int crc;
    /* A certificate for another host. */
    pair_init(&p,
              make_ctx(KVS_TLS_SERVER, "server-wrongname.crt", "server-wrongname.key", NULL,
                       KVS_TLS_PEER_NONE),
              make_ctx(KVS_TLS_CLIENT, NULL, NULL, "ca.crt", KVS_TLS_PEER_REQUIRE), "localhost");
    pair_handshake(&p, &crc);
    CHECK_EQ(crc, KVS_ETLS);
    CHECK_CONTAINS(kvs_tls_error(p.c), "hostname mismatch");
    pair_free(&p);
    /* The right name, but the client trusts another CA. */
    pair_init(&p, server_ctx(KVS_TLS_PEER_NONE),
              make_ctx(KVS_TLS_CLIENT, NULL, NULL, "other-ca.crt", KVS_TLS_PEER_REQUIRE),
              "127.0.0.1");
    pair_handshake(&p, &crc);
    CHECK_EQ(crc, KVS_ETLS);
    CHECK_CONTAINS(kvs_tls_error(p.c), "certificate verify failed");
    pair_free(&p);
    /* --insecure: no verification at all. */
    pair_init(&p, server_ctx(KVS_TLS_PEER_NONE),
              make_ctx(KVS_TLS_CLIENT, NULL, NULL, "other-ca.crt", KVS_TLS_PEER_NONE), "localhost");
    CHECK_EQ(pair_handshake(&p, &crc), 0);
    CHECK_EQ(crc, 0);
    pair_free(&p);
}

KVS_TEST(session_plaintext_peer_is_not_tls)
{
    kvs_buf_t out;
    kvs_buf_init(&out);
    kvs_tls_ctx_t *sctx = server_ctx(KVS_TLS_PEER_NONE);
    kvs_tls_t *t;
    CHECK_EQ(kvs_tls_new(sctx, NULL, &out, &t), 0);
    uint8_t *base;
    size_t len;
    CHECK_EQ(kvs_tls_in_space(t, 16, &base, &len), 0);
    memcpy(base, "\x00\x00\x00\x02\x5a\x00", 6);
    kvs_tls_in_commit(t, 6);
    CHECK_EQ(kvs_tls_handshake(t), KVS_ENOTLS);
    CHECK_CONTAINS(kvs_tls_error(t), "first bytes 00 00 00 02");
    kvs_tls_free(t);
    kvs_tls_ctx_free(sctx);
    kvs_buf_free(&out);
    CHECK(kvs_tls_looks_like_hello(0x16030100u | 0x2a));
    CHECK(!kvs_tls_looks_like_hello(0x00000100u));
}

KVS_TEST(session_versions_are_enforced)
{
    char err[600];
    kvs_tls_opts_t so = {.role = KVS_TLS_SERVER,
                         .cert = cert("node.crt"),
                         .key = cert("node.key"),
                         .min_version = KVS_TLS_V13,
                         .max_version = KVS_TLS_V13};
    kvs_tls_opts_t co = {.role = KVS_TLS_CLIENT,
                         .ca = cert("ca.crt"),
                         .peer = KVS_TLS_PEER_REQUIRE,
                         .min_version = KVS_TLS_V12,
                         .max_version = KVS_TLS_V12};
    pair_t p;
    kvs_tls_ctx_t *s, *c;
    CHECK_EQ(kvs_tls_ctx_new(&so, &s, err, sizeof(err)), 0);
    CHECK_EQ(kvs_tls_ctx_new(&co, &c, err, sizeof(err)), 0);
    pair_init(&p, s, c, "localhost");
    int crc;
    CHECK_EQ(pair_handshake(&p, &crc), KVS_ETLS);
    CHECK_CONTAINS(kvs_tls_error(p.s), "unsupported protocol");
    pair_free(&p);
    /* Out of order, bad ciphers, missing files: configuration errors. */
    so.min_version = KVS_TLS_V13;
    so.max_version = KVS_TLS_V12;
    CHECK_EQ(kvs_tls_ctx_new(&so, &s, err, sizeof(err)), KVS_ECONFIG);
    CHECK_CONTAINS(err, "min_version");
    so.max_version = KVS_TLS_V13;
    so.ciphers = "NO-SUCH-CIPHER";
    CHECK_EQ(kvs_tls_ctx_new(&so, &s, err, sizeof(err)), KVS_ECONFIG);
    CHECK_CONTAINS(err, "tls.ciphers \"NO-SUCH-CIPHER\"");
    so.ciphers = NULL;
    so.key = cert("alice.key");
    CHECK_EQ(kvs_tls_ctx_new(&so, &s, err, sizeof(err)), KVS_ECONFIG);
    CHECK_CONTAINS(err, "does not belong to the certificate");
    so.key = "/nonexistent/key.pem";
    CHECK_EQ(kvs_tls_ctx_new(&so, &s, err, sizeof(err)), KVS_ECONFIG);
    CHECK_CONTAINS(err, "/nonexistent/key.pem: cannot load");
    so.key = cert("node.key");
    so.peer = KVS_TLS_PEER_REQUIRE; /* verifying clients needs a CA */
    CHECK_EQ(kvs_tls_ctx_new(&so, &s, err, sizeof(err)), KVS_ECONFIG);
    CHECK_CONTAINS(err, "needs a CA bundle");
}

/* Copies file `from` (in the certificate directory) to path `to`. */
static void copy_file(const char *from, const char *to)
{
    char cmd[1400];
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", cert(from), to);
    CHECK_EQ(system(cmd), 0);
}

/* Makes the directory `dir` (a mkdtemp template) holding a copy of the
 * node's certificate and key, named in crt and key (100 bytes each).
 * Returns 0, or -1 when the directory cannot be made. */
static int server_files(char *dir, char *crt, char *key)
{
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(crt, 100, "%s/server.crt", dir);
    snprintf(key, 100, "%s/server.key", dir);
    copy_file("node.crt", crt);
    copy_file("node.key", key);
    return 0;
}

KVS_TEST(context_files_that_are_not_files_are_refused)
{
    /* OpenSSL opened a FIFO and waited for a writer (a router process's
     * reload stopped serving for good), and read a device or a huge file
     * to its end. */
    char dir[] = "/tmp/kvs-test-tls-XXXXXX", crt[100], key[100], want[300], err[600];
    CHECK(server_files(dir, crt, key) == 0);
    kvs_tls_opts_t so = {.role = KVS_TLS_SERVER,
                         .cert = crt,
                         .key = key,
                         .min_version = KVS_TLS_V12,
                         .max_version = KVS_TLS_V13,
                         .what = "tls.router"};
    kvs_tls_ctx_t *s;
    CHECK_EQ(kvs_tls_ctx_new(&so, &s, err, sizeof(err)), 0);
    CHECK_EQ(unlink(key), 0);
    CHECK_EQ(mkfifo(key, 0600), 0);
    CHECK_EQ(kvs_tls_ctx_reload(s, err, sizeof(err)), KVS_ECONFIG);
    snprintf(want, sizeof(want), "tls.router.key %s: a FIFO, not a file: name a PEM file", key);
    CHECK_STR(err, want);
    CHECK_EQ(unlink(key), 0);
    CHECK_EQ(mkdir(key, 0700), 0);
    CHECK_EQ(kvs_tls_ctx_reload(s, err, sizeof(err)), KVS_ECONFIG);
    snprintf(want, sizeof(want), "tls.router.key %s: a directory, not a file: name a PEM file",
             key);
    CHECK_STR(err, want);
    CHECK_EQ(rmdir(key), 0);
    CHECK_EQ(truncate(crt, 17 << 20), 0); /* sparse: no disk used */
    CHECK_EQ(kvs_tls_ctx_reload(s, err, sizeof(err)), KVS_ECONFIG);
    snprintf(want, sizeof(want),
             "tls.router.cert %s: 17825792 bytes, larger than a PEM file for TLS can be (16 MiB)",
             crt);
    CHECK_STR(err, want);
    kvs_tls_ctx_free(s);
    /* A client's CA bundle too. */
    kvs_tls_opts_t co = {.role = KVS_TLS_CLIENT,
                         .ca = "/dev/zero",
                         .peer = KVS_TLS_PEER_REQUIRE,
                         .min_version = KVS_TLS_V12,
                         .max_version = KVS_TLS_V13,
                         .what = "tls.link"};
    CHECK_EQ(kvs_tls_ctx_new(&co, &s, err, sizeof(err)), KVS_ECONFIG);
    CHECK_STR(err, "tls.link.ca /dev/zero: a device, not a file: name a PEM file");
    CHECK_EQ(unlink(crt), 0);
    CHECK_EQ(rmdir(dir), 0);
}

KVS_TEST(context_reload_switches_new_sessions_only)
{
    char dir[] = "/tmp/kvs-test-tls-XXXXXX", crt[100], key[100], err[600];
    CHECK(server_files(dir, crt, key) == 0);
    kvs_tls_opts_t so = {.role = KVS_TLS_SERVER,
                         .cert = crt,
                         .key = key,
                         .min_version = KVS_TLS_V12,
                         .max_version = KVS_TLS_V13};
    kvs_tls_ctx_t *s;
    CHECK_EQ(kvs_tls_ctx_new(&so, &s, err, sizeof(err)), 0);
    kvs_tls_ctx_t *c = make_ctx(KVS_TLS_CLIENT, NULL, NULL, "ca.crt", KVS_TLS_PEER_REQUIRE);
    pair_t old;
    int crc;
    memset(&old, 0, sizeof(old));
    CHECK_EQ(kvs_tls_new(s, NULL, &old.sout, &old.s), 0);
    CHECK_EQ(kvs_tls_new(c, "localhost", &old.cout, &old.c), 0);
    CHECK_EQ(pair_handshake(&old, &crc), 0);
    /* Rotate to a certificate that does not name "localhost". */
    copy_file("server-wrongname.crt", crt);
    copy_file("server-wrongname.key", key);
    CHECK_EQ(kvs_tls_ctx_reload(s, err, sizeof(err)), 0);
    kvs_tls_t *n1, *n2;
    kvs_buf_t o1, o2;
    kvs_buf_init(&o1);
    kvs_buf_init(&o2);
    pair_t fresh = {.s = NULL};
    CHECK_EQ(kvs_tls_new(s, NULL, &fresh.sout, &fresh.s), 0);
    CHECK_EQ(kvs_tls_new(c, "localhost", &fresh.cout, &fresh.c), 0);
    pair_handshake(&fresh, &crc);
    CHECK_EQ(crc, KVS_ETLS); /* the new session got the new certificate */
    CHECK_CONTAINS(kvs_tls_error(fresh.c), "hostname mismatch");
    /* The old session keeps working. */
    uint8_t b[8];
    size_t got;
    CHECK_EQ(kvs_tls_write(old.c, "still", 5), 0);
    ship(&old.cout, old.s);
    CHECK_EQ(kvs_tls_read(old.s, b, sizeof(b), &got), 0);
    CHECK_EQ(got, 5);
    /* A broken file: the reload fails and the previous material stays. */
    FILE *f = fopen(key, "w");
    CHECK(f != NULL);
    fputs("not a key\n", f);
    fclose(f);
    CHECK_EQ(kvs_tls_ctx_reload(s, err, sizeof(err)), KVS_ECONFIG);
    CHECK_CONTAINS(err, "cannot load");
    pair_t still = {.s = NULL};
    CHECK_EQ(kvs_tls_new(s, NULL, &still.sout, &n1), 0);
    CHECK_EQ(kvs_tls_new(c, "otherhost.example", &still.cout, &n2), 0);
    still.s = n1;
    still.c = n2;
    pair_handshake(&still, &crc);
    CHECK_EQ(crc, 0);
    kvs_tls_free(n1);
    kvs_tls_free(n2);
    kvs_buf_free(&still.sout);
    kvs_buf_free(&still.cout);
    kvs_buf_free(&o1);
    kvs_buf_free(&o2);
    kvs_tls_free(fresh.s);
    kvs_tls_free(fresh.c);
    kvs_buf_free(&fresh.sout);
    kvs_buf_free(&fresh.cout);
    old.sctx = s;
    old.cctx = c;
    pair_free(&old);
    unlink(crt);
    unlink(key);
    rmdir(dir);
}

/* ---- kvs_conn over TLS --------------------------------------------------------- */

typedef struct server_s server_t;
typedef void (*client_fn)(server_t *s, cli_net_t *n);

struct server_s {
    uv_loop_t loop;
    kvs_listener_t lis;
    kvs_flusher_t flusher;
    uv_timer_t deadline;
    uv_async_t done;
    kvs_conn_t conn;
    pthread_t thread;
    kvs_tls_ctx_t *tls;    /* the server's, or NULL for a plaintext server */
    kvs_tls_ctx_t *client; /* the client's, or NULL for a plaintext client */
    client_fn run;
    size_t max_write, high_water;
    int use_group;
    kvs_conn_group_t group;
    kvs_conn_limits_t limits;
    uint16_t port;
    int accepted, closed, ready, frames, frames_before_ready, errors, last_err;
    int before_runs, wrote_before_before; /* flusher ordering */
    char tls_error[320];
    int sink;            /* frames are counted, not echoed; each pauses delivery a while */
    int frames_at_error; /* s->frames when on_error ran */
    uv_timer_t resume;   /* ends a sink's pause */
};

static void on_resume(uv_timer_t *t)
{
    server_t *s = t->data;
    kvs_conn_resume(&s->conn);
}

static void echo(kvs_conn_t *c, const uint8_t *p, size_t len)
{
    server_t *s = c->data;
    uint8_t hdr[KVS_FRAME_HEADER];
    if (!s->ready)
        s->frames_before_ready++;
    s->frames++;
    if (s->sink) { /* as a writer waiting for its disk: the rest waits */
        kvs_conn_pause(c);
        CHECK_EQ(uv_timer_start(&s->resume, on_resume, 20, 0), 0);
        return;
    }
    kvs_frame_put_header(hdr, (uint32_t)len);
    CHECK_EQ(kvs_buf_append(&c->out, hdr, sizeof(hdr)), 0);
    CHECK_EQ(kvs_buf_append(&c->out, p, len), 0);
    kvs_conn_queue(c);
}

static void on_ready(kvs_conn_t *c)
{
    server_t *s = c->data;
    s->ready++;
    if (s->sink)
        usleep(200000); /* the client's frames and close_notify arrive meanwhile: one read */
}

static void on_error(kvs_conn_t *c, int err)
{
    server_t *s = c->data;
    uint8_t hdr[KVS_FRAME_HEADER];
    s->errors++;
    __atomic_store_n(&s->frames_at_error, s->frames, __ATOMIC_SEQ_CST);
    s->last_err = err;
    snprintf(s->tls_error, sizeof(s->tls_error), "%s", kvs_conn_tls_error(c));
    if (err == KVS_ENOTLS || err == KVS_ETLSHELLO) { /* a last word, in the clear */
        kvs_frame_put_header(hdr, 3);
        if (kvs_buf_reserve(&c->out, sizeof(hdr) + 3) == 0) {
            kvs_buf_put(&c->out, hdr, sizeof(hdr));
            kvs_buf_put(&c->out, "bye", 3);
        }
    }
    kvs_conn_close_after_flush(c);
}

static void on_close(kvs_conn_t *c)
{
    server_t *s = c->data;
    s->closed = 1;
}

static void on_connection(uv_stream_t *server, int status)
{
    server_t *s = server->data;
    CHECK_EQ(status, 0);
    CHECK(!s->accepted);
    CHECK_EQ(kvs_conn_init(&s->conn, &s->loop, 0, KVS_FRAME_DEFAULT_MAX, echo, on_error, on_close),
             0);
    s->conn.data = s;
    s->conn.flusher = &s->flusher;
    s->conn.on_ready = on_ready;
    if (s->use_group)
        kvs_conn_join(&s->conn, &s->group);
    if (s->max_write)
        s->conn.max_write = s->max_write;
    if (s->high_water)
        s->conn.high_water = s->high_water;
    if (s->tls != NULL)
        CHECK_EQ(kvs_conn_use_tls(&s->conn, s->tls, NULL), 0);
    CHECK_EQ(kvs_conn_accept(&s->conn, server), 0);
    s->accepted = 1;
}

static void on_before(kvs_flusher_t *f)
{
    server_t *s = f->data;
    s->before_runs++;
    if (s->accepted && s->conn.wbuf.len > s->conn.woff && s->ready && s->frames > 0)
        s->wrote_before_before = 1; /* answers left before this turn's step */
}

static void on_deadline(uv_timer_t *t)
{
    server_t *s = t->data;
    fprintf(stderr, "case timed out: accepted %d ready %d frames %d errors %d closed %d\n",
            s->accepted, s->ready, s->frames, s->errors, s->closed);
    abort();
}

static void on_done(uv_async_t *a)
{
    server_t *s = a->data;
    if (s->accepted)
        kvs_conn_close(&s->conn);
    uv_close(&s->lis.handle, NULL);
    kvs_flusher_close(&s->flusher, NULL);
    if (s->use_group)
        kvs_conn_group_close(&s->group);
    uv_close((uv_handle_t *)&s->deadline, NULL);
    uv_close((uv_handle_t *)&s->resume, NULL);
    uv_close((uv_handle_t *)&s->done, NULL);
}

static void *client_main(void *arg)
{
    server_t *s = arg;
    cli_net_t n = {.fd = -1, .tls_ctx = s->client};
    char port[8], why[300];
    snprintf(port, sizeof(port), "%u", s->port);
    int rc = cli_net_open(&n, NULL, "127.0.0.1", port, 5, why, sizeof(why));
    if (rc != 0) { /* the case decides whether that was expected */
        snprintf(n.tls_err, sizeof(n.tls_err), "%s", why);
        n.fd = -2;
    }
    s->run(s, &n);
    if (n.fd >= 0)
        cli_net_close(&n);
    CHECK_EQ(uv_async_send(&s->done), 0);
    return NULL;
}

static void server_run(server_t *s)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    kvs_addr_t addr = {.port = 0};
    snprintf(addr.host, sizeof(addr.host), "127.0.0.1");
    CHECK_EQ(uv_loop_init(&s->loop), 0);
    CHECK_EQ(kvs_flusher_init(&s->flusher, &s->loop, on_before, s), 0);
    CHECK_EQ(uv_timer_init(&s->loop, &s->deadline), 0);
    s->deadline.data = s;
    CHECK_EQ(uv_timer_start(&s->deadline, on_deadline, DEADLINE_MS, 0), 0);
    CHECK_EQ(uv_timer_init(&s->loop, &s->resume), 0);
    s->resume.data = s;
    CHECK_EQ(uv_async_init(&s->loop, &s->done, on_done), 0);
    s->done.data = s;
    if (s->use_group)
        CHECK_EQ(kvs_conn_group_init(&s->group, &s->loop, &s->limits, "test client"), 0);
    CHECK_EQ(kvs_listen(&s->loop, &addr, &s->lis, on_connection), 0);
    s->lis.handle.data = s;
    CHECK_EQ(uv_tcp_getsockname(&s->lis.tcp, (struct sockaddr *)&ss, &len), 0);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    CHECK_EQ(pthread_create(&s->thread, NULL, client_main, s), 0);
    CHECK_EQ(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(pthread_join(s->thread, NULL), 0);
    CHECK_EQ(uv_loop_close(&s->loop), 0);
    CHECK(!s->accepted || s->closed);
    kvs_tls_ctx_free(s->tls);
    kvs_tls_ctx_free(s->client);
}

static void server_init(server_t *s, client_fn run)
{
    memset(s, 0, sizeof(*s));
    s->run = run;
    s->tls = server_ctx(KVS_TLS_PEER_NONE);
    s->client = make_ctx(KVS_TLS_CLIENT, NULL, NULL, "ca.crt", KVS_TLS_PEER_REQUIRE);
}

static void send_frame(cli_net_t *n, const void *p, size_t len)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_put_header(hdr, (uint32_t)len);
    CHECK_EQ(cli_net_send(n, hdr, sizeof(hdr), cli_net_deadline(5)), 0);
    CHECK_EQ(cli_net_send(n, p, len, cli_net_deadline(5)), 0);
}

static size_t read_frame(cli_net_t *n, uint8_t *buf, size_t cap)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    CHECK_EQ(cli_net_recv(n, hdr, sizeof(hdr), cli_net_deadline(5)), 0);
    uint32_t len = kvs_frame_get_header(hdr, NULL);
    CHECK(len <= cap);
    CHECK_EQ(cli_net_recv(n, buf, len, cli_net_deadline(5)), 0);
    return len;
}

#define FRAMES 2000

static size_t frame_len(unsigned i)
{
    return i % 100 == 7 ? 70000 + i : (i * 37u) % 1500u; /* some span several records */
}

static uint8_t frame_byte(unsigned i, size_t j)
{
    return (uint8_t)(i * 7u + j * 13u);
}

/* Frames first..last-1 in one send. */
static void send_frames(cli_net_t *n, unsigned first, unsigned last)
{
    kvs_buf_t out;
    kvs_buf_init(&out);
    for (unsigned i = first; i < last; i++) {
        uint8_t hdr[KVS_FRAME_HEADER];
        size_t len = frame_len(i);
        kvs_frame_put_header(hdr, (uint32_t)len);
        CHECK_EQ(kvs_buf_append(&out, hdr, sizeof(hdr)), 0);
        CHECK_EQ(kvs_buf_reserve(&out, len), 0);
        for (size_t j = 0; j < len; j++)
            out.data[out.len++] = frame_byte(i, j);
    }
    CHECK_EQ(cli_net_send(n, out.data, out.len, cli_net_deadline(5)), 0);
    kvs_buf_free(&out);
}

static void expect_frames(cli_net_t *n, unsigned first, unsigned last)
{
    static uint8_t buf[100000];
    for (unsigned i = first; i < last; i++) {
        size_t len = read_frame(n, buf, sizeof(buf));
        CHECK_EQ(len, frame_len(i));
        for (size_t j = 0; j < len; j++)
            CHECK_EQ(buf[j], frame_byte(i, j));
    }
}

/* Every frame in one go, then every echo, checked in order. */
static void client_pipelined(server_t *s, cli_net_t *n)
{
    (void)s;
    CHECK_EQ(n->fd >= 0, 1);
    send_frames(n, 0, FRAMES);
    expect_frames(n, 0, FRAMES);
}

/* Batches of 100 frames (about 75 KB and up), each read back before the
 * next is sent: the server stops at its high-water mark with frames in its
 * decoder, and must deliver them once the client reads. */
static void client_batched(server_t *s, cli_net_t *n)
{
    (void)s;
    CHECK_EQ(n->fd >= 0, 1);
    for (unsigned i = 0; i < FRAMES; i += 100) {
        send_frames(n, i, i + 100);
        expect_frames(n, i, i + 100);
    }
}

KVS_TEST(conn_echo_pipelined_frames_over_tls)
{
    server_t s;
    server_init(&s, client_pipelined);
    server_run(&s);
    CHECK_EQ(s.frames, FRAMES);
    CHECK_EQ(s.ready, 1);
    CHECK_EQ(s.frames_before_ready, 0);
    CHECK_EQ(s.wrote_before_before, 0);
    CHECK(s.errors == 0 || s.last_err == KVS_ECLOSED);
}

/* Five frames and close_notify in one go, to an owner that pauses after
 * each frame (node_bootstrap writing a snapshot chunk): the EOF is told
 * after the fifth, as over plaintext, not when it was decrypted. */
static void client_frames_then_close(server_t *s, cli_net_t *n)
{
    CHECK_EQ(n->fd >= 0, 1);
    send_frames(n, 0, 5);
    cli_net_close(n); /* close_notify right behind them */
    n->fd = -1;
    for (int i = 0; i < 500 && __atomic_load_n(&s->frames_at_error, __ATOMIC_SEQ_CST) == 0; i++)
        usleep(10000);
}

KVS_TEST(conn_close_notify_waits_for_a_paused_owner)
{
    server_t s;
    server_init(&s, client_frames_then_close);
    s.sink = 1;
    server_run(&s);
    CHECK_EQ(s.frames, 5);
    CHECK_EQ(s.errors, 1);
    CHECK_EQ(s.last_err, KVS_ECLOSED);
    CHECK_EQ(s.frames_at_error, 5);
}

KVS_TEST(conn_small_writes_and_backpressure_over_tls)
{
    server_t s;
    server_init(&s, client_batched);
    s.max_write = 1000;   /* ciphertext leaves in many bounded writes */
    s.high_water = 20000; /* delivery stops and resumes many times */
    server_run(&s);
    CHECK_EQ(s.frames, FRAMES);
    CHECK(s.errors == 0 || s.last_err == KVS_ECLOSED);
}

static void client_plaintext(server_t *s, cli_net_t *n)
{
    (void)s;
    uint8_t buf[16];
    CHECK_EQ(n->fd >= 0, 1);
    send_frame(n, "ping", 4);
    CHECK_EQ(read_frame(n, buf, sizeof(buf)), 3); /* the server's last word, in the clear */
    CHECK(memcmp(buf, "bye", 3) == 0);
    CHECK_EQ(cli_net_recv(n, buf, 1, cli_net_deadline(5)), KVS_ECLOSED);
}

KVS_TEST(conn_plaintext_client_on_tls_port_gets_a_plaintext_answer)
{
    server_t s;
    server_init(&s, client_plaintext);
    kvs_tls_ctx_free(s.client);
    s.client = NULL;
    server_run(&s);
    CHECK_EQ(s.last_err, KVS_ENOTLS);
    CHECK_EQ(s.frames, 0);
    CHECK_EQ(s.ready, 0);
}

static void client_tls_refused(server_t *s, cli_net_t *n)
{
    (void)s;
    CHECK_EQ(n->fd, -2); /* the handshake failed */
    CHECK_CONTAINS(n->tls_err, "the server answered plaintext");
}

KVS_TEST(conn_tls_client_on_plaintext_port_fails_fast)
{
    server_t s;
    server_init(&s, client_tls_refused);
    kvs_tls_ctx_free(s.tls);
    s.tls = NULL;
    server_run(&s);
    CHECK_EQ(s.last_err, KVS_ETLSHELLO);
    CHECK_EQ(s.frames, 0);
}

static void client_without_cert(server_t *s, cli_net_t *n)
{
    (void)s;
    uint8_t buf[16];
    /* TLS 1.3: the client's handshake completes before the server checks
     * its certificate; the refusal arrives as an alert on the first read. */
    if (n->fd >= 0) {
        cli_net_send(n, (const uint8_t *)"\0\0\0\1x", 5, cli_net_deadline(5));
        CHECK_EQ(cli_net_recv(n, buf, 4, cli_net_deadline(5)), KVS_ETLS);
    }
    CHECK(n->tls_err[0] != '\0');
}

KVS_TEST(conn_missing_client_cert_is_refused_by_the_server)
{
    server_t s;
    server_init(&s, client_without_cert);
    kvs_tls_ctx_free(s.tls);
    s.tls = server_ctx(KVS_TLS_PEER_REQUIRE);
    server_run(&s);
    CHECK_EQ(s.last_err, KVS_ETLS);
    CHECK_CONTAINS(s.tls_error, "certificate");
    CHECK_EQ(s.frames, 0);
    CHECK_EQ(s.ready, 0);
}

static void client_big_frame(server_t *s, cli_net_t *n)
{
    (void)s;
    static uint8_t big[400000];
    uint8_t buf[16];
    CHECK_EQ(n->fd >= 0, 1);
    memset(big, 'x', sizeof(big));
    send_frame(n, big, sizeof(big));
    int rc = cli_net_recv(n, buf, 4, cli_net_deadline(5));
    CHECK(rc == KVS_ECLOSED || rc == -ECONNRESET);
}

KVS_TEST(conn_input_budget_holds_over_tls)
{
    server_t s;
    server_init(&s, client_big_frame);
    s.use_group = 1;
    s.limits.input_budget = 100000; /* less than one 400 KB frame beyond the free part */
    server_run(&s);
    CHECK_EQ(s.last_err, KVS_ELIMIT);
    CHECK_EQ(s.frames, 0);
}

KVS_TEST_MAIN(KVS_CASE(session_handshake_data_and_close_notify),
              KVS_CASE(conn_close_notify_waits_for_a_paused_owner),
              KVS_CASE(session_unread_input_survives_the_shared_buffer),
              KVS_CASE(session_mid_record_follows_the_peer_framing),
              KVS_CASE(session_client_cert_expired_wrong_ca_missing),
              KVS_CASE(session_peer_names_of_a_verified_client),
              KVS_CASE(session_server_name_and_ca_are_checked),
              KVS_CASE(session_handshake_messages_announcing_too_much_are_refused),
              KVS_CASE(session_tls12_mutual_handshake_passes_the_bound),
              KVS_CASE(session_plaintext_peer_is_not_tls), KVS_CASE(session_versions_are_enforced),
              KVS_CASE(context_reload_switches_new_sessions_only),
              KVS_CASE(context_files_that_are_not_files_are_refused),
              KVS_CASE(conn_echo_pipelined_frames_over_tls),
              KVS_CASE(conn_small_writes_and_backpressure_over_tls),
              KVS_CASE(conn_plaintext_client_on_tls_port_gets_a_plaintext_answer),
              KVS_CASE(conn_tls_client_on_plaintext_port_fails_fast),
              KVS_CASE(conn_missing_client_cert_is_refused_by_the_server),
              KVS_CASE(conn_input_budget_holds_over_tls))
