# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ownership, mode and default POSIX ACL logic of ``cache_dir``.

Private module_utils (leading underscore): the API may change between releases.

POSIX ACLs are read and written as the kernel's extended attributes
(``system.posix_acl_default`` / ``system.posix_acl_access``) in their binary form, encoded
here: a little-endian u32 version (2) followed by 8-byte entries (u16 tag, u16 perm,
u32 id), sorted by tag then id. Doing it in Python means no extra dependency (pylibacl),
no ``setfacl`` process per directory, and it works on the open, verified descriptor the
walker holds (``os.setxattr(fd, ...)``), so no path is ever re-resolved as root.

How entries are changed without following symlinks or being raced:
- directories are changed through the descriptor ``_fs.Walker`` opened with O_NOFOLLOW
  and checked against the lstat it saw (fchown, fchmod, fsetxattr on that fd);
- a regular file is opened relative to its directory with
  O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY, the descriptor is fstat'ed and must be the very
  inode (st_dev, st_ino) that was lstat'ed and still a regular file, then fchown/fchmod act
  on the descriptor. A name swapped for a symlink fails with ELOOP, a FIFO or device swapped
  in is refused by the identity check before anything changes (O_NONBLOCK: opening never
  blocks). Linux has no lchmod, and fchmodat(AT_SYMLINK_NOFOLLOW) depends on the C library
  and /proc, so the descriptor route is the portable safe one;
- symlinks, sockets, FIFOs and device nodes are never changed (counted as skipped);
- a regular file with more than one link is changed only when it already has the cache group
  and ``fs.protected_hardlinks`` is 1 (a member can then only have linked a file they own or can
  already read and write); otherwise it may be a link to a file outside the cache and is skipped.

Ownership (docs/security.md): an entry belongs to the cache when its group is the cache group
(setgid directories give that group to everything created in the tree). The routine repair only
acts on those: an entry of another group (a directory a member moved in, with another user's
private files inside) is neither regrouped nor widened, and a directory of another group is not
entered; they are tallied as ``foreign``. Regrouping everything (taking over an old tree) is the
explicit ``adopt`` mode an administrator asks for once. Names matching the ``private`` patterns
(credentials a tool keeps in a shared tool home) are never widened.

