/*
 * kvs-mock-kafka: librdkafka's in-process mock Kafka cluster as a process,
 * for tests and the quick start. Real deployments point kvs at a real Kafka.
 *
 * Start-up: a producer handle with no bootstrap servers owns the mock cluster
 * (rd_kafka_mock_cluster_new needs one for its bookkeeping); the topics named
 * with --topic are created through the mock API, then a second, short-lived
 * client reads the cluster's metadata over TCP to prove that the listeners
 * answer and every topic has its partitions. Only then is the single stdout
 * line "bootstrap.servers=..." printed and the --ready-file renamed into
 * place, so whoever waits for either may connect at once.
 *
 * What the mock does not do, and what callers must size for (librdkafka 2.0.2,
 * observed by tests/integration/test_mock_kafka.py and by hand):
 *   - no CreateTopics handler; topics come from --topic. Any Metadata request
 *     naming an unknown topic (a producer, list_topics, even a consumer's
 *     assign()) creates it with 4 partitions; only list-all requests do not.
 *   - no CreatePartitions handler either (an admin client's request is never
 *     answered), and rd_kafka_mock_topic_create refuses a topic that exists
 *     (TOPIC_ALREADY_EXISTS): a topic's partition count never changes, so
 *     no control command can offer that.
 *   - each partition keeps at most 5 MiB of batch bytes or 100,000 message
 *     sets and silently drops the oldest; the byte limit binds first (about
 *     45,000 records of 100 bytes). It never compacts. --replication is
 *     ignored: partitions get min(3, brokers) replicas and a random leader.
 *   - a Fetch returns at most one message set (producer batch) per partition,
 *     and an empty Fetch is answered only after the full fetch.wait.max.ms.
 *   - commits without a member id (assign() consumers) are kept per group and
 *     partition, but fail with UNKNOWN_MEMBER_ID once any consumer has joined
 *     that group through subscribe(), even after it left.
 *   - no ListOffsets by timestamp; loopback only; everything is in memory.
 *
 * Threads and lifetime: the mock cluster runs on librdkafka's own threads.
 * This file has one libuv loop on the main thread that waits for SIGTERM or
 * SIGINT (uv_signal) and, with --control, for command lines on stdin; the
 * mock API calls it makes are thread-safe requests to the mock thread. The
 * first signal, "quit" or the end of the control input closes every handle;
 * the loop then returns and main destroys the cluster, then its owner handle.
 * Closing the signal handles restores the default action, so a second signal
 * during teardown ends the process at once.
 */
#include "kvs_fs.h"
#include "kvs_log.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syslog.h>
#include <unistd.h>
#include <uv.h>

enum { MOCK_OK = 0, MOCK_FAILED = 1, MOCK_USAGE = 2 };

#define MOCK_MAX_TOPICS 64
#define MOCK_MAX_BROKERS 64
#define MOCK_MAX_PARTITIONS 10000
#define MOCK_TOPIC_NAME_MAX 249 /* Kafka's own limit */
#define MOCK_LINE_MAX 1024
#define MOCK_ARGS_MAX 8
#define MOCK_PROBE_TIMEOUT_MS 10000

typedef struct mock_topic_s {
    char name[MOCK_TOPIC_NAME_MAX + 1];
    int partitions;
} mock_topic_t;

typedef struct mock_opts_s {
    int brokers;
    int replication;
    int replication_given; /* --replication was on the command line */
    int control;
    const char *ready_file;
    int ntopics;
    mock_topic_t topics[MOCK_MAX_TOPICS];
} mock_opts_t;

typedef struct mock_s {
    const mock_opts_t *opts;
    uv_loop_t loop;
    uv_signal_t sigterm;
    uv_signal_t sigint;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tty_t tty;
        uv_pipe_t pipe;
    } in;
    int in_open;
    int stopping;
    rd_kafka_t *owner; /* the handle that owns the mock cluster */
    rd_kafka_mock_cluster_t *mcluster;
    int ready_written; /* remove opts->ready_file at exit */
    char line[MOCK_LINE_MAX];
    size_t line_len;
    int line_overflow; /* discarding the rest of an over-long line */
    char rbuf[16384];
} mock_t;

