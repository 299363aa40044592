"""The harness itself: members and strangers get exactly what the kernel grants them."""

from __future__ import annotations

import os


def test_member_writes_the_cache_and_a_stranger_cannot(actors, cache):
    actors.alice.run("echo hi > %s/alice-file" % cache)
    st = os.lstat(os.path.join(cache, "alice-file"))
    assert st.st_uid == actors.alice.uid
    assert st.st_gid == actors.gid  # setgid root: the cache group is inherited
    actors.bob.run("echo more >> %s/alice-file" % cache)  # default ACL: the group may write
    res = actors.carol.run("echo x > %s/carol-file" % cache, check=False)
    assert res.returncode != 0 and not os.path.exists(os.path.join(cache, "carol-file"))
