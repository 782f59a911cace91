"""The module simulator against the module firmware's rules, one test per rule.

Each rule is what ModuleCPU (build 8278: ``main.c`` ``CANReceiveCallback``, ``can.c``,
``main.h``) does, as REFERENCE §2a and docs/MODULE_BUS.md state it; the frames here are built
byte by byte where the rule is about bytes, so that the DBC is not what decides.
"""

from __future__ import annotations

import itertools

from modbatt import ENCRYPTION_FLAG, compose_id
from modbatt.module.simulator import CELL_STRING_START_S, BatteryModule, ModuleConfig
from modbatt.protocol.catalogue import catalogue
from modbatt.protocol.firmware import (
    INIT,
    OFF,
    ON,
    PACK_CONTROLLER_TIMEOUT_S,
    STANDBY,
    announce_delay_s,
)

db = catalogue()
UNIQUE_ID = 0x00C0FF37  # low byte 0x37 = 55: an announce delay of 5 ticks


def fresh(unique_id: int = UNIQUE_ID, cells: int = 14) -> BatteryModule:
    return BatteryModule(ModuleConfig(unique_id=unique_id, cells=cells))


def run(module: BatteryModule, until: float) -> list[tuple[float, int, bytes]]:
    """Tick the module in 10 ms steps up to `until`; what it sent, with the time."""
    sent = []
    now = module.last_update
    while now < until - 1e-9:
        now = round(now + 0.01, 6)
        sent += [(now, can_id, data) for can_id, data in module.tick(now)]
    return sent


def names(sent: list[tuple[float, int, bytes]]) -> list[str]:
    out = []
    for _, can_id, data in sent:
        decoded = db.decode(can_id, data)
        out.append("?" if decoded is None else decoded.name)
    return out


def command(base: int, payload: bytes, node: int = 0) -> tuple[int, bytes]:
    return compose_id(base, node), payload


def registration(module_id: int, unique_id: int = UNIQUE_ID, mfg: int = 2, part: int = 3) -> bytes:
    return bytes([module_id, 0, mfg, part]) + unique_id.to_bytes(4, "little")


def registered(module_id: int = 4, cells: int = 14) -> BatteryModule:
    """A module registered as `module_id`, its registration burst sent."""
    module = fresh(cells=cells)
    run(module, 1.0)
    module.on_frame(*command(0x510, registration(module_id), 0xFF), module.last_update)
    run(module, module.last_update + 1.0)
    return module


def test_rule_it_announces_on_node_0_about_0_6_s_after_power_up() -> None:
    module = fresh()
    sent = run(module, 3.0)
    assert [(round(t, 2), can_id) for t, can_id, _ in sent] == [(0.6, 0x500 << 18)]
    assert sent[0][2] == bytes.fromhex("56200203") + UNIQUE_ID.to_bytes(4, "little")


def test_rule_unregistered_it_announces_again_only_on_announce_request_after_its_delay() -> None:
    module = fresh()
    run(module, 1.0)
    assert run(module, 8.0) == []  # no periodic announcement (the pack's commands keep it up)
    module.on_frame(*command(0x51D, b"\x00"), 8.0)
    sent = run(module, 10.0)
    assert names(sent) == ["ANNOUNCEMENT"]
    # (uid & 0xFF) // 10 ticks, then the next WRITE frame start (every 0.6 s)
    assert (
        8.0 + announce_delay_s(UNIQUE_ID) <= sent[0][0] <= 8.0 + announce_delay_s(UNIQUE_ID) + 0.6
    )
    assert announce_delay_s(0x05) == 0.1  # at least one tick
    assert announce_delay_s(0xFF) == 2.5


def test_rule_a_registered_module_ignores_announce_request() -> None:
    module = registered()
    module.on_frame(*command(0x51D, b"\x00"), module.last_update)
    assert "ANNOUNCEMENT" not in names(run(module, module.last_update + 4.0))


def test_rule_registration_needs_dlc_8_its_manufacturer_part_and_unique_id() -> None:
    module = fresh()
    run(module, 1.0)
    for can_id, data in [
        command(0x510, registration(4)[:7], 0xFF),  # DLC 7
        command(0x510, registration(4, mfg=0x4D), 0xFF),
        command(0x510, registration(4, part=0x01), 0xFF),
        command(0x510, registration(4, unique_id=UNIQUE_ID + 1), 0xFF),
    ]:
        module.on_frame(can_id, data, 1.0)
        assert not module.registered
    module.on_frame(*command(0x510, registration(4), 0x00), 1.0)  # on any node
    assert module.module_id == 4


def test_rule_after_registration_it_sends_its_burst_one_frame_per_tick() -> None:
    module = fresh()
    run(module, 1.0)
    module.on_frame(*command(0x510, registration(4), 0xFF), 1.0)
    sent = run(module, 2.0)
    assert names(sent) == [
        "TIME_REQUEST",
        "STATUS_1",
        "STATUS_2",
        "STATUS_3",
        "CELL_COMM_STATUS1",
        "HARDWARE",
    ]
    assert all(can_id & 0xFF == 4 and len(data) == 8 for _, can_id, data in sent)
    times = [t for t, _, _ in sent]
    assert all(0.099 <= b - a <= 0.101 for a, b in itertools.pairwise(times))


