"""The cache_catalog filter turns catalog errors into AnsibleFilterError with the reason.

Run in a child interpreter: importing controller code (ansible.errors, the filter plugin) into
the pytest process would divert module.warn() of the module tests that follow to the display.
"""

from __future__ import annotations

import json
import subprocess
import sys

CODE = r"""
import json, sys
from ansible.errors import AnsibleFilterError
from ansible_collections.mlinfra.shared_cache.plugins.filter.cache_catalog import FilterModule

f = FilterModule().filters()["cache_catalog"]
out = {"ok": f({"pip": {"path": "pip", "format": "pip", "env": {"PIP_CACHE_DIR": ""}}}, {}, "/srv/cache")}
try:
    f({"pip": {"path": "pip", "format": "nope"}})
except AnsibleFilterError as exc:
    out["error"] = str(exc)
out["returned"] = f({"pip": {"path": "pip", "format": "nope"}}, errors="return")
print(json.dumps(out))
"""


def run_filter():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_filter_is_registered_and_resolves():
    out = run_filter()
    assert out["ok"][0]["abs_path"] == "/srv/cache/pip"
    assert out["ok"][0]["mount"] == "/cache/pip"


def test_filter_error_names_the_entry():
    out = run_filter()
    assert "shared_cache_caches[pip].format" in out["error"]
    assert "unknown format" in out["error"]


def test_filter_returns_the_error_for_a_fail_task():
    out = run_filter()
    assert out["returned"] == {"error": out["error"]}
