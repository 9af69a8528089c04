"""A PBX that is not the bottleneck: Debian's nginx in front of `recfs sim`.

The API (login, get_random, heartbeat, ...) is proxied to the simulator, so the
handshake rules stay the simulator's (one-shot randoms, 30 s, tokens). A download
goes to the simulator too, which redeems the random and, started with
`--accel-redirect /_recordings/`, answers with `X-Accel-Redirect` and no body; nginx
then sends the recording's bytes itself from the simulator's recordings directory.
The same for `recfs sim --series p`: /openapi/ (the event WebSocket included) and the
resource URLs under /api/download/ go to the simulator, which checks the token and
the resource URL before it hands the file to nginx.
TLS 1.2 only, with the simulator's certificate, and `Connection: close` on every
response (keepalive_timeout 0), as the PBX does. No access log, and only critical
errors (nginx's error lines quote the request line): URLs carry randoms and tokens.
Listens on 127.0.0.1 only; workers run as the benchmark's user (root: the simulator's
directories are private).

Used by scripts/bench_content.py and scripts/bench_pseries.py (imported from this
folder); nginx comes from scripts/setup (Debian's nginx-light).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ACCEL_PREFIX = "/_recordings/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxFront:
    """nginx serving *sim* (tests.mount.harness.Sim started with
    `--accel-redirect ACCEL_PREFIX`) on its own 127.0.0.1 port; `url` replaces the
    simulator's for the clients being measured. *workers*: nginx worker processes."""

    def __init__(self, sim, workdir: Path, workers: int = 1):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.sim = sim
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("client", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / sub).mkdir(exist_ok=True)
        sim_port = int(sim.url.rsplit(":", 1)[1])
        tls = Path(sim.cafile).parent
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        recordings = (Path(sim.data_dir) / "recordings").resolve()
        # To the simulator, which keeps every check; it names the file to send in
        # X-Accel-Redirect only when told this server will send it.
        to_sim = f"""proxy_pass https://127.0.0.1:{sim_port};
            proxy_ssl_trusted_certificate {sim.cafile};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;  # nginx matches DNS names only
            proxy_ssl_session_reuse on;
            proxy_pass_header Server;
            proxy_set_header X-Sendfile-Type X-Accel-Redirect;"""
        conf = workdir / "nginx.conf"
        conf.write_text(f"""
daemon off;
{"user root root;" if os.geteuid() == 0 else ""}
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {workdir}/error.log crit;
events {{ worker_connections 512; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 0;
    client_body_temp_path {workdir}/client;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_protocols TLSv1.2;
        ssl_certificate {tls}/sim-cert.pem;
        ssl_certificate_key {tls}/sim-key.pem;
        ssl_session_cache shared:tls:1m;
        location /api/ {{
            {to_sim}
        }}
        location /openapi/ {{
            {to_sim}
        }}
        location = /openapi/v1.0/subscribe {{
            {to_sim}
            proxy_http_version 1.1;  # the event WebSocket: the upgrade goes through
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection upgrade;
            proxy_read_timeout 1h;  # the simulator's idle limit is the one that counts
        }}
        location {ACCEL_PREFIX} {{
            internal;
            alias {recordings}/;
            default_type application/octet-stream;
            types {{ }}
            output_buffers 2 256k;
        }}
    }}
}}
""")
        self._log = open(workdir / "nginx.out", "wb")
        self.proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start: " + (workdir / "error.log").read_text(
                        errors="replace") if (workdir / "error.log").exists() else "nginx did not start")
                time.sleep(0.02)

    def fronted(self):
        """The simulator as clients should see it: everything the harness needs from
        a Sim, with this server's URL."""
        return _Fronted(self.sim, self.url)

    def close(self) -> None:
        from tests.mount.harness import stop_process
        stop_process(self.proc, signal.SIGQUIT)  # SIGQUIT: nginx's graceful stop
        self._log.close()


class _Fronted:
    def __init__(self, sim, url: str):
        self._sim = sim
        self.url = url

    def __getattr__(self, name: str):
        return getattr(self._sim, name)
