/*
 * kvs_auth: users, rights, and the Auth check off the loop.
 *
 * Users are an array built once from the config (names, parsed token
 * hashes, the grants as the config holds them, and per user the HMAC of
 * the last token that checked out). Rights on "*" are precomputed for the
 * commands without a table.
 *
 * An Auth is an attempt object: queued, then run in the thread pool
 * (uv_queue_work) when fewer than KVS_AUTH_MAX_WORKERS run, then finished
 * on the loop (after_work). The connection points at its attempt and the
 * attempt at its connection; kvs_auth_conn_close breaks the link (a queued
 * attempt is freed at once, a running one when its work returns), so an
 * answer never reaches a connection that is gone. Token bytes are wiped
 * when the attempt ends.
 *
 * One address, one check at a time: an attempt whose address already has
 * one queued or running is parked, and decided afresh when that one ends
 * (refused unchecked if the address is now over its limit, accepted at
 * once if its token is now remembered, else queued). So an address's
 * failures are counted before its next check starts, and however many
 * connections it opens it can make the node spend at most
 * auth_failures_per_minute checks a minute; the queue holds one attempt
 * per address, so one address cannot keep the others waiting; and a pool
 * of connections authenticating at once costs one check.
 *
 * Accounting per client address is a small table: an address's failures
 * count over the last minute, sliding (kvs_window: never more than the
 * limit in any 60 s, where a fixed minute would let twice the limit
 * through across its boundary); when the table is full, an entry with no
 * attempt in flight is reused, one without failures in the last minute
 * first, then one below the limit, the one whose last failure is oldest
 * (so an address that is refused is forgotten only once every address
 * counted is refused too: 1024 addresses at the limit). (With every entry in
 * flight, an address goes uncounted and its attempts are not parked.)
 *
 * Every check costs what the dearest one costs (the decoy's iterations):
 * a check against a cheaper hash is padded with more PBKDF2 rounds, so the
 * time a failure takes does not tell which users exist.
 */
#include "kvs_auth.h"
#include "kvs_addr.h"
#include "kvs_glob.h"
#include "kvs_crypto.h"
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_testhook.h"
#include "kvs_token.h"
#include "kvs_window.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct kvs_auth_user_s {
    const kvs_user_t *cfg; /* name and grants */
    kvs_token_hash_t hash;
    int has_token;
    int verified; /* `seen` holds the HMAC of its token */
    uint8_t seen[KVS_CRYPTO_SHA256];
    unsigned star_rights; /* rights granted on the pattern "*" */
};

enum { LANE_CLEAN, LANE_FAILED, LANES };

typedef struct addr_count_s {
    char ip[64];
    kvs_window_t failures; /* over the last minute */
    uint64_t last_ms;      /* when it last failed */
    int busy;              /* an attempt from this address is queued or running */
} addr_count_t;

struct kvs_auth_attempt_s {
    uv_work_t work;
    kvs_auth_t *auth;
    kvs_auth_conn_t *ac;   /* NULL once the connection is gone */
    kvs_auth_user_t *user; /* NULL: no such user (checked against the decoy) */
    char name[256];        /* the user name asked for, for the log */
    char peer[64];
    char ip[64];        /* the address part of peer */
    addr_count_t *slot; /* the address entry this attempt keeps busy, or NULL */
    int parked;         /* waiting for its address's attempt in flight */
    int lane;           /* LANE_CLEAN or LANE_FAILED, while queued */
    uint8_t token[KVS_TOKEN_MAX];
    size_t token_len;
    int ok;
    int unchecked; /* the hash could not be computed (out of memory): neither right nor wrong */
    int running;
    kvs_auth_done_cb cb;
    void *arg;
    kvs_auth_attempt_t *next; /* waiting queue */
};

