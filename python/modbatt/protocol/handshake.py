"""The session handshake: fresh nonces from both ends, and proof that both hold the link key.

This is the seed's "communication test", done before any encrypted traffic flows. Three
messages, carried over ISO-TP or CAN FD as opaque bytes (version 1)::

    INIT      A -> B   0x01 ‖ 0x01 ‖ nonce_A (16)
    RESPONSE  B -> A   0x01 ‖ 0x02 ‖ nonce_B (16) ‖ confirm_B (16)
    FINISH    A -> B   0x01 ‖ 0x03 ‖ confirm_A (16)

``confirm_X = LinkKey.confirmation(X, peer, nonce_X, nonce_peer)`` (docs/PROTOCOL.md §2.3):
B's proves it holds the key and saw A's fresh nonce, A's proves the same the other way, so
neither can be replayed from an earlier handshake or reflected back to its sender. Each end
builds its :class:`~modbatt.Session` only once the other end's confirmation verified; a
failed check raises :class:`HandshakeError` and leaves no session behind.

The state machines here are sans-I/O: they take and return bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from modbatt import LinkKey, Session
from modbatt.errors import ModbattError

VERSION = 1
INIT, RESPONSE, FINISH = 1, 2, 3
NONCE_LEN = 16
CONFIRM_LEN = 16


class HandshakeError(ModbattError):
    """The handshake failed.

    A malformed message, a step out of order, or a confirmation that does not verify (the
    peer does not hold the same link key).
    """


def _fresh_nonce(random_bytes: Callable[[int], bytes]) -> bytes:
    nonce = random_bytes(NONCE_LEN)
    if len(nonce) != NONCE_LEN or not any(nonce):
        raise HandshakeError("the random source returned an unusable nonce")
    return nonce


def _parse(message: bytes, kind: int, length: int) -> bytes:
    if len(message) != 2 + length or message[0] != VERSION or message[1] != kind:
        raise HandshakeError(
            f"expected handshake message {kind} of {2 + length} bytes (version {VERSION}), "
            f"got {len(message)} bytes starting {message[:2].hex() or '(empty)'}"
        )
    return message[2:]


@dataclass
class Initiator:
    """The end that starts the handshake (the app towards the pack, the pack towards a module)."""

    link: LinkKey
    local_id: str
    peer_id: str
    random_bytes: Callable[[int], bytes] = os.urandom
    nonce: bytes = field(init=False, default=b"")

    def start(self) -> bytes:
        """The INIT message."""
        self.nonce = _fresh_nonce(self.random_bytes)
        return bytes([VERSION, INIT]) + self.nonce

    def on_response(self, message: bytes) -> tuple[bytes, Session]:
        """Check the RESPONSE; returns the FINISH message and the new session."""
        if not self.nonce:
            raise HandshakeError("RESPONSE before INIT")
        body = _parse(message, RESPONSE, NONCE_LEN + CONFIRM_LEN)
        peer_nonce, confirm = body[:NONCE_LEN], body[NONCE_LEN:]
        if peer_nonce == self.nonce:
            raise HandshakeError("the peer echoed our nonce (a reflection)")
        if not self.link.verify_confirmation(
            self.peer_id, self.local_id, peer_nonce, self.nonce, confirm
        ):
            raise HandshakeError(f"{self.peer_id} does not hold the link key (confirmation failed)")
        finish = self.link.confirmation(self.local_id, self.peer_id, self.nonce, peer_nonce)
        session = Session(self.link, self.local_id, self.peer_id, self.nonce, peer_nonce)
        self.nonce = b""  # one handshake, one session
        return bytes([VERSION, FINISH]) + finish, session


@dataclass
class Responder:
    """The end that answers a handshake."""

    link: LinkKey
    local_id: str
    peer_id: str
    random_bytes: Callable[[int], bytes] = os.urandom
    nonce: bytes = field(init=False, default=b"")
    peer_nonce: bytes = field(init=False, default=b"")

    def on_init(self, message: bytes) -> bytes:
        """Answer an INIT with our nonce and confirmation (a new INIT restarts the handshake)."""
        peer_nonce = _parse(message, INIT, NONCE_LEN)
        if not any(peer_nonce):
            raise HandshakeError("an all-zero nonce")
        self.peer_nonce = peer_nonce
        self.nonce = _fresh_nonce(self.random_bytes)
        confirm = self.link.confirmation(self.local_id, self.peer_id, self.nonce, peer_nonce)
        return bytes([VERSION, RESPONSE]) + self.nonce + confirm

    def on_finish(self, message: bytes) -> Session:
        """Check FINISH; returns the new session."""
        if not self.nonce:
            raise HandshakeError("FINISH before INIT")
        confirm = _parse(message, FINISH, CONFIRM_LEN)
        if not self.link.verify_confirmation(
            self.peer_id, self.local_id, self.peer_nonce, self.nonce, confirm
        ):
            raise HandshakeError(f"{self.peer_id} does not hold the link key (confirmation failed)")
        session = Session(self.link, self.local_id, self.peer_id, self.nonce, self.peer_nonce)
        self.nonce = self.peer_nonce = b""
        return session
