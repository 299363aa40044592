#!/usr/bin/python
# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cache_files
short_description: Install a role's files, directories and removals in one call
version_added: "0.2.0"
author: mlinfra (@mlinfra)
description:
  - Brings a list of root-managed files into line in one module run, in the order given.
    Directories are created with their parents, then given their owner, group and mode; files
    have their content compared, are written atomically only when it differs, and are given
    their owner, group and mode; removals remove.
  - The roles of this collection install their commands, configurations, cron files and
    Dockerfile fragments with it, one call per role instead of a C(file), C(template) or
    C(copy) task per file (each a module run of its own), so that a re-run that changes nothing
    costs one module run per role. The content is rendered on the controller (the
    C(ansible.builtin.template) lookup), as C(ansible.builtin.template) does.
  - Every entry is checked before anything is changed (absolute path, state, mode, known owner
    and group, what is there now); one failure lists every problem and changes nothing.
  - Never follows a symbolic link at a managed path, never writes into a directory that users
    other than its owner can write to, and refuses world-writable modes.
options:
  files:
    description: The entries, applied in the order given.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description:
          - V(file) writes O(files[].content); V(directory) creates the directory; V(absent)
            removes a file, a symbolic link or an empty directory (nothing when it is not there).
        type: str
        choices: [file, directory, absent]
        default: file
      content:
        description: The file's text (required with O(files[].state=file)).
        type: str
      owner:
        description: Owner (name or numeric id).
        type: str
        default: root
      group:
        description: Group (name or numeric id).
        type: str
        default: root
      mode:
        description:
          - Mode as a quoted octal string (V("0644")); required for files and directories.
          - World-writable modes are refused.
        type: raw
      diff:
        description: Show the content in diff mode (V(false) for sources that would only flood the output).
        type: bool
        default: true
  probe:
    description:
      - Paths to look at (never changed, symbolic links not followed) after the entries are
        applied; RV(probed) says what is there. A role that acts on whether a file is there
        (C(creates)) needs no other module run.
    type: list
    elements: path
    default: []
notes:
  - Missing parent directories of an entry are created owned by the user running the module
    with mode C(0755), like C(mkdir -p).
  - An existing directory that is a symbolic link (C(/sbin) on a merged-C(/usr) system) is
    accepted as it is, and its target is left alone.
attributes:
  check_mode:
    description: Says what would change (RV(changes)) and changes nothing.
    support: full
  diff_mode:
    description: Shows each file's content before and after, and each removal.
    support: full
"""

EXAMPLES = r"""
- name: Install the prune command, its configuration and its cron file
  mlinfra.shared_cache.cache_files:
    files:
      - path: /etc/mlinfra
        state: directory
        mode: "0755"
      - path: /etc/mlinfra/prune.json
        content: "{{ config | to_nice_json }}\n"
        mode: "0644"
      - path: /usr/local/sbin/mlinfra-cache-prune
        content: "{{ lookup('ansible.builtin.template', 'mlinfra-cache-prune.j2') }}"
        mode: "0755"
      - path: /etc/systemd/system/mlinfra-cache-prune.timer
        state: absent
"""

RETURN = r"""
changes:
  description: What changed (or would change in check mode), one item per entry that differed.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The entry's path.
      type: str
    what:
      description: V(created), V(content), V(owner), V(group), V(mode) or V(removed) (several for one path).
      type: list
      elements: str
  sample: [{"path": "/etc/mlinfra/prune.json", "what": ["content"]}]
probed:
  description: For each path of O(probe), what is there, V(file), V(directory), V(link), V(other) or V(absent).
  returned: always
  type: dict
  sample: {"/var/lib/mlinfra-shared-cache/report/report.json": "file", "/etc/npmrc": "absent"}
