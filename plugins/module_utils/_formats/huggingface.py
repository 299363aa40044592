# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HuggingFace hub cache: unit = a revision (snapshot) of a repo; blobs shared between revisions.

Every layout huggingface_hub writes is read: 0.x/1.x (``<repo>/blobs/<etag>`` regular files) and 2.x
with its cache-wide store of Xet files (``blobs/<2 hex>/<xet hash>`` read-only payloads, a
``.huggingface-shared-blobs`` marker, ``<hash>.refs`` manifests, ``<hash>.lock`` flock files, each
repo's ``blobs/<etag>`` a relative symlink into it; ``HF_HUB_DISABLE_SHARED_BLOBS`` gives the 0.x
layout). A store payload is a shared object of every revision whose repo blob links to it: it
counts once, and it goes after the last linking repo blob went, decided again from the filesystem
under the store entry's own lock (``sweep_store``), the manifest rewritten to what still links.
When the cache is an ``HF_HOME`` (hub, xet, assets), every file of the Xet chunk and shard caches,
its logs and every ``assets/`` file is a unit of its own, ordered by last use with the revisions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import time

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import (
    Collector,
    Format,
    _parts,
    names,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    O_DIR,
    MemberFileError,
    open_parent,
    open_subdir,
    read_member_file,
    scan,
)

HF_REF_MAX = 256  # refs/<name> holds a 40-hex commit id (huggingface_hub writes just that)
HF_MANIFEST_MAX = 4 << 20  # a store manifest: one "<repo>/blobs/<etag>" line per linking repo blob
# linked_since looks at a repo's snapshots again for each revision leaving with blobs of its own
# (before they move and after), reading only what changed since the walk began. In one run it
# reads at most this many times the snapshot entries the walk saw in that repo, plus the slack:
# a member who keeps changing a big snapshot directory cannot make root's run units x entries
# long; past it, that repo's blobs stay for a later run (which frees them as orphan blobs)
LINKED_READ_FACTOR = 4
LINKED_READ_SLACK = 10000
HF_STORE_LOCK_WAIT = 2.0  # seconds a run waits in all for store entry locks before leaving them to a later run

_HF_REPO = re.compile(r"^(models|datasets|spaces)--")
_XET_HASH = re.compile(r"^[0-9a-f]{64}$")
_STORE_MARKER = ".huggingface-shared-blobs"
_STORE_MARKER_TEXT = b"1\n"  # SHARED_BLOBS_LAYOUT_VERSION, as huggingface_hub writes it
# HF_HOME's other caches: kind of a unit per file (the Xet chunk and shard caches, its logs, assets)
_XET_KINDS = {"chunk-cache": "xet chunk", "shard-cache": "xet shard", "logs": "xet log"}
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK


def _store_offset(parts):
    """Index of the store's ``blobs`` in ``parts`` (the hub is the root or its ``hub/``), else -1."""
    if parts and parts[0] == "blobs":
        return 0
    if len(parts) > 1 and parts[0] == "hub" and parts[1] == "blobs":
        return 1
    return -1


def store_target(target, depth):
    """The xet hash a repo blob link points to (``../`` * depth + ``blobs/<xx>/<hash>``), else None."""
    tparts = target.split("/")
    if len(tparts) != depth + 3 or any(p != ".." for p in tparts[:depth]) or tparts[depth] != "blobs":
        return None
    xx, h = tparts[depth + 1], tparts[depth + 2]
    if _XET_HASH.match(h) and xx == h[:2]:
        return h
    return None


def _hf_offset(parts):
    if parts and _HF_REPO.match(parts[0]):
        return 0
    if len(parts) > 1 and parts[0] == "hub" and _HF_REPO.match(parts[1]):
        return 1
    return -1


class _Times:
    __slots__ = ("st_atime", "st_mtime")

    def __init__(self, atime, mtime):
        self.st_atime = atime
        self.st_mtime = mtime

    def __getstate__(self):
        return (self.st_atime, self.st_mtime)

    def __setstate__(self, state):
        self.st_atime, self.st_mtime = state


class _HFRepo:
    __slots__ = ("prefix", "blobs", "links", "snapshots", "refs", "no_exist", "incomplete")

    def __init__(self, prefix):
        self.prefix = prefix
        self.blobs = {}  # blob name -> st (a regular file, or a link into the shared store)
        self.links = {}  # blob name -> xet hash of the store payload it links to
        self.snapshots = {}  # rev -> Unit (own files: non-symlinks, symlinks)
        self.refs = {}  # ref path -> rev
        self.no_exist = set()
        self.incomplete = []

    def __getstate__(self):
        return tuple(getattr(self, name) for name in _HFRepo.__slots__)

    def __setstate__(self, state):
        for name, value in zip(_HFRepo.__slots__, state, strict=True):
            setattr(self, name, value)


