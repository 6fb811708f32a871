"""Memory per request, as a hostile client tests it: one request must not
make a process allocate far more than the request's own size.

protobuf-c builds a C object for every key, pair and field it decodes (64
to 96 bytes each), so a request of tiny keys (3 bytes each on the wire, or
2 when empty) once cost the router and the worker 20 to 50 times its size:
a 4 MiB Hmget of 1-byte keys took the router 267 MB. Now:

- limits.max_keys (default 250,000) is counted on the wire before anything
  is decoded: a request past it is 413 naming the limit, costs little more
  than its own bytes, and does nothing (an over-limit Hmset writes none of
  its keys), at the router, at a worker asked directly, and at the Redis
  door (HMGET, HDEL, HSET: "-ERR ... limits.max_keys").
- With limits.max_keys raised out of the way, decoding is still held to
  20 times the request plus 2 MiB: a flood of tiny pairs is 413 "... bytes
  of memory to decode", at the router and at a worker; Hmget, Hmexist and
  Hmdel keys are left in the request as they are decoded (16 bytes a key).

Peak memory is each process's VmHWM (proc(5)) growth over its VmRSS when
the request was sent, the peak having been reset (clear_refs 5) just
before (not checked in a sanitizer build, whose redzones and quarantine
take memory of their own; the answers still are). Real kvs-router /
kvs-node processes on loopback; every wait is bounded.

Environment: KVS_BUILD_DIR (default ../../build), PYTHONPATH with build/py.
"""
import resource
import signal
import socket
import time
import unittest

from google.protobuf.internal import encoder

from kvstest import (SANITIZED, Client, anon_growth_settled, frame, pb, pyval, req_hmdel,
                     req_hmexist, req_hmget, req_hmset, status_kib)
from routertest import RouterTestCase, free_port, procs_for_config, router_pids
from kafkatest import wait_until
from test_auth import token_hash
from test_hostile_api import RespSocket, hlen

MIB = 1 << 20
MAX_FRAME = 4 * MIB  # limits.max_frame's default
PARTITIONS = 64

_V = encoder._VarintBytes


def _field(number, body):
    """A length-delimited protobuf field."""
    return _V(number << 3 | 2) + _V(len(body)) + body


