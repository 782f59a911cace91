"""The control channel: typed request/response messages between two roles over ISO-TP.

Control messages (discovery, bootstrap, key delivery, handshakes, configuration) are JSON
objects with a ``type`` field, carried by a :class:`~modbatt.bus.isotp_link.MessageChannel`.
Before a link is upgraded they travel plain; once it is, they travel as sealed messages
(docs/PROTOCOL.md §4.4) under the link's session, and a plain control message is dropped and
counted unless its type is one that discovery and recovery need (``PLAIN_ALWAYS``): a pack
that lost its keys must still be able to say so, and an app must still be able to ask.

The first byte tells the two apart: ``{`` (0x7B) starts a plain JSON message, 0x04 a sealed one.

**Retries without double handling** (PROTOCOL.md §8a). A frame lost, duplicated or reordered
on the bus loses the whole ISO-TP message, so the requester retries (:func:`request`). Every
request carries a request id (``rid``) that stays the same across its retries; the responder
keeps its recent answers by request id (:class:`AnswerCache`) and answers a retry with the
answer it already gave instead of handling the request again, so a retried key delivery is
stored once and acknowledged with the same receipt. Answers echo the ``rid``, and the
requester takes only the answer to its own request: a late answer to an earlier attempt, or
to an earlier request, is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from modbatt import Gateway, compose_id, set_encrypted
from modbatt.bus.isotp_link import MessageChannel, TransferError
from modbatt.bus.transport import CanPort
from modbatt.errors import FrameRejectedError, ModbattError, SessionError

log = logging.getLogger("modbatt.protocol.control")

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


REQUEST_ID = "rid"
REQUEST_ID_PATTERN = re.compile(r"[0-9a-f]{1,32}")
ANSWER_CACHE_SIZE = 16  # answers kept per responder: more than any requester has in flight


def new_request_id() -> str:
    """A fresh request id: 64 random bits in hex."""
    return secrets.token_hex(8)


class AnswerCache:
    """A responder's recent answers by request id.

    A retried request is answered again rather than handled again: at-most-once handling over
    a channel that delivers at least once. A retry must be the same request: another message
    under a request id already answered (a reused id, or someone else's) is refused.
    """

    def __init__(self, size: int = ANSWER_CACHE_SIZE) -> None:
        self.size = size
        self._answers: OrderedDict[str, tuple[bytes, dict[str, Any]]] = OrderedDict()
        self.replayed = 0  # retries answered from the cache

    def respond(
        self,
        message: dict[str, Any],
        handle: Callable[[dict[str, Any]], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """The answer to `message`: from the cache for a retry, else from `handle(message)`.

        A request without a request id is handled every time; one with a malformed request
        id gets an error answer.
        """
        rid = message.get(REQUEST_ID)
        if rid is None:
            return handle(message)
        if not isinstance(rid, str) or not REQUEST_ID_PATTERN.fullmatch(rid):
            return error_answer(message["type"], "rid: 1 to 32 lowercase hex digits")
        digest = hashlib.sha256(encode(message)).digest()
        cached = self._answers.get(rid)
        if cached is not None:
            if cached[0] != digest:
                return error_answer(message["type"], "rid: already used for another request")
            self.replayed += 1
            self._answers.move_to_end(rid)
            return cached[1]
        answer = handle(message)
        if answer is None:
            return None
        answer = {**answer, REQUEST_ID: rid}
        self._answers[rid] = (digest, answer)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)
        return answer


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


# How long `recv` waits on one channel before it looks at the other. A wait on both at once
# (an event both channels set) was tried: under light bus faults it made ISO-TP transfers
# fail far more often than this, for a reason not yet found (test_faults_lifecycle.py).
POLL_S = 0.005


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
            if self._interrupted:
                self._interrupted = False
                return None
            left = max(0.0, deadline - time.monotonic())
            if self.secure is None:
                data = self.channel.recv(min(left, POLL_S))
            else:  # listen on both channels, a slice at a time
                piece = min(POLL_S, left)
                data = self.secure.recv(piece) or self.channel.recv(piece)
            if data is not None:
                message = self._accept(data)
                if message is not None:
                    return message
            if time.monotonic() >= deadline:
                return None

    def interrupt(self) -> None:
        """Make a `recv` that is waiting (or the next one) return None within POLL_S."""
        self._interrupted = True

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
