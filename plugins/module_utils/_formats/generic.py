# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""generic: any tree; each file is a unit (reports group by top-level entry)."""

from __future__ import annotations

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format


class _GenericCollector(Collector):
    def entry(self, parts, name, st, d):
        self.add(parts[0], "entry" if len(parts) > 1 else "file", parts[:1], st)

    def enter(self, parts, st, d):
        if len(parts) == 1:
            self.add_dir(parts[0], "entry", parts, st, timed=False)
        return True


class GenericFormat(Format):
    name = "generic"
    per_file = True
    collector_class = _GenericCollector
    # second-level directories: units are top-level entries, merged by key across workers
    shard_depths = (2,)

    def shard(self, parts):
        return True


# -- cache_verify ---------------------------------------------------------------------------
def verify(ctx):
    """A generic tree records no digest: every file is counted unverifiable, never verified."""
    for _d, parts, st in ctx.files():
        ctx.unverifiable(parts, st)


GenericFormat.verifier = staticmethod(verify)
