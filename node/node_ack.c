/*
 * node_ack: a copy's acknowledgement, owed until its sender heard it (see
 * node_ack.h).
 */
#include "node_ack.h"
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"
#include "kvs_lookup.h"
#include "kvs_msg.h"
#include "kvs_testhook.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ATTEMPT_MS 10000u   /* an attempt that has no answer by then is tried again */
#define PAUSE_MIN_MS 1000u  /* the first pause before trying again */
#define PAUSE_MAX_MS 60000u /* ... doubling up to this */
#define ANSWER_MAX 65536u   /* the answer is a status line: a larger frame is not one */
#define FILE_MAX 4096       /* the file kvs writes is a few hundred bytes */

static uint32_t attempt_ms = ATTEMPT_MS;

void node_ack_set_attempt_ms(uint32_t ms)
{
    attempt_ms = ms;
}

typedef struct attempt_s { /* one connection; freed when its handles are closed */
    kvs_conn_t conn;       /* first: the close callback's pointer is the attempt's */
    uv_connect_t connect;
    node_ack_t *a; /* NULL once detached: its callbacks change nothing */
    int connected;
} attempt_t;

struct node_ack_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg; /* the worker's: outlives this */
    uint32_t shard;
    char path[4300];
    kvs_replica_t peer;
    char name[KVS_NODE_NAME_MAX + 1];
    uint8_t digest[KVS_HASH_LEN];
    kvs_tls_ctx_t *tls;         /* tls.link's, or NULL */
    uv_timer_t timer;           /* the attempt's deadline, or the pause after it */
    kvs_lookup_t *lookup;       /* the name's lookup in flight, or NULL */
    struct addrinfo *addrs;     /* what the name resolved to ... */
    struct addrinfo *next_addr; /* ... and the next to try if this connection fails */
    attempt_t *att;             /* the attempt in flight, or NULL */
    unsigned pause_ms;
    unsigned failures;
    int stopping;
};

int node_ack_peer_line(const char *line, const char *key, kvs_replica_t *p,
                       char name[KVS_NODE_NAME_MAX + 1])
{
    char fmt[32], word[KVS_NODE_NAME_MAX + 2], host[260], addr[300];
    unsigned port;
    size_t k = strlen(key);
    snprintf(fmt, sizeof(fmt), "%%%ds %%u %%259s", KVS_NODE_NAME_MAX + 1);
    if (strncmp(line, key, k) != 0 || line[k] != ' ' ||
        sscanf(line + k, fmt, word, &port, host) != 3 ||
        kvs_config_node_name_problem(word) != NULL || port == 0 || port > 65535 ||
        snprintf(addr, sizeof(addr), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port) >=
            (int)sizeof(addr) ||
        kvs_addr_parse(addr, 0, &p->addr, NULL, 0) != 0 || strlen(word) > KVS_NODE_NAME_MAX)
        return 0;
    memcpy(name, word, strlen(word) + 1);
    p->node = name;
    p->local = 0;
    return 1;
}

int node_ack_append_snapshot(kvs_buf_t *out, const char *node, const uint8_t *installed)
{
    Kvs__Snapshot s = KVS__SNAPSHOT__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    s.node = (char *)node;
    if (installed != NULL) {
        s.installed.data = (uint8_t *)installed;
        s.installed.len = KVS_HASH_LEN;
    }
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT;
    q.snapshot = &s;
    return kvs_msg_append(out, &q.base, SIZE_MAX) != 0 ? -ENOMEM : 0;
}

static void file_path(char *out, size_t len, const char *shard_dir)
{
    snprintf(out, len, "%s/" NODE_ACK_FILE, shard_dir);
}

int node_ack_owe(const char *shard_dir, uint32_t shard, const kvs_replica_t *peer,
                 const uint8_t digest[KVS_HASH_LEN])
{
    char path[4300], hex[2 * KVS_HASH_LEN + 1], text[1024];
    file_path(path, sizeof(path), shard_dir);
    kvs_hash_hex(digest, hex);
    int n = snprintf(text, sizeof(text),
                     "# kvs: this node installed the copy of shard %u that node %s sent, and "
                     "tells it so until it answers (its record of the copy lets the shard move "
                     "here)\nto %s %u %s\ninstalled %s\n",
                     shard, peer->node, peer->node, peer->addr.port, peer->addr.host, hex);
    if (n < 0 || (size_t)n >= sizeof(text))
        return -ENAMETOOLONG;
    return kvs_fs_write_synced(path, shard_dir, text, (size_t)n, 0);
}

