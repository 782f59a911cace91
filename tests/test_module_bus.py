"""Registration, heartbeat, silence, hot-plug and the module model, on virtual time."""

from __future__ import annotations

import pytest

from modbatt.catalogue import OFF, ON, PRECHARGE, STANDBY, catalogue
from modbatt.module_sim import HEARTBEAT_TIMEOUT_S, BatteryModule, ModuleConfig, modules_for
from modbatt.pack_modules import ModuleManager
from tests.virtual_time import VirtualBus

db = catalogue()


def pack_with(
    count: int, first: int = 1000
) -> tuple[VirtualBus, ModuleManager, list[BatteryModule]]:
    bus = VirtualBus()
    pack = ModuleManager()
    bus.attach(pack)
    modules = modules_for(first, count, 14, bus.now)
    for module in modules:
        bus.attach(module)
    return bus, pack, modules


def registered(pack: ModuleManager) -> dict[int, int]:
    return {m.unique_id: m.module_id for m in pack.online()}


@pytest.mark.parametrize("count", [1, 4, 31])
def test_modules_register_with_distinct_ids(count: int) -> None:
    bus, pack, modules = pack_with(count)
    bus.run(2.0)
    table = registered(pack)
    assert len(table) == count
    assert sorted(table.values()) == list(range(1, count + 1))
    for module in modules:
        assert module.module_id == table[module.config.unique_id]
    # after registration the module reports on its id: the table fills with telemetry
    for entry in pack.online():
        assert {"STATUS_1", "STATUS_2", "STATUS_3", "HARDWARE"} <= set(entry.telemetry)
        assert entry.state == STANDBY


def test_a_32nd_module_is_refused_politely() -> None:
    bus, pack, modules = pack_with(32)
    bus.run(2.0)
    assert len(registered(pack)) == 31
    refused = [m for m in modules if not m.registered]
    assert len(refused) == 1 and refused[0].refused
    assert any(e.kind == "refused" for e in pack.drain_events())
    # it backs off instead of announcing every second
    announcements = [t for t, i, _ in bus.log if (i >> 18) == 0x500 and t > 2.0]
    bus.run(5.0)
    announcements = [t for t, i, _ in bus.log if (i >> 18) == 0x500 and t > 2.0]
    assert len(announcements) <= 1


def test_a_silent_module_is_noticed_and_its_return_too() -> None:
    bus, pack, modules = pack_with(4)
    bus.run(2.0)
    pack.drain_events()
    gone = modules[2]
    bus.detach(gone)
    bus.run(3.0)
    entry = pack.by_unique_id(gone.config.unique_id)
    assert entry is not None and not entry.online
    assert [e.kind for e in pack.drain_events()] == ["silent"]
    bus.attach(gone)
    bus.run(1.0)
    entry = pack.by_unique_id(gone.config.unique_id)
    assert entry is not None and entry.online and entry.module_id == gone.module_id
    assert "returned" in [e.kind for e in pack.drain_events()]


def test_a_rebooted_module_gets_its_id_back() -> None:
    bus, _, modules = pack_with(3)
    bus.run(2.0)
    old = modules[1]
    bus.detach(old)
    reborn = BatteryModule(old.config, now=bus.now)
    bus.attach(reborn)
    bus.run(2.0)
    assert reborn.module_id == old.module_id


def test_hot_plugging_into_a_running_pack() -> None:
    bus, pack, _ = pack_with(4)
    bus.run(2.0)
    newcomer = BatteryModule(ModuleConfig(unique_id=9999), now=bus.now)
    bus.attach(newcomer)
    bus.run(2.0)
    assert newcomer.module_id == 5
    assert registered(pack)[9999] == 5


def test_a_restarted_pack_adopts_modules_that_kept_their_ids() -> None:
    bus, pack, modules = pack_with(3)
    bus.run(2.0)
    before = registered(pack)
    bus.detach(pack)
    fresh = ModuleManager()
    bus.attach(fresh)
    bus.run(2.0)
    assert registered(fresh) == before
    assert all(m.module_id == before[m.config.unique_id] for m in modules)


