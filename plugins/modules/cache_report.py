#!/usr/bin/python
# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cache_report
short_description: Report the usage of every shared cache in one pass (sizes, ages, largest units, disk)
version_added: 0.1.0
author: mlinfra (@mlinfra)
description:
  - Walks every cache once, never following a symbolic link and never leaving the cache's
    filesystem, and returns per cache the bytes on disk (equal to C(du -sxB1) of the same tree,
    directories included, hard links counted once), the apparent bytes (C(du -sxb)), the numbers
    of files and directories, the oldest and newest access and modification times, the bytes
    not used for N days (what an age policy would free) and the largest units in the format's
    own terms (HuggingFace repo revision, pip wheel or HTTP entry, conda package, npm entry, Go
    module@version, apt .deb, cargo crate), from the same per-format knowledge C(cache_prune)
    uses.
  - Returns the size, use and availability of the filesystems holding the caches, with
    warning and critical flags.
  - Unreadable subtrees are counted and named in the result (and warned about), never fatal. A
    missing cache is reported with C(exists=false). A cache path with a symbolic link in it is
    not walked and is reported with an C(error).
  - Per cache, the bytes each user owns (RV(caches[].owners), counted in the same walk), the last
    run of the nightly prune and what it freed, the last verify's verified, corrupt and
    unverifiable units; the doctor's last result and the members of the cache group (O(group)).
    These come from files root's jobs write; they are read only when root owns them and nobody
    else can change them or the directories above them.
  - Without O(outputs) it only reads, so check mode runs it as usual.
  - Optionally renders the report as the human table of C(show-cache-info), as Prometheus
    node_exporter textfile metrics and as a self-contained HTML page (see O(render)).
  - With O(outputs) it writes the report files with the very code C(show-cache-info --write)
    runs (the C(mlinfra.shared_cache.cache_report) role uses it), each file atomically, the
    history trimmed to O(history_limit) entries.