struct kvs_auth_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    kvs_auth_user_t *users;
    size_t n_users;
    kvs_token_hash_t decoy; /* what unknown users are checked against */
    uint8_t key[KVS_CRYPTO_SHA256];
    unsigned running;
    /* Waiting to run (one per address at most), in two lanes: addresses
     * with no failure in the last minute go first (see admit). */
    kvs_auth_attempt_t *head[LANES], *tail[LANES];
    kvs_auth_attempt_t *parked, *parked_tail; /* waiting for their address's turn */
    addr_count_t addrs[KVS_AUTH_ADDRESSES];
    kvs_log_budget_t log_budget; /* failure lines */
    uint64_t check_delay_ms;     /* KVS_TEST_AUTH_CHECK_MS: each check takes this much more */
};

/* ---- setup ------------------------------------------------------------------ */

int kvs_auth_new(const kvs_config_t *cfg, uv_loop_t *loop, kvs_auth_t **out)
{
    const char *why;
    *out = NULL;
    if (cfg->n_users == 0)
        return 0;
    kvs_auth_t *a = calloc(1, sizeof(*a));
    if (a == NULL || (a->users = calloc(cfg->n_users, sizeof(*a->users))) == NULL) {
        free(a);
        return -ENOMEM;
    }
    a->loop = loop;
    if (kvs_test_hook_u64("KVS_TEST_AUTH_CHECK_MS", &a->check_delay_ms))
        kvs_warn("test hook: every token check takes %llu ms more (KVS_TEST_AUTH_CHECK_MS)",
                 (unsigned long long)a->check_delay_ms);
    kvs_log_budget_init(&a->log_budget, "failed Auth attempts", KVS_AUTH_LOG_PER_SECOND, 1000);
    a->cfg = cfg;
    a->n_users = cfg->n_users;
    uint32_t iterations = KVS_TOKEN_MIN_ITERATIONS;
    for (size_t i = 0; i < cfg->n_users; i++) {
        kvs_auth_user_t *u = &a->users[i];
        u->cfg = &cfg->users[i];
        u->has_token = u->cfg->token != NULL && kvs_token_parse(u->cfg->token, &u->hash, &why) == 0;
        if (u->has_token && u->hash.iterations > iterations)
            iterations = u->hash.iterations;
        for (size_t g = 0; g < u->cfg->n_grants; g++)
            if (strcmp(u->cfg->grants[g].pattern, "*") == 0)
                u->star_rights |= u->cfg->grants[g].rights;
    }
    /* The decoy costs what the dearest real check costs. */
    if (kvs_crypto_random(a->key, sizeof(a->key)) != 0 ||
        kvs_token_make("decoy", 5, iterations, &a->decoy) != 0) {
        kvs_auth_free(a);
        return KVS_EINVAL;
    }
    *out = a;
    return 0;
}

void kvs_auth_free(kvs_auth_t *a)
{
    if (a == NULL)
        return;
    explicit_bzero(a->key, sizeof(a->key));
    free(a->users);
    free(a);
}

void kvs_auth_conn_init(kvs_auth_conn_t *ac, int trusted, int token_ok)
{
    memset(ac, 0, sizeof(*ac));
    ac->trusted = trusted;
    ac->token_ok = token_ok;
    ac->cache_len = SIZE_MAX;
}

static kvs_auth_user_t *find_user(kvs_auth_t *a, const char *name)
{
    for (size_t i = 0; i < a->n_users; i++)
        if (strcmp(a->users[i].cfg->name, name) == 0)
            return &a->users[i];
    return NULL;
}

static void set_user(kvs_auth_conn_t *ac, const kvs_auth_user_t *u)
{
    ac->user = u;
    ac->cache_len = SIZE_MAX;
}

typedef struct {
    kvs_auth_t *a;
    kvs_auth_user_t *found;
} cert_match_t;

static int match_user(void *arg, const char *name)
{
    cert_match_t *m = arg;
    m->found = find_user(m->a, name);
    return m->found != NULL;
}

