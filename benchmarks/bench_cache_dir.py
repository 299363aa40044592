"""cache_dir recurse against the shell commands and the Ansible module people use instead.

One generated tree (``make_tree``: n_files small files, 100 per directory), two states:
- already correct (cache_dir ran once): cache_dir recurse vs ``chmod -R g+rwX`` (both find
  nothing to change; chmod still calls chmod() on every entry). Target <= 1.0x.
- wrong (root:root, 0644 files, 0755 dirs, no setgid, no ACL, as a plain download leaves it):
  cache_dir recurse vs ``chgrp -R G`` + ``chmod -R g+rwX`` + ``find -type d -exec chmod g+s``
  + ``find -type d -exec setfacl -d -m g:G:rwx`` (the shell combination that gives the same
  result; ``setfacl -R -d`` alone fails on files). Target <= 1.0x.
- wrong, through ansible-playbook on localhost: a play running cache_dir recurse vs a play
  running ``ansible.builtin.file`` with ``recurse: true, group: G, mode: g+rwX`` (which does
  less: no setgid, no ACL). Target: 3x faster (ratio <= 0.33).
The tree is reset to the same wrong state before every fixing run (not timed). cache_dir's
own work is timed inside a fresh interpreter (import time excluded, as the peers' commands
have no import phase); its peak RSS is that interpreter's. Each quick contender runs several
times, alternating, and keeps its best time: the least noisy figure on a shared machine.
"""

from __future__ import annotations

import grp
import os
import subprocess
import sys
import time
from pathlib import Path

from _util import make_tree, python_timed, run_timed

COLLECTION = Path(__file__).resolve().parents[1]
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
GROUP = os.environ.get("BENCH_GROUP", "users")

CODE = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.mlinfra.shared_cache.plugins.modules.cache_dir import run
params = dict(path=sys.argv[2], owner=None, group=sys.argv[3], mode="2775", subdirs=[], recurse=True,
              one_fs=True, acl=True, allow_world_writable=False)
t0 = time.perf_counter()
res = run(params, check_mode=False, warn=lambda msg: None)
el = time.perf_counter() - t0
assert res["error_count"] == 0, res["errors"]
sys.stderr.write("examined=%d changed=%d\n" % (res["examined"], res["changed_entries"]))
print(el)
"""

PLAY_OURS = """- hosts: localhost
  gather_facts: false
  tasks:
    - mlinfra.shared_cache.cache_dir:
        path: "{{ tree }}"
        group: "{{ grp }}"
        mode: "2775"
        recurse: true
"""

PLAY_FILE = """- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.file:
        path: "{{ tree }}"
        state: directory
        group: "{{ grp }}"
        mode: g+rwX
        recurse: true