void node_ack_void(const char *shard_dir)
{
    char path[4300];
    file_path(path, sizeof(path), shard_dir);
    if (unlink(path) == 0)
        kvs_fs_sync_dir(shard_dir);
}

/* Reads the file into a: 1, 0 when there is none, -1 when it cannot be
 * understood (logged). */
static int read_owed(node_ack_t *a)
{
    FILE *f = fopen(a->path, "re");
    if (f == NULL) {
        if (errno == ENOENT)
            return 0;
        kvs_warn("%s: cannot read: %s; the node that sent shard %u's copy is not told that it "
                 "is installed",
                 a->path, strerror(errno), a->shard);
        return -1;
    }
    char line[600], hex[2 * KVS_HASH_LEN + 2];
    int to = 0, installed = 0;
    for (int lines = 0; lines < FILE_MAX / 16 && fgets(line, sizeof(line), f) != NULL; lines++) {
        if (!to && node_ack_peer_line(line, "to", &a->peer, a->name))
            to = 1;
        else if (!installed && sscanf(line, "installed %33s", hex) == 1)
            installed = kvs_hash_unhex(hex, strlen(hex), a->digest) == 0;
    }
    fclose(f);
    if (to && installed)
        return 1;
    kvs_warn("%s cannot be understood: the node that sent shard %u's copy is not told that it "
             "is installed (remove the file)",
             a->path, a->shard);
    return -1;
}

/* ---- attempts ----------------------------------------------------------------------- */

static void try_again(node_ack_t *a, const char *why);
static void connect_next(node_ack_t *a, const char *why);

static void on_closed(kvs_conn_t *c)
{
    free((attempt_t *)c); /* conn is its first member */
}

/* Ends the connection in flight, if any: its callbacks change nothing
 * after. */
static void detach_conn(node_ack_t *a)
{
    attempt_t *att = a->att;
    if (att == NULL)
        return;
    a->att = NULL;
    att->a = NULL;
    att->conn.data = NULL;
    kvs_conn_close(&att->conn);
}

/* Ends the attempt: its connection, and the addresses left to try. */
static void detach(node_ack_t *a)
{
    detach_conn(a);
    uv_freeaddrinfo(a->addrs);
    a->addrs = a->next_addr = NULL;
}

/* The sender answered: the file has served its purpose. */
static void done(node_ack_t *a)
{
    detach(a);
    uv_timer_stop(&a->timer);
    if (unlink(a->path) != 0 && errno != ENOENT)
        kvs_warn("%s: cannot remove: %s (its acknowledgement is sent again at the next start)",
                 a->path, strerror(errno));
}

static void on_frame(kvs_conn_t *c, const uint8_t *payload, size_t len)
{
    node_ack_t *a = c->data;
    kvs_answer_peek_t ans;
    char why[600];
    if (a == NULL)
        return;
    if (!kvs_msg_answer_peek(payload, len, &ans)) {
        try_again(a, "its answer is not a status");
        return;
    }
    int n = ans.message_len > 400 ? 400 : (int)ans.message_len;
    const char *msg = ans.message != NULL ? (const char *)ans.message : "";
    if (ans.status == KVS_STATUS_OK) {
        kvs_info("shard %u: node %s heard that this node installed its copy (%.*s)", a->shard,
                 a->name, n, msg);
        done(a);
    } else if (ans.status == KVS_STATUS_NOT_FOUND) { /* no fence stands there: the usual case */
        kvs_info("shard %u: node %s keeps no record of copies now (%.*s): the acknowledgement "
                 "is not needed",
                 a->shard, a->name, n, msg);
        done(a);
    } else if (ans.status >= 400 && ans.status < 500 && ans.status != KVS_STATUS_UNAUTHENTICATED &&
               ans.status != KVS_STATUS_FORBIDDEN) { /* those may be mended there: again */
        kvs_warn("shard %u: node %s answered %u to this node's acknowledgement of its copy: "
                 "%.*s; not sent again",
                 a->shard, a->name, ans.status, n, msg);
        done(a);
    } else {
        snprintf(why, sizeof(why), "it answered %u: %.*s", ans.status, n, msg);
        try_again(a, why);
    }
}

