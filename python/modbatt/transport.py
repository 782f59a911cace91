"""The one place where python-can messages and the frame path's (id, bytes) meet.

The Rust core takes plain ints and bytes; every role converts a received ``can.Message`` with
:func:`from_message` and builds an outgoing one with :func:`to_message`, so the conversion
rules (extended ids only, FD when the payload needs it) live here alone.
"""

from __future__ import annotations

import can

from modbatt.errors import MalformedFrameError

CLASSIC_MAX_DATA = 8


def to_message(can_id: int, data: bytes, *, fd: bool = False) -> can.Message:
    """A 29-bit data frame; CAN FD when asked for or when the payload needs it."""
    is_fd = fd or len(data) > CLASSIC_MAX_DATA
    return can.Message(
        arbitration_id=can_id,
        data=data,
        is_extended_id=True,
        is_fd=is_fd,
        bitrate_switch=is_fd,
        check=True,
    )


def from_message(message: can.Message) -> tuple[int, bytes]:
    """(id, payload) of a received data frame; remote, error and 11-bit frames are refused."""
    if message.is_error_frame or message.is_remote_frame:
        raise MalformedFrameError("error and remote frames carry no payload for the frame path")
    if not message.is_extended_id:
        raise MalformedFrameError(
            f"11-bit id 0x{message.arbitration_id:03X}: modbatt buses use 29-bit ids"
        )
    return message.arbitration_id, bytes(message.data)
