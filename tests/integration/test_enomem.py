"""Out of memory in kvs's own code, by fault injection.

A node (master, one router process, two workers, Kafka off, the shipped
defaults otherwise) runs with libkvs_test_enomem.so preloaded
(tests/integration/enomem_shim.c). The shim is inherited by every process
the node spawns; KVS_TEST_ENOMEM_ROLE picks the one whose malloc, calloc,
realloc and aligned allocations fail, during a wall-clock window
(KVS_TEST_ENOMEM_AT_MS, _FOR_MS), so start-up is not affected and a
process restarted inside the window fails the same way.

During the window several connections pipeline a mixed workload (Hset of
small and large values, Hmset, Hget, Hmget, Hgetall, Hscan, Info, bad
requests) and every answer must be well-formed: the right 200 (reads of
the fixed table return exactly what it holds, never a 404), the expected
400 for a bad request, or 500/503/507 (207 for an Hmset split over shards)
with a message. A connection the node closes is allowed (it cannot serve
a client it has no memory for); its unanswered requests are of unknown
outcome. No process may die of a signal. After the window the node must
serve normally: every write acknowledged with 200 reads back, and every
write refused without outcome_unknown wrote nothing.

Not in the sanitizer build (ASan replaces the allocator): skipped there.

KVS_TEST_ENOMEM_SPEC ("every=N" or "ppm=N", default ppm=20000) and
KVS_TEST_ENOMEM_SEED (default 1) change the rate and the seed, for
exploring by hand; the run prints its tallies with -v.
"""
import os
import random
import re
import socket
import threading
import time
import unittest

from kvstest import BUILD_DIR, SANITIZED, Client, encode, pb, pyval, req_hget, req_hgetall, \
    req_hmget, req_hmset, req_hscan, req_hset
from routertest import RouterTestCase

SHIM = os.path.join(BUILD_DIR, "libkvs_test_enomem.so")
WINDOW_MS = 2500       # allocations fail this long
ARM_DELAY_MS = 300     # from the end of the node's start to the window
CONNECTIONS = 3
FIXED = {("f%02d" % i).encode(): "fixed-%d" % i for i in range(12)}
ERRORS = (500, 503, 507)
SPEC = (os.environ.get("KVS_TEST_ENOMEM_SPEC", "ppm=20000"),
        int(os.environ.get("KVS_TEST_ENOMEM_SEED", "1")))  # what a valid request may get while memory fails


def req_info():
    r = pb.CommandRequest()
    r.info.SetInParent()
    return r


def req_bad_empty_table():
    return req_hset("", b"k", "v")


def req_bad_nothing():
    return pb.CommandRequest()


