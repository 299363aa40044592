"""cache_dir recurse against the shell commands and the Ansible module people use instead.

One generated tree (``make_tree``: n_files small files, 100 per directory), two states:
- already correct (cache_dir ran once): cache_dir recurse, the routine walk the nightly fix-up
  makes (only entries of the cache group, docs/security.md), vs ``chmod -R g+rwX`` (both find
  nothing to change; chmod still calls chmod() on every entry). Target <= 1.0x.
- wrong (root:root, 0644 files, 0755 dirs, no setgid, no ACL, as a plain download leaves it):
  taking it over is adoption, so cache_dir recurse with ``adopt`` vs ``chgrp -R G`` +
  ``chmod -R g+rwX`` + ``find -type d -exec chmod g+s``
  + ``find -type d -exec setfacl -d -m g:G:rwx`` (the shell combination that gives the same
  result; ``setfacl -R -d`` alone fails on files). Target <= 1.0x.
- wrong, through ansible-playbook on localhost: a play running cache_dir recurse vs a play
  running ``ansible.builtin.file`` with ``recurse: true, group: G, mode: g+rwX`` (which does
  less: no setgid, no ACL). Target: 3x faster (ratio <= 0.33). Start-up (controller plus
  module, 2-4 s on a loaded 2-core host) is in both and swamps small trees, so a fourth row
  compares the task times (profile_tasks) minus the same task on an empty directory, timed
  in the same run: the per-tree work of each module.
The tree is reset to the same wrong state before every fixing run (not timed). cache_dir's
own work is timed inside a fresh interpreter (import time excluded, as the peers' commands
have no import phase) with its default ``workers: 0`` (the usable CPUs, at most 4: both cores
here, while each shell command uses one); an extra row without a target gives the fixing run
with ``workers: 1``. Peak RSS is the largest of that interpreter's and its workers'. Each quick
contender runs several times, alternating, and keeps its best time: the least noisy figure on a
shared machine.
"""

from __future__ import annotations

import grp
import os
import re
import resource
import subprocess
import sys
import time

from _util import collection_path, make_tree, python_timed, run_timed

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
GROUP = os.environ.get("BENCH_GROUP", "users")

CODE = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.mlinfra.shared_cache.plugins.modules.cache_dir import run
params = dict(path=sys.argv[2], owner=None, group=sys.argv[3], mode="2775", subdirs=[], recurse=True,
              one_fs=True, acl=True, allow_world_writable=False, workers=int(sys.argv[4]),
              adopt=sys.argv[5] == "adopt")
t0 = time.perf_counter()
res = run(params, check_mode=False, warn=lambda msg: None)
el = time.perf_counter() - t0
assert res["error_count"] == 0, res["errors"]
sys.stderr.write("examined=%d changed=%d workers=%d\n" % (res["examined"], res["changed_entries"], res["workers"]))
print(el)
"""

PLAY_OURS = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: bench task
      mlinfra.shared_cache.cache_dir:
        path: "{{ tree }}"
        group: "{{ grp }}"
        mode: "2775"
        recurse: true
        adopt: true
"""

PLAY_FILE = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: bench task
      ansible.builtin.file:
        path: "{{ tree }}"
        state: directory
        group: "{{ grp }}"
        mode: g+rwX
        recurse: true
