"""The pack's module side with firmware-faithful modules, on virtual time: registration,
polling, restarts, hot-plug, MAX_STATE, time, hardware checks and bad input."""

from __future__ import annotations

import itertools
import logging

import pytest

from modbatt import compose_id
from modbatt.module.simulator import BatteryModule, ModuleConfig, modules_for
from modbatt.pack.modules import (
    START_SETTLE_S,
    STATUS_POLL_S,
    ModuleManager,
    bus_load,
)
from modbatt.protocol.catalogue import catalogue
from modbatt.protocol.firmware import OFF, ON, PACK_CONTROLLER_TIMEOUT_S, STANDBY
from tests.virtual_time import VirtualBus

db = catalogue()
WALL_CLOCK = 1_764_944_000.0


def pack_with(
    count: int, first: int = 1000, cells: int = 14, max_state: int = ON
) -> tuple[VirtualBus, ModuleManager, list[BatteryModule]]:
    bus = VirtualBus()
    pack = ModuleManager(max_state=max_state, wall_clock=lambda: WALL_CLOCK + bus.now)
    bus.attach(pack)
    modules = modules_for(first, count, cells, bus.now)
    for module in modules:
        bus.attach(module)
    return bus, pack, modules


def registered(pack: ModuleManager) -> dict[int, int]:
    return {m.unique_id: m.module_id for m in pack.online()}


class Sender:
    """A node that sends some frames once, on its next tick."""

    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self.frames = frames

    def on_frame(self, can_id: int, data: bytes, now: float) -> list[tuple[int, bytes]]:
        return []

    def tick(self, now: float) -> list[tuple[int, bytes]]:
        frames, self.frames = self.frames, []
        return frames


def send(bus: VirtualBus, frames: list[tuple[int, bytes]]) -> None:
    bus.attach(Sender(frames))


@pytest.mark.parametrize("count", [1, 4, 31])
def test_modules_register_with_distinct_ids(count: int) -> None:
    bus, pack, modules = pack_with(count)
    bus.run(5.0)
    table = registered(pack)
    assert len(table) == count
    assert sorted(table.values()) == list(range(1, count + 1))
    for module in modules:
        assert module.module_id == table[module.config.unique_id]
    announcements = [i for _, i, _ in bus.log if i >> 18 == 0x500]
    assert announcements and all(i & 0xFF == 0 for i in announcements)  # node 0x00
    registrations = [(i, d) for _, i, d in bus.log if i >> 18 == 0x510]
    assert all(i & 0xFF == 0xFF and len(d) == 8 and d[2:4] == b"\x02\x03" for i, d in registrations)
    for entry in pack.online():
        assert {"STATUS_1", "STATUS_2", "STATUS_3", "CELL_COMM_STATUS1"} <= set(entry.telemetry)
        assert entry.hardware is not None and entry.incompatible is None
        assert entry.state == OFF


def test_polling_keeps_every_module_registered_and_its_telemetry_fresh() -> None:
    """The firmware sends nothing unasked and deregisters after 11.1 s without a command."""
    bus, pack, modules = pack_with(4)
    bus.run(5.0)
    pack.drain_events()
    start = bus.now
    bus.run(3 * PACK_CONTROLLER_TIMEOUT_S)
    assert [e.kind for e in pack.drain_events()] == []  # no one silent, no one re-announced
    assert all(m.registered for m in modules)
    status_times = [t for t, i, _ in bus.log if i >> 18 == 0x502 and t > start]
    gaps = [b - a for a, b in itertools.pairwise(status_times)]
    assert max(gaps) <= 2 * STATUS_POLL_S
    cells = pack.snapshot()[0].cells
    assert sorted(cells) == list(range(14))  # the detail sweep went round every cell
    assert all(3.0 < c["CellVoltage"] < 4.3 for c in cells.values())


def test_the_polls_fit_the_bus_budget() -> None:
    """At 500 kbit/s with 31 modules, measured on the bus log and as `bus_load` computes it."""
    bus, _, _ = pack_with(31)
    bus.run(10.0)
    start = bus.now
    bus.run(20.0)
    bits = sum(67 + 8 * len(d) for t, _, d in bus.log if t > start)
    measured = bits / 20.0 / 500_000
    assert measured < bus_load(0, 31) * 1.1  # the formula covers what was sent
    assert bus_load(31, 0) < 0.2 and bus_load(0, 31) < 0.1  # sealed or plain, 31 modules


def test_a_32nd_module_is_not_registered_and_is_reported() -> None:
    bus, pack, modules = pack_with(32)
    bus.run(5.0)
    assert len(registered(pack)) == 31
    left = [m for m in modules if not m.registered]
    assert len(left) == 1  # never given id 0, which the firmware would take as an id
    assert not any(i >> 18 == 0x510 and d[0] == 0 for _, i, d in bus.log)
    assert any(e.kind == "refused" for e in pack.drain_events())


