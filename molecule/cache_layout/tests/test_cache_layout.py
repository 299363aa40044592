"""Real users in the container: alice and bob (members of cache) share files, eve (not a member) cannot write."""

from __future__ import annotations

import shlex

import pytest

ROOT = "/srv/cache-test"
SHARED = ["pip", "ml-models/huggingface/hub", "conda/pkgs"]


def as_user(host, user, script):
    """Run a shell script as ``user`` with umask 077 (the most private a user can be)."""
    return host.run("runuser -u %s -- sh -c %s" % (user, shlex.quote("umask 077; set -e; " + script)))


def ok(host, user, script):
    res = as_user(host, user, script)
    assert res.rc == 0, "%s could not: %s\n%s" % (user, script, res.stderr)
    return res.stdout


def denied(host, user, script):
    res = as_user(host, user, script)
    assert res.rc != 0, "%s should not be able to: %s" % (user, script)


@pytest.mark.parametrize(
    "path, mode",
    [
        ("", 0o2775),
        ("/pip", 0o2775),
        ("/ml-models", 0o2775),
        ("/ml-models/huggingface", 0o2775),
        ("/ml-models/huggingface/hub", 0o2775),
        ("/ml-models/torch/hub/checkpoints", 0o2775),
        ("/conda/pkgs", 0o2775),
        ("/apt/archives/partial", 0o2775),
        ("/jetbrains", 0o2770),
        ("/browser/ms-playwright", 0o2770),
    ],
)
def test_tree_owner_group_mode(host, path, mode):
    f = host.file(ROOT + path)
    assert f.is_directory
    assert f.user == "root" and f.group == "cache"
    assert f.mode == mode


def test_default_acls(host):
    acl = host.check_output("getfacl -p --omit-header -d %s/pip" % ROOT).split()
    assert acl == ["user::rwx", "group::rwx", "group:cache:rwx", "mask::rwx", "other::r-x"]
    acl = host.check_output("getfacl -p --omit-header -d %s/jetbrains" % ROOT).split()
    assert "other::---" in acl and "group:cache:rwx" in acl


def test_membership(host):
    assert "cache" in host.user("alice").groups
    assert "cache" in host.user("bob").groups
    assert "cache" not in host.user("eve").groups


@pytest.mark.parametrize("cache", SHARED)
def test_member_files_are_shared_whatever_the_umask(host, cache):
    d = "%s/%s/alice-work" % (ROOT, cache)
    ok(host, "alice", "mkdir -p %s/sub && echo alice > %s/sub/file && echo top > %s/top" % (d, d, d))
    f = host.file(d + "/sub/file")
    assert f.user == "alice" and f.group == "cache"

    # eve: may read a 2775 cache, may not write, replace or delete anything in it
    assert ok(host, "eve", "cat %s/sub/file" % d).strip() == "alice"
    denied(host, "eve", "echo evil > %s/sub/file" % d)
    denied(host, "eve", "echo evil > %s/sub/eve-file" % d)
    denied(host, "eve", "rm -f %s/top" % d)
    denied(host, "eve", "mkdir %s/%s/eve-dir" % (ROOT, cache))

    # bob: reads, overwrites, creates beside, deletes alice's file and directory
    assert ok(host, "bob", "cat %s/sub/file" % d).strip() == "alice"
    ok(host, "bob", "echo bob > %s/sub/file" % d)
    assert host.file(d + "/sub/file").content_string.strip() == "bob"
    ok(host, "bob", "echo beside > %s/sub/bob-file && mkdir %s/sub/bob-dir && echo x > %s/sub/bob-dir/x" % (d, d, d))
    ok(host, "alice", "echo back > %s/sub/bob-dir/x && cat %s/sub/bob-file" % (d, d))
    ok(host, "bob", "rm %s/top && rm -r %s" % (d, d))
    assert not host.file(d).exists


def test_group_only_cache_hides_content_from_non_members(host):
    d = ROOT + "/jetbrains"
    ok(host, "alice", "mkdir -p %s/idea && echo secret > %s/idea/index" % (d, d))
    assert ok(host, "bob", "cat %s/idea/index" % d).strip() == "secret"
    ok(host, "bob", "echo bob > %s/idea/index" % d)
    denied(host, "eve", "ls %s" % d)
    denied(host, "eve", "cat %s/idea/index" % d)
    denied(host, "eve", "echo evil > %s/idea/index" % d)
    ok(host, "alice", "rm -r %s/idea" % d)


def test_nothing_is_world_writable(host):
    assert host.check_output("find %s -perm -0002 ! -type l" % ROOT) == ""


def test_eve_cannot_create_caches(host):
    denied(host, "eve", "mkdir %s/eve-cache" % ROOT)
    denied(host, "eve", "touch %s/pip/wheel.whl" % ROOT)


def test_legacy_777_tree_was_brought_into_line(host):
    d = ROOT + "/pip/legacy"
    # chmod -R 777 left everything 0777: world write goes, group gets setgid on directories
    for path, mode in ((d, 0o2775), (d + "/wheels", 0o2775), (d + "/wheels/old.whl", 0o775)):
        f = host.file(path)
        assert f.mode == mode, path
        assert f.group == "cache" and f.user == "alice", path
    acl = host.check_output("getfacl -p --omit-header -d %s/wheels" % d).split()
    assert "group:cache:rwx" in acl
    ok(host, "bob", "echo bob > %s/wheels/old.whl && echo new > %s/wheels/new.whl" % (d, d))
    denied(host, "eve", "echo evil > %s/wheels/old.whl" % d)
