# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""apt cache: unit = archives/*.deb and stale archives/partial files; never the lock."""

from __future__ import annotations

import stat

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format, names


class _AptCollector(Collector):
    def entry(self, parts, name, st, d):
        off = 1 if parts[0] == "archives" else -1
        if off < 0 or len(parts) <= off:
            self.other(st)
            return
        if len(parts) == off + 1 and name.endswith(".deb") and stat.S_ISREG(st.st_mode):
            self.add(name, "deb", parts, st)
        elif len(parts) == off + 2 and parts[off] == "partial" and stat.S_ISREG(st.st_mode):
            self.add("partial/" + name, "partial download", parts, st)
        else:
            self.other(st)  # lock, pkgcache.bin, ...


class AptFormat(Format):
    name = "apt"
    description = "apt cache: unit = archives/*.deb and stale archives/partial files; never the lock"
    tool_locks = ((("archives", "lock"), "fcntl"),)
    collector_class = _AptCollector
    detect_order = 30

    def detect(self, root_fd, top):
        return "archives" in top and bool(names(root_fd, "archives") & {"lock", "partial"})
