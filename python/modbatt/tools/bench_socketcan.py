"""``modbatt bench gateway --interface socketcan``: three bridges between two kernel buses.

Run where SocketCAN is (the guest of ``make vm-run``, a Linux laptop with vcan, a pack board):
the kernel's own gateway (``cangw`` rules vcan0 -> vcan1) as the floor any bridge in user
space is measured against, python-can's ``can.bridge`` on SocketCAN, and the pack's secure
bridge (a running :class:`~modbatt.pack.controller.PackController`, vcan0 its CAN 2 and vcan1
its CAN 1) twice: its Python path (``secure``) and its Rust data plane (``rust``, issue 18).
One bridge at a time, in one run, with the same source and sink:

* the **source** for saturated throughput is can-utils' ``canplayer`` (C, no gaps) replaying
  prebuilt frames (plain for ``cangw`` and ``can.bridge``, sealed classic pairs for the pack),
  so that the source is faster than every bridge; for latency it is a Python raw socket
  paced at a quarter of the slowest bridge's saturated rate (``PACED_LOAD``), each frame
  carrying its index (inside the plaintext for the pack) and timed on the way in by the
  kernel, as the source's own socket receives it back, in three alternating rounds
  (``PACED_ROUNDS``) whose percentiles' median is the figure;
* **where each runs**: with two CPUs or more, every bridge (and the paced source and the
  sinks, in the bench's own process) on one CPU and ``canplayer`` on the others
  (:func:`placement`), as on a pack board the frames come from the CAN controller and not from
  a process on the bridge's core; on one CPU they share it;
* the **sink** is a SocketCAN socket on the output bus with kernel receive timestamps
  (python-can's ``socketcan``, the same clock as ``time.time()``) and a receive buffer large
  enough for the whole run; it is read only after the run, so reading costs the bridges
  nothing. A frame counts when it arrives intact (the pack's: when its message opens).

Throughput is the frames delivered over the time from the first delivery to the last. The
bridges' input sockets get a receive buffer large enough for a whole burst, so a saturated run
measures the bridge, not its buffer (at the default size a Python bridge that falls behind
loses frames, see OPERATIONS.md); `lost_frames` counts every frame of every run not delivered.
Under emulation absolute figures mean little: compare them within one run.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import can
import numpy as np

from modbatt import Session
from modbatt.bus.transport import CanPort, kernel_socket
from modbatt.errors import FrameRejectedError, ModbattError
from modbatt.pack.controller import PackController
from modbatt.pack.keys import APP_LINK
from modbatt.protocol.catalogue import SECURED_COMMAND_XOR
from modbatt.protocol.frames import frames_of
from modbatt.tools.bench_gateway import MODULE_ID, PLAIN_ID, STATUS_1_ID, TIMED
from modbatt.tools.soak import session_pair

IN_BUS, OUT_BUS = "vcan0", "vcan1"
# Latency is measured at a quarter of the slowest bridge's saturated rate (measured first, in
# the same run), at most a full 1 Mbit/s bus: a load every bridge carries with room to spare,
# so that the figures are the bridges' own delay, not a queue building up. Under emulation
# Python bridges carry a few thousand frames/s; on a pack board, more.
PACED_LOAD = 0.25
PACED_FPS_MAX = 7000  # 8-byte extended frames on a full 1 Mbit/s bus (REFERENCE §4)
PACED_SECONDS = 2.0
PACED_ROUNDS = 3  # alternating; each percentile is the median of the rounds'
# CPU: the pack's process while both buses carry sealed traffic at once. Both paths at the
# same load, the paced one split between the two ways (at most a full 1 Mbit/s bus each way);
# and each path that carries it with room to spare at the full load itself, 2 x 1 Mbit/s. For
# a path that does not (the Python path under emulation), the figure for 2 x 1 Mbit/s is its
# idle CPU (measured) plus what the traffic cost above that, scaled linearly from the lower
# load: a low estimate for a path that would saturate long before.
FULL_BUS_FPS = 6250  # 8-byte extended frames on a 1 Mbit/s bus at the usual stuffing (§4)
CPU_SECONDS = 3.0
FULL_LOAD_ROOM = 1.5  # a path is measured at the full load when it carries 1.5 x that saturated
BIG_BUFFER = 64 * 1024 * 1024  # bytes: a whole run's frames (a queued frame costs ~1 KiB)
QUIET_S = 0.5  # the sink's queue has not grown for this long: the run is over
RUN_TIMEOUT_S = 120.0
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
CAN_FRAME = struct.Struct("=IB3x8s")  # struct can_frame, classic
CAN_EFF_FLAG = 0x8000_0000
BASE_SHIFT = 18  # a 29-bit id's message base is its top 11 bits


@dataclass
class Run:
    """What the sink got from one run."""

    sent: int
    delivered: int
    seconds: float  # first delivery to last
    latencies_us: list[float]

    @property
    def fps(self) -> float:
        """Frames delivered per second."""
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


def socketcan_available() -> bool:
    """Whether this kernel has AF_CAN and both buses of the benchmark."""
    return hasattr(socket, "AF_CAN") and all(
        Path(f"/sys/class/net/{bus}").exists() for bus in (IN_BUS, OUT_BUS)
    )


def _big_buffer(sock: socket.socket) -> None:
    """A receive buffer for a whole run (SO_RCVBUFFORCE needs CAP_NET_ADMIN; else the cap)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BIG_BUFFER)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BIG_BUFFER)


