# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_verify's engine (_verify): incremental state, busy units, check mode, workers, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_verify
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import age, make_hf_repo, run_main, write

R1 = "1" * 40


@pytest.fixture
def hub(tmp_path):
    files = {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(300000), "w2.bin": os.urandom(200000)}
    make_hf_repo(tmp_path / "hf" / "hub", "models--org--m", {R1: files}, {"main": R1})
    age(tmp_path / "hf", 5)
    return tmp_path / "hf", files


def blob(hub_dir, content):
    return hub_dir / "hub" / "models--org--m" / "blobs" / hashlib.sha256(content).hexdigest()


def verify(path, state, **kw):
    kw.setdefault("min_age", 0)
    return _verify.Verifier(str(path), state_dir=str(state), **kw).run()


def test_incremental_run_reads_only_what_changed_and_full_reads_all(tmp_path, hub):
    path, files = hub
    state = tmp_path / "state"
    first = verify(path, state)
    total = sum(len(v) for v in files.values())
    assert first["verified"] == 3 and first["hashed_bytes"] == total and first["reused"] == 0
    st = os.stat(state)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    (sfile,) = [n for n in os.listdir(state) if n.startswith("state-")]
    assert stat.S_IMODE(os.stat(state / sfile).st_mode) == 0o600
    again = verify(path, state)
    assert again["verified"] == 3 and again["hashed_bytes"] == 0 and again["reused"] == 3
    # a byte changed in place with the mtime put back: the ctime still moved, so it is read again
    b = blob(path, files["w2.bin"])
    st = os.stat(b)
    data = bytearray(b.read_bytes())
    data[7] ^= 0xFF
    b.write_bytes(bytes(data))
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = verify(path, state)
    assert res["corrupt"] == 1 and res["hashed_bytes"] == len(files["w2.bin"]) and res["reused"] == 2
    assert res["corrupt_sample"][0]["expected"] == "sha256:" + b.name
    # a corrupt unit is never remembered as verified: the next incremental run finds it again
    assert verify(path, state)["corrupt"] == 1
    full = verify(path, state, full=True)
    assert full["hashed_bytes"] == total and full["reused"] == 0 and full["corrupt"] == 1


def test_state_of_a_renamed_in_file_is_not_trusted(tmp_path, hub):
    """The state is keyed by inode and signature: a different file under a verified name is read."""
    path, files = hub
    state = tmp_path / "state"
    verify(path, state)
    b = blob(path, files["model.safetensors"])
    other = path / "other"
    other.write_bytes(b"x" * len(files["model.safetensors"]))
    os.replace(other, b)
    res = verify(path, state)
    assert res["corrupt"] == 1 and res["reused"] == 2


def test_young_units_are_busy_not_verified(tmp_path, hub):
    path, files = hub
    res = verify(path, tmp_path / "state", min_age=3600)  # ctime is now: every blob may be in the making
    assert res["skipped_busy"] == 3 and res["verified"] == 0 and res["hashed_bytes"] == 0


def test_check_mode_quarantines_nothing_and_writes_no_state(tmp_path, hub):
    path, files = hub
    b = blob(path, files["config.json"])
    b.write_bytes(b"{}")
    state = tmp_path / "state"
    res = verify(path, state, quarantine=True, check_mode=True)
    assert res["corrupt"] == 1 and res["quarantined"] == ["hub/models--org--m/blobs/" + b.name]
    assert b.exists()
    assert not [n for n in os.listdir(state) if n.startswith("state-")]


