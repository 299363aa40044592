# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pip cache: unit = an HTTP response, a built-wheel directory or a prefetched wheel."""

from __future__ import annotations

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format


class _PipCollector(Collector):
    def entry(self, parts, name, st, d):
        top = parts[0]
        if top in ("http", "http-v2") and len(parts) >= 3:
            base = name[:-5] if name.endswith(".body") else name
            self.add(top + "/" + base, "http", parts, st, name=base)
        elif top == "wheels" and len(parts) >= 3:
            key = "/".join(parts[:-1])
            u = self.add(key, "wheel", parts[:-1], st)
            if name.endswith(".whl"):
                u.name = name
        elif top == "wheelhouse" and len(parts) == 2:
            # Wheels pre-fetched by cache_prefetch (found by pip through PIP_FIND_LINKS).
            self.add("wheelhouse/" + name, "prefetched wheel", parts, st, name=name)
        else:
            self.other(st)


class PipFormat(Format):
    name = "pip"
    description = "pip cache: unit = an HTTP response (headers + body), a built-wheel directory or a prefetched wheel"
    collector_class = _PipCollector
    detect_order = 70
    # pip's 304 revalidation reads an entry's header and body, then writes the header back: the
    # prune looks at the entries it removed once more this long (seconds) after the last one left
    split_settle = 0.25
    # http-v2/<x>, wheels/<x>: a unit (a response, a built-wheel directory) lies below one
    shard_depths = (2,)

    def shard(self, parts):
        return parts[0] in ("http", "http-v2", "wheels")

    def detect(self, root_fd, top):
        return bool(top & {"http-v2", "wheels", "selfcheck"}) or (
            "http" in top and not top - {"http", "selfcheck", "wheels"}
        )


# -- cache_verify ---------------------------------------------------------------------------
def verify(ctx):
    """What pip records: a wheel's own ``RECORD`` (the digest of every file it holds), checked for
    built wheels (``wheels/``), prefetched ones (``wheelhouse/``) and HTTP bodies that are wheels
    (``http-v2/*.body``: a corrupt one goes with its metadata file, so pip downloads it again).
    Other bodies (index pages, source archives) and the old pickled ``http/`` cache record no
    digest: unverifiable."""
    for _d, parts, st in ctx.files():
        top, name = parts[0], parts[-1]
        if (top == "wheels" and len(parts) >= 3 or top == "wheelhouse" and len(parts) == 2) and name.endswith(".whl"):
            ctx.check(parts, st, "wheel", "RECORD", "wheel RECORD")
        elif top == "http-v2" and len(parts) >= 3 and name.endswith(".body"):
            ctx.check([parts[:-1] + (name[:-5],), parts], st, "wheel", "maybe", "wheel RECORD", target=parts)
        else:
            ctx.unverifiable(parts, st)


PipFormat.verifier = staticmethod(verify)
