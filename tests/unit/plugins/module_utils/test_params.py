"""Input parsing and validation shared by every module."""

from __future__ import annotations

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import (
    ParamError,
    is_within,
    normalize_abs_path,
    parse_duration,
    parse_mode,
    parse_size,
    validate_cache_root,
    validate_relative,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        (None, None),
        (0, 0),
        ("500", 500),
        ("1k", 1024),
        ("10G", 10 * 1024**3),
        ("1.5T", int(1.5 * 1024**4)),
        ("512MB", 512 * 1024**2),
        ("2 GiB", 2 * 1024**3),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["ten", "-5G", "5X", "G", True, -1, "1..2G"])
def test_parse_size_rejects(bad):
    with pytest.raises(ParamError):
        parse_size(bad, "max_size")


@pytest.mark.parametrize(
    "text,expected",
    [("90d", 90 * 86400), ("12h", 43200), ("1h30m", 5400), ("2w", 14 * 86400), ("3600", 3600), (60, 60)],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["soon", "90x", "d90", "-1d", "1h junk", True, -3])
def test_parse_duration_rejects(bad):
    with pytest.raises(ParamError):
        parse_duration(bad, "max_age")


def test_parse_mode():
    assert parse_mode("2775") == 0o2775
    assert parse_mode("0770") == 0o770
    assert parse_mode("0o2770") == 0o2770
    for bad in ("777a", "99999", "", 2775, None, "rwx"):
        with pytest.raises(ParamError):
            parse_mode(bad)


@pytest.mark.parametrize("root", ["/", "/etc", "/usr", "/var", "/home", "/tmp", "/mnt", "/etc/cache", "/usr/local/x"])
def test_validate_cache_root_refuses_system(root):
    with pytest.raises(ParamError):
        validate_cache_root(root)


@pytest.mark.parametrize("root", ["relative/cache", "/mnt/storage/../../etc", "", "/mnt/x\x00y"])
def test_validate_cache_root_refuses_bad_paths(root):
    with pytest.raises(ParamError):
        validate_cache_root(root)


def test_validate_cache_root_accepts_and_normalizes():
    assert validate_cache_root("/mnt/storage/cache/") == "/mnt/storage/cache"
    assert validate_cache_root("/srv/cache//pip") == "/srv/cache/pip"
    assert validate_cache_root("/var/cache", allowed=["/var/cache"]) == "/var/cache"


def test_relative_and_within():
    assert validate_relative("ml-models/torch/") == "ml-models/torch"
    for bad in ("/abs", "../up", "a/../../b", ""):
        with pytest.raises(ParamError):
            validate_relative(bad)
    assert is_within("/a/b/c", "/a/b")
    assert is_within("/a/b", "/a/b")
    assert not is_within("/a/bc", "/a/b")
    assert normalize_abs_path("/a/./b/") == "/a/b"
