"""Sealed messages (control messages over ISO-TP): Rust against the reference, and attacks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modbatt import MESSAGE_MAX, errors
from tests.conftest import make_ends

STREAM = 0x1980_0000


@given(payloads=st.lists(st.binary(max_size=600), min_size=1, max_size=4))
def test_rust_matches_the_reference(payloads: list[bytes]) -> None:
    ends = make_ends()
    for payload in payloads:
        sealed = ends.a.seal_message(STREAM, payload)
        assert sealed == ends.ref_a.seal_message(STREAM, payload)
        assert len(sealed) == len(payload) + 25
        assert ends.b.open_message(STREAM, sealed) == payload
        assert ends.ref_b.open_message(STREAM, sealed) == payload


def test_the_largest_message_round_trips() -> None:
    ends = make_ends()
    payload = bytes(range(256)) * (MESSAGE_MAX // 256)
    assert ends.b.open_message(STREAM, ends.a.seal_message(STREAM, payload)) == payload
    with pytest.raises(errors.InvalidArgumentError):
        ends.a.seal_message(STREAM, payload + b"x")


@given(position=st.integers(0, 10_000))
def test_any_changed_byte_is_rejected(position: int) -> None:
    ends = make_ends(max_failures=1000)
    sealed = bytearray(ends.a.seal_message(STREAM, b"key delivery: component ids and halves"))
    sealed[position % len(sealed)] ^= 0x01
    with pytest.raises(errors.FrameRejectedError):
        ends.b.open_message(STREAM, bytes(sealed))


def test_replay_other_stream_other_direction_and_truncation_are_rejected() -> None:
    ends = make_ends()
    sealed = ends.a.seal_message(STREAM, b"configure")
    assert ends.b.open_message(STREAM, sealed) == b"configure"
    with pytest.raises(errors.ReplayError):
        ends.b.open_message(STREAM, sealed)
    with pytest.raises(errors.AuthenticationError):
        ends.b.open_message(STREAM + 1, ends.a.seal_message(STREAM, b"x"))
    with pytest.raises(errors.AuthenticationError):
        ends.a.open_message(STREAM, ends.a.seal_message(STREAM, b"x"))  # reflected
    with pytest.raises(errors.MalformedFrameError):
        ends.b.open_message(STREAM, sealed[:24])


def test_bad_tags_spend_the_same_budget_as_frames() -> None:
    ends = make_ends(max_failures=2)
    forged = bytes([4]) + bytes(8) + b"x" + bytes(16)
    for _ in range(2):
        with pytest.raises(errors.AuthenticationError):
            ends.b.open_message(STREAM, forged)
    assert ends.b.expired
