# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-format knowledge of the caches: what a *unit* is, which files belong to it, its last use.

Shared by ``cache_prune`` (a unit is what gets deleted, whole) and ``cache_report`` (top-N largest
units). Both run ONE walk with ``_fs.Walker`` and feed every directory to a collector.

API (stable: only additions)
----------------------------
``FORMATS``                  tuple of format names (``external`` included: never pruned by file).
``get_format(name)``         -> ``Format``; raises ValueError for an unknown name.
``detect_format(root_fd)``   -> name guessed from the layout below an open directory ('generic' if unsure).
``Format``                   ``.name``, ``.description``, ``.prunable`` (False for external),
                             ``.per_file`` (True for generic: cache_prune deletes file by file, the
                             report's unit is the top-level entry), ``.collector(root_fd)``.
``Collector``                ``.visit(d)`` for every ``Dir`` a ``Walker`` yields (it may add names to
                             ``d.skip``); ``.finish()`` -> ``Collection``; ``.dir_disk``: allocated
                             bytes of the visited directories themselves (not in ``total_disk``). No I/O besides reading
                             small metadata files (HF refs, npm index buckets) relative to ``d.fd``.
``collect(root_fd, fmt, walker=None)``  convenience: one walk + finish -> ``Collection``.
``Collection``               ``.units`` (list of ``Unit``), ``.shared`` (id -> ``Shared``: objects
                             several units reference, HF blobs / npm content), ``.other_size``,
                             ``.other_disk``, ``.other_files`` (bytes/files in no unit: metadata,
                             locks, indexes, environments), ``.total_size``, ``.total_disk``,
                             ``.total_files``, ``.notes`` (list of str), ``.format`` (name).
``Unit``                     ``.key`` (unique within the cache), ``.name`` (display label),
                             ``.kind`` ('revision', 'wheel', 'http', 'conda package', 'module', 'deb',
                             'crate', 'npm entry', 'checkpoint', 'hub repo', 'file', 'entry', ...),
                             ``.size`` / ``.disk`` (apparent / allocated bytes, shared objects it
                             references included, hard links counted once per walk), ``.own_size``,
                             ``.own_disk``, ``.files``, ``.atime``, ``.mtime`` (newest over its files),
                             ``.recorded`` (last use the tool itself recorded, epoch seconds, or None),
                             ``.paths`` (tuples of components relative to the walked directory, in
                             the order they must be removed), ``.shared`` (ids into
                             ``Collection.shared``), ``.locks`` (tuples of tool lock files that must
                             not be held), ``.keep`` (None, or why the unit must not be deleted),
                             ``.last_used(age_by)`` with age_by in ('atime', 'mtime', 'newest'),
                             ``.stale`` (True for left-overs of interrupted downloads, STALE_KINDS).
``Format.tool_locks``        list of (relative path tuple, 'flock'|'fcntl') of the tool's own
                             cache-wide locks (apt ``archives/lock``, cargo ``.package-cache``).
``TRASH_NAME``               top-level directory cache_prune uses while removing units; left out.
``Format.post_prune(root_fd, collection, removed_keys)``  format clean-up after units went (empty HF
                             repos, conda ``urls.txt``); returns a list of notes.

Paths are tuples of ``str`` components (surrogate-escaped like ``_fs``), relative to the directory
the walk started from (the cache directory, e.g. ``/mnt/storage/cache/pip``).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    MemberFileError,
    Walker,
    member_lines,
    open_member_file,
    read_member_file,
)

FORMATS = ("huggingface", "torch", "pip", "conda", "apt", "npm", "go", "cargo", "generic", "external")
AGE_BY = ("atime", "mtime", "newest")
# Left-overs of interrupted downloads: cache_prune removes them once older than min_age,
# whatever max_age says (Unit.stale).
STALE_KINDS = frozenset(["incomplete download", "partial download", "temporary file"])
# cache_prune moves a unit here (one rename per path) before deleting it, so the tool never sees
# half a unit; collectors leave it out (it only lasts during a prune, or until the next one).
TRASH_NAME = ".mlinfra-prune-trash"

# Files members write and root reads (issue 11: every cache-group member is an untrusted local user)
# are opened with _fs.open_member_file (no symlink, no FIFO/device, O_NONBLOCK) and size-limited.
# The limits are far above what the tools write and far below what would hurt a root job.
HF_REF_MAX = 256  # refs/<name> holds a 40-hex commit id (huggingface_hub writes just that)
# cacache appends one line per put to a bucket (key hash); npm's own verify compacts them. Real
# buckets are a few KiB; a line is an entry with its metadata (response headers, ~1-2 KiB).
NPM_BUCKET_MAX = 64 << 20
NPM_LINE_MAX = 1 << 20
# cargo's .global-cache (SQLite, cargo >= 1.78) holds a row per crate / src dir / git checkout:
# a few MB for tens of thousands of crates. It is copied (bounded) to a root-private file before
# SQLite opens it, and queried under a deadline.
CARGO_DB_MAX = 64 << 20
CARGO_DB_SECONDS = 5.0
# conda's pkgs/urls.txt: one URL per package ever fetched (a few hundred bytes each): some 100 KiB
# for thousands of packages. A line is a URL (a file:// one at most PATH_MAX).
CONDA_URLS_MAX = 16 << 20
CONDA_URL_LINE_MAX = 8192


