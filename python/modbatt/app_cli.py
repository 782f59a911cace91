"""``modbatt app``: the Modbatt app on the command line.

Every command opens CAN 1, reads the app's keystore from ``--state-dir`` and, when the app
holds keys, first runs the session handshake with the pack (the channel upgrade), then does
its job: ``discover``, ``bootstrap``, ``pair``, ``status``, ``configure``, ``recover`` and
``monitor``, ``diagnose`` and ``firmware``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig
from modbatt.app import App, AppError
from modbatt.control import APP_TO_PACK, PACK_TO_APP, ControlEndpoint
from modbatt.errors import ApiBridgeError, ModbattError
from modbatt.monitor import run_monitor
from modbatt.stores import AuditLog, StoreError
from modbatt.traffic import LOG_HELP, traffic_log
from modbatt.transport import CanPort, parse_bus_spec

Printer = Callable[[str], object]


def add_app_parser(commands: Any, bus_help: str, config_help: str) -> argparse.ArgumentParser:
    """Add ``modbatt app`` and its actions to the command line; returns the app's parser."""
    app: argparse.ArgumentParser = commands.add_parser(
        "app", help="the Modbatt app: discover, bootstrap, pair, ..."
    )
    add_app_options(app, bus_help, config_help)
    actions = app.add_subparsers(dest="app_command", metavar="ACTION", required=True)
    actions.add_parser("discover", help="ask the pack who and how it is")
    actions.add_parser("bootstrap", help="register, create the LCT, deliver keys, upgrade CAN 1")
    pair = actions.add_parser("pair", help="pair modules (Workflow A)")
    which = pair.add_mutually_exclusive_group(required=True)
    which.add_argument("--unique-id", type=int, help="the module to pair")
    which.add_argument("--all", action="store_true", help="every registered, unpaired module")
    actions.add_parser("status", help="state, security level and modules")
    configure = actions.add_parser(
        "configure", help="operational parameters and security policy (Workflow B.1)"
    )
    configure.add_argument(
        "--max-state",
        type=int,
        choices=range(4),
        help="the highest state modules may take (0 Off ... 3 On)",
    )
    configure.add_argument(
        "--bridge-unpaired",
        choices=("yes", "no"),
        help="whether the pack bridges unpaired modules' plain traffic (the security policy)",
    )
    command = actions.add_parser("command", help="ask a module for a state (Workflow B.3)")
    command.add_argument("--module", type=int, required=True, help="the module's id (1-31)")
    command.add_argument(
        "--state", choices=("off", "standby", "on"), required=True, help="the state to ask for"
    )
    actions.add_parser("diagnose", help="counters, links, flash and audit log health")
    firmware = actions.add_parser("firmware", help="send a firmware image to the pack")
    firmware.add_argument("--image", type=Path, required=True, help="the image file")
    firmware.add_argument("--version", required=True, help="the image's version")
    recover = actions.add_parser("recover", help="key recovery (Workflow C)")
    recover.add_argument(
        "--confirm-rebootstrap",
        action="store_true",
        help="allow a new bootstrap of a pack that lost its keys",
    )
    monitor = actions.add_parser(
        "monitor", help="the live view of the pack: module telemetry, links, drops (B.2)"
    )
    _add_monitor_options(monitor, default_duration=10.0)
    return app


def add_app_options(app: argparse.ArgumentParser, bus_help: str, config_help: str) -> None:
    """The options of every app command: the bus, the state, the API-Bridge, the log."""
    app.add_argument("--can", metavar="BUS", help="(required) " + bus_help)
    app.add_argument(
        "--state-dir",
        type=Path,
        help="the app's keystore and audit log (default: the platform's data directory, "
        "e.g. ~/.local/share/modbatt/app)",
    )
    app.add_argument(
        "--api-bridge",
        metavar="URL",
        help="API-Bridge base URL (default: $MODBATT_API_BRIDGE_URL or http://127.0.0.1:8082)",
    )
    app.add_argument("--creator", help="creator name (default: $MODBATT_CREATOR or alice)")
    app.add_argument("--token", help="API-Bridge bearer token (default: $MODBATT_API_BRIDGE_TOKEN)")
    app.add_argument("--log", type=Path, metavar="FILE", help=LOG_HELP)
    app.add_argument("--config", type=Path, metavar="FILE", help=config_help)


