"""Ownership: root's repair and prune act only on what the cache owns (docs/security.md, issue 11.1/11.2).

Each test sets a trap as real users would (alice and bob are cache-group members, carol is not and
shares a team group with alice), runs root's job with the collection's own code, and checks that
bob gained nothing and carol lost nothing.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _perms, _prune

DAY = 86400


def repair(path, gid, **kw):
    """What site.yml's repair and the nightly fix-up run: cache_dir's fixer with recurse."""
    fixer = _perms.TreeFixer(0, gid, 0o2775, **kw)
    fd, managed = fixer.ensure(path, [])
    try:
        fixer.walk(fd, managed, workers=1)
    finally:
        os.close(fd)
    return fixer


def team_folder(actors, arena):
    """A team directory alice can move: carol's private dir and file inside, and a team file."""
    team = os.path.join(arena, "team")
    os.mkdir(team)
    os.chown(team, 0, actors.team_gid)
    os.chmod(team, 0o2770)  # noqa: S103 - group-shared on purpose, nothing for others
    carol = actors.carol
    carol.run(
        "umask 077; mkdir -p %(t)s/shared && chmod 2770 %(t)s/shared && mkdir %(t)s/shared/carol-private "
        "&& echo secret > %(t)s/shared/carol-private/key && echo secret > %(t)s/shared/secret.txt "
        "&& echo notes > %(t)s/notes && chmod 660 %(t)s/notes" % {"t": team}
    )
    return team


def test_a_directory_a_member_moves_in_is_not_regrouped_widened_or_entered(actors, arena, cache):
    team = team_folder(actors, arena)
    shared = os.path.join(team, "shared")
    # alice (in the team group) moves the team's folder into the cache
    actors.alice.run("mv %s %s/moved" % (shared, cache))
    moved = os.path.join(cache, "moved")
    assert os.lstat(moved).st_gid == actors.team_gid
    assert actors.bob.run("cat %s/secret.txt" % moved, check=False).returncode != 0
    fixer = repair(cache, actors.gid)
    # nothing of the moved tree changed: bob still reads nothing
    assert os.lstat(moved).st_gid == actors.team_gid
    assert stat.S_IMODE(os.lstat(os.path.join(moved, "secret.txt")).st_mode) == 0o600
    assert os.lstat(os.path.join(moved, "carol-private")).st_gid == actors.team_gid
    assert actors.bob.run("cat %s/secret.txt" % moved, check=False).returncode != 0
    assert actors.bob.run("ls %s" % moved, check=False).returncode != 0
    # ... and it is reported: the directory itself, never what is inside it
    assert fixer.foreign.count == 1 and fixer.foreign.sample == ["moved"]


def test_adoption_is_explicit_and_takes_the_tree_over(actors, arena, cache):
    team = team_folder(actors, arena)
    actors.alice.run("mv %s/shared %s/moved" % (team, cache))
    fixer = repair(cache, actors.gid, adopt=True)
    assert fixer.foreign.count == 0
    assert os.lstat(os.path.join(cache, "moved", "secret.txt")).st_gid == actors.gid


def test_a_hard_link_to_a_team_file_is_not_regrouped(actors, arena, cache):
    team = team_folder(actors, arena)
    notes = os.path.join(team, "notes")
    # protected_hardlinks lets alice link carol's file because she can read and write it (team group)
    actors.alice.run("ln %s %s/notes-link" % (notes, cache))
    assert os.lstat(notes).st_nlink == 2
    fixer = repair(cache, actors.gid)
    st = os.lstat(notes)
    assert st.st_gid == actors.team_gid and stat.S_IMODE(st.st_mode) == 0o660
    assert actors.bob.run("cat %s/notes-link" % cache, check=False).returncode != 0
    assert fixer.foreign.count == 1


def test_a_private_credential_in_a_shared_tool_home_stays_private(actors, cache):
    # cargo writes credentials.toml 0600 in CARGO_HOME; the setgid tree gives it the cache group
    actors.alice.run("mkdir -p %s/cargo && cd %s/cargo && (umask 077; echo token > credentials.toml)" % (cache, cache))
    cred = os.path.join(cache, "cargo", "credentials.toml")
    actors.alice.run("chmod 600 %s" % cred)
    assert os.lstat(cred).st_gid == actors.gid
    fixer = repair(cache, actors.gid)
    assert stat.S_IMODE(os.lstat(cred).st_mode) == 0o600
    assert actors.bob.run("cat %s" % cred, check=False).returncode != 0
    assert fixer.skipped["private"] == 1