const char *kvs_auth_by_certificate(kvs_auth_t *a, kvs_auth_conn_t *ac, const kvs_tls_t *t)
{
    cert_match_t m = {a, NULL};
    if (!kvs_tls_peer_names(t, match_user, &m))
        return NULL;
    set_user(ac, m.found);
    return m.found->cfg->name;
}

void kvs_auth_conn_forget(kvs_auth_conn_t *ac)
{
    set_user(ac, NULL);
}

const char *kvs_auth_user_name(const kvs_auth_conn_t *ac)
{
    return ac->user != NULL ? ac->user->cfg->name : NULL;
}

int kvs_auth_conn_spared(const kvs_auth_conn_t *ac)
{
    const kvs_auth_attempt_t *at = ac->pending;
    return at != NULL &&
           (at->running || (!at->parked && at->slot != NULL && at->lane == LANE_CLEAN));
}

/* ---- authorization ------------------------------------------------------------ */

static unsigned needed_rights(Kvs__CommandRequest__CommandCase cmd)
{
    switch (cmd) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
    case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
    case KVS__COMMAND_REQUEST__COMMAND_HLEN:
        return KVS_RIGHT_READ;
    case KVS__COMMAND_REQUEST__COMMAND_HINCR: /* it answers the value it made: read too */
        return KVS_RIGHT_READ | KVS_RIGHT_WRITE;
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
    case KVS__COMMAND_REQUEST__COMMAND_HCLEAR:
        return KVS_RIGHT_WRITE;
    case KVS__COMMAND_REQUEST__COMMAND_PING:
    case KVS__COMMAND_REQUEST__COMMAND_AUTH:
        return 0;
    default: /* Info, and anything operational to come */
        return KVS_RIGHT_ADMIN;
    }
}

static const char *right_name(unsigned r)
{
    return r == KVS_RIGHT_READ                       ? "read"
           : r == KVS_RIGHT_WRITE                    ? "write"
           : r == (KVS_RIGHT_READ | KVS_RIGHT_WRITE) ? "read and write"
                                                     : "admin";
}

/* ---- table patterns ------------------------------------------------------------ */

/* The user's rights on the table named t[0..len), through the cache. */
static unsigned table_rights(kvs_auth_conn_t *ac, const char *t, size_t len)
{
    if (ac->cache_len == len && memcmp(ac->cache_table, t, len) == 0)
        return ac->cache_rights;
    unsigned r = 0;
    const kvs_user_t *u = ac->user->cfg;
    for (size_t i = 0; i < u->n_grants; i++)
        if (kvs_glob_match(u->grants[i].pattern, t, len))
            r |= u->grants[i].rights;
    memcpy(ac->cache_table, t, len);
    ac->cache_len = len;
    ac->cache_rights = r;
    return r;
}

uint32_t kvs_auth_check(kvs_auth_conn_t *ac, Kvs__CommandRequest__CommandCase cmd,
                        const void *table, size_t tlen, char *msg, size_t mlen)
{
    unsigned need = needed_rights(cmd);
    if (need == 0 || ac->trusted)
        return KVS_STATUS_OK;
    const char *name = kvs_msg_command_name(cmd);
    if (ac->user == NULL) {
        snprintf(msg, mlen,
                 "authentication required for %s: send Auth {user, token} first, or connect "
                 "with a client certificate that names a user",
                 name);
        return KVS_STATUS_UNAUTHENTICATED;
    }
    if (tlen > KVS_MAX_TABLE)
        tlen = KVS_MAX_TABLE; /* cannot happen: validated */
    unsigned have = table != NULL ? table_rights(ac, table, tlen) : ac->user->star_rights;
    if ((have & need) == need)
        return KVS_STATUS_OK;
    if (table == NULL)
        snprintf(msg, mlen, "user \"%s\" may not run %s: it needs %s on \"*\"", ac->user->cfg->name,
                 name, right_name(need));
    else
        snprintf(msg, mlen, "user \"%s\" may not run %s on table \"%.*s\": it needs %s",
                 ac->user->cfg->name, name, (int)tlen, (const char *)table, right_name(need));
    return KVS_STATUS_FORBIDDEN;
}

