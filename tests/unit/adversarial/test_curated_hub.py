"""Curated HuggingFace cache: published atomically by the prefetch service account, read offline.

Everything runs as real users against a hub cache laid out by cache_dir's code for a curated entry
(``writers``): the service account runs the cache_prefetch module itself (``curated: true``)
against the loopback hub of the test suite (fake_hub, with the Hub's real ETags: the SHA-256 of an
LFS file, the git blob SHA-1 of a small one), and members load with huggingface_hub 2.4 offline
(``HF_HUB_OFFLINE=1``, as cache_env gives them for a curated hub cache).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import lay_out_cache
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.curated import (
    lay_out_curated,
    member_python,
)
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import tree

# members run huggingface_hub under the system Python of this version (see tests/unit/conftest.py)
pytestmark = pytest.mark.system_python

pytest.importorskip("huggingface_hub")
_spec = importlib.util.spec_from_file_location(
    "curated_fake_hub", Path(__file__).parent.parent / "plugins" / "modules" / "test_prefetch_support" / "fake_hub.py"
)
fake_hub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_hub)

REPO = "mlinfra/curated-bert"
FOLDER = "models--mlinfra--curated-bert"
LFS_MIN = 1024  # files this large are "LFS" here: ETag = SHA-256 of the content


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def real_etag(data):
    return hashlib.sha256(data).hexdigest() if len(data) >= LFS_MIN else git_blob_sha1(data)


def revision(tag, n_files=12, size=256 * 1024):
    """A model repository's files: small JSON files and several large "LFS" shards."""
    files = {"config.json": b'{"model_type": "bert", "rev": "%s"}\n' % tag.encode(), "README.md": b"# curated\n"}
    for i in range(n_files):
        files["model-%02d.safetensors" % i] = (tag.encode() + b"%02d" % i) * (size // 8)
    files["onnx/model.onnx"] = b"onnx" * 1024
    return files


class RealHub(fake_hub.FakeHub):
    """fake_hub answering with the Hub's real ETags (what names the blobs in the cache)."""

    def __init__(self, repos):
        self.hub = fake_hub.Hub(repos)
        base = fake_hub._handler(self.hub)

        class Handler(base):
            def _send(self, code, body=b"", headers=None, head=False):
                if code == 200 and headers and "X-Repo-Commit" in headers:
                    headers = dict(headers, ETag='"%s"' % real_etag(body))
                base._send(self, code, body, headers, head)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def site(actors, arena, curators):
    """A curated hub cache (mode 2770, writers group) under a cache root, a running hub, and how to
    run the module as the service account and huggingface_hub as a member."""
    wgroup, writer = curators
    root = lay_out_cache(os.path.join(arena, "cache"), actors.gid, subdirs=["ml-models"])
    cache = os.path.join(root, "ml-models", "huggingface")
    lay_out_curated(cache, actors.group, wgroup, subdirs=["hub", "xet", "assets"])
    python, env = member_python(arena)
    homes = {}
    for who in (writer, actors.alice, actors.bob):
        home = os.path.join(arena, "home-" + who.name)
        os.mkdir(home, 0o700)
        os.chown(home, who.uid, who.gid)
        homes[who.name] = home
    with RealHub({"model": {REPO: {"main": revision("v1")}}}) as hub:
        yield Site(actors, writer, cache, hub, python, env, homes)


class Site:
    def __init__(self, actors, writer, cache, hub, python, env, homes):
        self.actors, self.writer, self.cache, self.hub = actors, writer, cache, hub
        self.hub_dir = os.path.join(cache, "hub")
        self.repo = os.path.join(self.hub_dir, FOLDER)
        self.python, self.env, self.homes = python, env, homes

    def env_of(self, who, **extra):
        env = dict(self.env, HF_HOME=self.homes[who.name], HF_HUB_DISABLE_TELEMETRY="1")
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        env.update(extra)
        return env

    def prefetch(self, check=False, **args):
        """The cache_prefetch module, run as the service account the way the role runs it."""
        params = dict(kind="huggingface", name=REPO, dest=self.hub_dir, curated=True, endpoint=self.hub.endpoint)
        params.update(args)
        params.update(_ansible_check_mode=check, _ansible_diff=True)
        res = self.writer.run(
            [self.python, "-m", "ansible_collections.mlinfra.shared_cache.plugins.modules.cache_prefetch"],
            env=self.env_of(self.writer),
            input=json.dumps({"ANSIBLE_MODULE_ARGS": params}),
            check=False,
            timeout=300,
        )
        out = json.loads(res.stdout)
        assert not out.get("failed"), out
        return out

    def member(self, who, script, offline=True, check=True):
        """A huggingface_hub script run by a member with the curated cache's environment."""
        env = self.env_of(who, HF_HUB_CACHE=self.hub_dir, HF_ENDPOINT=self.hub.endpoint)
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        res = who.run([self.python, "-c", script], env=env, check=False, timeout=120)
        assert res.returncode == 0 or not check, res.stderr
        return res


def tree_state(path):
    """Every entry below ``path`` with what a write would change (inode, size, mtime, mode)."""
    stats = {rel: os.lstat(os.path.join(path, rel)) for rel in tree(path)}
    return {rel: (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode) for rel, st in stats.items()}


LOAD = """
import json, os
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download
snap = snapshot_download("%s", ignore_patterns=["onnx/*"])  # what was published
files = {}
for dirpath, _d, names in os.walk(snap):
    for n in names:
        p = os.path.join(dirpath, n)
        files[os.path.relpath(p, snap)] = open(p, "rb").read().hex()
cfg = hf_hub_download("%s", "config.json")
info = scan_cache_dir()
repo = [r for r in info.repos if r.repo_id == "%s"][0]
print(json.dumps({"snap": snap, "files": files, "config": open(cfg).read(),
                  "warnings": [str(w) for w in info.warnings],
                  "revisions": {r.commit_hash: {"refs": sorted(r.refs), "files": sorted(f.file_name for f in r.files)}
                                for r in repo.revisions}}))
""" % (REPO, REPO, REPO)


def test_member_loads_a_curated_model_offline(site):
    files = revision("v1")
    first = site.prefetch(revision="main", ignore_patterns=["onnx/*"])
    assert first["changed"] and first["restored"] == [] and first["commit"] == fake_hub.commit_of(files)
    # laid out exactly as huggingface_hub names it: blobs by their ETag, relative snapshot links
    want = {n: d for n, d in files.items() if not n.startswith("onnx/")}
    for name, data in want.items():
        link = os.readlink(os.path.join(site.repo, "snapshots", first["commit"], name))
        assert link == "../../blobs/" + real_etag(data)
    assert not os.path.exists(os.path.join(site.cache, ".staging", "run-"))  # nothing staged is left
    served = len(site.hub.requests)
    load = site.member(site.actors.alice, LOAD)
    res = json.loads(load.stdout)
    assert "Permission denied" not in load.stderr  # its tree listing too is readable by members
    assert len(site.hub.requests) == served  # offline: no request reached the hub
    assert {k: bytes.fromhex(v) for k, v in res["files"].items()} == want
    assert json.loads(res["config"])["rev"] == "v1"
    assert res["warnings"] == []  # huggingface_hub's own scan finds a sound cache
    assert res["revisions"] == {first["commit"]: {"refs": ["main"], "files": sorted(want)}}
    # a second run changes nothing and downloads nothing
    downloads = len(site.hub.downloads())
    again = site.prefetch(revision="main", ignore_patterns=["onnx/*"])
    assert not again["changed"] and len(site.hub.downloads()) == downloads


def test_member_write_into_a_curated_cache_fails_clearly(site):
    site.prefetch(revision="main", ignore_patterns=["onnx/*"])
    before = tree_state(site.cache)
    bob = site.actors.bob
    # offline (the curated environment): a file that was not published is not fetched
    res = site.member(
        bob, 'from huggingface_hub import hf_hub_download; hf_hub_download("%s", "onnx/model.onnx")' % REPO, check=False
    )
    assert res.returncode != 0 and "offline" in res.stderr.lower(), res.stderr
    # online, huggingface_hub's own download stops at the kernel's refusal, naming the path
    res = site.member(
        bob,
        'from huggingface_hub import hf_hub_download; hf_hub_download("%s", "onnx/model.onnx")' % REPO,
        offline=False,
        check=False,
    )
    assert res.returncode != 0 and "PermissionError" in res.stderr and "Permission denied" in res.stderr, res.stderr
    assert site.hub_dir in res.stderr
    # nor can a member change a published file or the ref
    blob = os.path.realpath(
        os.path.join(site.repo, "snapshots", os.listdir(site.repo + "/snapshots")[0], "config.json")
    )
    for cmd in ("echo x >> %s" % blob, "echo 0 > %s/refs/main" % site.repo, "rm -f %s" % blob):
        res = bob.run(cmd, check=False)
        assert res.returncode != 0 and ("Permission denied" in res.stderr or "Operation not permitted" in res.stderr)
    assert tree_state(site.cache) == before


READER = (
    """
import hashlib, json, os, sys, time
from huggingface_hub import snapshot_download
want = json.loads(sys.argv[1])
seen, bad, deadline = {}, [], time.monotonic() + 90
while time.monotonic() < deadline:
    try:  # what a job does: resolve the revision offline, then read every file of it
        snap = snapshot_download("%s")
        commit = os.path.basename(snap)
        files = {}
        for dirpath, _d, names in os.walk(snap):
            for n in names:
                p = os.path.join(dirpath, n)
                files[os.path.relpath(p, snap)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    except Exception as exc:  # huggingface_hub's IncompleteSnapshotError, a dangling link, ...
        bad.append(repr(exc)[:300])
        continue
    if want.get(commit) != files:
        bad.append("%%s: %%d files, not as published" %% (commit, len(files)))
    seen[commit] = seen.get(commit, 0) + 1
    if not os.path.exists(sys.argv[3]):
        open(sys.argv[3], "w").close()  # the old revision was read whole: the publication may start
    if len(seen) == 2 and os.path.exists(sys.argv[2]):
        break
print(json.dumps({"seen": seen, "bad": bad}))
"""
    % REPO
)


def test_concurrent_reader_never_sees_a_partial_revision(site):
    v1, v2 = revision("v1"), revision("v2", n_files=24)
    first = site.prefetch(revision="main")
    site.hub.hub.repos["model"][REPO]["main"] = v2  # the branch moves upstream
    want = {
        c: {k: hashlib.sha256(v).hexdigest() for k, v in f.items()}
        for c, f in ((first["commit"], v1), (fake_hub.commit_of(v2), v2))
    }
    done = os.path.join(site.homes[site.actors.alice.name], "done")
    env = site.env_of(site.actors.alice, HF_HUB_CACHE=site.hub_dir, HF_HUB_OFFLINE="1")
    ready = os.path.join(site.homes[site.actors.alice.name], "ready")
    reader = site.actors.alice.popen([site.python, "-c", READER, json.dumps(want), done, ready], env=env)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(ready) and reader.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        second = site.prefetch(revision="main")
        assert second["changed"] and second["commit"] == fake_hub.commit_of(v2)
        open(done, "w").close()  # the reader stops once it has also read the new revision
        out, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
    res = json.loads(out)
    assert res["bad"] == [], res["bad"][:3]
    assert set(res["seen"]) == set(want), res  # it read the old revision, then the new one, each whole
    # the old snapshot stays for jobs that resolved it; the ref names the new one
    assert os.path.isdir(os.path.join(site.repo, "snapshots", first["commit"]))
    assert open(os.path.join(site.repo, "refs", "main")).read() == second["commit"]


def test_tampered_curated_blob_found_by_cache_verify_then_restored_by_prefetch(site, tmp_path):
    """cache_verify finds exactly the tampered blob; the next prefetch fetches it again."""
    files = revision("v1")
    first = site.prefetch(revision=fake_hub.commit_of(files), ignore_patterns=["onnx/*"])
    shard = "model-03.safetensors"
    name = real_etag(files[shard])
    blob = os.path.join(site.repo, "blobs", name)
    ino = os.stat(blob).st_ino
    with open(blob, "r+b") as fh:  # a bad disk, or a writer's mistake: one byte, in place
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert os.stat(blob).st_ino == ino
    found = _verify.Verifier(site.cache, fmt="huggingface", min_age=0, state_dir=str(tmp_path / "verify")).run()
    assert found["corrupt"] == 1 and found["errors"] == [], found  # exactly the tampered blob is found
    assert [s["path"].rsplit("/", 1)[-1] for s in found["corrupt_sample"]] == [name]
    assert found["verified"] > 0
    check = site.prefetch(check=True, revision=fake_hub.commit_of(files), ignore_patterns=["onnx/*"])
    assert check["changed"] and check["restored"] == [name]
    downloads = len(site.hub.downloads())
    fixed = site.prefetch(revision=fake_hub.commit_of(files), ignore_patterns=["onnx/*"])
    assert fixed["changed"] and fixed["restored"] == [name]
    # only the damaged file was fetched again; the blob is whole again (a new inode, renamed in)
    assert site.hub.downloads()[downloads:] == ["/%s/resolve/%s/%s" % (REPO, first["commit"], shard)]
    assert hashlib.sha256(open(blob, "rb").read()).hexdigest() == name and os.stat(blob).st_ino != ino
    res = json.loads(site.member(site.actors.alice, LOAD).stdout)
    assert bytes.fromhex(res["files"][shard]) == files[shard] and res["warnings"] == []
    assert not site.prefetch(revision=fake_hub.commit_of(files), ignore_patterns=["onnx/*"])["changed"]
