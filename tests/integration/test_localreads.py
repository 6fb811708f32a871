"""Reads of local shards answered by the router from their LMDB
environments (router.local_reads, issue 17): real kvs-router and kvs-node
processes on loopback.

That a read was answered by the router itself is seen from outside: the
shard's worker is stopped (SIGSTOP) while the read is made, so a read sent
to it would wait out router.timeout and come back 503. Every test resumes
what it stopped, bounds every wait, and kills every process at cleanup.

Covered: answers byte for byte as the worker's; read-your-writes under
load; bound tables under the worker's freshness rules; map growth; a
worker killed mid-write (its reader slot cleared); a replaced data.mdb and
a snapshot bootstrap (the router follows the worker to its new files);
reader slots of dead readers and of a killed router process; several
router processes; users' rights checked before a local answer (TLS,
both front doors); other nodes' routers still asking the worker; replicas
(never an answer the local replica has not applied).
"""
import ctypes
import ctypes.util
import itertools
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

import redis

from kvstest import (BUILD_DIR, SANITIZED, cert_path, encode, pb, pyval, req_hexist, req_hget,
                     req_hgetall, req_hmexist, req_hmget, req_hmset, req_hscan, req_hset,
                     tls_context, tls_yaml)
from routertest import (RouterTestCase, free_port, free_port_range, keys_by_shard,
                        router_pids, stopped)
from kafkatest import KCAT, kafka_parts, kcat_produce, pos_token, wait_until
from test_auth import USERS, req_auth, users_yaml
from test_logfirst import FreshnessFixtures, keys_in_partition, with_options
from test_ops import http_get, parse_metrics, slowlog_req, total
from test_procs import info_of
from test_replicas import TABLE as REPLICA_TABLE
from test_replicas import ReplicaFixtures, hget_at, shard_of_key

PARTITIONS = 16
QUICK = 1.5  # a read answered here comes back well within this, even under ASan


def lmdb_readers(env):
    """The pids holding reader slots of environment `env` (mdb_stat -r)."""
    out = subprocess.run(["mdb_stat", "-r", env], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in out.stdout.splitlines()[1:]
            if line.strip() and line.split()[0].isdigit()]


def lmdb_reader_txns(env):
    """{pid: [txnid or "-" per slot]} of environment `env` (mdb_stat -r)."""
    out = subprocess.run(["mdb_stat", "-r", env], capture_output=True, text=True, timeout=10)
    slots = {}
    for line in out.stdout.splitlines()[1:]:
        f = line.split()
        if len(f) == 3 and f[0].isdigit():
            slots.setdefault(f[0], []).append(f[2])
    return slots


def req_hlen(table):
    q = pb.CommandRequest()
    q.hlen.table = table
    return q


class LocalReadsCase(RouterTestCase):
    def local_router(self, shards=2, **kw):
        self.rport = free_port()
        router_yaml = ['resp_listen: "127.0.0.1:%d"' % self.rport] + list(kw.pop("router_yaml", ()))
        return self.router(shards=shards, partitions=PARTITIONS, timeout="2s",
                           router_yaml=router_yaml, **kw)

    def redis(self):
        c = redis.Redis(host="127.0.0.1", port=self.rport, socket_timeout=10)
        self.addCleanup(c.close)
        return c

    def timed(self, fn, *args):
        t = time.monotonic()
        out = fn(*args)
        return out, time.monotonic() - t

    def assertHere(self, elapsed, what):
        """The answer came from the router: its worker is stopped, and a
        forwarded read would have waited out router.timeout (2 s)."""
        self.assertLess(elapsed, QUICK, "%s took %.2f s: it went to the stopped worker"
                        % (what, elapsed))

    def fill(self, r, table, n_per_shard):
        keys = keys_by_shard(b"k", n_per_shard, PARTITIONS, r.shards)
        with r.client() as c:
            for s in sorted(keys):
                for k in keys[s]:
                    self.assertEqual(c.hset(table, k, b"v-" + k).status, 200)
        return keys


class AnswersTest(LocalReadsCase):
    def test_pipelined_reads_share_one_snapshot_that_ends_with_their_run(self):
        """One client's run of pipelined reads (the frames of one read from
        its socket) is served from one snapshot per shard, begun after they
        arrived: every answer is current, including a write acknowledged
        to another client just before the run was sent; answers keep
        request order across shards; and the snapshot ends with the run
        (the router's reader slot holds no txn afterwards, so it pins no
        pages the worker would reuse)."""
        r = self.local_router()
        keys = self.fill(r, "t", 16)
        every = sorted(keys[0] + keys[1])
        router = str(router_pids(r)[0])
        with r.client() as w, r.client() as c:
            for rnd in range(24):
                k = every[rnd % len(every)]
                self.assertEqual(w.hset("t", k, b"new-%d" % rnd).status, 200)
                expect = {x: b"v-" + x for x in every}
                for j in range(rnd + 1):
                    expect[every[j % len(every)]] = b"new-%d" % j
                got = c.pipeline([req_hget("t", x) for x in every])
                self.assertEqual([pyval(a.values[0]) for a in got], [expect[x] for x in every],
                                 "round %d: a pipelined read missed an acknowledged write" % rnd)
            with stopped(*r.workers().values()):
                got, el = self.timed(c.pipeline, [req_hget("t", x) for x in every] * 4)
                self.assertHere(el, "a pipeline of %d Hgets" % (4 * len(every)))
                self.assertEqual([a.status for a in got], [200] * (4 * len(every)))
        for shard in (0, 1):
            env = os.path.join(r.data_dir, "shard-%d" % shard)
            slots = lmdb_reader_txns(env)
            self.assertIn(router, slots, "the router holds no reader slot of %s" % env)
            self.assertEqual(slots[router], ["-"],
                             "the router kept a snapshot of shard %d open after the run" % shard)

    def test_every_read_is_answered_here_as_the_worker_answers(self):
        r = self.local_router()
        keys = self.fill(r, "t", 12)
        every = sorted(keys[0] + keys[1])
        mixed = [keys[1][0], b"missing", keys[0][3], keys[1][5]]
        workers = r.workers()
        single = [req_hget("t", keys[0][0]), req_hget("t", b"missing"), req_hget("nosuch", b"x"),
                  req_hexist("t", keys[1][1]), req_hexist("t", b"missing"),
                  req_hmget("t", keys[0][:4]), req_hmexist("t", keys[1][:3] + [b"missing"])]
        with r.client() as c, stopped(*workers.values()):
            here = []
            for q in single:  # one shard each: raw answers, byte for byte
                c.send(q)
                got, el = self.timed(c.recv_raw)
                self.assertHere(el, q.WhichOneof("command"))
                here.append(got[1])
            resp, el = self.timed(c.call, req_hmget("t", mixed))  # two shards merged
            self.assertHere(el, "Hmget")
            self.assertEqual([pyval(v) for v in resp.values],
                             [b"v-" + mixed[0], None, b"v-" + mixed[2], b"v-" + mixed[3]])
            resp = c.call(req_hgetall("t"))
            self.assertEqual([p.key for p in resp.pairs], every)
            self.assertEqual(pyval(c.call(req_hlen("t")).values[0]), 24)
            pages, cursor = [], b""
            while True:
                resp, el = self.timed(c.call, req_hscan("t", cursor, 5))
                self.assertHere(el, "Hscan")
                self.assertEqual(resp.status, 200, resp.message)
                pages.append(resp)
                cursor = resp.cursor
                if not cursor:
                    break
            # shard by shard, each in key order
            self.assertEqual([p.key for pg in pages for p in pg.pairs],
                             sorted(keys[0]) + sorted(keys[1]))
            rc = self.redis()
            self.assertEqual(rc.hget("t", keys[0][2]), b"v-" + keys[0][2])
            self.assertIsNone(rc.hget("t", "missing"))
            self.assertEqual(rc.hmget("t", mixed), [b"v-" + mixed[0], None, b"v-" + mixed[2],
                                                    b"v-" + mixed[3]])
            self.assertEqual(sorted(rc.hgetall("t")), every)
            self.assertTrue(rc.hexists("t", keys[1][0]))
            self.assertEqual(rc.hlen("t"), 24)
            seen, cur = [], 0
            while True:
                cur, part = rc.hscan("t", cur, count=7)
                seen += list(part)
                if cur == 0:
                    break
            self.assertEqual(sorted(seen), every)
        # the workers give the very same bytes
        for q, got in zip(single, here):
            m = getattr(q, q.WhichOneof("command"))
            key = m.keys[0] if q.WhichOneof("command") in ("hmget", "hmexist") else m.key
            with r.worker_client(r.shard_of(key)) as w:
                w.send(q)
                self.assertEqual(w.recv_raw()[1], got, q)

    def test_a_walk_mixes_router_and_worker_pages(self):
        r = self.local_router()
        keys = self.fill(r, "t", 10)
        with r.client() as c, r.worker_client(0) as w:
            first = c.hscan("t", b"", 4)  # shard 0's first page, from the router
            self.assertEqual(first.cursor[:3], b"S\x00\x00")
            second = w.hscan("t", first.cursor[3:], 4)  # the worker continues it
            third = c.hscan("t", b"S\x00\x00" + second.cursor, 4)  # and the router again
            walked = [p.key for p in list(first.pairs) + list(second.pairs) + list(third.pairs)]
            # shard 0's whole table (4 + 4 + 2), then the page goes on with
            # shard 1's first 2
            self.assertEqual(walked, sorted(keys[0]) + sorted(keys[1])[:2])
            self.assertEqual(third.cursor[:3], b"S\x00\x01")
            self.assertGreater(len(third.cursor), 3)  # within shard 1

    def test_answers_past_max_frame_are_413_as_from_the_worker(self):
        r = self.local_router(max_frame="64KiB")
        big = b"x" * 30000
        keys = keys_by_shard(b"b", 3, PARTITIONS, 2)[0]
        with r.client() as c:
            for k in keys:
                self.assertEqual(c.hset("t", k, big).status, 200)
            with stopped(*r.workers().values()):
                resp, el = self.timed(c.call, req_hmget("t", keys))
                self.assertHere(el, "Hmget")
                self.assertEqual(resp.status, 413)
                self.assertIn("ask for fewer keys per request", resp.message)
                got = c.call(req_hgetall("t"))
            self.assertEqual(got.status, 413)
            self.assertIn("read the table in pages with Hscan", got.message)
            with r.worker_client(0) as w:
                self.assertEqual(w.call(req_hmget("t", keys)).message, resp.message)


