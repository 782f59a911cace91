"""The data plane through the Python API, over `socketpair(AF_UNIX, SOCK_SEQPACKET)` carrying
`struct can_frame` records as a raw CAN socket does (no AF_CAN needed): the same scenarios run
against the gateway stepped frame by frame (the Python path's core) and against the data
plane's threads, and must give the same frames and the same counters."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from modbatt import DROP_REASONS, Sealed, compose_id, frames_of
from modbatt._core import DataPlane, Gateway
from tests.core.test_gateway import CAN1, CAN2, STATE_CHANGE, STATUS_1, Pack

CAN_EFF_FLAG = 0x8000_0000
CLASSIC = struct.Struct("=IB3x8s")
QUIET_S = 0.15  # no frame out for this long: the plane has carried everything


class Carrier(Protocol):
    gateway: Gateway

    def carry(self, bus: int, frames: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
        """Frames in on `bus`; the (bus, id, data) frames that came out."""
        ...


class Stepped:
    """The gateway stepped frame by frame, as the Python path does."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def carry(self, bus: int, frames: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
        return [out for can_id, data in frames for out in self.gateway.step(bus, can_id, data)]


class Planed:
    """The same gateway carried by a DataPlane between two socketpairs."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
        self.far = [far for _, far in pairs]
        for far in self.far:
            far.setblocking(False)
        # everything the gateway is given here counts (nothing is the control channel's)
        self.plane = DataPlane(gateway, pairs[0][0], pairs[1][0], sealed_only=(False, False))
        for near, _ in pairs:
            near.close()  # the plane has its own duplicates

    def carry(self, bus: int, frames: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
        for can_id, data in frames:
            self.far[bus].send(CLASSIC.pack(can_id | CAN_EFF_FLAG, len(data), data.ljust(8, b"\0")))
        out: list[tuple[int, int, bytes]] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < QUIET_S:
            got = False
            for dst, far in enumerate(self.far):
                try:
                    record = far.recv(72)
                except BlockingIOError:
                    continue
                raw_id, length, data = CLASSIC.unpack(record)
                out.append((dst, raw_id & 0x1FFF_FFFF, data[:length]))
                got = True
            if got:
                quiet_since = time.monotonic()
            else:
                time.sleep(0.002)
        return out

    def close(self) -> None:
        self.plane.stop()
        for far in self.far:
            far.close()


MakeCarrier = Callable[[Gateway], Carrier]


@pytest.fixture(params=["stepped", "data plane"])
def carrier_of(request: pytest.FixtureRequest) -> Iterator[MakeCarrier]:
    made: list[Planed] = []

    def make(gateway: Gateway) -> Carrier:
        if request.param == "stepped":
            return Stepped(gateway)
        planed = Planed(gateway)
        made.append(planed)
        return planed

    yield make
    for planed in made:
        planed.close()


def sealed(frames: Sealed) -> list[tuple[int, bytes]]:
    return frames_of(frames)


def test_a_command_crosses_and_telemetry_comes_back(carrier_of: MakeCarrier) -> None:
    pack = Pack(seed=11)
    carrier = carrier_of(pack.gateway)
    out = carrier.carry(CAN1, sealed(pack.app.seal(STATE_CHANGE, b"\x05\x03\xa0\x0f")))
    assert {bus for bus, _, _ in out} == {CAN2}
    assert [pack.module.open(i, d) for _, i, d in out][-1] == b"\x05\x03\xa0\x0f"
    for n in range(20):
        out = carrier.carry(CAN2, sealed(pack.module.seal(STATUS_1, bytes([n]) * 8)))
        assert [pack.app.open(i, d) for _, i, d in out][-1] == bytes([n]) * 8
    stats = pack.gateway.stats()
    assert (stats["received"], stats["forwarded"], stats["ahead"]) == (42, 21, 19)


def test_every_drop_is_counted_by_reason(carrier_of: MakeCarrier) -> None:
    pack = Pack(seed=12)
    carrier = carrier_of(pack.gateway)
    assert carrier.carry(CAN1, [(compose_id(0x400, 0), b"")]) == []  # no rule
    assert carrier.carry(CAN2, [(STATUS_1, bytes(8))]) == []  # plain on a secured link
    frames = sealed(pack.module.seal(STATUS_1, b"\x01"))
    assert carrier.carry(CAN2, frames)
    assert carrier.carry(CAN2, frames) == []  # replay
    forged = sealed(pack.module.seal(STATE_CHANGE, b"\x05\x03\x00\x00"))  # the app's route
    assert carrier.carry(CAN1, forged) == []
    stats = pack.gateway.stats()
    counted = {name: stats[name] for _, name in DROP_REASONS if stats[name]}
    assert counted == {"no_route": 1, "downgrade": 1, "replay": 1, "bad_tag": 1}


def test_sessions_come_and_go_between_frames(carrier_of: MakeCarrier) -> None:
    """The tap, link_down while the app's session is out, a session back in mid-stream."""
    pack = Pack(seed=13)
    carrier = carrier_of(pack.gateway)
    pack.gateway.set_tap(compose_id(0x500, 0), 0x7F0 << 18)
    assert pack.gateway.remove_session(0)  # the app is away
    assert carrier.carry(CAN2, sealed(pack.module.seal(STATUS_1, b"\x07" * 3))) == []
    assert pack.gateway.stats()["link_down"] == 1
    assert pack.gateway.take_tapped() == [(STATUS_1, b"\x07" * 3)]
    # the module's session goes: its frames are refused (no_session)
    assert pack.gateway.remove_session(1)
    assert carrier.carry(CAN2, sealed(pack.module.seal(STATUS_1, b"\x08" * 3))) == []
    assert pack.gateway.stats()["no_session"] == 1
    assert not any(pack.gateway.stats()[n] for _, n in DROP_REASONS if n != "no_session")


