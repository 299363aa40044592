# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_verify's engine: check every content-addressed unit of a cache against its tool's digest.

Private module_utils (leading underscore): the API may change between releases.

One walk of the cache (``_fs.Walker`` with the cache group: only the cache's entries, no symlink
followed, one filesystem) drives the format's ``verify(ctx)`` function (``Format.verifier``,
appended at the end of each ``_formats/<fmt>.py``). The format calls, per file or unit:

``ctx.check(unit, st, kind, expected, method, files=..., sig=..., target=...)``
    a unit to check; ``kind`` names one of the CHECKS below (run in forked workers),
    ``expected`` what the tool recorded, ``method`` the label the results count it under.
``ctx.unverifiable(parts, st)``
    a regular file nothing records a digest for: counted, never passed as verified.

Each check reads the member-written files with ``_fs.open_member_file`` (O_NOFOLLOW, O_NONBLOCK,
regular files only, at most the size the walk saw) below descriptors opened without following a
link; a file whose identity changed since the walk, or changed within ``min_age``, is
``skipped_busy``. A sparse file is never read (a member's 1 TB hole would keep root busy).

Incremental: a root-only state file (``state-<dev>-<ino>.json`` in ``VERIFY_DIR``, opened with
``_fs.open_private_dir``) remembers for each verified unit its identity (device, inode, size,
mtime, ctime; for a directory unit a fingerprint of its files) and the digest found; an unchanged
unit is counted verified without being read again (``full`` re-reads all).

Quarantine: a corrupt unit whose identity is still the one checked is renamed into the prune
engine's trash (``_prune.Trash``) and deleted there, so the tool downloads it again.

The summary for the report and the doctor: ``VERIFY_DIR/summary.json``, root-owned 0640,
written atomically, ``{"version": 1, "time": epoch, "caches": {name: counts}}``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import stat
import subprocess
import time
import zipfile

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats, _parallel
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    MemberFileError,
    NotBelow,
    Walker,
    mounts_below,
    open_below,
    open_dir_nofollow,
    open_lock_file,
    open_member_file,
    open_private_dir,
    read_member_file,
    write_atomic,
)

VERIFY_DIR = "/var/lib/mlinfra-shared-cache/verify"
SUMMARY_NAME = "summary.json"
SAMPLE_MAX = 20
COUNT_KEYS = ("verified", "verified_bytes", "corrupt", "corrupt_bytes", "unverifiable", "unverifiable_bytes")
_CHUNK = 1 << 20
# A file whose allocated blocks cover less than this share of its size is sparse: not read.
SPARSE_RATIO = 8
SPARSE_MIN = 1 << 20
RECORD_MAX = 16 << 20
# Per check: at least this many seconds, plus a second per this many bytes (a zip bomb, a slow disk).
CHECK_SECONDS = 60
CHECK_RATE = 20 << 20
DPKG_DEB = "/usr/bin/dpkg-deb"
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError)


class VerifyError(Exception):
    """The cache cannot be verified (bad path, unknown format); nothing was changed."""


class Deadline(Exception):
    """A check ran past its time."""


# ------------------------------------------------------------------------------------------
# What the format's verify(ctx) sees
# ------------------------------------------------------------------------------------------
class Item:
    """One unit to check (built by ``Context.check``)."""

    __slots__ = ("unit", "ident", "size", "kind", "target", "expected", "method", "sig", "key")

    def __init__(self, unit, ident, size, kind, target, expected, method, sig, key):
        self.unit = unit  # paths (tuples) quarantine moves, in order
        self.ident = ident  # (dev, ino, size, mtime_ns) of unit[0] as the walk saw it
        self.size = size
        self.kind = kind
        self.target = target  # path (tuple) the check reads
        self.expected = expected
        self.method = method
        self.sig = sig  # incremental signature
        self.key = key  # in the state file: kind, device, inode