"""


def _collection_path(workdir):
    """A PYTHONPATH entry where ansible_collections.mlinfra.shared_cache is this tree."""
    base = os.path.join(workdir, "coll")
    link = os.path.join(base, "ansible_collections", "mlinfra", "shared_cache")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.islink(link):
        os.symlink(str(COLLECTION), link)
    return base


def _ours(coll, tree):
    return python_timed(CODE, coll, tree, GROUP)


def _reset_wrong(tree):
    """root:root, no group write, no setgid, no ACLs, as a root download with umask 022 leaves it."""
    for cmd in (
        ["setfacl", "-R", "-b", tree],
        ["chgrp", "-R", "root", tree],
        ["chmod", "-R", "u=rwX,g=rX,o=rX", tree],
        ["find", tree, "-type", "d", "-exec", "chmod", "g-s", "{}", "+"],
    ):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _shell_fix(tree):
    cmds = (
        ["chgrp", "-R", GROUP, tree],
        ["chmod", "-R", "g+rwX", tree],
        ["find", tree, "-type", "d", "-exec", "chmod", "g+s", "{}", "+"],
        ["find", tree, "-type", "d", "-exec", "setfacl", "-d", "-m", "g:%s:rwx" % GROUP, "{}", "+"],
    )
    total, rss = 0.0, None
    for cmd in cmds:
        el, r = run_timed(cmd)
        total += el
        rss = max(rss or 0, r or 0) or rss
    return total, rss


def _playbook(workdir, text, tree):
    play = os.path.join(workdir, "play-%d.yml" % abs(hash(text)))
    with open(play, "w") as fh:
        fh.write(text)
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(workdir, "coll")
    env["ANSIBLE_PYTHON_INTERPRETER"] = sys.executable
    env["ANSIBLE_LOCALHOST_WARNING"] = "false"
    env["ANSIBLE_INVENTORY_UNPARSED_WARNING"] = "false"
    bindir = os.path.dirname(sys.executable)
    cmd = [os.path.join(bindir, "ansible-playbook"), "-i", "localhost,", "-c", "local", play]
    cmd += ["-e", "tree=%s" % tree, "-e", "grp=%s" % GROUP]
    return run_timed(cmd, env=env, cwd=workdir)


def _best(fn, repeat):
    best_t, best_rss = None, None
    for _i in range(repeat):
        t, rss = fn()
        if best_t is None or t < best_t:
            best_t = t
        best_rss = max(best_rss or 0, rss or 0) or best_rss
    return best_t, best_rss


def _row(name, peer, ours, theirs, target, rss):
    return {
        "name": name,
        "peer": peer,
        "ours_s": round(ours, 4),
        "peer_s": round(theirs, 4),
        "ratio": round(ours / theirs, 3) if theirs else float("inf"),
        "target": target,
        "peak_rss_mb": round(rss, 1) if rss else None,
    }


def rows(n_files, workdir):
    grp.getgrnam(GROUP)  # fail early with KeyError when the group is missing
    coll = _collection_path(workdir)
    tree = os.path.join(workdir, "tree")
    os.mkdir(tree)
    t0 = time.perf_counter()
    make_tree(tree, n_files)
    print("  built %d files in %.1fs" % (n_files, time.perf_counter() - t0), flush=True)
    out = []

    # 1. already-correct tree
    _ours(coll, tree)  # make it correct (and warm the cache)
    ours_t = peer_t = None
    rss = 0.0
    for _i in range(REPEAT):
        t, r = _ours(coll, tree)
        ours_t = t if ours_t is None else min(ours_t, t)
        rss = max(rss, r or 0)
        t, _r = run_timed(["chmod", "-R", "g+rwX", tree])
        peer_t = t if peer_t is None else min(peer_t, t)
    out.append(_row("cache_dir recurse (already correct)", "chmod -R g+rwX", ours_t, peer_t, 1.0, rss))

    # 2. wrong tree, fixing
    ours_t = peer_t = None
    rss = 0.0
    for _i in range(max(1, REPEAT - 1)):
        _reset_wrong(tree)
        t, r = _ours(coll, tree)
        ours_t = t if ours_t is None else min(ours_t, t)
        rss = max(rss, r or 0)
        _reset_wrong(tree)
        t, _r = _shell_fix(tree)
        peer_t = t if peer_t is None else min(peer_t, t)
    out.append(
        _row(
            "cache_dir recurse (fixing)",
            "chgrp+chmod -R, find chmod g+s, setfacl -d",
            ours_t,
            peer_t,
            1.0,
            rss,
        )
    )

    # 3. wrong tree through ansible-playbook
    _reset_wrong(tree)
    ours_t, rss = _playbook(workdir, PLAY_OURS, tree)
    _reset_wrong(tree)
    peer_t, _r = _playbook(workdir, PLAY_FILE, tree)
    out.append(
        _row(
            "cache_dir recurse play (fixing)",
            "ansible.builtin.file recurse play",
            ours_t,
            peer_t,
            round(1 / 3, 3),
            rss,
        )
    )
    return out
