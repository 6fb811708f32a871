/*
 * cli_resolve: getaddrinfo on a thread, waited for until a deadline (see
 * cli_resolve.h). The lookup's state is shared by the two threads under
 * a mutex; whichever of them is done with it last frees it: the caller
 * when the lookup finished in time, the lookup's thread when the caller
 * gave up first.
 */
#include "cli_resolve.h"
#include "kvs_err.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct lookup_s {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;      /* the lookup's thread wrote rc and res */
    int abandoned; /* the caller gave up: the lookup's thread frees all */
    int rc;
    struct addrinfo *res;
    char *host, *port;
} lookup_t;

static void lookup_free(lookup_t *l)
{
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l->host);
    free(l->port);
    free(l);
}

static int lookup_now(const char *host, const char *port, struct addrinfo **res)
{
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    return getaddrinfo(host, port, &hints, res);
}

static void *lookup_run(void *arg)
{
    lookup_t *l = arg;
    struct addrinfo *res = NULL;
    int rc = lookup_now(l->host, l->port, &res);
    pthread_mutex_lock(&l->mu);
    l->rc = rc;
    l->res = res;
    l->done = 1;
    int abandoned = l->abandoned;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    if (abandoned) {
        if (rc == 0)
            freeaddrinfo(res);
        lookup_free(l);
    }
    return NULL;
}

/* A new lookup of host:port, its thread started (detached); NULL when
 * that cannot be done (the caller looks up on its own thread). */
static lookup_t *lookup_start(const char *host, const char *port)
{
    lookup_t *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    pthread_condattr_t ca;
    pthread_attr_t ta;
    int ok = pthread_condattr_init(&ca) == 0;
    if (ok) {
        ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
             pthread_cond_init(&l->cv, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (!ok || pthread_mutex_init(&l->mu, NULL) != 0) {
        if (ok)
            pthread_cond_destroy(&l->cv);
        free(l);
        return NULL;
    }
    l->host = strdup(host);
    l->port = strdup(port);
    pthread_t t;
    if (l->host == NULL || l->port == NULL || pthread_attr_init(&ta) != 0) {
        lookup_free(l);
        return NULL;
    }
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &ta, lookup_run, l);
    pthread_attr_destroy(&ta);
    if (rc != 0) {
        lookup_free(l);
        return NULL;
    }
    return l;
}

int cli_resolve(const char *host, const char *port, double timeout, struct addrinfo **res,
                const char **why)
{
    lookup_t *l = timeout > 0 ? lookup_start(host, port) : NULL;
    int rc;
    if (l == NULL) { /* no limit, or no thread: as long as the resolver takes */
        rc = lookup_now(host, port, res);
    } else {
        struct timespec at;
        clock_gettime(CLOCK_MONOTONIC, &at);
        double end = (double)at.tv_sec + (double)at.tv_nsec / 1e9 + timeout;
        at.tv_sec = (time_t)end;
        at.tv_nsec = (long)((end - (double)at.tv_sec) * 1e9);
        pthread_mutex_lock(&l->mu);
        int waited = 0;
        while (!l->done && waited != ETIMEDOUT)
            waited = pthread_cond_timedwait(&l->cv, &l->mu, &at);
        int done = l->done;
        l->abandoned = !done;
        rc = l->rc;
        *res = l->res;
        pthread_mutex_unlock(&l->mu);
        if (!done) {
            *why = "no answer from the name resolver in time (see --timeout)";
            return -ETIMEDOUT;
        }
        lookup_free(l);
    }
    if (rc != 0) {
        *why = gai_strerror(rc);
        return KVS_ENOTFOUND;
    }
    return 0;
}