class Unit:
    """One deletable unit of a cache (see the module docstring)."""

    __slots__ = (
        "key",
        "name",
        "kind",
        "own_size",
        "own_disk",
        "size",
        "disk",
        "files",
        "atime",
        "mtime",
        "recorded",
        "paths",
        "shared",
        "locks",
        "keep",
        "timed",
        "stale",
    )

    def __init__(self, key, kind, name=None):
        self.key = key
        self.kind = kind
        self.name = name if name is not None else key
        self.own_size = 0
        self.own_disk = 0
        self.size = 0
        self.disk = 0
        self.files = 0
        self.atime = 0.0
        self.mtime = 0.0
        self.recorded = None
        self.paths = []
        self.shared = []
        self.locks = []
        self.keep = None
        self.timed = False
        self.stale = kind in STALE_KINDS

    def last_used(self, age_by="newest"):
        """Newest evidence of use: the tool's own record and the files' atime/mtime per age_by."""
        if age_by == "atime":
            t = self.atime
        elif age_by == "mtime":
            t = self.mtime
        else:
            t = max(self.atime, self.mtime)
        if self.recorded is not None and self.recorded > t:
            t = self.recorded
        return t

    def add_path(self, path):
        if path not in self.paths:
            self.paths.append(path)

    def touch(self, st):
        if st.st_atime > self.atime:
            self.atime = st.st_atime
        if st.st_mtime > self.mtime:
            self.mtime = st.st_mtime
        self.timed = True

    def as_dict(self, age_by="newest"):
        return {
            "key": self.key,
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "disk": self.disk,
            "files": self.files,
            "last_used": self.last_used(age_by),
        }

    def __repr__(self):
        return "Unit(%r, %r, size=%d)" % (self.key, self.kind, self.size)


class Shared:
    """An object several units may reference (HF blob, npm content file)."""

    __slots__ = ("size", "disk", "atime", "mtime", "paths", "refs")

    def __init__(self, st, path):
        self.size = st.st_size
        self.disk = st.st_blocks * 512
        self.atime = st.st_atime
        self.mtime = st.st_mtime
        self.paths = [path]
        self.refs = 0


class Collection:
    """What one walk of a cache found."""

    def __init__(self, fmt, units, shared, other_size, other_disk, other_files, notes):
        self.format = fmt
        self.units = units
        self.shared = shared
        self.other_size = other_size
        self.other_disk = other_disk
        self.other_files = other_files
        self.notes = notes

    @property
    def total_size(self):
        return self.other_size + sum(u.own_size for u in self.units) + sum(s.size for s in self.shared.values())

    @property
    def total_disk(self):
        return self.other_disk + sum(u.own_disk for u in self.units) + sum(s.disk for s in self.shared.values())

    @property
    def total_files(self):
        return self.other_files + sum(u.files for u in self.units) + sum(len(s.paths) for s in self.shared.values())


def _parts(rel):
    return tuple(rel.split("/")) if rel else ()


class Collector:
    """Base collector: subclasses implement ``entry`` (and optionally ``enter``/``finish_units``).

    ``entry(parts, name, st, d)`` is called for every non-directory entry and should call
    ``self.add(key, kind, anchor, parts, st, ...)`` or ``self.other(st)``.
    ``enter(parts, st, d)`` is called for every directory entry; return False to keep the walk
    out of it (it is then counted nowhere by the collector), or call ``self.add_dir`` to attach
    the directory's own times to a unit.
    """

    def __init__(self, fmt, root_fd):
        self.fmt = fmt
        self.root_fd = root_fd
        self.units = {}
        self.shared = {}
        self.other_size = 0
        self.other_disk = 0
        self.other_files = 0
        self.dir_disk = 0  # allocated bytes of the directories themselves (du counts them)
        self.notes = []
        self._seen_inodes = set()

    # -- driving ---------------------------------------------------------------------------
    def visit(self, d):
        self.dir_disk += d.st.st_blocks * 512
        base = _parts(d.rel)
        entries = d.entries
        if not d.rel:
            entries = [e for e in entries if not e[0].startswith(TRASH_NAME)]
            d.skip.update(e[0] for e in d.entries if e[0].startswith(TRASH_NAME))
        for name, st in entries:
            parts = base + (name,)
            if stat.S_ISDIR(st.st_mode):
                if self.enter(parts, st, d) is False:
                    d.skip.add(name)
            else:
                self.entry(parts, name, st, d)

    def finish(self):
        units = self.finish_units()
        for u in units:
            u.size = u.own_size
            u.disk = u.own_disk
            for sid in u.shared:
                s = self.shared.get(sid)
                if s is not None:
                    u.size += s.size
                    u.disk += s.disk
        return Collection(
            self.fmt.name, units, self.shared, self.other_size, self.other_disk, self.other_files, self.notes
        )

    # -- helpers for subclasses ------------------------------------------------------------
    def _counted(self, st):
        """False when this inode was already counted (hard link seen before in this walk)."""
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            ident = (st.st_dev, st.st_ino)
            if ident in self._seen_inodes:
                return False
            self._seen_inodes.add(ident)
        return True

    def unit(self, key, kind, name=None):
        u = self.units.get(key)
        if u is None:
            u = self.units[key] = Unit(key, kind, name)
        return u

    def add(self, key, kind, anchor, st, name=None, timed=True):
        """Count a file (lstat ``st``) into unit ``key``; ``anchor`` is the path removed for it."""
        u = self.unit(key, kind, name)
        u.add_path(anchor)
        u.files += 1
        if self._counted(st):
            u.own_size += st.st_size
            u.own_disk += st.st_blocks * 512
        if timed:
            u.touch(st)
        return u

    def add_dir(self, key, kind, anchor, st, name=None, timed=True):
        """Attach a directory to unit ``key``. Only its mtime counts: every walk (ours, du,
        scan_cache_dir) updates a directory's atime, so it says nothing about use."""
        u = self.unit(key, kind, name)
        u.add_path(anchor)
        if timed and st.st_mtime > u.mtime:
            u.mtime = st.st_mtime
        return u

    def other(self, st):
        self.other_files += 1
        if self._counted(st):
            self.other_size += st.st_size
            self.other_disk += st.st_blocks * 512

    def add_shared(self, sid, st, path):
        s = self.shared.get(sid)
        if s is None:
            if not self._counted(st):
                st = _ZeroStat(st)
            self.shared[sid] = Shared(st, path)
        else:
            s.paths.append(path)

    # -- overridables ----------------------------------------------------------------------
    def enter(self, parts, st, d):
        return True

    def entry(self, parts, name, st, d):
        self.other(st)

    def finish_units(self):
        return list(self.units.values())


