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
"""

from __future__ import annotations

import html
import json
import os
import socket
import stat
import time

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import Walker, WalkError, open_dir_nofollow

DAY = 86400
CATEGORY_TITLES = (
    ("ml-models", "ML Models & Datasets"),
    ("packages", "Package Caches"),
    ("languages", "Language-Specific"),
    ("other", "Other Caches"),
)
AGE_BY = ("atime", "mtime", "newest")
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
        "error": None,
        "seconds": 0.0,
    }


def measure_cache(name, path, now=None, age_days=(30, 90), age_by="newest", top=10, classifier=None, max_errors=100):
    """Walk one cache once and return its figures (a dict, see RETURN of the cache_report module).

    ``classifier`` (optional) is an object with ``unit_for_dir(rel)`` and ``unit_for_file(rel_dir,
    name)`` returning a unit name or None; it attributes bytes to the format's units (top-N).
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
    units = {}
    try:
        walker = Walker(root_fd, one_fs=True, max_errors=max_errors)
        rst = walker.root_st
        dev = rst.st_dev
        blocks = rst.st_blocks
        apparent = rst.st_size
        files = dirs = links = other = hard = 0
        amin = mmin = float("inf")
        amax = mmax = float("-inf")
        dir_unit = {}
        for d in walker.walk():
            rel = d.rel
            unit = None
            if classifier is not None:
                # A directory belongs to its parent's unit unless the format names one for it.
                if rel:
                    unit = dir_unit.get(rel.rpartition("/")[0])
                if unit is None:
                    unit = classifier.unit_for_dir(rel)
                if unit is not None:
                    dir_unit[rel] = unit
                    _unit_add(units, unit, d.st.st_blocks, 0)
            for fname, st in d.entries:
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
                    if classifier is not None:
                        u = unit if unit is not None else classifier.unit_for_file(rel, fname)
                        if u is not None:
                            _unit_add(units, u, b, 1)
                elif kind == _S_IFLNK:
                    links += 1
                    if unit is not None:
                        _unit_add(units, unit, b, 0)
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
    finally:
        os.close(root_fd)
    if units:
        ranked = sorted(units.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
        out["units"] = [{"unit": k, "bytes": v[0] * 512, "files": v[1]} for k, v in ranked]
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


def _unit_add(units, unit, blocks, files):
    acc = units.get(unit)
    if acc is None:
        units[unit] = [blocks, files]
    else:
        acc[0] += blocks
        acc[1] += files


def _measure_job(job):
    return measure_cache(**job)


def default_workers(n_caches):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n_caches, cpus))


def build_report(caches, root=None, age_days=(30, 90), age_by="newest", top=10, warn_percent=80.0,
                 critical_percent=90.0, workers=None, classifier_factory=None, now=None):
    """Measure every cache and the filesystems they live on; return the whole report dict.

    ``caches`` is a list of dicts with ``name``, ``path`` (absolute), and optionally ``format``,
    ``category``, ``description``, ``age_by``. ``workers`` > 1 measures caches in parallel
    worker processes (the walk is system-call bound; processes overlap it on several cores).
    """
    t0 = time.monotonic()
    now = time.time() if now is None else now
    jobs = []
    for c in caches:
        classifier = classifier_factory(c) if classifier_factory else None
        jobs.append(
            {
                "name": c["name"],
                "path": c["path"],
                "now": now,
                "age_days": tuple(age_days),
                "age_by": c.get("age_by") or age_by,
                "top": top,
                "classifier": classifier,
            }
        )
    if workers is None:
        workers = default_workers(len(jobs))
    results = None
    if workers > 1 and len(jobs) > 1:
        results = _parallel(jobs, workers)
    if results is None:
        results = [measure_cache(**j) for j in jobs]
    out_caches = []
    for c, r in zip(caches, results):
        r["format"] = c.get("format", "generic")
        r["category"] = c.get("category", "other")
        r["description"] = c.get("description", c["name"])
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
        ({"cache": r["name"], "unit": u["unit"], "bytes": u["bytes"], "files": u["files"]} for r in out_caches for u in r["units"]),
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


