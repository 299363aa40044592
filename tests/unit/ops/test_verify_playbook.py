# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/verify.yml with the real ansible-playbook: check mode reports a corrupt blob and
removes nothing; cache_verify_quarantine removes it; the summary names the catalog's cache."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import ROOT, ansible_bin, ansible_env
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import make_hf_repo


def _play(tmp_path, *extra):
    import subprocess

    cmd = [ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", str(ROOT / "playbooks" / "verify.yml")]
    base = {
        "ansible_python_interpreter": os.environ.get("PYTHON", __import__("sys").executable),
        "shared_cache_root": str(tmp_path / "cache"),
        "shared_cache_group": "root",
        "cache_verify_caches": "huggingface",
        "cache_verify_state_dir": str(tmp_path / "vstate"),
        "cache_verify_min_age": "0",
    }
    run = subprocess.run(
        cmd + ["-e", json.dumps(base)] + list(extra),
        capture_output=True,
        text=True,
        check=False,
        env=ansible_env("default"),
        cwd=ROOT,
    )
    return run.returncode, run.stdout + run.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the catalog's cache group and root-only state need root")
def test_verify_playbook_check_then_quarantine(tmp_path):
    hub = tmp_path / "cache" / "ml-models" / "huggingface" / "hub"
    make_hf_repo(hub, "models--o--m", {"1" * 40: {"a.bin": b"A" * 3000}}, {"main": "1" * 40})
    blob = hub / "models--o--m" / "blobs" / hashlib.sha256(b"A" * 3000).hexdigest()
    blob.write_bytes(b"A" * 2999 + b"Z")
    os.utime(blob, (1, 1))
    rc, out = _play(tmp_path, "--check", "-e", "cache_verify_quarantine=true", "-e", "cache_verify_full=true")
    assert rc == 0, out
    assert "cache_verify huggingface (check) format=huggingface verified=0 corrupt=1" in out, out
    assert "quarantined=1" in out, out
    assert blob.exists()
    rc, out = _play(tmp_path, "-e", "cache_verify_quarantine=true")
    assert rc == 0, out
    assert not blob.exists()
    summary = json.loads((tmp_path / "vstate" / "summary.json").read_text())
    assert summary["caches"]["huggingface"]["corrupt"] == 1
