"""Verify the cache_prune role in the container: what went, what stayed, the schedule and its command."""

from __future__ import annotations

import json

ROOT = "/mnt/storage/cache"
CMD = "/usr/local/sbin/mlinfra-cache-prune"
HF = ROOT + "/ml-models/huggingface/hub/models--org--model"


def test_old_units_went_new_ones_stayed(host):
    e = ROOT + "/pip/http-v2/a/b/c/d/e/"
    assert not host.file(e + "old1").exists and not host.file(e + "old1.body").exists
    assert host.file(e + "new1").exists and host.file(e + "new1.body").exists
    assert not host.file(ROOT + "/pip/wheels/ab/cd/ef/01").exists
    assert not host.file(ROOT + "/apt/archives/old_1.0_all.deb").exists
    assert host.file(ROOT + "/apt/archives/new_1.0_all.deb").exists
    assert host.file(ROOT + "/apt/archives/lock").exists


def test_second_filesystem_and_links_out_were_not_touched(host):
    assert host.file(ROOT + "/pip/mounted/on-another-fs").exists
    assert host.file(ROOT + "/pip/link-out-of-tree").is_symlink
    assert host.file("/etc/hostname").exists


def test_huggingface_old_revision_went_without_dangling_links(host):
    assert not host.file(HF + "/snapshots/1111111111111111111111111111111111111111").exists
    assert not host.file(HF + "/blobs/aaaa").exists
    # the blob the kept revision shares stays, its link resolves
    assert host.file(HF + "/blobs/shared").exists
    assert host.run("test -e %s/snapshots/2222222222222222222222222222222222222222/config.json" % HF).rc == 0
    assert host.file(HF + "/refs/main").content_string == "2222222222222222222222222222222222222222"
    dangling = host.run("find %s -xtype l" % HF).stdout.strip()
    assert dangling == ""


def test_cron_schedule_runs_the_command(host):
    cron = host.file("/etc/cron.d/mlinfra-shared-cache-prune")
    assert cron.exists and cron.user == "root" and cron.mode == 0o644
    assert CMD + " --syslog --quiet" in cron.content_string
    # bounded like the systemd unit: no overlap (root-only flock), no hang (timeout)
    assert "flock -n /var/lib/mlinfra-shared-cache/prune/cron.lock timeout -k 5m 6h " + CMD in cron.content_string
    lock_dir = host.file("/var/lib/mlinfra-shared-cache/prune")
    assert lock_dir.user == "root" and lock_dir.mode == 0o700
    assert not host.file("/etc/systemd/system/mlinfra-cache-prune.timer").exists
    f = host.file(CMD)
    assert f.user == "root" and f.mode == 0o755
    conf = json.loads(host.file("/etc/mlinfra-shared-cache/prune.json").content_string)
    names = {c["name"]: c for c in conf["caches"]}
    assert names["pip"]["retention"]["max_age"] == "90d" and names["huggingface"]["retention"]["max_age"] == "30d"


def test_command_dry_run_then_real_run_prunes_and_fixes_permissions(host):
    e = ROOT + "/pip/http-v2/a/b/c/d/e/"
    with host.sudo():
        host.run_expect([0], "head -c 1000 /dev/zero > %sold2 && touch -d '200 days ago' %sold2" % (e, e))
        host.run_expect([0], "umask 077 && echo private > %sprivate-new && chown nobody %sprivate-new" % (e, e))
        dry = host.run(CMD + " --dry-run --cache pip")
        assert dry.rc == 0, dry.stderr
        assert "cache_prune pip format=pip (dry run) units=1" in dry.stdout
        assert host.file(e + "old2").exists
        real = host.run(CMD + " --cache pip")
        assert real.rc == 0, real.stdout + real.stderr
        lines = real.stdout.splitlines()
        assert any(line.startswith("cache_prune pip format=pip units=1") for line in lines), lines
        assert any(line.startswith("cache_dir pip ") for line in lines), lines
    assert not host.file(e + "old2").exists
    private = host.file(e + "private-new")
    assert private.exists and private.user == "nobody" and private.group == "cache"
    assert private.mode & 0o060 == 0o060 and private.mode & 0o002 == 0


def test_second_run_of_the_command_has_nothing_to_do(host):
    with host.sudo():
        out = host.run(CMD + " --no-permissions")
    assert out.rc == 0
    assert all(
        " units=0 " in line for line in out.stdout.splitlines() if line.startswith("cache_prune ") and "format=" in line
    )


def test_nightly_command_verifies_and_writes_the_summary(host):
    with host.sudo():
        out = host.run(CMD + " --cache huggingface --no-permissions")
        assert out.rc == 0, out.stdout + out.stderr
        summary = host.file("/var/lib/mlinfra-shared-cache/verify/summary.json")
        assert summary.user == "root" and summary.mode == 0o640
        doc = json.loads(summary.content_string)
    assert any(line.startswith("cache_verify huggingface format=huggingface ") for line in out.stdout.splitlines())
    assert doc["version"] == 1 and "huggingface" in doc["caches"]
    assert host.file("/var/lib/mlinfra-shared-cache/verify").mode == 0o700
