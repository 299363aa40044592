# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_doctor on real temporary trees, real environments (sourced scripts), real apt-config and pip."""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import sys

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._catalog import resolve
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_doctor

CACHES = {
    "pip": {"path": "pip", "mount": "/cache/pip", "format": "pip", "env": {"PIP_CACHE_DIR": ""}},
    "huggingface": {
        "path": "ml-models/huggingface",
        "format": "huggingface",
        "subdirs": ["hub"],
        "env": {"HF_HUB_CACHE": "hub"},
    },
    "apt": {"path": "apt", "mount": "/var/cache/apt", "format": "apt"},
}


def my_group():
    return grp.getgrgid(os.getegid()).gr_name


# Commands a fix may end with: an admin pastes them (issue 14 item 5); or it says `make site`.
COMMANDS = (
    "chgrp",
    "install",
    "runuser",
    "docker",
    "rm",
    "useradd",
    "groupadd",
    "usermod",
    "service",
    "unset",
    "export",
)
COMMANDS += ("bash", "apt-config", "apt-get", "systemctl", "/usr/local/sbin/mlinfra-cache-prune", "ansible-playbook")


def pasteable(fix):
    last = re.split(r": |; ", fix)[-1]
    return "make site" in fix or last.split()[0] in COMMANDS or last.startswith(sys.executable + " ")


def run(capsys, check=False, **args):
    args["_ansible_check_mode"] = check
    with patch_module_args(args), pytest.raises(SystemExit):
        cache_doctor.main()
    res = json.loads(capsys.readouterr().out)
    for c in res.get("checks") or []:
        if c["ok"] is False:
            assert pasteable(c["fix"]), c
    return res


def failed(res, check=None):
    return [c for c in res["checks"] if c["ok"] is False and (check is None or c["check"] == check)]


@pytest.fixture
def tree(tmp_path):
    """A laid-out cache root (group = our group, setgid, 2775) and its catalog."""
    root = tmp_path / "cache"
    catalog = resolve(CACHES, None, str(root), "/cache")
    for entry in catalog:
        for sub in [""] + entry["subdirs"]:
            path = os.path.join(entry["abs_path"], sub)
            os.makedirs(path, exist_ok=True)
            os.chmod(path, 0o2775)  # noqa: S103 - the group-shared mode under test
    return root, catalog


def profile(tmp_path, catalog, extra="", name="shared-cache.sh"):
    lines = [
        "export %s=%s" % (var, e["abs_path"] + ("/" + sub if sub else ""))
        for e in catalog
        for var, sub in e["env"].items()
    ]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + extra)
    return str(path)


def base_args(tmp_path, catalog, **over):
    args = dict(
        catalog=catalog,
        group=my_group(),
        probe=False,
        env_source="file",
        env_file=profile(tmp_path, catalog),
        pythons=[sys.executable],
        min_pip="1.0",
        min_free="1K",
        cron_dir=str(tmp_path / "cron.d"),
        systemd_dir=str(tmp_path / "systemd"),
    )
    args.update(over)
    return args


def test_healthy_host_has_no_problem(capsys, tmp_path, tree):
    _root, catalog = tree
    res = run(capsys, **base_args(tmp_path, catalog))
    assert res["problems"] == 0, res["lines"]
    assert res["lines"] == []
    names = {c["check"] for c in res["checks"] if c["ok"]}
    assert {"layout", "env", "hf_home", "free_space", "pip"} <= names


