# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_prefetch against real tools: huggingface_hub's own download code against a hub served on
loopback (HF_ENDPOINT), pip and npm against the real registries with tiny packages. Checks what
lands on disk, that a second run fetches nothing and reports ok, that check mode writes nothing,
and that what was written is shareable by the group."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_prefetch

_spec = importlib.util.spec_from_file_location(
    "prefetch_fake_hub", Path(__file__).parent / "test_prefetch_support" / "fake_hub.py"
)
fake_hub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_hub)

needs_hf = pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is None, reason="huggingface_hub missing")
MODEL = "mlinfra/tiny-bert"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    old = os.umask(0o077)  # a hostile umask: the module must still leave group-shareable files
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # pip: the real index only, no machine-local wheel dirs or config
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    yield
    os.umask(old)


def run(capsys, check=False, **args):
    args["_ansible_check_mode"] = check
    args["_ansible_diff"] = True
    with patch_module_args(args), pytest.raises(SystemExit):
        cache_prefetch.main()
    return json.loads(capsys.readouterr().out)


def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size)
    return out


def assert_group_shared(root):
    bad = {
        p: oct(m) for p, (t, m, _s) in tree(root).items() if t in (stat.S_IFREG, stat.S_IFDIR) and m & 0o060 != 0o060
    }
    assert not bad, "not group read/write: %s" % bad


# ---------------------------------------------------------------------------------------- HF


@needs_hf
def test_hf_model_fetch_then_ok(capsys, tmp_path):
    hub_cache = tmp_path / "huggingface" / "hub"
    with fake_hub.FakeHub() as hub:
        args = dict(
            kind="huggingface",
            name=MODEL,
            dest=str(hub_cache),
            endpoint=hub.endpoint,
            allow_patterns=["*.json", "*.safetensors"],
        )
        # check mode on an empty cache: says what it would fetch, writes nothing
        res = run(capsys, check=True, **args)
        assert res["changed"] is True, res
        assert res["fetched"] == ["config.json", "model.safetensors", "tokenizer.json"]
        assert not hub_cache.exists()
        assert hub.downloads() == []

        res = run(capsys, **args)
        assert res["changed"] is True, res
        assert res["fetched"] == ["config.json", "model.safetensors", "tokenizer.json"]
        commit = res["commit"]
        snap = hub_cache / "models--mlinfra--tiny-bert" / "snapshots" / commit
        assert Path(res["path"]) == snap
        assert (snap / "config.json").read_bytes() == fake_hub.DEFAULT_REPOS["model"][MODEL]["main"]["config.json"]
        assert (snap / "model.safetensors").stat().st_size == 4096
        assert not (snap / "README.md").exists() and not (snap / "onnx").exists()
        assert (hub_cache / "models--mlinfra--tiny-bert" / "refs" / "main").read_text() == commit
        assert len(hub.downloads()) == 3
        assert_group_shared(hub_cache)  # despite umask 077 and huggingface_hub's 0600 metadata
        assert stat.S_IMODE(hub_cache.stat().st_mode) == 0o2775

        # second run: nothing fetched, ok
        res = run(capsys, **args)
        assert res["changed"] is False, res
        assert res["fetched"] == [] and res["cached"] == ["config.json", "model.safetensors", "tokenizer.json"]
        assert len(hub.downloads()) == 3
        res = run(capsys, check=True, **args)
        assert res["changed"] is False

        # widening the patterns fetches only the new file
        wider = dict(args)
        wider["allow_patterns"] = ["*.json", "*.safetensors", "onnx/*"]
        res = run(capsys, **wider)
        assert res["changed"] is True and res["fetched"] == ["onnx/model.onnx"]
        assert len(hub.downloads()) == 4


