"""ISO-TP between modbatt's control channel and the kernel's own stack (can-isotp), both ways.

modbatt's `MessageChannel` (python can-isotp over python-can's socketcan interface) on one side,
a kernel ISO-TP socket (`socket.CAN_ISOTP`) on the other, on vcan0 with 29-bit ids as the
control channel uses them: every size from a single frame to the largest message, with the
kernel's receiving flow control (block size, separation time) varied.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import can
import pytest

from modbatt.bus.isotp_link import CHECK_LEN, MAX_MESSAGE, MessageChannel, with_check
from modbatt.bus.transport import CanPort

pytestmark = pytest.mark.socketcan

# linux/can/isotp.h (Python names none of them)
SOL_CAN_ISOTP = socket.SOL_CAN_BASE + socket.CAN_ISOTP
CAN_ISOTP_RECV_FC = 2

OURS, KERNELS = 0x18DA_F1A0, 0x18DA_A0F1  # 29-bit: we send on OURS, the kernel on KERNELS

# ISO-TP payload sizes (the message plus its 8-byte check): a single frame, the first
# multi-frame, block edges, the largest.
SIZES = [9, 11, 12, 13, 62, 63, 64, 127, 1000, 4095]
# The kernel's flow control when it receives: (block size, STmin in ms); 0 = no limit.
FLOW_CONTROLS = [(0, 0), (8, 0), (1, 0), (4, 2)]


def kernel_socket(flow_control: tuple[int, int] = (0, 0)) -> socket.socket:
    """A kernel ISO-TP socket on vcan0: it receives on OURS and sends on KERNELS."""
    sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_ISOTP)
    block_size, st_min = flow_control
    sock.setsockopt(SOL_CAN_ISOTP, CAN_ISOTP_RECV_FC, struct.pack("=BBB", block_size, st_min, 0))
    sock.bind(("vcan0", OURS | socket.CAN_EFF_FLAG, KERNELS | socket.CAN_EFF_FLAG))
    sock.settimeout(20.0)
    return sock


@pytest.fixture
def channel() -> Iterator[MessageChannel]:
    port = CanPort(can.Bus(interface="socketcan", channel="vcan0"), "vcan0")
    link = MessageChannel(port, OURS, KERNELS, timeout_s=10.0)
    yield link
    link.close()
    port.close()


def message_of(size: int) -> bytes:
    """A message whose ISO-TP payload (with its check) is `size` bytes."""
    return bytes((i * 7 + size) & 0xFF for i in range(size - CHECK_LEN))


@pytest.mark.parametrize("flow_control", FLOW_CONTROLS)
def test_the_kernel_receives_what_modbatt_sends(
    channel: MessageChannel, flow_control: tuple[int, int]
) -> None:
    kernel = kernel_socket(flow_control)
    try:
        for size in SIZES:
            message = message_of(size)
            channel.send(message)
            assert kernel.recv(4096) == with_check(message), size
    finally:
        kernel.close()


def test_modbatt_receives_what_the_kernel_sends(channel: MessageChannel) -> None:
    kernel = kernel_socket()
    try:
        for size in SIZES:
            message = message_of(size)
            kernel.send(with_check(message))
            assert channel.recv(20.0) == message, size
    finally:
        kernel.close()


def test_the_largest_message_is_the_largest_iso_tp_payload() -> None:
    assert MAX_MESSAGE + CHECK_LEN == 4095 == SIZES[-1]
