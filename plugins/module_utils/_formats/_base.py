# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shared part of every format: Unit, Shared, Collection, Collector, Format (see ``_formats``)."""

from __future__ import annotations

import os
import stat

AGE_BY = ("atime", "mtime", "newest")
# Left-overs of interrupted downloads: cache_prune removes them once older than min_age,
# whatever max_age says (Unit.stale).
STALE_KINDS = frozenset(["incomplete download", "partial download", "temporary file"])
# cache_prune moves a unit here (one rename per path) before deleting it, so the tool never sees
# half a unit; collectors leave it out (it only lasts during a prune, or until the next one).
# Format.trash_parents: where it goes (first existing directory), never where the tool scans.
TRASH_NAME = ".mlinfra-prune-trash"


def is_prune_trash(name, st):
    """True for cache_prune's own trash: a directory with its name, this user's (root's), 0700.
    It sits at the top of the cache or in a tool's lock directory (``hub/.locks``, where
    huggingface_hub's scan does not look); a member's look-alike is an ordinary entry."""
    return (
        name.startswith(TRASH_NAME)
        and stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & 0o077
    )


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
        "read_paths",
        "linkable",
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
        # paths outside ``paths`` whose access time is the unit's last use (HF: the blobs, or
        # store payloads, only that revision has): the prune looks at them again just before
        # the unit leaves, so a model loaded since the walk stays
        self.read_paths = ()
        # the format's shared ids naming this unit's own paths (an HF blob no revision links): a
        # reference made to one since the walk keeps the unit (``Format.linked_since``)
        self.linkable = ()

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

    # a tuple, not a dict per object: a worker's units come back to the report fast (pickle)
    def __getstate__(self):
        return tuple(getattr(self, name) for name in Unit.__slots__)

    def __setstate__(self, state):
        for name, value in zip(Unit.__slots__, state, strict=True):
            setattr(self, name, value)


