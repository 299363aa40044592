# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_formats on real temporary trees laid out like each tool lays out its cache."""

from __future__ import annotations

import os

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import Walker, open_dir_nofollow
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import (
    CARGO_GLOBAL_CACHE_SCHEMA,
    make_hf_repo,
    write,
)


def collect(root, fmt):
    fd = open_dir_nofollow(str(root))
    try:
        return _formats.collect(fd, fmt)
    finally:
        os.close(fd)


def detect(root):
    fd = open_dir_nofollow(str(root))
    try:
        return _formats.detect_format(fd)
    finally:
        os.close(fd)


def by_key(collection):
    return {u.key: u for u in collection.units}


def test_formats_are_known_and_unknown_is_refused():
    for name in _formats.FORMATS:
        assert _formats.get_format(name).name == name
    assert _formats.get_format("external").prunable is False
    assert _formats.get_format("generic").per_file is True
    with pytest.raises(ValueError, match="unknown cache format"):
        _formats.get_format("maven")


def test_huggingface_revisions_share_blobs(tmp_path):
    hub = tmp_path / "hf" / "hub"
    r1, r2 = "a" * 40, "b" * 40
    make_hf_repo(
        hub,
        "models--org--tiny",
        {r1: {"config.json": b"{}", "sub/model.bin": b"W" * 1000}, r2: {"config.json": b"{}", "x.bin": b"V" * 500}},
        {"main": r2},
    )
    write(hub / "models--org--tiny" / "blobs" / ("c" * 64 + ".incomplete"), b"partial")
    write(hub / "models--org--tiny" / "blobs" / ("d" * 64), b"orphan")
    write(hub / ".locks" / "models--org--tiny" / ("c" * 64 + ".lock"), b"")
    assert detect(tmp_path / "hf") == "huggingface"
    col = collect(tmp_path / "hf", "huggingface")
    units = by_key(col)
    u1, u2 = units["models--org--tiny@" + r1], units["models--org--tiny@" + r2]
    assert u1.kind == u2.kind == "revision"
    # the shared config blob is counted in both revisions (like scan_cache_dir), stored once
    assert len(set(u1.shared) & set(u2.shared)) == 1
    assert u1.size >= 1002 and u2.size >= 502
    assert u2.name.endswith("(main)") and "org/tiny" in u2.name
    # refs go before the snapshot: never a ref to a missing revision
    assert u2.paths[0][-2:] == ("refs", "main") and u2.paths[-1][-2:] == ("snapshots", r2)
    assert units["models--org--tiny/blobs/" + "d" * 64].kind == "orphan blob"
    inc = units["models--org--tiny/blobs/" + "c" * 64 + ".incomplete"]
    assert inc.kind == "incomplete download" and inc.locks == [("hub", ".locks", "models--org--tiny")]
    assert col.total_size == sum(
        os.lstat(os.path.join(dp, f)).st_size for dp, _dn, fn in os.walk(tmp_path / "hf") for f in fn
    )


def test_pip_http_and_wheels(tmp_path):
    root = tmp_path / "pip"
    write(root / "http-v2" / "a" / "b" / "c" / "d" / "e" / ("f" * 56), b"hdr")
    write(root / "http-v2" / "a" / "b" / "c" / "d" / "e" / ("f" * 56 + ".body"), b"B" * 100)
    wdir = root / "wheels" / "c4" / "5e" / "5d" / "6606"
    write(wdir / "toml-0.10.2-py2.py3-none-any.whl", b"Z" * 50)
    write(wdir / "origin.json", b"{}")
    write(root / "selfcheck" / "abc", b"{}")
    write(root / "wheelhouse" / "six-1.16.0-py2.py3-none-any.whl", b"W" * 30)
    assert detect(root) == "pip"
    units = by_key(collect(root, "pip"))
    http = units["http-v2/" + "f" * 56]
    assert http.kind == "http" and http.files == 2 and http.size == 103
    wheel = units["wheels/c4/5e/5d/6606"]
    assert wheel.kind == "wheel" and wheel.name == "toml-0.10.2-py2.py3-none-any.whl"
    assert wheel.paths == [("wheels", "c4", "5e", "5d", "6606")]
    assert not any(k.startswith("selfcheck") for k in units)
    pre = units["wheelhouse/six-1.16.0-py2.py3-none-any.whl"]
    assert pre.kind == "prefetched wheel" and pre.paths == [("wheelhouse", "six-1.16.0-py2.py3-none-any.whl")]


