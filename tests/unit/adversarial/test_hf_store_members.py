# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 12 item 1: members attack huggingface_hub's shared Xet store while root prunes it.

Root fills a cache laid out by cache_dir's code with huggingface_hub 2.4 (loopback downloads,
then its own ``publish_blob_to_shared_store``). Alice, a real member, then holds store entry locks
through the whole run, replaces a lock file by a link to a file of hers or by a FIFO. Root's prune
ends in bounded time, never opens what the link points to, never blocks on the FIFO, leaves the
payloads whose lock it could not take to a later run, and huggingface_hub's own scan stays clean.
While root prunes, alice also loads a model the walk chose, and downloads a revision that links a
blob only a removed revision had: neither is taken from her.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.huggingface import HF_STORE_LOCK_WAIT
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import lay_out_cache
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.curated import member_python
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.modules import test_cache_prune_hf_store as hfs

hfh = pytest.importorskip("huggingface_hub")


@pytest.fixture
def store(actors, arena):
    home = lay_out_cache(os.path.join(arena, "huggingface"), actors.gid, subdirs=["hub", "xet", "assets"])
    hub = os.path.join(home, "hub")
    with hfs.fake_hub.FakeHub(hfs.REPOS) as fh:
        for repo, branches in hfs.REPOS["model"].items():
            for branch, files in branches.items():
                for f in files:
                    hfh.hf_hub_download(repo, f, revision=branch, cache_dir=hub, endpoint=fh.endpoint)
    for repo in ("models--org--llm", "models--org--llm-ft"):
        hfs.publish(hfs.Path(hub), hfs.Path(hub) / repo)
    hfs.set_times(hfs.Path(home), time.time() - 200 * hfs.DAY)
    return home, hub


def entry(hub, content, suffix=""):
    h = hashlib.sha256(content).hexdigest()
    return os.path.join(hub, "blobs", h[:2], h + suffix), h


def test_member_locks_links_and_fifos_cost_only_their_payloads(actors, arena, store):
    home, hub = store
    held = [entry(hub, b'{"v": 1}'), entry(hub, b'{"v": 2}')]
    linked = entry(hub, hfs.REPOS["model"]["org/llm"]["v1"]["model.safetensors"])
    fifo = entry(hub, hfs.W)
    mine = os.path.join(home, "alices-file")
    actors.alice.run("echo mine > %s" % mine)
    before = os.lstat(mine)
    # one process holds both (the shell's descriptors, flock'ed, kept across exec): killing it frees them
    lock_cmd = "exec 8>>%s.lock 9>>%s.lock; flock -x 8; flock -x 9; echo held; exec sleep 120" % (
        held[0][0],
        held[1][0],
    )
    holder = actors.alice.popen(lock_cmd)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(0.5)
        actors.alice.run("rm -f {0}.lock && ln -s {1} {0}.lock".format(linked[0], mine))
        actors.alice.run("rm -f {0}.lock && mkfifo {0}.lock".format(fifo[0]))
        t0 = time.monotonic()
        res = _prune.Pruner(home, fmt="huggingface", policy=_prune.Policy(max_age=90 * hfs.DAY), lock_timeout=0).run()
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert took < HF_STORE_LOCK_WAIT + 30, took
    # every revision went (200 days old); the payloads whose lock was held or unsafe stayed
    info = hfh.scan_cache_dir(hub)
    assert not info.repos and not info.warnings
    left = set(hfs.store_payloads(hub))
    assert {h for _p, h in held} <= left and linked[1] in left and fifo[1] in left
    assert any("lock is held" in n for n in res.get("notes", [])), res.get("notes")
    st = os.lstat(mine)  # never chmod'ed, chown'ed or written through the link (ctime would move)
    assert (st.st_uid, st.st_gid, st.st_mode, st.st_ctime) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
        before.st_ctime,
    )
    assert os.path.islink(linked[0] + ".lock")
    # the locks go: the next run frees the payloads whose locks are plain files again
    _prune.Pruner(home, fmt="huggingface", policy=_prune.Policy(max_age=90 * hfs.DAY), lock_timeout=0).run()
    left = set(hfs.store_payloads(hub))
    assert not ({h for _p, h in held} & left)
    assert not hfh.scan_cache_dir(hub).warnings


