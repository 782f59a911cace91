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
from multiprocessing.connection import Connection
from typing import Any

import can
from can.interfaces.socketcan import constants
from can.interfaces.socketcan.socketcan import build_can_frame, capture_message

from modbatt._core import DataPlane, Gateway
from modbatt.errors import FrameRejectedError
from modbatt.pack.keys import APP_LINK
from modbatt.protocol.frames import frames_of
from modbatt.tools.bench_gateway import MODULE_ID, PLAIN_ID, STATUS_1_ID, TIMED
from modbatt.tools.soak import session_pair

CAN1, CAN2 = 0, 1
CLASSIC = struct.Struct("=IB3x8s")
CAN_EFF_FLAG = 0x8000_0000
RUN_TIMEOUT_S = 120.0
FLAG_BITS = 0x3_8000  # bits 15..17: the flag and the pair's frame index, not part of a route
ROUTED_PLAIN_ID = PLAIN_ID & ~FLAG_BITS  # a plain id a gateway rule can match


def _records(frames: list[tuple[int, bytes]]) -> list[bytes]:
    return [
        CLASSIC.pack(can_id | CAN_EFF_FLAG, len(data), data.ljust(8, b"\0"))
        for can_id, data in frames
    ]


def _source(sock: socket.socket, records: list[bytes], go: Any) -> None:
    go.wait()
    send = sock.send
    for record in records:
        send(record)


def _sink(sock: socket.socket, expected: int, report: Connection, keep: bool) -> None:
    received: list[bytes] = []
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
                received.append(record)
    except TimeoutError:
        pass  # the rest never came
    report.send((count, first, last, received))


def _run(
    bridge: Callable[[socket.socket, socket.socket, int], Callable[[], None]] | None,
    records: list[bytes],
    keep: bool,
) -> tuple[int, float, list[bytes]]:
    """Send `records` through `bridge(in, out, n)`, which returns its stop.

    With no bridge the source writes straight to the sink: the ceiling of the harness itself.
    Returns (delivered, seconds from the first delivery to the last, what the sink kept).
    """
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
    sink = context.Process(target=_sink, args=(sink_end, len(records), theirs, keep), daemon=True)
    sink.start()
    source.start()
    stop = bridge(bridge_in, bridge_out, len(records))
    try:
        go.set()
        if not mine.poll(RUN_TIMEOUT_S):
            raise TimeoutError("the sink did not report")
        count, first, last, kept = mine.recv()
    finally:
        stop()
        for process in (source, sink):
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        for sock in (src_end, bridge_in, bridge_out, sink_end):
            sock.close()
    return int(count), float(last - first), list(kept)


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


def _plane(gateway: Gateway) -> Callable[[socket.socket, socket.socket, int], Callable[[], None]]:
    def bridge(inp: socket.socket, out: socket.socket, _n: int) -> Callable[[], None]:
        plane = DataPlane(gateway, out, inp, sealed_only=(False, False))  # CAN 2 in, CAN 1 out
        return plane.stop

    return bridge


