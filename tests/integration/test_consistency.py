"""A consistency check of kvs under faults, in the manner of Jepsen: client
threads run random Hset/Hmset/Hdel/Hget/Hmget on a few keys through the
router, each write with values never written before (so every value read
names the one write that wrote it), and record every operation (invoked,
then ok, failed or unknown). Meanwhile a nemesis kills workers and router
processes (SIGKILL), stops a worker for a while (SIGSTOP/SIGCONT), kills a
whole node, and (bound tables) takes the brokers away, slows them, or has
them fail or answer "duplicate" to produce requests; a fault that lasts
overlaps the next ones. Now and then a client pipelines a read behind a
write. Once it is over and everything is healed, every key is read through
every node, and the history is checked against what README.md promises:

- an acknowledged write is never lost, nor overwritten by a write that
  began after it was acknowledged (the final reads, as any read, must not
  return a value some acknowledged write made obsolete before they began);
- nothing reads a value that was never written, one whose write failed
  (an error without `outcome_unknown` writes nothing; a 207 says which
  keys were not written), one whose write began after the read ended, or
  another key's value;
- two acknowledged writes never both replaced the same value (their
  previous values chain the writes of a key into one order);
- a connection reads its own acknowledged writes (bound tables: the
  router's positions, across replicas too), a read pipelined behind a
  write included; on a table bound to no topic (one copy) every read sees
  every write acknowledged before it began, and nothing older than what a
  read answered before it began saw (on bound tables, read through
  replicas, README promises no such order: such reads are only counted);
- the positions a connection's writes are answered with increase per
  partition.

kvs-mock-kafka (librdkafka's mock cluster) checks an idempotent producer's
sequence numbers only for transactional producers, so a produce request
retried after its answer was lost is appended twice, which a real broker
never does; the workers apply both copies. Violations that such a copy
explains are printed and set apart (excuse_duplicates).

Two cases: a table bound to no topic on one node (2 shards, 2 router
processes), and a table bound to a topic on kvs-mock-kafka with two nodes
each running a replica of both shards. KVS_CONSISTENCY_SECONDS (default 6)
sets how long the faults go on, KVS_CONSISTENCY_SEED the seed (printed with
any failure, with the history of the keys concerned).
"""
import bisect
import os
import random
import re
import signal
import threading
import time
import unittest

from kafkatest import MockKafka, ingest_yaml, pos_entries, pos_token, read_topic, wait_until
from kvstest import (Client, LogsOnFailure, free_ports, log_of, pyval, req_hdel, req_hget,
                     req_hmget, req_hmset, req_hset)
from routertest import ClientThreads, Router, partition_of, router_pids

SECONDS = float(os.environ.get("KVS_CONSISTENCY_SECONDS", "6"))
SEED = int(os.environ.get("KVS_CONSISTENCY_SEED", "20261202"))
KEYS = [b"k%d" % i for i in range(8)]
TOPIC, TOPIC_PARTS = "users", 4
INF = float("inf")
CRASH = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|Assertion|core dumped|"
                   r"by signal SIG(?:SEGV|BUS|ABRT|FPE|ILL)")


class Op:
    """One operation of one client connection (`session`)."""

    def __init__(self, oid, session, f, keys, vals):
        self.id, self.session, self.f, self.keys, self.vals = oid, session, f, keys, vals
        self.t0 = time.monotonic()
        self.t1 = None
        self.t0s = None     # a read pipelined behind a write: that write's answer
        self.status, self.message, self.unknown, self.position = None, "", False, b""
        self.outcome = {}   # write: key -> ok | later | fail | unknown
        self.prev = {}      # write: key -> value replaced (None: absent), when known
        self.read = {}      # read: key -> value read (None: absent)

    def done(self, k):
        """When the write of key k took effect at the latest: its answer
        (ok: applied; later: its record is in the topic, in order), never
        known for an unknown outcome."""
        return self.t1 if self.outcome.get(k) in ("ok", "later") else INF

    def __repr__(self):
        rel = lambda t: "%.3f" % (t - History.start) if t not in (None, INF) else str(t)
        return ("op %d s%s %s %r vals=%r [%s, %s] -> %s%s outcome=%r prev=%r read=%r pos=%r %s"
                % (self.id, self.session, self.f, self.keys, self.vals, rel(self.t0),
                   rel(self.t1), self.status, " unknown" if self.unknown else "",
                   self.outcome, self.prev, self.read, pos_entries(self.position),
                   self.message[:160]))


