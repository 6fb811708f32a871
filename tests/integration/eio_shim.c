/*
 * eio_shim: an LD_PRELOAD shim for the integration tests that makes the
 * calls which put data on disk fail (-1, errno EIO or ENOSPC) during a time
 * window: fdatasync, fsync and msync, and write, pwrite, writev and pwritev
 * on regular files under a chosen directory (the data directory: never a
 * socket, a pipe or the log). A test can then check that kvs never
 * acknowledges a write that is not durable, and stops or serves on as it
 * should (tests/integration/test_eio.py).
 *
 * What LMDB 0.9 calls (the worker's store; no MDB_WRITEMAP): a commit
 * writes the dirty pages with pwrite, or lseek and writev, syncs them with
 * fdatasync (unless MDB_NOSYNC), then writes the meta page with pwrite: to
 * a second descriptor opened O_DSYNC (storage.sync: full; the sync is part
 * of the write) or to the first one (batch, none). mdb_env_sync is
 * fdatasync. msync is used only with MDB_WRITEMAP.
 *
 * Environment (read once, when the shim is loaded):
 *   KVS_TEST_EIO_ROLE     which kvs processes inject, a comma list of master
 *                         (kvs-router without --router), router
 *                         (kvs-router --router N), node (kvs-node), or any.
 *                         Unset: nothing is injected anywhere.
 *   KVS_TEST_EIO_PATH     only descriptors of regular files whose path
 *                         (/proc/self/fd) is this directory or under it
 *                         (syncs and writes alike; msync, which has no
 *                         descriptor, is not filtered). Unset: every
 *                         regular file.
 *   KVS_TEST_EIO_CALLS    a comma list of: sync (fdatasync, fsync, msync),
 *                         write (write, pwrite, writev, pwritev), dsync (the
 *                         writes to a descriptor opened O_DSYNC or O_SYNC
 *                         only: LMDB's meta page in storage.sync full), or
 *                         the single names fdatasync, fsync, msync.
 *                         Default: sync,write.
 *   KVS_TEST_EIO_DIRS     1: syncs of directories count too (the chosen
 *                         directory itself and those under it), as well
 *                         as of regular files
 *   KVS_TEST_EIO_ERRNO    EIO (default) or ENOSPC
 *   KVS_TEST_EIO_WHEN     before (default): the call fails without doing
 *                         anything; after: the call is made, then reported
 *                         failed (what the disk did is unknown to the
 *                         caller: a write reached the page cache, a sync
 *                         may have reached the disk)
 *   KVS_TEST_EIO_EVERY    fail every Nth call that passes the filters,
 *                         counted from the arming
 *   KVS_TEST_EIO_PPM      or: fail each such call with this probability,
 *                         in parts per million, decided by a hash of
 *                         KVS_TEST_EIO_SEED, the call's number and the pid
 *   KVS_TEST_EIO_AFTER_MS arm this long after the process loaded the shim
 *   KVS_TEST_EIO_AT_MS    or: arm at this wall-clock time (milliseconds
 *                         since the epoch), the same in every process, a
 *                         restarted one included
 *   KVS_TEST_EIO_FOR_MS   disarm this long after arming (default: never)
 *   KVS_TEST_EIO_STALL_MS stall instead of failing: a chosen call sleeps
 *                         this long (a slow or hanging disk; signals do
 *                         not cut the sleep short, as they cannot cut a
 *                         sync in the kernel short), then is made and
 *                         returns what it returned: nothing fails.
 *   KVS_TEST_EIO_GATE     a call is chosen (and counted for EVERY) only
 *                         while this file exists: the test says when the
 *                         disk fails; with STALL_MS a stall also ends as
 *                         soon as the file is gone (checked every 5 ms), or
 *                         after STALL_MS, whichever comes first: the test
 *                         says when the disk hangs and when it comes back.
 *
 * An injecting process writes "kvs-test-eio: pid P armed" to stderr at its
 * first filtered call in the window, and "kvs-test-eio: pid P disarmed: F
 * of N calls failed" at its first one after it (or at exit), so a test can
 * check that failures really were injected. A stall writes
 * "kvs-test-eio: pid P stalling fdatasync" as it begins and
 * "kvs-test-eio: pid P stalled fdatasync for M ms" as it ends.
 *
 * The shim allocates nothing. Counters are atomics: libuv's thread pool may
 * write files too.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "shim_common.h"

#define P "KVS_TEST_EIO_" /* the environment variables' prefix */

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef int (*sync_fn)(int);
typedef int (*msync_fn)(void *, size_t, int);

static write_fn real_write;
static pwrite_fn real_pwrite, real_pwrite64;
static writev_fn real_writev;
static pwritev_fn real_pwritev, real_pwritev64;
static sync_fn real_fdatasync, real_fsync;
static msync_fn real_msync;

