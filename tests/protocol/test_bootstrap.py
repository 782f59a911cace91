"""The bootstrap key agreement: what a passive listener sees is not enough."""

from __future__ import annotations

import os

import pytest

from modbatt import LinkKey
from modbatt.protocol.bootstrap import (
    ACK_LABEL,
    DELIVERY_LABEL,
    Ephemeral,
    KeyAgreementError,
    delivery_keys,
    seal,
    unseal,
)
from modbatt.protocol.handshake import Initiator, Responder

APP, PACK = "host-1234", "PACK-SERIAL-0001"


def exchange() -> tuple[Ephemeral, Ephemeral, bytes]:
    app, pack = Ephemeral(), Ephemeral()
    shared = app.shared_secret(pack.public)
    assert shared == pack.shared_secret(app.public)
    return app, pack, shared


def test_halves_travel_sealed_and_open_only_for_the_peer() -> None:
    app, pack, shared = exchange()
    keys = delivery_keys(shared, APP, PACK, app.public, pack.public)
    halves = {
        "pack_device_key_half": os.urandom(64).hex(),
        "app_device_key_half": os.urandom(64).hex(),
    }
    sealed = seal(keys.delivery, DELIVERY_LABEL, halves)
    for half in halves.values():
        assert bytes.fromhex(half) not in sealed and half.encode() not in sealed
    pack_keys = delivery_keys(pack.shared_secret(app.public), APP, PACK, app.public, pack.public)
    assert unseal(pack_keys.delivery, DELIVERY_LABEL, sealed) == halves
    ack = seal(pack_keys.acknowledgement, ACK_LABEL, {"status": "stored"})
    assert unseal(keys.acknowledgement, ACK_LABEL, ack) == {"status": "stored"}


def test_a_listener_with_both_public_keys_cannot_open_it() -> None:
    app, pack, shared = exchange()
    sealed = seal(
        delivery_keys(shared, APP, PACK, app.public, pack.public).delivery, DELIVERY_LABEL, {"x": 1}
    )
    listener = Ephemeral()  # its own key pair, and everything that crossed the bus
    for guess in (
        listener.shared_secret(app.public),
        listener.shared_secret(pack.public),
        app.public + pack.public[:0],
        bytes(32),
    ):
        keys = delivery_keys(guess[:32].ljust(32, b"\0"), APP, PACK, app.public, pack.public)
        with pytest.raises(KeyAgreementError):
            unseal(keys.delivery, DELIVERY_LABEL, sealed)


def test_tampering_and_misuse_are_refused() -> None:
    app, pack, shared = exchange()
    keys = delivery_keys(shared, APP, PACK, app.public, pack.public)
    sealed = bytearray(seal(keys.delivery, DELIVERY_LABEL, {"x": 1}))
    for position in (0, 12, len(sealed) - 1):
        changed = bytearray(sealed)
        changed[position] ^= 1
        with pytest.raises(KeyAgreementError):
            unseal(keys.delivery, DELIVERY_LABEL, bytes(changed))
    with pytest.raises(KeyAgreementError):  # the acknowledgement key does not open a delivery
        unseal(keys.acknowledgement, DELIVERY_LABEL, bytes(sealed))
    with pytest.raises(KeyAgreementError):  # nor does another label
        unseal(keys.delivery, ACK_LABEL, bytes(sealed))
    with pytest.raises(KeyAgreementError):
        unseal(keys.delivery, DELIVERY_LABEL, bytes(sealed[:20]))


@pytest.mark.parametrize("public", [bytes(32), bytes([1]) + bytes(31), bytes(31)])
def test_low_order_and_malformed_public_keys_are_refused(public: bytes) -> None:
    with pytest.raises(KeyAgreementError):
        Ephemeral().shared_secret(public)


def test_the_shared_secret_is_mixed_into_the_link_key() -> None:
    app, _, shared = exchange()
    half_app, half_pack = os.urandom(64), os.urandom(64)
    with_dh = LinkKey(half_app, APP, half_pack, PACK, dh_secret=shared)
    without = LinkKey(half_app, APP, half_pack, PACK)
    assert with_dh.fingerprint != without.fingerprint
    # someone who learned both halves but not the DH secret fails the handshake
    initiator, responder = Initiator(with_dh, APP, PACK), Responder(without, PACK, APP)
    with pytest.raises(Exception, match="does not hold the link key"):
        initiator.on_response(responder.on_init(initiator.start()))
    assert repr(app) == "Ephemeral()"  # the private key never prints
