# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_files on a real filesystem: one call installs a role's files, directories and removals."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_files
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import run_main

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs root-owned files (CI runs as root)")


def run(capsys, files, check=False, diff=True, **more):
    return run_main(cache_files, capsys, check=check, diff=diff, files=files, **more)


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_ino, data)
    return out


@pytest.fixture
def root(tmp_path):
    os.chmod(tmp_path, 0o755)  # noqa: S103 (root-owned and not writable by others, as /etc)
    return tmp_path


def entries(root):
    return [
        {"path": str(root / "etc/mlinfra"), "state": "directory", "mode": "0750"},
        {"path": str(root / "etc/mlinfra/prune.json"), "content": '{"a": 1}\n', "mode": "0644"},
        {"path": str(root / "sbin/cmd"), "content": "#!/bin/sh\necho hi\n", "mode": "0755"},
        {"path": str(root / "etc/old.timer"), "state": "absent"},
    ]


def test_installs_then_a_rerun_changes_nothing(capsys, root):
    (root / "etc").mkdir()
    (root / "etc/old.timer").write_text("[Timer]\n")
    res = run(capsys, entries(root))
    assert res["changed"] and not res.get("failed")
    assert {c["path"]: c["what"] for c in res["changes"]} == {
        str(root / "etc/mlinfra"): ["created"],
        str(root / "etc/mlinfra/prune.json"): ["created"],
        str(root / "sbin/cmd"): ["created"],
        str(root / "etc/old.timer"): ["removed"],
    }
    assert stat.S_IMODE(os.stat(root / "etc/mlinfra").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(root / "sbin/cmd").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "sbin").st_mode) == 0o755  # a missing parent, as mkdir -p
    assert (root / "etc/mlinfra/prune.json").read_text() == '{"a": 1}\n'
    assert not (root / "etc/old.timer").exists()
    before = snapshot(root)
    again = run(capsys, entries(root))
    assert not again["changed"] and again["changes"] == []
    assert snapshot(root) == before  # not even rewritten (same inodes)


def test_content_and_mode_drift_are_fixed_with_a_diff(capsys, root):
    run(capsys, entries(root))
    (root / "etc/mlinfra/prune.json").write_text("edited\n")
    os.chmod(root / "sbin/cmd", 0o700)
    res = run(capsys, entries(root))
    assert {c["path"]: c["what"] for c in res["changes"]} == {
        str(root / "etc/mlinfra/prune.json"): ["content"],
        str(root / "sbin/cmd"): ["mode"],
    }
    assert res["diff"] == [
        {
            "before_header": str(root / "etc/mlinfra/prune.json"),
            "after_header": str(root / "etc/mlinfra/prune.json"),
            "before": "edited\n",
            "after": '{"a": 1}\n',
        }
    ]
    assert stat.S_IMODE(os.stat(root / "sbin/cmd").st_mode) == 0o755


def test_check_mode_reports_and_changes_nothing(capsys, root):
    before = snapshot(root)
    res = run(capsys, entries(root), check=True)
    assert res["changed"] and len(res["changes"]) == 3
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"path": "relative/x", "content": "", "mode": "0644"}, "absolute"),
        ({"path": "/tmp/../etc/x", "content": "", "mode": "0644"}, "normalized"),
        ({"path": "{root}/f", "content": "", "mode": "0666"}, "world-writable"),
        ({"path": "{root}/f", "content": "", "mode": "rw"}, "octal"),
        ({"path": "{root}/f", "content": "", "mode": "0644", "group": "no-such-group-xyz"}, "no such group"),
        ({"path": "{root}/f", "mode": "0644"}, "content is required"),
        ({"path": "{root}/link", "content": "", "mode": "0644"}, "symbolic link"),
        ({"path": "{root}/open/f", "content": "", "mode": "0644"}, "can be written by users other than root"),
        ({"path": "{root}/full", "state": "absent"}, "not empty"),
    ],
)
def test_a_bad_entry_fails_naming_it_and_changes_nothing(capsys, root, bad, says):
    (root / "link").symlink_to("/etc/passwd")
    (root / "open").mkdir()
    os.chmod(root / "open", 0o1777)  # noqa: S103 (a directory anyone can write to: refused)
    (root / "full").mkdir()
    (root / "full/x").write_text("")
    bad = dict(bad, path=bad["path"].format(root=root))
    before = snapshot(root)
    res = run(capsys, entries(root) + [bad])
    assert res.get("failed") and says in res["msg"] and "files[4]" in res["msg"], res["msg"]
    assert snapshot(root) == before
    assert os.readlink(root / "link") == "/etc/passwd"


def test_a_directory_symlink_is_accepted_and_left_alone(capsys, root):
    (root / "usr-sbin").mkdir()
    os.chmod(root / "usr-sbin", 0o755)  # noqa: S103
    (root / "sbin").symlink_to("usr-sbin")
    res = run(capsys, [{"path": str(root / "sbin"), "state": "directory", "mode": "0700"}])
    assert not res["changed"]
    assert stat.S_IMODE(os.stat(root / "usr-sbin").st_mode) == 0o755
    assert os.path.islink(root / "sbin")


def test_diff_false_shows_sizes_not_sources(capsys, root):
    f = {"path": str(root / "lib.py"), "content": "secret = 1\n", "mode": "0644", "diff": False}
    res = run(capsys, [f])
    assert res["diff"][0]["after"] == "(11 bytes)\n" and "secret" not in str(res["diff"])


def test_probe_says_what_is_there_after_the_entries(capsys, root):
    (root / "dangling").symlink_to("nowhere")
    res = run(capsys, entries(root), probe=[str(root / "sbin/cmd"), str(root / "nope"), str(root / "dangling")])
    assert res["probed"] == {
        str(root / "sbin/cmd"): "file",
        str(root / "nope"): "absent",
        str(root / "dangling"): "link",
    }
