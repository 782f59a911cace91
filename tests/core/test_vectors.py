"""The worked examples of docs/PROTOCOL.md (tests/vectors/frame_path.json), in Rust and Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modbatt import LinkKey, Session, frames_of
from modbatt.protocol import reference as ref

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "frame_path.json").read_text()
)
FRAMES = VECTORS["frames"]


def _link_inputs(name: str) -> tuple[bytes, str, bytes, str, bytes | None]:
    link = VECTORS["links"][name]
    dh = None if link["dh_secret"] is None else bytes.fromhex(link["dh_secret"])
    return (
        bytes.fromhex(link["half_a"]),
        link["id_a"],
        bytes.fromhex(link["half_b"]),
        link["id_b"],
        dh,
    )


@pytest.mark.parametrize("name", sorted(VECTORS["links"]))
def test_link_keys(name: str) -> None:
    assert ref.derive_link_key(*_link_inputs(name)).hex() == VECTORS["links"][name]["link_key"]


@pytest.mark.parametrize("frame", FRAMES, ids=[f["name"] for f in FRAMES])
def test_direction_keys(frame: dict[str, Any]) -> None:
    key = bytes.fromhex(VECTORS["links"][frame["link"]]["link_key"])
    enc, mac = ref.derive_direction_keys(
        key,
        frame["sender"],
        frame["receiver"],
        bytes.fromhex(frame["sender_nonce"]),
        bytes.fromhex(frame["receiver_nonce"]),
    )
    assert (enc.hex(), mac.hex()) == (frame["enc_key"], frame["mac_key"])


@pytest.mark.parametrize("frame", FRAMES, ids=[f["name"] for f in FRAMES])
def test_rust_seals_and_opens_the_documented_bytes(frame: dict[str, Any]) -> None:
    link = LinkKey(*_link_inputs(frame["link"]))
    ns, nr = bytes.fromhex(frame["sender_nonce"]), bytes.fromhex(frame["receiver_nonce"])
    tx = Session(link, frame["sender"], frame["receiver"], ns, nr)
    rx = Session(link, frame["receiver"], frame["sender"], nr, ns)
    payload = bytes.fromhex(frame["payload"])
    for _ in range(frame["freshness"]):  # advance the stream's counter
        tx.seal(frame["can_id"], payload, frame["fd"])
    wire = tx.seal(frame["can_id"], payload, frame["fd"])
    frames = frames_of(wire)
    assert [(i, d.hex()) for i, d in frames] == [(w["can_id"], w["data"]) for w in frame["wire"]]
    opened = None
    for can_id, data in frames:
        opened = rx.open(can_id, data)
    assert opened == payload


@pytest.mark.parametrize("frame", FRAMES, ids=[f["name"] for f in FRAMES])
def test_reference_opens_the_documented_bytes(frame: dict[str, Any]) -> None:
    key = bytes.fromhex(VECTORS["links"][frame["link"]]["link_key"])
    ns, nr = bytes.fromhex(frame["sender_nonce"]), bytes.fromhex(frame["receiver_nonce"])
    rx = ref.ReferenceSession(key, frame["receiver"], frame["sender"], nr, ns)
    opened = None
    for wire in frame["wire"]:
        opened = rx.open(wire["can_id"], bytes.fromhex(wire["data"]))
    assert opened == bytes.fromhex(frame["payload"])


def test_protocol_md_shows_every_vector() -> None:
    protocol = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    for frame in FRAMES:
        for wire in frame["wire"]:
            assert wire["data"] in protocol.replace(" ", ""), frame["name"]


@pytest.mark.parametrize(
    "message", VECTORS["messages"], ids=[m["name"] for m in VECTORS["messages"]]
)
def test_the_sealed_message_example(message: dict[str, Any]) -> None:
    link = LinkKey(*_link_inputs(message["link"]))
    ns, nr = bytes.fromhex(message["sender_nonce"]), bytes.fromhex(message["receiver_nonce"])
    tx = Session(link, message["sender"], message["receiver"], ns, nr)
    rx = Session(link, message["receiver"], message["sender"], nr, ns)
    payload = bytes.fromhex(message["payload"])
    for _ in range(message["freshness"]):
        tx.seal_message(message["stream"], payload)
    sealed = tx.seal_message(message["stream"], payload)
    assert sealed.hex() == message["sealed"]
    assert rx.open_message(message["stream"], sealed) == payload
    protocol = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    assert message["sealed"] in protocol
