# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cargo home: unit = a crate (.crate + src dir), git checkouts and dbs; cargo's .global-cache times."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format, names
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import MemberFileError, open_member_file

# cargo's .global-cache (SQLite, cargo >= 1.78) holds a row per crate / src dir / git checkout:
# a few MB for tens of thousands of crates. It is copied (bounded) to a root-private file before
# SQLite opens it, and queried under a deadline.
CARGO_DB_MAX = 64 << 20
CARGO_DB_SECONDS = 5.0


class _CargoCollector(Collector):
    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.db_fd = None  # cargo's .global-cache, opened (verified) while its directory is open

    def visit(self, d):
        if not d.rel and self.db_fd is None:
            try:
                self.db_fd = open_member_file(d.fd, ".global-cache", CARGO_DB_MAX)[0]
            except MemberFileError as exc:
                if exc.errno != errno.ENOENT:
                    self.notes.append("cargo .global-cache not used (%s): crates aged by file times" % exc.strerror)
        Collector.visit(self, d)

    def enter(self, parts, st, d):
        if len(parts) == 4 and parts[:2] == ("registry", "src"):
            self.add_dir("%s/%s" % (parts[2], parts[3]), "crate", parts, st, name=parts[3])
        elif len(parts) == 4 and parts[:2] == ("git", "checkouts"):
            self.add_dir("git/%s@%s" % (parts[2], parts[3]), "git checkout", parts, st)
        elif len(parts) == 3 and parts[:2] == ("git", "db"):
            self.add_dir("git/%s" % parts[2], "git db", parts, st)
        return True

    def entry(self, parts, name, st, d):
        if len(parts) == 4 and parts[:2] == ("registry", "cache") and name.endswith(".crate"):
            self.add("%s/%s" % (parts[2], name[:-6]), "crate", parts, st, name=name[:-6])
        elif len(parts) > 4 and parts[:2] == ("registry", "src"):
            u = self.add("%s/%s" % (parts[2], parts[3]), "crate", parts[:4], st, name=parts[3])
            if len(parts) == 5 and name == ".cargo-ok":
                u.add_path(parts)
        elif len(parts) > 4 and parts[:2] == ("git", "checkouts"):
            self.add("git/%s@%s" % (parts[2], parts[3]), "git checkout", parts[:4], st)
        elif len(parts) > 3 and parts[:2] == ("git", "db"):
            self.add("git/%s" % parts[2], "git db", parts[:3], st)
        else:
            self.other(st)  # registry/index, bin, .crates.toml, .package-cache, .global-cache

    def finish_units(self):
        recorded = {}
        if self.db_fd is not None:
            crates = {u.key for u in self.units.values() if u.kind == "crate"}
            try:
                recorded = cargo_last_use(self.db_fd, crates)
            except CargoDbError as exc:
                self.notes.append("cargo .global-cache not used (%s): crates aged by file times" % exc)
            finally:
                os.close(self.db_fd)
                self.db_fd = None
        for u in self.units.values():
            # the .cargo-ok marker goes first: cargo re-extracts a src dir without it
            ok = [p for p in u.paths if p[-1] == ".cargo-ok"]
            src = [p for p in u.paths if p not in ok and len(p) == 4 and p[1] == "src"]
            rest = [p for p in u.paths if p not in ok and p not in src]
            u.paths = ok + src + rest
            if u.kind == "crate":
                t = recorded.get(u.key)
                if t is not None:
                    u.recorded = t
        return list(self.units.values())


class CargoDbError(Exception):
    """cargo's .global-cache cannot be used: unreadable, not cargo's schema, too slow."""


# The tables and columns cargo's global_cache_tracker creates and reads (cargo/src/cargo/core/
# global_cache_tracker.rs, migrations()); anything else in their place is not cargo's database.
_CARGO_SCHEMA = (
    ("registry_index", ("id", "name")),
    ("registry_crate", ("registry_id", "name", "timestamp")),
    ("registry_src", ("registry_id", "name", "timestamp")),
)


