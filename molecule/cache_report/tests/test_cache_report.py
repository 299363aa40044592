"""Verify the cache_report role in its container: figures equal du, promtool, page, command, cron."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

ROOT = "/mnt/storage/cache"
STATE = "/var/lib/mlinfra-shared-cache/report"
PROM = "/var/lib/prometheus/node-exporter/shared_cache.prom"
CMD = "/usr/local/bin/show-cache-info"


def du(host, *args):
    out = host.check_output("du -sx %s %s", " ".join(args[:-1]), args[-1])
    return int(out.split()[0])


@pytest.fixture
def report(host):
    return json.loads(host.file(STATE + "/report.json").content_string)


def test_figures_equal_du(host, report):
    by = {c["name"]: c for c in report["caches"]}
    for name, rel in (("pip", "pip"), ("huggingface", "ml-models/huggingface"), ("go", "go"), ("npm", "npm")):
        path = "%s/%s" % (ROOT, rel)
        assert by[name]["bytes"] == du(host, "-B1", path), name
        assert by[name]["apparent_bytes"] == du(host, "-b", path), name
    pip = by["pip"]
    assert pip["files"] == 4  # entry1, entry2, its hard link, the wheel
    assert pip["hardlinks"] == 1 and pip["symlinks"] == 1
    thirty, ninety = pip["not_accessed"]
    assert (thirty["days"], thirty["files"]) == (30, 2)
    assert (ninety["days"], ninety["files"]) == (90, 1)
    assert by["torch"]["exists"] is False
    assert report["filesystem"]["size"] > 0 and "warning" in report["filesystem"]


def test_bytes_per_owner_and_status(report):
    """The same walk counts bytes per owner (root wrote the prepared tree); no prune, doctor or
    verify has recorded anything yet, and the report says so rather than inventing it."""
    for c in report["caches"]:
        assert sum(o["bytes"] for o in c["owners"]) == c["bytes"], c["name"]
    pip = [c for c in report["caches"] if c["name"] == "pip"][0]
    assert pip["owners"] == [{"owner": "root", "uid": 0, "bytes": pip["bytes"]}]
    assert pip["last_prune"] is None and pip["verify"] is None and report["doctor"] is None
    assert report["status_errors"] == []


def test_largest_units_in_format_terms(report):
    units = {(u["cache"], u["kind"]): u for u in report["largest_units"]}
    hf = units[("huggingface", "revision")]
    assert hf["unit"].startswith("org/model 0123456789ab") and "(main)" in hf["unit"]
    assert hf["bytes"] >= 2000000
    assert units[("go", "module")]["key"] == "github.com/x/y@v1.2.3"
    assert report["largest_units"][0]["cache"] == "huggingface"


def test_metrics_valid_for_promtool(host, report):
    text = host.file(PROM).content_string
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed on the controller (Debian package prometheus)")
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    pip = [c for c in report["caches"] if c["name"] == "pip"][0]
    assert re.search(r'^shared_cache_size_bytes\{cache="pip",[^}]*\} %d$' % pip["bytes"], text, re.M)
    # the default catalog has 2770 caches: the metrics are not world-readable (0640 root:cache,
    # or 0600 where the group does not exist)
    assert host.file(PROM).mode in (0o640, 0o600)


class _Data(HTMLParser):
    def __init__(self):
        HTMLParser.__init__(self)
        self.rows = {}
        self.refs = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [a[k] for k in ("src", "href") if k in a]
        if tag == "tr" and "data-cache" in a and "data-files" in a:  # the caches table
            self.rows[a["data-cache"]] = int(a["data-bytes"])


def test_page_self_contained_and_matching(host):
    # the page and report.json of one run: make both now with the command
    host.check_output("%s --write --quiet", CMD)
    page = host.file(STATE + "/index.html").content_string
    rep = json.loads(host.file(STATE + "/report.json").content_string)
    p = _Data()
    p.feed(page)
    assert p.refs == [] and "<script" not in page
    assert p.rows == {c["name"]: c["bytes"] for c in rep["caches"]}


def test_history_grows(host):
    before = len(host.file(STATE + "/history.jsonl").content_string.splitlines())
    assert before >= 1
    host.check_output("%s --write --quiet", CMD)
    lines = host.file(STATE + "/history.jsonl").content_string.splitlines()
    assert len(lines) == before + 1
    last = json.loads(lines[-1])
    assert last["caches"]["pip"] == du(host, "-B1", ROOT + "/pip")


def test_command_prints_the_table(host):
    out = host.check_output(CMD)
    assert "Package Caches:" in out and "ML Models & Datasets:" in out
    assert re.search(r"^  pip +\S+ +4 ", out, re.M)
    assert "Total Cache Usage:" in out
    last = host.check_output("%s --last", CMD)
    assert "Total Cache Usage:" in last


def test_command_as_unprivileged_user_names_unreadable(host):
    res = host.run("setpriv --reuid=65534 --regid=65534 --clear-groups %s", CMD)
    assert res.rc == 0, res.stderr
    assert "1 unreadable: private" in res.stdout


def test_cron_job(host):
    f = host.file("/etc/cron.d/mlinfra-shared-cache-report")
    assert f.mode == 0o644 and f.user == "root"
    # no systemd in the container: cron, bounded by flock -n (root-only lock) and timeout
    assert re.search(
        r"^\*/15 \* \* \* \* root flock -n /var/lib/mlinfra-shared-cache/report/lock/refresh\.lock timeout -k 1m 30m "
        r"/usr/local/bin/show-cache-info --write --quiet$",
        f.content_string,
        re.M,
    )
    lock_dir = host.file("/var/lib/mlinfra-shared-cache/report/lock")
    assert lock_dir.user == "root" and lock_dir.mode == 0o700  # no member can open, so hold, the lock


def test_nothing_world_writable(host):
    for path in (
        CMD,
        STATE,
        STATE + "/report.json",
        STATE + "/history.jsonl",
        PROM,
        "/etc/mlinfra-shared-cache/report.json",
    ):
        assert not host.file(path).mode & 0o002, path
    for path in (STATE + "/report.json", STATE + "/history.jsonl", STATE + "/index.html", PROM):
        assert not host.file(path).mode & 0o004, path  # names units of 2770 caches
