"""`recfs sim`: run the PBX simulator in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trio

from recfs.sim.config import SimConfig
from recfs.sim.faults import FaultError, Faults
from recfs.sim.server import SimulatorInfo, run_simulator, write_ready_file


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _count(text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days > 0 or days == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of days > 0, got {text!r}")
    return days


def _errno(text: str) -> str:
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"an errno is digits, got {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recfs sim", description="Run a simulated Yeastar S-Series PBX.")
    p.add_argument("--listen", type=_listen, default=("0.0.0.0", 8088), metavar="HOST:PORT",
                   help="address to serve on (default 0.0.0.0:8088; port 0 = any free port)")
    p.add_argument("--data-dir", type=Path, help="recordings and CDRs (default: a temporary directory)")
    p.add_argument("--user", default="api", help="API user name (default api)")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password", help="API password (default recfs-demo)")
    pw.add_argument("--password-file", type=Path, help="read the API password from this file's first line")
    p.add_argument("--http", action="store_true", help="plain HTTP instead of TLS 1.2")
    p.add_argument("--cert-dir", type=Path, help="where the certificate lives (default DATA_DIR/tls)")
    p.add_argument("--cert-hostname", action="append", default=[], metavar="NAME",
                   help="extra DNS name or IP for the certificate (repeatable)")
    p.add_argument("--calls-per-minute", type=float, default=6.0, help="automatic calls (0 = only on request)")
    p.add_argument("--min-duration", type=int, default=3, help="shortest talk time, seconds")
    p.add_argument("--max-duration", type=int, default=120, help="longest talk time, seconds")
    p.add_argument("--token-ttl", type=float, default=1800.0, help="sliding token lifetime, seconds")
    p.add_argument("--random-ttl", type=float, default=30.0, help="download random lifetime, seconds")
    p.add_argument("--lockout-attempts", type=int, default=5, help="failed logins before an IP is locked out")
    p.add_argument("--lockout-seconds", type=float, default=600.0, help="length of a lock-out")
    p.add_argument("--report-retry-interval", type=float, default=5.0, help="seconds between report re-sends")
    p.add_argument("--report-retry-limit", type=int, default=120, help="re-sends of an unanswered report")
    p.add_argument("--utc-offset", type=int, help="PBX-local time, minutes east of UTC (default: this machine's)")
    p.add_argument("--keep-recordings", type=_count, metavar="N",
                   help="auto-cleanup: after each call, delete all but the newest N recordings "
                        "(CDRs are kept; default: keep all)")
    p.add_argument("--keep-days", type=_days, metavar="D",
                   help="auto-cleanup: delete recordings whose call is older than D days, checked "
                        "after each call and once a minute (CDRs are kept; default: keep all)")
    p.add_argument("--missing-errno", type=_errno, default="10023", metavar="ERRNO",
                   help="errno for a recording that is not there: 10023 (S-Series, default) "
                        "or 20014 (K2/S1000-era)")
    p.add_argument("--seed", type=int, help="make generated calls reproducible")
    p.add_argument("--series", choices=("s", "p"), default="s",
                   help="the API to speak: s = S-Series (default), p = P-Series OpenAPI (then "
                        "--user and --password are the API application's Client ID and Secret)")
    p.add_argument("--ws-idle", type=float, default=60.0,
                   help="P-Series: seconds without a client frame before an event socket is closed")
    p.add_argument("--resource-ttl", type=float, default=1800.0,
                   help="P-Series: life of a download_resource_url, seconds")
    p.add_argument("--token-cap", type=int, default=8,
                   help="P-Series: valid access tokens per application at once")
    p.add_argument("--list-max", type=int, default=1000,
                   help="P-Series: the most items a recording/list page holds")
    p.add_argument("--fault", action="append", default=[], metavar="NAME=VALUE[,times=N]",
                   help="switch a fault on from the start (repeatable)")
    p.add_argument("--accel-redirect", metavar="PREFIX",
                   help="behind a front server (nginx): answer a download whose random (P-Series: "
                        "resource URL and token) is good "
                        "with X-Accel-Redirect: PREFIX<name> and let the front server send the "
                        "file (download faults still answered here)")
    p.add_argument("--ready-file", type=Path, help="write base URL, CA file and credentials here as JSON once serving")
    p.add_argument("--log-level", default="INFO")
    return p


def _setup_logging(level: str) -> None:
    try:
        from recfs.logs import setup_logging
    except ImportError:  # the shared helper is optional for the simulator
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        setup_logging(level)
    # One line per API call comes from recfs.sim.api; httpx's own lines would
    # repeat each report push.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    password = "recfs-demo"
    if args.password is not None:
        password = args.password
    elif args.password_file is not None:
        password = args.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
    faults = Faults()
    for spec in args.fault:
        faults.parse_cli(spec)
    return SimConfig(
        host=args.listen[0],
        port=args.listen[1],
        data_dir=args.data_dir,
        user=args.user,
        password=password,
        tls=not args.http,
        cert_dir=args.cert_dir,
        cert_hostnames=args.cert_hostname,
        calls_per_minute=args.calls_per_minute,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        token_ttl=args.token_ttl,
        random_ttl=args.random_ttl,
        lockout_attempts=args.lockout_attempts,
        lockout_seconds=args.lockout_seconds,
        report_retry_interval=args.report_retry_interval,
        report_retry_limit=args.report_retry_limit,
        utc_offset=args.utc_offset,
        keep_recordings=args.keep_recordings,
        keep_days=args.keep_days,
        missing_errno=args.missing_errno,
        faults={name: {"value": v["value"], "times": v["times"]} for name, v in faults.snapshot().items()},
        seed=args.seed,
        accel_redirect=args.accel_redirect,
        series=args.series,
        ws_idle=args.ws_idle,
        resource_ttl=args.resource_ttl,
        token_cap=args.token_cap,
        list_max=args.list_max,
    )


def _announce(info: SimulatorInfo, ready_file: Path | None) -> None:
    print(f"PBX simulator ready: {info.base_url}", flush=True)
    print(f"  CA file:  {info.ca_file or '(plain HTTP)'}", flush=True)
    print(f"  user:     {info.user}", flush=True)
    print(f"  password: {info.password}", flush=True)
    print(f"  data dir: {info.data_dir}", flush=True)
    if ready_file is not None:
        write_ready_file(ready_file, info)


async def _serve(config: SimConfig, ready_file: Path | None) -> None:
    async with trio.open_nursery() as nursery:
        info: SimulatorInfo = await nursery.start(run_simulator, config)
        _announce(info, ready_file)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logging.getLogger(__name__).info("%s: stopping", signal.Signals(signum).name)
                info.stop()
                break


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.min_duration < 0 or args.max_duration < args.min_duration:
        parser.error("need 0 <= --min-duration <= --max-duration")
    try:
        config = config_from_args(args)
    except (FaultError, OSError, IndexError) as error:
        parser.error(str(error))
    _setup_logging(args.log_level)
    try:
        trio.run(_serve, config, args.ready_file)
    except OSError as error:
        print(f"recfs sim: {error}", file=sys.stderr)
        return 1
    finally:
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