class _ZeroStat:
    """Stat-like with no size: a hard link already counted."""

    def __init__(self, st):
        self.st_size = 0
        self.st_blocks = 0
        self.st_atime = st.st_atime
        self.st_mtime = st.st_mtime


class Format:
    """A cache layout. Subclasses set the class attributes and ``collector_class``."""

    name = "generic"
    description = "any tree: each file is a unit (reports group by top-level entry)"
    prunable = True
    per_file = False
    tool_locks = ()
    collector_class = Collector

    def collector(self, root_fd):
        return self.collector_class(self, root_fd)

    def post_prune(self, root_fd, collection, removed_keys):
        return []


# ------------------------------------------------------------------------------------------
# generic / external
# ------------------------------------------------------------------------------------------
class _GenericCollector(Collector):
    def entry(self, parts, name, st, d):
        self.add(parts[0], "entry" if len(parts) > 1 else "file", parts[:1], st)

    def enter(self, parts, st, d):
        if len(parts) == 1:
            self.add_dir(parts[0], "entry", parts, st, timed=False)
        return True


class GenericFormat(Format):
    name = "generic"
    per_file = True
    collector_class = _GenericCollector


class ExternalFormat(Format):
    name = "external"
    description = "owned by a daemon or tool (buildkit, docker, git-lfs): never deleted by file"
    prunable = False
    collector_class = _GenericCollector


# ------------------------------------------------------------------------------------------
# HuggingFace hub
# ------------------------------------------------------------------------------------------
_HF_REPO = re.compile(r"^(models|datasets|spaces)--")


def _hf_offset(parts):
    if parts and _HF_REPO.match(parts[0]):
        return 0
    if len(parts) > 1 and parts[0] == "hub" and _HF_REPO.match(parts[1]):
        return 1
    return -1


class _HFRepo:
    __slots__ = ("prefix", "blobs", "snapshots", "refs", "no_exist", "incomplete")

    def __init__(self, prefix):
        self.prefix = prefix
        self.blobs = {}  # blob name -> st
        self.snapshots = {}  # rev -> Unit (own files: non-symlinks, symlinks)
        self.refs = {}  # ref path -> rev
        self.no_exist = set()
        self.incomplete = []


