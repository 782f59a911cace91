"""``modbatt demo``: the whole system, on two buses, with the embedded API-Bridge.

By default in one process on python-can ``virtual`` buses; with ``--interface
udp_multicast`` the API-Bridge, the pack controller and the modules each run in their own
process, started as a user would start them, and the demo drives the app. It walks the
lifecycle: discovery, registration and LCT, bootstrap key delivery, the encrypted app bus,
module registration and pairing, the encrypted module bus, telemetry bridged to the app for
``--duration`` seconds, a simulated loss of the pack's flash and its recovery (the demo gives
the operator's confirmation), and Operational again; then a summary.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import can
import httpx
import uvicorn

from modbatt import DROP_REASONS, is_encrypted
from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig
from modbatt.api_bridge.server import build
from modbatt.app.app import App
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.nodes import Node, NodeLoop
from modbatt.bus.transport import BusSpec, CanPort, open_bus, parse_bus_spec
from modbatt.module.pairing import PairingAgent, SecureModule, simulator_report
from modbatt.module.simulator import modules_for
from modbatt.pack.controller import PackController
from modbatt.pack.keys import PackState
from modbatt.pack.modules import START_SETTLE_S
from modbatt.progress import NO_PROGRESS, Progress
from modbatt.protocol.catalogue import STATE_NAMES
from modbatt.protocol.control import APP_TO_PACK, PACK_TO_APP
from modbatt.protocol.firmware import ON
from modbatt.state.stores import AuditLog
from modbatt.tools.monitor import render, view_of

Printer = Callable[[str], object]
FIRST_UNIQUE_ID = 10_000


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def embedded_api_bridge(db: Path) -> Iterator[str]:
    """The embedded API-Bridge on a free loopback port, in this process; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            build(db), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, name="api-bridge", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


class BusCounter(can.Listener):
    """Counts the frames a passive listener sees on a bus: all, and those with E set."""

    def __init__(self) -> None:
        self.frames = 0
        self.encrypted = 0
        self.plain_bases: Counter[int] = Counter()

    def on_message_received(self, msg: can.Message) -> None:
        """Count one frame."""
        self.frames += 1
        if is_encrypted(msg.arbitration_id):
            self.encrypted += 1
        else:
            self.plain_bases[msg.arbitration_id >> 18] += 1


@dataclass
class Summary:
    """What `--json` writes."""

    pack_state: str
    security_level: int
    modules_paired: int
    telemetry_frames_received: int
    frames_dropped: dict[str, int]
    recovery_ok: bool
    secured_modules: int
    legacy_modules: int
    duration_s: float
    interface: str
    can1_frames: int
    can1_encrypted: int
    can2_frames: int
    can2_encrypted: int
    # per module: unique_id, kind, paired, state, telemetry_frames, sealed_frames_acted_on
    modules: list[dict[str, Any]]


