# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_prune on caches made by the real tools; afterwards each tool still works from what is left.

pip (wheel cache filled by a real ``pip install --no-binary``), npm (real ``npm cache add``), apt
(real ``apt-get download``), HuggingFace hub (huggingface_hub's layout, checked with its own
``scan_cache_dir``), Go (read-only module dirs, pruned as an unprivileged user), cargo and conda
(their layouts; their registries are not reachable here). Tests whose tool or registry is not
available are skipped, never passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_prune
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import age, make_hf_repo, run_main, tree, write

DAY = 86400


def run_module(capsys, check=False, **args):
    return run_main(cache_prune, capsys, check=check, **args)


def tool(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, **kw)


# -- pip --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pip_cache_master(tmp_path_factory):
    """A pip cache whose wheels/ were built and stored by pip itself (PyPI needed)."""
    base = tmp_path_factory.mktemp("pipmaster")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    res = tool(
        [sys.executable, "-m", "pip", "install", "-q", "--isolated", "--no-deps", "--no-binary", "six,toml",
         "--index-url", "https://pypi.org/simple", "--target", str(base / "t"), "--cache-dir", str(base / "pip"),
         "six==1.16.0", "toml==0.10.2"],
        env=env,
    )  # fmt: skip
    wheels = [f for f in tree(base / "pip") if f.endswith(".whl")]
    if res.returncode or len(wheels) != 2:
        pytest.skip("pip could not build the wheels (PyPI unreachable?): %s" % res.stderr[-300:])
    return base / "pip", env


@pytest.mark.registry
def test_pip_wheel_cache_unit_is_the_wheel_directory(capsys, tmp_path, pip_cache_master):
    master, env = pip_cache_master
    cache = tmp_path / "cache" / "pip"
    shutil.copytree(master, cache, symlinks=True)
    age(cache, 200)
    six = next(f for f in tree(cache) if f.endswith(".whl") and "six" in f)
    now = time.time()
    os.utime(cache / six, (now, now))  # six used today, toml 200 days ago
    chk = run_module(capsys, check=True, path=str(cache), max_age="90d")
    assert chk["format"] == "pip" and chk["units"] == 1
    assert chk["sample"][0]["name"] == "toml-0.10.2-py2.py3-none-any.whl" and chk["sample"][0]["kind"] == "wheel"
    res = run_module(capsys, path=str(cache), max_age="90d")
    assert res["units"] == 1 and res["bytes"] == chk["bytes"]
    left = tree(cache)
    assert not any("toml" in f for f in left)
    assert os.path.dirname(six) in left and os.path.dirname(six) + "/origin.json" in left
    # pip itself reads what is left: its cache listing and an offline install of the kept wheel
    listed = tool([sys.executable, "-m", "pip", "cache", "list", "--cache-dir", str(cache)], env=env)
    assert listed.returncode == 0 and "six-1.16.0" in listed.stdout and "toml" not in listed.stdout
    inst = tool(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(tmp_path / "t"),
         "--cache-dir", str(cache), str(cache / six)],
        env=env,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stderr


# -- npm --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def npm_cache_master(tmp_path_factory):
    if not shutil.which("npm"):
        pytest.skip("npm not installed")
    base = tmp_path_factory.mktemp("npmmaster")
    res = tool(["npm", "cache", "add", "is-number@7.0.0", "isarray@2.0.5", "--cache", str(base / "npm")], cwd=base)
    if res.returncode:
        pytest.skip("npm registry unreachable: %s" % res.stderr[-300:])
    return base / "npm"


def _age_npm_entries(cache, name, days):
    """Make the index entries of one package (and its files) look `days` old, as cacache writes them."""
    index = cache / "_cacache" / "index-v5"
    old_ms = int((time.time() - days * DAY) * 1000)
    for dp, _dn, fn in os.walk(index):
        for f in fn:
            p = os.path.join(dp, f)
            with open(p, encoding="utf-8") as fh:
                lines = [ln for ln in fh.read().split("\n") if ln]
            if not any(name in json.loads(ln.split("\t", 1)[1])["key"] for ln in lines):
                continue
            out = []
            for ln in lines:
                entry = json.loads(ln.split("\t", 1)[1])
                entry["time"] = old_ms
                js = json.dumps(entry)
                out.append("%s\t%s" % (hashlib.sha1(js.encode()).hexdigest(), js))  # noqa: S324 - cacache
            with open(p, "w", encoding="utf-8") as fh:
                fh.write("\n" + "\n".join(out))
            age_file = old_ms / 1000.0
            os.utime(p, (age_file, age_file))
            for ln in out:
                integ = json.loads(ln.split("\t", 1)[1])["integrity"]
                algo, b64 = integ.split("-", 1)
                hexd = hashlib.new(algo).name and __import__("base64").b64decode(b64).hex()
                cp = index.parent / "content-v2" / algo / hexd[:2] / hexd[2:4] / hexd[4:]
                if cp.exists():
                    os.utime(cp, (age_file, age_file))


