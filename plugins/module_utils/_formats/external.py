# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""external: owned by a daemon or tool; never deleted by file."""

from __future__ import annotations

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Format
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.generic import _GenericCollector


class ExternalFormat(Format):
    name = "external"
    description = "owned by a daemon or tool (buildkit, docker, git-lfs): never deleted by file"
    prunable = False
    last_use = "never pruned by file (reported by top-level entry)"
    collector_class = _GenericCollector