/* ---- help and argument parsing ----------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvs-mock-kafka [--brokers N] [--topic NAME:PARTITIONS]... [--replication R]\n"
            "                      [--ready-file PATH] [--control]\n"
            "\n"
            "Starts librdkafka's in-process mock Kafka cluster on 127.0.0.1, creates the\n"
            "topics, prints the single stdout line \"bootstrap.servers=HOST:PORT[,...]\"\n"
            "once they exist, and runs until SIGTERM or SIGINT. Any Kafka client (kcat,\n"
            "confluent-kafka, kvs-node) can use it. It is for tests and the quick start,\n"
            "not for production: all data lives in memory and is lost at exit; real\n"
            "deployments point kvs at a real Kafka.\n"
            "\n"
            "Options:\n"
            "  --brokers N             brokers, with ids 1..N (default 1)\n"
            "  --topic NAME:PARTITIONS create a topic, e.g. --topic users:8 (repeatable)\n"
            "  --replication R         replicas per partition, 1..brokers (default 1); note\n"
            "                          that librdkafka 2.0 ignores it and always places\n"
            "                          min(3, brokers) replicas with a random leader\n"
            "  --ready-file PATH       when ready, atomically write HOST:PORT[,...] and a\n"
            "                          newline to PATH (temp file + rename); removed at exit\n"
            "  --control               read control commands from stdin (below)\n"
            "  -h, --help              this help\n"
            "  --version               print the version and exit\n"
            "\n"
            "Limits of the mock cluster (librdkafka 2.0), size tests for them:\n"
            "  - no CreateTopics API: create topics with --topic. A metadata request for\n"
            "    an unknown topic (from a producer, or a consumer that assigns it)\n"
            "    creates it with 4 partitions, so a misspelled topic does not fail.\n"
            "  - no CreatePartitions API: a topic keeps its partition count.\n"
            "  - each partition keeps at most 5 MiB of batches or 100,000 message sets\n"
            "    and silently drops the oldest beyond that (the 5 MiB binds first: about\n"
            "    45,000 records of 100 bytes). It never compacts.\n"
            "  - a fetch returns at most one message set (producer batch) per partition,\n"
            "    so produce in batches; an empty fetch waits the full fetch.wait.max.ms.\n"
            "  - offsets committed by assign() consumers are kept, but are refused once\n"
            "    any consumer of that group.id has used subscribe().\n"
            "  - loopback only, no TLS or SASL, no ListOffsets by timestamp.\n"
            "\n"
            "Control commands (--control), one per line; each is answered by one line,\n"
            "\"ok\" or \"error: REASON\", on stdout (blank lines and #comments get none):\n"
            "  broker-down ID|all          drop the broker's connections, refuse new ones\n"
            "                              (leadership does not move)\n"
            "  broker-up ID|all            accept connections again\n"
            "  leader TOPIC PARTITION ID   make broker ID the leader (-1: no leader)\n"
            "  rtt ID|all MS               delay the broker's responses by MS ms\n"
            "  error API CODE [COUNT]      fail the next COUNT (default 1) requests of API\n"
            "                              (Produce, Fetch, Metadata, OffsetCommit, ... or a\n"
            "                              number) with CODE (a Kafka error name such as\n"
            "                              NOT_LEADER_FOR_PARTITION, _TRANSPORT, or a number)\n"
            "  clear-errors API            forget the errors still queued for API\n"
            "  quit                        shut down as on SIGTERM\n"
            "The end of the control input also shuts down, so the cluster dies with the\n"
            "process that drives it.\n"
            "\n"
            "Exit status: 0 after SIGTERM, SIGINT or quit; 1 if the cluster could not start;\n"
            "2 on a usage error.\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("kvs-mock-kafka: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("; try 'kvs-mock-kafka --help'\n", stderr);
    return MOCK_USAGE;
}

/* Parses all of `s` as a decimal integer in [min, max]. Returns 0 or -1. */
static int parse_int(const char *s, long min, long max, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

/* Kafka topic names: 1..249 of [A-Za-z0-9._-], and neither "." nor "..". */
static int topic_name_valid(const char *s, size_t n)
{
    if (n == 0 || n > MOCK_TOPIC_NAME_MAX)
        return 0;
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

/* Parses "NAME:PARTITIONS" into a new entry of o->topics. */
static int add_topic(mock_opts_t *o, const char *arg)
{
    const char *colon = strrchr(arg, ':');
    if (colon == NULL)
        return usage_error("--topic '%s' must be NAME:PARTITIONS, e.g. users:8", arg);
    size_t n = (size_t)(colon - arg);
    if (!topic_name_valid(arg, n))
        return usage_error("--topic '%s': a topic name is 1-%d characters of "
                           "[A-Za-z0-9._-], not '.' or '..'",
                           arg, MOCK_TOPIC_NAME_MAX);
    int parts;
    if (parse_int(colon + 1, 1, MOCK_MAX_PARTITIONS, &parts) != 0)
        return usage_error("--topic '%s': PARTITIONS must be an integer from 1 to %d", arg,
                           MOCK_MAX_PARTITIONS);
    for (int i = 0; i < o->ntopics; i++)
        if (strlen(o->topics[i].name) == n && memcmp(o->topics[i].name, arg, n) == 0)
            return usage_error("--topic '%.*s' is given twice", (int)n, arg);
    if (o->ntopics == MOCK_MAX_TOPICS)
        return usage_error("at most %d --topic options", MOCK_MAX_TOPICS);
    mock_topic_t *t = &o->topics[o->ntopics++];
    memcpy(t->name, arg, n);
    t->name[n] = '\0';
    t->partitions = parts;
    return 0;
}

/* Fills *o from argv. Returns 0, or MOCK_USAGE after printing why, or -1
 * after printing the help or the version (the caller exits 0). */
static int parse_args(int argc, char **argv, mock_opts_t *o)
{
    static const struct option longopts[] = {
        {"brokers", required_argument, NULL, 'b'},     {"topic", required_argument, NULL, 't'},
        {"replication", required_argument, NULL, 'r'}, {"ready-file", required_argument, NULL, 'f'},
        {"control", no_argument, NULL, 'c'},           {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},           {NULL, 0, NULL, 0}};
    memset(o, 0, sizeof(*o));
    o->brokers = 1;
    o->replication = 1;
    opterr = 0;
    int c, rc = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            if (parse_int(optarg, 1, MOCK_MAX_BROKERS, &o->brokers) != 0)
                rc = usage_error("--brokers '%s' must be an integer from 1 to %d", optarg,
                                 MOCK_MAX_BROKERS);
            break;
        case 't':
            rc = add_topic(o, optarg);
            break;
        case 'r':
            if (parse_int(optarg, 1, MOCK_MAX_BROKERS, &o->replication) != 0)
                rc = usage_error("--replication '%s' must be a positive integer", optarg);
            o->replication_given = 1;
            break;
        case 'f':
            o->ready_file = optarg;
            break;
        case 'c':
            o->control = 1;
            break;
        case 'h':
            usage(stdout);
            return -1;
        case 'V':
            printf("kvs-mock-kafka %s\n", KVS_VERSION);
            return -1;
        case ':':
            rc = usage_error("option %s needs an argument", argv[optind - 1]);
            break;
        default:
            rc = usage_error("unknown option '%s'", argv[optind - 1]);
            break;
        }
    }
    if (rc == 0 && optind < argc)
        rc = usage_error("unexpected argument '%s'", argv[optind]);
    if (rc == 0 && o->replication > o->brokers)
        rc = usage_error("--replication %d is more than --brokers %d", o->replication, o->brokers);
    return rc;
}