def flood(command, element, size=MAX_FRAME - 64):
    """A CommandRequest of about `size` bytes: `command` (its oneof field
    number) on table "t" holding `element` (encoded bytes of field 2: a key
    or a pair) over and over. Built by hand: protobuf objects for millions
    of keys cost Python seconds."""
    body = _field(1, b"t")
    return _field(command, body + element * ((size - len(body) - 8) // len(element)))


# The worst shapes per command: keys of 1 byte (3 bytes each on the wire)
# or none at all, and empty Hmset pairs (2 bytes).
FLOODS = [
    ("Hmget", 3, "keys", b"\x12\x01a"),
    ("Hmget", 3, "keys", b"\x12\x00"),
    ("Hmexist", 9, "keys", b"\x12\x01a"),
    ("Hmdel", 7, "keys", b"\x12\x01a"),
    ("Hmset", 5, "pairs", b"\x12\x00"),
    ("Hmset", 5, "pairs", _field(2, _field(1, b"k") + _field(2, b"\x18\x01"))),
]


class MemoryTestCase(RouterTestCase):
    def start(self, router_yaml_extra=(), **kw):
        self.rport = free_port()
        return self.router(shards=2, partitions=PARTITIONS,
                           router_yaml=['resp_listen: "127.0.0.1:%d"' % self.rport]
                           + list(router_yaml_extra), **kw)

    def peaks(self, r, send):
        """Runs send(); returns {pid: peak memory growth in bytes} of the
        router's processes and workers while it ran."""
        procs = list(procs_for_config(r.config))
        base = {}
        for pid in procs:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")  # VmHWM := VmRSS
            base[pid] = status_kib(pid, "VmRSS")
        send()
        return {pid: (status_kib(pid, "VmHWM") - base[pid]) * 1024 for pid in procs}

    def assertPeaksBelow(self, peaks, bound, what):
        if SANITIZED:
            return  # ASan's redzones and quarantine are memory of its own
        worst = max(peaks.values())
        self.assertLess(worst, bound, "%s: peak growth %.1f MiB per process (%s), bound %.1f MiB"
                        % (what, worst / MIB, {p: round(v / MIB, 1) for p, v in peaks.items()},
                           bound / MIB))

    def call_raw(self, addr, payload):
        with Client(addr, timeout=60) as c:
            c.send_raw(frame(payload))
            return c.recv()

    def resp_call(self, *args):
        s = RespSocket(self.rport)
        s.sock.settimeout(60)
        try:
            return s.call(*args)
        finally:
            s.close()


class MaxKeysTest(MemoryTestCase):
    def test_floods_of_tiny_keys_are_413_for_little_memory(self):
        """A max_frame request of 1-byte or empty keys (1.4 to 2 million of
        them) is 413 naming limits.max_keys, counted without decoding: no
        process's peak grows by more than 6 times the request (the frame's
        buffer and the RESP door's argument list), where it grew by 50 to
        267 MB. Through protobuf at the router and at a worker's own
        socket, and through the Redis door."""
        r = self.start()
        bound = 6 * MAX_FRAME
        for addr in (r.addr, r.socket_path(0)):
            for name, number, what, element in FLOODS:
                payload = flood(number, element)
                got = []
                peaks = self.peaks(r, lambda: got.append(self.call_raw(addr, payload)))
                self.assertPeaksBelow(peaks, bound, "%s %r at %s" % (name, element, addr))
                self.assertEqual(got[0].status, 413, got[0].message)
                self.assertRegex(got[0].message, r"^%s names \d+ %s, more than limits.max_keys "
                                 r"\(250000\); nothing was done; send fewer keys per request$"
                                 % (name, what))
        fields = [b"a"] * ((MAX_FRAME - 64) // 7)
        for cmd, args, what in (("HMGET", fields, "fields"), ("HDEL", fields, "fields"),
                                ("HSET", fields[:len(fields) // 2 * 2], "pairs")):
            got = []
            peaks = self.peaks(r, lambda: got.append(self.resp_call(cmd, "t", *args)))
            self.assertPeaksBelow(peaks, bound, cmd)
            n = len(args) // 2 if cmd == "HSET" else len(args)
            self.assertEqual(got[0], b"-ERR %s names %d %s, more than limits.max_keys (250000); "
                             b"nothing was done; send fewer per command"
                             % (cmd.lower().encode(), n, what.encode()))
        with r.client() as c:  # nothing was written; everything still works
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 0)
            self.assertEqual(c.hset("t", b"k", b"v").status, 200)
            self.assertEqual(pyval(c.hget("t", b"k").values[0]), b"v")

    def test_over_the_limit_nothing_is_read_or_written(self):
        """limits.max_keys: 1000. An Hmset of 1001 pairs over both shards
        is 413 and writes none of them (through the router, at a worker,
        and as a RESP HSET); 1000 are written; Hmget, Hmexist and Hmdel of
        1001 keys are 413 too, and the Hmdel deletes nothing."""
        r = self.start(extra_yaml="limits: {max_keys: 1000}\n")
        keys = [b"key-%04d" % i for i in range(1001)]
        pairs = [(k, i) for i, k in enumerate(keys)]
        too_many = "%s names 1001 %s, more than limits.max_keys (1000); nothing was done"
        with r.client(timeout=30) as c:
            got = c.call(req_hmset("t", pairs))
            self.assertEqual(got.status, 413, got.message)
            self.assertIn(too_many % ("Hmset", "pairs"), got.message)
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 0)
            args = [x for k in keys for x in (k, b"v")]
            self.assertEqual(self.resp_call("HSET", "t", *args),
                             b"-ERR hset names 1001 pairs, more than limits.max_keys (1000); "
                             b"nothing was done; send fewer per command")
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 0)
            got = self.call_raw(r.socket_path(0), req_hmset("t", pairs).SerializeToString())
            self.assertEqual(got.status, 413, got.message)
            self.assertIn(too_many % ("Hmset", "pairs"), got.message)
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 0)

            self.assertEqual(c.call(req_hmset("t", pairs[:1000])).status, 200)
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 1000)
            for name, req in (("Hmget", req_hmget("t", keys)),
                              ("Hmexist", req_hmexist("t", keys)),
                              ("Hmdel", req_hmdel("t", keys))):
                got = c.call(req)
                self.assertEqual(got.status, 413, got.message)
                self.assertIn(too_many % (name, "keys"), got.message)
            self.assertEqual(self.resp_call("HDEL", "t", *keys)[:40],
                             b"-ERR hdel names 1001 fields, more than l")
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 1000)
            got = c.hmget("t", keys[:1000])
            self.assertEqual([pyval(v) for v in got.values], list(range(1000)))
            self.assertEqual(len(self.resp_call("HMGET", "t", *keys[:1000])), 1000)

    def test_keys_across_merged_members_are_counted(self):
        """Hmget{t, <fixed32 tag>} + Hmget{<unknown field 15> 1001 keys}:
        counted member by member the second holds one unknown field and no
        key, but the decoder reads the two bodies joined, where the fixed32
        eats the unknown field's head and the keys follow. Through the
        router and at a worker's own socket: 413, the keys counted as the
        decoder would read them."""
        r = self.start(extra_yaml="limits: {max_keys: 1000}\n")
        keys = b"".join(b"\x12\x08" + b"key-%04d" % i for i in range(1001))
        for pad in range(4):  # the fixed32 takes 0x7a, the length's bytes and the pad: 4 in all
            head = b"\x7a" + encoder._VarintBytes(pad + len(keys))
            if len(head) + pad == 4:
                break
        second = head + b"p" * pad + keys
        first = b"\x0a\x01t\x7d"
        payload = (b"\x1a" + encoder._VarintBytes(len(first)) + first +
                   b"\x1a" + encoder._VarintBytes(len(second)) + second)
        for addr in (r.addr, r.socket_path(0)):
            got = self.call_raw(addr, payload)
            self.assertEqual(got.status, 413, "%s: %s" % (addr, got.message))
            self.assertIn("Hmget names 1001 keys, more than limits.max_keys (1000)", got.message)


