"""Fixtures of the adversarial suite: real users (``actors``) and a cache root they share (``cache``).

Every test here runs as root against what real unprivileged users did with their own rights (see
``actors.py``); without root (useradd, setpriv) the suite cannot run and says so.
"""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial import curated
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import (
    Actors,
    lay_out_cache,
    make_arena,
    remove_arena,
)

curators = curated.curators  # the writers group and the prefetch service account (curated caches)


@pytest.fixture(scope="session")
def actors():
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("useradd"):
        pytest.skip("the adversarial suite needs root, setpriv and useradd (real users act as members)")
    team = Actors.create()
    try:
        yield team
    finally:
        team.remove()


@pytest.fixture
def arena():
    base = make_arena()
    try:
        yield base
    finally:
        remove_arena(base)


@pytest.fixture
def cache(actors, arena):
    """A cache root ``<arena>/cache`` laid out by cache_dir's code for the actors' group."""
    return lay_out_cache(os.path.join(arena, "cache"), actors.gid)