class Driver(threading.Thread):
    """One client connection pipelining batches until `stop` is set; it
    reconnects when the node closes it. Writes go to unique keys of table
    "w" (never written twice), so each key's expected final state is known:
    acked (200), refused (an error answer without outcome_unknown: nothing
    written) or unknown."""

    def __init__(self, addr, tid, seed, stop):
        super().__init__(daemon=True)
        self.addr, self.tid, self.stop = addr, tid, stop
        self.rng = random.Random(seed * 1000 + tid)
        self.acked, self.refused = {}, set()
        self.problems = []
        self.statuses = {}
        self.closes = 0
        self.answers = 0
        self.n = 0

    def key(self):
        self.n += 1
        return ("t%d-%06d" % (self.tid, self.n)).encode()

    def val(self):
        if self.rng.random() < 0.1:
            return self.rng.randbytes(self.rng.randint(64 << 10, 512 << 10))
        return "v%d" % self.rng.randint(0, 1 << 30)

    def batch(self):
        """[(request, check)]: check(resp) returns a problem text or None."""
        out = []
        for _ in range(self.rng.randint(4, 12)):
            what = self.rng.random()
            if what < 0.35:
                k, v = self.key(), self.val()
                out.append((req_hset("w", k, v), self.write_check([(k, v)])))
            elif what < 0.5:
                pairs = [(self.key(), self.val()) for _ in range(self.rng.randint(2, 6))]
                out.append((req_hmset("w", pairs), self.write_check(pairs)))
            elif what < 0.6:
                k = self.rng.choice(sorted(FIXED))
                out.append((req_hget("fixed", k), self.fixed_check([k])))
            elif what < 0.7:
                ks = self.rng.sample(sorted(FIXED), 4) + [b"absent"]
                out.append((req_hmget("fixed", ks), self.fixed_check(ks)))
            elif what < 0.78:
                out.append((req_hgetall("fixed"), self.pairs_check(whole=True)))
            elif what < 0.86:
                out.append((req_hscan("fixed", b"", 5), self.pairs_check(whole=False)))
            elif what < 0.93:
                out.append((req_info(), self.plain_check))
            else:
                bad = self.rng.choice([req_bad_empty_table, req_bad_nothing])
                out.append((bad(), self.bad_check))
        return out

    # ---- checks
    @staticmethod
    def error_ok(resp):
        if resp.status in ERRORS and resp.message:
            return None
        return "status %d %r" % (resp.status, resp.message)

    def write_check(self, pairs):
        def check(resp):
            if resp.status == 200:
                for k, v in pairs:
                    self.acked[k] = v
                return None
            if resp.status == 207 and len(pairs) > 1:
                unwritten = {p.key for p in resp.pairs}
                for k, v in pairs:
                    if k in unwritten:
                        self.refused.add(k)
                    else:
                        self.acked[k] = v
                return None if resp.message else "207 without a message"
            bad = self.error_ok(resp)
            if bad is None and not resp.outcome_unknown:
                self.refused.update(k for k, _ in pairs)
            return bad
        return check

    def fixed_check(self, keys):
        def check(resp):
            if resp.status != 200:
                return self.error_ok(resp)
            if len(resp.values) != len(keys):
                return "%d values for %d keys" % (len(resp.values), len(keys))
            for k, v in zip(keys, resp.values):
                if pyval(v) != FIXED.get(k):
                    return "key %r: %r" % (k, pyval(v))
            return None
        return check

    def pairs_check(self, whole):
        def check(resp):
            if resp.status != 200:
                return self.error_ok(resp)
            got = {p.key: pyval(p.value) for p in resp.pairs}
            if whole and got != FIXED:
                return "Hgetall: %r" % (got,)
            if any(FIXED.get(k) != v for k, v in got.items()) or (not whole and not got):
                return "Hscan: %r" % (got,)
            return None
        return check

    def plain_check(self, resp):
        return None if resp.status == 200 else self.error_ok(resp)

    def bad_check(self, resp):
        if resp.status == 400 and resp.message:
            return None
        return self.error_ok(resp)

    # ---- the loop
    def run(self):
        client = None
        try:
            while not self.stop.is_set():
                if client is None:
                    try:
                        client = Client(self.addr, timeout=5.0)
                    except OSError as e:
                        self.problems.append("cannot connect: %r" % (e,))
                        return
                if not self.one_batch(client):
                    client.close()
                    client = None
                    self.closes += 1
        finally:
            if client is not None:
                client.close()

    def one_batch(self, client):
        """Sends a batch pipelined and checks its answers; False once the
        node closed the connection."""
        items = self.batch()
        data = b"".join(encode(r) for r, _ in items)
        sender = threading.Thread(target=self.send_all, args=(client, data), daemon=True)
        sender.start()
        try:
            for req, check in items:
                try:
                    resp = client.recv()
                except (EOFError, ConnectionResetError, BrokenPipeError):
                    return False
                except socket.timeout:
                    self.problems.append("no answer within 5 s to %s"
                                         % req.WhichOneof("command"))
                    return False
                self.answers += 1
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                bad = check(resp)
                if bad is not None:
                    self.problems.append("%s: %s" % (req.WhichOneof("command"), bad))
            return True
        finally:
            sender.join(10)

    @staticmethod
    def send_all(client, data):
        try:
            client.sock.sendall(data)
        except OSError:
            pass  # the reader sees the close


