"""File handles, as an NFS server (or any open_by_handle_at user) keeps them: a
handle taken once opens the same recording after the kernel forgot the inode, and
after a remount, because inode numbers are stable."""

from __future__ import annotations

import ctypes
import os

from tests.ci import unavailable

AT_FDCWD = -100
MAX_HANDLE = 128


class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE)]


_libc = ctypes.CDLL(None, use_errno=True)


def handle_of(path) -> FileHandle:
    handle = FileHandle(handle_bytes=MAX_HANDLE)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(handle),
                               ctypes.byref(mount_id), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return handle


def read_by_handle(mountpoint, handle: FileHandle) -> bytes:
    mount_fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(handle), os.O_RDONLY)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(mount_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def forget_inodes() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")  # dentries and inodes: the kernel must ask recfs again


def test_a_file_handle_outlives_the_kernel_cache_and_a_remount(sim, mount_factory):
    if os.geteuid() != 0:
        unavailable("open_by_handle_at needs root (CAP_DAC_READ_SEARCH)")
    mount = mount_factory()  # prefetch=new: cached, so reads by handle need no PBX
    cdr = sim.call()
    path = mount.wait_file(cdr)
    expected = sim.recording_bytes(cdr["recording"])
    assert path.read_bytes() == expected
    handle = handle_of(path)
    forget_inodes()
    assert read_by_handle(mount.path, handle) == expected
    assert mount.unmount() == 0
    again = mount_factory(name="m")  # the same state and cache
    forget_inodes()
    assert read_by_handle(again.path, handle) == expected
    assert again.unmount() == 0
