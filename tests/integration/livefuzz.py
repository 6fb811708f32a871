"""The live fuzzer's engine: hostile and valid traffic against a running
kvs-router (with its workers), and the oracle that judges what came back.

test_live_fuzz.py starts the nodes and calls run(); everything random here
comes from random.Random(seed) objects, one per client thread, so a seed
names the traffic (not its interleaving: the threads race, as clients do).

Client threads:
- Owner: protobuf, valid requests. Each owner alone writes its own table
  (own_<n>) and its own keys of the Kafka-bound table (kb, keys o<n>_...),
  so a shadow model predicts every answer there exactly (previous values,
  404s, 413s near limits.max_frame, 207s of split writes); its pipelines
  also carry valid requests of every command on shared tables, with edge
  sizes and counts, whose statuses must be sane.
- Mutator: protobuf frames made from valid requests with their bytes
  mutated (bit flips, truncation, inserted, duplicated and unknown fields,
  wrong wire types, repeated oneofs, varint overflows, lengths past the
  message), each answered with a sane status or a close after an error;
  sometimes a last frame with a lying header.
- Resp: Redis commands of random arity and arguments, pipelined (one
  well-formed reply each), and mutated RESP streams (replies must still
  parse).
- Resp owner: HSET/HGET/HDEL/HMGET/HINCRBY/DEL pipelines on its own unbound
  table (own_r<n>), every reply predicted exactly (Redis's integer rules
  for HINCRBY, README's RESP Values).
- Abuser: closes mid-frame, half-closes (every answer still comes, then
  EOF), clients that stop reading, slow drips, connect-and-leave.

Ctx.flaky (brokers in trouble, a worker killed) makes 503s expected: the
owners' model of a bound table then follows README's log-first writes
(kafka_503), and reads of it may be refused for a while. Ctx.key_filter
narrows the owners' keys (a worker's own listener: its shard's keys).

Nothing a mutator, Resp or abuser thread sends can name an own_ table or
an o<n>_ key of kb (their tables and keys are others, and a single bit
flip cannot turn one into the other), so the shadow model stays exact.
"""
import collections
import os
import random
import re
import socket
import ssl
import struct
import threading
import time

from kvstest import COMPRESSED, pb, pyval, value

# ---- findings -------------------------------------------------------------------------


class Findings:
    """What the oracle objects to, collected from every thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []
        self.stats = {}

    def add(self, where, what):
        with self.lock:
            if len(self.items) < 200:
                self.items.append("%s: %s" % (where, what))

    def count(self, key, n=1):
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + n


# ---- raw protobuf -----------------------------------------------------------------------


def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field, wt):
    return varint((field << 3) | wt)


def ld(field, data):
    return tag(field, 2) + varint(len(data)) + data


def read_varint(b, i):
    n = shift = 0
    while i < len(b):
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i
    raise ValueError("truncated varint")


def split_fields(b):
    """Top-level fields of an encoded message as [(start, end)], or None if
    it does not parse."""
    out, i = [], 0
    try:
        while i < len(b):
            start = i
            key, i = read_varint(b, i)
            wt = key & 7
            if wt == 0:
                _, i = read_varint(b, i)
            elif wt == 1:
                i += 8
            elif wt == 2:
                n, i = read_varint(b, i)
                i += n
            elif wt == 5:
                i += 4
            else:
                return None
            if i > len(b):
                return None
            out.append((start, i))
    except ValueError:
        return None
    return out


def random_field(rng):
    """One field of a random number and wire type with random content."""
    field = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                        21, 99, 100, 101, 102, 103, 536870911, rng.randrange(1, 1 << 29)])
    wt = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
    if wt == 0:
        return tag(field, 0) + rng.choice([varint(rng.randrange(1 << 64)), b"\xff" * 10 + b"\x01",
                                           b"\x80" * rng.randrange(1, 12), b"\x00"])
    if wt == 1:
        return tag(field, 1) + bytes(rng.randrange(256) for _ in range(8))
    if wt == 2:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 24)))
        return tag(field, 2) + varint(len(data) + rng.choice([0, 0, 0, 1, 7, 1 << 20, 1 << 31,
                                                              (1 << 64) - 1])) + data
    if wt == 5:
        return tag(field, 5) + bytes(rng.randrange(256) for _ in range(4))
    return tag(field, wt)  # groups (3, 4) and the reserved 6 and 7


def mutate(rng, data, whole_fields=None):
    """A mutated copy of encoded message `data`."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.randrange(12)
        if op == 0 and b:  # bit flips
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # truncation
            del b[rng.randrange(len(b)):]
        elif op == 2:  # inserted random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif op == 3 and b:  # duplicated slice
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.randrange(1, 32))
            k = rng.randrange(len(b) + 1)
            b[k:k] = b[i:j]
        elif op == 4:  # a random field (unknown number, wrong wire type...)
            i = rng.choice([0, len(b)])
            b[i:i] = random_field(rng)
        elif op == 5:  # a whole top-level field repeated (repeated oneof, merged command)
            fields = split_fields(bytes(b))
            if fields:
                s, e = rng.choice(fields)
                b += b[s:e] * rng.randrange(1, 4)
        elif op == 6 and whole_fields:  # another command appended: two members of the oneof
            b += rng.choice(whole_fields)
        elif op == 7:  # a length past the message
            fields = split_fields(bytes(b))
            if fields:
                s, e = rng.choice(fields)
                key, i = read_varint(b, s)
                if key & 7 == 2:
                    n, j = read_varint(b, i)
                    b[i:j] = varint(n + rng.choice([1, 100, 1 << 24, (1 << 32) + 1, (1 << 63)]))
        elif op == 8:  # varint overflow in place of a varint field's value
            fields = split_fields(bytes(b))
            if fields:
                s, e = rng.choice(fields)
                key, i = read_varint(b, s)
                b[i:e] = b"\xff" * rng.randrange(10, 14) + b"\x01"
        elif op == 9 and b:  # a byte set to a boundary value
            b[rng.randrange(len(b))] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        elif op == 10:  # mutate inside a nested message: rebuild one ld field
            fields = split_fields(bytes(b))
            if fields:
                s, e = rng.choice(fields)
                key, i = read_varint(b, s)
                if key & 7 == 2:
                    n, j = read_varint(b, i)
                    inner = mutate(rng, bytes(b[j:j + n]))
                    b[s:e] = varint(key) + varint(len(inner)) + inner
        elif op == 11:  # a wire type changed on an existing field
            fields = split_fields(bytes(b))
            if fields:
                s, e = rng.choice(fields)
                key, i = read_varint(b, s)
                b[s:i] = varint((key & ~7) | rng.choice([0, 1, 2, 5]))
    return bytes(b)


# ---- values, keys, tables --------------------------------------------------------------

UNICODE = "aZ09 \x00\t\u00e9\u4e2d\U0001F600\u200b\ufeff"


def rand_text(rng, n):
    return "".join(rng.choice(UNICODE) for _ in range(n))


def rand_value(rng, big=0):
    """A random Python value for value(); big: a size in bytes to aim for."""
    if big:
        return rng.choice([b"\xab" * big, "s" * big])
    k = rng.randrange(9)
    if k == 0:
        return rng.choice([0, 1, -1, 2**63 - 1, -2**63, rng.randrange(-2**63, 2**63)])
    if k == 1:
        return rng.choice([0.0, -0.0, 1.5, 1e308, -1e-308, 5e-324, rng.uniform(-1e9, 1e9)])
    if k == 2:
        return rng.choice([True, False])
    if k in (3, 4):
        return rand_text(rng, rng.randrange(0, 40))
    if k == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
    if k == 6:
        return rng.choice(["", b"", "x" * rng.randrange(100, 5000)])
    if k == 7:
        return rng.randrange(-1000, 1000)
    return "v%d" % rng.randrange(1000)


def rand_key(rng, prefix=b"s"):
    """A key for a shared table: edge lengths (0, 1, 511, 512, long) too."""
    k = rng.randrange(12)
    if k == 0:
        return b""
    if k == 1:
        return bytes([rng.randrange(256)])
    if k == 2:
        return prefix + b"x" * (510 - len(prefix)) + bytes([rng.randrange(256)])  # 511
    if k == 3:
        return prefix + b"y" * rng.choice([511, 512, 600, 4096])
    if k == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))
    if k == 5:
        return b"\x00" * rng.randrange(1, 4)
    return prefix + b"%d" % rng.randrange(64)


SHARED_TABLES = ["fz", "fz1", "kb", "ro", "pub"]


def rand_table(rng, tables):
    k = rng.randrange(14)
    if k == 0:
        return ""
    if k == 1:
        return "__kvs"
    if k == 2:
        return "t" * rng.choice([200, 201, 1000])
    if k == 3:
        return rand_text(rng, rng.randrange(1, 8))
    if k == 4:
        return "fz\u00e9\u4e2d"
    return rng.choice(tables)


# ---- request builders -------------------------------------------------------------------


def req(**kw):
    return pb.CommandRequest(**kw)


def pair(k, v):
    return pb.Kvpair(key=k, value=value(v))


def auth_req(user, token):
    return req(auth=pb.Auth(user=user, token=token))


