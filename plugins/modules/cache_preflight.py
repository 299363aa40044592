#!/usr/bin/python
# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cache_preflight
short_description: Check a host before the shared cache is provisioned on it
version_added: 0.1.0
description:
  - Looks at the host without changing it - whether the play runs as root, the cache root's
    validity, the init system and whether a scheduler actually runs (systemd as PID 1, or a cron
    daemon process), POSIX ACL support and free space on the filesystem the cache root will live
    on (its nearest existing parent), and the commands the roles need.
  - Fails once, listing every problem with the command that fixes it. Missing commands are
    problems only when O(install_packages=false); otherwise they are returned in RV(packages)
    for the role to install.
  - Warns when jobs are to be scheduled but no scheduler runs (the prune and report jobs would
    never run), with the command that starts cron.
  - The ACL probe creates a temporary directory in that parent and removes it (also in check
    mode).
options:
  root:
    description: The cache root (C(shared_cache_root)).
    type: str
    required: true
  commands:
    description: Commands the roles need, each with the Debian package that provides it.
    type: list
    elements: dict
    default: []
  cron_commands:
    description: Commands needed only where cron schedules the jobs (systemd does not run the host).
    type: list
    elements: dict
    default: []
  scheduled:
    description: Whether jobs are to be scheduled (a warning when no scheduler runs).
    type: bool
    default: true
  start_cron:
    description:
      - Whether the play starts cron where it is the scheduler and no cron daemon runs (the
        preflight role's C(preflight_start_cron)). Then that is said (RV(notes)) instead of the
        warning that the jobs will not run.
    type: bool
    default: false
  min_free:
    description: Free space required on the cache filesystem (V(1G), V(500M)); empty for no check.
    type: str
    default: 1G
  require_acl:
    description:
      - Fail when the cache filesystem cannot hold default POSIX ACLs. Without it, such a
        filesystem is a warning (the layout falls back to setgid and group modes).
    type: bool
    default: false
  install_packages:
    description: Whether missing commands will be installed by package (else they are problems).
    type: bool
    default: true
  groups:
    description:
      - Groups to look up (the cache group, the writers groups); RV(groups) gives their gids, so
        that the roles create only the missing ones and need no lookup of their own.
    type: list
    elements: str
    default: []
author: mlinfra (@mlinfra)
"""

EXAMPLES = r"""
- name: Check the host
  mlinfra.shared_cache.cache_preflight:
    root: /mnt/storage/cache
    commands:
      - {command: flock, package: util-linux, why: the cron jobs' lock}
    cron_commands:
      - {command: crontab, package: cron, why: the prune schedule}
"""

RETURN = r"""
groups:
  description: Each group of O(groups) and its gid, or null when it does not exist.
  type: dict
  returned: always
  sample: {"mlcache": 2000, "mlcache-writers": null}
scheduler:
  description: The scheduler the roles use, V(systemd) or V(cron).
  type: str
  returned: always
scheduler_running:
  description: Whether that scheduler runs (systemd is PID 1, or a cron daemon process exists).
  type: bool
  returned: always
root_parent:
  description: The cache root or its nearest existing parent.
  type: str
  returned: always
acl:
  description: Default ACLs settable there (null when the probe could not run).
  type: bool
  returned: always
free_bytes:
  description: Bytes available there to root.
  type: int
  returned: always
missing:
  description: Required commands not found (C(command), C(package), C(why)).
  type: list
  elements: dict
  returned: always
packages:
  description: Packages providing the missing commands (to install).
  type: list
  elements: str
  returned: always
problems:
  description: One line per problem, each ending with its fix.
  type: list
  elements: str
  returned: always
notes:
  description: What the play will do about the host that is not a problem (it starts cron, with O(start_cron)).
  type: list
  elements: str
  returned: always
"""

import grp
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import human
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import (
    ParamError,
    parse_size,
    validate_cache_root,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._preflight import (
    START_CRON,
    acl_support,
    missing_commands,
    nearest_existing,
    scheduler,
)


def check(p):
    result = {"problems": [], "warnings": [], "notes": [], "groups": {}}
    problems = result["problems"]
    for name in p["groups"]:
        try:
            result["groups"][name] = grp.getgrnam(name).gr_gid
        except KeyError:
            result["groups"][name] = None
    if os.geteuid() != 0:
        problems.append(
            "not root: the play creates a group and writes /etc; fix: run as root, or with "
            "make site ANSIBLE_ARGS='-e shared_cache_become=true -K'"
        )
    sched = scheduler()
    result.update(scheduler=sched["kind"], scheduler_running=sched["running"])
    try:
        root = validate_cache_root(p["root"], "shared_cache_root")
    except ParamError as exc:
        problems.append("%s; fix: set shared_cache_root to an absolute directory such as /mnt/storage/cache" % exc)
        root = None
    parent = nearest_existing(root) if root else "/"
    result["root_parent"] = parent
    result["acl"], acl_msg = acl_support(parent)
    if result["acl"] is False:
        line = "%s; fix: remount it with ACLs (mount -o remount,acl %s) or put shared_cache_root on ext4/xfs" % (
            acl_msg,
            parent,
        )
        if p["require_acl"]:
            problems.append(line)
        else:
            result["warnings"].append(line + " (without: setgid and group modes only, files written 0600 stay private)")
    elif result["acl"] is None:
        result["warnings"].append("ACL support not checked: %s" % acl_msg)
    st = os.statvfs(parent)
    result["free_bytes"] = st.f_bavail * st.f_frsize
    try:
        want = parse_size(p["min_free"] or None, "preflight_min_free")
    except ParamError as exc:
        problems.append("%s; fix: give preflight_min_free as 1G or 500M" % exc)
        want = None
    if want is not None and result["free_bytes"] < want:
        problems.append(
            "%s free on %s, %s required; fix: free space there (df -h %s) or lower preflight_min_free"
            % (human(result["free_bytes"]), parent, human(want), parent)
        )
    needed = list(p["commands"]) + (list(p["cron_commands"]) if sched["kind"] == "cron" and p["scheduled"] else [])
    for req in needed:
        if not isinstance(req, dict) or not req.get("command") or not req.get("package"):
            problems.append("preflight_commands: %r needs command and package; fix: correct the list" % (req,))
    needed = [r for r in needed if isinstance(r, dict) and r.get("command") and r.get("package")]
    missing = missing_commands(needed)
    result["missing"] = missing
    result["packages"] = sorted({m["package"] for m in missing})
    if missing and not p["install_packages"]:
        problems.append(
            "missing command(s) %s; fix: apt-get install -y %s (or let the play install them: "
            "shared_cache_install_packages=true)"
            % (
                ", ".join("%s (%s: %s)" % (m["command"], m["package"], m.get("why") or "needed") for m in missing),
                " ".join(result["packages"]),
            )
        )
    if p["scheduled"] and not sched["running"] and sched["kind"] == "cron" and p["start_cron"]:
        result["notes"].append("no cron daemon runs on this host (systemd is not PID 1): the play starts cron")
    elif p["scheduled"] and not sched["running"]:
        result["warnings"].append(
            "no scheduler runs on this host (systemd is not PID 1 and no cron daemon runs): the prune "
            "and report jobs will be installed but will not run; fix: %s" % START_CRON
        )
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="str", required=True),
            commands=dict(type="list", elements="dict", default=[]),
            cron_commands=dict(type="list", elements="dict", default=[]),
            scheduled=dict(type="bool", default=True),
            start_cron=dict(type="bool", default=False),
            min_free=dict(type="str", default="1G"),
            require_acl=dict(type="bool", default=False),
            install_packages=dict(type="bool", default=True),
            groups=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    result = check(module.params)
    for warning in result.pop("warnings"):
        module.warn(warning)
    if result["problems"]:
        module.fail_json(
            msg="preflight: %d problem(s), nothing was changed:\n%s"
            % (len(result["problems"]), "\n".join("- " + line for line in result["problems"])),
            **result,
        )
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