class _HFCollector(Collector):
    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.repos = {}
        self.snap_blobs = {}  # (repo, rev) -> set(blob)
        self.lock_dirs = {}  # repo -> prefix of .locks/<repo>

    def _repo(self, parts, off):
        key = parts[off]
        r = self.repos.get(key)
        if r is None:
            r = self.repos[key] = _HFRepo(parts[: off + 1])
        return r

    def enter(self, parts, st, d):
        off = _hf_offset(parts)
        if off >= 0 and len(parts) == off + 3 and parts[off + 1] == "snapshots":
            repo = self._repo(parts, off)
            rev = parts[off + 2]
            # not timed: a snapshot directory's mtime moves when anything inside is removed
            u = self.add_dir(repo.prefix[-1] + "@" + rev, "revision", parts, st, timed=False)
            repo.snapshots[rev] = u
            self.snap_blobs.setdefault((parts[off], rev), set())
        elif off >= 0 and len(parts) == off + 3 and parts[off + 1] == ".no_exist":
            self._repo(parts, off).no_exist.add(parts[off + 2])
        elif len(parts) >= 2 and parts[-2] == ".locks" and len(parts) <= 3:
            self.lock_dirs[parts[-1]] = parts
        return True

    def entry(self, parts, name, st, d):
        off = _hf_offset(parts)
        if off < 0 or len(parts) < off + 3:
            self.other(st)
            return
        repo = self._repo(parts, off)
        sub = parts[off + 1]
        if sub == "blobs" and len(parts) == off + 3:
            if name.endswith(".incomplete"):
                self.add(repo.prefix[-1] + "/blobs/" + name, "incomplete download", parts, st)
                repo.incomplete.append(name)
            elif stat.S_ISREG(st.st_mode):
                repo.blobs[name] = st
                self.add_shared((repo.prefix[-1], name), st, parts)
            else:
                self.other(st)
        elif sub == "snapshots" and len(parts) >= off + 4:
            rev = parts[off + 2]
            key = repo.prefix[-1] + "@" + rev
            if stat.S_ISLNK(st.st_mode):
                blob = None
                try:
                    target = os.readlink(name, dir_fd=d.fd)
                except OSError:
                    target = ""
                tparts = target.split("/")
                depth = len(parts) - off - 2  # '..' needed from the link's directory up to the repo
                if (
                    len(tparts) == depth + 2
                    and all(p == ".." for p in tparts[:depth])
                    and tparts[depth] == "blobs"
                    and tparts[-1]
                    and "/" not in tparts[-1]
                    and tparts[-1] not in (".", "..")
                ):
                    blob = tparts[-1]
                u = self.unit(key, "revision")
                u.files += 1
                u.own_size += st.st_size
                u.own_disk += st.st_blocks * 512  # targets over 60 bytes take a block on ext4
                # the link's mtime is when that file was downloaded; its atime is not a use
                # (readlink, ours included, updates it)
                if st.st_mtime > u.mtime:
                    u.mtime = st.st_mtime
                if blob is not None:
                    self.snap_blobs.setdefault((parts[off], rev), set()).add(blob)
            else:
                self.add(key, "revision", parts[: off + 3], st)
        elif sub == "refs":
            try:
                rev = read_member_file(d.fd, name, HF_REF_MAX).decode("ascii", "replace").strip()
            except MemberFileError:
                rev = ""  # a FIFO, a link, a huge file: no revision; the ref stays, in no unit
            repo.refs["/".join(parts[off + 2 :])] = (rev, parts, st)
        elif sub == ".no_exist":
            self.other(st)
        else:
            self.other(st)

    def finish_units(self):
        for (repo_name, _rev), blobs in self.snap_blobs.items():
            for b in blobs:
                if (repo_name, b) in self.shared:
                    self.shared[(repo_name, b)].refs += 1
        for (repo_name, rev), blobs in self.snap_blobs.items():
            repo = self.repos[repo_name]
            u = self.unit(repo_name + "@" + rev, "revision")
            present = [b for b in sorted(blobs) if b in repo.blobs]
            # last use: the blobs only this revision has (loading it reads them); a blob shared
            # with another revision says when *some* revision was used. All blobs if none is own.
            own = [b for b in present if self.shared[(repo_name, b)].refs == 1] or present
            for b in present:
                u.shared.append((repo_name, b))
            for b in own:
                u.touch(repo.blobs[b])
            refs = sorted(r for r, (target, _p, _s) in repo.refs.items() if target == rev)
            label = repo_name.split("--", 1)[1].replace("--", "/") if "--" in repo_name else repo_name
            u.name = "%s %s%s" % (label, rev[:12], (" (%s)" % ", ".join(refs)) if refs else "")
            snap_path = repo.prefix + ("snapshots", rev)
            paths = []
            for _r, (target, p, rst) in sorted(repo.refs.items()):
                if target == rev:
                    paths.append(p)
                    u.files += 1
                    u.own_size += rst.st_size
                    u.own_disk += rst.st_blocks * 512
            if rev in repo.no_exist:
                paths.append(repo.prefix + (".no_exist", rev))
            paths.append(snap_path)
            u.paths = paths
            lockdir = self.lock_dirs.get(repo_name)
            if lockdir is not None:
                u.locks.append(lockdir)
        for repo in self.repos.values():
            for _r, (target, _p, rst) in repo.refs.items():
                if target not in repo.snapshots:
                    self.other(rst)  # a ref to a missing revision: left to huggingface_hub
        # blobs no snapshot references: their own unit, so they can be reclaimed by age
        for repo_name, repo in self.repos.items():
            lockdir = self.lock_dirs.get(repo_name)
            for b, bst in repo.blobs.items():
                sid = (repo_name, b)
                if self.shared[sid].refs == 0:
                    s = self.shared.pop(sid)
                    u = self.unit(repo_name + "/blobs/" + b, "orphan blob")
                    u.own_size += s.size
                    u.own_disk += s.disk
                    u.files += 1
                    u.touch(bst)
                    u.paths = list(s.paths)
                    if lockdir is not None:
                        u.locks.append(lockdir)
            for name in repo.incomplete:
                u = self.units.get(repo_name + "/blobs/" + name)
                if u is not None and lockdir is not None:
                    u.locks.append(lockdir)
        return list(self.units.values())


class HuggingFaceFormat(Format):
    name = "huggingface"
    description = "HuggingFace hub cache: unit = a revision (snapshot) of a repo; shared blobs freed last"
    collector_class = _HFCollector

    def post_prune(self, root_fd, collection, removed_keys):
        """Remove repos left with no snapshot and no blob (refs, .no_exist, the dir itself)."""
        from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune

        notes = []
        repos = {}
        for u in collection.units:
            if u.kind in ("revision", "orphan blob", "incomplete download"):
                top = u.paths[-1]
                off = _hf_offset(top)
                if off >= 0:
                    repos.setdefault(top[: off + 1], []).append(u.key in removed_keys)
        # nested refs (refs/pr/1) leave their directory behind: remove it once empty
        for u in collection.units:
            if u.kind != "revision" or u.key not in removed_keys:
                continue
            for p in u.paths:
                off = _hf_offset(p)
                if off >= 0 and len(p) > off + 3 and p[off + 1] == "refs":
                    for cut in range(len(p) - 1, off + 2, -1):
                        if not _prune.rmdir_if_empty(root_fd, p[:cut]):
                            break
        for prefix, flags in repos.items():
            if not all(flags):
                continue
            if _prune.dir_is_prunable_repo(root_fd, prefix):
                if _prune.remove_path(root_fd, prefix) is not None:
                    notes.append("removed empty repo %s" % "/".join(prefix))
        return notes


# ------------------------------------------------------------------------------------------
# torch hub
# ------------------------------------------------------------------------------------------
class _TorchCollector(Collector):
    def enter(self, parts, st, d):
        if len(parts) == 2 and parts[0] == "hub" and parts[1] != "checkpoints":
            self.add_dir("hub/" + parts[1], "hub repo", parts, st, name=parts[1])
        return True

    def entry(self, parts, name, st, d):
        if len(parts) == 3 and parts[:2] == ("hub", "checkpoints"):
            kind = "partial download" if name.endswith(".partial") or name.startswith("tmp") else "checkpoint"
            self.add("hub/checkpoints/" + name, kind, parts, st, name=name)
        elif len(parts) > 2 and parts[0] == "hub" and parts[1] != "checkpoints":
            self.add("hub/" + parts[1], "hub repo", parts[:2], st, name=parts[1])
        else:
            self.other(st)


