# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_prune and cache_report on every HuggingFace hub layout in use.

Caches are filled by huggingface_hub 2.4 itself: real downloads from a loopback hub (the fake hub
of the prefetch tests), then, for the 2.x shared Xet store, huggingface_hub's own
``publish_blob_to_shared_store`` (the loopback hub serves no Xet, so the download cannot publish
by itself). Layouts: ``plain`` (0.x/1.x, or 2.x with HF_HUB_DISABLE_SHARED_BLOBS), ``store`` (2.x,
every blob in the store) and ``mixed`` (one repo published, one written with the store disabled).
After every prune, huggingface_hub's ``scan_cache_dir()`` has no warning and its
``unreferenced_shared_blobs`` finds nothing; sizes are checked against du-style counting.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _fs, _prune, _usage
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_prune
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import run_main, tree

hfh = pytest.importorskip("huggingface_hub")
from huggingface_hub.utils import _shared_blobs  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "hf_store_fake_hub", Path(__file__).parent / "test_prefetch_support" / "fake_hub.py"
)
fake_hub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_hub)

DAY = 86400
W = os.urandom(96 * 1024)  # the weights both models share
REPOS = {
    "model": {
        "org/llm": {
            "v1": {"config.json": b'{"v": 1}', "model.safetensors": os.urandom(64 * 1024)},
            "main": {"config.json": b'{"v": 2}', "model.safetensors": W},
        },
        "org/llm-ft": {"main": {"config.json": b'{"ft": 1}', "model.safetensors": W}},
    }
}


def run_module(capsys, check=False, **args):
    return run_main(cache_prune, capsys, check=check, **args)


def du(path):
    """du -s --block-size=1 (apparent blocks, each inode once, directories included)."""
    seen = set()
    total = os.lstat(path).st_blocks * 512
    for dp, dn, fn in os.walk(path):
        for n in dn + fn:
            st = os.lstat(os.path.join(dp, n))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def publish(hub, repo_dir):
    """Move every blob of ``repo_dir`` into the shared store, as a Xet download does."""
    for blob in sorted((repo_dir / "blobs").iterdir()):
        if blob.is_symlink():
            continue
        data = blob.read_bytes()
        assert _shared_blobs.publish_blob_to_shared_store(
            blob_path=str(blob),
            xet_hash=hashlib.sha256(data).hexdigest(),
            cache_dir=str(hub),
            expected_size=len(data),
        )


def set_times(path, t):
    for dp, dn, fn in os.walk(path):
        for n in dn + fn:
            os.utime(os.path.join(dp, n), (t, t), follow_symlinks=False)
    os.utime(path, (t, t))


def build(tmp_path, layout):
    home = tmp_path / "huggingface"
    hub = home / "hub"
    hub.mkdir(parents=True)
    os.chmod(hub, 0o2770)  # noqa: S103 - a cache directory, group only
    with fake_hub.FakeHub(REPOS) as fh:
        for repo, branches in REPOS["model"].items():
            for branch, files in branches.items():
                for f in files:
                    hfh.hf_hub_download(repo, f, revision=branch, cache_dir=str(hub), endpoint=fh.endpoint)
    a, b = hub / "models--org--llm", hub / "models--org--llm-ft"
    if layout in ("store", "mixed"):
        publish(hub, a)
    if layout == "store":
        publish(hub, b)
    old = time.time() - 200 * DAY
    set_times(home, old)
    # org/llm-ft was used an hour ago: its own config was read (the weights are shared with llm)
    snap = next((b / "snapshots").iterdir())
    now = time.time() - 3600
    os.utime(snap / "config.json", (now, now))  # follows the links, as reading it does
    return home, hub, a, b


def hf_clean(hub):
    """huggingface_hub's own view: no scan warning, nothing unreferenced in the store, no dangling link."""
    info = hfh.scan_cache_dir(str(hub))
    assert not info.warnings, info.warnings
    assert _shared_blobs.unreferenced_shared_blobs(str(hub)) == {}
    for dp, _dn, fn in os.walk(hub):
        for f in fn:
            assert os.path.exists(os.path.join(dp, f)), "dangling link %s/%s" % (dp, f)
    return {r.repo_id: len(r.revisions) for r in info.repos}


def store_payloads(hub):
    return sorted(p.name for p in _shared_blobs.shared_store_blob_paths(str(hub)))


