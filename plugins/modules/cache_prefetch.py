#!/usr/bin/python
# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cache_prefetch
short_description: Pre-populate a shared cache with a HuggingFace repository, Python wheels, a .deb or an npm package
version_added: 0.1.0
author: mlinfra (@mlinfra)
description:
  - Puts one item into a shared cache with the tool's own download code, so that what lands is
    laid out exactly as the tool would lay it out for a user, and reports C(changed) only when
    something had to be fetched. Items already in the cache are not fetched again.
  - O(kind=huggingface) downloads a model or dataset repository into a HuggingFace hub cache
    (C(HF_HUB_CACHE)) with C(huggingface_hub.snapshot_download), honouring O(revision),
    O(allow_patterns) and O(ignore_patterns). The revision is resolved to a commit first and the
    files it needs are checked with C(snapshot_download(dry_run=true)); only missing files are
    downloaded.
  - O(kind=pip) downloads the wheels of one requirement and its dependencies into a wheelhouse
    directory with C(pip download). What pip would pick is resolved first with
    C(pip install --dry-run --report); only when a file is missing from the wheelhouse is
    anything downloaded.
  - O(kind=apt) downloads a Debian package (and, with O(dependencies=true), what installing it
    would pull in on this host) into an APT C(archives) directory with python3-apt's
    C(Version.fetch_binary), which checks the archive's hash; a package whose C(.deb) is already
    there with the right size and hash is not fetched again.
  - O(kind=npm) adds a package to an npm cache (C(_cacache)) with C(npm cache add); a spec
    that C(npm cache ls) already lists a tarball for is not fetched again.
  - Meant to run as an unprivileged member of the cache group (C(become_user)). The module
    sets C(umask 0002), and after a download gives the group read/write on the files it
    created with a private mode (C(huggingface_hub) writes some metadata with C(0600)), acting
    through C(O_NOFOLLOW) descriptors and never on symlinks.
requirements:
  - O(kind=huggingface) - C(huggingface_hub) >= 1.0 (with C(dry_run)), importable by the
    running interpreter or by O(python); the module re-runs itself under O(python) when needed.
  - O(kind=pip) - C(pip) >= 23 for the interpreter given in O(executable).
  - O(kind=apt) - python3-apt (the module re-runs itself under the system Python when needed)
    and current package lists (C(apt-get update)).
  - O(kind=npm) - C(npm) >= 8.
attributes:
  check_mode:
    support: full
    description: Resolves what would be fetched (metadata requests only) and writes nothing.
  diff_mode:
    support: full
    description: Lists the files (or cache keys) present before and after.
