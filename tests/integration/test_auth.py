"""Authentication and authorization: users with tokens (Auth) or client
certificates, rights on table patterns, 401/403, failure limits, and the
tools' --user/--token. Real routers and workers on loopback; tokens hashed
with kvs-cli hash-token at a low iteration count so each check is quick.
"""
import fnmatch
import os
import signal
import socket
import struct
import subprocess
import time

import redis

from kvstest import (BUILD_DIR, SANITIZED, Client, NodeTestCase, cert_path, frame, pb, pyval,
                     req_hget, req_hgetall, req_hmdel, req_hmexist, req_hmget, req_hmset,
                     req_hscan, req_hset, recv_to_eof, resp_exchange, status_kib, tls_context,
                     tls_yaml)
from routertest import (RouterTestCase, free_port, free_port_range, keys_by_shard, router_pids,
                        stopped)

CLI = os.path.join(BUILD_DIR, "kvs-cli")
BENCH = os.path.join(BUILD_DIR, "kvs-bench")
_HASHES = {}


def token_hash(token):
    """The stored form of `token`, from kvs-cli hash-token (1000 iterations)."""
    if token not in _HASHES:
        p = subprocess.run([CLI, "hash-token", "-", "1000"], input=token.encode(),
                           capture_output=True, timeout=10, check=True)
        _HASHES[token] = p.stdout.decode().strip()
    return _HASHES[token]


# user -> (token or None, {pattern: rights})
USERS = {
    "alice": ("alice-pw", {"orders*": ["read", "write"], "pub": ["read"]}),
    "reader": ("reader-pw", {"*": ["read"]}),
    "ops": ("ops-pw", {"*": ["read", "write", "admin"]}),
    "writer": ("writer-pw", {"w*": ["write"]}),  # a producer: writes, never reads
    "kvs-node": (None, {"*": ["read", "write", "admin"]}),  # the nodes' certificate
}


def users_yaml(users=USERS, limits=""):
    lines = ["users:"]
    for name, (token, allow) in users.items():
        lines.append("  - name: %s" % name)
        if token is not None:
            lines.append('    token: "%s"' % token_hash(token))
        lines.append("    allow: {%s}" % ", ".join('"%s": [%s]' % (p, ", ".join(r))
                                                   for p, r in allow.items()))
    if limits:
        lines.append("limits: {%s}" % limits)
    return "\n".join(lines) + "\n"


