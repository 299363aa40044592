# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Usage accounting for the shared cache: one pass per cache, du-equal sizes, renderings.

Used by the ``cache_report`` module and by the ``show-cache-info`` command the
``cache_report`` role installs (which imports this file without Ansible), so everything here
is pure Python with no Ansible imports.

Sizes follow ``du -sxB1``: ``st_blocks * 512`` of every inode met once (a file with several
hard links inside one cache is counted once), directories included (the cache directory
itself too), symbolic links' own blocks included and never followed, directories on other
filesystems left out and named. ``apparent_bytes`` follows ``du -sxb`` the same way.

Only what the cache owns is measured (docs/security.md): an entry whose group is not the cache
group (by default the cache directory's own) is left out of the sizes and a directory of another
group is not entered, so the report never lists what is inside a directory a member moved in;
they are counted in ``foreign`` (count, their own allocated bytes, a sample of paths).
"""

from __future__ import annotations

import html
import json
import os
import socket
import stat
import time

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import get_format
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    Walker,
    WalkError,
    humanize,
    open_dir_nofollow,
    write_atomic,
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
_S_IFMT = 0o170000
_S_IFDIR = stat.S_IFDIR
_S_IFREG = stat.S_IFREG
_S_IFLNK = stat.S_IFLNK


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
        "seconds": 0.0,
    }


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
):
    """Walk one cache once and return its figures (a dict, see RETURN of the cache_report module).

    ``fmt`` names the cache's format (``_formats``): when given and ``top`` > 0, the same walk
    feeds the format's collector and the ``top`` largest units (HF revision, wheel, conda
    package, npm entry, module@version, .deb, ...) are returned in ``units``. The collector
    keeps every unit in memory (about 1 KB each): past ``max_units`` units (0 = no limit) it
    is dropped and ``units_error`` says so, the sizes stay whole. ``gid`` is the cache group
    (default: the group of ``path``); entries of other groups are counted in ``foreign`` only.
    Never raises for what it finds in the tree: a missing cache gives ``exists: false``, a root
    that cannot be opened safely gives ``error``, unreadable subtrees are counted and named.
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
    cutoffs = [now - d * DAY for d in age_days]
    n_cut = len(cutoffs)
    unused_bytes = [0] * n_cut
    unused_files = [0] * n_cut
    use_atime = age_by in ("atime", "newest")
    use_mtime = age_by in ("mtime", "newest")
    seen = set()
    collector = None
    if fmt and top > 0:
        collector = get_format(fmt).collector(root_fd)
    try:
        if gid is None:
            gid = os.fstat(root_fd).st_gid
        walker = Walker(root_fd, one_fs=True, max_errors=max_errors, gid=gid)
        rst = walker.root_st
        dev = rst.st_dev
        blocks = rst.st_blocks
        apparent = rst.st_size
        files = dirs = links = other = hard = 0
        amin = mmin = float("inf")
        amax = mmax = float("-inf")
        for d in walker.walk():
            if collector is not None:
                try:
                    collector.visit(d)
                except Exception as exc:  # noqa: BLE001 - units are extra; sizes must still come out
                    out["units_error"] = "%s: %s" % (type(exc).__name__, exc)
                    collector = None
                else:
                    if max_units and len(collector.units) > max_units:
                        out["units_error"] = (
                            "more than %d units: largest units not computed, to bound memory (raise max_units)"
                            % max_units
                        )
                        collector = None
            for _name, st in d.entries:
                kind = st.st_mode & _S_IFMT
                if kind == _S_IFDIR:
                    if st.st_dev != dev:
                        continue  # a mount point: Walker lists it in other_fs, du -x leaves it out
                    dirs += 1
                    blocks += st.st_blocks
                    apparent += st.st_size
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        hard += 1
                        if kind == _S_IFREG:
                            files += 1
                        continue
                    seen.add(key)
                b = st.st_blocks
                blocks += b
                apparent += st.st_size
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
                            unused_bytes[i] += b
                            unused_files[i] += 1
                elif kind == _S_IFLNK:
                    links += 1
                else:
                    other += 1
        out["bytes"] = blocks * 512
        out["apparent_bytes"] = apparent
        out["files"] = files
        out["dirs"] = dirs
        out["symlinks"] = links
        out["other"] = other
        out["hardlinks"] = hard
        if files:
            out["oldest_atime"] = amin
            out["newest_atime"] = amax
            out["oldest_mtime"] = mmin
            out["newest_mtime"] = mmax
        out["not_accessed"] = [
            {"days": d, "bytes": unused_bytes[i] * 512, "files": unused_files[i]} for i, d in enumerate(age_days)
        ]
        out["unreadable"] = [{"path": p, "error": e} for p, e in walker.errors]
        out["unreadable_count"] = walker.error_count
        out["other_filesystems"] = list(walker.other_fs)
        out["foreign"] = walker.foreign.as_dict()
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
):
    """Measure every cache and the filesystems they live on; return the whole report dict.

    ``caches`` is a list of dicts with ``name``, ``path`` (absolute), and optionally ``format``,
    ``category``, ``description``, ``age_by``. ``workers`` > 1 measures caches in parallel
    worker processes (the walk is system-call bound; processes overlap it on several cores);
    ``size_hints`` (cache name -> bytes of an earlier report) makes the largest start first;
    with ``workers`` None, ``last_seconds`` (the earlier report's duration) under
    PARALLEL_MIN_SECONDS keeps the walk in this process (workers cost more than they save).
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
            }
        )
    if workers is None:
        # Worker processes cost ~15 ms (fork, pool): worth it past small trees only. The last
        # report's duration (history) tells; without history, assume big caches.
        if last_seconds is not None and last_seconds < PARALLEL_MIN_SECONDS:
            workers = 1
        else:
            workers = default_workers(len(jobs))
    results = None
    if workers > 1 and len(jobs) > 1:
        results = _parallel(jobs, workers, size_hints)
    if results is None:
        results = [measure_cache(**j) for j in jobs]
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


def _parallel(jobs, workers, size_hints=None):
    """Run measure_cache jobs in forked worker processes; None when processes are unavailable.

    The largest cache goes first when ``size_hints`` (name -> files or bytes of an earlier
    report) tell which is largest, so one big cache does not finish last.
    """
    hints = size_hints or {}
    order = sorted(range(len(jobs)), key=lambda i: -(hints.get(jobs[i]["name"]) or 0))
    done = forked_map(_measure_job, [jobs[i] for i in order], workers)
    if done is None:
        return None
    results = [None] * len(jobs)
    for i, r in zip(order, done, strict=True):
        results[i] = r
    return results


# --------------------------------------------------------------------------------------------
# Renderings: history entry, table, Prometheus textfile, HTML page
# --------------------------------------------------------------------------------------------


def history_entry(report):
    """The compact record of one run that the history file keeps (one JSON object per line)."""
    fs = report.get("filesystem") or {}
    return {
        "t": int(report["generated"]),
        "total": report["totals"]["bytes"],
        "files": report["totals"]["files"],
        "fs_used": fs.get("used"),
        "fs_size": fs.get("size"),
        "caches": {r["name"]: r["bytes"] for r in report["caches"]},
        "seconds": report["seconds"],
    }


def read_history(path, limit=2000):
    """Entries of a JSON-lines history file (last ``limit``); bad lines are skipped; no file, or
    one the caller may not read (a non-member and a 2770 cache's 0640 history), = []."""
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and isinstance(item.get("t"), (int, float)):
                    out.append(item)
    except (FileNotFoundError, PermissionError):
        return []
    return out[-limit:] if limit else out


def foreign_note(foreign):
    """'2 entries not the cache's (another group), e.g. pip/moved: chgrp ... or adopt' for the table and page."""
    return (
        "%d entr%s not the cache's (another group; not counted, not entered), e.g. %s: "
        "the owner runs chgrp, or adopt once"
        % (
            foreign["count"],
            "y" if foreign["count"] == 1 else "ies",
            ", ".join(foreign["sample"][:3]),
        )
    )


def _age(now, t):
    if t is None:
        return "-"
    days = (now - t) / DAY
    if days < 1:
        return "%dh" % max(0, (now - t) // 3600)
    return "%dd" % days


def render_table(report):
    """A human table like the seed's show-cache-info.sh, grouped by category, with a total."""
    now = report["generated"]
    lines = ["=== Shared Cache Statistics (%s, %s) ===" % (report["host"], report["generated_iso"]), ""]
    days = [b["days"] for b in report["totals"]["not_accessed"]]
    head = "  %-22s %8s %10s %8s" % ("cache", "size", "files", "last use")
    head += "".join(" %9s" % (">%dd idle" % d) for d in days)
    by_name = {r["name"]: r for r in report["caches"]}
    for cat in report["categories"]:
        if not cat["caches"]:
            continue
        lines.append("%s:" % cat["title"])
        lines.append(head)
        for name in cat["caches"]:
            r = by_name[name]
            if r["error"]:
                lines.append("  %-22s %s" % (name, r["error"]))
                continue
            if not r["exists"]:
                lines.append("  %-22s %8s %10s" % (name, "-", "missing"))
                continue
            last = max(x for x in (r["newest_atime"], r["newest_mtime"], 0) if x is not None) or None
            row = "  %-22s %8s %10s %8s" % (name, humanize(r["bytes"]), "{:,}".format(r["files"]), _age(now, last))
            row += "".join(" %9s" % humanize(b["bytes"]) for b in r["not_accessed"])
            if r["unreadable_count"]:
                row += "  (%d unreadable: %s)" % (r["unreadable_count"], r["unreadable"][0]["path"])
            if r["foreign"]["count"]:
                row += "  (%s)" % foreign_note(r["foreign"])
            lines.append(row)
        lines.append("  %-22s %8s %10s" % ("subtotal", humanize(cat["bytes"]), "{:,}".format(cat["files"])))
        lines.append("")
    t = report["totals"]
    lines.append(
        "Total Cache Usage: %s (%s bytes, %s files)" % (humanize(t["bytes"]), t["bytes"], "{:,}".format(t["files"]))
    )
    for b in t["not_accessed"]:
        lines.append("Not used for %d days: %s" % (b["days"], humanize(b["bytes"])))
    for fs in report["filesystems"]:
        flag = " CRITICAL" if fs["critical"] else (" WARNING" if fs["warning"] else "")
        lines.append(
            "Filesystem %s: %s used of %s (%.1f%%), %s available%s"
            % (fs["path"], humanize(fs["used"]), humanize(fs["size"]), fs["percent"], humanize(fs["avail"]), flag)
        )
    if report["largest_units"]:
        lines.append("")
        lines.append("Largest units:")
        for u in report["largest_units"]:
            lines.append("  %8s  %-12s %s" % (humanize(u["bytes"]), u["cache"], u["unit"]))
    return "\n".join(lines) + "\n"


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v):
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return "%d" % v
    return repr(float(v))


def render_prometheus(report, prefix="shared_cache"):
    """node_exporter textfile collector metrics (text exposition format 0.0.4)."""
    out = []

    def family(name, help_text, samples):
        samples = [s for s in samples if s[1] is not None]
        if not samples:
            return
        out.append("# HELP %s_%s %s" % (prefix, name, help_text))
        out.append("# TYPE %s_%s gauge" % (prefix, name))
        for labels, value in samples:
            lab = ",".join('%s="%s"' % (k, _label(v)) for k, v in labels)
            out.append("%s_%s%s %s" % (prefix, name, "{%s}" % lab if lab else "", _num(value)))

    ok = [r for r in report["caches"] if r["exists"] and not r["error"]]

    def lab(r):
        return [("cache", r["name"]), ("category", r["category"]), ("format", r["format"])]

    per_cache = (
        ("size_bytes", "bytes", "Bytes on disk used by the cache (equal to du -sxB1)."),
        ("apparent_bytes", "apparent_bytes", "Apparent size of the cache in bytes (equal to du -sxb)."),
        ("files", "files", "Regular files in the cache (every hard link counted, as find -type f)."),
        ("directories", "dirs", "Directories below the cache directory."),
        ("oldest_access_timestamp_seconds", "oldest_atime", "Oldest access time of a file in the cache."),
        ("newest_access_timestamp_seconds", "newest_atime", "Newest access time of a file in the cache."),
        ("oldest_modification_timestamp_seconds", "oldest_mtime", "Oldest modification time of a file."),
        ("newest_modification_timestamp_seconds", "newest_mtime", "Newest modification time of a file."),
        ("unreadable_directories", "unreadable_count", "Subtrees the report could not read (counted, not entered)."),
        ("scan_duration_seconds", "seconds", "Time spent walking the cache."),
    )
    for metric, key, help_text in per_cache:
        family(metric, help_text, [(lab(r), r[key]) for r in ok])
    family(
        "foreign_entries",
        "Entries of another group than the cache's (moved or linked in by a member): left alone, not entered.",
        [(lab(r), r["foreign"]["count"]) for r in ok],
    )
    family(
        "not_accessed_bytes",
        "Bytes on disk of files not used (by the report's age_by time) for at least the given days.",
        [(lab(r) + [("days", str(b["days"]))], b["bytes"]) for r in ok for b in r["not_accessed"]],
    )
    family(
        "not_accessed_files",
        "Files not used for at least the given days.",
        [(lab(r) + [("days", str(b["days"]))], b["files"]) for r in ok for b in r["not_accessed"]],
    )
    family(
        "present",
        "1 when the cache directory exists and could be opened safely.",
        [([("cache", r["name"])], bool(r["exists"] and not r["error"])) for r in report["caches"]],
    )
    per_fs = (
        ("filesystem_size_bytes", "size", "Size of the filesystem holding caches."),
        ("filesystem_used_bytes", "used", "Used bytes of the filesystem holding caches (as df)."),
        ("filesystem_avail_bytes", "avail", "Bytes available to unprivileged users (as df)."),
        ("filesystem_warning", "warning", "1 when usage is at or above the warning threshold."),
        ("filesystem_critical", "critical", "1 when usage is at or above the critical threshold."),
    )
    fss = report["filesystems"]
    for metric, key, help_text in per_fs:
        family(metric, help_text, [([("path", f["path"])], f[key]) for f in fss])
    family(
        "filesystem_used_ratio",
        "used / (used + avail), df's Use% divided by 100.",
        [([("path", f["path"])], f["percent"] / 100.0) for f in fss],
    )
    family("total_bytes", "Bytes on disk used by every cache together.", [([], report["totals"]["bytes"])])
    family("report_timestamp_seconds", "When the report was made (Unix time).", [([], float(report["generated"]))])
    family("report_duration_seconds", "Time the whole report took.", [([], report["seconds"])])
    return "\n".join(out) + "\n"


def append_history(path, entry, keep=2000, mode=0o644, gid=None):
    """Append ``entry`` to the JSON-lines history, keeping the last ``keep`` entries.

    The file is rewritten atomically (temporary file in the same directory, then rename), so a
    reader never sees half a line. Used by show-cache-info; the role appends with lineinfile.
    """
    entries = read_history(path, limit=max(0, keep - 1))
    entries.append(entry)
    write_atomic(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries), mode=mode, gid=gid)


