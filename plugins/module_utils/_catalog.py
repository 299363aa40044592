# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cache catalog: merge the built-in entries with user overrides, validate, normalize.

The catalog is a mapping ``name -> entry`` (role ``mlinfra.shared_cache.catalog``, variable
``shared_cache_caches``). Users change it through ``shared_cache_overrides``, a mapping of
``name -> partial entry`` merged recursively: a new name adds a cache kind, an existing name
changes only the fields given, ``{enabled: false}`` drops an entry. ``resolve()`` returns the
list every role iterates, sorted by name, each entry complete and checked.
"""

from __future__ import annotations

import copy
import re

# The formats (and age_by values) the modules understand: one module each in _formats/.
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import AGE_BY, FORMATS
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import (
    ParamError,
    normalize_abs_path,
    parse_duration,
    parse_mode,
    parse_size,
    validate_env_name,
    validate_relative,
    world_writable,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import DEFAULT_PRIVATE

CATEGORIES = ("ml-models", "packages", "languages", "other")
RETENTION_KEYS = ("max_age", "max_size", "min_free", "min_age", "exclude", "age_by")
ENTRY_KEYS = (
    "path",
    "mount",
    "format",
    "category",
    "description",
    "subdirs",
    "env",
    "mode",
    "retention",
    "enabled",
    "config",
    "trust",
    "private",
    "writers",
)
# `writers`: a curated cache. Only this group (the prefetch service account's) writes the tree;
# the cache group reads it (a named POSIX ACL entry r-x/r--, access and default).
_GROUP_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
# What trusting a shared cache means (roles/catalog/README.md says it in a sentence each):
#   data         downloads the tool verifies or addresses by content; no member's code runs from it
#   code         members can place code that other members run (CARGO_HOME/bin, a Julia depot,
#                an R site library, shared conda envs, a wheelhouse pip installs from)
#   credentials  the tool home can hold a user's credentials (cargo login, Julia's auth.toml)
TRUST = ("data", "code", "credentials")
DEFAULT_TRUST = ("data",)
# Credential files every cache keeps private (the permission fix-up never widens a match):
# _perms.DEFAULT_PRIVATE; an entry's `private` adds patterns (file names, no '/').
# config.git: git config keys given to members through GIT_CONFIG_COUNT/KEY_n/VALUE_n.
_GIT_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9-]*(\.[^\s=]+)?\.[A-Za-z][A-Za-z0-9-]*$")
DEFAULT_RETENTION = {
    "max_age": None,
    "max_size": None,
    "min_free": None,
    "min_age": "1h",
    "exclude": [],
    "age_by": "newest",
}
DEFAULT_MODE = "2775"


def merge(base, override):
    """Recursive dict merge: mappings merge, everything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _entry(name, raw, root, mount_root):
    where = "shared_cache_caches[%s]" % name
    if not isinstance(raw, dict):
        raise ParamError("%s: expected a mapping of fields, got %r" % (where, raw))
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise ParamError(
            "%s: unknown field(s) %s; known fields: %s" % (where, ", ".join(unknown), ", ".join(ENTRY_KEYS))
        )
    path = validate_relative(raw.get("path", name), where + ".path")
    fmt = raw.get("format", "generic")
    if fmt not in FORMATS:
        raise ParamError("%s.format: unknown format %r; one of %s" % (where, fmt, ", ".join(FORMATS)))
    category = raw.get("category", "other")
    if category not in CATEGORIES:
        raise ParamError("%s.category: unknown category %r; one of %s" % (where, category, ", ".join(CATEGORIES)))
    mount = raw.get("mount") or (mount_root.rstrip("/") + "/" + path)
    mount = normalize_abs_path(mount, where + ".mount")
    mode_text = raw.get("mode", DEFAULT_MODE)
    mode = parse_mode(mode_text, where + ".mode")
    if world_writable(mode):
        raise ParamError(
            "%s.mode: %s is world-writable; shared caches are group-shared (use 2775 or 2770)" % (where, mode_text)
        )
    subdirs = [validate_relative(s, where + ".subdirs") for s in (raw.get("subdirs") or [])]
    env = {}
    for var, sub in (raw.get("env") or {}).items():
        validate_env_name(var, where + ".env")
        sub = "" if sub in (None, "", ".") else validate_relative(sub, "%s.env.%s" % (where, var))
        env[var] = sub
    retention = merge(DEFAULT_RETENTION, raw.get("retention") or {})
    unknown = sorted(set(retention) - set(RETENTION_KEYS))
    if unknown:
        raise ParamError(
            "%s.retention: unknown key(s) %s; known: %s" % (where, ", ".join(unknown), ", ".join(RETENTION_KEYS))
        )
    for key in ("max_age", "min_age"):
        parse_duration(retention[key], "%s.retention.%s" % (where, key))
    for key in ("max_size", "min_free"):
        parse_size(retention[key], "%s.retention.%s" % (where, key))
    if retention["age_by"] not in AGE_BY:
        raise ParamError("%s.retention.age_by: one of %s" % (where, ", ".join(AGE_BY)))
    if not isinstance(retention["exclude"], list):
        raise ParamError("%s.retention.exclude: expected a list of glob patterns" % where)
    config = _config(raw.get("config"), where)
    return {
        "name": name,
        "path": path,
        "abs_path": root.rstrip("/") + "/" + path,
        "mount": mount,
        "format": fmt,
        "category": category,
        "description": raw.get("description", name),
        "subdirs": subdirs,
        "env": env,
        "mode": "%04o" % mode,
        "retention": retention,
        "enabled": bool(raw.get("enabled", True)),
        "config": config,
        "trust": _trust(raw.get("trust"), where),
        "private": _private(raw.get("private"), where),
        "writers": _writers(raw.get("writers"), where),
    }


