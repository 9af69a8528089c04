import pytest

from recfs.service import mount
from recfs.service.config import build_options


def opts(**raw):
    return build_options("https://pbx.example:8088", "/mnt", raw, {"RECFS_PASSWORD": "x"})


def test_default_permissions_always_and_read_only():
    options = mount.fuse_options(opts())
    assert {"ro", "default_permissions", "subtype=recfs"} <= options
    assert "allow_other" not in options


def test_allow_other_comes_with_default_permissions(monkeypatch):
    monkeypatch.setattr(mount, "_user_allow_other", lambda: True)
    monkeypatch.setattr(mount.os, "getuid", lambda: 1000)
    options = mount.fuse_options(opts(allow_other=True))
    assert {"allow_other", "default_permissions"} <= options


def test_allow_other_without_user_allow_other_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(mount, "_user_allow_other", lambda: False)
    monkeypatch.setattr(mount.os, "getuid", lambda: 1000)
    with pytest.raises(mount.MountError, match="user_allow_other.*/etc/fuse.conf"):
        mount.fuse_options(opts(allow_other=True))
