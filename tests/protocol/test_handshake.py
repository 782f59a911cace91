"""The session handshake: both ends end up with working sessions, or neither does."""

from __future__ import annotations

import os

import pytest

from modbatt import LinkKey, frames_of
from modbatt.protocol.handshake import HandshakeError, Initiator, Responder
from modbatt.protocol.reference import confirmation, derive_link_key

APP, PACK = "COMP-alice-1", "COMP-alice-2"
HALF_APP, HALF_PACK = os.urandom(64), os.urandom(64)


def link(dh: bytes | None = None) -> LinkKey:
    return LinkKey(HALF_APP, APP, HALF_PACK, PACK, dh)


def test_a_handshake_gives_both_ends_working_sessions() -> None:
    app, pack = Initiator(link(), APP, PACK), Responder(link(), PACK, APP)
    finish, app_session = app.on_response(pack.on_init(app.start()))
    pack_session = pack.on_finish(finish)
    for can_id, data in frames_of(app_session.seal(0x1000_0000, b"hello")):
        opened = pack_session.open(can_id, data)
    assert opened == b"hello"
    for can_id, data in frames_of(pack_session.seal(0x1000_0001, b"\x01" * 8)):
        opened = app_session.open(can_id, data)
    assert opened == b"\x01" * 8


def test_a_peer_without_the_key_is_found_out_by_either_end() -> None:
    wrong = LinkKey(os.urandom(64), APP, HALF_PACK, PACK)
    app, impostor = Initiator(link(), APP, PACK), Responder(wrong, PACK, APP)
    with pytest.raises(HandshakeError, match="does not hold the link key"):
        app.on_response(impostor.on_init(app.start()))
    fake_app, pack = Initiator(wrong, APP, PACK), Responder(link(), PACK, APP)
    response = pack.on_init(fake_app.start())
    with pytest.raises(HandshakeError):
        fake_app.on_response(response)
    # the impostor cannot produce FINISH either: forge one
    with pytest.raises(HandshakeError, match="does not hold the link key"):
        pack.on_finish(bytes([1, 3]) + os.urandom(16))


def test_a_dh_secret_makes_a_different_link() -> None:
    app, pack = Initiator(link(b"\x07" * 32), APP, PACK), Responder(link(), PACK, APP)
    with pytest.raises(HandshakeError):
        app.on_response(pack.on_init(app.start()))


def test_an_old_response_cannot_be_replayed() -> None:
    app, pack = Initiator(link(), APP, PACK), Responder(link(), PACK, APP)
    old_response = pack.on_init(app.start())
    app.on_response(old_response)
    second = Initiator(link(), APP, PACK)
    second.start()
    with pytest.raises(HandshakeError):
        second.on_response(old_response)  # bound to the first INIT's nonce


def test_a_reflected_response_is_refused() -> None:
    app = Initiator(link(), APP, PACK)
    init = app.start()
    # an attacker turns the app's own nonce around with the app's own confirmation
    reflected = bytes([1, 2]) + init[2:] + link().confirmation(APP, PACK, init[2:], init[2:])
    with pytest.raises(HandshakeError):
        app.on_response(reflected)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x01",
        b"\x02\x01" + bytes(16),
        b"\x01\x01" + bytes(15),
        b"\x01\x03" + bytes(16),
        b"\x01\x01" + bytes(16),
    ],
)
def test_malformed_messages_get_a_clear_error(message: bytes) -> None:
    with pytest.raises(HandshakeError):
        Responder(link(), PACK, APP).on_init(message)


def test_steps_out_of_order_are_refused() -> None:
    with pytest.raises(HandshakeError, match="before INIT"):
        Initiator(link(), APP, PACK).on_response(bytes([1, 2]) + bytes(32))
    with pytest.raises(HandshakeError, match="before INIT"):
        Responder(link(), PACK, APP).on_finish(bytes([1, 3]) + bytes(16))


def test_rust_confirmation_matches_the_reference() -> None:
    n1, n2 = os.urandom(16), os.urandom(16)
    key = derive_link_key(HALF_APP, APP, HALF_PACK, PACK)
    assert link().confirmation(APP, PACK, n1, n2) == confirmation(key, APP, PACK, n1, n2)
    assert link().confirmation(APP, PACK, n1, n2) != link().confirmation(PACK, APP, n1, n2)
    assert link().verify_confirmation(APP, PACK, n1, n2, confirmation(key, APP, PACK, n1, n2))
    assert not link().verify_confirmation(APP, PACK, n1, n2, bytes(16))
    assert not link().verify_confirmation(APP, PACK, n1, n2, bytes(15))