@pytest.mark.parametrize("layout", ["plain", "store", "mixed"])
def test_revisions_go_and_store_payloads_follow_their_last_link(capsys, tmp_path, layout):
    home, hub, a, b = build(tmp_path, layout)
    assert hf_clean(hub) == {"org/llm": 2, "org/llm-ft": 1}
    before = du(home)
    chk = run_module(capsys, check=True, path=str(home), format="huggingface", max_age="90d")
    res = run_module(capsys, path=str(home), format="huggingface", max_age="90d")
    assert res["changed"] and res["units"] == 2, res
    assert [n for n in res["notes"] if "no revision left" in n] == [
        "removed 1 repo(s) with no revision left: hub/models--org--llm"
    ], res["notes"]
    # org/llm (both revisions) went whole; the weights stay for org/llm-ft, counted once
    assert hf_clean(hub) == {"org/llm-ft": 1}
    assert not a.exists()
    assert (next((b / "snapshots").iterdir()) / "model.safetensors").read_bytes() == W
    freed = before - du(home)
    assert res["bytes"] == chk["bytes"]
    # what the result says it freed is what du sees gone, but for directories (not units)
    assert 0 <= freed - res["bytes"] < 64 * 1024, (freed, res["bytes"])
    if layout == "store":
        assert store_payloads(hub) == sorted(hashlib.sha256(c).hexdigest() for c in (W, b'{"ft": 1}'))
        manifest = hub / "blobs" / hashlib.sha256(W).hexdigest()[:2] / (hashlib.sha256(W).hexdigest() + ".refs")
        lines = manifest.read_text().splitlines()
        assert lines and all(line.startswith("models--org--llm-ft/blobs/") for line in lines), lines
    elif layout == "mixed":
        assert store_payloads(hub) == []  # llm-ft holds its own copy: every payload of llm went
    # a second run changes nothing; then the last model goes and the store is left empty
    assert run_module(capsys, path=str(home), format="huggingface", max_age="90d")["changed"] is False
    res = run_module(capsys, path=str(home), format="huggingface", max_age="0s", min_age="0s")
    assert res["units"] == 1
    assert hf_clean(hub) == {}
    assert store_payloads(hub) == []
    assert not b.exists()


@pytest.mark.parametrize("layout", ["plain", "store"])
def test_report_counts_a_shared_payload_once_and_names_the_models(tmp_path, layout):
    home, hub, a, b = build(tmp_path, layout)
    if layout == "store":  # and a payload no repo links to any more (counted outside the units)
        (hub / "blobs" / "ab").mkdir(exist_ok=True)  # W is random: its payload may be there
        (hub / "blobs" / "ab" / ("ab" * 32)).write_bytes(b"x" * 10000)
    out = _usage.measure_cache("hf", str(home), fmt="huggingface", top=50)
    assert out["bytes"] == du(home)
    units = out["units"]
    # units plus what is outside them add up to the files, the shared weights once
    files_disk = (
        du(home)
        - sum(os.lstat(os.path.join(dp, n)).st_blocks * 512 for dp, dn, _f in os.walk(home) for n in dn)
        - os.lstat(home).st_blocks * 512
    )
    assert sum(u["bytes"] for u in units) + out["outside_units_bytes"] == files_disk
    assert units[0]["unit"].startswith(("org/llm ", "org/llm-ft ")), units[0]


def test_killed_run_leftovers_converge_to_one_run(capsys, tmp_path):
    """What a prune killed between its steps leaves is finished by the next run, whatever the
    policy of that run: skeletons, repo blob links whose snapshot went, payloads whose links went."""
    ref_home, ref_hub, _a, _b = build(tmp_path / "ref", "store")
    run_module(capsys, path=str(ref_home), format="huggingface", max_age="90d")
    want = tree(ref_home)
    for step in ("snapshot", "links", "skeleton"):
        home, hub, a, b = build(tmp_path / step, "store")
        for snap in (a / "snapshots").iterdir():
            for dp, dn, fn in os.walk(snap, topdown=False):
                for n in fn:
                    os.unlink(os.path.join(dp, n))
                for n in dn:
                    os.rmdir(os.path.join(dp, n))
            os.rmdir(snap)
        if step in ("links", "skeleton"):
            for link in (a / "blobs").iterdir():
                os.unlink(link)
        if step == "skeleton":
            for ref in (a / "refs").iterdir():
                os.unlink(ref)
        # the next run has nothing to select (no policy): it still converges
        res = run_module(capsys, path=str(home), format="huggingface", max_age="10000d")
        assert tree(home) == want, (step, res)
        assert hf_clean(hub) == {"org/llm-ft": 1}


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_store_entry_lock_held_keeps_the_payload_until_a_later_run(capsys, tmp_path):
    home, hub, a, b = build(tmp_path, "store")
    h = hashlib.sha256(b'{"v": 1}').hexdigest()
    lock = hub / "blobs" / h[:2] / (h + ".lock")
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        res = run_module(capsys, path=str(home), format="huggingface", max_age="90d")
        assert any("lock is held" in n for n in res.get("notes", [])), res
        assert h in store_payloads(hub)
    finally:
        p.kill()
        p.wait()
    res = run_module(capsys, path=str(home), format="huggingface", max_age="90d")
    assert h not in store_payloads(hub)
    assert hf_clean(hub) == {"org/llm-ft": 1}