# --------------------------------------------------------------------------------------------
# HTML page: self-contained (inline CSS and SVG, no script, no external resource)
# --------------------------------------------------------------------------------------------

COLORS = {"ml-models": "#4e79a7", "packages": "#f28e2b", "languages": "#59a14f", "other": "#9c755f"}
_CSS = """
body{font-family:"DejaVu Sans",Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px;margin:0 0 12px}
table{border-collapse:collapse;font-size:13px;margin-top:8px}
th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #eee}
th:first-child,td:first-child{text-align:left}
td.l,th.l{text-align:left}
.warn{color:#b35900;font-weight:bold}.crit{color:#c0392b;font-weight:bold}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
svg text{font-size:12px;fill:#222}
"""


def _e(value):
    return html.escape(str(value), quote=True)


def _date(t):
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def _short(text, n):
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _hbars(rows, width=900, label_w=250, value_w=90, bar_h=18, gap=6):
    """rows: (label, bytes, color, data attrs dict). Horizontal bar chart as inline SVG."""
    if not rows:
        return '<p class="meta">nothing to show</p>'
    top = max(r[1] for r in rows) or 1
    span = width - label_w - value_w
    height = len(rows) * (bar_h + gap) + gap
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img">' % (width, height)]
    for i, (label, value, color, attrs) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = max(1.0, span * value / top) if value else 0.0
        extra = "".join(' data-%s="%s"' % (k, _e(v)) for k, v in attrs.items())
        out.append(
            '<g class="bar"%s><text x="%d" y="%d" text-anchor="end">%s</text>'
            '<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>'
            '<text x="%.1f" y="%d">%s</text></g>'
            % (
                extra,
                label_w - 8,
                y + bar_h - 5,
                _e(label),
                label_w,
                y,
                w,
                bar_h,
                color,
                label_w + w + 6,
                y + bar_h - 5,
                _e(humanize(value)),
            )
        )
    out.append("</svg>")
    return "".join(out)


