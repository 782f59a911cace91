"""The pack's keys: its states, its flash, the bootstrap and the app link's handshake (sans I/O).

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

Seed Workflows "Bootstrap" and "Key recovery" on the pack's side: a factory-default pack
answers ``bootstrap_hello`` with its X25519 share and stores the halves a ``key_delivery``
brings (sealed under the exchange's keys), then proves the link key in the handshake that
installs the app link's session in the gateway. Recovery is the same bootstrap after the flash
was lost. :class:`~modbatt.pack.controller.PackController` serves it on the buses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from modbatt import Gateway, LinkKey
from modbatt.protocol.bootstrap import (
    ACK_LABEL,
    DELIVERY_LABEL,
    Ephemeral,
    KeyAgreementError,
    delivery_keys,
    seal,
    unseal,
)
from modbatt.protocol.control import GatewayLink
from modbatt.protocol.handshake import HandshakeError, Responder
from modbatt.state.keystores import PackFlash, TypedStore, pack_app_link_key, pack_flash
from modbatt.state.stores import AuditLog, StoreCorruptError

log = logging.getLogger("modbatt.pack.keys")

APP_LINK = 0  # the gateway link number of the app session; modules use their module id


class PackState(IntEnum):
    """The pack controller's states (seed, Implementation States)."""

    FACTORY_DEFAULT = 1
    BOOTSTRAP_COMPLETE = 2
    PAIRED = 3
    OPERATIONAL = 4


def no_modules() -> list[dict[str, Any]]:
    """The module table of a pack without a module side (the default `modules_view`)."""
    return []


def no_buses() -> dict[str, dict[str, int]]:
    """The bus losses of a pack without buses (the default `bus_losses`)."""
    return {}


@dataclass
class PackKeys:
    """The pack's keys and what they make of it, sans I/O: a control message in, an answer out.

    Its flash store (keys, configuration, paired modules), its state and security level, the
    bootstrap (hello, sealed key delivery) and the app link's handshake. The sessions live in
    `gateway` (link 0 = the app, link m = module m). `modules_view` is the module table that
    discovery reports, given by whoever has a module side; `bus_losses` what each bus lost
    below the frame path (`CanPort.losses`), given by whoever has the buses.
    """

    serial: str
    state_dir: Path
    audit: AuditLog | None = None
    modules_view: Callable[[], list[dict[str, Any]]] = no_modules
    bus_losses: Callable[[], dict[str, dict[str, int]]] = no_buses
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
            self.record("flash.corrupt", problem=str(exc))
            log.error("flash store corrupt: %s (key recovery needed)", exc)

    def record(self, event: str, **fields: str | int | bool | None) -> None:
        """An entry in the pack's audit log (when it keeps one)."""
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
            "modules": self.modules_view(),
            "gateway": self.gateway.stats(),
            "bus_losses": self.bus_losses(),
            "flash_problem": self.flash_problem,
        }

    def app_link(self) -> LinkKey:
        """The app link's key, rebuilt from flash."""
        if self.flash is None:
            raise HandshakeError("no keys in flash: the pack is in factory state")
        return pack_app_link_key(self.flash)

    # --- control messages ----------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """What it answers: discovery, the bootstrap and the app link's handshake."""
        return {
            "discover": lambda _message: self.device_info(),
            "bootstrap_hello": self._bootstrap_hello,
            "key_delivery": self._key_delivery,
            "handshake_init": self._handshake_init,
            "handshake_finish": self._handshake_finish,
        }

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
        self.record(
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
        # The current session stays until handshake_finish proves the peer holds the link
        # key and installs the new one: a plain init from anyone on CAN 1 cuts nothing off.
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
        self.record("session.established", link="app", level=self.security_level)
        return {"type": "upgraded", "security_level": self.security_level, "state": int(self.state)}
