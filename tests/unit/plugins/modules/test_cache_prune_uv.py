# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_prune on a uv cache filled by the real uv (PyPI ``uv``, pinned in requirements/*.txt).

The cache comes from real ``uv pip install`` runs (wheels, an sdist-only package built by uv,
index responses, interpreter info); after each prune uv itself is asked: ``uv pip install`` of the
same set (offline from what is left, and from the index), ``uv cache prune`` (it finds nothing our
prune should have removed) and ``uv cache size`` (our ``before`` is its number). Skipped (a failure
under MLINFRA_STRICT_SKIPS=1) only when uv or PyPI is missing.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats, _prune
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_prune
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import age, run_main, tree

DAY = 86400
# what the master cache is filled with: three wheels and one sdist-only package uv builds itself
# (with setuptools, fetched into the cache too); small downloads (about 1.5 MB in all)
WHEELS = ["six==1.17.0", "idna==3.10", "packaging==24.2"]
SDIST = "docopt==0.6.2"


def uv_bin():
    """uv from the test venv (requirements/dev.txt pins it), else from PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "uv")
    for cand in (here, shutil.which("uv")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


UV = uv_bin()
# uv installs from PyPI: the integration tier (make test's registry stage)
pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(UV is None, reason="uv is not installed (pip install -r requirements/dev.txt)"),
]


def uv_env(cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env.update(UV_CACHE_DIR=str(cache), UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1", UV_NO_PROGRESS="1")
    return env


def uv(cache, *args, timeout=120, **env):
    return subprocess.run(
        [UV] + list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(uv_env(cache), **env),
    )


def venv(cache, path):
    res = uv(cache, "venv", "-q", str(path), "--python", sys.executable)
    assert res.returncode == 0, res.stderr
    return path


def run_module(capsys, check=False, **args):
    return run_main(cache_prune, capsys, check=check, **args)


def du(*paths):
    """Allocated bytes below paths, hard links once over all of them, directories included (du -s -B1)."""
    seen, total = set(), 0
    for path in paths:
        for dp, dn, fn in os.walk(path):
            for n in dn + fn + ["."] * (dp == str(path)):
                st = os.lstat(os.path.join(dp, n))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def dir_blocks(path):
    """{(dev, ino): allocated bytes} of the directories below path."""
    out = {}
    for dp, _dn, _fn in os.walk(path):
        st = os.lstat(dp)
        out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return out


@pytest.fixture(scope="module")
def uv_master(tmp_path_factory):
    base = tmp_path_factory.mktemp("uvmaster")
    cache = base / "cache"
    env = venv(cache, base / "env")
    res = uv(cache, "pip", "install", "--python", str(env), *WHEELS, SDIST, timeout=180)
    if res.returncode:
        pytest.skip("uv could not install from PyPI (unreachable?): %s" % res.stderr[-300:])
    shutil.rmtree(env)  # the copies below hold no hard link to it
    return cache


@pytest.fixture
def cache(tmp_path, uv_master):
    dst = tmp_path / "cache" / "uv"
    shutil.copytree(uv_master, dst, symlinks=True)
    return dst


def units(path):
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {u.key: u for u in _formats.collect(fd, "uv").units}
    finally:
        os.close(fd)


def entry(keys, package):
    return next(k for k in keys if k.startswith("wheels-") and "/pypi/%s/" % package in k)


def uv_prune_removes(cache):
    """What ``uv cache prune`` (uv's own) still finds to remove: (files, its output)."""
    res = uv(cache, "cache", "prune")
    assert res.returncode == 0, res.stderr
    m = re.search(r"Removed (\d+) files?", res.stderr)
    return (int(m.group(1)) if m else 0), res.stderr


def test_uv_units_and_size_agree_with_uv(capsys, cache):
    found = units(cache)
    kinds = {}
    for u in found.values():
        kinds.setdefault(u.kind, []).append(u.key)
    for pkg in ("six", "idna", "packaging", "setuptools"):
        assert found[entry(found, pkg)].kind == "wheel" and found[entry(found, pkg)].shared  # + its archive
    assert [k.split("/")[2] for k in kinds["sdist build"]] == ["docopt"]
    assert {k.rsplit("/", 1)[1] for k in kinds["index page"]} >= {"six", "idna", "packaging", "docopt", "setuptools"}
    assert kinds["interpreter info"]
    chk = run_module(capsys, check=True, path=str(cache), max_age="90d")
    assert chk["format"] == "uv" and chk["units"] == 0  # auto-detected; nothing is 90 days old
    size = uv(cache, "cache", "size", "--preview-features", "cache-size", "--output-format", "machine")
    assert size.returncode == 0, size.stderr
    assert chk["before"]["bytes"] == int(size.stdout.split()[0])  # both count blocks, links once


def test_uv_age_prune_leaves_what_uv_installs_from_and_nothing_uv_prune_wants(capsys, tmp_path, cache):
    age(cache, 200)
    now = time.time()
    for key, u in units(cache).items():
        if key.endswith("/pypi/six") or "/pypi/six/" in key:
            for p in u.paths:  # six was installed today: uv read its index page and cache policy
                if p[-1].endswith((".rkyv", ".http", ".msgpack")):
                    os.utime(os.path.join(str(cache), *p), (now, now))
    chk = run_module(capsys, check=True, path=str(cache), max_age="90d", min_age="0")
    res = run_module(capsys, path=str(cache), max_age="90d", min_age="0")
    assert res["changed"] and res["units"] == chk["units"] and res["bytes"] == chk["bytes"]
    left = units(cache)
    assert [k for k in left if k.startswith("wheels-")] == [entry(left, "six")]
    assert not [k for k in left if k.startswith("archive-")]  # every archive is some entry's
    assert not any(n.startswith(_formats.TRASH_NAME) for n in os.listdir(cache))
    # uv's own prune finds nothing left to call dangling (no archive without its entry)
    assert uv_prune_removes(cache)[0] == 0
    # what is left installs offline; the rest comes again from the index
    env = venv(cache, tmp_path / "env")
    off = uv(cache, "pip", "install", "--offline", "--python", str(env), "six==1.17.0")
    assert off.returncode == 0, off.stderr
    res = uv(cache, "pip", "install", "--offline", "--python", str(env), "idna==3.10")
    assert res.returncode != 0  # proof the offline install above used the cache only
    again = uv(cache, "pip", "install", "--python", str(env), *WHEELS, SDIST, timeout=180)
    assert again.returncode == 0, again.stderr
    run = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import six, idna, packaging, docopt"], capture_output=True, check=False
    )
    assert run.returncode == 0, run.stderr


