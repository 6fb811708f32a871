"""The documentation of the config keys agrees with the loader.

The loader's directive table in common/kvs_config.c is the one list of keys
kvs accepts, with each key's default and whether it may change on SIGHUP
(F_LIVE). README.md documents the same keys three times: the table under
"Configuration" (key and default), and the two lists under "Live reload"
(what changes live, what needs a restart); the shipped config.yaml sets
keys to their defaults. ConfigDocsTest reads all four and fails on any
key one of them has and another lacks, on a default that differs, and on
a key documented as live that is not (or the other way round).
"""
import os
import re
import subprocess
import unittest

try:
    import yaml
except ImportError:  # deploy/install-deps.sh --test installs python3-yaml
    yaml = None

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.normpath(os.path.join(HERE, "..", ".."))
BUILD_DIR = os.environ.get("KVS_BUILD_DIR") or os.path.join(TOP, "build")


def read(path):
    with open(os.path.join(TOP, path), encoding="utf-8") as f:
        return f.read()


def directives():
    """{key: (type, default or None, live)} from kvs_config.c's table."""
    src = read("common/kvs_config.c")
    start = src.index("static const directive_t directives[] = {")
    table = src[start:src.index("\n};", start)]
    table = re.sub(r"/\*.*?\*/", "", table, flags=re.S)
    out = {}
    for m in re.finditer(r'\{"([a-z_.]+)",\s*(D_[A-Z0-9_]+),(.*?)\},?\s*(?=\{"|$)', table, re.S):
        rest = m.group(3)
        d = re.match(r'\s*(?:OFF\([^)]*\)|0),\s*(NULL|"[^"]*")', rest)
        if d is None:
            raise AssertionError("cannot read the directive " + m.group(1))
        default = None if d.group(1) == "NULL" else d.group(1)[1:-1]
        out[m.group(1)] = (m.group(2), default, "F_LIVE" in rest)
    return out


def expand(name):
    """`tls.{router,node}.{cert,key}` -> the four names it stands for."""
    m = re.match(r"(.*?)\{([^}]*)\}(.*)", name)
    if m is None:
        return [name]
    out = []
    for alt in m.group(2).split(","):
        out += expand(m.group(1) + alt + m.group(3))
    return out


def section(text, start, end):
    i = text.index(start)
    return text[i:text.index(end, i)]