@pytest.mark.registry
def test_npm_cache_stays_consistent_and_verify_is_clean(capsys, tmp_path, npm_cache_master):
    cache = tmp_path / "cache" / "npm"
    shutil.copytree(npm_cache_master, cache, symlinks=True)
    shutil.rmtree(cache / "_logs", ignore_errors=True)
    before = tool(["npm", "cache", "ls", "--cache", str(cache)]).stdout
    assert "is-number" in before and "isarray" in before
    _age_npm_entries(cache, "is-number", 200)
    res = run_module(capsys, path=str(cache), max_age="90d")
    assert res["format"] == "npm" and res["units"] >= 1 and not res["errors"]
    assert all("is-number" in s["name"] for s in res["sample"]), res["sample"]
    after = tool(["npm", "cache", "ls", "--cache", str(cache)]).stdout
    assert "is-number" not in after and "isarray-2.0.5.tgz" in after
    # npm installs the kept package from the cache alone (before verify: npm's own verify rewrites
    # the index in a way its offline mode then misses, with or without a prune)
    offline = tool(
        [
            "npm",
            "install",
            "--offline",
            "--no-save",
            "--prefix",
            str(tmp_path / "p"),
            "--cache",
            str(cache),
            "isarray@2.0.5",
        ]
    )
    assert offline.returncode == 0, offline.stderr
    assert (tmp_path / "p" / "node_modules" / "isarray" / "package.json").exists()
    verify = tool(["npm", "cache", "verify", "--cache", str(cache)])
    assert verify.returncode == 0, verify.stderr
    # nothing dangling, nothing orphaned left for npm to collect
    assert "Missing content" not in verify.stdout and "Corrupted" not in verify.stdout
    assert "Content garbage-collected" not in verify.stdout, verify.stdout


# -- apt --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def apt_archives_master(tmp_path_factory):
    if not shutil.which("apt-get"):
        pytest.skip("apt-get not available")
    base = tmp_path_factory.mktemp("aptmaster")
    arch = base / "apt" / "archives"
    (arch / "partial").mkdir(parents=True)
    res = tool(["apt-get", "download", "libgdbm-compat4", "netbase"], cwd=arch)
    debs = [f for f in os.listdir(arch) if f.endswith(".deb")]
    if res.returncode or len(debs) != 2:
        pytest.skip("apt-get download failed: %s" % res.stderr[-300:])
    write(arch / "lock", b"")
    return base / "apt"


@pytest.mark.registry
def test_apt_archives_debs_go_lock_stays_apt_reuses_what_is_left(capsys, tmp_path, apt_archives_master):
    cache = tmp_path / "cache" / "apt"
    shutil.copytree(apt_archives_master, cache, symlinks=True)
    arch = cache / "archives"
    age(cache, 100)
    gdbm = next(f for f in os.listdir(arch) if f.startswith("libgdbm"))
    now = time.time()
    os.utime(arch / gdbm, (now, now))
    write(arch / "partial" / "netbase_6.4_all.deb", b"half", age_days=3)
    write(arch / "partial" / "fresh.deb", b"half")
    res = run_module(capsys, path=str(cache), max_age="30d", format="auto")
    assert res["format"] == "apt"
    # the old .deb by age; the interrupted download older than min_age as stale; the fresh one stays
    assert sorted((s["key"], s["reason"]) for s in res["sample"]) == [
        ("netbase_6.4_all.deb", "max_age"),
        ("partial/netbase_6.4_all.deb", "stale"),
    ]
    assert sorted(os.listdir(arch)) == sorted([gdbm, "lock", "partial"])
    assert os.listdir(arch / "partial") == ["fresh.deb"]
    # a size cap cannot take what was used within min_age
    res = run_module(capsys, path=str(cache), max_size="1", min_age="1d")
    assert res["units"] == 0 and (arch / gdbm).exists()
    opts = ["-o", "Dir::Cache::archives=%s" % arch, "-o", "APT::Sandbox::User=root"]
    out = tool(["apt-get", *opts, "--download-only", "--reinstall", "-y", "install", "libgdbm-compat4"])
    assert out.returncode == 0 and "Need to get 0 B" in out.stdout, out.stdout + out.stderr