options:
  kind:
    description: What to fetch.
    type: str
    required: true
    choices: [huggingface, pip, apt, npm]
  name:
    description:
      - O(kind=huggingface) - repository id (C(org/name)).
      - O(kind=pip) - one requirement specifier (C(numpy==2.1.0), C(torch>=2.4)).
      - O(kind=apt) - package name, optionally C(name=version).
      - O(kind=npm) - package spec (C(is-number@7.0.0), C(@scope/pkg@^1)).
    type: str
    required: true
  dest:
    description:
      - Directory the item goes into, created (with its missing parents) with O(dir_mode)
        when absent. The hub cache (C(<huggingface cache>/hub)), the wheelhouse, the APT
        C(archives) directory or the npm cache directory.
    type: path
    required: true
  dir_mode:
    description: Mode of directories this module creates, a quoted octal string.
    type: str
    default: "2775"
  revision:
    description: O(kind=huggingface) - branch, tag or commit to fetch. A commit pins the content exactly.
    type: str
    default: main
  repo_type:
    description: O(kind=huggingface) - repository type.
    type: str
    choices: [model, dataset]
    default: model
  allow_patterns:
    description: O(kind=huggingface) - only files matching one of these glob patterns are fetched.
    type: list
    elements: str
  ignore_patterns:
    description: O(kind=huggingface) - files matching one of these glob patterns are not fetched.
    type: list
    elements: str
  endpoint:
    description:
      - O(kind=huggingface) - Hub URL. Defaults to C(HF_ENDPOINT) from the environment, else the
        public Hub.
    type: str
  token:
    description:
      - O(kind=huggingface) - access token for gated or private repositories.
      - Used inside the module's own process (never on a command line nor in a child's environment)
        and never returned.
    type: str
  curated:
    description:
      - O(kind=huggingface) - O(dest) is a curated hub cache (catalog C(writers)) that jobs read
        while it is updated. The commit is downloaded with C(huggingface_hub) into a staging area
        beside O(dest) on the same filesystem (C(<dest>/../.staging)), every blob is verified
        against its name (SHA-256, or the git blob SHA-1), then published by rename - the blobs,
        then the snapshot, then the ref - so a reader sees the old revision or the new one, never
        part of one.
      - A published blob whose content no longer matches its name is fetched again and replaced
        (RV(restored)). The ref C(main) points at a pinned commit (a branch or tag revision gets
        its own ref).
    type: bool
    default: false
  python:
    description:
      - O(kind=huggingface) - Python interpreter that can import C(huggingface_hub) (a virtualenv's
        C(bin/python)). Used only when the interpreter running the module cannot.
    type: path
  executable:
    description:
      - O(kind=pip) - Python interpreter whose pip is used (C(python -m pip)); defaults to the
        interpreter running the module.
      - O(kind=npm) - the C(npm) program; defaults to C(npm) on C(PATH).
    type: path
  only_binary:
    description: O(kind=pip) - accept wheels only (C(--only-binary=:all:)); no source builds.
    type: bool
    default: true
  python_version:
    description:
      - O(kind=pip) - fetch wheels for this Python version (C(3.11)) rather than the
        interpreter's own, for example that of the training containers. Needs O(only_binary).
    type: str
  platforms:
    description: O(kind=pip) - wheel platform tags to fetch for (C(manylinux2014_x86_64)). Needs O(only_binary).
    type: list
    elements: str
  index_url:
    description:
      - O(kind=pip) - package index URL; O(kind=npm) - registry URL.
      - May carry credentials (C(https://user:password@host/simple)). The URL never goes on a command
        line (C(/proc/<pid>/cmdline) is world-readable). pip gets it as C(PIP_INDEX_URL), npm as
        C(npm_config_registry), in the environment of the tool's process, readable only by the user
        running it and root. Its credentials are masked in everything the module returns.
    type: str
  cache_dir:
    description:
      - O(kind=pip) - pip cache directory (C(PIP_CACHE_DIR)) the download goes through, so that pip's
        HTTP cache (C(http-v2)) keeps the responses and users installing the same files from the same
        index get them from there. pip prefers the index's file to the same file in the wheelhouse,
        so the wheelhouse alone serves only what the index does not offer (offline, another platform).
      - Responses are kept only when the index allows it (C(Cache-Control)) and is https or a trusted
        host; C(mlinfra.shared_cache.cache_doctor) says when nothing is kept.
      - Unset, the download uses no cache (C(--no-cache-dir)).
    type: path
  dependencies:
    description:
      - O(kind=apt) - also fetch the packages that installing O(name) on this host would pull in.
      - O(kind=pip) - also fetch the requirement's dependencies.
    type: bool
    default: true
seealso:
  - module: mlinfra.shared_cache.cache_dir
"""

EXAMPLES = r"""
- name: Pre-load a pinned model's weights and configs into the shared hub cache
  become: true
  become_user: cache-prefetch
  mlinfra.shared_cache.cache_prefetch:
    kind: huggingface
    name: google-bert/bert-base-uncased
    revision: 86b5e0934494bd15c9632b12f734a8a67f723594
    allow_patterns: ["*.json", "*.safetensors", "*.txt"]
    dest: /mnt/storage/cache/ml-models/huggingface/hub
    python: /opt/mlinfra/prefetch/bin/python

- name: Wheels for the containers' Python into the wheelhouse (and pip's shared HTTP cache)
  mlinfra.shared_cache.cache_prefetch:
    kind: pip
    name: numpy==2.1.3
    dest: /mnt/storage/cache/pip/wheelhouse
    cache_dir: /mnt/storage/cache/pip
    executable: /opt/mlinfra/prefetch/bin/python
    python_version: "3.11"
    platforms: [manylinux2014_x86_64]

- name: A .deb into the APT cache (download only)
  mlinfra.shared_cache.cache_prefetch:
    kind: apt
    name: ffmpeg
    dest: /mnt/storage/cache/apt/archives

- name: An npm package into the npm cache
  mlinfra.shared_cache.cache_prefetch:
    kind: npm
    name: typescript@5.6.3
    dest: /mnt/storage/cache/npm
"""

RETURN = r"""
fetched:
  description:
    - Files (or npm cache keys) that were downloaded, or would be in check mode.
    - O(kind=huggingface) - files placed into the commit's snapshot; a file whose blob another
      commit already brought is linked, not downloaded again.
  returned: always
  type: list
  elements: str
  sample: [config.json, model.safetensors]
cached:
  description: Files (or npm cache keys) that were already in the cache.
  returned: always
  type: list
  elements: str
commit:
  description: O(kind=huggingface) - the commit the revision resolved to.
  returned: when O(kind=huggingface)
  type: str
  sample: 86b5e0934494bd15c9632b12f734a8a67f723594
path:
  description: O(kind=huggingface) - snapshot directory of the commit in the hub cache.
  returned: when O(kind=huggingface)
  type: str
restored:
  description: O(kind=huggingface) with O(curated) - blobs found corrupt (content not matching the name) and replaced.
  returned: when O(curated)
  type: list
  elements: str
permissions_fixed:
  description: Number of files and directories this run created privately that were given group read/write.
  returned: always
  type: int
"""

import errno
import grp
import hashlib
import json
import os
import pwd
import re
import stat
import sys
import tempfile
import time
from urllib.parse import unquote, urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.respawn import has_respawned, probe_interpreters_for_module, respawn_module

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    Walker,
    open_dir_nofollow,
    open_member_file,
    read_member_file,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError, parse_mode
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._publish import (
    PublishError,
    plan,
    publish,
    ref_for,
)

UMASK = 0o002
_NOFOLLOW_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class PrefetchError(Exception):
    """Something the admin must fix (message says what); nothing was changed."""


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text):
    """``scheme://user:password@host`` -> ``scheme://****@host`` everywhere in ``text``."""
    return _USERINFO.sub(r"\g<scheme>****@", text or "")


def url_secrets(url):
    """The parts of a URL's userinfo to mask in the module's output (password, or a lone token)."""
    if not url:
        return []
    parts = urlsplit(url)
    if parts.password:
        return [parts.password, "%s:%s" % (parts.username or "", parts.password)]
    if parts.username:
        return [parts.username]  # a token given as the user name (__token__-less indexes)
    return []


def _who():
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return "uid %d" % os.geteuid()


def _owner_mode(path):
    """``drwx------ root:root`` for a message."""
    try:
        st = os.stat(path)
    except OSError:
        return "unreadable"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return "%s %s:%s" % (stat.filemode(st.st_mode), owner, group)


def exec_problem(path):
    """Why this process cannot run the program ``path``, or None when it can.

    Walks the path the way exec does (symlinks followed, each directory searched as this user) and
    names the first step that fails: a directory the user cannot enter (a virtualenv whose Python
    lives in an admin's pyenv under /root), a missing file, a file without execute permission.
    """
    parts = os.path.abspath(path).split("/")[1:]
    cur = "/"
    links = 0
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            cur = os.path.dirname(cur)
            continue
        if not os.access(cur, os.X_OK):
            return "permission denied: %s cannot enter %s (%s)" % (_who(), cur, _owner_mode(cur))
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            return "%s does not exist" % nxt
        except OSError as exc:
            return "%s: %s" % (nxt, exc.strerror)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                return "%s: too many levels of symbolic links" % path
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = "/"
            parts = target.split("/") + parts
            continue
        cur = nxt
    if not os.access(cur, os.X_OK):
        return "permission denied: %s cannot execute %s (%s)" % (_who(), cur, _owner_mode(cur))
    return None


def check_program(path, what):
    """Raise PrefetchError naming the cause when this user cannot run ``path``."""
    problem = exec_problem(path)
    if problem:
        raise PrefetchError(
            "cannot run %s %s as %s: %s%s"
            % (
                what,
                path,
                _who(),
                problem,
                "; a virtualenv must be built from a Python every user can run (the system's"
                " /usr/bin/python3): remove it and rerun (the cache_prefetch role rebuilds it)"
                if "python" in what
                else "",
            )
        )


def run_tool(module, cmd, what, **kwargs):
    """module.run_command, with a failure to start the program (EACCES = 13, ENOENT) named."""
    try:
        return module.run_command(cmd, handle_exceptions=False, **kwargs)
    except OSError as exc:
        cause = exec_problem(cmd[0]) or "%s (%s)" % (exc.strerror, errno.errorcode.get(exc.errno, exc.errno))
        raise PrefetchError("cannot start %s (%s) as %s: %s" % (what, cmd[0], _who(), cause)) from None


def ensure_dir(path, mode):
    """mkdir -p with ``mode`` for what is created; returns the directories created."""
    created = []
    missing = []
    cur = path
    while not os.path.isdir(cur):
        if os.path.lexists(cur):
            raise PrefetchError("%s exists and is not a directory" % cur)
        missing.append(cur)
        cur = os.path.dirname(cur)
    for d in reversed(missing):
        os.mkdir(d, 0o700)
        os.chmod(d, mode)
        created.append(d)
    return created


def make_group_shared(root, since):
    """Give the group rw (dirs: rwx) on entries below ``root`` owned by us, changed after ``since``,
    whose group bits are missing. Never follows a symlink; returns how many were changed."""
    if not os.path.isdir(root):
        return 0
    uid = os.geteuid()
    fixed = 0
    fd = open_dir_nofollow(root)
    try:
        for d in Walker(fd).walk():
            for name, st in [("", d.st)] + list(d.entries):
                if st.st_uid != uid or st.st_ctime < since:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    want = 0o070
                elif stat.S_ISREG(st.st_mode):
                    want = 0o060
                else:
                    continue
                if st.st_mode & want == want:
                    continue
                if name == "":
                    os.fchmod(d.fd, stat.S_IMODE(st.st_mode) | want)
                    fixed += 1
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue  # fixed when the walk enters it (its own descriptor)
                try:
                    ffd = os.open(name, _NOFOLLOW_FILE, dir_fd=d.fd)
                except OSError:
                    continue
                try:
                    fst = os.fstat(ffd)
                    if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino) and stat.S_ISREG(fst.st_mode):
                        os.fchmod(ffd, stat.S_IMODE(fst.st_mode) | want)
                        fixed += 1
                finally:
                    os.close(ffd)
    finally:
        os.close(fd)
    return fixed


