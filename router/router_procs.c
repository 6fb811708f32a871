/*
 * router_procs: the arithmetic and the notify line of the master/router
 * process contract (router_procs.h). Kept apart from the processes
 * themselves so it can be tested without starting any.
 */
#include "router_procs.h"

#include "kvs_err.h"

#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(KVS_ROUTER_PROCESSES_MAX <= 64, "router index must fit in 6 bits of an id");

uint32_t router_procs_count(uint32_t configured)
{
    if (configured > 0)
        return configured;
    long cpus = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        cpus = CPU_COUNT(&set);
    if (cpus <= 0)
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus <= 0)
        return 1;
    return cpus > ROUTER_PROCS_AUTO_MAX ? ROUTER_PROCS_AUTO_MAX : (uint32_t)cpus;
}

uint64_t router_procs_part(uint64_t total, uint32_t index, uint32_t n)
{
    if (n == 0)
        return total;
    uint64_t part = total / n + (index < total % n ? 1 : 0);
    return part > 0 ? part : 1;
}

void router_procs_share(kvs_config_t *cfg, uint32_t index, uint32_t n)
{
    if (n <= 1)
        return;
    cfg->max_clients = (uint32_t)router_procs_part(cfg->max_clients, index, n);
    uint64_t in = router_procs_part(cfg->input_buffers, index, n);
    cfg->input_buffers = in < cfg->max_frame ? cfg->max_frame : in;
    uint64_t out = router_procs_part(cfg->output_buffers, index, n);
    cfg->output_buffers = out < cfg->client_output ? cfg->client_output : out;
}

int router_procs_admin_addr(const kvs_config_t *cfg, uint32_t index, int next, kvs_addr_t *out)
{
    memset(out, 0, sizeof(*out));
    out->is_unix = 1;
    int n = snprintf(out->path, sizeof(out->path), "%s/router%u.%s", cfg->data_dir, index,
                     next ? "next" : "sock");
    return n > 0 && (size_t)n < sizeof(out->path) ? 0 : KVS_EINVAL;
}

uint64_t router_procs_id_base(uint32_t index, uint32_t gen)
{
    return ((uint64_t)(index & 0x3f) << 7 | (gen & 0x7f)) << ROUTER_ID_BITS;
}

uint32_t router_procs_next_gen_base(const uint32_t *next, size_t n)
{
    uint32_t base = 0;
    for (size_t i = 0; i < n; i++)
        base = next[i] > base ? next[i] : base;
    for (;;) {
        size_t i = 0;
        while (i < n && (next[i] == 0 || ((next[i] - 1) & 0x7f) != (base & 0x7f)))
            i++;
        if (i == n)
            return base;
        base++;
    }
}

uint32_t router_procs_id_router(uint64_t id)
{
    return (uint32_t)(id >> (ROUTER_ID_BITS + 7));
}

size_t router_procs_listening_line(char *buf, size_t len, const uint64_t *inodes, size_t n)
{
    if (n == 0 || n > ROUTER_LISTEN_MAX)
        return 0;
    int k = n == 1
                ? snprintf(buf, len, "listening %" PRIu64 "\n", inodes[0])
                : snprintf(buf, len, "listening %" PRIu64 " %" PRIu64 "\n", inodes[0], inodes[1]);
    return k > 0 && (size_t)k < len ? (size_t)k : 0;
}

int router_procs_parse_listening(const char *line, uint64_t *inodes, size_t *n)
{
    static const char head[] = "listening";
    if (strncmp(line, head, sizeof(head) - 1) != 0)
        return KVS_EINVAL;
    const char *p = line + sizeof(head) - 1;
    *n = 0;
    while (*p == ' ' && *n < ROUTER_LISTEN_MAX) {
        p++;
        if (*p < '0' || *p > '9')
            return KVS_EINVAL;
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        inodes[(*n)++] = (uint64_t)v;
        p = end;
    }
    return *p == '\0' && *n > 0 ? 0 : KVS_EINVAL;
}
