/*
 * Tests for router_supervisor with small shell scripts as fake workers,
 * written into a fresh temporary directory per case. Every script starts
 * with d=<that dir>; "recording" scripts write "<pid> <argv...>" to
 * $d/shard-<N> (via rename, so a reader never sees half a line).
 *
 * Each case runs the loop with UV_RUN_ONCE until a condition holds; a
 * 10 ms tick keeps the loop waking up to poll files, and a 10 s watchdog
 * timer fails the case if a condition never comes true.
 */
#include "kvs_test.h"
#include "kvs_log.h"
#include "router_liveness.h"
#include "router_supervisor.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define MAX_EV 64

/* Records its argv and pid, then becomes `sleep 30` (same pid). */
#define REC_BODY                                                                                   \
    "for a; do s=$a; done\n"                                                                       \
    "echo \"$$ $*\" > \"$d/shard-$s.tmp\" && mv \"$d/shard-$s.tmp\" \"$d/shard-$s\"\n"

/* A well-behaved worker: records itself, and on SIGTERM exits with
 * status 10 + its shard. */
#define GRACEFUL_BODY                                                                              \
    "for a; do s=$a; done\n"                                                                       \
    "trap 'kill $c 2>/dev/null; exit $((10 + s))' TERM\n"                                          \
    "sleep 30 & c=$!\n" REC_BODY "wait $c\n"

typedef struct {
    uint32_t shard;
    int running;
    int64_t status;
    int sig;
    uint64_t at_ms;
    char report[128]; /* router_sup_report at an exit */
} ev_t;

typedef struct {
    uv_loop_t loop;
    uv_timer_t tick, watchdog;
    char dir[64];
    char log_path[128];
    int saved_stderr; /* -1 unless stderr is being captured */
    router_sup_t *sup;
    ev_t ev[MAX_EV];
    size_t n_ev;
    int stop_on_exit; /* call router_sup_stop from the first exit event */
    int done;
    uint64_t done_at;
} tctx_t;

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void capture_end(tctx_t *t);

static void on_tick(uv_timer_t *h)
{
    (void)h;
}

static void on_watchdog(uv_timer_t *h)
{
    tctx_t *t = h->data;
    capture_end(t);
    fprintf(stderr, "watchdog: test did not finish within 10 s\n");
    abort();
}

#define RUN_UNTIL(t, cond)                                                                         \
    do {                                                                                           \
        while (!(cond))                                                                            \
            uv_run(&(t)->loop, UV_RUN_ONCE);                                                       \
    } while (0)

static void t_init(tctx_t *t)
{
    memset(t, 0, sizeof(*t));
    t->saved_stderr = -1;
    kvs_log_init("test", -1, KVS_LOG_INFO);
    CHECK_EQ(uv_loop_init(&t->loop), 0);
    snprintf(t->dir, sizeof(t->dir), "/tmp/kvs-sup-XXXXXX");
    CHECK(mkdtemp(t->dir) != NULL);
    snprintf(t->log_path, sizeof(t->log_path), "%s/stderr.log", t->dir);
    uv_timer_init(&t->loop, &t->tick);
    uv_timer_start(&t->tick, on_tick, 10, 10);
    uv_timer_init(&t->loop, &t->watchdog);
    t->watchdog.data = t;
    uv_timer_start(&t->watchdog, on_watchdog, 10000, 0);
}

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        CHECK_EQ(unlink(path), 0);
    }
    closedir(d);
    CHECK_EQ(rmdir(dir), 0);
}

/* Closes the test's own timers, drains the loop, checks that nothing of the
 * supervisor's is left in it, and removes the directory. */
static void t_close(tctx_t *t)
{
    capture_end(t);
    uv_close((uv_handle_t *)&t->tick, NULL);
    uv_close((uv_handle_t *)&t->watchdog, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    CHECK_EQ(uv_loop_close(&t->loop), 0);
    rm_dir(t->dir);
}

/* Writes an executable script "#!/bin/sh\nd=<dir>\n<body>" to dir/name. */
static void t_script(tctx_t *t, const char *name, const char *body, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", t->dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fprintf(f, "#!/bin/sh\nd='%s'\n%s", t->dir, body);
    CHECK_EQ(fclose(f), 0);
    CHECK_EQ(chmod(path, 0755), 0);
}

static void on_done(void *arg)
{
    tctx_t *t = arg;
    CHECK(!t->done);
    t->done = 1;
    t->done_at = now_ms();
}

static void on_event(void *arg, uint32_t shard, int running, int64_t status, int sig)
{
    tctx_t *t = arg;
    CHECK(t->n_ev < MAX_EV);
    CHECK(!t->done);
    ev_t *e = &t->ev[t->n_ev++];
    *e = (ev_t){shard, running, status, sig, now_ms(), ""};
    snprintf(e->report, sizeof(e->report), "%s", router_sup_report(t->sup, shard));
    if (running)
        CHECK_STR(e->report, ""); /* a new run starts with nothing reported */
    if (running) {
        CHECK(router_sup_pid(t->sup, shard) > 0);
        CHECK_EQ(status, 0);
        CHECK_EQ(sig, 0);
    } else {
        CHECK_EQ(router_sup_pid(t->sup, shard), 0);
    }
    if (!running && t->stop_on_exit) {
        t->stop_on_exit = 0;
        router_sup_stop(t->sup, on_done, t);
        CHECK(!t->done);
    }
}

static router_sup_opts_t t_opts(tctx_t *t, const char *exe, const char *const *args,
                                const uint32_t *shards, size_t n)
{
    return (router_sup_opts_t){
        .loop = &t->loop,
        .exe = exe,
        .args = args,
        .shards = shards,
        .n_shards = n,
        .backoff_min_ms = 100,
        .backoff_max_ms = 1000,
        .stable_ms = 30000,
        .crash_loop_limit = 5,
        .stop_grace_ms = 5000,
        .on_event = on_event,
        .arg = t,
    };
}

/* Stops the supervisor, runs the loop until done, frees it. */
static void t_stop(tctx_t *t)
{
    router_sup_stop(t->sup, on_done, t);
    CHECK(!t->done); /* never synchronously */
    RUN_UNTIL(t, t->done);
    router_sup_free(t->sup);
    t->sup = NULL;
}

/* Reads $dir/shard-N into buf; 0 when it does not exist yet. */
static int shard_file(tctx_t *t, uint32_t shard, char *buf, size_t len)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/shard-%u", t->dir, (unsigned)shard);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    CHECK(fgets(buf, (int)len, f) != NULL);
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
    return 1;
}

