/*
 * router_ports: binding a shared (SO_REUSEPORT) listener, and asking the
 * kernel who else listens on a port (see router_ports.h for why).
 *
 * libuv 1.44 (Debian 12) has no UV_TCP_REUSEPORT (1.49 added it), so the
 * socket is made here, options set, bound, and handed to libuv with
 * uv_tcp_open; from then on libuv owns the descriptor. A process's own
 * unix socket is made here too (bound under a temporary name, renamed over
 * its path, handed to libuv with uv_pipe_open, which then knows no name to
 * remove when it closes).
 *
 * The census uses NETLINK_SOCK_DIAG with an inet_diag_req_v2 per address
 * family asking for TCP sockets in state LISTEN; the kernel's dump has no
 * port filter without bytecode, so the port is matched here (a host has
 * few listening sockets). The reply arrives as netlink messages ending
 * with NLMSG_DONE; a receive timeout guards against a kernel that never
 * answers.
 */
#include "router_ports.h"
#include "kvs_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DIAG_TCP_LISTEN 10 /* the kernel's TCP_LISTEN state number */
#define DIAG_BUF 16384

/* ---- binding ------------------------------------------------------------------ */

/* A bound, not yet listening socket with SO_REUSEADDR and SO_REUSEPORT.
 * Returns the descriptor or a negative errno. */
static int shared_socket(const struct sockaddr_storage *ss, uint64_t *inode)
{
    socklen_t len =
        ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int on = 1;
    struct stat st;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 ||
        bind(fd, (const struct sockaddr *)ss, len) != 0 || fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *inode = (uint64_t)st.st_ino;
    return fd;
}

int router_ports_listen(uv_loop_t *loop, const kvs_addr_t *addr, kvs_listener_t *l,
                        uv_connection_cb cb, uint64_t *inode)
{
    struct sockaddr_storage ss;
    memset(l, 0, sizeof(*l));
    if (addr->is_unix)
        return UV_EINVAL; /* router listeners are TCP (config: HOST:PORT) */
    int rc = kvs_resolve(loop, addr, &ss);
    if (rc != 0)
        return rc;
    int fd = shared_socket(&ss, inode);
    if (fd < 0)
        return fd; /* uv errors are negative errnos on unix */
    rc = uv_tcp_init(loop, &l->tcp);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    rc = uv_tcp_open(&l->tcp, fd);
    if (rc != 0)
        close(fd);
    if (rc == 0)
        rc = uv_listen(&l->stream, 511, cb); /* the handle owns fd now */
    if (rc != 0)
        uv_close(&l->handle, NULL);
    return rc;
}

/* ---- a process's own unix socket, handed over ------------------------------------ */

/* Binds a fresh unix socket under `tmp`, then renames it over `path`.
 * Returns the descriptor, or a negative errno (nothing left behind). */
static int bind_renamed(const char *path, const char *tmp, uint64_t *ino)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    struct stat st;
    if (strlen(tmp) >= sizeof(sun.sun_path))
        return -ENAMETOOLONG;
    memcpy(sun.sun_path, tmp, strlen(tmp) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (unlink(tmp) != 0 && errno != ENOENT) /* left by a crashed process of this pid */
        goto fail;
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0)
        goto fail;
    /* The node's user only (its directory is private too); then the
     * name, atomically: whoever connects reaches the old socket or this. */
    if (chmod(tmp, 0600) != 0 || rename(tmp, path) != 0 || stat(path, &st) != 0) {
        int e = errno;
        unlink(tmp);
        close(fd);
        return -e;
    }
    *ino = (uint64_t)st.st_ino;
    return fd;
fail:;
    int e = errno;
    close(fd);
    return -e;
}

