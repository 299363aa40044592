"""Run this collection's playbooks and roles with the real ansible-playbook (shared by the ops tests)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def ansible_bin(name):
    """The ansible command next to this interpreter (the venv's), else on PATH; skip without it."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip("%s not installed" % name)
    return found


def ansible_env(stdout_callback="json"):
    """Environment in which ansible-playbook finds this collection (the checkout or its installed copy).

    The ``json`` callback comes from ansible.posix (the ``ansible`` package), not ansible-core.
    """
    env = dict(os.environ)
    if ROOT.parent.name == "mlinfra" and ROOT.parent.parent.name == "ansible_collections":
        collections = ROOT.parents[2]
    else:
        collections = ROOT / ".collections"
    env["ANSIBLE_COLLECTIONS_PATH"] = "%s:%s" % (collections, env.get("ANSIBLE_COLLECTIONS_PATH", ""))
    env["ANSIBLE_STDOUT_CALLBACK"] = stdout_callback
    env["ANSIBLE_LOCALHOST_WARNING"] = "false"
    env["ANSIBLE_INVENTORY_UNPARSED_WARNING"] = "false"
    return env


def run_play_on_localhost(play_text, tmp_path, extra_vars, env=None, check=False):
    """ansible-playbook of ``play_text`` on localhost (local connection, this interpreter).

    Runs with ansible-core's default output (no other collection needed), ``env`` added to the
    environment (ANSIBLE_GATHERING=explicit skips a play's facts). Returns (return code,
    the play recap's counters for localhost such as {"ok": 3, "changed": 0, "failed": 0, ...},
    stdout+stderr). ``check``: with ``--check``.
    """
    play = Path(tmp_path) / "play.yml"
    play.write_text(play_text)
    extra = dict(extra_vars, ansible_python_interpreter=sys.executable)
    run = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", str(play), "-e", json.dumps(extra)]
        + (["--check"] if check else []),
        capture_output=True,
        check=False,
        text=True,
        env=dict(ansible_env("default"), **(env or {})),
        cwd=ROOT,
    )
    recap = {}
    match = re.search(r"^localhost\s+:\s+(.*)$", run.stdout, re.MULTILINE)
    if match:
        recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}
    return run.returncode, recap, run.stdout + run.stderr