def readme_table():
    """{key: default as written} from README's configuration table."""
    sec = section(read("README.md"), "\n## Configuration\n", "\n### Several nodes\n")
    out = {}
    for line in sec.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`|(\S+)", cells[1])
        defaults = [a or b for a, b in defaults if (a or b) != ","]
        for i, name in enumerate(names):
            default = defaults[i] if i < len(defaults) else defaults[0]
            for key in expand(name):
                out[key] = default.rstrip(",")
    return out


def readme_live():
    """(keys README says change live, keys it says need a restart)."""
    sec = section(read("README.md"), "\n### Live reload\n", "\n### Bounds")
    live_part = section(sec, "What changes live", "Everything else needs a restart")
    restart_part = sec[sec.index("Everything else needs a restart"):]
    live_part = re.sub(r"\([^()]*\)", "", live_part)  # asides name keys that are not live
    key = r"`([a-z_]+(?:\.[a-z_*]+)*)`"
    return set(re.findall(key, live_part)), set(re.findall(key, restart_part))


class ConfigDocsTest(unittest.TestCase):
    def setUp(self):
        self.dirs = directives()
        self.assertGreater(len(self.dirs), 50, "the directive table was not read")

    def test_every_key_is_in_the_readme_table_and_no_other(self):
        doc = readme_table()
        self.assertEqual(sorted(set(self.dirs) - set(doc)), [],
                         "keys kvs accepts that README's configuration table lacks")
        self.assertEqual(sorted(set(doc) - set(self.dirs)), [],
                         "keys README's configuration table documents that kvs refuses")

    def test_readme_defaults_are_the_loaders(self):
        doc = readme_table()
        for key, (_, default, _) in sorted(self.dirs.items()):
            if default is None:  # lists and mappings: empty
                self.assertIn(doc[key], ("[]", "{}"), key)
                continue
            written = "" if doc[key] == '""' else doc[key]
            self.assertEqual(written, default, "README's default of " + key)

    def test_readme_live_lists_are_the_loaders(self):
        live, restart = readme_live()
        code_live = {k for k, (_, _, lv) in self.dirs.items() if lv}
        self.assertEqual(sorted(live), sorted(code_live),
                         "README's 'What changes live' against the keys marked F_LIVE")
        tls = {k for k in self.dirs if k.startswith("tls.")}
        named = {k for k in restart if k != "tls.*"}
        self.assertIn("tls.*", restart)
        self.assertEqual(sorted(named | tls), sorted(set(self.dirs) - code_live),
                         "README's 'needs a restart' list against the keys not marked F_LIVE")

    @unittest.skipIf(yaml is None, "python3-yaml is not installed")
    def test_shipped_config_sets_defaults(self):
        shipped = yaml.safe_load(read("config.yaml"))

        def walk(node, prefix):
            for k, v in node.items():
                path = prefix + k
                if isinstance(v, dict) and path not in self.dirs:
                    yield from walk(v, path + ".")
                else:
                    yield path, v

        seen = 0
        for key, value in walk(shipped, ""):
            self.assertIn(key, self.dirs, "config.yaml sets a key kvs refuses")
            default = self.dirs[key][1]
            if default is None:
                self.assertIn(value, ([], {}), key)
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            text = "" if value is None else str(value)
            self.assertEqual(text.lower(), default.lower(), "config.yaml's " + key)
            seen += 1
        self.assertGreater(seen, 30)


class VersionTest(unittest.TestCase):
    def test_every_binary_prints_the_projects_version(self):
        """`--version` of each binary says its name and CMakeLists.txt's
        project version, exits 0 and writes nothing else."""
        version = re.search(r"project\(kvs VERSION ([0-9.]+)", read("CMakeLists.txt")).group(1)
        for exe in ("kvs-router", "kvs-node", "kvs-cli", "kvs-bench", "kvs-mock-kafka"):
            p = subprocess.run([os.path.join(BUILD_DIR, exe), "--version"], capture_output=True,
                               text=True, timeout=10)
            self.assertEqual((p.returncode, p.stdout, p.stderr),
                             (0, "%s %s\n" % (exe, version), ""), exe)

    def test_every_binary_says_how_it_is_used(self):
        """`--help` prints the usage on stdout and exits 0; an option a
        binary does not know exits 2 naming it on stderr, stdout empty."""
        for exe in ("kvs-router", "kvs-node", "kvs-cli", "kvs-bench", "kvs-mock-kafka"):
            p = subprocess.run([os.path.join(BUILD_DIR, exe), "--help"], capture_output=True,
                               text=True, timeout=10)
            self.assertEqual((p.returncode, p.stderr), (0, ""), exe)
            self.assertTrue(p.stdout.startswith("usage: %s " % exe), (exe, p.stdout[:200]))
            self.assertIn("--version", p.stdout, exe)
            p = subprocess.run([os.path.join(BUILD_DIR, exe), "--no-such-option"],
                               capture_output=True, text=True, timeout=10)
            self.assertEqual((p.returncode, p.stdout), (2, ""), (exe, p.stderr))
            self.assertIn("--no-such-option", p.stderr, exe)

    def test_version_and_help_that_cannot_be_written_do_not_exit_0(self):
        """A --version or --help whose output fails (/dev/full: ENOSPC; a
        pipe whose reader is gone: EPIPE, not a death by SIGPIPE) says so on
        stderr and exits 74, as README says, so a script sees it."""
        for exe in ("kvs-router", "kvs-node", "kvs-cli", "kvs-bench", "kvs-mock-kafka"):
            for opt in ("--version", "--help"):
                with open("/dev/full", "w") as full:
                    p = subprocess.run([os.path.join(BUILD_DIR, exe), opt], stdout=full,
                                       stderr=subprocess.PIPE, text=True, timeout=10)
                self.assertEqual(p.returncode, 74, (exe, opt, p.stderr))
                self.assertEqual(p.stderr, "%s: cannot write to standard output: No space left "
                                 "on device\n" % exe, (exe, opt))
                r, w = os.pipe()
                os.close(r)
                try:  # restore_signals: SIGPIPE is the default action in the child
                    p = subprocess.run([os.path.join(BUILD_DIR, exe), opt], stdout=w,
                                       stderr=subprocess.PIPE, text=True, timeout=10)
                finally:
                    os.close(w)
                self.assertEqual(p.returncode, 74, (exe, opt, p.stderr))
                self.assertEqual(p.stderr, "%s: cannot write to standard output: Broken pipe\n"
                                 % exe, (exe, opt))


if __name__ == "__main__":
    unittest.main()
