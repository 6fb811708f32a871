/*
 * kvs_err: the one table of kvs error codes.
 *
 * Functions across kvs return int: 0 on success, a negative number on
 * failure. A failure is either -errno (from the OS or libuv, which also uses
 * negative errno values) or one of the KVS_E* codes below, which live in a
 * range far from errno values. kvs_strerror() turns either kind into words.
 */
#ifndef KVS_ERR_H
#define KVS_ERR_H

/* X(name, value, message) */
#define KVS_ERRNO_MAP(X)                                                                           \
    X(KVS_EPROTO, -30001, "malformed frame or message")                                            \
    X(KVS_ETOOBIG, -30002, "frame larger than the configured maximum")                             \
    X(KVS_ECONFIG, -30003, "invalid configuration")                                                \
    X(KVS_ESTORE, -30004, "storage error")                                                         \
    X(KVS_EMISMATCH, -30005, "data directory belongs to another shard or placement")               \
    X(KVS_EFULL, -30006, "storage is full")                                                        \
    X(KVS_ENOTFOUND, -30007, "not found")                                                          \
    X(KVS_EINVAL, -30008, "invalid argument")                                                      \
    X(KVS_ECLOSED, -30009, "connection closed")                                                    \
    X(KVS_ELIMIT, -30010, "limit reached")                                                         \
    X(KVS_ETLS, -30011, "TLS failure")                                                             \
    X(KVS_ENOTLS, -30012, "the peer does not speak TLS")                                           \
    X(KVS_ETLSHELLO, -30013, "the peer started TLS on a plaintext port")                           \
    X(KVS_EDAMAGED, -30014, "the data files are damaged or not data files")                        \
    X(KVS_EBROKEN, -30015, "storage failed: the environment must be reopened")

enum {
#define KVS_ERR_ENUM(name, value, msg) name = value,
    KVS_ERRNO_MAP(KVS_ERR_ENUM)
#undef KVS_ERR_ENUM
};

/* Returns a static, human-readable string for a kvs code or a -errno value.
 * The string is owned by the library and lives forever. */
const char *kvs_strerror(int err);

#endif
