"""The module bus message catalogue: the DBC file shipped with modbatt, through cantools.

Every module bus message, as the module firmware sends and reads it (REFERENCE §2a), is
described in ``data/modbatt_module_bus.dbc`` (its frame ids carry node 0); this module puts
the node into the 29-bit id and takes it out again,
and leaves every bit position and scaling to cantools. ``modbatt dbc`` prints the file's path
so it can be opened in other CAN tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import cantools
from cantools.database.can import Database, Message

from modbatt import compose_id, split_id
from modbatt.protocol.firmware import INIT, OFF, ON, PRECHARGE, STANDBY

# Base ids (REFERENCE §2): module -> pack
ANNOUNCEMENT = "ANNOUNCEMENT"
HARDWARE = "HARDWARE"
STATUS_1 = "STATUS_1"
STATUS_2 = "STATUS_2"
STATUS_3 = "STATUS_3"
DETAIL = "DETAIL"
TIME_REQUEST = "TIME_REQUEST"
CELL_COMM_STATUS1 = "CELL_COMM_STATUS1"
# pack -> module
REGISTRATION = "REGISTRATION"
HW_REQUEST = "HW_REQUEST"
STATUS_REQUEST = "STATUS_REQUEST"
STATE_CHANGE = "STATE_CHANGE"
DETAIL_REQUEST = "DETAIL_REQUEST"
SET_TIME = "SET_TIME"
MAX_STATE = "MAX_STATE"
DEREGISTER = "DEREGISTER"
ANNOUNCE_REQUEST = "ANNOUNCE_REQUEST"
ALL_DEREGISTER = "ALL_DEREGISTER"
ALL_ISOLATE = "ALL_ISOLATE"

BROADCAST = 0x00
UNREGISTERED = 0xFF
MAX_MODULES = 31

# modbatt's secure layer: a pack -> paired module command travels sealed on its base XOR
# 0x050 (0x510-0x51F -> 0x540-0x54F), bases the module firmware's dispatch does not know, so
# no legacy module on the bus reads a sealed command as a plain one (docs/PROTOCOL.md §8c).
SECURED_COMMAND_XOR = 0x050 << 18
SECURED_COMMAND_BASES = range(0x540, 0x550)


def secured_command_id(command_id: int) -> int:
    """The logical id of a command (base 0x510-0x51F) sealed for a paired module, and back."""
    return command_id ^ SECURED_COMMAND_XOR


# Module states (STATUS_1.State, STATE_CHANGE.RequestedState, MAX_STATE.MaxState)
STATE_NAMES = {OFF: "Off", STANDBY: "Standby", PRECHARGE: "Precharge", ON: "On", INIT: "Init"}


def dbc_path() -> Path:
    """Where the DBC file is installed."""
    return Path(str(resources.files("modbatt") / "data" / "modbatt_module_bus.dbc"))


@dataclass(frozen=True)
class Decoded:
    """A received module bus frame: message name, node number and physical signal values."""

    name: str
    node: int
    values: dict[str, Any]


class Catalogue:
    """Encode and decode module bus messages by name, with the node in the id."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._by_base: dict[int, Message] = {split_id(m.frame_id)[0]: m for m in database.messages}

    def message(self, name: str) -> Message:
        """The cantools message called `name`."""
        return self.database.get_message_by_name(name)

    def encode(
        self, name: str, node: int, values: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        """(29-bit id, payload) of message `name` for `node`; values are physical, range-checked."""
        message = self.message(name)
        data = message.encode(values or {}, scaling=True, strict=True) if message.signals else b""
        # a message without signals (TIME_REQUEST) still has its length: zero bytes
        return compose_id(split_id(message.frame_id)[0], node), bytes(data).ljust(
            message.length, b"\0"
        )

    def decode(self, can_id: int, data: bytes) -> Decoded | None:
        """The message in a received frame, or None when its base id is not a module message."""
        base, node = split_id(can_id)
        message = self._by_base.get(base)
        if message is None or len(data) < message.length:
            return None
        values = message.decode(data[: message.length], decode_choices=False, scaling=True)
        return Decoded(message.name, node, dict(values))  # type: ignore[arg-type]

    def name_of(self, base: int) -> str | None:
        """The name of the module message with 11-bit base id `base`, if there is one."""
        message = self._by_base.get(base)
        return None if message is None else str(message.name)

    def base_of(self, name: str) -> int:
        """The 11-bit base id of message `name`."""
        return split_id(self.message(name).frame_id)[0]


@cache
def catalogue() -> Catalogue:
    """The shared catalogue, loaded from the DBC file once."""
    database = cantools.database.load_file(str(dbc_path()), strict=True)
    assert isinstance(database, Database)
    return Catalogue(database)
