# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 11 item 3: files members wrote are read defensively (size, type, time, memory).

A member (alice, a real user acting through setpriv) writes the tools' metadata the worst way
she can: a FIFO or a symlink in place of a file, a sparse 512 MiB ``urls.txt``, a SQLite database
whose queries never end, malformed or huge npm index lines. Root then runs the real engine
(``_prune.Pruner``) in its own process with a hang guard and its peak memory measured: the run
ends, the bad file costs only its own unit (kept), the rest of the cache is still pruned, nothing
behind a symlink is read and nothing is rewritten fully allocated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import open_member_file
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.modules.test_cache_prune_tools import make_cargo
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import (
    CARGO_GLOBAL_CACHE_SCHEMA,
    DAY,
    age,
    tree,
    write,
)

HANG_GUARD = 60  # seconds; the engine's own deadline for a database is 5 s
MAX_RSS_MB = 150  # the interpreter and the collection take ~40 MB

_RUNNER = r"""
import json, resource, sys
from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
path, fmt, max_age = sys.argv[1], sys.argv[2], float(sys.argv[3])
if max_age:
    res = _prune.Pruner(path, fmt=fmt, policy=_prune.Policy(max_age=max_age, min_age=0), lock_timeout=0).run()
else:  # cache_report's measurement of the cache, same collector
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _usage
    res = _usage.measure_cache("c", path, fmt=fmt, top=10)
res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps(res, default=str))
"""


