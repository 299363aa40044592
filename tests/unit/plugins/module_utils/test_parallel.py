# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""forked_map: results in job order from real forked processes, None when a worker dies."""

from __future__ import annotations

import os
import signal

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _parallel


def _pid_and_square(n):
    return os.getpid(), n * n


def _die_on_three(n):
    if n == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    return n


def _raise_on_two(n):
    if n == 2:
        raise ValueError("job two is bad")
    return n


def test_results_come_back_in_job_order_from_other_processes():
    out = _parallel.forked_map(_pid_and_square, list(range(20)), 2)
    assert [sq for _pid, sq in out] == [n * n for n in range(20)]
    assert os.getpid() not in {pid for pid, _sq in out}


def test_a_killed_worker_gives_none_instead_of_waiting_forever():
    assert _parallel.forked_map(_die_on_three, list(range(8)), 2) is None


def test_an_exception_in_a_job_is_raised_in_the_caller():
    with pytest.raises(ValueError, match="job two is bad"):
        _parallel.forked_map(_raise_on_two, [1, 2, 3], 2)


def test_default_workers_is_bounded_by_jobs_cpus_and_limit():
    cpus = _parallel.usable_cpus()
    assert _parallel.default_workers(1) == 1
    assert _parallel.default_workers(1000) == cpus
    assert _parallel.default_workers(1000, limit=1) == 1
    assert _parallel.default_workers(0) == 1
