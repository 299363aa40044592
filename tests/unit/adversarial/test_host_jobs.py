# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root's host commands (mlinfra-cache-prune, show-cache-info) against real members of the group.

A member cannot hold the nightly command's lock (nor stop it by locking what they can open), cannot
hand root a configuration or a lock path they can change, and a stranger cannot read the report
of a 2770 cache.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _hostcmd
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import lay_out_cache

OLD = time.time() - 200 * 86400


def old_file(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"o" * 4096)
    os.utime(path, (OLD, OLD))


def write_config(path, conf):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(conf, fh)
    os.chmod(path, 0o644)
    return path


def prune_conf(arena, cache, actors, **extra):
    misc = lay_out_cache(os.path.join(cache, "misc"), actors.gid)
    old_file(os.path.join(misc, "old", "f.bin"))
    conf = {
        "root": cache,
        "group": actors.group,
        "owner": "root",
        "acl": True,
        "fix_permissions": False,
        "lock_timeout": 1,
        "lock": os.path.join(arena, "state", "prune.lock"),
        "caches": [{"name": "misc", "path": misc, "format": "generic", "mode": "2775", "retention": {"max_age": "1d"}}],
    }
    conf.update(extra)
    return conf, os.path.join(misc, "old", "f.bin")


def hold(actor, path):
    """``actor`` takes an exclusive flock on ``path`` and keeps it; (Popen, whether it got it)."""
    proc = actor.popen(["flock", "-x", "-n", path, "sh", "-c", "echo held; exec sleep 60"])
    line = proc.stdout.readline().strip()
    return proc, line == "held"


def release(proc):
    proc.kill()
    proc.wait()


# -- the command's lock --------------------------------------------------------------------------
def test_a_member_can_neither_open_nor_hold_the_prune_lock(actors, arena, cache, capsys):
    conf, victim = prune_conf(arena, cache, actors)
    path = write_config(os.path.join(arena, "prune.json"), conf)
    assert _hostcmd.prune_main(path, []) == 0  # creates the lock directory and file
    assert not os.path.exists(victim)
    lock = conf["lock"]
    st = os.lstat(lock)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    for who in (actors.alice, actors.bob, actors.carol):
        res = who.run(["flock", "-n", lock, "true"], check=False)
        assert res.returncode != 0 and "Permission denied" in res.stderr, (who.name, res.stderr)
        res = who.run(["ls", os.path.dirname(lock)], check=False)
        assert res.returncode != 0


def test_locks_a_member_holds_on_what_they_can_open_do_not_stop_the_command(actors, arena, cache, capsys):
    conf, victim = prune_conf(arena, cache, actors)
    path = write_config(os.path.join(arena, "prune.json"), conf)
    held = []
    try:
        # the configuration (world-readable), the cache root and everything else alice can open
        for target in (path, cache, arena):
            proc, ok = hold(actors.alice, target)
            held.append(proc)
            assert ok, target
        assert _hostcmd.prune_main(path, []) == 0
    finally:
        for proc in held:
            release(proc)
    out = capsys.readouterr().out
    assert "cache_prune misc format=generic units=1" in out, out
    assert not os.path.exists(victim)


def test_a_member_locking_the_pruned_directory_does_not_stop_the_command(actors, arena, cache, capsys):
    conf, victim = prune_conf(arena, cache, actors)
    path = write_config(os.path.join(arena, "prune.json"), conf)
    proc, ok = hold(actors.alice, conf["caches"][0]["path"])
    try:
        assert ok
        _hostcmd.prune_main(path, [])
    finally:
        release(proc)
    assert not os.path.exists(victim)


@pytest.mark.parametrize("planted", ["nothing", "symlink", "own-file"])
def test_a_lock_path_a_member_can_write_is_refused(actors, arena, cache, planted, capsys):
    # in a directory alice writes she could rename root's lock away (a second run then locks a new
    # inode and overlaps the first), plant a symlink, or give root a lock file she holds
    target = os.path.join(arena, "target")  # what a planted symlink would make root create or lock
    conf, victim = prune_conf(arena, cache, actors, lock=os.path.join(cache, "locks", "prune.lock"))
    actors.alice.run("mkdir %s/locks" % cache)
    if planted == "symlink":
        actors.alice.run("ln -s %s %s/locks/prune.lock" % (target, cache))
    elif planted == "own-file":
        actors.alice.run("touch %s/locks/prune.lock && chmod 600 %s/locks/prune.lock" % (cache, cache))
    path = write_config(os.path.join(arena, "prune.json"), conf)
    assert _hostcmd.prune_main(path, []) == 2
    assert "lock" in capsys.readouterr().err
    assert os.path.exists(victim) and not os.path.exists(target)


def test_a_lock_directory_members_can_rename_away_is_refused(actors, arena, cache, capsys):
    # root's own 0700 directory, but inside one alice writes: she could move it (and the lock
    # held in it) aside, and the next run would make a new one and overlap the running one
    locks = os.path.join(cache, "locks")
    actors.alice.run("mkdir %s" % locks)
    os.mkdir(os.path.join(locks, "root-only"), 0o700)
    conf, victim = prune_conf(arena, cache, actors, lock=os.path.join(locks, "root-only", "prune.lock"))
    path = write_config(os.path.join(arena, "prune.json"), conf)
    assert _hostcmd.prune_main(path, []) == 2
    assert "lock" in capsys.readouterr().err
    assert os.path.exists(victim)