def gen_shared(rng, ctx):
    """A valid (well-encoded) request of any command, on shared tables, with
    edge sizes and counts. Returns (request, table or None)."""
    t = rand_table(rng, ctx.tables)
    c = rng.randrange(23)
    mf = ctx.max_frame
    if c == 0:
        r = req(hget=pb.Hget(table=t, key=rand_key(rng)))
    elif c == 1:
        r = req(hgetall=pb.Hgetall(table=t, keys_only=rng.random() < 0.5))
    elif c in (2, 3):
        n = rng.choice([0, 1, 2, 10, 300, ctx.max_keys, ctx.max_keys + 1])
        keys = [rand_key(rng) if rng.random() < 0.05 else b"s%d" % rng.randrange(5000)
                for _ in range(n)]
        if c == 2:
            r = req(hmget=pb.Hmget(table=t, keys=keys))
        else:
            r = req(hmexist=pb.Hmexist(table=t, keys=keys))
    elif c == 4:
        big = rng.choice([0, 0, 0, mf - 600 - rng.randrange(0, 64), mf - 575, mf // 3])
        r = req(hset=pb.Hset(table=t, pair=pair(rand_key(rng), rand_value(rng, big)),
                             if_absent=rng.random() < 0.2))
    elif c == 5:
        n = rng.choice([0, 1, 2, 5, 50, 400, ctx.max_keys + 1])
        big = rng.choice([0, 0, mf // 4, mf // 2])
        pairs = [pair(b"s%d" % rng.randrange(5000) if rng.random() < 0.9 else rand_key(rng),
                      rand_value(rng, big if i < 3 else 0)) for i in range(n)]
        r = req(hmset=pb.Hmset(table=t, pairs=pairs,
                               answer_budget=rng.choice([0, 0, 1, 64, 1000, mf, 2**32 - 1])))
    elif c == 6:
        r = req(hdel=pb.Hdel(table=t, key=rand_key(rng)))
    elif c == 7:
        n = rng.choice([0, 1, 3, 200, ctx.max_keys + 1])
        r = req(hmdel=pb.Hmdel(table=t, keys=[b"s%d" % rng.randrange(5000) for _ in range(n)],
                               answer_budget=rng.choice([0, 0, 1, 100, 2**32 - 1])))
    elif c == 8:
        r = req(hexist=pb.Hexist(table=t, key=rand_key(rng)))
    elif c == 9:
        cursor = rng.choice([b"", b"", b"\x00", b"\x01s1", b"\xff" * 9,
                             bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))])
        r = req(hscan=pb.Hscan(table=t, cursor=cursor,
                               count=rng.choice([0, 1, 100, 10000, 10001, 2**32 - 1])))
    elif c == 10:
        r = req(ping=pb.Ping())
    elif c == 11:
        r = req(info=pb.Info())
    elif c == 12:
        u = rng.choice(ctx.users or [("nobody", "x")])
        r = auth_req(u[0], u[1] if rng.random() < 0.7 else "wrong")
    elif c == 13:
        h = pb.Hincr(table=t, key=rand_key(rng))
        if rng.random() < 0.5:
            h.by_int = rng.choice([1, -1, 2**63 - 1, -2**63, 0])
        elif rng.random() < 0.5:
            h.by_float = rng.choice([0.5, float("inf"), float("nan"), -1e308, 1e-300])
        else:  # the Redis door's increment, sent directly: Redis's string2ld rules
            h.by_decimal = rng.choice(["0.1", "-0", "1e4932", "1e-4950", "0x1p-16445", "inf",
                                       "nan", " 1", "", "1" * 5119, "9" * 70000,
                                       "0." + "0" * 5117 + "1", "é", "1e400"])
        r = req(hincr=h)
    elif c == 14:
        r = req(hlen=pb.Hlen(table=t))
    elif c == 15:
        r = req(metrics=pb.Metrics(own=rng.random() < 0.5))
    elif c == 16:
        r = req(slowlog=pb.Slowlog(count=rng.choice([0, 1, 2**32 - 1]), reset=rng.random() < 0.2))
    elif c == 17:
        r = req(digest=pb.Digest(table=t))
    elif c == 18:
        r = req(snapshot=pb.Snapshot())
    elif c == 19:
        r = req(rebuild=pb.Rebuild(table=t))
    elif c == 20:
        r = req()  # no command
    elif c == 22:
        r = req(hclear=pb.Hclear(table=t))
    else:
        r = req(hget=pb.Hget(table=t, key=b"s%d" % rng.randrange(64)))
    if rng.random() < 0.1:
        r.min_position = rng.choice([b"\x01", b"\x02abc", b"\x01\x02kb\x01\x00\x05",
                                     bytes(rng.randrange(256) for _ in range(12))])
    if rng.random() < 0.1:
        r.accept_stale = True
    if rng.random() < 0.1:
        r.value_lengths = True
    return r, t


# ---- the shadow model of one owner ------------------------------------------------------

UNKNOWN = object()  # a key whose value the model no longer knows


def enc_len(v):
    return len(value(v).SerializeToString())


def same(a, b):
    """Python values as kvs stores them (floats by bits: NaN, -0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return type(a) is type(b) and a == b


class Shadow:
    """The values of the keys one owner alone writes in one table."""

    def __init__(self, table, keys, bound):
        self.table = table
        self.keys = keys
        self.bound = bound  # a Kafka-bound table (format value)
        self.vals = {}      # key -> Python value; absent = absent; UNKNOWN
        self.resp = False   # written over RESP: values are bytes (stored_bytes)
        # bound: key -> every value it held since the owner's pipeline began
        self.held = {}
        # bound: key -> the largest encoded value ever written to it
        self.largest = {}
        # bound, once replicas may lag: the keys the owner's connection
        # wrote and got a position for (see stale())
        self.ctx = None
        self.fresh = set()
        # bound: key -> every value a write of it carried (None: absent, as
        # at the start, or deleted): what a lagging replica may hold
        self.ever = {}

    def begin_session(self, ctx):
        """The owner opened a new connection: the router holds no position
        for it yet."""
        self.ctx = ctx
        self.fresh = set()

    def written(self, resp, ks):
        """A write of keys ks was answered: with a position, the router
        attaches it to this connection's later reads of their partitions."""
        if resp.status == 200 and len(resp.position) > 0:
            self.fresh.update(ks)

    def stale(self, k):
        """True if a read of k may be answered by a replica that has not
        applied the owner's last write of it yet. The router carries only
        the positions of the connection's own writes (README, read-your-
        writes): what an owner wrote on an earlier connection may be missing
        from a replica that lags (a killed worker catching up, a replica
        that copied its shard from a peer while the other answered the
        writes, the other node's replica behind the one that answered the
        write), so once replicas may lag (ctx.replicas_lag) only keys the
        connection wrote are read fresh."""
        return (self.bound and self.ctx is not None and self.ctx.replicas_lag
                and k not in self.fresh)

    def get(self, k):
        return UNKNOWN if self.stale(k) else self.vals.get(k)

    def could_be(self, k):
        """For a key stale() makes unknown: the values a replica may hold
        for it (None: absent), any one a write of it carried, since a
        replica applies the same records, only later; None when k is not
        stale (get() says what it holds, or that it is unknown)."""
        if not self.stale(k):
            return None
        return self.ever.get(k, [None])

    def exists(self, k):
        """What Hexist of k must answer: True, False or UNKNOWN."""
        v = self.get(k)
        if v is not UNKNOWN:
            return v is not None
        c = self.could_be(k)
        if c is not None and all(x is None for x in c):
            return False  # never written: absent on every replica
        return UNKNOWN

    def whole_unknown(self):
        """A whole-table read (Hlen, Hgetall) cannot be checked."""
        return (any(v is UNKNOWN for v in self.vals.values())
                or any(self.stale(k) for k in self.keys))

    def begin_pipeline(self):
        self.held = {}

    def pipelined_write(self, k, v):
        """A request of the pipeline being made writes v to k (None:
        deletes it). On a bound table it is applied, and answered, only
        after the requests behind it were checked (README, log-first
        writes: a part prices the previous values stored when it is
        checked), so those may be priced against any value k held since
        the pipeline began."""
        if self.bound:
            self.held.setdefault(k, [self.vals.get(k)]).append(v)
            self.ever.setdefault(k, [None]).append(v)
            if v is not None:
                self.largest[k] = max(self.largest.get(k, 0), enc_len(v))

    def largest_stored(self, k, ctx):
        """The largest encoded value k may have in the store when a request
        now added to the pipeline is checked; None if it is unknown. Once
        a replica may lag (ctx.replicas_lag), any value ever written."""
        if ctx.replicas_lag:
            return self.largest.get(k, 0)
        vs = self.held.get(k, [self.vals.get(k)])
        if any(v is UNKNOWN for v in vs):
            return None
        return max((enc_len(v) for v in vs if v is not None), default=0)


class Expect:
    """What one tracked request's answer must be: check(resp) returns an
    error text or None, and applies the write to the model."""

    def __init__(self, check):
        self.check = check


def fmt(v):
    r = repr(v)
    return r if len(r) < 80 else r[:60] + "...(%d)" % len(r)


def expect_values(resp, want, what):
    if len(resp.values) != len(want):
        return "%s: %d values, want %d" % (what, len(resp.values), len(want))
    for i, (got, w) in enumerate(zip(resp.values, want)):
        g = pyval(got)
        if w is UNKNOWN:
            continue
        if not (g is None and w is None) and not same(g, w):
            return "%s: value %d is %s, model says %s" % (what, i, fmt(g), fmt(w))
    return None


def held_once(v, cands):
    """True if the value read, v (None: absent), is one of cands."""
    return any((v is None and c is None) or (c is not None and same(v, c)) for c in cands)


def stale_previous(resp, cands, what, which="previous value"):
    """The value a 200 of a key a lagging replica may answer carries (a
    write's previous value, or a read's): one the key held once; cands
    None: not checked (Shadow.could_be)."""
    if cands is None or len(resp.values) != 1:
        return None
    v = pyval(resp.values[0])
    if not held_once(v, cands):
        return "%s: %s %s, which no write of it carried" % (what, which, fmt(v))
    return None


def stale_read(resp, cands, what):
    """The check of a single-key read of a key a lagging replica may
    answer: 200 or 404, with a value it held once (Shadow.could_be)."""
    if resp.status == 404:
        return None if held_once(None, cands) else "%s: 404, but the key was never deleted" % what
    if resp.status != 200 or len(resp.values) != 1:
        return "%s: %d %s" % (what, resp.status, resp.message)
    return stale_previous(resp, cands, what, "value")


def applied_unsent(resp, sh):
    """A write to a bound table that was applied, but whose answer (the
    previous values, which a write still in flight through Kafka may have
    made larger than the check before it priced) does not fit max_frame:
    500 with its position (README, log-first writes)."""
    return (sh.bound and resp.status == 500 and "was applied" in resp.message
            and len(resp.position) > 0 and not resp.outcome_unknown)


def kafka_503(resp, sh, ks, ctx):
    """A 503 that a write to a bound table may get (README, log-first
    writes; Replicas, Writes): True if it is one, and the model is updated:
    outcome_unknown or a position (Kafka has the records; they will be
    applied) make the keys unknown; a single-key write that says nothing
    of the kind did not happen. A split write's 503 may have been applied
    on some shards (the message says which): its keys become unknown."""
    if not sh.bound or not resp.message:
        return False
    if resp.status == 500 and (resp.outcome_unknown or len(resp.position) > 0):
        # A split write some part of which was applied (its own answer did
        # not fit max_frame) while another may or may not have been.
        ctx.count("bound write 500 applied in part")
        for a in ks:
            sh.vals[a] = UNKNOWN
        return True
    if resp.status != 503 and not (resp.status == 413 and "Kafka refused" in resp.message):
        return False
    if resp.outcome_unknown or len(resp.position) > 0 or len(set(ks)) > 1:
        ctx.count("bound write 503 unknown" if resp.outcome_unknown
                  else "bound write 503 position" if len(resp.position) else
                  "bound write 503 split")
        for a in ks:
            sh.vals[a] = UNKNOWN
    else:
        ctx.count("bound write %d not written" % resp.status)
    return True


def fenced(resp, ctx):
    """A write of an unbound table refused because a client took a whole
    Snapshot of the shard from its worker (ctx.snapshots: an admin's
    Snapshot sent straight to a worker): its worker refuses such writes
    from then on, with 503 "shard N was copied to PEER ...; nothing was
    written" (README, Unbound tables on a shard that moves). The write did
    not happen."""
    if (ctx.snapshots and resp.status == 503 and "was copied to" in resp.message
            and "nothing was written" in resp.message):
        ctx.count("write refused: the shard was copied")
        return True
    return False


def bound_read_503(resp, sh, ctx):
    """A read of a bound table may get 503 while brokers or replicas are in
    trouble (catching up, behind a position, a shard unavailable)."""
    if sh.bound and ctx.flaky and resp.status == 503 and resp.message:
        ctx.count("bound read 503")
        return True
    return False


def gen_owned(rng, sh, ctx):
    """(request, Expect) on the owner's keys of shadow `sh`."""
    mf = ctx.max_frame
    limit = mf - 575  # a key plus its encoded value at most this
    keys = sh.keys
    c = rng.randrange(11 if not sh.bound else 7)
    k = rng.choice(keys)
    if rng.random() < 0.015:  # Hclear: the whole table (a bound one refuses it)
        r = req(hclear=pb.Hclear(table=sh.table))

        def check(resp):
            if sh.bound:
                if resp.status != 400 or "bound to Kafka topic" not in resp.message:
                    return "Hclear of bound %s: %d %s" % (sh.table, resp.status, resp.message)
                return None
            unknown = sh.whole_unknown()
            had = len(sh.vals)
            if resp.status != 200:
                # Some shards may have emptied their part (the message says
                # which): every key is unknown now.
                sh.vals = {a: UNKNOWN for a in keys}
                if ctx.flaky or (resp.status == 503 and ctx.snapshots):
                    ctx.count("Hclear %d" % resp.status)
                    return None
                return "Hclear: %d %s" % (resp.status, resp.message)
            sh.vals = {}
            if not unknown and (len(resp.values) != 1 or resp.values[0].integer_value != had):
                return "Hclear: %s, model had %d keys" % (resp, had)
            return None
        return r, Expect(check)

    def rv():
        if rng.random() < 0.04:
            size = limit - len(k) - rng.choice([8, 7, 6, 5, 4, 0, -1, -50])
            v = rng.choice([b"\xcd" * size, "q" * size])
            return v
        v = rand_value(rng)
        return v

    if c == 0:  # Hset
        v = rv()
        if_absent = rng.random() < 0.15 and not sh.bound  # 400 on a bound table
        r = req(hset=pb.Hset(table=sh.table, pair=pair(k, v), if_absent=if_absent))
        fits = len(k) + enc_len(v) <= limit
        sh.pipelined_write(k, v)

        def check(resp):
            prev = sh.get(k)
            if not fits:
                # A worker refuses such a pair before it writes or produces
                # anything; one killed first (its link lost: the router's
                # 503 cannot know that) leaves the model as it is, and so
                # does one restarted that copies its shard from a replica
                # (it answers every request 503 until the copy is in place;
                # README, Replicas: a new replica's writes).
                if (resp.status == 503 and ctx.flaky and resp.outcome_unknown
                        and "is unavailable" in resp.message):
                    ctx.count("oversized Hset 503")
                    return None
                if (resp.status == 503 and ctx.flaky
                        and "is copying a snapshot" in resp.message):
                    ctx.count("oversized Hset 503 copying")
                    return None
                if resp.status != 413:
                    sh.vals[k] = UNKNOWN
                    return "Hset of a %d-byte pair past the limit: %d %s" % (
                        len(k) + enc_len(v), resp.status, resp.message)
                return None
            if kafka_503(resp, sh, [k], ctx):
                return None
            if prev is UNKNOWN:
                if resp.status == 200 and not if_absent:
                    sh.vals[k] = v
                    return stale_previous(resp, sh.could_be(k), "Hset %s" % fmt(k))
                return None
            if resp.status == 413 and prev is not None and enc_len(prev) + enc_len(v) > mf - 1024:
                return None  # the previous value does not fit the answer along the new one
            if applied_unsent(resp, sh):
                sh.vals[k] = v
                return None
            if resp.status != 200:
                sh.vals[k] = UNKNOWN
                return "Hset %s: %d %s" % (fmt(k), resp.status, resp.message)
            err = expect_values(resp, [prev], "Hset %s" % fmt(k))
            if not if_absent or prev is None:
                sh.vals[k] = v
            return err
        return r, Expect(check)
    if c == 1:  # Hget
        r = req(hget=pb.Hget(table=sh.table, key=k))

        def check(resp):
            prev = sh.get(k)
            if bound_read_503(resp, sh, ctx):
                return None
            if prev is UNKNOWN:
                cands = sh.could_be(k)
                return None if cands is None else stale_read(resp, cands, "Hget %s" % fmt(k))
            if prev is None:
                if resp.status != 404:
                    return "Hget of absent %s: %d %s" % (fmt(k), resp.status, resp.message)
                return None
            if resp.status != 200:
                return "Hget %s: %d %s" % (fmt(k), resp.status, resp.message)
            return expect_values(resp, [prev], "Hget %s" % fmt(k))
        return r, Expect(check)
    if c == 2:  # Hdel
        r = req(hdel=pb.Hdel(table=sh.table, key=k))
        sh.pipelined_write(k, None)

        def check(resp):
            prev = sh.get(k)
            if kafka_503(resp, sh, [k], ctx):
                return None
            if prev is UNKNOWN:
                if resp.status == 200:
                    sh.vals.pop(k, None)
                    return stale_previous(resp, sh.could_be(k), "Hdel %s" % fmt(k))
                return None
            if resp.status != 200:
                sh.vals[k] = UNKNOWN
                return "Hdel %s: %d %s" % (fmt(k), resp.status, resp.message)
            sh.vals.pop(k, None)
            return expect_values(resp, [prev], "Hdel %s" % fmt(k))
        return r, Expect(check)
    if c == 3:  # Hmget (duplicates allowed)
        ks = [rng.choice(keys) for _ in range(rng.randrange(1, 12))]
        r = req(hmget=pb.Hmget(table=sh.table, keys=ks))

        def check(resp):
            want = [sh.get(x) for x in ks]
            if bound_read_503(resp, sh, ctx):
                return None
            size = sum(enc_len(w) + 8 for w in want if w is not None and w is not UNKNOWN)
            if any(w is UNKNOWN for w in want) or size > mf - 4096:
                if resp.status == 413:
                    return None
                if resp.status != 200:
                    return "Hmget: %d %s" % (resp.status, resp.message)
                # Keys a lagging replica may answer: a value they held once.
                for i, (x, w) in enumerate(zip(ks, want)):
                    cands = sh.could_be(x) if w is UNKNOWN else None
                    if cands is not None and i < len(resp.values):
                        v = pyval(resp.values[i])
                        if not held_once(v, cands):
                            return "Hmget: value %d is %s, which no write of %s carried" % (
                                i, fmt(v), fmt(x))
                return expect_values(resp, want, "Hmget")
            if resp.status != 200:
                return "Hmget: %d %s" % (resp.status, resp.message)
            return expect_values(resp, want, "Hmget")
        return r, Expect(check)
    if c in (4, 5):  # Hmset / Hmdel, distinct keys
        ks = rng.sample(keys, rng.randrange(1, min(8, len(keys))))
        if c == 4:
            vs = [rv() for _ in ks]
            r = req(hmset=pb.Hmset(table=sh.table, pairs=[pair(a, b) for a, b in zip(ks, vs)]))
        else:
            vs = [None] * len(ks)
            r = req(hmdel=pb.Hmdel(table=sh.table, keys=ks))
        name = "Hmset" if c == 4 else "Hmdel"
        stored = [sh.largest_stored(a, ctx) for a in ks] if sh.bound else None
        for a, b in zip(ks, vs):
            sh.pipelined_write(a, b)

        def check(resp):
            prev = [sh.get(x) for x in ks]
            plain = all(p is not UNKNOWN for p in prev)
            # The previous values the answer is priced with: the model's,
            # or on a bound table the largest each key may have had when
            # the request was checked. One unknown: any size (413 is sane).
            olds = stored if sh.bound else [None if p is UNKNOWN else
                                            0 if p is None else enc_len(p) for p in prev]
            size = sum(len(a) + enc_len(b) + 16 for a, b in zip(ks, vs) if b is not None)
            size += sum(o + 16 for o in olds if o)
            near = (size > mf // 4 or None in olds
                    or any(b is not None and len(a) + enc_len(b) > limit for a, b in zip(ks, vs)))
            if kafka_503(resp, sh, ks, ctx):
                return None
            if resp.status == 200:
                err = expect_values(resp, prev, name) if plain else None
                for a, b in zip(ks, vs):
                    if b is None:
                        sh.vals.pop(a, None)
                    else:
                        sh.vals[a] = b
                return err
            if resp.status == 413 and near:
                return None  # nothing written
            if applied_unsent(resp, sh):
                for a, b in zip(ks, vs):
                    if b is None:
                        sh.vals.pop(a, None)
                    else:
                        sh.vals[a] = b
                return None
            # 207: the answer budget is shared by new value bytes (README,
            # Multi-key commands), so a part with small new values and
            # large previous ones can be refused whatever the sizes.
            if resp.status == 207:
                unwritten = {p.key for p in resp.pairs}
                for a, b in zip(ks, vs):
                    if len(resp.pairs) == 0 and "left out" in resp.message:
                        sh.vals[a] = UNKNOWN
                    elif a not in unwritten:
                        if b is None:
                            sh.vals.pop(a, None)
                        else:
                            sh.vals[a] = b
                return None
            for a in ks:
                sh.vals[a] = UNKNOWN
            return "%s of %d keys (%d bytes): %d %s" % (name, len(ks), size, resp.status,
                                                       resp.message)
        return r, Expect(check)
    if c == 6:  # Hexist / Hmexist
        ks = [rng.choice(keys) for _ in range(rng.randrange(1, 6))]
        single = len(ks) == 1 and rng.random() < 0.5
        r = (req(hexist=pb.Hexist(table=sh.table, key=ks[0])) if single
             else req(hmexist=pb.Hmexist(table=sh.table, keys=ks)))

        def check(resp):
            if bound_read_503(resp, sh, ctx):
                return None
            if resp.status != 200:
                return "Hexist/Hmexist: %d %s" % (resp.status, resp.message)
            want = [sh.exists(x) for x in ks]
            return expect_values(resp, want, "Hexist/Hmexist")
        return r, Expect(check)
    if c == 7:  # Hincr by_int
        by = rng.choice([1, -1, 7, 2**62, -2**62, 2**63 - 1])
        r = req(hincr=pb.Hincr(table=sh.table, key=k, by_int=by))

        def check(resp):
            prev = sh.get(k)
            if prev is UNKNOWN:
                if resp.status == 200 and len(resp.values) == 1:
                    sh.vals[k] = pyval(resp.values[0])
                return None
            if prev is None or (isinstance(prev, int) and not isinstance(prev, bool)):
                n = (prev or 0) + by
                if -2**63 <= n < 2**63:
                    if resp.status != 200:
                        sh.vals[k] = UNKNOWN
                        return "Hincr %s by %d from %s: %d %s" % (fmt(k), by, fmt(prev),
                                                                  resp.status, resp.message)
                    sh.vals[k] = n
                    return expect_values(resp, [n], "Hincr %s" % fmt(k))
                if resp.status != 400:
                    sh.vals[k] = UNKNOWN
                    return "Hincr overflow %s: %d %s" % (fmt(prev), resp.status, resp.message)
                return None
            if resp.status == 200:  # floats and text numbers: Redis rules, not modelled
                sh.vals[k] = pyval(resp.values[0]) if len(resp.values) == 1 else UNKNOWN
                return None
            if resp.status != 400:
                return "Hincr of %s: %d %s" % (fmt(prev), resp.status, resp.message)
            return None
        return r, Expect(check)
    if c == 8:  # Hlen
        r = req(hlen=pb.Hlen(table=sh.table))

        def check(resp):
            if sh.whole_unknown() or bound_read_503(resp, sh, ctx):
                return None
            if resp.status != 200:
                return "Hlen: %d %s" % (resp.status, resp.message)
            return expect_values(resp, [len(sh.vals)], "Hlen")
        return r, Expect(check)
    # Hgetall (keys only or not)
    keys_only = rng.random() < 0.5
    r = req(hgetall=pb.Hgetall(table=sh.table, keys_only=keys_only))

    def check(resp):
        if sh.whole_unknown() or bound_read_503(resp, sh, ctx):
            return None
        size = sum(len(a) + 16 + (0 if keys_only else enc_len(b)) for a, b in sh.vals.items())
        if resp.status == 413 and size > mf - 4096:
            return None
        if resp.status != 200:
            return "Hgetall: %d %s" % (resp.status, resp.message)
        got = {p.key: pyval(p.value) for p in resp.pairs}
        if set(got) != set(sh.vals):
            return "Hgetall keys: %d got, %d in the model; extra %s, missing %s" % (
                len(got), len(sh.vals), fmt(sorted(set(got) - set(sh.vals))[:3]),
                fmt(sorted(set(sh.vals) - set(got))[:3]))
        ordered = [p.key for p in resp.pairs]
        if ordered != sorted(ordered):
            return "Hgetall pairs not in key order"
        if not keys_only:
            for a, b in sh.vals.items():
                if not same(got[a], b):
                    return "Hgetall %s = %s, model %s" % (fmt(a), fmt(got[a]), fmt(b))
        return None
    return r, Expect(check)


# ---- the statuses a request may get -------------------------------------------------------

SANE = {200, 207, 400, 401, 403, 404, 413}


def sane(resp, table, ctx):
    """None if `resp` is an answer a (shared, untracked) request may get."""
    if resp.status == 200:
        return None
    if resp.status == 206 and len(resp.values) == 1 and not resp.message:
        return None  # a chunk of a Snapshot (a worker command an admin may send a worker)
    if not resp.message:
        return "status %d without a message" % resp.status
    if resp.status == 503 and ("computing another digest" in resp.message or
                               "is being created on shard" in resp.message):
        return None  # Digests of one shard run one at a time, not of a table
        # a write is creating that moment (README, Replicas)
    if fenced(resp, ctx):
        return None
    if resp.status in SANE:
        return None
    if resp.status == 503 and ctx.kafka and ("Kafka" in resp.message or "kafka" in resp.message
                                             or "topic" in resp.message):
        return None
    if resp.status == 503 and ctx.flaky:
        return None
    return "status %d: %s" % (resp.status, resp.message)


# ---- connections ----------------------------------------------------------------------------


class Conn:
    """A protobuf connection to the router (TLS when the context says)."""

    def __init__(self, ctx, timeout=10.0, half_close=False):
        """half_close: under TLS, a socket whose shutdown(SHUT_WR) sends
        close_notify and leaves it readable (BioTls)."""
        if half_close and ctx.tls is not None:
            self.sock = BioTls(ctx.tls, ctx.port, timeout)
        else:
            self.sock = ctx.connect(ctx.port, timeout)
        self.buf = bytearray()

    def close(self, rst=False):
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def send_bytes_threaded(self, data):
        """Sends from a thread; returns a function that joins it and returns
        the error (or None)."""
        err = []

        def run():
            try:
                self.sock.sendall(data)
            except (OSError, ValueError) as e:
                err.append(e)
        if isinstance(self.sock, ssl.SSLSocket):
            # One SSL object may not be read and written by two threads at
            # once: send first (the node reads while it owes at most a
            # quarter of limits.client_output, far above a pipeline here).
            run()
            return lambda timeout=30.0: err[0] if err else None
        t = threading.Thread(target=run, daemon=True)
        t.start()

        def join(timeout=30.0):
            t.join(timeout)
            if t.is_alive():
                return "sender still blocked after %.0f s" % timeout
            return err[0] if err else None
        return join

    def recv_frame(self):
        """(word, payload), or None on EOF at a boundary; raises on EOF mid-frame."""
        while len(self.buf) < 4:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                if self.buf:
                    raise EOFError("EOF inside a frame header")
                return None
            self.buf += chunk
        (word,) = struct.unpack(">I", self.buf[:4])
        n = word & ~COMPRESSED
        while len(self.buf) < 4 + n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("EOF inside a %d-byte frame" % n)
            self.buf += chunk
        payload = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        return word, payload

    def recv(self, ctx):
        """The next CommandResponse; None on EOF. Raises AssertionError on a
        frame that is not one, or larger than max_frame."""
        got = self.recv_frame()
        if got is None:
            return None
        word, payload = got
        if word & COMPRESSED:
            raise AssertionError("answer frame with the compressed bit set")
        if len(payload) > ctx.max_frame:
            raise AssertionError("answer of %d bytes, past max_frame %d" % (len(payload),
                                                                          ctx.max_frame))
        r = pb.CommandResponse()
        try:
            r.ParseFromString(payload)
        except Exception as e:  # noqa: BLE001 - DecodeError
            raise AssertionError("answer does not decode (%s): %r" % (e, payload[:60]))
        return r


class BioTls:
    """A TLS client socket over ssl.MemoryBIO whose shutdown(SHUT_WR) is a
    TLS half-close: close_notify is sent and the answers still read (an
    SSLSocket's shutdown drops its TLS state, and what it reads after is
    ciphertext). The server takes close_notify as a plaintext client's
    EOF: every answer before it still comes, then its own close_notify."""

    def __init__(self, tls, port, timeout):
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = tls.wrap_bio(self.inb, self.outb, server_hostname="localhost")
        try:
            self._pump(self.obj.do_handshake)
        except BaseException:
            self.raw.close()
            raise

    def _flush(self):
        out = self.outb.read()
        if out:
            self.raw.sendall(out)

    def _pump(self, op, *args):
        while True:
            try:
                got = op(*args)
                self._flush()
                return got
            except ssl.SSLWantReadError:
                self._flush()
                data = self.raw.recv(1 << 16)
                if not data:
                    self.inb.write_eof()
                else:
                    self.inb.write(data)

    def sendall(self, data):
        self.obj.write(data)
        self._flush()

    def recv(self, n):
        try:
            return self._pump(self.obj.read, n)
        except ssl.SSLZeroReturnError:
            return b""  # the server's close_notify

    def shutdown(self, how):
        assert how == socket.SHUT_WR
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify sent; the server's comes after its answers
        self._flush()

    def settimeout(self, t):
        self.raw.settimeout(t)

    def setsockopt(self, *args):
        self.raw.setsockopt(*args)

    def close(self):
        self.raw.close()


def frame(payload, word=None):
    return struct.pack(">I", len(payload) if word is None else word) + payload


def authenticate(conn, ctx, user):
    """Auth as `user` (name, token) if users are configured; returns an error text or None."""
    if not ctx.users:
        return None
    conn.sock.sendall(frame(auth_req(*user).SerializeToString()))
    r = conn.recv(ctx)
    if r is None or r.status != 200:
        return "Auth as %s: %s" % (user[0], "EOF" if r is None else "%d %s" % (r.status, r.message))
    return None


# ---- threads ---------------------------------------------------------------------------------


class Reconnect(Exception):
    """The owner's connection ended as it should (after a frame past
    max_frame) or was reported: go on with a new one."""


def sessions(ctx, where, deadline, connect):
    """A client thread's connections, one a session, each from connect()
    and closed by the thread, until `deadline` or ctx.stop. A connect that
    fails is a finding and ends them (the node refused a client)."""
    while time.monotonic() < deadline and not ctx.stop.is_set():
        try:
            conn = connect()
        except OSError as e:
            ctx.findings.add(where, "connect: %r" % e)
            return
        yield conn


def history_of(history, keys, n=12):
    """The last n answers in an owner's history (see owner_thread) that
    name one of `keys`, one line each, for a finding's message (UTC, as
    the nodes' logs)."""
    ks = set(keys)
    lines = []
    for t, sess, name, hk, status, unknown, pos, msg in [h for h in history
                                                         if ks & set(h[3])][-n:]:
        names = b",".join(k[:16] for k in hk).decode("utf-8", "replace")
        lines.append("\n    %s.%03dZ session %d: %s %s -> %d%s%s %s" % (
            time.strftime("%H:%M:%S", time.gmtime(t)), int(t * 1000) % 1000, sess, name, names,
            status, " outcome_unknown" if unknown else "", " (position)" if pos else "", msg))
    return "".join(lines)


def owner_thread(ctx, idx, seed, deadline, shadows):
    rng = random.Random(seed)
    where = "owner %d (seed %d)" % (idx, seed)
    # The owner's last answers (wall clock, session, command, keys, status,
    # outcome_unknown, a position, message): a finding names its keys' own.
    history = collections.deque(maxlen=512)
    session = 0
    for conn in sessions(ctx, where, deadline, lambda: Conn(ctx)):
        session += 1
        try:
            err = authenticate(conn, ctx, ctx.owner_user)
            if err:
                ctx.findings.add(where, err)
                return
            for sh in shadows:
                sh.begin_session(ctx)
            for _ in range(rng.randrange(1, 30)):
                if time.monotonic() >= deadline:
                    break
                batch = []
                for sh in shadows:
                    sh.begin_pipeline()
                for _ in range(rng.randrange(1, 24)):
                    if rng.random() < 0.7:
                        sh = rng.choice(shadows)
                        r, e = gen_owned(rng, sh, ctx)
                        batch.append((r, e, None))
                    else:
                        r, t = gen_shared(rng, ctx)
                        if r.WhichOneof("command") == "auth":
                            continue  # an owner stays who it is
                        batch.append((r, None, t))
                # A frame past max_frame is answered 413 and the connection
                # closed: at most one, last.
                over = [b for b in batch if b[0].ByteSize() > ctx.max_frame]
                batch = [b for b in batch if b[0].ByteSize() <= ctx.max_frame] + over[:1]
                data = b"".join(frame(r.SerializeToString()) for r, _, _ in batch)
                if len(data) > ctx.max_frame * 8:
                    batch = batch[:1]
                    data = frame(batch[0][0].SerializeToString())
                join = conn.send_bytes_threaded(data)
                got = []
                for i, (r, e, t) in enumerate(batch):
                    enc = r.SerializeToString()
                    try:
                        resp = conn.recv(ctx)
                    except (OSError, EOFError, AssertionError) as ex:
                        resp, why = None, repr(ex)
                    else:
                        why = "EOF"
                    if resp is None:
                        if len(enc) + 4 > ctx.max_frame:
                            ctx.count("owner: closed after an oversized frame")
                        else:
                            ctx.findings.add(where, "%s answered by %s (request %d of %d; "
                                             "before it: %s)"
                                             % (r.WhichOneof("command"), why, i, len(batch),
                                                " ".join("%s:%d" % (b[0].WhichOneof("command"), st)
                                                         for b, st in zip(batch, got))))
                        mark_unknown(batch[i:], shadows)
                        raise Reconnect()
                    ctx.count("status %d" % resp.status)
                    got.append(resp.status)
                    if len(enc) > ctx.max_frame:
                        if resp.status != 413 or conn.recv(ctx) is not None:
                            ctx.findings.add(where, "a %d-byte frame: %d %s, not 413 and closed"
                                             % (len(enc), resp.status, resp.message))
                        join()
                        raise Reconnect()
                    if e is not None:
                        name = r.WhichOneof("command")
                        cmd = getattr(r, name)
                        # A fenced write was refused before anything, its
                        # size included, was looked at: nothing to check,
                        # and the model stays as it is.
                        msg = None if name in WRITES and fenced(resp, ctx) else e.check(resp)
                        if name in WRITES:
                            for sh in shadows:
                                if sh.table == cmd.table:
                                    sh.written(resp, named_keys(cmd))
                        history.append((time.time(), session, name, named_keys(cmd),
                                        resp.status, resp.outcome_unknown,
                                        len(resp.position) > 0, resp.message[:80]))
                        if msg:
                            ctx.findings.add(where, "table %s: %s; the keys' last answers:%s"
                                             % (getattr(cmd, "table", "?"), msg,
                                                history_of(history, named_keys(cmd))))
                    else:
                        msg = sane(resp, t, ctx)
                        if msg:
                            ctx.findings.add(where, "%s on %r: %s" % (r.WhichOneof("command"),
                                                                      (t or "")[:20], msg))
                err = join()
                if err:
                    ctx.findings.add(where, "sending: %r" % (err,))
                    return
        except Reconnect:
            pass
        finally:
            conn.close()


def mark_unknown(batch, shadows):
    """Every owned key named by the requests left unanswered is unknown now."""
    for r, e, _ in batch:
        if e is None:
            continue
        cmd = getattr(r, r.WhichOneof("command"))
        for sh in shadows:
            if getattr(cmd, "table", None) != sh.table:
                continue
            for k in named_keys(cmd):
                sh.vals[k] = UNKNOWN


# The owned-key commands that write.
WRITES = {"hset", "hmset", "hdel", "hmdel", "hincr"}


def named_keys(cmd):
    """The keys an owned-key command names."""
    if hasattr(cmd, "pair"):
        return [cmd.pair.key]
    if hasattr(cmd, "pairs"):
        return [p.key for p in cmd.pairs]
    if hasattr(cmd, "keys"):
        return list(cmd.keys)
    if hasattr(cmd, "key"):
        return [cmd.key]
    return []


def mutator_thread(ctx, idx, seed, deadline):
    rng = random.Random(seed)
    where = "mutator %d (seed %d)" % (idx, seed)
    for conn in sessions(ctx, where, deadline, lambda: Conn(ctx)):
        try:
            user = rng.choice(ctx.users) if ctx.users and rng.random() < 0.85 else None
            if user is not None and authenticate(conn, ctx, user):
                ctx.findings.add(where, "Auth as %s failed" % user[0])
                return
            mutator_session(ctx, rng, conn, where)
        except (OSError, EOFError) as e:
            ctx.count("mutator: connection error %s" % type(e).__name__)
        except AssertionError as e:
            ctx.findings.add(where, str(e))
        finally:
            conn.close(rst=rng.random() < 0.3)


def dump(frames):
    """Every frame as hex (KVS_LIVE_FUZZ_DUMP=1), else their sizes."""
    if os.environ.get("KVS_LIVE_FUZZ_DUMP"):
        return " ".join(f.hex() or "-" for f in frames)
    return " ".join(str(len(f)) for f in frames)


def mutator_session(ctx, rng, conn, where):
    last = None  # the last answer on this connection
    for _ in range(rng.randrange(1, 8)):
        if time.monotonic() >= ctx.deadline:
            return
        frames, sent = [], []
        whole = [gen_shared(rng, ctx)[0].SerializeToString() for _ in range(2)]
        for _ in range(rng.randrange(1, 16)):
            r, t = gen_shared(rng, ctx)
            enc = r.SerializeToString()
            if rng.random() < 0.8:
                enc = mutate(rng, enc, whole)
            if len(enc) > ctx.max_frame:
                enc = enc[:ctx.max_frame]
            frames.append(frame(enc))
            sent.append(enc)
        lie = None
        if rng.random() < 0.1:  # a last frame whose header lies
            lie = rng.randrange(5)
            if lie == 0:
                frames.append(struct.pack(">I", ctx.max_frame + 1 + rng.randrange(1000)))
            elif lie == 1:
                frames.append(struct.pack(">I", COMPRESSED | 10) + b"\x00" * 10)
            elif lie == 2:
                frames.append(struct.pack(">I", 0xFFFFFFFF))
            elif lie == 3:
                frames.append(struct.pack(">I", 1000) + b"\x5a" * rng.randrange(0, 999))
            else:
                frames.append(struct.pack(">I", 0))  # an empty request: no command
                sent.append(b"")
                lie = None
        join = conn.send_bytes_threaded(b"".join(frames))
        for i in range(len(sent)):
            resp = conn.recv(ctx)
            if resp is None:
                ctx.count("mutator: closed by the server")
                if last is None or last.status == 200:
                    if ctx.users and any(len(s) > 16384 for s in sent):
                        return
                    ctx.findings.add(where, "closed after %s, %d of %d answered; request %d "
                                     "was %s; the pipeline: %s"
                                     % ("a 200" if last else "no answer", i, len(sent), i,
                                        sent[i][:80].hex(), dump(sent)))
                return
            ctx.count("mutated status %d" % resp.status)
            msg = sane(resp, None, ctx)
            if msg:
                ctx.findings.add(where, "%s (request %s)" % (msg, sent[i][:120].hex()))
            if resp.status == 401 and "closing" in resp.message:
                return
            if resp.status == 206:
                return  # a Snapshot: the connection streams the shard's copy, then closes
            last = resp
        if lie is not None:
            if lie in (0, 1, 2):
                conn.sock.settimeout(5.0)
                t0 = time.monotonic()
                try:
                    r = conn.recv(ctx)
                except socket.timeout:
                    ctx.findings.add(where, "lying header %d: neither an answer nor EOF within "
                                     "5 s; the pipeline: %s" % (lie, dump(sent)))
                    r = None
                except (OSError, EOFError):
                    r = None
                ctx.count("lying header %d answered in %.1f s" % (lie, time.monotonic() - t0))
                if r is not None:
                    ctx.count("lying header status %d" % r.status)
                    if r.status not in (400, 401, 413):
                        ctx.findings.add(where, "lying header %d answered %d %s; the pipeline: %s"
                                         % (lie, r.status, r.message, dump(sent)))
            return  # the stream is out of step now: close mid-frame
        err = join()
        if err:
            ctx.count("mutator: send error")
            return


# ---- RESP -------------------------------------------------------------------------------

RESP_COMMANDS = [b"HGET", b"HSET", b"HSETNX", b"HMSET", b"HMGET", b"HDEL", b"HEXISTS",
                 b"HGETALL", b"HKEYS", b"HVALS", b"HLEN", b"HSTRLEN", b"HINCRBY",
                 b"HINCRBYFLOAT", b"HSCAN", b"EXISTS", b"PING", b"ECHO", b"INFO", b"COMMAND",
                 b"CLIENT", b"SELECT", b"HELLO", b"AUTH", b"CONFIG", b"SLOWLOG", b"DEL", b"UNLINK",
                 b"GET", b"hset", b"HgEt", b"", b"MULTI", b"QUIT"]
RESP_ARGS = [b"fz", b"fz1", b"rs", b"kb", b"ro", b"", b"__kvs", b"f1", b"f2", b"0", b"1", b"-1",
             b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808", b"1e400",
             b"nan", b"inf", b"-inf", b"0.1", b" 5", b"+5", b"05", b"MATCH", b"COUNT", b"*",
             b"[a-", b"\\", b"[!]]", b"GET", b"SETNAME", b"ID", b"LIST", b"HELP", b"3", b"2",
             b"AUTH", b"DOCS", b"INFO", b"COUNT", b"save", b"maxmemory", b"x" * 511,
             b"y" * 512, b"\x00", b"\xff\xfe", b"\r\n", b"LEN", b"RESET", b"kvs", b"all",
             b"10000", b"4294967296", b"fuzz", b"fuzz-pw"]


def resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def rand_resp_command(rng, ctx):
    cmd = rng.choice(RESP_COMMANDS)
    n = rng.choice([0, 1, 2, 3, 3, 4, 5, 7, 20])
    args = [cmd]
    for _ in range(n):
        k = rng.randrange(10)
        if k == 0:
            args.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 20))))
        elif k == 1 and rng.random() < 0.1:
            args.append(b"B" * rng.choice([ctx.max_frame - 16384, ctx.max_frame // 2, 70000,
                                           ctx.max_frame + 1]))
        else:
            args.append(rng.choice(RESP_ARGS))
    if rng.random() < 0.05:  # many fields
        args = [b"HMGET", b"fz"] + [b"f%d" % i for i in range(rng.choice([1000, ctx.max_keys,
                                                                           ctx.max_keys + 1]))]
    return args


