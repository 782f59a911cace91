"""``modbatt bench gateway``: the whole bridge path, secure against python-can's plain one.

One process, one run, python-can ``virtual`` buses, 8-byte extended frames. Each measurement
has the same shape for both bridges, so they differ only in the bridge:

* a **source** bus on the input channel sends prebuilt messages (plain ones for
  ``can.bridge``; frames sealed by a module's session for the pack);
* the **bridge** reads the input channel and sends on the output channel: python-can's own
  ``can.bridge`` construction (a ``Notifier`` with a ``RedirectReader``), or a running
  :class:`~modbatt.pack.controller.PackController` (open with the module's session, route,
  reseal with the app's, rewrite E);
* a **sink** bus on the output channel receives without a reader thread: its queue is only
  counted while the clock runs, and opened and checked afterwards (so checking costs the
  measurement nothing, and nothing counts that was not delivered intact).

Saturated throughput sends as fast as the source can and divides the frames delivered by the
time from the first send to the last delivery. Latency is paced at ``PACED_FPS``: each
message carries its send time (``time.time()``, inside the plaintext for the pack), and the
virtual bus stamps the bridge's send with the same clock. For the pack a message is a classic
pair (two frames, sent 1/PACED_FPS apart); each frame's latency runs from its send to the
pack's send of the frame that replaces it. CPU use comes from
:func:`modbatt.tools.soak.run_soak` (6,250 frames/s entering each bus, both directions).

This machine is noisy (a shared 2-core VM), so both bridges get the same treatment: runs
alternate, each figure is the median over its runs, and every run starts with the garbage
collector's start-up objects frozen (:func:`_settle`), as the pack's own process does.
"""

from __future__ import annotations

import gc
import os
import platform
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import can
import numpy as np

from modbatt import Session
from modbatt.bus.transport import CanPort
from modbatt.errors import FrameRejectedError
from modbatt.pack.controller import TELEMETRY_BASE, PackController
from modbatt.pack.keys import APP_LINK
from modbatt.protocol.frames import frames_of
from modbatt.tools.soak import FULL_CLASSIC_RATE, run_soak, session_pair

PACED_FPS = 7000  # a full 1 Mbit/s bus of 8-byte extended frames, with margin (REFERENCE §4)
PLAIN_ID = 0x18FF_0005  # any 29-bit id: can.bridge forwards everything
MODULE_ID = 5
STATUS_1_ID = TELEMETRY_BASE | 0x02 << 18 | MODULE_ID  # the module's STATUS_1: what it sends
TIMED = struct.Struct(">d")  # the send time, in the payload
DRAIN_TIMEOUT_S = 3.0  # no new delivery for this long: the rest is lost
QUIET_S = 0.05  # once enough frames are in, no new one for this long: all are in


@dataclass
class Delivery:
    """What a sink received while the clock ran."""

    sent: int
    delivered: int
    seconds: float
    latencies_us: list[float]

    @property
    def fps(self) -> float:
        """Frames delivered per second of the run."""
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


def _settle() -> None:
    """Collect, then freeze what survives: a full collection then skips the start-up objects.

    Called before every run of either bridge, so neither pays for the other's garbage.
    """
    gc.collect()
    gc.freeze()


def _bus(channel: str) -> can.BusABC:
    return can.Bus(interface="virtual", channel=channel, receive_own_messages=False)


def _queued(sink: can.BusABC) -> int:
    # python-can's virtual bus keeps its received messages in `queue`: counting them costs
    # the bridge nothing, where a reader thread would compete with it for the GIL
    return int(sink.queue.qsize())  # type: ignore[attr-defined]


def _drain(sink: can.BusABC) -> list[can.Message]:
    messages = []
    while (message := sink.recv(0)) is not None:
        messages.append(message)
    return messages


def _wait_delivered(sink: can.BusABC, expected: int) -> tuple[int, float]:
    """Wait until `expected` frames are queued and the bus is quiet, or delivery stalls.

    Returns (frames queued, time of the last arrival). Quiet for QUIET_S after the count is
    reached, because the pack's own status frames count too: the last frames may still be
    on their way.
    """
    last_count, last_change = 0, time.perf_counter()
    while True:
        count = _queued(sink)
        now = time.perf_counter()
        if count != last_count:
            last_count, last_change = count, now
        if count >= expected and now - last_change > QUIET_S:
            return count, last_change
        if now - last_change > DRAIN_TIMEOUT_S:
            return count, last_change
        time.sleep(0.0005)


def _send_all(source: can.BusABC, messages: list[can.Message]) -> float:
    """Send every message back to back; returns the first send's time."""
    start = time.perf_counter()
    for message in messages:
        source.send(message)
    return start


