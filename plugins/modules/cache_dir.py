#!/usr/bin/python
# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cache_dir
short_description: Create a shared cache directory tree with group ownership, setgid and a default POSIX ACL
version_added: 0.1.0
author: mlinfra (@mlinfra)
description:
  - Ensures a cache directory (and optional subdirectories) exists with an owner, a group and a
    mode (default C(2775), setgid so that new files inherit the group) and a default POSIX ACL that
    gives the group C(rwX) on everything created inside later. A group member's file written
    with C(umask 077) is therefore still readable and writable by the other members, without
    ever making anything world-writable.
  - With O(recurse=true), existing content is brought into line in one walk, touching only the
    entries that differ, never following a symlink and never leaving the directory's filesystem.
  - Only what the cache owns is touched (its group is the cache group, which the setgid
    directories give to everything created inside); an entry of another group, such as a
    directory a member moved in with another user's private files, is neither regrouped nor
    widened, a directory of another group is not entered, and both are reported in
    RV(foreign). Taking over an old tree of mixed groups is the explicit O(adopt=true), once.
  - Refuses world-writable modes unless O(allow_world_writable=true), relative paths, C(..),
    C(/) and system directories, unknown users and groups, and malformed modes; nothing is
    changed when the input is refused.
  - With O(caches), one call manages a whole catalog (the cache root first, then every cache
    with its own mode, subdirs, private names and recurse); every entry is checked before
    anything is changed. The results are summed over the entries and listed per entry in
    RV(caches).
