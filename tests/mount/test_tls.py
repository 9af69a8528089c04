"""TLS towards the PBX: verified by default, a pinned fingerprint, insecure only on
request, and a wrong server never sees the login."""

from __future__ import annotations

import hashlib
import ssl

import pytest

from recfs.service.mountpoint import EX_CONFIG
from tests.mount.harness import try_mount


def sim_fingerprint(sim) -> str:
    pem = open(sim.cafile).read()
    der = ssl.PEM_cert_to_DER_cert(pem)
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def test_pinned_fingerprint_works(sim, mount_factory):
    mount = mount_factory("prefetch=none", f"fingerprint={sim_fingerprint(sim)}")
    cdr = sim.call(duration=2)
    assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])


def test_wrong_fingerprint_never_logs_in(sim, tmp_path):
    # A configuration error: the mount command fails (tests/mount/test_first_contact.py
    # has the rest), and the wrong server never saw the login.
    wrong = "sha256:" + "00" * 32
    done = try_mount(sim, tmp_path / "w", f"fingerprint={wrong}")
    assert done.returncode == EX_CONFIG and f"does not match fingerprint={wrong}" in done.stderr
    assert sim.stats()["logins"] == 0


def test_without_cafile_the_self_signed_pbx_is_not_trusted(sim, tmp_path):
    done = try_mount(sim, tmp_path / "n", "cafile=")
    assert done.returncode == EX_CONFIG
    assert "not trusted (self-signed certificate" in done.stderr and "cafile=" in done.stderr
    assert sim.stats()["logins"] == 0


def test_insecure_works_and_is_warned_about(sim, tmp_path):
    from tests.mount.harness import Mount
    mount = Mount(sim, tmp_path / "i", "prefetch=none", "insecure")
    try:
        cdr = sim.call(duration=2)
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
        assert "TLS verification is OFF" in mount.log()
    finally:
        mount.cleanup()


@pytest.mark.parametrize("bad", ["sha1:00", "sha256:zz", "sha256:" + "0" * 10])
def test_malformed_fingerprint_is_refused(sim, tmp_path, bad):
    from tests.mount.harness import Mount
    with pytest.raises(AssertionError, match="fingerprint"):
        Mount(sim, tmp_path / "b", f"fingerprint={bad}").cleanup()


def test_proxy_settings_in_the_environment_are_not_used(sim, tmp_path):
    # A proxy would sit between the pin and the PBX (and see every random): recfs
    # talks to the PBX directly whatever the environment says.
    from tests.mount.harness import Mount
    dead = "http://127.0.0.1:9"
    mount = Mount(sim, tmp_path / "p", "prefetch=none", f"fingerprint={sim_fingerprint(sim)}",
                  env={"HTTPS_PROXY": dead, "https_proxy": dead, "ALL_PROXY": dead})
    try:
        cdr = sim.call(duration=2)
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
    finally:
        mount.cleanup()
