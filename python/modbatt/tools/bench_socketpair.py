"""``modbatt bench gateway --interface socketpair``: the Rust data plane, natively.

Against a Python bridge making python-can's socket calls, on any Linux (no AF_CAN needed).

Each bus is a ``socketpair(AF_UNIX, SOCK_SEQPACKET)`` carrying ``struct can_frame`` records, as
a raw CAN socket does. A **source** process writes prebuilt records into the input bus as fast
as the socket takes them (the socket's flow control holds it back, nothing is lost), a **sink**
process reads the output bus and notes when the first and the last record came, and the bridge
in between runs in this process:

* ``plain``: a plain bridge making the calls python-can's SocketCAN interface makes for each
  frame: ``select`` and ``recvmsg`` with its receive timestamp, python-can's own frame
  unpacking into a ``can.Message`` (``capture_message``), then its packing
  (``build_can_frame``), a ``select`` for writability and ``send``; no crypto at all;
* ``rust``: the pack's Rust data plane (:class:`modbatt._core.DataPlane`) stepping a gateway
  that opens each sealed classic pair with a module's session and reseals it with the app's,
  as the pack does on CAN 2 -> CAN 1;
* ``rust_plain_route``: the data plane on a plain route (no crypto), for the cost of the
  crypto.

The rate is the records delivered from the sink's first receipt to its last; the rust bridge's
records are opened at the far end afterwards, and only intact ones count.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import can
import numpy as np
from can.interfaces.socketcan import constants
from can.interfaces.socketcan.socketcan import build_can_frame, capture_message

from modbatt._core import DataPlane, Gateway, Session
from modbatt.errors import FrameRejectedError
from modbatt.pack.keys import APP_LINK
from modbatt.protocol.frames import frames_of
from modbatt.tools.bench_gateway import MODULE_ID, PLAIN_ID, STATUS_1_ID, TIMED
from modbatt.tools.soak import session_pair

CAN1, CAN2 = 0, 1
CLASSIC = struct.Struct("=IB3x8s")
CAN_EFF_FLAG = 0x8000_0000
RUN_TIMEOUT_S = 120.0
PACED_FPS = 6250.0  # frames/s: a full 1 Mbit/s bus of 8-byte extended frames (REFERENCE §4)
PACED_SECONDS = 2.0
FLAG_BITS = 0x3_8000  # bits 15..17: the flag and the pair's frame index, not part of a route
ROUTED_PLAIN_ID = PLAIN_ID & ~FLAG_BITS  # a plain id a gateway rule can match


def _records(frames: list[tuple[int, bytes]]) -> list[bytes]:
    return [
        CLASSIC.pack(can_id | CAN_EFF_FLAG, len(data), data.ljust(8, b"\0"))
        for can_id, data in frames
    ]


Pace = tuple[int, float, Callable[[float], list[bytes]]]  # (sends, per second, make(now))


def _source(sock: socket.socket, records: list[bytes] | Pace, go: Any) -> None:
    go.wait()
    send = sock.send
    if isinstance(records, list):
        for record in records:
            send(record)
        return
    sends, per_second, make = records
    start = time.perf_counter()
    for i in range(sends):
        if (left := start + i / per_second - time.perf_counter()) > 0:
            time.sleep(left)
        for record in make(time.perf_counter()):  # CLOCK_MONOTONIC: the sink's clock too
            send(record)


def _sink(sock: socket.socket, expected: int, report: Connection, keep: bool) -> None:
    received: list[tuple[bytes, float]] = []
    first = last = 0.0
    count = 0
    sock.settimeout(5.0)
    recv = sock.recv
    try:
        while count < expected:
            record = recv(72)
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
            if keep:
                received.append((record, last))
    except TimeoutError:
        pass  # the rest never came
    report.send((count, first, last, received))


@dataclass(frozen=True)
class Delivery:
    """What one run delivered."""

    count: int
    seconds: float  # from the first delivery to the last
    kept: list[tuple[bytes, float]]  # what the sink kept, with when it came
    # This process's CPU time (the bridge's threads; the source and the sink are processes of
    # their own) over the time from the start to the last delivery, in % of one core.
    cpu_percent: float

    @property
    def fps(self) -> float:
        """Frames delivered per second."""
        return self.count / self.seconds if self.seconds else 0.0


def _run(
    bridge: Callable[[socket.socket, socket.socket, int], Callable[[], None]] | None,
    records: list[bytes] | Pace,
    keep: bool,
    expected: int | None = None,
) -> Delivery:
    """Send `records` (or paced ones) through `bridge(in, out, n)`, which returns its stop.

    With no bridge the source writes straight to the sink: the ceiling of the harness itself.
    """
    if expected is None:
        assert isinstance(records, list)
        expected = len(records)
    src_end, bridge_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bridge_out, sink_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if bridge is None:
        sink_end, bridge_in = bridge_in, sink_end  # the source's pair is the sink's

        def bridge(_in: socket.socket, _out: socket.socket, _n: int) -> Callable[[], None]:
            return lambda: None

    context = multiprocessing.get_context("fork")
    go = context.Event()
    mine, theirs = context.Pipe(duplex=False)
    source = context.Process(target=_source, args=(src_end, records, go), daemon=True)
    sink = context.Process(target=_sink, args=(sink_end, expected, theirs, keep), daemon=True)
    sink.start()
    source.start()
    stop = bridge(bridge_in, bridge_out, expected)
    try:
        cpu_start, started = time.process_time(), time.perf_counter()
        go.set()
        if not mine.poll(RUN_TIMEOUT_S):
            raise TimeoutError("the sink did not report")
        cpu = time.process_time() - cpu_start  # this process's threads: the bridge's
        count, first, last, kept = mine.recv()
    finally:
        stop()
        for process in (source, sink):
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        for sock in (src_end, bridge_in, bridge_out, sink_end):
            sock.close()
    busy = last - started  # the sink's clock is this one (CLOCK_MONOTONIC)
    return Delivery(
        int(count), float(last - first), list(kept), 100.0 * cpu / busy if busy > 0 else 0.0
    )


def plain_bridge(inp: socket.socket, out: socket.socket, n: int) -> Callable[[], None]:
    """python-can's per-frame socket calls, in a thread of this process."""
    inp.setsockopt(socket.SOL_SOCKET, constants.SO_TIMESTAMPNS, 1)
    stopped = threading.Event()

    def run() -> None:
        forwarded = 0
        while forwarded < n and not stopped.is_set():
            ready, _, _ = select.select([inp], [], [], 0.1)  # SocketcanBus._recv_internal
            if not ready:
                continue
            message: can.Message | None = capture_message(inp)
            if message is None:
                continue
            data = build_can_frame(message)  # SocketcanBus.send
            select.select([], [out], [], 0)
            out.send(data)
            forwarded += 1

    thread = threading.Thread(target=run, name="plain-bridge", daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        thread.join(timeout=5)

    return stop


def _plane(
    gateway: Gateway, dropped: list[int]
) -> Callable[[socket.socket, socket.socket, int], Callable[[], None]]:
    """The data plane as a bridge; on stop, what it dropped itself is appended to `dropped`.

    The sink's socket holds only a few records (AF_UNIX's max_dgram_qlen): when the sink falls
    behind for over a millisecond the plane drops, as on a full transmit queue, and counts it.
    """

    def bridge(inp: socket.socket, out: socket.socket, _n: int) -> Callable[[], None]:
        plane = DataPlane(gateway, out, inp, sealed_only=(False, False))  # CAN 2 in, CAN 1 out

        def stop() -> None:
            plane.stop()
            can1 = plane.stats()[CAN1]
            dropped.append(can1["tx_queue_full"] + can1["tx_failed"])

        return stop

    return bridge


@dataclass
class _Pack:
    """A gateway doing the pack's job on CAN 2 -> CAN 1, with the far ends of its links."""

    gateway: Gateway
    module_end: Session  # seals, as a module does
    app_end: Session  # opens, as the app does


def _pack() -> _Pack:
    """Open with the module's session, reseal with the app's."""
    gateway = Gateway()
    app_end, pack_app = session_pair("COMP-bench-app", "COMP-bench-pack")
    module_end, pack_module = session_pair("COMP-bench-module", "COMP-bench-pack")
    gateway.install_session(APP_LINK, pack_app)
    gateway.install_session(MODULE_ID, pack_module)
    gateway.add_rule(
        CAN2, STATUS_1_ID, 0x1FFF_FFFF & ~FLAG_BITS, CAN1, inbound=MODULE_ID, outbound=APP_LINK
    )
    return _Pack(gateway, module_end, app_end)


def _opened(app_end: Session, kept: list[tuple[bytes, float]]) -> list[tuple[float, float]]:
    """(send time in the message, arrival of each of its two frames), per pair that opened."""
    pairs = []
    data_at = 0.0
    for record, arrived in kept:
        raw_id, length, data = CLASSIC.unpack(record)
        try:
            plain = app_end.open(raw_id & 0x1FFF_FFFF, data[:length])
        except FrameRejectedError:
            continue
        if plain is None:
            data_at = arrived
        elif len(plain) == TIMED.size:
            sent = TIMED.unpack(plain)[0]
            pairs += [(sent, data_at), (sent, arrived)]
    return pairs


def _latencies_us(pairs: list[tuple[float, float]]) -> list[float]:
    return [(arrived - sent) * 1e6 for sent, arrived in pairs]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def gateway_socketpair(quick: bool = False) -> dict[str, Any]:
    """Measure the plain Python bridge and the Rust data plane over socketpairs."""
    frames = 20_000 if quick else 200_000
    repeats = 1 if quick else 3
    plain_records = _records([(ROUTED_PLAIN_ID, TIMED.pack(float(n))) for n in range(frames)])
    runs: dict[str, list[float]] = {"direct": [], "plain": [], "rust": [], "rust_plain_route": []}
    lost = dict.fromkeys(runs, 0)
    dropped: dict[str, list[int]] = {"rust": [], "rust_plain_route": []}  # counted by the plane
    for _ in range(repeats):
        run = _run(None, plain_records, keep=False)
        runs["direct"].append(run.fps)
        lost["direct"] += frames - run.count
        run = _run(plain_bridge, plain_records, keep=False)
        runs["plain"].append(run.fps)
        lost["plain"] += frames - run.count
        pack = _pack()
        sealed = _records(
            [
                f
                for n in range(frames // 2)
                for f in frames_of(pack.module_end.seal(STATUS_1_ID, TIMED.pack(float(n))))
            ]
        )
        run = _run(_plane(pack.gateway, dropped["rust"]), sealed, keep=True)
        intact = min(run.count, len(_opened(pack.app_end, run.kept)))
        runs["rust"].append(intact / run.seconds if run.seconds else 0.0)
        lost["rust"] += len(sealed) - intact
        route = Gateway()
        route.add_rule(CAN2, ROUTED_PLAIN_ID, 0x1FFF_FFFF & ~FLAG_BITS, CAN1)
        run = _run(_plane(route, dropped["rust_plain_route"]), plain_records, keep=False)
        runs["rust_plain_route"].append(run.fps)
        lost["rust_plain_route"] += frames - run.count
    # Latency at a paced load, the same frames/s for both: each frame carries its send time
    # (inside the plaintext for the data plane), the sink notes its arrival. The bridge's CPU
    # is measured over the same runs.
    paced_n = int(PACED_FPS * (0.5 if quick else PACED_SECONDS))
    latencies: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}

    def plain_now(now: float) -> list[bytes]:
        return _records([(ROUTED_PLAIN_ID, TIMED.pack(now))])

    run = _run(plain_bridge, (paced_n, PACED_FPS, plain_now), keep=True, expected=paced_n)
    lost["plain"] += paced_n - run.count
    latencies["plain"] = [(at - TIMED.unpack(CLASSIC.unpack(r)[2])[0]) * 1e6 for r, at in run.kept]
    cpu["plain"] = run.cpu_percent
    pack = _pack()

    def sealed_now(now: float) -> list[bytes]:
        return _records(frames_of(pack.module_end.seal(STATUS_1_ID, TIMED.pack(now))))

    run = _run(
        _plane(pack.gateway, dropped["rust"]),
        (paced_n // 2, PACED_FPS / 2, sealed_now),
        keep=True,
        expected=2 * (paced_n // 2),
    )
    opened = _opened(pack.app_end, run.kept)
    lost["rust"] += 2 * (paced_n // 2) - len(opened)
    latencies["rust"] = _latencies_us(opened)
    cpu["rust"] = run.cpu_percent
    median = {name: sorted(values)[len(values) // 2] for name, values in runs.items()}
    return {
        "interface": "socketpair",
        "direct_fps": median["direct"],
        "plain_bridge_fps": median["plain"],
        "rust_bridge_fps": median["rust"],
        "rust_plain_route_fps": median["rust_plain_route"],
        **{
            f"{name}_latency_p{q}_us": _percentile(values, q)
            for name, values in latencies.items()
            for q in (50, 99)
        },
        "plain_cpu_percent_paced": cpu["plain"],
        "rust_cpu_percent_paced": cpu["rust"],
        "runs": {name: [round(v) for v in values] for name, values in runs.items()},
        "lost_frames": sum(lost.values()),
        "lost_by_bridge": lost,
        "dropped_by_plane": {name: sum(values) for name, values in dropped.items()},
        "ratios": {
            "rust_bridge_fps / plain_bridge_fps": median["rust"] / median["plain"],
            "rust_plain_route_fps / rust_bridge_fps": median["rust_plain_route"] / median["rust"],
            "rust_bridge_fps / direct_fps": median["rust"] / median["direct"],
            "rust_latency_p99_us / plain_latency_p99_us": _percentile(latencies["rust"], 99)
            / _percentile(latencies["plain"], 99),
            "rust_cpu_percent_paced / plain_cpu_percent_paced": cpu["rust"] / cpu["plain"]
            if cpu["plain"]
            else 0.0,
        },
        "conditions": {
            "frames": frames,
            "paced_fps": PACED_FPS,
            "paced_frames": paced_n,
            "repeats": repeats,
            "quick": quick,
            "python": platform.python_version(),
            "python_can": can.__version__,
            "cpus": os.cpu_count(),
            "notes": "socketpair(AF_UNIX, SOCK_SEQPACKET) buses carrying struct can_frame; "
            "source and sink in processes of their own; plain: python-can's per-frame calls "
            "(select, recvmsg + capture_message, build_can_frame, send), no crypto; rust: the "
            "data plane opening and resealing classic pairs; direct: no bridge, the source's and "
            "the sink's own ceiling; median of the runs. Latency: a paced source, each frame's "
            "send time (CLOCK_MONOTONIC, in the payload) to the sink's return from recv. "
            "CPU: the bridge's process (its threads; source and sink are processes of their "
            "own) over the paced runs, from the start to the last delivery.",
        },
    }


ROWS = [
    ("direct_fps", "source straight to sink (the harness's ceiling)", "frames/s"),
    ("plain_bridge_fps", "Python bridge (python-can's calls), plain", "frames/s"),
    ("rust_bridge_fps", "Rust data plane, open + reseal pairs", "frames/s"),
    ("rust_plain_route_fps", "Rust data plane, plain route", "frames/s"),
    ("plain_latency_p50_us", "Python bridge latency p50, paced", "µs"),
    ("plain_latency_p99_us", "Python bridge latency p99, paced", "µs"),
    ("rust_latency_p50_us", "Rust data plane latency p50, paced", "µs"),
    ("rust_latency_p99_us", "Rust data plane latency p99, paced", "µs"),
    ("plain_cpu_percent_paced", "Python bridge CPU, paced", "% of a core"),
    ("rust_cpu_percent_paced", "Rust data plane CPU, paced", "% of a core"),
    ("lost_frames", "frames sent but not delivered", "frames"),
]


def print_table(figures: dict[str, Any], out: Callable[[str], object] = print) -> None:
    """The figures as a table, then the ratios."""
    out("socketpair buses (AF_UNIX, SOCK_SEQPACKET), native")
    out(f"{'figure':<24} {'what':<48} {'value':>12}  unit")
    for key, what, unit in ROWS:
        value = f"{figures[key]:,.1f}" if unit.startswith("%") else f"{figures[key]:,.0f}"
        out(f"{key:<24} {what:<48} {value:>12}  {unit}")
    for ratio, value in figures["ratios"].items():
        out(f"  {ratio:<46} {value:6.2f}")
    dropped = sum(figures["dropped_by_plane"].values())
    if figures["lost_frames"]:
        # A frame the plane could not send takes its pair's other frame with it.
        out(
            f"  lost by bridge: {figures['lost_by_bridge']}; the data plane counted {dropped} "
            "it could not send (the sink's socket full for over 1 ms), each one's pair lost"
        )