def test_uv_size_cap_evicts_least_recently_used_and_frees_what_it_says(capsys, tmp_path, cache):
    found = units(cache)
    age(cache, 10)
    setuptools = found[entry(found, "setuptools")]
    for p in setuptools.paths:  # the build backend was used longest ago
        os.utime(os.path.join(str(cache), *p), (time.time() - 30 * DAY,) * 2, follow_symlinks=False)
    for sid in setuptools.shared:
        age(cache / "archive-v0" / sid, 30)
    before = du(cache)
    cap = before - (1 << 20)  # more than the stale dangling revision frees
    chk = run_module(capsys, check=True, path=str(cache), max_size=str(cap), min_age="0")
    res = run_module(capsys, path=str(cache), max_size=str(cap), min_age="0")
    # the dangling source revision uv left is stale: it goes first, whatever the cap
    lru = [s["key"] for s in res["sample"] if s["kind"] != "dangling source revision"]
    assert lru == [setuptools.key] == [s["key"] for s in chk["sample"] if s["kind"] != "dangling source revision"]
    assert res["bytes"] == chk["bytes"] > 3 << 20  # its archive went with it
    assert before - du(cache) >= res["bytes"] and res["after"]["bytes"] <= cap
    assert uv_prune_removes(cache)[0] == 0
    env = venv(cache, tmp_path / "env")
    off = uv(cache, "pip", "install", "--offline", "--python", str(env), *WHEELS)
    assert off.returncode == 0, off.stderr