static void unlink_shard_file(tctx_t *t, uint32_t shard)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/shard-%u", t->dir, (unsigned)shard);
    CHECK_EQ(unlink(path), 0);
}

/* Waits for $dir/shard-N and returns the pid written in it. */
static pid_t wait_shard_pid(tctx_t *t, uint32_t shard, char *line, size_t len)
{
    RUN_UNTIL(t, shard_file(t, shard, line, len));
    return (pid_t)atoi(line);
}

/* stderr (kvs_log's and the workers') goes to dir/stderr.log until capture_end. */
static void capture_start(tctx_t *t)
{
    fflush(stderr);
    t->saved_stderr = dup(STDERR_FILENO);
    CHECK(t->saved_stderr >= 0);
    int fd = open(t->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    CHECK(fd >= 0);
    CHECK(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
}

static void capture_end(tctx_t *t)
{
    if (t->saved_stderr < 0)
        return;
    fflush(stderr);
    dup2(t->saved_stderr, STDERR_FILENO);
    close(t->saved_stderr);
    t->saved_stderr = -1;
}

/* The captured log so far, NUL-terminated, in a static buffer. */
static const char *read_log(tctx_t *t)
{
    static char buf[65536];
    FILE *f = fopen(t->log_path, "r");
    CHECK(f != NULL);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* The log line containing `needle` (copied into line), or NULL. */
static const char *log_line(const char *log, const char *needle, char *line, size_t len)
{
    const char *p = strstr(log, needle);
    if (p == NULL)
        return NULL;
    while (p > log && p[-1] != '\n')
        p--;
    size_t n = strcspn(p, "\n");
    snprintf(line, len, "%.*s", (int)n, p);
    return line;
}

static size_t count_of(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

static size_t exits(const tctx_t *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n_ev; i++)
        n += !t->ev[i].running;
    return n;
}

KVS_TEST(spawns_every_shard_with_its_args)
{
    tctx_t t;
    t_init(&t);
    char exe[256], cfg[256], line[512], want[512];
    t_script(&t, "rec.sh", REC_BODY "exec sleep 30\n", exe, sizeof(exe));
    snprintf(cfg, sizeof(cfg), "%s/config.yaml", t.dir);
    const char *args[] = {"--config", cfg, NULL};
    const uint32_t shards[] = {0, 1, 5};
    router_sup_opts_t o = t_opts(&t, exe, args, shards, 3);
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    for (size_t i = 0; i < 3; i++) {
        pid_t pid = wait_shard_pid(&t, shards[i], line, sizeof(line));
        CHECK(pid > 0);
        CHECK_EQ(router_sup_pid(t.sup, shards[i]), pid);
        snprintf(want, sizeof(want), "%d --config %s --shard %u", (int)pid, cfg,
                 (unsigned)shards[i]);
        CHECK_STR(line, want);
    }
    CHECK_EQ(router_sup_pid(t.sup, 7), 0);
    CHECK_EQ(t.n_ev, 0); /* the initial spawns are not announced */
    t_stop(&t);
    CHECK_EQ(t.n_ev, 3);
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ(t.ev[i].running, 0);
        CHECK_EQ(t.ev[i].sig, SIGTERM);
    }
    t_close(&t);
}

KVS_TEST(restarts_a_killed_worker)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512];
    t_script(&t, "rec.sh", REC_BODY "exec sleep 30\n", exe, sizeof(exe));
    const uint32_t shards[] = {2};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    o.backoff_min_ms = 200;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    pid_t pid1 = wait_shard_pid(&t, 2, line, sizeof(line));
    CHECK_EQ(router_sup_pid(t.sup, 2), pid1);
    unlink_shard_file(&t, 2);
    CHECK_EQ(kill(pid1, SIGKILL), 0);
    RUN_UNTIL(&t, t.n_ev >= 2);
    CHECK_EQ(t.ev[0].shard, 2);
    CHECK_EQ(t.ev[0].running, 0);
    CHECK_EQ(t.ev[0].sig, SIGKILL);
    CHECK_EQ(t.ev[1].shard, 2);
    CHECK_EQ(t.ev[1].running, 1);
    CHECK(t.ev[1].at_ms - t.ev[0].at_ms >= 190); /* not before backoff_min_ms */
    pid_t pid2 = router_sup_pid(t.sup, 2);
    CHECK(pid2 > 0 && pid2 != pid1);
    CHECK_EQ(wait_shard_pid(&t, 2, line, sizeof(line)), pid2);
    t_stop(&t);
    CHECK_EQ(t.n_ev, 3);
    CHECK_EQ(t.ev[2].running, 0);
    CHECK_EQ(t.ev[2].sig, SIGTERM);
    t_close(&t);
}