/* ---- librdkafka handles ------------------------------------------------------------ */

/* Routes librdkafka's log lines (syslog levels, any thread) to kvs_log, which
 * writes each line with one write(2) and so is safe from any thread. */
static void rdkafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kvs_log_level_t l = level <= LOG_ERR       ? KVS_LOG_ERROR
                        : level == LOG_WARNING ? KVS_LOG_WARN
                        : level <= LOG_INFO    ? KVS_LOG_INFO
                                               : KVS_LOG_DEBUG;
    kvs_log(l, "rdkafka %s: %s: %s", rd_kafka_name(rk), fac, buf);
}

/* Creates a producer handle; `bootstraps` may be NULL (the mock's owner needs
 * none). `log_level` is a syslog level. Returns NULL after logging why. */
static rd_kafka_t *client_new(const char *bootstraps, const char *log_level)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, rdkafka_log_cb);
    if (rd_kafka_conf_set(conf, "log_level", log_level, errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK ||
        (bootstraps != NULL && rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, errstr,
                                                 sizeof(errstr)) != RD_KAFKA_CONF_OK)) {
        kvs_error("librdkafka configuration: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        kvs_error("cannot create a librdkafka handle: %s", errstr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

/* Checks one topic of the metadata against what was asked for. librdkafka
 * 2.0's mock ignores the replication factor (it places min(3, brokers)
 * replicas), which is worth a warning but not a failure. */
static int probe_topic(const struct rd_kafka_metadata *md, const mock_topic_t *want,
                       const mock_opts_t *o)
{
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &md->topics[i];
        if (strcmp(t->topic, want->name) != 0)
            continue;
        if (t->err != RD_KAFKA_RESP_ERR_NO_ERROR || t->partition_cnt != want->partitions) {
            kvs_error("topic %s: metadata says %d partitions (%s), expected %d", want->name,
                      t->partition_cnt, rd_kafka_err2str(t->err), want->partitions);
            return -1;
        }
        int replicas = t->partitions[0].replica_cnt;
        kvs_info("topic %s: %d partitions, %d replicas each", want->name, want->partitions,
                 replicas);
        if (o->replication_given && replicas != o->replication)
            kvs_warn("topic %s: --replication %d is ignored by this librdkafka (%s)", want->name,
                     o->replication, rd_kafka_version_str());
        return 0;
    }
    kvs_error("topic %s is missing from the cluster's metadata", want->name);
    return -1;
}

/* Connects to the cluster as an ordinary client and checks that every topic
 * is listed with its partitions: proof that a client can use it now. */
static int probe_cluster(const mock_opts_t *o, const char *bootstraps)
{
    rd_kafka_t *rk = client_new(bootstraps, "4");
    if (rk == NULL)
        return -1;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, &md, MOCK_PROBE_TIMEOUT_MS);
    int rc = 0;
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        kvs_error("cannot read metadata from the mock cluster at %s: %s", bootstraps,
                  rd_kafka_err2str(err));
        rc = -1;
    }
    for (int i = 0; rc == 0 && i < o->ntopics; i++)
        rc = probe_topic(md, &o->topics[i], o);
    if (md != NULL)
        rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    return rc;
}

