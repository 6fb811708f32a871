"""I/O errors on the data directory, by fault injection: nothing
acknowledged is lost.

A node (master, one router process, two workers, Kafka off) runs with
libkvs_test_eio.so preloaded (tests/integration/eio_shim.c) in its
workers (KVS_TEST_EIO_ROLE=node): during a wall-clock window
(KVS_TEST_EIO_AT_MS, _FOR_MS) the calls LMDB makes to put a commit on disk
(fdatasync; pwrite and writev of the data pages; pwrite of the meta page,
through an O_DSYNC descriptor with storage.sync: full) fail with EIO or
ENOSPC, on files under the node's data_dir only (KVS_TEST_EIO_PATH: never
a socket or the log).

Through the window several connections pipeline writes (Hset, Hmset over
both shards, Hdel of keys they wrote) to keys no other connection touches,
so each key's possible final values are known: a write answered 200 (or
named written by a 207) fixes the key's value; an error answer without
outcome_unknown changes nothing; one with it (or a connection closed
before the answer) may or may not have happened. Every answer must be 200,
207, or 500/503/507 with a message. After the window the node must serve
again (a worker whose environment LMDB gave up on must stop and be
restarted, not answer errors for ever), and every key must hold one of its
possible values: once after the window, and again after kill -9 of both
workers and their restart, read through the router. No process may die of
a signal.

KVS_TEST_EIO_SPEC ("every=N" or "ppm=N") and KVS_TEST_EIO_SEED change the
rate and seed of every test, for exploring by hand; the run prints its
tallies when KVS_TEST_EIO_SPEC is set (empty: each test's own), and the
node's log too with KVS_TEST_EIO_LOG=1.
"""
import os
import re
import threading
import time
import unittest

from kafkatest import wait_until
from kvstest import BUILD_DIR, SANITIZED, pb, pyval, req_hdel, req_hget, req_hmset, req_hset
from pipelinetest import PipelineThread
from routertest import START_TIMEOUT, RouterTestCase

SHIM = os.path.join(BUILD_DIR, "libkvs_test_eio.so")
WINDOW_MS = 1000  # short: a worker restarted 4 times in it plus kill -9 would be crash-looping (10 s)
START_BUDGET_MS = 2000 if not SANITIZED else 4000
# run_window's first budget: a node starts in 0.2 s, so most of START_BUDGET_MS
# was spent waiting for the window. One that starts slower than this is
# started again with twice the budget, then four times it (past the old one).
FIRST_BUDGET_MS = START_BUDGET_MS // 2
CONNECTIONS = 3
ERRORS = (500, 503, 507)
ABSENT = None


def spec(default, seed=1):
    return (os.environ.get("KVS_TEST_EIO_SPEC") or default,
            int(os.environ.get("KVS_TEST_EIO_SEED") or seed))


