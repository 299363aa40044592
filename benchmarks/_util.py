"""Helpers shared by the bench_*.py modules: timing, peak RSS of a child, tree generation."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

COLLECTION = Path(__file__).resolve().parents[1]


def run_timed(cmd, **kwargs):
    """Run a command; return (seconds, peak RSS of that child in MB). Raises on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kwargs)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far: report it only when it grew.
    return elapsed, (after / 1024.0 if after > before else None)


def python_timed(code, *args):
    """Run Python code in a fresh interpreter (so its peak RSS is its own).

    The code must print one float: its own elapsed seconds. Returns (seconds, peak RSS MB):
    the peak of the interpreter or of any worker process it forked, whichever is larger (per
    process, not summed: workers run side by side, each about the same size).
    """
    wrapper = (
        "import resource,sys,json\n"
        + code
        + "\nprint(json.dumps(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *args], check=True, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return float(lines[-2]), int(lines[-1]) / 1024.0


def make_tree(root, n_files, files_per_dir=100, size=512, seed_mtime=None):
    """Create n_files small files in directories of files_per_dir entries, two levels deep."""
    data = b"x" * size
    made = 0
    d1 = 0
    while made < n_files:
        top = os.path.join(root, "d%04d" % d1)
        os.makedirs(top, exist_ok=True)
        for d2 in range(100):
            if made >= n_files:
                break
            sub = os.path.join(top, "s%03d" % d2)
            os.mkdir(sub)
            for i in range(min(files_per_dir, n_files - made)):
                p = os.path.join(sub, "f%05d" % i)
                with open(p, "wb") as fh:
                    fh.write(data)
                if seed_mtime is not None:
                    t = seed_mtime(made)
                    os.utime(p, (t, t))
                made += 1
        d1 += 1
    return made


def collection_path(workdir):
    """A PYTHONPATH entry where ansible_collections.mlinfra.shared_cache is this working tree."""
    base = os.path.join(workdir, "coll")
    link = os.path.join(base, "ansible_collections", "mlinfra", "shared_cache")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.islink(link):
        os.symlink(str(COLLECTION), link)
    return base
