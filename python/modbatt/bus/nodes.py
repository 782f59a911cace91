"""Running sans-I/O nodes on a bus.

The module simulator and the pack controller's module side are state machines with two entry
points, ``on_frame(id, data, now)`` and ``tick(now)``, each returning the frames to send; they
never touch a bus or a clock. :class:`NodeLoop` binds them to one
:class:`~modbatt.bus.transport.CanPort`: every received frame goes to every node, every node is
ticked, and what they return is sent.
Tests drive the same nodes without threads, on virtual time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from modbatt.bus.transport import ALL_IDS, CanPort, IdFilter, from_message

log = logging.getLogger("modbatt.bus.nodes")

Frames = list[tuple[int, bytes]]


class Node(Protocol):
    """A sans-I/O participant on a bus."""

    def on_frame(self, can_id: int, data: bytes, now: float) -> Frames:
        """React to a received frame; returns the frames to send."""
        ...

    def tick(self, now: float) -> Frames:
        """Advance to `now`; returns the frames due (periodic messages, timeouts)."""
        ...


class NodeLoop:
    """One thread that drives `nodes` from `port`: receive, dispatch, tick, send."""

    def __init__(
        self,
        port: CanPort,
        nodes: Sequence[Node],
        tick_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        after_step: Callable[[], None] | None = None,
        ids: IdFilter = ALL_IDS,
    ) -> None:
        self.port = port
        self.nodes = list(nodes)
        self.tick_s = tick_s
        self.clock = clock
        self.after_step = after_step
        self._reader = port.reader(ids)  # `ids`: only the frames these nodes want
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()  # held while nodes change: readers take it to snapshot

    def step(self, timeout: float) -> None:
        """Wait up to `timeout` for frames, dispatch all that are queued, then tick."""
        message = self._reader.get_message(timeout=timeout)
        out: Frames = []
        # The lock guards the nodes' state only; the frames go out after it is released, so
        # a reader of that state (the pack's gateway tap) never waits for a bus send.
        with self.lock:
            while message is not None:
                try:
                    can_id, data = from_message(message)
                except ValueError:
                    can_id = -1
                if can_id >= 0:
                    now = self.clock()
                    for node in self.nodes:
                        out += self._guarded(node.on_frame, can_id, data, now)
                message = self._reader.get_message(timeout=0)
            now = self.clock()
            for node in self.nodes:
                out += self._guarded(node.tick, now)
        self._send(out)
        if self.after_step is not None:
            self.after_step()

    def _guarded(self, call: Callable[..., Frames], *args: object) -> Frames:
        """A node's reaction; an error in one node is logged, never the end of the loop."""
        try:
            return call(*args)
        except Exception:  # one node's bug must not stop the bus for the others
            log.exception("node %r failed", call)
            return []

    def send(self, frames: Frames) -> None:
        """Send frames made outside the loop (an operator's command), from any thread."""
        self._send(frames)

    def _send(self, frames: Frames) -> None:
        for can_id, data in frames:
            try:
                self.port.send(can_id, data)
            except Exception as exc:  # a bus error must not stop the loop
                log.warning("send 0x%08X on %s failed: %s", can_id, self.port.name, exc)

    def run(self) -> None:
        """Step until `stop()` is called."""
        while not self._stop.is_set():
            self.step(self.tick_s)

    def start(self) -> NodeLoop:
        """Run in a background thread."""
        self._thread = threading.Thread(
            target=self.run, name=f"nodes:{self.port.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.port.unsubscribe(self._reader)