# --------------------------------------------------------------------------- huggingface


def hf_prefetch(module, p):
    if p["curated"]:
        return hf_publish(module, p)
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:
        raise PrefetchError(
            "huggingface_hub is not importable by %s%s; install it there or give python="
            % (
                sys.executable,
                " nor by %s" % p["python"] if p["python"] else "",
            )
        ) from None
    endpoint = p["endpoint"] or os.environ.get("HF_ENDPOINT") or None
    common = dict(repo_type=p["repo_type"], token=p["token"] or None)
    api = HfApi(endpoint=endpoint, token=p["token"] or None)
    info = api.repo_info(p["name"], repo_type=p["repo_type"], revision=p["revision"])
    commit = info.sha
    storage = os.path.join(p["dest"], repo_folder_name(repo_id=p["name"], repo_type=p["repo_type"]))
    patterns = dict(allow_patterns=p["allow_patterns"], ignore_patterns=p["ignore_patterns"])
    plan = []
    if os.path.isdir(storage):
        try:
            plan = snapshot_download(
                p["name"], revision=commit, cache_dir=p["dest"], endpoint=endpoint, dry_run=True, **common, **patterns
            )
        except TypeError:
            raise PrefetchError("huggingface_hub %s has no dry_run; use >= 1.0" % _hf_version()) from None
        # a blob may be cached while this commit's snapshot lacks its link: that is missing too
        need = sorted(f.filename for f in plan if f.will_download or not os.path.lexists(f.local_path))
    else:
        need = None  # nothing of this repository is cached: everything the patterns select
    ref_stale = False
    if p["revision"] != commit:
        ref = os.path.join(storage, "refs", p["revision"])
        try:
            # a ref is a commit hash any member may have written: no link, no FIFO, 256 bytes at most
            rfd = open_dir_nofollow(os.path.dirname(ref))
            try:
                ref_stale = read_member_file(rfd, os.path.basename(ref), 256).decode("ascii").strip() != commit
            finally:
                os.close(rfd)
        except (OSError, UnicodeDecodeError):
            ref_stale = True
    cached = sorted(f.filename for f in plan if not f.will_download and os.path.lexists(f.local_path))
    result = dict(commit=commit, path=os.path.join(storage, "snapshots", commit), cached=cached)
    if need == [] and not ref_stale:
        return False, dict(result, fetched=[])
    if module.check_mode:
        if need is None:
            need = sorted(
                _hf_filter([s.rfilename for s in info.siblings or []], p["allow_patterns"], p["ignore_patterns"])
            )
        return True, dict(result, fetched=need)
    path = snapshot_download(
        p["name"], revision=p["revision"], cache_dir=p["dest"], endpoint=endpoint, **common, **patterns
    )
    after = snapshot_download(
        p["name"], revision=commit, cache_dir=p["dest"], endpoint=endpoint, dry_run=True, **common, **patterns
    )
    fetched = sorted(set(f.filename for f in after) - set(cached))
    return True, dict(result, fetched=fetched, path=path, storage=storage)


