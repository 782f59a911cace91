"""A control channel's end on a bus: control messages over ISO-TP, plain or sealed.

The messages themselves, their encoding, request ids and the answer cache are the protocol
layer's (:mod:`modbatt.protocol.control`); this is their I/O: a
:class:`~modbatt.bus.isotp_link.MessageChannel` per direction and the requester's retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modbatt import set_encrypted
from modbatt.bus.isotp_link import MessageChannel, TransferError
from modbatt.bus.transport import CanPort
from modbatt.errors import FrameRejectedError, SessionError
from modbatt.protocol.control import (
    PLAIN_ALWAYS,
    REQUEST_ID,
    ControlError,
    MessageSealer,
    decode,
    encode,
    new_request_id,
)

log = logging.getLogger("modbatt.bus.control_channel")


def request(
    endpoint: ControlEndpoint,
    message: dict[str, Any],
    *,
    attempts: int,
    timeout_s: float,
    plain: bool = False,
    give_up: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """Send `message` with a request id and wait for the answer to it, retrying on silence.

    `give_up` is asked while waiting (every 0.25 s at least): when it says so, the request is
    abandoned early, as if no attempt had been answered (the app's link went silent: the
    pack restarted, and no answer will come under this session).

    Returns the answer to this request (its request id removed) or None when `attempts`
    attempts of `timeout_s` each went unanswered. The message is sealed anew for each attempt, so a
    retry is never a replay.
    """
    rid = message.get(REQUEST_ID) or new_request_id()
    message = {**message, REQUEST_ID: rid}
    for attempt in range(attempts):
        if attempt:
            log.info("%s: no answer in %.1f s, retrying (%d)", message["type"], timeout_s, attempt)
        try:
            endpoint.send(message, plain=plain)
        except TransferError as exc:  # a flow control frame lost: this attempt failed
            log.info("%s: %s", message["type"], exc)
            endpoint.dropped["send_failed"] += 1
            continue
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if give_up is not None and give_up():
                return None
            answer = endpoint.recv(left if give_up is None else min(left, 0.25))
            if answer is None:
                if give_up is None or time.monotonic() >= deadline:
                    break
                continue
            if answer.pop(REQUEST_ID, None) == rid:
                return answer  # the request id is the channel's business, not the caller's
            endpoint.dropped["stale_answer"] += 1  # an earlier request's, or a duplicate
    return None


@dataclass
class ControlEndpoint:
    """One end of a control channel; `session` is set once the link is upgraded."""

    channel: MessageChannel
    stream: int  # the logical id our sealed messages are bound to (our transmit id)
    peer_stream: int  # the peer's
    session: MessageSealer | None = None
    secure: MessageChannel | None = None  # the same ids with E set: sealed messages go here
    dropped: Counter[str] = field(default_factory=Counter)
    last_sealed: bool = False  # whether the last accepted message came sealed
    _interrupted: bool = field(default=False, init=False, repr=False)  # see `interrupt`

    def __post_init__(self) -> None:
        if self.secure is not None and self.secure.arrived is not self.channel.arrived:
            # `recv` sleeps on one event: a message on a channel that does not set it would
            # wait unseen until the next one on the other channel
            raise ValueError("an endpoint's two channels must share one arrival event")

    @classmethod
    def open(
        cls, port: CanPort, txid: int, rxid: int, *, timeout_s: float = 1.0
    ) -> ControlEndpoint:
        """Both channels of a control conversation on `port`.

        The plain ids, and the same ids with E set, on which sealed messages travel once the
        link is upgraded. Both set one arrival event, which `recv` waits on.
        """
        arrived = threading.Event()
        return cls(
            MessageChannel(port, txid, rxid, timeout_s=timeout_s, arrived=arrived),
            txid,
            rxid,
            secure=MessageChannel(
                port,
                set_encrypted(txid),
                set_encrypted(rxid),
                timeout_s=timeout_s,
                arrived=arrived,
            ),
        )

    def close(self) -> None:
        """Stop both ISO-TP stacks (the port stays open)."""
        self.channel.close()
        if self.secure is not None:
            self.secure.close()

    def send(self, message: dict[str, Any], *, plain: bool = False) -> None:
        """Send a message: sealed when the link is upgraded.

        `plain` sends it unsealed anyway, which only the PLAIN_ALWAYS types may.
        """
        data = encode(message)
        if self.session is not None and not plain:
            (self.secure or self.channel).send(self.session.seal_message(self.stream, data))
            return
        if self.session is not None and message["type"] not in PLAIN_ALWAYS:
            raise ControlError(f"{message['type']!r} may not travel plain on an upgraded link")
        self.channel.send(data)

    def recv(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next acceptable message, or None when none arrives in time.

        Sealed messages are opened with the session; plain ones are accepted before the
        upgrade, and after it only for PLAIN_ALWAYS types. Everything else is dropped and
        counted in `dropped` by reason.
        """
        wait = self.channel.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait
        channels = [c for c in (self.secure, self.channel) if c is not None]
        arrived = self.channel.arrived
        while True:
            if self._interrupted:
                self._interrupted = False
                return None
            # Clear, look at both channels, and sleep only when both are empty: a message
            # that completes after the look sets the event again. The thread wakes once per
            # message, not every few milliseconds.
            arrived.clear()
            data = next((d for c in channels if (d := c.recv(0)) is not None), None)
            if data is not None:
                message = self._accept(data)
                if message is not None:
                    return message
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            arrived.wait(left)

    def interrupt(self) -> None:
        """Make a `recv` that is waiting (or the next one) return None at once."""
        self._interrupted = True
        self.channel.arrived.set()

    def _accept(self, data: bytes) -> dict[str, Any] | None:
        if data[:1] == b"\x04":
            if self.session is None:
                self.dropped["no_session"] += 1
                return None
            try:
                message = decode(self.session.open_message(self.peer_stream, data))
                self.last_sealed = True
                return message
            except FrameRejectedError as exc:
                self.dropped[exc.reason] += 1
                return None
            except SessionError:  # torn down by the failure budget: a new handshake is needed
                self.dropped["no_session"] += 1
                return None
            except ControlError:
                self.dropped["malformed"] += 1
                return None
        try:
            message = decode(data)
        except ControlError:
            self.dropped["malformed"] += 1
            return None
        if self.session is not None and message["type"] not in PLAIN_ALWAYS:
            self.dropped["downgrade"] += 1
            log.warning("plain %r dropped on an upgraded link", message["type"])
            return None
        self.last_sealed = False
        return message
