"""The exchanges of docs/PROTOCOL.md §9a (tests/vectors/exchanges.json): bootstrap, handshake,
pairing, the control channel's framing and the module's sealed traffic, byte by byte.

Three kinds of check: this package regenerates the file exactly (so the file is what the code
puts on the bus); every derived value is recomputed from the specification's formulas with
the Python reference and `cryptography` alone (so a third party reading PROTOCOL.md arrives
at the same bytes); and the ISO-TP frames are read by python-can-isotp's own stack and
compared with what the control channel sends on a bus.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import can
import isotp
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modbatt import frames_of, logical_id
from modbatt.bus.isotp_link import MessageChannel
from modbatt.bus.transport import CanPort
from modbatt.protocol import reference as ref
from tests.vectors.generate_exchanges import build, markdown

ROOT = Path(__file__).parents[2]
VECTORS: dict[str, Any] = json.loads((ROOT / "tests" / "vectors" / "exchanges.json").read_text())
ALL_MESSAGES = [
    *VECTORS["bootstrap"]["messages"],
    *VECTORS["handshake"]["messages"],
    *VECTORS["pairing"]["messages"],
]
NAMES = [f"{m['message']['type']}@{m['frames'][0]['can_id']:08x}" for m in ALL_MESSAGES]


def canonical(value: Any) -> bytes:
    """PROTOCOL.md §8a: keys sorted, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def test_the_file_is_what_modbatt_puts_on_the_bus() -> None:
    assert build() == VECTORS


def test_protocol_md_shows_every_exchange() -> None:
    assert markdown(VECTORS) in (ROOT / "docs" / "PROTOCOL.md").read_text()


@pytest.mark.parametrize("name", ["bootstrap", "pairing"])
def test_the_key_agreement_from_the_formulas(name: str) -> None:
    """§2.4: X25519, then HKDF-SHA256 with the documented salt and info; AES-256-GCM with the
    label as associated data; the payloads are canonical JSON."""
    v = VECTORS[name]
    a = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["initiator_private"]))
    b = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["responder_private"]))
    raw = (Encoding.Raw, PublicFormat.Raw)
    assert a.public_key().public_bytes(*raw).hex() == v["initiator_public"]
    assert b.public_key().public_bytes(*raw).hex() == v["responder_public"]
    shared = a.exchange(b.public_key())
    assert shared.hex() == v["shared_secret"]
    info = (
        b"modbatt/v1 key delivery"
        + ref.length_prefixed(v["initiator_id"].encode())
        + ref.length_prefixed(v["responder_id"].encode())
        + bytes.fromhex(v["initiator_public"])
        + bytes.fromhex(v["responder_public"])
    )
    okm = ref.hkdf_sha256(shared, b"modbatt/v1 bootstrap", info, 64)
    assert (okm[:32].hex(), okm[32:].hex()) == (v["delivery_key"], v["acknowledgement_key"])
    kind = "key" if name == "bootstrap" else "pair"
    for step, key, label in (
        ("delivery", okm[:32], b"modbatt/v1 sealed key delivery"),
        ("ack", okm[32:], b"modbatt/v1 sealed key acknowledgement"),
    ):
        sealed = bytes.fromhex(v[f"{kind}_{step}_sealed"])
        assert sealed[:12].hex() == v[f"{kind}_{step}_nonce"]
        body = AESGCM(key).decrypt(sealed[:12], sealed[12:], label)
        assert body == canonical(v[f"{kind}_{step}_payload"])


