/*
 * kvs_config: config.yaml -> an immutable kvs_config_t.
 *
 * One file drives a node. Every key has a default, so an empty file (or the
 * shipped config.yaml) is a working single-node setup with Kafka off. The
 * loader is a table of directives (path, type, where it goes, how it is
 * checked); a key not in the table is an error, never silently ignored, and
 * every error is reported as "file:line:column: message" so the user can go
 * straight to it.
 *
 * Recognized keys and defaults:
 *
 *   data_dir: ./data         <data_dir>/shard-N.sock must fit a unix socket
 *                            path (107 bytes) for every local shard N
 *   cluster:
 *     shards: 4              1..1024
 *     partitions: 64         >= shards, <= 65536
 *     remote: []             shards served by other nodes, one copy each:
 *                            - {shard: 2, address: HOST:PORT}
 *                            (not spawned here; the router connects there)
 *     nodes: []              the cluster map with replicas (instead of
 *                            remote): - {name: a, address: HOST:PORT,
 *                            shards: [0, 1]}, every node that serves
 *                            shards; address is its workers' base TCP
 *                            address (shard N on PORT+N). Needs node.name.
 *     bootstrap: snapshot    how a new replica with no data starts: snapshot
 *                            (copy a live peer's environment, then the
 *                            topic's tail; a full replay when no peer can
 *                            send one) | replay (always the whole topic)
 *   router:
 *     listen: 127.0.0.1:9527 HOST:PORT or [V6]:PORT
 *     resp_listen: ""        HOST:PORT for Redis protocol clients; "" = off; checked at load: an
 *                            IPv4/IPv6 address must parse, a name must be a
 *                            valid host name (resolved later, at bind)
 *     timeout: 5s            a shard that does not answer within this gets
 *                            the request answered 503
 *     processes: auto        router processes sharing the listeners
 *                            (SO_REUSEPORT); auto = the CPUs this process
 *                            may run on, at most 8; 1..64. Stored as 0
 *                            for auto (the master resolves it)
 *     ready_timeout: 30s     the local workers must all answer within this
 *                            at start, or the router gives up (exit 1)
 *     liveness_timeout: 10s  a serving router process that sends the master
 *                            no heartbeat for this long is killed and
 *                            restarted; 0 = off, else 100ms..1h
 *     local_reads: true      answer reads of local shards from their LMDB
 *                            environments (read-only) instead of asking
 *                            the worker; false: every request goes to it
 *     retry_percent: 10      reads retried on another replica may add at
 *                            most this percent of reads (0..100) ...
 *     retry_burst: 100       ... plus this many (token bucket per router)
 *     metrics_listen: ""     HOST:PORT serving Prometheus metrics over HTTP
 *                            (GET /metrics); "" = off
 *     metrics_auth: true     with users: a scrape authenticates as a user
 *                            with admin (client certificate or HTTP Basic
 *                            user:token); false: whoever reaches the port
 *   node:
 *     name: ""               this node's name in cluster.nodes (letters,
 *                            digits, '.', '_', '-'; at most 64); with a name,
 *                            Kafka offsets are committed under the consumer
 *                            group "<kafka.group_id>.<name>"
 *     listen: ""             "" = unix socket only (with cluster.nodes: this
 *                            node's address there); "HOST:PORT" = shard N
 *                            also listens on TCP port PORT+N
 *   storage:
 *     sync: batch            full | batch | none
 *     sync_interval: 1s      duration (ms, s, m); how often `batch` syncs
 *     map_size: 1GiB         initial LMDB map size, 1MiB..16TiB; grows
 *                            automatically
 *     max_tables: 256        named LMDB databases per shard, 1..32000
 *   limits:
 *     max_frame: 4MiB        size; 1KiB .. 1GiB
 *     max_inflight: 1024     requests in flight per router client before
 *                            the router stops reading from it; 1..1000000
 *     max_keys: 250000       keys (Hmset: pairs) one request may name;
 *                            1..100000000
 *     client_output: 64MiB   answers a connection may owe: at a quarter of
 *                            this its requests stop being executed, past it
 *                            the connection is closed; >= 4 x max_frame
 *     max_clients: 10000     connections per listener; more are refused
 *                            (lowered at start to what the descriptor
 *                            limit allows)
 *     idle_timeout: 0        close clients idle this long (0 = never)
 *     frame_timeout: 30s     a request frame must arrive whole within this
 *     auth_timeout: 10s      with users, a client must authenticate within
 *                            this of its connection (0 = never)
 *     input_buffers: 256MiB  memory all connections' incomplete frames may
 *                            hold together; >= max_frame
 *     output_buffers: 1GiB   memory all clients' answers may take together;
 *                            past it the client whose answers take the
 *                            most is closed; >= client_output
 *     auth_failures: 3       failed Auth attempts on one connection before it
 *                            is closed; 1..100
 *     auth_failures_per_minute: 20   failed Auth attempts per client address
 *                            in any 60 s; beyond, Auth is refused unchecked
 *                            until enough are a minute old; 1..100000
 *   kafka:
 *     brokers: ""            "" = ingestion off
 *     group_id: kvs
 *     bindings: []           - {topic: T, table: X, format: raw|string|value,
 *                               partitions: N, partitioner: P}
 *                               N defaults to cluster.partitions; workers check
 *                               it against the topic at start. P is how the
 *                               topic's producers place keys: murmur2 (default,
 *                               Java), crc32 (librdkafka), fnv1a (Sarama) or
 *                               none (they choose; reads ask every shard)
 *     max_lag: 10000         records a worker may be behind on a partition
 *                            and still serve reads of it (catch-up gate)
 *     properties: {}         librdkafka properties passed through as-is
 *   log:
 *     level: info            debug | info | warn | error
 *     format: text           text | json (one JSON object per line)
 *     slow_threshold: 10ms   requests slower than this go to the slow log;
 *                            0 = every request, off = no slow log
 *     slow_max: 128          slow log entries kept, 1..100000
 *   plugins: []              shared objects with request hooks, loaded at
 *                            start: - PATH, or - {path: PATH, arg: TEXT}
 *   tls:                     TLS material shared by the endpoints below
 *     cert: ""               PEM certificate chain this node presents
 *     key: ""                its PEM private key
 *     ca: ""                 PEM CA bundle peers' certificates must chain to
 *     min_version: TLS1.2    TLS1.2 | TLS1.3
 *     max_version: TLS1.3
 *     ciphers: <AEAD, ECDHE> TLS 1.2 cipher list (OpenSSL syntax)
 *     ciphersuites: <AEAD>   TLS 1.3 suites
 *     router:                the router's client listener (router.listen)
 *       enabled: false
 *       client_cert: none    none | optional | require
 *       cert, key, ca: ""    this endpoint's own (default: tls.cert/key/ca)
 *     node:                  workers' TCP listeners (node.listen)
 *       enabled: false
 *       client_cert: require
 *       cert, key, ca: ""
 *     metrics:               the metrics port (router.metrics_listen): HTTPS
 *       enabled: false
 *       client_cert: none    none | optional | require
 *       cert, key, ca: ""
 *     link:                  the router's links to cluster.remote workers
 *       enabled: false       (mutual TLS: needs a certificate, key and CA)
 *       cert, key, ca: ""
 *       verify_host: true    the worker's certificate must name the host
 *                            of its cluster.remote address
 *   users: []                - name: alice          (unique; a client
 *                                                     certificate whose CN or
 *                                                     SAN is this name is alice)
 *                              token: pbkdf2-sha256$...   (kvs-cli hash-token;
 *                                                     none: certificate only)
 *                              allow: {"orders*": [read, write], "*": read}
 *                            rights on table patterns (globs over UTF-8
 *                            characters, see kvs_auth): read,
 *                            write, admin. With no users, every client may
 *                            do everything.
 *
 * Live reload (SIGHUP): kvs_config_reload_check says which keys differ and
 * whether all of them may change in a running process, and
 * kvs_config_apply_live moves the live keys' values into the running
 * config (which keeps its address, so whoever holds a pointer to it reads
 * the new values). Live: log.*, router.timeout, router.ready_timeout,
 * router.liveness_timeout, router.retry_percent, router.retry_burst,
 * storage.sync_interval, limits.* except max_frame, kafka.max_lag,
 * cluster.bootstrap, and cluster.nodes as long as this node's own address stays (moving shards
 * between nodes: kvs_config_apply_map). Every other
 * key may not change live: listeners, the cluster's shape, storage layout,
 * Kafka's brokers, bindings and properties, tls.*, users, plugins (TLS
 * files are read again at every reload, at the paths configured).
 *
 * The text is YAML without tags (every value is read as text; !!binary and
 * the like are refused). Anchors and aliases are allowed (at most 100
 * anchors), but a file may nest at most 16 levels and hold at most 500000
 * values and 64 MiB of text with every alias counted as the value it
 * repeats; users may list at most 10000 entries, cluster.nodes 1024,
 * kafka.bindings 4096.
 *
 * Sizes accept a plain integer (bytes) or a suffix B, KiB, MiB, GiB, TiB
 * (powers of 1024) or kB, MB, GB, TB (powers of 1000). Durations accept a
 * plain integer (milliseconds) or a suffix ms, s, m.
 */