@unittest.skipIf(SANITIZED, "ASan replaces the allocator: no allocation shim there")
class EnomemTest(RouterTestCase):

    def run_window(self, role, spec, seed):
        """Starts a node whose `role` processes fail allocations per `spec`
        ("every=N" or "ppm=N") for WINDOW_MS, drives the workload through
        the window, then checks everything the module docstring says."""
        self.assertTrue(os.path.exists(SHIM), SHIM)
        kind, n = spec.split("=")
        env = {"LD_PRELOAD": SHIM, "KVS_TEST_ENOMEM_ROLE": role,
               "KVS_TEST_ENOMEM_" + kind.upper(): n, "KVS_TEST_ENOMEM_SEED": str(seed),
               "KVS_TEST_ENOMEM_FOR_MS": str(WINDOW_MS)}
        # The environment is fixed at exec: the window opens at a fixed
        # time after the start, and the test checks the node was ready
        # (and the fixed table written) before it.
        start_budget_ms = 2500
        at_ms = int(time.time() * 1000) + start_budget_ms
        env["KVS_TEST_ENOMEM_AT_MS"] = str(at_ms)
        r = self.router(shards=2, partitions=16, env=env)
        with r.client() as c:
            resp = c.pipeline([req_hmset("fixed", FIXED.items())])[0]
            self.assertEqual(resp.status, 200, resp.message)
        lead = at_ms / 1000.0 - time.time()
        self.assertGreater(lead, 0.05, "the node took too long to start: raise start_budget_ms")
        stop = threading.Event()
        drivers = [Driver(r.addr, t, seed, stop) for t in range(CONNECTIONS)]
        for d in drivers:
            d.start()
        time.sleep(lead + WINDOW_MS / 1000.0 + 0.2)
        stop.set()
        for d in drivers:
            d.join(30)
            self.assertFalse(d.is_alive(), "driver %d stuck" % d.tid)

        # After the window: the node serves normally, once links a worker
        # closed in the window are up again (they reconnect with backoff):
        # the fixed table has keys on both shards.
        deadline = time.monotonic() + 10
        while True:
            try:
                with r.client(timeout=5.0) as c:
                    if (c.ping().status == 200 and c.hgetall("fixed").status == 200
                            and c.hset("after", b"k", "v").status == 200):
                        break
            except (OSError, EOFError):
                pass
            self.assertLess(time.monotonic(), deadline, "node not serving after the window")
            time.sleep(0.1)

        acked, refused = {}, set()
        for d in drivers:
            acked.update(d.acked)
            refused |= d.refused
        with r.client(timeout=10.0) as c:
            self.check_keys(c, sorted(acked), lambda k: acked[k], "acknowledged")
            self.check_keys(c, sorted(refused), lambda k: None, "refused")
            self.assertEqual(c.hgetall("fixed").status, 200)

        log = r.stderr()
        self.assertIsNone(r.proc.poll(), "the master exited:\n" + log[-3000:])
        killed = re.findall(r".*killed by signal.*", log)
        self.assertEqual(killed, [], "\n".join(killed))
        injected = [int(f) for f in re.findall(r"kvs-test-enomem: pid \d+ disarmed[^:]*: (\d+) of",
                                               log)]
        self.assertTrue(injected and sum(injected) > 0,
                        "no allocation failed: the test tested nothing\n" + log[-3000:])
        problems = [p for d in drivers for p in d.problems]
        self.assertEqual(problems, [], "\n".join(problems[:40]))
        answers = sum(d.answers for d in drivers)
        statuses = {}
        for d in drivers:
            for s, c in d.statuses.items():
                statuses[s] = statuses.get(s, 0) + c
        exits = re.findall(r".*exited with status.*", log)
        out = {"answers": answers, "statuses": statuses, "acked": len(acked),
                "refused": len(refused), "closes": sum(d.closes for d in drivers),
                "failed_allocs": sum(injected), "exits": exits}
        if os.environ.get("KVS_TEST_ENOMEM_SPEC"):
            print(role, spec, seed, out)
        return out

    def check_keys(self, c, keys, want, what):
        parts, part, size = [], [], 0
        for k in keys:
            v = want(k)
            if part and (len(part) >= 100 or size + len(v or "") > (1 << 20)):
                parts.append(part)
                part, size = [], 0
            part.append(k)
            size += len(v or "")
        if part:
            parts.append(part)
        for part in parts:
            resp = c.hmget("w", part)
            self.assertEqual(resp.status, 200, resp.message)
            for k, v in zip(part, resp.values):
                self.assertEqual(pyval(v), want(k), "%s key %r" % (what, k))

    def test_router_process_survives_failing_allocations(self):
        out = self.run_window("router", *SPEC)
        self.assertGreater(out["answers"], 100, out)

    def test_worker_survives_failing_allocations(self):
        out = self.run_window("node", *SPEC)
        self.assertGreater(out["answers"], 100, out)


if __name__ == "__main__":
    unittest.main()
