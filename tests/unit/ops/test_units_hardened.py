# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The systemd units of root's jobs (prune, report refresh), rendered by ansible-playbook from the
roles' own templates and defaults, are bounded and pass ``systemd-analyze security --offline``.

Target: an overall exposure of at most 2.0 ("OK" is below 4.0 on systemd's 0-10 scale). What is
left is by design: the jobs run as root (User=) with the few capabilities their work needs
(CAP_DAC_*, CAP_FOWNER, CAP_CHOWN; CAP_FSETID for the prune), chown allowed by the system call
filter, AF_UNIX sockets (journal, NSS through nscd/sssd), read access to /proc and /home, and for the
prune RestrictSUIDSGID=no (its permission fix-up sets the setgid bit of the cache directories).
``--threshold`` compares against ten times the printed level (systemd's 0-100 internal scale).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import ROOT, run_play_on_localhost

TARGET = 2.0
PLAY = """- hosts: localhost
  gather_facts: false
  vars_files:
    - {root}/roles/cache_prune/defaults/main.yml
    - {root}/roles/cache_report/defaults/main.yml
  tasks:
    - name: Render the units as the roles do
      ansible.builtin.template:
        src: "{root}/roles/{{{{ item.role }}}}/templates/{{{{ item.src }}}}"
        dest: "{out}/{{{{ item.dest }}}}"
        mode: "0644"
      loop:
        - {{role: cache_prune, src: service.j2, dest: mlinfra-cache-prune.service}}
        - {{role: cache_prune, src: timer.j2, dest: mlinfra-cache-prune.timer}}
        - {{role: cache_report, src: service.j2, dest: mlinfra-cache-report.service}}
        - {{role: cache_report, src: timer.j2, dest: mlinfra-cache-report.timer}}
"""


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    out = tmp_path_factory.mktemp("units")
    rc, _recap, text = run_play_on_localhost(
        PLAY.format(root=ROOT, out=out),
        out,
        {"shared_cache_root": "/mnt/storage/cache", "shared_cache_group": "cache", "inventory_hostname": "h"},
    )
    assert rc == 0, text
    return out


def directives(path):
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _sep, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("unit", ["mlinfra-cache-prune.service", "mlinfra-cache-report.service"])
def test_units_are_bounded_and_background(units, unit):
    d = directives(units / unit)
    assert d["TimeoutStartSec"] == ["6h" if "prune" in unit else "30m"]
    assert d["MemoryMax"] == ["2G"]
    assert d["CPUSchedulingPolicy"] == ["idle"] and d["IOSchedulingClass"] == ["idle"] and d["Nice"] == ["19"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes")):
        assert d[key] == [value], key


def test_prune_writes_only_the_cache_root_its_lock_dir_and_the_verify_state(units):
    d = directives(units / "mlinfra-cache-prune.service")
    assert d["ReadWritePaths"] == [
        "/mnt/storage/cache /var/lib/mlinfra-shared-cache/prune /var/lib/mlinfra-shared-cache/verify"
    ]
    assert set(d["CapabilityBoundingSet"][0].split()) == {
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FSETID",
    }
    assert d["PrivateNetwork"] == ["yes"]


def test_report_reads_the_caches_and_writes_its_outputs(units):
    d = directives(units / "mlinfra-cache-report.service")
    paths = d["ReadWritePaths"][0].split()
    assert "/mnt/storage/cache" not in " ".join(paths)
    assert paths[0] == "/var/lib/mlinfra-shared-cache/report" and "-/var/lib/prometheus/node-exporter" in paths
    assert "CAP_DAC_OVERRIDE" not in d["CapabilityBoundingSet"][0]
    assert d["RestrictSUIDSGID"] == ["yes"]


@pytest.mark.parametrize("unit", ["mlinfra-cache-prune.service", "mlinfra-cache-report.service"])
def test_systemd_analyze_security(units, unit):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    run = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=%d" % int(TARGET * 10), str(units / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", run.stdout)
    assert match, run.stdout + run.stderr
    print("%s exposure %s" % (unit, match.group(1)))
    assert float(match.group(1)) <= TARGET, run.stdout
    assert run.returncode == 0, run.stdout + run.stderr