class RespReader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.at = 0

    def _more(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("EOF")
        self.buf += chunk

    def line(self):
        while True:
            end = self.buf.find(b"\r\n", self.at)
            if end >= 0:
                out, self.at = bytes(self.buf[self.at:end]), end + 2
                return out
            self._more()

    def exact(self, n):
        while len(self.buf) < self.at + n + 2:
            self._more()
        data = bytes(self.buf[self.at:self.at + n])
        if self.buf[self.at + n:self.at + n + 2] != b"\r\n":
            raise AssertionError("bulk of %d bytes not followed by CRLF" % n)
        self.at += n + 2
        return data

    def reply(self):
        """One RESP2/RESP3 reply; raises AssertionError if malformed."""
        line = self.line()
        if not line:
            raise AssertionError("empty reply line")
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-", b":", b"_", b"#", b",", b"("):
            if t == b":":
                int(rest)
            return (t, rest)
        if t in (b"$", b"=", b"!"):
            n = int(rest)
            if n < 0:
                return (t, None)
            return (t, self.exact(n))
        if t in (b"*", b"~", b">"):
            n = int(rest)
            return (t, None if n < 0 else [self.reply() for _ in range(n)])
        if t in (b"%", b"|"):
            n = int(rest)
            items = [(self.reply(), self.reply()) for _ in range(n)]
            if t == b"|":
                return self.reply()  # the attribute's reply follows
            return (t, items)
        raise AssertionError("unknown reply type %r" % line[:40])

    def compact(self):
        del self.buf[:self.at]
        self.at = 0


ERROR_PREFIXES = (b"ERR", b"NOAUTH", b"NOPERM", b"WRONGPASS", b"NOPROTO")


def resp_thread(ctx, idx, seed, deadline):
    rng = random.Random(seed)
    where = "resp %d (seed %d)" % (idx, seed)
    for sock in sessions(ctx, where, deadline, lambda: ctx.connect(ctx.resp_port, 10.0)):
        rd = RespReader(sock)
        try:
            if ctx.users and rng.random() < 0.8:
                u = rng.choice(ctx.users)
                sock.sendall(resp_encode([b"AUTH", u[0].encode(), u[1].encode()]))
                r = rd.reply()
                rd.compact()
                if r != (b"+", b"OK"):
                    ctx.findings.add(where, "AUTH %s: %r" % (u[0], r))
                    return
            if rng.random() < 0.75:
                resp_valid_session(ctx, rng, sock, rd, where)
            else:
                resp_mutated_session(ctx, rng, sock, rd, where)
        except (OSError, EOFError) as e:
            ctx.count("resp: connection error %s" % type(e).__name__)
        except (AssertionError, ValueError) as e:
            ctx.findings.add(where, "malformed reply: %s" % e)
        finally:
            try:
                sock.close()
            except OSError:
                pass


def resp_valid_session(ctx, rng, sock, rd, where):
    may_close = False  # an earlier reply may have been the server's last
    for _ in range(rng.randrange(1, 10)):
        if time.monotonic() >= ctx.deadline:
            return
        cmds = [rand_resp_command(rng, ctx) for _ in range(rng.randrange(1, 20))]
        if rng.random() < 0.2:  # an inline command
            inline = b" ".join([b"HSET", b"rs", b"f%d" % rng.randrange(9), b"v"]) + b"\r\n"
            data = b"".join(resp_encode(c) for c in cmds) + inline
            cmds.append([b"HSET"])
        else:
            data = b"".join(resp_encode(c) for c in cmds)
        err = []
        t = threading.Thread(target=lambda: _sendall(sock, data, err), daemon=True)
        if isinstance(sock, ssl.SSLSocket):
            t.run()  # not from another thread: see Conn.send_bytes_threaded
        else:
            t.start()
        for i, c in enumerate(cmds):
            too_big = len(resp_encode(c)) > ctx.max_frame
            try:
                r = rd.reply()
            except EOFError:
                if any(x[0].upper() == b"QUIT" for x in cmds[:i]):
                    return
                prev = cmds[i - 1][0] if i else b"-"
                if ctx.users and any(len(resp_encode(x)) > 16384 for x in cmds):
                    return  # a large request before AUTH: -NOAUTH and closed
                if may_close:  # e.g. a third failed AUTH: answered, then closed
                    return
                ctx.findings.add(where, "EOF instead of reply %d of %d (command %r, after %r)"
                                 % (i, len(cmds), c[0][:20], prev[:20]))
                return
            ctx.count("resp reply %s" % r[0].decode())
            may_close = r[0] == b"-"
            if r[0] == b"-":
                code = r[1].split(b" ", 1)[0]
                if code not in ERROR_PREFIXES:
                    ctx.findings.add(where, "error reply %r to %r" % (r[1][:100], c[0][:20]))
                if b"Protocol error" in r[1] and too_big:
                    return  # a request past limits.max_frame: refused and closed
                if b"Protocol error" in r[1]:
                    ctx.findings.add(where, "protocol error for a well-formed %r: %r"
                                     % (c[0][:20], r[1][:100]))
                    return
                if b"internal" in r[1].lower() or b"500" in r[1][:8]:
                    ctx.findings.add(where, "%r: %r" % (c[0][:20], r[1][:100]))
            if c[0].upper() == b"QUIT":
                return
            if c[0].upper() == b"HELLO" and r[0] == b"%":
                pass
        rd.compact()
        if t.ident is not None:
            t.join(30)
        if t.is_alive():
            ctx.findings.add(where, "RESP sender blocked for 30 s")
            return


def _sendall(sock, data, err):
    try:
        sock.sendall(data)
    except (OSError, ValueError) as e:
        err.append(e)


def resp_mutated_session(ctx, rng, sock, rd, where):
    cmds = [rand_resp_command(rng, ctx) for _ in range(rng.randrange(1, 12))]
    data = bytearray(b"".join(resp_encode(c) for c in cmds))
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(6)
        if op == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[rng.randrange(len(data)):]
        elif op == 2:
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.choice([b"*", b"$", b"\r\n", b"*-1\r\n", b"$-5\r\n", b"*0\r\n",
                                    b"*99999999999\r\n", b"$9223372036854775808\r\n",
                                    b"*2\r\n$3\r\nfoo", b"\x00", b" ", b"\"", b"'", b"\n",
                                    b"HGET fz \"a\\x00b\"\r\n", b"PING\n"])
        elif op == 3:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        elif op == 4 and data:
            i = rng.randrange(len(data))
            data[i:i] = data[i:i + rng.randrange(1, 50)]
        else:
            data = bytearray(b" ".join(rng.choice(RESP_ARGS) for _ in range(rng.randrange(1, 6)))
                             + rng.choice([b"\r\n", b"\n", b""])) + data
    sock.settimeout(1.0)
    try:
        sock.sendall(bytes(data))
    except OSError:
        return
    try:
        while True:
            r = rd.reply()
            ctx.count("resp mutated reply %s" % r[0].decode())
            if r[0] == b"-" and r[1].split(b" ", 1)[0] not in ERROR_PREFIXES:
                ctx.findings.add(where, "error reply %r" % r[1][:100])
    except (socket.timeout, ssl.SSLError, EOFError, ConnectionError):
        return


# ---- the abuser ----------------------------------------------------------------------------


def abuser_thread(ctx, idx, seed, deadline):
    rng = random.Random(seed)
    where = "abuser %d (seed %d)" % (idx, seed)
    while time.monotonic() < deadline and not ctx.stop.is_set():
        act = rng.randrange(7)
        try:
            if act == 0:  # close mid-frame
                c = Conn(ctx, timeout=2.0)
                enc = gen_shared(rng, ctx)[0].SerializeToString()
                cut = rng.randrange(0, len(enc) + 4)
                c.sock.sendall(frame(enc)[:cut])
                c.close(rst=rng.random() < 0.5)
            elif act == 1:  # half-close: every answer still comes, then EOF
                c = Conn(ctx, timeout=10.0, half_close=True)
                if ctx.users and authenticate(c, ctx, ctx.owner_user):
                    ctx.findings.add(where, "Auth failed")
                    c.close()
                    continue
                reqs = [req(ping=pb.Ping())] + [req(hget=pb.Hget(table="fz", key=b"s%d" % i))
                                                for i in range(rng.randrange(1, 50))]
                c.sock.sendall(b"".join(frame(r.SerializeToString()) for r in reqs))
                c.sock.shutdown(socket.SHUT_WR)
                n = 0
                while True:
                    r = c.recv(ctx)
                    if r is None:
                        break
                    n += 1
                if n != len(reqs):
                    ctx.findings.add(where, "half-closed client: %d answers for %d requests"
                                     % (n, len(reqs)))
                c.close()
            elif act == 2:  # stops reading: large answers owed, then leaves
                c = Conn(ctx, timeout=2.0)
                if ctx.users:
                    authenticate(c, ctx, ctx.owner_user)
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                reqs = [req(hgetall=pb.Hgetall(table=rng.choice(["fz", "fz1"])))
                        for _ in range(rng.randrange(10, 200))]
                data = b"".join(frame(r.SerializeToString()) for r in reqs)
                c.sock.settimeout(0.5)
                try:
                    c.sock.sendall(data)
                except OSError:
                    pass
                time.sleep(rng.uniform(0.1, 1.0))
                c.close(rst=rng.random() < 0.5)
            elif act == 3:  # slow drip of a valid frame, then gone
                c = Conn(ctx, timeout=2.0)
                data = frame(gen_shared(rng, ctx)[0].SerializeToString())
                for i in range(min(len(data), rng.randrange(1, 20))):
                    c.sock.sendall(data[i:i + 1])
                    time.sleep(0.01)
                c.close(rst=rng.random() < 0.5)
            elif act == 4 and ctx.resp_port is None:
                continue
            elif act == 4:  # RESP cut mid-command
                s = ctx.connect(ctx.resp_port, 2.0)
                data = resp_encode(rand_resp_command(rng, ctx))
                s.sendall(data[:rng.randrange(0, len(data) + 1)])
                if rng.random() < 0.5:
                    s.shutdown(socket.SHUT_WR)
                    time.sleep(0.05)
                s.close()
            elif act == 5:  # connect and leave; or garbage where a TLS hello is due
                port = rng.choice([ctx.port, ctx.resp_port or ctx.port])
                s = socket.create_connection(("127.0.0.1", port),
                                             timeout=2.0)
                if rng.random() < 0.5:
                    s.sendall(rng.choice([b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                                          b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 8,
                                          b"\x16\x03\x03\xff\xff" + b"\x00" * 30]))
                s.close()
            else:  # a valid pipeline, then RST before reading
                c = Conn(ctx, timeout=2.0)
                if ctx.users:
                    authenticate(c, ctx, ctx.owner_user)
                reqs = [gen_shared(rng, ctx)[0] for _ in range(rng.randrange(1, 30))]
                reqs = [r for r in reqs if r.WhichOneof("command") != "auth"]
                data = b"".join(frame(r.SerializeToString()) for r in reqs)
                c.sock.settimeout(0.5)
                try:
                    c.sock.sendall(data[:ctx.max_frame * 2])
                except OSError:
                    pass
                c.close(rst=True)
            ctx.count("abuse %d" % act)
        except (OSError, EOFError, AssertionError) as e:
            ctx.count("abuser: %s" % type(e).__name__)
        time.sleep(rng.uniform(0, 0.02))


# ---- the run ---------------------------------------------------------------------------------


class Ctx:
    def __init__(self, port, resp_port, max_frame, max_keys, users, tls, kafka, findings):
        self.port, self.resp_port = port, resp_port
        self.max_frame, self.max_keys = max_frame, max_keys
        self.users = users  # [(name, token)] or []
        self.owner_user = users[0] if users else None
        self.tls = tls
        self.kafka = kafka
        self.tables = SHARED_TABLES
        self.findings = findings
        # 503s are expected answers (brokers in trouble, a worker killed):
        # reads of bound tables and untracked requests may get them
        self.flaky = False
        # A write may be checked by a replica (or a restarted worker) that
        # has not applied the key's latest records yet: it prices the
        # previous values it holds (README, Multi-key commands), any value
        # the key had before; and a read without the connection's position
        # may see an older value (stale()). Set where a shard has several
        # replicas (one copies from the other at start; after a worker's
        # kill its writes go to the other, then to the new worker catching up).
        self.replicas_lag = False
        # clients talk to a worker directly, as users who may send it
        # Snapshot (admin): see fenced()
        self.snapshots = False
        # which owned keys an owner's shadow tracks (a worker's own listener
        # models the keys of its shard only)
        self.key_filter = None
        self.stop = threading.Event()
        self.deadline = float("inf")  # run() sets it

    def count(self, key):
        self.findings.count(key)

    def connect(self, port, timeout):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if self.tls is None:
            return s
        try:
            return self.tls.wrap_socket(s, server_hostname="localhost")
        except BaseException:
            s.close()
            raise


def owned_keys(idx, bound):
    """The keys owner `idx` alone writes (edge lengths and bytes included)."""
    p = b"o%d_" % idx
    ks = [p + b"%d" % i for i in range(24)]
    ks += [p + b"\x00", p + b"\xff" * 3, p + b"z" * (511 - len(p)), p + b" "]
    if not bound:
        ks.append(p[:1] if idx == 0 else p + b"1byte")
    return ks


def run(ctx, seed, seconds, owners=3, mutators=2, resps=1, abusers=1, resp_owners=0,
        tables=("own", "kb"), extra=()):
    """Runs every thread for `seconds`; returns the owners' shadows.
    tables: which owned tables the protobuf owners write ("own": their own
    unbound table, "kb": their keys of the bound table, when ctx.kafka);
    resp_owners: RESP owners, each alone writing table own_r<n>; extra:
    more callables run in threads as f(deadline) (fault injection)."""
    deadline = ctx.deadline = time.monotonic() + seconds
    threads, shadows = [], []
    if ctx.resp_port is None:
        resps = resp_owners = 0

    def keys(i, bound):
        ks = owned_keys(i, bound)
        return [k for k in ks if ctx.key_filter(k)] if ctx.key_filter else ks
    for i in range(owners):
        mine = []
        if "own" in tables:
            mine.append(Shadow("own_%d" % i, keys(i, False), False))
        if ctx.kafka and "kb" in tables:
            mine.append(Shadow("kb", keys(i, True), True))
        shadows.extend(mine)
        threads.append(threading.Thread(target=owner_thread,
                                        args=(ctx, i, seed * 1000 + i, deadline, mine)))
    for i in range(resp_owners):
        sh = Shadow("own_r%d" % i, resp_owned_fields(i), False)
        sh.resp = True
        shadows.append(sh)
        threads.append(threading.Thread(target=resp_owner_thread,
                                        args=(ctx, i, seed * 1000 + 400 + i, deadline, sh)))
    for i in range(mutators):
        threads.append(threading.Thread(target=mutator_thread,
                                        args=(ctx, i, seed * 1000 + 100 + i, deadline)))
    for i in range(resps):
        threads.append(threading.Thread(target=resp_thread,
                                        args=(ctx, i, seed * 1000 + 200 + i, deadline)))
    for i in range(abusers):
        threads.append(threading.Thread(target=abuser_thread,
                                        args=(ctx, i, seed * 1000 + 300 + i, deadline)))
    for f in extra:
        threads.append(threading.Thread(target=f, args=(deadline,)))
    late = {}

    def timed(t):
        target = t._target

        def wrapped(*a):
            try:
                target(*a)
            finally:
                late[t.name] = time.monotonic() - deadline
        t._target = wrapped
    for t in threads:
        t.name = "%s %d" % (getattr(t._target, "__name__", "extra"), len(late) + id(t) % 1000)
        timed(t)
        t.daemon = True
        t.start()
    for t in threads:
        t.join(seconds + 120)
        if t.is_alive():
            ctx.findings.add("run", "a client thread is still running 120 s after its deadline")
            ctx.stop.set()
    if os.environ.get("KVS_LIVE_FUZZ_VERBOSE"):
        print("\nthreads ended after the deadline (s): " + ", ".join(
            "%s %.1f" % kv for kv in sorted(late.items(), key=lambda kv: -kv[1])))
    return shadows


# ---- the RESP owner: an exact model over the Redis protocol ------------------------------

RESP_INT = re.compile(rb"-?[1-9][0-9]{0,18}|0")


def resp_int(v):
    """A stored value's integer as HINCRBY reads it (README, RESP: Redis's
    rules; absent is 0), or None if it is not one."""
    if v is None:
        return 0
    if RESP_INT.fullmatch(v) and -2**63 <= int(v) < 2**63:
        return int(v)
    return None


def stored_bytes(v):
    """A value read through protobuf as RESP reads it back: text and binary
    as their bytes, integers as decimal text."""
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, bool):
        return b"1" if v else b"0"
    if isinstance(v, int):
        return b"%d" % v
    return v


