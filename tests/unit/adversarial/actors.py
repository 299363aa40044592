"""Real local users for the adversarial tests: a cache group, two members and a stranger.

The threat model (docs/security.md): every member of the cache group is an untrusted local user.
These tests run as root (as the collection's jobs do) and act as members through ``setpriv``
with the member's real uid, gid and supplementary groups, so the kernel decides what a member
can do, not the test.

- ``Actors.create()`` adds the group ``mlcadv<pid>`` and the users ``<group>a`` (alice, member),
  ``<group>b`` (bob, member) and ``<group>c`` (carol, not a member, shares a team group ``<group>t``
  with alice); ``remove()`` deletes them again.
- ``arena()`` makes a world-traversable directory below /var/tmp (pytest's tmp_path is 0700 under
  root's, which no member can enter) with a cache root laid out exactly as ``cache_dir`` does
  (``root:<group>``, 2775, default ACL ``group:<group>:rwx``).
- ``as_user(name, argv|str)`` runs a command as that user; a string is a ``sh -c`` script.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time


class Actor:
    def __init__(self, name):
        pw = pwd.getpwnam(name)
        self.name = name
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid
        self.groups = sorted({g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {pw.pw_gid})

    def _command(self, cmd, env):
        """(argv through setpriv with this user's ids and groups, a minimal environment + ``env``)."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        argv = [
            "setpriv",
            "--reuid=%d" % self.uid,
            "--regid=%d" % self.gid,
            "--groups=%s" % ",".join(str(g) for g in self.groups),
            "--",
        ] + list(cmd)
        base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
        base_env.update(env or {})
        return argv, base_env

    def run(self, cmd, cwd=None, check=True, timeout=60, env=None, input=None):
        """Run ``cmd`` (argv list, or a ``sh -c`` string) as this user; CompletedProcess (text).

        The working directory is ``/`` unless given: the tests' own (root's 0700 temporary copy of
        the collection under ``make test``) is not one a member may enter, and git, for one, fails there.
        """
        argv, base_env = self._command(cmd, env)
        return subprocess.run(
            argv,
            cwd=cwd or "/",
            check=check,
            timeout=timeout,
            env=base_env,
            capture_output=True,
            text=True,
            input=input,
        )

    def popen(self, cmd, cwd=None, env=None):
        """Start ``cmd`` as this user and leave it running (e.g. holding a lock); a Popen."""
        argv, base_env = self._command(cmd, env)
        return subprocess.Popen(
            argv, cwd=cwd or "/", env=base_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def call(self, func, *args):
        """``func(*args)`` computed in a forked child running as this user; its result (through
        JSON). The code is already imported: the tests' copy need not be readable by the user."""
        import json

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(r)
                os.setgroups(self.groups)
                os.setgid(self.gid)
                os.setuid(self.uid)
                os.write(w, json.dumps(func(*args)).encode())
            finally:
                os._exit(0)
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        return json.loads(b"".join(chunks) or b"null")


class Actors:
    """The cache group, alice and bob (members), carol (not a member; team mate of alice)."""

    def __init__(self, prefix):
        self.group = prefix
        self.team = prefix + "t"
        self.names = {"alice": prefix + "a", "bob": prefix + "b", "carol": prefix + "c"}
        self.gid = None
        self.team_gid = None

    @classmethod
    def create(cls, prefix=None):
        self = cls(prefix or "mlcadv%d" % os.getpid())
        self.remove()
        subprocess.run(["groupadd", self.group], check=True)
        subprocess.run(["groupadd", self.team], check=True)
        for who, name in self.names.items():
            groups = {"alice": [self.group, self.team], "bob": [self.group], "carol": [self.team]}[who]
            subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/bin/sh", "--groups", ",".join(groups), name],
                check=True,
            )
        self.gid = grp.getgrnam(self.group).gr_gid
        self.team_gid = grp.getgrnam(self.team).gr_gid
        return self

    def remove(self):
        for name in self.names.values():
            # a helper a test left running as the user (a lock holder) makes userdel refuse, and
            # so does one that is killed but not gone yet (or not reaped: a child of this process)
            subprocess.run(["pkill", "-KILL", "-u", name], check=False, capture_output=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                _reap_children()
                if subprocess.run(["pgrep", "-u", name], check=False, capture_output=True).returncode != 0:
                    break
                time.sleep(0.05)
            subprocess.run(["userdel", name], check=False, capture_output=True)
        # useradd made a private group per user; userdel leaves it when the user was in others
        for g in (*self.names.values(), self.group, self.team):
            subprocess.run(["groupdel", g], check=False, capture_output=True)

    def __getattr__(self, who):
        names = self.__dict__.get("names") or {}
        if who in names:
            return Actor(names[who])
        raise AttributeError(who)


def _reap_children():
    """Reap this process's children that have exited (a killed helper stays a zombie of the
    user's until then, and userdel refuses a user with a process)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def make_arena():
    """A fresh directory below /var/tmp that every user can traverse (0755, root-owned)."""
    base = tempfile.mkdtemp(prefix="mlinfra-adv-", dir="/var/tmp")
    os.chmod(base, 0o755)  # noqa: S103 - members and strangers must traverse it, never write it
    return base


def lay_out_cache(path, gid, mode=0o2775, subdirs=()):
    """Create ``path`` as ``cache_dir`` does (root:gid, mode, default ACL), through the module_utils."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _perms

    fixer = _perms.TreeFixer(0, gid, mode)
    fd, _managed = fixer.ensure(path, list(subdirs))
    if fd is not None:
        os.close(fd)
    return path


def remove_arena(base):
    shutil.rmtree(base, ignore_errors=True)