def _wait_until(due: float) -> None:
    """Sleep until perf_counter() reaches `due`.

    Sleeping, not spinning: a spinning source would hold the GIL that the bridge's thread
    needs (the interpreter switches threads only every few milliseconds), and its latency
    would be the source's doing. Frames are scheduled on absolute times, so the rate holds
    even when one sleep overshoots.
    """
    if (left := due - time.perf_counter()) > 0:
        time.sleep(left)


# --- python-can's plain bridge -------------------------------------------------------------


@contextmanager
def _plain_bridge(run: str) -> Iterator[tuple[can.BusABC, can.BusABC]]:
    source, bridge_in = _bus(f"bench-in-{run}"), _bus(f"bench-in-{run}")
    bridge_out, sink = _bus(f"bench-out-{run}"), _bus(f"bench-out-{run}")
    # exactly what `python -m can.bridge` sets up, for one direction
    notifier = can.Notifier(bridge_in, [can.RedirectReader(bridge_out)])
    try:
        yield source, sink
    finally:
        notifier.stop()
        for bus in (source, bridge_in, bridge_out, sink):
            bus.shutdown()


def plain_saturated(frames: int) -> Delivery:
    """`can.bridge` forwarding `frames` 8-byte frames sent back to back."""
    messages = [
        can.Message(arbitration_id=PLAIN_ID, data=TIMED.pack(float(n)), is_extended_id=True)
        for n in range(frames)
    ]
    with _plain_bridge(uuid.uuid4().hex[:8]) as (source, sink):
        start = _send_all(source, messages)
        delivered, last = _wait_delivered(sink, frames)
        intact = sum(1 for m in _drain(sink) if m.arbitration_id == PLAIN_ID)
    return Delivery(frames, min(delivered, intact), last - start, [])


def plain_paced(frames: int, fps: float) -> Delivery:
    """`can.bridge` latency at `fps`: each frame carries its send time."""
    with _plain_bridge(uuid.uuid4().hex[:8]) as (source, sink):
        start = time.perf_counter()
        for n in range(frames):
            _wait_until(start + n / fps)
            source.send(
                can.Message(
                    arbitration_id=PLAIN_ID, data=TIMED.pack(time.time()), is_extended_id=True
                )
            )
        _, last = _wait_delivered(sink, frames)
        received = _drain(sink)
    latencies = [
        (m.timestamp - TIMED.unpack(bytes(m.data))[0]) * 1e6
        for m in received
        if m.arbitration_id == PLAIN_ID
    ]
    return Delivery(frames, len(latencies), last - start, latencies)


# --- the pack controller's secure bridge ---------------------------------------------------


@dataclass
class _Pack:
    source: can.BusABC
    sink: can.BusABC
    module_end: Session  # seals what the source sends
    app_end: Session  # opens what the sink receives
    runtime: PackController


@contextmanager
def _secure_bridge(run: str) -> Iterator[_Pack]:
    """A running pack: CAN 2 is the input channel (module telemetry), CAN 1 the output."""
    source, sink = _bus(f"bench-can2-{run}"), _bus(f"bench-can1-{run}")
    can1 = CanPort(_bus(f"bench-can1-{run}"), "can1")
    can2 = CanPort(_bus(f"bench-can2-{run}"), "can2")
    with TemporaryDirectory(prefix="modbatt-bench-") as state:
        runtime = PackController(f"PACK-BENCH-{run}", Path(state), can1, can2)
        app_end, pack_app = session_pair("COMP-bench-app", "COMP-bench-pack")
        runtime.gateway.install_session(APP_LINK, pack_app)
        module_end, pack_module = session_pair(f"COMP-bench-module-{MODULE_ID}", "COMP-bench-pack")
        runtime.link_module(MODULE_ID, pack_module)
        runtime.start()
        try:
            yield _Pack(source, sink, module_end, app_end, runtime)
        finally:
            runtime.stop()
            for port in (can1, can2):
                port.close()
            source.shutdown()
            sink.shutdown()


def _sealed(session: Session, send_time: float) -> list[can.Message]:
    return [
        can.Message(arbitration_id=i, data=d, is_extended_id=True)
        for i, d in frames_of(session.seal(STATUS_1_ID, TIMED.pack(send_time)))
    ]


def _opened(app_end: Session, received: list[can.Message]) -> list[tuple[float, float, float]]:
    """Every message the sink can open, in order.

    As (what it carries, the delivery time of its data frame, of its authenticator frame).
    """
    out = []
    data_at = 0.0
    for message in received:
        try:
            plain = app_end.open(message.arbitration_id, bytes(message.data))
        except FrameRejectedError:
            continue
        if plain is None:  # a pair's data frame: its message completes with the next frame
            data_at = message.timestamp
        elif len(plain) == TIMED.size:
            out.append((TIMED.unpack(plain)[0], data_at, message.timestamp))
    return out


