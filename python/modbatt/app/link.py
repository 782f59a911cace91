"""The app link: its key, the session handshake, and keeping it up (seed "Channel upgrade").

``connect`` runs the handshake that proves both ends hold the link key and checks the upgraded
channel; no key crosses the bus. The pack seals a status frame once a second: silence for
LINK_SILENCE_S means its end of the session is gone (torn down by forgeries, or the pack
restarted), and the link keeper runs the handshake again, without an operator.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from modbatt import LinkKey, Session
from modbatt.app.errors import AppError
from modbatt.app.parts import AppParts
from modbatt.errors import ModbattError
from modbatt.protocol.handshake import HandshakeError, Initiator
from modbatt.state.keystores import AppKeys, app_link_key

log = logging.getLogger("modbatt.app.link")

LINK_SILENCE_S = 3.5  # three missed status frames (one a second) and a half: the link is gone


class AppLink:
    """The app link's key, its handshake and whether the pack still seals on it."""

    def __init__(self, parts: AppParts) -> None:
        self.parts = parts
        self.connected_at: float | None = None  # monotonic time of the last handshake
        self.last_status_at: float | None = None  # monotonic time of the last sealed status
        self.listening = False  # whether the bus's frames are fed to the app

    def key(self) -> LinkKey:
        """The app link's key, rebuilt from the keystore."""
        keys = self.parts.keystore.load()
        link = None if keys is None else app_link_key(keys)
        if link is None:
            raise AppError("no app link keys in the keystore: bootstrap first")
        return link

    def connect(self) -> dict[str, Any]:
        """Run the session handshake and check the upgraded channel (the communication test)."""
        keys = self.parts.keystore.load()
        assert keys is not None and keys.app_component_id and keys.pack_component_id
        self.parts.channel.session = None
        self.last_status_at = None  # the new session's status frames are due from now
        with self.parts.progress.waiting("the channel upgrade (session handshake)"):
            return self._handshake(keys)

    def _handshake(self, keys: AppKeys) -> dict[str, Any]:
        assert keys.app_component_id and keys.pack_component_id
        parts, channel = self.parts, self.parts.channel
        initiator = Initiator(self.key(), keys.app_component_id, keys.pack_component_id)
        response = parts.ask(
            {"type": "handshake_init", "data": initiator.start().hex()},
            "handshake_response",
            plain=True,
        )
        try:
            finish, session = initiator.on_response(bytes.fromhex(response["data"]))
        except HandshakeError as exc:
            raise AppError(f"handshake_init: {exc}") from None
        channel.session = session  # the answer must come sealed under the new session
        try:
            answer = parts.ask(
                {"type": "handshake_finish", "data": finish.hex()}, "upgraded", plain=True
            )
        except AppError as exc:
            channel.session = None
            raise AppError(f"connect: the upgraded channel did not answer: {exc}") from None
        self.connected_at = time.monotonic()
        parts.record(
            "session.established", link=self.key().fingerprint, level=int(answer["security_level"])
        )
        return answer

    def up(self, step: str) -> Session:
        """The link's session, connecting first when the app holds delivered keys but none.

        AppError when it holds no keys for a pack.
        """
        channel = self.parts.channel
        if channel.session is None:
            keys = self.parts.keystore.load()
            if keys is None or keys.lct_id is None or not keys.delivered:
                raise AppError(f"{step}: bootstrap first (the app holds no keys for a pack)")
            self.connect()
        if channel.session is None:  # connect raises when it fails; this is for the type checker
            raise AppError(f"{step}: the link is not up")
        return channel.session

    def silent(self) -> bool:
        """Whether the link is up on our side but the pack's sealed status frames stopped.

        Silence for LINK_SILENCE_S, counted from the last status frame or from the handshake.
        An app that does not listen to the bus cannot tell, and never calls its link silent.
        """
        if self.parts.channel.session is None or not self.listening or self.connected_at is None:
            return False
        since = self.connected_at if self.last_status_at is None else self.last_status_at
        return time.monotonic() - since > LINK_SILENCE_S

    def keep(self) -> bool:
        """Run the handshake again when the link went silent; True when it did.

        AppError when the pack does not answer (the next call tries again).
        """
        if not self.silent():
            return False
        log.warning("no status from the pack for %.0f s: re-establishing the link", LINK_SILENCE_S)
        self.parts.record("link.silent", silent_ms=int(LINK_SILENCE_S * 1000))
        self.connect()
        return True

    def start_keeper(self, interval_s: float = 1.0) -> threading.Event:
        """Call `keep` every `interval_s` from a thread; set the returned event to stop."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval_s):
                try:
                    self.keep()
                except ModbattError as exc:
                    log.warning("link not re-established yet: %s", exc)

        threading.Thread(target=run, name="app-link-keeper", daemon=True).start()
        return stop