"""

import grp
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_text

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import write_atomic

MAX_COMPARE = 64 << 20  # an existing file larger than this is rewritten without reading it


def _id(name, db, what, where):
    try:
        return int(name) if str(name).isdigit() else (db.getpwnam if what == "user" else db.getgrnam)(name)[2]
    except KeyError:
        raise ValueError("%s: no such %s: %s" % (where, what, name)) from None


def _mode(raw, path):
    text = str(raw) if not isinstance(raw, int) else "%o" % raw
    if not text.isdigit() or not 3 <= len(text) <= 4 or any(c > "7" for c in text):
        raise ValueError("%s: mode %r is not an octal mode such as '0644'" % (path, raw))
    mode = int(text, 8)
    if mode & 0o002:
        raise ValueError("%s: mode %s is world-writable; refused" % (path, text))
    return mode


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _existing_dir(path):
    """The nearest existing ancestor of ``path`` (itself included)."""
    while _lstat(path) is None and path != "/":
        path = os.path.dirname(path)
    return path


def _unsafe_parent(path):
    """Why the directory holding ``path`` may not be written by root, or None."""
    parent = _existing_dir(os.path.dirname(path))
    try:
        st = os.stat(parent)
    except OSError as exc:
        return "%s: %s" % (parent, exc.strerror)
    if not stat.S_ISDIR(st.st_mode):
        return "%s is not a directory" % parent
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        return "%s can be written by users other than root; refusing to manage %s in it" % (parent, path)
    return None


def check(entries):
    """Every entry validated (and resolved) before anything changes; (plans, errors)."""
    plans, errors, seen = [], [], set()
    for i, e in enumerate(entries):
        path, state = e["path"], e["state"]
        where = "files[%d] (%s)" % (i, path)
        try:
            if not os.path.isabs(path) or os.path.normpath(path) != path.rstrip("/") or path == "/":
                raise ValueError("%s: an absolute, normalized path other than / is required" % where)
            if path in seen:
                raise ValueError("%s: listed twice" % where)
            seen.add(path)
            st = _lstat(path)
            plan = {"path": path, "state": state, "diff": e["diff"]}
            if state == "absent":
                if st is not None and stat.S_ISDIR(st.st_mode) and os.listdir(path):
                    raise ValueError("%s: a directory that is not empty; not removed" % where)
            else:
                if e["mode"] is None:
                    raise ValueError("%s: mode is required with state=%s" % (where, state))
                plan["mode"] = _mode(e["mode"], where)
                plan["uid"] = _id(e["owner"], pwd, "user", where)
                plan["gid"] = _id(e["group"], grp, "group", where)
                if state == "file":
                    if e["content"] is None:
                        raise ValueError("%s: content is required with state=file" % where)
                    plan["content"] = to_bytes(e["content"], errors="surrogate_or_strict")
                    if st is not None and not stat.S_ISREG(st.st_mode):
                        raise ValueError("%s: exists and is not a regular file (%s); left alone" % (where, _kind(st)))
                elif st is not None and not stat.S_ISDIR(st.st_mode):
                    if not (stat.S_ISLNK(st.st_mode) and os.path.isdir(path)):
                        raise ValueError("%s: exists and is not a directory (%s); left alone" % (where, _kind(st)))
                    plan["link"] = True
            if state != "directory" or st is None:
                why = _unsafe_parent(path)
                if why:
                    raise ValueError("%s: %s" % (where, why))
            plans.append(plan)
        except ValueError as exc:
            errors.append(str(exc))
    return plans, errors


def _what(path):
    st = _lstat(path)
    if st is None:
        return "absent"
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "link")):
        if test(st.st_mode):
            return name
    return "other"


def _kind(st):
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a file")):
        if test(st.st_mode):
            return name
    return "a special file"


def _makedirs(path, check_mode):
    missing = []
    while _lstat(path) is None:
        missing.append(path)
        path = os.path.dirname(path)
    if not check_mode:
        for d in reversed(missing):
            os.mkdir(d, 0o755)
    return missing


def _attrs(path, st, plan, what, check_mode):
    if st.st_uid != plan["uid"] or st.st_gid != plan["gid"]:
        if st.st_uid != plan["uid"]:
            what.append("owner")
        if st.st_gid != plan["gid"]:
            what.append("group")
        if not check_mode:
            os.chown(path, plan["uid"], plan["gid"], follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != plan["mode"]:
        what.append("mode")
        if not check_mode:
            os.chmod(path, plan["mode"])


def apply(module, plan, diffs):
    path, state, check_mode = plan["path"], plan["state"], module.check_mode
    what = []
    st = _lstat(path)
    if state == "absent":
        if st is not None:
            what.append("removed")
            if module._diff:
                diffs.append(
                    {"before_header": path, "after_header": path, "before": "(present)\n", "after": "(absent)\n"}
                )
            if not check_mode:
                (os.rmdir if stat.S_ISDIR(st.st_mode) else os.unlink)(path)
        return what
    if state == "directory":
        if plan.get("link"):
            return what
        if st is None:
            what.append("created")
            _makedirs(os.path.dirname(path), check_mode)
            if check_mode:
                return what
            os.mkdir(path, plan["mode"])
            st = os.lstat(path)
        _attrs(path, st, plan, what, check_mode)
        return what
    old = None
    if st is not None and st.st_size == len(plan["content"]) and st.st_size <= MAX_COMPARE:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as fh:
            old = fh.read(MAX_COMPARE + 1)
    if st is None or old != plan["content"]:
        what.append("created" if st is None else "content")
        if module._diff:
            before = ""
            if st is not None and plan["diff"] and st.st_size <= MAX_COMPARE:
                with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as fh:
                    before = to_text(fh.read(MAX_COMPARE), errors="surrogate_or_replace")
            after = to_text(plan["content"], errors="surrogate_or_replace") if plan["diff"] else ""
            if not plan["diff"]:
                before, after = ("(%d bytes)\n" % st.st_size if st else ""), "(%d bytes)\n" % len(plan["content"])
            diffs.append({"before_header": path, "after_header": path, "before": before, "after": after})
        if check_mode:
            return what
        _makedirs(os.path.dirname(path), False)
        # the new file has its owner, group and mode before it is seen
        write_atomic(path, plan["content"], mode=plan["mode"], gid=plan["gid"], uid=plan["uid"])
        st = os.lstat(path)
    _attrs(path, st, plan, what, check_mode)
    return what


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    path=dict(type="path", required=True),
                    state=dict(type="str", default="file", choices=["file", "directory", "absent"]),
                    content=dict(type="str"),
                    owner=dict(type="str", default="root"),
                    group=dict(type="str", default="root"),
                    mode=dict(type="raw"),
                    diff=dict(type="bool", default=True),
                ),
            ),
            probe=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    plans, errors = check(module.params["files"])
    if errors:
        module.fail_json(msg="; ".join(errors), errors=errors, changes=[])
    changes, diffs = [], []
    for plan in plans:
        try:
            what = apply(module, plan, diffs)
        except OSError as exc:
            module.fail_json(msg="%s: %s" % (plan["path"], exc.strerror or exc), changes=changes, changed=bool(changes))
        if what:
            changes.append({"path": plan["path"], "what": what})
    probed = {p: _what(p) for p in module.params["probe"]}
    result = dict(changed=bool(changes), changes=changes, probed=probed)
    if diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
