"""The control channel: typed request/response messages between two roles over ISO-TP.

Control messages (discovery, bootstrap, key delivery, handshakes, configuration) are JSON
objects with a ``type`` field, carried by a :class:`~modbatt.isotp_link.MessageChannel`.
Before a link is upgraded they travel plain; once it is, they travel as sealed messages
(docs/PROTOCOL.md §4.4) under the link's session, and a plain control message is dropped and
counted unless its type is one that discovery and recovery need (``PLAIN_ALWAYS``): a pack
that lost its keys must still be able to say so, and an app must still be able to ask.

The first byte tells the two apart: ``{`` (0x7B) starts a plain JSON message, 0x04 a sealed one.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from modbatt import Gateway, compose_id, set_encrypted
from modbatt.errors import FrameRejectedError, ModbattError, SessionError
from modbatt.isotp_link import MessageChannel
from modbatt.transport import CanPort

log = logging.getLogger("modbatt.control")

# App bus (CAN 1) control channel ids, node 0: the pack controller.
APP_TO_PACK = compose_id(0x460, 0)
PACK_TO_APP = compose_id(0x461, 0)
# Module bus (CAN 2) pairing channel ids, node = module id.
PACK_TO_MODULE_BASE = 0x530
MODULE_TO_PACK_BASE = 0x531

PLAIN_ALWAYS = frozenset(
    {"discover", "device_info", "handshake_init", "handshake_response", "handshake_finish", "error"}
)
"""Types accepted in plain even on an upgraded link: discovery and recovery need them."""


class MessageSealer(Protocol):
    """What seals control messages: a `Session`, or a gateway link (`GatewayLink`)."""

    def seal_message(self, stream: int, data: bytes) -> bytes:
        """Seal `data` on `stream`."""
        ...

    def open_message(self, stream: int, data: bytes) -> bytes:
        """Open `data` received on `stream`."""
        ...


@dataclass(frozen=True)
class GatewayLink:
    """A link's session that lives in a gateway, sealing and opening control messages too.

    The frame path needs the session in the gateway; control messages use it there.
    """

    gateway: Gateway
    link: int

    def seal_message(self, stream: int, data: bytes) -> bytes:
        """Seal with the link's session."""
        return self.gateway.seal_message(self.link, stream, data)

    def open_message(self, stream: int, data: bytes) -> bytes:
        """Open with the link's session."""
        return self.gateway.open_message(self.link, stream, data)


class ControlError(ModbattError):
    """A control message is malformed, or arrived where the link does not allow it."""


#: What handling a control message raises when one of its fields is missing, of the wrong JSON
#: type or out of range (key agreement and handshake errors included by their handlers): the
#: sender's mistake, answered with `error_answer`, never a crash of the serving thread.
MALFORMED_FIELD_ERRORS = (KeyError, ValueError, TypeError, OverflowError)


def error_answer(in_reply_to: str, reason: str) -> dict[str, Any]:
    """The `error` control message refusing a message of type `in_reply_to`."""
    return {"type": "error", "in_reply_to": in_reply_to, "reason": reason}


def encode(message: dict[str, Any]) -> bytes:
    """A plain control message's bytes."""
    if not isinstance(message.get("type"), str):
        raise ControlError("a control message needs a string 'type'")
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    """A plain control message from its bytes."""
    try:
        message = json.loads(data)
    except ValueError:
        raise ControlError("a control message is not valid JSON") from None
    except RecursionError:  # a few thousand '[' fit in one ISO-TP message
        raise ControlError("a control message is nested too deeply") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ControlError("a control message is a JSON object with a string 'type'")
    return message


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

    @classmethod
    def open(
        cls, port: CanPort, txid: int, rxid: int, *, timeout_s: float = 1.0
    ) -> ControlEndpoint:
        """Both channels of a control conversation on `port`.

        The plain ids, and the same ids with E set, on which sealed messages travel once the
        link is upgraded.
        """
        return cls(
            MessageChannel(port, txid, rxid, timeout_s=timeout_s),
            txid,
            rxid,
            secure=MessageChannel(
                port, set_encrypted(txid), set_encrypted(rxid), timeout_s=timeout_s
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
        while True:
            if self.secure is None:
                data = self.channel.recv(max(0.0, deadline - time.monotonic()))
            else:  # listen on both channels, a slice at a time
                piece = min(0.005, max(0.0, deadline - time.monotonic()))
                data = self.secure.recv(piece) or self.channel.recv(piece)
            if data is not None:
                message = self._accept(data)
                if message is not None:
                    return message
            if time.monotonic() >= deadline:
                return None

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
