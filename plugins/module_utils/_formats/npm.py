# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""npm _cacache: unit = an index bucket (package entry); content freed when unreferenced."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import stat

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    MemberFileError,
    member_lines,
    open_member_file,
)

# cacache appends one line per put to a bucket (key hash); npm's own verify compacts them. Real
# buckets are a few KiB; a line is an entry with its metadata (response headers, ~1-2 KiB).
NPM_BUCKET_MAX = 64 << 20
NPM_LINE_MAX = 1 << 20


def _npm_offset(parts):
    if parts and parts[0] == "_cacache":
        return 1
    return -1


def integrity_ids(integrity):
    """'sha512-<b64> sha1-<b64>' -> [('sha512', hex), ...] (content-v2 path pieces)."""
    out = []
    for item in str(integrity or "").split():
        algo, _sep, b64 = item.partition("-")
        if not b64:
            continue
        b64 = b64.split("?", 1)[0]
        try:
            hexd = binascii.hexlify(base64.b64decode(b64 + "=" * (-len(b64) % 4))).decode("ascii")
        except (binascii.Error, ValueError):
            continue
        out.append((algo.lower(), hexd))
    return out


def parse_npm_bucket(data):
    """Return {key: entry_dict} of live entries of a cacache index bucket (last line wins)."""
    return parse_npm_lines(data.split(b"\n"))[0]


def _npm_entry_ok(entry):
    """True for an entry with the types cacache writes (key str, integrity str|None, time number)."""
    if not isinstance(entry.get("key"), str):
        return False
    if entry.get("integrity") is not None and not isinstance(entry["integrity"], str):
        return False
    t = entry.get("time")
    return t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t))


def parse_npm_lines(lines):
    """Parse cacache index lines (bytes; None for a line too long to read).

    Returns ``(live, refs, skipped, unreadable)``: live entries {key: entry} (last line wins, an
    entry without integrity deletes the key), the content ids they name (and those of lines of
    unexpected types: conservative), the number of lines cacache itself ignores (hash mismatch,
    not JSON: torn writes) and of lines that could not be judged (too long, well-hashed but of
    other types). Never raises for what a member wrote.
    """
    live = {}
    refs = set()
    skipped = unreadable = 0
    for raw in lines:
        if raw is None:
            unreadable += 1
            continue
        line = raw.rstrip(b"\n")
        if not line:
            continue
        digest, _sep, js = line.partition(b"\t")
        if hashlib.sha1(js).hexdigest().encode("ascii") != digest:  # noqa: S324 - cacache's own check
            skipped += 1
            continue
        try:
            entry = json.loads(js.decode("utf-8", "replace"))
        except ValueError:
            skipped += 1
            continue
        except RecursionError:  # nested deeper than Python parses; node might read it
            unreadable += 1
            continue
        if not isinstance(entry, dict):
            skipped += 1
            continue
        if not _npm_entry_ok(entry):
            unreadable += 1
            if isinstance(entry.get("integrity"), str):
                refs.update(integrity_ids(entry["integrity"]))
            continue
        if entry.get("integrity") is None:
            live.pop(entry["key"], None)
        else:
            live[entry["key"]] = entry
    for entry in live.values():
        refs.update(integrity_ids(entry["integrity"]))
    return live, refs, skipped, unreadable


