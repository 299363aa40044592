# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/prefetch.yml on this host the way issue 14 met it: root runs Ansible under a Python the
prefetch user cannot reach (the controller's, here a venv of a pyenv Python under /root), the
virtualenv left by an earlier run was built from such a Python, and the host may have no sudo.

The real playbook runs the real pip download as the real service account the role creates, under the
system's /usr/bin/python3: the broken virtualenv is rebuilt from it, the wheel lands owned by the
account, a second run changes nothing, and a program the account cannot start fails naming the
directory in the way."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys

import pytest

from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import (
    lay_out_cache,
    make_arena,
    remove_arena,
)
from ansible_collections.mlinfra.shared_cache.tests.unit.ops.local_index import SYSTEM_PYTHON, needs_system_venv
from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import ROOT, ansible_bin, ansible_env

WHEEL = "six-1.16.0-py2.py3-none-any.whl"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creates the service account: run as root"),
    needs_system_venv,
]


@pytest.fixture
def host():
    """A cache group, a pip cache laid out for it, and a private directory (0700, like /root)."""
    base = make_arena()
    group = "mlcpf%d" % os.getpid()
    user = group + "u"
    subprocess.run(["groupadd", group], check=True)
    gid = grp.getgrnam(group).gr_gid
    cache = lay_out_cache(os.path.join(base, "cache"), gid)
    lay_out_cache(os.path.join(cache, "pip"), gid, subdirs=["wheelhouse"])
    private = os.path.join(base, "root-only")
    os.mkdir(private, 0o700)
    yield dict(base=base, group=group, gid=gid, user=user, cache=cache, private=private)
    subprocess.run(["userdel", user], check=False, capture_output=True)
    subprocess.run(["groupdel", group], check=False, capture_output=True)
    remove_arena(base)


def broken_venv(host):
    """A virtualenv whose interpreter lives where only root can go (a venv of /root/.pyenv's Python)."""
    venv = os.path.join(host["base"], "venv")
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", venv], check=True)  # with pip: only the path is wrong
    real = os.path.realpath(os.path.join(venv, "bin", "python"))
    hidden = os.path.join(host["private"], os.path.basename(real))
    os.symlink(real, hidden)
    for name in os.listdir(os.path.join(venv, "bin")):
        link = os.path.join(venv, "bin", name)
        if os.path.islink(link) and os.path.realpath(link) == real:
            os.unlink(link)
            os.symlink(hidden, link)
    return venv


def play(host, venv, playbook=None, extra=None):
    """ansible-playbook as root under this (the controller's) interpreter: (rc, recap, output).

    ansible-core's own output (the bare ansible-core venv has no other callback), results as JSON."""
    vars_ = dict(
        shared_cache_root=host["cache"],
        shared_cache_group=host["group"],
        cache_prefetch_kinds=["pip"],
        cache_prefetch_pip=["six==1.16.0"],
        cache_prefetch_pip_dependencies=False,
        cache_prefetch_user=host["user"],
        cache_prefetch_home=os.path.join(host["base"], "home"),
        cache_prefetch_venv=venv,
        cache_prefetch_venv_packages=["pip"],  # the venv's own pip: no download to build it
        cache_prefetch_install_tools=False,
    )
    vars_.update(extra or {})
    env = dict(ansible_env("default"), PIP_CONFIG_FILE=os.devnull, ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        env.pop(var, None)
    # the controller's interpreter as a host variable, as in inventory/hosts.yml (extra vars would
    # beat the role's task vars: the role documents that)
    inventory = os.path.join(host["base"], "hosts.ini")
    with open(inventory, "w") as f:
        f.write("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    run = subprocess.run(
        [
            ansible_bin("ansible-playbook"),
            "-i",
            inventory,
            str(playbook or ROOT / "playbooks" / "prefetch.yml"),
            "-e",
            json.dumps(vars_),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd="/",
    )
    out = run.stdout + run.stderr
    match = re.search(r"^localhost\s+:\s+(.*)$", run.stdout, re.MULTILINE)
    recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))} if match else {}
    return run.returncode, recap, out


def status(out, name):
    """The first result line (ok, changed, skipping, fatal) after the task ``name``'s header."""
    match = re.search(
        r"^TASK \[[^\n]*%s\][^\n]*\n(?:[^\n]*\n)*?(ok|changed|skipping|fatal|failed)\b" % re.escape(name), out, re.M
    )
    return match.group(1) if match else None


def failure(out):
    """The JSON result of the first failed task."""
    match = re.search(r"(?:fatal|failed): \[localhost\][^\n]*? => (\{.*\})$", out, re.M)
    assert match, out[-4000:]
    return json.loads(match.group(1))