/* While paused, a child that exits waits, its pending restart too; resume
 * restarts it, and the stop still works while paused. */
KVS_TEST(paused_restarts_wait_for_resume)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512];
    t_script(&t, "rec.sh", REC_BODY "exec sleep 30\n", exe, sizeof(exe));
    const uint32_t shards[] = {2, 4};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 2);
    o.backoff_min_ms = 50;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    pid_t a = wait_shard_pid(&t, 2, line, sizeof(line));
    pid_t b = wait_shard_pid(&t, 4, line, sizeof(line));
    unlink_shard_file(&t, 2);
    CHECK_EQ(kill(a, SIGKILL), 0);
    RUN_UNTIL(&t, t.n_ev >= 1); /* shard 2's restart is pending */
    router_sup_pause(t.sup);
    router_sup_pause(t.sup); /* idempotent */
    unlink_shard_file(&t, 4);
    CHECK_EQ(kill(b, SIGKILL), 0);
    RUN_UNTIL(&t, t.n_ev >= 2);      /* shard 4 exits while paused */
    uint64_t until = now_ms() + 300; /* six backoffs: nothing restarts */
    RUN_UNTIL(&t, now_ms() >= until);
    CHECK_EQ(t.n_ev, 2);
    CHECK_EQ(router_sup_pid(t.sup, 2), 0);
    CHECK_EQ(router_sup_pid(t.sup, 4), 0);
    router_sup_resume(t.sup);
    router_sup_resume(t.sup);
    pid_t a2 = wait_shard_pid(&t, 2, line, sizeof(line));
    pid_t b2 = wait_shard_pid(&t, 4, line, sizeof(line));
    CHECK(a2 > 0 && a2 != a && b2 > 0 && b2 != b);
    router_sup_pause(t.sup);
    t_stop(&t); /* paused: the stop still ends */
    t_close(&t);
}

KVS_TEST(backoff_grows_for_a_crash_loop)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512];
    t_script(&t, "crash.sh", "exit 3\n", exe, sizeof(exe));
    const uint32_t shards[] = {3};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    o.backoff_min_ms = 50;
    o.backoff_max_ms = 400;
    o.crash_loop_limit = 4;
    capture_start(&t);
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    RUN_UNTIL(&t, exits(&t) >= 6);
    t_stop(&t); /* a restart is pending, nothing runs: done still comes later */
    capture_end(&t);
    const char *log = read_log(&t);
    fputs(log, stderr);

    /* exit, start, exit, start, ..., exit */
    CHECK_EQ(t.n_ev, 11);
    const uint64_t want[] = {50, 100, 200, 400, 400};
    for (size_t i = 0; i < t.n_ev; i++) {
        CHECK_EQ(t.ev[i].running, i % 2);
        if (t.ev[i].running)
            continue;
        CHECK_EQ(t.ev[i].status, 3);
        CHECK_EQ(t.ev[i].sig, 0);
    }
    for (size_t k = 0; k < 5; k++) {
        uint64_t gap = t.ev[2 * k + 1].at_ms - t.ev[2 * k].at_ms;
        fprintf(stderr, "restart %zu after %" PRIu64 " ms (backoff %" PRIu64 ")\n", k + 1, gap,
                want[k]);
        CHECK(gap >= want[k] * 9 / 10);
        CHECK(gap <= want[k] * 2 + 150); /* loose: loaded CI machines */
    }
    CHECK_CONTAINS(log, "shard 3 (pid ");
    CHECK_CONTAINS(log, "exited with status 3");
    CHECK_CONTAINS(log, "restarting shard 3 in 50 ms");
    CHECK_CONTAINS(log, "restarting shard 3 in 100 ms");
    CHECK_CONTAINS(log, "restarting shard 3 in 200 ms");
    CHECK(log_line(log, "crash-looping", line, sizeof(line)) != NULL);
    CHECK_CONTAINS(line, "ERROR");
    CHECK_CONTAINS(line, "shard 3 is crash-looping: 4 restarts");
    CHECK_CONTAINS(line, "in 400 ms");
    CHECK_EQ(count_of(log, "crash-looping"), 3); /* restarts 4, 5 and 6 */
    CHECK(strstr(log, "crash-looping") > strstr(log, "in 200 ms"));
    t_close(&t);
}

KVS_TEST(stable_worker_resets_backoff)
{
    tctx_t t;
    t_init(&t);
    char exe[256];
    t_script(&t, "short.sh", "sleep 0.3\nexit 1\n", exe, sizeof(exe));
    const uint32_t shards[] = {1};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    o.backoff_min_ms = 50;
    o.stable_ms = 200;
    o.crash_loop_limit = 2;
    capture_start(&t);
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    RUN_UNTIL(&t, exits(&t) >= 4);
    t_stop(&t);
    capture_end(&t);
    const char *log = read_log(&t);
    fputs(log, stderr);
    CHECK_EQ(count_of(log, "restarting shard 1 in 50 ms"), 4);
    CHECK(strstr(log, "in 100 ms") == NULL);
    CHECK(strstr(log, "crash-looping") == NULL);
    t_close(&t);
}