int router_ports_listen_own(uv_loop_t *loop, const char *path, kvs_listener_t *l,
                            uv_connection_cb cb, uint64_t *ino)
{
    char tmp[sizeof(((struct sockaddr_un *)0)->sun_path)], dir[sizeof(tmp)];
    memset(l, 0, sizeof(*l));
    const char *slash = strrchr(path, '/');
    int n = slash == NULL ? 0 : (int)(slash - path) + 1;
    if ((size_t)n >= sizeof(dir))
        return UV_ENAMETOOLONG;
    memcpy(dir, path, (size_t)n);
    dir[n] = '\0';
    /* ".r<pid>" is never longer than "routerI.sock": it fits where the path does. */
    int len = snprintf(tmp, sizeof(tmp), "%s.r%ld", dir, (long)getpid());
    if (len < 0 || (size_t)len >= sizeof(tmp))
        return UV_ENAMETOOLONG;
    int fd = bind_renamed(path, tmp, ino);
    if (fd < 0)
        return fd;
    int rc = uv_pipe_init(loop, &l->pipe, 0);
    if (rc != 0) {
        router_ports_unlink_own(path, *ino);
        close(fd);
        return rc;
    }
    rc = uv_pipe_open(&l->pipe, fd); /* no name: closing it removes nothing */
    if (rc != 0)
        close(fd);
    if (rc == 0)
        rc = uv_listen(&l->stream, 511, cb);
    if (rc != 0) {
        router_ports_unlink_own(path, *ino);
        uv_close(&l->handle, NULL);
    }
    return rc;
}

int router_ports_is_own(const char *path, uint64_t ino)
{
    struct stat st;
    return stat(path, &st) == 0 && (uint64_t)st.st_ino == ino;
}

void router_ports_unlink_own(const char *path, uint64_t ino)
{
    if (router_ports_is_own(path, ino))
        unlink(path);
}

/* ---- who else listens -------------------------------------------------------------- */

static int is_any(const struct sockaddr *a)
{
    if (a->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
    if (a->sa_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr);
    return 0;
}

/* The IPv4 address of `a` (IPv4, or IPv6-mapped IPv4): 1 and *v4 set, or 0. */
static int v4_of(const struct sockaddr *a, struct in_addr *v4)
{
    if (a->sa_family == AF_INET) {
        *v4 = ((const struct sockaddr_in *)a)->sin_addr;
        return 1;
    }
    const struct in6_addr *v6 = &((const struct sockaddr_in6 *)a)->sin6_addr;
    if (a->sa_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(v6))
        return 0;
    memcpy(&v4->s_addr, &v6->s6_addr[12], 4);
    return 1;
}

/* Whether wildcard `any` takes connections to `b`: an IPv6 wildcard takes
 * every address (a dual-stack socket, IPV6_V6ONLY off, takes IPv4 too;
 * the census looks at IPV6_V6ONLY itself), an IPv4 one only IPv4
 * addresses, their IPv6-mapped forms and the other wildcards. */
static int any_takes(const struct sockaddr *any, const struct sockaddr *b)
{
    struct in_addr v4;
    return any->sa_family == AF_INET6 || is_any(b) || v4_of(b, &v4);
}

int router_ports_overlap(const struct sockaddr *a, const struct sockaddr *b)
{
    if (is_any(a))
        return any_takes(a, b);
    if (is_any(b))
        return any_takes(b, a);
    struct in_addr x, y;
    if (v4_of(a, &x) && v4_of(b, &y))
        return x.s_addr == y.s_addr;
    if (a->sa_family != AF_INET6 || b->sa_family != AF_INET6)
        return 0;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

static uint16_t port_of(const struct sockaddr *a)
{
    if (a->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)a)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
}

/* One listening socket of the dump, as a router_port_sock_t. */
static void diag_sock(const struct inet_diag_msg *d, router_port_sock_t *s)
{
    memset(s, 0, sizeof(*s));
    if (d->idiag_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&s->addr;
        in->sin_family = AF_INET;
        in->sin_port = d->id.idiag_sport;
        memcpy(&in->sin_addr, d->id.idiag_src, 4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&s->addr;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = d->id.idiag_sport;
        memcpy(&in6->sin6_addr, d->id.idiag_src, 16);
    }
    s->uid = d->idiag_uid;
    s->inode = d->idiag_inode;
}

static int diag_request(int fd, int family)
{
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 r;
    } req;
    memset(&req, 0, sizeof(req));
    req.nlh.nlmsg_len = sizeof(req);
    req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.r.sdiag_family = (uint8_t)family;
    req.r.sdiag_protocol = IPPROTO_TCP;
    req.r.idiag_states = 1u << DIAG_TCP_LISTEN;
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
    ssize_t n;
    do
        n = sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&nl, sizeof(nl));
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(req) ? 0 : n < 0 ? -errno : -EIO;
}

