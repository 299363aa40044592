# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""site.yml checks first (issue 14 item 1), run by ansible-playbook on this host: a bad input fails
before the group or any file exists, the error names the variable set and shows once; the
preflight warns when no scheduler runs and lists every missing command once."""

from __future__ import annotations

import grp
import hashlib
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._preflight import scheduler
from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import ROOT, run_play_on_localhost

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="site.yml manages groups: run as root")

SITE = "- ansible.builtin.import_playbook: %s\n" % (ROOT / "playbooks" / "site.yml")
PREFLIGHT = """- hosts: localhost
  gather_facts: false
  roles:
    - role: mlinfra.shared_cache.preflight
  tasks:
    - name: Show the scheduler decided
      ansible.builtin.debug:
        msg: "scheduler={{ shared_cache_scheduler }} running={{ shared_cache_scheduler_running }}"
"""


def fingerprint(*paths):
    """Every path below the given ones with its mode, owner and content hash ('' when absent)."""
    out = {}
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top) if os.path.isdir(top) else [(top, [], [])]:
            for name in [""] + sorted(dirnames + filenames):
                path = os.path.join(dirpath, name) if name else dirpath
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    out[path] = ""
                    continue
                digest = ""
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as fh:
                        digest = hashlib.sha256(fh.read()).hexdigest()
                out[path] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


def group_exists(name):
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def site_vars(tmp_path):
    """Every path the roles write pointed into tmp_path, and a group name that does not exist."""
    group = "pfx%s" % secrets.token_hex(4)
    assert not group_exists(group)
    etc = tmp_path / "etc"
    etc.mkdir()
    return {
        "shared_cache_root": str(tmp_path / "storage" / "cache"),
        "shared_cache_group": group,
        "shared_cache_users": [],
        "shared_cache_install_packages": False,
        "cache_env_profile_path": str(etc / "profile.d" / "shared-cache.sh"),
        "cache_env_container_dir": str(etc / "mlinfra"),
        "apt_keep_cache_conf_path": str(etc / "apt.conf.d" / "10keep"),
        "apt_keep_cache_dockerfile_dir": str(etc / "mlinfra"),
        "host_lib_dir": str(tmp_path / "lib"),
        "cache_prune_command_path": str(tmp_path / "sbin" / "mlinfra-cache-prune"),
        "cache_prune_config_path": str(etc / "prune.json"),
        "cache_prune_lock_path": str(tmp_path / "state" / "prune" / "prune.lock"),
        "cache_report_state_dir": str(tmp_path / "state" / "report"),
        "cache_report_command_path": str(tmp_path / "bin" / "show-cache-info"),
        "cache_report_config_path": str(etc / "report.json"),
        "cache_report_textfile_dir": "",
        "cache_report_cron_file": str(etc / "cron.d" / "report"),
    }


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"shared_cache_overrides": {"pip": {"retention": {"max_age": "7x"}}}},
            "shared cache catalog: shared_cache_overrides.pip.retention.max_age: cannot parse '7x' as a duration",
        ),
        ({"shared_cache_root": "storage/cache"}, "shared_cache_root: must be an absolute path"),
        ({"cache_prune_schedule": "hourly"}, "cache_prune: cache_prune_schedule must be none, systemd, cron or auto"),
        ({"shared_cache_overrides": {"huggingface": {"env": {"HF_HOME": ""}}}}, "a catalog entry sets HF_HOME"),
        (
            {
                "shared_cache_users": ["root"],
                "compose_volumes_users": ["root"],
                "compose_volumes_extra_volumes": ["/srv/x:/cache/pip"],
            },
            "/srv/x:/cache/pip clashes with the mount /cache/pip of cache pip",
        ),
    ],
    ids=["override", "relative-root", "prune-setting", "cache_env-hf-home", "compose-clash"],
)
def test_a_bad_input_fails_site_before_any_change(tmp_path, site_vars, bad, message):
    watched = [str(tmp_path), "/etc/profile.d/shared-cache.sh", "/etc/cron.d", "/usr/local/bin/show-cache-info"]
    before = fingerprint(*watched)
    work = tmp_path / "work"  # the play file, outside the fingerprint
    work.mkdir()
    watched[0] = str(tmp_path / "storage")
    watched.append(str(tmp_path / "etc"))
    before = fingerprint(*watched)
    # no facts: the checks that must fail come before any task that needs them (keeps it fast)
    rc, recap, out = run_play_on_localhost(SITE, work, dict(site_vars, **bad), env={"ANSIBLE_GATHERING": "explicit"})
    assert rc != 0
    assert recap.get("failed") == 1 and recap.get("changed") == 0, out
    # the message as set, once: no "caused by" chain, the fatal line and its [ERROR] echo only
    assert message in out, out
    assert "<<< caused by >>>" not in out and "shared_cache_caches[pip]" not in out
    assert out.count(message) <= 2, out
    assert not group_exists(site_vars["shared_cache_group"])
    assert fingerprint(*watched) == before
    assert not os.path.exists(site_vars["shared_cache_root"].split("/cache")[0])


# the whole play runs: cache_env retires earlier versions' settings with community.general.ini_file
# where such files exist on the host (the ansible package; deselected with bare ansible-core)
@pytest.mark.ansible_package
def test_check_mode_with_a_writers_group_to_create_changes_nothing_and_says_why(tmp_path, site_vars):
    """The cache group exists, a curated cache's writers group does not: --check reports the
    groups it would create and says why the tree is not compared (cache_dir could not resolve
    the writers group), instead of failing; nothing is created."""
    writers = site_vars["shared_cache_group"] + "w"
    subprocess.run(["groupadd", site_vars["shared_cache_group"]], check=True)
    try:
        work = tmp_path / "work"
        work.mkdir()
        watched = [str(tmp_path / "storage"), str(tmp_path / "etc"), "/etc/cron.d"]
        before = fingerprint(*watched)
        extra = {"shared_cache_overrides": {"huggingface": {"writers": writers}}}
        rc, recap, out = run_play_on_localhost(
            SITE, work, dict(site_vars, **extra), env={"ANSIBLE_GATHERING": "explicit"}, check=True
        )
        assert rc == 0 and recap.get("failed") == 0, out
        assert "or a writers group of a curated cache) does not" in out, out
        assert not group_exists(writers)
        assert fingerprint(*watched) == before
    finally:
        subprocess.run(["groupdel", site_vars["shared_cache_group"]], check=False)


def run_preflight(tmp_path, **extra):
    """The preflight role alone on this host, installing nothing, the root in tmp_path."""
    base = {"shared_cache_root": str(tmp_path / "cache"), "shared_cache_install_packages": False}
    return run_play_on_localhost(PREFLIGHT, tmp_path, dict(base, preflight_cron_commands=[], **extra))


def no_scheduler_here():
    sched = scheduler()
    return sched["kind"] == "cron" and not sched["running"]


@pytest.mark.skipif(not no_scheduler_here(), reason="a scheduler runs this host")
def test_the_preflight_warns_that_no_scheduler_runs(tmp_path):
    # told not to start cron (it would start this host's own: the Molecule default scenario proves the start)
    rc, recap, out = run_preflight(tmp_path, preflight_start_cron=False)
    assert rc == 0, out
    assert recap["changed"] == 0, out
    assert "no scheduler runs on this host" in out
    assert "the prune and report jobs will be installed but will not run" in out
    assert "service cron start (or: systemctl enable --now cron)" in out
    assert "scheduler=cron running=False" in out
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["play.yml"]  # the ACL probe's directory is gone


@pytest.mark.skipif(not no_scheduler_here(), reason="a scheduler runs this host")
@pytest.mark.skipif(not os.path.exists("/etc/init.d/cron"), reason="cron is not installed here")
def test_the_preflight_would_start_cron_and_check_mode_starts_nothing(tmp_path):
    # the role in check mode (this host's cron must not start): the start is the one change announced
    play = PREFLIGHT.replace("  gather_facts: false\n", "  gather_facts: false\n  check_mode: true\n", 1)
    assert play != PREFLIGHT
    base = {"shared_cache_root": str(tmp_path / "cache"), "shared_cache_install_packages": False}
    rc, recap, out = run_play_on_localhost(play, tmp_path, dict(base, preflight_cron_commands=[]))
    assert rc == 0, out
    assert recap["changed"] == 1, out
    assert "changed: [localhost]" in out.split("Start cron (systemd does not run this host")[1].split("TASK")[0], out
    assert no_scheduler_here()  # nothing started


def test_missing_commands_are_listed_once_and_nothing_is_installed(tmp_path):
    rc, recap, out = run_preflight(
        tmp_path,
        preflight_commands=[
            {"command": "mlinfra-no-such-cmd", "package": "mlinfra-no-such-pkg", "why": "the test"},
            {"command": sys.executable, "package": "python3", "why": "present"},
            {"command": "mlinfra-no-such-cmd2", "package": "mlinfra-no-such-pkg", "why": "the test"},
        ],
        preflight_min_free="999P",
    )
    assert rc != 0
    assert recap["failed"] == 1 and recap["changed"] == 0, out
    assert "preflight: 2 problem(s), nothing was changed:" in out
    line = next(x for x in out.splitlines() if x.startswith("- missing command(s)"))
    assert "mlinfra-no-such-cmd (mlinfra-no-such-pkg: the test)" in line and "python3 (" not in line
    assert line.endswith(
        "fix: apt-get install -y mlinfra-no-such-pkg (or let the play install them: shared_cache_install_packages=true)"
    )
    assert "required; fix: free space there" in out
    assert out.count("- missing command(s)") <= 2  # the [ERROR] line and nothing else repeats it
    assert not (tmp_path / "cache").exists()
    assert shutil.which("mlinfra-no-such-cmd") is None
    assert subprocess.run(["dpkg", "-s", "mlinfra-no-such-pkg"], capture_output=True, check=False).returncode != 0