def test_layout_problems_each_get_a_line_with_a_fix(capsys, tmp_path, tree):
    _root, catalog = tree
    pip = next(e for e in catalog if e["name"] == "pip")
    hf = next(e for e in catalog if e["name"] == "huggingface")
    apt = next(e for e in catalog if e["name"] == "apt")
    os.chmod(pip["abs_path"], 0o0755)  # noqa: S103 - no setgid, no group write
    os.chmod(hf["abs_path"], 0o2777)  # noqa: S103 - the world-writable case under test
    shutil.rmtree(apt["abs_path"])
    res = run(capsys, **base_args(tmp_path, catalog))
    assert res["failed"] is True
    lines = "\n".join(res["lines"])
    assert res["problems"] == 3, lines
    assert "FAIL layout %s: cache pip: setgid bit missing" % pip["abs_path"] in lines
    assert "world-writable" in lines
    assert "FAIL layout %s: cache apt: No such file or directory" % apt["abs_path"] in lines
    assert lines.count("fix: rerun `make site`") == 3
    assert "chgrp %s %s && chmod 2775 %s" % (my_group(), pip["abs_path"], pip["abs_path"]) in lines
    assert "install -d -g %s -m 2775 %s" % (my_group(), apt["abs_path"]) in lines
    assert "chmod -R" not in lines and "777" not in lines.replace("2777", "")
    # the message of the failure is the same lines
    assert res["msg"].splitlines()[1:] == res["lines"]


def test_wrong_group_is_reported(capsys, tmp_path, tree):
    _root, catalog = tree
    other = next(g for g in grp.getgrall() if g.gr_gid != os.getegid())
    res = run(capsys, **base_args(tmp_path, catalog, group=other.gr_name, fail_on_problem=False))
    assert res.get("failed") is not True
    assert len(failed(res, "layout")) == len(catalog)
    assert all("not %s" % other.gr_name in c["msg"] for c in failed(res, "layout"))


def test_environment_problems(capsys, tmp_path, tree):
    _root, catalog = tree
    hub = next(e for e in catalog if e["name"] == "huggingface")["abs_path"]
    script = profile(tmp_path, catalog, "export PIP_CACHE_DIR=/elsewhere\nexport HF_HOME=%s\n" % hub, "bad.sh")
    res = run(capsys, **base_args(tmp_path, catalog, env_file=script, fail_on_problem=False))
    env = failed(res, "env")
    assert [c["target"] for c in env] == ["PIP_CACHE_DIR"]
    assert "/elsewhere" in env[0]["msg"] and "export PIP_CACHE_DIR=" in env[0]["fix"]
    hf = failed(res, "hf_home")
    assert hf and "token" in hf[0]["msg"] and "unset HF_HOME" in hf[0]["fix"]


def test_unset_variable_from_the_process_environment(capsys, tmp_path, tree, monkeypatch):
    _root, catalog = tree
    monkeypatch.delenv("PIP_CACHE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", next(e for e in catalog if e["name"] == "huggingface")["abs_path"] + "/hub")
    res = run(capsys, **base_args(tmp_path, catalog, env_source="process", env_file=None, fail_on_problem=False))
    assert [(c["target"], c["msg"].split()[0]) for c in failed(res, "env")] == [("PIP_CACHE_DIR", "unset")]


def test_free_space_threshold(capsys, tmp_path, tree):
    _root, catalog = tree
    res = run(capsys, **base_args(tmp_path, catalog, min_free="99.999%", fail_on_problem=False))
    space = failed(res, "free_space")
    assert len(space) == 1  # one filesystem, reported once
    assert space[0]["fix"].endswith(": /usr/local/sbin/mlinfra-cache-prune")


def test_old_tool_version_fails_with_the_upgrade_command(capsys, tmp_path, tree):
    _root, catalog = tree
    res = run(capsys, **base_args(tmp_path, catalog, min_pip="999.0", fail_on_problem=False))
    pip = failed(res, "pip")
    assert len(pip) == 1
    assert "< 999.0" in pip[0]["msg"]
    assert pip[0]["fix"] == "%s -m pip install --upgrade 'pip>=999.0'" % sys.executable


def test_missing_interpreter_and_tool_are_skipped(capsys, tmp_path, tree):
    _root, catalog = tree
    res = run(capsys, **base_args(tmp_path, catalog, pythons=["/nonexistent/python", sys.executable]))
    assert res["problems"] == 0
    skipped = [c for c in res["checks"] if c["ok"] is None]
    assert any(c["target"] == "/nonexistent/python" for c in skipped)