class TorchFormat(Format):
    name = "torch"
    description = "torch hub: unit = a checkpoint file or a hub repo directory"
    collector_class = _TorchCollector


# ------------------------------------------------------------------------------------------
# pip
# ------------------------------------------------------------------------------------------
class _PipCollector(Collector):
    def entry(self, parts, name, st, d):
        top = parts[0]
        if top in ("http", "http-v2") and len(parts) >= 3:
            base = name[:-5] if name.endswith(".body") else name
            self.add(top + "/" + base, "http", parts, st, name=base)
        elif top == "wheels" and len(parts) >= 3:
            key = "/".join(parts[:-1])
            u = self.add(key, "wheel", parts[:-1], st)
            if name.endswith(".whl"):
                u.name = name
        elif top == "wheelhouse" and len(parts) == 2:
            # Wheels pre-fetched by cache_prefetch (found by pip through PIP_FIND_LINKS).
            self.add("wheelhouse/" + name, "prefetched wheel", parts, st, name=name)
        else:
            self.other(st)


class PipFormat(Format):
    name = "pip"
    description = "pip cache: unit = an HTTP response (headers + body), a built-wheel directory or a prefetched wheel"
    collector_class = _PipCollector


# ------------------------------------------------------------------------------------------
# conda
# ------------------------------------------------------------------------------------------
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

    def post_prune(self, root_fd, collection, removed_keys):
        from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune

        gone = {u.key for u in collection.units if u.kind == "conda package" and u.key in removed_keys}
        if not gone:
            return []
        notes = []
        for prefix in (("pkgs",), ()):
            try:
                n = _prune.rewrite_conda_urls(root_fd, prefix, gone)
            except MemberFileError as exc:
                notes.append("%s left as it is: %s" % ("/".join(prefix + ("urls.txt",)), exc.strerror))
                break
            if n is not None:
                if n:
                    notes.append("dropped %d line(s) from %s" % (n, "/".join(prefix + ("urls.txt",))))
                break
        return notes


# ------------------------------------------------------------------------------------------
# apt
# ------------------------------------------------------------------------------------------
class _AptCollector(Collector):
    def entry(self, parts, name, st, d):
        off = 1 if parts[0] == "archives" else -1
        if off < 0 or len(parts) <= off:
            self.other(st)
            return
        if len(parts) == off + 1 and name.endswith(".deb") and stat.S_ISREG(st.st_mode):
            self.add(name, "deb", parts, st)
        elif len(parts) == off + 2 and parts[off] == "partial" and stat.S_ISREG(st.st_mode):
            self.add("partial/" + name, "partial download", parts, st)
        else:
            self.other(st)  # lock, pkgcache.bin, ...


class AptFormat(Format):
    name = "apt"
    description = "apt cache: unit = archives/*.deb and stale archives/partial files; never the lock"
    tool_locks = ((("archives", "lock"), "fcntl"),)
    collector_class = _AptCollector


# ------------------------------------------------------------------------------------------
# npm (_cacache)
# ------------------------------------------------------------------------------------------
def _npm_offset(parts):
    if parts and parts[0] == "_cacache":
        return 1
    return -1


def integrity_ids(integrity):
    """'sha512-<b64> sha1-<b64>' -> [('sha512', hex), ...] (content-v2 path pieces)."""
    out = []
    for item in str(integrity or "").split():
        algo, _sep, b64 = item.partition("-")
        if not b64:
            continue
        b64 = b64.split("?", 1)[0]
        try:
            hexd = binascii.hexlify(base64.b64decode(b64 + "=" * (-len(b64) % 4))).decode("ascii")
        except (binascii.Error, ValueError):
            continue
        out.append((algo.lower(), hexd))
    return out


def parse_npm_bucket(data):
    """Return {key: entry_dict} of live entries of a cacache index bucket (last line wins)."""
    return parse_npm_lines(data.split(b"\n"))[0]


def _npm_entry_ok(entry):
    """True for an entry with the types cacache writes (key str, integrity str|None, time number)."""
    if not isinstance(entry.get("key"), str):
        return False
    if entry.get("integrity") is not None and not isinstance(entry["integrity"], str):
        return False
    t = entry.get("time")
    return t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t))


def parse_npm_lines(lines):
    """Parse cacache index lines (bytes; None for a line too long to read).

    Returns ``(live, refs, skipped, unreadable)``: live entries {key: entry} (last line wins, an
    entry without integrity deletes the key), the content ids they name (and those of lines of
    unexpected types: conservative), the number of lines cacache itself ignores (hash mismatch,
    not JSON: torn writes) and of lines that could not be judged (too long, well-hashed but of
    other types). Never raises for what a member wrote.
    """
    live = {}
    refs = set()
    skipped = unreadable = 0
    for raw in lines:
        if raw is None:
            unreadable += 1
            continue
        line = raw.rstrip(b"\n")
        if not line:
            continue
        digest, _sep, js = line.partition(b"\t")
        if hashlib.sha1(js).hexdigest().encode("ascii") != digest:  # noqa: S324 - cacache's own check
            skipped += 1
            continue
        try:
            entry = json.loads(js.decode("utf-8", "replace"))
        except ValueError:
            skipped += 1
            continue
        except RecursionError:  # nested deeper than Python parses; node might read it
            unreadable += 1
            continue
        if not isinstance(entry, dict):
            skipped += 1
            continue
        if not _npm_entry_ok(entry):
            unreadable += 1
            if isinstance(entry.get("integrity"), str):
                refs.update(integrity_ids(entry["integrity"]))
            continue
        if entry.get("integrity") is None:
            live.pop(entry["key"], None)
        else:
            live[entry["key"]] = entry
    for entry in live.values():
        refs.update(integrity_ids(entry["integrity"]))
    return live, refs, skipped, unreadable


