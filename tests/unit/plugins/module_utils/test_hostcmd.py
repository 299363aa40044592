# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host commands (_hostcmd): the modules' checks, the command lock, trusted configuration,
report file modes, the thin installed wrappers and what host_lib ships for them."""

from __future__ import annotations

import ast
import fcntl
import grp
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _hostcmd, _jobs, _perms
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._params import ParamError
from ansible_collections.mlinfra.shared_cache.tests.unit.plugins.trees import write

ROOT = Path(__file__).resolve().parents[4]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="root's command: ownership checks need root")


def prune_config(tmp_path, caches, **extra):
    conf = {
        "root": str(tmp_path / "cache"),
        "group": grp.getgrgid(os.getgid()).gr_name,
        "owner": None,
        "acl": False,
        "fix_permissions": True,
        "lock_timeout": 1,
        "lock": str(tmp_path / "state" / "prune.lock"),
        "caches": caches,
    }
    conf.update(extra)
    path = tmp_path / "prune.json"
    path.write_text(json.dumps(conf))
    path.chmod(0o644)
    return str(path)


def generic(tmp_path, name="misc", **retention):
    path = tmp_path / "cache" / name
    write(path / "old" / "f.bin", b"o" * 4096, age_days=200)
    return {"name": name, "path": str(path), "format": "generic", "mode": "2775", "retention": retention}


# -- the module's checks, the same function --------------------------------------------------
@pytest.mark.parametrize(
    "params, message",
    [
        ({"exclude": [""]}, "exclude"),
        ({"exclude": "*.bin"}, "exclude"),
        ({"max_age": "ninety days"}, "cannot parse"),
        ({"lock_timeout": -1}, "lock_timeout"),
        ({"age_by": "ctime"}, "age_by"),
        ({"format": "tarball"}, "format"),
    ],
)
def test_prune_policy_refuses(params, message):
    with pytest.raises(ParamError, match=message):
        _jobs.prune_policy(dict({"max_age": "1d"}, **params))


def test_the_module_uses_the_shared_checks():
    from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_dir, cache_prune

    assert cache_prune.prune_policy is _jobs.prune_policy
    assert cache_prune.prune_paths is _jobs.prune_paths
    assert cache_dir.cache_dir_fixer is _perms.cache_dir_fixer
    assert cache_dir.fail_on_managed is _perms.fail_on_managed
    # the command's permission fix-up builds its fixer with the same function
    assert "_perms.cache_dir_fixer(" in Path(_hostcmd.__file__).read_text()


@ROOT_ONLY
def test_command_refuses_a_bad_exclude_and_deletes_nothing(tmp_path, capsys):
    cache = generic(tmp_path, max_age="1d", exclude=[""])
    conf = prune_config(tmp_path, [cache], fix_permissions=False)
    assert _hostcmd.prune_main(conf, []) == 1
    out = capsys.readouterr().out
    assert "cache_prune misc failed: exclude: patterns must be non-empty" in out, out
    assert (tmp_path / "cache" / "misc" / "old" / "f.bin").exists()


@ROOT_ONLY
def test_command_prunes_like_the_module(tmp_path, capsys):
    cache = generic(tmp_path, max_age="1d")
    conf = prune_config(tmp_path, [cache], fix_permissions=False)
    assert _hostcmd.prune_main(conf, []) == 0
    out = capsys.readouterr().out
    assert "cache_prune misc format=generic units=1 files=1" in out, out
    assert not (tmp_path / "cache" / "misc" / "old" / "f.bin").exists()


@ROOT_ONLY
def test_command_fails_on_a_managed_directory_out_of_line(tmp_path, capsys):
    cache = generic(tmp_path)
    cache["subdirs"] = ["wheels"]
    write(tmp_path / "cache" / "misc" / "wheels", b"a file where a declared subdir belongs")
    conf = prune_config(tmp_path, [cache])
    assert _hostcmd.prune_main(conf, []) == 1
    out = capsys.readouterr().out
    assert "cache_dir misc failed:" in out and "could not bring the directory or its subdirs into line" in out, out


@ROOT_ONLY
def test_command_fixes_permissions(tmp_path, capsys):
    cache = generic(tmp_path)
    (tmp_path / "cache" / "misc" / "old" / "f.bin").chmod(0o600)
    conf = prune_config(tmp_path, [cache])
    assert _hostcmd.prune_main(conf, []) == 0
    assert "cache_dir misc examined=" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(tmp_path / "cache" / "misc" / "old" / "f.bin").st_mode) & 0o060 == 0o060


def test_unknown_cache_is_refused(tmp_path, capsys):
    conf = prune_config(tmp_path, [generic(tmp_path, max_age="1d")])
    if os.geteuid() != 0:
        pytest.skip("needs root (ownership checks)")
    assert _hostcmd.prune_main(conf, ["--cache", "nope"]) == 2
    assert "unknown cache(s): nope" in capsys.readouterr().err


# -- the command's own lock ------------------------------------------------------------------
@ROOT_ONLY
def test_lock_is_root_only_and_exclusive(tmp_path):
    lock = str(tmp_path / "run" / "sub" / "prune.lock")
    fd = _hostcmd.hold_lock(lock)
    try:
        st = os.lstat(lock)
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(lock)).st_mode) == 0o700
        with pytest.raises(_hostcmd.LockBusy):
            _hostcmd.hold_lock(lock)
    finally:
        os.close(fd)
    os.close(_hostcmd.hold_lock(lock))  # released with the descriptor


@ROOT_ONLY
def test_a_second_run_does_nothing_while_the_first_holds_the_lock(tmp_path, capsys):
    cache = generic(tmp_path, max_age="1d")
    conf = prune_config(tmp_path, [cache])
    fd = _hostcmd.hold_lock(str(tmp_path / "state" / "prune.lock"))
    try:
        assert _hostcmd.prune_main(conf, []) == 0
    finally:
        os.close(fd)
    assert "another run holds" in capsys.readouterr().out
    assert (tmp_path / "cache" / "misc" / "old" / "f.bin").exists()


@ROOT_ONLY
@pytest.mark.parametrize("how", ["dir-writable", "file-mode", "symlink", "hardlink"])
def test_unsafe_lock_paths_are_refused(tmp_path, how):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    lock = d / "prune.lock"
    if how == "dir-writable":
        d.chmod(0o777)
    elif how == "file-mode":
        lock.write_text("")
        lock.chmod(0o666)
    elif how == "symlink":
        lock.symlink_to(tmp_path / "elsewhere")
    else:
        (tmp_path / "target").write_text("")
        (tmp_path / "target").chmod(0o600)
        os.link(tmp_path / "target", lock)
    with pytest.raises(OSError):
        os.close(_hostcmd.hold_lock(str(lock)))
    assert not (tmp_path / "elsewhere").exists()


# -- the configuration is root's --------------------------------------------------------------
@ROOT_ONLY
@pytest.mark.parametrize("how", ["file-writable", "dir-writable", "symlink"])
def test_untrusted_configuration_is_refused(tmp_path, how, capsys):
    conf = Path(prune_config(tmp_path, [generic(tmp_path, max_age="1d")]))
    if how == "file-writable":
        conf.chmod(0o666)
    elif how == "dir-writable":
        tmp_path.chmod(0o777)
    else:
        conf.rename(tmp_path / "real.json")
        conf.symlink_to(tmp_path / "real.json")
    assert _hostcmd.prune_main(str(conf), []) == 2
    assert "configuration" in capsys.readouterr().err
    assert (tmp_path / "cache" / "misc" / "old" / "f.bin").exists()


def test_sticky_directories_on_the_way_are_fine(tmp_path):
    # pytest's tmp_path lies below /tmp (1777, root's): sticky, so nobody renames root's entries.
    path = tmp_path / "c.json"
    path.write_text('{"a": 1}')
    assert _hostcmd.read_trusted_json(str(path)) == {"a": 1}


# -- report files ------------------------------------------------------------------------------
def test_report_file_access():
    group = grp.getgrgid(os.getgid())
    caches = [{"name": "pip", "mode": "2775"}]
    assert _hostcmd.report_file_access({"caches": caches, "group": group.gr_name}) == (0o644, None)
    caches.append({"name": "hf", "mode": "2770"})
    assert _hostcmd.report_file_access({"caches": caches, "group": group.gr_name}) == (0o640, group.gr_gid)
    assert _hostcmd.report_file_access({"caches": caches, "group": "no-such-group-x"}) == (0o600, None)


def report_config(tmp_path, mode, history_keep=2000, workers=1, extra_cache=False):
    group = grp.getgrgid(os.getgid()).gr_name
    write(tmp_path / "cache" / "hf" / "models--x" / "blob", b"x" * 100)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    caches = [{"name": "hf", "path": str(tmp_path / "cache" / "hf"), "format": "generic", "mode": mode}]
    if extra_cache:
        write(tmp_path / "cache" / "pip" / "x", b"x" * 100)
        caches.append({"name": "pip", "path": str(tmp_path / "cache" / "pip"), "format": "pip", "mode": mode})
    conf = {
        "root": str(tmp_path / "cache"),
        "group": group,
        "caches": caches,
        "outputs": {
            "json": str(state / "report.json"),
            "history": str(state / "history.jsonl"),
            "history_keep": history_keep,
            "prometheus": str(state / "shared_cache.prom"),
            "html": str(state / "index.html"),
        },
        "workers": workers,
        "prune_state": str(tmp_path / "no-prune-state.json"),
        "doctor_status": str(tmp_path / "no-doctor-status.json"),
        "verify_summary": str(tmp_path / "no-verify-summary.json"),
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(conf))
    return str(path), state


@pytest.mark.parametrize("mode, want", [("2770", 0o640), ("2775", 0o644)])
def test_report_files_follow_the_caches_modes(tmp_path, mode, want):
    conf, state = report_config(tmp_path, mode)
    assert _hostcmd.report_main(conf, ["--write", "--quiet"]) == 0
    for name in ("report.json", "history.jsonl", "shared_cache.prom", "index.html"):
        st = os.lstat(state / name)
        assert stat.S_IMODE(st.st_mode) == want, name
        assert st.st_gid == os.getgid()
    assert sorted(os.listdir(state)) == ["history.jsonl", "index.html", "report.json", "shared_cache.prom"]


def test_last_without_a_report_says_what_to_run(tmp_path, capsys):
    conf, state = report_config(tmp_path, "2775")
    assert _hostcmd.report_main(conf, ["--last"]) == 1
    err = capsys.readouterr().err
    assert "no report written yet at %s" % (state / "report.json") in err
    assert "run `show-cache-info --write` (as root)" in err and "scheduled refresh" in err
    assert _hostcmd.report_main(conf, ["--write", "--quiet"]) == 0
    capsys.readouterr()
    assert _hostcmd.report_main(conf, ["--last"]) == 0
    assert "hf" in capsys.readouterr().out


@ROOT_ONLY
def test_report_refuses_a_directory_others_may_write(tmp_path, capsys):
    conf, state = report_config(tmp_path, "2770")
    state.chmod(0o777)
    assert _hostcmd.report_main(conf, ["--write", "--quiet"]) == 1
    assert "refusing" in capsys.readouterr().err
    assert os.listdir(state) == []


def test_table_prints_foreign_counts_when_present(tmp_path, capsys):
    conf, _state = report_config(tmp_path, "2775")
    assert _hostcmd.report_main(conf, ["--write", "--quiet"]) == 0
    report = json.loads((tmp_path / "state" / "report.json").read_text())
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _render

    assert "not the cache's" not in _render.render_table(report)
    report["caches"][0]["foreign"] = {"count": 3, "bytes": 4096, "sample": ["a"]}
    assert "(3 entries not the cache's (another group; not counted, not entered), e.g. a" in _render.render_table(
        report
    )


def test_show_cache_info_trims_the_history(tmp_path):
    conf, state = report_config(tmp_path, "2775", history_keep=2)
    for _run in range(4):
        assert _hostcmd.report_main(conf, ["--write", "--quiet"]) == 0
    assert len((state / "history.jsonl").read_text().splitlines()) == 2


# -- progress: on a terminal only --------------------------------------------------------------
def _run_on_pty(argv):
    """Run ``argv`` with stderr on a pseudo-terminal, stdout on a pipe; (rc, stdout, terminal text)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    out = proc.stdout.read()
    proc.stdout.close()
    os.close(master)
    return proc.wait(), out.decode(), seen.decode()