KVS_TEST(stop_terminates_workers_and_calls_done)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512];
    t_script(&t, "graceful.sh", GRACEFUL_BODY, exe, sizeof(exe));
    const uint32_t shards[] = {0, 1};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 2);
    o.backoff_min_ms = 20;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    wait_shard_pid(&t, 0, line, sizeof(line));
    wait_shard_pid(&t, 1, line, sizeof(line));
    t_stop(&t);
    CHECK_EQ(t.n_ev, 2);
    for (size_t i = 0; i < 2; i++) {
        CHECK_EQ(t.ev[i].running, 0);
        CHECK_EQ(t.ev[i].sig, 0);
        CHECK_EQ(t.ev[i].status, 10 + t.ev[i].shard);
    }
    CHECK(t.ev[0].shard != t.ev[1].shard);
    /* Well past backoff_min_ms: nothing is restarted. */
    uint64_t until = now_ms() + 200;
    RUN_UNTIL(&t, now_ms() >= until);
    CHECK_EQ(t.n_ev, 2);
    t_close(&t);
}

/* Whether `pid` is stopped (state T in /proc/<pid>/status). */
static int is_stopped(pid_t pid)
{
    router_proc_state_t st;
    return router_liveness_inspect(pid, &st) == 0 && st.state == 'T';
}

/* A worker stopped (SIGSTOP) when the supervisor stops takes SIGTERM only
 * once it runs: the SIGCONT after it lets it drain and exit as asked, well
 * before the grace period's SIGKILL. */
KVS_TEST(stop_continues_a_stopped_worker)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512];
    t_script(&t, "graceful.sh", GRACEFUL_BODY, exe, sizeof(exe));
    const uint32_t shards[] = {2};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    o.stop_grace_ms = 3000;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    pid_t pid = wait_shard_pid(&t, 2, line, sizeof(line));
    CHECK_EQ(kill(pid, SIGSTOP), 0);
    RUN_UNTIL(&t, is_stopped(pid));
    uint64_t t0 = now_ms();
    t_stop(&t);
    CHECK(t.done_at - t0 < 2000);
    CHECK_EQ(t.n_ev, 1);
    CHECK_EQ(t.ev[0].sig, 0);
    CHECK_EQ(t.ev[0].status, 12);
    t_close(&t);
}

KVS_TEST(stop_from_an_event_callback)
{
    tctx_t t;
    t_init(&t);
    char exe[256];
    t_script(&t, "crash.sh", "exit 3\n", exe, sizeof(exe));
    const uint32_t shards[] = {0};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    o.backoff_min_ms = 20;
    t.stop_on_exit = 1;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    RUN_UNTIL(&t, t.done);
    router_sup_free(t.sup);
    CHECK_EQ(t.n_ev, 1);
    CHECK_EQ(t.ev[0].status, 3);
    uint64_t until = now_ms() + 100;
    RUN_UNTIL(&t, now_ms() >= until);
    CHECK_EQ(t.n_ev, 1);
    t_close(&t);
}

KVS_TEST(stop_kills_stragglers_after_grace)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512], want[64];
    t_script(&t, "stubborn.sh", "trap '' TERM\n" REC_BODY "exec sleep 30\n", exe, sizeof(exe));
    const uint32_t shards[] = {4};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    o.stop_grace_ms = 300;
    capture_start(&t);
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    pid_t pid = wait_shard_pid(&t, 4, line, sizeof(line));
    uint64_t t0 = now_ms();
    t_stop(&t);
    capture_end(&t);
    const char *log = read_log(&t);
    fputs(log, stderr);
    uint64_t took = t.done_at - t0;
    CHECK(took >= 290 && took < 5000);
    CHECK_EQ(t.n_ev, 1);
    CHECK_EQ(t.ev[0].running, 0);
    CHECK_EQ(t.ev[0].sig, SIGKILL);
    CHECK(log_line(log, "sending SIGKILL", line, sizeof(line)) != NULL);
    CHECK_CONTAINS(line, "WARN");
    snprintf(want, sizeof(want), "shard 4 (pid %d)", (int)pid);
    CHECK_CONTAINS(line, want);
    CHECK_CONTAINS(log, "killed by signal SIGKILL");
    t_close(&t);
}

KVS_TEST(restart_survives_a_vanished_exe)
{
    tctx_t t;
    t_init(&t);
    char exe[256], away[300];
    t_script(&t, "crash.sh", "exit 1\n", exe, sizeof(exe));
    snprintf(away, sizeof(away), "%s.away", exe);
    const uint32_t shards[] = {6};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    o.backoff_min_ms = 100;
    capture_start(&t);
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    RUN_UNTIL(&t, t.n_ev >= 1);
    CHECK_EQ(rename(exe, away), 0); /* the restart is 100 ms away */
    RUN_UNTIL(&t, strstr(read_log(&t), "cannot start shard 6") != NULL);
    CHECK_EQ(t.n_ev, 1);
    CHECK_EQ(router_sup_pid(t.sup, 6), 0);
    CHECK_EQ(rename(away, exe), 0);
    RUN_UNTIL(&t, t.n_ev >= 2);
    CHECK_EQ(t.ev[1].running, 1);
    CHECK(t.ev[1].at_ms - t.ev[0].at_ms >= 270); /* 100 ms, failed spawn, 200 ms */
    t_stop(&t);
    capture_end(&t);
    const char *log = read_log(&t);
    fputs(log, stderr);
    char line[512];
    CHECK(log_line(log, "cannot start shard 6", line, sizeof(line)) != NULL);
    CHECK_CONTAINS(line, "ERROR");
    CHECK_CONTAINS(line, "no such file or directory");
    CHECK_CONTAINS(log, "restarting shard 6 in 200 ms");
    t_close(&t);
}