def _growth(points, label, color, width=760, height=220):
    """points: [(t, bytes)]. Line chart of one figure over time as inline SVG."""
    points = [p for p in points if p[1] is not None]
    if len(points) < 2:
        return '<p class="meta">%s: the history has one report so far; the chart starts with the next one.</p>' % _e(
            label
        )
    left, right, top_m, bottom = 70, 20, 22, 30
    t0, t1 = points[0][0], points[-1][0]
    tspan = (t1 - t0) or 1
    ymax = (max(p[1] for p in points) or 1) * 1.1
    pw, ph = width - left - right, height - top_m - bottom

    def xy(t, v):
        return left + pw * (t - t0) / tspan, top_m + ph - ph * v / ymax

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" role="img">' % (width, height)]
    out.append('<text x="%d" y="14" font-weight="bold">%s</text>' % (left, _e(label)))
    for i in range(5):
        v = ymax * i / 4
        _x, y = xy(t0, v)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>' % (left, y, left + pw, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 6, y + 4, _e(humanize(v))))
    out.append('<text x="%d" y="%d">%s</text>' % (left, height - 8, _e(_date(t0))))
    out.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left + pw, height - 8, _e(_date(t1))))
    pts = " ".join("%.1f,%.1f" % xy(t, v) for t, v in points)
    out.append(
        '<polyline class="series" data-series="%s" data-points="%d" fill="none" stroke="%s" stroke-width="2.5" '
        'points="%s"/>' % (_e(label), len(points), color, pts)
    )
    t, v = points[-1]
    x, y = xy(t, v)
    out.append('<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>' % (x, y, color))
    out.append("</svg>")
    return "".join(out)


