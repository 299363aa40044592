# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HuggingFace hub cache: unit = a revision (snapshot) of a repo; blobs shared between revisions."""

from __future__ import annotations

import os
import re
import stat

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format, names
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    O_DIR,
    MemberFileError,
    open_parent,
    read_member_file,
)

HF_REF_MAX = 256  # refs/<name> holds a 40-hex commit id (huggingface_hub writes just that)

_HF_REPO = re.compile(r"^(models|datasets|spaces)--")


def _hf_offset(parts):
    if parts and _HF_REPO.match(parts[0]):
        return 0
    if len(parts) > 1 and parts[0] == "hub" and _HF_REPO.match(parts[1]):
        return 1
    return -1


class _HFRepo:
    __slots__ = ("prefix", "blobs", "snapshots", "refs", "no_exist", "incomplete")

    def __init__(self, prefix):
        self.prefix = prefix
        self.blobs = {}  # blob name -> st
        self.snapshots = {}  # rev -> Unit (own files: non-symlinks, symlinks)
        self.refs = {}  # ref path -> rev
        self.no_exist = set()
        self.incomplete = []


class _HFCollector(Collector):
    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.repos = {}
        self.snap_blobs = {}  # (repo, rev) -> set(blob)
        self.lock_dirs = {}  # repo -> prefix of .locks/<repo>

    def _repo(self, parts, off):
        key = parts[off]
        r = self.repos.get(key)
        if r is None:
            r = self.repos[key] = _HFRepo(parts[: off + 1])
        return r

    def enter(self, parts, st, d):
        off = _hf_offset(parts)
        if off >= 0 and len(parts) == off + 3 and parts[off + 1] == "snapshots":
            repo = self._repo(parts, off)
            rev = parts[off + 2]
            # not timed: a snapshot directory's mtime moves when anything inside is removed
            u = self.add_dir(repo.prefix[-1] + "@" + rev, "revision", parts, st, timed=False)
            repo.snapshots[rev] = u
            self.snap_blobs.setdefault((parts[off], rev), set())
        elif off >= 0 and len(parts) == off + 3 and parts[off + 1] == ".no_exist":
            self._repo(parts, off).no_exist.add(parts[off + 2])
        elif len(parts) >= 2 and parts[-2] == ".locks" and len(parts) <= 3:
            self.lock_dirs[parts[-1]] = parts
        return True

    def entry(self, parts, name, st, d):
        off = _hf_offset(parts)
        if off < 0 or len(parts) < off + 3:
            self.other(st)
            return
        repo = self._repo(parts, off)
        sub = parts[off + 1]
        if sub == "blobs" and len(parts) == off + 3:
            if name.endswith(".incomplete"):
                self.add(repo.prefix[-1] + "/blobs/" + name, "incomplete download", parts, st)
                repo.incomplete.append(name)
            elif stat.S_ISREG(st.st_mode):
                repo.blobs[name] = st
                self.add_shared((repo.prefix[-1], name), st, parts)
            else:
                self.other(st)
        elif sub == "snapshots" and len(parts) >= off + 4:
            rev = parts[off + 2]
            key = repo.prefix[-1] + "@" + rev
            if stat.S_ISLNK(st.st_mode):
                blob = None
                try:
                    target = os.readlink(name, dir_fd=d.fd)
                except OSError:
                    target = ""
                tparts = target.split("/")
                depth = len(parts) - off - 2  # '..' needed from the link's directory up to the repo
                if (
                    len(tparts) == depth + 2
                    and all(p == ".." for p in tparts[:depth])
                    and tparts[depth] == "blobs"
                    and tparts[-1]
                    and "/" not in tparts[-1]
                    and tparts[-1] not in (".", "..")
                ):
                    blob = tparts[-1]
                u = self.unit(key, "revision")
                u.files += 1
                u.own_size += st.st_size
                u.own_disk += st.st_blocks * 512  # targets over 60 bytes take a block on ext4
                # the link's mtime is when that file was downloaded; its atime is not a use
                # (readlink, ours included, updates it)
                if st.st_mtime > u.mtime:
                    u.mtime = st.st_mtime
                if blob is not None:
                    self.snap_blobs.setdefault((parts[off], rev), set()).add(blob)
            else:
                self.add(key, "revision", parts[: off + 3], st)
        elif sub == "refs":
            try:
                rev = read_member_file(d.fd, name, HF_REF_MAX).decode("ascii", "replace").strip()
            except MemberFileError:
                rev = ""  # a FIFO, a link, a huge file: no revision; the ref stays, in no unit
            repo.refs["/".join(parts[off + 2 :])] = (rev, parts, st)
        elif sub == ".no_exist":
            self.other(st)
        else:
            self.other(st)

    def finish_units(self):
        for (repo_name, _rev), blobs in self.snap_blobs.items():
            for b in blobs:
                if (repo_name, b) in self.shared:
                    self.shared[(repo_name, b)].refs += 1
        for (repo_name, rev), blobs in self.snap_blobs.items():
            repo = self.repos[repo_name]
            u = self.unit(repo_name + "@" + rev, "revision")
            present = [b for b in sorted(blobs) if b in repo.blobs]
            # last use: the blobs only this revision has (loading it reads them); a blob shared
            # with another revision says when *some* revision was used. All blobs if none is own.
            own = [b for b in present if self.shared[(repo_name, b)].refs == 1] or present
            for b in present:
                u.shared.append((repo_name, b))
            for b in own:
                u.touch(repo.blobs[b])
            refs = sorted(r for r, (target, _p, _s) in repo.refs.items() if target == rev)
            label = repo_name.split("--", 1)[1].replace("--", "/") if "--" in repo_name else repo_name
            u.name = "%s %s%s" % (label, rev[:12], (" (%s)" % ", ".join(refs)) if refs else "")
            snap_path = repo.prefix + ("snapshots", rev)
            paths = []
            for _r, (target, p, rst) in sorted(repo.refs.items()):
                if target == rev:
                    paths.append(p)
                    u.files += 1
                    u.own_size += rst.st_size
                    u.own_disk += rst.st_blocks * 512
            if rev in repo.no_exist:
                paths.append(repo.prefix + (".no_exist", rev))
            paths.append(snap_path)
            u.paths = paths
            lockdir = self.lock_dirs.get(repo_name)
            if lockdir is not None:
                u.locks.append(lockdir)
        for repo in self.repos.values():
            for _r, (target, _p, rst) in repo.refs.items():
                if target not in repo.snapshots:
                    self.other(rst)  # a ref to a missing revision: left to huggingface_hub
        # blobs no snapshot references: their own unit, so they can be reclaimed by age
        for repo_name, repo in self.repos.items():
            lockdir = self.lock_dirs.get(repo_name)
            for b, bst in repo.blobs.items():
                sid = (repo_name, b)
                if self.shared[sid].refs == 0:
                    s = self.shared.pop(sid)
                    u = self.unit(repo_name + "/blobs/" + b, "orphan blob")
                    u.own_size += s.size
                    u.own_disk += s.disk
                    u.files += 1
                    u.touch(bst)
                    u.paths = list(s.paths)
                    if lockdir is not None:
                        u.locks.append(lockdir)
            for name in repo.incomplete:
                u = self.units.get(repo_name + "/blobs/" + name)
                if u is not None and lockdir is not None:
                    u.locks.append(lockdir)
        return list(self.units.values())


