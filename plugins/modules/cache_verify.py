#!/usr/bin/python
# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cache_verify
short_description: Check every content-addressed unit of a shared cache against the digest its tool recorded
version_added: "0.2.0"
description:
  - A shared cache hands every user what any one user, a crashed download or a bad disk left in it.
    This module reads each unit of one cache directory and compares it with the digest the cache's
    own tool recorded for it, one verifier per O(format).
  - C(huggingface) - a blob is named by its digest, the SHA-256 of the content for LFS files, the git
    blob SHA-1 for small files; a payload of the 2.x shared Xet store (named by its Xet hash) is checked
    against the name of every repo blob that links to it, hashed once, and quarantined with those links
    and its manifest, under the store entry's lock as huggingface_hub takes it (when that lock is held
    or a link was made since the check, the payload stays and the notes say so; a lock every run has
    found held for 24 hours, as root's records in O(state_dir) show, is taken as stale).
    C(npm) - C(_cacache/content-v2/<algo>/...) is named by its integrity
    digest; each index line carries the SHA-1 of its entry. C(apt) - C(archives/*.deb) against the
    C(SHA256) of the host's package lists, else a structural C(dpkg-deb) check (counted under its own
    method). C(pip) - a wheel's own C(RECORD) (built wheels, prefetched wheels, HTTP bodies that are
    wheels). C(uv) - each unpacked wheel archive against its C(RECORD). C(torch) - checkpoints
    whose names carry the SHA-256 prefix. C(conda) - a package tarball against the C(sha256) (or
    C(md5)) of its C(info/repodata_record.json). C(cargo) - a C(.crate) against the checksum in the
    registry's index cache. C(go) - a module zip against its C(.ziphash) (the C(h1) dirhash) and the
    extracted module directory against the same hash. C(generic) - nothing is recorded.
  - What cannot be checked is counted in RV(unverifiable), never as verified.
  - Incremental - as root, a state file in O(state_dir) remembers each verified unit's device, inode,
    size, mtime, ctime (a fingerprint of the files for a directory unit) and digest, so a later run
    reads only new or changed content; O(full) reads everything again.
  - O(quarantine) moves each corrupt unit out of the tool's way (through the prune engine's trash,
    after checking it is still the very file that was read), so the tool downloads it again.
  - Safety, meant to run as root on a tree users write to - symbolic links are never followed, only
    entries of the cache group are read, files are opened non-blocking as regular files only and read
    up to the size seen (a FIFO cannot hang the run, a sparse file is not read), each check is bounded
    in time, the run stays on the cache's filesystem.
  - The per-cache counts are merged into C(summary.json) in O(state_dir) (root-owned, 0640, written
    atomically) for C(cache_report) and C(cache_doctor).
author: mlinfra (@mlinfra)
attributes:
  check_mode:
    support: full
    description: Reads and checks, says what O(quarantine) would remove; removes nothing, writes no state.
  diff_mode:
    support: none
    description: Nothing to show as a diff; RV(quarantined) lists what was removed.
  platform:
    support: full
    platforms: posix
    description: Linux (C(/proc/self/mountinfo) is read; elsewhere mount points below the cache are not known).
options:
  path:
    description: The cache directory to verify (absolute, no symbolic link in any component).
    type: path
    required: true
  root:
    description: The shared cache root O(path) must lie inside; defaults to O(path).
    type: path
  name:
    description: The cache's name in C(summary.json); defaults to the last component of O(path).
    type: str
  format:
    description: Layout of the cache; C(auto) detects it.
    type: str
    default: auto
    choices: [auto, huggingface, torch, pip, uv, conda, apt, npm, go, cargo, generic, external]
  group:
    description: The cache group (name or id); only its entries are read. Default - the group of O(path).
    type: str
  full:
    description: Read every unit again, ignoring what the state file remembers.
    type: bool
    default: false
  quarantine:
    description: Remove each corrupt unit (through the prune engine's trash) so its tool fetches it again.
    type: bool
    default: false
  min_age:
    description:
      - Units written or changed more recently than this (V(10m), seconds) may still be in the
        making; they are counted in RV(skipped_busy) and checked on a later run.
    type: str
    default: 10m
  workers:
    description: Processes that hash; 0 means one per usable CPU.
    type: int
    default: 0
  state_dir:
    description:
      - Root-only directory of the state files and C(summary.json) (made 0700 if missing). Not used
        when not run as root unless given.
    type: path
  summary:
    description: Merge this cache's counts into C(summary.json) in O(state_dir).
    type: bool
    default: true
  lock_timeout:
    description: Seconds to wait for another verify of the same cache.
    type: int
    default: 60
  sample_size:
    description: Corrupt units listed in RV(corrupt_sample) (at most 20).
    type: int
    default: 20
  apt_lists:
    description: The host's apt package lists (format C(apt)).
    type: path
    default: /var/lib/apt/lists
seealso:
  - module: mlinfra.shared_cache.cache_prune
  - module: mlinfra.shared_cache.cache_report
"""

EXAMPLES = r"""
- name: Verify the HuggingFace hub cache (only what changed since the last run)
  mlinfra.shared_cache.cache_verify:
    path: /mnt/storage/cache/ml-models/huggingface
    root: /mnt/storage/cache

- name: Read everything again and remove what is corrupt so the tools fetch it again
  mlinfra.shared_cache.cache_verify:
    path: /mnt/storage/cache/npm
    full: true
    quarantine: true
"""

RETURN = r"""
path:
  description: The cache directory.
  returned: always
  type: str
format:
  description: The format used (detected with O(format=auto)).
  returned: always
  type: str
verified:
  description: Units whose content matches the recorded digest (RV(verified_bytes) their bytes).
  returned: always
  type: int
verified_bytes:
  description: Bytes of the verified units.
  returned: always
  type: int
corrupt:
  description: Units whose content does not match (RV(corrupt_bytes) their bytes).
  returned: always
  type: int
corrupt_bytes:
  description: Bytes of the corrupt units.
  returned: always
  type: int
unverifiable:
  description: Files and units nothing records a digest for, or that could not be checked (RV(notes) says why).
  returned: always
  type: int
unverifiable_bytes:
  description: Bytes of the unverifiable ones.
  returned: always
  type: int
skipped_busy:
  description: Units changed within O(min_age) or while read; checked on a later run.
  returned: always
  type: int
corrupt_sample:
  description: Up to O(sample_size) corrupt units with the expected and the actual digest.
  returned: always
  type: list
  elements: dict
  sample: [{path: "models--gpt2/blobs/ab12...", expected: "sha256:ab12...", actual: "9f00..."}]
methods:
  description: Counts per check method (which digest, or a structural check) and outcome.
  returned: always
  type: dict
quarantined:
  description: Corrupt units removed (would be removed, in check mode).
  returned: always
  type: list
  elements: str
hashed_bytes:
  description: Bytes read this run (the rest was unchanged since a verified run).
  returned: always
  type: int
reused:
  description: Units counted verified from the state file, unchanged since they were read.
  returned: always
  type: int
foreign:
  description: Entries of another group, not read (count, bytes, sample).
  returned: when the cache was walked
  type: dict
errors:
  description: Entries that could not be walked or removed.
  returned: always
  type: list
  elements: str
notes:
  description: Why some units were unverifiable, what was not quarantined.
  returned: always
  type: list
  elements: str
skipped:
  description: True when the cache was not verified (another verify holds it, format external); RV(msg) says why.
  returned: always
  type: bool
msg:
  description: Why the cache was skipped.
  returned: when RV(skipped) is true
  type: str
summary:
  description: One line for logs.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats, _jobs, _verify
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError, parse_duration
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import PermsError, resolve_group


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            root=dict(type="path"),
            name=dict(type="str"),
            format=dict(type="str", default="auto", choices=["auto"] + list(_formats.FORMATS)),
            group=dict(type="str"),
            full=dict(type="bool", default=False),
            quarantine=dict(type="bool", default=False),
            min_age=dict(type="str", default="10m"),
            workers=dict(type="int", default=0),
            state_dir=dict(type="path"),
            summary=dict(type="bool", default=True),
            lock_timeout=dict(type="int", default=60),
            sample_size=dict(type="int", default=20),
            apt_lists=dict(type="path", default="/var/lib/apt/lists"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        res = verify_cache(p, module.check_mode)
    except (ParamError, PermsError, _verify.VerifyError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="%s: %s" % (p["path"], exc))
    if res["corrupt"]:
        module.warn(
            "%d corrupt unit(s) in %s, e.g. %s"
            % (res["corrupt"], p["path"], ", ".join(s["path"] for s in res["corrupt_sample"][:3]))
        )
    if res["errors"]:
        module.warn(
            "%d entries of %s could not be read or removed: %s"
            % (len(res["errors"]), p["path"], "; ".join(res["errors"][:3]))
        )
    res["changed"] = bool(res.get("quarantined"))
    module.exit_json(**res)


def verify_cache(p, check_mode):
    """Check the options, verify, merge into the summary; the module's result (also the host command's)."""
    for key in ("workers", "lock_timeout", "sample_size"):
        if p[key] < 0:
            raise ParamError("%s: must not be negative, got %d" % (key, p[key]))
    if p["workers"] > 64:
        raise ParamError("workers: at most 64, got %d" % p["workers"])
    min_age = parse_duration(p["min_age"], "min_age") or 0
    path, _root = _jobs.prune_paths(p["path"], p["root"])
    gid = resolve_group(p["group"])
    res = _verify.Verifier(
        path,
        fmt=p["format"],
        gid=gid,
        full=p["full"],
        quarantine=p["quarantine"],
        check_mode=check_mode,
        workers=p["workers"] or None,
        min_age=min_age,
        state_dir=p["state_dir"],
        sample_size=p["sample_size"],
        lock_timeout=p["lock_timeout"],
        options={"apt_lists": p["apt_lists"]},
    ).run()
    name = p["name"] or os.path.basename(path.rstrip("/"))
    if p["summary"] and not check_mode and not res["skipped"] and (p["state_dir"] or os.geteuid() == 0):
        _verify.write_summary({name: res}, p["state_dir"])
    res["summary"] = _verify.summary_line(res, name, check_mode)
    return res


if __name__ == "__main__":
    main()
