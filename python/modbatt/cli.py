"""The ``modbatt`` command line: ``modbatt demo`` and ``modbatt bench``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import platformdirs

from modbatt import __version__
from modbatt.api_bridge.client import DEFAULT_URL, ENV_TOKEN, ENV_URL
from modbatt.traffic import LOG_HELP

CONFIG_HELP = (
    "a TOML file with this command's options (keys as the options are spelled, e.g. "
    'state-dir = "pack"); options given here win over it'
)
# What the exit status says, for scripts (also in `modbatt --help` and docs/OPERATIONS.md).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API_BRIDGE, EXIT_STATE, EXIT_BUS = 0, 1, 2, 3, 4, 5
EXIT_INTERNAL, EXIT_INTERRUPTED = 70, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the operation failed (refused, unanswered, or a check did not pass)",
    EXIT_USAGE: "a mistake on the command line or in a --config file",
    EXIT_API_BRIDGE: "the API-Bridge could not be reached or answered wrongly",
    EXIT_STATE: "local state (keystore, flash) damaged",
    EXIT_BUS: "a CAN bus could not be opened",
    EXIT_INTERNAL: "an internal error (a bug: run again with -v and report the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

# the parsers that take --config, by command: main() applies the file to them
ROLE_PARSERS: dict[str, argparse.ArgumentParser] = {}

BUS_HELP = (
    "INTERFACE:CHANNEL[@BITRATE], e.g. virtual:modules, udp_multicast:239.74.163.10, "
    "socketcan:can1@500000, pcan:PCAN_USBBUS1@500000, slcan:/dev/ttyACM0@500000; or 'config' "
    "for python-can's configuration file"
)


def default_state_dir(role: str) -> Path:
    """Where a role keeps its state unless told otherwise.

    The platform's data directory: ``~/.local/share/modbatt/ROLE`` on Linux (or under
    ``$XDG_DATA_HOME``), the local application data folder on Windows and macOS.
    """
    return platformdirs.user_data_path("modbatt", appauthor=False) / role


def default_db_path() -> Path:
    """Where `modbatt api-bridge serve` keeps its database unless told otherwise."""
    return platformdirs.user_data_path("modbatt", appauthor=False) / "api-bridge.sqlite3"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modbatt",
        description="The Modbatt secure dual-CAN communications stack.",
        epilog="exit status: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"modbatt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="the whole system in one process: API-Bridge, pack, modules and app",
        description="The embedded API-Bridge, a pack controller, N battery modules and the "
        "app on two virtual buses: discovery, bootstrap, pairing, encrypted operation with "
        "live telemetry, a lost flash and its recovery, then a summary.",
    )
    demo.add_argument(
        "--modules", type=int, default=4, help="battery modules, 1-31 (default: %(default)s)"
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of operational telemetry (default: %(default)s)",
    )
    demo.add_argument("--json", type=Path, metavar="FILE", help="write the summary here")
    demo.add_argument(
        "--interface",
        choices=("virtual", "udp_multicast"),
        default="virtual",
        help="virtual: one process; udp_multicast: each role in its own process",
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

    commands.add_parser("dbc", help="print the path of the module bus DBC file")

    module = commands.add_parser("module", help="the battery module simulator")
    module_commands = module.add_subparsers(dest="module_command", metavar="ACTION")
    module_run = module_commands.add_parser(
        "run",
        help="simulate one or more battery modules on a bus",
        description="Behaves as the Modbatt module firmware on the module bus: announces, "
        "takes the id the pack assigns, reports status and cell details.",
    )
    module_run.add_argument("--can", metavar="BUS", help="(required) " + BUS_HELP)
    module_run.add_argument("--unique-id", type=int, help="(required) the first module's unique id")
    module_run.add_argument(
        "--cells", type=int, default=14, help="cells per module (default: %(default)s)"
    )
    module_run.add_argument(
        "--count",
        type=int,
        default=1,
        help="modules in this process, with consecutive unique ids (default: %(default)s)",
    )
    module_run.add_argument("--fd", action="store_true", help="open the bus as CAN FD")
    module_run.add_argument(
        "--state-dir",
        type=Path,
        help="keep each module's flash store "
        "(pairing keys) here; without it, pairings are forgotten on exit",
    )
    module_run.add_argument("--duration", type=float, help="stop after this many seconds")
    module_run.add_argument("--log", type=Path, metavar="FILE", help=LOG_HELP)

    pack = commands.add_parser("pack", help="the pack controller")
    pack_commands = pack.add_subparsers(dest="pack_command", metavar="ACTION")
    pack_run = pack_commands.add_parser(
        "run",
        help="run the pack controller (for now: its module side on CAN 2)",
        description="Registers announcing modules (ids 1-31), sends the max-state heartbeat, "
        "watches for silent and returning modules and prints the module table as it changes.",
    )
    pack_run.add_argument(
        "--can1",
        metavar="BUS",
        help="the app bus; without it only the module side runs. " + BUS_HELP,
    )
    pack_run.add_argument("--can2", metavar="BUS", help="(required) the module bus")
    pack_run.add_argument(
        "--state-dir",
        type=Path,
        help="the pack's flash and audit log (default: the platform's data directory, "
        "e.g. ~/.local/share/modbatt/pack)",
    )
    pack_run.add_argument(
        "--serial",
        default="PACK-0001",
        help="the pack controller's serial number (default: %(default)s)",
    )
    pack_run.add_argument("--fd", action="store_true", help="open the buses as CAN FD")
    pack_run.add_argument("--duration", type=float, help="stop after this many seconds")
    pack_run.add_argument("--log", type=Path, metavar="FILE", help=LOG_HELP)
    for role_parser in (module_run, pack_run):
        role_parser.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    ROLE_PARSERS.update({"module": module_run, "pack": pack_run})

    _add_app_parsers(commands)

    _add_bench_parser(commands)
    _add_soak_parser(commands)
    _add_decode_parser(commands)
    _add_verbosity(parser)
    return parser


def _add_app_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from modbatt.app_cli import add_app_parser, add_monitor_parser

    ROLE_PARSERS["app"] = add_app_parser(commands, BUS_HELP, CONFIG_HELP)
    ROLE_PARSERS["monitor"] = add_monitor_parser(commands, BUS_HELP, CONFIG_HELP)


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-v and -q on every command and subcommand, wherever they are typed."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="say more: -v what the roles do, -vv everything; tracebacks on errors",
    )
    parser.add_argument(
        "-q", "--quiet", action="count", default=argparse.SUPPRESS, help="errors only"
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_verbosity(sub)


def _add_bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    gateway = bench_commands.add_parser(
        "gateway",
        help="the whole bridge (python-can in, Rust gateway, python-can out) against can.bridge",
    )
    for sub in (bench, frame_path, gateway):
        sub.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
        sub.add_argument(
            "--quick",
            action="store_true",
            help="small sizes: checks that the benchmark runs, the figures mean little",
        )


def _add_decode_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    decode = commands.add_parser(
        "decode",
        help="read a traffic log back through the protocol (decrypted where keys allow)",
        description="Every frame of a log written with --log (or any BLF, ASC or candump "
        "log of modbatt buses), named: module messages through the DBC, pack status and "
        "alerts, control and pairing messages reassembled from ISO-TP. With --keystore, "
        "sealed traffic is decrypted from the session handshakes in the log.",
    )
    decode.add_argument("file", type=Path, metavar="FILE", help="the log: .blf, .asc or .log")
    decode.add_argument(
        "--keystore",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a state directory of the app, the pack or a module (may be given again)",
    )


def _add_soak_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    soak = commands.add_parser(
        "soak",
        help="both buses at full rate through a running pack: loss, order, memory, CPU",
        description=(
            "Bridge sealed traffic on both buses through a pack controller at the full rate "
            "of a classic 1 Mbit/s bus (optionally with a garbage flood) and check that no "
            "message is lost or reordered and memory stays flat. Exit code 1 when not."
        ),
    )
    soak.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    soak.add_argument(
        "--rate", type=int, default=6250, help="frames/s of sealed traffic per bus (6250)"
    )
    soak.add_argument(
        "--garbage-rate", type=int, default=0, help="frames/s of random frames per bus (0)"
    )
    soak.add_argument("--modules", type=int, default=2, help="module links (default 2)")
    soak.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (EXIT_CODES)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None:
        args = _with_config(parser, args, argv)
    verbose = _set_up_logging(args)
    try:
        return _run(parser, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        code, hint = _classify(exc)
        if verbose and code == EXIT_INTERNAL:
            raise
        print(f"modbatt: {exc}", file=sys.stderr)
        print(hint, file=sys.stderr)
        return code


def _set_up_logging(args: argparse.Namespace) -> bool:
    """-v: what the roles do (INFO), -vv: everything (DEBUG), -q: errors only."""
    verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        max(-1, min(verbosity, 2)), logging.DEBUG
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # can-isotp warns about every lost frame of a transfer; modbatt retries and says so itself
    logging.getLogger("isotp").setLevel(logging.DEBUG if verbosity >= 2 else logging.ERROR)
    return verbosity > 0


def _classify(exc: BaseException) -> tuple[int, str]:
    """The exit status of a failure, and what to do about it."""
    from modbatt.errors import ApiBridgeError, BusOpenError, ModbattError
    from modbatt.stores import StoreError

    if isinstance(exc, BusOpenError):
        return EXIT_BUS, (
            "Check the bus name (INTERFACE:CHANNEL[@BITRATE]), that the adapter is plugged in "
            "and its driver installed; 'ip link' lists SocketCAN interfaces."
        )
    if isinstance(exc, ApiBridgeError):
        return EXIT_API_BRIDGE, (
            "Check --api-bridge (or MODBATT_API_BRIDGE_URL) and --token; "
            "'modbatt api-bridge health' tells whether the API-Bridge is up."
        )
    if isinstance(exc, StoreError):
        return EXIT_STATE, (
            "The state directory's stores do not verify: restore them from a backup, or run "
            "key recovery (docs/OPERATIONS.md)."
        )
    if isinstance(exc, ModbattError):
        return EXIT_FAILED, "Run again with -v for what led to it."
    if isinstance(exc, OSError):  # a state directory or file that cannot be made or written
        return EXIT_STATE, "Check the path given (--state-dir, --log, ...) and its permissions."
    return EXIT_INTERNAL, "This is a bug in modbatt: run again with -v for the traceback."


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "demo":
        from modbatt.demo import run_demo

        if not 1 <= args.modules <= 31:
            parser.error("--modules must be between 1 and 31")
        summary = run_demo(
            args.modules, args.duration, args.json, out=print, interface=args.interface
        )
        return 0 if summary.recovery_ok and summary.security_level == 3 else 1
    if args.command == "dbc":
        from modbatt.catalogue import dbc_path

        print(dbc_path())
        return 0
    if args.command == "module" and args.module_command == "run":
        from modbatt.roles import run_modules
        from modbatt.transport import parse_bus_spec

        _require(parser, args, "can", "unique-id")
        if not 1 <= args.count <= 255 or not 1 <= args.cells <= 255:
            parser.error("--count and --cells must be between 1 and 255")
        spec = parse_bus_spec(args.can, fd=args.fd)
        return run_modules(
            spec,
            args.unique_id,
            args.count,
            args.cells,
            args.duration,
            state_dir=args.state_dir,
            log_path=args.log,
        )
    if args.command == "pack" and args.pack_command == "run":
        from modbatt.roles import run_pack, run_pack_module_side
        from modbatt.transport import parse_bus_spec

        _require(parser, args, "can2")
        can2 = parse_bus_spec(args.can2, fd=args.fd)
        if args.can1 is None:
            return run_pack_module_side(can2, args.duration, log_path=args.log)
        if args.state_dir is None:
            args.state_dir = default_state_dir("pack")
        return run_pack(
            parse_bus_spec(args.can1, fd=args.fd),
            can2,
            args.state_dir,
            args.serial,
            args.duration,
            log_path=args.log,
        )
    if args.command == "decode":
        return _decode(args)
    if args.command == "monitor":  # the app's live view, as its own command
        args.command, args.app_command = "app", "monitor"
    if args.command == "app":
        from modbatt.app_cli import run_app

        _require(parser, args, "can")
        if args.state_dir is None:
            args.state_dir = default_state_dir("app")
        return run_app(args)
    if args.command == "api-bridge":
        return _api_bridge(args, parser)
    if args.command == "bench":
        return _bench(args)
    if args.command == "soak":
        return _soak(args, parser)
    parser.print_help(sys.stderr)
    return 2


def _with_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None
) -> argparse.Namespace:
    """`args` again, with the role's --config file under what the command line gave."""
    from modbatt.config import (
        AppConfig,
        ConfigError,
        ModuleConfig,
        PackConfig,
        RoleConfig,
        load_config,
    )

    models: dict[str, type[RoleConfig]] = {
        "app": AppConfig,
        "monitor": AppConfig,
        "module": ModuleConfig,
        "pack": PackConfig,
    }
    try:
        config: RoleConfig = load_config(args.config, models[args.command])
    except ConfigError as exc:
        parser.exit(2, f"modbatt: {exc}\n")
    ROLE_PARSERS[args.command].set_defaults(**config.options())  # the command line still wins
    return parser.parse_args(argv)