class HuggingFaceFormat(Format):
    name = "huggingface"
    description = "HuggingFace hub cache: unit = a revision (snapshot) of a repo; shared blobs freed last"
    collector_class = _HFCollector
    last_use = "the atime of the blobs only that revision has, the mtime of its snapshot links"
    detect_order = 10

    def detect(self, root_fd, top):
        return any(_HF_REPO.match(n) for n in top) or any(_HF_REPO.match(n) for n in names(root_fd, "hub"))

    def post_prune(self, root_fd, collection, removed_keys):
        """Remove repos left with no snapshot and no blob (refs, .no_exist, the dir itself)."""
        from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune

        notes = []
        repos = {}
        for u in collection.units:
            if u.kind in ("revision", "orphan blob", "incomplete download"):
                top = u.paths[-1]
                off = _hf_offset(top)
                if off >= 0:
                    repos.setdefault(top[: off + 1], []).append(u.key in removed_keys)
        # nested refs (refs/pr/1) leave their directory behind: remove it once empty
        for u in collection.units:
            if u.kind != "revision" or u.key not in removed_keys:
                continue
            for p in u.paths:
                off = _hf_offset(p)
                if off >= 0 and len(p) > off + 3 and p[off + 1] == "refs":
                    for cut in range(len(p) - 1, off + 2, -1):
                        if not _prune.rmdir_if_empty(root_fd, p[:cut]):
                            break
        for prefix, flags in repos.items():
            if not all(flags):
                continue
            if dir_is_prunable_repo(root_fd, prefix):
                if _prune.remove_path(root_fd, prefix) is not None:
                    notes.append("removed empty repo %s" % "/".join(prefix))
        return notes


def dir_is_prunable_repo(root_fd, prefix):
    """True when an HF repo dir has no snapshot and no blob left (only refs / .no_exist)."""
    dev = os.fstat(root_fd).st_dev
    pfd = open_parent(root_fd, prefix + ("x",), dev, ())
    if pfd is None:
        return False
    try:
        for sub in ("snapshots", "blobs"):
            try:
                fd = os.open(sub, O_DIR, dir_fd=pfd)
            except FileNotFoundError:
                continue
            except OSError:
                return False
            try:
                if os.listdir(fd):
                    return False
            finally:
                os.close(fd)
        return True
    finally:
        os.close(pfd)


# -- cache_verify ---------------------------------------------------------------------------
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def verify(ctx):
    """A blob's name is its digest: SHA-256 of the content for LFS files, the git blob SHA-1
    (``sha1("blob <size>\\0" + content)``) for small files (huggingface_hub names a blob by the
    hub's ETag). Blobs are what the snapshots' links name; everything else (refs, snapshot files
    that are not links, ``.incomplete`` downloads, ``.no_exist`` markers) is unverifiable."""
    sha256 = _HEX64.match
    sha1 = _HEX40.match
    for d in ctx.walk():
        base = ctx.parts(d)
        off = _hf_offset(base + ("",))
        blobs = off >= 0 and len(base) == off + 2 and base[off + 1] == "blobs"
        for name, st in d.entries:
            if not stat.S_ISREG(st.st_mode):
                continue
            parts = base + (name,)
            if blobs:
                if sha256(name):
                    ctx.check(parts, st, "digest", "sha256:" + name, "sha256 (blob name)")
                    continue
                if sha1(name):
                    ctx.check(parts, st, "digest", "gitblob:" + name, "git blob sha1 (blob name)")
                    continue
            ctx.unverifiable(parts, st)


HuggingFaceFormat.verifier = staticmethod(verify)