def hf_publish(module, p):
    """A curated hub cache: stage, verify, publish by rename (module_utils/_publish.py)."""
    os.environ["HF_HUB_DISABLE_SHARED_BLOBS"] = "1"  # every published blob a regular file
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.file_download import repo_folder_name

    constants.HF_HUB_DISABLE_SHARED_BLOBS = True
    endpoint = p["endpoint"] or os.environ.get("HF_ENDPOINT") or None
    common = dict(repo_type=p["repo_type"], token=p["token"] or None, endpoint=endpoint)
    patterns = dict(allow_patterns=p["allow_patterns"], ignore_patterns=p["ignore_patterns"])
    info = HfApi(endpoint=endpoint, token=p["token"] or None).repo_info(
        p["name"], repo_type=p["repo_type"], revision=p["revision"]
    )
    commit, ref = info.sha, ref_for(p["revision"])
    folder = repo_folder_name(repo_id=p["name"], repo_type=p["repo_type"])
    repo = os.path.join(p["dest"], folder)
    files = list(_hf_filter([s.rfilename for s in info.siblings or []], p["allow_patterns"], p["ignore_patterns"]))
    state = plan(repo, commit, ref, dict.fromkeys(files))
    result = dict(
        commit=commit,
        path=os.path.join(repo, "snapshots", commit),
        cached=sorted(set(files) - set(state["missing"])),
        fetched=state["missing"],
        restored=state["corrupt"],
    )
    if not (state["missing"] or state["corrupt"] or state["ref_stale"]) or module.check_mode:
        return bool(state["missing"] or state["corrupt"] or state["ref_stale"]), result

    def fetch(staged_hub):
        snapshot_download(p["name"], revision=commit, cache_dir=staged_hub, **common, **patterns)

    try:
        out = publish(p["dest"], folder, commit, ref, fetch, os.path.join(os.path.dirname(p["dest"]), ".staging"))
    except PublishError as exc:
        raise PrefetchError("huggingface %s@%s: %s; nothing was published" % (p["name"], commit, exc)) from None
    return out["changed"], dict(result, restored=out["restored"], storage=repo)


