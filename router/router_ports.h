/*
 * router_ports: the client ports a node's router processes share.
 *
 * Every router process binds its own socket on router.listen (and
 * router.resp_listen) with SO_REUSEPORT; the kernel spreads incoming
 * connections over the sockets of that group by a hash of addresses and
 * ports, and a process that dies takes its socket out of the group with
 * it (connections not yet accepted on that socket are reset; new ones go
 * to the others). The master binds nothing and accepts nothing.
 *
 * Who else can join the group: Linux lets a socket join only when every
 * socket of the group set SO_REUSEPORT and belongs to the same effective
 * user. So a process of another user, or any process that bound the port
 * without SO_REUSEPORT, makes a router's bind fail with "address already
 * in use", which stops the node's start (or a restarted router, which
 * then retries with backoff). A process of the same user that also sets
 * SO_REUSEPORT (typically a second kvs node given the same port by
 * mistake) would silently take part of the clients. Binding a probe
 * without SO_REUSEPORT first would not close that gap: the probe must be
 * closed before the routers bind, and the port is free for anyone in
 * between. Instead the master, once every router listens, asks the kernel
 * (sock_diag, the interface of `ss -ltn`) for every socket listening on
 * the port and refuses to become ready when one that overlaps the
 * configured address is not one of its routers' (router_ports_foreign):
 * the node stops with a message naming the other socket's owner. A
 * second kvs node started on a port this one serves fails the same check
 * and stops; a non-kvs program of the same user joining later is not
 * detected (README, Operations).
 */
#ifndef ROUTER_PORTS_H
#define ROUTER_PORTS_H

#include "kvs_addr.h"
#include "kvs_config.h"
#include "kvs_conn.h"

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* Binds `addr` (TCP, resolved at once: start-up only) with SO_REUSEADDR
 * and SO_REUSEPORT, listens, and starts `l` accepting with `cb`. Sets
 * *inode to the socket's inode (how sock_diag names it). Returns 0 or a uv
 * error (UV_EADDRINUSE: the port is held by a socket that will not share
 * it); on error nothing is left open. l->handle.data is left for the
 * caller. */
int router_ports_listen(uv_loop_t *loop, const kvs_addr_t *addr, kvs_listener_t *l,
                        uv_connection_cb cb, uint64_t *inode);

/* A router process's own unix socket (router_procs_admin_addr), which a
 * process replacing it must take over while it still drains (a membership
 * change, router_master_change.c): bound under a temporary name in the same
 * directory and renamed over `path`, so new connections reach the new
 * process at once and never find no socket there. Listens and starts `l`
 * accepting with `cb`; sets *ino to the inode of the socket file. Returns
 * 0 or a uv error (nothing left behind). Closing `l` leaves the file: call
 * router_ports_unlink_own. */
int router_ports_listen_own(uv_loop_t *loop, const char *path, kvs_listener_t *l,
                            uv_connection_cb cb, uint64_t *ino);

/* Whether the file at `path` is still the socket bound as inode `ino`. */
int router_ports_is_own(const char *path, uint64_t ino);

/* Removes `path` if it is still the socket file router_ports_listen_own
 * made (inode `ino`), not one a successor renamed over it. */
void router_ports_unlink_own(const char *path, uint64_t ino);

/* A listening TCP socket as sock_diag reports it. */
typedef struct router_port_sock_s {
    struct sockaddr_storage addr; /* its local address and port */
    uint32_t uid;                 /* its owner */
    uint64_t inode;
} router_port_sock_t;

/* True when two listening addresses of the same port would share
 * connections: equal addresses (an IPv4 address and its IPv6-mapped form
 * are equal), or either is a wildcard that takes the other's connections
 * (:: takes every address, 0.0.0.0 the IPv4 ones and ::, not ::1). */
int router_ports_overlap(const struct sockaddr *a, const struct sockaddr *b);

/* Looks for a TCP socket of this network namespace listening on `addr`'s
 * port, overlapping `addr`, whose inode is not one of ours[0..n_ours).
 * Returns 1 and fills *who when there is one, 0 when there is none, or a
 * negative errno when the kernel cannot be asked (no sock_diag: the caller
 * warns and goes on). Synchronous: a netlink dump of listening sockets,
 * answered by the kernel at once; for the master's loop, which serves no
 * client. */
int router_ports_foreign(const struct sockaddr *addr, const uint64_t *ours, size_t n_ours,
                         router_port_sock_t *who);

/* Of the ports first..last, how many lie in the kernel's ephemeral range
 * `range` ("LOW HIGH", net.ipv4.ip_local_port_range) and are not in
 * `reserved` ("A,B-C", net.ipv4.ip_local_reserved_ports; NULL or ""
 * none); *low and *high get the range. 0 when `range` cannot be read. */
unsigned router_ports_ephemeral(unsigned first, unsigned last, const char *range,
                                const char *reserved, unsigned *low, unsigned *high);

/* Warns once when this node's workers' TCP ports (node.listen's, or its
 * map address's, PORT+N for its shards), or its client ports
 * (router.listen, resp_listen, metrics_listen), lie in the kernel's
 * ephemeral range: an outgoing connection of any process may hold one when
 * a worker or the node (re)starts, and it cannot listen until it is let
 * go. */
void router_ports_warn_ephemeral(const kvs_config_t *cfg);

#endif