class MergedAnswersTest(MemoryTestCase):
    def test_split_reads_and_redis_replies_show_every_kind_as_single_reads_do(self):
        """Split Hmget/Hmexist and Hgetall answers are merged, and the
        Redis door's HMGET, HGETALL, HKEYS, HVALS, HSET and HDEL replies are
        written, from the workers' encoded values without decoding them:
        every kind of value (text, bytes, integers, floats, booleans, empty)
        reads back through them exactly as one Hget / HGET of each key
        shows it, in the order asked, over both shards."""
        r = self.start()
        kinds = ["text", "", b"\x00\xffbytes", 0, -7, 2 ** 62, 1.5, -0.25, True, False,
                 "\u00e9t\u00e9"]
        keys = [b"k%02d" % i for i in range(2 * len(kinds))]
        vals = {k: kinds[i % len(kinds)] for i, k in enumerate(keys)}
        with r.client() as c:
            self.assertEqual(c.call(req_hmset("t", vals.items())).status, 200)
            one = {k: c.hget("t", k).values[0] for k in keys}
            asked = keys[::-1] + [b"missing"]
            got = c.hmget("t", asked)
            self.assertEqual(got.status, 200, got.message)
            self.assertEqual(list(got.values), [one[k] for k in keys[::-1]] + [pb.Value()])
            got = c.call(req_hmexist("t", asked))
            self.assertEqual([v.bool_value for v in got.values], [True] * len(keys) + [False])
            got = c.hgetall("t")
            self.assertEqual([(p.key, p.value) for p in got.pairs],
                             sorted((k, one[k]) for k in keys))
        shown = {k: self.resp_call("HGET", "t", k) for k in keys}
        self.assertEqual(self.resp_call("HMGET", "t", *asked),
                         [shown[k] for k in keys[::-1]] + [b"$-1"])
        flat = self.resp_call("HGETALL", "t")
        self.assertEqual(list(zip(flat[::2], flat[1::2])), sorted(shown.items()))
        self.assertEqual(self.resp_call("HKEYS", "t"), sorted(keys))
        self.assertEqual(self.resp_call("HVALS", "t"), [shown[k] for k in sorted(keys)])
        self.assertEqual(self.resp_call("HSET", "t", keys[0], "x", keys[1], "y", b"new", "z"),
                         b":1")
        self.assertEqual(self.resp_call("HDEL", "t", keys[0], b"new", b"none", keys[5]), b":3")


