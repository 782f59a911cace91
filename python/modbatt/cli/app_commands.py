"""``modbatt app``: the Modbatt app on the command line.

Every command opens CAN 1, reads the app's keystore from ``--state-dir`` and, when the app
holds keys, first runs the session handshake with the pack (the channel upgrade), then does
its job: ``discover``, ``bootstrap``, ``pair``, ``status``, ``configure``, ``recover`` and
``monitor``, ``diagnose`` and ``firmware``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig
from modbatt.app.app import App, AppError
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.traffic import traffic_log
from modbatt.bus.transport import CanPort, parse_bus_spec
from modbatt.cli.base import (
    BUS,
    BUS_HELP,
    PATH,
    URL,
    ModbattGroup,
    config_option,
    default_state_dir,
    log_option,
    progress_of,
)
from modbatt.errors import ApiBridgeError
from modbatt.progress import NO_PROGRESS, Progress
from modbatt.protocol.control import APP_TO_PACK, PACK_TO_APP
from modbatt.state.stores import AuditLog
from modbatt.tools.monitor import run_monitor

Printer = Callable[[str], object]
F = Callable[..., Any]


@dataclass(frozen=True)
class AppOptions:
    """The options of every app command: the bus, the state, the API-Bridge, the log."""

    can: str | None
    state_dir: Path | None
    api_bridge: str | None
    creator: str | None
    token: str | None
    log: Path | None


def app_options(role: str) -> Callable[[F], F]:
    """The options of :class:`AppOptions`, and ``--config`` with the file of `role`."""
    return lambda function: _with_app_options(function, role)


def _with_app_options(function: F, role: str) -> F:
    for option in reversed(
        [
            config_option(role),
            click.option("--can", type=BUS, metavar="BUS", help="(Required.) " + BUS_HELP),
            click.option(
                "--state-dir",
                type=PATH,
                help="The app's keystore and audit log (default: the platform's data "
                "directory, e.g. ~/.local/share/modbatt/app).",
            ),
            click.option(
                "--api-bridge",
                type=URL,
                help="API-Bridge base URL (default: $MODBATT_API_BRIDGE_URL or "
                "http://127.0.0.1:8082).",
            ),
            click.option("--creator", help="Creator name (default: $MODBATT_CREATOR or alice)."),
            click.option(
                "--token", help="API-Bridge bearer token (default: $MODBATT_API_BRIDGE_TOKEN)."
            ),
            log_option,
        ]
    ):
        function = option(function)
    return function


def _monitor_options(default_duration: float | None) -> Callable[[F], F]:
    def add(function: F) -> F:
        function = click.option(
            "--interval",
            type=click.FloatRange(min=0.05),
            metavar="SECONDS",
            default=1.0,
            show_default=True,
            help="Seconds between refreshes.",
        )(function)
        return click.option(
            "--duration",
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            default=default_duration,
            show_default="until Ctrl-C" if default_duration is None else True,
            help="Seconds, then stop.",
        )(function)

    return add


@click.group(cls=ModbattGroup)
@app_options("app")
@click.pass_context
def app(ctx: click.Context, /, **options: Any) -> None:
    """The Modbatt app: discover, bootstrap, pair, configure, monitor, recover.

    Every action opens CAN 1, reads the app's keystore from --state-dir and, when the app
    holds keys, first runs the session handshake with the pack (the channel upgrade).
    """
    ctx.obj = AppOptions(**options)


def _run(ctx: click.Context, action: str, **action_options: Any) -> int:
    options: AppOptions = ctx.obj
    progress = progress_of(ctx)
    return run_app(options, action, progress.answer, progress, **action_options)


@app.command()
@click.pass_context
def discover(ctx: click.Context) -> int:
    """Ask the pack who and how it is (plain before bootstrap)."""
    return _run(ctx, "discover")


@app.command()
@click.pass_context
def bootstrap(ctx: click.Context) -> int:
    """Register app and pack, create their LCT, deliver the keys, upgrade CAN 1."""
    return _run(ctx, "bootstrap")


@app.command()
@click.option("--unique-id", type=click.IntRange(0, 2**32 - 1), help="The module to pair.")
@click.option("--all", "every", is_flag=True, help="Every registered, unpaired module.")
@click.pass_context
def pair(ctx: click.Context, unique_id: int | None, every: bool) -> int:
    """Pair modules with the pack (Workflow A)."""
    if (unique_id is None) == (not every):
        raise click.UsageError("give either --unique-id or --all", ctx)
    return _run(ctx, "pair", unique_id=unique_id)


@app.command()
@click.pass_context
def status(ctx: click.Context) -> int:
    """The pack's state, security level and modules."""
    return _run(ctx, "status")


