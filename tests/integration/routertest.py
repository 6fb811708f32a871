"""Harness for the kvs-router integration tests.

Router starts a real build/kvs-router (which spawns one kvs-node per local
shard) with its own temporary directory (config, data, stderr log), and always
cleans up after itself: the router and every worker started for its config
are killed, the directory is removed.

Placement is computed here independently of the C code: murmur2 is a Python
port of the Kafka Java client's Utils.murmur2 (the default partitioner);
crc32 is Python's zlib.crc32 (librdkafka's consistent partitioner hashes
with zlib's CRC-32), fnv1a a port of Go's hash/fnv FNV-1a with Sarama's sign
handling.

Environment: KVS_BUILD_DIR (default ../../build) locates kvs-router, kvs-node
and py/kvs_pb2.py (through kvstest).
"""
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import zlib

from kvstest import (BUILD_DIR, HOST, Client, LogsOnFailure, Managed, encode, free_port, free_ports,
                     log_of)

START_TIMEOUT = 15.0  # router start (all local workers up) and stop are bounded by this

# ---- placement ------------------------------------------------------------------

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data):
    """Kafka's org.apache.kafka.common.utils.Utils.murmur2, as a signed 32-bit int."""
    data = bytes(data)
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24  # Java >>> on an int: unsigned
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = length & ~3
    rem = length % 4
    if rem == 3:
        h ^= data[tail + 2] << 16
    if rem >= 2:
        h ^= data[tail + 1] << 8
    if rem >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h >= (1 << 31) else h


def partition_of(key, partitions):
    """Kafka's default partitioner: toPositive(murmur2(key)) % partitions."""
    key = key.encode() if isinstance(key, str) else bytes(key)
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def fnv1a(data):
    """32-bit FNV-1a, unsigned."""
    h = 0x811C9DC5
    for b in bytes(data):
        h = ((h ^ b) * 0x01000193) & _MASK
    return h


def partition_by(partitioner, key, partitions):
    """The partition a producer family puts `key` on: "murmur2" (Java,
    librdkafka murmur2_random), "crc32" (librdkafka consistent_random, its
    default), "fnv1a" (Sarama, librdkafka fnv1a_random)."""
    key = key.encode() if isinstance(key, str) else bytes(key)
    if partitioner == "murmur2":
        return partition_of(key, partitions)
    if partitioner == "crc32":
        return zlib.crc32(key) % partitions
    if partitioner == "fnv1a":
        h = fnv1a(key)
        if h & 0x80000000:  # negative as an int32: negated (Go's and librdkafka's abs)
            h = (-h) & _MASK
        return h % partitions
    raise ValueError("no partitioner %r" % (partitioner,))


def shard_of(key, partitions, shards):
    return partition_of(key, partitions) % shards


def keys_by_shard(prefix, n_per_shard, partitions, shards):
    """{shard: [n_per_shard keys "<prefix><i>" that live on that shard]}."""
    out = {s: [] for s in range(shards)}
    i = 0
    while any(len(v) < n_per_shard for v in out.values()):
        k = ("%s%d" % (prefix, i)).encode()
        s = shard_of(k, partitions, shards)
        if len(out[s]) < n_per_shard:
            out[s].append(k)
        i += 1
    return out


# ---- processes ---------------------------------------------------------------------


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def _alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


def procs_for_config(config):
    """{pid: argv} of every live process whose argv has `--config <config>`."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        argv = _cmdline(pid)
        if not argv or pid == os.getpid():
            continue
        for i in range(len(argv) - 1):
            if argv[i] == "--config" and argv[i + 1] == config:
                if _alive(pid):
                    out[pid] = argv
                break
    return out



def router_pids(r):
    """{index: pid} of r's live router processes (the master's children)."""
    out = {}
    for pid, argv in procs_for_config(r.config).items():
        if "--router" in argv:
            out[int(argv[argv.index("--router") + 1])] = pid
    return out


class ClientThreads:
    """Client threads a test starts together and stops by one event: a
    subclass fills self.threads (daemon threads whose loops end once
    self.stop is set)."""

    def __init__(self):
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = []

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self, timeout=30):
        """Stops them; the threads still running after `timeout` s each."""
        self.stop.set()
        stuck = []
        for t in self.threads:
            t.join(timeout)
            if t.is_alive():
                stuck.append(t)
        return stuck


@contextlib.contextmanager
def stopped(*pids):
    """The processes are SIGSTOPped for the block (and always continued)."""
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    try:
        yield
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)

def edit_config(router, old, new):
    """Replaces `old` (which must be there) by `new` in router's config file."""
    with open(router.config) as f:
        text = f.read()
    assert old in text, (old, text)
    with open(router.config, "w") as f:
        f.write(text.replace(old, new))


