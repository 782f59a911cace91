"""The one conversion between python-can messages and the frame path's (id, bytes)."""

from __future__ import annotations

import errno
import random
import time
import uuid
from collections.abc import Callable

import can
import pytest

from modbatt import ENCRYPTION_FLAG, errors
from modbatt.bus.transport import (
    BusSpec,
    CanPort,
    from_message,
    open_bus,
    parse_bus_spec,
    to_message,
)


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


def _port_pair() -> tuple[can.BusABC, CanPort]:
    name = f"modbatt-port-{uuid.uuid4().hex[:8]}"
    return can.Bus(interface="virtual", channel=name), CanPort(
        can.Bus(interface="virtual", channel=name), "port"
    )


def _wait_for(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_a_reader_with_an_id_filter_gets_only_its_frames() -> None:
    peer, port = _port_pair()
    try:
        plain_only = port.reader(ids=(ENCRYPTION_FLAG, 0))
        everything = port.reader()
        for can_id in (0x100, 0x100 | ENCRYPTION_FLAG, 0x200):
            peer.send(to_message(can_id, b"\x01"))
        _wait_for(lambda: everything.buffer.qsize() == 3)
        got = []
        while (message := plain_only.get_message(0)) is not None:
            got.append(message.arbitration_id)
        assert got == [0x100, 0x200]
    finally:
        port.close()
        peer.shutdown()


def test_the_message_handler_owns_a_frame_only_when_no_one_else_kept_it() -> None:
    peer, port = _port_pair()
    seen: list[tuple[int, bool]] = []
    try:
        port.reader(ids=(ENCRYPTION_FLAG, 0))  # keeps plain frames
        port.subscribe_messages(lambda msg, owned: seen.append((msg.arbitration_id, owned)))
        with pytest.raises(errors.InvalidArgumentError):
            port.subscribe_messages(lambda msg, owned: None)  # one per port
        stack: list[int] = []
        port.id_notifier(0x300).add_listener(lambda msg: stack.append(msg.arbitration_id))
        peer.send(to_message(0x100, b"\x01"))
        peer.send(to_message(0x100 | ENCRYPTION_FLAG, b"\x02"))
        peer.send(can.Message(arbitration_id=0x100, data=b"\x03", is_extended_id=False))
        peer.send(to_message(0x300, b"\x04"))  # an ISO-TP stack's: the node's own
        _wait_for(lambda: len(seen) == 2 and stack == [0x300])
        time.sleep(0.05)  # neither the 11-bit frame nor the stack's comes
        assert seen == [(0x100, False), (0x100 | ENCRYPTION_FLAG, True)]
    finally:
        port.close()
        peer.shutdown()


def test_send_built_turns_a_received_message_into_the_sent_one() -> None:
    peer, port = _port_pair()
    try:
        received = can.Message(
            arbitration_id=0x123, data=b"\xff" * 8, is_extended_id=True, is_rx=True, channel="x"
        )
        port.send_built(0x456 | ENCRYPTION_FLAG, b"\x01\x02\x03\x04\x05", reuse=received)
        sent = peer.recv(1.0)
        assert sent is not None
        assert (sent.arbitration_id, bytes(sent.data), sent.dlc) == (
            0x456 | ENCRYPTION_FLAG,
            b"\x01\x02\x03\x04\x05",
            5,
        )
        assert sent.is_extended_id and not sent.is_fd and not sent.is_remote_frame
    finally:
        port.close()
        peer.shutdown()


def test_udp_multicast_does_not_hand_a_node_its_own_frames() -> None:
    """As a CAN controller does not: a node that heard itself would step its own frames into
    the gateway (as drops) and record them twice in a traffic log."""
    pytest.importorskip("msgpack")
    group = f"239.74.{random.randint(0, 255)}.{random.randint(1, 254)}"
    spec = parse_bus_spec(f"udp_multicast:{group},port={random.randint(44000, 44900)}")
    node, other = open_bus(spec), open_bus(spec)
    try:
        for data in (b"\x01", b"\x01", b"\x02"):  # the same frame twice: two echoes
            node.send(to_message(0x1234567, data))
        heard = [other.recv(2.0) for _ in range(3)]
        assert [bytes(m.data) for m in heard if m is not None] == [b"\x01", b"\x01", b"\x02"]
        assert node.recv(0.3) is None
        other.send(to_message(0x1234567, b"\x01"))  # the same frame from another node is heard
        got = node.recv(2.0)
        assert got is not None and bytes(got.data) == b"\x01"
    finally:
        node.shutdown()
        other.shutdown()


class _QueueFullAfter(can.BusABC):
    """A virtual bus whose transmit queue is full after `room` frames (fault injected on
    purpose: SocketCAN's ENOBUFS, seen for real in tests/socketcan)."""

    def __init__(self, channel: str, room: int, error: can.CanError) -> None:
        self.inner = can.Bus(interface="virtual", channel=channel)
        self.room, self.error = room, error
        super().__init__(channel=channel)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self.room == 0:
            raise self.error
        self.room -= 1
        self.inner.send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        return self.inner.recv(timeout), False

    def shutdown(self) -> None:
        super().shutdown()
        self.inner.shutdown()


@pytest.mark.parametrize(
    "error",
    [
        can.CanOperationError("Failed to transmit: No buffer space available", errno.ENOBUFS),
        can.CanOperationError("Transmit buffer full"),
    ],
    ids=["ENOBUFS", "python-can timeout"],
)
def test_a_full_transmit_queue_loses_the_frame_counts_it_and_goes_on(
    error: can.CanError, caplog: pytest.LogCaptureFixture
) -> None:
    channel = f"queue-full-{uuid.uuid4().hex[:8]}"
    listener = can.Bus(interface="virtual", channel=channel)
    with CanPort(_QueueFullAfter(channel, 3, error), "can2") as port:
        for n in range(10):
            port.send(0x1400_0000 | n, bytes([n]))
        port.send_built(0x1400_0010, b"\x10")
        assert port.losses() == {"tx_queue_full": 8}  # virtual: no kernel to tell overflows
        received = [listener.recv(1.0) for _ in range(3)]
        assert [m.arbitration_id & 0xFF for m in received if m] == [0, 1, 2]
    listener.shutdown()
    warnings = [r for r in caplog.records if "transmit queue full" in r.getMessage()]
    assert len(warnings) == 1  # a flood of losses is logged once, not per frame


def test_other_send_failures_still_raise() -> None:
    channel = f"bus-down-{uuid.uuid4().hex[:8]}"
    down = can.CanOperationError("Failed to transmit: Network is down", errno.ENETDOWN)
    with CanPort(_QueueFullAfter(channel, 0, down), "can1") as port:
        with pytest.raises(can.CanOperationError, match="Network is down"):
            port.send(0x1400_0000, b"")
        assert port.losses() == {"tx_queue_full": 0}
