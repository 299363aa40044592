"""The catalog: built-in defaults resolve; overrides merge by field; bad entries are refused."""

from __future__ import annotations

import os

import pytest
import yaml

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._catalog import resolve
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError

DEFAULTS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "roles", "catalog", "defaults", "main.yml")
SEED_CACHES = {
    "huggingface", "torch", "tensorflow-hub", "datasets", "pip", "conda", "apt", "git-lfs", "go", "npm",
    "cargo", "julia", "R", "buildkit", "browser", "jetbrains", "docker-layers", "gdrive",
}  # fmt: skip


@pytest.fixture(scope="module")
def defaults():
    with open(DEFAULTS) as fh:
        return yaml.safe_load(fh)


def by_name(entries):
    return {e["name"]: e for e in entries}


def test_builtin_catalog_has_every_seed_cache(defaults):
    entries = by_name(resolve(defaults["shared_cache_caches"], {}, defaults["shared_cache_root"]))
    assert set(entries) == SEED_CACHES | {"uv"}  # uv: issue 12
    uv = entries["uv"]
    assert (uv["abs_path"], uv["mount"], uv["env"]) == ("/mnt/storage/cache/uv", "/cache/uv", {"UV_CACHE_DIR": ""})
    assert (uv["format"], uv["category"], uv["trust"]) == ("uv", "packages", entries["pip"]["trust"])
    assert uv["retention"] == entries["pip"]["retention"]
    assert entries["pip"]["abs_path"] == "/mnt/storage/cache/pip"
    assert entries["pip"]["env"] == {"PIP_CACHE_DIR": "", "PIP_FIND_LINKS": "wheelhouse"}
    assert entries["apt"]["mount"] == "/var/cache/apt"
    assert entries["huggingface"]["abs_path"] == "/mnt/storage/cache/ml-models/huggingface"
    assert "HF_HOME" not in entries["huggingface"]["env"], "HF_HOME holds per-user tokens: never shared"
    # The seed's rule: no age-based cleaning of ML model caches by default.
    for name in ("huggingface", "torch", "tensorflow-hub", "datasets"):
        assert entries[name]["retention"]["max_age"] is None
    assert entries["pip"]["retention"]["max_age"] == "90d"
    assert all(not int(e["mode"], 8) & 0o002 for e in entries.values())


def test_override_one_field_keeps_the_rest(defaults):
    over = {"pip": {"retention": {"max_age": "30d"}}}
    entries = by_name(resolve(defaults["shared_cache_caches"], over, "/srv/cache"))
    assert entries["pip"]["retention"]["max_age"] == "30d"
    assert entries["pip"]["retention"]["min_age"] == "1h"
    assert entries["pip"]["mount"] == "/cache/pip"
    assert entries["pip"]["abs_path"] == "/srv/cache/pip"


def test_add_and_drop_entries(defaults):
    over = {
        "ollama": {
            "path": "ml-models/ollama",
            "format": "generic",
            "category": "ml-models",
            "env": {"OLLAMA_MODELS": ""},
        },
        "gdrive": None,
        "jetbrains": {"enabled": False},
    }
    entries = by_name(resolve(defaults["shared_cache_caches"], over))
    assert "gdrive" not in entries and "jetbrains" not in entries
    assert entries["ollama"]["mount"] == "/cache/ml-models/ollama"
    assert entries["ollama"]["mode"] == "2775"
    assert list(entries) == sorted(entries)