def identity(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def signature(st):
    return "%d:%d:%d:%d:%d" % (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DirPrint:
    """The fingerprint of a directory unit's files (for the state file): count, bytes, identities."""

    __slots__ = ("st", "files", "size", "h", "young")

    def __init__(self, st):
        self.st = st
        self.files = 0
        self.size = 0
        self.young = 0.0
        self.h = hashlib.sha256(signature(st).encode())

    def add(self, parts, st):
        self.files += 1
        self.size += st.st_size
        self.young = max(self.young, st.st_mtime, st.st_ctime)
        self.h.update(("/".join(parts) + "\0" + signature(st) + "\n").encode("utf-8", "surrogateescape"))

    def sig(self):
        return "dir:%d:%d:%s" % (self.files, self.size, self.h.hexdigest())


class Context:
    """Handed to a format's ``verify(ctx)``; see the module docstring."""

    def __init__(self, engine, root_fd, walker, options=None):
        self.engine = engine
        self.options = options or {}
        self.root_fd = root_fd
        self.walker = walker
        self.notes = engine.notes
        self.gid = engine.gid  # the cache group (the walk shows only its entries)

    def walk(self):
        for d in self.walker.walk():
            if not d.rel:
                trash = {e[0] for e in d.entries if e[0].startswith(_formats.TRASH_NAME)}
                d.skip.update(trash)
                d.entries = [e for e in d.entries if e[0] not in trash]
            yield d

    def files(self):
        """(Dir, path tuple, lstat) of every regular file of the cache's group, walk order."""
        for d in self.walk():
            base = tuple(d.rel.split("/")) if d.rel else ()
            for name, st in d.entries:
                if stat.S_ISREG(st.st_mode):
                    yield d, base + (name,), st

    @staticmethod
    def parts(d, name=None):
        base = tuple(d.rel.split("/")) if d.rel else ()
        return base + (name,) if name is not None else base

    def check(self, unit, st, kind, expected, method, target=None, sig=None, size=None, young=None):
        """Check ``unit`` (a path tuple, or a list of them: what quarantine moves; the first is
        the unit's own entry, lstat ``st``) with CHECKS[kind] against ``expected``."""
        eng = self.engine
        if size is None:
            size = st.st_size
        if young is None:
            young = st.st_mtime if st.st_mtime > st.st_ctime else st.st_ctime
        if young > eng.busy_after:
            eng.busy(method)
            return
        key = "%s|%d:%d" % (kind, st.st_dev, st.st_ino)
        if sig is None:
            sig = "%d:%d:%d" % (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if not eng.full:
            old = eng.old_state.get(key)
            if old is not None and old[0] == sig and old[1] == expected:
                eng.reuse(key, old, size, method)
                return
        units = [unit] if isinstance(unit, tuple) else list(unit)
        eng.add(Item(units, identity(st), size, kind, target or units[0], expected, method, sig, key))

    def unverifiable(self, parts, st, size=None):
        self.engine.count_unverifiable(parts, st.st_size if size is None else size)

    def read_small(self, dir_fd, name, max_bytes):
        """A member-written file's bytes, or None (refused: too big, not a regular file, ...)."""
        try:
            return read_member_file(dir_fd, name, max_bytes)
        except (MemberFileError, OSError):
            return None


# ------------------------------------------------------------------------------------------
# Checks (run in the workers; module-level so a forked worker can run them)
# ------------------------------------------------------------------------------------------
_ROOT = {"fd": None, "dev": None}


class Outcome(Exception):
    """Raised inside a check: ``status`` (busy, unverifiable, corrupt), ``actual``, ``path``."""

    def __init__(self, status, actual="", path=None):
        Exception.__init__(self, status)
        self.status = status
        self.actual = actual
        self.path = path


def _open_target(parts, st_ident=None, max_bytes=None):
    """(fd, fstat) of the regular file ``parts`` below the cache root, the very inode checked."""
    try:
        pfd = open_below(_ROOT["fd"], parts[:-1], _ROOT["dev"])
    except (NotBelow, OSError):
        raise Outcome("busy", "gone") from None
    try:
        fd, st = open_member_file(pfd, parts[-1], max_bytes if max_bytes is not None else (1 << 62))
    except MemberFileError as exc:
        if exc.errno == errno.EFBIG:
            raise Outcome("busy", "grew") from None
        raise Outcome("busy", exc.strerror or str(exc)) from None
    finally:
        os.close(pfd)
    if st_ident is not None and identity(st) != tuple(st_ident):
        os.close(fd)
        raise Outcome("busy", "changed")
    return fd, st


def _sparse(st):
    return st.st_size >= SPARSE_MIN and st.st_blocks * 512 * SPARSE_RATIO < st.st_size


def _hash_fd(fd, algo, deadline, prefix=b""):
    h = hashlib.new(algo) if algo != "md5" else hashlib.md5(usedforsecurity=False)
    if prefix:
        h.update(prefix)
    update_fd(fd, (h,), deadline)
    return h.hexdigest()


def update_fd(fd, hashes, deadline):
    """Feed the rest of ``fd`` to every hash object of ``hashes`` (one read for all), by the deadline."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    n = 0
    while True:
        got = os.readv(fd, [buf])
        if not got:
            break
        for h in hashes:
            h.update(view[:got])
        n += 1
        if not n & 63 and time.monotonic() > deadline:
            raise Outcome("busy", "time limit")


def _deadline(size):
    return time.monotonic() + CHECK_SECONDS + size / CHECK_RATE


def check_digest(item):
    """The file's digest (``algo`` in expected: 'sha256:<hex>', 'gitblob:<hex>', 'sha256-prefix:<hex>')."""
    algo, _sep, want = item["expected"].partition(":")
    fd, st = _open_target(item["target"], item["ident"], item["ident"][2])
    try:
        if _sparse(st):
            raise Outcome("unverifiable", "sparse file: not read")
        deadline = _deadline(st.st_size)
        if algo == "gitblob":
            got = _hash_fd(fd, "sha1", deadline, b"blob %d\0" % st.st_size)
        elif algo.endswith("-prefix"):
            got = _hash_fd(fd, algo[: -len("-prefix")], deadline)[: len(want)]
        else:
            got = _hash_fd(fd, algo, deadline)
    finally:
        os.close(fd)
    if got not in want.lower().split("|"):
        raise Outcome("corrupt", got)
    return got


def _record_rows(data):
    """[(path, algo, b64digest)] of a wheel RECORD's hashed rows."""
    out = []
    for row in csv.reader(io.StringIO(data.decode("utf-8", "replace"))):
        if len(row) >= 2 and row[1] and "=" in row[1]:
            algo, _sep, b64 = row[1].partition("=")
            out.append((row[0], algo, b64))
    return out


def _b64hex(b64):
    try:
        return binascii.hexlify(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))).decode("ascii")
    except (binascii.Error, ValueError):
        return ""


def _hash_member(zf, member, algo, deadline):
    """Hex digest of a zip member (name or ZipInfo), read in chunks; its CRC is checked at the end."""
    h = hashlib.new(algo)
    with zf.open(member) as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            if time.monotonic() > deadline:
                raise Outcome("busy", "time limit")
    return h.hexdigest()


def check_wheel(item):
    """A wheel (zip) against its own RECORD: every listed file's digest; the zip's CRCs too."""
    fd, st = _open_target(item["target"], item["ident"], item["ident"][2])
    deadline = _deadline(st.st_size)
    f = os.fdopen(fd, "rb")
    try:
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError):
            if item["expected"] == "maybe":
                raise Outcome("unverifiable", "not a wheel") from None
            raise Outcome("corrupt", "not a readable zip") from None
        with zf:
            records = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
            if len(records) != 1:
                if item["expected"] == "maybe":
                    raise Outcome("unverifiable", "no RECORD")
                raise Outcome("corrupt", "no single .dist-info/RECORD")
            try:
                info = zf.getinfo(records[0])
                if info.file_size > RECORD_MAX:
                    raise Outcome("corrupt", "RECORD too large")
                rows = _record_rows(zf.read(records[0]))
                if not rows:
                    raise Outcome("unverifiable", "RECORD lists no digest")
                for path, algo, b64 in rows:
                    if algo not in hashlib.algorithms_guaranteed:
                        raise Outcome("unverifiable", "RECORD algorithm %s" % algo)
                    try:
                        got = _hash_member(zf, path, algo, deadline)
                    except KeyError:
                        raise Outcome("corrupt", "%s missing" % path) from None
                    if got != _b64hex(b64):
                        raise Outcome("corrupt", "%s: %s=%s" % (path, algo, got), path)
            except _ZIP_ERRORS as exc:
                raise Outcome("corrupt", "zip: %s" % exc) from None
    finally:
        f.close()
    return "RECORD ok (%d files)" % len(rows)