def _hf_filter(files, allow, ignore):
    from huggingface_hub.utils import filter_repo_objects

    return filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore)


def _hf_version():
    import huggingface_hub

    return huggingface_hub.__version__


# --------------------------------------------------------------------------- pip


def _pip_options(p):
    opts = []
    if p["only_binary"]:
        opts.append("--only-binary=:all:")
    if p["python_version"]:
        opts += ["--python-version", p["python_version"]]
    for plat in p["platforms"] or []:
        opts += ["--platform", plat]
    if not p["dependencies"]:
        opts.append("--no-deps")
    return opts


def tool_env(p, var):
    """The index URL for the tool's process environment (never argv), or None."""
    return {var: p["index_url"]} if p["index_url"] else None


def pip_prefetch(module, p):
    python = p["executable"] or sys.executable
    check_program(python, "the python of executable=")
    base = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    env = tool_env(p, "PIP_INDEX_URL")
    # through the shared HTTP cache (both steps: the resolution downloads a wheel to read its metadata
    # when the index has none apart), or none at all
    cache = ["--cache-dir", p["cache_dir"]] if p["cache_dir"] else ["--no-cache-dir"]
    with tempfile.TemporaryDirectory(prefix="cache-prefetch-") as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = base + ["install", "--dry-run", "--ignore-installed", "--quiet"] + cache + ["--report", report]
        if p["python_version"] or p["platforms"]:
            cmd += ["--target", os.path.join(tmp, "target")]
        cmd += _pip_options(p) + ["--", p["name"]]
        rc, out, err = run_tool(module, cmd, "pip", cwd=tmp, environ_update=env)
        if rc != 0:
            raise PrefetchError("pip could not resolve %s: %s" % (p["name"], redact((err or out).strip()[-2000:])))
        with open(report, encoding="utf-8") as f:
            items = json.load(f).get("install", [])
    wanted = sorted(os.path.basename(unquote(urlsplit(i["download_info"]["url"]).path)) for i in items)
    present = set(os.listdir(p["dest"])) if os.path.isdir(p["dest"]) else set()
    missing = [w for w in wanted if w not in present]
    cached = [w for w in wanted if w in present]
    if not missing:
        return False, dict(fetched=[], cached=cached, files=wanted)
    if module.check_mode:
        return True, dict(fetched=missing, cached=cached, files=wanted)
    cmd = base + ["download"] + cache + ["--dest", p["dest"]] + _pip_options(p) + ["--", p["name"]]
    rc, out, err = run_tool(module, cmd, "pip", cwd=p["dest"], environ_update=env)
    if rc != 0:
        raise PrefetchError("pip download %s failed: %s" % (p["name"], redact((err or out).strip()[-2000:])))
    present = set(os.listdir(p["dest"]))
    still = [w for w in missing if w not in present]
    if still:
        module.warn("pip download did not produce %s (resolution differs between install and download)" % still)
    return True, dict(fetched=[w for w in missing if w in present], cached=cached, files=wanted)


