"""The ``modbatt`` command line: ``modbatt demo`` and ``modbatt bench``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from modbatt import __version__
from modbatt.api_bridge.client import DEFAULT_URL, ENV_TOKEN, ENV_URL


def default_db_path() -> Path:
    """Where `modbatt api-bridge serve` keeps its database unless told otherwise."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "modbatt" / "api-bridge.sqlite3"


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

    bridge = commands.add_parser(
        "api-bridge",
        help="the embedded Web4 API-Bridge: serve it, verify its ledger, or call one",
        description="modbatt's own API-Bridge (the public REST contract, persisted in SQLite "
        "with a hash-chained ledger), and a health check of any API-Bridge.",
    )
    bridge_commands = bridge.add_subparsers(dest="bridge_command", metavar="ACTION")
    serve = bridge_commands.add_parser("serve", help="run the API-Bridge server")
    serve.add_argument(
        "--db", type=Path, default=default_db_path(), help="SQLite file (default: %(default)s)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8082, help="port (default: %(default)s)")
    serve.add_argument(
        "--token",
        default=os.environ.get(ENV_TOKEN),
        help="require 'Authorization: Bearer TOKEN' on /api/v1 (default: $" + ENV_TOKEN + ")",
    )
    verify = bridge_commands.add_parser(
        "verify", help="check the ledger's hash chain and the state against it"
    )
    verify.add_argument(
        "--db", type=Path, default=default_db_path(), help="SQLite file (default: %(default)s)"
    )
    health = bridge_commands.add_parser("health", help="ask an API-Bridge whether it is up")
    health.add_argument("--url", help=f"base URL (default: ${ENV_URL} or {DEFAULT_URL})")
    health.add_argument("--token", help=f"bearer token (default: ${ENV_TOKEN})")

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
    if args.command == "api-bridge":
        return _api_bridge(args, parser)
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


def _api_bridge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.bridge_command == "serve":
        from modbatt.api_bridge.server import serve

        serve(args.db, args.host, args.port, args.token)
        return 0
    if args.bridge_command == "verify":
        from modbatt.api_bridge.store import Store

        if not args.db.exists():
            print(f"no database at {args.db}", file=sys.stderr)
            return 2
        store = Store(args.db)
        try:
            problem = store.verify()
        finally:
            store.close()
        if problem is not None:
            print(f"{args.db}: ledger check FAILED: {problem}", file=sys.stderr)
            return 1
        print(f"{args.db}: ledger intact")
        return 0
    if args.bridge_command == "health":
        from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig
        from modbatt.errors import ApiBridgeError

        config = ApiBridgeConfig.from_env(base_url=args.url, token=args.token)
        with ApiBridgeClient(config) as client:
            try:
                health = client.health()
            except ApiBridgeError as exc:
                print(f"API-Bridge at {config.base_url}: {exc}", file=sys.stderr)
                return 1
        print(
            f"API-Bridge at {config.base_url}: {health.status} ({health.service} {health.version})"
        )
        return 0
    parser.parse_args(["api-bridge", "--help"])
    return 2
