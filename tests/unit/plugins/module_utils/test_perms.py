# Copyright (c) 2026 mlinfra
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The POSIX ACL xattr codec and the default ACL cache_dir wants."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.mlinfra.shared_cache.plugins.module_utils import _perms
from ansible_collections.mlinfra.shared_cache.plugins.module_utils._perms import (
    GROUP,
    GROUP_OBJ,
    MASK,
    OTHER,
    UNDEFINED_ID,
    USER,
    USER_OBJ,
    PermsError,
    acl_text,
    decode_acl,
    encode_acl,
    resolve_group,
    resolve_owner,
    wanted_default_acl,
)

# What `setfacl -d -m g:users:rwx` writes on a 2775 directory (captured with getfattr -e hex).
SETFACL_2775_USERS = bytes.fromhex(
    "02000000" + "01000700ffffffff" + "04000700ffffffff" + "0800070064000000" + "10000700ffffffff" + "20000500ffffffff"
)


def test_encode_matches_the_kernel_format_setfacl_writes():
    assert encode_acl(wanted_default_acl([], 0o2775, 100)) == SETFACL_2775_USERS


def test_decode_roundtrip_and_sorting():
    entries = [(OTHER, 0, UNDEFINED_ID), (GROUP, 7, 5), (USER_OBJ, 7, UNDEFINED_ID), (GROUP, 5, 3)]
    entries += [(GROUP_OBJ, 5, UNDEFINED_ID), (MASK, 7, UNDEFINED_ID)]
    decoded = decode_acl(encode_acl(entries))
    assert decoded == sorted(entries, key=lambda e: (e[0], e[2]))
    assert [e[0] for e in decoded] == [USER_OBJ, GROUP_OBJ, GROUP, GROUP, MASK, OTHER]


@pytest.mark.parametrize("data", [b"", b"\x02\x00\x00", b"\x01\x00\x00\x00", b"\x02\x00\x00\x00\x01\x00"])
def test_decode_refuses_garbage(data):
    with pytest.raises(ValueError):
        decode_acl(data)


def test_encode_refuses_bad_entries():
    with pytest.raises(ValueError):
        encode_acl([(USER_OBJ, 8, UNDEFINED_ID)])
    with pytest.raises(ValueError):
        encode_acl([(0x40, 7, UNDEFINED_ID)])


def test_wanted_acl_keeps_named_entries_and_recomputes_mask():
    existing = [(USER_OBJ, 7, UNDEFINED_ID), (USER, 5, 1), (GROUP_OBJ, 5, UNDEFINED_ID), (GROUP, 1, 100)]
    existing += [(MASK, 5, UNDEFINED_ID), (OTHER, 5, UNDEFINED_ID)]
    want = wanted_default_acl(existing, 0o2770, 100)
    assert (USER, 5, 1) in want  # someone else's named entry survives
    assert (GROUP, 7, 100) in want and (GROUP, 1, 100) not in want
    assert (OTHER, 0, UNDEFINED_ID) in want
    assert (MASK, 7, UNDEFINED_ID) in want
    assert wanted_default_acl(want, 0o2770, 100) == want  # stable


def test_acl_text_is_getfacl_like():
    lines = acl_text(wanted_default_acl([], 0o2770, 0))
    assert lines == [
        "default:user::rwx",
        "default:group::rwx",
        "default:group:root:rwx",
        "default:mask::rwx",
        "default:other::---",
    ]


def test_owner_and_group_resolution():
    assert resolve_owner("root") == 0 and resolve_owner("0") == 0 and resolve_owner(None) is None
    assert resolve_group("root") == 0 and resolve_group("1234") == 1234 and resolve_group("") is None
    with pytest.raises(PermsError, match="no such user"):
        resolve_owner("no-such-user-xyz")
    with pytest.raises(PermsError, match="no such group"):
        resolve_group("no-such-group-xyz")


@pytest.mark.skipif(shutil.which("getfacl") is None, reason="needs getfacl")
def test_getfacl_reads_what_we_write(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.setxattr(fd, _perms.ACL_DEFAULT, encode_acl(wanted_default_acl([], 0o2750, 0)))
        assert _perms.read_acl(fd) == wanted_default_acl([], 0o2750, 0)
    finally:
        os.close(fd)
    out = subprocess.run(["getfacl", "-p", "--omit-header", "-d", str(d)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["user::rwx", "group::r-x", "group:root:r-x", "mask::r-x", "other::---"]