def test_a_silent_module_is_noticed_and_its_return_too() -> None:
    bus, pack, modules = pack_with(4)
    bus.run(5.0)
    pack.drain_events()
    gone = modules[2]
    bus.detach(gone)
    bus.run(5.0)
    entry = pack.by_unique_id(gone.config.unique_id)
    assert entry is not None and not entry.online
    assert [e.kind for e in pack.drain_events()] == ["silent"]
    bus.attach(gone)
    bus.run(2.0)
    entry = pack.by_unique_id(gone.config.unique_id)
    assert entry is not None and entry.online and entry.module_id == gone.module_id
    assert "returned" in [e.kind for e in pack.drain_events()]


def test_a_rebooted_module_is_registered_again_with_its_id() -> None:
    """A known unique id that announces again lost its registration: same id, registered."""
    bus, pack, modules = pack_with(3)
    bus.run(5.0)
    old = modules[1]
    bus.detach(old)
    reborn = BatteryModule(old.config, now=bus.now)
    bus.attach(reborn)
    bus.run(3.0)
    assert reborn.module_id == old.module_id
    assert "rebooted" in [e.kind for e in pack.drain_events()]


def test_a_module_that_timed_out_comes_back_with_its_id() -> None:
    bus, _pack, modules = pack_with(2)
    bus.run(5.0)
    lost = modules[0]
    old_id = lost.module_id
    bus.drop = lambda node, _id, _data: node is lost  # it hears nothing from the pack
    bus.run(PACK_CONTROLLER_TIMEOUT_S + 0.5)
    assert not lost.registered
    bus.drop = lambda _node, _id, _data: False
    bus.run(8.0)  # its timeout's announcement, or the next ANNOUNCE_REQUEST
    assert lost.module_id == old_id


def test_hot_plugging_into_a_running_pack_is_asked_again_once_its_cells_report() -> None:
    bus, pack, _ = pack_with(4)
    bus.run(5.0)
    newcomer = BatteryModule(ModuleConfig(unique_id=9999), now=bus.now)
    bus.attach(newcomer)
    bus.run(1.2)  # its boot announcement at 0.6 s, registered, its burst
    assert registered(pack)[9999] == 5
    first = pack.by_unique_id(9999)
    assert first is not None
    bus.run(4.0)
    [entry] = [m for m in pack.snapshot() if m.unique_id == 9999]
    assert entry.telemetry["STATUS_2"]["MinCellVoltage"] > 3.0  # not the 0 V before the string
    assert entry.telemetry["STATUS_3"]["MaxCellTemp"] > 15.0


def test_a_restarted_pack_brings_its_modules_back() -> None:
    """Registered modules ignore ANNOUNCE_REQUEST: the new pack deregisters them all first."""
    bus, pack, modules = pack_with(3)
    bus.run(5.0)
    bus.detach(pack)
    fresh = ModuleManager(max_state=ON)
    bus.attach(fresh)
    bus.run(5.0)
    assert len(registered(fresh)) == 3
    assert all(m.registered for m in modules)
    assert compose_id(0x51E, 0) in [i for _, i, _ in bus.log]  # ALL_DEREGISTER


def test_max_state_starts_off_then_follows_the_configuration() -> None:
    bus, pack, modules = pack_with(1, max_state=STANDBY)
    caps = []
    for _ in range(int((START_SETTLE_S + 2) / 0.5)):
        bus.run(0.5)
        caps.append(modules[0].max_state)
    assert caps[0] == OFF and caps[-1] == STANDBY
    first_raised = caps.index(STANDBY) * 0.5
    assert first_raised >= START_SETTLE_S - 0.5
    pack.configure_max_state(ON)
    bus.run(0.3)
    assert modules[0].max_state == ON


def test_a_module_booting_with_the_pack_does_not_latch_on() -> None:
    bus, pack, modules = pack_with(3)
    bus.run(START_SETTLE_S + 2)
    assert all(m.state == OFF for m in modules)
    assert not [e for e in pack.drain_events() if e.kind == "latched"]


def test_a_module_latched_by_the_boot_race_is_reported() -> None:
    bus, pack, _ = pack_with(1)
    bus.run(START_SETTLE_S + 1)  # MAX_STATE On is broadcast now
    pack.drain_events()
    newcomer = BatteryModule(ModuleConfig(unique_id=4242), now=bus.now - 0.05)
    newcomer.on_frame(*db.encode("MAX_STATE", 0, {"MaxState": ON}), bus.now)  # while booting
    bus.attach(newcomer)
    bus.run(3.0)
    assert newcomer.state == ON and not newcomer.contactors_closed
    assert [e.module_id for e in pack.drain_events() if e.kind == "latched"] == [2]


