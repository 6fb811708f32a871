"""kvs-router start-up and shutdown when something is wrong: a config error
found at load (by position, before any worker starts), a worker whose
configuration or data files can never work (not restarted: the router
stops with EX_CONFIG and the worker's reason), a signal after the readiness timeout,
and a remote shard whose name takes seconds to resolve (no client waits
for it).

Every test starts real kvs-router processes on loopback through
routertest.Router. Two use helpers built next to the binaries: a fake
kvs-node (a Python script placed beside a copy of kvs-router, which spawns
the kvs-node of its own directory) and libkvs_test_slow_resolver.so, an
LD_PRELOAD getaddrinfo shim that makes one name slow (see its source).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from kvstest import (BUILD_DIR, HOST, Node, black_hole, pyval, req_hget, req_hset,
                     slow_resolver_env)
from routertest import (RouterTestCase, edit_config, free_port, keys_by_shard, procs_for_config,
                        shard_of)

EX_CONFIG = 78
SLOW_HOST = "slow-shard.kvs.test"
# How long each lookup of SLOW_HOST takes: twice the 0.5 s within which a
# pair of requests must be answered meanwhile, so a lookup that blocked the
# loop would hold up the probes sent at its start for about 1 s.
SLOW_MS = 1000


def wait_until(pred, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    return pred()


class LifecycleTest(RouterTestCase):
    # ---- helpers --------------------------------------------------------------

    def exits_at_once(self, r, timeout=10):
        """Spawns r's router, which must exit by itself; returns (rc, log)."""
        r.proc = r.spawn()
        try:
            rc = r.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail("kvs-router still running after %d s:\n%s" % (timeout, r.stderr()))
        return rc, r.stderr()

    def assert_nothing_started(self, r):
        self.assertEqual(procs_for_config(r.config), {}, "workers were started")
        self.assertNotIn("started shard", r.stderr())
        with self.assertRaises(OSError):
            socket.create_connection(r.addr, timeout=1).close()

    def set_config_line(self, r, key, value):
        """Replaces the top-level `key:` line of r's config."""
        with open(r.config) as f:
            lines = f.read().split("\n")
        i = next(i for i, line in enumerate(lines) if line.startswith(key + ":"))
        lines[i] = "%s: %s" % (key, value)
        with open(r.config, "w") as f:
            f.write("\n".join(lines))
        return i + 1

    # ---- config errors at load ------------------------------------------------------

    def test_long_data_dir_is_a_config_error(self):
        """A data_dir whose worker sockets do not fit a unix socket address
        (107 bytes) used to abort the router (SIGABRT) after it started."""
        r = self.router(start=False, shards=4)
        # <data_dir>/shard-3.sock must be 108 bytes: one too many.
        data_dir = os.path.join(r.dir, "")
        data_dir += "d" * (108 - len("/shard-3.sock") - len(data_dir))
        line = self.set_config_line(r, "data_dir", data_dir)
        rc, log = self.exits_at_once(r)
        self.assertEqual(rc, EX_CONFIG, log)
        self.assertRegex(log, re.escape(r.config) + r":%d:11: data_dir is too long for the "
                         r"workers' unix sockets: \".*/shard-3\.sock\" is 108 bytes, a unix "
                         r"socket path may have at most 107" % line)
        self.assert_nothing_started(r)
        # One byte shorter, the same node starts and serves.
        self.set_config_line(r, "data_dir", data_dir[:-1])
        r.start()
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
        self.assertEqual(r.stop(), 0)

    def test_bad_listen_address_is_refused_at_load(self):
        """router.listen 300.1.1.1:PORT used to pass validation and fail only
        after every worker had started."""
        r = self.router(start=False, shards=2)
        with open(r.config) as f:
            text = f.read()
        text = text.replace('listen: "%s:%d"' % (HOST, r.port), 'listen: "300.1.1.1:%d"' % r.port)
        with open(r.config, "w") as f:
            f.write(text)
        line = 1 + text.split("\n").index(next(x for x in text.split("\n") if "300.1" in x))
        rc, log = self.exits_at_once(r)
        self.assertEqual(rc, EX_CONFIG, log)
        self.assertRegex(log, re.escape(r.config) + r":%d:\d+: router\.listen must be HOST:PORT "
                         r"or \[IPV6\]:PORT \(got \"300\.1\.1\.1:%d\"\): not a valid IPv4 address"
                         % (line, r.port))
        self.assert_nothing_started(r)

    def test_a_config_that_never_ends_is_refused_at_its_size_limit(self):
        """A config path that is not a file of sane size (/dev/zero) used to
        be copied into the master's snapshot until memory ran out, at start
        and at a reload (the master's loop stuck meanwhile). It is refused
        once past the loader's 64 MiB limit: at start with 78, at a reload
        with the running configuration unchanged."""
        out = subprocess.run([os.path.join(BUILD_DIR, "kvs-router"), "--config", "/dev/zero"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, EX_CONFIG, out.stderr)
        self.assertIn("/dev/zero: cannot read: File too large", out.stderr)
        r = self.router(shards=2)
        saved = r.config + ".saved"
        os.rename(r.config, saved)
        os.symlink("/dev/zero", r.config)
        r.proc.send_signal(signal.SIGHUP)
        refused = "reload: %s: cannot read: File too large; the running configuration is " \
                  "unchanged" % r.config
        ok = wait_until(lambda: refused in r.stderr(), 20)
        os.unlink(r.config)
        os.rename(saved, r.config)
        self.assertTrue(ok, r.stderr()[-3000:])
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
        self.assertEqual(r.stop(), 0)

    def test_check_loads_the_config_and_its_tls_material_and_starts_nothing(self):
        """kvs-router --check (the systemd unit's ExecReload runs it before
        SIGHUP): 0 for a file that loads; 78 and the loader's error for one
        that does not, or whose TLS key cannot be read; nothing starts."""
        router = os.path.join(BUILD_DIR, "kvs-router")
        r = self.router(start=False, shards=2)

        def check():
            return subprocess.run([router, "--config", r.config, "--check"],
                                  capture_output=True, text=True, timeout=30)
        out = check()
        self.assertEqual((out.returncode, out.stdout, out.stderr),
                         (0, "kvs-router: %s: the configuration loads\n" % r.config, ""))
        with open(r.config) as f:
            good = f.read()
        with open(r.config, "a") as f:
            f.write("no_such_key: 1\n")
        out = check()
        self.assertEqual((out.returncode, out.stdout), (EX_CONFIG, ""), out.stderr)
        self.assertRegex(out.stderr, r"^kvs-router: " + re.escape(r.config) +
                         r":\d+:\d+: .*no_such_key")
        missing = os.path.join(r.dir, "no-such.key")
        with open(r.config, "w") as f:
            f.write(good + "tls:\n  cert: %s\n  key: %s\n  router: {enabled: true}\n"
                    % (missing.replace(".key", ".crt"), missing))
        out = check()
        self.assertEqual(out.returncode, EX_CONFIG, out.stderr)
        # OpenSSL's "system lib" said as the system call's error
        self.assertIn("tls.router.cert %s: cannot load: No such file or directory"
                      % missing.replace(".key", ".crt"), out.stderr)
        # what a start refuses beyond the file: a plugin that cannot be
        # loaded, a data_dir every user may write to
        with open(r.config, "w") as f:
            f.write(good + "plugins:\n  - {path: \"%s\"}\n" % os.path.join(r.dir, "no-such.so"))
        out = check()
        self.assertEqual(out.returncode, EX_CONFIG, out.stderr)
        self.assertIn("plugins[0]", out.stderr)
        self.assertIn("cannot be loaded", out.stderr)
        with open(r.config, "w") as f:
            f.write(good)
        os.makedirs(r.data_dir, exist_ok=True)
        os.chmod(r.data_dir, 0o777)
        out = check()
        self.assertEqual(out.returncode, EX_CONFIG, out.stderr)
        self.assertRegex(out.stderr, r"%s:1:\d+: data_dir .* is writable by every user"
                         % re.escape(r.config))  # where the file set it
        os.chmod(r.data_dir, 0o700)
        self.assertEqual(check().returncode, 0)
        for bad in (["--check", "--print", "data_dir"], ["--check", "--router", "0"]):
            out = subprocess.run([router, "--config", r.config] + bad, capture_output=True,
                                 text=True, timeout=30)
            self.assertEqual(out.returncode, 2, out.stderr)
        out = subprocess.run([router, "--config", r.config, "--print", "listen"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("--print listen: only data_dir can be printed", out.stderr)
        self.assert_nothing_started(r)

    def reload_refused(self, make, remove, refused_router, refused_node):
        """Replaces the config file of a node (kvs-router) and of a kvs-node
        running alone with what make(path) creates, sends both SIGHUP, and
        asserts that each logs its refusal (refused_*, with %s for the
        path) and serves on with its running configuration."""
        r = self.router(shards=2)
        node = Node(extra_yaml="")
        self.addCleanup(node.close)
        for path in (r.config, node.config):
            os.rename(path, path + ".saved")
            make(path)
        try:
            r.proc.send_signal(signal.SIGHUP)
            node.proc.send_signal(signal.SIGHUP)
            ok = wait_until(lambda: refused_router % r.config in r.stderr(), 5)
            ok_node = wait_until(lambda: refused_node % node.config in node.stderr(), 5)
        finally:
            for path in (r.config, node.config):
                remove(path)
                os.rename(path + ".saved", path)
        self.assertTrue(ok, r.stderr()[-3000:])
        self.assertTrue(ok_node, node.stderr()[-3000:])
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
        with node.client() as c:
            self.assertEqual(c.ping().status, 200)
        self.assertEqual(r.stop(), 0)

    def test_a_config_path_that_is_a_directory_is_refused_at_start_and_at_a_reload(self):
        """A config path that is a directory (--config /etc/kvs/, or the
        file replaced by one): the master's copy into its snapshot took
        read's EISDIR for a write of nothing and read again, for ever, at
        100% CPU without a word: at start, and at a reload in the master's
        loop (no signal heard, no worker supervised). It is refused now:
        at start with 78, at a reload with the running configuration
        unchanged; a kvs-node running alone refuses it too."""
        d = tempfile.mkdtemp(prefix="kvs-cfgdir-")
        self.addCleanup(os.rmdir, d)
        out = subprocess.run([os.path.join(BUILD_DIR, "kvs-router"), "--config", d],
                             capture_output=True, text=True, timeout=10)
        self.assertEqual(out.returncode, EX_CONFIG, out.stderr)
        self.assertIn("%s: cannot read: Is a directory" % d, out.stderr)
        self.reload_refused(os.mkdir, os.rmdir,
                            "reload: %s: cannot read: Is a directory; the running configuration "
                            "is unchanged", "%s: cannot read: Is a directory")

    def test_a_config_file_others_may_write_or_read_secrets_in_is_warned_of(self):
        """A config file writable by others (who then decide what the node
        runs: plugins load code) or readable by others while it holds
        secrets (token hashes, Kafka passwords) is warned of, as ssh refuses
        such key files: at start and at a reload of kvs-router (the master,
        once, not each worker) and at the start of a kvs-node running
        alone. The node starts and serves all the same; a file only its
        user may read and write gets no warning."""
        writable = "%s is writable by its group and others (mode 0666): whoever may write it " \
                   "decides what this node runs (plugins load code, users grant rights); " \
                   "chmod go-w %s"
        r = self.router(shards=2, start=False)
        os.chmod(r.config, 0o666)
        r.start()
        self.assertEqual(r.stderr().count(writable % (r.config, r.config)), 1, r.stderr())
        self.assertIn("router WARN  " + writable % (r.config, r.config), r.stderr())
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
        os.chmod(r.config, 0o600)
        r.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "configuration reloaded" in r.stderr(), 5))
        self.assertEqual(r.stderr().count("is writable by"), 1)  # none at a good reload
        os.chmod(r.config, 0o646)
        r.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "is writable by others (mode 0646)" in r.stderr(), 5),
                        r.stderr()[-3000:])
        self.assertEqual(r.stop(), 0)
        secrets = "kafka: {properties: {sasl.password: hunter2}}\n"
        node = Node(extra_yaml=secrets, start=False)
        self.addCleanup(node.close)
        os.chmod(node.config, 0o644)
        node.start()
        self.assertIn("node[0] WARN  %s is readable by others (mode 0644) and holds secrets "
                      "(kafka.properties sasl.password); chmod o-r %s" % (node.config, node.config),
                      node.stderr())
        self.assertNotIn("hunter2", node.stderr())
        with node.client() as c:
            self.assertEqual(c.ping().status, 200)

    def test_a_config_path_that_is_a_pipe_is_refused_at_a_reload_not_waited_for(self):
        """The config path became a FIFO (or was a pipe from the start:
        --config <(...)): a reload's open blocked until some writer came,
        in the master's loop, so it answered no signal (a SIGTERM went
        unheard for good) and supervised nothing. A reload refuses it now;
        so does a kvs-node running alone."""
        refused = ("reload: %s: a pipe, not a file: a reload reads a file and does not wait "
                   "for a writer")
        self.reload_refused(os.mkfifo, os.unlink, refused, refused)

    # ---- a worker whose configuration can never work ----------------------------------

    def test_worker_config_error_stops_the_router_with_ex_config(self):
        """Workers that refuse their data directory (created for another
        placement) exit with EX_CONFIG; restarting them cannot help, so the
        router stops at once with 78 and the reason, instead of restarting
        them with backoff forever."""
        r = self.router(shards=2, partitions=16)
        with r.client() as c:
            self.assertOk(c.hset("t", "k", "v"))
        self.assertEqual(r.stop(), 0)
        with open(r.config) as f:
            text = f.read()
        with open(r.config, "w") as f:
            f.write(text.replace("partitions: 16", "partitions: 32"))
        rc, log = self.exits_at_once(r, timeout=15)
        self.assertEqual(rc, EX_CONFIG, log)
        why = (r"\S+/shard-\d was created with placement \"shards=2 partitions=16\" but this worker "
               r"has placement \"shards=2 partitions=32\"; refusing to open it")
        self.assertRegex(log, r"node\[\d\] ERROR +" + why)
        self.assertRegex(log, r"router ERROR +shard \d \(pid \d+\) exited with status 78 \(a "
                              r"fatal error: not restarting it\): " + why)
        last = log.rstrip("\n").split("\n")[-1]
        self.assertRegex(last, r"router ERROR +stopped: shard \d cannot run with this "
                               r"configuration: " + why + r".* \(kvs-node exited with status 78, "
                               r"EX_CONFIG; fix what it names and start again\)$")
        self.assertNotIn("restarting shard", log)
        self.assertTrue(r.wait_all_gone(10), "processes left: %r" % procs_for_config(r.config))

    def test_a_data_file_cut_short_stops_the_router_with_ex_config(self):
        """A data.mdb truncated while the node is stopped: its worker used to
        start, die of SIGBUS at the first read of a missing page, and be
        restarted for that again and again (each client read of a lost key
        killed it). It now refuses at open, naming the file and both
        sizes, and the router stops with 78 and that reason."""
        r = self.router(shards=1, partitions=8)
        with r.client() as c:
            for i in range(200):
                self.assertOk(c.hset("t", "k%d" % i, "v" * 20000))
        self.assertEqual(r.stop(), 0)
        data = os.path.join(r.dir, "data", "shard-0", "data.mdb")
        size = os.stat(data).st_size
        self.assertGreater(size, 2 << 20)
        os.truncate(data, 1 << 20)
        rc, log = self.exits_at_once(r, timeout=15)
        self.assertEqual(rc, EX_CONFIG, log)
        why = (re.escape(data) + r" is 1048576 bytes, but the pages its environment uses take "
               r"\d+ bytes: the file was cut short")
        self.assertRegex(log, r"node\[0\] ERROR +" + why)
        last = log.rstrip("\n").split("\n")[-1]
        self.assertRegex(last, r"router ERROR +stopped: shard 0 cannot run with this "
                               r"configuration: " + why + r".*EX_CONFIG; fix what it names")
        self.assertNotIn("SIGBUS", log)
        self.assertNotIn("restarting shard", log)
        self.assertTrue(r.wait_all_gone(10), "processes left: %r" % procs_for_config(r.config))

    # ---- readiness timeout -----------------------------------------------------------

    def fake_node_router(self, ready_timeout):
        """A Router whose kvs-router copy spawns a fake kvs-node that never
        answers and, on SIGTERM, takes 1.5 s to exit."""
        r = self.router(start=False, shards=1, router_yaml=["ready_timeout: %s" % ready_timeout])
        bindir = os.path.join(r.dir, "bin")
        os.mkdir(bindir)
        r.exe = os.path.join(bindir, "kvs-router")
        shutil.copy2(os.path.join(BUILD_DIR, "kvs-router"), r.exe)
        fake = os.path.join(bindir, "kvs-node")
        with open(fake, "w") as f:
            f.write("#!%s\n"
                    "import signal, sys, time\n"
                    "def term(*_):\n"
                    "    sys.stderr.write('fake kvs-node: SIGTERM, exiting in 1.5 s\\n')\n"
                    "    time.sleep(1.5)\n"
                    "    sys.exit(0)\n"
                    "signal.signal(signal.SIGTERM, term)\n"
                    "time.sleep(30)\n" % sys.executable)
        os.chmod(fake, 0o755)
        return r

    def test_sigterm_after_the_ready_timeout(self):
        """The readiness timeout starts the shutdown; a SIGTERM while it is
        still stopping the workers used to stop the supervisor a second time
        (an assertion in debug builds)."""
        r = self.fake_node_router("300ms")
        r.proc = r.spawn()
        self.assertTrue(wait_until(lambda: "fake kvs-node: SIGTERM" in r.stderr(), 10),
                        "the readiness timeout did not stop the worker:\n" + r.stderr())
        r.proc.send_signal(signal.SIGTERM)
        try:
            rc = r.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.fail("kvs-router did not exit:\n" + r.stderr())
        log = r.stderr()
        self.assertEqual(rc, 1, log)  # it never became ready: a failed start
        self.assertIn("local shards did not come up within router.ready_timeout (300 ms", log)
        self.assertIn("SIGTERM while shutting down: closing clients now", log)
        self.assertEqual(log.count("stopping shard 0"), 1, log)
        self.assertRegex(log, r"shard 0 \(pid \d+\) exited with status 0")
        self.assertTrue(r.wait_all_gone(5), "processes left: %r" % procs_for_config(r.config))

    def test_the_ready_timeout_message_names_the_bound_that_expired(self):
        """A reload while the node starts may change router.ready_timeout
        (live); the start's deadline was set before and stays. The message
        when it expires named the reloaded value (60m here) instead of the
        one that expired."""
        r = self.fake_node_router("1500ms")
        r.proc = r.spawn()
        # The master and its router process run (the master's handler is
        # set before it starts any child).
        self.assertTrue(wait_until(lambda: len(procs_for_config(r.config)) >= 2, 10), r.stderr())
        with open(r.config) as f:
            text = f.read()
        with open(r.config, "w") as f:
            f.write(text.replace("ready_timeout: 1500ms", "ready_timeout: 60m"))
        r.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "configuration reloaded from" in r.stderr(), 5),
                        r.stderr())
        try:
            rc = r.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.fail("kvs-router did not give up:\n" + r.stderr())
        self.assertEqual(rc, 1, r.stderr())
        self.assertIn("local shards did not come up within router.ready_timeout (1500 ms",
                      r.stderr())
        self.assertTrue(r.wait_all_gone(5), "processes left: %r" % procs_for_config(r.config))

    def test_worker_ports_in_the_ephemeral_range_are_warned_about(self):
        """An outgoing connection of any process may hold a worker's port
        inside the kernel's ephemeral range when the worker restarts (it
        then crash-loops): the start says so, naming the range."""
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
        s = socket.socket()
        s.bind((HOST, 0))  # a port the kernel hands out: in the range
        port = s.getsockname()[1]
        s.close()
        self.assertTrue(lo <= port <= hi)
        r = self.router(shards=1, partitions=8, node_listen="%s:%d" % (HOST, port))
        self.assertIn("node.listen: 1 worker port(s) in %d..%d lie in the kernel's ephemeral "
                      "port range (%d-%d, net.ipv4.ip_local_port_range)" % (port, port, lo, hi),
                      r.stderr())
        self.assertNotIn("router.listen: port", r.stderr())  # the harness picks outside it
        r.stop()
        # The client ports alike (a restart meets a port held by a
        # connection just the same; probe AB's node failed to start so).
        s = socket.socket()
        s.bind((HOST, 0))
        rport = s.getsockname()[1]
        s.close()
        r = self.router(shards=1, partitions=8,
                        router_yaml=['resp_listen: "%s:%d"' % (HOST, rport)])
        self.assertIn("router.resp_listen: port %d lies in the kernel's ephemeral port range "
                      "(%d-%d, net.ipv4.ip_local_port_range)" % (rport, lo, hi), r.stderr())

    # ---- slow name resolution -----------------------------------------------------

    def remote_worker(self, r, shard, port):
        """Shard `shard` of r's cluster, served by a kvs-node on HOST:`port`
        as a remote node's worker would be; killed at cleanup."""
        log = open(os.path.join(r.dir, "node%d.log" % shard), "wb")
        self.addCleanup(log.close)
        node = subprocess.Popen([os.path.join(BUILD_DIR, "kvs-node"), "--config", r.config,
                                 "--shard", str(shard), "--listen", "%s:%d" % (HOST, port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.addCleanup(lambda: node.poll() is None and (node.kill(), node.wait()))
        return node

    def test_slow_name_resolution_blocks_no_client(self):
        """Remote shard 1 is named by a host name that takes 1 s to resolve
        (every time: the link resolves again at each reconnect). Clients of
        shard 0 must be answered at once all along, shard 1's requests get
        503 at once while it is unreachable, its name's second address
        (127.0.0.1 after ::1) is tried, and a SIGTERM during a lookup is a
        clean exit."""
        port = free_port()
        env = slow_resolver_env(SLOW_HOST, SLOW_MS)
        r = self.router(shards=2, partitions=16, remote={1: "%s:%d" % (SLOW_HOST, port)}, env=env)
        node = self.remote_worker(r, 1, port)
        per = keys_by_shard("dns", 20, 16, 2)
        k0, k1 = per[0][0], per[1][0]
        self.assertEqual((shard_of(k0, 16, 2), shard_of(k1, 16, 2)), (0, 1))

        def lookups():
            return r.stderr().count("kvs-test-slow-resolver: looking up " + SLOW_HOST)

        worst = [0.0]

        def probe(c):
            """Shard 0 answers at once; returns the answer of shard 1."""
            t0 = time.monotonic()
            a = c.call(req_hset("t", k0, "v0"))
            b = c.call(req_hget("t", k1))
            dt = time.monotonic() - t0
            worst[0] = max(worst[0], dt)
            self.assertOk(a)
            self.assertLess(dt, 0.5, "two requests took %.2f s while %s was being resolved"
                            % (dt, SLOW_HOST))
            return b

        with r.client() as c:
            # The first lookup is in flight; shard 1 comes up once it is done.
            def shard1_up():
                b = probe(c)
                if b.status == 503:
                    self.assertIn("shard 1", b.message)
                return b.status in (200, 404)

            self.assertTrue(wait_until(shard1_up, 10, 0.05),
                            "shard 1 never came up through the slow name:\n" + r.stderr())
            self.assertOk(c.hset("t", k1, "v1"))
            self.assertGreaterEqual(lookups(), 1)
            # Shard 1's node goes away: every reconnect resolves for 1 s.
            node.kill()
            node.wait()
            before = lookups()
            t_end = time.monotonic() + 2.5 * SLOW_MS / 1000.0
            while time.monotonic() < t_end or lookups() < before + 2:
                b = probe(c)
                if b.status != 200:
                    self.assertEqual(b.status, 503, b.message)
                    self.assertIn("shard 1", b.message)
                self.assertLess(time.monotonic(), t_end + 10, "no further lookups")
                time.sleep(0.05)
            self.assertEqual(pyval(c.hget("t", k0).values[0]), "v0")
        # SIGTERM while a lookup is in flight: a clean, prompt exit.
        n = lookups()
        self.assertTrue(wait_until(lambda: lookups() > n, 5), r.stderr())
        t0 = time.monotonic()
        self.assertEqual(r.stop(), 0, r.stderr())
        self.assertLess(time.monotonic() - t0, SLOW_MS / 1000.0 + 3)
        self.assertTrue(r.wait_all_gone(5))
        sys.stderr.write("slowest pair of requests: %.3f s\n" % worst[0])

    def test_a_lookup_that_never_answers_is_given_up_and_never_holds_a_shutdown(self):
        """Remote shard 1 is named by a host whose resolver hangs (60 s a
        lookup). The link's lookup ran in libuv's thread pool, which the
        loop waits for: a SIGTERM waited for it (a minute here; for ever
        with a resolver that never answers), and the link waited with it,
        resolving nothing meanwhile. A lookup not answered within its
        bound (30 s; 1.5 s by the test hook) is given up and asked again
        after the backoff, requests meanwhile get 503 naming the lookup,
        and a shutdown gives up the one in flight."""
        port = free_port()
        env = dict(slow_resolver_env(SLOW_HOST, 60000), KVS_TEST_LINK_LOOKUP_MS="1500")
        r = self.router(shards=2, partitions=16, remote={1: "%s:%d" % (SLOW_HOST, port)},
                        env=env)
        k1 = keys_by_shard("hang", 20, 16, 2)[1][0]

        def lookups():
            return r.stderr().count("kvs-test-slow-resolver: looking up " + SLOW_HOST)
        self.assertTrue(wait_until(lambda: lookups() >= 2, 10, 0.1),
                        "the hung lookup was not given up and asked again:\n" + r.stderr())
        with r.client() as c:
            t0 = time.monotonic()
            b = c.call(req_hget("t", k1))
            self.assertLess(time.monotonic() - t0, 1.0)
            self.assertEqual(b.status, 503, b.message)
            self.assertIn("cannot resolve %s: no answer within 1500 ms" % SLOW_HOST, b.message)
            self.assertOk(c.ping())
        self.assertTrue(wait_until(lambda: lookups() >= 3, 10, 0.1), r.stderr())
        t0 = time.monotonic()
        self.assertEqual(r.stop(), 0, r.stderr())
        self.assertLess(time.monotonic() - t0, 5, "the shutdown waited for the resolver")
        self.assertTrue(r.wait_all_gone(5))

    def test_an_address_that_drops_connections_is_given_up_after_router_timeout(self):
        """Remote shard 1's name resolves to ::1 then 127.0.0.1; on ::1 a
        host drops connection attempts (its accept queue full, as a host
        powered off or a firewall does), on 127.0.0.1 its worker listens.
        A connection that never completes waited for the kernel's own
        limit (two minutes of SYN retries) before the next address was
        tried: it is given up after router.timeout."""
        port = free_port()
        black_hole(self, "::1", port)
        r = self.router(shards=2, partitions=16, remote={1: "%s:%d" % (SLOW_HOST, port)},
                        timeout="2s", env=slow_resolver_env(SLOW_HOST, 10))
        self.remote_worker(r, 1, port)
        k1 = keys_by_shard("hole", 20, 16, 2)[1][0]
        t0 = time.monotonic()
        with r.client() as c:
            self.assertTrue(wait_until(lambda: c.call(req_hget("t", k1)).status == 404, 15, 0.1),
                            "shard 1 never came up at its second address:\n" + r.stderr())
        self.assertLess(time.monotonic() - t0, 15)

    def test_a_reload_while_the_master_starts_is_applied_once_it_can(self):
        """A SIGHUP that reaches the master while it starts (here: resolving
        router.resp_listen, a name that takes 1.5 s) came after it read the
        file, so the edit it announces must not be lost: it used to be
        ignored (SIG_IGN until the loop's handler), leaving the node on the
        old text without a word. Blocked until the handler exists, it
        reloads then, in the master and (passed on) in every child."""
        env = slow_resolver_env(SLOW_HOST, 1500)
        r = self.router(start=False, shards=2, partitions=8, env=env,
                        router_yaml=['resp_listen: "%s:%d"' % (SLOW_HOST, free_port())],
                        log="{level: info, slow_threshold: off}")
        r.proc = r.spawn()
        # The master's own lookup is the first (before any child starts).
        self.assertTrue(wait_until(lambda: "looking up " + SLOW_HOST in r.stderr(), 10),
                        r.stderr())
        self.assertNotIn("started shard", r.stderr())
        edit_config(r, "slow_threshold: off", "slow_threshold: 0")
        r.proc.send_signal(signal.SIGHUP)
        line = "configuration reloaded from %s (log.slow_threshold)" % r.config
        # The master, the router process and both workers (held a second
        # for the young ones).
        self.assertTrue(wait_until(lambda: r.stderr().count(line) == 4, 15), r.stderr()[-3000:])
        self.assertTrue(wait_until(lambda: "node ready" in r.stderr(), 10), r.stderr()[-3000:])
        self.assertIsNone(r.proc.poll())
        self.assertEqual(r.stop(), 0, r.stderr())


if __name__ == "__main__":
    import unittest
    unittest.main()
