"""cache_verify against sha256sum over the same files, and its incremental run against a cache_report walk.

Trees (HuggingFace layout: blobs named by the SHA-256 of their content):
- throughput: BENCH_VERIFY_MB MiB (default 512) in 8 MiB blobs, warm in the page cache;
- files: n_files small blobs (BENCH_FILES, capped by BENCH_VERIFY_FILES, default 50000), and a
  quarter of them, for the memory row.

Rows:
- full verify, one process, vs ``sha256sum`` of the same files (one process): ours/peer wall time,
  target <= 1.11 (at least 0.9x sha256sum's bytes/s);
- full verify, default workers (one per CPU), vs the same: target <= 0.625 (at least 1.6x);
- incremental verify of an unchanged cache vs a cache_report walk (``_usage.measure_cache``) of
  it: target <= 1.2;
- peak RSS of the incremental run over n files vs over n/4 files (the ratio; flat is 1.0).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile

from _util import collection_path, python_timed

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
VERIFY_MB = int(os.environ.get("BENCH_VERIFY_MB", "512"))
VERIFY_FILES = int(os.environ.get("BENCH_VERIFY_FILES", "50000"))

VERIFY = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify
workers = int(sys.argv[4]) or None
t0 = time.perf_counter()
res = _verify.Verifier(sys.argv[2], state_dir=sys.argv[3], full=sys.argv[5] == "full", min_age=0, workers=workers).run()
el = time.perf_counter() - t0
assert res["corrupt"] == 0 and res["verified"] > 0, res
print(el)
"""

WALK = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _usage
t0 = time.perf_counter()
_usage.measure_cache("hf", sys.argv[2], fmt="huggingface")
print(time.perf_counter() - t0)
"""


def _hub(root, sizes):
    """Blobs named by their SHA-256 in one repo of a hub cache; returns the blob paths."""
    blobs = os.path.join(root, "hub", "models--bench--m", "blobs")
    os.makedirs(blobs)
    os.makedirs(os.path.join(root, "hub", "models--bench--m", "refs"))
    paths = []
    seed = os.urandom(1 << 20)
    for i, size in enumerate(sizes):
        data = (b"%d:" % i + seed * (size // len(seed) + 1))[:size]
        p = os.path.join(blobs, hashlib.sha256(data).hexdigest())
        with open(p, "wb") as fh:
            fh.write(data)
        paths.append(p)
    return paths


def _best(fn):
    return min(fn() for _run in range(REPEAT))


def _sha256sum(paths):
    def run():
        import time

        t0 = time.perf_counter()
        subprocess.run(["sha256sum", "--", *paths], check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0

    return run


def rows(n_files, workdir):
    coll = collection_path(workdir)
    out = []
    big = os.path.join(workdir, "big")
    paths = _hub(big, [8 << 20] * max(1, VERIFY_MB // 8))
    state = tempfile.mkdtemp(dir=workdir)
    _sha256sum(paths)()  # warm the page cache
    peer = _best(_sha256sum(paths))
    for workers, target in ((1, 1 / 0.9), (0, 1 / 1.6)):
        times = [python_timed(VERIFY, coll, big, state, str(workers), "full") for _run in range(REPEAT)]
        t = min(x[0] for x in times)
        out.append(
            {
                "name": "cache_verify full, %s (%d MiB)" % ("1 process" if workers == 1 else "all CPUs", VERIFY_MB),
                "peer": "sha256sum (1 process)",
                "ours_s": t,
                "peer_s": peer,
                "ratio": t / peer,
                "target": target,
                "peak_rss_mb": max(x[1] for x in times),
                "ours_mb_s": VERIFY_MB / t,
                "peer_mb_s": VERIFY_MB / peer,
            }
        )
    n = max(4, min(n_files, VERIFY_FILES))
    rss = {}
    for label, count in (("quarter", n // 4), ("all", n)):
        small = os.path.join(workdir, "small-" + label)
        _hub(small, [700] * count)
        st = tempfile.mkdtemp(dir=workdir)
        python_timed(VERIFY, coll, small, st, "0", "full")  # the state the nightly run starts from
        inc = [python_timed(VERIFY, coll, small, st, "0", "incremental") for _run in range(REPEAT)]
        rss[label] = max(x[1] for x in inc)
        if label == "all":
            walk = min(python_timed(WALK, coll, small)[0] for _run in range(REPEAT))
            t = min(x[0] for x in inc)
            out.append(
                {
                    "name": "cache_verify incremental, unchanged (%d files)" % count,
                    "peer": "cache_report walk of it",
                    "ours_s": t,
                    "peer_s": walk,
                    "ratio": t / walk,
                    "target": 1.2,
                    "peak_rss_mb": rss[label],
                }
            )
    out.append(
        {
            "name": "cache_verify incremental peak RSS (%d files)" % n,
            "peer": "the same over %d files" % (n // 4),
            "ours_s": 0.0,
            "peer_s": 0.0,
            "ratio": rss["all"] / rss["quarter"],
            "target": None,
            "peak_rss_mb": rss["all"],
        }
    )
    return out


if __name__ == "__main__":
    for row in rows(int(sys.argv[1]) if len(sys.argv) > 1 else 20000, tempfile.mkdtemp()):
        print(row)
