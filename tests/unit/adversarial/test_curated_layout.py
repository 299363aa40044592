"""Curated caches (catalog `writers`): only the writers group writes, the cache group only reads.

Laid out by cache_dir's own code (``_perms.cache_dir_fixer``, as the module and the nightly repair
call it) and then used by real users: the prefetch service account (member of the cache group and
of the writers group), alice and bob (members), carol (not a member).
"""

from __future__ import annotations

import grp
import os
import subprocess

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _perms
from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.curated import lay_out_curated


def getfacl(path):
    out = subprocess.run(["getfacl", "-cp", path], check=True, capture_output=True, text=True).stdout
    return {line for line in out.splitlines() if line}


def test_curated_tree_members_read_writers_write(actors, arena, curators):
    wgroup, writer = curators
    path = os.path.join(arena, "curated")
    fixer = lay_out_curated(path, actors.group, wgroup)
    hub = os.path.join(path, "hub")
    st = os.stat(hub)
    assert grp.getgrgid(st.st_gid).gr_name == wgroup and oct(st.st_mode & 0o7777) == "0o2770"
    acl = getfacl(hub)
    assert "group:%s:r-x" % actors.group in acl and "default:group:%s:r-x" % actors.group in acl
    assert "default:group:%s:rwx" % wgroup in acl and not any(a.endswith("group:%s:rwx" % actors.group) for a in acl)
    # the writer creates (with a private umask: the default ACL still gives the members read)
    writer.run("umask 077; mkdir %s/models--a--b && echo w > %s/models--a--b/f" % (hub, hub))
    assert actors.alice.run(["cat", hub + "/models--a--b/f"]).stdout == "w\n"
    # a member can neither write nor create, and says so with the kernel's error
    for cmd in ("echo x > %s/models--a--b/f" % hub, "touch %s/new" % hub, "mkdir %s/models--a--b/x" % hub):
        res = actors.bob.run(cmd, check=False)
        assert res.returncode != 0 and "Permission denied" in res.stderr, (cmd, res.stderr)
    # a non-member reads nothing of a 2770 curated cache
    res = actors.carol.run(["ls", hub], check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    assert fixer.error_count == 0


def test_nightly_repair_restores_curated_acls_and_is_idempotent(actors, arena, curators):
    wgroup, writer = curators
    path = os.path.join(arena, "curated")
    lay_out_curated(path, actors.group, wgroup)
    hub = os.path.join(path, "hub")
    writer.run("mkdir -p %s/m/snap && echo data > %s/m/blob && chmod 600 %s/m/blob" % (hub, hub, hub))
    # the writer (owner) strips the members' read from a file and a directory
    writer.run(["setfacl", "-b", hub + "/m/snap"])
    assert actors.alice.run(["cat", hub + "/m/blob"], check=False).returncode != 0
    check = lay_out_curated(path, actors.group, wgroup, check=True)
    assert check.changed >= 2 and actors.alice.run(["cat", hub + "/m/blob"], check=False).returncode != 0
    fixed = lay_out_curated(path, actors.group, wgroup)
    assert fixed.changed == check.changed
    assert actors.alice.run(["cat", hub + "/m/blob"]).stdout == "data\n"
    assert "group:%s:r--" % actors.group in getfacl(hub + "/m/blob")
    assert "group:%s:r-x" % actors.group in getfacl(hub + "/m/snap")
    assert oct(os.stat(hub + "/m/blob").st_mode & 0o777) == "0o660"  # writers rw, members r (ACL)
    again = lay_out_curated(path, actors.group, wgroup)
    assert again.changed == 0 and again.error_count == 0
    # a member's own file of the cache group in the curated tree is foreign: neither widened nor regrouped
    assert again.foreign.count == 0


def test_plain_cache_becomes_curated(actors, arena, curators):
    """Turning an existing cache curated: the managed directories are taken over (root owns them);
    members' content of the cache group is foreign until adopted once."""
    from ansible_collections.mlinfra.shared_cache.tests.unit.adversarial.actors import lay_out_cache

    wgroup, _writer = curators
    path = lay_out_cache(os.path.join(arena, "plain"), actors.gid, subdirs=["hub"])
    actors.alice.run("echo mine > %s/hub/old" % path)
    fixer = lay_out_curated(path, actors.group, wgroup, mode="2775")
    assert fixer.foreign.count == 1 and grp.getgrgid(os.stat(path + "/hub").st_gid).gr_name == wgroup
    assert "default:group:%s:r-x" % actors.group in getfacl(path + "/hub")
    assert actors.bob.run("touch %s/hub/new" % path, check=False).returncode != 0
    # adopt takes the content over: the writers own it, the members read it
    params = {"path": path, "owner": "root", "group": actors.group, "writers": wgroup, "mode": "2775"}
    path_, subdirs, fixer = _perms.cache_dir_fixer(dict(params, adopt=True, subdirs=["hub"]))
    fd, managed = fixer.ensure(path_, subdirs)
    fixer.walk(fd, managed)
    os.close(fd)
    assert grp.getgrgid(os.stat(path + "/hub/old").st_gid).gr_name == wgroup
    assert actors.bob.run("echo x >> %s/hub/old" % path, check=False).returncode != 0
    assert actors.bob.run(["cat", path + "/hub/old"]).stdout == "mine\n"


def test_the_nightly_command_repairs_a_curated_cache_as_cache_dir_lays_it_out(actors, arena, curators):
    """mlinfra-cache-prune's permission step (its configuration carries the entry's writers)."""
    from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _hostcmd

    wgroup, writer = curators
    path = os.path.join(arena, "curated")
    lay_out_curated(path, actors.group, wgroup)
    writer.run("mkdir %s/hub/m && echo data > %s/hub/m/blob && setfacl -b %s/hub/m/blob" % ((path,) * 3))
    assert actors.alice.run(["cat", path + "/hub/m/blob"], check=False).returncode != 0
    cache = {"name": "hf", "path": path, "mode": "2770", "subdirs": ["hub"], "writers": wgroup}
    line, errors = _hostcmd.fix_permissions(cache, {"group": actors.group, "owner": "root"}, False)
    assert errors == 0 and " foreign=0 " in line, line
    assert actors.alice.run(["cat", path + "/hub/m/blob"]).stdout == "data\n"
    assert actors.bob.run("touch %s/hub/m/x" % path, check=False).returncode != 0
    # without the writers field the nightly run would see the whole tree as foreign: never regrouped
    line, _errors = _hostcmd.fix_permissions(dict(cache, writers=None), {"group": actors.group}, True)
    assert " foreign=0 " not in line and grp.getgrgid(os.stat(path + "/hub/m").st_gid).gr_name == wgroup
