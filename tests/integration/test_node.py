"""kvs-node command semantics, pipelining, restart and access paths.

Each test starts its own one-shard kvs-node on loopback (see kvstest.Node).
"""
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import unittest

from kvstest import (BUILD_DIR, NodeTestCase, pyval, req_hdel, req_hexist, req_hget, req_hmget, req_hmset,
                     req_hset, req_ping)

EMPTY = None  # pyval() of an empty Value


def vals(resp):
    return [pyval(v) for v in resp.values]


def kinds(resp):
    return [v.WhichOneof("kind") for v in resp.values]


class NodeTest(NodeTestCase):
    def setUp(self):
        self.n = self.node()
        self.c = self.n.client()
        self.addCleanup(self.c.close)

    # ---- single-key commands ----------------------------------------------

    def test_value_kinds_round_trip(self):
        cases = [
            ("s", "hello", "string_value"),
            ("s_utf8", "z\u00fcrich \u2603 \U0001f600", "string_value"),
            ("s_empty", "", "string_value"),
            ("b", bytes(range(256)), "binary_value"),
            ("b_empty", b"", "binary_value"),
            ("i", 42, "integer_value"),
            ("i_zero", 0, "integer_value"),
            ("i_min", -(2 ** 63), "integer_value"),
            ("i_max", 2 ** 63 - 1, "integer_value"),
            ("f", 3.25, "float_value"),
            ("f_zero", 0.0, "float_value"),
            ("f_neg", -1e300, "float_value"),
            ("f_inf", math.inf, "float_value"),
            ("t", True, "bool_value"),
            ("f_false", False, "bool_value"),
        ]
        for key, v, kind in cases:
            self.assertOk(self.c.hset("kinds", key, v))
        for key, v, kind in cases:
            with self.subTest(key=key):
                r = self.c.hget("kinds", key)
                self.assertOk(r)
                self.assertEqual(len(r.values), 1)
                # The kind survives, even for zero/empty members of the oneof.
                self.assertEqual(r.values[0].WhichOneof("kind"), kind)
                got = pyval(r.values[0])
                self.assertEqual(type(got), type(v))
                self.assertEqual(got, v)
        nan = self.c.hset("kinds", "nan", math.nan)
        self.assertOk(nan)
        self.assertTrue(math.isnan(pyval(self.c.hget("kinds", "nan").values[0])))

    def test_binary_keys(self):
        keys = [b"\x00", b"\x00\x00", b"\xff" * 511, b"a\x00b", "\u00e9".encode()]
        for i, k in enumerate(keys):
            self.assertOk(self.c.hset("bin", k, i))
        for i, k in enumerate(keys):
            self.assertEqual(vals(self.c.hget("bin", k)), [i])
        self.assertEqual(self.c.hget("bin", b"a").status, 404)

    def test_hget_missing_is_404(self):
        r = self.c.hget("nosuchtable", "k")
        self.assertEqual(r.status, 404)
        self.assertTrue(r.message)
        self.assertEqual(len(r.values), 0)
        self.assertOk(self.c.hset("t", "k", "v"))
        r = self.c.hget("t", "other")
        self.assertEqual(r.status, 404)
        self.assertIn("not found", r.message)

    def test_hset_returns_previous(self):
        r = self.c.hset("t", "k", "one")
        self.assertOk(r)
        self.assertEqual(kinds(r), [None])  # one empty Value: no previous
        r = self.c.hset("t", "k", 2)
        self.assertOk(r)
        self.assertEqual(vals(r), ["one"])
        r = self.c.hset("t", "k", b"three")
        self.assertEqual(vals(r), [2])
        self.assertEqual(vals(self.c.hget("t", "k")), [b"three"])
        # Same key, other table: independent.
        self.assertEqual(kinds(self.c.hset("t2", "k", 1)), [None])

    def test_hdel_returns_previous_and_missing_is_empty(self):
        self.assertOk(self.c.hset("t", "k", "v"))
        r = self.c.hdel("t", "k")
        self.assertOk(r)
        self.assertEqual(vals(r), ["v"])
        self.assertEqual(self.c.hget("t", "k").status, 404)
        r = self.c.hdel("t", "k")  # already gone
        self.assertOk(r)
        self.assertEqual(kinds(r), [None])
        r = self.c.hdel("nosuchtable", "k")
        self.assertOk(r)
        self.assertEqual(kinds(r), [None])

    def test_hexist_and_hmexist(self):
        self.assertOk(self.c.hset("t", "a", False))  # a stored False still exists
        self.assertOk(self.c.hset("t", "c", ""))
        r = self.c.hexist("t", "a")
        self.assertOk(r)
        self.assertEqual(vals(r), [True])
        self.assertEqual(vals(self.c.hexist("t", "b")), [False])
        self.assertEqual(vals(self.c.hexist("nosuchtable", "a")), [False])
        r = self.c.hmexist("t", ["c", "b", "a", "a", "zz"])
        self.assertOk(r)
        self.assertEqual(kinds(r), ["bool_value"] * 5)
        self.assertEqual(vals(r), [True, False, True, True, False])
        self.assertEqual(vals(self.c.hmexist("nosuchtable", ["a", "b"])), [False, False])

    # ---- multi-key commands -----------------------------------------------

    def test_hmget_order_with_missing(self):
        self.assertOk(self.c.hmset("t", [("a", 1), ("b", "two"), ("c", b"3")]))
        r = self.c.hmget("t", ["c", "missing", "a", "b", "a", "zzz"])
        self.assertOk(r)
        self.assertEqual(vals(r), [b"3", EMPTY, 1, "two", 1, EMPTY])
        self.assertEqual(kinds(r)[1], None)
        r = self.c.hmget("nosuchtable", ["a", "b"])
        self.assertOk(r)
        self.assertEqual(kinds(r), [None, None])

    def test_hmset_answers_previous_values_and_applies_all(self):
        self.assertOk(self.c.hset("t", "a", "old-a"))
        r = self.c.hmset("t", [("a", "A"), ("b", 2), ("c", 3.5)])
        self.assertOk(r)
        self.assertEqual(len(r.values), 3)
        self.assertEqual(vals(r), ["old-a", EMPTY, EMPTY])
        self.assertEqual(vals(self.c.hmget("t", ["a", "b", "c"])), ["A", 2, 3.5])
        # Applied in order inside the request: a repeated key sees the
        # earlier pair's value and the last one wins.
        r = self.c.hmset("t", [("d", 1), ("a", "A2"), ("d", 2)])
        self.assertEqual(vals(r), [EMPTY, "A", 1])
        self.assertEqual(vals(self.c.hmget("t", ["a", "d"])), ["A2", 2])

    def test_hmdel(self):
        self.assertOk(self.c.hmset("t", [("a", 1), ("b", 2), ("c", 3), ("keep", 4)]))
        r = self.c.hmdel("t", ["b", "missing", "a", "a"])
        self.assertOk(r)
        # previous value per key, in request order; the repeat finds nothing
        self.assertEqual(vals(r), [2, EMPTY, 1, EMPTY])
        self.assertEqual(vals(self.c.hmget("t", ["a", "b", "c", "keep"])), [EMPTY, EMPTY, 3, 4])
        r = self.c.hmdel("nosuchtable", ["a"])
        self.assertOk(r)
        self.assertEqual(kinds(r), [None])

    # ---- whole-table commands ---------------------------------------------

    def test_hgetall_key_order(self):
        keys = [b"b", b"a", b"ab", b"\x00", b"\xff", b"B", b"aa", b"a\x00", b"10", b"9"]
        rnd = random.Random(7)
        rnd.shuffle(keys)
        for i, k in enumerate(keys):
            self.assertOk(self.c.hset("t", k, i))
        self.assertOk(self.c.hset("other", "x", "y"))  # must not leak into t
        expect = {k: i for i, k in enumerate(keys)}
        r = self.c.hgetall("t")
        self.assertOk(r)
        self.assertEqual([p.key for p in r.pairs], sorted(keys))  # bytewise order
        self.assertEqual({p.key: pyval(p.value) for p in r.pairs}, expect)
        self.assertEqual(len(r.values), 0)

    def test_hgetall_empty_and_missing_table(self):
        r = self.c.hgetall("nosuchtable")
        self.assertOk(r)
        self.assertEqual(len(r.pairs), 0)
        self.assertOk(self.c.hset("emptied", "k", 1))
        self.assertOk(self.c.hdel("emptied", "k"))
        r = self.c.hgetall("emptied")
        self.assertOk(r)
        self.assertEqual(len(r.pairs), 0)

    def test_hscan_walks_1000_keys(self):
        keys = ["key-%04d" % i for i in random.Random(1).sample(range(1000), 1000)]
        for start in range(0, 1000, 100):
            self.assertOk(self.c.hmset("scan", [(k, k.upper()) for k in keys[start:start + 100]]))
        seen, cursor, pages = [], b"", 0
        while True:
            r = self.c.hscan("scan", cursor, 37)
            self.assertOk(r)
            pages += 1
            self.assertLessEqual(len(r.pairs), 37)
            for p in r.pairs:
                self.assertEqual(pyval(p.value), p.key.decode().upper())
            seen.extend(p.key for p in r.pairs)
            cursor = r.cursor
            if not cursor:
                break
            self.assertLess(pages, 100, "Hscan does not terminate")
        self.assertEqual(len(seen), len(set(seen)), "duplicates")
        self.assertEqual(seen, sorted(k.encode() for k in keys))  # nothing missed, in order
        self.assertEqual(pages, math.ceil(1000 / 37))

    def test_hscan_empty_table_and_default_count(self):
        r = self.c.hscan("nosuchtable")
        self.assertOk(r)
        self.assertEqual((len(r.pairs), r.cursor), (0, b""))
        self.assertOk(self.c.hmset("s", [("k%03d" % i, i) for i in range(250)]))
        r = self.c.hscan("s")  # count 0 = server default: some pages, all keys
        self.assertOk(r)
        self.assertGreater(len(r.pairs), 0)
        self.assertEqual(len(self.c.scan_all("s", count=0)), 250)
        # A cursor between keys resumes at the next key.
        r = self.c.hscan("s", b"k100x", 3)
        self.assertEqual([p.key for p in r.pairs], [b"k101", b"k102", b"k103"])
        self.assertEqual(r.cursor, b"k104")

    def test_ping(self):
        r = self.c.ping()
        self.assertEqual((r.status, r.message), (200, "PONG"))

    # ---- pipelining ---------------------------------------------------------

    def test_pipeline_1000_mixed_requests_in_order(self):
        rnd = random.Random(42)
        model = {}
        reqs, expect = [], []
        for i in range(1000):
            k = "k%d" % rnd.randrange(60)
            op = rnd.randrange(7)
            if op == 0:
                reqs.append(req_hset("p", k, i))
                expect.append((200, [model.get(k)]))
                model[k] = i
            elif op == 1:
                reqs.append(req_hget("p", k))
                expect.append((200, [model[k]]) if k in model else (404, []))
            elif op == 2:
                reqs.append(req_hdel("p", k))
                expect.append((200, [model.pop(k, None)]))
            elif op == 3:
                reqs.append(req_hexist("p", k))
                expect.append((200, [k in model]))
            elif op == 4:
                ks = ["k%d" % rnd.randrange(60) for _ in range(3)]
                reqs.append(req_hmget("p", ks))
                expect.append((200, [model.get(x) for x in ks]))
            elif op == 5:
                pairs = [("k%d" % rnd.randrange(60), "s%d" % i) for _ in range(2)]
                prev = []
                for pk, pv in pairs:
                    prev.append(model.get(pk))
                    model[pk] = pv
                reqs.append(req_hmset("p", pairs))
                expect.append((200, prev))
            else:
                reqs.append(req_ping())
                expect.append((200, []))
        resps = self.c.pipeline(reqs)  # one sendall, then 1,000 reads
        for i, (r, (status, values)) in enumerate(zip(resps, expect)):
            self.assertEqual((i, r.status, vals(r)), (i, status, values), r.message)
        self.assertEqual(resps[[j for j, r in enumerate(reqs)
                                if r.WhichOneof("command") == "ping"][0]].message, "PONG")
        final = dict(self.c.scan_all("p"))
        self.assertEqual(final, {k.encode(): v for k, v in model.items()})

    def test_read_your_writes_inside_one_pipeline(self):
        resps = self.c.pipeline([
            req_hset("ryw", "k", "v1"),
            req_hget("ryw", "k"),
            req_hset("ryw", "k", "v2"),
            req_hmget("ryw", ["k", "x"]),
            req_hdel("ryw", "k"),
            req_hget("ryw", "k"),
            req_hexist("ryw", "k"),
            req_hmset("ryw", [("k", "v3"), ("x", 1)]),
            req_hget("ryw", "k"),
        ])
        self.assertEqual([r.status for r in resps], [200, 200, 200, 200, 200, 404, 200, 200, 200])
        self.assertEqual(vals(resps[0]), [EMPTY])
        self.assertEqual(vals(resps[1]), ["v1"])
        self.assertEqual(vals(resps[2]), ["v1"])
        self.assertEqual(vals(resps[3]), ["v2", EMPTY])
        self.assertEqual(vals(resps[4]), ["v2"])
        self.assertEqual(vals(resps[6]), [False])
        self.assertEqual(vals(resps[7]), [EMPTY, EMPTY])
        self.assertEqual(vals(resps[8]), ["v3"])

    def test_pipeline_split_at_odd_boundaries(self):
        data = b"".join(
            struct.pack(">I", len(b)) + b
            for b in (req_hset("sp", "k%d" % i, i).SerializeToString() for i in range(50)))
        for i in range(0, len(data), 7):  # 7-byte writes: headers and bodies split
            self.c.send_raw(data[i:i + 7])
        for i in range(50):
            r = self.c.recv()
            self.assertOk(r)
        self.assertEqual(len(self.c.hgetall("sp").pairs), 50)

    # ---- lifecycle and access paths ---------------------------------------

    def test_data_survives_clean_restart(self):
        data = {("k%d" % i).encode(): ("v%d" % i if i % 2 else i) for i in range(300)}
        self.assertOk(self.c.hmset("r", list(data.items())))
        self.assertOk(self.c.hset("r2", b"\x00bin", b"\x01\x02"))
        self.assertOk(self.c.hdel("r", "k0"))
        del data[b"k0"]
        self.c.close()
        self.assertEqual(self.n.stop(), 0, self.n.stderr())
        self.n.start()
        with self.n.client() as c:
            self.assertEqual(dict(c.scan_all("r")), data)
            self.assertEqual(vals(c.hget("r2", b"\x00bin")), [b"\x01\x02"])
            self.assertEqual(c.hget("r", "k0").status, 404)
            self.assertOk(c.hset("r", "after", 1))
        self.assertEqual(self.n.stop(), 0, self.n.stderr())

    def test_refuses_data_of_an_older_wire_format(self):
        # kvs 0.1 stored integers as sint64 (format_version 1): served as
        # int64 they would be wrong, so the worker refuses the directory,
        # says why and what to do, and leaves it as it was.
        mdb_load = shutil.which("mdb_load")
        self.assertIsNotNone(mdb_load, "mdb_load (lmdb-utils) is needed: deploy/install-deps.sh")
        self.assertOk(self.c.hset("t", "k", -3))
        self.c.close()
        self.assertEqual(self.n.stop(), 0, self.n.stderr())
        env = os.path.join(self.n.data_dir, "shard-0")

        def set_format(version):
            subprocess.run([mdb_load, "-T", "-s", "__kvs", env], check=True, timeout=10,
                           input=b"format_version\n%s\n" % version)
        set_format(b"1")
        p = subprocess.run([self.n.exe, "--config", self.n.config, "--shard", "0",
                            "--listen", "%s:%d" % self.n.addr],
                           capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        err = p.stderr.decode()
        self.assertIn(env + " was written by an older kvs wire format", err)
        self.assertIn("sint64", err)
        self.assertIn("Move the directory away", err)
        set_format(b"2")  # what it would be, had it been written as int64
        self.n.start()
        with self.n.client() as c:
            self.assertEqual(vals(c.hget("t", "k")), [-3])

    def test_lower_max_tables_is_refused_at_start(self):
        # Restarted with storage.max_tables below the tables it holds, a
        # worker used to start and answer 404 for the tables that no longer
        # fit. It must refuse, naming tables and the value to set.
        n = self.node(storage={"max_tables": 10})
        with n.client() as c:
            for i in range(7):
                self.assertOk(c.hset("table%d" % i, "k", i))
        self.assertEqual(n.stop(), 0, n.stderr())
        with open(n.config) as f:
            text = f.read()
        with open(n.config, "w") as f:
            f.write(text.replace("max_tables: 10", "max_tables: 3"))
        with self.assertRaises(RuntimeError):
            n.start()
        self.assertNotEqual(n.proc.returncode, 0)
        log = n.stderr()
        self.assertIn('holds 7 table(s) ("table0", "table1", "table2", "table3", "table4" and '
                      '2 more)', log)
        self.assertIn("storage.max_tables is 3; set storage.max_tables to at least 7", log)
        with open(n.config, "w") as f:
            f.write(text.replace("max_tables: 10", "max_tables: 7"))
        n.start()
        with n.client() as c:
            self.assertEqual(vals(c.hget("table6", "k")), [6])

    def test_sigterm_answers_what_it_received(self):
        # Requests already sent when SIGTERM arrives are answered and stored.
        reqs = [req_hset("drain", "k%d" % i, i) for i in range(500)]
        self.c.send(*reqs)
        first = self.c.recv()
        self.assertOk(first)
        self.n.proc.send_signal(signal.SIGTERM)
        for i in range(1, 500):
            self.assertOk(self.c.recv())
        self.assertTrue(self.c.at_eof())
        self.assertEqual(self.n.proc.wait(10), 0, self.n.stderr())
        self.n.start()
        with self.n.client() as c:
            self.assertEqual(len(c.scan_all("drain")), 500)

    def test_unix_socket(self):
        with self.n.client(unix=True) as u:
            self.assertEqual(u.ping().message, "PONG")
            self.assertOk(u.hset("ux", "k", "via-unix"))
            self.assertEqual(vals(self.c.hget("ux", "k")), ["via-unix"])
            self.assertOk(self.c.hset("ux", "k2", "via-tcp"))
            self.assertEqual(vals(u.hmget("ux", ["k", "k2"])), ["via-unix", "via-tcp"])
            resps = u.pipeline([req_hset("ux", "p%d" % i, i) for i in range(200)])
            self.assertTrue(all(r.status == 200 for r in resps))
            self.assertEqual(len(self.c.hgetall("ux").pairs), 202)

    def test_two_clients_interleaving(self):
        with self.n.client() as a, self.n.client(unix=True) as b:
            for i in range(100):
                self.assertOk(a.hset("il", "a%d" % i, i))
                self.assertOk(b.hset("il", "b%d" % i, -i))
                self.assertEqual(vals(b.hget("il", "a%d" % i)), [i])
                self.assertEqual(vals(a.hget("il", "b%d" % i)), [-i])
            # Both pipelines in flight at once; each gets its own answers in order.
            a.send(*[req_hset("il2", "x", "a%d" % i) for i in range(300)])
            b.send(*[req_hget("il", "a%d" % i) for i in range(100)])
            rb = [b.recv() for _ in range(100)]
            ra = [a.recv() for _ in range(300)]
            self.assertEqual([vals(r) for r in rb], [[i] for i in range(100)])
            self.assertEqual(vals(ra[0]), [EMPTY])
            self.assertEqual([vals(r) for r in ra[1:]], [["a%d" % i] for i in range(299)])
            self.assertEqual(vals(b.hget("il2", "x")), ["a299"])
            self.assertEqual(len(a.hgetall("il").pairs), 200)


class CommandLineTest(unittest.TestCase):
    def test_bad_command_lines_exit_2_and_say_why(self):
        exe = os.path.join(BUILD_DIR, "kvs-node")
        for args, said in (
                (["--shard", "x"], "--shard must be a non-negative integer"),
                (["--shard", "0", "--report-fd", "2"], "--report-fd must be a file descriptor"),
                (["--shard", "0", "--config-fd", "x"], "--config-fd must be a file descriptor"),
                (["--shard", "0", "--spawn", "-1"], "--spawn must be a non-negative integer"),
                (["--shard", "0", "--config-fd", "5", "--report-fd", "5"],
                 "--config-fd and --report-fd must be different descriptors")):
            out = subprocess.run([exe, "--config", "/nonexistent.yaml"] + args,
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 2, (args, out.stderr))
            self.assertIn(said, out.stderr, args)


if __name__ == "__main__":
    unittest.main()