#define C_FDATASYNC 1u
#define C_FSYNC 2u
#define C_MSYNC 4u
#define C_WRITE 8u
#define C_DSYNC 16u

static shim_plan_t plan;
static unsigned calls_wanted;
static int fail_errno = EIO;
static int fail_after; /* KVS_TEST_EIO_WHEN=after */
static char dir[PATH_MAX];
static size_t dir_len;
static int dirs_too;        /* KVS_TEST_EIO_DIRS */
static uint64_t stall_ms;   /* KVS_TEST_EIO_STALL_MS: 0 = fail instead */
static char gate[PATH_MAX]; /* KVS_TEST_EIO_GATE: "" = none */

static void *must(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);
    if (f == NULL) {
        static const char msg[] = "kvs-test-eio: dlsym found no libc function\n";
        if (real_write != NULL && real_write(2, msg, sizeof(msg) - 1) < 0)
            _exit(127);
        _exit(127);
    }
    return f;
}

static void resolve(void)
{
    if (real_fsync != NULL)
        return;
    real_write = (write_fn)must("write");
    real_pwrite = (pwrite_fn)must("pwrite");
    real_pwrite64 = (pwrite_fn)must("pwrite64");
    real_writev = (writev_fn)must("writev");
    real_pwritev = (pwritev_fn)must("pwritev");
    real_pwritev64 = (pwritev_fn)must("pwritev64");
    real_fdatasync = (sync_fn)must("fdatasync");
    real_msync = (msync_fn)must("msync");
    real_fsync = (sync_fn)must("fsync");
}

static void say(const char *what, int with_counts)
{
    char line[160];
    int n;
    if (with_counts)
        n = snprintf(line, sizeof(line), "kvs-test-eio: pid %d %s: %llu of %llu calls failed\n",
                     (int)getpid(), what, (unsigned long long)atomic_load(&plan.failed),
                     (unsigned long long)atomic_load(&plan.calls));
    else
        n = snprintf(line, sizeof(line), "kvs-test-eio: pid %d %s\n", (int)getpid(), what);
    if (n > 0 && real_write(2, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1) < 0)
        return; /* stderr gone: nothing to tell */
}

__attribute__((constructor)) static void shim_init(void)
{
    resolve();
    if (!shim_role_wanted(getenv("KVS_TEST_EIO_ROLE")))
        return;
    if (!shim_plan_init(&plan, P))
        return;
    const char *c = getenv("KVS_TEST_EIO_CALLS");
    if (c == NULL || *c == '\0')
        c = "sync,write";
    if (shim_listed(c, "sync"))
        calls_wanted |= C_FDATASYNC | C_FSYNC | C_MSYNC;
    if (shim_listed(c, "fdatasync"))
        calls_wanted |= C_FDATASYNC;
    if (shim_listed(c, "fsync"))
        calls_wanted |= C_FSYNC;
    if (shim_listed(c, "msync"))
        calls_wanted |= C_MSYNC;
    if (shim_listed(c, "write"))
        calls_wanted |= C_WRITE;
    if (shim_listed(c, "dsync"))
        calls_wanted |= C_DSYNC;
    dirs_too = shim_env_u64(P, "DIRS", 0) != 0;
    stall_ms = shim_env_u64(P, "STALL_MS", 0);
    const char *g = getenv("KVS_TEST_EIO_GATE");
    if (g != NULL)
        snprintf(gate, sizeof(gate), "%s", g);
    const char *e = getenv("KVS_TEST_EIO_ERRNO");
    fail_errno = e != NULL && strcmp(e, "ENOSPC") == 0 ? ENOSPC : EIO;
    const char *w = getenv("KVS_TEST_EIO_WHEN");
    fail_after = w != NULL && strcmp(w, "after") == 0;
    const char *p = getenv("KVS_TEST_EIO_PATH");
    if (p != NULL && *p != '\0') {
        /* the directory as /proc/self/fd shows it: symbolic links resolved */
        if (realpath(p, dir) == NULL)
            snprintf(dir, sizeof(dir), "%s", p);
        dir_len = strlen(dir);
        while (dir_len > 1 && dir[dir_len - 1] == '/')
            dir[--dir_len] = '\0';
    }
    plan.configured = 1;
}

__attribute__((destructor)) static void shim_fini(void)
{
    shim_plan_fini(&plan, say);
}

/* Whether descriptor fd is a regular file under the chosen directory (or,
 * with KVS_TEST_EIO_DIRS, that directory or one under it). */
static int fd_wanted(int fd)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return 0;
    int is_dir = S_ISDIR(st.st_mode);
    if (!S_ISREG(st.st_mode) && !(dirs_too && is_dir))
        return 0;
    if (dir_len == 0)
        return 1;
    char link[32], path[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    if (is_dir && (size_t)n == dir_len && strcmp(path, dir) == 0)
        return 1;
    return (size_t)n > dir_len && strncmp(path, dir, dir_len) == 0 && path[dir_len] == '/';
}