def test_a_member_holding_a_store_entry_lock_keeps_cache_verify_from_moving_its_payload(actors, arena, store):
    """cache_verify's quarantine of a corrupt store payload takes the entry's lock as
    huggingface_hub does to publish: while alice holds it nothing moves (a link she could make
    meanwhile would dangle); once she lets go, the payload goes with its links and manifest."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify

    home, hub = store
    path, _h = entry(hub, hfs.W)
    rel = os.path.relpath(path, home)
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:  # a bad disk: one byte flipped, times kept
        fh.seek(len(hfs.W) // 2)
        fh.write(bytes([hfs.W[len(hfs.W) // 2] ^ 0xFF]))
    os.chmod(path, st.st_mode & 0o7777)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def verify():
        return _verify.Verifier(
            home, fmt="huggingface", quarantine=True, full=True, min_age=0, state_dir=os.path.join(arena, "vstate")
        ).run()

    holder = actors.alice.popen("exec 9>>%s.lock; flock -x 9; echo held; exec sleep 120" % path)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = verify()
    finally:
        holder.kill()
        holder.wait()
    # (the loopback hub's etags are not content digests: every payload reads as corrupt here)
    assert res["corrupt"] >= 1 and rel not in res["quarantined"], res
    assert os.path.exists(path) and os.path.exists(path + ".refs")
    assert any("locked or was linked again" in n for n in res["notes"]), res["notes"]
    res = verify()
    assert res["quarantined"] == [rel], res
    assert not os.path.lexists(path) and not os.path.lexists(path + ".refs")
    assert not hfh.scan_cache_dir(hub).warnings


def _age_records(state, seconds):
    """Make root's records of held entry locks look ``seconds`` older (as if runs had found the
    locks held since then)."""
    names = [n for n in os.listdir(state) if n.startswith("toollock-")]
    for n in names:
        st = os.stat(os.path.join(state, n))
        os.utime(os.path.join(state, n), (st.st_atime - seconds, st.st_mtime - seconds))
    return names


def test_a_store_entry_lock_a_member_holds_for_good_keeps_cache_verify_off_a_day_not_for_ever(actors, arena, store):
    """A lock alice holds run after run is no download in progress: root records when it first
    found it held, and past ``_prune.TOOL_LOCK_STALE`` verify's quarantine goes on without it."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify

    home, hub = store
    vstate = os.path.join(arena, "vstate")
    corrupt, _h = entry(hub, hfs.W)
    rel = os.path.relpath(corrupt, home)

    def verify():
        return _verify.Verifier(home, fmt="huggingface", quarantine=True, full=True, min_age=0, state_dir=vstate).run()

    holder = actors.alice.popen("exec 9>>%s.lock; flock -x 9; echo held; exec sleep 300" % corrupt)
    try:
        assert holder.stdout.readline().strip() == "held"
        # (the loopback hub's etags are not content digests: every payload reads as corrupt here)
        res = verify()
        assert rel not in res["quarantined"] and os.path.exists(corrupt), res
        assert any("locked or was linked again" in n for n in res["notes"]), res["notes"]
        assert verify()["quarantined"] == []  # the next run, the same
        # a day later (by root's record), she still holds it: it is no longer obeyed
        assert len(_age_records(vstate, _prune.TOOL_LOCK_STALE + 3600)) == 1
        res = verify()
        assert res["quarantined"] == [rel], res
        assert any(n.startswith(rel + ": went on without its entry lock") for n in res["notes"]), res["notes"]
        assert not os.path.lexists(corrupt) and not os.path.lexists(corrupt + ".refs")
        assert not hfh.scan_cache_dir(hub).warnings
        assert holder.poll() is None  # all along: she never let go
    finally:
        holder.kill()
        holder.wait()


