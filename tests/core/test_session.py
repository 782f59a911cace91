"""Session seal/open: the Rust path against the reference, byte for byte, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modbatt import ENCRYPTION_FLAG, LinkKey, Session, errors, frames_of
from tests.conftest import STATUS_1, A, B, make_ends, open_all

logical_ids = st.integers(0, 0x1FFF_FFFF).map(lambda i: i & ~0x3_8000)
classic = st.binary(max_size=8)
fd_payloads = st.binary(max_size=51)


@given(
    half_a=st.binary(min_size=64, max_size=64).filter(any),
    half_b=st.binary(min_size=64, max_size=64).filter(any),
    nonce_a=st.binary(min_size=16, max_size=16).filter(any),
    nonce_b=st.binary(min_size=16, max_size=16).filter(any),
    messages=st.lists(st.tuples(logical_ids, st.booleans(), fd_payloads), min_size=1, max_size=6),
)
def test_rust_matches_the_reference_byte_for_byte(
    half_a: bytes,
    half_b: bytes,
    nonce_a: bytes,
    nonce_b: bytes,
    messages: list[tuple[int, bool, bytes]],
) -> None:
    if half_a == half_b:
        return
    ends = make_ends(half_a, half_b, nonce_a, nonce_b)
    for can_id, fd, any_payload in messages:
        payload = any_payload if fd else any_payload[:8]
        rust = ends.a.seal(can_id, payload, fd)
        ref = ends.ref_a.seal(can_id, payload, fd)
        assert rust == ref
        # each side opens what the other sealed
        assert open_all(ends.ref_b, rust) == payload
        assert open_all(ends.b, ref) == payload


@given(can_id=logical_ids, payload=classic, fd=st.booleans())
def test_round_trip(can_id: int, payload: bytes, fd: bool) -> None:
    ends = make_ends()
    frames = frames_of(ends.a.seal(can_id, payload, fd))
    assert all(frame_id & ENCRYPTION_FLAG for frame_id, _ in frames)
    assert open_all(ends.b, frames) == payload


def _flip(frames: list[tuple[int, bytes]], index: int, bit: int) -> list[tuple[int, bytes]]:
    can_id, data = frames[index]
    if bit < 29:
        can_id ^= 1 << bit
    elif bit < 29 + 8 * len(data):
        offset = bit - 29
        buf = bytearray(data)
        buf[offset // 8] ^= 1 << (offset % 8)
        data = bytes(buf)
    elif bit % 2 and data:
        data = data[:-1]  # truncated
    else:
        data = data + b"\x00"  # extended
    out = list(frames)
    out[index] = (can_id, data)
    return out


@given(payload=classic, fd=st.booleans(), pick=st.integers(0, 1), bit=st.integers(0, 10_000))
def test_any_single_change_is_rejected(payload: bytes, fd: bool, pick: int, bit: int) -> None:
    ends = make_ends()
    frames = frames_of(ends.a.seal(STATUS_1, payload, fd))
    index = pick % len(frames)
    tampered = _flip(frames, index, bit % (29 + 8 * len(frames[index][1]) + 2))
    rejected = False
    for can_id, data in tampered:
        try:
            assert ends.b.open(can_id, data) is None, "a tampered message was delivered"
        except errors.FrameRejectedError:
            rejected = True
    # Noticed: dropped, or now read as a pair's data frame that waits and will be counted
    # as unpaired when superseded.
    waiting = any(can_id & 0x3_8000 == 0x2_8000 for can_id, _ in tampered)
    assert rejected or waiting


def test_replay_within_the_session_is_dropped(ends) -> None:  # type: ignore[no-untyped-def]
    frames = ends.a.seal(STATUS_1, bytes(8))
    assert open_all(ends.b, frames) == bytes(8)
    with pytest.raises(errors.ReplayError):
        open_all(ends.b, frames)
    assert ends.b.stats()["replay"] == 1
    assert ends.b.stats()["failures"] == 0


def test_frames_from_an_earlier_session_fail_in_the_next() -> None:
    # the receiver "reboots": same link key, fresh nonce, counters back at 0
    half_a, half_b = b"\x11" * 64, b"\x22" * 64
    old = make_ends(half_a, half_b, b"\x01" * 16, b"\x02" * 16)
    new = make_ends(half_a, half_b, b"\x01" * 16, b"\x03" * 16)
    frames = old.a.seal(STATUS_1, b"\x01")
    with pytest.raises(errors.AuthenticationError):
        open_all(new.b, frames)


def test_a_frame_sealed_for_the_other_direction_is_rejected(ends) -> None:  # type: ignore[no-untyped-def]
    can_id, data, auth_id, _ = ends.a.seal(STATUS_1, b"\x07")
    assert auth_id is None
    with pytest.raises(errors.AuthenticationError):
        ends.a.open(can_id, data)


def test_downgrade_is_rejected(ends) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.DowngradeError):
        ends.b.open(STATUS_1, b"\x01\x02")


def test_counters_never_repeat_within_a_session(ends) -> None:  # type: ignore[no-untyped-def]
    seen = set()
    for _ in range(2000):
        _, _, _, auth = ends.a.seal(STATUS_1, bytes(8))
        assert auth is not None
        seen.add(auth[:2])
    assert len(seen) == 2000


def test_the_failure_budget_tears_the_session_down() -> None:
    ends = make_ends(max_failures=2)
    can_id, data, _, _ = ends.a.seal(STATUS_1, b"\x01")
    bad = bytes([data[0] ^ 1]) + data[1:]
    with pytest.raises(errors.AuthenticationError):
        ends.b.open(can_id, bad)
    with pytest.raises(errors.AuthenticationError):
        ends.b.open(can_id, bad)
    assert ends.b.expired
    with pytest.raises(errors.SessionExpiredError):
        ends.b.open(can_id, data)
    with pytest.raises(errors.SessionExpiredError):
        ends.b.seal(STATUS_1, b"")


def test_reference_and_rust_agree_on_drops() -> None:
    ends = make_ends(max_failures=3, pair_window=2)
    auth_only = frames_of(ends.a.seal(STATUS_1, bytes(8)))[1:]
    for session in (ends.b, ends.ref_b):
        with pytest.raises(errors.UnpairedFrameError):
            open_all(session, auth_only)


@pytest.mark.parametrize(
    ("payload", "fd", "error"),
    [
        (bytes(9), False, errors.InvalidArgumentError),
        (bytes(52), True, errors.InvalidArgumentError),
    ],
)
def test_oversized_payloads_are_refused(ends, payload: bytes, fd: bool, error: type) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        ends.a.seal(STATUS_1, payload, fd)
    with pytest.raises(error):
        ends.ref_a.seal(STATUS_1, payload, fd)


def test_reserved_id_bits_are_refused(ends) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InvalidArgumentError, match="secure layer"):
        ends.a.seal(STATUS_1 | ENCRYPTION_FLAG, b"")
    with pytest.raises(OverflowError):
        ends.a.seal(-1, b"")


def test_repr_and_stats_reveal_no_key() -> None:
    half_a, half_b = bytes(range(64)), bytes(range(64, 128))
    link = LinkKey(half_a, A, half_b, B)
    session = Session(link, A, B, b"\x01" * 16, b"\x02" * 16)
    shown = repr(link) + repr(session) + str(session.stats())
    assert "redacted" in repr(link)
    for secret in (half_a, half_b):
        assert secret.hex()[:16] not in shown
    assert link.fingerprint in repr(session)


def test_batch_matches_per_frame() -> None:
    one, two = (
        make_ends(b"\x01" * 64, b"\x02" * 64, b"\x03" * 16, b"\x04" * 16),
        make_ends(b"\x01" * 64, b"\x02" * 64, b"\x03" * 16, b"\x04" * 16),
    )
    payloads = [bytes([i & 0xFF] * (i % 9)) for i in range(300)]
    ids = np.array([STATUS_1 + (i % 3) for i in range(300)], dtype=np.uint32)
    lens = np.array([len(p) for p in payloads], dtype=np.uint8)
    data = np.zeros((300, 64), dtype=np.uint8)
    for i, p in enumerate(payloads):
        data[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    out_ids, out_lens, out_data, status = one.a.seal_batch(ids, lens, data)
    assert not status.any()
    expected = [f for i, p in enumerate(payloads) for f in frames_of(two.a.seal(int(ids[i]), p))]
    got = [(int(i), bytes(out_data[k, : out_lens[k]])) for k, i in enumerate(out_ids)]
    assert got == expected
    # and the batch opens back, pairs held (status 1) then delivered (status 0)
    o_ids, o_lens, o_data, o_status = one.b.open_batch(out_ids, out_lens, out_data)
    assert set(o_status.tolist()) <= {0, 1}
    assert [bytes(o_data[k, : o_lens[k]]) for k in range(len(o_ids))] == payloads


def test_batch_rejects_bad_shapes(ends) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InvalidArgumentError):
        ends.a.seal_batch(
            np.zeros(3, np.uint32), np.zeros(2, np.uint8), np.zeros((3, 64), np.uint8)
        )
    with pytest.raises(errors.InvalidArgumentError):
        ends.a.seal_batch(np.zeros(3, np.uint32), np.zeros(3, np.uint8), np.zeros((3, 8), np.uint8))
    # a length over 64 is a per-frame status, not an exception
    _, _, _, status = ends.a.seal_batch(
        np.zeros(1, np.uint32), np.array([65], np.uint8), np.zeros((1, 64), np.uint8)
    )
    assert status.tolist() == [6]
