# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A killed prune converges, and min_age holds during the run (issue 12, item 5).

- Real prune processes SIGKILLed at seeded random points over a generic tree and over a pip cache
  made by the real pip, then one final run: the surviving set equals what one uninterrupted run
  left on an identical copy.
- Entries rewritten the way pip rewrites them (temporary file + rename; header, then body) after
  the walk are never deleted and never split: deterministically at the two windows (between the
  walk and the re-check, between the re-check and the move) and by a real concurrent process.
- A trash left by a killed prune of a hub cache is where ``scan_cache_dir()`` does not look, and
  the next run purges it first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats, _prune
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import make_hf_repo, tree, write

DAY = 86400


def run(path, lock_dir, fmt, pol):
    res = _prune.Pruner(str(path), fmt=fmt, policy=_prune.Policy(**pol), lock_dir=str(lock_dir), lock_timeout=5).run()
    assert not res["skipped"] and not res["errors"], res
    return res


def snapshot(path):
    """Every path below ``path`` with its kind (file content hash for files): what survived."""
    out = {}
    for rel in tree(path):
        p = os.path.join(path, rel)
        if os.path.islink(p):
            out[rel] = "link"
        elif os.path.isdir(p):
            out[rel] = "dir"
        else:
            with open(p, "rb") as fh:
                out[rel] = hash(fh.read())
    return out


def journal_size(lock_dir):
    try:
        return sum(e.stat().st_size for e in os.scandir(lock_dir) if e.name.startswith("journal-"))
    except FileNotFoundError:
        return 0


def kill_many(path, lock_dir, fmt, pol, seed, kills, span):
    """Fork a prune ``kills`` times and SIGKILL each at a seeded random point: one in four before
    it decided anything, the others a random time (up to ``span``) after its journal shows it began
    removing. Returns how many of the killed runs were cut mid-way: they changed the tree and left
    their journal (a run that completes deletes it)."""
    rnd = random.Random(seed)  # noqa: S311 - seeded test schedule
    changed = 0
    for _kill in range(kills):
        before = set(tree(path))
        size = journal_size(lock_dir)
        early = rnd.random() < 0.25
        delay = rnd.uniform(0, span)
        pid = os.fork()
        if pid == 0:  # the child: a real prune, killed wherever it is
            try:
                _prune.Pruner(
                    str(path), fmt=fmt, policy=_prune.Policy(**pol), lock_dir=str(lock_dir), lock_timeout=5
                ).run()
            finally:
                os._exit(0)
        deadline = time.monotonic() + 10
        while not early and journal_size(lock_dir) <= size and time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            time.sleep(0.003)
        time.sleep(delay if not early else delay / 10)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        if set(tree(path)) != before and journal_size(lock_dir):
            changed += 1
    return changed


def converge(tmp_path, master, fmt, pol, seed, kills=20):
    single, killed = tmp_path / "single", tmp_path / "killed"
    shutil.copytree(master, single, symlinks=True)
    shutil.copytree(master, killed, symlinks=True)
    t = time.monotonic()
    run(single, tmp_path / "state-single", fmt, pol)
    span = time.monotonic() - t
    cut = kill_many(killed, tmp_path / "state-killed", fmt, pol, seed, kills, span / 12)
    mid = snapshot(killed)
    res = run(killed, tmp_path / "state-killed", fmt, pol)
    assert cut >= 3, "only %d of %d kills landed mid-way: the test proves nothing" % (cut, kills)
    assert snapshot(killed) == snapshot(single)
    assert not os.listdir(tmp_path / "state-killed") or all(
        not n.startswith("journal-") for n in os.listdir(tmp_path / "state-killed")
    ), "a completed run leaves no journal"
    return mid, res


# -- a generic tree ---------------------------------------------------------------------------
@pytest.fixture
def generic_master(tmp_path):
    """Nested old directories (emptied whole by a prune), mixed ones, young files; seeded ages."""
    rnd = random.Random(12)  # noqa: S311 - seeded test data
    root = tmp_path / "master"
    now = time.time()
    for a in range(12):
        for b in range(6):
            for f in range(8):
                days = rnd.choice([200, 150, 120, 95, 60, 30, 5]) if a % 3 else 200 + rnd.random()
                write(root / ("a%02d" % a) / ("b%d" % b) / ("f%02d" % f), b"g" * rnd.randint(1, 9000), age_days=days)
    write(root / "keep" / "recent", b"n")
    for dp, _dn, _fn in os.walk(root, topdown=False):
        if os.path.basename(dp) != "keep":
            t = now - 300 * DAY
            os.utime(dp, (t, t))
    return root


