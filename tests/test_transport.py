"""The one conversion between python-can messages and the frame path's (id, bytes)."""

from __future__ import annotations

import can
import pytest

from modbatt import errors
from modbatt.transport import from_message, to_message


def test_round_trip_classic_and_fd() -> None:
    for data, fd in [(b"\x01\x02", False), (bytes(20), False), (b"", True)]:
        message = to_message(0x140A_8005, data, fd=fd)
        assert message.is_extended_id
        assert message.is_fd == (fd or len(data) > 8)
        assert from_message(message) == (0x140A_8005, data)


@pytest.mark.parametrize(
    "message",
    [
        can.Message(arbitration_id=0x123, is_extended_id=False, data=b"\x01"),
        can.Message(arbitration_id=0x123, is_remote_frame=True),
        can.Message(is_error_frame=True),
    ],
)
def test_frames_the_path_cannot_carry_are_refused(message: can.Message) -> None:
    with pytest.raises(errors.MalformedFrameError):
        from_message(message)


def test_over_long_payloads_are_refused_by_python_can() -> None:
    with pytest.raises(ValueError):
        to_message(0x1000, bytes(65))