def test_rule_no_periodic_status_only_on_request() -> None:
    module = registered()
    assert names(run(module, module.last_update + 5.0)) == []  # nothing unasked
    module.on_frame(*command(0x512, b"\x04", 4), module.last_update)
    assert names(run(module, module.last_update + 1.0)) == [
        "STATUS_1",
        "STATUS_2",
        "STATUS_3",
        "CELL_COMM_STATUS1",
    ]


def test_rule_status_request_needs_dlc_1_and_a_registration() -> None:
    module = registered()
    module.on_frame(*command(0x512, b"\x04\x00", 4), module.last_update)  # DLC 2
    assert names(run(module, module.last_update + 1.0)) == []
    unregistered = fresh()
    run(unregistered, 1.0)
    unregistered.on_frame(*command(0x512, b"\x00"), 1.0)
    assert names(run(unregistered, 2.0)) == []


def test_rule_a_status_request_during_a_burst_is_ignored() -> None:
    module = registered()
    now = module.last_update
    module.on_frame(*command(0x512, b"\x04", 4), now)
    module.on_frame(*command(0x512, b"\x04", 4), now)
    assert names(run(module, now + 1.0)).count("STATUS_1") == 1


def test_rule_detail_request_needs_dlc_3_and_a_cell_below_the_count() -> None:
    module = registered(cells=14)
    now = module.last_update
    module.on_frame(*command(0x515, b"\x04\x02", 4), now)  # DLC 2: the original pack's
    module.on_frame(*command(0x515, b"\x04\xff\x00", 4), now + 0.2)  # 0xFF "all": never
    module.on_frame(*command(0x515, b"\x04\x0e\x00", 4), now + 0.4)  # cell 14 of 14
    assert names(run(module, now + 1.0)) == []
    module.on_frame(*command(0x515, b"\x04\x0d\x00", 4), now + 1.0)
    [(_, _, data)] = run(module, now + 1.5)
    assert data[0] == 13 and data[1] == 14  # cell id, cells that reported


def test_rule_state_change_needs_dlc_2() -> None:
    module = registered()
    now = module.last_update
    module.on_frame(*command(0x517, b"\x03"), now)
    module.on_frame(*command(0x514, bytes([4, ON, 0x10, 0x0F]), 4), now)  # DLC 4: ignored
    run(module, now + 1.0)
    assert module.state == OFF
    module.on_frame(*command(0x514, bytes([4, ON]), 4), now + 1.0)
    run(module, now + 2.0)
    assert module.state == ON and module.contactors_closed


def test_rule_the_node_byte_and_the_module_id_in_payloads_are_ignored() -> None:
    module = registered(module_id=4)
    now = module.last_update
    module.on_frame(*command(0x517, b"\x03"), now)
    module.on_frame(*command(0x514, bytes([9, ON]), 9), now)  # for module 9
    run(module, now + 1.0)
    assert module.state == ON
    module.on_frame(*command(0x518, bytes([9, 0]), 9), now + 1.0)  # DEREGISTER module 9
    assert not module.registered


def test_rule_bit_17_is_not_compared_so_a_sealed_frame_is_read_as_a_plain_command() -> None:
    module = registered(module_id=4)
    now = module.last_update
    can_id, data = command(0x517, bytes.fromhex("d400abaa1a10"))  # a sealed single frame
    module.on_frame(can_id | ENCRYPTION_FLAG, data, now)
    assert module.max_state == OFF  # its low nibble is 4: no state, ignored
    can_id, data = command(0x517, bytes.fromhex("c3d90cd1"))  # low nibble 3
    module.on_frame(can_id | ENCRYPTION_FLAG, data, now)
    assert module.max_state == ON and module.sealed_frames_acted_on == 1


def test_rule_max_state_takes_any_dlc_caps_the_state_and_lowers_the_request() -> None:
    module = registered()
    now = module.last_update
    module.on_frame(*command(0x517, bytes([0x13, 0xFF, 0xFF])), now)  # low nibble, any DLC
    assert module.max_state == ON
    module.on_frame(*command(0x514, bytes([4, ON]), 4), now)
    run(module, now + 1.0)
    assert module.state == ON
    module.on_frame(*command(0x517, b"\x01"), now + 1.0)  # below: the request is lowered
    run(module, now + 2.0)
    assert module.state == STANDBY and module.requested == STANDBY
    module.on_frame(*command(0x517, b"\x03"), now + 2.0)  # raising it raises nothing
    run(module, now + 3.0)
    assert module.state == STANDBY


