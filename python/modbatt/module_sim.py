"""The battery module simulator: what a Modbatt module's firmware does on the module bus.

A :class:`BatteryModule` announces itself as unregistered (node 0xFF) once a second with its
unique id, manufacturer and part ids; takes the id the pack assigns in a REGISTRATION frame
that echoes its unique id; then reports on that id: STATUS_1-3 every 0.5 s and one DETAIL
frame (cell by cell) every 0.1 s, and answers hardware, status and detail requests. It obeys
state changes (Off, Standby, Precharge, On; Precharge completes to On after 0.3 s), the
max-state heartbeat (with no heartbeat for 1.0 s it drops to Standby), deregistration,
announce requests, all-deregister and all-isolate. A REGISTRATION with module id 0 is the
pack's refusal (it is full): the module waits 10 s before it announces again.

The electrical model is simple but coherent: the current follows a slow charge/discharge cycle
while On (positive = charging) and is 0 otherwise; each cell's SOC integrates the current over
its capacity; cell voltage is an open-circuit curve of SOC plus the IR drop; temperature
relaxes towards ambient plus I²R heating. Capacities, resistances, SOH and offsets vary per
module and per cell (seeded by the unique id), and every value stays inside the DBC ranges.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from modbatt import is_encrypted
from modbatt.catalogue import (
    ALL_DEREGISTER,
    ALL_ISOLATE,
    ANNOUNCE_REQUEST,
    ANNOUNCEMENT,
    DEREGISTER,
    DETAIL,
    DETAIL_REQUEST,
    HARDWARE,
    HW_REQUEST,
    MAX_STATE,
    OFF,
    ON,
    PRECHARGE,
    REGISTRATION,
    SET_TIME,
    STANDBY,
    STATE_CHANGE,
    STATUS_1,
    STATUS_2,
    STATUS_3,
    STATUS_REQUEST,
    TIME_REQUEST,
    UNREGISTERED,
    Catalogue,
    catalogue,
)

Frames = list[tuple[int, bytes]]

ANNOUNCE_INTERVAL_S = 1.0
REFUSED_BACKOFF_S = 10.0
STATUS_INTERVAL_S = 0.5
DETAIL_INTERVAL_S = 0.1
HEARTBEAT_TIMEOUT_S = 1.0
PRECHARGE_S = 0.3
AMBIENT_C = 25.0
CYCLE_PERIOD_S = 600.0
THERMAL_TAU_S = 60.0


@dataclass(frozen=True)
class ModuleConfig:
    """What a module is: its identity and size."""

    unique_id: int
    cells: int = 14
    mfg_id: int = 0x4D
    part_id: int = 0x01
    fw_version: int = 0x0102
    hw_version: int = 0x0003
    capacity_ah: float = 50.0


@dataclass
class Cell:
    """One cell's state and its manufacturing spread."""

    soc: float
    capacity_ah: float
    resistance_ohm: float
    temp_offset_c: float
    temp_c: float
    soh: float


def open_circuit_voltage(soc: float) -> float:
    """A Li-ion NMC-like OCV curve: 3.0 V empty, 4.15 V full, steeper near empty."""
    x = min(max(soc, 0.0), 100.0) / 100.0
    return 3.0 + 1.05 * x + 0.1 * (1 - math.exp(-x * 12)) - 0.1 * math.exp(-(1 - x) * 30)