def _parallel(jobs, workers):
    """Run measure_cache jobs in forked worker processes; None when processes are unavailable."""
    try:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
    except (ImportError, ValueError):
        return None
    # Largest-first is unknown before walking; hand jobs out one by one (imap) so a big cache
    # does not hold back the others.
    try:
        with ctx.Pool(processes=workers) as pool:
            return pool.map(_measure_job, jobs, chunksize=1)
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Renderings: history entry, table, Prometheus textfile, HTML page
# --------------------------------------------------------------------------------------------


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
    }


def read_history(path, limit=2000):
    """Entries of a JSON-lines history file (last ``limit``); bad lines are skipped, no file = []."""
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
    except FileNotFoundError:
        return []
    return out[-limit:] if limit else out


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
            lines.append(row)
        lines.append("  %-22s %8s %10s" % ("subtotal", humanize(cat["bytes"]), "{:,}".format(cat["files"])))
        lines.append("")
    t = report["totals"]
    lines.append("Total Cache Usage: %s (%s bytes, %s files)" % (humanize(t["bytes"]), t["bytes"], "{:,}".format(t["files"])))
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

    family("size_bytes", "Bytes on disk used by the cache (equal to du -sxB1).", [(lab(r), r["bytes"]) for r in ok])
    family("apparent_bytes", "Apparent size of the cache in bytes (equal to du -sxb).", [(lab(r), r["apparent_bytes"]) for r in ok])
    family("files", "Regular files in the cache.", [(lab(r), r["files"]) for r in ok])
    family("directories", "Directories in the cache, the cache directory included.", [(lab(r), r["dirs"] + 1) for r in ok])
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
    family("oldest_access_timestamp_seconds", "Oldest access time of a file in the cache.", [(lab(r), r["oldest_atime"]) for r in ok])
    family("newest_access_timestamp_seconds", "Newest access time of a file in the cache.", [(lab(r), r["newest_atime"]) for r in ok])
    family("oldest_modification_timestamp_seconds", "Oldest modification time of a file in the cache.", [(lab(r), r["oldest_mtime"]) for r in ok])
    family("newest_modification_timestamp_seconds", "Newest modification time of a file in the cache.", [(lab(r), r["newest_mtime"]) for r in ok])
    family("unreadable_directories", "Subtrees the report could not read (counted, not entered).", [(lab(r), r["unreadable_count"]) for r in ok])
    family("scan_duration_seconds", "Time spent walking the cache.", [(lab(r), r["seconds"]) for r in ok])
    family("present", "1 when the cache directory exists and could be opened safely.", [([("cache", r["name"])], 1 if (r["exists"] and not r["error"]) else 0) for r in report["caches"]])
    fss = report["filesystems"]
    family("filesystem_size_bytes", "Size of the filesystem holding caches.", [([("path", f["path"])], f["size"]) for f in fss])
    family("filesystem_used_bytes", "Used bytes of the filesystem holding caches (as df).", [([("path", f["path"])], f["used"]) for f in fss])
    family("filesystem_avail_bytes", "Bytes available to unprivileged users (as df).", [([("path", f["path"])], f["avail"]) for f in fss])
    family("filesystem_used_ratio", "used / (used + avail), as df's Use% divided by 100.", [([("path", f["path"])], f["percent"] / 100.0) for f in fss])
    family("filesystem_warning", "1 when usage is at or above the warning threshold.", [([("path", f["path"])], f["warning"]) for f in fss])
    family("filesystem_critical", "1 when usage is at or above the critical threshold.", [([("path", f["path"])], f["critical"]) for f in fss])
    family("total_bytes", "Bytes on disk used by every cache together.", [([], report["totals"]["bytes"])])
    family("report_timestamp_seconds", "When the report was made (Unix time).", [([], float(report["generated"]))])
    family("report_duration_seconds", "Time the whole report took.", [([], report["seconds"])])
    return "\n".join(out) + "\n"
