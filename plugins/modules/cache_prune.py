#!/usr/bin/python
# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cache_prune
short_description: Prune a shared download cache by age, size cap and free space, unit by unit
version_added: "0.1.0"
description:
  - Deletes what a cache's own tool can do without (old or least-recently-used units) from one
    cache directory of the shared cache, keeping the cache consistent so the tool keeps working.
  - The unit of deletion follows the cache O(format). C(huggingface) - a revision (snapshot) of a
    repo with its refs; its blobs go only when no other revision uses them; stale C(*.incomplete)
    downloads; repos left empty are removed (on every run, also what a killed run left); never a
    dangling symlink. A payload of huggingface_hub's shared Xet store (C(hub/blobs/<xx>/<hash>))
    counts once and goes when no repo blob links to it any more, checked under its C(.lock) (a lock
    every run has found held for 24 hours is taken as stale), its C(.refs) manifest rewritten to the
    links left. In an C(HF_HOME), each file of the Xet chunk and
    shard caches, each Xet log and each C(assets/) file is a unit of its own. C(pip) - an HTTP response
    (headers and body together) or a built-wheel directory. C(uv) - a wheel entry (link, HTTP policy,
    metadata, lock), a source distribution's builds, an index response, interpreter information, a
    git checkout; an unzipped wheel archive goes with the last entry that links it; uv's C(.lock) is
    taken exclusively as C(uv cache prune) does; files hard-linked into environments are never
    counted as freed. C(conda) - a package (extracted
    directory and tarball together) timed by its own C(info/repodata_record.json) and tarball, not
    by its files' (years old) mtimes; packages whose files are hard-linked into an environment are
    kept; C(urls.txt) is rewritten without the removed packages. C(apt) - C(archives/*.deb) and
    stale C(archives/partial) files, never C(lock). C(npm) - a C(_cacache) index bucket; content
    goes only when no remaining index entry references it (C(npm cache verify) stays clean).
    C(go) - a module@version, its extracted read-only directory (made writable first) and its
    C(cache/download) files together. C(cargo) - a crate, C(registry/cache/*.crate) and the
    extracted C(registry/src) directory, the C(.cargo-ok) marker removed first. C(torch) - a
    checkpoint file or a hub repo directory, stale C(*.partial) downloads. C(generic) - files,
    then empty directories (never the cache's top-level directories). C(external) - never pruned
    (daemon- or tool-owned state such as BuildKit, docker layers, git-lfs).
  - Last use is the newest of what the tool records (npm index C(time), cargo's
    C(.global-cache) database) and the files' times chosen by O(age_by).
  - Safety, meant to run as root on a tree users write to - symbolic links are never followed
    (every directory is opened with C(O_NOFOLLOW) relative to its parent and must be the inode
    that was examined, so a directory swapped for a symlink during the run cannot redirect it);
    removal is done relative to open directory descriptors; just before a unit leaves it is
    checked again (a file in it written, replaced or linked in since the walk, read since it was
    chosen, a HuggingFace revision's blobs or store payloads read since the walk, or locked keeps
    it, counted in RV(kept) as C(changed)), then it leaves its place by one
    rename per path into a root-only C(.mlinfra-prune-trash-*) directory (same filesystem, at the
    top of the cache or, for a HuggingFace hub, in C(.locks) where the tool does not look), a
    unit rewritten between check and move is put back whole, and it is deleted from there, so
    a prune killed mid-way never leaves half a unit for the tool to trip on (the next run
    deletes the leftovers first); a root-only journal lets the run after a killed one finish its
    job, leaving what one uninterrupted run would have left; the run never leaves the cache's
    filesystem nor enters a mount point below it; O(path) must lie inside O(root) and neither may
    be C(/) or a system directory.
  - Ownership - only what the cache owns is pruned - an entry whose group is not the cache group
    (O(group), by default the group of O(path)), such as a directory a member moved in with files
    they could not delete themselves, is never deleted and a directory of another group is never
    entered; they are counted in RV(foreign). The group is checked again on each entry at removal.
  - Concurrency - an exclusive C(flock) on a root-only lock file (C(/run/mlinfra-shared-cache),
    which members cannot open; the cache directory itself when not run as root) keeps two prunes
    of one cache apart (the second waits O(lock_timeout) seconds, then skips and says so); anything a
    process holds a lock on (C(flock), POSIX or OFD lock, read from C(/proc/locks)) is skipped with
    everything below it, as systemd-tmpfiles does; the tool's own locks are respected (apt
    C(archives/lock) is taken for the run, cargo's C(.package-cache) too, HuggingFace C(.locks)
    of a repo make its units wait for the next run, Go's download C(.lock) files); a tool lock held
    past the wait (any member can hold one) is reported in RV(busy) and does not stop the run;
    what is in use stays by O(min_age) and the per-entry lock check; nothing younger
    than O(min_age) is deleted.
  - Bad input (unparseable sizes or ages, negative values, an unknown format, a path that is not
    a directory) fails with a clear message and deletes nothing.
author: mlinfra (@mlinfra)
attributes:
  check_mode:
    support: full
    description: Lists what would go (count, bytes, a capped sample of units) and deletes nothing.
  diff_mode:
    support: full
    description: The cache's size and units before and after.
  platform:
    support: full
    platforms: posix
    description: Linux (C(/proc/locks) and C(/proc/self/mountinfo) are read; elsewhere only C(flock) locks are seen).
options:
  path:
    description: The cache directory to prune (absolute, no symbolic link in any component).
    type: path
    required: true
  root:
    description:
      - The shared cache root O(path) must lie inside (the catalog's C(shared_cache_root)).
      - Defaults to O(path) itself.
    type: path
  format:
    description:
      - Layout of the cache; C(auto) detects it from the directory's contents (falls back to
        C(generic)).
    type: str
    default: auto
    choices: [auto, huggingface, torch, pip, uv, conda, apt, npm, go, cargo, generic, external]
  max_age:
    description:
      - Delete units not used for longer than this (V(90d), V(12h), V(2w), seconds).
      - Unset means no age limit.
    type: str
  age_by:
    description:
      - Which file time tells last use. V(newest) (default) takes the newer of access and
        modification time - on the usual C(relatime) mounts the access time is updated at
        most once a day, which is precise enough for day-scale retention; on C(noatime)
        mounts it is never updated and V(newest) falls back to the modification (download)
        time, so nothing used recently by a write is lost (the module warns on C(noatime)).
      - V(atime) trusts access times only; V(mtime) only modification times (as C(find -mtime)).
    type: str
    default: newest
    choices: [atime, mtime, newest]
  max_size:
    description:
      - Evict least-recently-used units until the cache (allocated bytes) is at most this size
        (V(500G), V(1.5T), bytes). Applied after O(max_age).
    type: str
  min_free:
    description:
      - Evict least-recently-used units until the filesystem has at least this much free space
        (V(100G)). The disk guard for the filesystem the cache lives on.
    type: str
  min_age:
    description:
      - Never delete anything used or written more recently than this, whatever the other
        limits say (downloads in progress, files a job just wrote).
    type: str
    default: 1h
  exclude:
    description:
      - Shell patterns (C(fnmatch)); a unit is kept when its key, name, a path of it relative to
        O(path), or a base name matches.
    type: list
    elements: str
    default: []
  lock_timeout:
    description: Seconds to wait for another prune of the same cache (and for a tool's lock).
    type: int
    default: 60
  sample_size:
    description: How many deleted units to list in RV(sample).
    type: int
    default: 20
  group:
    description:
      - The cache group (name or numeric id). Only entries of this group are pruned; others are
        counted in RV(foreign) and left alone. Default - the group of O(path), which C(cache_dir)
        lays out as the cache group.
    type: str
notes:
  - With no O(max_age), O(max_size) nor O(min_free) the module does nothing (ML model caches have
    no policy by default).
seealso:
  - module: mlinfra.shared_cache.cache_dir
"""

EXAMPLES = r"""
- name: Drop pip cache entries unused for 90 days
  mlinfra.shared_cache.cache_prune:
    path: /mnt/storage/cache/pip
    root: /mnt/storage/cache
    max_age: 90d

- name: Keep the HuggingFace hub cache under 2 TiB, least recently used revisions first
  mlinfra.shared_cache.cache_prune:
    path: /mnt/storage/cache/ml-models/huggingface
    root: /mnt/storage/cache
    format: huggingface
    max_size: 2T
    exclude: ["*meta-llama*"]

- name: What would go to get 200G free (check mode lists, deletes nothing)
  mlinfra.shared_cache.cache_prune:
    path: /mnt/storage/cache/conda
    root: /mnt/storage/cache
    min_free: 200G
  check_mode: true
  register: would
"""

RETURN = r"""
path:
  description: The cache directory.
  returned: always
  type: str
format:
  description: The format used (detected when O(format=auto)).
  returned: always
  type: str
  sample: pip
units:
  description: Units deleted (would be deleted in check mode).
  returned: always
  type: int
files:
  description: Files deleted (would be deleted in check mode).
  returned: always
  type: int
bytes:
  description: Allocated bytes freed (would be freed in check mode).
  returned: always
  type: int
dirs:
  description: Empty directories removed (C(generic) format).
  returned: when format is generic
  type: int
sample:
  description: The first O(sample_size) units deleted, with why.
  returned: always
  type: list
  elements: dict
  sample: [{key: "models--gpt2@e7da7f", name: "gpt2 e7da7f (main)", kind: revision, bytes: 548118077,
            last_used: 1700000000, reason: max_age}]
before:
  description: Size (allocated bytes), files and units of the cache before the run.
  returned: when the cache was walked
  type: dict
after:
  description: Size and units after the run (expected after, in check mode).
  returned: when the cache was walked
  type: dict
kept:
  description:
    - Units kept although a limit applied, by reason (young, excluded, protected; changed - written,
      replaced, read or locked between the walk and its removal). C(linked) counts shared objects
      (HuggingFace repo blobs) a removed unit would have freed, and orphan blobs, that a link made
      since the walk names (another revision downloaded meanwhile with the same file) - they stay.
      They also count the blobs of a repo whose snapshots changed too much during the run to be
      looked at again (a note says so) - they stay for a later run.
  returned: for formats other than generic
  type: dict
foreign:
  description:
    - Entries left alone because they are not the cache's (another group) - C(count), C(bytes)
      (their own allocated size; directories among them were not entered) and a C(sample).
  returned: always
  type: dict
  sample: {count: 1, bytes: 4096, sample: [moved-in-dir]}
busy:
  description: Entries skipped because a process holds a lock on them, and tool locks held past the wait.
  returned: always
  type: list
  elements: str
errors:
  description: Entries that could not be read or removed (the run goes on).
  returned: always
  type: list
  elements: str
notes:
  description:
    - What the format's clean-up did (lines dropped from conda's C(urls.txt), empty HuggingFace repos
      removed), and the tool records members wrote that were not used and what was done instead
      (a cargo C(.global-cache) that is not cargo's database, crates then aged by file times; an
      npm index bucket that could not be read, kept with the content nothing else references; a
      C(urls.txt) left as it is).
  returned: when there is something to say
  type: list
  elements: str
skipped:
  description: True when nothing was examined (another prune holds the lock, the tool holds its lock,
    no policy, external format); RV(msg) says why.
  returned: always
  type: bool
msg:
  description: Why the cache was skipped.
  returned: when RV(skipped) is true
  type: str
  sample: "another prune holds the lock on /mnt/storage/cache/pip; waited 60s, skipped"
duration:
  description: Seconds the run took.
  returned: when the cache was walked
  type: float
summary:
  description: One line for logs.
  returned: always
  type: str
  sample: "cache_prune /mnt/storage/cache/pip format=pip units=12 files=24 freed=1.2GiB duration=0.4s"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _formats, _prune
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import human
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._jobs import prune_paths, prune_policy
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import PermsError, resolve_group


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            root=dict(type="path"),
            format=dict(type="str", default="auto", choices=["auto"] + list(_formats.FORMATS)),
            max_age=dict(type="str"),
            age_by=dict(type="str", default="newest", choices=list(_formats.AGE_BY)),
            max_size=dict(type="str"),
            min_free=dict(type="str"),
            min_age=dict(type="str", default="1h"),
            exclude=dict(type="list", elements="str", default=[]),
            lock_timeout=dict(type="int", default=60),
            sample_size=dict(type="int", default=20),
            group=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        # the same checks as the nightly mlinfra-cache-prune command (module_utils/_jobs.py)
        policy = prune_policy(p)
        path, _root = prune_paths(p["path"], p["root"])
        gid = resolve_group(p["group"])
    except (ParamError, PermsError) as exc:
        module.fail_json(msg=str(exc))
    pruner = _prune.Pruner(
        path,
        fmt=p["format"],
        policy=policy,
        check_mode=module.check_mode,
        lock_timeout=p["lock_timeout"],
        sample_size=p["sample_size"],
        gid=gid,
    )
    try:
        res = pruner.run()
    except _prune.PruneError as exc:
        module.fail_json(msg=str(exc))
    for w in pruner.warnings:
        module.warn(w)
    if res.get("skipped") and res.get("msg") and "lock" in res["msg"]:
        module.warn(res["msg"])
    if res.get("foreign", {}).get("count"):
        module.warn(
            "%d entr%s of %s not the cache's (another group) left alone, e.g. %s"
            % (
                res["foreign"]["count"],
                "y" if res["foreign"]["count"] == 1 else "ies",
                path,
                ", ".join(res["foreign"]["sample"][:3]),
            )
        )
    if res["errors"]:
        module.warn(
            "%d entr%s of %s could not be read or removed: %s"
            % (len(res["errors"]), "y" if len(res["errors"]) == 1 else "ies", path, "; ".join(res["errors"][:3]))
        )
    res["summary"] = _prune.summary_line(res, module.check_mode)
    if module._diff and "before" in res:
        res["diff"] = {
            side: "%s: %s in %s units\n" % (path, human(res[side].get("bytes")), res[side].get("units", "?"))
            for side in ("before", "after")
        }
    res["changed"] = bool(res.get("changed"))
    module.exit_json(**res)


if __name__ == "__main__":
    main()
