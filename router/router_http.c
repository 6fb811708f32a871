/*
 * router_http: GET /metrics for Prometheus.
 *
 * The listener is for administrators, but it is a network port like any
 * other, so it is bounded like the client listeners, with kvs_conn doing
 * the work:
 *  - at most HTTP_MAX_CONNS connections: at that count a new one takes the
 *    place of the one that waited longest for its client (no scrape in
 *    flight, no answer being written, nothing read or accepted for
 *    HTTP_EVICT_IDLE_MS, no input waiting), so that clients holding
 *    slots idle never keep a scrape out for long; failing that, of the
 *    one whose request has been arriving longest, for HTTP_SLOW_REQUEST_MS
 *    at least (a scraper's request comes in one packet: clients that
 *    trickle requests a byte at a time, and reconnect when closed, kept
 *    every slot busy and every scrape out); failing that, when another
 *    host than the new one's holds the most of them, and more than one,
 *    of that host's first (evict_for_host: clients that reconnect at once
 *    keep every connection fresh or arriving, and one host's flood must
 *    not keep another host's scraper out);
 *    when every one is busy, the new one gets 503 and is closed; a
 *    connection whose token is being checked (or is first in line for a
 *    check) is busy too;
 *  - a request (line, headers and any body) may take HTTP_MAX_REQUEST
 *    bytes: past that, 431 while in the headers, 413 in a body, and the
 *    connection is closed;
 *  - a request that started must arrive whole within HTTP_TIMEOUT_MS, so
 *    must an answer go whole into the socket (a client that does not read
 *    would keep its connection, and its answer, for ever), and a
 *    keep-alive connection idle for HTTP_IDLE_MS is closed (kvs_conn's
 *    group timeouts; KVS_TEST_METRICS_TIMEOUT_MS, a test build's hook,
 *    replaces HTTP_TIMEOUT_MS);
 *  - the kernel's send buffer of a connection is HTTP_SNDBUF (not the
 *    megabytes it grows to by itself), so that answers a client does not
 *    read soon wait in its output, where the answer timeout sees them;
 *  - one request at a time per connection: while a scrape is in flight
 *    the connection is paused (nothing more is read), and pipelined
 *    requests wait their turn, which comes once the last answer went
 *    whole into the socket (a high-water mark of one byte), so a client
 *    that pipelines scrapes and reads nothing costs one answer, not one
 *    per request.
 * Output is what the scrape renders (bounded by limits.max_frame, the size
 * a Metrics answer may reach), plus a short error page.
 *
 * HTTPS (tls.metrics) is kvs_conn's, below the codec: a plaintext request
 * on it is answered 400 in the clear. With users (router.metrics_auth), a
 * GET /metrics must name a user holding admin, per request (HTTP has no
 * connection identity): HTTP Basic user:token, checked by kvs_auth as an
 * Auth command is (its bounds: tokens only over TLS or loopback, one
 * check per address at a time, failures per address per minute), or the
 * connection's verified client certificate; else 401 (with a Basic
 * challenge) or 403. The connection is paused while its token is checked.
 *
 * Parsing is libhttp-parser's, plugged into kvs_conn as a codec: the
 * parser is fed the bytes it has not seen yet and pauses itself at the end
 * of a message, which is then delivered as one "frame". Anything that is
 * not a well-formed request gets its 4xx: 400 for what the parser refuses
 * (the connection is then closed), 404 for another path, 405 (Allow: GET)
 * for another method (CONNECT host:port and OPTIONS * too), 501 for a
 * method HTTP does not define, 414 for a URL over HTTP_MAX_URL bytes, 505
 * for a version other than HTTP/1.0 and 1.1 (a request line without one,
 * too).
 *
 * A scrape is handed to the owner's callback (the master's router_scrape,
 * which collects the families of every process of the node) with a token;
 * the owner answers through router_http_done, at once or later. If the
 * connection closes first, the token is orphaned and the answer dropped.
 * The token carries the scraper's own deadline, Prometheus's
 * X-Prometheus-Scrape-Timeout-Seconds header, when the request has one:
 * an answer later than that is thrown away whole by Prometheus.
 */
#include "router_http.h"
#include "kvs_addr.h"
#include "kvs_auth.h"
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_testhook.h"
#include "kvs_tls.h"
#include "kvs_token.h"

