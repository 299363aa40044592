"""Three hosts, one shared cache: the layout and the pre-populated items are visible and usable by
the cache group on every host; only the cache server pre-populated."""

from __future__ import annotations

import pytest

ROOT = "/mnt/storage/cache"
HUB = ROOT + "/ml-models/huggingface/hub"
GID = 2500


def name(host):
    return host.backend.get_hostname()


def test_group_has_the_same_gid_everywhere(host):
    assert host.group("cache").gid == GID
    assert "cache" in host.user("alice").groups


def test_tree_is_group_owned_setgid(host):
    for path in (ROOT, ROOT + "/pip", ROOT + "/ml-models/huggingface", HUB, ROOT + "/apt/archives"):
        f = host.file(path)
        assert f.is_directory, path
        assert f.group == "cache", path
        assert f.mode & 0o2070 == 0o2070, (path, oct(f.mode))
        assert not f.mode & 0o002, path


def test_only_the_cache_server_prefetched(host):
    exists = host.run("getent passwd cache-prefetch").rc == 0
    assert exists == (name(host) == "mh-cache")


def test_the_prefetch_venv_was_rebuilt_from_the_system_python(host):
    if name(host) != "mh-cache":  # only the cache server prefetches
        assert not host.file("/opt/mlinfra/cache-prefetch").exists
        return
    assert "home = /usr/bin\n" in host.file("/opt/mlinfra/cache-prefetch/pyvenv.cfg").content_string
    assert not host.check_output("readlink -f /opt/mlinfra/cache-prefetch/bin/python").startswith("/root")
    assert host.user("cache-prefetch").shell == "/usr/sbin/nologin"


def test_models_and_datasets_are_in_the_hub_cache(host):
    snaps = host.run("ls %s/models--mlinfra--tiny-bert/snapshots" % HUB).stdout.split()
    assert len(snaps) == 1
    snap = "%s/models--mlinfra--tiny-bert/snapshots/%s" % (HUB, snaps[0])
    assert host.file(snap + "/config.json").content_string.startswith('{"model_type": "bert"')
    assert not host.file(snap + "/README.md").exists  # allow_patterns honoured
    assert host.file(HUB + "/models--mlinfra--tiny-bert/refs/main").content_string == snaps[0]
    assert host.run("ls %s/datasets--mlinfra--tiny-text/snapshots/*/data/train.csv" % HUB).rc == 0


def test_downloads_are_group_owned_and_shareable(host):
    out = host.check_output(
        "find %s/models--mlinfra--tiny-bert %s/pip/wheelhouse %s/apt/archives -type f -printf '%%u %%g %%m %%p\\n'"
        % (HUB, ROOT, ROOT)
    )
    lines = out.splitlines()
    assert any(line.endswith(".whl") for line in lines)
    assert any("/apt/archives/hello_" in line and line.endswith(".deb") for line in lines)
    for line in lines:
        user, group, mode, path = line.split(" ", 3)
        if path.endswith("/lock"):
            continue
        assert user == "cache-prefetch" or name(host) != "mh-cache", line
        assert group == "cache", line
        assert int(mode, 8) & 0o060 == 0o060, line
        assert not int(mode, 8) & 0o002, line


def test_wheels_are_for_the_containers_python(host):
    files = host.run("ls %s/pip/wheelhouse" % ROOT).stdout.split()
    assert files == ["six-1.16.0-py2.py3-none-any.whl"]


@pytest.mark.parametrize("path", [HUB, ROOT + "/pip/wheelhouse"])
def test_a_member_on_any_host_can_write_and_others_can_replace(host, path):
    me = name(host)
    f = "%s/.mh-probe-%s" % (path, me)
    assert host.run("sudo -u alice sh -c 'umask 077; echo %s > %s'" % (me, f)).rc == 0
    st = host.file(f)
    assert st.group == "cache"
    # a different member (bob exists on mh-gpu2 only as a member, but alice's uid is the same everywhere)
    assert host.run("sudo -u alice cat %s" % f).stdout.strip() == me
    assert host.run("sudo -u alice rm -f %s" % f).rc == 0