KVS_TEST(missing_exe_fails_start)
{
    tctx_t t;
    t_init(&t);
    char exe[256];
    snprintf(exe, sizeof(exe), "%s/no-such-kvs-node", t.dir);
    const uint32_t shards[] = {0, 1};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 2);
    t.sup = (router_sup_t *)&t; /* must be reset */
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_ENOENT);
    CHECK(t.sup == NULL);
    /* Present but not executable. */
    t_script(&t, "noexec.sh", "exit 0\n", exe, sizeof(exe));
    CHECK_EQ(chmod(exe, 0644), 0);
    o.exe = exe;
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EACCES);
    CHECK(t.sup == NULL);
    CHECK_EQ(t.n_ev, 0);
    t_close(&t); /* the loop must drain to empty: nothing leaks */
}

KVS_TEST(start_rejects_bad_options)
{
    tctx_t t;
    t_init(&t);
    const uint32_t dup[] = {1, 2, 1};
    router_sup_opts_t o = t_opts(&t, "/bin/true", NULL, dup, 3);
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    o.n_shards = 2;
    o.backoff_min_ms = 0;
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    o.backoff_min_ms = 500;
    o.backoff_max_ms = 100;
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    o.backoff_max_ms = 1000;
    o.exe = NULL;
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    CHECK(t.sup == NULL);
    o.exe = "/bin/true";
    o.report_fd = 2; /* stdio is not ours to replace */
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    o.report_fd = 10;
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    o.report_fd = 5;
    o.notify_fd = 5; /* one child fd, two uses */
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    o.notify_fd = 4;
    router_sup_fd_t inherit[] = {{4, 0}};
    o.inherit = inherit;
    o.n_inherit = 1;
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    inherit[0].child_fd = 1;
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    inherit[0] = (router_sup_fd_t){6, -1};
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    o.n_inherit = 0;
    o.notify_fd = 0;
    o.report_fd = 0;
    o.fatal_status = 256;
    CHECK_EQ(router_sup_start(&o, &t.sup), UV_EINVAL);
    o.fatal_status = 0;
    CHECK(t.sup == NULL);
    /* No shards is valid: stop completes at once (asynchronously). */
    o.exe = "/bin/true";
    o.n_shards = 0;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    t_stop(&t);
    t_close(&t);
}

/* A worker whose exit status says "this can never work" (kvs-node's
 * EX_CONFIG) is not restarted, and what it wrote on its report fd explains
 * the exit; any other status is restarted as before, with its report. */
KVS_TEST(fatal_status_is_not_restarted_and_reported)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512];
    t_script(&t, "fatal.sh",
             "for a; do s=$a; done\n"
             "if [ \"$s\" = 1 ]; then printf 'kafka topic t has 8 partitions\\nset 8\\n' >&5; "
             "exit 78; fi\n"
             "echo \"transient $s\" >&5; exit 3\n",
             exe, sizeof(exe));
    const uint32_t shards[] = {1, 2};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 2);
    o.backoff_min_ms = 50;
    o.report_fd = 5;
    o.fatal_status = 78;
    capture_start(&t);
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    RUN_UNTIL(&t, exits(&t) >= 4); /* shard 2: exit, restart, exit, ... */
    uint64_t until = now_ms() + 300;
    RUN_UNTIL(&t, now_ms() >= until);
    size_t fatal = 0, transient = 0;
    for (size_t i = 0; i < t.n_ev; i++) {
        if (t.ev[i].running) {
            CHECK_EQ(t.ev[i].shard, 2); /* shard 1 is never restarted */
            continue;
        }
        if (t.ev[i].shard == 1) {
            fatal++;
            CHECK_EQ(t.ev[i].status, 78);
            CHECK_STR(t.ev[i].report, "kafka topic t has 8 partitions set 8"); /* one line */
        } else {
            transient++;
            CHECK_EQ(t.ev[i].status, 3);
            CHECK_STR(t.ev[i].report, "transient 2");
        }
    }
    CHECK_EQ(fatal, 1);
    CHECK(transient >= 3);
    CHECK_STR(router_sup_report(t.sup, 1), "kafka topic t has 8 partitions set 8");
    CHECK_EQ(router_sup_pid(t.sup, 1), 0);
    t_stop(&t);
    capture_end(&t);
    const char *log = read_log(&t);
    fputs(log, stderr);
    CHECK(log_line(log, "exited with status 78", line, sizeof(line)) != NULL);
    CHECK_CONTAINS(line, "ERROR");
    CHECK_CONTAINS(line, "(a fatal error: not restarting it): kafka topic t has 8 partitions");
    CHECK(strstr(log, "restarting shard 1") == NULL);
    CHECK_CONTAINS(log, "restarting shard 2 in 50 ms");
    t_close(&t);
}

/* After router_sup_hold, no worker is restarted: neither one that exits
 * later nor one already waiting for its restart; the others keep running
 * until router_sup_stop. */
