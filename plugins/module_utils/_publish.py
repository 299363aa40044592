# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic publication of a pinned HuggingFace revision into a curated hub cache.

Private module_utils (leading underscore): the API may change between releases.

A curated cache (catalog ``writers``) is read by jobs while the prefetch service account updates
it, so a revision must appear whole or not at all. huggingface_hub 2.4 lays a repository out as
(``file_download._hf_hub_download_to_cache_dir``)::

    <hub>/models--org--name/blobs/<etag>                 content; the etag is the SHA-256 of an
                                                         LFS file, the git blob SHA-1 of a small one
    <hub>/models--org--name/snapshots/<commit>/<path>    relative symlink ../../blobs/<etag>
    <hub>/models--org--name/refs/<revision>              the commit a branch or tag points to
    <hub>/models--org--name/trees/<commit>.json          the commit's file listing (_tree_cache.py)

and a reader resolves ``refs/<revision>`` to a commit, then opens ``snapshots/<commit>/<path>``
(``try_to_load_from_cache``). ``publish`` therefore:

1. stages: a private directory on the same filesystem (``staging``, beside the hub cache) gets a
   hub cache of its own, seeded with hard links of the published blobs that still match their
   names, and huggingface_hub's own ``snapshot_download(revision=<commit>)`` fills it (it
   fetches only what is missing or was found corrupt, and writes the snapshot links itself);
2. verifies every staged blob against its name (SHA-256 or git blob SHA-1);
3. publishes, each step by ``rename`` (atomic on one filesystem): the blobs, then the snapshot
   directory (or, for a commit already published, each missing or wrong link), then the ref.
   Readers see the old revision until the ref is renamed, and the new one whole afterwards; an
   old snapshot stays for the jobs that resolved it.

A published blob whose content no longer matches its name is not seeded, so it is fetched again
and renamed over the bad one (``restored``). The shared blob store of huggingface_hub 2.x (blobs
as symlinks into ``<hub>/blobs``) is not used in a curated cache: the staging download runs with
``HF_HUB_DISABLE_SHARED_BLOBS``, so every published blob is a regular file, as huggingface_hub
writes it when the store is off.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._verify import update_fd

SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")
SHA1_NAME = re.compile(r"^[0-9a-f]{40}$")
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
STAGING_LOCK = ".lock"


class PublishError(Exception):
    """The staged revision is not what its names promise, or the hub cache is not as expected;
    nothing was published."""