def _wrapper(tmp_path, template, var, conf):
    text = render(template, host_lib_dir=str(Path(_hostcmd.__file__).parents[5]), **{var: conf})
    script = tmp_path / "cmd"
    script.write_text(text)
    return [sys.executable, "-I", str(script)]


def test_show_cache_info_shows_progress_on_a_terminal_only(tmp_path):
    conf, _state = report_config(tmp_path, "2775", workers=2, extra_cache=True)
    cmd = _wrapper(tmp_path, "roles/cache_report/templates/show-cache-info.j2", "cache_report_config_path", conf)
    rc, out, tty = _run_on_pty(cmd + ["--write"])
    assert rc == 0 and "Total Cache Usage" in out
    assert "show-cache-info: 2/2 caches" in tty and "\r\x1b[K" in tty, tty
    assert tty.endswith("\r\x1b[K")  # the line is erased before the table
    run = subprocess.run(cmd + ["--write"], capture_output=True, text=True, check=False)  # cron, systemd: a pipe
    assert run.returncode == 0 and run.stderr == "" and "Total Cache Usage" in run.stdout
    rc, out, tty = _run_on_pty(cmd + ["--write", "--quiet"])
    assert (rc, out, tty) == (0, "", "")


@ROOT_ONLY
def test_prune_shows_progress_on_a_terminal_only(tmp_path):
    conf = prune_config(tmp_path, [generic(tmp_path, max_age="1d"), generic(tmp_path, "other", max_age="1d")])
    cmd = _wrapper(tmp_path, "roles/cache_prune/templates/mlinfra-cache-prune.j2", "cache_prune_config_path", conf)
    rc, out, tty = _run_on_pty(cmd + ["--no-permissions"])
    assert rc == 0 and "cache_prune misc format=generic" in out
    assert "mlinfra-cache-prune: 1/2 caches, freed 4.0KiB; other" in tty, tty
    (tmp_path / "cache" / "misc" / "old").mkdir(exist_ok=True)
    write(tmp_path / "cache" / "misc" / "old" / "f.bin", b"o" * 4096, age_days=200)
    run = subprocess.run(cmd + ["--no-permissions"], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stderr == "" and "cache_prune misc" in run.stdout


# -- the installed wrappers and what host_lib ships -------------------------------------------
def render(template, **variables):
    import jinja2

    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False)  # noqa: S701 - Python, not HTML
    env.filters["to_json"] = json.dumps
    text = (ROOT / template).read_text()
    return env.from_string(text).render(ansible_managed="Ansible managed", **variables)