KVS_TEST(hold_stops_restarts)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512];
    t_script(&t, "mixed.sh",
             "for a; do s=$a; done\n"
             "if [ \"$s\" = 3 ]; then exit 3; fi\n" REC_BODY "exec sleep 30\n",
             exe, sizeof(exe));
    const uint32_t shards[] = {0, 1, 3};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 3);
    o.backoff_min_ms = 400;
    capture_start(&t);
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    RUN_UNTIL(&t, exits(&t) >= 1);
    CHECK_EQ(t.ev[0].shard, 3); /* crashed: its restart is 400 ms away */
    router_sup_hold(t.sup);
    router_sup_hold(t.sup); /* idempotent */
    pid_t p0 = wait_shard_pid(&t, 0, line, sizeof(line));
    pid_t p1 = wait_shard_pid(&t, 1, line, sizeof(line));
    CHECK_EQ(kill(p1, SIGKILL), 0);
    RUN_UNTIL(&t, exits(&t) >= 2);
    uint64_t until = now_ms() + 1000; /* well past both backoffs */
    RUN_UNTIL(&t, now_ms() >= until);
    CHECK_EQ(t.n_ev, 2); /* two exits, no start */
    CHECK_EQ(t.ev[1].shard, 1);
    CHECK_EQ(t.ev[1].sig, SIGKILL);
    CHECK_EQ(router_sup_pid(t.sup, 0), p0);
    CHECK_EQ(router_sup_pid(t.sup, 1), 0);
    CHECK_EQ(router_sup_pid(t.sup, 3), 0);
    t_stop(&t);
    capture_end(&t);
    const char *log = read_log(&t);
    fputs(log, stderr);
    CHECK_EQ(t.n_ev, 3);
    CHECK_EQ(t.ev[2].shard, 0);
    CHECK_EQ(t.ev[2].sig, SIGTERM);
    CHECK_CONTAINS(log, "not restarting shard 1: shutting down");
    CHECK(log_line(log, "killed by signal SIGKILL", line, sizeof(line)) != NULL);
    CHECK_CONTAINS(line, "INFO"); /* expected while shutting down */
    CHECK(strstr(log, "started shard") == NULL);
    t_close(&t);
}

/* With detach, a worker leads its own session and process group: a signal
 * to the supervisor's group (a terminal's Ctrl-C) does not reach it. */
KVS_TEST(detach_puts_workers_in_their_own_group)
{
    for (int detach = 0; detach <= 1; detach++) {
        tctx_t t;
        t_init(&t);
        char exe[256], line[512];
        t_script(&t, "group.sh",
                 "for a; do s=$a; done\n"
                 "read -r _ _ _ _ pg sid _ < /proc/$$/stat\n"
                 "echo \"$$ $pg $sid\" > \"$d/shard-$s.tmp\" && mv \"$d/shard-$s.tmp\" "
                 "\"$d/shard-$s\"\n"
                 "exec sleep 30\n",
                 exe, sizeof(exe));
        const uint32_t shards[] = {0};
        router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
        o.detach = detach;
        CHECK_EQ(router_sup_start(&o, &t.sup), 0);
        pid_t pid = wait_shard_pid(&t, 0, line, sizeof(line));
        long got_pid, pg, sid;
        CHECK_EQ(sscanf(line, "%ld %ld %ld", &got_pid, &pg, &sid), 3);
        if (detach) {
            CHECK_EQ(pg, pid);
            CHECK_EQ(sid, pid);
            CHECK(pg != (long)getpgrp());
        } else {
            CHECK_EQ(pg, (long)getpgrp());
        }
        t_stop(&t);
        CHECK_EQ(t.ev[0].sig, SIGTERM);
        t_close(&t);
    }
}

/* Router processes: `what` names them in the log, id_flag and gen_flag
 * shape their argv (the generation counts an id's spawns), inherited
 * descriptors appear at their child fds, and router_sup_signal reaches
 * every running child. */
/* Ids added while running get a child each (not announced, like the
 * first ones), from generation gen_added (kvs-node's workers: --spawn 1,
 * the shard was served before); a retired id's child gets SIGTERM and is
 * never restarted; a retired id that exited may be added again, its
 * generations going on; max_shards bounds ids. */
KVS_TEST(add_and_retire_ids_while_running)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512], want[512];
    t_script(&t, "rec.sh", REC_BODY "exec sleep 30\n", exe, sizeof(exe));
    const uint32_t shards[] = {0};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    o.max_shards = 3;
    o.gen_flag = "--generation";
    o.gen_base = 5;
    o.gen_added = 9;
    o.backoff_min_ms = 20;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    pid_t p0 = wait_shard_pid(&t, 0, line, sizeof(line));
    snprintf(want, sizeof(want), "%d --generation 5 --shard 0", (int)p0);
    CHECK_STR(line, want);
    CHECK_EQ(router_sup_generation(t.sup, 0), 6);
    CHECK_EQ(router_sup_add(t.sup, 2), 0);
    CHECK(router_sup_pid(t.sup, 2) > 0);
    pid_t p2 = wait_shard_pid(&t, 2, line, sizeof(line));
    CHECK_EQ(router_sup_pid(t.sup, 2), p2);
    snprintf(want, sizeof(want), "%d --generation 9 --shard 2", (int)p2);
    CHECK_STR(line, want);
    CHECK_EQ(router_sup_generation(t.sup, 2), 10);
    CHECK_EQ(router_sup_add(t.sup, 2), UV_EEXIST);
    CHECK(router_sup_wanted(t.sup, 2));
    CHECK_EQ(t.n_ev, 0);
    CHECK_EQ(router_sup_signal(t.sup, 0), 2);
    CHECK_EQ(router_sup_signal_one(t.sup, 2, 0), 0);        /* one id's child only */
    CHECK_EQ(router_sup_signal_one(t.sup, 1, 0), UV_ESRCH); /* not supervised */
    /* Retire 0: SIGTERM, no restart. */
    unlink_shard_file(&t, 0);
    CHECK_EQ(router_sup_retire(t.sup, 0), 0);
    CHECK_EQ(router_sup_retire(t.sup, 0), UV_ENOENT);
    CHECK(!router_sup_wanted(t.sup, 0));
    CHECK_EQ(router_sup_signal(t.sup, 0), 1); /* the retired one is not signalled */
    CHECK_EQ(router_sup_signal_one(t.sup, 0, 0), UV_ESRCH);
    RUN_UNTIL(&t, t.n_ev >= 1);
    CHECK_EQ(t.ev[0].shard, 0);
    CHECK_EQ(t.ev[0].running, 0);
    CHECK_EQ(t.ev[0].sig, SIGTERM);
    uint64_t until = now_ms() + 200; /* ten times backoff_min_ms */
    RUN_UNTIL(&t, now_ms() >= until);
    CHECK_EQ(t.n_ev, 1);
    CHECK_EQ(router_sup_pid(t.sup, 0), 0);
    CHECK(!shard_file(&t, 0, line, sizeof(line)));
    /* Taken up again, with the next generation. */
    CHECK_EQ(router_sup_add(t.sup, 0), 0);
    pid_t p0b = wait_shard_pid(&t, 0, line, sizeof(line));
    CHECK(p0b != p0);
    snprintf(want, sizeof(want), "%d --generation 6 --shard 0", (int)p0b);
    CHECK_STR(line, want);
    CHECK_EQ(router_sup_add(t.sup, 7), 0);
    CHECK_EQ(router_sup_add(t.sup, 8), UV_ENOSPC);
    wait_shard_pid(&t, 7, line, sizeof(line));
    t_stop(&t);
    CHECK_EQ(t.n_ev, 4);
    t_close(&t);
}