# --------------------------------------------------------------------------- apt


def apt_prefetch(module, p):
    import apt
    import apt.progress.base

    name, _sep, version = p["name"].partition("=")
    cache = apt.Cache()
    if name not in cache:
        raise PrefetchError("no package %s in the APT lists (run apt-get update?)" % name)
    pkg = cache[name]
    if version:
        ver = pkg.versions.get(version)
        if ver is None:
            raise PrefetchError("%s has no version %s; known: %s" % (name, version, [v.version for v in pkg.versions]))
    else:
        ver = pkg.candidate
        if ver is None:
            raise PrefetchError("%s has no installable candidate" % name)
    versions = [ver]
    if p["dependencies"]:
        pkg.candidate = ver
        pkg.mark_install(auto_fix=True, from_user=True)
        if cache.broken_count:
            raise PrefetchError("installing %s would break dependencies on this host" % p["name"])
        versions = [c.candidate for c in cache.get_changes() if c.marked_install or c.marked_upgrade] or [ver]
    fetched, cached = [], []
    for v in sorted(versions, key=lambda v: v.package.name):
        fname = os.path.basename(v.filename)
        target = os.path.join(p["dest"], fname)
        if _deb_is_same(target, v):
            cached.append(fname)
            continue
        fetched.append(fname)
        if not module.check_mode:
            # a silent progress: the default one prints to stdout, where the module's JSON goes
            v.fetch_binary(p["dest"], progress=apt.progress.base.AcquireProgress())
    return bool(fetched), dict(fetched=fetched, cached=cached)


