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
#include <stdatomic.h>
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

/* When and how often a shim fails the calls that pass its own filters. */
typedef struct shim_plan_s {
    int configured;                  /* this process injects */
    uint64_t every;                  /* fail every Nth call, 0 = use ppm */
    uint64_t ppm;                    /* probability in parts per million */
    uint64_t seed, salt;             /* salt: the pid, so a restarted process fails others */
    int64_t arm_at_ms, disarm_at_ms; /* shim_now_ms() time; INT64_MAX = never disarmed */
    atomic_uint_fast64_t calls, failed;
    atomic_int armed_said, disarmed_said;
} shim_plan_t;

/* Reads prefix EVERY, PPM, SEED and the window (shim_window) into p.
 * Returns 0 when neither rate is set (nothing to inject). */
static inline int shim_plan_init(shim_plan_t *p, const char *prefix)
{
    p->every = shim_env_u64(prefix, "EVERY", 0);
    p->ppm = shim_env_u64(prefix, "PPM", 0);
    if (p->every == 0 && p->ppm == 0)
        return 0;
    p->seed = shim_env_u64(prefix, "SEED", 1);
    p->salt = (uint64_t)getpid() << 32;
    shim_window(prefix, &p->arm_at_ms, &p->disarm_at_ms);
    return 1;
}

/* Whether this call fails: inside the window, every Nth or by the rate.
 * The first call in the window says "armed" and the first after it
 * "disarmed" with the counts, through the shim's say(what, with_counts). */
static inline int shim_decide(shim_plan_t *p, void (*say)(const char *what, int with_counts))
{
    int64_t t = shim_now_ms();
    if (t < p->arm_at_ms)
        return 0;
    if (t >= p->disarm_at_ms) {
        if (atomic_load(&p->armed_said) && !atomic_exchange(&p->disarmed_said, 1))
            say("disarmed", 1);
        return 0;
    }
    if (!atomic_exchange(&p->armed_said, 1))
        say("armed", 0);
    uint64_t n = atomic_fetch_add(&p->calls, 1) + 1;
    int fail = p->every != 0 ? n % p->every == 0
                             : shim_mix(p->seed ^ shim_mix(n ^ p->salt)) % 1000000 < p->ppm;
    if (fail)
        atomic_fetch_add(&p->failed, 1);
    return fail;
}

/* At exit: "disarmed at exit" if the window was entered and not left. */
static inline void shim_plan_fini(shim_plan_t *p, void (*say)(const char *what, int with_counts))
{
    if (p->configured && atomic_load(&p->armed_said) && !atomic_exchange(&p->disarmed_said, 1))
        say("disarmed at exit", 1);
}

#endif