# -- the configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["in-the-cache", "members-file"])
def test_a_configuration_a_member_can_change_is_refused(actors, arena, cache, where, capsys):
    conf, victim = prune_conf(arena, cache, actors)
    if where == "in-the-cache":
        # root's own file, but in a directory members write: they can rename another one over it
        path = write_config(os.path.join(cache, "prune.json"), conf)
        actors.alice.run(["test", "-w", cache])
    else:
        path = os.path.join(arena, "prune.json")
        actors.alice.run(["true"])
        write_config(path, conf)
        os.chown(path, actors.alice.uid, actors.gid)
    assert _hostcmd.prune_main(path, []) == 2
    assert "configuration" in capsys.readouterr().err
    assert os.path.exists(victim)


# -- the report ----------------------------------------------------------------------------------
def report_setup(arena, cache, actors, mode):
    hf = lay_out_cache(os.path.join(cache, "hf"), actors.gid, mode=mode)
    actors.alice.run("mkdir -p %s/models--secret-project && echo w > %s/models--secret-project/w" % (hf, hf))
    state = os.path.join(arena, "state")
    os.mkdir(state, 0o755)
    conf = {
        "root": cache,
        "group": actors.group,
        "caches": [{"name": "hf", "path": hf, "format": "generic", "mode": "%o" % mode}],
        "outputs": {
            "json": os.path.join(state, "report.json"),
            "history": os.path.join(state, "history.jsonl"),
            "prometheus": os.path.join(state, "shared_cache.prom"),
            "html": os.path.join(state, "index.html"),
        },
        "workers": 1,
    }
    return write_config(os.path.join(arena, "report.json"), conf), state


def test_a_stranger_cannot_read_the_report_of_a_2770_cache(actors, arena, cache):
    path, state = report_setup(arena, cache, actors, 0o2770)
    assert _hostcmd.report_main(path, ["--write", "--quiet"]) == 0
    names = sorted(os.listdir(state))
    assert names == ["history.jsonl", "index.html", "report.json", "shared_cache.prom"]
    for name in names:
        f = os.path.join(state, name)
        assert actors.carol.run(["cat", f], check=False).returncode != 0, name
        assert actors.alice.run(["cat", f]).returncode == 0, name  # the group may
    assert "secret-project" in actors.alice.run(["cat", os.path.join(state, "report.json")]).stdout


def test_the_report_of_2775_caches_stays_world_readable(actors, arena, cache):
    path, state = report_setup(arena, cache, actors, 0o2775)
    assert _hostcmd.report_main(path, ["--write", "--quiet"]) == 0
    for name in os.listdir(state):
        assert actors.carol.run(["cat", os.path.join(state, name)]).returncode == 0, name


def test_the_report_is_not_written_where_members_can_swap_names(actors, arena, cache):
    path, _state = report_setup(arena, cache, actors, 0o2770)
    conf = json.load(open(path, encoding="utf-8"))
    conf["outputs"]["json"] = os.path.join(cache, "report.json")
    actors.alice.run("ln -s /etc/mlinfra-nonexistent-target %s/report.json" % cache)
    write_config(path, conf)
    assert _hostcmd.report_main(path, ["--write", "--quiet"]) == 1
    assert os.path.islink(os.path.join(cache, "report.json"))
    assert not os.path.exists("/etc/mlinfra-nonexistent-target")


def test_the_installed_wrapper_runs_as_root_against_members(actors, arena, cache):
    """The thin wrapper, rendered as the role does, runs the same code (python3 -I, host_lib path)."""

    import jinja2

    conf, victim = prune_conf(arena, cache, actors)
    path = write_config(os.path.join(arena, "prune.json"), conf)
    root = os.path.dirname(os.path.abspath(_hostcmd.__file__))
    lib = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(root)))))
    tpl = os.path.join(root, "..", "..", "roles", "cache_prune", "templates", "mlinfra-cache-prune.j2")
    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False)  # noqa: S701 - Python, not HTML
    env.filters["to_json"] = json.dumps
    with open(tpl, encoding="utf-8") as fh:
        text = env.from_string(fh.read()).render(ansible_managed="x", host_lib_dir=lib, cache_prune_config_path=path)
    script = os.path.join(arena, "mlinfra-cache-prune")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write(text)
    run = subprocess.run([sys.executable, "-I", script], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "cache_prune misc format=generic units=1" in run.stdout
    assert not os.path.exists(victim)


def test_a_stranger_measures_what_they_may_read_without_the_private_history(actors, arena):
    """show-cache-info as carol: the 0640 root:<group> history of a 2770 cache is simply not used."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _render

    state = os.path.join(arena, "state")
    os.mkdir(state, 0o755)
    hist = os.path.join(state, "history.jsonl")
    with open(hist, "w", encoding="utf-8") as fh:
        fh.write('{"t": 1, "caches": {"pip": 1}}\n')
    os.chown(hist, 0, actors.gid)
    os.chmod(hist, 0o640)
    assert actors.carol.call(_render.read_history, hist) == []
    assert len(actors.alice.call(_render.read_history, hist)) == 1
