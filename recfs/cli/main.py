"""The `recfs` command: mount, demo, sim. Its words are a contract that scripts and
fstab rely on; see the README."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# Only the standard library at import time: `recfs status` must start fast and run
# under any user's Python; each command imports what it needs.

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
    from recfs.service.config import OptionError, build_options, split_options
    from recfs.logs import setup_logging

    args = _mount_parser().parse_args(argv)
    try:
        opts = build_options(args.source, os.path.abspath(args.mountpoint),
                             split_options(*args.options))
    except OptionError as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 2
    foreground = args.foreground or opts.foreground

    from recfs.service import mount  # pyfuse3 is only needed from here on

    if foreground:
        setup_logging(opts.log_level)
        return mount.run(opts)

    def start_logging() -> None:
        log_file = opts.log_file or str(opts.resolved_state_dir() / "recfs.log")
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        # The log goes to the file only: the terminal gets one line from the
        # parent, "ready" or what went wrong (run_in_background).
        setup_logging(opts.log_level, files=[log_file], stderr=False)

    return mount.run_in_background(opts, start_logging)


def cmd_status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recfs status",
                                     description="Show what a running recfs mount is doing.")
    parser.add_argument("mountpoint")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    from recfs.cli.status import read_status, render
    try:
        status = read_status(args.mountpoint)
    except RuntimeError as exc:
        print(f"recfs: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    return 0


def cmd_demo(argv: list[str]) -> int:
    from recfs.cli.demo import main as demo_main
    return demo_main(argv)


def cmd_sim(argv: list[str]) -> int:
    from recfs.sim.cli import main as sim_main
    return sim_main(argv)


def mount_helper(argv: list[str] | None = None) -> int:
    """`mount.fuse.recfs SOURCE DIR [-sfnv] [-o OPTS] [-t TYPE]`: what mount(8) runs for
    `mount -t fuse.recfs` and fstab lines of type fuse.recfs."""
    argv = sys.argv[1:] if argv is None else argv
    positional: list[str] = []
    options: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "-o":
            options.append(next(words, ""))
        elif word.startswith("-o") and len(word) > 2:
            options.append(word[2:])
        elif word in ("-t", "-N"):
            next(words, None)
        elif word.startswith("-"):
            if "f" in word[1:]:
                return 0  # mount -f: "fake", do everything but the mount
            # -s (sloppy), -n (no mtab), -v (verbose): nothing to do for recfs
        else:
            positional.append(word)
    if len(positional) != 2:
        print("usage: mount.fuse.recfs SOURCE MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 2
    return cmd_mount([*positional, *(arg for o in options for arg in ("-o", o))])


def cmd_backfill(argv: list[str]) -> int:
    from recfs.cli.backfill import main as backfill_main
    return backfill_main(argv)


COMMANDS = {"mount": cmd_mount, "status": cmd_status, "demo": cmd_demo, "sim": cmd_sim, "backfill": cmd_backfill,
            # imported when run: `recfs status` must start fast (see the top)
            "archive": lambda argv: __import__("recfs.cli.archive", fromlist=["main"]).main(argv),
            "catalog": lambda argv: __import__("recfs.cli.catalog", fromlist=["main"]).main(argv)}

USAGE = """usage: recfs COMMAND ...

commands:
  mount SOURCE MOUNTPOINT [-f] [-o OPT,...]   mount a PBX's recordings (SOURCE: its URL), or
                                              a shared catalog's (SOURCE: postgresql://...)
  backfill SOURCE --since DATE [--until DATE] -o OPT,...
                                              import the PBX's call history (CDR)
  archive SOURCE [--verify] -o archive=URL,...
                                              put every recording into the archive (or check it)
  catalog copy SQLITE_FILE postgresql://... --name NAME
                                              move a catalog into a shared one (PostgreSQL)
  status MOUNTPOINT [--json]                  what a running mount is doing
  demo [MOUNTPOINT] [--series p]              built-in PBX simulator + mount, to try recfs
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
