"""The module bus catalogue: the DBC matches REFERENCE §2, and everything round-trips."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from modbatt import compose_id
from modbatt.module.simulator import BatteryModule, ModuleConfig
from modbatt.protocol.catalogue import catalogue, dbc_path

# The module firmware's messages (REFERENCE §2a; ModuleCPU build 8278), as (message, base,
# length, [(signal, start bit, bits, scale, offset)]). Where this differs from the published
# DBC the firmware wins: docs/MODULE_BUS.md lists each difference.
REFERENCE = [
    (
        "ANNOUNCEMENT",
        0x500,
        8,
        [
            ("FwVersion", 0, 16, 1, 0),
            ("MfgId", 16, 8, 1, 0),
            ("PartId", 24, 8, 1, 0),
            ("UniqueId", 32, 32, 1, 0),
        ],
    ),
    (
        "HARDWARE",
        0x501,
        8,
        [
            ("MaxChargeCurrent", 0, 16, 0.02, -655.36),
            ("MaxDischargeCurrent", 16, 16, 0.02, -655.36),
            ("MaxChargeEndVoltage", 32, 16, 0.015, 0),
            ("HwVersion", 48, 16, 1, 0),
        ],
    ),
    (
        "STATUS_1",
        0x502,
        8,
        [
            ("State", 0, 4, 1, 0),
            ("Status", 4, 4, 1, 0),
            ("SOC", 8, 8, 0.5, 0),
            ("SOH", 16, 8, 0.5, 0),
            ("CellCount", 24, 8, 1, 0),
            ("Current", 32, 16, 0.02, -655.36),
            ("ModuleVoltage", 48, 16, 0.015, 0),
        ],
    ),
    (
        "STATUS_2",
        0x503,
        8,
        [
            ("MinCellVoltage", 0, 16, 0.001, 0),
            ("MaxCellVoltage", 16, 16, 0.001, 0),
            ("AvgCellVoltage", 32, 16, 0.001, 0),
            ("TotalVoltage", 48, 16, 0.015, 0),
        ],
    ),
    (
        "STATUS_3",
        0x504,
        8,
        [
            ("MinCellTemp", 0, 16, 0.01, -55.35),
            ("MaxCellTemp", 16, 16, 0.01, -55.35),
            ("AvgCellTemp", 32, 16, 0.01, -55.35),
        ],
    ),
    (
        "DETAIL",
        0x505,
        8,
        [
            ("CellId", 0, 8, 1, 0),
            ("CellCount", 8, 8, 1, 0),
            ("CellTemp", 16, 16, 0.01, -55.35),
            ("CellVoltage", 32, 16, 0.001, 0),
            ("CellSOC", 48, 8, 1, 0),
            ("CellSOH", 56, 8, 1, 0),
        ],
    ),
    ("TIME_REQUEST", 0x506, 8, []),
    (
        "CELL_COMM_STATUS1",
        0x507,
        8,
        [
            ("FewestCells", 0, 8, 1, 0),
            ("MostCells", 8, 8, 1, 0),
            ("I2cErrors", 16, 16, 1, 0),
            ("FramingErrors", 32, 8, 1, 0),
            ("FirstI2cErrorCell", 40, 8, 1, 0),
        ],
    ),
    (
        "REGISTRATION",
        0x510,
        8,
        [
            ("ModuleId", 0, 8, 1, 0),
            ("ControllerId", 8, 8, 1, 0),
            ("MfgId", 16, 8, 1, 0),
            ("PartId", 24, 8, 1, 0),
            ("UniqueId", 32, 32, 1, 0),
        ],
    ),
    ("HW_REQUEST", 0x511, 1, [("ModuleId", 0, 8, 1, 0)]),
    ("STATUS_REQUEST", 0x512, 1, [("ModuleId", 0, 8, 1, 0)]),
    ("STATE_CHANGE", 0x514, 2, [("ModuleId", 0, 8, 1, 0), ("RequestedState", 8, 4, 1, 0)]),
    ("DETAIL_REQUEST", 0x515, 3, [("ModuleId", 0, 8, 1, 0), ("CellId", 8, 8, 1, 0)]),
    ("SET_TIME", 0x516, 8, [("UnixTime", 0, 63, 1, 0), ("TimeValid", 63, 1, 1, 0)]),
    ("MAX_STATE", 0x517, 1, [("MaxState", 0, 4, 1, 0)]),
    ("DEREGISTER", 0x518, 2, [("ModuleId", 0, 8, 1, 0), ("ControllerId", 8, 8, 1, 0)]),
    ("ANNOUNCE_REQUEST", 0x51D, 1, [("ControllerId", 0, 8, 1, 0)]),
    ("ALL_DEREGISTER", 0x51E, 1, [("ControllerId", 0, 8, 1, 0)]),
    ("ALL_ISOLATE", 0x51F, 1, [("ControllerId", 0, 8, 1, 0)]),
]

# Payloads as the firmware source computes them (ModuleCPU main.c), for its defaults.
FIRMWARE_BYTES = [
    # an unprogrammed module's HARDWARE: +10 A, -42 A, 94 cells x 4.2 V x 95 % in 15 mV steps
    (
        "HARDWARE",
        {
            "MaxChargeCurrent": 10.0,
            "MaxDischargeCurrent": -42.0,
            "MaxChargeEndVoltage": 375.06,
            "HwVersion": 0,
        },
        "f481cc77ac610000",
    ),
    # build 8278, manufacturer 0x02, part 0x03, the unprogrammed unique id 0xBA77BABE
    (
        "ANNOUNCEMENT",
        {"FwVersion": 8278, "MfgId": 2, "PartId": 3, "UniqueId": 0xBA77BABE},
        "56200203beba77ba",
    ),
    # the pack's SET_TIME: a little-endian uint64, Unix time in bits 0-62, valid in bit 63
    ("SET_TIME", {"UnixTime": 1764944000, "TimeValid": 1}, "80e8326900000080"),
    ("STATE_CHANGE", {"ModuleId": 1, "RequestedState": 3}, "0103"),
    ("TIME_REQUEST", {}, "0000000000000000"),
]


@pytest.mark.parametrize(
    ("name", "values", "wire"), FIRMWARE_BYTES, ids=[f[0] for f in FIRMWARE_BYTES]
)
def test_the_dbc_gives_the_firmwares_bytes(name: str, values: dict[str, float], wire: str) -> None:
    can_id, data = catalogue().encode(name, 0, values)
    assert data.hex() == wire
    decoded = catalogue().decode(can_id, data)
    assert decoded is not None
    for key, value in values.items():
        assert abs(decoded.values[key] - value) < 0.01, key


@pytest.mark.parametrize(
    ("name", "base", "length", "signals"), REFERENCE, ids=[r[0] for r in REFERENCE]
)
def test_the_dbc_matches_the_reference(
    name: str, base: int, length: int, signals: list[Any]
) -> None:
    message = catalogue().message(name)
    assert message.frame_id == compose_id(base, 0)
    assert message.is_extended_frame
    assert message.length == length
    got = [
        (s.name, s.start, s.length, s.scale, s.offset, s.byte_order, s.is_signed)
        for s in message.signals
    ]
    assert got == [(*sig, "little_endian", False) for sig in signals]


def test_every_module_message_of_the_issue_is_there() -> None:
    assert {m.name for m in catalogue().database.messages} == {r[0] for r in REFERENCE}


@st.composite
def message_values(draw: st.DrawFn) -> tuple[str, int, dict[str, float]]:
    name = draw(st.sampled_from([r[0] for r in REFERENCE]))
    node = draw(st.integers(0, 0xFF))
    values: dict[str, float] = {}
    for signal in catalogue().message(name).signals:
        # The raw values the signal's bits and its range allow, worked out in integers: a
        # 63-bit signal's maximum is not a float (2**63 - 1 rounds to 2**63, one bit too many).
        if signal.is_signed:
            low, high = -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
        else:
            low, high = 0, (1 << signal.length) - 1
        if signal.minimum is not None:
            low = max(low, math.ceil((signal.minimum - signal.offset) / signal.scale))
        if signal.maximum is not None:
            high = min(high, math.floor((signal.maximum - signal.offset) / signal.scale))
        raw = draw(st.integers(low, high))
        exact = signal.scale == 1 and signal.offset == 0
        values[signal.name] = raw if exact else raw * signal.scale + signal.offset
    return name, node, values


@given(message_values())
@example(("SET_TIME", 0, {"UnixTime": (1 << 63) - 1, "TimeValid": 0}))  # the widest signal
def test_round_trip(case: tuple[str, int, dict[str, float]]) -> None:
    name, node, values = case
    can_id, data = catalogue().encode(name, node, values)
    assert can_id & 0xFF == node and not can_id & (1 << 17)
    decoded = catalogue().decode(can_id, data)
    assert decoded is not None and decoded.name == name and decoded.node == node
    for key, value in values.items():
        scale = catalogue().message(name).get_signal_by_name(key).scale
        assert abs(decoded.values[key] - value) <= scale / 2 + 1e-9, key


def test_everything_the_simulator_sends_decodes_inside_the_ranges() -> None:
    db = catalogue()
    module = BatteryModule(ModuleConfig(unique_id=7, cells=24))
    module.on_frame(
        *db.encode(
            "REGISTRATION",
            0xFF,
            {"ModuleId": 5, "ControllerId": 0, "MfgId": 2, "PartId": 3, "UniqueId": 7},
        ),
        0.0,
    )
    module.on_frame(*db.encode("MAX_STATE", 0, {"MaxState": 3}), 0.0)
    module.on_frame(*db.encode("STATE_CHANGE", 5, {"ModuleId": 5, "RequestedState": 3}), 0.0)
    frames = []
    for step in range(1, 6000):  # ten minutes: a whole charge/discharge cycle
        now = step * 0.1
        if step % 5 == 0:  # the pack's polls
            module.on_frame(*db.encode("STATUS_REQUEST", 5, {"ModuleId": 5}), now)
            module.on_frame(
                *db.encode("DETAIL_REQUEST", 5, {"ModuleId": 5, "CellId": step % 24}), now
            )
        frames += module.tick(now)
    module.on_frame(*db.encode("HW_REQUEST", 5, {"ModuleId": 5}), 600.0)
    frames += module.tick(601.0)
    decoded_frames = [db.decode(i, d) for i, d in frames]
    currents = [f.values["Current"] for f in decoded_frames if f and f.name == "STATUS_1"]
    assert min(currents) < -5 and max(currents) > 5  # it discharged and charged
    names = set()
    for can_id, data in frames:
        assert len(data) == 8  # every module -> pack frame of the firmware
        decoded = catalogue().decode(can_id, data)
        assert decoded is not None
        names.add(decoded.name)
        for signal in catalogue().message(decoded.name).signals:
            value = decoded.values[signal.name]
            assert signal.minimum <= value <= signal.maximum, (decoded.name, signal.name, value)
    assert names >= {
        "STATUS_1",
        "STATUS_2",
        "STATUS_3",
        "CELL_COMM_STATUS1",
        "DETAIL",
        "HARDWARE",
        "TIME_REQUEST",
    }


def test_modbatt_dbc_prints_the_path() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modbatt", "dbc"], capture_output=True, text=True, check=True
    )
    path = Path(result.stdout.strip())
    assert path == dbc_path() and path.is_file() and path.suffix == ".dbc"


def test_the_simulators_values_survive_encoding() -> None:
    db = catalogue()
    module = BatteryModule(ModuleConfig(unique_id=11, cells=16))
    module.module_id = 3
    module.state = 3
    module.contactors_closed = True
    module._update(120.0)
    status_1, status_2, status_3, comm = (db.decode(*frame) for frame in module._status())
    assert status_1 is not None and status_2 is not None and status_3 is not None
    volts = [module.cell_voltage(c) for c in module.cells]
    temps = [c.temp_c for c in module.cells]
    assert status_1.values["SOC"] == 0 and status_1.values["SOH"] == 0  # never computed
    assert abs(status_1.values["Current"] - module.current_a) <= 0.01 + 1e-9
    assert abs(status_1.values["ModuleVoltage"] - sum(volts)) <= 0.015 + 1e-9  # truncated
    assert abs(status_2.values["MaxCellVoltage"] - max(volts)) <= 0.0005 + 1e-9
    assert abs(status_2.values["TotalVoltage"] - sum(volts)) <= 0.015 + 1e-9
    assert abs(status_3.values["MinCellTemp"] - min(temps)) <= 0.005 + 1e-9
    assert status_1.values["CellCount"] == 16 and status_1.node == 3
    assert comm is not None and comm.values["MostCells"] == 16
