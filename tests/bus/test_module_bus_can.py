"""The module bus on real python-can buses: `virtual` in one process, `udp_multicast` across
processes started from the command line, as a user would."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modbatt.bus.nodes import NodeLoop
from modbatt.bus.transport import CanPort, parse_bus_spec
from modbatt.module.simulator import modules_for
from modbatt.pack.modules import ModuleManager


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def channel() -> str:
    return f"virtual:modbatt-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pack_loop(channel: str) -> Iterator[tuple[ModuleManager, NodeLoop]]:
    port = CanPort.open(parse_bus_spec(channel))
    manager = ModuleManager()
    loop = NodeLoop(port, [manager]).start()
    yield manager, loop
    loop.stop()
    port.close()


def online(manager: ModuleManager, loop: NodeLoop) -> dict[int, int]:
    with loop.lock:
        return {m.unique_id: m.module_id for m in manager.online()}


def test_registration_and_a_silent_module_on_virtual_buses(
    channel: str, pack_loop: tuple[ModuleManager, NodeLoop]
) -> None:
    manager, loop = pack_loop
    ports, loops = [], []
    for first, count in ((100, 4), (200, 1)):
        port = CanPort.open(parse_bus_spec(channel))
        ports.append(port)
        loops.append(NodeLoop(port, modules_for(first, count, 14, time.monotonic())).start())
    try:
        assert wait_for(lambda: len(online(manager, loop)) == 5, 5.0), online(manager, loop)
        assert sorted(online(manager, loop).values()) == [1, 2, 3, 4, 5]
        loops[1].stop()  # the lone module goes quiet
        assert wait_for(lambda: 200 not in online(manager, loop), 4.0)
        loops[1] = NodeLoop(ports[1], loops[1].nodes).start()  # and comes back
        assert wait_for(lambda: 200 in online(manager, loop), 3.0)
    finally:
        for node_loop in loops:
            node_loop.stop()
        for port in ports:
            port.close()


def test_one_notifier_serves_every_reader(channel: str) -> None:
    received: list[tuple[int, bytes]] = []
    with CanPort.open(parse_bus_spec(channel)) as rx, CanPort.open(parse_bus_spec(channel)) as tx:
        rx.subscribe(lambda can_id, data, _t: received.append((can_id, data)))
        reader = rx.reader()
        tx.send(0x1408_0005, b"\x01\x02")
        assert wait_for(lambda: len(received) == 1, 2.0)
        message = reader.get_message(timeout=1.0)
        assert message is not None and message.arbitration_id == 0x1408_0005
    assert received == [(0x1408_0005, b"\x01\x02")]


def test_modules_and_pack_in_separate_processes_over_udp_multicast() -> None:
    pytest.importorskip("msgpack")
    group = f"239.74.{random.randint(0, 255)}.{random.randint(1, 254)}"
    bus = f"udp_multicast:{group}"
    command = [sys.executable, "-u", "-m", "modbatt"]
    pack = subprocess.Popen(
        [*command, "pack", "run", "--can2", bus],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    modules: list[subprocess.Popen[bytes]] = [
        subprocess.Popen(
            [
                *command,
                "module",
                "run",
                "--can",
                bus,
                "--unique-id",
                str(first),
                "--count",
                str(count),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for first, count in ((7000, 3), (8000, 1))
    ]
    registered: set[int] = set()
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 20
        assert pack.stdout is not None
        while len(registered) < 4 and time.monotonic() < deadline:
            line = pack.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.match(r"module (\d+) \(unique id (\d+)\) registered", line)
            if found:
                registered.add(int(found.group(2)))
    finally:
        processes: list[subprocess.Popen[Any]] = [*modules, pack]
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
        if pack.stdout is not None:
            pack.stdout.close()
    assert registered == {7000, 7001, 7002, 8000}, "".join(lines[-20:])
    assert pack.returncode == 0
