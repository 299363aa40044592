# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks and steps the modules and root's host commands share (one code path).

``cache_prune`` (module) and ``mlinfra-cache-prune`` (nightly command) build their policy and
check their paths with ``prune_policy`` and ``prune_paths``. (``cache_dir`` and the command's
permission fix-up share ``_perms.cache_dir_fixer`` and ``_perms.fail_on_managed``.)
"""

from __future__ import annotations

import os
import stat

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats, _prune
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import (
    ParamError,
    is_within,
    parse_duration,
    parse_size,
    validate_cache_root,
)

PRUNE_DEFAULTS = {
    "format": "auto",
    "max_age": None,
    "age_by": "newest",
    "max_size": None,
    "min_free": None,
    "min_age": "1h",
    "exclude": [],
    "lock_timeout": 60,
    "sample_size": 20,
}


def prune_policy(params):
    """Parse and check every limit of a prune; raises ParamError before anything is touched.

    ``params`` has the cache_prune module's option names (missing ones take its defaults).
    """
    p = dict(PRUNE_DEFAULTS)
    p.update({k: v for k, v in params.items() if v is not None})
    max_age = parse_duration(p["max_age"], "max_age")
    min_age = parse_duration(p["min_age"], "min_age")
    max_size = parse_size(p["max_size"], "max_size")
    min_free = parse_size(p["min_free"], "min_free")
    for name in ("lock_timeout", "sample_size"):
        if isinstance(p[name], bool) or not isinstance(p[name], int):
            raise ParamError("%s: expected a whole number, got %r" % (name, p[name]))
        if p[name] < 0:
            raise ParamError("%s: must not be negative, got %d" % (name, p[name]))
    if p["format"] not in ("auto",) + tuple(_formats.FORMATS):
        raise ParamError("format: %r is not one of auto, %s" % (p["format"], ", ".join(_formats.FORMATS)))
    if p["age_by"] not in _formats.AGE_BY:
        raise ParamError("age_by: %r is not one of %s" % (p["age_by"], ", ".join(_formats.AGE_BY)))
    exclude = p["exclude"]
    if not isinstance(exclude, (list, tuple)):
        raise ParamError("exclude: expected a list of patterns, got %r" % (exclude,))
    for pat in exclude:
        if not isinstance(pat, str) or not pat:
            raise ParamError("exclude: patterns must be non-empty strings, got %r" % (pat,))
    return _prune.Policy(
        max_age=max_age,
        max_size=max_size,
        min_free=min_free,
        min_age=min_age if min_age is not None else 0,
        exclude=list(exclude),
        age_by=p["age_by"],
    )


def prune_paths(path, root=None):
    """(path, root) normalized: ``path`` a real directory (no symlink) inside ``root``; else ParamError."""
    path = validate_cache_root(path, "path")
    root = validate_cache_root(root or path, "root")
    if not is_within(path, root):
        raise ParamError("path: %s is outside the cache root %s; refusing" % (path, root))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ParamError("path: %s does not exist" % path) from None
    if stat.S_ISLNK(st.st_mode):
        raise ParamError("path: %s is a symbolic link; give the real directory" % path)
    if not stat.S_ISDIR(st.st_mode):
        raise ParamError("path: %s is not a directory" % path)
    return path, root
