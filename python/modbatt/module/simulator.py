"""The battery module simulator: a Modbatt module as its firmware behaves on the module bus.

:class:`BatteryModule` follows the module firmware (ModuleCPU build 8278, the rules in
:mod:`modbatt.protocol.firmware` and docs/MODULE_BUS.md), not the published DBC:

- **Start-up**: Off; one ANNOUNCEMENT on node 0x00 about 0.6 s after power-up. Unregistered,
  it announces again only after ANNOUNCE_REQUEST (after ``(unique id & 0xFF) // 10`` ticks of
  100 ms, at least one) or when its 11.1 s pack-controller timeout runs out.
- **Registration**: a REGISTRATION with DLC 8, manufacturer 0x02, part 0x03 and its unique id
  gives it the id in byte 0; it then sends TIME_REQUEST, STATUS_1-3, CELL_COMM_STATUS1 and
  HARDWARE, one frame per 100 ms tick.
- **Request-driven**: no periodic status. STATUS_REQUEST (DLC 1) gets STATUS_1-3 and
  CELL_COMM_STATUS1, DETAIL_REQUEST (DLC 3, a cell below its cell count) one DETAIL,
  HW_REQUEST one HARDWARE; each state transition and each (re)start of the cell string sends
  the status burst too.
- **What it ignores**: the node byte of a command's id, bit 17 (E) and the module id inside
  payloads; so a command for one module reaches every module, and a frame with E set on a
  command base is read as that plain command where the DLC rule lets it through (counted in
  ``sealed_frames_acted_on``).
- **Commands**: MAX_STATE caps the state (and lowers the requested one); STATE_CHANGE (DLC 2
  only) sets the requested state; ALL_ISOLATE sets it Off; DEREGISTER and ALL_DEREGISTER
  unregister it and set it Off. Every recognised command resets the 11.1 s timeout; when it
  runs out the module deregisters, goes Off and announces.
- **Values**: SOC and SOH are sent as 0 (the firmware does not compute them); module and total
  voltages in 15 mV steps; DETAIL's cell count is the number of cells that reported. The cell
  string takes ``CELL_STRING_START_S`` to report after power-up and after every transition:
  before that the voltages are 0 and the temperatures 0 °C.
- **The boot race**: a MAX_STATE received before the first state tick latches the state
  variable to it with the relays open (reported as that state, no current flows).

The electrical model behind the values is simple but coherent: the current follows a slow
charge/discharge cycle while On with the contactors closed (positive = charging); each cell's
SOC integrates it over its capacity; cell voltage is an open-circuit curve of SOC plus the IR
drop; temperature relaxes towards ambient plus I²R heating. Capacities, resistances and
offsets vary per module and per cell, seeded by the unique id.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from modbatt import is_encrypted
from modbatt.protocol.catalogue import (
    ANNOUNCEMENT,
    CELL_COMM_STATUS1,
    DETAIL,
    HARDWARE,
    STATUS_1,
    STATUS_2,
    STATUS_3,
    TIME_REQUEST,
    Catalogue,
    catalogue,
)
from modbatt.protocol.firmware import (
    DEFAULT_MAX_CHARGE_A,
    DEFAULT_MAX_DISCHARGE_A,
    FIRMWARE_BUILD,
    HARDWARE_COMPATIBILITY,
    INIT,
    MANUFACTURER_ID,
    OFF,
    ON,
    PACK_CONTROLLER_TIMEOUT_S,
    PART_ID,
    TICK_S,
    TICKS_PER_FRAME,
    accepts,
    announce_delay_s,
    end_of_charge_voltage,
)

Frames = list[tuple[int, bytes]]

CELL_STRING_START_S = 1.0  # from power-up or a transition until the cells report
AMBIENT_C = 25.0
CYCLE_PERIOD_S = 600.0
THERMAL_TAU_S = 60.0

# Command bases, as the firmware's dispatch names them
REGISTRATION_BASE, HW_REQUEST_BASE, STATUS_REQUEST_BASE = 0x510, 0x511, 0x512
STATE_CHANGE_BASE, DETAIL_REQUEST_BASE, SET_TIME_BASE = 0x514, 0x515, 0x516
MAX_STATE_BASE, DEREGISTER_BASE = 0x517, 0x518
ANNOUNCE_REQUEST_BASE, ALL_DEREGISTER_BASE, ALL_ISOLATE_BASE = 0x51D, 0x51E, 0x51F
STATUS_BURST = (STATUS_1, STATUS_2, STATUS_3, CELL_COMM_STATUS1)


@dataclass(frozen=True)
class ModuleConfig:
    """What a module is: its identity and size, as its EEPROM holds them."""

    unique_id: int
    cells: int = 14
    mfg_id: int = MANUFACTURER_ID
    part_id: int = PART_ID
    fw_version: int = FIRMWARE_BUILD
    hw_version: int = HARDWARE_COMPATIBILITY
    capacity_ah: float = 50.0
    max_charge_a: float = DEFAULT_MAX_CHARGE_A
    max_discharge_a: float = DEFAULT_MAX_DISCHARGE_A


@dataclass
class Cell:
    """One cell's state and its manufacturing spread."""

    soc: float
    capacity_ah: float
    resistance_ohm: float
    temp_offset_c: float
    temp_c: float


