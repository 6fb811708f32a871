"""The client API as a hostile client tests it: every limit of the
protocol met and passed on every path a request can take, and one client's
bad input or one hung worker never changing or holding up what others do.

The paths: a kvs-router answering reads of its local shards itself
(router.local_reads, the default), a router sending them to the workers,
a worker asked directly on its unix socket, and the Redis protocol door
(router.resp_listen). Each test starts its own router on loopback, checks
the answers (status and the words a user acts on), and then checks that
nothing else changed. Real kvs-router / kvs-node processes; every wait is
bounded.

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import os
import signal
import socket
import threading
import time
import unittest

from google.protobuf.internal import encoder

from kvstest import frame, pb, pyval, req_hget, req_hmget, req_hset
from routertest import RouterTestCase, free_port, keys_by_shard, stopped

PARTITIONS = 64


def hincr(table, key, by):
    return pb.CommandRequest(hincr=pb.Hincr(table=table, key=key, by_int=by))


def hlen(table):
    return pb.CommandRequest(hlen=pb.Hlen(table=table))


def resp(*args):
    """One RESP multibulk request."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class RespSocket:
    """A raw Redis protocol connection: one request, one whole reply at a
    time (simple, error, integer, bulk and array replies)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = bytearray()
        self.at = 0  # where the next reply starts in buf

    def close(self):
        self.sock.close()

    def _more(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk

    def _line(self):
        while True:
            end = self.buf.find(b"\r\n", self.at)
            if end >= 0:
                line, self.at = bytes(self.buf[self.at:end]), end + 2
                return line
            self._more()

    def _reply(self):
        line = self._line()
        if line[:1] == b"$" and int(line[1:]) >= 0:
            n = int(line[1:])
            while len(self.buf) < self.at + n + 2:
                self._more()
            data, self.at = bytes(self.buf[self.at:self.at + n]), self.at + n + 2
            return data
        if line[:1] == b"*":
            return [self._reply() for _ in range(int(line[1:]))]
        return line

    def call(self, *args):
        self.sock.sendall(resp(*args))
        reply = self._reply()
        del self.buf[:self.at]
        self.at = 0
        return reply


class HostileApiTestCase(RouterTestCase):
    def start(self, shards=4, local_reads=True, resp=False, **kw):
        yaml = list(kw.pop("router_yaml", ())) + ["local_reads: %s" % str(local_reads).lower()]
        if resp:
            self.rport = free_port()
            yaml.append('resp_listen: "127.0.0.1:%d"' % self.rport)
        return self.router(shards=shards, partitions=PARTITIONS, router_yaml=yaml, **kw)

    def resp_socket(self):
        s = RespSocket(self.rport)
        self.addCleanup(s.close)
        return s

    def assertStatus(self, resp_, status, *words):
        self.assertEqual(resp_.status, status, resp_.message)
        for w in words:
            self.assertIn(w, resp_.message)



class KeyLimitTest(HostileApiTestCase):
    """LMDB takes keys of at most 511 bytes. Every command that names a key
    refuses a longer one with 400 naming the field and the limit, before
    anything is read or written, on every path; 511 bytes work."""

    def commands(self, key):
        """(name, request) for every command naming `key` in table t."""
        return [
            ("Hset", req_hset("t", key, "v")),
            ("Hget", req_hget("t", key)),
            ("Hdel", pb.CommandRequest(hdel=pb.Hdel(table="t", key=key))),
            ("Hexist", pb.CommandRequest(hexist=pb.Hexist(table="t", key=key))),
            ("Hmget", req_hmget("t", [b"ok", key])),
            ("Hmexist", pb.CommandRequest(hmexist=pb.Hmexist(table="t", keys=[b"ok", key]))),
            ("Hmset", pb.CommandRequest(hmset=pb.Hmset(table="t", pairs=[
                pb.Kvpair(key=b"ok", value=pb.Value(integer_value=1)),
                pb.Kvpair(key=key, value=pb.Value(integer_value=2))]))),
            ("Hmdel", pb.CommandRequest(hmdel=pb.Hmdel(table="t", keys=[b"ok", key]))),
            ("Hincr", hincr("t", key, 1)),
        ]

    def test_keys_past_511_bytes_are_400_on_every_path(self):
        r = self.start(resp=True)
        with r.client() as c:
            self.assertStatus(c.hset("t", "ok", "seed"), 200)
            for n in (512, 600, 4096):
                for path, conn in (("router", c), ("worker", r.worker_client(r.shard_of(b"ok")))):
                    for name, req in self.commands(b"k" * n):
                        with self.subTest(path=path, n=n, command=name):
                            a = conn.call(req)
                            self.assertStatus(a, 400, name + ".", "%d bytes" % n, "511")
                    if conn is not c:
                        conn.close()
            s = self.resp_socket()
            for args in (("HSET", "t", b"f" * 600, "v"), ("HGET", "t", b"f" * 600),
                         ("HMGET", "t", "ok", b"f" * 600), ("HDEL", "t", b"f" * 600),
                         ("HINCRBY", "t", b"f" * 600, 1), ("HSETNX", "t", b"f" * 600, "v")):
                with self.subTest(resp=args[0]):
                    reply = s.call(*args)
                    self.assertTrue(reply.startswith(b"-ERR") and b"511" in reply, reply)
            # Nothing changed, and a key of exactly 511 bytes works everywhere.
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 1)
            k = b"k" * 511
            self.assertStatus(c.hset("t", k, "at-the-limit"), 200)
            self.assertEqual(pyval(c.hget("t", k).values[0]), "at-the-limit")
            self.assertEqual(s.call("HGET", "t", k), b"at-the-limit")
            self.assertEqual(c.call(hincr("t", k, 0)).status, 400)  # text is not a number
            page = c.hscan("t", b"S" + bytes([0, r.shard_of(k)]) + k[:-1], 1)
            self.assertStatus(page, 200)
            self.assertEqual([p.key for p in page.pairs], [k])
            self.assertStatus(c.hdel("t", k), 200)
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 1)

    def test_hscan_cursor_garbage_is_400_and_every_count_is_bounded(self):
        r = self.start(shards=2)
        with r.client() as c:
            self.assertStatus(c.hmset("t", [("k%d" % i, i) for i in range(30)]), 200)
            for cursor in (b"\x00", b"junk", b"S\x00", b"S\x00\x02", b"S\xff\xff" + b"k",
                           b"S\x00\x00" + b"k" * 600):
                with self.subTest(cursor=cursor[:8]):
                    self.assertStatus(c.hscan("t", cursor, 10), 400, "Hscan.cursor",
                                      "start with an empty cursor")
            for count, most in ((0, 30), (1, 1), (2**32 - 1, 30)):
                walked = c.scan_all("t", count=count)
                self.assertEqual(sorted(k for k, _ in walked), sorted(b"k%d" % i for i in range(30)))
                page = c.hscan("t", b"", count)
                self.assertLessEqual(len(page.pairs), most)
            for table in ("missing", "x" * 200):
                self.assertEqual(c.scan_all(table), [])
            self.assertStatus(c.hscan("", b"", 1), 400, "Hscan.table")


class OverriddenCommandTest(HostileApiTestCase):
    def test_a_field_kvs_does_not_know_in_an_overridden_command_refuses_the_request(self):
        # Probe BN: Hget{t, k1, field 15} then Hdel{t, k2} in one request:
        # protobuf keeps the Hdel alone, merging dropped the Hget unread,
        # and the Hdel ran (200), where such a field anywhere else refuses
        # the request. Also a field of the wrong wire type there. (The
        # worker's own door: test_badinput's unknown-field scenario.)
        r = self.start()
        hget = pb.Hget(table="t", key=b"k1").SerializeToString()
        hdel = pb.CommandRequest()
        hdel.hdel.table, hdel.hdel.key = "t", b"k2"
        with r.client() as c:
            self.assertStatus(c.hset("t", "k2", "kept"), 200)
            for bad, why in ((hget + b"\x78\x01", "15"),
                             (b"\x08\x01", "Hget.table is sent as varint")):
                c.send_raw(frame(b"\x0a" + bytes([len(bad)]) + bad + hdel.SerializeToString()))
                self.assertStatus(c.recv(), 400, why)
            self.assertEqual(pyval(c.hget("t", "k2").values[0]), "kept")


class KeyCountTest(HostileApiTestCase):
    def test_no_keys_is_400_and_a_hundred_thousand_are_served_whole(self):
        """A multi-key command with no key is 400 saying to give one; one
        with 100,000 keys (a 1.4 MB request, within limits.max_frame) is
        split over the shards and answered whole, one value per key in
        request order, through both doors."""
        r = self.start(resp=True)
        with r.client(timeout=60) as c:
            for name, req in (("Hmget", req_hmget("t", [])),
                              ("Hmdel", pb.CommandRequest(hmdel=pb.Hmdel(table="t"))),
                              ("Hmexist", pb.CommandRequest(hmexist=pb.Hmexist(table="t"))),
                              ("Hmset", pb.CommandRequest(hmset=pb.Hmset(table="t")))):
                self.assertStatus(c.call(req), 400, name + ".", "is empty", "at least one")
            keys = [b"k%06d" % i for i in range(100000)]
            # Encoded by hand: 100,000 Kvpair objects cost Python seconds.
            # Pair i is Kvpair{key: keys[i], value: Value{integer_value: i}}
            # (fields 1 and 2; integer_value is field 3, a varint).
            pairs = [b"\x0a" + bytes([len(k)]) + k + b"\x12" + bytes([len(v)]) + v
                     for k, v in zip(keys, (b"\x18" + encoder._VarintBytes(i)
                                            for i in range(len(keys))))]
            hmset = pb.Hmset(table="t").SerializeToString() + b"".join(
                b"\x12" + bytes([len(p)]) + p for p in pairs)
            c.send_raw(frame(encoder._VarintBytes(5 << 3 | 2) + encoder._VarintBytes(len(hmset))
                             + hmset))
            got = c.recv()
            self.assertStatus(got, 200)
            self.assertEqual(len(got.values), len(keys))
            self.assertTrue(all(v.WhichOneof("kind") is None for v in got.values))
            got = c.hmget("t", keys[::-1])
            self.assertEqual([pyval(v) for v in got.values], list(range(99999, -1, -1)))
            got = c.call(pb.CommandRequest(hmexist=pb.Hmexist(table="t", keys=keys)))
            self.assertEqual(sum(v.bool_value for v in got.values), len(keys))
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, len(keys))
            got = c.hmdel("t", keys)
            self.assertEqual([pyval(v) for v in got.values], list(range(100000)))
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 0)
        s = self.resp_socket()
        for cmd in ("HSET", "HMSET", "HMGET", "HDEL"):
            self.assertEqual(s.call(cmd, "t"),
                             b"-ERR wrong number of arguments for '%s' command" % cmd.lower().encode())
        args = ["HSET", "t"]
        for k in keys:
            args += [k, b"v"]
        self.assertEqual(s.call(*args), b":100000")
        self.assertEqual(s.call("HMGET", "t", *keys), [b"v"] * len(keys))
        self.assertEqual(s.call("HDEL", "t", *keys), b":100000")


class TableLimitTest(HostileApiTestCase):
    def test_257th_table_is_507_nothing_half_created_and_restart_is_fine(self):
        """storage.max_tables (256 by default) per shard: the table past it
        is refused with 507 saying what to change, no trace of it is left,
        every other table keeps working, reads of tables that do not exist
        are still 404 or empty (also from the router's own read-only view,
        which by then holds a handle for every table), and all of it still
        holds after a restart."""
        r = self.start(shards=1, sync="none")

        def check(c):
            for req in (req_hset("new", "k", 1), hincr("new", b"k", 1),
                        pb.CommandRequest(hmset=pb.Hmset(table="new", pairs=[
                            pb.Kvpair(key=b"a", value=pb.Value(integer_value=1)),
                            pb.Kvpair(key=b"b", value=pb.Value(integer_value=2))]))):
                self.assertStatus(c.call(req), 507, 'cannot create table "new"',
                                  "storage.max_tables (256)")
            self.assertStatus(c.hget("new", "k"), 404)
            self.assertEqual(c.call(hlen("new")).values[0].integer_value, 0)
            info = {p.key: pyval(p.value) for p in c.call(pb.CommandRequest(info=pb.Info())).pairs}
            self.assertEqual(info.get(b"shard.000.tables"), 256)
            # Every table read (so the router's view opens each), then tables
            # nobody created: still 404 or empty, never a storage error.
            answers = c.pipeline([hlen("t%03d" % i) for i in range(256)])
            self.assertEqual([a.values[0].integer_value for a in answers], [1] * 256)
            for i in range(20):
                self.assertStatus(c.hget("missing%d" % i, "k"), 404, '"missing%d"' % i)
            self.assertEqual([pyval(v) for v in c.hmget("missing", ["a", "b"]).values],
                             [None, None])
            self.assertStatus(c.hgetall("missing"), 200)
            self.assertEqual(c.scan_all("missing"), [])
            self.assertEqual(c.call(hlen("missing")).values[0].integer_value, 0)

        with r.client() as c:
            answers = c.pipeline([req_hset("t%03d" % i, "k", i) for i in range(256)])
            self.assertEqual([a.status for a in answers], [200] * 256)
            check(c)
            self.assertStatus(c.hset("t000", "k", "again"), 200)
        log = r.stderr()
        self.assertNotIn("MDB_DBS_FULL", log)
        self.assertNotIn("local read failed", log)
        self.assertEqual(r.stop(), 0)
        r.start()
        with r.client() as c:
            self.assertEqual(pyval(c.hget("t000", "k").values[0]), "again")
            self.assertEqual(pyval(c.hget("t255", "k").values[0]), 255)
            check(c)
        self.assertNotIn("MDB_DBS_FULL", r.stderr())


    def test_an_emptied_table_gives_its_room_back(self):
        """A table whose last key is deleted is dropped (it read as empty
        anyway): its place under storage.max_tables is free again, so a
        Redis client that keeps creating and deleting hashes (each one a
        table) never fills a shard. Its reads stay empty, also from the
        router's own read-only view, which kept a handle of it; a table
        bound to nothing but still holding keys stays; all of it holds
        after a restart."""
        r = self.start(shards=1, sync="none", resp=True, storage_yaml=["max_tables: 4"])

        def tables(c):
            info = {p.key: pyval(p.value) for p in c.call(pb.CommandRequest(info=pb.Info())).pairs}
            return info.get(b"shard.000.tables")

        with r.client() as c:
            answers = c.pipeline([req_hset("t%d" % i, "k", i) for i in range(4)])
            self.assertEqual([a.status for a in answers], [200] * 4)
            self.assertStatus(c.hset("new", "k", 1), 507, 'cannot create table "new"')
            self.assertEqual(c.call(hlen("t0")).values[0].integer_value, 1)  # a view handle
            self.assertEqual(c.call(hlen("t0")).values[0].integer_value, 1)
            self.assertStatus(c.call(pb.CommandRequest(hdel=pb.Hdel(table="t0", key=b"k"))), 200)
            self.assertEqual(tables(c), 3)
            self.assertEqual(c.call(hlen("t0")).values[0].integer_value, 0)
            self.assertStatus(c.hget("t0", "k"), 404)
            self.assertEqual(c.scan_all("t0"), [])
            self.assertStatus(c.hset("new", "k", 1), 200)
            self.assertStatus(c.hset("t0", "k", 1), 507, 'cannot create table "t0"')
        s = self.resp_socket()
        # 40 hashes made and emptied, one after another and all at once:
        # every one fits in the one free place.
        self.assertEqual(s.call("HDEL", "new", "k"), b":1")
        for i in range(20):
            key = "h%d" % i
            self.assertEqual(s.call("HSET", key, "f", "v", "g", "w"), b":2", key)
            self.assertEqual(s.call("EXISTS", key), b":1", key)
            self.assertEqual(s.call("HDEL", key, "f", "g"), b":2", key)
            self.assertEqual(s.call("EXISTS", key), b":0", key)
            self.assertEqual(s.call("HLEN", key), b":0", key)
        for i in range(20, 40):
            key = "h%d" % i
            s.sock.sendall(resp("HSET", key, "f", "v") + resp("HDEL", key, "f"))
            self.assertEqual((s._reply(), s._reply()), (b":1", b":1"), key)
        self.assertEqual(s.call("HSET", "last", "f", "v"), b":1")
        self.assertEqual(s.call("EXISTS", "last"), b":1")
        with r.client() as c:
            self.assertEqual(tables(c), 4)
        self.assertNotIn("local read failed", r.stderr())
        self.assertEqual(r.stop(), 0)
        r.start()
        with r.client() as c:
            self.assertEqual(tables(c), 4)
            self.assertEqual([pyval(c.hget("t%d" % i, "k").values[0]) for i in (1, 2, 3)],
                             [1, 2, 3])
            self.assertStatus(c.hget("h39", "f"), 404)
            self.assertStatus(c.hset("more", "k", 1), 507, 'cannot create table "more"')

class DuplicateKeysTest(HostileApiTestCase):
    def test_a_key_twice_in_one_request_last_wins_on_every_path(self):
        """Hmset applies its pairs in request order, as that many Hsets would:
        the answer holds each pair's previous value (an earlier pair's new
        value for a repeated key) and the last pair wins. The same whether
        the request goes whole to one shard, split over shards, straight to
        a worker, or comes through the Redis door."""
        r = self.start(resp=True)
        per = keys_by_shard("d", 1, PARTITIONS, 4)
        a, b = per[0][0], per[1][0]
        with r.client() as c, r.worker_client(0) as w:
            got = c.hmset("t", [(a, 1), (a, 2)])  # one shard: forwarded whole
            self.assertEqual([pyval(v) for v in got.values], [None, 1])
            got = c.hmset("t", [(a, 3), (b, 1), (a, 4), (b, 2)])  # split
            self.assertEqual([pyval(v) for v in got.values], [2, None, 3, 1])
            self.assertEqual([pyval(v) for v in c.hmget("t", [a, b, a]).values], [4, 2, 4])
            got = w.hmset("t", [(a, 5), (a, 6)])  # the worker itself
            self.assertEqual([pyval(v) for v in got.values], [4, 5])
            got = c.hmdel("t", [a, b, a, b])
            self.assertEqual([pyval(v) for v in got.values], [6, 2, None, None])
            self.assertEqual([pyval(v) for v in c.hmget("t", [a, b]).values], [None, None])
            s = self.resp_socket()
            self.assertEqual(s.call("HSET", "t", a, "x", a, "y"), b":1")  # one field added
            self.assertEqual(s.call("HGET", "t", a), b"y")
            self.assertEqual(s.call("HDEL", "t", a, a), b":1")
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 0)


class ForeignKeyTest(HostileApiTestCase):
    def test_a_worker_refuses_writes_of_keys_another_shard_owns(self):
        """Through a worker's own socket, a write to a table bound to no topic
        of a key another shard owns was stored there: no read by key (the
        router asks the owner) found it, no delete through the router
        removed it, and whole-table reads showed the key twice. Every write
        command is refused now, the whole request, and nothing changes."""
        r = self.start()
        per = keys_by_shard("f", 1, PARTITIONS, 4)
        own, foreign = per[0][0], per[1][0]
        inc = pb.CommandRequest()
        inc.hincr.table, inc.hincr.key, inc.hincr.by_int = "t", foreign, 1
        with r.client() as c, r.worker_client(0) as w:
            self.assertStatus(c.hset("t", foreign, "real"), 200)
            for got in (w.hset("t", foreign, "phantom"), w.hdel("t", foreign),
                        w.hmset("t", [(own, "x"), (foreign, "y")]), w.hmdel("t", [own, foreign]),
                        w.call(inc)):
                self.assertStatus(got, 400, 'key "%s" of table "t" belongs to shard 1, not '
                                  "this shard (0): send writes through kvs-router" % foreign.decode())
            self.assertStatus(w.hset("t", own, "mine"), 200)  # its own keys: as always
            self.assertEqual(sorted((p.key, pyval(p.value)) for p in c.hgetall("t").pairs),
                             sorted([(own, "mine"), (foreign, "real")]))
            self.assertEqual(pyval(c.hget("t", foreign).values[0]), "real")


class RespTableNameTest(HostileApiTestCase):
    def test_table_name_with_nul_is_refused_and_changes_no_other_table(self):
        """A NUL ends a name in C, so "a\\0b" would be table "a": the
        protobuf door refuses such names, and so must the Redis door, on
        every command that names a table (a Redis key may hold any byte).
        Table "a" must be exactly as it was."""
        r = self.start(shards=2, resp=True)
        with r.client() as c:
            self.assertStatus(c.hset("a", "f", "orig"), 200)
        s = self.resp_socket()
        bad = b"a\x00b"
        for args in (("HSET", bad, "f", "hijack"), ("HSET", bad, "f", "x", "g", "y"),
                     ("HMSET", bad, "f", "x"), ("HSETNX", bad, "n", "x"), ("HDEL", bad, "f"),
                     ("HDEL", bad, "f", "g"), ("HINCRBY", bad, "n", "1"),
                     ("HINCRBYFLOAT", bad, "n", "1.5"), ("HGET", bad, "f"), ("HMGET", bad, "f"),
                     ("HEXISTS", bad, "f"), ("HSTRLEN", bad, "f"), ("HGETALL", bad),
                     ("HKEYS", bad), ("HVALS", bad), ("HLEN", bad), ("EXISTS", bad),
                     ("HSCAN", bad, "0"), ("HSET", b"\x00", "f", "v")):
            with self.subTest(args=args):
                reply = s.call(*args)
                self.assertIsInstance(reply, bytes, "%r answered %r" % (args, reply))
                self.assertTrue(reply.startswith(b"-ERR") and b"NUL" in reply, reply)
        self.assertEqual(s.call("HGETALL", "a"), [b"f", b"orig"])
        self.assertEqual(s.call("PING"), b"+PONG")
        with r.client() as c:
            self.assertEqual(c.scan_all("a"), [(b"f", "orig")])


class UnavailableShardTest(HostileApiTestCase):
    def test_split_write_to_an_unreachable_shard_says_it_wrote_nothing(self):
        """A part that could not be sent (its shard's link is down) was
        certainly not written: the answer says so, rather than "may or may
        not". The other shards applied their keys: that is a 207 listing
        the key not written (a 503 without outcome_unknown would say that
        nothing was written)."""
        r = self.start(remote={3: "127.0.0.1:%d" % free_port()}, timeout="1s")
        per = keys_by_shard("w", 1, PARTITIONS, 4)
        keys = [per[s][0] for s in range(4)]
        with r.client() as c:
            for req in (pb.CommandRequest(hmset=pb.Hmset(table="t", pairs=[
                    pb.Kvpair(key=k, value=pb.Value(integer_value=1)) for k in keys])),
                        pb.CommandRequest(hmdel=pb.Hmdel(table="t", keys=keys))):
                with self.subTest(command=req.WhichOneof("command")):
                    a = c.call(req)
                    self.assertStatus(a, 207, "shard 3 is unavailable", "cannot connect",
                                      "the keys on shards 0, 1, 2 were written",
                                      "the 1 key on shard 3 was not")
                    self.assertNotIn("may or may not", a.message)
                    self.assertFalse(a.outcome_unknown)
                    self.assertEqual([p.key for p in a.pairs], [keys[3]])
            a = c.hset("t", keys[3], 1)
            self.assertStatus(a, 503, "shard 3 is unavailable")
            self.assertNotIn("may or may not", a.message)
            self.assertFalse(a.outcome_unknown)
            self.assertEqual(c.call(hlen("t")).status, 503)


    def test_a_split_resp_write_says_which_fields_were_not_written(self):
        # The 207 of a split write names `values` and `pairs` and says
        # "Hmset": a Redis client sees none of those. Its error reply says
        # which fields were not written, in field terms.
        self.start(remote={3: "127.0.0.1:%d" % free_port()}, timeout="1s", resp=True)
        per = keys_by_shard("w", 6, PARTITIONS, 4)
        fields = [per[s][0] for s in range(3)] + per[3][:5]
        s = self.resp_socket()
        args = ["HSET", "t"]
        for f in fields:
            args += [f, "v"]
        reply = s.call(*args).decode()
        self.assertTrue(reply.startswith("-ERR partly applied: the fields on shards 0, 1, 2 "
                                         "were written; 5 fields on shard 3 were not ("), reply)
        shown = per[3][:4]  # in the order sent
        self.assertIn(", ".join('"%s"' % f.decode() for f in shown) + ", ...): shard 3 is "
                      "unavailable", reply)
        for word in ("Hmset", "values", "pairs", "may or may not"):
            self.assertNotIn(word, reply)
        reply = s.call("HDEL", "t", per[0][0], per[3][0]).decode()
        self.assertTrue(reply.startswith("-ERR partly applied: the fields on shard 0 were "
                                         "deleted; 1 field on shard 3 was not (\"%s\"): "
                                         % per[3][0].decode()), reply)
        self.assertEqual(s.call("HGET", "t", per[1][0]), b"v")


    def test_a_message_that_quotes_the_client_reaches_a_redis_client_as_it_is(self):
        # Only the router's own note on a split write speaks of fields to
        # a Redis client; a worker's message quoting a table name that
        # reads like that note is passed on word for word.
        # Refused by every shard, it says so of the fields.
        self.start(shards=2, resp=True, storage_yaml=["max_tables: 1"])
        per = keys_by_shard("m", 1, PARTITIONS, 2)
        s = self.resp_socket()
        self.assertEqual(s.call("HSET", "t", per[0][0], "v", per[1][0], "v"), b":2")
        table = ("x (Hmset spans 2 shards and is not atomic across them: shard 0 applied "
                 "their keys)")
        full = ('-ERR cannot create table "%s": this shard already holds storage.max_tables (1) '
                'tables; raise the limit in config.yaml' % table)
        self.assertEqual(s.call("HSET", table, per[0][0], "v").decode(), full)
        self.assertEqual(s.call("HSET", table, per[0][0], "v", per[1][0], "v").decode(),
                         full + " (shard 0; every one of the 2 shards holding the fields "
                         "refused its part: nothing was written)")


class HungWorkerTest(HostileApiTestCase):
    def test_a_resp_split_write_that_timed_out_speaks_of_fields(self):
        # One shard's part of an HSET timed out (it may have been written):
        # the 503 spoke of "Hmset" and its keys to a client that sent HSET.
        r = self.start(timeout="1s", resp=True, local_reads=False)
        per = keys_by_shard("r", 1, PARTITIONS, 4)
        s = self.resp_socket()
        args = ["HSET", "t"]
        for sh in range(4):
            args += [per[sh][0], "v"]
        with stopped(r.worker_pid(3)):
            reply = s.call(*args).decode()
        self.assertTrue(reply.startswith("-ERR shard 3 is unavailable: no answer within "
                                         "router.timeout (1000 ms)"), reply)
        self.assertIn("(the command spans 4 shards and is not atomic across them: shards 0, 1, "
                      "2 applied their fields, shard 3 may or may not have written)", reply)
        self.assertNotIn("Hmset", reply)

    def test_hung_worker_bounds_split_requests_and_others_are_served(self):
        """A worker stopped dead (SIGSTOP) while an Hmset across every shard
        waits for it: that client gets 503 after router.timeout, naming what
        is known of each shard; meanwhile other clients' reads and writes of
        the other shards are answered at once. After SIGCONT the router and
        the worker agree on every key."""
        r = self.start(timeout="2s")
        per = keys_by_shard("h", 2, PARTITIONS, 4)
        keys = [per[s][0] for s in range(4)]
        with r.client() as c:
            self.assertStatus(c.hmset("t", [(k, 0) for k in keys]), 200)
        pid = r.worker_pid(1)
        os.kill(pid, signal.SIGSTOP)
        stopped = [True]

        def resume():
            if stopped[0]:
                stopped[0] = False
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        self.addCleanup(resume)
        result = {}

        def split_write():
            with r.client(timeout=20) as c:
                t0 = time.monotonic()
                result["answer"] = c.hmset("t", [(k, 1) for k in keys])
                result["took"] = time.monotonic() - t0
        th = threading.Thread(target=split_write, daemon=True)
        th.start()
        time.sleep(0.1)
        rounds = 0
        with r.client() as b:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                t0 = time.monotonic()
                self.assertStatus(b.hset("t", per[0][1], rounds), 200)
                got = b.hmget("t", [per[0][1], per[2][0], per[3][0]])
                self.assertStatus(got, 200)
                self.assertEqual(pyval(got.values[0]), rounds)
                self.assertLess(time.monotonic() - t0, 1.0, "a bystander waited for the hung shard")
                rounds += 1
        th.join(20)
        self.assertFalse(th.is_alive(), "the split write got no answer")
        a = result["answer"]
        self.assertStatus(a, 503, "shard 1 is unavailable", "router.timeout",
                          "shards 0, 2, 3 applied their keys", "shard 1 may or may not have")
        self.assertTrue(a.outcome_unknown)
        self.assertGreaterEqual(result["took"], 1.9)
        self.assertLess(result["took"], 8.0)
        self.assertGreater(rounds, 3)
        resume()
        deadline = time.monotonic() + 10
        with r.client() as c:
            while c.hset("t", per[1][1], "after").status != 200:
                self.assertLess(time.monotonic(), deadline, "shard 1 never served again")
                time.sleep(0.05)
            vals = [pyval(v) for v in c.hmget("t", keys).values]
            self.assertEqual([vals[0], vals[2], vals[3]], [1, 1, 1])
            self.assertIn(vals[1], (0, 1))
            with r.worker_client(1) as w:
                self.assertEqual(pyval(w.hget("t", keys[1]).values[0]), vals[1])
                self.assertEqual(pyval(w.hget("t", per[1][1]).values[0]), "after")


if __name__ == "__main__":
    unittest.main()