/* Whether this call (of kind `kind`, on fd, -1 for msync) fails. */
static int fail_now(unsigned kind, int fd)
{
    if (!plan.configured)
        return 0;
    if (kind == C_WRITE) {
        if (!(calls_wanted & (C_WRITE | C_DSYNC)))
            return 0;
        if (!(calls_wanted & C_WRITE)) { /* dsync only */
            int fl = fcntl(fd, F_GETFL);
            if (fl < 0 || !(fl & (O_DSYNC | O_SYNC)))
                return 0;
        }
    } else if (!(calls_wanted & kind)) {
        return 0;
    }
    if (kind != C_MSYNC && !fd_wanted(fd))
        return 0;
    if (gate[0] != '\0' && access(gate, F_OK) != 0)
        return 0;
    return shim_decide(&plan, say);
}

/* Writes a line (n: snprintf's count) to stderr; one that cannot be
 * written is dropped (stderr gone: nothing to tell). */
static void say_line(const char *line, size_t n)
{
    if (n >= 160)
        n = 159;
    if (real_write(2, line, n) < 0)
        return;
}

static int gate_open(void)
{
    return gate[0] != '\0' && access(gate, F_OK) != 0;
}

/* A chosen call's stall: STALL_MS, or less once the gate file is gone.
 * EINTR does not end it (a sync in the kernel does not return early for
 * a signal either). */
static void stall(const char *name)
{
    char line[160];
    int n = snprintf(line, sizeof(line), "kvs-test-eio: pid %d stalling %s\n", (int)getpid(), name);
    if (n > 0)
        say_line(line, (size_t)n);
    int64_t start = shim_now_ms(), end = start + (int64_t)stall_ms;
    for (int64_t now = start; now < end && !gate_open(); now = shim_now_ms()) {
        int64_t step = gate[0] != '\0' && end - now > 5 ? 5 : end - now;
        struct timespec ts = {(time_t)(step / 1000), (long)(step % 1000) * 1000000L};
        nanosleep(&ts, NULL); /* EINTR: the loop sleeps on */
    }
    n = snprintf(line, sizeof(line), "kvs-test-eio: pid %d stalled %s for %lld ms\n", (int)getpid(),
                 name, (long long)(shim_now_ms() - start));
    if (n > 0)
        say_line(line, (size_t)n);
}

/* Returns the failure of a call: made first with KVS_TEST_EIO_WHEN=after
 * (its result dropped), not made at all otherwise. With
 * KVS_TEST_EIO_STALL_MS the call is stalled, then made, and its own
 * result returned. */
#define FAIL_RET(type, call)                                                                       \
    do {                                                                                           \
        if (stall_ms != 0) {                                                                       \
            stall(__func__);                                                                       \
            return call;                                                                           \
        }                                                                                          \
        if (fail_after) {                                                                          \
            type r_ = call;                                                                        \
            (void)r_;                                                                              \
        }                                                                                          \
        errno = fail_errno;                                                                        \
        return (type)-1;                                                                           \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n)
{
    resolve();
    if (fail_now(C_WRITE, fd))
        FAIL_RET(ssize_t, real_write(fd, buf, n));
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    resolve();
    if (fail_now(C_WRITE, fd))
        FAIL_RET(ssize_t, real_pwrite(fd, buf, n, off));
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    resolve();
    if (fail_now(C_WRITE, fd))
        FAIL_RET(ssize_t, real_pwrite64(fd, buf, n, off));
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    resolve();
    if (fail_now(C_WRITE, fd))
        FAIL_RET(ssize_t, real_writev(fd, iov, cnt));
    return real_writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    resolve();
    if (fail_now(C_WRITE, fd))
        FAIL_RET(ssize_t, real_pwritev(fd, iov, cnt, off));
    return real_pwritev(fd, iov, cnt, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
    resolve();
    if (fail_now(C_WRITE, fd))
        FAIL_RET(ssize_t, real_pwritev64(fd, iov, cnt, off));
    return real_pwritev64(fd, iov, cnt, off);
}

int fdatasync(int fd)
{
    resolve();
    if (fail_now(C_FDATASYNC, fd))
        FAIL_RET(int, real_fdatasync(fd));
    return real_fdatasync(fd);
}

int fsync(int fd)
{
    resolve();
    if (fail_now(C_FSYNC, fd))
        FAIL_RET(int, real_fsync(fd));
    return real_fsync(fd);
}

int msync(void *addr, size_t len, int flags)
{
    resolve();
    if (fail_now(C_MSYNC, -1))
        FAIL_RET(int, real_msync(addr, len, flags));
    return real_msync(addr, len, flags);
}
