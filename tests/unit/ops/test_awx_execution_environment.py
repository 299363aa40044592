# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""execution-environment.yml: `ansible-builder create` works offline and the build context it
writes holds this collection in a form ansible-galaxy installs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
EE_FILE = ROOT / "execution-environment.yml"


def test_definition_is_schema_v3_and_pins_the_toolchain():
    ee = yaml.safe_load(EE_FILE.read_text(encoding="utf-8"))
    assert ee["version"] == 3
    deps = ee["dependencies"]
    assert deps["ansible_core"]["package_pip"].startswith("ansible-core==")
    assert deps["ansible_runner"]["package_pip"].startswith("ansible-runner==")
    names = [c["name"] for c in deps["galaxy"]["collections"]]
    assert "awx.awx" in names
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))
    for dep in galaxy.get("dependencies") or {}:
        assert dep in names, "collection dependency %s missing from the EE" % dep


@pytest.mark.ansible_package
def test_ansible_builder_create_offline(tmp_path):
    pytest.importorskip("ansible_builder")
    context = tmp_path / "context"
    env = dict(os.environ)
    # Nothing may be fetched: any attempt goes to a closed port and fails.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = "http://127.0.0.1:9"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ansible_builder",
            "create",
            "-f",
            str(EE_FILE),
            "-c",
            str(context),
            "--output-filename",
            "Containerfile",
        ],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    assert "ansible-galaxy collection install" in containerfile
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    build = context / "_build"
    coll = build / "mlinfra_shared_cache"
    for rel in ("galaxy.yml", "meta/runtime.yml", "plugins/filter/cache_catalog.py", "roles/catalog/tasks/main.yml"):
        assert (coll / rel).is_file(), rel
    reqs = yaml.safe_load((build / "requirements.yml").read_text(encoding="utf-8"))
    assert {"name": "/build/mlinfra_shared_cache", "type": "dir"} in reqs["collections"]

    # The copied collection installs with ansible-galaxy (from the context, without Galaxy).
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    if not galaxy.exists():
        pytest.skip("ansible-galaxy not next to the interpreter")
    local_reqs = tmp_path / "requirements.yml"
    local_reqs.write_text(yaml.safe_dump({"collections": [{"name": str(coll), "type": "dir"}]}), encoding="utf-8")
    dest = tmp_path / "installed"
    run = subprocess.run(
        [str(galaxy), "collection", "install", "--force", "--no-deps", "-r", str(local_reqs), "-p", str(dest)],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    installed = dest / "ansible_collections" / "mlinfra" / "shared_cache"
    assert (installed / "MANIFEST.json").is_file()
    assert (installed / "roles" / "catalog" / "meta" / "argument_specs.yml").is_file()