#ifndef KVS_CONFIG_H
#define KVS_CONFIG_H

#include "kvs_log.h"
#include "kvs_place.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    KVS_SYNC_FULL = 0,  /* data and metadata synced at every commit */
    KVS_SYNC_BATCH = 1, /* data synced at every commit, metadata every sync_interval */
    KVS_SYNC_NONE = 2,  /* never synced; the OS writes back when it likes */
} kvs_sync_t;

typedef enum {
    KVS_FORMAT_RAW = 0,    /* payload stored as Value.binary_value */
    KVS_FORMAT_STRING = 1, /* payload must be UTF-8; stored as Value.string_value */
    KVS_FORMAT_VALUE = 2,  /* payload is an encoded kvs.Value, stored as-is */
} kvs_format_t;

typedef struct kvs_binding_s {
    char *topic;
    char *table;
    size_t table_len; /* strlen(table), for lookups by a length-delimited name */
    kvs_format_t format;
    uint32_t partitions;           /* the topic's partition count; 0 = cluster.partitions */
    kvs_partitioner_t partitioner; /* how the topic's producers place keys */
} kvs_binding_t;

typedef struct kvs_kv_s {
    char *key;
    char *value;
} kvs_kv_t;

typedef enum {
    KVS_CLIENT_CERT_NONE = 0,     /* no client certificate is asked for */
    KVS_CLIENT_CERT_OPTIONAL = 1, /* asked for; verified when sent */
    KVS_CLIENT_CERT_REQUIRE = 2,  /* required and verified */
} kvs_client_cert_t;