def resp_owned_fields(idx):
    p = b"r%d_" % idx
    return [p + b"%d" % i for i in range(16)] + [p + b"\x00", p + b"\r\n", p + b" ",
                                                  p + b"\xff\xfe", p + b"z" * (511 - len(p))]


def resp_value(rng):
    k = rng.randrange(12)
    if k == 0:
        return b""
    if k in (1, 2):
        return b"%d" % rng.choice([0, 1, -1, 42, 2**63 - 1, -2**63, rng.randrange(-10**6, 10**6)])
    if k == 3:
        return rng.choice([b" 5", b"+5", b"05", b"5.0", b"1e3", b"9223372036854775808",
                           b"-9223372036854775809", b"0x10", b"5 ", b"--1", b"-", b"inf"])
    if k == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))
    if k == 5:
        return rand_text(rng, rng.randrange(1, 20)).encode()
    if k == 6:
        return b"w" * rng.randrange(1000, 6000)
    return b"v%d" % rng.randrange(1000)


def partly(r, ks, sh):
    """A split HSET or HDEL some of whose shards refused their part or were
    down (207 through RESP). Not for the previous values: the Redis door's
    writes ask for value_lengths, priced by lengths (README, Multi-key
    commands), so large values replaced no longer make a part refuse. The
    error names shards, not fields: the fields become unknown."""
    if r[0] == b"-" and b"partly applied" in r[1]:
        for k in ks:
            sh.vals[k] = UNKNOWN
        return True
    return False


