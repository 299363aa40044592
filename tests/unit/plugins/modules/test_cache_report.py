# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cache_report module driven like Ansible drives it, on real temporary trees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_report
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import run_main, run_process


def run_module(capsys, check=False, **args):
    return run_main(cache_report, capsys, check=check, **args)


def run_module_process(tmp_path, **args):
    return run_process(cache_report, tmp_path, **args)


def du_b1(path):
    out = subprocess.run(["du", "-sxB1", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


@pytest.fixture
def root():
    d = tempfile.mkdtemp(prefix="cr-module-")
    pip = os.path.join(d, "pip", "http-v2", "a", "b")
    os.makedirs(pip)
    for i in range(12):
        with open(os.path.join(pip, "entry%d" % i), "wb") as fh:
            fh.write(b"p" * (1000 * i))
    hf = os.path.join(d, "ml-models", "huggingface", "hub", "models--o--m")
    os.makedirs(os.path.join(hf, "blobs"))
    os.makedirs(os.path.join(hf, "snapshots", "c" * 40))
    with open(os.path.join(hf, "blobs", "f" * 64), "wb") as fh:
        fh.write(b"w" * 123456)
    os.symlink("../../blobs/" + "f" * 64, os.path.join(hf, "snapshots", "c" * 40, "model.bin"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def catalog(root):
    """Entries shaped like shared_cache_catalog (extra keys included)."""
    return [
        {
            "name": "huggingface",
            "path": "ml-models/huggingface",
            "abs_path": root + "/ml-models/huggingface",
            "format": "huggingface",
            "category": "ml-models",
            "description": "HF",
            "env": {"HF_HUB_CACHE": "hub"},
            "retention": {"max_age": None, "age_by": "newest"},
            "mode": "2775",
        },
        {"name": "pip", "path": "pip", "format": "pip", "category": "packages", "retention": {"age_by": "mtime"}},
        {"name": "npm", "path": "npm", "format": "npm", "category": "languages"},
    ]


def test_report_of_a_catalog(capsys, root):
    res = run_module(capsys, caches=catalog(root), root=root, render=["table", "prometheus", "html"])
    assert res["changed"] is False
    by = {c["name"]: c for c in res["caches"]}
    assert by["huggingface"]["bytes"] == du_b1(root + "/ml-models/huggingface")
    assert by["pip"]["bytes"] == du_b1(root + "/pip")
    assert by["pip"]["files"] == 12 and by["pip"]["dirs"] == 3
    assert by["npm"]["exists"] is False
    assert by["huggingface"]["units"][0]["kind"] == "revision"
    assert res["filesystem"]["path"] == root
    for key in ("size", "used", "avail", "percent", "warning", "critical"):
        assert key in res["filesystem"]
    assert res["totals"]["bytes"] == by["huggingface"]["bytes"] + by["pip"]["bytes"]
    assert res["history_entry"]["total"] == res["totals"]["bytes"]
    assert res["history_entry"]["caches"]["pip"] == by["pip"]["bytes"]
    assert "Total Cache Usage" in res["table"]
    assert "shared_cache_size_bytes{" in res["prometheus"]
    assert res["html"].startswith("<!DOCTYPE html>")


def test_check_mode_reports_the_same(capsys, root):
    a = run_module(capsys, caches=catalog(root), root=root, workers=1)
    b = run_module(capsys, check=True, caches=catalog(root), root=root, workers=2)

    def strip(res):
        # a walk reads directories, which may move their atime (relatime): HF revisions take
        # their snapshot directory's times into last_used, so that one figure may move.
        out = []
        for c in res["caches"]:
            c = {k: v for k, v in c.items() if k != "seconds"}
            c["units"] = [{k: v for k, v in u.items() if k != "last_used"} for u in c["units"]]
            out.append(c)
        return out

    assert strip(a) == strip(b)
    assert b["changed"] is False


def test_thresholds_warn(tmp_path, root):
    res = run_module_process(tmp_path, caches=catalog(root), root=root, warn_percent=0, critical_percent=0)
    assert res["filesystem"]["warning"] and res["filesystem"]["critical"]
    assert "full" in json.dumps(res.get("warnings", []))


def test_history_file_feeds_the_page(capsys, root):
    hist = os.path.join(root, "history.jsonl")
    with open(hist, "w") as fh:
        for i in range(3):
            fh.write(json.dumps({"t": 1700000000 + i * 3600, "total": 1000 * i, "fs_used": 5000}) + "\n")
    res = run_module(capsys, caches=catalog(root), root=root, render=["html"], history_file=hist)
    assert 'id="growth" data-points="4"' in res["html"]
    assert "table" not in res


@pytest.mark.parametrize(
    ("caches", "extra", "msg"),
    [
        ([{"name": "x", "path": "rel"}], {}, "relative and no 'root'"),
        ([{"name": "x", "path": "/a/../b"}], {}, "'..'"),
        ([{"name": "x", "path": "/"}], {}, "refusing"),
        ([{"path": "/srv/x"}], {}, "needs a non-empty 'name'"),
        ([{"name": "x", "path": "/srv/x"}, {"name": "x", "path": "/srv/y"}], {}, "twice"),
        ([{"name": "x", "path": "/srv/x", "format": "zip"}], {}, "unknown format"),
        ([{"name": "x", "path": "/srv/x", "category": "misc"}], {}, "unknown category"),
        ([{"name": "x", "path": "/srv/x", "retention": {"age_by": "ctime"}}], {}, "age_by"),
        ([{"name": "x", "path": "/srv/x"}], {"warn_percent": 95, "critical_percent": 90}, "warn"),
        ([{"name": "x", "path": "/srv/x"}], {"age_days": [0]}, "age_days"),
        ([{"name": "x", "path": "/srv/x"}], {"top": -1}, "top"),
    ],
)
def test_bad_input_fails_clearly(capsys, caches, extra, msg):
    res = run_module(capsys, caches=caches, **extra)
    assert res.get("failed") is True
    assert msg in res["msg"]


def test_symlinked_cache_is_reported_not_followed(tmp_path, root):
    os.symlink("/etc", os.path.join(root, "evil"))
    res = run_module_process(tmp_path, caches=[{"name": "evil", "path": "evil"}], root=root)
    c = res["caches"][0]
    assert c["error"] and c["bytes"] == 0 and c["files"] == 0
    assert "evil" in json.dumps(res.get("warnings", []))


def test_a_curated_cache_reports_its_writers(capsys, root):
    """The catalog's `writers` reaches the report data, the table and the page."""
    caches = catalog(root)
    caches[0]["writers"] = "cache-writers"
    res = run_module(capsys, caches=caches, root=root, render=["table", "html"])
    by = {c["name"]: c for c in res["caches"]}
    assert by["huggingface"]["writers"] == "cache-writers" and by["pip"]["writers"] is None
    # the table and the page say it, on the curated cache's row only
    rows = [line for line in res["table"].splitlines() if "curated: written by cache-writers only" in line]
    assert len(rows) == 1 and rows[0].split()[0] == "huggingface", res["table"]
    assert res["html"].count("curated: written by cache-writers only") == 1


def test_the_module_writes_with_the_one_writer_and_trims_the_history(capsys, tmp_path, root):
    """outputs: the files show-cache-info --write makes, the history kept at history_limit entries."""
    out = tmp_path / "report"
    out.mkdir(mode=0o755)
    outputs = {
        "json": str(out / "report.json"),
        "history": str(out / "history.jsonl"),
        "prometheus": str(out / "shared_cache.prom"),
        "html": str(out / "index.html"),
    }
    args = dict(caches=catalog(root), root=root, workers=1, outputs=outputs, history_limit=3)
    res = run_module(capsys, check=True, **args)
    assert res["changed"] is True and res["written"] == [] and os.listdir(out) == []  # check mode: nothing
    for i in range(5):
        res = run_module(capsys, history_file=outputs["history"], **args)
        assert res["changed"] is True
        assert res["written"] == [outputs["json"], outputs["history"], outputs["prometheus"], outputs["html"]]
        lines = (out / "history.jsonl").read_text().splitlines()
        assert len(lines) == min(i + 1, 3), lines
    kept = json.loads((out / "report.json").read_text())
    assert kept["totals"] == res["totals"] and "table" not in kept and "invocation" not in kept
    assert json.loads(lines[-1]) == res["history_entry"]
    assert (out / "shared_cache.prom").read_text().startswith("# HELP shared_cache_")
    assert 'id="growth"' in (out / "index.html").read_text()
    assert sorted(os.listdir(out)) == ["history.jsonl", "index.html", "report.json", "shared_cache.prom"]


def test_the_role_writes_through_the_module_only():
    """No copy/lineinfile of report files in the role: the module (the one writer) writes them."""
    import yaml

    base = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "roles", "cache_report", "tasks")
    tasks = yaml.safe_load(open(os.path.join(base, "report.yml"), encoding="utf-8"))
    modules = [next(k for k in t if "." in k) for t in tasks]
    assert modules == ["mlinfra.shared_cache.cache_report", "ansible.builtin.debug"]
    assert tasks[0]["mlinfra.shared_cache.cache_report"]["outputs"] == "{{ cache_report_outputs }}"