@dataclass
class BatteryModule:
    """One simulated module; drive it with `on_frame` and `tick`."""

    config: ModuleConfig
    now: float = 0.0
    db: Catalogue = field(default_factory=catalogue)
    module_id: int | None = None
    controller_id: int | None = None
    state: int = STANDBY
    requested: int = STANDBY
    max_state: int = STANDBY
    refused: bool = False
    unix_time_offset: float | None = None

    def __post_init__(self) -> None:
        rng = random.Random(self.config.unique_id)  # noqa: S311 (a model, not a secret)
        self.soh = rng.uniform(92.0, 100.0)
        start_soc = rng.uniform(55.0, 85.0)
        capacity = self.config.capacity_ah * rng.uniform(0.95, 1.05)
        self.cells = [
            Cell(
                soc=start_soc + rng.uniform(-1.0, 1.0),
                capacity_ah=capacity * rng.uniform(0.98, 1.02),
                resistance_ohm=rng.uniform(0.0015, 0.0025),
                temp_offset_c=rng.uniform(-1.0, 1.0),
                temp_c=AMBIENT_C,
                soh=min(100.0, self.soh + rng.uniform(-1.0, 1.0)),
            )
            for _ in range(self.config.cells)
        ]
        for cell in self.cells:
            cell.temp_c += cell.temp_offset_c
        self.amplitude_a = rng.uniform(15.0, 30.0)
        self.phase = rng.uniform(0, 2 * math.pi)
        self.current_a = 0.0
        self.last_update = self.now
        # Spread the first announcements so that modules started together do not collide.
        self.next_announce = self.now + rng.uniform(0.0, 0.2)
        self.next_status = self.now
        self.next_detail = self.now
        self.detail_cell = 0
        self.heartbeat_at = self.now
        self.precharge_until: float | None = None
        self.time_requested = False

    # --- the bus -----------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        """Whether the pack has assigned this module an id."""
        return self.module_id is not None

    def _for_me(self, values: dict[str, float]) -> bool:
        """A command with a ModuleId is for this module when it names it, or 0 (all)."""
        return self.registered and int(values.get("ModuleId", 0)) in (0, self.module_id)

    def on_frame(self, can_id: int, data: bytes, now: float) -> Frames:
        """Handle one frame from the pack."""
        if is_encrypted(can_id):
            return []  # secured frames are the secure layer's (a later issue)
        decoded = self.db.decode(can_id, data)
        if decoded is None:
            return []
        name, values = decoded.name, decoded.values
        if name == REGISTRATION:
            if decoded.node == UNREGISTERED and int(values["UniqueId"]) == self.config.unique_id:
                self._registered(int(values["ModuleId"]), int(values["ControllerId"]), now)
            return []
        if name == MAX_STATE:
            self.heartbeat_at = now
            self.max_state = int(values["MaxState"])
            self._apply_state(now)
            return []
        if name == ANNOUNCE_REQUEST:
            self.refused = False
            return [self._announcement()]
        if name == ALL_DEREGISTER:
            self._unregister(now)
            return []
        if name == ALL_ISOLATE:
            self.requested = OFF
            self._apply_state(now)
            return []
        if name == SET_TIME:
            self.unix_time_offset = float(values["UnixTime"]) - now
            return []
        if not self._for_me(values):
            return []
        if name == STATE_CHANGE:
            self.requested = int(values["RequestedState"])
            self._apply_state(now)
        elif name == DEREGISTER:
            self._unregister(now)
        elif name == HW_REQUEST:
            return [self._hardware()]
        elif name == STATUS_REQUEST:
            self._update(now)
            return self._status()
        elif name == DETAIL_REQUEST:
            cell = int(values["CellId"])
            if cell < len(self.cells):
                return [self._detail(cell)]
        return []

    def tick(self, now: float) -> Frames:
        """Advance the model to `now` and send what is due."""
        self._update(now)
        out: Frames = []
        if not self.registered:
            if now >= self.next_announce:
                out.append(self._announcement())
                wait = REFUSED_BACKOFF_S if self.refused else ANNOUNCE_INTERVAL_S
                self.next_announce = now + wait
            return out
        if now - self.heartbeat_at > HEARTBEAT_TIMEOUT_S and self.state > STANDBY:
            self.requested = min(self.requested, STANDBY)
            self.max_state = STANDBY
            self._apply_state(now)
        if self.precharge_until is not None and now >= self.precharge_until:
            self.precharge_until = None
            self._apply_state(now)
        if not self.time_requested:
            self.time_requested = True
            out.append(self._encode(TIME_REQUEST, {}))
        if now >= self.next_status:
            out.extend(self._status())
            self.next_status = now + STATUS_INTERVAL_S
        if now >= self.next_detail:
            out.append(self._detail(self.detail_cell))
            self.detail_cell = (self.detail_cell + 1) % len(self.cells)
            self.next_detail = now + DETAIL_INTERVAL_S
        return out

    # --- state ---------------------------------------------------------------------------

    def _registered(self, module_id: int, controller_id: int, now: float) -> None:
        if module_id == 0:
            self.refused = True  # the pack is full
            self.next_announce = now + REFUSED_BACKOFF_S
            return
        self.module_id = module_id
        self.controller_id = controller_id
        self.refused = False
        self.heartbeat_at = now
        self.next_status = now
        self.next_detail = now

    def _unregister(self, now: float) -> None:
        self.module_id = None
        self.requested = STANDBY
        self.max_state = STANDBY
        self._apply_state(now)
        self.next_announce = now

    def _apply_state(self, now: float) -> None:
        """Move towards the requested state, never above the pack's max state."""
        target = min(self.requested, self.max_state)
        if target == ON and self.state < PRECHARGE:
            self.state = PRECHARGE
            self.precharge_until = now + PRECHARGE_S
        elif target == ON and self.state == PRECHARGE:
            if self.precharge_until is None:
                self.state = ON
        else:
            self.state = target
            self.precharge_until = None

    def _update(self, now: float) -> None:
        dt = max(0.0, now - self.last_update)
        self.last_update = now
        if self.state == ON:
            wave = math.sin(2 * math.pi * now / CYCLE_PERIOD_S + self.phase)
            current = self.amplitude_a * wave
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
        node = UNREGISTERED if self.module_id is None else self.module_id
        return self.db.encode(name, node, values)

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
                "MaxChargeCurrent": 50.0,
                "MaxDischargeCurrent": 100.0,
                "MaxChargeEndVoltage": round(4.2 * len(self.cells), 2),
                "HwVersion": self.config.hw_version,
            },
        )

    def _status(self) -> Frames:
        volts = [self.cell_voltage(c) for c in self.cells]
        temps = [c.temp_c for c in self.cells]
        soc = sum(c.soc for c in self.cells) / len(self.cells)
        total = sum(volts)
        return [
            self._encode(
                STATUS_1,
                {
                    "State": self.state,
                    "Status": 0,
                    "SOC": _half_percent(soc),
                    "SOH": _half_percent(self.soh),
                    "CellCount": len(self.cells),
                    "Current": _clamp(round(self.current_a / 0.02) * 0.02, -655.36, 655.34),
                    "ModuleVoltage": _clamp(round(total / 0.015) * 0.015, 0.0, 983.025),
                },
            ),
            self._encode(
                STATUS_2,
                {
                    "MinCellVoltage": _mv(min(volts)),
                    "MaxCellVoltage": _mv(max(volts)),
                    "AvgCellVoltage": _mv(total / len(volts)),
                    "TotalVoltage": _clamp(round(total, 2), 0.0, 655.35),
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
        ]

    def _detail(self, index: int) -> tuple[int, bytes]:
        cell = self.cells[index]
        return self._encode(
            DETAIL,
            {
                "CellId": index,
                "CellCount": len(self.cells),
                "CellTemp": _centi_c(cell.temp_c),
                "CellVoltage": _mv(self.cell_voltage(cell)),
                "CellSOC": _half_percent(cell.soc),
                "CellSOH": _half_percent(cell.soh),
            },
        )


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _half_percent(value: float) -> float:
    return _clamp(round(value * 2) / 2, 0.0, 100.0)


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
