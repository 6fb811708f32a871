/*
 * kvs_plugin.h: the plugin ABI of kvs (request hooks in shared objects).
 *
 * A plugin is a shared object named in config.yaml:
 *
 *   plugins:
 *     - /usr/lib/kvs/audit_log.so
 *     - {path: ./my_plugin.so, arg: "any text the plugin reads"}
 *
 * Every kvs-router router process and every kvs-node worker dlopen each one
 * at start (a relative path is relative to the working directory) and read
 * the object it exports under the name "kvs_plugin" (KVS_PLUGIN_SYMBOL):
 *
 *   #include "kvs_plugin.h"
 *
 *   static int my_init(const kvs_plugin_host_t *host, void **state) { ... }
 *
 *   KVS_PLUGIN_EXPORT const kvs_plugin_t kvs_plugin = {
 *       .struct_size = sizeof(kvs_plugin_t),
 *       .abi_version = KVS_PLUGIN_ABI_VERSION,
 *       .name = "my_plugin",
 *       .init = my_init,
 *       .fini = my_fini,
 *   };
 *
 * Loading: a file that cannot be opened, that has no kvs_plugin symbol, or
 * whose abi_version is not this header's KVS_PLUGIN_ABI_VERSION refuses the
 * start (exit status 78) with a message naming the file and its line in
 * config.yaml. init then runs once per process, on the loop thread, and
 * registers the plugin's hooks with host->add_hook; a nonzero return (and
 * the text it put in host->error) refuses the start the same way. fini runs
 * at exit. Plugins are not reloaded by SIGHUP.
 *
 * Hooks: four events around every request, in this order:
 *   KVS_HOOK_RECEIVED     a valid request arrived and has not run yet;
 *   KVS_HOOK_EXECUTED     its answer is known (the router: every shard
 *                         answered, or the router answered it itself; a
 *                         worker: it ran, its writes are in the open batch);
 *   KVS_HOOK_BEFORE_SEND  the answer is about to be queued for the client;
 *   KVS_HOOK_AFTER_SEND   the answer is queued for the client (it leaves in
 *                         this loop turn; in a worker, after the commit).
 * A request that is not valid (400 before it is understood), or that its
 * user may not make (access control answers 401 or 403 first), skips
 * RECEIVED; one whose client left skips the send events. A hook runs on the loop
 * thread of its process and must not block: it holds up every client.
 *
 * A hook returns 0 to let the request go on, or a status (400..599) to stop
 * it, with a message written into msg[0..msglen) (UTF-8 text; the host
 * writes any byte that is not printable text, control characters
 * included, as \xHH, and cuts the text at a whole character). At RECEIVED a stopped
 * request is not executed (nothing changes) and is answered with that
 * status and message; at EXECUTED its answer is replaced (a write has been
 * applied by then: say so in the message; the host keeps the replaced
 * answer's position and sets outcome_unknown where the client would
 * otherwise read the error as "nothing was written"). What a hook returns at the send
 * events is ignored. Hooks run in registration order, the built-in ones
 * (metrics, slow log) first; the first that stops a request ends the chain
 * for that event.
 *
 * Stability: structs carry their size; the host fills struct_size with its
 * own sizeof, and fields are only ever added at the end, so a plugin built
 * against an older header reads the fields it knows. A field is present
 * when struct_size > its offset (KVS_PLUGIN_HAS). Any other change bumps
 * KVS_PLUGIN_ABI_VERSION, and kvs refuses plugins built for another.
 */
#ifndef KVS_PLUGIN_H
#define KVS_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVS_PLUGIN_ABI_VERSION 1
#define KVS_PLUGIN_SYMBOL "kvs_plugin"
#define KVS_PLUGIN_EXPORT __attribute__((visibility("default")))

/* True when the host's struct *p has member m (it is built against this
 * header or a newer one). */
#define KVS_PLUGIN_HAS(p, m) ((p)->struct_size > offsetof(__typeof__(*(p)), m))

typedef enum kvs_hook_event_e {
    KVS_HOOK_RECEIVED = 0,
    KVS_HOOK_EXECUTED = 1,
    KVS_HOOK_BEFORE_SEND = 2,
    KVS_HOOK_AFTER_SEND = 3,
} kvs_hook_event_t;

