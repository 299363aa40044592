"""Helpers that lay out real cache trees for the unit tests (shared by every test module)."""

from __future__ import annotations

import hashlib
import os
import time

DAY = 86400


def write(path, data=b"x", age_days=None, mtime=None):
    """Create a file (and its parents) with ``data``; set its times ``age_days`` ago or to ``mtime``."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data if isinstance(data, bytes) else data.encode())
    if age_days is not None:
        mtime = time.time() - age_days * DAY
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def age(path, days):
    """Set atime/mtime of path and everything below (links themselves) to ``days`` ago."""
    t = time.time() - days * DAY
    for dp, dn, fn in os.walk(path, topdown=False):
        for n in fn + dn:
            os.utime(os.path.join(dp, n), (t, t), follow_symlinks=False)
    os.utime(path, (t, t), follow_symlinks=False)


def make_hf_repo(hub, repo, revisions, refs):
    """Lay out a repo as huggingface_hub does: blobs by sha256, snapshot symlinks, refs files.

    ``hub`` is a pathlib.Path; ``revisions`` maps a commit to {relative file: bytes}; ``refs``
    maps a ref name to a commit. Returns the repo directory.
    """
    base = hub / repo
    for rev, files in revisions.items():
        for rel, content in files.items():
            digest = hashlib.sha256(content).hexdigest()
            blob = base / "blobs" / digest
            if not blob.exists():
                write(blob, content)
            link = base / "snapshots" / rev / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("../" * (rel.count("/") + 2) + "blobs/" + digest, link)
    for ref, rev in refs.items():
        write(base / "refs" / ref, rev)
    return base