static void on_error(kvs_conn_t *c, int err)
{
    node_ack_t *a = c->data;
    if (a == NULL)
        return;
    const char *tls = kvs_conn_tls_error(c);
    try_again(a, (err == KVS_ETLS || err == KVS_ENOTLS) && tls[0] != '\0' ? tls
                 : err == KVS_ECLOSED ? "it closed the connection without an answer"
                                      : kvs_strerror(err));
}

static void send_ack(kvs_conn_t *c)
{
    node_ack_t *a = c->data;
    if (a == NULL)
        return;
    if (node_ack_append_snapshot(&c->out, a->cfg->node_name, a->digest) != 0) {
        try_again(a, "out of memory");
        return;
    }
    kvs_conn_queue(c);
}

static void on_connected(uv_connect_t *req, int status)
{
    attempt_t *att = req->data;
    node_ack_t *a = att->a;
    if (a == NULL)
        return; /* detached: it is being closed */
    char why[200];
    if (status != 0 || kvs_conn_start(&att->conn) != 0) {
        snprintf(why, sizeof(why), "cannot connect: %s",
                 uv_strerror(status != 0 ? status : UV_ENOMEM));
        detach_conn(a);
        connect_next(a, why); /* the name's next address, or again later */
        return;
    }
    att->connected = 1;
    if (att->conn.tls == NULL)
        send_ack(&att->conn);
}

/* Connects to the next address the name resolved to (a dual-stack
 * name's IPv6 and IPv4, several A records), as clients of such names do;
 * after the last, tries again later, saying `why` the last one failed. */
static void connect_next(node_ack_t *a, const char *why)
{
    char err[200];
    while (a->next_addr != NULL) {
        const struct addrinfo *ai = a->next_addr;
        a->next_addr = ai->ai_next;
        attempt_t *att = calloc(1, sizeof(*att));
        if (att == NULL ||
            kvs_conn_init(&att->conn, a->loop, 0, ANSWER_MAX, on_frame, on_error, on_closed) != 0) {
            free(att); /* uv_tcp_init and uv_timer_init do not fail: nothing is open */
            try_again(a, "out of memory");
            return;
        }
        att->a = a;
        att->conn.data = a;
        att->connect.data = att;
        a->att = att;
        int rc = 0;
        if (a->tls != NULL) {
            att->conn.on_ready = send_ack;
            rc = kvs_conn_use_tls(&att->conn, a->tls, a->peer.addr.host);
            if (rc != 0) {
                try_again(a, kvs_strerror(rc));
                return;
            }
        }
        rc = uv_tcp_connect(&att->connect, &att->conn.h.tcp, ai->ai_addr, on_connected);
        if (rc == 0)
            return;
        snprintf(err, sizeof(err), "cannot connect: %s", uv_strerror(rc));
        why = err;
        detach_conn(a);
    }
    try_again(a, why);
}

static void on_resolved(kvs_lookup_t *lk, void *data, int status, struct addrinfo *res)
{
    node_ack_t *a = data;
    char why[400];
    (void)lk;
    a->lookup = NULL;
    if (status != 0 || res == NULL) {
        uv_freeaddrinfo(res);
        snprintf(why, sizeof(why), "cannot resolve %s: %s", a->peer.addr.host,
                 status != 0 ? uv_strerror(status) : "no address");
        try_again(a, why);
        return;
    }
    a->addrs = a->next_addr = res;
    connect_next(a, "no address");
}

static void on_timer(uv_timer_t *t);

/* Starts an attempt: the lookup (numeric addresses too: one path), then
 * the connection. Its deadline is attempt_ms (ATTEMPT_MS but in tests). */
static void attempt(node_ack_t *a)
{
    char why[400];
    uv_timer_start(&a->timer, on_timer, attempt_ms, 0);
    int rc = kvs_lookup_start(a->loop, &a->peer.addr, on_resolved, a, &a->lookup);
    if (rc != 0) {
        snprintf(why, sizeof(why), "cannot resolve %s: %s", a->peer.addr.host, uv_strerror(rc));
        try_again(a, why);
        return;
    }
}

