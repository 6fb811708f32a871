/*
 * router_procs: the contract between the kvs-router master and its router
 * processes (router.processes of them, nginx's master and workers).
 *
 * The master (kvs-router as the user or systemd starts it) parses the
 * config, takes the lock, supervises the kvs-node workers and starts N
 * router processes as
 *
 *     kvs-router --config PATH --processes N --master PID --generation G --router I
 *
 * with these descriptors:
 *
 *     3  report: why it exits, one line (a fatal error, a failed start)
 *     4  notify: "listening <inode> [<inode>]" once it accepts clients
 *     5  the lock file (data_dir/router.lock), held while it lives
 *     6  the config snapshot the master loaded (read with pread)
 *
 * and listens, besides the client ports, on its own unix socket
 * <data_dir>/routerI.sock (router_procs_admin_addr).
 *
 * I is the router's index (0..N-1), G its generation: how many times the
 * master started index I before (0, then 1 after its first restart...).
 *
 * What the index and generation mean to the router process:
 *  - its share of the node-wide limits (router_procs_share);
 *  - the numbers it hands out to clients that must be unique in the node
 *    (CLIENT ID, HSCAN cursors): id_base | counter, where the base holds
 *    index and generation above ROUTER_ID_BITS bits of counter, so router
 *    0 of generation 0 counts 1, 2, 3 as a single router always did, and
 *    no two processes (nor a process and its predecessor) hand out the
 *    same number;
 *  - its log lines, "router[I]" when N > 1.
 *
 * Pure functions: no state, no I/O besides router_procs_auto's CPU query.
 */
#ifndef ROUTER_PROCS_H
#define ROUTER_PROCS_H

#include "kvs_addr.h"
#include "kvs_config.h"

#include <stddef.h>
#include <stdint.h>

#define ROUTER_FD_REPORT 3
#define ROUTER_FD_NOTIFY 4
#define ROUTER_FD_LOCK 5
#define ROUTER_FD_CONFIG 6

#define ROUTER_PROCS_AUTO_MAX 8 /* router.processes: auto takes at most this many */
#define ROUTER_ID_BITS 40       /* counter bits of a client id or cursor number */
#define ROUTER_ID_COUNTER_MASK ((UINT64_C(1) << ROUTER_ID_BITS) - 1)
#define ROUTER_ID_LIMIT (UINT64_C(1) << 53) /* every number handed out is below it */
#define ROUTER_LISTEN_MAX 2 /* listeners of a router process: router.listen, resp_listen */

/* router.processes: `configured` when not 0, else (auto) the CPUs this
 * process may run on (its affinity mask, which containers and cpusets
 * narrow; the online CPUs if that cannot be read), at most
 * ROUTER_PROCS_AUTO_MAX, at least 1. */
uint32_t router_procs_count(uint32_t configured);

/* Router `index`'s part of a node-wide `total` split over `n` routers:
 * total / n, the first total % n routers one more, so the parts add up to
 * total; at least 1 (a router that may take nothing would refuse every
 * client the kernel hands it). */
uint64_t router_procs_part(uint64_t total, uint32_t index, uint32_t n);

/* Turns the node-wide limits in `cfg` (a router process's own copy) into
 * router `index`'s share of them: limits.max_clients (per listener),
 * limits.input_buffers and limits.output_buffers are split with
 * router_procs_part, input_buffers never below limits.max_frame (a frame
 * must always fit), output_buffers never below limits.client_output (a
 * client within its own bound must not have others closed). Per-connection
 * limits and limits.auth_failures_per_minute stay as they are (the latter
 * counts per router process: see README). n = 1 changes nothing. */
void router_procs_share(kvs_config_t *cfg, uint32_t index, uint32_t n);

/* This router process's own unix socket, "<data_dir>/router<index>.sock"
 * (the kvs protocol, for the master's metrics scrape and for operators),
 * as a unix kvs_addr. With `next`, the name a process of a membership
 * change's new generation listens on until the master renames it over the
 * first one (it serves by then): "<data_dir>/router<index>.next", as
 * long. Returns 0, or KVS_EINVAL when the path does not fit a unix socket
 * address (kvs_config refuses such a data_dir). */
int router_procs_admin_addr(const kvs_config_t *cfg, uint32_t index, int next, kvs_addr_t *out);

/* The base of the numbers router `index` (< KVS_ROUTER_PROCESSES_MAX) of
 * generation `gen` hands out: (index << 7 | gen % 128) << ROUTER_ID_BITS,
 * so every number stays below 2^53 (exact in a double, for clients in
 * languages whose numbers are doubles). */
uint64_t router_procs_id_base(uint32_t index, uint32_t gen);

/* The first generation of a membership change's new router processes,
 * given next[i] (i < n): the generation serving router process i's next
 * start would get (router_sup_generation), so its running process, if
 * any, is next[i] - 1. The result is at least every next[i] (numbers go
 * on from the serving ones'), and differs modulo 128 (what an id keeps of
 * it) from every next[i] - 1: new process i would otherwise hand out the
 * ids and cursor numbers of old process i, which serves on until it is
 * drained, once one router process was restarted 127 times more than
 * another. n <= KVS_ROUTER_PROCESSES_MAX (< 128), so one always exists. */
uint32_t router_procs_next_gen_base(const uint32_t *next, size_t n);

/* The router index a client id or cursor number was handed out by. */
uint32_t router_procs_id_router(uint64_t id);

/* Writes the notify line "listening <inode>[ <inode>]" (with its newline)
 * for n (1..ROUTER_LISTEN_MAX) listener socket inodes. Returns its length,
 * or 0 when it does not fit in len. */
size_t router_procs_listening_line(char *buf, size_t len, const uint64_t *inodes, size_t n);

/* Parses a notify line (without its newline). Returns 0 and sets
 * inodes[0..*n) for "listening <inode>[ <inode>]", KVS_EINVAL for
 * anything else. */
int router_procs_parse_listening(const char *line, uint64_t *inodes, size_t *n);

#endif
