"""The pack controller's module side: registration, polling, the module table, MAX_STATE.

:class:`ModuleManager` is sans-I/O (``on_frame`` / ``tick``, see :mod:`modbatt.bus.nodes`) and
speaks to modules as their firmware needs (the rules in :mod:`modbatt.protocol.firmware`,
docs/MODULE_BUS.md):

- **Start-up**: ALL_DEREGISTER then ANNOUNCE_REQUEST, the sequence the firmware honours (a
  registered module ignores ANNOUNCE_REQUEST and sends nothing unasked, so a restarted pack
  has to make its modules register again; deregistration sets them Off). ANNOUNCE_REQUEST
  again every ``ANNOUNCE_REQUEST_INTERVAL_S``.
- **Registration**: an ANNOUNCEMENT (on node 0x00, or any node) from a module of the
  firmware's manufacturer and part gets a REGISTRATION on node 0xFF echoing them and its
  unique id: a known unique id keeps its id (it rebooted or timed out), a new one takes the
  lowest free id 1-31, or the id of the module silent longest. With 31 modules present a
  newcomer is not registered (the firmware would take id 0 as an id) and is reported.
- **Polling**: a module sends status only when asked. A module the pack reaches through a
  session (``sealed``) is polled on its own, with sealed commands on the secured command
  bases (STATUS_REQUEST and its authenticated MAX_STATE every ``STATUS_POLL_S``, one
  DETAIL_REQUEST every ``DETAIL_POLL_S``, HW_REQUEST until HARDWARE came). Modules reached
  plain are polled together with broadcast requests: the firmware ignores the node byte and
  the module id in payloads, so every plain module answers every plain request anyway.
  Either way no module gets near its 11.1 s timeout; :func:`bus_load` gives the cost.
- **Answers**: TIME_REQUEST gets SET_TIME (8 bytes: Unix time and a valid flag); HARDWARE is
  checked (charge limit >= 0 A, discharge limit <= 0 A, compatibility 0x0000) and an
  incompatible module is reported and commanded Off.
- **MAX_STATE**: broadcast plain every 200 ms while any module is reached plain. It starts Off and
  takes the operator's configured value only after ``START_SETTLE_S``, when the start-up
  registration round is over: a module that boots while On is broadcast can latch On with its
  relays open (a firmware race). A module whose first status after registering reports a
  state above Off is reported (`latched`): no command can have reached it yet.
- **The table**: per module its identity, online or not, state and the latest telemetry, in
  the firmware's units. Frames that are not as the firmware sends them (a DLC other than 8, a
  state or value no module can report, an unknown manufacturer) are counted in ``rejected``
  and logged, never put in the table.
- A command frame on CAN 2 that this pack did not send is counted in ``foreign_commands`` and
  reported (`foreign_command`): pack commands come from one pack.

Events are queued for whoever runs the pack (:meth:`drain_events`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modbatt import is_encrypted
from modbatt.protocol.catalogue import (
    ALL_DEREGISTER,
    ALL_ISOLATE,
    ANNOUNCE_REQUEST,
    ANNOUNCEMENT,
    BROADCAST,
    CELL_COMM_STATUS1,
    DETAIL,
    DETAIL_REQUEST,
    HARDWARE,
    HW_REQUEST,
    MAX_MODULES,
    MAX_STATE,
    REGISTRATION,
    SECURED_COMMAND_BASES,
    SECURED_COMMAND_XOR,
    SET_TIME,
    STATE_CHANGE,
    STATE_NAMES,
    STATUS_1,
    STATUS_2,
    STATUS_3,
    STATUS_REQUEST,
    TIME_REQUEST,
    UNREGISTERED,
    Catalogue,
    catalogue,
    secured_command_id,
)
from modbatt.protocol.firmware import (
    COMMANDS,
    HARDWARE_COMPATIBILITY,
    INIT,
    MANUFACTURER_ID,
    OFF,
    ON,
    PART_ID,
)

log = logging.getLogger("modbatt.pack.modules")

Frames = list[tuple[int, bytes]]

HEARTBEAT_INTERVAL_S = 0.2
SILENCE_TIMEOUT_S = 4.0  # four status polls unanswered (the original pack's MCU_ET_TIMEOUT)
ANNOUNCE_REQUEST_INTERVAL_S = 5.0
STATUS_POLL_S = 1.0
DETAIL_POLL_S = 0.5
START_SETTLE_S = 4.0  # ALL_DEREGISTER, ANNOUNCE_REQUEST, the longest announce delay (2.5 s)
UNKNOWN_MODULE_INTERVAL_S = 12.0  # a DEREGISTER to an unknown id at most this often
FOREIGN_REPORT_INTERVAL_S = 5.0
MODULE_FRAME_DLC = 8  # every module -> pack frame of the firmware
# Telemetry kept as bytes and decoded when the table is read (the gateway taps every frame it
# bridges; decoding costs more than bridging); the others are acted on as they arrive.
LAZY_MESSAGES = (STATUS_1, STATUS_2, STATUS_3, DETAIL, CELL_COMM_STATUS1)
EAGER_MESSAGES = (ANNOUNCEMENT, HARDWARE, TIME_REQUEST)
# What no module can report: a value outside these bounds is a fault or a forgery.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "MinCellVoltage": (0.0, 5.0),
    "MaxCellVoltage": (0.0, 5.0),
    "AvgCellVoltage": (0.0, 5.0),
    "CellVoltage": (0.0, 5.0),
    "MinCellTemp": (-55.35, 150.0),
    "MaxCellTemp": (-55.35, 150.0),
    "AvgCellTemp": (-55.35, 150.0),
    "CellTemp": (-55.35, 150.0),
}


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
    hardware: dict[str, Any] | None = None
    incompatible: str | None = None
    # Telemetry bytes not decoded yet, by (base, cell id for DETAIL else 0): decoded into
    # `telemetry` and `cells` when the table is read (`ModuleManager.snapshot`).
    undecoded: dict[tuple[int, int], bytes] = field(default_factory=dict, repr=False)
    cell_count: int = 0  # the expected cell count it reported (STATUS_1 byte 3), 0 until then
    next_poll: float = 0.0
    polls: int = 0
    next_cell: int = 0
    time_due: bool = False  # a sealed SET_TIME goes with its next poll (it was just linked)

    @property
    def state_name(self) -> str:
        """The last reported state, as a word."""
        return "?" if self.state is None else STATE_NAMES.get(self.state, str(self.state))


@dataclass(frozen=True)
class ModuleEvent:
    """Something that changed in the module table or on the module bus."""

    # registered, refused, silent, returned, rebooted, state, incompatible, unsupported,
    # latched, unknown, foreign_command
    kind: str
    module_id: int
    unique_id: int
    detail: str = ""
    # When it happened (monotonic clock): events are handled a moment later, on another thread,
    # and a module's "rebooted" must not end a session that was set up after it.
    at: float = field(default_factory=time.monotonic, compare=False, repr=False)

    def __str__(self) -> str:
        who = f"module {self.module_id}" if self.module_id else "module"
        if self.unique_id:
            who += f" (unique id {self.unique_id})"
        extra = f": {self.detail}" if self.detail else ""
        return f"{who} {self.kind}{extra}"


@dataclass
class ModuleManager:
    """The pack controller's side of the module bus."""

    controller_id: int = 0
    max_state: int = OFF  # the operator's configured cap; the heartbeat starts Off anyway
    silence_timeout_s: float = SILENCE_TIMEOUT_S
    wall_clock: Callable[[], float] = time.time
    db: Catalogue = field(default_factory=catalogue)
    table: dict[int, ModuleEntry] = field(default_factory=dict)
    events: list[ModuleEvent] = field(default_factory=list)
    sealed: set[int] = field(default_factory=set)  # module ids reached through a session
    rejected: Counter[str] = field(default_factory=Counter)
    foreign_commands: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lazy = {self.db.base_of(name) for name in LAZY_MESSAGES}
        self._eager = {self.db.base_of(name): name for name in EAGER_MESSAGES}
        self._detail_base = self.db.base_of(DETAIL)
        self._status_1_base = self.db.base_of(STATUS_1)
        self._started_at: float | None = None
        self._configured = False
        self._next_heartbeat = 0.0
        self._heartbeat_frame: tuple[int, tuple[int, bytes]] | None = None  # (value, frame)
        self._next_announce_request = 0.0
        self._next_plain_status = 0.0
        self._next_plain_detail = 0.0
        self._plain_cell = 0
        self._unknown_at: dict[int, float] = {}
        self._foreign_reported_at = -FOREIGN_REPORT_INTERVAL_S
        self._unsupported: set[int] = set()

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
            problem = _implausible(decoded.values)
            if problem:
                self._reject("implausible", entry.module_id, f"{decoded.name} {problem}")
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

    def expect(self, unique_id: int, module_id: int, now: float) -> None:
        """Put a module the pack knows from before its restart into the table, offline.

        A paired module keeps its registration and its session across a pack restart and
        drops the restart's plain ALL_DEREGISTER (it takes commands only sealed): the pack
        links it again on the id it had, and it is online once it answers a sealed poll.
        """
        if module_id in self.table or self.by_unique_id(unique_id) is not None:
            return
        if not 1 <= module_id <= MAX_MODULES:
            return
        self.table[module_id] = ModuleEntry(
            unique_id=unique_id,
            module_id=module_id,
            mfg_id=MANUFACTURER_ID,
            part_id=PART_ID,
            fw_version=0,
            online=False,
            registered_at=now,
            last_seen=now,
        )

    def set_sealed(self, module_id: int, sealed: bool) -> None:
        """Whether the pack reaches this module through a session (polled sealed) or plain."""
        if sealed:
            self.sealed.add(module_id)
            # Its TIME_REQUEST (sent once, as it registers) may have been sealed before the
            # pack held the session, and dropped: every newly linked module gets the time.
            entry = self.table.get(module_id)
            if entry is not None:
                entry.time_due = True
        else:
            self.sealed.discard(module_id)

    def heartbeat_state(self, now: float) -> int:
        """The MAX_STATE the pack sends now.

        Off until the start-up round is over, unless the operator configured it since.
        """
        if not self._configured and (
            self._started_at is None or now - self._started_at < START_SETTLE_S
        ):
            return OFF
        return self.max_state

    def configure_max_state(self, max_state: int) -> None:
        """The operator's new cap: sent at the next tick, plain and to every linked module."""
        self.max_state = max_state
        self._configured = True
        self._next_heartbeat = 0.0
        for entry in self.table.values():
            entry.polls = 0  # the next poll slot is a status slot, with the sealed MAX_STATE
            entry.next_poll = 0.0

    def _free_id(self) -> int | None:
        for module_id in range(1, MAX_MODULES + 1):
            if module_id not in self.table:
                return module_id
        offline = [m for m in self.table.values() if not m.online]
        if offline:
            stale = min(offline, key=lambda m: m.last_seen)
            del self.table[stale.module_id]
            self.sealed.discard(stale.module_id)
            return stale.module_id
        return None

    def _reject(self, reason: str, module_id: int, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning("module bus: %s frame from node %d dropped: %s", reason, module_id, detail)

    # --- commands ------------------------------------------------------------------------

    def command_id(self, can_id: int) -> int:
        """The logical id a command to a module travels on: sealed ones on the secured bases."""
        return can_id ^ SECURED_COMMAND_XOR if (can_id & 0xFF) in self.sealed else can_id

    def state_change(self, module_id: int, state: int) -> Frames:
        """Ask one module to go to `state` (STATE_CHANGE, DLC 2, as the firmware takes it).

        Sent plain, it reaches every module reached plain (the firmware ignores the module
        id); sent sealed (a module in `sealed`), only that one.
        """
        can_id, data = self.db.encode(
            STATE_CHANGE, module_id, {"ModuleId": module_id, "RequestedState": state}
        )
        return [(self.command_id(can_id), data)]

    def deregister(self, module_id: int) -> Frames:
        """Ask one module to deregister (DEREGISTER).

        Sealed for a module in `sealed`, which ends its session with it; plain, every module
        reached plain takes it.
        """
        can_id, data = self.db.encode(
            "DEREGISTER", module_id, {"ModuleId": module_id, "ControllerId": self.controller_id}
        )
        return [(self.command_id(can_id), data)]

    def isolate_all(self) -> Frames:
        """Every module Off at once (ALL_ISOLATE): one plain frame and a sealed copy per link.

        The plain frame reaches every module reached plain, and any module the table does not
        hold; a module reached through a session drops it and takes its own sealed copy (on
        the secured base, its node), one single frame each, sent after the plain one.
        """
        can_id, data = self.db.encode(ALL_ISOLATE, BROADCAST, {"ControllerId": self.controller_id})
        out: Frames = [(can_id, data)]
        for module_id in sorted(self.sealed):
            out.append((can_id ^ SECURED_COMMAND_XOR | module_id, data))
        return out

    # --- the bus -------------------------------------------------------------------------

    def on_frame(self, can_id: int, data: bytes, now: float) -> Frames:
        """Handle one frame from CAN 2 (plain, or opened by the gateway)."""
        base, node = can_id >> 18, can_id & 0xFF
        if base in COMMANDS or base in SECURED_COMMAND_BASES:
            return self._foreign_command(base, node, now)
        if is_encrypted(can_id):
            return []  # sealed module traffic is the gateway's; its tap brings it here
        lazy = base in self._lazy
        eager = self._eager.get(base)
        if not lazy and eager is None:
            return []
        if len(data) != MODULE_FRAME_DLC:
            self._reject("bad_dlc", node, f"0x{base:03X} with DLC {len(data)}")
            return []
        if eager == ANNOUNCEMENT:
            return self._announced(node, data, now)
        entry = self.table.get(node)
        if entry is None:
            return self._unknown_module(node, now)
        if lazy:
            # Only the state is read now, for its events; the rest when the table is read.
            if base == self._status_1_base:
                state = data[0] & 0x0F
                if state > ON and state != INIT:
                    self._reject("implausible", node, f"STATUS_1 state {state}")
                    return []
                self._state_reported(entry, state)
                entry.cell_count = data[3]  # STATUS_1.CellCount: what DETAIL_REQUEST may ask
            self._heard(entry, now)
            entry.undecoded[(base, data[0] if base == self._detail_base else 0)] = data
            return []
        self._heard(entry, now)
        if eager == TIME_REQUEST:
            return self._set_time(entry)
        return self._hardware(entry, data)

    def _foreign_command(self, base: int, node: int, now: float) -> Frames:
        """A pack command on CAN 2 that this pack did not send (its own are not received)."""
        plain_base = base if base in COMMANDS else secured_command_id(base << 18) >> 18
        name = self.db.name_of(plain_base) or f"0x{base:03X}"
        self.foreign_commands[name] += 1
        if now - self._foreign_reported_at >= FOREIGN_REPORT_INTERVAL_S:
            self._foreign_reported_at = now
            total = sum(self.foreign_commands.values())
            self.events.append(
                ModuleEvent(
                    "foreign_command",
                    node if 1 <= node <= MAX_MODULES else 0,
                    0,
                    f"{name} on CAN 2 not sent by this pack ({total} so far)",
                )
            )
        return []

    def _time_now(self) -> dict[str, int]:
        """SET_TIME's values: the Unix time now, marked valid."""
        return {"UnixTime": max(0, int(self.wall_clock())), "TimeValid": 1}

    def _set_time(self, entry: ModuleEntry) -> Frames:
        can_id, data = self.db.encode(SET_TIME, BROADCAST, self._time_now())
        if entry.module_id in self.sealed:  # its own authenticated copy
            return [((can_id & ~0xFF | entry.module_id) ^ SECURED_COMMAND_XOR, data)]
        return [(can_id, data)]

    def _hardware(self, entry: ModuleEntry, data: bytes) -> Frames:
        decoded = self.db.decode(self.db.base_of(HARDWARE) << 18 | entry.module_id, data)
        if decoded is None:
            return []
        values = decoded.values
        entry.hardware = values
        problems = []
        if values["MaxChargeCurrent"] < 0:
            problems.append(f"charge limit {values['MaxChargeCurrent']:.2f} A below 0")
        if values["MaxDischargeCurrent"] > 0:
            problems.append(f"discharge limit {values['MaxDischargeCurrent']:.2f} A above 0")
        if int(values["HwVersion"]) != HARDWARE_COMPATIBILITY:
            problems.append(f"hardware compatibility 0x{int(values['HwVersion']):04X}")
        problem = "; ".join(problems) or None
        if problem == entry.incompatible:
            return []
        entry.incompatible = problem
        if problem is None:
            return []
        self.events.append(
            ModuleEvent(
                "incompatible",
                entry.module_id,
                entry.unique_id,
                f"{problem}: commanded Off"
                + ("" if entry.module_id in self.sealed else " (every module reached plain too)"),
            )
        )
        return self.state_change(entry.module_id, OFF)

    def _heartbeat(self, now: float) -> tuple[int, bytes]:
        """The plain max-state frame, encoded once per value (it goes out 5 times a second)."""
        value = self.heartbeat_state(now)
        if self._heartbeat_frame is None or self._heartbeat_frame[0] != value:
            frame = self.db.encode(MAX_STATE, BROADCAST, {"MaxState": value})
            self._heartbeat_frame = (value, frame)
        return self._heartbeat_frame[1]

    def _unknown_module(self, node: int, now: float) -> Frames:
        """A registered module the table does not hold (it missed our start-up round).

        The firmware sends nothing that names its unique id once registered and ignores
        ANNOUNCE_REQUEST; a DEREGISTER makes it announce (with the firmware's missing id
        check, every module reached plain does: so at most once per timeout period).
        """
        if not 1 <= node <= MAX_MODULES:
            self._reject("bad_node", node, "a module message from an id no module can hold")
            return []
        if now - self._unknown_at.get(node, -UNKNOWN_MODULE_INTERVAL_S) < UNKNOWN_MODULE_INTERVAL_S:
            return []
        self._unknown_at[node] = now
        self.events.append(ModuleEvent("unknown", node, 0, "not in the table: deregistered"))
        frame = self.db.encode(
            "DEREGISTER", node, {"ModuleId": node, "ControllerId": self.controller_id}
        )
        return [frame, self._announce_request()]

    def _announce_request(self) -> tuple[int, bytes]:
        return self.db.encode(ANNOUNCE_REQUEST, BROADCAST, {"ControllerId": self.controller_id})

    def _state_reported(self, entry: ModuleEntry, state: int) -> None:
        if state == entry.state:
            return
        first = entry.state is None  # the status burst the module sends as it registers
        entry.state = state
        self.events.append(ModuleEvent("state", entry.module_id, entry.unique_id, entry.state_name))
        if first and state not in (OFF, INIT):
            # No command could have reached it yet: the firmware's boot race (a MAX_STATE
            # before its first state tick) latched the state with the relays open.
            self.events.append(
                ModuleEvent(
                    "latched",
                    entry.module_id,
                    entry.unique_id,
                    f"registered reporting {entry.state_name}: its relays may be open "
                    "(a MAX_STATE during its start-up); command it Off, then On",
                )
            )

    def _heard(self, entry: ModuleEntry, now: float) -> None:
        entry.last_seen = now
        if not entry.online:
            entry.online = True
            self.events.append(ModuleEvent("returned", entry.module_id, entry.unique_id))

    def _announced(self, node: int, data: bytes, now: float) -> Frames:
        decoded = self.db.decode(self.db.base_of(ANNOUNCEMENT) << 18 | node, data)
        assert decoded is not None  # a known base and 8 bytes
        values = decoded.values
        unique_id = int(values["UniqueId"])
        mfg, part = int(values["MfgId"]), int(values["PartId"])
        if (mfg, part) != (MANUFACTURER_ID, PART_ID):
            self.rejected["unsupported"] += 1
            if unique_id not in self._unsupported:
                self._unsupported.add(unique_id)
                log.warning(
                    "module bus: unique id %d announces manufacturer 0x%02X part 0x%02X, not a "
                    "Modbatt module (0x%02X, 0x%02X): not registered",
                    unique_id,
                    mfg,
                    part,
                    MANUFACTURER_ID,
                    PART_ID,
                )
                self.events.append(
                    ModuleEvent(
                        "unsupported", 0, unique_id, f"manufacturer 0x{mfg:02X} part 0x{part:02X}"
                    )
                )
            return []
        known = self.by_unique_id(unique_id)
        if known is not None:
            # It lost its registration (a reboot, or its 11.1 s timeout), or a registration
            # crossed its announcement: the same id again, and whatever session is gone.
            self._heard(known, now)
            self.events.append(ModuleEvent("rebooted", known.module_id, unique_id))
            self.sealed.discard(known.module_id)
            self._fresh(known, values, now)
            return self._registration(known.module_id, values)
        module_id = self._free_id()
        if module_id is None:
            self.events.append(
                ModuleEvent("refused", 0, unique_id, f"the pack already has {MAX_MODULES} modules")
            )
            return []
        entry = ModuleEntry(
            unique_id=unique_id,
            module_id=module_id,
            mfg_id=mfg,
            part_id=part,
            fw_version=int(values["FwVersion"]),
            online=True,
            registered_at=now,
            last_seen=now,
        )
        self._fresh(entry, values, now)
        self.table[module_id] = entry
        self.events.append(ModuleEvent("registered", module_id, unique_id))
        return self._registration(module_id, values)

    def _fresh(self, entry: ModuleEntry, values: dict[str, Any], now: float) -> None:
        """A (re)registration: what the module reported before no longer holds."""
        entry.fw_version = int(values["FwVersion"])
        entry.registered_at = now
        entry.state = None
        entry.hardware = None
        entry.next_poll = now + STATUS_POLL_S  # it sends its status burst by itself first
        entry.next_cell = 0

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

    # --- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> Frames:
        """Start-up round, heartbeat, announce requests, polls and silence detection."""
        out: Frames = []
        if self._started_at is None:
            self._started_at = now
            out.append(
                self.db.encode(ALL_DEREGISTER, BROADCAST, {"ControllerId": self.controller_id})
            )
            self._next_announce_request = now
        if now >= self._next_announce_request:
            out.append(self._announce_request())
            self._next_announce_request = now + ANNOUNCE_REQUEST_INTERVAL_S
        reached_plain = any(m not in self.sealed for m in self.table)
        if now >= self._next_heartbeat and reached_plain:
            # only modules reached plain need the plain one (paired ones get theirs sealed
            # with each status poll); with none, no module can latch On from it either
            out.append(self._heartbeat(now))
            # On schedule, not from `now`: a coarse tick must not stretch the period.
            late = now - self._next_heartbeat > HEARTBEAT_INTERVAL_S
            self._next_heartbeat = (now if late else self._next_heartbeat) + HEARTBEAT_INTERVAL_S
        out += self._plain_polls(now)
        for entry in self.table.values():
            if entry.module_id in self.sealed and now >= entry.next_poll:
                out += self._sealed_poll(entry, now)
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

    def _plain_polls(self, now: float) -> Frames:
        """Broadcast requests, answered by every module reached plain."""
        plain = [e for e in self.table.values() if e.module_id not in self.sealed]
        if not plain:
            return []
        out: Frames = []
        if now >= self._next_plain_status:
            self._next_plain_status = now + STATUS_POLL_S
            out.append(self.db.encode(STATUS_REQUEST, BROADCAST, {"ModuleId": 0}))
            if any(e.hardware is None for e in plain):
                out.append(self.db.encode(HW_REQUEST, BROADCAST, {"ModuleId": 0}))
        cells = max(e.cell_count for e in plain)
        if cells and now >= self._next_plain_detail:
            self._next_plain_detail = now + DETAIL_POLL_S
            self._plain_cell = (self._plain_cell + 1) % cells
            values = {"ModuleId": 0, "CellId": self._plain_cell}
            out.append(self.db.encode(DETAIL_REQUEST, BROADCAST, values))
        return out

    def _sealed_poll(self, entry: ModuleEntry, now: float) -> Frames:
        """One module's poll slot (every DETAIL_POLL_S), sealed.

        A cell, and every other time its status, its authenticated MAX_STATE and (until it
        came) its HARDWARE.
        """
        entry.next_poll = now + DETAIL_POLL_S
        entry.polls += 1
        module_id = entry.module_id
        out: Frames = []
        if entry.polls % round(STATUS_POLL_S / DETAIL_POLL_S) == 1:
            out.append(self.db.encode(STATUS_REQUEST, module_id, {"ModuleId": module_id}))
            cap = self.heartbeat_state(now)
            out.append(self.db.encode(MAX_STATE, module_id, {"MaxState": cap}))
            if entry.hardware is None:
                out.append(self.db.encode(HW_REQUEST, module_id, {"ModuleId": module_id}))
            if entry.time_due:
                entry.time_due = False
                out.append(self.db.encode(SET_TIME, module_id, self._time_now()))
        if entry.cell_count:
            cell = entry.next_cell % entry.cell_count
            entry.next_cell = cell + 1
            out.append(
                self.db.encode(DETAIL_REQUEST, module_id, {"ModuleId": module_id, "CellId": cell})
            )
        return [(can_id ^ SECURED_COMMAND_XOR, data) for can_id, data in out]


def _implausible(values: dict[str, Any]) -> str:
    """What in a decoded message no module can report, or ''."""
    for name, (low, high) in PLAUSIBLE.items():
        value = values.get(name)
        if value is not None and not low <= value <= high:
            return f"{name} {value:g} outside {low:g}..{high:g}"
    return ""


def bus_load(sealed_modules: int, plain_modules: int, bitrate: int = 500_000) -> float:
    """The share of a classic CAN bus the pack's polling takes, worst case.

    Stuff bits included: requests and answers, MAX_STATE and announce requests. One cell per
    poll slot whatever a module's cell count: more cells make the sweep longer, not the load
    higher.
    """

    def frame_bits(dlc: int) -> float:
        bits = 67 + 8 * dlc  # 29-bit id, no stuffing
        return bits + (bits - 13) / 4  # at most one stuff bit per four bits after the SOF

    single = frame_bits(6)  # a sealed 1-byte command (1 + 5)
    single_3 = frame_bits(8)  # a sealed 3-byte command
    pair = 2 * frame_bits(8)  # a sealed 8-byte message: data frame and authenticator
    per_sealed = (
        (2 * single + 4 * pair) / STATUS_POLL_S  # STATUS_REQUEST, MAX_STATE; four answers
        + (single_3 + pair) / DETAIL_POLL_S  # DETAIL_REQUEST and DETAIL
    )
    plain = frame_bits(8)
    per_plain = 4 * plain / STATUS_POLL_S + plain / DETAIL_POLL_S
    broadcasts = (
        frame_bits(1) / HEARTBEAT_INTERVAL_S
        + (frame_bits(1) + frame_bits(3)) / STATUS_POLL_S * (1 if plain_modules else 0)
        + frame_bits(1) / ANNOUNCE_REQUEST_INTERVAL_S
    )
    bits = sealed_modules * per_sealed + plain_modules * per_plain + broadcasts
    return bits / bitrate


def format_table(entries: list[ModuleEntry]) -> str:
    """The module table as text, one module per line."""
    lines = [
        f"{'id':>3}  {'unique id':>10}  {'online':6}  {'state':9}  "
        f"{'V':>7}  {'A':>7}  {'T max':>6}  note"
    ]
    for m in entries:
        s1 = m.telemetry.get(STATUS_1, {})
        s3 = m.telemetry.get(STATUS_3, {})
        lines.append(
            f"{m.module_id:>3}  {m.unique_id:>10}  {'yes' if m.online else 'NO':6}  "
            f"{m.state_name:9}  "
            f"{_num(s1.get('ModuleVoltage'), '.2f'):>7}  {_num(s1.get('Current'), '.2f'):>7}  "
            f"{_num(s3.get('MaxCellTemp'), '.1f'):>6}  {m.incompatible or ''}"
        )
    return "\n".join(lines)


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