def test_a_member_directory_in_place_of_a_managed_subdir_is_not_taken_over(actors, arena):
    root = os.path.join(arena, "cache")
    os.mkdir(root)
    os.chown(root, 0, actors.gid)
    os.chmod(root, 0o2775)  # noqa: S103 - the cache layout (group-shared, readable)
    team = team_folder(actors, arena)
    actors.alice.run("mv %s/shared %s/hub" % (team, root))
    fixer = _perms.TreeFixer(0, actors.gid, 0o2775)
    fd, _managed = fixer.ensure(root, ["hub"])
    os.close(fd)
    hub = os.lstat(os.path.join(root, "hub"))
    assert (hub.st_uid, hub.st_gid) == (actors.carol.uid, actors.team_gid)
    assert fixer.managed_errors and "not the cache's" in fixer.managed_errors[0]["error"]


def old(path, days=200):
    t = time.time() - days * DAY
    for dp, dn, fn in os.walk(path, topdown=False):
        for n in dn + fn:
            os.utime(os.path.join(dp, n), (t, t), follow_symlinks=False)


def test_prune_never_deletes_what_a_member_moved_in(actors, arena, cache):
    team = team_folder(actors, arena)
    actors.alice.run(
        "mkdir %(c)s/misc && echo x > %(c)s/misc/own-old && mv %(t)s/shared %(c)s/misc/moved" % {"c": cache, "t": team}
    )
    old(os.path.join(cache, "misc"))
    res = _prune.Pruner(cache, fmt="generic", policy=_prune.Policy(max_age=90 * DAY)).run()
    assert not os.path.exists(os.path.join(cache, "misc", "own-old"))  # the cache's own old file went
    assert os.path.exists(os.path.join(cache, "misc", "moved", "secret.txt"))
    assert os.path.exists(os.path.join(cache, "misc", "moved", "carol-private", "key"))
    assert res["foreign"]["count"] == 1 and res["foreign"]["sample"] == ["misc/moved"]


def test_prune_rechecks_the_group_when_removing(actors, cache):
    """A unit chosen at walk time whose content is swapped for a member's foreign file before removal."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._prune import RemoveStats, remove_path

    actors.alice.run("mkdir -p %s/u/sub && echo x > %s/u/sub/f" % (cache, cache))
    actors.alice.run("echo y > /tmp/mlinfra-adv-foreign && chgrp %d /tmp/mlinfra-adv-foreign" % actors.team_gid)
    try:
        actors.alice.run("mv /tmp/mlinfra-adv-foreign %s/u/sub/foreign" % cache, check=False)
        if not os.path.exists(os.path.join(cache, "u", "sub", "foreign")):  # /tmp on another fs: copy keeps group
            actors.alice.run("cp -p /tmp/mlinfra-adv-foreign %s/u/sub/foreign" % cache)
    finally:
        if os.path.exists("/tmp/mlinfra-adv-foreign"):
            os.unlink("/tmp/mlinfra-adv-foreign")
    assert os.lstat(os.path.join(cache, "u", "sub", "foreign")).st_gid == actors.team_gid
    fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stats = remove_path(fd, ("u",), stats=RemoveStats(actors.gid))
    finally:
        os.close(fd)
    assert os.path.exists(os.path.join(cache, "u", "sub", "foreign"))
    assert not os.path.exists(os.path.join(cache, "u", "sub", "f"))
    assert stats.foreign.count == 1


@pytest.mark.parametrize("mode", ["-s", "-x"])
def test_a_member_holding_a_lock_on_the_cache_directory_cannot_switch_the_prune_off(actors, cache, mode):
    """Earlier releases flocked the cache directory itself, which any member can open and lock."""
    actors.alice.run("mkdir %s/misc && echo x > %s/misc/old" % (cache, cache))
    old(os.path.join(cache, "misc"))
    holder = actors.alice.popen(["flock", mode, cache, "sleep", "60"])
    try:
        time.sleep(0.3)
        res = _prune.Pruner(cache, fmt="generic", policy=_prune.Policy(max_age=90 * DAY), lock_timeout=1).run()
    finally:
        holder.kill()
        holder.wait()
    assert not res["skipped"], res.get("msg")
    assert not os.path.exists(os.path.join(cache, "misc", "old"))


def test_a_tool_lock_held_by_a_member_delays_its_units_for_a_bounded_time(actors, arena, cache):
    """cargo's .package-cache: the first runs wait for the tool; past TOOL_LOCK_STALE the prune goes on."""
    actors.alice.run(
        "mkdir -p %(c)s/cargo/registry/cache/idx && : > %(c)s/cargo/.package-cache "
        "&& echo crate > %(c)s/cargo/registry/cache/idx/itoa-1.0.0.crate" % {"c": cache}
    )
    cargo = os.path.join(cache, "cargo")
    old(cargo)
    state = os.path.join(arena, "state")
    holder = actors.alice.popen(["flock", "-s", os.path.join(cargo, ".package-cache"), "sleep", "60"])
    try:
        time.sleep(0.3)
        first = _prune.Pruner(
            cargo, fmt="cargo", policy=_prune.Policy(max_age=90 * DAY), lock_timeout=0, lock_dir=state
        ).run()
        assert first["skipped"] and ".package-cache" in first["msg"]
        assert os.path.exists(os.path.join(cargo, "registry", "cache", "idx", "itoa-1.0.0.crate"))
        # a day later the same lock is still held (the member holds it through every run)
        later = time.time() + _prune.TOOL_LOCK_STALE + 60
        res = _prune.Pruner(
            cargo, fmt="cargo", policy=_prune.Policy(max_age=90 * DAY), lock_timeout=0, lock_dir=state, now=later
        ).run()
    finally:
        holder.kill()
        holder.wait()
    assert not res["skipped"] and any("stale" in b for b in res["busy"])
    assert not os.path.exists(os.path.join(cargo, "registry", "cache", "idx", "itoa-1.0.0.crate"))