class Writer(PipelineThread):
    """One connection pipelining batches of writes until `stop` is set,
    reconnecting when the node closes it. Its keys are its own; `possible`
    maps each key to the set of values it may hold (ABSENT for none)."""

    timeout = 10.0

    def __init__(self, addr, tid, seed, stop):
        super().__init__(addr, tid, seed, stop)
        self.possible = {}
        self.written = []  # keys whose last known state is a value (Hdel candidates)
        self.seen503 = 0
        self.failed_msgs = []  # the first 500s' messages

    def val(self):
        if self.rng.random() < 0.05:
            return self.rng.randbytes(self.rng.randint(8 << 10, 64 << 10))
        return "v%d" % self.rng.randint(0, 1 << 30)

    def batch(self):
        """[(request, effects)]: effects lists (key, value it writes)."""
        out = []
        for _ in range(self.rng.randint(4, 12)):
            what = self.rng.random()
            if what < 0.2 and self.written:
                k = self.written.pop(self.rng.randrange(len(self.written)))
                out.append((req_hdel("w", k), [(k, ABSENT)]))
            elif what < 0.7:
                req = req_hset("w", self.key(), self.val())
                out.append((req, [(req.hset.pair.key, pyval(req.hset.pair.value))]))
            else:
                pairs = [(self.key(), self.val()) for _ in range(self.rng.randint(2, 5))]
                req = req_hmset("w", pairs)
                out.append((req, [(p.key, pyval(p.value)) for p in req.hmset.pairs]))
        for _, effects in out:
            for k, _ in effects:
                self.possible.setdefault(k, {ABSENT})
        return out

    def settle(self, effects, resp):
        """Applies an answer (None: none came) to the keys' possible values."""
        unwritten, unknown = set(), resp is None or resp.outcome_unknown
        if resp is not None and resp.status == 207:
            unwritten = {p.key for p in resp.pairs}
        for k, v in effects:
            if resp is not None and (resp.status == 200 or
                                     (resp.status == 207 and k not in unwritten)):
                self.possible[k] = {v}
            elif unknown:
                self.possible[k].add(v)
            # else: refused, nothing written: unchanged
            if v is not ABSENT and self.possible[k] != {ABSENT}:
                self.written.append(k)

    def check(self, req, resp):
        if resp.status in (200, 207) and (resp.status == 200 or resp.message):
            if resp.status == 207 and req.WhichOneof("command") != "hmset":
                return "207 to %s" % req.WhichOneof("command")
            return None
        if resp.status in ERRORS and resp.message:
            return None
        return "status %d %r" % (resp.status, resp.message)

    def status_key(self, resp):
        return "%d%s" % (resp.status, "u" if resp.outcome_unknown else "")

    def answer(self, req, effects, resp):
        if resp.status == 500 and len(self.failed_msgs) < 5:
            self.failed_msgs.append(resp.message)
        bad = self.check(req, resp)
        if bad is None and resp.status == 200 and req.WhichOneof("command") == "hdel":
            k = req.hdel.key
            prev = pyval(resp.values[0]) if len(resp.values) == 1 else "no value"
            if prev not in self.possible[k]:
                bad = "Hdel %r: previous value %r, which no answer allows" % (k, prev)
        self.settle(effects, resp if bad is None else None)
        return bad

    def lost(self, items):
        for _, effects in items:
            self.settle(effects, None)

    def after_batch(self):
        n503 = self.statuses.get("503", 0) + self.statuses.get("503u", 0)
        if n503 > self.seen503:
            # a worker is restarting: back off a little, as a client
            # would (the run stays short: fewer keys to check)
            self.seen503 = n503
            time.sleep(0.02)


