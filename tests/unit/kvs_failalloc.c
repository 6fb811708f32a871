/*
 * kvs_failalloc: the counting, failing allocator behind kvs_failalloc.h.
 *
 * The linker's --wrap sends malloc, calloc, realloc, free, strdup and
 * strndup to the __wrap_ functions here; __real_malloc and friends are the
 * allocator the executable would otherwise use (glibc's, or the
 * sanitizer's in the ASan build). Live blocks are kept in a fixed open-
 * addressing table (this allocator cannot allocate for itself), so a leak
 * is seen as a block still in the table after a run, with its size.
 */
#include "kvs_failalloc.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

#define FA_SLOTS (1u << 18) /* live blocks tracked; a power of two */
#define FA_TOMB ((void *)1)

typedef struct {
    void *p; /* NULL: empty; FA_TOMB: deleted */
    size_t size;
    long run;     /* the run it was allocated in */
    void *caller; /* who allocated it, for the leak report (addr2line) */
    int lib;      /* allocated by libyaml (yaml_malloc and friends) */
} fa_slot_t;

static fa_slot_t fa_table[FA_SLOTS];
static size_t fa_nlive;
static size_t fa_run_live; /* live blocks labelled with the current fa_run */
static int fa_counting;   /* between kvs_fa_on and kvs_fa_off */
static long fa_seen;      /* allocations counted in this run */
static long fa_target;    /* fail this one (1-based); 0 = none */
static int fa_did_fail;   /* one was failed in this run */
static long fa_run = 1;   /* labels blocks for the leak report */
static int fa_in_lib;     /* inside a yaml_* allocation function */
static int fa_lib_failed; /* the failure injected in this run hit libyaml */