def secure_saturated(frames: int) -> Delivery:
    """The pack bridging `frames` sealed frames (pairs) sent back to back."""
    with _secure_bridge(uuid.uuid4().hex[:8]) as pack:
        messages = [m for n in range(frames // 2) for m in _sealed(pack.module_end, float(n))]
        start = _send_all(pack.source, messages)
        delivered, last = _wait_delivered(pack.sink, len(messages))
        opened = _opened(pack.app_end, _drain(pack.sink))
    # a delivered frame counts when its message opens intact at the far end
    return Delivery(len(messages), min(delivered, 2 * len(opened)), last - start, [])


def secure_paced(frames: int, fps: float) -> Delivery:
    """The pack's per-frame latency at `fps` frames/s.

    Each message is a classic pair, its two frames sent 1/fps apart, as a full bus carries
    them. A frame's latency is from its send to the pack's send of the frame that replaces
    it: the data frame's includes the wait for its authenticator (the pack forwards nothing
    it has not verified), which is the price of the pair form.
    """
    with _secure_bridge(uuid.uuid4().hex[:8]) as pack:
        sent_at: list[tuple[float, float]] = []  # (data frame, authenticator frame) per message
        start = time.perf_counter()
        for n in range(frames // 2):
            data, auth = _sealed(pack.module_end, float(n))
            _wait_until(start + 2 * n / fps)
            data_sent = time.time()
            pack.source.send(data)
            _wait_until(start + (2 * n + 1) / fps)
            auth_sent = time.time()
            pack.source.send(auth)
            sent_at.append((data_sent, auth_sent))
        expected = 2 * (frames // 2)
        _, last = _wait_delivered(pack.sink, expected)
        opened = _opened(pack.app_end, _drain(pack.sink))
    latencies = []
    for index, data_out, auth_out in opened:
        data_sent, auth_sent = sent_at[int(index)]
        latencies += [(data_out - data_sent) * 1e6, (auth_out - auth_sent) * 1e6]
    return Delivery(expected, 2 * len(opened), last - start, latencies)


def secure_paced_single(frames: int, fps: float) -> Delivery:
    """The pack's per-frame latency at `fps` for the single-frame form.

    A 3-byte payload: one 8-byte frame in, one out, the like-for-like comparison with
    `can.bridge`.
    """
    with _secure_bridge(uuid.uuid4().hex[:8]) as pack:
        sent_at: list[float] = []
        start = time.perf_counter()
        for n in range(frames):
            can_id, data, _, _ = pack.module_end.seal(STATUS_1_ID, n.to_bytes(3, "big"))
            message = can.Message(arbitration_id=can_id, data=data, is_extended_id=True)
            _wait_until(start + n / fps)
            sent_at.append(time.time())
            pack.source.send(message)
        _, last = _wait_delivered(pack.sink, frames)
        latencies = []
        for message in _drain(pack.sink):
            try:
                plain = pack.app_end.open(message.arbitration_id, bytes(message.data))
            except FrameRejectedError:
                continue
            if plain is not None and len(plain) == 3:
                index = int.from_bytes(plain, "big")
                latencies.append((message.timestamp - sent_at[index]) * 1e6)
    return Delivery(frames, len(latencies), last - start, latencies)


# --- the benchmark -------------------------------------------------------------------------


def _median_run(runs: list[Delivery]) -> Delivery:
    """The run with the median throughput; its losses are the sum over every run."""
    ranked = sorted(runs, key=lambda r: r.fps)
    median = ranked[len(ranked) // 2]
    lost = sum(r.sent - r.delivered for r in runs)
    return Delivery(median.sent + lost, median.delivered, median.seconds, [])


def _all_runs(runs: list[Delivery]) -> Delivery:
    """Every run's frames counted together (for the losses)."""
    return Delivery(
        sum(r.sent for r in runs),
        sum(r.delivered for r in runs),
        sum(r.seconds for r in runs),
        [v for r in runs for v in r.latencies_us],
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def gateway(quick: bool = False) -> dict[str, Any]:
    """Measure both bridges; returns the figures (the numeric keys of issue 7 and more)."""
    saturated_n, repeats = (4_000, 1) if quick else (20_000, 7)
    paced_n, paced_rounds = (700, 1) if quick else (PACED_FPS, 9)
    cpu_seconds = 1.0 if quick else 10.0
    figures: dict[str, Any] = {}
    # Saturated runs swing by a factor of two on this machine from one to the next (thread
    # scheduling and the GIL): alternate the two bridges and take each one's median.
    plains, secures = [], []
    for _ in range(repeats):
        _settle()
        plains.append(plain_saturated(saturated_n))
        _settle()
        secures.append(secure_saturated(saturated_n))
    plain = _median_run(plains)
    secure = _median_run(secures)
    figures["plain_bridge_fps"] = plain.fps
    figures["secure_bridge_fps"] = secure.fps
    figures["plain_bridge_fps_runs"] = [round(r.fps) for r in plains]
    figures["secure_bridge_fps_runs"] = [round(r.fps) for r in secures]
    # Latency: alternating runs of PACED_FPS for one second each; each percentile is the
    # median over the runs (a host hiccup in one run then moves no figure), and the pooled
    # percentiles are kept alongside.
    paced: dict[str, list[Delivery]] = {"plain": [], "secure": [], "secure_single": []}
    for _ in range(paced_rounds):
        for name, run in (
            ("plain", plain_paced),
            ("secure", secure_paced),
            ("secure_single", secure_paced_single),
        ):
            _settle()
            paced[name].append(run(paced_n, PACED_FPS))
    for name, runs in paced.items():
        for q in (50, 99):
            per_run = [_percentile(r.latencies_us, q) for r in runs]
            figures[f"{name}_latency_p{q}_us"] = float(np.median(per_run))
            figures[f"{name}_latency_p{q}_us_runs"] = [round(v, 1) for v in per_run]
            pooled = [v for r in runs for v in r.latencies_us]
            figures[f"{name}_latency_p{q}_us_pooled"] = _percentile(pooled, q)
    plain_lat, secure_lat, single_lat = (
        _all_runs(paced[name]) for name in ("plain", "secure", "secure_single")
    )
    soak = run_soak(cpu_seconds, FULL_CLASSIC_RATE)
    figures["cpu_percent_2x1mbit"] = soak.pack_cpu_percent
    lost = {
        "plain_saturated": plain.sent - plain.delivered,
        "secure_saturated": secure.sent - secure.delivered,
        "plain_paced": plain_lat.sent - plain_lat.delivered,
        "secure_paced": secure_lat.sent - secure_lat.delivered,
        "secure_paced_single": single_lat.sent - single_lat.delivered,
        "cpu_run": soak.frames_sent - soak.frames_received + 2 * soak.lost,
    }
    figures["lost_frames"] = sum(lost.values())
    figures["lost_by_measurement"] = lost
    figures["meets_targets"] = {
        "secure_bridge_fps >= plain_bridge_fps": secure.fps >= plain.fps,
        "secure_latency_p99_us <= plain_latency_p99_us": figures["secure_latency_p99_us"]
        <= figures["plain_latency_p99_us"],
        "lost_frames == 0": figures["lost_frames"] == 0,
    }
    figures["conditions"] = {
        "saturated_frames": saturated_n,
        "saturated_repeats": repeats,
        "paced_frames": paced_n,
        "paced_rounds": paced_rounds,
        "paced_fps": PACED_FPS,
        "cpu_seconds": cpu_seconds,
        "quick": quick,
        "interface": "virtual",
        "python": platform.python_version(),
        "python_can": can.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "notes": "secure frames are classic pairs (8-byte payload: data + authenticator "
        "frame), counted as frames; latency is per frame, from its send to the bridge's send "
        "of the frame it becomes (with cut-through a pair's data frame goes at once, "
        "PROTOCOL.md 8.1; a stream's first pair waits for its authenticator). Saturated "
        "figures are the median of alternating runs, latency percentiles the median of each "
        "run's (pooled ones alongside). CPU is the pack's threads while 6,250 frames/s enter "
        "each bus (modbatt soak).",
    }
    return figures


ROWS = [
    ("plain_bridge_fps", "can.bridge, saturated", "frames/s"),
    ("secure_bridge_fps", "pack gateway, saturated", "frames/s"),
    ("plain_latency_p50_us", "can.bridge latency p50 @ 7,000 fps", "µs"),
    ("plain_latency_p99_us", "can.bridge latency p99 @ 7,000 fps", "µs"),
    ("secure_latency_p50_us", "pack latency p50 @ 7,000 fps", "µs"),
    ("secure_latency_p99_us", "pack latency p99 @ 7,000 fps", "µs"),
    ("secure_single_latency_p50_us", "pack p50, single-frame form (3 B)", "µs"),
    ("secure_single_latency_p99_us", "pack p99, single-frame form (3 B)", "µs"),
    ("cpu_percent_2x1mbit", "pack CPU, 2 x 6,250 fps, both ways", "% of a core"),
    ("lost_frames", "frames sent but not delivered", "frames"),
]


def print_table(figures: dict[str, Any], out: Callable[[str], object] = print) -> None:
    """Print the figures as a table, then the targets met or missed."""
    out(f"{'figure':<26} {'what':<42} {'value':>14}  unit")
    for key, what, unit in ROWS:
        out(f"{key:<26} {what:<42} {figures[key]:>14,.0f}  {unit}")
    for target, met in figures["meets_targets"].items():
        out(f"  {'met   ' if met else 'MISSED'} {target}")
