"""Verify the converged site playbook on a real container: tree, group sharing, configs."""

from __future__ import annotations

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


def test_default_acl_gives_the_group_rw_on_new_files(host):
    acl = host.check_output("getfacl -p %s/pip", ROOT)
    assert "default:group::rwx" in acl
    assert "default:mask::rwx" in acl