def blob_digest(dir_fd, name):
    """(expected, actual) digests of blob ``name`` below ``dir_fd``: SHA-256 of the content for a
    64-hex name, the git blob SHA-1 for a 40-hex name; None when the name is neither or the entry
    is not a regular file (a symlink is never followed)."""
    if SHA256_NAME.match(name):
        h = hashlib.sha256()
    elif SHA1_NAME.match(name):
        h = hashlib.sha1(usedforsecurity=False)
    else:
        return None
    try:
        fd = os.open(name, _O_READ, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if len(name) == 40:
            h.update(b"blob %d\0" % st.st_size)
        update_fd(fd, (h,), float("inf"))  # cache_verify's read loop; the publisher has no deadline
    finally:
        os.close(fd)
    return name, h.hexdigest()


def blob_ok(dir_fd, name):
    pair = blob_digest(dir_fd, name)
    return pair is not None and pair[0] == pair[1]


def _open_dir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def snapshot_links(snapdir):
    """{relative file path: link target} of a snapshot directory (nested directories walked)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(snapdir):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, snapdir)
            out[rel] = os.readlink(full) if os.path.islink(full) else None
    return out


def read_ref(repo, ref):
    try:
        fd = os.open(os.path.join(repo, "refs", ref), _O_READ)
    except OSError:
        return None
    try:
        return os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def corrupt_blobs(repo, names=None):
    """Names of the published blobs of ``repo`` (only ``names`` if given) whose content does not
    match their name."""
    blobs = os.path.join(repo, "blobs")
    if not os.path.isdir(blobs):
        return []
    fd = _open_dir(blobs)
    try:
        todo = _listdir(blobs) if names is None else sorted(set(names) & set(_listdir(blobs)))
        return [n for n in todo if blob_digest(fd, n) is not None and not blob_ok(fd, n)]
    finally:
        os.close(fd)


def _seed(repo, staged_repo):
    """Hard-link the published blobs that match their names into the staging repo; the names of
    those that do not (regular files whose digest differs)."""
    blobs = os.path.join(repo, "blobs")
    os.makedirs(os.path.join(staged_repo, "blobs"), exist_ok=True)
    bad = []
    if not os.path.isdir(blobs):
        return bad
    fd = _open_dir(blobs)
    try:
        for name in _listdir(blobs):
            pair = blob_digest(fd, name)
            if pair is None:
                continue
            if pair[0] != pair[1]:
                bad.append(name)
                continue
            try:
                os.link(name, os.path.join(staged_repo, "blobs", name), src_dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass  # not linkable (another owner, protected_hardlinks): fetched again instead
    finally:
        os.close(fd)
    return bad


def _shareable(staged_repo):
    """Group rw (directories rwx) on what the download staged: huggingface_hub writes some files
    0600 (its tree listing through mkstemp), and under the curated tree's ACL the group bits are
    the mask that lets the cache group's read entry through. Symlinks are never followed."""
    for dirpath, _dirnames, filenames in os.walk(staged_repo):
        os.chmod(dirpath, stat.S_IMODE(os.lstat(dirpath).st_mode) | 0o070)  # noqa: S103 - group only
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o060 != 0o060:
                os.chmod(os.path.join(dirpath, name), stat.S_IMODE(st.st_mode) | 0o060)


def _verify_staged(staged_repo, commit):
    """The staged snapshot's links and blobs are what huggingface_hub writes and match their names;
    returns {rel path: blob name}. PublishError otherwise."""
    snap = os.path.join(staged_repo, "snapshots", commit)
    if not os.path.isdir(snap):
        raise PublishError("the download left no snapshot %s in the staging area" % commit)
    blobs_fd = _open_dir(os.path.join(staged_repo, "blobs"))
    files = {}
    try:
        for rel, target in snapshot_links(snap).items():
            depth = rel.count("/") + 2
            name = os.path.basename(target or "")
            if target != "../" * depth + "blobs/" + name:
                raise PublishError("staged %s is not a link into blobs/ (%r)" % (rel, target))
            pair = blob_digest(blobs_fd, name)
            if pair is None:
                raise PublishError("staged blob %s of %s cannot be verified (not a content digest)" % (name, rel))
            if pair[0] != pair[1]:
                raise PublishError(
                    "downloaded %s does not match its name: expected %s, got %s" % (rel, pair[0], pair[1])
                )
            files[rel] = name
    finally:
        os.close(blobs_fd)
    return files


def _mkdirs(path):
    """mkdir -p; new directories get their group, setgid and ACLs from the curated tree's defaults."""
    if not os.path.isdir(path):
        os.makedirs(path, 0o2775, exist_ok=True)


def _publish_staged(repo, staged_repo, commit, files, ref):
    """Blobs, then the snapshot, then the ref, each by rename. Returns (blobs renamed, links
    renamed, whether the ref moved)."""
    sblobs, pblobs = os.path.join(staged_repo, "blobs"), os.path.join(repo, "blobs")
    for d in ("blobs", "snapshots", "refs"):
        _mkdirs(os.path.join(repo, d))
    renamed = []
    for name in sorted(set(files.values())):
        src, dst = os.path.join(sblobs, name), os.path.join(pblobs, name)
        try:
            if os.path.samestat(os.lstat(src), os.lstat(dst)):
                continue  # the published blob itself, seeded by a hard link
        except FileNotFoundError:
            pass
        os.rename(src, dst)
        renamed.append(name)
    tree = os.path.join("trees", commit + ".json")  # huggingface_hub's listing of the commit, if it wrote one
    if os.path.isfile(os.path.join(staged_repo, tree)) and not os.path.exists(os.path.join(repo, tree)):
        _mkdirs(os.path.join(repo, "trees"))
        os.rename(os.path.join(staged_repo, tree), os.path.join(repo, tree))
    snap_src, snap_dst = os.path.join(staged_repo, "snapshots", commit), os.path.join(repo, "snapshots", commit)
    links = []
    if not os.path.lexists(snap_dst):
        os.rename(snap_src, snap_dst)  # the whole snapshot at once
        links = sorted(files)
    else:
        have = snapshot_links(snap_dst)
        for rel in sorted(files):
            target = os.readlink(os.path.join(snap_src, rel))
            if have.get(rel) == target:
                continue
            _mkdirs(os.path.dirname(os.path.join(snap_dst, rel)))
            dst = os.path.join(snap_dst, rel)
            if os.path.isdir(dst) and not os.path.islink(dst):
                raise PublishError("%s is a directory in the published snapshot; remove it" % dst)
            os.rename(os.path.join(snap_src, rel), dst)  # replaces a wrong link or file atomically
            links.append(rel)
    moved = False
    if ref and read_ref(repo, ref) != commit:
        ref_path = os.path.join(repo, "refs", ref)
        _mkdirs(os.path.dirname(ref_path))
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(ref_path), prefix="." + os.path.basename(ref) + ".")
        try:
            os.write(fd, commit.encode("ascii"))
            os.fchmod(fd, 0o664)
        finally:
            os.close(fd)
        os.rename(tmp, ref_path)
        moved = True
    return renamed, links, moved