#include <http_parser.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HTTP_MAX_CONNS 16
#define HTTP_EVICT_IDLE_MS 250    /* a connection this quiet may be closed for a new one */
#define HTTP_SLOW_REQUEST_MS 1000 /* ... and one whose request has been arriving this long */
#define HTTP_MAX_REQUEST 8192u
#define HTTP_MAX_URL 1024u
#define HTTP_TIMEOUT_MS 10000u
#define HTTP_IDLE_MS 60000u
#define HTTP_SNDBUF 65536 /* SO_SNDBUF of a connection (Linux doubles it) */
/* The header Prometheus sends with its scrape_timeout, in seconds. */
static const char timeout_header[] = "X-Prometheus-Scrape-Timeout-Seconds";
#define HTTP_MAX_TIMEOUT_VALUE 31 /* bytes of its value, at most (longer: ignored) */
static const char auth_header[] = "Authorization";
#define HTTP_MAX_USER 255u /* bytes of a user name in Basic credentials */
/* Its value at most: "Basic " and the base64 of a user name, a colon and
 * the longest token kvs takes (longer: refused unchecked, 401). */
#define HTTP_MAX_AUTH_VALUE (6 + (HTTP_MAX_USER + 1 + KVS_TOKEN_MAX + 2) / 3 * 4)
static const char challenge[] = "WWW-Authenticate: Basic realm=\"kvs\", charset=\"UTF-8\"\r\n";

typedef struct http_conn_s http_conn_t;

struct router_http_scrape_s {
    http_conn_t *hc;     /* NULL once the connection is gone */
    uint64_t timeout_ms; /* the scraper's deadline (its header), or 0 */
};

struct router_http_s {
    uv_loop_t *loop;
    router_http_scrape_cb on_scrape;
    void *arg;
    kvs_tls_ctx_t *tls; /* HTTPS, or NULL */
    kvs_auth_t *auth;   /* a scrape's user must have admin, or NULL: anyone may */
    int stopped;
    kvs_listener_t listener;
    int listening;
    kvs_conn_group_t group;
    kvs_list_t conns; /* http_conn_t, newest first */
    uint64_t refused_log_ms, evicted_log_ms;
};

struct http_conn_s {
    kvs_conn_t conn;
    router_http_t *h;
    kvs_codec_t codec;
    http_parser parser;
    size_t fed;    /* bytes of the buffered input the parser has seen */
    int complete;  /* a whole request ends at `fed` */
    int error;     /* the 4xx a malformed request gets (the codec failed) */
    int tls_hello; /* ... which is a TLS handshake's first record */
    char url[HTTP_MAX_URL + 1];
    size_t url_len;
    int url_too_long;
    int headers_done;
    /* The header being parsed (its pieces may come in several calls): its
     * name's first bytes, and whether it is timeout_header; that one's value. */
    char hname[sizeof(timeout_header)];
    size_t hname_len;
    int in_value; /* the last piece was a value: the next name piece starts a header */
    int is_timeout;
    char tvalue[HTTP_MAX_TIMEOUT_VALUE + 1];
    size_t tvalue_len;
    uint64_t timeout_ms; /* this request's X-Prometheus-Scrape-Timeout-Seconds, or 0 */
    /* This request's Authorization header: how many came, and the value
     * (auth_len past HTTP_MAX_AUTH_VALUE: too long, not kept). */
    int is_auth, auths;
    char avalue[HTTP_MAX_AUTH_VALUE + 1];
    size_t avalue_len;
    kvs_auth_conn_t ac;           /* who sends the request being answered (with users) */
    int checking;                 /* its token is being checked (paused meanwhile) ... */
    uint64_t checking_timeout_ms; /* ... and the scrape's deadline, for once it passes */
    router_http_scrape_t *scrape; /* the scrape in flight, or NULL */
    int keep_alive;               /* of the request being answered */
    int http10;                   /* ... which is HTTP/1.0: keep-alive must be said */
    kvs_list_t link;              /* on the port's list */
    char host[64];                /* its client's host (kvs_addr_peer_host) */
};

/* ---- parsing ------------------------------------------------------------------ */

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    http_conn_t *hc = p->data;
    if (hc->in_value) { /* a new header */
        hc->in_value = 0;
        hc->hname_len = 0;
    }
    for (size_t i = 0; i < len && hc->hname_len < sizeof(hc->hname); i++)
        hc->hname[hc->hname_len++] = at[i]; /* one past the name's length: not it */
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    http_conn_t *hc = p->data;
    if (!hc->in_value) { /* the first piece of this header's value */
        hc->in_value = 1;
        hc->is_timeout = hc->hname_len == sizeof(timeout_header) - 1 &&
                         strncasecmp(hc->hname, timeout_header, hc->hname_len) == 0;
        if (hc->is_timeout)
            hc->tvalue_len = 0;
        hc->is_auth = hc->hname_len == sizeof(auth_header) - 1 &&
                      strncasecmp(hc->hname, auth_header, hc->hname_len) == 0;
        hc->auths += hc->is_auth;
        if (hc->is_auth)
            hc->avalue_len = 0;
    }
    for (size_t i = 0; hc->is_auth && i < len; i++) {
        if (hc->avalue_len < sizeof(hc->avalue) - 1)
            hc->avalue[hc->avalue_len] = at[i];
        hc->avalue_len += hc->avalue_len < sizeof(hc->avalue); /* one past: too long */
    }
    for (size_t i = 0; hc->is_timeout && i < len; i++) {
        if (hc->tvalue_len == sizeof(hc->tvalue) - 1) { /* too long for a number of seconds */
            hc->is_timeout = 0;
            hc->tvalue_len = 0;
            break;
        }
        hc->tvalue[hc->tvalue_len++] = at[i];
    }
    return 0;
}

