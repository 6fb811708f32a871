/*
 * kvs_failalloc: allocation-failure testing for unit tests, in the manner of
 * SQLite's malloc tests. A test executable linked with
 *   -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free,
 *   --wrap=strdup,--wrap=strndup
 * (CMake: kvs_failalloc_test) sends every allocation made by code linked
 * into it statically through a counting allocator that can be told to fail
 * the n-th one. That covers kvs_common and, because those test executables
 * link libyaml and libprotobuf-c statically, libyaml's allocations and
 * protobuf-c's default allocator too. Allocations made inside shared
 * libraries (libc's own, OpenSSL, libuv) are neither counted nor failed;
 * their frees through kvs code are passed on untouched.
 *
 * kvs_failalloc_loop(step, ctx) runs step once to warm up, once counting
 * the allocations made between kvs_fa_on() and kvs_fa_off() (K), then K
 * more times with the n-th of them failing (n = 1..K). After each run every
 * block allocated during it must have been freed (the caller's cleanup is
 * part of step), or the loop aborts naming n and the leaked sizes. step
 * decides what the function under test must have done: kvs_fa_failed()
 * says whether an injected failure happened; a function that succeeds
 * anyway (it had a fallback) must give the reference result.
 *
 * Single-threaded: the counters are plain globals.
 */
#ifndef KVS_FAILALLOC_H
#define KVS_FAILALLOC_H

#include <stddef.h>

/* Starts counting (and, during the failing runs, failing) allocations. */
void kvs_fa_on(void);

/* Stops counting; allocations succeed again. */
void kvs_fa_off(void);

/* Whether an allocation was failed on purpose in this run. */
int kvs_fa_failed(void);

/* The n of the current run (0: the counting run or the warm-up). */
long kvs_fa_fail_at(void);

/* Blocks allocated through the wrapper and not yet freed. */
size_t kvs_fa_live(void);

/* Runs step(ctx) as described above; `name` labels failures. Returns K
 * (checked to be at least `min_allocs`, so that a test that allocates
 * nothing cannot pass silently). */
long kvs_failalloc_loop(const char *name, void (*step)(void *ctx), void *ctx, long min_allocs);

#endif