@app.command()
@click.option(
    "--max-state",
    type=click.IntRange(0, 3),
    help="The highest state modules may take (0 Off ... 3 On).",
)
@click.option(
    "--bridge-unpaired",
    type=click.Choice(["yes", "no"]),
    help="Whether the pack bridges unpaired modules' plain traffic (the security policy).",
)
@click.pass_context
def configure(ctx: click.Context, max_state: int | None, bridge_unpaired: str | None) -> int:
    """Operational parameters and security policy (Workflow B.1)."""
    if max_state is None and bridge_unpaired is None:
        raise click.UsageError("give --max-state and/or --bridge-unpaired", ctx)
    return _run(ctx, "configure", max_state=max_state, bridge_unpaired=bridge_unpaired)


@app.command("command")
@click.option(
    "--module", "module_id", type=click.IntRange(1, 31), required=True, help="The module's id."
)
@click.option(
    "--state",
    type=click.Choice(["off", "standby", "on"]),
    required=True,
    help="The state to ask for.",
)
@click.option(
    "--every-plain-module",
    is_flag=True,
    help="Confirm that a command to an unpaired module goes to every unpaired module: the "
    "module firmware ignores the id in a plain command (paired modules take theirs sealed).",
)
@click.pass_context
def command_state(ctx: click.Context, module_id: int, state: str, every_plain_module: bool) -> int:
    """Ask a module for a state (Workflow B.3)."""
    return _run(
        ctx, "command", module=module_id, state=state, every_plain_module=every_plain_module
    )


@app.command()
@click.pass_context
def isolate(ctx: click.Context) -> int:
    """Every module Off at once (ALL_ISOLATE): the emergency stop.

    The pack sends it plain, for modules it reaches plain, and sealed to each paired module.
    """
    return _run(ctx, "isolate")


@app.command()
@click.pass_context
def diagnose(ctx: click.Context) -> int:
    """Counters, links, flash and audit log health; registrations and LCTs on the API-Bridge."""
    return _run(ctx, "diagnose")


@app.command()
@click.option(
    "--image",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="The image file.",
)
@click.option("--version", "image_version", required=True, help="The image's version.")
@click.pass_context
def firmware(ctx: click.Context, image: Path, image_version: str) -> int:
    """Send a firmware image to the pack, in sealed chunks."""
    return _run(ctx, "firmware", image=image, version=image_version)


@app.command()
@click.option(
    "--confirm-rebootstrap",
    is_flag=True,
    help="Allow a new bootstrap of a pack that lost its keys.",
)
@click.pass_context
def recover(ctx: click.Context, confirm_rebootstrap: bool) -> int:
    """Key recovery (Workflow C)."""
    return _run(ctx, "recover", confirm_rebootstrap=confirm_rebootstrap)


@app.command("monitor")
@_monitor_options(default_duration=10.0)
@click.pass_context
def app_monitor(ctx: click.Context, duration: float | None, interval: float) -> int:
    """The live view of the pack: module telemetry, links, drops (Workflow B.2)."""
    return _run(ctx, "monitor", duration=duration, interval=interval)


@click.command(cls=ModbattGroup.command_class)
@app_options("monitor")
@_monitor_options(default_duration=None)
@click.pass_context
def monitor(ctx: click.Context, /, duration: float | None, interval: float, **options: Any) -> int:
    """A live view of a running pack: state, links, module telemetry, drops, alerts.

    Connects to a pack as its app (the keys in --state-dir) and redraws its state, security
    level, each module's decrypted telemetry, frame rates, drops by reason and the latest
    alerts, until Ctrl-C or --duration.
    """
    progress = progress_of(ctx)
    return run_app(
        AppOptions(**options),
        "monitor",
        progress.answer,
        progress,
        duration=duration,
        interval=interval,
    )


