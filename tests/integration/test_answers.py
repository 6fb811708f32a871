"""Answers that say what happened, and answers too large for a frame.

Issue 9, items 1 and 6, through a real kvs-router and its kvs-node workers:

- An Hmset or Hmdel split over shards whose answer (the previous values)
  cannot fit limits.max_frame: 413 must mean nothing was written anywhere,
  and when some shards wrote their keys and others refused theirs, the
  answer (207) says exactly which keys were written. Every key is read back.
- A value stored while max_frame was larger, read after a restart with a
  smaller one: each request whose answer would hold it gets 413 on its own,
  while another client's pipelined requests on the same shard all succeed
  (no 503: the router's link to the worker must never see an oversized
  frame). The same for an Info answer larger than max_frame.
- A Kafka record whose value could never be read back is skipped and
  counted, like a malformed one.

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import re
import threading
import unittest

import kafkatest
from kafkatest import KCAT, info_pairs, ingest_yaml, produce, wait_until
from kvstest import pb, pyval, req_hget, req_hset
from routertest import Router, RouterTestCase, keys_by_shard, partition_of, pipeline_threaded
from test_ingest import KafkaFixtures

SHARDS = 4
PARTITIONS = 64


def set_max_frame(router, size):
    """Rewrites limits.max_frame in the router's config (it must be stopped)."""
    with open(router.config) as f:
        text = f.read()
    text, n = re.subn(r"max_frame: [0-9A-Za-z]+", "max_frame: %s" % size, text)
    assert n == 1, text
    with open(router.config, "w") as f:
        f.write(text)


class Bystander:
    """Another client of the same shard: pipelines Hset/Hget rounds on its
    own keys from a thread until stopped; every answer must be 200."""

    def __init__(self, test, router, keys):
        self.test, self.router, self.keys = test, router, keys
        self.stop = threading.Event()
        self.answers = 0
        self.bad = []
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            with self.router.client(timeout=30) as c:
                n = 0
                while not self.stop.is_set() or n < 3:
                    reqs = []
                    for k in self.keys:
                        reqs.append(req_hset("by", k, b"v%d" % n))
                        reqs.append(req_hget("by", k))
                    for a in pipeline_threaded(c, reqs):
                        self.answers += 1
                        if a.status != 200:
                            self.bad.append((a.status, a.message))
                    n += 1
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def finish(self):
        self.stop.set()
        self.thread.join(60)
        self.test.assertFalse(self.thread.is_alive(), "the bystander did not finish")
        self.test.assertIsNone(self.error)
        self.test.assertEqual(self.bad[:3], [], "%d of the bystander's %d answers failed"
                              % (len(self.bad), self.answers))
        self.test.assertGreater(self.answers, 0)


