/*
 * enomem_shim: an LD_PRELOAD allocator shim for the integration tests that
 * makes malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign
 * fail (NULL, errno ENOMEM) during a time window, so a test can check that
 * kvs handles every failed allocation: answers an error or closes one
 * connection, never crashes, and serves normally afterwards
 * (tests/integration/test_enomem.py).
 *
 * Environment (read once, when the shim is loaded):
 *   KVS_TEST_ENOMEM_ROLE      which kvs processes inject, a comma list of
 *                             master (kvs-router without --router), router
 *                             (kvs-router --router N), node (kvs-node), or
 *                             any. The shim is inherited by every child the
 *                             node spawns; the others only pass calls on.
 *                             Unset: nothing is injected anywhere.
 *   KVS_TEST_ENOMEM_EVERY     fail every Nth call counted from the arming
 *   KVS_TEST_ENOMEM_PPM       or: fail each call with this probability, in
 *                             parts per million, decided by a hash of
 *                             KVS_TEST_ENOMEM_SEED, the call's number and
 *                             the pid (so a process restarted in the
 *                             window does not fail exactly as before)
 *   KVS_TEST_ENOMEM_AFTER_MS  arm this long after the process loaded the
 *                             shim (default 0), so start-up is not affected
 *   KVS_TEST_ENOMEM_AT_MS     or: arm at this wall-clock time (milliseconds
 *                             since the epoch), the same moment in every
 *                             process, a restarted one included
 *   KVS_TEST_ENOMEM_FOR_MS    disarm this long after arming (default: never)
 *   KVS_TEST_ENOMEM_MIN_SIZE  fail only requests of at least this many
 *                             bytes (default 0: every size)
 *   KVS_TEST_ENOMEM_THREAD    "main": fail only calls made by the process's
 *                             main thread (its event loop), not by its other
 *                             threads (libuv's pool, librdkafka's threads,
 *                             which abort on a failed allocation: rd_calloc
 *                             asserts); unset: every thread
 *
 * An injecting process writes "kvs-test-enomem: pid P armed" to stderr at
 * its first call in the window and "kvs-test-enomem: pid P disarmed: F of
 * N calls failed" at its first call after it (or at exit), so a test can
 * check that failures really were injected.
 *
 * dlsym may itself allocate (glibc's dlerror state uses calloc): calls made
 * while the real functions are being looked up are served from a small
 * static arena, which free() and realloc() recognise. Counters are atomics:
 * libuv's thread pool and librdkafka's threads allocate too.
 *
 * Built unsanitized and never in the sanitizer build (ASan replaces the
 * allocator itself; CMakeLists.txt).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shim_common.h"

#define P "KVS_TEST_ENOMEM_" /* the environment variables' prefix */

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*aligned_alloc_fn)(size_t, size_t);

static malloc_fn real_malloc;
static calloc_fn real_calloc;
static realloc_fn real_realloc;
static free_fn real_free;
static posix_memalign_fn real_posix_memalign;
static aligned_alloc_fn real_aligned_alloc;
static aligned_alloc_fn real_memalign;

/* ---- the static arena for allocations made during dlsym ------------------ */

#define ARENA_SIZE 16384
#define ARENA_ALIGN 16
static _Alignas(ARENA_ALIGN) unsigned char arena[ARENA_SIZE];
static atomic_size_t arena_used;
static atomic_int resolving;

static int in_arena(const void *p)
{
    const unsigned char *c = p;
    return c >= arena && c < arena + ARENA_SIZE;
}

/* Each arena block is preceded by its size (one aligned slot). */
static void *arena_alloc(size_t n)
{
    size_t need = ARENA_ALIGN + ((n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1));
    size_t at = atomic_fetch_add(&arena_used, need);
    if (need > ARENA_SIZE || at > ARENA_SIZE - need) {
        errno = ENOMEM;
        return NULL;
    }
    memcpy(arena + at, &n, sizeof(n));
    return arena + at + ARENA_ALIGN; /* static storage: already zero */
}

static size_t arena_size(const void *p)
{
    size_t n;
    memcpy(&n, (const unsigned char *)p - ARENA_ALIGN, sizeof(n));
    return n;
}