LOCKF = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX) if sys.argv[2] == "fcntl" else fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def hold_lock(path, kind):
    p = subprocess.Popen([sys.executable, "-c", LOCKF, str(path), kind], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_apt_running_means_skip(capsys, tmp_path):
    cache = tmp_path / "apt"
    write(cache / "archives" / "lock", b"")
    write(cache / "archives" / "old_1_all.deb", b"d", age_days=100)
    p = hold_lock(cache / "archives" / "lock", "fcntl")
    try:
        res = run_module(capsys, path=str(cache), max_age="30d", lock_timeout=0)
        chk = run_module(capsys, check=True, path=str(cache), max_age="30d", lock_timeout=0)
    finally:
        p.kill()
        p.wait()
    assert res["skipped"] and "locked by its tool" in res["msg"] and chk["skipped"]
    assert (cache / "archives" / "old_1_all.deb").exists()
    res = run_module(capsys, path=str(cache), max_age="30d")
    assert res["units"] == 1 and (cache / "archives" / "lock").exists()


# -- HuggingFace hub ----------------------------------------------------------------------------------


@pytest.fixture
def hf(tmp_path):
    hub = tmp_path / "cache" / "huggingface" / "hub"
    r_old, r_new, r_b = "1" * 40, "2" * 40, "3" * 40
    shared = b'{"model_type": "gpt2"}'
    a = make_hf_repo(
        hub,
        "models--org--a",
        {r_old: {"config.json": shared, "w/model.safetensors": b"O" * 20000}, r_new: {"config.json": shared}},
        {"main": r_new},
    )
    b = make_hf_repo(hub, "datasets--org--b", {r_b: {"data/train.parquet": b"D" * 30000}}, {"main": r_b})
    age(hub, 200)
    # the new revision of a: used today (its snapshot; reading its config read the blob the old
    # revision shares, which must not make the old revision look used)
    now = time.time()
    os.utime(a / "snapshots" / r_new / "config.json", (now, now), follow_symlinks=False)
    os.utime(a / "blobs" / hashlib.sha256(shared).hexdigest(), (now, now - 200 * DAY))
    write(a / "blobs" / ("e" * 64), b"orphan", age_days=200)
    write(a / "blobs" / ("f" * 64 + ".incomplete"), b"stale", age_days=3)
    write(a / "blobs" / ("9" * 64 + ".incomplete"), b"downloading")
    write(hub / ".locks" / "models--org--a" / ("9" * 64 + ".lock"), b"")
    return hub, a, b, (r_old, r_new, r_b)


def hf_scan(hub):
    hfh = pytest.importorskip("huggingface_hub")
    info = hfh.scan_cache_dir(str(hub))
    return info, {r.repo_id: sorted(rev.commit_hash for rev in r.revisions) for r in info.repos}


def test_huggingface_revisions_go_whole_and_scan_cache_dir_stays_clean(capsys, hf):
    hub, a, b, (r_old, r_new, r_b) = hf
    info, repos = hf_scan(hub)
    assert not info.warnings and repos == {"org/a": [r_old, r_new], "org/b": [r_b]}
    chk = run_module(capsys, check=True, path=str(hub.parent), max_age="90d")
    res = run_module(capsys, path=str(hub.parent), max_age="90d")
    assert res["format"] == "huggingface"
    for k in ("units", "bytes", "files"):
        assert res[k] == chk[k], (k, chk["sample"], res["sample"])
    kinds = sorted(s["kind"] for s in res["sample"])
    assert kinds == ["incomplete download", "orphan blob", "revision", "revision"]
    info, repos = hf_scan(hub)
    assert not info.warnings, info.warnings
    assert repos == {"org/a": [r_new]}
    # the shared config blob stays (the kept revision uses it); the old revision's weights went
    assert os.path.exists(a / "snapshots" / r_new / "config.json")  # link resolves
    assert sorted(os.listdir(a / "blobs")) == sorted(
        [hashlib.sha256(b'{"model_type": "gpt2"}').hexdigest(), "9" * 64 + ".incomplete"]
    )
    assert not b.exists()  # the empty repo went as a whole
    for dp, _dn, fn in os.walk(hub):
        for f in fn:
            assert os.path.exists(os.path.join(dp, f)), "dangling symlink %s" % f
    assert run_module(capsys, path=str(hub.parent), max_age="90d")["changed"] is False


def test_huggingface_lru_size_cap_frees_unshared_blobs_only(capsys, hf):
    hub, a, b, (r_old, r_new, r_b) = hf
    before = run_module(capsys, check=True, path=str(hub.parent), max_size="1P")["before"]["bytes"]
    # free about 60 KB: the stale download, then least recently used first - b (40 KiB with its link
    # and ref), a's orphan blob, a's old revision (20 KiB of weights); a's revision used today stays
    res = run_module(capsys, path=str(hub.parent), max_size=str(before - 60000), min_age="0s")
    assert res["changed"]
    info, repos = hf_scan(hub)
    assert not info.warnings
    # least recently used first: b's and a's old revision; a's revision used today stays
    assert repos == {"org/a": [r_new]}
    assert {s["reason"] for s in res["sample"]} == {"max_size", "stale"}
    assert res["after"]["bytes"] <= before - 60000


def test_huggingface_download_in_progress_holds_the_repo(capsys, hf):
    hub, a, b, (r_old, r_new, r_b) = hf
    p = hold_lock(hub / ".locks" / "models--org--a" / ("9" * 64 + ".lock"), "flock")
    try:
        res = run_module(capsys, path=str(hub.parent), max_age="90d")
    finally:
        p.kill()
        p.wait()
    assert any("models--org--a" in x and "lock" in x for x in res["busy"])
    info, repos = hf_scan(hub)
    assert repos == {"org/a": [r_old, r_new]} and not info.warnings


# -- go ----------------------------------------------------------------------------------------------
PRUNE_AS = """
import os, sys, json
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[2]))
r = _prune.Pruner(sys.argv[1], policy=_prune.Policy(max_age=90 * 86400)).run()
print(json.dumps(r))
"""


@pytest.fixture
def open_tmp():
    """A temporary directory the unprivileged user can reach (pytest's tmp_path is 0700)."""
    import tempfile
    from pathlib import Path

    d = tempfile.mkdtemp(prefix="prune-go-")
    os.chmod(d, 0o755)  # noqa: S103 - the unprivileged user must reach the tree
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_go_read_only_module_dirs_go_with_their_download_files_as_the_owner(open_tmp):
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the tree to an unprivileged user")
    cache = open_tmp / "go"
    mod = cache / "pkg" / "mod"
    for name, ver in (("golang.org/x/mod", "v0.14.0"), ("golang.org/x/text", "v0.3.0")):
        d = mod / (name + "@" + ver)
        write(d / "go.mod", b"module " + name.encode())
        write(d / "sub" / "a.go", b"package a")
        dl = mod / "cache" / "download" / name / "@v"
        for ext in (".info", ".mod", ".zip", ".ziphash", ".lock"):
            write(dl / (ver + ext), b"z")
        write(dl / "list", ver + "\n")
    age(cache, 200)
    now = time.time()
    for p in (mod / "golang.org/x/text@v0.3.0" / "go.mod",):
        os.utime(p, (now, now))
    uid = 65534
    for dp, dn, fn in os.walk(cache):
        for n in dn + fn:
            os.lchown(os.path.join(dp, n), uid, uid)
    os.chown(cache, uid, uid)
    # go makes module directories and files read-only
    for dp, _dn, fn in os.walk(mod / "golang.org/x/mod@v0.14.0", topdown=False):
        for f in fn:
            os.chmod(os.path.join(dp, f), 0o444)
        os.chmod(dp, 0o555)  # noqa: S103 - read-only, as go leaves module directories
    for p in (mod, mod / "golang.org", mod / "golang.org" / "x"):
        os.chmod(p, 0o755)  # noqa: S103 - as go leaves them
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", PRUNE_AS, str(cache), str(uid)], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["format"] == "go" and res["units"] == 1 and not res["errors"], res
    left = tree(cache)
    assert not any("mod@v0.14.0" in p or "x/mod/@v/v0.14.0" in p for p in left)
    assert "pkg/mod/cache/download/golang.org/x/mod/@v/list" in left
    assert "pkg/mod/golang.org/x/text@v0.3.0/sub/a.go" in left
    assert "pkg/mod/cache/download/golang.org/x/text/@v/v0.3.0.zip" in left


# -- cargo -------------------------------------------------------------------------------------------
def make_cargo(cache):
    idx = "index.crates.io-6f17d22bba15001f"
    for crate, days in (("itoa-1.0.9", 200), ("serde-1.0.188", 1)):
        write(cache / "registry" / "cache" / idx / (crate + ".crate"), b"C" * 100, age_days=days)
        write(cache / "registry" / "src" / idx / crate / "src" / "lib.rs", b"fn", age_days=days)
        write(cache / "registry" / "src" / idx / crate / ".cargo-ok", b'{"v":1}', age_days=days)
        age(cache / "registry" / "src" / idx / crate, days)
    write(cache / "registry" / "index" / idx / ".cache" / "it" / "oa" / "itoa", b"i", age_days=300)
    write(cache / ".package-cache", b"")
    write(cache / "bin" / "cargo-tool", b"ELF", age_days=300)
    return idx


def test_cargo_crate_and_src_go_together_index_and_bin_stay(capsys, tmp_path):
    cache = tmp_path / "cargo"
    idx = make_cargo(cache)
    res = run_module(capsys, path=str(cache), max_age="90d")
    assert res["format"] == "cargo" and res["units"] == 1 and res["sample"][0]["key"] == idx + "/itoa-1.0.9"
    left = tree(cache)
    assert not any("itoa-1.0.9" in p for p in left)
    assert "registry/src/%s/serde-1.0.188/.cargo-ok" % idx in left
    assert "bin/cargo-tool" in left and ".package-cache" in left
    assert "registry/index/%s/.cache/it/oa/itoa" % idx in left


def test_cargo_busy_means_skip(capsys, tmp_path):
    cache = tmp_path / "cargo"
    make_cargo(cache)
    p = hold_lock(cache / ".package-cache", "flock")
    try:
        res = run_module(capsys, path=str(cache), max_age="90d", lock_timeout=0)
    finally:
        p.kill()
        p.wait()
    assert res["skipped"] and ".package-cache" in res["msg"]
    assert any("itoa" in x for x in tree(cache))


# -- conda -------------------------------------------------------------------------------------------
def test_conda_packages_go_whole_linked_ones_stay_urls_txt_follows(capsys, tmp_path):
    cache = tmp_path / "conda"
    pkgs = cache / "pkgs"
    old, linked, new = "zlib-1.2.13-h5eee18b_0", "xz-5.4.2-h5eee18b_0", "tk-8.6.12-h1ccaba5_0"
    for pkg in (old, linked, new):
        write(pkgs / (pkg + ".conda"), b"T" * 100)
        write(pkgs / pkg / "lib" / "lib.so", b"L")
        write(pkgs / pkg / "info" / "repodata_record.json", b"{}")
    write(
        pkgs / "urls.txt",
        "".join("https://conda.anaconda.org/main/linux-64/%s.conda\n" % p for p in (old, linked, new)),
    )
    os.chmod(pkgs / "urls.txt", 0o664)
    age(pkgs, 200)
    now = time.time()
    os.utime(pkgs / new / "info" / "repodata_record.json", (now, now))
    write(cache / "envs" / "e1" / "x", b"")
    os.link(pkgs / linked / "lib" / "lib.so", cache / "envs" / "e1" / "lib.so")  # conda hard-links into envs
    res = run_module(capsys, path=str(cache), max_age="60d")
    assert res["format"] == "conda" and res["units"] == 1 and res["kept"]["protected"] == 1
    left = tree(cache)
    assert not any(old in p for p in left)
    assert "pkgs/%s/lib/lib.so" % linked in left and "pkgs/%s.conda" % new in left
    urls = (pkgs / "urls.txt").read_text()
    assert old not in urls and linked in urls and new in urls
    assert oct(os.stat(pkgs / "urls.txt").st_mode & 0o777) == "0o664"
    assert "envs/e1/lib.so" in left


def test_pruner_api_reports_busy_units_without_touching_them(tmp_path):
    """A unit file someone holds an flock on is left with the rest of its unit."""
    cache = tmp_path / "torch"
    write(cache / "hub" / "checkpoints" / "a.pth", b"A", age_days=200)
    write(cache / "hub" / "checkpoints" / "b.pth", b"B", age_days=200)
    p = hold_lock(cache / "hub" / "checkpoints" / "a.pth", "flock")
    try:
        res = _prune.Pruner(str(cache), policy=_prune.Policy(max_age=90 * DAY)).run()
    finally:
        p.kill()
        p.wait()
    assert res["format"] == "torch" and res["units"] == 1
    assert os.path.exists(cache / "hub" / "checkpoints" / "a.pth")
    assert not os.path.exists(cache / "hub" / "checkpoints" / "b.pth")


def test_a_unit_with_one_locked_file_waits_whole(tmp_path):
    """A conda package one of whose files a process locks is kept entirely (not half-deleted)."""
    cache = tmp_path / "conda"
    pkg = cache / "pkgs" / "zlib-1.2.13-h5eee18b_0"
    write(pkg / "lib" / "libz.so", b"L", age_days=200)
    write(pkg / "info" / "repodata_record.json", b"{}", age_days=200)
    write(cache / "pkgs" / "zlib-1.2.13-h5eee18b_0.conda", b"T", age_days=200)
    write(cache / "pkgs" / "urls.txt", b"")
    age(pkg, 200)
    p = hold_lock(pkg / "lib" / "libz.so", "flock")
    try:
        res = _prune.Pruner(str(cache), policy=_prune.Policy(max_age=90 * DAY)).run()
    finally:
        p.kill()
        p.wait()
    assert res["units"] == 0 and any("libz.so" in b for b in res["busy"])
    assert (cache / "pkgs" / "zlib-1.2.13-h5eee18b_0.conda").exists()
    assert (pkg / "info" / "repodata_record.json").exists()
    res = _prune.Pruner(str(cache), policy=_prune.Policy(max_age=90 * DAY)).run()
    assert res["units"] == 1 and not pkg.exists()


def _conda_cache(cache, n_old=40):
    """A conda pkgs cache: ``n_old`` old packages (a directory and its tarball each), 3 new ones."""
    for i in range(n_old + 3):
        name = "pkg%02d-1.0-h%07d_0" % (i, i)
        days = 200 if i < n_old else 0
        write(cache / "pkgs" / name / "lib" / ("lib%d.so" % i), b"L" * (100 * i + 1), age_days=days)
        write(cache / "pkgs" / name / "info" / "repodata_record.json", b"{}", age_days=days)
        write(cache / "pkgs" / (name + ".conda"), b"T" * 5000, age_days=days)
        age(cache / "pkgs" / name, days)
    write(cache / "pkgs" / "urls.txt", b"")


@pytest.mark.parametrize("pending", [_prune.PURGE_PENDING, 2])
def test_units_deleted_on_purge_threads_leave_and_report_what_one_thread_does(tmp_path, monkeypatch, pending):
    """The Purger deletes moved units on IO_THREADS threads while the run moves the next ones:
    the same units go, the same are kept (a locked file holds its package), and the result
    counts the same files, bytes and sample, in the same order, as deleting one after the other.
    ``pending`` 2: the run waits for the oldest deletions as it goes, not only at the end."""
    monkeypatch.setattr(_prune, "PURGE_PENDING", pending)
    _conda_cache(tmp_path / "master" / "conda")
    results, trees = [], []
    for threads in (1, 4):
        cache = tmp_path / ("t%d" % threads) / "conda"
        cache.parent.mkdir()
        subprocess.run(["cp", "-a", str(tmp_path / "master" / "conda"), str(cache.parent)], check=True)  # same times
        p = hold_lock(cache / "pkgs" / "pkg07-1.0-h0000007_0" / "lib" / "lib7.so", "flock")
        try:
            # by mtime, which cp -a keeps (copying a tree reads it: its atimes move)
            pol = _prune.Policy(max_age=90 * DAY, age_by="mtime")
            res = _prune.Pruner(str(cache), policy=pol, sample_size=50, purge_threads=threads).run()
        finally:
            p.kill()
            p.wait()
        res.pop("duration")
        res.pop("path")
        results.append(res)
        trees.append(tree(cache))
    one, four = results
    assert one["units"] == 39 and one["files"] == 39 * 3 and not one["errors"]
    assert any("lib7.so" in b for b in one["busy"])
    assert four == one
    assert trees[1] == trees[0] and "pkgs/pkg07-1.0-h0000007_0/lib/lib7.so" in trees[0]
    assert not [n for n in os.listdir(tmp_path / "t4" / "conda") if _prune.is_trash(n)]


KILL_HF = """
import sys
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
print("start", flush=True)
_prune.Pruner(sys.argv[1], fmt="huggingface", policy=_prune.Policy(max_age=90 * 86400)).run()
"""


def test_huggingface_prune_killed_mid_run_leaves_a_valid_cache_and_converges(tmp_path):
    hub = tmp_path / "hf" / "hub"
    revs = ["%040x" % i for i in range(1, 41)]
    for n, rev in enumerate(revs):
        files = {"config.json": b"{}", "tokenizer.json": b"T%d" % n}
        files.update({"shard-%02d.bin" % j: b"W%d-%d" % (n, j) for j in range(25)})
        make_hf_repo(hub, "models--org--big", {rev: files}, {"pr/%d" % n: rev})
    make_hf_repo(hub, "models--org--big", {"f" * 40: {"config.json": b"{}"}}, {"main": "f" * 40})
    age(hub, 200)
    now = time.time()
    os.utime(hub / "models--org--big" / "snapshots" / ("f" * 40) / "config.json", (now, now), follow_symlinks=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", KILL_HF, str(hub.parent)], stdout=subprocess.PIPE, env=env)
    p.stdout.readline()
    snaps = hub / "models--org--big" / "snapshots"
    deadline = time.monotonic() + 30
    while len(os.listdir(snaps)) > 35 and time.monotonic() < deadline:
        time.sleep(0.001)
    p.kill()
    p.wait()
    left = len(os.listdir(snaps))
    assert 1 < left < 41, "not killed mid-run (%d snapshots left)" % left
    # what a kill leaves is a cache huggingface_hub reads without complaint
    info, repos = hf_scan(hub)
    assert not info.warnings, info.warnings
    res = _prune.Pruner(str(hub.parent), fmt="huggingface", policy=_prune.Policy(max_age=90 * DAY)).run()
    assert not res["errors"]
    info, repos = hf_scan(hub)
    assert not info.warnings and repos == {"org/big": ["f" * 40]}
    assert os.listdir(hub / "models--org--big" / "blobs") == [hashlib.sha256(b"{}").hexdigest()]
    assert os.listdir(hub / "models--org--big" / "refs") == ["main"]


def test_units_leave_through_the_trash_and_leftovers_of_a_killed_run_go_next_time(tmp_path):
    cache = tmp_path / "pip"
    write(cache / "http-v2" / "a" / "b" / "c" / "d" / "e" / "h1", b"h", age_days=200)
    write(cache / "http-v2" / "a" / "b" / "c" / "d" / "e" / "h1.body", b"b" * 5000, age_days=200)
    # what a prune killed between its renames and its deletes leaves behind
    write(cache / ".mlinfra-prune-trash-0a1b2c" / "7" / "half" / "file", b"x" * 3000)
    os.chmod(cache / ".mlinfra-prune-trash-0a1b2c", 0o700)  # as Trash makes it: root's, private
    # a member's look-alike (not private) is not a trash: never purged as one
    write(cache / ".mlinfra-prune-trash-member" / "keep", b"k")
    chk = _prune.Pruner(str(cache), policy=_prune.Policy(max_age=90 * DAY), check_mode=True).run()
    assert chk["units"] == 1 and chk["before"]["units"] == 1  # the trash is nobody's unit
    res = _prune.Pruner(str(cache), policy=_prune.Policy(max_age=90 * DAY)).run()
    assert res["units"] == 1 and res["files"] == 2
    assert any("interrupted prune" in n for n in res.get("notes", []))
    assert sorted(os.listdir(cache)) == [".mlinfra-prune-trash-member", "http-v2"]
