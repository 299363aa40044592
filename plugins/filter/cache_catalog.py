# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: cache_catalog
short_description: Merge, validate and normalize the shared cache catalog
version_added: 0.1.0
description:
  - Takes the catalog mapping (C(shared_cache_caches)), applies the user's partial overrides
    recursively and returns the enabled entries as a list sorted by name, each complete
    (defaults filled in) and validated.
  - Fails with a message naming the entry and field at fault for unknown formats, absolute or
    C(..) paths, world-writable modes, overlapping paths or container mounts and environment
    variables set by two caches, unknown trust kinds, private patterns with a C(/) and malformed
    C(config.git) keys.
options:
  _input:
    description: The catalog, a mapping of cache name to entry.
    type: dict
    required: true
  overrides:
    description:
      - Mapping of cache name to the fields to change. A new name adds a cache kind; C(null) or
        C(enabled=false) drops one.
    type: dict
    default: {}
  root:
    description: The cache root on the host.
    type: path
    default: /mnt/storage/cache
  mount_root:
    description: Where caches are mounted in containers when an entry gives no C(mount).
    type: path
    default: /cache
  errors:
    description:
      - V(raise) fails the template with the error; V(return) returns a mapping with the key
        C(error) (the message) instead of the list, so that a C(fail) task can show the message
        alone (the catalog role does).
    type: str
    choices: [raise, return]
    default: raise
"""

EXAMPLES = r"""
- name: Resolve the catalog once
  ansible.builtin.set_fact:
    caches: "{{ shared_cache_caches | mlinfra.shared_cache.cache_catalog(shared_cache_overrides, shared_cache_root) }}"
"""

RETURN = r"""
_value:
  description:
    - List of entries with C(name), C(path), C(abs_path), C(mount), C(format), C(category),
      C(description), C(subdirs), C(env), C(mode), C(retention), C(enabled), C(config),
      C(trust) (list of V(data), V(code), V(credentials)) and C(private) (credential file name
      patterns, the built-in ones included).
  type: list
  elements: dict
"""

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._catalog import resolve
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError


def _plain(value):
    """The variables as plain dicts and lists. Ansible (2.19+) hands a filter lazy containers
    whose deep copy also copies their templating context: resolving the default catalog that
    way took seconds on every run of site.yml; copying plain data takes milliseconds."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def cache_catalog(caches, overrides=None, root="/mnt/storage/cache", mount_root="/cache", errors="raise"):
    try:
        return resolve(_plain(caches), _plain(overrides or {}), root, mount_root)
    except ParamError as exc:
        if errors == "return":
            return {"error": "shared cache catalog: %s" % exc}
        raise AnsibleFilterError("shared cache catalog: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"cache_catalog": cache_catalog}