def cargo_last_use(db_fd, wanted, seconds=CARGO_DB_SECONDS):
    """{'<index dir>/<name>-<ver>': epoch} for the keys in ``wanted`` from cargo's .global-cache.

    ``db_fd`` is the member-written database opened by ``_fs.open_member_file``. SQLite never
    opens the member's path (it would resolve it again, following a symlink swapped in, or
    block on a FIFO): the bytes are copied, bounded, to a file in a root-private directory,
    opened read-only and immutable; the schema must be cargo's (plain tables, no view, no
    generated column) and the queries are aborted after ``seconds``. Raises CargoDbError.
    """
    try:
        import sqlite3
    except ImportError:
        raise CargoDbError("no sqlite3 module") from None
    tmpdir = tempfile.mkdtemp(prefix="mlinfra-cargo-db-")
    try:
        path = os.path.join(tmpdir, "global-cache")
        _copy_bounded(db_fd, path, CARGO_DB_MAX)
        deadline = time.monotonic() + seconds
        try:
            conn = sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise CargoDbError("sqlite: %s" % exc) from None
        try:
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
            if hasattr(conn, "setlimit"):
                conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1 << 16)
            conn.execute("PRAGMA trusted_schema = OFF")
            conn.execute("PRAGMA query_only = ON")
            _cargo_schema_check(conn)
            return _cargo_rows(conn, wanted)
        except sqlite3.Error as exc:
            if time.monotonic() > deadline:
                raise CargoDbError("queries took over %ss" % seconds) from None
            raise CargoDbError("sqlite: %s" % exc) from None
        finally:
            conn.close()
    except OSError as exc:
        raise CargoDbError(exc.strerror or str(exc)) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _copy_bounded(fd, path, max_bytes):
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        done = 0
        while True:
            buf = os.pread(fd, 1 << 20, done)
            if not buf:
                break
            done += len(buf)
            if done > max_bytes:
                raise CargoDbError("grew over %d bytes while copied" % max_bytes)
            os.write(out, buf)
    finally:
        os.close(out)


