#!/usr/bin/env python3
"""Ingestion throughput: concurrent clients post distinct NewCdr reports to a real
mount's receiver (a real `recfs mount` against `recfs sim`); every report is counted
only once answered 200, i.e. committed.

    .venv/bin/python scripts/bench_ingest.py [--reports 20000] [--clients 64]
        [--catalog postgresql] [--rounds N]

With --catalog postgresql, a second mount writes the shared catalog (a PostgreSQL
this script starts, 127.0.0.1 only) in the same run: a report is answered only once
its row committed in PostgreSQL and reached the mount's replica.

Clients run in a separate process (asyncio, raw HTTP/1.1, one connection per report
as the PBX does) so that they do not share the mount's CPU time slice in Python.

In the same run, the same clients first post to bare servers that read the body and
answer 200 without doing anything (hypercorn, and recfs.http.server which serves the
receiver): the figure to compare with, on a machine whose load varies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # the tests package

from tests.mount.harness import Mount, Sim, receiver_url
from tests.postgres import PostgresServer

# Calls of the last day, as a live PBX reports them. (Calls of years ago would move
# the catalog's last_seen back, and the mount's start-up back-fill would then walk
# every day since, at the PBX, during the measurement.)
BASE_EPOCH = int(time.time()) - 86400


def report(i: int) -> bytes:
    epoch = BASE_EPOCH + i % 80000
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(epoch + 8))
    body = {"event": "NewCdr", "callid": f"{epoch}.{i}",
            "timestart": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)),
            "callfrom": "0612345678", "callto": "2001", "type": "Inbound", "status": "ANSWERED",
            "callduraction": "47", "talkduraction": "39",
            "recording": f"{stamp}-{epoch}.{i}-0612345678-2001-Inbound.wav"}
    return json.dumps(body).encode()


async def _post(host: str, port: int, path: str, body: bytes) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: WebAPI\r\n"
                 b"Content-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def _clients(url: str, first: int, count: int, clients: int) -> list[int]:
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.rpartition(":")
    queue = iter(range(first, first + count))
    acked: list[int] = []

    async def worker():
        for i in queue:
            try:
                if await _post(host, int(port), "/" + path, report(i)) == 200:
                    acked.append(i)
            except OSError:
                pass

    await asyncio.gather(*(worker() for _ in range(clients)))
    return acked


def client_process(url, first, count, clients, out):
    out.put(asyncio.run(_clients(url, first, count, clients)))


def post_burst(url: str, count: int, clients: int, processes: int = 1, first: int = 0) -> list[int]:
    out = multiprocessing.Queue()
    share = count // processes
    procs = [multiprocessing.Process(target=client_process,
                                     args=(url, first + k * share, share, clients // processes, out))
             for k in range(processes)]
    for p in procs:
        p.start()
    acked: list[int] = []
    for _ in procs:
        acked += out.get()
    for p in procs:
        p.join()
    return acked


async def _bare_app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        from recfs.http.asgi import lifespan
        await lifespan(receive, send)
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"ok\n"})


def _bare_server(kind: str, ports) -> None:
    import trio

    from recfs.http.asgi import bind_socket
    from recfs.http.server import serve_asgi

    sock = bind_socket("127.0.0.1", 0)
    ports.put(sock.getsockname()[1])
    serve = _serve_hypercorn if kind == "hypercorn" else serve_asgi
    trio.run(serve, _bare_app, sock, trio.Event(), "bench.bare")


async def _serve_hypercorn(app, sock, stop, log_name: str) -> None:
    """The general-purpose ASGI server the receiver is compared with."""
    import logging

    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger(log_name)
    config.keep_alive_timeout = 5
    await serve(app, config, shutdown_trigger=stop.wait, mode="asgi")


def bare_rate(kind: str, count: int, clients: int, processes: int) -> float:
    """Reports/s that a server doing nothing but answer 200 takes from these clients."""
    ports = multiprocessing.Queue()
    server = multiprocessing.Process(target=_bare_server, args=(kind, ports), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=30)}/bare"
        post_burst(url, 200, 8)  # warm-up
        started = time.perf_counter()
        acked = post_burst(url, count, clients, processes)
        return len(acked) / (time.perf_counter() - started)
    finally:
        server.kill()
        server.join()


def start_mount(sim: Sim, workdir: Path, *options: str) -> tuple[Mount, str]:
    """A mount of *sim* and its receiver's URL. Quiet (WARNING) unless the receiver's
    address is only logged at INFO: then it is mounted again with the default level."""
    mount = Mount(sim, workdir, "prefetch=none", "log_level=WARNING", *options)
    if "receiving" in mount.log():
        return mount, receiver_url(mount)
    mount.cleanup()
    mount = Mount(sim, workdir, "prefetch=none", *options)
    return mount, receiver_url(mount)


def sqlite_count(mount: Mount) -> int:
    db = sqlite3.connect(mount.state_dir / "catalog.sqlite")
    try:
        return db.execute("SELECT count(*) FROM recordings").fetchone()[0]
    finally:
        db.close()


def postgres_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as db:
        row = db.execute("SELECT count(*) FROM recfs.recordings").fetchone()
        return int(row[0]) if row else 0


@dataclass
class Catalogs:
    """Where the mounts under test keep their catalog: the SQLite file in state_dir,
    and (with --catalog postgresql) a new database of a PostgreSQL of our own."""

    postgres: PostgresServer | None = None

    def kinds(self) -> list[str]:
        return ["sqlite"] + (["postgresql"] if self.postgres else [])

    def options(self, kind: str) -> tuple[list[str], Callable[[Mount], int]]:
        """The mount options for a catalog of *kind*, and how to count its rows."""
        if kind == "sqlite":
            return [], sqlite_count
        assert self.postgres is not None
        url = self.postgres.new_database()  # a new, empty catalog for each mount
        return [f"catalog={url}", "catalog_name=bench"], lambda _: postgres_count(url)


def ingest_rate(sim: Sim, workdir: Path, kind: str, catalogs: Catalogs,
                args: argparse.Namespace) -> float:
    """Reports/s a new mount with a catalog of *kind* acknowledges (each after its
    commit: into PostgreSQL and the replica for the shared catalog)."""
    options, count = catalogs.options(kind)
    mount = None
    try:
        mount, url = start_mount(sim, workdir, *options)
        post_burst(url, 200, 8, first=10_000_000)  # warm-up
        started = time.perf_counter()
        acked = post_burst(url, args.reports, args.clients, args.processes)
        elapsed = time.perf_counter() - started
        stored = count(mount)
        rate = len(acked) / elapsed
        print(f"{kind}: {len(acked)} of {args.reports} reports acknowledged in {elapsed:.2f} s: "
              f"{rate:.0f} reports/s ({args.clients} concurrent clients, {os.cpu_count()} CPUs); "
              f"{stored} in the catalog")
        mount.unmount()
        return rate
    finally:
        if mount is not None:
            mount.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--catalog", choices=["sqlite", "postgresql"], default="sqlite",
                    help="postgresql: also measure a mount writing a shared catalog (a "
                         "PostgreSQL of this script's own, on 127.0.0.1), next to SQLite")
    ap.add_argument("--rounds", type=int, default=1,
                    help="mounts of each catalog, alternating (a new catalog each)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the bare servers (the figure then stands alone)")
    args = ap.parse_args()
    baselines = {}
    if not args.no_baseline:
        for kind in ("hypercorn", "http11"):
            baselines[kind] = bare_rate(kind, args.reports, args.clients, args.processes)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        work = Path(tmp)
        catalogs = Catalogs()
        if args.catalog == "postgresql":
            catalogs.postgres = PostgresServer.start(work / "postgres")
            cleanup.callback(catalogs.postgres.stop)
        sim = Sim(work / "sim")
        cleanup.callback(sim.close)
        rates: dict[str, list[float]] = {kind: [] for kind in catalogs.kinds()}
        for k in range(args.rounds):
            for kind in catalogs.kinds():
                rates[kind].append(ingest_rate(sim, work / f"{kind}-{k}", kind, catalogs, args))
        rate = {kind: statistics.median(found) for kind, found in rates.items()}
        if "postgresql" in rate:
            print(f"shared catalog (PostgreSQL): {rate['postgresql']:.0f} reports/s, "
                  f"{rate['postgresql'] / rate['sqlite']:.0%} of the SQLite catalog's "
                  f"{rate['sqlite']:.0f} (medians of {args.rounds}; goal >= 1000 reports/s)")
        for kind, base in baselines.items():
            print(f"baseline: bare {kind} answering 200: {base:.0f} requests/s (recfs is "
                  + ", ".join(f"{r / base:.0%} of it with {c}" for c, r in rate.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