@pytest.mark.parametrize(
    "template, var, args, expect",
    [
        ("roles/cache_prune/templates/mlinfra-cache-prune.j2", "cache_prune_config_path", ["-h"], "--no-permissions"),
        ("roles/cache_report/templates/show-cache-info.j2", "cache_report_config_path", ["-h"], "--last"),
    ],
)
def test_wrappers_are_thin_and_run(tmp_path, template, var, args, expect):
    text = render(template, host_lib_dir=str(Path(_hostcmd.__file__).parents[5]), **{var: "/nonexistent.json"})
    assert text.startswith("#!/usr/bin/python3 -I\n")
    code = [n for n in ast.parse(text).body if not isinstance(n, (ast.Import, ast.ImportFrom, ast.Expr))]
    assert not [n for n in code if isinstance(n, (ast.FunctionDef, ast.ClassDef))], "logic belongs in module_utils"
    script = tmp_path / "cmd"
    script.write_text(text)
    run = subprocess.run([sys.executable, "-I", str(script)] + args, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert expect in run.stdout


def _module_files(dotted):
    """module_utils files for a dotted name below module_utils: a module or a package's __init__."""
    rel = dotted.replace(".", "/")
    if (ROOT / "plugins" / "module_utils" / rel).is_dir():
        return rel + "/__init__.py"
    return rel + ".py"


def _imports(name, seen):
    """Follow import statements (as AnsiballZ does; never a dynamic import) from module_utils ``name``."""
    if name in seen:
        return
    seen.add(name)
    tree = ast.parse((ROOT / "plugins" / "module_utils" / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "shared_cache.plugins.module_utils" in node.module:
            below = node.module.split("shared_cache.plugins.module_utils", 1)[1].lstrip(".")
            if below:
                _imports(_module_files(below), seen)
            for alias in node.names:
                sub = (below + "." if below else "") + alias.name
                rel = sub.replace(".", "/")
                base = ROOT / "plugins" / "module_utils"
                if (base / rel).is_dir() or (base / (rel + ".py")).is_file():
                    _imports(_module_files(sub), seen)


def test_host_lib_ships_everything_the_commands_import():
    needed = set()
    _imports("_hostcmd.py", needed)
    shipped = set(yaml.safe_load((ROOT / "roles/host_lib/vars/main.yml").read_text())["host_lib_files"])
    assert {"_hostcmd.py", "_jobs.py", "_fs.py", "_formats/__init__.py", "_formats/huggingface.py"} <= needed
    assert needed <= shipped, needed - shipped


def test_lock_file_flags():
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _fs

    assert _fs._O_LOCK & os.O_NOFOLLOW and _fs._O_LOCK & os.O_CREAT
    assert fcntl.LOCK_NB