def closed(s):
    """True once the peer closed socket `s` (EOF or reset; waits up to its timeout)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def req_auth(user, token):
    r = pb.CommandRequest()
    r.auth.user, r.auth.token = user, token
    return r


def req_info():
    r = pb.CommandRequest()
    r.info.SetInParent()
    return r


# command -> (right needed, request builder for a table)
COMMANDS = {
    "Hget": ("read", lambda t: req_hget(t, "k")),
    "Hmget": ("read", lambda t: req_hmget(t, ["k", "k2"])),
    "Hexist": ("read", lambda t: _hexist(t)),
    "Hmexist": ("read", lambda t: req_hmexist(t, ["k"])),
    "Hgetall": ("read", lambda t: req_hgetall(t)),
    "Hscan": ("read", lambda t: req_hscan(t)),
    "Hset": ("write", lambda t: req_hset(t, "k", "v")),
    "Hmset": ("write", lambda t: req_hmset(t, {"k": 1, "k2": 2})),
    "Hdel": ("write", lambda t: _hdel_key(t, "k8")),
    "Hmdel": ("write", lambda t: req_hmdel(t, ["k9"])),
    "Hincr": ("read and write", lambda t: _hincr(t)),
    "Hlen": ("read", lambda t: _hlen(t)),
}


def _hincr(t):
    r = pb.CommandRequest()
    r.hincr.table, r.hincr.key, r.hincr.by_int = t, b"counter", 1
    return r


def _hlen(t):
    r = pb.CommandRequest()
    r.hlen.table = t
    return r


def _hexist(t):
    r = pb.CommandRequest()
    r.hexist.table, r.hexist.key = t, b"k"
    return r


def allowed(user, right, table):
    return any(fnmatch.fnmatchcase(table, p) and all(x in r for x in right.split(" and "))
               for p, r in USERS[user][1].items())


def presence(resp):
    """A write's previous values as a user without read sees them: True
    (the key had one: integer_value 0, the value withheld), None (none)."""
    out = []
    for v in resp.values:
        kind = v.WhichOneof("kind")
        assert kind in (None, "integer_value"), "a value shown: %r" % v
        assert kind is None or v.integer_value == 0, "a length shown: %r" % v
        out.append(True if kind else None)
    return out


def check_write_only(test, c, seed):
    """As user writer on connection `c`, after `seed` (a connection with
    read and write) stored wsecret {k: TOPSECRET, n: 1234, k2: x}: every
    write answers whether each key was there and nothing of its value;
    Hincr, which answers the value it makes, is refused."""
    t = "wsecret"
    test.assertOk(seed.hmset(t, {"k": "TOPSECRET", "n": 1234, "k2": "x"}))
    test.assertEqual(c.hget(t, "k").status, 403)
    resp = c.hset(t, "k", "new")
    test.assertEqual((resp.status, presence(resp)), (200, [True]), resp.message)
    q = req_hset(t, "k", "other")
    q.hset.if_absent = True  # stores nothing: the key is there
    resp = c.call(q)
    test.assertEqual((resp.status, presence(resp)), (200, [True]), resp.message)
    resp = c.hset(t, "fresh", "v")
    test.assertEqual((resp.status, presence(resp)), (200, [None]))
    resp = c.call(req_hmset(t, {"k2": "y", "absent": "z"}))
    test.assertEqual((resp.status, presence(resp)), (200, [True, None]), resp.message)
    resp = c.call(req_hmdel(t, ["k2", "nope"]))
    test.assertEqual((resp.status, presence(resp)), (200, [True, None]), resp.message)
    resp = c.call(_hdel_key(t, "fresh"))
    test.assertEqual((resp.status, presence(resp)), (200, [True]), resp.message)
    q = _hincr(t)
    q.hincr.key, q.hincr.by_int = b"n", 0
    resp = c.call(q)
    test.assertEqual(resp.status, 403)
    test.assertEqual(resp.message, 'user "writer" may not run Hincr on table "wsecret": it needs '
                                   "read and write")
    test.assertEqual([pyval(v) for v in seed.hmget(t, ["k", "n", "k2", "fresh", "absent"]).values],
                     ["new", 1234, None, None, "z"])
    test.assertEqual(pyval(seed.hset(t, "k", "back").values[0]), "new")  # shown to a reader
    # Nor does a refusal for the answer's size tell one value from another
    # (probe BJ: "could take up to N bytes" grew with the value's length),
    # nor a key that is there from one that is not (probe BL: it told them
    # apart without writing anything, which no read right allowed).
    test.assertOk(seed.hmset(t, {"short": "x", "longer": "secret!!", "num": 10 ** 15}))
    said = set()
    for key in ("short", "longer", "num", "not-there"):
        q = req_hmdel(t, [key])
        q.hmdel.answer_budget = 1
        resp = c.call(q)
        test.assertEqual(resp.status, 413, resp.message)
        said.add(resp.message)
    test.assertEqual(len(said), 1, said)
    test.assertEqual(len(seed.hmget(t, ["short", "longer", "num"]).values), 3)
    # Hclear: whether it removed any key, not how many (Redis's DEL: 1 or 0).
    test.assertOk(seed.hmset("wtab", {"a%d" % i: i for i in range(7)}))
    for table, want in (("wtab", 1), ("wtab", 0), ("wnone", 0)):
        resp = c.call(_hclear(table))
        test.assertEqual((resp.status, resp.values[0].integer_value), (200, want), resp.message)
    test.assertOk(seed.hmset("wtab", {"a%d" % i: i for i in range(7)}))
    test.assertEqual(seed.call(_hclear("wtab")).values[0].integer_value, 7)  # a reader: the count


def _hclear(t):
    r = pb.CommandRequest()
    r.hclear.table = t
    return r


def _hdel_key(t, key):
    r = pb.CommandRequest()
    r.hdel.table, r.hdel.key = t, key.encode()
    return r


class AuthTest(RouterTestCase):
    def auth_router(self, tls=True, router_tls=None, limits="", **kw):
        extra = users_yaml(limits=limits)
        if tls:
            keys = {"enabled": "true"}
            keys.update(router_tls or {})
            extra += tls_yaml(router=keys)
        return self.router(shards=2, partitions=8, extra_yaml=extra,
                           tls=tls_context() if tls else None, **kw)

    def plain_socket(self, r, first=b"", timeout=10):
        """A plain socket to r's client port (closed at cleanup), `first`
        sent on it."""
        s = socket.create_connection(("127.0.0.1", r.port), timeout=timeout)
        self.addCleanup(s.close)
        if first:
            s.sendall(first)
        return s

    def authed(self, r, user, **kw):
        c = r.client(**kw)
        self.addCleanup(c.close)
        resp = c.call(req_auth(user, USERS[user][0]))
        self.assertEqual(resp.status, 200, resp.message)
        self.assertEqual(resp.message, 'authenticated as "%s"' % user)
        return c

    def test_unauthenticated_gets_401_for_all_but_ping_and_auth(self):
        r = self.auth_router()
        with r.client() as c:
            self.assertEqual(c.ping().message, "PONG")
            for name, (_, build) in COMMANDS.items():
                resp = c.call(build("orders"))
                self.assertEqual(resp.status, 401, name)
                self.assertIn("authentication required for %s" % name, resp.message)
            self.assertEqual(c.call(req_info()).status, 401)
        self.assertIn("users required", r.stderr())

    def test_permission_matrix_through_the_router(self):
        r = self.auth_router()
        tables = ["orders", "orders-eu", "pub", "secret"]
        with self.authed(r, "ops") as ops:  # seed every table
            for t in tables:
                self.assertOk(ops.hmset(t, {"k": "v", "k8": 8, "k9": 9}))
        # A refused multi-key write changes nothing (one table: all or nothing).
        with self.authed(r, "alice") as c:
            self.assertEqual(c.hmset("pub", {"k": "new", "z": 1}).status, 403)
        with self.authed(r, "reader") as c:
            self.assertEqual(dict(c.scan_all("pub")), {b"k": "v", b"k8": 8, b"k9": 9})
        for user in ("alice", "reader", "ops"):
            c = self.authed(r, user)
            for t in tables:
                for name, (right, build) in COMMANDS.items():
                    resp = c.call(build(t))
                    if allowed(user, right, t):
                        self.assertIn(resp.status, (200, 404), "%s %s %s: %s"
                                      % (user, name, t, resp.message))
                    else:
                        self.assertEqual(resp.status, 403, "%s %s %s" % (user, name, t))
                        self.assertEqual(resp.message,
                                         'user "%s" may not run %s on table "%s": it needs %s'
                                         % (user, name, t, right))
            info = c.call(req_info())
            if "admin" in USERS[user][1].get("*", []):
                self.assertOk(info)
            else:
                self.assertEqual(info.status, 403)
                self.assertIn('needs admin on "*"', info.message)

    def test_a_write_only_user_is_shown_no_stored_value(self):
        """A user with write and not read on a table (a producer) is told
        whether each key it wrote or deleted was there, as Redis's counts
        tell a write-only user, and nothing of what it held: its previous
        values are withheld (CommandRequest.presence_only), on the fast
        path, the full path and a write split over both shards; Hincr,
        whose answer is the value it makes, needs read too."""
        r = self.auth_router(tls=False)
        check_write_only(self, self.authed(r, "writer"), self.authed(r, "ops"))
        per = keys_by_shard("s", 2, 8, 2)
        with self.authed(r, "ops") as ops:
            self.assertOk(ops.hset("wsplit", per[0][0], "secret-0"))
        c = self.authed(r, "writer")
        resp = c.call(req_hmset("wsplit", {per[0][0]: "a", per[1][0]: "b"}))
        self.assertEqual((resp.status, presence(resp)), (200, [True, None]), resp.message)
        q = req_hset("wsplit", per[0][0], "c")
        q.presence_only = False  # a client cannot ask to be shown more
        resp = c.call(q)
        self.assertEqual((resp.status, presence(resp)), (200, [True]), resp.message)

    def test_a_write_only_users_partial_hclear_tells_nothing_per_shard(self):
        # Probe BM: an Hclear that one shard did not answer said how many
        # keys the others removed ("some"/"no" for a user without read:
        # still whether each shard held any).
        r = self.auth_router(tls=False, timeout="1s")
        per = keys_by_shard("h", 1, 8, 2)
        with self.authed(r, "ops") as ops:
            self.assertOk(ops.hset("wpart", per[0][0], "v"))
            self.assertOk(ops.hset("wmine", per[0][0], "v"))
        writer, ops = self.authed(r, "writer"), self.authed(r, "ops")
        with stopped(r.workers()[1]):
            resp = writer.call(_hclear("wpart"))
            mine = ops.call(_hclear("wmine"))
        self.assertEqual(resp.status, 503, resp.message)
        self.assertIn("emptied the table on 1 of 2 shards; shard 1 may or may not", resp.message)
        self.assertNotIn("removed there", resp.message)
        self.assertIn("emptied the table on 1 of 2 shards (1 keys removed there)", mine.message)

    def test_unauthenticated_clients_cannot_take_the_input_budget(self):
        # Incomplete frames of all connections share limits.input_buffers. A
        # client that has not authenticated may only Ping and Auth, small
        # requests; were it to send large frames, a few such clients would
        # hold the whole budget and the users' large requests be refused.
        r = self.auth_router(tls=False, limits="max_frame: 1MiB, input_buffers: 1MiB")
        hogs = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
            self.addCleanup(s.close)
            try:
                s.sendall(struct.pack(">I", 1000000) + b"\0" * 600000)  # never finished
            except OSError:
                pass  # refused before it was all sent
            hogs.append(s)
        for s in hogs:  # each is told why, and closed
            got = recv_to_eof(s)
            resp = pb.CommandResponse()
            resp.ParseFromString(got[4:])
            self.assertEqual(resp.status, 401, resp.message)
            self.assertIn("authenticate first", resp.message)
        c = self.authed(r, "ops")
        self.assertOk(c.hset("orders", "big", b"x" * 400000))
        # Auth and a large request pipelined: the large one is read once the
        # Auth has made the client someone.
        with r.client() as c2:
            got = c2.pipeline([req_auth("ops", "ops-pw"), req_hset("orders", "big2", b"y" * 400000),
                               req_hget("orders", "big2")])
            self.assertEqual([x.status for x in got], [200, 200, 200])
            self.assertEqual(len(pyval(got[2].values[0])), 400000)

    def test_auth_in_a_pipeline_applies_to_what_follows(self):
        r = self.auth_router()
        with r.client() as c:
            got = c.pipeline([req_hset("orders", "p", 1), req_auth("alice", "alice-pw"),
                              req_hset("orders", "p", 2), req_hget("orders", "p"),
                              req_auth("alice", "wrong"), req_hget("orders", "p"),
                              req_auth("reader", "reader-pw"), req_hset("orders", "p", 3)])
            self.assertEqual([x.status for x in got], [401, 200, 200, 200, 401, 200, 200, 403])
            self.assertEqual(pyval(got[3].values[0]), 2)
            self.assertEqual(pyval(got[5].values[0]), 2)  # a failed Auth keeps the user

    def test_wrong_tokens_close_the_connection_and_are_logged(self):
        r = self.auth_router()
        with r.client() as c:
            for i in range(3):
                resp = c.call(req_auth("alice", "nope%d" % i))
                self.assertEqual(resp.status, 401)
                self.assertIn("invalid user or token", resp.message)
            self.assertIn("too many failures", resp.message)
            self.assertTrue(c.at_eof())
        with r.client() as c:  # unknown users get the same words
            resp = c.call(req_auth("mallory", "x"))
            self.assertEqual((resp.status, resp.message), (401, "invalid user or token"))
        log = r.stderr()
        self.assertRegex(log, r'auth: failed Auth as "alice" from 127\.0\.0\.1:\d+ \(3 on this '
                              r'connection; closing it\)')
        self.assertRegex(log, r'failed Auth as "mallory" from 127\.0\.0\.1:\d+')
        self.assertNotIn("nope", log)

    def test_failures_per_address_are_rate_limited(self):
        r = self.auth_router(limits="auth_failures: 100, auth_failures_per_minute: 6")
        with r.client() as c:
            for i in range(6):
                self.assertEqual(c.call(req_auth("alice", "bad%d" % i)).status, 401)
            t0 = time.monotonic()
            resp = c.call(req_auth("alice", "alice-pw"))  # refused unchecked
            self.assertLess(time.monotonic() - t0, 1.0)
            self.assertEqual(resp.status, 401)
            self.assertIn("too many failed Auth attempts from 127.0.0.1", resp.message)
            self.assertIn("retry in", resp.message)
            self.assertEqual(c.call(req_hget("orders", "k")).status, 401)
            # 30 more at once, refused unchecked: logged at most 5 a second.
            got = c.pipeline([req_auth("alice", "x")] * 30)
            self.assertEqual({x.status for x in got}, {401})
        time.sleep(1.1)
        with r.client() as c:
            c.call(req_auth("alice", "again"))  # a later second: the dropped lines are summed up
        # The limit counts seconds of the loop's clock; a wall-clock second
        # overlaps two of them, each with 5 lines and a summary at most.
        per_second = {}
        lines = [x for x in r.stderr().splitlines() if "router WARN  auth: " in x]
        for line in lines:
            per_second[line[:19]] = per_second.get(line[:19], 0) + 1
        self.assertLessEqual(max(per_second.values()), 2 * (5 + 1), per_second)
        self.assertLess(len(lines), 6 + 1 + 30 + 1)  # the attempts: some were not logged
        self.assertRegex(r.stderr(), r"\d+ more failed Auth attempts were not logged")

    def test_client_certificate_names_the_user(self):
        r = self.auth_router(router_tls={"client_cert": "optional"})
        with r.client(tls=tls_context(cert="alice")) as c:  # CN alice: no Auth needed
            self.assertOk(c.hset("orders", "c", 1))
            self.assertEqual(c.hset("pub", "c", 1).status, 403)
        with r.client(tls=tls_context(cert="bob")) as c:  # bob is no user
            self.assertEqual(c.hget("pub", "k").status, 401)
            self.assertOk(c.call(req_auth("reader", "reader-pw")))
            self.assertEqual(c.hget("pub", "c").status, 404)

    def test_clients_must_authenticate_within_auth_timeout(self):
        # A client nobody knows may not hold a connection slot for ever, not
        # even by pinging: limits.auth_timeout after its connection, it is
        # closed unless it authenticated.
        r = self.auth_router(tls=False, limits="auth_timeout: 1s")
        start = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", r.port), timeout=10)
        self.addCleanup(silent.close)
        pinger = r.client()
        self.addCleanup(pinger.close)
        user = self.authed(r, "ops")
        closed_after = None
        while time.monotonic() - start < 8:
            try:
                if pinger.ping().message != "PONG":
                    break
            except (EOFError, ConnectionError):
                closed_after = time.monotonic() - start
                break
            time.sleep(0.2)
        self.assertIsNotNone(closed_after, "a client that only pings was never closed")
        self.assertGreaterEqual(closed_after, 0.9)
        self.assertEqual(silent.recv(1), b"")  # closed as well, without a word
        time.sleep(1.5)
        self.assertOk(user.hset("orders", "k", 1))  # authenticated: spared
        self.assertIn("did not authenticate within limits.auth_timeout (1000 ms)", r.stderr())

    def test_a_client_that_does_not_read_cannot_outlive_auth_timeout(self):
        # One that has not authenticated and does not read its answers is
        # closed at limits.auth_timeout all the same: having its answers
        # pending when it hung up its sending side (the connection waits to
        # flush them, and nothing else would ever close it) is no way to
        # keep a connection slot.
        r = self.auth_router(tls=False, limits="auth_timeout: 1s")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing
        s.connect(("127.0.0.1", r.port))
        port = s.getsockname()[1]
        frame = req_hget("orders", "k").SerializeToString()
        s.sendall((struct.pack(">I", len(frame)) + frame) * 50000)  # 50000 401s: MiBs unread
        s.shutdown(socket.SHUT_WR)
        line = "closing client 127.0.0.1:%d: it did not authenticate" % port
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and line not in r.stderr():
            time.sleep(0.2)
        self.assertIn(line, r.stderr())

    def test_at_max_clients_unauthenticated_clients_make_room_for_new_ones(self):
        # Clients nobody knows, however many, never keep a user out: at
        # limits.max_clients the oldest of them is closed for a new client,
        # which keeps its place once it authenticates; when every client is
        # someone, new ones are refused as before.
        r = self.auth_router(tls=False, limits="max_clients: 4, auth_timeout: 60s")
        silent = [self.plain_socket(r) for _ in range(4)]
        time.sleep(0.3)  # all four accepted
        users = [self.authed(r, "ops")]  # in, in place of the oldest
        # a flood after it: closes the others and itself, not the user
        silent += [self.plain_socket(r) for _ in range(6)]
        time.sleep(0.3)
        self.assertOk(users[0].hset("orders", "k", 1))
        gone = sum(closed(s) for s in silent[:7])
        self.assertEqual(gone, 7)  # the 7 oldest of 10: 3 stay beside the user
        for _ in range(3):
            users.append(self.authed(r, "ops"))
        extra = self.plain_socket(r)
        got = b""
        while True:
            chunk = extra.recv(65536)
            if not chunk:
                break
            got += chunk
        resp = pb.CommandResponse()
        resp.ParseFromString(got[4:])
        self.assertEqual(resp.status, 503)
        self.assertIn("too many clients", resp.message)
        for c in users:
            self.assertOk(c.ping())
        req = pb.CommandRequest()
        req.metrics.SetInParent()
        m = users[0].call(req)
        self.assertOk(m)
        evicted = [smp.value for f in m.ops.metrics if f.name == "kvs_client_connections_evicted_total"
                   for smp in f.samples if list(smp.labels)[-2:] == ["protocol", "kvs"]]
        # 10, and the harness's readiness probe if the router had not yet
        # seen it go when the first four came
        self.assertIn(sum(evicted), (10, 11), r.stderr())
        self.assertIn("limits.max_clients reached, and it is the oldest of the clients that "
                      "have not authenticated", r.stderr())

    def slow_checks_router(self, check_ms):
        """A one-shard router at max_clients 20 whose every token check
        takes `check_ms` ms more (the test hook KVS_TEST_AUTH_CHECK_MS: a
        dear hash without its CPU, so the checks take as long under a
        sanitizer or on a loaded machine, and the decoy the router makes
        at start costs nothing)."""
        return self.router(shards=1, partitions=8,
                           extra_yaml=users_yaml(limits="max_clients: 20, auth_timeout: 60s"),
                           env={"KVS_TEST_AUTH_CHECK_MS": str(check_ms)})

    def test_auths_being_checked_do_not_stop_eviction(self):
        # At limits.max_clients a client whose token is being checked right
        # now is spared (two at most in a process), but not one whose Auth
        # is parked behind its own address's: otherwise one address that
        # keeps Auths waiting (one check at a time per address) would keep
        # every user out for as long as its checks took.
        # Every check takes a minute: the one being checked is still being
        # checked at the end (the test never waits for a check; the router
        # is killed at cleanup).
        r = self.slow_checks_router(60000)
        frame = req_auth("alice", "wrong").SerializeToString()
        # one checked, 16 waiting for it (one address, one check)
        checking = [self.plain_socket(r, struct.pack(">I", len(frame)) + frame) for _ in range(17)]
        silent = [self.plain_socket(r) for _ in range(3)]
        time.sleep(0.3)  # all 20 accepted, their Auths begun
        c = r.client()
        self.addCleanup(c.close)
        self.assertEqual(c.ping().message, "PONG")  # in
        try:  # in place of the oldest whose token is not being checked
            self.assertEqual(checking[1].recv(1), b"")
        except ConnectionResetError:
            pass
        for s in (checking[0], silent[0]):  # the one being checked, and younger ones: open
            s.setblocking(False)
            with self.assertRaises(BlockingIOError):
                s.recv(1)
        self.assertIn("limits.max_clients reached, and it is the oldest of the clients that "
                      "have not authenticated", r.stderr())

    def test_a_users_auth_queued_behind_a_flood_keeps_its_place(self):
        # A flood from many addresses, some sending wrong tokens, keeps the
        # two checks busy, and a user's first Auth (its token not yet
        # remembered) waits behind theirs. The user was closed to make room
        # for the flood's next connections before its turn came, at every
        # try: shut out. An Auth waiting its turn in the first lane (its
        # address failed nothing lately) is now spared like one being
        # checked; the flood's connections that sent nothing make room.
        # Every check takes 1.5 s, on a loaded machine too (a test hook).
        r = self.slow_checks_router(1500)
        frame = req_auth("alice", "wrong").SerializeToString()
        wrong = struct.pack(">I", len(frame)) + frame

        def from_addr(ip, first=b""):
            s = socket.socket()
            self.addCleanup(s.close)
            s.settimeout(10)
            s.bind((ip, 0))
            s.connect(("127.0.0.1", r.port))
            if first:
                s.sendall(first)
            return s

        for i in range(6):  # two checked, four waiting, each its own address
            from_addr("127.0.1.%d" % (i + 1), wrong)
        time.sleep(0.3)
        # Its turn comes after three rounds of the two checks (4.5 s; the
        # flood below takes well under 1 s, and the fifth connection past
        # max_clients closes it if it is not spared): wait for it as long
        # as it takes. Being shut out is seen at once (EOFError).
        user = r.client(timeout=180)
        self.addCleanup(user.close)
        user.send(req_auth("alice", USERS["alice"][0]))
        time.sleep(0.3)
        for i in range(40):  # plain connections, many more than max_clients
            from_addr("127.0.2.%d" % (i + 1))
            time.sleep(0.01)
        resp = user.recv()
        self.assertEqual(resp.status, 200, resp.message)
        self.assertOk(user.hset("orders", "k", 1))
        self.assertIn("limits.max_clients reached, and it is the oldest of the clients that "
                      "have not authenticated", r.stderr())

    def test_a_client_whose_auth_failed_is_the_first_to_make_room(self):
        # At limits.max_clients the client that presented a wrong token
        # goes before those that have not tried: a failed Auth must not
        # make a client younger than the ones that connected after it (a
        # flood could keep its connections by failing now and then).
        r = self.auth_router(tls=False, limits="max_clients: 4, auth_timeout: 60s")
        first = self.plain_socket(r)
        time.sleep(0.2)
        failed = r.client()
        self.addCleanup(failed.close)
        self.assertEqual(failed.call(req_auth("alice", "wrong")).status, 401)
        for _ in range(2):  # held open until the cleanup (plain_socket)
            self.plain_socket(r)
        time.sleep(0.3)  # all four accepted
        newer = r.client()
        self.addCleanup(newer.close)
        self.assertEqual(newer.ping().message, "PONG")
        self.assertTrue(failed.at_eof(), "the client whose Auth failed is still open")
        first.settimeout(0.5)
        with self.assertRaises(socket.timeout):
            first.recv(1)  # the oldest of those that did not try is still open

    def test_auth_timeout_needs_users(self):
        r = self.router(shards=1, partitions=8, extra_yaml="limits: {auth_timeout: 1s}\n")
        with r.client() as c:
            time.sleep(2.5)
            self.assertOk(c.hset("orders", "k", 1))

    def test_no_users_means_no_checks_and_auth_is_400(self):
        r = self.router(shards=1, partitions=8)
        with r.client() as c:
            self.assertOk(c.hset("orders", "k", 1))
            resp = c.call(req_auth("alice", "x"))
            self.assertEqual(resp.status, 400)
            self.assertIn("no users configured", resp.message)

    def test_cli_and_bench_authenticate(self):
        r = self.auth_router()
        ca = ["--tls", "--cacert", cert_path("ca.crt")]
        base = [CLI, "--port", str(r.port)] + ca
        p = subprocess.run(base + ["--user", "alice", "--token", "alice-pw", "hset", "orders",
                                   "x", "1"], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 0, p.stderr)
        env = dict(os.environ, KVS_TOKEN="alice-pw")
        p = subprocess.run(base + ["--user", "alice", "hget", "orders", "x"], env=env,
                           capture_output=True, timeout=10)
        self.assertEqual((p.returncode, p.stdout), (0, b'"1"\n'), p.stderr)
        p = subprocess.run(base + ["--user", "alice", "--token", "no", "ping"],
                           capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b'authentication as "alice" failed: 401 invalid user or token', p.stderr)
        p = subprocess.run(base + ["hset", "pub", "x", "1"], input=b"", capture_output=True,
                           timeout=10)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"401", p.stderr)
        p = subprocess.run(base, input=b"auth reader reader-pw\nhset pub y 1\nhget pub k\n",
                           capture_output=True, timeout=10)
        self.assertIn(b'authenticated as "reader"', p.stdout)
        self.assertIn(b"(error) 403", p.stderr)
        p = subprocess.run([BENCH, "-p", str(r.port), "-c", "4", "-n", "2000", "-P", "8", "-q",
                            "--table", "orders-bench", "--user", "alice", "--token", "alice-pw",
                            "-t", "hset,hget"] + ca, capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn(b"errors", p.stdout)
        p = subprocess.run([BENCH, "-p", str(r.port), "-c", "2", "-n", "10", "-q", "--user",
                            "alice", "--token", "bad"] + ca, capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b'authentication as "alice" failed', p.stderr)


class Flooders:
    """`clients` connections to `addr` that send and never read (a small
    receive buffer each): flood(data, seconds) sends `data` over and over
    on each, as fast as it is read; close() closes them."""

    def __init__(self, addr, clients=8):
        self.socks, self.sent = [], []
        try:
            for _ in range(clients):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.socks.append(s)
                self.sent.append(0)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(addr)
                s.setblocking(False)
        except OSError:
            self.close()
            raise

    def flood(self, data, seconds=3.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            moved = False
            for i, s in enumerate(self.socks):
                try:
                    self.sent[i] += s.send(data[self.sent[i] % len(data):])
                    moved = True
                except (BlockingIOError, ConnectionError):
                    continue  # not read now, or closed (limits.auth_timeout)
            if not moved:
                time.sleep(0.05)
        return list(self.sent)

    def close(self):
        for s in self.socks:
            s.close()


def wait_reloaded(proc_out, before, at_least):
    """Waits until `proc_out()` holds `at_least` more "configuration
    reloaded" lines than `before`."""
    deadline = time.monotonic() + 20
    while proc_out().count("configuration reloaded") < before + at_least:
        if time.monotonic() > deadline:
            raise AssertionError("no reload: " + proc_out()[-2000:])
        time.sleep(0.05)