def test_conda_package_dir_and_tarball_are_one_unit(tmp_path):
    root = tmp_path / "conda"
    pkg = "zlib-1.2.13-h5eee18b_0"
    write(root / "pkgs" / (pkg + ".conda"), b"T" * 100, mtime=1_700_000_000)
    write(root / "pkgs" / pkg / "lib" / "libz.so", b"L" * 10, mtime=1_500_000_000)
    write(root / "pkgs" / pkg / "info" / "repodata_record.json", b"{}", mtime=1_700_000_100)
    linked = "xz-5.4.2-h5eee18b_0"
    write(root / "pkgs" / linked / "lib" / "liblzma.so", b"X")
    os.link(root / "pkgs" / linked / "lib" / "liblzma.so", tmp_path / "env-link")
    write(root / "pkgs" / "urls.txt", "https://repo/x/%s.conda\n" % pkg)
    write(root / "envs" / "e1" / "bin" / "python", b"P")
    assert detect(root) == "conda"
    units = by_key(collect(root, "conda"))
    u = units[pkg]
    assert u.kind == "conda package" and u.files == 3
    assert set(u.paths) == {("pkgs", pkg + ".conda"), ("pkgs", pkg)}
    # the package's own time, not its files' (tarball-era) mtimes
    assert u.mtime >= 1_700_000_000
    assert units[linked].keep == "hard-linked into an environment"
    assert not any(k.startswith("envs") or k == "urls.txt" for k in units)


def test_apt_debs_and_partial_never_lock(tmp_path):
    root = tmp_path / "apt"
    write(root / "archives" / "lock", b"")
    write(root / "archives" / "foo_1.0_amd64.deb", b"D" * 10)
    write(root / "archives" / "partial" / "bar_2.0_amd64.deb", b"p")
    write(root / "pkgcache.bin", b"c")
    assert detect(root) == "apt"
    units = by_key(collect(root, "apt"))
    assert set(units) == {"foo_1.0_amd64.deb", "partial/bar_2.0_amd64.deb"}
    assert units["partial/bar_2.0_amd64.deb"].kind == "partial download"
    assert _formats.get_format("apt").tool_locks == ((("archives", "lock"), "fcntl"),)


def test_go_module_dir_and_download_files(tmp_path):
    root = tmp_path / "go"
    mod = root / "pkg" / "mod"
    write(mod / "golang.org" / "x" / "mod@v0.14.0" / "go.mod", b"module golang.org/x/mod")
    dl = mod / "cache" / "download" / "golang.org" / "x" / "mod" / "@v"
    for ext in (".info", ".mod", ".zip", ".ziphash", ".lock"):
        write(dl / ("v0.14.0" + ext), b"z")
    write(dl / "list", b"v0.14.0\n")
    write(mod / "cache" / "download" / "github.com" / "!azure" / "go" / "@v" / "v1.0.0.mod", b"m")
    assert detect(root) == "go"
    units = by_key(collect(root, "go"))
    u = units["golang.org/x/mod@v0.14.0"]
    assert u.kind == "module" and u.files == 6
    # the extracted dir first, the download lock last
    assert u.paths[0] == ("pkg", "mod", "golang.org", "x", "mod@v0.14.0")
    assert u.paths[-1][-1] == "v0.14.0.lock" and u.locks == [u.paths[-1]]
    assert "github.com/!azure/go@v1.0.0" in units


