/*
 * Tests for router_liveness: the heartbeat's interval and send, the
 * parsing of /proc/PID/status, and the verdict on a silent router
 * process, with a stand-in for /proc and with real child processes
 * (stopped by SIGSTOP, traced with PTRACE_SEIZE, exited).
 */
#include "kvs_test.h"
#include "kvs_err.h"
#include "router_liveness.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

KVS_TEST(interval_is_a_quarter_and_off_at_zero)
{
    CHECK_EQ(router_liveness_interval_ms(0), 0);
    CHECK_EQ(router_liveness_interval_ms(10000), 2500);
    CHECK_EQ(router_liveness_interval_ms(100), 25);
    CHECK_EQ(router_liveness_interval_ms(3), 1);
}

KVS_TEST(beat_sends_one_line_and_never_blocks)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    CHECK_EQ(router_liveness_beat(sv[0]), 0);
    char buf[32];
    ssize_t n = read(sv[1], buf, sizeof(buf));
    CHECK_EQ(n, (ssize_t)strlen(ROUTER_LIVENESS_LINE "\n"));
    CHECK(memcmp(buf, ROUTER_LIVENESS_LINE "\n", (size_t)n) == 0);
    /* Nobody reads: the buffer fills, and a beat is then refused at once
     * (a blocking descriptor, as the child's end of the pipe is). */
    int rc;
    size_t beats = 0;
    while ((rc = router_liveness_beat(sv[0])) == 0)
        beats++;
    CHECK_EQ(rc, -EAGAIN);
    CHECK(beats > 100);
    close(sv[1]);
    CHECK_EQ(router_liveness_beat(sv[0]), -EPIPE); /* no SIGPIPE either */
    close(sv[0]);
}

static const char status_text[] = "Name:\tkvs-router\n"
                                  "Umask:\t0022\n"
                                  "State:\tT (stopped)\n"
                                  "Tgid:\t4242\n"
                                  "Ngid:\t0\n"
                                  "Pid:\t4242\n"
                                  "PPid:\t4200\n"
                                  "TracerPid:\t0\n"
                                  "Uid:\t1000\t1000\t1000\t1000\n";

KVS_TEST(parse_status_state_and_tracer)
{
    router_proc_state_t st;
    CHECK_EQ(router_liveness_parse_status(status_text, &st), 0);
    CHECK_EQ(st.state, 'T');
    CHECK_EQ(st.tracer, 0);
    CHECK_EQ(st.ppid, 4200);
    CHECK_EQ(router_liveness_parse_status("State:\tt (tracing stop)\nTracerPid:\t77\n", &st), 0);
    CHECK_EQ(st.state, 't');
    CHECK_EQ(st.tracer, 77);
    /* The last line, without its newline. */
    CHECK_EQ(router_liveness_parse_status("State:\tS (sleeping)\nTracerPid:\t5", &st), 0);
    CHECK_EQ(st.tracer, 5);
    CHECK_EQ(st.ppid, 0); /* no PPid line: not said */
    CHECK_EQ(router_liveness_parse_status("State:\tS\nPPid:\t42x\nTracerPid:\t0\n", &st), 0);
    CHECK_EQ(st.ppid, 0); /* malformed: not said */
    /* A key must start its line: "PPid" is not "Pid", a Name is no State. */
    CHECK_EQ(router_liveness_parse_status("Name:\tState: R\nTracerPid:\t0\n", &st), KVS_EINVAL);
    CHECK_EQ(router_liveness_parse_status("State:\tR (running)\n", &st), KVS_EINVAL);
    CHECK_EQ(router_liveness_parse_status("TracerPid:\t0\n", &st), KVS_EINVAL);
    CHECK_EQ(router_liveness_parse_status("State:\tR\nTracerPid:\t-1\n", &st), KVS_EINVAL);
    CHECK_EQ(router_liveness_parse_status("State:\tR\nTracerPid:\t12x\n", &st), KVS_EINVAL);
    CHECK_EQ(router_liveness_parse_status("State:\nTracerPid:\t0\n", &st), KVS_EINVAL);
    CHECK_EQ(router_liveness_parse_status("", &st), KVS_EINVAL);
}

/* ---- the verdict, with a stand-in for /proc -------------------------------------------- */

static router_proc_state_t fake_st;
static int fake_rc, fake_calls;

static int fake_inspect(pid_t pid, router_proc_state_t *out)
{
    (void)pid;
    fake_calls++;
    if (fake_rc == 0)
        *out = fake_st;
    return fake_rc;
}

static router_live_verdict_t judge(router_live_t *l, uint64_t now, router_proc_state_t *st)
{
    return router_liveness_judge(l, 100, now, 1000, fake_inspect, st);
}

