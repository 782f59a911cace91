"""The command-line runners of the node roles: `modbatt module run` and `modbatt pack run`.

Each opens its bus through :class:`~modbatt.bus.transport.CanPort`, drives its sans-I/O nodes
with a :class:`~modbatt.bus.nodes.NodeLoop` and prints what changes, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import gc
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from modbatt.bus.nodes import NodeLoop
from modbatt.bus.traffic import traffic_log
from modbatt.bus.transport import BusSpec, CanPort
from modbatt.module.pairing import PairingAgent, SecureModule, simulator_report
from modbatt.module.simulator import modules_for
from modbatt.pack.controller import PackController
from modbatt.pack.modules import ModuleManager, format_table
from modbatt.state.stores import AuditLog, atomic_write

Printer = Callable[[str], object]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _until_stopped(duration_s: float | None) -> Iterator[threading.Event]:
    """An event set by SIGINT, SIGTERM or the end of `duration_s`, for the block's length.

    The previous signal handlers come back afterwards, and the duration's timer is cancelled:
    a role stopped by Ctrl-C exits at once, not when its --duration would have ended.
    """
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    timer = None if duration_s is None else threading.Timer(duration_s, stop.set)
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield stop
    finally:
        if timer is not None:
            timer.cancel()
        for number, old in previous.items():
            signal.signal(number, old)


def run_modules(
    spec: BusSpec,
    first_unique_id: int,
    count: int,
    cells: int,
    duration_s: float | None = None,
    out: Printer = print,
    state_dir: Path | None = None,
    log_path: Path | None = None,
    legacy: bool = False,
    report_path: Path | None = None,
) -> int:
    """Simulate `count` modules on one bus.

    Secured ones pair with the pack (their flash under `state_dir`); legacy ones stay plain,
    as the firmware ships. With `report_path`, each module's report (`simulator_report`) is
    written there as JSON when the modules stop.
    """
    with (
        _until_stopped(duration_s) as stop,
        traffic_log(log_path) as log,
        CanPort.open(spec, log=log, log_channel="can2") as port,
    ):
        batteries = modules_for(first_unique_id, count, cells, time.monotonic())
        modules = [
            SecureModule(
                m, None if state_dir is None else state_dir / f"module-{m.config.unique_id}"
            )
            for m in ([] if legacy else batteries)
        ]
        known: dict[int, tuple[int | None, bool]] = {
            m.config.unique_id: (None, False) for m in batteries
        }
        linked = {s.module.config.unique_id: s for s in modules}

        def report() -> None:
            for module in batteries:
                secure = linked.get(module.config.unique_id)
                now = (module.module_id, secure is not None and secure.session is not None)
                if now != known[module.config.unique_id]:
                    known[module.config.unique_id] = now
                    where = (
                        f"registered as module {module.module_id}"
                        if module.registered
                        else "unregistered (announces on node 0x00 when asked)"
                    )
                    paired = ", paired: frames sealed" if now[1] else ""
                    out(f"unique id {module.config.unique_id}: {where}{paired}")

        kind = "legacy (plain)" if legacy else "secured"
        out(
            f"{count} {kind} module(s), unique ids {first_unique_id}.."
            f"{first_unique_id + count - 1}, {cells} cells, on {port.name}"
        )
        loop = NodeLoop(port, modules or batteries, after_step=report).start()
        agent = None if legacy else PairingAgent(port, modules, loop).start()
        stop.wait()
        if agent is not None:
            agent.stop()
        loop.stop()
        if report_path is not None:
            reports = [simulator_report(node) for node in modules or batteries]
            atomic_write(report_path, (json.dumps(reports, indent=2) + "\n").encode(), 0o644)
    return 0


def run_pack(
    can1: BusSpec,
    can2: BusSpec,
    state_dir: Path,
    serial: str,
    duration_s: float | None = None,
    out: Printer = print,
    log_path: Path | None = None,
) -> int:
    """The pack controller: the app side, the module side and the gateway."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (
        _until_stopped(duration_s) as stop,
        traffic_log(log_path) as log,
        CanPort.open(can1, log=log, log_channel="can1") as port1,
        CanPort.open(can2, log=log, log_channel="can2") as port2,
    ):
        audit = AuditLog(state_dir / "audit.jsonl")
        pack = PackController(serial, state_dir, port1, port2, audit).start()
        # Everything built so far lives as long as the process: freeze it, so that the
        # collector's full passes (which stop every thread, the bridge's too) skip it.
        gc.collect()
        gc.freeze()
        out(
            f"pack controller {serial}: CAN 1 on {port1.name}, CAN 2 on {port2.name}, "
            f"state in {state_dir}"
        )
        if pack.flash_problem:
            out(f"FLASH PROBLEM: {pack.flash_problem} (run key recovery from the app)")
        shown: tuple[int, int, int] | None = None
        while not stop.wait(0.5):
            for event in pack.take_events():
                out(str(event))
            now = (int(pack.state), pack.security_level, len(pack.module_links()))
            if now != shown:
                shown = now
                out(
                    f"state {now[0]} {pack.state.name.replace('_', ' ').title()}, "
                    f"security level {now[1]}, {now[2]} module link(s) encrypted"
                )
        pack.stop()
    return 0


def run_pack_module_side(
    spec: BusSpec,
    duration_s: float | None = None,
    out: Printer = print,
    log_path: Path | None = None,
) -> int:
    """The pack controller's module side alone: register modules, print the table."""
    with (
        _until_stopped(duration_s) as stop,
        traffic_log(log_path) as log,
        CanPort.open(spec, log=log, log_channel="can2") as port,
    ):
        manager = ModuleManager()
        last_print = 0.0

        def report() -> None:
            nonlocal last_print
            events = manager.drain_events()
            for event in events:
                out(str(event))
            now = time.monotonic()
            if events or now - last_print > 5.0:
                last_print = now
                out(format_table(manager.snapshot()))

        out(f"pack controller, module bus (CAN 2) on {port.name}")
        loop = NodeLoop(port, [manager], after_step=report).start()
        stop.wait()
        loop.stop()
    return 0
