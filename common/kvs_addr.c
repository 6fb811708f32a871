/*
 * kvs_addr: text <-> address. Accepts the three forms users write:
 * "host:port", "[v6]:port" and "unix:/path". Only parsing; resolving and
 * binding are done by the caller (libuv), so this stays pure and testable.
 */
#include "kvs_addr.h"
#include "kvs_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *what, const char *s)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s (got \"%s\")", what, s);
    return KVS_EINVAL;
}

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

int kvs_addr_parse(const char *s, int allow_port0, kvs_addr_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (strncmp(s, "unix:", 5) == 0) {
        const char *path = s + 5;
        if (*path == '\0')
            return fail(err, errlen, "unix socket path is empty", s);
        if (strlen(path) >= sizeof(out->path))
            return fail(err, errlen, "unix socket path is longer than 107 bytes", s);
        out->is_unix = 1;
        strcpy(out->path, path);
        return 0;
    }
    const char *colon;
    size_t hostlen;
    const char *host = s;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return fail(err, errlen, "expected [IPV6]:PORT", s);
        host = s + 1;
        hostlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return fail(err, errlen, "expected HOST:PORT", s);
        hostlen = (size_t)(colon - s);
        if (memchr(s, ':', hostlen) != NULL)
            return fail(err, errlen, "IPv6 addresses need brackets: [ADDR]:PORT", s);
    }
    if (hostlen == 0)
        return fail(err, errlen, "host is empty; expected HOST:PORT", s);
    if (hostlen >= sizeof(out->host))
        return fail(err, errlen, "host name is too long", s);
    if (parse_port(colon + 1, allow_port0, &out->port) != 0)
        return fail(err, errlen, allow_port0 ? "port must be 0-65535" : "port must be 1-65535", s);
    memcpy(out->host, host, hostlen);
    out->host[hostlen] = '\0';
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
