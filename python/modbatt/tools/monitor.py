"""``modbatt monitor``: a live view of a running pack, from the app's side of CAN 1.

What a technician looks at while a pack runs: its state and security level, each link, every
module's decrypted telemetry, the frame rate, what was dropped and why, the latest alerts.
:func:`view_of` gathers it from an :class:`~modbatt.app.app.App` (its decrypted telemetry and
pack frames, and one sealed ``device_info`` request), :func:`render` turns it into lines,
so the view is tested on a known snapshot without a terminal; :func:`run_monitor` redraws
it on a terminal (or prints one block per refresh when the output is not one).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from modbatt import DROP_REASONS as CORE_DROP_REASONS
from modbatt.app.app import App
from modbatt.errors import ApiBridgeError, ModbattError
from modbatt.protocol.catalogue import STATE_NAMES
from modbatt.protocol.status import ALERT_NAMES

DROP_REASONS = tuple(name for _, name in CORE_DROP_REASONS)
BUS_NAMES = {"can1": "CAN 1", "can2": "CAN 2"}
CLEAR = "\x1b[H\x1b[2J"  # home, clear: redraw in place
REGISTRATIONS_EVERY_S = 60.0  # how often the monitor asks the API-Bridge


@dataclass(frozen=True)
class ModuleRow:
    """One module as the view shows it (None: not reported yet)."""

    module_id: int
    unique_id: int | None
    online: bool
    paired: bool
    state: str
    soc: float | None = None
    voltage: float | None = None
    current: float | None = None
    cell_min_v: float | None = None
    cell_max_v: float | None = None
    temp_min: float | None = None
    temp_max: float | None = None


@dataclass(frozen=True)
class MonitorView:
    """Everything one refresh shows."""

    pack: str  # serial
    state: str
    security_level: int
    app_link: bool
    modules: list[ModuleRow]
    telemetry_fps: float
    app_drops: dict[str, int] = field(default_factory=dict)
    gateway_drops: dict[str, int] = field(default_factory=dict)
    # what the buses lost below the gateway, e.g. {"CAN 2 rx_overflow": 12}
    bus_losses: dict[str, int] = field(default_factory=dict)
    link_down: int = 0  # messages the gateway had no one to send to (not drops)
    alerts: list[str] = field(default_factory=list)
    registrations: str | None = None  # the API-Bridge check's last word (None: not checked)


class RegistrationsCheck:
    """The app's registrations on the API-Bridge, checked every `every_s` in a thread.

    The workflow's "verify registration status periodically": a live view shows an LCT
    suspended or revoked elsewhere without waiting for its keys to fail. The check runs
    apart from the view, so an API-Bridge that is slow or down (the client retries for a
    while) never holds the view up.
    """

    def __init__(self, app: App, every_s: float = REGISTRATIONS_EVERY_S) -> None:
        self.app = app
        self.every_s = every_s
        self.said: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registrations", daemon=True)

    def start(self) -> RegistrationsCheck:
        """Check now, then every `every_s`, until `stop()`."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """No more checks (one under way ends on its own)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.said = self.check_once()
            self._stop.wait(self.every_s)

    def check_once(self) -> str:
        """What one check finds, as the view's line says it."""
        try:
            problems = self.app.registrations()["problems"]
        except ApiBridgeError as exc:
            return f"not reachable ({exc.__class__.__name__})"
        except ModbattError as exc:
            return f"not checked ({exc})"
        checked = time.strftime("%H:%M:%S")
        return ("; ".join(problems) if problems else "registrations and LCTs in order") + (
            f" (checked {checked})"
        )


def view_of(app: App, info: dict[str, Any], telemetry_fps: float) -> MonitorView:
    """The view from the app's decrypted telemetry and pack frames and `info` (device_info)."""
    rows = []
    for module in info.get("modules", []):
        module_id = int(module["module_id"])
        seen = app.telemetry.get(module_id, {})
        s1, s2, s3 = (seen.get(name, {}) for name in ("STATUS_1", "STATUS_2", "STATUS_3"))
        state = s1.get("State")
        # A status sent just after a state change carries no cell readings (the firmware pauses
        # the cell string on every transition and clears them): all zero means "not read yet".
        read = bool(s2.get("MinCellVoltage") or s2.get("MaxCellVoltage"))
        rows.append(
            ModuleRow(
                module_id=module_id,
                unique_id=module.get("unique_id"),
                online=bool(module.get("online")),
                paired=bool(module.get("paired")),
                state=STATE_NAMES.get(state, str(module.get("state", "?")))
                if state is not None
                else str(module.get("state", "?")),
                # the module firmware (build 8278) does not estimate SOC: it always sends 0
                soc=s1.get("SOC") or None,
                voltage=s1.get("ModuleVoltage"),
                current=s1.get("Current"),
                cell_min_v=s2.get("MinCellVoltage") if read else None,
                cell_max_v=s2.get("MaxCellVoltage") if read else None,
                temp_min=s3.get("MinCellTemp") if read else None,
                temp_max=s3.get("MaxCellTemp") if read else None,
            )
        )
    gateway = info.get("gateway", {})
    return MonitorView(
        pack=str(info.get("serial", "?")),
        state=str(info.get("state_name", info.get("state", "?"))),
        security_level=int(info.get("security_level", 0)),
        app_link=app.session is not None,
        modules=sorted(rows, key=lambda r: r.module_id),
        telemetry_fps=telemetry_fps,
        app_drops={k: v for k, v in sorted(app.dropped.items()) if v},
        gateway_drops={k: int(gateway[k]) for k in DROP_REASONS if gateway.get(k)},
        bus_losses={
            f"{BUS_NAMES.get(bus, bus)} {reason}": int(n)
            for bus, lost in sorted(info.get("bus_losses", {}).items())
            for reason, n in sorted(lost.items())
            if n
        },
        link_down=int(gateway.get("link_down", 0)),
        alerts=[_alert(a) for a in app.alerts[-5:]],
    )


