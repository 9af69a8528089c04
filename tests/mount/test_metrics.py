"""The Prometheus endpoint of a live mount, scraped for real."""

from __future__ import annotations

import httpx

from tests.mount.harness import free_port, metric as value, wait_for


def test_metrics_count_what_happened(sim, mount_factory):
    port = free_port()
    mount = mount_factory("prefetch=none", f"metrics=127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/metrics"
    cdr = sim.call(duration=3)
    path = mount.wait_file(cdr)
    data = path.read_bytes()
    wait_for(lambda: any(mount.cache_dir.joinpath("complete").iterdir()), what="cache file")
    path.read_bytes()  # the kernel may keep the pages; either way no new download
    text = httpx.get(url).text
    assert value(text, "recfs_reports_total", '{outcome="added"}') == 1
    assert value(text, "recfs_pbx_logins_total") >= 1
    assert value(text, "recfs_pbx_handshakes_total") == 1
    # login, get_random, download at least, each on its own connection: all but the
    # first TLS handshake resumed.
    full = value(text, "recfs_pbx_tls_handshakes_total", '{kind="full"}')
    resumed = value(text, "recfs_pbx_tls_handshakes_total", '{kind="resumed"}')
    assert full >= 1 and resumed >= 2
    assert value(text, "recfs_downloads_total", '{result="completed"}') == 1
    assert value(text, "recfs_download_bytes_total") == len(data)
    assert value(text, "recfs_cache_misses_total") == 1
    assert value(text, "recfs_cache_bytes") >= len(data)
    assert value(text, "recfs_recordings") == 1
    assert value(text, "recfs_read_seconds_count") >= 1
    assert value(text, "recfs_download_seconds_count") == 1
    # A refused report counts too.
    from tests.mount.harness import receiver_url
    httpx.post(receiver_url(mount), content=b"garbage")
    assert value(httpx.get(url).text, "recfs_reports_total", '{outcome="rejected"}') == 1
    assert "Lifespan" not in mount.log()
