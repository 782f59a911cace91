"""The command-line runners of the node roles: `modbatt module run` and `modbatt pack run`.

Each opens its bus through :class:`~modbatt.transport.CanPort`, drives its sans-I/O nodes
with a :class:`~modbatt.nodes.NodeLoop` and prints what changes, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from modbatt.module_sim import modules_for
from modbatt.nodes import NodeLoop
from modbatt.pack_modules import ModuleManager, format_table
from modbatt.transport import BusSpec, CanPort

Printer = Callable[[str], object]


def _until_stopped(duration_s: float | None) -> threading.Event:
    """An event set by SIGINT, SIGTERM or the end of `duration_s`."""
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if duration_s is not None:
        threading.Timer(duration_s, stop.set).start()
    return stop


def run_modules(
    spec: BusSpec,
    first_unique_id: int,
    count: int,
    cells: int,
    duration_s: float | None = None,
    out: Printer = print,
) -> int:
    """Simulate `count` modules on one bus."""
    stop = _until_stopped(duration_s)
    with CanPort.open(spec) as port:
        modules = modules_for(first_unique_id, count, cells, time.monotonic())
        known: dict[int, int | None] = {m.config.unique_id: None for m in modules}

        def report() -> None:
            for module in modules:
                if module.module_id != known[module.config.unique_id]:
                    known[module.config.unique_id] = module.module_id
                    where = (
                        f"registered as module {module.module_id}"
                        if module.registered
                        else "unregistered, announcing on node 0xFF"
                    )
                    out(f"unique id {module.config.unique_id}: {where}")

        out(
            f"{count} module(s), unique ids {first_unique_id}..{first_unique_id + count - 1}, "
            f"{cells} cells, on {port.name}"
        )
        loop = NodeLoop(port, modules, after_step=report).start()
        stop.wait()
        loop.stop()
    return 0


def run_pack(spec: BusSpec, duration_s: float | None = None, out: Printer = print) -> int:
    """The pack controller's module side alone: register modules, print the table."""
    stop = _until_stopped(duration_s)
    with CanPort.open(spec) as port:
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
