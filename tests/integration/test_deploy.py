"""Deployment: systemd readiness and the files under deploy/.

NotifyTest starts kvs-router with NOTIFY_SOCKET naming a unix datagram
socket the test owns, as systemd does for Type=notify services, and reads
what the router sends: READY=1 only once clients are accepted (a client
connected the moment it arrives is served), never when a worker cannot
start, STOPPING=1 on SIGTERM, STATUS= lines on the way.

StartScriptTest runs deploy/start.sh with stand-ins for the build and
kvs-router: it refuses, before building, while a node holds its config's
data_dir, and otherwise builds and starts as on a fresh machine.

UnitFileTest checks deploy/kvs.service with systemd-analyze: `verify` on a
copy whose ExecStart points at this build's kvs-router (verify requires the
binary to exist), and `security --offline` for the sandboxing's exposure.

ContainerFilesTest lints what cannot be run here (no Docker engine): the
compose file parses, mounts files that exist and load as kvs configs whose
nodes agree on one cluster; the Dockerfile copies files that exist, and its
runtime package list covers every library the binaries link.
"""
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from kafkatest import wait_until
from kvstest import BUILD_DIR, Client
from routertest import RouterTestCase

try:
    import yaml
except ImportError:  # deploy/install-deps.sh --test installs python3-yaml
    yaml = None

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.normpath(os.path.join(HERE, "..", ".."))
DEPLOY = os.path.join(TOP, "deploy")
COMPOSE_DIR = os.path.join(DEPLOY, "compose")
CLI = os.path.join(BUILD_DIR, "kvs-cli")
ANALYZE = shutil.which("systemd-analyze")
WAIT = 15.0


# ---- sd_notify ---------------------------------------------------------------------


