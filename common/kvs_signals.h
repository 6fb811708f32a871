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

/* A reload signal whose deliveries all ask for the same work (SIGHUP:
 * read the config again). Each delivery (re)starts a zero timer whose run
 * does the work, so deliveries that come together make one run, not one
 * each. That matters while the work runs: reading a large config blocks
 * the loop for a while, and the signals sent meanwhile are delivered
 * together once it returns; they make one more run (the file may have
 * changed after the read began), where each used to make its own and a
 * burst of SIGHUPs kept the loop busy for as many reloads. */
typedef struct kvs_reload_sig_s {
    uv_signal_t sig;
    uv_timer_t run;
    void (*fn)(void *arg);
    void *arg;
} kvs_reload_sig_t;

static inline void kvs_reload_sig_run(uv_timer_t *t)
{
    kvs_reload_sig_t *h = t->data;
    h->fn(h->arg);
}

static inline void kvs_reload_sig_delivered(uv_signal_t *s, int signum)
{
    kvs_reload_sig_t *h = s->data;
    (void)signum;
    uv_timer_start(&h->run, kvs_reload_sig_run, 0, 0);
}

/* Handles `sig` on `loop`: fn(arg) runs once for each batch of deliveries. */
static inline void kvs_reload_sig_start(uv_loop_t *loop, kvs_reload_sig_t *h, int sig,
                                        void (*fn)(void *), void *arg)
{
    h->fn = fn;
    h->arg = arg;
    uv_signal_init(loop, &h->sig);
    uv_timer_init(loop, &h->run);
    h->sig.data = h->run.data = h;
    uv_signal_start(&h->sig, kvs_reload_sig_delivered, sig);
}

/* The shutdown: a run not yet made is dropped, and `sig` is ignored for
 * good (kvs_signals_ignore). */
static inline void kvs_reload_sig_stop(kvs_reload_sig_t *h, int sig)
{
    kvs_signals_ignore(&h->sig, sig);
    uv_timer_stop(&h->run);
}

#endif
