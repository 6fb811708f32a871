"""Several router processes per node (router.processes), end to end: the
master (kvs-router as started) supervises the kvs-node workers and N
router processes that share router.listen and router.resp_listen with
SO_REUSEPORT.

Which router process served a connection is read from the connection
itself: Info's router.process pair on the protobuf front door, CLIENT ID
on the Redis one (the router index sits above bit 47 of every id, see
router/router_procs.h). Every test runs real binaries on loopback and
takes a few seconds.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import redis

from kafkatest import MockKafka, ingest_yaml
from kvstest import BUILD_DIR, HOST, pb, pyval
from routertest import RouterTestCase, free_port, procs_for_config, router_pids

EX_CONFIG = 78
WAIT = 15.0


def wait_until(pred, timeout=WAIT, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    return pred()


def req_info():
    r = pb.CommandRequest()
    r.info.SetInParent()
    return r


def info_of(c):
    """{key: value} of an Info answer on Client c."""
    resp = c.call(req_info())
    assert resp.status == 200, resp.message
    return {p.key.decode(): pyval(p.value) for p in resp.pairs}


def resp_router_of(client_id):
    """The router index in a CLIENT ID (router_procs_id_base)."""
    return client_id >> 47


class ProcsTestCase(RouterTestCase):
    def node(self, processes=2, shards=2, resp=True, **kw):
        self.rport = free_port() if resp else None
        yaml = list(kw.pop("router_yaml", []))
        if resp:
            yaml.append('resp_listen: "%s:%d"' % (HOST, self.rport))
        r = self.router(shards=shards, partitions=16, processes=processes, router_yaml=yaml,
                        **kw)
        # The port answers once any router listens; the node is ready once all do.
        self.assertTrue(wait_until(lambda: "node ready" in r.stderr()), r.stderr())
        return r

    def conn_on(self, r, index, tries=200):
        """A protobuf Client that reached router process `index`."""
        for _ in range(tries):
            c = r.client()
            if info_of(c)["router.process"] == index:
                self.addCleanup(c.close)
                return c
            c.close()
        self.fail("no connection reached router %d in %d tries" % (index, tries))

    def redis_on(self, index, tries=200):
        """A redis-py client (one connection) that reached router process `index`."""
        for _ in range(tries):
            c = redis.Redis(host=HOST, port=self.rport, socket_timeout=10,
                            single_connection_client=True)
            if resp_router_of(c.client_id()) == index:
                self.addCleanup(c.close)
                return c
            c.close()
        self.fail("no Redis connection reached router %d in %d tries" % (index, tries))

    def exits_at_once(self, r, timeout=10):
        r.proc = r.spawn()
        try:
            rc = r.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail("kvs-router still running after %d s:\n%s" % (timeout, r.stderr()))
        return rc, r.stderr()


class ProcsTest(ProcsTestCase):
    def test_one_router_process_looks_like_a_single_router(self):
        r = self.node(processes=1)
        self.assertEqual(sorted(router_pids(r)), [0])
        with r.client() as c:
            self.assertFalse([k for k in info_of(c) if k.startswith("router.")])
        c = redis.Redis(host=HOST, port=self.rport, socket_timeout=10)
        self.addCleanup(c.close)
        self.assertEqual(c.client_id(), 1)
        self.assertEqual(r.stop(), 0)
        self.assertNotIn("router[", r.stderr())

    def test_stray_signals_stop_nothing(self):
        # SIGUSR1 (what log rotation sends a daemon), SIGALRM and, outside
        # router processes, SIGUSR2 killed a kvs process by default: the
        # master's death, without a log line, took the whole node down.
        r = self.node(resp=False)
        routers = list(router_pids(r).values())
        before = sorted([r.pid] + routers + list(r.workers().values()))
        for pid in before:
            for sig in (signal.SIGUSR1, signal.SIGALRM, signal.SIGUSR2):
                if sig != signal.SIGUSR2 or pid not in routers:
                    os.kill(pid, sig)
        time.sleep(1)
        self.assertIsNone(r.proc.poll(), r.stderr()[-3000:])
        after = sorted([r.pid] + list(router_pids(r).values()) + list(r.workers().values()))
        self.assertEqual(after, before, r.stderr()[-3000:])  # none died, none was restarted
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
        self.assertNotIn("killed by signal", r.stderr())

    def test_two_routers_serve_both_front_doors(self):
        r = self.node(log="{level: info, format: json}")
        self.assertEqual(sorted(router_pids(r)), [0, 1])
        master = r.pid
        for pid in router_pids(r).values():
            with open("/proc/%d/stat" % pid) as f:
                self.assertEqual(int(f.read().rsplit(")", 1)[1].split()[1]), master)
        # Connections spread over both routers, on both front doors.
        seen, clients = set(), []
        for _ in range(24):
            c = r.client()
            clients.append(c)
            info = info_of(c)
            self.assertEqual(info["router.processes"], 2)
            self.assertGreaterEqual(info["router.clients"], 1)
            seen.add(info["router.process"])
        self.assertEqual(seen, {0, 1})
        ids = []
        for _ in range(24):
            c = redis.Redis(host=HOST, port=self.rport, socket_timeout=10,
                            single_connection_client=True)
            self.addCleanup(c.close)
            ids.append(c.client_id())
        self.assertEqual({resp_router_of(i) for i in ids}, {0, 1})
        self.assertEqual(len(set(ids)), len(ids))  # unique in the node
        # What one router writes, another reads: the workers are shared.
        a, b = self.conn_on(r, 0), self.conn_on(r, 1)
        for i in range(20):
            self.assertOk(a.hset("t", "k%d" % i, "v%d" % i))
        for i in range(20):
            self.assertEqual(pyval(b.hget("t", "k%d" % i).values[0]), "v%d" % i)
        self.assertEqual(self.redis_on(0).hget("t", "k3"), b"v3")
        self.assertEqual(self.redis_on(1).hget("t", "k4"), b"v4")
        for c in clients:
            c.close()
        self.assertEqual(r.stop(), 0)
        # JSON logs: the router processes' lines carry their index.
        lines = [json.loads(x) for x in r.stderr().splitlines()]
        tagged = {(o["role"], o.get("router")) for o in lines if o["role"] == "router"}
        self.assertEqual(tagged, {("router", None), ("router", 0), ("router", 1)})
        ready = [o["message"] for o in lines if o.get("router") == 1 and "ready" in o["message"]]
        self.assertEqual(ready, ["router 1 of 2 ready: 2 shards (2 local)"])
        self.assertEqual(lines[-1]["message"], "stopped")
        self.assertNotIn("router", lines[-1])

    def test_killed_router_comes_back_and_the_node_keeps_serving(self):
        r = self.node()
        c0, c1 = self.conn_on(r, 0), self.conn_on(r, 1)
        rc1 = self.redis_on(1)
        victim = router_pids(r)[1]
        os.kill(victim, signal.SIGKILL)
        # Its clients lose their connections...
        self.assertTrue(c1.at_eof())
        with self.assertRaises(redis.ConnectionError):
            rc1.ping()
        # ...the other router's keep being served, and new connections all land.
        for i in range(10):
            self.assertOk(c0.hset("t", "k%d" % i, "v"))
        for _ in range(30):
            with r.client() as c:
                self.assertEqual(c.ping().status, 200)
        # The master restarts it (a new generation: new ids).
        self.assertTrue(wait_until(lambda: router_pids(r).get(1) not in (None, victim)),
                        r.stderr())
        self.assertTrue(wait_until(lambda: "router 1 accepts clients again" in r.stderr()),
                        r.stderr())
        again = self.conn_on(r, 1)
        self.assertEqual(pyval(again.hget("t", "k3").values[0]), "v")
        cid = self.redis_on(1).client_id()
        self.assertEqual((cid >> 40) & 0x7F, 1)  # generation 1
        log = r.stderr()
        self.assertRegex(log, r"router WARN  router 1 \(pid %d\) killed by signal SIGKILL" % victim)
        self.assertIn("restarting router 1 in 100 ms", log)
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone(5), procs_for_config(r.config))

    def test_restarts_run_the_build_the_node_started_with(self):
        # A package upgrade or a rebuild replaces the binaries under a
        # running node: a worker or router process restarted after that
        # must not run another build than the rest of the node. The master
        # holds its binaries open from the start and starts children from
        # them; here the files are replaced by a script that fails.
        bindir = tempfile.mkdtemp(prefix="kvs-bin-")
        self.addCleanup(shutil.rmtree, bindir, ignore_errors=True)
        for name in ("kvs-router", "kvs-node"):
            shutil.copy2(os.path.join(BUILD_DIR, name), bindir)
        r = self.router(shards=2, partitions=16, processes=2, start=False)
        r.exe = os.path.join(bindir, "kvs-router")
        r.start()
        self.assertTrue(wait_until(lambda: "node ready" in r.stderr()), r.stderr())
        keys = [b"k%d" % i for i in range(40)]
        with r.client() as c:
            for k in keys:
                self.assertEqual(c.hset("t", k, k).status, 200)
        for name in ("kvs-router", "kvs-node"):
            path = os.path.join(bindir, name)
            os.unlink(path)
            with open(path, "w") as f:
                f.write("#!/bin/sh\nexit 99\n")
            os.chmod(path, 0o755)
        old = r.kill_worker(0)
        new = r.wait_worker(0, not_pid=old)
        self.assertIsNotNone(new, r.stderr()[-3000:])
        victim = router_pids(r)[1]
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: router_pids(r).get(1) not in (None, victim)),
                        r.stderr()[-3000:])
        self.assertTrue(wait_until(lambda: "router 1 accepts clients again" in r.stderr()),
                        r.stderr()[-3000:])

        def serves():  # the new worker listens, and both router processes reach it again
            for _ in range(24):  # connections land on either router process (6 missed one 1 in 64)
                with r.client() as c:
                    if c.hmget("t", keys).status != 200:
                        return False
            return True
        self.assertTrue(wait_until(serves), r.stderr()[-3000:])
        self.assertEqual(os.readlink("/proc/%d/exe" % new),
                         os.path.join(bindir, "kvs-node") + " (deleted)")
        # Named as ever (top, pgrep, ps -C, core files), not after the
        # descriptor they were started through.
        with open("/proc/%d/comm" % new) as f:
            self.assertEqual(f.read(), "kvs-node\n")
        with open("/proc/%d/comm" % router_pids(r)[1]) as f:
            self.assertEqual(f.read(), "kvs-router\n")
        self.assertEqual(os.readlink("/proc/%d/exe" % router_pids(r)[1]),
                         os.path.join(bindir, "kvs-router") + " (deleted)")
        for _ in range(6):  # connections land on either router process
            with r.client() as c:
                got = c.hmget("t", keys)
                self.assertEqual(got.status, 200, got.message)
                self.assertEqual([pyval(v) for v in got.values], keys)
        self.assertNotIn("status 99", r.stderr())
        self.assertEqual(r.stop(), 0, r.stderr()[-3000:])

    def test_sigterm_drains_routers_then_workers(self):
        r = self.node(processes=3, shards=3)
        held = [self.conn_on(r, i) for i in range(3)]
        for c in held:
            self.assertOk(c.ping())
        r.proc.send_signal(signal.SIGTERM)
        self.assertEqual(r.proc.wait(WAIT), 0, r.stderr())
        for c in held:
            self.assertTrue(c.at_eof())
        self.assertTrue(r.wait_all_gone(5), procs_for_config(r.config))
        log = r.stderr().splitlines()

        def at(pattern):
            return next(i for i, line in enumerate(log) if re.search(pattern, line))

        first_worker_stop = at("stopping shard")
        for i in range(3):
            self.assertLess(at(r"router\[%d\] INFO  clients drained" % i), first_worker_stop)
            self.assertLess(at(r"router %d \(pid \d+\) exited with status 0" % i),
                            first_worker_stop)
        self.assertLess(at("router INFO  clients drained; stopping workers"), first_worker_stop)
        self.assertIn("router INFO  stopped", log[-1])

    def test_only_the_loop_thread_of_a_process_takes_reload_signals(self):
        # A shutdown gives SIGHUP its default action back for a moment
        # (libuv does when its last handle stops) before ignoring it: a
        # thread of libuv's pool that took one then killed the process.
        # Every thread but the loop's keeps the reload signals blocked
        # (kvs_signals_release starts the pool while they are held).
        mock = MockKafka({"users": 4})
        self.addCleanup(mock.close)
        r = self.node(processes=2, resp=False,
                      extra_yaml=ingest_yaml(mock.bootstrap, [("users", "users", "raw", 4)]))
        self.assertTrue(wait_until(lambda: r.stderr().count("kafka: consuming") == 2),
                        r.stderr()[-3000:])
        with r.client() as c:  # a request or two: the pools are running by now
            self.assertOk(c.hset("t", "k", "v"))
        for pid in procs_for_config(r.config):
            tasks = sorted(int(t) for t in os.listdir("/proc/%d/task" % pid))
            for tid in tasks[1:]:  # the first is the process's own (the loop's) thread
                with open("/proc/%d/task/%d/status" % (pid, tid)) as f:
                    blk = int(re.search(r"SigBlk:\s*([0-9a-f]+)", f.read()).group(1), 16)
                self.assertTrue(blk & (1 << (signal.SIGHUP - 1)),
                                "thread %d of pid %d (%s) may take SIGHUP"
                                % (tid, pid, procs_for_config(r.config).get(pid)))
            self.assertGreater(len(tasks), 1, "no pool thread in pid %d" % pid)
        self.assertEqual(r.stop(), 0)

    def test_sighup_during_the_shutdown_kills_no_process(self):
        # SIGHUPs (an operator's kill -HUP of every kvs process, say) keep
        # coming while the node stops. Each process ignores them once it
        # drains, but closing its loop's handles at the end gave SIGHUP its
        # default action back: a worker, a router process or the master
        # itself died by it ("killed by signal SIGHUP", the master's exit
        # status a signal, not 0). The workers ingest a topic, so they run
        # threads of libuv's pool too, which may take the signal. Three
        # stops, as the window is short.
        mock = MockKafka({"users": 16})
        self.addCleanup(mock.close)
        for attempt in range(3):
            r = self.node(processes=2, resp=False,
                          extra_yaml=ingest_yaml(mock.bootstrap, [("users", "users", "raw", 16)]))
            # Ingesting (its pool threads run) before the stop.
            self.assertTrue(wait_until(lambda: r.stderr().count("kafka: consuming") == 2),
                            r.stderr()[-3000:])
            pids = list(procs_for_config(r.config))
            self.assertEqual(len(pids), 5, pids)  # master, 2 routers, 2 workers
            r.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + WAIT
            while r.proc.poll() is None and time.monotonic() < deadline:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGHUP)
                    except OSError:
                        pass
                time.sleep(0.0005)
            self.assertEqual(r.proc.wait(WAIT), 0, r.stderr())
            self.assertNotIn("killed by signal SIGHUP", r.stderr())
            self.assertTrue(r.wait_all_gone(5), procs_for_config(r.config))

    def test_killed_master_leaves_no_process_and_the_lock_covers_routers(self):
        r = self.node(processes=2)
        routers = router_pids(r)
        # A router that cannot run yet (stopped) still holds the lock...
        os.kill(routers[0], signal.SIGSTOP)
        self.addCleanup(lambda: self._cont(routers[0]))
        r.proc.kill()
        r.proc.wait(5)
        # ...the other children die with the master...
        self.assertTrue(wait_until(lambda: set(procs_for_config(r.config)) == {routers[0]}, 10),
                        procs_for_config(r.config))
        # ...and a new node on the same data directory is refused meanwhile,
        # touching nothing there: a routerI.next (as a router process of a
        # membership change killed -9 leaves it) stays.
        stale = os.path.join(r.data_dir, "router1.next")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(stale)
        rc, log = self.exits_at_once(r)
        self.assertEqual(rc, 1, log)
        self.assertIn("another kvs-router is already running on data_dir", log)
        self.assertTrue(os.path.exists(stale))
        # Once it runs again, its pending SIGTERM (the master's death) ends it.
        os.kill(routers[0], signal.SIGCONT)
        self.assertTrue(r.wait_all_gone(10), procs_for_config(r.config))
        r.start()
        with r.client() as c:
            self.assertEqual(c.ping().status, 200)
        self.assertFalse(os.path.exists(stale), "a node that starts removes routerI.next")
        r.proc.kill()
        r.proc.wait(5)
        self.assertTrue(r.wait_all_gone(10), procs_for_config(r.config))

    def test_a_stopped_worker_of_a_killed_node_does_not_make_a_new_node_ready(self):
        """kill -9 of the master while a worker is stopped leaves that worker
        behind, still listening on shard-N.sock and holding the shard's lock.
        A new node's router process could connect to that socket, and it
        took the connection for its own worker answering: the node became
        ready while the shard's requests went to a process that answers
        nothing. It must see the socket is not its worker's and wait
        (router.ready_timeout bounds that) for the shard's own worker."""
        r = self.node(processes=1, resp=False, router_yaml=["ready_timeout: 3s"])
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
        shards = r.workers()
        orphan = shards[1]
        os.kill(orphan, signal.SIGSTOP)
        self.addCleanup(lambda: self._cont(orphan))
        r.proc.kill()
        r.proc.wait(5)
        self.assertTrue(wait_until(lambda: set(procs_for_config(r.config)) == {orphan}, 10),
                        procs_for_config(r.config))
        rc, log = self.exits_at_once(r, timeout=15)
        self.assertEqual(rc, 1, log)
        self.assertEqual(log.count("node ready"), 1, log)  # the first node's only
        self.assertIn("is served by pid %d, which this node did not start" % orphan, log)
        self.assertIn("did not come up within router.ready_timeout", log)
        # Once it runs, its pending SIGTERM (its master's death) ends it, and
        # the node starts with every write.
        os.kill(orphan, signal.SIGCONT)
        self.assertTrue(r.wait_all_gone(10), procs_for_config(r.config))
        r.start()
        self.assertTrue(wait_until(lambda: r.stderr().count("node ready") == 2), r.stderr())
        with r.client() as c:
            self.assertEqual(pyval(c.hget("t", "k").values[0]), "v")

    def test_a_node_in_a_pid_namespace_with_anothers_proc_becomes_ready(self):
        """The check that a worker's socket is served by a child of the
        master reads /proc/PID/stat for the pid the socket names. In a pid
        namespace whose /proc is not its own (unshare -p without a /proc
        mounted for it) that pid names another process: the check cannot
        tell, so it must not refuse the node's own workers."""
        if subprocess.run(["unshare", "-p", "-f", "--kill-child", "true"],
                          stderr=subprocess.DEVNULL).returncode != 0:
            self.skipTest("unshare -p not permitted here")
        r = self.router(start=False, shards=2, partitions=16, processes=1,
                        router_yaml=["ready_timeout: 5s"])
        log = open(r.log_path, "ab")
        try:
            r.proc = subprocess.Popen(["unshare", "-p", "-f", "--kill-child", r.exe, "--config",
                                       r.config], stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=log)
        finally:
            log.close()
        self.assertTrue(wait_until(lambda: "node ready" in r.stderr() or
                                   r.proc.poll() is not None, 10), r.stderr())
        self.assertNotIn("which this node did not start", r.stderr())
        self.assertIn("node ready", r.stderr())
        with r.client() as c:
            for i in range(8):  # both shards
                self.assertOk(c.hset("t", "k%d" % i, "v"))

    def test_router_process_whose_master_is_gone_does_not_start(self):
        """A router process checks its parent is the master that started it
        (--master), not whoever its parent was when it began: a master
        killed between fork and exec leaves it orphaned before main runs,
        and it must not serve on without one."""
        r = self.node(processes=1)
        exe = os.path.join(BUILD_DIR, "kvs-router")
        other = os.getppid()  # alive, and not this router process's parent
        p = subprocess.run([exe, "--config", r.config, "--processes", "1", "--master", str(other),
                            "--generation", "0", "--router", "0"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"the kvs-router master is gone; not starting", p.stderr)
        # Without --master a router process is a bad command line.
        p = subprocess.run([exe, "--config", r.config, "--processes", "1", "--generation", "0",
                            "--router", "0"], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=10)
        self.assertEqual(p.returncode, 2, p.stderr)
        # Workers likewise: the master names itself (--exit-with-parent=PID).
        p = subprocess.run([os.path.join(BUILD_DIR, "kvs-node"), "--config", r.config,
                            "--shard", "0", "--socket", os.path.join(r.dir, "other.sock"),
                            "--exit-with-parent=%d" % other],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"parent process is gone; not starting", p.stderr)
        argv = open("/proc/%d/cmdline" % r.workers()[0], "rb").read().split(b"\0")
        self.assertIn(b"--exit-with-parent=%d" % r.proc.pid, argv)

    @staticmethod
    def _cont(pid):
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass

    def test_sighup_reaches_every_router_and_worker(self):
        r = self.node(resp=False)
        before = dict(router_pids(r)), dict(r.workers())
        r.proc.send_signal(signal.SIGHUP)
        # Each router process and worker reloads the file itself (live
        # reload), then its TLS material.
        self.assertTrue(wait_until(lambda: all("router[%d] INFO  configuration reloaded from %s "
                                               "(nothing changed)" % (i, r.config) in r.stderr()
                                               for i in (0, 1))),
                        r.stderr())
        self.assertTrue(wait_until(lambda: all("node[%d] INFO  configuration reloaded from %s "
                                               "(nothing changed)" % (i, r.config) in r.stderr()
                                               for i in (0, 1))),
                        r.stderr())
        passed = "router INFO  SIGHUP: passed on to 2 router process(es) and 2 worker(s)"
        self.assertTrue(wait_until(lambda: passed in r.stderr()), r.stderr())
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
        self.assertEqual((router_pids(r), r.workers()), before)  # nobody died of it
        self.assertEqual(r.stop(), 0)

    def test_reloaded_config_reaches_a_restarted_router_process(self):
        """A live reload replaces the master's snapshot: a router process it
        restarts afterwards runs the reloaded config, not the start one."""
        r = self.node(resp=False, log="{level: info, slow_threshold: off}")
        with open(r.config) as f:
            text = f.read()
        with open(r.config, "w") as f:
            f.write(text.replace("slow_threshold: off", "slow_threshold: 0"))
        r.proc.send_signal(signal.SIGHUP)
        line = "configuration reloaded from %s (log.slow_threshold)" % r.config
        self.assertTrue(wait_until(lambda: r.stderr().count(line) == 5), r.stderr())
        with open(r.config, "w") as f:  # the file changes again, unreloaded
            f.write(text.replace("slow_threshold: off", "slow_threshold: 1h"))
        old = router_pids(r)[1]
        os.kill(old, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: router_pids(r).get(1, old) != old and
                                   "router 1 accepts clients again" in r.stderr()), r.stderr())
        c = self.conn_on(r, 1)
        self.assertOk(c.hset("t", "k", "v"))
        req = pb.CommandRequest()
        req.slowlog.count = 10
        resp = c.call(req)
        self.assertEqual(resp.status, 200, resp.message)
        self.assertIn("Hset", [e.command for e in resp.ops.slowlog])  # threshold 0, not off or 1h
        self.assertEqual(r.stop(), 0)

    def test_hscan_cursor_of_another_router_is_refused(self):
        r = self.node()
        a, b = self.redis_on(0), self.redis_on(1)
        # past 128 fields: HSCAN answers a smaller hash in one page, as Redis
        a.hset("big", mapping={"f%03d" % i: "v" for i in range(400)})
        cur, page = a.hscan("big", cursor=0, count=5)
        self.assertNotEqual(cur, 0)
        self.assertEqual(resp_router_of(cur), 0)
        with self.assertRaisesRegex(redis.ResponseError, "not handed out by this router process"):
            b.hscan("big", cursor=cur, count=5)
        # Router 1's own walk works, and router 0 can still go on with its cursor.
        got = dict(page)
        while cur != 0:
            cur, page = a.hscan("big", cursor=cur, count=5)
            got.update(page)
        self.assertEqual(len(got), 400)
        self.assertEqual(len(dict(b.hscan_iter("big", count=7))), 400)
        self.assertEqual(r.stop(), 0)

    def test_max_clients_is_split_between_routers(self):
        r = self.node(resp=False, extra_yaml="limits: {max_clients: 2}\n")
        accepted, refused = {}, 0
        for _ in range(60):
            c = r.client()
            self.addCleanup(c.close)
            c.sock.settimeout(0.3)  # a refused client is told at once, unasked
            try:
                resp = c.recv()
            except socket.timeout:
                c.sock.settimeout(10)
                info = info_of(c)
                i = info["router.process"]
                self.assertNotIn(i, accepted, "router %d took a second client" % i)
                accepted[i] = c
                continue
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("this router process's share of limits.max_clients over 2 router "
                          "processes", resp.message)
            refused += 1
            if len(accepted) == 2 and refused >= 3:
                break
        self.assertEqual(sorted(accepted), [0, 1])
        self.assertGreaterEqual(refused, 3)


    def test_private_socket_clients_take_no_front_door_slot(self):
        # kvs-cli and the master's scrape use a router process's private
        # socket: they are not counted against limits.max_clients.
        from kvstest import Client
        r = self.node(processes=1, resp=False, extra_yaml="limits: {max_clients: 1}\n")
        admin = []
        for _ in range(3):
            c = Client(os.path.join(r.data_dir, "router0.sock"))
            self.addCleanup(c.close)
            self.assertEqual(c.ping().status, 200)
            admin.append(c)
        c = r.client()
        self.addCleanup(c.close)
        c.sock.settimeout(10)
        self.assertEqual(c.ping().status, 200)  # the one front-door slot is free
        extra = r.client()
        self.addCleanup(extra.close)
        extra.sock.settimeout(10)
        resp = extra.recv()  # the second one is not: told at once, unasked
        self.assertEqual(resp.status, 503, resp.message)
        self.assertIn("limits.max_clients", resp.message)
        self.assertEqual(admin[0].ping().status, 200)

    def test_private_socket_has_its_own_cap(self):
        # The private socket takes no front-door slot, but it is capped on
        # its own (32 at once): a local tool opening thousands would take
        # the descriptors the links and the workers need.
        from kvstest import Client
        r = self.node(processes=1, resp=False, extra_yaml="limits: {max_clients: 1}\n")
        path = os.path.join(r.data_dir, "router0.sock")
        admin = []
        for _ in range(32):
            c = Client(path)
            self.addCleanup(c.close)
            c.sock.settimeout(10)
            self.assertEqual(c.ping().status, 200)
            admin.append(c)
        extra = Client(path)
        self.addCleanup(extra.close)
        extra.sock.settimeout(10)
        resp = extra.recv()  # told at once, unasked
        self.assertEqual(resp.status, 503, resp.message)
        self.assertIn("own socket", resp.message)
        front = r.client()  # the front door is not touched
        self.addCleanup(front.close)
        front.sock.settimeout(10)
        self.assertEqual(front.ping().status, 200)
        admin.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the router sees the close on its next turn
            again = Client(path)
            self.addCleanup(again.close)
            again.sock.settimeout(10)
            resp = again.ping()
            if resp.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(resp.status, 200, resp.message)
        self.assertIn("refusing clients of my own socket", r.stderr())

