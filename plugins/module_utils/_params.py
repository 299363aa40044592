# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Input validation shared by every module and plugin of mlinfra.shared_cache.

Private module_utils (leading underscore): the API may change between releases.
Everything here is pure Python with no Ansible imports, so filters, modules and
unit tests use the very same checks.
"""

from __future__ import annotations

import os
import re

# Directories that are never a cache root (nor inside-of-them roots we would walk as root).
# A cache may live *below* some of them (e.g. /var/cache/..., /srv/...) only when listed in
# ALLOWED_UNDER_SYSTEM: /var/cache/apt is the one real case.
SYSTEM_DIRS = frozenset(
    [
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/local",
        "/usr/bin",
        "/usr/lib",
        "/usr/sbin",
        "/usr/share",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/cache",
        "/var/tmp",
        "/var/spool",
        "/var/mail",
    ]
)
# Trees that hold the system itself: nothing inside them can be a cache root.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr", "/run")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_DURATION_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MODE_RE = re.compile(r"^0?[0-7]{3,4}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ParamError(ValueError):
    """A user-supplied value is not acceptable; the message says why and what to do."""


def parse_size(value, name="size"):
    """Return bytes for 500, '500', '10G', '1.5 TiB', '512MB'. Units are powers of 1024.

    None stays None. Negative, fractional bytes and unknown suffixes raise ParamError.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ParamError("%s: expected a size such as 500M or 2T, got a boolean" % name)
    if isinstance(value, int):
        if value < 0:
            raise ParamError("%s: must not be negative, got %d" % (name, value))
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ParamError("%s: cannot parse %r as a size (examples: 500M, 20G, 1.5T, 1048576)" % (name, value))
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * (1024 ** _SIZE_POW[unit]))


def parse_duration(value, name="duration"):
    """Return seconds for '90d', '12h', '1h30m', '2w', 3600 or '3600'. None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ParamError("%s: expected a duration such as 90d or 12h, got a boolean" % name)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ParamError("%s: must not be negative, got %s" % (name, value))
        return int(value)
    text = str(value).strip()
    if re.match(r"^\d+$", text):
        return int(text)
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if text[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNIT[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ParamError("%s: cannot parse %r as a duration (examples: 90d, 12h, 1h30m, 2w, 3600)" % (name, value))
    return int(total)


def parse_mode(value, name="mode"):
    """Return an int for an octal mode given as '2775', '0775' or an int already in octal meaning."""
    if isinstance(value, bool) or value is None:
        raise ParamError("%s: expected an octal mode such as '2775'" % name)
    if isinstance(value, int):
        # An unquoted 2775 in YAML is the decimal number 2775, not octal: refuse the ambiguity.
        raise ParamError("%s: give the mode as a quoted octal string such as '2775', not the number %r" % (name, value))
    text = str(value).strip()
    if text.startswith("0o"):
        text = text[2:]
    if not _MODE_RE.match(text):
        raise ParamError("%s: %r is not an octal mode such as '2775' or '0770'" % (name, value))
    return int(text, 8)


def world_writable(mode):
    return bool(mode & 0o002)


def normalize_abs_path(path, name="path"):
    """Refuse relative paths and '..' components; return the path without trailing slashes."""
    if not isinstance(path, str) or not path:
        raise ParamError("%s: expected an absolute path, got %r" % (name, path))
    if "\x00" in path:
        raise ParamError("%s: contains a NUL byte" % name)
    if not path.startswith("/"):
        raise ParamError("%s: must be an absolute path, got %r" % (name, path))
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ParamError("%s: must not contain '..' components, got %r" % (name, path))
    return "/" + "/".join(parts)


def validate_cache_root(path, name="path", allowed=()):
    """Return the normalized path if it may hold a shared cache, else raise ParamError.

    Refused: relative paths, '..', '/', system directories themselves and anything inside
    the trees that hold the system (/etc, /usr, /proc, ...), unless listed in ``allowed``.
    """
    norm = normalize_abs_path(path, name)
    allowed_norm = set(normalize_abs_path(a, "allowed") for a in (allowed or ()))
    if norm in allowed_norm:
        return norm
    if norm in SYSTEM_DIRS:
        raise ParamError(
            "%s: %s is a system directory, not a cache root; use a directory below it "
            "such as /mnt/storage/cache" % (name, norm)
        )
    for tree in SYSTEM_TREES:
        if norm == tree or norm.startswith(tree + "/"):
            raise ParamError("%s: %s lies inside the system tree %s; refusing" % (name, norm, tree))
    return norm


def is_within(path, root):
    """True when normalized absolute ``path`` is ``root`` or lies below it (purely lexical)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def validate_relative(path, name="path"):
    """A path relative to the cache root: no leading '/', no '..', not empty."""
    if not isinstance(path, str) or not path.strip("/ "):
        raise ParamError("%s: expected a relative path such as 'pip' or 'ml-models/torch', got %r" % (name, path))
    if path.startswith("/"):
        raise ParamError("%s: must be relative to the cache root, got %r" % (name, path))
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ParamError("%s: must not contain '..', got %r" % (name, path))
    return "/".join(parts)


def validate_env_name(var, name="env"):
    if not isinstance(var, str) or not _ENV_RE.match(var):
        raise ParamError("%s: %r is not a valid environment variable name" % (name, var))
    return var


def real_dir_within(path, root):
    """Resolve ``path`` and check it stays inside resolved ``root``; returns the resolved path."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not is_within(real, real_root):
        raise ParamError("path %s resolves to %s, outside the cache root %s" % (path, real, real_root))
    return real