def _open(channel: str) -> can.BusABC:
    bus = can.Bus(interface="socketcan", channel=channel)
    sock = kernel_socket(bus)
    if sock is None:  # not SocketCAN after all
        bus.shutdown()
        raise ModbattError(f"{channel} is not a SocketCAN bus")
    _big_buffer(sock)
    return bus


def _queued_bytes(bus: can.BusABC) -> int:
    sock = kernel_socket(bus)
    assert sock is not None
    return int(struct.unpack("9I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0])


def _wait_quiet(sink: can.BusABC) -> None:
    """Until the sink's queue stops growing (the bridge has delivered all it will)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_bytes = _queued_bytes(sink)
        if now_bytes != last:
            last, since = now_bytes, time.monotonic()
        elif time.monotonic() - since >= QUIET_S:
            return
        time.sleep(0.02)


def _drain(sink: can.BusABC) -> list[can.Message]:
    messages = []
    while (message := sink.recv(0)) is not None:
        messages.append(message)
    return messages


def _can_utils(*argv: str) -> None:
    """Run one of can-utils' programs (by its full path), or say what is missing."""
    program = shutil.which(argv[0])
    if program is None:
        raise ModbattError(f"{argv[0]} not found: install can-utils (apt-get install can-utils)")
    subprocess.run([program, *argv[1:]], check=True)  # noqa: S603 (our own command line)


# --- the three bridges ---------------------------------------------------------------------


@contextmanager
def cangw_bridge() -> Iterator[None]:
    """The kernel's gateway: one rule, every frame of vcan0 onto vcan1.

    Echoed (-e), so that sockets on vcan1, the sink's, receive it: vcan has no wire to loop
    it back.
    """
    _can_utils("cangw", "-F")
    _can_utils("cangw", "-A", "-s", IN_BUS, "-d", OUT_BUS, "-e")
    try:
        yield
    finally:
        _can_utils("cangw", "-F")


@contextmanager
def plain_bridge() -> Iterator[None]:
    """python-can's can.bridge, one direction, on SocketCAN."""
    bridge_in, bridge_out = _open(IN_BUS), can.Bus(interface="socketcan", channel=OUT_BUS)
    notifier = can.Notifier(bridge_in, [can.RedirectReader(bridge_out)])
    try:
        yield
    finally:
        notifier.stop()
        bridge_in.shutdown()
        bridge_out.shutdown()


@dataclass
class SecureEnds:
    """The far ends of the pack's two links: the module seals, the app opens."""

    module_end: Session
    app_end: Session


@contextmanager
def secure_bridge(data_plane: bool = False) -> Iterator[SecureEnds]:
    """A running pack: CAN 2 on vcan0 (module telemetry in), CAN 1 on vcan1.

    Its bridge in Python (python-can's sockets, `PackController._bridge`), or with
    `data_plane` in Rust (`modbatt.pack.data_plane`).
    """
    can2 = CanPort(_open(IN_BUS), "can2")
    can1 = CanPort(can.Bus(interface="socketcan", channel=OUT_BUS), "can1")
    with TemporaryDirectory(prefix="modbatt-bench-") as state:
        pack = PackController(
            "PACK-BENCH-SOCKETCAN", Path(state), can1, can2, data_plane=data_plane
        )
        if data_plane:
            if pack.data_plane is None:
                raise ModbattError("the pack did not start its data plane on SocketCAN")
            for sock in pack.data_plane.sockets:
                _big_buffer(sock)
        app_end, pack_app = session_pair("COMP-bench-app", "COMP-bench-pack")
        pack.gateway.install_session(APP_LINK, pack_app)
        module_end, pack_module = session_pair(f"COMP-bench-module-{MODULE_ID}", "COMP-bench-pack")
        pack.link_module(MODULE_ID, pack_module)
        pack.start()
        try:
            yield SecureEnds(module_end, app_end)
        finally:
            pack.stop()
            can1.close()
            can2.close()


# --- sources -------------------------------------------------------------------------------


@contextmanager
def _on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """The calling thread, and the threads and processes it starts meanwhile, on `cpus`."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def placement() -> tuple[set[int] | None, set[int] | None]:
    """(the bridges' CPUs, canplayer's): one CPU for the bridges, the others for the source.

    Every bridge runs on one CPU, as on a pack board's application core; the source,
    can-utils' canplayer, runs on the others, as a board's CAN controller is not a process
    on that core. On one CPU both share it (None, None): a bridge in user space then pays a
    wake-up for each batch the source lets it take, and `cangw`, which works inside the
    source's own system call, does not.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


@dataclass
class Source:
    """can-utils' canplayer on vcan0/vcan1, its log files in `workdir`, run on `cpus`."""

    workdir: Path
    cpus: set[int] | None = None

    def replay(self, frames: list[tuple[int, bytes]]) -> None:
        """Send `frames` on vcan0 back to back."""
        self._play([(0.0, IN_BUS, can_id, data) for can_id, data in frames], "-t", "-g", "0")

    def timed(self, frames: list[tuple[float, str, int, bytes]]) -> None:
        """Send (time, bus, id, data) frames at their times."""
        self._play(frames)

    def _play(self, frames: list[tuple[float, str, int, bytes]], *options: str) -> None:
        path = self.workdir / "source.log"  # candump's log format, which canplayer reads
        with path.open("w") as out:
            for at, bus, can_id, data in frames:
                out.write(f"({at:.6f}) {bus} {can_id:08X}#{data.hex().upper()}\n")
        with _on_cpus(self.cpus):
            _can_utils("canplayer", "-I", str(path), *options)


class _PacedSource:
    """The paced source on vcan0, which gets its own frames back with kernel timestamps.

    A raw socket receiving its own frames as every socket on the bus receives them.
    A frame's send time is that timestamp, not Python's clock before the send: the moment the
    frame reached the bridge's socket, whatever the source's own Python did in between (a
    garbage collection between reading the clock and sending would count as the bridge's).
    """

    def __init__(self) -> None:
        self.bus = can.Bus(interface="socketcan", channel=IN_BUS, receive_own_messages=True)
        sock = kernel_socket(self.bus)
        assert sock is not None
        _big_buffer(sock)
        self.sock = sock

    def send(self, n: int, fps: float, make: Callable[[int], list[tuple[int, bytes]]]) -> None:
        """Send the frames `make(i)` gives for i in range(n), one call every 1/fps s."""
        start = time.perf_counter()
        for i in range(n):
            if (left := start + i / fps - time.perf_counter()) > 0:
                time.sleep(left)  # sleep, not spin: the bridge needs the CPU (and the GIL)
            for can_id, data in make(i):
                self.sock.send(_frame_bytes(can_id, data))

    def sent_at(self, ids: Callable[[int], bool]) -> list[float]:
        """The kernel's timestamps of the frames sent, in order (those whose id `ids` takes)."""
        return [m.timestamp for m in _drain(self.bus) if ids(m.arbitration_id)]

    def close(self) -> None:
        """Close the socket."""
        self.bus.shutdown()


def _frame_bytes(can_id: int, data: bytes) -> bytes:
    return CAN_FRAME.pack(can_id | CAN_EFF_FLAG, len(data), data.ljust(8, b"\x00"))


# --- measurements --------------------------------------------------------------------------


def _plain_run(bridge: Any, n: int, paced_fps: float | None, source: Source) -> Run:
    """`n` plain frames, each carrying its index, through `bridge`."""
    sink = _open(OUT_BUS)
    sent_at: list[float] = []
    try:
        with bridge():
            if paced_fps is None:
                source.replay([(PLAIN_ID, TIMED.pack(float(i))) for i in range(n)])
            else:
                paced = _PacedSource()
                try:
                    paced.send(n, paced_fps, lambda i: [(PLAIN_ID, TIMED.pack(float(i)))])
                    _wait_quiet(sink)
                    sent_at = paced.sent_at(lambda can_id: can_id == PLAIN_ID)
                finally:
                    paced.close()
            _wait_quiet(sink)
        received = [m for m in _drain(sink) if m.arbitration_id == PLAIN_ID and len(m.data) == 8]
    finally:
        sink.shutdown()
    latencies = []
    if paced_fps is not None:
        for message in received:
            index = int(TIMED.unpack(bytes(message.data))[0])
            latencies.append((message.timestamp - sent_at[index]) * 1e6)
    span = received[-1].timestamp - received[0].timestamp if len(received) > 1 else 0.0
    return Run(n, len(received), span, latencies)


def _secure_run(n: int, paced_fps: float | None, source: Source, data_plane: bool = False) -> Run:
    """`n` frames (n/2 classic pairs, each carrying its index) through the pack.

    Latency per frame of each pair, from the same frame of the pair on the way in.
    """
    sink = _open(OUT_BUS)
    pairs = n // 2
    sent_at: list[float] = []
    status_base = STATUS_1_ID >> BASE_SHIFT
    try:
        with secure_bridge(data_plane) as ends:

            def sealed(i: int) -> list[tuple[int, bytes]]:
                return frames_of(ends.module_end.seal(STATUS_1_ID, TIMED.pack(float(i))))

            if paced_fps is None:
                source.replay([f for i in range(pairs) for f in sealed(i)])
            else:
                paced = _PacedSource()
                try:
                    paced.send(pairs, paced_fps / 2, sealed)
                    _wait_quiet(sink)
                    sent_at = paced.sent_at(lambda can_id: can_id >> BASE_SHIFT == status_base)
                finally:
                    paced.close()
            _wait_quiet(sink)
        received = _drain(sink)
    finally:
        sink.shutdown()
    delivered, latencies, first, last = 0, [], None, None
    data_at = 0.0
    for message in received:
        try:
            plain = ends.app_end.open(message.arbitration_id, bytes(message.data))
        except FrameRejectedError:
            continue  # the pack's own status frames (other ids) do not open here
        if plain is None:
            data_at = message.timestamp
            continue
        if len(plain) != TIMED.size:
            continue
        delivered += 2
        first = data_at if first is None else first
        last = message.timestamp
        if paced_fps is not None:
            index = int(TIMED.unpack(plain)[0])
            sent_data, sent_auth = sent_at[2 * index], sent_at[2 * index + 1]
            latencies += [(data_at - sent_data) * 1e6, (message.timestamp - sent_auth) * 1e6]
    span = (last - first) if first is not None and last is not None else 0.0
    return Run(2 * pairs, delivered, span, latencies)


COMMAND_ID = 0x515 << 18 | MODULE_ID  # an app command to the module (routed CAN 1 -> CAN 2)


@dataclass
class CpuRun:
    """The pack process's CPU while both buses carried `fps_each_way`, and what got through."""

    fps_each_way: float  # as achieved
    seconds: float
    cpu_percent: float
    idle_cpu_percent: float  # the same pack, the same time, no traffic
    sent: int
    delivered: int

    def at(self, fps_each_way: int) -> float:
        """The CPU at another load: the idle share as measured, the traffic's scaled."""
        per_frame = (self.cpu_percent - self.idle_cpu_percent) / self.fps_each_way
        return self.idle_cpu_percent + max(0.0, per_frame) * fps_each_way


def _opened(session: Session, messages: list[can.Message], base: int) -> int:
    """How many frames of `messages` on id base `base` arrived as pairs `session` opens."""
    frames = 0
    for message in messages:
        if message.arbitration_id >> BASE_SHIFT & 0x7FF != base:
            continue
        try:
            if session.open(message.arbitration_id, bytes(message.data)) is not None:
                frames += 2
        except FrameRejectedError:
            continue
    return frames


def _cpu_run(fps_each_way: int, seconds: float, source: Source, data_plane: bool) -> CpuRun:
    """Module telemetry up and app commands down at once, through the pack; its CPU meanwhile.

    The source is canplayer (another process) and the sinks are read after the run, so the
    process's CPU time over the run is the pack's alone: its Python threads and, with
    `data_plane`, the Rust ones.
    """
    pairs = int(fps_each_way * seconds / 2)
    up_sink, down_sink = _open(OUT_BUS), _open(IN_BUS)
    try:
        with secure_bridge(data_plane) as ends:
            schedule = []
            for i in range(pairs):
                at = 2 * i / fps_each_way
                up = ends.module_end.seal(STATUS_1_ID, TIMED.pack(float(i)))
                down = ends.app_end.seal(COMMAND_ID, TIMED.pack(float(i)))
                schedule += [(at, IN_BUS, can_id, data) for can_id, data in frames_of(up)]
                schedule += [(at, OUT_BUS, can_id, data) for can_id, data in frames_of(down)]
            time.sleep(0.2)  # the pack's threads reach their loops
            idle_start, wall_start = time.process_time(), time.monotonic()
            time.sleep(seconds)
            idle = (time.process_time() - idle_start) / (time.monotonic() - wall_start)
            cpu_start, wall_start = time.process_time(), time.monotonic()
            source.timed(schedule)
            wall = time.monotonic() - wall_start
            cpu = time.process_time() - cpu_start
            _wait_quiet(up_sink)
            _wait_quiet(down_sink)
        delivered = _opened(ends.app_end, _drain(up_sink), STATUS_1_ID >> BASE_SHIFT)
        delivered += _opened(
            ends.module_end, _drain(down_sink), (COMMAND_ID ^ SECURED_COMMAND_XOR) >> BASE_SHIFT
        )
    finally:
        up_sink.shutdown()
        down_sink.shutdown()
    loaded = 100 * cpu / wall if wall > 0 else 0.0
    # the rate canplayer achieved (under emulation it may fall short of the one asked for)
    achieved = 2 * pairs / wall if wall > 0 else float(fps_each_way)
    return CpuRun(min(achieved, fps_each_way), wall, loaded, 100 * idle, 4 * pairs, delivered)


def _median(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.fps)[len(runs) // 2]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def gateway_socketcan(quick: bool = False) -> dict[str, Any]:
    """Measure the kernel's gateway, can.bridge and the pack's bridge on vcan0 -> vcan1."""
    if not socketcan_available():
        raise ModbattError(
            f"no SocketCAN buses {IN_BUS}/{OUT_BUS} here: run it in the guest "
            "(make vm-run CMD='.venv/bin/modbatt bench gateway --interface socketcan')"
        )
    saturated_n, repeats = (2_000, 1) if quick else (20_000, 3)
    rounds = 1 if quick else PACED_ROUNDS
    bridges: dict[str, Callable[[int, float | None, Source], Run]] = {
        "cangw": lambda n, fps, source: _plain_run(cangw_bridge, n, fps, source),
        "plain": lambda n, fps, source: _plain_run(plain_bridge, n, fps, source),
        "secure": _secure_run,
        "rust": lambda n, fps, source: _secure_run(n, fps, source, data_plane=True),
    }
    runs: dict[str, list[Run]] = {name: [] for name in bridges}
    paced: dict[str, list[Run]] = {name: [] for name in bridges}
    bridge_cpus, source_cpus = placement()
    with TemporaryDirectory(prefix="modbatt-bench-") as tmp, _on_cpus(bridge_cpus):
        source = Source(Path(tmp), source_cpus)
        for _ in range(repeats):  # alternate: a host hiccup then moves no one figure
            for name, measure in bridges.items():
                runs[name].append(measure(saturated_n, None, source))
        slowest = min(_median(r).fps for r in runs.values())
        paced_fps = float(max(100, min(PACED_FPS_MAX, round(PACED_LOAD * slowest, -2))))
        paced_n = 2 * int(paced_fps * (0.25 if quick else PACED_SECONDS) / 2)
        for _ in range(rounds):  # alternating rounds too: a pause lands in one round's tail
            for name, measure in bridges.items():
                paced[name].append(measure(paced_n, paced_fps, source))
        # both ways at once, at the paced load in all: the Python path carries it with room
        cpu_fps = 2 * int(min(FULL_BUS_FPS, paced_fps / 2) / 2)
        cpu_seconds = 0.5 if quick else CPU_SECONDS
        cpu = {
            "secure": _cpu_run(cpu_fps, cpu_seconds, source, data_plane=False),
            "rust": _cpu_run(cpu_fps, cpu_seconds, source, data_plane=True),
        }
        # at the full load itself, for a path that carries it with room to spare
        full_load: dict[str, CpuRun] = {}
        for name, data_plane in (("secure", False), ("rust", True)):
            if _median(runs[name]).fps >= FULL_LOAD_ROOM * 2 * FULL_BUS_FPS:
                full_load[name] = _cpu_run(FULL_BUS_FPS, cpu_seconds, source, data_plane)
    figures: dict[str, Any] = {"interface": "socketcan"}
    keys = (
        ("cangw", "cangw"),
        ("plain", "plain_bridge"),
        ("secure", "secure_bridge"),
        ("rust", "rust_bridge"),
    )
    for name, key in keys:
        figures[f"{key}_fps"] = _median(runs[name]).fps
        figures[f"{key}_fps_runs"] = [round(r.fps) for r in runs[name]]
    for name in bridges:
        for q in (50, 99):
            per_round = [_percentile(run.latencies_us, q) for run in paced[name]]
            figures[f"{name}_latency_p{q}_us"] = float(np.median(per_round))
            figures[f"{name}_latency_p{q}_us_runs"] = [round(value) for value in per_round]
    for name, key in (("secure", "cpu_percent_2x1mbit"), ("rust", "rust_cpu_percent_2x1mbit")):
        full = full_load.get(name)
        measured = full or cpu[name]
        figures[key] = measured.at(FULL_BUS_FPS)
        how = f"{measured.fps_each_way:,.0f} frames/s each way"
        figures[f"{key}_how"] = (
            f"measured at {how}"
            if measured.fps_each_way >= 0.95 * FULL_BUS_FPS
            else f"scaled from {how}"
        )
        figures[f"{key}_idle"] = cpu[name].idle_cpu_percent
        figures[f"{key}_at_{cpu_fps}_each_way"] = cpu[name].cpu_percent  # the same load for both
    lost = {
        name: sum(r.sent - r.delivered for r in [*runs[name], *paced[name]]) for name in bridges
    }
    for name, run in [*cpu.items(), *full_load.items()]:
        lost[name] += run.sent - run.delivered
    figures["lost_frames"] = sum(lost.values())
    figures["lost_by_bridge"] = lost
    figures["ratios"] = {
        "plain_bridge_fps / cangw_fps": figures["plain_bridge_fps"] / figures["cangw_fps"],
        "secure_bridge_fps / cangw_fps": figures["secure_bridge_fps"] / figures["cangw_fps"],
        "secure_bridge_fps / plain_bridge_fps": figures["secure_bridge_fps"]
        / figures["plain_bridge_fps"],
        "secure_latency_p99_us / plain_latency_p99_us": figures["secure_latency_p99_us"]
        / figures["plain_latency_p99_us"],
        "rust_bridge_fps / plain_bridge_fps": figures["rust_bridge_fps"]
        / figures["plain_bridge_fps"],
        "rust_bridge_fps / cangw_fps": figures["rust_bridge_fps"] / figures["cangw_fps"],
        "rust_latency_p99_us / plain_latency_p99_us": figures["rust_latency_p99_us"]
        / figures["plain_latency_p99_us"],
        "rust_cpu_percent_2x1mbit / cpu_percent_2x1mbit": figures["rust_cpu_percent_2x1mbit"]
        / figures["cpu_percent_2x1mbit"],
        "the same at the same measured load": figures[
            f"rust_cpu_percent_2x1mbit_at_{cpu_fps}_each_way"
        ]
        / figures[f"cpu_percent_2x1mbit_at_{cpu_fps}_each_way"],
    }
    figures["targets"] = targets(figures)
    figures["conditions"] = {
        "saturated_frames": saturated_n,
        "saturated_repeats": repeats,
        "paced_frames": paced_n,
        "paced_rounds": rounds,
        "paced_fps": paced_fps,
        "paced_load": PACED_LOAD,
        "cpu_fps_each_way": cpu_fps,
        "cpu_seconds": cpu_seconds,
        "cpu_scaled_by": FULL_BUS_FPS / cpu_fps,
        "quick": quick,
        "emulated": os.environ.get("MODBATT_SOCKETCAN_GUEST") == "1",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_can": can.__version__,
        "cpus": os.cpu_count(),
        "bridges_on_cpus": sorted(bridge_cpus) if bridge_cpus else "all",
        "canplayer_on_cpus": sorted(source_cpus) if source_cpus else "all",
        "notes": "one bridge at a time between vcan0 and vcan1; saturated: canplayer replays "
        "prebuilt frames back to back, fps from the first delivery to the last, median of "
        "alternating runs; latency: a paced raw-socket source, each frame's kernel timestamp "
        "on the way in (its own echo) to the sink's kernel receive timestamp on the way out, "
        "in paced_rounds alternating rounds, each percentile the median of the rounds'. "
        "Every bridge (and the paced source and the sinks, in this process) runs on "
        "bridges_on_cpus, canplayer on canplayer_on_cpus. "
        "Secure frames are classic pairs (data + authenticator), counted as frames. CPU: the "
        "pack process's CPU time while canplayer sends sealed pairs both ways at once, "
        "at cpu_fps_each_way for both paths, and at 6,250 frames/s each way (2 x 1 Mbit/s) "
        "for a path that carries 1.5 x that (scaled from the rate canplayer achieved); "
        "otherwise its idle CPU plus the traffic's share "
        "at cpu_fps_each_way scaled by cpu_scaled_by (the *_how keys say which). "
        "Under emulation (QEMU TCG) compare figures within one run only.",
    }
    return figures


ROWS = [
    ("cangw_fps", "kernel cangw, saturated", "frames/s"),
    ("plain_bridge_fps", "can.bridge, saturated", "frames/s"),
    ("secure_bridge_fps", "pack gateway, saturated", "frames/s"),
    ("cangw_latency_p50_us", "cangw latency p50", "µs"),
    ("cangw_latency_p99_us", "cangw latency p99", "µs"),
    ("plain_latency_p50_us", "can.bridge latency p50", "µs"),
    ("plain_latency_p99_us", "can.bridge latency p99", "µs"),
    ("secure_latency_p50_us", "pack latency p50", "µs"),
    ("secure_latency_p99_us", "pack latency p99", "µs"),
    ("rust_bridge_fps", "pack, Rust data plane, saturated", "frames/s"),
    ("rust_latency_p50_us", "Rust data plane latency p50", "µs"),
    ("rust_latency_p99_us", "Rust data plane latency p99", "µs"),
    ("cpu_percent_2x1mbit", "pack CPU, Python path, 2 x 6,250 fps", "% of a core"),
    ("rust_cpu_percent_2x1mbit", "pack CPU, Rust data plane, 2 x 6,250 fps", "% of a core"),
    ("lost_frames", "frames sent but not delivered", "frames"),
]


def targets(figures: dict[str, Any]) -> dict[str, bool]:
    """Issue 18's targets for the data plane, each judged within this run."""
    return {
        "rust_bridge_fps >= 2 * plain_bridge_fps": figures["rust_bridge_fps"]
        >= 2 * figures["plain_bridge_fps"],
        "rust_bridge_fps >= 0.5 * cangw_fps": figures["rust_bridge_fps"]
        >= 0.5 * figures["cangw_fps"],
        "rust_latency_p99_us <= 0.5 * plain_latency_p99_us": figures["rust_latency_p99_us"]
        <= 0.5 * figures["plain_latency_p99_us"],
        "rust_cpu_percent_2x1mbit <= 0.2 * cpu_percent_2x1mbit": figures["rust_cpu_percent_2x1mbit"]
        <= 0.2 * figures["cpu_percent_2x1mbit"],
        "lost_frames == 0": figures["lost_frames"] == 0,
    }


def print_table(figures: dict[str, Any], out: Any = print) -> None:
    """The figures as a table, then the ratios that mean something under emulation."""
    paced = figures["conditions"]["paced_fps"]
    out(f"SocketCAN, {IN_BUS} -> {OUT_BUS}; latency at {paced:,.0f} frames/s")
    out(f"{'figure':<24} {'what':<34} {'value':>12}  unit")
    for key, what, unit in ROWS:
        out(f"{key:<24} {what:<34} {figures[key]:>12,.0f}  {unit}")
    for ratio, value in figures["ratios"].items():
        out(f"  {ratio:<46} {value:6.2f}")
    out(
        f"  (CPU at 2 x 6,250 frames/s: Python path {figures['cpu_percent_2x1mbit_how']}, Rust "
        f"data plane {figures['rust_cpu_percent_2x1mbit_how']}; idle: "
        f"{figures['cpu_percent_2x1mbit_idle']:.0f} % and "
        f"{figures['rust_cpu_percent_2x1mbit_idle']:.0f} %)"
    )
    for target, met in figures["targets"].items():
        out(f"  target {target:<54} {'met' if met else 'MISSED'}")
