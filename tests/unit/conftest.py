"""Test tiers (markers) and strict mode: a test skipped because a tool is missing counts as a failure.

`make test` sets MLINFRA_STRICT_SKIPS=1 in every pytest stage (after installing every tool the
tests use), so a missing install step or an unreachable registry cannot hide behind a skip. What a
stage does not run is deselected by marker, visibly (``N deselected``), never skipped:

- ``registry``: the test reaches a package registry (PyPI, npm, Debian) to build a real cache; the
  integration stage runs these (``-m registry``), the unit stages leave them out.
- ``ansible_package``: the test needs a collection of the ``ansible`` package (community.general,
  awx.awx) or ansible-builder, which the bare ansible-core 2.21 venv does not have; its stage
  deselects them.
- ``system_python``: members run huggingface_hub under the system Python of the test's own version
  (the test's interpreter sits below root's 0700 home): Debian 12 has /usr/bin/python3.11, so the
  ansible-core 2.21 / Python 3.12 stage deselects them.
"""

from __future__ import annotations

import os

import pytest

MARKERS = {
    "registry": "reaches a package registry (PyPI, npm, Debian): the integration tier (-m registry)",
    "ansible_package": "needs a collection of the ansible package or ansible-builder (not in bare ansible-core)",
    "system_python": "members run the system Python of the test's version (3.11 on Debian 12)",
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", "%s: %s" % (name, text))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("MLINFRA_STRICT_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = "skipped in strict mode (MLINFRA_STRICT_SKIPS=1): %s" % reason
