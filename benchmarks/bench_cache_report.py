"""cache_report against the seed's show-cache-info.sh method and against du -sb alone.

The tree: n_files spread over several caches (uneven, like a real cache root: one big model
cache, a few package caches), plus hard links and symlinks. Every contender measures every
cache, one after the other, on the same warm tree, in the same run. Each is timed several times
(alternating) and the best time is kept, which is the least noisy figure on a shared machine.

Rows:
- cache_report (the module's logic, in a fresh interpreter) vs the seed's method
  (``du -sh DIR`` + ``find DIR -type f | wc -l`` per cache): target <= 1.0x
- the same vs ``du -sb DIR`` alone per cache: target <= 1.5x
Peak RSS is the cache_report process's own, worker processes included (max of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _util import collection_path, make_tree

# (name, share of the files)
SPLIT = (("huggingface", 0.40), ("pip", 0.20), ("conda", 0.15), ("npm", 0.15), ("go", 0.10))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))

CODE = r"""
import os, sys, time, json
sys.path.insert(0, sys.argv[1])
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _render, _usage
caches = json.loads(sys.argv[2])
hints = json.loads(sys.argv[4])
c0 = os.times()
t0 = time.perf_counter()
rep = _usage.build_report(caches, root=sys.argv[3], **_usage.hints([hints] if hints else []))
el = time.perf_counter() - t0
c1 = os.times()
cpu = sum(c1[:4]) - sum(c0[:4])
sys.stderr.write(json.dumps([cpu, _render.history_entry(rep)]) + "\n")
print(el)
"""


def _build(workdir, n_files):
    root = os.path.join(workdir, "cache")
    caches = []
    left = n_files
    for i, (name, share) in enumerate(SPLIT):
        n = left if i == len(SPLIT) - 1 else int(n_files * share)
        left -= n
        path = os.path.join(root, name)
        os.makedirs(path)
        make_tree(path, n, files_per_dir=100, size=700)
        # a few hard links and symlinks, as caches have them
        first = os.path.join(path, "d0000", "s000")
        for j in range(min(10, n)):
            os.link(os.path.join(first, "f%05d" % j), os.path.join(path, "hl%02d" % j))
            os.symlink("/etc/hostname", os.path.join(path, "ln%02d" % j))
        caches.append({"name": name, "path": path})
    return root, caches


def _timed_shell(cmds):
    """Wall seconds and CPU seconds (user + system of the commands) of running cmds in turn."""
    c0 = os.times()
    t0 = time.perf_counter()
    for c in cmds:
        subprocess.run(c, shell=True, check=True, stdout=subprocess.DEVNULL)  # noqa: S602 - fixed bench commands
    el = time.perf_counter() - t0
    c1 = os.times()
    return el, (c1[2] + c1[3]) - (c0[2] + c0[3])


def _ours(coll, caches, root, hints):
    wrapper = (
        "import resource,sys,json\n"
        + CODE
        + "\nprint(json.dumps(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, coll, json.dumps(caches), root, json.dumps(hints)],
        check=True,
        capture_output=True,
        text=True,
    )
    lines = out.stdout.strip().splitlines()
    cpu, sizes = json.loads(out.stderr.strip().splitlines()[-1])
    return float(lines[-2]), int(lines[-1]) / 1024.0, sizes, cpu


def rows(n_files, workdir):
    coll = collection_path(workdir)
    root, caches = _build(workdir, n_files)
    paths = [c["path"] for c in caches]
    seed_cmds = ["du -sh '%s'; find '%s' -type f | wc -l" % (p, p) for p in paths]
    du_cmds = ["du -sb '%s'" % p for p in paths]
    ours, seed, dusb, rss = [], [], [], 0.0
    # warm the page cache; its history entry (sizes, duration) is what a cron run would have
    _t, _r, hints, _c = _ours(coll, caches, root, {})
    for _round in range(REPEAT):
        t, r, _h, cpu = _ours(coll, caches, root, hints)
        ours.append((t, cpu))
        rss = max(rss, r)
        seed.append(_timed_shell(seed_cmds))
        dusb.append(_timed_shell(du_cmds))
    # best wall time of each; CPU seconds (user + system, workers included) of that same run,
    # a figure a loaded machine disturbs less than wall time
    (o, o_cpu), (s, s_cpu), (d, d_cpu) = min(ours), min(seed), min(dusb)
    return [
        {
            "name": "cache_report (%d caches)" % len(caches),
            "peer": "seed: du -sh + find -type f | wc -l",
            "ours_s": o,
            "peer_s": s,
            "ratio": o / s,
            "target": 1.0,
            "peak_rss_mb": rss,
            "ours_cpu_s": o_cpu,
            "peer_cpu_s": s_cpu,
            "cpu_ratio": o_cpu / s_cpu if s_cpu else None,
        },
        {
            "name": "cache_report (%d caches)" % len(caches),
            "peer": "du -sb alone",
            "ours_s": o,
            "peer_s": d,
            "ratio": o / d,
            "target": 1.5,
            "peak_rss_mb": rss,
            "ours_cpu_s": o_cpu,
            "peer_cpu_s": d_cpu,
            "cpu_ratio": o_cpu / d_cpu if d_cpu else None,
        },
    ]