def prune(path, fmt, max_age_days=90):
    """Run the real Pruner as root in its own interpreter; (result, seconds). Fails on a hang.

    ``max_age_days=0``: cache_report's measurement of the cache instead (nothing removed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(path), fmt, str(max_age_days * DAY)],
            capture_output=True,
            text=True,
            env=env,
            timeout=HANG_GUARD,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the prune of %s did not finish within %ds" % (path, HANG_GUARD))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout), time.monotonic() - t0


def give_to(actor, gid, path):
    """Hand a tree root laid out to ``actor`` (as if the member's tool had made it)."""
    for dp, dn, fn in os.walk(path):
        for n in dn + fn + [""]:
            p = os.path.join(dp, n) if n else dp
            os.chown(p, actor.uid, gid, follow_symlinks=False)
    return path


def notes(res):
    return " | ".join(res.get("notes", []))


# -- cargo .global-cache ----------------------------------------------------------------------------


def cargo_db_saying_itoa_was_used_now(path, idx):
    conn = sqlite3.connect(str(path))
    conn.executescript(CARGO_GLOBAL_CACHE_SCHEMA)
    conn.execute("INSERT INTO registry_index (name, timestamp) VALUES (?, ?)", (idx, int(time.time())))
    conn.execute("INSERT INTO registry_crate VALUES (1, 'itoa-1.0.9.crate', 1, ?)", (int(time.time()),))
    conn.commit()
    conn.close()


@pytest.fixture
def cargo(actors, cache):
    home = os.path.join(cache, "cargo")
    from pathlib import Path

    idx = make_cargo(Path(home))
    give_to(actors.alice, actors.gid, home)
    return home, idx


def member_python(actor, script):
    actor.run(["python3", "-"], input=script)


# A database no query of cargo's tables ever finishes on: registry_crate is a view counting forever.
ENDLESS_VIEW = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1] if len(sys.argv) > 1 else %(path)r)
conn.executescript('''
CREATE TABLE registry_index (id INTEGER PRIMARY KEY, name TEXT, timestamp INTEGER);
INSERT INTO registry_index VALUES (1, %(idx)r, 0);
CREATE VIEW registry_crate AS WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n)
    SELECT 1 AS registry_id, 'itoa-1.0.9.crate' AS name, 0 AS size, x AS timestamp FROM n WHERE x < 0;
CREATE VIEW registry_src AS SELECT * FROM registry_crate;
''')
conn.commit()
"""

# Plain tables with cargo's columns (the schema check passes) whose join explodes: 30k crates all in
# index 1, and index 1 listed 30k times (id is no key): 900 million rows.
EXPLODING_JOIN = """
import sqlite3
conn = sqlite3.connect(%(path)r)
conn.executescript('''
CREATE TABLE registry_index (id INTEGER, name TEXT, timestamp INTEGER);
CREATE TABLE registry_crate (registry_id INTEGER, name TEXT, size INTEGER, timestamp INTEGER);
CREATE TABLE registry_src (registry_id INTEGER, name TEXT, size INTEGER, timestamp INTEGER);
''')
conn.executemany("INSERT INTO registry_index VALUES (1, ?, 0)", (("i%%d" %% i,) for i in range(30000)))
conn.executemany("INSERT INTO registry_crate VALUES (1, ?, 0, 0)", (("c%%d" %% i,) for i in range(30000)))
conn.commit()
"""


def assert_cargo_pruned_by_file_times(home, idx, res, why):
    left = tree(home)
    assert not any("itoa-1.0.9" in p for p in left), "the 200-day-old crate stayed"
    assert "registry/src/%s/serde-1.0.188/.cargo-ok" % idx in left
    assert res["units"] == 1 and not res["errors"], res
    assert ".global-cache not used (%s" % why in notes(res), notes(res)


def test_cargo_database_whose_queries_never_end_is_given_up_on(actors, cargo):
    home, idx = cargo
    member_python(actors.alice, ENDLESS_VIEW % {"path": os.path.join(home, ".global-cache"), "idx": idx})
    res, secs = prune(home, "cargo")
    assert secs < 30
    assert_cargo_pruned_by_file_times(home, idx, res, "registry_crate is not a plain table")


def test_cargo_database_with_an_exploding_join_hits_the_deadline(actors, cargo):
    home, idx = cargo
    member_python(actors.alice, EXPLODING_JOIN % {"path": os.path.join(home, ".global-cache")})
    res, secs = prune(home, "cargo")
    assert secs < 30
    assert_cargo_pruned_by_file_times(home, idx, res, "queries took over 5.0s")
    assert res["maxrss_mb"] < MAX_RSS_MB


def test_cargo_database_whose_queries_never_end_does_not_hold_up_the_report(actors, cargo):
    home, idx = cargo
    member_python(actors.alice, ENDLESS_VIEW % {"path": os.path.join(home, ".global-cache"), "idx": idx})
    res, secs = prune(home, "cargo", max_age_days=0)
    assert secs < 30 and res["units_error"] is None
    assert {u["key"] for u in res["units"]} == {idx + "/itoa-1.0.9", idx + "/serde-1.0.188"}
    assert "registry_crate is not a plain table" in " ".join(res["units_notes"])


@pytest.mark.parametrize(
    "attack, why",
    [
        ("mkfifo .global-cache", "not a regular file"),
        ("ln -s %(secret)s .global-cache", "a symbolic link; not followed"),
        ("truncate -s 200M .global-cache", "larger than"),
        ("truncate -s 60M .global-cache", "sqlite: file is not a database"),
        ("head -c 100000 /dev/urandom > .global-cache", "sqlite: file is not a database"),
    ],
    ids=["fifo", "symlink-to-root-only-db", "sparse-200M", "sparse-60M", "garbage"],
)
def test_cargo_database_that_is_not_one_costs_only_the_recorded_times(actors, arena, cargo, attack, why):
    home, idx = cargo
    secret = os.path.join(arena, "root-only.db")
    cargo_db_saying_itoa_was_used_now(secret, idx)
    os.chmod(secret, 0o600)
    actors.alice.run("cd %s && %s" % (home, attack % {"secret": secret}))
    res, secs = prune(home, "cargo")
    assert secs < 30
    assert_cargo_pruned_by_file_times(home, idx, res, why)
    assert res["maxrss_mb"] < MAX_RSS_MB


def test_cargo_database_swapped_after_its_check_is_not_reopened_by_path(actors, arena, cargo):
    """SQLite resolves the name it is given again (/proc/self/fd/N included): a member who swaps
    .global-cache for a symlink after root checked the file must not get the target read."""
    home, idx = cargo
    secret = os.path.join(arena, "root-only.db")
    cargo_db_saying_itoa_was_used_now(secret, idx)
    os.chmod(secret, 0o600)
    member_python(actors.alice, "open(%r, 'wb').close()" % os.path.join(home, ".global-cache"))
    dfd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd, _st = open_member_file(dfd, ".global-cache", _formats.CARGO_DB_MAX)
    finally:
        os.close(dfd)
    try:
        # /proc/self/fd/N reads as '<path> (deleted)' once the name is gone: she plants that name
        actors.alice.run("cd %s && rm .global-cache && ln -s %s '.global-cache (deleted)'" % (home, secret))
        with pytest.raises(_formats.CargoDbError):  # the (empty) file checked is what is read
            _formats.cargo_last_use(fd, {idx + "/itoa-1.0.9"})
    finally:
        os.close(fd)


def test_cargo_database_written_by_cargo_still_gives_the_recorded_times(actors, cargo):
    home, idx = cargo
    cargo_db_saying_itoa_was_used_now(os.path.join(home, ".global-cache"), idx)
    res, _secs = prune(home, "cargo")
    assert res["units"] == 0 and ".global-cache" not in notes(res)
    assert any("itoa-1.0.9" in p for p in tree(home))


# -- npm _cacache index ----------------------------------------------------------------------------
def npm_line(entry):
    js = json.dumps(entry)
    return "%s\t%s" % (hashlib.sha1(js.encode()).hexdigest(), js)  # noqa: S324 - cacache's format


def npm_bucket_path(cache, key):
    h = hashlib.sha256(key.encode()).hexdigest()
    return os.path.join(cache, "_cacache", "index-v5", h[:2], h[2:4], h[4:])


def npm_put(cache, key, content, days):
    """One cacache entry as npm writes it: content-v2/sha512/... and an index line."""
    digest = hashlib.sha512(content).digest()
    hexd = digest.hex()
    integrity = "sha512-" + base64.b64encode(digest).decode()
    cpath = os.path.join(cache, "_cacache", "content-v2", "sha512", hexd[:2], hexd[2:4], hexd[4:])
    t = time.time() - days * DAY
    write(cpath, content, mtime=t)
    entry = {"key": key, "integrity": integrity, "time": int(t * 1000), "size": len(content), "metadata": {}}
    write(npm_bucket_path(cache, key), "\n" + npm_line(entry), mtime=t)
    return cpath


@pytest.fixture
def npm(actors, cache):
    home = os.path.join(cache, "npm")
    old = npm_put(home, "make-fetch-happen:request-cache:https://r/old/-/old-1.0.0.tgz", b"O" * 100, 200)
    new = npm_put(home, "make-fetch-happen:request-cache:https://r/new/-/new-1.0.0.tgz", b"N" * 100, 1)
    orphan = os.path.join(home, "_cacache", "content-v2", "sha512", "ab", "cd", "ef" * 62)
    write(orphan, b"X", age_days=200)
    give_to(actors.alice, actors.gid, home)
    return home, old, new, orphan


@pytest.mark.parametrize(
    "line",
    [
        npm_line({"key": ["a", "list"], "integrity": "sha512-AAAA", "time": 1}),
        npm_line({"key": {"a": 1}, "integrity": "sha512-AAAA", "time": 1}),
        npm_line({"key": "k", "integrity": "sha512-AAAA", "time": "yesterday"}),
        npm_line({"key": "k", "integrity": ["sha512-AAAA"], "time": 1}),
        npm_line({"key": "k", "integrity": "sha512-AAAA", "time": float("inf")}),
        "%s\t%s" % (hashlib.sha1(b"[" * 100000 + b"]" * 100000).hexdigest(), "[" * 100000 + "]" * 100000),  # noqa: S324
    ],
    ids=["key-list", "key-dict", "time-str", "integrity-list", "time-inf", "deep-nesting"],
)
def test_npm_malformed_index_line_keeps_its_bucket_and_the_rest_is_pruned(actors, npm, line):
    home, old, new, orphan = npm
    bad = npm_bucket_path(home, "bad")
    member_python(
        actors.alice,
        "import os\nos.makedirs(%r, exist_ok=True)\nopen(%r, 'w').write(%r)\nos.utime(%r, (1, 1))"
        % (os.path.dirname(bad), bad, "\n" + line, bad),
    )
    res, _secs = prune(home, "npm")
    assert not res["errors"], res
    assert os.path.exists(bad), "the bucket with the malformed line was deleted"
    assert not os.path.exists(old) and os.path.exists(new)
    assert not os.path.exists(npm_bucket_path(home, "make-fetch-happen:request-cache:https://r/old/-/old-1.0.0.tgz"))
    assert os.path.exists(orphan), "unreferenced content went while a bucket could not be judged"
    assert "not fully read" in notes(res)


@pytest.mark.parametrize(
    "attack",
    [
        "truncate -s 60M %(bucket)s && touch -d @1000 %(bucket)s",  # one 60 MiB line of zeros
        "head -c 3000000 /dev/zero | tr '\\0' a > %(bucket)s && touch -d @1000 %(bucket)s",  # allocated
        "truncate -s 100M %(bucket)s && touch -d @1000 %(bucket)s",  # over the bucket limit
        "mkfifo %(bucket)s",
        "ln -s %(secret)s %(bucket)s",
    ],
    ids=["sparse-60M-line", "3MB-line", "sparse-100M", "fifo", "symlink"],
)
def test_npm_huge_or_special_bucket_costs_only_its_unit(actors, arena, npm, attack):
    home, old, new, orphan = npm
    bucket = npm_bucket_path(home, "huge")
    secret = os.path.join(arena, "secret")
    write(secret, "\n" + npm_line({"key": "SECRET-KEY", "integrity": "sha512-AAAA", "time": int(time.time() * 1000)}))
    os.chmod(secret, 0o600)
    actors.alice.run("mkdir -p %s && %s" % (os.path.dirname(bucket), attack % {"bucket": bucket, "secret": secret}))
    res, secs = prune(home, "npm")
    assert secs < 30 and not res["errors"], res
    assert res["maxrss_mb"] < MAX_RSS_MB
    assert not os.path.exists(old) and os.path.exists(new)
    assert os.path.lexists(bucket)
    assert "SECRET" not in json.dumps(res)
    if "truncate" in attack or "head" in attack:
        assert os.path.exists(orphan) and "not fully read" in notes(res)


# -- conda urls.txt --------------------------------------------------------------------------------
OLD, NEW = "zlib-1.2.13-h5eee18b_0", "tk-8.6.12-h1ccaba5_0"
URLS = "".join("https://conda.anaconda.org/main/linux-64/%s.conda\n" % p for p in (OLD, NEW))


@pytest.fixture
def conda(actors, cache):
    home = os.path.join(cache, "conda")
    pkgs = os.path.join(home, "pkgs")
    for pkg in (OLD, NEW):
        write(os.path.join(pkgs, pkg + ".conda"), b"T" * 100)
        write(os.path.join(pkgs, pkg, "info", "repodata_record.json"), b"{}")
    write(os.path.join(pkgs, "urls.txt"), "")
    age(pkgs, 200)
    now = time.time()
    os.utime(os.path.join(pkgs, NEW, "info", "repodata_record.json"), (now, now))
    give_to(actors.alice, actors.gid, home)
    return home, pkgs


def assert_old_package_pruned(res, pkgs):
    assert res["units"] == 1 and not res["errors"], res
    assert not os.path.exists(os.path.join(pkgs, OLD)) and os.path.exists(os.path.join(pkgs, NEW))


def test_conda_sparse_512M_urls_txt_is_neither_read_whole_nor_rewritten_dense(actors, conda):
    home, pkgs = conda
    urls = os.path.join(pkgs, "urls.txt")
    actors.alice.run("printf '%s' > %s && truncate -s 512M %s" % (URLS, urls, urls))
    before = os.stat(urls)
    res, secs = prune(home, "conda")
    assert_old_package_pruned(res, pkgs)
    after = os.stat(urls)
    assert (after.st_ino, after.st_size, after.st_blocks) == (before.st_ino, before.st_size, before.st_blocks)
    assert res["maxrss_mb"] < MAX_RSS_MB and secs < 30
    assert "urls.txt left as it is: larger than" in notes(res)


def test_conda_urls_txt_with_a_hole_is_not_rewritten(actors, conda):
    """A one-block hole between two lines reads as a 4 KiB line of zeros (under the line cap)."""
    home, pkgs = conda
    urls = os.path.join(pkgs, "urls.txt")
    head = URLS.encode()
    head += b"#" * (4095 - len(head)) + b"\n"  # ends at the first block's end
    member_python(
        actors.alice,
        "f = open(%r, 'wb')\nf.write(%r)\nf.seek(8192)\nf.write(b'\\n' + %r)\nf.close()" % (urls, head, URLS.encode()),
    )
    before = os.stat(urls)
    assert before.st_blocks * 512 < before.st_size  # the hole is real on this filesystem
    res, _secs = prune(home, "conda")
    assert_old_package_pruned(res, pkgs)
    after = os.stat(urls)
    assert (after.st_ino, after.st_blocks) == (before.st_ino, before.st_blocks)
    assert "urls.txt left as it is: sparse" in notes(res)


@pytest.mark.parametrize(
    "attack, why",
    [
        ("mkfifo %(urls)s", "not a regular file"),
        ("ln -s %(secret)s %(urls)s", "a symbolic link"),
        ("{ printf '%(lines)s'; head -c 20000 /dev/zero | tr '\\0' a; echo; } > %(urls)s", "a line over 8192 bytes"),
    ],
    ids=["fifo", "symlink-to-root-only", "long-line"],
)
def test_conda_urls_txt_that_is_not_a_list_of_urls_is_left_as_it_is(actors, arena, conda, attack, why):
    home, pkgs = conda
    urls = os.path.join(pkgs, "urls.txt")
    secret = os.path.join(arena, "secret")
    write(secret, URLS)
    os.chmod(secret, 0o600)
    os.unlink(urls)
    actors.alice.run(attack % {"urls": urls, "secret": secret, "lines": URLS})
    before = os.lstat(urls)
    res, secs = prune(home, "conda")
    assert secs < 30
    assert_old_package_pruned(res, pkgs)
    after = os.lstat(urls)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    with open(secret) as fh:
        assert fh.read() == URLS
    assert "urls.txt left as it is: %s" % why in notes(res)


def test_conda_urls_txt_of_a_member_is_rewritten_as_hers_without_the_pruned_lines(actors, conda):
    home, pkgs = conda
    urls = os.path.join(pkgs, "urls.txt")
    actors.alice.run("printf '%s' > %s && chmod 0664 %s" % (URLS, urls, urls))
    res, _secs = prune(home, "conda")
    assert_old_package_pruned(res, pkgs)
    st = os.stat(urls)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (actors.alice.uid, actors.gid, 0o664)
    with open(urls) as fh:
        assert fh.read() == URLS.split("\n", 1)[1]
    assert not [n for n in os.listdir(pkgs) if n.startswith(".urls.txt")]


def test_conda_urls_txt_a_member_appends_to_during_the_rewrite_keeps_her_line(actors, conda, monkeypatch):
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import conda as conda_format

    home, pkgs = conda
    urls = os.path.join(pkgs, "urls.txt")
    actors.alice.run("printf '%s' > %s" % (URLS, urls))
    read_lines = conda_format.member_lines

    def lines_while_alice_appends(fd, max_line, max_bytes):
        yield from read_lines(fd, max_line, max_bytes)
        # conda appends as it downloads: she does so after root read the file, before its rename
        actors.alice.run("echo https://conda.anaconda.org/main/linux-64/mine-1.0-0.conda >> %s" % urls)

    monkeypatch.setattr(conda_format, "member_lines", lines_while_alice_appends)
    res = _prune.Pruner(home, fmt="conda", policy=_prune.Policy(max_age=90 * DAY, min_age=0), lock_timeout=0).run()
    assert_old_package_pruned(res, pkgs)
    with open(urls) as fh:
        assert "mine-1.0-0.conda" in fh.read()
    assert "urls.txt left as it is: changed while it was rewritten" in notes(res)
    assert not [n for n in os.listdir(pkgs) if n.startswith(".urls.txt")]


# -- huggingface refs ------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", ["mkfifo %(ref)s", "ln -s %(secret)s %(ref)s", "truncate -s 1G %(ref)s"])
def test_huggingface_ref_that_is_not_a_ref_is_not_read(actors, arena, cache, attack):
    from pathlib import Path

    from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import make_hf_repo

    hub = Path(cache) / "hf"
    old, new = "a" * 40, "b" * 40
    make_hf_repo(hub, "models--o--m", {old: {"w.bin": b"1" * 10}, new: {"w.bin": b"2" * 10}}, {})
    age(hub, 200)
    now = time.time()
    os.utime(hub / "models--o--m" / "blobs" / hashlib.sha256(b"2" * 10).hexdigest(), (now, now))  # used today
    write(hub / "models--o--m" / "refs" / "main", new)
    secret = os.path.join(arena, "secret")
    write(secret, old)  # a root-only file naming the old revision
    os.chmod(secret, 0o600)
    give_to(actors.alice, actors.gid, str(hub))
    actors.alice.run(attack % {"ref": hub / "models--o--m" / "refs" / "pr", "secret": secret})
    res, secs = prune(str(hub), "huggingface")
    assert secs < 30 and not res["errors"], res
    assert res["maxrss_mb"] < MAX_RSS_MB
    left = tree(hub)
    assert "models--o--m/snapshots/%s/w.bin" % new in left
    assert not any(old in p for p in left)
    assert res["units"] == 1 and "(pr)" not in json.dumps(res["sample"]), "the ref was read through a link"
