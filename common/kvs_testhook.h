/*
 * kvs_testhook: the KVS_TEST_* environment variables the integration tests
 * use to make a rare timing happen on demand (a slow disk, a lagging
 * broker, a slow start). They exist only in builds made with the CMake
 * option KVS_TEST_HOOKS (on by default, so the tests can run; a packaged
 * build turns it off) and are never config keys; README lists them.
 */
#ifndef KVS_TESTHOOK_H
#define KVS_TESTHOOK_H

#include <stdint.h>
#include <stdlib.h>

/* The decimal value of the hook `name` in *out: 1 when it is set (and not
 * empty) in a test build, else 0 and *out untouched. The caller logs that
 * the hook is on: a test hook must never act unseen. */
static inline int kvs_test_hook_u64(const char *name, uint64_t *out)
{
#ifdef KVS_TEST_HOOKS
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return 0;
    *out = strtoull(v, NULL, 10);
    return 1;
#else
    (void)name;
    (void)out;
    return 0;
#endif
}

/* The value of the hook `name` in a test build when it is set and not
 * empty (the environment's string: valid while the environment is not
 * changed), else NULL. The caller logs that the hook is on. */
static inline const char *kvs_test_hook_str(const char *name)
{
#ifdef KVS_TEST_HOOKS
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? v : NULL;
#else
    (void)name;
    return NULL;
#endif
}

#endif
