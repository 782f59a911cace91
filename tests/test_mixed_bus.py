"""Secured and legacy modules on one CAN 2, and strangers' plain commands (issue 14, parts 3
and 4); on virtual buses with the real API-Bridge.

The module firmware ignores the node byte, bit 17 and the module id in payloads, so a
legacy module reads every frame on a command base as a plain command addressed to it. A
paired module takes the pack's commands only sealed, on the secured command bases (base XOR
0x050), which the firmware does not know; so no sealed frame is ever a command to a legacy
module, and no plain frame, the pack's or a stranger's, is one to a paired module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import can
import pytest

from modbatt.app import PlainCommandError
from modbatt.catalogue import catalogue
from modbatt.firmware import OFF, ON
from modbatt.module_sim import BatteryModule, ModuleConfig
from modbatt.nodes import NodeLoop
from modbatt.pack import ALERT_FOREIGN_COMMAND
from modbatt.pack_modules import START_SETTLE_S
from modbatt.transport import CanPort
from tests.test_pairing import Lifecycle, bring_up, lifecycle, online_count, wait_for

__all__ = ["lifecycle"]  # the fixture, shared with test_pairing.py

db = catalogue()


@contextmanager
def legacy_modules(life: Lifecycle, *unique_ids: int) -> Iterator[list[BatteryModule]]:
    """Legacy modules (the firmware as shipped, plain only) on CAN 2 for the block."""
    port = CanPort(can.Bus(interface="virtual", channel=life.can2_channel), "legacy")
    modules = [
        BatteryModule(ModuleConfig(unique_id=u, cells=6), now=time.monotonic()) for u in unique_ids
    ]
    loop = NodeLoop(port, modules).start()
    try:
        yield modules
    finally:
        loop.stop()
        port.close()


@contextmanager
def stranger(life: Lifecycle) -> Iterator[can.BusABC]:
    bus = can.Bus(interface="virtual", channel=life.can2_channel)
    try:
        yield bus
    finally:
        bus.shutdown()


def send(bus: can.BusABC, frame: tuple[int, bytes], times: int = 1) -> None:
    can_id, data = frame
    for _ in range(times):
        bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))


def all_on(life: Lifecycle) -> None:
    """Every paired module commanded On, and On."""
    time.sleep(max(0.0, START_SETTLE_S - 2.0))  # the pack's MAX_STATE starts Off
    for module in life.modules:
        life.app.command_state(module.module.module_id or 0, ON)
    assert wait_for(lambda: all(m.module.state == ON for m in life.modules), 5.0)


def test_plain_broadcasts_from_a_stranger_do_not_switch_paired_modules_off(
    lifecycle: Lifecycle,
) -> None:
    """SECURITY.md: ALL_ISOLATE, MAX_STATE, ALL_DEREGISTER, SET_TIME, ANNOUNCE_REQUEST and
    REGISTRATION sent plain by anyone but through the pack's sealed copies."""
    bring_up(lifecycle)
    all_on(lifecycle)
    first = lifecycle.modules[0].module
    with stranger(lifecycle) as bus:
        send(bus, db.encode("ALL_ISOLATE", 0, {"ControllerId": 0}), 20)
        send(bus, db.encode("MAX_STATE", 0, {"MaxState": OFF}), 5)
        send(bus, db.encode("ALL_DEREGISTER", 0, {"ControllerId": 0}), 5)
        send(bus, db.encode("SET_TIME", 0, {"UnixTime": 0, "TimeValid": 0}), 5)
        send(bus, db.encode("ANNOUNCE_REQUEST", 0, {"ControllerId": 0}), 5)
        registration = {
            "ModuleId": 9,
            "ControllerId": 0,
            "MfgId": 2,
            "PartId": 3,
            "UniqueId": first.config.unique_id,
        }
        send(bus, db.encode("REGISTRATION", 0xFF, registration), 5)
        module_id = first.module_id or 0
        send(
            bus,
            db.encode("STATE_CHANGE", module_id, {"ModuleId": module_id, "RequestedState": OFF}),
        )
        time.sleep(1.0)
    for secure in lifecycle.modules:
        module = secure.module
        assert module.state == ON and module.registered and module.unix_time != 0
        assert secure.dropped["plain_broadcast"] >= 35  # ALL_ISOLATE, MAX_STATE, ...
    assert first.module_id == module_id  # the forged REGISTRATION changed nothing
    assert lifecycle.modules[0].dropped["downgrade"] >= 6  # REGISTRATION and STATE_CHANGE
    # the pack saw pack commands it did not send, and told the app
    foreign = lifecycle.pack.manager.foreign_commands
    assert foreign["ALL_ISOLATE"] == 20 and foreign["REGISTRATION"] == 5
    assert wait_for(
        lambda: any(a["code"] == ALERT_FOREIGN_COMMAND for a in lifecycle.app.alerts), 3.0
    )