int kvs_auth_withholds(kvs_auth_conn_t *ac, Kvs__CommandRequest__CommandCase cmd, const void *table,
                       size_t tlen)
{
    if (!kvs_msg_shows_stored(cmd) || ac->trusted || ac->user == NULL || table == NULL)
        return 0;
    if (tlen > KVS_MAX_TABLE)
        tlen = KVS_MAX_TABLE; /* cannot happen: validated */
    return !(table_rights(ac, table, tlen) & KVS_RIGHT_READ);
}

/* ---- failures ------------------------------------------------------------------ */

/* Whether entry e is a better one to reuse than `best`: never one in
 * flight; an empty one, then one without failures, then one below the
 * limit, then the stalest. */
static int reusable_over(addr_count_t *e, addr_count_t *best, uint64_t now, uint32_t limit)
{
    if (e->busy)
        return 0;
    if (best == NULL || best->ip[0] == '\0')
        return best == NULL;
    if (e->ip[0] == '\0')
        return 1;
    uint32_t ne = kvs_window_count(&e->failures, now), nb = kvs_window_count(&best->failures, now);
    if ((ne == 0) != (nb == 0))
        return ne == 0;
    if ((ne >= limit) != (nb >= limit)) /* a refused address is forgotten last */
        return ne < limit;
    return e->last_ms < best->last_ms;
}

/* The count of `ip`, or a slot for it (see the file comment for which is
 * reused); NULL when not found and not created, or every slot is in
 * flight. */
static addr_count_t *addr_slot(kvs_auth_t *a, const char *ip, int create)
{
    addr_count_t *best = NULL;
    uint64_t now = uv_now(a->loop);
    for (size_t i = 0; i < KVS_AUTH_ADDRESSES; i++) {
        addr_count_t *e = &a->addrs[i];
        if (e->ip[0] != '\0' && strcmp(e->ip, ip) == 0)
            return e;
        if (create && reusable_over(e, best, now, a->cfg->auth_failures_per_minute))
            best = e; /* only a new entry needs the one to reuse */
    }
    if (!create || best == NULL)
        return NULL;
    snprintf(best->ip, sizeof(best->ip), "%s", ip);
    memset(&best->failures, 0, sizeof(best->failures));
    best->last_ms = now;
    return best;
}

__attribute__((format(printf, 2, 3))) static void log_failure(kvs_auth_t *a, const char *fmt, ...)
{
    if (!kvs_log_budget_take(&a->log_budget, uv_now(a->loop)))
        return;
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    kvs_warn("%s", line);
}

/* Counts a failure against the connection and its address; returns 1
 * when the connection has failed too often and must be closed. */
static int count_failure(kvs_auth_t *a, kvs_auth_conn_t *ac, const char *peer)
{
    char ip[64];
    kvs_addr_peer_host(peer, ip, sizeof(ip));
    addr_count_t *e = addr_slot(a, ip, 1);
    if (e != NULL) {
        e->last_ms = uv_now(a->loop);
        kvs_window_add(&e->failures, e->last_ms);
    }
    return ++ac->failures >= a->cfg->auth_failures;
}

/* ---- the check ------------------------------------------------------------------- */

static void start_next(kvs_auth_t *a);
static void address_free(kvs_auth_t *a, const char *ip);

static void attempt_free(kvs_auth_attempt_t *at)
{
    explicit_bzero(at->token, sizeof(at->token));
    free(at);
}

/* The attempt leaves the queue or the pool: its address may check the
 * next one (which can decide some at once and call their callbacks). */
static void attempt_done(kvs_auth_t *a, kvs_auth_attempt_t *at)
{
    char ip[sizeof(at->ip)];
    int had_slot = at->slot != NULL;
    if (had_slot)
        at->slot->busy = 0;
    memcpy(ip, at->ip, sizeof(ip));
    attempt_free(at);
    if (had_slot)
        address_free(a, ip);
}

