/*
 * kvs_lookup: a host name's lookup that a loop need not wait for (see
 * kvs_lookup.h).
 */
#include "kvs_lookup.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kvs_lookup_s {
    uv_async_t async; /* the thread's answer is in (unreferenced) */
    pthread_mutex_t lock;
    int refs;      /* the thread's and the loop's: the last frees this */
    int abandoned; /* the loop wants no answer (or has it): the thread keeps nothing */
    int status;
    struct addrinfo *res; /* the answer, until the loop takes it */
    kvs_lookup_cb cb;
    void *data;
    char host[sizeof(((kvs_addr_t *)0)->host)];
    char port[8];
};

/* Threads running a lookup, given up on or not. A resolver that hangs for
 * good (an NSS module stuck) would otherwise keep one more thread for
 * each lookup given up on, for as long as the process runs. */
static atomic_uint running;
static unsigned max_running = KVS_LOOKUP_MAX_THREADS;

void kvs_lookup_set_max_threads(unsigned n)
{
    max_running = n;
}

/* getaddrinfo's error as libuv says it (uv_strerror). */
static int uv_gai_error(int rc)
{
    switch (rc) {
    case EAI_AGAIN:
        return UV_EAI_AGAIN;
    case EAI_BADFLAGS:
        return UV_EAI_BADFLAGS;
    case EAI_FAIL:
        return UV_EAI_FAIL;
    case EAI_FAMILY:
        return UV_EAI_FAMILY;
    case EAI_MEMORY:
        return UV_EAI_MEMORY;
    case EAI_NONAME:
        return UV_EAI_NONAME;
    case EAI_SERVICE:
        return UV_EAI_SERVICE;
    case EAI_SOCKTYPE:
        return UV_EAI_SOCKTYPE;
#ifdef EAI_NODATA
    case EAI_NODATA:
        return UV_EAI_NODATA;
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
        return UV_EAI_ADDRFAMILY;
#endif
    case EAI_SYSTEM:
        return errno > 0 ? -errno : UV_EAI_FAIL;
    default:
        return UV_EAI_FAIL;
    }
}

/* Drops one of the two references; the last frees everything. */
static void release(kvs_lookup_t *lk)
{
    pthread_mutex_lock(&lk->lock);
    int last = --lk->refs == 0;
    pthread_mutex_unlock(&lk->lock);
    if (!last)
        return;
    if (lk->res != NULL)
        freeaddrinfo(lk->res);
    pthread_mutex_destroy(&lk->lock);
    free(lk);
}

static void on_closed(uv_handle_t *h)
{
    release(h->data);
}

static void *run(void *arg)
{
    kvs_lookup_t *lk = arg;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(lk->host, lk->port, &hints, &res);
    int status = rc == 0 ? (res != NULL ? 0 : UV_EAI_NONAME) : uv_gai_error(rc);
    pthread_mutex_lock(&lk->lock);
    if (lk->abandoned) {
        if (res != NULL)
            freeaddrinfo(res);
    } else {
        lk->status = status;
        lk->res = status == 0 ? res : NULL;
        if (status != 0 && res != NULL)
            freeaddrinfo(res);
        uv_async_send(&lk->async); /* open until abandoned, which this lock orders */
    }
    pthread_mutex_unlock(&lk->lock);
    release(lk);
    atomic_fetch_sub(&running, 1);
    return NULL;
}

static void on_answer(uv_async_t *a)
{
    kvs_lookup_t *lk = a->data;
    pthread_mutex_lock(&lk->lock);
    int wanted = !lk->abandoned;
    struct addrinfo *res = lk->res;
    int status = lk->status;
    lk->res = NULL;
    lk->abandoned = 1; /* over: nothing more is sent */
    pthread_mutex_unlock(&lk->lock);
    uv_close((uv_handle_t *)&lk->async, on_closed);
    if (wanted)
        lk->cb(lk, lk->data, status, res);
    else if (res != NULL)
        freeaddrinfo(res);
}

int kvs_lookup_start(uv_loop_t *loop, const kvs_addr_t *a, kvs_lookup_cb cb, void *data,
                     kvs_lookup_t **out)
{
    if (atomic_fetch_add(&running, 1) >= max_running) {
        atomic_fetch_sub(&running, 1);
        return UV_EAGAIN; /* the caller tries again later, as after a failed lookup */
    }
    kvs_lookup_t *lk = calloc(1, sizeof(*lk));
    int rc = lk == NULL ? UV_ENOMEM : -pthread_mutex_init(&lk->lock, NULL);
    if (rc == 0) {
        rc = uv_async_init(loop, &lk->async, on_answer);
        if (rc != 0)
            pthread_mutex_destroy(&lk->lock);
    }
    if (rc != 0) {
        free(lk);
        atomic_fetch_sub(&running, 1);
        return rc;
    }
    snprintf(lk->host, sizeof(lk->host), "%s", a->host);
    snprintf(lk->port, sizeof(lk->port), "%u", a->port);
    lk->cb = cb;
    lk->data = data;
    lk->refs = 2;
    lk->async.data = lk;
    uv_unref((uv_handle_t *)&lk->async); /* the loop is not held for the lookup */
    pthread_attr_t attr;
    pthread_t t;
    rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&t, &attr, run, lk);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        lk->refs = 1; /* no thread */
        lk->abandoned = 1;
        uv_close((uv_handle_t *)&lk->async, on_closed);
        atomic_fetch_sub(&running, 1);
        return -rc;
    }
    *out = lk;
    return 0;
}

void kvs_lookup_abandon(kvs_lookup_t *lk)
{
    pthread_mutex_lock(&lk->lock);
    lk->abandoned = 1;
    struct addrinfo *res = lk->res;
    lk->res = NULL;
    pthread_mutex_unlock(&lk->lock);
    if (res != NULL)
        freeaddrinfo(res);
    uv_close((uv_handle_t *)&lk->async, on_closed);
}
