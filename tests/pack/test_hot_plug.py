"""A module plugged into an Operational pack is registered, paired and bridged (issue 6),
while the modules already paired keep working; on virtual buses with the real API-Bridge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import can

from modbatt.bus.nodes import NodeLoop
from modbatt.bus.transport import CanPort
from modbatt.module.pairing import PairingAgent, SecureModule
from modbatt.module.simulator import BatteryModule, ModuleConfig
from modbatt.pack.keys import PackState
from tests.module.test_pairing import (
    Lifecycle,
    bring_up,
    lifecycle,
    lose_the_packs_flash,
    online_count,
    wait_for,
)

__all__ = ["lifecycle"]  # the fixture, shared with test_pairing.py


@contextmanager
def plugged(life: Lifecycle, unique_id: int) -> Iterator[SecureModule]:
    """A module plugged into CAN 2 for the block, with its own node and pairing agent."""
    port = CanPort(can.Bus(interface="virtual", channel=life.can2_channel), f"module-{unique_id}")
    module = SecureModule(
        BatteryModule(ModuleConfig(unique_id=unique_id, cells=8), now=time.monotonic()),
        life.state_dir / f"module-{unique_id}",
    )
    loop = NodeLoop(port, [module]).start()
    agent = PairingAgent(port, [module], loop).start()
    try:
        yield module
    finally:
        agent.stop()
        loop.stop()
        port.close()


def test_a_hot_plugged_module_is_paired_into_an_operational_pack(lifecycle: Lifecycle) -> None:
    bring_up(lifecycle)
    app = lifecycle.app
    paired_before = {m.module.module_id for m in lifecycle.modules}

    # Plug a third module into CAN 2, with its own node and pairing agent, as a new board is.
    with plugged(lifecycle, 0xC0FFEE) as newcomer:
        assert wait_for(lambda: online_count(lifecycle) == 3, 5.0)
        listed = {m["unique_id"]: m for m in app.status()["modules"]}
        assert listed[0xC0FFEE]["paired"] is False  # registered, not yet trusted
        new_id = newcomer.module.module_id
        assert new_id is not None and new_id not in paired_before

        result = app.pair(0xC0FFEE)
        assert result["module_id"] == new_id
        assert newcomer.session is not None
        status = app.status()
        assert status["state"] == PackState.OPERATIONAL and status["security_level"] == 3
        assert all(m["paired"] for m in status["modules"])

        # Its telemetry now crosses sealed on both buses, and so do the others' still.
        app.telemetry.clear()
        every_module = paired_before | {new_id}
        assert wait_for(lambda: every_module <= set(app.telemetry), 4.0), set(app.telemetry)
        app.command_state(new_id, 3, 400.0)
        assert wait_for(lambda: newcomer.module.state == 3, 3.0)
        assert all(m.dropped["bad_tag"] == 0 for m in [*lifecycle.modules, newcomer])


def test_a_module_unplugged_at_key_recovery_has_its_lct_revoked(lifecycle: Lifecycle) -> None:
    """Recovery pairs the modules that are there; an absent one's LCT is revoked, not left."""
    bring_up(lifecycle)
    app = lifecycle.app
    with plugged(lifecycle, 0xBEEF):
        assert wait_for(lambda: online_count(lifecycle) == 3, 5.0)
        app.pair(0xBEEF)
    # unplugged
    keys = app.keystore.load()
    assert keys is not None
    visitor_lct = keys.module_lcts[str(0xBEEF)]
    lose_the_packs_flash(lifecycle)  # while the visitor is away
    result = app.recover(confirm=True)
    assert result["repaired_modules"] == 2 and result["offline_modules"] == [0xBEEF]
    assert lifecycle.bridge.get_lct(visitor_lct).status == "revoked"
    renewed = app.keystore.load()
    assert renewed is not None and str(0xBEEF) not in renewed.module_lcts
    assert app.audit is not None and '"lct.revoked"' in app.audit.path.read_text()
