"""The module bus catalogue: the DBC matches REFERENCE §2, and everything round-trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modbatt import compose_id
from modbatt.catalogue import catalogue, dbc_path
from modbatt.module_sim import BatteryModule, ModuleConfig

# REFERENCE §2, as (message, base, length, [(signal, start bit, bits, scale, offset)]).
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
            ("MaxChargeCurrent", 0, 16, 0.1, 0),
            ("MaxDischargeCurrent", 16, 16, 0.1, 0),
            ("MaxChargeEndVoltage", 32, 16, 0.01, 0),
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
            ("TotalVoltage", 48, 16, 0.01, 0),
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
            ("CellSOC", 48, 8, 0.5, 0),
            ("CellSOH", 56, 8, 0.5, 0),
        ],
    ),
    ("TIME_REQUEST", 0x506, 0, []),
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
    (
        "STATE_CHANGE",
        0x514,
        4,
        [
            ("ModuleId", 0, 8, 1, 0),
            ("RequestedState", 8, 4, 1, 0),
            ("HvBusVoltage", 16, 16, 0.1, 0),
        ],
    ),
    ("DETAIL_REQUEST", 0x515, 3, [("ModuleId", 0, 8, 1, 0), ("CellId", 8, 8, 1, 0)]),
    ("SET_TIME", 0x516, 5, [("BroadcastMarker", 0, 8, 1, 0), ("UnixTime", 8, 32, 1, 0)]),
    ("MAX_STATE", 0x517, 1, [("MaxState", 0, 8, 1, 0)]),
    ("DEREGISTER", 0x518, 2, [("ModuleId", 0, 8, 1, 0), ("Reason", 8, 8, 1, 0)]),
    ("ANNOUNCE_REQUEST", 0x51D, 1, [("RequestType", 0, 8, 1, 0)]),
    ("ALL_DEREGISTER", 0x51E, 1, [("Reason", 0, 8, 1, 0)]),
    ("ALL_ISOLATE", 0x51F, 1, [("Reason", 0, 8, 1, 0)]),
]


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
        raw = draw(st.integers(0, (1 << signal.length) - 1))
        physical = raw * signal.scale + signal.offset
        if signal.minimum is not None and signal.maximum is not None:
            physical = min(max(physical, signal.minimum), signal.maximum)
            raw = round((physical - signal.offset) / signal.scale)
            physical = raw * signal.scale + signal.offset
        values[signal.name] = physical
    return name, node, values


@given(message_values())
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
            {"ModuleId": 5, "ControllerId": 1, "MfgId": 0x4D, "PartId": 1, "UniqueId": 7},
        ),
        0.0,
    )
    module.on_frame(*db.encode("MAX_STATE", 0, {"MaxState": 3}), 0.0)
    module.on_frame(
        *db.encode("STATE_CHANGE", 5, {"ModuleId": 5, "RequestedState": 3, "HvBusVoltage": 400.0}),
        0.0,
    )
    frames = []
    for step in range(1, 6000):  # ten minutes: a whole charge/discharge cycle
        now = step * 0.1
        if step % 2 == 0:
            module.on_frame(*db.encode("MAX_STATE", 0, {"MaxState": 3}), now)
        frames += module.tick(now)
    frames += module.on_frame(*db.encode("HW_REQUEST", 5, {"ModuleId": 5}), 600.0)
    decoded_frames = [db.decode(i, d) for i, d in frames]
    currents = [f.values["Current"] for f in decoded_frames if f and f.name == "STATUS_1"]
    assert min(currents) < -5 and max(currents) > 5  # it discharged and charged
    names = set()
    for can_id, data in frames:
        decoded = catalogue().decode(can_id, data)
        assert decoded is not None
        names.add(decoded.name)
        for signal in catalogue().message(decoded.name).signals:
            value = decoded.values[signal.name]
            assert signal.minimum <= value <= signal.maximum, (decoded.name, signal.name, value)
    assert names >= {"STATUS_1", "STATUS_2", "STATUS_3", "DETAIL", "HARDWARE", "TIME_REQUEST"}


def test_modbatt_dbc_prints_the_path() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modbatt", "dbc"], capture_output=True, text=True, check=True
    )
    path = Path(result.stdout.strip())
    assert path == dbc_path() and path.is_file() and path.suffix == ".dbc"


def test_the_simulators_values_survive_encoding() -> None:
    db = catalogue()
    module = BatteryModule(ModuleConfig(unique_id=11, cells=16))
    module._registered(3, 1, 0.0)
    module.state = 3
    module._update(120.0)
    status_1, status_2, status_3 = (db.decode(*frame) for frame in module._status())
    assert status_1 is not None and status_2 is not None and status_3 is not None
    soc = sum(c.soc for c in module.cells) / len(module.cells)
    volts = [module.cell_voltage(c) for c in module.cells]
    temps = [c.temp_c for c in module.cells]
    assert abs(status_1.values["SOC"] - soc) <= 0.25 + 1e-9
    assert abs(status_1.values["Current"] - module.current_a) <= 0.01 + 1e-9
    assert abs(status_1.values["ModuleVoltage"] - sum(volts)) <= 0.0075 + 1e-9
    assert abs(status_2.values["MaxCellVoltage"] - max(volts)) <= 0.0005 + 1e-9
    assert abs(status_2.values["TotalVoltage"] - sum(volts)) <= 0.005 + 1e-9
    assert abs(status_3.values["MinCellTemp"] - min(temps)) <= 0.005 + 1e-9
    assert status_1.values["CellCount"] == 16 and status_1.node == 3