def test_cargo_crate_src_and_marker(tmp_path):
    root = tmp_path / "cargo"
    idx = "index.crates.io-6f17d22bba15001f"
    write(root / "registry" / "cache" / idx / "itoa-1.0.9.crate", b"C" * 30)
    write(root / "registry" / "src" / idx / "itoa-1.0.9" / "src" / "lib.rs", b"fn")
    write(root / "registry" / "src" / idx / "itoa-1.0.9" / ".cargo-ok", b'{"v":1}')
    write(root / "registry" / "index" / idx / "config.json", b"{}")
    write(root / ".package-cache", b"")
    write(root / "bin" / "cargo-foo", b"ELF")
    assert detect(root) == "cargo"
    units = by_key(collect(root, "cargo"))
    assert set(units) == {idx + "/itoa-1.0.9"}
    u = units[idx + "/itoa-1.0.9"]
    assert u.paths[0][-1] == ".cargo-ok"
    assert u.paths[1] == ("registry", "src", idx, "itoa-1.0.9")
    assert u.paths[2][-1] == "itoa-1.0.9.crate"


def test_torch_checkpoints_and_hub_repos(tmp_path):
    root = tmp_path / "torch"
    write(root / "hub" / "checkpoints" / "resnet18-f37072fd.pth", b"R" * 40)
    write(root / "hub" / "checkpoints" / "vit.pth.1a2b.partial", b"r")
    write(root / "hub" / "pytorch_vision_main" / "hubconf.py", b"h")
    write(root / "hub" / "trusted_list", b"pytorch_vision\n")
    assert detect(root) == "torch"
    units = by_key(collect(root, "torch"))
    assert units["hub/checkpoints/resnet18-f37072fd.pth"].kind == "checkpoint"
    assert units["hub/checkpoints/vit.pth.1a2b.partial"].kind == "partial download"
    assert units["hub/pytorch_vision_main"].kind == "hub repo"
    assert "hub/trusted_list" not in units


def test_npm_bucket_parsing_follows_cacache_rules():
    import hashlib
    import json

    def line(entry):
        js = json.dumps(entry)
        return "%s\t%s" % (hashlib.sha1(js.encode()).hexdigest(), js)  # noqa: S324 - cacache format

    data = "\n".join(
        [
            line({"key": "k1", "integrity": "sha512-AAAA", "time": 1}),
            line({"key": "k2", "integrity": "sha512-BBBB", "time": 2}),
            line({"key": "k1", "integrity": None, "time": 3}),
            '0000\t{"key": "corrupt", "integrity": "x"}',
        ]
    ).encode()
    live = _formats.parse_npm_bucket(data)
    assert set(live) == {"k2"}
    assert _formats.integrity_ids("sha512-AAAA sha1-AAAA") == [("sha512", "000000"), ("sha1", "000000")]


def test_generic_groups_by_top_entry_and_counts_hard_links_once(tmp_path):
    root = tmp_path / "g"
    write(root / "a" / "b" / "f1", b"1" * 10)
    os.link(root / "a" / "b" / "f1", root / "a" / "f1-link")
    write(root / "top.bin", b"2" * 5)
    assert detect(root) == "generic"
    col = collect(root, "generic")
    units = by_key(col)
    assert units["a"].size == 10 and units["a"].files == 2
    assert units["top.bin"].size == 5
    assert col.total_size == 15


def test_collector_fits_in_a_callers_own_walk(tmp_path):
    """cache_report drives the collector from its own Walker loop: same result as collect()."""
    root = tmp_path / "pip"
    write(root / "http-v2" / "a" / "b" / "c" / "d" / "e" / "h1", b"x" * 7)
    fd = open_dir_nofollow(str(root))
    try:
        col = _formats.get_format("pip").collector(fd)
        n_dirs = 0
        for d in Walker(fd).walk():
            n_dirs += 1
            col.visit(d)
        res = col.finish()
    finally:
        os.close(fd)
    assert n_dirs == 7
    assert [(u.key, u.size) for u in res.units] == [("http-v2/h1", 7)]


