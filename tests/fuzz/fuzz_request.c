/*
 * fuzz_request: request decoding, validation and execution on one shard.
 *
 * The input is one frame payload, as a client would send it. The harness
 *   1. decodes it with kvs_msg_decode_request into an arena, and when it is
 *      a CommandRequest runs kvs_msg_validate, kvs_msg_check_wire (on the
 *      same bytes), kvs_msg_request_table and kvs_msg_command_name, checking
 *      that each status is one of the documented ones and each message is a
 *      non-empty, NUL-terminated string inside its buffer;
 *   2. hands the same bytes to node_cmd_frame, the worker's entry point,
 *      over a real node_store, then ends the turn (commit) as the worker's
 *      loop does. Invalid input must get exactly the status step 1 found;
 *      every input must get exactly one well-formed CommandResponse frame
 *      no larger than max_frame (MAX_FRAME here). A valid Hincr of a value
 *      that is not a number is 400, as is one that would overflow. The
 *      harness configures no users, so a valid Auth is answered 400 ("no
 *      users configured"), and no Kafka bindings, so a valid Rebuild is
 *      400 too (only a bound table can be rebuilt); a worker's Snapshot and
 *      Digest need its server and threads, which node_cmd alone has not:
 *      503.
 *
 * The store lives in a temporary directory created once per process (in
 * LLVMFuzzerInitialize, so the replay driver gets it too) and removed at
 * exit: map_size 8MiB, 16 tables at most, no fsync. A few fixture pairs
 * (users/1, users/2, users/42, t/k) are rewritten every FIXTURE_EVERY
 * inputs so reads, deletes and scans find data. State carries over from one
 * input to the next, which also lets the fuzzer read what it wrote. To keep
 * disk use small the store is wiped and reopened every RESET_EVERY inputs
 * or once its data file takes RESET_DISK bytes. A crash that depends on
 * earlier inputs may therefore not reproduce from its input alone;
 * replaying the corpus directory reproduces it (same order, fresh store).
 *
 * Threads: none. Memory errors, leaks and UB are the sanitizers' job.
 */
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "kvs_resp.h"
#include "node_cmd.h"
#include "node_store.h"

#include <ftw.h>
#include <sys/stat.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_FRAME 4096u /* responses above this are answered 413 */
#define MAP_SIZE (8u << 20)
#define RESET_EVERY 4096u
#define RESET_DISK (32u << 20) /* bytes on disk; the map itself may grow far larger */
#define FIXTURE_EVERY 64u      /* inputs between rewrites of the fixture pairs */

/* The one process-wide fixture (a fuzz target has no other place for it). */
static struct {
    char root[256]; /* the temporary directory */
    char env[300];  /* root/shard-0, the store's directory */
    node_store_t *store;
    node_cmd_ctx_t cmd;
    kvs_arena_t arena; /* for step 1's decode */
    kvs_buf_t out;
    unsigned inputs;  /* since the store was opened */
    uint32_t refused; /* what a valid request of the input's command may get here (0: none) */
} fx;

static void on_batch_failed(void *arg, uint64_t gen, int err)
{
    (void)arg;
    fprintf(stderr, "fuzz_request: batch %llu failed to commit: %s\n", (unsigned long long)gen,
            kvs_strerror(err));
}

static void open_store(void)
{
    node_store_opts_t o = {
        .dir = fx.env,
        .shard = 0,
        .placement = "fuzz",
        .map_size = MAP_SIZE,
        .max_tables = 16,
        .sync = KVS_SYNC_NONE,
        .fail_cb = on_batch_failed,
    };
    char err[512] = "";
    int rc = node_store_open(&o, &fx.store, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "fuzz_request: cannot open a store in %s: %s\n", fx.env, err);
    FUZZ_CHECK(rc == 0);
    fx.cmd.store = fx.store;
    fx.inputs = 0;
}

/* A few pairs every run can read (mutated inputs mostly name these tables
 * and keys), written at open and again every FIXTURE_EVERY inputs so that
 * deletes by earlier inputs do not leave reads and scans with nothing. */
static void put_fixture(void)
{
    static const char *const pairs[][3] = {
        {"users", "1", "ann"}, {"users", "2", "ben"}, {"users", "42", "bob"}, {"t", "k", "v"}};
    uint8_t enc[32];
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        size_t n = kvs_value_encode_bytes(enc, 1, pairs[i][2], strlen(pairs[i][2]));
        FUZZ_CHECK(
            node_store_put(fx.store, pairs[i][0], pairs[i][1], strlen(pairs[i][1]), enc, n) == 0);
    }
    FUZZ_CHECK(node_store_end_turn(fx.store) == 0);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0)
        perror(path);
    return 0;
}