def test_quarantine_leaves_a_unit_replaced_after_it_was_read(tmp_path, hub):
    path, files = hub
    b = blob(path, files["config.json"])
    b.write_bytes(b"{}")

    class Racing(_verify.Verifier):
        def _quarantine(self, root_fd, rst, mounts):
            # between the check and the move, the name gets another file (a re-download)
            tmp = b.with_name("new")
            tmp.write_bytes(files["config.json"])
            os.replace(tmp, b)
            return _verify.Verifier._quarantine(self, root_fd, rst, mounts)

    res = Racing(str(path), state_dir=str(tmp_path / "state"), min_age=0, quarantine=True).run()
    assert res["corrupt"] == 1 and res["quarantined"] == []
    assert any("changed since it was checked" in n for n in res["notes"])
    assert b.read_bytes() == files["config.json"]


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_the_same_results(tmp_path, hub, workers):
    path, files = hub
    blob(path, files["w2.bin"]).write_bytes(b"bad")
    res = verify(path, tmp_path / "state", workers=workers)
    assert (res["verified"], res["corrupt"], res["corrupt_bytes"]) == (2, 1, 3)


def test_torch_checkpoint_named_by_its_hash_prefix(tmp_path):
    cache = tmp_path / "torch"
    good = os.urandom(5000)
    name = "resnet-%s.pth" % hashlib.sha256(good).hexdigest()[:8]
    write(cache / "hub" / "checkpoints" / name, good)
    write(cache / "hub" / "checkpoints" / ("bad-%s.pth" % ("0" * 8)), b"nope")
    write(cache / "hub" / "checkpoints" / "plain.pth", b"no hash in the name")
    res = verify(cache, tmp_path / "state")
    assert res["format"] == "torch"
    assert (res["verified"], res["corrupt"], res["unverifiable"]) == (1, 1, 1)


def test_external_is_skipped_and_generic_only_unverifiable(tmp_path):
    ext = tmp_path / "ext"
    write(ext / "x", b"abc")
    res = verify(ext, tmp_path / "state", fmt="external")
    assert res["skipped"] and res["verified"] == 0
    res = verify(ext, tmp_path / "state", fmt="generic")
    assert (res["verified"], res["unverifiable"], res["unverifiable_bytes"]) == (0, 1, 3)


def test_summary_keeps_other_caches_and_caps_the_sample(tmp_path):
    state = tmp_path / "state"
    res = _verify.empty_counts()
    res.update(corrupt=30, corrupt_sample=[{"path": str(i), "expected": "e", "actual": "a"} for i in range(30)])
    _verify.write_summary({"a": res}, str(state), now=100)
    doc = _verify.write_summary({"b": _verify.empty_counts()}, str(state), now=200)
    on_disk = json.loads((state / "summary.json").read_text())
    assert on_disk == doc and doc["time"] == 200 and set(doc["caches"]) == {"a", "b"}
    assert len(doc["caches"]["a"]["corrupt_sample"]) == 20
    assert stat.S_IMODE(os.stat(state / "summary.json").st_mode) == 0o640


def test_bad_input_fails_clearly_and_writes_nothing(capsys, tmp_path, hub):
    path, _files = hub
    state = tmp_path / "state"
    for args, msg in (
        ({"path": "relative/dir"}, "absolute"),
        ({"path": str(tmp_path / "missing")}, "does not exist"),
        ({"path": str(path), "workers": -1}, "workers"),
        ({"path": str(path), "min_age": "soon"}, "min_age"),
        ({"path": str(path), "format": "nope"}, "value of format"),
    ):
        res = run_main(cache_verify, capsys, state_dir=str(state), **args)
        assert res.get("failed") and msg in res["msg"], res
    assert not state.exists()


