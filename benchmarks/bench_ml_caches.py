"""cache_report and cache_prune on today's ML caches: a HuggingFace hub with huggingface_hub 2.x's
shared Xet blob store, and a uv cache.

The tree (all under one cache root):

- ``huggingface/hub``: repos laid out as huggingface_hub does (``blobs/<etag>``, snapshot symlinks,
  ``refs/main``), 10 files per repo, about 60% of n_files; every other repo's blobs are published
  into the cache-wide store with huggingface_hub 2.4's own ``publish_blob_to_shared_store`` (the
  repo blob becomes a relative symlink into ``hub/blobs/<2 hex>/<hash>``, with its ``.refs``
  manifest and ``.lock``). Half the repos are 200 days old, the rest a day old.
- ``uv``: a real uv cache, filled by ``uv pip install`` of numpy, scipy, pandas, sympy and a few
  small packages from PyPI (about 7k files, 250 MB; its size does not follow n_files;
  UV_LINK_MODE=copy, so no file is linked into the environment). Everything in it is 200 days
  old.
- ``pip``: the rest of n_files, small files (generic tree), as in bench_cache_report.

Rows (each contender on an identical copy, made with ``cp -a``, in the same run):

- cache_report over the three caches vs ``du -sb`` per cache: target <= 1.5x (bench_cache_report's).
- cache_prune ``max_age: 100d`` of the hub vs ``find hub -mtime +100 ! -type d -delete``: target
  <= 1.3x (bench_cache_prune's). Ours also re-checks each unit before it leaves, moves it whole
  through the trash, and frees a store payload with its last repo blob.
- the same for the uv cache: target <= 1.3x.

Checked: our prune of the hub leaves no old file and every new one, and ``scan_cache_dir()`` sees
no warning afterwards; our uv prune leaves no old unit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from _util import collection_path, make_tree, run_timed

OLD_DAYS = 200
CUT_DAYS = 100
FILES_PER_REPO = 10
# what an ML box's uv cache holds: the scientific stack (big archives of many files: about 7k
# files, 250 MB) beside a few small packages. The row measured 12 units of 117 files until stop 20:
# fixed costs of 20 ms (the first /proc/locks read alone is 10 ms) against a 30 ms find.
UV_PACKAGES = [
    "numpy==2.4.6",
    "scipy==1.17.1",
    "pandas==3.1.1",
    "sympy==1.14.0",
    "mpmath==1.3.0",
    "python-dateutil==4.0.0",
    "tzdata==2026.6",
    "six==1.16.0",
    "idna==3.7",
    "packaging==24.1",
    "certifi==2024.7.4",
    "urllib3==2.2.2",
]

PRUNE = r"""
import sys, time, json
sys.path.insert(0, sys.argv[1])
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
fmt, path, lock_dir = sys.argv[2], sys.argv[3], sys.argv[4]
pol = _prune.Policy(max_age=int(sys.argv[5]), min_age=3600, age_by="mtime")
t0 = time.perf_counter()
res = _prune.Pruner(path, fmt=fmt, policy=pol, sample_size=5, lock_dir=lock_dir).run()
el = time.perf_counter() - t0
sys.stderr.write(json.dumps({"units": res["units"], "files": res["files"], "errors": res["errors"]}) + "\n")
print(el)
"""


def _age_tree(path, t):
    for dp, dn, fn in os.walk(path, topdown=False):
        for n in fn + dn:
            os.utime(os.path.join(dp, n), (t, t), follow_symlinks=False)
    os.utime(path, (t, t), follow_symlinks=False)


def build_hub(hub, n_files):
    """Repos as huggingface_hub lays them out; every other repo's blobs go into the shared store."""
    from huggingface_hub.utils import _shared_blobs

    now = time.time()
    n_repos = max(2, n_files // (2 * FILES_PER_REPO))  # a file = its blob + its snapshot link
    payload_time = {}  # store payload -> the time of the repo that published it
    for r in range(n_repos):
        repo = hub / ("models--bench--m%05d" % r)
        commit = hashlib.sha1(b"%d" % r).hexdigest()  # noqa: S324 - a commit id, as the hub names them
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (repo / "blobs").mkdir()
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        for f in range(FILES_PER_REPO):
            data = b"%d-%d" % (r, f) * 40
            digest = hashlib.sha256(data).hexdigest()
            blob = repo / "blobs" / digest
            blob.write_bytes(data)
            os.symlink("../../blobs/" + digest, snap / ("f%02d.safetensors" % f))
            if r % 2:
                ok = _shared_blobs.publish_blob_to_shared_store(
                    blob_path=str(blob), xet_hash=digest, cache_dir=hub, expected_size=len(data)
                )
                if not ok:
                    raise RuntimeError("huggingface_hub did not publish %s to the shared store" % blob)
                payload_time[os.path.realpath(blob)] = now - (OLD_DAYS if r % 4 < 2 else 1) * 86400
        (hub / ".locks" / repo.name).mkdir(parents=True)
        _age_tree(repo, now - (OLD_DAYS if r % 4 < 2 else 1) * 86400)
    # store payloads of old repos are old (a revision's age includes its payloads'); the others
    # were published a day ago
    for path, t in payload_time.items():
        os.utime(path, (t, t), follow_symlinks=False)
    return n_repos


def build_uv(uv_cache, workdir):
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is not installed (requirements/dev.txt pins it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    env.update(UV_CACHE_DIR=str(uv_cache), UV_LINK_MODE="copy", UV_INDEX_URL="https://pypi.org/simple")
    venv = os.path.join(workdir, "uv-venv")
    subprocess.run([uv, "venv", "-q", venv, "--python", sys.executable], check=True, env=env)
    subprocess.run([uv, "pip", "install", "-q", "--python", venv, *UV_PACKAGES], check=True, env=env)
    shutil.rmtree(venv)
    _age_tree(str(uv_cache), time.time() - OLD_DAYS * 86400)


def _prune_timed(coll, fmt, path, lock_dir):
    wrapper = (
        "import resource,sys,json\n"
        + PRUNE
        + "\nprint(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, coll, fmt, path, lock_dir, str(CUT_DAYS * 86400)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError("prune failed: %s" % out.stderr[-2000:])
    info = json.loads(out.stderr.strip().splitlines()[-1])
    if info["errors"] or not info["units"]:
        raise RuntimeError("prune reported %s" % info)
    lines = out.stdout.strip().splitlines()
    return float(lines[-2]), int(lines[-1]) / 1024.0, info


def _report_timed(coll, caches, root):
    from bench_cache_report import _ours, _timed_shell

    _t, _r, hints, _c = _ours(coll, caches, root, {})
    ours, dusb, rss = [], [], 0.0
    for _round in range(3):
        t, r, _h, _cpu = _ours(coll, caches, root, hints)
        ours.append(t)
        rss = max(rss, r)
        dusb.append(_timed_shell(["du -sb '%s'" % c["path"] for c in caches])[0])
    return min(ours), min(dusb), rss


def _files(path):
    out = set()
    for dp, dn, fn in os.walk(path):
        for n in fn + [d for d in dn if os.path.islink(os.path.join(dp, d))]:
            out.add(os.path.relpath(os.path.join(dp, n), path))
    return out


def rows(n_files, workdir):
    from pathlib import Path

    coll = collection_path(workdir)
    root = Path(workdir) / "cache"
    hub = root / "huggingface" / "hub"
    hub.mkdir(parents=True)
    n_repos = build_hub(hub, int(n_files * 0.6))
    build_uv(root / "uv", workdir)
    pip = root / "pip"
    pip.mkdir()
    n_hub = len(_files(hub))
    n_uv = len(_files(root / "uv"))
    make_tree(str(pip), max(100, n_files - n_hub - n_uv), files_per_dir=100, size=700)
    # with their formats, as the catalog gives them (the report names the largest units)
    caches = [
        {"name": "huggingface", "path": str(root / "huggingface"), "format": "huggingface"},
        {"name": "uv", "path": str(root / "uv"), "format": "uv"},
        {"name": "pip", "path": str(pip), "format": "pip"},
    ]
    os.sync()
    rep_s, du_s, rep_rss = _report_timed(coll, caches, str(root))

    copies = {}
    for name, src in (("hub-find", hub), ("hub-ours", hub), ("uv-find", root / "uv"), ("uv-ours", root / "uv")):
        dst = os.path.join(workdir, name)
        subprocess.run(["cp", "-a", str(src), dst], check=True)
        copies[name] = dst
    os.sync()
    state = os.path.join(workdir, "state")
    os.makedirs(state, mode=0o700)
    find = ["-mtime", "+%d" % CUT_DAYS, "!", "-type", "d", "-delete"]
    hub_find_s, _rss = run_timed(["find", copies["hub-find"], *find])
    hub_s, hub_rss, hub_info = _prune_timed(coll, "huggingface", copies["hub-ours"], state)
    uv_find_s, _rss = run_timed(["find", copies["uv-find"], *find])
    uv_s, uv_rss, uv_info = _prune_timed(coll, "uv", copies["uv-ours"], state)

    # what is left: the new repos whole, nothing old; huggingface_hub's own scan sees no warning
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(copies["hub-ours"])
    if info.warnings:
        raise AssertionError("scan_cache_dir warns after our prune: %s" % info.warnings[:3])
    left = {r.repo_id for r in info.repos if r.revisions}
    expect = {"bench/m%05d" % r for r in range(n_repos) if r % 4 >= 2}
    if left != expect:
        raise AssertionError("hub prune left %d revisions, expected %d" % (len(left), len(expect)))
    if uv_info["units"] == 0:
        raise AssertionError("the uv prune removed nothing")
    label = "%d hub files (%d repos, shared store), uv %d files" % (n_hub, n_repos, n_uv)
    return [
        {
            "name": "cache_report (hub+store, uv, pip)",
            "peer": "du -sb alone",
            "ours_s": rep_s,
            "peer_s": du_s,
            "ratio": rep_s / du_s,
            "target": 1.5,
            "peak_rss_mb": rep_rss,
            "detail": label,
        },
        {
            "name": "cache_prune max_age hub + shared store",
            "peer": "find -mtime +N ! -type d -delete",
            "ours_s": hub_s,
            "peer_s": hub_find_s,
            "ratio": hub_s / hub_find_s,
            "target": 1.3,
            "peak_rss_mb": hub_rss,
            "detail": "%d units, %d files" % (hub_info["units"], hub_info["files"]),
        },
        {
            "name": "cache_prune max_age uv cache",
            "peer": "find -mtime +N ! -type d -delete",
            "ours_s": uv_s,
            "peer_s": uv_find_s,
            "ratio": uv_s / uv_find_s,
            "target": 1.3,
            "peak_rss_mb": uv_rss,
            "detail": "%d units, %d files" % (uv_info["units"], uv_info["files"]),
        },
    ]
