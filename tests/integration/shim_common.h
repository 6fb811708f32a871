/*
 * shim_common: what the fault-injection shims (enomem_shim.c, eio_shim.c)
 * share: reading their environment, telling which kvs process they are
 * loaded in, the time window they inject in, and the hash that decides a
 * call by a rate. Nothing here allocates (the allocation shim runs it
 * before it can serve memory).
 */
#ifndef KVS_SHIM_COMMON_H
#define KVS_SHIM_COMMON_H

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline int64_t shim_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Unsigned decimal of getenv(prefix name), or dflt when unset or not a
 * number. */
static inline uint64_t shim_env_u64(const char *prefix, const char *name, uint64_t dflt)
{
    char key[96];
    size_t p = strlen(prefix), n = strlen(name);
    if (p + n >= sizeof(key))
        return dflt;
    memcpy(key, prefix, p);
    memcpy(key + p, name, n + 1);
    const char *s = getenv(key);
    if (s == NULL || *s == '\0')
        return dflt;
    uint64_t v = 0;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return dflt;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    return v;
}

/* Whether the comma list `list` names `name`. */
static inline int shim_listed(const char *list, const char *name)
{
    size_t want = strlen(name);
    for (const char *p = list; *p != '\0';) {
        size_t len = strcspn(p, ",");
        if (len == want && strncmp(p, name, len) == 0)
            return 1;
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* This process's role from /proc/self/cmdline: 'm' master, 'r' router
 * process, 'n' worker, 0 anything else. */
static inline char shim_my_role(void)
{
    static char buf[4096];
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (got <= 0)
        return 0;
    buf[got] = '\0';
    const char *base = strrchr(buf, '/');
    base = base != NULL ? base + 1 : buf;
    if (strncmp(base, "kvs-node", 8) == 0)
        return 'n';
    if (strncmp(base, "kvs-router", 10) != 0)
        return 0;
    for (const char *a = buf; a < buf + got; a += strlen(a) + 1)
        if (strcmp(a, "--router") == 0)
            return 'r';
    return 'm';
}

/* Whether the comma list `roles` (master, router, node, any) takes this
 * process. */
static inline int shim_role_wanted(const char *roles)
{
    char role = shim_my_role();
    if (roles == NULL || role == 0)
        return 0;
    return shim_listed(roles, "any") || (role == 'm' && shim_listed(roles, "master")) ||
           (role == 'r' && shim_listed(roles, "router")) ||
           (role == 'n' && shim_listed(roles, "node"));
}

/* The window, in shim_now_ms() time, from prefix AFTER_MS (after the shim
 * loaded), AT_MS (a wall-clock time, the same in every process) and
 * FOR_MS (its length; unset: for ever, *disarm INT64_MAX). */
static inline void shim_window(const char *prefix, int64_t *arm, int64_t *disarm)
{
    int64_t start = shim_now_ms();
    *arm = start + (int64_t)shim_env_u64(prefix, "AFTER_MS", 0);
    uint64_t at = shim_env_u64(prefix, "AT_MS", 0);
    if (at != 0) {
        struct timespec wall;
        clock_gettime(CLOCK_REALTIME, &wall);
        int64_t wall_ms = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
        *arm = start + ((int64_t)at - wall_ms);
    }
    uint64_t for_ms = shim_env_u64(prefix, "FOR_MS", UINT64_MAX);
    *disarm = for_ms >= (uint64_t)INT64_MAX / 2 ? INT64_MAX : *arm + (int64_t)for_ms;
}

/* A well-mixed 64-bit hash (splitmix64's finalizer): the call number,
 * seed and pid decide a call by a rate. */
static inline uint64_t shim_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

#endif