def test_cargo_last_use_database_is_preferred_to_file_times(tmp_path):
    """cargo >= 1.78 records last use in $CARGO_HOME/.global-cache (its own schema, below)."""
    import sqlite3
    import time

    root = tmp_path / "cargo"
    idx = "index.crates.io-6f17d22bba15001f"
    old = time.time() - 200 * 86400
    write(root / "registry" / "cache" / idx / "itoa-1.0.9.crate", b"C", mtime=old)
    write(root / "registry" / "src" / idx / "itoa-1.0.9" / "src" / "lib.rs", b"fn", mtime=old)
    write(root / "registry" / "cache" / idx / "ryu-1.0.15.crate", b"C", mtime=old)
    for d in (root / "registry" / "src" / idx / "itoa-1.0.9" / "src", root / "registry" / "src" / idx / "itoa-1.0.9"):
        os.utime(d, (old, old))
    used = int(time.time()) - 86400
    conn = sqlite3.connect(str(root / ".global-cache"))
    conn.executescript(CARGO_GLOBAL_CACHE_SCHEMA)
    conn.execute("INSERT INTO registry_index (name, timestamp) VALUES (?, ?)", (idx, used))
    conn.execute("INSERT INTO registry_crate VALUES (1, 'itoa-1.0.9.crate', 1, ?)", (int(old),))
    conn.execute("INSERT INTO registry_src VALUES (1, 'itoa-1.0.9', 2, ?)", (used,))
    conn.commit()
    conn.close()
    units = by_key(collect(root, "cargo"))
    assert units[idx + "/itoa-1.0.9"].recorded == used
    # cache_report closes the cache before it finishes the collector: the database was opened before
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _usage

    rep = {u["key"]: u for u in _usage.measure_cache("cargo", str(root), fmt="cargo", top=10)["units"]}
    assert rep[idx + "/itoa-1.0.9"]["last_used"] == used
    assert units[idx + "/itoa-1.0.9"].last_used("newest") == used
    assert units[idx + "/ryu-1.0.15"].recorded is None
    assert units[idx + "/ryu-1.0.15"].last_used("newest") < used - 100 * 86400


def test_reading_npm_index_buckets_does_not_make_them_look_used(tmp_path):
    """The collector reads every bucket; with O_NOATIME the next run still sees the old atime."""
    import hashlib
    import json

    js = json.dumps({"key": "k", "integrity": "sha512-AAAA", "time": 1})
    bucket = write(
        tmp_path / "npm" / "_cacache" / "index-v5" / "aa" / "bb" / "cc",
        "\n%s\t%s" % (hashlib.sha1(js.encode()).hexdigest(), js),  # noqa: S324 - cacache format
        mtime=1_600_000_000,
    )
    for _run in range(2):
        units = by_key(collect(tmp_path / "npm", "npm"))
        assert units["index-v5/aa/bb/cc"].atime == 1_600_000_000
    assert os.stat(bucket).st_atime == 1_600_000_000


