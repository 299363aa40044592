"""Strict mode for CI: a test skipped because a tool is missing counts as a failure.

`make test` sets MLINFRA_STRICT_SKIPS=1 for the full toolchain (ansible-core 2.19 venv), after
installing every tool the tests use, so a missing install step cannot hide behind a skip.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("MLINFRA_STRICT_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = "skipped in strict mode (MLINFRA_STRICT_SKIPS=1): %s" % reason
