"""The pack's two frames to the app on CAN 1: its status (once a second) and its alerts.

Both travel sealed under the app link once it is up, plain before (docs/PROTOCOL.md §8a). The
pack builds them with :func:`status_payload` and :func:`alert_payload`; the app, ``modbatt
decode`` and the monitor read them with :func:`parse_pack_status` and :func:`parse_alert`.
"""

from __future__ import annotations

from modbatt.errors import ModbattError
from modbatt.protocol.catalogue import MAX_MODULES

STATUS_BASE, ALERT_BASE = 0x470, 0x471  # 11-bit bases, node 0 (the pack)
STATUS_ID = STATUS_BASE << 18  # pack status on CAN 1: state, level, modules, flags
ALERT_ID = ALERT_BASE << 18  # alerts on CAN 1: code, module id, value

ALERT_MODULE_SILENT, ALERT_MODULE_RETURNED, ALERT_FLASH_PROBLEM = 1, 2, 3
ALERT_REPLAYS, ALERT_SESSION_TORN_DOWN = 4, 5  # security events on a link
ALERT_FOREIGN_COMMAND, ALERT_MODULE_INCOMPATIBLE, ALERT_MODULE_LATCHED = 6, 7, 8

FLAG_FLASH_PROBLEM = 1
FLAG_NO_KEYS = 2


class StatusFrameError(ModbattError, ValueError):
    """A status or alert frame that is not one: the message names what is wrong."""


def status_payload(
    state: int, security_level: int, registered: int, paired: int, online: int, flags: int
) -> bytes:
    """The pack status frame's six bytes."""
    return bytes([state, security_level, registered, paired, online, flags])


def alert_payload(code: int, module_id: int = 0, value: int = 0) -> bytes:
    """An alert frame's four bytes: code, module id, a 16-bit value (little-endian)."""
    return bytes([code, module_id]) + value.to_bytes(2, "little")


def parse_pack_status(plain: bytes) -> dict[str, int]:
    """The pack status frame (PROTOCOL.md §8a); StatusFrameError names what is wrong."""
    if len(plain) != 6:
        raise StatusFrameError(f"pack status: 6 bytes, got {len(plain)}")
    state, level, registered, paired, online, flags = plain
    if not 1 <= state <= 4:
        raise StatusFrameError(f"pack status: state {state} is not 1-4")
    if level > 3:
        raise StatusFrameError(f"pack status: security level {level} is not 0-3")
    if max(registered, paired, online) > MAX_MODULES:
        raise StatusFrameError(f"pack status: more than {MAX_MODULES} modules")
    if flags & ~0b11:
        raise StatusFrameError(f"pack status: unknown flags {flags:#04x}")
    return {
        "state": state,
        "security_level": level,
        "registered": registered,
        "paired": paired,
        "online": online,
        "flags": flags,
    }


# The pack's alert codes on CAN 1 (PROTOCOL.md §8a), as an operator reads them.
ALERT_NAMES = {
    1: "module silent",
    2: "module back",
    3: "flash problem",
    4: "replays",
    5: "torn down",
    6: "foreign command on CAN 2",
    7: "module incompatible",
    8: "module latched",
}
ALERT_CODES = frozenset(ALERT_NAMES)


def parse_alert(plain: bytes) -> dict[str, int]:
    """An alert frame (PROTOCOL.md §8a); StatusFrameError names what is wrong."""
    if len(plain) != 4:
        raise StatusFrameError(f"alert: 4 bytes, got {len(plain)}")
    if plain[0] not in ALERT_CODES:
        raise StatusFrameError(f"alert: unknown code {plain[0]}")
    if plain[1] > MAX_MODULES:
        raise StatusFrameError(f"alert: module id {plain[1]} is not 0-{MAX_MODULES}")
    return {"code": plain[0], "module_id": plain[1], "value": int.from_bytes(plain[2:4], "little")}