@pytest.mark.parametrize(
    "pol",
    [{"max_age": 90 * DAY, "age_by": "mtime"}, {"max_size": 1 << 20, "age_by": "mtime"}],
    ids=["max_age", "max_size"],
)
def test_twenty_kills_then_a_run_leave_what_one_run_leaves_generic(tmp_path, generic_master, pol):
    master = snapshot(generic_master)
    mid, _res = converge(tmp_path, generic_master, "generic", pol, seed=5)
    # the killed runs emptied directories (new mtimes then): a later killed run removed some (it
    # judged them by their time before the kills, from the journal), the final run the others.
    # Which of the two depends on where the kills land; at least one happened.
    final = snapshot(tmp_path / "killed")
    removed_by_kills = [k for k, v in master.items() if v == "dir" and k not in mid]
    removed_at_the_end = [k for k, v in mid.items() if v == "dir" and k not in final]
    assert removed_by_kills or removed_at_the_end


# -- a pip cache made by pip ------------------------------------------------------------------
PIP_PACKAGES = ["six==1.16.0", "toml==0.10.2", "idna==3.7", "packaging==24.1", "tomli==2.0.1", "zipp==3.19.2"]


class _Index(BaseHTTPRequestHandler):
    """A PEP 503 index of the wheels in ``self.server.wheels`` whose responses pip may cache (the
    HTTPS proxy of the test machine strips PyPI's Cache-Control headers, so pip caches nothing)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        wheels = self.server.wheels
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "simple":
            files = [f for f in os.listdir(wheels) if f.split("-")[0].lower().replace("_", "-") == parts[1]]
            body = "".join('<a href="/files/%s">%s</a>\n' % (f, f) for f in files).encode()
            ctype = "text/html"
        elif len(parts) == 2 and parts[0] == "files" and os.path.isfile(os.path.join(wheels, parts[1])):
            with open(os.path.join(wheels, parts[1]), "rb") as fh:
                body = fh.read()
            ctype = "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=600")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pip_master(tmp_path_factory):
    """http-v2 entries (header + body) written by a real ``pip download`` from a local index
    serving wheels fetched from PyPI (PyPI needed)."""
    base = tmp_path_factory.mktemp("pipconv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    pip = [sys.executable, "-m", "pip", "download", "-q", "--isolated", "--no-deps", "--only-binary", ":all:"]
    res = subprocess.run(
        [*pip, "--index-url", "https://pypi.org/simple", "-d", str(base / "wheels"), "--no-cache-dir", *PIP_PACKAGES],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if res.returncode:
        pytest.skip("PyPI unreachable: %s" % res.stderr[-300:])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    server.wheels = str(base / "wheels")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = "http://127.0.0.1:%d/simple" % server.server_address[1]
        res = subprocess.run(
            [*pip, "--index-url", url, "--trusted-host", "127.0.0.1", "-d", str(base / "dl"),
             "--cache-dir", str(base / "pip"), *PIP_PACKAGES],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    bodies = [f for f in tree(base / "pip") if f.endswith(".body")]
    assert res.returncode == 0 and len(bodies) >= 2 * len(PIP_PACKAGES), res.stderr[-500:]
    return base / "pip"


def pip_entries(cache):
    """{header path: body path or None} of a pip http-v2 cache."""
    out = {}
    for rel in tree(cache):
        if rel.startswith("http-v2/") and os.path.isfile(os.path.join(cache, rel)) and not rel.endswith(".body"):
            body = rel + ".body"
            out[rel] = body if os.path.exists(os.path.join(cache, body)) else None
    return out


def grown_pip_cache(master, dest, copies, seed):
    """The real entries, each also under ``copies`` new keys (same bytes, pip's own layout: the
    key's sha224 spread over five directory levels), with seeded ages from 1 to 300 days."""
    rnd = random.Random(seed)  # noqa: S311 - seeded test data
    shutil.copytree(master, dest)
    real = pip_entries(dest)
    for i in range(copies):
        for header, body in real.items():
            key = hashlib.sha224(("%s-%d" % (header, i)).encode()).hexdigest()
            rel = "http-v2/" + "/".join(key[:5]) + "/" + key
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copyfile(os.path.join(dest, header), os.path.join(dest, rel))
            if body:
                shutil.copyfile(os.path.join(dest, body), os.path.join(dest, rel + ".body"))
    now = time.time()
    for header, body in sorted(pip_entries(dest).items()):
        t = now - rnd.uniform(1, 300) * DAY
        for p in (header, body):
            if p:
                os.utime(os.path.join(dest, p), (t, t))
    return dest


@pytest.mark.registry
def test_twenty_kills_then_a_run_leave_what_one_run_leaves_pip(tmp_path, pip_master):
    master = grown_pip_cache(pip_master, tmp_path / "master", 20, seed=3)
    total = sum(os.lstat(os.path.join(master, p)).st_blocks * 512 for p in tree(master))
    pol = {"max_size": total // 2, "age_by": "mtime"}
    converge(tmp_path, master, "pip", pol, seed=9)
    # never half an entry: every header left has its body, every body its header
    entries = pip_entries(tmp_path / "killed")
    assert entries and all(body for body in entries.values())
    bodies = {p for p in tree(tmp_path / "killed") if p.endswith(".body")}
    assert bodies == set(entries.values())


# -- rewrites during the run --------------------------------------------------------------------
def pip_rewrite(cache, header, body=True):
    """Write an entry as pip's SafeFileCache does: an adjacent temporary file renamed over the
    old one, the header first, then (a full response; not on a 304 revalidation) the body."""
    for rel, data in ((header, b"new header"), (header + ".body", b"new body") if body else (None, None)):
        if rel is None:
            continue
        path = os.path.join(cache, rel)
        tmp = path + ".tmp%d" % os.getpid()
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)


class InjectedPruner(_prune.Pruner):
    """A Pruner that lets pip rewrite given entries at an exact point of the run: just before a
    unit's re-check (``when='check'``: after the walk chose it) or just after it (``'move'``)."""

    def __init__(self, *args, rewrite=(), when="check", cache=None, **kw):
        _prune.Pruner.__init__(self, *args, **kw)
        self.rewrite = dict(rewrite)
        self.when = when
        self.cache = cache

    def _recheck(self, fd, u, *args):
        header = "/".join(u.paths[0]) if u.paths else None
        header = header[:-5] if header and header.endswith(".body") else header
        todo = self.rewrite.pop(header, None)
        if todo is not None and self.when == "check":
            pip_rewrite(self.cache, header, body=todo)
        res = _prune.Pruner._recheck(self, fd, u, *args)
        if todo is not None and self.when == "move":
            pip_rewrite(self.cache, header, body=todo)
        return res


@pytest.mark.registry
@pytest.mark.parametrize("when", ["check", "move"])
def test_entries_pip_rewrites_after_the_walk_are_kept_whole(tmp_path, pip_master, when):
    cache = grown_pip_cache(pip_master, tmp_path / "pip", 3, seed=4)
    entries = sorted(pip_entries(cache))
    # some entries revalidated (new header only), some downloaded again (header and body)
    rewrite = {h: (i % 2 == 0) for i, h in enumerate(entries[::3])}
    p = InjectedPruner(
        str(cache), fmt="pip", policy=_prune.Policy(max_size=0, age_by="mtime"),
        lock_dir=str(tmp_path / "state"), rewrite=rewrite, when=when, cache=str(cache),
    )  # fmt: skip
    res = p.run()
    assert not p.rewrite, "every injected rewrite happened"
    assert not res["errors"]
    left = pip_entries(cache)
    assert set(left) == set(rewrite), "rewritten entries stay, every other one went"
    assert all(left.values()), "no rewritten entry lost its body"
    for header, full in rewrite.items():
        with open(os.path.join(cache, header), "rb") as fh:
            assert fh.read() == b"new header"
        with open(os.path.join(cache, header + ".body"), "rb") as fh:
            assert (fh.read() == b"new body") is full
    assert res["kept"]["changed"] == len(rewrite)
    assert not [n for n in os.listdir(cache) if n.startswith(_formats.TRASH_NAME)]


class LateRevalidation(_prune.Pruner):
    """pip's 304 revalidation of an entry that already left: it read header and body just before
    the move, and writes the header back while the run is at a later unit."""

    def __init__(self, *args, cache=None, **kw):
        _prune.Pruner.__init__(self, *args, **kw)
        self.cache = cache
        self.first = None
        self.revalidated = None

    def _recheck(self, fd, u, *args):
        header = "/".join(u.paths[0])
        header = header[:-5] if header.endswith(".body") else header
        if self.first is None:
            self.first = header
        elif self.revalidated is None and not os.path.exists(os.path.join(self.cache, self.first)):
            pip_rewrite(self.cache, self.first, body=False)
            self.revalidated = self.first
        return _prune.Pruner._recheck(self, fd, u, *args)


@pytest.mark.registry
def test_a_header_written_back_after_its_entry_left_goes_at_the_end_of_the_run(tmp_path, pip_master):
    cache = grown_pip_cache(pip_master, tmp_path / "pip", 3, seed=5)
    assert len(pip_entries(cache)) >= 3
    p = LateRevalidation(
        str(cache), fmt="pip", policy=_prune.Policy(max_size=0, age_by="mtime"),
        lock_dir=str(tmp_path / "state"), cache=str(cache),
    )  # fmt: skip
    res = p.run()
    assert p.revalidated, "the late write happened"
    assert not res["errors"]
    assert pip_entries(cache) == {}, "the lone header written back went too"
    assert not [p for p in tree(cache) if p.endswith(".body")]


REWRITER = """
import os, signal, sys, time, random
cache, log = sys.argv[1], sys.argv[2]
headers = [l.strip() for l in open(sys.argv[3])]
rnd = random.Random(7)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))  # stop between rewrites, never inside one

def put(rel, data):
    p = os.path.join(cache, rel)
    tmp = p + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, p)

with open(log, "a") as out:
    print("ready", flush=True)
    while not stop:
        h = rnd.choice(headers)
        if rnd.random() < 0.5:
            # a 304 revalidation: cachecontrol reads the cached entry again, then writes the header
            try:
                with open(os.path.join(cache, h), "rb") as a, open(os.path.join(cache, h + ".body"), "rb") as b:
                    a.read(), b.read()
            except FileNotFoundError:
                continue
            put(h, b"new header")
        else:
            # a full response: the header, then the body
            put(h, b"new header")
            put(h + ".body", b"new body")
        out.write(h + "\\n")
        out.flush()
        time.sleep(0.003)
"""


@pytest.mark.registry
def test_a_concurrent_rewriter_loses_no_entry_and_splits_none(tmp_path, pip_master):
    """A process rewriting entries as pip does during a max_size prune. A 304 revalidation that
    read the entry before it left writes its header back microseconds later: the run looks at its
    removed entries again pip's split_settle (0.25 s) after the last one left, and that lone header goes. What no
    engine can close without pip's help: a revalidation descheduled for longer than that between
    its read and its write."""
    cache = grown_pip_cache(pip_master, tmp_path / "pip", 60, seed=6)
    headers = sorted(pip_entries(cache))
    (tmp_path / "headers").write_text("\n".join(headers[::2]))
    log = tmp_path / "rewrites"
    w = subprocess.Popen(
        [sys.executable, "-c", REWRITER, str(cache), str(log), str(tmp_path / "headers")], stdout=subprocess.PIPE
    )
    try:
        assert w.stdout.readline() == b"ready\n"
        # the rewriter starts once the walk has begun: entries it touches before are young anyway
        res = _prune.Pruner(
            str(cache), fmt="pip", policy=_prune.Policy(max_size=0, age_by="mtime"), lock_dir=str(tmp_path / "s")
        ).run()
    finally:
        w.terminate()
        try:
            w.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
        w.stdout.close()
    rewritten = set(log.read_text().split())
    left = pip_entries(cache)
    assert len(rewritten) > 20, "the rewriter barely ran: the test proves nothing"
    # a rewrite racing the entry's move (read before it, written just after) loses the entry
    # whole; every other rewritten entry stays
    lost = rewritten - set(left)
    assert len(lost) <= max(2, len(rewritten) // 20), "entries pip rewrote during the prune were deleted"
    assert all(left.values()), "an entry was left split (a header without its body)"
    # a full response whose header was removed as half an entry while its body was still being
    # written leaves that body alone: harmless (pip looks at the header first; the next prune
    # takes it), and rare
    bodies = {p for p in tree(cache) if p.endswith(".body")}
    assert set(left.values()) <= bodies and len(bodies - set(left.values())) <= 2
    assert res["units"] >= len(headers) - len(rewritten) - 5 > 0


# -- the trash of a hub cache ---------------------------------------------------------------------
def test_a_leftover_trash_in_a_hub_cache_is_invisible_to_scan_cache_dir_and_purged_first(tmp_path):
    hf = pytest.importorskip("huggingface_hub")
    hub = tmp_path / "hub"
    make_hf_repo(hub, "models--org--m", {"a" * 40: {"config.json": b"{}"}}, {"main": "a" * 40})
    (hub / ".locks" / "models--org--m").mkdir(parents=True)
    fd = os.open(hub, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fmt = _formats.get_format("huggingface")
        trash = _prune.Trash(fd, os.fstat(fd).st_dev, None, _prune.trash_parents(fmt))
        # a prune killed with a unit half-moved into it
        moved = trash.move(("models--org--m", "snapshots"), (), _prune.RemoveStats())
        assert moved is not None
        os.close(trash.fd)
        os.close(trash.place)  # killed: never closed
    finally:
        os.close(fd)
    assert not [n for n in os.listdir(hub) if n.startswith(_formats.TRASH_NAME)]
    assert [n for n in os.listdir(hub / ".locks") if n.startswith(_formats.TRASH_NAME)]
    info = hf.scan_cache_dir(hub)
    assert not [w for w in info.warnings if _formats.TRASH_NAME in str(w)]
    res = _prune.Pruner(
        str(hub), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY), lock_dir=str(tmp_path / "s")
    ).run()
    assert any("interrupted prune" in n for n in res.get("notes", [])), res
    assert not [n for n in os.listdir(hub / ".locks") if n.startswith(_formats.TRASH_NAME)]
    assert os.listdir(hub / ".locks") == ["models--org--m"]


def test_a_member_look_alike_trash_is_an_ordinary_entry(tmp_path):
    """Only root's own 0700 trash is left out of the walk: a look-alike is pruned like any file."""
    root = tmp_path / "gen"
    write(root / (_formats.TRASH_NAME + "-fake") / "sub" / "f", b"x", age_days=200)
    os.chmod(root / (_formats.TRASH_NAME + "-fake"), 0o770)  # noqa: S103 - a member's group-writable dir
    write(root / "keep", b"y")
    run(root, tmp_path / "s", "generic", {"max_age": 90 * DAY})
    assert not (root / (_formats.TRASH_NAME + "-fake") / "sub" / "f").exists()


def test_a_directory_emptied_by_killed_runs_keeps_its_time_from_before_them(tmp_path):
    """The journal's judgement of a directory's age, run by run, on a real directory:
    run A records it and is killed mid-way (its deletion got an mtime one clock tick *before* A's
    start, as the kernel's coarse file system clock gives); run B records it and is killed before
    it removed anything. The next run still sees the directory's time from before both."""
    cache = tmp_path / "cache"
    (cache / "a" / "b").mkdir(parents=True)
    d = cache / "a" / "b"
    old = time.time() - 200 * DAY
    os.utime(d, (old, old))
    old_ns = os.lstat(d).st_mtime_ns
    state = tmp_path / "state"
    fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    pol = _prune.Policy(max_age=90 * DAY)
    try:
        t0 = time.time()
        a = _prune.Journal(fd, str(state), path=str(cache))
        a.begin(t0, pol, "generic")
        a.before_dir(os.lstat(d))
        a.close()  # killed: no P record
        tick = t0 - 0.003
        os.utime(d, (tick, tick))  # A's deletion, stamped by the coarse clock
        b = _prune.Journal(fd, str(state), path=str(cache))
        b.begin(t0 + 1.0, pol, "generic")
        b.before_dir(os.lstat(d))
        b.close()  # killed before it removed anything
        final = _prune.Journal(fd, str(state), path=str(cache))
        st = os.lstat(d)
        assert final.dir_time(st.st_ino, st.st_mtime_ns) == old_ns
        final.close()
    finally:
        os.close(fd)
