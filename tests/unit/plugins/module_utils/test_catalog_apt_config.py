# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""config.apt: apt's directory settings as subpaths of the cache (where cache_prefetch puts .debs)."""

from __future__ import annotations

import pytest
import yaml

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._catalog import resolve
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError
from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import ROOT


def test_the_builtin_apt_entry_names_its_archives_directory():
    with open(ROOT / "roles" / "catalog" / "defaults" / "main.yml") as f:
        caches = yaml.safe_load(f)["shared_cache_caches"]
    apt = {e["name"]: e for e in resolve(caches, None, "/mnt/storage/cache", "/cache")}["apt"]
    assert apt["config"]["apt"] == {"Dir::Cache::archives": "archives"}
    assert "archives" in apt["subdirs"]  # laid out by cache_layout


@pytest.mark.parametrize("bad", ["/var/cache/apt/archives", "../archives", ["archives"]])
def test_a_bad_subpath_is_refused_naming_the_field(bad):
    caches = {"apt": {"format": "apt", "config": {"apt": {"Dir::Cache::archives": bad}}}}
    with pytest.raises(ParamError, match=r"apt.*config\.apt"):
        resolve(caches, None, "/mnt/storage/cache", "/cache")


def test_config_apt_must_be_a_mapping():
    with pytest.raises(ParamError, match="config.apt: expected a mapping"):
        resolve({"apt": {"format": "apt", "config": {"apt": "archives"}}}, None, "/mnt/storage/cache", "/cache")