class RespAuthTest(RouterTestCase):
    """The same users and rights through the Redis protocol listener."""

    def resp_router(self, tls=False):
        self.rport = free_port()
        extra = users_yaml()
        if tls:
            extra += tls_yaml(router={"enabled": "true"})
        return self.router(shards=2, partitions=8, extra_yaml=extra,
                           router_yaml=['resp_listen: "127.0.0.1:%d"' % self.rport],
                           tls=tls_context() if tls else None)

    def redis(self, **kw):
        c = redis.Redis(host="127.0.0.1", port=self.rport, socket_timeout=10, **kw)
        self.addCleanup(c.close)
        return c

    def raw(self, data, lines, end=None):
        """Sends `data` on a fresh connection; returns what came back once it
        holds `lines` lines, or ends with `end` if given."""
        return resp_exchange(self.rport, data, lines, end)

    def test_noauth_until_auth_then_rights_apply(self):
        self.resp_router()
        c = self.redis()
        for call in (c.ping, lambda: c.hget("orders", "k"), lambda: c.hset("orders", "k", 1),
                     c.info, lambda: c.execute_command("COMMAND", "COUNT")):
            with self.assertRaisesRegex(redis.exceptions.AuthenticationError,
                                        "Authentication required"):
                call()
        # (this redis-py raises WRONGPASS as a plain ResponseError, as for Redis)
        with self.assertRaisesRegex(redis.exceptions.ResponseError, "^WRONGPASS invalid "
                                    "username-password pair or user is disabled.$"):
            c.execute_command("AUTH", "alice", "wrong")
        with self.assertRaisesRegex(redis.exceptions.ResponseError, "WRONGPASS"):
            self.redis().execute_command("AUTH", "alice-pw")  # no user "default"
        self.assertTrue(c.execute_command("AUTH", "alice", "alice-pw"))
        self.assertTrue(c.ping())
        self.assertEqual(c.hset("orders", "k", "v"), 1)
        self.assertEqual(c.hget("orders", "k"), b"v")
        self.assertEqual(c.hincrby("orders-eu", "n", 5), 5)
        self.assertEqual(c.hlen("orders"), 1)
        with self.assertRaisesRegex(redis.exceptions.NoPermissionError,
                                    'user "alice" may not run Hset on table "pub": it needs '
                                    'write'):
            c.hset("pub", "k", "v")
        with self.assertRaisesRegex(redis.exceptions.NoPermissionError, "Hincr"):
            c.hincrby("pub", "n", 1)
        # A write-only user: counts of the fields it set or deleted, never
        # a value (HINCRBY, HINCRBYFLOAT answer one: they need read too).
        ops = self.redis(username="ops", password="ops-pw")
        ops.hset("wsecret", mapping={"k": "TOPSECRET", "n": 1234})
        w = self.redis(username="writer", password="writer-pw")
        self.assertEqual(w.hset("wsecret", mapping={"k": "x", "new": "y"}), 1)
        self.assertEqual(w.hsetnx("wsecret", "k", "z"), 0)
        self.assertEqual(w.hdel("wsecret", "new", "none"), 1)
        for call in (lambda: w.hincrby("wsecret", "n", 0),
                     lambda: w.hincrbyfloat("wsecret", "n", 0), lambda: w.hget("wsecret", "k"),
                     lambda: w.hstrlen("wsecret", "k")):
            with self.assertRaisesRegex(redis.exceptions.NoPermissionError, "needs read"):
                call()
        self.assertEqual(ops.hgetall("wsecret"), {b"k": b"x", b"n": b"1234"})
        with self.assertRaisesRegex(redis.exceptions.NoPermissionError, "Hget"):
            c.hget("secret", "k")
        with self.assertRaisesRegex(redis.exceptions.NoPermissionError, 'needs admin on "\\*"'):
            c.info()
        # A failed AUTH keeps the user it had.
        with self.assertRaisesRegex(redis.exceptions.ResponseError, "WRONGPASS"):
            c.execute_command("AUTH", "ops", "wrong")
        self.assertEqual(c.hget("orders", "k"), b"v")
        # redis-py's own username/password: AUTH on every new connection.
        ops = self.redis(username="ops", password="ops-pw")
        self.assertIn("redis_version", ops.info())
        self.assertEqual(ops.hget("orders", "k"), b"v")
        bad = self.redis(username="ops", password="nope")
        with self.assertRaisesRegex(redis.exceptions.RedisError, "WRONGPASS|Invalid"):
            bad.ping()

    def test_a_table_bound_with_format_string_is_named_only_to_its_writers(self):
        """HSET of bytes that are not UTF-8 to a table bound with format:
        string is refused naming the table's topic and format; that refusal
        came before the user's rights were checked, so a user who may not
        touch the table learnt its binding. Such a user gets NOPERM, as for
        any other value; a writer still gets the format's error."""
        self.rport = free_port()
        kafka = ("kafka:\n  brokers: \"127.0.0.1:%d\"\n  bindings:\n"
                 "    - {topic: hiddentopic, table: secretbound, format: string, "
                 "partitions: 2}\n" % free_port())
        self.router(shards=2, partitions=8, extra_yaml=users_yaml() + kafka,
                    router_yaml=['resp_listen: "127.0.0.1:%d"' % self.rport])
        alice = self.redis(username="alice", password="alice-pw")
        for call in (lambda: alice.hset("secretbound", "k", b"\xff"),
                     lambda: alice.hsetnx("secretbound", "k", b"\xff"),
                     lambda: alice.hset("secretbound", mapping={"k": "ok", "k2": b"\xff"}),
                     lambda: alice.execute_command("HMSET", "secretbound", "k", b"\xff")):
            with self.assertRaises(redis.exceptions.NoPermissionError) as e:
                call()
            self.assertIn('user "alice" may not run', str(e.exception))
            self.assertNotIn("hiddentopic", str(e.exception))
        ops = self.redis(username="ops", password="ops-pw")
        with self.assertRaisesRegex(redis.exceptions.ResponseError,
                                    "value 1 is not UTF-8 text, but table 'secretbound' is bound "
                                    "to topic hiddentopic with format: string"):
            ops.hset("secretbound", "k", b"\xff")

    def test_large_requests_wait_for_auth(self):
        self.resp_router()
        big = b"*4\r\n$4\r\nHSET\r\n$6\r\norders\r\n$1\r\nf\r\n$20000\r\n" + b"v" * 20000 + b"\r\n"
        got = self.raw(big, 1)
        self.assertEqual(got, b"-NOAUTH a client that has not authenticated may send requests of "
                              b"at most 16384 bytes: authenticate first (AUTH, or HELLO with "
                              b"AUTH); the connection is closed\r\n")
        got = self.raw(b"AUTH ops ops-pw\r\n" + big, 2)
        self.assertEqual(got, b"+OK\r\n:1\r\n")
        # An inline request too (Redis bounds those at 64 KiB), ended or
        # not: it was read whole, up to 64 KiB, and answered NOAUTH.
        for data in (b"HSET orders f " + b"v" * 20000 + b"\r\n", b"A" * 20000):
            got = self.raw(data, 1)
            self.assertTrue(got.startswith(b"-NOAUTH a client that has not authenticated may "
                                           b"send requests of at most 16384 bytes"), got[:200])

    def test_a_client_that_does_not_read_holds_little_output_before_auth(self):
        """Clients that have not authenticated, pipelining commands and
        never reading the NOAUTH errors, each made the router hold up to
        limits.client_output / 4 (16 MiB) of them until auth_timeout: 20
        such clients took ~350 MB. Until a client authenticates, its
        requests stop being read at 64 KiB of answers waiting. After AUTH
        a pipeline's answers may pile up as any user's do."""
        r = self.resp_router()
        pid = router_pids(r)[0]
        base = status_kib(pid, "RssAnon")
        f = Flooders(("127.0.0.1", self.rport))
        self.addCleanup(f.close)
        # and a live reload keeps the cap on the clients already there
        for reload in (False, True):
            if reload:
                before = r.stderr().count("configuration reloaded")
                r.proc.send_signal(signal.SIGHUP)
                wait_reloaded(r.stderr, before, 2)  # the master and the router process
            sent = f.flood(b"HGET orders k\r\n" * 65536)
            grown = (status_kib(pid, "RssAnon") - base) * 1024
            # (what the clients sent is mostly in the kernel's socket buffers)
            if not SANITIZED:
                self.assertLess(grown, 8 << 20, "%.1f MiB for 8 clients that sent %s bytes%s"
                                % (grown / (1 << 20), sent, " (reloaded)" if reload else ""))
        # A pipeline after AUTH: its answers pile up past 64 KiB and all come.
        n = 20000
        got = self.raw(b"AUTH ops ops-pw\r\n" + b"HGET orders nosuch\r\n" * n, n + 1)
        self.assertEqual(got, b"+OK\r\n" + b"$-1\r\n" * n)

    def test_auth_in_a_pipeline_applies_to_what_follows(self):
        self.resp_router()
        got = self.raw(b"HSET orders p 1\r\nAUTH alice alice-pw\r\nHSET orders p 2\r\n"
                       b"AUTH alice nope\r\nHGET orders p\r\nHSET pub p 1\r\n", 7)
        self.assertEqual(got.split(b"\r\n")[:5],
                         [b"-NOAUTH Authentication required.", b"+OK", b":1",
                          b"-WRONGPASS invalid username-password pair or user is disabled.",
                          b"$1"])
        self.assertIn(b"-NOPERM user \"alice\" may not run Hset on table \"pub\"", got)

    def test_hscan_rights_come_before_its_cursor(self):
        """HSCAN looked its cursor up before the rights check: a user
        without rights on a table got "invalid cursor" for every number
        but the one another user's walk of it held, which got NOPERM
        (cursor numbers are handed out in turn, so a user's own walk
        shows which are near). So whether a table exists and is being
        walked was there to find out. Every cursor on a table the user
        may not read is NOPERM now."""
        self.resp_router()
        ops = self.redis(username="ops", password="ops-pw")
        ops.hset("secret", mapping={"f%03d" % i: "v" for i in range(300)})
        cur, page = ops.hscan("secret", 0, count=10)
        self.assertNotEqual(cur, 0)
        alice = self.redis(username="alice", password="alice-pw")
        alice.hset("orders1", mapping={"f%03d" % i: "v" for i in range(300)})
        own, _ = alice.hscan("orders1", 0, count=10)
        self.assertNotEqual(own, 0)
        for c in (cur, cur + 1, own, 12345, 0):
            with self.assertRaisesRegex(redis.exceptions.NoPermissionError,
                                        'user "alice" may not run Hscan on table "secret"'):
                alice.hscan("secret", c)
        # ... and for a table nobody walks or that does not exist
        for t in ("payroll", "secret-2"):
            with self.assertRaisesRegex(redis.exceptions.NoPermissionError, t):
                alice.hscan(t, cur)
        # a user with rights still continues the walk
        self.assertTrue(ops.hscan("secret", cur, count=10)[1])

    def test_del_of_several_keys_is_all_or_nothing_on_rights(self):
        # alice may write orders*, not pub: a DEL naming both deletes
        # nothing; an EXISTS needs read on every key.
        self.resp_router()
        got = self.raw(b"AUTH ops ops-pw\r\nHSET pub f 1\r\nHSET orders-1 f 1\r\n"
                       b"AUTH alice alice-pw\r\nDEL orders-1 pub\r\nEXISTS orders-1 pub\r\n"
                       b"EXISTS orders-1 other\r\nDEL orders-1 orders-2\r\n"
                       b"EXISTS orders-1 pub\r\n", 9)
        self.assertEqual(got.split(b"\r\n")[:9],
                         [b"+OK", b":1", b":1", b"+OK",
                          b"-NOPERM user \"alice\" may not run Hclear on table \"pub\": it "
                          b"needs write", b":2",
                          b"-NOPERM user \"alice\" may not run Hlen on table \"other\": it "
                          b"needs read", b":1", b":1"])

    def test_hello_auth_switches_protocol_only_when_it_succeeds(self):
        self.resp_router()
        got = self.raw(b"HELLO 3\r\n", 1)
        self.assertTrue(got.startswith(b"-NOAUTH HELLO must be called with the client already "
                                       b"authenticated"), got)
        got = self.raw(b"HELLO 3 AUTH reader nope SETNAME x\r\nCLIENT GETNAME\r\n"
                       b"AUTH reader reader-pw\r\nCLIENT GETNAME\r\n"
                       b"HELLO 3 AUTH reader reader-pw SETNAME rdr\r\nCLIENT GETNAME\r\n"
                       b"HGET pub missing\r\n", 0, end=b"_\r\n")
        lines = got.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-WRONGPASS"), got)
        self.assertEqual(lines[1], b"-NOAUTH Authentication required.")
        self.assertEqual(lines[2], b"+OK")
        self.assertEqual(lines[3], b"$-1")  # the failed HELLO set no name, kept RESP2
        self.assertEqual(lines[4], b"%7")  # RESP3 from here on
        self.assertIn(b"$5\r\nproto\r\n:3\r\n", got)
        self.assertIn(b"$3\r\nrdr\r\n", got)
        self.assertTrue(got.endswith(b"_\r\n"), got)  # RESP3 null for a missing field

    def test_a_pipelined_hello_auth_holds_for_the_commands_after_it(self):
        # As in Redis, a HELLO ... AUTH that passes switches the protocol
        # and the name for every command read after it, whenever its reply
        # is written; one that fails changes nothing. Here the commands
        # before it wait for stopped workers, so the router reads the rest
        # long before it writes the HELLO's reply: the protocol and name
        # were applied only then, so the commands read meanwhile answered
        # in RESP2, and a second, failing HELLO's name was taken.
        r = self.resp_router()
        s = socket.create_connection(("127.0.0.1", self.rport), timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"AUTH ops ops-pw\r\n")
        self.assertEqual(s.recv(100), b"+OK\r\n")
        with stopped(*r.workers().values()):
            s.sendall(b"HSET orders a 2\r\nHELLO 3 AUTH ops ops-pw SETNAME good\r\n"
                      b"HGETALL orders\r\nCLIENT GETNAME\r\n"
                      b"HELLO 2 AUTH ops wrong SETNAME bad\r\nCLIENT GETNAME\r\n"
                      b"HGETALL orders\r\nHGET orders missing\r\n")
            time.sleep(0.5)  # the router reads all of it while the HSET waits
        got = b""
        while not got.endswith(b"_\r\n"):
            chunk = s.recv(65536)
            self.assertTrue(chunk, got)
            got += chunk
        self.assertTrue(got.startswith(b":1\r\n%7\r\n"), got)
        self.assertIn(b"$5\r\nproto\r\n:3\r\n", got)
        rest = got[got.index(b"$7\r\nmodules\r\n*0\r\n") + 17:]
        self.assertEqual(rest, b"%1\r\n$1\r\na\r\n$1\r\n2\r\n$4\r\ngood\r\n"
                               b"-WRONGPASS invalid username-password pair or user is disabled."
                               b"\r\n$4\r\ngood\r\n%1\r\n$1\r\na\r\n$1\r\n2\r\n_\r\n")

    def test_redis_cli_over_tls_with_user_and_password(self):
        self.resp_router(tls=True)
        base = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.rport), "--tls", "--cacert",
                cert_path("ca.crt"), "--no-auth-warning"]
        p = subprocess.run(base + ["--user", "alice", "--pass", "alice-pw", "hset", "orders",
                                   "t", "1"], capture_output=True, timeout=20)
        self.assertEqual(p.stdout, b"1\n", p.stderr)
        p = subprocess.run(base + ["--user", "reader", "--pass", "reader-pw", "hget", "orders",
                                   "t"], capture_output=True, timeout=20)
        self.assertEqual(p.stdout, b"1\n", p.stderr)
        p = subprocess.run(base + ["--user", "reader", "--pass", "reader-pw", "hset", "orders",
                                   "t", "2"], capture_output=True, timeout=20)
        self.assertIn(b"NOPERM", p.stdout + p.stderr)
        p = subprocess.run(base + ["hget", "orders", "t"], capture_output=True, timeout=20)
        self.assertIn(b"NOAUTH", p.stdout + p.stderr)
        # A plaintext client on the TLS port is told so, in plaintext.
        got = self.raw(b"PING\r\n", 1)
        self.assertEqual(got, b"-ERR this port requires TLS (tls.router); connect with TLS "
                              b"(redis-cli --tls)\r\n")


