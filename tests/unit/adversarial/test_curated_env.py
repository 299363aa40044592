"""Curated caches in the environment, the workspaces and the doctor.

- cache_env (the real role, sourced by real users): members get HF_HUB_OFFLINE=1 when the hub
  cache is curated, and not otherwise; containers get it in their env file.
- compose_volumes (the real role): a curated cache is mounted read-only.
- cache_doctor: the `curated` check passes on a tree cache_dir laid out, fails with a fix when the
  cache group can write, and its fix, pasted into a shell, makes it pass again.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._catalog import resolve
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.curated import lay_out_curated
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.test_env_configs import (
    PLAY,
    apply_role_vars,
    doctor,
    failed,
    sourced_env,
)
from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import run_play_on_localhost

CURATED = {"huggingface": {"writers": "cache-writers"}}


@pytest.mark.ansible_package
def test_members_are_offline_for_a_curated_hub_cache_and_workspaces_mount_it_read_only(actors, arena, cache):
    """One play: cache_env and compose_volumes with the hub cache curated (the env test of
    test_env_configs.py shows HF_HUB_OFFLINE absent when it is not)."""
    pytest.importorskip("ansible_collections.community.general", reason="community.general not installed")
    dest = os.path.join(arena, "compose.yml")
    play = PLAY.replace("    - role: mlinfra.shared_cache.cache_env\n", "    - role: mlinfra.shared_cache.cache_env\n"
                        "    - role: mlinfra.shared_cache.compose_volumes\n")  # fmt: skip
    variables = apply_role_vars(arena, actors, cache)
    variables.update(
        shared_cache_overrides=CURATED,
        compose_volumes_users=["root"],
        compose_volumes_dest=dest,
        compose_volumes_known_users=["root"],
        compose_volumes_env_file=os.path.join(arena, "etc", "container", "shared-cache.env"),
    )
    rc, recap, out = run_play_on_localhost(play, arena, variables)
    assert rc == 0 and recap.get("failed") == 0, out
    profile = variables["cache_env_profile_path"]
    alice = sourced_env(actors.alice.run, profile)
    assert alice["HF_HUB_OFFLINE"] == "1" and alice["HF_HUB_CACHE"] == cache + "/ml-models/huggingface/hub"
    assert "HF_HUB_OFFLINE" not in sourced_env(actors.carol.run, profile)  # members only, as the rest
    with open(os.path.join(arena, "etc", "container", "shared-cache.env")) as fh:
        assert "HF_HUB_OFFLINE=1" in fh.read().splitlines()
    with open(dest) as fh:
        volumes = yaml.safe_load(fh)["services"]["workspace-root"]["volumes"]
    assert "%s/ml-models/huggingface:/cache/ml-models/huggingface:ro" % cache in volumes
    assert "%s/pip:/cache/pip:rw" % cache in volumes


def test_the_doctor_checks_a_curated_cache_and_its_fix_works(capsys, actors, arena, cache, curators):
    wgroup, writer = curators
    catalog = resolve({"hf": {"path": "hf", "format": "huggingface", "writers": wgroup}}, {}, cache)
    path = catalog[0]["abs_path"]
    lay_out_curated(path, actors.group, wgroup, mode="2775", subdirs=())
    # the prefetch account is a member too (it may come first): the write is tried as one who is not a writer
    members = [writer.name, actors.alice.name, actors.bob.name]
    common = dict(catalog=catalog, group=actors.group, members=members, env_source="none")
    res = doctor(capsys, **common)
    ok = [c for c in res["checks"] if c["check"] == "curated"]
    assert [c["ok"] for c in ok] == [True] and "%s was refused" % actors.alice.name in ok[0]["msg"], ok
    assert "Permission denied" in ok[0]["msg"]
    assert failed(res, "layout") == [] and not [c for c in res["checks"] if c["check"] == "probe" and c["ok"]]
    # someone gives the cache group write: found, with a fix to paste
    subprocess.run(["setfacl", "-m", "g:%s:rwx,d:g:%s:rwx" % (actors.group, actors.group), path], check=True)
    bad = failed(doctor(capsys, **common), "curated")
    assert len(bad) == 1 and "could write" in bad[0]["msg"] and "access ACL gives %s 7" % actors.group in bad[0]["msg"]
    assert not [n for n in os.listdir(path) if n.startswith(".cache-doctor-")]  # the member's probe removed
    # without the probe the ACLs are still read
    bad = failed(doctor(capsys, **dict(common, probe=False)), "curated")
    assert len(bad) == 1 and "could write" not in bad[0]["msg"] and "default ACL gives" in bad[0]["msg"]
    fix = bad[0]["fix"].split(" or for this directory: ", 1)[1]
    subprocess.run(["sh", "-c", fix], check=True)
    assert failed(doctor(capsys, **common), "curated") == []