class History:
    start = time.monotonic()

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = []
        self.writer_of = {}  # value -> (op, key)
        self.next_id = 0

    def invoke(self, session, f, keys, vals=()):
        with self.lock:
            op = Op(self.next_id, session, f, list(keys), list(vals))
            self.next_id += 1
            self.ops.append(op)
            for k, v in zip(op.keys, op.vals):
                if v is not None:
                    self.writer_of[v] = (op, k)
            return op


class Checker:
    """The checks of the module docstring over a History. `scope` of the
    staleness rule: "global" (a table bound to no topic: one copy, every
    read sees what was acknowledged before it began) or "session" (bound
    tables through replicas: a connection sees its own writes)."""

    def __init__(self, hist, read_scope):
        self.h = hist
        self.scope = read_scope
        self.errors = []

    def err(self, what, *ops):
        self.errors.append((what, [op for op in ops if op is not None]))

    def index(self):
        """Per key (and per key and session): the acknowledged writes by
        answer time, with the running maximum of their start times (the
        latest-starting write acknowledged before a given moment), and the
        deletes that may have happened by start time, with the running
        maximum of when they took effect."""
        self.acked, self.acked_sets, self.dels = {}, {}, {}
        for op in self.h.ops:
            if op.f not in ("hset", "hmset", "hdel"):
                continue
            for k, o in op.outcome.items():
                if o in ("ok", "later"):
                    for scope in ("global", op.session):
                        self.acked.setdefault((k, scope), []).append(op)
                        if op.f != "hdel":
                            self.acked_sets.setdefault((k, scope), []).append(op)
                if op.f == "hdel" and o != "fail":
                    self.dels.setdefault(k, []).append(op)

        def prefix(ops, order, val):
            ops.sort(key=order)
            keys, best, out = [], None, []
            for op in ops:
                if best is None or val(op) > val(best):
                    best = op
                keys.append(order(op))
                out.append(best)
            return keys, out
        for d in (self.acked, self.acked_sets):
            for k in d:
                d[k] = prefix(d[k], lambda o: o.t1, lambda o: o.t0)
        for k in self.dels:
            self.dels[k] = prefix(self.dels[k], lambda o: o.t0, lambda o: o.done(k))

    @staticmethod
    def latest(idx, before):
        """The entry of the running maximum for order keys below `before`."""
        if idx is None:
            return None
        i = bisect.bisect_left(idx[0], before)
        return idx[1][i - 1] if i else None

    def source(self, k, v, op):
        """The write whose value v a read (or a write's previous value) of
        key k in op saw; records a violation and returns None when v names
        no write that may be seen."""
        got = self.h.writer_of.get(v)
        if got is None:
            self.err("read %r of %r: a value never written (phantom)" % (v, k), op)
            return None
        w, wk = got
        if wk != k:
            self.err("read %r of %r: the value of another key, %r" % (v, k, wk), op, w)
            return None
        if w.outcome.get(k) == "fail":
            self.err("read %r of %r: a value whose write failed (nothing was written)"
                     % (v, k), op, w)
            return None
        if w.outcome.get(k) is None:
            self.err("read %r of %r: its write has no outcome yet" % (v, k), op, w)
            return None
        if w.t0 > op.t1:
            self.err("read %r of %r: a value written after the read was answered"
                     % (v, k), op, w)
            return None
        return w

    def check_read(self, op, k, v, scope):
        """Op saw value v (None: absent) of key k. scope: whose acknowledged
        writes it must see (global: everybody's, acknowledged before it
        began; session: its connection's, acknowledged before it began or
        pipelined before it)."""
        if v is not None and self.source(k, v, op) is None:
            return
        self.stale(op, k, v, scope, op.t0)
        if scope == "global" and op.t0s is not None:
            self.stale(op, k, v, "session", op.t0s)

    def stale(self, op, k, v, scope, t0):
        if scope == "session" and op.t0s is not None:
            t0 = op.t0s
        sk = (k, "global" if scope == "global" else op.session)
        if v is not None:
            w = self.h.writer_of[v][0]
            # The acknowledged write (answered before op began) that began
            # last: if it began after w took effect, it came after w.
            x = self.latest(self.acked.get(sk), t0)
            if x is not None and w.done(k) < x.t0:
                self.err("read %r of %r: stale, overwritten by write %d acknowledged "
                         "before the read began (%s)" % (v, k, x.id, scope), op, w, x)
            return
        x = self.latest(self.acked_sets.get(sk), t0)
        if x is None:
            return
        d = self.latest(self.dels.get(k), op.t1)
        if d is None or d.done(k) <= x.t0:
            self.err("read of %r: absent, but write %d was acknowledged before the read "
                     "began and no delete could follow it (%s)" % (k, x.id, scope), op, x, d)

    def run(self):
        self.index()
        succ = {}
        for op in self.h.ops:
            if op.t1 is None:
                self.err("operation never completed", op)
                continue
            for k, v in op.read.items():
                self.check_read(op, k, v, op.scope)
            for k, v in op.prev.items():
                # A write's previous value is what the apply saw: writes
                # chain into one order per key (LMDB's, or the topic's).
                self.check_read(op, k, v, "global")
                if v is not None:
                    other = succ.setdefault((k, v), op)
                    if other is not op:
                        self.err("writes %d and %d both replaced %r of %r: one of them "
                                 "was lost" % (other.id, op.id, v, k), other, op)
        self.read_after_read()
        # Positions: per connection, per partition, increasing.
        last = {}
        for op in sorted(self.h.ops, key=lambda o: o.t0):
            if op.f in ("hset", "hmset", "hdel") and op.position:
                for t, p, off in pos_entries(op.position):
                    key = (op.session, t, p)
                    if key in last and last[key][0] >= off:
                        self.err("position of %s partition %d went from %d to %d on one "
                                 "connection" % (t, p, last[key][0], off), last[key][1], op)
                    last[key] = (off, op)
        return self.errors

    def read_after_read(self):
        """A read must not return a value older than one a read answered
        before it began returned (w older than w': w took effect before w'
        began). Everybody's reads on a table bound to no topic (one copy:
        what was read was committed); on bound tables, read through
        replicas, README promises no such thing even within a connection:
        a regression there is only noted (self.notes)."""
        self.notes = []
        reads = {}
        for op in self.h.ops:
            for k, v in op.read.items():
                if v is not None and v in self.h.writer_of:
                    w = self.h.writer_of[v][0]
                    if w.outcome.get(k) not in (None, "fail"):
                        scope = "global" if op.scope == "global" else op.session
                        reads.setdefault((k, scope), []).append((op, w))
        for (k, scope), rs in reads.items():
            rs.sort(key=lambda x: x[0].t1)
            ends = [r.t1 for r, _ in rs]
            best = []
            for r, w in rs:
                if not best or w.t0 > best[-1][1].t0:
                    best.append((r, w))
                else:
                    best.append(best[-1])
            for r, w in rs:
                i = bisect.bisect_left(ends, r.t0)
                if not i:
                    continue
                r2, w2 = best[i - 1]
                if w.done(k) < w2.t0:
                    what = ("read %r of %r: older than %r, read before it began by op %d"
                            % (w.vals[w.keys.index(k)], k, w2.vals[w2.keys.index(k)], r2.id))
                    if scope == "global":
                        self.err(what, r, w, r2, w2)
                    else:
                        self.notes.append((what, [r, w, r2, w2]))

    def report(self, seed, limit=12):
        lines = ["seed %d (KVS_CONSISTENCY_SEED=%d KVS_CONSISTENCY_SECONDS=%s): %d violations"
                 % (seed, seed, SECONDS, len(self.errors))]
        for what, ops in self.errors[:limit]:
            lines.append("- " + what)
            for op in ops:
                lines.append("    " + repr(op))
        keys = set()
        for _, ops in self.errors[:3]:
            for op in ops:
                keys.update(op.keys)
        for k in sorted(keys)[:2]:
            lines.append("history of %r:" % k)
            for op in self.h.ops:
                if k in op.keys:
                    lines.append("  " + repr(op))
        return "\n".join(lines)


