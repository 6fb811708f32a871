/*
 * cli_net: blocking sockets with deadlines, and TLS driven by hand.
 *
 * Every blocking call is preceded by a poll bounded by the deadline, and
 * the socket also carries SO_RCVTIMEO/SO_SNDTIMEO, so nothing outlives the
 * user's --timeout. Under TLS, ciphertext the session produces (handshake,
 * records) is sent at once from tls_out; ciphertext read from the socket is
 * fed to the session, which hands back plaintext (kvs_tls.h).
 */
#include "cli_net.h"
#include "cli_resolve.h"
#include "kvs_err.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TLS_READ 16384

double cli_net_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double cli_net_deadline(double timeout)
{
    return timeout > 0 ? cli_net_now() + timeout : 0;
}

/* Waits until `fd` is ready for `events`. Returns 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        int ms = -1;
        if (deadline > 0) {
            double left = deadline - cli_net_now();
            if (left <= 0)
                return -ETIMEDOUT;
            ms = left > 1e6 ? 1000000000 : (int)(left * 1000.0) + 1;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, ms);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return -errno;
    }
}

/* Connects `fd` to `sa` before `deadline`; `fd` is blocking again after.
 * Returns 0 or -errno. */
static int connect_fd(int fd, const struct sockaddr *sa, socklen_t len, double deadline)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    if (connect(fd, sa, len) < 0) {
        if (errno != EINPROGRESS)
            return -errno;
        int rc = wait_fd(fd, POLLOUT, deadline);
        if (rc != 0)
            return rc;
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            return -errno;
        if (err != 0)
            return -err;
    }
    return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

static int connect_unix(const char *path, double deadline, int *out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = connect_fd(fd, (const struct sockaddr *)&sa, sizeof(sa), deadline);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    *out = fd;
    return 0;
}

/* Tries every address `host` resolves to. On a resolver failure (or one
 * that did not answer before the deadline) returns KVS_ENOTFOUND with the
 * reason in *why; else 0 or the last -errno. */
