/*
 * kvs_addr: text <-> address. Accepts the three forms users write:
 * "host:port", "[v6]:port" and "unix:/path". Only parsing; resolving and
 * binding are done by the caller (libuv), so this stays pure and testable.
 *
 * Parsing is complete, so a bad address is refused where it is written (a
 * config file, a command line) rather than when the process first binds or
 * connects: a bracketed host must be an IPv6 address (inet_pton, with an
 * optional %zone), a host of digits and dots must be an IPv4 address in
 * dotted-quad form (inet_pton: "300.1.1.1" and "127.1" are refused, though
 * getaddrinfo would read the latter), and anything else must be a DNS host
 * name: labels of 1 to 63 letters, digits, '-' or '_' (Docker and Compose
 * names use '_'), not starting or ending with '-', at most 253 bytes, an
 * optional trailing dot. Whether a name resolves is only known later.
 */
#include "kvs_addr.h"
#include "kvs_err.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HOST_NAME_MAX_LEN 253 /* DNS: 255 octets on the wire, 253 as text */
#define LABEL_MAX_LEN 63

static int parse_port(const char *p, int allow0, uint16_t *out)
{
    if (*p < '0' || *p > '9') /* strtol would take " 80" and "+80" */
        return -1;
    char *end;
    long v = strtol(p, &end, 10);
    if (*end != '\0' || v < (allow0 ? 0 : 1) || v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

/* A bracketed host: an IPv6 address, optionally with a %zone (interface). */
static const char *check_ipv6(const char *h)
{
    char addr[64];
    const char *pct = strchr(h, '%');
    size_t n = pct != NULL ? (size_t)(pct - h) : strlen(h);
    if (n >= sizeof(addr))
        return "not a valid IPv6 address";
    memcpy(addr, h, n);
    addr[n] = '\0';
    struct in6_addr a6;
    if (inet_pton(AF_INET6, addr, &a6) != 1)
        return "not a valid IPv6 address";
    if (pct != NULL &&
        (pct[1] == '\0' || strspn(pct + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"
                                           "WXYZ0123456789_.-") != strlen(pct + 1)))
        return "not a valid IPv6 zone after '%'";
    return NULL;
}

/* One label of a host name, [p, p+n). */
static const char *check_label(const char *p, size_t n)
{
    if (n == 0)
        return "empty label in the host name (two dots in a row, or a leading dot)";
    if (n > LABEL_MAX_LEN)
        return "a host name label is longer than 63 bytes";
    if (p[0] == '-' || p[n - 1] == '-')
        return "a host name label must not start or end with '-'";
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return "a host name may only contain letters, digits, '-', '_' and '.'";
    }
    return NULL;
}

/* An unbracketed host: a dotted-quad IPv4 address or a DNS name. */
static const char *check_host(const char *h)
{
    size_t len = strlen(h);
    if (strspn(h, "0123456789.") == len) {
        struct in_addr a4;
        return inet_pton(AF_INET, h, &a4) == 1
                   ? NULL
                   : "not a valid IPv4 address (four numbers 0-255, as in 10.0.0.1)";
    }
    if (len > 0 && h[len - 1] == '.')
        len--; /* a fully qualified name */
    if (len > HOST_NAME_MAX_LEN)
        return "host name is too long (at most 253 bytes)";
    const char *p = h, *end = h + len;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t n = dot != NULL ? (size_t)(dot - p) : (size_t)(end - p);
        const char *why = check_label(p, n);
        if (why != NULL)
            return why;
        p += n + 1;
    }
    return NULL;
}

static int parse_unix(const char *s, kvs_addr_t *out, const char **why)
{
    const char *path = s + 5;
    if (*path == '\0') {
        *why = "unix socket path is empty";
        return KVS_EINVAL;
    }
    if (strlen(path) >= sizeof(out->path)) {
        *why = "unix socket path is longer than 107 bytes";
        return KVS_EINVAL;
    }
    out->is_unix = 1;
    strcpy(out->path, path);
    return 0;
}