notes:
  - The default ACL is written directly as the C(system.posix_acl_default) extended attribute,
    whose binary format (version 2 header, then tag/permission/id entries) the module encodes
    itself. This needs no extra Python library (pylibacl) and no C(setfacl) process per
    directory, and it acts on the directory descriptor the safe walker opened with
    C(O_NOFOLLOW), so no path is re-resolved as root. The result is exactly what
    C(setfacl -d -m u::rwx,g::rwx,g:GROUP:rwx,o::r-x) gives (C(getfacl) shows it); other
    named entries already present in a default ACL are kept.
  - No access ACL is set, access stays with the mode bits that C(ls -l) shows. The default
    ACL makes files created later carry C(group:GROUP) with the permissions the creating
    program asked for, whatever its umask. Programs that create files with an explicit
    C(0600) (C(mkstemp)) still produce private files; a periodic O(recurse=true) run fixes them.
  - On a filesystem without POSIX ACL support (C(EOPNOTSUPP)) the module warns and falls back
    to setgid and group mode bits only.
  - Regular files are changed through a descriptor opened with C(O_NOFOLLOW|O_NONBLOCK) whose
    inode must be the one that was examined (a name swapped for a symlink, FIFO or other file
    during the walk is skipped and reported). Symlinks, sockets, FIFOs and devices are never
    changed. When C(fs.protected_hardlinks) is not C(1), files with several hard links are
    skipped, so a planted hard link cannot hand a file outside the cache to the group.
  - Nothing is read from files, so access and modification times, which C(cache_prune) ages
    entries by, are left as they were (only the change time moves).
  - Files whose names match O(private) (credentials a tool keeps in a shared tool home, such as
    cargo's C(credentials.toml)) are never widened, and directories matching it are not entered.
  - An existing O(path) or O(subdirs) directory that is neither root's (or O(owner)'s) nor of the
    cache group is left alone with an error (a member's directory put there is not taken over)
    unless O(adopt=true).
  - The owner of content is never changed by O(recurse); O(owner) applies to O(path) and
    O(subdirs) only. Missing parents of O(path) are created owned by the user running the
    module with mode C(0755), like C(mkdir -p).
options:
  path:
    description:
      - Absolute path of the cache directory. No component may be a symbolic link.
      - C(/), system directories (C(/etc), C(/usr), C(/var), C(/home), ...) and anything inside
        the system trees are refused.
      - Required unless O(caches) is given; with O(caches) it is managed first (the cache root
        and its intermediate directories), with O(mode), O(subdirs), O(private) and O(recurse).
    type: path
  caches:
    description:
      - Several cache directories in one call (a whole catalog), managed in order after O(path).
        O(owner), O(group), O(adopt), O(one_fs), O(acl), O(allow_world_writable) and O(workers)
        apply to every entry.
      - Every entry is validated before anything is changed.
    type: list
    elements: dict
    suboptions:
      path:
        description: Absolute path of the cache directory (as O(path)).
        type: path
        required: true
      mode:
        description: Mode of the directory and its subdirs (as O(mode)).
        type: raw
        default: "2775"
      subdirs:
        description: Subdirectories to create and manage (as O(subdirs)).
        type: list
        elements: str
        default: []
      private:
        description: Extra private name patterns (as O(private)).
        type: list
        elements: str
        default: []
      recurse:
        description: Bring existing content into line (as O(recurse)).
        type: bool
        default: false
      writers:
        description: The writers group of a curated cache (as O(writers)); none for a shared cache.
        type: str
  owner:
    description: User (name or numeric id) owning O(path) and O(subdirs). Unchanged when omitted.
    type: str
  group:
    description:
      - Group (name or numeric id) owning O(path), O(subdirs) and, with O(recurse=true), all
        content. It is also the named group of the default ACL. Unchanged when omitted.
    type: str
  mode:
    description:
      - Mode of O(path) and O(subdirs) as a quoted octal string. Its group bits are what content
        gets with O(recurse=true) (C(g+rw) on files, C(g+x) on files with any execute bit,
        C(g+rwx) and setgid on directories).
      - V(2775) shares with the group and lets others read; V(2770) hides the cache from
        non-members.
    type: raw
    default: "2775"
  subdirs:
    description:
      - Directories relative to O(path) to create and manage with the same owner, group, mode
        and ACL (every component of C(hub/checkpoints) is managed).
      - A subdirectory that exists as something else, a symlink included, makes the module fail
        (the symlink is not followed).
    type: list
    elements: str
    default: []
  recurse:
    description:
      - Also bring existing content into line (group, group permissions, setgid and default ACL
        on directories, no world write, no setuid/setgid on files). Only entries that differ are
        written.
    type: bool
    default: false
  adopt:
    description:
      - Take over an existing tree of mixed groups once (the seed's C(chmod -R 777) tree) - with
        O(recurse=true) content of any group gets the cache group and its permissions, and
        O(path) and O(subdirs) are taken over whoever owns them.
      - Never for a scheduled job; files with several hard links and names matching O(private) are
        still left alone.
    type: bool
    default: false
  private:
    description:
      - Extra file name patterns (globs, no C(/)) that are never widened, added to the built-in list
        (C(credentials), C(credentials.toml), C(.netrc), C(.pypirc), C(.npmrc), C(token),
        C(stored_tokens), C(auth.json), C(*.pem), C(*.key), SSH keys, ...).
    type: list
    elements: str
    default: []
  writers:
    description:
      - A curated cache (catalog C(writers)) - this group (name or numeric id) owns O(path),
        O(subdirs) and content, its mode bits and default ACL entries are the writers', and
        O(group) (the cache group) only reads - a named POSIX ACL entry C(r-x) on directories and
        C(r--) on files (C(r-x) on executables), in the access ACL of every entry (with
        O(recurse)) and in the default ACL of every directory.
      - Content of the writers group is what the cache owns then; an entry of another group (the
        cache group included) is foreign and left alone, unless O(adopt=true).
    type: str
  one_fs:
    description:
      - Do not descend into directories on another filesystem than O(path) (they are listed in
        RV(other_fs)). Setting it to V(false) lets the walk cross mount points.
    type: bool
    default: true
  acl:
    description:
      - Manage the default POSIX ACL of O(path), O(subdirs) and (with O(recurse)) every
        directory. With V(false) ACLs are left as they are.
    type: bool
    default: true
  allow_world_writable:
    description:
      - Accept a world-writable O(mode) (a warning is still given) and leave the world-write bit
        of content alone. Anyone on the host could then replace what every user loads.
    type: bool
    default: false
  workers:
    description:
      - Processes that fix the content with O(recurse). V(0) picks the number of CPUs this
        process may use, at most 4; V(1) keeps the walk in one process.
      - The top levels of the tree are fixed first; then each worker takes whole subdirectories,
        reopened without following symlinks and checked to be the very directories seen. Small
        trees stay in one process. Counts and results do not depend on this option.
    type: int
    default: 0
attributes:
  check_mode:
    support: full
    description: Nothing is written; the counts are those a real run would report.
  diff_mode:
    support: full
    description:
      - Before and after of O(path)'s owner, group, mode and default ACL; with O(caches), of every
        directory that changes, by path.
  platform:
    support: full
    platforms: posix
    description: Linux (POSIX ACLs as extended attributes; other POSIX systems without the ACL part).
seealso:
  - name: ACL(5)
    description: POSIX access control lists on Linux.
    link: https://man7.org/linux/man-pages/man5/acl.5.html
"""

EXAMPLES = r"""
- name: Cache root shared by the group cache
  mlinfra.shared_cache.cache_dir:
    path: /mnt/storage/cache
    owner: root
    group: cache
    mode: "2775"

- name: HuggingFace cache with its subdirectories
  mlinfra.shared_cache.cache_dir:
    path: /mnt/storage/cache/ml-models/huggingface
    owner: root
    group: cache
    subdirs: [hub, xet, assets]

- name: A cache non-members cannot read, existing content fixed up
  mlinfra.shared_cache.cache_dir:
    path: /mnt/storage/cache/jetbrains
    owner: root
    group: cache
    mode: "2770"
    recurse: true

- name: Every catalog entry
  mlinfra.shared_cache.cache_dir:
    path: "{{ item.abs_path }}"
    owner: root
    group: "{{ shared_cache_group }}"
    mode: "{{ item.mode }}"
    subdirs: "{{ item.subdirs }}"
  loop: "{{ shared_cache_catalog }}"
  loop_control:
    label: "{{ item.name }}"

- name: The cache root and the whole catalog in one call
  mlinfra.shared_cache.cache_dir:
    path: /mnt/storage/cache
    owner: root
    group: cache
    subdirs: [ml-models]
    caches:
      - {path: /mnt/storage/cache/pip, subdirs: [http, wheels]}
      - {path: /mnt/storage/cache/ml-models/huggingface, subdirs: [hub, xet]}
      - {path: /mnt/storage/cache/jetbrains, mode: "2770", recurse: true}
"""

RETURN = r"""
path:
  description: The normalized path (V(null) when only O(caches) is given).
  returned: always
  type: str
  sample: /mnt/storage/cache/pip
caches:
  description:
    - With O(caches), one result per managed directory (O(path) first), each with the keys
      below (C(path), C(changed), C(examined), C(changed_entries), C(created), ...); the
      top-level keys are their sums.
  returned: when O(caches) is given
  type: list
  elements: dict
examined:
  description: Entries examined (managed directories, plus every entry of the tree with O(recurse)).
  returned: always
  type: int
  sample: 20301
changed_entries:
  description: Entries that differed and were changed (would be changed in check mode).
  returned: always
  type: int
  sample: 12
created:
  description: Directories created (or that would be created in check mode).
  returned: always
  type: list
  elements: str
  sample: [/mnt/storage/cache/pip]
skipped_entries:
  description:
    - Entries left alone on purpose, by kind (C(symlinks), C(special) files, C(hardlinks), C(private)
      names that would have been widened).
  returned: always
  type: dict
  sample: {symlinks: 3, special: 0, hardlinks: 0, private: 1}
foreign:
  description:
    - Entries that are not the cache's (their group is not the cache group) and were left alone;
      directories among them were not entered. C(bytes) is their own allocated size.
  returned: always
  type: dict
  sample: {count: 2, bytes: 8192, sample: [pip/moved-in, pip/http/x]}
acl_supported:
  description: Whether the filesystem of O(path) took the default ACL (V(null) when O(acl=false)).
  returned: always
  type: bool
other_fs:
  description: Directories on another filesystem that were not entered.
  returned: always
  type: list
  elements: str
errors:
  description: Entries that could not be examined or changed (first 100), with the reason.
  returned: always
  type: list
  elements: dict
  sample: [{path: pip/http/x, error: Permission denied}]
error_count:
  description: Number of such entries.
  returned: always
  type: int
workers:
  description:
    - Processes that walked the content with O(recurse) (V(1) for trees too small to split),
      V(0) without O(recurse).
  returned: always
  type: int
  sample: 2
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import Foreign
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._parallel import usable_cpus
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import (
    PermsError,
    cache_dir_fixer,
    fail_on_managed,
)

ACL_FALLBACK = (
    "the filesystem does not support POSIX ACLs (EOPNOTSUPP); falling back to setgid and "
    "group mode bits: files members create with a restrictive umask (077) stay private until "
    "a recurse run fixes them"
)
SUMMED = ("examined", "changed_entries", "error_count")


def run(params, check_mode=False, warn=None):
    """Do the work of the module; returns the result dict. Raises ParamError/PermsError for bad input."""
    warnings = []
    if warn is None:
        warn = warnings.append
    workers = params.get("workers") or 0
    if workers < 0:
        raise ParamError("workers: %d is negative; give 0 (automatic), 1 (one process) or more" % workers)
    if workers == 0:
        workers = min(usable_cpus(), 4)
    if params.get("caches") is None:
        if not params.get("path"):
            raise ParamError("path: required (or give caches, a list of cache directories)")
        # the same checks and fixer as the nightly mlinfra-cache-prune command (module_utils/_jobs.py)
        path, subdirs, fixer = cache_dir_fixer(params, check_mode=check_mode, warn=warn)
        result = _apply(params, path, subdirs, fixer, workers, warn)
        if fixer.acl_unsupported:
            warn("%s: %s" % (path, ACL_FALLBACK))
        return result
    return _run_batch(params, check_mode, warn, workers)


def _run_batch(params, check_mode, warn, workers):
    """O(path) (when given), then every entry of O(caches): all validated before any change."""
    entries = []
    if params.get("path"):
        entries.append(("path", dict(params)))
    for i, cache in enumerate(params["caches"]):
        if not isinstance(cache, dict) or not cache.get("path"):
            raise ParamError("caches[%d]: each entry is a dict with at least a path" % i)
        entry = dict(params)
        entry.update(
            path=cache["path"],
            mode=cache.get("mode") or "2775",
            subdirs=cache.get("subdirs") or [],
            private=cache.get("private") or [],
            recurse=bool(cache.get("recurse")),
            writers=cache.get("writers") or None,
        )
        entries.append(("caches[%d]" % i, entry))
    prepared = []
    for label, entry in entries:
        try:
            prepared.append((entry,) + cache_dir_fixer(entry, check_mode=check_mode, warn=warn))
        except ParamError as exc:
            raise ParamError("%s (%s): %s" % (label, entry["path"], exc)) from None
    results, before, after, no_acl = [], {}, {}, []
    for entry, path, subdirs, fixer in prepared:
        res = _apply(entry, path, subdirs, fixer, workers, _prefixed(warn, path))
        if fixer.acl_unsupported:
            no_acl.append(path)
        diff = res.pop("diff")
        if diff["before"] != diff["after"]:
            before[path], after[path] = diff["before"], diff["after"]
        results.append(res)
    if no_acl:
        warn("%s: %s" % (", ".join(no_acl), ACL_FALLBACK))
    foreign = Foreign()
    skipped = {}
    for res in results:
        foreign.merge(res["foreign"])
        for kind, count in res["skipped_entries"].items():
            skipped[kind] = skipped.get(kind, 0) + count
    out = {
        "changed": any(r["changed"] for r in results),
        "path": results[0]["path"] if params.get("path") else None,
        "created": list(dict.fromkeys(p for r in results for p in r["created"])),
        "skipped_entries": skipped,
        "foreign": foreign.as_dict(),
        "acl_supported": (not no_acl) if params["acl"] else None,
        "other_fs": [p for r in results for p in r["other_fs"]][:100],
        "errors": [e for r in results for e in r["errors"]][:100],
        "workers": max([r["workers"] for r in results] or [0]),
        "caches": results,
        "diff": {"before": before, "after": after},
    }
    for key in SUMMED:
        out[key] = sum(r[key] for r in results)
    return out


def _prefixed(warn, path):
    return lambda msg: warn(msg if msg.startswith(path) else "%s: %s" % (path, msg))


def _apply(params, path, subdirs, fixer, workers, warn):
    """Bring one directory (and its subdirs, and content with recurse) into line; the result dict."""
    root_fd, managed = fixer.ensure(path, subdirs)
    try:
        fail_on_managed(fixer, path)
        if params["recurse"] and root_fd is not None:
            fixer.walk(root_fd, managed, workers=workers)
        after = fixer.after_attrs(root_fd)
    finally:
        if root_fd is not None:
            os.close(root_fd)

    if fixer.other_fs:
        warn(
            "%d director%s on another filesystem not entered (one_fs): %s"
            % (len(fixer.other_fs), "y" if len(fixer.other_fs) == 1 else "ies", ", ".join(fixer.other_fs[:10]))
        )
    if fixer.skipped["hardlinks"]:
        warn(
            "%d file(s) with several hard links skipped: they could be links to files outside the cache "
            "(changed only when they have the cache group and fs.protected_hardlinks is 1)" % fixer.skipped["hardlinks"]
        )
    if fixer.foreign.count:
        warn(
            "%d entr%s not the cache's (another group) left alone, e.g. %s; a member moved or linked them "
            "in: their owner can chgrp them to the cache group, or an administrator takes the tree over "
            "once with adopt: true"
            % (
                fixer.foreign.count,
                "y" if fixer.foreign.count == 1 else "ies",
                ", ".join(fixer.foreign.sample[:5]),
            )
        )
    if fixer.error_count:
        warn(
            "%d entr%s could not be examined or changed, e.g. %s"
            % (
                fixer.error_count,
                "y" if fixer.error_count == 1 else "ies",
                "; ".join("%s: %s" % (e["path"], e["error"]) for e in fixer.errors[:5]),
            )
        )
    changed = bool(fixer.changed or fixer.created)
    result = {
        "changed": changed,
        "path": path,
        "examined": fixer.examined,
        "changed_entries": fixer.changed,
        "created": fixer.created,
        "skipped_entries": fixer.skipped,
        "foreign": fixer.foreign.as_dict(),
        "acl_supported": (not fixer.acl_unsupported) if params["acl"] else None,
        "other_fs": fixer.other_fs[:100],
        "errors": fixer.errors,
        "error_count": fixer.error_count,
        "workers": fixer.workers_used,
        "diff": {"before": fixer.before, "after": after},
    }
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            caches=dict(
                type="list",
                elements="dict",
                options=dict(
                    path=dict(type="path", required=True),
                    mode=dict(type="raw", default="2775"),
                    subdirs=dict(type="list", elements="str", default=[]),
                    private=dict(type="list", elements="str", default=[]),
                    recurse=dict(type="bool", default=False),
                    writers=dict(type="str"),
                ),
            ),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="raw", default="2775"),
            subdirs=dict(type="list", elements="str", default=[]),
            recurse=dict(type="bool", default=False),
            adopt=dict(type="bool", default=False),
            private=dict(type="list", elements="str", default=[]),
            writers=dict(type="str"),
            one_fs=dict(type="bool", default=True),
            acl=dict(type="bool", default=True),
            allow_world_writable=dict(type="bool", default=False),
            workers=dict(type="int", default=0),
        ),
        required_one_of=[("path", "caches")],
        supports_check_mode=True,
    )
    try:
        result = run(module.params, check_mode=module.check_mode, warn=module.warn)
    except (ParamError, PermsError) as exc:
        module.fail_json(msg=str(exc), path=module.params["path"])
    except OSError as exc:
        module.fail_json(msg="%s: %s" % (module.params["path"] or "caches", exc), path=module.params["path"])
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
