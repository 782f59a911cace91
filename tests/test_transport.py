"""The one conversion between python-can messages and the frame path's (id, bytes)."""

from __future__ import annotations

import can
import pytest

from modbatt import errors
from modbatt.transport import BusSpec, from_message, parse_bus_spec, to_message


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


@pytest.mark.parametrize(
    ("text", "interface", "channel", "bitrate"),
    [
        ("virtual:modules", "virtual", "modules", None),
        ("udp_multicast:239.74.163.10", "udp_multicast", "239.74.163.10", None),
        ("socketcan:can1@500000", "socketcan", "can1", 500000),
        ("pcan:PCAN_USBBUS1@500000", "pcan", "PCAN_USBBUS1", 500000),
        ("slcan:/dev/ttyACM0@500000", "slcan", "/dev/ttyACM0", 500000),
        (
            "udp_multicast:ff15:7079:7468:6f6e:6465:6d6f:6d63:6173",
            "udp_multicast",
            "ff15:7079:7468:6f6e:6465:6d6f:6d63:6173",
            None,
        ),
    ],
)
def test_bus_names(text: str, interface: str, channel: str, bitrate: int | None) -> None:
    spec = parse_bus_spec(text, fd=True)
    assert (spec.interface, spec.channel, spec.bitrate, spec.fd) == (
        interface,
        channel,
        bitrate,
        True,
    )


def test_python_can_configuration_is_the_alternative() -> None:
    assert parse_bus_spec("config") == BusSpec(None, None)
    assert parse_bus_spec("config:bench").context == "bench"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("virtual", "INTERFACE:CHANNEL"),
        (":x", "INTERFACE:CHANNEL"),
        ("nosuch:x", "unknown"),
        ("virtual:x@fast", "bitrate"),
        ("virtual:x@0", "bitrate"),
    ],
)
def test_bad_bus_names_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(errors.InvalidArgumentError, match=problem):
        parse_bus_spec(text)


def test_interface_options() -> None:
    spec = parse_bus_spec("udp_multicast:239.74.163.10,port=43114,hop_limit=1")
    assert spec.channel == "239.74.163.10"
    assert spec.options == (("port", 43114), ("hop_limit", 1))
    with pytest.raises(errors.InvalidArgumentError, match="key=value"):
        parse_bus_spec("virtual:x,nonsense")
