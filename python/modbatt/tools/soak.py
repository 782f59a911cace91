"""Soak and flood: both buses at the full rate of a classic 1 Mbit/s bus through a running pack.

A :class:`~modbatt.pack.controller.PackController` (the same object `modbatt pack run` runs:
one thread per bus, the Rust gateway, the module table) bridges an app link on CAN 1 and ``modules``
module links on CAN 2. The harness is the far end of every link, on one bus of its own per
side:

* on CAN 1 it seals commands for every module with the app's session, on CAN 2 telemetry
  from every module with that module's session, each at ``rate`` frames/s (8-byte messages,
  so two frames each: the classic pair form);
* it opens whatever the pack forwards with the session of the far end and checks each
  stream's sequence numbers: a gap is a lost message, a step back a reordered one;
* with ``garbage_rate`` it also floods both buses with random frames: random 29-bit ids
  (redrawn when they would name a paired link's sealed traffic: forgeries aimed at a link
  spend its failure budget, which `test_pairing.py` covers), random lengths and bytes.

The links are made from fresh random keys here rather than by a bootstrap and pairing: the
key establishment is tested elsewhere, and this measures the frame path under load.

Every figure is measured in the run: frames sent and delivered per stream, lost, reordered,
latency (seal on one side to open on the other), resident memory at the start and the end of
the load, and CPU time, of the pack's two bus threads and of the whole process.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import can
import numpy as np
import numpy.typing as npt

from modbatt import DROP_REASONS, LinkKey, Session
from modbatt.bus.transport import CanPort
from modbatt.errors import FrameRejectedError, SessionError
from modbatt.pack.controller import (
    COMMAND_BASE,
    MODULE_BASE_MASK,
    NODE_MASK,
    TELEMETRY_BASE,
    PackController,
)
from modbatt.pack.keys import APP_LINK
from modbatt.protocol.frames import frames_of
from modbatt.protocol.reference import ENCRYPTION_FLAG

FULL_CLASSIC_RATE = 6250  # frames/s of 8-byte extended frames on a 1 Mbit/s bus (REFERENCE §4)
TICK_S = 0.002  # the generators send what is due every 2 ms
DRAIN_S = 2.0  # after the load stops, how long the pack may take to deliver its backlog
LATENCY_BINS = 1 << 17  # 1 µs bins up to 131 ms
MAX_RSS_GROWTH_KIB = 4 * 1024  # "flat": the load may not grow resident memory more than this
MESSAGE = struct.Struct(">II")  # stream << 24 | sequence (24 bits), send time (µs, mod 2**32)
COMMAND_STREAMS = (0x514, 0x515)  # command bases per module (STATE_CHANGE and the next)
TELEMETRY_STREAMS = (0x502, 0x503)  # telemetry bases per module (STATUS_1, STATUS_2)
VERIFIED_BASES = (TELEMETRY_BASE, COMMAND_BASE)  # id & MODULE_BASE_MASK of what a link opens


@dataclass
class Stream:
    """One logical id's traffic: what was sent, and what the far end received in order."""

    index: int
    logical_id: int
    sent: int = 0
    delivered: int = 0
    next_expected: int = 0
    lost: int = 0
    reordered: int = 0