def _open_rel_file(dir_fd, rel, max_bytes):
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise Outcome("corrupt", "RECORD path %s outside the unit" % rel)
    try:
        pfd = open_below(dir_fd, parts[:-1], _ROOT["dev"])
    except (NotBelow, OSError):
        raise Outcome("corrupt", "%s missing" % rel) from None
    try:
        return open_member_file(pfd, parts[-1], max_bytes)
    except MemberFileError as exc:
        if exc.errno == errno.ENOENT:
            raise Outcome("corrupt", "%s missing" % rel) from None
        raise Outcome("corrupt", "%s: %s" % (rel, exc.strerror)) from None
    finally:
        os.close(pfd)


def check_record_dir(item):
    """An unpacked wheel (uv's archive) against its ``*.dist-info/RECORD`` (sha256 per file)."""
    try:
        dfd = open_below(_ROOT["fd"], item["target"], _ROOT["dev"])
    except (NotBelow, OSError):
        raise Outcome("busy", "gone") from None
    try:
        st = os.fstat(dfd)
        if (st.st_dev, st.st_ino) != tuple(item["ident"][:2]):
            raise Outcome("busy", "changed")
        infos = [n for n in os.listdir(dfd) if n.endswith(".dist-info")]
        if len(infos) != 1:
            raise Outcome("unverifiable", "no single .dist-info")
        data = None
        try:
            ifd = open_below(dfd, [infos[0]], _ROOT["dev"])
            try:
                data = read_member_file(ifd, "RECORD", RECORD_MAX)
            finally:
                os.close(ifd)
        except (NotBelow, OSError):
            raise Outcome("unverifiable", "no readable RECORD") from None
        rows = _record_rows(data)
        if not rows:
            raise Outcome("unverifiable", "RECORD lists no digest")
        deadline = _deadline(item["size"])
        for rel, algo, b64 in rows:
            if algo not in hashlib.algorithms_guaranteed:
                raise Outcome("unverifiable", "RECORD algorithm %s" % algo)
            fd, fst = _open_rel_file(dfd, rel, 1 << 62)
            try:
                if _sparse(fst):
                    raise Outcome("unverifiable", "sparse file: not read")
                got = _hash_fd(fd, algo, deadline)
            finally:
                os.close(fd)
            if got != _b64hex(b64):
                raise Outcome("corrupt", "%s: %s=%s" % (rel, algo, got), tuple(item["target"]) + tuple(rel.split("/")))
    finally:
        os.close(dfd)
    return "RECORD ok (%d files)" % len(rows)


