"""The pack controller: its states, its flash, and its side of the app bus control channel.

States and security levels, exactly as the seed defines them:

======  ====================  =========================================================
state   name                  when
======  ====================  =========================================================
1       Factory Default       no keys in flash (or the flash was found corrupt)
2       Bootstrap Complete    the app link's keys are in flash
3       Paired                and at least one module's pairing keys are in flash
4       Operational           and the app link and every paired module's link are up
======  ====================  =========================================================

Security level: 0 nothing encrypted, 1 CAN 1 (app link) encrypted, 2 CAN 2 (module links)
encrypted, 3 both. The level is what the links are doing now, not what is stored.

This module holds the pack's reaction to control messages (sans-I/O: a message in, a message
out) and its flash; :class:`PackControllerRuntime` binds it to the buses.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from modbatt import Gateway, LinkKey
from modbatt.bootstrap import (
    ACK_LABEL,
    DELIVERY_LABEL,
    Ephemeral,
    KeyAgreementError,
    delivery_keys,
    seal,
    unseal,
)
from modbatt.control import PLAIN_ALWAYS, ControlEndpoint, GatewayLink
from modbatt.handshake import HandshakeError, Responder
from modbatt.keystores import PackFlash, TypedStore, pack_flash
from modbatt.stores import AuditLog, StoreCorruptError

log = logging.getLogger("modbatt.pack")

APP_LINK = 0  # the gateway link number of the app session; modules use their module id


class PackState(IntEnum):
    """The pack controller's states (seed, Implementation States)."""

    FACTORY_DEFAULT = 1
    BOOTSTRAP_COMPLETE = 2
    PAIRED = 3
    OPERATIONAL = 4


