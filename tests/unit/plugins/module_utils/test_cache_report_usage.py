# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_usage on real trees: figures asserted from known contents and against du, promtool, chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from html.parser import HTMLParser

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _render, _usage

NOW = time.time()
DAY = 86400
NOBODY = 65534


def du(path, *flags, uid=None):
    """The real du's figure (first field of the last line); du exits 1 on unreadable dirs."""
    cmd = ["du", "-sx", *flags, str(path)]
    kwargs = {}
    if uid is not None:
        kwargs = {"user": uid, "group": uid, "extra_groups": []}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def write(path, size, age_days=None, atime_days=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
    if age_days is not None:
        t = NOW - age_days * DAY
        a = NOW - atime_days * DAY if atime_days is not None else t
        os.utime(path, (a, t))


@pytest.fixture
def base():
    d = tempfile.mkdtemp(prefix="cr-usage-")
    os.chmod(d, 0o755)  # noqa: S103 - the unprivileged child must traverse it
    yield d
    for dirpath, dirnames, _f in os.walk(d):
        for n in dirnames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, 0o755)  # noqa: S103 - so rmtree can enter it
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def known(base):
    """A cache with known contents.

    files (regular, by name): a/one 1000 B (10 days old), a/b/two 50000 B (45 days), c/three
    300000 B (120 days, read 100 days ago), c/hard = hard link to c/three, d/empty 0 B (fresh);
    symlinks: d/out -> a big file outside the cache, d/outdir -> a directory outside;
    directories below the cache: a, a/b, c, d, e (empty).
    """
    cache = os.path.join(base, "cache")
    outside = os.path.join(base, "outside")
    write(os.path.join(outside, "big"), 2_000_000)
    write(os.path.join(cache, "a", "one"), 1000, 10)
    write(os.path.join(cache, "a", "b", "two"), 50000, 45)
    write(os.path.join(cache, "c", "three"), 300000, 120, atime_days=100)
    os.link(os.path.join(cache, "c", "three"), os.path.join(cache, "c", "hard"))
    write(os.path.join(cache, "d", "empty"), 0, 0)
    os.symlink(os.path.join(outside, "big"), os.path.join(cache, "d", "out"))
    os.symlink(outside, os.path.join(cache, "d", "outdir"))
    os.mkdir(os.path.join(cache, "e"))
    for dirpath, dirnames, _f in os.walk(base):
        for n in dirnames:
            os.chmod(os.path.join(dirpath, n), 0o755)  # noqa: S103 - readable by the unprivileged child
    return cache


def blocks(path):
    return os.lstat(path).st_blocks * 512


def test_known_tree_figures(known):
    r = _usage.measure_cache("k", known, now=NOW, age_days=(30, 90), top=0)
    assert r["exists"] and r["error"] is None
    assert r["files"] == 5  # one, two, three, hard, empty (every name, like find -type f)
    assert r["hardlinks"] == 1
    assert r["dirs"] == 5
    assert r["symlinks"] == 2
    assert r["unreadable_count"] == 0
    # bytes: exactly du's; and nothing of the 2 MB outside file behind the symlink
    assert r["bytes"] == du(known, "-B1")
    assert r["apparent_bytes"] == du(known, "-b")
    assert r["apparent_bytes"] < 2_000_000
    file_apparent = 1000 + 50000 + 300000 + 0
    links_apparent = len(os.readlink(os.path.join(known, "d", "out"))) + len(
        os.readlink(os.path.join(known, "d", "outdir"))
    )
    dirs_apparent = sum(os.lstat(os.path.join(known, p)).st_size for p in ("", "a", "a/b", "c", "d", "e"))
    assert r["apparent_bytes"] == file_apparent + links_apparent + dirs_apparent
    # ages: 'newest' of atime/mtime
    thirty, ninety = r["not_accessed"]
    assert thirty["days"] == 30 and ninety["days"] == 90
    assert thirty["files"] == 2  # two (45 d), three (read 100 d ago); hard link counted once
    assert thirty["bytes"] == blocks(os.path.join(known, "a/b/two")) + blocks(os.path.join(known, "c/three"))
    assert ninety["files"] == 1 and ninety["bytes"] == blocks(os.path.join(known, "c/three"))
    assert r["oldest_mtime"] == pytest.approx(NOW - 120 * DAY, abs=1e-3)
    assert r["oldest_atime"] == pytest.approx(NOW - 100 * DAY, abs=1e-3)
    assert r["newest_mtime"] >= NOW - 60