class ProcsMetricsTest(ProcsTestCase):
    """/metrics with several router processes: the master serves the port
    and asks every router process (its own socket) and every worker."""

    def test_metrics_aggregate_every_router_process_and_both_front_doors(self):
        from test_ops import http_get, parse_metrics, promtool_check, total
        mport = free_port()
        r = self.node(processes=2, router_yaml=['metrics_listen: "%s:%d"' % (HOST, mport)])
        c0 = self.conn_on(r, 0)
        for i in range(3):
            self.assertEqual(c0.hset("t", "a%d" % i, "v").status, 200)
        r1 = self.redis_on(1)
        for i in range(2):
            self.assertEqual(r1.hset("t", "b%d" % i, "v"), 1)

        def scraped():
            status, _, body = http_get(mport)
            m = parse_metrics(body) if status == 200 else []
            ok = total(m, "kvs_requests_total", command="Hset", router="1") == 2
            return ok and (m, body)
        got = wait_until(scraped)  # the RESP reply may precede its AFTER_SEND count
        self.assertTrue(got, http_get(mport)[2])
        m, body = got
        promtool_check(self, body)
        self.assertEqual(total(m, "kvs_requests_total", command="Hset", router="0"), 3)
        self.assertEqual(total(m, "kvs_requests_total", command="Hset", status="200"), 5)
        # Each worker is counted once, however many router processes there are.
        self.assertEqual(total(m, "kvs_worker_requests_total", command="Hset"), 5)
        for i in ("0", "1"):
            self.assertEqual(total(m, "kvs_metrics_source_up", router=i), 1)
            self.assertEqual(total(m, "kvs_router_up", router=i), 1)
            self.assertEqual(total(m, "kvs_metrics_source_up", shard=i), 1)
            self.assertGreater(total(m, "kvs_process_resident_memory_bytes", role="router",
                                     router=i), 0)
            self.assertEqual(total(m, "kvs_shard_link_up", router=i), 2)
        self.assertEqual(total(m, "kvs_client_connections_accepted_total", protocol="resp",
                               router="1"), 1)
        self.assertEqual(total(m, "kvs_router_restarts_total"), 0)
        # A router process's own socket answers for it alone with `own`.
        req = pb.CommandRequest()
        req.metrics.own = True
        from kvstest import Client
        with Client(os.path.join(r.data_dir, "router1.sock")) as c:
            resp = c.call(req)
        self.assertEqual(resp.status, 200, resp.message)
        names = {f.name for f in resp.ops.metrics}
        self.assertIn("kvs_requests_total", names)
        self.assertNotIn("kvs_worker_requests_total", names)
        routers = {dict(zip(s.labels[::2], s.labels[1::2])).get("router")
                   for f in resp.ops.metrics for s in f.samples}
        self.assertEqual(routers, {"1"})
        # A router process that dies is counted when it comes back.
        os.kill(router_pids(r)[1], signal.SIGKILL)
        self.assertTrue(wait_until(lambda: total(parse_metrics(http_get(mport)[2]),
                                                 "kvs_router_restarts_total", router="1") == 1
                                   and total(parse_metrics(http_get(mport)[2]),
                                             "kvs_metrics_source_up", router="1") == 1),
                        r.stderr())
        self.assertEqual(r.stop(), 0)


    def test_a_scrape_arriving_with_sigterm_leaves_the_master_idle_while_it_drains(self):
        # The master's scrape closed its flusher's check handle at shutdown
        # and left its idle handle to the loop's end: a scrape whose
        # requests were queued in the same poll as SIGTERM woke the idle
        # handle with no check left to stop it, and the master spun a core
        # for the whole drain (a connected client keeps it up to 10 s).
        # Stopping the master while both arrive puts them in one poll.
        from test_ops import http_get
        mport = free_port()
        r = self.node(processes=2, resp=False,
                      router_yaml=['metrics_listen: "%s:%d"' % (HOST, mport)])
        self.assertEqual(http_get(mport)[0], 200)  # the scrape's links are up
        client = r.client()  # keeps the router processes draining
        self.addCleanup(client.close)
        scraper = socket.create_connection((HOST, mport), timeout=10)
        self.addCleanup(scraper.close)
        master = r.proc.pid
        os.kill(master, signal.SIGSTOP)
        try:
            scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: kvs\r\n\r\n")
            time.sleep(0.1)
            os.kill(master, signal.SIGTERM)
            time.sleep(0.05)
        finally:
            os.kill(master, signal.SIGCONT)

        def cpu_s():
            with open("/proc/%d/stat" % master) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        time.sleep(0.2)
        c0 = cpu_s()
        time.sleep(1.0)
        used = cpu_s() - c0
        self.assertIsNone(r.proc.poll(), "the master should still be draining:\n" + r.stderr())
        self.assertLess(used, 0.3, "the master used %.2f s of CPU in 1 s of its drain" % used)
        client.close()
        self.assertEqual(r.proc.wait(20), 0, r.stderr())