class _NpmCollector(Collector):
    def __init__(self, fmt, root_fd):
        Collector.__init__(self, fmt, root_fd)
        self.bucket_refs = {}  # unit key -> [content ids]
        self.skipped_lines = 0
        self.unread = []  # keys of buckets not (fully) read: kept, and orphan content kept too

    def enter(self, parts, st, d):
        if len(parts) == 2 and parts[0] == "_npx":
            self.add_dir("_npx/" + parts[1], "npx install", parts, st)
        return True

    def _bucket(self, d, name):
        """(live, refs, why-not-fully-read or None) of the index bucket ``name`` in ``d``."""
        try:
            fd, _st = open_member_file(d.fd, name, NPM_BUCKET_MAX)
        except MemberFileError as exc:
            return {}, set(), exc.strerror
        try:
            live, refs, skipped, unreadable = parse_npm_lines(member_lines(fd, NPM_LINE_MAX, NPM_BUCKET_MAX))
        except OSError as exc:
            return {}, set(), exc.strerror or str(exc)
        finally:
            os.close(fd)
        self.skipped_lines += skipped
        return live, refs, ("%d line(s) unreadable" % unreadable) if unreadable else None

    def entry(self, parts, name, st, d):
        off = _npm_offset(parts)
        if off < 0:
            if parts[0] == "_logs" and len(parts) == 2:
                self.add("_logs/" + name, "log", parts, st)
            elif parts[0] == "_npx" and len(parts) > 2:
                self.add("_npx/" + parts[1], "npx install", parts[:2], st)
            else:
                self.other(st)
            return
        sub = parts[off] if len(parts) > off else ""
        if sub == "index-v5" and len(parts) > off + 1 and stat.S_ISREG(st.st_mode):
            live, refs, bad = self._bucket(d, name)
            key = "/".join(parts[off:])
            u = self.add(key, "npm entry", parts, st, name="(empty index bucket)")
            self.bucket_refs[key] = sorted(refs)
            if bad is not None:
                u.keep = "index bucket not fully read (%s)" % bad
                u.name = "(index bucket: %s)" % bad
                self.unread.append(key)
            if not live:
                return
            newest = max(e.get("time") or 0 for e in live.values())
            if newest:
                u.recorded = newest / 1000.0
            u.name = sorted(live)[-1].replace("make-fetch-happen:request-cache:", "")
            if u.name.endswith(".tgz"):
                u.kind = "npm tarball"
        elif sub.startswith("content-") and len(parts) == off + 5 and stat.S_ISREG(st.st_mode):
            algo = parts[off + 1]
            hexd = parts[off + 2] + parts[off + 3] + name
            self.add_shared((algo, hexd), st, parts)
        elif sub == "tmp" and len(parts) > off + 1:
            self.add("tmp/" + "/".join(parts[off + 1 :]), "temporary file", parts[: off + 2], st)
        else:
            self.other(st)

    def finish_units(self):
        for key, refs in self.bucket_refs.items():
            u = self.units[key]
            for sid in refs:
                if sid in self.shared and sid not in u.shared:
                    u.shared.append(sid)
                    self.shared[sid].refs += 1
                    s = self.shared[sid]
                    if s.atime > u.atime:
                        u.atime = s.atime
        for sid in [s for s, obj in self.shared.items() if obj.refs == 0]:
            s = self.shared.pop(sid)
            u = self.unit("content/%s/%s" % sid, "orphan content")
            u.own_size += s.size
            u.own_disk += s.disk
            u.files += len(s.paths)
            u.atime = max(u.atime, s.atime)
            u.mtime = max(u.mtime, s.mtime)
            u.paths = list(s.paths)
            if self.unread:
                # an unread bucket may name it: npm would then find its entry without content
                u.keep = "an index bucket could not be read"
        if self.skipped_lines:
            self.notes.append("npm: %d index line(s) cacache ignores (torn or corrupt) skipped" % self.skipped_lines)
        if self.unread:
            self.notes.append(
                "npm: %d index bucket(s) not fully read, kept with all unreferenced content: %s"
                % (len(self.unread), ", ".join(sorted(self.unread)[:3]))
            )
        return list(self.units.values())


class NpmFormat(Format):
    name = "npm"
    description = "npm _cacache: unit = an index bucket (package entry); content freed when unreferenced"
    collector_class = _NpmCollector
    last_use = "the entry times npm records in its index, then file times"
    detect_order = 20

    def detect(self, root_fd, top):
        return "_cacache" in top


# -- cache_verify ---------------------------------------------------------------------------
_NPM_ALGOS = {"sha512": 128, "sha384": 96, "sha256": 64, "sha1": 40, "md5": 32}


def verify(ctx):
    """``_cacache/content-v2/<algo>/<2>/<2>/<rest>`` is named by the hex of its integrity digest
    (cacache's ``contentPath``); every index-v5 bucket line is ``<sha1 of its JSON>\\t<JSON>``
    (cacache checks the same on read and drops a line that fails). The index entries point to the
    content by that digest, so a content file that matches its name matches what they promise."""
    for _d, parts, st in ctx.files():
        off = _npm_offset(parts)
        if off > 0 and len(parts) == off + 5 and parts[off] == "content-v2":
            algo = parts[off + 1]
            hexd = "".join(parts[off + 2 :])
            if _NPM_ALGOS.get(algo) == len(hexd) and all(c in "0123456789abcdef" for c in hexd):
                ctx.check(parts, st, "digest", "%s:%s" % (algo, hexd), "%s (cacache content path)" % algo)
                continue
        elif off > 0 and len(parts) == off + 4 and parts[off] == "index-v5" and st.st_size <= NPM_BUCKET_MAX:
            ctx.check(parts, st, "npm_index", "sha1 per line", "sha1 per index line")
            continue
        ctx.unverifiable(parts, st)


NpmFormat.verifier = staticmethod(verify)
