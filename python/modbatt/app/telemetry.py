"""What the app hears on CAN 1: module telemetry bridged by the pack, its status and alerts.

Everything arrives sealed with the app link once it is up; the frame handler runs on the bus's
receiving thread and never raises: what it cannot open or read is dropped and counted by
reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from modbatt import Session, is_encrypted, logical_id
from modbatt.app.channel import PackChannel
from modbatt.app.link import AppLink
from modbatt.errors import FrameRejectedError, SessionError
from modbatt.protocol.catalogue import catalogue
from modbatt.protocol.status import (
    ALERT_BASE,
    STATUS_BASE,
    StatusFrameError,
    parse_alert,
    parse_pack_status,
)

log = logging.getLogger("modbatt.app.telemetry")

TELEMETRY_BASES = range(0x500, 0x510)  # module -> pack messages, bridged to the app


class Telemetry:
    """Opens, decodes and keeps what the pack sends the app; counts what it drops."""

    def __init__(self, channel: PackChannel, link: AppLink) -> None:
        self.channel = channel
        self.link = link
        self.values: dict[int, dict[str, dict[str, Any]]] = {}  # module -> message -> values
        self.frames = 0
        self.frames_by_module: Counter[int] = Counter()  # by the module id it names
        self.dropped: Counter[str] = Counter()
        self.pack_status: dict[str, int] = {}
        self.alerts: list[dict[str, int]] = []

    def on_frame(self, can_id: int, data: bytes, _timestamp: float = 0.0) -> None:
        """One frame from CAN 1 (sealed with the app link): open, decode, keep."""
        self.link.listening = True
        session = self.channel.session
        base = can_id >> 18
        if session is not None and base in (STATUS_BASE, ALERT_BASE) and is_encrypted(can_id):
            self._pack_frame(session, can_id, data)
            return
        if session is None or base not in TELEMETRY_BASES:
            return
        if not is_encrypted(can_id):
            self.dropped["downgrade"] += 1  # plain telemetry on an upgraded app bus
            return
        try:
            plain = session.open(can_id, data)
        except FrameRejectedError as exc:
            self.dropped[exc.reason] += 1
            return
        except SessionError:
            self.dropped["no_session"] += 1  # torn down: `connect` sets up a new one
            return
        if plain is None:
            return
        decoded = catalogue().decode(logical_id(can_id), plain)
        if decoded is not None:
            self.values.setdefault(decoded.node, {})[decoded.name] = decoded.values
            self.frames += 1
            self.frames_by_module[decoded.node] += 1

    def _pack_frame(self, session: Session, can_id: int, data: bytes) -> None:
        try:
            plain = session.open(can_id, data)
        except (FrameRejectedError, SessionError) as exc:
            self.dropped[getattr(exc, "reason", "no_session")] += 1
            return
        if plain is None:
            return
        try:
            if can_id >> 18 == STATUS_BASE:
                self.pack_status = parse_pack_status(plain)
                self.link.last_status_at = time.monotonic()
            else:
                self.alerts.append(parse_alert(plain))
        except StatusFrameError as exc:
            self.dropped["malformed"] += 1
            log.warning("%s (dropped)", exc)
