"""router.liveness_timeout: a router process that hangs does not keep its
share of new connections.

A hung router process keeps its listening sockets (SO_REUSEPORT), so the
kernel keeps handing it its share of new connections, whose clients wait.
Each serving router process sends the master a heartbeat from its loop;
the master kills (SIGKILL) one silent for the timeout and restarts it like
one that crashed. Covered: a router process stopped with SIGSTOP is
replaced within the timeout and every new connection is answered after;
the same with a single router process; one held by a debugger (ptrace) is
spared, and serves on once let go; a master that itself stalled kills
nobody; 0 turns the check off, and a reload turns it on. Real binaries on loopback; every wait is bounded.
"""
import ctypes
import os
import re
import signal
import time

from kvstest import HOST, Client
from routertest import _alive, edit_config, free_port, router_pids
from test_ops import http_get, parse_metrics, total
from test_procs import ProcsTestCase, wait_until

WAIT = 15.0
# router.liveness_timeout of these tests: 2 s, so that a router process
# starved of CPU on a loaded machine (the suite runs two jobs at once, a
# sanitized build's loop is slower) is not taken for a hung one
TIMEOUT_S = 2.0

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000  # waitpid's __WALL

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def ptrace(request, pid):
    if _libc.ptrace(request, pid, None, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "ptrace(%#x, %d): %s" % (request, pid, os.strerror(err)))


def gone(pid):
    """True once pid is no process (or a zombie nobody reaped yet)."""
    return not _alive(pid)