/* One TLS endpoint (tls.router, tls.node, tls.link). After loading, cert,
 * key and ca are the effective ones: the endpoint's own, or tls.cert,
 * tls.key, tls.ca. */
typedef struct kvs_tls_endpoint_s {
    int enabled;
    char *cert, *key, *ca;
    int client_cert; /* kvs_client_cert_t (listeners) */
    int verify_host; /* tls.link */
} kvs_tls_endpoint_t;

/* Rights a user may hold on tables (kvs_grant_t.rights). */
enum {
    KVS_RIGHT_READ = 1u,  /* Hget Hmget Hexist Hmexist Hgetall Hscan */
    KVS_RIGHT_WRITE = 2u, /* Hset Hmset Hdel Hmdel */
    KVS_RIGHT_ADMIN = 4u, /* Info (on "*") and operational commands */
};

typedef struct kvs_grant_s {
    char *pattern;   /* a glob over table names' characters (kvs_auth: * matches any run) */
    unsigned rights; /* KVS_RIGHT_* */
} kvs_grant_t;

typedef struct kvs_user_s {
    char *name;
    char *token; /* its hash in kvs_token's text form (validated), or NULL */
    kvs_grant_t *grants;
    size_t n_grants;
} kvs_user_t;

/* One entry of `plugins`: the shared object, the text handed to its init,
 * and where the entry is in the file (1-based; 0 when not from a file), so
 * a plugin that cannot load is reported at its line. */
typedef struct kvs_plugin_conf_s {
    char *path;
    char *arg; /* "" when not given */
    uint32_t line, column;
} kvs_plugin_conf_t;

/* log.slow_threshold: off. */
#define KVS_SLOWLOG_OFF UINT64_MAX

typedef struct kvs_remote_s {
    uint32_t shard;
    char *address; /* HOST:PORT of the worker serving it */
} kvs_remote_t;

/* One node of cluster.nodes: the shards it serves and where. */
typedef struct kvs_node_s {
    char *name;
    char *address;    /* HOST:PORT: its workers' base TCP address (shard N on PORT+N) */
    uint32_t *shards; /* sorted, unique */
    size_t n_shards;
} kvs_node_t;