def test_the_prune_lock_lives_where_members_cannot_open_it(actors, arena, cache):
    state = os.path.join(arena, "state")
    fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        lfd = _prune.prune_lock(fd, 0, state)
        try:
            st = os.fstat(lfd)
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
            assert stat.S_IMODE(os.lstat(state).st_mode) == 0o700
            # a second prune of the same cache waits, then gives up
            assert _prune.prune_lock(fd, 0, state) is None
        finally:
            os.close(lfd)
        # a lock directory a member could write is refused
        bad = os.path.join(arena, "bad")
        os.mkdir(bad)
        os.chown(bad, actors.alice.uid, actors.gid)
        with pytest.raises(OSError, match="other than root may change|not root's alone"):
            _prune.prune_lock(fd, 0, bad)
    finally:
        os.close(fd)


def test_a_trash_name_planted_by_a_member_is_not_used_nor_purged(actors, cache):
    actors.alice.run(
        "mkdir -p %(c)s/pip/http/a && echo x > %(c)s/pip/http/a/old && ln -s /etc %(c)s/pip/.mlinfra-prune-trash "
        "&& mkdir -m 700 %(c)s/pip/.mlinfra-prune-trash-x && echo keep > %(c)s/pip/.mlinfra-prune-trash-x/f"
        % {"c": cache}
    )
    pip = os.path.join(cache, "pip")
    old(os.path.join(pip, "http"))
    res = _prune.Pruner(pip, fmt="generic", policy=_prune.Policy(max_age=90 * DAY)).run()
    assert res["units"] == 1 and not os.path.exists(os.path.join(pip, "http", "a", "old"))
    assert os.path.islink(os.path.join(pip, ".mlinfra-prune-trash"))
    assert os.path.exists(os.path.join(pip, ".mlinfra-prune-trash-x", "f"))
    assert os.path.isdir("/etc/apt")


def test_the_report_counts_a_moved_in_directory_without_listing_its_content(actors, arena, cache):
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _usage

    team = team_folder(actors, arena)
    actors.alice.run(
        "mkdir %(c)s/pip && echo x > %(c)s/pip/wheel && mv %(t)s/shared %(c)s/pip/moved" % {"c": cache, "t": team}
    )
    r = _usage.measure_cache("pip", os.path.join(cache, "pip"), fmt="generic")
    assert r["files"] == 1 and r["foreign"]["count"] == 1 and r["foreign"]["sample"] == ["moved"]
    assert "secret" not in repr(r) and "carol-private" not in repr(r)


