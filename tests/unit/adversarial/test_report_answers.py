# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report answers the admin's next questions (issue 14 item 7), with real users and real jobs.

Real members write files into a cache laid out by cache_dir's code; the nightly prune command
prunes it and records what it freed; the doctor module runs and records its result; a verify
summary is written as cache_verify will write it. Then show-cache-info --write (the one writer)
must show per cache the bytes each user owns (equal to what find says they own), when the cache
was last pruned and what it freed, the verify's corrupt and unverifiable units, the doctor's
status and the group's members, in the JSON, the table, the page and the metrics. State files a
member could have written are refused, never shown.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _hostcmd, _render, _usage
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import lay_out_cache
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.module_utils.test_cache_report_usage import (
    _prom_samples,
)

OLD = time.time() - 200 * 86400
PROMTOOL = shutil.which("promtool")


def owned_bytes(path, user):
    """Bytes on disk of the inodes ``user`` (name or uid) owns below ``path``, by find (hard links once)."""
    out = subprocess.run(
        ["find", path, "-xdev", "-user", str(user), "-printf", "%i %b\\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    inodes = dict(line.split() for line in out.splitlines())
    return sum(int(b) for b in inodes.values()) * 512


def du(path):
    return int(subprocess.run(["du", "-sxB1", path], capture_output=True, text=True, check=True).stdout.split()[0])


def populate(actors, misc):
    """alice and bob write files of their own; one file belongs to a uid without a name."""
    actors.alice.run("mkdir %s/alice && head -c 300000 /dev/urandom > %s/alice/big" % (misc, misc))
    actors.alice.run("head -c 1000 /dev/urandom > %s/small && ln %s/small %s/alice/again" % (misc, misc, misc))
    actors.bob.run("head -c 70000 /dev/urandom > %s/bob.bin" % misc)
    orphan = os.path.join(misc, "orphan")
    with open(orphan, "wb") as fh:
        fh.write(os.urandom(20000))
    os.chown(orphan, 54321, actors.gid)


def write_json(path, data, owner=0, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.chown(path, owner, -1)
    os.chmod(path, mode)
    return path


def test_owners_are_counted_in_the_one_walk(actors, cache):
    misc = lay_out_cache(os.path.join(cache, "misc"), actors.gid)
    populate(actors, misc)
    r = _usage.measure_cache("misc", misc, owners_top=10)
    owners = {o["owner"]: o for o in r["owners"]}
    assert sum(o["bytes"] for o in r["owners"]) == r["bytes"] == du(misc)
    for who in ("alice", "bob"):
        name = actors.names[who]
        assert owners[name]["bytes"] == owned_bytes(misc, name) > 0
        assert owners[name]["uid"] == getattr(actors, who).uid
    assert owners["54321"]["bytes"] == owned_bytes(misc, 54321) > 0  # no name: the uid
    assert owners["root"]["bytes"] == owned_bytes(misc, "root")  # the directories root laid out
    assert [o["owner"] for o in r["owners"]][0] == actors.names["alice"]  # largest first
    # bounded: the largest owner, then the rest as "other", still adding up
    one = _usage.measure_cache("misc", misc, owners_top=1)
    assert [(o["owner"], o["uid"]) for o in one["owners"]] == [
        (actors.names["alice"], actors.alice.uid),
        ("other", None),
    ]
    assert sum(o["bytes"] for o in one["owners"]) == du(misc)


@pytest.fixture
def setup(actors, arena, cache):
    """A cache the members filled, the prune and report configurations, root's state files."""
    misc = lay_out_cache(os.path.join(cache, "misc"), actors.gid)
    populate(actors, misc)
    old = os.path.join(misc, "old", "f.bin")
    os.makedirs(os.path.dirname(old))
    with open(old, "wb") as fh:
        fh.write(b"o" * 40960)
    os.chown(old, actors.bob.uid, actors.gid)
    os.utime(old, (OLD, OLD))
    state = os.path.join(arena, "state")
    prune_conf = write_json(
        os.path.join(arena, "etc", "prune.json"),
        {
            "root": cache,
            "group": actors.group,
            "owner": "root",
            "acl": True,
            "fix_permissions": False,
            "lock_timeout": 1,
            "lock": os.path.join(state, "prune", "prune.lock"),
            "caches": [
                {"name": "misc", "path": misc, "format": "generic", "mode": "2775", "retention": {"max_age": "30d"}}
            ],
        },
    )
    report_dir = os.path.join(arena, "report")
    os.mkdir(report_dir, 0o755)
    paths = {
        "prune_state": os.path.join(state, "prune", "state.json"),
        "doctor_status": os.path.join(state, "doctor", "status.json"),
        "verify_summary": os.path.join(state, "verify", "summary.json"),
    }
    report_conf = write_json(
        os.path.join(arena, "etc", "report.json"),
        dict(
            paths,
            root=cache,
            group=actors.group,
            workers=1,
            caches=[{"name": "misc", "path": misc, "format": "generic", "mode": "2775", "category": "other"}],
            outputs={
                "json": os.path.join(report_dir, "report.json"),
                "history": os.path.join(report_dir, "history.jsonl"),
                "prometheus": os.path.join(report_dir, "shared_cache.prom"),
                "html": os.path.join(report_dir, "index.html"),
            },
        ),
    )
    return {"misc": misc, "old": old, "prune": prune_conf, "report": report_conf, "dir": report_dir, **paths}


def summary(corrupt):
    return {
        "version": 1,
        "time": time.time() - 3600,
        "caches": {
            "misc": {
                "verified": 7,
                "verified_bytes": 7000,
                "corrupt": corrupt,
                "corrupt_bytes": 1234 * corrupt,
                "unverifiable": 2,
                "unverifiable_bytes": 900,
                "skipped_busy": 0,
                "corrupt_sample": [{"path": "misc/small", "expected": "ab" * 32, "actual": "cd" * 32}][:corrupt],
            }
        },
    }


def run_doctor(capsys, setup, actors):
    from ansible.module_utils.testing import patch_module_args

    from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_doctor

    args = {
        "catalog": [{"name": "misc", "abs_path": setup["misc"], "mount": "/cache/misc", "mode": "2775", "env": {}}],
        "group": actors.group,
        "probe": False,
        "env_source": "none",
        "pythons": [],
        "min_free": "1K",
        "report": "",
        "cron_dir": os.path.join(setup["dir"], "no-cron"),
        "systemd_dir": os.path.join(setup["dir"], "no-systemd"),
        "verify_summary": setup["verify_summary"],
        "status_file": setup["doctor_status"],
        "fail_on_problem": False,
    }
    with patch_module_args(args), pytest.raises(SystemExit):
        cache_doctor.main()
    return json.loads(capsys.readouterr().out)


def test_the_report_answers_the_admins_next_questions(actors, setup, capsys):
    blocks = os.stat(setup["old"]).st_blocks * 512
    # the nightly prune runs and records what it freed, root's only
    assert _hostcmd.prune_main(setup["prune"], ["--quiet"]) == 0
    assert not os.path.exists(setup["old"])
    st = os.stat(setup["prune_state"])
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    recorded = _hostcmd.read_trusted_json(setup["prune_state"])["caches"]["misc"]
    assert recorded["freed_bytes"] == blocks and recorded["units"] == 1 and recorded["errors"] == 0
    assert time.time() - recorded["time"] < 60
    # a dry run records nothing
    assert _hostcmd.prune_main(setup["prune"], ["--quiet", "--dry-run"]) == 0
    assert _hostcmd.read_trusted_json(setup["prune_state"])["caches"]["misc"] == recorded
    # the verify found one corrupt unit; the doctor fails on it and records its result
    write_json(setup["verify_summary"], summary(corrupt=1))
    res = run_doctor(capsys, setup, actors)
    verify = [c for c in res["checks"] if c["check"] == "verify"]
    assert [c["ok"] for c in verify] == [False], verify
    assert verify[0]["fix"] == "ansible-playbook playbooks/verify.yml -e cache_verify_quarantine=true"
    assert "1 corrupt unit(s)" in verify[0]["msg"] and "misc/small" in verify[0]["msg"]
    assert res["recorded"] == setup["doctor_status"] and res["problems"] == 1
    st = os.stat(setup["doctor_status"])
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert stat.S_IMODE(os.stat(os.path.dirname(setup["doctor_status"])).st_mode) == 0o700
    # the one writer
    assert _hostcmd.report_main(setup["report"], ["--write", "--quiet"]) == 0
    with open(os.path.join(setup["dir"], "report.json"), encoding="utf-8") as fh:
        rep = json.load(fh)
    misc = rep["caches"][0]
    owners = {o["owner"]: o["bytes"] for o in misc["owners"]}
    alice, bob = actors.names["alice"], actors.names["bob"]
    assert owners[alice] == owned_bytes(setup["misc"], alice) and owners[bob] == owned_bytes(setup["misc"], bob)
    assert sum(owners.values()) == misc["bytes"] == du(setup["misc"])
    assert misc["last_prune"]["freed_bytes"] == blocks and misc["last_prune"]["time"] == recorded["time"]
    assert misc["verify"]["corrupt"] == 1 and misc["verify"]["unverifiable"] == 2 and misc["verify"]["verified"] == 7
    assert rep["doctor"]["problems"] == 1 and "cache_verify_quarantine=true" in rep["doctor"]["lines"][0]
    assert rep["group"] == {"name": actors.group, "gid": actors.gid, "members": sorted([alice, bob])}
    assert rep["status_errors"] == []
    # the table
    table = _render.render_table(rep)
    assert "Bytes per owner:" in table and "%s %s" % (alice, _render.humanize(owners[alice])) in table
    assert "Last prune:" in table and "freed %s in 1 unit(s)" % _render.humanize(blocks) in table
    assert "verified 7 (6.8K), corrupt 1 (1.2K), unverifiable 2 (900B); e.g. misc/small" in table
    assert "Doctor: 1 problem(s)" in table
    assert "Group %s (gid %d): 2 member(s): %s" % (actors.group, actors.gid, ", ".join(sorted([alice, bob]))) in table
    # the metrics
    with open(os.path.join(setup["dir"], "shared_cache.prom"), encoding="utf-8") as fh:
        prom = fh.read()
    s = _prom_samples(prom)
    assert s['shared_cache_owner_bytes{cache="misc",owner="%s"}' % alice] == owners[alice]
    assert s['shared_cache_owner_bytes{cache="misc",owner="54321"}'] == owners["54321"]
    assert s['shared_cache_corrupt_units{cache="misc"}'] == 1
    assert s['shared_cache_unverifiable_units{cache="misc"}'] == 2
    assert s['shared_cache_last_prune_freed_bytes{cache="misc"}'] == blocks
    assert s["shared_cache_doctor_problems"] == 1
    assert s['shared_cache_group_members{group="%s"}' % actors.group] == 2
    if PROMTOOL:
        subprocess.run([PROMTOOL, "check", "metrics"], input=prom, text=True, check=True, capture_output=True)
    # the page
    with open(os.path.join(setup["dir"], "index.html"), encoding="utf-8") as fh:
        page = fh.read()
    assert 'data-cache="misc" data-owner="%s" data-bytes="%d"' % (alice, owners[alice]) in page
    assert 'data-freed-bytes="%d" data-corrupt="1" data-unverifiable="2"' % blocks in page
    assert 'id="doctor" data-problems="1"' in page
    assert 'data-members="%s"' % " ".join(sorted([alice, bob])) in page
    # the verify is clean again: the doctor passes its verify check
    write_json(setup["verify_summary"], summary(corrupt=0))
    res = run_doctor(capsys, setup, actors)
    assert [c["ok"] for c in res["checks"] if c["check"] == "verify"] == [True]
    assert res["problems"] == 0
    assert _hostcmd.read_trusted_json(setup["doctor_status"])["problems"] == 0


def test_no_verify_yet_passes_with_a_note(actors, setup, capsys):
    res = run_doctor(capsys, setup, actors)
    verify = [c for c in res["checks"] if c["check"] == "verify"]
    assert verify[0]["ok"] is True and "no verify has run yet" in verify[0]["msg"]
    assert _hostcmd.report_main(setup["report"], ["--write", "--quiet"]) == 0
    with open(os.path.join(setup["dir"], "report.json"), encoding="utf-8") as fh:
        rep = json.load(fh)
    assert rep["verify"] is None and rep["caches"][0]["verify"] is None
    assert rep["caches"][0]["last_prune"] is None
    assert "never (no record of the nightly prune)" in _render.render_table(rep)
    assert "shared_cache_corrupt_units" not in _render.render_prometheus(rep)


@pytest.mark.parametrize("which", ["prune_state", "verify_summary", "doctor_status"])
def test_state_files_a_member_wrote_are_refused(actors, setup, capsys, which):
    """A member's file (their own, or in a directory they own) never reaches the report or the doctor."""
    data = {
        "prune_state": {"version": 1, "caches": {"misc": {"time": time.time(), "freed_bytes": 10**12, "units": 1}}},
        "verify_summary": summary(corrupt=5),
        "doctor_status": {"version": 1, "time": time.time(), "problems": 0, "checks": 1, "lines": []},
    }[which]
    write_json(setup[which], data, owner=actors.alice.uid)
    assert _hostcmd.report_main(setup["report"], ["--write", "--quiet"]) == 0
    with open(os.path.join(setup["dir"], "report.json"), encoding="utf-8") as fh:
        rep = json.load(fh)
    assert rep["caches"][0]["last_prune"] is None and rep["caches"][0]["verify"] is None and rep["doctor"] is None
    assert [e.split(":")[0] for e in rep["status_errors"]] == [setup[which]]
    assert "Not read: %s" % setup[which] in _render.render_table(rep)
    if which == "verify_summary":
        res = run_doctor(capsys, setup, actors)
        verify = [c for c in res["checks"] if c["check"] == "verify"]
        assert verify[0]["ok"] is None and "summary not read" in verify[0]["msg"]  # not believed, not failed
    # a directory a member owns on the way: refused the same
    os.chown(setup[which], 0, 0)
    os.chown(os.path.dirname(setup[which]), actors.alice.uid, -1)
    assert _hostcmd.report_main(setup["report"], ["--write", "--quiet"]) == 0
    with open(os.path.join(setup["dir"], "report.json"), encoding="utf-8") as fh:
        assert json.load(fh)["status_errors"][0].startswith(setup[which])


def test_a_member_running_the_command_is_told_the_state_is_roots(actors, setup):
    """alice runs show-cache-info herself: root's 0700 prune state is named as root's, not as missing."""
    assert _hostcmd.prune_main(setup["prune"], ["--quiet"]) == 0
    os.chmod(os.path.dirname(setup["prune_state"]), 0o700)
    err = actors.alice.call(_usage.read_status, setup["prune_state"])[1]
    assert err == "%s: readable by root only (sudo show-cache-info shows it)" % setup["prune_state"]