class SplitWriteTest(RouterTestCase):
    """Item 1: a split Hmset/Hmdel never answers 413 after writing."""

    def keys_and_router(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS, max_frame="64KiB")
        per = keys_by_shard("sw", 3, PARTITIONS, SHARDS)
        keys = [per[s][i] for i in range(3) for s in range(SHARDS)]  # shards interleaved
        return r, per, keys

    def store(self, c, values):
        for k, v in values.items():
            resp = c.hset("sw", k, v)
            self.assertEqual(resp.status, 200, resp.message)

    def assert_holds(self, c, expect):
        """Every key holds exactly expect[key] (None: absent), read one by one."""
        for k, v in expect.items():
            resp = c.hget("sw", k)
            if v is None:
                self.assertEqual(resp.status, 404, "%r: %s" % (k, resp.message))
            else:
                self.assertEqual(resp.status, 200, "%r: %s" % (k, resp.message))
                self.assertEqual(pyval(resp.values[0]), v, "value of %r" % k)

    def test_previous_values_too_large_on_every_shard_is_413_and_nothing_written(self):
        r, per, keys = self.keys_and_router()
        # 3 x 20,000 bytes per shard: each shard's part alone fits a frame,
        # so each worker would apply it; the merged answer (240 KB) cannot.
        old = {k: (b"%s:" % k) + b"o" * 20000 for k in keys}
        with r.client() as c:
            self.store(c, old)
            resp = c.hmset("sw", [(k, "new") for k in keys])
            self.assertEqual(resp.status, 413, resp.message)
            self.assert_holds(c, old)
            self.assertIn("nothing was written", resp.message)
            self.assertEqual(len(resp.values), 0)
            resp = c.hmdel("sw", keys)
            self.assertEqual(resp.status, 413, resp.message)
            self.assert_holds(c, old)
            self.assertIn("nothing was written", resp.message)
            # Fewer keys per request, as the message says, do work: three,
            # on three shards, whose previous values fit one answer.
            resp = c.hmset("sw", [(k, "new") for k in keys[:3]])
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual([pyval(v) for v in resp.values], [old[k] for k in keys[:3]])
            self.assert_holds(c, {k: "new" if k in keys[:3] else old[k] for k in keys})

    def check_partial(self, resp, cmd, keys, refused_shard, before):
        """A 207 naming `refused_shard` as the one that wrote nothing: its
        keys in pairs, in request order; everyone else's previous values in
        values, empty Values for the keys not written."""
        self.assertEqual(resp.status, 207, resp.message)
        self.assertIn("%s partly applied" % cmd, resp.message)
        self.assertIn("on shard %d were not" % refused_shard, resp.message)
        not_written = [k for k in keys if k in before["refused"]]
        self.assertEqual([p.key for p in resp.pairs], not_written)
        self.assertEqual([p.HasField("value") for p in resp.pairs], [False] * len(not_written))
        self.assertEqual([pyval(v) for v in resp.values],
                         [None if k in before["refused"] else before["all"][k] for k in keys])

    def test_previous_values_too_large_on_one_shard_is_207_naming_what_was_written(self):
        r, per, keys = self.keys_and_router()
        # Shard 0's three previous values (63,000 bytes) leave no room for
        # the others' in one answer: a single worker holding all twelve keys
        # would refuse the whole request. Split, shard 0 refuses its part
        # and writes nothing; the other shards write theirs, and the answer
        # must say exactly that rather than 413 (which would deny their
        # writes) or 200 (which would claim shard 0's).
        old = {k: (b"%s:" % k) + (b"o" * 21000 if k in per[0] else b"s" * 1500) for k in keys}
        with r.client() as c:
            self.store(c, old)
            resp = c.hmset("sw", [(k, "new") for k in keys])
            self.check_partial(resp, "Hmset", keys, 0, {"refused": set(per[0]), "all": old})
            after = {k: old[k] if k in per[0] else "new" for k in keys}
            self.assert_holds(c, after)

            self.store(c, old)
            resp = c.hmdel("sw", keys)
            self.check_partial(resp, "Hmdel", keys, 0, {"refused": set(per[0]), "all": old})
            self.assert_holds(c, {k: old[k] if k in per[0] else None for k in keys})


class OversizedAnswerTest(RouterTestCase):
    """Item 6: a value no answer can hold fails its own requests only."""

    def test_value_stored_under_a_larger_max_frame(self):
        shards, parts = 2, 8
        r = self.router(shards=shards, partitions=parts, max_frame="1MiB")
        huge = b"huge"
        s = r.shard_of(huge)
        mine = keys_by_shard("by", 40, parts, shards)[s]
        before = [k for k in keys_by_shard("a", 40, parts, shards)[s] if k < huge][:1]
        self.assertEqual(len(before), 1)
        value = b"h" * 200000
        with r.client() as c:
            for k, v in ((huge, value), (before[0], b"small")):
                resp = c.hset("big", k, v)
                self.assertEqual(resp.status, 200, resp.message)
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        set_max_frame(r, "64KiB")
        r.start()
        log_from = len(r.stderr())

        by = Bystander(self, r, mine)  # pipelines on the same shard meanwhile
        with r.client(timeout=30) as c:
            c.max_frame = 64 * 1024  # no frame above the limit, ever
            for _ in range(5):
                for name, req in (("Hget", lambda: c.hget("big", huge)),
                                  ("Hmget", lambda: c.hmget("big", [before[0], huge])),
                                  ("Hgetall", lambda: c.hgetall("big")),
                                  ("Hset", lambda: c.hset("big", huge, b"x")),
                                  ("Hdel", lambda: c.hdel("big", huge)),
                                  ("Hmset", lambda: c.hmset("big", [(huge, b"x")])),
                                  ("Hmdel", lambda: c.hmdel("big", [huge]))):
                    resp = req()
                    self.assertEqual(resp.status, 413, "%s: %s" % (name, resp.message))
                    self.assertIn("limits.max_frame", resp.message, name)
                    if name in ("Hset", "Hdel", "Hmset", "Hmdel"):  # fewer keys would not help
                        self.assertIn("nothing was written; raise limits.max_frame to at least",
                                      resp.message, name)
                    self.assertTrue("raise" in resp.message or "fewer keys" in resp.message,
                                    "%s: the message says what to do: %s" % (name, resp.message))
                # Hscan: the pages before it, then 413 naming it.
                cursor, seen = b"", []
                for _ in range(10):
                    resp = c.hscan("big", cursor, 10)
                    if resp.status != 200 or not resp.cursor:
                        break
                    seen += [p.key for p in resp.pairs]
                    cursor = resp.cursor
                self.assertEqual(seen, before)
                self.assertEqual(resp.status, 413, resp.message)
                self.assertIn('"huge"', resp.message)
                self.assertIn("raise limits.max_frame to at least", resp.message)
                resp = c.hexist("big", huge)  # what fits is answered
                self.assertEqual(resp.status, 200, resp.message)
                self.assertTrue(resp.values[0].bool_value)
            # Split over shards, the other shard's keys are written: 207
            # naming what was not (the router cannot know the previous
            # values before it sends the parts).
            other = keys_by_shard("o", 1, parts, shards)[1 - s][0]
            for name, req in (("Hmset", lambda: c.hmset("big", [(huge, b"x"), (other, b"y")])),
                              ("Hmdel", lambda: c.hmdel("big", [huge, other]))):
                resp = req()
                self.assertEqual(resp.status, 207, "%s: %s" % (name, resp.message))
                self.assertEqual([p.key for p in resp.pairs], [huge], name)
                self.assertIn("raise limits.max_frame to at least", resp.message, name)
        by.finish()
        self.assertNotIn(" down", r.stderr()[log_from:], "no link may go down")

        # Nothing was changed: with the larger limit back, the value is whole.
        self.assertEqual(r.stop(), 0)
        self.assertTrue(r.wait_all_gone())
        set_max_frame(r, "1MiB")
        r.start()
        with r.client() as c:
            resp = c.hget("big", huge)
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), value)