def run_app(
    options: AppOptions,
    action: str,
    out: Printer = print,
    progress: Progress = NO_PROGRESS,
    **action_options: Any,
) -> int:
    """Run one `modbatt app` action; returns the exit status."""
    if options.can is None:
        raise click.UsageError("Missing option '--can' (on the command line or in --config).")
    state_dir = options.state_dir or default_state_dir("app")
    config = ApiBridgeConfig.from_env(
        base_url=options.api_bridge, creator=options.creator, token=options.token
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (
        traffic_log(options.log) as log,
        CanPort.open(parse_bus_spec(options.can), log=log, log_channel="can1") as port,
        ApiBridgeClient(config) as bridge,
    ):
        endpoint = ControlEndpoint.open(port, APP_TO_PACK, PACK_TO_APP)
        try:
            app = App(
                state_dir,
                endpoint,
                bridge,
                AuditLog(state_dir / "audit.jsonl"),
                progress=progress,
            )
            port.subscribe(app.on_frame)
            # a failure is the command line's to report (modbatt.cli.base.classify), on stderr
            outcome = act(app, action, out, progress, **action_options)
        finally:
            endpoint.close()
    progress.result(f"{action}: {outcome} ({time.monotonic() - started:.1f} s)")
    return 0


STATES = {"off": 0, "standby": 1, "on": 3}


def act(
    app: App, action: str, out: Printer, progress: Progress = NO_PROGRESS, **options: Any
) -> str:
    """Run one app action on a ready :class:`App`, print its answer; returns a summary.

    The answer goes to `out` as JSON (stdout, for scripts); the summary becomes the
    command's result line on stderr.
    """
    if action in ("discover", "status"):
        if _has_keys(app):
            app.connect()  # then the answer comes sealed
        answer = app.status()
        out(json.dumps(answer, indent=2))
        return _level(answer)
    if action == "bootstrap":
        answer = app.bootstrap()
        out(json.dumps(answer, indent=2))
        return f"bootstrapped, {_level(answer)}"
    if action == "recover":
        answer = app.recover(confirm=options["confirm_rebootstrap"])
        out(json.dumps(answer, indent=2))
        summary = f"recovered, {_level(answer)}"
        if "repaired_modules" in answer:
            summary += f", {answer['repaired_modules']} module(s) paired again"
        if answer.get("offline_modules"):
            offline = ", ".join(str(u) for u in answer["offline_modules"])
            summary += f"; offline, to pair when back: {offline}"
        return summary
    if not _has_keys(app):
        raise AppError(f"{action}: the app holds no keys yet (run bootstrap)")
    app.connect()
    if action == "pair":
        return _pair(app, options["unique_id"], out, progress)
    if action == "configure":
        choice = options["bridge_unpaired"]
        bridge = None if choice is None else choice == "yes"
        out(
            json.dumps(
                app.configure(max_state=options["max_state"], bridge_unpaired_modules=bridge)
            )
        )
        return "configured"
    if action == "command":
        state = STATES[options["state"]]
        app.command_state(
            options["module"], state, every_plain_module=options["every_plain_module"]
        )
        out(json.dumps({"module": options["module"], "requested_state": state}))
        return f"module {options['module']} asked for state {options['state']}"
    if action == "isolate":
        answer = app.isolate_all()
        out(json.dumps(answer))
        return f"ALL_ISOLATE sent: plain, and sealed to {len(answer['sealed'])} paired module(s)"
    if action == "diagnose":
        # the pack's own view, and the API-Bridge's of the pack's registrations and LCTs; in
        # the field the API-Bridge may be out of reach, and the pack's view is still wanted
        answer = app.diagnostics()
        try:
            registrations = app.registrations()
        except ApiBridgeError as exc:
            registrations = {"problems": [f"not reachable ({exc})"]}
        out(json.dumps({**answer, "api_bridge": registrations}, indent=2))
        problems = registrations["problems"]
        return "diagnostics read" + (f"; API-Bridge: {'; '.join(problems)}" if problems else "")
    if action == "firmware":
        image: Path = options["image"]
        answer = app.update_firmware(image.read_bytes(), options["version"])
        out(json.dumps(answer))
        return f"firmware {answer['version']} stored in the pack ({answer['size']} bytes)"
    if action == "monitor":
        run_monitor(app, options["duration"], options["interval"], out)
        return f"{app.telemetry_frames} telemetry frames decrypted"
    raise AppError(f"no app action {action!r}")


def _has_keys(app: App) -> bool:
    keys = app.keystore.load()
    return keys is not None and keys.app_device_key_half is not None


def _level(answer: dict[str, Any]) -> str:
    level = f"security level {answer.get('security_level', '?')}"
    return f"{answer['state_name']}, {level}" if "state_name" in answer else level


def _pair(app: App, unique_id: int | None, out: Printer, progress: Progress) -> str:
    """Pair one module, or every online unpaired one (a bar counts them)."""
    if unique_id is not None:
        targets = [unique_id]
    else:
        modules = app.status()["modules"]
        targets = [int(m["unique_id"]) for m in modules if m["online"] and not m["paired"]]
    with progress.counting("pairing modules", len(targets)) as advance:
        for target in targets:
            out(json.dumps(app.pair(target)))
            advance(1)
    return f"{len(targets)} module(s) paired"
