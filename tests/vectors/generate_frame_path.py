"""Regenerate ``frame_path.json`` from ``modbatt.protocol.reference`` (the spec's executable form).

The known answers are frozen in the JSON file; run this only when PROTOCOL.md changes the wire
format on purpose, and update PROTOCOL.md's worked examples from its output in the same commit.

    .venv/bin/python tests/vectors/generate_frame_path.py > tests/vectors/frame_path.json
    .venv/bin/python tests/vectors/generate_frame_path.py --markdown   # PROTOCOL.md §9
"""

from __future__ import annotations

import json
import sys
from typing import Any

from modbatt.protocol import reference as ref
from modbatt.protocol.frames import frames_of

# Fixed, obviously synthetic inputs: nothing here is a real key.
HALF_PACK = bytes(range(0x00, 0x40))
HALF_MODULE = bytes(range(0x40, 0x80))
HALF_APP = bytes(range(0x80, 0xC0))
DH_SECRET = bytes(range(0xC0, 0xE0))
PACK_ID = "COMP-alice-1753769423"
MODULE_ID = "COMP-alice-1753769424"
APP_ID = "COMP-alice-1753769400"

CASES = [
    # (name, link, sender, receiver, can_id, payload, fd, freshness)
    (
        "max_state copy to module 5 on its secured base (0x517 XOR 0x050), single frame",
        "pack_module",
        PACK_ID,
        MODULE_ID,
        0x547 << 18 | 0x05,
        bytes([0x03]),
        False,
        0,
    ),
    (
        "status 1 from module 5, classic pair",
        "pack_module",
        MODULE_ID,
        PACK_ID,
        0x502 << 18 | 0x05,
        bytes.fromhex("03a0c80e187c200d"),
        False,
        300,
    ),
    (
        "state change to module 5 on its secured base (0x514 XOR 0x050), single frame (2 bytes)",
        "pack_module",
        PACK_ID,
        MODULE_ID,
        0x544 << 18 | 0x05,
        bytes.fromhex("0503"),
        False,
        1,
    ),
    (
        "cell detail of module 5, cell 3, classic pair (8 bytes)",
        "pack_module",
        MODULE_ID,
        PACK_ID,
        0x505 << 18 | 0x05,
        bytes.fromhex("030e631f0a0f0000"),
        False,
        12,
    ),
    (
        "app bus CAN FD, 20 bytes, pack -> app",
        "app_pack",
        PACK_ID,
        APP_ID,
        0x421 << 18 | 0x00,
        bytes(range(0x30, 0x44)),
        True,
        70000,
    ),
    (
        "time request, 0 bytes, single frame",
        "pack_module",
        MODULE_ID,
        PACK_ID,
        0x506 << 18 | 0x05,
        b"",
        False,
        5,
    ),
]

MESSAGE_CASES = [
    # (name, link, sender, receiver, stream, payload, freshness)
    (
        "control message over ISO-TP, app -> pack, 40 bytes",
        "app_pack",
        APP_ID,
        PACK_ID,
        0x460 << 18,
        b'{"type":"configure","max_state":3,"x":1}',
        2,
    ),
]

NONCES = {
    PACK_ID: bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
    MODULE_ID: bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"),
    APP_ID: bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"),
}