class _NpmCollector(Collector):
    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.bucket_refs = {}  # unit key -> [content ids]
        self.skipped_lines = 0
        self.unread = []  # keys of buckets not (fully) read: kept, and orphan content kept too

    def enter(self, parts, st, d):
        if len(parts) == 2 and parts[0] == "_npx":
            self.add_dir("_npx/" + parts[1], "npx install", parts, st)
        return True

    def _bucket(self, d, name):
        """(live, refs, why-not-fully-read or None) of the index bucket ``name`` in ``d``."""
        try:
            fd, _st = open_member_file(d.fd, name, NPM_BUCKET_MAX)
        except MemberFileError as exc:
            return {}, set(), exc.strerror
        try:
            live, refs, skipped, unreadable = parse_npm_lines(member_lines(fd, NPM_LINE_MAX, NPM_BUCKET_MAX))
        except OSError as exc:
            return {}, set(), exc.strerror or str(exc)
        finally:
            os.close(fd)
        self.skipped_lines += skipped
        return live, refs, ("%d line(s) unreadable" % unreadable) if unreadable else None

    def entry(self, parts, name, st, d):
        off = _npm_offset(parts)
        if off < 0:
            if parts[0] == "_logs" and len(parts) == 2:
                self.add("_logs/" + name, "log", parts, st)
            elif parts[0] == "_npx" and len(parts) > 2:
                self.add("_npx/" + parts[1], "npx install", parts[:2], st)
            else:
                self.other(st)
            return
        sub = parts[off] if len(parts) > off else ""
        if sub == "index-v5" and len(parts) > off + 1 and stat.S_ISREG(st.st_mode):
            live, refs, bad = self._bucket(d, name)
            key = "/".join(parts[off:])
            u = self.add(key, "npm entry", parts, st, name="(empty index bucket)")
            self.bucket_refs[key] = sorted(refs)
            if bad is not None:
                u.keep = "index bucket not fully read (%s)" % bad
                u.name = "(index bucket: %s)" % bad
                self.unread.append(key)
            if not live:
                return
            newest = max(e.get("time") or 0 for e in live.values())
            if newest:
                u.recorded = newest / 1000.0
            u.name = sorted(live)[-1].replace("make-fetch-happen:request-cache:", "")
            if u.name.endswith(".tgz"):
                u.kind = "npm tarball"
        elif sub.startswith("content-") and len(parts) == off + 5 and stat.S_ISREG(st.st_mode):
            algo = parts[off + 1]
            hexd = parts[off + 2] + parts[off + 3] + name
            self.add_shared((algo, hexd), st, parts)
        elif sub == "tmp" and len(parts) > off + 1:
            self.add("tmp/" + "/".join(parts[off + 1 :]), "temporary file", parts[: off + 2], st)
        else:
            self.other(st)

    def finish_units(self):
        for key, refs in self.bucket_refs.items():
            u = self.units[key]
            for sid in refs:
                if sid in self.shared and sid not in u.shared:
                    u.shared.append(sid)
                    self.shared[sid].refs += 1
                    s = self.shared[sid]
                    if s.atime > u.atime:
                        u.atime = s.atime
        for sid in [s for s, obj in self.shared.items() if obj.refs == 0]:
            s = self.shared.pop(sid)
            u = self.unit("content/%s/%s" % sid, "orphan content")
            u.own_size += s.size
            u.own_disk += s.disk
            u.files += len(s.paths)
            u.atime = max(u.atime, s.atime)
            u.mtime = max(u.mtime, s.mtime)
            u.paths = list(s.paths)
            if self.unread:
                # an unread bucket may name it: npm would then find its entry without content
                u.keep = "an index bucket could not be read"
        if self.skipped_lines:
            self.notes.append("npm: %d index line(s) cacache ignores (torn or corrupt) skipped" % self.skipped_lines)
        if self.unread:
            self.notes.append(
                "npm: %d index bucket(s) not fully read, kept with all unreferenced content: %s"
                % (len(self.unread), ", ".join(sorted(self.unread)[:3]))
            )
        return list(self.units.values())


class NpmFormat(Format):
    name = "npm"
    description = "npm _cacache: unit = an index bucket (package entry); content freed when unreferenced"
    collector_class = _NpmCollector


# ------------------------------------------------------------------------------------------
# go module cache
# ------------------------------------------------------------------------------------------
_GO_EXT = (".info", ".mod", ".zip", ".ziphash", ".partial", ".lock")


def _go_offset(parts):
    if len(parts) >= 2 and parts[0] == "pkg" and parts[1] == "mod":
        return 2
    if parts and parts[0] == "pkg":
        return -1
    return 0