static void remove_tree(const char *dir)
{
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Bytes the store's data file takes on disk (st_blocks: what is
 * allocated, not the apparent size). */
static uint64_t disk_use(void)
{
    char path[320];
    struct stat st;
    snprintf(path, sizeof(path), "%s/data.mdb", fx.env);
    return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

static void cleanup(void)
{
    FUZZ_CHECK(node_store_close(fx.store) == 0);
    fx.store = NULL;
    remove_tree(fx.root);
    kvs_arena_close(&fx.cmd.arena);
    kvs_arena_close(&fx.arena);
    kvs_buf_free(&fx.out);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kvs_log_init("fuzz", 0, KVS_LOG_ERROR);
    const char *tmp = getenv("TMPDIR");
    snprintf(fx.root, sizeof(fx.root), "%s/kvs-fuzz-request-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(fx.root) != NULL);
    snprintf(fx.env, sizeof(fx.env), "%s/shard-0", fx.root);
    fx.cmd.max_frame = MAX_FRAME;
    fx.cmd.max_tables = 16;
    fx.cmd.shard = 0;
    fx.cmd.ingest = NULL;
    kvs_arena_init(&fx.cmd.arena);
    kvs_arena_init(&fx.arena);
    kvs_buf_init(&fx.out);
    open_store();
    atexit(cleanup);
    return 0;
}

/* A status from validation and its message. */
static void check_verdict(uint32_t st, const char *msg, size_t mlen)
{
    FUZZ_CHECK(st == KVS_STATUS_OK || st == KVS_STATUS_BAD_REQUEST || st == KVS_STATUS_TOO_LARGE);
    if (st != KVS_STATUS_OK) {
        size_t n = strnlen(msg, mlen);
        FUZZ_CHECK(n > 0 && n < mlen);
    }
}

/* The fast path (kvs_msg_peek) may only say yes to what the full path
 * accepts, and must read the request exactly as protobuf-c does: the same
 * command, table and key, and for an Hset the same Value, byte for byte
 * (protobuf-c packs the Value it decoded; peek hands on the bytes it will
 * store, which must also be a valid Value on their own). */
static void check_peek(const uint8_t *data, size_t size, const Kvs__CommandRequest *req,
                       uint32_t valid, uint32_t strings)
{
    kvs_peek_t pk;
    if (!kvs_msg_peek(data, size, &pk))
        return;
    FUZZ_CHECK(valid == KVS_STATUS_OK && strings == KVS_STATUS_OK);
    FUZZ_CHECK(pk.cmd == req->command_case);
    const char *table = kvs_msg_request_table(req);
    FUZZ_CHECK(table != NULL && strlen(table) == pk.table_len &&
               memcmp(table, pk.table, pk.table_len) == 0);
    int hset = pk.cmd == KVS__COMMAND_REQUEST__COMMAND_HSET;
    /* Hget, Hdel and Hexist share one layout; Hset's key is in its pair. */
    const ProtobufCBinaryData *key = hset ? &req->hset->pair->key : &req->hget->key;
    FUZZ_CHECK(key->len == pk.key_len && memcmp(key->data, pk.key, pk.key_len) == 0);
    if (hset) { /* a scratch arena: value_valid resets the one it is given */
        kvs_arena_t scratch;
        kvs_arena_init(&scratch);
        Kvs__Value *v = NULL;
        const Kvs__Value *want = req->hset->pair->value;
        FUZZ_CHECK(kvs_msg_value_valid(&scratch, pk.value, pk.value_len));
        FUZZ_CHECK(kvs_msg_decode_value(&scratch, pk.value, pk.value_len, &v) == 0);
        size_t n = kvs__value__get_packed_size(want);
        uint8_t *a = kvs_arena_alloc(&scratch, n + 1), *b = kvs_arena_alloc(&scratch, n + 1);
        FUZZ_CHECK(a != NULL && b != NULL);
        FUZZ_CHECK(kvs__value__get_packed_size(v) == n);
        kvs__value__pack(want, a);
        kvs__value__pack(v, b);
        FUZZ_CHECK(memcmp(a, b, n) == 0);
        kvs_arena_close(&scratch);
    }
}

/* The status other than the served ones (200, 404, 413, 507) that a
 * valid request of `cmd` may get in the harness's setup (see the top), or
 * 0. Hincr's depends on the data: a stored value that is not a number, or
 * a sum that would overflow, is 400. */
static uint32_t refused_here(Kvs__CommandRequest__CommandCase cmd)
{
    switch (cmd) {
    case KVS__COMMAND_REQUEST__COMMAND_AUTH:    /* no users */
    case KVS__COMMAND_REQUEST__COMMAND_REBUILD: /* no bindings */
    case KVS__COMMAND_REQUEST__COMMAND_HINCR:   /* not a number, or overflow */
        return KVS_STATUS_BAD_REQUEST;
    case KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT:
    case KVS__COMMAND_REQUEST__COMMAND_DIGEST:
        return KVS_STATUS_UNAVAILABLE;
    default:
        return 0;
    }
}

/* Step 1. Returns the status node_cmd_frame must answer with, or 200 when
 * the request is valid (any status may follow from executing it). */
static uint32_t decode_and_validate(const uint8_t *data, size_t size)
{
    char msg[512];
    Kvs__CommandRequest *req = kvs_msg_decode_request(&fx.arena, data, size, NULL);
    if (req == NULL)
        return KVS_STATUS_BAD_REQUEST;
    const char *name = kvs_msg_command_name(req->command_case);
    FUZZ_CHECK(name != NULL && name[0] != '\0');
    fx.refused = refused_here(req->command_case);
    const char *table = kvs_msg_request_table(req);
    FUZZ_CHECK(table == NULL || strlen(table) < size);

    memset(msg, 0x5a, sizeof(msg));
    uint32_t valid = kvs_msg_validate(req, msg, sizeof(msg));
    check_verdict(valid, msg, sizeof(msg));
    memset(msg, 0x5a, sizeof(msg));
    uint32_t strings = kvs_msg_check_wire(data, size, msg, sizeof(msg));
    check_verdict(strings, msg, sizeof(msg));
    if (valid == KVS_STATUS_OK && table != NULL) /* a valid table is a valid C string */
        FUZZ_CHECK(table[0] != '\0' && strlen(table) <= KVS_MAX_TABLE);
    check_peek(data, size, req, valid, strings);
    kvs_arena_reset(&fx.arena);
    return valid != KVS_STATUS_OK ? valid : strings;
}

/* Step 2's output: exactly one frame holding a CommandResponse. */
static void check_response(uint32_t expect)
{
    FUZZ_CHECK(fx.out.len >= KVS_FRAME_HEADER);
    int compressed = 1;
    uint32_t n = kvs_frame_get_header(fx.out.data, &compressed);
    FUZZ_CHECK(!compressed && (size_t)n + KVS_FRAME_HEADER == fx.out.len);
    /* A response must fit limits.max_frame, or the router's link (and any
     * client) refuses the frame. */
    FUZZ_CHECK(n <= MAX_FRAME);
    Kvs__CommandResponse *resp =
        kvs__command_response__unpack(NULL, n, fx.out.data + KVS_FRAME_HEADER);
    FUZZ_CHECK(resp != NULL);
    if (expect != KVS_STATUS_OK) {
        FUZZ_CHECK(resp->status == expect);
    } else {
        uint32_t st = resp->status;
        FUZZ_CHECK(st == KVS_STATUS_OK || st == KVS_STATUS_NOT_FOUND ||
                   st == KVS_STATUS_TOO_LARGE || st == KVS_STATUS_NO_SPACE ||
                   (fx.refused != 0 && st == fx.refused));
    }
    FUZZ_CHECK(resp->status == KVS_STATUS_OK || (resp->message && resp->message[0] != '\0'));
    kvs__command_response__free_unpacked(resp, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fx.inputs % FIXTURE_EVERY == 0)
        put_fixture();
    fx.refused = 0;
    uint32_t expect = decode_and_validate(data, size);

    fx.out.len = 0;
    FUZZ_CHECK(node_cmd_frame(&fx.cmd, data, size, &fx.out) == 0);
    check_response(expect);
    FUZZ_CHECK(node_store_end_turn(fx.store) == 0);

    if (++fx.inputs >= RESET_EVERY || (fx.inputs % FIXTURE_EVERY == 0 && disk_use() > RESET_DISK)) {
        FUZZ_CHECK(node_store_close(fx.store) == 0);
        remove_tree(fx.env);
        open_store();
    }
    return 0;
}