static void work_check(uv_work_t *w)
{
    kvs_auth_attempt_t *at = w->data;
    if (at->auth->check_delay_ms != 0) { /* a dearer hash, without its CPU */
        struct timespec d = {(time_t)(at->auth->check_delay_ms / 1000),
                             (long)(at->auth->check_delay_ms % 1000) * 1000000L};
        while (nanosleep(&d, &d) != 0 && errno == EINTR)
            ;
    }
    const kvs_token_hash_t *decoy = &at->auth->decoy;
    const kvs_token_hash_t *h = at->user != NULL && at->user->has_token ? &at->user->hash : decoy;
    int rc = kvs_token_check(h, at->token, at->token_len);
    at->unchecked = rc < 0;
    at->ok = rc == 1 && h != decoy;
    if (h->iterations < decoy->iterations) { /* as dear as every other check */
        uint8_t pad[KVS_CRYPTO_SHA256];
        kvs_crypto_pbkdf2(at->token, at->token_len, decoy->salt, decoy->salt_len,
                          decoy->iterations - h->iterations, pad);
    }
}

/* Remembers a token that checked out: its HMAC under the process's key. */
static void remember(kvs_auth_t *a, kvs_auth_user_t *u, const uint8_t *token, size_t len)
{
    u->verified = kvs_crypto_hmac(a->key, sizeof(a->key), token, len, u->seen) == 0;
}

/* The answer to an Auth that did not check out, counted and logged. */
static uint32_t refuse(kvs_auth_t *a, kvs_auth_conn_t *ac, const char *user, const char *peer,
                       char *msg, size_t mlen, int *close)
{
    *close = count_failure(a, ac, peer);
    log_failure(a, "auth: failed Auth as \"%.100s\" from %s (%u on this connection%s)", user, peer,
                ac->failures, *close ? "; closing it" : "");
    snprintf(msg, mlen, "invalid user or token%s",
             *close ? " (too many failures: the connection is closed)" : "");
    return KVS_STATUS_UNAUTHENTICATED;
}

static void after_check(uv_work_t *w, int status)
{
    kvs_auth_attempt_t *at = w->data;
    kvs_auth_t *a = at->auth;
    char msg[300];
    int close = 0;
    uint32_t st = KVS_STATUS_OK;
    a->running--;
    if (at->ac != NULL) {
        kvs_auth_conn_t *ac = at->ac;
        ac->pending = NULL;
        if (status == 0 && at->ok) {
            remember(a, at->user, at->token, at->token_len);
            set_user(ac, at->user);
            snprintf(msg, sizeof(msg), "authenticated as \"%s\"", at->user->cfg->name);
        } else if (status == 0 && at->unchecked) {
            /* Not a failure: the token may well be right (not counted,
             * so a node short of memory locks nobody out). */
            st = KVS_STATUS_INTERNAL;
            snprintf(msg, sizeof(msg),
                     "the token could not be checked (hashing failed, most likely for want of "
                     "memory); retry");
        } else {
            st = refuse(a, ac, at->name, at->peer, msg, sizeof(msg), &close);
        }
        at->cb(at->arg, st, msg, close);
    }
    attempt_done(a, at);
    start_next(a);
}

static void start_next(kvs_auth_t *a)
{
    while (a->running < KVS_AUTH_MAX_WORKERS) {
        int lane = a->head[LANE_CLEAN] != NULL ? LANE_CLEAN : LANE_FAILED;
        kvs_auth_attempt_t *at = a->head[lane];
        if (at == NULL)
            break;
        a->head[lane] = at->next;
        if (a->head[lane] == NULL)
            a->tail[lane] = NULL;
        at->running = 1;
        at->work.data = at;
        a->running++;
        if (uv_queue_work(a->loop, &at->work, work_check, after_check) != 0) {
            at->ok = 0; /* cannot happen with a valid loop: fail closed */
            after_check(&at->work, UV_ECANCELED);
        }
    }
}