def test_store_entry_locks_a_member_holds_for_good_keep_the_prune_off_a_day_not_for_ever(actors, arena, store):
    """The same for the prune's store sweep, with a lock held and a lock file made unusable (a
    FIFO): kept by the first runs, swept once root's records are a day old; the store is then
    consistent for huggingface_hub (nothing unreferenced, no scan warning)."""
    home, hub = store
    pstate = os.path.join(arena, "prune-state")
    held, fifo = entry(hub, b'{"v": 1}'), entry(hub, b'{"v": 2}')
    actors.alice.run("rm -f {0}.lock && mkfifo {0}.lock".format(fifo[0]))

    def prune():
        policy = _prune.Policy(max_age=90 * hfs.DAY)
        return _prune.Pruner(home, fmt="huggingface", policy=policy, lock_timeout=0, lock_dir=pstate).run()

    holder = actors.alice.popen("exec 9>>%s.lock; flock -x 9; echo held; exec sleep 300" % held[0])
    try:
        assert holder.stdout.readline().strip() == "held"
        # every revision is 200 days old: every payload goes but the two alice keeps
        prune()
        prune()
        assert set(hfs.store_payloads(hub)) == {held[1], fifo[1]}
        assert not hfh.scan_cache_dir(hub).warnings
        assert len(_age_records(pstate, _prune.TOOL_LOCK_STALE + 3600)) == 2
        res = prune()
        assert any(n.startswith("went on without 2 store entry lock(s)") for n in res["notes"]), res["notes"]
        assert hfs.store_payloads(hub) == []
        assert hfs._shared_blobs.unreferenced_shared_blobs(hub) == {}
        assert not hfh.scan_cache_dir(hub).warnings
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


ALICE_DOWNLOADS = """
import sys
from huggingface_hub import hf_hub_download
print(hf_hub_download("org/llm", "model.safetensors", revision="v3", cache_dir=sys.argv[1], endpoint=sys.argv[2]))
"""


class DownloadDuringRun(_prune.Pruner):
    """Root's prune during which ``download()`` runs once, just before the re-check of ``unit``
    (after the walk chose it)."""

    def __init__(self, *args, download=None, unit=None, **kw):
        _prune.Pruner.__init__(self, *args, **kw)
        self.download, self.unit = download, unit
        self.link = None

    def _recheck(self, fd, u, *args):
        if u.key == self.unit and self.link is None:
            self.link = self.download()
        return _prune.Pruner._recheck(self, fd, u, *args)


def alice_links_v1s_weights_during_roots_prune(actors, arena, home, hub, unit):
    """Root prunes the cache; just before the re-check of ``unit``, alice downloads revision v3 of
    org/llm with her own huggingface_hub (its file is v1's weights: she only links the blob that
    is there, no GET). The blob stays (``kept.linked``), v3 loads, huggingface_hub's scan is
    clean and the store keeps exactly that payload."""
    python, env = member_python(arena)
    weights = hfs.REPOS["model"]["org/llm"]["v1"]["model.safetensors"]
    with hfs.fake_hub.FakeHub({"model": {"org/llm": {"v3": {"model.safetensors": weights}}}}) as fh:

        def download():
            res = actors.alice.run([python, "-c", ALICE_DOWNLOADS, hub, fh.endpoint], env=env, timeout=120)
            return res.stdout.strip().splitlines()[-1]

        p = DownloadDuringRun(
            home, fmt="huggingface", policy=_prune.Policy(max_age=90 * hfs.DAY), lock_dir=os.path.join(arena, "ps"),
            download=download, unit=unit,
        )  # fmt: skip
        res = p.run()
        fetched = fh.downloads()
    assert p.link is not None and fetched == [], fetched
    assert not res["errors"], res["errors"]
    assert res["kept"]["linked"] == 1, res["kept"]
    with open(p.link, "rb") as f:
        assert f.read() == weights
    assert hfs.hf_clean(hfs.Path(hub)) == {"org/llm": 1}  # no warning, nothing unreferenced, no dangling link
    assert hfs.store_payloads(hub) == [hashlib.sha256(weights).hexdigest()]


@pytest.mark.system_python
def test_a_blob_a_member_links_with_huggingface_hub_during_roots_prune_stays(actors, arena, store):
    """Alice, with her own huggingface_hub, downloads revision v3 of org/llm while root prunes the
    200-day-old cache: its file is v1's weights, so it only links the blob v1 had alone (no GET).
    v1 goes; the blob, and the store payload behind it, stay for v3, which loads."""
    home, hub = store
    with open(os.path.join(hub, "models--org--llm", "refs", "v1")) as fh:
        v1 = fh.read()
    alice_links_v1s_weights_during_roots_prune(actors, arena, home, hub, "models--org--llm@" + v1)