class _HFCollector(Collector):
    BLANK_KEEP = ("store",)  # the marked store, found by the walk above the shards

    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.repos = {}
        self.snap_blobs = {}  # (repo, rev) -> set(blob)
        self.lock_dirs = {}  # repo -> prefix of .locks/<repo>
        self.store = None  # prefix of the marked shared store (hub/blobs), None when there is none
        self.payloads = {}  # xet hash -> (path, st) of a store payload
        # repo -> {directory below snapshots (a tuple): (inode, ctime_ns) at walk time}, and the
        # entries the walk saw there: what linked_since needs not read again, and its bound
        self.snap_dirs = {}
        self.snap_entries = {}

    def compact(self):
        # a blob's and a payload's times are all the report's finish reads of their stat
        for r in self.repos.values():
            r.blobs = {b: _Times(st.st_atime, st.st_mtime) for b, st in r.blobs.items()}
        self.payloads = {h: (p, _Times(st.st_atime, st.st_mtime)) for h, (p, st) in self.payloads.items()}

    def merge(self, other):
        Collector.merge(self, other)
        for key, r in other.repos.items():
            mine = self.repos.get(key)
            if mine is None:
                self.repos[key] = r
                continue
            mine.blobs.update(r.blobs)
            mine.links.update(r.links)
            mine.snapshots.update(r.snapshots)
            mine.refs.update(r.refs)
            mine.no_exist |= r.no_exist
            mine.incomplete.extend(r.incomplete)
        for key, blobs in other.snap_blobs.items():
            self.snap_blobs.setdefault(key, set()).update(blobs)
        self.lock_dirs.update(other.lock_dirs)
        self.payloads.update(other.payloads)
        for key, dirs in other.snap_dirs.items():
            self.snap_dirs.setdefault(key, {}).update(dirs)
        for key, n in other.snap_entries.items():
            self.snap_entries[key] = self.snap_entries.get(key, 0) + n

    def _repo(self, parts, off):
        key = parts[off]
        r = self.repos.get(key)
        if r is None:
            r = self.repos[key] = _HFRepo(parts[: off + 1])
        return r

    def enter(self, parts, st, d):
        soff = _store_offset(parts)
        if soff >= 0 and len(parts) == soff + 1:
            try:
                marked = read_member_file(d.fd, "blobs/" + _STORE_MARKER, 64) == _STORE_MARKER_TEXT
            except (MemberFileError, OSError):
                marked = False
            if marked:
                self.store = parts
            return True
        off = _hf_offset(parts)
        if off >= 0 and len(parts) == off + 1:
            self._repo(parts, off)  # an empty skeleton too: post_prune removes it
        elif off >= 0 and len(parts) == off + 3 and parts[off + 1] == "snapshots":
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

    def visit(self, d):
        """As ``Collector.visit``, but a repo's ``blobs`` directory, a snapshot's directories and
        a store bucket (most entries of a hub) are classified once, not entry by entry: their
        entries are these visits' own, ``entry`` sees the others."""
        base = _parts(d.rel)
        off = _hf_offset(base)
        store = self.store
        if off >= 0 and len(base) >= off + 2:
            sub = base[off + 1]
            if sub == "snapshots":
                name = base[off]
                dirs = self.snap_dirs.get(name)
                if dirs is None:
                    dirs = self.snap_dirs[name] = {}
                dirs[base[off + 2 :]] = (d.st.st_ino, d.st.st_ctime_ns)
                self.snap_entries[name] = self.snap_entries.get(name, 0) + len(d.entries) + 1
            if sub == "blobs" and len(base) == off + 2:
                return self._visit_blobs(d, base, off)
            if sub == "snapshots" and len(base) >= off + 3:
                return self._visit_snapshot(d, base, off)
        elif store is not None and len(base) == len(store) + 1 and base[:-1] == store:
            return self._visit_bucket(d, base)
        return Collector.visit(self, d)

    def _dirs_and_files(self, d, base):
        """Count ``d`` itself and enter its subdirectories (``enter``), as ``Collector.visit``
        does; the other entries, to classify."""
        self.dir_disk += d.st.st_blocks * 512
        files = []
        for name, st in d.entries:
            if st.st_mode & _S_IFMT == _S_IFDIR:
                if self.enter(base + (name,), st, d) is False:
                    d.skip.add(name)
            else:
                files.append((name, st))
        return files

    def _visit_blobs(self, d, base, off):
        """A repo's ``blobs``: its blobs (files, or links into the shared store), downloads in progress."""
        repo = self._repo(base, off)
        rname = repo.prefix[-1]
        for name, st in self._dirs_and_files(d, base):
            kind = st.st_mode & _S_IFMT
            parts = base + (name,)
            if name.endswith(".incomplete"):
                self.add(rname + "/blobs/" + name, "incomplete download", parts, st)
                repo.incomplete.append(name)
            elif kind == _S_IFREG:
                repo.blobs[name] = st
                self.add_shared((rname, name), st, parts)
            elif kind == _S_IFLNK and not name.startswith("."):
                try:
                    h = store_target(os.readlink(name, dir_fd=d.fd), 2)
                except OSError:
                    h = None
                if h is None:
                    self.other(st)
                else:
                    repo.blobs[name] = st
                    repo.links[name] = h
                    self.add_shared((rname, name), st, parts)
            else:
                self.other(st)

    def _visit_snapshot(self, d, base, off):
        """A snapshot directory (or one below it): its links name the revision's blobs."""
        repo = self._repo(base, off)
        rev = base[off + 2]
        key = repo.prefix[-1] + "@" + rev
        # a link's target: '..' up to the repo, then blobs/<name>
        pre = "../" * (len(base) - off - 1) + "blobs/"
        npre = len(pre)
        u = blobs = None
        for name, st in self._dirs_and_files(d, base):
            if st.st_mode & _S_IFMT != _S_IFLNK:
                self.add(key, "revision", base[: off + 3], st)
                continue
            try:
                target = os.readlink(name, dir_fd=d.fd)
            except OSError:
                target = ""
            if u is None:
                u = self.unit(key, "revision")
            u.files += 1
            u.own_size += st.st_size
            u.own_disk += st.st_blocks * 512  # targets over 60 bytes take a block on ext4
            # the link's mtime is when that file was downloaded; its atime is not a use
            # (readlink, ours included, updates it)
            if st.st_mtime > u.mtime:
                u.mtime = st.st_mtime
            if target.startswith(pre):
                blob = target[npre:]
                if blob and "/" not in blob and blob not in (".", ".."):
                    if blobs is None:
                        blobs = self.snap_blobs.setdefault((base[off], rev), set())
                    blobs.add(blob)

    def _visit_bucket(self, d, base):
        """A bucket of the shared store (``blobs/<xx>``): payloads; manifests and locks are other."""
        xx = base[-1]
        for name, st in self._dirs_and_files(d, base):
            if _XET_HASH.match(name) and name[:2] == xx and st.st_mode & _S_IFMT == _S_IFREG:
                parts = base + (name,)
                self.add_shared(("store", name), st, parts)
                self.payloads[name] = (parts, st)
            else:
                self.other(st)

    def entry(self, parts, name, st, d):
        off = _hf_offset(parts)
        if off < 0 or len(parts) < off + 3:
            if len(parts) > 1 and parts[0] in ("xet", "assets") and stat.S_ISREG(st.st_mode):
                self._cache_file(parts, st)
            else:
                self.other(st)  # the marker, manifests, store locks, anything else
            return
        repo = self._repo(parts, off)
        sub = parts[off + 1]
        if sub == "refs":
            try:
                rev = read_member_file(d.fd, name, HF_REF_MAX).decode("ascii", "replace").strip()
            except MemberFileError:
                rev = ""  # a FIFO, a link, a huge file: no revision; the ref stays, in no unit
            repo.refs["/".join(parts[off + 2 :])] = (rev, parts, st)
        elif sub == ".no_exist":
            self.other(st)
        else:
            self.other(st)

    def _cache_file(self, parts, st):
        """A file of HF_HOME's Xet cache (chunk, shard, log) or assets cache: a unit of its own."""
        if parts[0] == "assets":
            kind = "asset"
        else:
            kind = next((k for sub, k in _XET_KINDS.items() if sub in parts[1:-1]), None)
            if kind is None:
                self.other(st)  # staging, upload sessions: hf_xet's work in progress
                return
        self.add("/".join(parts), kind, parts, st)

    def _blob_times(self, repo, b):
        """Times of repo blob ``b``: the payload's for a store link; never a link's own atime
        (reading the link, as every walk does, moves it)."""
        h = repo.links.get(b)
        if h is None:
            return repo.blobs[b]
        if h in self.payloads:
            return self.payloads[h][1]
        return _Times(0.0, repo.blobs[b].st_mtime)

    def _read_path(self, repo, b):
        """What reading repo blob ``b`` reads: its store payload, or the blob itself."""
        h = repo.links.get(b)
        if h is not None and h in self.payloads:
            return self.payloads[h][0]
        return repo.prefix + ("blobs", b)

    def _link_store(self, u, repo_name, blobs):
        """Attach the store payloads the repo blobs ``blobs`` link to (once per unit)."""
        repo = self.repos[repo_name]
        for b in blobs:
            h = repo.links.get(b)
            if h is not None and h in self.payloads and ("store", h) not in u.shared:
                u.shared.append(("store", h))
                self.shared[("store", h)].refs += 1

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
                u.touch(self._blob_times(repo, b))
            u.read_paths = [self._read_path(repo, b) for b in own]
            self._link_store(u, repo_name, present)
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
            for b in repo.blobs:
                sid = (repo_name, b)
                if self.shared[sid].refs == 0:
                    s = self.shared.pop(sid)
                    u = self.unit(repo_name + "/blobs/" + b, "orphan blob")
                    u.own_size += s.size
                    u.own_disk += s.disk
                    u.files += 1
                    u.touch(self._blob_times(repo, b))
                    u.paths = list(s.paths)
                    if b in repo.links:
                        u.read_paths = [self._read_path(repo, b)]
                    u.linkable = (sid,)  # a revision downloaded during the prune may link it
                    self._link_store(u, repo_name, [b])
                    if lockdir is not None:
                        u.locks.append(lockdir)
            for name in repo.incomplete:
                u = self.units.get(repo_name + "/blobs/" + name)
                if u is not None and lockdir is not None:
                    u.locks.append(lockdir)
        # the engine never moves a store payload: sweep_store removes it under its own lock
        for h in self.payloads:
            self.shared[("store", h)].paths = []
        return list(self.units.values())

    def finish(self):
        """As Collector.finish, then each unit's ``disk``/``size`` for reports: a shared blob or
        payload split between the units that link to it, so units add up to the cache once."""
        col = self.collection(self.finish_units())
        users = {}
        shared = col.shared
        for u in col.units:
            u.size, u.disk = u.own_size, u.own_disk
            for sid in u.shared:
                if sid in shared:
                    us = users.get(sid)
                    if us is None:
                        users[sid] = [u]
                    else:
                        us.append(u)
        for sid in [sid for sid in col.shared if sid not in users]:
            s = col.shared.pop(sid)  # a payload no repo links to: outside any unit (sweep_store's)
            col.other_size += s.size
            col.other_disk += s.disk
            col.other_files += s.files
        for sid, us in users.items():
            s = shared[sid]
            n = len(us)
            if n == 1:
                us[0].size += s.size
                us[0].disk += s.disk
                continue
            for i, u in enumerate(sorted(us, key=lambda x: x.key)):
                u.size += s.size // n + (s.size % n if i == 0 else 0)
                u.disk += s.disk // n + (s.disk % n if i == 0 else 0)
        links = {}
        for r in self.repos.values():
            for b, h in r.links.items():
                links.setdefault(h, []).append(r.prefix + ("blobs", b))
        col.store = self.store
        col.store_links = links
        col.payloads = self.payloads
        col.repo_prefix = {name: r.prefix for name, r in self.repos.items()}
        col.repo_prefixes = sorted(col.repo_prefix.values())
        col.snap_dirs = self.snap_dirs
        col.snap_entries = self.snap_entries
        col.link_reads = {}  # repo -> entries linked_since has read in this run
        return col


