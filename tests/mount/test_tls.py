"""TLS towards the PBX: verified by default, a pinned fingerprint, insecure only on
request, and a wrong server never sees the login."""

from __future__ import annotations

import hashlib
import ssl

import pytest

from conftest import wait_for


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
    from conftest import Mount
    wrong = "sha256:" + "00" * 32
    mount = Mount(sim, tmp_path / "w", "prefetch=none", f"fingerprint={wrong}")
    try:
        wait_for(lambda: "pinned fingerprint" in mount.log(), 20, what="pin refusal in the log")
        assert sim.stats()["logins"] == 0
    finally:
        mount.cleanup()


def test_without_cafile_the_self_signed_pbx_is_not_trusted(sim, tmp_path):
    from conftest import Mount
    mount = Mount(sim, tmp_path / "n", "prefetch=none", "cafile=")
    try:
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in mount.log() or
                 "certificate verify failed" in mount.log(), 20, what="TLS refusal")
        assert sim.stats()["logins"] == 0
    finally:
        mount.cleanup()


def test_insecure_works_and_is_warned_about(sim, tmp_path):
    from conftest import Mount
    mount = Mount(sim, tmp_path / "i", "prefetch=none", "insecure")
    try:
        cdr = sim.call(duration=2)
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
        assert "TLS verification is OFF" in mount.log()
    finally:
        mount.cleanup()


@pytest.mark.parametrize("bad", ["sha1:00", "sha256:zz", "sha256:" + "0" * 10])
def test_malformed_fingerprint_is_refused(sim, tmp_path, bad):
    from conftest import Mount
    with pytest.raises(AssertionError, match="fingerprint"):
        Mount(sim, tmp_path / "b", f"fingerprint={bad}").cleanup()


def test_proxy_settings_in_the_environment_are_not_used(sim, tmp_path):
    # A proxy would sit between the pin and the PBX (and see every random): recfs
    # talks to the PBX directly whatever the environment says.
    from conftest import Mount
    dead = "http://127.0.0.1:9"
    mount = Mount(sim, tmp_path / "p", "prefetch=none", f"fingerprint={sim_fingerprint(sim)}",
                  env={"HTTPS_PROXY": dead, "https_proxy": dead, "ALL_PROXY": dead})
    try:
        cdr = sim.call(duration=2)
        assert mount.wait_file(cdr).read_bytes() == sim.recording_bytes(cdr["recording"])
    finally:
        mount.cleanup()
