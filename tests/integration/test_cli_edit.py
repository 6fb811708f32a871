"""kvs-cli's interactive line editor (libedit), driven through a real
terminal: each test runs kvs-cli in a detached tmux session (private
server socket, no user config, TERM=xterm, HOME in a temporary directory),
types keys with `tmux send-keys` and reads the screen with `capture-pane`,
so what is checked is what a user sees. Every wait is bounded.

Piped sessions (stdin not a terminal) are covered by test_cli.py, which
checks that they behave exactly as before the editor existed.
"""
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import unittest

from kvstest import BUILD_DIR, NodeTestCase

TMUX = shutil.which("tmux")
CLI = os.path.join(BUILD_DIR, "kvs-cli")
WAIT = 10.0  # seconds for any one thing to appear on the screen


def history_lines(path):
    """The lines of a libedit history file (strvis-encoded, one per line)."""
    with open(path, "rb") as f:
        data = f.read().decode()
    lines = data.split("\n")
    assert lines[0] == "_HiStOrY_V2_", data
    out = []
    for line in lines[1:]:
        if line:
            line = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line)
            out.append(line.replace("\\\\", "\\"))
    return out


@unittest.skipUnless(TMUX, "tmux is not installed (deploy/install-deps.sh --test installs it)")
class CliEditTest(NodeTestCase):
    def setUp(self):
        self.node_ = self.node(sync="none")
        self.dir = tempfile.mkdtemp(prefix="kvs-edit-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.home = os.path.join(self.dir, "home")
        os.mkdir(self.home)
        self.sock = os.path.join(self.dir, "tmux.sock")
        self.status_file = os.path.join(self.dir, "status")
        self.prompt = "127.0.0.1:%d> " % self.node_.port

    def tmux(self, *args):
        return subprocess.run([TMUX, "-S", self.sock] + list(args), check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=WAIT)

    def start_cli(self, env=()):
        """kvs-cli on a 120x30 terminal; its exit status goes to status_file."""
        assigns = ["HOME=%s" % self.home, "TERM=xterm", "LANG=C.UTF-8"] + list(env)
        cmd = "env -u KVSCLI_HISTFILE %s %s --port %d; echo $? > %s" % (
            " ".join(shlex.quote(a) for a in assigns), shlex.quote(CLI), self.node_.port,
            shlex.quote(self.status_file))
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "120", "-y", "30",
                  "sh", "-c", cmd)
        self.addCleanup(subprocess.run, [TMUX, "-S", self.sock, "kill-server"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_screen(lambda s: self.prompt.rstrip() in s, "the prompt")

    def keys(self, *keys):
        self.tmux("send-keys", "-t", "t", *keys)

    def type(self, text):
        self.tmux("send-keys", "-t", "t", "-l", "--", text)  # literally, not key names

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "t").stdout.decode()

    def wait_screen(self, pred, what):
        deadline = time.monotonic() + WAIT
        while True:
            s = self.screen()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                self.fail("waited %.0f s for %s; the screen:\n%s" % (WAIT, what, s))
            time.sleep(0.05)

    def input_line(self, s):
        """The last prompt line on the screen, trailing spaces stripped."""
        lines = [line for line in s.split("\n") if line.startswith(self.prompt.rstrip())]
        return lines[-1].rstrip() if lines else ""

    def wait_input(self, pred, what):
        return self.input_line(self.wait_screen(lambda s: pred(self.input_line(s)), what))

    def wait_exit(self):
        """kvs-cli's exit status, once the shell wrote it."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with open(self.status_file) as f:
                    text = f.read()
                if text.endswith("\n"):
                    return int(text)
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                self.fail("kvs-cli did not exit; the screen:\n%s" % self.screen())
            time.sleep(0.05)

    def test_completion_hints_history_and_ctrl_d(self):
        self.start_cli()
        p = self.prompt
        self.type("hset t k v")
        # While typing the value, the hint names it, at the right end.
        line = self.wait_input(lambda l: l.endswith("VALUE"), "the VALUE hint")
        self.assertTrue(line.startswith(p + "hset t k v "), line)
        self.keys("Enter")
        self.wait_screen(lambda s: "(nil)" in s, "hset's answer")
        # The accepted line keeps no hint on the screen.
        self.assertIn(p + "hset t k v\n", self.screen())

        # TAB: "hge" -> "hget" (common prefix of hget and hgetall), whose
        # hint then shows; the arguments typed shorten it.
        self.type("hge")
        self.keys("Tab")
        line = self.wait_input(lambda l: l.endswith("TABLE KEY"), "completion to hget")
        self.assertRegex(line, "^" + re.escape(p) + r"hget +TABLE KEY$")
        self.type(" t ")
        line = self.wait_input(lambda l: l.endswith(" KEY") and "TABLE" not in l, "the KEY hint")
        self.assertRegex(line, "^" + re.escape(p) + r"hget t +KEY$")

        # A unique prefix completes in full, with a space.
        self.keys("C-u")
        self.type("hmg")
        self.keys("Tab")
        line = self.wait_input(lambda l: "[KEY ...]" in l, "completion to hmget")
        self.assertRegex(line, "^" + re.escape(p) + r"hmget +TABLE KEY \[KEY \.\.\.\]$")
        # An ambiguous one lists the candidates.
        self.keys("C-u")
        self.type("hm")
        self.keys("Tab")
        self.wait_screen(lambda s: "hmget  hmset  hmdel  hmexist" in s, "the candidates")

        # Up recalls the hset; run again, it answers the previous value.
        self.keys("C-u", "Up")
        self.wait_input(lambda l: l.startswith(p + "hset t k v"), "the recalled line")
        self.keys("Enter")
        self.wait_screen(lambda s: '"v"' in s, "the second hset's answer")

        # Ctrl-D on an empty line ends the session; every command succeeded.
        self.keys("C-d")
        self.assertEqual(self.wait_exit(), 0)
        path = os.path.join(self.home, ".kvscli_history")
        self.assertEqual(history_lines(path), ["hset t k v"])  # repeats are kept once
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_history_is_loaded_and_never_keeps_auth_lines(self):
        path = os.path.join(self.dir, "hist")
        with open(path, "w") as f:
            f.write("_HiStOrY_V2_\nhgetall\\040t\n")
        self.start_cli(["KVSCLI_HISTFILE=%s" % path])
        p = self.prompt
        for line in ["auth hunter2", "AUTH 'pass word'", "--int auth s3cret", 'auth "unclosed',
                     "hash-token t0psecret", "ping"]:
            self.type(line)
            self.keys("Enter")
        self.wait_screen(lambda s: "PONG" in s, "ping's answer")
        # Ctrl-R searches the history as letters are typed; Enter runs the find.
        self.keys("C-r")
        self.type("pin")
        self.wait_screen(lambda s: "bck:pin" in s, "the incremental search")
        self.keys("Enter")
        self.wait_screen(lambda s: s.count("PONG") == 2, "the found ping's answer")
        # Up: ping, then the line from the earlier session; no auth line.
        self.keys("Up")
        self.wait_input(lambda l: l == p + "ping", "ping recalled")
        self.keys("Up")
        self.wait_input(lambda l: l.startswith(p + "hgetall t"), "the earlier session's line")
        self.keys("C-u", "C-d")
        self.wait_exit()  # 1: the auth lines failed (no such command yet)
        self.assertEqual(history_lines(path), ["hgetall t", "ping"])
        with open(path, "rb") as f:
            data = f.read()
        for secret in (b"hunter2", b"pass", b"s3cret", b"unclosed", b"auth", b"AUTH",
                       b"t0psecret", b"hash-token"):
            self.assertNotIn(secret, data)


if __name__ == "__main__":
    unittest.main()