"""


def _ours(coll, tree, workers=0, adopt=True):
    """cache_dir's run(); ``adopt`` for the root:root trees (taking them over), the routine walk
    (only the cache group's entries, as the nightly fix-up) on an already correct tree."""
    return python_timed(CODE, coll, tree, GROUP, str(workers), "adopt" if adopt else "routine")


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
    """Run a play; return (wall seconds, peak RSS MB of the run, seconds of its one task).

    The task time comes from the ansible.posix.profile_tasks callback: it leaves out the
    controller's own start-up, which is the same for both plays.
    """
    play = os.path.join(workdir, "play-%d.yml" % abs(hash(text)))
    with open(play, "w") as fh:
        fh.write(text)
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(workdir, "coll") + ":" + env.get("ANSIBLE_COLLECTIONS_PATH", "")
    env["ANSIBLE_PYTHON_INTERPRETER"] = sys.executable
    env["ANSIBLE_LOCALHOST_WARNING"] = "false"
    env["ANSIBLE_INVENTORY_UNPARSED_WARNING"] = "false"
    env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
    bindir = os.path.dirname(sys.executable)
    cmd = [os.path.join(bindir, "ansible-playbook"), "-i", "localhost,", "-c", "local", play]
    cmd += ["-e", "tree=%s" % tree, "-e", "grp=%s" % GROUP]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=workdir, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    match = re.search(r"^bench task -+ ([0-9.]+)s", out, re.MULTILINE)
    task = float(match.group(1)) if match else wall
    return wall, (after / 1024.0 if after > before else None), task


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
    coll = collection_path(workdir)
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
        t, r = _ours(coll, tree, adopt=False)
        ours_t = t if ours_t is None else min(ours_t, t)
        rss = max(rss, r or 0)
        t, _r = run_timed(["chmod", "-R", "g+rwX", tree])
        peer_t = t if peer_t is None else min(peer_t, t)
    out.append(_row("cache_dir recurse (already correct)", "chmod -R g+rwX", ours_t, peer_t, 1.0, rss))

    # 2. wrong tree, fixing (and the same in one process, for the record)
    ours_t = one_t = peer_t = None
    rss = rss_one = 0.0
    for _i in range(REPEAT):
        _reset_wrong(tree)
        t, r = _ours(coll, tree)
        ours_t = t if ours_t is None else min(ours_t, t)
        rss = max(rss, r or 0)
        _reset_wrong(tree)
        t, r = _ours(coll, tree, workers=1)
        one_t = t if one_t is None else min(one_t, t)
        rss_one = max(rss_one, r or 0)
        _reset_wrong(tree)
        t, _r = _shell_fix(tree)
        peer_t = t if peer_t is None else min(peer_t, t)
    peer = "chgrp+chmod -R, find chmod g+s, setfacl -d"
    out.append(_row("cache_dir recurse (fixing)", peer, ours_t, peer_t, 1.0, rss))
    out.append(_row("cache_dir recurse (fixing, workers: 1)", peer, one_t, peer_t, None, rss_one))

    # 3. wrong tree through ansible-playbook (best of REPEAT, alternating)
    # 4. the same without ansible-playbook's constant start-up: the same plays on an empty
    #    directory, timed in the same run, subtracted: what each module costs for the tree.
    empty = os.path.join(workdir, "empty")
    os.mkdir(empty)
    ours_t = peer_t = ours_task = peer_task = base_ours = base_file = None
    rss = 0.0
    for _i in range(REPEAT):
        _reset_wrong(tree)
        t, r, ot = _playbook(workdir, PLAY_OURS, tree)
        ours_t = t if ours_t is None else min(ours_t, t)
        ours_task = ot if ours_task is None else min(ours_task, ot)
        rss = max(rss, r or 0)
        _reset_wrong(tree)
        t, _r, pt = _playbook(workdir, PLAY_FILE, tree)
        peer_t = t if peer_t is None else min(peer_t, t)
        peer_task = pt if peer_task is None else min(peer_task, pt)
        _t, _r, bt = _playbook(workdir, PLAY_OURS, empty)
        base_ours = bt if base_ours is None else min(base_ours, bt)
        _t, _r, bt = _playbook(workdir, PLAY_FILE, empty)
        base_file = bt if base_file is None else min(base_file, bt)
    target = round(1 / 3, 3)
    out.append(
        _row("cache_dir recurse play (fixing)", "ansible.builtin.file recurse play", ours_t, peer_t, target, rss)
    )
    out.append(
        _row(
            "cache_dir task, module start-up subtracted",
            "ansible.builtin.file task, start-up subtracted",
            max(ours_task - base_ours, 0.001),
            max(peer_task - base_file, 0.001),
            target,
            rss,
        )
    )
    return out