@dataclass
class SoakReport:
    """The figures of one run (all measured, none configured except the first five)."""

    seconds: float
    rate_fps_per_bus: int
    garbage_fps_per_bus: int
    modules: int
    interface: str
    frames_sent: int = 0
    frames_received: int = 0  # by the pack's gateway: sealed traffic and garbage
    frames_forwarded: int = 0
    frames_ahead: int = 0  # pairs' data frames forwarded before their authenticator
    messages_sent: int = 0
    messages_delivered: int = 0
    lost: int = 0
    reordered: int = 0
    garbage_sent: int = 0
    garbage_to_gateway: int = 0  # the garbage the pack steps through its gateway
    rejected_at_far_end: int = 0  # forwards the far end of the link could not open
    pack_errors: int = 0  # errors the pack logged (a handler that failed on some input)
    latency_p50_us: float = 0.0
    latency_p99_us: float = 0.0
    latency_max_us: float = 0.0
    drain_s: float = 0.0
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    rss_peak_kib: int = 0
    pack_cpu_percent: float = 0.0
    process_cpu_percent: float = 0.0
    gateway_dropped: dict[str, int] = field(default_factory=dict)
    streams: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)

    def problems(self) -> list[str]:
        """What failed the run's requirements; empty when it held."""
        found = []
        if self.lost:
            found.append(f"{self.lost} messages lost")
        if self.reordered:
            found.append(f"{self.reordered} messages out of order")
        if self.messages_delivered != self.messages_sent:
            found.append(f"{self.messages_delivered} of {self.messages_sent} messages delivered")
        if self.frames_received != self.frames_sent + self.garbage_to_gateway:
            found.append(
                f"the pack's gateway received {self.frames_received} of "
                f"{self.frames_sent + self.garbage_to_gateway} frames"
            )
        if self.pack_errors:
            found.append(f"the pack logged {self.pack_errors} errors (see the log)")
        if self.rejected_at_far_end:
            found.append(f"{self.rejected_at_far_end} forwarded frames did not open at the far end")
        if self.drain_s >= DRAIN_S:
            found.append(f"the pack still had a backlog {DRAIN_S} s after the load stopped")
        growth = self.rss_end_kib - self.rss_start_kib
        if growth > MAX_RSS_GROWTH_KIB:
            found.append(f"resident memory grew by {growth} KiB (limit {MAX_RSS_GROWTH_KIB})")
        return found

    def lines(self) -> list[str]:
        """The report as a short table for a terminal."""
        return [
            f"soak: {self.seconds:g} s, {self.rate_fps_per_bus} frames/s of sealed traffic and "
            f"{self.garbage_fps_per_bus} frames/s of garbage on each bus, {self.modules} modules, "
            f"{self.streams} streams ({self.interface})",
            f"  frames sent {self.frames_sent}, garbage {self.garbage_sent}, "
            f"stepped by the pack's gateway {self.frames_received} "
            f"(plain garbage on CAN 1 goes to the control channel instead); "
            f"{self.frames_ahead} data frames forwarded ahead of their authenticator",
            f"  messages sent {self.messages_sent}, delivered {self.messages_delivered}, "
            f"lost {self.lost}, reordered {self.reordered}",
            f"  latency p50 {self.latency_p50_us:.0f} µs, p99 {self.latency_p99_us:.0f} µs, "
            f"max {self.latency_max_us:.0f} µs; backlog drained in {self.drain_s:.3f} s",
            f"  resident memory {self.rss_start_kib} KiB at the start, {self.rss_end_kib} KiB "
            f"at the end, peak {self.rss_peak_kib} KiB",
            f"  CPU: pack {self.pack_cpu_percent} %, whole process (with the load generator) "
            f"{self.process_cpu_percent} % of one core",
            "  gateway drops: "
            + ", ".join(f"{k} {v}" for k, v in self.gateway_dropped.items() if v)
            if any(self.gateway_dropped.values())
            else "  gateway drops: none",
        ]


class _ErrorCounter(logging.Handler):
    """Counts the errors the pack logs during a run: each is a handler that failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _memory_kib(field_name: str) -> int:
    """A memory figure of this process from /proc/self/status: VmRSS now, VmHWM the peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field_name}")


