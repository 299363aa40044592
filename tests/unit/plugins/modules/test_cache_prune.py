# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_prune on real temporary trees: policies, check mode, bad input, safety as root, concurrency."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_prune
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import age, run_main, run_process, tree, write

DAY = 86400
OLD = time.time() - 200 * DAY


def run_module(capsys, check=False, diff=False, **args):
    return run_main(cache_prune, capsys, check=check, diff=diff, **args)


def run_module_subprocess(tmp_path, **args):
    return run_process(cache_prune, tmp_path, **args)


def warnings_of(res):
    return json.dumps(res.get("warnings", []))


@pytest.fixture
def gen(tmp_path):
    """A generic cache: old files (200 days), new files, nested dirs."""
    root = tmp_path / "cache" / "misc"
    for i in range(10):
        write(root / "old" / ("d%d" % i) / "f.bin", b"o" * 4096, age_days=200)
    for i in range(5):
        write(root / "new" / ("f%d" % i), b"n" * 4096)
    write(root / "mixed" / "old.txt", b"o" * 4096, age_days=200)
    write(root / "mixed" / "new.txt", b"n" * 4096)
    age(root / "old", 200)
    return root


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        ({"max_age": "ninety days"}, "cannot parse"),
        ({"max_age": "-5d"}, "cannot parse"),
        ({"max_size": "12 parsecs"}, "cannot parse"),
        ({"min_free": "-1G"}, "cannot parse"),
        ({"max_age": "1d", "lock_timeout": -1}, "lock_timeout"),
        ({"max_age": "1d", "exclude": [""]}, "exclude"),
    ],
)
def test_bad_values_fail_and_delete_nothing(capsys, gen, args, message):
    before = tree(gen)
    res = run_module(capsys, path=str(gen), **args)
    assert res["failed"] and message in res["msg"]
    assert tree(gen) == before


def test_bad_paths_fail(capsys, tmp_path, gen):
    for path, message in [
        ("/", "system directory"),
        ("/etc", "system directory"),
        ("/usr/share/doc", "system tree"),
        ("relative/dir", "absolute"),
        (str(gen) + "/../misc", "'..'"),
        (str(tmp_path / "missing"), "does not exist"),
        (write(tmp_path / "afile"), "not a directory"),
    ]:
        res = run_module(capsys, path=path, max_age="1d")
        assert res["failed"] and message in res["msg"], (path, res["msg"])
    res = run_module(capsys, path=str(gen), root=str(tmp_path / "elsewhere"), max_age="1d")
    assert res["failed"] and "outside the cache root" in res["msg"]
    os.symlink(gen, tmp_path / "link")
    res = run_module(capsys, path=str(tmp_path / "link"), max_age="1d")
    assert res["failed"] and "symbolic link" in res["msg"]
    res = run_module(capsys, path=str(gen), format="maven", max_age="1d")
    assert res["failed"] and "maven" in res["msg"]


def test_symlink_in_a_parent_component_is_refused(capsys, tmp_path, gen):
    os.symlink(gen.parent, tmp_path / "via")
    before = tree(gen)
    res = run_module(capsys, path=str(tmp_path / "via" / "misc"), max_age="1d")
    assert res["failed"] and "symbolic link" in res["msg"]
    assert tree(gen) == before


def mount_tmpfs(mnt, size):
    """Mount a small tmpfs at mnt (root only); False when that is not possible here."""
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "t", str(mnt)], check=False).returncode == 0


# -- policies -------------------------------------------------------------------------------
def test_check_mode_reports_the_same_figures_as_the_real_run(capsys, gen):
    before = tree(gen)
    chk = run_module(capsys, check=True, diff=True, path=str(gen), max_age="90d")
    assert chk["changed"] is True and tree(gen) == before
    assert chk["units"] == 11 and chk["files"] == 11 and chk["bytes"] == 11 * 4096
    assert chk["dirs"] == 10  # old/d0..d9; never the top-level dirs
    assert len(chk["sample"]) == 11 and chk["sample"][0]["reason"] == "max_age"
    assert "diff" in chk and "summary" in chk
    real = run_module(capsys, path=str(gen), max_age="90d")
    for k in ("units", "files", "bytes", "dirs"):
        assert real[k] == chk[k], k
    left = tree(gen)
    assert "mixed/new.txt" in left and "mixed/old.txt" not in left
    assert all("new/f%d" % i in left for i in range(5))
    assert "old" in left and not any(p.startswith("old/") for p in left)
    again = run_module(capsys, path=str(gen), max_age="90d")
    assert again["changed"] is False and again["units"] == 0