def _link_key(name: str) -> tuple[bytes, str]:
    """The link key from the delivered halves and the key agreement, by §2.1."""
    if name == "handshake":
        boot = VECTORS["bootstrap"]
        payload = boot["key_delivery_payload"]
        inputs = (
            payload["app_device_key_half"],
            payload["app_component_id"],
            payload["pack_device_key_half"],
            payload["pack_component_id"],
            boot["shared_secret"],
        )
    else:
        pair = VECTORS["pairing"]
        payload = pair["pair_delivery_payload"]
        inputs = (
            payload["pack_device_key_half"],
            payload["pack_component_id"],
            payload["module_device_key_half"],
            payload["module_component_id"],
            pair["shared_secret"],
        )
    key = ref.derive_link_key(
        bytes.fromhex(inputs[0]),
        inputs[1],
        bytes.fromhex(inputs[2]),
        inputs[3],
        bytes.fromhex(inputs[4]),
    )
    fingerprint = hashlib.sha256(b"modbatt/v1 fingerprint" + key).digest()[:8].hex()
    return key, fingerprint


@pytest.mark.parametrize("name", ["handshake", "pairing"])
def test_the_handshake_from_the_formulas(name: str) -> None:
    """§2.3: INIT = 01 01 ‖ nonce_A, RESPONSE = 01 02 ‖ nonce_B ‖ confirm_B, FINISH = 01 03 ‖
    confirm_A; the acknowledgements name the link key's fingerprint."""
    hs = VECTORS[name] if name == "handshake" else VECTORS["pairing"]["handshake"]
    key, fingerprint = _link_key(name)
    assert (key.hex(), fingerprint) == (hs["link_key"], hs["fingerprint"])
    ack = "key_ack_payload" if name == "handshake" else "pair_ack_payload"
    source = VECTORS["bootstrap"] if name == "handshake" else VECTORS["pairing"]
    assert source[ack]["link"] == fingerprint
    a, b = hs["initiator_id"], hs["responder_id"]
    na, nb = bytes.fromhex(hs["initiator_nonce"]), bytes.fromhex(hs["responder_nonce"])
    assert hs["init"] == "0101" + na.hex()
    assert hs["response"] == "0102" + nb.hex() + ref.confirmation(key, b, a, nb, na).hex()
    assert hs["finish"] == "0103" + ref.confirmation(key, a, b, na, nb).hex()
    for direction, keys in (
        ("initiator_to_responder", ref.derive_direction_keys(key, a, b, na, nb)),
        ("responder_to_initiator", ref.derive_direction_keys(key, b, a, nb, na)),
    ):
        assert (keys[0].hex(), keys[1].hex()) == (
            hs[direction]["enc_key"],
            hs[direction]["mac_key"],
        )


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=NAMES)
def test_each_control_message_byte_by_byte(message: dict[str, Any]) -> None:
    """§8a: canonical JSON, sealed or not, then the 8-byte end-to-end check, then ISO-TP."""
    data = canonical(message["message"])
    assert data.hex() == message["bytes"]
    carried = bytes.fromhex(message.get("sealed", message["bytes"]))
    check = hashlib.sha256(b"modbatt/v1 isotp" + carried).digest()[:8]
    assert message["isotp_payload"] == (carried + check).hex()


def _reference_end(name: str, local_is_initiator: bool) -> ref.ReferenceSession:
    hs = VECTORS["handshake"] if name == "handshake" else VECTORS["pairing"]["handshake"]
    key = bytes.fromhex(hs["link_key"])
    a, b = hs["initiator_id"], hs["responder_id"]
    na, nb = bytes.fromhex(hs["initiator_nonce"]), bytes.fromhex(hs["responder_nonce"])
    if local_is_initiator:
        return ref.ReferenceSession(key, a, b, na, nb)
    return ref.ReferenceSession(key, b, a, nb, na)


def test_the_sealed_upgraded_answers_open_with_the_reference() -> None:
    """§4.4: the first sealed control message of each link, opened by its initiator."""
    for name, messages in (
        ("handshake", VECTORS["handshake"]["messages"]),
        ("pairing", VECTORS["pairing"]["messages"]),
    ):
        upgraded = messages[-1]
        app_or_pack = _reference_end(name, local_is_initiator=True)
        plain = app_or_pack.open_message(upgraded["stream"], bytes.fromhex(upgraded["sealed"]))
        assert plain.hex() == upgraded["bytes"]
        assert all(f["can_id"] == upgraded["stream"] | 1 << 17 for f in upgraded["frames"])