/* Creates the mock cluster and its topics. Returns 0, or -1 after logging. */
static int cluster_start(mock_t *m)
{
    const mock_opts_t *o = m->opts;
    /* Warnings and worse only: the owner has no bootstrap.servers on purpose,
     * which librdkafka would otherwise report as a notice. */
    m->owner = client_new(NULL, "4");
    if (m->owner == NULL)
        return -1;
    m->mcluster = rd_kafka_mock_cluster_new(m->owner, o->brokers);
    if (m->mcluster == NULL) {
        kvs_error("cannot start a mock cluster with %d brokers", o->brokers);
        return -1;
    }
    for (int i = 0; i < o->ntopics; i++) {
        const mock_topic_t *t = &o->topics[i];
        rd_kafka_resp_err_t err =
            rd_kafka_mock_topic_create(m->mcluster, t->name, t->partitions, o->replication);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            kvs_error("cannot create topic %s: %s", t->name, rd_kafka_err2str(err));
            return -1;
        }
    }
    return probe_cluster(o, rd_kafka_mock_cluster_bootstraps(m->mcluster));
}

/* Destroys the cluster, then its owner. Either may be NULL. */
static void cluster_stop(mock_t *m)
{
    if (m->mcluster != NULL)
        rd_kafka_mock_cluster_destroy(m->mcluster);
    if (m->owner != NULL)
        rd_kafka_destroy(m->owner);
    m->mcluster = NULL;
    m->owner = NULL;
}

/* ---- readiness ---------------------------------------------------------------------- */

