# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root's host commands: ``mlinfra-cache-prune`` (``prune_main``) and ``show-cache-info`` (``report_main``).

The nightly ``mlinfra-cache-prune`` also verifies each cache's content (``_verify``, incremental;
``verify`` in its configuration) between the prune and the permission fix-up, and merges the
counts into the verify summary the report and the doctor read.

The installed commands are thin wrappers (roles cache_prune and cache_report) that put the
host_lib copy of the collection on ``sys.path`` and call ``sys.exit(prune_main(CONFIG))``; all
the logic is here, linted and tested, and runs the same checks as the modules (``_jobs``).

Against members of the cache group (untrusted local users):
- the configuration is read only from a file that root owns and nobody else can write, reached
  through directories nobody else can rename things in (``read_trusted_json``);
- the nightly prune holds a ``flock`` on a lock file that root owns, mode 0600, in a root-only
  directory (``hold_lock``): a member can neither open it nor hold it, so two runs never overlap
  and no member can stop the job;
- report files naming the caches are written atomically in root-owned directories, 0640
  ``root:<cache group>`` when a cache is private to its group (``report_file_access``), by
  ``_render.write_outputs``, the one writer the cache_report module uses too;
- the prune records per cache when it ran and what it freed in ``state.json`` beside its lock
  (root-only directory, written atomically), which the report reads with ``read_trusted_json``.

Progress (caches done of all, bytes) goes to stderr only when stderr is a terminal: under cron
or systemd nothing is added to the output or the journal.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import stat
import sys
import time

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import (
    _jobs,
    _perms,
    _prune,
    _render,
    _usage,
    _verify,
)
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._fs import (
    human,
    humanize,
    open_lock_file,
    read_trusted_json,
    write_atomic,
)

PRUNE_LOCK = "/var/lib/mlinfra-shared-cache/prune/prune.lock"
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


class Progress:
    """One self-erasing status line on stderr, only when stderr is a terminal (never under cron
    or systemd, whose stderr is a pipe, a file or the journal)."""

    def __init__(self, prog, enabled=True, stream=None):
        self.stream = stream or sys.stderr
        self.prog = prog
        try:
            self.on = enabled and self.stream.isatty()
        except (AttributeError, ValueError):
            self.on = False
        self.shown = False

    def show(self, text):
        if self.on:
            self.stream.write("\r\033[K%s: %s" % (self.prog, text))
            self.stream.flush()
            self.shown = True

    def clear(self):
        if self.on and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


class LockBusy(Exception):
    """Another run holds the command's lock."""


