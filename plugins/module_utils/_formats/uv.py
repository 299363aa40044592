# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""uv cache (``UV_CACHE_DIR``): unit = what uv rebuilds on demand; archives freed when unreferenced.

Layout (uv's ``crates/uv-cache``: ``CacheBucket`` and ``WheelCache``; checked against uv 0.13,
whose buckets are ``wheels-v8``, ``sdists-v11``, ``simple-v28``, ``interpreter-v5``, ...). Every
top-level bucket is ``<name>-v<N>``; the version moves with uv, so buckets are matched by name and
every version present is classified the same way (two uv versions can share a cache).

- ``archive-v*/<id>/``: unzipped wheels. Never a unit of its own while referenced: it is a shared
  object of the entries whose symlink points at it, freed with the last of them (as ``uv cache
  prune`` removes archives no symlink in ``wheels``/``sdists`` names). An unreferenced archive is
  its own unit (``orphan archive``).
- ``wheels-v*/<root>/<package>/<stem>{,.http,.msgpack,.rev,.lock}``: a wheel entry (the symlink to
  its archive, the HTTP cache policy and metadata, its lock). ``<root>`` is ``pypi``,
  ``index/<digest>``, ``url/<digest>``, ``path/<digest>``, ``editable/<digest>`` or
  ``git/<digest>/<sha>``.
- ``sdists-v*/<root>/...``: a source distribution's builds, whole: ``pypi/<pkg>/<version>``,
  ``index/<digest>/<pkg>/<version>``, ``{url,path,editable}/<digest>``, ``git/<digest>/<sha>``.