/* Splits "host:port" or "[v6]:port": the host is [*host, *host + *hostlen),
 * *colon points at the ':' before the port. */
static const char *split_host(const char *s, const char **host, size_t *hostlen, const char **colon)
{
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL)
            return "missing ']' after the IPv6 address";
        if (close == s + 1)
            return "empty address in []";
        if (close[1] != ':')
            return "missing :PORT";
        *host = s + 1;
        *hostlen = (size_t)(close - *host);
        *colon = close + 1;
        return NULL;
    }
    *colon = strrchr(s, ':');
    if (*colon == NULL)
        return "missing :PORT";
    if (*colon == s)
        return "missing host (use 0.0.0.0:PORT for every interface)";
    *host = s;
    *hostlen = (size_t)(*colon - s);
    if (memchr(s, ':', *hostlen) != NULL)
        return "an IPv6 address must be in brackets, as in [::1]:9527";
    return NULL;
}

int kvs_addr_parse_why(const char *s, int allow_port0, kvs_addr_t *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    if (strncmp(s, "unix:", 5) == 0)
        return parse_unix(s, out, why);
    const char *host = NULL, *colon = NULL;
    size_t hostlen = 0;
    if (strpbrk(s, " \t\r\n") != NULL)
        *why = "spaces are not allowed";
    else
        *why = split_host(s, &host, &hostlen, &colon);
    if (*why == NULL && hostlen >= sizeof(out->host))
        *why = "host name is too long (at most 253 bytes)";
    if (*why == NULL && parse_port(colon + 1, allow_port0, &out->port) != 0)
        *why = allow_port0 ? "port must be 0-65535" : "port must be 1-65535";
    if (*why == NULL) {
        memcpy(out->host, host, hostlen);
        out->host[hostlen] = '\0';
        *why = s[0] == '[' ? check_ipv6(out->host) : check_host(out->host);
    }
    if (*why != NULL) {
        memset(out, 0, sizeof(*out));
        return KVS_EINVAL;
    }
    return 0;
}

int kvs_addr_parse(const char *s, int allow_port0, kvs_addr_t *out, char *err, size_t errlen)
{
    const char *why = NULL;
    int rc = kvs_addr_parse_why(s, allow_port0, out, &why);
    if (rc != 0 && err != NULL && errlen > 0)
        snprintf(err, errlen, "%s (got \"%s\")", why, s);
    return rc;
}

int kvs_addr_host_arg(const char *arg, char *out, size_t cap)
{
    size_t n = strlen(arg);
    if (n > 2 && arg[0] == '[' && arg[n - 1] == ']') { /* "[::1]": the address inside */
        arg++;
        n -= 2;
    }
    if (n == 0 || n >= cap)
        return -1;
    memcpy(out, arg, n);
    out[n] = '\0';
    return 0;
}

const char *kvs_addr_format(const kvs_addr_t *a, char *buf, size_t len)
{
    if (a->is_unix)
        snprintf(buf, len, "unix:%s", a->path);
    else if (strchr(a->host, ':') != NULL)
        snprintf(buf, len, "[%s]:%u", a->host, a->port);
    else
        snprintf(buf, len, "%s:%u", a->host, a->port);
    return buf;
}

/* A host as an address: 4 (IPv4, also IPv4-mapped IPv6) or 6 with its
 * bytes in out[], 'L' for localhost, 0 for a name (or a zoned address). */
static int host_kind(const char *host, uint8_t out[16])
{
    struct in6_addr v6;
    if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0)
        return 'L';
    if (inet_pton(AF_INET, host, out) == 1)
        return 4;
    if (inet_pton(AF_INET6, host, &v6) != 1)
        return 0;
    if (IN6_IS_ADDR_V4MAPPED(&v6)) {
        memcpy(out, &v6.s6_addr[12], 4);
        return 4;
    }
    memcpy(out, &v6, 16);
    return 6;
}

