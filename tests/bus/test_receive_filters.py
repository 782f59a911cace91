"""Receive filters derived from the routing table (issue 7): where the interface filters in the
kernel or the adapter, the pack's buses pass only what the pack listens to.

This machine has no SocketCAN, so the lifecycle test has python-can apply the same filters in
Python on the virtual buses: a filter that left out anything the pack needs would stop the
bootstrap, a pairing, the telemetry or a command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import can
import pytest
from can.interfaces.virtual import VirtualBus

from modbatt import ENCRYPTION_FLAG, compose_id
from modbatt.bus import transport
from modbatt.bus.traffic import TrafficLog
from modbatt.bus.transport import CanPort, IdFilter, filters_below_python
from modbatt.pack.controller import CAN1, CAN2
from modbatt.protocol.control import APP_TO_PACK, PACK_TO_APP
from modbatt.protocol.pairing import module_channel_ids
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import bring_up, running_lifecycle, wait_for


class _KernelFilteringBus(VirtualBus):
    """A virtual bus that says it filters below Python, as SocketCAN does."""

    applied: list[Any] | None = None

    def _apply_filters(self, filters: Any) -> None:
        self.applied = filters


def _passes(wanted: list[IdFilter], can_id: int) -> bool:
    return any(can_id & mask == value for mask, value in wanted)


def test_only_interfaces_that_filter_below_python_get_filters() -> None:
    plain = can.Bus(interface="virtual", channel="modbatt-filters-a")
    kernel = _KernelFilteringBus(channel="modbatt-filters-b")
    assert not filters_below_python(plain) and filters_below_python(kernel)
    for bus, applied in ((plain, False), (kernel, True)):
        port = CanPort(bus, "port")
        try:
            assert port.set_receive_filters([(0x7FF << 18, 0x500 << 18)]) is applied
        finally:
            port.close()
    assert kernel.applied == [{"can_id": 0x500 << 18, "can_mask": 0x7FF << 18, "extended": True}]


def test_a_recorded_bus_keeps_its_filters_below_python(tmp_path: Path) -> None:
    """`--log` wraps the pack's buses: the filters still go down to the interface."""
    log = TrafficLog(tmp_path / "pack.log")
    kernel = _KernelFilteringBus(channel="modbatt-filters-c")
    recorded = log.wrap(kernel, "can2")
    plain = log.wrap(can.Bus(interface="virtual", channel="modbatt-filters-d"), "can1")
    assert filters_below_python(recorded) and not filters_below_python(plain)
    port = CanPort(recorded, "can2")
    try:
        assert port.set_receive_filters([(0x7FF << 18, 0x500 << 18)])
    finally:
        port.close()
        plain.shutdown()
        log.close()
    assert kernel.applied == [{"can_id": 0x500 << 18, "can_mask": 0x7FF << 18, "extended": True}]


def test_the_lifecycle_runs_through_the_filters(
    tmp_path: Any, api_bridge: BridgeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "filters_below_python", lambda bus: True)
    with running_lifecycle(tmp_path, api_bridge) as life:
        bring_up(life)
        app = life.app

        wanted = life.pack.receive_filters()
        module_ids = [m.module.module_id for m in life.modules]
        for module_id in module_ids:
            assert module_id is not None
            for can_id in (compose_id(0x502, module_id), module_channel_ids(module_id)[1]):
                assert _passes(wanted[CAN2], can_id) and _passes(
                    wanted[CAN2], can_id | ENCRYPTION_FLAG
                )
            assert _passes(wanted[CAN1], compose_id(0x514, module_id) | ENCRYPTION_FLAG)
        assert _passes(wanted[CAN1], APP_TO_PACK) and _passes(
            wanted[CAN1], APP_TO_PACK | ENCRYPTION_FLAG
        )
        for unwanted in (PACK_TO_APP, compose_id(0x470, 0), 0x18FF_0000):
            assert not _passes(wanted[CAN1], unwanted) and not _passes(wanted[CAN2], unwanted)

        # Frames the pack does not listen to never reach it (the gateway would count them).
        before = life.pack.gateway.stats()["no_route"]
        for port in (life.ports["app"], life.ports["modules"]):
            port.send(0x18FF_0000, b"\x01\x02")
            port.send(0x18FF_0000 | ENCRYPTION_FLAG, bytes(8))
        # ...and everything it does listen to still does: telemetry, then a command.
        app.telemetry.clear()
        assert wait_for(lambda: set(module_ids) <= set(app.telemetry), 4.0)
        first = life.modules[0]
        app.command_state(first.module.module_id or 0, 3, 400.0)
        assert wait_for(lambda: first.module.state == 3, 3.0)
        time.sleep(0.1)
        assert life.pack.gateway.stats()["no_route"] == before