def config_place(router, text, at=None):
    """"FILE:LINE:COLUMN" of `at` (default: `text`) on the first line of
    router's config file holding `text` (which must be there), as kvs names
    a key's place in its messages."""
    with open(router.config) as f:
        for n, line in enumerate(f, 1):
            if text in line:
                return "%s:%d:%d" % (router.config, n,
                                     line.index(text) + text.index(at or text) + 1)
    raise AssertionError("%r is not in %s" % (text, router.config))


def free_port_range(n):
    """A base port such that base .. base+n-1 are all free on 127.0.0.1 right now."""
    return free_ports(n)


def pipeline_threaded(client, reqs, timeout=30.0):
    """Sends every request from a thread (so a router that stops reading
    cannot deadlock the test) while this thread reads len(reqs) answers.
    Returns the answers in order."""
    data = b"".join(encode(r) for r in reqs)
    err = []

    def sender():
        try:
            client.sock.sendall(data)
        except OSError as e:  # reported by the reader's shortfall
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < len(reqs):
        if time.monotonic() > deadline:
            raise AssertionError("only %d of %d answers within %.0f s"
                                 % (len(out), len(reqs), timeout))
        out.append(client.recv())
    t.join(timeout)
    if err:
        raise AssertionError("sending failed: %r" % (err[0],))
    return out


# ---- router ---------------------------------------------------------------------------