def _writers(raw, where):
    """`writers`: None, or the group name that alone may write a curated cache."""
    if raw in (None, ""):
        return None
    if not isinstance(raw, str) or not _GROUP_NAME.match(raw):
        raise ParamError(
            "%s.writers: %r is not a group name (the group of the prefetch service account, e.g. cache-writers)"
            % (where, raw)
        )
    return raw


def _config(raw, where):
    config = raw or {}
    if not isinstance(config, dict):
        raise ParamError("%s.config: expected a mapping" % where)
    apt = config.get("apt")
    if apt is not None:
        # apt directory settings (Dir::Cache::archives) as subpaths of the cache, as in `env`
        if not isinstance(apt, dict):
            raise ParamError("%s.config.apt: expected a mapping of apt setting -> subpath" % where)
        apt = {k: validate_relative(v, "%s.config.apt.%s" % (where, k)) for k, v in apt.items()}
        config = dict(config, apt=apt)
    git = config.get("git")
    if git is None:
        return config
    if not isinstance(git, dict):
        raise ParamError("%s.config.git: expected a mapping of git config key -> subpath" % where)
    out = {}
    for key, sub in git.items():
        if not isinstance(key, str) or not _GIT_KEY.match(key):
            raise ParamError("%s.config.git: %r is not a git config key such as lfs.storage" % (where, key))
        out[key] = "" if sub in (None, "", ".") else validate_relative(sub, "%s.config.git.%s" % (where, key))
    return dict(config, git=out)


def _trust(raw, where):
    """`trust`: one kind or a list of them; resolved as a list in TRUST order (default ['data'])."""
    if raw is None:
        return list(DEFAULT_TRUST)
    kinds = [raw] if isinstance(raw, str) else raw
    if not isinstance(kinds, list) or not kinds:
        raise ParamError("%s.trust: expected one of %s or a list of them" % (where, ", ".join(TRUST)))
    unknown = [k for k in kinds if k not in TRUST]
    if unknown:
        raise ParamError("%s.trust: unknown kind %r; one of %s" % (where, unknown[0], ", ".join(TRUST)))
    if "data" in kinds and len(set(kinds)) > 1:
        raise ParamError("%s.trust: 'data' means neither code nor credentials; drop it or the others" % where)
    return [k for k in TRUST if k in kinds]


def _private(raw, where):
    """`private`: glob patterns of credential file names, added to DEFAULT_PRIVATE (order kept)."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ParamError("%s.private: expected a list of file name patterns" % where)
    out = list(DEFAULT_PRIVATE)
    for pattern in raw:
        if not isinstance(pattern, str) or not pattern or "/" in pattern or pattern in (".", ".."):
            raise ParamError(
                "%s.private: %r is not a file name pattern (a non-empty glob without '/')" % (where, pattern)
            )
        if pattern not in out:
            out.append(pattern)
    return out


def _overlaps(a, b):
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _blame(exc, name, caches, overrides, root, mount_root):
    """Name the variable the user set: an entry whose catalog value is valid alone was broken by
    shared_cache_overrides, so the error reads shared_cache_overrides.<name>.<field>."""
    if name not in (overrides or {}):
        return exc
    base = caches.get(name)
    if isinstance(base, dict):
        try:
            _entry(name, base, root, mount_root)
        except ParamError:
            return exc  # the catalog entry itself is at fault
    text = str(exc).replace("shared_cache_caches[%s]" % name, "shared_cache_overrides.%s" % name, 1)
    return ParamError(text)


def resolve(caches, overrides=None, root="/mnt/storage/cache", mount_root="/cache"):
    """Return the enabled, validated catalog as a list sorted by name.

    Raises ParamError naming the entry and field at fault. Checks across entries: no two
    caches share or nest their host path, no two share or nest their container mount, no
    environment variable is set by two caches.
    """
    root = normalize_abs_path(root, "shared_cache_root")
    mount_root = normalize_abs_path(mount_root, "shared_cache_mount_root")
    if not isinstance(caches, dict):
        raise ParamError("shared_cache_caches: expected a mapping of cache name -> entry")
    if overrides is not None and not isinstance(overrides, dict):
        raise ParamError("shared_cache_overrides: expected a mapping of cache name -> fields to change")
    merged = {}
    for name in set(caches) | set(overrides or {}):
        base = caches.get(name) or {}
        over = (overrides or {}).get(name)
        if over is None and name in (overrides or {}):
            over = {"enabled": False}
        merged[name] = merge(base, over or {})
    entries = []
    for name in sorted(merged):
        if not isinstance(name, str) or not name or "/" in name:
            where = "shared_cache_overrides" if name in (overrides or {}) else "shared_cache_caches"
            raise ParamError("%s: cache name %r: expected a short name without '/'" % (where, name))
        try:
            entry = _entry(name, merged[name], root, mount_root)
        except ParamError as exc:
            raise _blame(exc, name, caches, overrides, root, mount_root) from None
        if entry["enabled"]:
            entries.append(entry)
    seen_env = {}
    for i, a in enumerate(entries):
        for b in entries[i + 1 :]:
            if _overlaps(a["path"], b["path"]):
                raise ParamError(
                    "caches %s and %s: paths %s and %s overlap; each cache needs its own directory"
                    % (a["name"], b["name"], a["path"], b["path"])
                )
            if _overlaps(a["mount"], b["mount"]):
                raise ParamError(
                    "caches %s and %s: container mounts %s and %s clash"
                    % (a["name"], b["name"], a["mount"], b["mount"])
                )
        for var in a["env"]:
            if var in seen_env:
                raise ParamError("environment variable %s is set by both %s and %s" % (var, seen_env[var], a["name"]))
            seen_env[var] = a["name"]
    return entries
