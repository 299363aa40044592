# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nightly mlinfra-cache-prune verifies each cache (incrementally), quarantines when told and
merges the counts into the verify summary; --no-verify, --verify-full and --dry-run do what they say."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _hostcmd
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.module_utils.test_hostcmd import prune_config
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import make_hf_repo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root's command: ownership checks need root")


@pytest.fixture
def hf_conf(tmp_path):
    hub = tmp_path / "cache" / "hf" / "hub"
    make_hf_repo(hub, "models--o--m", {"1" * 40: {"a.bin": b"A" * 5000, "b.bin": b"B" * 7000}}, {"main": "1" * 40})
    bad = hub / "models--o--m" / "blobs" / hashlib.sha256(b"B" * 7000).hexdigest()
    bad.write_bytes(b"B" * 6999 + b"C")
    state = tmp_path / "vstate"
    cache = {"name": "hf", "path": str(tmp_path / "cache" / "hf"), "format": "huggingface", "mode": "2775"}
    verify = {"enabled": True, "quarantine": False, "state_dir": str(state), "min_age": 0}
    return prune_config(tmp_path, [cache], fix_permissions=False, verify=verify), state, bad


def test_nightly_command_verifies_incrementally_and_writes_the_summary(hf_conf, capsys):
    conf, state, bad = hf_conf
    assert _hostcmd.prune_main(conf, []) == 0
    out = capsys.readouterr().out
    assert "cache_verify hf format=huggingface verified=1 corrupt=1 " in out and "hashed=12000" in out, out
    summary = json.loads((state / "summary.json").read_text())
    assert summary["caches"]["hf"]["corrupt"] == 1 and summary["caches"]["hf"]["verified_bytes"] == 5000
    assert summary["caches"]["hf"]["corrupt_sample"][0]["path"].endswith(bad.name)
    assert stat.S_IMODE(os.stat(state / "summary.json").st_mode) == 0o640
    assert bad.exists()  # no quarantine configured
    # the next night reads only what it could not verify (the corrupt blob)
    assert _hostcmd.prune_main(conf, []) == 0
    assert "hashed=7000 " in capsys.readouterr().out
    assert _hostcmd.prune_main(conf, ["--verify-full"]) == 0
    assert "hashed=12000 " in capsys.readouterr().out
    assert _hostcmd.prune_main(conf, ["--no-verify"]) == 0
    assert "cache_verify" not in capsys.readouterr().out


def test_nightly_quarantine_and_dry_run(hf_conf, capsys, tmp_path):
    conf, state, bad = hf_conf
    doc = json.loads(open(conf).read())
    doc["verify"]["quarantine"] = True
    with open(conf, "w") as fh:
        json.dump(doc, fh)
    assert _hostcmd.prune_main(conf, ["--dry-run"]) == 0
    assert "quarantined=1" in capsys.readouterr().out and bad.exists()
    assert not (state / "summary.json").exists()
    assert _hostcmd.prune_main(conf, []) == 0
    assert "quarantined=1" in capsys.readouterr().out and not bad.exists()
    assert json.loads((state / "summary.json").read_text())["caches"]["hf"]["corrupt"] == 1