def test_the_data_plane_carries_only_sealed_frames_from_can1_and_stops_promptly() -> None:
    pack = Pack(seed=14)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    with DataPlane(pack.gateway, pairs[0][0], pairs[1][0]) as plane:
        assert plane.running
        far1 = pairs[0][1]
        # a plain frame on CAN 1 is the control channel's: not the gateway's, not counted
        far1.send(CLASSIC.pack(compose_id(0x460, 0) | CAN_EFF_FLAG, 2, b"\x01\x02".ljust(8, b"\0")))
        for can_id, data in sealed(pack.app.seal(STATE_CHANGE, b"\x05\x03")):
            far1.send(CLASSIC.pack(can_id | CAN_EFF_FLAG, len(data), data.ljust(8, b"\0")))
        pairs[1][1].settimeout(2.0)
        raw_id, length, data = CLASSIC.unpack(pairs[1][1].recv(72))
        assert pack.module.open(raw_id & 0x1FFF_FFFF, data[:length]) == b"\x05\x03"
        time.sleep(0.1)
        can1, can2 = plane.stats()
        assert (can1["received"], can1["skipped"], can2["sent"]) == (2, 1, 1)
        assert pack.gateway.stats()["received"] == 1
        started = time.monotonic()
    assert time.monotonic() - started < 0.5
    assert not plane.running
    assert repr(plane) == "DataPlane(running=false)"
    # what it carried stays readable after the stop (a run's losses are read then)
    assert [plane.stats()[n]["received"] for n in (0, 1)] == [2, 0]
    plane.stop()  # twice is harmless
    for pair in pairs:
        for end in pair:
            end.close()


def test_a_closed_socket_is_refused() -> None:
    closed = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in closed:
        end.close()
    with pytest.raises(Exception, match="closed"):
        DataPlane(Gateway(), closed[0], closed[1])


def _fifo_permitted(priority: int) -> bool:
    """Whether a thread of this process may take SCHED_FIFO at `priority` (root, CAP_SYS_NICE
    or RLIMIT_RTPRIO), probed with the OS directly in a thread of its own."""
    permitted: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            permitted.append(True)
        except PermissionError:
            permitted.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return permitted[0]


def _plane_threads() -> dict[int, str]:
    tasks = Path("/proc/self/task")
    names = {int(tid.name): (tid / "comm").read_text().strip() for tid in tasks.iterdir()}
    return {tid: name for tid, name in names.items() if name.startswith("modbatt-plane")}


def test_the_data_plane_threads_run_at_the_real_time_priority_asked_for_where_permitted() -> None:
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    permitted = _fifo_permitted(10)
    with DataPlane(Gateway(), pairs[0][0], pairs[1][0], priority=10) as plane:
        assert plane.realtime == permitted
        threads = _plane_threads()
        assert sorted(threads.values()) == ["modbatt-plane-1", "modbatt-plane-2"]
        for tid in threads:
            if permitted:
                assert os.sched_getscheduler(tid) == os.SCHED_FIFO
                assert os.sched_getparam(tid).sched_priority == 10
            else:
                assert os.sched_getscheduler(tid) == os.SCHED_OTHER
    with DataPlane(Gateway(), pairs[0][0], pairs[1][0]) as plane:  # none asked for
        assert not plane.realtime
        assert {os.sched_getscheduler(tid) for tid in _plane_threads()} == {os.SCHED_OTHER}
    for priority in (0, 100):
        with pytest.raises(ValueError, match="1 to 99"):
            DataPlane(Gateway(), pairs[0][0], pairs[1][0], priority=priority)
    for pair in pairs:
        for end in pair:
            end.close()
