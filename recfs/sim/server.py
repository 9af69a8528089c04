"""Running the simulator: TLS material, hypercorn on trio, the call generator and
report pushing, all in one nursery — the caller's, if it has one (`recfs demo`)."""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from recfs.sim.app import SimApp, SimulatedReset
from recfs.sim.config import SimConfig
from recfs.sim.openapi import OpenApiApp
from recfs.sim.simulator import Simulator
from recfs.sim.tls import ensure_certificate, restrict_to_tls12

__all__ = ["SimConfig", "SimulatorInfo", "run_simulator"]

log = logging.getLogger(__name__)


@dataclass
class SimulatorInfo:
    base_url: str  # e.g. https://127.0.0.1:41234 (no /api/...)
    host: str
    port: int
    ca_file: Path | None  # None with tls=False
    user: str
    password: str
    data_dir: Path
    simulator: Simulator = field(repr=False)
    _stop: trio.Event = field(repr=False, default_factory=trio.Event)

    def stop(self) -> None:
        """Ask run_simulator to shut down gracefully and return."""
        self._stop.set()

    def as_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "host": self.host,
            "port": self.port,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "user": self.user,
            "password": self.password,
            "data_dir": str(self.data_dir),
        }


class _Tls12Config(HypercornConfig):
    def create_ssl_context(self) -> ssl.SSLContext | None:
        context = super().create_ssl_context()
        return restrict_to_tls12(context) if context is not None else None


class _QuietReset(logging.Filter):
    # A SimulatedReset is a fault doing its job, not an error worth a traceback.
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BaseExceptionGroup):
            return not exc.subgroup(SimulatedReset)
        return not isinstance(exc, SimulatedReset)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    host = host.strip("[]")
    return f"[{host}]" if ":" in host else host


def _bound_port(binds: list[str]) -> int:
    return int(binds[0].rsplit(":", 1)[1])


async def run_simulator(config: SimConfig, *, task_status: trio.TaskStatus[SimulatorInfo] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled or until ``info.stop()``; started() gets a SimulatorInfo."""
    temp_dir: str | None = None
    if config.data_dir is None:
        temp_dir = tempfile.mkdtemp(prefix="recfs-sim-")
        data_dir = Path(temp_dir)
    else:
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
    try:
        sim = Simulator(config, data_dir)
        hconfig = _Tls12Config()
        host = config.host.strip("[]")
        hconfig.bind = [f"[{host}]:{config.port}" if ":" in host else f"{host}:{config.port}"]
        hconfig.include_server_header = False  # the app sends Boa's
        hconfig.alpn_protocols = ["http/1.1"]
        hconfig.graceful_timeout = 1.0
        hconfig.accesslog = None
        error_logger = logging.getLogger("recfs.sim.hypercorn")
        if not any(isinstance(f, _QuietReset) for f in error_logger.filters):
            error_logger.addFilter(_QuietReset())
        hconfig.errorlog = error_logger
        ca_file: Path | None = None
        if config.tls:
            cert_dir = Path(config.cert_dir) if config.cert_dir else data_dir / "tls"
            names = list(config.cert_hostnames)
            if host not in ("", "0.0.0.0", "::"):
                names.append(host)
            files = await trio.to_thread.run_sync(ensure_certificate, cert_dir, names)
            hconfig.certfile, hconfig.keyfile = str(files.cert), str(files.key)
            ca_file = files.cert
        scheme = "https" if config.tls else "http"

        async with trio.open_nursery() as nursery:
            sim.nursery = nursery
            stop = trio.Event()
            served = trio.Event()

            async def serve_then_flag(*, task_status: trio.TaskStatus[list[str]]) -> None:
                try:
                    # SimApp is a plain ASGI 3 callable; hypercorn's types name its own scopes.
                    app = SimApp(sim)
                    served_app = OpenApiApp(sim, app) if config.series == "p" else app
                    await serve(served_app, hconfig, shutdown_trigger=stop.wait,  # type: ignore[arg-type]
                                task_status=task_status)
                finally:
                    served.set()

            binds = await nursery.start(serve_then_flag)
            port = _bound_port(binds)
            url_host = _url_host(config.host)
            info = SimulatorInfo(
                base_url=f"{scheme}://{url_host}:{port}",
                host=url_host.strip("[]"),
                port=port,
                ca_file=ca_file,
                user=config.user,
                password=config.password,
                data_dir=data_dir,
                simulator=sim,
                _stop=stop,
            )
            nursery.start_soon(sim.call_loop)
            nursery.start_soon(sim.cleanup_loop)
            log.info("PBX simulator (%s-Series API) listening on %s", config.series.upper(),
                     info.base_url)
            task_status.started(info)
            await served.wait()
            # Report retries and the call generator end with the server.
            nursery.cancel_scope.cancel()
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def write_ready_file(path: Path, info: SimulatorInfo) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info.as_json(), indent=2) + "\n")
    tmp.replace(path)  # appears whole: tests poll for it