def _deb_is_same(path, version):
    """The .deb at ``path`` is the archive the index describes (size, then SHA256)."""
    try:
        dfd = open_dir_nofollow(os.path.dirname(path))
        try:
            fd, st = open_member_file(dfd, os.path.basename(path), version.size)
        finally:
            os.close(dfd)
    except OSError:
        return False  # not a regular file (a link, a FIFO), larger than the index says, or gone
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        if st.st_size != version.size:
            return False
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == version.sha256


# --------------------------------------------------------------------------- npm


def npm_prefetch(module, p):
    npm = p["executable"] or module.get_bin_path("npm", required=True)
    with tempfile.TemporaryDirectory(prefix="cache-prefetch-npm-") as tmp:
        opts = ["--cache", p["dest"], "--logs-dir", tmp, "--logs-max", "0", "--update-notifier=false"]
        env = tool_env(p, "npm_config_registry")
        keys = _npm_tarballs(module, npm, opts, p["name"], tmp, env) if os.path.isdir(p["dest"]) else []
        if keys:
            return False, dict(fetched=[], cached=keys)
        if module.check_mode:
            return True, dict(fetched=[p["name"]], cached=[])
        rc, out, err = run_tool(module, [npm, "cache", "add", p["name"]] + opts, "npm", cwd=tmp, environ_update=env)
        if rc != 0:
            raise PrefetchError("npm cache add %s failed: %s" % (p["name"], redact((err or out).strip()[-2000:])))
        return True, dict(fetched=_npm_tarballs(module, npm, opts, p["name"], tmp, env) or [p["name"]], cached=[])


def _npm_tarballs(module, npm, opts, spec, cwd, env):
    rc, out, err = run_tool(module, [npm, "cache", "ls", spec] + opts, "npm", cwd=cwd, environ_update=env)
    if rc != 0:
        raise PrefetchError("npm cache ls %s failed: %s" % (spec, redact((err or out).strip()[-2000:])))
    return sorted(line.strip() for line in out.splitlines() if "/-/" in line and line.strip().endswith(".tgz"))


# --------------------------------------------------------------------------- main

KINDS = {"huggingface": hf_prefetch, "pip": pip_prefetch, "apt": apt_prefetch, "npm": npm_prefetch}