def test_container_context_requires_mount_points(capsys, tmp_path):
    # "/" is a mount point in every mount namespace; the temporary directory is not.
    other = tmp_path / "notmounted"
    other.mkdir()
    entries = [
        {"name": "root", "abs_path": str(tmp_path / "a"), "mount": "/", "mode": "2775", "env": {}, "format": "generic"},
        {"name": "plain", "abs_path": str(tmp_path / "b"), "mount": str(other), "mode": "2775", "env": {}},
    ]
    res = run(
        capsys,
        catalog=entries,
        context="container",
        group=my_group(),
        probe=False,
        env_source="none",
        pythons=[],
        fail_on_problem=False,
    )
    mounts = {c["target"]: c for c in res["checks"] if c["check"] == "mount"}
    assert mounts["/"]["ok"] is True
    assert mounts[str(other)]["ok"] is False
    assert "compose_volumes" in mounts[str(other)]["fix"]
    assert mounts[str(other)]["fix"].endswith(": docker compose up -d --force-recreate")


@pytest.mark.skipif(shutil.which("apt-config") is None, reason="needs apt-config")
def test_apt_keep_and_docker_clean(capsys, tmp_path, tree, monkeypatch):
    _root, catalog = tree
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    conf = tmp_path / "apt.conf"
    conf.write_text('Dir::Etc::parts "%s/";\n' % parts)
    monkeypatch.setenv("APT_CONFIG", str(conf))
    (parts / "docker-clean").write_text('DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n')
    res = run(capsys, **base_args(tmp_path, catalog, check_apt=True, fail_on_problem=False))
    apt = {c["target"]: c for c in failed(res, "apt")}
    assert set(apt) == {"Keep-Downloaded-Packages", "docker-clean"}
    assert str(parts / "docker-clean") in apt["docker-clean"]["msg"]
    assert apt["docker-clean"]["fix"].startswith("rm %s; " % (parts / "docker-clean"))
    assert "make site" in apt["docker-clean"]["fix"]
    # what the apt_keep_cache role does fixes both
    (parts / "docker-clean").unlink()
    (parts / "10keep-downloaded-packages").write_text('Binary::apt::APT::Keep-Downloaded-Packages "true";\n')
    res = run(capsys, **base_args(tmp_path, catalog, check_apt=True))
    assert res["problems"] == 0
    assert {c["target"] for c in res["checks"] if c["check"] == "apt" and c["ok"]} == {
        "Keep-Downloaded-Packages",
        "docker-clean",
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe switches users: run as root")
def test_probe_reports_a_member_who_cannot_write(capsys, tmp_path, tree):
    _root, catalog = tree
    os.chmod(tmp_path, 0o755)  # noqa: S103 - the other users must traverse it
    # daemon and nobody are not in our group: the probe must fail for every cache, nothing left behind
    res = run(capsys, **base_args(tmp_path, catalog, probe=True, members=["daemon", "nobody"], fail_on_problem=False))
    probe = failed(res, "probe")
    assert len(probe) == len(catalog)
    assert all("daemon cannot write" in c["msg"] for c in probe)
    for entry in catalog:
        assert not [n for n in os.listdir(entry["abs_path"]) if n.startswith(".cache-doctor-")]


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe switches users: run as root")
def test_probe_is_skipped_in_check_mode_and_for_unknown_members(capsys, tmp_path, tree):
    _root, catalog = tree
    # the environment is root's own here (env_user root = the running user): tmp_path is private to root
    args = base_args(tmp_path, catalog, probe=True, members=["daemon", "nobody"], env_user="root")
    res = run(capsys, check=True, **args)
    assert res["problems"] == 0
    assert [c["ok"] for c in res["checks"] if c["check"] == "probe"] == [None]
    res = run(
        capsys, **base_args(tmp_path, catalog, probe=True, members=["no-such-user-x", "nobody"], fail_on_problem=False)
    )
    assert "no-such-user-x does not exist" in failed(res, "probe")[0]["msg"]


@pytest.mark.parametrize(
    "over, text",
    [
        ({"probe_umask": "999"}, "probe_umask"),
        ({"min_free": "lots"}, "min_free"),
        ({"min_free": "150%"}, "between 0% and 100%"),
        ({"catalog": [{"name": "x"}]}, "catalog[0]: missing abs_path"),
    ],
)
def test_bad_input(capsys, tmp_path, tree, over, text):
    _root, catalog = tree
    args = base_args(tmp_path, catalog)
    args.update(over)
    res = run(capsys, **args)
    assert res["failed"] is True
    assert text in res["msg"]
    assert "checks" not in res


def fake_proc(tmp_path, *comms):
    proc = tmp_path / "proc"
    for pid, comm in enumerate(comms, start=100):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join([comm.encode(), b"-f"]) + b"\0")
    proc.mkdir(exist_ok=True)
    return str(proc)