class _GoCollector(Collector):
    def enter(self, parts, st, d):
        off = _go_offset(parts)
        if off < 0 or len(parts) <= off:
            return True
        rest = parts[off:]
        if rest[0] == "cache":
            return True
        if "@" in rest[-1] and not any("@" in p for p in rest[:-1]):
            self.add_dir("/".join(rest), "module", parts, st)
        return True

    def entry(self, parts, name, st, d):
        off = _go_offset(parts)
        if off < 0 or len(parts) <= off:
            self.other(st)
            return
        rest = parts[off:]
        if rest[0] == "cache":
            if len(rest) >= 5 and rest[1] == "download" and rest[-2] == "@v":
                for ext in _GO_EXT:
                    if name.endswith(ext):
                        key = "/".join(rest[2:-2]) + "@" + name[: -len(ext)]
                        u = self.add(key, "module", parts, st)
                        if ext == ".lock":
                            u.locks.append(parts)
                        return
            self.other(st)  # list, sumdb, vcs
            return
        for i, p in enumerate(rest):
            if "@" in p:
                self.add("/".join(rest[: i + 1]), "module", parts[: off + i + 1], st)
                return
        self.other(st)

    def finish_units(self):
        # remove the extracted directory first, then cache/download files (.lock last), so an
        # interrupted prune leaves either a usable module or one go downloads again.
        for u in self.units.values():
            locks = [p for p in u.paths if p[-1].endswith(".lock")]
            zips = [p for p in u.paths if p not in locks and p[-1].endswith((".zip", ".ziphash"))]
            dirs = [p for p in u.paths if p not in locks and p not in zips and not p[-1].endswith(_GO_EXT)]
            rest = [p for p in u.paths if p not in locks and p not in zips and p not in dirs]
            u.paths = dirs + zips + rest + locks
        return list(self.units.values())


class GoFormat(Format):
    name = "go"
    description = "go module cache: unit = module@version (extracted dir + cache/download files)"
    collector_class = _GoCollector


# ------------------------------------------------------------------------------------------
# cargo
# ------------------------------------------------------------------------------------------
class _CargoCollector(Collector):
    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.db_fd = None  # cargo's .global-cache, opened (verified) while its directory is open

    def visit(self, d):
        if not d.rel and self.db_fd is None:
            try:
                self.db_fd = open_member_file(d.fd, ".global-cache", CARGO_DB_MAX)[0]
            except MemberFileError as exc:
                if exc.errno != errno.ENOENT:
                    self.notes.append("cargo .global-cache not used (%s): crates aged by file times" % exc.strerror)
        Collector.visit(self, d)

    def enter(self, parts, st, d):
        if len(parts) == 4 and parts[:2] == ("registry", "src"):
            self.add_dir("%s/%s" % (parts[2], parts[3]), "crate", parts, st, name=parts[3])
        elif len(parts) == 4 and parts[:2] == ("git", "checkouts"):
            self.add_dir("git/%s@%s" % (parts[2], parts[3]), "git checkout", parts, st)
        elif len(parts) == 3 and parts[:2] == ("git", "db"):
            self.add_dir("git/%s" % parts[2], "git db", parts, st)
        return True

    def entry(self, parts, name, st, d):
        if len(parts) == 4 and parts[:2] == ("registry", "cache") and name.endswith(".crate"):
            self.add("%s/%s" % (parts[2], name[:-6]), "crate", parts, st, name=name[:-6])
        elif len(parts) > 4 and parts[:2] == ("registry", "src"):
            u = self.add("%s/%s" % (parts[2], parts[3]), "crate", parts[:4], st, name=parts[3])
            if len(parts) == 5 and name == ".cargo-ok":
                u.add_path(parts)
        elif len(parts) > 4 and parts[:2] == ("git", "checkouts"):
            self.add("git/%s@%s" % (parts[2], parts[3]), "git checkout", parts[:4], st)
        elif len(parts) > 3 and parts[:2] == ("git", "db"):
            self.add("git/%s" % parts[2], "git db", parts[:3], st)
        else:
            self.other(st)  # registry/index, bin, .crates.toml, .package-cache, .global-cache

    def finish_units(self):
        recorded = {}
        if self.db_fd is not None:
            crates = {u.key for u in self.units.values() if u.kind == "crate"}
            try:
                recorded = cargo_last_use(self.db_fd, crates)
            except CargoDbError as exc:
                self.notes.append("cargo .global-cache not used (%s): crates aged by file times" % exc)
            finally:
                os.close(self.db_fd)
                self.db_fd = None
        for u in self.units.values():
            # the .cargo-ok marker goes first: cargo re-extracts a src dir without it
            ok = [p for p in u.paths if p[-1] == ".cargo-ok"]
            src = [p for p in u.paths if p not in ok and len(p) == 4 and p[1] == "src"]
            rest = [p for p in u.paths if p not in ok and p not in src]
            u.paths = ok + src + rest
            if u.kind == "crate":
                t = recorded.get(u.key)
                if t is not None:
                    u.recorded = t
        return list(self.units.values())


class CargoDbError(Exception):
    """cargo's .global-cache cannot be used: unreadable, not cargo's schema, too slow."""


# The tables and columns cargo's global_cache_tracker creates and reads (cargo/src/cargo/core/
# global_cache_tracker.rs, migrations()); anything else in their place is not cargo's database.
_CARGO_SCHEMA = (
    ("registry_index", ("id", "name")),
    ("registry_crate", ("registry_id", "name", "timestamp")),
    ("registry_src", ("registry_id", "name", "timestamp")),
)