/* Whether an address kind/bytes pair is one "localhost" names. */
static int localhost_is(int kind, const uint8_t *b)
{
    static const uint8_t v4[4] = {127, 0, 0, 1};
    return (kind == 4 && memcmp(b, v4, 4) == 0) ||
           (kind == 6 && memcmp(b, &in6addr_loopback, 16) == 0);
}

int kvs_addr_same_host(const kvs_addr_t *a, const kvs_addr_t *b)
{
    uint8_t x[16], y[16];
    if (a->is_unix || b->is_unix)
        return 0;
    int kx = host_kind(a->host, x), ky = host_kind(b->host, y);
    if (kx == 'L' || ky == 'L')
        return kx == ky || (kx == 'L' ? localhost_is(ky, y) : localhost_is(kx, x));
    if (kx != 0 || ky != 0)
        return kx == ky && memcmp(x, y, kx == 4 ? 4 : 16) == 0;
    size_t lx = strlen(a->host), ly = strlen(b->host);
    lx -= lx > 1 && a->host[lx - 1] == '.';
    ly -= ly > 1 && b->host[ly - 1] == '.';
    return lx == ly && strncasecmp(a->host, b->host, lx) == 0;
}

int kvs_addr_is_unspecified(const kvs_addr_t *a)
{
    uint8_t x[16];
    static const uint8_t zero[16] = {0};
    int k = a->is_unix ? 0 : host_kind(a->host, x);
    return (k == 4 || k == 6) && memcmp(x, zero, k == 4 ? 4 : 16) == 0;
}

/* Whether a listener on the unspecified address of kind `kind` (else
 * none) takes the port of one on an address of kind `other`. */
static int unspecified_covers(int kind, const uint8_t *x, int other)
{
    static const uint8_t zero[16] = {0};
    if ((kind != 4 && kind != 6) || memcmp(x, zero, kind == 4 ? 4 : 16) != 0)
        return 0;
    return kind == 6 || other == 4;
}

int kvs_addr_listeners_clash(const kvs_addr_t *a, const kvs_addr_t *b)
{
    uint8_t x[16], y[16];
    if (a->is_unix || b->is_unix || a->port != b->port)
        return 0;
    if (kvs_addr_same_host(a, b))
        return 1;
    int kx = host_kind(a->host, x), ky = host_kind(b->host, y);
    return unspecified_covers(kx, x, ky) || unspecified_covers(ky, y, kx);
}

int kvs_addr_is_loopback(const kvs_addr_t *a)
{
    struct in_addr v4;
    struct in6_addr v6;
    if (a->is_unix || strcasecmp(a->host, "localhost") == 0 ||
        strcasecmp(a->host, "localhost.") == 0)
        return 1;
    if (inet_pton(AF_INET, a->host, &v4) == 1)
        return (ntohl(v4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, a->host, &v6) != 1)
        return 0;
    /* ::ffff:127.x.y.z is 127.x.y.z, as a dual-stack socket sees it */
    return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
}

void kvs_addr_peer_host(const char *peer, char *ip, size_t len)
{
    const char *colon = strrchr(peer, ':');
    size_t n = colon != NULL ? (size_t)(colon - peer) : strlen(peer);
    char text[INET6_ADDRSTRLEN];
    struct in6_addr a;
    if (peer[0] == '[' && n >= 2 && peer[n - 1] == ']') {
        peer++;
        n -= 2;
    }
    snprintf(ip, len, "%.*s", (int)n, peer);
    if (n >= sizeof(text) || inet_pton(AF_INET6, ip, &a) != 1 || IN6_IS_ADDR_LOOPBACK(&a))
        return;
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
        if (inet_ntop(AF_INET, &a.s6_addr[12], text, sizeof(text)) != NULL)
            snprintf(ip, len, "%s", text);
        return;
    }
    memset(&a.s6_addr[8], 0, 8);
    if (inet_ntop(AF_INET6, &a, text, sizeof(text)) != NULL)
        snprintf(ip, len, "%s/64", text);
}