/* A retired child that ignores SIGTERM is killed stop_grace_ms later. */
KVS_TEST(retire_kills_a_straggler)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512];
    t_script(&t, "stubborn.sh", "trap '' TERM\n" REC_BODY "while :; do sleep 0.05; done\n", exe,
             sizeof(exe));
    const uint32_t shards[] = {1, 3};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 2);
    o.stop_grace_ms = 200;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    wait_shard_pid(&t, 1, line, sizeof(line));
    wait_shard_pid(&t, 3, line, sizeof(line));
    uint64_t t0 = now_ms();
    CHECK_EQ(router_sup_retire(t.sup, 3), 0);
    RUN_UNTIL(&t, t.n_ev >= 1);
    CHECK_EQ(t.ev[0].shard, 3);
    CHECK_EQ(t.ev[0].sig, SIGKILL);
    CHECK(t.ev[0].at_ms - t0 >= 190);
    CHECK(router_sup_pid(t.sup, 1) > 0);
    t_stop(&t);
    t_close(&t);
}

/* SIGHUP (a reload passed on) reaches a child only once it is 1 s old: a
 * child signalled before its main() took the signal over would die of it
 * (this one sets its trap after 0.3 s); SIGTERM is not held. */
KVS_TEST(reload_signals_wait_until_a_child_is_old_enough)
{
    tctx_t t;
    t_init(&t);
    char exe[256], hup[128];
    t_script(&t, "late.sh",
             "for a; do s=$a; done\n"
             "sleep 0.3\n"
             "trap 'echo hup > \"$d/hup-$s\"' HUP\n"
             "while :; do sleep 0.05; done\n",
             exe, sizeof(exe));
    const uint32_t shards[] = {0};
    router_sup_opts_t o = t_opts(&t, exe, NULL, shards, 1);
    uint64_t t0 = now_ms();
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    CHECK_EQ(router_sup_signal(t.sup, SIGHUP), 1);
    CHECK_EQ(router_sup_signal_one(t.sup, 0, SIGHUP), 0);
    snprintf(hup, sizeof(hup), "%s/hup-0", t.dir);
    RUN_UNTIL(&t, access(hup, F_OK) == 0);
    CHECK(now_ms() - t0 >= 950);
    CHECK_EQ(t.n_ev, 0); /* alive: the signal came after the trap */
    t0 = now_ms();
    CHECK_EQ(router_sup_signal(t.sup, SIGTERM), 1);
    RUN_UNTIL(&t, t.n_ev >= 1);
    CHECK_EQ(t.ev[0].sig, SIGTERM);
    CHECK(now_ms() - t0 < 900);
    t_stop(&t);
    t_close(&t);
}