def _thread_cpu_s(native_ids: list[int]) -> float:
    """User + system CPU seconds of the given threads of this process (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for tid in native_ids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


class _End:
    """The harness's end of one bus.

    It seals and sends its own streams, and opens and checks the streams the pack forwards to
    this bus from the other one.
    """

    def __init__(
        self,
        port: CanPort,
        streams: list[tuple[Stream, Session]],
        receives: list[Stream],
        opener: dict[int, Session],
    ) -> None:
        self.port = port
        self.streams = streams
        self.by_index = {s.index: s for s in receives}
        self.turn = 0
        self.opener = opener  # node id -> the far end's session for frames from the pack
        # A histogram of 1 µs bins (the last bin holds everything slower), allocated up front
        # so that measuring does not grow the memory the soak watches.
        self.latency_bins = np.zeros(LATENCY_BINS, dtype=np.int64)
        self.latency_max_us = 0
        self.rejected = 0
        self.lock = threading.Lock()  # sessions are shared by the sending and receiving threads
        port.subscribe(self.on_frame)

    def send_due(self, messages: int) -> int:
        """Seal and send `messages` messages round-robin over the streams; frames sent."""
        frames = 0
        for _ in range(messages):
            stream, session = self.streams[self.turn]
            self.turn = (self.turn + 1) % len(self.streams)
            now_us = time.perf_counter_ns() // 1000 & 0xFFFFFFFF
            payload = MESSAGE.pack(stream.index << 24 | stream.sent & 0xFFFFFF, now_us)
            with self.lock:
                sealed = session.seal(stream.logical_id, payload)
            stream.sent += 1
            for can_id, data in frames_of(sealed):
                self.port.send(can_id, data)
                frames += 1
        return frames

    def on_frame(self, can_id: int, data: bytes, _timestamp: float) -> None:
        if not can_id & ENCRYPTION_FLAG:
            return  # the pack's plain broadcasts (heartbeat) are not this harness's
        session = self.opener.get(can_id & NODE_MASK)
        if session is None:
            return
        with self.lock:
            try:
                plain = session.open(can_id, data)
            except (FrameRejectedError, SessionError):
                self.rejected += 1  # the pack forwarded something its far end cannot open
                return
        if plain is None or len(plain) != 8:
            return  # a pair's data frame, or the pack's own status and alert frames
        word, sent_us = MESSAGE.unpack(plain)
        index, sequence = word >> 24, word & 0xFFFFFF
        stream = self.by_index.get(index)
        if stream is None:
            return
        latency_us = (time.perf_counter_ns() // 1000 - sent_us) & 0xFFFFFFFF
        self.latency_bins[min(latency_us, LATENCY_BINS - 1)] += 1
        self.latency_max_us = max(self.latency_max_us, latency_us)
        stream.delivered += 1
        expected = stream.next_expected & 0xFFFFFF
        if sequence == expected:
            stream.next_expected += 1
        elif (sequence - expected) & 0xFFFFFF < 0x800000:  # ahead: the ones between are lost
            gap = (sequence - expected) & 0xFFFFFF
            stream.lost += gap
            stream.next_expected += gap + 1
        else:
            stream.reordered += 1


class _Garbage:
    """Random frames at a fixed rate, never with a sealed id the gateway verifies.

    Sealed (E set) module telemetry and commands (0x500-0x51F) are opened with a link's
    session, so forgeries there spend its failure budget: that attack is tested on its own
    (the link is torn down, the app alerted, the link re-established). Everything else is
    fair game here, including plain frames on those ids (downgrades and unpaired traffic).
    """

    def __init__(self, port: CanPort, seed: int, plain_to_gateway: bool) -> None:
        self.port = port
        # On CAN 1 the pack steps only sealed (E) frames through the gateway; plain ones are
        # the control channel's. On CAN 2 every frame goes through the gateway.
        self.plain_to_gateway = plain_to_gateway
        self.to_gateway = 0
        self.random = random.Random(seed)  # noqa: S311 -- seeded test traffic, not keys
        self.sent = 0

    def send_due(self, frames: int) -> None:
        rng = self.random
        for _ in range(frames):
            can_id = rng.getrandbits(29)
            while can_id & ENCRYPTION_FLAG and can_id & MODULE_BASE_MASK in VERIFIED_BASES:
                can_id = rng.getrandbits(29)
            self.port.send(can_id, rng.randbytes(rng.randint(0, 8)))
            self.sent += 1
            if self.plain_to_gateway or can_id & ENCRYPTION_FLAG:
                self.to_gateway += 1


def _percentile(bins: npt.NDArray[np.int64], fraction: float) -> float:
    """The latency (µs) below which `fraction` of the histogram's samples lie."""
    total = int(bins.sum())
    if total == 0:
        return 0.0
    return float(np.searchsorted(np.cumsum(bins), fraction * total))