# -- conda, cargo: fixtures laid out as the tools' sources write them (neither tool can fetch here) --
def _conda_pkg(pkgs, dist, record_algo="sha256"):
    """A package as conda leaves it in pkgs/: the tarball (info/ first, as conda-package-handling
    writes .tar.bz2) and the extracted dir whose info/repodata_record.json carries the channel's
    sha256 and md5 of the tarball (conda's ``PackageCacheData`` / ``ProgressiveFetchExtract``)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as tf:
        for name, data in (("info/index.json", b'{"name": "%s"}' % dist.encode()), ("lib/x.py", os.urandom(4000))):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    tarball = buf.getvalue()
    write(pkgs / (dist + ".tar.bz2"), tarball)
    rec = {"fn": dist + ".tar.bz2", "url": "https://conda.anaconda.org/conda-forge/noarch/%s.tar.bz2" % dist}
    rec[record_algo] = getattr(hashlib, record_algo)(tarball).hexdigest()
    write(pkgs / dist / "info" / "repodata_record.json", json.dumps(rec).encode())
    write(pkgs / dist / "lib" / "x.py", b"print()")
    return pkgs / (dist + ".tar.bz2")


def test_conda_tarball_against_repodata_record(tmp_path):
    cache = tmp_path / "conda"
    pkgs = cache / "pkgs"
    good = _conda_pkg(pkgs, "six-1.16.0-pyh6c4a22f_0")
    md5 = _conda_pkg(pkgs, "tqdm-4.66.1-pyhd8ed1ab_0", record_algo="md5")
    bad = _conda_pkg(pkgs, "idna-3.6-pyhd8ed1ab_0")
    write(pkgs / "urls.txt", b"")
    write(pkgs / "orphan-1.0-0.tar.bz2", b"no record")
    data = bad.read_bytes()
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))  # one bit of the last byte
    age(cache, 2)
    res = verify(cache, tmp_path / "state", quarantine=True)
    assert res["format"] == "conda"
    assert res["methods"]["sha256 (repodata_record.json)"] == {
        "verified": 1, "corrupt": 1, "unverifiable": 0, "skipped_busy": 0,
    }  # fmt: skip
    assert res["methods"]["md5 (repodata_record.json)"]["verified"] == 1
    assert res["corrupt_sample"][0]["path"] == "pkgs/" + bad.name
    assert res["quarantined"] == ["pkgs/" + bad.name] and not bad.exists() and good.exists() and md5.exists()
    # the orphan tarball, urls.txt, the extracted files and records: unverifiable, never verified
    assert res["verified"] == 2 and res["unverifiable"] == 1 + 1 + 3 * 2


def _cargo_index_cache(path, name, versions):
    """cargo's registry index cache file (src/cargo/sources/registry/index/cache.rs): the cache
    version byte (3), the index format version (u32 LE, 2), the index revision NUL, then
    ``version NUL json NUL`` per version."""
    import struct

    body = b'etag: W/"abc"\0'
    for vers, cksum in versions.items():
        line = json.dumps({"name": name, "vers": vers, "deps": [], "cksum": cksum, "features": {}, "yanked": False})
        body += vers.encode() + b"\0" + line.encode() + b"\0"
    write(path, b"\x03" + struct.pack("<I", 2) + body)


def test_cargo_crate_against_the_index_cache_cksum(tmp_path):
    cache = tmp_path / "cargo"
    reg = "index.crates.io-6f17d22bba15001f"
    crates = {("serde-json-core", "0.5.1"): os.urandom(7000), ("cc", "1.0.83"): os.urandom(5000)}
    for (name, vers), data in crates.items():
        write(cache / "registry" / "cache" / reg / ("%s-%s.crate" % (name, vers)), data)
    _cargo_index_cache(
        cache / "registry" / "index" / reg / ".cache" / "se" / "rd" / "serde-json-core",
        "serde-json-core",
        {"0.5.0": "0" * 64, "0.5.1": hashlib.sha256(crates[("serde-json-core", "0.5.1")]).hexdigest()},
    )
    _cargo_index_cache(cache / "registry" / "index" / reg / ".cache" / "2" / "cc", "cc", {"1.0.83": "f" * 64})
    write(cache / "registry" / "cache" / reg / "unknown-0.1.0.crate", b"no index entry")
    age(cache, 2)
    res = verify(cache, tmp_path / "state", fmt="cargo")
    assert res["methods"]["sha256 (registry index cksum)"]["verified"] == 1
    assert res["corrupt"] == 1 and res["corrupt_sample"][0]["path"].endswith("cc-1.0.83.crate")
    assert res["corrupt_sample"][0]["expected"] == "sha256:" + "f" * 64
    assert res["unverifiable"] == 3  # the unknown crate and the two index cache files