class ProcsStartTest(ProcsTestCase):
    def on_port(self, port):
        """A two-router node, not started, whose router.listen is `port`."""
        r = self.router(start=False, shards=1, processes=2)
        with open(r.config) as f:
            text = f.read()
        with open(r.config, "w") as f:
            f.write(text.replace('listen: "%s:%d"' % (HOST, r.port), 'listen: "%s:%d"' % (HOST, port)))
        r.port = port
        return r

    def test_processes_values_are_checked_at_load(self):
        for value in ("0", "65", "99999999999", "two", "-1", "1.5"):
            r = self.router(start=False, shards=1, processes=value)
            rc, log = self.exits_at_once(r)
            self.assertEqual(rc, EX_CONFIG, log)
            self.assertRegex(log, r"config\.yaml:\d+:\d+: router\.processes must be auto or an "
                                  r"integer from 1 to 64 \(got \"%s\"\)" % value.replace(".", r"\."))
            self.assertEqual(procs_for_config(r.config), {})
            self.assertNotIn("started", log)
        r = self.router(shards=1, processes="auto")
        n = min(len(os.sched_getaffinity(0)), 8)
        self.assertEqual(len(router_pids(r)), n)
        with r.client() as c:  # Info names the routers when there are several
            self.assertEqual(info_of(c).get("router.processes", 1), n)
        self.assertEqual(r.stop(), 0)

    def test_port_held_without_reuseport_fails_the_start(self):
        port = free_port()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        s.bind((HOST, port))
        s.listen(1)
        r = self.on_port(port)
        rc, log = self.exits_at_once(r)
        self.assertEqual(rc, 1, log)
        # Found before any router process starts (the bind would fail too:
        # "cannot listen on ...: address already in use").
        self.assertIn("router.listen %s:%d is already listened on by a process that is not one "
                      "of this node's routers (a socket of uid %d, inode %d: another kvs node, or "
                      "another server, given the same port?)"
                      % (HOST, port, os.getuid(), os.fstat(s.fileno()).st_ino), log)
        self.assertNotIn("router 0 of", log)
        self.assertTrue(r.wait_all_gone(5), procs_for_config(r.config))

    def test_a_router_process_killed_during_the_start_is_restarted(self):
        """A router process killed (kill -9, the OOM killer) before the node
        is ready is restarted, as once serving, and the node starts; the
        test hook holds each process 2 s before it takes its sockets."""
        r = self.router(start=False, shards=2, processes=2,
                        env={"KVS_TEST_ROUTER_READY_DELAY_MS": "2000"})
        r.proc = r.spawn()
        self.assertTrue(wait_until(lambda: len(router_pids(r)) == 2 and
                                   "test hook: taking the sockets" in r.stderr(), 20),
                        r.stderr())
        killed = router_pids(r)[1]
        os.kill(killed, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: "node ready" in r.stderr(), 20), r.stderr()[-3000:])
        self.assertIsNone(r.proc.poll(), r.stderr()[-3000:])
        log = r.stderr()
        self.assertIn("router 1 was killed before the node was ready; the supervisor restarts "
                      "it", log)
        self.assertNotIn("could not start", log)
        self.assertLess(log.index("killed by signal SIGKILL"), log.index("node ready"))
        self.assertNotEqual(router_pids(r).get(1), killed)
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
            self.assertEqual(c.hget("t", "k").status, 200)

    def test_a_router_process_killed_each_time_it_starts_fails_the_start(self):
        """A router process killed every time it starts before the node is
        ready (a crash at start) fails the start after five kills, saying
        so, instead of waiting out router.ready_timeout (60 s here) and then
        blaming the local shards."""
        r = self.router(start=False, shards=2, processes=2, router_yaml=["ready_timeout: 60s"],
                        env={"KVS_TEST_ROUTER_READY_DELAY_MS": "500"})
        r.proc = r.spawn()
        killed, t0 = set(), time.monotonic()
        while r.proc.poll() is None and time.monotonic() - t0 < 30:
            pid = router_pids(r).get(1)
            if pid is not None and pid not in killed:
                try:
                    # SIGILL, not SIGSEGV: under ASan a SIGSEGV sent that
                    # early in the process's start can deadlock the
                    # sanitizer's own report (the process then hangs
                    # instead of dying); ASan leaves SIGILL alone.
                    os.kill(pid, signal.SIGILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        log = r.stderr()
        self.assertEqual(r.proc.poll(), 1, log[-3000:])
        self.assertLess(time.monotonic() - t0, 30, log[-3000:])
        self.assertEqual(len(killed), 5, log[-3000:])
        self.assertRegex(log, r"router ERROR stopped: router 1 was killed by a signal each of the "
                         r"5 times it started before the node was ready \(the last time: "
                         r"Illegal instruction\)")
        self.assertNotIn("did not come up", log)
        self.assertTrue(r.wait_all_gone(5), procs_for_config(r.config))

    def reuseport_listener(self, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((HOST, port))
        s.listen(1)
        return s

    def test_port_shared_with_another_reuseport_socket_fails_the_start(self):
        """Another process of this user listening with SO_REUSEPORT (a
        serving kvs node, say) is found before any router process starts:
        they joined the port first, took part of its new clients and
        answered them (writes acknowledged by a node that then stopped)."""
        port = free_port()
        s = self.reuseport_listener(port)
        r = self.on_port(port)
        rc, log = self.exits_at_once(r)
        self.assertEqual(rc, 1, log)
        self.assertIn("router.listen %s:%d is already listened on by a process that is not one "
                      "of this node's routers (a socket of uid %d, inode %d"
                      % (HOST, port, os.getuid(), os.fstat(s.fileno()).st_ino), log)
        self.assertNotIn("accepting clients", log)
        self.assertNotIn("router 0 of", log)  # no router process was started
        self.assertTrue(r.wait_all_gone(5), procs_for_config(r.config))

    def test_an_ipv6_only_listener_on_the_port_does_not_stop_an_ipv4_node(self):
        """[::]:P with IPV6_V6ONLY takes no IPv4 connection, and the kernel
        lets 127.0.0.1:P bind beside it: the check took every IPv6 wildcard
        for dual-stack and refused the start."""
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        port = free_port()
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind(("::", port))
        except OSError as e:
            self.skipTest("cannot bind [::]: %s" % e)
        s.listen(1)
        r = self.on_port(port)
        r.start()
        with r.client() as c:
            self.assertEqual(c.ping().status, 200)
        self.assertEqual(r.stop(), 0)

    def test_port_shared_once_the_routers_listen_fails_the_start(self):
        # A socket that joins the port after the first check, while the
        # router processes start (two nodes started at once), is found
        # once they listen.
        port = free_port()
        r = self.on_port(port)
        r.env = dict(r.env or {}, KVS_TEST_ROUTER_READY_DELAY_MS="1000")
        r.proc = r.spawn()
        self.assertTrue(wait_until(lambda: "taking the sockets in" in r.stderr(), 10),
                        r.stderr())
        s = self.reuseport_listener(port)
        rc = r.proc.wait(15)
        log = r.stderr()
        self.assertEqual(rc, 1, log)
        self.assertIn("router.listen %s:%d is shared with a process that is not one of this "
                      "node's routers (a socket of uid %d, inode %d"
                      % (HOST, port, os.getuid(), os.fstat(s.fileno()).st_ino), log)
        self.assertNotIn("node ready", log)
        self.assertIn("stopped: router.listen is shared with another process", log)
        self.assertTrue(r.wait_all_gone(5), procs_for_config(r.config))


if __name__ == "__main__":
    import unittest
    unittest.main()
