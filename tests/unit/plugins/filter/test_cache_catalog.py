"""The cache_catalog filter turns catalog errors into AnsibleFilterError with the reason."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.mlinfra.shared_cache.plugins.filter.cache_catalog import FilterModule


def test_filter_is_registered_and_resolves():
    f = FilterModule().filters()["cache_catalog"]
    out = f({"pip": {"path": "pip", "format": "pip", "env": {"PIP_CACHE_DIR": ""}}}, {}, "/srv/cache")
    assert out[0]["abs_path"] == "/srv/cache/pip"


def test_filter_error_names_the_entry():
    f = FilterModule().filters()["cache_catalog"]
    with pytest.raises(AnsibleFilterError, match=r"shared_cache_caches\[pip\]\.format"):
        f({"pip": {"path": "pip", "format": "nope"}})
