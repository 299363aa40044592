# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host can run, looked at before anything changes (module cache_preflight, the doctor).

The scheduler decision lives here once: systemd when it runs the host (/run/systemd/system
exists, systemd is PID 1), else cron; and whether that scheduler actually runs (a cron daemon
process: cron, crond, or busybox crond).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import (
    ACL_DEFAULT,
    ACL_UNSUPPORTED,
    GROUP_OBJ,
    OTHER,
    USER_OBJ,
    encode_acl,
)

SYSTEMD_DIR = "/run/systemd/system"
CRON_NAMES = ("cron", "crond")
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_CRON = "service cron start (or: systemctl enable --now cron)"


def systemd_running(run_dir=SYSTEMD_DIR):
    return os.path.isdir(run_dir)


def _root_id(path):
    try:
        st = os.stat(path)  # /proc/<pid>/root: the process's root directory
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def cron_daemons(proc="/proc"):
    """PIDs (as strings) of running cron daemons: comm cron/crond, or busybox running crond, whose
    root directory is ours. A cron in a container (another root) shows in the host's /proc too, but
    it reads the container's crontabs, never the host's: it does not run the host's jobs. Where a
    process's root cannot be read (not root), it counts."""
    found = []
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return found
    ours = _root_id(os.path.join(proc, "self", "root")) or _root_id("/")
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "comm"), "rb") as fh:
                comm = fh.read(64).decode("utf-8", "replace").strip()
            if comm == "busybox":
                with open(os.path.join(proc, pid, "cmdline"), "rb") as fh:
                    argv = fh.read(4096).split(b"\0")
                if b"crond" not in argv[:3]:
                    continue
            elif comm not in CRON_NAMES:
                continue
        except OSError:
            continue  # gone, or not ours to read
        root = _root_id(os.path.join(proc, pid, "root"))
        if root is None or root == ours:
            found.append(pid)
    return found


def scheduler(proc="/proc", run_dir=SYSTEMD_DIR):
    """{'kind': 'systemd'|'cron', 'running': bool}: the scheduler the roles use and whether it runs."""
    if systemd_running(run_dir):
        return {"kind": "systemd", "running": True}
    return {"kind": "cron", "running": bool(cron_daemons(proc))}


def nearest_existing(path):
    """The path itself or its nearest existing parent (the filesystem the tree will live on)."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and path != "/":
        path = os.path.dirname(path)
    return path


def acl_support(directory):
    """(True|False|None, reason): can a default POSIX ACL be set on a directory created here?

    A directory that already has a default ACL (a laid-out cache root) answers without a probe;
    else a temporary directory is created and removed again. None when the probe could not run.
    """
    try:
        os.getxattr(directory, ACL_DEFAULT)
        return True, "default ACLs supported (set on %s)" % directory
    except OSError as exc:
        if exc.errno in ACL_UNSUPPORTED:
            return False, "the filesystem of %s does not support POSIX ACLs" % directory
    try:
        tmp = tempfile.mkdtemp(prefix=".mlinfra-preflight-", dir=directory)
    except OSError as exc:
        return None, "cannot create a test directory in %s: %s" % (directory, os.strerror(exc.errno))
    try:
        value = encode_acl([(USER_OBJ, 7, 0), (GROUP_OBJ, 7, 0), (OTHER, 5, 0)])
        os.setxattr(tmp, ACL_DEFAULT, value)
        return True, "default ACLs supported"
    except OSError as exc:
        if exc.errno in ACL_UNSUPPORTED:
            return False, "the filesystem of %s does not support POSIX ACLs" % directory
        if exc.errno == errno.EPERM:
            return None, "not allowed to set an ACL in %s" % directory
        return None, "ACL probe failed in %s: %s" % (directory, os.strerror(exc.errno))
    finally:
        os.rmdir(tmp)


def missing_commands(requirements, search_path=SEARCH_PATH):
    """The requirements ({command, package, why}) whose command is not found (absolute or on PATH)."""
    missing = []
    for req in requirements:
        cmd = req["command"]
        if os.path.isabs(cmd):
            found = os.path.isfile(cmd) and os.access(cmd, os.X_OK)
        else:
            found = shutil.which(cmd, path=search_path) is not None
        if not found:
            missing.append(dict(req))
    return missing
