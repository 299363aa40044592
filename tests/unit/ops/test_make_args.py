# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ways README.md gives to pass variables through `make site ANSIBLE_ARGS=...` reach
ansible-playbook as intended: the real Makefile, run by make in a scratch copy whose venv's
ansible-playbook only records its arguments."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

RECORDER = """#!/bin/sh
python3 -c 'import json, sys; print("ARGV=" + json.dumps(sys.argv[1:]))' "$@"
"""


@pytest.fixture
def scratch(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "dev.txt").write_text("")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text('PATH="%s:$PATH"\n' % bin_dir)
    (bin_dir / "python").symlink_to(shutil.which("python3"))
    (bin_dir / "ansible-playbook").write_text(RECORDER)
    (bin_dir / "ansible-playbook").chmod(0o755)
    stamp = tmp_path / ".venv" / ".stamp"
    stamp.write_text("")
    os.utime(stamp, (2**31, 2**31))  # newer than requirements/dev.txt: make does not rebuild the venv
    (tmp_path / ".collections" / "ansible_collections" / "mlinfra" / "shared_cache").mkdir(parents=True)
    return tmp_path


def argv_of(scratch, command_line):
    """Run a README command line in bash (the user's shell), return ansible-playbook's argv."""
    run = subprocess.run(["bash", "-c", command_line], cwd=scratch, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(re.search(r"^ARGV=(.*)$", run.stdout, re.M).group(1))


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.startswith("make site ANSIBLE_ARGS=")]


def test_the_readme_documents_the_forms_tested_here():
    assert len(readme_commands()) == 3, readme_commands()


def test_each_readme_form_reaches_ansible_playbook_as_one_value(scratch):
    key_value, as_json, from_file = readme_commands()
    assert argv_of(scratch, key_value)[-2:] == ["-e", "shared_cache_group=mlcache"]
    args = argv_of(scratch, as_json)
    assert args[-2] == "-e"
    assert args[-1] == "{shared_cache_overrides: {pip: {retention: {max_age: 14d}}}}"
    assert argv_of(scratch, from_file)[-2:] == ["-e", "@my-vars.yml"]
    # without the inner quotes the shell splits the JSON: what the issue met
    bad = argv_of(scratch, "make site ANSIBLE_ARGS='-e {\"a\": 1}'")
    assert bad[-2:] == ["{a:", "1}"]  # split in two, its quotes eaten by the recipe's shell
