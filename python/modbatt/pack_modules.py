"""The pack controller's module side: registration, the module table and the heartbeat.

:class:`ModuleManager` is sans-I/O (``on_frame`` / ``tick``, see :mod:`modbatt.nodes`):

- An announcing module (node 0xFF) gets the lowest free id 1..31 in a REGISTRATION frame that
  echoes its unique id; a module the pack already knows gets its old id back. When 31 modules
  are online the newcomer is refused politely: a REGISTRATION with module id 0, after which it
  waits before it announces again. The id of a module that has been silent longest is reused
  only when no id is free.
- The module table keeps, per module: unique id, id, manufacturer and part ids, firmware
  version, online or not, last seen, state and the latest decoded telemetry (STATUS_1-3,
  HARDWARE, DETAIL per cell).
- MAX_STATE is broadcast every 200 ms (the heartbeat); a module silent for 2 s is marked
  offline, and marked online again when it is heard (hot-plugging works the same way).
- After its own restart the pack broadcasts ANNOUNCE_REQUEST; modules that still hold an id
  announce on it and are adopted with that id when it is free.

Events (registered, refused, silent, returned, state) are queued for whoever runs the pack.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from modbatt import is_encrypted
from modbatt.catalogue import (
    ANNOUNCE_REQUEST,
    ANNOUNCEMENT,
    BROADCAST,
    DETAIL,
    HW_REQUEST,
    MAX_MODULES,
    MAX_STATE,
    ON,
    REGISTRATION,
    STATE_CHANGE,
    STATE_NAMES,
    STATUS_1,
    UNREGISTERED,
    Catalogue,
    catalogue,
)

Frames = list[tuple[int, bytes]]

HEARTBEAT_INTERVAL_S = 0.2
SILENCE_TIMEOUT_S = 2.0
ANNOUNCE_REQUEST_INTERVAL_S = 1.0
MODULE_MESSAGES = frozenset(
    {"ANNOUNCEMENT", "HARDWARE", "STATUS_1", "STATUS_2", "STATUS_3", "DETAIL", "TIME_REQUEST"}
)


@dataclass
class ModuleEntry:
    """One row of the module table."""

    unique_id: int
    module_id: int
    mfg_id: int
    part_id: int
    fw_version: int
    online: bool
    registered_at: float
    last_seen: float
    state: int | None = None
    telemetry: dict[str, dict[str, Any]] = field(default_factory=dict)
    cells: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Telemetry bytes not decoded yet, by (base, cell id for DETAIL else 0): decoded into
    # `telemetry` and `cells` when the table is read (`ModuleManager.snapshot`).
    undecoded: dict[tuple[int, int], bytes] = field(default_factory=dict, repr=False)

    @property
    def state_name(self) -> str:
        """The last reported state, as a word."""
        return "?" if self.state is None else STATE_NAMES.get(self.state, str(self.state))


@dataclass(frozen=True)
class ModuleEvent:
    """Something that changed in the module table."""

    kind: str  # registered, refused, silent, returned, rebooted, state
    module_id: int
    unique_id: int
    detail: str = ""

    def __str__(self) -> str:
        who = f"module {self.module_id}" if self.module_id else "module"
        extra = f": {self.detail}" if self.detail else ""
        return f"{who} (unique id {self.unique_id}) {self.kind}{extra}"


@dataclass
class ModuleManager:
    """The pack controller's side of the module bus."""

    controller_id: int = 1
    max_state: int = ON
    silence_timeout_s: float = SILENCE_TIMEOUT_S
    db: Catalogue = field(default_factory=catalogue)
    table: dict[int, ModuleEntry] = field(default_factory=dict)
    events: list[ModuleEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._telemetry_lengths = {
            self.db.base_of(name): self.db.message(name).length
            for name in MODULE_MESSAGES - {ANNOUNCEMENT}
        }
        self._detail_base = self.db.base_of(DETAIL)
        self._status_1_base = self.db.base_of(STATUS_1)
        self._next_heartbeat = 0.0
        self._heartbeat_frame: tuple[int, tuple[int, bytes]] | None = None  # (max_state, frame)
        self._last_announce_request = -ANNOUNCE_REQUEST_INTERVAL_S
        self._started = False

    # --- the table -----------------------------------------------------------------------

    def snapshot(self) -> list[ModuleEntry]:
        """A copy of the module table, by module id, its telemetry decoded."""
        for entry in self.table.values():
            self._decode_telemetry(entry)
        return [copy.deepcopy(self.table[i]) for i in sorted(self.table)]

    def _decode_telemetry(self, entry: ModuleEntry) -> None:
        for (base, _), data in entry.undecoded.items():
            decoded = self.db.decode(base << 18 | entry.module_id, data)
            if decoded is None:
                continue
            if decoded.name == DETAIL:
                entry.cells[int(decoded.values["CellId"])] = decoded.values
            else:
                entry.telemetry[decoded.name] = decoded.values
        entry.undecoded.clear()

    def online(self) -> list[ModuleEntry]:
        """The modules heard from recently."""
        return [m for m in self.snapshot() if m.online]

    def by_unique_id(self, unique_id: int) -> ModuleEntry | None:
        """The entry of a module, by its unique id."""
        return next((m for m in self.table.values() if m.unique_id == unique_id), None)

    def drain_events(self) -> list[ModuleEvent]:
        """The events since the last call."""
        events, self.events = self.events, []
        return events

    def _free_id(self) -> int | None:
        for module_id in range(1, MAX_MODULES + 1):
            if module_id not in self.table:
                return module_id
        offline = [m for m in self.table.values() if not m.online]
        if offline:
            stale = min(offline, key=lambda m: m.last_seen)
            del self.table[stale.module_id]
            return stale.module_id
        return None

    # --- commands ------------------------------------------------------------------------

    def state_change(self, module_id: int, state: int, hv_bus_voltage: float = 0.0) -> Frames:
        """Ask one module (or all, with id 0) to go to `state`."""
        values = {"ModuleId": module_id, "RequestedState": state, "HvBusVoltage": hv_bus_voltage}
        return [self.db.encode(STATE_CHANGE, module_id, values)]

    # --- the bus -------------------------------------------------------------------------

    def on_frame(self, can_id: int, data: bytes, now: float) -> Frames:
        """Handle one frame from a module."""
        if is_encrypted(can_id):
            return []  # secured module traffic is the gateway's (a later issue)
        base, node = can_id >> 18, can_id & 0xFF
        entry = self.table.get(node)
        length = self._telemetry_lengths.get(base)
        if length is not None and len(data) >= length:
            # Telemetry. The gateway taps every message it bridges, and a decode costs more
            # than the bridging: keep the bytes of a known module, decode them when the
            # table is read. Only the state is read now, for its events.
            if entry is None:
                return self._unknown_module(now)
            self._heard(entry, now)
            entry.undecoded[(base, data[0] if base == self._detail_base else 0)] = data
            if base == self._status_1_base:
                self._state_reported(entry, data[0] & 0x0F)  # STATUS_1.State: bits 0-3
            return []
        decoded = self.db.decode(can_id, data)
        if decoded is None or decoded.name not in MODULE_MESSAGES:
            return []
        if decoded.name == ANNOUNCEMENT:
            return self._announced(decoded.node, decoded.values, now)
        entry = self.table.get(decoded.node)
        if entry is None:
            return self._unknown_module(now)
        self._heard(entry, now)
        if decoded.name == DETAIL:
            entry.cells[int(decoded.values["CellId"])] = decoded.values
        else:
            entry.telemetry[decoded.name] = decoded.values
        if decoded.name == STATUS_1:
            self._state_reported(entry, int(decoded.values["State"]))
        return []

    def _heartbeat(self) -> tuple[int, bytes]:
        """The max-state heartbeat frame, encoded once per value (it goes out 5 times a second)."""
        if self._heartbeat_frame is None or self._heartbeat_frame[0] != self.max_state:
            frame = self.db.encode(MAX_STATE, BROADCAST, {"MaxState": self.max_state})
            self._heartbeat_frame = (self.max_state, frame)
        return self._heartbeat_frame[1]

    def _unknown_module(self, now: float) -> Frames:
        """A module that holds an id we do not know (we restarted): ask all to announce."""
        if now - self._last_announce_request >= ANNOUNCE_REQUEST_INTERVAL_S:
            self._last_announce_request = now
            return [self.db.encode(ANNOUNCE_REQUEST, BROADCAST, {"RequestType": 0})]
        return []

    def _state_reported(self, entry: ModuleEntry, state: int) -> None:
        if state != entry.state:
            entry.state = state
            self.events.append(
                ModuleEvent("state", entry.module_id, entry.unique_id, entry.state_name)
            )

    def _heard(self, entry: ModuleEntry, now: float) -> None:
        entry.last_seen = now
        if not entry.online:
            entry.online = True
            self.events.append(ModuleEvent("returned", entry.module_id, entry.unique_id))

    def _announced(self, node: int, values: dict[str, Any], now: float) -> Frames:
        unique_id = int(values["UniqueId"])
        known = self.by_unique_id(unique_id)
        if known is not None:
            self._heard(known, now)
            if node == UNREGISTERED:  # it lost its id (rebooted): give it the same one back
                self.events.append(ModuleEvent("rebooted", known.module_id, unique_id))
                return self._registration(known.module_id, values)
            return []
        if 1 <= node <= MAX_MODULES and node not in self.table:
            module_id: int | None = node  # it kept its id across our restart: adopt it
        else:
            module_id = self._free_id()
        if module_id is None:
            self.events.append(
                ModuleEvent("refused", 0, unique_id, f"the pack already has {MAX_MODULES} modules")
            )
            return self._registration(0, values)
        self.table[module_id] = ModuleEntry(
            unique_id=unique_id,
            module_id=module_id,
            mfg_id=int(values["MfgId"]),
            part_id=int(values["PartId"]),
            fw_version=int(values["FwVersion"]),
            online=True,
            registered_at=now,
            last_seen=now,
        )
        self.events.append(ModuleEvent("registered", module_id, unique_id))
        frames = [] if node == module_id else self._registration(module_id, values)
        return [*frames, self.db.encode(HW_REQUEST, module_id, {"ModuleId": module_id})]

    def _registration(self, module_id: int, values: dict[str, Any]) -> Frames:
        return [
            self.db.encode(
                REGISTRATION,
                UNREGISTERED,
                {
                    "ModuleId": module_id,
                    "ControllerId": self.controller_id,
                    "MfgId": values["MfgId"],
                    "PartId": values["PartId"],
                    "UniqueId": values["UniqueId"],
                },
            )
        ]

    def tick(self, now: float) -> Frames:
        """Heartbeat and silence detection."""
        out: Frames = []
        if not self._started:
            self._started = True
            self._last_announce_request = now
            out.append(self.db.encode(ANNOUNCE_REQUEST, BROADCAST, {"RequestType": 0}))
        if now >= self._next_heartbeat:
            out.append(self._heartbeat())
            # On schedule, not from `now`: a coarse tick must not stretch the period.
            late = now - self._next_heartbeat > HEARTBEAT_INTERVAL_S
            self._next_heartbeat = (now if late else self._next_heartbeat) + HEARTBEAT_INTERVAL_S
        for entry in self.table.values():
            if entry.online and now - entry.last_seen > self.silence_timeout_s:
                entry.online = False
                self.events.append(
                    ModuleEvent(
                        "silent",
                        entry.module_id,
                        entry.unique_id,
                        f"nothing heard for {self.silence_timeout_s:g} s",
                    )
                )
        return out


def format_table(entries: list[ModuleEntry]) -> str:
    """The module table as text, one module per line."""
    lines = [
        f"{'id':>3}  {'unique id':>10}  {'online':6}  {'state':9}  {'SOC %':>6}  "
        f"{'V':>7}  {'A':>7}  {'T max':>6}"
    ]
    for m in entries:
        s1 = m.telemetry.get("STATUS_1", {})
        s3 = m.telemetry.get("STATUS_3", {})
        lines.append(
            f"{m.module_id:>3}  {m.unique_id:>10}  {'yes' if m.online else 'NO':6}  "
            f"{m.state_name:9}  {_num(s1.get('SOC'), '.1f'):>6}  "
            f"{_num(s1.get('ModuleVoltage'), '.2f'):>7}  {_num(s1.get('Current'), '.2f'):>7}  "
            f"{_num(s3.get('MaxCellTemp'), '.1f'):>6}"
        )
    return "\n".join(lines)


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