class LivenessTest(ProcsTestCase):
    def live_node(self, processes=2, timeout="%dms" % (TIMEOUT_S * 1000), env=None):
        self.mport = free_port()
        return self.node(processes=processes, resp=False, env=env,
                         router_yaml=["liveness_timeout: %s" % timeout,
                                      'metrics_listen: "%s:%d"' % (HOST, self.mport)])

    def metrics(self):
        status, _, body = http_get(self.mport)
        self.assertEqual(status, 200, body)
        return parse_metrics(body)

    def replaced(self, r, index, old, timeout=WAIT):
        """The pid of router `index` once it is no longer `old` and listens again."""
        def new():
            pid = router_pids(r).get(index)
            return pid if pid not in (None, old) else None
        pid = wait_until(new, timeout)
        self.assertTrue(pid, r.stderr()[-3000:])
        return pid

    def assertEveryConnectionAnswered(self, r, n=40):
        for i in range(n):
            started = time.monotonic()
            with Client(r.addr, timeout=2.0) as c:
                resp = c.ping()
            self.assertEqual(resp.status, 200, "connection %d: %s" % (i, resp.message))
            self.assertLess(time.monotonic() - started, 2.0, "connection %d" % i)

    def test_stopped_router_process_is_killed_and_replaced(self):
        r = self.live_node()
        before = router_pids(r)
        victim = before[1]
        started = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        self.addCleanup(lambda: gone(victim) or os.kill(victim, signal.SIGCONT))
        new = self.replaced(r, 1, victim, 10)
        took = time.monotonic() - started
        # Not before its timeout; within it, a check interval and a restart.
        self.assertGreaterEqual(took, TIMEOUT_S * 0.9)
        self.assertLess(took, 8.0)
        self.assertTrue(wait_until(lambda: gone(victim), 5), "pid %d still there" % victim)
        log = r.stderr()
        lines = [l for l in log.splitlines()
                 if "router 1 (pid %d) sent no heartbeat" % victim in l]
        self.assertEqual(len(lines), 1, log[-3000:])
        self.assertIn("ERROR", lines[0])
        self.assertRegex(lines[0], r"sent no heartbeat for \d+ ms \(router.liveness_timeout "
                                   r"%d ms; it is stopped by a signal\)" % (TIMEOUT_S * 1000))
        self.assertIn("killing it (SIGKILL)", lines[0])
        self.assertIn("router 1 (pid %d) killed by signal SIGKILL" % victim, log)
        self.assertTrue(wait_until(lambda: "router 1 accepts clients again" in r.stderr()),
                        r.stderr()[-3000:])
        # Every new connection is answered: none lands on a stopped process.
        self.assertEveryConnectionAnswered(r)
        self.assertEqual(router_pids(r), {0: before[0], 1: new})
        m = self.metrics()
        self.assertEqual(total(m, "kvs_router_liveness_kills_total", router="1"), 1)
        self.assertEqual(total(m, "kvs_router_liveness_kills_total", router="0"), 0)
        self.assertEqual(total(m, "kvs_router_restarts_total", router="1"), 1)
        self.assertLess(total(m, "kvs_router_heartbeat_age_seconds", router="1"), TIMEOUT_S)
        # The routers that serve keep serving: nobody else was killed.
        self.assertEqual(len(re.findall("sent no heartbeat", r.stderr())), 1)
        self.assertEqual(r.stop(), 0)

    def test_a_single_stopped_router_process_is_replaced(self):
        r = self.live_node(processes=1)
        victim = router_pids(r)[0]
        os.kill(victim, signal.SIGSTOP)
        self.addCleanup(lambda: gone(victim) or os.kill(victim, signal.SIGCONT))
        self.replaced(r, 0, victim, 10)
        self.assertTrue(wait_until(lambda: "router 0 accepts clients again" in r.stderr()),
                        r.stderr()[-3000:])
        self.assertIn("router 0 (pid %d) sent no heartbeat" % victim, r.stderr())
        self.assertEveryConnectionAnswered(r, 10)
        self.assertEqual(r.stop(), 0)

    def test_router_process_held_by_a_debugger_is_not_killed(self):
        r = self.live_node()
        pid = router_pids(r)[1]
        # A debugger halts its main thread (its event loop) as a breakpoint would.
        try:
            ptrace(PTRACE_SEIZE, pid)
        except PermissionError as e:  # no CAP_SYS_PTRACE here (a locked-down container)
            self.skipTest("this machine does not let a test trace a process: %s" % e)
        attached = [True]

        def detach():
            if attached[0]:
                attached[0] = False
                try:
                    ptrace(PTRACE_DETACH, pid)
                except OSError:
                    pass
        self.addCleanup(detach)
        ptrace(PTRACE_INTERRUPT, pid)
        waited, status = os.waitpid(pid, WALL)
        self.assertEqual(waited, pid)
        self.assertTrue(os.WIFSTOPPED(status))
        warning = "router 1 (pid %d) sent no heartbeat for" % pid
        self.assertTrue(wait_until(lambda: warning in r.stderr(), 10), r.stderr()[-3000:])
        # Two more timeouts (eight more checks, each of which would warn
        # again or kill): warned once, never killed.
        time.sleep(2 * TIMEOUT_S)
        log = r.stderr()
        lines = [l for l in log.splitlines() if warning in l]
        self.assertEqual(len(lines), 1, log[-3000:])
        self.assertIn("WARN", lines[0])
        self.assertIn("but a debugger (pid %d) traces it: not killing it" % os.getpid(), lines[0])
        self.assertNotIn("SIGKILL", log)
        self.assertEqual(router_pids(r).get(1), pid)
        # Let go, it beats again and serves on (the same process). Released,
        # it gets a whole timeout from the first check after: one that did
        # not beat again would be killed within a timeout and a check
        # interval (2.5 s); two timeouts leave a margin.
        detach()
        time.sleep(2 * TIMEOUT_S)
        self.assertEqual(router_pids(r).get(1), pid)
        self.assertNotIn("SIGKILL", r.stderr())
        with Client(os.path.join(r.data_dir, "router1.sock"), timeout=2.0) as c:
            self.assertEqual(c.ping().status, 200)
        m = self.metrics()
        self.assertEqual(total(m, "kvs_router_liveness_kills_total"), 0)
        self.assertLess(total(m, "kvs_router_heartbeat_age_seconds", router="1"), TIMEOUT_S)
        self.assertEqual(r.stop(), 0)

    def test_a_stalled_master_kills_nobody(self):
        """Heartbeats sent while the master itself did not run wait unread
        in its pipes; once it runs again its check comes first in the
        loop's turn. It restarts every clock instead of killing them all."""
        r = self.live_node()
        before = router_pids(r)
        # Stalled for twice the timeout: every clock is past it when the
        # master runs again.
        os.kill(r.pid, signal.SIGSTOP)
        try:
            time.sleep(2 * TIMEOUT_S)
        finally:
            os.kill(r.pid, signal.SIGCONT)
        self.assertTrue(wait_until(lambda: "the master's liveness check ran" in r.stderr(), 10),
                        r.stderr()[-3000:])
        # A clock that did not start again would be judged at the next
        # check (0.5 s); a timeout and a half covers a whole timeout since.
        time.sleep(1.5 * TIMEOUT_S)
        self.assertNotIn("sent no heartbeat", r.stderr())
        self.assertEqual(router_pids(r), before)
        self.assertEveryConnectionAnswered(r, 10)
        self.assertEqual(r.stop(), 0)

    def test_a_reload_longer_than_the_timeout_kills_nobody(self):
        # A reload may keep a router process's loop busy longer than the
        # timeout (a config file of many MiB): each says so first and is
        # not judged until it beats again. Here every reload reads its file
        # for twice the timeout (a test hook).
        r = self.live_node(env={"KVS_TEST_ROUTER_RELOAD_DELAY_MS": "%d" % (2 * TIMEOUT_S * 1000)})
        before = router_pids(r)
        took = re.compile(r"router\[[01]\] INFO +configuration reloaded from ")
        for n in (2, 4):
            r.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_until(lambda: len(took.findall(r.stderr())) == n, WAIT),
                            r.stderr()[-3000:])
        self.assertNotIn("sent no heartbeat", r.stderr())
        self.assertEqual(router_pids(r), before)
        self.assertEveryConnectionAnswered(r, 10)
        # The grace ends with the beat after the reload: a process that hangs
        # afterwards is replaced within the timeout, not a minute later.
        victim = before[1]
        started = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        self.addCleanup(lambda: gone(victim) or os.kill(victim, signal.SIGCONT))
        self.replaced(r, 1, victim, 10)
        self.assertLess(time.monotonic() - started, 8.0)
        self.assertIn("router 1 (pid %d) sent no heartbeat" % victim, r.stderr())
        self.assertEqual(r.stop(), 0)

    def test_zero_is_off_and_a_reload_turns_it_on(self):
        r = self.live_node(timeout="0")
        victim = router_pids(r)[1]
        os.kill(victim, signal.SIGSTOP)
        self.addCleanup(lambda: gone(victim) or os.kill(victim, signal.SIGCONT))
        # Off, nothing checks: at any timeout up to this one and a half, a
        # check would have killed it by now.
        time.sleep(1.5 * TIMEOUT_S)
        self.assertEqual(router_pids(r).get(1), victim)
        self.assertNotIn("sent no heartbeat", r.stderr())
        os.kill(victim, signal.SIGCONT)
        # Live: the master and both router processes take the new timeout.
        edit_config(r, "liveness_timeout: 0", "liveness_timeout: %dms" % (TIMEOUT_S * 1000))
        r.proc.send_signal(signal.SIGHUP)
        took = re.compile(r"router\[[01]\] INFO +configuration reloaded from .*"
                          r"\(router\.liveness_timeout\)")
        self.assertTrue(wait_until(lambda: len(took.findall(r.stderr())) == 2),
                        r.stderr()[-3000:])
        os.kill(victim, signal.SIGSTOP)
        self.replaced(r, 1, victim, 10)
        self.assertIn("router 1 (pid %d) sent no heartbeat" % victim, r.stderr())
        self.assertTrue(wait_until(lambda: "router 1 accepts clients again" in r.stderr()),
                        r.stderr()[-3000:])
        self.assertEveryConnectionAnswered(r, 10)
        self.assertEqual(r.stop(), 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