def test_a_file_regrouped_between_the_walk_and_the_fix_is_not_regrouped_back(actors, cache):
    """alice owns a cache file, the walk sees it with the cache group, then she chgrps it to her team."""
    actors.alice.run("echo x > %s/f && chmod 600 %s/f" % (cache, cache))
    path = os.path.join(cache, "f")
    st = os.lstat(path)
    assert st.st_gid == actors.gid
    actors.alice.run("chgrp %d %s" % (actors.team_gid, path))
    fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        err = _perms.fix_file(fd, "f", st, 0o660, actors.gid, actors.gid)
    finally:
        os.close(fd)
    assert err is not None and "group changed" in str(err)
    st = os.lstat(path)
    assert st.st_gid == actors.team_gid and stat.S_IMODE(st.st_mode) == 0o600


def test_the_doctor_names_foreign_entries_with_the_fix(actors, arena, cache, capsys):
    """The report counts what a member moved in; the doctor turns it into a line with the command."""
    import json

    from ansible.module_utils.testing import patch_module_args

    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _usage
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._catalog import resolve
    from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_doctor

    team = team_folder(actors, arena)
    actors.alice.run("mkdir %(c)s/pip && mv %(t)s/shared %(c)s/pip/moved" % {"c": cache, "t": team})
    catalog = resolve({"pip": {"path": "pip", "format": "pip"}}, None, cache, "/cache")
    state = os.path.join(arena, "state")
    os.mkdir(state, 0o700)
    report = {"caches": [_usage.measure_cache("pip", os.path.join(cache, "pip"), fmt="pip")]}
    with open(os.path.join(state, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh)
    args = {"catalog": catalog, "group": actors.group, "report": os.path.join(state, "report.json")}
    args.update(probe=False, env_source="none", check_apt=False, pythons=[], fail_on_problem=False)
    with patch_module_args(args), pytest.raises(SystemExit):
        cache_doctor.main()
    res = json.loads(capsys.readouterr().out)
    lines = [c for c in res["checks"] if c["check"] == "ownership" and c["ok"] is False]
    assert len(lines) == 1 and "1 entry not the cache's" in lines[0]["msg"] and "moved" in lines[0]["msg"]
    assert "chgrp -R %s %s/pip/moved" % (actors.group, cache) in lines[0]["fix"]
    # a report a member could have written is not believed
    os.chown(os.path.join(state, "report.json"), actors.alice.uid, -1)
    with patch_module_args(args), pytest.raises(SystemExit):
        cache_doctor.main()
    res = json.loads(capsys.readouterr().out)
    assert not [c for c in res["checks"] if c["check"] == "ownership" and c["ok"] is False]


def test_a_report_worker_never_follows_a_shard_a_member_swapped_or_enters_what_she_moved_in(actors, arena, cache):
    """cache_report shares a big cache's walk: shard directories are listed by one process and
    walked by workers. alice swaps a listed shard for a link to her team's folder before its
    worker opens it, and moves the team folder into another shard: the worker follows nothing,
    names the swapped path, and counts the moved-in directory as foreign only, as one walk does."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _usage

    team = team_folder(actors, arena)
    pip = os.path.join(cache, "pip")
    actors.alice.run(
        "mkdir -p %(p)s/http-v2/aa/x %(p)s/http-v2/bb/x && echo 1 > %(p)s/http-v2/aa/x/f "
        "&& echo 2 > %(p)s/http-v2/bb/x/f && mv %(t)s/shared %(p)s/http-v2/bb/moved" % {"p": pip, "t": team}
    )
    one = _usage.measure_cache("pip", pip, fmt="pip", top=10)
    shared = _usage.measure_cache("pip", pip, fmt="pip", top=10, workers=2)
    for r in (one, shared):
        r.pop("seconds")
        assert r["foreign"]["count"] == 1 and r["foreign"]["sample"] == ["http-v2/bb/moved"]
        assert "secret" not in repr(r) and "carol-private" not in repr(r)
    assert shared == one
    st = os.lstat(os.path.join(pip, "http-v2", "aa"))
    actors.alice.run("mv %(p)s/http-v2/aa %(p)s/http-v2/aa-old && ln -s %(t)s %(p)s/http-v2/aa" % {"p": pip, "t": team})
    fd = os.open(pip, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tally = _usage._Tally(time.time(), (30,), "newest")
        tally.start(os.fstat(fd))
        shards = [("http-v2/aa", (st.st_dev, st.st_ino))]
        share = _usage._measure_shards(_usage._shard_job(fd, shards, actors.gid, 10, 0, tally, None))
    finally:
        os.close(fd)
    assert share["tally"].files == 0 and share["error_count"] == 1
    assert share["errors"][0][0] == "http-v2/aa"
    assert "notes" not in repr(share) and "secret" not in repr(share)
