# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_preflight: every problem in one failure, each with its fix; warnings do not fail."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args

from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_preflight


def run(capsys, **args):
    with patch_module_args(args), pytest.raises(SystemExit):
        cache_preflight.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def host(monkeypatch):
    """A root run on a host where cron runs and ACLs are unsupported (the probe is faked)."""
    monkeypatch.setattr(cache_preflight.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cache_preflight, "scheduler", lambda: {"kind": "cron", "running": True})
    monkeypatch.setattr(cache_preflight, "acl_support", lambda d: (False, "the filesystem of %s has no ACLs" % d))


def test_everything_wrong_is_one_failure(capsys, tmp_path, host, monkeypatch):
    monkeypatch.setattr(cache_preflight.os, "geteuid", lambda: 1000)
    res = run(
        capsys,
        root="/etc/cache",
        require_acl=True,
        min_free="999P",
        install_packages=False,
        commands=[{"command": "mlinfra-no-such-cmd", "package": "pkg-a"}],
        cron_commands=[{"command": "mlinfra-no-such-crontab", "package": "cron"}],
    )
    assert res["failed"] is True
    problems = res["problems"]
    assert len(problems) == 5, problems
    assert problems[0].startswith("not root") and "shared_cache_become=true" in problems[0]
    assert "shared_cache_root: /etc/cache lies inside the system tree /etc" in problems[1]
    assert "has no ACLs" in problems[2] and "mount -o remount,acl /" in problems[2]
    assert "required; fix: free space there" in problems[3]
    assert problems[4].endswith(
        "fix: apt-get install -y cron pkg-a (or let the play install them: shared_cache_install_packages=true)"
    )
    assert res["msg"].startswith("preflight: 5 problem(s), nothing was changed:")


def test_installable_commands_and_no_acls_only_warn(capsys, tmp_path, host):
    res = run(
        capsys,
        root=str(tmp_path / "cache"),
        min_free="",
        commands=[{"command": "mlinfra-no-such-cmd", "package": "pkg-a"}],
    )
    assert not res.get("failed"), res
    assert res["packages"] == ["pkg-a"] and res["problems"] == []
    assert res["root_parent"] == str(tmp_path) and res["scheduler"] == "cron"
    assert "has no ACLs" in json.dumps(res.get("warnings", []))


@pytest.mark.parametrize("start_cron", [False, True])
def test_no_cron_daemon_warns_unless_the_play_starts_it(capsys, tmp_path, host, monkeypatch, start_cron):
    monkeypatch.setattr(cache_preflight, "scheduler", lambda: {"kind": "cron", "running": False})
    # Ansible keeps module warnings process-wide: start this run with none
    monkeypatch.setattr(ansible_warnings, "_global_warnings", {})
    res = run(capsys, root=str(tmp_path / "cache"), min_free="", start_cron=start_cron)
    assert not res.get("failed"), res
    warned = "will not run; fix: service cron start" in json.dumps(res.get("warnings", []))
    assert warned is not start_cron
    assert res["notes"] == (
        ["no cron daemon runs on this host (systemd is not PID 1): the play starts cron"] if start_cron else []
    )
