# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_verify against caches the real tools filled: huggingface_hub (against the loopback hub the
suite serves), npm, apt-get, pip and uv (real registries). For each: every unit verifies; one byte
flipped in one unit is found, exactly that one; quarantine removes it; the tool fetches it again;
verify is clean again. What the format cannot check is counted unverifiable, never verified."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import integrity_ids
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_verify
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.modules import test_cache_prune_tools
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import run_main, tree

_spec = importlib.util.spec_from_file_location(
    "verify_fake_hub", Path(__file__).parent / "test_prefetch_support" / "fake_hub.py"
)
fake_hub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_hub)


def run(capsys, tmp_path, check=False, **args):
    args.setdefault("min_age", "0")
    args.setdefault("state_dir", str(tmp_path / "verify-state"))
    return run_main(cache_verify, capsys, check=check, **args)


# the npm cache npm itself filled (is-number, isarray), module-scoped, shared with the prune tests
npm_cache_master = test_cache_prune_tools.npm_cache_master


def tool(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kw)


def flip(path, offset=None):
    """Flip one byte of ``path`` (the middle one by default), keeping its times (a bad disk)."""
    st = os.stat(path)
    data = bytearray(Path(path).read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    Path(path).write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def assert_clean(res):
    assert res["corrupt"] == 0 and res["corrupt_sample"] == [], res["corrupt_sample"]
    assert res["skipped_busy"] == 0 and not res["errors"], res


def assert_one_corrupt(res, path_part):
    assert res["corrupt"] == 1, res["corrupt_sample"]
    (sample,) = res["corrupt_sample"]
    assert path_part in sample["path"] and sample["expected"] and sample["actual"]
    assert sample["actual"] not in sample["expected"]
    return sample


# -- HuggingFace ----------------------------------------------------------------------------------
def _real_hub_etags(hub):
    """Make the loopback hub answer as the real one: ETag the git blob SHA-1 for small files,
    X-Linked-Etag the SHA-256 (and X-Linked-Size) for LFS files (huggingface_hub names blobs by them)."""
    base = hub.server.RequestHandlerClass

    class Handler(base):
        def _send(self, code, body=b"", headers=None, head=False):
            if headers and "ETag" in headers and code == 200:
                headers = dict(headers)
                headers["ETag"] = '"%s"' % hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()  # noqa: S324
                if urlpath(self.path).endswith((".safetensors", ".onnx")):
                    headers["X-Linked-Etag"] = '"%s"' % hashlib.sha256(body).hexdigest()
                    headers["X-Linked-Size"] = str(len(body))
            return base._send(self, code, body, headers, head)

    hub.server.RequestHandlerClass = Handler


def urlpath(p):
    return p.split("?", 1)[0]


@pytest.fixture
def hf_env(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _hf_download(endpoint, cache):
    code = (
        "import sys; from huggingface_hub import snapshot_download; "
        "print(snapshot_download('mlinfra/tiny-bert', cache_dir=sys.argv[1], endpoint=sys.argv[2]))"
    )
    res = tool([sys.executable, "-c", code, str(cache), endpoint])
    assert res.returncode == 0, res.stderr[-2000:]
    return Path(res.stdout.strip().splitlines()[-1])


def test_huggingface_blob_flipped_is_found_quarantined_and_fetched_again(capsys, tmp_path, hf_env):
    cache = tmp_path / "huggingface"
    files = fake_hub.DEFAULT_REPOS["model"]["mlinfra/tiny-bert"]["main"]
    with fake_hub.FakeHub() as hub:
        _real_hub_etags(hub)
        snap = _hf_download(hub.endpoint, cache)
        blobs = cache / "models--mlinfra--tiny-bert" / "blobs"
        names = sorted(os.listdir(blobs))
        assert len(names) == len(files)
        assert hashlib.sha256(files["model.safetensors"]).hexdigest() in names  # an LFS blob
        assert sum(len(n) == 40 for n in names) == 3  # config, tokenizer, README: git blob ids
        res = run(capsys, tmp_path, path=str(cache))
        assert res["format"] == "huggingface"
        assert_clean(res)
        assert res["verified"] == len(files)
        assert res["methods"]["sha256 (blob name)"]["verified"] == 2
        assert res["methods"]["git blob sha1 (blob name)"]["verified"] == 3
        assert res["verified_bytes"] == sum(len(v) for v in files.values())
        # refs, lock files: metadata with no digest, counted and never verified
        regular = [f for f in tree(cache) if not (cache / f).is_symlink() and (cache / f).is_file()]
        others = [f for f in regular if "/blobs/" not in f]
        assert "models--mlinfra--tiny-bert/refs/main" in others
        assert res["unverifiable"] == len(others)

        weights = blobs / hashlib.sha256(files["model.safetensors"]).hexdigest()
        flip(weights)
        res = run(capsys, tmp_path, path=str(cache), full=True)
        sample = assert_one_corrupt(res, weights.name)
        assert sample["expected"] == "sha256:" + weights.name
        assert res["verified"] == len(files) - 1 and weights.exists()

        chk = run(capsys, tmp_path, check=True, path=str(cache), quarantine=True)
        assert chk["quarantined"] == ["models--mlinfra--tiny-bert/blobs/" + weights.name] and chk["changed"]
        assert weights.exists()
        res = run(capsys, tmp_path, path=str(cache), quarantine=True)
        assert res["quarantined"] == chk["quarantined"] and res["changed"] and not weights.exists()
        assert not (snap / "model.safetensors").is_symlink()  # its snapshot link went with it
        hfh = pytest.importorskip("huggingface_hub")
        assert not hfh.scan_cache_dir(str(cache)).warnings
        assert not any(n.startswith(".mlinfra-prune-trash") for n in os.listdir(cache))

        before = len(hub.downloads())
        snap2 = _hf_download(hub.endpoint, cache)
        assert snap2 == snap
        assert len(hub.downloads()) == before + 1  # the quarantined blob only
        assert (snap / "model.safetensors").read_bytes() == files["model.safetensors"]
        res = run(capsys, tmp_path, path=str(cache))
        assert_clean(res)
        assert res["verified"] == len(files) and res["hashed_bytes"] == len(files["model.safetensors"])


# -- HuggingFace 2.x shared Xet store --------------------------------------------------------------
W = os.urandom(96 * 1024)  # the weights two repos share: one store payload, two repo blob links
STORE_REPOS = {
    "model": {
        "org/llm": {"main": {"config.json": b'{"v": 1}', "model.safetensors": W}},
        "org/llm-ft": {"main": {"config.json": b'{"ft": 1}', "model.safetensors": W}},
    }
}


def _xet_hash(data):
    return hashlib.sha256(b"xet merkle " + data).hexdigest()  # a store name that is NOT the content's SHA-256


def _hf_store_fetch(endpoint, hub):
    """hf_hub_download of every file (the loopback hub serves no Xet, so the blobs land in the repos),
    then huggingface_hub's own publish_blob_to_shared_store, as a Xet download does."""
    hfh = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import _shared_blobs

    for repo, branches in STORE_REPOS["model"].items():
        for f in branches["main"]:
            hfh.hf_hub_download(repo, f, cache_dir=str(hub), endpoint=endpoint)
    for repo in ("models--org--llm", "models--org--llm-ft"):
        for blob in sorted((hub / repo / "blobs").iterdir()):
            if not blob.is_symlink():
                data = blob.read_bytes()
                assert _shared_blobs.publish_blob_to_shared_store(
                    blob_path=str(blob), xet_hash=_xet_hash(data), cache_dir=str(hub), expected_size=len(data)
                )
    info = hfh.scan_cache_dir(str(hub))
    assert not info.warnings, info.warnings
    return sorted(p.relative_to(hub.parent).as_posix() for p in _shared_blobs.shared_store_blob_paths(str(hub)))


def _store_home(tmp_path):
    """HF_HOME and its hub directory, group only, as cache_dir lays a cache out."""
    home = tmp_path / "huggingface"
    hub = home / "hub"
    hub.mkdir(parents=True)
    os.chmod(hub, 0o2770)  # noqa: S103 - a cache directory, group only
    return home, hub


def test_huggingface_store_payload_checked_through_its_repo_links(capsys, tmp_path, hf_env):
    hfh = pytest.importorskip("huggingface_hub")
    home, hub = _store_home(tmp_path)
    with fake_hub.FakeHub(STORE_REPOS) as fh:
        _real_hub_etags(fh)
        payloads = _hf_store_fetch(fh.endpoint, hub)
        assert len(payloads) == 3  # two configs, one shared weights payload
        wpath = home / ("hub/blobs/%s/%s" % (_xet_hash(W)[:2], _xet_hash(W)))
        wsha = hashlib.sha256(W).hexdigest()
        links = [hub / r / "blobs" / wsha for r in ("models--org--llm", "models--org--llm-ft")]
        assert all(os.readlink(x) == "../../blobs/%s/%s" % (wpath.parent.name, wpath.name) for x in links)

        # untouched: every payload verified through its links, none unverifiable
        res = run(capsys, tmp_path, path=str(home), format="huggingface")
        assert_clean(res)
        assert res["methods"]["store payload (repo blob names)"]["verified"] == 3
        assert res["verified"] == 3 and res["verified_bytes"] == len(W) + len(b'{"v": 1}') + len(b'{"ft": 1}')
        regular = [f for f in tree(home) if not (home / f).is_symlink() and (home / f).is_file()]
        assert sorted(set(regular) & set(payloads)) == payloads
        assert res["unverifiable"] == len(regular) - 3  # marker, manifests, locks, refs: no digest
        again = run(capsys, tmp_path, path=str(home), format="huggingface")
        assert again["verified"] == 3 and again["reused"] == 3 and again["hashed_bytes"] == 0

        # one byte flipped in the payload both repos link
        os.chmod(wpath, 0o644)
        flip(wpath)
        os.chmod(wpath, 0o444)
        res = run(capsys, tmp_path, path=str(home), format="huggingface")
        sample = assert_one_corrupt(res, "hub/blobs/" + wpath.parent.name + "/" + wpath.name)
        assert sample["expected"] == "sha256:" + wsha
        assert sample["actual"] == "sha256:" + hashlib.sha256(wpath.read_bytes()).hexdigest()
        assert res["verified"] == 2

        chk = run(capsys, tmp_path, check=True, path=str(home), format="huggingface", quarantine=True)
        assert chk["quarantined"] == ["hub/blobs/%s/%s" % (wpath.parent.name, wpath.name)] and chk["changed"]
        assert wpath.exists() and all(x.is_symlink() for x in links)
        res = run(capsys, tmp_path, path=str(home), format="huggingface", quarantine=True)
        assert res["quarantined"] == chk["quarantined"] and res["changed"]
        assert not wpath.exists() and not any(os.path.lexists(x) for x in links)
        assert not os.path.lexists(str(wpath) + ".refs")  # its manifest went with it, under its lock
        assert not any(n.startswith(".mlinfra-prune-trash") for n in os.listdir(home))
        info = hfh.scan_cache_dir(str(hub))
        assert not info.warnings, info.warnings

        before = len(fh.downloads())
        assert sorted(_hf_store_fetch(fh.endpoint, hub)) == sorted(payloads)
        assert len(fh.downloads()) == before + 2  # the weights of each repo, nothing else
        for r in ("llm", "llm-ft"):
            snap = next((hub / ("models--org--" + r) / "snapshots").iterdir())
            assert (snap / "model.safetensors").read_bytes() == W
        res = run(capsys, tmp_path, path=str(home), format="huggingface")
        assert_clean(res)
        assert res["verified"] == 3 and res["hashed_bytes"] == len(W)

        # a third name for the same payload: two different SHA-256 names cannot both match
        bogus = hub / "models--org--llm-ft" / "blobs" / hashlib.sha256(b"other").hexdigest()
        os.symlink(os.readlink(links[0]), bogus)
        res = run(capsys, tmp_path, path=str(home), format="huggingface")
        assert res["corrupt"] == 1 and res["verified"] == 2, res["corrupt_sample"]
        (sample,) = res["corrupt_sample"]
        assert sample["path"].endswith(wpath.name)
        assert sample["expected"] == "sha256:%s|sha256:%s" % tuple(sorted([wsha, bogus.name]))
        assert sample["actual"] == "sha256:" + wsha
        bogus.unlink()
        # a link leaving the store is never followed: it names nothing
        outside = tmp_path / "outside"
        outside.write_bytes(W)
        os.symlink("../../../" + os.path.relpath(outside, hub.parent), bogus)
        res = run(capsys, tmp_path, path=str(home), format="huggingface")
        assert_clean(res)
        assert res["verified"] == 3
        # a payload no repo blob links to any more names no digest: unverifiable, never verified
        cfg = hub / "models--org--llm" / "blobs" / hashlib.sha1(b'blob 8\0{"v": 1}').hexdigest()  # noqa: S324
        assert cfg.is_symlink()
        cfg.unlink()
        res2 = run(capsys, tmp_path, path=str(home), format="huggingface")
        assert_clean(res2)
        assert res2["verified"] == 2 and res2["unverifiable"] == res["unverifiable"] + 1


def test_huggingface_store_quarantine_holds_the_entry_lock_and_leaves_a_payload_linked_since(capsys, tmp_path, hf_env):
    """Quarantining a store payload takes its ``<hash>.lock`` as huggingface_hub does to publish:
    while a process holds it nothing moves; a link huggingface_hub made to the payload after the
    check (not in the unit) keeps it where it is, so no link is left dangling."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import _shared_blobs

    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import huggingface as hf

    home, hub = _store_home(tmp_path)
    with fake_hub.FakeHub(STORE_REPOS) as fh:
        _real_hub_etags(fh)
        _hf_store_fetch(fh.endpoint, hub)
    wpath = hub / "blobs" / _xet_hash(W)[:2] / _xet_hash(W)
    os.chmod(wpath, 0o644)
    flip(wpath)
    os.chmod(wpath, 0o444)

    holder = test_cache_prune_tools.hold_lock(str(wpath) + ".lock", "flock")
    try:
        res = run(capsys, tmp_path, path=str(home), format="huggingface", quarantine=True)
    finally:
        holder.kill()
        holder.wait()
    assert res["corrupt"] == 1 and res["quarantined"] == [] and wpath.exists()
    assert any("locked or was linked again" in n for n in res["notes"]), res["notes"]

    # the check as a run makes it, then a third repo's download links the payload
    v = _verify.Verifier(str(home), fmt="huggingface", state_dir=str(tmp_path / "vstate"), full=True, min_age=0)
    assert v.run()["corrupt"] == 1
    (item, _actual, _path) = v.corrupt[0]
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        gid = os.fstat(fd).st_gid
        with hf.quarantine_store_payload(fd, item, gid) as extra:
            assert extra == [tuple(item.target[:-1]) + (wpath.name + ".refs",)]
        blob = hub / "models--org--copy" / "blobs" / hashlib.sha256(W).hexdigest()
        blob.parent.mkdir(parents=True)
        blob.write_bytes(W)
        assert _shared_blobs.publish_blob_to_shared_store(
            blob_path=str(blob), xet_hash=_xet_hash(W), cache_dir=str(hub), expected_size=len(W)
        )
        assert blob.is_symlink() and os.path.realpath(blob) == str(wpath)
        with hf.quarantine_store_payload(fd, item, gid) as extra:
            assert extra is None
    finally:
        os.close(fd)
    assert wpath.exists() and blob.is_symlink()
    # a new check sees the third link too: the payload goes with all three
    res = run(capsys, tmp_path, path=str(home), format="huggingface", quarantine=True)
    assert res["quarantined"] == ["hub/blobs/%s/%s" % (wpath.parent.name, wpath.name)]
    assert not wpath.exists() and not os.path.lexists(blob) and not os.path.lexists(str(wpath) + ".refs")


# -- npm -------------------------------------------------------------------------------------------
@pytest.mark.registry
def test_npm_content_flipped_is_found_quarantined_and_fetched_again(capsys, tmp_path, npm_cache_master):
    cache = tmp_path / "npm"
    shutil.copytree(npm_cache_master, cache, symlinks=True)
    shutil.rmtree(cache / "_logs", ignore_errors=True)
    content = sorted(f for f in tree(cache) if f.startswith("_cacache/content-v2/") and (cache / f).is_file())
    index = sorted(f for f in tree(cache) if f.startswith("_cacache/index-v5/") and (cache / f).is_file())
    res = run(capsys, tmp_path, path=str(cache))
    assert res["format"] == "npm"
    assert_clean(res)
    assert res["methods"]["sha512 (cacache content path)"]["verified"] == len(content)
    assert res["methods"]["sha1 per index line"]["verified"] == len(index)
    assert res["verified"] == len(content) + len(index) and res["unverifiable"] == 0

    # the is-number tarball: the content an index entry of is-number-7.0.0.tgz points to
    tgz = None
    for f in index:
        for line in (cache / f).read_text().splitlines():
            entry = json.loads(line.split("\t", 1)[1]) if "\t" in line else None
            if entry and entry["key"].endswith("/is-number-7.0.0.tgz"):
                ((algo, hexd),) = integrity_ids(entry["integrity"])
                tgz = "_cacache/content-v2/%s/%s/%s/%s" % (algo, hexd[:2], hexd[2:4], hexd[4:])
    assert tgz in content
    flip(cache / tgz)
    res = run(capsys, tmp_path, path=str(cache), quarantine=True)
    assert_one_corrupt(res, tgz)
    assert res["quarantined"] == [tgz] and not (cache / tgz).exists()
    assert res["verified"] == len(content) + len(index) - 1

    again = tool(["npm", "cache", "add", "is-number@7.0.0", "--cache", str(cache)], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (cache / tgz).exists()
    res = run(capsys, tmp_path, path=str(cache))
    assert_clean(res)
    assert res["methods"]["sha512 (cacache content path)"]["verified"] >= len(content)
    verify = tool(["npm", "cache", "verify", "--cache", str(cache)])
    assert verify.returncode == 0 and "Corrupted" not in verify.stdout, verify.stdout


@pytest.mark.registry
def test_npm_index_line_edited_is_corrupt(capsys, tmp_path, npm_cache_master):
    cache = tmp_path / "npm"
    shutil.copytree(npm_cache_master, cache, symlinks=True)
    buckets = [cache / f for f in sorted(tree(cache)) if f.startswith("_cacache/index-v5/")]
    bucket = next(b for b in buckets if b.is_file())
    text = bucket.read_text()
    bucket.write_text(text.replace('"time":', '"time": ', 1))
    res = run(capsys, tmp_path, path=str(cache))
    sample = assert_one_corrupt(res, str(bucket.relative_to(cache)))
    assert sample["expected"] == "sha1 per line"


# -- apt -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def apt_master(tmp_path_factory):
    if not shutil.which("apt-get"):
        pytest.skip("apt-get not available")
    base = tmp_path_factory.mktemp("aptverify")
    arch = base / "apt" / "archives"
    (arch / "partial").mkdir(parents=True)
    res = tool(["apt-get", "download", "netbase", "libgdbm-compat4"], cwd=arch)
    if res.returncode or len([f for f in os.listdir(arch) if f.endswith(".deb")]) != 2:
        pytest.skip("apt-get download failed: %s" % res.stderr[-300:])
    (arch / "lock").write_bytes(b"")
    return base / "apt"


def _build_deb(dest, work):
    """A .deb the host's lists do not know, built by dpkg-deb itself (in ``work``)."""
    pkg = work / "pkgroot"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr" / "share" / "mlinfra").mkdir(parents=True)
    (pkg / "usr" / "share" / "mlinfra" / "data").write_bytes(os.urandom(30000))
    (pkg / "DEBIAN" / "control").write_text(
        "Package: mlinfra-local\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: local test package\n"
    )
    res = tool(["dpkg-deb", "--build", "-Zxz", str(pkg), str(dest)])
    assert res.returncode == 0, res.stderr


@pytest.mark.registry
def test_apt_deb_flipped_is_found_against_the_host_lists_and_downloaded_again(capsys, tmp_path, apt_master):
    cache = tmp_path / "apt"
    shutil.copytree(apt_master, cache, symlinks=True)
    arch = cache / "archives"
    _build_deb(arch / "mlinfra-local_1.0_all.deb", tmp_path)
    res = run(capsys, tmp_path, path=str(cache))
    assert res["format"] == "apt"
    assert_clean(res)
    assert res["methods"]["sha256 (host package lists)"]["verified"] == 2
    assert res["methods"]["dpkg-deb structural (not in the host's lists)"]["verified"] == 1
    assert res["unverifiable"] == 1  # archives/lock

    netbase = next(f for f in os.listdir(arch) if f.startswith("netbase_"))
    flip(arch / netbase)
    res = run(capsys, tmp_path, path=str(cache), quarantine=True)
    sample = assert_one_corrupt(res, netbase)
    assert sample["expected"].startswith("sha256:")
    assert res["quarantined"] == ["archives/" + netbase] and not (arch / netbase).exists()
    again = tool(["apt-get", "download", "netbase"], cwd=arch)
    assert again.returncode == 0, again.stderr
    res = run(capsys, tmp_path, path=str(cache))
    assert_clean(res)
    assert res["methods"]["sha256 (host package lists)"]["verified"] == 2


def test_apt_deb_unknown_to_the_lists_gets_the_structural_check(capsys, tmp_path):
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb missing")
    cache = tmp_path / "apt"
    (cache / "archives" / "partial").mkdir(parents=True)
    (cache / "archives" / "lock").write_bytes(b"")
    deb = cache / "archives" / "mlinfra-local_1.0_all.deb"
    _build_deb(deb, tmp_path)
    flip(deb, os.path.getsize(deb) - 200)  # inside the xz-compressed data member
    res = run(capsys, tmp_path, path=str(cache), quarantine=True)
    sample = assert_one_corrupt(res, deb.name)
    assert sample["expected"] == "dpkg-deb structure" and "dpkg-deb" in sample["actual"]
    assert res["methods"]["dpkg-deb structural (not in the host's lists)"]["corrupt"] == 1
    assert not deb.exists()


# -- pip -------------------------------------------------------------------------------------------
@pytest.fixture
def pip_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _pip_build(cache, dest, env):
    """pip builds six from its sdist and keeps the wheel in its cache (``wheels/``)."""
    return tool(
        [sys.executable, "-m", "pip", "install", "-q", "--isolated", "--no-deps", "--no-binary", "six",
         "--index-url", "https://pypi.org/simple", "--target", str(dest), "--cache-dir", str(cache), "six==1.16.0"],
        env=env,
    )  # fmt: skip


@pytest.mark.registry
def test_pip_built_wheel_flipped_is_found_quarantined_and_built_again(capsys, tmp_path, pip_env):
    cache = tmp_path / "pip"
    res = _pip_build(cache, tmp_path / "t1", pip_env)
    wheels = [f for f in tree(cache) if f.endswith(".whl")]
    if res.returncode or len(wheels) != 1:
        pytest.skip("pip could not build the wheel (PyPI unreachable?): %s" % res.stderr[-300:])
    (wheel,) = wheels
    res = run(capsys, tmp_path, path=str(cache))
    assert res["format"] == "pip"
    assert_clean(res)
    assert res["methods"]["wheel RECORD"]["verified"] == 1 and res["verified"] == 1
    # origin.json, selfcheck, HTTP responses: no digest recorded, counted, never verified
    others = [f for f in tree(cache) if (cache / f).is_file() and f != wheel]
    assert res["unverifiable"] == len(others) > 0
    data = (cache / wheel).read_bytes()
    flip(cache / wheel, data.index(b"six.py") + 200)  # inside six.py's compressed bytes
    res = run(capsys, tmp_path, path=str(cache), quarantine=True)
    assert_one_corrupt(res, wheel)
    assert res["quarantined"] == [wheel] and not (cache / wheel).exists()
    again = _pip_build(cache, tmp_path / "t2", pip_env)
    assert again.returncode == 0, again.stderr
    assert [f for f in tree(cache) if f.endswith(".whl")] == [wheel]
    res = run(capsys, tmp_path, path=str(cache))
    assert_clean(res)
    assert res["methods"]["wheel RECORD"]["verified"] == 1

    # pip's HTTP cache (http-v2: ``<key>`` metadata + ``<key>.body``) as pip lays it out when the
    # index lets it cache (this one does not): a body that is the wheel is checked by its RECORD,
    # an index page is not; a corrupt body goes with its metadata
    http = cache / "http-v2" / "a" / "b" / "c" / "d" / "e"
    http.mkdir(parents=True)
    key = "abcdef0123456789" * 3
    shutil.copyfile(cache / wheel, http / (key + ".body"))
    (http / key).write_bytes(b"cc=4,response metadata")
    (http / "page.body").write_text("<html><a href='six-1.16.0.tar.gz'>six</a></html>")
    res = run(capsys, tmp_path, path=str(cache))
    assert_clean(res)
    assert res["methods"]["wheel RECORD"]["verified"] == 2
    flip(http / (key + ".body"), data.index(b"six.py") + 200)
    res = run(capsys, tmp_path, path=str(cache), quarantine=True)
    assert_one_corrupt(res, key + ".body")
    assert res["quarantined"] == ["http-v2/a/b/c/d/e/%s.body" % key]
    assert sorted(os.listdir(http)) == ["page.body"]


# -- uv --------------------------------------------------------------------------------------------
UV = Path(sys.executable).parent / "uv"


def _uv_install(cache, venv, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env["UV_CACHE_DIR"] = str(cache)
    return tool(
        [str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "--link-mode", "copy",
         "--index-url", "https://pypi.org/simple", *extra, "six==1.16.0"],
        env=env,
    )  # fmt: skip


@pytest.mark.registry
def test_uv_archive_flipped_is_found_quarantined_and_fetched_again(capsys, tmp_path):
    if not UV.exists():
        pytest.skip("uv not installed")
    cache = tmp_path / "uv"
    venv = tmp_path / "venv"
    assert tool([str(UV), "venv", "-q", str(venv)]).returncode == 0
    res = _uv_install(cache, venv)
    if res.returncode:
        pytest.skip("PyPI unreachable: %s" % res.stderr[-300:])
    res = run(capsys, tmp_path, path=str(cache))
    assert res["format"] == "uv"
    assert_clean(res)
    assert res["methods"]["sha256 (uv archive RECORD)"]["verified"] == 1 and res["verified"] == 1
    assert res["unverifiable"] >= 3  # index response, HTTP policy, metadata, interpreter query
    (archive,) = [cache / f for f in tree(cache) if f.startswith("archive-v0/") and f.count("/") == 1]
    flip(archive / "six.py")
    res = run(capsys, tmp_path, path=str(cache), quarantine=True)
    sample = assert_one_corrupt(res, "six.py")
    assert "sha256=" in sample["actual"]
    rel = str(archive.relative_to(cache))
    assert res["quarantined"] == [rel] and not archive.exists()
    again = _uv_install(cache, venv, "--reinstall")
    assert again.returncode == 0, again.stderr
    res = run(capsys, tmp_path, path=str(cache))
    assert_clean(res)
    assert res["verified"] == 1
    out = tool([str(venv / "bin" / "python"), "-c", "import six; print(six.__version__)"])
    assert out.stdout.strip() == "1.16.0"


@pytest.mark.registry
def test_summary_file_is_root_owned_0640_and_merges_caches(capsys, tmp_path, npm_cache_master):
    cache = tmp_path / "npm"
    shutil.copytree(npm_cache_master, cache, symlinks=True)
    run(capsys, tmp_path, path=str(cache), name="npm")
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "f").write_bytes(b"abc")
    run(capsys, tmp_path, path=str(gen), name="generic", format="generic")
    summary = tmp_path / "verify-state" / "summary.json"
    st = os.stat(summary)
    assert st.st_uid == os.geteuid() and (st.st_mode & 0o777) == 0o640
    doc = json.loads(summary.read_text())
    assert doc["version"] == 1 and isinstance(doc["time"], int)
    assert set(doc["caches"]) == {"npm", "generic"}
    assert doc["caches"]["generic"] == {
        "verified": 0, "verified_bytes": 0, "corrupt": 0, "corrupt_bytes": 0, "unverifiable": 1,
        "unverifiable_bytes": 3, "skipped_busy": 0, "corrupt_sample": [],
    }  # fmt: skip
    assert doc["caches"]["npm"]["verified"] > 0


# -- Go --------------------------------------------------------------------------------------------
def _go_proxy(base):
    """A file:// GOPROXY serving one module (the proxy protocol's list/info/mod/zip files)."""
    import zipfile

    vdir = base / "proxy" / "example.com" / "!hello" / "@v"
    vdir.mkdir(parents=True)
    mod = "module example.com/Hello\n\ngo 1.19\n"
    (vdir / "list").write_text("v1.0.0\n")
    (vdir / "v1.0.0.info").write_text('{"Version": "v1.0.0", "Time": "2024-01-01T00:00:00Z"}')
    (vdir / "v1.0.0.mod").write_text(mod)
    with zipfile.ZipFile(vdir / "v1.0.0.zip", "w") as zf:
        zf.writestr("example.com/Hello@v1.0.0/go.mod", mod)
        zf.writestr("example.com/Hello@v1.0.0/hello.go", 'package hello\n\nfunc Hi() string { return "hi" }\n')
        zf.writestr("example.com/Hello@v1.0.0/sub/x.go", "package sub\n" + "// padding\n" * 200)
    return "file://%s" % (base / "proxy")


def _go_download(proxy, cache, home):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "GOPROXY": proxy, "GOSUMDB": "off", "GOMODCACHE": str(cache)}
    env["GOCACHE"] = str(home / "gocache")
    return tool(["go", "mod", "download", "-json", "example.com/Hello@v1.0.0"], env=env, cwd=home)


def test_go_zip_and_module_dir_against_the_ziphash_go_wrote(capsys, tmp_path):
    if not shutil.which("go"):
        pytest.skip("go not installed (Debian's golang-go)")
    proxy = _go_proxy(tmp_path)
    cache = tmp_path / "gomod"
    res = _go_download(proxy, cache, tmp_path)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    dl = cache / "cache" / "download" / "example.com" / "!hello" / "@v"
    assert (dl / "v1.0.0.ziphash").read_text() == info["Sum"]  # go's own h1 of the zip
    moddir = cache / "example.com" / "!hello@v1.0.0"
    res = run(capsys, tmp_path, path=str(cache))
    assert res["format"] == "go"
    assert_clean(res)
    assert res["methods"]["h1 dirhash (.ziphash) of the zip"]["verified"] == 1
    assert res["methods"]["h1 dirhash (.ziphash) of the module dir"]["verified"] == 1
    assert res["verified"] == 2

    # a byte of the extracted (read-only) module dir: the dir is corrupt, the zip is not
    os.chmod(moddir / "sub" / "x.go", 0o644)
    flip(moddir / "sub" / "x.go")
    os.chmod(moddir / "sub" / "x.go", 0o444)
    res = run(capsys, tmp_path, path=str(cache), quarantine=True)
    sample = assert_one_corrupt(res, "example.com/!hello@v1.0.0")
    assert sample["expected"].startswith(info["Sum"])
    assert res["quarantined"] == ["example.com/!hello@v1.0.0"] and not moddir.exists()
    assert _go_download(proxy, cache, tmp_path).returncode == 0  # go extracts it again from the zip
    assert moddir.exists()
    assert_clean(run(capsys, tmp_path, path=str(cache)))

    # a byte of the zip: the zip goes with its .ziphash, go downloads both again
    os.chmod(dl / "v1.0.0.zip", 0o644)
    flip(dl / "v1.0.0.zip", (dl / "v1.0.0.zip").read_bytes().index(b"padding") + 10)
    res = run(capsys, tmp_path, path=str(cache), quarantine=True)
    assert_one_corrupt(res, "v1.0.0.zip")
    assert not (dl / "v1.0.0.zip").exists() and not (dl / "v1.0.0.ziphash").exists()
    assert _go_download(proxy, cache, tmp_path).returncode == 0
    res = run(capsys, tmp_path, path=str(cache))
    assert_clean(res)
    assert res["verified"] == 2