def test_age_by_mtime_and_atime(known):
    by_m = _usage.measure_cache("k", known, now=NOW, age_days=(110,), age_by="mtime", top=0)
    by_a = _usage.measure_cache("k", known, now=NOW, age_days=(110,), age_by="atime", top=0)
    assert by_m["not_accessed"][0]["files"] == 1  # modified 120 days ago
    assert by_a["not_accessed"][0]["files"] == 0  # but read 100 days ago


@pytest.mark.parametrize("sparse", [False, True])
def test_du_equal_on_odd_shapes(base, sparse):
    cache = os.path.join(base, "odd")
    os.makedirs(os.path.join(cache, "x", "y", "z"))
    for i in range(30):
        write(os.path.join(cache, "x", "f%d" % i), i * 777)
    # hard links across directories, three names for one inode
    os.link(os.path.join(cache, "x", "f29"), os.path.join(cache, "x", "y", "l1"))
    os.link(os.path.join(cache, "x", "f29"), os.path.join(cache, "x", "y", "z", "l2"))
    os.symlink("t" * 400, os.path.join(cache, "long-dangling-link"))
    os.mkfifo(os.path.join(cache, "fifo"))
    if sparse:
        with open(os.path.join(cache, "sparse"), "wb") as fh:
            fh.seek(50_000_000)
            fh.write(b"end")
    # a big directory (its own blocks grow)
    for i in range(300):
        open(os.path.join(cache, "x", "y", "n%04d-%s" % (i, "q" * 40)), "w").close()
    r = _usage.measure_cache("odd", cache, top=0)
    assert r["bytes"] == du(cache, "-B1")
    assert r["apparent_bytes"] == du(cache, "-b")
    assert r["other"] == 1  # the fifo
    assert r["hardlinks"] == 2
    assert r["files"] == 30 + 2 + 300 + (1 if sparse else 0)


