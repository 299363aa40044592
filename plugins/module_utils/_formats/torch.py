# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""torch hub: unit = a checkpoint file or a hub repo directory."""

from __future__ import annotations

import re

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format, names


class _TorchCollector(Collector):
    def enter(self, parts, st, d):
        if len(parts) == 2 and parts[0] == "hub" and parts[1] != "checkpoints":
            self.add_dir("hub/" + parts[1], "hub repo", parts, st, name=parts[1])
        return True

    def entry(self, parts, name, st, d):
        if len(parts) == 3 and parts[:2] == ("hub", "checkpoints"):
            kind = "partial download" if name.endswith(".partial") or name.startswith("tmp") else "checkpoint"
            self.add("hub/checkpoints/" + name, kind, parts, st, name=name)
        elif len(parts) > 2 and parts[0] == "hub" and parts[1] != "checkpoints":
            self.add("hub/" + parts[1], "hub repo", parts[:2], st, name=parts[1])
        else:
            self.other(st)


class TorchFormat(Format):
    name = "torch"
    description = "torch hub: unit = a checkpoint file or a hub repo directory"
    collector_class = _TorchCollector
    detect_order = 80

    def detect(self, root_fd, top):
        return "hub" in top and "checkpoints" in names(root_fd, "hub")


# -- cache_verify ---------------------------------------------------------------------------
_TORCH_HASH = re.compile(r"-([a-f0-9]*)\.")


def verify(ctx):
    """torch.hub names a checkpoint ``<name>-<first hex digits of its SHA-256>.<ext>``
    (``torch.hub.HASH_REGEX``, what ``load_state_dict_from_url(check_hash=True)`` checks): a
    checkpoint with at least 8 such digits is checked against them; the rest is unverifiable."""
    for _d, parts, st in ctx.files():
        name = parts[-1]
        m = _TORCH_HASH.search(name) if len(parts) == 3 and parts[:2] == ("hub", "checkpoints") else None
        if m and len(m.group(1)) >= 8 and not name.endswith(".partial"):
            ctx.check(parts, st, "digest", "sha256-prefix:" + m.group(1), "sha256 prefix (torch.hub name)")
        else:
            ctx.unverifiable(parts, st)


TorchFormat.verifier = staticmethod(verify)
