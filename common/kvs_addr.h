/*
 * kvs_addr: parsing of listen/connect addresses as written in config and on
 * the command line: "HOST:PORT", "[IPV6]:PORT", or "unix:/path/to.sock".
 */
#ifndef KVS_ADDR_H
#define KVS_ADDR_H

#include <stddef.h>
#include <stdint.h>

typedef struct kvs_addr_s {
    int is_unix;    /* 1: `path` is set; 0: `host`/`port` are set */
    char host[256]; /* numeric address or name, without brackets */
    uint16_t port;
    char path[108]; /* sun_path limit */
} kvs_addr_t;

/* Parses `s`. Returns 0, or KVS_EINVAL with a reason in err[0..errlen) such
 * as "port must be 1-65535 (got \"h:0\")". Port 0 is accepted only when
 * allow_port0. The host is checked completely (see kvs_addr.c): an IPv4
 * address must be a valid dotted quad, a bracketed one a valid IPv6
 * address, anything else a syntactically valid host name. err may be NULL
 * when errlen is 0. On error *out is zeroed. */
int kvs_addr_parse(const char *s, int allow_port0, kvs_addr_t *out, char *err, size_t errlen);

/* Same, but on KVS_EINVAL sets *why to the bare reason (a static string,
 * without the input), for callers that word the message themselves. */
int kvs_addr_parse_why(const char *s, int allow_port0, kvs_addr_t *out, const char **why);

/* True for a unix socket, "localhost", 127.0.0.0/8 (also IPv4-mapped,
 * ::ffff:127.0.0.0/104) and ::1: addresses only this machine can reach. */
int kvs_addr_is_loopback(const kvs_addr_t *a);

/* True for the unspecified address (0.0.0.0, ::, ::ffff:0.0.0.0): a
 * listener's "every address", which names no host to connect to (a
 * connection to it reaches the connecting machine itself). */
int kvs_addr_is_unspecified(const kvs_addr_t *a);

/* Whether two TCP addresses' hosts name the same one: IP addresses are
 * compared as addresses ("::ffff:127.0.0.1" is 127.0.0.1, "0:0::1" is
 * ::1), "localhost" (with or without its final dot) is 127.0.0.1 and ::1,
 * and host names are compared without regard to case or a final dot.
 * Names are never resolved: two names of one host are not recognized. */
int kvs_addr_same_host(const kvs_addr_t *a, const kvs_addr_t *b);

/* Whether TCP listeners on `a` and `b` would want one port: the same port
 * and the same host (kvs_addr_same_host), or one of them an unspecified
 * address that covers the other (0.0.0.0: every IPv4 address; "::",
 * dual-stack: every address). A name and an address, or 0.0.0.0 and a
 * name, are not taken to clash: names are never resolved. */
int kvs_addr_listeners_clash(const kvs_addr_t *a, const kvs_addr_t *b);

/* A host as a tool's --host option gives it, into out[0..cap): "[::1]",
 * written as addresses are written with a port, loses its brackets; any
 * other text is copied. Returns 0, or -1 when it is empty or does not fit
 * (out is then untouched). */
int kvs_addr_host_arg(const char *arg, char *out, size_t cap);

/* Formats an address back to text ("127.0.0.1:9527", "[::1]:9527",
 * "unix:/x.sock"). Returns `buf`. */
const char *kvs_addr_format(const kvs_addr_t *a, char *buf, size_t len);

/* The host behind a peer's "address:port" (kvs_conn's peer), as limits
 * that count per client host count it: "1.2.3.4" of "1.2.3.4:5678" and
 * of "[::ffff:1.2.3.4]:5678" (an IPv4 client of a dual-stack listener),
 * the /64 of an IPv6 address ("2001:db8:1:2::/64" of
 * "[2001:db8:1:2::9]:5678": a host is given a /64 at least, and one
 * address per attempt would dodge any per-address limit), "::1" of
 * "[::1]:5678"; other peers as they are. Written to ip[0..len). */
void kvs_addr_peer_host(const char *peer, char *ip, size_t len);

#endif
