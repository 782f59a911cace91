"""Cut-through of classic pairs through the Python API (rust/src/gateway.rs, PROTOCOL.md §8).

The gateway forwards a pair's data frame before its authenticator arrives, re-encrypted for
the outbound link, and the authenticator once the pair verifies. It must change *when* frames
leave the pack, never *what* the far end accepts: the differential test below runs the same
traffic, with losses, duplicates and forgeries, through a cut-through gateway and a
store-and-forward one and requires the app to open exactly the same messages from both.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from modbatt import Gateway, compose_id, errors, frames_of
from tests.core.test_gateway import CAN1, CAN2, STATUS_1, Pack


def _telemetry(pack: Pack, payload: bytes) -> list[int]:
    """Frames out per frame in, for one message from the module."""
    return [
        len(pack.gateway.step(CAN2, i, d))
        for i, d in frames_of(pack.module.seal(STATUS_1, payload))
    ]


def test_cut_through_is_on_by_default_and_can_be_turned_off() -> None:
    assert Gateway().cut_through
    assert not Gateway(cut_through=False).cut_through


def test_cut_through_forwards_the_data_frame_before_its_authenticator() -> None:
    pack = Pack()
    assert _telemetry(pack, bytes(8)) == [0, 2]  # the stream's first message: nothing to predict
    assert _telemetry(pack, bytes(8)) == [1, 1]
    stats = pack.gateway.stats()
    assert (stats["ahead"], stats["ahead_missed"], stats["forwarded"]) == (1, 0, 2)


def test_the_tap_keeps_only_what_verified() -> None:
    pack = Pack()
    pack.gateway.set_tap(STATUS_1, 0x7F0 << 18)
    _telemetry(pack, bytes(8))
    assert pack.gateway.take_tapped() == [(STATUS_1, bytes(8))]
    assert pack.gateway.take_tapped() == []  # taken
    (data_id, data), (auth_id, auth) = frames_of(pack.module.seal(STATUS_1, b"\x11" * 8))
    out = pack.gateway.step(CAN2, data_id, data)
    assert len(out) == 1  # forwarded ahead...
    assert pack.gateway.take_tapped() == []  # ...but nothing verified to read yet
    out_auth = pack.gateway.step(CAN2, auth_id, auth)
    assert pack.gateway.take_tapped() == [(STATUS_1, b"\x11" * 8)]
    assert pack.app.open(out[0][1], out[0][2]) is None
    assert pack.app.open(out_auth[0][1], out_auth[0][2]) == b"\x11" * 8


def test_the_tap_keeps_the_latest_message_per_id_and_never_plain_traffic() -> None:
    pack = Pack()
    pack.gateway.add_rule(CAN2, compose_id(0x510, 0), 0x7F0 << 18, CAN1)  # plain, bridged
    pack.gateway.set_tap(compose_id(0x500, 0), 0x7E0 << 18)
    for n in range(3):
        _telemetry(pack, bytes([n]) * 8)
    status_2 = compose_id(0x503, 5)
    pack.carry(CAN2, pack.module.seal(status_2, b"\x07"))
    assert pack.gateway.step(CAN2, compose_id(0x510, 9), b"\x01")  # plain: bridged...
    assert pack.gateway.take_tapped() == [(STATUS_1, bytes([2]) * 8), (status_2, b"\x07")]


@dataclass(frozen=True)
class Message:
    """A message the module sends, and what the bus does to its frames."""

    length: int
    lose_data: bool = False
    lose_auth: bool = False
    repeat_data: bool = False
    forged_data_first: bool = False


@dataclass(frozen=True)
class OwnFrame:
    """The pack seals a frame of its own on the same outbound stream."""


events = st.lists(
    st.one_of(
        st.builds(
            Message,
            length=st.integers(1, 8),
            lose_data=st.booleans(),
            lose_auth=st.booleans(),
            repeat_data=st.booleans(),
            forged_data_first=st.booleans(),
        ),
        st.just(OwnFrame()),
    ),
    max_size=40,
)


def _received(pack: Pack, frames: list[tuple[int, int, bytes]]) -> list[bytes]:
    """What the app opens, in order; the app must never see a bad tag."""
    opened = []
    for _bus, can_id, data in frames:
        try:
            message = pack.app.open(can_id, data)
        except errors.FrameRejectedError as err:
            assert not isinstance(err, errors.AuthenticationError), err
            continue
        if message is not None:
            opened.append(message)
    return opened


@settings(max_examples=150, deadline=None)
@given(events=events, seed=st.integers(0, 2**16))
def test_cut_through_delivers_exactly_what_store_and_forward_does(
    events: list[Message | OwnFrame], seed: int
) -> None:
    ahead, whole = Pack(seed), Pack(seed, cut_through=False)  # the same keys and nonces
    out: dict[int, list[tuple[int, int, bytes]]] = {id(ahead): [], id(whole): []}
    for n, event in enumerate(events):
        if isinstance(event, OwnFrame):
            for pack in (ahead, whole):
                own = pack.gateway.seal_frame(0, STATUS_1, b"own!")
                out[id(pack)] += [(0, i, d) for i, d in own]
            continue
        payload = bytes([n]) * event.length
        frames = frames_of(ahead.module.seal(STATUS_1, payload))
        sent: list[tuple[int, bytes]] = []
        if len(frames) == 2:
            data_frame, auth_frame = frames
            if event.forged_data_first:
                data_id, ciphertext = data_frame
                sent.append((data_id, bytes([ciphertext[0] ^ 0x80]) + ciphertext[1:]))
            if not event.lose_data:
                sent += [data_frame] * (2 if event.repeat_data else 1)
            if not event.lose_auth:
                sent.append(auth_frame)
        elif not event.lose_data:
            sent = frames
        for pack in (ahead, whole):
            for can_id, payload in sent:
                out[id(pack)] += pack.gateway.step(CAN2, can_id, payload)
    assert _received(ahead, out[id(ahead)]) == _received(whole, out[id(whole)])
    stats_ahead, stats_whole = ahead.gateway.stats(), whole.gateway.stats()
    for key in ("received", "forwarded", "pending", "bad_tag", "replay", "unpaired"):
        assert stats_ahead[key] == stats_whole[key], key
