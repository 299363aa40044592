# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One registry of formats (_formats/): the modules' documented choices, the catalog's list, the
catalog README and what AnsiballZ ships all follow it."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _catalog, _formats, _jobs

ROOT = Path(__file__).resolve().parents[4]
PKG = ROOT / "plugins" / "module_utils" / "_formats"
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if p.stem != "__init__")
# option name -> what its documented choices must be, from the registry (``auto`` allowed first)
REGISTRY_OPTIONS = {"format": lambda: list(_formats.FORMATS), "age_by": lambda: list(_formats.AGE_BY)}


def _options(options, where=""):
    for name, spec in (options or {}).items():
        yield where + name, name, spec or {}
        yield from _options((spec or {}).get("suboptions"), where + name + ".")


def documented_registry_choices(module):
    """(option path, documented choices, registry choices) of a module's format/age_by options."""
    mod = importlib.import_module("ansible_collections.mlinfra.shared_cache.plugins.modules." + module)
    doc = yaml.safe_load(mod.DOCUMENTATION)
    out = []
    for path, name, spec in _options(doc.get("options")):
        if name in REGISTRY_OPTIONS and "choices" in spec:
            want = REGISTRY_OPTIONS[name]()
            if spec["choices"][:1] == ["auto"]:
                want = ["auto"] + want
            out.append((path, spec["choices"], want))
    return out


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_is_yaml(module):
    """DOCUMENTATION, EXAMPLES and RETURN parse (ansible-doc and validate-modules read them so)."""
    mod = importlib.import_module("ansible_collections.mlinfra.shared_cache.plugins.modules." + module)
    for attr in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
        try:
            yaml.safe_load(getattr(mod, attr))
        except yaml.YAMLError as exc:
            pytest.fail("%s.%s is not valid YAML: %s" % (module, attr, exc))


@pytest.mark.parametrize("module", MODULES)
def test_documented_choices_are_the_registry(module):
    for path, documented, registry in documented_registry_choices(module):
        assert documented == registry, "%s: option %s documents %s, the registry has %s" % (
            module,
            path,
            documented,
            registry,
        )


def test_the_modules_with_format_options_are_checked():
    checked = {m: [p for p, _d, _r in documented_registry_choices(m)] for m in MODULES}
    assert checked["cache_prune"] == ["format", "age_by"]
    assert checked["cache_report"] == ["age_by"]


def test_a_documented_choice_missing_from_the_registry_fails(monkeypatch):
    monkeypatch.setitem(REGISTRY_OPTIONS, "format", lambda: list(_formats.FORMATS) + ["maven"])
    with pytest.raises(AssertionError, match="maven"):
        test_documented_choices_are_the_registry("cache_prune")


def test_every_list_of_formats_is_the_registry():
    assert _formats.FORMATS == tuple(_formats.REGISTRY)
    assert _catalog.FORMATS is _formats.FORMATS
    assert _catalog.AGE_BY is _formats.AGE_BY
    assert set(_formats.AGE_BY) == {"atime", "mtime", "newest"}
    for name in _formats.FORMATS:
        _jobs.prune_policy({"format": name})
        fmt = _formats.get_format(name)
        assert fmt.name == name and fmt.description and fmt.last_use
        assert set(fmt.age_by) <= set(_formats.AGE_BY)


def test_one_module_per_format_and_each_is_imported_explicitly():
    """AnsiballZ follows import statements only: every format module is imported by name."""
    modules = {p.stem for p in PKG.glob("*.py")} - {"__init__", "_base"}
    assert modules == set(_formats.FORMATS)
    tree = ast.parse((PKG / "__init__.py").read_text())
    imported = {
        n.module.rsplit(".", 1)[1]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(_formats.__name__ + ".")
    }
    assert modules <= imported, modules - imported
    for name, fmt in _formats.REGISTRY.items():
        assert type(fmt).__module__ == _formats.__name__ + "." + name


def test_the_helpers_live_with_their_format():
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _prune
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats import conda, huggingface

    assert not hasattr(_prune, "dir_is_prunable_repo") and not hasattr(_prune, "rewrite_conda_urls")
    assert callable(huggingface.dir_is_prunable_repo) and callable(conda.rewrite_conda_urls)


def test_the_catalog_readme_has_a_line_per_format():
    text = (ROOT / "roles" / "catalog" / "README.md").read_text()
    listed = re.findall(r"^- `([a-z0-9_-]+)` \(format\):", text, re.M)
    assert listed == list(_formats.FORMATS)


def test_the_catalog_refuses_an_unknown_format_by_the_registry():
    with pytest.raises(_catalog.ParamError, match="one of " + ", ".join(_formats.FORMATS)):
        _catalog.resolve({"x": {"path": "x", "format": "maven"}}, {}, "/mnt/storage/cache")
