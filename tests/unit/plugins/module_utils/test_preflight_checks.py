# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preflight's host probes (module cache_preflight, the doctor's scheduler check)."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

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


def test_a_cron_daemon_in_another_root_is_not_the_hosts(tmp_path):
    """A container's cron shows in the host's /proc, but its root is not ours: it runs no host job."""
    proc = tmp_path / "proc"
    other = tmp_path / "container-root"
    other.mkdir()
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "root").symlink_to("/")
    (proc / "7").mkdir()
    (proc / "7" / "comm").write_text("cron\n")
    (proc / "7" / "root").symlink_to(other)
    run = tmp_path / "run-systemd"  # absent: no systemd
    assert _preflight.cron_daemons(str(proc)) == []
    assert _preflight.scheduler(str(proc), str(run)) == {"kind": "cron", "running": False}
    (proc / "8").mkdir()
    (proc / "8" / "comm").write_text("cron\n")
    (proc / "8" / "root").symlink_to("/")
    assert _preflight.cron_daemons(str(proc)) == ["8"]
    assert _preflight.scheduler(str(proc), str(run)) == {"kind": "cron", "running": True}


def _fake_cron(root=None):
    """A real process named cron (prctl PR_SET_NAME), in another root directory when given, as a
    container's cron is: the parent's end of a pipe tells it to exit."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(w)
            os.close(ready_r)
            if root is not None:
                os.chroot(root)
                os.chdir("/")
            ctypes.CDLL(None).prctl(15, b"cron", 0, 0, 0)  # PR_SET_NAME
            os.write(ready_w, b"x")
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    return pid, w


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_a_real_cron_in_another_root_is_left_out_and_one_in_ours_counts(tmp_path):
    procs = [_fake_cron(str(tmp_path)), _fake_cron()]
    try:
        found = _preflight.cron_daemons()
        assert str(procs[0][0]) not in found  # the "container" cron: another root
        assert str(procs[1][0]) in found  # a cron with our root runs the host's jobs
    finally:
        for _pid, w in procs:  # every pipe first: the second child holds a copy of the first's
            os.close(w)
        for pid, _w in procs:
            os.waitpid(pid, 0)
