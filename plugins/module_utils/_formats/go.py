# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""go module cache: unit = module@version (extracted dir + cache/download files)."""

from __future__ import annotations

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