def add_monitor_parser(commands: Any, bus_help: str, config_help: str) -> argparse.ArgumentParser:
    """``modbatt monitor``: the live view of a pack (``modbatt app ... monitor``)."""
    monitor: argparse.ArgumentParser = commands.add_parser(
        "monitor",
        help="a live view of a running pack: state, links, module telemetry, drops, alerts",
        description="Connects to a pack as its app (the keys in --state-dir) and redraws its "
        "state, security level, each module's decrypted telemetry, frame rates, drops by "
        "reason and the latest alerts, until Ctrl-C or --duration.",
    )
    add_app_options(monitor, bus_help, config_help)
    _add_monitor_options(monitor, default_duration=None)
    return monitor


def _add_monitor_options(parser: argparse.ArgumentParser, default_duration: float | None) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=default_duration,
        help="seconds, then stop"
        + (
            " (default: until Ctrl-C)"
            if default_duration is None
            else f" (default: {default_duration:g})"
        ),
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)"
    )


def run_app(args: argparse.Namespace, out: Printer = print) -> int:
    """Run one `modbatt app` action; returns the exit status."""
    config = ApiBridgeConfig.from_env(
        base_url=args.api_bridge, creator=args.creator, token=args.token
    )
    args.state_dir.mkdir(parents=True, exist_ok=True)
    with (
        traffic_log(args.log) as log,
        CanPort.open(parse_bus_spec(args.can), log=log, log_channel="can1") as port,
        ApiBridgeClient(config) as bridge,
    ):
        endpoint = ControlEndpoint.open(port, APP_TO_PACK, PACK_TO_APP)
        try:
            app = App(args.state_dir, endpoint, bridge, AuditLog(args.state_dir / "audit.jsonl"))
            port.subscribe(app.on_frame)
            return _act(app, args, out)
        except (ApiBridgeError, StoreError):
            raise  # their own exit status and advice (modbatt.cli.EXIT_CODES)
        except ModbattError as exc:
            out(f"error: {exc}")
            return 1
        finally:
            endpoint.close()


def _act(app: App, args: argparse.Namespace, out: Printer) -> int:
    command = args.app_command
    keys = app.keystore.load()
    has_keys = keys is not None and keys.app_device_key_half is not None
    if command == "discover":
        out(json.dumps(app.discover(), indent=2))
        return 0
    if command == "bootstrap":
        out(json.dumps(app.bootstrap(), indent=2))
        return 0
    if command == "recover":
        out(json.dumps(app.recover(confirm=args.confirm_rebootstrap), indent=2))
        return 0
    if not has_keys:
        raise AppError(f"{command}: the app holds no keys yet (run bootstrap)")
    app.connect()
    if command == "status":
        out(json.dumps(app.status(), indent=2))
    elif command == "pair":
        targets = (
            [args.unique_id]
            if args.unique_id is not None
            else [
                m["unique_id"] for m in app.status()["modules"] if m["online"] and not m["paired"]
            ]
        )
        for unique_id in targets:
            out(json.dumps(app.pair(int(unique_id))))
    elif command == "configure":
        bridge = None if args.bridge_unpaired is None else args.bridge_unpaired == "yes"
        if args.max_state is None and bridge is None:
            raise AppError("configure: give --max-state and/or --bridge-unpaired")
        out(json.dumps(app.configure(max_state=args.max_state, bridge_unpaired_modules=bridge)))
    elif command == "command":
        state = {"off": 0, "standby": 1, "on": 3}[args.state]
        app.command_state(args.module, state)
        out(json.dumps({"module": args.module, "requested_state": state}))
    elif command == "diagnose":
        out(json.dumps(app.diagnostics(), indent=2))
    elif command == "firmware":
        out(json.dumps(app.update_firmware(args.image.read_bytes(), args.version)))
    elif command == "monitor":
        run_monitor(app, args.duration, args.interval, out)
        out(f"{app.telemetry_frames} telemetry frames decrypted")
    return 0
