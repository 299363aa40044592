# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cache_env against the threat model (issue 11, item 2): the shared environment and tool settings
reach cache-group members only, never root (root must not install what a member can replace) and
never a stranger; the system-wide settings of earlier versions are removed with the admin's other
settings, owner and mode kept.

The real role runs with ansible-playbook on this host, its outputs pointed into the arena; the
rendered script is sourced by real users (setpriv with their real groups) and read by the real
pip and git.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._catalog import resolve
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_doctor
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import lay_out_cache
from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import run_play_on_localhost

PLAY = """- hosts: localhost
  gather_facts: false
  roles:
    - role: mlinfra.shared_cache.cache_env
"""
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "..", "..", "..", "roles", "catalog", "defaults", "main.yml")) as _fh:
    DEFAULTS = yaml.safe_load(_fh)
PIP = "/usr/bin/python3"  # Debian's pip, runnable by every user (the venv's may not be)


def apply_role(arena, actors, cache, **extra):
    # the role edits ini files with community.general (the ansible package; not in the bare
    # ansible-core 2.21 venv: the tests calling this are marked ansible_package, which the 2.21
    # stage deselects; a skip fails every stage of make test)
    pytest.importorskip("ansible_collections.community.general", reason="community.general not installed")
    variables = apply_role_vars(arena, actors, cache)
    variables.update(extra)
    rc, recap, out = run_play_on_localhost(PLAY, arena, variables)
    assert rc == 0 and recap.get("failed") == 0, out
    return variables


def apply_role_vars(arena, actors, cache):
    """The role's variables with every output pointed into the arena."""
    etc = os.path.join(arena, "etc")
    variables = {
        "shared_cache_root": cache,
        "shared_cache_group": actors.group,
        "cache_env_profile_path": os.path.join(etc, "profile.d", "shared-cache.sh"),
        "cache_env_container_dir": os.path.join(etc, "container"),
        "cache_env_retired_settings": [
            {"path": os.path.join(etc, "pip.conf"), "section": "global", "key": "cache-dir", "cache_path": "pip"},
            {"path": os.path.join(etc, "npmrc"), "key": "cache", "cache_path": "npm"},
            {"path": os.path.join(etc, "gitconfig"), "section": "lfs", "key": "storage", "cache_path": "git-lfs"},
        ],
        "cache_env_retired_condarc": os.path.join(etc, "conda", "condarc.d", "shared-cache.yml"),
    }
    return variables


def sourced_env(run, script, tail="env"):
    """The environment after ``. script`` in a fresh sh started with a minimal environment."""
    out = run(". %s; %s" % (script, tail)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def as_root(cmd, env=None, groups=(0,)):
    """``sh -c cmd`` as root; ``groups``: root's supplementary groups (root may be in the cache group)."""
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    base.update(env or {})
    argv = ["setpriv", "--groups=%s" % ",".join(map(str, groups)), "--", "sh", "-c", cmd]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=base)


def pointing_into(env, root):
    return sorted(k for k, v in env.items() if root in v)


@pytest.fixture
def profile(actors, arena, cache):
    return apply_role(arena, actors, cache)["cache_env_profile_path"]