- ``simple-v*/``, ``flat-index-v*/``: one unit per index response (``<package>.rkyv`` + lock).
- ``interpreter-v*/``: one unit per cached interpreter query.
- ``git-v*/db/<ident>``, ``git-v*/checkouts/<ident>/<rev>``: git db and checkouts (like cargo's).
- ``builds-v*/``: ephemeral build environments (temporary: stale after ``min_age``).
- ``environments-v*/<id>``, ``python-v*``, ``binaries-v*``, ``osv-v*`` and unknown buckets: one
  unit per entry of the bucket.
- ``.lock`` (root), ``CACHEDIR.TAG``, ``.gitignore``, ``sdists-v*/.git``: kept, in no unit.

Lock: every uv command holds a *shared* ``flock`` on ``<cache>/.lock`` while it uses the cache;
``uv cache prune``/``clean`` take it *exclusive* (``LockedFile``, ``std::fs::File::lock``, flock on
Linux). ``tool_locks`` makes ``cache_prune`` take it the same way for the run. Per-entry ``.lock``
files are the unit's locks (a process holding one keeps the unit).

Hard links: uv links archive files into environments (``UV_LINK_MODE=hardlink``, the default on
Linux when the environment is on the cache's filesystem). Removing such a cache file frees nothing
until every environment using it goes, so a file with links outside what one unit holds is counted
in the cache's size (once, as ``du`` and ``uv cache size`` do) but never in a unit's size: a prune
never promises those bytes, and the collection's notes say how many files and bytes links hold.
The atime of a linked file is the environment's use of it, so archives pass it to their entries.
"""

from __future__ import annotations

import os
import re
import stat

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import (
    Collector,
    Format,
    Shared,
    _ZeroStat,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    MemberFileError,
    human,
    read_member_file,
)

# revision.http / revision.rev: a msgpack pointer to the current revision directory (a few hundred
# bytes: the HTTP cache policy and the revision id)
REVISION_MAX = 1 << 20
_BUCKET = re.compile(r"^([a-z][a-z0-9-]*?)-v([0-9]+)$")
# components of a WheelCache root (after the bucket) per kind; git roots also carry the commit
_ROOT_LEN = {"pypi": 1, "index": 2, "url": 2, "path": 2, "editable": 2, "git": 3}
# entry-side files beside a link or directory named <stem>; uv reads the pointers first
_POINTER_EXT = (".http", ".msgpack", ".rev")
_STEM_EXT = _POINTER_EXT + (".rkyv", ".lock")
_FILE_BUCKETS = ("simple", "flat-index", "interpreter")
_UNIT_BUCKETS = {
    "environments": "cached environment",
    "python": "python download",
    "binaries": "tool binary",
    "osv": "vulnerability record",
}


def bucket_name(name):
    """'wheels' for 'wheels-v8'; None for a name that is not a uv bucket."""
    m = _BUCKET.match(name)
    return m.group(1) if m else None


def _stem(name):
    for ext in _STEM_EXT:
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def archive_target(target):
    """('archive-v0', id) a wheel/sdist link points at (relative or absolute), or None."""
    parts = [p for p in target.split("/") if p]
    if len(parts) >= 2 and bucket_name(parts[-2]) == "archive" and parts[-1] not in (".", ".."):
        return parts[-2], parts[-1]
    return None


class _UvCollector(Collector):
    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.links = {}  # unit key -> set of archive ids
        self.linked = {}  # (dev, ino) -> [st, links seen, {owner}] for files with st_nlink > 1
        self.dangling = set()  # sdist revision directories their entry's pointer does not name

    # -- classification ------------------------------------------------------------------
    def _unit_of(self, parts):
        """(key, kind, anchor) of the unit owning ``parts`` (a path below a bucket), or None."""
        bucket = bucket_name(parts[0])
        if bucket is None:
            if parts[0].startswith(".tmp"):
                return parts[0], "temporary file", parts[:1]
            return None
        if len(parts) < 2:
            return None
        if bucket == "archive":
            if parts[1].startswith(".tmp"):  # an archive being persisted (tempfile in the bucket)
                return "/".join(parts[:2]), "temporary file", parts[:2]
            return None
        if bucket in ("wheels", "sdists"):
            n = _ROOT_LEN.get(parts[1])
            if n is None:
                return None
            if bucket == "wheels":
                pkg_len = 1 + n + 1
                if len(parts) <= pkg_len:
                    return None
                anchor = parts[:pkg_len] + (_stem(parts[pkg_len]),)
                kind = "temporary file" if anchor[-1].startswith(".tmp") else "wheel"  # being persisted
                return "/".join(anchor), kind, anchor
            root_len = 1 + n + (2 if parts[1] in ("pypi", "index") else 0)
            if len(parts) <= root_len:
                return None
            if parts[: root_len + 1] in self.dangling:
                return "/".join(parts[: root_len + 1]), "dangling source revision", parts[: root_len + 1]
            # the entry's children (pointer, revisions, lock), not the entry: a dangling revision
            # below it is a unit of its own
            return "/".join(parts[:root_len]), "sdist build", parts[: root_len + 1]
        if bucket in _FILE_BUCKETS:
            anchor = parts[:-1] + (_stem(parts[-1]),)
            return "/".join(anchor), "interpreter info" if bucket == "interpreter" else "index page", anchor
        if bucket == "git":
            if parts[1] == "db" and len(parts) >= 3:
                return "/".join(parts[:3]), "git db", parts[:3]
            if parts[1] == "checkouts" and len(parts) >= 4:
                return "/".join(parts[:4]), "git checkout", parts[:4]
            return None  # locks/
        if bucket == "builds":
            return "/".join(parts[:2]), "temporary file", parts[:2]
        return "/".join(parts[:2]), _UNIT_BUCKETS.get(bucket, "%s entry" % bucket), parts[:2]

    # -- walk ----------------------------------------------------------------------------
    def visit(self, d):
        if d.rel and bucket_name(d.rel.split("/", 1)[0]) == "sdists":
            self._revisions(d)
        Collector.visit(self, d)

    def _revisions(self, d):
        """Mark the revision directories ``revision.http``/``.rev`` does not point at (uv's own
        ``cache prune`` removes them: "dangling source revision"). The pointer is msgpack holding
        the revision id as a string: a directory is current when its name is in the pointer; with
        no name found nothing is marked."""
        names = {n for n, _st in d.entries}
        pointer = next((n for n in ("revision.http", "revision.rev") if n in names), None)
        if pointer is None:
            return
        try:
            data = read_member_file(d.fd, pointer, REVISION_MAX)
        except MemberFileError:
            return
        dirs = [n for n, st in d.entries if stat.S_ISDIR(st.st_mode)]
        live = [n for n in dirs if n.encode("utf-8", "surrogateescape") in data]
        if live:
            base = tuple(d.rel.split("/"))
            self.dangling.update(base + (n,) for n in dirs if n not in live)

    def enter(self, parts, st, d):
        if len(parts) == 2 and bucket_name(parts[0]) == "archive" and not parts[1].startswith(".tmp"):
            if parts[1] not in self.shared:
                s = self.shared[parts[1]] = Shared(_ZeroStat(st), parts)
                s.atime = 0.0  # a directory's atime moves with every walk; its files say more
                s.files = 0
            return True
        if bucket_name(parts[0]) in _FILE_BUCKETS:
            return True  # their units are files; directories only group them
        found = self._unit_of(parts)
        if found is not None and found[2] == parts:
            self.add_dir(found[0], found[1], parts, st, timed=False)
        return True

    def entry(self, parts, name, st, d):
        if len(parts) >= 3 and parts[1] in self.shared and bucket_name(parts[0]) == "archive":
            self._archive_file(parts[1], st)
            return
        found = self._unit_of(parts)
        if found is None:
            self.other(st)
            return
        key, kind, anchor = found
        u = self.unit(key, kind)
        u.add_path(anchor if parts[: len(anchor)] == anchor else parts)
        u.files += 1
        if stat.S_ISLNK(st.st_mode):
            u.own_size += st.st_size
            u.own_disk += st.st_blocks * 512
            if st.st_mtime > u.mtime:
                u.mtime = st.st_mtime  # its atime moves with every readlink, ours included
            try:
                ref = archive_target(os.readlink(name, dir_fd=d.fd))
            except OSError:
                ref = None
            if ref is not None:
                self.links.setdefault(key, set()).add(ref[1])
            return
        u.touch(st)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            self._link(st, key)
        elif self._counted(st):
            u.own_size += st.st_size
            u.own_disk += st.st_blocks * 512
        if name.endswith(".lock") and stat.S_ISREG(st.st_mode):
            u.locks.append(parts)

    def _archive_file(self, aid, st):
        s = self.shared[aid]
        s.files += 1
        if st.st_atime > s.atime:
            s.atime = st.st_atime
        if st.st_mtime > s.mtime:
            s.mtime = st.st_mtime
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            self._link(st, ("archive", aid))
        elif self._counted(st):
            s.size += st.st_size
            s.disk += st.st_blocks * 512

    def _link(self, st, owner):
        ident = (st.st_dev, st.st_ino)
        rec = self.linked.get(ident)
        if rec is None:
            rec = self.linked[ident] = [st, 0, set()]
        rec[1] += 1
        rec[2].add(owner)

    # -- finish --------------------------------------------------------------------------
    def finish_units(self):
        held_files = held_disk = 0
        for st, seen, owners in self.linked.values():
            if seen >= st.st_nlink and len(owners) == 1:
                # every link is in one unit (or one archive): removing it frees the file
                owner = next(iter(owners))
                if isinstance(owner, tuple):
                    self.shared[owner[1]].size += st.st_size
                    self.shared[owner[1]].disk += st.st_blocks * 512
                else:
                    self.units[owner].own_size += st.st_size
                    self.units[owner].own_disk += st.st_blocks * 512
                continue
            # linked from outside (an environment): in the cache's size, never in a unit's
            self.other_size += st.st_size
            self.other_disk += st.st_blocks * 512
            held_files += seen
            held_disk += st.st_blocks * 512
        for key, ids in self.links.items():
            u = self.units[key]
            for aid in sorted(ids):
                s = self.shared.get(aid)
                if s is None:
                    continue
                u.shared.append(aid)
                s.refs += 1
                if s.atime > u.atime:
                    u.atime = s.atime  # a linked file's atime is an environment reading it
        for aid in [a for a, s in self.shared.items() if s.refs == 0]:
            s = self.shared.pop(aid)
            u = self.unit("/".join(s.paths[0]), "orphan archive")
            u.own_size += s.size
            u.own_disk += s.disk
            u.files += s.files
            u.atime = max(u.atime, s.atime)
            u.mtime = max(u.mtime, s.mtime)
            u.paths = list(s.paths)
        for u in self.units.values():
            _order(u)
            if u.kind == "dangling source revision":
                u.stale = True  # never read again: uv's own prune removes it whatever its age
            if u.kind == "wheel":
                u.name = "/".join(u.key.split("/")[-2:])
        if held_files:
            self.notes.append(
                "uv: %d file(s), %s, hard-linked into environments: removing their cache entries frees "
                "nothing until those environments go (counted in the cache, never as freeable)"
                % (held_files, human(held_disk))
            )
        return list(self.units.values())


def _order(u):
    """Pointers (.http, .msgpack, .rev) first, then the link/entry, lock files last: an
    interrupted prune leaves an entry uv fetches again, never a pointer to nothing."""
    pointers = [p for p in u.paths if p[-1].endswith(_POINTER_EXT)]
    locks = [p for p in u.paths if p[-1].endswith(".lock") and p not in pointers]
    rest = [p for p in u.paths if p not in pointers and p not in locks]
    u.paths = pointers + rest + locks


class UvFormat(Format):
    name = "uv"
    description = (
        "uv cache: unit = a wheel entry, an sdist's builds, an index response, interpreter info, a git "
        "checkout; archives freed with the last entry linking them; hard-linked files never counted as freeable"
    )
    last_use = "file times; an archive's files' atime (environments hard-link them) counts for its entries"
    # uv's own lock: every uv command holds it shared, `uv cache prune`/`clean` exclusive (flock)
    tool_locks = (((".lock",), "flock"),)
    collector_class = _UvCollector
    detect_order = 65

    def detect(self, root_fd, top):
        buckets = {bucket_name(n) for n in top} - {None}
        return "CACHEDIR.TAG" in top and bool(buckets & {"archive", "wheels", "simple", "sdists", "interpreter"})


# -- cache_verify ---------------------------------------------------------------------------
def verify(ctx):
    """uv unpacks every wheel into ``archive-v*/<id>/`` and keeps its ``*.dist-info/RECORD``: each
    archive is checked file by file against the SHA-256 digests it records (what uv's installer
    trusts). A corrupt archive goes whole: the wheel entry's link then names nothing, and uv
    fetches the wheel again. Everything else (HTTP policies, index responses, metadata, links'
    targets outside archives) records no digest of its content: unverifiable."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._verify import DirPrint

    archives = {}
    for d in ctx.walk():
        base = ctx.parts(d)
        in_archive = len(base) >= 2 and bucket_name(base[0]) == "archive"
        for name, st in d.entries:
            parts = base + (name,)
            if stat.S_ISDIR(st.st_mode):
                if len(parts) == 2 and bucket_name(parts[0]) == "archive" and not name.startswith(".tmp"):
                    archives[parts] = DirPrint(st)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if in_archive and base[:2] in archives:
                archives[base[:2]].add(parts[2:], st)
            else:
                ctx.unverifiable(parts, st)
    for parts, dp in archives.items():
        ctx.check(
            parts, dp.st, "record_dir", "RECORD", "sha256 (uv archive RECORD)", sig=dp.sig(), size=dp.size,
            young=dp.young,
        )  # fmt: skip


UvFormat.verifier = staticmethod(verify)