options:
  caches:
    description:
      - The caches to measure, normally the resolved catalog C(shared_cache_catalog).
      - Each item needs C(name) and C(abs_path) or C(path) (absolute, or relative to O(root)).
        C(format) (default C(generic)) selects the unit of the largest-units list, C(category)
        (C(ml-models), C(packages), C(languages), C(other)) the group of the table,
        C(description) is shown as is, C(retention.age_by) overrides O(age_by) for that
        cache, and C(writers) (a curated cache) is returned as is. Other keys of catalog entries
        are ignored.
    type: list
    elements: dict
    required: true
  root:
    description:
      - The cache root (C(shared_cache_root)). Relative cache paths are resolved against it and its
        filesystem is the one returned as RV(filesystem).
    type: path
  top:
    description: How many of the largest units to return per cache and overall. V(0) skips unit accounting.
    type: int
    default: 10
  max_units:
    description:
      - Unit accounting keeps every unit of a cache in memory (about 1 KB each). Past this many
        units in one cache (a pip HTTP cache of millions of entries) the largest units of that
        cache are not computed and RV(caches[].units_error) says so; sizes stay whole. V(0)
        means no limit.
    type: int
    default: 50000
  age_days:
    description: Ages in days for which the bytes and files not used since are returned.
    type: list
    elements: int
    default: [30, 90]
  age_by:
    description:
      - Which time tells a file was last used. V(newest) takes the later of access and
        modification time (access times are only as good as the mount's C(relatime)/C(noatime)).
    type: str
    choices: [atime, mtime, newest]
    default: newest
  warn_percent:
    description: Filesystem use (percent, as C(df)) at or above which RV(filesystem.warning) is true.
    type: float
    default: 80
  critical_percent:
    description: Filesystem use (percent) at or above which RV(filesystem.critical) is true.
    type: float
    default: 90
  workers:
    description:
      - Worker processes measuring caches in parallel. V(0) uses one per available CPU (at most
        one per cache), unless the last report in O(history_file) took under a second (workers
        then cost more than they save); V(1) measures one cache after the other in the module's
        own process. A cache whose walk took half a second or more in the last report is walked
        by all the workers together (each takes whole repos or subdirectories of it), so one big
        model cache does not keep one core busy while the others wait.
    type: int
    default: 0
  render:
    description:
      - Renderings to return besides the data. V(table) returns RV(table), V(prometheus)
        returns RV(prometheus), V(html) returns RV(html).
    type: list
    elements: str
    choices: [table, prometheus, html]
    default: [table]
  history_file:
    description:
      - JSON-lines history of earlier reports (one RV(history_entry) per line), read to draw the
        growth chart of the HTML page and to start the largest caches first. Read only; a
        missing file means no history.
    type: path
  history_limit:
    description: At most this many history entries are read.
    type: int
    default: 2000
  title:
    description: Title of the HTML page.
    type: str
    default: Shared cache report
  owners_top:
    description:
      - Owners listed per cache in RV(caches[].owners) (and the C(shared_cache_owner_bytes) metric),
        largest first; the rest are summed as owner C(other).
    type: int
    default: 10
  group:
    description:
      - The cache group; its members (member list and users whose primary group it is) are
        returned in RV(group), and report files are made readable by it alone when a cache's
        mode denies world-read.
    type: str
  prune_state:
    description: The state file of the nightly prune (C(mlinfra-cache-prune)); empty to skip.
    type: path
    default: /var/lib/mlinfra-shared-cache/prune/state.json
  doctor_status:
    description:
      - The last result the doctor recorded (O(mlinfra.shared_cache.cache_doctor#module:status_file)); empty to skip.
    type: path
    default: /var/lib/mlinfra-shared-cache/doctor/status.json
  verify_summary:
    description: The summary the last verify wrote (C(cache_verify)); empty to skip.
    type: path
    default: /var/lib/mlinfra-shared-cache/verify/summary.json
  outputs:
    description:
      - Report files to write; each key is optional but C(json). C(json) is the report,
        C(history) the JSON-lines history (this report appended, trimmed to O(history_limit)
        entries), C(prometheus) the node_exporter textfile, C(html) the page.
      - The files are C(0640 root:)O(group) when a cache of O(caches) has a mode without
        world-read, else C(0644); each is written atomically in a directory that must be root's
        own. They change on every run (new figures), so the task reports changed.
    type: dict
    suboptions:
      json:
        description: Path of the report as JSON.
        type: path
        required: true
      history:
        description: Path of the JSON-lines history.
        type: path
      prometheus:
        description: Path of the textfile metrics.
        type: path
      html:
        description: Path of the HTML page.
        type: path
attributes:
  check_mode:
    support: full
    description: It measures as usual; with O(outputs) it reports what it would write and writes nothing.
  diff_mode:
    support: none
    description: The written files hold new figures each time; there is no useful diff.
  platform:
    support: full
    platforms: posix
    description: Linux (descriptor-relative walk, statvfs).
notes:
  - Sizes count what the user running the module can see. Run it as root for whole figures;
    it is safe to (descriptor-relative walk, no symbolic link followed).
  - Directories on another filesystem below a cache (mount points) are named in
    RV(caches[].other_filesystems) and not counted, like C(du -x).
seealso:
  - module: mlinfra.shared_cache.cache_prune
"""

EXAMPLES = r"""
- name: Measure every cache of the catalog
  mlinfra.shared_cache.cache_report:
    caches: "{{ shared_cache_catalog }}"
    root: "{{ shared_cache_root }}"
  register: cache_usage

- name: Show the table
  ansible.builtin.debug:
    msg: "{{ cache_usage.table.splitlines() }}"

- name: Fail when the cache filesystem is nearly full
  ansible.builtin.assert:
    that: not cache_usage.filesystem.critical
    fail_msg: "{{ cache_usage.filesystem.path }} is {{ cache_usage.filesystem.percent }}% full"

- name: Measure and write the report files, as show-cache-info --write does
  mlinfra.shared_cache.cache_report:
    caches: "{{ shared_cache_catalog }}"
    root: "{{ shared_cache_root }}"
    group: "{{ shared_cache_group }}"
    outputs:
      json: /var/lib/mlinfra-shared-cache/report/report.json
      history: /var/lib/mlinfra-shared-cache/report/history.jsonl
      html: /var/lib/mlinfra-shared-cache/report/index.html

- name: One directory, Prometheus metrics only
  mlinfra.shared_cache.cache_report:
    caches:
      - {name: pip, path: /mnt/storage/cache/pip, format: pip, category: packages}
    render: [prometheus]
  register: pip_usage
"""

RETURN = r"""
caches:
  description: One item per cache, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Cache name.
      type: str
    path:
      description: Absolute path measured.
      type: str
    writers:
      description: The group that alone writes a curated cache (catalog C(writers)), else null.
      type: str
    exists:
      description: Whether the directory exists.
      type: bool
    error:
      description: Why the cache could not be walked (symbolic link in its path, ...) or null.
      type: str
    bytes:
      description: Bytes on disk, equal to C(du -sxB1 path).
      type: int
    apparent_bytes:
      description: Apparent bytes, equal to C(du -sxb path).
      type: int
    files:
      description: Regular files (every hard link counted, like C(find -type f)).
      type: int
    dirs:
      description: Directories below the cache directory.
      type: int
    symlinks:
      description: Symbolic links (never followed).
      type: int
    hardlinks:
      description: Extra names of files already counted (their bytes are counted once).
      type: int
    oldest_atime:
      description: Oldest access time of a file (epoch seconds) or null.
      type: float
    newest_atime:
      description: Newest access time of a file.
      type: float
    oldest_mtime:
      description: Oldest modification time of a file.
      type: float
    newest_mtime:
      description: Newest modification time of a file.
      type: float
    not_accessed:
      description: Per O(age_days), bytes on disk and files not used (per O(age_by)) for that many days.
      type: list
      sample: [{days: 30, bytes: 1048576, files: 3}, {days: 90, bytes: 0, files: 0}]
    unreadable:
      description: Subtrees that could not be read (first 100), with the error.
      type: list
      sample: [{path: private/dir, error: Permission denied}]
    unreadable_count:
      description: Number of unreadable subtrees.
      type: int
    other_filesystems:
      description: Mount points below the cache, not counted.
      type: list
    foreign:
      description:
        - Entries whose group is not the cache group (the group of the cache directory), such as a
          directory a member moved in - left out of the figures and never entered - C(count), their
          own allocated C(bytes) and a C(sample) of paths.
      type: dict
      sample: {count: 1, bytes: 4096, sample: [moved-in]}
    units:
      description: The O(top) largest units of the cache's format, largest first.
      type: list
      sample:
        - unit: bert-base-uncased 86b5e0934494 (main)
          key: models--bert-base-uncased@86b5e0934494bd15c9632b12f734a8a67f723594
          kind: revision
          bytes: 440475648
          apparent_bytes: 440473133
          files: 6
          last_used: 1764200000.0
    units_count:
      description: How many units the cache holds.
      type: int
    units_error:
      description: Why unit accounting stopped (sizes are still whole), or null.
      type: str
    units_notes:
      description:
        - What unit accounting could not use, by the format's own records (a tool's metadata file
          that is not a regular file, too big, malformed or too slow to query), and what it did
          instead (e.g. cargo crates aged by file times, an npm index bucket kept unread).
      type: list
      elements: str
    owners:
      description:
        - Bytes on disk per owner (uid), the O(owners_top) largest first by user name (the uid as
          text when it has none), then C(other) (uid null) for the rest; they add up to C(bytes).
      type: list
      sample: [{owner: alice, uid: 1001, bytes: 440475648}, {owner: other, uid: null, bytes: 4096}]
    last_prune:
      description: The last nightly prune of the cache (C(time), C(freed_bytes), C(units), C(files), C(errors)) or null.
      type: dict
    verify:
      description:
        - The last verify of the cache (C(verified), C(corrupt), C(unverifiable) units and their
          C(_bytes), C(skipped_busy), C(corrupt_sample)) or null when none was recorded.
      type: dict
    seconds:
      description: Time spent walking this cache.
      type: float
group:
  description: The cache group (C(name), C(gid), C(members)), or null without O(group) or when it does not exist.
  returned: always
  type: dict
doctor:
  description: The doctor's last result (C(time), C(problems), C(checks), C(lines)), or null when none was recorded.
  returned: always
  type: dict
verify:
  description: When the last verify ran (C(time), C(path)), or null.
  returned: always
  type: dict
status_errors:
  description: State files (prune, doctor, verify) that exist but were refused or unreadable, with why.
  returned: always
  type: list
  elements: str
written:
  description: The files written (O(outputs)); empty in check mode.
  returned: always
  type: list
  elements: str
categories:
  description: Per category (C(ml-models), C(packages), C(languages), C(other)) bytes, files and cache names.
  returned: always
  type: list
totals:
  description: Bytes, apparent bytes, files, directories and not-used bytes over every cache.
  returned: always
  type: dict
largest_units:
  description: The O(top) largest units over every cache, each with its C(cache).
  returned: always
  type: list
filesystem:
  description: The filesystem of O(root) (or of the first cache).
  returned: when a filesystem could be examined
  type: dict
  contains:
    path:
      description: Path examined.
      type: str
    size:
      description: Size in bytes.
      type: int
    used:
      description: Used bytes (as C(df)).
      type: int
    avail:
      description: Bytes available to unprivileged users (as C(df)).
      type: int
    percent:
      description: "used / (used + avail) * 100, like C(df)'s Use%."
      type: float
    warning:
      description: percent >= O(warn_percent).
      type: bool
    critical:
      description: percent >= O(critical_percent).
      type: bool
filesystems:
  description: Every distinct filesystem holding a cache (same fields as RV(filesystem) plus C(caches)).
  returned: always
  type: list
history_entry:
  description: The compact record of this report that the role appends to its history file.
  returned: always
  type: dict
  sample: {t: 1764200000, total: 123456789, files: 1000, fs_used: 987654321, fs_size: 2000000000, caches: {pip: 1234}}
table:
  description: The human table (like C(show-cache-info)).
  returned: when O(render) contains V(table)
  type: str
prometheus:
  description: node_exporter textfile collector metrics, valid under C(promtool check metrics).
  returned: when O(render) contains V(prometheus)
  type: str
html:
  description: A self-contained HTML page (inline CSS and SVG, no script, nothing fetched).
  returned: when O(render) contains V(html)
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import AGE_BY, FORMATS
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError, normalize_abs_path
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._render import (
    foreign_note,
    history_entry,
    read_history,
    render_html,
    render_prometheus,
    render_table,
    report_file_access,
    write_outputs,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._usage import (
    CATEGORY_TITLES,
    add_status,
    build_report,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._usage import (
    hints as usage_hints,
)

CATEGORIES = tuple(k for k, _t in CATEGORY_TITLES)


def _caches(raw, root):
    out = []
    names = set()
    for i, item in enumerate(raw):
        where = "caches[%d]" % i
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ParamError("%s: needs a non-empty 'name'" % where)
        where = "caches[%s]" % name
        if name in names:
            raise ParamError("%s: the name appears twice" % where)
        names.add(name)
        path = item.get("abs_path") or item.get("path")
        if not isinstance(path, str) or not path:
            raise ParamError("%s: needs 'abs_path' or 'path'" % where)
        if not path.startswith("/"):
            if not root:
                raise ParamError("%s: path %r is relative and no 'root' was given" % (where, path))
            path = root.rstrip("/") + "/" + path
        path = normalize_abs_path(path, where + ".path")
        if path == "/":
            raise ParamError("%s: refusing to report on /" % where)
        fmt = item.get("format") or "generic"
        if fmt not in FORMATS:
            raise ParamError("%s.format: unknown format %r; one of %s" % (where, fmt, ", ".join(FORMATS)))
        category = item.get("category") or "other"
        if category not in CATEGORIES:
            raise ParamError("%s.category: unknown category %r; one of %s" % (where, category, ", ".join(CATEGORIES)))
        retention = item.get("retention") or {}
        age_by = retention.get("age_by") if isinstance(retention, dict) else None
        if age_by is not None and age_by not in AGE_BY:
            raise ParamError("%s.retention.age_by: %r is not one of %s" % (where, age_by, ", ".join(AGE_BY)))
        out.append(
            {
                "name": name,
                "path": path,
                "format": fmt,
                "category": category,
                "description": str(item.get("description") or name),
                "writers": item.get("writers") or None,  # a curated cache: the group that alone writes it
                "age_by": age_by,
                "mode": item.get("mode"),
            }
        )
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            caches=dict(type="list", elements="dict", required=True),
            root=dict(type="path"),
            top=dict(type="int", default=10),
            max_units=dict(type="int", default=50000),
            age_days=dict(type="list", elements="int", default=[30, 90]),
            age_by=dict(type="str", choices=list(AGE_BY), default="newest"),
            warn_percent=dict(type="float", default=80.0),
            critical_percent=dict(type="float", default=90.0),
            workers=dict(type="int", default=0),
            render=dict(type="list", elements="str", choices=["table", "prometheus", "html"], default=["table"]),
            history_file=dict(type="path"),
            history_limit=dict(type="int", default=2000),
            title=dict(type="str", default="Shared cache report"),
            owners_top=dict(type="int", default=10),
            group=dict(type="str"),
            prune_state=dict(type="path", default="/var/lib/mlinfra-shared-cache/prune/state.json"),
            doctor_status=dict(type="path", default="/var/lib/mlinfra-shared-cache/doctor/status.json"),
            verify_summary=dict(type="path", default="/var/lib/mlinfra-shared-cache/verify/summary.json"),
            outputs=dict(
                type="dict",
                options=dict(
                    json=dict(type="path", required=True),
                    history=dict(type="path"),
                    prometheus=dict(type="path"),
                    html=dict(type="path"),
                ),
            ),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        root = normalize_abs_path(p["root"], "root") if p["root"] else None
        caches = _caches(p["caches"], root)
        if p["top"] < 0:
            raise ParamError("top: must be 0 or more, got %d" % p["top"])
        if p["workers"] < 0:
            raise ParamError("workers: must be 0 (automatic) or more, got %d" % p["workers"])
        if not p["age_days"] or any(d <= 0 for d in p["age_days"]):
            raise ParamError("age_days: give one or more positive numbers of days, got %r" % (p["age_days"],))
        if not 0 <= p["warn_percent"] <= p["critical_percent"] <= 100:
            raise ParamError(
                "warn_percent and critical_percent: need 0 <= warn (%s) <= critical (%s) <= 100"
                % (p["warn_percent"], p["critical_percent"])
            )
        if p["max_units"] < 0:
            raise ParamError("max_units: must be 0 (no limit) or more, got %d" % p["max_units"])
        if p["history_limit"] < 0:
            raise ParamError("history_limit: must be 0 or more")
        if p["owners_top"] < 0:
            raise ParamError("owners_top: must be 0 or more, got %d" % p["owners_top"])
    except ParamError as exc:
        module.fail_json(msg=str(exc))

    history = []
    if p["history_file"]:
        try:
            history = read_history(p["history_file"], p["history_limit"])
        except (OSError, UnicodeDecodeError) as exc:
            module.warn("history %s not read: %s" % (p["history_file"], exc))
    report = build_report(
        caches,
        root=root,
        age_days=sorted(set(p["age_days"])),
        age_by=p["age_by"],
        top=p["top"],
        warn_percent=p["warn_percent"],
        critical_percent=p["critical_percent"],
        workers=p["workers"] or None,
        **usage_hints(history),
        max_units=p["max_units"],
        owners_top=p["owners_top"],
    )
    add_status(
        report,
        group=p["group"],
        prune_state=p["prune_state"],
        doctor_status=p["doctor_status"],
        verify_summary=p["verify_summary"],
    )
    for err in report["status_errors"]:
        module.warn("not read: %s" % err)
    if report["group"] is None and p["group"]:
        module.warn("group %s does not exist here: no members to show" % p["group"])
    for r in report["caches"]:
        if r["error"]:
            module.warn("cache %s not measured: %s" % (r["name"], r["error"]))
        if r["unreadable_count"]:
            module.warn(
                "cache %s: %d unreadable subtree(s) counted by their own size only, e.g. %s (%s)"
                % (r["name"], r["unreadable_count"], r["unreadable"][0]["path"], r["unreadable"][0]["error"])
            )
        if r["units_error"]:
            module.warn("cache %s: largest units not available: %s" % (r["name"], r["units_error"]))
        if r["foreign"]["count"]:
            module.warn("cache %s: %s" % (r["name"], foreign_note(r["foreign"])))
    for fs in report["filesystems"]:
        if fs["warning"]:
            module.warn(
                "filesystem %s is %.1f%% full (%s: %s%%)"
                % (
                    fs["path"],
                    fs["percent"],
                    "critical" if fs["critical"] else "warning",
                    fs["critical_percent"] if fs["critical"] else fs["warn_percent"],
                )
            )
    report["history_entry"] = history_entry(report)
    if "table" in p["render"]:
        report["table"] = render_table(report)
    if "prometheus" in p["render"]:
        report["prometheus"] = render_prometheus(report)
    if "html" in p["render"]:
        report["html"] = render_html(report, history, title=p["title"])
    missing = [r["name"] for r in report["caches"] if not r["exists"]]
    if missing and len(missing) == len(report["caches"]):
        module.warn("none of the caches exists yet: %s" % ", ".join(missing))
    written = []
    if p["outputs"]:
        outputs = dict(p["outputs"], history_keep=p["history_limit"], title=p["title"])
        if not module.check_mode:
            try:
                written = write_outputs(report, outputs, history, report_file_access(caches, p["group"]))
            except OSError as exc:
                module.fail_json(msg="report files not written: %s" % exc, **report)
    module.exit_json(changed=bool(p["outputs"]), written=written, **report)


if __name__ == "__main__":
    main()