class NotifySocket:
    """A unix datagram socket in a temporary directory, like systemd's."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kvs-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []  # every message so far, as {key: value}

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def receive(self, timeout):
        """The next message, or None after `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(msg)
        return msg

    def wait_for(self, key, timeout=WAIT):
        """Receives until a message holds `key`; returns it (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.receive(deadline - time.monotonic())
            if msg is not None and key in msg:
                return msg
        return None

    def drain(self):
        while self.receive(0.05) is not None:
            pass
        return self.messages


class NotifyTest(RouterTestCase):
    def notify_socket(self):
        n = NotifySocket()
        self.addCleanup(n.close)
        return n

    def test_ready_once_accepting_and_stopping_on_sigterm(self):
        n = self.notify_socket()
        r = self.router(shards=3, start=False, env={"NOTIFY_SOCKET": n.path})
        r.proc = r.spawn()
        ready = n.wait_for("READY")
        self.assertIsNotNone(ready, "no READY=1 within %.0f s:\n%s" % (WAIT, r.stderr()))
        # At the moment READY=1 arrives the router accepts and serves, and
        # every local worker is up.
        with Client(r.addr, timeout=5) as c:
            self.assertEqual(c.ping().status, 200)
        self.assertEqual(sorted(r.workers()), [0, 1, 2])
        self.assertEqual(ready["READY"], "1")
        self.assertIn("serving clients on 127.0.0.1:%d" % r.port, ready["STATUS"])
        before = n.messages[:-1]
        self.assertTrue(any(m.get("STATUS", "").startswith("starting: waiting for 3 local")
                            for m in before), n.messages)
        self.assertFalse(any("READY" in m or "STOPPING" in m for m in before), n.messages)

        r.proc.send_signal(signal.SIGTERM)
        stopping = n.wait_for("STOPPING")
        self.assertIsNotNone(stopping, "no STOPPING=1 after SIGTERM:\n%s" % r.stderr())
        self.assertEqual(stopping["STATUS"], "draining clients")
        self.assertEqual(r.proc.wait(WAIT), 0)
        statuses = [m.get("STATUS") for m in n.drain()]
        self.assertIn("clients drained; stopping workers", statuses)
        self.assertEqual(sum("READY" in m for m in n.messages), 1)

    def test_no_ready_when_a_worker_cannot_start(self):
        # A data directory made for another placement: the worker refuses it
        # (EX_CONFIG), so the node never becomes ready and says why.
        r = self.router(shards=1, partitions=8)
        self.assertEqual(r.stop(), 0)
        with open(r.config) as f:
            text = f.read()
        with open(r.config, "w") as f:
            f.write(text.replace("  partitions: 8\n", "  partitions: 16\n"))
        n = self.notify_socket()
        r.env["NOTIFY_SOCKET"] = n.path
        r.proc = r.spawn()
        self.assertEqual(r.proc.wait(WAIT), 78, r.stderr())
        msgs = n.drain()
        self.assertFalse(any("READY" in m for m in msgs), msgs)
        stopping = [m for m in msgs if "STOPPING" in m]
        self.assertEqual(len(stopping), 1, msgs)
        self.assertIn("shard 0 cannot run with this configuration", stopping[0]["STATUS"])

    def test_without_notify_socket_nothing_is_sent(self):
        # Outside systemd the router runs as before (no warning either).
        r = self.router(shards=1)
        with r.client() as c:
            self.assertEqual(c.ping().status, 200)
        self.assertEqual(r.stop(), 0)
        self.assertNotIn("notify", r.stderr())

    def test_unreachable_notify_socket_is_reported_once(self):
        missing = os.path.join(tempfile.gettempdir(), "kvs-no-such-notify-socket-%d" % os.getpid())
        r = self.router(shards=1, env={"NOTIFY_SOCKET": missing})
        with r.client() as c:
            self.assertEqual(c.ping().status, 200)
        self.assertEqual(r.stop(), 0)
        self.assertEqual(r.stderr().count("cannot notify the service manager at "
                                          "NOTIFY_SOCKET=%s" % missing), 1, r.stderr())

    def test_sighup_reloads_and_says_so(self):
        # systemctl reload sends SIGHUP (ExecReload): the router reloads
        # (here an unchanged file), tells the manager RELOADING=1 and then
        # READY=1 again, and keeps serving.
        n = self.notify_socket()
        r = self.router(shards=1, env={"NOTIFY_SOCKET": n.path})
        self.assertIsNotNone(n.wait_for("READY"))
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
            r.proc.send_signal(signal.SIGHUP)
            reloading = n.wait_for("RELOADING")
            self.assertIsNotNone(reloading, r.stderr())
            self.assertIsNotNone(n.wait_for("READY"), r.stderr())
            self.assertIn("configuration reloaded from %s (nothing changed)" % r.config,
                          r.stderr())
            self.assertEqual(c.hget("t", "k").status, 200)
            self.assertEqual(c.hset("t", "k2", "v").status, 200)
        self.assertTrue(r.alive())
        self.assertNotIn("killed by signal", r.stderr())
        self.assertEqual(r.stop(), 0)


    def test_a_manager_that_stops_reading_never_stalls_the_master(self):
        # A manager that reads READY=1 and then nothing: its queue holds
        # 10 datagrams, and each reload sends two. sd_notify's send then
        # blocked the master's loop for good: no reload, no SIGTERM, no
        # worker restart. Notifications now leave from a thread of their
        # own; the master serves, reloads and stops as if nobody listened.
        n = self.notify_socket()
        r = self.router(shards=1, env={"NOTIFY_SOCKET": n.path})
        self.assertIsNotNone(n.wait_for("READY"))
        seen = len(n.messages)
        for _ in range(20):  # 40 messages: the manager holds 10, the router 16
            r.proc.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        self.assertTrue(wait_until(lambda: r.stderr().count("SIGHUP: passed on") >= 10, WAIT),
                        r.stderr())
        with r.client() as c:
            self.assertEqual(c.hset("t", "k", "v").status, 200)
        t0 = time.monotonic()
        self.assertEqual(r.stop(), 0, r.stderr())
        self.assertLess(time.monotonic() - t0, 10)
        self.assertIn("takes no notifications", r.stderr())
        got = n.drain()[seen:]  # what the queues held reads in order
        self.assertGreaterEqual(len(got), 10, got)
        self.assertEqual(["RELOADING" in m for m in got[:10]], [True, False] * 5, got)


# ---- deploy/start.sh ----------------------------------------------------------------


class StartScriptTest(RouterTestCase):
    """deploy/start.sh, run from a copy of deploy/ whose build.sh and
    build/kvs-router are stand-ins that note they ran (the real ones would
    install packages and build the repository; the stand-in router hands
    --print to this build's, so data_dir is what kvs's own loader reads):
    a second start.sh while a node runs on its config must stop before
    building."""

    def setUp(self):
        super().setUp()
        self.top = tempfile.mkdtemp(prefix="kvs-start-")
        self.addCleanup(shutil.rmtree, self.top, ignore_errors=True)
        os.makedirs(os.path.join(self.top, "deploy"))
        os.makedirs(os.path.join(self.top, "build"))
        shutil.copy(os.path.join(DEPLOY, "start.sh"), os.path.join(self.top, "deploy"))
        self.built = os.path.join(self.top, "built")
        self.ran = os.path.join(self.top, "ran")
        self.stub("deploy/build.sh", 'echo "$@" > %s' % self.built)
        self.stub("build/kvs-router", self.ROUTER % (os.path.abspath(BUILD_DIR), self.ran))

    ROUTER = """case "$*" in *--print*) exec %s/kvs-router "$@";; esac
echo "$PWD $*" > %s"""

    def stub(self, rel, body):
        path = os.path.join(self.top, rel)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n%s\n" % body)
        os.chmod(path, 0o755)

    def start_sh(self, config, env=None):
        for f in (self.built, self.ran):
            if os.path.exists(f):
                os.unlink(f)
        return subprocess.run([os.path.join(self.top, "deploy", "start.sh"), config],
                              capture_output=True, text=True, timeout=30, env=env)

    def assertStarted(self, p, config):
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(self.built) as f:
            self.assertEqual(f.read(), "%s/build -DCMAKE_BUILD_TYPE=Release\n" % self.top)
        with open(self.ran) as f:
            self.assertEqual(f.read(), "%s --config %s\n" % (self.top, config))

    def assertRefused(self, p, config, lock):
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stderr, "start.sh: a kvs node is already running on %s (it holds %s): "
                                   "stop it first (Ctrl-C where it runs, or SIGTERM to its "
                                   "kvs-router); building now would replace the binaries it "
                                   "restarts its workers from\n" % (config, lock))
        self.assertFalse(os.path.exists(self.built), "built under the running node")
        self.assertFalse(os.path.exists(self.ran))

    def test_a_second_start_while_the_node_runs_builds_nothing(self):
        r = self.router(shards=1, partitions=8)
        lock = os.path.join(r.data_dir, "router.lock")
        self.assertRefused(self.start_sh(r.config), r.config, lock)
        # Once it stopped, its lock file stays but nobody holds it.
        self.assertEqual(r.stop(), 0, r.stderr())
        self.assertTrue(os.path.exists(lock))
        self.assertStarted(self.start_sh(r.config), r.config)

    def test_first_run_and_data_dir_spellings(self):
        # data_dir as kvs reads it: relative to the node's directory (the
        # repository's top), quoted or not, with a comment, or the default.
        config = os.path.join(self.top, "config.yaml")
        for text, data in [("data_dir: ./data   # here\n", "data"),
                           ("cluster: {shards: 1}\n", "data"),
                           ('data_dir: "my data" # quoted\n', "my data"),
                           ("data_dir: '%s/abs'\n" % self.top, "abs"),
                           ("data_dir: rel/d\n", "rel/d"),
                           # spellings only a YAML parser reads right
                           ("{data_dir: flow}\n", "flow"),
                           ("data_dir: >-\n  folded\n", "folded"),
                           ("data_dir: ./d1\n# data_dir: ./d2\n", "d1")]:
            with self.subTest(text=text):
                with open(config, "w") as f:
                    f.write(text)
                self.assertStarted(self.start_sh(config), config)  # nothing there yet
                d = os.path.join(self.top, data)
                os.makedirs(d, exist_ok=True)
                lock = os.path.join(d, "router.lock")
                with open(lock, "w") as held:
                    fcntl.flock(held, fcntl.LOCK_EX)
                    self.assertRefused(self.start_sh(config), config, lock)
                self.assertStarted(self.start_sh(config), config)

    def test_a_config_kvs_refuses_stops_before_building(self):
        # The loader's own error, with its line: not a build, then a
        # refusal at start.
        config = os.path.join(self.top, "config.yaml")
        with open(config, "w") as f:
            f.write("data_dir: ./data\ncluster: {shards: 0}\n")
        p = self.start_sh(config)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("config.yaml:2:", p.stderr)
        self.assertIn("kvs-router could not load it (exit 78)", p.stderr)
        self.assertFalse(os.path.exists(self.built))
        self.assertFalse(os.path.exists(self.ran))

    def test_an_unusable_tmpdir_is_named_not_the_config(self):
        # mktemp failing (TMPDIR gone) was taken for the config's fault.
        config = os.path.join(self.top, "config.yaml")
        with open(config, "w") as f:
            f.write("data_dir: ./data\n")
        env = dict(os.environ, TMPDIR=os.path.join(self.top, "no-such-dir"))
        p = self.start_sh(config, env=env)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("start.sh: cannot create a temporary file (mktemp failed; is TMPDIR=%s "
                      "a writable directory?)" % env["TMPDIR"], p.stderr)
        self.assertNotIn("could not load it", p.stderr)
        self.assertFalse(os.path.exists(self.built))
        self.assertFalse(os.path.exists(self.ran))

    def test_without_a_router_it_builds_first_then_asks(self):
        # A fresh checkout: no kvs-router to ask yet. Building is safe (no
        # node can run from binaries that are not there), then the built
        # one is asked, and a node holding the lock is still refused.
        os.unlink(os.path.join(self.top, "build", "kvs-router"))
        self.stub("deploy/build.sh", 'echo "$@" > %s && cp %s/router.stub %s/build/kvs-router' %
                  (self.built, self.top, self.top))
        with open(os.path.join(self.top, "router.stub"), "w") as f:
            f.write("#!/bin/sh\n" + self.ROUTER % (os.path.abspath(BUILD_DIR), self.ran) + "\n")
        os.chmod(os.path.join(self.top, "router.stub"), 0o755)
        config = os.path.join(self.top, "config.yaml")
        with open(config, "w") as f:
            f.write("data_dir: ./d\n")
        self.assertStarted(self.start_sh(config), config)
        os.unlink(os.path.join(self.top, "build", "kvs-router"))
        os.makedirs(os.path.join(self.top, "d"))
        lock = os.path.join(self.top, "d", "router.lock")
        with open(lock, "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            p = self.start_sh(config)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("a kvs node is already running on %s" % config, p.stderr)
        self.assertFalse(os.path.exists(self.ran))

    def test_a_lock_flock_cannot_test_stops_it(self):
        # flock failing for any other reason than a held lock (here a
        # stand-in that cannot open the file; or flock missing) must not
        # be taken for "free": nothing is built or started.
        os.makedirs(os.path.join(self.top, "bin"))
        self.stub("bin/flock", 'echo "flock: $4: Input/output error" >&2; exit 66')
        config = os.path.join(self.top, "config.yaml")
        with open(config, "w") as f:
            f.write("data_dir: ./data\n")
        os.makedirs(os.path.join(self.top, "data"))
        lock = os.path.join(self.top, "data", "router.lock")
        open(lock, "w").close()
        env = dict(os.environ, PATH=os.path.join(self.top, "bin") + ":" + os.environ["PATH"])
        p = self.start_sh(config, env=env)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stderr, "start.sh: cannot tell whether a node holds %s: flock failed "
                                   "(exit 66): flock: %s: Input/output error; not building or "
                                   "starting (install util-linux's flock, or check the file)\n"
                         % (lock, lock))
        self.assertFalse(os.path.exists(self.built))
        self.assertFalse(os.path.exists(self.ran))

    def test_a_config_that_is_not_readable_is_refused_before_building(self):
        p = self.start_sh(os.path.join(self.top, "missing.yaml"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("missing.yaml: not a readable file", p.stderr)
        self.assertFalse(os.path.exists(self.built))


# ---- the systemd unit --------------------------------------------------------------------


def unit_copy(tmpdir):
    """deploy/kvs.service with ExecStart on this build's kvs-router."""
    with open(os.path.join(DEPLOY, "kvs.service")) as f:
        text = f.read()
    router = os.path.join(os.path.abspath(BUILD_DIR), "kvs-router")
    text, n = re.subn(r"^(ExecStart|ExecReload)=/usr/local/bin/kvs-router ", r"\1=%s " % router,
                      text, flags=re.M)
    assert n == 2, "ExecStart/ExecReload=/usr/local/bin/kvs-router not found in kvs.service"
    path = os.path.join(tmpdir, "kvs.service")
    with open(path, "w") as f:
        f.write(text)
    return path


def unit_settings(path):
    """{key: [values]} of a unit file (keys may repeat)."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                k, v = line.split("=", 1)
                out.setdefault(k, []).append(v)
    return out


@unittest.skipUnless(ANALYZE, "systemd-analyze is missing (deploy/install-deps.sh --test "
                              "installs the systemd package)")
class UnitFileTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kvs-unit-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def analyze(self, *args):
        return subprocess.run([ANALYZE] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60, text=True)

    def test_systemd_analyze_verify(self):
        # A trivial unit first: where systemd-analyze cannot work at all
        # (no systemd tree, a restricted sandbox), say so instead of failing.
        probe = os.path.join(self.dir, "probe.service")
        with open(probe, "w") as f:
            f.write("[Service]\nExecStart=/bin/true\n")
        p = self.analyze("verify", "--man=no", probe)
        if p.returncode != 0:
            self.skipTest("systemd-analyze verify does not work here: %s" % p.stderr.strip())
        path = unit_copy(self.dir)
        p = self.analyze("verify", "--man=no", path)
        ours = [line for line in p.stderr.splitlines() if "kvs.service" in line]
        self.assertEqual((p.returncode, ours), (0, []), p.stderr)

    def test_sandboxing_exposure(self):
        # systemd's own score: 1.6 today ("OK"); fail past 2.0, so a
        # sandboxing option lost in an edit is noticed.
        path = unit_copy(self.dir)
        p = self.analyze("security", "--offline=yes", "--threshold=20", path)
        m = re.search(r"Overall exposure level for kvs.service: ([0-9.]+)", p.stdout)
        if m is None and "offline" in p.stderr:
            self.skipTest("systemd-analyze security --offline is not supported here: %s"
                          % p.stderr.strip())
        self.assertIsNotNone(m, p.stdout + p.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0, p.stdout)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_what_the_unit_promises(self):
        s = unit_settings(os.path.join(DEPLOY, "kvs.service"))
        want = {"Type": "notify", "NotifyAccess": "main",
                "KillMode": "mixed", "RestartPreventExitStatus": "78", "User": "kvs",
                "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "PrivateTmp": "yes", "ReadWritePaths": "/var/lib/kvs",
                "WorkingDirectory": "/var/lib/kvs", "LogsDirectory": "kvs"}
        for k, v in want.items():
            self.assertEqual(s.get(k), [v], k)
        # A reload checks the file first (systemctl reload fails on a file
        # that does not load), with the config ExecStart runs, then signals.
        config = s["ExecStart"][0].split("--config ", 1)[1]
        self.assertEqual(s.get("ExecReload"), [
            "/usr/local/bin/kvs-router --config %s --check" % config,
            "/bin/kill -HUP $MAINPID"])
        self.assertGreaterEqual(int(s["LimitNOFILE"][0]), 65536)
        # The drain (10 s) and the workers' grace period (10 s) fit in the
        # stop timeout; the readiness timeout (router.ready_timeout, 30 s
        # by default) in the start timeout.
        self.assertGreater(int(s["TimeoutStopSec"][0]), 20)
        self.assertGreater(int(s["TimeoutStartSec"][0]), 30)


# ---- logrotate ---------------------------------------------------------------------


LOGROTATE = shutil.which("logrotate") or (os.path.exists("/usr/sbin/logrotate")
                                          and "/usr/sbin/logrotate")


@unittest.skipUnless(LOGROTATE, "logrotate is missing (deploy/install-deps.sh --test installs it)")
class LogrotateTest(unittest.TestCase):
    def test_rotates_a_file_a_plugin_keeps_open(self):
        # deploy/kvs.logrotate on a directory of our own, rotated while a
        # writer holds the file open for appending, as the audit_log plugin
        # does (opened once, never reopened): the old lines move to .1, the
        # writer's next line starts the emptied file (no hole before it).
        d = tempfile.mkdtemp(prefix="kvs-logrotate-")
        self.addCleanup(shutil.rmtree, d, True)
        logs = os.path.join(d, "logs")
        os.mkdir(logs, 0o750)
        with open(os.path.join(DEPLOY, "kvs.logrotate")) as f:
            text = f.read()
        self.assertIn("/var/log/kvs/*.log {", text)
        self.assertIn("su kvs kvs", text)
        me = subprocess.run(["id", "-un"], stdout=subprocess.PIPE, text=True).stdout.strip()
        grp = subprocess.run(["id", "-gn"], stdout=subprocess.PIPE, text=True).stdout.strip()
        text = text.replace("/var/log/kvs/", logs + "/").replace("su kvs kvs",
                                                                 "su %s %s" % (me, grp))
        conf = os.path.join(d, "kvs.logrotate")
        with open(conf, "w") as f:
            f.write(text)
        path = os.path.join(logs, "audit.log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, b"first line\n" * 100)
            p = subprocess.run([LOGROTATE, "-f", "-s", os.path.join(d, "state"), conf],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=30)
            self.assertEqual(p.returncode, 0, p.stderr)
            os.write(fd, b"after\n")
        finally:
            os.close(fd)
        with open(path + ".1", "rb") as f:
            self.assertEqual(f.read(), b"first line\n" * 100)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"after\n")


# ---- container files ------------------------------------------------------------------


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def config_loads(path):
    """kvs's own loader accepts `path` (kvs-cli keyslot loads it, no server)."""
    p = subprocess.run([CLI, "--config", path, "keyslot", "t", "k"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30, text=True)
    return p.returncode == 0, p.stderr


@unittest.skipUnless(yaml, "python3-yaml is missing (deploy/install-deps.sh --test installs it)")
class ContainerFilesTest(unittest.TestCase):
    def test_compose_cluster_is_consistent(self):
        compose = load_yaml(os.path.join(COMPOSE_DIR, "compose.yaml"))
        services = compose["services"]
        self.assertEqual(sorted(services),
                         ["kafka", "kafka-init", "kvs-a", "kvs-b", "kvs-c", "prometheus"])
        # Every file it mounts or builds from exists.
        for name, svc in services.items():
            for vol in svc.get("volumes", []):
                src = vol.split(":")[0]
                if src.startswith("."):
                    self.assertTrue(os.path.exists(os.path.join(COMPOSE_DIR, src)), (name, src))
                else:
                    self.assertIn(src, compose.get("volumes", {}), (name, src))
            if "build" in svc:
                ctx = os.path.join(COMPOSE_DIR, svc["build"]["context"])
                self.assertTrue(os.path.isfile(os.path.join(ctx, svc["build"]["dockerfile"])))
            for dep in svc.get("depends_on", {}):
                self.assertIn(dep, services, name)

        # The kvs nodes: configs kvs loads, one cluster map with replicas.
        kafka_init = services["kafka-init"]["command"]
        topic = kafka_init[kafka_init.index("--topic") + 1]
        topic_parts = int(kafka_init[kafka_init.index("--partitions") + 1])
        nodes = {}
        for name in ("kvs-a", "kvs-b", "kvs-c"):
            svc = services[name]
            self.assertEqual(svc.get("restart"), "unless-stopped", name)  # a node that exits
            mount = [v for v in svc["volumes"] if v.split(":")[1] == svc["command"][-1]]
            self.assertEqual(len(mount), 1, (name, svc["volumes"]))
            path = os.path.join(COMPOSE_DIR, mount[0].split(":")[0])
            ok, err = config_loads(path)
            self.assertTrue(ok, "%s: %s" % (path, err))
            nodes[name] = cfg = load_yaml(path)
            # Published on the host's loopback only: no TLS, no users.
            host_ip, _, port = svc["ports"][0].split(":")
            self.assertEqual(host_ip, "127.0.0.1", svc["ports"])
            self.assertEqual(port, cfg["router"]["listen"].split(":")[1])
            self.assertEqual(cfg["kafka"]["brokers"], "kafka:9092")
            self.assertEqual([(b["topic"], b["partitions"]) for b in cfg["kafka"]["bindings"]],
                             [(topic, topic_parts)])
        clusters = {(c["cluster"]["shards"], c["cluster"]["partitions"]) for c in nodes.values()}
        self.assertEqual(len(clusters), 1, clusters)
        shards = clusters.pop()[0]
        # One map on every node, naming each node once by its service and
        # its node.name; every shard on two nodes, so one may stop.
        maps = [c["cluster"]["nodes"] for c in nodes.values()]
        self.assertTrue(all(m == maps[0] for m in maps), maps)
        for name, cfg in nodes.items():
            mine = [e for e in maps[0] if e["name"] == cfg["node"]["name"]]
            self.assertEqual(len(mine), 1, (name, maps[0]))
            host, port = mine[0]["address"].rsplit(":", 1)
            self.assertEqual(host, name)
            self.assertEqual(int(port), int(cfg["node"]["listen"].rsplit(":", 1)[1]))
        for s in range(shards):
            owners = [e["name"] for e in maps[0] if s in e["shards"]]
            self.assertEqual(len(owners), 2, (s, owners))

        self.assertTrue(services["prometheus"]["ports"][0].startswith("127.0.0.1:"))
        # Prometheus scrapes the three nodes.
        prom = load_yaml(os.path.join(COMPOSE_DIR, "prometheus.yml"))
        targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"]
                   for t in sc["targets"]]
        self.assertEqual(sorted(t.split(":")[0] for t in targets), sorted(nodes))

    def dockerfile(self):
        with open(os.path.join(DEPLOY, "Dockerfile")) as f:
            return f.read().replace("\\\n", " ")

    def test_dockerfile_copies_existing_files(self):
        stages = re.findall(r"^FROM (\S+)", self.dockerfile(), flags=re.M)
        self.assertEqual(stages, ["debian:12", "debian:12-slim"])
        copies = re.findall(r"^COPY (?!--from)(.+)$", self.dockerfile(), flags=re.M)
        self.assertTrue(copies)
        for c in copies:
            for src in c.split()[:-1]:
                self.assertTrue(os.path.exists(os.path.join(TOP, src)), src)
        self.assertRegex(self.dockerfile(), r"(?m)^USER kvs$")
        # An image is a package: no test hooks in it (README, Development).
        self.assertRegex(self.dockerfile(), r"(?m)^RUN cmake .*-DKVS_TEST_HOOKS=OFF")
        ok, err = config_loads(os.path.join(DEPLOY, "docker", "config.yaml"))
        self.assertTrue(ok, err)

    def test_runtime_packages_cover_the_binaries(self):
        # Every library kvs-router, kvs-node and kvs-cli link against comes
        # from a package `install-deps.sh --runtime` installs (or libc6,
        # which every image has). Sanitizer runtimes are the build's own.
        with open(os.path.join(DEPLOY, "install-deps.sh")) as f:
            m = re.search(r"runtime_pkgs=\(([^)]*)\)", f.read())
        self.assertIsNotNone(m)
        runtime = set(m.group(1).split()) | {"libc6"}
        needed = set()
        for exe in ("kvs-router", "kvs-node", "kvs-cli"):
            out = subprocess.run(["readelf", "-d", os.path.join(BUILD_DIR, exe)],
                                 stdout=subprocess.PIPE, check=True, text=True).stdout
            needed |= set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
        needed = {lib for lib in needed if not re.match(r"lib(asan|ubsan|lsan)\.", lib)}
        self.assertIn("libedit.so.2", needed)
        p = subprocess.run(["dpkg", "-S"] + ["*/" + lib for lib in sorted(needed)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        owners = {}
        for line in p.stdout.splitlines():
            pkgs, path = line.split(": ", 1)
            for pkg in pkgs.split(", "):
                owners.setdefault(os.path.basename(path), set()).add(pkg.split(":")[0])
        for lib in sorted(needed):
            pkgs = owners.get(lib, set())
            self.assertTrue(pkgs & runtime, "%s comes from %s, not in runtime_pkgs %s"
                            % (lib, sorted(pkgs), sorted(runtime)))


if __name__ == "__main__":
    unittest.main()