@needs_hf
def test_hf_revision_pinning(capsys, tmp_path):
    hub_cache = tmp_path / "hub"
    with fake_hub.FakeHub() as hub:
        args = dict(
            kind="huggingface", name=MODEL, dest=str(hub_cache), endpoint=hub.endpoint, allow_patterns=["*.json"]
        )
        old = run(capsys, **args)["commit"]
        # a new commit on main
        hub.hub.repos["model"][MODEL]["main"]["config.json"] = b'{"model_type": "bert", "hidden_size": 16}\n'
        pinned_args = dict(args)
        pinned_args["revision"] = old
        pinned = run(capsys, **pinned_args)
        assert pinned["changed"] is False and pinned["commit"] == old
        downloads = len(hub.downloads())
        moved = run(capsys, **args)
        assert moved["changed"] is True and moved["commit"] != old
        assert moved["fetched"] == ["config.json", "tokenizer.json"]
        assert len(hub.downloads()) == downloads + 1  # tokenizer.json is linked from its cached blob
        repo = hub_cache / "models--mlinfra--tiny-bert"
        assert (repo / "refs" / "main").read_text() == moved["commit"]
        assert b"16" in (repo / "snapshots" / moved["commit"] / "config.json").read_bytes()
        assert b"8" in (repo / "snapshots" / old / "config.json").read_bytes()
        # unchanged blob (tokenizer.json) is shared, not duplicated
        assert len(list((repo / "blobs").iterdir())) == 3


@needs_hf
def test_hf_dataset_and_errors(capsys, tmp_path):
    hub_cache = tmp_path / "hub"
    with fake_hub.FakeHub() as hub:
        res = run(
            capsys,
            kind="huggingface",
            name="mlinfra/tiny-text",
            repo_type="dataset",
            dest=str(hub_cache),
            endpoint=hub.endpoint,
        )
        assert res["changed"] is True
        assert res["fetched"] == ["README.md", "data/train.csv"]
        assert (
            hub_cache / "datasets--mlinfra--tiny-text" / "snapshots" / res["commit"] / "data" / "train.csv"
        ).is_file()
        res = run(capsys, kind="huggingface", name="mlinfra/absent", dest=str(hub_cache), endpoint=hub.endpoint)
        assert res.get("failed") and "mlinfra/absent" in res["msg"]
        assert not (hub_cache / "models--mlinfra--absent").exists()


def test_bad_input_changes_nothing(capsys, tmp_path):
    dest = tmp_path / "x" / "hub"
    res = run(capsys, kind="npm", name="is-number", dest=str(dest), dir_mode="2777")
    assert res["failed"] and "world-writable" in res["msg"]
    res = run(capsys, kind="npm", name="--registry=http://evil", dest=str(dest))
    assert res["failed"]
    res = run(capsys, kind="pip", name="six", dest=str(dest), dir_mode="rwxrwsr-x")
    assert res["failed"] and "octal" in res["msg"]
    res = run(capsys, kind="pip", name="six", dest=str(dest), platforms=["manylinux2014_x86_64"], only_binary=False)
    assert res["failed"] and "only_binary" in res["msg"]
    assert not (tmp_path / "x").exists()


def test_group_share_fixup_never_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("secret")
    os.chmod(outside, 0o600)
    root = tmp_path / "cache"
    (root / "d").mkdir(parents=True)
    os.chmod(root / "d", 0o700)
    (root / "d" / "f").write_text("x")
    os.chmod(root / "d" / "f", 0o600)
    os.symlink(outside, root / "d" / "link")
    fixed = cache_prefetch.make_group_shared(str(root), 0)
    assert fixed >= 2
    assert stat.S_IMODE(os.lstat(root / "d" / "f").st_mode) == 0o660
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o770
    assert stat.S_IMODE(os.lstat(outside).st_mode) == 0o600


# ------------------------------------------------------------------------------ pip (PyPI)


