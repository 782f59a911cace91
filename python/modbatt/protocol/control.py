"""The control channel: typed request/response messages between two roles over ISO-TP.

Control messages (discovery, bootstrap, key delivery, handshakes, configuration) are JSON
objects with a ``type`` field, carried over ISO-TP by a control channel's end
(:class:`~modbatt.bus.control_channel.ControlEndpoint`). Before a link is upgraded they travel
plain; once it is, they travel as sealed messages (docs/PROTOCOL.md §4.4) under the link's
session, and a plain control message is dropped and counted unless its type is one that
discovery and recovery need (``PLAIN_ALWAYS``): a pack that lost its keys must still be able to
say so, and an app must still be able to ask.

The first byte tells the two apart: ``{`` (0x7B) starts a plain JSON message, 0x04 a sealed one.

**Retries without double handling** (PROTOCOL.md §8a). A frame lost, duplicated or reordered on
the bus loses the whole ISO-TP message, so the requester retries
(:func:`modbatt.bus.control_channel.request`). Every request carries a request id (``rid``) that
stays the same across its retries; the responder keeps its recent answers by request id
(:class:`AnswerCache`) and answers a retry with the answer it already gave instead of handling
the request again, so a retried key delivery is stored once and acknowledged with the same
receipt. Answers echo the ``rid``, and the requester takes only the answer to its own request: a
late answer to an earlier attempt, or to an earlier request, is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from modbatt import Gateway, compose_id
from modbatt.errors import ModbattError

log = logging.getLogger("modbatt.protocol.control")

# App bus (CAN 1) control channel ids, node 0: the pack controller.
APP_TO_PACK = compose_id(0x460, 0)
PACK_TO_APP = compose_id(0x461, 0)

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
