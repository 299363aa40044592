# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""conda pkgs: unit = a package (extracted directory + tarball); linked packages kept."""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format, names
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    MemberFileError,
    member_lines,
    open_member_file,
    open_parent,
)

# conda's pkgs/urls.txt: one URL per package ever fetched (a few hundred bytes each): some 100 KiB
# for thousands of packages. A line is a URL (a file:// one at most PATH_MAX).
CONDA_URLS_MAX = 16 << 20
CONDA_URL_LINE_MAX = 8192

_CONDA_EXT = (".tar.bz2", ".conda")


def _conda_offset(parts):
    return 1 if parts and parts[0] == "pkgs" else -1


class _CondaCollector(Collector):
    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.flat = None

    def _off(self, parts):
        if self.flat is None:
            # the walked dir is pkgs/ itself when it has urls.txt and no pkgs/ child
            try:
                os.stat("urls.txt", dir_fd=self.root_fd, follow_symlinks=False)
                os.stat("pkgs", dir_fd=self.root_fd, follow_symlinks=False)
                self.flat = False
            except OSError:
                try:
                    os.stat("urls.txt", dir_fd=self.root_fd, follow_symlinks=False)
                    self.flat = True
                except OSError:
                    self.flat = False
        return 0 if self.flat else _conda_offset(parts)

    def enter(self, parts, st, d):
        off = self._off(parts)
        if off < 0 or len(parts) <= off:
            return True
        if len(parts) == off + 1:
            if parts[off] in ("cache", ".trash"):
                return True
            self.add_dir(parts[off], "conda package", parts, st)
        return True

    def entry(self, parts, name, st, d):
        off = self._off(parts)
        if off < 0 or len(parts) <= off:
            self.other(st)
            return
        first = parts[off]
        if len(parts) == off + 1:
            for ext in _CONDA_EXT:
                if name.endswith(ext):
                    self.add(name[: -len(ext)], "conda package", parts, st)
                    return
            self.other(st)  # urls.txt, urls, *.json ...
            return
        if first == "cache":
            self.add("cache/" + "/".join(parts[off + 1 :]), "index cache", parts, st)
        elif first == ".trash":
            self.add(".trash/" + parts[off + 1], "trash", parts[: off + 2], st)
        else:
            timed = parts[off + 1 :] == ("info", "repodata_record.json")
            u = self.add(first, "conda package", parts[: off + 1], st, timed=timed)
            if st.st_nlink > 1 and stat.S_ISREG(st.st_mode) and u.keep is None:
                u.keep = "hard-linked into an environment"


class CondaFormat(Format):
    name = "conda"
    description = "conda pkgs: unit = a package (extracted directory + tarball); linked packages kept"
    collector_class = _CondaCollector
    last_use = "the package's info/repodata_record.json and tarball times (its other files keep their build times)"
    detect_order = 60

    def detect(self, root_fd, top):
        return "urls.txt" in top or ("pkgs" in top and "urls.txt" in names(root_fd, "pkgs"))

    def post_prune(self, root_fd, collection, removed_keys, records=None):
        gone = {u.key for u in collection.units if u.kind == "conda package" and u.key in removed_keys}
        if not gone:
            return []
        notes = []
        for prefix in (("pkgs",), ()):
            try:
                n = rewrite_conda_urls(root_fd, prefix, gone)
            except MemberFileError as exc:
                notes.append("%s left as it is: %s" % ("/".join(prefix + ("urls.txt",)), exc.strerror))
                break
            if n is not None:
                if n:
                    notes.append("dropped %d line(s) from %s" % (n, "/".join(prefix + ("urls.txt",))))
                break
        return notes


def rewrite_conda_urls(root_fd, prefix, gone):
    """Drop urls.txt lines of removed packages; None when there is no urls.txt under prefix.

    urls.txt is member-written: it is opened with ``_fs.open_member_file`` (no symlink, no FIFO,
    at most ``CONDA_URLS_MAX``), read line by line (lines over
    ``CONDA_URL_LINE_MAX`` are refused) and the kept lines stream into a new file made
    O_EXCL next to it (the original's owner and permission bits), fsync'ed and renamed over it
    only if urls.txt is still the file that was read. A file with holes is never rewritten (that
    would allocate them). Whatever is refused raises MemberFileError and leaves urls.txt as it is.
    Returns the number of lines dropped.
    """
    dev = os.fstat(root_fd).st_dev
    pfd = open_parent(root_fd, prefix + ("urls.txt",), dev, ())
    if pfd is None:
        return None
    try:
        try:
            fd, st = open_member_file(pfd, "urls.txt", CONDA_URLS_MAX)
        except MemberFileError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        try:
            if _has_hole(fd, st.st_size):
                raise MemberFileError(errno.EINVAL, "sparse; never rewritten (that would allocate its holes)")
            return _filter_conda_urls(pfd, fd, st, gone)
        finally:
            os.close(fd)
    finally:
        os.close(pfd)