def _cargo_schema_check(conn):
    for table, cols in _CARGO_SCHEMA:
        row = conn.execute("SELECT type, sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        if row is None:
            raise CargoDbError("no table %s" % table)
        kind, sql = row
        if kind != "table" or not isinstance(sql, str) or not sql.lstrip().upper().startswith("CREATE TABLE"):
            raise CargoDbError("%s is not a plain table" % table)
        info = {r[1]: r[6] for r in conn.execute("PRAGMA table_xinfo(%s)" % table)}
        if any(hidden for hidden in info.values()):
            raise CargoDbError("%s has generated or hidden columns" % table)
        missing = [c for c in cols if c not in info]
        if missing:
            raise CargoDbError("%s lacks %s" % (table, ", ".join(missing)))


def _cargo_rows(conn, wanted):
    out = {}
    latest = time.time() + 86400  # a time in the future is not a use
    for table, strip in (("registry_crate", ".crate"), ("registry_src", "")):
        cur = conn.execute(
            "SELECT i.name, c.name, c.timestamp FROM %s c JOIN registry_index i "  # noqa: S608 - fixed names
            "ON c.registry_id = i.id" % table
        )
        for idx, name, ts in cur:
            if not (isinstance(idx, str) and isinstance(name, str) and isinstance(ts, (int, float))):
                continue
            if strip and name.endswith(strip):
                name = name[: -len(strip)]
            key = "%s/%s" % (idx, name)
            if key in wanted and 0 < ts <= latest and ts > out.get(key, 0):
                out[key] = float(ts)
    return out


class CargoFormat(Format):
    name = "cargo"
    description = "cargo home: unit = a crate (.crate + src dir with .cargo-ok), git checkouts and dbs"
    # cargo's own gc takes both exclusively: downloads hold the first, builds reading extracted
    # sources hold the second shared (cargo >= 1.74; a missing file is no lock)
    tool_locks = (((".package-cache",), "flock"), ((".package-cache-mutate",), "flock"))
    collector_class = _CargoCollector
    last_use = "cargo's .global-cache (cargo >= 1.78), then file times"
    detect_order = 40

    def detect(self, root_fd, top):
        return "registry" in top and bool(names(root_fd, "registry") & {"cache", "src", "index"})


# -- cache_verify ---------------------------------------------------------------------------
CARGO_INDEX_CACHE_MAX = 32 << 20


def cargo_index_path(name):
    """The index file of crate ``name`` below an index root (cargo's ``make_dep_path``, lowercased)."""
    name = name.lower()
    if len(name) <= 2:
        return (str(len(name)), name)
    if len(name) == 3:
        return ("3", name[0], name)
    return (name[:2], name[2:4], name)


def cargo_cache_entries(data):
    """{version: json bytes} of one of cargo's index cache files (``registry/index/*/.cache/...``).

    cargo's ``index/cache.rs``: one byte of cache version, four of index format version (u32 LE),
    the index revision and NUL, then pairs of ``version NUL json NUL``."""
    out = {}
    if len(data) < 5:
        return out
    fields = data[5:].split(b"\0")
    for i in range(1, len(fields) - 1, 2):
        out[fields[i].decode("utf-8", "replace")] = fields[i + 1]
    return out


def verify(ctx):
    """``registry/cache/<registry>/<name>-<version>.crate`` against the ``cksum`` (SHA-256) of that
    version in the registry's index cache (``registry/index/<registry>/.cache``), which cargo
    itself checks the download against. A crate the cache does not list, extracted sources, git
    checkouts and the rest are unverifiable; a corrupt .crate goes alone (cargo downloads it
    again; its extracted ``registry/src`` dir is left as it is)."""
    import json

    crates = []
    for _d, parts, st in ctx.files():
        if len(parts) == 4 and parts[:2] == ("registry", "cache") and parts[3].endswith(".crate"):
            crates.append((parts, st))
        else:
            ctx.unverifiable(parts, st)
    index_cache = {}
    for parts, st in crates:
        stem = parts[-1][: -len(".crate")]
        want = None
        for i, ch in enumerate(stem):
            if ch != "-" or i + 1 >= len(stem) or not stem[i + 1].isdigit():
                continue
            name, version = stem[:i], stem[i + 1 :]
            key = (parts[2], name)
            if key not in index_cache:
                rel = ("registry", "index", parts[2], ".cache") + cargo_index_path(name)
                index_cache[key] = _cargo_read_cache(ctx, rel)
            line = index_cache[key].get(version)
            if line is not None:
                try:
                    cksum = json.loads(line).get("cksum")
                except (ValueError, AttributeError):
                    cksum = None
                if isinstance(cksum, str) and len(cksum) == 64:
                    want = "sha256:" + cksum.lower()
                    break
        if want is None:
            ctx.unverifiable(parts, st)
        else:
            ctx.check(parts, st, "digest", want, "sha256 (registry index cksum)")


def _cargo_read_cache(ctx, rel):
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import NotBelow, open_below

    try:
        fd = open_below(ctx.root_fd, rel[:-1], os.fstat(ctx.root_fd).st_dev)
    except (NotBelow, OSError):
        return {}
    try:
        st = os.stat(rel[-1], dir_fd=fd, follow_symlinks=False)
        ours = ctx.gid is None or st.st_gid == ctx.gid
        data = ctx.read_small(fd, rel[-1], CARGO_INDEX_CACHE_MAX) if ours else None
    except OSError:
        data = None
    finally:
        os.close(fd)
    return cargo_cache_entries(data) if data else {}


CargoFormat.verifier = staticmethod(verify)