class InProcess:
    """Pack controller and modules as objects in this process, on `virtual` buses."""

    def __init__(self, base: Path, run: str, count: int, legacy: int) -> None:
        self.base, self.count, self.legacy = base, count, legacy
        self.serial = f"PACK-{run[:6].upper()}"
        self.specs = {
            bus: BusSpec("virtual", f"modbatt-demo-{run}-{bus}") for bus in ("can1", "can2")
        }
        self.ports = {
            name: CanPort.open(self.specs[bus])
            for name, bus in (("pack1", "can1"), ("pack2", "can2"), ("modules", "can2"))
        }
        self.audit = AuditLog(base / "pack" / "audit.jsonl")
        self.pack: PackController | None = None
        self.simulated = [
            SecureModule(m, base / "modules" / f"module-{m.config.unique_id}")
            for m in modules_for(FIRST_UNIQUE_ID, count, 14, time.monotonic())
        ]
        # the module firmware as shipped, on the same CAN 2: plain, and never paired
        self.legacy_nodes = modules_for(FIRST_UNIQUE_ID + count, legacy, 14, time.monotonic())
        nodes: list[Node] = [*self.simulated, *self.legacy_nodes]
        self.module_loop = NodeLoop(self.ports["modules"], nodes)
        self.agent = PairingAgent(self.ports["modules"], self.simulated, self.module_loop)

    def start(self, _url: str) -> None:
        """Start the pack controller and the modules."""
        self.start_pack()
        self.module_loop.start()
        self.agent.start()

    def start_pack(self) -> None:
        """(Re)start the pack controller on its flash."""
        self.pack = PackController(
            self.serial, self.base / "pack", self.ports["pack1"], self.ports["pack2"], self.audit
        ).start()

    def stop_pack(self) -> None:
        """Stop the pack controller (its flash stays)."""
        if self.pack is not None:
            self.pack.stop()
            self.pack = None

    def close(self) -> None:
        """Stop everything."""
        self.agent.stop()
        self.module_loop.stop()
        self.stop_pack()
        for port in self.ports.values():
            port.close()

    def reports(self) -> list[dict[str, Any]]:
        """What each simulated module says of itself, once they have stopped."""
        secured = [simulator_report(node) for node in self.simulated]
        return secured + [simulator_report(node) for node in self.legacy_nodes]


class Processes:
    """API-Bridge, pack controller and modules each in their own process.

    Over `udp_multicast`: two groups on two ports, since they share one host.
    """

    def __init__(self, base: Path, run: str, count: int, legacy: int) -> None:
        self.base, self.count, self.legacy = base, count, legacy
        self.serial = f"PACK-{run[:6].upper()}"
        group, port = f"239.74.{random.randint(0, 255)}", random.randint(43200, 43800)  # noqa: S311
        self.specs = {
            "can1": parse_bus_spec(f"udp_multicast:{group}.1,port={port}"),
            "can2": parse_bus_spec(f"udp_multicast:{group}.2,port={port + 1}"),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.base / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(  # noqa: S603 (our own command line)
            [sys.executable, "-m", "modbatt", *args], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def start(self, _url: str) -> None:
        """Start the pack controller and the modules, as `modbatt ... run` commands."""
        self.start_pack()
        kinds = (
            ("secured", FIRST_UNIQUE_ID, self.count),
            ("legacy", self.first_legacy, self.legacy),
        )
        for kind, first, count in kinds:
            if count:
                self._spawn(
                    f"modules-{kind}",
                    "module",
                    "run",
                    "--kind",
                    kind,
                    "--can",
                    str(self.specs["can2"]).split(" ")[0],
                    "--unique-id",
                    str(first),
                    "--count",
                    str(count),
                    "--state-dir",
                    str(self.base / "modules"),
                    "--report",
                    str(self.base / f"modules-{kind}.json"),
                )

    @property
    def first_legacy(self) -> int:
        """The first legacy module's unique id: after the secured ones."""
        return FIRST_UNIQUE_ID + self.count

    def start_pack(self) -> None:
        """(Re)start `modbatt pack run` on its state directory."""
        self._spawn(
            "pack",
            "pack",
            "run",
            "--can1",
            str(self.specs["can1"]).split(" ")[0],
            "--can2",
            str(self.specs["can2"]).split(" ")[0],
            "--state-dir",
            str(self.base / "pack"),
            "--serial",
            self.serial,
        )
        time.sleep(1.0)  # its python-can buses and ISO-TP stacks come up

    def stop_pack(self) -> None:
        """Stop the pack controller's process."""
        process = self.processes.pop("pack", None)
        if process is not None:
            process.terminate()
            process.wait(timeout=10)

    def close(self) -> None:
        """Stop every process."""
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=10)

    def reports(self) -> list[dict[str, Any]]:
        """What each simulated module said of itself as its process stopped."""
        reports: list[dict[str, Any]] = []
        for kind in ("secured", "legacy"):
            path = self.base / f"modules-{kind}.json"
            if path.exists():
                reports += json.loads(path.read_text())
        return reports


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)  # conditions ask the pack over the control channel: not too often
    return condition()