@pytest.mark.registry
def test_prefetch_runs_as_the_service_account_under_the_system_python(host):
    venv = broken_venv(host)
    # the account cannot start the venv's Python, root can: only a check as the account finds it
    assert subprocess.run([os.path.join(venv, "bin", "python"), "-c", "1"], check=False).returncode == 0

    rc, recap, out = play(host, venv)
    assert rc == 0, out[-4000:]
    assert status(out, "Remove a virtualenv the prefetch user cannot use (rebuilt below)") == "changed", out
    assert status(out, "Fail naming why the prefetch user cannot use the rebuilt virtualenv") == "skipping", out
    with open(os.path.join(venv, "pyvenv.cfg")) as f:
        assert "home = /usr/bin\n" in f.read()  # rebuilt from the system's Python
    assert not os.path.realpath(os.path.join(venv, "bin", "python")).startswith(host["private"])
    assert "sudo: not found" not in out

    wheel = os.path.join(host["cache"], "pip", "wheelhouse", WHEEL)
    st = os.stat(wheel)
    account = pwd.getpwnam(host["user"])
    assert (st.st_uid, st.st_gid) == (account.pw_uid, host["gid"])  # written by the account itself
    assert st.st_mode & 0o060 == 0o060
    assert account.pw_shell == "/usr/sbin/nologin"

    rc, recap, out = play(host, venv)
    assert rc == 0 and recap["changed"] == 0 and recap["failed"] == 0, out[-4000:]


PROBE = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: Prefetch with a program the account cannot start
      become: true
      become_user: "{{ cache_prefetch_user }}"
      become_method: "{{ 'sudo' if sudo else 'su' }}"
      become_flags: "{{ '' if sudo else '-s /bin/sh' }}"
      vars:
        ansible_python_interpreter: /usr/bin/python3
      mlinfra.shared_cache.cache_prefetch:
        kind: pip
        name: six==1.16.0
        dest: "{{ shared_cache_root }}/pip/wheelhouse"
        executable: "{{ executable }}"
"""


@pytest.mark.registry
def test_a_program_the_account_cannot_start_is_named_with_the_directory_in_the_way(host, tmp_path):
    venv = broken_venv(host)
    subprocess.run(["useradd", "--system", "-g", host["group"], "-s", "/usr/sbin/nologin", host["user"]], check=True)
    playbook = os.path.join(host["base"], "probe.yml")
    with open(playbook, "w") as f:
        f.write(PROBE)
    extra = dict(executable=os.path.join(venv, "bin", "python"), sudo=bool(shutil.which("sudo")))
    rc, _recap, out = play(host, venv, playbook=playbook, extra=extra)
    assert rc != 0
    res = failure(out)
    assert (
        "as %s: permission denied: %s cannot enter %s (drwx------ root:root)"
        % (
            host["user"],
            host["user"],
            host["private"],
        )
        in res["msg"]
    ), res
    assert "rc" not in res or res["rc"] != 13
    assert os.listdir(os.path.join(host["cache"], "pip", "wheelhouse")) == []


ROLE_PLAY = """- hosts: localhost
  gather_facts: false
  roles:
    - role: mlinfra.shared_cache.cache_prefetch
"""
PIP_ENTRY = {"path": "pip", "format": "pip", "env": {"PIP_CACHE_DIR": "", "PIP_FIND_LINKS": "wheelhouse"}}


@pytest.mark.parametrize(
    "over, text",
    [
        ({"cache_prefetch_pip_wheelhouse": "wheels"}, "cache_prefetch_pip_wheelhouse was removed"),
        (
            {"shared_cache_caches": {"pip": {"path": "pip", "format": "pip", "env": {"PIP_CACHE_DIR": ""}}}},
            "catalog entry pip has no env.PIP_FIND_LINKS",
        ),
        (
            # several of a format, none named like it: which one is not guessed
            {"shared_cache_caches": {"wheels-a": PIP_ENTRY, "wheels-b": dict(PIP_ENTRY, path="pip2", env={})}},
            "several catalog entries with format pip (wheels-a, wheels-b)",
        ),
        ({"shared_cache_caches": {"wheels": PIP_ENTRY}, "npm": True}, "no enabled catalog entry with format npm"),
        (
            {"shared_cache_caches": {"wheels": PIP_ENTRY, "npm": {"format": "npm"}}, "npm": True},
            "catalog entry npm has no env.npm_config_cache",
        ),
    ],
)
def test_the_catalog_decides_where_and_a_gap_fails_before_anything(tmp_path, over, text):
    from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import run_play_on_localhost

    over = dict(over)
    extra = dict(
        shared_cache_root=str(tmp_path / "cache"),
        shared_cache_group="mlcpf-absent",
        cache_prefetch_kinds=["pip", "npm"],
        cache_prefetch_pip=["six==1.16.0"],
        cache_prefetch_npm=["is-number@7.0.0"] if over.pop("npm", False) else [],
        cache_prefetch_user="mlcpf-absent",
    )
    extra.update(over)
    rc, recap, out = run_play_on_localhost(ROLE_PLAY, tmp_path, extra)
    assert rc != 0 and recap.get("changed") == 0, out
    assert text in out, out
    assert not (tmp_path / "cache").exists()
