"""Run the "alice downloads, bob gets it from the cache" proof in the running workspace containers.

For each user in order (the first is alice), in the container ``workspace-<user>``:
  1. as root: ``apt-get update`` (package lists are per container, not timed), then the timed
     ``apt-get install`` of the APT packages through the shared /var/cache/apt;
  2. as the user, in a login shell (the image's /etc/profile.d sets umask 002 for the cache group):
     a venv, pip bootstrapped to a version that writes group-usable cache files (``--no-cache-dir``,
     not timed), then the timed ``pip install`` of the pip packages through the shared pip cache;
  3. as the user: uv (``--uv-bootstrap``, installed into that venv with ``--no-cache-dir``, not
     timed), then the timed ``uv pip install -v`` of the uv packages into a fresh environment
     through the shared uv cache (UV_CACHE_DIR from the environment the roles set). What uv
     fetched is read from its own log: the files it GETs (``Sending fresh GET request``) and the
     packages it found in the cache (``Registry requirement already cached``).
The bytes received by the container's network interface are read around each timed step.
Then bob, in his container, must be able to modify every file alice left in the shared pip cache.
The shared pip cache (but its managed ``wheelhouse``), the uv cache and the APT archive are emptied first.

The network of the test machines reaches Debian's and PyPI's files at about 2 Gbit/s (a nearby
caching proxy), 20-40 times the links the seed's figures assume (2 GB of wheels in 3-5 min,
about 55-90 Mbit/s). With ``--link-rates 100mbit 50mbit`` the same proof is run again, from
empty caches, with each container's downlink limited to that rate (a ``tc`` token bucket on
the host's end of its veth pair) during the timed commands only; those passes are reported under
``links`` with their own checks.

Writes a JSON report (``--out``) and exits 1 when a check failed; the checks are listed in it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time

CHECK_FILES = r"""
import os, sys, tempfile
root, owner = sys.argv[1], int(sys.argv[2])
files = dirs = 0
failed = []
for top, dnames, fnames in os.walk(root):
    for d in dnames:
        p = os.path.join(top, d)
        st = os.lstat(p)
        if st.st_uid != owner:
            continue
        dirs += 1
        try:  # create and remove an entry in a directory the other user made
            fd, tmp = tempfile.mkstemp(dir=p)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            failed.append("%s: %s" % (p, exc))
    for f in fnames:
        p = os.path.join(top, f)
        st = os.lstat(p)
        if st.st_uid != owner or not os.path.isfile(p):
            continue
        files += 1
        try:  # open for writing (a real permission check) and touch it
            with open(p, "r+b"):
                pass
            os.utime(p)
        except OSError as exc:
            failed.append("%s: %s" % (p, exc))
