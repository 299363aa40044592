"""Helpers that lay out real cache trees for the unit tests (shared by every test module)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

DAY = 86400

# cargo's .global-cache tables root reads (cargo/src/cargo/core/global_cache_tracker.rs, migrations())
CARGO_GLOBAL_CACHE_SCHEMA = """
CREATE TABLE registry_index (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    timestamp INTEGER NOT NULL);
CREATE TABLE registry_crate (registry_id INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
    timestamp INTEGER NOT NULL, PRIMARY KEY (registry_id, name));
CREATE TABLE registry_src (registry_id INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER,
    timestamp INTEGER NOT NULL, PRIMARY KEY (registry_id, name));
"""


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


def tree(path):
    """Every path below ``path`` (relative), links not followed."""
    out = set()
    for dp, dn, fn in os.walk(path):
        for n in dn + fn:
            out.add(os.path.relpath(os.path.join(dp, n), path))
    return out


def run_main(module, capsys, check=False, diff=False, **args):
    """Run a module's main() in this process with ``args``; return its JSON result."""
    from ansible.module_utils.testing import patch_module_args

    args["_ansible_check_mode"] = check
    args["_ansible_diff"] = diff
    with patch_module_args(args):
        try:
            module.main()
        except SystemExit:
            pass
        else:
            raise AssertionError("%s.main() returned without exit_json/fail_json" % module.__name__)
    return json.loads(capsys.readouterr().out)


def run_process(module, tmp_path, **args):
    """Run a module file in its own interpreter, as Ansible does: its warnings come back in the
    result even when controller code imported by other tests would divert them to the display."""
    argsfile = tmp_path / "args.json"
    argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    cmd = [sys.executable, "-m", module.__name__, str(argsfile)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    return json.loads(out.stdout)
