"""What the Modbatt module firmware does on the module bus, as constants: one place for them.

Read from the firmware's source (ModuleCPU, build 8278: ``main.c``, ``can.c``, ``main.h``) and
the original STM32 pack controller (Pack-Controller-EEPROM ``Core/Src/mcu.c``); REFERENCE
§2a and docs/MODULE_BUS.md give the rules in prose. Both the module simulator
(:mod:`modbatt.module.simulator`) and the pack's module side (:mod:`modbatt.pack.modules`) use these
values, so where they differ from the published DBC the firmware wins in both at once.
"""

from __future__ import annotations

# Identity a real module announces, and the only one its REGISTRATION check accepts.
MANUFACTURER_ID = 0x02
PART_ID = 0x03
FIRMWARE_BUILD = 8278
HARDWARE_COMPATIBILITY = 0x0000
UNPROGRAMMED_UNIQUE_ID = 0xBA77BABE  # what a module with an unprogrammed EEPROM announces

# The module's main loop runs on a 100 ms tick and sends at most one frame per tick; its
# 300 ms frames alternate READ and WRITE, starting with WRITE. Announcements go out at the
# start of a WRITE frame (every 600 ms, the first 0.6 s after boot), state transitions are
# handled during WRITE frames only.
TICK_S = 0.1
TICKS_PER_FRAME = 3
# Any command frame the module recognises resets this; when it runs out the module
# deregisters, goes Off and announces again (and again every 11.1 s while nothing comes).
PACK_CONTROLLER_TIMEOUT_S = 11.1

# The command bases the firmware dispatches on (the full 11-bit base is compared; the node
# byte, bit 17 and the module id inside payloads are not), with the DLC each needs (None:
# any) and whether it is served only while registered.
COMMANDS: dict[int, tuple[int | None, bool]] = {
    0x510: (8, False),  # REGISTRATION
    0x511: (None, True),  # HW_REQUEST
    0x512: (1, True),  # STATUS_REQUEST
    0x514: (2, True),  # STATE_CHANGE
    0x515: (3, True),  # DETAIL_REQUEST
    0x516: (None, False),  # SET_TIME (8 bytes read whatever the DLC)
    0x517: (None, False),  # MAX_STATE
    0x518: (None, True),  # DEREGISTER
    0x51D: (None, False),  # ANNOUNCE_REQUEST (acted on only while unregistered)
    0x51E: (None, False),  # ALL_DEREGISTER
    0x51F: (None, False),  # ALL_ISOLATE
    0x520: (None, False),  # FRAME_TRANSFER_REQUEST (not simulated)
}

# STATUS_1.State values, and the firmware's internal start-up state (reported only by a
# module that has not handled its first tick yet).
OFF, STANDBY, PRECHARGE, ON, INIT = 0, 1, 2, 3, 5

# HARDWARE defaults of a module whose EEPROM holds no limits, and the limits the original
# pack controller clips to.
DEFAULT_MAX_CHARGE_A = 10.0
DEFAULT_MAX_DISCHARGE_A = -42.0
MAX_CELLS = 94


def announce_delay_s(unique_id: int) -> float:
    """How long after ANNOUNCE_REQUEST an unregistered module sets its announcement flag."""
    return max(1, (unique_id & 0xFF) // 10) * TICK_S


def accepts(base: int, dlc: int, registered: bool) -> bool:
    """Whether the firmware acts on a command with this base and DLC in this registration."""
    rule = COMMANDS.get(base)
    if rule is None:
        return False
    needed_dlc, needs_registration = rule
    return (needed_dlc is None or dlc == needed_dlc) and (registered or not needs_registration)


def end_of_charge_voltage(cells: int) -> float:
    """The end-of-charge voltage a module reports: 4.2 V per expected cell, less 5 %."""
    return cells * 4.2 * 0.95
