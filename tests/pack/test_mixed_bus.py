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
from dataclasses import dataclass
from pathlib import Path

import can
import pytest

from modbatt.app.app import PlainCommandError
from modbatt.bus.nodes import NodeLoop
from modbatt.bus.transport import CanPort
from modbatt.module.simulator import BatteryModule, ModuleConfig
from modbatt.pack.modules import START_SETTLE_S
from modbatt.protocol.catalogue import catalogue
from modbatt.protocol.firmware import OFF, ON
from modbatt.protocol.status import ALERT_FOREIGN_COMMAND, ALERT_MODULE_LATCHED
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import (
    Lifecycle,
    bring_up,
    lifecycle,
    online_count,
    running_lifecycle,
    settled,
    wait_for,
)
from tests.pack.test_hot_plug import plugged

__all__ = ["lifecycle"]  # the fixture, shared with test_pairing.py

db = catalogue()


@dataclass
class LegacyModules:
    """Legacy modules on one node loop, as a board's worth of them on CAN 2."""

    modules: list[BatteryModule]
    loop: NodeLoop

    def __iter__(self) -> Iterator[BatteryModule]:
        return iter(self.modules)

    def __getitem__(self, index: int) -> BatteryModule:
        return self.modules[index]

    def reboot(self, index: int) -> BatteryModule:
        """Power-cycle one module: the same identity, the firmware's state from scratch."""
        old = self.modules[index]
        fresh = BatteryModule(old.config, now=time.monotonic())
        with self.loop.lock:
            at = next(i for i, node in enumerate(self.loop.nodes) if node is old)
            self.loop.nodes[at] = fresh
        self.modules[index] = fresh
        return fresh


@contextmanager
def legacy_modules(life: Lifecycle, *unique_ids: int) -> Iterator[LegacyModules]:
    """Legacy modules (the firmware as shipped, plain only) on CAN 2 for the block."""
    port = CanPort(can.Bus(interface="virtual", channel=life.can2_channel), "legacy")
    modules = [
        BatteryModule(ModuleConfig(unique_id=u, cells=6), now=time.monotonic()) for u in unique_ids
    ]
    loop = NodeLoop(port, modules).start()
    try:
        yield LegacyModules(modules, loop)
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


def assert_booted_off_or_reported_latched(life: Lifecycle, module: BatteryModule) -> None:
    """A module that boots while the pack broadcasts MAX_STATE On may take it before its
    first state tick and report On with its relays open (the firmware's boot race,
    MODULE_BUS.md): then the pack must have said so (alert 8). Either way no relay closed."""
    assert not module.contactors_closed
    if module.state == OFF:
        return
    assert wait_for(
        lambda: any(
            a["code"] == ALERT_MODULE_LATCHED and a["module_id"] == module.module_id
            for a in life.app.alerts
        ),
        3.0,
    ), life.app.alerts


KINDS = {"legacy": (0, 2), "secured": (2, 0), "mixed": (2, 2)}  # (secured, legacy) modules


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_whole_lifecycle_with_the_firmwares_timing(
    kind: str, tmp_path: Path, api_bridge: BridgeProcess
) -> None:
    """Legacy modules only, secured modules only, and both on one CAN 2: bootstrap,
    registration (node 0x00 announcements, their delays), pairing, every module On, telemetry,
    a module of each kind power-cycled, a module of each kind hot-plugged, then a pack restart
    (ALL_DEREGISTER and ANNOUNCE_REQUEST for the plain ones, kept ids and a new handshake for
    the paired ones); no legacy module ever acts on a sealed frame."""
    secured_count, legacy_count = KINDS[kind]
    uids = range(0x1E6AC1, 0x1E6AC1 + legacy_count)
    with (
        running_lifecycle(tmp_path, api_bridge, secured=secured_count) as life,
        legacy_modules(life, *uids) as legacy,
    ):
        app, paired = life.app, life.modules

        def everyone() -> list[BatteryModule]:
            return [m.module for m in paired] + list(legacy)

        def all_heard(modules: list[BatteryModule]) -> bool:
            heard = {n for n, t in app.telemetry.items() if "STATUS_1" in t}
            return all(m.module_id in heard for m in modules)

        app.bootstrap()
        assert wait_for(lambda: online_count(life) == secured_count + legacy_count, 6.0)
        for module in paired:
            app.pair(module.module.config.unique_id)
        settled(life)
        for module in paired:
            app.command_state(module.module.module_id or 0, ON)
        if legacy_count:
            app.command_state(legacy[0].module_id or 0, ON, every_plain_module=True)
        assert wait_for(lambda: all(m.state == ON for m in everyone()), 5.0)
        app.telemetry.clear()
        assert wait_for(lambda: all_heard(everyone()), 4.0)

        # A module of each kind is power-cycled: registered again on its id (and the paired
        # one linked again by the pack), Off as the firmware boots.
        if paired:
            first = paired[0]
            before = first.module.module_id
            first.session = None
            first.module = BatteryModule(first.module.config, now=time.monotonic())
            assert wait_for(lambda: first.session is not None, 10.0)
            assert first.module.module_id == before
            assert_booted_off_or_reported_latched(life, first.module)
        if legacy_count:
            before = legacy[0].module_id
            rebooted = legacy.reboot(0)
            assert wait_for(lambda: rebooted.module_id == before, 8.0)
            assert_booted_off_or_reported_latched(life, rebooted)
        app.telemetry.clear()
        assert wait_for(lambda: all_heard(everyone()), 4.0)

        # A module of each kind is plugged in while the pack runs.
        with (
            plugged(life, 0xC0FFEE) as newcomer,
            legacy_modules(life, 0x1E6AD0) as [plain_newcomer],
        ):
            assert wait_for(lambda: newcomer.module.registered, 8.0)
            assert wait_for(lambda: plain_newcomer.registered, 8.0)
            app.pair(0xC0FFEE)
            assert newcomer.session is not None
            app.telemetry.clear()
            assert wait_for(lambda: all_heard([newcomer.module, plain_newcomer]), 4.0)
            # asked again once its cell string is up, not left with its first, empty status
            plain_id = plain_newcomer.module_id or 0

            def cells_read() -> bool:
                status_2 = app.telemetry.get(plain_id, {}).get("STATUS_2", {})
                return bool(status_2.get("MinCellVoltage", 0) > 2.5)

            assert wait_for(cells_read, 4.0)

        # The pack restarts on its flash: every module comes back, without an operator.
        life.pack.stop()
        life.pack = life.pack.started_again()
        app.connect()
        assert wait_for(lambda: online_count(life) == secured_count + legacy_count, 8.0), (
            app.status()["modules"]
        )
        assert wait_for(lambda: all(m.session is not None for m in paired), 10.0)
        assert wait_for(lambda: all(m.registered for m in everyone()), 2.0)
        status = app.status()
        assert status["security_level"] == (3 if paired else 1)
        online = [m for m in status["modules"] if m["online"]]
        assert all(m["paired"] == (m["unique_id"] not in uids) for m in online), online
        app.telemetry.clear()
        assert wait_for(lambda: all_heard(everyone()), 4.0)
        assert all(m.sealed_frames_acted_on == 0 for m in legacy)
        assert all(m.dropped["bad_tag"] == 0 for m in paired)