def test_an_entry_lock_goes_stale_only_when_every_run_found_it_held_for_a_day(tmp_path):
    """store_lock's records (root's state directory): a lock found held is recorded once; found
    free, its record goes, so a later brief hold (a real download) starts again from zero and is
    obeyed; only a hold every run has seen for TOOL_LOCK_STALE is taken as stale."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import huggingface as hf

    home, hub, a, b = build(tmp_path, "store")
    h = hashlib.sha256(b'{"v": 1}').hexdigest()
    lock = hub / "blobs" / h[:2] / (h + ".lock")
    parts = ("hub", "blobs", h[:2], h + ".lock")
    state = tmp_path / "state"
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(lock.parent, os.O_RDONLY | os.O_DIRECTORY)
    gid = os.fstat(fd).st_gid

    def attempt():
        got = hf.store_lock(dfd, lock.name, gid, 0, _prune.LockRecords(fd, str(state)), parts)
        if got is not None:
            os.close(got)
        return got is not None

    def records():
        return sorted(p for p in state.iterdir() if p.name.startswith("toollock-")) if state.exists() else []

    def age():
        for p in records():
            t = p.stat().st_mtime - _prune.TOOL_LOCK_STALE - 60
            os.utime(p, (t, t))

    try:
        assert attempt() and records() == []  # free: taken, nothing recorded
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "held"
            assert not attempt() and len(records()) == 1
            age()
            assert attempt()  # held (by every run's record) for a day: stale, the run goes on
        finally:
            p.kill()
            p.wait()
        assert attempt() and records() == []  # free again: the record goes
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "held"
            assert not attempt()  # a new hold is obeyed: the old day does not count
        finally:
            p.kill()
            p.wait()
    finally:
        os.close(dfd)
        os.close(fd)


def test_the_record_of_a_held_entry_lock_goes_with_its_entry(tmp_path):
    """Root records a store entry lock it found held (root's state directory). Once the entry is
    gone (here huggingface_hub's own sweep removed it after the hold ended) the next prune drops
    its record: a member who makes entries, holds their locks and removes them cannot fill root's
    directory. The record of an entry still there and still held stays."""
    home, hub, a, b = build(tmp_path, "store")
    state = tmp_path / "state"
    v1 = REPOS["model"]["org/llm"]["v1"]
    entries = [hashlib.sha256(v1[f]).hexdigest() for f in ("config.json", "model.safetensors")]
    locks = [hub / "blobs" / h[:2] / (h + ".lock") for h in entries]

    def prune():
        policy = _prune.Policy(max_age=90 * DAY)
        return _prune.Pruner(str(home), fmt="huggingface", policy=policy, lock_dir=str(state)).run()

    def records():
        return sorted(p.name for p in state.iterdir() if p.name.startswith("toollock-"))

    def hold(lock):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "held"
        return p

    holders = [hold(lock) for lock in locks]
    try:
        res = prune()  # v1 goes; both its payloads stay, their locks held
        assert any("lock is held" in n for n in res["notes"]), res["notes"]
        assert set(entries) <= set(store_payloads(hub)) and len(records()) == 2
    finally:
        holders[0].kill()
        holders[0].wait()
    # huggingface_hub's own sweep frees the first entry once its lock is free
    assert _shared_blobs.sweep_shared_blob(hub / "blobs" / entries[0][:2] / entries[0], cache_dir=str(hub)) > 0
    try:
        prune()
        left = records()
        assert len(left) == 1 and left[0].endswith(entries[1] + ".lock"), left
        assert entries[1] in store_payloads(hub)
    finally:
        holders[1].kill()
        holders[1].wait()
    prune()  # free at last: the payload goes, and its record
    assert records() == [] and not set(entries) & set(store_payloads(hub)), store_payloads(hub)
    assert hf_clean(hub) == {"org/llm-ft": 1}


def test_a_planted_lock_link_is_not_followed(capsys, tmp_path):
    home, hub, a, b = build(tmp_path, "store")
    h = hashlib.sha256(b'{"v": 1}').hexdigest()
    target = tmp_path / "victim"
    target.write_text("x")
    os.unlink(hub / "blobs" / h[:2] / (h + ".lock"))  # a member replaces the lock file by a link
    os.symlink(str(target), hub / "blobs" / h[:2] / (h + ".lock"))
    run_module(capsys, path=str(home), format="huggingface", max_age="90d")
    assert target.read_text() == "x" and os.stat(target).st_mode & 0o777 != 0o664
    assert h in store_payloads(hub)  # left: its lock could not be taken safely
    assert hfh.scan_cache_dir(str(hub)).warnings == []


def test_xet_and_assets_files_go_before_a_model_used_since(capsys, tmp_path):
    home, hub, a, b = build(tmp_path, "store")
    # a real hf_xet log, in the HF_HOME's xet cache
    env = dict(os.environ, HF_XET_CACHE=str(home / "xet"), HF_HOME=str(home))
    subprocess.run([sys.executable, "-c", "import hf_xet; hf_xet.XetSession()"], env=env, check=True)
    logs = list((home / "xet" / "logs").iterdir())
    assert logs
    shard = home / "xet" / "https___hub" / "shard-cache" / ("a" * 64 + ".mdb")
    chunk = home / "xet" / "https___hub" / "chunk-cache" / "AA" / "bbbb" / "0-1"
    asset = home / "assets" / "datasets" / "default" / "default" / "processed.arrow"
    for f, n in ((shard, 40000), (chunk, 80000), (asset, 50000)):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(n))
    old = time.time() - 300 * DAY  # used before any model was
    for f in logs + [shard, chunk, asset]:
        os.utime(f, (old, old))
    before = run_module(capsys, check=True, path=str(home), format="huggingface", max_size="1P")["before"]["bytes"]
    res = run_module(capsys, path=str(home), format="huggingface", max_size=str(before - 150000))
    kinds = sorted({s["kind"] for s in res["sample"]})
    assert "xet shard" in kinds and "xet chunk" in kinds and "asset" in kinds, res["sample"]
    assert {s["kind"] for s in res["sample"]} <= {"xet shard", "xet chunk", "xet log", "asset"}
    # the models, used after the xet and assets files, all stay
    assert hf_clean(hub) == {"org/llm": 2, "org/llm-ft": 1}
    assert not shard.exists() and not chunk.exists() and not asset.exists()
    # the directories they left empty went, the caches' own directories stay
    assert not chunk.parent.parent.exists() and chunk.parent.parent.parent.is_dir()
    assert not (home / "assets" / "datasets").exists() and (home / "assets").is_dir()
    assert res["after"]["bytes"] <= before - 150000


def test_a_cap_that_cannot_be_met_says_why_and_keeps_recent_models(capsys, tmp_path):
    home, hub, a, b = build(tmp_path, "store")
    res = run_module(capsys, path=str(home), format="huggingface", max_size="1k", min_age="1d")
    assert any("max_size" in n and "not met" in n and "min_age" in n for n in res["notes"]), res.get("notes")
    # org/llm-ft was used an hour ago, within min_age: only it is kept, and the note says so
    assert res["kept"]["young"] >= 1
    assert hf_clean(hub) == {"org/llm-ft": 1}


def test_a_member_manifest_link_or_bogus_lines_never_free_a_linked_payload(capsys, tmp_path):
    home, hub, a, b = build(tmp_path, "store")
    h = hashlib.sha256(W).hexdigest()
    manifest = hub / "blobs" / h[:2] / (h + ".refs")
    # a member rewrites the manifest: lines outside the cache, a link it does not list
    manifest.write_text("../../etc/passwd\n/abs/path\nmodels--org--llm/blobs/nothing\n")
    run_module(capsys, path=str(home), format="huggingface", max_age="90d")
    assert h in store_payloads(hub)  # org/llm-ft still links to it: found from the filesystem
    assert all(line.startswith("models--org--llm-ft/blobs/") for line in manifest.read_text().splitlines())
    assert hf_clean(hub) == {"org/llm-ft": 1}
    # a manifest replaced by a link is not read: the payload is kept, as huggingface_hub would
    victim = tmp_path / "victim"
    victim.write_text("models--org--llm-ft/blobs/x\n")
    manifest.unlink()
    os.symlink(victim, manifest)
    run_module(capsys, path=str(home), format="huggingface", max_age="0s", min_age="0s")
    assert victim.read_text() == "models--org--llm-ft/blobs/x\n"
    assert h in store_payloads(hub)


KILL = """
import sys
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
print("start", flush=True)
_prune.Pruner(sys.argv[1], fmt="huggingface", policy=_prune.Policy(max_age=90 * 86400)).run()
"""


def build_many(base):
    """30 models in the store, weights shared two by two; one model used today."""
    from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import make_hf_repo

    home = base / "huggingface"
    hub = home / "hub"
    for n in range(30):
        files = {"config.json": b'{"n": %d}' % n, "model.safetensors": b"W%d" % (n // 2) * 4096}
        repo = make_hf_repo(hub, "models--org--m%02d" % n, {"%040x" % (n + 1): files}, {"main": "%040x" % (n + 1)})
        publish(hub, repo)
    set_times(home, time.time() - 200 * DAY)
    now = time.time()
    os.utime(hub / "models--org--m29" / "snapshots" / ("%040x" % 30) / "config.json", (now, now))
    return home, hub


def test_a_prune_killed_anywhere_converges_to_what_one_run_leaves(tmp_path):
    ref_home, ref_hub = build_many(tmp_path / "ref")
    res = _prune.Pruner(str(ref_home), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY)).run()
    assert [n.split(":")[0] for n in res["notes"] if "no revision left" in n] == [
        "removed 29 repo(s) with no revision left"
    ], res["notes"]  # one note for them all
    want = tree(ref_home)
    assert hf_clean(ref_hub) == {"org/m29": 1}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def left(hub, what):
        repos = [n for n in os.listdir(hub) if n.startswith("models--")]
        if what == "repos":
            return len(repos)
        return sum(len(os.listdir(hub / r / "snapshots")) for r in repos if (hub / r / "snapshots").is_dir())

    # killed while revisions leave (the engine's units), then while empty repos go (the clean-up)
    for what, gone in (("snapshots", 3), ("snapshots", 17), ("repos", 2), ("repos", 21)):
        home, hub = build_many(tmp_path / ("%s%d" % (what, gone)))
        p = subprocess.Popen([sys.executable, "-c", KILL, str(home)], stdout=subprocess.PIPE, env=env)
        p.stdout.readline()
        deadline = time.monotonic() + 30
        while left(hub, what) > 30 - gone and time.monotonic() < deadline:
            time.sleep(0.0005)
        p.kill()
        p.wait()
        assert p.returncode == -9 and tree(home) != want, (what, gone, "not killed mid-run")
        # the killed run's leftovers: huggingface_hub reads the cache without a warning meanwhile
        assert not hfh.scan_cache_dir(str(hub)).warnings
        res = _prune.Pruner(str(home), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY)).run()
        assert not res["errors"], res["errors"]
        assert tree(home) == want, (what, gone, sorted(tree(home) ^ want)[:10])
        assert hf_clean(hub) == {"org/m29": 1}


def test_reading_repo_blob_links_never_makes_a_revision_look_used(capsys, tmp_path):
    """Every walk reads the links (readlink moves a link's atime): a revision whose payload is
    gone (dangling link) or whose link is an orphan is timed by the link's mtime, never its atime."""
    home, hub, a, b = build(tmp_path, "store")
    h = hashlib.sha256(REPOS["model"]["org/llm"]["v1"]["model.safetensors"]).hexdigest()
    os.unlink(hub / "blobs" / h[:2] / h)  # the payload went behind huggingface_hub's back
    for _walk in range(3):  # walks that read every link
        run_module(capsys, check=True, path=str(home), format="huggingface", max_age="90d")
    res = run_module(capsys, path=str(home), format="huggingface", max_age="90d")
    assert sorted(s["name"].split()[0] for s in res["sample"]) == ["org/llm", "org/llm"], res["sample"]
    assert hf_clean(hub) == {"org/llm-ft": 1}


@pytest.mark.parametrize("layout", ["plain", "store", "mixed"])
def test_a_walk_shared_by_workers_reports_what_one_walk_does(tmp_path, layout):
    """cache_report walks a big hub with several workers (a repo, a store bucket each): the
    figures, the units and their sizes are exactly those of one walk, with the Xet and assets
    caches, an interrupted download and a hard link between two repos' files in the tree."""
    home, hub, a, b = build(tmp_path, layout)
    for sub, size in (("xet/chunk-cache/ab/c1", 3000), ("xet/logs/xet.log", 100), ("assets/org/x.bin", 500)):
        (home / sub).parent.mkdir(parents=True, exist_ok=True)
        (home / sub).write_bytes(os.urandom(size))
    (a / "blobs" / ("cd" * 32 + ".incomplete")).write_bytes(b"x" * 7000)
    os.link(a / "blobs" / ("cd" * 32 + ".incomplete"), a / "blobs" / "hardlinked")  # one shard
    one = _usage.measure_cache("hf", str(home), fmt="huggingface", top=50)
    shared = _usage.measure_cache("hf", str(home), fmt="huggingface", top=50, workers=2)
    one.pop("seconds")
    shared.pop("seconds")
    assert shared == one
    assert one["hardlinks"] == 1 and one["bytes"] == du(home)
    assert {u["kind"] for u in one["units"]} >= {"revision", "incomplete download", "xet chunk", "asset"}
    # a hard link between two repos (two shards): counted once too; which of the two units
    # holds its bytes may differ from one walk's choice (that is the order of the walk)
    config = next((a / "snapshots").iterdir()) / "config.json"
    os.link(os.path.realpath(config), b / "blobs" / "hardlinked")
    one = _usage.measure_cache("hf", str(home), fmt="huggingface", top=50)
    shared = _usage.measure_cache("hf", str(home), fmt="huggingface", top=50, workers=2)
    for k in ("bytes", "apparent_bytes", "files", "hardlinks", "owners", "not_accessed", "outside_units_bytes"):
        assert shared[k] == one[k], k
    assert one["hardlinks"] == 2 and one["bytes"] == du(home)
    assert sum(u["bytes"] for u in shared["units"]) == sum(u["bytes"] for u in one["units"])
    assert sorted(u["key"] for u in shared["units"]) == sorted(u["key"] for u in one["units"])


class LoadDuringRun(_prune.Pruner):
    """A prune during which a user loads a model: the files of revision ``load`` (a unit key)
    are read just before that unit's re-check, after the walk chose it by its blobs' times."""

    def __init__(self, *args, load=None, snapshot=None, **kw):
        _prune.Pruner.__init__(self, *args, **kw)
        self.load = load
        self.snapshot = snapshot
        self.loaded = None

    def _recheck(self, fd, u, *args):
        if u.key == self.load:
            self.loaded = {f.name: f.read_bytes() for f in self.snapshot.iterdir()}  # through the links
        return _prune.Pruner._recheck(self, fd, u, *args)


@pytest.mark.parametrize("layout", ["plain", "store"])
def test_a_model_loaded_after_the_walk_chose_it_stays(tmp_path, layout):
    """Its last use comes from its blobs (or their store payloads), which are not its own paths:
    the re-check looks at them too, so a model read between the walk and its removal stays whole."""
    home, hub, a, b = build(tmp_path, layout)
    rev = (a / "refs" / "main").read_text()
    snapshot = a / "snapshots" / rev
    weights = os.path.realpath(snapshot / "model.safetensors")
    before = os.stat(weights).st_atime
    p = LoadDuringRun(
        str(home), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY), lock_dir=str(tmp_path / "state"),
        load="models--org--llm@" + rev, snapshot=snapshot,
    )  # fmt: skip
    res = p.run()
    assert p.loaded == {"config.json": b'{"v": 2}', "model.safetensors": W}, "the model was loaded mid-run"
    assert os.stat(weights).st_atime > before, "reading it moved its atime (relatime)"
    assert not res["errors"], res["errors"]
    # v1, unused, went; main stays whole and still loads
    assert res["units"] == 1 and [s["name"].split()[1] for s in res["sample"]] != [rev[:12]], res["sample"]
    assert res["kept"]["changed"] == 1, res["kept"]
    assert hf_clean(hub) == {"org/llm": 1, "org/llm-ft": 1}
    assert sorted(os.listdir(a / "snapshots")) == [rev]
    assert (snapshot / "model.safetensors").read_bytes() == W


class DownloadDuringRun(_prune.Pruner):
    """A prune during which another revision of org/llm is downloaded with huggingface_hub: its
    file is v1's weights, so it only links the blob v1 has alone. ``when``: just before v1's
    re-check (``check``), or after the look for new links and before the blobs move (``move``)."""

    def __init__(self, *args, hub=None, unit=None, when="check", **kw):
        _prune.Pruner.__init__(self, *args, **kw)
        self.hub, self.unit, self.when = hub, unit, when
        self.link = None

    def _download(self):
        if self.link is None:
            repos = {
                "model": {
                    "org/llm": {"v3": {"model.safetensors": REPOS["model"]["org/llm"]["v1"]["model.safetensors"]}}
                }
            }
            with fake_hub.FakeHub(repos) as fh:
                self.link = hfh.hf_hub_download(
                    "org/llm", "model.safetensors", revision="v3", cache_dir=str(self.hub), endpoint=fh.endpoint
                )
                self.fetched = fh.downloads()

    def _recheck(self, fd, u, *args):
        if u.key == self.unit and self.when == "check":
            self._download()
        return _prune.Pruner._recheck(self, fd, u, *args)

    def _remove_unit(self, fd, u, *args):
        if u.key == self.unit and self.when == "move":
            look = self._fmt.linked_since

            def then_download(*a):
                found = look(*a)
                self._download()
                return found

            self._fmt.linked_since = then_download
            try:
                return _prune.Pruner._remove_unit(self, fd, u, *args)
            finally:
                del self._fmt.linked_since
        return _prune.Pruner._remove_unit(self, fd, u, *args)


@pytest.mark.parametrize("when", ["check", "move"])
@pytest.mark.parametrize("layout", ["plain", "store"])
def test_a_blob_another_revision_links_during_the_run_stays(tmp_path, layout, when):
    """v1 goes with the blob only it had, unless a revision downloaded since the walk links that
    blob (huggingface_hub links a blob that is there, it does not fetch it again): then the
    blob stays (``kept.linked``), put back if it had already moved, and the new revision loads."""
    home, hub, a, b = build(tmp_path, layout)
    v1 = (a / "refs" / "v1").read_text()
    p = DownloadDuringRun(
        str(home), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY), lock_dir=str(tmp_path / "state"),
        hub=hub, unit="models--org--llm@" + v1, when=when,
    )  # fmt: skip
    res = p.run()
    assert p.link is not None and p.fetched == [], "the new revision linked the blob that was there"
    assert not res["errors"], res["errors"]
    assert res["units"] == 2 and res["kept"]["linked"] == 1, (res["units"], res["kept"])
    assert not (a / "snapshots" / v1).exists()
    with open(p.link, "rb") as fh:
        assert fh.read() == REPOS["model"]["org/llm"]["v1"]["model.safetensors"]
    assert hf_clean(hub) == {"org/llm": 1, "org/llm-ft": 1}


@pytest.mark.parametrize("when", ["check", "move"])
@pytest.mark.parametrize("layout", ["plain", "store"])
def test_an_orphan_blob_a_revision_links_during_the_run_stays(tmp_path, layout, when):
    """A blob no revision links (its revision deleted by hand, or a download cut short) is a unit
    of its own; a revision downloaded during the prune with the same file links it instead of
    fetching it: it stays (``kept.linked``), put back if it had already moved."""
    home, hub, a, b = build(tmp_path, layout)
    v1 = (a / "refs" / "v1").read_text()
    weights = os.readlink(a / "snapshots" / v1 / "model.safetensors").rpartition("/")[2]
    config = os.readlink(a / "snapshots" / v1 / "config.json").rpartition("/")[2]
    for f in (a / "snapshots" / v1).iterdir():
        f.unlink()
    (a / "snapshots" / v1).rmdir()
    (a / "refs" / "v1").unlink()
    p = DownloadDuringRun(
        str(home), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY), lock_dir=str(tmp_path / "state"),
        hub=hub, unit="models--org--llm/blobs/" + weights, when=when,
    )  # fmt: skip
    res = p.run()
    assert p.link is not None and p.fetched == [], "the new revision linked the blob that was there"
    assert not res["errors"], res["errors"]
    assert res["kept"]["linked"] == 1, res["kept"]
    assert "models--org--llm/blobs/" + config in [u["key"] for u in res["sample"]], res["sample"]
    linked = {os.readlink(f).rpartition("/")[2] for f in (a / "snapshots").glob("*/*")}
    assert weights in linked and set(os.listdir(a / "blobs")) == linked  # v3 links it, the config went
    with open(p.link, "rb") as fh:
        assert fh.read() == REPOS["model"]["org/llm"]["v1"]["model.safetensors"]
    assert hf_clean(hub) == {"org/llm": 1, "org/llm-ft": 1}  # main (old) went, v3 stays
    assert os.listdir(a / "snapshots") == [Path(p.link).parent.name]


