"""The views beside the date tree, and the CDR as extended attributes, through real
tools: the same inode under every name, and rsync -aX keeping the attributes."""

from __future__ import annotations

import os
import subprocess

from tests.mount.harness import wait_for


def test_views_share_inodes_with_the_date_tree(sim, mount_factory):
    mount = mount_factory()  # prefetch=new: sizes are known before anyone looks
    cdr = sim.call(duration=2, caller="1007", callee="0687654321", type="Outbound")
    path = mount.wait_file(cdr)
    ino = path.stat().st_ino
    year, month, day = cdr["timestart"][:10].split("-")
    by_type = mount.p("by-type", "Outbound", year, month, day, cdr["recording"])
    by_caller = mount.p("by-number", "1007", cdr["recording"])
    by_callee = mount.p("by-number", "0687654321", cdr["recording"])
    assert {by_type.stat().st_ino, by_caller.stat().st_ino, by_callee.stat().st_ino} == {ino}
    assert by_caller.read_bytes() == sim.recording_bytes(cdr["recording"])
    assert "1007" in os.listdir(mount.p("by-number"))
    assert "Outbound" in os.listdir(mount.p("by-type"))
    found = subprocess.run(["find", str(mount.path), "-inum", str(ino)], capture_output=True,
                           text=True, check=True).stdout.split()
    assert len(found) == 4 == path.stat().st_nlink


def test_copying_the_whole_mount_keeps_one_copy_of_each_recording(sim, mount_factory):
    # The views name each recording four times; as hard links, tools that copy or
    # archive trees keep its bytes once.
    mount = mount_factory()
    cdrs = [sim.call(duration=3, caller=f"100{i}", callee="0612345678", type="Inbound")
            for i in range(3)]
    for cdr in cdrs:
        mount.wait_file(cdr)
    recordings = sum(len(sim.recording_bytes(c["recording"])) for c in cdrs)
    copy = mount.workdir / "cp-a"
    subprocess.run(["cp", "-a", f"{mount.path}/.", str(copy)], check=True, timeout=60)
    du = int(subprocess.run(["du", "-sb", str(copy)], capture_output=True, text=True,
                            check=True).stdout.split()[0])
    assert recordings <= du < recordings + 256 * 1024
    for cdr in cdrs:
        copied = copy / "by-number" / cdr["callfrom"] / cdr["recording"]
        assert copied.stat().st_nlink == 4
        assert copied.read_bytes() == sim.recording_bytes(cdr["recording"])
    archive = mount.workdir / "all.tar"
    subprocess.run(["tar", "-C", str(mount.path), "-cf", str(archive), "."], check=True,
                   timeout=60)
    assert recordings <= archive.stat().st_size < recordings + 256 * 1024
    listing = subprocess.run(["tar", "-tvf", str(archive)], capture_output=True, text=True,
                             check=True).stdout
    assert listing.count(" link to ") == 3 * len(cdrs)


def test_rsync_aX_keeps_the_cdr_attributes(sim, mount_factory):
    mount = mount_factory()
    cdr = sim.call(duration=2)
    path = mount.wait_file(cdr)
    # The verified download (prefetch=new) adds user.recfs.sha256: wait for it, or
    # rsync may copy the attributes from before it and the comparison race it.
    wait_for(lambda: "user.recfs.sha256" in os.listxattr(path), 10, what="the SHA-256")
    target = mount.workdir / "copy"
    target.mkdir()
    copy = target / cdr["recording"]
    subprocess.run(["rsync", "-aX", str(path), str(copy)], check=True, timeout=60)
    source_attrs = subprocess.run(["getfattr", "-d", str(path)], capture_output=True, text=True,
                                  check=True).stdout.splitlines()[1:]
    copied_attrs = subprocess.run(["getfattr", "-d", str(copy)], capture_output=True, text=True,
                                  check=True).stdout.splitlines()[1:]
    assert source_attrs == copied_attrs
    assert f'user.recfs.callee="{cdr["callto"]}"' in copied_attrs
    assert 'user.recfs.status="ANSWERED"' in copied_attrs or cdr["status"] != "ANSWERED"
    # The mount's own state is readable by name on the root, but never copied.
    root_listing = subprocess.run(["getfattr", "-d", str(mount.path)], capture_output=True,
                                  text=True).stdout
    assert "user.recfs.mount" not in root_listing
    assert subprocess.run(["getfattr", "-n", "user.recfs.mount", str(mount.path)],
                          capture_output=True, text=True, check=True).stdout.count("pbx") == 1
    assert copy.read_bytes() == sim.recording_bytes(cdr["recording"])


def test_views_none_leaves_only_the_date_tree(sim, mount_factory):
    mount = mount_factory("views=none")
    cdr = sim.call(duration=2)
    mount.wait_file(cdr)
    assert sorted(os.listdir(mount.path)) == [cdr["timestart"][:4]]
