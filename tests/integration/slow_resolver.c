/*
 * slow_resolver: an LD_PRELOAD shim for the integration tests that makes
 * one host name slow to resolve, deterministically and without any DNS
 * server: getaddrinfo() of the name in $KVS_TEST_SLOW_HOST sleeps
 * $KVS_TEST_SLOW_MS milliseconds (default 2000), logs the lookup to stderr
 * ("kvs-test-slow-resolver: looking up NAME"), and answers ::1 then
 * 127.0.0.1 with the requested port, the order a dual-stack name gives, so
 * a client that tries only the first address cannot connect to an IPv4
 * listener. Every other name goes to the next getaddrinfo (libc's).
 *
 * Built unsanitized as a test helper (libkvs_test_slow_resolver.so); in
 * the sanitizer build the tests also set ASAN_OPTIONS
 * verify_asan_link_order=0, since the shim then precedes libasan.
 */
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

static gai_fn next_gai(void)
{
    return (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    const char *slow = getenv("KVS_TEST_SLOW_HOST");
    gai_fn real = next_gai();
    if (real == NULL)
        return EAI_SYSTEM;
    if (node == NULL || slow == NULL || strcmp(node, slow) != 0)
        return real(node, service, hints, res);
    const char *ms = getenv("KVS_TEST_SLOW_MS");
    char line[300];
    int n = snprintf(line, sizeof(line), "kvs-test-slow-resolver: looking up %s\n", node);
    if (n > 0 && write(2, line, (size_t)n) < 0)
        n = 0;
    sleep_ms(ms != NULL ? atol(ms) : 2000);
    struct addrinfo h, *v6 = NULL, *v4 = NULL;
    memset(&h, 0, sizeof(h));
    h.ai_socktype = hints != NULL ? hints->ai_socktype : SOCK_STREAM;
    h.ai_flags = AI_NUMERICHOST;
    h.ai_family = AF_INET6;
    if (real("::1", service, &h, &v6) != 0)
        v6 = NULL; /* no IPv6 here: IPv4 alone */
    h.ai_family = AF_INET;
    int rc = real("127.0.0.1", service, &h, &v4);
    if (rc != 0) {
        if (v6 != NULL)
            freeaddrinfo(v6);
        return rc;
    }
    if (v6 == NULL) {
        *res = v4;
        return 0;
    }
    struct addrinfo *tail = v6;
    while (tail->ai_next != NULL)
        tail = tail->ai_next;
    tail->ai_next = v4; /* glibc's freeaddrinfo frees node by node */
    *res = v6;
    return 0;
}
