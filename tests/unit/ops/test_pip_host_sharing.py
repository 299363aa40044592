# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 14 item 6 on a plain host: two real members of the cache group, real pip 26.3 run from a
venv of the system's Python, a PyPI-like index on loopback that logs what is downloaded.

What pip does (pip/_internal/resolution/resolvelib/factory.py `_iter_found_candidates`: the finder's
applicable candidates, sorted with find-links files first, are walked in *reverse*): for the same
file on the index and in the wheelhouse (PIP_FIND_LINKS), the index's link is taken, so a
wheelhouse alone never saves a download the index can serve. What does share a download is pip's
HTTP cache (PIP_CACHE_DIR/http-v2), written with the cache directory's group bits by pip >= 25, when
the index's responses are cacheable. So the prefetch downloads through it: the first member's install
after a prefetch downloads nothing, and when the index's responses are not cacheable the doctor says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.mlinfra.shared_cache.plugins.module_utils._catalog import resolve
from ansible_collections.mlinfra.shared_cache.plugins.modules import cache_doctor
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import (
    Actors,
    lay_out_cache,
    make_arena,
    remove_arena,
)
from ansible_collections.mlinfra.shared_cache.tests.unit.ops.local_index import (
    SYSTEM_PYTHON,
    LocalIndex,
    needs_system_venv,
)
from ansible_collections.mlinfra.shared_cache.tests.unit.ops.playbooks import ansible_bin, ansible_env

WHEELS = ["markupsafe==3.0.2", "six==1.16.0"]
PIP = "pip==26.3"

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="creates users: run as root"), needs_system_venv]


def clean_pip_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


@pytest.fixture(scope="module")
def site():
    """Wheels from PyPI (once), two members, a pip 26.3 venv of the system Python they can run."""
    base = make_arena()
    actors = Actors.create("mlcpip%d" % os.getpid())
    try:
        venv = os.path.join(base, "venv")
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", venv], check=True)
        # once from PyPI, by the venv's own (system) pip: the wheels of the system's Python
        files = os.path.join(base, "pypi-files")
        subprocess.run(
            [os.path.join(venv, "bin", "python"), "-m", "pip", "download", "-q", "--no-deps"]
            + ["--only-binary=:all:", "-d", files]
            + WHEELS
            + [PIP],
            check=True,
            env=clean_pip_env(),
        )
        with LocalIndex(files, os.path.join(base, "pip-index")) as index:
            subprocess.run(
                [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--index-url", index.url]
                + ["--trusted-host", "127.0.0.1", PIP],
                check=True,
                env=clean_pip_env(),
            )
        yield dict(base=base, actors=actors, files=files, venv=venv)
    finally:
        actors.remove()
        remove_arena(base)


PLAY = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: Prefetch as a member, through the shared pip cache
      become: true
      become_user: "{{ member }}"
      become_method: "{{ 'sudo' if sudo else 'su' }}"
      become_flags: "{{ '' if sudo else '-s /bin/sh' }}"
      vars:
        ansible_python_interpreter: /usr/bin/python3
      environment:
        PIP_CONFIG_FILE: /dev/null
        PIP_TRUSTED_HOST: 127.0.0.1
      mlinfra.shared_cache.cache_prefetch:
        kind: pip
        name: "{{ item }}"
        dest: "{{ pip_cache }}/wheelhouse"
        cache_dir: "{{ pip_cache }}"
        executable: "{{ venv }}/bin/python"
        index_url: "{{ index }}"
      loop: "{{ wheels }}"
"""


def prefetch(site, cache, index, member):
    playbook = os.path.join(cache, "..", "prefetch-probe.yml")
    with open(playbook, "w") as f:
        f.write(PLAY)
    inventory = os.path.join(cache, "..", "hosts.ini")
    with open(inventory, "w") as f:
        f.write("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    extra = dict(
        member=member,
        sudo=bool(shutil.which("sudo")),
        pip_cache=cache,
        venv=site["venv"],
        index=index.url,
        wheels=WHEELS,
    )
    run = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", inventory, playbook, "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        check=False,
        env=ansible_env("default"),
        cwd="/",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def install(site, cache, index, who):
    """``pip install`` of the same wheels by a member, with the environment cache_env gives members."""
    target = os.path.join(cache, "..", "site-" + who.name)
    os.mkdir(target)
    os.chown(target, who.uid, who.gid)
    env = dict(
        PIP_CACHE_DIR=cache,
        PIP_FIND_LINKS=os.path.join(cache, "wheelhouse"),
        PIP_INDEX_URL=index.url,
        PIP_TRUSTED_HOST="127.0.0.1",
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    cmd = "umask 002; exec %s/bin/python -m pip install -q --target %s %s" % (site["venv"], target, " ".join(WHEELS))
    who.run(cmd, env=env, timeout=180)
    assert sorted(n for n in os.listdir(target) if n in ("markupsafe", "six.py")) == ["markupsafe", "six.py"]


def projects(paths):
    return sorted({os.path.basename(f).split("-")[0].lower() for f in paths})


def doctor(capsys, cache):
    catalog = resolve(
        {"pip": {"path": "pip", "format": "pip", "env": {"PIP_CACHE_DIR": "", "PIP_FIND_LINKS": "wheelhouse"}}},
        None,
        os.path.dirname(cache),
        "/cache",
    )
    args = dict(catalog=catalog, probe=False, env_source="none", pythons=[], report="", fail_on_problem=False)
    args["cron_dir"] = args["systemd_dir"] = os.path.join(cache, "..", "none")
    with patch_module_args(args), pytest.raises(SystemExit):
        cache_doctor.main()
    res = json.loads(capsys.readouterr().out)
    return [c for c in res["checks"] if c["check"] == "pip_http_cache"]


@pytest.mark.parametrize("cacheable", [True, False], ids=["cacheable", "not-cacheable"])
@pytest.mark.registry
def test_after_a_prefetch_a_member_installs_the_same_wheels_without_downloading(site, capsys, cacheable):
    actors = site["actors"]
    root = lay_out_cache(os.path.join(site["base"], "cache-%s" % cacheable), actors.gid)
    cache = lay_out_cache(os.path.join(root, "pip"), actors.gid, subdirs=["wheelhouse"])
    served = os.path.join(site["base"], "index-%s" % cacheable)
    with LocalIndex(site["files"], served, "max-age=600" if cacheable else "") as index:
        assert doctor(capsys, cache)[0]["ok"] is None  # nothing downloaded through it yet

        prefetch(site, cache, index, actors.alice.name)
        fetched = index.downloads()
        assert projects(fetched) == ["markupsafe", "six"]
        assert sorted(n.split("-")[0].lower() for n in os.listdir(os.path.join(cache, "wheelhouse"))) == [
            "markupsafe",
            "six",
        ]

        install(site, cache, index, actors.bob)
        again = index.downloads()[len(fetched) :]
        checks = doctor(capsys, cache)
        if cacheable:
            # bob's install took both wheels from the HTTP cache alice's prefetch wrote: nothing downloaded
            assert again == [], again
            assert checks[0]["ok"] is True, checks
        else:
            # the index's link wins over the wheelhouse file: without a cacheable response bob downloads
            assert projects(again) == ["markupsafe", "six"], again
            assert checks[0]["ok"] is False, checks
            assert "not cacheable" in checks[0]["msg"] and "2 wheel(s)" in checks[0]["msg"]
            assert checks[0]["fix"].endswith("ansible-playbook playbooks/prefetch.yml")