def test_rule_a_request_above_the_cap_is_remembered() -> None:
    module = registered()
    now = module.last_update
    module.on_frame(*command(0x514, bytes([4, ON]), 4), now)  # max is Off at power-up
    run(module, now + 1.0)
    assert module.state == OFF
    module.on_frame(*command(0x517, b"\x03"), now + 1.0)
    run(module, now + 2.0)
    assert module.state == ON


def test_rule_all_isolate_sets_off_and_keeps_the_registration() -> None:
    module = registered()
    now = module.last_update
    module.on_frame(*command(0x517, b"\x03"), now)
    module.on_frame(*command(0x514, bytes([4, ON]), 4), now)
    run(module, now + 1.0)
    module.on_frame(*command(0x51F, b""), now + 1.0)  # any DLC
    run(module, now + 2.0)
    assert module.state == OFF and module.module_id == 4


def test_rule_all_deregister_unregisters_sets_off_and_does_not_announce() -> None:
    module = registered()
    now = module.last_update
    module.on_frame(*command(0x51E, b"\x00"), now)
    assert not module.registered and module.requested == OFF
    assert "ANNOUNCEMENT" not in names(run(module, now + 5.0))


def test_rule_the_pack_controller_timeout_deregisters_sets_off_and_announces() -> None:
    module = registered()
    now = module.last_update
    module.on_frame(*command(0x517, b"\x03"), now)
    module.on_frame(*command(0x514, bytes([4, ON]), 4), now)
    sent = run(module, now + PACK_CONTROLLER_TIMEOUT_S + 1.0)
    assert not module.registered and module.state == OFF
    announced = [t for (t, _, _), n in zip(sent, names(sent), strict=True) if n == "ANNOUNCEMENT"]
    assert announced and now + PACK_CONTROLLER_TIMEOUT_S <= announced[0] <= now + 11.8
    assert module.max_state == ON  # the cap survives the timeout


def test_rule_any_recognised_command_resets_the_timeout_whatever_its_dlc() -> None:
    module = registered()
    now = module.last_update
    for step in range(1, 40):  # 20 s of STATE_CHANGE with the wrong DLC, every 0.5 s
        run(module, now + step * 0.5)
        module.on_frame(*command(0x514, bytes([4, 1, 0, 0]), 4), now + step * 0.5)
    assert module.registered
    run(module, now + 20 + PACK_CONTROLLER_TIMEOUT_S)
    assert not module.registered
    other = registered()
    for _ in range(1, 40):  # another module's frames do not count
        run(other, other.last_update + 0.5)
        other.on_frame(*command(0x502, bytes(8), 7), other.last_update)
    assert not other.registered


def test_rule_off_at_power_up() -> None:
    module = fresh()
    assert module.state == INIT
    run(module, 0.5)
    assert module.state == OFF and module.max_state == OFF


def test_rule_a_max_state_before_the_first_state_tick_latches_with_the_relays_open() -> None:
    module = fresh()
    module.on_frame(*command(0x517, b"\x03"), 0.05)  # the pack broadcasts On while it boots
    run(module, 1.0)
    module.on_frame(*command(0x510, registration(4), 0xFF), 1.0)
    run(module, 3.0)
    assert module.state == ON and not module.contactors_closed and module.current_a == 0.0
    status = db.decode(*module._status()[0])
    assert status is not None and status.values["State"] == ON  # it reports On regardless


def test_rule_soc_and_soh_are_sent_as_0_and_voltages_in_15_mv_steps() -> None:
    module = registered()
    run(module, module.last_update + CELL_STRING_START_S)
    status_1, status_2, _, comm = module._status()
    assert status_1[1][1:3] == b"\x00\x00"
    volts = sum(module.cell_voltage(c) for c in module.cells)
    assert int.from_bytes(status_2[1][6:8], "little") == int(volts / 0.015)
    assert comm[1][:2] == bytes([14, 14])


def test_rule_the_cell_string_reports_nothing_until_it_is_up() -> None:
    module = fresh()
    run(module, 0.3)
    module.on_frame(*command(0x510, registration(4), 0xFF), 0.3)
    sent = run(module, 0.9)  # the registration burst comes before the string is up
    status_2 = next(data for _, can_id, data in sent if can_id >> 18 == 0x503)
    assert status_2 == bytes(8)
    sent = run(module, 2.5)  # the string starts: the module sends its status again
    status_2 = next(data for _, can_id, data in sent if can_id >> 18 == 0x503)
    assert int.from_bytes(status_2[:2], "little") > 3000  # mV


def test_rule_set_time_is_a_little_endian_uint64_stored_whole() -> None:
    module = registered()
    value = (1 << 63) | 1764944000
    module.on_frame(*command(0x516, value.to_bytes(8, "little")), module.last_update)
    assert module.unix_time == value


def test_rule_bases_the_firmware_does_not_know_are_ignored_and_keep_no_one_alive() -> None:
    module = registered()
    now = module.last_update
    for base in (0x513, 0x519, 0x530, 0x540, 0x547, 0x54F):
        module.on_frame(*command(base, bytes([4, ON]), 4), now)
    assert module.requested == OFF and module.last_command_at <= now