def test_uv_layout_every_root_kind_and_version(tmp_path):
    """uv's roots (pypi, index, url, git), any bucket version, temporaries, dangling revisions,
    orphan archives and linked files, on a synthetic tree laid out as uv 0.13 writes it (the real
    uv fills the cache in tests/unit/plugins/modules/test_cache_prune_uv.py)."""
    c = tmp_path / "uv"
    for name in ("CACHEDIR.TAG", ".gitignore", ".lock", "sdists-v11/.git"):
        write(c / name, b"")
    write(c / "archive-v0" / "AAA" / "six.py", b"s" * 5000)
    write(c / "archive-v0" / "BBB" / "pkg" / "__init__.py", b"b" * 100)
    write(c / "archive-v0" / "ORPHAN" / "x.py", b"o")
    whl = c / "wheels-v8" / "index" / "d1g" / "six"
    write(whl / "1.17.0-py3-none-any.http", b"h")
    write(whl / "1.17.0-py3-none-any.lock", b"")
    os.symlink("../../../../archive-v0/AAA", str(whl / "1.17.0-py3-none-any"))
    write(c / "wheels-v5" / "pypi" / "six" / ".tmpAbC" / "f", b"t")  # an older bucket version, being persisted
    rev = c / "sdists-v11" / "url" / "d2g"
    write(rev / "revision.http", b"\x92\xa4metaCURRENT00000000")
    write(rev / "CURRENT00000000" / "metadata.msgpack", b"m")
    os.symlink("../../../../archive-v0/BBB", str(rev / "CURRENT00000000" / "pkg-1.0-py3-none-any"))
    write(rev / "OLDREVISION0000" / "src" / "setup.py", b"old")
    write(c / "git-v0" / "checkouts" / "abc" / "1234567" / "f.py", b"g")
    write(c / "git-v0" / "db" / "abc" / "HEAD", b"ref")
    write(c / "git-v0" / "locks" / "abc.lock", b"")
    write(c / "environments-v2" / "tool-x" / "pyvenv.cfg", b"e")
    write(c / "builds-v0" / ".tmpBuild" / "bin" / "python", b"p")
    write(c / "interpreter-v5" / "h1" / "h2.msgpack", b"i")
    write(c / "simple-v28" / "index" / "d1g" / "six.rkyv", b"r")
    env = tmp_path / "env"
    env.mkdir()
    os.link(str(c / "archive-v0" / "AAA" / "six.py"), str(env / "six.py"))  # as uv's hardlink mode does
    assert detect(c) == "uv"
    col = collect(c, "uv")
    units = by_key(col)
    kinds = {k: u.kind for k, u in units.items()}
    assert kinds == {
        "wheels-v8/index/d1g/six/1.17.0-py3-none-any": "wheel",
        "wheels-v5/pypi/six/.tmpAbC": "temporary file",
        "sdists-v11/url/d2g": "sdist build",
        "sdists-v11/url/d2g/OLDREVISION0000": "dangling source revision",
        "archive-v0/ORPHAN": "orphan archive",
        "git-v0/checkouts/abc/1234567": "git checkout",
        "git-v0/db/abc": "git db",
        "environments-v2/tool-x": "cached environment",
        "builds-v0/.tmpBuild": "temporary file",
        "interpreter-v5/h1/h2": "interpreter info",
        "simple-v28/index/d1g/six": "index page",
    }
    wheel = units["wheels-v8/index/d1g/six/1.17.0-py3-none-any"]
    # pointer first, the link, the lock last; its archive is shared, freed with it
    assert [p[-1] for p in wheel.paths] == [
        "1.17.0-py3-none-any.http",
        "1.17.0-py3-none-any",
        "1.17.0-py3-none-any.lock",
    ]
    assert wheel.shared == ["AAA"] and wheel.locks == [
        tuple("wheels-v8/index/d1g/six/1.17.0-py3-none-any.lock".split("/"))
    ]
    # six.py has a link outside the cache: in the cache's size, never in the unit's
    assert col.shared["AAA"].disk == 0 and col.shared["AAA"].files == 1
    assert any("1 file(s)" in n and "hard-linked" in n for n in col.notes)
    assert col.total_size >= 5000
    sdist = units["sdists-v11/url/d2g"]
    assert sdist.shared == ["BBB"] and ("sdists-v11", "url", "d2g", "OLDREVISION0000") not in sdist.paths
    assert units["sdists-v11/url/d2g/OLDREVISION0000"].stale and units["builds-v0/.tmpBuild"].stale
    assert not units["sdists-v11/url/d2g"].stale