def test_the_pack_reaches_paired_modules_with_sealed_copies_of_its_broadcasts(
    lifecycle: Lifecycle,
) -> None:
    """The authenticated MAX_STATE and SET_TIME: each paired module gets its own, sealed."""
    bring_up(lifecycle)
    all_on(lifecycle)
    lifecycle.app.configure(max_state=1)  # Standby at most
    assert wait_for(lambda: all(m.module.state == 1 for m in lifecycle.modules), 3.0)
    for module in lifecycle.modules:
        assert module.module.unix_time is not None  # SET_TIME, its answer to TIME_REQUEST
        assert module.dropped["bad_tag"] == 0


def test_a_legacy_module_never_acts_on_sealed_traffic(lifecycle: Lifecycle) -> None:
    with legacy_modules(lifecycle, 0x1E6AC1) as [legacy]:
        lifecycle.app.bootstrap()
        assert wait_for(lambda: online_count(lifecycle) == 3, 6.0)
        for module in lifecycle.modules:
            lifecycle.app.pair(module.module.config.unique_id)
        all_on(lifecycle)
        lifecycle.app.configure(max_state=ON)
        time.sleep(2.0)  # sealed polls, MAX_STATE copies, commands, all around it
        assert legacy.sealed_frames_acted_on == 0
        assert legacy.state == OFF and legacy.registered  # plain polls keep it registered
        # and its plain telemetry reaches the app, sealed on CAN 1
        legacy_id = legacy.module_id or 0
        lifecycle.app.telemetry.pop(legacy_id, None)
        assert wait_for(lambda: "STATUS_1" in lifecycle.app.telemetry.get(legacy_id, {}), 3.0)


def test_a_command_to_one_of_several_legacy_modules_needs_the_operators_confirmation(
    lifecycle: Lifecycle,
) -> None:
    with legacy_modules(lifecycle, 0x1E6AC1, 0x1E6AC2) as legacy:
        lifecycle.app.bootstrap()
        assert wait_for(lambda: online_count(lifecycle) == 4, 6.0)
        for module in lifecycle.modules:
            lifecycle.app.pair(module.module.config.unique_id)
        time.sleep(START_SETTLE_S)
        target = legacy[0].module_id or 0
        with pytest.raises(PlainCommandError, match=f"also modules .*{legacy[1].module_id}"):
            lifecycle.app.command_state(target, ON)
        time.sleep(0.5)
        assert [m.state for m in legacy] == [OFF, OFF]  # nothing was sent
        lifecycle.app.command_state(target, ON, every_plain_module=True)
        assert wait_for(lambda: [m.state for m in legacy] == [ON, ON], 3.0)
        assert all(m.module.state == OFF for m in lifecycle.modules)  # the secured: untouched


def test_the_operators_isolate_switches_every_module_off_paired_or_legacy(
    lifecycle: Lifecycle,
) -> None:
    """`modbatt app ... isolate`: one plain ALL_ISOLATE for the legacy modules, a sealed copy
    per paired module (which drops the plain one), sent at once by the pack."""
    with legacy_modules(lifecycle, 0x1E6AC1) as [legacy]:
        lifecycle.app.bootstrap()
        assert wait_for(lambda: online_count(lifecycle) == 3, 6.0)
        for module in lifecycle.modules:
            lifecycle.app.pair(module.module.config.unique_id)
        all_on(lifecycle)
        lifecycle.app.command_state(legacy.module_id or 0, ON, every_plain_module=True)
        assert wait_for(lambda: legacy.state == ON, 3.0)
        answer = lifecycle.app.isolate_all()
        paired_ids = sorted(m.module.module_id or 0 for m in lifecycle.modules)
        assert answer["plain"] is True and answer["sealed"] == paired_ids
        # every module Off within a few of its 100 ms ticks (state handling runs 3 in 6)
        assert wait_for(
            lambda: legacy.state == OFF and all(m.module.state == OFF for m in lifecycle.modules),
            1.5,
        )
        assert legacy.sealed_frames_acted_on == 0
        assert all(m.dropped["plain_broadcast"] >= 1 for m in lifecycle.modules)
        assert all(m.dropped["bad_tag"] == 0 for m in lifecycle.modules)
        # the pack's own ALL_ISOLATE is not a foreign command
        assert lifecycle.pack.manager.foreign_commands["ALL_ISOLATE"] == 0
