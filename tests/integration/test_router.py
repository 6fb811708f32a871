"""kvs-router: placement, multi-key merging, scans, supervision, shutdown,
multi-node routing, bad input, locking, config validation, back-pressure.

Every test starts real kvs-router processes (which spawn real kvs-node
workers) on loopback through routertest.Router, and checks where data lands
by asking the workers directly on their unix sockets. The expected shard of
every key is computed in Python (routertest.murmur2, a port of the Kafka Java
client's partitioner), independently of the C placement code.
"""
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest

from kvstest import (COMPRESSED, LoopbackServer, encode, frame, pb, pyval, req_hexist, req_hget,
                     req_hgetall, req_hmdel, req_hmget, req_hmset, req_hscan, req_hset, req_ping)
from routertest import (RouterTestCase, free_port_range, keys_by_shard, murmur2,
                        pipeline_threaded, procs_for_config, shard_of)

SHARDS = 4
PARTITIONS = 64


def batches(seq, n):
    seq = list(seq)
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class RouterTest(RouterTestCase):
    # ---- helpers ----------------------------------------------------------------

    def write_all(self, client, table, items, batch=1000):
        """Hset every (key, value) through `client`, pipelined in batches;
        every answer must be 200."""
        for chunk in batches(items, batch):
            answers = pipeline_threaded(client, [req_hset(table, k, v) for k, v in chunk])
            for (k, _), a in zip(chunk, answers):
                self.assertEqual(a.status, 200, "Hset %r: %s" % (k, a.message))

    def read_all(self, client, table, expect, batch=1000):
        """Hget every key of `expect` through `client`: 200 and the value."""
        items = list(expect.items())
        for chunk in batches(items, batch):
            answers = pipeline_threaded(client, [req_hget(table, k) for k, _ in chunk])
            for (k, v), a in zip(chunk, answers):
                self.assertEqual(a.status, 200, "Hget %r: %s" % (k, a.message))
                self.assertEqual(pyval(a.values[0]), v, "Hget %r" % k)

    def timed(self, client, req):
        t0 = time.monotonic()
        resp = client.call(req)
        return resp, time.monotonic() - t0

    # ---- placement -----------------------------------------------------------------

    def test_murmur2_matches_kafka(self):
        # Vectors from Kafka's UtilsTest.testMurmur2 (the Java client's partitioner).
        self.assertEqual(murmur2(b"21"), -973932308)
        self.assertEqual(murmur2(b"foobar"), -790332482)
        self.assertEqual(murmur2(b"a-little-bit-long-string"), -985981536)
        self.assertEqual(murmur2(b"a-little-bit-longer-string"), -1486304829)
        self.assertEqual(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971)
        self.assertEqual(murmur2(b"abc"), 479470107)

    def test_placement_10000_keys_each_on_its_shard(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS)
        keys = [("key-%d" % i).encode() for i in range(10000)]
        expect = {k: ("v%d" % i if i % 3 else i) for i, k in enumerate(keys)}
        with r.client() as c:
            self.write_all(c, "place", list(expect.items()))
            self.read_all(c, "place", expect)
        owner = {k: r.shard_of(k) for k in keys}
        self.assertEqual(sorted(set(owner.values())), list(range(SHARDS)),
                         "10,000 keys should cover every shard")
        for s in range(SHARDS):
            with r.worker_client(s) as w:
                resp = w.hmexist("place", keys)
                self.assertOk(resp)
                got = [v.bool_value for v in resp.values]
                self.assertEqual(len(got), len(keys))
                wrong = [(k, owner[k]) for k, present in zip(keys, got)
                         if present != (owner[k] == s)]
                self.assertEqual(wrong[:10], [],
                                 "shard %d: %d keys present/absent against placement "
                                 "(key, expected shard)" % (s, len(wrong)))
                # And single-key Hexist agrees for a sample.
                for k in keys[:200]:
                    a = w.hexist("place", k)
                    self.assertOk(a)
                    self.assertEqual(a.values[0].bool_value, owner[k] == s, (s, k))
                # The owner holds the value the router acknowledged.
                mine = [k for k in keys if owner[k] == s][:200]
                resp = w.hmget("place", mine)
                self.assertOk(resp)
                self.assertEqual([pyval(v) for v in resp.values], [expect[k] for k in mine])

    # ---- multi-key commands ----------------------------------------------------------

    def test_multi_key_commands_across_shards(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS)
        per = keys_by_shard("mk", 10, PARTITIONS, SHARDS)
        # Interleave so consecutive keys are on different shards.
        keys = [per[s][i] for i in range(10) for s in range(SHARDS)]
        rnd = random.Random(7)
        rnd.shuffle(keys)
        v1 = {k: "one-%s" % k.decode() for k in keys}
        v2 = {k: i for i, k in enumerate(keys)}
        missing = [k + b"-missing" for k in keys[:8]]
        with r.client() as c:
            # Hmset on fresh keys: every previous value is empty.
            resp = c.hmset("mk", [(k, v1[k]) for k in keys])
            self.assertOk(resp)
            self.assertEqual([pyval(v) for v in resp.values], [None] * len(keys))
            # Hmset again (other order): previous values come back in request order.
            order2 = list(reversed(keys))
            resp = c.hmset("mk", [(k, v2[k]) for k in order2])
            self.assertOk(resp)
            self.assertEqual([pyval(v) for v in resp.values], [v1[k] for k in order2])
            # Hmget: key order, missing keys as empty Values, duplicates answered twice.
            ask = []
            for i, k in enumerate(keys):
                ask.append(k)
                if i % 5 == 0:
                    ask.append(missing[i % len(missing)])
                if i % 7 == 0:
                    ask.append(keys[0])
            ask.append(keys[-1])
            self.assertGreater(len(set(r.shard_of(k) for k in ask)), SHARDS - 1)
            resp = c.hmget("mk", ask)
            self.assertOk(resp)
            self.assertEqual([pyval(v) for v in resp.values], [v2.get(k) for k in ask])
            # Hmexist: same order, bools.
            resp = c.hmexist("mk", ask)
            self.assertOk(resp)
            self.assertEqual([v.WhichOneof("kind") for v in resp.values],
                             ["bool_value"] * len(ask))
            self.assertEqual([v.bool_value for v in resp.values], [k in v2 for k in ask])
            # Duplicate keys in one Hmset apply in request order (like the worker).
            dk = [per[0][0], per[1][0], per[0][0], per[2][0], per[1][0]]
            resp = c.hmset("mk", [(dk[0], "d1"), (dk[1], "d2"), (dk[2], "d3"), (dk[3], "d4"),
                                  (dk[4], "d5")])
            self.assertOk(resp)
            self.assertEqual([pyval(v) for v in resp.values],
                             [v2[dk[0]], v2[dk[1]], "d1", v2[dk[3]], "d2"])
            v2.update({dk[0]: "d3", dk[1]: "d5", dk[3]: "d4"})
            resp = c.hmget("mk", dk)
            self.assertEqual([pyval(v) for v in resp.values], [v2[k] for k in dk])
            # Hmdel: previous value per key in order; a duplicate's second
            # occurrence finds it already deleted; missing keys give empty.
            dele = keys[:12] + [keys[3], missing[0]]
            resp = c.hmdel("mk", dele)
            self.assertOk(resp)
            self.assertEqual([pyval(v) for v in resp.values],
                             [v2[k] for k in keys[:12]] + [None, None])
            resp = c.hmexist("mk", dele)
            self.assertOk(resp)
            self.assertEqual([v.bool_value for v in resp.values], [False] * len(dele))
            resp = c.hmget("mk", keys)
            self.assertEqual([pyval(v) for v in resp.values],
                             [None] * 12 + [v2[k] for k in keys[12:]])
            # Every value is on its own shard only.
            for s in range(SHARDS):
                with r.worker_client(s) as w:
                    resp = w.hmexist("mk", keys[12:])
                    self.assertEqual([v.bool_value for v in resp.values],
                                     [r.shard_of(k) == s for k in keys[12:]], "shard %d" % s)
            # A bigger random workload against a model.
            model = {k: v2[k] for k in keys[12:]}
            universe = [("rk%d" % i).encode() for i in range(300)] + keys
            for step in range(30):
                pick = [rnd.choice(universe) for _ in range(rnd.randint(1, 60))]
                op = step % 3
                if op == 0:
                    pairs = [(k, "s%d-%d" % (step, j)) for j, k in enumerate(pick)]
                    expect = []
                    for k, v in pairs:
                        expect.append(model.get(k))
                        model[k] = v
                    resp = c.hmset("mk", pairs)
                elif op == 1:
                    expect = [model.get(k) for k in pick]
                    resp = c.hmget("mk", pick)
                else:
                    expect = []
                    for k in pick:
                        expect.append(model.pop(k, None))
                    resp = c.hmdel("mk", pick)
                self.assertOk(resp)
                self.assertEqual([pyval(v) for v in resp.values], expect, "step %d" % step)
            resp = c.hmexist("mk", universe)
            self.assertEqual([v.bool_value for v in resp.values], [k in model for k in universe])

    # ---- scans -----------------------------------------------------------------------

    def scan_pages(self, c, table, count):
        """Walks with Hscan; returns the list of pages (lists of (key, value))."""
        pages, cursor = [], b""
        for _ in range(100000):
            resp = c.hscan(table, cursor, count)
            self.assertOk(resp)
            pages.append([(p.key, pyval(p.value)) for p in resp.pairs])
            if not resp.cursor:
                return pages
            self.assertEqual(resp.cursor[:1], b"S", "router cursor: %r" % resp.cursor[:20])
            self.assertGreater(resp.cursor, cursor, "Hscan made no progress")
            cursor = resp.cursor
        self.fail("Hscan did not finish")

    def test_hscan_and_hgetall(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS)
        keys = [("scan-%05d" % i).encode() for i in range(10000)]
        expect = {k: i for i, k in enumerate(keys)}
        with r.client() as c:
            for chunk in batches(keys, 500):
                self.assertOk(c.hmset("scan", [(k, expect[k]) for k in chunk]))
            for count, limit in ((333, 333), (0, 100)):
                pages = self.scan_pages(c, "scan", count)
                for p in pages:
                    self.assertLessEqual(len(p), limit, "count %d" % count)
                got = [kv for p in pages for kv in p]
                seen = [k for k, _ in got]
                self.assertEqual(len(seen), len(set(seen)), "count %d: duplicates" % count)
                self.assertEqual(set(seen), set(keys), "count %d: missing or extra keys" % count)
                self.assertEqual(dict(got), expect)
                self.assertGreaterEqual(len(pages), len(keys) // limit)
            # Hgetall of the whole table fits 4 MiB: every pair in global key order.
            resp = c.hgetall("scan")
            self.assertOk(resp)
            self.assertEqual([(p.key, pyval(p.value)) for p in resp.pairs],
                             sorted(expect.items()))
            # A small table with keys of every shard, in mixed-length byte order.
            small = {b"b": 1, b"a": "x", b"ab": 2.5, b"\x00z": True, b"\xff": b"bin",
                     b"a\x00": 3, b"zz": "last", b"B": 4, b"10": 5, b"9": 6, b"100": 7}
            self.assertGreater(len(set(r.shard_of(k) for k in small)), 2)
            self.assertOk(c.hmset("small", list(small.items())))
            resp = c.hgetall("small")
            self.assertOk(resp)
            self.assertEqual([(p.key, pyval(p.value)) for p in resp.pairs], sorted(small.items()))
            # An empty / unknown table: 200, nothing.
            resp = c.hgetall("nothing-here")
            self.assertOk(resp)
            self.assertEqual(len(resp.pairs), 0)
            resp = c.hscan("nothing-here", b"", 10)
            self.assertOk(resp)
            self.assertEqual(len(resp.pairs), 0)
            # Forged cursors: 400 naming the cursor, the connection stays usable.
            for forged in (b"x", b"S", b"S\x00", b"T\x00\x00abc", b"S\x00\x04",
                           b"S\xff\xff", b"S\x01\x00key"):
                resp = c.hscan("scan", forged, 10)
                self.assertEqual(resp.status, 400, "cursor %r: %s" % (forged, resp.message))
                self.assertIn("cursor", resp.message)
            self.assertEqual(c.ping().message, "PONG")

    def test_hscan_page_goes_on_across_shards_within_its_bounds(self):
        """A page whose shard ends before `count` pairs goes on with the next
        shards: a small table is one page with an empty cursor (as Redis
        answers a small hash in one HSCAN), a page never holds more than
        `count` pairs, nor walks more than 16 shards, nor keeps more than
        max_frame / 4 of earlier shards' pairs; a shard's pairs that do not
        fit beside the earlier ones' start the next page."""
        r = self.router(shards=SHARDS, partitions=PARTITIONS, max_frame="64KiB")
        keys = keys_by_shard("f", 3, PARTITIONS, SHARDS)
        with r.client() as c:
            for s in range(SHARDS):
                self.assertOk(c.hmset("small", [(k, b"v") for k in keys[s]]))
            # every shard's keys in one page, shard by shard, each in key order
            resp = c.hscan("small", b"", 0)
            self.assertOk(resp)
            self.assertEqual([p.key for p in resp.pairs],
                             [k for s in range(SHARDS) for k in sorted(keys[s])])
            self.assertEqual(resp.cursor, b"")
            # count 5: shard 0's 3 and shard 1's first 2, then the rest
            resp = c.hscan("small", b"", 5)
            self.assertEqual([p.key for p in resp.pairs], sorted(keys[0]) + sorted(keys[1])[:2])
            self.assertEqual(resp.cursor[:3], b"S\x00\x01")
            rest = c.hscan("small", resp.cursor, 5)
            self.assertEqual([p.key for p in rest.pairs],
                             sorted(keys[1])[2:] + sorted(keys[2]) + sorted(keys[3])[:1])
            self.assertEqual(rest.cursor[:3], b"S\x00\x03")
            self.assertEqual(len(c.scan_all("small", count=5)), 3 * SHARDS)
            # A table on the last shard alone: the empty shards cost no page.
            self.assertOk(c.hset("last", keys[SHARDS - 1][0], b"v"))
            resp = c.hscan("last", b"", 10)
            self.assertEqual(([p.key for p in resp.pairs], resp.cursor),
                             ([keys[SHARDS - 1][0]], b""))
            # Large values: shard 0's 20 KB (over 64 KiB / 4) ends its page;
            # shard 1's 10 KB is kept, shard 2's 2 x 30 KB does not fit
            # beside it and starts the next page, which is over 64 KiB / 4
            # and ends there.
            self.assertOk(c.hmset("big", [(k, b"a" * 10000) for k in keys[0][:2]]))
            self.assertOk(c.hset("big", keys[1][0], b"b" * 10000))
            self.assertOk(c.hmset("big", [(k, b"c" * 30000) for k in keys[2][:2]]))
            self.assertOk(c.hset("big", keys[3][0], b"d"))
            pages, cursor = [], b""
            while True:
                resp = c.hscan("big", cursor, 100)
                self.assertOk(resp)
                pages.append(([p.key for p in resp.pairs], resp.cursor))
                cursor = resp.cursor
                if not cursor:
                    break
            self.assertEqual(pages, [
                (sorted(keys[0][:2]), b"S\x00\x01"),
                ([keys[1][0]], b"S\x00\x02"),
                (sorted(keys[2][:2]), b"S\x00\x03"),
                ([keys[3][0]], b""),
            ])

    def test_a_pipelined_hscan_page_shows_no_later_write(self):
        # A page walks its shards one after another; a write pipelined
        # after it went to its shard at once, before the page got there,
        # and the page showed it (a reply holding data from the future).
        # Once a later request of the client was read (a write or a read),
        # a page asked of the workers ends at its shard's end instead, its
        # cursor starting the next shard. (A page read from local shards' files is read
        # whole before the next request is routed.)
        for local in ("false", "true"):
            r = self.router(shards=SHARDS, partitions=PARTITIONS,
                            router_yaml=["local_reads: %s" % local])
            keys = keys_by_shard("p", 2, PARTITIONS, SHARDS)
            with r.client() as c:
                for s in range(SHARDS):
                    self.assertOk(c.hmset("pipe", [(k, "old") for k in keys[s]]))
                for _ in range(20):
                    c.send_raw(encode(req_hscan("pipe", b"", 1000)) +
                               b"".join(encode(req_hset("pipe", keys[s][0], "new"))
                                        for s in range(1, SHARDS)))
                    page = c.recv()
                    for _ in range(1, SHARDS):
                        self.assertOk(c.recv())
                    self.assertOk(page)
                    seen = {p.key: pyval(p.value) for p in page.pairs}
                    self.assertEqual(set(seen.values()), {"old"}, (local, seen))
                    if local == "false":
                        self.assertEqual(sorted(seen), sorted(keys[0]))
                        self.assertEqual(page.cursor, b"S\x00\x01")
                    for s in range(1, SHARDS):
                        self.assertOk(c.hset("pipe", keys[s][0], "old"))
                # Alone, the page still goes on across the shards.
                resp = c.hscan("pipe", b"", 1000)
                self.assertEqual((len(resp.pairs), resp.cursor), (2 * SHARDS, b""))
                # Followed by reads, it ends at its shard's end too: a read
                # behind it ran at the next shard before the page got there,
                # and a page showing a key newer than that read's answer
                # let the client see time go backwards (another client
                # writing meanwhile).
                for _ in range(20):
                    c.send_raw(encode(req_hscan("pipe", b"", 1000)) +
                               b"".join(encode(req_hget("pipe", keys[s][0]))
                                        for s in range(1, SHARDS)))
                    page = c.recv()
                    for _ in range(1, SHARDS):
                        self.assertOk(c.recv())
                    if local == "false":
                        self.assertEqual((sorted(p.key for p in page.pairs), page.cursor),
                                         (sorted(keys[0]), b"S\x00\x01"))
                    else:
                        self.assertEqual((len(page.pairs), page.cursor), (2 * SHARDS, b""))
            r.close()

    def test_hscan_page_walks_at_most_16_shards(self):
        shards = 18
        r = self.router(shards=shards, partitions=shards)
        key = keys_by_shard("h", 1, shards, shards)[shards - 1][0]
        with r.client() as c:
            self.assertOk(c.hset("far", key, b"v"))
            first = c.hscan("far", b"", 10)
            self.assertOk(first)
            self.assertEqual((len(first.pairs), first.cursor), (0, b"S\x00\x10"))
            second = c.hscan("far", first.cursor, 10)
            self.assertEqual(([p.key for p in second.pairs], second.cursor), ([key], b""))

    def test_text_with_nul_whole_on_every_path(self):
        # U+0000 inside string_value is valid text: written by Hset (passed
        # through) and by an Hmset the router splits per shard (sub-requests
        # packed again), read by Hget, by Hmget, Hgetall and Hscan (answers
        # merged and packed again), it stays byte for byte what was sent.
        r = self.router(shards=SHARDS, partitions=PARTITIONS)
        texts = {("n-%02d" % i).encode(): "\x00" * (i % 3) + "t\x00%d" % i + "\x00" * (i % 2)
                 for i in range(16)}
        keys = sorted(texts)
        self.assertGreater(len(set(r.shard_of(k) for k in keys)), 2)

        def checked(resp):
            self.assertOk(resp)
            return resp
        with r.client() as c:
            for k in keys[:4]:
                self.assertIsNone(pyval(checked(c.hset("nul", k, texts[k])).values[0]))
            resp = checked(c.hmset("nul", [(k, texts[k]) for k in keys[4:]]))
            self.assertEqual([pyval(v) for v in resp.values], [None] * 12)
            for k in keys:
                self.assertEqual(pyval(checked(c.hget("nul", k)).values[0]), texts[k])
            resp = checked(c.hmget("nul", keys[::-1]))
            self.assertEqual([pyval(v) for v in resp.values], [texts[k] for k in keys[::-1]])
            resp = checked(c.hgetall("nul"))
            self.assertEqual([(p.key, pyval(p.value)) for p in resp.pairs], sorted(texts.items()))
            self.assertEqual(dict(c.scan_all("nul", count=3)), texts)
            # Previous values come back whole too, through a split Hmset.
            resp = checked(c.hmset("nul", [(k, "x") for k in keys]))
            self.assertEqual([pyval(v) for v in resp.values], [texts[k] for k in keys])

    def test_hgetall_larger_than_max_frame_is_413(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS, max_frame="64KiB")
        keys = [("big-%04d" % i).encode() for i in range(2000)]
        val = {k: ("%04d" % i).encode() * 25 for i, k in enumerate(keys)}  # 100 bytes
        with r.client() as c:
            self.write_all(c, "big", list(val.items()), batch=200)
            resp = c.hgetall("big")
            self.assertEqual(resp.status, 413, resp.message)
            self.assertIn("Hscan", resp.message)
            self.assertEqual(len(resp.pairs), 0)
            # The connection still works and Hscan reads the whole table.
            self.assertEqual(c.ping().message, "PONG")
            pages = self.scan_pages(c, "big", 10000)
            got = [kv for p in pages for kv in p]
            self.assertEqual(len(got), len(keys))
            self.assertEqual(dict(got), val)

    # ---- supervision -----------------------------------------------------------------

    def test_killed_worker_is_restarted_and_others_keep_serving(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS, sync="batch")
        per = keys_by_shard("kill", 200, PARTITIONS, SHARDS)
        expect = {k: "val-%s" % k.decode() for s in per for k in per[s]}
        victim = 1
        with r.client() as c:
            self.write_all(c, "k9", list(expect.items()))
            before = r.workers()
            self.assertEqual(sorted(before), list(range(SHARDS)), r.stderr())
            old = r.kill_worker(victim)
            t_kill = time.monotonic()
            saw_503 = 0
            recovered = False
            i = 0
            while time.monotonic() - t_kill < 8.0:
                vk = per[victim][i % 200]
                ok_shard = [s for s in range(SHARDS) if s != victim][i % (SHARDS - 1)]
                ok_key = per[ok_shard][i % 200]
                i += 1
                resp, dt = self.timed(c, req_hget("k9", vk))
                self.assertLess(dt, 1.0, "Hget on the dead shard took %.2f s" % dt)
                if resp.status == 503:
                    self.assertIn("shard %d" % victim, resp.message)
                    saw_503 += 1
                else:
                    self.assertEqual(resp.status, 200, resp.message)
                    self.assertEqual(pyval(resp.values[0]), expect[vk])
                resp, dt = self.timed(c, req_hget("k9", ok_key))
                self.assertLess(dt, 1.0, "Hget on live shard %d took %.2f s" % (ok_shard, dt))
                self.assertEqual(resp.status, 200,
                                 "shard %d while %d is down: %s" % (ok_shard, victim,
                                                                    resp.message))
                self.assertEqual(pyval(resp.values[0]), expect[ok_key])
                if saw_503 and r.worker_pid(victim) not in (None, old):
                    # Restarted: every acknowledged key of the victim is back.
                    resp = c.hmget("k9", per[victim])
                    if resp.status == 200:
                        self.assertEqual([pyval(v) for v in resp.values],
                                         [expect[k] for k in per[victim]])
                        recovered = True
                        break
                time.sleep(0.005)
            elapsed = time.monotonic() - t_kill
            self.assertGreater(saw_503, 0, "no 503 from the killed shard")
            self.assertTrue(recovered, "shard %d not serving its data %.1f s after kill -9"
                            % (victim, elapsed))
            self.assertLess(elapsed, 5.5, "recovery took %.1f s" % elapsed)
            new = r.worker_pid(victim)
            self.assertNotIn(new, (None, old))
            after = r.workers()
            for s in range(SHARDS):
                if s != victim:
                    self.assertEqual(after.get(s), before[s], "shard %d restarted too" % s)
            self.read_all(c, "k9", expect)
        # The router says what happened to the worker.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "killed by signal SIGKILL" not in r.stderr():
            time.sleep(0.05)
        self.assertIn("shard %d (pid %d) killed by signal SIGKILL" % (victim, old), r.stderr())

    # ---- shutdown ---------------------------------------------------------------------

    def sigterm_while_pipelining(self, n, slow_reader, sigint_group=False):
        """Pipelines n fresh Hsets on one connection, SIGTERMs the router while
        they are in flight, reads every answer until the router closes, then
        checks: answers well-formed and 200, clean EOF (no reset), exit code
        0, no process left, and after a restart exactly the answered writes
        are stored (nothing applied without an answer, nothing answered lost).

        slow_reader: the client uses a small receive buffer and does not read
        until 1 s after the signal (a busy or distant client).
        sigint_group: instead of SIGTERM to the router, SIGINT to its whole
        process group, as a terminal's Ctrl-C does (the router runs in a
        session of its own, like a shell job)."""
        r = self.router(shards=SHARDS, partitions=PARTITIONS, sync="batch",
                        new_session=sigint_group)
        keys = [("term-%05d" % i).encode() for i in range(n)]
        data = b"".join(encode(req_hset("term", k, i)) for i, k in enumerate(keys))
        c = r.client(timeout=15.0)
        self.addCleanup(c.close)
        if slow_reader:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.assertEqual(c.ping().message, "PONG")
        send_err = []

        def sender():
            try:
                c.sock.sendall(data)
            except OSError as e:  # the router may close before reading it all
                send_err.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        answers, end = [], None
        if slow_reader:
            time.sleep(0.02)
        else:
            answers.append(c.recv())  # the router is busy with the pipeline
        if sigint_group:
            os.killpg(r.proc.pid, signal.SIGINT)
        else:
            r.proc.send_signal(signal.SIGTERM)
        if slow_reader:
            time.sleep(1.0)
        while True:
            try:
                got = c.recv_raw()
            except ConnectionResetError:
                end = "reset"
                break
            except EOFError as e:
                self.fail("garbled stream after %d answers: %s" % (len(answers), e))
            if got is None:
                end = "eof"
                break
            word, payload = got
            self.assertFalse(word & COMPRESSED)
            resp = pb.CommandResponse()
            resp.ParseFromString(payload)
            answers.append(resp)
        t.join(15)
        k = len(answers)
        for i, a in enumerate(answers):
            self.assertEqual(a.status, 200, "answer %d: %d %s" % (i, a.status, a.message))
            self.assertEqual(len(a.values), 1)
            self.assertIsNone(pyval(a.values[0]), "answer %d is not a fresh Hset's" % i)
        self.assertLessEqual(k, n)
        rc = r.proc.wait(15)
        self.assertEqual(rc, 0, "kvs-router exit code after %s"
                         % ("SIGINT to its group" if sigint_group else "SIGTERM"))
        self.assertTrue(r.wait_all_gone(15), "processes left: %r" % procs_for_config(r.config))
        log = r.stderr()
        self.assertIn("received %s: draining" % ("SIGINT" if sigint_group else "SIGTERM"), log)
        # Only the router got the signal; it stopped the workers itself, in
        # order, and restarted none of them.
        drained = log.find("clients drained; stopping workers")
        self.assertGreater(drained, 0, log)
        self.assertEqual(re.findall(r"node\[\d+\] \w+ +received SIG\w+", log[:drained]), [],
                         "a worker was signalled before the router had drained")
        self.assertNotIn("restarting shard", log)
        self.assertNotIn("started shard", log)
        # Restart on the same data: what was answered is stored, and nothing
        # was applied without its answer reaching the client.
        r.proc = None
        r.start()
        with r.client() as c2:
            resp = c2.hmexist("term", keys)
            self.assertOk(resp)
            present = [i for i, v in enumerate(resp.values) if v.bool_value]
            self.assertEqual(len(present), k,
                             "the client got %d answers (then %s) but %d writes were applied: "
                             "%d acknowledgements were lost"
                             % (k, end, len(present), len(present) - k))
            self.assertEqual(present, list(range(k)))
            resp = c2.hmget("term", keys[:k])
            self.assertEqual([pyval(v) for v in resp.values], list(range(k)))
        self.assertEqual(end, "eof", "the router reset the connection after %d answers "
                         "instead of closing it cleanly" % k)

    def test_sigterm_answers_pipelined_requests_then_exits_0(self):
        self.sigterm_while_pipelining(5000, slow_reader=False)

    def test_sigterm_with_slow_reader_loses_no_answers(self):
        self.sigterm_while_pipelining(20000, slow_reader=True)

    def test_sigint_to_the_process_group_drains_like_sigterm(self):
        """Ctrl-C in a terminal signals the whole foreground process group:
        the workers must not hear it, or they close while the router still
        drains (503s) and the router restarts them."""
        self.sigterm_while_pipelining(5000, slow_reader=False, sigint_group=True)

    # ---- several nodes ---------------------------------------------------------------------

    def wait_all_shards(self, router, probe, timeout=10.0):
        """Waits until `router` answers 200 for Hmexist over keys of every shard."""
        deadline = time.monotonic() + timeout
        last = None
        with router.client() as c:
            while time.monotonic() < deadline:
                last = c.hmexist("probe", probe)
                if last.status == 200:
                    return
                time.sleep(0.05)
        self.fail("router %s never reached every shard: %d %s"
                  % (router.name, last.status, last.message))

    def test_two_nodes_share_four_shards(self):
        base_a = free_port_range(SHARDS)
        base_b = free_port_range(SHARDS)
        for _ in range(20):
            if abs(base_a - base_b) >= SHARDS:
                break
            base_b = free_port_range(SHARDS)
        self.assertGreaterEqual(abs(base_a - base_b), SHARDS)
        a = self.router(start=False, name="A", shards=SHARDS, partitions=PARTITIONS,
                        node_listen="127.0.0.1:%d" % base_a,
                        remote={2: "127.0.0.1:%d" % (base_b + 2),
                                3: "127.0.0.1:%d" % (base_b + 3)})
        b = self.router(start=False, name="B", shards=SHARDS, partitions=PARTITIONS,
                        node_listen="127.0.0.1:%d" % base_b,
                        remote={0: "127.0.0.1:%d" % base_a, 1: "127.0.0.1:%d" % (base_a + 1)})
        a.start()
        b.start()
        self.assertEqual(sorted(a.workers()), [0, 1])
        self.assertEqual(sorted(b.workers()), [2, 3])
        per = keys_by_shard("probe", 1, PARTITIONS, SHARDS)
        probe = [per[s][0] for s in range(SHARDS)]
        self.wait_all_shards(a, probe)
        self.wait_all_shards(b, probe)
        ka = [("from-a-%d" % i).encode() for i in range(2000)]
        kb = [("from-b-%d" % i).encode() for i in range(2000)]
        va = {k: "A%d" % i for i, k in enumerate(ka)}
        vb = {k: i for i, k in enumerate(kb)}
        with a.client() as ca, b.client() as cb:
            self.write_all(ca, "two", list(va.items()))
            self.read_all(cb, "two", va)
            self.write_all(cb, "two", list(vb.items()))
            self.read_all(ca, "two", vb)
            both = ka + kb
            resp = ca.hmget("two", both)
            self.assertOk(resp)
            self.assertEqual([pyval(v) for v in resp.values], [va.get(k, vb.get(k)) for k in both])
        # Each key is stored on the worker that owns its shard, on its node.
        for s in range(SHARDS):
            node = a if s < 2 else b
            with node.worker_client(s) as w:
                resp = w.hmexist("two", both)
                self.assertOk(resp)
                self.assertEqual([v.bool_value for v in resp.values],
                                 [shard_of(k, PARTITIONS, SHARDS) == s for k in both],
                                 "shard %d on node %s" % (s, node.name))
        # Node B goes away entirely (router and workers, kill -9).
        b.kill_all()
        self.assertTrue(b.wait_all_gone(10))
        by_shard = {s: [k for k in both if shard_of(k, PARTITIONS, SHARDS) == s][:50]
                    for s in range(SHARDS)}
        expect = dict(va)
        expect.update(vb)
        with a.client() as ca:
            for rnd in range(2):  # right away, and again once the link noticed
                for s in range(SHARDS):
                    for k in by_shard[s]:
                        resp, dt = self.timed(ca, req_hget("two", k))
                        self.assertLess(dt, 1.0, "shard %d answered after %.2f s" % (s, dt))
                        if s < 2:
                            self.assertEqual(resp.status, 200, resp.message)
                            self.assertEqual(pyval(resp.values[0]), expect[k])
                        else:
                            self.assertUnavailable(resp, s)
                time.sleep(0.5)
            # A multi-key request touching a lost shard: 503 naming it.
            resp = ca.hmget("two", [by_shard[0][0], by_shard[2][0]])
            self.assertUnavailable(resp, 2)
            resp = ca.hmget("two", by_shard[0] + by_shard[1])
            self.assertOk(resp)
        self.assertEqual(a.stop(), 0)

    def test_hscan_through_a_node_with_a_smaller_max_frame_walks_a_remote_shard(self):
        # Node A (max_frame 64 KiB) serves shard 0 and reads shard 1 from
        # node B (1 MiB). B's pages of 10 values of 30 KB were 300 KB,
        # which A's link cannot carry: every page of the walk was 413, and
        # shard 1 could not be walked through A at all. A now says the
        # largest page it takes, and B ends its pages there.
        base_a, base_b = free_port_range(2), free_port_range(2)
        for _ in range(20):
            if abs(base_a - base_b) >= 2:
                break
            base_b = free_port_range(2)
        a = self.router(start=False, name="A", shards=2, partitions=8, max_frame="64KiB",
                        node_listen="127.0.0.1:%d" % base_a,
                        remote={1: "127.0.0.1:%d" % (base_b + 1)})
        b = self.router(start=False, name="B", shards=2, partitions=8, max_frame="1MiB",
                        node_listen="127.0.0.1:%d" % base_b,
                        remote={0: "127.0.0.1:%d" % base_a})
        a.start()
        b.start()
        keys = keys_by_shard("big", 30, 8, 2)
        self.wait_all_shards(a, [keys[0][0], keys[1][0]])
        want = {k: b"v" * 30000 for k in keys[1][:30]}
        with b.client() as cb:
            for k, v in want.items():
                self.assertOk(cb.hset("scan", k, v))
        got, cursor, pages = {}, b"", 0
        with a.client() as ca:
            while True:
                resp = ca.hscan("scan", cursor, 10)
                self.assertOk(resp)
                self.assertLessEqual(resp.ByteSize(), 64 * 1024)
                got.update((p.key, pyval(p.value)) for p in resp.pairs)
                pages += 1
                cursor = resp.cursor
                if not cursor:
                    break
                self.assertLess(pages, 40, "the walk does not end")
        self.assertEqual(got, want)
        self.assertGreater(pages, 3, "pages of at most 64 KiB")

    # ---- bad input ---------------------------------------------------------------------------

    def test_bad_input_answers_like_a_worker(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS)

        def raw(req):
            return req.SerializeToString()

        hset_no_value = pb.CommandRequest()
        hset_no_value.hset.table, hset_no_value.hset.pair.key = "t", b"k"
        hset_empty_value = pb.CommandRequest()
        hset_empty_value.hset.table, hset_empty_value.hset.pair.key = "t", b"k"
        hset_empty_value.hset.pair.value.SetInParent()
        hmset_no_value = pb.CommandRequest()
        hmset_no_value.hmset.table = "t"
        p = hmset_no_value.hmset.pairs.add()
        p.key = b"k"
        bad = [
            ("no command", b""),
            ("empty table", raw(req_hget("", "k"))),
            ("empty table Hgetall", raw(req_hgetall(""))),
            ("reserved table", raw(req_hget("__kvs", "k"))),
            ("reserved table Hgetall", raw(req_hgetall("__kvs"))),
            ("reserved table Hscan", raw(req_hscan("__kvs"))),
            ("reserved table Hmset", raw(req_hmset("__kvs", [("k", "v")]))),
            ("table too long", raw(req_hget("x" * 201, "k"))),
            ("empty key", raw(req_hget("t", ""))),
            ("empty key Hset", raw(req_hset("t", "", "v"))),
            ("empty key in Hmget", raw(req_hmget("t", ["a", "", "b"]))),
            ("key too long", raw(req_hexist("t", b"k" * 512))),
            ("Hmget without keys", raw(req_hmget("t", []))),
            ("Hmdel without keys", raw(req_hmdel("t", []))),
            ("Hmset without pairs", raw(req_hmset("t", []))),
            ("Hset without value", raw(hset_no_value)),
            ("Hset with an empty Value", raw(hset_empty_value)),
            ("Hmset pair without value", raw(hmset_no_value)),
            ("unknown command field 60", b"\xe2\x03\x00"),
            ("unknown field beside Hget", raw(req_hget("t", "k")) + b"\xe2\x03\x00"),
            ("garbage payload", b"\xff\xff\xff\xff\xff"),
            ("truncated Hget", raw(req_hget("t", "key"))[:-2]),
        ]
        with r.client() as c, r.worker_client(0) as w:
            for name, payload in bad:
                c.send_raw(frame(payload))
                via_router = c.recv()
                w.send_raw(frame(payload))
                direct = w.recv()
                self.assertEqual(direct.status, 400, "%s (worker): %s" % (name, direct.message))
                self.assertEqual((via_router.status, via_router.message),
                                 (direct.status, direct.message), name)
                self.assertTrue(via_router.message, name)
                self.assertEqual(len(via_router.values) + len(via_router.pairs), 0, name)
            # The same connection still serves good requests.
            self.assertEqual(c.ping().message, "PONG")
            self.assertOk(c.hset("t", "k", "v"))
            self.assertEqual(pyval(c.hget("t", "k").values[0]), "v")
            # A compressed frame: 400 and close, like the worker.
            c.send_raw(frame(raw(req_ping()), COMPRESSED))
            resp = c.recv()
            self.assertEqual(resp.status, 400, resp.message)
            self.assertIn("compress", resp.message)
            c.sock.settimeout(3)
            self.assertTrue(c.at_eof())
        # An oversized frame header: 413 naming the limit, then the router closes.
        with r.client() as c:
            c.send_raw(struct.pack(">I", 0x7FFFFFF0))
            resp = c.recv()
            self.assertEqual(resp.status, 413, resp.message)
            self.assertIn("max_frame", resp.message)
            c.sock.settimeout(3)
            try:
                self.assertTrue(c.at_eof(), "expected the connection to close after 413")
            except socket.timeout:
                self.fail("connection still open 3 s after the 413")
        with r.client() as c:  # another header just over 4 MiB, with a body following
            c.send_raw(struct.pack(">I", 4 * 1024 * 1024 + 1) + b"\x00" * 1000)
            resp = c.recv()
            self.assertEqual(resp.status, 413, resp.message)
            c.sock.settimeout(3)
            self.assertTrue(c.at_eof())
        # The router is unharmed.
        with r.client() as c:
            self.assertEqual(c.ping().message, "PONG")
            self.assertEqual(pyval(c.hget("t", "k").values[0]), "v")
        self.assertTrue(r.alive())

    # ---- locking and config ---------------------------------------------------------------

    def test_second_router_on_same_data_dir_refuses(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS)
        workers = r.workers()
        self.assertEqual(sorted(workers), list(range(SHARDS)))
        with r.client() as c:
            self.assertOk(c.hset("lock", "k", "before"))
        second = subprocess.Popen([r.exe, "--config", r.config], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = second.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            second.kill()
            out, err = second.communicate()
            self.fail("second kvs-router still running after 5 s:\n%s" % err.decode())
        text = (out + err).decode("utf-8", "replace")
        self.assertNotEqual(second.returncode, 0, text)
        self.assertIn("another kvs-router", text)
        self.assertIn("router.lock", text)
        # No worker was spawned or disturbed; the first router keeps serving.
        self.assertEqual(r.workers(), workers)
        self.assertTrue(r.alive())
        per = keys_by_shard("after", 5, PARTITIONS, SHARDS)
        with r.client() as c:
            self.assertEqual(pyval(c.hget("lock", "k").values[0]), "before")
            for s in range(SHARDS):
                for k in per[s]:
                    self.assertOk(c.hset("lock", k, s))
            resp = c.hmget("lock", [k for s in range(SHARDS) for k in per[s]])
            self.assertEqual([pyval(v) for v in resp.values],
                             [s for s in range(SHARDS) for _ in per[s]])
        self.assertEqual(r.stop(), 0)

    def test_partitions_below_shards_is_refused(self):
        r = self.router(start=False, shards=4, partitions=2)
        with open(r.config) as f:
            lines = f.read().split("\n")
        line = next(i + 1 for i, l in enumerate(lines) if l.strip().startswith("partitions:"))
        col_key = lines[line - 1].index("partitions") + 1
        col_val = lines[line - 1].index("2") + 1
        proc = r.spawn()
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.fail("kvs-router still running with partitions < shards:\n" + r.stderr())
        text = r.stderr()
        self.assertNotEqual(rc, 0, text)
        m = re.search(re.escape(r.config) + r":(\d+):(\d+): cluster\.partitions \(2\) must be "
                      r">= cluster\.shards \(4\)", text)
        self.assertIsNotNone(m, text)
        self.assertEqual(int(m.group(1)), line, text)
        self.assertIn(int(m.group(2)), (col_key, col_val), text)
        self.assertEqual(procs_for_config(r.config), {}, "workers were started")
        with self.assertRaises(OSError):
            socket.create_connection(r.addr, timeout=1).close()

    # ---- back-pressure ----------------------------------------------------------------------

    def test_backpressure_max_inflight_keeps_order(self):
        r = self.router(shards=SHARDS, partitions=PARTITIONS, max_inflight=8)
        n = 500
        keys = [("bp-%d" % i).encode() for i in range(n + 1)]
        reqs, expect = [], []
        for j in range(n):
            reqs.append(req_hset("bp", keys[j], j))
            expect.append(("set", None))
            reqs.append(req_hget("bp", keys[j]))
            expect.append(("get", j))
            window = keys[max(0, j - 5):j + 1]
            reqs.append(req_hmget("bp", window + [keys[j + 1]]))
            expect.append(("mget", list(range(max(0, j - 5), j + 1)) + [None]))
            reqs.append(req_hexist("bp", keys[j + 1]))
            expect.append(("exist", False))
        self.assertEqual(len(reqs), 2000)
        with r.client(timeout=20) as c:
            answers = pipeline_threaded(c, reqs, timeout=45)
            self.assertEqual(len(answers), 2000)
            for i, ((kind, want), a) in enumerate(zip(expect, answers)):
                self.assertEqual(a.status, 200, "answer %d (%s): %s" % (i, kind, a.message))
                if kind == "set":
                    self.assertIsNone(pyval(a.values[0]), i)
                elif kind == "get":
                    self.assertEqual(pyval(a.values[0]), want, i)
                elif kind == "mget":
                    self.assertEqual([pyval(v) for v in a.values], want, i)
                else:
                    self.assertEqual(a.values[0].bool_value, want, i)
            # A second client is served while the first one is being throttled.
            with r.client() as other:
                self.assertEqual(other.ping().message, "PONG")
            self.assertEqual(c.ping().message, "PONG")

    def test_large_pipelined_values_do_not_stall_a_link(self):
        # 600 Hsets of 100 KB over 10 keys: the answers carry 100 KB previous
        # values, so router->worker requests and worker->router answers each
        # queue tens of MB at once. A link that stopped reading answers while
        # its own requests were queued deadlocked until router.timeout.
        # (sync: none: the 60 MB are about the link, and disk syncs on a
        # busy machine must not decide the 3 s timeout.)
        r = self.router(shards=1, partitions=8, timeout="3s", sync="none")
        val = b"x" * 100000
        reqs = [req_hset("big", ("k%d" % (i % 10)).encode(), val) for i in range(600)]
        with r.client(timeout=20) as c:
            answers = pipeline_threaded(c, reqs, timeout=45)
        statuses = [a.status for a in answers]
        self.assertEqual(statuses.count(200), 600, "statuses: %s" % {s: statuses.count(s)
                                                                       for s in set(statuses)})



class FakeShard(LoopbackServer):
    """A remote worker impersonated on loopback: it answers every request
    on every connection with answer(request) (a CommandResponse)."""

    def __init__(self, answer):
        self.answer = answer
        super().__init__(self._serve_frames, threaded=True)

    def _serve_frames(self, c):
        while not self.stopping:
            hdr = c.recv(4, socket.MSG_WAITALL)
            if len(hdr) < 4:
                return
            (n,) = struct.unpack(">I", hdr)
            body = c.recv(n, socket.MSG_WAITALL) if n else b""
            c.sendall(frame(self.answer(pb.CommandRequest.FromString(body)).SerializeToString()))


class SplitWriteMergeTest(RouterTestCase):
    def fake_shard(self):
        """A shard 1 that answers every write 200 with no values, whatever
        its keys: a part the router cannot merge."""
        def answer(req):
            resp = pb.CommandResponse()
            resp.status = 200
            if req.WhichOneof("command") == "ping":
                resp.message = "PONG"
            return resp
        fake = FakeShard(answer)
        self.addCleanup(fake.close)
        return fake

    def test_a_split_write_the_router_cannot_merge_is_not_said_unwritten(self):
        # A part answered 200 with fewer previous values than keys: the
        # router cannot merge the answer, but the other shard wrote its
        # keys. Its 500 said nothing about that, which tells a client that
        # nothing was written; it must say the keys may or may not be.
        fake = self.fake_shard()
        r = self.router(shards=2, partitions=PARTITIONS,
                        remote={1: "127.0.0.1:%d" % fake.port})
        ks = keys_by_shard("sw", 1, PARTITIONS, 2)
        with r.client() as c:
            resp = c.call(req_hmset("t", [(ks[0][0], "a"), (ks[1][0], "b")]))
            self.assertEqual(resp.status, 500, resp.message)
            self.assertTrue(resp.outcome_unknown, resp.message)
            self.assertIn("shard 1 answered 0 values for more keys", resp.message)
            self.assertIn("Hmset may or may not have written its keys", resp.message)
            self.assertEqual(pyval(c.hget("t", ks[0][0]).values[0]), "a")  # shard 0 wrote

    def test_a_redis_split_write_the_router_cannot_merge_speaks_of_fields(self):
        # The same through the Redis port: the client sent HSET about fields.
        import redis
        from routertest import free_port

        fake = self.fake_shard()
        rport = free_port()
        self.router(shards=2, partitions=PARTITIONS, remote={1: "127.0.0.1:%d" % fake.port},
                    router_yaml=['resp_listen: "127.0.0.1:%d"' % rport])
        ks = keys_by_shard("sw", 1, PARTITIONS, 2)
        c = redis.Redis(host="127.0.0.1", port=rport, socket_timeout=10)
        self.addCleanup(c.close)
        with self.assertRaisesRegex(redis.ResponseError,
                                    "the command may or may not have written its fields"):
            c.hset("t", mapping={ks[0][0]: "a", ks[1][0]: "b"})

class WorkerAnswerCheckTest(RouterTestCase):
    """A remote worker whose answers are not a worker's: the router takes
    them for what they prove, which is nothing."""

    def fake(self, answer):
        fake = FakeShard(answer)
        self.addCleanup(fake.close)
        return fake

    def no_status(self, req):
        resp = pb.CommandResponse()
        if req.WhichOneof("command") == "ping":
            resp.status, resp.message = 200, "PONG"
        return resp  # anything else: empty, status 0

    def test_a_split_write_part_answered_without_a_status_may_have_written(self):
        # Shard 1 answers Hmset and Hmdel with an empty frame. The 207
        # listed its keys as not written, which nobody knows: it may have
        # written them. Reads of several shards passed the status 0 on.
        fake = self.fake(self.no_status)
        r = self.router(shards=2, partitions=PARTITIONS,
                        remote={1: "127.0.0.1:%d" % fake.port})
        ks = keys_by_shard("ns", 2, PARTITIONS, 2)
        with r.client() as c:
            for req in (req_hmset("t", [(ks[0][0], "a"), (ks[1][0], "b")]),
                        req_hmdel("t", [ks[0][1], ks[1][1]])):
                resp = c.call(req)
                self.assertEqual(resp.status, 500, resp.message)
                self.assertTrue(resp.outcome_unknown, resp.message)
                self.assertEqual(len(resp.pairs), 0, resp.message)
                self.assertIn("shard 1 sent an answer that is not a CommandResponse (it has no "
                              "status)", resp.message)
                self.assertIn("may or may not have written", resp.message)
            for req in (req_hmget("t", [ks[0][0], ks[1][0]]), req_hget("t", ks[1][0]),
                        req_hset("t", ks[1][0], "c")):
                resp = c.call(req)
                self.assertEqual(resp.status, 500, resp.message)
                self.assertIn("shard 1 sent an answer that is not a CommandResponse",
                              resp.message)
            self.assertTrue(resp.outcome_unknown, resp.message)  # the Hset: it may have run
            self.assertEqual(pyval(c.hget("t", ks[0][0]).values[0]), "a")  # shard 0 wrote

    def test_a_worker_cursor_no_client_could_send_back_ends_the_walk(self):
        # Shard 1 answers Hscan with a page and a 60,000-byte cursor: it
        # was passed on, and sent back it was refused (400) as no cursor
        # of this cluster's. The router says what went wrong instead.
        def answer(req):
            resp = self.no_status(req)
            if req.WhichOneof("command") == "hscan":
                resp.status = 200
                resp.cursor = b"c" * 60000
                p = resp.pairs.add()
                p.key = b"q"
                p.value.string_value = "v"
            return resp

        fake = self.fake(answer)
        r = self.router(shards=2, partitions=PARTITIONS,
                        remote={1: "127.0.0.1:%d" % fake.port})
        with r.client() as c:
            resp = c.call(req_hscan("t", cursor=b"S\x00\x01", count=10))
            self.assertEqual(resp.status, 500, resp.message)
            self.assertIn("shard 1 answered an Hscan cursor of 60000 bytes", resp.message)
            self.assertEqual(resp.cursor, b"")


class SlowReader(LoopbackServer):
    """A remote worker that reads a request `step` bytes at a time, `every`
    s apart (through a small receive buffer, so that what it has not read
    waits at the router), and stops reading for good once it read `stop`
    bytes of a frame (None: never). It answers 200 to what it read whole,
    or nothing but Pings (answer=False)."""

    def __init__(self, step, every, stop=None, answer=True):
        self.step, self.every, self.stop, self.answer = step, every, stop, answer
        super().__init__(self._frames, threaded=True, rcvbuf=32 << 10)

    def _frames(self, c):
        c.settimeout(60)
        while not self.stopping:
            hdr = c.recv(4, socket.MSG_WAITALL)
            if len(hdr) < 4:
                return
            (n,) = struct.unpack(">I", hdr)
            body = b""
            while len(body) < n:
                if self.stop is not None and len(body) >= self.stop:
                    while not self.stopping:  # hangs, reading nothing more
                        time.sleep(0.05)
                    return
                want = len(body) + min(self.step, n - len(body))
                while len(body) < want:
                    part = c.recv(want - len(body))
                    if not part:
                        return
                    body += part
                if n > self.step:
                    time.sleep(self.every)
            req = pb.CommandRequest.FromString(body)
            resp = pb.CommandResponse(status=200)
            if req.WhichOneof("command") == "ping":
                resp.message = "PONG"
            elif not self.answer:
                continue
            c.sendall(frame(resp.SerializeToString()))


class LinkTimeoutTest(RouterTestCase):
    """router.timeout counts from a request's sending: a request of
    megabytes that its worker still reads, at 1 MiB or more per timeout,
    is not yet sent."""

    def slow(self, **kw):
        fake = SlowReader(**kw)
        self.addCleanup(fake.close)
        r = self.router(shards=2, partitions=PARTITIONS, timeout="1s", max_frame="16MiB",
                        remote={1: "127.0.0.1:%d" % fake.port})
        return r, keys_by_shard("lt", 1, PARTITIONS, 2)[1][0]

    def hset_503(self, r, key, size, within):
        with r.client(timeout=30) as c:
            t = time.monotonic()
            resp = c.hset("t", key, b"v" * size)
            took = time.monotonic() - t
            self.assertEqual(resp.status, 503, resp.message)
            self.assertIn("no answer within router.timeout (1000 ms)", resp.message)
            self.assertTrue(resp.outcome_unknown, resp.message)
            self.assertLess(took, within)

    def test_a_worker_still_reading_a_large_request_is_not_taken_for_hung(self):
        # 6 MiB taken 512 KiB every 0.2 s: over 2 s of reading, two
        # router.timeouts; each deadline finds it read 2 MiB more.
        r, key = self.slow(step=512 << 10, every=0.2)
        with r.client(timeout=30) as c:
            t = time.monotonic()
            resp = c.hset("t", key, b"v" * (6 << 20))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertGreater(time.monotonic() - t, 2.0)  # it did read slowly
            self.assertEqual(c.ping().status, 200)
        self.assertNotIn("no answer within router.timeout", r.stderr())

    def test_a_worker_that_stops_reading_a_request_is_taken_for_hung(self):
        # It reads 1 MiB of 4 and no more: hung at the deadline after the
        # one that found it reading, not waited for as long as bytes wait.
        r, key = self.slow(step=256 << 10, every=0.1, stop=1 << 20)
        self.hset_503(r, key, 4 << 20, 3.5)

    def test_a_worker_that_reads_slower_than_a_mib_per_timeout_is_taken_for_hung(self):
        # 16 KiB every 0.5 s: the 2 MiB would take two minutes.
        r, key = self.slow(step=16 << 10, every=0.5)
        self.hset_503(r, key, 2 << 20, 2.5)

    def test_a_request_read_whole_is_not_held_by_a_later_one_being_read(self):
        # An Hget the worker read at once and never answers, then a 6 MiB
        # Hset it reads at 2.5 MiB/s: the Hget is hung a timeout after it
        # was sent, whatever the worker does with the Hset.
        r, key = self.slow(step=512 << 10, every=0.2, answer=False)
        with r.client(timeout=30) as c, r.client(timeout=30) as big:
            t = time.monotonic()
            c.send(req_hget("t", key))
            time.sleep(0.2)
            big.send(req_hset("t", key, b"v" * (6 << 20)))
            resp = c.recv()
            self.assertEqual(resp.status, 503, resp.message)
            self.assertLess(time.monotonic() - t, 2.0)
            self.assertEqual(big.recv().status, 503)


if __name__ == "__main__":
    unittest.main()