/* The attempt failed: a pause, then another (logged at the first failure
 * and every tenth). */
static void try_again(node_ack_t *a, const char *why)
{
    detach(a);
    if (a->stopping)
        return;
    if (a->failures++ % 10 == 0)
        kvs_warn("shard %u: cannot tell node %s yet that this node installed its copy (%s): "
                 "trying again in %u s, and while it fails up to every %u s",
                 a->shard, a->name, why, a->pause_ms / 1000, PAUSE_MAX_MS / 1000);
    uv_timer_start(&a->timer, on_timer, a->pause_ms, 0);
    a->pause_ms = a->pause_ms >= PAUSE_MAX_MS / 2 ? PAUSE_MAX_MS : a->pause_ms * 2;
}

static void on_timer(uv_timer_t *t)
{
    node_ack_t *a = t->data;
    if (a->lookup != NULL) { /* the deadline, in the lookup: given up (its thread runs on) */
        char why[64];
        kvs_lookup_abandon(a->lookup);
        a->lookup = NULL;
        snprintf(why, sizeof(why), "the address lookup took longer than %u ms", attempt_ms);
        try_again(a, why);
    } else if (a->att != NULL && !a->att->connected && a->next_addr != NULL) {
        /* This address drops connection attempts: the name's next one,
         * with a deadline of its own. */
        detach_conn(a);
        uv_timer_start(&a->timer, on_timer, attempt_ms, 0);
        connect_next(a, "no address");
    } else if (a->att != NULL) { /* the deadline */
        char why[64];
        snprintf(why, sizeof(why), "no answer within %u ms", attempt_ms);
        try_again(a, why);
    } else { /* the pause is over */
        attempt(a);
    }
}

/* ---- entry ---------------------------------------------------------------------------- */

int node_ack_start(uv_loop_t *loop, const kvs_config_t *cfg, uint32_t shard, node_ack_t **out)
{
    *out = NULL;
    if (cfg->node_name[0] == '\0')
        return 0;
    uint64_t ms;
    if (kvs_test_hook_u64("KVS_TEST_ACK_ATTEMPT_MS", &ms) && ms > 0 && ms <= UINT32_MAX) {
        attempt_ms = (uint32_t)ms;
        kvs_warn("test hook: an acknowledgement's attempt has %u ms (KVS_TEST_ACK_ATTEMPT_MS)",
                 attempt_ms);
    }
    node_ack_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return -ENOMEM;
    a->loop = loop;
    a->cfg = cfg;
    a->shard = shard;
    snprintf(a->path, sizeof(a->path), "%s/shard-%u/" NODE_ACK_FILE, cfg->data_dir, shard);
    if (read_owed(a) <= 0) {
        free(a);
        return 0;
    }
    if (cfg->tls_link.enabled) {
        char err[512];
        int rc =
            kvs_conn_tls_from_config(cfg, &cfg->tls_link, "tls.link", 0, &a->tls, err, sizeof(err));
        if (rc != 0) {
            kvs_error("shard %u: cannot tell node %s that this node installed its copy: %s", shard,
                      a->name, rc == KVS_ECONFIG ? err : kvs_strerror(rc));
            free(a);
            return 0;
        }
    }
    a->pause_ms = PAUSE_MIN_MS;
    uv_timer_init(loop, &a->timer);
    a->timer.data = a;
    attempt(a);
    *out = a;
    return 0;
}

void node_ack_stop(node_ack_t *a)
{
    if (a == NULL || a->stopping)
        return;
    a->stopping = 1;
    detach(a);
    if (a->lookup != NULL) /* its thread runs on, and frees what it finds */
        kvs_lookup_abandon(a->lookup);
    a->lookup = NULL;
    uv_close((uv_handle_t *)&a->timer, NULL);
}

void node_ack_free(node_ack_t *a)
{
    if (a == NULL)
        return;
    uv_freeaddrinfo(a->addrs); /* NULL once stopped */
    kvs_tls_ctx_free(a->tls);
    free(a);
}