def gateway_socketpair(quick: bool = False) -> dict[str, Any]:
    """Measure the plain Python bridge and the Rust data plane over socketpairs."""
    frames = 20_000 if quick else 200_000
    repeats = 1 if quick else 3
    plain_records = _records([(ROUTED_PLAIN_ID, TIMED.pack(float(n))) for n in range(frames)])
    runs: dict[str, list[float]] = {"direct": [], "plain": [], "rust": [], "rust_plain_route": []}
    lost = dict.fromkeys(runs, 0)
    for _ in range(repeats):
        count, seconds, _ = _run(None, plain_records, keep=False)
        runs["direct"].append(count / seconds if seconds else 0.0)
        lost["direct"] += frames - count
        count, seconds, _ = _run(plain_bridge, plain_records, keep=False)
        runs["plain"].append(count / seconds if seconds else 0.0)
        lost["plain"] += frames - count
        # the pack's job: open with the module's session, reseal with the app's
        gateway = Gateway()
        app_end, pack_app = session_pair("COMP-bench-app", "COMP-bench-pack")
        module_end, pack_module = session_pair("COMP-bench-module", "COMP-bench-pack")
        gateway.install_session(APP_LINK, pack_app)
        gateway.install_session(MODULE_ID, pack_module)
        gateway.add_rule(
            CAN2, STATUS_1_ID, 0x1FFF_FFFF & ~FLAG_BITS, CAN1, inbound=MODULE_ID, outbound=APP_LINK
        )
        sealed = _records(
            [
                f
                for n in range(frames // 2)
                for f in frames_of(module_end.seal(STATUS_1_ID, TIMED.pack(float(n))))
            ]
        )
        count, seconds, kept = _run(_plane(gateway), sealed, keep=True)
        intact = 0
        for record in kept:
            raw_id, length, data = CLASSIC.unpack(record)
            try:
                if app_end.open(raw_id & 0x1FFF_FFFF, data[:length]) is not None:
                    intact += 2  # a pair's two frames
            except FrameRejectedError:
                pass
        runs["rust"].append(min(count, intact) / seconds if seconds else 0.0)
        lost["rust"] += len(sealed) - min(count, intact)
        route = Gateway()
        route.add_rule(CAN2, ROUTED_PLAIN_ID, 0x1FFF_FFFF & ~FLAG_BITS, CAN1)
        count, seconds, _ = _run(_plane(route), plain_records, keep=False)
        runs["rust_plain_route"].append(count / seconds if seconds else 0.0)
        lost["rust_plain_route"] += frames - count
    median = {name: sorted(values)[len(values) // 2] for name, values in runs.items()}
    return {
        "interface": "socketpair",
        "direct_fps": median["direct"],
        "plain_bridge_fps": median["plain"],
        "rust_bridge_fps": median["rust"],
        "rust_plain_route_fps": median["rust_plain_route"],
        "runs": {name: [round(v) for v in values] for name, values in runs.items()},
        "lost_frames": sum(lost.values()),
        "lost_by_bridge": lost,
        "ratios": {
            "rust_bridge_fps / plain_bridge_fps": median["rust"] / median["plain"],
            "rust_plain_route_fps / rust_bridge_fps": median["rust_plain_route"] / median["rust"],
            "rust_bridge_fps / direct_fps": median["rust"] / median["direct"],
        },
        "conditions": {
            "frames": frames,
            "repeats": repeats,
            "quick": quick,
            "python": platform.python_version(),
            "python_can": can.__version__,
            "cpus": os.cpu_count(),
            "notes": "socketpair(AF_UNIX, SOCK_SEQPACKET) buses carrying struct can_frame; "
            "source and sink in processes of their own; plain: python-can's per-frame calls "
            "(select, recvmsg + capture_message, build_can_frame, send), no crypto; rust: the "
            "data plane opening and resealing classic pairs; direct: no bridge, the source's and "
            "the sink's own ceiling; median of the runs.",
        },
    }


ROWS = [
    ("direct_fps", "source straight to sink (the harness's ceiling)", "frames/s"),
    ("plain_bridge_fps", "Python bridge (python-can's calls), plain", "frames/s"),
    ("rust_bridge_fps", "Rust data plane, open + reseal pairs", "frames/s"),
    ("rust_plain_route_fps", "Rust data plane, plain route", "frames/s"),
    ("lost_frames", "frames sent but not delivered", "frames"),
]


def print_table(figures: dict[str, Any], out: Callable[[str], object] = print) -> None:
    """The figures as a table, then the ratios."""
    out("socketpair buses (AF_UNIX, SOCK_SEQPACKET), native")
    out(f"{'figure':<22} {'what':<48} {'value':>12}  unit")
    for key, what, unit in ROWS:
        out(f"{key:<22} {what:<48} {figures[key]:>12,.0f}  {unit}")
    for ratio, value in figures["ratios"].items():
        out(f"  {ratio:<46} {value:6.2f}")
