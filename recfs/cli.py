"""The `recfs` command: mount, demo, sim. Its words are a contract that scripts and
fstab rely on; see the README."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from recfs.config import OptionError, build_options, split_options
from recfs.logs import setup_logging

log = logging.getLogger("recfs")


def _mount_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recfs mount",
        description="Mount a Yeastar S-Series PBX's call recordings read-only.")
    parser.add_argument("source", help="the PBX's base URL, e.g. https://pbx.example:8088")
    parser.add_argument("mountpoint")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground (logs to stderr)")
    parser.add_argument("-o", dest="options", action="append", default=[],
                        metavar="OPT[,OPT...]", help="mount options (see the README)")
    return parser


def cmd_mount(argv: list[str]) -> int:
    args = _mount_parser().parse_args(argv)
    raw: dict[str, str | bool] = {}
    for chunk in args.options:
        raw.update(split_options(chunk))
    try:
        opts = build_options(args.source, os.path.abspath(args.mountpoint), raw)
    except OptionError as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 2
    foreground = args.foreground or opts.foreground

    from recfs import mount  # pyfuse3 is only needed from here on

    if foreground:
        setup_logging(opts.log_level)
        return mount.run(opts)

    def start_logging() -> None:
        log_file = opts.log_file or str(opts.resolved_state_dir() / "recfs.log")
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        setup_logging(opts.log_level, files=[log_file])

    return mount.run_in_background(opts, start_logging)


def cmd_demo(argv: list[str]) -> int:
    from recfs.demo import main as demo_main
    return demo_main(argv)


def cmd_sim(argv: list[str]) -> int:
    from recfs.sim.cli import main as sim_main
    return sim_main(argv)


COMMANDS = {"mount": cmd_mount, "demo": cmd_demo, "sim": cmd_sim}

USAGE = """usage: recfs COMMAND ...

commands:
  mount SOURCE MOUNTPOINT [-f] [-o OPT,...]   mount a PBX's recordings
  demo [MOUNTPOINT]                           built-in PBX simulator + mount, to try recfs
  sim [...]                                   the PBX simulator alone

'recfs COMMAND --help' tells more."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from recfs import __version__
        print(f"recfs {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"recfs: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
