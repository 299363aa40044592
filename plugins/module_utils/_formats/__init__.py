# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-format knowledge of the caches: what a *unit* is, which files belong to it, its last use.

Shared by ``cache_prune`` (a unit is what gets deleted, whole) and ``cache_report`` (top-N largest
units). Both run ONE walk with ``_fs.Walker`` and feed every directory to a collector.

API (stable: only additions)
----------------------------
``FORMATS``                  tuple of format names (``external`` included: never pruned by file),
                             from ``REGISTRY``: the catalog's ``format`` values and the modules'
                             ``choices`` come from here (a unit test compares the documented ones).
``REGISTRY``                 name -> ``Format``, one per module of this package (``huggingface``,
                             ``pip``, ...): adding a format is one module, imported below.
``AGE_BY``                   the ``age_by`` values (every format's ``Format.age_by``).
``get_format(name)``         -> ``Format``; raises ValueError for an unknown name.
``detect_format(root_fd)``   -> name guessed from the layout below an open directory ('generic' if unsure).
``Format``                   ``.name``, ``.description``, ``.prunable`` (False for external),
                             ``.last_use`` (where a unit's last use comes from), ``.age_by``,
                             ``.detect_order`` / ``.detect(root_fd, top)`` (auto-detection),
                             ``.per_file`` (True for generic: cache_prune deletes file by file, the
                             report's unit is the top-level entry), ``.collector(root_fd)``.
``Collector``                ``.visit(d)`` for every ``Dir`` a ``Walker`` yields (it may add names to
                             ``d.skip``); ``.finish()`` -> ``Collection``; ``.dir_disk``: allocated
                             bytes of the visited directories themselves (not in ``total_disk``). No I/O besides reading
                             small metadata files (HF refs, npm index buckets) relative to ``d.fd``.
``collect(root_fd, fmt, walker=None)``  convenience: one walk + finish -> ``Collection``.
``Collection``               ``.units`` (list of ``Unit``), ``.shared`` (id -> ``Shared``: objects
                             several units reference, HF blobs / npm content), ``.other_size``,
                             ``.other_disk``, ``.other_files`` (bytes/files in no unit: metadata,
                             locks, indexes, environments), ``.total_size``, ``.total_disk``,
                             ``.total_files``, ``.notes`` (list of str), ``.format`` (name).
``Unit``                     ``.key`` (unique within the cache), ``.name`` (display label),
                             ``.kind`` ('revision', 'wheel', 'http', 'conda package', 'module', 'deb',
                             'crate', 'npm entry', 'checkpoint', 'hub repo', 'file', 'entry', ...),
                             ``.size`` / ``.disk`` (apparent / allocated bytes, shared objects it
                             references included, hard links counted once per walk), ``.own_size``,
                             ``.own_disk``, ``.files``, ``.atime``, ``.mtime`` (newest over its files),
                             ``.recorded`` (last use the tool itself recorded, epoch seconds, or None),
                             ``.paths`` (tuples of components relative to the walked directory, in
                             the order they must be removed), ``.shared`` (ids into
                             ``Collection.shared``), ``.locks`` (tuples of tool lock files that must
                             not be held), ``.keep`` (None, or why the unit must not be deleted),
                             ``.last_used(age_by)`` with age_by in ('atime', 'mtime', 'newest'),
                             ``.stale`` (True for left-overs of interrupted downloads, STALE_KINDS),
                             ``.read_paths`` (files outside ``.paths`` its last use came from, which
                             the prune looks at again for reads just before the unit leaves),
                             ``.linkable`` (shared ids naming the unit's own paths, an HF blob no
                             revision linked at walk time: a reference made to one since keeps the
                             unit, ``Format.linked_since``).
``Format.tool_locks``        list of (relative path tuple, 'flock'|'fcntl') of the tool's own
                             cache-wide locks (apt ``archives/lock``, cargo ``.package-cache``).
``TRASH_NAME``               top-level directory cache_prune uses while removing units; left out.
``Format.post_prune(root_fd, collection, removed_keys)``  format clean-up after units went (empty HF
                             repos, conda ``urls.txt``); returns a list of notes. ``records``: the
                             prune's ``LockRecords`` (a tool's entry lock found held run after run
                             goes stale, see ``_prune.TOOL_LOCK_STALE``).
``Format.linked_since(parents, collection, sids, since_ns)``  the shared objects leaving with a unit
                             that a reference made since the walk names (an HF revision downloaded
                             meanwhile links a blob that is there): they stay. Asked before they
                             move and after, once per unit: it reads only what changed since the
                             walk, within a bound (HF: ``LINKED_READ_FACTOR``).

Paths are tuples of ``str`` components (surrogate-escaped like ``_fs``), relative to the directory
the walk started from (the cache directory, e.g. ``/mnt/storage/cache/pip``).
"""

from __future__ import annotations

# Every format module is imported explicitly: Ansible's AnsiballZ ships the module_utils a module
# imports by following import statements (never a dynamic import), and the host_lib role ships
# what these imports name (a unit test checks both lists).
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import (
    AGE_BY as _AGE_BY,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import (
    STALE_KINDS,
    TRASH_NAME,
    Collection,
    Collector,
    Format,
    Shared,
    Unit,
    names,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.apt import AptFormat
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.cargo import (
    CARGO_DB_MAX,
    CARGO_DB_SECONDS,
    CargoDbError,
    CargoFormat,
    cargo_last_use,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.conda import (
    CONDA_URL_LINE_MAX,
    CONDA_URLS_MAX,
    CondaFormat,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.external import ExternalFormat
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.generic import GenericFormat
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.go import GoFormat
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.huggingface import (
    HF_REF_MAX,
    HuggingFaceFormat,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.npm import (
    NPM_BUCKET_MAX,
    NPM_LINE_MAX,
    NpmFormat,
    integrity_ids,
    parse_npm_bucket,
    parse_npm_lines,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.pip import PipFormat
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.torch import TorchFormat
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats.uv import UvFormat
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import Walker

__all__ = [
    "AGE_BY",
    "CARGO_DB_MAX",
    "CARGO_DB_SECONDS",
    "CONDA_URLS_MAX",
    "CONDA_URL_LINE_MAX",
    "FORMATS",
    "HF_REF_MAX",
    "NPM_BUCKET_MAX",
    "NPM_LINE_MAX",
    "REGISTRY",
    "STALE_KINDS",
    "TRASH_NAME",
    "CargoDbError",
    "Collection",
    "Collector",
    "Format",
    "Shared",
    "Unit",
    "cargo_last_use",
    "collect",
    "detect_format",
    "get_format",
    "integrity_ids",
    "parse_npm_bucket",
    "parse_npm_lines",
]

# The order is the documented one (the modules' choices, the catalog's list); detection has its own.
REGISTRY = {
    f.name: f
    for f in (
        HuggingFaceFormat(),
        TorchFormat(),
        PipFormat(),
        UvFormat(),
        CondaFormat(),
        AptFormat(),
        NpmFormat(),
        GoFormat(),
        CargoFormat(),
        GenericFormat(),
        ExternalFormat(),
    )
}
FORMATS = tuple(REGISTRY)
AGE_BY = tuple(a for a in _AGE_BY if any(a in f.age_by for f in REGISTRY.values()))
_DETECT = sorted((f for f in REGISTRY.values() if f.detect_order is not None), key=lambda f: f.detect_order)


def get_format(name):
    """Return the Format object for ``name`` (one of FORMATS)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError("unknown cache format %r; expected one of %s" % (name, ", ".join(FORMATS))) from None


def detect_format(root_fd):
    """Guess the format of the cache directory open at ``root_fd`` from its top-level layout."""
    top = names(root_fd)
    for fmt in _DETECT:
        if fmt.detect(root_fd, top):
            return fmt.name
    return "generic"


def collect(root_fd, fmt, walker=None):
    """Walk the directory open at ``root_fd`` once and return the Collection of ``fmt``."""
    if isinstance(fmt, str):
        fmt = get_format(fmt)
    if walker is None:
        walker = Walker(root_fd)
    col = fmt.collector(root_fd)
    for d in walker.walk():
        col.visit(d)
    return col.finish()
