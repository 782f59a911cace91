"""Traffic logs: every frame a role sends and receives, recorded as it is on the wire.

``--log FILE`` on a role wraps each of its buses in a :class:`RecordingBus`, which hands a copy
of every frame to one python-can writer chosen by the file's extension (BLF and ASC, Vector's
formats, or candump's ``.log``), with the bus as its channel (``can1``, ``can2``) and its
direction. ``modbatt decode`` (:mod:`modbatt.tools.decode`) reads such a log back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can

from modbatt.errors import InvalidArgumentError

FORMATS = {".blf": "BLF (Vector)", ".asc": "ASC (Vector)", ".log": "candump"}
LOG_HELP = (
    "Record every frame sent and received to FILE, in the format its extension names: "
    ".blf or .asc (Vector), .log (candump); read it back with 'modbatt decode'."
)


def check_log_path(path: Path) -> Path:
    """`path` when its extension names a format modbatt writes; a clear error otherwise."""
    if path.suffix.lower() not in FORMATS:
        known = ", ".join(f"{suffix} ({name})" for suffix, name in FORMATS.items())
        raise InvalidArgumentError(
            f"traffic log {str(path)!r}: the extension must be one of {known}"
        )
    return path


class TrafficLog:
    """One log file for a role's buses; writes are serialized (several threads send)."""

    def __init__(self, path: Path) -> None:
        check_log_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._writer = can.Logger(str(path))
        self._lock = threading.Lock()
        self.frames = 0

    def record(self, message: can.Message, channel: str, received: bool) -> None:
        """Write a copy of `message` as seen on bus `channel` (received or sent)."""
        copy = can.Message(
            timestamp=message.timestamp if received else time.time(),
            arbitration_id=message.arbitration_id,
            is_extended_id=message.is_extended_id,
            is_remote_frame=message.is_remote_frame,
            is_error_frame=message.is_error_frame,
            dlc=message.dlc,
            data=bytes(message.data),
            is_fd=message.is_fd,
            bitrate_switch=message.bitrate_switch,
            error_state_indicator=message.error_state_indicator,
            is_rx=received,
            channel=channel,
            check=False,
        )
        with self._lock:
            self._writer.on_message_received(copy)
            self.frames += 1

    def wrap(self, bus: can.BusABC, channel: str) -> RecordingBus:
        """`bus`, with everything it sends and receives recorded as channel `channel`."""
        return RecordingBus(bus, self, channel)

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._writer.stop()


class RecordingBus(can.BusABC):
    """A bus that records, in a :class:`TrafficLog`, what `inner` receives and what it sends.

    `inner` hands no frame back to its sender (:func:`modbatt.bus.transport.open_bus` takes the
    echoes of ``udp_multicast`` out), so each frame is recorded once, as on the wire.
    """

    def __init__(self, inner: can.BusABC, log: TrafficLog, channel: str, **kwargs: Any) -> None:
        self.inner = inner
        self.log = log
        self.log_channel = channel
        self.channel_info = f"recorded({inner.channel_info})"
        super().__init__(channel=channel, **kwargs)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        """Send through the inner bus, then record the frame as sent."""
        self.inner.send(msg, timeout)
        self.log.record(msg, self.log_channel, received=False)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        msg = self.inner.recv(timeout)
        if msg is not None:
            self.log.record(msg, self.log_channel, received=True)
        return msg, True  # the inner bus has applied its filters

    def _apply_filters(self, filters: can.typechecking.CanFilters | None) -> None:
        # Handed down: on SocketCAN a recorded bus keeps the kernel's filters (and records
        # what passes them, which is what its role receives).
        self.inner.set_filters(filters)

    def shutdown(self) -> None:
        """Shut the inner bus down too."""
        super().shutdown()
        self.inner.shutdown()


@contextmanager
def traffic_log(path: Path | None) -> Iterator[TrafficLog | None]:
    """A :class:`TrafficLog` at `path` for the length of the block (None: no log)."""
    if path is None:
        yield None
        return
    log = TrafficLog(path)
    try:
        yield log
    finally:
        log.close()