@unittest.skipIf(KCAT is None or kafkatest.Producer is None,
                 "kcat and python3-confluent-kafka are needed")
class OversizedIngestTest(KafkaFixtures, unittest.TestCase):
    """Item 6, ingestion: records no answer could hold, and Info."""

    def kafka_router(self, mock, bindings, max_frame, shards=2):
        r = Router(shards=shards, partitions=64, max_frame=max_frame, start=False,
                   extra_yaml=ingest_yaml(mock.bootstrap, bindings, "kvs",
                                          {"reconnect.backoff.max.ms": "500"}))
        self._routers.append(r)
        self.addCleanup(r.close)
        r.start()
        self.assertTrue(wait_until(lambda: len(r.workers()) == shards, 10))
        return r

    def test_record_too_large_to_read_back_is_skipped_and_counted(self):
        topic, parts = "bigrec", 2
        m = self.mock({topic: parts})
        r = self.kafka_router(m, [(topic, "bigtab", "raw", parts)], "64KiB")
        good = {b"good-%d" % i: b"g%d" % i for i in range(20)}
        big = {b"big-%d" % i: b"B" * 100000 for i in range(3)}
        edge = 64 * 1024 - 511 - 64  # key + encoded value may take this much
        fits = {b"fits": b"f" * (edge - len(b"fits") - 4)}  # 3-byte length prefix + tag
        records = list(good.items()) + list(big.items()) + list(fits.items())
        produce(m.bootstrap, topic, records)
        ends = self.ends(m, topic, parts)
        st = self.wait_caught_up(r, topic, ends)
        skipped = {}
        for k in big:
            p = partition_of(k, parts)
            skipped[p] = skipped.get(p, 0) + 1
        self.assert_exactly_once(st, ends, skipped=skipped)
        self.assert_values(r.addr, "bigtab", {**good, **{k: None for k in big}})
        with r.client() as c:
            resp = c.hget("bigtab", b"fits")  # the largest readable pair is kept
            self.assertEqual(resp.status, 200, resp.message)
            self.assertEqual(pyval(resp.values[0]), fits[b"fits"])
        lines = [ln for ln in r.stderr().splitlines() if "skipped" in ln and topic in ln]
        self.assertTrue(lines, "no log line about the skipped records")
        self.assertIn("value too large to be read back", lines[0])
        self.assertIn("limits.max_frame", lines[0])

    def test_info_larger_than_max_frame_is_413_and_harms_nobody(self):
        topic, parts = "wide", 32
        m = self.mock({topic: parts})
        r = self.kafka_router(m, [(topic, "widetab", "raw", parts)], "1KiB")
        mine = keys_by_shard("by", 20, 64, 2)[1]
        by = Bystander(self, r, mine)
        req = pb.CommandRequest()
        req.info.SetInParent()
        with r.client() as c:
            c.max_frame = 1024
            for _ in range(20):
                resp = c.call(req)
                self.assertEqual(resp.status, 413, resp.message)
                self.assertIn("raise limits.max_frame", resp.message)
        by.finish()
        with r.worker_client(1) as w:  # the worker itself says the same
            w.max_frame = 1024
            resp = w.call(req)
            self.assertEqual(resp.status, 413, resp.message)
            self.assertIn("Kafka partition", resp.message)
        self.assertNotIn(" down", r.stderr(), "no link may go down")
        self.assertRaises(AssertionError, info_pairs, r.addr)


if __name__ == "__main__":
    unittest.main()