class AuthNodeTest(NodeTestCase):
    def test_worker_authorizes_its_tcp_clients(self):
        n = self.node(extra_yaml=users_yaml() + tls_yaml(node={"enabled": "true"}),
                      tls=tls_context(cert="alice"))
        with n.client() as c:  # alice by certificate
            self.assertOk(c.hset("orders", "k", 1))
            self.assertEqual(c.hset("pub", "k", 1).status, 403)
            self.assertEqual(c.call(req_info()).status, 403)
        with Client(n.addr, tls=tls_context(cert="bob")) as c:  # a valid cert, but no user
            self.assertEqual(c.hget("orders", "k").status, 401)
            resp = c.call(req_auth("ops", "ops-pw"))
            self.assertEqual(resp.status, 200, resp.message)
            self.assertOk(c.call(req_info()))
        with n.client(unix=True) as c:  # the local router's way in: trusted
            self.assertOk(c.hset("pub", "k", 2))

    def test_a_worker_shows_a_write_only_user_no_stored_value(self):
        n = self.node(extra_yaml=users_yaml() + tls_yaml(node={"enabled": "true"}),
                      tls=tls_context(cert="bob"))  # a valid certificate that names no user
        with n.client() as c, n.client(unix=True) as seed:
            self.assertOk(c.call(req_auth("writer", "writer-pw")))
            check_write_only(self, c, seed)


    def test_a_worker_closes_clients_that_do_not_authenticate(self):
        n = self.node(extra_yaml=users_yaml(limits="auth_timeout: 1s") +
                      tls_yaml(node={"enabled": "true"}),
                      tls=tls_context(cert="bob"))  # a valid certificate that names no user
        with n.client() as nobody, Client(n.addr, tls=tls_context(cert="alice")) as alice:
            self.assertOk(alice.hset("orders", "k", 1))
            start = time.monotonic()
            self.assertTrue(nobody.at_eof())  # waits for the close (or the socket's timeout)
            self.assertGreaterEqual(time.monotonic() - start, 0.5)
            self.assertOk(alice.hget("orders", "k"))  # a user by certificate: spared

    def test_a_worker_at_max_clients_makes_room_for_users(self):
        # A worker's TCP listener (clients and remote routers that connect
        # to workers directly) takes the router's policy: at
        # limits.max_clients the oldest client that has not authenticated
        # is closed for a new one, which keeps its place once it has.
        n = self.node(extra_yaml=users_yaml(limits="max_clients: 4, auth_timeout: 60s"))

        def silent_socket():
            s = socket.create_connection(n.addr, timeout=10)
            self.addCleanup(s.close)
            return s

        silent = [silent_socket() for _ in range(4)]
        time.sleep(0.3)  # all four accepted
        user = n.client()
        self.addCleanup(user.close)
        resp = user.call(req_auth("ops", "ops-pw"))  # in, in place of the oldest
        self.assertEqual(resp.status, 200, resp.message)
        silent += [silent_socket() for _ in range(6)]  # a flood after it
        time.sleep(0.3)
        self.assertOk(user.hset("orders", "k", 1))
        gone = sum(closed(s) for s in silent[:7])
        self.assertEqual(gone, 7)  # the 7 oldest of 10: 3 stay beside the user
        req = pb.CommandRequest()
        req.metrics.SetInParent()
        m = user.call(req)
        self.assertOk(m)
        evicted = [smp.value for f in m.ops.metrics
                   if f.name == "kvs_worker_connections_evicted_total" for smp in f.samples]
        # 7, and the harness's readiness probe if the worker had not yet
        # seen it go when the first four came
        self.assertIn(sum(evicted), (7, 8), n.stderr())
        self.assertIn("limits.max_clients reached, and it is the oldest of the clients that "
                      "have not authenticated", n.stderr())

    def test_a_flood_of_handshakes_at_max_clients_does_not_keep_peers_out_of_a_worker(self):
        """A worker's TCP listener is where other nodes' routers link in:
        at limits.max_clients, connections that never finish their TLS
        handshake (nor authenticate) make room for a new client, the
        oldest first, as at a router process; authenticated ones stay."""
        n = self.node(extra_yaml=users_yaml(limits="max_clients: 4") +
                      tls_yaml(node={"enabled": "true"}),
                      tls=tls_context(cert="alice"))
        time.sleep(0.3)  # the start's probe connection has closed
        with n.client() as first:  # alice by certificate: never evicted
            self.assertOk(first.hset("orders", "k", 1))
            flood = [socket.create_connection(n.addr, timeout=10) for _ in range(3)]
            for s in flood:
                self.addCleanup(s.close)
            time.sleep(0.3)  # accepted: the listener is at its 4
            with n.client() as c:  # the oldest silent connection makes room
                self.assertOk(c.hget("orders", "k"))
                self.assertTrue(closed(flood[0]))
                self.assertOk(first.hget("orders", "k"))
            # bob's certificate names no user: unproven, younger than the flood
            with Client(n.addr, tls=tls_context(cert="bob")) as bob:
                self.assertEqual(bob.ping().message, "PONG")
                with n.client() as c2, n.client() as c3:  # flood[1] then flood[2] go
                    self.assertOk(c2.hget("orders", "k"))
                    self.assertOk(c3.hget("orders", "k"))
                    self.assertTrue(closed(flood[1]) and closed(flood[2]))
                    self.assertEqual(bob.ping().message, "PONG")
                    with n.client() as c4:  # then bob
                        self.assertOk(c4.hget("orders", "k"))
                        self.assertTrue(bob.at_eof())
            self.assertOk(first.hget("orders", "k"))
            # A client whose Auth failed is the first to make room.
            flood = [socket.create_connection(n.addr, timeout=10) for _ in range(2)]
            for s in flood:
                self.addCleanup(s.close)
            with Client(n.addr, tls=tls_context(cert="bob")) as bob:
                self.assertEqual(bob.call(req_auth("ops", "wrong")).status, 401)
                with n.client() as c:
                    self.assertOk(c.hget("orders", "k"))
                    self.assertTrue(bob.at_eof())
        self.assertIn("limits.max_clients reached, and it is the oldest of the clients that "
                      "have not authenticated", n.stderr())

    def test_a_client_that_does_not_read_holds_little_output_before_auth(self):
        """As at the router: until a client of a worker's TCP port
        authenticates, its requests stop being read at 64 KiB of answers
        waiting, not limits.client_output / 4."""
        n = self.node(extra_yaml=users_yaml() + tls_yaml(node={"enabled": "false"}))
        base = status_kib(n.pid, "RssAnon")
        f = Flooders(n.addr)
        self.addCleanup(f.close)
        for reload in (False, True):
            if reload:
                before = n.stderr().count("configuration reloaded")
                n.proc.send_signal(signal.SIGHUP)
                wait_reloaded(n.stderr, before, 1)
            sent = f.flood(frame(req_hget("orders", "k").SerializeToString()) * 32768)
            grown = (status_kib(n.pid, "RssAnon") - base) * 1024
            if not SANITIZED:
                self.assertLess(grown, 8 << 20, "%.1f MiB for 8 clients that sent %s bytes%s"
                                % (grown / (1 << 20), sent, " (reloaded)" if reload else ""))

    def test_a_worker_takes_only_small_frames_before_auth(self):
        n = self.node(extra_yaml=users_yaml() + tls_yaml(node={"enabled": "true"}),
                      tls=tls_context(cert="bob"))  # a valid certificate that names no user
        with n.client() as c:
            c.send_raw(struct.pack(">I", 100000) + b"\0" * 1000)
            resp = c.recv()
            self.assertEqual(resp.status, 401, resp.message)
            self.assertIn("frame of 100000 bytes from a client that has not authenticated",
                          resp.message)
            self.assertTrue(c.at_eof())
        with n.client() as c:  # Auth first, pipelined with a large request: taken
            got = c.pipeline([req_auth("ops", "ops-pw"), req_hset("t", "big", b"x" * 100000)])
            self.assertEqual([x.status for x in got], [200, 200], got[-1].message)
        with Client(n.addr, tls=tls_context(cert="alice")) as c:  # a user by certificate
            self.assertOk(c.hset("orders", "big", b"x" * 100000))