def _respawn_for(module, p):
    """Re-run under an interpreter that has the library this kind needs (like ansible.builtin.apt)."""
    lib = {"huggingface": "huggingface_hub", "apt": "apt"}.get(p["kind"])
    if lib is None:
        return
    try:
        __import__(lib)
        return
    except ImportError:
        pass
    if has_respawned():
        return
    if p["kind"] == "huggingface" and p["python"]:
        try:
            check_program(p["python"], "the python of python=")
        except PrefetchError as exc:
            module.fail_json(msg=str(exc))
    candidates = [p["python"]] if p["kind"] == "huggingface" and p["python"] else []
    if p["kind"] == "apt":
        candidates = ["/usr/bin/python3", "/usr/bin/python"]
    interpreter = probe_interpreters_for_module(candidates, lib) if candidates else None
    if interpreter:
        respawn_module(interpreter)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kind=dict(type="str", required=True, choices=list(KINDS)),
            name=dict(type="str", required=True),
            dest=dict(type="path", required=True),
            dir_mode=dict(type="str", default="2775"),
            revision=dict(type="str", default="main"),
            repo_type=dict(type="str", default="model", choices=["model", "dataset"]),
            allow_patterns=dict(type="list", elements="str"),
            ignore_patterns=dict(type="list", elements="str"),
            endpoint=dict(type="str"),
            token=dict(type="str", no_log=True),
            curated=dict(type="bool", default=False),
            python=dict(type="path"),
            executable=dict(type="path"),
            only_binary=dict(type="bool", default=True),
            python_version=dict(type="str"),
            platforms=dict(type="list", elements="str"),
            index_url=dict(type="str"),
            dependencies=dict(type="bool", default=True),
            cache_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    for secret in url_secrets(p["index_url"]):
        module.no_log_values.add(secret)  # masked in the invocation, messages and results
    if not p["name"].strip() or p["name"].startswith("-"):
        module.fail_json(msg="name must be a %s item, not %r" % (p["kind"], p["name"]))
    if not os.path.isabs(p["dest"]):
        module.fail_json(msg="dest must be an absolute path, got %r" % p["dest"])
    if p["cache_dir"] and not os.path.isabs(p["cache_dir"]):
        module.fail_json(msg="cache_dir must be an absolute path, got %r" % p["cache_dir"])
    try:
        dir_mode = parse_mode(p["dir_mode"], "dir_mode")
    except ParamError as exc:
        module.fail_json(msg=str(exc))
    if (p["python_version"] or p["platforms"]) and not p["only_binary"]:
        module.fail_json(msg="python_version and platforms need only_binary=true (pip cannot build for another target)")
    if dir_mode & 0o002:
        module.fail_json(msg="dir_mode %s would make the cache world-writable" % p["dir_mode"])
    _respawn_for(module, p)
    os.umask(UMASK)
    # the tools run as the service account with their own interpreter: never with the controller's
    # Python search path (a local connection passes the admin's PYTHONPATH, e.g. below root's 0700
    # home, which the account cannot read and which would change what its pip imports)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        os.environ.pop(var, None)
    started = time.time() - 1
    created = []
    try:
        if not module.check_mode:
            created = ensure_dir(p["dest"], dir_mode)
        changed, result = KINDS[p["kind"]](module, p)
        fixed = 0
        if changed and not module.check_mode:
            fixed = make_group_shared(result.pop("storage", p["dest"]), started)
        result.pop("storage", None)
    except PrefetchError as exc:
        module.fail_json(msg=str(exc), created=created)
    except Exception as exc:  # the tool's own errors (network, 404, ...) with the item named
        msg = "%s %s: %s: %s" % (p["kind"], p["name"], type(exc).__name__, redact(str(exc)))
        module.fail_json(msg=msg, created=created)
    before = "".join(line + "\n" for line in result["cached"])
    after = "".join(line + "\n" for line in sorted(result["cached"] + result["fetched"]))
    module.exit_json(
        changed=changed or bool(created),
        permissions_fixed=fixed,
        created=created,
        diff=dict(before=before, after=after, before_header=p["dest"], after_header=p["dest"]),
        **result,
    )


if __name__ == "__main__":
    main()