@pytest.mark.ansible_package
def test_members_get_the_shared_environment_root_and_strangers_nothing(actors, arena, cache, profile):
    alice = sourced_env(actors.alice.run, profile, "echo UMASK=$(umask); env")
    assert alice["PIP_CACHE_DIR"] == cache + "/pip"
    assert alice["PIP_FIND_LINKS"] == cache + "/pip/wheelhouse"
    assert alice["npm_config_cache"] == cache + "/npm"
    assert alice["CONDA_PKGS_DIRS"] == cache + "/conda/pkgs"
    assert alice["CARGO_HOME"] == cache + "/cargo"
    assert alice["CARGO_INSTALL_ROOT"] == "/nonexistent/.cargo"  # cargo install: her own bin/, not the shared one
    assert alice["GIT_CONFIG_KEY_0"] == "lfs.storage" and alice["GIT_CONFIG_VALUE_0"] == cache + "/git-lfs"
    assert alice["UMASK"] == "0002"
    assert "HF_HOME" not in alice
    assert "HF_HUB_OFFLINE" not in alice  # only for a curated hub cache (test_curated_env.py)
    assert pointing_into(sourced_env(actors.bob.run, profile), cache) == pointing_into(alice, cache)
    for groups in ((0,), (0, actors.gid)):  # root, also when root is in the cache group
        root = sourced_env(lambda cmd, g=groups: as_root(cmd, groups=g), profile, "echo UMASK=$(umask); env")
        assert pointing_into(root, cache) == [] and "GIT_CONFIG_COUNT" not in root, groups
        assert root["UMASK"] == "0022"
    carol = sourced_env(actors.carol.run, profile, "echo UMASK=$(umask); env")
    assert pointing_into(carol, cache) == [] and "GIT_CONFIG_COUNT" not in carol
    assert carol["UMASK"] == "0022"
    # workspace containers, where the user is the member: the same settings with the mount paths
    with open(os.path.join(arena, "etc", "container", "shared-cache.env")) as fh:
        lines = fh.read().splitlines()
    assert {"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=lfs.storage", "GIT_CONFIG_VALUE_0=/cache/git-lfs"} <= set(lines)
    assert "PIP_CACHE_DIR=/cache/pip" in lines and not [line for line in lines if cache in line]


