#!/usr/bin/python
# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cache_doctor
short_description: Check that a host or a workspace container really uses the shared cache
version_added: 0.1.0
author: mlinfra (@mlinfra)
description:
  - The troubleshooting section of the shared cache guide, automated. Run on the host
    (O(context=host), cache paths are the catalog's C(abs_path)) or inside a workspace container
    (O(context=container), paths are the catalog's C(mount)), for example through the
    C(community.docker.docker) connection.
  - "Checks: every cache directory is there (and, in a container, is a mount rather than the
    container's own layer); it has the cache group, setgid and group write, nothing world-writable;
    the environment variables of the catalog point into it; C(HF_HOME) is not shared (it holds each
    user's token); one member of the cache group can write and another member can then modify and
    add to what was written; APT keeps downloaded packages and no C(docker-clean) is left; the
    filesystem has room; pip and huggingface_hub are new enough to write group-usable files in a
    shared cache (pip 25.0, huggingface_hub 1.4); pip's HTTP cache keeps downloads (wheels were
    prefetched through it yet C(http-v2) holds none means the index's responses are not cacheable);
    root's own login environment does not point at the caches."
  - A curated cache (catalog C(writers)) is checked instead of probed (check C(curated)) - its
    directory belongs to the writers group, its access and default ACLs give the cache group
    C(r-x) and no write, and a member's C(mkdir) in it is refused.
  - "Every enabled cache whose catalog C(trust) mark is C(code) or C(credentials) is shown as a warning
    (RV(trust)) with what using it means; it is not a failure."
  - Every failed check gives one line with its fix (RV(lines)); the module fails when any check
    failed (unless O(fail_on_problem=false)).
options:
  catalog:
    description: The resolved catalog, the fact C(shared_cache_catalog) of the C(mlinfra.shared_cache.catalog) role.
    type: list
    elements: dict
    required: true
  context:
    description: Where the module runs; decides which path of each entry is checked.
    type: str
    choices: [host, container]
    default: host
  group:
    description: The cache group.
    type: str
    default: cache
  members:
    description:
      - Two users of O(group) for the write-then-modify probe (the first writes, the second modifies).
        Default the first two members of O(group) in the group database.
    type: list
    elements: str
  probe:
    description: Run the write-then-modify probe (needs root to switch users; skipped in check mode).
    type: bool
    default: true
  probe_umask:
    description:
      - umask of the probe's processes, as a quoted octal string. V(0022), the usual default of
        non-login processes, shows whether sharing works without relying on a login shell's C(umask 002).
    type: str
    default: "0022"
  env_source:
    description:
      - Environment to check. V(process) is the module's own (in a container started with the env
        file, the container's). V(login) is that of C(bash -lc env) (C(/etc/profile.d)). V(file)
        sources O(env_file). V(none) skips the environment checks.
      - V(login) and V(file) are read as O(env_user) (the shared environment reaches cache group
        members only). Run as root, the doctor also reads root's own (V(login) or V(file)) and fails
        when it points any tool at a cache, since root must never install or run what a member can replace.
      - Default V(login) on the host and V(process) in a container.
    type: str
    choices: [process, login, file, none]
  env_user:
    description:
      - User whose environment V(login) or V(file) is read (through C(setpriv) with the user's own
        groups when the doctor runs as root).
      - Default the first member of O(members) (or of O(group) in the group database) whose uid is not
        0; without one, or when not root, the user running the doctor.
    type: str
  env_file:
    description: Shell script to source when O(env_source=file) (e.g. the C(cache_env) profile script).
    type: path
  check_apt:
    description: Check APT's keep-downloaded setting. Default V(true) in a container, V(false) on the host.
    type: bool
  apt_deleting_confs:
    description:
      - File names in APT's C(apt.conf.d) whose presence defeats the cache (the C(docker-clean) of
        the Debian and Ubuntu images).
    type: list
    elements: str
    default: [docker-clean]
  min_free:
    description: Free space each cache filesystem needs, as a size (V(10G)) or a percentage (V(5%)).
    type: str
    default: 5%
  pythons:
    description:
      - Python interpreters whose pip and huggingface_hub are checked (a virtual environment's
        C(bin/python) for example). Tools that are not installed are skipped.
    type: list
    elements: str
    default: [python3]
  min_pip:
    description: Lowest pip version allowed.
    type: str
    default: "25.0"
  min_huggingface_hub:
    description: Lowest huggingface_hub version allowed.
    type: str
    default: "1.4"
  fail_on_problem:
    description: Fail when a check failed. With V(false) the result only lists the problems.
    type: bool
    default: true
  report:
    description:
      - The last report C(show-cache-info --write) wrote (root's, nobody else may write it). Its
        per-cache C(foreign) counts (entries whose group is not the cache group, which no root job
        touches) become one C(ownership) line per cache with the fix. Empty to skip (host only).
    type: path
    default: /var/lib/mlinfra-shared-cache/report/report.json
  cron_dir:
    description:
      - Where the cron jobs of the roles are (C(mlinfra-shared-cache-*)). The C(scheduler) check (host
        only) fails when jobs are installed but no cron daemon process runs (C(cron), C(crond),
        busybox C(crond)), or when systemd timers (C(mlinfra-cache-*.timer) in O(systemd_dir)) are
        installed but systemd does not run the host; the fix is the command that starts cron.
    type: path
    default: /etc/cron.d
  systemd_dir:
    description: Where the systemd units of the roles are installed.
    type: path
    default: /etc/systemd/system
  systemd_run_dir:
    description: Exists when systemd runs the host.
    type: path
    default: /run/systemd/system
  proc:
    description: The proc filesystem scanned for a cron daemon.
    type: path
    default: /proc
  verify_summary:
    description:
      - The summary the last verify wrote (C(cache_verify), root's). The C(verify) check (host only)
        fails for every cache with corrupt units, with the command that quarantines them; with no
        summary yet it passes with a note. Empty to skip.
    type: path
    default: /var/lib/mlinfra-shared-cache/verify/summary.json
  status_file:
    description:
      - Where to record this run's result (time, number of checks, failed checks with their fixes)
        for the report (C(show-cache-info) shows the doctor's last status). Host only, as root,
        not in check mode; written atomically, C(0600), in a root-only directory it creates.
        Empty (default) records nothing; C(playbooks/doctor.yml) records to
        C(/var/lib/mlinfra-shared-cache/doctor/status.json).
    type: path
attributes:
  check_mode:
    support: full
    description: The probe, the only check that writes (and removes) a file, is skipped; O(status_file) is not written.
  diff_mode:
    support: none
    description: The module changes nothing to show a diff of.
  platform:
    support: full
    platforms: posix
    description: Linux hosts and containers (uses /proc/self/mountinfo and POSIX users and groups).
notes:
  - The probe creates C(.cache-doctor-<random>) (a directory, C(mkdir) fails when the name exists) in
    each cache directory as the first member, then as the second member appends to the file, creates
    and renames a file in that directory. Root removes it all relative to a descriptor of the cache
    directory opened without following symlinks, never following a link a member put there; a
    member who replaced the probe with a symlink loses only the symlink.
"""

EXAMPLES = r"""
- name: Check the host
  mlinfra.shared_cache.cache_doctor:
    catalog: "{{ shared_cache_catalog }}"
    group: "{{ shared_cache_group }}"

- name: Check a workspace container (run through the community.docker.docker connection)
  mlinfra.shared_cache.cache_doctor:
    catalog: "{{ shared_cache_catalog }}"
    context: container
    pythons: [python3, /home/alice/venv/bin/python]
"""

RETURN = r"""
checks:
  description: Every check, passed or not.
  returned: always
  type: list
  elements: dict
  contains:
    check:
      description:
        - Check name (mount, layout, env, root_env, hf_home, probe, curated, apt, free_space, pip, pip_http_cache,
          huggingface_hub, group, scheduler, ownership, verify).
      type: str
    target:
      description: What was checked, a path, a variable or an interpreter.
      type: str
    ok:
      description: Whether it passed (null when skipped).
      type: bool
    msg:
      description: What was found.
      type: str
    fix:
      description: How to fix it (failed checks).
      type: str
  sample: [{check: env, target: PIP_CACHE_DIR, ok: false, msg: "unset", fix: "add the env file"}]
problems:
  description: Number of failed checks.
  returned: always
  type: int
trust:
  description: One line per enabled cache marked C(code) or C(credentials) in the catalog, also given as warnings.
  returned: always
  type: list
  elements: str
  sample: ["cargo (code, credentials): members can place code that other members run ..."]
recorded:
  description: The O(status_file) written, or null.
  returned: always
  type: str
lines:
  description: One line per failed check, with its fix.
  returned: always
  type: list
  elements: str
  sample: ["FAIL env PIP_CACHE_DIR: unset (expected /cache/pip); fix: ..."]
"""

import errno
import glob
import grp
import json
import os
import pwd
import re
import secrets
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    human,
    mountinfo,
    open_dir_nofollow,
    open_private_dir,
    read_trusted_json,
    write_atomic,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import (
    ParamError,
    is_within,
    parse_mode,
    parse_size,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import (
    ACL_ACCESS,
    ACL_DEFAULT,
    GROUP,
    READ_DIR,
    read_acl,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._preflight import START_CRON, scheduler

# The probe runs /bin/sh as each member (any interpreter of Ansible's may be unreadable to them).
PROBE_WRITE = 'mkdir -- "$1" && printf "first member\\n" > "$1/written"'
PROBE_MODIFY = (
    'printf "second member\\n" >> "$1/written" && printf "x\\n" > "$1/added" '
    '&& mv -- "$1/added" "$1/renamed" && rm -- "$1/renamed"'
)

TRUST_MEANS = {
    "code": "members can place code that other members run or install from it; use it only if you trust "
    "every member with your account (root never loads it)",
    "credentials": "the tool home can hold credentials; never log in with it (use a per-user token "
    "variable), its credential files are kept private",
}

_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _not_writer(members, writers):
    """The first of ``members`` outside the group ``writers`` (the prefetch account is in both), or None."""
    try:
        wgrp = grp.getgrnam(writers)
    except KeyError:
        return members[0] if members else None
    for name in members:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_gid != wgrp.gr_gid and name not in wgrp.gr_mem:
            return name
    return None


def _gid_of(name):
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def remove_below(dir_fd, name, depth=0):
    """Remove ``name`` below the directory ``dir_fd`` without following any symlink.

    A directory is opened O_NOFOLLOW relative to its parent's descriptor and emptied through its
    own descriptor; anything else (a symlink a member planted included) is unlinked, never
    followed. Depth-limited: a member cannot make root recurse without end.
    """
    try:
        fd = os.open(name, _DIR_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
        return
    try:
        if depth < 16:
            for entry in os.listdir(fd):
                remove_below(fd, entry, depth + 1)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        pass


TOOL_VERSION = r"""
import sys
try:
    if sys.argv[1] == "pip":
        import pip
        print(pip.__version__)
    else:
        import huggingface_hub
        print(huggingface_hub.__version__)
except ImportError:
    print("")
"""


def version_tuple(text):
    """'25.0.1' -> (25, 0, 1); '1.4.0rc1' -> (1, 4, 0). Unparseable parts stop the tuple."""
    out = []
    for part in str(text).split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        out.append(int(match.group(0)))
    return tuple(out)


PIP_HTTP_DEPTH = 6  # http-v2/<5 one-character levels>/<hash>.body


def _count(path, suffix, depth, stop=None):
    """Regular files ending in ``suffix`` at most ``depth`` levels below ``path`` (a member-written
    tree: no symlink followed, anywhere), up to ``stop``; 0 when ``path`` is not a directory."""
    try:
        fd = open_dir_nofollow(path)
    except OSError:
        return 0
    found = 0
    todo = [(fd, 1)]
    try:
        while todo:
            dfd, level = todo.pop()
            try:
                with os.scandir(dfd) as it:
                    for d in it:
                        if d.is_file(follow_symlinks=False) and d.name.endswith(suffix):
                            found += 1
                            if stop and found >= stop:
                                return found
                        elif level < depth and d.is_dir(follow_symlinks=False):
                            try:
                                todo.append(
                                    (
                                        os.open(d.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd),
                                        level + 1,
                                    )
                                )
                            except OSError:
                                pass
            finally:
                os.close(dfd)
    finally:
        for dfd, _level in todo:
            os.close(dfd)
    return found


class Doctor:
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.checks = []

    def add(self, check, target, ok, msg, fix=""):
        self.checks.append({"check": check, "target": target, "ok": ok, "msg": msg, "fix": "" if ok else fix})

    def path_of(self, entry):
        return entry["mount"] if self.p["context"] == "container" else entry["abs_path"]

    # -- mounts and layout -------------------------------------------------------------------
    def mount_points(self):
        return {mp for mp, _opts in mountinfo()} or None

    # -- ownership (docs/security.md) ----------------------------------------------------------
    def check_ownership(self):
        """Entries not the cache's (another group), as the last report counted them: one line per cache."""
        path = self.p["report"]
        if self.p["context"] != "host" or not path:
            return
        try:
            report = read_trusted_json(path)
        except FileNotFoundError:
            self.add("ownership", path, None, "no report yet: run show-cache-info --write to count foreign entries")
            return
        except (OSError, ValueError) as exc:
            self.add("ownership", path, None, "report not read: %s" % exc)
            return
        by_name = {c.get("name"): c for c in report.get("caches") or [] if isinstance(c, dict)}
        for entry in self.p["catalog"]:
            foreign = (by_name.get(entry["name"]) or {}).get("foreign") or {}
            count = foreign.get("count") or 0
            if not count:
                continue
            sample = [str(x) for x in (foreign.get("sample") or [])][:3]
            first = os.path.join(entry["abs_path"], sample[0]) if sample else entry["abs_path"]
            self.add(
                "ownership",
                entry["abs_path"],
                False,
                "cache %s: %d entr%s not the cache's (another group; %s, never pruned, repaired or "
                "measured), e.g. %s"
                % (
                    entry["name"],
                    count,
                    "y" if count == 1 else "ies",
                    human(foreign.get("bytes") or 0),
                    ", ".join(sample),
                ),
                "as its owner, once you know it may be shared: chgrp -R %s %s; or take the whole tree over: "
                "make site ANSIBLE_ARGS='-e cache_layout_adopt=true'" % (self.p["group"], first),
            )

    # -- verify (cache_verify's summary) --------------------------------------------------------
    def check_verify(self):
        """Corrupt units the last verify found: one failed line per cache, the quarantine command as fix."""
        path = self.p["verify_summary"]
        if self.p["context"] != "host" or not path:
            return
        try:
            summary = read_trusted_json(path)
        except FileNotFoundError:
            self.add(
                "verify",
                path,
                True,
                "no verify has run yet (it checks cached files against their checksums): "
                "ansible-playbook playbooks/verify.yml",
            )
            return
        except (OSError, ValueError) as exc:
            self.add("verify", path, None, "summary not read: %s" % exc)
            return
        caches = summary.get("caches") if isinstance(summary, dict) else None
        if not isinstance(caches, dict):
            self.add("verify", path, None, "summary without caches: skipped")
            return
        bad = False
        for name in sorted(caches):
            entry = caches[name] if isinstance(caches[name], dict) else {}
            corrupt = entry.get("corrupt") if isinstance(entry.get("corrupt"), int) else 0
            if corrupt <= 0:
                continue
            bad = True
            sample = [s.get("path") for s in entry.get("corrupt_sample") or [] if isinstance(s, dict)][:3]
            self.add(
                "verify",
                name,
                False,
                "cache %s: %d corrupt unit(s) (%s), content that does not match its checksum%s"
                % (
                    name,
                    corrupt,
                    human(entry.get("corrupt_bytes") or 0),
                    ", e.g. %s" % ", ".join(str(x) for x in sample) if sample else "",
                ),
                "ansible-playbook playbooks/verify.yml -e cache_verify_quarantine=true",
            )
        if not bad:
            total = sum(c.get("verified") or 0 for c in caches.values() if isinstance(c, dict))
            self.add("verify", path, True, "no corrupt unit at the last verify (%d verified)" % total)

    def record(self, failed, lines):
        """Write this run's result to ``status_file`` for the report; the path written or None."""
        path = self.p["status_file"]
        if not path or self.p["context"] != "host" or self.module.check_mode or os.geteuid() != 0:
            return None
        directory = os.path.dirname(path)
        try:
            os.close(open_private_dir(directory))
            status = {
                "version": 1,
                "time": time.time(),
                "checks": len([c for c in self.checks if c["ok"] is not None]),
                "problems": len(failed),
                "lines": lines,
            }
            write_atomic(path, json.dumps(status, indent=2, sort_keys=True) + "\n", mode=0o600)
        except OSError as exc:
            self.module.warn("doctor status not recorded in %s: %s" % (path, exc))
            return None
        return path

    def check_dirs(self, gid):
        mounts = self.mount_points() if self.p["context"] == "container" else None
        ok_paths = []
        for entry in self.p["catalog"]:
            path = self.path_of(entry)
            try:
                st = os.lstat(path)
            except OSError as exc:
                self.add(
                    "mount" if self.p["context"] == "container" else "layout",
                    path,
                    False,
                    "cache %s: %s" % (entry["name"], os.strerror(exc.errno)),
                    self.fix_missing(entry),
                )
                continue
            if not os.path.isdir(path) or os.path.islink(path):
                self.add(
                    "layout",
                    path,
                    False,
                    "cache %s: not a directory (or a symlink)" % entry["name"],
                    "replace it with a real directory: " + self.fix_layout(entry),
                )
                continue
            if mounts is not None:
                if path in mounts:
                    self.add("mount", path, True, "mounted")
                else:
                    self.add(
                        "mount",
                        path,
                        False,
                        "cache %s is not mounted: writes stay in this container's own layer" % entry["name"],
                        self.fix_missing(entry),
                    )
                    continue
            want = parse_mode(entry.get("mode") or "2775")
            problems = []
            owner_name, owner_gid = self.p["group"], gid
            if entry.get("writers"):  # a curated cache belongs to its writers group (catalog `writers`)
                owner_name, owner_gid = entry["writers"], _gid_of(entry["writers"])
            if owner_gid is not None and st.st_gid != owner_gid:
                problems.append("group is gid %d, not %s (gid %d)" % (st.st_gid, owner_name, owner_gid))
            if not st.st_mode & 0o2000:
                problems.append("setgid bit missing (new files would not get the cache group)")
            if (st.st_mode & 0o070) != (want & 0o070):
                problems.append("group permissions %o, expected %o" % ((st.st_mode >> 3) & 7, (want >> 3) & 7))
            if st.st_mode & 0o002:
                problems.append("world-writable")
            if problems:
                self.add(
                    "layout", path, False, "cache %s: %s" % (entry["name"], "; ".join(problems)), self.fix_layout(entry)
                )
            else:
                self.add("layout", path, True, "group, setgid and mode %04o" % (st.st_mode & 0o7777))
                ok_paths.append((entry, path))
        return ok_paths

    def fix_missing(self, entry):
        if self.p["context"] == "container":
            return (
                "mount %s:%s:rw in the workspace service (mlinfra.shared_cache.compose_volumes writes it), "
                "then recreate the container: docker compose up -d --force-recreate"
                % (entry["abs_path"], entry["mount"])
            )
        return "rerun `make site` (it lays out the whole tree); or just this one: install -d -g %s -m %s %s" % (
            self.p["group"],
            entry["mode"],
            entry["abs_path"],
        )

    def fix_layout(self, entry):
        """Commands to paste (never chmod -R 777): the directory itself, or the whole tree by make site."""
        group = entry.get("writers") or self.p["group"]
        here = "chgrp %s %s && chmod %s %s" % (group, entry["abs_path"], entry["mode"], entry["abs_path"])
        if self.p["context"] == "container":
            return (
                "on the host, rerun `make site` or: %s; and give the group the host's gid in the image "
                "(groupadd -g GID %s in the Dockerfile)" % (here, self.p["group"])
            )
        return "rerun `make site` (the tree and its default ACLs), or for this directory only: " + here

    # -- environment ---------------------------------------------------------------------------
    def source(self):
        return self.p["env_source"] or ("process" if self.p["context"] == "container" else "login")

    def env_user(self, group_entry):
        """The user whose login/file environment is checked (pwd entry), or None for ourselves."""
        if os.geteuid() != 0:
            return None
        names = [self.p["env_user"]] if self.p["env_user"] else self.members(group_entry, limit=None)
        for name in names:
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                if self.p["env_user"]:
                    self.module.fail_json(msg="env_user %s does not exist" % name)
                continue
            if pw.pw_uid != 0:
                return pw
        return None

    def read_env(self, source, pw=None):
        """The environment of ``source`` as the user ``pw`` (None: this process's user)."""
        if source == "file":
            cmd = ["bash", "-c", '. "$1" >/dev/null 2>&1; env -0', "doctor", self.p["env_file"]]
        else:
            cmd = ["bash", "-lc", "env -0"]
        environ = None
        if pw is not None:
            setpriv = self.module.get_bin_path("setpriv")
            if setpriv is None:
                return None, "setpriv (util-linux) not found: cannot act as %s" % pw.pw_name
            cmd = [setpriv, "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid, "--init-groups", "--"] + cmd
            environ = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name, "PATH": "/usr/bin:/bin"}
        rc, out, err = self.module.run_command(cmd, encoding=None, cwd="/", environ_update=environ)
        if rc != 0:
            return None, "could not read the environment: %s (%s)" % (err.strip(), cmd)
        env = {}
        for item in out.split(b"\0"):
            if b"=" in item:
                k, v = item.split(b"=", 1)
                env[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
        return env, None

    def environment(self, pw):
        source = self.source()
        if source == "none":
            return None, source
        if source == "process":
            return dict(os.environ), source
        env, error = self.read_env(source, pw)
        if env is None:
            script = self.p["env_file"] if source == "file" else "/etc/profile.d/shared-cache.sh"
            user = pw.pw_name if pw is not None else "root"
            self.add(
                "env",
                source,
                False,
                error,
                "rerun `make site` (rewrites the profile script), or see the error: runuser -u %s -- bash -c '. %s'"
                % (user, script),
            )
        return env, source

    def check_root_env(self, pw):
        """Root's own login/file environment must not point any tool at a cache."""
        source = self.source()
        if source not in ("login", "file") or pw is None:
            return
        env, error = self.read_env(source)
        if env is None:
            self.add("root_env", source, False, error, "see the error in root's shell files: bash -l -c true")
            return
        bases = [self.path_of(e) for e in self.p["catalog"]]
        found = sorted(
            k
            for k, v in env.items()
            if any(is_within(part.rstrip("/"), b) for part in v.split(":") if part for b in bases)
        )  # a path list too: CARGO_HOME/bin on root's PATH
        if found:
            self.add(
                "root_env",
                "root",
                False,
                "root's environment points at the shared cache (%s): root would install or run what any "
                "member can replace" % ", ".join(found),
                "remove them from root's own shell files (grep -n -E '%s' /root/.bashrc /root/.profile) and "
                "rerun `make site` (its profile script exports the caches to members, not root)" % "|".join(found),
            )
        else:
            self.add("root_env", "root", True, "root's environment does not use the shared cache")

    def check_env(self, pw):
        env, source = self.environment(pw)
        if env is None:
            return
        where = {
            "process": "the container's env file (compose env_file, mlinfra.shared_cache.cache_env)",
            "login": "/etc/profile.d/shared-cache.sh (mlinfra.shared_cache.cache_env)",
            "file": self.p["env_file"],
        }.get(source)
        if pw is not None and source in ("login", "file"):
            where += " (read as %s)" % pw.pw_name
        for entry in self.p["catalog"]:
            base = self.path_of(entry)
            for var, sub in sorted((entry.get("env") or {}).items()):
                want = base + ("/" + sub if sub else "")
                have = env.get(var)
                if have is not None and have.rstrip("/") == want:
                    self.add("env", var, True, have)
                else:
                    self.add(
                        "env",
                        var,
                        False,
                        "%s (expected %s)" % ("unset" if have is None else have, want),
                        "rerun `make site` (writes %s), then log in again; for this shell: export %s=%s"
                        % (where, var, want),
                    )
        git = {}
        count = env.get("GIT_CONFIG_COUNT", "0")
        for i in range(int(count) if count.isdigit() else 0):
            git[env.get("GIT_CONFIG_KEY_%d" % i)] = env.get("GIT_CONFIG_VALUE_%d" % i)
        for entry in self.p["catalog"]:
            base = self.path_of(entry)
            for key, sub in sorted(((entry.get("config") or {}).get("git") or {}).items()):
                want = base + ("/" + sub if sub else "")
                have = git.get(key)
                if have is not None and have.rstrip("/") == want:
                    self.add("env", "git " + key, True, have)
                else:
                    self.add(
                        "env",
                        "git " + key,
                        False,
                        "%s (expected %s)" % ("unset" if have is None else have, want),
                        "rerun `make site` (gives git %s=%s through GIT_CONFIG_COUNT/KEY_n/VALUE_n in %s), "
                        "then log in again" % (key, want, where),
                    )
        hf_home = env.get("HF_HOME")
        shared = [e for e in self.p["catalog"] if hf_home and is_within(hf_home.rstrip("/"), self.path_of(e))]
        if shared:
            self.add(
                "hf_home",
                "HF_HOME",
                False,
                "HF_HOME=%s is inside the shared cache %s: every user's token would be shared and "
                "`hf auth login` chmods it 0700" % (hf_home, shared[0]["name"]),
                "share HF_HUB_CACHE instead (HF_HOME defaults to ~/.cache/huggingface per user): remove "
                "HF_HOME from the catalog or the shell files, then: unset HF_HOME",
            )
        else:
            self.add("hf_home", "HF_HOME", True, "per user (%s)" % (hf_home or "unset"))

    # -- write-then-modify probe ---------------------------------------------------------------
    def members(self, group_entry, limit=2):
        if self.p["members"]:
            return self.p["members"]
        names = list(group_entry.gr_mem) if group_entry else []
        if group_entry:
            names += sorted(
                p.pw_name for p in pwd.getpwall() if p.pw_gid == group_entry.gr_gid and p.pw_name not in names
            )
        return names[:limit]

    def as_user(self, user, code, arg):
        """Run the probe shell code as ``user`` (its own groups, the probe umask) with setpriv."""
        pw = pwd.getpwnam(user)
        setpriv = self.module.get_bin_path("setpriv")
        if setpriv is None:
            return 127, "setpriv (util-linux) not found: cannot act as %s" % user
        cmd = [
            setpriv,
            "--reuid=%d" % pw.pw_uid,
            "--regid=%d" % pw.pw_gid,
            "--init-groups",
            "/bin/sh",
            "-c",
            "umask %s; %s" % (self.p["probe_umask"], code),
            "probe",
            arg,
        ]
        rc, _out, err = self.module.run_command(cmd, cwd="/", environ_update={"PATH": "/usr/bin:/bin"})
        return rc, (err.strip().splitlines() or [""])[-1]

    def check_probe(self, ok_paths, group_entry):
        if not self.p["probe"]:
            return
        if self.module.check_mode:
            self.add("probe", "-", None, "skipped in check mode")
            return
        if os.geteuid() != 0:
            self.module.warn("cache_doctor: not root, the write-then-modify probe is skipped")
            self.add("probe", "-", None, "skipped: needs root to act as two group members")
            return
        members = self.members(group_entry)
        for user in members:
            try:
                pwd.getpwnam(user)
            except KeyError:
                self.add(
                    "probe",
                    user,
                    False,
                    "user %s does not exist here" % user,
                    "create it with the host's uid (or fix the members option): useradd -u UID %s" % user,
                )
                return
        if len(members) < 2:
            self.add(
                "probe",
                self.p["group"],
                False,
                "group %s has %d member(s); the probe needs two" % (self.p["group"], len(members)),
                "list the workspace users in shared_cache_users and rerun `make site`, or: usermod -aG %s USER"
                % self.p["group"],
            )
            return
        first, second = members[0], members[1]
        for entry, path in ok_paths:
            if not entry.get("writers"):  # a curated cache is checked by check_curated instead
                self.probe_one(entry, path, first, second)

    def check_curateds(self, ok_paths, group_entry):
        """The `curated` check of every curated cache; a member's write is tried when the probe may run."""
        members = []
        if self.p["probe"] and not self.module.check_mode and os.geteuid() == 0:
            members = self.members(group_entry, limit=None)
        for entry, path in ok_paths:
            if entry.get("writers") and group_entry is not None:
                self.check_curated(entry, path, group_entry, _not_writer(members, entry["writers"]))

    def check_curated(self, entry, path, group_entry, member):
        """A curated cache: the cache group reads it through its ACL entries (access and default,
        r-x, never w) and a member's write is refused; one line per cache."""
        fix = (
            "rerun `make site ANSIBLE_ARGS='-e cache_layout_recurse=true'` (the tree and its ACLs), or for "
            "this directory: chgrp %s %s && chmod %s %s && setfacl -m g:%s:r-x,d:g:%s:r-x,d:g:%s:rwx %s"
            % (entry["writers"], path, entry["mode"], path, self.p["group"], self.p["group"], entry["writers"], path)
        )
        problems = []
        try:
            dir_fd = os.open(path, _DIR_NOFOLLOW)
        except OSError as exc:
            self.add("curated", path, False, "cannot open %s: %s" % (path, os.strerror(exc.errno)), fix)
            return
        try:
            for name, label in ((ACL_ACCESS, "access"), (ACL_DEFAULT, "default")):
                try:
                    entries = read_acl(dir_fd, name)
                except OSError as exc:
                    problems.append("%s ACL not readable (%s)" % (label, os.strerror(exc.errno)))
                    continue
                perms = [perm for tag, perm, ident in entries if tag == GROUP and ident == group_entry.gr_gid]
                if perms != [READ_DIR]:
                    problems.append(
                        "%s ACL gives %s %s, not r-x"
                        % (label, self.p["group"], "nothing" if not perms else "%o" % perms[0])
                    )
            rc, err = 1, "not tried (no probe)"
            if member is not None:
                name = ".cache-doctor-" + secrets.token_hex(8)
                rc, err = self.as_user(member, PROBE_WRITE, os.path.join(path, name))
                if rc == 0:
                    remove_below(dir_fd, name)
                    problems.append("member %s could write into it" % member)
        finally:
            os.close(dir_fd)
        if problems:
            self.add("curated", path, False, "curated cache %s: %s" % (entry["name"], "; ".join(problems)), fix)
        else:
            self.add(
                "curated",
                path,
                True,
                "written by %s only; %s reads it (%s was refused: %s)"
                % (entry["writers"], self.p["group"], member, err),
            )

    def probe_one(self, entry, path, first, second):
        """The probe in one cache dir; root touches it only through a descriptor of that dir."""
        try:
            dir_fd = os.open(path, _DIR_NOFOLLOW)
        except OSError as exc:
            self.add(
                "probe", path, False, "cannot open %s: %s" % (path, os.strerror(exc.errno)), self.fix_layout(entry)
            )
            return
        try:
            st = os.fstat(dir_fd)
            if st.st_uid != 0 or st.st_mode & 0o002:
                # a directory a member owns (or anyone can write) is theirs to swap: root stays out
                self.add(
                    "probe",
                    path,
                    False,
                    "%s is not root-owned or is world-writable: not probed" % path,
                    self.fix_layout(entry),
                )
                return
            name = ".cache-doctor-" + secrets.token_hex(8)
            # members act on the path with their own rights; root only ever through dir_fd
            probe = os.path.join(path, name)
            written = False
            try:
                rc, err = self.as_user(first, PROBE_WRITE, probe)
                if rc != 0:
                    self.add(
                        "probe", path, False, "%s cannot write in %s: %s" % (first, path, err), self.fix_layout(entry)
                    )
                    return
                written = True
                rc, err = self.as_user(second, PROBE_MODIFY, probe)
                if rc != 0:
                    self.add(
                        "probe",
                        path,
                        False,
                        "%s cannot modify what %s wrote (umask %s): %s" % (second, first, self.p["probe_umask"], err),
                        "set the default ACL and setgid: " + self.fix_layout(entry),
                    )
                else:
                    self.add("probe", path, True, "%s wrote, %s modified" % (first, second))
            finally:
                if written:  # a name the first member's mkdir failed on is not ours to remove
                    remove_below(dir_fd, name)
        finally:
            os.close(dir_fd)

    # -- APT ---------------------------------------------------------------------------------------
    def check_apt(self):
        want = self.p["check_apt"]
        if want is None:
            want = self.p["context"] == "container"
        if not want or not any(e.get("format") == "apt" for e in self.p["catalog"]):
            return
        apt_config = self.module.get_bin_path("apt-config")
        if not apt_config:
            self.add("apt", "apt-config", None, "apt not installed: skipped")
            return
        rc, out, err = self.module.run_command([apt_config, "dump"])
        if rc != 0:
            self.add(
                "apt",
                "apt-config",
                False,
                "apt-config dump failed: %s" % err.strip(),
                "correct the file it names in /etc/apt/apt.conf.d, then check: apt-config dump",
            )
            return
        if self.p["context"] == "container":
            fix = (
                "add the apt_keep_cache Dockerfile fragment (/etc/mlinfra/shared-cache/Dockerfile.apt-keep-cache "
                "on the host) to the image and rebuild it: docker compose build"
            )
        else:
            fix = "rerun `make site` (mlinfra.shared_cache.apt_keep_cache)"
        keep = re.search(r'^Binary::apt::APT::Keep-Downloaded-Packages "([^"]*)";', out, re.M)
        if keep and keep.group(1).lower() in ("true", "1", "yes"):
            self.add("apt", "Keep-Downloaded-Packages", True, "true")
        else:
            self.add(
                "apt",
                "Keep-Downloaded-Packages",
                False,
                "Binary::apt::APT::Keep-Downloaded-Packages is %s" % (keep.group(1) if keep else "unset"),
                fix,
            )
        rc, shell_out, _err = self.module.run_command([apt_config, "shell", "PARTS", "Dir::Etc::parts/d"])
        match = re.search(r"PARTS='([^']*)'", shell_out or "")
        parts = match.group(1) if rc == 0 and match else "/etc/apt/apt.conf.d/"
        clean = [
            os.path.join(parts, name)
            for name in self.p["apt_deleting_confs"]
            if os.path.exists(os.path.join(parts, name))
        ]
        deleting = [
            line
            for line in out.splitlines()
            if re.match(r"^(DPkg|APT::Update)::Post-Invoke", line, re.I) and "/var/cache/apt/archives" in line
        ]
        if clean or deleting:
            self.add(
                "apt",
                "docker-clean",
                False,
                "a config deletes downloaded packages after each run: %s" % (clean[0] if clean else deleting[0]),
                "%s; %s" % (("rm " + clean[0]) if clean else "remove that Post-Invoke line", fix),
            )
        else:
            self.add("apt", "docker-clean", True, "no config deletes downloaded packages")

    # -- free space --------------------------------------------------------------------------------
    def check_space(self):
        spec = str(self.p["min_free"]).strip()
        seen = set()
        for entry in self.p["catalog"]:
            path = self.path_of(entry)
            try:
                st = os.stat(path)
                vfs = os.statvfs(path)
            except OSError:
                continue
            if st.st_dev in seen:
                continue
            seen.add(st.st_dev)
            free = vfs.f_bavail * vfs.f_frsize
            total = vfs.f_blocks * vfs.f_frsize
            if spec.endswith("%"):
                need = int(total * float(spec[:-1]) / 100.0)
            else:
                need = parse_size(spec, "min_free")
            ok = free >= need
            self.add(
                "free_space",
                path,
                ok,
                "%.1f GiB free of %.1f GiB (need %.1f GiB)" % (free / 2.0**30, total / 2.0**30, need / 2.0**30),
                "prune now by the catalog's retention (or grow the filesystem), on the host as root: "
                "/usr/local/sbin/mlinfra-cache-prune",
            )

    # -- scheduler ---------------------------------------------------------------------------------
    def check_scheduler(self):
        """Jobs installed for a scheduler that does not run here: the prune and report never run."""
        if self.p["context"] != "host":
            return
        timers = sorted(glob.glob(os.path.join(self.p["systemd_dir"], "mlinfra-cache-*.timer")))
        crons = sorted(glob.glob(os.path.join(self.p["cron_dir"], "mlinfra-shared-cache-*")))
        sched = scheduler(self.p["proc"], self.p["systemd_run_dir"])
        bad = False
        if timers and sched["kind"] != "systemd":
            bad = True
            self.add(
                "scheduler",
                timers[0],
                False,
                "systemd timers are installed (%s) but systemd does not run this host: the prune and report "
                "jobs never run" % ", ".join(os.path.basename(t) for t in timers),
                "rerun `make site` (it schedules with cron where systemd does not run), then: %s" % START_CRON,
            )
        if crons and sched["kind"] == "cron" and not sched["running"]:
            bad = True
            self.add(
                "scheduler",
                crons[0],
                False,
                "cron jobs are installed (%s) but no cron daemon runs: the prune and report jobs never run"
                % ", ".join(os.path.basename(c) for c in crons),
                "start cron: %s" % START_CRON,
            )
        if bad:
            return
        if timers or crons:
            self.add("scheduler", sched["kind"], True, "%s runs the installed jobs" % sched["kind"])
        else:
            self.add("scheduler", sched["kind"], None, "no scheduled jobs installed: skipped")

    # -- pip's HTTP cache --------------------------------------------------------------------------
    def check_pip_http(self):
        """pip shares downloads between users through its HTTP cache (http-v2), which keeps only the
        responses an index lets it keep. Wheels prefetched through it (cache_prefetch's cache_dir)
        while http-v2 holds no body mean the responses are not cacheable: users download again."""
        for entry in self.p["catalog"]:
            env = entry.get("env") or {}
            if entry.get("format") != "pip" or "PIP_CACHE_DIR" not in env:
                continue
            base = self.path_of(entry)
            cache = base + ("/" + env["PIP_CACHE_DIR"] if env["PIP_CACHE_DIR"] else "")
            links = env.get("PIP_FIND_LINKS")
            wheels = _count(base + ("/" + links if links else ""), ".whl", 1) if links is not None else 0
            stored = _count(cache + "/http-v2", ".body", PIP_HTTP_DEPTH, stop=1)
            if stored:
                self.add("pip_http_cache", cache, True, "pip keeps its downloads in http-v2 for every member")
            elif not wheels:
                self.add("pip_http_cache", cache, None, "nothing downloaded through it yet: skipped")
            else:
                self.add(
                    "pip_http_cache",
                    cache,
                    False,
                    "%d wheel(s) were prefetched but pip's HTTP cache (http-v2) holds no download: the index's "
                    "responses are not cacheable (no Cache-Control max-age, no-store from a proxy, or an http "
                    "index that is not a trusted host), so every user downloads the same files again" % wheels,
                    'see what the index sends with curl -sI "$(pip config get global.index-url 2>/dev/null || echo '
                    'https://pypi.org/simple)/pip/" | grep -i -e ^cache-control -e ^etag, have the proxy pass '
                    "Cache-Control (or set PIP_TRUSTED_HOST for an http index), then rerun the prefetch: "
                    "ansible-playbook playbooks/prefetch.yml",
                )

    # -- tools -------------------------------------------------------------------------------------
    def check_tools(self):
        for python in self.p["pythons"]:
            exe = python if os.path.isabs(python) else self.module.get_bin_path(python)
            if not exe or not os.path.exists(exe):
                self.add("pip", python, None, "interpreter not found: skipped")
                continue
            for tool, minimum, fix in (
                ("pip", self.p["min_pip"], "%s -m pip install --upgrade 'pip>=%s'"),
                ("huggingface_hub", self.p["min_huggingface_hub"], "%s -m pip install --upgrade 'huggingface_hub>=%s'"),
            ):
                rc, out, err = self.module.run_command([exe, "-c", TOOL_VERSION, tool])
                version = out.strip()
                if rc != 0:
                    self.add(
                        tool,
                        exe,
                        False,
                        "cannot run %s: %s" % (exe, err.strip()),
                        "see the error: %s -c 'import sys'" % exe,
                    )
                elif not version:
                    self.add(tool, exe, None, "not installed: skipped")
                elif version_tuple(version) >= version_tuple(minimum):
                    self.add(tool, exe, True, version)
                else:
                    self.add(
                        tool,
                        exe,
                        False,
                        "%s %s < %s: it creates cache files only their owner can use" % (tool, version, minimum),
                        fix % (exe, minimum),
                    )

    def trust_lines(self):
        """The trust marks of enabled code/credentials caches: warnings, not failures."""
        lines = []
        for entry in self.p["catalog"]:
            marks = [m for m in entry.get("trust") or [] if m in TRUST_MEANS]
            if marks:
                lines.append(
                    "%s (%s): %s" % (entry["name"], ", ".join(marks), "; ".join(TRUST_MEANS[m] for m in marks))
                )
        for line in lines:
            self.module.warn("shared cache " + line)
        return lines

    def run(self):
        try:
            group_entry = grp.getgrnam(self.p["group"])
        except KeyError:
            group_entry = None
            self.add(
                "group",
                self.p["group"],
                False,
                "group %s does not exist here" % self.p["group"],
                "rerun `make site` on the host; in a container, create it with the host's gid: groupadd -g GID %s"
                % self.p["group"],
            )
        ok_paths = self.check_dirs(group_entry.gr_gid if group_entry else None)
        pw = self.env_user(group_entry)
        self.check_env(pw)
        self.check_root_env(pw)
        self.check_probe(ok_paths, group_entry)
        self.check_curateds(ok_paths, group_entry)
        self.check_apt()
        self.check_space()
        self.check_tools()
        self.check_pip_http()
        self.check_scheduler()
        self.check_ownership()
        self.check_verify()
        failed = [c for c in self.checks if c["ok"] is False]
        lines = ["FAIL %s %s: %s; fix: %s" % (c["check"], c["target"], c["msg"], c["fix"]) for c in failed]
        return failed, lines


def main():
    module = AnsibleModule(
        argument_spec=dict(
            catalog=dict(type="list", elements="dict", required=True),
            context=dict(type="str", choices=["host", "container"], default="host"),
            group=dict(type="str", default="cache"),
            members=dict(type="list", elements="str"),
            probe=dict(type="bool", default=True),
            probe_umask=dict(type="str", default="0022"),
            env_source=dict(type="str", choices=["process", "login", "file", "none"]),
            env_file=dict(type="path"),
            env_user=dict(type="str"),
            check_apt=dict(type="bool"),
            apt_deleting_confs=dict(type="list", elements="str", default=["docker-clean"]),
            min_free=dict(type="str", default="5%"),
            pythons=dict(type="list", elements="str", default=["python3"]),
            min_pip=dict(type="str", default="25.0"),
            min_huggingface_hub=dict(type="str", default="1.4"),
            fail_on_problem=dict(type="bool", default=True),
            report=dict(type="path", default="/var/lib/mlinfra-shared-cache/report/report.json"),
            cron_dir=dict(type="path", default="/etc/cron.d"),
            systemd_dir=dict(type="path", default="/etc/systemd/system"),
            systemd_run_dir=dict(type="path", default="/run/systemd/system"),
            proc=dict(type="path", default="/proc"),
            verify_summary=dict(type="path", default="/var/lib/mlinfra-shared-cache/verify/summary.json"),
            status_file=dict(type="path"),
        ),
        required_if=[("env_source", "file", ["env_file"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if not re.match(r"^0?[0-7]{3}$", p["probe_umask"]):
            raise ParamError("probe_umask: %r is not an octal umask such as '0022'" % p["probe_umask"])
        spec = str(p["min_free"]).strip()
        if spec.endswith("%"):
            try:
                pct = float(spec[:-1])
            except ValueError:
                raise ParamError("min_free: %r is not a percentage such as 5%%" % spec) from None
            if not 0 <= pct < 100:
                raise ParamError("min_free: %r must be between 0%% and 100%%" % spec)
        else:
            parse_size(spec, "min_free")
        for i, entry in enumerate(p["catalog"]):
            for key in ("name", "abs_path", "mount"):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise ParamError(
                        "catalog[%d]: missing %s; pass the resolved catalog (shared_cache_catalog)" % (i, key)
                    )
    except ParamError as exc:
        module.fail_json(msg=str(exc))
    doctor = Doctor(module)
    failed, lines = doctor.run()
    recorded = doctor.record(failed, lines)
    result = dict(
        changed=False,
        checks=doctor.checks,
        problems=len(failed),
        lines=lines,
        trust=doctor.trust_lines(),
        recorded=recorded,
    )
    if failed and p["fail_on_problem"]:
        module.fail_json(msg="%d problem(s):\n%s" % (len(failed), "\n".join(lines)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