static int connect_tcp(const char *host, const char *port, double deadline, int *out,
                       const char **why)
{
    struct addrinfo *res, *ai;
    double left = deadline > 0 ? deadline - cli_net_now() : 0;
    if (deadline > 0 && left <= 0)
        left = 1e-3; /* spent already: the lookup gets no time, and fails so */
    if (cli_resolve(host, port, left, &res, why) != 0)
        return KVS_ENOTFOUND;
    int rc = -ECONNREFUSED;
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        rc = connect_fd(fd, ai->ai_addr, ai->ai_addrlen, deadline);
        if (rc == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            *out = fd;
            break;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

/* SO_RCVTIMEO/SO_SNDTIMEO, so that no blocking call outlives the timeout. */
static int set_timeouts(int fd, double timeout)
{
    if (timeout <= 0)
        return 0;
    struct timeval tv;
    tv.tv_sec = (time_t)timeout;
    tv.tv_usec = (suseconds_t)((timeout - (double)tv.tv_sec) * 1e6);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0)
        return -errno;
    return 0;
}

/* Sends p[0..n) before `deadline`: a peer that reads a little at a time
 * must not stretch the send past it (SO_SNDTIMEO bounds each call only).
 * Returns 0, -ETIMEDOUT or -errno. */
static int send_all(int fd, const uint8_t *p, size_t n, double deadline)
{
    while (n > 0) {
        int rc = wait_fd(fd, POLLOUT, deadline);
        if (rc != 0)
            return rc;
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (k < 0)
            return -errno;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads what is there (at least a byte) into p[0..n) before `deadline`.
 * Returns the count, or 0 for KVS_ECLOSED, or a negative error. */
static ssize_t recv_some(int fd, uint8_t *p, size_t n, double deadline)
{
    for (;;) {
        int rc = wait_fd(fd, POLLIN, deadline);
        if (rc != 0)
            return rc;
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
        return k;
    }
}

/* ---- TLS -------------------------------------------------------------------- */

/* Sends the ciphertext the session made before `deadline`. */
static int tls_flush(cli_net_t *n, double deadline)
{
    if (n->tls_out.len == 0)
        return 0;
    int rc = send_all(n->fd, n->tls_out.data, n->tls_out.len, deadline);
    n->tls_out.len = 0;
    return rc;
}

/* Notes why the session failed. Returns rc. */
static int tls_failed(cli_net_t *n, int rc, double deadline)
{
    snprintf(n->tls_err, sizeof(n->tls_err), "%s", kvs_tls_error(n->tls));
    tls_flush(n, deadline); /* the alert, best effort */
    return rc;
}

/* Reads one batch of ciphertext into the session. */
static int tls_pull(cli_net_t *n, double deadline)
{
    uint8_t *base;
    size_t len;
    if (kvs_tls_in_space(n->tls, TLS_READ, &base, &len) != 0)
        return -ENOMEM;
    ssize_t k = recv_some(n->fd, base, len, deadline);
    if (k < 0)
        return (int)k;
    kvs_tls_in_commit(n->tls, (size_t)k);
    return k == 0 ? KVS_ECLOSED : 0;
}

static int tls_handshake(cli_net_t *n, const char *host, double deadline)
{
    int rc = kvs_tls_new(n->tls_ctx, host, &n->tls_out, &n->tls);
    while (rc == 0) {
        rc = kvs_tls_handshake(n->tls);
        kvs_tls_in_done(n->tls);
        int sent = tls_flush(n, deadline);
        if (rc == 0)
            return sent;
        if (rc != -EAGAIN)
            return tls_failed(n, rc, deadline);
        if (sent != 0)
            return sent;
        rc = tls_pull(n, deadline);
    }
    if (rc == KVS_ECLOSED)
        snprintf(n->tls_err, sizeof(n->tls_err),
                 "the server closed the connection during the TLS handshake (does it use TLS "
                 "on this port? does it want a client certificate, --cert and --key?)");
    return rc == KVS_ECLOSED ? KVS_ETLS : rc;
}

static int tls_recv(cli_net_t *n, uint8_t *p, size_t len, double deadline)
{
    while (len > 0) {
        size_t got;
        int rc = kvs_tls_read(n->tls, p, len, &got);
        if (rc == 0) {
            p += got;
            len -= got;
            continue;
        }
        kvs_tls_in_done(n->tls);
        int sent = tls_flush(n, deadline); /* TLS 1.3 key updates and the like */
        if (rc == KVS_ETLS)
            return tls_failed(n, rc, deadline);
        if (rc != -EAGAIN)
            return rc;
        if (sent != 0)
            return sent;
        rc = tls_pull(n, deadline);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- API ---------------------------------------------------------------------- */

int cli_net_open(cli_net_t *n, const char *path, const char *host, const char *port, double timeout,
                 char *why, size_t len)
{
    double deadline = cli_net_deadline(timeout);
    const char *gai = NULL;
    int fd = -1;
    n->tls_err[0] = '\0';
    int rc = path != NULL ? connect_unix(path, deadline, &fd)
                          : connect_tcp(host, port, deadline, &fd, &gai);
    if (rc == 0 && (rc = set_timeouts(fd, timeout)) != 0)
        close(fd);
    if (rc != 0) {
        snprintf(why, len, "%s", gai != NULL ? gai : strerror(-rc));
        return rc;
    }
    n->fd = fd;
    if (n->tls_ctx == NULL)
        return 0;
    rc = tls_handshake(n, path != NULL ? NULL : host, deadline);
    if (rc == 0)
        return 0;
    if (rc == KVS_ETLS || rc == KVS_ENOTLS)
        snprintf(why, len, "TLS handshake failed: %s", n->tls_err);
    else
        snprintf(why, len, "TLS handshake failed: %s",
                 rc == -ETIMEDOUT ? "no answer in time (see --timeout)" : strerror(-rc));
    cli_net_close(n);
    return KVS_ETLS;
}

int cli_net_send(cli_net_t *n, const uint8_t *p, size_t len, double deadline)
{
    if (n->tls == NULL)
        return send_all(n->fd, p, len, deadline);
    int rc = kvs_tls_write(n->tls, p, len);
    if (rc != 0)
        return tls_failed(n, rc, deadline);
    return tls_flush(n, deadline);
}

/* cli_net_unsolicited under TLS: the plaintext in records already read,
 * then in those waiting on the socket (read without blocking, a bounded
 * number of times). */
static size_t tls_unsolicited(cli_net_t *n)
{
    uint8_t buf[4096];
    size_t total = 0;
    for (int i = 0; i < 64; i++) {
        size_t got = 0;
        int rc = kvs_tls_read(n->tls, buf, sizeof(buf), &got);
        if (rc == 0) {
            total += got;
            continue;
        }
        kvs_tls_in_done(n->tls);
        if (rc != -EAGAIN)
            break; /* the end, or a failure: the send or read says so */
        /* (what the session has to send, a KeyUpdate's answer, goes out
         * before the next request: cli_net_send flushes it first) */
        uint8_t *base;
        size_t len;
        if (kvs_tls_in_space(n->tls, TLS_READ, &base, &len) != 0)
            break;
        ssize_t k = recv(n->fd, base, len, MSG_DONTWAIT);
        if (k <= 0)
            break; /* nothing more (or the end: the read says so) */
        kvs_tls_in_commit(n->tls, (size_t)k);
    }
    return total;
}

size_t cli_net_unsolicited(cli_net_t *n)
{
    uint8_t peek[4096];
    if (n->fd < 0)
        return 0;
    if (n->tls != NULL)
        return tls_unsolicited(n);
    ssize_t k = recv(n->fd, peek, sizeof(peek), MSG_PEEK | MSG_DONTWAIT);
    return k > 0 ? (size_t)k : 0; /* 0: nothing, or the end (the send or read says so) */
}

int cli_net_ended(const cli_net_t *n)
{
    if (n->fd < 0)
        return 0;
    struct pollfd p = {.fd = n->fd, .events = POLLIN | POLLRDHUP};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

int cli_net_recv(cli_net_t *n, uint8_t *p, size_t len, double deadline)
{
    if (n->tls != NULL)
        return tls_recv(n, p, len, deadline);
    while (len > 0) {
        ssize_t k = recv_some(n->fd, p, len, deadline);
        if (k == 0)
            return KVS_ECLOSED;
        if (k < 0)
            return (int)k;
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

const char *cli_net_tls_error(const cli_net_t *n)
{
    return n->tls_err;
}

void cli_net_close(cli_net_t *n)
{
    if (n->tls != NULL && n->fd >= 0 && kvs_tls_shutdown(n->tls) == 0 && n->tls_out.len > 0) {
        /* close_notify, best effort: one send that does not wait (a server
         * that stopped reading must not hold kvs-cli past its --timeout) */
        ssize_t k = send(n->fd, n->tls_out.data, n->tls_out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)k; /* not sent (or in part): dropped with the session */
    }
    kvs_tls_free(n->tls);
    n->tls = NULL;
    kvs_buf_free(&n->tls_out);
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
}