KVS_TEST(judge_kills_a_silent_process_once)
{
    router_live_t l = {.beat_ms = 5000};
    router_proc_state_t st;
    fake_st = (router_proc_state_t){.state = 'T'};
    fake_rc = fake_calls = 0;
    CHECK_EQ(judge(&l, 5999, &st), ROUTER_LIVE_OK); /* within the timeout: /proc unread */
    CHECK_EQ(fake_calls, 0);
    CHECK_EQ(judge(&l, 6000, &st), ROUTER_LIVE_HUNG);
    CHECK_EQ(st.state, 'T');
    CHECK_EQ(l.killed, 100);
    CHECK_EQ(judge(&l, 9000, &st), ROUTER_LIVE_OK); /* killed already: waits for its exit */
    CHECK_EQ(fake_calls, 1);
    /* A clock reset (a heartbeat) ahead of a stale `now` is no silence. */
    l = (router_live_t){.beat_ms = 7000};
    CHECK_EQ(judge(&l, 6500, &st), ROUTER_LIVE_OK);
    /* A running process that does not beat (a busy loop) is hung too. */
    fake_st.state = 'R';
    CHECK_EQ(judge(&l, 8000, &st), ROUTER_LIVE_HUNG);
    /* /proc that cannot be read: its silence decides. */
    l = (router_live_t){0};
    fake_rc = -EACCES;
    CHECK_EQ(judge(&l, 1000, &st), ROUTER_LIVE_HUNG);
    CHECK_EQ(st.state, '?');
    char buf[16];
    CHECK_STR(router_liveness_state_name(st.state, buf, sizeof(buf)), "in a state unknown");
    CHECK_STR(router_liveness_state_name('T', buf, sizeof(buf)), "stopped by a signal");
    CHECK_STR(router_liveness_state_name('W', buf, sizeof(buf)), "in state W");
}

KVS_TEST(judge_spares_a_process_within_its_reload_grace)
{
    /* It said "reloading" at 5000 (grace to 5000 + 60 s): silent past the
     * timeout, it is not judged until the grace ends. */
    router_live_t l = {.beat_ms = 5000, .grace_until = 5000 + ROUTER_LIVENESS_RELOAD_GRACE_MS};
    router_proc_state_t st;
    fake_st = (router_proc_state_t){.state = 'R'};
    fake_rc = fake_calls = 0;
    CHECK_EQ(judge(&l, 6500, &st), ROUTER_LIVE_OK);
    CHECK_EQ(judge(&l, 5000 + ROUTER_LIVENESS_RELOAD_GRACE_MS - 1, &st), ROUTER_LIVE_OK);
    CHECK_EQ(fake_calls, 0);
    /* A reload that never ends is a hang like any other. */
    CHECK_EQ(judge(&l, 5000 + ROUTER_LIVENESS_RELOAD_GRACE_MS, &st), ROUTER_LIVE_HUNG);
    /* The line the process sends before it reads the file. */
    int sv[2];
    char buf[32];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    CHECK_EQ(router_liveness_reloading(sv[0]), 0);
    ssize_t n = read(sv[1], buf, sizeof(buf));
    CHECK_EQ(n, (ssize_t)strlen(ROUTER_LIVENESS_RELOADING "\n"));
    CHECK(memcmp(buf, ROUTER_LIVENESS_RELOADING "\n", (size_t)n) == 0);
    close(sv[0]);
    close(sv[1]);
}

KVS_TEST(judge_leaves_an_exiting_process)
{
    router_live_t l = {0};
    router_proc_state_t st;
    fake_rc = -ENOENT;
    CHECK_EQ(judge(&l, 2000, &st), ROUTER_LIVE_EXITING);
    fake_rc = 0;
    fake_st = (router_proc_state_t){.state = 'Z'};
    CHECK_EQ(judge(&l, 2000, &st), ROUTER_LIVE_EXITING);
    CHECK_EQ(l.killed, 0);
}

KVS_TEST(judge_spares_a_traced_process_and_waits_once_it_is_let_go)
{
    router_live_t l = {0};
    router_proc_state_t st;
    fake_rc = 0;
    fake_st = (router_proc_state_t){.state = 't', .tracer = 55};
    CHECK_EQ(judge(&l, 2000, &st), ROUTER_LIVE_TRACED_NEW);
    CHECK_EQ(st.tracer, 55);
    CHECK_EQ(judge(&l, 3000, &st), ROUTER_LIVE_TRACED); /* said once */
    CHECK_EQ(judge(&l, 60000, &st), ROUTER_LIVE_TRACED);
    CHECK_EQ(l.killed, 0);
    /* Let go (still stopped, say): a whole timeout from now first. */
    fake_st = (router_proc_state_t){.state = 'T'};
    CHECK_EQ(judge(&l, 61000, &st), ROUTER_LIVE_RELEASED);
    CHECK_EQ(l.beat_ms, 61000);
    CHECK_EQ(judge(&l, 61999, &st), ROUTER_LIVE_OK);
    CHECK_EQ(judge(&l, 62000, &st), ROUTER_LIVE_HUNG);
}

