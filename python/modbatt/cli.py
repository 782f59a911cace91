"""The ``modbatt`` command line: ``modbatt demo`` and ``modbatt bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from modbatt import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modbatt",
        description="The Modbatt secure dual-CAN communications stack.",
    )
    parser.add_argument("--version", action="version", version=f"modbatt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser(
        "demo",
        help="show the secure frame path at work on python-can virtual buses",
        description="Seal a command on CAN 1, carry it through the pack's gateway to CAN 2, "
        "open it at the module, send telemetry back, and show an attacker's replay and "
        "downgrade being dropped.",
    )

    bench = commands.add_parser(
        "bench",
        help="measure the frame path (figures, not a test)",
        description="Benchmarks that print figures. With no benchmark named, runs them all.",
    )
    bench_commands = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    frame_path = bench_commands.add_parser(
        "frame-path",
        help="seal, open, batch seal and gateway step, against baselines measured in the same run",
    )
    for sub in (bench, frame_path):
        sub.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
        sub.add_argument(
            "--quick",
            action="store_true",
            help="small sizes: checks that the benchmark runs, the figures mean little",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from modbatt.demo import run_demo

        run_demo(out=print)
        return 0
    if args.command == "bench":
        from modbatt.bench import frame_path, print_table, write_json

        figures = frame_path(quick=args.quick)
        print_table(figures, out=print)
        if args.json is not None:
            write_json(figures, args.json)
            print(f"figures written to {args.json}")
        return 0
    parser.print_help(sys.stderr)
    return 2
