/*
 * router_master_live: the master's liveness check of its router processes
 * (router.liveness_timeout; router_liveness.h judges): a router process
 * that hangs keeps its listening sockets, and with them its share of new
 * connections, whose clients wait. Each one that listens sends a
 * heartbeat line on its notify pipe every quarter of the timeout, from its
 * loop. The master checks the serving generation every quarter of the
 * timeout, once the node is ready and until its shutdown: a process that
 * listens and was not heard from (a heartbeat, or its "listening" line,
 * which starts its clock) for the timeout is logged (one ERROR line, its
 * pid and silence), killed with SIGKILL, and restarted like a router
 * process that crashed (same backoff and crash-loop rule; counted in
 * kvs_router_liveness_kills_total). Not checked: one that starts (before
 * "listening"), a membership change's new generation before the switch
 * (router.ready_timeout bounds it) and the draining old one
 * (ROUTER_GRACE_MS), everyone during the shutdown. A stopped process
 * (SIGSTOP: state T) holds its share like a hung one and is killed too;
 * one that a debugger traces (TracerPid) is not: a warning, once, then it
 * gets a whole timeout once the debugger lets go. A master that itself
 * did not run for two check intervals (stopped, starved) has heartbeats
 * waiting unread in the pipes: it restarts every clock instead of judging
 * anyone. A reload may change the timeout: every clock restarts and nobody
 * is killed for LIVE_RELOAD_QUIET_MS, the time the router processes need
 * to take the SIGHUP and beat at the new interval. Any reload may keep a
 * router process's loop busy (a config file of up to 64 MiB to read and
 * check): each says so before ("reloading") and beats once done; in
 * between it is not judged, for ROUTER_LIVENESS_RELOAD_GRACE_MS at most.
 */
#include "router_master_int.h"

#include "kvs_log.h"

#include <signal.h>

/* g's processes were all heard from `now`: their clocks start again. */
static void gen_live_reset(const master_t *m, rgen_t *g, uint64_t now)
{
    for (uint32_t i = 0; g != NULL && i < m->n_procs; i++)
        g->live[i].beat_ms = now;
}

static void live_reset_all(master_t *m, uint64_t now)
{
    gen_live_reset(m, m->routers, now);
    gen_live_reset(m, m->next, now);
    gen_live_reset(m, m->old, now);
}

/* Router process `i` of g said something (a heartbeat, "listening") or
 * started: its clock starts again. */
void router_master_live_heard(master_t *m, rgen_t *g, uint32_t i)
{
    g->live[i].beat_ms = uv_now(m->loop);
    g->live[i].grace_until = 0;
}

void router_master_live_reloading(master_t *m, rgen_t *g, uint32_t i)
{
    uint64_t now = uv_now(m->loop);
    g->live[i].beat_ms = now;
    g->live[i].grace_until = now + ROUTER_LIVENESS_RELOAD_GRACE_MS;
}

/* Router process i of the serving generation, if it sent nothing for
 * router.liveness_timeout: unless it is exiting already or a debugger
 * holds it, it is killed, and restarted as any router process that dies
 * (on_router_event, with the supervisor's backoff). */
static void live_check(master_t *m, rgen_t *g, uint32_t i, uint64_t now)
{
    router_live_t *l = &g->live[i];
    pid_t pid = router_sup_pid(g->sup, i);
    uint64_t silent = now - l->beat_ms;
    router_proc_state_t st;
    char buf[16];
    if (!g->listening[i] || pid == 0)
        return;
    switch (router_liveness_judge(l, pid, now, m->live_timeout_ms, router_liveness_inspect, &st)) {
    case ROUTER_LIVE_TRACED_NEW:
        kvs_warn("router %u (pid %d) sent no heartbeat for %llu ms, but a debugger (pid %d) "
                 "traces it: not killing it while it is traced",
                 i, (int)pid, (unsigned long long)silent, (int)st.tracer);
        break;
    case ROUTER_LIVE_HUNG:
        kvs_error("router %u (pid %d) sent no heartbeat for %llu ms (router.liveness_timeout %llu "
                  "ms; it is %s) and would keep its share of new connections unserved: killing "
                  "it (SIGKILL) to start another",
                  i, (int)pid, (unsigned long long)silent, (unsigned long long)m->live_timeout_ms,
                  router_liveness_state_name(st.state, buf, sizeof(buf)));
        m->router_hung[i]++;
        router_sup_signal_one(g->sup, i, SIGKILL); /* UV_ESRCH: it exited meanwhile */
        break;
    default:
        break;
    }
}

static void on_live_tick(uv_timer_t *t)
{
    master_t *m = t->data;
    uint64_t now = uv_now(m->loop);
    uint64_t gap = now - m->live_tick_ms;
    m->live_tick_ms = now;
    uint64_t every = router_liveness_interval_ms(m->live_timeout_ms);
    if (gap > 2 * every) {
        /* The master itself did not run (stopped, starved): heartbeats
         * sent meanwhile still wait in the pipes, read after this timer
         * in the loop's turn. Nobody is judged by that silence. */
        kvs_warn("the master's liveness check ran %llu ms after the previous one (due every "
                 "%llu ms: the master itself did not run); the router processes' clocks start "
                 "again",
                 (unsigned long long)gap, (unsigned long long)every);
        live_reset_all(m, now);
        return;
    }
    /* Only the serving generation: a starting one has ready_timeout, a
     * draining one its grace period; nobody before the node is ready. */
    rgen_t *g = m->routers;
    if (!m->ready || m->shutting_down || g == NULL || g->stopping || now < m->live_quiet_until)
        return;
    for (uint32_t i = 0; i < m->n_procs; i++)
        live_check(m, g, i, now);
}

/* Runs the check with the router.liveness_timeout m->cfg holds now (at
 * start, after a reload or a membership change took one). A new value
 * restarts every clock, and nobody is killed for LIVE_RELOAD_QUIET_MS:
 * the router processes beat at the new interval only once they took the
 * reload (a young one gets its SIGHUP up to 1 s late, router_supervisor),
 * and beat at once when they do. Not the previous timeout: from 1 h to
 * 1 s, that would leave the check off for an hour; a process that did
 * not take the reload and beats at the old interval is restarted on the
 * new config, which is what it should run anyway. */
#define LIVE_RELOAD_QUIET_MS 3000

void router_master_live_configure(master_t *m)
{
    uint64_t timeout = m->cfg->router_liveness_timeout_ms, prev = m->live_timeout_ms;
    if (timeout == prev)
        return;
    uint64_t now = uv_now(m->loop);
    m->live_timeout_ms = timeout;
    m->live_tick_ms = now;
    m->live_quiet_until = now + LIVE_RELOAD_QUIET_MS;
    live_reset_all(m, now);
    uint64_t every = router_liveness_interval_ms(timeout);
    if (every == 0)
        uv_timer_stop(&m->live_timer);
    else
        uv_timer_start(&m->live_timer, on_live_tick, every, every);
}
