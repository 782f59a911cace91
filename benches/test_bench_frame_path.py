"""The frame path's operations, one per benchmark (mirrors `modbatt bench frame-path`).

`make test` runs each once (benchmarks disabled) so they cannot rot; `make bench` measures.
Every benchmark checks its result, so none can time a dropped frame.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benches.conftest import PAYLOAD, STATUS_1
from modbatt import Gateway, Sealed, Session, frames_of
from modbatt.protocol.reference import ReferenceSession


def test_aesgcm_anchor(benchmark: Any) -> None:
    encrypt, nonce = AESGCM(os.urandom(16)).encrypt, os.urandom(12)
    assert len(benchmark(encrypt, nonce, PAYLOAD, None)) == len(PAYLOAD) + 16


def test_seal_rust(benchmark: Any, sessions: tuple[Session, Session]) -> None:
    sender, _ = sessions
    assert benchmark(sender.seal, STATUS_1, PAYLOAD)[2] is not None


def test_seal_reference(
    benchmark: Any, reference_sessions: tuple[ReferenceSession, ReferenceSession]
) -> None:
    sender, _ = reference_sessions
    assert benchmark(sender.seal, STATUS_1, PAYLOAD)[2] is not None


def _open_pair(receiver: Session | ReferenceSession, sealed: Sealed) -> bytes | None:
    data_id, data, auth_id, auth = sealed
    assert auth_id is not None and auth is not None
    receiver.open(data_id, data)
    return receiver.open(auth_id, auth)


def test_open_rust(benchmark: Any, sessions: tuple[Session, Session]) -> None:
    sender, receiver = sessions
    result = benchmark.pedantic(
        _open_pair,
        setup=lambda: ((receiver, sender.seal(STATUS_1, PAYLOAD)), {}),
        rounds=2000,
    )
    assert result == PAYLOAD


def test_open_reference(
    benchmark: Any, reference_sessions: tuple[ReferenceSession, ReferenceSession]
) -> None:
    sender, receiver = reference_sessions
    result = benchmark.pedantic(
        _open_pair,
        setup=lambda: ((receiver, sender.seal(STATUS_1, PAYLOAD)), {}),
        rounds=200,
    )
    assert result == PAYLOAD


def test_seal_batch_65536(benchmark: Any, sessions: tuple[Session, Session]) -> None:
    sender, _ = sessions
    n = 65_536
    ids = np.full(n, STATUS_1, dtype=np.uint32)
    lens = np.full(n, len(PAYLOAD), dtype=np.uint8)
    data = np.zeros((n, 64), dtype=np.uint8)
    data[:, : len(PAYLOAD)] = np.frombuffer(PAYLOAD, dtype=np.uint8)
    out_ids, _, _, status = benchmark(sender.seal_batch, ids, lens, data)
    assert len(out_ids) == 2 * n and not status.any()


def test_gateway_step(benchmark: Any, gateway_and_module: tuple[Gateway, Session]) -> None:
    gateway, module = gateway_and_module

    def step_pair(sealed: Sealed) -> list[tuple[int, int, bytes]]:
        out = []
        for can_id, data in frames_of(sealed):
            out.extend(gateway.step(1, can_id, data))
        return out

    result = benchmark.pedantic(
        step_pair, setup=lambda: ((module.seal(STATUS_1, PAYLOAD),), {}), rounds=2000
    )
    assert len(result) == 2