class Shared:
    """An object several units may reference (HF blob, npm content file)."""

    __slots__ = ("size", "disk", "atime", "mtime", "paths", "refs", "files")

    def __init__(self, st, path):
        self.size = st.st_size
        self.disk = st.st_blocks * 512
        self.atime = st.st_atime
        self.mtime = st.st_mtime
        self.paths = [path]
        self.refs = 0
        self.files = 1  # files it holds (a directory of files, uv's archives, is one path)

    def __getstate__(self):
        return tuple(getattr(self, name) for name in Shared.__slots__)

    def __setstate__(self, state):
        for name, value in zip(Shared.__slots__, state, strict=True):
            setattr(self, name, value)


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
        self.gid = None  # the cache group the walk kept to (set by the prune)

    @property
    def total_size(self):
        return self.other_size + sum(u.own_size for u in self.units) + sum(s.size for s in self.shared.values())

    @property
    def total_disk(self):
        return self.other_disk + sum(u.own_disk for u in self.units) + sum(s.disk for s in self.shared.values())

    @property
    def total_files(self):
        return self.other_files + sum(u.files for u in self.units) + sum(s.files for s in self.shared.values())


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
        # (dev, ino) of a file with several links, counted once -> (where: ("unit", key),
        # ("shared", sid), ("other",) or None, its size, its allocated bytes)
        self._seen_inodes = {}

    # -- driving ---------------------------------------------------------------------------
    def visit(self, d):
        self.dir_disk += d.st.st_blocks * 512
        base = _parts(d.rel)
        entries = d.entries
        if not d.rel or d.rel.endswith(".locks"):
            trash = {name for name, st in entries if is_prune_trash(name, st)}
            if trash:
                entries = [e for e in entries if e[0] not in trash]
                d.skip.update(trash)
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
        return self.collection(units)

    def collection(self, units):
        return Collection(
            self.fmt.name, units, self.shared, self.other_size, self.other_disk, self.other_files, self.notes
        )

    # -- a walk shared between worker processes (Format.shard) -----------------------------
    def compact(self):
        """Make what a worker sends back small (it is pickled): what ``finish`` needs only."""

    # Each worker's collector starts as ``blank()`` (what this one learnt above the shards that
    # its ``entry``/``enter`` need, with nothing counted) and walks whole shard directories; the
    # walking collector then ``merge``s them, as if one walk had seen everything.
    BLANK_KEEP = ()  # attributes a worker's collector keeps from this one (set above the shards)

    def blank(self):
        fresh = type(self)(self.fmt, self.root_fd)
        for attr in self.BLANK_KEEP:
            setattr(fresh, attr, getattr(self, attr))
        return fresh

    def merge(self, other):
        """Add what ``other`` (a worker's collector of the same cache, another set of shard
        directories) found: a unit met by both is one unit (its counts added, its times the
        newest); a hard link met by both is counted in each of them (units are per share)."""
        units = self.units
        for key, u in other.units.items():
            mine = units.get(key)
            if mine is None:
                units[key] = u
                continue
            mine.files += u.files
            mine.own_size += u.own_size
            mine.own_disk += u.own_disk
            mine.atime = max(mine.atime, u.atime)
            mine.mtime = max(mine.mtime, u.mtime)
            if u.recorded is not None and (mine.recorded is None or u.recorded > mine.recorded):
                mine.recorded = u.recorded
            for p in u.paths:
                mine.add_path(p)
            mine.shared.extend(sid for sid in u.shared if sid not in mine.shared)
            mine.locks.extend(lk for lk in u.locks if lk not in mine.locks)
            if mine.keep is None:
                mine.keep = u.keep
            mine.timed = mine.timed or u.timed
        for sid, sh in other.shared.items():
            mine = self.shared.get(sid)
            if mine is None:
                self.shared[sid] = sh
            else:
                mine.paths.extend(sh.paths)
                mine.files += sh.files
                mine.refs += sh.refs
        self.other_size += other.other_size
        self.other_disk += other.other_disk
        self.other_files += other.other_files
        self.dir_disk += other.dir_disk
        self.notes.extend(other.notes)
        for ident, rec in other._seen_inodes.items():
            if ident not in self._seen_inodes:
                self._seen_inodes[ident] = rec
                continue
            # counted by both: uncounted where ``other`` counted it, as one walk counts it once
            where, size, disk = rec
            if where is None:
                continue
            if where[0] == "unit":
                target = self.units.get(where[1])
                if target is not None:
                    target.own_size -= size
                    target.own_disk -= disk
            elif where[0] == "shared":
                target = self.shared.get(where[1])
                if target is not None:
                    target.size -= size
                    target.disk -= disk
            else:
                self.other_size -= size
                self.other_disk -= disk

    # -- helpers for subclasses ------------------------------------------------------------
    def _counted(self, st, where=None, key=None):
        """False when this inode was already counted (hard link seen before in this walk);
        ``where`` (``unit``, ``shared``, ``other``) and ``key`` say where it is counted now,
        for ``merge`` (see ``_seen_inodes``)."""
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            ident = (st.st_dev, st.st_ino)
            if ident in self._seen_inodes:
                return False
            self._seen_inodes[ident] = ((where, key) if where else None, st.st_size, st.st_blocks * 512)
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
        if self._counted(st, "unit", key):
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
        if self._counted(st, "other"):
            self.other_size += st.st_size
            self.other_disk += st.st_blocks * 512

    def add_shared(self, sid, st, path):
        s = self.shared.get(sid)
        if s is None:
            if not self._counted(st, "shared", sid):
                st = _ZeroStat(st)
            self.shared[sid] = Shared(st, path)
        else:
            s.paths.append(path)
            s.files += 1

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
    """A cache layout: one module of this package per format, one subclass per module.

    A subclass sets ``name`` (the catalog's and the modules' ``format`` value), ``description``,
    ``collector_class`` (what a unit is: the walk's classification, the order of a unit's paths
    is the order of removal), ``last_use`` (where a unit's last use comes from, for the docs and
    the report), and, as needed, ``tool_locks``, ``age_by``, ``detect_order`` with ``detect``
    (auto-detection, lowest order first; None: never detected) and ``post_prune`` (the format's
    clean-up after its units went). ``_formats/__init__.py`` imports every format module and
    builds the registry from them.
    """

    name = "generic"
    description = "any tree: each file is a unit (reports group by top-level entry)"
    prunable = True
    per_file = False
    tool_locks = ()
    collector_class = Collector
    age_by = AGE_BY
    last_use = "file times (atime/mtime per age_by)"
    detect_order = None
    # cache_verify: ``verify(ctx)`` of the format's module (appended at its end), None: nothing to check
    verifier = None
    trash_parents = ((),)
    # seconds after its last unit left that a prune looks again for half a unit its tool wrote
    # back (a read-then-rewrite of part of a unit in place, as pip's header); 0: never
    split_settle = 0.0

    # A big cache's walk is shared between worker processes (cache_report): the walk hands
    # each directory at one of ``shard_depths`` (components below the cache root) for which
    # ``shard(parts)`` is true to a worker, which walks it whole. Its collector must merge
    # (Collector.merge, plus what the format's collector adds). () : never shared.
    shard_depths = ()

    def shard(self, parts):
        return False

    def collector(self, root_fd):
        return self.collector_class(self, root_fd)

    def detect(self, root_fd, top):
        """True when the directory open at ``root_fd`` (its names: ``top``) has this layout."""
        return False

    def post_prune(self, root_fd, collection, removed_keys, records=None):
        return []

    def linked_since(self, parents, collection, sids, since_ns):
        """Of the shared objects ``sids`` leaving with a unit, those a reference made since the
        walk began (``since_ns``: the filesystem's clock) now names: they stay. ``parents``: the
        run's ``_prune.Parents`` (``lstat(parts)``: (parent fd, lstat or None)). A set."""
        return set()


def names(dir_fd, sub=None):
    """The names in ``dir_fd`` (or its subdirectory ``sub``, never through a symlink); empty on error."""
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