def build_many_revisions(base):
    """org/many: twelve old revisions with a file of their own each, and main, loaded today, where
    a member keeps a tree of 3000 files (``junk``). Returns the hub, the repo, main's snapshot
    and the entries the walk sees below ``snapshots``."""
    revs = {"r%02d" % i: {"model.safetensors": os.urandom(2048)} for i in range(12)}
    revs["main"] = {"model.safetensors": os.urandom(2048)}
    home = base / "huggingface"
    hub = home / "hub"
    hub.mkdir(parents=True)
    with fake_hub.FakeHub({"model": {"org/many": revs}}) as fh:
        for branch in revs:
            hfh.hf_hub_download(
                "org/many", "model.safetensors", revision=branch, cache_dir=str(hub), endpoint=fh.endpoint
            )
    repo = hub / "models--org--many"
    main = repo / "snapshots" / (repo / "refs" / "main").read_text()
    (main / "junk").mkdir()
    for i in range(3000):
        (main / "junk" / ("f%04d" % i)).touch()
    set_times(home, time.time() - 200 * DAY)
    now = time.time()
    os.utime(main / "model.safetensors", (now, now))  # main was loaded today
    seen = sum(len(dn) + len(fn) + 1 for _dp, dn, fn in os.walk(repo / "snapshots"))
    return home, hub, repo, main, seen