@dataclass
class PackController:
    """The pack controller's control-message logic over its flash store."""

    serial: str
    state_dir: Path
    audit: AuditLog | None = None
    flash_store: TypedStore[PackFlash] = field(init=False)
    flash: PackFlash | None = field(init=False, default=None)
    flash_problem: str | None = field(init=False, default=None)
    gateway: Gateway = field(init=False, default_factory=Gateway)
    paired_links: set[int] = field(init=False, default_factory=set)  # module ids with a session

    def __post_init__(self) -> None:
        self.flash_store = pack_flash(self.state_dir)
        self._bootstrap: tuple[Ephemeral, str, bytes] | None = None
        self._handshake: Responder | None = None
        self.load_flash()

    # --- flash -------------------------------------------------------------------------

    def load_flash(self) -> None:
        """Read and verify the flash; corruption is reported and means factory state."""
        try:
            self.flash = self.flash_store.load()
            self.flash_problem = "; ".join(self.flash_store.damaged) or None
        except StoreCorruptError as exc:
            self.flash, self.flash_problem = None, str(exc)
            self._audit("flash.corrupt", problem=str(exc))
            log.error("flash store corrupt: %s (key recovery needed)", exc)

    def _audit(self, event: str, **fields: str | int | bool | None) -> None:
        if self.audit is not None:
            self.audit.record(event, role="pack", serial=self.serial, **fields)

    # --- state ---------------------------------------------------------------------------

    @property
    def state(self) -> PackState:
        """The current state (see the module docstring)."""
        if self.flash is None:
            return PackState.FACTORY_DEFAULT
        if not self.flash.modules:
            return PackState.BOOTSTRAP_COMPLETE
        all_up = self.app_link_up and len(self.module_links()) >= len(self.flash.modules)
        return PackState.OPERATIONAL if all_up else PackState.PAIRED

    @property
    def app_link_up(self) -> bool:
        """Whether the app link has a session (CAN 1 encrypted)."""
        return self.gateway.has_session(APP_LINK)

    def module_links(self) -> list[int]:
        """The module ids whose link has a session (CAN 2 encrypted for them)."""
        return [m for m in sorted(self.paired_links) if self.gateway.has_session(m)]

    def app_sealer(self) -> GatewayLink | None:
        """What seals control messages to the app: the app link's session, in the gateway."""
        return GatewayLink(self.gateway, APP_LINK) if self.app_link_up else None

    @property
    def security_level(self) -> int:
        """0 none, 1 CAN 1 encrypted, 2 CAN 2 encrypted, 3 both."""
        return (1 if self.app_link_up else 0) | (2 if self.module_links() else 0)

    def device_info(self) -> dict[str, Any]:
        """What discovery reports."""
        return {
            "type": "device_info",
            "serial": self.serial,
            "component_id": None if self.flash is None else self.flash.pack_component_id,
            "registered": self.flash is not None,
            "state": int(self.state),
            "state_name": self.state.name.replace("_", " ").title(),
            "security_level": self.security_level,
            "links": {"can1": self.app_link_up, "can2": bool(self.module_links())},
            "capabilities": {"max_modules": 31, "can_fd": False, "protocol": 1},
            "paired_modules": 0 if self.flash is None else len(self.flash.modules),
            "flash_problem": self.flash_problem,
        }

    def app_link(self) -> LinkKey:
        """The app link's key, rebuilt from flash."""
        if self.flash is None:
            raise HandshakeError("no keys in flash: the pack is in factory state")
        return LinkKey(
            bytes.fromhex(self.flash.pack_device_key_half),
            self.flash.pack_component_id,
            bytes.fromhex(self.flash.app_device_key_half),
            self.flash.app_component_id,
            bytes.fromhex(self.flash.app_link_dh_secret),
        )

    # --- control messages ----------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """React to one control message from the app; returns the answer, if any."""
        kind = message["type"]
        try:
            if kind == "discover":
                return self.device_info()
            if kind == "bootstrap_hello":
                return self._bootstrap_hello(message)
            if kind == "key_delivery":
                return self._key_delivery(message)
            if kind == "handshake_init":
                return self._handshake_init(message)
            if kind == "handshake_finish":
                return self._handshake_finish(message)
        except (KeyAgreementError, HandshakeError, KeyError, ValueError) as exc:
            self._audit("control.refused", message=kind, reason=str(exc))
            return {"type": "error", "in_reply_to": kind, "reason": str(exc)}
        return {"type": "error", "in_reply_to": kind, "reason": "unknown or unexpected message"}

    def _bootstrap_hello(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.flash is not None:
            raise KeyAgreementError("already bootstrapped: a factory reset comes first")
        ephemeral = Ephemeral()
        app_public = bytes.fromhex(message["public_key"])
        shared = ephemeral.shared_secret(app_public)
        self._bootstrap = (ephemeral, str(message["app_id"]), shared)
        self._app_public = app_public
        return {
            "type": "bootstrap_hello_ack",
            "public_key": ephemeral.public.hex(),
            "serial": self.serial,
        }

    def _key_delivery(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._bootstrap is None:
            raise KeyAgreementError("key delivery without a bootstrap hello")
        ephemeral, app_id, shared = self._bootstrap
        keys = delivery_keys(shared, app_id, self.serial, self._app_public, ephemeral.public)
        payload = unseal(keys.delivery, DELIVERY_LABEL, bytes.fromhex(message["sealed"]))
        record = PackFlash(
            pack_component_id=payload["pack_component_id"],
            pack_device_key_half=payload["pack_device_key_half"],
            pack_lct_key_half=payload["pack_lct_key_half"],
            app_device_key_half=payload["app_device_key_half"],
            app_component_id=payload["app_component_id"],
            lct_id=payload["lct_id"],
            configuration=payload.get("configuration", {}),
            app_link_dh_secret=shared.hex(),
        )
        self.flash_store.save(record)
        self.flash, self.flash_problem, self._bootstrap = record, None, None
        link = self.app_link()
        self._audit(
            "keys.stored",
            link=link.fingerprint,
            lct_id=record.lct_id,
            app=record.app_component_id,
            pack=record.pack_component_id,
        )
        ack = seal(keys.acknowledgement, ACK_LABEL, {"status": "stored", "link": link.fingerprint})
        return {"type": "key_ack", "sealed": ack.hex()}

    def _handshake_init(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.flash is None:
            raise HandshakeError("no keys in flash: the pack is in factory state")
        self.gateway.remove_session(APP_LINK)  # a new handshake replaces the session
        self._handshake = Responder(
            self.app_link(), self.flash.pack_component_id, self.flash.app_component_id
        )
        response = self._handshake.on_init(bytes.fromhex(message["data"]))
        return {"type": "handshake_response", "data": response.hex()}

    def _handshake_finish(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._handshake is None:
            raise HandshakeError("FINISH without INIT")
        self.gateway.install_session(
            APP_LINK, self._handshake.on_finish(bytes.fromhex(message["data"]))
        )
        self._handshake = None
        self._audit("session.established", link="app", level=self.security_level)
        return {"type": "upgraded", "security_level": self.security_level, "state": int(self.state)}


class PackControllerRuntime:
    """Serve the control channel from a thread: receive, handle, answer."""

    def __init__(self, controller: PackController, endpoint: ControlEndpoint) -> None:
        self.controller = controller
        self.endpoint = endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pack-control", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.endpoint.recv(0.1)
            if message is None:
                continue
            answered_sealed = self.endpoint.last_sealed
            answer = self.controller.handle(message)
            # The session that the answer travels under: a handshake answer goes plain (the
            # old session is being replaced), "upgraded" goes under the new one.
            self.endpoint.session = self.controller.app_sealer()
            if answer is None:
                continue
            plain = not answered_sealed and answer["type"] in PLAIN_ALWAYS
            self.endpoint.send(answer, plain=plain or self.endpoint.session is None)

    def start(self) -> PackControllerRuntime:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._stop.set()
        self._thread.join(timeout=5)