static size_t fa_hash(const void *p)
{
    uintptr_t x = (uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & (FA_SLOTS - 1);
}

static void fa_insert(void *p, size_t size, void *caller)
{
    if (p == NULL)
        return;
    size_t i = fa_hash(p);
    while (fa_table[i].p != NULL && fa_table[i].p != FA_TOMB)
        i = (i + 1) & (FA_SLOTS - 1);
    fa_table[i] = (fa_slot_t){p, size, fa_run, caller, fa_in_lib};
    fa_run_live++;
    if (++fa_nlive > FA_SLOTS / 2) {
        fprintf(stderr, "kvs_failalloc: more than %u live blocks\n", FA_SLOTS / 2);
        abort();
    }
}

/* Forgets p; returns whether it was tracked (blocks from shared
 * libraries, or from before the wrapper saw anything, are not). */
static int fa_remove(void *p)
{
    if (p == NULL)
        return 0;
    size_t i = fa_hash(p);
    while (fa_table[i].p != NULL) {
        if (fa_table[i].p == p) {
            fa_table[i].p = FA_TOMB;
            fa_nlive--;
            if (fa_table[i].run == fa_run)
                fa_run_live--;
            return 1;
        }
        i = (i + 1) & (FA_SLOTS - 1);
    }
    return 0;
}

/* Whether this allocation is the one to fail. */
static int fa_should_fail(void)
{
    if (!fa_counting)
        return 0;
    fa_seen++;
    if (fa_target != 0 && fa_seen == fa_target) {
        fa_did_fail = 1;
        fa_lib_failed = fa_in_lib;
        return 1;
    }
    return 0;
}

static void *fa_malloc(size_t n, void *caller)
{
    if (fa_should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = __real_malloc(n);
    fa_insert(p, n, caller);
    return p;
}

void *__wrap_malloc(size_t n)
{
    return fa_malloc(n, __builtin_return_address(0));
}

void *__wrap_calloc(size_t n, size_t size)
{
    if (fa_should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = __real_calloc(n, size);
    fa_insert(p, n * size, __builtin_return_address(0));
    return p;
}

void *__wrap_realloc(void *p, size_t n)
{
    if (p != NULL && n == 0) {
        __wrap_free(p);
        return NULL;
    }
    if (fa_should_fail()) {
        errno = ENOMEM;
        return NULL; /* p stays valid, as realloc leaves it */
    }
    int tracked = fa_remove(p);
    void *q = __real_realloc(p, n);
    if (q == NULL) {
        if (tracked)
            fa_insert(p, 0, __builtin_return_address(0));
        return NULL;
    }
    if (tracked || p == NULL)
        fa_insert(q, n, __builtin_return_address(0));
    return q;
}

void __wrap_free(void *p)
{
    (void)fa_remove(p);
    __real_free(p);
}

char *__wrap_strdup(const char *s)
{
    size_t n = strlen(s);
    char *p = fa_malloc(n + 1, __builtin_return_address(0));
    if (p != NULL)
        memcpy(p, s, n + 1);
    return p;
}

char *__wrap_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = fa_malloc(len + 1, __builtin_return_address(0));
    if (p != NULL) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

/* libyaml's allocation functions (--wrap=yaml_malloc,... reaches the
 * calls between its objects): the blocks are tagged as libyaml's, for
 * the leak check's one exception (fa_check_leaks). */
void *__real_yaml_malloc(size_t n);
void *__real_yaml_realloc(void *p, size_t n);
unsigned char *__real_yaml_strdup(const unsigned char *s);
void *__wrap_yaml_malloc(size_t n);
void *__wrap_yaml_realloc(void *p, size_t n);
unsigned char *__wrap_yaml_strdup(const unsigned char *s);

void *__wrap_yaml_malloc(size_t n)
{
    fa_in_lib++;
    void *p = __real_yaml_malloc(n);
    fa_in_lib--;
    return p;
}

void *__wrap_yaml_realloc(void *p, size_t n)
{
    fa_in_lib++;
    void *q = __real_yaml_realloc(p, n);
    fa_in_lib--;
    return q;
}

unsigned char *__wrap_yaml_strdup(const unsigned char *s)
{
    fa_in_lib++;
    unsigned char *p = __real_yaml_strdup(s);
    fa_in_lib--;
    return p;
}

/* libyaml's stacks, queues and strings grow through api.c, whose own
 * calls to yaml_realloc the linker does not redirect. */
int __real_yaml_stack_extend(void **start, void **top, void **end);
int __real_yaml_queue_extend(void **start, void **head, void **tail, void **end);
int __real_yaml_string_extend(unsigned char **start, unsigned char **pointer, unsigned char **end);
int __real_yaml_string_join(unsigned char **a_start, unsigned char **a_pointer,
                            unsigned char **a_end, unsigned char **b_start,
                            unsigned char **b_pointer, unsigned char **b_end);
int __wrap_yaml_stack_extend(void **start, void **top, void **end);
int __wrap_yaml_queue_extend(void **start, void **head, void **tail, void **end);
int __wrap_yaml_string_extend(unsigned char **start, unsigned char **pointer, unsigned char **end);
int __wrap_yaml_string_join(unsigned char **a_start, unsigned char **a_pointer,
                            unsigned char **a_end, unsigned char **b_start,
                            unsigned char **b_pointer, unsigned char **b_end);

int __wrap_yaml_stack_extend(void **start, void **top, void **end)
{
    fa_in_lib++;
    int rc = __real_yaml_stack_extend(start, top, end);
    fa_in_lib--;
    return rc;
}

int __wrap_yaml_queue_extend(void **start, void **head, void **tail, void **end)
{
    fa_in_lib++;
    int rc = __real_yaml_queue_extend(start, head, tail, end);
    fa_in_lib--;
    return rc;
}

int __wrap_yaml_string_extend(unsigned char **start, unsigned char **pointer, unsigned char **end)
{
    fa_in_lib++;
    int rc = __real_yaml_string_extend(start, pointer, end);
    fa_in_lib--;
    return rc;
}

int __wrap_yaml_string_join(unsigned char **a_start, unsigned char **a_pointer,
                            unsigned char **a_end, unsigned char **b_start,
                            unsigned char **b_pointer, unsigned char **b_end)
{
    fa_in_lib++;
    int rc = __real_yaml_string_join(a_start, a_pointer, a_end, b_start, b_pointer, b_end);
    fa_in_lib--;
    return rc;
}

void kvs_fa_on(void)
{
    fa_counting = 1;
}

void kvs_fa_off(void)
{
    fa_counting = 0;
}

int kvs_fa_failed(void)
{
    return fa_did_fail;
}

long kvs_fa_fail_at(void)
{
    return fa_target;
}

size_t kvs_fa_live(void)
{
    return fa_nlive;
}

/* Aborts when a block allocated in this run is still live. The walk of
 * the whole table (2^18 slots) is what a run cost, most of the time of
 * the corpus tests (one run per allocation of every input): with no live
 * block of this run, the walk would find nothing, and is skipped. */
static void fa_check_leaks(const char *name, long n)
{
    size_t leaked = 0, bytes = 0;
    if (fa_run_live == 0)
        return;
    for (size_t i = 0; i < FA_SLOTS; i++) {
        fa_slot_t *s = &fa_table[i];
        if (s->p == NULL || s->p == FA_TOMB || s->run != fa_run)
            continue;
        if (s->lib && fa_lib_failed) {
            /* libyaml 0.2.5 leaks on some of its own failures (loader.c:
             * a sequence's or mapping's item stack when adding the node
             * fails); kvs cannot free what it never got. Only when the
             * failure hit libyaml: kvs leaking a libyaml object (an event
             * or document not deleted) shows in every other run. */
            fprintf(stderr, "kvs_failalloc %s: fail_at=%ld: libyaml leaked %zu bytes itself\n",
                    name, n, s->size);
            continue;
        }
        if (leaked < 8)
            fprintf(stderr,
                    "kvs_failalloc %s: fail_at=%ld leaked a block of %zu bytes allocated at %p\n",
                    name, n, s->size, s->caller);
        leaked++;
        bytes += s->size;
    }
    if (leaked > 0) {
        fprintf(stderr, "kvs_failalloc %s: fail_at=%ld leaked %zu blocks, %zu bytes\n", name, n,
                leaked, bytes);
        abort();
    }
}

static void fa_one_run(const char *name, void (*step)(void *), void *ctx, long target, int check)
{
    fa_run++;
    fa_run_live = 0; /* every live block is labelled with an earlier run */
    fa_seen = 0;
    fa_target = target;
    fa_did_fail = 0;
    fa_lib_failed = 0;
    fa_counting = 0;
    step(ctx);
    fa_counting = 0;
    if (target != 0 && !fa_did_fail) {
        fprintf(stderr, "kvs_failalloc %s: allocation %ld of %ld never came (not deterministic)\n",
                name, target, fa_seen);
        abort();
    }
    if (check)
        fa_check_leaks(name, target);
    fa_target = 0;
}

long kvs_failalloc_loop(const char *name, void (*step)(void *ctx), void *ctx, long min_allocs)
{
    fa_one_run(name, step, ctx, 0, 0); /* warm-up: one-time allocations (stdio, say) */
    fa_one_run(name, step, ctx, 0, 1);
    long k = fa_seen;
    if (k < min_allocs) {
        fprintf(stderr, "kvs_failalloc %s: %ld allocations, expected at least %ld\n", name, k,
                min_allocs);
        abort();
    }
    for (long n = 1; n <= k; n++)
        fa_one_run(name, step, ctx, n, 1);
    fprintf(stderr, "kvs_failalloc %s: %ld allocations, each failed once\n", name, k);
    return k;
}