def open_circuit_voltage(soc: float) -> float:
    """A Li-ion NMC-like OCV curve: 3.0 V empty, 4.15 V full, steeper near empty."""
    x = min(max(soc, 0.0), 100.0) / 100.0
    return 3.0 + 1.05 * x + 0.1 * (1 - math.exp(-x * 12)) - 0.1 * math.exp(-(1 - x) * 30)


@dataclass
class BatteryModule:
    """One simulated module with the firmware's behaviour; drive it with `on_frame` and `tick`."""

    config: ModuleConfig
    now: float = 0.0
    db: Catalogue = field(default_factory=catalogue)
    module_id: int | None = None
    state: int = INIT
    requested: int = OFF
    max_state: int = OFF
    unix_time: int | None = None
    sealed_frames_acted_on: int = 0  # commands taken from frames with E set (a legacy hazard)

    def __post_init__(self) -> None:
        rng = random.Random(self.config.unique_id)  # noqa: S311 (a model, not a secret)
        start_soc = rng.uniform(55.0, 85.0)
        capacity = self.config.capacity_ah * rng.uniform(0.95, 1.05)
        self.cells = [
            Cell(
                soc=start_soc + rng.uniform(-1.0, 1.0),
                capacity_ah=capacity * rng.uniform(0.98, 1.02),
                resistance_ohm=rng.uniform(0.0015, 0.0025),
                temp_offset_c=rng.uniform(-1.0, 1.0),
                temp_c=AMBIENT_C,
            )
            for _ in range(self.config.cells)
        ]
        for cell in self.cells:
            cell.temp_c += cell.temp_offset_c
        self.amplitude_a = rng.uniform(15.0, 30.0)
        self.phase = rng.uniform(0, 2 * math.pi)
        self.current_a = 0.0
        self.contactors_closed = False  # relay and FET: closed only by a registered module
        self.booted_at = self.now
        self.last_update = self.now
        self.ticks = 0  # 100 ms ticks since power-up
        self.last_command_at = self.now
        self.announce_flag = True  # set at power-up: the first WRITE frame sends it
        self.announce_at: float | None = None  # ANNOUNCE_REQUEST's delay, when pending
        self.string_up_at = self.now + CELL_STRING_START_S
        self.string_reported = False
        self.outbox: deque[str] = deque()  # what is due, one frame per tick
        self.detail_cell: int | None = None

    # --- the bus -----------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        """Whether the pack has assigned this module an id."""
        return self.module_id is not None

    def on_frame(self, can_id: int, data: bytes, now: float) -> Frames:
        """Handle one frame, as the firmware's receive callback does.

        It never answers at once: whatever it sends goes out on its next ticks.
        """
        base = can_id >> 18  # the firmware compares the 11-bit base only
        if base not in _HANDLERS:
            return []
        self.last_command_at = now  # any recognised command, before any check
        if not accepts(base, len(data), self.registered):
            return []
        acted = _HANDLERS[base](self, data, now)
        if acted and is_encrypted(can_id):
            self.sealed_frames_acted_on += 1
        return []

    def tick(self, now: float) -> Frames:
        """Run the firmware's 100 ms ticks up to `now`; returns what they sent."""
        out: Frames = []
        while self.booted_at + (self.ticks + 1) * TICK_S <= now + 1e-9:
            self.ticks += 1
            frame = self._on_tick(self.booted_at + self.ticks * TICK_S)
            if frame is not None:
                out.append(frame)
        return out

    def _on_tick(self, now: float) -> tuple[int, bytes] | None:
        self._update(now)
        if now - self.last_command_at >= PACK_CONTROLLER_TIMEOUT_S:
            self.last_command_at = now  # it fires again 11.1 s later if nothing comes
            self._unregister()
            self.announce_flag = True
        if self.announce_at is not None and now >= self.announce_at - 1e-9:
            self.announce_at = None
            self.announce_flag = True
        writing = (self.ticks // TICKS_PER_FRAME) % 2 == 0
        if writing:
            self._handle_state(now)
        if not self.string_reported and now >= self.string_up_at:
            self.string_reported = True  # the cell string (re)started: status, counts
            self._queue_status()
        if writing and self.ticks % (2 * TICKS_PER_FRAME) == 0 and self.announce_flag:
            self.announce_flag = False  # the start of a WRITE frame
            return self._announcement()
        if self.module_id is None:
            self.outbox.clear()  # an unregistered module sends nothing but announcements
            return None
        if self.outbox:
            return self._message(self.outbox.popleft())
        return None

    # --- commands ------------------------------------------------------------------------

    def _registration(self, data: bytes, now: float) -> bool:
        if data[2] != self.config.mfg_id or data[3] != self.config.part_id:
            return False
        if int.from_bytes(data[4:8], "little") != self.config.unique_id:
            return False
        self.module_id = data[0]  # no range check in the firmware: 0 would be taken
        self.announce_at = None  # a flag already set still goes out (as the firmware does)
        self.outbox.clear()
        self.outbox.extend([TIME_REQUEST, *STATUS_BURST, HARDWARE])
        return True

    def _status_request(self, _data: bytes, _now: float) -> bool:
        if any(name in self.outbox for name in STATUS_BURST):
            return False  # a burst in progress: ignored
        self._queue_status()
        return True

    def _detail_request(self, data: bytes, _now: float) -> bool:
        cell = data[1]
        if cell >= len(self.cells) or DETAIL in self.outbox:
            return False
        self.detail_cell = cell
        self.outbox.append(DETAIL)
        return True

    def _hw_request(self, _data: bytes, _now: float) -> bool:
        self.outbox.append(HARDWARE)
        return True

    def _state_change(self, data: bytes, _now: float) -> bool:
        return self._set_requested(data[1] & 0x0F)

    def _max_state(self, data: bytes, _now: float) -> bool:
        if not data:
            return False
        value = data[0] & 0x0F
        if value >= 4:
            return False
        self.max_state = value
        if self.state > value:  # INIT (5) counts as above: the boot race
            self.requested = value
        return True

    def _set_time(self, data: bytes, _now: float) -> bool:
        self.unix_time = int.from_bytes(data[:8].ljust(8, b"\0"), "little")
        return True

    def _announce_request(self, _data: bytes, now: float) -> bool:
        if self.registered or self.announce_at is not None:
            return False
        self.announce_at = now + announce_delay_s(self.config.unique_id)
        return True

    def _deregister(self, _data: bytes, _now: float) -> bool:
        self._unregister()
        return True

    def _all_isolate(self, _data: bytes, _now: float) -> bool:
        return self._set_requested(OFF)

    # --- state ---------------------------------------------------------------------------

    def _set_requested(self, state: int) -> bool:
        if state >= 4:
            return False
        self.requested = state
        return True

    def _unregister(self) -> None:
        self.module_id = None
        self.requested = OFF

    def _handle_state(self, now: float) -> None:
        """The firmware's state handler: towards the requested state, never above the max."""
        target = self.requested
        if target > self.max_state or self.state > self.max_state:
            target = self.max_state
        if target == self.state:
            return
        self.state = target
        # relays and FET close only for a registered module; the state variable moves anyway
        self.contactors_closed = self.registered and target != OFF
        self.string_up_at = now + CELL_STRING_START_S  # every transition pauses the string
        self.string_reported = False
        if self.registered:
            self._queue_status()

    def _queue_status(self) -> None:
        for name in STATUS_BURST:
            if name not in self.outbox:
                self.outbox.append(name)

    @property
    def string_up(self) -> bool:
        """Whether the cell string is reporting."""
        return self.last_update >= self.string_up_at

    def _update(self, now: float) -> None:
        dt = max(0.0, now - self.last_update)
        self.last_update = now
        if self.state == ON and self.contactors_closed:
            wave = math.sin(2 * math.pi * now / CYCLE_PERIOD_S + self.phase)
            current = self.amplitude_a * wave
            current = min(max(current, self.config.max_discharge_a), self.config.max_charge_a)
            socs = [c.soc for c in self.cells]
            if (current < 0 and min(socs) <= 1.0) or (current > 0 and max(socs) >= 99.0):
                current = 0.0  # the module's own protection: no discharge empty, no overcharge
        else:
            current = 0.0
        self.current_a = current
        for cell in self.cells:
            cell.soc += current * dt / (cell.capacity_ah * 36.0)
            cell.soc = min(max(cell.soc, 0.0), 100.0)
            target = AMBIENT_C + cell.temp_offset_c + 10.0 * current**2 * cell.resistance_ohm
            cell.temp_c += (target - cell.temp_c) * min(1.0, dt / THERMAL_TAU_S)

    def cell_voltage(self, cell: Cell) -> float:
        """Terminal voltage: OCV plus the IR drop (charging raises it)."""
        return open_circuit_voltage(cell.soc) + self.current_a * cell.resistance_ohm

    # --- messages ------------------------------------------------------------------------

    def _encode(self, name: str, values: dict[str, float]) -> tuple[int, bytes]:
        return self.db.encode(name, self.module_id or 0, values)

    def _message(self, name: str) -> tuple[int, bytes]:
        if name == TIME_REQUEST:
            return self._encode(TIME_REQUEST, {})
        if name == HARDWARE:
            return self._hardware()
        if name == DETAIL:
            return self._detail(self.detail_cell or 0)
        return self._status()[STATUS_BURST.index(name)]

    def _announcement(self) -> tuple[int, bytes]:
        return self._encode(
            ANNOUNCEMENT,
            {
                "FwVersion": self.config.fw_version,
                "MfgId": self.config.mfg_id,
                "PartId": self.config.part_id,
                "UniqueId": self.config.unique_id,
            },
        )

    def _hardware(self) -> tuple[int, bytes]:
        return self._encode(
            HARDWARE,
            {
                "MaxChargeCurrent": _amps(self.config.max_charge_a),
                "MaxDischargeCurrent": _amps(self.config.max_discharge_a),
                "MaxChargeEndVoltage": _volts_15mv(end_of_charge_voltage(len(self.cells))),
                "HwVersion": self.config.hw_version,
            },
        )

    def _status(self) -> Frames:
        up = self.string_up
        volts = [self.cell_voltage(c) for c in self.cells] if up else [0.0]
        temps = [c.temp_c for c in self.cells] if up else [0.0]
        total = sum(volts)
        count = len(self.cells) if up else 0
        return [
            self._encode(
                STATUS_1,
                {
                    "State": self.state,
                    "Status": 0,
                    "SOC": 0,  # never computed by the firmware
                    "SOH": 0,
                    "CellCount": len(self.cells),
                    "Current": _amps(self.current_a),
                    "ModuleVoltage": _volts_15mv(total),
                },
            ),
            self._encode(
                STATUS_2,
                {
                    "MinCellVoltage": _mv(min(volts)),
                    "MaxCellVoltage": _mv(max(volts)),
                    "AvgCellVoltage": _mv(total / len(volts)),
                    "TotalVoltage": _volts_15mv(total),
                },
            ),
            self._encode(
                STATUS_3,
                {
                    "MinCellTemp": _centi_c(min(temps)),
                    "MaxCellTemp": _centi_c(max(temps)),
                    "AvgCellTemp": _centi_c(sum(temps) / len(temps)),
                },
            ),
            self._encode(
                CELL_COMM_STATUS1,
                {
                    "FewestCells": count,
                    "MostCells": count,
                    "I2cErrors": 0,
                    "FramingErrors": 0,
                    "FirstI2cErrorCell": 0xFF,
                },
            ),
        ]

    def _detail(self, index: int) -> tuple[int, bytes]:
        up = self.string_up
        cell = self.cells[index]
        volts = self.cell_voltage(cell) if up else 0.0
        return self._encode(
            DETAIL,
            {
                "CellId": index,
                "CellCount": len(self.cells) if up else 0,
                "CellTemp": _centi_c(cell.temp_c) if up else -55.35,
                "CellVoltage": _mv(volts),
                "CellSOC": 100 if volts >= 4.1 else 0,  # the firmware's (mV / 4100) * 100
                "CellSOH": 0,
            },
        )


_HANDLERS = {
    REGISTRATION_BASE: BatteryModule._registration,
    HW_REQUEST_BASE: BatteryModule._hw_request,
    STATUS_REQUEST_BASE: BatteryModule._status_request,
    STATE_CHANGE_BASE: BatteryModule._state_change,
    DETAIL_REQUEST_BASE: BatteryModule._detail_request,
    SET_TIME_BASE: BatteryModule._set_time,
    MAX_STATE_BASE: BatteryModule._max_state,
    DEREGISTER_BASE: BatteryModule._deregister,
    ANNOUNCE_REQUEST_BASE: BatteryModule._announce_request,
    ALL_DEREGISTER_BASE: BatteryModule._deregister,
    ALL_ISOLATE_BASE: BatteryModule._all_isolate,
}


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _amps(value: float) -> float:
    return _clamp(round(value / 0.02) * 0.02, -655.36, 655.34)


def _volts_15mv(value: float) -> float:
    return _clamp(int(value / 0.015) * 0.015, 0.0, 983.025)  # the firmware truncates


def _mv(volts: float) -> float:
    return _clamp(round(volts, 3), 0.0, 65.535)


def _centi_c(celsius: float) -> float:
    return _clamp(round(celsius, 2), -55.35, 600.0)


def modules_for(first_unique_id: int, count: int, cells: int, now: float) -> list[BatteryModule]:
    """`count` modules with consecutive unique ids, as `modbatt module run --count` makes."""
    return [
        BatteryModule(ModuleConfig(unique_id=first_unique_id + n, cells=cells), now=now)
        for n in range(count)
    ]
