/*
 * kvs_signals: the reload signals of a process whose libuv loop handles
 * them (SIGHUP everywhere, SIGUSR2 in router processes). Their default
 * action kills the process, so:
 *  - main() holds them (blocked) until the loop's uv_signal handlers
 *    exist, then releases them: a reload that came while the process
 *    started is neither fatal nor lost, it is taken then (libuv resets the
 *    disposition and the mask in the processes it spawns); libuv's thread
 *    pool is started before the release, so its threads keep them blocked
 *    for good and only the loop's thread ever takes them;
 *  - a shutdown ignores them for good: closing the loop's handles gives a
 *    signal its default action back (libuv does when its last handle
 *    closes), and threads of libuv's pool may take a signal the loop's
 *    thread blocks.
 */
#ifndef KVS_SIGNALS_H
#define KVS_SIGNALS_H

#include <signal.h>
#include <uv.h>

/* Signals a kvs process has no use for whose default action kills it:
 * ignored, so that a stray one (a log rotation's SIGUSR1: kvs logs to
 * stderr, there is nothing to reopen) cannot stop a node. SIGUSR2 too when
 * `usr2` (router processes handle it). Each process sets its own: libuv
 * resets dispositions in the processes it spawns. */
static inline void kvs_signals_ignore_stray(int usr2)
{
    signal(SIGUSR1, SIG_IGN);
    signal(SIGALRM, SIG_IGN);
    if (usr2)
        signal(SIGUSR2, SIG_IGN);
}

/* Blocks (hold != 0) or unblocks `sig` and `sig2` (0: none) in the
 * calling thread. */
static inline void kvs_signals_hold(int hold, int sig, int sig2)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    if (sig2 != 0)
        sigaddset(&set, sig2);
    sigprocmask(hold ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

static inline void kvs_signals_pool_noop(uv_work_t *w)
{
    (void)w;
}

static inline void kvs_signals_pool_started(uv_work_t *w, int status)
{
    (void)w;
    (void)status;
}

/* Releases `sig` and `sig2` (0: none), held since main() began, once the
 * loop's uv_signal handlers exist. It first starts libuv's thread pool
 * (one no-op work): the pool's threads inherit this thread's signal mask,
 * so they never take these signals. A pool started later, with them
 * unblocked, could take one in the shutdown's window where libuv has
 * given the signal its default action back (kvs_signals_ignore), and the
 * process died of it (seen: a worker killed by a SIGHUP while it
 * drained). Call it once per process. */
static inline void kvs_signals_release(uv_loop_t *loop, int sig, int sig2)
{
    static uv_work_t start;
    uv_queue_work(loop, &start, kvs_signals_pool_noop, kvs_signals_pool_started);
    kvs_signals_hold(0, sig, sig2);
}

/* The shutdown: `sig` changes nothing any more and never kills. Stops its
 * handle `h` (NULL: none) and ignores it for the rest of the process's
 * life (blocked in this thread meanwhile). */
static inline void kvs_signals_ignore(uv_signal_t *h, int sig)
{
    kvs_signals_hold(1, sig, 0);
    if (h != NULL)
        uv_signal_stop(h);
    signal(sig, SIG_IGN);
}

#endif