/* Takes `at` out of the list head/tail. */
static void list_remove(kvs_auth_attempt_t **head, kvs_auth_attempt_t **tail,
                        kvs_auth_attempt_t *at)
{
    kvs_auth_attempt_t **p = head, *prev = NULL;
    while (*p != NULL && *p != at) {
        prev = *p;
        p = &(*p)->next;
    }
    if (*p == at) {
        *p = at->next;
        if (*tail == at)
            *tail = prev;
    }
    at->next = NULL;
}

static void list_append(kvs_auth_attempt_t **head, kvs_auth_attempt_t **tail,
                        kvs_auth_attempt_t *at)
{
    at->next = NULL;
    if (*tail != NULL)
        (*tail)->next = at;
    else
        *head = at;
    *tail = at;
}

void kvs_auth_conn_close(kvs_auth_conn_t *ac)
{
    kvs_auth_attempt_t *at = ac->pending;
    ac->pending = NULL;
    if (at == NULL)
        return;
    at->ac = NULL;
    if (at->running)
        return; /* freed when its work returns */
    kvs_auth_t *a = at->auth;
    if (at->parked) {
        list_remove(&a->parked, &a->parked_tail, at);
        attempt_free(at);
        return;
    }
    list_remove(&a->head[at->lane], &a->tail[at->lane], at);
    attempt_done(a, at);
    start_next(a);
}

/* Decided without a check: tokens in the clear, an address over its limit,
 * a token remembered, a token too long. Returns the status, or 0 to check. */
static uint32_t decide_now(kvs_auth_t *a, kvs_auth_conn_t *ac, kvs_auth_user_t *u, const char *user,
                           const void *token, size_t len, const char *peer, char *msg, size_t mlen,
                           int *close)
{
    char ip[64];
    uint8_t mac[KVS_CRYPTO_SHA256];
    if (!ac->token_ok) {
        log_failure(a, "auth: refused a token sent in the clear from %s (enable TLS)", peer);
        snprintf(msg, mlen,
                 "Auth refused: tokens are accepted only over TLS, a unix socket or loopback, "
                 "and this connection is plaintext TCP; connect with TLS");
        return KVS_STATUS_UNAUTHENTICATED;
    }
    kvs_addr_peer_host(peer, ip, sizeof(ip));
    addr_count_t *e = addr_slot(a, ip, 0);
    uint64_t now = uv_now(a->loop);
    uint32_t limit = a->cfg->auth_failures_per_minute;
    if (e != NULL && kvs_window_count(&e->failures, now) >= limit) {
        uint64_t left = (kvs_window_wait_ms(&e->failures, now, limit) + 999) / 1000;
        *close = ++ac->failures >= a->cfg->auth_failures;
        log_failure(a, "auth: Auth from %s refused unchecked: %u failures within a minute", peer,
                    kvs_window_count(&e->failures, now));
        snprintf(msg, mlen,
                 "too many failed Auth attempts from %s (limits.auth_failures_per_minute = %u); "
                 "retry in %llu s",
                 ip, a->cfg->auth_failures_per_minute, (unsigned long long)left);
        return KVS_STATUS_UNAUTHENTICATED;
    }
    if (len > KVS_TOKEN_MAX) /* no user has one: not worth hashing on the loop */
        return refuse(a, ac, user, peer, msg, mlen, close);
    if (u != NULL && u->verified && kvs_crypto_hmac(a->key, sizeof(a->key), token, len, mac) == 0 &&
        kvs_crypto_equal(mac, u->seen, sizeof(mac))) {
        set_user(ac, u);
        snprintf(msg, mlen, "authenticated as \"%s\"", u->cfg->name);
        return KVS_STATUS_OK;
    }
    return 0;
}

/* Queues `at` for a check, or parks it while its address has one in
 * flight. One check at a time per address keeps one address from making
 * others wait; many addresses that fail could still fill the queue ahead
 * of a user's first Auth, so an address that failed in the last minute
 * (or that the table could not count) waits in the second lane, behind
 * every address that did not. */
