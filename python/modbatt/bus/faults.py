"""A python-can bus that drops, duplicates, reorders and delays what it sends, on purpose.

`FaultyBus` wraps a real bus for tests of the transfers (ISO-TP, key delivery, handshakes):
every fault is drawn from a seeded random generator, so a failing run can be replayed with
the same seed. Receiving is left untouched.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import can


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities (0..1) of each fault per frame sent, and the seed."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_s: float = 0.0
    delay: float = 0.0
    seed: int = 0
    hold_s: float = 0.02  # the longest a reordered frame waits for the next one


class FaultyBus(can.BusABC):
    """Sends through `inner`, with the faults of `plan`.

    A reordered frame is held back and goes out right after the next frame, or after
    `plan.hold_s` when no next frame comes: on a real bus a frame is late by a few frames,
    never forever. Sends from several threads are serialized, as a controller's mailbox is.
    """

    def __init__(self, inner: can.BusABC, plan: FaultPlan, **kwargs: Any) -> None:
        self.inner = inner
        self.plan = plan
        self.rng = random.Random(plan.seed)  # noqa: S311 (fault injection, not a secret)
        self.held: can.Message | None = None
        self.sent = self.dropped = self.duplicated = self.reordered = 0
        self.channel_info = f"faulty({inner.channel_info})"
        self._lock = threading.RLock()
        super().__init__(channel=f"faulty-{inner.channel_info}", **kwargs)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        """Send `msg`, perhaps not, twice, late or after the next one."""
        with self._lock:
            self.sent += 1
            roll = self.rng.random
            if roll() < self.plan.drop:
                self.dropped += 1
                return
            if roll() < self.plan.delay:
                time.sleep(self.plan.delay_s)
            if self.held is None and roll() < self.plan.reorder:
                self.held = msg  # goes out after the next frame, or when the hold runs out
                self.reordered += 1
                timer = threading.Timer(self.plan.hold_s, self._release, args=(msg,))
                timer.daemon = True
                timer.start()
                return
            self.inner.send(msg, timeout)
            if roll() < self.plan.duplicate:
                self.duplicated += 1
                self.inner.send(msg, timeout)
            if self.held is not None:
                held, self.held = self.held, None
                self.inner.send(held, timeout)

    def _release(self, msg: can.Message) -> None:
        with self._lock:
            if self.held is msg:
                self.held = None
                self.inner.send(msg)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        return self.inner.recv(timeout), True  # the inner bus has applied its filters

    def _apply_filters(self, filters: can.typechecking.CanFilters | None) -> None:
        self.inner.set_filters(filters)

    def shutdown(self) -> None:
        """Shut the inner bus down too."""
        super().shutdown()
        self.inner.shutdown()