class WholeTableReadTest(MemoryTestCase):
    def test_hgetall_costs_a_few_times_its_answer(self):
        """An Hgetall of a table of 300,000 small pairs (a 3.6 MB answer,
        within limits.max_frame) asks 20 bytes; the router merges the
        shards' answers and writes the RESP reply from the encoded pairs,
        so its peak grows by less than 6 times the answer (it grew by 54
        MB, 99 MB through HGETALL, when every pair was decoded)."""
        r = self.start(router_yaml_extra=["local_reads: false"])
        n = 300000
        keys = [b"%05x" % i for i in range(n)]
        with r.client(timeout=60) as c:
            for s in range(0, n, 100000):
                body = b"".join(_field(2, _field(1, k) + _field(2, b"\x18\x01"))
                                for k in keys[s:s + 100000])
                got = self.call_raw(r.addr, _field(5, _field(1, b"t") + body))
                self.assertEqual(got.status, 200, got.message)
            got = []
            peaks = self.peaks(r, lambda: got.append(c.hgetall("t")))
            answer = got[0].ByteSize()
            self.assertPeaksBelow(peaks, 6 * answer, "Hgetall")
            self.assertEqual(got[0].status, 200, got[0].message)
            self.assertEqual([p.key for p in got[0].pairs], keys)
        got = []
        peaks = self.peaks(r, lambda: got.append(self.resp_call("HGETALL", "t")))
        self.assertPeaksBelow(peaks, 6 * answer, "HGETALL")
        self.assertEqual(got[0][:4], [keys[0], b"1", keys[1], b"1"])
        self.assertEqual(len(got[0]), 2 * n)


class DecodeBudgetTest(MemoryTestCase):
    def test_with_max_keys_out_of_the_way_decoding_is_bounded(self):
        """limits.max_keys at its largest. Requests protobuf-c decodes (an
        Hmset, or an Hmget holding a field it keeps as unknown) are
        refused once decoding passes 20 times their size plus 2 MiB, with
        413 saying so; Hmget, Hmexist and Hmdel of plain keys are decoded
        leaving the keys in the request (16 bytes a key). Either way no
        process's peak grows by more than 20 times the request plus 2 MiB
        and 3 times the request (its frame's buffer), where it grew by 70
        to 267 MB. At the router and at a worker's own socket."""
        r = self.start(extra_yaml="limits: {max_keys: 100000000}\n")
        refused = [("Hmset", 5, b"\x12\x00"), ("Hmset", 5, _field(2, _field(1, b"k"))),
                   ("Hmget", 3, b"\x12\x01a")]
        for addr in (r.addr, r.socket_path(1)):
            for name, number, element in refused:
                payload = flood(number, element)
                if name == "Hmget":  # its last key becomes field 15 (unknown): varint 0
                    payload = payload[:-3] + b"\x78\x80\x00"
                budget = 20 * len(payload) + 2 * MIB
                got = []
                peaks = self.peaks(r, lambda: got.append(self.call_raw(addr, payload)))
                self.assertPeaksBelow(peaks, budget + 3 * len(payload),
                                      "%s %r at %s" % (name, element, addr))
                self.assertEqual(got[0].status, 413, got[0].message)
                self.assertEqual(got[0].message,
                                 "request of %d bytes would take more than %d bytes of memory to "
                                 "decode (20 times its size and 2 MiB): it holds too many keys, "
                                 "pairs or fields for its size; nothing was done; send fewer keys "
                                 "per request" % (len(payload), budget))
            for name, number, what, element in FLOODS[:4]:
                payload = flood(number, element)
                got = []
                peaks = self.peaks(r, lambda: got.append(self.call_raw(addr, payload)))
                self.assertPeaksBelow(peaks, 23 * len(payload) + 2 * MIB,
                                      "%s %r at %s" % (name, element, addr))
                self.assertIn(got[0].status, (200, 400, 413), got[0].message)
        with r.client() as c:
            self.assertEqual(c.call(hlen("t")).values[0].integer_value, 0)