typedef enum {
    KVS_BOOTSTRAP_SNAPSHOT = 0, /* copy a live peer's environment, replay when none can */
    KVS_BOOTSTRAP_REPLAY = 1,   /* always replay the topics from their start */
} kvs_bootstrap_t;

#define KVS_NODE_NAME_MAX 64
#define KVS_MAX_REPLICAS 64         /* nodes serving one shard, at most */
#define KVS_ROUTER_PROCESSES_MAX 64 /* router.processes */
#define KVS_SHARDS_MAX 1024         /* cluster.shards */
#define KVS_NODES_MAX 1024          /* cluster.nodes entries */
#define KVS_USERS_MAX 10000         /* users entries */
#define KVS_BINDINGS_MAX 4096       /* kafka.bindings entries */
#define KVS_MAX_BROKERS 64          /* kafka.brokers entries */

typedef struct kvs_config_s {
    char *path; /* file it was loaded from ("<string>" for kvs_config_parse) */
    char *data_dir;

    uint32_t shards;
    uint32_t partitions;
    kvs_remote_t *remote; /* sorted by shard */
    size_t n_remote;
    kvs_node_t *nodes; /* cluster.nodes, in file order (the map) */
    size_t n_nodes;
    kvs_bootstrap_t bootstrap;
    char *node_name;        /* node.name; "" when unset */
    const kvs_node_t *self; /* this node's entry in `nodes`, or NULL without a map */
    /* With a map: XXH3-128 of cluster.shards, cluster.partitions and every
     * node's name, address and shards (nodes taken by name, so the order
     * they are listed in does not count). A worker answers Ping with it
     * (CommandResponse.cluster_map) and a router compares a peer's with
     * its own. */
    uint8_t map_digest[16];
    int has_map_digest;

    char *router_listen;
    char *resp_listen; /* "" = no Redis protocol listener */
    uint64_t router_timeout_ms;
    uint64_t router_ready_timeout_ms;
    uint64_t router_liveness_timeout_ms; /* 0 = off */
    int router_local_reads;              /* answer reads of local shards from their environments */
    char *node_listen;                   /* "" when unset (with a map: self->address stands in) */
    uint32_t retry_percent;
    uint32_t retry_burst;
    uint32_t router_processes; /* 0 = auto */
    char *metrics_listen;      /* "" = no metrics listener */
    int metrics_auth;          /* with users: a scrape needs a user with admin */

    kvs_sync_t sync;
    uint64_t sync_interval_ms;
    uint64_t map_size;
    uint32_t max_tables;

    uint64_t max_frame;
    uint32_t max_inflight;
    uint32_t max_keys;         /* keys (Hmset: pairs) one request may name */
    uint64_t client_output;    /* bytes of answers a connection may owe before it is closed */
    uint32_t max_clients;      /* connections per listener */
    uint64_t idle_timeout_ms;  /* 0 = never */
    uint64_t frame_timeout_ms; /* 0 = never */
    uint64_t auth_timeout_ms;  /* 0 = never */
    uint64_t input_buffers;    /* bytes all incomplete frames may hold together */
    uint64_t output_buffers;   /* bytes all clients' answers may take together */
    uint32_t auth_failures;    /* failed Auth attempts per connection before it is closed */
    uint32_t auth_failures_per_minute; /* per client address */

    char *kafka_brokers; /* "" = off */
    char *kafka_group_id;
    kvs_binding_t *bindings;
    size_t n_bindings;
    uint32_t kafka_max_lag; /* catch-up gate, in records */
    kvs_kv_t *kafka_properties;
    size_t n_kafka_properties;

    char *log_level; /* validated: parses with kvs_log_level_parse; stored lowercase */
    kvs_log_format_t log_format;
    uint64_t slow_threshold_ms; /* KVS_SLOWLOG_OFF: no slow log; 0: every request */
    uint32_t slow_max;          /* entries the slow log keeps */

    char *tls_cert, *tls_key, *tls_ca;
    int tls_min_version, tls_max_version; /* 0 = TLS1.2, 1 = TLS1.3 */
    char *tls_ciphers, *tls_ciphersuites;
    kvs_tls_endpoint_t tls_router, tls_node, tls_link, tls_metrics;

    kvs_user_t *users; /* none: no authentication, no authorization */
    size_t n_users;

    kvs_plugin_conf_t *plugins;
    size_t n_plugins;

    /* Where the file set each key (kvs_config's own: its directive
     * table's order), for messages about a key after the load (a refused
     * reload). NULL for a config not made by a load or parse. */
    struct kvs_config_pos_s *key_pos;
} kvs_config_t;

