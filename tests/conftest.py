"""Shared fixtures: fixed component ids, random key material, both ends of a session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import settings

from modbatt import LinkKey, Session
from modbatt.protocol.frames import Sealed, frames_of
from modbatt.protocol.reference import ReferenceSession, derive_link_key
from tests.api_bridge_server import BridgeProcess

settings.register_profile("default", deadline=None, max_examples=200)
settings.load_profile("default")

A = "COMP-alice-1753769423"
B = "COMP-alice-1753769424"
STATUS_1 = 0x502 << 18 | 0x05


@dataclass
class Ends:
    """Both ends of one session in Rust, and the same session in the reference."""

    a: Session
    b: Session
    ref_a: ReferenceSession
    ref_b: ReferenceSession


def make_ends(
    half_a: bytes | None = None,
    half_b: bytes | None = None,
    nonce_a: bytes | None = None,
    nonce_b: bytes | None = None,
    max_failures: int = 16,
    pair_window: int = 32,
) -> Ends:
    """Fresh sessions A <-> B; every input not given is random."""
    half_a = half_a or os.urandom(64)
    half_b = half_b or os.urandom(64)
    nonce_a = nonce_a or os.urandom(16)
    nonce_b = nonce_b or os.urandom(16)
    link = LinkKey(half_a, A, half_b, B)
    key = derive_link_key(half_a, A, half_b, B)
    mf, pw = max_failures, pair_window
    return Ends(
        a=Session(link, A, B, nonce_a, nonce_b, max_failures=mf, pair_window=pw),
        b=Session(link, B, A, nonce_b, nonce_a, max_failures=mf, pair_window=pw),
        ref_a=ReferenceSession(key, A, B, nonce_a, nonce_b, max_failures=mf, pair_window=pw),
        ref_b=ReferenceSession(key, B, A, nonce_b, nonce_a, max_failures=mf, pair_window=pw),
    )


@pytest.fixture
def ends() -> Ends:
    """Both ends of a fresh session."""
    return make_ends()


def open_all(
    session: Session | ReferenceSession, sealed: Sealed | list[tuple[int, bytes]]
) -> bytes | None:
    """Open each frame of a sealed message (or a list of frames) in turn; the last result."""
    frames = sealed if isinstance(sealed, list) else frames_of(sealed)
    result = None
    for can_id, data in frames:
        result = session.open(can_id, data)
    return result


@pytest.fixture(scope="module")
def api_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """The real embedded API-Bridge on loopback, one per test module."""
    server = BridgeProcess(tmp_path_factory.mktemp("bridge") / "bridge.sqlite3").start()
    yield server
    server.stop()
