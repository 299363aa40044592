# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""go module cache: unit = module@version (extracted dir + cache/download files)."""

from __future__ import annotations

import stat

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format, names

_GO_EXT = (".info", ".mod", ".zip", ".ziphash", ".partial", ".lock")


def _go_offset(parts):
    if len(parts) >= 2 and parts[0] == "pkg" and parts[1] == "mod":
        return 2
    if parts and parts[0] == "pkg":
        return -1
    return 0


class _GoCollector(Collector):
    def enter(self, parts, st, d):
        off = _go_offset(parts)
        if off < 0 or len(parts) <= off:
            return True
        rest = parts[off:]
        if rest[0] == "cache":
            return True
        if "@" in rest[-1] and not any("@" in p for p in rest[:-1]):
            self.add_dir("/".join(rest), "module", parts, st)
        return True

    def entry(self, parts, name, st, d):
        off = _go_offset(parts)
        if off < 0 or len(parts) <= off:
            self.other(st)
            return
        rest = parts[off:]
        if rest[0] == "cache":
            if len(rest) >= 5 and rest[1] == "download" and rest[-2] == "@v":
                for ext in _GO_EXT:
                    if name.endswith(ext):
                        key = "/".join(rest[2:-2]) + "@" + name[: -len(ext)]
                        u = self.add(key, "module", parts, st)
                        if ext == ".lock":
                            u.locks.append(parts)
                        return
            self.other(st)  # list, sumdb, vcs
            return
        for i, p in enumerate(rest):
            if "@" in p:
                self.add("/".join(rest[: i + 1]), "module", parts[: off + i + 1], st)
                return
        self.other(st)

    def finish_units(self):
        # remove the extracted directory first, then cache/download files (.lock last), so an
        # interrupted prune leaves either a usable module or one go downloads again.
        for u in self.units.values():
            locks = [p for p in u.paths if p[-1].endswith(".lock")]
            zips = [p for p in u.paths if p not in locks and p[-1].endswith((".zip", ".ziphash"))]
            dirs = [p for p in u.paths if p not in locks and p not in zips and not p[-1].endswith(_GO_EXT)]
            rest = [p for p in u.paths if p not in locks and p not in zips and p not in dirs]
            u.paths = dirs + zips + rest + locks
        return list(self.units.values())


class GoFormat(Format):
    name = "go"
    description = "go module cache: unit = module@version (extracted dir + cache/download files)"
    collector_class = _GoCollector
    detect_order = 50

    def detect(self, root_fd, top):
        return ("pkg" in top and "mod" in names(root_fd, "pkg")) or (
            "cache" in top and "download" in names(root_fd, "cache")
        )


# -- cache_verify ---------------------------------------------------------------------------
GO_ZIPHASH_MAX = 256


def go_unescape(path):
    """Go's module path escaping undone ('!b!urnt!sushi' -> 'BurntSushi'); None if invalid."""
    out = []
    bang = False
    for ch in path:
        if bang:
            if not "a" <= ch <= "z":
                return None
            out.append(ch.upper())
            bang = False
        elif ch == "!":
            bang = True
        elif "A" <= ch <= "Z":
            return None
        else:
            out.append(ch)
    return None if bang else "".join(out)


def verify(ctx):
    """``cache/download/<module>/@v/<version>.zip`` against its ``.ziphash`` (the ``h1:`` dirhash go
    computed over the zip's files when it downloaded and checked it against go.sum), and the
    extracted ``<module>@<version>`` directory against the same hash (``dirhash.HashDir`` with
    the ``module@version`` prefix). No .ziphash: unverifiable. A corrupt zip goes with its
    .ziphash, a corrupt directory alone: go downloads (or extracts) them again."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._verify import DirPrint

    hashes = {}  # (escaped module, version) -> h1
    zips = []
    dirs = {}  # parts of module@version dir -> (escaped module, version, DirPrint)
    for d in ctx.walk():
        base = ctx.parts(d)
        off = _go_offset(base + ("",))
        inside = None
        if off >= 0:
            at = next((i for i in range(off, len(base)) if "@" in base[i]), None)
            if at is not None and base[: at + 1] in dirs:
                inside = base[: at + 1]
        for name, st in d.entries:
            parts = base + (name,)
            if stat.S_ISDIR(st.st_mode):
                if off >= 0 and inside is None and len(parts) > off and parts[off] != "cache" and "@" in name:
                    mod, _at, ver = "/".join(parts[off:]).rpartition("@")
                    if "@" not in mod:
                        dirs[parts] = (mod, ver, DirPrint(st))
                continue
            if inside is not None:
                dirs[inside][2].add(parts[len(inside) :], st)
                continue
            rest = parts[off:] if off >= 0 else ()
            if len(rest) >= 5 and rest[:2] == ("cache", "download") and rest[-2] == "@v":
                mod = "/".join(rest[2:-2])
                if name.endswith(".ziphash") and stat.S_ISREG(st.st_mode):
                    data = ctx.read_small(d.fd, name, GO_ZIPHASH_MAX)
                    text = data.decode("ascii", "replace").strip() if data else ""
                    if text.startswith("h1:"):
                        hashes[(mod, name[: -len(".ziphash")])] = text
                    ctx.unverifiable(parts, st, size=0)  # the record itself
                    continue
                if name.endswith(".zip") and stat.S_ISREG(st.st_mode):
                    zips.append((parts, st, mod, name[: -len(".zip")]))
                    continue
            if stat.S_ISREG(st.st_mode):
                ctx.unverifiable(parts, st)
    for parts, st, mod, ver in zips:
        want = hashes.get((mod, ver))
        if want is None:
            ctx.unverifiable(parts, st)
            continue
        prefix = go_unescape(mod)
        ctx.check(
            [parts, parts[:-1] + (ver + ".ziphash",)], st, "go_zip", "%s %s@%s" % (want, prefix, ver),
            "h1 dirhash (.ziphash) of the zip", target=parts,
        )  # fmt: skip
    for parts, (mod, ver, dp) in dirs.items():
        want = hashes.get((mod, ver))
        if want is None:
            ctx.unverifiable(parts, dp.st, size=dp.size)
            continue
        ctx.check(
            parts, dp.st, "go_dir", "%s %s@%s" % (want, go_unescape(mod), ver),
            "h1 dirhash (.ziphash) of the module dir", sig=dp.sig(), size=dp.size, young=dp.young,
        )  # fmt: skip


GoFormat.verifier = staticmethod(verify)
