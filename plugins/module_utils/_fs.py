# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Descriptor-relative filesystem walking shared by cache_dir, cache_prune and cache_report.

Rules every caller gets for free:
- a symlink is never followed (entries are lstat'ed with fstatat(AT_SYMLINK_NOFOLLOW),
  directories are opened with O_NOFOLLOW relative to their parent's descriptor);
- the walk never leaves the root's filesystem (st_dev is compared for every directory);
- a directory swapped for something else between lstat and open is detected (the opened
  descriptor's (st_dev, st_ino) must match what was lstat'ed) and skipped, so a user
  racing a root-run walk cannot redirect it;
- one pass, top-down, holding descriptors only along the current path.

Names are ``str`` with surrogate escapes (``os.fsencode`` gives back the exact bytes), so
non-UTF-8 names work.
"""

from __future__ import annotations

import errno
import functools
import gc
import json
import os
import stat

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
O_NOATIME = getattr(os, "O_NOATIME", 0)


def _open_dir(name, dir_fd):
    """os.open(name, O_DIR) with O_NOATIME where allowed (owner or CAP_FOWNER).

    Reading a directory moves its atime (relatime: once a day); a periodic walk (cache_report's
    cron, cache_prune) would otherwise make every directory look used and defeat age policies.
    """
    if O_NOATIME:
        try:
            return os.open(name, O_DIR | O_NOATIME, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.EPERM:
                raise
    return os.open(name, O_DIR, dir_fd=dir_fd)


class WalkError(OSError):
    """Raised for a root that cannot be walked safely (symlink, not a directory, ...)."""


class MissingComponent(FileNotFoundError):
    """``open_dir_nofollow`` found a component absent; ``filename`` is the first absent one."""


def open_dir_nofollow(path, create=False, created=None):
    """Open absolute ``path`` as a directory, refusing a symlink at *any* component.

    Every component is opened relative to its parent with O_NOFOLLOW, so a symlink planted
    anywhere on the way (``/mnt/storage/cache -> /etc``) makes this fail with ELOOP/ENOTDIR
    instead of walking somewhere else. Returns a descriptor the caller must close.

    A missing component raises MissingComponent (a FileNotFoundError naming it), or with
    ``create`` is made like ``mkdir -p`` would, root's own way: created 0700 (nobody can use it
    before it is finished), then 0755 for the parents; the last one stays 0700 for the caller to
    set. The absolute paths made are appended to the list ``created``.
    """
    if not path.startswith("/"):
        raise WalkError(errno.EINVAL, "not an absolute path", path)
    parts = [p for p in path.split("/") if p]

    def step(fd, part, i):
        try:
            nfd = _open_dir(part, fd)
        except FileNotFoundError:
            here = "/" + "/".join(parts[: i + 1])
            if not create:
                raise MissingComponent(errno.ENOENT, os.strerror(errno.ENOENT), here) from None
            os.mkdir(part, 0o700, dir_fd=fd)
            if created is not None:
                created.append(here)
            nfd = _open_dir(part, fd)
            if i < len(parts) - 1:
                os.fchmod(nfd, 0o755)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                here = "/" + "/".join(parts[: i + 1])
                if _is_symlink(fd, part):
                    raise WalkError(
                        errno.ELOOP, "component %s is a symbolic link; refusing to follow it" % here, path
                    ) from None
                raise WalkError(errno.ENOTDIR, "component %s is not a directory" % here, path) from None
            raise
        return nfd

    return descend(os.open("/", O_DIR), parts, step)


def descend(fd, names, step):
    """Go down ``names`` from the directory descriptor ``fd`` (owned: it is closed), one step each.

    ``step(parent_fd, name, index)`` returns the child's descriptor (or raises); each parent is
    closed once its child is open, and whatever is open is closed on error. Returns the last one.
    """
    try:
        for i, name in enumerate(names):
            nfd = step(fd, name, i)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------------------------------------
# Root's own files (locks, configuration, state): only where no other user can change the way
# ------------------------------------------------------------------------------------------
_O_TRUSTED_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_O_TRUSTED_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_O_LOCK = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


class UnsafePath(PermissionError):
    """A configuration or lock path someone other than root could change; refused."""


def _trusted_uids():
    euid = os.geteuid()
    return {0} if euid == 0 else {0, euid}


def _check_dir(st, path):
    """A directory on the way to a trusted file: owned by a trusted uid, and writable by nobody
    else unless sticky (then nobody else can rename or remove the trusted entries in it)."""
    if st.st_uid not in _trusted_uids() or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
        raise UnsafePath(errno.EPERM, "a user other than root may change this directory; refusing", path)


def open_trusted_dir(path, create=False):
    """Open absolute directory ``path``, every component from ``/`` checked with ``_check_dir``
    and opened without following a symlink; with ``create`` missing ones are made (0755, the
    last 0700). Returns the descriptor; UnsafePath if another user could change the way."""
    parts = [p for p in path.split("/") if p]

    def step(fd, part, i):
        try:
            nfd = os.open(part, _O_TRUSTED_DIR, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(part, 0o700 if i == len(parts) - 1 else 0o755, dir_fd=fd)
            nfd = os.open(part, _O_TRUSTED_DIR, dir_fd=fd)
        try:
            _check_dir(os.fstat(nfd), "/" + "/".join(parts[: i + 1]))
        except BaseException:
            os.close(nfd)
            raise
        return nfd

    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_dir(os.fstat(fd), "/")
    except BaseException:
        os.close(fd)
        raise
    return descend(fd, parts, step)


def read_trusted_json(path):
    """The JSON in ``path``, refusing anything another user than root (or the caller) could have written.

    Every directory from ``/`` is checked (``open_trusted_dir``); the file itself must be a
    regular file owned by root (or the caller when not root), writable by its owner only.
    """
    if not path.startswith("/"):
        path = os.path.abspath(path)
    directory, base = os.path.split(path)
    fd = open_trusted_dir(directory)
    try:
        ffd = os.open(base, _O_TRUSTED_READ, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(ffd, "r", encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(errno.EPERM, "not a regular file; refusing", path)
        if st.st_uid not in _trusted_uids() or st.st_mode & 0o022:
            raise UnsafePath(errno.EPERM, "a user other than root may write this file; refusing", path)
        return json.load(fh)


def open_private_dir(path):
    """``open_trusted_dir(path, create=True)`` that must also be this user's and writable by
    nobody else (a lock or state directory); UnsafePath otherwise."""
    dfd = open_trusted_dir(path, create=True)
    st = os.fstat(dfd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(dfd)
        raise UnsafePath(errno.EPERM, "the lock directory is not root's alone; refusing", path)
    return dfd


def open_lock_file(path):
    """Open (create, 0600) the lock file ``path`` in a private directory (``open_private_dir``);
    it must be a regular file of this user, private, with one link. The caller locks and closes."""
    directory, base = os.path.split(path)
    dfd = open_private_dir(directory)
    try:
        fd = os.open(base, _O_LOCK, 0o600, dir_fd=dfd)
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077 or st.st_nlink != 1:
        os.close(fd)
        raise UnsafePath(errno.EPERM, "the lock file is not a root-only (0600) regular file; refusing", path)
    return fd


def _is_symlink(dir_fd, name):
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_subdir(dir_fd, name, expect=None):
    """Open ``name`` below ``dir_fd`` without following links.

    ``expect`` is the lstat result seen before; when the opened directory is not that same
    inode (it was swapped), the descriptor is closed and None is returned.
    """
    fd = _open_dir(name, dir_fd)
    if expect is not None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            os.close(fd)
            return None
    return fd


def scan(dir_fd):
    """Return [(name, lstat_result)] for the entries of an open directory (no '.' / '..').

    An entry that vanishes between readdir and lstat is left out.
    """
    out = []
    with os.scandir(dir_fd) as it:
        for entry in it:
            try:
                out.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
    return out


class NotBelow(OSError):
    """``open_below``: a component is gone, not a directory on the root's filesystem, a mount
    point not to enter, or was replaced between lstat and open (errno says which)."""


def open_below(root_fd, parts, dev=None, mounts=()):
    """Open the directory ``parts`` (names, or a relative path 'a/b') below the verified ``root_fd``.

    Each component is lstat'ed, must be a directory (on ``dev`` when given; not listed in
    ``mounts``, a set of name tuples) and is opened with O_NOFOLLOW relative to its parent, and
    must be the very inode lstat'ed. Returns a descriptor the caller closes; NotBelow (ENOENT,
    ENOTDIR, EXDEV, ESTALE) when the path is gone or unsafe; other OSErrors (EACCES, ELOOP on a
    race) propagate.
    """
    if isinstance(parts, str):
        parts = [p for p in parts.split("/") if p]
    parts = tuple(parts)

    def step(fd, name, i):
        here = "/".join(parts[: i + 1])
        if parts[: i + 1] in mounts:
            raise NotBelow(errno.EXDEV, "a mount point", here)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise NotBelow(errno.ENOENT, os.strerror(errno.ENOENT), here) from None
        if not stat.S_ISDIR(st.st_mode):
            raise NotBelow(errno.ENOTDIR, "not a directory (or a symbolic link)", here)
        if dev is not None and st.st_dev != dev:
            raise NotBelow(errno.EXDEV, "on another filesystem", here)
        nfd = open_subdir(fd, name, expect=st)
        if nfd is None:
            raise NotBelow(errno.ESTALE, "directory replaced; skipped", here)
        return nfd

    return descend(os.dup(root_fd), parts, step)


def open_parent(root_fd, parts, dev, mounts):
    """Open the directory holding ``parts[-1]`` below ``root_fd``; None if it is gone/unsafe."""
    try:
        return open_below(root_fd, parts[:-1], dev, mounts)
    except NotBelow:
        return None


def gc_paused(func):
    """Run ``func`` with Python's cyclic garbage collector paused, restored after. A walk keeps
    about one object per entry, none in a reference cycle; with the collector on, every few
    thousand new objects it scans all live ones again (measured: 15 to 20% of a 250k-entry
    report)."""

    @functools.wraps(func)
    def paused(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return paused


class Walker:
    """Top-down, descriptor-relative walk of one tree.

    ``for d in Walker(root_fd).walk():`` yields a ``Dir`` per directory with
    ``rel`` (path relative to the root, '' for the root), ``fd`` (open while the caller holds
    the item: use it with ``dir_fd=`` calls), ``st`` (the directory's own lstat) and
    ``entries`` (list of (name, lstat)). Remove names from ``d.skip`` (a set) to keep the walk
    out of a subdirectory. Errors on a subtree are recorded in ``errors`` as (rel, str(exc))
    and the walk goes on.

    ``one_fs`` keeps the walk on the root's filesystem; directories on other devices are
    listed in ``other_fs`` (relative paths) and not entered. ``prefix`` is the relative path
    of ``root_fd`` itself when it is a subtree of a larger walk: every ``rel`` starts with it.

    ``gid`` (the cache group) makes the walk see only what the cache owns: an entry whose group
    is another one (moved or hard-linked in by a member, see docs/security.md) is left out of
    ``entries``, a directory of another group is never entered, and both are tallied in
    ``foreign`` (a ``Foreign``: count, bytes, a sample of paths) and in the Dir's ``foreign``
    count. The check is one integer comparison on the lstat the walk already made.
    """

    def __init__(self, root_fd, one_fs=True, max_errors=100, prefix="", gid=None):
        self.root_fd = root_fd
        self.prefix = prefix
        self.one_fs = one_fs
        self.gid = gid
        self.foreign = Foreign()
        self.errors = []
        self.error_count = 0
        self.other_fs = []
        self.max_errors = max_errors
        self.root_st = os.fstat(root_fd)

    def _error(self, rel, exc):
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append((rel or ".", "%s" % (exc.strerror or exc)))

    def walk(self):
        """Yield a Dir per directory, parents before children; descriptors held = depth."""
        root_fd = os.dup(self.root_fd)
        frames = []
        try:
            item = self.visit(self.prefix, root_fd, self.root_st)
            if item is None:
                return
            yield item
            frames.append((root_fd, self.prefix, iter(self.subdirs(item))))
            root_fd = None
            while frames:
                fd, rel, children = frames[-1]
                nxt = next(children, None)
                if nxt is None:
                    frames.pop()
                    os.close(fd)
                    continue
                name, est = nxt
                crel = rel + "/" + name if rel else name
                cfd = self.open_child(fd, crel, name, est)
                if cfd is None:
                    continue
                item = self.visit(crel, cfd, est)
                if item is None:
                    os.close(cfd)
                    continue
                frames.append((cfd, crel, None))
                yield item
                frames[-1] = (cfd, crel, iter(self.subdirs(item)))
        finally:
            if root_fd is not None:
                os.close(root_fd)
            for fd, _rel, _it in frames:
                os.close(fd)

    # The steps of the walk, also used one level at a time (cache_dir's breadth-first split).
    def visit(self, rel, fd, st):
        """A Dir for the open directory ``fd`` with its entries; None (error recorded) if unreadable."""
        try:
            entries = scan(fd)
        except OSError as exc:
            self._error(rel, exc)
            return None
        d = Dir(rel, fd, st, entries)
        gid = self.gid
        if gid is not None:
            for _name, est in entries:
                if est.st_gid != gid:
                    d.entries = self.foreign.split(rel, entries, gid)
                    d.foreign = len(entries) - len(d.entries)
                    break
        return d

    def open_child(self, dir_fd, rel, name, st):
        """Open subdirectory ``name`` (lstat'ed as ``st``, relative path ``rel``) of ``dir_fd``.

        None, with the error recorded, when it cannot be opened or is no longer that directory.
        """
        try:
            cfd = open_subdir(dir_fd, name, expect=st)
        except OSError as exc:
            self._error(rel, exc)
            return None
        if cfd is None:
            self._error(rel, OSError(errno.ESTALE, "directory replaced during the walk; skipped"))
        return cfd

    def subdirs(self, item):
        """[(name, lstat)] of the subdirectories of ``item`` to enter (other filesystems recorded)."""
        dev = self.root_st.st_dev
        out = []
        for name, est in item.entries:
            if not stat.S_ISDIR(est.st_mode) or name in item.skip:
                continue
            if self.one_fs and est.st_dev != dev:
                self.other_fs.append(item.rel + "/" + name if item.rel else name)
                continue
            out.append((name, est))
        return out


class Dir:
    __slots__ = ("rel", "fd", "st", "entries", "skip", "foreign")

    def __init__(self, rel, fd, st, entries):
        self.rel = rel
        self.fd = fd
        self.st = st
        self.entries = entries
        self.skip = set()
        self.foreign = 0  # entries of another group left out of ``entries`` (Walker ``gid``)


class Foreign:
    """Tally of entries that are not the cache's (their group is not the cache group).

    ``count`` entries, ``bytes`` their allocated size (a directory's own blocks: it is not
    entered), ``sample`` up to ``SAMPLE`` relative paths, as the results show them.
    """

    SAMPLE = 10

    def __init__(self):
        self.count = 0
        self.bytes = 0
        self.sample = []

    def add(self, rel, st):
        self.count += 1
        self.bytes += st.st_blocks * 512
        if len(self.sample) < self.SAMPLE:
            self.sample.append(rel)

    def split(self, rel, entries, gid):
        """The entries of group ``gid``; the others are tallied here."""
        keep = []
        base = rel + "/" if rel else ""
        for name, est in entries:
            if est.st_gid == gid:
                keep.append((name, est))
            else:
                self.add(base + name, est)
        return keep

    def merge(self, other):
        """Add another tally (a worker's, or a ``as_dict()`` result) to this one."""
        if isinstance(other, dict):
            count, nbytes, sample = other["count"], other["bytes"], other["sample"]
        else:
            count, nbytes, sample = other.count, other.bytes, other.sample
        self.count += count
        self.bytes += nbytes
        self.sample.extend(sample[: max(0, self.SAMPLE - len(self.sample))])

    def as_dict(self):
        return {"count": self.count, "bytes": self.bytes, "sample": list(self.sample)}


# ------------------------------------------------------------------------------------------
# Reading files cache-group members wrote (issue 11: every member is an untrusted local user)
# ------------------------------------------------------------------------------------------
# Opened relative to a verified directory descriptor, never following a symlink (O_NOFOLLOW),
# never blocking on a FIFO or a device (O_NONBLOCK; the type is then checked on the descriptor),
# never becoming a controlling terminal (O_NOCTTY), and without moving the atime the tool reads
# as its use signal (O_NOATIME, where root or the owner may).
O_MEMBER_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_READ_CHUNK = 1 << 16


class MemberFileError(OSError):
    """A member-written file refused: not a regular file, a symlink, too big, unreadable."""


def open_member_file(dir_fd, name, max_bytes):
    """Open regular file ``name`` below ``dir_fd`` for reading; ``(fd, fstat)``, the caller closes fd.

    Raises MemberFileError for a symlink, anything not a regular file (FIFO, socket, device,
    directory), a file over ``max_bytes`` or one that cannot be opened.
    """
    fd = None
    if O_NOATIME:
        try:
            fd = os.open(name, O_MEMBER_READ | O_NOATIME, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.EPERM:
                _refuse(name, exc)
    if fd is None:
        try:
            fd = os.open(name, O_MEMBER_READ, dir_fd=dir_fd)
        except OSError as exc:
            _refuse(name, exc)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MemberFileError(errno.EINVAL, "not a regular file", name)
        if st.st_size > max_bytes:
            raise MemberFileError(errno.EFBIG, "larger than %d bytes" % max_bytes, name)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _refuse(name, exc):
    if exc.errno == errno.ELOOP:
        raise MemberFileError(errno.ELOOP, "a symbolic link; not followed", name) from None
    raise MemberFileError(exc.errno, exc.strerror or str(exc), name) from None


def read_member_file(dir_fd, name, max_bytes):
    """The bytes of a member-written regular file of at most ``max_bytes`` (MemberFileError else).

    At most ``max_bytes + 1`` bytes are read, so a file growing while it is read is refused too.
    """
    fd, _st = open_member_file(dir_fd, name, max_bytes)
    try:
        chunks = []
        left = max_bytes + 1
        while left > 0:
            buf = os.read(fd, min(_READ_CHUNK, left))
            if not buf:
                break
            chunks.append(buf)
            left -= len(buf)
    except OSError as exc:
        raise MemberFileError(exc.errno, exc.strerror or str(exc), name) from None
    finally:
        os.close(fd)
    if left <= 0:
        raise MemberFileError(errno.EFBIG, "grew over %d bytes while read" % max_bytes, name)
    return b"".join(chunks)


def member_lines(fd, max_line, max_bytes):
    """Yield the lines of an open member-written file (bytes, newline kept) with bounded memory.

    A line longer than ``max_line`` bytes (newline included) is yielded as None, once, and never
    held whole. Reading stops after ``max_bytes``: MemberFileError then (the file grew).
    """
    buf = b""
    skipping = False
    total = 0
    while True:
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise MemberFileError(errno.EFBIG, "grew over %d bytes while read" % max_bytes)
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if skipping:
                skipping = False
            elif nl + 1 - start > max_line:
                yield None
            else:
                yield buf[start : nl + 1]
            start = nl + 1
        buf = buf[start:]
        if len(buf) > max_line:
            if not skipping:
                yield None
                skipping = True
            buf = b""
    if buf and not skipping:
        yield buf if len(buf) <= max_line else None


# Mount points, free space and sizes (cache_prune, cache_report, the host commands)
def _unescape_mount(path):
    out = []
    i = 0
    while i < len(path):
        if path[i] == "\\" and i + 3 < len(path) and path[i + 1 : i + 4].isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mountinfo():
    """[(mount point, options)] of this process's mounts from /proc/self/mountinfo ([] if unreadable)."""
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                f = line.split()
                if len(f) >= 6:
                    out.append((_unescape_mount(f[4]), f[5]))
    except OSError:
        pass
    return out


def mounts_below(abs_path):
    """Relative paths (tuples) of mount points strictly below ``abs_path``, from mountinfo."""
    prefix = abs_path.rstrip("/") + "/"
    return {tuple(p for p in mp[len(prefix) :].split("/") if p) for mp, _opts in mountinfo() if mp.startswith(prefix)}


def mount_options(abs_path):
    """Options string (e.g. 'rw,noatime') of the mount holding ``abs_path``; '' if unknown."""
    best, opts = "", ""
    for mp, mopts in mountinfo():
        if (abs_path == mp or abs_path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
            best, opts = mp, mopts
    return opts


def free_bytes(fd):
    sv = os.fstatvfs(fd)
    return sv.f_bavail * sv.f_frsize


def human(n):
    """1536 -> '1.5KiB' (powers of 1024, as parse_size reads them)."""
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d%s" % (n, unit)) if unit == "B" else ("%.1f%s" % (n, unit))
        n /= 1024.0
    return "%dB" % n


def humanize(n):
    """Bytes as du -h prints them (powers of 1024): 0B, 512B, 4.0K, 2.5G, 500M, 1.2T."""
    if n is None:
        return "-"
    n = float(n)
    for suffix in ("B", "K", "M", "G", "T", "P"):
        if abs(n) < 1024 or suffix == "P":
            if suffix == "B":
                return "%dB" % n
            return ("%.1f%s" % (n, suffix)) if abs(n) < 10 else ("%.0f%s" % (n, suffix))
        n /= 1024.0
    return "%.0fE" % n  # pragma: no cover


def write_atomic(path, text, mode=0o644, gid=None, uid=None):
    """Write ``text`` to ``path`` atomically: a temporary file created exclusively in the target
    directory, then renamed over ``path``; a reader sees the old or the new file, never half of one.

    The directory is opened without following a symlink at any component. Run as root, it must
    be root's own and writable by nobody else (a member could otherwise swap names in it under
    root's hands): PermissionError if not. The file gets ``mode`` and, with ``gid``, the owner
    root (the writer) and that group, set on the descriptor before the rename, so it is never
    readable by more than ``mode`` says. ``text`` may be bytes; ``uid``: another owner, set
    the same way.
    """
    directory, base = os.path.split(path)
    dfd = open_dir_nofollow(directory or os.getcwd())
    try:
        st = os.fstat(dfd)
        if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
            raise PermissionError(
                errno.EPERM, "the directory is not root's own or others may write to it; refusing", directory
            )
        tmp = ".%s.%s.tmp" % (base, os.urandom(6).hex())
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(text if isinstance(text, bytes) else text.encode("utf-8"))
                fh.flush()
                if gid is not None or uid is not None:
                    os.fchown(fh.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
                os.fchmod(fh.fileno(), mode)
                os.fsync(fh.fileno())
            os.replace(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)