/* Writes all of buf to fd, retrying EINTR and short writes. */
static int write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes "bootstraps\n" to `path` through a temporary file and rename(2), so
 * a reader sees either no file or the whole line. */
static int ready_file_write(const char *path, const char *bootstraps)
{
    char tmp[4096], line[4096];
    int tn = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    int ln = snprintf(line, sizeof(line), "%s\n", bootstraps);
    if (tn < 0 || (size_t)tn >= sizeof(tmp) || ln < 0 || (size_t)ln >= sizeof(line)) {
        kvs_error("--ready-file %s: path too long", path);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -errno : write_all(fd, line, (size_t)ln);
    if (fd >= 0 && close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0) {
        kvs_error("--ready-file %s: %s", path, strerror(-rc));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Announces readiness: the stdout line, then the ready file. */
static int announce_ready(mock_t *m)
{
    const char *bootstraps = rd_kafka_mock_cluster_bootstraps(m->mcluster);
    kvs_info("mock cluster ready: %d broker(s), %d topic(s), bootstrap.servers=%s",
             m->opts->brokers, m->opts->ntopics, bootstraps);
    printf("bootstrap.servers=%s\n", bootstraps);
    fflush(stdout);
    if (m->opts->ready_file == NULL)
        return 0;
    if (ready_file_write(m->opts->ready_file, bootstraps) != 0)
        return -1;
    m->ready_written = 1;
    return 0;
}

/* ---- control commands --------------------------------------------------------------- */

/* A command handler: argv[0] is the command name. Returns 0, or -1 with a
 * reason for the user in err. */
typedef int (*ctl_fn)(mock_t *m, int argc, char **argv, char *err, size_t errlen);

typedef struct ctl_cmd_s {
    const char *name;
    int min, max; /* argument count after the name */
    const char *args;
    ctl_fn fn;
} ctl_cmd_t;

/* Kafka protocol request types that the mock serves, by name. */
static const struct {
    const char *name;
    int16_t key;
} api_names[] = {
    {"Produce", 0},
    {"Fetch", 1},
    {"ListOffsets", 2},
    {"Metadata", 3},
    {"OffsetCommit", 8},
    {"OffsetFetch", 9},
    {"FindCoordinator", 10},
    {"JoinGroup", 11},
    {"Heartbeat", 12},
    {"LeaveGroup", 13},
    {"SyncGroup", 14},
    {"DescribeGroups", 15},
    {"ListGroups", 16},
    {"ApiVersions", 18},
    {"InitProducerId", 22},
    {"OffsetForLeaderEpoch", 23},
    {"AddPartitionsToTxn", 24},
    {"AddOffsetsToTxn", 25},
    {"EndTxn", 26},
    {"TxnOffsetCommit", 28},
};

static int ctl_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int ctl_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Turns a mock API result into the handler's result. */
static int ctl_result(rd_kafka_resp_err_t e, char *err, size_t errlen)
{
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    return ctl_fail(err, errlen, "%s", rd_kafka_err2str(e));
}

/* "all" or -1 means every broker (-1); otherwise an id in 1..brokers. */
static int parse_broker(const mock_t *m, const char *s, int allow_all, int32_t *out, char *err,
                        size_t errlen)
{
    int id = 0;
    if (allow_all && (strcasecmp(s, "all") == 0 || strcmp(s, "-1") == 0)) {
        *out = -1;
        return 0;
    }
    if (parse_int(s, 1, m->opts->brokers, &id) != 0)
        return ctl_fail(err, errlen, "broker '%s' is not %s1..%d", s, allow_all ? "'all' or " : "",
                        m->opts->brokers);
    *out = id;
    return 0;
}

/* An API by name (case-insensitive) or number. */
static int parse_api(const char *s, int16_t *out, char *err, size_t errlen)
{
    int key;
    for (size_t i = 0; i < sizeof(api_names) / sizeof(api_names[0]); i++) {
        if (strcasecmp(s, api_names[i].name) == 0) {
            *out = api_names[i].key;
            return 0;
        }
    }
    if (parse_int(s, 0, 32767, &key) != 0)
        return ctl_fail(err, errlen,
                        "unknown API '%s' (a name such as Produce or Fetch, or a "
                        "number)",
                        s);
    *out = (int16_t)key;
    return 0;
}

/* A Kafka error by name ("NOT_LEADER_FOR_PARTITION", "_TRANSPORT", optionally
 * prefixed "RD_KAFKA_RESP_ERR_") or number. */
static int parse_kafka_err(const char *s, rd_kafka_resp_err_t *out, char *err, size_t errlen)
{
    const struct rd_kafka_err_desc *descs;
    size_t n;
    int code;
    if (strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18) == 0)
        s += 18;
    rd_kafka_get_err_descs(&descs, &n);
    for (size_t i = 0; i < n; i++) {
        if (descs[i].name != NULL && strcasecmp(s, descs[i].name) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    if (parse_int(s, -200, 32767, &code) != 0)
        return ctl_fail(err, errlen, "unknown Kafka error '%s'", s);
    *out = (rd_kafka_resp_err_t)code;
    return 0;
}

static int ctl_broker_down(mock_t *m, int argc, char **argv, char *err, size_t errlen)
{
    int32_t id = 0;
    (void)argc;
    if (parse_broker(m, argv[1], 1, &id, err, errlen) != 0)
        return -1;
    return ctl_result(rd_kafka_mock_broker_set_down(m->mcluster, id), err, errlen);
}

static int ctl_broker_up(mock_t *m, int argc, char **argv, char *err, size_t errlen)
{
    int32_t id = 0;
    (void)argc;
    if (parse_broker(m, argv[1], 1, &id, err, errlen) != 0)
        return -1;
    return ctl_result(rd_kafka_mock_broker_set_up(m->mcluster, id), err, errlen);
}

static int ctl_rtt(mock_t *m, int argc, char **argv, char *err, size_t errlen)
{
    int32_t id = 0;
    int ms;
    (void)argc;
    if (parse_broker(m, argv[1], 1, &id, err, errlen) != 0)
        return -1;
    if (parse_int(argv[2], 0, 3600 * 1000, &ms) != 0)
        return ctl_fail(err, errlen, "MS '%s' is not 0..3600000", argv[2]);
    return ctl_result(rd_kafka_mock_broker_set_rtt(m->mcluster, id, ms), err, errlen);
}

/* Only topics given with --topic: set_leader would create any other. */
static const mock_topic_t *find_topic(const mock_t *m, const char *name)
{
    for (int i = 0; i < m->opts->ntopics; i++)
        if (strcmp(m->opts->topics[i].name, name) == 0)
            return &m->opts->topics[i];
    return NULL;
}

static int ctl_leader(mock_t *m, int argc, char **argv, char *err, size_t errlen)
{
    const mock_topic_t *t = find_topic(m, argv[1]);
    int part;
    int32_t id = -1;
    (void)argc;
    if (t == NULL)
        return ctl_fail(err, errlen, "no topic '%s' was created with --topic", argv[1]);
    if (parse_int(argv[2], 0, t->partitions - 1, &part) != 0)
        return ctl_fail(err, errlen, "partition '%s' is not 0..%d", argv[2], t->partitions - 1);
    if (strcmp(argv[3], "-1") != 0 && parse_broker(m, argv[3], 0, &id, err, errlen) != 0)
        return -1;
    return ctl_result(rd_kafka_mock_partition_set_leader(m->mcluster, t->name, part, id), err,
                      errlen);
}

static int ctl_error(mock_t *m, int argc, char **argv, char *err, size_t errlen)
{
    int16_t api = 0;
    rd_kafka_resp_err_t code = RD_KAFKA_RESP_ERR_NO_ERROR;
    int cnt = 1;
    if (parse_api(argv[1], &api, err, errlen) != 0 ||
        parse_kafka_err(argv[2], &code, err, errlen) != 0)
        return -1;
    if (argc > 3 && parse_int(argv[3], 1, 100000, &cnt) != 0)
        return ctl_fail(err, errlen, "COUNT '%s' is not 1..100000", argv[3]);
    rd_kafka_resp_err_t *codes = malloc((size_t)cnt * sizeof(*codes));
    if (codes == NULL)
        return ctl_fail(err, errlen, "out of memory");
    for (int i = 0; i < cnt; i++)
        codes[i] = code;
    rd_kafka_mock_push_request_errors_array(m->mcluster, api, (size_t)cnt, codes);
    free(codes);
    return 0;
}

static int ctl_clear_errors(mock_t *m, int argc, char **argv, char *err, size_t errlen)
{
    int16_t api = 0;
    (void)argc;
    if (parse_api(argv[1], &api, err, errlen) != 0)
        return -1;
    rd_kafka_mock_clear_request_errors(m->mcluster, api);
    return 0;
}

static void mock_shutdown(mock_t *m);

static int ctl_quit(mock_t *m, int argc, char **argv, char *err, size_t errlen)
{
    (void)argc, (void)argv, (void)err, (void)errlen;
    mock_shutdown(m);
    return 0;
}

static const ctl_cmd_t ctl_cmds[] = {
    {"broker-down", 1, 1, "ID|all", ctl_broker_down},
    {"broker-up", 1, 1, "ID|all", ctl_broker_up},
    {"rtt", 2, 2, "ID|all MS", ctl_rtt},
    {"leader", 3, 3, "TOPIC PARTITION ID", ctl_leader},
    {"error", 2, 3, "API CODE [COUNT]", ctl_error},
    {"clear-errors", 1, 1, "API", ctl_clear_errors},
    {"quit", 0, 0, "", ctl_quit},
};

static void ctl_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ctl_reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* Runs one command line (NUL-terminated, no newline) and answers it. */
static void ctl_run_line(mock_t *m, char *line)
{
    char *argv[MOCK_ARGS_MAX + 1], *save = NULL, err[512];
    int argc = 0;
    line += strspn(line, " \t\r");
    if (line[0] == '\0' || line[0] == '#')
        return;
    kvs_info("control: %s", line);
    for (char *tok = strtok_r(line, " \t\r", &save); tok != NULL && argc <= MOCK_ARGS_MAX;
         tok = strtok_r(NULL, " \t\r", &save))
        argv[argc++] = tok;
    for (size_t i = 0; i < sizeof(ctl_cmds) / sizeof(ctl_cmds[0]); i++) {
        const ctl_cmd_t *c = &ctl_cmds[i];
        if (strcmp(argv[0], c->name) != 0)
            continue;
        if (argc - 1 < c->min || argc - 1 > c->max) {
            ctl_reply("error: usage: %s %s", c->name, c->args);
            return;
        }
        if (c->fn(m, argc, argv, err, sizeof(err)) == 0)
            ctl_reply("ok");
        else
            ctl_reply("error: %s", err);
        return;
    }
    ctl_reply("error: unknown command '%s' (broker-down, broker-up, rtt, leader, error, "
              "clear-errors, quit)",
              argv[0]);
}

/* ---- event loop: signals and the control input -------------------------------------- */

static void on_close_noop(uv_handle_t *h)
{
    (void)h;
}

/* Closes every handle so that uv_run returns; safe to call more than once and
 * from any callback. */
static void mock_shutdown(mock_t *m)
{
    if (m->stopping)
        return;
    m->stopping = 1;
    uv_close((uv_handle_t *)&m->sigterm, on_close_noop);
    uv_close((uv_handle_t *)&m->sigint, on_close_noop);
    if (m->in_open)
        uv_close(&m->in.handle, on_close_noop);
    m->in_open = 0;
}

static void on_signal(uv_signal_t *h, int signum)
{
    mock_t *m = h->data;
    kvs_info("%s: shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    mock_shutdown(m);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    mock_t *m = h->data;
    (void)suggested;
    *buf = uv_buf_init(m->rbuf, sizeof(m->rbuf));
}

/* Adds one byte to the current line; a newline runs it. Lines longer than
 * the buffer are answered with an error once and otherwise ignored. */
static void ctl_feed(mock_t *m, char ch)
{
    if (ch != '\n') {
        if (m->line_len + 1 < sizeof(m->line))
            m->line[m->line_len++] = ch;
        else
            m->line_overflow = 1;
        return;
    }
    m->line[m->line_len] = '\0';
    if (m->line_overflow)
        ctl_reply("error: line longer than %d bytes", MOCK_LINE_MAX - 1);
    else
        ctl_run_line(m, m->line);
    m->line_len = 0;
    m->line_overflow = 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mock_t *m = s->data;
    if (nread == UV_EOF) {
        if (m->line_len > 0)
            ctl_feed(m, '\n'); /* a last line without a newline still counts */
        kvs_info("control input closed: shutting down");
        mock_shutdown(m);
        return;
    }
    if (nread < 0) {
        kvs_error("reading control commands from stdin: %s; shutting down",
                  uv_strerror((int)nread));
        mock_shutdown(m);
        return;
    }
    for (ssize_t i = 0; i < nread && !m->stopping; i++)
        ctl_feed(m, buf->base[i]);
}

/* Opens stdin as a uv stream (terminal or pipe/socket) and starts reading. */
static int control_start(mock_t *m)
{
    uv_handle_type t = uv_guess_handle(STDIN_FILENO);
    int rc;
    if (t == UV_TTY) {
        rc = uv_tty_init(&m->loop, &m->in.tty, STDIN_FILENO, 1);
    } else if (t == UV_NAMED_PIPE || t == UV_TCP) {
        rc = uv_pipe_init(&m->loop, &m->in.pipe, 0);
        if (rc == 0 && (rc = uv_pipe_open(&m->in.pipe, STDIN_FILENO)) != 0)
            uv_close(&m->in.handle, on_close_noop);
    } else {
        kvs_error("--control reads commands from stdin, which must be a pipe or a terminal");
        return -1;
    }
    if (rc != 0) {
        kvs_error("--control: cannot read stdin: %s", uv_strerror(rc));
        return -1;
    }
    m->in_open = 1;
    m->in.handle.data = m;
    if ((rc = uv_read_start(&m->in.stream, on_alloc, on_read)) != 0) {
        kvs_error("--control: cannot read stdin: %s", uv_strerror(rc));
        return -1;
    }
    return 0;
}

/* Initialises the loop and starts the signal watchers, before anything slow
 * happens, so that a SIGTERM during start-up is a clean shutdown. */
static int loop_start(mock_t *m)
{
    int rc = uv_loop_init(&m->loop);
    if (rc != 0) {
        kvs_error("uv_loop_init: %s", uv_strerror(rc));
        return -1;
    }
    uv_signal_init(&m->loop, &m->sigterm);
    uv_signal_init(&m->loop, &m->sigint);
    m->sigterm.data = m->sigint.data = m;
    if ((rc = uv_signal_start(&m->sigterm, on_signal, SIGTERM)) != 0 ||
        (rc = uv_signal_start(&m->sigint, on_signal, SIGINT)) != 0) {
        kvs_error("uv_signal_start: %s", uv_strerror(rc));
        return -1;
    }
    return 0;
}

/* Runs the loop until every handle is closed, then releases it. */
static void loop_finish(mock_t *m)
{
    mock_shutdown(m);
    uv_run(&m->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&m->loop) != 0)
        kvs_warn("event loop closed with handles still open");
}

int main(int argc, char **argv)
{
    mock_opts_t opts;
    mock_t m;
    signal(SIGPIPE, SIG_IGN); /* a closed stdout is an error return (74 for --help), not a death */
    int rc = parse_args(argc, argv, &opts);
    if (rc != 0)
        return rc < 0 ? kvs_fs_stdout_done("kvs-mock-kafka") : rc;
    kvs_log_init("mock-kafka", -1, KVS_LOG_INFO);
    memset(&m, 0, sizeof(m));
    m.opts = &opts;
    if (opts.ready_file != NULL)
        unlink(opts.ready_file); /* nobody may mistake a stale file for this run */
    if (loop_start(&m) != 0)
        return MOCK_FAILED;
    rc = MOCK_OK;
    if (cluster_start(&m) != 0 || (opts.control && control_start(&m) != 0) ||
        announce_ready(&m) != 0)
        rc = MOCK_FAILED;
    else
        uv_run(&m.loop, UV_RUN_DEFAULT);
    loop_finish(&m);
    if (m.ready_written)
        unlink(opts.ready_file);
    cluster_stop(&m);
    kvs_info("stopped");
    return rc;
}