class AuthClusterTest(RouterTestCase):
    def test_routers_authenticate_to_remote_workers_by_certificate(self):
        base_a, base_b = free_port_range(2), None
        for _ in range(20):
            base_b = free_port_range(2)
            if abs(base_a - base_b) >= 2:
                break
        both = {"enabled": "true"}
        common = dict(shards=2, partitions=8, start=False, tls=tls_context())
        rt = {"enabled": "true"}
        a = self.router(name="A", node_listen="127.0.0.1:%d" % base_a,
                        remote={1: "127.0.0.1:%d" % (base_b + 1)},
                        extra_yaml=users_yaml() + tls_yaml(router=rt, node=both, link=both),
                        **common)
        # B's certificate (kvs-node-b) is no user on A: its link is refused 401.
        b = self.router(name="B", node_listen="127.0.0.1:%d" % base_b,
                        remote={0: "127.0.0.1:%d" % base_a},
                        extra_yaml=users_yaml() + tls_yaml(router=rt, node=both, link=both,
                                                           cert="node2"), **common)
        a.start()
        b.start()
        per = keys_by_shard("k", 1, 8, 2)
        k0, k1 = per[0][0], per[1][0]
        with a.client() as ca:
            self.assertOk(ca.call(req_auth("ops", "ops-pw")))
            deadline = time.monotonic() + 10
            while ca.call(req_hset("t", k1, 1)).status != 200 and time.monotonic() < deadline:
                time.sleep(0.05)  # A's link (CN kvs-node, a user) to B's worker 1
            self.assertOk(ca.call(req_hset("t", k1, 1)))
        with b.client() as cb:
            self.assertOk(cb.call(req_auth("ops", "ops-pw")))
            deadline = time.monotonic() + 10
            resp = cb.call(req_hget("t", k0))
            while resp.status == 503 and time.monotonic() < deadline:
                time.sleep(0.05)
                resp = cb.call(req_hget("t", k0))
            self.assertEqual(resp.status, 401, resp.message)  # the worker refused B's router
            self.assertOk(cb.call(req_hget("t", k1)))  # its own shard is fine
        self.assertEqual(a.stop(), 0)
        self.assertEqual(b.stop(), 0)