def render_html(report, history=(), title="Shared cache report"):
    """The report as one self-contained HTML page: bars per cache, largest units, growth."""
    now = report["generated"]
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        "<title>%s</title><style>%s</style></head><body>" % (_e(title), _CSS),
        "<h1>%s</h1>" % _e(title),
        '<p class="meta">%s &middot; %s UTC &middot; %d caches, %s in %s files &middot; measured in %.1fs</p>'
        % (
            _e(report["host"]),
            _e(_date(now)),
            len(report["caches"]),
            _e(humanize(report["totals"]["bytes"])),
            "{:,}".format(report["totals"]["files"]),
            report["seconds"],
        ),
    ]
    # filesystems
    parts.append("<h2>Filesystem</h2>")
    for fs in report["filesystems"]:
        color = "#c0392b" if fs["critical"] else ("#e67e22" if fs["warning"] else "#4e79a7")
        frac = (fs["used"] / float(fs["used"] + fs["avail"])) if (fs["used"] + fs["avail"]) else 0.0
        parts.append(
            '<svg xmlns="http://www.w3.org/2000/svg" width="760" height="30" role="img" class="fs" data-path="%s">'
            '<rect x="0" y="4" width="600" height="20" fill="#e8e8e8"/>'
            '<rect x="0" y="4" width="%.1f" height="20" fill="%s"/>'
            '<text x="610" y="19">%.1f%% of %s</text></svg>'
            % (_e(fs["path"]), 600 * frac, color, fs["percent"], _e(humanize(fs["size"])))
        )
    parts.append(
        '<table id="filesystems"><tr><th>path</th><th>size</th><th>used</th><th>available</th><th>use</th></tr>'
    )
    for fs in report["filesystems"]:
        cls = "crit" if fs["critical"] else ("warn" if fs["warning"] else "")
        parts.append(
            '<tr data-path="%s" data-size="%d" data-used="%d" data-avail="%d"><td>%s</td><td>%s</td><td>%s</td>'
            '<td>%s</td><td class="%s">%.1f%%%s</td></tr>'
            % (
                _e(fs["path"]),
                fs["size"],
                fs["used"],
                fs["avail"],
                _e(fs["path"]),
                humanize(fs["size"]),
                humanize(fs["used"]),
                humanize(fs["avail"]),
                cls,
                fs["percent"],
                " critical" if fs["critical"] else (" warning" if fs["warning"] else ""),
            )
        )
    parts.append("</table>")
    # caches
    parts.append("<h2>Caches</h2>")
    legend = "".join('<span><i style="background:%s"></i>%s</span>' % (COLORS[k], _e(t)) for k, t in CATEGORY_TITLES)
    parts.append('<div class="legend">%s</div>' % legend)
    ranked = sorted(report["caches"], key=lambda r: (-r["bytes"], r["name"]))
    parts.append(
        '<div id="cache-bars">%s</div>'
        % _hbars(
            [
                (r["name"], r["bytes"], COLORS.get(r["category"], "#999"), {"cache": r["name"], "bytes": r["bytes"]})
                for r in ranked
                if r["exists"]
            ]
        )
    )
    days = [b["days"] for b in report["totals"]["not_accessed"]]
    head = "".join("<th>idle &gt;%dd</th>" % d for d in days)
    parts.append(
        '<table id="caches"><tr><th>cache</th><th class="l">category</th><th>size</th><th>apparent</th>'
        '<th>files</th><th>dirs</th>%s<th>last use</th><th class="l">notes</th></tr>' % head
    )
    for r in ranked:
        last = max([x for x in (r["newest_atime"], r["newest_mtime"]) if x is not None] or [0]) or None
        measured = r["exists"] and not r["error"]
        notes = []
        if r["error"]:
            notes.append(r["error"])
        elif not r["exists"]:
            notes.append("missing")
        if r["unreadable_count"]:
            notes.append(
                "%d unreadable: %s" % (r["unreadable_count"], ", ".join(u["path"] for u in r["unreadable"][:3]))
            )
        if r["other_filesystems"]:
            notes.append("other filesystems not counted: %s" % ", ".join(r["other_filesystems"][:3]))
        if r["foreign"]["count"]:
            notes.append(foreign_note(r["foreign"]))
        idle = "".join("<td>%s</td>" % humanize(b["bytes"]) for b in r["not_accessed"]) or "".join(
            "<td>-</td>" for _d in days
        )
        parts.append(
            '<tr data-cache="%s" data-bytes="%d" data-apparent-bytes="%d" data-files="%d" data-dirs="%d">'
            '<td>%s</td><td class="l">%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>%s<td>%s</td>'
            '<td class="l">%s</td></tr>'
            % (
                _e(r["name"]),
                r["bytes"],
                r["apparent_bytes"],
                r["files"],
                r["dirs"],
                _e(r["name"]),
                _e(r["category"]),
                humanize(r["bytes"]) if measured else "-",
                humanize(r["apparent_bytes"]) if measured else "-",
                "{:,}".format(r["files"]) if measured else "-",
                "{:,}".format(r["dirs"]) if measured else "-",
                idle if measured else "".join("<td>-</td>" for _d in days),
                _e(_age(now, last)),
                _e("; ".join(notes)),
            )
        )
    t = report["totals"]
    parts.append(
        '<tr id="total" data-bytes="%d" data-files="%d"><th>total</th><th></th><th>%s</th><th>%s</th><th>%s</th>'
        "<th>%s</th>%s<th></th><th></th></tr></table>"
        % (
            t["bytes"],
            t["files"],
            humanize(t["bytes"]),
            humanize(t["apparent_bytes"]),
            "{:,}".format(t["files"]),
            "{:,}".format(t["dirs"]),
            "".join("<th>%s</th>" % humanize(b["bytes"]) for b in t["not_accessed"]),
        )
    )
    # largest units
    parts.append("<h2>Largest units</h2>")
    units = report["largest_units"]
    by_name = {r["name"]: r for r in report["caches"]}
    parts.append(
        '<div id="unit-bars">%s</div>'
        % _hbars(
            [
                (
                    _short("%s: %s" % (u["cache"], u["unit"]), 34),
                    u["bytes"],
                    COLORS.get(by_name[u["cache"]]["category"], "#999"),
                    {"cache": u["cache"], "unit": u["unit"], "bytes": u["bytes"]},
                )
                for u in units
            ]
        )
    )
    if units:
        parts.append(
            '<table id="units"><tr><th>unit</th><th class="l">cache</th><th class="l">kind</th><th>size</th>'
            "<th>files</th><th>last use</th></tr>"
        )
        for u in units:
            parts.append(
                '<tr data-cache="%s" data-unit="%s" data-bytes="%d"><td>%s</td><td class="l">%s</td>'
                '<td class="l">%s</td><td>%s</td><td>%s</td><td>%s</td></tr>'
                % (
                    _e(u["cache"]),
                    _e(u["unit"]),
                    u["bytes"],
                    _e(u["unit"]),
                    _e(u["cache"]),
                    _e(u.get("kind", "")),
                    humanize(u["bytes"]),
                    "{:,}".format(u["files"]),
                    _e(_age(now, u.get("last_used"))),
                )
            )
        parts.append("</table>")
    # growth
    parts.append("<h2>Growth</h2>")
    points = [
        (h["t"], h.get("total") or 0, h.get("fs_used"))
        for h in history
        if isinstance(h, dict) and isinstance(h.get("t"), (int, float)) and h["t"] < int(now)
    ]
    entry = history_entry(report)
    points.append((entry["t"], entry["total"], entry["fs_used"]))
    parts.append(
        '<div id="growth" data-points="%d">%s%s</div>'
        % (
            len(points),
            _growth([(p[0], p[1]) for p in points], "bytes in caches", "#4e79a7"),
            _growth([(p[0], p[2]) for p in points], "filesystem used", "#e15759"),
        )
    )
    parts.append("</body></html>\n")
    return "".join(parts)
