"""Fixtures for the pytest-benchmark suite (run once by `make test`, measured by `make bench`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from modbatt import Gateway, LinkKey, Session, compose_id
from modbatt.protocol.reference import ReferenceSession, derive_link_key

STATUS_1 = compose_id(0x502, 5)
PAYLOAD = bytes(range(0x11, 0x19))


@pytest.fixture
def link_inputs() -> tuple[bytes, bytes, bytes, bytes]:
    """Random halves and nonces for a link between COMP-a and COMP-b."""
    return os.urandom(64), os.urandom(64), os.urandom(16), os.urandom(16)


@pytest.fixture
def sessions(link_inputs: tuple[bytes, bytes, bytes, bytes]) -> tuple[Session, Session]:
    """Both ends of a session in the Rust core."""
    half_a, half_b, nonce_a, nonce_b = link_inputs
    link = LinkKey(half_a, "COMP-a", half_b, "COMP-b")
    return (
        Session(link, "COMP-a", "COMP-b", nonce_a, nonce_b),
        Session(link, "COMP-b", "COMP-a", nonce_b, nonce_a),
    )


@pytest.fixture
def reference_sessions(
    link_inputs: tuple[bytes, bytes, bytes, bytes],
) -> tuple[ReferenceSession, ReferenceSession]:
    """Both ends of the same session in modbatt.protocol.reference."""
    half_a, half_b, nonce_a, nonce_b = link_inputs
    key = derive_link_key(half_a, "COMP-a", half_b, "COMP-b")
    return (
        ReferenceSession(key, "COMP-a", "COMP-b", nonce_a, nonce_b),
        ReferenceSession(key, "COMP-b", "COMP-a", nonce_b, nonce_a),
    )


@pytest.fixture
def gateway_and_module() -> Iterator[tuple[Gateway, Session]]:
    """A gateway bridging module link 1 (CAN 2) to app link 0 (CAN 1), and the module's end."""
    half_m, half_p, nonce_m, nonce_p = (os.urandom(n) for n in (64, 64, 16, 16))
    module_link = LinkKey(half_m, "COMP-module", half_p, "COMP-pack")
    app_link = LinkKey(os.urandom(64), "COMP-app", os.urandom(64), "COMP-pack")
    gateway = Gateway()
    gateway.install_session(1, Session(module_link, "COMP-pack", "COMP-module", nonce_p, nonce_m))
    gateway.install_session(
        0, Session(app_link, "COMP-pack", "COMP-app", os.urandom(16), os.urandom(16))
    )
    gateway.add_rule(1, compose_id(0x500, 0), 0x7F0 << 18, 0, inbound=1, outbound=0)
    yield gateway, Session(module_link, "COMP-module", "COMP-pack", nonce_m, nonce_p)