def plan(repo, commit, ref, wanted):
    """What a publication would change, without fetching: files of ``wanted`` (rel -> blob name,
    or None when unknown) missing or wrong in the published snapshot, corrupt blobs, a stale ref."""
    snap = os.path.join(repo, "snapshots", commit)
    have = snapshot_links(snap) if os.path.isdir(snap) else {}
    missing = sorted(
        rel
        for rel, name in wanted.items()
        if rel not in have
        or (name and os.path.basename(have[rel] or "") != name)
        or not os.path.exists(os.path.join(snap, rel))
    )
    linked = [os.path.basename(t) for t in have.values() if t]
    return {
        "missing": missing,
        "corrupt": corrupt_blobs(repo, linked),
        "ref_stale": bool(ref) and read_ref(repo, ref) != commit,
    }


def publish(hub, folder, commit, ref, fetch, staging):
    """Publish ``commit`` of the repository cached as ``<hub>/<folder>`` (e.g. models--org--name).

    ``fetch(staging_hub)`` downloads the commit into the hub cache ``staging_hub`` with
    huggingface_hub's own code; ``staging`` is a directory on the hub cache's filesystem (created
    if missing) where that happens, under an exclusive lock. ``ref``: the ref (e.g. ``main``) to
    point at ``commit``, or None. Returns a dict: blobs (renamed in), restored (corrupt blobs
    replaced), links (snapshot entries renamed in), ref_moved, changed.
    """
    _mkdirs(staging)
    if os.stat(staging).st_dev != os.stat(hub).st_dev:
        raise PublishError("staging %s is not on the filesystem of %s: a rename would not be atomic" % (staging, hub))
    lock_fd = os.open(os.path.join(staging, STAGING_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o660)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        for old in _listdir(staging):  # what a crashed run left behind
            if old.startswith("run-"):
                shutil.rmtree(os.path.join(staging, old), ignore_errors=True)
        run = tempfile.mkdtemp(prefix="run-", dir=staging)
        try:
            staged_hub = os.path.join(run, "hub")
            staged_repo = os.path.join(staged_hub, folder)
            repo = os.path.join(hub, folder)
            bad = _seed(repo, staged_repo)
            fetch(staged_hub)
            files = _verify_staged(staged_repo, commit)
            _shareable(staged_repo)
            renamed, links, moved = _publish_staged(repo, staged_repo, commit, files, ref)
        finally:
            shutil.rmtree(run, ignore_errors=True)
    finally:
        os.close(lock_fd)
    restored = sorted(set(bad) & set(renamed))
    return {
        "blobs": renamed,
        "restored": restored,
        "links": links,
        "ref_moved": moved,
        "files": sorted(files),
        "changed": bool(renamed or links or moved),
    }


def is_commit(revision):
    return bool(revision) and SHA1_NAME.match(revision) is not None


def ref_for(revision, ref=None):
    """The ref a curated publication points at the commit: ``ref`` if given, else the revision
    when it is a branch or tag, else ``main`` (a pinned commit is what users get by default)."""
    if ref:
        return ref
    return "main" if is_commit(revision) else revision
