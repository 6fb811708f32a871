#!/usr/bin/env python3
"""Fairness under floods, against any server that speaks RESP (a kvs
router's resp_listen, or redis-server): N clients pipeline without reading
for a few seconds, while one more client sends one HSET at a time and
times each answer. Prints the command and the newcomer's latency
percentiles.

  tests/bench/flood_latency.py PORT [--clients 30] [--kind del|hset|hmset|hgetall|hget]
                               [--seconds 4]

--kind del:  each flooder sends 40 pairs of EXISTS and DEL of 1,024 keys,
             over and over;
--kind hset: each sends 8,192 HSETs of 5,000 hashes, over and over;
--kind hmset: each sends 64 HSETs of 1,000 fields of one hash, over and over;
--kind hgetall: one hash of 100,000 fields is made first; each sends 256
             HGETALLs of it, over and over, and the newcomer HGETs one of
             its fields (the same shard's work) instead of its HSET.
--kind hget: the same hash; each sends 8,192 HGETs of its fields per write
             and reads the answers (a deep pipeline, not a stalled one:
             the flooders' answers a second are printed too), and the
             newcomer HGETs one of its fields.
Loopback only; every socket has a timeout, and the run ends by itself.
"""
import argparse
import socket
import sys
import threading
import time


def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def make_big(port):
    """The hash the hgetall flood reads: 100,000 fields of 16 bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    for i in range(0, 100000, 10000):
        pairs = [x for j in range(i, i + 10000) for x in ("f%d" % j, "v" * 16)]
        s.sendall(command("HSET", "big", *pairs))
        got = b""
        while not got.endswith(b"\r\n"):
            chunk = s.recv(100)
            if not chunk:
                sys.exit("the server closed the connection that makes the hash")
            got += chunk
    s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--kind", choices=("del", "hset", "hmset", "hgetall", "hget"), default="del")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--no-newcomer", action="store_true",
                    help="the flooders alone (--kind hget: what they get by themselves, "
                    "10.5 s after the hash was made)")
    o = ap.parse_args()
    print("# %s" % " ".join([sys.argv[0]] + sys.argv[1:]), flush=True)
    if o.kind == "del":
        keys = ["k%d" % i for i in range(1024)]
        burst = (command("EXISTS", *keys) + command("DEL", *keys)) * 40
    elif o.kind == "hset":
        burst = b"".join(command("HSET", "h%d" % (i % 5000), "f", "v") for i in range(8192))
    elif o.kind == "hmset":
        pairs = [x for i in range(1000) for x in ("f%d" % i, "v")]
        burst = b"".join(command("HSET", "m%d" % (i % 8), *pairs) for i in range(64))
    elif o.kind == "hgetall":
        make_big(o.port)
        burst = command("HGETALL", "big") * 256
    else:
        make_big(o.port)
        burst = b"".join(command("HGET", "big", "f%d" % (i * 12 % 100000)) for i in range(8192))
    if o.no_newcomer and o.kind in ("hgetall", "hget"):
        time.sleep(10.5)  # a kvs router shares slices for 10 s after another client ran
    reads = o.kind in ("hgetall", "hget")
    probe = command("HGET", "big", "f1") if reads else command("HSET", "newcomer", "f", "v")
    stop = time.monotonic() + o.seconds
    socks = []
    drained = [0]

    def drain(s):
        """Reads a flooder's answers (--kind hget): 23 bytes each."""
        try:
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    return
                drained[0] += len(chunk)
        except OSError:
            pass

    def flood():
        try:
            s = socket.create_connection(("127.0.0.1", o.port), timeout=5)
        except OSError:
            return
        socks.append(s)
        if o.kind == "hget":
            threading.Thread(target=drain, args=(s,), daemon=True).start()
        try:
            while time.monotonic() < stop:
                s.sendall(burst)
        except OSError:  # a timeout once the server stops reading it, or a close
            pass

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(o.clients)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    c = socket.create_connection(("127.0.0.1", o.port), timeout=10)
    lat = []
    if o.no_newcomer:
        time.sleep(max(0.0, stop - time.monotonic()))
        lat.append(0.0)
    while time.monotonic() < stop - 0.2:
        t0 = time.perf_counter()
        c.sendall(probe)
        got = b""
        while not got.endswith(b"\r\n") or got.startswith(b"$") and got.count(b"\r\n") < 2:
            try:
                chunk = c.recv(100)
            except socket.timeout:
                sys.exit("the newcomer's request had no answer within 10 s (after %d answered)"
                         % len(lat))
            if not chunk:
                sys.exit("the server closed the newcomer's connection")
            got += chunk
        lat.append(time.perf_counter() - t0)
    c.close()
    for s in socks:
        s.close()
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(len(lat) * p))] * 1e3

    print("newcomer %ss: %d, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.1f ms"
          % ("HGET" if reads else "HSET", len(lat), pct(0.5), pct(0.9), pct(0.99),
             lat[-1] * 1e3))
    if o.kind == "hget":
        print("flooders: %.0f answers/s" % (drained[0] / 23 / o.seconds))


if __name__ == "__main__":
    main()