typedef struct {
    const struct sockaddr *addr;
    const uint64_t *ours;
    size_t n_ours;
    router_port_sock_t *who;
    int found;
} census_t;

/* Whether the dump's IPv6 socket `h` has IPV6_V6ONLY set (the kernel adds
 * INET_DIAG_SKV6ONLY to every IPv6 listener's entry, as `ss` shows it). */
static int diag_v6only(const struct nlmsghdr *h)
{
    const struct inet_diag_msg *d = NLMSG_DATA(h);
    if (d->idiag_family != AF_INET6)
        return 0;
    int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof(*d));
    for (const struct rtattr *a = (const struct rtattr *)(d + 1); RTA_OK(a, len);
         a = RTA_NEXT(a, len))
        if (a->rta_type == INET_DIAG_SKV6ONLY && RTA_PAYLOAD(a) >= 1)
            return *(const uint8_t *)RTA_DATA(a) != 0;
    return 0;
}

/* Looks at one socket of the dump. */
static void census_one(census_t *c, const struct nlmsghdr *h)
{
    router_port_sock_t s;
    struct in_addr v4;
    diag_sock(NLMSG_DATA(h), &s);
    const struct sockaddr *sa = (const struct sockaddr *)&s.addr;
    if (c->found || port_of(sa) != port_of(c->addr) || !router_ports_overlap(sa, c->addr))
        return;
    if (v4_of(c->addr, &v4) && diag_v6only(h))
        return; /* an IPv6-only socket takes no IPv4 connection */
    for (size_t i = 0; i < c->n_ours; i++)
        if (c->ours[i] == s.inode)
            return;
    *c->who = s;
    c->found = 1;
}

/* Reads the dump of one request to its end. Returns 0 or a negative errno. */
static int diag_read(int fd, census_t *c)
{
    static char buf[DIAG_BUF] __attribute__((aligned(NLMSG_ALIGNTO)));
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        int len = (int)n; /* at most DIAG_BUF */
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, len);
             h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                return e->error != 0 ? e->error : -EIO;
            }
            if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
                census_one(c, h);
        }
    }
}

int router_ports_foreign(const struct sockaddr *addr, const uint64_t *ours, size_t n_ours,
                         router_port_sock_t *who)
{
    census_t c = {addr, ours, n_ours, who, 0};
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0)
        return -errno;
    struct timeval tv = {.tv_sec = 2};
    int rc = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 ? 0 : -errno;
    static const int families[] = {AF_INET, AF_INET6};
    for (size_t i = 0; rc == 0 && i < 2 && !c.found; i++) {
        rc = diag_request(fd, families[i]);
        if (rc == 0)
            rc = diag_read(fd, &c);
    }
    close(fd);
    return rc != 0 ? rc : c.found;
}

/* ---- the ephemeral range ----------------------------------------------------------- */

