# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preflight's host probes (module cache_preflight, the doctor's scheduler check)."""

from __future__ import annotations

import os
import sys

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _preflight


def test_nearest_existing_parent(tmp_path):
    assert _preflight.nearest_existing(str(tmp_path / "a" / "b" / "c")) == str(tmp_path)
    assert _preflight.nearest_existing(str(tmp_path)) == str(tmp_path)
    assert _preflight.nearest_existing("/no-such-top-dir-x/y") == "/"


def test_acl_probe_leaves_nothing_behind(tmp_path):
    ok, msg = _preflight.acl_support(str(tmp_path))
    assert ok in (True, False, None) and msg
    assert os.listdir(tmp_path) == []


def test_acl_probe_reads_an_existing_default_acl_first(tmp_path):
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import ACL_DEFAULT, encode_acl

    try:
        os.setxattr(tmp_path, ACL_DEFAULT, encode_acl([(1, 7, 0), (4, 7, 0), (0x20, 5, 0)]))
    except OSError:
        return  # no ACLs on this filesystem: nothing to read first
    tmp_path.chmod(0o555)  # a probe directory could not be created here (root ignores it: read below)
    ok, msg = _preflight.acl_support(str(tmp_path))
    tmp_path.chmod(0o755)
    assert ok is True and "set on" in msg
    assert os.listdir(tmp_path) == []


def test_missing_commands_by_name_and_path():
    reqs = [
        {"command": "sh", "package": "dash"},
        {"command": sys.executable, "package": "python3"},
        {"command": "/no/such/python3", "package": "python3"},
        {"command": "mlinfra-no-such-cmd", "package": "x", "why": "y"},
    ]
    assert [m["command"] for m in _preflight.missing_commands(reqs)] == ["/no/such/python3", "mlinfra-no-such-cmd"]


def test_scheduler_from_proc_and_run_dir(tmp_path):
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "comm").write_text("init\n")
    (proc / "self").mkdir()
    run = tmp_path / "run-systemd"
    assert _preflight.scheduler(str(proc), str(run)) == {"kind": "cron", "running": False}
    (proc / "7").mkdir()
    (proc / "7" / "comm").write_text("crond\n")
    assert _preflight.scheduler(str(proc), str(run)) == {"kind": "cron", "running": True}
    run.mkdir()
    assert _preflight.scheduler(str(proc), str(run)) == {"kind": "systemd", "running": True}