Curated caches (catalog ``writers``): the tree belongs to the writers group (``gid``: ownership,
mode bits, the default ACL's group entries) and the cache group (``read_gid``) gets a named ACL
entry that only reads: ``r-x`` on directories, ``r--`` on files (``r-x`` on executables), in the
access ACL of every directory and file and in the default ACL of every directory, so what the
writers create later is readable by the members and by no one else beyond the mode's "other".
Other named entries of a curated entry's access ACL are dropped (nobody but the writers writes).
"""

from __future__ import annotations

import errno
import fnmatch
import grp
import os
import pwd
import re
import stat
import struct

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    Foreign,
    MissingComponent,
    Walker,
    WalkError,
    open_dir_nofollow,
    open_subdir,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import open_below as _open_rel
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._parallel import forked_map
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import (
    ParamError,
    parse_mode,
    validate_cache_root,
    validate_relative,
    world_writable,
)

ACL_DEFAULT = "system.posix_acl_default"
ACL_ACCESS = "system.posix_acl_access"
ACL_EA_VERSION = 2
UNDEFINED_ID = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_TAG_TEXT = {USER_OBJ: "user", USER: "user", GROUP_OBJ: "group", GROUP: "group", MASK: "mask", OTHER: "other"}
_ENTRY = struct.Struct("<HHI")
_HEADER = struct.Struct("<I")
ACL_UNSUPPORTED = frozenset([errno.EOPNOTSUPP, errno.ENOTSUP])
READ_DIR, READ_FILE = 5, 4  # what the cache group gets in a curated tree: r-x, r--

O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
S_IFMT = 0o170000
S_IFREG = stat.S_IFREG
S_IFDIR = stat.S_IFDIR
S_IFLNK = stat.S_IFLNK


# Parallel recurse: directories per worker before the top of the tree stops being split (so
# the hand-out balances uneven subtrees), and how deep the split looks for them.
SPLIT_JOBS_PER_WORKER = 4
SPLIT_MAX_DEPTH = 3
_POOL_FIXER = None  # (fixer, root_fd, managed) of the walk whose workers are being forked


# Names the repair never widens: credentials tools keep in a home the catalog shares (cargo's
# credentials.toml in CARGO_HOME, a .netrc, an npmrc or .pypirc with a token, huggingface_hub's
# token files, keys). The catalog adds more per cache (``private``).
DEFAULT_PRIVATE = (
    "credentials",
    "credentials.toml",
    ".credentials.toml",
    ".netrc",
    ".pypirc",
    ".npmrc",
    "npmrc",
    ".git-credentials",
    "token",
    "stored_tokens",
    "auth.json",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
)


class PermsError(ValueError):
    """Bad input found before anything was changed."""


def private_matcher(patterns):
    """A ``match(name)`` callable for glob ``patterns`` (one compiled expression), or None."""
    patterns = [p for p in patterns or () if p]
    if not patterns:
        return None
    for p in patterns:
        if "/" in p:
            raise PermsError("private: %r names a path; give a file name or glob (e.g. credentials.toml)" % p)
    return re.compile("|".join("(?:%s)" % fnmatch.translate(p) for p in patterns)).match


# --------------------------------------------------------------------------- ACL encoding


def encode_acl(entries):
    """Binary xattr value for [(tag, perm, id)]; entries are sorted as the kernel requires."""
    out = [_HEADER.pack(ACL_EA_VERSION)]
    for tag, perm, ident in sorted(entries, key=lambda e: (e[0], e[2])):
        if tag not in _TAG_TEXT or not 0 <= perm <= 7:
            raise ValueError("invalid ACL entry %r" % ((tag, perm, ident),))
        out.append(_ENTRY.pack(tag, perm, ident if tag in (USER, GROUP) else UNDEFINED_ID))
    return b"".join(out)


def decode_acl(data):
    """[(tag, perm, id)] from a binary xattr value; ValueError when it is not a version 2 ACL."""
    if len(data) < 4 or (len(data) - 4) % 8:
        raise ValueError("not a POSIX ACL xattr value (length %d)" % len(data))
    (version,) = _HEADER.unpack_from(data)
    if version != ACL_EA_VERSION:
        raise ValueError("unsupported POSIX ACL xattr version %d" % version)
    return [_ENTRY.unpack_from(data, off) for off in range(4, len(data), 8)]


def _perm_text(perm):
    return ("r" if perm & 4 else "-") + ("w" if perm & 2 else "-") + ("x" if perm & 1 else "-")


def acl_text(entries, prefix="default:"):
    """getfacl-like lines: ['default:user::rwx', 'default:group:cache:rwx', ...]."""
    lines = []
    for tag, perm, ident in sorted(entries, key=lambda e: (e[0], e[2])):
        qual = ""
        if tag == USER:
            qual = _user_name(ident)
        elif tag == GROUP:
            qual = _group_name(ident)
        lines.append("%s%s:%s:%s" % (prefix, _TAG_TEXT[tag], qual, _perm_text(perm)))
    return lines


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def wanted_default_acl(existing, mode, gid, read_gid=None):
    """The default ACL entries a shared directory needs, merged over ``existing`` ones.

    Equivalent to ``setfacl -d -m u::<u>,g::<g>,g:<group>:<g>,o::<o>``: the owner, owning
    group, the named cache group and others get the permissions of ``mode``; named entries
    someone added for other users or groups are kept; the mask is recomputed as the union
    of the group class, as setfacl does. With ``read_gid`` (a curated tree) that group gets a
    read-only entry, ``g:<read group>:r-x``.
    """
    ubits, gbits, obits = (mode >> 6) & 7, (mode >> 3) & 7, mode & 7
    mine = (gid, read_gid)
    keep = [e for e in (existing or []) if e[0] in (USER, GROUP) and not (e[0] == GROUP and e[2] in mine)]
    entries = [(USER_OBJ, ubits, UNDEFINED_ID), (GROUP_OBJ, gbits, UNDEFINED_ID), (GROUP, gbits, gid)]
    if read_gid is not None and read_gid != gid:
        entries.append((GROUP, READ_DIR, read_gid))
    entries += keep
    entries.append((OTHER, obits, UNDEFINED_ID))
    mask = 0
    for tag, perm, _id in entries:
        if tag in (USER, GROUP_OBJ, GROUP):
            mask |= perm
    entries.append((MASK, mask, UNDEFINED_ID))
    return sorted(entries, key=lambda e: (e[0], e[2]))


def wanted_access_acl(mode, read_gid, perm):
    """The access ACL of an entry of a curated tree: the mode's owner, group and other bits and
    ``g:<read group>:<perm>``; the mask is the union of the group class (so the mode is unchanged)."""
    gbits = (mode >> 3) & 7
    return [
        (USER_OBJ, (mode >> 6) & 7, UNDEFINED_ID),
        (GROUP_OBJ, gbits, UNDEFINED_ID),
        (GROUP, perm, read_gid),
        (MASK, gbits | perm, UNDEFINED_ID),
        (OTHER, mode & 7, UNDEFINED_ID),
    ]


def read_acl(fd, name=ACL_DEFAULT):
    """Decoded ACL of an open descriptor, [] when it has none. OSError EOPNOTSUPP when unsupported."""
    try:
        data = os.getxattr(fd, name)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return []
        raise
    try:
        return decode_acl(data)
    except ValueError:
        return []


# --------------------------------------------------------------------------- input


def resolve_owner(owner):
    """uid for a user name or a numeric id; None stays None. PermsError for unknown names."""
    if owner is None or owner == "":
        return None
    text = str(owner)
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise PermsError("owner: no such user %r on this host (create it first or give a numeric uid)" % text) from None


def resolve_group(group):
    if group is None or group == "":
        return None
    text = str(group)
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise PermsError(
            "group: no such group %r on this host (create it first, e.g. with ansible.builtin.group)" % text
        ) from None


def protected_hardlinks():
    try:
        with open("/proc/sys/fs/protected_hardlinks") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


def attrs_of(st, acl_entries):
    """The attributes shown in diff mode for one directory."""
    if st is None:
        return {"state": "absent"}
    return {
        "state": "directory",
        "owner": _user_name(st.st_uid),
        "group": _group_name(st.st_gid),
        "mode": "%04o" % stat.S_IMODE(st.st_mode),
        "default_acl": acl_text(acl_entries) if acl_entries is not None else None,
    }


# --------------------------------------------------------------------------- the work

_open, _fstat, _fchown, _fchmod, _close = os.open, os.fstat, os.fchown, os.fchmod, os.close


def fix_file(dir_fd, name, st, want, gid, only_gid=None):
    """Give regular file ``name`` (lstat'ed as ``st``) group ``gid`` and mode ``want``, safely.

    Opened relative to ``dir_fd`` with O_NOFOLLOW|O_NONBLOCK (a symlink fails with ELOOP, a
    FIFO does not block); the descriptor must be the lstat'ed inode and a regular file (and,
    with ``only_gid``, still of that group: the routine repair never regroups), then
    fchown/fchmod act on it. Returns None, or the OSError that stopped it (nothing changed
    when the entry was swapped).
    """
    try:
        fd = _open(name, O_FILE, dir_fd=dir_fd)
    except OSError as exc:
        return exc
    try:
        fst = _fstat(fd)
        if fst.st_ino != st.st_ino or fst.st_dev != st.st_dev or (fst.st_mode & S_IFMT) != S_IFREG:
            return OSError(errno.ESTALE, "replaced during the walk; skipped")
        if only_gid is not None and fst.st_gid != only_gid:
            return OSError(errno.ESTALE, "group changed during the walk; skipped")
        if gid is not None and fst.st_gid != gid:
            _fchown(fd, -1, gid)
        if fst.st_mode & 0o7777 != want:
            _fchmod(fd, want)
    except OSError as exc:
        return exc
    finally:
        _close(fd)
    return None


class TreeFixer:
    """Bring a cache directory, its managed subdirectories and (optionally) its content into line.

    ``managed`` directories (the root, every component of ``subdirs``) get exactly ``uid``,
    ``gid`` and ``mode`` plus the default ACL. Content (``recurse``) gets the group ``gid``,
    group permissions from ``mode`` (g+rw on files, g+x where any x bit is set, g+rwx and
    setgid on directories), no world write (unless allowed), no setuid/setgid on files, and
    the default ACL on directories; owners of content are never changed. Only entries that
    differ are written; in check mode nothing is written and the counts are the same.
    """

    def __init__(
        self,
        uid,
        gid,
        mode,
        acl=True,
        check_mode=False,
        allow_world_writable=False,
        one_fs=True,
        adopt=False,
        private=DEFAULT_PRIVATE,
        read_gid=None,
    ):
        self.uid = uid
        self.gid = gid
        self.read_gid = read_gid  # curated: the cache group, which only reads (the module doc)
        self.adopt = adopt
        self.private = private_matcher(private)
        self.cache_gid = gid  # the group that marks what the cache owns (the root's when gid is None)
        self.foreign = Foreign()
        self.mode = mode
        self.acl = acl
        self.check_mode = check_mode
        self.one_fs = one_fs
        self.ww_mask = 0 if allow_world_writable else 0o002
        self.examined = 0
        self.changed = 0
        self.created = []
        self.skipped = {"symlinks": 0, "special": 0, "hardlinks": 0, "private": 0}
        self.errors = []
        self.error_count = 0
        self.other_fs = []
        self.acl_unsupported = set()  # st_dev of filesystems without POSIX ACLs
        self.acl_gid = gid
        self._acl_cache = {}
        self.protected_hardlinks = protected_hardlinks()
        self.before = None
        self.after = None
        self.managed_errors = []  # errors on path or subdirs: the declared state was not reached
        self.workers_used = 0  # processes that walked the content (0: no recurse)

    # ----------------------------------------------------------------- helpers
    def _error(self, rel, exc):
        self.error_count += 1
        if len(self.errors) < 100:
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.errors.append({"path": rel or ".", "error": msg})

    def _want_acl(self, existing):
        key = tuple(existing)
        want = self._acl_cache.get(key)
        if want is None:
            want = wanted_default_acl(existing, self.mode, self.acl_gid, self.read_gid)
            self._acl_cache[key] = want
        return want

    def _acl_step(self, fd, st, rel):
        """Compare and (unless check mode) set the default ACL of a directory. True if it differs."""
        if not self.acl or st.st_dev in self.acl_unsupported:
            return False
        try:
            existing = read_acl(fd)
        except OSError as exc:
            if exc.errno in ACL_UNSUPPORTED:
                self.acl_unsupported.add(st.st_dev)
                return False
            self._error(rel, exc)
            return False
        want = self._want_acl(existing)
        if existing == want:
            return False
        if not self.check_mode:
            try:
                os.setxattr(fd, ACL_DEFAULT, encode_acl(want))
            except OSError as exc:
                if exc.errno in ACL_UNSUPPORTED:
                    self.acl_unsupported.add(st.st_dev)
                    return False
                raise
        return True

    def _access_step(self, fd, st, rel, mode, perm):
        """Curated trees: compare and (unless check mode) set the access ACL of an entry through its
        descriptor (``mode``: its mode after the fix). True if it differs."""
        if not self.acl or st.st_dev in self.acl_unsupported:
            return False
        try:
            existing = read_acl(fd, ACL_ACCESS)
        except OSError as exc:
            if exc.errno in ACL_UNSUPPORTED:
                self.acl_unsupported.add(st.st_dev)
            else:
                self._error(rel, exc)
            return False
        want = wanted_access_acl(mode, self.read_gid, perm)
        if existing == want:
            return False
        if not self.check_mode:
            os.setxattr(fd, ACL_ACCESS, encode_acl(want))
        return True

    def _curated_file(self, dfd, name, st, want, rel):
        """A regular file of a curated tree: group, mode and the read entry, through a verified
        descriptor (as ``fix_file``). Returns True when it differed."""
        try:
            fd = _open(name, O_FILE, dir_fd=dfd)
        except OSError as exc:
            self._error(rel, exc)
            return False
        try:
            fst = _fstat(fd)
            if fst.st_ino != st.st_ino or fst.st_dev != st.st_dev or (fst.st_mode & S_IFMT) != S_IFREG:
                raise OSError(errno.ESTALE, "replaced during the walk; skipped")
            if not self.adopt and fst.st_gid != self.cache_gid:
                raise OSError(errno.ESTALE, "group changed during the walk; skipped")
            differs = False
            if self.gid is not None and fst.st_gid != self.gid:
                differs = True
                if not self.check_mode:
                    _fchown(fd, -1, self.gid)
            if fst.st_mode & 0o7777 != want or differs:
                differs = differs or fst.st_mode & 0o7777 != want
                if not self.check_mode:
                    _fchmod(fd, want)
            perm = READ_FILE | (1 if want & 0o100 else 0)
            return self._access_step(fd, fst, rel, want, perm) or differs
        except OSError as exc:
            self._error(rel, exc)
            return False
        finally:
            _close(fd)

    def _ours(self, st, want_uid):
        """A managed directory found in place is the cache's when root (or the configured owner)
        owns it or it has the cache group; a member's directory put there is not taken over."""
        return st.st_uid in (0, want_uid) or self.cache_gid is None or st.st_gid == self.cache_gid

    def _dir_step(self, fd, st, rel, managed):
        """Fix one directory through its verified descriptor; returns True when it differed."""
        m = st.st_mode & 0o7777
        if managed:
            want_uid = self.uid if self.uid is not None else st.st_uid
            want_mode = self.mode
            if not self.adopt and not self._ours(st, want_uid):
                self._error(
                    rel,
                    OSError(
                        errno.EPERM,
                        "exists but is not the cache's (owner %s, group %s): left alone; move it away, "
                        "or take it over once with adopt" % (_user_name(st.st_uid), _group_name(st.st_gid)),
                    ),
                )
                return False
        else:
            want_uid = st.st_uid
            want_mode = (m | 0o2000 | (self.mode & 0o070)) & ~self.ww_mask
        want_gid = self.gid if self.gid is not None else st.st_gid
        differs = False
        try:
            if st.st_uid != want_uid or st.st_gid != want_gid:
                differs = True
                if not self.check_mode:
                    os.fchown(fd, want_uid if managed else -1, want_gid)
            # fchown may clear setgid: compare against the mode we saw, always write after a chown.
            if m != want_mode or (differs and not self.check_mode):
                if m != want_mode:
                    differs = True
                if not self.check_mode:
                    os.fchmod(fd, want_mode)
            if self._acl_step(fd, st, rel):
                differs = True
            if self.read_gid is not None and self._access_step(fd, st, rel, want_mode, READ_DIR):
                differs = True
        except OSError as exc:
            self._error(rel, exc)
        return differs

    # ----------------------------------------------------------------- phases
    def ensure(self, path, subdirs):
        """Create/fix ``path`` and its ``subdirs``; return an open fd of ``path`` (None in check mode if absent).

        Missing parents of ``path`` are created root-owned, mode 0755 (like ``mkdir -p``). No
        component may be a symlink. Returns (root_fd, managed set of relative paths).
        """
        managed = {""}
        for sub in subdirs:
            parts = sub.split("/")
            for i in range(1, len(parts) + 1):
                managed.add("/".join(parts[:i]))
        try:
            fd = open_dir_nofollow(path, create=not self.check_mode, created=self.created)
        except MissingComponent as exc:  # check mode: it and everything below would be created
            parts = [p for p in path.split("/") if p]
            first = len([p for p in exc.filename.split("/") if p]) - 1
            self.created += ["/" + "/".join(parts[: i + 1]) for i in range(first, len(parts))]
            self.before = attrs_of(None, None)
            if self.acl_gid is None:
                self.acl_gid = 0
            self.examined += len(managed)
            self.changed += len(managed)
            self.created += [path + "/" + r for r in sorted(managed) if r]
            return None, managed
        except WalkError as exc:
            raise PermsError("%s: %s (give the real path)" % (path, exc.strerror)) from None
        root_fd = fd
        st = os.fstat(root_fd)
        self.root_dev = st.st_dev
        try:
            before_acl = read_acl(root_fd) if self.acl else None
        except OSError:
            before_acl = None
        self.before = attrs_of(st, before_acl)
        if self.acl_gid is None:
            self.acl_gid = st.st_gid
        if self.cache_gid is None:
            self.cache_gid = st.st_gid
        self.examined += 1
        first_error = len(self.errors)
        if self._dir_step(root_fd, st, "", True):
            self.changed += 1
        for rel in sorted(r for r in managed if r):
            parent_rel, _sep, name = rel.rpartition("/")
            self._ensure_sub(root_fd, rel, parent_rel, name, path)
        self.managed_errors = self.errors[first_error:]
        return root_fd, managed

    def _ensure_sub(self, root_fd, rel, parent_rel, name, path):
        pfd = os.dup(root_fd) if not parent_rel else None
        try:
            if pfd is None:
                try:
                    pfd = _open_rel(root_fd, parent_rel)
                except OSError as exc:
                    if self.check_mode and exc.errno == errno.ENOENT:
                        # parent is itself to be created: so is this one
                        self.examined += 1
                        self.changed += 1
                        self.created.append(path + "/" + rel)
                        return
                    self._error(rel, exc)
                    return
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            self.examined += 1
            if st is None:
                self.changed += 1
                self.created.append(path + "/" + rel)
                if self.check_mode:
                    return
                os.mkdir(name, 0o700, dir_fd=pfd)
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                cfd = open_subdir(pfd, name, expect=st)
                try:
                    self._dir_step(cfd, st, rel, True)
                finally:
                    os.close(cfd)
                return
            if not stat.S_ISDIR(st.st_mode):
                self._error(rel, OSError(errno.ENOTDIR, "exists and is not a directory (symlinks are not followed)"))
                return
            if self.one_fs and st.st_dev != self.root_dev:
                self.other_fs.append(rel)
                return
            cfd = open_subdir(pfd, name, expect=st)
            if cfd is None:
                self._error(rel, OSError(errno.ESTALE, "replaced while being examined; skipped"))
                return
            try:
                if self._dir_step(cfd, st, rel, True):
                    self.changed += 1
            finally:
                os.close(cfd)
        except OSError as exc:
            self._error(rel, exc)
        finally:
            if pfd is not None:
                os.close(pfd)

    def walk(self, root_fd, managed, workers=1):
        """Recurse: one top-down walk, one lstat per entry, write only what differs.

        With ``workers`` > 1 the top of the tree is fixed here, breadth first, until there are
        enough directories (SPLIT_JOBS_PER_WORKER per worker, or SPLIT_MAX_DEPTH levels);
        those subtrees are then fixed whole by forked workers, handed out one at a time. A
        worker reopens its subtree below ``root_fd`` without following symlinks and goes on
        only when it is the very directory (st_dev, st_ino) this process lstat'ed. Counts,
        errors and results are the same as with one process.
        """
        self.workers_used = 1
        if workers <= 1:
            self._walk_tree(root_fd, "", managed)
            return
        jobs = self._fix_top(root_fd, managed, workers * SPLIT_JOBS_PER_WORKER)
        results = None
        if len(jobs) > 1:
            global _POOL_FIXER
            _POOL_FIXER = (self, root_fd, managed)
            try:
                results = forked_map(_subtree_job, jobs, min(workers, len(jobs)))
            finally:
                _POOL_FIXER = None
            if results is not None:
                self.workers_used = min(workers, len(jobs))
        if results is None:
            results = [self._subtree(root_fd, managed, job) for job in jobs]
        for res in results:
            self._merge(res)

    def _clone(self):
        """A fixer with the same settings and zeroed counts (one per subtree job)."""
        other = TreeFixer.__new__(TreeFixer)
        other.__dict__.update(self.__dict__)
        other.examined = other.changed = other.error_count = 0
        other.skipped = {"symlinks": 0, "special": 0, "hardlinks": 0, "private": 0}
        other.foreign = Foreign()
        other.errors = []
        other.other_fs = []
        other.acl_unsupported = set(self.acl_unsupported)
        other._acl_cache = dict(self._acl_cache)
        other.created = []
        return other

    def _counts(self):
        return {
            "examined": self.examined,
            "changed": self.changed,
            "skipped": self.skipped,
            "errors": self.errors,
            "error_count": self.error_count,
            "other_fs": self.other_fs,
            "acl_unsupported": sorted(self.acl_unsupported),
            "foreign": self.foreign.as_dict(),
        }

    def _merge(self, res):
        self.examined += res["examined"]
        self.changed += res["changed"]
        for key, n in res["skipped"].items():
            self.skipped[key] += n
        self.error_count += res["error_count"]
        self.errors.extend(res["errors"][: max(0, 100 - len(self.errors))])
        self.other_fs.extend(res["other_fs"])
        self.acl_unsupported.update(res["acl_unsupported"])
        self.foreign.merge(res["foreign"])

    def _subtree(self, root_fd, managed, job):
        """Fix the subtree ``job`` = (rel, st_dev, st_ino) with a fresh fixer; return its counts."""
        rel, dev, ino = job
        fixer = self._clone()
        try:
            fd = _open_rel(root_fd, rel)
        except OSError as exc:
            fixer._error(rel, exc)
            return fixer._counts()
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (dev, ino):
                fixer._error(rel, OSError(errno.ESTALE, "directory replaced during the walk; skipped"))
            else:
                fixer._walk_tree(fd, rel, managed)
        finally:
            os.close(fd)
        return fixer._counts()

    def _fix_top(self, root_fd, managed, want_jobs):
        """Fix the top levels breadth first; return the subtrees left to fix as (rel, dev, ino).

        Only one level of directory descriptors is held, and a level is opened only while it
        has fewer than ``want_jobs`` directories.
        """
        walker = self._walker(root_fd)
        level = [(os.dup(root_fd), "", walker.root_st)]
        try:
            for depth in range(1, SPLIT_MAX_DEPTH + 1):
                below = []
                for fd, rel, st in level:
                    item = walker.visit(rel, fd, st)
                    if item is None:
                        continue
                    self._fix_dir(item, managed)
                    below += [(fd, _join(rel, name), name, est) for name, est in walker.subdirs(item)]
                if len(below) >= want_jobs or depth == SPLIT_MAX_DEPTH:
                    return [(crel, est.st_dev, est.st_ino) for _fd, crel, _n, est in below]
                opened = []
                try:
                    for pfd, crel, name, est in below:
                        cfd = walker.open_child(pfd, crel, name, est)
                        if cfd is not None:
                            opened.append((cfd, crel, est))
                except BaseException:
                    for cfd, _r, _s in opened:
                        os.close(cfd)
                    raise
                for fd, _r, _s in level:
                    os.close(fd)
                level = opened
            return []
        finally:
            for fd, _r, _s in level:
                os.close(fd)
            self._absorb(walker)

    def _walk_tree(self, fd, prefix, managed):
        """Fix the whole tree below (and including) the open directory ``fd`` in this process."""
        walker = self._walker(fd, prefix)
        for d in walker.walk():
            self._fix_dir(d, managed)
        self._absorb(walker)

    def _walker(self, fd, prefix=""):
        """The walk of the content: only what the cache owns, unless adopting (see the module doc)."""
        gid = None if self.adopt else self.cache_gid
        return Walker(fd, one_fs=self.one_fs, prefix=prefix, gid=gid)

    def _absorb(self, walker):
        """Take over what a Walker recorded: foreign entries, directories on other filesystems, errors."""
        self.foreign.merge(walker.foreign)
        self.other_fs.extend(walker.other_fs)
        self.error_count += walker.error_count
        for rel, msg in walker.errors:
            if len(self.errors) < 100:
                self.errors.append({"path": rel, "error": msg})

    def _fix_dir(self, d, managed):
        """Fix one directory (unless managed: ``ensure`` did it) and its non-directory entries."""
        rel = d.rel
        examined = changed = 0
        symlinks = special = 0
        if rel not in managed:
            examined += 1
            if self._dir_step(d.fd, d.st, rel, False):
                changed += 1
        protected = self.protected_hardlinks
        check_mode = self.check_mode
        gid = self.gid
        cache_gid = self.cache_gid
        private = self.private
        fadd = self.mode & 0o060
        fx = self.mode & 0o010
        keep = ~(0o6000 | self.ww_mask)
        dfd = d.fd
        curated = self.read_gid is not None
        for name, st in d.entries:
            m = st.st_mode
            fmt = m & S_IFMT
            if fmt == S_IFREG:
                examined += 1
                cur = m & 0o7777
                want = cur | fadd
                if cur & 0o111:
                    want |= fx
                want &= keep
                if want == cur and (gid is None or st.st_gid == gid) and not curated:
                    continue
                if st.st_nlink > 1 and not (protected and st.st_gid == cache_gid):
                    self.skipped["hardlinks"] += 1
                    continue
                if private is not None and private(name) and (want & ~cur or curated):
                    self.skipped["private"] += 1
                    continue
                if curated:
                    if self._curated_file(dfd, name, st, want, _join(rel, name)):
                        changed += 1
                    continue
                if not check_mode:
                    err = fix_file(dfd, name, st, want, gid, None if self.adopt else cache_gid)
                    if err is not None:
                        self._error(_join(rel, name), err)
                        continue
                changed += 1
            elif fmt == S_IFDIR:
                if private is not None and private(name):
                    d.skip.add(name)  # a private directory (keys, tokens) is neither widened nor entered
                    self.skipped["private"] += 1
                continue  # examined when the walk visits it
            elif fmt == S_IFLNK:
                examined += 1
                symlinks += 1
            else:
                examined += 1
                special += 1
        self.examined += examined
        self.changed += changed
        self.skipped["symlinks"] += symlinks
        self.skipped["special"] += special

    def after_attrs(self, root_fd):
        """Root attributes after the run (the intended ones in check mode)."""
        if root_fd is not None and not self.check_mode:
            st = os.fstat(root_fd)
            try:
                acl_entries = read_acl(root_fd) if self.acl else None
            except OSError:
                acl_entries = None
            return attrs_of(st, acl_entries)
        b = self.before or {}
        after = {
            "state": "directory",
            "owner": _user_name(self.uid) if self.uid is not None else b.get("owner", _user_name(os.geteuid())),
            "group": _group_name(self.gid) if self.gid is not None else b.get("group", _group_name(os.getegid())),
            "mode": "%04o" % self.mode,
            "default_acl": None,
        }
        if self.acl and not self.acl_unsupported:
            existing = []
            if root_fd is not None:
                try:
                    existing = read_acl(root_fd)
                except OSError:
                    existing = []
            after["default_acl"] = acl_text(wanted_default_acl(existing, self.mode, self.acl_gid or 0, self.read_gid))
        return after


def _subtree_job(job):
    """Worker side of TreeFixer.walk (module level: what the pool calls in a forked process)."""
    fixer, root_fd, managed = _POOL_FIXER
    return fixer._subtree(root_fd, managed, job)


def _join(rel, name):
    return rel + "/" + name if rel else name


# -- cache_dir and the nightly permission fix-up build their fixer the same way --------------
def cache_dir_fixer(params, check_mode=False, warn=None):
    """(path, subdirs, TreeFixer) for cache_dir's options; raises ParamError/PermsError on bad input.

    ``params``: path, owner, group, mode, subdirs, acl, allow_world_writable, one_fs, adopt (a
    one-off take-over; the nightly command never sets it), private (name patterns added to
    ``_perms.DEFAULT_PRIVATE``, never widened), writers (a curated cache: the tree is that group's
    and ``group`` only reads it).
    """
    path = validate_cache_root(params["path"], "path")
    mode = parse_mode(params.get("mode") or "2775", "mode")
    allow_ww = bool(params.get("allow_world_writable"))
    if world_writable(mode):
        if not allow_ww:
            raise ParamError(
                "mode: %s is world-writable: anyone on the host could replace what every user loads; "
                "use 2775 or 2770 (or set allow_world_writable: true)" % params["mode"]
            )
        if warn is not None:
            warn("mode %04o makes %s world-writable: any local user can poison this cache" % (mode, path))
    subdirs = [validate_relative(sub, "subdirs") for sub in params.get("subdirs") or []]
    group = resolve_group(params.get("group"))
    writers = resolve_group(params.get("writers"))
    if writers is not None and group is None:
        raise ParamError("writers: a curated cache needs group (the cache group, which reads it)")
    fixer = TreeFixer(
        resolve_owner(params.get("owner")),
        group if writers is None else writers,
        mode,
        acl=params.get("acl", True),
        check_mode=check_mode,
        allow_world_writable=allow_ww,
        one_fs=params.get("one_fs", True),
        adopt=bool(params.get("adopt")),
        private=tuple(DEFAULT_PRIVATE) + tuple(p for p in params.get("private") or () if p not in DEFAULT_PRIVATE),
        read_gid=None if writers is None or writers == group else group,
    )
    return path, subdirs, fixer


def fail_on_managed(fixer, path):
    """PermsError when the cache directory or a declared subdir could not be brought into line."""
    if fixer.managed_errors:
        raise PermsError(
            "%s: could not bring the directory or its subdirs into line: %s"
            % (path, "; ".join("%s: %s" % (e["path"], e["error"]) for e in fixer.managed_errors))
        )