def gen_resp_owned(rng, sh):
    """(command, check) on the RESP owner's fields; check(reply) returns an
    error text or None and applies the command to the model."""
    fs = sh.keys
    t = sh.table.encode()
    c = rng.randrange(6)
    if rng.random() < 0.015:  # DEL (or UNLINK) of the whole hash
        def check(r):
            unknown = any(v is UNKNOWN for v in sh.vals.values())
            had = len(sh.vals) > 0
            if r[0] != b":":
                sh.vals = {k: UNKNOWN for k in fs}  # some shards may have emptied theirs
                return None if b"DEL emptied the hash on" in r[1] else "DEL: %r" % (r,)
            sh.vals = {}
            if not unknown and r != (b":", b"1" if had else b"0"):
                return "DEL: %r, model had %d fields" % (r, had)
            return None
        return [rng.choice([b"DEL", b"UNLINK"]), t], check
    if c == 0:  # HSET, distinct fields
        ks = rng.sample(fs, rng.randrange(1, 5))
        vs = [resp_value(rng) for _ in ks]
        cmd = [b"HSET", t] + [x for kv in zip(ks, vs) for x in kv]

        def check(r):
            prev = [sh.get(k) for k in ks]
            if partly(r, ks, sh):
                return None
            if r[0] != b":":
                for k in ks:
                    sh.vals[k] = UNKNOWN
                return "HSET of %d fields: %r" % (len(ks), r)
            for k, v in zip(ks, vs):
                sh.vals[k] = v
            if any(p is UNKNOWN for p in prev):
                return None
            want = sum(p is None for p in prev)
            if int(r[1]) != want:
                return "HSET of %d fields: %s new, model says %d" % (len(ks), r[1], want)
            return None
        return cmd, check
    if c == 1:  # HGET
        k = rng.choice(fs)

        def check(r):
            want = sh.get(k)
            if want is UNKNOWN:
                return None
            if r != (b"$", want):
                return "HGET %s: %s, model %s" % (fmt(k), fmt(r), fmt(want))
            return None
        return [b"HGET", t, k], check
    if c == 2:  # HDEL, distinct fields
        ks = rng.sample(fs, rng.randrange(1, 4))

        def check(r):
            prev = [sh.get(k) for k in ks]
            if partly(r, ks, sh):
                return None
            if r[0] != b":":
                for k in ks:
                    sh.vals[k] = UNKNOWN
                return "HDEL: %r" % (r,)
            for k in ks:
                sh.vals.pop(k, None)
            if any(p is UNKNOWN for p in prev):
                return None
            want = sum(p is not None for p in prev)
            if int(r[1]) != want:
                return "HDEL of %d fields: %s removed, model says %d" % (len(ks), r[1], want)
            return None
        return [b"HDEL", t] + ks, check
    if c == 3:  # HMGET, duplicates allowed
        ks = [rng.choice(fs) for _ in range(rng.randrange(1, 8))]

        def check(r):
            want = [sh.get(k) for k in ks]
            if r[0] != b"*" or r[1] is None or len(r[1]) != len(ks):
                return "HMGET of %d: %s" % (len(ks), fmt(r))
            for k, w, g in zip(ks, want, r[1]):
                if w is not UNKNOWN and g != (b"$", w):
                    return "HMGET %s: %s, model %s" % (fmt(k), fmt(g), fmt(w))
            return None
        return [b"HMGET", t] + ks, check
    # HINCRBY
    k = rng.choice(fs)
    by = rng.choice([1, -1, 3, 1000, 2**62, -2**62, 2**63 - 1, -2**63, 0])

    def check(r):
        prev = sh.get(k)
        if prev is UNKNOWN:
            sh.vals[k] = r[1] if r[0] == b":" else UNKNOWN
            return None
        n = resp_int(prev)
        if n is None or not -2**63 <= n + by < 2**63:
            if r[0] != b"-" or not r[1].startswith(b"ERR "):
                sh.vals[k] = UNKNOWN
                return "HINCRBY %s by %d of %s: %s, want an error" % (fmt(k), by, fmt(prev),
                                                                     fmt(r))
            return None
        if r != (b":", b"%d" % (n + by)):
            sh.vals[k] = UNKNOWN
            return "HINCRBY %s by %d of %s: %s, want %d" % (fmt(k), by, fmt(prev), fmt(r), n + by)
        sh.vals[k] = b"%d" % (n + by)
        return None
    return [b"HINCRBY", t, k, b"%d" % by], check