/* Whether `port` is in `reserved`'s list ("A,B-C"). */
static int reserved_has(const char *reserved, unsigned port)
{
    for (const char *p = reserved; p != NULL && *p != '\0';) {
        char *end;
        unsigned long a = strtoul(p, &end, 10), b = a;
        if (end == p)
            return 0;
        if (*end == '-') {
            const char *q = end + 1;
            b = strtoul(q, &end, 10);
            if (end == q)
                return 0;
        }
        if (port >= a && port <= b)
            return 1;
        p = *end == ',' ? end + 1 : end;
        if (*end != ',')
            break;
    }
    return 0;
}

unsigned router_ports_ephemeral(unsigned first, unsigned last, const char *range,
                                const char *reserved, unsigned *low, unsigned *high)
{
    if (range == NULL || sscanf(range, "%u %u", low, high) != 2 || *low > *high)
        return 0;
    unsigned n = 0;
    for (unsigned p = first; p <= last && p <= 65535; p++)
        n += p >= *low && p <= *high && !reserved_has(reserved, p);
    return n;
}

/* The first line of a /proc file into buf (cap), or "" when unreadable. */
static const char *read_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "re");
    buf[0] = '\0';
    if (f == NULL)
        return buf;
    if (fgets(buf, (int)cap, f) == NULL)
        buf[0] = '\0';
    fclose(f);
    return buf;
}

/* A client port (router.listen, ...) `text` in the ephemeral range: said. */
static void warn_listener(const char *key, const char *text, const char *range,
                          const char *reserved)
{
    kvs_addr_t a;
    unsigned low = 0, high = 0;
    if (text == NULL || text[0] == '\0' || kvs_addr_parse(text, 1, &a, NULL, 0) != 0 || a.is_unix ||
        router_ports_ephemeral(a.port, a.port, range, reserved, &low, &high) == 0)
        return;
    kvs_warn("%s: port %u lies in the kernel's ephemeral port range (%u-%u, "
             "net.ipv4.ip_local_port_range): an outgoing connection of any process may hold it "
             "when kvs (re)starts, and kvs cannot listen on it until it is let go; choose a port "
             "below %u, or reserve it (net.ipv4.ip_local_reserved_ports)",
             key, a.port, low, high, low);
}

void router_ports_warn_ephemeral(const kvs_config_t *cfg)
{
    char range[64], reserved[4096];
    read_line("/proc/sys/net/ipv4/ip_local_port_range", range, sizeof(range));
    read_line("/proc/sys/net/ipv4/ip_local_reserved_ports", reserved, sizeof(reserved));
    warn_listener("router.listen", cfg->router_listen, range, reserved);
    warn_listener("router.resp_listen", cfg->resp_listen, range, reserved);
    warn_listener("router.metrics_listen", cfg->metrics_listen, range, reserved);
    const char *base = cfg->node_listen[0] != '\0' ? cfg->node_listen
                       : cfg->self != NULL         ? cfg->self->address
                                                   : NULL;
    kvs_addr_t a;
    if (base == NULL || kvs_addr_parse(base, 1, &a, NULL, 0) != 0 || a.is_unix)
        return; /* workers listen on their unix sockets only */
    unsigned first = 0, last = 0, n = 0, low = 0, high = 0;
    for (uint32_t s = 0; s < cfg->shards; s++) {
        unsigned port = a.port + s;
        if (!kvs_config_shard_is_local(cfg, s) ||
            router_ports_ephemeral(port, port, range, reserved, &low, &high) == 0)
            continue;
        if (n++ == 0)
            first = port;
        last = port;
    }
    if (n == 0)
        return;
    kvs_warn("%s: %u worker port(s) in %u..%u lie in the kernel's ephemeral port range "
             "(%u-%u, net.ipv4.ip_local_port_range): an outgoing connection of any process may "
             "hold one when a worker (re)starts, and the worker cannot listen until it is let "
             "go; choose ports below %u, or reserve them (net.ipv4.ip_local_reserved_ports)",
             cfg->node_listen[0] != '\0' ? "node.listen" : "this node's address in cluster.nodes",
             n, first, last, low, high, low);
}