class EioTest(RouterTestCase):

    def serves(self, r):
        try:
            with r.client(timeout=5.0) as c:
                for i in range(2):  # a key on each shard
                    resp = c.hset("after", ("k%d" % i).encode(), "v")
                    if resp.status != 200:
                        self.why = "%d %s" % (resp.status, resp.message)
                        return False
                return c.hmset("after", [(b"a%d" % i, "v") for i in range(8)]).status == 200
        except (OSError, EOFError) as e:
            self.why = repr(e)
            return False

    def check_keys(self, r, possible, when):
        keys = sorted(possible)
        with r.client(timeout=10.0) as c:
            for at in range(0, len(keys), 500):
                part = keys[at:at + 500]
                resp = c.hmget("w", part)
                self.assertEqual(resp.status, 200, resp.message)
                for k, v in zip(part, resp.values):
                    got = pyval(v) if v.WhichOneof("kind") is not None else ABSENT
                    self.assertIn(got, possible[k], "%s: key %r holds %r, which no answer allows"
                                  % (when, k, got if not isinstance(got, bytes) else got[:40]))

    def run_window(self, sync, spec, seed, calls="sync,write", errno_name="EIO", when="before",
                   before_kill=None):
        self.assertTrue(os.path.exists(SHIM), SHIM)
        kind, n = spec.split("=")
        for budget_ms in (FIRST_BUDGET_MS, 2 * FIRST_BUDGET_MS, 4 * FIRST_BUDGET_MS):
            at_ms = int(time.time() * 1000) + budget_ms
            env = {"LD_PRELOAD": SHIM, "KVS_TEST_EIO_ROLE": "node",
                   "KVS_TEST_EIO_" + kind.upper(): n, "KVS_TEST_EIO_SEED": str(seed),
                   "KVS_TEST_EIO_CALLS": calls, "KVS_TEST_EIO_ERRNO": errno_name,
                   "KVS_TEST_EIO_WHEN": when, "KVS_TEST_EIO_AT_MS": str(at_ms),
                   "KVS_TEST_EIO_FOR_MS": str(WINDOW_MS)}
            if SANITIZED:
                asan = os.environ.get("ASAN_OPTIONS", "")
                env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
            r = self.router(start=False, shards=2, partitions=16, sync=sync, env=env)
            env["KVS_TEST_EIO_PATH"] = r.data_dir
            r.env["KVS_TEST_EIO_PATH"] = r.data_dir
            r.start()
            lead = at_ms / 1000.0 - time.time()
            if lead > 0.05:
                break
            r.kill_all()  # its window began at its start: not the run this test is
        self.assertGreater(lead, 0.05, "the node took too long to start: raise START_BUDGET_MS")

        # The writers start shortly before the window (fewer keys to check).
        time.sleep(max(0.0, lead - 0.3))
        stop = threading.Event()
        writers = [Writer(r.addr, t, seed, stop) for t in range(CONNECTIONS)]
        for w in writers:
            w.start()
        time.sleep(at_ms / 1000.0 - time.time() + WINDOW_MS / 1000.0 + 0.2)
        stop.set()
        for w in writers:
            w.join(30)
            self.assertFalse(w.is_alive(), "writer %d stuck" % w.tid)

        deadline = time.monotonic() + 10
        self.why = "an answer was not 200"
        while not self.serves(r):
            self.assertLess(time.monotonic(), deadline,
                            "node not serving after the window: " + self.why)
            time.sleep(0.1)

        t_served = time.monotonic()
        possible = {}
        for w in writers:
            possible.update(w.possible)
        self.check_keys(r, possible, "after the window")

        if before_kill is not None:
            before_kill(r)
        # kill -9 both workers: what they acknowledged must be on disk.
        old = {s: r.kill_worker(s) for s in (0, 1)}
        for s in (0, 1):
            self.assertIsNotNone(r.wait_worker(s, not_pid=old[s], timeout=START_TIMEOUT),
                                 "worker %d not restarted" % s)
        deadline = time.monotonic() + 10
        while not self.serves(r):
            self.assertLess(time.monotonic(), deadline,
                            "node not serving after kill -9: " + self.why)
            time.sleep(0.1)
        self.check_keys(r, possible, "after kill -9 and restart")

        log = r.stderr()
        self.assertIsNone(r.proc.poll(), "the master exited:\n" + log[-3000:])
        killed = [k for k in re.findall(r".*killed by signal.*", log) if "KILL" not in k]
        self.assertEqual(killed, [], "\n".join(killed))
        injected = [int(f) for f in re.findall(r"kvs-test-eio: pid \d+ disarmed[^:]*: (\d+) of",
                                               log)]
        self.assertTrue(injected and sum(injected) > 0,
                        "no call failed: the test tested nothing\n" + log[-3000:])
        problems = [p for w in writers for p in w.problems]
        self.assertEqual(problems, [], "\n".join(problems[:40]))
        statuses = {}
        for w in writers:
            for s, c in w.statuses.items():
                statuses[s] = statuses.get(s, 0) + c
        out = {"answers": sum(w.answers for w in writers), "statuses": statuses,
               "failed_msgs": [m for w in writers for m in w.failed_msgs],
               "check_s": round(time.monotonic() - t_served, 2),
               "keys": len(possible),
               "acked": sum(1 for p in possible.values() if len(p) == 1 and ABSENT not in p),
               "closes": sum(w.closes for w in writers), "failed_calls": sum(injected),
               "gave_up": log.count("LMDB gave up on the environment"),
               "recommits": log.count("committing anew"),
               "exits": re.findall(r".*exited with status.*", log)}
        if "KVS_TEST_EIO_SPEC" in os.environ:
            if os.environ.get("KVS_TEST_EIO_LOG"):
                print(log)
            print(sync, spec, seed, calls, errno_name, when, out)
        return out

    def run_until_gave_up(self, sync, spec_seed, **kw):
        """run_window, again with the next seed (at most three windows)
        while no commit failed writing LMDB's meta page: that is what the
        callers test, and a window's failures land on meta pages only by
        chance. At this machine's rate of commits a window without one is
        rare; a slow disk commits fewer, larger batches (a loaded CI run
        once failed 14 calls in its window, not one a meta page)."""
        spec_text, seed = spec_seed
        for attempt in range(3):
            out = self.run_window(sync, spec_text, seed + attempt, **kw)
            if out["gave_up"] > 0:
                break
        return out

    def assert_gave_up(self, out):
        """Some commit failed writing LMDB's meta page: its answers said
        outcome_unknown, and its worker stopped (exit status 1) and was
        restarted rather than answer 500 for ever (the run then checked it
        serves)."""
        self.assertGreater(out["gave_up"], 0, out)
        self.assertGreater(out["statuses"].get("500u", 0), 0, out)
        self.assertTrue(any("exited with status 1" in e for e in out["exits"]), out)
        self.assertFalse(any("not restarting" in e for e in out["exits"]), out)

    def test_a_directory_that_cannot_be_synced_is_not_served_from(self):
        # A data.mdb just created (or a snapshot copy renamed into place) is
        # a name in memory until its directory is synced: commits
        # acknowledged in it would go with it on power loss. While the
        # workers' directory syncs fail they stop at open (exit 1, restarted);
        # once the syncs work the node serves.
        self.assertTrue(os.path.exists(SHIM), SHIM)
        window_ms = 1500
        at_ms = int(time.time() * 1000)
        env = {"LD_PRELOAD": SHIM, "KVS_TEST_EIO_ROLE": "node", "KVS_TEST_EIO_EVERY": "1",
               "KVS_TEST_EIO_CALLS": "fsync", "KVS_TEST_EIO_DIRS": "1",
               "KVS_TEST_EIO_AT_MS": str(at_ms), "KVS_TEST_EIO_FOR_MS": str(window_ms)}
        if SANITIZED:
            asan = os.environ.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
        r = self.router(start=False, shards=2, partitions=16, env=env)
        r.env["KVS_TEST_EIO_PATH"] = r.data_dir
        r.start()  # ready only once both workers serve: after the window
        self.assertGreaterEqual(time.time() * 1000, at_ms + window_ms)
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
        log = r.stderr()
        self.assertIn("cannot sync the directory", log)
        self.assertRegex(log, r"exited with status 1")
        killed = [k for k in re.findall(r".*killed by signal.*", log)]
        self.assertEqual(killed, [], "\n".join(killed))

    def test_failing_syncs_and_writes_with_sync_full(self):
        out = self.run_until_gave_up("full", spec("ppm=20000"))
        self.assertGreater(out["answers"], 100, out)
        self.assert_gave_up(out)

    def test_failing_syncs_and_writes_with_sync_batch(self):
        out = self.run_until_gave_up("batch", spec("ppm=20000"))
        self.assertGreater(out["answers"], 100, out)
        self.assert_gave_up(out)

    def test_failing_writes_on_a_full_disk_with_sync_batch(self):
        out = self.run_window("batch", *spec("ppm=20000"), calls="write", errno_name="ENOSPC")
        self.assertGreater(out["answers"], 100, out)
        self.assertGreater(out["statuses"].get("507", 0), 0, out)

    def test_a_failed_periodic_sync_with_no_commit_after_it_commits_anew(self):
        """storage.sync batch: a commit leaves its meta page for the periodic
        sync. When that sync fails, the kernel may have dropped the page's
        write-back for good (a later sync would not write it), so with no
        commit since, the next periodic sync commits anew first: a new meta
        page that it then writes (node_store_sync). A commit that wrote
        nothing (a batch whose one write was refused: a new table past
        storage.max_tables) writes no meta page, and must not count as
        one."""
        at_ms = int(time.time() * 1000) + START_BUDGET_MS
        env = {"LD_PRELOAD": SHIM, "KVS_TEST_EIO_ROLE": "node", "KVS_TEST_EIO_EVERY": "1",
               "KVS_TEST_EIO_CALLS": "fdatasync", "KVS_TEST_EIO_AT_MS": str(at_ms),
               "KVS_TEST_EIO_FOR_MS": "1500"}  # longer than the 1 s between syncs
        if SANITIZED:
            asan = os.environ.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
        r = self.router(start=False, shards=1, partitions=16, sync="batch", env=env,
                        storage_yaml=["max_tables: 1"])
        r.env["KVS_TEST_EIO_PATH"] = r.data_dir
        r.start()

        def recommits():  # kvs_commit_recommits_total: commits anew that succeeded
            req = pb.CommandRequest()
            req.metrics.SetInParent()
            with r.worker_client(0) as w:
                fams = {f.name: f for f in w.call(req).ops.metrics}
            return fams["kvs_commit_recommits_total"].samples[0].value

        lead = at_ms / 1000.0 - time.time()
        self.assertGreater(lead, 0.4, "the node took too long to start: raise START_BUDGET_MS")
        time.sleep(lead - 0.3)
        with r.client() as c:  # committed before the window; its meta page waits
            self.assertEqual(c.call(req_hset("t", b"k", "v")).status, 200)
            self.assertTrue(wait_until(lambda: "periodic sync failed" in r.stderr(), 5),
                            r.stderr()[-3000:])
            time.sleep(max(0.0, (at_ms + 1500) / 1000.0 + 0.02 - time.time()))
            refused = c.call(req_hset("u", b"k", "v"))  # an empty commit
            self.assertEqual(refused.status, 507, refused.message)
        # The next sync commits anew, whatever the empty commit did.
        self.assertTrue(wait_until(lambda: recommits() >= 1, 5), r.stderr()[-3000:])
        old = r.kill_worker(0)
        self.assertIsNotNone(r.wait_worker(0, not_pid=old, timeout=START_TIMEOUT))
        with r.client() as c:
            self.assertTrue(wait_until(lambda: c.call(req_hget("t", b"k")).status == 200, 10))

    def test_syncs_that_fail_after_reaching_the_disk_with_sync_full(self):
        out = self.run_until_gave_up("full", spec("ppm=30000"), calls="sync,dsync", when="after")
        self.assertGreater(out["answers"], 100, out)
        self.assert_gave_up(out)

    def test_failing_fdatasyncs_with_sync_batch_leave_the_worker_serving(self):
        """A failed fdatasync fails its commit before LMDB writes the meta
        page: 500 without outcome_unknown, nothing stored, and the worker
        serves on. (The kernel may have dropped the unsynced meta page of
        the commit before, storage.sync: batch, for good: the next commit
        writes a new one, or, with none, the next periodic sync commits
        anew, as the test below shows.)"""
        out = self.run_window("batch", *spec("ppm=20000"), calls="fdatasync")
        self.assertGreater(out["answers"], 100, out)
        self.assertGreater(out["statuses"].get("500", 0), 0, out)
        self.assertEqual(out["gave_up"], 0, out)
        self.assertEqual(out["exits"], [], out)
        # The answer names the cause, as the log does.
        self.assertTrue(any("Input/output error" in m for m in out["failed_msgs"]),
                        out["failed_msgs"])


if __name__ == "__main__":
    unittest.main()