def test_a_model_a_member_loads_during_roots_prune_stays(actors, arena, store):
    """Alice reads org/llm's main revision (through its links, as loading does) after root's walk
    chose it by the times of its store payloads: it stays whole; v1, unread, goes."""
    home, hub = store
    with open(os.path.join(hub, "models--org--llm", "refs", "main")) as fh:
        main = fh.read()
    snap = os.path.join(hub, "models--org--llm", "snapshots", main)

    def load():
        actors.alice.run("cat %s/* > /dev/null" % snap)
        return snap

    p = DownloadDuringRun(
        home, fmt="huggingface", policy=_prune.Policy(max_age=90 * hfs.DAY), lock_dir=os.path.join(arena, "ps"),
        download=load, unit="models--org--llm@" + main,
    )  # fmt: skip
    res = p.run()
    assert p.link == snap and not res["errors"], res["errors"]
    assert res["kept"]["changed"] == 1, res["kept"]
    assert sorted(os.listdir(os.path.join(hub, "models--org--llm", "snapshots"))) == [main]
    with open(os.path.join(snap, "model.safetensors"), "rb") as f:
        assert f.read() == hfs.W
    assert hfs.hf_clean(hfs.Path(hub)) == {"org/llm": 1}


def test_a_member_who_keeps_changing_a_big_snapshot_tree_cannot_stretch_roots_prune(actors, arena, monkeypatch):
    """Alice keeps a 3000-file tree in the snapshot of org/many's main and keeps adding files to
    it while root prunes twelve old revisions. Each revision leaving with a blob of its own makes
    root look for links made during the run, and a changed directory is read whole: root stops
    at a few times what its walk saw there (it says so), the blobs it no longer looked for stay,
    and its next run frees them. huggingface_hub's scan is clean after each run."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _fs
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import huggingface as hf_fmt

    home = lay_out_cache(os.path.join(arena, "huggingface"), actors.gid, subdirs=["hub"])
    hub = os.path.join(home, "hub")
    revs = {"r%02d" % i: {"model.safetensors": os.urandom(2048)} for i in range(12)}
    revs["main"] = {"model.safetensors": os.urandom(2048)}
    with hfs.fake_hub.FakeHub({"model": {"org/many": revs}}) as fh:
        for branch in revs:
            hfh.hf_hub_download("org/many", "model.safetensors", revision=branch, cache_dir=hub, endpoint=fh.endpoint)
    repo = os.path.join(hub, "models--org--many")
    with open(os.path.join(repo, "refs", "main")) as f:
        main = os.path.join(repo, "snapshots", f.read())
    junk = os.path.join(main, "junk")
    actors.alice.run("mkdir %s && cd %s && seq -f 'f%%04g' 3000 | xargs touch" % (junk, junk))
    assert len(os.listdir(junk)) == 3000
    hfs.set_times(hfs.Path(home), time.time() - 200 * hfs.DAY)
    now = time.time()
    os.utime(os.path.join(main, "model.safetensors"), (now, now))  # main was loaded today
    seen = sum(len(dn) + len(fn) + 1 for _dp, dn, fn in os.walk(os.path.join(repo, "snapshots")))
    read = []
    monkeypatch.setattr(hf_fmt, "scan", lambda fd: read.append(len(_fs.scan(fd))) or _fs.scan(fd))
    monkeypatch.setattr(hf_fmt, "LINKED_READ_SLACK", 0)
    writer = actors.alice.popen("cd %s && n=0; echo go; while :; do : > n$n; n=$((n+1)); sleep 0.01; done" % junk)
    try:
        assert writer.stdout.readline().strip() == "go"
        res = _prune.Pruner(home, fmt="huggingface", policy=_prune.Policy(max_age=90 * hfs.DAY)).run()
    finally:
        writer.kill()
        writer.wait()
    added = len(os.listdir(junk)) - 3000
    assert added > 0 and not res["errors"], (added, res["errors"])
    assert res["units"] == 12, res["sample"]
    assert sum(read) <= hf_fmt.LINKED_READ_FACTOR * seen + 3000 + added, (sum(read), seen, added)
    assert any("stopped looking for links made during the run" in n for n in res["notes"]), res["notes"]
    kept = res["kept"]["linked"]
    assert 0 < kept < 12 and len(os.listdir(os.path.join(repo, "blobs"))) == 1 + kept, res["kept"]
    assert hfs.hf_clean(hfs.Path(hub)) == {"org/many": 1}
    res = _prune.Pruner(home, fmt="huggingface", policy=_prune.Policy(max_age=90 * hfs.DAY)).run()
    assert res["units"] == kept and res["kept"]["linked"] == 0, (res["units"], res["kept"])
    assert len(os.listdir(os.path.join(repo, "blobs"))) == 1
    assert hfs.hf_clean(hfs.Path(hub)) == {"org/many": 1}


@pytest.mark.parametrize("group", ["cache", "team"])
def test_roots_look_for_links_made_during_the_run_never_enters_another_groups_directory(actors, arena, store, group):
    """While root prunes, alice links v1's weights blob from a directory of a new revision: of
    the cache group (root finds the link, the blob stays), or regrouped to her team group, which
    the cache does not own (root never enters it, as its walk never does: the blob goes)."""
    home, hub = store
    repo = os.path.join(hub, "models--org--llm")
    with open(os.path.join(repo, "refs", "v1")) as fh:
        v1 = fh.read()
    blob = os.readlink(os.path.join(repo, "snapshots", v1, "model.safetensors")).rpartition("/")[2]
    sub = os.path.join(repo, "snapshots", "f" * 40, "sub")

    def plant():
        chgrp = "chgrp %d %s && " % (actors.team_gid, sub) if group == "team" else ""
        actors.alice.run("mkdir -p %s && %sln -s ../../../blobs/%s %s/model.safetensors" % (sub, chgrp, blob, sub))
        return sub

    p = DownloadDuringRun(
        home, fmt="huggingface", policy=_prune.Policy(max_age=90 * hfs.DAY), lock_dir=os.path.join(arena, "ps"),
        download=plant, unit="models--org--llm@" + v1,
    )  # fmt: skip
    res = p.run()
    assert p.link == sub and not res["errors"], res["errors"]
    assert os.stat(sub).st_gid == (actors.team_gid if group == "team" else actors.gid)
    assert not os.path.exists(os.path.join(repo, "snapshots", v1))
    if group == "cache":
        assert res["kept"]["linked"] == 1 and os.path.exists(os.path.join(sub, "model.safetensors")), res["kept"]
    else:
        assert res["kept"]["linked"] == 0 and not os.path.lexists(os.path.join(repo, "blobs", blob)), res["kept"]


@pytest.mark.system_python
def test_an_orphan_blob_a_member_links_with_huggingface_hub_during_roots_prune_stays(actors, arena, store):
    """v1's snapshot and ref were deleted by hand: its weights blob is an orphan, a unit of its
    own. While root prunes, alice downloads revision v3 with her own huggingface_hub: its file is
    those weights, so she only links the orphan (no GET). It stays, and her revision loads."""
    home, hub = store
    repo = os.path.join(hub, "models--org--llm")
    with open(os.path.join(repo, "refs", "v1")) as fh:
        v1 = fh.read()
    snap = os.path.join(repo, "snapshots", v1)
    blob = os.readlink(os.path.join(snap, "model.safetensors")).rpartition("/")[2]
    for name in os.listdir(snap):
        os.unlink(os.path.join(snap, name))
    os.rmdir(snap)
    os.unlink(os.path.join(repo, "refs", "v1"))
    alice_links_v1s_weights_during_roots_prune(actors, arena, home, hub, "models--org--llm/blobs/" + blob)


def test_entries_a_member_held_locked_then_removed_leave_root_no_records(actors, arena, store):
    """Alice holds the lock of a store entry root's sweep wants (v1's config payload): root keeps
    the payload and records the hold in its state directory. She then removes the entry, still
    holding the lock file. Root's next prune drops the record: a member repeating this night
    after night cannot fill root's directory."""
    home, hub = store
    path, h = entry(hub, b'{"v": 1}')
    ps = os.path.join(arena, "ps")

    def prune():
        return _prune.Pruner(home, fmt="huggingface", policy=_prune.Policy(max_age=90 * hfs.DAY), lock_dir=ps).run()

    def records():
        return sorted(n for n in os.listdir(ps) if n.startswith("toollock-")) if os.path.isdir(ps) else []

    holder = actors.alice.popen("exec 9>>%s.lock; flock -x 9; echo held; exec sleep 120" % path)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = prune()
        assert any("lock is held" in n for n in res["notes"]), res["notes"]
        assert h in hfs.store_payloads(hub) and len(records()) == 1 and records()[0].endswith(h + ".lock")
        actors.alice.run("rm -f %s %s.refs" % (path, path))
        assert not os.path.lexists(path) and os.path.exists(path + ".lock")
        prune()
        assert records() == []
        assert holder.poll() is None  # she held the lock throughout
    finally:
        holder.kill()
        holder.wait()
    assert not hfh.scan_cache_dir(hub).warnings
