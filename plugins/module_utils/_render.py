# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rendering and writing the cache report: the human table, Prometheus textfile metrics, the
self-contained HTML page, the JSON-lines history, and the one writer of them all.

``_usage`` measures (one walk per cache) and returns the report dict; this module turns that
dict into text and writes it. ``write_outputs`` is the only code that writes the report files:
the ``cache_report`` module (the role) and ``show-cache-info --write`` (the schedule) both call
it, so the JSON, the page, the metrics and the history (trimmed to its promised length) come out
the same whoever writes them. Pure Python, no Ansible imports (the host command imports it).
"""

from __future__ import annotations

import grp
import html
import json
import time

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import humanize, write_atomic
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import parse_mode
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._usage import CATEGORY_TITLES, DAY

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
        "cache_seconds": {r["name"]: r["seconds"] for r in report["caches"]},
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
            if r.get("writers"):
                row += "  (curated: written by %s only)" % r["writers"]
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
    lines.extend(_status_lines(report))
    return "\n".join(lines) + "\n"


def owners_text(owners):
    """'alice 1.2G, bob 300M, other 4.0K' for the table and the page."""
    return ", ".join("%s %s" % (o["owner"], humanize(o["bytes"])) for o in owners)


def prune_text(last, now):
    if not last:
        return "never (no record of the nightly prune)"
    return "%s UTC (%s ago), freed %s in %d unit(s)%s" % (
        _date(last["time"]),
        _age(now, last["time"]),
        humanize(last["freed_bytes"]),
        last["units"],
        ", %d error(s)" % last["errors"] if last["errors"] else "",
    )


def verify_text(v):
    text = "verified %d (%s), corrupt %d (%s), unverifiable %d (%s)" % (
        v["verified"],
        humanize(v["verified_bytes"]),
        v["corrupt"],
        humanize(v["corrupt_bytes"]),
        v["unverifiable"],
        humanize(v["unverifiable_bytes"]),
    )
    if v["skipped_busy"]:
        text += ", %d busy (skipped)" % v["skipped_busy"]
    if v["corrupt_sample"]:
        text += "; e.g. %s" % v["corrupt_sample"][0]["path"]
    return text


def doctor_text(doctor, now):
    if not doctor:
        return "no result recorded yet: run ansible-playbook playbooks/doctor.yml"
    when = "%s UTC (%s ago)" % (_date(doctor["time"]), _age(now, doctor["time"])) if doctor["time"] else "unknown time"
    if not doctor["problems"]:
        return "no problem found, %s" % when
    return "%d problem(s), %s" % (doctor["problems"], when)


def group_text(group):
    if not group:
        return None
    return "%s (gid %d): %d member(s)%s" % (
        group["name"],
        group["gid"],
        len(group["members"]),
        ": " + ", ".join(group["members"]) if group["members"] else "",
    )


def _status_lines(report):
    """The table's answers to the admin's next questions (absent keys: an older report)."""
    now = report["generated"]
    caches = [r for r in report["caches"] if r["exists"] and not r["error"]]
    lines = []
    if any(r.get("owners") for r in caches):
        lines += ["", "Bytes per owner:"]
        lines += ["  %-22s %s" % (r["name"], owners_text(r["owners"])) for r in caches if r.get("owners")]
    if "last_prune" in (report["caches"] or [{}])[0]:
        lines += ["", "Last prune:"]
        lines += ["  %-22s %s" % (r["name"], prune_text(r["last_prune"], now)) for r in report["caches"]]
    if report.get("verify"):
        t = report["verify"]["time"]
        lines += ["", "Verify (%s):" % ("%s UTC" % _date(t) if t else "time unknown")]
        lines += ["  %-22s %s" % (r["name"], verify_text(r["verify"])) for r in report["caches"] if r.get("verify")]
    if "doctor" in report:
        lines += ["", "Doctor: %s" % doctor_text(report["doctor"], now)]
        lines += ["  %s" % line for line in (report["doctor"] or {}).get("lines", [])]
    if report.get("group"):
        lines += ["Group %s" % group_text(report["group"])]
    for err in report.get("status_errors") or []:
        lines.append("Not read: %s" % err)
    return lines


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
    family(
        "owner_bytes",
        "Bytes on disk of the cache owned by a user (the largest owners, the rest as owner other).",
        [([("cache", r["name"]), ("owner", o["owner"])], o["bytes"]) for r in ok for o in r.get("owners") or []],
    )
    pruned = [r for r in report["caches"] if r.get("last_prune")]
    family(
        "last_prune_timestamp_seconds",
        "When the nightly prune last ran on the cache (Unix time).",
        [([("cache", r["name"])], float(r["last_prune"]["time"])) for r in pruned],
    )
    family(
        "last_prune_freed_bytes",
        "Bytes the last nightly prune freed in the cache.",
        [([("cache", r["name"])], r["last_prune"]["freed_bytes"]) for r in pruned],
    )
    verified = [r for r in report["caches"] if r.get("verify")]
    for metric, key, help_text in (
        ("verified_units", "verified", "Units whose content matched its recorded checksum at the last verify."),
        ("corrupt_units", "corrupt", "Units whose content did not match its recorded checksum at the last verify."),
        ("unverifiable_units", "unverifiable", "Units the last verify had no checksum to compare with."),
    ):
        family(metric, help_text, [([("cache", r["name"])], r["verify"][key]) for r in verified])
    if (report.get("verify") or {}).get("time"):
        family(
            "verify_timestamp_seconds", "When the last verify ran (Unix time).", [([], float(report["verify"]["time"]))]
        )
    doctor = report.get("doctor")
    if doctor:
        family("doctor_problems", "Failed checks of the doctor's last run.", [([], doctor["problems"])])
        if doctor["time"]:
            family("doctor_timestamp_seconds", "When the doctor last ran (Unix time).", [([], float(doctor["time"]))])
    if report.get("group"):
        family(
            "group_members",
            "Users in the cache group (its member list and users whose primary group it is).",
            [([("group", report["group"]["name"])], len(report["group"]["members"]))],
        )
    family("total_bytes", "Bytes on disk used by every cache together.", [([], report["totals"]["bytes"])])
    family("report_timestamp_seconds", "When the report was made (Unix time).", [([], float(report["generated"]))])
    family("report_duration_seconds", "Time the whole report took.", [([], report["seconds"])])
    return "\n".join(out) + "\n"


def append_history(path, entry, keep=2000, mode=0o644, gid=None):
    """Append ``entry`` to the JSON-lines history, keeping the last ``keep`` entries.

    The file is rewritten atomically (temporary file in the same directory, then rename), so a
    reader never sees half a line. ``write_outputs`` calls it, for the role and show-cache-info alike.
    """
    # keep 0: no limit; keep 1: this entry alone (read_history's limit 0 means all)
    entries = [] if keep == 1 else read_history(path, limit=max(0, keep - 1))
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


def _html_status(report):
    """Owners per cache, last prune, verify, the doctor and the group (absent keys: an older report)."""
    now = report["generated"]
    caches = [r for r in report["caches"] if r["exists"] and not r["error"]]
    parts = ["<h2>Owners</h2>"]
    rows = [(r, o) for r in caches for o in r.get("owners") or []]
    if rows:
        parts.append('<table id="owners"><tr><th>cache</th><th class="l">owner</th><th>size</th><th>share</th></tr>')
        for r, o in rows:
            parts.append(
                '<tr data-cache="%s" data-owner="%s" data-bytes="%d"><td>%s</td><td class="l">%s</td><td>%s</td>'
                "<td>%.0f%%</td></tr>"
                % (
                    _e(r["name"]),
                    _e(o["owner"]),
                    o["bytes"],
                    _e(r["name"]),
                    _e(o["owner"]),
                    humanize(o["bytes"]),
                    100.0 * o["bytes"] / r["bytes"] if r["bytes"] else 0.0,
                )
            )
        parts.append("</table>")
    else:
        parts.append('<p class="meta">no owner figures in this report</p>')
    if "last_prune" in (report["caches"] or [{}])[0] or report.get("verify"):
        parts.append("<h2>Prune and verify</h2>")
        parts.append(
            '<table id="maintenance"><tr><th>cache</th><th class="l">last prune</th><th class="l">verify</th></tr>'
        )
        for r in report["caches"]:
            last = r.get("last_prune")
            v = r.get("verify")
            parts.append(
                '<tr data-cache="%s" data-pruned="%s" data-freed-bytes="%s" data-corrupt="%s" data-unverifiable="%s">'
                '<td>%s</td><td class="l">%s</td><td class="l%s">%s</td></tr>'
                % (
                    _e(r["name"]),
                    _e(last["time"] if last else ""),
                    _e(last["freed_bytes"] if last else ""),
                    _e(v["corrupt"] if v else ""),
                    _e(v["unverifiable"] if v else ""),
                    _e(r["name"]),
                    _e(prune_text(last, now)),
                    " crit" if v and v["corrupt"] else "",
                    _e(verify_text(v) if v else "-"),
                )
            )
        parts.append("</table>")
    if "doctor" in report or report.get("group"):
        parts.append("<h2>Doctor and group</h2>")
        doctor = report.get("doctor")
        if "doctor" in report:
            parts.append(
                '<p id="doctor" data-problems="%s" class="%s">Doctor: %s</p>'
                % (
                    _e(doctor["problems"] if doctor else ""),
                    "crit" if doctor and doctor["problems"] else "",
                    _e(doctor_text(doctor, now)),
                )
            )
            if doctor and doctor["lines"]:
                parts.append("<ul>%s</ul>" % "".join("<li>%s</li>" % _e(line) for line in doctor["lines"]))
        group = report.get("group")
        if group:
            parts.append(
                '<p id="group" data-group="%s" data-members="%s">Group %s</p>'
                % (_e(group["name"]), _e(" ".join(group["members"])), _e(group_text(group)))
            )
    for err in report.get("status_errors") or []:
        parts.append('<p class="meta warn">Not read: %s</p>' % _e(err))
    return "".join(parts)


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
        if r.get("writers"):
            notes.append("curated: written by %s only" % r["writers"])
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
    parts.append(_html_status(report))
    parts.append("</body></html>\n")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# The one writer of the report files
# --------------------------------------------------------------------------------------------
# Keys of the module's result that are not part of the kept report.
NOT_KEPT = ("table", "prometheus", "html", "invocation", "changed", "failed", "warnings", "deprecations")


def report_file_access(caches, group):
    """(mode, gid) of the report files: 0640 root:<cache group> when a cache's mode denies
    world-read (its units' names are its group's business), 0600 if that group is unknown,
    else 0644 (gid None: root's)."""
    private = False
    for cache in caches or []:
        mode = cache.get("mode")
        if mode is not None and not parse_mode(str(mode), "mode") & 0o004:
            private = True
    if not private:
        return 0o644, None
    try:
        return 0o640, grp.getgrnam(group).gr_gid
    except (KeyError, TypeError):
        return 0o600, None


def write_outputs(report, outputs, history=(), access=(0o644, None)):
    """Write the report files named in ``outputs``, each atomically, with ``access`` (mode, gid):
    ``json`` (the report), ``history`` (the report's ``history_entry`` appended, the file trimmed to
    ``history_keep`` entries), ``prometheus`` and ``html`` (when set; the page's growth chart from
    ``history``, the entries read before this one). Returns the paths written, in that order."""
    mode, gid = access
    kept = {k: v for k, v in report.items() if k not in NOT_KEPT}
    entry = report.get("history_entry") or history_entry(report)
    written = []
    write_atomic(outputs["json"], json.dumps(kept, indent=2, sort_keys=True) + "\n", mode=mode, gid=gid)
    written.append(outputs["json"])
    if outputs.get("history"):
        append_history(outputs["history"], entry, outputs.get("history_keep", 2000), mode=mode, gid=gid)
        written.append(outputs["history"])
    if outputs.get("prometheus"):
        write_atomic(outputs["prometheus"], render_prometheus(report), mode=mode, gid=gid)
        written.append(outputs["prometheus"])
    if outputs.get("html"):
        page = render_html(report, history, title=outputs.get("title") or "Shared cache report")
        write_atomic(outputs["html"], page, mode=mode, gid=gid)
        written.append(outputs["html"])
    return written