class Router(Managed):
    """A kvs-router process with its own temporary data directory.

    shards/partitions: cluster section; sync: storage.sync; node_listen:
    "127.0.0.1:PORT" (workers also serve TCP on PORT+N) or None; remote:
    {shard: "HOST:PORT"} for cluster.remote; max_frame, max_inflight,
    timeout: limits.max_frame, limits.max_inflight, router.timeout;
    router_yaml: more "key: value" entries of the router section;
    extra_yaml: more top-level YAML appended to the config;
    log: the log section, as YAML flow text ("{level: info}");
    env: more environment variables for the router (and so its workers);
    new_session: start the router in its own session and process group
    (its pid is the group id), as a shell does with a job;
    storage_yaml: more "key: value" entries of the storage section;
    processes: router.processes (1 unless a test asks for more: the
    suite's tests of one router's behaviour stay exact);
    tls: a client ssl.SSLContext that client() connects with (tls.router).
    cluster_yaml: more lines of the cluster section (e.g. a `nodes:` map),
    indented as they go there; node_name: node.name.
    """

    def __init__(self, shards=4, partitions=64, sync="batch", node_listen=None, remote=None,
                 max_frame=None, max_inflight=None, timeout=None, extra_yaml="", start=True,
                 name="router", router_yaml=(), env=None, new_session=False, log="{level: info}",
                 tls=None, cluster_yaml=(), node_name=None, storage_yaml=(), processes=1):
        self.name = name
        self.tls = tls
        self.env = dict(env or {})
        self.new_session = new_session
        self.dir = tempfile.mkdtemp(prefix="kvs-rt-")
        self.data_dir = os.path.join(self.dir, "data")
        self.config = os.path.join(self.dir, "config.yaml")
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.shards = shards
        self.partitions = partitions
        self.remote = dict(remote or {})
        self.port = free_port()
        self.proc = None
        self.log_text = ""
        self.exe = os.path.join(BUILD_DIR, "kvs-router")
        lines = [
            "data_dir: %s" % self.data_dir,
            "cluster:",
            "  shards: %d" % shards,
            "  partitions: %d" % partitions,
        ]
        lines.extend(cluster_yaml)
        if self.remote:
            lines.append("  remote:")
            for s, addr in sorted(self.remote.items()):
                lines.append('    - {shard: %d, address: "%s"}' % (s, addr))
        router = ['listen: "%s:%d"' % (HOST, self.port)]
        if processes is not None:
            router.append("processes: %s" % processes)
        if timeout is not None:
            router.append("timeout: %s" % timeout)
        router.extend(router_yaml)
        lines.append("router: {%s}" % ", ".join(router))
        node = []
        if node_listen is not None:
            node.append('listen: "%s"' % node_listen)
        if node_name is not None:
            node.append("name: %s" % node_name)
        if node:
            lines.append("node: {%s}" % ", ".join(node))
        lines.append("storage: {%s}" % ", ".join(["sync: %s" % sync] + list(storage_yaml)))
        limits = []
        if max_frame is not None:
            limits.append("max_frame: %s" % max_frame)
        if max_inflight is not None:
            limits.append("max_inflight: %d" % max_inflight)
        if limits:
            lines.append("limits: {%s}" % ", ".join(limits))
        lines.append("log: %s" % log)
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n" + extra_yaml)
        if start:
            self.start()

    # ---- addresses and clients
    @property
    def addr(self):
        return (HOST, self.port)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def local_shards(self):
        return [s for s in range(self.shards) if s not in self.remote]

    def socket_path(self, shard):
        return os.path.join(self.data_dir, "shard-%d.sock" % shard)

    def client(self, timeout=10.0, tls=None):
        return Client(self.addr, timeout=timeout, tls=tls or self.tls)

    def worker_client(self, shard, timeout=10.0):
        """A direct connection to local worker `shard` on its unix socket."""
        return Client(self.socket_path(shard), timeout=timeout)

    def shard_of(self, key):
        return shard_of(key, self.partitions, self.shards)

    # ---- processes
    def spawn(self):
        """Starts kvs-router on this config without waiting; returns the Popen."""
        log = open(self.log_path, "ab")
        try:
            env = dict(os.environ, **self.env) if self.env else None
            return subprocess.Popen([self.exe, "--config", self.config],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                    start_new_session=self.new_session)
        finally:
            log.close()

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        # The Redis and metrics ports open just after the kvs port (the
        # metrics one in the master): a test that talks to them at once
        # must not find them closed. Their log lines say when (a probe
        # connection would count as a client), counted from before this
        # start: after a restart the first run's lines are in the log
        # too (seen: a Redis client refused 1 ms before its port opened).
        # Bounded; a test that makes one fail finds that out itself.
        with open(self.config) as f:
            text = f.read()
        lines = []
        m = re.search(r'resp_listen: "([0-9.]+:\d+)"', text)
        if m:
            lines.append("accepting Redis protocol clients on " + m.group(1))
        m = re.search(r'metrics_listen: "([0-9.]+:\d+)"', text)
        if m:
            lines.append("serving metrics on http://%s/metrics" % m.group(1))
        log = self.stderr()
        before = [log.count(line) for line in lines]
        self.proc = self.spawn()
        self.wait_accepting("kvs-router", START_TIMEOUT)
        deadline = time.monotonic() + 5
        while (any(self.stderr().count(line) <= n for line, n in zip(lines, before))
               and time.monotonic() < deadline and self.proc.poll() is None):
            time.sleep(0.02)

    def workers(self):
        """{shard: pid} of the live kvs-node processes running this config."""
        out = {}
        for pid, argv in procs_for_config(self.config).items():
            if not os.path.basename(argv[0]).startswith("kvs-node"):
                continue
            if "--shard" in argv:
                i = argv.index("--shard")
                if i + 1 < len(argv) and argv[i + 1].isdigit():
                    out[int(argv[i + 1])] = pid
        return out

    def worker_pid(self, shard):
        return self.workers().get(shard)

    def wait_worker(self, shard, not_pid=None, timeout=10.0):
        """Waits until a worker for `shard` with a pid other than not_pid runs;
        returns its pid (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.worker_pid(shard)
            if pid is not None and pid != not_pid:
                return pid
            time.sleep(0.01)
        return None

    def kill_worker(self, shard):
        """SIGKILLs the worker of `shard`; returns its pid."""
        pid = self.worker_pid(shard)
        if pid is None:
            raise RuntimeError("no worker for shard %d:\n%s" % (shard, self.stderr()))
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_all_gone(self, timeout=START_TIMEOUT):
        """True once no process runs this config (router and workers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not procs_for_config(self.config) and not self.alive():
                return True
            time.sleep(0.02)
        return False

    stop_timeout = START_TIMEOUT

    def kill_all(self):
        """SIGKILLs the router and every process started for this config."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):
            left = procs_for_config(self.config)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p) for p in left):
                time.sleep(0.01)

    def _kill(self):
        self.kill_all()


class RouterTestCase(LogsOnFailure, unittest.TestCase):
    """Base class: self.router(...) starts a Router that is always cleaned up;
    if the test fails, every router's stderr (with its workers') is printed."""

    def router(self, start=True, router_class=None, **kw):
        r = (router_class or Router)(start=False, **kw)
        self._routers.append(r)
        self.addCleanup(r.close)
        if start:
            r.start()
        return r

    def start_fixtures(self):
        self._routers = []

    def failure_logs(self):
        for r in self._routers:
            yield "kvs-router %s stderr" % r.name, log_of(r)

    def assertOk(self, resp):
        self.assertEqual(resp.status, 200, resp.message)

    def assertUnavailable(self, resp, shard):
        """503 whose message names `shard`."""
        self.assertEqual(resp.status, 503, resp.message)
        self.assertIn("shard %d" % shard, resp.message)