class IdleBuffersTest(MemoryTestCase):
    def test_idle_connections_give_back_what_a_burst_left(self):
        """Connections that each once sent a 200 KB request and were owed a
        200 KB answer, then went quiet, hold no buffers for it a few seconds
        later: the router process, and a worker asked on its own socket,
        come back within 16 MiB of where they were with 100 such
        connections open. Each such connection kept up to 256 KiB per
        buffer (decoder, output, write) for as long as it stayed connected:
        about 600 KB apiece, 59 MB for the 100, and a client opening
        limits.max_clients of them could pin gigabytes."""
        r = self.start()
        big = "b" * 200000
        with r.client() as c:
            self.assertEqual(c.hset("t", "x", big).status, 200)
        shard = r.shard_of("x")
        for addr, pid in ((r.addr, router_pids(r)[0]),
                          (r.socket_path(shard), r.worker_pid(shard))):
            base = status_kib(pid, "RssAnon")  # not LMDB's file pages a worker maps
            conns = [Client(addr, timeout=20) for _ in range(100)]
            try:
                for c in conns:
                    self.assertEqual(c.hset("t", "x", big).status, 200)
                    got = c.hget("t", "x")
                    self.assertEqual((got.status, len(got.values[0].string_value)), (200, len(big)))
                grown = anon_growth_settled(pid, base, 16 * MIB)
                if not SANITIZED:
                    self.assertLess(grown, 16 * MIB, "%s: %.1f MiB held by 100 idle connections"
                                    % (addr, grown / MIB))
                for c in conns:  # idle connections still serve
                    self.assertEqual(c.hget("t", "x").status, 200)
            finally:
                for c in conns:
                    c.close()

    def test_a_crowd_that_left_leaves_no_resident_memory(self):
        """Rounds of 1,500 RESP connections that each started a 100 KB
        argument (so the router grew a buffer for it) and then closed:
        the router process comes back within 16 MiB of where it was. The
        buffers were freed, but below blocks still in use glibc kept them
        resident: ~60 MB after the first round, more after each."""
        r = self.start()
        pid = router_pids(r)[0]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 1700:
            self.skipTest("RLIMIT_NOFILE %d is below the 1,700 descriptors this needs" % hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1700), hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        base = status_kib(pid, "RssAnon")
        start = b"*2\r\n$4\r\nECHO\r\n$100000\r\n" + b"x" * 1000
        for _ in range(3):
            socks = []
            try:
                for _ in range(1500):
                    s = socket.create_connection(("127.0.0.1", self.rport), timeout=10)
                    socks.append(s)
                    s.sendall(start)
                time.sleep(0.5)
                self.assertEqual(self.resp_call("PING"), b"+PONG")
            finally:
                for s in socks:
                    s.close()
            grown = anon_growth_settled(pid, base, 16 * MIB)
            if not SANITIZED:
                self.assertLess(grown, 16 * MIB, "%.1f MiB resident after the crowd left"
                                % (grown / MIB))
        with r.client() as c:  # still serves
            self.assertEqual(c.ping().status, 200)


@unittest.skipIf(SANITIZED, "the sanitizers' allocator gives nothing back to the system")
class ConfigMemoryTest(MemoryTestCase):
    def test_the_master_gives_back_what_loading_a_large_file_took(self):
        """A file of 9,000 users with 22 patterns each (3.8 MB) takes some
        40 MB to load, freed below what the configuration keeps. Router
        processes and workers give such memory back at their connections'
        sweeps; the master runs none and kept it: 50 MB resident after the
        start, 65 MB after a reload. It gives it back once a file is
        loaded: its anonymous memory stays within 16 MiB of a master's with
        a small file, at the start and after a reload."""
        small = self.router(shards=1, partitions=4)
        base = status_kib(small.pid, "RssAnon") * 1024
        self.assertEqual(small.stop(), 0)
        stored = token_hash("secret")
        users = ["users:"]
        for u in range(9000):
            users += ["  - name: u%d" % u, '    token: "%s"' % stored,
                      "    allow: {" + ", ".join('"t%d*": read' % i for i in range(22)) + "}"]
        r = self.router(shards=1, partitions=4, extra_yaml="\n".join(users) + "\n")
        grown = status_kib(r.pid, "RssAnon") * 1024 - base
        self.assertLess(grown, 16 * MIB, "master: %.1f MiB more than with a small file"
                        % (grown / MIB))
        r.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "router INFO  configuration reloaded" in r.stderr(),
                                   30), r.stderr()[-2000:])
        # (the line comes just before the old values are freed)
        wait_until(lambda: status_kib(r.pid, "RssAnon") * 1024 - base < 16 * MIB, 5)
        grown = status_kib(r.pid, "RssAnon") * 1024 - base
        self.assertLess(grown, 16 * MIB, "master after a reload: %.1f MiB more than with a small "
                        "file" % (grown / MIB))


if __name__ == "__main__":
    unittest.main()
