"""What the SocketCAN tests share: emulation's pace, and an operational pack on vcan0/vcan1."""

from __future__ import annotations

from modbatt.pack.keys import PackState
from tests.module.test_pairing import Lifecycle, online_count, wait_for

SLOW = 10.0  # emulation is 10-30 times slower than the host: waits are this much longer


def operational_pack(life: Lifecycle) -> None:
    """Bootstrap, wait for both modules, pair them: an Operational pack, on SocketCAN."""
    life.app.bootstrap()
    assert wait_for(lambda: online_count(life) == 2, 5.0 * SLOW)
    for module in life.modules:
        life.app.pair(module.module.config.unique_id)
    assert life.app.status()["state"] == PackState.OPERATIONAL