class MemberChangesJunk(_prune.Pruner):
    """A prune during which a member adds a file to main's ``junk`` before the first re-check."""

    def _recheck(self, fd, u, *args):
        junk = Path(self.path) / "hub" / "models--org--many" / "snapshots"
        for snap in junk.iterdir():
            if (snap / "junk").is_dir() and not (snap / "junk" / "new").exists():
                (snap / "junk" / "new").touch()
        return _prune.Pruner._recheck(self, fd, u, *args)


@pytest.mark.parametrize("member", [False, True])
def test_looking_for_links_made_during_the_run_reads_what_changed_within_a_bound(tmp_path, monkeypatch, member):
    """Each revision leaving with a blob of its own makes the prune look at its repo's snapshots
    again (a link made during the run keeps the blob). A look reads only the directories changed
    since the walk began: a member's big tree is never read again. A member who changes it during
    the run makes every look read it: past a few times what the walk saw, the prune says it
    stopped, the blobs it no longer looked for stay, and the next run frees them. huggingface_hub's
    scan is clean throughout."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import huggingface as hf_fmt

    home, hub, repo, main, seen = build_many_revisions(tmp_path)
    read = []
    monkeypatch.setattr(hf_fmt, "scan", lambda fd: read.append(len(_fs.scan(fd))) or _fs.scan(fd))
    monkeypatch.setattr(hf_fmt, "LINKED_READ_SLACK", 0)
    pruner = MemberChangesJunk if member else _prune.Pruner
    res = pruner(str(home), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY)).run()
    assert not res["errors"], res["errors"]
    assert res["units"] == 12 and not list((repo / "snapshots").glob("r*")), res["sample"]
    blobs = os.listdir(repo / "blobs")
    kept = res["kept"]["linked"]
    if not member:
        assert max(read, default=0) < 3000 and sum(read) < seen, read  # junk is never read again
        assert kept == 0 and len(blobs) == 1, (res["kept"], blobs)
        assert hf_clean(hub) == {"org/many": 1}
        return
    # 12 revisions x 2 looks x 3000 entries = 72k without the bound; with it, at most 4 times what
    # the walk saw, and the directory that crossed it
    assert 3000 <= max(read) and sum(read) <= hf_fmt.LINKED_READ_FACTOR * seen + 3002, (sum(read), seen)
    assert any("stopped looking for links made during the run" in n for n in res["notes"]), res["notes"]
    assert 0 < kept < 12 and len(blobs) == 1 + kept, (res["kept"], blobs)  # main's, and those not looked for
    assert hf_clean(hub) == {"org/many": 1}
    res = _prune.Pruner(str(home), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY)).run()
    assert res["units"] == kept and res["kept"]["linked"] == 0, (res["units"], res["kept"])
    assert os.listdir(repo / "blobs") == [os.readlink(main / "model.safetensors").rpartition("/")[2]]
    assert hf_clean(hub) == {"org/many": 1}