def test_the_heartbeat_caps_the_state_and_its_loss_drops_to_standby() -> None:
    bus, pack, modules = pack_with(1)
    bus.run(1.0)
    module = modules[0]
    bus.nodes.append(_Sender(pack.state_change(module.module_id or 0, ON, 400.0)))
    bus.run(0.1)
    assert module.state == PRECHARGE
    bus.run(0.5)
    assert module.state == ON
    pack.max_state = STANDBY  # the pack lowers the cap
    bus.run(0.5)
    assert module.state == STANDBY
    pack.max_state = ON
    bus.nodes.append(_Sender(pack.state_change(module.module_id or 0, ON, 400.0)))
    bus.run(1.0)
    assert module.state == ON
    bus.detach(pack)  # the heartbeat stops
    bus.run(HEARTBEAT_TIMEOUT_S + 0.2)
    assert module.state == STANDBY


def test_deregistration_and_all_isolate() -> None:
    bus, _, modules = pack_with(2)
    bus.run(1.5)
    first = modules[0]
    old_id = first.module_id
    frame = db.encode("DEREGISTER", old_id or 0, {"ModuleId": old_id, "Reason": 1})
    for module in modules:
        module.on_frame(*frame, bus.now)
    assert not first.registered and first.state == STANDBY
    assert modules[1].registered  # addressed to the first module only
    bus.run(1.5)  # it announces again and the pack gives it its id back
    assert first.module_id == old_id
    bus.nodes.append(_Sender([db.encode("ALL_ISOLATE", 0, {"Reason": 9})]))
    bus.run(0.05)
    assert all(m.state == OFF for m in modules)


def test_soc_falls_while_discharging_and_rises_while_charging() -> None:
    module = BatteryModule(ModuleConfig(unique_id=42))
    module.state = ON
    socs, currents, temps = [], [], []
    for step in range(1, 601):
        now = step * 1.0
        module._update(now)
        socs.append(sum(c.soc for c in module.cells) / len(module.cells))
        currents.append(module.current_a)
        temps.append(max(c.temp_c for c in module.cells))
    for i in range(1, len(socs)):
        if currents[i] < -1:
            assert socs[i] < socs[i - 1]
        if currents[i] > 1:
            assert socs[i] > socs[i - 1]
    assert max(temps) > 26.5  # current heats the cells
    voltages_follow_soc = module.cell_voltage(max(module.cells, key=lambda c: c.soc))
    assert voltages_follow_soc >= module.cell_voltage(min(module.cells, key=lambda c: c.soc))


def test_modules_vary() -> None:
    a, b = BatteryModule(ModuleConfig(unique_id=1)), BatteryModule(ModuleConfig(unique_id=2))
    assert a.soh != b.soh and a.cells[0].soc != b.cells[0].soc


class _Sender:
    """A node that sends some frames once, on its next tick."""

    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self.frames = frames

    def on_frame(self, can_id: int, data: bytes, now: float) -> list[tuple[int, bytes]]:
        return []

    def tick(self, now: float) -> list[tuple[int, bytes]]:
        frames, self.frames = self.frames, []
        return frames


@pytest.mark.parametrize("node", [0, 32, 36, 0xFE])
def test_an_announcement_from_an_impossible_id_gets_a_real_one(node: int) -> None:
    """A module (or garbage) announcing itself under an id no module can hold is registered
    under a free id 1-31, never adopted under its own (found by the soak's garbage flood)."""
    pack = ModuleManager()
    announcement = catalogue().encode(
        "ANNOUNCEMENT", node, {"FwVersion": 1, "MfgId": 2, "PartId": 3, "UniqueId": 4242}
    )
    replies = pack.on_frame(*announcement, 0.0)
    assert registered(pack) == {4242: 1}
    assert replies  # the registration that tells it its id


def test_telemetry_is_decoded_when_the_table_is_read_and_states_at_once() -> None:
    """The gateway's tap keeps a module's telemetry bytes; the table decodes them when read,
    and reports a state change as it arrives."""
    bus, pack, modules = pack_with(1)
    bus.run(1.5)
    module = modules[0]
    entry = pack.table[module.module_id or 0]
    assert entry.undecoded  # bytes kept, not yet decoded
    [row] = pack.snapshot()
    assert not entry.undecoded
    assert row.telemetry["STATUS_1"]["CellCount"] == module.config.cells
    assert row.cells and all(0 <= cell < module.config.cells for cell in row.cells)
    db = catalogue()
    pack.drain_events()
    status = dict(row.telemetry["STATUS_1"], State=ON)
    pack.on_frame(*db.encode("STATUS_1", module.module_id or 0, status), bus.now)
    assert [e.kind for e in pack.drain_events()] == ["state"] and entry.state == ON