static void admit(kvs_auth_t *a, kvs_auth_attempt_t *at)
{
    addr_count_t *e = addr_slot(a, at->ip, 1);
    if (e != NULL && e->busy) {
        at->parked = 1;
        list_append(&a->parked, &a->parked_tail, at);
        return;
    }
    at->parked = 0;
    at->slot = e;
    at->lane = e != NULL && kvs_window_count(&e->failures, uv_now(a->loop)) == 0 ? LANE_CLEAN
                                                                                 : LANE_FAILED;
    if (e != NULL)
        e->busy = 1;
    list_append(&a->head[at->lane], &a->tail[at->lane], at);
    start_next(a);
}

/* The first attempt parked for `ip`, taken off the parked list, or NULL. */
static kvs_auth_attempt_t *unpark(kvs_auth_t *a, const char *ip)
{
    for (kvs_auth_attempt_t *at = a->parked; at != NULL; at = at->next)
        if (strcmp(at->ip, ip) == 0) {
            list_remove(&a->parked, &a->parked_tail, at);
            at->parked = 0;
            return at;
        }
    return NULL;
}

/* `ip` has no attempt in flight any more: its parked attempts are decided
 * afresh, in order, until one needs a check (it is queued). */
static void address_free(kvs_auth_t *a, const char *ip)
{
    kvs_auth_attempt_t *at;
    while ((at = unpark(a, ip)) != NULL) {
        char msg[300];
        int close = 0;
        uint32_t st = decide_now(a, at->ac, at->user, at->name, at->token, at->token_len, at->peer,
                                 msg, sizeof(msg), &close);
        if (st == 0) {
            admit(a, at);
            return;
        }
        at->ac->pending = NULL;
        kvs_auth_done_cb cb = at->cb;
        void *arg = at->arg;
        attempt_free(at);
        cb(arg, st, msg, close);
    }
}

uint32_t kvs_auth_begin(kvs_auth_t *a, kvs_auth_conn_t *ac, const Kvs__Auth *m, const char *peer,
                        kvs_auth_done_cb cb, void *arg, char *msg, size_t mlen, int *close)
{
    *close = 0;
    if (ac->pending != NULL) { /* the caller's bug: refused, never a second attempt */
        snprintf(msg, mlen, "an Auth of this connection is still being checked");
        return KVS_STATUS_INTERNAL;
    }
    kvs_auth_user_t *u = find_user(a, m->user);
    uint32_t st = decide_now(a, ac, u, m->user, m->token, strlen(m->token), peer, msg, mlen, close);
    if (st != 0)
        return st;
    kvs_auth_attempt_t *at = calloc(1, sizeof(*at));
    if (at == NULL) {
        snprintf(msg, mlen, "server out of memory");
        return KVS_STATUS_INTERNAL;
    }
    at->auth = a;
    at->ac = ac;
    at->user = u;
    snprintf(at->name, sizeof(at->name), "%s", m->user);
    snprintf(at->peer, sizeof(at->peer), "%s", peer);
    kvs_addr_peer_host(peer, at->ip, sizeof(at->ip));
    at->token_len = strlen(m->token);
    memcpy(at->token, m->token, at->token_len);
    at->cb = cb;
    at->arg = arg;
    ac->pending = at;
    admit(a, at);
    return 0;
}

void kvs_auth_bound_conn(kvs_conn_t *c, kvs_unproven_t *u, uint32_t max_frame, int proven)
{
    kvs_conn_set_max_frame(c, !proven && max_frame > KVS_AUTH_UNAUTH_FRAME ? KVS_AUTH_UNAUTH_FRAME
                                                                           : max_frame);
    kvs_conn_cap_output(c, proven ? 0 : KVS_AUTH_UNAUTH_OUTPUT);
    kvs_unproven_set(u, c, !(proven && !kvs_conn_tls_pending(c)));
}
