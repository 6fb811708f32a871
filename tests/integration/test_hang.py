"""Every peer can hang: operations of a node while one of its processes,
or a peer it talks to, is stopped dead (SIGSTOP), and after it runs again
(SIGCONT).

Covered: a Prometheus scrape of /metrics and the Metrics command with a
worker and a router process stopped (bounded by router.timeout, the one
that hung named, the others' metrics there); Info and the slow log with a
stopped worker; a live reload (SIGHUP) with a stopped worker; shutdown
(SIGTERM) with a stopped worker and router process; a snapshot bootstrap
whose sender stops mid-stream (the receiver gives up, the sender serves
again once it runs); kvs-cli digest and rebuild against a node whose
worker, or whose every process, is stopped. Every test continues what it
stopped, bounds every wait, and kills every process at cleanup.
"""
import contextlib
import os
import signal
import subprocess
import sys
import time
import unittest

from kafkatest import wait_until
from kvstest import BUILD_DIR, HOST, Client, Node, pb, req_hget, req_hset, req_ping
from routertest import RouterTestCase, edit_config, free_port, keys_by_shard, procs_for_config
from test_hostile_peers import Worker
from test_ops import http_get, metrics_req, parse_metrics, slowlog_req, total
from test_replicas import TABLE, ReplicaFixtures

CLI = os.path.join(BUILD_DIR, "kvs-cli")
WAIT = 15.0


@contextlib.contextmanager
def stopped(*pids):
    """The processes are SIGSTOPped for the block (and always continued)."""
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)


def timed(fn, *args, **kw):
    t = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t


def info_req():
    req = pb.CommandRequest()
    req.info.SetInParent()
    return req


def router_procs(r):
    """{index: pid} of r's router processes."""
    out = {}
    for pid, argv in procs_for_config(r.config).items():
        if "--router" in argv:
            out[int(argv[argv.index("--router") + 1])] = pid
    return out


class HungProcessTest(RouterTestCase):
    """One node, two shards, two router processes, router.timeout 1 s."""

    def node(self, **kw):
        self.mport = free_port()
        r = self.router(shards=2, partitions=8, timeout="1s", processes=2,
                        router_yaml=['metrics_listen: "%s:%d"' % (HOST, self.mport)], **kw)
        self.keys = keys_by_shard("k", 2, 8, 2)
        # Router 0's own socket: the client port's connections could land on
        # the stopped router process (the kernel spreads them, SO_REUSEPORT).
        self.sock0 = os.path.join(r.data_dir, "router0.sock")
        self.assertTrue(wait_until(lambda: len(router_procs(r)) == 2 and
                                   os.path.exists(self.sock0), WAIT))
        with Client(self.sock0) as c:
            for ks in self.keys.values():
                for k in ks:
                    self.assertEqual(c.call(req_hset("t", k, "v")).status, 200)
        return r

    def assertShard1Served(self):
        with Client(self.sock0) as c:
            for k in self.keys[1]:
                resp = c.call(req_hget("t", k))
                self.assertEqual(resp.status, 200, resp.message)

    def scrape(self):
        status, _, body = http_get(self.mport)
        self.assertEqual(status, 200, body)
        return parse_metrics(body)

    def test_scrape_and_metrics_command_name_what_hung_and_recover(self):
        r = self.node()
        worker0, router1 = r.worker_pid(0), router_procs(r)[1]
        self.assertTrue(wait_until(lambda: total(self.scrape(), "kvs_metrics_source_up") == 4,
                                   WAIT), self.scrape())
        with stopped(worker0, router1):
            m, took = timed(self.scrape)
            self.assertLess(took, 2.5)  # router.timeout, once, for both
            self.assertEqual(total(m, "kvs_metrics_source_up", shard="0"), 0)
            self.assertEqual(total(m, "kvs_metrics_source_up", router="1"), 0)
            self.assertEqual(total(m, "kvs_metrics_source_up", shard="1"), 1)
            self.assertEqual(total(m, "kvs_metrics_source_up", router="0"), 1)
            self.assertGreater(total(m, "kvs_lmdb_map_size_bytes", shard="1"), 0)
            self.assertEqual(total(m, "kvs_lmdb_map_size_bytes", shard="0"), 0)
            self.assertGreater(total(m, "kvs_client_connections", router="0"), 0)
            # The Metrics command through router 0: the worker that hung is
            # named and said to be left out, the other's families are there.
            with Client(self.sock0) as c:
                resp, took = timed(c.call, metrics_req())
            self.assertLess(took, 2.5)
            self.assertEqual(resp.status, 200, resp.message)
            self.assertIn("shard 0", resp.message)
            up = {dict(zip(s.labels[::2], s.labels[1::2]))["shard"]: s.value
                  for f in resp.ops.metrics if f.name == "kvs_metrics_source_up"
                  for s in f.samples}
            self.assertEqual(up, {"0": 0, "1": 1})
            shards = {dict(zip(s.labels[::2], s.labels[1::2])).get("shard")
                      for f in resp.ops.metrics if f.name == "kvs_lmdb_pages_used"
                      for s in f.samples}
            self.assertEqual(shards, {"1"})
            self.assertShard1Served()
        # Running again, everything is back in the next scrapes.
        self.assertTrue(wait_until(lambda: total(self.scrape(), "kvs_metrics_source_up") == 4,
                                   WAIT), self.scrape())
        def whole():
            with Client(self.sock0) as c:
                resp = c.call(metrics_req())
            return (resp.status, resp.message) == (200, "") and {
                s.value for f in resp.ops.metrics if f.name == "kvs_metrics_source_up"
                for s in f.samples} == {1}
        self.assertTrue(wait_until(whole, WAIT))

    def test_sigterm_with_a_stopped_worker_and_router_process_ends_at_once(self):
        # A stopped child only takes the SIGTERM once it runs: the master
        # used to wait out the grace periods (15 s for the router process,
        # then 10 s for the worker) and SIGKILL them.
        r = self.node()
        worker0, router1 = r.worker_pid(0), router_procs(r)[1]
        with stopped(worker0, router1):
            started = time.monotonic()
            r.proc.send_signal(signal.SIGTERM)
            try:
                rc = r.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.fail("kvs-router still ran 8 s after SIGTERM")
            self.assertEqual(rc, 0, r.stderr()[-3000:])
            self.assertLess(time.monotonic() - started, 5)
        log = r.stderr()
        self.assertNotIn("SIGKILL", log)
        self.assertIn("shard 0 (pid %d) exited with status 0" % worker0, log)
        self.assertIn("router 1 (pid %d) exited with status 0" % router1, log)
        self.assertTrue(r.wait_all_gone(5))



if __name__ == "__main__":
    unittest.main()
