"""The pack's receive filters in a real kernel: what the pack does not listen to never reaches
Python, and everything it does still flows (on `virtual`, tests/bus applies the same filters in
Python instead)."""

from __future__ import annotations

import time
from pathlib import Path

import can
import pytest

from modbatt import ENCRYPTION_FLAG
from modbatt.bus.transport import filters_below_python
from modbatt.pack.controller import CAN1, CAN2
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import running_lifecycle, wait_for
from tests.socketcan.kernel import SLOW, operational_pack

pytestmark = pytest.mark.socketcan

UNWANTED = (0x18FF_0000, 0x18FF_0000 | ENCRYPTION_FLAG, 0x1FFF_FFFF)


def test_frames_the_pack_does_not_listen_to_never_reach_python(
    tmp_path: Path, api_bridge: BridgeProcess
) -> None:
    with running_lifecycle(tmp_path, api_bridge, interface="socketcan") as life:
        app = life.app
        operational_pack(life)
        ports = {CAN1: life.ports["pack1"], CAN2: life.ports["pack2"]}
        assert all(filters_below_python(port.bus) for port in ports.values())
        # What reaches Python on the pack's own sockets, counted by id.
        reached: list[int] = []
        for port in ports.values():
            port.subscribe(lambda can_id, _data, _at: reached.append(can_id))
        before = life.pack.gateway.stats()["no_route"]
        for channel in ("vcan0", "vcan1"):
            stranger = can.Bus(interface="socketcan", channel=channel)
            try:
                for can_id in UNWANTED:
                    for _ in range(20):
                        stranger.send(can.Message(arbitration_id=can_id, data=bytes(8)))
            finally:
                stranger.shutdown()
        # ...while everything it listens to still flows: telemetry, then a command.
        module_ids = {m.module.module_id for m in life.modules}
        app.telemetry.clear()
        assert wait_for(lambda: module_ids <= set(app.telemetry), 4.0 * SLOW)
        first = life.modules[0]
        app.command_state(first.module.module_id or 0, 3)
        assert wait_for(lambda: first.module.state == 3, 3.0 * SLOW)
        time.sleep(1.0)
        assert reached, "the pack's sockets received nothing at all"
        assert not set(reached) & set(UNWANTED)
        assert life.pack.gateway.stats()["no_route"] == before