@pytest.mark.ansible_package
def test_root_pip_and_git_do_not_use_the_shared_cache(actors, cache, profile):
    """The real tools: pip's cache dir and git's lfs.storage as each user sees them after login."""
    pip_dir = ". %s; %s -m pip cache dir" % (profile, PIP)
    assert actors.alice.run(pip_dir).stdout.strip() == cache + "/pip"
    root_in_group = (0, actors.gid)
    assert cache not in as_root(pip_dir, {"PIP_CONFIG_FILE": os.devnull}, root_in_group).stdout
    npm_cache = ". %s; npm config get cache --userconfig /nonexistent/npmrc" % profile
    assert actors.alice.run(npm_cache).stdout.strip() == cache + "/npm"
    assert cache not in as_root(npm_cache, groups=root_in_group).stdout
    lfs = ". %s; git config --get lfs.storage || true" % profile
    assert actors.alice.run(lfs, env={"GIT_CONFIG_NOSYSTEM": "1"}).stdout.strip() == cache + "/git-lfs"
    assert as_root(lfs, {"GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}, root_in_group).stdout.strip() == ""
    assert actors.carol.run(lfs, env={"GIT_CONFIG_NOSYSTEM": "1"}).stdout.strip() == ""


@pytest.mark.ansible_package
def test_a_members_own_git_config_variables_are_kept_and_not_repeated(actors, cache, profile):
    mine = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.name", "GIT_CONFIG_VALUE_0": "alice"}
    out = actors.alice.run(
        ". %s; . %s; git config --get user.name; git config --get lfs.storage; echo $GIT_CONFIG_COUNT"
        % (profile, profile),
        env=dict(mine, GIT_CONFIG_NOSYSTEM="1"),
    ).stdout.split()
    assert out == ["alice", cache + "/git-lfs", "2"]


def write(path, text, mode, gid=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.chown(path, 0, gid)
    os.chmod(path, mode)


@pytest.mark.ansible_package
def test_settings_of_earlier_versions_are_removed_the_admins_kept_with_owner_and_mode(actors, arena, cache):
    etc = os.path.join(arena, "etc")
    pip_conf = os.path.join(etc, "pip.conf")
    npmrc = os.path.join(etc, "npmrc")
    gitconfig = os.path.join(etc, "gitconfig")
    condarc = os.path.join(etc, "conda", "condarc.d", "shared-cache.yml")
    # what the earlier role left, next to the admin's own settings (an index password: 0600 / 0640)
    write(
        pip_conf,
        "[global]\nindex-url = https://ci:s3cret@pypi.example/simple\ncache-dir = %s/pip\n" % cache,
        0o600,
    )
    write(npmrc, "cache = %s/npm\n//npm.example/:_authToken=npm-s3cret\n" % cache, 0o640, actors.team_gid)
    write(gitconfig, "[user]\n\tname = admin\n[lfs]\n\tstorage = %s/git-lfs\n" % cache, 0o644)
    write(condarc, "# Managed by Ansible (mlinfra.shared_cache.cache_env): shared download caches.\n", 0o644)
    apply_role(arena, actors, cache)
    with open(pip_conf) as fh:
        text = fh.read()
    assert "cache-dir" not in text and "index-url = https://ci:s3cret@pypi.example/simple" in text
    st = os.stat(pip_conf)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    with open(npmrc) as fh:
        assert fh.read().splitlines() == ["//npm.example/:_authToken=npm-s3cret"]
    st = os.stat(npmrc)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, actors.team_gid)
    # the real tools agree: root's pip and git no longer see the shared cache
    listing = as_root("%s -m pip config list" % PIP, {"PIP_CONFIG_FILE": pip_conf}).stdout
    assert cache not in listing and "index-url" in listing
    git = as_root("git config --file %s --list" % gitconfig).stdout
    assert "user.name=admin" in git and cache not in git
    assert not os.path.exists(condarc)


@pytest.mark.ansible_package
def test_only_the_cache_path_is_removed_and_missing_files_are_not_created(actors, arena, cache):
    etc = os.path.join(arena, "etc")
    pip_conf = os.path.join(etc, "pip.conf")
    condarc = os.path.join(etc, "conda", "condarc.d", "shared-cache.yml")
    write(pip_conf, "[global]\ncache-dir = /srv/admins-pip-cache\n", 0o644)
    write(condarc, "pkgs_dirs: [/srv/admins-conda]\n", 0o644)  # the admin's own file of that name
    apply_role(arena, actors, cache)
    with open(pip_conf) as fh:
        assert "cache-dir = /srv/admins-pip-cache" in fh.read()
    assert os.path.exists(condarc)
    assert not os.path.exists(os.path.join(etc, "npmrc")) and not os.path.exists(os.path.join(etc, "gitconfig"))


# --------------------------------------------------------------------------- the doctor


def doctor(capsys, **args):
    """cache_doctor's main() in this process (as root), its JSON result."""
    args.setdefault("pythons", [])
    args.setdefault("min_free", "1K")
    args.setdefault("fail_on_problem", False)
    with patch_module_args(args), pytest.raises(SystemExit):
        cache_doctor.main()
    return json.loads(capsys.readouterr().out)


def failed(res, check):
    return [c for c in res["checks"] if c["ok"] is False and c["check"] == check]


@pytest.mark.ansible_package
def test_the_doctor_reads_a_members_environment_and_fails_when_roots_has_the_caches(capsys, actors, arena, cache):
    profile = apply_role(arena, actors, cache)["cache_env_profile_path"]
    catalog = resolve(DEFAULTS["shared_cache_caches"], {}, cache)
    common = dict(catalog=catalog, group=actors.group, probe=False, env_source="file")
    res = doctor(capsys, env_file=profile, **common)
    assert failed(res, "env") == [] and failed(res, "root_env") == []
    assert {c["target"] for c in res["checks"] if c["check"] == "env" and c["ok"]} >= {
        "PIP_CACHE_DIR",
        "git lfs.storage",
    }
    assert [c["ok"] for c in res["checks"] if c["check"] == "root_env"] == [True]
    # the trust marks of code/credentials caches are shown, not failed
    assert any(line.startswith("cargo (code, credentials): ") for line in res["trust"])
    assert not [line for line in res["trust"] if line.startswith("apt ")]
    # the script of earlier versions, exporting to everybody: root's environment is reported
    old = os.path.join(arena, "old-profile.sh")
    write(
        old, "export PIP_CACHE_DIR=%s/pip\nexport HF_HUB_CACHE=%s/ml-models/huggingface/hub\n" % (cache, cache), 0o644
    )
    root_env = failed(doctor(capsys, env_file=old, **common), "root_env")
    assert len(root_env) == 1 and "(HF_HUB_CACHE, PIP_CACHE_DIR)" in root_env[0]["msg"]
    # a member's binaries (CARGO_HOME/bin) on root's PATH
    write(old, 'export PATH="/usr/bin:/bin:%s/cargo/bin"\n' % cache, 0o644)
    root_env = failed(doctor(capsys, env_file=old, **common), "root_env")
    assert len(root_env) == 1 and "(PATH)" in root_env[0]["msg"]


@pytest.fixture
def victim(arena):
    """A root-owned directory with a file, outside the cache: what a member would like root to delete."""
    path = os.path.join(arena, "victim")
    os.mkdir(path, 0o755)
    write(os.path.join(path, "precious"), "root's\n", 0o644)
    return path


def probe_catalog(cache):
    return resolve({"pip": {"path": "pip", "format": "pip"}}, {}, cache)


RACES = {
    # the probe directory itself becomes a symlink to root's directory (alice keeps hers renamed)
    "probe-dir": 'mv -- "$1" "$1.mine" && ln -s -- "$2" "$1"',
    # the probe's file and a subdirectory become links into root's directory
    "probe-file": 'rm -f -- "$1/written" && ln -s -- "$2/precious" "$1/written" && mkdir "$1/sub"'
    ' && ln -s -- "$2" "$1/sub/dir" && ln -s -- "$2/precious" "$1/sub/file"',
}


@pytest.mark.parametrize("race", sorted(RACES))
def test_a_member_racing_the_probe_cannot_make_root_delete_through_a_symlink(
    capsys, actors, cache, victim, monkeypatch, race
):
    catalog = probe_catalog(cache)
    lay_out_cache(catalog[0]["abs_path"], actors.gid)
    as_user = cache_doctor.Doctor.as_user
    raced = []

    def racing(self, user, code, arg):
        result = as_user(self, user, code, arg)
        if code == cache_doctor.PROBE_MODIFY:  # alice strikes between bob's step and root's clean-up
            actors.alice.run(["sh", "-c", RACES[race], "race", arg, victim])
            raced.append(os.path.basename(arg))
        return result

    monkeypatch.setattr(cache_doctor.Doctor, "as_user", racing)
    members = [actors.alice.name, actors.bob.name]
    res = doctor(capsys, catalog=catalog, group=actors.group, members=members, env_source="none")
    assert raced and [c["ok"] for c in res["checks"] if c["check"] == "probe"] == [True]
    assert sorted(os.listdir(victim)) == ["precious"]
    with open(os.path.join(victim, "precious")) as fh:
        assert fh.read() == "root's\n"
    left = sorted(n for n in os.listdir(catalog[0]["abs_path"]) if n.startswith(".cache-doctor-"))
    # root removed its probe name (the link alice put there included), never what alice renamed away
    assert left == ([raced[0] + ".mine"] if race == "probe-dir" else [])


def test_a_member_who_plants_the_probe_name_first_gets_nothing_from_root(capsys, actors, cache, victim, monkeypatch):
    catalog = probe_catalog(cache)
    lay_out_cache(catalog[0]["abs_path"], actors.gid)
    monkeypatch.setattr(cache_doctor.secrets, "token_hex", lambda n: "0" * (2 * n))  # a name alice guessed
    planted = os.path.join(catalog[0]["abs_path"], ".cache-doctor-" + "0" * 16)
    actors.alice.run(["ln", "-s", victim, planted])
    members = [actors.alice.name, actors.bob.name]
    res = doctor(capsys, catalog=catalog, group=actors.group, members=members, env_source="none")
    probe = failed(res, "probe")
    assert len(probe) == 1 and "cannot write" in probe[0]["msg"]  # mkdir refuses an existing name
    assert sorted(os.listdir(victim)) == ["precious"]
    assert os.path.islink(planted)  # not root's to remove: the first member never created it


@pytest.mark.ansible_package
def test_a_system_wide_tool_config_of_an_override_keeps_an_existing_files_owner_and_mode(actors, arena, cache):
    """config.files (a tool without an environment variable) still works; an admin's file keeps its mode."""
    existing = os.path.join(arena, "etc", "tool.ini")
    created = os.path.join(arena, "etc", "new", "tool.ini")
    write(existing, "[auth]\npassword = s3cret\n", 0o640, actors.team_gid)
    files = [
        {"path": existing, "format": "ini", "section": "cache", "key": "dir", "value": ""},
        {"path": created, "format": "ini", "section": "cache", "key": "dir", "value": ""},
    ]
    apply_role(arena, actors, cache, shared_cache_overrides={"npm": {"config": {"files": files}}})
    with open(existing) as fh:
        text = fh.read()
    assert "password = s3cret" in text and "dir = %s/npm" % cache in text
    st = os.stat(existing)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, actors.team_gid)
    st = os.stat(created)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 0, 0)
