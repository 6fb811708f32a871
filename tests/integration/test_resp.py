"""The Redis protocol front door (router.resp_listen), driven by real Redis
clients only: redis-cli (one-shot, interactive under a pty, --pipe),
redis-benchmark, and Debian's python3-redis; RESP3 and protocol errors on a
raw socket, byte for byte. Values written through one protocol are read
back through the other.
"""
import os
import pty
import select
import signal
import socket
import subprocess
import threading
import time
import unittest

import redis

from kvstest import SANITIZED, pb, pyval, req_hget, req_hmset
from routertest import RouterTestCase, free_port, procs_for_config, router_pids, stopped

CLI = "redis-cli"
BENCH = "redis-benchmark"


class RespTestCase(RouterTestCase):
    def resp_router(self, shards=2, extra="", router_yaml=(), **kw):
        self.rport = free_port()
        r = self.router(shards=shards,
                        router_yaml=['resp_listen: "127.0.0.1:%d"' % self.rport] + list(router_yaml),
                        extra_yaml=extra, **kw)
        self.r = r
        return r

    def redis(self, **kw):
        c = redis.Redis(host="127.0.0.1", port=self.rport, socket_timeout=10, **kw)
        self.addCleanup(c.close)
        return c

    def cli(self, *args, input=None, timeout=60):
        return subprocess.run([CLI, "-h", "127.0.0.1", "-p", str(self.rport)] + list(args),
                              input=input, capture_output=True, timeout=timeout)

    def raw(self):
        s = socket.create_connection(("127.0.0.1", self.rport), timeout=10)
        self.addCleanup(s.close)
        return s

    def exchange(self, s, data, want_len=None, until=None):
        """Sends `data`; reads until `until` (bytes) ends the reply, or EOF."""
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if until is not None and got.endswith(until):
                return got
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk
        return got