KVS_TEST(router_children_get_flags_generation_and_fds)
{
    tctx_t t;
    t_init(&t);
    char exe[256], line[512], want[512], path[128];
    /* Records argv and what it reads from fd 6, then waits for SIGHUP. The
     * trap is set before the record says it runs: a SIGHUP sent as soon as
     * the record appears must not find the shell without it (it would die). */
    t_script(&t, "router.sh",
             "for a; do s=$a; done\n"
             "trap 'echo hup > \"$d/hup-$s\"' HUP\n"
             "got=$(cat /proc/self/fd/6)\n"
             "echo \"$$ $* $got\" > \"$d/shard-$s.tmp\" && mv \"$d/shard-$s.tmp\" \"$d/shard-$s\"\n"
             "while :; do sleep 0.05; done\n",
             exe, sizeof(exe));
    snprintf(path, sizeof(path), "%s/snapshot", t.dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs("snapshot-text", f);
    CHECK_EQ(fclose(f), 0);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    const char *args[] = {"--config", "c.yaml", NULL};
    const uint32_t ids[] = {0, 1};
    const router_sup_fd_t inherit[] = {{6, fd}};
    router_sup_opts_t o = t_opts(&t, exe, args, ids, 2);
    o.what = "router";
    o.id_flag = "--router";
    o.gen_flag = "--generation";
    o.inherit = inherit;
    o.n_inherit = 1;
    o.detach = 1;
    capture_start(&t);
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    pid_t p1 = wait_shard_pid(&t, 1, line, sizeof(line));
    snprintf(want, sizeof(want), "%d --config c.yaml --generation 0 --router 1 snapshot-text",
             (int)p1);
    CHECK_STR(line, want);
    unlink_shard_file(&t, 1);
    CHECK_EQ(kill(p1, SIGKILL), 0);
    pid_t p1b = wait_shard_pid(&t, 1, line, sizeof(line));
    CHECK(p1b != p1);
    snprintf(want, sizeof(want), "%d --config c.yaml --generation 1 --router 1 snapshot-text",
             (int)p1b);
    CHECK_STR(line, want);
    /* New args reach the spawns from now on; running children keep theirs. */
    const char *args2[] = {"--config", "d.yaml", "--next", NULL};
    CHECK_EQ(router_sup_set_args(t.sup, args2), 0);
    CHECK_EQ(router_sup_pid(t.sup, 1), p1b);
    unlink_shard_file(&t, 1);
    CHECK_EQ(kill(p1b, SIGKILL), 0);
    pid_t p1c = wait_shard_pid(&t, 1, line, sizeof(line));
    snprintf(want, sizeof(want),
             "%d --config d.yaml --next --generation 2 --router 1 snapshot-text", (int)p1c);
    CHECK_STR(line, want);
    pid_t p0 = wait_shard_pid(&t, 0, line, sizeof(line));
    snprintf(want, sizeof(want), "%d --config c.yaml --generation 0 --router 0", (int)p0);
    CHECK(strncmp(line, want, strlen(want)) == 0);
    CHECK_EQ(router_sup_signal(t.sup, SIGHUP), 2);
    char hup[128];
    for (int i = 0; i < 2; i++) {
        snprintf(hup, sizeof(hup), "%s/hup-%d", t.dir, i);
        RUN_UNTIL(&t, access(hup, F_OK) == 0);
        CHECK_EQ(unlink(hup), 0);
    }
    t_stop(&t);
    capture_end(&t);
    close(fd);
    const char *log = read_log(&t);
    fputs(log, stderr);
    CHECK(log_line(log, "killed by signal SIGKILL", line, sizeof(line)) != NULL);
    CHECK_CONTAINS(line, "router 1 (pid ");
    CHECK_CONTAINS(log, "restarting router 1 in 100 ms");
    CHECK_CONTAINS(log, "started router 1 (pid ");
    CHECK(strstr(log, "shard") == NULL);
    t_close(&t);
}

typedef struct {
    tctx_t *t;
    char lines[8][300];
    uint32_t ids[8];
    size_t n;
    int stop_on_line;
} lines_t;

static void on_line(void *arg, uint32_t id, const char *line)
{
    lines_t *l = arg;
    CHECK(l->n < 8);
    CHECK(router_sup_pid(l->t->sup, id) > 0); /* only while it runs */
    snprintf(l->lines[l->n], sizeof(l->lines[0]), "%s", line);
    l->ids[l->n++] = id;
}

static void lines_event(void *arg, uint32_t shard, int running, int64_t status, int sig)
{
    lines_t *l = arg;
    on_event(l->t, shard, running, status, sig);
}

/* Lines a child writes on its notify pipe reach on_line while it runs, one
 * call per line, split across writes and cut at 255 bytes; nothing of a
 * child comes after its exit event. */
KVS_TEST(notify_lines_reach_on_line)
{
    tctx_t t;
    t_init(&t);
    lines_t l;
    memset(&l, 0, sizeof(l));
    l.t = &t;
    char exe[256];
    t_script(&t, "notify.sh",
             "for a; do s=$a; done\n"
             "printf 'listening 12' >&4; sleep 0.1; printf '34 56\\nsecond\\n' >&4\n"
             "printf '%0400d\\n' 0 >&4\n"
             "exec sleep 30\n",
             exe, sizeof(exe));
    const uint32_t ids[] = {3};
    router_sup_opts_t o = t_opts(&t, exe, NULL, ids, 1);
    o.notify_fd = 4;
    o.on_line = on_line;
    o.on_event = lines_event;
    o.arg = &l;
    CHECK_EQ(router_sup_start(&o, &t.sup), 0);
    RUN_UNTIL(&t, l.n >= 3);
    CHECK_STR(l.lines[0], "listening 1234 56");
    CHECK_STR(l.lines[1], "second");
    CHECK_EQ(strlen(l.lines[2]), 255);
    CHECK_EQ(l.ids[0], 3);
    t_stop(&t);
    CHECK_EQ(l.n, 3);
    t_close(&t);
}

KVS_TEST_MAIN(KVS_CASE(router_children_get_flags_generation_and_fds),
              KVS_CASE(stop_continues_a_stopped_worker),
              KVS_CASE(reload_signals_wait_until_a_child_is_old_enough),
              KVS_CASE(paused_restarts_wait_for_resume), KVS_CASE(add_and_retire_ids_while_running),
              KVS_CASE(retire_kills_a_straggler), KVS_CASE(notify_lines_reach_on_line),
              KVS_CASE(spawns_every_shard_with_its_args), KVS_CASE(restarts_a_killed_worker),
              KVS_CASE(backoff_grows_for_a_crash_loop), KVS_CASE(stable_worker_resets_backoff),
              KVS_CASE(stop_terminates_workers_and_calls_done),
              KVS_CASE(stop_from_an_event_callback), KVS_CASE(stop_kills_stragglers_after_grace),
              KVS_CASE(restart_survives_a_vanished_exe), KVS_CASE(missing_exe_fails_start),
              KVS_CASE(start_rejects_bad_options),
              KVS_CASE(fatal_status_is_not_restarted_and_reported), KVS_CASE(hold_stops_restarts),
              KVS_CASE(detach_puts_workers_in_their_own_group))