def test_a_state_change_goes_out_in_dlc_2_and_reaches_every_plain_module() -> None:
    bus, pack, modules = pack_with(3)
    bus.run(START_SETTLE_S + 1)
    [(can_id, data)] = pack.state_change(modules[0].module_id or 0, ON)
    assert len(data) == 2
    send(bus, [(can_id, data)])
    bus.run(1.0)
    # the firmware ignores the id: a plain command for one module is one for all of them
    assert [m.state for m in modules] == [ON, ON, ON]


def test_time_requests_are_answered_with_set_time_in_8_bytes() -> None:
    bus, _, modules = pack_with(2)
    bus.run(3.0)
    answers = [d for _, i, d in bus.log if i >> 18 == 0x516]
    assert answers and all(len(d) == 8 for d in answers)
    value = int.from_bytes(answers[0], "little")
    assert value >> 63 == 1 and abs((value & ~(1 << 63)) - WALL_CLOCK) < 10
    assert all(m.unix_time is not None for m in modules)


def test_a_newly_linked_module_is_sent_the_time_sealed() -> None:
    """Its one TIME_REQUEST may have been sealed before the pack held its session (and
    dropped): the pack sends the time with the module's first sealed poll, once."""
    bus, pack, modules = pack_with(1)
    bus.run(2.0)
    module_id = modules[0].module_id or 0
    pack.set_sealed(module_id, True)
    out = pack.tick(bus.now + 1.0)
    secured_set_time = compose_id(0x546, module_id)
    assert [d for i, d in out if i == secured_set_time]  # sealed by the pack's gateway
    assert not [d for i, d in pack.tick(bus.now + 2.0) if i == secured_set_time]


def test_an_incompatible_module_is_reported_and_commanded_off() -> None:
    bus, pack, _ = pack_with(1)
    bus.run(START_SETTLE_S + 1)
    pack.drain_events()
    odd = BatteryModule(ModuleConfig(unique_id=77, max_charge_a=-5.0), now=bus.now)
    bus.attach(odd)
    bus.run(3.0)
    [event] = [e for e in pack.drain_events() if e.kind == "incompatible"]
    assert "charge limit -5.00 A below 0" in event.detail
    entry = pack.by_unique_id(77)
    assert entry is not None and entry.incompatible
    assert any(i >> 18 == 0x514 and d == bytes([entry.module_id, OFF]) for _, i, d in bus.log)


def test_bad_frames_from_modules_are_counted_and_logged_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus, pack, modules = pack_with(1)
    bus.run(3.0)
    module_id = modules[0].module_id or 0
    status_2 = db.encode(
        "STATUS_2",
        module_id,
        {
            "MinCellVoltage": 3.7,
            "MaxCellVoltage": 60.0,
            "AvgCellVoltage": 3.8,
            "TotalVoltage": 50.0,
        },
    )
    stranger = db.encode(
        "ANNOUNCEMENT", 0, {"FwVersion": 1, "MfgId": 0x4D, "PartId": 1, "UniqueId": 555}
    )
    with caplog.at_level(logging.WARNING, logger="modbatt.pack.modules"):
        bus.detach(modules[0])  # only the forged frames from now on
        pack.snapshot()
        pack.on_frame(compose_id(0x502, module_id), bytes(5), bus.now)  # DLC 5
        pack.on_frame(compose_id(0x502, module_id), bytes([7]) + bytes(7), bus.now)  # state 7
        pack.on_frame(*status_2, bus.now)
        pack.on_frame(*stranger, bus.now)
        [row] = pack.snapshot()
    assert pack.rejected == {"bad_dlc": 1, "implausible": 2, "unsupported": 1}
    assert row.telemetry["STATUS_2"]["MaxCellVoltage"] < 5.0  # the last good one stays
    assert pack.by_unique_id(555) is None
    text = caplog.text
    assert "DLC 5" in text and "MaxCellVoltage 60" in text and "manufacturer 0x4D" in text


def test_a_pack_command_it_did_not_send_is_counted_and_reported() -> None:
    bus, pack, _ = pack_with(2)
    bus.run(3.0)
    pack.drain_events()
    send(bus, [db.encode("ALL_ISOLATE", 0, {"ControllerId": 0})] * 20)
    bus.run(0.1)
    assert pack.foreign_commands == {"ALL_ISOLATE": 20}
    [event] = [e for e in pack.drain_events() if e.kind == "foreign_command"]
    assert "ALL_ISOLATE" in event.detail


def test_soc_is_never_made_up() -> None:
    """The firmware sends SOC and SOH as 0: the table shows what came, no estimate."""
    bus, pack, _ = pack_with(1)
    bus.run(3.0)
    [row] = pack.snapshot()
    assert row.telemetry["STATUS_1"]["SOC"] == 0 and row.telemetry["STATUS_1"]["SOH"] == 0
