# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_verify against what members (real users) put in the tree: a FIFO, a symlink to a root-only
file, a 16 GiB sparse file and a file of another group, each named as a blob, next to a good and a
corrupt blob. Root's run ends (hang guard), reads none of them, counts the corrupt blob only,
quarantines only it, and its peak memory stays small; members can neither read nor replace the
state and the summary."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

HANG_GUARD = 120
MAX_RSS_MB = 150

_RUNNER = r"""
import json, resource, sys
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _verify
res = _verify.Verifier(sys.argv[1], state_dir=sys.argv[2], min_age=0, quarantine=True, workers=2).run()
res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps(res))
"""


def test_members_planted_entries_are_never_read_and_only_the_corrupt_blob_goes(actors, cache, arena):
    alice = actors.alice
    good, bad = b"good weights" * 1000, b"promised content"
    hub = os.path.join(cache, "hf")
    blobs = os.path.join(hub, "models--org--m", "blobs")
    h = {k: hashlib.sha256(k.encode()).hexdigest() for k in ("fifo", "link", "sparse", "foreign")}
    script = " && ".join(
        [
            "mkdir -p %s" % blobs,
            "printf '%%s' '%s' > %s/%s" % (good.decode(), blobs, hashlib.sha256(good).hexdigest()),
            "printf 'tampered content' > %s/%s" % (blobs, hashlib.sha256(bad).hexdigest()),
            "mkfifo %s/%s" % (blobs, h["fifo"]),
            "ln -s /etc/shadow %s/%s" % (blobs, h["link"]),
            "truncate -s 16G %s/%s" % (blobs, h["sparse"]),
            "printf 'x' > %s/%s && chgrp %s %s/%s" % (blobs, h["foreign"], actors.team, blobs, h["foreign"]),
        ]
    )
    alice.run(script)
    state = os.path.join(arena, "state")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, hub, state],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["verified"] == 1 and res["corrupt"] == 1, res
    assert res["corrupt_sample"][0]["path"].endswith(hashlib.sha256(bad).hexdigest())
    assert res["unverifiable"] == 1 and any("sparse" in n for n in res["notes"])  # never read
    assert res["foreign"]["count"] == 1  # another group: not read, not verified
    assert res["hashed_bytes"] < 1 << 20 and res["maxrss_mb"] < MAX_RSS_MB
    left = sorted(os.listdir(blobs))
    assert hashlib.sha256(bad).hexdigest() not in left
    assert sorted(left) == sorted([hashlib.sha256(good).hexdigest()] + list(h.values()))
    # the state and the summary are root's alone: a member can neither read nor replace them
    assert alice.run("ls %s" % state, check=False).returncode != 0
    assert alice.run("echo '{}' > %s/summary.json" % state, check=False).returncode != 0
