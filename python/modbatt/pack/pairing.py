"""Module pairing on the pack's side (seed Workflow A): the exchange with the module.

The app delivers a module's LCT halves to the pack sealed (``pair_module``); the pack runs the
pairing with the module over the module's own ISO-TP channel on CAN 2 (docs/PROTOCOL.md §8c):
an X25519 exchange, the module's share sealed under it, then the session handshake.
:meth:`~modbatt.pack.controller.PackController.pair_module` stores the pairing in flash and
links the module; after a restart, ``relink_once`` runs only the handshake again
(:func:`handshake_over`), since both ends kept their keys.
"""

from __future__ import annotations

import hmac
from typing import Any

from modbatt import LinkKey, Session
from modbatt.bus.control_channel import ControlEndpoint, request
from modbatt.protocol.bootstrap import (
    ACK_LABEL,
    DELIVERY_LABEL,
    Ephemeral,
    KeyAgreementError,
    delivery_keys,
    seal,
    unseal,
)
from modbatt.protocol.handshake import Initiator
from modbatt.protocol.pairing import responder_id
from modbatt.state.keystores import PackFlash, PairedModule

# Five attempts: a pairing makes about ten of them, and a ~100-frame transfer fails about one
# time in five when 0.1 % of frames are lost, duplicated or reordered (test_faults_lifecycle).
MODULE_ATTEMPTS, MODULE_TIMEOUT_S = 5, 1.5


def same_pairing(stored: PairedModule, message: dict[str, Any], unique_id: int) -> bool:
    """Whether a `pair_module` request carries exactly the pairing the pack already holds."""
    halves = ("pack_device_key_half", "pack_lct_key_half", "module_device_key_half")
    return (
        stored.unique_id == unique_id
        and stored.lct_id == message.get("lct_id")
        and all(
            hmac.compare_digest(getattr(stored, name).encode(), str(message.get(name, "")).encode())
            for name in halves
        )
    )


def pair_over(
    endpoint: ControlEndpoint, flash: PackFlash, message: dict[str, Any], unique_id: int
) -> tuple[LinkKey, Session, bytes]:
    """Pair a module over its pairing channel with the halves the app delivered in `message`.

    An X25519 exchange (pair_hello), the module's share sealed under it (pair_delivery), its
    acknowledgement naming the same link key, then the session handshake. Returns the link
    key, the module's session and the exchange's secret (kept in flash to rebuild the link).
    """

    def ask(message: dict[str, Any], expect: str) -> dict[str, Any]:
        answer = request(
            endpoint, message, attempts=MODULE_ATTEMPTS, timeout_s=MODULE_TIMEOUT_S, plain=True
        )
        if answer is None:
            raise KeyAgreementError(f"pairing: no {expect} from the module")
        if answer["type"] != expect:
            raise KeyAgreementError(f"pairing: expected {expect}, got {answer['type']!r}")
        return answer

    ephemeral = Ephemeral()
    hello = ask(
        {
            "type": "pair_hello",
            "pack_id": flash.pack_component_id,
            "public_key": ephemeral.public.hex(),
        },
        "pair_hello_ack",
    )
    module_public = bytes.fromhex(hello["public_key"])
    shared = ephemeral.shared_secret(module_public)
    keys = delivery_keys(
        shared,
        flash.pack_component_id,
        responder_id(unique_id),
        ephemeral.public,
        module_public,
    )
    delivery = seal(
        keys.delivery,
        DELIVERY_LABEL,
        {
            "module_component_id": message["module_component_id"],
            "module_device_key_half": message["module_device_key_half"],
            "module_lct_key_half": message["module_lct_key_half"],
            "pack_device_key_half": message["pack_device_key_half"],
            "pack_component_id": flash.pack_component_id,
        },
    )
    ack = ask({"type": "pair_delivery", "sealed": delivery.hex()}, "pair_ack")
    receipt = unseal(keys.acknowledgement, ACK_LABEL, bytes.fromhex(ack["sealed"]))
    link = LinkKey(
        bytes.fromhex(message["pack_device_key_half"]),
        flash.pack_component_id,
        bytes.fromhex(message["module_device_key_half"]),
        message["module_component_id"],
        shared,
    )
    if receipt.get("link") != link.fingerprint:
        raise KeyAgreementError("pairing: the module derived another link key")
    session = handshake_over(
        endpoint, link, flash.pack_component_id, message["module_component_id"]
    )
    return link, session, shared


def handshake_over(
    endpoint: ControlEndpoint, link: LinkKey, pack_id: str, module_id: str
) -> Session:
    """The session handshake with a module over its pairing channel (the pack initiates)."""
    initiator = Initiator(link, pack_id, module_id)
    response = request(
        endpoint,
        {"type": "handshake_init", "data": initiator.start().hex()},
        attempts=MODULE_ATTEMPTS,
        timeout_s=MODULE_TIMEOUT_S,
        plain=True,
    )
    if response is None or response["type"] != "handshake_response":
        kind = None if response is None else response["type"]
        raise KeyAgreementError(f"handshake: expected handshake_response, got {kind!r}")
    finish, session = initiator.on_response(bytes.fromhex(response["data"]))
    endpoint.session = session  # the module answers the finish sealed under the new session
    try:
        upgraded = request(
            endpoint,
            {"type": "handshake_finish", "data": finish.hex()},
            attempts=MODULE_ATTEMPTS,
            timeout_s=MODULE_TIMEOUT_S,
            plain=True,
        )
    finally:
        endpoint.session = None
    if upgraded is None or upgraded["type"] != "upgraded":
        raise KeyAgreementError("handshake: the module's upgraded channel did not answer")
    return session