class ConsistencyTest(LocalReadsCase):
    def test_read_your_writes_under_load_through_both_front_doors(self):
        r = self.local_router()
        errors, stop = [], threading.Event()
        handoff = queue.Queue()

        def protobuf_writer(n):
            with r.client() as c:
                i = 0
                while not stop.is_set():
                    k, v = b"p%d-%d" % (n, i), b"v%d" % i
                    if i % 3 == 0:  # pipelined: the read right behind the write
                        a, b_, e = c.pipeline([req_hset("rw", k, v), req_hget("rw", k),
                                               req_hexist("rw", k)])
                        if pyval(b_.values[0]) != v or not e.values[0].bool_value:
                            errors.append(("pipelined", k, b_, e))
                    else:
                        c.hset("rw", k, v)
                        got = c.hget("rw", k)
                        if got.status != 200 or pyval(got.values[0]) != v:
                            errors.append(("sequential", k, got))
                        handoff.put((k, v))
                    i += 1

        def resp_writer(n):
            rc = redis.Redis(host="127.0.0.1", port=self.rport, socket_timeout=10)
            try:
                i = 0
                while not stop.is_set():
                    k, v = "r%d-%d" % (n, i), "v%d" % i
                    if i % 2 == 0:
                        p = rc.pipeline(transaction=False)
                        p.hset("rw", k, v)
                        p.hget("rw", k)
                        got = p.execute()[1]
                    else:
                        rc.hset("rw", k, v)
                        got = rc.hget("rw", k)
                    if got != v.encode():
                        errors.append(("resp", k, got))
                    handoff.put((k.encode(), v.encode()))
                    i += 1
            finally:
                rc.close()

        def reader():  # another connection reads what was acknowledged elsewhere
            rc = redis.Redis(host="127.0.0.1", port=self.rport, socket_timeout=10)
            try:
                with r.client() as c:
                    n = 0
                    while not stop.is_set() or not handoff.empty():
                        try:
                            k, v = handoff.get(timeout=0.1)
                        except queue.Empty:
                            continue
                        got = (pyval(c.hget("rw", k).values[0]) if n % 2 else rc.hget("rw", k))
                        if isinstance(got, str):  # written through RESP: a string Value
                            got = got.encode()
                        if got != v:
                            errors.append(("other connection", k, got, v))
                        n += 1
            finally:
                rc.close()

        load = subprocess.Popen([os.path.join(BUILD_DIR, "kvs-bench"), "--port", str(r.port),
                                 "-t", "mixed", "--read-ratio", "0.5", "-n", "100000000",
                                 "-c", "4", "-P", "8", "-r", "1000", "-q", "--table", "rw"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(load.kill)
        threads = [threading.Thread(target=protobuf_writer, args=(i,)) for i in range(2)]
        threads += [threading.Thread(target=resp_writer, args=(i,)) for i in range(2)]
        threads.append(threading.Thread(target=reader))
        for t in threads:
            t.start()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(20)
        load.kill()
        self.assertFalse(errors, errors[:5])
        # the reads were answered here: a worker stopped, a read of it still is
        with r.client() as c, stopped(*r.workers().values()):
            _, el = self.timed(c.hget, "rw", b"p0-1")
            self.assertHere(el, "Hget")


class LifecycleTest(LocalReadsCase):
    def test_map_growth_is_followed(self):
        r = self.local_router(storage_yaml=["map_size: 1MiB"])
        keys = keys_by_shard(b"g", 40, PARTITIONS, 2)[0]
        val = lambda k: k * (100000 // len(k))  # noqa: E731
        with r.client() as c:
            for k in keys:  # 4 MB: far past the 1 MiB the router mapped at start
                self.assertEqual(c.hset("g", k, val(k)).status, 200)
            with stopped(r.workers()[0]):
                for k in keys:
                    got, el = self.timed(c.hget, "g", k)
                    self.assertHere(el, "Hget")
                    self.assertEqual(pyval(got.values[0]), val(k))
        self.assertTrue(wait_until(lambda: "shard 0: its worker grew the map" in r.stderr(), 5),
                        "no remap logged")

    @unittest.skipIf(SANITIZED, "ASan's allocator maps as it goes: an address-space limit "
                     "fails it before LMDB")
    def test_a_grown_map_this_process_cannot_map_goes_to_the_worker(self):
        # Probe BI: a router process out of address space (here its own
        # limit, prlimit) failed to map the map its worker grew; LMDB had
        # unmapped the old one already, and the next read through it
        # killed the process (SIGSEGV). Its reads go to the worker now,
        # and once it can map the environment again it reads it here.
        r = self.local_router(shards=1, storage_yaml=["map_size: 64MiB"], max_frame="8MiB")
        with r.client(timeout=30) as c:
            self.assertEqual(c.hset("small", b"k", b"v").status, 200)
            self.assertEqual(pyval(c.hget("small", b"k").values[0]), b"v")  # opened here
            pid = router_pids(r)[0]
            with open("/proc/%d/status" % pid) as f:
                vsz = next(int(x.split()[1]) << 10 for x in f if x.startswith("VmSize:"))
            # Room for the 64 MiB map it has and a little, not for a grown one.
            subprocess.run(["prlimit", "--pid", str(pid),
                            "--as=%d:unlimited" % (vsz + (96 << 20))], check=True, timeout=10)
            big = b"x" * (4 << 20)
            for i in range(40):  # 160 MiB: the worker grows its map
                self.assertEqual(c.hset("big", b"b%d" % i, big).status, 200)
            for _ in range(20):
                self.assertEqual(pyval(c.hget("small", b"k").values[0]), b"v")
            self.assertTrue(wait_until(lambda: "a local read failed" in r.stderr(), 5))
            self.assertEqual(router_pids(r)[0], pid, "the router process was replaced")
            self.assertNotIn("SIGSEGV", r.stderr())
            subprocess.run(["prlimit", "--pid", str(pid), "--as=unlimited:unlimited"],
                           check=True, timeout=10)
            reopened = "shard 0: answering its reads from"
            self.assertTrue(wait_until(lambda: (c.hget("small", b"k"),
                                                r.stderr().count(reopened) == 2)[1], 10),
                            "not opened again once it could be mapped")
            with stopped(r.workers()[0]):  # read here again
                got, el = self.timed(c.hget, "big", b"b39")
                self.assertHere(el, "Hget")
                self.assertEqual(len(got.values[0].string_value or got.values[0].binary_value),
                                 4 << 20)
        self.assertEqual(router_pids(r)[0], pid)

    def test_worker_killed_mid_write_keeps_every_acknowledged_write(self):
        r = self.local_router()
        keys = iter(keys_by_shard(b"w", 2000, PARTITIONS, 2)[0])
        acked, stop = [], threading.Event()

        def writer():
            with r.client() as c:
                while not stop.is_set():
                    batch = list(itertools.islice(keys, 8))
                    if not batch:
                        break  # every key tried: 503s while the worker restarts go fast
                    for k, resp in zip(batch, c.pipeline([req_hset("w", k, k) for k in batch])):
                        if resp.status == 200:
                            acked.append(k)

        t = threading.Thread(target=writer)
        t.start()
        self.assertTrue(wait_until(lambda: len(acked) > 50, 10))
        old = r.kill_worker(0)
        time.sleep(0.2)
        stop.set()
        t.join(10)
        new = r.wait_worker(0, not_pid=old)
        self.assertIsNotNone(new)
        with r.client() as c:
            self.assertTrue(wait_until(lambda: c.hget("w", acked[0]).status == 200, 10))
            with stopped(new):
                for k in acked:
                    got, el = self.timed(c.hget, "w", k)
                    self.assertHere(el, "Hget")
                    self.assertEqual(pyval(got.values[0]), k)
        log = r.stderr()
        # the environment stayed valid across the restart: opened once, never again
        self.assertEqual(log.count("shard 0: answering its reads from"), 1, log)
        self.assertNotIn("reopened them", log)

    def test_replaced_data_directory_is_reopened(self):
        r = self.local_router()
        k, k2 = keys_by_shard(b"d", 2, PARTITIONS, 2)[0]
        env = os.path.join(r.data_dir, "shard-0")
        copy = os.path.join(r.dir, "copy")
        os.mkdir(copy)
        with r.client() as c:
            self.assertEqual(c.hset("d", k, b"old").status, 200)
            subprocess.run(["mdb_copy", env, copy], check=True, timeout=30)  # a hot copy
            self.assertEqual(c.hset("d", k, b"new").status, 200)
            self.assertEqual(c.hset("d", k2, b"only-new").status, 200)
            self.assertEqual(pyval(c.hget("d", k).values[0]), b"new")
            # the copy takes the directory's place, as a snapshot bootstrap's does
            os.rename(os.path.join(copy, "data.mdb"), os.path.join(env, "data.mdb"))
            old = r.kill_worker(0)
            new = r.wait_worker(0, not_pid=old)
            self.assertIsNotNone(new)
            got = wait_until(lambda: (lambda x: x.status == 200 and pyval(x.values[0]) == b"old"
                                      and x)(c.hget("d", k)), 10)
            self.assertTrue(got, "never read the copy: %r" % c.hget("d", k))
            self.assertEqual(c.hget("d", k2).status, 404)
            with stopped(new):  # read here, from the copy
                got, el = self.timed(c.hget, "d", k)
                self.assertHere(el, "Hget")
                self.assertEqual(pyval(got.values[0]), b"old")
            self.assertEqual(c.hset("d", k2, b"after").status, 200)  # and written on
            self.assertEqual(pyval(c.hget("d", k2).values[0]), b"after")
        log = r.stderr()
        self.assertIn("shard 0: its worker serves from other files now", log)
        self.assertIn("started a new lock file", log)

    def test_data_file_cut_short_never_kills_the_router(self):
        """A data.mdb cut short under a running cluster (an operator's slip,
        a damaged disk): a read of a missing page faults (SIGBUS), which
        used to kill the router process with every client on it, and again
        after each restart. The fault is caught: those files are not read
        here again, the read and the shard's next ones go to its worker,
        and the other shard is still read here."""
        r = self.local_router()
        big = keys_by_shard(b"c", 200, PARTITIONS, 2)[0]
        keys = self.fill(r, "t", 2)
        with r.client() as c:
            for k in big:  # some 600 kB on shard 0
                self.assertEqual(c.hset("t", k, k * 300).status, 200)
            router = router_pids(r)[0]
            data = os.path.join(r.data_dir, "shard-0", "data.mdb")
            with stopped(*r.workers().values()):
                os.truncate(data, 32768)
                got = c.call(req_hscan("t", b"S\x00\x00", 1000))  # shard 0's whole table
                self.assertUnavailable(got, 0)  # faulted here, then sent to its stopped worker
                self.assertIn("shard 0: reading its files faulted (SIGBUS", r.stderr())
                got = c.hget("t", big[-1])
                self.assertUnavailable(got, 0)
            with r.client() as c, stopped(r.workers()[1]):
                got, el = self.timed(c.hget, "t", keys[1][0])
                self.assertHere(el, "Hget of shard 1")
                self.assertEqual(got.status, 200, got.message)
                self.assertEqual(pyval(got.values[0]), b"v-" + keys[1][0])
        self.assertEqual(router_pids(r), {0: router}, "the router process died")
        self.assertNotRegex(r.stderr(), r"router 0 \(pid \d+\) killed")
        self.assertEqual(r.stderr().count("reading its files faulted"), 1)

    def test_a_state_page_cut_short_costs_only_until_it_is_whole(self):
        """A state page cut short faults (SIGBUS) as a data.mdb does, and
        the router took it for the data files': it read the shard's
        data.mdb here no more until the worker served from other files,
        so after the worker's next start (which writes the page whole, the
        same data.mdb) every read of the shard still crossed to it. Only
        the page is put aside now: once it reads again, so does data.mdb."""
        r = self.local_router()
        keys = self.fill(r, "t", 2)
        state = os.path.join(r.data_dir, "shard-0.state")
        with r.client() as c:
            with stopped(r.worker_pid(0)):
                os.truncate(state, 0)
                self.assertUnavailable(c.hget("t", keys[0][0]), 0)  # faulted, to the worker
            self.assertIn("shard 0: reading its state page faulted (SIGBUS", r.stderr())
            self.assertNotIn("reading its files faulted", r.stderr())
            worker = r.worker_pid(0)
            os.kill(worker, signal.SIGKILL)  # its next start writes the page whole
            self.assertTrue(wait_until(lambda: r.worker_pid(0) not in (None, worker), 15))
            self.assertTrue(wait_until(lambda: os.path.getsize(state) > 0, 15))
            self.assertTrue(wait_until(lambda: c.hget("t", keys[0][1]).status == 200, 15))
            time.sleep(1.5)  # the router maps the page again a second after the fault
            with stopped(r.worker_pid(0)):
                got, el = self.timed(c.hget, "t", keys[0][0])
                self.assertHere(el, "Hget of shard 0")
                self.assertEqual(pyval(got.values[0]), b"v-" + keys[0][0])
        self.assertEqual(r.stderr().count("reading its state page faulted"), 1)

    def test_a_sigbus_sent_by_kill_is_not_taken_for_a_fault(self):
        """The handler that catches a read of a data.mdb cut short must not
        swallow a SIGBUS someone sent (kill -BUS): that one ends the
        process as it did before the handler, which is then restarted,
        and no file is marked as faulted."""
        r = self.local_router()
        keys = self.fill(r, "t", 1)
        router = router_pids(r)[0]
        os.kill(router, signal.SIGBUS)
        self.assertTrue(wait_until(lambda: router_pids(r).get(0) not in (None, router), 10),
                        r.stderr()[-3000:])
        # the previous disposition: the default's, or a sanitizer's report
        self.assertRegex(r.stderr(), r"router 0 \(pid %d\) killed by signal SIGBUS" % router
                         if not SANITIZED else r"==%d==ERROR: AddressSanitizer: BUS" % router)
        self.assertNotIn("reading its files faulted", r.stderr())
        self.assertTrue(wait_until(lambda: "router 0 accepts clients again" in r.stderr(), 10),
                        r.stderr()[-3000:])
        with r.client() as c, stopped(r.workers()[0]):
            got, el = self.timed(c.hget, "t", keys[0][0])
            self.assertHere(el, "Hget after the restart")
            self.assertEqual(pyval(got.values[0]), b"v-" + keys[0][0])

    def test_environment_that_cannot_be_opened_goes_to_the_worker(self):
        r = self.local_router(env={"KVS_TEST_LOCAL_READS_REFUSE": "1"})
        keys = self.fill(r, "t", 4)
        mixed = [keys[1][0], keys[0][0], keys[1][1]]
        with r.client() as c:
            end = time.monotonic() + 2.5  # retried every second: logged once all the same
            while time.monotonic() < end:
                got = c.call(req_hmget("t", mixed))
                self.assertEqual([pyval(v) for v in got.values], [b"v-" + k for k in mixed])
                time.sleep(0.05)
            with stopped(r.workers()[0]):  # shard 0 is read here
                got, el = self.timed(c.hget, "t", keys[0][1])
                self.assertHere(el, "Hget")
            with stopped(r.workers()[1]):  # shard 1 goes to its worker
                got = c.hget("t", keys[1][2])
                self.assertEqual(got.status, 503, got.message)
                self.assertIn("shard 1", got.message)
        log = r.stderr()
        self.assertEqual(log.count("shard 1: cannot read its environment here"), 1, log)
        self.assertIn("KVS_TEST_LOCAL_READS_REFUSE", log)

    def test_local_reads_off_sends_every_read_to_the_worker(self):
        r = self.local_router(router_yaml=["local_reads: false"])
        keys = self.fill(r, "t", 2)
        with r.client() as c:
            self.assertEqual(pyval(c.hget("t", keys[0][0]).values[0]), b"v-" + keys[0][0])
            with stopped(r.workers()[0]):
                got = c.hget("t", keys[0][0])
            self.assertEqual(got.status, 503, got.message)
        self.assertNotIn("answering its reads", r.stderr())


class OpsTest(LocalReadsCase):
    def test_metrics_and_slow_log_count_reads_answered_here(self):
        """Reads answered here pass the router's hooks like any other:
        kvs_requests_total and the request durations count them, the slow
        log lists them; the workers' counters do not move (they never saw
        them)."""
        mport = free_port()
        r = self.local_router(router_yaml=['metrics_listen: "127.0.0.1:%d"' % mport],
                              log="{level: info, slow_threshold: 0}")
        keys = self.fill(r, "t", 3)

        def scrape():
            status, _, body = http_get(mport)
            self.assertEqual(status, 200, body)
            return parse_metrics(body)
        before = scrape()
        with r.client() as c:
            with stopped(*r.workers().values()):
                for k in keys[0] + keys[1]:
                    got, el = self.timed(c.hget, "t", k)
                    self.assertHere(el, "Hget")
                got, el = self.timed(c.call, req_hmget("t", keys[0] + keys[1]))
                self.assertHere(el, "Hmget")
            slow = c.call(slowlog_req(count=100))
        after = scrape()

        def moved(name, **labels):
            return total(after, name, **labels) - total(before, name, **labels)
        self.assertEqual(moved("kvs_requests_total", command="Hget", status="200"), 6)
        self.assertEqual(moved("kvs_requests_total", command="Hmget", status="200"), 1)
        self.assertEqual(moved("kvs_request_duration_seconds_count", command="Hget"), 6)
        self.assertEqual(moved("kvs_worker_requests_total", command="Hget"), 0)
        self.assertEqual(moved("kvs_worker_requests_total", command="Hmget"), 0)
        self.assertEqual(slow.status, 200, slow.message)
        logged = [(e.command, e.table) for e in slow.ops.slowlog]
        self.assertEqual(logged.count(("Hget", "t")), 6, logged)
        self.assertEqual(logged.count(("Hmget", "t")), 1, logged)


class FairnessTest(LocalReadsCase):
    def fill_big(self, r):
        """Table "big" of 280,000 pairs: an Hgetall of it is some 70 ms of
        the router's own work, answered 413 (past the frame)."""
        with r.client(timeout=60) as c:
            keys = [b"%07d" % i for i in range(280000)]
            for i in range(0, len(keys), 50000):
                resp = c.call(req_hmset("big", [(k, b"x") for k in keys[i:i + 50000]]))
                self.assertEqual(resp.status, 200, resp.message)

    def test_local_reads_go_while_a_stopped_worker_holds_the_fair_share_cap(self):
        """Ten clients each send an Hmset of 4,000 keys to shard 1, whose
        worker is stopped: together past the units at a shard where
        nobody sends it more (4,096), held there until router.timeout
        (10 s here). A read answered in the router costs the workers
        nothing: another client's Hgets of both shards are answered at
        once, not after router.timeout; so are its Hmget, Hmexist and
        Hgetall of both (the full path, whose hold looked at shard 1's
        cap, not at where the parts are read)."""
        r = self.router(shards=2, partitions=PARTITIONS, timeout="10s")
        one = keys_by_shard("r", 1, PARTITIONS, 2)
        k0, k1 = one[0][0], one[1][0]
        heavy = keys_by_shard("w", 4000, PARTITIONS, 2)[1]
        with r.client() as c:
            self.assertEqual(c.hset("t", k0, b"zero").status, 200)
            self.assertEqual(c.hset("t", k1, b"one").status, 200)
        writers = [r.client(timeout=30) for _ in range(10)]
        for w in writers:
            self.addCleanup(w.close)
        with stopped(r.worker_pid(1)):
            for w in writers:
                w.send_raw(encode(req_hmset("t", [(k, b"v") for k in heavy])))
            time.sleep(0.3)
            with r.client() as c:
                for k, want in ((k0, b"zero"), (k1, b"one")):
                    got, el = self.timed(c.hget, "t", k)
                    self.assertHere(el, "Hget")
                    self.assertEqual((got.status, pyval(got.values[0])), (200, want))
                got, el = self.timed(c.hmget, "t", [k0, k1])
                self.assertHere(el, "Hmget")
                self.assertEqual([pyval(v) for v in got.values], [b"zero", b"one"])
                got, el = self.timed(c.call, req_hmexist("t", [k1, b"absent"]))
                self.assertHere(el, "Hmexist")
                self.assertEqual(got.status, 200, got.message)
                got, el = self.timed(c.call, req_hgetall("t"))
                self.assertHere(el, "Hgetall")
                self.assertEqual(sorted(p.key for p in got.pairs), sorted([k0, k1]))
        for w in writers:  # the worker back, every Hmset is answered
            self.assertEqual(w.recv().status, 200)

    def test_a_pipeline_of_costly_local_reads_leaves_room_for_others(self):
        """A client pipelines 60 Hgetall of a table of 280,000 pairs, each
        walked by the router itself and refused (413) once past the frame:
        some 70 ms of work each. They all ran in one go, so the router
        process served nobody else for seconds (300 of them got it killed
        for a missed heartbeat). A connection's frames now run 5 ms a turn:
        another client is answered within a few such reads."""
        r = self.local_router()
        self.fill_big(r)
        with r.client(timeout=60) as c:
            t = time.monotonic()
            resp = c.call(req_hgetall("big"))
            one = time.monotonic() - t
            self.assertEqual(resp.status, 413, resp.message)
            c.send_raw(encode(req_hgetall("big")) * 60)
            time.sleep(0.3)  # the router is in the middle of them
            worst = 0.0
            for _ in range(5):
                with r.client(timeout=60) as other:
                    t = time.monotonic()
                    self.assertEqual(other.ping().status, 200)
                    worst = max(worst, time.monotonic() - t)
                time.sleep(0.1)
            # Before the 5 ms turns a ping waited for the whole pipeline
            # (60 reads: some 60 * one); a loaded machine (CI runs several
            # tests per core) stretches a turn, not the count of turns.
            self.assertLess(worst, max(2.0, 6 * one),
                            "a ping waited %.2f s (one Hgetall: %.2f s)" % (worst, one))
            for _ in range(60):  # and the pipeline is answered whole
                self.assertEqual(c.recv().status, 413)

    def test_a_pipeline_sent_whole_before_its_answers_are_read_completes(self):
        """A client sends its whole pipeline before it reads any answer
        (redis-py's pipelines do). The router answers local reads as it
        runs them, so eight 3 MiB Hgets passed the high-water mark (16
        MiB) at once, and it stopped reading, with 15 MB of Hsets still to
        come: the client blocked in its write, the router waiting for it
        to read, for good. It now reads on (runs nothing) up to another
        high-water mark of requests, so the client finishes sending and
        every answer comes, in order."""
        r = self.local_router(sync="none")
        big = b"v" * (3 << 20)
        with r.client(timeout=30) as c:
            for i in range(8):
                self.assertEqual(c.hset("big", b"k%d" % i, big).status, 200)
        reqs = [req_hget("big", b"k%d" % i) for i in range(8)]
        reqs += [req_hset("w", b"w%d" % i, b"%d" % i * (3 << 20)) for i in range(5)]
        with r.client(timeout=15) as c:
            # little room in the kernel's buffers on the client's side
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            try:
                c.send(*reqs)
            except socket.timeout:
                self.fail("the router stopped reading a client that sends before it reads")
            answers = [c.recv() for _ in reqs]
        self.assertEqual([a.status for a in answers], [200] * len(reqs))
        self.assertEqual({len(pyval(a.values[0])) for a in answers[:8]}, {len(big)})
        with r.client() as c:
            for i in range(5):
                self.assertEqual(len(pyval(c.hget("w", b"w%d" % i).values[0])), 3 << 20)

    def test_many_pipelines_of_costly_local_reads_leave_the_loop_its_turns(self):
        """Forty clients each pipeline two Hgetall of a table of 280,000
        pairs (some 70 ms of the router's own work each). A connection's
        frames run one slice a loop turn, but forty connections' slices
        held one turn for 40 x 70 ms: the heartbeat went unsent and the
        master killed the router process (router.liveness_timeout 2 s),
        every client with it. The clients' deliveries of a loop turn are
        now bounded together: the loop turns every request or so, its
        heartbeat goes out, and every pipeline is answered whole."""
        mport = free_port()
        r = self.local_router(router_yaml=["liveness_timeout: 2s",
                                           'metrics_listen: "127.0.0.1:%d"' % mport])
        pid = router_pids(r)[0]
        self.fill_big(r)
        clients = [r.client(timeout=120) for _ in range(40)]
        for c in clients:
            self.addCleanup(c.close)
        for c in clients:
            self.assertEqual(c.ping().status, 200)  # every one is accepted and served
        for c in clients:
            c.send_raw(encode(req_hgetall("big")) * 2)
        oldest = 0.0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # the master's view while they run
            status, _, body = http_get(mport)
            self.assertEqual(status, 200, body)
            m = parse_metrics(body)
            self.assertEqual(total(m, "kvs_router_liveness_kills_total"), 0, r.stderr()[-3000:])
            oldest = max(oldest, total(m, "kvs_router_heartbeat_age_seconds"))
            time.sleep(0.1)
        for c in clients:
            for _ in range(2):
                self.assertEqual(c.recv().status, 413)
        self.assertEqual(router_pids(r)[0], pid, r.stderr()[-3000:])
        self.assertNotIn("sent no heartbeat", r.stderr())
        status, _, body = http_get(mport)
        self.assertGreater(total(parse_metrics(body), "kvs_client_turns_held_total"), 0)
        # Sent every 0.5 s: one at most a request late.
        self.assertLess(oldest, 1.5, "the heartbeat was %.2f s old" % oldest)


    def test_busy_clients_take_their_turns_in_order(self):
        """Three clients each pipeline twenty costly local reads at once:
        their answers interleave, a request of each a turn. Held by the
        bound on a turn, each client's own kick ran again before the
        clients it had held, so whole pipelines ran one after another
        (twenty A, twenty B, twenty C), the last client waiting for all."""
        r = self.local_router()
        self.fill_big(r)
        clients = [r.client(timeout=120) for _ in range(3)]
        for c in clients:
            self.addCleanup(c.close)
        order, lock = [], threading.Lock()

        def read(i):
            for _ in range(20):
                self.assertEqual(clients[i].recv().status, 413)
                with lock:
                    order.append(i)

        readers = [threading.Thread(target=read, args=(i,)) for i in range(3)]
        for t in readers:
            t.start()
        for c in clients:
            c.send_raw(encode(req_hgetall("big")) * 20)
        for t in readers:
            t.join(120)
        self.assertEqual(len(order), 60, "not every answer came")
        shown = "".join("ABC"[i] for i in order)
        # By the time any client has 10 answers, every client has 5.
        for n in range(len(order)):
            counts = [order[:n + 1].count(i) for i in range(3)]
            if max(counts) == 10:
                self.assertGreaterEqual(min(counts), 5, shown)
                break


class ProcessesTest(LocalReadsCase):
    def conn_on(self, r, index, timeout=15.0):
        """A protobuf Client that reached router process `index` (the
        kernel spreads connections over the processes that listen: one
        restarted may take a moment to listen again)."""
        deadline = time.monotonic() + timeout
        tries = 0
        while time.monotonic() < deadline:
            tries += 1
            c = r.client()
            if info_of(c)["router.process"] == index:
                self.addCleanup(c.close)
                return c
            c.close()
            if tries > 50:
                time.sleep(0.01)
        self.fail("no connection reached router %d in %d tries over %.0f s"
                  % (index, tries, timeout))

    def test_every_router_process_reads_locally_and_sees_the_others_writes(self):
        r = self.local_router(processes=2)
        self.assertTrue(wait_until(lambda: "node ready" in r.stderr(), 15), r.stderr())
        keys = keys_by_shard(b"p", 20, PARTITIONS, 2)
        c0, c1 = self.conn_on(r, 0), self.conn_on(r, 1)
        for i, k in enumerate(keys[0] + keys[1]):  # written through one, read through the other
            w, rd = (c0, c1) if i % 2 else (c1, c0)
            self.assertEqual(w.hset("t", k, b"v-" + k).status, 200)
            got = rd.hget("t", k)
            self.assertEqual((got.status, pyval(got.values[0])), (200, b"v-" + k), got.message)
        with stopped(*r.workers().values()):
            for c in (c0, c1):
                got, el = self.timed(c.call, req_hmget("t", keys[0] + keys[1]))
                self.assertHere(el, "Hmget")
                self.assertEqual([pyval(v) for v in got.values],
                                 [b"v-" + k for k in keys[0] + keys[1]])
        log = r.stderr()
        for s in (0, 1):  # each router process opened each shard once
            self.assertEqual(len(re.findall(r"router\[\d\] INFO  shard %d: answering its reads"
                                            % s, log)), 2, log)

    @unittest.skipIf(shutil.which("mdb_stat") is None, "mdb_stat (lmdb-utils) is needed")
    def test_a_router_process_killed_leaves_no_slot_and_its_successor_reads_here(self):
        r = self.local_router(processes=2)
        self.assertTrue(wait_until(lambda: "node ready" in r.stderr(), 15), r.stderr())
        keys = keys_by_shard(b"q", 4, PARTITIONS, 2)[0]
        with r.client() as c:
            for k in keys:
                self.assertEqual(c.hset("t", k, k).status, 200)
        env = os.path.join(r.data_dir, "shard-0")
        victim = router_pids(r)[1]
        c1 = self.conn_on(r, 1)
        c1.hget("t", keys[0])  # it read shard 0: it holds a slot there
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: router_pids(r).get(1) not in (None, victim), 15))
        self.assertTrue(wait_until(lambda: str(victim) not in lmdb_readers(env), 5),
                        "the killed router's reader slot stayed")
        c1 = self.conn_on(r, 1)
        with stopped(r.worker_pid(0)):
            got, el = self.timed(c1.call, req_hmget("t", keys))
            self.assertHere(el, "Hmget")
            self.assertEqual([pyval(v) for v in got.values], keys)


class AccessTest(LocalReadsCase):
    """Users and rights (issue 14) hold for reads the router answers itself:
    they are checked before a read is answered here, over TLS and through
    the Redis protocol alike."""

    def test_rights_are_checked_before_a_local_answer(self):
        r = self.local_router(extra_yaml=users_yaml() + tls_yaml(router={"enabled": "true"}),
                              tls=tls_context())
        keys = keys_by_shard(b"a", 4, PARTITIONS, 2)
        every = keys[0] + keys[1]
        with r.client() as ops:
            self.assertEqual(ops.call(req_auth("ops", USERS["ops"][0])).status, 200)
            for t in ("orders", "secret"):
                for k in every:
                    self.assertEqual(ops.hset(t, k, b"v-" + k).status, 200)
        alice = r.client()
        self.addCleanup(alice.close)
        self.assertEqual(alice.call(req_auth("alice", USERS["alice"][0])).status, 200)
        anon = r.client()
        self.addCleanup(anon.close)
        ra = redis.Redis(host="127.0.0.1", port=self.rport, socket_timeout=10, username="alice",
                         password=USERS["alice"][0], ssl=True, ssl_ca_certs=cert_path("ca.crt"))
        self.addCleanup(ra.close)
        self.assertEqual(ra.hget("orders", keys[0][0]), b"v-" + keys[0][0])
        with stopped(*r.workers().values()):
            got, el = self.timed(alice.call, req_hmget("orders", every))  # allowed: read here
            self.assertHere(el, "Hmget")
            self.assertEqual([pyval(v) for v in got.values], [b"v-" + k for k in every])
            for q in (req_hget("secret", keys[0][0]), req_hexist("secret", keys[1][0]),
                      req_hmget("secret", every), req_hgetall("secret"),
                      req_hscan("secret"), req_hlen("secret")):
                name = q.WhichOneof("command")
                got, el = self.timed(alice.call, q)
                self.assertHere(el, name)
                self.assertEqual(got.status, 403, (name, got))
                self.assertIn('user "alice" may not run', got.message)
                self.assertFalse(got.values or got.pairs, (name, got))
                got = anon.call(q)
                self.assertEqual(got.status, 401, (name, got))
                self.assertFalse(got.values or got.pairs, (name, got))
            got, el = self.timed(ra.hmget, "orders", every)  # the Redis front door alike
            self.assertHere(el, "HMGET")
            self.assertEqual(got, [b"v-" + k for k in every])
            for call in (lambda: ra.hget("secret", keys[0][0]), lambda: ra.hgetall("secret"),
                         lambda: ra.hmget("secret", every), lambda: ra.hlen("secret")):
                t = time.monotonic()
                with self.assertRaisesRegex(redis.exceptions.NoPermissionError, "may not run"):
                    call()
                self.assertHere(time.monotonic() - t, "a refused Redis read")


class NodesTest(LocalReadsCase):
    def test_reads_from_other_nodes_still_go_to_the_worker(self):
        """A shard's reads through another node's router go to its worker
        (over TCP), and the worker answers them as before; only the node
        that runs the worker reads its files."""
        base_a, base_b = free_port_range(2), None
        for _ in range(20):
            base_b = free_port_range(2)
            if abs(base_a - base_b) >= 2:
                break
        a = self.router(start=False, name="A", shards=2, partitions=PARTITIONS, timeout="2s",
                        node_listen="127.0.0.1:%d" % base_a,
                        remote={1: "127.0.0.1:%d" % (base_b + 1)})
        b = self.router(start=False, name="B", shards=2, partitions=PARTITIONS, timeout="2s",
                        node_listen="127.0.0.1:%d" % base_b, remote={0: "127.0.0.1:%d" % base_a})
        a.start()
        b.start()
        keys = keys_by_shard(b"n", 2, PARTITIONS, 2)
        with a.client() as ca, b.client() as cb:
            self.assertTrue(wait_until(lambda: cb.hset("t", keys[0][0], b"x").status == 200, 10))
            self.assertTrue(wait_until(lambda: ca.hset("t", keys[1][0], b"y").status == 200, 10))
            self.assertEqual(pyval(cb.hget("t", keys[0][0]).values[0]), b"x")  # via A's worker
            with stopped(a.worker_pid(0)):
                got, el = self.timed(ca.hget, "t", keys[0][0])  # A reads its own shard here
                self.assertHere(el, "Hget")
                self.assertEqual(pyval(got.values[0]), b"x")
                got = cb.hget("t", keys[0][0])  # B asks A's worker, which is stopped
                self.assertEqual(got.status, 503, got.message)
                got, el = self.timed(cb.hget, "t", keys[1][0])  # B reads its own shard here
                self.assertHere(el, "Hget")
                self.assertEqual(pyval(got.values[0]), b"y")
        self.assertNotIn("shard 1: answering its reads", a.stderr())
        self.assertNotIn("shard 0: answering its reads", b.stderr())


class ReplicasTest(ReplicaFixtures, unittest.TestCase):
    """Shards with replicas (cluster.nodes): each node's router reads its
    own replica's files, under the same freshness rules; what that replica
    has not applied goes to the replicas, as before."""

    def test_replica_reads_here_never_answer_what_it_has_not_applied(self):
        mock, bases, rt = self.cluster(layout={"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]})
        a, b = rt["a"], rt["b"]
        k_old, k_new = b"old-0", b"new-0"
        s = shard_of_key(k_old)
        while shard_of_key(k_new) != s:
            k_new = k_new + b"x"
        with a.client() as c:
            old = c.call(req_hset(REPLICA_TABLE, k_old, "o"))
            self.assertEqual(old.status, 200, old.message)
        bw = b.workers()[s]
        with b.client() as cb:
            self.assertTrue(wait_until(
                lambda: cb.call(hget_at(REPLICA_TABLE, k_old, old.position)).status == 200, 10))
            time.sleep(1.1)  # a heartbeat of b's worker since it applied it
            with stopped(bw):
                t = time.monotonic()
                got = cb.call(hget_at(REPLICA_TABLE, k_old, old.position))
                self.assertLess(time.monotonic() - t, QUICK, "not answered by b's router")
                self.assertEqual((got.status, pyval(got.values[0])), (200, "o"))
                with a.client() as c:  # applied by a, not by b (stopped)
                    new = c.call(req_hset(REPLICA_TABLE, k_new, "n"))
                    self.assertEqual(new.status, 200, new.message)
                # b's files do not hold it: the read goes to the replicas (b's
                # worker times out, a answers)
                got = cb.call(hget_at(REPLICA_TABLE, k_new, new.position))
                self.assertEqual((got.status, pyval(got.values[0]) if got.values else None),
                                 (200, "n"), got.message)

    def test_snapshot_bootstrap_replaces_what_the_router_reads(self):
        layout = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
        mock, bases, rt = self.cluster(layout=layout)
        a, b = rt["a"], rt["b"]
        keys = [b"boot-%d" % i for i in range(40)]
        s = 0
        mine = [k for k in keys if shard_of_key(k) == s]
        with a.client() as c:
            for k in mine[:5]:
                self.assertEqual(c.call(req_hset(REPLICA_TABLE, k, "v1")).status, 200)
        self.assertTrue(wait_until(lambda: all(
            v["lag"] == 0 for v in kafka_parts(self.worker_info(b, s), "users").values()), 20))
        env = os.path.join(b.data_dir, "shard-%d" % s)
        bw = b.workers()[s]
        time.sleep(1.1)  # a heartbeat of b's worker since it applied them
        with b.client() as cb, stopped(bw):  # b's router reads its files now
            t = time.monotonic()
            got = cb.call(req_hget(REPLICA_TABLE, mine[0]))
            self.assertLess(time.monotonic() - t, QUICK, "not answered by b's router")
            self.assertEqual((got.status, pyval(got.values[0])), (200, "v1"))
        # b's shard-0 files go away (its router still maps them), then its
        # worker dies: the next one starts with no data.mdb and copies a's
        copies = b.stderr().count("copied shard %d" % s)  # b's start may have copied too
        self.assertNotIn("serves from other files", b.stderr())
        with stopped(bw):
            os.unlink(os.path.join(env, "data.mdb"))
            with a.client() as c:  # only in a's copy: b's old files never see it
                for k in mine[5:]:
                    self.assertEqual(c.call(req_hset(REPLICA_TABLE, k, "v2")).status, 200)
            os.kill(bw, signal.SIGKILL)
        self.assertTrue(wait_until(
            lambda: b.stderr().count("copied shard %d" % s) == copies + 1, 20), b.stderr()[-3000:])
        self.assertTrue(wait_until(lambda: "shard %d: its worker serves from other files now"
                                   % s in b.stderr(), 10), b.stderr()[-3000:])
        self.wait_workers(b)
        new = b.workers()[s]
        self.assertNotEqual(new, bw)
        self.assertTrue(wait_until(lambda: all(
            v["lag"] == 0 for v in kafka_parts(self.worker_info(b, s), "users").values()), 20))
        time.sleep(1.1)  # a heartbeat of the new worker
        with b.client() as cb, stopped(new):  # read by b's router, from the copy
            for k in mine:
                t = time.monotonic()
                got = cb.call(req_hget(REPLICA_TABLE, k))
                self.assertLess(time.monotonic() - t, QUICK, "not answered by b's router")
                self.assertEqual((got.status, pyval(got.values[0]) if got.values else None),
                                 (200, "v1" if k in mine[:5] else "v2"), got.message)
        self.assertIn("copying a snapshot from node a", b.stderr())
        self.assertIn("started a new lock file", b.stderr())  # the old one was the old file's


LMDB = ctypes.util.find_library("lmdb")
MDB_RDONLY = 0x20000
MDB_NOTLS = 0x200000

HOLD_SNAPSHOT = r"""
import ctypes, sys, time
lib = ctypes.CDLL(sys.argv[1])
env, txn = ctypes.c_void_p(), ctypes.c_void_p()
assert lib.mdb_env_create(ctypes.byref(env)) == 0
assert lib.mdb_env_open(env, sys.argv[2].encode(), %d, 0o600) == 0
assert lib.mdb_txn_begin(env, None, %d, ctypes.byref(txn)) == 0
print("holding", flush=True)
time.sleep(60)
""" % (MDB_RDONLY, MDB_RDONLY)

# Takes every free reader slot of environment argv[2] (MDB_NOTLS: a slot
# per transaction) and holds them.
TAKE_EVERY_SLOT = r"""
import ctypes, sys, time
lib = ctypes.CDLL(sys.argv[1])
env = ctypes.c_void_p()
assert lib.mdb_env_create(ctypes.byref(env)) == 0
assert lib.mdb_env_open(env, sys.argv[2].encode(), %d, 0o600) == 0
held, rc = [], 0
while rc == 0:
    held.append(ctypes.c_void_p())
    rc = lib.mdb_txn_begin(env, None, %d, ctypes.byref(held[-1]))
print("holding %%d" %% (len(held) - 1), flush=True)
time.sleep(60)
""" % (MDB_RDONLY | MDB_NOTLS, MDB_RDONLY)

@unittest.skipIf(LMDB is None or shutil.which("mdb_stat") is None, "liblmdb and mdb_stat needed")
class ReaderSlotsTest(LocalReadsCase):
    def readers(self, env):
        return lmdb_readers(env)

    def test_slot_of_a_dead_reader_is_cleared(self):
        r = self.local_router()
        self.fill(r, "t", 1)
        router = str(router_pids(r)[0])
        env = os.path.join(r.data_dir, "shard-0")
        p = subprocess.Popen([sys.executable, "-c", HOLD_SNAPSHOT, LMDB, env],
                             stdout=subprocess.PIPE, text=True)
        self.addCleanup(p.kill)
        self.assertEqual(p.stdout.readline().strip(), "holding")
        self.assertIn(str(p.pid), self.readers(env))
        with r.client() as c:  # the router holds one slot of its own, between reads too
            for _ in range(20):
                c.hget("t", b"x")
        self.assertEqual(self.readers(env).count(router), 1)
        p.kill()  # dies holding a snapshot: its slot would pin pages for ever
        p.wait(10)
        self.assertTrue(wait_until(lambda: str(p.pid) not in self.readers(env), 5),
                        "the dead reader's slot was not cleared: %r" % self.readers(env))
        self.assertIn("shard 0: cleared 1 reader slot(s) left by processes that died",
                      r.stderr())
        self.assertEqual(self.readers(env).count(router), 1)

    def test_a_full_reader_table_sends_reads_to_the_worker_logged_seldom(self):
        """Every reader slot taken (another process holds them all) while the
        router has none: each read of the shard goes to its worker, and the
        failure, met by every read, is logged at most every 10 s, not once
        per read. Once slots are free again, reads are answered here."""
        r = self.local_router()
        keys = self.fill(r, "t", 3)
        env = os.path.join(r.data_dir, "shard-0")
        # the router holds shard 0's environment open before the slots go
        self.assertTrue(wait_until(lambda: "shard 0: answering its reads from" in r.stderr(), 10))
        with r.client() as c:
            self.assertEqual(c.hset("u", keys[0][0], b"u").status, 200)
            p = subprocess.Popen([sys.executable, "-c", TAKE_EVERY_SLOT, LMDB, env],
                                 stdout=subprocess.PIPE, text=True)
            self.addCleanup(p.stdout.close)
            self.addCleanup(p.kill)
            self.assertTrue(p.stdout.readline().startswith("holding"))
            # a table read here for the first time: the router's snapshot
            # commits (to keep the table's handle), which gives its slot up
            self.assertEqual(pyval(c.hget("u", keys[0][0]).values[0]), b"u")
            for i in range(100):
                k = keys[0][i % 3]
                got = c.hget("t", k)
                self.assertEqual((got.status, pyval(got.values[0])), (200, b"v-" + k),
                                 got.message)
            log = r.stderr()
            self.assertIn("shard 0: a local read failed (storage error: MDB_READERS_FULL", log)
            self.assertEqual(log.count("MDB_READERS_FULL"), 1, "logged once per read")
            p.kill()
            p.wait(10)
            self.assertTrue(wait_until(lambda: str(p.pid) not in self.readers(env), 5))
            with stopped(r.workers()[0]):
                got, el = self.timed(c.hget, "t", keys[0][0])
                self.assertHere(el, "Hget")
                self.assertEqual(pyval(got.values[0]), b"v-" + keys[0][0])

    def test_worker_clears_a_dead_readers_slot_when_no_router_reads(self):
        """A reader killed holding a snapshot (a router process, a backup
        tool) leaves a slot that keeps every page freed after it from being
        reused: each write then grows data.mdb. With no router process
        reading the environment (local reads off here; or every router
        process restarting) nobody else clears it: the worker does, once
        the file grows. Without that, this workload grew it to ~95 MB."""
        r = self.local_router(router_yaml=["local_reads: false"])
        keys = keys_by_shard(b"d", 20, PARTITIONS, 2)[0]
        env = os.path.join(r.data_dir, "shard-0")
        with r.client() as c:
            for k in keys:
                self.assertEqual(c.hset("t", k, b"x").status, 200)
            p = subprocess.Popen([sys.executable, "-c", HOLD_SNAPSHOT, LMDB, env],
                                 stdout=subprocess.PIPE, text=True)
            self.addCleanup(p.stdout.close)
            self.addCleanup(p.kill)
            self.assertEqual(p.stdout.readline().strip(), "holding")
            p.kill()  # dies holding its snapshot
            p.wait(10)
            self.assertIn(str(p.pid), self.readers(env))
            for _ in range(200):  # each round replaces 400 kB
                got = c.pipeline([req_hset("t", k, os.urandom(20000)) for k in keys])
                self.assertEqual({g.status for g in got}, {200})
        self.assertNotIn(str(p.pid), self.readers(env))
        size = os.path.getsize(os.path.join(env, "data.mdb"))
        self.assertLess(size, 16 << 20, "data.mdb grew to %d bytes" % size)
        self.assertIn("node[0] INFO  cleared 1 reader slot(s) left by processes that died",
                      r.stderr())

    def test_slot_of_a_worker_killed_mid_write_is_cleared(self):
        """A worker killed while it writes leaves its reader slot behind (its
        per-turn snapshot); the next worker, or the router within a second,
        clears it, and the router reads the new worker's commits."""
        r = self.local_router()
        env = os.path.join(r.data_dir, "shard-0")
        keys = (k for k in (b"s%d" % i for i in itertools.count()) if r.shard_of(k) == 0)
        stop, acked = threading.Event(), []

        def writer():
            with r.client() as c:
                while not stop.is_set():
                    batch = list(itertools.islice(keys, 8))
                    if not batch:
                        break  # every key tried: 503s while the worker restarts go fast
                    for k, resp in zip(batch, c.pipeline([req_hset("s", k, k) for k in batch])):
                        if resp.status == 200:
                            acked.append(k)
                        else:  # 503 while the worker restarts
                            time.sleep(0.001)

        t = threading.Thread(target=writer)
        t.start()
        self.addCleanup(t.join, 10)
        self.addCleanup(stop.set)
        self.assertTrue(wait_until(lambda: len(acked) > 50, 10))
        old = str(r.worker_pid(0))
        self.assertIn(old, self.readers(env))
        r.kill_worker(0)
        new = r.wait_worker(0, not_pid=int(old))
        self.assertIsNotNone(new)
        self.assertTrue(wait_until(lambda: old not in self.readers(env), 5),
                        "the killed worker's slot stayed: %r" % self.readers(env))
        n = len(acked)
        self.assertTrue(wait_until(lambda: len(acked) > n + 50, 10), "writes did not resume")
        stop.set()
        t.join(10)
        with r.client() as c, stopped(new):  # every acknowledged write, read here
            got = c.call(req_hmget("s", acked))
            self.assertEqual([pyval(v) for v in got.values], acked)


@unittest.skipIf(KCAT is None, "kcat is needed")
class BoundTablesTest(FreshnessFixtures, unittest.TestCase):
    def test_bound_reads_here_follow_the_workers_rules(self):
        topic, parts = "users", 2
        m = self.mock({topic: parts})
        keys = keys_in_partition(0, parts, 5)
        kcat_produce(m.bootstrap, topic, [(k, b"v-" + k) for k in keys])
        r = self.router(m, [(topic, "users", "raw", parts)], shards=2, timeout="2s")
        self.wait_applied(r, 0, topic, 0, len(keys))
        worker = r.workers()[0]
        with r.client() as c:
            self.assertTrue(wait_until(lambda: c.hget("users", keys[0]).status == 200, 10))
            time.sleep(1.1)  # a heartbeat since the worker caught up
            with stopped(worker):
                t = time.monotonic()
                got = c.hget("users", keys[1])
                self.assertLess(time.monotonic() - t, QUICK, "not answered here")
                self.assertEqual(pyval(got.values[0]), b"v-" + keys[1])
                # a position it has applied: answered here
                seen = pos_token([(topic, 0, len(keys) - 1)])
                t = time.monotonic()
                got = c.call(with_options(req_hget("users", keys[2]), position=seen))
                self.assertLess(time.monotonic() - t, QUICK, "not answered here")
                self.assertEqual(pyval(got.values[0]), b"v-" + keys[2])
                # one this snapshot has not applied: only the worker may say
                ahead = pos_token([(topic, 0, len(keys) + 3)])
                got = c.call(with_options(req_hget("users", keys[1]), position=ahead))
                self.assertEqual(got.status, 503, got.message)
                self.assertIn("shard 0", got.message)
                time.sleep(3.5)  # no heartbeat for longer than 3 s: its Kafka view is old
                got = c.hget("users", keys[1])
                self.assertEqual(got.status, 503, got.message)
            self.assertTrue(wait_until(lambda: c.hget("users", keys[1]).status == 200, 10))


if __name__ == "__main__":
    unittest.main()