class RedisPyTest(RespTestCase):
    def test_every_hash_command_through_redis_py(self):
        self.resp_router()
        c = self.redis()
        self.assertTrue(c.ping())
        self.assertEqual(c.echo("hi"), b"hi")
        self.assertEqual(c.hset("h", "f1", "v1"), 1)
        self.assertEqual(c.hset("h", mapping={"f1": "x", "f2": "v2", "f3": "v3"}), 2)
        self.assertEqual(c.hget("h", "f1"), b"x")
        self.assertIsNone(c.hget("h", "missing"))
        self.assertIsNone(c.hget("nosuchtable", "f"))
        self.assertEqual(c.hmget("h", ["f1", "nope", "f3"]), [b"x", None, b"v3"])
        self.assertEqual(c.hgetall("h"), {b"f1": b"x", b"f2": b"v2", b"f3": b"v3"})
        self.assertEqual(sorted(c.hkeys("h")), [b"f1", b"f2", b"f3"])
        self.assertEqual(sorted(c.hvals("h")), [b"v2", b"v3", b"x"])
        self.assertEqual(c.hlen("h"), 3)
        self.assertEqual(c.hlen("nosuchtable"), 0)
        self.assertEqual(c.hstrlen("h", "f2"), 2)
        self.assertEqual(c.hstrlen("h", "nope"), 0)
        self.assertTrue(c.hexists("h", "f1"))
        self.assertFalse(c.hexists("h", "nope"))
        self.assertFalse(c.hsetnx("h", "f1", "other"))
        self.assertTrue(c.hsetnx("h", "f4", "v4"))
        self.assertEqual(c.hget("h", "f1"), b"x")
        self.assertEqual(c.hmset("h2", {"a": "1", "b": "2"}), True)
        self.assertEqual(c.hdel("h", "f1", "f2", "nope", "f1"), 2)
        self.assertEqual(c.hincrby("n", "c", 5), 5)
        self.assertEqual(c.hincrby("n", "c", -7), -2)
        self.assertAlmostEqual(c.hincrbyfloat("n", "f", 1.5), 1.5)
        self.assertAlmostEqual(c.hincrbyfloat("n", "f", 0.25), 1.75)
        self.assertEqual(c.exists("h"), 1)
        self.assertEqual(c.exists("nosuchtable"), 0)
        self.assertTrue(c.execute_command("SELECT", 0))
        # DEL and UNLINK of a hash: its fields on every shard.
        c.hset("wide", mapping={"f%d" % i: "v" for i in range(64)})
        self.assertEqual(c.delete("wide"), 1)
        self.assertEqual((c.exists("wide"), c.hlen("wide"), c.hgetall("wide")), (0, 0, {}))
        self.assertEqual(c.delete("wide"), 0)
        self.assertEqual(c.unlink("h2"), 1)
        self.assertEqual(c.unlink("h2"), 0)
        self.assertEqual(c.hgetall("h"), {b"f3": b"v3", b"f4": b"v4"})  # other keys stay
        # Several keys at once, as Redis counts them.
        c.hset("m1", "f", "v")
        c.hset("m2", "f", "v")
        self.assertEqual(c.exists("m1", "m2", "nosuch", "m1"), 3)
        self.assertEqual(c.delete("m1", "nosuch", "m2", "m1"), 2)
        self.assertEqual(c.exists("m1", "m2"), 0)
        keys = ["w%d" % i for i in range(300)]
        for k in keys[::2]:
            c.hset(k, "f", k)
        self.assertEqual(c.exists(*keys), 150)
        self.assertEqual(c.unlink(*keys), 150)
        self.assertEqual(c.exists(*keys), 0)

    def test_errors_as_redis_gives_them(self):
        self.resp_router()
        c = self.redis()
        c.hset("h", "s", "abc")
        with self.assertRaisesRegex(redis.ResponseError, "^hash value is not an integer$"):
            c.hincrby("h", "s", 1)
        c.hset("h", "big", str(2**63 - 1))
        with self.assertRaisesRegex(redis.ResponseError, "would overflow"):
            c.hincrby("h", "big", 1)
        self.assertEqual(c.hget("h", "big"), str(2**63 - 1).encode())  # unchanged
        with self.assertRaisesRegex(redis.ResponseError, "value is not an integer"):
            c.execute_command("HINCRBY", "h", "x", "1.5")
        with self.assertRaisesRegex(
                redis.ResponseError,
                r"^unknown command 'NOSUCH', with args beginning with: 'a' 'b' $"):
            c.execute_command("NOSUCH", "a", "b")
        with self.assertRaisesRegex(redis.ResponseError,
                                    "^wrong number of arguments for 'hget' command$"):
            c.execute_command("HGET", "h")
        with self.assertRaisesRegex(redis.ResponseError,
                                    "wrong number of arguments for 'hset' command"):
            c.execute_command("HSET", "h", "f", "v", "g")
        with self.assertRaisesRegex(redis.ResponseError, "DB index is out of range"):
            c.execute_command("SELECT", 1)
        # DEL and EXISTS take at most limits.max_inflight keys (each is a
        # request the client holds), checked before anything runs.
        with self.assertRaisesRegex(redis.ResponseError,
                                    "^kvs answers del for at most 1024 keys at a time "
                                    r"\(limits.max_inflight\): 1025 were given$"):
            c.delete("h", *["k%d" % i for i in range(1024)])
        self.assertEqual(c.hget("h", "s"), b"abc")  # nothing deleted
        with self.assertRaisesRegex(redis.ResponseError, "reserved"):  # kvs's own rules
            c.hset("__kvs", "f", "v")
        # A key with a NUL byte is refused, never cut short to another table.
        c.hset("a", "f", "v")
        for call in (lambda: c.hset("a\0b", "f", "w"), lambda: c.hgetall("a\0b"),
                     lambda: c.hdel("a\0b", "f"), lambda: c.hincrby("a\0b", "n", 1),
                     lambda: c.hscan("a\0b"), lambda: c.hlen("a\0b")):
            with self.assertRaisesRegex(redis.ResponseError, "holds a NUL byte"):
                call()
        self.assertEqual(c.hgetall("a"), {b"f": b"v"})

    def test_pipelines_keep_order(self):
        self.resp_router(shards=4)
        c = self.redis()
        p = c.pipeline(transaction=False)
        for i in range(500):
            p.hset("t", "k%d" % i, "v%d" % i)
            p.hget("t", "k%d" % (i // 2))
        out = p.execute()
        for i in range(500):
            self.assertEqual(out[2 * i], 1)
            self.assertEqual(out[2 * i + 1], ("v%d" % (i // 2)).encode())

    def test_hscan_iter_walks_every_field_once(self):
        self.resp_router(shards=4)
        c = self.redis()
        want = {("f%04d" % i).encode(): ("v%d" % i).encode() for i in range(1200)}
        c.hset("big", mapping=want)
        got = {}
        for k, v in c.hscan_iter("big", count=100):
            self.assertNotIn(k, got)
            got[k] = v
        self.assertEqual(got, want)
        matched = dict(c.hscan_iter("big", match="f00*", count=7))
        self.assertEqual(set(matched), {k for k in want if k.startswith(b"f00")})
        with self.assertRaisesRegex(redis.ResponseError, "invalid cursor"):
            c.hscan("big", cursor=987654321)

    def test_a_small_hash_is_one_page_when_a_ping_is_pipelined_after(self):
        # A write before the HSCAN sends its page to the workers; a PING
        # pipelined after it, which shows no data, used to end the page at
        # the first shard's end: 4 of 5 fields and a cursor, where Redis
        # answers them all at once. A command naming a table ends it there
        # (it may run at the next shard before the page gets there: an
        # answer must not show what a later one does not); the walk goes on
        # from the cursor, and whole.
        self.resp_router(shards=4)
        c = self.redis()
        want = {("f%d" % i).encode(): b"1" for i in range(12)}
        c.hset("h7", mapping=want)
        for after, whole in ((lambda p: p.ping(), True), (lambda p: p.hget("h7", "f1"), False),
                             (lambda p: p.hgetall("other"), False)):
            for _ in range(10):
                p = c.pipeline(transaction=False)
                p.hincrby("h7", "f0", 1)
                p.hscan("h7", 0)
                after(p)
                cursor, page = p.execute()[1]
                if whole:
                    self.assertEqual((cursor, set(page)), (0, set(want)))
                    continue
                self.assertNotEqual(cursor, 0)  # the first shard's end
                fields = set(page)
                while cursor != 0:
                    cursor, more = c.hscan("h7", cursor)
                    fields |= set(more)
                self.assertEqual(fields, set(want))

    def test_a_cursor_from_before_the_node_restarted_is_refused(self):
        # Cursor numbers hold the router process's index and generation,
        # and the master counts generations from 0 again when the whole
        # node restarts: a cursor kept from the earlier run named another
        # client's walk of this one, and the walk went on from its place,
        # skipping fields without a word. Each run now starts its numbers
        # at random.
        r = self.resp_router(shards=2)
        c = self.redis()
        want = {("f%04d" % i).encode(): b"v" for i in range(1000)}
        c.hset("t", mapping=want)
        kept, _ = c.hscan("t", 0, count=10)
        self.assertNotEqual(kept, 0)
        c.close()
        r.stop()
        r.start()
        c = self.redis()
        other, _ = c.hscan("t", 0, count=600)  # another client's walk, this run
        self.assertNotEqual(other, kept)
        with self.assertRaisesRegex(redis.ResponseError, "invalid cursor"):
            c.hscan("t", kept, count=10)

    def test_client_commands(self):
        self.resp_router()
        c = self.redis()
        self.assertIsInstance(c.client_id(), int)
        self.assertTrue(c.client_setname("worker-1"))
        self.assertEqual(c.client_getname(), "worker-1")
        with self.assertRaisesRegex(redis.ResponseError, "cannot contain spaces"):
            c.client_setname("a b")
        info = c.info()
        self.assertEqual(info["redis_version"], "7.0.15")
        self.assertIn("kvs_version", info)
        self.assertEqual(c.config_get("appendonly"), {"appendonly": "no"})
        self.assertGreater(c.command_count(), 10)


class CrossProtocolTest(RespTestCase):
    def test_values_read_back_through_the_other_protocol(self):
        r = self.resp_router()
        c = self.redis()
        c.hset("x", "text", "h\u00e9llo")
        c.hset("x", "bin", b"\xff\x00\xfe")
        with r.client() as pbc:
            self.assertEqual(pyval(pbc.hget("x", "text").values[0]), "h\u00e9llo")
            self.assertEqual(pbc.hget("x", "text").values[0].WhichOneof("kind"), "string_value")
            self.assertEqual(pyval(pbc.hget("x", "bin").values[0]), b"\xff\x00\xfe")
            self.assertEqual(pbc.hget("x", "bin").values[0].WhichOneof("kind"), "binary_value")
            for k, v in [("i", -42), ("f", 0.1), ("t", True), ("n", False), ("s", "a\0b")]:
                self.assertEqual(pbc.hset("y", k, v).status, 200)
        self.assertEqual(c.hget("y", "i"), b"-42")
        self.assertEqual(c.hget("y", "f"), b"0.1")
        self.assertEqual(c.hget("y", "t"), b"1")
        self.assertEqual(c.hget("y", "n"), b"0")
        self.assertEqual(c.hget("y", "s"), b"a\0b")
        self.assertEqual(c.hincrby("y", "i", 2), -40)
        # HINCRBY reads a number as the text HGET shows: a bool is 1 or 0.
        self.assertEqual(c.hincrby("y", "t", 1), 2)
        self.assertEqual(c.hincrby("y", "n", 5), 5)
        self.assertEqual(c.hincrbyfloat("y", "f", 1), 1.1)
        # HINCRBYFLOAT adds as Redis does and stores Redis's text for the sum
        self.assertEqual(c.hincrbyfloat("y", "f", 0.2), 1.3)
        self.assertEqual(c.hget("y", "f"), b"1.3")
        with r.client() as pbc:
            v = pbc.hget("y", "i").values[0]
            self.assertEqual((v.WhichOneof("kind"), v.integer_value), ("integer_value", -40))
            v = pbc.hget("y", "f").values[0]
            self.assertEqual((v.WhichOneof("kind"), v.string_value), ("string_value", "1.3"))


class DelTest(RespTestCase):
    def test_del_empties_every_shard_and_frees_the_tables(self):
        # Through both doors, over 2 shards: Hclear (protobuf) and DEL
        # empty the table on every shard, and the emptied tables are
        # dropped (Info's per-shard count goes back).
        r = self.resp_router(
            extra="kafka:\n  bindings:\n    - {topic: t-orders, table: orders}\n")
        c = self.redis()
        c.hset("a", mapping={"f%d" % i: "x" * i for i in range(200)})
        c.hset("b", mapping={"f%d" % i: "y" for i in range(50)})
        with r.client() as pbc:
            def tables():
                resp = pbc.call(pb.CommandRequest(info=pb.Info()))
                self.assertEqual(resp.status, 200, resp.message)
                return sum(p.value.integer_value for p in resp.pairs
                           if p.key.endswith(b".tables"))
            before = tables()
            resp = pbc.call(pb.CommandRequest(hclear=pb.Hclear(table="a")))
            self.assertEqual((resp.status, resp.values[0].integer_value), (200, 200),
                             resp.message)
            self.assertEqual(c.hlen("a"), 0)
            self.assertEqual(tables(), before - 2)  # "a" had keys on both shards
            self.assertEqual(c.delete("b"), 1)
            self.assertEqual(tables(), before - 4)
            # A table bound to a topic is its topic's: refused, nothing done
            # (with Kafka off here, no write of it could be made anyway).
            resp = pbc.call(pb.CommandRequest(hclear=pb.Hclear(table="orders")))
            self.assertEqual(resp.status, 400)
            self.assertIn("bound to Kafka topic t-orders", resp.message)
            with self.assertRaisesRegex(redis.ResponseError,
                                        'key "orders" is bound to Kafka topic t-orders, '
                                        'whose records are its fields'):
                c.delete("orders")
            # A missing table is 0 keys, and bad names get the usual 400.
            resp = pbc.call(pb.CommandRequest(hclear=pb.Hclear(table="nosuch")))
            self.assertEqual((resp.status, resp.values[0].integer_value), (200, 0))
            resp = pbc.call(pb.CommandRequest(hclear=pb.Hclear(table="__kvs")))
            self.assertEqual(resp.status, 400)
            self.assertIn("reserved", resp.message)
        self.assertEqual(c.hset("a", "again", "1"), 1)  # the name is free to use again
        self.assertEqual(c.hgetall("a"), {b"again": b"1"})


class SeveralKeysTest(RespTestCase):
    def test_pipelined_commands_of_several_keys_fold_in_order(self):
        # Each key of a DEL or EXISTS is a request of its own; the replies
        # are folded into one per command, in order, however they pipeline.
        self.resp_router()
        c = self.redis()
        for round in range(20):
            p = c.pipeline(transaction=False)
            p.hset("a", "f", "1").hset("b", "f", "1")
            p.exists("a", "b", "c").delete("a", "c").exists("a", "b")
            p.hget("b", "f").delete("b", "a", "b").exists("a", "b", "a")
            p.hset("a", "g", "2").exists("a")
            self.assertEqual(p.execute(), [1, 1, 2, 1, 1, b"1", 1, 0, 1, 1], round)

    def test_the_keys_of_a_command_read_on_resuming_are_its_own(self):
        # A client paused at limits.max_inflight (the head request waits on
        # a stopped worker) resumes with an EXISTS of several keys and a
        # command after it: routing each key may have the connection parse
        # that next command, and the keys routed are still the EXISTS's
        # (they once were the next command's arguments: wrong counts, or a
        # crash where its argument array was freed).
        r = self.resp_router(shards=2)
        c = self.redis()
        c.hset("a", "x", "1")
        c.hset("victim", "precious", "data")
        on1 = next("f%d" % i for i in range(1000) if r.shard_of(b"f%d" % i) == 1)
        on0 = [f for f in ("g%d" % i for i in range(5000)) if r.shard_of(f.encode()) == 0][:1023]
        for big in (False, True):
            p = c.pipeline(transaction=False)
            p.hset("t", on1, "v")
            for f in on0:
                p.hset("t", f, "v")
            if big:
                p.exists(*(["a"] * 1024))
            else:
                p.exists("a", "nothere1", "nothere2")
            p.hget("k0", "victim")
            pid = r.worker_pid(1)
            os.kill(pid, signal.SIGSTOP)
            t = threading.Timer(1.0, os.kill, (pid, signal.SIGCONT))
            t.start()
            try:
                got = p.execute()
            finally:
                t.join()
            self.assertEqual(got[-2:], [1024 if big else 1, None], big)
            c.delete("t")

    def test_one_key_refused_refuses_all(self):
        # A table bound to a topic, or a key the user may not write, among
        # several: the whole command is refused, nothing deleted.
        self.resp_router(
            extra="kafka:\n  bindings:\n    - {topic: t-orders, table: orders}\n")
        c = self.redis()
        c.hset("x", "f", "v")
        with self.assertRaisesRegex(redis.ResponseError,
                                    'key "orders" is bound to Kafka topic t-orders.*nothing was '
                                    'deleted'):
            c.delete("x", "orders")
        self.assertEqual(c.hget("x", "f"), b"v")

    def test_a_key_that_fails_on_a_shard_names_itself_and_the_others_go_ahead(self):
        # Shard 1 is another node's, down: no table can be emptied there
        # (nor counted). The reply is the first key's error, naming the
        # key; each key's delete went ahead on shard 0.
        dead = free_port()
        r = self.resp_router(shards=2, remote={1: "127.0.0.1:%d" % dead})
        c = self.redis()
        fields = [f for f in ("f%d" % i for i in range(40)) if r.shard_of(f.encode()) == 0][:3]
        for t in ("ok1", "ok2"):
            for f in fields:
                c.hset(t, f, "v")
        with self.assertRaisesRegex(
                redis.ResponseError,
                r"^DEL emptied the hash on 1 of 2 shards \(3 fields removed there\); shard 1 did "
                r"not empty its part \(nothing done there\).*\(key 1 of the command; each key is "
                r"deleted on its own: the others' went ahead\)$"):
            c.delete("ok1", "ok2")
        self.assertEqual([c.hget(t, fields[0]) for t in ("ok1", "ok2")], [None, None])
        with self.assertRaisesRegex(redis.ResponseError, r"shard 1.*\(key 1 of the command\)$"):
            c.exists("ok1", "ok2")
        self.assertEqual(c.ping(), True)  # one reply per command: the connection is in step


    def test_a_hung_shard_fails_its_keys_in_time_and_the_connection_stays_in_step(self):
        # Shard 1's worker is stopped for longer than router.timeout: a DEL
        # and an EXISTS whose keys all have a part there get their first
        # key's 503 (naming the key) once the link is taken for hung, and
        # the commands pipelined behind them are answered in order.
        r = self.resp_router(shards=2, timeout="1s")
        c = self.redis()
        c.hset("a", "x", "1")
        c.hset("b", "x", "1")
        pid = r.worker_pid(1)
        os.kill(pid, signal.SIGSTOP)
        try:
            p = c.pipeline(transaction=False)
            p.delete("a", "b").exists("a", "b").ping().echo("after")
            start = time.monotonic()
            got = p.execute(raise_on_error=False)
            took = time.monotonic() - start
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertLess(took, 8.0)
        self.assertIsInstance(got[0], redis.ResponseError, got)
        self.assertRegex(str(got[0]), r"shard 1.*\(key 1 of the command", got)
        self.assertIsInstance(got[1], redis.ResponseError, got)
        self.assertRegex(str(got[1]), r"shard 1.*\(key 1 of the command\)$", got)
        self.assertEqual(got[2:], [True, b"after"])
        # Once the resumed worker's link is back (reads of local shards
        # need no link: wait for a write), the same client's counts are
        # right: the deletes on shard 0 went ahead.
        on1 = next("f%d" % i for i in range(1000) if r.shard_of(b"f%d" % i) == 1)
        deadline = time.monotonic() + 20
        while True:
            try:
                c.hset("probe", on1, "v")
                break
            except redis.ResponseError:
                self.assertLess(time.monotonic(), deadline, "shard 1 never came back")
                time.sleep(0.2)
        n = c.exists("a", "b", "nothere")
        self.assertLessEqual(n, 2)
        self.assertEqual(c.delete("a", "b"), n)
        self.assertEqual(c.exists("a", "b"), 0)

    def test_a_client_gone_mid_command_costs_the_others_nothing(self):
        # A client sends DELs of many keys while a shard is stopped, and
        # closes before any answer: the router drops the answers when they
        # come, other clients are served, and the keys' deletes ran.
        r = self.resp_router(shards=2)
        c = self.redis()
        keys = ["t%d" % i for i in range(200)]
        for k in keys:
            c.hset(k, "f", "v")
        pid = r.worker_pid(1)
        os.kill(pid, signal.SIGSTOP)
        try:
            s = socket.create_connection(("127.0.0.1", self.rport), timeout=10)
            cmd = b"*%d\r\n$3\r\nDEL\r\n" % (len(keys) + 1)
            cmd += b"".join(b"$%d\r\n%s\r\n" % (len(k), k.encode()) for k in keys)
            s.sendall(cmd * 3 + b"*1\r\n$4\r\nPING\r\n")
            time.sleep(0.3)
            s.close()
        finally:
            os.kill(pid, signal.SIGCONT)
        other = self.redis()
        self.assertTrue(other.ping())
        deadline = time.monotonic() + 20
        while other.exists(*keys) != 0:
            self.assertLess(time.monotonic(), deadline, "the DELs did not run")
            time.sleep(0.1)
        other.hset("t0", "f", "again")
        self.assertEqual(other.delete(*keys), 1)
        self.assertEqual(r.proc.poll(), None)

class LargeValuesTest(RespTestCase):
    def test_hkeys_of_a_table_whose_values_exceed_one_answer(self):
        # HKEYS asks for the keys only: a table of large values, which
        # HGETALL cannot answer within limits.max_frame, still lists its
        # keys, whether the router reads its shards itself or asks them.
        for local in ("true", "false"):
            with self.subTest(local_reads=local):
                r = self.resp_router(max_frame="1MiB", router_yaml=["local_reads: " + local])
                c = self.redis()
                fields = [b"f%d" % i for i in range(8)]
                for f in fields:
                    self.assertEqual(c.hset("big", f, b"v" * 300000), 1)
                with self.assertRaises(redis.ResponseError) as e:
                    c.hgetall("big")
                self.assertIn("exceed limits.max_frame", str(e.exception))
                self.assertEqual(sorted(c.hkeys("big")), fields)
                self.assertEqual(c.hlen("big"), 8)
                with r.client() as pbc:
                    q = pb.CommandRequest()
                    q.hgetall.table = "big"
                    q.hgetall.keys_only = True
                    a = pbc.call(q)
                    self.assertEqual(a.status, 200, a.message)
                    self.assertEqual([p.key for p in a.pairs], fields, "merged in key order")
                    self.assertFalse(any(p.HasField("value") for p in a.pairs))
                r.close()


    def test_replies_of_floats_stay_within_max_frame(self):
        # A float_value is 9 bytes in a kvs answer and up to about 330 as
        # Redis shows it (plain decimal: 5e-324 is 0.000...005, 326 bytes),
        # so an HGETALL answer well within limits.max_frame made a reply 37
        # times larger, past limits.max_frame and past the output limit
        # (one such request got its client closed). The reply is checked
        # as it is written: past twice the frame (what the reply of any
        # other answer within the frame fits) it is an error, as HGETALL of
        # a table too large for one answer is.
        for local in ("true", "false"):
            with self.subTest(local_reads=local):
                r = self.resp_router(max_frame="64KiB", router_yaml=["local_reads: " + local])
                keys = [b"k%05d" % i for i in range(2500)]
                with r.client() as pbc:
                    q = pb.CommandRequest()
                    q.hmset.table = "fl"
                    for k in keys:
                        p = q.hmset.pairs.add()
                        p.key = k
                        p.value.float_value = 5e-324
                    a = pbc.call(q)
                    self.assertEqual(a.status, 200, a.message)
                    q = pb.CommandRequest()
                    q.hgetall.table = "fl"
                    a = pbc.call(q)
                    self.assertEqual((a.status, len(a.pairs)), (200, 2500), a.message)
                c = self.redis()
                text = "0." + "0" * 323 + "5"
                self.assertEqual(c.hget("fl", keys[0]), text.encode())
                for call, what in ((lambda: c.hgetall("fl"), "HGETALL reply"),
                                   (lambda: c.hvals("fl"), "HVALS reply"),
                                   (lambda: c.hmget("fl", keys), "HMGET reply"),
                                   (lambda: c.hscan("fl", 0, count=2500), "HSCAN page")):
                    with self.assertRaises(redis.ResponseError) as e:
                        call()
                    self.assertIn("%s would exceed twice limits.max_frame (131072 bytes, as "
                                  "Redis shows the values)" % what, str(e.exception))
                self.assertEqual(len(c.hkeys("fl")), 2500)
                self.assertEqual(c.hmget("fl", keys[:100]), [text.encode()] * 100)
                got = dict(c.hscan_iter("fl"))  # default pages fit
                self.assertEqual(len(got), 2500)
                self.assertEqual(set(got.values()), {text.encode()})
                self.assertEqual(c.ping(), True)  # the connection was not closed
                r.close()
        # A page of the least count goes out whatever its size, so that a
        # table of floats can be walked under a small max_frame (128 such
        # pairs take some 45 KB as Redis shows them).
        r = self.resp_router(max_frame="16KiB")
        with r.client() as pbc:
            q = pb.CommandRequest()
            q.hmset.table = "fl"
            for k in keys[:300]:
                p = q.hmset.pairs.add()
                p.key = k
                p.value.float_value = 5e-324
            self.assertEqual(pbc.call(q).status, 200)
        c = self.redis()
        got = dict(c.hscan_iter("fl", count=10))
        self.assertEqual(len(got), 300)
        self.assertEqual(set(got.values()), {text.encode()})
        before, _ = c.hscan("fl", 0, count=10)
        with self.assertRaises(redis.ResponseError):
            c.hscan("fl", 0, count=200)  # a page that would hand out a cursor
        after, _ = c.hscan("fl", 0, count=10)
        self.assertEqual(after, before + 1, "the refused page kept a cursor")
        with self.assertRaises(redis.ResponseError) as e:
            c.hscan("fl", 0, count=300)
        self.assertIn("HSCAN page would exceed twice limits.max_frame (32768 bytes, as Redis "
                      "shows the values); use a smaller COUNT", str(e.exception))

    def test_hstrlen_and_hsetnx_do_not_move_the_value(self):
        # HSTRLEN and HSETNX ask for the value's length only
        # (CommandRequest.value_lengths), so a value larger than one answer
        # may now hold (stored under a larger limits.max_frame) is measured
        # and found there, and a small command never makes a worker send a
        # large value to the router. The protobuf Hget with value_lengths
        # answers the same, from a worker or from the router's own read.
        for local in ("true", "false"):
            with self.subTest(local_reads=local):
                r = self.resp_router(max_frame="4MiB", router_yaml=["local_reads: " + local])
                c = self.redis()
                self.assertEqual(c.hset("big", "f", b"v" * 3000000), 1)
                self.assertEqual(c.hset("big", "n", -1234), 1)
                c.close()
                self.assertEqual(r.stop(), 0, r.stderr())
                with open(r.config) as f:
                    text = f.read()
                self.assertIn("max_frame: 4MiB", text)
                with open(r.config, "w") as f:
                    f.write(text.replace("max_frame: 4MiB", "max_frame: 1MiB"))
                r.start()
                c = self.redis()
                with self.assertRaises(redis.ResponseError) as e:
                    c.hget("big", "f")
                self.assertIn("limits.max_frame", str(e.exception))
                self.assertEqual(c.hstrlen("big", "f"), 3000000)
                self.assertEqual(c.hstrlen("big", "n"), 5)
                self.assertEqual(c.hstrlen("big", "none"), 0)
                self.assertFalse(c.hsetnx("big", "f", "x"))
                self.assertTrue(c.hsetnx("big", "g", "x"))
                self.assertEqual(c.hget("big", "g"), b"x")
                with r.client() as pbc:
                    q = req_hget("big", b"f")
                    q.value_lengths = True
                    a = pbc.call(q)
                    self.assertEqual(a.status, 200, a.message)
                    self.assertEqual(a.values[0].integer_value, 3000000)
                r.close()


class WriteCountsTest(RespTestCase):
    def test_hset_and_hdel_count_fields_whatever_the_size_of_the_values_they_replace(self):
        # HSET and HDEL reply a count and HMSET +OK: they ask for
        # CommandRequest.value_lengths, so the previous values they never
        # show are neither sent to the router nor priced against
        # limits.max_frame. Five 14 KiB values (70 KiB in all, the frame
        # 64 KiB): the Hmset or Hmdel of all five was refused (413, or 207
        # with one shard's part refused), though its reply is one number.
        r = self.resp_router(shards=2, max_frame="64KiB")
        c = self.redis()
        fields = [b"f%d" % i for i in range(5)]
        big = b"v" * (14 * 1024)

        def fill():
            for f in fields:
                c.hset("big", f, big)

        fill()
        self.assertEqual(c.hset("big", mapping={f: b"s-" + f for f in fields + [b"new"]}), 1)
        self.assertEqual(c.hmget("big", fields + [b"new"]),
                         [b"s-" + f for f in fields + [b"new"]])
        fill()
        self.assertEqual(c.hdel("big", *(fields + [b"none"])), 5)
        self.assertEqual(c.hmget("big", fields), [None] * 5)
        fill()
        self.assertTrue(c.execute_command("HMSET", "big", *[x for f in fields for x in (f, b"1")]))
        self.assertEqual(c.hmget("big", fields), [b"1"] * 5)
        # A protobuf client still gets the previous values (and the same
        # request is refused for them, as before).
        fill()
        with r.client() as pbc:
            a = pbc.call(req_hmset("big", [(f, 2) for f in fields]))
            self.assertIn(a.status, (207, 413), a.message)
            fill()
            q = req_hmset("big", [(f, 2) for f in fields])
            q.value_lengths = True
            a = pbc.call(q)
            self.assertEqual(a.status, 200, a.message)
            self.assertEqual([v.integer_value for v in a.values], [len(big)] * 5)


class RedisCliTest(RespTestCase):
    def test_one_shot(self):
        self.resp_router()
        self.assertEqual(self.cli("hset", "t", "a", "1", "b", "2").stdout, b"2\n")
        self.assertEqual(self.cli("hgetall", "t").stdout, b"a\n1\nb\n2\n")
        self.assertEqual(self.cli("hmget", "t", "a", "zz").stdout, b"1\n\n")
        out = self.cli("hincrby", "t", "a", "x")
        self.assertIn(b"ERR value is not an integer or out of range", out.stdout + out.stderr)
        self.assertEqual(self.cli("-3", "hgetall", "t").stdout, b"a 1\nb 2\n")  # a map

    def test_interactive_under_a_pty(self):
        self.resp_router()
        pid, fd = pty.fork()
        if pid == 0:  # a dumb terminal: no escape sequences to answer
            os.execvpe(CLI, [CLI, "-h", "127.0.0.1", "-p", str(self.rport)],
                       dict(os.environ, TERM="dumb", HOME="/nonexistent"))
        self.addCleanup(lambda: (os.kill(pid, 9), os.waitpid(pid, 0)))
        prompt = ("127.0.0.1:%d> " % self.rport).encode()

        def until(marker):
            got = b""
            deadline = time.monotonic() + 10
            while marker not in got and time.monotonic() < deadline:
                r, _, _ = select.select([fd], [], [], 0.5)
                if r:
                    got += os.read(fd, 4096)
            self.assertIn(marker, got)
            return got

        until(prompt)
        os.write(fd, b"hset t f v\r")
        self.assertIn(b"(integer) 1", until(prompt))
        os.write(fd, b"hget t f\r")
        self.assertIn(b'"v"', until(prompt))
        os.write(fd, b"hget t nope\r")
        self.assertIn(b"(nil)", until(prompt))
        os.write(fd, b"nosuch\r")
        self.assertIn(b"(error) ERR unknown command 'nosuch'", until(prompt))
        os.write(fd, b"quit\r")

    def test_pipe_mass_insertion(self):
        r = self.resp_router(shards=2)
        n = 100000
        cmds = b"".join(b"*4\r\n$4\r\nHSET\r\n$4\r\nmass\r\n$%d\r\n%s\r\n$1\r\nv\r\n"
                        % (len(k), k) for k in (b"f%d" % i for i in range(n)))
        out = self.cli("--pipe", input=cmds, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"errors: 0, replies: %d" % n, out.stdout + out.stderr)
        self.assertEqual(self.cli("hlen", "mass").stdout, b"%d\n" % n)
        with r.client() as c:
            self.assertEqual(pyval(c.hget("mass", "f99999").values[0]), "v")


class RedisBenchmarkTest(RespTestCase):
    def bench(self, *args):
        out = subprocess.run([BENCH, "-h", "127.0.0.1", "-p", str(self.rport), "-q"] + list(args),
                             capture_output=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"requests per second", out.stdout)
        return out.stdout

    def test_hset_and_hget_pipelined_and_not(self):
        self.resp_router(shards=2)
        n = "5000" if SANITIZED else "20000"
        self.bench("-t", "hset", "-n", n, "-r", "1000")
        self.bench("-t", "hset", "-n", n, "-r", "1000", "-P", "16")
        self.bench("-n", n, "-r", "1000", "hget", "myhash", "element:__rand_int__")
        self.bench("-n", n, "-r", "1000", "-P", "16", "hget", "myhash", "element:__rand_int__")
        self.assertGreater(int(self.cli("hlen", "myhash").stdout), 500)


class TransactionTest(RespTestCase):
    """kvs runs no transactions. MULTI answered "unknown command" and the
    commands after it ran: redis-py's default pipeline (MULTI ... EXEC)
    applied every write and then raised an error, and a client that
    retried applied them twice. MULTI is taken, every command after it is
    refused, and EXEC aborts: nothing of it runs."""

    def test_redis_py_transaction_raises_and_applies_nothing(self):
        self.resp_router()
        c = self.redis()
        c.hset("acct", mapping={"bal": 100, "last": "none"})
        p = c.pipeline()  # transaction=True, redis-py's default
        p.hincrby("acct", "bal", -30)
        p.hset("acct", "last", "withdraw")
        with self.assertRaisesRegex(redis.exceptions.ResponseError, "no transactions"):
            p.execute()
        self.assertEqual(c.hgetall("acct"), {b"bal": b"100", b"last": b"none"})
        p = c.pipeline(transaction=False)  # what the error advises
        p.hincrby("acct", "bal", -30)
        p.hset("acct", "last", "withdraw")
        self.assertEqual(p.execute(), [70, 0])
        self.assertEqual(c.hgetall("acct"), {b"bal": b"70", b"last": b"withdraw"})

    def test_multi_exec_discard_answer_as_redis_does_for_a_refused_command(self):
        self.resp_router()
        s = self.raw()
        got = self.exchange(s, b"HSET h n 1\r\nMULTI\r\nHINCRBY h n 5\r\nhset h m 2\r\n"
                            b"EXEC\r\nHGETALL h\r\n", until=b"$1\r\nn\r\n$1\r\n1\r\n")
        lines = got.split(b"\r\n")
        self.assertEqual(lines[0], b":1")
        self.assertEqual(lines[1], b"+OK")
        self.assertTrue(lines[2].startswith(b"-ERR kvs has no transactions: 'HINCRBY' was not "
                                            b"queued"), got)
        self.assertTrue(lines[3].startswith(b"-ERR kvs has no transactions: 'hset'"), got)
        self.assertEqual(lines[4], b"-EXECABORT Transaction discarded because of previous errors.")
        self.assertEqual(lines[5:10], [b"*2", b"$1", b"n", b"$1", b"1"])  # nothing ran
        # the misuses, word for word as Redis
        for send, want in ((b"EXEC\r\n", b"-ERR EXEC without MULTI\r\n"),
                           (b"DISCARD\r\n", b"-ERR DISCARD without MULTI\r\n"),
                           (b"MULTI x\r\n", b"-ERR wrong number of arguments for 'multi' "
                                             b"command\r\n"),
                           (b"UNWATCH\r\n", b"+OK\r\n"),
                           (b"MULTI\r\nMULTI\r\nDISCARD\r\n",
                            b"+OK\r\n-ERR MULTI calls can not be nested\r\n+OK\r\n"),
                           (b"MULTI\r\nEXEC\r\n", b"+OK\r\n*0\r\n"),
                           (b"MULTI\r\nWATCH h\r\nEXEC\r\n",  # WATCH is not queued
                            b"+OK\r\n-ERR WATCH inside MULTI is not allowed\r\n*0\r\n"),
                           (b"MULTI\r\nEXEC x\r\nEXEC\r\n",  # a bad EXEC ends it
                            b"+OK\r\n-EXECABORT Transaction discarded because of: wrong number "
                            b"of arguments for 'exec' command\r\n-ERR EXEC without MULTI\r\n")):
            self.assertEqual(self.exchange(s, send, until=want[-20:]), want, send)
        self.assertTrue(self.exchange(s, b"WATCH h\r\n", until=b"\r\n").startswith(
            b"-ERR kvs has no transactions: WATCH"))
        # DISCARD ends it: the commands after run again
        self.assertEqual(self.exchange(s, b"MULTI\r\nHSET h z 1\r\nDISCARD\r\nHSET h z 1\r\n",
                                       until=b":1\r\n")[-4:], b":1\r\n")
        self.assertEqual(self.redis().hget("h", "z"), b"1")
        # QUIT still quits, inside MULTI too
        self.assertEqual(self.exchange(s, b"MULTI\r\nQUIT\r\n"), b"+OK\r\n+OK\r\n")


def cpu_seconds(pid):
    """The user + system CPU time process pid has used, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WaitingRequestTest(RespTestCase):
    def trickle_behind(self, r, request, want):
        """Sends HGETALL h (its worker stopped) and `request`, then 300
        single bytes; returns the router's CPU seconds for those, after
        checking that the answers are `want`."""
        rp = router_pids(r)[0]
        s = self.raw()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with stopped(r.worker_pid(0)):
            s.sendall(b"HGETALL h\r\n")
            time.sleep(0.3)
            s.sendall(request)
            time.sleep(0.5)  # read whole, measured
            before = cpu_seconds(rp)
            for _ in range(300):
                s.send(b"\r")
                time.sleep(0.003)
            time.sleep(0.2)
            spent = cpu_seconds(rp) - before
        s.settimeout(30)
        got = b""
        while len(got) < len(want):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        self.assertEqual(got, want)
        return spent

    def test_bytes_trickled_behind_a_waiting_multibulk_cost_little(self):
        """A client's Hgetall waits at a stopped worker, the room kept for
        its answer (max_frame) at the high-water mark: its requests wait,
        and the router reads ahead. Next in line, a whole multibulk of
        690,000 arguments; then the client trickles single bytes. Each
        read asked the RESP parser whether a whole request waited, which
        measured the 4 MB multibulk again and built its 11 MB argument
        array, twice a read: 5 ms of the router's CPU a byte, so a client
        sending 50 bytes a second took most of a core. The parser now only
        measures, and the connection remembers the answer until the
        request runs. The same for a multibulk whose last argument breaks
        the protocol: found once."""
        r = self.resp_router(shards=1, timeout="30s", extra="limits: {client_output: 16MiB}\n",
                             router_yaml=["local_reads: false"])
        self.assertEqual(self.exchange(self.raw(), b"HSET h f v\r\n", until=b"\r\n"), b":1\r\n")
        n = 690000
        head = b"*%d\r\n$4\r\nPING\r\n" % n + b"$0\r\n\r\n" * (n - 2)
        hgetall = b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
        spent = self.trickle_behind(
            r, head + b"$0\r\n\r\n",
            hgetall + b"-ERR wrong number of arguments for 'ping' command\r\n")
        self.assertLess(spent, 0.4, "300 bytes cost the router %.2f s of CPU" % spent)
        spent = self.trickle_behind(r, head + b"+x\r\n",
                                    hgetall + b"-ERR Protocol error: expected '$', got '+'\r\n")
        self.assertLess(spent, 0.4, "300 bytes behind a protocol error cost %.2f s of CPU" % spent)


class RawProtocolTest(RespTestCase):
    def test_resp3_after_hello_3(self):
        self.resp_router()
        s = self.raw()
        hello = self.exchange(s, b"HELLO 3\r\n", until=b"*0\r\n")
        self.assertTrue(hello.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), hello)
        self.assertIn(b"$5\r\nproto\r\n:3\r\n", hello)
        self.assertEqual(self.exchange(s, b"HSET h a 1\r\n", until=b"\r\n"), b":1\r\n")
        self.assertEqual(self.exchange(s, b"HGETALL h\r\n", until=b"$1\r\n1\r\n"),
                         b"%1\r\n$1\r\na\r\n$1\r\n1\r\n")
        self.assertEqual(self.exchange(s, b"HGET h nope\r\n", until=b"\r\n"), b"_\r\n")
        self.assertEqual(self.exchange(s, b"HELLO 2\r\n", until=b"*0\r\n")[:3], b"*14")
        self.assertEqual(self.exchange(s, b"HGET h nope\r\n", until=b"\r\n"), b"$-1\r\n")
        self.assertEqual(self.exchange(s, b"HELLO 4\r\n", until=b"\r\n"),
                         b"-NOPROTO unsupported protocol version\r\n")

    def test_hello_pipelined_behind_reads_leaves_their_replies_in_their_protocol(self):
        """Each reply is in the protocol of its own command's turn, as with
        Redis, which runs commands in order: reads still at a worker when a
        pipelined HELLO switches protocol are answered in the old one."""
        self.resp_router(router_yaml=["local_reads: false"])  # the reads wait for workers
        s = self.raw()
        self.assertEqual(self.exchange(s, b"HSET h a 1\r\n", until=b"\r\n"), b":1\r\n")
        reads = b"HGETALL h\r\nHGET h nope\r\nHMGET h a nope\r\n"
        got = self.exchange(s, reads + b"HELLO 3\r\n" + reads + b"HELLO 2\r\n" + reads,
                            until=b"$1\r\n1\r\n$-1\r\n*2\r\n$1\r\n1\r\n$-1\r\n")
        resp2 = b"*2\r\n$1\r\na\r\n$1\r\n1\r\n$-1\r\n*2\r\n$1\r\n1\r\n$-1\r\n"
        resp3 = b"%1\r\n$1\r\na\r\n$1\r\n1\r\n_\r\n*2\r\n$1\r\n1\r\n_\r\n"
        self.assertTrue(got.startswith(resp2 + b"%7\r\n"), got)
        hello3_end = got.index(b"*0\r\n") + 4  # HELLO's reply ends with `modules` empty
        self.assertTrue(got[hello3_end:].startswith(resp3 + b"*14\r\n"), got)
        self.assertTrue(got.endswith(b"*0\r\n" + resp2), got)

    def test_inline_and_empty_commands(self):
        self.resp_router()
        s = self.raw()
        self.assertEqual(self.exchange(s, b"\r\n\r\nPING\r\n", until=b"\r\n"), b"+PONG\r\n")
        self.assertEqual(self.exchange(s, b'HSET t "a b" "x\\x00y"\n', until=b"\r\n"), b":1\r\n")
        self.assertEqual(self.exchange(s, b"HGET t 'a b'\r\n", until=b"y\r\n"), b"$3\r\nx\0y\r\n")
        self.assertEqual(self.exchange(s, b"*0\r\n*-1\r\nPING\r\n", until=b"\r\n"), b"+PONG\r\n")

    def test_protocol_errors_answer_then_close(self):
        self.resp_router()
        cases = [
            (b"*20000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
            (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
             b"-ERR Protocol error: expected '$', got 'f'\r\n"),
            (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
            (b'HSET t "unterminated\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
            (b"*1\r\n$%d\r\n" % (8 << 20), b"-ERR Protocol error: invalid bulk length (larger "
             b"than limits.max_frame, 4194304 bytes)\r\n"),
        ]
        for i, (data, want) in enumerate(cases):
            try:
                s = self.raw()
            except ConnectionRefusedError:
                # Seen once in CI (ASan build), never reproduced: say what
                # the node looked like then.
                time.sleep(0.2)
                try:
                    socket.create_connection(("127.0.0.1", self.rport), timeout=2).close()
                    later = "accepted 0.2 s later"
                except OSError as e:
                    later = "still refused 0.2 s later (%s)" % e
                self.fail("case %d: the RESP port refused a connection after case %r; %s; "
                          "processes of the node: %r" % (i, cases[i - 1][0] if i else None, later,
                                                         procs_for_config(self.r.config)))
            got = self.exchange(s, b"PING\r\n" + data)  # until the server closes
            self.assertEqual(got, b"+PONG\r\n" + want, data)

    def test_quit_answers_then_closes_and_ignores_the_rest(self):
        self.resp_router()
        s = self.raw()
        got = self.exchange(s, b"PING\r\nQUIT\r\nHSET t after quit\r\n")
        self.assertEqual(got, b"+PONG\r\n+OK\r\n")
        self.assertIsNone(self.redis().hget("t", "after"))

    def test_an_http_request_closes_the_connection_and_runs_nothing_after(self):
        # What a browser sends for a web page's fetch('http://127.0.0.1:PORT',
        # {method: 'POST', body}) : Redis closes at a POST or Host: line
        # (cross protocol scripting) and runs nothing of the body; kvs
        # answered each header -ERR and ran the body's commands.
        r = self.resp_router()
        body = b"HSET victim pwned 1\r\nHSET victim also 2\r\n"
        head = (b"Host: 127.0.0.1:%d\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                % (self.rport, len(body)))
        for first, start in ((b"POST / HTTP/1.1\r\n", b""), (b"GET / HTTP/1.1\r\n", b"-ERR"),
                             (b"PING\r\npost /x HTTP/1.0\r\n", b"+PONG\r\n"),
                             (b"*1\r\n$4\r\nPING\r\n*2\r\n$5\r\nHOST:\r\n$1\r\nx\r\n",
                              b"+PONG\r\n")):
            s = self.raw()
            got = self.exchange(s, first + head + body)  # until the server closes
            self.assertTrue(got.startswith(start), (first, got))
            self.assertNotIn(b":1\r\n", got, first)
            if start != b"-ERR":  # GET is a Redis command: its wrong arity is answered
                self.assertEqual(got, start, first)
        with self.redis() as c:
            self.assertEqual(c.hgetall("victim"), {})
        self.assertIn("it sent an HTTP request's \"POST\" line", r.stderr())
        self.assertIn("it sent an HTTP request's \"Host:\" line", r.stderr())

    def test_auth_failures_close_even_a_pipeline(self):
        """limits.auth_failures: the failure that reaches it is the last thing
        the connection runs, even with more commands (a right AUTH among
        them) already pipelined behind it."""
        from test_auth import users_yaml
        self.resp_router(extra=users_yaml())
        s = self.raw()
        wrong = b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$3\r\nbad\r\n"
        got = self.exchange(s, wrong * 3 + b"AUTH alice alice-pw\r\nHSET orders k v\r\nPING\r\n")
        wp = b"-WRONGPASS invalid username-password pair or user is disabled."
        self.assertEqual(got, (wp + b"\r\n") * 2 + wp +
                         b" (too many failures: the connection is closed)\r\n")
        c = self.redis(username="alice", password="alice-pw")
        self.assertIsNone(c.hget("orders", "k"))  # the pipelined HSET never ran

    def test_max_clients_refused_like_redis(self):
        self.resp_router(extra="limits: {max_clients: 3}\n")
        held = []
        for _ in range(3):
            s = self.raw()
            self.assertEqual(self.exchange(s, b"PING\r\n", until=b"\r\n"), b"+PONG\r\n")
            held.append(s)
        s = self.raw()
        self.assertEqual(self.exchange(s, b""), b"-ERR max number of clients reached\r\n")


if __name__ == "__main__":
    unittest.main()