def scheduler_args(tmp_path, catalog, proc, systemd=False, timers=False, crons=True):
    args = base_args(tmp_path, catalog, fail_on_problem=False, proc=proc)
    args["systemd_run_dir"] = str(tmp_path / ("run-systemd" if systemd else "no-systemd"))
    (tmp_path / "run-systemd").mkdir(exist_ok=True)
    if crons:
        os.makedirs(args["cron_dir"], exist_ok=True)
        with open(os.path.join(args["cron_dir"], "mlinfra-shared-cache-report"), "w") as fh:
            fh.write("*/15 * * * * root true\n")
    if timers:
        os.makedirs(args["systemd_dir"], exist_ok=True)
        with open(os.path.join(args["systemd_dir"], "mlinfra-cache-prune.timer"), "w") as fh:
            fh.write("[Timer]\n")
    return args


def test_scheduler_cron_jobs_without_a_cron_daemon(capsys, tmp_path, tree):
    _root, catalog = tree
    res = run(capsys, **scheduler_args(tmp_path, catalog, fake_proc(tmp_path, "sshd", "bash")))
    sched = failed(res, "scheduler")
    assert len(sched) == 1 and "no cron daemon runs" in sched[0]["msg"]
    assert "never run" in sched[0]["msg"]
    assert sched[0]["fix"] == "start cron: service cron start (or: systemctl enable --now cron)"


@pytest.mark.parametrize("daemon", ["cron", "crond", "busybox"])
def test_scheduler_a_running_cron_daemon_runs_the_jobs(capsys, tmp_path, tree, daemon):
    _root, catalog = tree
    proc = fake_proc(tmp_path, "sshd", daemon)
    if daemon == "busybox":
        (tmp_path / "proc" / "101" / "cmdline").write_bytes(b"busybox\0crond\0-f\0")
    res = run(capsys, **scheduler_args(tmp_path, catalog, proc))
    assert failed(res, "scheduler") == []
    assert [c["ok"] for c in res["checks"] if c["check"] == "scheduler"] == [True]


def test_scheduler_systemd_timers_without_systemd(capsys, tmp_path, tree):
    _root, catalog = tree
    args = scheduler_args(tmp_path, catalog, fake_proc(tmp_path, "cron"), timers=True, crons=False)
    res = run(capsys, **args)
    sched = failed(res, "scheduler")
    assert len(sched) == 1 and "systemd does not run this host" in sched[0]["msg"]
    assert "rerun `make site`" in sched[0]["fix"] and sched[0]["fix"].endswith(
        "service cron start (or: systemctl enable --now cron)"
    )
    # under systemd the same timers are fine
    args["systemd_run_dir"] = str(tmp_path / "run-systemd")
    assert failed(run(capsys, **args), "scheduler") == []


def test_scheduler_without_jobs_is_skipped(capsys, tmp_path, tree):
    _root, catalog = tree
    res = run(capsys, **scheduler_args(tmp_path, catalog, fake_proc(tmp_path), crons=False))
    assert [c["ok"] for c in res["checks"] if c["check"] == "scheduler"] == [None]