def check_deb(item):
    """Structural check of a .deb by dpkg-deb: both members unpack (their compressors' CRCs)."""
    fd, st = _open_target(item["target"], item["ident"], item["ident"][2])
    try:
        if _sparse(st):
            raise Outcome("unverifiable", "sparse file: not read")
        if not os.path.exists(DPKG_DEB):
            raise Outcome("unverifiable", "dpkg-deb not installed")
        for what in ("--ctrl-tarfile", "--fsys-tarfile"):
            os.lseek(fd, 0, os.SEEK_SET)
            try:
                # stdin is the checked file's descriptor (never its path); also run by the nightly
                # host command, which has no AnsibleModule for run_command
                res = subprocess.run(  # pylint: disable=ansible-bad-function
                    [DPKG_DEB, what, "/dev/stdin"],
                    stdin=fd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=CHECK_SECONDS + st.st_size / CHECK_RATE,
                    check=False,
                    env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                )
            except subprocess.TimeoutExpired:
                raise Outcome("busy", "time limit") from None
            if res.returncode:
                msg = res.stderr.decode("utf-8", "replace").strip().splitlines()
                raise Outcome("corrupt", "dpkg-deb %s: %s" % (what, msg[-1] if msg else res.returncode))
    finally:
        os.close(fd)
    return "dpkg-deb ok"


def check_npm_index(item):
    """A cacache index bucket: every line is '<sha1 of the JSON>\\t<JSON>' (cacache's own check)."""
    fd, _st = _open_target(item["target"], item["ident"], item["ident"][2])
    try:
        data = b""
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    lines = 0
    for line in data.split(b"\n"):
        if not line:
            continue
        want, _tab, js = line.partition(b"\t")
        got = hashlib.sha1(js, usedforsecurity=False).hexdigest()
        if got.encode() != want:
            raise Outcome("corrupt", "line %d: sha1 %s" % (lines + 1, got))
        lines += 1
    return "%d lines" % lines