class HuggingFaceFormat(Format):
    name = "huggingface"
    description = "HuggingFace hub cache: unit = a revision (snapshot) of a repo; shared blobs freed last"
    collector_class = _HFCollector
    last_use = (
        "the atime of the blobs (or store payloads) only that revision has, the mtime of its snapshot links; "
        "xet and assets files: their own times"
    )
    detect_order = 10
    # cache_prune's trash: hub/.locks, which huggingface_hub's scan_cache_dir() skips (the root
    # when the cache path is HF_HOME, where hub is a subdirectory)
    trash_parents = ((".locks",), ())
    # a repo (hub/<repo> or <repo> when the cache path is the hub) and a store bucket
    # (hub/blobs/<xx>) are walked whole by one worker: a revision never spans two
    shard_depths = (1, 2, 3)

    def shard(self, parts):
        off = _hf_offset(parts)
        if off >= 0:
            return len(parts) == off + 1
        soff = _store_offset(parts)
        return soff >= 0 and len(parts) == soff + 2

    def detect(self, root_fd, top):
        return any(_HF_REPO.match(n) for n in top) or any(_HF_REPO.match(n) for n in names(root_fd, "hub"))

    def linked_since(self, parents, collection, sids, since_ns):
        """The repo blobs among ``sids`` that a snapshot link made since the walk points to: a
        download of another revision with the same file only links the blob that is there (and
        a revision of the repo could be loading through it). Only what changed since the walk
        began is read (``_links_since``); a repo where that passes its bound keeps them all."""
        by_repo = {}
        for sid in sids:
            if sid[0] != "store" and sid[0] in collection.repo_prefix:
                by_repo.setdefault(sid[0], {})[sid[1]] = sid
        linked = set()
        for repo_name, blobs in by_repo.items():
            found = self._links_since(parents, collection, repo_name, since_ns)
            if found is None:
                linked.update(blobs.values())  # replaced or past the bound: keep them, look next run
            else:
                linked.update(sid for b, sid in blobs.items() if b in found)
        return linked

    def _links_since(self, parents, collection, repo_name, since_ns):
        """The blob names the links of ``repo_name``'s snapshots made since ``since_ns`` point to
        (a set), or None when that cannot be told. A directory whose inode and ctime are the
        walk's, from before the run, holds the walk's entries (every entry made, removed or
        renamed moves its ctime, which no member can set): only its subdirectories are looked
        at. Every other directory is read whole. A member who keeps changing a big directory
        makes each look read it: past LINKED_READ_FACTOR times the entries the walk saw there
        (plus LINKED_READ_SLACK) in one run, the repo's blobs stay (a note says so)."""
        prefix = collection.repo_prefix[repo_name]
        spent = collection.link_reads.get(repo_name, 0)
        bound = LINKED_READ_FACTOR * collection.snap_entries.get(repo_name, 0) + LINKED_READ_SLACK
        if spent > bound:
            return None
        pfd, st = parents.lstat(prefix + ("snapshots",))
        if st is None or not stat.S_ISDIR(st.st_mode):
            return set()
        fd = open_subdir(pfd, "snapshots", expect=st)
        if fd is None:
            return None
        gid = collection.gid  # the cache's group: no other directory is entered, as in the walk
        recs = collection.snap_dirs.get(repo_name, {})
        kids = {}
        for sub in recs:
            if sub:
                kids.setdefault(sub[:-1], []).append(sub[-1])
        found = set()
        stack = [((), fd, st)]
        try:
            while stack:
                sub, dfd, dst = stack.pop()
                try:
                    if recs.get(sub) == (dst.st_ino, dst.st_ctime_ns) and dst.st_ctime_ns < since_ns:
                        children = []
                        for name in kids.get(sub, ()):
                            spent += 1
                            try:
                                children.append((name, os.stat(name, dir_fd=dfd, follow_symlinks=False)))
                            except OSError:
                                continue  # gone: so are its links
                    else:
                        entries = scan(dfd)
                        spent += len(entries) + 1
                        children = []
                        for name, est in entries:
                            if stat.S_ISLNK(est.st_mode):
                                try:
                                    head, _sep, blob = os.readlink(name, dir_fd=dfd).rpartition("/")
                                except OSError:
                                    continue
                                if head.endswith("blobs"):
                                    found.add(blob)
                            elif stat.S_ISDIR(est.st_mode):
                                children.append((name, est))
                    for name, cst in children:
                        csub = sub + (name,)
                        if not stat.S_ISDIR(cst.st_mode) or cst.st_dev != st.st_dev or cst.st_gid != gid:
                            continue  # not a directory any more (its links went with it), a mount, not the cache's
                        if (
                            recs.get(csub) == (cst.st_ino, cst.st_ctime_ns)
                            and cst.st_ctime_ns < since_ns
                            and csub not in kids
                        ):
                            continue  # a leaf, as the walk saw it
                        cfd = open_subdir(dfd, name, expect=cst)
                        if cfd is None:
                            return None  # replaced since its lstat
                        stack.append((csub, cfd, cst))
                finally:
                    os.close(dfd)
                if spent > bound:
                    collection.notes.append(
                        "stopped looking for links made during the run in %s/snapshots after %d entries (%d times "
                        "what the walk saw there): the blobs of its revisions removed from here on stay for a "
                        "later run" % ("/".join(prefix), spent, LINKED_READ_FACTOR)
                    )
                    return None
        finally:
            collection.link_reads[repo_name] = spent
            for _sub, dfd, _st in stack:
                os.close(dfd)
        return found

    def post_prune(self, root_fd, collection, removed_keys, records=None):
        """After every run (not only when units went): nested ref directories of removed revisions,
        store payloads no repo blob links to any more (``sweep_store``, under each entry's lock;
        ``records``: see ``store_lock``), and repos left with no snapshot and no blob, whoever left
        them (a killed run too)."""
        from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune

        notes = []
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
        # directories the xet and assets files left empty (never the caches' own xet/<endpoint>/<cache>)
        for u in collection.units:
            if u.key in removed_keys and (u.kind == "asset" or u.kind.startswith("xet ")):
                p = u.paths[0]
                for cut in range(len(p) - 1, 1 if p[0] == "assets" else 3, -1):
                    if not _prune.rmdir_if_empty(root_fd, p[:cut]):
                        break
        files = disk = 0
        locks = _prune.ProcLocks()
        dev = os.fstat(root_fd).st_dev
        gid = os.fstat(root_fd).st_gid
        # what goes is renamed into a trash first (a run killed while deleting it never leaves
        # huggingface_hub a repo without its snapshots directory, nor a store entry half gone) and
        # deleted there on the Purger's threads while the next one is looked at
        trash = purger = None
        repos = []
        try:
            for prefix in getattr(collection, "repo_prefixes", ()):
                if _repo_lock_held(root_fd, prefix, locks) or not dir_is_prunable_repo(root_fd, prefix):
                    continue
                if trash is None:
                    trash = _prune.Trash(root_fd, dev, gid, _prune.trash_parents(self))
                    purger = _prune.Purger(trash, locks, gid)
                st = _prune.RemoveStats(gid)
                name = trash.move(prefix, (), st)
                if name is not None:
                    repos.append((prefix, st, purger.submit([name])))
            swept = None
            if getattr(collection, "store", None) is not None and collection.payloads:
                if trash is None:
                    trash = _prune.Trash(root_fd, dev, gid, _prune.trash_parents(self))
                    purger = _prune.Purger(trash, locks, gid)
                swept = sweep_store(root_fd, collection, trash, purger, records)
            gone = []
            for prefix, st, handle in repos:
                st.merge(purger.result(handle))
                if not st.errors and not st.busy:
                    files += st.files
                    disk += st.disk
                    gone.append("/".join(prefix))
            if gone:
                # one note, however many: a nightly prune of a big hub empties thousands
                notes.append(
                    "removed %d repo(s) with no revision left: %s%s"
                    % (len(gone), ", ".join(gone[:5]), ", ..." if len(gone) > 5 else "")
                )
            if swept is not None:
                n, d, busy = swept
                files += n
                disk += d
                if n:
                    notes.append("removed %d shared store payload(s) no repo links to" % n)
                if busy:
                    notes.append("left %d store payload(s) whose lock is held: next run" % busy)
            store = getattr(collection, "store", None)
            if records is not None and store is not None:
                # records of store entries the walk did not find (removed since, by anyone)
                records.forget(store, {"%s_%s.lock" % (h[:2], h) for h in collection.payloads})
            if records is not None and records.taken:
                notes.append(
                    "went on without %d store entry lock(s) found held or unusable by every run for %dh: %s"
                    % (len(records.taken), _prune.TOOL_LOCK_STALE // 3600, ", ".join(records.taken[:5]))
                )
        finally:
            if purger is not None:
                purger.close()
            if trash is not None:
                trash.close()
        collection.cleanup_freed = (files, disk)
        return notes


def _repo_lock_held(root_fd, prefix, locks):
    """True when a process holds a lock in the repo's ``.locks/<repo>`` (a download in progress)."""
    lock_dir = prefix[:-1] + (".locks", prefix[-1])
    dev = os.fstat(root_fd).st_dev
    pfd = open_parent(root_fd, lock_dir + ("x",), dev, ())
    if pfd is None:
        return False
    try:
        for name in os.listdir(pfd):
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and locks.held(st, pfd, name):
                return True
    except OSError:
        return True
    finally:
        os.close(pfd)
    return False


def _link_hash(root_fd, parts, dev):
    """The store hash the repo blob ``parts`` (``<repo>/blobs/<etag>`` below the hub) links to now."""
    pfd = open_parent(root_fd, parts, dev, ())
    if pfd is None:
        return None
    try:
        return store_target(os.readlink(parts[-1], dir_fd=pfd), 2)
    except OSError:
        return None
    finally:
        os.close(pfd)


def _manifest_links(dfd, name, hub):
    """The repo blob paths a manifest lists (validated as huggingface_hub does), None when it is
    missing; raises MemberFileError when it cannot be read safely (the payload is then kept)."""
    try:
        data = read_member_file(dfd, name, HF_MANIFEST_MAX)
    except MemberFileError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        lp = tuple(line.split("/"))
        if len(lp) == 3 and _HF_REPO.match(lp[0]) and lp[1] == "blobs" and lp[2] not in ("", ".", ".."):
            out.append(hub + lp)
    return out


def store_lock(dfd, name, gid, wait=HF_STORE_LOCK_WAIT, records=None, parts=None):
    """flock a store entry's ``<hash>.lock`` as huggingface_hub does (member-writable file: never
    followed, a regular file of the cache group, created 0664 when missing); the fd, or None when
    it is held past ``wait`` seconds or unusable (the entry is then left for a later run).

    With ``records`` (a ``_prune.LockRecords`` of root's state directory) and the lock's ``parts``
    below the cache: a lock found held past the wait, or unusable, by every run for
    ``_prune.TOOL_LOCK_STALE`` is no download in progress but a member keeping root's job away from
    that entry. It is then taken as stale: a duplicate of ``dfd`` is returned (nothing is locked,
    the caller goes on and closes it as it would the lock)."""
    fd = _open_store_lock(dfd, name, gid)
    if fd is not None:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if records is not None:
                    records.seen(parts, False)  # free now: a record of an earlier hold goes
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() >= deadline:
                    os.close(fd)
                    break
            time.sleep(0.05)
    if records is not None and records.stale(parts):
        return os.dup(dfd)
    return None


def _open_store_lock(dfd, name, gid):
    """The entry's lock file opened (made when missing), or None when it is unusable."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dfd)
    except FileNotFoundError:
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o664, dir_fd=dfd)
            os.fchown(fd, -1, gid)
            os.fchmod(fd, 0o664)  # huggingface_hub's own users open it to take the same lock
        except OSError:
            return None
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_gid != gid:
        os.close(fd)
        return None
    return fd


def _rewrite_manifest(dfd, name, keep, hub, gid):
    """Replace the manifest by the lines of the links in ``keep`` (what still links), atomically."""
    body = "".join("/".join(p[len(hub) :]) + "\n" for p in sorted(keep)).encode()
    try:
        old = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        old = None
    tmp = "%s.%d.mlinfra.tmp" % (name, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o664, dir_fd=dfd)
    try:
        os.write(fd, body)
        if old is not None and stat.S_ISREG(old.st_mode):
            os.fchown(fd, old.st_uid, gid)
        else:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o664)  # huggingface_hub appends to it as any member
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(tmp, dir_fd=dfd)
        raise
    os.close(fd)
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)


def sweep_store(root_fd, collection, trash, purger, records=None):
    """Remove the store payloads no repo blob links to any more; (files, bytes, busy).

    Decided from the filesystem as huggingface_hub's ``sweep_shared_blob`` does, but with the walk's
    links too: under the entry's lock, every link the manifest lists and every link the walk saw is
    read again; a payload goes (with its manifest) only when none of them links to it, else the
    manifest is rewritten to the links that still do. A payload that a link points to and that we
    did not see linked (a download after the walk) always appears in its manifest first (it is
    written under the same lock before the link), so it is kept. A payload that goes leaves its
    place under the lock, renamed into ``trash`` (a ``_prune.Trash``), and is deleted there by
    ``purger`` (a ``_prune.Purger`` of that trash), beside the next entries. ``records``: see
    ``store_lock`` (an entry lock a member holds for good delays its sweep by a day, not for ever).
    """
    dev = os.fstat(root_fd).st_dev
    hub = collection.store[:-1]
    gid = os.fstat(root_fd).st_gid
    # one wait for the whole sweep: members holding many entries' locks delay a run by that at most
    deadline = time.monotonic() + HF_STORE_LOCK_WAIT
    # the cheap test first (no lock): a payload every link the walk saw still points to stays;
    # the links are read a repo's blobs directory at a time
    now = _links_now(root_fd, [p for links in collection.store_links.values() for p in links], dev)
    files = disk = busy = 0
    handles = []
    bucket = dfd = None  # the store bucket open now (payloads in hash order: one bucket after the other)
    try:
        for h in sorted(collection.payloads):
            walk_links = collection.store_links.get(h, [])
            if walk_links and all(now.get(p) == h for p in walk_links):
                continue
            ppath, pst = collection.payloads[h]
            if ppath[:-1] != bucket:
                if dfd is not None:
                    os.close(dfd)
                bucket, dfd = ppath[:-1], open_parent(root_fd, ppath, dev, ())
            if dfd is None:
                continue
            got = _sweep_payload(root_fd, dfd, h, ppath, pst, walk_links, hub, dev, gid, deadline, trash, records)
            if got is None:
                busy += 1
            elif got:
                st, names = got
                if st is not None:
                    files += 1
                    disk += st.st_blocks * 512 if st.st_nlink <= 1 else 0
                handles.append(purger.submit(names))
    finally:
        if dfd is not None:
            os.close(dfd)
    for handle in handles:
        purger.result(handle)  # what a purge could not delete stays in the trash: the next run's
    return files, disk, busy


def _links_now(root_fd, paths, dev):
    """``{path: store hash}`` of the repo blob ``paths`` that link into the store now, each
    repo's blobs directory opened once."""
    by_dir = {}
    for p in paths:
        by_dir.setdefault(p[:-1], []).append(p[-1])
    out = {}
    for d, blob_names in by_dir.items():
        pfd = open_parent(root_fd, d + ("x",), dev, ())
        if pfd is None:
            continue
        try:
            for n in blob_names:
                try:
                    out[d + (n,)] = store_target(os.readlink(n, dir_fd=pfd), 2)
                except OSError:
                    continue
        finally:
            os.close(pfd)
    return out


def _sweep_payload(root_fd, dfd, h, ppath, pst, walk_links, hub, dev, gid, deadline, trash, records):
    """sweep_store for the payload ``h`` in the open bucket ``dfd``: None when its lock is held,
    ``()`` when it stays, else ``(lstat of the payload or None, [its names in the trash])``."""
    lock = ppath[:-1] + (h + ".lock",)
    lfd = store_lock(dfd, h + ".lock", gid, max(0.0, deadline - time.monotonic()), records, lock)
    if lfd is None:
        return None
    try:
        try:
            listed = _manifest_links(dfd, h + ".refs", hub)
        except MemberFileError:
            return ()  # unreadable manifest: leak rather than risk, as huggingface_hub does
        cands = set(walk_links) | set(listed or ())
        keep = {p for p in cands if _link_hash(root_fd, p, dev) == h}
        if keep:
            if listed is not None and set(listed) != keep:
                _rewrite_manifest(dfd, h + ".refs", keep, hub, gid)
            return ()
        try:
            st = os.stat(h, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        names = []
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_gid == gid and st.st_ino == pst.st_ino:
            names.append(trash.put(dfd, h))
        else:
            st = None
        try:
            rst = os.stat(h + ".refs", dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            rst = None
        if rst is not None and (stat.S_ISDIR(rst.st_mode) or rst.st_gid != gid):
            with contextlib.suppress(OSError):
                os.unlink(h + ".refs", dir_fd=dfd)  # not a manifest the trash may take: as before
        elif rst is not None:
            names.append(trash.put(dfd, h + ".refs"))
        return st, names
    finally:
        os.close(lfd)


def dir_is_prunable_repo(root_fd, prefix):
    """True when an HF repo dir has no revision left: nothing in ``snapshots`` and, in ``blobs``,
    no download in progress (``.incomplete``); its refs, .no_exist and blobs are then what a
    removal of its last revision, or a run killed during it, left behind."""
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
                left = os.listdir(fd)
            finally:
                os.close(fd)
            if sub == "snapshots" and left:
                return False
            if any(n.endswith(".incomplete") for n in left):
                return False
        return True
    finally:
        os.close(pfd)


# -- cache_verify ---------------------------------------------------------------------------
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_ETAG_ALGO = {64: ("sha256", "sha256", b""), 40: ("gitblob", "sha1", None)}  # etag length -> (label, hashlib, prefix)


def _store_expected(etags):
    """The expected digests of a store payload: one ``algo:<etag>`` per distinct repo blob name."""
    return "|".join("%s:%s" % (_ETAG_ALGO[len(e)][0], e) for e in sorted(set(etags)))


def check_store_payload(item):
    """A shared-store payload against every repo blob name (etag) linking to it, hashed once:
    each etag must match (two different names can only both match by a SHA-256/SHA-1 pair)."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify as v

    wants = [w.partition(":") for w in item["expected"].split("|")]
    fd, st = v._open_target(item["target"], item["ident"], item["ident"][2])
    try:
        if v._sparse(st):
            raise v.Outcome("unverifiable", "sparse file: not read")
        hashes = {}
        for algo, _sep, _want in wants:
            if algo not in hashes:
                h = hashlib.sha256() if algo == "sha256" else hashlib.sha1(usedforsecurity=False)
                if algo == "gitblob":
                    h.update(b"blob %d\0" % st.st_size)
                hashes[algo] = h
        v.update_fd(fd, list(hashes.values()), v._deadline(st.st_size))
    finally:
        os.close(fd)
    digests = {algo: h.hexdigest() for algo, h in hashes.items()}
    actual = "|".join("%s:%s" % (a, digests[a]) for a in sorted(digests))
    if any(digests[algo] != want for algo, _sep, want in wants):
        raise v.Outcome("corrupt", actual)
    return actual


def verify(ctx):
    """A blob's name is its digest: SHA-256 of the content for LFS files, the git blob SHA-1
    (``sha1("blob <size>\\0" + content)``) for small files (huggingface_hub names a blob by the
    hub's ETag). Blobs are what the snapshots' links name; everything else (refs, snapshot files
    that are not links, ``.incomplete`` downloads, ``.no_exist`` markers) is unverifiable.

    A payload of the 2.x shared store (``blobs/<xx>/<xet hash>``, named by the Xet hash, not a
    digest of its content) is checked through the repo blob links that name it: each link
    ``<repo>/blobs/<etag>`` of the same hub whose target is exactly ``../../blobs/<xx>/<hash>``
    (``store_target``: never a link out of the store) makes its etag an expected digest; the payload
    is hashed once against all of them. A payload no link names is unverifiable.

    Quarantine moves a corrupt blob with the snapshot links to it, and a corrupt payload with every
    repo blob link to it and their snapshot links: huggingface_hub downloads the files again, and
    its ``scan_cache_dir`` finds no dangling link."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify

    _verify.register_check("hf_store", check_store_payload, quarantine_store_payload)
    sha256 = _HEX64.match
    sha1 = _HEX40.match
    stores = set()  # hub prefixes whose blobs/ carries huggingface_hub's marker
    payloads = {}  # (hub prefix, hash) -> (path, lstat)
    links = {}  # (hub prefix, hash) -> [(link path, etag)]
    blob_files = []  # (path, lstat, repo prefix, etag) of the repo blobs that are regular files
    snap_links = {}  # (repo prefix, etag) -> [snapshot link paths]: quarantined with their blob
    for d in ctx.walk():
        base = ctx.parts(d)
        off = _hf_offset(base + ("",))
        blobs = off >= 0 and len(base) == off + 2 and base[off + 1] == "blobs"
        snaps = off >= 0 and len(base) >= off + 3 and base[off + 1] == "snapshots"
        soff = _store_offset(base)
        if soff >= 0 and len(base) == soff + 1 and ctx.read_small(d.fd, _STORE_MARKER, 64) == _STORE_MARKER_TEXT:
            stores.add(base[:soff])
        in_store = soff >= 0 and len(base) == soff + 2
        for name, st in d.entries:
            parts = base + (name,)
            if stat.S_ISLNK(st.st_mode) and (blobs or snaps):
                try:
                    target = os.readlink(name, dir_fd=d.fd)
                except OSError:
                    continue
                if blobs and (sha256(name) or sha1(name)):
                    h = store_target(target, 2)
                    if h is not None:
                        links.setdefault((base[:off], h), []).append((parts, name))
                elif snaps:
                    etag = _snapshot_blob(target, len(base) - off - 1)
                    if etag is not None:
                        snap_links.setdefault((base[: off + 1], etag), []).append(parts)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if in_store and _XET_HASH.match(name) and name[:2] == base[-1]:
                payloads[(base[:soff], name)] = (parts, st)
            elif blobs and (sha256(name) or sha1(name)):
                blob_files.append((parts, st, base[: off + 1], name))
            else:
                ctx.unverifiable(parts, st)
    for parts, st, repo, name in blob_files:
        unit = [parts] + sorted(snap_links.get((repo, name), ()))
        if sha256(name):
            ctx.check(unit, st, "digest", "sha256:" + name, "sha256 (blob name)")
        else:
            ctx.check(unit, st, "digest", "gitblob:" + name, "git blob sha1 (blob name)")
    for key in sorted(payloads):
        parts, st = payloads[key]
        named = sorted(links.get(key, ())) if key[0] in stores else []
        if not named:
            ctx.unverifiable(parts, st)
            continue
        unit = [parts]
        for lp, etag in named:
            unit.append(lp)
            unit.extend(sorted(snap_links.get((lp[:-2], etag), ())))
        ctx.check(unit, st, "hf_store", _store_expected(e for _lp, e in named), "store payload (repo blob names)")


@contextlib.contextmanager
def quarantine_store_payload(root_fd, item, gid, records=None):
    """cache_verify's guard while it quarantines a store payload (``item.target``, with the repo
    blob links that name it and their snapshot links): the entry's ``<hash>.lock`` held as
    huggingface_hub holds it to publish, so no link to it is made meanwhile. Yields the manifest
    (``<hash>.refs``) to move with the payload, or None (nothing moves) when the lock is held past
    the wait or the manifest lists a link to the payload now that the unit does not hold (one
    made since the check: moving the payload would leave it dangling). ``records``: see
    ``store_lock`` (a lock a member holds for good keeps the payload a day, not for ever)."""
    parts = tuple(item.target)
    dev = os.fstat(root_fd).st_dev
    dfd = open_parent(root_fd, parts, dev, ())
    if dfd is None:
        yield None
        return
    try:
        h = parts[-1]
        lfd = store_lock(dfd, h + ".lock", gid, records=records, parts=parts[:-1] + (h + ".lock",))
        if lfd is None:
            yield None
            return
        try:
            try:
                listed = _manifest_links(dfd, h + ".refs", parts[:-3])
            except MemberFileError:
                listed = None  # unreadable: the unit's links are all that is known, as before
            unit = {tuple(p) for p in item.unit}
            if any(p not in unit and _link_hash(root_fd, p, dev) == h for p in listed or ()):
                yield None
                return
            yield [parts[:-1] + (h + ".refs",)] if listed is not None else []
        finally:
            os.close(lfd)
    finally:
        os.close(dfd)


def _snapshot_blob(target, depth):
    """The blob name a snapshot link points to (``../`` * depth + ``blobs/<name>``), else None."""
    tparts = target.split("/")
    if len(tparts) != depth + 2 or any(p != ".." for p in tparts[:depth]) or tparts[depth] != "blobs":
        return None
    name = tparts[-1]
    return name if _HEX64.match(name) or _HEX40.match(name) else None


HuggingFaceFormat.verifier = staticmethod(verify)