def run_demo(
    modules: int = 4,
    duration_s: float = 10.0,
    json_path: Path | None = None,
    out: Printer = print,
    interface: str = "virtual",
    progress: Progress = NO_PROGRESS,
    legacy_modules: int = 0,
) -> Summary:
    """Run the whole lifecycle; returns (and with `json_path` writes) the summary.

    `modules` secured modules pair with the pack; `legacy_modules` more run the module
    firmware as shipped on the same CAN 2 and stay plain. `progress` shows what the app's
    long steps wait for (the command line's spinners).
    """
    if not 1 <= modules <= 31:
        raise ValueError("--modules must be between 1 and 31")
    if not 0 <= legacy_modules <= 31 - modules:
        raise ValueError("--modules and --legacy-modules: at most 31 modules in all")
    if interface not in ("virtual", "udp_multicast"):
        raise ValueError("--interface is virtual or udp_multicast")
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="modbatt-demo-") as tmp:
        base = Path(tmp)
        topology: InProcess | Processes = (InProcess if interface == "virtual" else Processes)(
            base, run, modules, legacy_modules
        )
        with _api_bridge(base, interface) as url:
            return _lifecycle(base, url, topology, interface, duration_s, json_path, out, progress)


@contextmanager
def _api_bridge(base: Path, interface: str) -> Iterator[str]:
    if interface == "virtual":
        with embedded_api_bridge(base / "api-bridge.sqlite3") as url:
            yield url
        return
    port = free_port()
    log = (base / "api-bridge.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 (our own command line)
        [
            sys.executable,
            "-m",
            "modbatt",
            "api-bridge",
            "serve",
            "--db",
            str(base / "api-bridge.sqlite3"),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the API-Bridge at {url} did not start")


def _lifecycle(
    base: Path,
    url: str,
    topology: InProcess | Processes,
    interface: str,
    duration_s: float,
    json_path: Path | None,
    out: Printer,
    progress: Progress,
) -> Summary:
    specs = topology.specs
    legacy = f" and {topology.legacy} legacy module(s)" if topology.legacy else ""
    out(
        f"modbatt demo ({interface}): API-Bridge at {url}; CAN 1 = {specs['can1']}, "
        f"CAN 2 = {specs['can2']}; {topology.count} secured module(s){legacy}"
    )
    counters = {bus: BusCounter() for bus in ("can1", "can2")}
    watchers = [open_bus(specs[bus]) for bus in counters]
    notifiers = [
        can.Notifier(bus, [counters[name]]) for bus, name in zip(watchers, counters, strict=True)
    ]
    topology.start(url)
    app_port = CanPort.open(specs["can1"])
    bridge = ApiBridgeClient(ApiBridgeConfig(base_url=url))
    app = App(
        base / "app",
        ControlEndpoint.open(app_port, APP_TO_PACK, PACK_TO_APP),
        bridge,
        AuditLog(base / "app" / "audit.jsonl"),
        progress=progress,
    )
    app_port.subscribe(app.on_frame)
    try:
        summary, table, frames = _phases(app, topology, duration_s, out)
    finally:
        app.endpoint.close()
        bridge.close()
        topology.close()
        app_port.close()
        for notifier in notifiers:
            notifier.stop()
        for watcher in watchers:
            watcher.shutdown()
    result = Summary(
        **summary,
        interface=interface,
        can1_frames=counters["can1"].frames,
        can1_encrypted=counters["can1"].encrypted,
        can2_frames=counters["can2"].frames,
        can2_encrypted=counters["can2"].encrypted,
        modules=_module_rows(topology, table, frames),
    )
    out(
        f"\nsummary: state {result.pack_state}, security level {result.security_level}, "
        f"{result.modules_paired} module(s) paired, {result.telemetry_frames_received} "
        f"telemetry frames decrypted by the app, dropped {result.frames_dropped or 'nothing'}, "
        f"recovery {'ok' if result.recovery_ok else 'FAILED'}"
    )
    if topology.legacy:
        acted = sum(m["sealed_frames_acted_on"] for m in result.modules)
        out(
            f"         {topology.legacy} legacy module(s) beside them: "
            f"{acted} command(s) taken from sealed frames (0: no sealed frame reads as theirs)"
        )
    if json_path is not None:
        json_path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def _phases(
    app: App, topology: InProcess | Processes, duration_s: float, out: Printer
) -> tuple[dict[str, Any], list[dict[str, Any]], Counter[int]]:
    """The lifecycle's steps.

    Returns the summary's figures, the pack's module table at the end and the telemetry
    frames the app received from each module (by unique id).
    """
    count, legacy = topology.count, topology.legacy
    secured_ids = range(FIRST_UNIQUE_ID, FIRST_UNIQUE_ID + count)
    _wait(lambda: _answers(app), 10.0)
    info = app.discover()
    out(
        f"\n1. discovery: pack {info['serial']}, state {info['state']} {info['state_name']}, "
        f"security level {info['security_level']}"
    )
    upgraded = app.bootstrap()
    keys = app.keystore.load()
    assert keys is not None
    out(
        f"2. bootstrap: app {keys.app_component_id}, pack {keys.pack_component_id}, "
        f"LCT {keys.lct_id}; keys delivered sealed (X25519), session handshake done"
    )
    out(
        f"   pack state {upgraded['state']} Bootstrap Complete, security level "
        f"{upgraded['security_level']} (CAN 1 encrypted)"
    )
    total = count + legacy
    _wait(
        lambda: len([m for m in app.status()["modules"] if m["online"]]) == total, 5.0 + 0.1 * total
    )
    registered = [m for m in app.status()["modules"] if m["online"]]
    out(
        f"3. module bus: {len(registered)} module(s) registered: "
        + ", ".join(f"{m['module_id']}←{m['unique_id']}" for m in registered)
    )
    secured = [m for m in registered if int(m["unique_id"]) in secured_ids]
    plain = [m for m in registered if int(m["unique_id"]) not in secured_ids]
    for module in secured:
        result = app.pair(int(module["unique_id"]))
        out(
            f"   paired module {result['module_id']} (link {result['link']}): "
            f"state {result['state']}, security level {result['security_level']}"
        )
    for module in secured:
        app.command_state(int(module["module_id"]), ON)
    out("   the app switches every module On (STATE_CHANGE, resealed by the pack per module)")
    if plain:
        # One plain STATE_CHANGE reaches every legacy module (the firmware ignores the id in
        # it): the app refuses unless told so, as `command --every-plain-module` does.
        app.command_state(int(plain[0]["module_id"]), ON, every_plain_module=True)
        out(
            f"   {len(plain)} legacy module(s) ({', '.join(str(m['module_id']) for m in plain)}) "
            "stay plain: one plain STATE_CHANGE, confirmed for every plain module, switches "
            "them On; they never act on the sealed frames beside them"
        )
    # The pack holds MAX_STATE Off for its first seconds on CAN 2 (a module booting into a
    # MAX_STATE On would latch On with its relays open); the firmware remembers the command
    # and goes On when the cap lifts.
    if _wait(lambda: _all_on(app), START_SETTLE_S + 3.0):
        out("   every module reports On (once the pack's start-up MAX_STATE Off had lifted)")
    else:
        out("   not every module reports On yet: see the table below")
    status = app.status()
    out(
        f"4. operational: state {status['state']} {status['state_name']}, security level "
        f"{status['security_level']}; telemetry for {duration_s:g} s, decrypted by the app:"
    )
    app.telemetry_frames = 0
    app.telemetry_frames_by_module.clear()
    end = time.monotonic() + duration_s
    frames, at = 0, time.monotonic()
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        # the live view is `modbatt monitor`'s, one block a second
        now = time.monotonic()
        fps = (app.telemetry_frames - frames) / max(now - at, 1e-6)
        frames, at = app.telemetry_frames, now
        for line in render(view_of(app, app.status(), fps)):
            out(f"   {line}" if line else "")
    telemetry = app.telemetry_frames
    # A restarted pack may give the modules other ids: count each module's frames by its
    # unique id, under the ids of the time.
    by_module = _frames_by_unique_id(app, app.status()["modules"])
    out("5. the pack's flash is lost (erased) and the pack restarts")
    topology.stop_pack()
    for slot in (topology.base / "pack").glob("pack-flash.slot*"):
        slot.unlink()
    topology.start_pack()
    app.session = None
    _wait(lambda: _answers(app), 10.0)
    lost = app.discover()
    out(
        f"   pack state {lost['state']} {lost['state_name']}; the operator confirms the "
        "re-bootstrap (the demo does, as --confirm-rebootstrap would)"
    )
    recovered = app.recover(confirm=True)
    status = app.status()
    recovery_ok = status["state"] == PackState.OPERATIONAL and status["security_level"] == 3
    out(
        f"   recovered: LCTs replaced, keys delivered again, {recovered['repaired_modules']} "
        f"module(s) paired again; state {status['state']} {status['state_name']}, security "
        f"level {status['security_level']}"
    )
    _wait(lambda: app.telemetry_frames > telemetry, 3.0)
    status = app.status()
    reasons = {name for _, name in DROP_REASONS}
    dropped = {k: v for k, v in status["gateway"].items() if k in reasons and v}
    for reason, n in app.dropped.items():
        dropped[f"app_{reason}"] = n
    summary = {
        "pack_state": PackState(status["state"]).name.replace("_", " ").title(),
        "security_level": int(status["security_level"]),
        "modules_paired": sum(1 for m in status["modules"] if m["paired"]),
        "telemetry_frames_received": app.telemetry_frames,
        "frames_dropped": dropped,
        "recovery_ok": recovery_ok,
        "secured_modules": count,
        "legacy_modules": legacy,
        "duration_s": duration_s,
    }
    by_module.update(_frames_by_unique_id(app, status["modules"]))
    return summary, status["modules"], by_module


def _frames_by_unique_id(app: App, table: list[dict[str, Any]]) -> Counter[int]:
    """The app's telemetry frames per module since the last call, by unique id."""
    ids = {int(m["module_id"]): int(m["unique_id"]) for m in table}
    counted = Counter({ids[i]: n for i, n in app.telemetry_frames_by_module.items() if i in ids})
    app.telemetry_frames_by_module.clear()
    return counted


def _module_rows(
    topology: InProcess | Processes, table: list[dict[str, Any]], frames: Counter[int]
) -> list[dict[str, Any]]:
    """The summary's `modules`, by unique id.

    The pack's table as the app sees it (module id, pairing, state) beside each simulated
    module's own report (kind, sealed_frames_acted_on), and the app's telemetry count.
    """
    by_unique_id = {int(m["unique_id"]): m for m in table}
    rows = []
    for report in topology.reports():
        row = by_unique_id.get(report["unique_id"], {})
        module_id = row.get("module_id")
        rows.append(
            {
                "unique_id": report["unique_id"],
                "kind": report["kind"],
                "module_id": module_id,
                "paired": bool(row.get("paired", False)),
                "state": row.get("state", report["state"]),
                "telemetry_frames": frames[report["unique_id"]],
                "sealed_frames_acted_on": report["sealed_frames_acted_on"],
            }
        )
    return rows


def _all_on(app: App) -> bool:
    modules = [m for m in app.status()["modules"] if m["online"]]
    return bool(modules) and all(m["state"] == STATE_NAMES[ON] for m in modules)


def _answers(app: App) -> bool:
    try:
        app.discover()
    except Exception:  # not up yet: any failure means "ask again"
        return False
    return True