def test_the_module_traffic_opens_and_seals_with_the_reference() -> None:
    """§8c, §8.1: the pack's sealed STATE_CHANGE on the secured base opens at the module; the
    module's STATUS_1 frames are what the reference seals, and the app opens the gateway's
    output, cut through or not."""
    traffic = VECTORS["module_traffic"]
    module = _reference_end("pairing", local_is_initiator=False)
    command = traffic["command"]
    opened = None
    for frame in command["wire"]:
        opened = module.open(frame["can_id"], bytes.fromhex(frame["data"]))
    assert opened is not None and opened.hex() == command["payload"]
    assert logical_id(command["wire"][0]["can_id"]) >> 18 == 0x544
    cut = traffic["cut_through"]
    sent = []
    for payload in cut["payloads"]:
        sent += frames_of(module.seal(cut["logical_id"], bytes.fromhex(payload)))
    assert [(i, d.hex()) for i, d in sent] == [
        (s["in"]["can_id"], s["in"]["data"]) for s in cut["steps"]
    ]
    app = _reference_end("handshake", local_is_initiator=True)
    received = []
    for step in cut["steps"]:
        for out in step["out"]:
            plain = app.open(out["can_id"], bytes.fromhex(out["data"]))
            if plain is not None:
                received.append(plain.hex())
    assert received == cut["payloads"]
    # the second message's data frame left before its authenticator arrived
    assert [len(step["out"]) for step in cut["steps"]] == [0, 2, 1, 1]


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=NAMES)
def test_python_can_isotp_reads_the_documented_frames(message: dict[str, Any]) -> None:
    """The frames as written are an ISO-TP transfer another stack reads (flow control from
    the receiver: 30 08 00, block size 8, no separation time)."""
    txid = message["frames"][0]["can_id"]
    channel = f"vectors-{txid:08x}"
    sender = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
    receiver_bus = can.Bus(interface="virtual", channel=channel)
    stack = isotp.CanStack(
        receiver_bus,
        address=isotp.Address(isotp.AddressingMode.Normal_29bits, txid=txid ^ 1 << 18, rxid=txid),
        params={"max_frame_size": 4095},
    )
    try:
        for frame in message["frames"]:
            sender.send(
                can.Message(
                    arbitration_id=frame["can_id"],
                    data=bytes.fromhex(frame["data"]),
                    is_extended_id=True,
                )
            )
            for _ in range(20):
                stack.process()
        received = stack.recv()
        assert received is not None and received.hex() == message["isotp_payload"]
    finally:
        sender.shutdown()
        receiver_bus.shutdown()


def test_the_control_channel_sends_exactly_the_documented_frames() -> None:
    """A real transfer between two control channel ends, recorded on the bus."""
    message = VECTORS["pairing"]["messages"][2]  # pair_delivery: a long one
    txid = message["frames"][0]["can_id"]
    rxid = txid ^ 1 << 18  # the other direction of the module's channel
    channel = f"vectors-send-{txid:08x}"
    recorder = can.Bus(interface="virtual", channel=channel)
    a = CanPort(can.Bus(interface="virtual", channel=channel), "a")
    b = CanPort(can.Bus(interface="virtual", channel=channel), "b")
    sender, receiver = MessageChannel(a, txid, rxid), MessageChannel(b, rxid, txid)
    try:
        got: list[bytes | None] = []
        thread = threading.Thread(target=lambda: got.append(receiver.recv(5.0)))
        thread.start()
        sender.send(bytes.fromhex(message["bytes"]))
        thread.join()
        assert got == [bytes.fromhex(message["bytes"])]
        seen = []
        while (msg := recorder.recv(0.2)) is not None:
            if msg.arbitration_id == txid:
                seen.append({"can_id": msg.arbitration_id, "data": bytes(msg.data).hex()})
        assert seen == message["frames"]
    finally:
        sender.close()
        receiver.close()
        a.close()
        b.close()
        recorder.shutdown()
