# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pruning engine behind the cache_prune module.

- ``Pruner(path, ...)``: opens the cache directory with ``_fs.open_dir_nofollow``, takes the prune
  lock (as root a root-only lock file under ``/run/mlinfra-shared-cache``, which members cannot
  open; bounded wait), tests the tool's own lock, walks once with
  ``_fs.Walker`` and the format's collector (``_formats``), selects units (age, then LRU for
  ``max_size``/``min_free``) and removes them relative to open descriptors.
- Removal never follows a symlink (every directory is opened O_NOFOLLOW relative to its parent
  and must be the inode that was lstat'ed), never leaves the filesystem or enters a mount point,
  and skips anything a process holds a lock on (flock, POSIX or OFD lock, from /proc/locks,
  re-read before each unit) together with everything below it.
- Just before a unit leaves it is checked again (as systemd-tmpfiles does): a file in it written,
  replaced, renamed or linked in since the walk began (ctime/mtime newer than the run's fresh trash
  directory), read since it was chosen (atime, unless age_by is mtime), or locked keeps the unit.
  Then all its paths are renamed into the root-only trash (``Trash``, same filesystem, in one of
  the format's ``trash_parents``: never where the tool's own scan looks, ``hub/.locks`` for a hub
  cache), the move checked (the very inodes checked, nothing made again in their places) and a
  unit changed in between put back whole: pip's header and body are never split. A killed prune
  leaves whole units in its trash; the next run purges the leftovers first thing.
- A root-only intent journal (``Journal``, in the prune state directory, ``lock_dir``) records a
  run's decisions while it goes: the units chosen, the per-file LRU cut, each directory's mtime
  before entries left it. The run after a killed one finishes that run's job (the same units, the
  same cut) and judges the directories the killed runs emptied by their earlier times, so it
  leaves exactly what one uninterrupted run would have left. A completed run deletes it.