def _has_hole(fd, size):
    try:
        hole = os.lseek(fd, 0, os.SEEK_HOLE)
    except (OSError, AttributeError):
        return False  # no SEEK_HOLE here: the line cap still refuses a long run of zeros
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return hole < size


def _conda_url_dist(line):
    base = line.strip().rsplit(b"/", 1)[-1].decode("utf-8", "surrogateescape")
    for ext in (".tar.bz2", ".conda"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return None


def _filter_conda_urls(pfd, fd, st, gone):
    tmp = ".urls.txt.mlinfra-prune-%s" % os.urandom(6).hex()
    wfd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600, dir_fd=pfd
    )
    done = False
    try:
        dropped = 0
        pending = []
        for line in member_lines(fd, CONDA_URL_LINE_MAX, CONDA_URLS_MAX):
            if line is None:
                raise MemberFileError(errno.EINVAL, "a line over %d bytes" % CONDA_URL_LINE_MAX)
            if _conda_url_dist(line) in gone:
                dropped += 1
                continue
            pending.append(line)
            if len(pending) >= 1024:
                _write_all(wfd, b"".join(pending))
                pending = []
        if not dropped:
            return 0
        _write_all(wfd, b"".join(pending))
        try:
            os.fchown(wfd, st.st_uid, st.st_gid)
        except OSError:
            pass
        os.fchmod(wfd, stat.S_IMODE(st.st_mode) & 0o777)  # after fchown, which may clear bits
        os.fsync(wfd)
        now = os.stat("urls.txt", dir_fd=pfd, follow_symlinks=False)
        if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
            raise MemberFileError(errno.EAGAIN, "changed while it was rewritten")
        os.rename(tmp, "urls.txt", src_dir_fd=pfd, dst_dir_fd=pfd)
        done = True
        return dropped
    finally:
        os.close(wfd)
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- cache_verify ---------------------------------------------------------------------------
CONDA_RECORD_MAX = 1 << 20


def verify(ctx):
    """A package tarball (``<dist>.conda`` / ``<dist>.tar.bz2``) against the ``sha256`` (else the
    ``md5``) conda wrote into the extracted package's ``info/repodata_record.json`` from the
    channel's repodata when it fetched it. A tarball with no such record, and the extracted files,
    are unverifiable. A corrupt tarball goes alone: conda fetches it again when it needs it."""
    import json

    flat = None
    records = {}
    tarballs = []
    for d in ctx.walk():
        base = ctx.parts(d)
        if flat is None:
            top = {e[0] for e in d.entries}
            flat = "urls.txt" in top and "pkgs" not in top
        off = 0 if flat else _conda_offset(base + ("",))
        for name, st in d.entries:
            if not stat.S_ISREG(st.st_mode):
                continue
            parts = base + (name,)
            if off >= 0 and len(parts) == off + 1 and name.endswith(_CONDA_EXT):
                tarballs.append((parts, st))
                continue
            if off >= 0 and len(parts) == off + 3 and parts[off + 1 :] == ("info", "repodata_record.json"):
                data = ctx.read_small(d.fd, name, CONDA_RECORD_MAX)
                try:
                    rec = json.loads(data) if data is not None else None
                except ValueError:
                    rec = None
                if isinstance(rec, dict):
                    for algo in ("sha256", "md5"):
                        want = rec.get(algo)
                        if isinstance(want, str) and want and all(c in "0123456789abcdefABCDEF" for c in want):
                            records[parts[off]] = "%s:%s" % (algo, want.lower())
                            break
            ctx.unverifiable(parts, st)
    for parts, st in tarballs:
        name = parts[-1]
        dist = next(name[: -len(ext)] for ext in _CONDA_EXT if name.endswith(ext))
        want = records.get(dist)
        if want is None:
            ctx.unverifiable(parts, st)
        else:
            ctx.check(parts, st, "digest", want, "%s (repodata_record.json)" % want.split(":", 1)[0])


CondaFormat.verifier = staticmethod(verify)