static void resolve(void)
{
    if (real_free != NULL)
        return;
    atomic_store(&resolving, 1);
    real_malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    real_calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    real_realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (aligned_alloc_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (aligned_alloc_fn)dlsym(RTLD_NEXT, "memalign");
    real_free = (free_fn)dlsym(RTLD_NEXT, "free");
    atomic_store(&resolving, 0);
    if (real_malloc == NULL || real_calloc == NULL || real_realloc == NULL || real_free == NULL) {
        static const char msg[] = "kvs-test-enomem: dlsym found no malloc\n";
        if (write(2, msg, sizeof(msg) - 1) < 0)
            _exit(127);
        _exit(127);
    }
}

/* ---- configuration and the decision ------------------------------------ */

static shim_plan_t plan;
static uint64_t min_size;
static int main_only; /* KVS_TEST_ENOMEM_THREAD=main */

static char *put_u64(char *p, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

static void say(const char *what, int with_counts)
{
    char line[160], *p = line;
    static const char head[] = "kvs-test-enomem: pid ";
    memcpy(p, head, sizeof(head) - 1);
    p += sizeof(head) - 1;
    p = put_u64(p, (uint64_t)getpid());
    *p++ = ' ';
    size_t n = strlen(what);
    memcpy(p, what, n);
    p += n;
    if (with_counts) {
        memcpy(p, ": ", 2);
        p += 2;
        p = put_u64(p, atomic_load(&plan.failed));
        static const char of[] = " of ";
        memcpy(p, of, sizeof(of) - 1);
        p += sizeof(of) - 1;
        p = put_u64(p, atomic_load(&plan.calls));
        static const char tail[] = " calls failed";
        memcpy(p, tail, sizeof(tail) - 1);
        p += sizeof(tail) - 1;
    }
    *p++ = '\n';
    if (write(2, line, (size_t)(p - line)) < 0)
        return; /* stderr gone: nothing to tell */
}

__attribute__((constructor)) static void shim_init(void)
{
    resolve();
    if (!shim_role_wanted(getenv("KVS_TEST_ENOMEM_ROLE")) || !shim_plan_init(&plan, P))
        return;
    min_size = shim_env_u64(P, "MIN_SIZE", 0);
    const char *thread = getenv("KVS_TEST_ENOMEM_THREAD");
    main_only = thread != NULL && strcmp(thread, "main") == 0;
    plan.configured = 1;
}

__attribute__((destructor)) static void shim_fini(void)
{
    shim_plan_fini(&plan, say);
}

/* Whether this call (asking for `size` bytes) fails. */
static int fail_now(size_t size)
{
    if (!plan.configured || size < min_size || (main_only && gettid() != getpid()))
        return 0;
    return shim_decide(&plan, say);
}

/* ---- the wrappers ---------------------------------------------------- */

void *malloc(size_t n)
{
    if (atomic_load(&resolving))
        return arena_alloc(n);
    resolve();
    if (fail_now(n)) {
        errno = ENOMEM;
        return NULL;
    }
    return real_malloc(n);
}

void *calloc(size_t k, size_t n)
{
    if (atomic_load(&resolving)) {
        size_t total;
        if (__builtin_mul_overflow(k, n, &total)) {
            errno = ENOMEM;
            return NULL;
        }
        return arena_alloc(total);
    }
    resolve();
    size_t total;
    if (fail_now(__builtin_mul_overflow(k, n, &total) ? SIZE_MAX : total)) {
        errno = ENOMEM;
        return NULL;
    }
    return real_calloc(k, n);
}

void *realloc(void *p, size_t n)
{
    if (p != NULL && in_arena(p)) {
        void *q = malloc(n);
        if (q != NULL) {
            size_t old = arena_size(p);
            memcpy(q, p, old < n ? old : n);
        }
        return q;
    }
    if (atomic_load(&resolving))
        return p == NULL ? arena_alloc(n) : NULL;
    resolve();
    /* realloc(p, 0) frees: never "fails". */
    if ((p == NULL || n != 0) && fail_now(n)) {
        errno = ENOMEM;
        return NULL;
    }
    return real_realloc(p, n);
}

void free(void *p)
{
    if (p == NULL || in_arena(p))
        return;
    resolve();
    real_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    resolve();
    if (real_posix_memalign == NULL)
        return ENOMEM;
    if (fail_now(n))
        return ENOMEM;
    return real_posix_memalign(out, align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    resolve();
    if (real_aligned_alloc == NULL || fail_now(n)) {
        errno = ENOMEM;
        return NULL;
    }
    return real_aligned_alloc(align, n);
}

void *memalign(size_t align, size_t n)
{
    resolve();
    if (real_memalign == NULL || fail_now(n)) {
        errno = ENOMEM;
        return NULL;
    }
    return real_memalign(align, n);
}