- Read-only directories (Go's module cache) are made writable (fchmod on the opened descriptor)
  before their entries are removed.
- Only what the cache owns is pruned (docs/security.md): the walk leaves out entries whose group
  is not the cache group and never enters such directories (``_fs.Walker`` ``gid``), and every
  removal step checks the group again on the lstat it makes, so an entry a member moved in
  after the walk is left too. Such entries are counted in the result's ``foreign``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import fnmatch
import itertools
import json
import os
import stat
import time
from array import array
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import is_prune_trash
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    Foreign,
    Walker,
    free_bytes,
    gc_paused,
    human,
    mount_options,
    mounts_below,
    open_dir_nofollow,
    open_lock_file,
    open_parent,
    open_private_dir,
    open_subdir,
    scan,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._parallel import IO_THREADS

_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


# file system timestamps lag time.time() by up to a clock tick (Journal.begin)
TIMESTAMP_SLACK_NS = 50_000_000


class Busy(Exception):
    """The cache (or a unit) is in use: a lock is held."""


# ------------------------------------------------------------------------------------------
# locks held by other processes
# ------------------------------------------------------------------------------------------
class ProcLocks:
    """Set of (major, minor, inode) that have a lock (flock, POSIX, OFD) held, from /proc/locks.

    When /proc/locks cannot be read, ``held`` falls back to trying a non-blocking flock on the
    file itself (which only sees flock locks).
    """

    def __init__(self, exclude_pid=None):
        self.exclude_pid = exclude_pid if exclude_pid is not None else os.getpid()
        self.available = True
        self.keys = set()
        self.stamp = 0.0
        self.refresh()

    def refresh(self):
        keys = set()
        try:
            with open("/proc/locks", "rb") as fh:
                for line in fh:
                    f = line.split()
                    if len(f) < 6 or f[1] == b"->":
                        continue
                    try:
                        pid = int(f[4])
                        maj, mnr, ino = f[5].split(b":")
                        key = (int(maj, 16), int(mnr, 16), int(ino))
                    except ValueError:
                        continue
                    if pid == self.exclude_pid:
                        continue
                    keys.add(key)
        except OSError:
            self.available = False
        self.keys = keys
        self.stamp = time.monotonic()

    def on_device(self, dev):
        """True when some lock is held on the filesystem ``dev`` (or locks cannot be listed)."""
        if not self.available:
            return True
        key = (os.major(dev), os.minor(dev))
        return any(k[:2] == key for k in self.keys)

    def maybe_refresh(self, interval=1.0):
        if time.monotonic() - self.stamp >= interval:
            self.refresh()

    def held(self, st, dir_fd=None, name=None):
        if self.available:
            return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in self.keys
        if dir_fd is None or not stat.S_ISREG(st.st_mode):
            return False
        return flock_held(dir_fd, name)


def flock_held(dir_fd, name):
    """True when another open file description holds an flock on ``name`` (never follows)."""
    try:
        fd = os.open(name, _O_FILE, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


def lock_dir_flock(fd, timeout):
    """Exclusive flock on an open file or directory, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + max(0, timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


# Where root's prune keeps its mutual exclusion: a root-only directory (members cannot open a file
# there, so they cannot hold the lock and switch the prune off, as they could with an flock on the
# member-writable cache directory itself). The nightly command's own lock lives there too, and its
# hardened unit may write only there (ReadWritePaths).
PRUNE_LOCK_DIR = "/var/lib/mlinfra-shared-cache/prune"


def state_dir(lock_dir=None):
    """The prune's private directory (made 0700 when missing, see ``_fs.open_private_dir``)."""
    return open_private_dir(lock_dir or PRUNE_LOCK_DIR)


# A tool's lock held across prunes for longer than this is not an install in progress: the prune
# goes on without it (units used within min_age and entries a process locks are still kept).
TOOL_LOCK_STALE = 24 * 3600


def tool_lock_seen(cache_fd, parts, held, lock_dir=None, now=None):
    """Remember when a tool lock of this cache was first found held; returns that time (``held``)
    or None (lock free: the record is dropped; or no private state directory, as a non-root user).

    The record is a file in the prune's root-only state directory whose mtime is the first time
    the lock was seen held, so a member who holds the lock through every nightly run delays the
    prune of those units by TOOL_LOCK_STALE at most, never for ever."""
    if lock_dir is None and os.geteuid() != 0:
        return None
    name = _tool_lock_record(os.fstat(cache_fd), parts)
    try:
        dfd = state_dir(lock_dir)
    except OSError:
        return None
    try:
        if not held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
            return None
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            os.close(fd)
        except FileExistsError:
            pass
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        return min(st.st_mtime, now if now is not None else time.time())
    finally:
        os.close(dfd)


def _tool_lock_record(cache_st, parts):
    return "toollock-%x-%d-%s" % (cache_st.st_dev, cache_st.st_ino, "_".join(parts).replace("/", "_"))


class LockRecords:
    """``tool_lock_seen`` for the many small locks of one cache (a store entry's ``<hash>.lock``):
    the cache's records are listed once, so a lock found free costs nothing when it has none.

    ``seen(parts, held)`` is ``tool_lock_seen``; ``stale(parts)`` records the lock as held and
    tells whether it has been found held (or unusable) by every run for TOOL_LOCK_STALE, so that a
    member holding an entry's lock cannot keep root's job away from that entry for ever;
    ``taken`` lists the locks a run went on without."""

    def __init__(self, cache_fd, lock_dir=None, now=None):
        self.cache_fd = cache_fd
        self.lock_dir = lock_dir
        self.now = now
        self.cache_st = os.fstat(cache_fd)
        self.names = None  # this cache's record names, listed at the first lock found free
        self.taken = []

    def _listed(self):
        if self.names is None:
            self.names = set()
            if self.lock_dir is not None or os.geteuid() == 0:
                prefix = _tool_lock_record(self.cache_st, ())
                try:
                    dfd = state_dir(self.lock_dir)
                except OSError:
                    return self.names
                try:
                    self.names = {n for n in os.listdir(dfd) if n.startswith(prefix)}
                finally:
                    os.close(dfd)
        return self.names

    def seen(self, parts, held):
        name = _tool_lock_record(self.cache_st, parts)
        if not held and name not in self._listed():
            return None
        since = tool_lock_seen(self.cache_fd, parts, held, self.lock_dir, self.now)
        if held and since is not None:
            self._listed().add(name)
        else:
            self._listed().discard(name)
        return since

    def forget(self, prefix, keep):
        """Drop the records of this cache's locks below ``prefix`` (parts) whose rest (the record
        name past the prefix's) is not in ``keep``: the entries they were kept for are gone, and
        a record nothing will look at again must not stay in root's directory for ever (a member
        who makes entries, holds their locks and removes them would fill it). The count dropped."""
        base = _tool_lock_record(self.cache_st, prefix) + "_"
        gone = [n for n in self._listed() if n.startswith(base) and n[len(base) :] not in keep]
        if not gone:
            return 0
        dfd = state_dir(self.lock_dir)
        try:
            for n in gone:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(n, dir_fd=dfd)
                self.names.discard(n)
        finally:
            os.close(dfd)
        return len(gone)

    def stale(self, parts):
        since = self.seen(parts, True)
        now = self.now if self.now is not None else time.time()
        if since is None or now - since < TOOL_LOCK_STALE:
            return False
        self.taken.append("/".join(parts))
        return True


def prune_lock(cache_fd, timeout, lock_dir=None):
    """Take the prune lock of the open cache directory; the lock's fd, or None when another prune
    holds it past ``timeout``. As root (or with ``lock_dir``) it is an exclusive flock on
    ``<lock_dir>/prune-<dev>-<ino>.lock``, a 0600 root-owned file in a directory only its owner can
    write; for other users, who cannot be attacked by root's job, the cache directory itself."""
    if lock_dir is None and os.geteuid() != 0:
        fd = os.dup(cache_fd)
        if lock_dir_flock(fd, timeout):
            return fd
        os.close(fd)
        return None
    cst = os.fstat(cache_fd)
    fd = open_lock_file(os.path.join(lock_dir or PRUNE_LOCK_DIR, "prune-%x-%d.lock" % (cst.st_dev, cst.st_ino)))
    if lock_dir_flock(fd, timeout):
        return fd
    os.close(fd)
    return None


def take_tool_lock(root_fd, parts, kind, timeout, check_only):
    """Take (or, in check mode, test) a tool's own lock. Returns an fd to keep open, or -1.

    Raises Busy when the tool holds it. A missing lock file is no lock.
    """
    try:
        pfd = open_parent(root_fd, parts, os.fstat(root_fd).st_dev, ())
    except OSError:
        return -1
    if pfd is None:
        return -1
    try:
        try:
            st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return -1
        if not stat.S_ISREG(st.st_mode):
            return -1
        flags = (os.O_RDONLY if check_only or kind == "flock" else os.O_RDWR) | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(parts[-1], flags | getattr(os, "O_CLOEXEC", 0), dir_fd=pfd)
    finally:
        os.close(pfd)
    deadline = time.monotonic() + max(0, timeout)
    while True:
        try:
            if kind == "fcntl":
                if check_only:
                    # F_GETLK reports a conflicting POSIX lock without taking one
                    import struct

                    buf = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
                    res = fcntl.fcntl(fd, fcntl.F_GETLK, buf)
                    if struct.unpack("hhqqi", res)[0] != fcntl.F_UNLCK:
                        raise OSError(errno.EAGAIN, "held")
                else:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if check_only:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            if check_only:
                os.close(fd)
                return -1
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            raise Busy("%s is locked by its tool (%s lock held)" % ("/".join(parts), kind))
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------
# descriptor-relative removal
# ------------------------------------------------------------------------------------------
class RemoveStats:
    """What a removal did. ``gid``: only entries of this group (the cache's) are removed; others
    are left where they are and tallied in ``foreign``."""

    __slots__ = ("files", "dirs", "bytes", "disk", "busy", "errors", "gid", "foreign")

    def __init__(self, gid=None):
        self.files = 0
        self.dirs = 0
        self.bytes = 0
        self.disk = 0
        self.busy = []
        self.errors = []
        self.gid = gid
        self.foreign = Foreign()

    def not_ours(self, parts, st):
        """True (and tallied) when ``st`` is not of the cache group."""
        if self.gid is None or st.st_gid == self.gid:
            return False
        self.foreign.add("/".join(parts), st)
        return True

    def merge(self, other):
        """Add what another removal did (one made on another thread) to this one."""
        self.files += other.files
        self.dirs += other.dirs
        self.bytes += other.bytes
        self.disk += other.disk
        self.busy.extend(other.busy)
        self.errors.extend(other.errors)
        self.foreign.merge(other.foreign)


@contextlib.contextmanager
def entry_below(root_fd, parts, dev):
    """``(parent fd, lstat)`` of ``parts`` below ``root_fd`` inside the block, ``(None, None)`` when
    the entry or a directory on the way is gone or unsafe (see open_parent); the parent is closed after."""
    pfd = open_parent(root_fd, parts, dev, ())
    if pfd is None:
        yield None, None
        return
    try:
        try:
            st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
        except OSError:
            yield None, None
            return
        yield pfd, st
    finally:
        os.close(pfd)


class Parents:
    """The open parent directories of one unit's paths (``open_parent`` once per directory while
    the unit is re-checked, moved and checked again); ``close()`` when the unit is done."""

    def __init__(self, root_fd, dev, mounts=()):
        self.root_fd = root_fd
        self.dev = dev
        self.mounts = mounts
        self.fds = {}

    def get(self, parts):
        key = parts[:-1]
        if key not in self.fds:
            self.fds[key] = open_parent(self.root_fd, parts, self.dev, self.mounts)
        return self.fds[key]

    def lstat(self, parts):
        """``(parent fd, lstat)`` of ``parts``; ``(None, None)`` when gone or unsafe."""
        pfd = self.get(parts)
        if pfd is None:
            return None, None
        try:
            return pfd, os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
        except OSError:
            return None, None

    def close(self):
        for fd in self.fds.values():
            if fd is not None:
                os.close(fd)
        self.fds = {}


def remove_path(root_fd, parts, locks=None, mounts=(), stats=None, dev=None):
    """Remove file or directory tree ``parts`` (tuple) below ``root_fd``; returns ``stats``.

    Returns None when the path is gone or could not be reached safely. Locked entries (and
    everything under a locked directory) are left and listed in ``stats.busy``.
    """
    if stats is None:
        stats = RemoveStats()
    if dev is None:
        dev = os.fstat(root_fd).st_dev
    if not parts or parts in mounts:
        return None
    pfd = open_parent(root_fd, parts, dev, mounts)
    if pfd is None:
        return None
    try:
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if st.st_dev != dev:
            stats.errors.append(("/".join(parts), "on another filesystem; left"))
            return stats
        if stats.not_ours(parts, st):
            return stats
        if locks is not None and locks.held(st, pfd, name):
            stats.busy.append("/".join(parts))
            return stats
        if stat.S_ISDIR(st.st_mode):
            _rmtree(pfd, name, st, parts, locks, mounts, stats, dev)
        else:
            _unlink(pfd, name, st, parts, stats)
    finally:
        os.close(pfd)
    return stats


def _unlink(dir_fd, name, st, parts, stats):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        stats.errors.append(("/".join(parts), exc.strerror or str(exc)))
        return False
    stats.files += 1
    stats.bytes += st.st_size
    if st.st_nlink <= 1:
        stats.disk += st.st_blocks * 512
    return True


def _make_writable(fd, st):
    if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        try:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError:
            pass


def _rmtree(parent_fd, name, st, parts, locks, mounts, stats, dev):
    """Iterative, descriptor-relative rm -r of ``name`` in ``parent_fd`` (opened O_NOFOLLOW)."""
    try:
        fd = open_subdir(parent_fd, name, expect=st)
    except OSError as exc:
        stats.errors.append(("/".join(parts), exc.strerror or str(exc)))
        return False
    if fd is None:
        stats.errors.append(("/".join(parts), "directory replaced during the run; left"))
        return False
    _make_writable(fd, st)
    # stack of [fd, parts, entries iterator, kept (something left inside), parent_fd, name]
    stack = [[fd, parts, None, False, parent_fd, name]]
    try:
        while stack:
            top = stack[-1]
            if top[2] is None:
                try:
                    top[2] = iter(scan(top[0]))
                except OSError as exc:
                    stats.errors.append(("/".join(top[1]), exc.strerror or str(exc)))
                    top[2] = iter(())
                    top[3] = True
            nxt = next(top[2], None)
            if nxt is None:
                stack.pop()
                os.close(top[0])
                if top[3]:
                    if stack:
                        stack[-1][3] = True
                    continue
                try:
                    os.rmdir(top[5], dir_fd=top[4])
                    stats.dirs += 1
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        if exc.errno != errno.ENOTEMPTY:
                            stats.errors.append(("/".join(top[1]), exc.strerror or str(exc)))
                        if stack:
                            stack[-1][3] = True
                continue
            cname, cst = nxt
            cparts = top[1] + (cname,)
            if stats.not_ours(cparts, cst):
                top[3] = True
                continue
            if locks is not None and locks.held(cst, top[0], cname):
                stats.busy.append("/".join(cparts))
                top[3] = True
                continue
            if stat.S_ISDIR(cst.st_mode):
                if cst.st_dev != dev or cparts in mounts:
                    stats.errors.append(("/".join(cparts), "mount point or other filesystem; left"))
                    top[3] = True
                    continue
                try:
                    cfd = open_subdir(top[0], cname, expect=cst)
                except OSError as exc:
                    stats.errors.append(("/".join(cparts), exc.strerror or str(exc)))
                    top[3] = True
                    continue
                if cfd is None:
                    stats.errors.append(("/".join(cparts), "directory replaced during the run; left"))
                    top[3] = True
                    continue
                _make_writable(cfd, cst)
                stack.append([cfd, cparts, None, False, top[0], cname])
            else:
                if not _unlink(top[0], cname, cst, cparts, stats):
                    top[3] = True
    finally:
        for item in stack:
            os.close(item[0])
    return True


def rmdir_if_empty(root_fd, parts):
    """rmdir ``parts`` below ``root_fd`` if it is an empty directory (never follows links)."""
    pfd = open_parent(root_fd, parts, os.fstat(root_fd).st_dev, ())
    if pfd is None:
        return False
    try:
        os.rmdir(parts[-1], dir_fd=pfd)
        return True
    except OSError:
        return False
    finally:
        os.close(pfd)


def _trash_places(root_fd, parents):
    """The open directories a trash may sit in (``parents``: parts below the root, () = the root
    itself), the ones that exist as directories of this filesystem; callers close all but the root."""
    out = []
    dev = os.fstat(root_fd).st_dev
    for parts in parents:
        if not parts:
            out.append((parts, root_fd))
            continue
        pfd = open_parent(root_fd, parts, dev, ())
        if pfd is None:
            continue
        try:
            st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
            cfd = open_subdir(pfd, parts[-1], expect=st) if stat.S_ISDIR(st.st_mode) and st.st_dev == dev else None
        except OSError:
            cfd = None
        finally:
            os.close(pfd)
        if cfd is not None:
            out.append((parts, cfd))
    return out


def _has_trash(dir_fd, parents=((),)):
    """True when the cache directory (or one of the trash ``parents``) holds a trash-named entry."""
    places = _trash_places(dir_fd, parents)
    try:
        for _parts, pfd in places:
            with os.scandir(pfd) as it:
                if any(is_trash(e.name) for e in it):
                    return True
        return False
    finally:
        for _parts, pfd in places:
            if pfd != dir_fd:
                os.close(pfd)


def is_trash(name):
    """True for the names Trash uses (``.mlinfra-prune-trash-<random>``, and the fixed name of
    earlier releases): formats and walks leave them out."""
    return name.startswith(_formats.TRASH_NAME)


def trash_parents(fmt):
    """Where a format's trash goes, first existing first: never where the tool's own scan looks.
    huggingface_hub's ``scan_cache_dir()`` warns about any unknown directory in ``hub/`` but skips
    ``hub/.locks``, so a trash left by a killed prune of a hub cache sits there (HF_HOME: ``hub``
    is a subdirectory, the root is fine)."""
    return getattr(fmt, "trash_parents", ((),))


class Trash:
    """Root-only directory (same filesystem as the cache) a unit's paths are renamed into before
    they are deleted: a unit leaves its place in one rename per path, so a prune killed mid-way
    leaves whole units (or a unit missing whole paths, which each format orders to stay valid),
    never a half-deleted directory. Leftovers are deleted first thing by the next run.

    API (also used on its own, e.g. to quarantine a corrupt unit):

    - ``Trash(root_fd, dev, gid=None, parents=((),))``: purges leftover trashes (in every one of
      ``parents``, see ``trash_parents``) and makes a fresh one in the first parent that exists;
      ``leftover`` is the ``RemoveStats`` of that purge (None when there was none).
    - ``take(parts, mounts, stats)``: rename ``parts`` (below ``root_fd``) in; returns a ``Moved``
      (``name`` in the trash, ``parts``, ``ino`` of what was moved) or None (gone, unsafe, another
      filesystem, not the cache group's: ``stats`` says which). ``move`` is the same, returning
      the name only.
    - ``restore(moved, stats)``: put a moved entry back where it was, never over something that is
      there now (a file by link+unlink, which fails on an existing name; a directory by rename
      after checking the place is free); True when restored.
    - ``purge(name, locks, stats)``: delete a moved entry (``remove_path`` rules: locked entries stay).
    - ``close()``: close it and remove it when empty (what is left is purged by the next run).

    The cache directory is member-writable, so the trash is made fresh by root under a random name
    with ``mkdir`` (which fails on any existing name: it is exclusive) and checked to be that very
    directory, root's, 0700, on the cache's filesystem. A leftover is only a trash-named directory
    owned by this user with no group or other access; a member's look-alike is left alone."""

    def __init__(self, root_fd, dev, gid=None, parents=((),)):
        self.root_fd = root_fd
        self.dev = dev
        self.gid = gid
        self._numbers = itertools.count(1)  # names in the trash (next() is atomic: threads take too)
        self.leftover = None
        self.fd = None
        self.place = None
        places = _trash_places(root_fd, parents)
        try:
            for _parts, pfd in places:
                for name, st in scan(pfd):
                    if is_trash(name) and self._ours(st):
                        if self.leftover is None:
                            self.leftover = RemoveStats(gid)
                        remove_path(pfd, (name,), None, (), self.leftover, dev)
            if not places:
                raise OSError(errno.ENOENT, "no place for a trash directory in the cache")
            self.place = places[0][1]
            name = None
            for _attempt in range(5):
                name = "%s-%s" % (_formats.TRASH_NAME, os.urandom(6).hex())
                try:
                    os.mkdir(name, 0o700, dir_fd=self.place)
                    break
                except FileExistsError:
                    continue
            else:
                raise OSError(errno.EEXIST, "could not create a trash directory in the cache")
            st = os.stat(name, dir_fd=self.place, follow_symlinks=False)
            self.fd = open_subdir(self.place, name, expect=st) if stat.S_ISDIR(st.st_mode) else None
            if self.fd is None or not self._ours(os.fstat(self.fd)):
                if self.fd is not None:
                    os.close(self.fd)
                    self.fd = None
                raise OSError(errno.ESTALE, "trash directory %s replaced while opening it; skipped" % name)
            self.name = name
        finally:
            for _parts, pfd in places:
                if pfd != root_fd and pfd != self.place:
                    os.close(pfd)
            if self.fd is None and self.place is not None and self.place != root_fd:
                os.close(self.place)

    def _ours(self, st):
        return (
            stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_dev == self.dev and not st.st_mode & 0o077
        )

    def move(self, parts, mounts, stats):
        """Rename ``parts`` into the trash; returns the name there, or None (gone / unsafe / not the cache's)."""
        moved = self.take(parts, mounts, stats)
        return moved.name if moved is not None else None

    def take(self, parts, mounts, stats, expect=None, parents=None):
        """Rename ``parts`` into the trash; a ``Moved`` or None. ``expect``: the inode the caller
        checked; when another one is found in its place the entry is left (None, nothing moved).
        ``parents``: a ``Parents`` whose open directories to use (they stay open)."""
        if not parts or parts in mounts:
            return None
        pfd = parents.get(parts) if parents is not None else open_parent(self.root_fd, parts, self.dev, mounts)
        if pfd is None:
            return None
        try:
            try:
                st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if st.st_dev != self.dev:
                stats.errors.append(("/".join(parts), "on another filesystem; left"))
                return None
            if stats.not_ours(parts, st):
                return None
            if expect is not None and st.st_ino != expect:
                return None
            new = "%d" % next(self._numbers)
            try:
                os.rename(parts[-1], new, src_dir_fd=pfd, dst_dir_fd=self.fd)
            except PermissionError:
                if not stat.S_ISDIR(st.st_mode):
                    raise
                # moving a read-only directory (Go) rewrites its '..': make it writable first
                cfd = open_subdir(pfd, parts[-1], expect=st)
                if cfd is None:
                    return None
                try:
                    _make_writable(cfd, st)
                finally:
                    os.close(cfd)
                os.rename(parts[-1], new, src_dir_fd=pfd, dst_dir_fd=self.fd)
            try:
                ino = os.stat(new, dir_fd=self.fd, follow_symlinks=False).st_ino
            except OSError:
                ino = None
            return Moved(new, parts, ino, stat.S_ISDIR(st.st_mode))
        except OSError as exc:
            stats.errors.append(("/".join(parts), exc.strerror or str(exc)))
            return None
        finally:
            if parents is None:
                os.close(pfd)

    def put(self, dir_fd, name):
        """Rename ``name`` in the open directory ``dir_fd`` (a caller that checked it, under the
        tool's lock) into the trash; its name there. OSError when the rename fails."""
        new = "%d" % next(self._numbers)
        os.rename(name, new, src_dir_fd=dir_fd, dst_dir_fd=self.fd)
        return new

    def restore(self, moved, stats):
        """Put ``moved`` back in its place unless something else is there now; True when restored."""
        pfd = open_parent(self.root_fd, moved.parts, self.dev, ())
        if pfd is None:
            return False
        name = moved.parts[-1]
        try:
            if moved.is_dir:
                try:
                    os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    return False
                except FileNotFoundError:
                    pass
                os.rename(moved.name, name, src_dir_fd=self.fd, dst_dir_fd=pfd)
            else:
                try:
                    os.link(moved.name, name, src_dir_fd=self.fd, dst_dir_fd=pfd, follow_symlinks=False)
                except FileExistsError:
                    return False
                os.unlink(moved.name, dir_fd=self.fd)
            return True
        except OSError as exc:
            stats.errors.append(("/".join(moved.parts), "could not be put back: %s" % (exc.strerror or exc)))
            return False
        finally:
            os.close(pfd)

    def purge(self, name, locks, stats):
        return remove_path(self.fd, (name,), locks, (), stats, self.dev)

    def close(self):
        os.close(self.fd)
        try:
            os.rmdir(self.name, dir_fd=self.place)
        except OSError:
            pass  # something locked (or not the cache's) is left inside: the next run deletes it
        if self.place != self.root_fd:
            os.close(self.place)


PURGE_PENDING = 256  # units moved out whose deletion may still be going on


class Purger:
    """Deletes what a run moved into its trash on a few threads (``_parallel.IO_THREADS``: each
    unlink sleeps on the disk, with the GIL released) while the run goes on choosing,
    re-checking and moving the next units.

    Only the deletion is put off: each unit still leaves its place in the cache whole, in one
    rename per path, on the run's own thread, after its re-check; what is in the trash is out of
    every tool's way and a killed run's trash is purged by the next one, so the order of these
    deletions matters to no one. Each deletion has its own ``RemoveStats``; ``submit(names)``
    returns a handle, ``result(handle)`` waits for it and returns its stats, ``done(handle)``
    tells without waiting; ``close()`` waits for all. ``threads`` 1 (or less): each deletion
    happens in ``submit``, as before."""

    def __init__(self, trash, locks, gid, threads=IO_THREADS):
        self.trash = trash
        self.locks = locks
        self.gid = gid
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="mlinfra-purge") if threads > 1 else None

    def _purge(self, names):
        stats = RemoveStats(self.gid)
        for name in names:
            self.trash.purge(name, self.locks, stats)
        return stats

    def submit(self, names):
        if self.pool is None:
            return self._purge(names)
        return self.pool.submit(self._purge, names)

    def result(self, handle):
        return handle if self.pool is None else handle.result()

    def done(self, handle):
        return self.pool is None or handle.done()

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


class Moved:
    """An entry ``Trash.take`` moved: its ``name`` in the trash, original ``parts``, ``ino``."""

    __slots__ = ("name", "parts", "ino", "is_dir")

    def __init__(self, name, parts, ino, is_dir):
        self.name = name
        self.parts = parts
        self.ino = ino
        self.is_dir = is_dir


# ------------------------------------------------------------------------------------------
# the intent journal: what a killed run had decided, so the next run finishes the same job
# ------------------------------------------------------------------------------------------
JOURNAL_MAX = 64 << 20  # a run journals a line per directory it empties and per unit it chose


class Journal:
    """Root-only intent journal of the prunes of one cache (``journal-<dev>-<ino>`` in the prune
    state directory): a killed run's decisions, read by the next run so it leaves exactly what one
    uninterrupted run would have left. Appended (never rewritten) while a run goes, one line per
    record, and deleted when a run completes; a chain of killed runs accumulates.

    Records: ``R <json>`` a run (its start ``t0``, policy, format, per-file LRU ``cut``);
    ``U <t0> <reason> <key>`` a unit chosen; ``D <ino> <mtime_ns> <t0>`` a directory about to lose
    entries (its mtime before); ``P <ino> <mtime_ns>`` the same directory after.

    ``dir_time(st)`` is a directory's mtime as it was before the interrupted runs touched it (its
    own mtime when it changed since, or was never touched): the killed runs' deletions do not make
    a directory look new. ``resume`` gives the units (key -> (t0, reason)) the interrupted runs
    chose with the same policy; ``cut`` their per-file LRU cut-off time.

    A journal is only taken up by a run of the same cache path (another directory made again with
    the same device and inode starts afresh). Without a private state directory (a non-root user
    with no ``lock_dir``) it does nothing."""

    def __init__(self, cache_fd, lock_dir=None, write=True, path=None):
        self.fd = -1
        self.path = path
        self._truncate = False
        self.dfd = None
        self.dirs = {}  # ino -> [pre_ns, post_ns or None, t0 of the run that touched it last]
        self.resume = {}
        self.cut = None
        self.runs = 0
        self.fingerprint = None
        self.write_ok = write
        self._touched = set()
        if lock_dir is None and os.geteuid() != 0:
            return
        cst = os.fstat(cache_fd)
        self.name = "journal-%x-%d" % (cst.st_dev, cst.st_ino)
        try:
            self.dfd = state_dir(lock_dir)
        except OSError:
            self.dfd = None
            return
        self._read()

    @property
    def active(self):
        return self.dfd is not None

    def _read(self):
        try:
            fd = os.open(self.name, _O_FILE, dir_fd=self.dfd)
        except FileNotFoundError:
            return
        runs = []
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                return
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(JOURNAL_MAX)
        finally:
            os.close(fd)
        for line in data.split(b"\n"):
            kind, _sep, rest = line.partition(b" ")
            try:
                if kind == b"R":
                    runs.append((json.loads(rest.decode()), {}))
                elif kind == b"U" and runs:
                    t0, reason, key = rest.decode("utf-8", "surrogateescape").split(" ", 2)
                    runs[-1][1].setdefault(key, (float(t0), reason))
                elif kind == b"D":
                    ino, pre, t0 = (int(x) for x in rest.split())
                    cur = self.dirs.get(ino)
                    # the first run's times hold while the directory is as the killed runs left
                    # it: its mtime before them, and the start of the first (a later run killed
                    # before it removed anything leaves the mtime an earlier one gave it)
                    if cur is not None and (cur[1] == pre if cur[1] is not None else pre >= cur[2]):
                        cur[1] = None
                    else:
                        self.dirs[ino] = [pre, None, t0]
                elif kind == b"P":
                    ino, post = (int(x) for x in rest.split())
                    if ino in self.dirs:
                        self.dirs[ino][1] = post
            except (ValueError, UnicodeDecodeError):
                continue  # a line cut by the kill
        if runs and runs[0][0].get("path") != self.path:
            # another cache that had this device and inode (made again since): not ours to finish
            runs = []
            self.dirs = {}
            self._truncate = True
        self.runs = len(runs)
        self._prev_runs = runs

    def begin(self, t0, policy, fmt_name):
        """Start this run's records; the previous runs' unit choices with the same policy are kept
        in ``resume`` (with the first choice's time) and their LRU cut in ``cut``."""
        self.fingerprint = [
            fmt_name,
            policy.max_age,
            policy.max_size,
            policy.min_free,
            policy.min_age,
            sorted(policy.exclude),
            policy.age_by,
        ]
        for head, units in getattr(self, "_prev_runs", ()):
            if head.get("policy") != self.fingerprint:
                continue
            for key, val in units.items():
                self.resume.setdefault(key, val)
            if head.get("cut") is not None:
                self.cut = head["cut"] if self.cut is None else max(self.cut, head["cut"])
        self.t0 = t0
        # what this run's changes to a directory's mtime are compared with: file system
        # timestamps come from the kernel's coarse clock, up to a tick (4 to 10 ms) behind
        # time.time(), so a deletion right after t0 can carry an mtime just before it (measured:
        # 5 ms here). Without the slack such a directory looked changed by someone else, lost
        # its time from before the killed runs, and a final run left it as new.
        self.t0_ns = int(t0 * 1e9) - TIMESTAMP_SLACK_NS

    def _open(self):
        if self.fd < 0 and self.active and self.write_ok:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(
                self.name,
                flags | (os.O_TRUNC if self._truncate else 0),
                0o600,
                dir_fd=self.dfd,
            )
        return self.fd

    def _put(self, text):
        if self._open() >= 0:
            os.write(self.fd, text.encode("utf-8", "surrogateescape"))

    def run_record(self, cut=None):
        self._put("R %s\n" % json.dumps({"t0": self.t0, "path": self.path, "policy": self.fingerprint, "cut": cut}))

    def units(self, chosen):
        """Record the units this run is about to remove (all at once, before the first one goes)."""
        lines = []
        for u, reason, _freed, _gone in chosen:
            t0 = self.resume.get(u.key, (self.t0, None))[0]
            lines.append("U %r %s %s\n" % (t0, reason, u.key.replace("\n", " ")))
        if lines:
            self._put("".join(lines))

    def before_dir(self, st):
        """A directory (its walk lstat) is about to lose entries."""
        if st.st_ino not in self._touched:
            self._touched.add(st.st_ino)
            self._put("D %d %d %d\n" % (st.st_ino, st.st_mtime_ns, self.t0_ns))

    def after_dir(self, dir_fd):
        """The directory open at ``dir_fd`` lost its entries: its mtime now (our own doing)."""
        if self.fd >= 0:
            st = os.fstat(dir_fd)
            self._put("P %d %d\n" % (st.st_ino, st.st_mtime_ns))

    def dir_time(self, ino, mtime_ns):
        """The mtime (ns) a directory had before interrupted runs removed entries from it."""
        rec = self.dirs.get(ino)
        if rec is None:
            return mtime_ns
        pre, post, t0 = rec
        if post is not None and post == mtime_ns:
            return pre
        if post is None and mtime_ns >= t0:
            return pre  # the run was killed while emptying it
        return mtime_ns

    def done(self):
        """The run completed: its decisions are carried out, the journal goes."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.active and self.write_ok:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=self.dfd)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None


# ------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------
def matches(patterns, *names):
    for pat in patterns:
        for n in names:
            if n and fnmatch.fnmatchcase(n, pat):
                return True
    return False


def unit_excluded(unit, patterns):
    if not patterns:
        return False
    names = [unit.key, unit.name]
    for p in unit.paths:
        names.append("/".join(p))
        names.append(p[-1])
    return matches(patterns, *names)


class Policy:
    def __init__(self, max_age=None, max_size=None, min_free=None, min_age=3600, exclude=(), age_by="newest"):
        self.max_age = max_age
        self.max_size = max_size
        self.min_free = min_free
        self.min_age = min_age or 0
        self.exclude = list(exclude or ())
        self.age_by = age_by

    @property
    def empty(self):
        return self.max_age is None and self.max_size is None and self.min_free is None


def select(collection, policy, now, free_now, extra_disk=0, resume=None):
    """Return [(unit, reason, freed_disk, [shared ids freed])] in deletion order, and a kept summary.

    ``resume`` (key -> (time chosen, reason), ``Journal.resume``): units an interrupted run chose;
    those not used since are taken first, so the run finishes that run's job (a ``max_size`` run
    then needs nothing more) instead of choosing again from what the killed run left."""
    refs = {sid: s.refs for sid, s in collection.shared.items()}
    chosen = []
    kept = {"young": 0, "excluded": 0, "protected": 0}
    candidates = []
    for u in collection.units:
        if u.keep is not None:
            kept["protected"] += 1
            continue
        if unit_excluded(u, policy.exclude):
            kept["excluded"] += 1
            continue
        newest = max(u.last_used(policy.age_by), u.mtime)
        if now - newest < policy.min_age:
            kept["young"] += 1
            continue
        candidates.append(u)

    def take(u, reason):
        freed = u.own_disk
        gone = []
        for sid in u.shared:
            if sid in refs:
                refs[sid] -= 1
                if refs[sid] == 0:
                    freed += collection.shared[sid].disk
                    gone.append(sid)
        chosen.append((u, reason, freed, gone))
        return freed

    rest = []
    cutoff = now - policy.max_age if policy.max_age is not None else None
    if resume:
        left = []
        for u in candidates:
            prev = resume.get(u.key)
            if prev is not None and max(u.last_used(policy.age_by), u.mtime) < prev[0]:
                take(u, prev[1])
            else:
                left.append(u)
        candidates = left
    for u in candidates:
        if u.stale:
            take(u, "stale")
        elif cutoff is not None and u.last_used(policy.age_by) < cutoff:
            take(u, "max_age")
        else:
            rest.append(u)
    if policy.max_size is not None or policy.min_free is not None:
        total = collection.total_disk + extra_disk - sum(c[2] for c in chosen)
        free = free_now + sum(c[2] for c in chosen)
        rest.sort(key=lambda u: (u.last_used(policy.age_by), u.key))
        for u in rest:
            over = policy.max_size is not None and total > policy.max_size
            short = policy.min_free is not None and free < policy.min_free
            if not (over or short):
                break
            freed = take(u, "max_size" if over else "min_free")
            total -= freed
            free += freed
    return chosen, kept


def cap_not_met(collection, policy, chosen, kept, free_now, extra_disk=0):
    """Why ``max_size``/``min_free`` cannot be met by what ``select`` chose (a note), or None."""
    freed = sum(c[2] for c in chosen)
    total = collection.total_disk + extra_disk - freed
    miss = []
    if policy.max_size is not None and total > policy.max_size:
        miss.append("max_size %s (%s left)" % (human(policy.max_size), human(total)))
    if policy.min_free is not None and free_now + freed < policy.min_free:
        miss.append("min_free %s (%s free)" % (human(policy.min_free), human(free_now + freed)))
    if not miss:
        return None
    outside = collection.other_disk + extra_disk + sum(s.disk for s in collection.shared.values() if not s.refs)
    return (
        "%s not met: every unit the policy allows is chosen; kept %d unit(s) used within min_age, "
        "%d excluded, %d protected; %s is outside any unit (directories, the tool's metadata)"
        % (" and ".join(miss), kept["young"], kept["excluded"], kept["protected"], human(outside))
    )


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------
class PruneError(Exception):
    """Bad input or an unsafe cache path: nothing was deleted."""


class Pruner:
    """Prune one cache directory. ``run()`` returns the result dict (see the module's RETURN)."""

    def __init__(
        self,
        path,
        fmt="auto",
        policy=None,
        check_mode=False,
        lock_timeout=60,
        sample_size=20,
        now=None,
        one_fs=True,
        gid=None,
        lock_dir=None,
        purge_threads=IO_THREADS,
    ):
        """``gid``: the cache group (default: the cache directory's own group); entries of other
        groups are never pruned. ``lock_dir``: where the prune lock lives (default PRUNE_LOCK_DIR
        as root, see ``prune_lock``). ``purge_threads``: deletions of removed units in flight at
        once (see Purger; 1: one after the other)."""
        self.purge_threads = purge_threads
        self.path = path
        self.gid = gid
        self.lock_dir = lock_dir
        self.cache_gid = gid
        self.foreign = Foreign()
        self.fmt_name = fmt
        self.policy = policy or Policy()
        self.check = check_mode
        self.lock_timeout = lock_timeout
        self.sample_size = sample_size
        self.now = now
        self.one_fs = one_fs
        self.warnings = []
        self.dir_disk = 0

    def run(self):
        t0 = time.monotonic()
        try:
            fd = open_dir_nofollow(self.path)
        except OSError as exc:
            raise PruneError("cannot open %s safely: %s" % (self.path, exc.strerror or exc)) from None
        tool_fds = []
        lock_fd = None
        try:
            result = {
                "path": self.path,
                "format": self.fmt_name,
                "changed": False,
                "skipped": False,
                "units": 0,
                "files": 0,
                "bytes": 0,
                "sample": [],
                "busy": [],
                "errors": [],
                "foreign": self.foreign.as_dict(),
            }
            if self.cache_gid is None:
                self.cache_gid = os.fstat(fd).st_gid
            try:
                lock_fd = prune_lock(fd, self.lock_timeout, self.lock_dir)
            except OSError as exc:
                raise PruneError("cannot take the prune lock: %s" % (exc.strerror or exc)) from None
            if lock_fd is None:
                result["skipped"] = True
                result["msg"] = "another prune holds the lock on %s; waited %ss, skipped" % (
                    self.path,
                    self.lock_timeout,
                )
                return result
            fmt_name = self.fmt_name
            if fmt_name == "auto":
                fmt_name = _formats.detect_format(fd)
            fmt = _formats.get_format(fmt_name)
            result["format"] = fmt_name
            if not fmt.prunable:
                result["skipped"] = True
                result["msg"] = "%s is format %s: owned by its tool, never pruned by file" % (self.path, fmt_name)
                return result
            if self.policy.empty:
                result["skipped"] = True
                result["msg"] = "no retention policy (max_age, max_size, min_free) for %s: nothing to do" % self.path
                return result
            now = self.now if self.now is not None else time.time()
            for parts, kind in fmt.tool_locks:
                try:
                    tfd = take_tool_lock(fd, parts, kind, min(self.lock_timeout, 30), self.check)
                except Busy as exc:
                    # The tool is at work (its units wait for the next run), or a member holds the
                    # lock to switch the prune off: past TOOL_LOCK_STALE it no longer stops the run.
                    since = tool_lock_seen(fd, parts, True, self.lock_dir, now)
                    if since is None or now - since < TOOL_LOCK_STALE:
                        result["skipped"] = True
                        result["busy"].append("/".join(parts))
                        result["msg"] = "%s: %s; skipped (a lock held for %dh from now on no longer stops it)" % (
                            self.path,
                            exc,
                            TOOL_LOCK_STALE // 3600,
                        )
                        return result
                    result["busy"].append(
                        "%s: held since %s, taken as stale; units used within min_age and locked entries kept"
                        % ("/".join(parts), time.strftime("%Y-%m-%d %H:%M", time.localtime(since)))
                    )
                    continue
                if not self.check:
                    tool_lock_seen(fd, parts, False, self.lock_dir)
                if tfd >= 0:
                    tool_fds.append(tfd)
            if "noatime" in mount_options(self.path).split(",") and self.policy.age_by != "mtime":
                self.warnings.append(
                    "%s is on a noatime mount: access times are not updated, last use falls back to "
                    "modification (download) times and the tool's own records" % self.path
                )
            mounts = mounts_below(self.path)
            locks = ProcLocks()
            if fmt.per_file:
                self._run_per_file(fd, result, now, mounts, locks)
            else:
                self._run_units(fd, fmt, result, now, mounts, locks)
            result["foreign"] = self.foreign.as_dict()
            result["duration"] = round(time.monotonic() - t0, 3)
            return result
        finally:
            for tfd in tool_fds:
                os.close(tfd)
            if lock_fd is not None:
                os.close(lock_fd)
            os.close(fd)

    # -- unit formats -----------------------------------------------------------------------
    def _walker(self, fd):
        """The walk of what the cache owns (entries of other groups are left out, see Walker)."""
        return Walker(fd, one_fs=self.one_fs, gid=self.cache_gid)

    @gc_paused
    def _run_units(self, fd, fmt, result, now, mounts, locks):
        dev = os.fstat(fd).st_dev
        self._fmt = fmt
        parents = trash_parents(fmt)
        journal = Journal(fd, self.lock_dir, write=not self.check, path=self.path)
        trash = purger = None
        try:
            journal.begin(now, self.policy, fmt.name)
            if not self.check:
                # first thing: what a killed run left in its trash goes; then a fresh trash, whose
                # ctime (the filesystem's clock) marks the start of the walk for the re-checks
                trash = Trash(fd, dev, self.cache_gid, parents)
                if trash.leftover is not None and (trash.leftover.files or trash.leftover.dirs):
                    result.setdefault("notes", []).append(
                        "deleted %d file(s) left by an interrupted prune" % trash.leftover.files
                    )
            since_ns = os.fstat(trash.fd).st_ctime_ns if trash is not None else None
            if trash is not None:
                purger = self._purger = Purger(trash, locks, self.cache_gid, self.purge_threads)
            self._pending = collections.deque()
            walker = self._walker(fd)
            col = fmt.collector(fd)
            for d in walker.walk():
                base = tuple(d.rel.split("/")) if d.rel else ()
                for name, st in d.entries:
                    if stat.S_ISDIR(st.st_mode) and (base + (name,) in mounts or locks.held(st)):
                        d.skip.add(name)
                col.visit(d)
            self._walk_notes(walker, result)
            collection = col.finish()
            collection.gid = self.cache_gid
            if collection.notes:
                result.setdefault("notes", []).extend(collection.notes)
            result["before"] = {
                "bytes": collection.total_disk + col.dir_disk,
                "files": collection.total_files,
                "units": len(collection.units),
            }
            chosen, kept = select(
                collection, self.policy, now, free_bytes(fd), extra_disk=col.dir_disk, resume=journal.resume
            )
            kept["changed"] = 0
            kept["linked"] = 0
            result["kept"] = kept
            short = cap_not_met(collection, self.policy, chosen, kept, free_bytes(fd), col.dir_disk)
            if short:
                result.setdefault("notes", []).append(short)
            journal.run_record()
            journal.units(chosen)
            used_after = time.time()
            removed = set()
            self._split_watch = []
            # a tool's read-then-write of part of an entry (pip's 304 revalidation: read header and
            # body, write the header) spans microseconds: the removed multi-path units are looked at
            # once more this long after the last one left (Format.split_settle; 0: not at all)
            self._settle = getattr(fmt, "split_settle", 0.0)
            n_notes = len(collection.notes)
            freed_total = self._remove_chosen(
                fd, chosen, collection, result, locks, mounts, dev, trash, removed, since_ns, used_after
            )
            if len(collection.notes) > n_notes:  # what the format's hooks said during the removals
                result.setdefault("notes", []).extend(collection.notes[n_notes:])
            if self._split_watch:
                freed_total += self._unsplit_late(fd, result, locks, mounts, dev, trash)
            present = {u.key for u in collection.units}
            # units a killed run removed whole: the format's clean-up still has to see them
            gone_before = {k for k in journal.resume if k not in present}
            if not self.check:
                journal.done()
        finally:
            if purger is not None:
                purger.close()  # waits for the deletions still going on
            if trash is not None:
                trash.close()
            journal.close()
        if not self.check:
            # every run, once the run's own trash is gone: a format's clean-up (which may make a
            # trash of its own) also finishes what a killed run left
            try:
                records = LockRecords(fd, self.lock_dir, now)
                for note in fmt.post_prune(fd, collection, removed | gone_before, records):
                    result.setdefault("notes", []).append(note)
            except OSError as exc:
                self._error(result, ".", "format clean-up: %s" % (exc.strerror or exc))
            files, disk = getattr(collection, "cleanup_freed", (0, 0))  # what the clean-up itself freed
            result["files"] += files
            result["bytes"] += disk
            freed_total += disk
        result["after"] = {
            "bytes": max(0, collection.total_disk + col.dir_disk - freed_total),
            "units": len(collection.units) - len(removed),
        }
        result["changed"] = bool(result["units"] or result["files"])

    def _remove_chosen(self, fd, chosen, collection, result, locks, mounts, dev, trash, removed, since_ns, used_after):
        freed_total = 0
        for u, reason, freed, gone in chosen:
            locks.maybe_refresh(0.5)
            if self.check:
                par = Parents(fd, dev, mounts)
                try:
                    busy = self._recheck(fd, u, locks, dev, None, None, par)[0]
                finally:
                    par.close()
                if busy:
                    result["busy"].append("%s (%s)" % (u.key, busy))
                    continue
                files = u.files + sum(collection.shared[s].files for s in gone)
                self._count(result, u, reason, freed, files)
                removed.add(u.key)
                freed_total += freed
                continue
            par = Parents(fd, dev, mounts)
            try:
                freed_total += self._remove_unit(
                    fd,
                    u,
                    reason,
                    gone,
                    collection,
                    result,
                    locks,
                    mounts,
                    dev,
                    trash,
                    removed,
                    since_ns,
                    used_after,
                    par,
                )
            finally:
                par.close()
        if not self.check:
            freed_total += self._drain(result, removed, wait=True)
        return freed_total

    def _remove_unit(
        self, fd, u, reason, gone, collection, result, locks, mounts, dev, trash, removed, since_ns, used_after, par
    ):
        """Re-check one chosen unit, move it out whole, purge it; the bytes freed."""
        # just before the unit leaves: still the unit that was chosen, unused, unlocked
        busy, changed, inos = self._recheck(fd, u, locks, dev, since_ns, used_after, par)
        if busy:
            result["busy"].append("%s (%s)" % (u.key, busy))
            return 0
        if changed:
            result["kept"]["changed"] += 1
            return 0
        # a unit that is itself a shared object (an HF blob no revision linked at walk time): a
        # reference made to it since the walk keeps it, looked for before it moves and after
        if u.linkable and self._fmt.linked_since(par, collection, list(u.linkable), since_ns):
            result["kept"]["linked"] += 1
            return 0
        stats = RemoveStats(self.cache_gid)
        moved = []
        for p in u.paths:
            m = trash.take(p, mounts, stats, expect=inos.get(p), parents=par)
            if m is not None:
                moved.append(m)
        # a path rewritten between the check and the move (a new inode moved in, or one made
        # again in its place): the unit is put back whole, never split (pip: header + body)
        if self._rewritten(u, moved, inos, par):
            return self._put_back(result, "changed", moved, trash, locks, stats)
        if u.linkable and self._fmt.linked_since(par, collection, list(u.linkable), since_ns):
            return self._put_back(result, "linked", moved, trash, locks, stats)
        # shared objects (HF blobs, npm content) only once the unit's references are gone, and
        # only those no reference made since the walk names (the format's linked_since), looked
        # for again once they moved: one linked meanwhile goes back
        if not stats.errors and gone:
            linked = self._fmt.linked_since(par, collection, gone, since_ns)
            taken = {}
            for sid in gone:
                if sid in linked:
                    continue
                for p in collection.shared[sid].paths:
                    m = trash.take(p, mounts, stats)
                    if m is not None:
                        moved.append(m)
                        taken.setdefault(sid, []).append(m)
            late = self._fmt.linked_since(par, collection, list(taken), since_ns) if taken else set()
            for sid in late:
                for m in taken[sid]:
                    if trash.restore(m, stats):
                        moved.remove(m)
            result["kept"]["linked"] += len(linked) + len(late)
        self._unsplit(u, moved, mounts, locks, trash, stats, par)
        if self._settle and len(u.paths) > 1:
            self._split_watch.append((u, moved))
        # the unit has left the cache: its deletion goes on beside the next units (Purger), and
        # it is counted once that is done (_drain)
        self._pending.append((u, reason, stats, self._purger.submit([m.name for m in moved])))
        return self._drain(result, removed)

    def _put_back(self, result, why, moved, trash, locks, stats):
        """The moved paths of a unit that stays go back where they were (``kept[why]``); 0 freed."""
        for m in moved:
            if not trash.restore(m, stats):
                trash.purge(m.name, locks, stats)  # a newer one took its place
        result["kept"][why] += 1
        self.foreign.merge(stats.foreign)
        for rel, err in stats.errors[:10]:
            self._error(result, rel, err)
        return 0

    def _drain(self, result, removed, wait=False):
        """Count the units whose deletion is done, in the order they left (all of them with
        ``wait``; the oldest ones while more than PURGE_PENDING are in flight); the bytes freed."""
        freed = 0
        pending = self._pending
        while pending and (wait or len(pending) > PURGE_PENDING or self._purger.done(pending[0][3])):
            u, reason, stats, handle = pending.popleft()
            stats.merge(self._purger.result(handle))
            freed += self._counted(result, u, reason, stats, removed)
        return freed

    def _counted(self, result, u, reason, stats, removed):
        """Book one removed unit's stats into ``result``; the bytes it freed."""
        self.foreign.merge(stats.foreign)
        if stats.busy:
            result["busy"].extend(stats.busy[:10])
        for rel, err in stats.errors[:10]:
            self._error(result, rel, err)
        if stats.files or stats.dirs:
            self._count(result, u, reason, stats.disk, stats.files)
            if not stats.errors:
                removed.add(u.key)
            return stats.disk
        return 0

    def _unsplit(self, u, moved, mounts, locks, trash, stats, par):
        """Some of a removed unit's paths made again by its tool while it left (pip wrote a new
        header, its body is gone): half an entry is no entry, the new half goes too."""
        again = []
        for m in moved:
            if m.parts in u.paths:
                st = par.lstat(m.parts)[1]
                if st is not None:
                    again.append((m.parts, st.st_ino))
        if again and len(again) < len([m for m in moved if m.parts in u.paths]):
            for parts, ino in again:
                m = trash.take(parts, mounts, stats, expect=ino, parents=par)
                if m is not None:
                    trash.purge(m.name, locks, stats)

    def _unsplit_late(self, fd, result, locks, mounts, dev, trash):
        """Once every chosen unit has left, and the format's split_settle later: the removed
        multi-path units looked at again, so half an entry its tool wrote back just after the move
        (a header whose body is gone) goes too. What freed (bytes)."""
        time.sleep(self._settle)
        stats = RemoveStats(self.cache_gid)
        par = Parents(fd, dev, mounts)
        try:
            for u, moved in self._split_watch:
                self._unsplit(u, moved, mounts, locks, trash, stats, par)
        finally:
            par.close()
        self.foreign.merge(stats.foreign)
        for rel, err in stats.errors[:10]:
            self._error(result, rel, err)
        result["files"] += stats.files
        result["bytes"] += stats.disk
        return stats.disk

    def _rewritten(self, u, moved, inos, par):
        """True when what was moved is not what was checked, or a path was made again since."""
        taken = {}
        for m in moved:
            if m.ino != inos.get(m.parts):
                return True
            taken[m.parts] = m
        for p in u.paths:
            if p not in inos:
                continue  # already gone at the check
            st = par.lstat(p)[1]
            # moved: nothing may be there now; left (another group's, an error): still the same
            if st is not None and (p in taken or st.st_ino != inos[p]):
                return True
        return False

    def _recheck(self, fd, u, locks, dev, since_ns, used_after, par):
        """Check a chosen unit again just before it leaves (as systemd-tmpfiles does).

        Returns ``(busy, changed, inos)``: busy, a reason when a process holds a lock on one of
        its entries or the tool's lock; changed, a reason when a file in it was written, replaced,
        renamed or linked in since the walk began (its ctime or mtime is newer than ``since_ns``)
        or, unless age_by is mtime, read since the unit was chosen (atime after ``used_after``;
        for its ``read_paths``, files no walk reads, since the walk began); inos, the inode of
        each path now (the move takes only that inode). With ``since_ns`` None (check mode) only
        locks are looked for."""
        busy = self._unit_busy(fd, u, locks, dev)
        if busy:
            return busy, None, {}
        check_locks = locks.on_device(dev)
        use_atime = self.policy.age_by != "mtime"
        inos = {}

        def fresh(st):
            if since_ns is None or stat.S_ISDIR(st.st_mode):
                return None
            if st.st_ctime_ns > since_ns or st.st_mtime_ns > since_ns:
                return "changed since the walk"
            if use_atime and st.st_atime > used_after:
                return "used since the walk"
            return None

        for p in u.paths:
            pfd, st = par.lstat(p)
            if st is None:
                continue
            inos[p] = st.st_ino
            if check_locks and locks.held(st, pfd, p[-1]):
                return "%s is locked by a process" % "/".join(p), None, inos
            why = fresh(st)
            if why:
                return None, "%s %s" % ("/".join(p), why), inos
            if not stat.S_ISDIR(st.st_mode):
                continue
            try:
                sfd = open_subdir(pfd, p[-1], expect=st)
            except OSError:
                continue
            if sfd is None:
                return None, "%s replaced since the walk" % "/".join(p), inos
            try:
                for d in Walker(sfd, one_fs=True).walk():
                    for name, est in d.entries:
                        if check_locks and locks.held(est, d.fd, name):
                            where = p + (tuple(d.rel.split("/")) if d.rel else ()) + (name,)
                            return "%s is locked by a process" % "/".join(where), None, inos
                        why = fresh(est)
                        if why:
                            return None, "%s/%s %s" % ("/".join(p), name, why), inos
            finally:
                os.close(sfd)
        if use_atime and since_ns is not None:
            # where its last use came from, outside its own paths (a model's blobs, which no
            # walk reads): read since the walk began, it is in use again (>=: the filesystem's
            # clock ticks in milliseconds, a read may share the trash's tick)
            for p in u.read_paths:
                st = par.lstat(p)[1]
                if st is not None and stat.S_ISREG(st.st_mode) and st.st_atime_ns >= since_ns:
                    return None, "%s used since the walk" % "/".join(p), inos
        return None, None, inos

    def _unit_busy(self, fd, u, locks, dev):
        """Why the unit must wait when one of its tool's lock files is held, else None."""
        for lp in u.locks:
            with entry_below(fd, lp, dev) as (pfd, st):
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    cfd = open_subdir(pfd, lp[-1], expect=st)
                    if cfd is None:
                        continue
                    try:
                        for name, est in scan(cfd):
                            if locks.held(est, cfd, name):
                                return "tool lock %s/%s held" % ("/".join(lp), name)
                    finally:
                        os.close(cfd)
                elif locks.held(st, pfd, lp[-1]):
                    return "tool lock %s held" % "/".join(lp)
        return None

    def _count(self, result, u, reason, freed, files):
        result["units"] += 1
        result["files"] += files
        result["bytes"] += freed
        if len(result["sample"]) < self.sample_size:
            result["sample"].append(
                {
                    "key": u.key,
                    "name": u.name,
                    "kind": u.kind,
                    "bytes": freed,
                    "last_used": int(u.last_used(self.policy.age_by)),
                    "reason": reason,
                }
            )

    def _error(self, result, rel, err):
        if len(result["errors"]) < 50:
            result["errors"].append("%s: %s" % (rel, err))

    def _walk_notes(self, walker, result):
        self.foreign.merge(walker.foreign)
        for rel, err in walker.errors:
            self._error(result, rel, err)
        if walker.other_fs:
            result["other_fs"] = walker.other_fs[:20]

    # -- generic: file by file ----------------------------------------------------------------
    def _file_time(self, st):
        if self.policy.age_by == "atime":
            return st.st_atime
        if self.policy.age_by == "mtime":
            return st.st_mtime
        return st.st_atime if st.st_atime > st.st_mtime else st.st_mtime

    def _run_per_file(self, fd, result, now, mounts, locks):
        journal = Journal(fd, self.lock_dir, write=not self.check, path=self.path)
        try:
            journal.begin(now, self.policy, "per-file")
            self._per_file(fd, result, now, mounts, locks, journal)
            if not self.check:
                journal.done()
        finally:
            journal.close()

    def _per_file(self, fd, result, now, mounts, locks, journal):
        if not self.check and _has_trash(fd):
            Trash(fd, os.fstat(fd).st_dev, self.cache_gid).close()  # leftovers of an interrupted unit-format run
        pol = self.policy
        young = now - pol.min_age
        cutoff = now - pol.max_age if pol.max_age is not None else None
        total_disk = 0
        lru_cut = None
        if pol.max_size is not None or pol.min_free is not None:
            # pass 1: times and sizes only (two arrays), to find the LRU cut-off time
            self.dir_disk = 0
            times = array("d")
            sizes = array("q")
            aged = 0
            for _d, _name, st in self._files(fd, mounts, locks, result, notes=False):
                t = self._file_time(st)
                disk = st.st_blocks * 512 if st.st_nlink <= 1 else 0
                total_disk += st.st_blocks * 512
                if max(t, st.st_mtime) >= young:
                    continue
                if cutoff is not None and t < cutoff:
                    aged += disk
                    continue
                times.append(t)
                sizes.append(disk)
            total_disk += self.dir_disk
            need = 0
            if pol.max_size is not None:
                need = max(need, total_disk - aged - pol.max_size)
            if pol.min_free is not None:
                need = max(need, pol.min_free - (free_bytes(fd) + aged))
            if need > 0 and len(times):
                order = sorted(range(len(times)), key=times.__getitem__)
                acc = 0
                lru_cut = times[order[-1]]
                for i in order:
                    acc += sizes[i]
                    if acc >= need:
                        lru_cut = times[i]
                        break
                del order
            del times, sizes
        if journal.cut is not None and (pol.max_size is not None or pol.min_free is not None):
            # an interrupted run with this policy had chosen up to its cut: finish its job
            lru_cut = journal.cut if lru_cut is None else max(lru_cut, journal.cut)
        journal.run_record(cut=lru_cut)
        self.dir_disk = 0
        # pass 2 (or the only pass): delete, then empty directories bottom-up
        dirs = []
        units = files = freed = 0
        before_bytes = 0
        remaining = {}
        emptied = set()

        def after_dir(d):
            if d.rel in emptied:
                journal.after_dir(d.fd)

        for d, name, st in self._files(fd, mounts, locks, result, dirs=dirs, remaining=remaining, after=after_dir):
            before_bytes += st.st_blocks * 512
            t = self._file_time(st)
            if max(t, st.st_mtime) >= young:
                continue
            reason = None
            if cutoff is not None and t < cutoff:
                reason = "max_age"
            elif lru_cut is not None and t <= lru_cut:
                reason = "max_size" if pol.max_size is not None else "min_free"
            if reason is None:
                continue
            rel = d.rel + "/" + name if d.rel else name
            if pol.exclude and matches(pol.exclude, rel, name):
                continue
            if locks.held(st, d.fd, name):
                result["busy"].append(rel)
                continue
            if not self.check:
                try:
                    now_st = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if (now_st.st_ino, now_st.st_gid) != (st.st_ino, self.cache_gid):
                    self.foreign.add(rel, now_st)  # replaced since the walk: not what was chosen
                    continue
                if (now_st.st_mtime_ns, now_st.st_ctime_ns) != (st.st_mtime_ns, st.st_ctime_ns) or (
                    self._file_time(now_st) > t and self._file_time(now_st) >= young
                ):
                    continue  # written or used since the walk: min_age holds until it goes
                if d.rel not in emptied:
                    emptied.add(d.rel)
                    journal.before_dir(d.st)
                try:
                    os.unlink(name, dir_fd=d.fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self._error(result, rel, exc.strerror or exc)
                    continue
            remaining[d.rel] -= 1
            disk = st.st_blocks * 512 if st.st_nlink <= 1 else 0
            units += 1
            files += 1
            freed += disk
            if len(result["sample"]) < self.sample_size:
                result["sample"].append(
                    {"key": rel, "name": name, "kind": "file", "bytes": disk, "last_used": int(t), "reason": reason}
                )
        before_bytes += self.dir_disk
        result["before"] = {"bytes": before_bytes}
        # empty directories, deepest first; never the cache dir itself nor its top-level dirs
        # (a directory a killed run emptied is judged by its time before that run: Journal.dir_time)
        removed_dirs = 0
        dir_st = {rel: dst for rel, dst, _parent in dirs}
        young_ns = int(young * 1e9)
        for rel, dst, parent in reversed(dirs):
            if remaining.get(rel, 1) != 0 or "/" not in rel:
                continue
            if journal.dir_time(dst.st_ino, dst.st_mtime_ns) >= young_ns:
                continue
            if pol.exclude and matches(pol.exclude, rel, rel.rsplit("/", 1)[-1]):
                continue
            if not self.check:
                parts = tuple(rel.split("/"))
                pfd = open_parent(fd, parts, os.fstat(fd).st_dev, mounts)
                if pfd is None:
                    continue
                try:
                    pst = dir_st.get(parent)
                    if pst is not None:
                        journal.before_dir(pst)
                    os.rmdir(parts[-1], dir_fd=pfd)
                    journal.after_dir(pfd)
                except OSError:
                    continue
                finally:
                    os.close(pfd)
            removed_dirs += 1
            remaining[parent] -= 1
        result["units"] = units
        result["files"] = files
        result["bytes"] = freed
        result["dirs"] = removed_dirs
        result["after"] = {"bytes": max(0, before_bytes - freed)}
        result["changed"] = bool(units or removed_dirs)

    def _files(self, fd, mounts, locks, result, notes=True, dirs=None, remaining=None, after=None):
        """Yield (dir, name, lstat) for every non-directory entry, honouring excludes and locks."""
        walker = self._walker(fd)
        exclude = self.policy.exclude
        for d in walker.walk():
            locks.maybe_refresh(1.0)
            self.dir_disk += d.st.st_blocks * 512
            base = d.rel + "/" if d.rel else ""
            nfiles = 0
            ndirs = 0
            for name, st in d.entries:
                if stat.S_ISDIR(st.st_mode):
                    rel = base + name
                    if not d.rel and is_prune_trash(name, st):
                        d.skip.add(name)
                    elif tuple(rel.split("/")) in mounts:
                        d.skip.add(name)
                    elif locks.held(st):
                        d.skip.add(name)
                        if notes:
                            result["busy"].append(rel)
                    elif exclude and matches(exclude, rel, name):
                        d.skip.add(name)
                    ndirs += 1
                else:
                    nfiles += 1
            if dirs is not None:
                parent = d.rel.rsplit("/", 1)[0] if "/" in d.rel else ""
                dirs.append((d.rel, d.st, parent))
                # a directory is removable when all its files went and all its subdirs were removed
                remaining[d.rel] = nfiles + ndirs + d.foreign
            for name, st in d.entries:
                if not stat.S_ISDIR(st.st_mode):
                    yield d, name, st
            if after is not None:
                after(d)
        if notes:
            self._walk_notes(walker, result)


def summary_line(res, check=False, name=None):
    """One log line for a Pruner result (the module's ``summary``, the scheduled job's log)."""
    label = name or res["path"]
    if res.get("skipped"):
        return "cache_prune %s skipped: %s" % (label, res.get("msg", ""))
    return "cache_prune %s format=%s %sunits=%d files=%d freed=%s busy=%d foreign=%d errors=%d duration=%.1fs" % (
        label,
        res["format"],
        "(dry run) " if check else "",
        res["units"],
        res["files"],
        human(res["bytes"]),
        len(res["busy"]),
        (res.get("foreign") or {}).get("count", 0),
        len(res["errors"]),
        res.get("duration", 0.0),
    )