@pytest.mark.registry
def test_pip_wheelhouse(capsys, tmp_path):
    wheelhouse = tmp_path / "pip" / "wheelhouse"
    args = dict(kind="pip", name="six==1.16.0", dest=str(wheelhouse), executable=sys.executable)
    res = run(capsys, check=True, **args)
    assert res["changed"] is True and res["fetched"] == ["six-1.16.0-py2.py3-none-any.whl"], res
    assert not wheelhouse.exists()
    res = run(capsys, **args)
    assert res["changed"] is True and res["fetched"] == ["six-1.16.0-py2.py3-none-any.whl"], res
    whl = wheelhouse / "six-1.16.0-py2.py3-none-any.whl"
    assert whl.stat().st_size == 11053
    assert_group_shared(wheelhouse)
    mtime = whl.stat().st_mtime_ns
    res = run(capsys, **args)
    assert res["changed"] is False and res["cached"] == ["six-1.16.0-py2.py3-none-any.whl"], res
    assert whl.stat().st_mtime_ns == mtime


@pytest.mark.registry
def test_pip_other_target_python(capsys, tmp_path):
    """Wheels for the containers' interpreter, not the host's (binary-only resolution)."""
    wheelhouse = tmp_path / "wheelhouse"
    args = dict(
        kind="pip",
        name="markupsafe==3.0.2",
        dest=str(wheelhouse),
        executable=sys.executable,
        python_version="3.12",
        platforms=["manylinux2014_x86_64"],
    )
    res = run(capsys, **args)
    assert res["changed"] is True, res
    assert res["fetched"] == ["MarkupSafe-3.0.2-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"], res
    assert run(capsys, **args)["changed"] is False


# ------------------------------------------------------------------------------ npm (registry)


@pytest.mark.registry
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm missing")
def test_npm_cache_add(capsys, tmp_path):
    cache = tmp_path / "npm"
    args = dict(kind="npm", name="is-number@7.0.0", dest=str(cache))
    res = run(capsys, check=True, **args)
    assert res["changed"] is True and not cache.exists()
    res = run(capsys, **args)
    assert res["changed"] is True, res
    assert res["fetched"] == [
        "make-fetch-happen:request-cache:https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz"
    ]
    assert list((cache / "_cacache" / "content-v2").rglob("*"))
    assert not (cache / "_logs").exists()
    assert_group_shared(cache)
    res = run(capsys, **args)
    assert res["changed"] is False and len(res["cached"]) == 1, res
    # a different version of the same package is not "cached"
    other = dict(args)
    other["name"] = "is-number@6.0.0"
    assert run(capsys, check=True, **other)["changed"] is True


RECORDER = """#!/bin/sh
# a stand-in for python/npm: records what another user could read of it, fails like the tool would
d=$(dirname "$0")
printf '%s\\n' "$0" "$@" > "$d/argv.$$"
tr '\\0' '\\n' < /proc/$$/cmdline >> "$d/argv.$$"
printf '%s\\n' "PIP_INDEX_URL=${PIP_INDEX_URL-}" "npm_config_registry=${npm_config_registry-}" > "$d/env.$$"
echo "ERROR: 401 from ${PIP_INDEX_URL:-$npm_config_registry}" >&2
exit 1
"""


@pytest.mark.parametrize("kind, var", [("pip", "PIP_INDEX_URL"), ("npm", "npm_config_registry")])
def test_index_credentials_never_reach_a_command_line_nor_the_result(capsys, tmp_path, kind, var):
    tool = tmp_path / "tool"
    tool.mkdir()
    exe = tool / ("python" if kind == "pip" else "npm")
    exe.write_text(RECORDER)
    exe.chmod(0o755)
    url = "https://ci-bot:s3cret-Pa55@index.example/simple/"
    res = run(capsys, kind=kind, name="pkg==1.0", dest=str(tmp_path / "dest"), executable=str(exe), index_url=url)
    assert res["failed"] is True
    argv = "".join(p.read_text() for p in tool.glob("argv.*"))
    env = "".join(p.read_text() for p in tool.glob("env.*"))
    assert argv and "s3cret-Pa55" not in argv and "index.example" not in argv  # /proc/<pid>/cmdline is world-readable
    assert "%s=%s" % (var, url) in env  # the tool still gets it, in its own environment (0400 /proc/<pid>/environ)
    out = json.dumps(res)
    assert "s3cret-Pa55" not in out and "401 from https://****@index.example/simple/" in res["msg"]
