"""modbatt: the Modbatt secure dual-CAN communications stack.

The frame path (key schedule, seal, open, freshness, routing, gateway step) is the Rust
extension ``modbatt._core``; its classes are re-exported here as they are. Python does the
orchestration around it.
"""

from __future__ import annotations

from modbatt._core import (
    DROP_REASONS,
    ENCRYPTION_FLAG,
    FD_MAX_PAYLOAD,
    KEY_HALF_LEN,
    MESSAGE_MAX,
    NONCE_LEN,
    SECURE_BITS,
    Gateway,
    LinkKey,
    Session,
    clear_encrypted,
    compose_id,
    is_encrypted,
    logical_id,
    set_encrypted,
    split_id,
)
from modbatt.errors import ModbattError
from modbatt.protocol.frames import Sealed, frames_of

__version__ = "0.1.0"

__all__ = [
    "DROP_REASONS",
    "ENCRYPTION_FLAG",
    "FD_MAX_PAYLOAD",
    "KEY_HALF_LEN",
    "MESSAGE_MAX",
    "NONCE_LEN",
    "SECURE_BITS",
    "Gateway",
    "LinkKey",
    "ModbattError",
    "Sealed",
    "Session",
    "__version__",
    "clear_encrypted",
    "compose_id",
    "frames_of",
    "is_encrypted",
    "logical_id",
    "set_encrypted",
    "split_id",
]