def session_pair(local: str, peer: str) -> tuple[Session, Session]:
    """Both ends of a link on fresh random keys: (local end, peer end)."""
    link = LinkKey(os.urandom(64), local, os.urandom(64), peer, os.urandom(32))
    local_nonce, peer_nonce = os.urandom(16), os.urandom(16)
    return (
        Session(link, local, peer, local_nonce, peer_nonce),
        Session(link, peer, local, peer_nonce, local_nonce),
    )


@contextmanager
def _ports(interface: str, run: str) -> Iterator[dict[str, CanPort]]:
    """CAN 1 and CAN 2, each with a port for the pack and one for the harness."""
    ports: dict[str, CanPort] = {}
    try:
        for name, bus, port in (
            ("pack1", "can1", 0),
            ("app", "can1", 0),
            ("pack2", "can2", 1),
            ("modules", "can2", 1),
        ):
            if interface == "virtual":
                raw = can.Bus(interface="virtual", channel=f"modbatt-soak-{bus}-{run}")
            else:  # udp_multicast: one group and port per bus (see transport.BusSpec)
                base = 43000 + int(run[:3], 16) % 1000 * 2
                raw = can.Bus(
                    interface="udp_multicast",
                    channel=f"239.74.{port + 1}.{port + 1}",
                    port=base + port,
                )
            ports[name] = CanPort(raw, f"{bus}-{name}")
        yield ports
    finally:
        for p in ports.values():
            p.close()


def run_soak(
    seconds: float,
    rate: int = FULL_CLASSIC_RATE,
    garbage_rate: int = 0,
    modules: int = 2,
    interface: str = "virtual",
    seed: int = 1,
) -> SoakReport:
    """Bridge `rate` frames/s of sealed traffic on each bus through a pack for `seconds`."""
    report = SoakReport(seconds, rate, garbage_rate, modules, interface)
    run = uuid.uuid4().hex[:8]
    with TemporaryDirectory(prefix="modbatt-soak-") as state, _ports(interface, run) as ports:
        pack = PackController(f"PACK-SOAK-{run}", Path(state), ports["pack1"], ports["pack2"])
        app_end, pack_app = session_pair("COMP-soak-app", "COMP-soak-pack")
        pack.gateway.install_session(APP_LINK, pack_app)
        commands: list[tuple[Stream, Session]] = []
        telemetry: list[tuple[Stream, Session]] = []
        module_ends: dict[int, Session] = {}
        for module_id in range(1, modules + 1):
            module_end, pack_module = session_pair(
                f"COMP-soak-module-{module_id}", "COMP-soak-pack"
            )
            pack.link_module(module_id, pack_module)
            module_ends[module_id] = module_end
            for base in COMMAND_STREAMS:
                stream = Stream(len(commands) + len(telemetry), base << 18 | module_id)
                commands.append((stream, app_end))
            for base in TELEMETRY_STREAMS:
                stream = Stream(len(commands) + len(telemetry), base << 18 | module_id)
                telemetry.append((stream, module_end))
        app_side = _End(
            ports["app"], commands, [s for s, _ in telemetry], dict.fromkeys(module_ends, app_end)
        )
        module_side = _End(ports["modules"], telemetry, [s for s, _ in commands], module_ends)
        garbage = [
            _Garbage(ports["app"], seed, plain_to_gateway=False),
            _Garbage(ports["modules"], seed + 1, plain_to_gateway=True),
        ]
        errors = _ErrorCounter()
        logging.getLogger("modbatt").addHandler(errors)
        pack.start()
        try:
            _load(report, pack, [app_side, module_side], garbage, seconds, rate, garbage_rate)
        finally:
            pack.stop()
            logging.getLogger("modbatt").removeHandler(errors)
        report.pack_errors = errors.count
        streams = [s for s, _ in commands + telemetry]
        report.streams = len(streams)
        report.messages_sent = sum(s.sent for s in streams)
        report.messages_delivered = sum(s.delivered for s in streams)
        # what never arrived at all counts as lost too (a gap at the end of a stream)
        report.lost = sum(s.lost + (s.sent - s.next_expected) for s in streams)
        report.reordered = sum(s.reordered for s in streams)
        report.rejected_at_far_end = app_side.rejected + module_side.rejected
        report.garbage_sent = sum(g.sent for g in garbage)
        report.garbage_to_gateway = sum(g.to_gateway for g in garbage)
        bins = app_side.latency_bins + module_side.latency_bins
        report.latency_p50_us = _percentile(bins, 0.50)
        report.latency_p99_us = _percentile(bins, 0.99)
        report.latency_max_us = float(max(app_side.latency_max_us, module_side.latency_max_us))
        stats = pack.gateway.stats()
        report.frames_received = int(stats["received"])
        report.frames_forwarded = int(stats["forwarded"])
        reasons = {name for _, name in DROP_REASONS}
        report.gateway_dropped = {k: int(v) for k, v in stats.items() if k in reasons}
        report.frames_ahead = int(stats["ahead"])
    return report