def _measure_as_nobody(path):
    """measure_cache in a child that dropped root (root reads every directory)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            res = _usage.measure_cache("u", path, top=3, fmt="generic")
            os.write(wfd, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while True:
        b = os.read(rfd, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(rfd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def test_unreadable_subtree_counted_and_named(known):
    secret = os.path.join(known, "a", "secret")
    write(os.path.join(secret, "hidden"), 40000)
    os.chmod(secret, 0)
    if os.geteuid() == 0:
        r = _measure_as_nobody(known)
        expected = du(known, "-B1", uid=NOBODY)
        expected_apparent = du(known, "-b", uid=NOBODY)
    else:
        r = _usage.measure_cache("u", known, top=3, fmt="generic")
        expected = du(known, "-B1")
        expected_apparent = du(known, "-b")
    assert r["unreadable_count"] == 1
    assert r["unreadable"][0]["path"] == "a/secret"
    assert "ermission" in r["unreadable"][0]["error"]
    # the directory's own blocks are counted (du counts them too), its content is not readable
    assert r["bytes"] == expected
    assert r["apparent_bytes"] == expected_apparent
    assert r["files"] == 5


def test_missing_and_symlinked_root(base, known):
    missing = _usage.measure_cache("m", os.path.join(base, "nope"))
    assert missing["exists"] is False and missing["error"] is None and missing["bytes"] == 0
    link = os.path.join(base, "link")
    os.symlink(known, link)
    r = _usage.measure_cache("l", link)
    assert r["error"] and "symbolic link" in r["error"]
    assert r["bytes"] == 0
    below = _usage.measure_cache("l", os.path.join(link, "a"))
    assert below["error"], "a symlink in any component must refuse the walk"


def test_parallel_equals_serial(base, known):
    caches = []
    for i in range(4):
        p = os.path.join(base, "c%d" % i)
        for j in range(20 * (i + 1)):
            write(os.path.join(p, "d%d" % (j % 3), "f%d" % j), 100 * j)
        caches.append({"name": "c%d" % i, "path": p, "category": "packages"})
    caches.append({"name": "known", "path": known, "category": "ml-models"})
    one = _usage.build_report(caches, root=base, workers=1, now=NOW)
    two = _usage.build_report(caches, root=base, workers=3, now=NOW)
    assert two["workers"] == 3

    def strip(rep):
        return [{k: v for k, v in c.items() if k != "seconds"} for c in rep["caches"]]

    assert strip(one) == strip(two)
    assert one["totals"] == two["totals"]
    assert one["totals"]["bytes"] == sum(du(c["path"], "-B1") for c in caches)
    cats = {c["category"]: c for c in one["categories"]}
    assert cats["packages"]["caches"] == ["c0", "c1", "c2", "c3"]
    assert cats["ml-models"]["bytes"] == du(known, "-B1")
    assert cats["other"]["bytes"] == 0


def test_filesystem_matches_statvfs_and_df(base):
    fs = _usage.filesystem(base, warn_percent=0.0, critical_percent=100.0)
    v = os.statvfs(base)
    slack = 256 << 20  # other processes write to the same filesystem between the calls
    assert fs["size"] == v.f_blocks * v.f_frsize
    assert fs["size"] == fs["used"] + fs["free"]
    assert abs(fs["avail"] - v.f_bavail * v.f_frsize) < slack
    assert fs["percent"] == round(100.0 * fs["used"] / (fs["used"] + fs["avail"]), 1)
    assert fs["warning"] is True
    assert fs["critical"] is (fs["percent"] >= 100.0)
    df = subprocess.run(["df", "-B1", "--output=size,used,avail", base], capture_output=True, text=True, check=True)
    size, used, avail = (int(x) for x in df.stdout.splitlines()[1].split())
    assert size == fs["size"]
    assert abs(used - fs["used"]) < slack and abs(avail - fs["avail"]) < slack


def test_filesystem_flags_follow_thresholds(base):
    pct = _usage.filesystem(base)["percent"]
    assert _usage.filesystem(base, 0.0, 100.0)["warning"] is True
    low = _usage.filesystem(base, min(100.0, pct + 5), 100.0)
    assert low["warning"] is False and low["critical"] is False
    both = _usage.filesystem(base, 0.0, 0.0)
    assert both["warning"] is True and both["critical"] is True


def _hf_repo(cache, repo, rev, files):
    """A HuggingFace hub repo: blobs, one snapshot of symlinks to them, refs/main."""
    r = os.path.join(cache, "hub", repo)
    os.makedirs(os.path.join(r, "refs"))
    with open(os.path.join(r, "refs", "main"), "w") as fh:
        fh.write(rev)
    for name, size in files.items():
        sha = "%064x" % (hash((repo, name)) & ((1 << 256) - 1))
        write(os.path.join(r, "blobs", sha), size)
        snap = os.path.join(r, "snapshots", rev)
        os.makedirs(snap, exist_ok=True)
        os.symlink(os.path.join("..", "..", "blobs", sha), os.path.join(snap, name))
    return r


def test_largest_units_in_format_terms(base):
    hf = os.path.join(base, "hf")
    big = _hf_repo(hf, "models--org--big", "a" * 40, {"model.safetensors": 3_000_000, "config.json": 500})
    _hf_repo(hf, "models--org--small", "b" * 40, {"model.safetensors": 200_000})
    go = os.path.join(base, "go")
    write(os.path.join(go, "pkg/mod/github.com/x/y@v1.2.3/y.go"), 90_000)
    write(os.path.join(go, "pkg/mod/cache/download/github.com/x/y/@v/v1.2.3.zip"), 60_000)
    write(os.path.join(go, "pkg/mod/github.com/z/w@v0.1.0/w.go"), 1_000)
    apt = os.path.join(base, "apt")
    write(os.path.join(apt, "archives/ffmpeg_5.1_amd64.deb"), 700_000)
    write(os.path.join(apt, "archives/lock"), 0)
    rep = _usage.build_report(
        [
            {"name": "huggingface", "path": hf, "format": "huggingface", "category": "ml-models"},
            {"name": "go", "path": go, "format": "go", "category": "languages"},
            {"name": "apt", "path": apt, "format": "apt", "category": "packages"},
        ],
        root=base,
        top=3,
        workers=1,
    )
    by = {c["name"]: c for c in rep["caches"]}
    hfu = by["huggingface"]["units"]
    assert [u["kind"] for u in hfu] == ["revision", "revision"]
    assert hfu[0]["unit"].startswith("org/big " + "a" * 12) and "(main)" in hfu[0]["unit"]
    blobs = sum(blocks(os.path.join(big, "blobs", b)) for b in os.listdir(os.path.join(big, "blobs")))
    assert hfu[0]["bytes"] >= blobs
    gou = by["go"]["units"]
    assert gou[0]["key"] == "github.com/x/y@v1.2.3" and gou[0]["kind"] == "module"
    assert gou[0]["bytes"] == blocks(os.path.join(go, "pkg/mod/github.com/x/y@v1.2.3/y.go")) + blocks(
        os.path.join(go, "pkg/mod/cache/download/github.com/x/y/@v/v1.2.3.zip")
    )
    assert by["apt"]["units"][0]["key"] == "ffmpeg_5.1_amd64.deb"
    assert rep["largest_units"][0]["cache"] == "huggingface"
    assert len(rep["largest_units"]) == 3
    # sizes stay du-equal whatever the unit accounting does
    for c in rep["caches"]:
        assert c["bytes"] == du(c["path"], "-B1")


def test_humanize():
    assert _render.humanize(0) == "0B"
    assert _render.humanize(512) == "512B"
    assert _render.humanize(4096) == "4.0K"
    assert _render.humanize(int(2.5 * 1024**3)) == "2.5G"
    assert _render.humanize(500 * 1024**2) == "500M"


def test_table_like_the_seed(known, base):
    rep = _usage.build_report(
        [
            {"name": "huggingface", "path": known, "category": "ml-models"},
            {"name": "pip", "path": os.path.join(base, "missing"), "category": "packages"},
        ],
        root=base,
    )
    text = _render.render_table(rep)
    assert "ML Models & Datasets:" in text and "Package Caches:" in text
    assert "Language-Specific:" not in text  # no cache in it
    line = [x for x in text.splitlines() if x.strip().startswith("huggingface")][0]
    assert _render.humanize(du(known, "-B1")) in line and " 5 " in line
    assert re.search(r"^  pip +- +missing", text, re.M)
    assert "Total Cache Usage: %s (%d bytes" % (_render.humanize(rep["totals"]["bytes"]), du(known, "-B1")) in text
    assert "Filesystem %s:" % base in text


PROMTOOL = shutil.which("promtool")


def _prom_samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_prometheus_textfile_valid_and_equal(known, base):
    rep = _usage.build_report(
        [
            {"name": 'we"ird\\name', "path": known, "category": "other", "format": "generic"},
            {"name": "gone", "path": os.path.join(base, "gone")},
        ],
        root=base,
    )
    text = _render.render_prometheus(rep)
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    s = _prom_samples(text)
    lab = 'cache="we\\"ird\\\\name",category="other",format="generic"'
    assert s["shared_cache_size_bytes{%s}" % lab] == du(known, "-B1")
    assert s["shared_cache_apparent_bytes{%s}" % lab] == du(known, "-b")
    assert s["shared_cache_files{%s}" % lab] == 5
    assert s['shared_cache_not_accessed_bytes{%s,days="90"}' % lab] == blocks(os.path.join(known, "c/three"))
    assert s['shared_cache_present{cache="gone"}'] == 0
    assert s['shared_cache_filesystem_size_bytes{path="%s"}' % base] == rep["filesystem"]["size"]
    assert s["shared_cache_report_timestamp_seconds"] == pytest.approx(rep["generated"])
    # written atomically: no temporary left, content complete
    target = os.path.join(base, "shared_cache.prom")
    _render.write_atomic(target, text)
    assert open(target).read() == text
    assert [n for n in os.listdir(base) if n.endswith(".tmp")] == []


def test_history_append_trim_and_read(base):
    h = os.path.join(base, "history.jsonl")
    assert _render.read_history(h) == []
    for i in range(7):
        _render.append_history(h, {"t": 1000 + i, "total": i}, keep=5)
    with open(h, "a") as fh:
        fh.write('not json\n{"no": "t"}\n')
    got = _render.read_history(h)
    assert [e["t"] for e in got] == [1002, 1003, 1004, 1005, 1006]
    assert _render.read_history(h, limit=2)[0]["t"] == 1005


# ---------------------------------------------------------------------------------------------
# HTML page, rendered by a real browser
# ---------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Rows(HTMLParser):
    """Collect data-* attributes of table rows and SVG groups."""

    def __init__(self):
        HTMLParser.__init__(self)
        self.items = []
        self.tags = set()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if any(k.startswith("data-") for k in a):
            self.items.append((tag, a))


def _png_pixels(path):
    """Decode an 8-bit RGB/RGBA non-interlaced PNG with zlib only. Returns (w, h, rows of bytes, bpp)."""
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    i = 0
    for _y in range(h):
        ftype = raw[i]
        line = bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pr) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows, bpp


def _report_with_history(base, known):
    pip = os.path.join(base, "pip")
    for j in range(40):
        write(os.path.join(pip, "http-v2", "%02d" % j), 20_000 + j)
    rep = _usage.build_report(
        [
            {"name": "huggingface", "path": known, "category": "ml-models", "format": "generic"},
            {"name": "pip", "path": pip, "category": "packages", "format": "pip"},
        ],
        root=base,
        now=NOW,
    )
    total = rep["totals"]["bytes"]
    history = [
        {"t": int(NOW) - (8 - i) * DAY, "total": total * (i + 1) // 9, "fs_used": rep["filesystem"]["used"] - (8 - i)}
        for i in range(8)
    ]
    return rep, history


def test_html_figures_match_the_report(base, known):
    rep, history = _report_with_history(base, known)
    page = _render.render_html(rep, history)
    p = _Rows()
    p.feed(page)
    assert "script" not in p.tags and p.urls == [], "the page must be self-contained"
    rows = {a["data-cache"]: a for t, a in p.items if t == "tr" and "data-cache" in a and "data-files" in a}
    for c in rep["caches"]:
        assert int(rows[c["name"]]["data-bytes"]) == c["bytes"] == du(c["path"], "-B1")
        assert int(rows[c["name"]]["data-files"]) == c["files"]
        assert int(rows[c["name"]]["data-apparent-bytes"]) == c["apparent_bytes"]
    bars = {a["data-cache"]: int(a["data-bytes"]) for t, a in p.items if t == "g" and "data-unit" not in a}
    assert bars == {c["name"]: c["bytes"] for c in rep["caches"]}
    units = [(a["data-unit"], int(a["data-bytes"])) for t, a in p.items if t == "tr" and "data-unit" in a]
    assert units == [(u["unit"], u["bytes"]) for u in rep["largest_units"]]
    total = [a for t, a in p.items if a.get("id") == "total"][0]
    assert int(total["data-bytes"]) == rep["totals"]["bytes"]
    growth = [a for t, a in p.items if a.get("id") == "growth"][0]
    assert int(growth["data-points"]) == len(history) + 1
    assert _render.humanize(rep["totals"]["bytes"]) in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium) - page not rendered")
def test_html_renders_in_chromium(base, known):
    rep, history = _report_with_history(base, known)
    page = os.path.join(base, "report.html")
    with open(page, "w", encoding="utf-8") as fh:
        fh.write(_render.render_html(rep, history))
    shot = os.path.join(base, "shot.png")
    profile = tempfile.mkdtemp(prefix="cr-chromium-")
    try:
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--user-data-dir=" + profile,
                "--screenshot=" + shot,
                "--window-size=1000,1600",
                "file://" + page,
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    w, h, rows, bpp = _png_pixels(shot)
    assert (w, h) == (1000, 1600)
    colors = {}
    for row in rows[::4]:
        for x in range(0, w * bpp, bpp * 4):
            px = row[x : x + 3]
            colors[px] = colors.get(px, 0) + 1
    total = sum(colors.values())
    white = colors.get(b"\xff\xff\xff", 0)
    assert white < total * 0.97, "the screenshot is blank"
    assert len(colors) > 20, "too few colours: nothing was drawn"
    # the category colours of the bars and the growth line are on screen
    for hexcolor in (_render.COLORS["ml-models"], _render.COLORS["packages"], "#e15759"):
        rgb = bytes.fromhex(hexcolor[1:])
        assert colors.get(rgb, 0) > 20, "%s not drawn" % hexcolor


def test_walk_leaves_directory_atimes_alone(known):
    """A report every few minutes must not make directories look used (relatime moves a read
    directory's atime once a day): the walker opens directories with O_NOATIME."""
    old = NOW - 10 * DAY
    dirs = [known] + [os.path.join(known, p) for p in ("a", "a/b", "c", "d", "e")]
    for d in dirs:
        os.utime(d, (old, old))
    _usage.measure_cache("k", known, fmt="generic")
    for d in dirs:
        assert os.stat(d).st_atime == pytest.approx(old, abs=1e-3), d


def test_max_units_bounds_memory_not_sizes(base):
    pip = os.path.join(base, "pip")
    for i in range(30):
        write(os.path.join(pip, "http-v2", "%x" % (i % 4), "%02d" % i), 1000 + i)
    capped = _usage.measure_cache("pip", pip, fmt="pip", top=5, max_units=10)
    full = _usage.measure_cache("pip", pip, fmt="pip", top=5, max_units=0)
    assert capped["units"] == [] and "more than 10 units" in capped["units_error"]
    assert full["units_error"] is None and len(full["units"]) == 5 and full["units_count"] == 30
    assert capped["bytes"] == full["bytes"] == du(pip, "-B1")


def test_workers_follow_the_last_report_duration(base, known):
    caches = [{"name": "a", "path": known}, {"name": "b", "path": os.path.join(base, "outside")}]
    quick = _usage.build_report(caches, last_seconds=_usage.PARALLEL_MIN_SECONDS / 2)
    assert quick["workers"] == 1
    slow = _usage.build_report(caches, last_seconds=30.0)
    assert slow["workers"] == _usage.default_workers(2)
    assert [c["bytes"] for c in quick["caches"]] == [c["bytes"] for c in slow["caches"]]
    assert _render.history_entry(slow)["seconds"] == slow["seconds"]


def _without_seconds(r):
    return {k: v for k, v in r.items() if k != "seconds"}


@pytest.mark.parametrize("fmt", ["generic", "pip"])
def test_a_walk_shared_by_workers_counts_what_one_walk_does(base, fmt):
    """Second-level directories go to workers: every figure is that of one walk, du's included,
    with hard links (a file and a symlink) between two workers' shares, a mount-less tree of
    many shards, a member's directory of another group (left out, counted as foreign)."""
    cache = os.path.join(base, "c")
    for top in ("http-v2", "wheels", "other"):
        for i in range(12):
            for j in range(5):
                write(os.path.join(cache, top, "d%02d" % i, "e", "f%d" % j), 700 + i * 10 + j, age_days=i * 10)
    os.link(os.path.join(cache, "http-v2", "d00", "e", "f0"), os.path.join(cache, "wheels", "d07", "hl"))
    os.link(os.path.join(cache, "http-v2", "d01", "e", "f0"), os.path.join(cache, "http-v2", "d02", "hl2"))
    os.symlink("f1", os.path.join(cache, "other", "d03", "ln"))
    os.link(os.path.join(cache, "other", "d03", "ln"), os.path.join(cache, "other", "d04", "ln"), follow_symlinks=False)
    os.makedirs(os.path.join(cache, "wheels", "d05", "theirs"))
    os.chown(os.path.join(cache, "wheels", "d05", "theirs"), NOBODY, NOBODY)
    one = _usage.measure_cache("c", cache, fmt=fmt, now=NOW, top=50)
    shared = _usage.measure_cache("c", cache, fmt=fmt, now=NOW, top=50, workers=2)
    # a hard link between two units is counted once by both walks; which unit holds its bytes
    # follows the order of the walk
    units_one, units_shared = one.pop("units"), shared.pop("units")
    assert _without_seconds(shared) == _without_seconds(one)
    assert sorted(u["key"] for u in units_shared) == sorted(u["key"] for u in units_one)
    assert sum(u["bytes"] for u in units_shared) == sum(u["bytes"] for u in units_one)
    assert sum(u["files"] for u in units_shared) == sum(u["files"] for u in units_one)
    assert one["bytes"] == du(cache, "-B1") - 4096  # du counts the foreign directory; we do not
    assert one["hardlinks"] == 3 and one["symlinks"] == 1 and one["foreign"]["count"] == 1


def test_a_shard_replaced_before_its_worker_opens_it_is_skipped_and_said(base):
    """A member swaps a shard directory for a symlink (or another directory) between the walk
    that listed it and the worker: the worker opens nothing through the link, counts nothing of
    the other directory and names the path."""
    cache = os.path.join(base, "c")
    write(os.path.join(cache, "a", "b", "f"), 100)
    write(os.path.join(cache, "a", "c", "f"), 100)
    st_b, st_c = os.lstat(os.path.join(cache, "a", "b")), os.lstat(os.path.join(cache, "a", "c"))
    os.rename(os.path.join(cache, "a", "c"), os.path.join(cache, "a", "c-old"))
    os.symlink("/etc", os.path.join(cache, "a", "c"))
    os.rename(os.path.join(cache, "a", "b"), os.path.join(cache, "a", "b-old"))
    os.mkdir(os.path.join(cache, "a", "b"))
    write(os.path.join(cache, "a", "b", "big"), 10**6)
    fd = os.open(cache, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tally = _usage._Tally(NOW, (30,), "newest")
        tally.start(os.fstat(fd))
        shards = [("a/b", (st_b.st_dev, st_b.st_ino)), ("a/c", (st_c.st_dev, st_c.st_ino))]
        share = _usage._measure_shards(_usage._shard_job(fd, shards, None, 10, 0, tally, None))
    finally:
        os.close(fd)
    assert share["tally"].files == 0 and share["tally"].blocks == 0
    assert share["error_count"] == 2
    assert [p for p, _e in share["errors"]] == ["a/b", "a/c"]
    assert "replaced" in share["errors"][0][1]


def test_a_report_shares_the_walk_of_a_cache_that_was_slow_last_time(base):
    """build_report: the history's per-cache seconds (written by history_entry) send a slow
    cache to all the workers together; the report is the same as without hints."""
    root = os.path.join(base, "root")
    caches = []
    for name, n in (("big", 300), ("small", 5)):
        for i in range(n):
            write(os.path.join(root, name, "d%02d" % (i % 30), "s", "f%03d" % i), 100)
        caches.append({"name": name, "path": os.path.join(root, name)})
    first = _usage.build_report(caches, root=root, now=NOW, workers=2)
    entry = _render.history_entry(first)
    assert set(entry["cache_seconds"]) == {"big", "small"}
    hints = _usage.hints([dict(entry, cache_seconds={"big": _usage.SHARD_MIN_SECONDS, "small": 0.01})])
    assert hints["cache_seconds"]["big"] == _usage.SHARD_MIN_SECONDS
    seen = []
    again = _usage.build_report(
        caches, root=root, now=NOW, workers=2, progress=lambda n, total, r: seen.append((n, total)), **hints
    )
    for a, b in zip(first["caches"], again["caches"], strict=True):
        assert _without_seconds(a) == _without_seconds(b)
    assert seen == [(1, 2), (2, 2)]
    # a member-written history with nonsense in it changes nothing but the speed
    odd = _usage.build_report(caches, root=root, now=NOW, workers=2, cache_seconds={"big": "x", "small": [1]})
    assert [_without_seconds(c) for c in odd["caches"]] == [_without_seconds(c) for c in first["caches"]]
