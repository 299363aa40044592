"""The descriptor-relative walker on real trees: no symlink is followed, swaps are detected."""

from __future__ import annotations

import gc
import os

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    Walker,
    WalkError,
    gc_paused,
    open_dir_nofollow,
)


def walk_names(root):
    fd = open_dir_nofollow(root)
    try:
        w = Walker(fd)
        seen = {}
        for d in w.walk():
            seen[d.rel] = sorted(name for name, _st in d.entries)
        return seen, w
    finally:
        os.close(fd)


def test_walk_visits_every_directory_once_and_never_follows_links(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret").write_text("x")
    root = tmp_path / "cache"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_text("1")
    (root / "a" / "b" / "g").write_text("2")
    (root / "link-dir").symlink_to(outside)
    (root / "link-file").symlink_to(outside / "deep" / "secret")
    odd = os.fsencode(str(root)) + b"/we\xffird name\nline"
    os.mkdir(odd)
    seen, w = walk_names(str(root))
    odd_name = os.fsdecode(b"we\xffird name\nline")
    assert set(seen) == {"", "a", "a/b", odd_name}
    assert seen[""] == sorted(["a", "link-dir", "link-file", odd_name])
    assert w.errors == []


def test_root_with_symlink_component_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(WalkError):
        open_dir_nofollow(str(tmp_path / "alias"))
    with pytest.raises(OSError):
        open_dir_nofollow(str(tmp_path / "alias" / "x"))


def test_directory_swapped_for_symlink_mid_walk_is_not_entered(tmp_path):
    root = tmp_path / "cache"
    (root / "victim").mkdir(parents=True)
    (root / "victim" / "file").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    fd = open_dir_nofollow(str(root))
    try:
        w = Walker(fd)
        visited = []
        for d in w.walk():
            visited.append(d.rel)
            if d.rel == "":
                # After the listing, before descending: replace the directory with a symlink.
                os.rename(root / "victim", tmp_path / "moved")
                os.symlink(outside, root / "victim")
        assert visited == [""]
        assert w.error_count == 1
        assert "victim" in w.errors[0][0]
    finally:
        os.close(fd)


def test_unreadable_subtree_is_recorded_not_fatal(tmp_path):
    root = tmp_path / "cache"
    (root / "ok").mkdir(parents=True)
    (root / "gone").mkdir()
    fd = open_dir_nofollow(str(root))
    try:
        w = Walker(fd)
        for d in w.walk():
            if d.rel == "":
                os.rmdir(root / "gone")
        assert w.error_count == 1 and w.errors[0][0] == "gone"
    finally:
        os.close(fd)


def test_descriptors_held_stay_bounded_by_depth(tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    for i in range(300):
        (root / ("d%03d" % i)).mkdir()
    before = len(os.listdir("/proc/self/fd"))
    fd = open_dir_nofollow(str(root))
    peak = 0
    try:
        for _d in Walker(fd).walk():
            peak = max(peak, len(os.listdir("/proc/self/fd")))
    finally:
        os.close(fd)
    assert peak - before < 10
    assert len(os.listdir("/proc/self/fd")) == before


# -- files members wrote ---------------------------------------------------------------------------
def _lines(tmp_path, data, max_line, max_bytes=1 << 30):
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import member_lines, open_member_file

    (tmp_path / "f").write_bytes(data)
    dfd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd, _st = open_member_file(dfd, "f", max_bytes)
    finally:
        os.close(dfd)
    try:
        return list(member_lines(fd, max_line, max_bytes))
    finally:
        os.close(fd)


def test_member_lines_cap_long_lines_across_read_chunks(tmp_path):
    long = b"x" * 200000 + b"\n"  # spans several 64 KiB reads
    assert _lines(tmp_path, b"a\n" + long + b"b\nlast", 100) == [b"a\n", None, b"b\n", b"last"]
    assert _lines(tmp_path, b"a\n" + long, 100) == [b"a\n", None]
    assert _lines(tmp_path, b"x" * 70000, 100) == [None]
    assert _lines(tmp_path, b"ab\n" * 50000, 3) == [b"ab\n"] * 50000
    assert _lines(tmp_path, b"abc\n", 3) == [None]


def test_member_file_refuses_links_fifos_and_size(tmp_path):
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import MemberFileError, read_member_file

    (tmp_path / "ok").write_bytes(b"12345")
    os.symlink("ok", str(tmp_path / "link"))
    os.mkfifo(str(tmp_path / "fifo"))
    dfd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_member_file(dfd, "ok", 5) == b"12345"
        for name, max_bytes, why in (("ok", 4, "larger than"), ("link", 10, "symbolic link"), ("fifo", 10, "regular")):
            with pytest.raises(MemberFileError, match=why):
                read_member_file(dfd, name, max_bytes)
    finally:
        os.close(dfd)
    with pytest.raises(MemberFileError, match="grew"):
        _grow(tmp_path)


def _grow(tmp_path):
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import member_lines, open_member_file

    (tmp_path / "g").write_bytes(b"a\n" * 10)
    dfd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    fd, _st = open_member_file(dfd, "g", 20)
    os.close(dfd)
    try:
        with open(str(tmp_path / "g"), "ab") as fh:
            fh.write(b"b\n" * 100000)  # appended after the size check
        return list(member_lines(fd, 10, 20))
    finally:
        os.close(fd)


def test_gc_paused_restores_the_collector_as_it_was_even_on_error():
    seen = []

    @gc_paused
    def walk(fail):
        seen.append(gc.isenabled())
        if fail:
            raise OSError("boom")
        return "done"

    assert gc.isenabled()
    assert walk(False) == "done"
    with pytest.raises(OSError):
        walk(True)
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:
        walk(False)
        assert not gc.isenabled()  # a caller that paused it keeps it paused
    finally:
        gc.enable()