/* When `text` begins with a key the file set ("tls.router.cert ...",
 * "data_dir ..."), writes "file:line:column" of it into out[0..cap) and
 * returns 1; else 0. For messages about a key checked after the load. */
int kvs_config_where(const kvs_config_t *cfg, const char *text, char *out, size_t cap);

/* A config file larger than this is a mistake (or not a file: /dev/zero);
 * it is refused (EFBIG) before more of it is read. */
#define KVS_CONFIG_MAX_FILE (64u << 20)

/* Loads and validates `path`. On success returns 0 and *out owns a config
 * (free with kvs_config_free). On failure returns KVS_ECONFIG (or -errno if
 * the file cannot be read) and writes "file:line:column: message" (or
 * "file: message" when there is no position) into err[0..errlen); *out is
 * then NULL. err may be NULL when errlen is 0. */
int kvs_config_load(const char *path, kvs_config_t **out, char *err, size_t errlen);

/* Opens the config file `path` to read it. For a `reload` (a running
 * process, whose loop must not stop) a FIFO, pipe or socket is refused
 * rather than waited for: opening one blocks until a writer comes.
 * Returns the descriptor, or -errno (KVS_ECONFIG for a pipe) with
 * err[0..errlen) saying why ("PATH: cannot open: ..."). */
int kvs_config_open(const char *path, int reload, char *err, size_t errlen);

/* Same, from the content of an open descriptor (read from offset 0 with
 * pread, so its offset, which other processes may share, does not move);
 * `path` names it in messages and in cfg->path. A router process loads
 * the master's snapshot of the file this way. */
int kvs_config_load_fd(const char *path, int fd, kvs_config_t **out, char *err, size_t errlen);

/* A reload's text: what `from` names (a process's snapshot of the file,
 * /proc/PID/fd/N: every process of a node applies the text the master
 * accepted, even if the file changed again since), or, when `from` is NULL
 * or cannot be opened, the file `path` itself (then *fell_back is the
 * errno of that open, else 0). Returns as kvs_config_load. */
int kvs_config_load_from(const char *path, const char *from, kvs_config_t **out, char *err,
                         size_t errlen, int *fell_back);

/* Same, from a string; `name` stands in for the file name in messages. */
int kvs_config_parse(const char *name, const char *text, size_t len, kvs_config_t **out, char *err,
                     size_t errlen);

/* The partition count placement uses for `table`: its binding's topic
 * partition count, or cluster.partitions for tables bound to no topic. */
uint32_t kvs_config_table_partitions(const kvs_config_t *cfg, const char *table);

/* The binding of `table`, or NULL. */
const kvs_binding_t *kvs_config_binding(const kvs_config_t *cfg, const char *table);

/* The binding of the table named table[0..len) (not NUL-terminated), or
 * NULL. Cheap enough for every request: one length compare per binding,
 * memcmp only on equal lengths. */
const kvs_binding_t *kvs_config_binding_n(const kvs_config_t *cfg, const void *table, size_t len);

/* The remote entry for `shard`, or NULL when the shard is local
 * (cluster.remote form only; NULL for every shard with cluster.nodes). */
const kvs_remote_t *kvs_config_remote(const kvs_config_t *cfg, uint32_t shard);

/* The value kafka.properties sets for `key` (the last one, as librdkafka
 * applies them in order), or NULL when it sets none. */
const char *kvs_config_kafka_property(const kvs_config_t *cfg, const char *key);

/* True for a kafka.properties key whose value is a secret and must never
 * be logged or shown: *.password, sasl.*, ssl.key.* (librdkafka's
 * sasl.password, ssl.key.password, ssl.key.pem, ssl.keystore.password,
 * sasl.oauthbearer.client.secret, ...). */
int kvs_config_secret_key(const char *key);
/* What is unsafe about the config file at `path`, which `cfg` was loaded
 * from: writable by its group or by others (whoever may write it decides
 * what the node runs: plugins load code, users grant rights), or readable
 * by others while it holds secrets (users' token hashes, kafka.properties
 * that kvs_config_secret_key names). Like ssh's checks of key files, but a
 * warning: the node still starts. Writes one line saying what to change into
 * msg[0..len) and returns 1, or returns 0 with msg "" when the mode is fine
 * or `path` cannot be stat'ed (the load itself reports that). */