def cargo_last_use(db_fd, wanted, seconds=CARGO_DB_SECONDS):
    """{'<index dir>/<name>-<ver>': epoch} for the keys in ``wanted`` from cargo's .global-cache.

    ``db_fd`` is the member-written database opened by ``_fs.open_member_file``. SQLite never
    opens the member's path (it would resolve it again, following a symlink swapped in, or
    block on a FIFO): the bytes are copied, bounded, to a file in a root-private directory,
    opened read-only and immutable; the schema must be cargo's (plain tables, no view, no
    generated column) and the queries are aborted after ``seconds``. Raises CargoDbError.
    """
    try:
        import sqlite3
    except ImportError:
        raise CargoDbError("no sqlite3 module") from None
    tmpdir = tempfile.mkdtemp(prefix="mlinfra-cargo-db-")
    try:
        path = os.path.join(tmpdir, "global-cache")
        _copy_bounded(db_fd, path, CARGO_DB_MAX)
        deadline = time.monotonic() + seconds
        try:
            conn = sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise CargoDbError("sqlite: %s" % exc) from None
        try:
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
            if hasattr(conn, "setlimit"):
                conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1 << 16)
            conn.execute("PRAGMA trusted_schema = OFF")
            conn.execute("PRAGMA query_only = ON")
            _cargo_schema_check(conn)
            return _cargo_rows(conn, wanted)
        except sqlite3.Error as exc:
            if time.monotonic() > deadline:
                raise CargoDbError("queries took over %ss" % seconds) from None
            raise CargoDbError("sqlite: %s" % exc) from None
        finally:
            conn.close()
    except OSError as exc:
        raise CargoDbError(exc.strerror or str(exc)) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _copy_bounded(fd, path, max_bytes):
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        done = 0
        while True:
            buf = os.pread(fd, 1 << 20, done)
            if not buf:
                break
            done += len(buf)
            if done > max_bytes:
                raise CargoDbError("grew over %d bytes while copied" % max_bytes)
            os.write(out, buf)
    finally:
        os.close(out)


def _cargo_schema_check(conn):
    for table, cols in _CARGO_SCHEMA:
        row = conn.execute("SELECT type, sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        if row is None:
            raise CargoDbError("no table %s" % table)
        kind, sql = row
        if kind != "table" or not isinstance(sql, str) or not sql.lstrip().upper().startswith("CREATE TABLE"):
            raise CargoDbError("%s is not a plain table" % table)
        info = {r[1]: r[6] for r in conn.execute("PRAGMA table_xinfo(%s)" % table)}
        if any(hidden for hidden in info.values()):
            raise CargoDbError("%s has generated or hidden columns" % table)
        missing = [c for c in cols if c not in info]
        if missing:
            raise CargoDbError("%s lacks %s" % (table, ", ".join(missing)))


def _cargo_rows(conn, wanted):
    out = {}
    latest = time.time() + 86400  # a time in the future is not a use
    for table, strip in (("registry_crate", ".crate"), ("registry_src", "")):
        cur = conn.execute(
            "SELECT i.name, c.name, c.timestamp FROM %s c JOIN registry_index i "  # noqa: S608 - fixed names
            "ON c.registry_id = i.id" % table
        )
        for idx, name, ts in cur:
            if not (isinstance(idx, str) and isinstance(name, str) and isinstance(ts, (int, float))):
                continue
            if strip and name.endswith(strip):
                name = name[: -len(strip)]
            key = "%s/%s" % (idx, name)
            if key in wanted and 0 < ts <= latest and ts > out.get(key, 0):
                out[key] = float(ts)
    return out


class CargoFormat(Format):
    name = "cargo"
    description = "cargo home: unit = a crate (.crate + src dir with .cargo-ok), git checkouts and dbs"
    # cargo's own gc takes both exclusively: downloads hold the first, builds reading extracted
    # sources hold the second shared (cargo >= 1.74; a missing file is no lock)
    tool_locks = (((".package-cache",), "flock"), ((".package-cache-mutate",), "flock"))
    collector_class = _CargoCollector


_FORMATS = {
    f.name: f
    for f in (
        HuggingFaceFormat(),
        TorchFormat(),
        PipFormat(),
        CondaFormat(),
        AptFormat(),
        NpmFormat(),
        GoFormat(),
        CargoFormat(),
        GenericFormat(),
        ExternalFormat(),
    )
}


def get_format(name):
    """Return the Format object for ``name`` (one of FORMATS)."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise ValueError("unknown cache format %r; expected one of %s" % (name, ", ".join(FORMATS))) from None


def _names(dir_fd, sub=None):
    try:
        if sub is None:
            return set(os.listdir(dir_fd))
        fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            return set(os.listdir(fd))
        finally:
            os.close(fd)
    except OSError:
        return set()


def detect_format(root_fd):
    """Guess the format of the cache directory open at ``root_fd`` from its top-level layout."""
    top = _names(root_fd)
    if any(_HF_REPO.match(n) for n in top) or any(_HF_REPO.match(n) for n in _names(root_fd, "hub")):
        return "huggingface"
    if "_cacache" in top:
        return "npm"
    if "archives" in top and ("lock" in _names(root_fd, "archives") or "partial" in _names(root_fd, "archives")):
        return "apt"
    if "registry" in top and _names(root_fd, "registry") & {"cache", "src", "index"}:
        return "cargo"
    if "pkg" in top and "mod" in _names(root_fd, "pkg"):
        return "go"
    if "cache" in top and "download" in _names(root_fd, "cache"):
        return "go"
    if "urls.txt" in top or ("pkgs" in top and "urls.txt" in _names(root_fd, "pkgs")):
        return "conda"
    if top & {"http-v2", "wheels", "selfcheck"} or ("http" in top and not top - {"http", "selfcheck", "wheels"}):
        return "pip"
    if "hub" in top and "checkpoints" in _names(root_fd, "hub"):
        return "torch"
    return "generic"


def collect(root_fd, fmt, walker=None):
    """Walk the directory open at ``root_fd`` once and return the Collection of ``fmt``."""
    if isinstance(fmt, str):
        fmt = get_format(fmt)
    if walker is None:
        walker = Walker(root_fd)
    col = fmt.collector(root_fd)
    for d in walker.walk():
        col.visit(d)
    return col.finish()