def _alert(alert: dict[str, int]) -> str:
    name = ALERT_NAMES.get(alert.get("code", 0), f"alert {alert.get('code')}")
    where = f"module {alert['module_id']}" if alert.get("module_id") else "pack"
    return f"{name}: {where}, value {alert.get('value', 0)}"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(view: MonitorView) -> list[str]:
    """The view as lines of text, 100 columns at most."""
    links = {0: "none encrypted", 1: "CAN 1 encrypted", 2: "CAN 2 encrypted", 3: "both encrypted"}
    lines = [
        f"pack {view.pack}: {view.state}, security level {view.security_level} "
        f"({links.get(view.security_level, '?')})",
        f"app link (CAN 1): {'sealed session' if view.app_link else 'no session'}; "
        f"telemetry {view.telemetry_fps:.0f} messages/s",
        "",
        f"{'id':>3} {'unique id':>10} {'link':<9} {'online':<6} {'state':<8} {'SOC %':>6} "
        f"{'V':>7} {'A':>7} {'cell V min-max':>15} {'°C min-max':>11}",
    ]
    for row in view.modules:
        link = "sealed" if row.paired else "plain"
        cells = (
            "-" if row.cell_min_v is None else f"{row.cell_min_v:.3f}-{_num(row.cell_max_v, '.3f')}"
        )
        temps = "-" if row.temp_min is None else f"{row.temp_min:.1f}-{_num(row.temp_max, '.1f')}"
        lines.append(
            f"{row.module_id:>3} {_num(row.unique_id, 'd'):>10} {link:<9} "
            f"{'yes' if row.online else 'no':<6} {row.state:<8} {_num(row.soc, '.1f'):>6} "
            f"{_num(row.voltage, '.2f'):>7} {_num(row.current, '.2f'):>7} {cells:>15} {temps:>11}"
        )
    if not view.modules:
        lines.append("  (no module registered)")
    lines.append("")
    drops = [f"{k} {v}" for k, v in view.gateway_drops.items()]
    drops += [f"{k} {v}" for k, v in view.bus_losses.items()]
    drops += [f"app: {k} {v}" for k, v in view.app_drops.items()]
    lines.append("dropped: " + (", ".join(drops) if drops else "nothing"))
    if view.link_down:
        lines.append(f"not sent, no session on their way out (app away): {view.link_down}")
    lines.append("alerts: " + ("; ".join(view.alerts) if view.alerts else "none"))
    if view.registrations is not None:
        lines.append(f"API-Bridge: {view.registrations}")
    return lines


def run_monitor(
    app: App,
    duration_s: float | None,
    interval_s: float = 1.0,
    out: Callable[[str], object] = print,
    redraw: bool | None = None,
) -> int:
    """Show the view every `interval_s` until `duration_s` (None: until Ctrl-C).

    Ctrl-C is how a monitor is left: it ends the view normally (status 0).
    """
    redraw = sys.stdout.isatty() if redraw is None else redraw
    app.connect()
    registrations = RegistrationsCheck(app).start()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            _watch(app, duration_s, interval_s, out, redraw, registrations)
    finally:
        registrations.stop()
    return 0


def _watch(
    app: App,
    duration_s: float | None,
    interval_s: float,
    out: Callable[[str], object],
    redraw: bool,
    registrations: RegistrationsCheck,
) -> None:
    end = None if duration_s is None else time.monotonic() + duration_s
    frames, at = app.telemetry_frames, time.monotonic()
    while end is None or time.monotonic() < end:
        time.sleep(interval_s)
        if app.keep_link():  # the pack's status frames stopped: handshake again
            out("link re-established (the pack's status frames had stopped)")
        now = time.monotonic()
        fps = (app.telemetry_frames - frames) / max(now - at, 1e-6)
        frames, at = app.telemetry_frames, now
        view = replace(view_of(app, app.status(), fps), registrations=registrations.said)
        lines = render(view)
        out((CLEAR if redraw else "") + "\n".join(lines) + ("" if redraw else "\n"))