def test_uv_hard_linked_files_are_never_counted_as_freed(capsys, tmp_path, cache):
    env = venv(cache, tmp_path / "env")  # same filesystem as the cache: uv hard-links (its default)
    res = uv(cache, "pip", "install", "--offline", "--python", str(env), *WHEELS)
    assert res.returncode == 0, res.stderr
    six_py = [f for f in tree(cache) if f.startswith("archive-") and f.endswith("/six.py")]
    assert len(six_py) == 1 and os.stat(os.path.join(str(cache), six_py[0])).st_nlink == 2
    age(cache, 200)
    before, dirs = du(cache, env), dir_blocks(cache)
    chk = run_module(capsys, check=True, path=str(cache), max_age="90d", min_age="0")
    res = run_module(capsys, path=str(cache), max_age="90d", min_age="0")
    assert res["units"] == chk["units"] > 0
    assert not [k for k in units(cache) if k.startswith("wheels-")]
    notes = [n for n in res.get("notes", []) if "hard-linked into environments" in n]
    assert len(notes) == 1 and re.match(r"uv: \d+ file\(s\)", notes[0])
    # promised = freed = what the filesystem got back (the cache and the environment, links once;
    # directories the entries held included): the linked files' bytes are still in use
    freed = before - du(cache, env)
    gone_dirs = dirs.keys() - dir_blocks(cache).keys()
    assert chk["bytes"] == res["bytes"] == freed - sum(dirs[d] for d in gone_dirs)
    # the environment still has its files
    run = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import six, idna, packaging"], capture_output=True, check=False
    )
    assert run.returncode == 0, run.stderr


def test_uv_at_work_makes_the_prune_wait_and_the_prune_holds_uv(capsys, tmp_path, cache):
    age(cache, 200)
    env = venv(cache, tmp_path / "env")
    busy = subprocess.Popen(
        [UV, "run", "--no-project", "--python", str(env / "bin" / "python"), "python", "-c",
         "print('ready', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=uv_env(cache),
    )  # fmt: skip
    try:
        assert busy.stdout.readline().strip() == "ready"
        res = run_module(capsys, path=str(cache), max_age="90d", min_age="0", lock_timeout=0)
    finally:
        busy.kill()
        busy.wait()
    assert res["skipped"] and res["busy"] == [".lock"] and "locked by its tool" in res["msg"]
    assert len(units(cache)) > 5  # nothing removed
    # the lock we take is the one uv's own `cache prune` takes: uv waits for us, then gives up
    fd = os.open(str(cache), os.O_RDONLY | os.O_DIRECTORY)
    try:
        tfd = _prune.take_tool_lock(fd, (".lock",), "flock", 0, False)
        try:
            blocked = uv(cache, "cache", "prune", UV_LOCK_TIMEOUT="1")
        finally:
            os.close(tfd)
    finally:
        os.close(fd)
    assert blocked.returncode != 0 and "lock" in blocked.stderr
    res = run_module(capsys, path=str(cache), max_age="90d", min_age="0", lock_timeout=0)
    assert not res["skipped"] and res["units"] > 5


def test_uv_lock_shared_by_a_member_keeps_everything_flock_not_fcntl(capsys, cache):
    """A process holding ``.lock`` shared (as every uv command does) keeps the run off."""
    age(cache, 200)
    fd = os.open(str(cache / ".lock"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        res = run_module(capsys, path=str(cache), max_age="90d", min_age="0", lock_timeout=0)
    finally:
        os.close(fd)
    assert res["skipped"] and res["busy"] == [".lock"]
    assert _formats.get_format("uv").tool_locks == (((".lock",), "flock"),)
