"""The pack's side of the app bus control channel: one rule for every message, and its thread.

:class:`ControlHandlers` answers a control message (sans I/O): a pack that holds keys takes
plain only what discovery and the handshake need, a handler's refusal becomes an error answer,
and an unknown message gets one too. :class:`ControlServer` runs it on the channel's end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.isotp_link import TransferError
from modbatt.pack.keys import PackKeys
from modbatt.protocol.control import (
    MALFORMED_FIELD_ERRORS,
    PLAIN_ALWAYS,
    AnswerCache,
    MessageSealer,
    error_answer,
)
from modbatt.protocol.handshake import HandshakeError

log = logging.getLogger("modbatt.pack.control")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
"""Answers one kind of control message; raises (a malformed field, a refusal) to refuse it."""


class ControlHandlers:
    """What the pack answers to each control message: `handlers` by type, under one policy."""

    def __init__(self, keys: PackKeys, handlers: Mapping[str, Handler]) -> None:
        self.keys = keys
        self.handlers = dict(handlers)

    def handle(self, message: dict[str, Any], *, sealed: bool = True) -> dict[str, Any] | None:
        """React to one control message from the app; returns the answer, if any.

        `sealed` says whether it came sealed with the app link. A pack that holds keys takes
        plain only what discovery and the handshake need (PLAIN_ALWAYS): after a restart, until
        the app's handshake, its endpoint has no session and would otherwise take any plain
        request (a pairing with a stranger's keys, a new configuration) from anyone on CAN 1.
        """
        kind = message["type"]
        if not sealed and self.keys.flash is not None and kind not in PLAIN_ALWAYS:
            self.keys.record("control.refused", message=kind, reason="plain")
            return error_answer(
                kind, "a pack with keys takes this only sealed: run the session handshake first"
            )
        handler = self.handlers.get(kind)
        if handler is None:
            return error_answer(kind, "unknown or unexpected message")
        try:
            return handler(message)
        except (HandshakeError, *MALFORMED_FIELD_ERRORS) as exc:  # KeyAgreementError: ValueError
            self.keys.record("control.refused", message=kind, reason=str(exc))
            return error_answer(kind, str(exc))


class ControlServer:
    """Serve a control channel from a thread: receive, let `handlers` answer, send the answer.

    `sealer` is what seals the answers now (None while the link has no session).
    """

    def __init__(
        self,
        endpoint: ControlEndpoint,
        handlers: ControlHandlers,
        sealer: Callable[[], MessageSealer | None],
    ) -> None:
        self.endpoint = endpoint
        self.handlers = handlers
        self._sealer = sealer
        self.answers = AnswerCache()  # a retried request gets the answer it already got
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pack-control", daemon=True)

    def _handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self.handlers.handle(message, sealed=self.endpoint.last_sealed)
        except Exception:  # a bug must not leave the pack deaf to the app
            log.exception("control message %r failed", message.get("type"))
            return error_answer(message["type"], "internal")

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.endpoint.recv(1.0)  # wakes per message; `stop` wakes it too
            if message is None:
                continue
            answered_sealed = self.endpoint.last_sealed
            answer = self.answers.respond(message, self._handle)
            # The session that the answer travels under: a handshake answer goes plain (the
            # old session is being replaced), "upgraded" goes under the new one.
            self.endpoint.session = self._sealer()
            if answer is None:
                continue
            plain = not answered_sealed and answer["type"] in PLAIN_ALWAYS
            try:
                self.endpoint.send(answer, plain=plain or self.endpoint.session is None)
            except TransferError as exc:  # lost on the bus: the app's retry gets it again
                log.info("answer %r not sent: %s", answer["type"], exc)

    def start(self) -> ControlServer:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._stop.set()
        self.endpoint.interrupt()
        self._thread.join(timeout=5)
