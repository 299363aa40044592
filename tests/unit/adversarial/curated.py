"""Helpers of the curated-cache tests: a writers group with the prefetch service account, the
curated layout as cache_dir makes it, and a Python that members can run with huggingface_hub.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _perms
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import Actor

PLUGINS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "plugins")


@pytest.fixture(scope="module")
def curators(actors):
    """(writers group name, the service account Actor): a writer in the cache and writers groups."""
    wgroup, wuser = actors.group + "w", actors.group + "p"
    subprocess.run(["userdel", wuser], check=False, capture_output=True)
    subprocess.run(["groupdel", wgroup], check=False, capture_output=True)
    subprocess.run(["groupadd", wgroup], check=True)
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/bin/sh", "--gid", actors.group, "--groups", wgroup, wuser],
        check=True,
    )
    try:
        yield wgroup, Actor(wuser)
    finally:
        subprocess.run(["userdel", wuser], check=False, capture_output=True)
        subprocess.run(["groupdel", wgroup], check=False, capture_output=True)


def lay_out_curated(path, group, writers, mode="2770", subdirs=("hub",), recurse=True, check=False):
    """What cache_dir (and the nightly repair) do for a curated catalog entry; the fixer."""
    params = {"path": path, "owner": "root", "group": group, "writers": writers, "mode": mode, "subdirs": list(subdirs)}
    path, subdirs, fixer = _perms.cache_dir_fixer(params, check_mode=check)
    fd, managed = fixer.ensure(path, subdirs)
    try:
        _perms.fail_on_managed(fixer, path)
        if recurse and fd is not None:
            fixer.walk(fd, managed, workers=1)
    finally:
        if fd is not None:
            os.close(fd)
    return fixer


def member_python(arena):
    """(python, env) with which a member runs huggingface_hub and the collection's code.

    The test's own interpreter may live below root's 0700 home and the collection below root's
    0700 temporary copy, so the plugins are copied into the (world-traversable) arena and the
    system Python of the same version imports the test environment's site-packages.
    """
    python = "/usr/bin/python%d.%d" % sys.version_info[:2]
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    if not os.access(python, os.X_OK) or not _world_readable(site):
        pytest.skip("members need %s and a world-readable %s to run huggingface_hub" % (python, site))
    coll = os.path.join(arena, "coll", "ansible_collections", "mlinfra", "shared_cache", "plugins")
    if not os.path.isdir(coll):
        for sub in ("module_utils", "modules"):
            shutil.copytree(os.path.join(PLUGINS, sub), os.path.join(coll, sub))
        for dirpath, _dirnames, filenames in os.walk(os.path.join(arena, "coll")):
            os.chmod(dirpath, 0o755)  # noqa: S103 - members read the code, never write it
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
    env = {"PYTHONPATH": "%s:%s" % (os.path.join(arena, "coll"), site), "PYTHONDONTWRITEBYTECODE": "1"}
    return python, env


def _world_readable(path):
    while path not in ("/", ""):
        if not os.stat(path).st_mode & 0o005 == 0o005:
            return False
        path = os.path.dirname(path)
    return True