def _h1(entries):
    """Go's dirhash.Hash1 over [(name, sha256 hex)]: 'h1:' + base64(sha256 of the summary)."""
    h = hashlib.sha256()
    for name, hexd in sorted(entries, key=lambda e: e[0].encode("utf-8", "surrogateescape")):
        if "\n" in name:
            raise Outcome("corrupt", "a file name with a newline")
        h.update(("%s  %s\n" % (hexd, name)).encode("utf-8", "surrogateescape"))
    return "h1:" + base64.b64encode(h.digest()).decode("ascii")


def check_go_zip(item):
    """A Go module zip against its .ziphash (dirhash.HashZip: every entry's name and SHA-256)."""
    want = item["expected"].split(" ", 1)[0]
    fd, st = _open_target(item["target"], item["ident"], item["ident"][2])
    deadline = _deadline(st.st_size)
    f = os.fdopen(fd, "rb")
    try:
        entries = []
        try:
            with zipfile.ZipFile(f) as zf:
                for info in zf.infolist():
                    entries.append((info.filename, _hash_member(zf, info, "sha256", deadline)))
        except _ZIP_ERRORS as exc:
            raise Outcome("corrupt", "zip: %s" % exc) from None
    finally:
        f.close()
    got = _h1(entries)
    if got != want:
        raise Outcome("corrupt", got)
    return got


def check_go_dir(item):
    """An extracted Go module directory against its .ziphash (dirhash.HashDir with the
    ``module@version`` prefix). Go never extracts a symbolic link: one is corruption, not followed."""
    want, _sp, prefix = item["expected"].partition(" ")
    try:
        top = open_below(_ROOT["fd"], item["target"], _ROOT["dev"])
    except (NotBelow, OSError):
        raise Outcome("busy", "gone") from None
    deadline = _deadline(item["size"])
    entries = []
    stack = [(top, "")]
    try:
        st = os.fstat(top)
        if (st.st_dev, st.st_ino) != tuple(item["ident"][:2]):
            raise Outcome("busy", "changed")
        while stack:
            dfd, rel = stack.pop()
            try:
                for name in sorted(os.listdir(dfd)):
                    est = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    path = rel + "/" + name if rel else name
                    if stat.S_ISDIR(est.st_mode):
                        try:
                            stack.append((open_below(dfd, [name], _ROOT["dev"]), path))
                        except (NotBelow, OSError):
                            raise Outcome("busy", "changed") from None
                        continue
                    if not stat.S_ISREG(est.st_mode):
                        raise Outcome("corrupt", "%s is not a regular file" % path, tuple(item["target"]) + (name,))
                    fd, fst = open_member_file(dfd, name, 1 << 62)
                    try:
                        if _sparse(fst):
                            raise Outcome("unverifiable", "sparse file: not read")
                        entries.append((prefix + "/" + path, _hash_fd(fd, "sha256", deadline)))
                    finally:
                        os.close(fd)
            finally:
                if dfd != top:
                    os.close(dfd)
    except MemberFileError as exc:
        raise Outcome("busy", exc.strerror or str(exc)) from None
    finally:
        for dfd, _rel in stack:
            os.close(dfd)
        os.close(top)
    got = _h1(entries)
    if got != want:
        raise Outcome("corrupt", got)
    return got


CHECKS = {
    "digest": check_digest,
    "wheel": check_wheel,
    "record_dir": check_record_dir,
    "deb": check_deb,
    "npm_index": check_npm_index,
    "go_zip": check_go_zip,
    "go_dir": check_go_dir,
}


GUARDS = {}  # check kind -> quarantine guard (see register_check)


def register_check(name, func, guard=None):
    """A format adds its own check (a module-level function of one item dict). ``guard``: a
    context manager ``guard(root_fd, item, gid, records)`` held while quarantine moves an item of
    this kind (the tool's lock on the entry); it yields the extra paths to move with the unit, or
    None to leave the item where it is (it changed, or its lock is held). ``records``: a
    ``_prune.LockRecords`` in the verify state directory, so a lock
    found held by every run for ``_prune.TOOL_LOCK_STALE`` is taken as stale, not obeyed for ever."""
    CHECKS[name] = func
    if guard is not None:
        GUARDS[name] = guard


@contextlib.contextmanager
def _no_guard(_root_fd, _item, _gid, _records=None):
    yield ()