def test_no_policy_does_nothing(capsys, gen):
    res = run_module(capsys, path=str(gen))
    assert res["changed"] is False and res["skipped"] is True and "no retention policy" in res["msg"]


def test_min_age_protects_recent_files_whatever_max_age_says(capsys, gen):
    res = run_module(capsys, path=str(gen), max_age="0s", min_age="1h")
    assert res["units"] == 11
    assert all("new/f%d" % i in tree(gen) for i in range(5))


def test_max_size_evicts_least_recently_used_first(capsys, tmp_path):
    root = tmp_path / "lru"
    for i in range(10):
        write(root / "d" / ("f%02d" % i), b"z" * 8192, age_days=100 - i)  # f00 oldest
    res = run_module(capsys, path=str(root), max_size="40K")
    assert res["changed"]
    left = sorted(p for p in tree(root) if p.startswith("d/"))
    # 10 x 8 KiB + the dirs: the oldest go until at most 40 KiB are left
    assert left[0] > "d/f04" and "d/f09" in left
    total = sum(os.lstat(root / p).st_blocks * 512 for p in tree(root) | {"."})
    assert total <= 40 * 1024
    assert {s["reason"] for s in res["sample"]} == {"max_size"}


def test_min_free_evicts_until_enough_space(capsys, tmp_path):
    """On a small tmpfs of its own (the shared disk's free space moves with other writers)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not mount_tmpfs(mnt, "512k"):
        pytest.skip("needs root and mount(8)")
    try:
        root = mnt / "cache"
        for i in range(10):
            write(root / "d" / ("f%02d" % i), b"z" * 8192, age_days=100 - i)
        fd = os.open(str(root), os.O_RDONLY)
        free = _prune.free_bytes(fd)
        os.close(fd)
        res = run_module(capsys, path=str(root), min_free=str(free + 16384))
        assert res["units"] == 2, res
        assert sorted(os.listdir(root / "d"))[0] == "f02"
        assert {s["reason"] for s in res["sample"]} == {"min_free"}
        again = run_module(capsys, path=str(root), min_free=str(free + 16384))
        assert again["changed"] is False
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_exclude_patterns_keep_matching_entries(capsys, gen):
    res = run_module(capsys, path=str(gen), max_age="90d", exclude=["old/d1", "*.txt"])
    left = tree(gen)
    assert "old/d1/f.bin" in left and "mixed/old.txt" in left
    assert "old/d2/f.bin" not in left and res["units"] == 9


def test_age_by_atime_vs_mtime(capsys, tmp_path):
    root = tmp_path / "ages"
    p = write(root / "a" / "read-recently", b"r")
    t_old, t_new = time.time() - 200 * DAY, time.time() - 2 * DAY
    os.utime(p, (t_new, t_old))  # accessed 2 days ago, written 200 days ago
    res = run_module(capsys, check=True, path=str(root), max_age="90d", age_by="mtime")
    assert res["units"] == 1
    for by in ("atime", "newest"):
        res = run_module(capsys, check=True, path=str(root), max_age="90d", age_by=by)
        assert res["units"] == 0, by


def test_external_format_is_never_pruned(capsys, gen):
    before = tree(gen)
    res = run_module(capsys, path=str(gen), format="external", max_age="1s", min_age="0s")
    assert res["skipped"] and not res["changed"] and tree(gen) == before


# -- safety as root ---------------------------------------------------------------------------
def test_symlinks_out_of_the_root_are_removed_as_links_never_followed(capsys, tmp_path, gen):
    outside = tmp_path / "outside"
    write(outside / "precious" / "data", b"keep", age_days=300)
    write(outside / "file", b"keep", age_days=300)
    os.symlink(outside / "precious", gen / "old" / "dirlink")
    os.symlink(outside / "file", gen / "old" / "filelink")
    for n in ("dirlink", "filelink"):
        os.utime(gen / "old" / n, (OLD, OLD), follow_symlinks=False)
    run_module(capsys, path=str(gen), max_age="90d")
    assert (outside / "precious" / "data").read_bytes() == b"keep"
    assert (outside / "file").read_bytes() == b"keep"
    assert not os.path.lexists(gen / "old" / "dirlink") and not os.path.lexists(gen / "old" / "filelink")


def test_hard_link_to_an_outside_file_only_loses_the_link(capsys, tmp_path, gen):
    outside = write(tmp_path / "outside-hl", b"precious", age_days=300)
    os.link(outside, gen / "old" / "hl")
    os.utime(outside, (OLD, OLD))
    res = run_module(capsys, path=str(gen), max_age="90d")
    assert not os.path.lexists(gen / "old" / "hl")
    with open(outside, "rb") as fh:
        assert fh.read() == b"precious"
    assert os.stat(outside).st_nlink == 1
    # a hard-linked file frees nothing: the bytes reported are the other 11 files only
    assert res["bytes"] == 11 * 4096


def test_odd_names(capsys, tmp_path):
    root = tmp_path / "odd"
    names = ["with space", "new\nline", "tab\tname", "-dash", "*glob?"]
    raw = os.fsencode(str(root)) + b"/bad-\xff\xfe-utf8"
    os.makedirs(root / "d")
    for n in names:
        write(root / "d" / n, b"o", age_days=200)
    with open(raw, "wb") as fh:
        fh.write(b"o")
    os.utime(raw, (OLD, OLD))
    write(root / "d" / "keep me", b"n")
    res = run_module(capsys, path=str(root), max_age="90d")
    assert res["units"] == len(names) + 1
    assert os.listdir(os.fsencode(str(root / "d"))) == [b"keep me"]
    assert not os.path.lexists(raw)


def test_directory_swapped_for_a_symlink_is_not_followed(tmp_path):
    """remove_path on a tree whose directory became a symlink to the outside: nothing outside goes."""
    root = tmp_path / "swap"
    outside = tmp_path / "outside"
    write(outside / "x" / "secret", b"s", age_days=300)
    write(root / "a" / "x" / "secret", b"s", age_days=300)
    fd = os.open(str(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        shutil.rmtree(root / "a")
        os.symlink(outside, root / "a")
        assert _prune.remove_path(fd, ("a", "x")) is None
        assert _prune.remove_path(fd, ("a", "x", "secret")) is None
        # the link itself (last component) is removed as a link
        stats = _prune.remove_path(fd, ("a",))
        assert stats.files == 1 and not os.path.lexists(root / "a")
    finally:
        os.close(fd)
    assert (outside / "x" / "secret").read_bytes() == b"s"


def test_directories_swapped_during_runs_never_redirect_the_prune(capsys, tmp_path):
    """A thread keeps swapping a directory with a symlink to the outside while prunes run."""
    root = tmp_path / "race"
    outside = tmp_path / "outside"
    for i in range(30):
        write(outside / ("s%02d" % i), b"s", age_days=300)
    stop = threading.Event()

    def swapper():
        while not stop.is_set():
            try:
                os.rename(root / "victim", root / "victim.tmp")
                os.symlink(outside, root / "victim")
                os.unlink(root / "victim")
                os.rename(root / "victim.tmp", root / "victim")
            except OSError:
                pass

    for _round in range(5):
        for i in range(30):
            write(root / "victim" / ("s%02d" % i), b"v", age_days=300)
        age(root / "victim", 300)
        t = threading.Thread(target=swapper)
        t.start()
        try:
            run_module(capsys, path=str(root), max_age="90d", min_age="0s")
        finally:
            stop.set()
            t.join()
            stop.clear()
        if os.path.islink(root / "victim"):
            os.unlink(root / "victim")
        if os.path.isdir(root / "victim.tmp") and not os.path.exists(root / "victim"):
            os.rename(root / "victim.tmp", root / "victim")
    assert sorted(os.listdir(outside)) == ["s%02d" % i for i in range(30)]


def test_other_filesystem_inside_the_cache_is_left(capsys, tmp_path):
    root = tmp_path / "withmount"
    write(root / "local" / "old", b"o", age_days=200)
    mnt = root / "mnt"
    mnt.mkdir()
    if not mount_tmpfs(mnt, "1m"):
        pytest.skip("needs root and mount(8)")
    try:
        write(mnt / "inner" / "old", b"o", age_days=200)
        res = run_module(capsys, path=str(root), max_age="90d")
        assert (mnt / "inner" / "old").exists()
        assert not (root / "local" / "old").exists() and res["units"] == 1
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- concurrency ----------------------------------------------------------------------------------
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder():
    procs = []

    def hold(path):
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "locked"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_files_and_directories_another_process_locked_are_skipped(capsys, gen, holder):
    holder(gen / "mixed" / "old.txt")
    holder(gen / "old" / "d3")
    res = run_module(capsys, path=str(gen), max_age="90d")
    left = tree(gen)
    assert "mixed/old.txt" in left and "old/d3/f.bin" in left
    assert "old/d4/f.bin" not in left and res["units"] == 9
    assert any("old.txt" in b for b in res["busy"]) and any(b.endswith("old/d3") for b in res["busy"])


def test_a_second_prune_waits_then_skips_and_says_so(tmp_path, gen, holder):
    st = os.stat(gen)
    lock = _prune.PRUNE_LOCK_DIR + "/prune-%x-%d.lock" % (st.st_dev, st.st_ino)
    os.close(_prune.open_lock_file(lock))  # as a prune makes it: root's, 0600, in a root-only directory
    holder(lock)  # what a running prune holds: flock on its root-only lock file
    t0 = time.monotonic()
    res = run_module_subprocess(tmp_path, path=str(gen), max_age="90d", lock_timeout=1)
    assert 0.9 <= time.monotonic() - t0 < 15
    assert res["skipped"] and not res["changed"] and "another prune" in res["msg"]
    assert "another prune" in warnings_of(res)
    assert "mixed/old.txt" in tree(gen)


def test_two_prunes_at_once_delete_each_file_once(tmp_path):
    root = tmp_path / "two"
    for i in range(40):
        for j in range(25):
            write(root / ("d%02d" % i) / "sub" / ("f%02d" % j), b"t" * 100)
    age(root, 200)
    results = []

    def one():
        results.append(_prune.Pruner(str(root), policy=_prune.Policy(max_age=90 * DAY)).run())

    threads = [threading.Thread(target=one) for _i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["files"] for r in results) == 1000
    assert all(not r["errors"] for r in results)
    assert not any(p.count("/") >= 1 for p in tree(root))


def test_a_writer_creating_files_during_the_prune_loses_nothing(tmp_path):
    root = tmp_path / "busy"
    for i in range(20):
        for j in range(50):
            write(root / ("d%02d" % i) / ("f%02d" % j), b"o")
    age(root, 200)
    created = []
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            d = root / ("d%02d" % (n % 20))
            try:
                p = write(d / ("new%05d" % n), b"n")
                created.append(p)
            except OSError:
                pass
            n += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        res = _prune.Pruner(str(root), policy=_prune.Policy(max_age=90 * DAY, min_age=3600)).run()
    finally:
        stop.set()
        t.join()
    assert created and all(os.path.exists(p) for p in created)
    assert res["files"] == 1000


KILLED = """
import sys
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
print("start", flush=True)
_prune.Pruner(sys.argv[1], policy=_prune.Policy(max_age=90 * 86400)).run()
"""


def test_sigkill_mid_run_then_rerun_converges(tmp_path):
    root = tmp_path / "kill"
    for i in range(30):
        for j in range(100):
            write(root / ("d%02d" % i) / ("f%03d" % j), b"k")
    write(root / "keep" / "recent", b"n")
    for i in range(30):
        age(root / ("d%02d" % i), 200)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(root)], stdout=subprocess.PIPE, env=env)
    p.stdout.readline()
    deadline = time.monotonic() + 30
    while len(os.listdir(root / "d00")) == 100 and time.monotonic() < deadline:
        time.sleep(0.001)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert len(os.listdir(root / "d29")) == 100, "the prune was not killed mid-run"
    # the lock died with the process: a rerun gets it at once and finishes the job
    res = _prune.Pruner(str(root), policy=_prune.Policy(max_age=90 * DAY), lock_timeout=0).run()
    assert not res["skipped"] and not res["errors"]
    assert tree(root) == {"keep", "keep/recent"} | {"d%02d" % i for i in range(30)}
