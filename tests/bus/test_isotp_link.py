"""Multi-frame messages over ISO-TP: intact, or not at all; never a wrong one."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from collections.abc import Iterator

import can
import pytest

from modbatt.bus.faults import FaultPlan, FaultyBus
from modbatt.bus.isotp_link import MAX_MESSAGE, MessageChannel, TransferError
from modbatt.bus.transport import CanPort

TX, RX = 0x1980_0001, 0x1984_0001


@pytest.fixture
def channel_name() -> str:
    return f"modbatt-isotp-{uuid.uuid4().hex[:8]}"


def ports(name: str, plan: FaultPlan | None = None) -> tuple[CanPort, CanPort]:
    sender_bus: can.BusABC = can.Bus(interface="virtual", channel=name)
    if plan is not None:
        sender_bus = FaultyBus(sender_bus, plan)
    receiver_bus = can.Bus(interface="virtual", channel=name)
    return CanPort(sender_bus, "sender"), CanPort(receiver_bus, "receiver")


@pytest.fixture
def pair(channel_name: str) -> Iterator[tuple[MessageChannel, MessageChannel]]:
    a, b = ports(channel_name)
    left, right = MessageChannel(a, TX, RX), MessageChannel(b, RX, TX)
    yield left, right
    for channel in (left, right):
        channel.close()
    a.close()
    b.close()


def transfer(
    sender: MessageChannel, receiver: MessageChannel, message: bytes, timeout_s: float = 2.0
) -> bytes | None:
    got: list[bytes | None] = []
    thread = threading.Thread(target=lambda: got.append(receiver.recv(timeout_s)))
    thread.start()
    with contextlib.suppress(TransferError):  # the receiver's side tells the outcome
        sender.send(message)
    thread.join()
    return got[0]


@pytest.mark.parametrize("size", [1, 7, 8, 62, 300, MAX_MESSAGE])
def test_messages_of_every_size_arrive_intact(
    pair: tuple[MessageChannel, MessageChannel], size: int
) -> None:
    left, right = pair
    message = hashlib.shake_256(str(size).encode()).digest(size)
    assert transfer(left, right, message) == message
    assert transfer(right, left, message[::-1]) == message[::-1]


def test_an_oversized_message_is_refused(pair: tuple[MessageChannel, MessageChannel]) -> None:
    with pytest.raises(TransferError, match="at most"):
        pair[0].send(bytes(MAX_MESSAGE + 1))


@pytest.mark.parametrize("seed", range(8))
def test_faults_never_deliver_a_wrong_message(channel_name: str, seed: int) -> None:
    plan = FaultPlan(drop=0.05, duplicate=0.05, reorder=0.05, seed=seed)
    a, b = ports(channel_name, plan)
    left = MessageChannel(a, TX, RX, timeout_s=0.1)
    right = MessageChannel(b, RX, TX, timeout_s=0.1)
    try:
        for attempt in range(4):
            message = hashlib.sha256(f"{seed}/{attempt}".encode()).digest() * 3  # 96 bytes
            got = transfer(left, right, message, timeout_s=0.3)
            assert got in (message, None), "a wrong message was delivered"
            while (extra := right.recv(0.05)) is not None:  # a duplicated whole message
                assert extra == message
        assert isinstance(a.bus, FaultyBus)
        assert a.bus.dropped + a.bus.duplicated + a.bus.reordered > 0  # faults did happen
    finally:
        left.close()
        right.close()
        a.close()
        b.close()


def test_a_retry_gets_through_a_lossy_bus(channel_name: str) -> None:
    a, b = ports(channel_name, FaultPlan(drop=0.05, seed=3))
    left = MessageChannel(a, TX, RX, timeout_s=0.1)
    right = MessageChannel(b, RX, TX, timeout_s=0.1)
    message = bytes(range(64))  # 10 frames: each attempt gets through with p = 0.95^10
    try:
        for _attempt in range(20):
            if transfer(left, right, message, timeout_s=0.3) == message:
                break
        else:
            pytest.fail("20 attempts did not get one message through 5 % loss")
    finally:
        left.close()
        right.close()
        a.close()
        b.close()