@pytest.mark.parametrize(
    "over,message",
    [
        ({"pip": {"format": "zip"}}, "unknown format"),
        ({"pip": {"path": "/abs"}}, "relative"),
        ({"pip": {"path": "../etc"}}, ".."),
        ({"pip": {"mode": "0777"}}, "world-writable"),
        ({"pip": {"mode": 2775}}, "quoted octal"),
        ({"pip": {"colour": "red"}}, "unknown field"),
        ({"pip": {"retention": {"max_age": "soon"}}}, "duration"),
        ({"pip": {"retention": {"max_size": "lots"}}}, "size"),
        ({"extra": {"path": "pip/sub"}}, "overlap"),
        ({"extra": {"path": "extra", "mount": "/cache/pip"}}, "clash"),
        ({"extra": {"path": "extra", "env": {"PIP_CACHE_DIR": ""}}}, "set by both"),
        ({"extra": {"path": "extra", "env": {"BAD-NAME": ""}}}, "environment variable"),
        ({"pip": {"trust": "root"}}, "unknown kind 'root'"),
        ({"pip": {"trust": []}}, "shared_cache_overrides.pip.trust: expected"),
        ({"pip": {"trust": ["data", "code"]}}, "'data' means neither"),
        ({"pip": {"private": "token"}}, "expected a list"),
        ({"pip": {"private": ["sub/token"]}}, "without '/'"),
        ({"pip": {"private": [""]}}, "without '/'"),
        ({"git-lfs": {"config": {"git": {"storage": ""}}}}, "not a git config key"),
        ({"git-lfs": {"config": {"git": {"lfs.storage": "../x"}}}}, ".."),
        ({"git-lfs": {"config": {"git": ["lfs.storage"]}}}, "config.git: expected a mapping"),
    ],
)
def test_bad_entries_are_refused_with_a_clear_message(defaults, over, message):
    with pytest.raises(ParamError) as err:
        resolve(defaults["shared_cache_caches"], over)
    assert message in str(err.value)


def test_an_error_names_the_variable_the_user_set(defaults):
    """A bad value from shared_cache_overrides is named there; a bad catalog entry stays the catalog's."""
    with pytest.raises(ParamError) as err:
        resolve(defaults["shared_cache_caches"], {"pip": {"retention": {"max_age": "7x"}}})
    assert str(err.value).startswith("shared_cache_overrides.pip.retention.max_age: ")
    with pytest.raises(ParamError) as err:
        resolve(defaults["shared_cache_caches"], {"newkind": {"format": "zip"}})
    assert str(err.value).startswith("shared_cache_overrides.newkind.format: ")
    caches = dict(defaults["shared_cache_caches"], pip=dict(defaults["shared_cache_caches"]["pip"], format="zip"))
    with pytest.raises(ParamError) as err:
        resolve(caches, {"pip": {"description": "pip"}})
    assert str(err.value).startswith("shared_cache_caches[pip].format: ")


def test_trust_marks_and_private_patterns(defaults):
    entries = by_name(resolve(defaults["shared_cache_caches"], {"npm": {"trust": "credentials"}}))
    assert entries["apt"]["trust"] == ["data"]  # the default
    assert entries["cargo"]["trust"] == ["code", "credentials"]
    assert entries["julia"]["trust"] == ["code", "credentials"]
    assert entries["R"]["trust"] == ["code"] and entries["conda"]["trust"] == ["code"]
    assert entries["npm"]["trust"] == ["credentials"]  # a single kind becomes a list
    # every cache keeps the generic credential files private; cargo adds its own
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import DEFAULT_PRIVATE

    generic = list(DEFAULT_PRIVATE)  # the one list the permission fix-up applies
    assert entries["apt"]["private"] == generic
    assert {"credentials.toml", "credentials"} <= set(entries["cargo"]["private"])
    assert entries["julia"]["private"] == generic + ["auth.toml"]
    assert all(set(generic) <= set(e["private"]) for e in entries.values())


def test_git_config_keys_replace_the_system_gitconfig(defaults):
    entries = by_name(resolve(defaults["shared_cache_caches"], {}))
    assert entries["git-lfs"]["config"] == {"git": {"lfs.storage": ""}}
    # no built-in entry writes a system-wide tool config any more (root would load it)
    assert not [e["name"] for e in entries.values() if e["config"].get("files")]


def test_writers_makes_a_curated_cache(defaults):
    """`writers` names the group that alone writes a cache; a bad value names the override field."""
    entries = by_name(resolve(defaults["shared_cache_caches"], {"huggingface": {"writers": "cache-writers"}}))
    assert entries["huggingface"]["writers"] == "cache-writers"
    assert entries["pip"]["writers"] is None  # not curated unless asked
    for bad in ("Bad Group", "../x", 7, ["a"]):
        with pytest.raises(ParamError) as err:
            resolve(defaults["shared_cache_caches"], {"huggingface": {"writers": bad}})
        assert str(err.value).startswith("shared_cache_overrides.huggingface.writers: ")
        assert "is not a group name" in str(err.value)
