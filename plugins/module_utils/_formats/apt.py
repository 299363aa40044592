# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""apt cache: unit = archives/*.deb and stale archives/partial files; never the lock."""

from __future__ import annotations

import os
import stat

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._formats._base import Collector, Format, names


class _AptCollector(Collector):
    def entry(self, parts, name, st, d):
        off = 1 if parts[0] == "archives" else -1
        if off < 0 or len(parts) <= off:
            self.other(st)
            return
        if len(parts) == off + 1 and name.endswith(".deb") and stat.S_ISREG(st.st_mode):
            self.add(name, "deb", parts, st)
        elif len(parts) == off + 2 and parts[off] == "partial" and stat.S_ISREG(st.st_mode):
            self.add("partial/" + name, "partial download", parts, st)
        else:
            self.other(st)  # lock, pkgcache.bin, ...


class AptFormat(Format):
    name = "apt"
    description = "apt cache: unit = archives/*.deb and stale archives/partial files; never the lock"
    tool_locks = ((("archives", "lock"), "fcntl"),)
    collector_class = _AptCollector
    detect_order = 30

    def detect(self, root_fd, top):
        return "archives" in top and bool(names(root_fd, "archives") & {"lock", "partial"})


# -- cache_verify ---------------------------------------------------------------------------
APT_LISTS = "/var/lib/apt/lists"
APT_HELPER = "/usr/lib/apt/apt-helper"
APT_LIST_SECONDS = 300


def _deb_key(name):
    """'netbase_6.4_all.deb' -> ('netbase', '6.4', 'all'); apt quotes the epoch's ':' as '%3a'."""
    from urllib.parse import unquote

    fields = name[: -len(".deb")].split("_")
    if len(fields) != 3:
        return None
    return tuple(unquote(f) for f in fields)


def apt_list_digests(wanted, lists_dir=APT_LISTS):
    """{(package, version, arch): set(sha256)} of ``wanted`` keys from the host's package lists.

    Lists are root's (``/var/lib/apt/lists``, written by apt-get update); compressed ones (apt's
    ``GzipIndexes``: lz4, gz, xz, zst) are read through apt's own ``apt-helper cat-file``."""
    import subprocess

    found = {}
    try:
        names_ = sorted(n for n in os.listdir(lists_dir) if "_Packages" in n)
    except OSError:
        return found
    for name in names_:
        path = os.path.join(lists_dir, name)
        if name.endswith("_Packages"):
            cmd = None
        elif os.path.exists(APT_HELPER):
            cmd = [APT_HELPER, "cat-file", path]
        else:
            continue
        try:
            if cmd is None:
                fh = open(path, "rb")  # noqa: SIM115 - root's own list, closed below
                proc = None
            else:
                # streamed line by line (lists are large); also run by the nightly host command,
                # which has no AnsibleModule for run_command
                proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"LC_ALL": "C"}
                )
                fh = proc.stdout
        except OSError:
            continue
        try:
            _scan_list(fh, wanted, found)
        finally:
            fh.close()
            if proc is not None:
                try:
                    proc.wait(APT_LIST_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return found


def _scan_list(fh, wanted, found):
    pkg = ver = arch = sha = None
    for line in fh:
        if line == b"\n":
            if pkg is not None and sha is not None and (pkg, ver, arch) in wanted:
                found.setdefault((pkg, ver, arch), set()).add(sha)
            pkg = ver = arch = sha = None
        elif line.startswith(b"Package: "):
            pkg = line[9:].strip().decode("utf-8", "replace")
        elif line.startswith(b"Version: "):
            ver = line[9:].strip().decode("utf-8", "replace")
        elif line.startswith(b"Architecture: "):
            arch = line[14:].strip().decode("utf-8", "replace")
        elif line.startswith(b"SHA256: "):
            sha = line[8:].strip().decode("ascii", "replace").lower()
    if pkg is not None and sha is not None and (pkg, ver, arch) in wanted:
        found.setdefault((pkg, ver, arch), set()).add(sha)


def verify(ctx):
    """``archives/*.deb`` against the ``SHA256`` the host's package lists give for that package,
    version and architecture (what apt itself checked at download); a .deb the lists no longer
    name gets dpkg-deb's structural check (both members unpack: their compressors' checksums),
    counted under its own method. Partial downloads and apt's own files are unverifiable."""
    debs = []
    for _d, parts, st in ctx.files():
        if len(parts) == 2 and parts[0] == "archives" and parts[1].endswith(".deb") and _deb_key(parts[1]):
            debs.append((parts, st))
        else:
            ctx.unverifiable(parts, st)
    digests = apt_list_digests({_deb_key(p[-1]) for p, _st in debs}, ctx.options.get("apt_lists") or APT_LISTS)
    for parts, st in debs:
        sums = digests.get(_deb_key(parts[-1]))
        if sums:
            ctx.check(parts, st, "digest", "sha256:" + "|".join(sorted(sums)), "sha256 (host package lists)")
        else:
            ctx.check(parts, st, "deb", "dpkg-deb structure", "dpkg-deb structural (not in the host's lists)")


AptFormat.verifier = staticmethod(verify)
