#!/usr/bin/env python3
"""kvs_chaos.py: faults at random under write load, then a check that no
acknowledged write was lost. An exploratory tool for developers, not a CI
test (a run takes minutes and its faults are random; the seed is printed
and --seed repeats a run's choices, not its timing).

  tests/chaos/kvs_chaos.py [--seconds N] [--seed N] [--replicas] [--changes]
                           [--build DIR]

One node by default (2 shards, 2 router processes, a table bound to a
topic on kvs-mock-kafka and one bound to none); --replicas runs three
nodes (4 shards, 2 replicas each) over one mock cluster, with writers on
every node; --changes (with --replicas) also rewrites every node's
cluster.nodes to the next of four maps, each keeping every shard served,
and reloads the nodes in random order.

Writers own their keys and write increasing values to them; each
acknowledged write is read back at once on the same connection (the
session's read-your-writes). Faults, every 0.5-2.5 s: kill -9 of a worker
or a router process (or, --replicas, a whole node, restarted 2 s later),
every broker down for 0.5-3 s, broker answers delayed 50-1500 ms, SIGHUP,
a worker stopped (SIGSTOP) for 0.2-2 s. At the end, with the brokers back,
every key is read through every node: its value must be at least the last
acknowledged one and at most the last attempted one. Exits 0 when nothing
was lost, no read was stale, every node ran on and stopped with 0; else 1.

Runs the binaries of --build (default build/; a sanitizer build works the
same) on loopback, in temporary directories that are removed at the end.
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

TOPIC, PARTS = "users", 8
LAYOUTS = [{"a": [0, 1], "b": [0, 2, 3], "c": [1, 2, 3]},
           {"a": [0, 1, 2], "b": [0, 2, 3], "c": [1, 3]},
           {"a": [0, 1, 3], "b": [0, 2], "c": [1, 2, 3]},
           {"a": [0, 1, 2, 3], "b": [0, 2, 3], "c": [1, 2, 3]}]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--replicas", action="store_true")
    p.add_argument("--changes", action="store_true")
    p.add_argument("--build", default=os.path.join(HERE, "..", "..", "build"))
    a = p.parse_args()
    if a.changes and not a.replicas:
        p.error("--changes needs --replicas")
    return a


class Chaos:
    def __init__(self, args):
        self.args = args
        self.m = MockKafka({TOPIC: PARTS}, control=True)
        self.nodes, self.bases = {}, {}
        self.layout = 0
        if args.replicas:
            self.start_replicas()
        else:
            yaml = ingest_yaml(self.m.bootstrap, [(TOPIC, "users", "string", PARTS)],
                               properties={"reconnect.backoff.max.ms": "500"})
            self.nodes["a"] = Router(shards=2, partitions=64, processes=2, timeout="3s",
                                     start=False, extra_yaml=yaml)
            self.nodes["a"].start()
        self.down = {}
        self.stop = False
        self.lock = threading.Lock()
        self.acked, self.attempted = {}, {}
        self.counts, self.errors = {}, []

    def start_replicas(self):
        used = []
        for n in LAYOUTS[0]:
            b = free_ports(4)
            while any(abs(b - u) < 4 for u in used):
                b = free_ports(4)
            self.bases[n] = b
            used.append(b)
        for name in LAYOUTS[0]:
            yaml = ingest_yaml(self.m.bootstrap, [(TOPIC, "users", "string", PARTS)], "kvs",
                               {"reconnect.backoff.max.ms": "500"})
            self.nodes[name] = Router(shards=4, partitions=PARTS, start=False, name=name,
                                      timeout="3s", cluster_yaml=self.map_lines(LAYOUTS[0]),
                                      node_name=name, processes=1, extra_yaml=yaml)
        for r in self.nodes.values():
            r.start()

    def map_lines(self, layout):
        return ["  nodes:"] + ['    - {name: %s, address: "127.0.0.1:%d", shards: [%s]}'
                                % (n, self.bases[n], ", ".join(map(str, s)))
                                for n, s in layout.items()]

    def set_map(self, r, layout):
        with open(r.config) as f:
            lines = [ln for ln in f.read().splitlines() if not ln.startswith("    - {name: ")]
        at = lines.index("  nodes:") + 1
        lines[at:at] = self.map_lines(layout)[1:]
        with open(r.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def bump(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def writer(self, tid, name, rnd):
        tables = ["users"] if self.args.replicas else ["users", "direct"]
        keys = [(tables[i % len(tables)], b"w%d-k%d" % (tid, i)) for i in range(20)]
        seq = {k: 0 for k in keys}
        c = None
        while not self.stop:
            k = rnd.choice(keys)
            seq[k] += 1
            with self.lock:
                self.attempted[k] = seq[k]
            try:
                if c is None:
                    c = Client(("127.0.0.1", self.nodes[name].port), timeout=10)
                resp = c.hset(k[0], k[1], str(seq[k]))
            except (OSError, EOFError):
                c = None
                self.bump("connection lost")
                time.sleep(0.05)
                continue
            if resp.status != 200:
                self.bump("write %d" % resp.status)
                time.sleep(0.02)
                continue
            with self.lock:
                self.acked[k] = seq[k]
            self.bump("acknowledged")
            try:
                g = c.hget(k[0], k[1])
            except (OSError, EOFError):
                c = None
                continue
            if g.status == 200 and int(pyval(g.values[0])) < seq[k]:
                self.errors.append("stale read through %s of %r: wrote %d, read %s"
                                   % (name, k, seq[k], pyval(g.values[0])))
            self.bump("read back" if g.status == 200 else "read back %d" % g.status)

    def fault(self, rnd):
        names = list(self.nodes)
        n = rnd.choice(names)
        r = self.nodes[n]
        kinds = ["kill_worker", "kill_router", "broker_blip", "hup", "stop_worker", "rtt"]
        if self.args.replicas:
            kinds[1] = "kill_node"
        if self.args.changes:
            kinds += ["change", "change"]
        a = rnd.choice(kinds)
        if n in self.down and a not in ("broker_blip", "rtt", "change"):
            return a + " (skipped: node down)"
        if a == "kill_worker":
            w = r.workers()
            if w:
                os.kill(rnd.choice(sorted(w.values())), signal.SIGKILL)
        elif a == "kill_router":
            out = subprocess.run(["pgrep", "-f", "%s.*--router" % r.config],
                                 capture_output=True, text=True).stdout.split()
            if out:
                os.kill(int(rnd.choice(out)), signal.SIGKILL)
        elif a == "kill_node":
            if not self.down:
                r.proc.kill()
                r.proc.wait()
                self.down[n] = time.monotonic()
        elif a == "broker_blip":
            self.m.ctl("broker-down all")
            time.sleep(rnd.uniform(0.5, 3))
            self.m.ctl("broker-up all")
        elif a == "hup":
            r.proc.send_signal(signal.SIGHUP)
        elif a == "stop_worker":
            w = r.workers()
            if w:
                pid = rnd.choice(sorted(w.values()))
                os.kill(pid, signal.SIGSTOP)
                time.sleep(rnd.uniform(0.2, 2))
                os.kill(pid, signal.SIGCONT)
        elif a == "rtt":
            self.m.ctl("rtt all %d" % rnd.choice([50, 300, 1500]))
            time.sleep(rnd.uniform(0.5, 2))
            self.m.ctl("rtt all 0")
        elif a == "change":
            self.layout = (self.layout + 1) % len(LAYOUTS)
            rnd.shuffle(names)
            for nn in names:
                self.set_map(self.nodes[nn], LAYOUTS[self.layout])
                if nn not in self.down:
                    self.nodes[nn].proc.send_signal(signal.SIGHUP)
                time.sleep(rnd.uniform(0, 0.5))
        return a

    def run(self):
        rnd = random.Random(self.args.seed)
        writers = ["a", "b", "c", "a"] if self.args.replicas else ["a"] * 4
        threads = [threading.Thread(target=self.writer, args=(i, n, random.Random(rnd.random())))
                   for i, n in enumerate(writers)]
        for t in threads:
            t.start()
        done = {}
        end = time.monotonic() + self.args.seconds
        while time.monotonic() < end:
            time.sleep(rnd.uniform(0.5, 2.5))
            for n, when in list(self.down.items()):
                if time.monotonic() - when > 2:
                    self.nodes[n].start()
                    del self.down[n]
            try:
                a = self.fault(rnd)
            except Exception as e:  # a fault that could not be made is no finding
                a = "fault failed: %r" % e
            done[a] = done.get(a, 0) + 1
            for n, r in self.nodes.items():
                if n not in self.down and r.proc.poll() is not None:
                    self.errors.append("node %s exited with %r" % (n, r.proc.returncode))
                    self.down[n] = time.monotonic()
        self.stop = True
        for t in threads:
            t.join(30)
        self.m.ctl("broker-up all")
        self.m.ctl("rtt all 0")
        for n in list(self.down):
            self.nodes[n].start()
        print("faults:", dict(sorted(done.items())))
        print("writes:", dict(sorted(self.counts.items())))
        return self.check()

    def check(self):
        bad = []
        for name, r in self.nodes.items():
            for k, want in sorted(self.acked.items()):
                def read():
                    try:
                        with Client(("127.0.0.1", r.port), timeout=10) as c:
                            x = c.hget(k[0], k[1])
                        return int(pyval(x.values[0])) if x.status == 200 else None
                    except (OSError, EOFError):
                        return None
                wait_until(lambda: (read() or 0) >= want, 30, 0.2)
                got = read()
                if got is None or got < want or got > self.attempted[k]:
                    bad.append("through %s, %r: acknowledged %d, attempted %d, read %r"
                               % (name, k, want, self.attempted[k], got))
        print("keys:", len(self.acked), "x nodes:", len(self.nodes), "lost or wrong:", len(bad))
        for line in (bad + self.errors)[:20]:
            print("  " + line)
        codes = {n: r.stop(timeout=40) for n, r in self.nodes.items()}
        print("stop:", codes)
        for n, r in self.nodes.items():
            log = r.stderr()
            if self.args.changes:
                print("node %s: membership changes complete %d, failed %d"
                      % (n, log.count("membership change complete"),
                         log.count("membership change failed")))
            for pat in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
                if pat in log:
                    self.errors.append("node %s logged %r" % (n, pat))
        ok = not bad and not self.errors and all(v == 0 for v in codes.values())
        print("PASS" if ok else "FAIL: " + "; ".join(self.errors[:5]))
        return ok

    def close(self):
        for r in self.nodes.values():
            r.close()
        self.m.close()


def main():
    args = parse_args()
    os.environ["KVS_BUILD_DIR"] = os.path.abspath(args.build)
    global Client, pyval, free_ports, Router, MockKafka, ingest_yaml, wait_until
    from kvstest import Client, pyval, free_ports
    from routertest import Router
    from kafkatest import MockKafka, ingest_yaml, wait_until
    print("seed %d, %s s, %s" % (args.seed, args.seconds,
                                 "3 replica nodes" + (" with membership changes"
                                                      if args.changes else "")
                                 if args.replicas else "1 node"), flush=True)
    chaos = Chaos(args)
    try:
        ok = chaos.run()
    finally:
        chaos.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