def markdown(vectors: dict[str, Any]) -> str:
    """The worked examples as PROTOCOL.md shows them, with every intermediate value."""
    lines = []
    for name, link in vectors["links"].items():
        lines += [
            f"#### Link `{name}`",
            "",
            "```text",
            f"id_a        {link['id_a']}",
            f"half_a      {link['half_a']}",
            f"id_b        {link['id_b']}",
            f"half_b      {link['half_b']}",
            f"dh_secret   {link['dh_secret'] or '(none)'}",
            f"link key    {link['link_key']}",
            "```",
            "",
        ]
    for number, frame in enumerate(vectors["frames"], 1):
        enc, mac = bytes.fromhex(frame["enc_key"]), bytes.fromhex(frame["mac_key"])
        payload = bytes.fromhex(frame["payload"])
        can_id, freshness, fd = frame["can_id"], frame["freshness"], frame["fd"]
        n = len(payload)
        form = ref.FORMAT_FD if fd else (ref.FORMAT_SINGLE if n <= 3 else ref.FORMAT_PAIR_DATA)
        ct = ref.aes_ctr(enc, can_id, freshness, payload)
        mac_in = ref.mac_input(ref.MAC_CODE[form], can_id, freshness, ct)
        tag = ref.aes_cmac(mac, mac_in)
        lines += [
            f"#### Example {number}: {frame['name']}",
            "",
            "```text",
            f"link            {frame['link']}",
            f"sender          {frame['sender']}  nonce {frame['sender_nonce']}",
            f"receiver        {frame['receiver']}  nonce {frame['receiver_nonce']}",
            f"enc key         {frame['enc_key']}",
            f"mac key         {frame['mac_key']}",
            f"logical id      0x{can_id:08X}   payload ({n} B) {frame['payload'] or '(empty)'}",
            f"form            {['single', 'pair', 'pair', 'FD'][form]}   freshness {freshness} "
            f"(0x{freshness:X})",
            f"counter block   {ref.counter_block(can_id, freshness).hex()}",
            f"ciphertext      {ct.hex() or '(empty)'}",
            f"MAC input       {mac_in.hex()}",
            f"full CMAC       {tag.hex()}",
        ]
        for wire in frame["wire"]:
            lines.append(
                f"on the wire     0x{wire['can_id']:08X}  [{len(wire['data']) // 2:2}] "
                f"{wire['data']}"
            )
        lines += ["```", ""]
    for message in vectors.get("messages", []):
        stream, freshness = message["stream"], message["freshness"]
        payload = bytes.fromhex(message["payload"])
        lines += [
            f"#### Sealed message: {message['name']}",
            "",
            "```text",
            f"link            {message['link']}",
            f"sender          {message['sender']}  nonce {message['sender_nonce']}",
            f"receiver        {message['receiver']}  nonce {message['receiver_nonce']}",
            f"stream          0x{stream:08X}   freshness {freshness}",
            f"payload ({len(payload)} B) {message['payload']}",
            f"sealed ({len(message['sealed']) // 2} B) {message['sealed']}",
            "```",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    """Print the vectors as JSON (or, with --markdown, as PROTOCOL.md's worked examples)."""
    # name: (half_a, id_a, half_b, id_b, dh_secret)
    links: dict[str, tuple[bytes, str, bytes, str, bytes | None]] = {
        "pack_module": (HALF_PACK, PACK_ID, HALF_MODULE, MODULE_ID, None),
        "app_pack": (HALF_APP, APP_ID, HALF_PACK, PACK_ID, DH_SECRET),
    }
    out_links: dict[str, dict[str, str | None]] = {}
    link_keys: dict[str, bytes] = {}
    for name, (half_a, id_a, half_b, id_b, dh_secret) in links.items():
        key = ref.derive_link_key(half_a, id_a, half_b, id_b, dh_secret)
        link_keys[name] = key
        out_links[name] = {
            "half_a": half_a.hex(),
            "id_a": id_a,
            "half_b": half_b.hex(),
            "id_b": id_b,
            "dh_secret": None if dh_secret is None else dh_secret.hex(),
            "link_key": key.hex(),
        }
    frames: list[dict[str, Any]] = []
    for name, link, sender, receiver, can_id, payload, fd, freshness in CASES:
        key = link_keys[link]
        enc, mac = ref.derive_direction_keys(
            key, sender, receiver, NONCES[sender], NONCES[receiver]
        )
        session = ref.ReferenceSession(key, sender, receiver, NONCES[sender], NONCES[receiver])
        session._tx_next[can_id] = freshness
        wire = session.seal(can_id, payload, fd=fd)
        frames.append(
            {
                "name": name,
                "link": link,
                "sender": sender,
                "receiver": receiver,
                "sender_nonce": NONCES[sender].hex(),
                "receiver_nonce": NONCES[receiver].hex(),
                "enc_key": enc.hex(),
                "mac_key": mac.hex(),
                "can_id": can_id,
                "payload": payload.hex(),
                "fd": fd,
                "freshness": freshness,
                "wire": [{"can_id": i, "data": d.hex()} for i, d in frames_of(wire)],
            }
        )
    messages: list[dict[str, Any]] = []
    for name, link, sender, receiver, stream, payload, freshness in MESSAGE_CASES:
        key = link_keys[link]
        session = ref.ReferenceSession(key, sender, receiver, NONCES[sender], NONCES[receiver])
        session._tx_next[stream] = freshness
        sealed = session.seal_message(stream, payload)
        messages.append(
            {
                "name": name,
                "link": link,
                "sender": sender,
                "receiver": receiver,
                "sender_nonce": NONCES[sender].hex(),
                "receiver_nonce": NONCES[receiver].hex(),
                "stream": stream,
                "payload": payload.hex(),
                "freshness": freshness,
                "sealed": sealed.hex(),
            }
        )
    vectors = {
        "about": "Known-answer vectors for docs/PROTOCOL.md, generated by "
        "modbatt.protocol.reference (tests/vectors/generate_frame_path.py). "
        "Test inputs only: no real keys.",
        "links": out_links,
        "frames": frames,
        "messages": messages,
    }
    print(markdown(vectors) if "--markdown" in sys.argv else json.dumps(vectors, indent=2))


if __name__ == "__main__":
    main()