uint64_t router_http_timeout_ms(const char *value)
{
    char *end;
    double v = strtod(value, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    if (end == value || *end != '\0' || !isfinite(v) || v <= 0 || v >= 86400)
        return 0;
    uint64_t ms = (uint64_t)(v * 1000.0);
    return ms > 0 ? ms : 1;
}

static uint64_t parse_timeout(http_conn_t *hc)
{
    if (hc->tvalue_len == 0)
        return 0;
    hc->tvalue[hc->tvalue_len] = '\0';
    return router_http_timeout_ms(hc->tvalue);
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    http_conn_t *hc = p->data;
    if (hc->url_len + len > HTTP_MAX_URL) {
        hc->url_too_long = 1;
        return 0;
    }
    memcpy(hc->url + hc->url_len, at, len);
    hc->url_len += len;
    hc->url[hc->url_len] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    http_conn_t *hc = p->data;
    hc->headers_done = 1;
    hc->timeout_ms = parse_timeout(hc);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    http_conn_t *hc = p->data;
    hc->complete = 1;
    http_parser_pause(p, 1); /* stop right after this message */
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static void parser_reset(http_conn_t *hc)
{
    http_parser_init(&hc->parser, HTTP_REQUEST);
    hc->parser.data = hc;
    hc->fed = 0;
    hc->complete = 0;
    hc->url_len = 0;
    hc->url[0] = '\0';
    hc->url_too_long = 0;
    hc->headers_done = 0;
    hc->hname_len = 0;
    hc->in_value = 0;
    hc->is_timeout = 0;
    hc->tvalue_len = 0;
    hc->timeout_ms = 0;
    hc->is_auth = 0;
    hc->auths = 0;
    explicit_bzero(hc->avalue,
                   hc->avalue_len < sizeof(hc->avalue) ? hc->avalue_len : sizeof(hc->avalue));
    hc->avalue_len = 0;
}

/* Whether p[0..len) starts with what reads as a method: capital letters
 * up to a space (a method HTTP does not define is 501; TLS or other bytes
 * on this plain port are a malformed request, 400). */
static int method_token(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len && i < 32 && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    return i > 0 && i < len && p[i] == ' ';
}

/* kvs_conn's codec: feeds what the parser has not seen of p[0..len). */
static int codec_next(void *state, const uint8_t *p, size_t len, size_t max, size_t *used, int peek)
{
    http_conn_t *hc = state;
    (void)peek; /* what it parsed stays parsed: asking again is cheap */
    if (hc->error)
        return -1;
    if (!hc->complete && len > hc->fed && hc->fed <= max) {
        /* The parser sees at most one byte past the bound, so what it has
         * read when the bound is passed says where: in the URL, in the
         * headers, or in the body. */
        size_t room = max + 1 - hc->fed, n = len - hc->fed < room ? len - hc->fed : room;
        hc->fed += http_parser_execute(&hc->parser, &settings, (const char *)p + hc->fed, n);
        enum http_errno e = HTTP_PARSER_ERRNO(&hc->parser);
        if (!hc->complete && (e != HPE_OK || hc->parser.upgrade)) {
            hc->error = e == HPE_INVALID_METHOD && method_token(p, len) ? 501 : 400;
            /* A record header 0x16 0x03 0x0N where a request starts: a
             * scraper configured for https (as kvs's TLS ports tell it). */
            hc->tls_hello = hc->error == 400 && len >= 4 &&
                            kvs_tls_looks_like_hello((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                                                     (uint32_t)p[2] << 8 | p[3]);
            return -1;
        }
    }
    /* This request passes the bound: read past it, or (a body declared
     * longer than what is left of it) refused once its headers are in,
     * not after its bytes, which may never come. */
    if (hc->fed > max || (!hc->complete && len > max) ||
        (!hc->complete && hc->headers_done && hc->parser.content_length != ULLONG_MAX &&
         hc->parser.content_length > (uint64_t)(max - hc->fed))) {
        hc->error = hc->headers_done ? 413 : hc->url_too_long ? 414 : 431;
        return -1;
    }
    if (hc->complete) {
        *used = hc->fed;
        return 1;
    }
    return 0;
}

/* ---- answers ---------------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Internal Server Error";
    }
}

/* Queues one response; without keep-alive the connection closes after it. */
static void respond(http_conn_t *hc, int status, const char *type, const void *body, size_t len,
                    const char *extra)
{
    char head[512];
    int close = !hc->keep_alive || status >= 400;
    /* HTTP/1.0 closes unless the answer says it keeps the connection */
    const char *conn = close        ? "Connection: close\r\n"
                       : hc->http10 ? "Connection: keep-alive\r\n"
                                    : "";
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                     status, reason(status), type, len, extra ? extra : "", conn);
    if (kvs_buf_append(&hc->conn.out, head, (size_t)n) != 0 ||
        kvs_buf_append(&hc->conn.out, body, len) != 0) {
        kvs_conn_close(&hc->conn);
        return;
    }
    if (close)
        kvs_conn_close_after_flush(&hc->conn);
    else
        kvs_conn_queue(&hc->conn);
}

static void respond_text(http_conn_t *hc, int status, const char *text, const char *extra)
{
    respond(hc, status, "text/plain; charset=utf-8", text, strlen(text), extra);
}

uint64_t router_http_scrape_timeout_ms(const router_http_scrape_t *s)
{
    return s->timeout_ms;
}

void router_http_done(router_http_scrape_t *s, int status, const void *body, size_t len)
{
    http_conn_t *hc = s->hc;
    free(s);
    if (hc == NULL) /* the connection went away */
        return;
    hc->scrape = NULL;
    if (hc->conn.flags & KVS_CONN_CLOSING)
        return; /* going away (the listener stops) */
    if (status == 200)
        respond(hc, 200, "text/plain; version=0.0.4; charset=utf-8", body, len, NULL);
    else
        respond(hc, status, "text/plain; charset=utf-8", body, len, NULL);
    kvs_conn_resume(&hc->conn);
}

/* Hands the scrape to the owner; one at a time per connection. */
static void scrape(http_conn_t *hc, uint64_t timeout_ms)
{
    router_http_scrape_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        respond_text(hc, 500, "out of memory\n", NULL);
        return;
    }
    s->hc = hc;
    s->timeout_ms = timeout_ms;
    hc->scrape = s;
    kvs_conn_pause(&hc->conn); /* one request at a time */
    hc->h->on_scrape(hc->h->arg, s);
}

/* ---- who scrapes (users configured) -------------------------------------------- */

static void refuse_unauthenticated(http_conn_t *hc, const char *why)
{
    char body[600];
    snprintf(body, sizeof(body), "%s\n", why);
    respond_text(hc, 401, body, challenge);
}

/* The request's user is known (or none is): the scrape if it holds admin. */
static void scrape_as_user(http_conn_t *hc, uint64_t timeout_ms)
{
    char msg[400];
    if (hc->ac.user == NULL) {
        refuse_unauthenticated(hc, "authentication required: scrape as a user with the admin "
                                   "right, by HTTP Basic authentication (the user's name and "
                                   "token) or a client certificate that names the user");
        return;
    }
    uint32_t st =
        kvs_auth_check(&hc->ac, KVS__COMMAND_REQUEST__COMMAND_METRICS, NULL, 0, msg, sizeof(msg));
    if (st == 200) {
        scrape(hc, timeout_ms);
        return;
    }
    char body[sizeof(msg) + 1]; /* msg may fill its buffer: a long user name */
    snprintf(body, sizeof(body), "%s\n", msg);
    respond_text(hc, 403, body, NULL);
}

/* An Auth check's outcome (kvs_auth): the scrape, or its refusal. */
static void on_auth_done(void *arg, uint32_t status, const char *msg, int close)
{
    http_conn_t *hc = arg;
    (void)close; /* a refusal closes the connection anyway */
    hc->checking = 0;
    if (status == 200)
        scrape_as_user(hc, hc->checking_timeout_ms);
    else if (status == 401)
        refuse_unauthenticated(hc, msg);
    else
        respond_text(hc, 500, "the token could not be checked; retry\n", NULL);
    /* A scrape answered at once resumed the connection already, and a
     * request read then may be waiting for a check of its own: the
     * connection reads on only when neither waits. */
    if (hc->scrape == NULL && !hc->checking)
        kvs_conn_resume(&hc->conn);
}

/* Decodes Basic credentials (RFC 7617: "Basic" and the base64 of
 * user:token) from v[0..n) into out (cap bytes, NUL-terminated), and
 * points *token past the colon. Returns 0, or -1 with *why set. */
static int basic_credentials(const char *v, size_t n, char *out, size_t cap, char **token,
                             const char **why)
{
    *why = "malformed Authorization header: expected Basic and the base64 of user:token";
    if (n < 6 || strncasecmp(v, "Basic ", 6) != 0) {
        if (n > 0 && strcspn(v, " ") < n)
            *why = "only HTTP Basic authentication is taken (the user's name and token)";
        return -1;
    }
    size_t i = 6;
    while (i < n && v[i] == ' ')
        i++;
    while (n > i && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    size_t pad = 0;
    while (pad < 2 && n - pad > i && v[n - pad - 1] == '=')
        pad++;
    if (pad > 0 && (n - i) % 4 != 0)
        return -1;
    long got = kvs_token_b64_decode(v + i, n - i - pad, (uint8_t *)out, cap - 1);
    if (got < 0)
        return -1;
    out[got] = '\0';
    char *colon = memchr(out, ':', (size_t)got);
    if (colon == NULL || memchr(out, '\0', (size_t)got) != NULL)
        return -1;
    *colon = '\0';
    *token = colon + 1;
    return 0;
}

/* GET /metrics with users configured: who asks, by the request's
 * Authorization header (its value v[0..n), `auths` of them) or else by
 * the connection's client certificate. A token is checked by kvs_auth
 * (the connection paused meanwhile), with its bounds: failures per
 * address, one check at a time per address, tokens only over TLS or
 * loopback. Every request says who it is, as HTTP has it: a user a
 * request proved is not the next one's. */
static void authorize(http_conn_t *hc, const char *v, size_t n, int auths, uint64_t timeout_ms)
{
    char creds[HTTP_MAX_USER + 1 + KVS_TOKEN_MAX + 4], msg[400];
    const char *why;
    char *token;
    int close;
    kvs_auth_conn_forget(&hc->ac);
    if (hc->conn.tls != NULL)
        (void)kvs_auth_by_certificate(hc->h->auth, &hc->ac, hc->conn.tls);
    if (auths == 0) {
        scrape_as_user(hc, timeout_ms);
        return;
    }
    if (auths > 1) {
        respond_text(hc, 400, "more than one Authorization header\n", NULL);
        return;
    }
    if (n > HTTP_MAX_AUTH_VALUE) {
        refuse_unauthenticated(hc, "the Authorization header is too long for a user and token");
        return;
    }
    if (basic_credentials(v, n, creds, sizeof(creds), &token, &why) != 0) {
        explicit_bzero(creds, sizeof(creds));
        refuse_unauthenticated(hc, why);
        return;
    }
    Kvs__Auth m = KVS__AUTH__INIT;
    m.user = creds;
    m.token = token;
    uint32_t st = kvs_auth_begin(hc->h->auth, &hc->ac, &m, hc->conn.peer, on_auth_done, hc, msg,
                                 sizeof(msg), &close);
    explicit_bzero(creds, sizeof(creds));
    if (st == 0) { /* on_auth_done goes on */
        hc->checking = 1;
        hc->checking_timeout_ms = timeout_ms;
        kvs_conn_pause(&hc->conn);
    } else if (st == 200) {
        scrape_as_user(hc, timeout_ms);
    } else if (st == 401) {
        refuse_unauthenticated(hc, msg);
    } else {
        respond_text(hc, 500, "the token could not be checked; retry\n", NULL);
    }
}

/* A whole request arrived. */
static void on_frame(kvs_conn_t *c, const uint8_t *payload, size_t len)
{
    http_conn_t *hc = c->data;
    struct http_parser_url u;
    char path[HTTP_MAX_URL + 1] = "";
    (void)payload;
    (void)len;
    hc->keep_alive = http_should_keep_alive(&hc->parser);
    hc->http10 = hc->parser.http_major == 1 && hc->parser.http_minor == 0;
    int method = hc->parser.method, too_long = hc->url_too_long;
    int version_ok = hc->parser.http_major == 1 && hc->parser.http_minor <= 1;
    uint64_t timeout_ms = hc->timeout_ms;
    int auths = hc->auths;
    size_t alen = hc->avalue_len;
    char avalue[sizeof(hc->avalue)];
    memcpy(avalue, hc->avalue, alen < sizeof(avalue) ? alen : sizeof(avalue));
    /* CONNECT names a host:port, OPTIONS may name the server ("*"): targets
     * of other forms than a path, valid for their methods, answered 405. */
    int connect = method == HTTP_CONNECT;
    int server = method == HTTP_OPTIONS && hc->url_len == 1 && hc->url[0] == '*';
    http_parser_url_init(&u);
    int bad_url =
        too_long || (!server && http_parser_parse_url(hc->url, hc->url_len, connect, &u) != 0);
    if (!bad_url && (u.field_set & (1u << UF_PATH)))
        snprintf(path, sizeof(path), "%.*s", (int)u.field_data[UF_PATH].len,
                 hc->url + u.field_data[UF_PATH].off);
    parser_reset(hc); /* the next request starts after this one */
    if (!version_ok)
        respond_text(hc, 505, "only HTTP/1.0 and HTTP/1.1 are served\n", NULL);
    else if (too_long)
        respond_text(hc, 414, "the URL is too long\n", NULL);
    else if (bad_url)
        respond_text(hc, 400, "the request target is not a URL\n", NULL);
    else if (connect || server)
        respond_text(hc, 405, "only GET is allowed on /metrics\n", "Allow: GET\r\n");
    else if (strcmp(path, "/metrics") != 0)
        respond_text(hc, 404, "not found: kvs serves only /metrics here\n", NULL);
    else if (method != HTTP_GET)
        respond_text(hc, 405, "only GET is allowed on /metrics\n", "Allow: GET\r\n");
    else if (hc->h->auth != NULL)
        authorize(hc, avalue, alen, auths, timeout_ms);
    else
        scrape(hc, timeout_ms);
    explicit_bzero(avalue, sizeof(avalue));
}

/* The codec failed (or the input ended): answer the 4xx, then close. */
static void on_conn_error(kvs_conn_t *c, int err)
{
    http_conn_t *hc = c->data;
    hc->keep_alive = 0;
    if (err == KVS_EPROTO && hc->error == 431)
        respond_text(hc, 431, "the request headers are too large\n", NULL);
    else if (err == KVS_EPROTO && hc->error == 414)
        respond_text(hc, 414, "the URL is too long\n", NULL);
    else if (err == KVS_EPROTO && hc->error == 501)
        respond_text(hc, 501, "only GET is served, on /metrics\n", NULL);
    else if (err == KVS_EPROTO && hc->error == 413)
        respond_text(hc, 413, "the request is too large\n", NULL);
    else if (err == KVS_EPROTO && hc->tls_hello) {
        if (kvs_conn_may_log(c))
            kvs_warn("closing metrics client %s: it started a TLS handshake; the metrics port "
                     "speaks plain HTTP (scrape it with http://)",
                     c->peer);
        respond_text(hc, 400, "this port speaks plain HTTP, not TLS: scrape it with http://\n",
                     NULL);
    } else if (err == KVS_EPROTO)
        respond_text(hc, 400, "malformed HTTP request\n", NULL);
    else if (err == KVS_ENOTLS) /* logged by kvs_conn; the answer goes in the clear */
        respond_text(hc, 400, "this port speaks HTTPS (tls.metrics): scrape it with https://\n",
                     NULL);
    else if (hc->scrape == NULL && !hc->checking)
        kvs_conn_close_after_flush(c); /* EOF: nothing more to answer */
}

static void on_conn_closed(kvs_conn_t *c)
{
    http_conn_t *hc = c->data;
    if (hc->scrape != NULL)
        hc->scrape->hc = NULL;    /* router_http_done frees it */
    kvs_auth_conn_close(&hc->ac); /* a check in flight: its callback never runs */
    kvs_list_remove(&hc->link);
    free(hc);
}

/* ---- listening ---------------------------------------------------------------------- */

static const char busy_page[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                "Content-Length: 32\r\nConnection: close\r\n\r\n"
                                "too many connections; try again\n";

/* The 503 of a new connection when every one is busy: `hc`, accepted
 * already (to learn its host), leaves the port's count and is answered
 * and closed; or, when there is none, one accepted for it here. */
static void refuse(router_http_t *h, uv_stream_t *server, http_conn_t *hc)
{
    if (hc == NULL) {
        kvs_conn_refuse(server, busy_page, sizeof(busy_page) - 1);
    } else {
        kvs_conn_refuse_accepted(&hc->conn, busy_page, sizeof(busy_page) - 1);
    }
    uint64_t now = uv_now(h->loop);
    if (h->refused_log_ms == 0 || now - h->refused_log_ms >= 10000) {
        h->refused_log_ms = now;
        kvs_warn("metrics listener: refusing connections past %d (logged at most every 10 s)",
                 HTTP_MAX_CONNS);
    }
}

/* At HTTP_MAX_CONNS: closes the connection that has waited longest for
 * its client (read nothing for the longest time, with no scrape in flight,
 * no token being checked or first in line for a check (kvs_auth's spared,
 * as on the client port: one parked behind its own address's check is
 * not), and no answer being written) to make room (a closing one has left
 * the group, which counts the others). One accepted or read from less than
 * HTTP_EVICT_IDLE_MS ago, or whose socket holds input not read yet, is
 * busy too: its request may be on its way in (a burst of scrapers, each
 * accepted a moment before its request came, each closed the one before
 * it unanswered). Returns 0, or -1 when every connection is busy. */
static int evict_one(router_http_t *h)
{
    http_conn_t *best = NULL, *slow = NULL;
    uint64_t now = uv_now(h->loop);
    kvs_list_t *pos;
    KVS_LIST_EACH(pos, &h->conns)
    {
        http_conn_t *hc = KVS_LIST_ENTRY(pos, http_conn_t, link);
        if (hc->conn.group == NULL || hc->scrape != NULL || kvs_auth_conn_spared(&hc->ac) ||
            hc->conn.output_since_ms != 0)
            continue;
        if (now - hc->conn.last_input_ms >= HTTP_EVICT_IDLE_MS &&
            !kvs_conn_input_waiting(&hc->conn) &&
            (best == NULL || hc->conn.last_input_ms <= best->conn.last_input_ms))
            best = hc;                                  /* newest first: on a tie, the older one */
        uint64_t since = hc->conn.partial_since_ms - 1; /* kvs_conn keeps it + 1, never 0 */
        if (hc->conn.partial_since_ms != 0 && now - since >= HTTP_SLOW_REQUEST_MS &&
            (slow == NULL || hc->conn.partial_since_ms <= slow->conn.partial_since_ms))
            slow = hc;
    }
    if (best == NULL && slow == NULL)
        return -1;
    if (h->evicted_log_ms == 0 || now - h->evicted_log_ms >= 10000) {
        h->evicted_log_ms = now;
        if (best != NULL)
            kvs_warn("metrics listener: at %d connections, closing the one idle longest (%llu "
                     "ms) for a new one (logged at most every 10 s)",
                     HTTP_MAX_CONNS, (unsigned long long)(now - best->conn.last_input_ms));
        else
            kvs_warn("metrics listener: at %d connections, none idle, closing the one whose "
                     "request has been arriving longest (%llu ms) for a new one (logged at "
                     "most every 10 s)",
                     HTTP_MAX_CONNS, (unsigned long long)(now - (slow->conn.partial_since_ms - 1)));
    }
    if (best == NULL)
        best = slow;
    kvs_conn_close(&best->conn);
    return 0;
}

/* Every connection is busy (evict_one found none to close) and `hc` has
 * just come: when another host than hc's holds more of them than any
 * other, and more than one, one of its connections takes hc's place: the
 * first that came with no scrape in flight, no answer being written and
 * none of its request waiting to be read; failing that, when that host
 * holds more than half of them, the first that came, whatever it is
 * doing (a host that pipelines scrapes on every connection it holds is
 * never idle: one host's flood never keeps another's scraper out, and a
 * host with a few scrapes in flight among many hosts' keeps them); never
 * one whose token is being checked or is next in line for a check
 * (kvs_auth_conn_spared: at most one per address). Returns 0 when one
 * was closed. */
static int evict_for_host(router_http_t *h, const http_conn_t *hc)
{
    const http_conn_t *most = NULL;
    size_t most_n = 0;
    kvs_list_t *pos, *p2;
    KVS_LIST_EACH(pos, &h->conns)
    {
        const http_conn_t *a = KVS_LIST_ENTRY(pos, http_conn_t, link);
        if (a == hc || a->conn.group == NULL)
            continue;
        size_t n = 0;
        KVS_LIST_EACH(p2, &h->conns)
        {
            const http_conn_t *b = KVS_LIST_ENTRY(p2, http_conn_t, link);
            n += b != hc && b->conn.group != NULL && strcmp(a->host, b->host) == 0;
        }
        if (n > most_n)
            most = a, most_n = n;
    }
    if (most == NULL || most_n < 2 || strcmp(most->host, hc->host) == 0)
        return -1;
    http_conn_t *first = NULL, *first_idle = NULL; /* newest first: the last match came first */
    KVS_LIST_EACH(pos, &h->conns)
    {
        http_conn_t *a = KVS_LIST_ENTRY(pos, http_conn_t, link);
        if (a == hc || a->conn.group == NULL || strcmp(a->host, most->host) != 0)
            continue;
        if (kvs_auth_conn_spared(&a->ac))
            continue; /* its token is being checked, or is next: never closed for a newcomer */
        first = a;
        if (a->scrape == NULL && a->conn.output_since_ms == 0 && !kvs_conn_input_waiting(&a->conn))
            first_idle = a;
    }
    if (first_idle != NULL)
        first = first_idle;
    else if (first == NULL || most_n <= HTTP_MAX_CONNS / 2)
        return -1; /* its scrapes in flight are not cut for a newcomer */
    uint64_t now = uv_now(h->loop);
    if (h->evicted_log_ms == 0 || now - h->evicted_log_ms >= 10000) {
        h->evicted_log_ms = now;
        kvs_warn("metrics listener: at %d connections, all busy, %zu of them from %s: closing "
                 "the first of those for a new one from %s (logged at most every 10 s)",
                 HTTP_MAX_CONNS, most_n, most->host, hc->host);
    }
    kvs_conn_close(&first->conn);
    return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
    router_http_t *h = server->data;
    if (status != 0)
        return;
    int full = h->group.count >= HTTP_MAX_CONNS && evict_one(h) != 0;
    http_conn_t *hc = calloc(1, sizeof(*hc));
    if (hc == NULL) {
        if (full)
            refuse(h, server, NULL);
        else
            kvs_conn_refuse(server, NULL, 0); /* or the listener stops accepting */
        return;
    }
    hc->h = h;
    kvs_conn_init(&hc->conn, h->loop, 0, HTTP_MAX_REQUEST, on_frame, on_conn_error, on_conn_closed);
    hc->conn.data = hc;
    hc->codec.next = codec_next;
    hc->codec.state = hc;
    hc->codec.plain_only = h->tls == NULL; /* a TLS client's hello is a malformed request */
    hc->conn.codec = &hc->codec;
    parser_reset(hc);
    kvs_conn_join(&hc->conn, &h->group);
    kvs_list_push_front(&h->conns, &hc->link);
    int rc = kvs_conn_accept_tls(&hc->conn, server, h->tls);
    /* Tokens only where nobody can overhear them (kvs_auth) */
    kvs_auth_conn_init(&hc->ac, 0, h->tls != NULL || kvs_conn_peer_is_local(&hc->conn));
    if (rc != 0) {
        kvs_conn_close(&hc->conn);
        return;
    }
    kvs_addr_peer_host(hc->conn.peer, hc->host, sizeof(hc->host));
    if (full && evict_for_host(h, hc) != 0) {
        refuse(h, server, hc);
        return;
    }
    /* The kernel would otherwise take megabytes of answers a client does
     * not read (its send buffer grows by itself): bounded, a client that
     * pipelines scrapes and reads nothing has an answer waiting within a
     * few answers, and the answer timeout closes it. */
    int sndbuf = HTTP_SNDBUF;
    (void)uv_send_buffer_size((uv_handle_t *)&hc->conn.h, &sndbuf); /* unset: merely larger */
}

int router_http_start(uv_loop_t *loop, const char *listen, kvs_tls_ctx_t *tls, kvs_auth_t *auth,
                      router_http_scrape_cb on_scrape, void *arg, router_http_t **out)
{
    kvs_addr_t addr;
    char err[256];
    router_http_t *h = calloc(1, sizeof(*h));
    *out = NULL;
    if (h == NULL)
        return UV_ENOMEM;
    h->loop = loop;
    kvs_list_init(&h->conns);
    h->on_scrape = on_scrape;
    h->arg = arg;
    h->tls = tls;
    h->auth = auth;
    int rc = kvs_addr_parse(listen, 0, &addr, err, sizeof(err));
    if (rc != 0) {
        kvs_error("router.metrics_listen: %s", err);
        free(h);
        return UV_EINVAL;
    }
    uint64_t timeout_ms = HTTP_TIMEOUT_MS;
    if (kvs_test_hook_u64("KVS_TEST_METRICS_TIMEOUT_MS", &timeout_ms))
        kvs_warn("test hook: metrics requests and answers must pass within %llu ms "
                 "(KVS_TEST_METRICS_TIMEOUT_MS)",
                 (unsigned long long)timeout_ms);
    kvs_conn_limits_t limits = {
        .high_water = 1, /* the next request once the last answer is in the socket */
        .hard_limit = 0,
        .frame_timeout_ms = timeout_ms,
        .frame_timeout_name = "the metrics port's request time",
        .frame_word = "request",
        .idle_timeout_ms = HTTP_IDLE_MS,
        .output_timeout_ms = timeout_ms,
    };
    rc = kvs_conn_group_init(&h->group, loop, &limits, "metrics client");
    *out = h; /* from here the group's timer is a handle: router_http_stop closes it */
    if (rc == 0)
        rc = kvs_listen(loop, &addr, &h->listener, on_connection);
    if (rc != 0) {
        kvs_error("cannot listen on %s (router.metrics_listen): %s", listen, uv_strerror(rc));
        return rc;
    }
    h->listener.handle.data = h;
    h->listening = 1;
    kvs_info("serving metrics on %s://%s/metrics%s", tls != NULL ? "https" : "http", listen,
             auth != NULL ? " to users with the admin right" : "");
    return 0;
}

void router_http_stop(router_http_t *h)
{
    if (h == NULL || h->stopped)
        return;
    h->stopped = 1;
    if (h->listening)
        uv_close(&h->listener.handle, NULL);
    h->listening = 0;
    kvs_list_t *pos;
    KVS_LIST_EACH(pos, &h->conns)
    {
        kvs_conn_close(&KVS_LIST_ENTRY(pos, http_conn_t, link)->conn);
    }
    if (h->group.loop != NULL && !uv_is_closing((uv_handle_t *)&h->group.sweep))
        kvs_conn_group_close(&h->group);
}

void router_http_free(router_http_t *h)
{
    free(h);
}