def hold_lock(path):
    """Open (create) the lock file ``path`` and take an exclusive ``flock`` without waiting.

    ``_fs.open_lock_file``: a root-only directory reached through root-only directories, a 0600
    root-owned regular file with one link, no symlink followed. Returns the descriptor (the lock
    lasts until it is closed, or the process exits); LockBusy when another run holds it,
    UnsafePath when the path is not root's alone.
    """
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockBusy(path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------------------------------------
# mlinfra-cache-prune
# ------------------------------------------------------------------------------------------
def prune_cache(cache, conf, dry_run):
    """Prune one cache of the configuration with the cache_prune module's checks; (line, result)."""
    r = cache.get("retention") or {}
    params = {k: r.get(k) for k in ("max_age", "max_size", "min_free", "min_age", "exclude", "age_by")}
    params["format"] = cache.get("format") or "auto"
    params["lock_timeout"] = conf.get("lock_timeout", 60)
    policy = _jobs.prune_policy(params)
    path, _root = _jobs.prune_paths(cache["path"], conf["root"])
    res = _prune.Pruner(
        path,
        fmt=params["format"],
        policy=policy,
        check_mode=dry_run,
        lock_timeout=params["lock_timeout"],
        # a curated cache's content is its writers group's (catalog `writers`)
        gid=_perms.resolve_group(cache.get("writers") or conf["group"]),
        # beside the command's own lock: the one directory besides the caches its unit may write
        lock_dir=os.path.dirname(conf.get("lock") or PRUNE_LOCK),
    ).run()
    return _prune.summary_line(res, dry_run, cache["name"]), res


def verify_cache(cache, conf, dry_run, full=False):
    """Verify one cache (``conf["verify"]``: quarantine, workers, state_dir, min_age) as the cache_verify
    module does, incrementally unless ``full``; (line, result)."""
    v = conf.get("verify") or {}
    path, _root = _jobs.prune_paths(cache["path"], conf["root"])
    res = _verify.Verifier(
        path,
        fmt=cache.get("format") or "auto",
        gid=_perms.resolve_group(conf["group"]),
        full=full,
        quarantine=bool(v.get("quarantine")),
        check_mode=dry_run,
        workers=v.get("workers") or None,
        state_dir=v.get("state_dir") or _verify.VERIFY_DIR,
        min_age=v.get("min_age", 600),
        lock_timeout=conf.get("lock_timeout", 60),
    ).run()
    return _verify.summary_line(res, cache["name"], dry_run), res


def fix_permissions(cache, conf, dry_run):
    """Re-apply one cache's group permissions as the cache_dir module does (recurse); (line, errors)."""
    t0 = time.monotonic()
    path, subdirs, fixer = _perms.cache_dir_fixer(
        {
            "path": cache["path"],
            "owner": conf.get("owner"),
            "group": conf["group"],
            "mode": cache.get("mode") or "2775",
            "subdirs": cache.get("subdirs") or [],
            "acl": conf.get("acl", True),
            "one_fs": True,
            "private": cache.get("private") or [],
            "writers": cache.get("writers"),
        },
        check_mode=dry_run,
    )
    root_fd, managed = fixer.ensure(path, subdirs)
    try:
        _perms.fail_on_managed(fixer, path)
        if root_fd is not None:
            # One process on purpose (cache_dir's default uses the CPUs): this is background
            # work at night on a host whose CPUs belong to the training jobs.
            fixer.walk(root_fd, managed, workers=1)
    finally:
        if root_fd is not None:
            os.close(root_fd)
    line = "cache_dir %s %sexamined=%d changed=%d foreign=%d errors=%d duration=%.1fs" % (
        cache["name"],
        "(dry run) " if dry_run else "",
        fixer.examined,
        fixer.changed,
        fixer.foreign.count,
        fixer.error_count,
        time.monotonic() - t0,
    )
    return line, fixer.error_count


def _parser(prog, description, config_path, flags):
    """The command line of a host command: ``flags`` are (option, help) switches, then --config."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for flag, text in flags:
        if flag == "--cache":
            parser.add_argument(flag, action="append", default=[], help=text)
        else:
            parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument("--config", default=config_path, help="configuration written by the role (default %(default)s)")
    return parser


PRUNE_FLAGS = (
    ("--dry-run", "delete and change nothing"),
    ("--cache", "only this cache (repeatable)"),
    ("--json", "print the results as JSON"),
    ("--syslog", "also log the summary lines to syslog"),
    ("--quiet", "print nothing"),
    ("--no-permissions", "skip the permission fix-up"),
    ("--no-verify", "skip the content verification"),
    ("--verify-full", "verify by reading every unit again (not only new or changed ones)"),
)
REPORT_FLAGS = (
    ("--json", "print the report as JSON"),
    ("--last", "print the last report written, do not walk"),
    ("--write", "write the configured outputs (the schedule)"),
    ("--quiet", "print nothing (with --write)"),
)


def prune_main(config_path, argv=None):
    """The nightly command; returns its exit status (0 fine, 1 a cache failed, 2 refused to start)."""
    args = _parser(
        "mlinfra-cache-prune", "Retention and group permissions of the shared caches.", config_path, PRUNE_FLAGS
    ).parse_args(argv)
    log = None
    if args.syslog:
        import syslog

        syslog.openlog("mlinfra-cache-prune", 0, syslog.LOG_DAEMON)
        log = syslog

    progress = Progress("mlinfra-cache-prune", enabled=not args.quiet)

    def emit(line, error=False):
        progress.clear()
        if not args.quiet and not args.json:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if log is not None:
            log.syslog(log.LOG_ERR if error else log.LOG_INFO, line)

    try:
        conf = read_trusted_json(args.config)
    except (OSError, ValueError) as exc:
        sys.stderr.write("mlinfra-cache-prune: configuration %s: %s\n" % (args.config, exc))
        return 2
    names = {c["name"] for c in conf["caches"]}
    unknown = [n for n in args.cache if n not in names]
    if unknown:
        sys.stderr.write("mlinfra-cache-prune: unknown cache(s): %s\n" % ", ".join(unknown))
        return 2
    lock_path = conf.get("lock") or PRUNE_LOCK
    try:
        lock_fd = hold_lock(lock_path)
    except LockBusy:
        emit("mlinfra-cache-prune: another run holds %s; this one does nothing" % lock_path)
        return 0
    except OSError as exc:
        sys.stderr.write("mlinfra-cache-prune: lock %s: %s\n" % (lock_path, exc))
        if log is not None:
            log.syslog(log.LOG_ERR, "lock %s: %s" % (lock_path, exc))
        return 2
    try:
        failures, results = _prune_all(conf, args, emit, progress)
        if not args.dry_run:
            state = prune_state_path(conf)
            try:
                record_prunes(state, results)
            except (OSError, ValueError) as exc:
                failures += 1
                emit("mlinfra-cache-prune: state %s not recorded: %s" % (state, exc), error=True)
    finally:
        progress.clear()
        os.close(lock_fd)
    if args.json and not args.quiet:
        sys.stdout.write(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 1 if failures else 0


def prune_state_path(conf):
    """Where the prune records its runs: ``state`` of the configuration, else beside the lock."""
    return conf.get("state") or os.path.join(os.path.dirname(conf.get("lock") or PRUNE_LOCK), "state.json")


def record_prunes(path, results, now=None):
    """Merge this run's results into the state file (per cache: time, freed bytes, units, files,
    errors); caches not pruned this time keep their last record. Written atomically, 0600."""
    if not results:
        return
    try:
        state = read_trusted_json(path)
    except FileNotFoundError:
        state = {}
    caches = state.get("caches") if isinstance(state, dict) and isinstance(state.get("caches"), dict) else {}
    now = time.time() if now is None else now
    for item in results:
        res = item.get("prune")
        if res is None or res.get("skipped"):
            continue
        caches[item["name"]] = {
            "time": now,
            "freed_bytes": res.get("bytes", 0),
            "units": res.get("units", 0),
            "files": res.get("files", 0),
            "errors": len(res.get("errors") or []),
        }
    text = json.dumps({"version": 1, "time": now, "caches": caches}, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text, mode=0o600)


def _prune_all(conf, args, emit, progress):
    failures = 0
    results = []
    verified = {}
    todo = [
        c
        for c in conf["caches"]
        # external: owned by a daemon or tool, neither pruned by file nor re-permissioned
        if not (args.cache and c["name"] not in args.cache) and c.get("format") != "external"
    ]
    freed = 0
    for i, cache in enumerate(todo):
        progress.show("%d/%d caches, freed %s; %s" % (i, len(todo), human(freed), cache["name"]))
        try:
            st = os.lstat(cache["path"])
        except OSError:
            st = None
        if st is None or not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):  # a symlink fails below
            emit("cache_prune %s: %s not present, skipped" % (cache["name"], cache["path"]))
            continue
        r = cache.get("retention") or {}
        if any(r.get(k) is not None for k in ("max_age", "max_size", "min_free")):
            try:
                line, res = prune_cache(cache, conf, args.dry_run)
                results.append({"name": cache["name"], "prune": res})
                freed += res.get("bytes", 0)
                emit(line, error=bool(res["errors"]))
                failures += bool(res["errors"])
            except Exception as exc:  # noqa: BLE001 - one broken cache must not stop the others
                failures += 1
                emit("cache_prune %s failed: %s" % (cache["name"], exc), error=True)
        if (conf.get("verify") or {}).get("enabled") and not args.no_verify:
            try:
                line, res = verify_cache(cache, conf, args.dry_run, args.verify_full)
                results.append({"name": cache["name"], "verify": res})
                emit(line, error=bool(res["corrupt"] or res["errors"]))
                if not res["skipped"]:
                    verified[cache["name"]] = res
            except Exception as exc:  # noqa: BLE001
                failures += 1
                emit("cache_verify %s failed: %s" % (cache["name"], exc), error=True)
        if conf.get("fix_permissions") and not args.no_permissions:
            try:
                line, errors = fix_permissions(cache, conf, args.dry_run)
                emit(line, error=bool(errors))
                failures += bool(errors)
            except Exception as exc:  # noqa: BLE001
                failures += 1
                emit("cache_dir %s failed: %s" % (cache["name"], exc), error=True)
    if verified and not args.dry_run:
        try:
            _verify.write_summary(verified, (conf.get("verify") or {}).get("state_dir"))
        except OSError as exc:
            failures += 1
            emit("cache_verify summary: %s" % exc, error=True)
    return failures, results


# ------------------------------------------------------------------------------------------
# show-cache-info
# ------------------------------------------------------------------------------------------
def report_file_access(conf):
    """(mode, gid) of the report files for this configuration (``_render.report_file_access``)."""
    return _render.report_file_access(conf.get("caches"), conf.get("group"))


def report_main(config_path, argv=None):
    """show-cache-info; returns its exit status."""
    try:
        return _report(
            _parser("show-cache-info", "Usage of the shared caches.", config_path, REPORT_FLAGS).parse_args(argv)
        )
    except BrokenPipeError:
        return 0
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write("show-cache-info: %s\n" % exc)
        return 1


def _report(args):
    conf = read_trusted_json(args.config)
    out = conf["outputs"]
    if args.last:
        try:
            with open(out["json"], encoding="utf-8") as fh:
                report = json.load(fh)
        except FileNotFoundError:
            sys.stderr.write(
                "show-cache-info: no report written yet at %s: run `show-cache-info --write` (as root) to "
                "write it now, or wait for the scheduled refresh (`make site` writes the first one)\n" % out["json"]
            )
            return 1
        sys.stdout.write(
            json.dumps(report, indent=2, sort_keys=True) + "\n" if args.json else _render.render_table(report)
        )
        return 0
    history = _render.read_history(out["history"], out.get("history_keep", 2000))
    progress = Progress("show-cache-info", enabled=not args.quiet)
    total = [0]

    def step(done, count, result):
        total[0] += result["bytes"]
        progress.show("%d/%d caches, %s; %s done" % (done, count, humanize(total[0]), result["name"]))

    progress.show("measuring %d caches" % len(conf["caches"]))
    try:
        report = _measure(conf, history, step)
    finally:
        progress.clear()
    if args.write:
        _render.write_outputs(report, out, history, report_file_access(conf))
    if args.quiet:
        return 0
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(_render.render_table(report))
    return 0


def _measure(conf, history, progress):
    """The report of the configured caches, with the status the admin asks for next."""
    report = _usage.build_report(
        conf["caches"],
        root=conf.get("root"),
        age_days=conf.get("age_days", [30, 90]),
        age_by=conf.get("age_by", "newest"),
        top=conf.get("top", 10),
        max_units=conf.get("max_units", 50000),
        warn_percent=conf.get("warn_percent", 80.0),
        critical_percent=conf.get("critical_percent", 90.0),
        workers=conf.get("workers") or None,
        **_usage.hints(history),
        owners_top=conf.get("owners_top", 10),
        progress=progress,
    )
    _usage.add_status(
        report,
        group=conf.get("group"),
        prune_state=conf.get("prune_state", _usage.PRUNE_STATE),
        doctor_status=conf.get("doctor_status", _usage.DOCTOR_STATUS),
        verify_summary=conf.get("verify_summary", _usage.VERIFY_SUMMARY),
    )
    report["history_entry"] = _render.history_entry(report)
    return report
