# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_layout with cache_layout_tree: false (NFS clients with root squash), run by ansible-playbook
on this host: the tree is only looked at, a missing root or a foreign gid fails clearly."""

from __future__ import annotations

import grp
import os
import stat

import pytest

from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import run_play_on_localhost

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cache_layout manages groups: run as root")

PLAY = """- hosts: localhost
  gather_facts: false
  roles:
    - role: mlinfra.shared_cache.cache_layout
"""
GROUP = "users"  # exists on Debian: the role's group task changes nothing on this host


def run_client(tmp_path, root):
    return run_play_on_localhost(
        PLAY,
        tmp_path,
        {
            "shared_cache_root": str(root),
            "shared_cache_group": GROUP,
            "shared_cache_users": [],
            "cache_layout_tree": False,
        },
    )


def test_a_mounted_tree_of_the_group_is_left_exactly_as_it_is(tmp_path):
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    os.chown(root, -1, grp.getgrnam(GROUP).gr_gid)
    os.chmod(root, 0o700)  # not what the layout would make (2775): proves nothing was applied
    rc, recap, out = run_client(tmp_path, root)
    assert rc == 0, out
    assert recap["ok"] > 0 and recap["changed"] == 0 and recap["failed"] == 0, out
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert os.listdir(root) == []


def test_a_missing_root_fails_and_nothing_is_created(tmp_path):
    root = tmp_path / "not-mounted" / "cache"
    rc, _recap, out = run_client(tmp_path, root)
    assert rc != 0
    assert "missing or not a directory: mount the cache server" in out
    assert not (tmp_path / "not-mounted").exists()


def test_a_root_of_another_gid_fails_naming_it(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    os.chown(root, -1, 0)
    rc, _recap, out = run_client(tmp_path, root)
    assert rc != 0
    assert "group root, not users" in out and "cache_layout_group_gid" in out
    assert os.stat(root).st_gid == 0
