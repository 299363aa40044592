# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_dir on real temporary trees: ownership, modes, default ACLs read back, check mode, symlinks."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _perms
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_dir
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import run_main, run_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cache_dir manages ownership: run as root")

GROUP = "users"  # present on Debian/Ubuntu and in the CI image
GID = grp.getgrnam(GROUP).gr_gid
OWNER = "daemon"
UID = pwd.getpwnam(OWNER).pw_uid
HAVE_GETFACL = shutil.which("getfacl") is not None
HAVE_SETFACL = shutil.which("setfacl") is not None


def run_module(capsys, check=False, diff=True, **args):
    args.setdefault("group", GROUP)
    return run_main(cache_dir, capsys, check=check, diff=diff, **args)


def run_module_process(tmp_path, **args):
    args.setdefault("group", GROUP)
    return run_process(cache_dir, tmp_path, **args)


def warnings_of(res):
    """Warning texts (ansible-core 2.19+ returns them as structured summaries)."""
    return json.dumps(res.get("warnings", []))


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def default_acl_lines(path):
    """getfacl's own reading of the default ACL (the real tool, not our decoder)."""
    out = subprocess.run(
        ["getfacl", "--omit-header", "--numeric", "--default", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line]


def snapshot(root):
    """Everything cache_dir may change, for every entry below (and including) root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            xattrs = ()
            if not stat.S_ISLNK(st.st_mode):
                xattrs = tuple(
                    sorted(
                        (k, os.getxattr(p, k, follow_symlinks=False)) for k in os.listxattr(p, follow_symlinks=False)
                    )
                )
            out[p] = (st.st_mode, st.st_uid, st.st_gid, xattrs)
    return out


def wrong_tree(base):
    """A tree as users leave it: umask 077 files and dirs, wrong group, world-writable, setuid."""
    root = base / "pip"
    (root / "http" / "a").mkdir(parents=True)
    (root / "wheels").mkdir()
    for i in range(5):
        f = root / "http" / "a" / ("f%d" % i)
        f.write_text("x")
        f.chmod(0o600)
    (root / "http" / "a").chmod(0o700)
    (root / "wheels" / "w.whl").write_text("w")
    (root / "wheels" / "w.whl").chmod(0o666)  # world-writable: must lose o+w
    (root / "wheels" / "tool").write_text("#!/bin/sh\n")
    (root / "wheels" / "tool").chmod(0o4711)  # setuid executable: g+x, no setuid
    (root / "world").mkdir()
    (root / "world").chmod(0o777)
    return root


# ----------------------------------------------------------------------------- creation


@pytest.mark.skipif(not HAVE_GETFACL, reason="needs getfacl")
def test_creates_root_subdirs_with_owner_group_mode_and_default_acl(tmp_path, capsys):
    path = tmp_path / "cache" / "ml-models" / "torch"
    res = run_module(capsys, path=str(path), owner=OWNER, subdirs=["hub", "hub/checkpoints"])
    assert res["changed"] is True
    assert res["examined"] == 3 and res["changed_entries"] == 3
    assert res["acl_supported"] is True
    for p in (path, path / "hub", path / "hub" / "checkpoints"):
        st = os.lstat(p)
        assert stat.S_IMODE(st.st_mode) == 0o2775, p
        assert (st.st_uid, st.st_gid) == (UID, GID), p
        assert default_acl_lines(p) == [
            "user::rwx",
            "group::rwx",
            "group:%d:rwx" % GID,
            "mask::rwx",
            "other::r-x",
        ]
    # Missing parents are plain mkdir -p directories, not shared ones.
    assert mode_of(tmp_path / "cache") == 0o755
    assert str(path) in res["created"] and str(tmp_path / "cache") in res["created"]
    # Idempotent.
    again = run_module(capsys, path=str(path), owner=OWNER, subdirs=["hub", "hub/checkpoints"])
    assert again["changed"] is False and again["changed_entries"] == 0 and again["created"] == []


@pytest.mark.skipif(not HAVE_GETFACL, reason="needs getfacl")
def test_2770_gives_others_nothing(tmp_path, capsys):
    path = tmp_path / "jetbrains"
    run_module(capsys, path=str(path), mode="2770")
    assert mode_of(path) == 0o2770
    assert "other::---" in default_acl_lines(path)


@pytest.mark.skipif(not HAVE_SETFACL, reason="needs setfacl")
def test_acl_is_byte_identical_to_setfacl(tmp_path, capsys):
    ours = tmp_path / "ours"
    run_module(capsys, path=str(ours))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, -1, GID)
    theirs.chmod(0o2775)
    subprocess.run(["setfacl", "-d", "-m", "g:%s:rwx" % GROUP, str(theirs)], check=True)
    assert os.getxattr(ours, _perms.ACL_DEFAULT) == os.getxattr(theirs, _perms.ACL_DEFAULT)


@pytest.mark.skipif(not HAVE_SETFACL, reason="needs setfacl")
def test_other_named_acl_entries_are_kept(tmp_path, capsys):
    path = tmp_path / "c"
    path.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:%s:r-x" % OWNER, str(path)], check=True)
    res = run_module(capsys, path=str(path))
    assert res["changed"] is True
    lines = default_acl_lines(path)
    assert "user:%d:r-x" % UID in lines and "group:%d:rwx" % GID in lines
    assert run_module(capsys, path=str(path))["changed"] is False


def test_member_file_written_with_umask_077_is_group_rw(capsys):
    base = tempfile.mkdtemp(prefix="cache-dir-test-")  # traversable by others, unlike pytest's tmp_path
    try:
        os.chmod(base, 0o755)  # noqa: S103 - the other test user must traverse it
        path = os.path.join(base, "hf")
        hub = os.path.join(path, "hub")
        run_module(capsys, path=path, subdirs=["hub"])
        old = os.umask(0o077)
        try:
            os.close(os.open(os.path.join(hub, "blob"), os.O_CREAT | os.O_WRONLY, 0o666))
            os.mkdir(os.path.join(hub, "models--x"))
        finally:
            os.umask(old)
        f = os.lstat(os.path.join(hub, "blob"))
        d = os.lstat(os.path.join(hub, "models--x"))
        assert f.st_gid == GID and d.st_gid == GID  # setgid: the group is inherited
        assert stat.S_IMODE(f.st_mode) & 0o060 == 0o060  # group class rw despite umask 077
        assert stat.S_IMODE(d.st_mode) & 0o2070 == 0o2070  # group rwx + setgid inherited
        if not shutil.which("setpriv"):
            return
        # A real other member (uid nobody, supplementary group users) overwrites and creates;
        # the same uid without the group cannot write.
        member = ["setpriv", "--reuid=65534", "--regid=65534", "--groups=%d" % GID, "sh", "-c"]
        subprocess.run(member + ["echo y > hub/blob && echo z > hub/models--x/n"], cwd=path, check=True)
        stranger = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"]
        assert subprocess.run(stranger + ["echo y > hub/blob"], cwd=path, check=False).returncode != 0
    finally:
        shutil.rmtree(base)


# ----------------------------------------------------------------------------- recurse


def test_recurse_fixes_wrong_tree_then_is_idempotent(tmp_path, capsys):
    root = wrong_tree(tmp_path)
    res = run_module(capsys, path=str(root), recurse=True, adopt=True)
    # root, http, http/a, wheels, world + 5 + 2 files
    assert res["examined"] == 12
    assert res["changed_entries"] == 12
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_gid == GID
            assert stat.S_IMODE(st.st_mode) & 0o2070 == 0o2070
            assert not stat.S_IMODE(st.st_mode) & 0o002
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_gid == GID
            assert stat.S_IMODE(st.st_mode) & 0o060 == 0o060
            assert not stat.S_IMODE(st.st_mode) & 0o6002
    assert mode_of(root / "http" / "a") == 0o2770  # others still get nothing they did not have
    assert mode_of(root / "http" / "a" / "f0") == 0o660
    assert mode_of(root / "wheels" / "w.whl") == 0o664
    assert mode_of(root / "wheels" / "tool") == 0o0771  # g+x because it is executable; setuid gone
    assert mode_of(root / "world") == 0o2775
    # Content owners are not changed.
    assert os.lstat(root / "http" / "a" / "f0").st_uid == 0
    acl = _perms.decode_acl(os.getxattr(root / "http" / "a", _perms.ACL_DEFAULT))
    assert (_perms.GROUP, 7, GID) in acl
    again = run_module(capsys, path=str(root), recurse=True, adopt=True)
    assert again["changed"] is False and again["changed_entries"] == 0 and again["examined"] == 12


def test_without_recurse_content_is_untouched(tmp_path, capsys):
    root = wrong_tree(tmp_path)
    before = snapshot(root / "http")
    res = run_module(capsys, path=str(root))
    assert res["examined"] == 1
    assert snapshot(root / "http") == before


def test_check_mode_writes_nothing_and_counts_the_same(tmp_path, capsys):
    root = wrong_tree(tmp_path)
    before = snapshot(tmp_path)
    check = run_module(capsys, check=True, path=str(root), owner=OWNER, recurse=True, subdirs=["new/deeper"])
    assert snapshot(tmp_path) == before
    assert check["changed"] is True
    real = run_module(capsys, path=str(root), owner=OWNER, recurse=True, subdirs=["new/deeper"])
    for key in ("examined", "changed_entries", "created", "changed"):
        assert check[key] == real[key], key
    assert check["diff"]["after"]["mode"] == real["diff"]["after"]["mode"] == "2775"
    assert check["diff"]["after"]["default_acl"] == real["diff"]["after"]["default_acl"]


def test_check_mode_on_missing_path_creates_nothing(tmp_path, capsys):
    path = tmp_path / "a" / "b"
    check = run_module(capsys, check=True, path=str(path), subdirs=["x/y"])
    assert not (tmp_path / "a").exists()
    assert check["diff"]["before"] == {"state": "absent"}
    real = run_module(capsys, path=str(path), subdirs=["x/y"])
    for key in ("examined", "changed_entries", "created", "changed"):
        assert check[key] == real[key], key


def test_symlinks_are_never_followed(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_text("s")
    secret.chmod(0o600)
    (outside / "d").mkdir(mode=0o700)
    (outside / "d" / "inner").write_text("i")
    os.chmod(outside / "d" / "inner", 0o600)
    root = tmp_path / "cache"
    root.mkdir()
    (root / "link-to-file").symlink_to(secret)
    (root / "link-to-dir").symlink_to(outside / "d")
    before = snapshot(outside)
    res = run_module(capsys, path=str(root), recurse=True, adopt=True)
    assert res["skipped_entries"]["symlinks"] == 2
    assert snapshot(outside) == before
    assert mode_of(secret) == 0o600 and os.lstat(secret).st_gid == 0


def test_file_swapped_for_symlink_during_walk_is_not_followed(tmp_path):
    """The race guard: the name was a 0600 file when lstat'ed, a symlink when it is changed."""
    outside = tmp_path / "victim"
    outside.write_text("v")
    outside.chmod(0o600)
    root = tmp_path / "cache"
    root.mkdir()
    (root / "f").write_text("f")
    os.chmod(root / "f", 0o600)
    st = os.lstat(root / "f")
    os.unlink(root / "f")
    (root / "f").symlink_to(outside)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        err = _perms.fix_file(fd, "f", st, 0o660, GID)
    finally:
        os.close(fd)
    assert isinstance(err, OSError)
    assert mode_of(outside) == 0o600 and os.lstat(outside).st_gid == 0


def test_symlink_as_path_component_is_refused(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    res = run_module(capsys, path=str(tmp_path / "link" / "pip"))
    assert res["failed"] is True and "symbolic link" in res["msg"]
    assert os.listdir(real) == []


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        ({"path": "relative/cache"}, "absolute"),
        ({"path": "/"}, "system directory"),
        ({"path": "/etc"}, "system directory"),
        ({"path": "/usr/local/cache"}, "system"),
        ({"path": "/var"}, "system directory"),
        ({"path": "/home"}, "system directory"),
        ({"path": "{tmp}/a/../../etc"}, ".."),
        ({"path": "{tmp}/c", "subdirs": ["../escape"]}, ".."),
        ({"path": "{tmp}/c", "owner": "no-such-user-xyz"}, "no such user"),
        ({"path": "{tmp}/c", "group": "no-such-group-xyz"}, "no such group"),
        ({"path": "{tmp}/c", "mode": "2778"}, "octal"),
        ({"path": "{tmp}/c", "mode": "rwx"}, "octal"),
        ({"path": "{tmp}/c", "mode": 2775}, "quoted"),
        ({"path": "{tmp}/c", "mode": "2777"}, "world-writable"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(tmp_path, capsys, args, message):
    args = dict(args)
    args["path"] = args["path"].replace("{tmp}", str(tmp_path))
    before = sorted(os.listdir(tmp_path))
    res = run_module(capsys, **args)
    assert res.get("failed") is True
    assert message in res["msg"]
    assert sorted(os.listdir(tmp_path)) == before


def test_world_writable_allowed_warns(tmp_path, capsys):
    path = tmp_path / "ww"
    res = run_module_process(tmp_path, path=str(path), mode="2777", allow_world_writable=True)
    assert mode_of(path) == 0o2777
    assert "world-writable" in warnings_of(res)


# ----------------------------------------------------------------------------- filesystems


def _mount(fstype, target):
    target.mkdir()
    proc = subprocess.run(["mount", "-t", fstype, fstype, str(target)], capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip("cannot mount %s here: %s" % (fstype, proc.stderr.decode().strip()))


def test_other_filesystems_are_not_entered(tmp_path, capsys):
    root = tmp_path / "cache"
    root.mkdir()
    mnt = root / "mnt"
    _mount("tmpfs", mnt)
    try:
        (mnt / "f").write_text("x")
        os.chmod(mnt / "f", 0o600)
        res = run_module_process(tmp_path, path=str(root), recurse=True, adopt=True)
        assert res["other_fs"] == ["mnt"]
        assert mode_of(mnt / "f") == 0o600
        assert "another filesystem" in warnings_of(res)
        crossed = run_module(capsys, path=str(root), recurse=True, adopt=True, one_fs=False)
        assert crossed["other_fs"] == []
        assert mode_of(mnt / "f") == 0o660
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_filesystem_without_acls_falls_back_with_a_warning(tmp_path, capsys):
    mnt = tmp_path / "ramfs"
    _mount("ramfs", mnt)  # ramfs has no xattrs at all
    try:
        try:
            os.getxattr(mnt, _perms.ACL_DEFAULT)
        except OSError as exc:
            if exc.errno not in _perms.ACL_UNSUPPORTED:
                pytest.skip("this ramfs supports xattrs")
        path = mnt / "pip"
        res = run_module_process(tmp_path, path=str(path), subdirs=["wheels"])
        assert res["acl_supported"] is False
        assert "does not support POSIX ACLs" in warnings_of(res)
        assert mode_of(path) == 0o2775 and os.lstat(path).st_gid == GID
        again = run_module(capsys, path=str(path), subdirs=["wheels"])
        assert again["changed"] is False
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_diff_shows_root_attributes(tmp_path, capsys):
    path = tmp_path / "c"
    path.mkdir()
    path.chmod(0o755)
    res = run_module(capsys, path=str(path))
    assert res["diff"]["before"]["mode"] == "0755" and res["diff"]["before"]["default_acl"] == []
    assert res["diff"]["after"]["mode"] == "2775" and res["diff"]["after"]["group"] == GROUP
    assert "default:group:%s:rwx" % GROUP in res["diff"]["after"]["default_acl"]


def test_recurse_never_changes_content_owners_and_acl_false_leaves_acls(tmp_path, capsys):
    root = wrong_tree(tmp_path)
    res = run_module(capsys, path=str(root), owner=OWNER, recurse=True, adopt=True, acl=False)
    assert res["acl_supported"] is None
    assert os.lstat(root).st_uid == UID  # the managed directory gets the owner...
    assert os.lstat(root / "http" / "a" / "f0").st_uid == 0  # ...content keeps its own
    assert os.lstat(root / "http").st_uid == 0
    for p in (root, root / "http", root / "http" / "a"):
        assert _perms.ACL_DEFAULT not in os.listxattr(p)
    assert mode_of(root / "http" / "a" / "f0") == 0o660


@pytest.mark.parametrize("protected", [False, True])
def test_hard_links_are_changed_only_with_the_cache_group_and_protected_hardlinks(tmp_path, protected):
    """A linked file of another group is never regrouped (even when adopting); one that already has
    the cache group is widened only when the kernel protects hard links (docs/security.md)."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "single").write_text("s")
    (root / "linked").write_text("l")
    (root / "linked-ours").write_text("o")
    os.link(root / "linked", tmp_path / "outside-link")  # a second name outside the cache
    os.link(root / "linked-ours", tmp_path / "outside-ours")
    os.chown(root / "linked-ours", -1, GID)
    for name in ("single", "linked", "linked-ours"):
        os.chmod(root / name, 0o600)
    fixer = _perms.TreeFixer(None, GID, 0o2775, adopt=True)
    fixer.protected_hardlinks = protected  # as on a host with fs.protected_hardlinks = 0 / 1
    fd, managed = fixer.ensure(str(root), [])
    try:
        fixer.walk(fd, managed)
    finally:
        os.close(fd)
    assert fixer.skipped["hardlinks"] == (1 if protected else 2)
    assert mode_of(root / "linked") == 0o600 and os.lstat(root / "linked").st_gid == 0
    assert mode_of(root / "linked-ours") == (0o660 if protected else 0o600)
    assert mode_of(root / "single") == 0o660 and os.lstat(root / "single").st_gid == GID


def test_existing_file_as_path_is_refused(tmp_path, capsys):
    f = tmp_path / "notadir"
    f.write_text("x")
    os.chmod(f, 0o600)
    res = run_module(capsys, path=str(f))
    assert res["failed"] is True and "not a directory" in res["msg"]
    assert mode_of(f) == 0o600


def test_recurse_keeps_access_and_modification_times(tmp_path, capsys):
    """cache_prune ages entries by atime/mtime: fixing permissions must not make them look fresh."""
    root = wrong_tree(tmp_path)
    f = root / "http" / "a" / "f0"
    os.utime(f, (1_000_000_000, 1_100_000_000))
    res = run_module(capsys, path=str(root), recurse=True, adopt=True)
    assert res["changed_entries"] > 0 and mode_of(f) == 0o660
    st = os.lstat(f)
    assert (st.st_atime, st.st_mtime) == (1_000_000_000, 1_100_000_000)


def test_subdir_replaced_by_a_symlink_fails_and_is_not_followed(tmp_path, capsys):
    elsewhere = tmp_path / "home-alice-hub"
    elsewhere.mkdir(mode=0o700)
    root = tmp_path / "hf"
    run_module(capsys, path=str(root), subdirs=["xet"])
    (root / "hub").symlink_to(elsewhere)
    res = run_module(capsys, path=str(root), subdirs=["hub", "xet"])
    assert res["failed"] is True and "hub" in res["msg"] and "not a directory" in res["msg"]
    assert mode_of(elsewhere) == 0o700 and os.lstat(elsewhere).st_gid == 0
    assert _perms.ACL_DEFAULT not in os.listxattr(elsewhere)


# ----------------------------------------------------------------------------- workers


def split_tree(base, outside):
    """wrong_tree plus 30 subtrees two levels down (enough for the parallel split), each with a
    umask-077 file, some with a symlink to a private file outside and a FIFO."""
    root = wrong_tree(base)
    for i in range(30):
        d = root / "http" / ("h%02d" % i) / "x"
        d.mkdir(parents=True)
        d.chmod(0o700)
        (d / "blob").write_text("b")
        (d / "blob").chmod(0o600)
        if i % 5 == 0:
            (d / "ln").symlink_to(outside)
            os.mkfifo(d / "fifo", 0o600)
    return root


def rel_snapshot(root):
    return {os.path.relpath(p, root): v for p, v in snapshot(root).items()}


@pytest.mark.parametrize("subdirs", [[], ["http/h03", "wheels"]])
def test_workers_change_exactly_what_one_process_changes(tmp_path, capsys, subdirs):
    secret = tmp_path / "secret"
    secret.write_text("s")
    secret.chmod(0o600)
    one = split_tree(tmp_path / "one", secret)
    many = split_tree(tmp_path / "many", secret)
    check = run_module(capsys, check=True, path=str(many), recurse=True, adopt=True, workers=3, subdirs=subdirs)
    r1 = run_module(capsys, path=str(one), recurse=True, adopt=True, workers=1, subdirs=subdirs)
    r3 = run_module(capsys, path=str(many), recurse=True, adopt=True, workers=3, subdirs=subdirs)
    assert r1["workers"] == 1
    assert check["workers"] == r3["workers"] == 3  # 31 subtrees below http/: split
    for key in ("examined", "changed_entries", "skipped_entries", "error_count", "created"):
        if key == "created":
            assert [os.path.relpath(p, many) for p in r3[key]] == [os.path.relpath(p, one) for p in r1[key]]
            continue
        assert r1[key] == r3[key] == check[key], key
    assert r3["examined"] == 12 + 30 * 3 + 6 * 2  # wrong_tree, h?? + x + blob, ln + fifo
    assert r3["skipped_entries"] == {"symlinks": 6, "special": 6, "hardlinks": 0, "private": 0}
    assert rel_snapshot(one) == rel_snapshot(many)
    assert mode_of(many / "http" / "h07" / "x" / "blob") == 0o660
    assert mode_of(many / "http" / "h07" / "x") == 0o2770
    assert mode_of(secret) == 0o600 and os.lstat(secret).st_gid == 0
    again = run_module(capsys, path=str(many), recurse=True, adopt=True, workers=3, subdirs=subdirs)
    assert again["changed"] is False and again["examined"] == r3["examined"]


def test_subtree_swapped_before_its_worker_opens_it_is_skipped(tmp_path):
    """A worker reopens its subtree by name: a symlink or another directory there is refused."""
    root = tmp_path / "cache"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_text("f")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / "secret").write_text("s")
    (outside / "secret").chmod(0o600)
    st = os.lstat(root / "a")
    fixer = _perms.TreeFixer(None, GID, 0o2775)
    fd, managed = fixer.ensure(str(root), [])
    try:
        os.rename(root / "a", tmp_path / "a-seen")
        (root / "a").symlink_to(outside)
        as_link = fixer._subtree(fd, managed, ("a", st.st_dev, st.st_ino))
        os.unlink(root / "a")
        os.rename(outside, root / "a")  # a real directory, but not the one that was seen
        as_other = fixer._subtree(fd, managed, ("a", st.st_dev, st.st_ino))
    finally:
        os.close(fd)
    assert as_link["error_count"] == 1 and as_link["examined"] == 0
    assert as_other["error_count"] == 1 and "replaced" in as_other["errors"][0]["error"]
    assert mode_of(root / "a") == 0o700 and os.lstat(root / "a").st_gid == 0
    assert mode_of(root / "a" / "secret") == 0o600 and os.lstat(root / "a" / "secret").st_gid == 0


def test_negative_workers_is_refused(tmp_path, capsys):
    res = run_module(capsys, path=str(tmp_path / "c"), workers=-1)
    assert res["failed"] is True and "workers" in res["msg"]
    assert not (tmp_path / "c").exists()


def catalog_args(base):
    """The cache root with an intermediate directory and three caches, the way cache_layout calls it."""
    return dict(
        path=str(base / "cache"),
        owner=OWNER,
        mode="2775",
        subdirs=["ml-models"],
        caches=[
            {"path": str(base / "cache" / "pip"), "subdirs": ["http", "wheels"]},
            {"path": str(base / "cache" / "ml-models" / "huggingface"), "subdirs": ["hub", "xet"]},
            {"path": str(base / "cache" / "jetbrains"), "mode": "2770", "recurse": True, "private": ["*.secret"]},
        ],
    )


def test_caches_manage_a_whole_catalog_in_one_call_like_single_calls(tmp_path, capsys):
    """One call with caches= leaves exactly the tree that one call per directory leaves."""
    batch, single = tmp_path / "batch", tmp_path / "single"
    for base in (batch, single):
        base.mkdir()
        jb = base / "cache" / "jetbrains" / "old"
        jb.mkdir(parents=True)
        (jb / "f").write_text("x")
        os.chmod(jb / "f", 0o600)
        (jb / "k.secret").write_text("s")
        os.chmod(jb / "k.secret", 0o600)
        for p in (base / "cache", base / "cache" / "jetbrains", jb, jb / "f", jb / "k.secret"):
            os.chown(p, 0, GID)
    args = catalog_args(batch)
    check = run_module(capsys, check=True, **args)
    assert check["changed"] is True
    assert not (batch / "cache" / "pip").exists()
    res = run_module(capsys, **args)
    assert res["changed"] is True
    assert [r["path"] for r in res["caches"]] == [args["path"]] + [c["path"] for c in args["caches"]]
    assert sorted(res["created"]) == sorted(check["created"]), (res["created"], check["created"])
    assert res["changed_entries"] == check["changed_entries"] == sum(r["changed_entries"] for r in res["caches"])
    assert str(batch / "cache" / "pip") in res["diff"]["after"]
    one = catalog_args(single)
    run_module(capsys, path=one["path"], owner=OWNER, subdirs=one["subdirs"])
    for c in one["caches"]:
        run_module(capsys, owner=OWNER, **c)
    strip = len(str(batch))
    assert {k[strip:]: v for k, v in snapshot(batch).items()} == {
        k[len(str(single)) :]: v for k, v in snapshot(single).items()
    }
    assert mode_of(batch / "cache" / "jetbrains") == 0o2770
    assert mode_of(batch / "cache" / "jetbrains" / "old" / "f") & 0o060 == 0o060  # recurse on that entry only
    assert mode_of(batch / "cache" / "jetbrains" / "old" / "k.secret") == 0o600  # its private pattern
    again = run_module(capsys, **args)
    assert again["changed"] is False and again["diff"] == {"before": {}, "after": {}}


def test_caches_bad_entry_fails_before_any_change(tmp_path, capsys):
    args = catalog_args(tmp_path)
    args["caches"].append({"path": str(tmp_path / "cache" / "ww"), "mode": "2777"})
    res = run_module(capsys, **args)
    assert res["failed"] is True
    assert "caches[3]" in res["msg"] and "world-writable" in res["msg"]
    assert not (tmp_path / "cache").exists()


def test_caches_without_path_and_neither_is_refused(tmp_path, capsys):
    res = run_module(capsys, caches=[{"path": str(tmp_path / "a")}, {"path": str(tmp_path / "b"), "mode": "2770"}])
    assert res["changed"] is True and res["path"] is None
    assert mode_of(tmp_path / "b") == 0o2770
    assert run_module(capsys)["failed"] is True
