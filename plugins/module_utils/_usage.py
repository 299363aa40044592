# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Usage accounting for the shared cache: one pass per cache, du-equal sizes, bytes per owner.

Used by the ``cache_report`` module and by the ``show-cache-info`` command the
``cache_report`` role installs (which imports this file without Ansible), so everything here
is pure Python with no Ansible imports. This module measures; ``_render`` turns the report
into the table, the Prometheus metrics and the HTML page, and writes them.

Sizes follow ``du -sxB1``: ``st_blocks * 512`` of every inode met once (a file with several
hard links inside one cache is counted once), directories included (the cache directory
itself too), symbolic links' own blocks included and never followed, directories on other
filesystems left out and named. ``apparent_bytes`` follows ``du -sxb`` the same way.

Only what the cache owns is measured (docs/security.md): an entry whose group is not the cache
group (by default the cache directory's own) is left out of the sizes and a directory of another
group is not entered, so the report never lists what is inside a directory a member moved in;
they are counted in ``foreign`` (count, their own allocated bytes, a sample of paths).

The same walk adds every counted inode's blocks to its owner (uid): ``owners`` lists the
largest owners by name (the uid when it has none) and one ``other`` entry for the rest, so the
per-owner bytes of a cache add up to its ``bytes``.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import stat
import time

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import get_format
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    Foreign,
    Walker,
    WalkError,
    gc_paused,
    open_below,
    open_dir_nofollow,
    read_trusted_json,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._parallel import default_workers, forked_map

DAY = 86400
CATEGORY_TITLES = (
    ("ml-models", "ML Models & Datasets"),
    ("packages", "Package Caches"),
    ("languages", "Language-Specific"),
    ("other", "Other Caches"),
)
# A forked pool costs about 15 ms here (measured: 5 caches of 0/2k/20k files, 1 vs 2 workers);
# a walk of 0.1 s is where two workers start to pay (20k files: 62 ms alone, 60 ms in two).
PARALLEL_MIN_SECONDS = 0.1
# A cache whose last walk took this long is walked by all the workers together (shards of it),
# not by one: a big model cache would otherwise keep one core busy after the others are done.
SHARD_MIN_SECONDS = 0.5
_S_IFMT = 0o170000
_S_IFDIR = stat.S_IFDIR
_S_IFREG = stat.S_IFREG
_S_IFLNK = stat.S_IFLNK
OTHER_OWNERS = "other"
_OWNER_NAMES = {}


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _empty(name, path):
    return {
        "name": name,
        "path": path,
        "exists": False,
        "bytes": 0,
        "apparent_bytes": 0,
        "files": 0,
        "dirs": 0,
        "symlinks": 0,
        "other": 0,
        "hardlinks": 0,
        "oldest_atime": None,
        "newest_atime": None,
        "oldest_mtime": None,
        "newest_mtime": None,
        "not_accessed": [],
        "unreadable": [],
        "unreadable_count": 0,
        "other_filesystems": [],
        "units": [],
        "units_count": 0,
        "outside_units_bytes": 0,
        "units_error": None,
        "units_notes": [],
        "error": None,
        "foreign": {"count": 0, "bytes": 0, "sample": []},
        "owners": [],
        "seconds": 0.0,
    }


class _Tally:
    """The figures of one walk (or of one worker's share of it): ``add(d)`` per directory."""

    def __init__(self, now, age_days, age_by):
        self.cutoffs = [now - d * DAY for d in age_days]
        self.use_atime = age_by in ("atime", "newest")
        self.use_mtime = age_by in ("mtime", "newest")
        self.unused_bytes = [0] * len(self.cutoffs)  # 512-byte blocks
        self.unused_files = [0] * len(self.cutoffs)
        self.files = self.dirs = self.links = self.other = self.hard = 0
        self.blocks = self.apparent = 0
        self.owned = {}  # uid -> 512-byte blocks, counted as ``blocks`` is
        self.amin = self.mmin = float("inf")
        self.amax = self.mmax = float("-inf")
        # (dev, ino) of a file with several links -> (blocks, size, uid, regular, last use):
        # met again in this walk, it is not counted; met in another worker's, merge() uncounts it
        self.seen = {}
        self.dev = None

    def start(self, st):
        """The cache directory itself (``st``, its fstat): counted as du counts it."""
        self.dev = st.st_dev
        self.blocks += st.st_blocks
        self.apparent += st.st_size
        self.owned[st.st_uid] = self.owned.get(st.st_uid, 0) + st.st_blocks

    def add(self, d):
        """Count the entries of the directory ``d`` (a ``Walker`` Dir)."""
        dev = self.dev
        owned = self.owned
        get_owned = owned.get
        seen = self.seen
        cutoffs = self.cutoffs
        n_cut = len(cutoffs)
        use_atime, use_mtime = self.use_atime, self.use_mtime
        files, dirs, links, other, hard = self.files, self.dirs, self.links, self.other, self.hard
        blocks, apparent = self.blocks, self.apparent
        amin, amax, mmin, mmax = self.amin, self.amax, self.mmin, self.mmax
        for _name, st in d.entries:
            kind = st.st_mode & _S_IFMT
            if kind == _S_IFDIR:
                if st.st_dev != dev:
                    continue  # a mount point: Walker lists it in other_fs, du -x leaves it out
                dirs += 1
                b = st.st_blocks
                blocks += b
                apparent += st.st_size
                uid = st.st_uid
                owned[uid] = get_owned(uid, 0) + b
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    hard += 1
                    if kind == _S_IFREG:
                        files += 1
                    continue
                at, mt = st.st_atime, st.st_mtime
                last = (at if at > mt else mt) if use_atime and use_mtime else (at if use_atime else mt)
                seen[key] = (st.st_blocks, st.st_size, st.st_uid, kind, last)
            b = st.st_blocks
            blocks += b
            apparent += st.st_size
            uid = st.st_uid
            owned[uid] = get_owned(uid, 0) + b
            if kind == _S_IFREG:
                files += 1
                at = st.st_atime
                mt = st.st_mtime
                if at < amin:
                    amin = at
                if at > amax:
                    amax = at
                if mt < mmin:
                    mmin = mt
                if mt > mmax:
                    mmax = mt
                last = (at if at > mt else mt) if use_atime and use_mtime else (at if use_atime else mt)
                for i in range(n_cut):
                    if last < cutoffs[i]:
                        self.unused_bytes[i] += b
                        self.unused_files[i] += 1
            elif kind == _S_IFLNK:
                links += 1
            else:
                other += 1
        self.files, self.dirs, self.links, self.other, self.hard = files, dirs, links, other, hard
        self.blocks, self.apparent = blocks, apparent
        self.amin, self.amax, self.mmin, self.mmax = amin, amax, mmin, mmax

    def blank(self):
        """An empty tally with this one's settings (a worker's share starts from it)."""
        t = _Tally.__new__(_Tally)
        t.__dict__.update(self.__dict__)
        t.unused_bytes = [0] * len(self.cutoffs)
        t.unused_files = [0] * len(self.cutoffs)
        t.files = t.dirs = t.links = t.other = t.hard = 0
        t.blocks = t.apparent = 0
        t.owned = {}
        t.amin = t.mmin = float("inf")
        t.amax = t.mmax = float("-inf")
        t.seen = {}
        return t

    def merge(self, o):
        """Add another share of the same walk; an inode both counted (hard links in two shares)
        is counted once, as one walk would have."""
        for attr in ("files", "dirs", "links", "other", "hard", "blocks", "apparent"):
            setattr(self, attr, getattr(self, attr) + getattr(o, attr))
        for uid, b in o.owned.items():
            self.owned[uid] = self.owned.get(uid, 0) + b
        for i in range(len(self.cutoffs)):
            self.unused_bytes[i] += o.unused_bytes[i]
            self.unused_files[i] += o.unused_files[i]
        self.amin, self.mmin = min(self.amin, o.amin), min(self.mmin, o.mmin)
        self.amax, self.mmax = max(self.amax, o.amax), max(self.mmax, o.mmax)
        for key, rec in o.seen.items():
            if key not in self.seen:
                self.seen[key] = rec
                continue
            b, size, uid, kind, last = rec
            self.blocks -= b
            self.apparent -= size
            self.owned[uid] -= b
            self.hard += 1  # a regular file stays in ``files`` (one walk counts every link)
            if kind == _S_IFREG:
                for i, cut in enumerate(self.cutoffs):
                    if last < cut:
                        self.unused_bytes[i] -= b
                        self.unused_files[i] -= 1
            elif kind == _S_IFLNK:
                self.links -= 1
            else:
                self.other -= 1

    def figures(self, out, age_days):
        out["bytes"] = self.blocks * 512
        out["apparent_bytes"] = self.apparent
        out["files"] = self.files
        out["dirs"] = self.dirs
        out["symlinks"] = self.links
        out["other"] = self.other
        out["hardlinks"] = self.hard
        if self.files:
            out["oldest_atime"] = self.amin
            out["newest_atime"] = self.amax
            out["oldest_mtime"] = self.mmin
            out["newest_mtime"] = self.mmax
        out["not_accessed"] = [
            {"days": d, "bytes": self.unused_bytes[i] * 512, "files": self.unused_files[i]}
            for i, d in enumerate(age_days)
        ]


@gc_paused
def measure_cache(
    name,
    path,
    fmt=None,
    now=None,
    age_days=(30, 90),
    age_by="newest",
    top=10,
    max_errors=100,
    max_units=50000,
    gid=None,
    owners_top=10,
    workers=1,
):
    """Walk one cache once and return its figures (a dict, see RETURN of the cache_report module).

    ``fmt`` names the cache's format (``_formats``): when given and ``top`` > 0, the same walk
    feeds the format's collector and the ``top`` largest units (HF revision, wheel, conda
    package, npm entry, module@version, .deb, ...) are returned in ``units``. The collector
    keeps every unit in memory (about 1 KB each): past ``max_units`` units (0 = no limit) it
    is dropped and ``units_error`` says so, the sizes stay whole. ``gid`` is the cache group
    (default: the group of ``path``); entries of other groups are counted in ``foreign`` only.
    ``owners`` gives the ``owners_top`` largest owners of the counted blocks (``owner_bytes``).
    ``workers`` > 1 shares the walk of one big cache between forked processes: this process
    walks down to the directories its format marks as shards (``Format.shard``: an HF repo, a
    store bucket, a second-level directory of a generic tree), the workers walk those, and
    their figures and collectors are merged (the same result as one walk). Never raises for
    what it finds in the tree: a missing cache gives ``exists: false``, a root that cannot be
    opened safely gives ``error``, unreadable subtrees are counted and named.
    """
    t0 = time.monotonic()
    now = time.time() if now is None else now
    out = _empty(name, path)
    try:
        root_fd = open_dir_nofollow(path)
    except FileNotFoundError:
        out["seconds"] = round(time.monotonic() - t0, 3)
        return out
    except (WalkError, OSError) as exc:
        out["exists"] = os.path.lexists(path)
        out["error"] = "%s: %s" % (path, exc.strerror or exc)
        out["seconds"] = round(time.monotonic() - t0, 3)
        return out
    out["exists"] = True
    fobj = get_format(fmt or "generic")
    collector = fobj.collector(root_fd) if fmt and top > 0 else None
    try:
        if gid is None:
            gid = os.fstat(root_fd).st_gid
        walker = Walker(root_fd, one_fs=True, max_errors=max_errors, gid=gid)
        tally = _Tally(now, age_days, age_by)
        tally.start(walker.root_st)
        shard_depths = fobj.shard_depths if workers > 1 else ()
        shards = []
        for d in walker.walk():
            if collector is not None:
                collector, out["units_error"] = _collect(collector, d, max_units, out["units_error"])
            tally.add(d)
            if shard_depths and d.rel.count("/") + (1 if d.rel else 0) + 1 in shard_depths:
                base = tuple(d.rel.split("/")) if d.rel else ()
                for sub, est in d.entries:
                    if (
                        stat.S_ISDIR(est.st_mode)
                        and est.st_dev == tally.dev
                        and sub not in d.skip
                        and fobj.shard(base + (sub,))
                    ):
                        d.skip.add(sub)
                        shards.append((d.rel + "/" + sub if d.rel else sub, (est.st_dev, est.st_ino)))
        if len(shards) > 1:
            collector, out["units_error"] = _measure_shards_in(
                workers, root_fd, shards, gid, max_errors, max_units, tally, walker, collector, out["units_error"]
            )
        elif shards:  # one shard: walked here, as if it had not been marked
            share = _measure_shards(_shard_job(root_fd, shards, gid, max_errors, max_units, tally, collector))
            collector, out["units_error"] = _merge_share(share, tally, walker, collector, out["units_error"], max_units)
        tally.figures(out, age_days)
        out["unreadable"] = [{"path": p, "error": e} for p, e in walker.errors]
        out["unreadable_count"] = walker.error_count
        out["other_filesystems"] = list(walker.other_fs)
        out["foreign"] = walker.foreign.as_dict()
        out["owners"] = owner_bytes(tally.owned, owners_top)
    finally:
        os.close(root_fd)
    if collector is not None:
        try:
            col = collector.finish()
            ranked = sorted(col.units, key=lambda u: (-u.disk, u.key))[:top]
            out["units"] = [
                {
                    "unit": u.name,
                    "key": u.key,
                    "kind": u.kind,
                    "bytes": u.disk,
                    "apparent_bytes": u.size,
                    "files": u.files,
                    "last_used": u.last_used(age_by) or None,
                }
                for u in ranked
            ]
            out["units_count"] = len(col.units)
            out["outside_units_bytes"] = col.other_disk
            out["units_notes"] = list(col.notes[:20])  # metadata members wrote that was not used
        except Exception as exc:  # noqa: BLE001
            out["units_error"] = "%s: %s" % (type(exc).__name__, exc)
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def _collect(collector, d, max_units, error):
    """Feed ``d`` to the collector; (None, why) once it fails or holds too many units."""
    try:
        collector.visit(d)
    except Exception as exc:  # noqa: BLE001 - units are extra; sizes must still come out
        return None, "%s: %s" % (type(exc).__name__, exc)
    return _collect_check(collector, error, max_units)


def _collect_check(collector, error, max_units):
    """(None, why) when the collector holds more than ``max_units`` units, else as given."""
    if max_units and len(collector.units) > max_units:
        return None, ("more than %d units: largest units not computed, to bound memory (raise max_units)" % max_units)
    return collector, error


def _shard_job(root_fd, shards, gid, max_errors, max_units, tally, collector):
    return {
        "root_fd": root_fd,
        "shards": shards,
        "gid": gid,
        "max_errors": max_errors,
        "max_units": max_units,
        "tally": tally.blank(),
        "collector": collector.blank() if collector is not None else None,
    }


@gc_paused
def _measure_shards(job):
    """A worker's share of a walk: the shard directories ``job['shards']`` ((relative path,
    (dev, ino) seen by the walk that listed it)), each opened below the cache's descriptor
    without following links and walked whole. Returns the share's tally, collector, errors."""
    root_fd = job["root_fd"]
    tally = job["tally"]
    collector = job["collector"]
    units_error = None
    errors, error_count, other_fs = [], 0, []
    foreign = Foreign()
    for rel, ident in job["shards"]:
        try:
            fd = open_below(root_fd, rel, tally.dev)
        except OSError as exc:
            error_count += 1
            errors.append((rel, "%s" % (exc.strerror or exc)))
            continue
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != ident:
                error_count += 1
                errors.append((rel, "directory replaced during the walk; skipped"))
                continue
            walker = Walker(fd, one_fs=True, max_errors=job["max_errors"], prefix=rel, gid=job["gid"])
            for d in walker.walk():
                if collector is not None:
                    collector, units_error = _collect(collector, d, job["max_units"], units_error)
                tally.add(d)
            errors.extend(walker.errors)
            error_count += walker.error_count
            other_fs.extend(walker.other_fs)
            foreign.merge(walker.foreign)
        finally:
            os.close(fd)
    if collector is not None:
        collector.compact()
    return {
        "tally": tally,
        "collector": collector,
        "units_error": units_error,
        "errors": errors,
        "error_count": error_count,
        "other_fs": other_fs,
        "foreign": foreign,
    }


def _merge_share(share, tally, walker, collector, units_error, max_units):
    tally.merge(share["tally"])
    walker.error_count += share["error_count"]
    walker.errors.extend(share["errors"][: max(0, walker.max_errors - len(walker.errors))])
    walker.other_fs.extend(share["other_fs"])
    walker.foreign.merge(share["foreign"])
    if collector is not None:
        if share["collector"] is None:
            return None, units_error or share["units_error"]
        collector.merge(share["collector"])
        return _collect_check(collector, units_error, max_units)
    return collector, units_error


def _measure_shards_in(workers, root_fd, shards, gid, max_errors, max_units, tally, walker, collector, error):
    """The shards in ``workers`` forked processes (here, when processes cannot be made), merged
    in the order they were listed. Shards are dealt round-robin into a few jobs per worker, so
    a worker that finishes early takes the next job and big neighbours do not meet."""
    n_jobs = min(len(shards), workers * 4)
    jobs = [_shard_job(root_fd, shards[i::n_jobs], gid, max_errors, max_units, tally, collector) for i in range(n_jobs)]
    shares = forked_map(_measure_shards, jobs, workers)
    if shares is None:
        shares = [_measure_shards(j) for j in jobs]
    for share in shares:
        collector, error = _merge_share(share, tally, walker, collector, error, max_units)
    return collector, error


def owner_name(uid):
    """The user name of ``uid`` (the password database), or the uid as text when it has none."""
    name = _OWNER_NAMES.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            name = str(uid)
        _OWNER_NAMES[uid] = name
    return name


def owner_bytes(blocks_by_uid, top=10):
    """[{owner, uid, bytes}] of the ``top`` largest owners, largest first, then one ``other``
    entry (uid null) with the rest when there is a rest: bounded however many users write."""
    ranked = sorted(blocks_by_uid.items(), key=lambda kv: (-kv[1], kv[0]))
    out = [{"owner": owner_name(uid), "uid": uid, "bytes": b * 512} for uid, b in ranked[: max(0, top)]]
    rest = ranked[max(0, top) :]
    if rest:
        out.append({"owner": OTHER_OWNERS, "uid": None, "bytes": sum(b for _u, b in rest) * 512})
    return out


def group_members(name):
    """The members of group ``name`` from the group database: its member list and every user whose
    primary group it is, sorted; None when the group does not exist."""
    try:
        entry = grp.getgrnam(name)
    except KeyError:
        return None
    members = set(entry.gr_mem)
    members.update(pw.pw_name for pw in pwd.getpwall() if pw.pw_gid == entry.gr_gid)
    return {"name": name, "gid": entry.gr_gid, "members": sorted(members)}


def filesystem(path, warn_percent=80.0, critical_percent=90.0):
    """Size, used, available and percent (as ``df`` computes it) of the filesystem holding path."""
    vfs = os.statvfs(path)
    size = vfs.f_blocks * vfs.f_frsize
    free = vfs.f_bfree * vfs.f_frsize
    avail = vfs.f_bavail * vfs.f_frsize
    used = size - free
    # df: used / (used + available), rounded up; we keep one decimal
    denom = used + avail
    percent = round(100.0 * used / denom, 1) if denom else 0.0
    ipercent = 0.0
    if vfs.f_files:
        iused = vfs.f_files - vfs.f_ffree
        idenom = iused + vfs.f_favail
        ipercent = round(100.0 * iused / idenom, 1) if idenom else 0.0
    return {
        "path": path,
        "size": size,
        "used": used,
        "avail": avail,
        "free": free,
        "percent": percent,
        "inodes": vfs.f_files,
        "inodes_used": vfs.f_files - vfs.f_ffree,
        "inodes_percent": ipercent,
        "warn_percent": warn_percent,
        "critical_percent": critical_percent,
        "warning": percent >= warn_percent,
        "critical": percent >= critical_percent,
    }


def _measure_job(job):
    return measure_cache(**job)


def build_report(
    caches,
    root=None,
    age_days=(30, 90),
    age_by="newest",
    top=10,
    warn_percent=80.0,
    critical_percent=90.0,
    workers=None,
    now=None,
    size_hints=None,
    max_units=50000,
    last_seconds=None,
    owners_top=10,
    progress=None,
    cache_seconds=None,
):
    """Measure every cache and the filesystems they live on; return the whole report dict.

    ``caches`` is a list of dicts with ``name``, ``path`` (absolute), and optionally ``format``,
    ``category``, ``description``, ``age_by``. ``workers`` > 1 measures caches in parallel
    worker processes (the walk is system-call bound; processes overlap it on several cores);
    ``size_hints`` (cache name -> bytes of an earlier report) makes the largest start first;
    with ``workers`` None, ``last_seconds`` (the earlier report's duration) under
    PARALLEL_MIN_SECONDS keeps the walk in this process (workers cost more than they save).
    ``progress`` (a callable) is called with (caches done, caches in all, the cache's figures)
    as each cache is measured. ``cache_seconds`` (cache name -> seconds its last walk took):
    with several workers, a cache whose walk took SHARD_MIN_SECONDS or more is walked by all of
    them together (``measure_cache``'s ``workers``), the others one per worker.
    ``hints(history)`` gives ``size_hints``, ``last_seconds`` and ``cache_seconds`` from the
    history file's last entry.
    """
    t0 = time.monotonic()
    now = time.time() if now is None else now
    jobs = []
    for c in caches:
        jobs.append(
            {
                "name": c["name"],
                "path": c["path"],
                "now": now,
                "age_days": tuple(age_days),
                "age_by": c.get("age_by") or age_by,
                "top": top,
                "fmt": c.get("format") or "generic",
                "max_units": max_units,
                "owners_top": owners_top,
            }
        )
    if workers is None:
        # Worker processes cost ~15 ms (fork, pool): worth it past small trees only. The last
        # report's duration (history) tells; without history, assume big caches.
        if last_seconds is not None and last_seconds < PARALLEL_MIN_SECONDS:
            workers = 1
        else:
            workers = default_workers(len(jobs))
    big = set()
    if workers > 1:
        secs = cache_seconds if isinstance(cache_seconds, dict) else {}
        big = {
            i
            for i, j in enumerate(jobs)
            if isinstance(secs.get(j["name"]), (int, float))
            and secs[j["name"]] >= SHARD_MIN_SECONDS
            and get_format(j["fmt"]).shard_depths  # a format that cannot be shared runs beside the others
        }
    results = [None] * len(jobs)
    small = [i for i in range(len(jobs)) if i not in big]

    def report_progress(done, _in_all, result):
        if progress is not None:
            progress(done, len(jobs), result)

    parallel = None
    if workers > 1 and len(small) > 1:
        parallel = _parallel([jobs[i] for i in small], workers, size_hints, report_progress)
    for k, i in enumerate(small):
        if parallel is not None:
            results[i] = parallel[k]
        else:
            results[i] = measure_cache(**jobs[i])
            report_progress(k + 1, None, results[i])
    for k, i in enumerate(sorted(big)):
        results[i] = measure_cache(workers=workers, **jobs[i])
        report_progress(len(small) + k + 1, None, results[i])
    out_caches = []
    for c, r in zip(caches, results, strict=True):
        r["format"] = c.get("format", "generic")
        r["category"] = c.get("category", "other")
        r["description"] = c.get("description", c["name"])
        r["writers"] = c.get("writers")  # curated cache (catalog `writers`), else None
        out_caches.append(r)
    fs_by_dev = {}
    fs_list = []
    root_fs = None
    if root:
        try:
            root_fs = filesystem(root, warn_percent, critical_percent)
            root_fs["device"] = os.stat(root).st_dev
            fs_by_dev[root_fs["device"]] = root_fs
            root_fs["caches"] = []
            fs_list.append(root_fs)
        except OSError as exc:
            root_fs = {"path": root, "error": "%s" % (exc.strerror or exc)}
    for r in out_caches:
        if not r["exists"] or r["error"]:
            continue
        try:
            dev = os.stat(r["path"], follow_symlinks=False).st_dev
        except OSError:
            continue
        fs = fs_by_dev.get(dev)
        if fs is None:
            fs = filesystem(r["path"], warn_percent, critical_percent)
            fs["device"] = dev
            fs["caches"] = []
            fs_by_dev[dev] = fs
            fs_list.append(fs)
        fs["caches"].append(r["name"])
    if root_fs is None and fs_list:
        root_fs = fs_list[0]
    totals = {
        "bytes": sum(r["bytes"] for r in out_caches),
        "apparent_bytes": sum(r["apparent_bytes"] for r in out_caches),
        "files": sum(r["files"] for r in out_caches),
        "dirs": sum(r["dirs"] for r in out_caches),
        "not_accessed": [
            {
                "days": d,
                "bytes": sum(r["not_accessed"][i]["bytes"] for r in out_caches if r["not_accessed"]),
                "files": sum(r["not_accessed"][i]["files"] for r in out_caches if r["not_accessed"]),
            }
            for i, d in enumerate(age_days)
        ],
        "unreadable_count": sum(r["unreadable_count"] for r in out_caches),
        "foreign_count": sum(r["foreign"]["count"] for r in out_caches),
    }
    categories = []
    for key, title in CATEGORY_TITLES:
        members = [r for r in out_caches if r["category"] == key]
        categories.append(
            {
                "category": key,
                "title": title,
                "bytes": sum(r["bytes"] for r in members),
                "files": sum(r["files"] for r in members),
                "caches": [r["name"] for r in members],
            }
        )
    largest = sorted(
        (dict(u, cache=r["name"]) for r in out_caches for u in r["units"]),
        key=lambda u: (-u["bytes"], u["cache"], u["unit"]),
    )[:top]
    return {
        "generated": now,
        "generated_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "host": socket.gethostname(),
        "root": root,
        "age_by": age_by,
        "caches": out_caches,
        "categories": categories,
        "totals": totals,
        "largest_units": largest,
        "filesystem": root_fs,
        "filesystems": fs_list,
        "workers": workers,
        "seconds": round(time.monotonic() - t0, 3),
    }


def hints(history):
    """What the last history entry says about the next walk (``build_report``'s keywords)."""
    last = history[-1] if history else {}
    return {
        "size_hints": last.get("caches"),
        "last_seconds": last.get("seconds"),
        "cache_seconds": last.get("cache_seconds"),
    }


def _parallel(jobs, workers, size_hints=None, progress=None):
    """Run measure_cache jobs in forked worker processes; None when processes are unavailable.

    The largest cache goes first when ``size_hints`` (name -> files or bytes of an earlier
    report) tell which is largest, so one big cache does not finish last.
    """
    hints = size_hints or {}
    order = sorted(range(len(jobs)), key=lambda i: -(hints.get(jobs[i]["name"]) or 0))
    on_result = None
    if progress is not None:
        count = [0]

        def on_result(_index, result):
            count[0] += 1
            progress(count[0], len(jobs), result)

    done = forked_map(_measure_job, [jobs[i] for i in order], workers, on_result=on_result)
    if done is None:
        return None
    results = [None] * len(jobs)
    for i, r in zip(order, done, strict=True):
        results[i] = r
    return results


# --------------------------------------------------------------------------------------------
# What root's other jobs recorded: the last prune, the doctor's last result, the verify summary
# --------------------------------------------------------------------------------------------
# Each is a JSON file root wrote atomically in a root-only directory; it is read only through
# read_trusted_json (root's file, in directories nobody else can change): a member cannot make
# the report say that a prune ran or that the doctor passed.
PRUNE_STATE = "/var/lib/mlinfra-shared-cache/prune/state.json"
DOCTOR_STATUS = "/var/lib/mlinfra-shared-cache/doctor/status.json"
VERIFY_SUMMARY = "/var/lib/mlinfra-shared-cache/verify/summary.json"
VERIFY_FIELDS = (
    "verified",
    "verified_bytes",
    "corrupt",
    "corrupt_bytes",
    "unverifiable",
    "unverifiable_bytes",
    "skipped_busy",
)


def read_status(path):
    """(the JSON object in root's file ``path``, None), (None, None) when there is no such file
    (or no path), (None, why) when it cannot be trusted or read (not root's, not JSON, no right)."""
    if not path:
        return None, None
    try:
        data = read_trusted_json(path)
    except FileNotFoundError:
        return None, None
    except PermissionError as exc:
        if exc.errno == errno.EACCES and os.geteuid() != 0:
            return None, "%s: readable by root only (sudo show-cache-info shows it)" % path
        return None, "%s: %s" % (path, exc.strerror or exc)
    except (OSError, ValueError) as exc:
        return None, "%s: %s" % (path, getattr(exc, "strerror", None) or exc)
    if not isinstance(data, dict):
        return None, "%s: not a JSON object" % path
    return data, None


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def add_status(report, group=None, prune_state=None, doctor_status=None, verify_summary=None):
    """Add to ``report`` what the admin asks next: ``group`` (its members), per cache
    ``last_prune`` and ``verify``, and ``doctor`` (the last result); ``status_errors`` names a
    state file that exists but was refused. Returns ``report``."""
    errors = []
    report["group"] = group_members(group) if group else None
    prune, err = read_status(prune_state)
    errors += [err] if err else []
    verify, err = read_status(verify_summary)
    errors += [err] if err else []
    doctor, err = read_status(doctor_status)
    errors += [err] if err else []
    pruned = (prune or {}).get("caches") if isinstance((prune or {}).get("caches"), dict) else {}
    verified = (verify or {}).get("caches") if isinstance((verify or {}).get("caches"), dict) else {}
    for r in report["caches"]:
        p = pruned.get(r["name"])
        r["last_prune"] = None
        if isinstance(p, dict) and _number(p.get("time")) is not None:
            r["last_prune"] = {
                "time": p["time"],
                "freed_bytes": _number(p.get("freed_bytes")) or 0,
                "units": _number(p.get("units")) or 0,
                "files": _number(p.get("files")) or 0,
                "errors": _number(p.get("errors")) or 0,
            }
        v = verified.get(r["name"])
        r["verify"] = None
        if isinstance(v, dict):
            r["verify"] = {k: _number(v.get(k)) or 0 for k in VERIFY_FIELDS}
            sample = v.get("corrupt_sample") if isinstance(v.get("corrupt_sample"), list) else []
            r["verify"]["corrupt_sample"] = [
                {k: str(s.get(k, "")) for k in ("path", "expected", "actual")}
                for s in sample[:10]
                if isinstance(s, dict)
            ]
    report["verify"] = {"time": _number(verify.get("time")), "path": verify_summary} if verify else None
    report["doctor"] = None
    if doctor:
        lines = doctor.get("lines") if isinstance(doctor.get("lines"), list) else []
        report["doctor"] = {
            "time": _number(doctor.get("time")),
            "problems": _number(doctor.get("problems")) or 0,
            "checks": _number(doctor.get("checks")) or 0,
            "lines": [str(x) for x in lines[:20]],
        }
    report["status_errors"] = errors
    return report