def _require(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Options a command needs, from its command line or its --config file."""
    missing = [name for name in names if getattr(args, name.replace("-", "_")) is None]
    if missing:
        options = ", ".join(f"--{name}" for name in missing)
        parser.error(f"{args.command} needs {options} (on the command line or in --config)")


def _decode(args: argparse.Namespace) -> int:
    from modbatt.decode import decode_log
    from modbatt.errors import ModbattError

    try:
        for decoded in decode_log(args.file, args.keystore):
            for line in decoded.lines():
                print(line)
    except (ModbattError, OSError, ValueError) as exc:
        print(f"decode: {exc}", file=sys.stderr)
        return 2
    return 0


def _bench(args: argparse.Namespace) -> int:
    from modbatt import bench, bench_gateway

    figures: dict[str, Any] = {}
    if args.benchmark in (None, "frame-path"):
        figures["frame_path"] = bench.frame_path(quick=args.quick)
        bench.print_table(figures["frame_path"], out=print)
    if args.benchmark in (None, "gateway"):
        figures["gateway"] = bench_gateway.gateway(quick=args.quick)
        bench_gateway.print_table(figures["gateway"], out=print)
    if args.json is not None:
        # one benchmark: its figures at the top level; both: one object per benchmark
        written = next(iter(figures.values())) if len(figures) == 1 else figures
        bench.write_json(written, args.json)
        print(f"figures written to {args.json}")
    return 0


def _soak(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from modbatt.bench import write_json
    from modbatt.soak import run_soak

    if not 1 <= args.modules <= 31:
        parser.error("--modules must be between 1 and 31")
    if args.seconds <= 0 or args.rate <= 0 or args.garbage_rate < 0:
        parser.error("--seconds and --rate must be positive, --garbage-rate not negative")
    report = run_soak(args.seconds, args.rate, args.garbage_rate, args.modules)
    for line in report.lines():
        print(line)
    if args.json is not None:
        write_json(report.as_dict(), args.json)
    problems = report.problems()
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


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
                return EXIT_API_BRIDGE
        print(
            f"API-Bridge at {config.base_url}: {health.status} ({health.service} {health.version})"
        )
        return 0
    parser.parse_args(["api-bridge", "--help"])
    return 2