def resp_owner_thread(ctx, idx, seed, deadline, sh):
    rng = random.Random(seed)
    where = "resp owner %d (seed %d)" % (idx, seed)
    for sock in sessions(ctx, where, deadline, lambda: ctx.connect(ctx.resp_port, 10.0)):
        rd = RespReader(sock)
        pending = []
        try:
            if ctx.users:
                sock.sendall(resp_encode([b"AUTH", ctx.owner_user[0].encode(),
                                          ctx.owner_user[1].encode()]))
                r = rd.reply()
                if r != (b"+", b"OK"):
                    ctx.findings.add(where, "AUTH: %r" % (r,))
                    return
            for _ in range(rng.randrange(1, 20)):
                if time.monotonic() >= deadline:
                    break
                batch = [gen_resp_owned(rng, sh) for _ in range(rng.randrange(1, 16))]
                sock.sendall(b"".join(resp_encode(c) for c, _ in batch))
                pending = list(batch)
                for cmd, check in batch:
                    r = rd.reply()
                    pending.pop(0)
                    ctx.count("resp owner reply %s" % r[0].decode())
                    if ctx.flaky and r[0] == b"-" and b"unavailable" in r[1]:
                        ctx.count("resp owner unavailable")
                        for k in cmd[2:]:
                            if k in sh.keys:
                                sh.vals[k] = UNKNOWN
                        continue
                    msg = check(r)
                    if msg:
                        ctx.findings.add(where, "table %s: %s" % (sh.table, msg))
                rd.compact()
        except (OSError, EOFError) as e:
            ctx.findings.add(where, "connection error %r with %d commands unanswered"
                             % (e, len(pending)))
        except (AssertionError, ValueError) as e:
            ctx.findings.add(where, "malformed reply: %s" % e)
        finally:
            for cmd, _ in pending:
                for k in cmd[2:]:
                    if k in sh.keys:
                        sh.vals[k] = UNKNOWN
            try:
                sock.close()
            except OSError:
                pass


def env_seconds():
    """KVS_LIVE_FUZZ_SECONDS (long mode), or 0 for the CI mode."""
    return float(os.environ.get("KVS_LIVE_FUZZ_SECONDS", "0") or 0)