/* ---- real processes ------------------------------------------------------------------- */

static pid_t start_child(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        for (;;)
            pause();
    }
    CHECK(pid > 0);
    return pid;
}

/* Waits until `pid`'s state letter is `want` (at most 5 s). */
static int wait_state(pid_t pid, char want)
{
    router_proc_state_t st = {0};
    for (int i = 0; i < 500; i++) {
        if (router_liveness_inspect(pid, &st) == 0 && st.state == want)
            return 1;
        usleep(10000);
    }
    return 0;
}

KVS_TEST(inspect_real_processes)
{
    router_proc_state_t st;
    CHECK_EQ(router_liveness_inspect(getpid(), &st), 0);
    CHECK_EQ(st.state, 'R');
    CHECK_EQ(st.tracer, 0);
    /* Stopped by SIGSTOP, as an operator would: state T, no tracer, hung. */
    pid_t pid = start_child();
    CHECK_EQ(kill(pid, SIGSTOP), 0);
    CHECK(wait_state(pid, 'T'));
    router_live_t l = {0};
    CHECK_EQ(router_liveness_judge(&l, pid, 5000, 1000, router_liveness_inspect, &st),
             ROUTER_LIVE_HUNG);
    CHECK_EQ(st.state, 'T');
    /* Killed, not yet reaped: exiting; reaped: gone. */
    CHECK_EQ(kill(pid, SIGKILL), 0);
    CHECK(wait_state(pid, 'Z'));
    l = (router_live_t){0};
    CHECK_EQ(router_liveness_judge(&l, pid, 5000, 1000, router_liveness_inspect, &st),
             ROUTER_LIVE_EXITING);
    CHECK_EQ(waitpid(pid, NULL, 0), pid);
    CHECK_EQ(router_liveness_inspect(pid, &st), -ENOENT);
}

KVS_TEST(inspect_a_traced_process)
{
    pid_t pid = start_child();
    CHECK(wait_state(pid, 'S'));
    if (ptrace(PTRACE_SEIZE, pid, NULL, NULL) != 0) {
        /* A machine whose policy forbids tracing (seccomp, Yama level 3):
         * nothing of kvs to check here. */
        CHECK(errno == EPERM);
        fprintf(stderr, "inspect_a_traced_process: tracing is not allowed here; skipped\n");
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return;
    }
    router_proc_state_t st;
    CHECK_EQ(router_liveness_inspect(pid, &st), 0);
    CHECK_EQ(st.tracer, getpid());
    /* Stopped under the debugger: spared, said once. */
    CHECK_EQ(kill(pid, SIGSTOP), 0);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid); /* its signal-delivery stop */
    CHECK(WIFSTOPPED(status));
    router_live_t l = {0};
    CHECK_EQ(router_liveness_judge(&l, pid, 5000, 1000, router_liveness_inspect, &st),
             ROUTER_LIVE_TRACED_NEW);
    CHECK_EQ(st.tracer, getpid());
    CHECK_EQ(router_liveness_judge(&l, pid, 6000, 1000, router_liveness_inspect, &st),
             ROUTER_LIVE_TRACED);
    CHECK_EQ(l.killed, 0);
    /* Let go (its SIGSTOP dropped): a whole timeout before it is judged. */
    CHECK_EQ(ptrace(PTRACE_DETACH, pid, NULL, NULL), 0);
    CHECK_EQ(router_liveness_judge(&l, pid, 7000, 1000, router_liveness_inspect, &st),
             ROUTER_LIVE_RELEASED);
    CHECK_EQ(st.tracer, 0);
    CHECK_EQ(kill(pid, SIGKILL), 0);
    CHECK_EQ(waitpid(pid, NULL, 0), pid);
}

KVS_TEST_MAIN(KVS_CASE(interval_is_a_quarter_and_off_at_zero),
              KVS_CASE(beat_sends_one_line_and_never_blocks),
              KVS_CASE(parse_status_state_and_tracer), KVS_CASE(judge_kills_a_silent_process_once),
              KVS_CASE(judge_spares_a_process_within_its_reload_grace),
              KVS_CASE(judge_leaves_an_exiting_process),
              KVS_CASE(judge_spares_a_traced_process_and_waits_once_it_is_let_go),
              KVS_CASE(inspect_real_processes), KVS_CASE(inspect_a_traced_process))