def run_batch(batch):
    """[(status, actual, path)] for a list of item dicts; in a worker or in the caller."""
    out = []
    for item in batch:
        try:
            actual = CHECKS[item["kind"]](item)
            out.append(("verified", actual, None))
        except Outcome as o:
            out.append((o.status, o.actual, o.path))
        except Exception as exc:  # noqa: BLE001 - a broken unit must not stop the run
            out.append(("unverifiable", "error: %s" % exc, None))
    return out


# ------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------
def empty_counts():
    c = {k: 0 for k in COUNT_KEYS}
    c["skipped_busy"] = 0
    c["corrupt_sample"] = []
    return c


class Verifier:
    """Verify one cache directory. ``run()`` returns the results dict (see cache_verify RETURN)."""

    def __init__(
        self,
        path,
        fmt="auto",
        gid=None,
        full=False,
        quarantine=False,
        check_mode=False,
        workers=None,
        min_age=600,
        state_dir=None,
        sample_size=SAMPLE_MAX,
        lock_timeout=60,
        now=None,
        options=None,
    ):
        self.options = options or {}
        self.path = path
        self.fmt = fmt
        self.gid = gid
        self.full = full
        self.quarantine = quarantine
        self.check_mode = check_mode
        self.workers = workers
        self.min_age = min_age
        self.state_dir = state_dir
        self.sample_size = min(sample_size, SAMPLE_MAX)
        self.lock_timeout = lock_timeout
        self.now = now if now is not None else time.time()
        self.notes = []
        self.counts = empty_counts()
        self.methods = {}
        self.corrupt = []  # Items found corrupt (with actual)
        self.errors = []
        self.hashed_bytes = 0
        self.reused = 0
        self.old_state = {}
        self.new_state = {}
        self._pending = []
        self._pending_bytes = 0
        self._futures = []
        self._pool = None
        self._mc = {}
        self.busy_after = self.now - self.min_age if self.min_age else float("inf")

    # -- counting --------------------------------------------------------------------------
    def count_unverifiable(self, parts, size):
        self.counts["unverifiable"] += 1
        self.counts["unverifiable_bytes"] += size

    def _method(self, method, status):
        k = (method, status)
        self._mc[k] = self._mc.get(k, 0) + 1

    def busy(self, method):
        self.counts["skipped_busy"] += 1
        self._method(method, "skipped_busy")

    def reuse(self, key, old, size, method):
        """A unit unchanged since a run verified it: counted verified, not read."""
        c = self.counts
        c["verified"] += 1
        c["verified_bytes"] += size
        self.new_state[key] = old
        self.reused += 1
        self._method(method, "verified")

    def _result(self, item, status, actual, path):
        if status == "verified":
            self.counts["verified"] += 1
            self.counts["verified_bytes"] += item.size
            self.new_state[item.key] = [item.sig, item.expected, actual]
        elif status == "corrupt":
            self.counts["corrupt"] += 1
            self.counts["corrupt_bytes"] += item.size
            self.corrupt.append((item, actual, path))
            if len(self.counts["corrupt_sample"]) < self.sample_size:
                self.counts["corrupt_sample"].append(
                    {
                        "path": "/".join(path or item.target),
                        "expected": _shown(item.expected),
                        "actual": actual,
                    }
                )
        elif status == "busy":
            status = "skipped_busy"
            self.counts["skipped_busy"] += 1
        else:
            status = "unverifiable"
            self.counts["unverifiable"] += 1
            self.counts["unverifiable_bytes"] += item.size
            if actual and len(self.notes) < 50:
                self.notes.append("%s: %s" % ("/".join(item.target), actual))
        self._method(item.method, status)

    # -- scheduling ------------------------------------------------------------------------
    def add(self, item):
        self._pending.append(item)
        self._pending_bytes += item.size
        if len(self._pending) >= 512 or self._pending_bytes >= (64 << 20):
            self._flush()

    def _flush(self, final=False):
        if self._pending:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            jobs = [
                {"kind": i.kind, "target": i.target, "expected": i.expected, "ident": i.ident, "size": i.size}
                for i in batch
            ]
            pool = self._get_pool()
            if pool is None:
                self._collect(batch, run_batch(jobs))
            else:
                self._futures.append((batch, jobs, pool.submit(run_batch, jobs)))
        limit = 0 if final else 2 * max(1, self.workers or 1)
        while len(self._futures) > limit:
            batch, jobs, fut = self._futures.pop(0)
            try:
                res = fut.result()
            except Exception:  # noqa: BLE001 - a dead worker: run it here (checks are read-only)
                res = run_batch(jobs)
            self._collect(batch, res)

    def _collect(self, batch, results):
        for item, (status, actual, path) in zip(batch, results, strict=True):
            if status in ("verified", "corrupt"):
                self.hashed_bytes += item.size  # read whole (a busy or unverifiable one: not, or part)
            self._result(item, status, actual, path)

    def _get_pool(self):
        if self.workers is None:
            self.workers = _parallel.default_workers(64)
        if self.workers <= 1:
            return None
        if self._pool is None:
            try:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("fork")
                )
            except (ImportError, ValueError, OSError):
                self.workers = 1
                return None
        return self._pool

    # -- state -----------------------------------------------------------------------------
    def _state_name(self, st):
        return "state-%x-%d.json" % (st.st_dev, st.st_ino)

    def _load_state(self, dfd, name):
        try:
            data = read_member_file(dfd, name, 1 << 30)
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                return {}
            state = json.loads(data)
            return state.get("units", {}) if state.get("version") == 2 else {}
        except (OSError, ValueError, AttributeError):
            return {}

    # -- run -------------------------------------------------------------------------------
    def run(self):
        t0 = time.monotonic()
        try:
            root_fd = open_dir_nofollow(self.path)
        except OSError as exc:
            raise VerifyError("%s: %s" % (self.path, exc.strerror or exc)) from None
        sdir = lock_fd = None
        try:
            rst = os.fstat(root_fd)
            if self.gid is None:
                self.gid = rst.st_gid  # the cache group: cache_dir lays the directory out so
            fmt = self.fmt if self.fmt != "auto" else _formats.detect_format(root_fd)
            fobj = _formats.get_format(fmt)
            res = {"path": self.path, "format": fmt, "skipped": False}
            if fobj.verifier is None:
                res.update(self._finish(t0))
                res.update(skipped=True, msg="format %s: nothing the tool records to check against" % fmt)
                return res
            if self.state_dir is not None or os.geteuid() == 0:
                spath = self.state_dir or VERIFY_DIR
                sdir = open_private_dir(spath)
                lock_fd = open_lock_file(os.path.join(spath, "verify-%x-%d.lock" % (rst.st_dev, rst.st_ino)))
                if not _flock_wait(lock_fd, self.lock_timeout):
                    res.update(self._finish(t0))
                    res.update(skipped=True, msg="another verify of %s holds its lock; skipped" % self.path)
                    return res
                if not self.full:
                    self.old_state = self._load_state(sdir, self._state_name(rst))
            _ROOT["fd"], _ROOT["dev"] = root_fd, rst.st_dev
            walker = Walker(root_fd, gid=self.gid)
            mounts = mounts_below(self.path)
            try:
                fobj.verifier(Context(self, root_fd, walker, self.options))
                self._flush(final=True)
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    self._pool = None
            res["quarantined"] = self._quarantine(root_fd, rst, mounts) if self.quarantine else []
            if walker.error_count:
                self.errors.extend("%s: %s" % e for e in walker.errors)
            res["foreign"] = walker.foreign.as_dict()
            if sdir is not None and not self.check_mode and self.new_state != self.old_state:
                write_atomic(
                    os.path.join(spath, self._state_name(rst)),
                    json.dumps(
                        {"version": 2, "path": self.path, "time": self.now, "units": self.new_state},
                        separators=(",", ":"),
                    ),
                    mode=0o600,
                )
            res.update(self._finish(t0))
            return res
        finally:
            _ROOT["fd"] = None
            if lock_fd is not None:
                os.close(lock_fd)
            if sdir is not None:
                os.close(sdir)
            os.close(root_fd)

    def _finish(self, t0):
        for (method, status), n in self._mc.items():
            m = self.methods.setdefault(method, {"verified": 0, "corrupt": 0, "unverifiable": 0, "skipped_busy": 0})
            m[status] += n
        self._mc = {}
        out = dict(self.counts)
        out.update(
            methods=self.methods,
            hashed_bytes=self.hashed_bytes,
            reused=self.reused,
            errors=self.errors,
            notes=self.notes,
            duration=round(time.monotonic() - t0, 3),
        )
        return out

    def _quarantine(self, root_fd, rst, mounts):
        """Move each corrupt unit still the one checked into the prune engine's trash; delete it."""
        from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune

        mounts = set(mounts)
        done = []
        if not self.corrupt:
            return done
        trash = None
        # root's records of entry locks found held run after run (see _prune.LockRecords); none
        # for a user without a state directory (root's job cannot be attacked through theirs)
        records = _prune.LockRecords(root_fd, self.state_dir or (VERIFY_DIR if os.geteuid() == 0 else None))
        try:
            for item, _actual, _path in self.corrupt:
                entry = "/".join(item.target)
                if not _same(root_fd, item.target, item.ident, rst.st_dev):
                    self.notes.append("%s changed since it was checked: not quarantined" % entry)
                    continue
                if self.check_mode:
                    done.append(entry)
                    continue
                if trash is None:
                    trash = _prune.Trash(root_fd, rst.st_dev, self.gid)
                stats = _prune.RemoveStats(self.gid)
                moved = []
                stale = len(records.taken)
                with GUARDS.get(item.kind, _no_guard)(root_fd, item, self.gid, records) as extra:
                    if len(records.taken) > stale:
                        self.notes.append(
                            "%s: went on without its entry lock, found held or unusable by every run for %dh"
                            % (entry, _prune.TOOL_LOCK_STALE // 3600)
                        )
                    if extra is None:
                        self.notes.append("%s: its entry is locked or was linked again since: not quarantined" % entry)
                        continue
                    for parts in list(item.unit) + list(extra):
                        new = trash.move(tuple(parts), mounts, stats)
                        if new is not None:
                            moved.append(new)
                for new in moved:
                    trash.purge(new, None, stats)
                if moved:
                    done.append(entry)
                self.errors.extend("%s: %s" % e for e in stats.errors)
        finally:
            if trash is not None:
                trash.close()
        return done


def _same(root_fd, parts, ident, dev):
    try:
        pfd = open_below(root_fd, parts[:-1], dev)
    except (NotBelow, OSError):
        return False
    try:
        st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
    except OSError:
        return False
    finally:
        os.close(pfd)
    if stat.S_ISDIR(st.st_mode):
        return (st.st_dev, st.st_ino) == tuple(ident[:2])
    return identity(st) == tuple(ident)


def _shown(expected):
    return expected if isinstance(expected, str) else json.dumps(expected)


def _flock_wait(fd, timeout):
    deadline = time.monotonic() + max(0, timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------
# The summary file (read by the report and the doctor)
# ------------------------------------------------------------------------------------------
def summary_entry(res):
    out = {k: res.get(k, 0) for k in COUNT_KEYS}
    out["skipped_busy"] = res.get("skipped_busy", 0)
    out["corrupt_sample"] = list(res.get("corrupt_sample") or [])[:SAMPLE_MAX]
    return out


def write_summary(entries, state_dir=None, now=None):
    """Merge ``{cache name: result}`` into ``summary.json`` (root-owned 0640, atomic, under a lock)."""
    spath = state_dir or VERIFY_DIR
    dfd = open_private_dir(spath)
    try:
        lock = open_lock_file(os.path.join(spath, "summary.lock"))
        try:
            _flock_wait(lock, 60)
            try:
                data = json.loads(read_member_file(dfd, SUMMARY_NAME, 64 << 20))
                caches = data.get("caches", {}) if data.get("version") == 1 else {}
            except (OSError, ValueError, AttributeError):
                caches = {}
            for name, res in entries.items():
                caches[name] = summary_entry(res)
            doc = {"version": 1, "time": int(now if now is not None else time.time()), "caches": caches}
            text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
            write_atomic(os.path.join(spath, SUMMARY_NAME), text, mode=0o640)
        finally:
            os.close(lock)
    finally:
        os.close(dfd)
    return doc


def summary_line(res, name=None, check=False):
    return (
        "cache_verify %s%s format=%s verified=%d corrupt=%d unverifiable=%d busy=%d quarantined=%d hashed=%d "
        "duration=%.1fs"
    ) % (
        name or res.get("path"),
        " (check)" if check else "",
        res.get("format"),
        res.get("verified", 0),
        res.get("corrupt", 0),
        res.get("unverifiable", 0),
        res.get("skipped_busy", 0),
        len(res.get("quarantined") or []),
        res.get("hashed_bytes", 0),
        res.get("duration", 0.0),
    )
