"""``modbatt demo``: the whole system in one process, on two python-can ``virtual`` buses.

The embedded API-Bridge on a free loopback port with a temporary database, a pack
controller, N battery modules and the app. It walks the lifecycle: discovery, registration
and LCT, bootstrap key delivery, the encrypted app bus, module registration and pairing, the
encrypted module bus, telemetry bridged to the app for ``--duration`` seconds, a simulated
loss of the pack's flash and its recovery, and Operational again; then a summary.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import can
import uvicorn

from modbatt import is_encrypted
from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig
from modbatt.api_bridge.server import build
from modbatt.app import App
from modbatt.control import APP_TO_PACK, PACK_TO_APP, ControlEndpoint
from modbatt.module_sim import modules_for
from modbatt.nodes import NodeLoop
from modbatt.pack import PackController, PackRuntime, PackState
from modbatt.pairing import PairingAgent, SecureModule
from modbatt.stores import AuditLog
from modbatt.transport import CanPort

Printer = Callable[[str], object]


@contextmanager
def embedded_api_bridge(db: Path) -> Iterator[str]:
    """The embedded API-Bridge on a free loopback port, in this process; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            build(db, None), host="127.0.0.1", port=port, log_level="warning", access_log=False
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
    """Counts frames on a bus: all, with E set, and plain module-bus frames after a moment."""

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
    modules: int
    duration_s: float
    can1_frames: int
    can1_encrypted: int
    can2_frames: int
    can2_encrypted: int


def _table(app: App, out: Printer) -> None:
    out(f"   {'module':>6}  {'state':9}  {'SOC %':>6}  {'V':>7}  {'A':>7}  {'T max °C':>8}")
    for node in sorted(app.telemetry):
        t = app.telemetry[node]
        s1, s3 = t.get("STATUS_1", {}), t.get("STATUS_3", {})
        state = {0: "Off", 1: "Standby", 2: "Precharge", 3: "On"}.get(int(s1.get("State", -1)), "?")
        out(
            f"   {node:>6}  {state:9}  {s1.get('SOC', 0):6.1f}  {s1.get('ModuleVoltage', 0):7.2f}"
            f"  {s1.get('Current', 0):7.2f}  {s3.get('MaxCellTemp', 0):8.2f}"
        )


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)  # conditions ask the pack over the control channel: not too often
    return condition()


def run_demo(
    modules: int = 4, duration_s: float = 10.0, json_path: Path | None = None, out: Printer = print
) -> Summary:
    """Run the whole lifecycle; returns (and with `json_path` writes) the summary."""
    if not 1 <= modules <= 31:
        raise ValueError("--modules must be between 1 and 31")
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="modbatt-demo-") as tmp:
        base = Path(tmp)
        with embedded_api_bridge(base / "api-bridge.sqlite3") as url:
            return _lifecycle(base, url, run, modules, duration_s, json_path, out)


def _lifecycle(
    base: Path,
    url: str,
    run: str,
    count: int,
    duration_s: float,
    json_path: Path | None,
    out: Printer,
) -> Summary:
    out(
        f"modbatt demo: API-Bridge at {url}; CAN 1 = virtual:modbatt-demo-{run}-can1, "
        f"CAN 2 = virtual:modbatt-demo-{run}-can2; {count} module(s)"
    )
    ports = {
        name: CanPort(can.Bus(interface="virtual", channel=f"modbatt-demo-{run}-{bus}"), name)
        for name, bus in (
            ("app", "can1"),
            ("pack1", "can1"),
            ("pack2", "can2"),
            ("modules", "can2"),
        )
    }
    counters = {bus: BusCounter() for bus in ("can1", "can2")}
    watchers = [
        can.Bus(interface="virtual", channel=f"modbatt-demo-{run}-{bus}") for bus in counters
    ]
    notifiers = [
        can.Notifier(bus, [counters[name]]) for bus, name in zip(watchers, counters, strict=True)
    ]
    audit = AuditLog(base / "audit.jsonl")
    serial = f"PACK-{run[:6].upper()}"
    pack = PackRuntime(
        PackController(serial, base / "pack", audit), ports["pack1"], ports["pack2"]
    ).start()
    simulated = [
        SecureModule(m, base / f"module-{m.config.unique_id}")
        for m in modules_for(10_000, count, 14, time.monotonic())
    ]
    module_loop = NodeLoop(ports["modules"], simulated).start()
    agent = PairingAgent(ports["modules"], simulated, module_loop).start()
    bridge = ApiBridgeClient(ApiBridgeConfig(base_url=url))
    app = App(
        base / "app",
        ControlEndpoint.open(ports["app"], APP_TO_PACK, PACK_TO_APP),
        bridge,
        audit,
    )
    ports["app"].subscribe(app.on_frame)
    recovery_ok = False
    try:
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
        _wait(
            lambda: len([m for m in app.status()["modules"] if m["online"]]) == count,
            3.0 + 0.1 * count,
        )
        registered = [m for m in app.status()["modules"] if m["online"]]
        out(
            f"3. module bus: {len(registered)} module(s) registered: "
            + ", ".join(f"{m['module_id']}←{m['unique_id']}" for m in registered)
        )
        for module in registered:
            result = app.pair(int(module["unique_id"]))
            out(
                f"   paired module {result['module_id']} (link {result['link']}): "
                f"state {result['state']}, security level {result['security_level']}"
            )
        status = app.status()
        out(
            f"4. operational: state {status['state']} {status['state_name']}, security level "
            f"{status['security_level']}; telemetry for {duration_s:g} s, decrypted by the app:"
        )
        app.telemetry_frames = 0
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            _table(app, out)
        telemetry = app.telemetry_frames
        out("5. the pack's flash is lost (erased) and the pack restarts")
        pack.stop()
        pack.controller.flash_store.erase()
        pack = PackRuntime(
            PackController(serial, base / "pack", audit), ports["pack1"], ports["pack2"]
        ).start()
        app.session = None
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
        _wait(lambda: app.telemetry_frames > telemetry, 2.0)
        stats = pack.controller.gateway.stats()
        dropped = {
            k: v for k, v in stats.items() if k not in ("received", "forwarded", "pending") and v
        }
        for reason, n in app.dropped.items():
            dropped[f"app_{reason}"] = n
        summary = Summary(
            pack_state=PackState(status["state"]).name.replace("_", " ").title(),
            security_level=int(status["security_level"]),
            modules_paired=sum(1 for m in status["modules"] if m["paired"]),
            telemetry_frames_received=app.telemetry_frames,
            frames_dropped=dropped,
            recovery_ok=recovery_ok,
            modules=count,
            duration_s=duration_s,
            can1_frames=counters["can1"].frames,
            can1_encrypted=counters["can1"].encrypted,
            can2_frames=counters["can2"].frames,
            can2_encrypted=counters["can2"].encrypted,
        )
    finally:
        agent.stop()
        module_loop.stop()
        pack.stop()
        app.endpoint.close()
        bridge.close()
        for notifier in notifiers:
            notifier.stop()
        for watcher in watchers:
            watcher.shutdown()
        for port in ports.values():
            port.close()
    out(
        f"\nsummary: state {summary.pack_state}, security level {summary.security_level}, "
        f"{summary.modules_paired} module(s) paired, {summary.telemetry_frames_received} "
        f"telemetry frames decrypted by the app, dropped {summary.frames_dropped or 'nothing'}, "
        f"recovery {'ok' if summary.recovery_ok else 'FAILED'}"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(summary.__dict__, indent=2) + "\n")
    return summary