#define KVS_HOOK_EVENTS 4
#define KVS_HOOK_MASK(ev) (1u << (ev))
#define KVS_HOOK_ALL 0xfu

/* A request as hooks see it. Valid only during the hook call: copy what you
 * keep. Strings are not NUL-terminated unless said so. */
typedef struct kvs_request_info_s {
    uint32_t struct_size;     /* the host's sizeof(kvs_request_info_t) */
    uint32_t command;         /* CommandRequest field number: 1 Hget, 4 Hset, ...; 0 none */
    const char *command_name; /* "Hget", ...; NUL-terminated */
    const char *table;        /* the table named, or NULL (Ping, Info, ...); not NUL-terminated;
                                 past RECEIVED a name over 200 bytes (refused) is cut to 201 */
    uint32_t table_len;
    uint32_t keys;           /* keys the request names (0 when none) */
    uint32_t write;          /* 1 for a write command (Hset Hmset Hdel Hmdel Hincr) */
    uint32_t status;         /* the answer's status; 0 at RECEIVED */
    const char *peer;        /* the client's address ("127.0.0.1:5000"); NUL-terminated */
    const char *identity;    /* the user the connection authenticated as (Auth, RESP AUTH,
                                a client certificate); "" when nobody (no users configured,
                                or a trusted unix socket peer); NUL-terminated */
    uint64_t conn_id;        /* the connection, unique within the process */
    uint64_t received_ns;    /* CLOCK_MONOTONIC when the request arrived (its bytes were read) */
    uint64_t now_ns;         /* CLOCK_MONOTONIC at this event; at the router's send events, the
                                time of the read that brought the answer (no clock read per
                                request), which is close to it; never less than received_ns
                                nor than an earlier event's now_ns */
    const char *client_name; /* the name the connection gave itself (RESP CLIENT SETNAME,
                                HELLO ... SETNAME), as it is now; "" when none;
                                NUL-terminated. Check KVS_PLUGIN_HAS(req, client_name). */
} kvs_request_info_t;

/* A hook (see above). `state` is what add_hook was given. Returns 0 or a
 * status to stop the request. */
typedef uint32_t (*kvs_hook_fn)(void *state, kvs_hook_event_t event, const kvs_request_info_t *req,
                                char *msg, size_t msglen);

typedef struct kvs_plugin_host_s kvs_plugin_host_t;

/* What the host offers init. Valid during init only, except `log`, which a
 * plugin may keep and call from its hooks. */
struct kvs_plugin_host_s {
    uint32_t struct_size; /* the host's sizeof(kvs_plugin_host_t) */
    uint32_t abi_version; /* KVS_PLUGIN_ABI_VERSION of the host */
    const char *role;     /* "router" or "node" */
    int32_t shard;        /* the worker's shard; -1 in the router */
    const char *arg;      /* the entry's `arg`, "" when none */
    const char *config_path;
    /* Registers `fn` for the events in `events` (KVS_HOOK_MASK bits).
     * Returns 0, or -1 when the chain is full (14 plugin hooks per event). */
    int (*add_hook)(const kvs_plugin_host_t *host, unsigned events, kvs_hook_fn fn, void *state);
    /* Writes one line to the process's log; level 0 debug, 1 info, 2 warn,
     * 3 error. */
    void (*log)(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
    char *error; /* init writes why it fails here (error_len bytes) */
    size_t error_len;
    void *host_data; /* the host's; do not touch */
};

typedef struct kvs_plugin_s {
    uint32_t struct_size; /* sizeof(kvs_plugin_t) as the plugin was built */
    uint32_t abi_version; /* KVS_PLUGIN_ABI_VERSION as the plugin was built */
    const char *name;     /* for log lines */
    /* Registers hooks; *state is handed to fini. Returns 0, or nonzero to
     * refuse the start (with a message in host->error). */
    int (*init)(const kvs_plugin_host_t *host, void **state);
    void (*fini)(void *state); /* may be NULL */
} kvs_plugin_t;

#ifdef __cplusplus
}
#endif

#endif