int kvs_config_file_warning(const kvs_config_t *cfg, const char *path, char *msg, size_t len);

/* True when this node runs a worker for `shard`: with cluster.nodes, when
 * its own entry lists the shard; otherwise when cluster.remote does not
 * name it. */
int kvs_config_local(const kvs_config_t *cfg, uint32_t shard);

/* True when `node` serves `shard`. */
int kvs_node_serves(const kvs_node_t *node, uint32_t shard);

/* Whether shard `s` runs on this node (its worker listens at node.listen's
 * PORT+s): a shard of this node in the map, or, without one, any shard
 * cluster.remote does not name. */
int kvs_config_shard_is_local(const kvs_config_t *c, uint32_t s);

/* Copies of `shard` in the cluster: the nodes of cluster.nodes serving it,
 * or 1 (its one worker, here or remote) without a map. */
uint32_t kvs_config_replica_count(const kvs_config_t *cfg, uint32_t shard);

/* The node named `name` in cluster.nodes, or NULL. */
const kvs_node_t *kvs_config_node(const kvs_config_t *cfg, const char *name);

/* What is wrong with `name` as a node's name, or NULL when nothing is. A
 * node's name goes into consumer group names, log lines and file names:
 * it is kept to characters that need no quoting anywhere (letters,
 * digits, '.', '_', '-'; 1 to KVS_NODE_NAME_MAX of them). */
const char *kvs_config_node_name_problem(const char *name);

/* Live reload: compares the running config `cur` with a freshly loaded
 * `next`. Writes the keys that differ and may change live into
 * changed[0..clen) ("log.level, limits.max_inflight", "" when none) and
 * those that differ and may not into fixed[0..flen). Returns 0 when
 * `fixed` is empty (next's live keys may be applied), KVS_ECONFIG
 * otherwise. */
int kvs_config_reload_check(const kvs_config_t *cur, const kvs_config_t *next, char *changed,
                            size_t clen, char *fixed, size_t flen);

/* Live reload, after kvs_config_reload_check refused `next` (loaded from
 * `file`): writes the refusal into msg[0..len) the way a startup error
 * names its key's place, "FILE:LINE:COLUMN: KEYS changed, which cannot
 * change while the node runs (restart it for that)": the position is
 * where `next` sets the first key listed (the first the file sets);
 * each further key is followed by its line ("storage.sync (line 9)") or,
 * when `next` does not set it, by "(not set)". When the file sets none of
 * them the message starts "FILE: ". */
void kvs_config_reload_refusal(const kvs_config_t *cur, const kvs_config_t *next, const char *file,
                               char *msg, size_t len);

/* Live reload, after kvs_config_reload_check accepted `next`: swaps the
 * value of every live key between `cur` and `next`, so `cur` (the running
 * config, which keeps its address) holds the new values and `next` the
 * old ones, to be freed with it. Keys that are not live are left alone
 * (the check found them equal). */
void kvs_config_apply_live(kvs_config_t *cur, kvs_config_t *next);

/* True when both configs have the same cluster map (cluster.nodes). */
int kvs_config_map_eq(const kvs_config_t *a, const kvs_config_t *b);

/* Live reload of the cluster map, after kvs_config_reload_check accepted
 * `next`: swaps cluster.nodes (and this node's entry in it) between `cur`
 * and `next`, like kvs_config_apply_live. Only for a process that acts on
 * the new map: the master (it starts and stops workers and replaces the
 * router processes, router_master_change.c) and a worker (its replica count).
 * A router process keeps the map it started with until it is replaced. */
void kvs_config_apply_map(kvs_config_t *cur, kvs_config_t *next);

/* Frees a config and everything it owns. NULL is allowed. */
void kvs_config_free(kvs_config_t *cfg);

/* Parses a size ("4MiB", "1000", "2GB"). Returns 0 or KVS_EINVAL (*out is
 * untouched) for anything else: empty, a sign, spaces, fractions, a leading
 * zero ("010": octal in YAML 1.1), an unknown suffix, or a value past
 * UINT64_MAX. */
int kvs_config_parse_size(const char *s, uint64_t *out);

/* Parses a duration ("250ms", "1s", "2m", "500" = ms). Returns 0 or KVS_EINVAL,
 * with the same rules as kvs_config_parse_size. */
int kvs_config_parse_duration_ms(const char *s, uint64_t *out);

#endif
