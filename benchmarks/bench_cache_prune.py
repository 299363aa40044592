"""cache_prune against the seed's ``find DIR -mtime +N -delete``.

The tree: n_files small files (100 per directory), every other file 200 days old, the rest a day
old. Three identical copies (``cp -a`` keeps the times) are pruned in the same run:

- age prune (``max_age: 100d``, generic format, the module's logic in a fresh interpreter) vs
  ``find COPY -type f -mtime +100 -delete`` on an identical copy: target <= 1.3x
- LRU prune (``max_size`` set so that the same old half must go) vs the age prune: target <= 2.0x
  (it walks twice: sizes and times first, then deletes)

Both prunes use ``age_by: mtime``, find's criterion (``cp -a`` reads the master, so the copies'
access times are all "now"), and delete the same files as find (checked). Peak RSS is the prune process's own
(target <= 150 MB at 1M files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _util import collection_path, make_tree, run_timed

OLD_DAYS = 200
CUT_DAYS = 100

CODE = r"""
import sys, time, json
sys.path.insert(0, sys.argv[1])
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
mode, path = sys.argv[2], sys.argv[3]
if mode == "age":
    pol = _prune.Policy(max_age=int(sys.argv[4]), min_age=3600, age_by="mtime")
else:
    pol = _prune.Policy(max_size=int(sys.argv[4]), min_age=3600, age_by="mtime")
t0 = time.perf_counter()
res = _prune.Pruner(path, fmt="generic", policy=pol, sample_size=5).run()
el = time.perf_counter() - t0
sys.stderr.write(json.dumps({"files": res["files"], "bytes": res["bytes"], "errors": res["errors"]}) + "\n")
print(el)
"""


def _count_files(path):
    n = 0
    for _dp, _dn, fn in os.walk(path):
        n += len(fn)
    return n


def _du(path):
    out = subprocess.run(["du", "-s", "--block-size=1", path], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def rows(n_files, workdir):
    now = time.time()
    old, new = now - OLD_DAYS * 86400, now - 86400
    master = os.path.join(workdir, "master")
    os.makedirs(master)
    make_tree(master, n_files, files_per_dir=100, size=512, seed_mtime=lambda i: old if i % 2 else new)
    n_old = n_files // 2
    copies = {}
    for name in ("find", "age", "lru"):
        dst = os.path.join(workdir, name)
        subprocess.run(["cp", "-a", master, dst], check=True)
        copies[name] = dst
    coll = collection_path(workdir)
    os.sync()  # the copies' dirty pages would otherwise be written back during whichever runs first

    find_s, _find_rss = run_timed(["find", copies["find"], "-type", "f", "-mtime", "+%d" % CUT_DAYS, "-delete"])
    age_s, age_rss = python_timed_checked(CODE, coll, "age", copies["age"], str(CUT_DAYS * 86400))
    total = _du(copies["lru"])
    old_disk = n_old * os.lstat(os.path.join(master, "d0000", "s000", "f00001")).st_blocks * 512
    lru_s, lru_rss = python_timed_checked(CODE, coll, "lru", copies["lru"], str(total - old_disk))

    left = {k: _count_files(v) for k, v in copies.items()}
    expect = n_files - n_old
    for k, v in left.items():
        if v != expect:
            raise AssertionError("%s left %d files, expected %d" % (k, v, expect))
    return [
        {
            "name": "cache_prune max_age (half of %d files)" % n_files,
            "peer": "find -mtime +N -delete",
            "ours_s": age_s,
            "peer_s": find_s,
            "ratio": age_s / find_s,
            "target": 1.3,
            "peak_rss_mb": age_rss,
        },
        {
            "name": "cache_prune max_size LRU (same half)",
            "peer": "cache_prune max_age",
            "ours_s": lru_s,
            "peer_s": age_s,
            "ratio": lru_s / age_s,
            "target": 2.0,
            "peak_rss_mb": lru_rss,
        },
    ]


def python_timed_checked(code, *args):
    """python_timed, and the prune must have reported no error."""
    wrapper = (
        "import resource,sys,json\n"
        + code
        + "\nprint(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError("prune failed: %s" % out.stderr[-2000:])
    info = json.loads(out.stderr.strip().splitlines()[-1])
    if info["errors"] or not info["files"]:
        raise RuntimeError("prune reported %s" % info)
    lines = out.stdout.strip().splitlines()
    return float(lines[-2]), int(lines[-1]) / 1024.0
