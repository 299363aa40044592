"""Verify the converged site playbook on a real container: tree, group sharing, configs."""

from __future__ import annotations

import json
import os

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CATALOG = os.path.join(HERE, "..", "..", "..", "roles", "catalog", "defaults", "main.yml")
with open(CATALOG) as fh:
    DEFAULTS = yaml.safe_load(fh)
ROOT = DEFAULTS["shared_cache_root"]
GROUP = DEFAULTS["shared_cache_group"]
ENTRIES = sorted(DEFAULTS["shared_cache_caches"].items())


def test_group_exists(host):
    assert host.group(GROUP).exists


def test_root_is_group_shared_not_world_writable(host):
    root = host.file(ROOT)
    assert root.is_directory
    assert root.user == "root"
    assert root.group == GROUP
    assert root.mode == 0o2775


@pytest.mark.parametrize("name,entry", ENTRIES, ids=[name for name, _entry in ENTRIES])
def test_every_catalog_cache_exists_with_its_mode(host, name, entry):
    path = os.path.join(ROOT, entry["path"])
    f = host.file(path)
    assert f.is_directory, path
    assert f.group == GROUP
    assert f.mode == int(entry.get("mode", "2775"), 8)
    assert not f.mode & 0o002
    for sub in entry.get("subdirs") or []:
        s = host.file(os.path.join(path, sub))
        assert s.is_directory and s.group == GROUP and s.mode & 0o2070 == 0o2070


def test_the_host_was_bare_and_site_installed_what_it_needs(host):
    # prepare purged cron, sudo and acl; the preflight installed cron (no systemd runs here)
    assert host.package("cron").is_installed
    assert not host.exists("sudo")
    assert not host.exists("setfacl")


def test_the_preflight_started_cron_for_the_jobs(host):
    # PID 1 is sleep: nothing but the preflight started cron (no ps on a bare host: /proc)
    assert host.file("/proc/1/comm").content_string.strip() == "sleep"
    daemons = host.check_output("grep -lx cron /proc/[0-9]*/comm || true")
    assert daemons, "no cron daemon runs"
    # prepare left /run/crond.pid naming PID 1 (the init script's `status` then said cron ran):
    # the pid file names the cron the preflight started now
    pid = host.file("/run/crond.pid").content_string.strip()
    assert "/proc/%s/comm" % pid in daemons.split(), (pid, daemons)
    jobs = host.check_output("ls /etc/cron.d").split()
    assert any(j.startswith("mlinfra-shared-cache-") for j in jobs), jobs


def test_the_members_exist_and_the_doctor_recorded_no_problem(host):
    for user in ("alice", "bob"):
        assert GROUP in host.user(user).groups
    status = json.loads(host.file("/var/lib/mlinfra-shared-cache/doctor/status.json").content_string)
    assert status["problems"] == 0, status["lines"]
    assert status["checks"] > 0


def test_default_acl_gives_the_group_rw_on_new_files(host):
    # no getfacl on this bare host: the default ACL's effect, a member's umask 077 file is group rw
    host.run_test("id verify-member || useradd -m -G %s verify-member", GROUP)
    probe = "%s/pip/acl-probe" % ROOT
    host.run_test("rm -f %s", probe)
    host.check_output("su verify-member -s /bin/sh -c 'umask 077; echo x > %s'", probe)
    f = host.file(probe)
    assert f.group == GROUP
    assert f.mode & 0o060 == 0o060, oct(f.mode)
    # "other" as the directory's mode gives it (no more), not the umask: 0664 under a 2775 cache
    pip_mode = int(DEFAULTS["shared_cache_caches"]["pip"].get("mode", "2775"), 8)
    assert f.mode & 0o007 == pip_mode & 0o006, oct(f.mode)
    host.run_test("rm -f %s", probe)


def test_apt_keeps_downloaded_packages(host):
    out = host.check_output("apt-config dump Binary::apt::APT::Keep-Downloaded-Packages")
    assert 'Keep-Downloaded-Packages "true"' in out
    assert not host.file("/etc/apt/apt.conf.d/docker-clean").exists


def test_member_login_shells_get_the_shared_cache_environment(host):
    host.run_test("id verify-member || useradd -m -G %s verify-member", GROUP)
    env = host.check_output("su -l verify-member -s /bin/bash -c env")
    assert "PIP_CACHE_DIR=%s/pip" % ROOT in env
    assert "HF_HUB_CACHE=%s/ml-models/huggingface/hub" % ROOT in env
    assert "GIT_CONFIG_KEY_0=lfs.storage" in env and "GIT_CONFIG_VALUE_0=%s/git-lfs" % ROOT in env
    assert "HF_HOME=" not in env, "HF_HOME holds per-user tokens and must stay per user"


def test_root_and_non_members_get_nothing_of_the_shared_cache(host):
    # root must never install or run what a member can replace: no variable, no tool config
    env = host.check_output("bash -lc env")
    assert ROOT not in env and "GIT_CONFIG_COUNT" not in env
    assert host.check_output("bash -lc umask") == "0022"
    host.run_test("id verify-stranger || useradd -m verify-stranger")
    assert ROOT not in host.check_output("su -l verify-stranger -s /bin/bash -c env")
    for conf in ("/etc/pip.conf", "/etc/npmrc", "/etc/gitconfig"):
        f = host.file(conf)
        assert not f.exists or ROOT not in f.content_string, conf
    assert not host.file("/etc/conda/condarc.d/shared-cache.yml").exists


def test_members_get_umask_002_in_login_shells(host):
    host.run_test("id verify-member || useradd -m -G %s verify-member", GROUP)
    assert host.check_output("su -l verify-member -s /bin/bash -c umask") == "0002"


def test_prune_is_scheduled(host):
    # No systemd as PID 1 in the container: the role falls back to cron.
    cron = host.file("/etc/cron.d/mlinfra-shared-cache-prune")
    assert cron.exists and cron.mode & 0o022 == 0
    assert "mlinfra-cache-prune" in cron.content_string
    assert host.file("/usr/local/sbin/mlinfra-cache-prune").is_file


def test_scheduled_prune_runs_dry(host):
    cmd = host.run("/usr/local/sbin/mlinfra-cache-prune --dry-run")
    assert cmd.rc == 0, cmd.stderr
    assert "pip" in cmd.stdout + cmd.stderr


def test_show_cache_info_reports_every_cache(host):
    out = host.check_output("/usr/local/bin/show-cache-info")
    assert "Total" in out
    for label in ("pip", "HuggingFace"):
        assert label.lower() in out.lower()


def test_site_wrote_the_first_report(host):
    # site.yml runs show-cache-info --write once when no report exists (issue 14 item 4).
    state = "/var/lib/mlinfra-shared-cache/report"
    for path in (state + "/report.json", state + "/history.jsonl", state + "/index.html"):
        assert host.file(path).is_file, path
    assert host.file("/var/lib/prometheus/node-exporter/shared_cache.prom").is_file
    last = host.run("/usr/local/bin/show-cache-info --last")
    assert last.rc == 0 and "Total" in last.stdout, last.stderr