print(json.dumps({"files": files, "dirs": dirs, "failed": failed[:20], "failed_count": len(failed)}))
""".replace("import os, sys, tempfile", "import json, os, sys, tempfile")


def dexec(container, user, script, login=True, check=True):
    cmd = ["docker", "exec", "-u", user, "-e", "DEBIAN_FRONTEND=noninteractive", container]
    cmd += ["bash", "-lc" if login else "-c", script]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    secs = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise SystemExit(
            "%s as %s failed (rc %d): %s\n%s\n%s" % (container, user, proc.returncode, script, proc.stdout, proc.stderr)
        )
    return proc, secs


def host_veth(container):
    """The host's end of the container's eth0 veth pair (its ifindex is eth0's iflink)."""
    proc, _secs = dexec(container, "root", "cat /sys/class/net/eth0/iflink", login=False)
    index = proc.stdout.strip()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    for line in links.splitlines():
        num, name = line.split(": ", 2)[:2]
        if num == index:
            return name.split("@")[0]
    raise SystemExit("no host interface with ifindex %s for %s" % (index, container))


@contextlib.contextmanager
def link_rate(container, rate):
    """Limit what ``container`` receives to ``rate`` (tc syntax, e.g. 100mbit) inside the block."""
    if not rate:
        yield
        return
    dev = host_veth(container)
    tbf = ["tbf", "rate", rate, "burst", "64kb", "latency", "200ms"]
    subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", *tbf], check=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], check=False)


def reset_caches(container, pip_cache, uv_cache):
    """Empty the shared pip cache (its managed wheelhouse directory stays), the uv cache and the
    APT archive."""
    dexec(
        container,
        "root",
        "find %s -mindepth 1 -maxdepth 1 ! -name wheelhouse -exec rm -rf {} + && "
        "find %s -mindepth 1 -maxdepth 1 -exec rm -rf {} + && "
        "find /var/cache/apt/archives -maxdepth 1 -name '*.deb' -delete" % (pip_cache, uv_cache),
        login=False,
    )


def rx_bytes(container):
    proc, _secs = dexec(container, "root", "cat /sys/class/net/eth0/statistics/rx_bytes", login=False)
    return int(proc.stdout.strip())


def installed(container):
    proc, _secs = dexec(container, "root", "dpkg-query -W -f '${binary:Package}\\n'", login=False)
    return set(proc.stdout.split())


def apt_phase(container, packages, rate=None, baseline=None):
    # Every pass starts from the image's packages: what an earlier pass installed is purged.
    if baseline is not None:
        extra = sorted(installed(container) - baseline)
        if extra:
            dexec(container, "root", "apt-get purge -y -qq %s >/dev/null" % " ".join(extra))
    dexec(container, "root", "apt-get update -qq")
    before = rx_bytes(container)
    with link_rate(container, rate):
        proc, secs = dexec(
            container, "root", "apt-get install -y --no-install-recommends " + " ".join(packages) + " 2>&1"
        )
    rx = rx_bytes(container) - before
    need = re.search(r"^Need to get (\S+ \S+?)(?:/| of)", proc.stdout, re.M)
    gets = re.findall(r"^Get:\d+ (\S+) .*?\[(.*?)\]$", proc.stdout, re.M)
    return {
        "seconds": round(secs, 3),
        "rx_bytes": rx,
        "need_to_get": need.group(1) if need else None,
        "get_lines": len(gets),
        "fetched": [line for line in proc.stdout.splitlines() if line.startswith("Get:")],
        "output_tail": proc.stdout.splitlines()[-5:],
    }


def pip_phase(container, user, packages, bootstrap, rate=None):
    dexec(
        container,
        user,
        "rm -rf ~/venv && python3 -m venv ~/venv && ~/venv/bin/pip install -q --no-cache-dir "
        "--disable-pip-version-check '%s'" % bootstrap,
    )
    before = rx_bytes(container)
    with link_rate(container, rate):
        proc, secs = dexec(
            container,
            user,
            "~/venv/bin/pip install --progress-bar off --disable-pip-version-check %s 2>&1" % " ".join(packages),
        )
    rx = rx_bytes(container) - before
    downloading = re.findall(r"^\s*Downloading (\S+)", proc.stdout, re.M)
    cached = re.findall(r"^\s*Using cached (\S+)", proc.stdout, re.M)
    version, _secs = dexec(container, user, "~/venv/bin/pip --version")
    return {
        "seconds": round(secs, 3),
        "rx_bytes": rx,
        "downloading": downloading,
        "using_cached": cached,
        "pip_version": version.stdout.split()[1],
        "output": proc.stdout.splitlines()[-40:],
    }


def uv_phase(container, user, packages, bootstrap, rate=None):
    """uv into the user's venv (pip_phase made it), then the timed ``uv pip install``."""
    dexec(
        container,
        user,
        "~/venv/bin/pip install -q --no-cache-dir --disable-pip-version-check '%s' && "
        "rm -rf ~/uvenv && ~/venv/bin/uv venv -q ~/uvenv --python python3" % bootstrap,
    )
    before = rx_bytes(container)
    with link_rate(container, rate):
        proc, secs = dexec(
            container,
            user,
            # uv trusts its built-in roots unless told to read the system's store (the bundle the
            # scenario mounts, which holds the CA of a TLS-intercepting proxy where there is one)
            "UV_SYSTEM_CERTS=1 ~/venv/bin/uv pip install -v --python ~/uvenv/bin/python %s 2>&1" % " ".join(packages),
        )
    rx = rx_bytes(container) - before
    fetched = re.findall(r"Sending fresh GET request for: (https?://\S+/[^/\s]+\.(?:whl|tar\.gz|zip))", proc.stdout)
    cached = re.findall(r"Registry requirement already cached: (\S+)", proc.stdout)
    cache_dir, _secs = dexec(container, user, 'echo "$UV_CACHE_DIR"')
    return {
        "seconds": round(secs, 3),
        "rx_bytes": rx,
        "fetched": sorted(set(fetched)),
        "already_cached": cached,
        "cache_dir": cache_dir.stdout.strip(),
        "output": [line for line in proc.stdout.splitlines() if not line.startswith("DEBUG")][-20:],
    }


def concurrent_apt(containers, packages):
    """Both containers download the same new packages at the same moment into the shared archives.

    APT holds archives/lock (fcntl, shared through the bind mount) while it downloads; with the
    DPkg::Lock::Timeout the apt_keep_cache role sets, the second run waits and then needs 0 B.
    """
    cmd = "apt-get install -y --download-only --no-install-recommends %s 2>&1" % " ".join(packages)
    procs = [
        subprocess.Popen(
            ["docker", "exec", "-u", "root", c, "bash", "-c", cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in containers
    ]
    runs = []
    for c, p in zip(containers, procs, strict=True):
        out = p.communicate()[0]
        runs.append(
            {
                "container": c,
                "rc": p.returncode,
                "get_lines": len(re.findall(r"^Get:", out, re.M)),
                "lock_error": "Could not get lock" in out,
                "tail": out.splitlines()[-3:],
            }
        )
    check, _secs = dexec(
        containers[0],
        "root",
        'for f in /var/cache/apt/archives/*.deb; do dpkg-deb --info "$f" >/dev/null || echo BROKEN $f; done; '
        "ls /var/cache/apt/archives/partial | wc -l",
        login=False,
    )
    return {
        "runs": runs,
        "broken": [x for x in check.stdout.splitlines() if x.startswith("BROKEN")],
        "partial_left": int(check.stdout.split()[-1]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", nargs=2, default=["alice", "bob"])
    ap.add_argument("--apt", nargs="+", required=True)
    ap.add_argument("--pip", nargs="+", required=True)
    ap.add_argument("--pip-bootstrap", default="pip==25.3")
    ap.add_argument("--pip-cache", default="/cache/pip")
    ap.add_argument("--uv", nargs="*", default=[], help="packages for the uv proof (wheels: see vars/main.yml)")
    ap.add_argument("--uv-bootstrap", default="uv==0.13.9")
    ap.add_argument("--uv-cache", default="/cache/uv")
    ap.add_argument("--apt-concurrent", nargs="+", default=["tree"])
    ap.add_argument("--link-rates", nargs="*", default=[], help="extra passes at these downlink rates (tc syntax)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    report = {"users": args.users, "apt_packages": args.apt, "pip_packages": args.pip, "uv_packages": args.uv}
    baselines = {user: installed("workspace-" + user) for user in args.users}
    report.update(measure(args, None, baselines))
    alice, bob = args.users
    uid, _secs = dexec("workspace-" + bob, "root", "id -u " + alice, login=False)
    # The walker script arrives on stdin.
    proc = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            "-u",
            bob,
            "workspace-" + bob,
            "bash",
            "-lc",
            "python3 - %s %s" % (args.pip_cache, uid.stdout.strip()),
        ],
        input=CHECK_FILES,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit("modify check failed: %s" % proc.stderr)
    report["bob_modifies_alice"] = json.loads(proc.stdout)

    report["concurrent_apt"] = conc = concurrent_apt(["workspace-" + u for u in args.users], args.apt_concurrent)

    checks = report["checks"]
    checks["bob can modify every file alice left"] = (
        report["bob_modifies_alice"]["failed_count"] == 0 and report["bob_modifies_alice"]["files"] > 0
    )
    checks["concurrent apt runs both succeed, one download"] = (
        all(r["rc"] == 0 for r in conc["runs"])
        and sum(r["get_lines"] for r in conc["runs"]) == len(args.apt_concurrent)
        and not conc["broken"]
        and conc["partial_left"] == 0
    )
    report["links"] = []
    for rate in args.link_rates:
        shaped = measure(args, rate, baselines)
        report["links"].append(shaped)
        for name, ok in shaped["checks"].items():
            checks["at %s: %s" % (rate, name)] = ok
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2, sort_keys=True)
        fh.write("\n")
    for name, ok in checks.items():
        print("%-60s %s" % (name, "ok" if ok else "FAILED"))
    for run in [report] + report["links"]:
        a, b = run[alice], run[bob]
        print(
            "%s: alice %.2fs (apt %.2fs, pip %.2fs, %d bytes) / bob %.2fs (apt %.2fs, pip %.2fs, %d bytes): %sx"
            % (
                run["link_rate"] or "unlimited link",
                a["seconds"],
                a["apt"]["seconds"],
                a["pip"]["seconds"],
                a["rx_bytes"],
                b["seconds"],
                b["apt"]["seconds"],
                b["pip"]["seconds"],
                b["rx_bytes"],
                run["ratio"],
            )
        )
        if "uv" in a:
            print(
                "  uv: alice %.2fs (%d files fetched) / bob %.2fs (%d fetched, %d found in the cache): %sx"
                % (
                    a["uv"]["seconds"],
                    len(a["uv"]["fetched"]),
                    b["uv"]["seconds"],
                    len(b["uv"]["fetched"]),
                    len(b["uv"]["already_cached"]),
                    run["uv_ratio"],
                )
            )
    return 0 if all(checks.values()) else 1


def measure(args, rate, baselines):
    """One pass from empty caches: alice's and bob's apt and pip phases, their checks and ratios."""
    alice, bob = args.users
    reset_caches("workspace-" + alice, args.pip_cache, args.uv_cache)
    run = {"link_rate": rate}
    for user in args.users:
        container = "workspace-" + user
        run[user] = {"apt": apt_phase(container, args.apt, rate, baselines[user])}
        run[user]["pip"] = pip_phase(container, user, args.pip, args.pip_bootstrap, rate)
        if args.uv:
            run[user]["uv"] = uv_phase(container, user, args.uv, args.uv_bootstrap, rate)
        run[user]["seconds"] = round(run[user]["apt"]["seconds"] + run[user]["pip"]["seconds"], 3)
        run[user]["rx_bytes"] = run[user]["apt"]["rx_bytes"] + run[user]["pip"]["rx_bytes"]
    a, b = run[alice], run[bob]
    a_files = {f.rsplit("/", 1)[-1] for f in a["pip"]["downloading"]}
    b_again = sorted(f for f in (x.rsplit("/", 1)[-1] for x in b["pip"]["downloading"]) if f in a_files)
    run["checks"] = {
        "alice's apt downloaded packages": a["apt"]["get_lines"] > 0,
        "bob's apt needed 0 B": (b["apt"]["need_to_get"] or "").startswith("0 B") and b["apt"]["get_lines"] == 0,
        "alice's pip downloaded the packages": len(a["pip"]["downloading"]) >= len(args.pip),
        "bob's pip downloaded nothing alice fetched": not b_again,
        "bob's pip used the cache for every package": len(b["pip"]["using_cached"]) >= len(args.pip),
        "pip writes group-usable cache files (>= 25.0)": int(b["pip"]["pip_version"].split(".")[0]) >= 25,
    }
    run["redownloaded_by_bob"] = b_again
    if args.uv:
        a_uv, b_uv = set(a["uv"]["fetched"]), set(b["uv"]["fetched"])
        run["uv_redownloaded_by_bob"] = sorted(a_uv & b_uv)
        run["checks"].update(
            {
                "uv uses the shared cache (UV_CACHE_DIR)": a["uv"]["cache_dir"]
                == b["uv"]["cache_dir"]
                == args.uv_cache,
                "alice's uv downloaded the packages": len(a_uv) >= len(args.uv),
                "bob's uv downloaded nothing alice fetched": not a_uv & b_uv,
                "bob's uv found every package in the cache": len(set(b["uv"]["already_cached"])) >= len(args.uv),
            }
        )
        run["uv_ratio"] = round(a["uv"]["seconds"] / b["uv"]["seconds"], 2) if b["uv"]["seconds"] else None
    run["ratio"] = round(a["seconds"] / b["seconds"], 2) if b["seconds"] else None
    run["pip_ratio"] = round(a["pip"]["seconds"] / b["pip"]["seconds"], 2) if b["pip"]["seconds"] else None
    run["apt_ratio"] = round(a["apt"]["seconds"] / b["apt"]["seconds"], 2) if b["apt"]["seconds"] else None
    return run


if __name__ == "__main__":
    sys.exit(main())