class Clients(ClientThreads):
    """Client threads over `nodes` (callables giving each a node's address,
    or None while it is down), recording into a History."""

    def __init__(self, hist, addrs, table, seed, n=4, bound=False):
        super().__init__()
        self.h, self.addrs, self.table, self.bound = hist, addrs, table, bound
        self.counts = {}
        self.sessions = 0
        self.threads = [threading.Thread(target=self.run, args=(i, random.Random(seed * 1000 + i)),
                                         daemon=True) for i in range(n)]

    def bump(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def finish(self):
        if super().finish(60):
            raise AssertionError("a client thread is stuck")

    def new_session(self):
        with self.lock:
            self.sessions += 1
            return self.sessions

    def run(self, tid, rnd):
        c, session, n = None, None, 0
        home = tid % len(self.addrs)
        while not self.stop.is_set():
            if c is None:
                order = [home] + [i for i in range(len(self.addrs)) if i != home]
                for i in order:
                    try:
                        addr = self.addrs[i]()
                        if addr is None:
                            continue
                        c = Client(addr, timeout=10)
                        session = self.new_session()
                        break
                    except OSError:
                        c = None
                if c is None:
                    time.sleep(0.05)
                    continue
            n += 1
            try:
                self.one(c, session, "c%d.%d" % (tid, n), rnd)
            except (OSError, EOFError):
                c.close()
                c = None
                self.bump("connection lost")
                time.sleep(0.02)
        if c is not None:
            c.close()

    def one(self, c, session, tag, rnd):
        """One operation, or now and then a write and a read of its keys
        pipelined (sent at once): the router holds the read until the
        write is answered, so it reads the write (README: Freshness)."""
        plan = [rnd.choice(["hset", "hset", "hmset", "hdel", "hget", "hget", "hmget"])]
        if rnd.random() < 0.15:
            plan = [rnd.choice(["hset", "hmset", "hdel"]), None]
        keys = ([rnd.choice(KEYS)] if plan[0] in ("hset", "hdel", "hget")
                else rnd.sample(KEYS, rnd.randint(2, 4)))
        if len(plan) == 2:
            plan[1] = "hget" if len(keys) == 1 else "hmget"
        sent = []
        for i, what in enumerate(plan):
            vals = ["%s.%d-%s" % (tag, i, k.decode()) if what in ("hset", "hmset") else None
                    for k in keys]
            op = self.h.invoke(session, what, keys, vals)
            op.scope = "session" if self.bound else "global"
            t = self.table
            req = (req_hset(t, keys[0], vals[0]) if what == "hset" else
                   req_hmset(t, list(zip(keys, vals))) if what == "hmset" else
                   req_hdel(t, keys[0]) if what == "hdel" else
                   req_hget(t, keys[0]) if what == "hget" else req_hmget(t, keys))
            sent.append((op, req))
        c.send(*[req for _, req in sent])
        answered = 0
        for op, _ in sent:
            try:
                resp = c.recv()
            except (OSError, EOFError):
                for o, _ in sent[answered:]:
                    o.t1 = time.monotonic()
                    o.status = "connection lost"
                    if o.f in ("hset", "hmset", "hdel"):
                        o.outcome = {k: "unknown" for k in o.keys}
                raise
            answered += 1
            op.t1 = time.monotonic()
            if answered == 2:
                # Held until the write before it was answered.
                op.t0s = sent[0][0].t1 + 1e-6
            self.answer(op, resp)

    def answer(self, op, resp):
        what, keys = op.f, op.keys
        op.status, op.message, op.unknown = resp.status, resp.message, resp.outcome_unknown
        op.position = resp.position
        self.bump("%s %d%s%s" % (what, resp.status, " unknown" if resp.outcome_unknown else "",
                                 " pipelined" if op.t0s is not None else ""))
        if what in ("hget", "hmget"):
            if resp.status == 200:
                for k, v in zip(keys, resp.values):
                    op.read[k] = pyval(v)
            elif resp.status == 404 and what == "hget":
                op.read[keys[0]] = None
            return
        self.outcomes(op, resp, keys)

    def outcomes(self, op, resp, keys):
        if resp.status == 200:
            for k, v in zip(keys, resp.values):
                op.outcome[k] = "ok"
                op.prev[k] = pyval(v)
        elif resp.status == 207:
            missing = {p.key for p in resp.pairs}
            for i, k in enumerate(keys):
                if k in missing:
                    op.outcome[k] = "fail"
                else:
                    op.outcome[k] = "ok"
                    if len(resp.values) == len(keys):
                        op.prev[k] = pyval(resp.values[i])
        elif resp.position:
            # Nothing was written but the records the position names (and,
            # with outcome_unknown, what may or may not have been): a
            # partition named for one key of the write is that key's
            # record, which Kafka has and which will be applied.
            named = {p for _, p, _ in pos_entries(resp.position)}
            parts = [partition_of(k, TOPIC_PARTS) for k in keys]
            other = "unknown" if resp.outcome_unknown else "fail"
            for k, p in zip(keys, parts):
                op.outcome[k] = (other if p not in named else
                                 "later" if parts.count(p) == 1 else "unknown")
        elif resp.outcome_unknown:
            op.outcome = {k: "unknown" for k in keys}
        else:
            op.outcome = {k: "fail" for k in keys}


def excuse_duplicates(errors, bootstrap):
    """(errors, excused): kvs-mock-kafka is librdkafka's mock cluster,
    which checks an idempotent producer's sequence numbers only for
    transactional producers; so a produce request retried after its answer
    was lost (a broker taken down, a slow answer) is appended twice, where
    a real broker keeps one copy. A worker applies a record every time the
    log holds it, so the second copy of a write, applied after later
    writes of its key, brings its value back (or, a delete's, removes the
    key again). Violations that name a value the topic holds twice (two
    records with one "kvs.writer" id), or that read absent a key whose
    delete the topic holds twice, are set apart, and printed."""
    seen, values, tombstones = set(), set(), set()
    for p, _, key, val, headers in read_topic(bootstrap, TOPIC, TOPIC_PARTS):
        wid = headers.get("kvs.writer")
        if wid is None:
            continue
        if (p, wid) in seen:
            if val is None:
                tombstones.add(key)
            else:
                values.add(val.decode("utf-8", "replace"))
        seen.add((p, wid))
    kept, excused = [], []
    for e in errors:
        what = e[0]
        if (any(repr(v) in what for v in values)
                or ("absent" in what and any(repr(k) in what for k in tombstones))):
            excused.append(e)
        else:
            kept.append(e)
    return kept, excused


class CheckerTest(unittest.TestCase):
    """The checker finds what it is there to find: made-up histories, each
    with one violation (and one without any)."""

    def hist(self, *ops):
        """ops: (session, f, key, value, t0, t1, outcome or read value[, prev])."""
        h = History()
        for o in ops:
            session, f, k, v, t0, t1, res = o[:7]
            op = h.invoke(session, f, [k], [v] if f == "hset" else [None])
            op.t0, op.t1, op.scope = t0, t1, "session"
            if f in ("hset", "hdel"):
                op.outcome[k] = res
                if len(o) > 7:
                    op.prev[k] = o[7]
            else:
                op.read[k] = res
        return h

    def errors(self, scope, *ops):
        h = self.hist(*ops)
        for op in h.ops:
            op.scope = scope
        return [e[0] for e in Checker(h, scope).run()]

    def test_a_history_without_violations_passes(self):
        self.assertEqual(self.errors(
            "global",
            (1, "hset", b"k", "a", 0, 1, "ok", None),
            (2, "hset", b"k", "b", 0.5, 2, "unknown"),
            (1, "hget", b"k", None, 1.5, 1.6, "a"),
            (2, "hget", b"k", None, 2.5, 2.6, "b"),  # the unknown write landed
            (1, "hset", b"k", "c", 3, 4, "ok", "b"),
            (1, "hdel", b"k", None, 5, 6, "ok", "c"),
            (2, "hget", b"k", None, 7, 8, None)), [])

    def test_finds_a_lost_acknowledged_write(self):
        errs = self.errors("global",
                           (1, "hset", b"k", "a", 0, 1, "ok", None),
                           (1, "hset", b"k", "b", 2, 3, "ok", "a"),
                           (2, "hget", b"k", None, 4, 5, "a"))
        self.assertEqual(len(errs), 1, errs)
        self.assertIn("stale", errs[0])

    def test_finds_a_lost_write_read_as_absent(self):
        errs = self.errors("global",
                           (1, "hdel", b"k", None, 0, 0.2, "ok", None),
                           (1, "hset", b"k", "a", 0.5, 1, "ok", None),
                           (2, "hdel", b"k", None, 0.7, 0.8, "fail"),
                           (2, "hget", b"k", None, 4, 5, None))
        self.assertEqual(len(errs), 1, errs)
        self.assertIn("absent", errs[0])
        # A delete begun before the write was acknowledged may follow it.
        errs = self.errors("global",
                           (1, "hset", b"k", "a", 0.5, 1, "ok", None),
                           (2, "hdel", b"k", None, 0.7, 8, "unknown"),
                           (2, "hget", b"k", None, 4, 5, None))
        self.assertEqual(errs, [])
        errs = self.errors("global",
                           (1, "hset", b"k", "a", 0.5, 1, "ok", None),
                           (2, "hdel", b"k", None, 4.5, 8, "unknown"),
                           (2, "hget", b"k", None, 4, 5, None))
        self.assertEqual(errs, [])
        errs = self.errors("global",
                           (1, "hset", b"k", "a", 0.5, 1, "ok", None),
                           (2, "hdel", b"k", None, 5.5, 8, "unknown"),
                           (2, "hget", b"k", None, 4, 5, None))
        self.assertEqual(len(errs), 1, errs)
        self.assertIn("absent", errs[0])

    def test_read_your_writes_is_per_session_on_bound_tables(self):
        ops = [(1, "hset", b"k", "a", 0, 1, "ok", None),
               (1, "hset", b"k", "b", 2, 3, "ok", "a"),
               (2, "hget", b"k", None, 4, 5, "a")]
        self.assertEqual(self.errors("session", *ops), [])
        errs = self.errors("session", *ops, (1, "hget", b"k", None, 4, 5, "a"))
        self.assertEqual(len(errs), 1, errs)
        self.assertIn("stale", errs[0])

    def test_a_read_pipelined_behind_a_write_reads_it(self):
        ops = [(1, "hset", b"k", "a", 0, 1, "ok", None),
               (1, "hset", b"k", "b", 2, 3, "ok", "a"),
               (1, "hget", b"k", None, 2, 3.1, "a")]
        for scope in ("global", "session"):
            self.assertEqual(self.errors(scope, *ops), [])
            h = self.hist(*ops)
            for op in h.ops:
                op.scope = scope
            h.ops[2].t0s = 3 + 1e-6
            errs = [e[0] for e in Checker(h, scope).run()]
            self.assertEqual(len(errs), 1, errs)
            self.assertIn("stale", errs[0])

    def test_finds_a_read_older_than_one_before_it(self):
        ops = [(1, "hset", b"k", "a", 0, 1, "ok", None),
               (1, "hset", b"k", "b", 2, 8, "unknown"),
               (2, "hget", b"k", None, 3, 4, "b"),
               (3, "hget", b"k", None, 5, 6, "a")]
        errs = self.errors("global", *ops)
        self.assertEqual(len(errs), 1, errs)
        self.assertIn("older than", errs[0])
        h = self.hist(*ops, (2, "hget", b"k", None, 7, 7.5, "a"))
        c = Checker(h, "session")
        self.assertEqual(c.run(), [])
        self.assertEqual(len(c.notes), 1, c.notes)

    def test_finds_phantoms_failed_writes_and_reads_from_the_future(self):
        errs = self.errors("global",
                           (1, "hset", b"k", "a", 0, 1, "fail"),
                           (2, "hget", b"k", None, 2, 3, "a"),
                           (2, "hget", b"k", None, 2, 3, "never"),
                           (2, "hget", b"k", None, 4, 5, "late"),
                           (1, "hset", b"k", "late", 6, 7, "ok", None))
        self.assertEqual(len(errs), 3, errs)
        self.assertIn("failed", errs[0])
        self.assertIn("never written", errs[1])
        self.assertIn("after the read", errs[2])

    def test_finds_two_writes_that_replaced_the_same_value(self):
        errs = self.errors("global",
                           (1, "hset", b"k", "a", 0, 1, "ok", None),
                           (1, "hset", b"k", "b", 2, 3, "ok", "a"),
                           (2, "hset", b"k", "c", 2, 3, "ok", "a"))
        self.assertEqual(len(errs), 1, errs)
        self.assertIn("both replaced", errs[0])

    def test_finds_positions_going_back_on_a_connection(self):
        h = self.hist((1, "hset", b"k", "a", 0, 1, "ok", None),
                      (1, "hset", b"k", "b", 2, 3, "ok", "a"))
        h.ops[0].position = pos_token([(TOPIC, 1, 7)])
        h.ops[1].position = pos_token([(TOPIC, 1, 7)])
        errs = [e[0] for e in Checker(h, "session").run()]
        self.assertEqual(len(errs), 1, errs)
        self.assertIn("position", errs[0])

    def test_sets_apart_only_what_a_record_in_the_log_twice_explains(self):
        # "b" written once and its record appended twice, the copy after
        # "c": both replaced "b"; the delete of k2 appended twice.
        h = self.hist((1, "hset", b"k", "a", 0, 1, "ok", None),
                      (1, "hset", b"k", "b", 2, 3, "ok", "a"),
                      (1, "hset", b"k", "c", 4, 5, "ok", "b"),
                      (1, "hset", b"k", "d", 6, 7, "ok", "b"),
                      (1, "hset", b"k2", "x", 8, 9, "ok", None),
                      (1, "hset", b"k3", "y", 10, 11, "ok", None),
                      (2, "hget", b"k2", None, 12, 13, None),
                      (2, "hget", b"k3", None, 12, 13, None))
        for op in h.ops:
            op.scope = "global"
        errors = Checker(h, "global").run()
        self.assertEqual(len(errors), 4, errors)  # "b" read stale, replaced twice; two absent
        log = [(1, 5, b"k", b"b", {"kvs.writer": b"w1"}), (1, 6, b"k", b"c", {"kvs.writer": b"w2"}),
               (1, 7, b"k", b"b", {"kvs.writer": b"w1"}), (0, 3, b"k2", None, {"kvs.writer": b"w3"}),
               (0, 4, b"k2", None, {"kvs.writer": b"w3"}), (0, 5, b"k3", b"y", {}),
               (0, 6, b"k3", b"y", {})]  # another producer's copies: not kvs's
        real = globals()["read_topic"]
        globals()["read_topic"] = lambda *a, **k: log
        try:
            kept, excused = excuse_duplicates(errors, "unused")
        finally:
            globals()["read_topic"] = real
        self.assertEqual(len(excused), 3, excused)
        self.assertEqual(len(kept), 1, kept)
        self.assertIn("b'k3'", kept[0][0])


class ConsistencyTest(LogsOnFailure, unittest.TestCase):

    def start_fixtures(self):
        self._routers, self._mocks = [], []

    def failure_logs(self):
        for r in self._routers:
            yield "node %s stderr, last 6000 chars" % r.name, log_of(r, 6000)

    def managed(self, r):
        self._routers.append(r)
        self.addCleanup(r.close)
        return r

    # ---- nemesis

    def fault(self, rnd, nodes, down, mock):
        """One fault on a random node: (its name, None or a function that
        lasts a while and then heals it: a stopped worker, brokers away or
        slow, which the nemesis may run beside the next faults)."""
        live = [n for n in nodes if n not in down]
        if not live:
            return "none (every node down)", None
        name = rnd.choice(live)
        r = nodes[name]
        kinds = ["kill_worker", "kill_router_process", "stop_worker", "kill_node"]
        if mock is not None:
            kinds += ["brokers_down", "kafka_trouble"]
        kind = rnd.choice(kinds)
        if kind == "kill_worker":
            w = r.workers()
            if w:
                os.kill(rnd.choice(sorted(w.values())), signal.SIGKILL)
        elif kind == "kill_router_process":
            p = router_pids(r)
            if p:
                os.kill(rnd.choice(sorted(p.values())), signal.SIGKILL)
        elif kind == "stop_worker":
            w = r.workers()
            if not w:
                return kind + " (none)", None
            pid = rnd.choice(sorted(w.values()))
            pause = rnd.choice([0.3, 1.0, 2.5, 3.5])
            os.kill(pid, signal.SIGSTOP)

            def resume():
                time.sleep(pause)
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:  # its node was killed meanwhile
                    pass
            return kind, resume
        elif kind == "kill_node":
            if len(live) < len(nodes) or (len(nodes) > 1 and len(live) < 2):
                return "kill_node (skipped)", None
            r.kill_all()
            r.proc = None
            down[name] = time.monotonic()
        elif kind == "brokers_down":
            mock.ctl("broker-down all")
            pause = rnd.uniform(0.5, 3)

            def up():
                time.sleep(pause)
                mock.ctl("broker-up all")
            return kind, up
        elif kind == "kafka_trouble":
            # Slow acknowledgements (some only after the worker's wait:
            # "may or may not" writes that land), failed produce requests
            # (retried by the idempotent producer, or refused: the write
            # did not happen), acknowledgements without an offset.
            code = rnd.choice(["NOT_LEADER_FOR_PARTITION", "REQUEST_TIMED_OUT",
                               "NOT_ENOUGH_REPLICAS", "_TRANSPORT", "INVALID_RECORD",
                               "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "DUPLICATE_SEQUENCE_NUMBER",
                               "KAFKA_STORAGE_ERROR"])
            mock.ctl("error Produce %s %d" % (code, rnd.randint(1, 5)))
            rtt = rnd.choice([100, 800, 1900])
            mock.ctl("rtt all %d" % rtt)
            pause = rnd.uniform(0.5, 2)

            def fast():
                time.sleep(pause)
                mock.ctl("rtt all 0")
            return "%s (%s, rtt %d)" % (kind, code, rtt), fast
        return kind, None

    def restart(self, r):
        """Starts a killed node and waits until its master says it is
        ready: a router process killed before that stops the node (exit 1,
        "router N could not start"), which is how kvs treats a router
        process that dies while the node starts, not a fault under test."""
        before = r.stderr().count("node ready:")
        r.start()
        self.assertTrue(wait_until(lambda: r.stderr().count("node ready:") > before, 20),
                        "node %s never ready after a restart" % r.name)

    def nemesis(self, rnd, nodes, mock, seconds):
        done, down = {}, {}
        lasting = None  # the thread of a fault that lasts, healing it at its end
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                time.sleep(rnd.uniform(0.3, 1.2))
                for n, when in list(down.items()):
                    if time.monotonic() - when > 1.0:
                        self.restart(nodes[n])
                        del down[n]
                a, heal = self.fault(rnd, nodes, down, mock)
                done[a] = done.get(a, 0) + 1
                if heal is not None:
                    if lasting is None or not lasting.is_alive():
                        lasting = threading.Thread(target=heal, daemon=True)
                        lasting.start()
                    else:
                        heal()
                for n, r in nodes.items():
                    if n not in down:
                        self.assertIsNone(r.proc.poll(), "node %s exited" % n)
        finally:
            if lasting is not None:
                lasting.join(10)
        for n in list(down):
            self.restart(nodes[n])
        return done

    # ---- the run

    def run_case(self, nodes, table, bound, mock=None, final_position=None):
        seed = SEED
        rnd = random.Random(seed)
        hist = History()
        addrs = [(lambda r=r: r.addr if r.proc is not None and r.proc.poll() is None else None)
                 for r in nodes.values()]
        clients = Clients(hist, addrs, table, seed, n=4, bound=bound)
        clients.start()
        try:
            faults = self.nemesis(rnd, nodes, mock, SECONDS)
            time.sleep(0.5)
        finally:
            clients.finish()
        # Final reads: every key through every node, with every position
        # acknowledged (bound tables: a replica must have applied them).
        pos = pos_token([e for op in hist.ops if op.position
                         for e in pos_entries(op.position)])
        for name, r in nodes.items():
            with r.client(timeout=20) as c:
                for k in KEYS:
                    def read():
                        op = hist.invoke("final-" + name, "hget", [k])
                        op.scope = "global"
                        req = req_hget(table, k)
                        if pos:
                            req.min_position = pos
                        try:
                            resp = c.call(req)
                        except (OSError, EOFError):
                            hist.ops.remove(op)
                            raise
                        op.t1 = time.monotonic()
                        op.status, op.message = resp.status, resp.message
                        if resp.status in (200, 404):
                            op.read[k] = pyval(resp.values[0]) if resp.status == 200 else None
                            return True
                        hist.ops.remove(op)
                        return False
                    self.assertTrue(wait_until(read, 30, 0.1),
                                    "node %s never served a read of %r" % (name, k))
        checker = Checker(hist, "session" if bound else "global")
        errors = checker.run()
        excused = []
        if errors and mock is not None:
            errors, excused = excuse_duplicates(errors, mock.bootstrap)
        outcomes = {}
        for op in hist.ops:
            for o in op.outcome.values():
                outcomes[o] = outcomes.get(o, 0) + 1
        summary = ("seed %d: faults %r; answers %r; %d operations; keys written %r"
                   % (seed, dict(sorted(faults.items())), dict(sorted(clients.counts.items())),
                      len(hist.ops), dict(sorted(outcomes.items()))))
        if checker.notes:
            summary += ("\n%d reads on a connection older than one it read before (not a "
                        "promise of README), e.g. %s\n    %s"
                        % (len(checker.notes), checker.notes[0][0],
                           "\n    ".join(map(repr, checker.notes[0][1]))))
        if excused:
            summary += ("\n%d violations explained by records the mock broker appended twice "
                        "(a real broker drops an idempotent producer's retry), e.g. %s"
                        % (len(excused), excused[0][0]))
        print(summary)
        checker.errors = errors
        self.assertEqual(errors, [], summary + "\n" + checker.report(seed))
        acked = sum(1 for op in hist.ops if "ok" in op.outcome.values())
        self.assertGreater(acked, 20, summary)
        for r in nodes.values():
            self.assertEqual(r.stop(timeout=40), 0, "node %s did not stop cleanly" % r.name)
            # Only the nemesis's own signals ended processes.
            bad = CRASH.search(r.stderr())
            self.assertIsNone(bad, "node %s: %s" % (r.name, bad and bad.group(0)))

    def test_unbound_table_one_node(self):
        r = self.managed(Router(shards=2, partitions=64, processes=2, timeout="2s",
                                start=False, name="a"))
        r.start()
        self.run_case({"a": r}, "direct", bound=False)

    def test_bound_table_two_replicas(self):
        mock = MockKafka({TOPIC: TOPIC_PARTS}, control=True)
        self.addCleanup(mock.close)
        layout = {"a": [0, 1], "b": [0, 1]}
        bases, used = {}, []
        for n in layout:
            b = free_ports(2)
            while any(abs(b - u) < 2 for u in used):
                b = free_ports(2)
            bases[n] = b
            used.append(b)
        lines = ["  nodes:"] + ['    - {name: %s, address: "127.0.0.1:%d", shards: [0, 1]}'
                                % (n, bases[n]) for n in layout]
        nodes = {}
        for n in layout:
            nodes[n] = self.managed(Router(
                shards=2, partitions=TOPIC_PARTS, start=False, name=n, timeout="2s",
                cluster_yaml=lines, node_name=n, processes=2,
                extra_yaml=ingest_yaml(mock.bootstrap, [(TOPIC, TOPIC, "string", TOPIC_PARTS)],
                                       "kvs", {"reconnect.backoff.max.ms": "500"})))
        for r in nodes.values():
            r.start()
        for r in nodes.values():
            with r.client() as c:
                self.assertTrue(wait_until(lambda: c.call(req_hset(TOPIC, b"probe", "p")).status
                                           == 200, 30), "node %s never wrote" % r.name)
        self.run_case(nodes, TOPIC, bound=True, mock=mock)


if __name__ == "__main__":
    unittest.main()