def _load(
    report: SoakReport,
    pack: PackController,
    ends: list[_End],
    garbage: list[_Garbage],
    seconds: float,
    rate: int,
    garbage_rate: int,
) -> None:
    """Send at the rates for `seconds`, then wait for the backlog; measure as it goes."""
    # The pack's CPU is the process's minus the harness's threads (this one, which generates
    # the load, and the receiving threads of the harness's two buses): everything else in the
    # process is the pack's (bus threads, control channel, module loop, relinker).
    harness = [threading.get_native_id()] + [t for end in ends if (t := end.port.thread_id)]
    time.sleep(0.2)  # let every thread reach its loop before measuring
    report.rss_start_kib = _memory_kib("VmRSS")
    cpu_start, harness_start = time.process_time(), _thread_cpu_s(harness)
    wall_start = time.monotonic()
    messages_due_per_s = rate / 2  # 8-byte messages: two frames each
    sent_messages = [0] * len(ends)
    sent_garbage = [0] * len(garbage)
    elapsed = 0.0
    while elapsed < seconds:
        # the last round sends what is due at exactly `seconds`: the run sends rate x seconds
        elapsed = min(time.monotonic() - wall_start, seconds)
        for i, end in enumerate(ends):
            due = int(elapsed * messages_due_per_s) - sent_messages[i]
            if due > 0:
                report.frames_sent += end.send_due(due)
                sent_messages[i] += due
        for i, flood in enumerate(garbage):
            due = int(elapsed * garbage_rate) - sent_garbage[i]
            if due > 0:
                flood.send_due(due)
                sent_garbage[i] += due
        time.sleep(TICK_S)
    load_end = time.monotonic()
    cpu = time.process_time() - cpu_start
    cpu_pack = cpu - (_thread_cpu_s(harness) - harness_start)
    report.rss_end_kib = _memory_kib("VmRSS")
    report.rss_peak_kib = _memory_kib("VmHWM")
    report.pack_cpu_percent = round(100 * cpu_pack / (load_end - wall_start), 1)
    report.process_cpu_percent = round(100 * cpu / (load_end - wall_start), 1)
    expected = sum(sent_messages)
    while time.monotonic() - load_end < DRAIN_S:
        delivered = sum(s.delivered for end in ends for s in end.by_index.values())
        if delivered >= expected:
            break
        time.sleep(0.01)
    report.drain_s = round(time.monotonic() - load_end, 3)
