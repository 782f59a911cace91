"""Regenerate ``exchanges.json``: the control channel, bootstrap, handshake, pairing and
cut-through, byte by byte, from fixed synthetic inputs (docs/PROTOCOL.md §9a).

One chain, as a pack's life goes: the app bootstraps the pack (X25519, key delivery), runs the
session handshake, and the pack answers sealed; the pack pairs a module, runs the handshake
with it, and the module's first sealed telemetry crosses the gateway to the app, the second
one cut through. Every value an implementation has to reproduce is in the file; the tests in
``tests/test_exchange_vectors.py`` check this package, the Python reference and python-can's
ISO-TP stack against it. The known answers are frozen: run this only when PROTOCOL.md changes
the wire on purpose, and update PROTOCOL.md §9a from ``--markdown`` in the same commit.

    .venv/bin/python tests/vectors/generate_exchanges.py > tests/vectors/exchanges.json
    .venv/bin/python tests/vectors/generate_exchanges.py --markdown   # PROTOCOL.md §9a
"""

from __future__ import annotations

import json
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from modbatt import Gateway, LinkKey, Session, compose_id, frames_of, set_encrypted
from modbatt.bus.isotp_link import with_check
from modbatt.pack.controller import CAN2, routing_rules
from modbatt.pack.keys import APP_LINK
from modbatt.protocol import reference as ref
from modbatt.protocol.bootstrap import ACK_LABEL, DELIVERY_LABEL, Ephemeral, delivery_keys, seal
from modbatt.protocol.catalogue import SECURED_COMMAND_XOR, catalogue
from modbatt.protocol.control import APP_TO_PACK, PACK_TO_APP, encode
from modbatt.protocol.handshake import Initiator, Responder
from modbatt.protocol.pairing import module_channel_ids, responder_id

# Fixed, obviously synthetic inputs: nothing here is a real key.
APP_HOST_ID = "host-00000000-0000-4000-8000-000000000001"
PACK_SERIAL = "PACK-0001"
APP_CID = "COMP-alice-1753769400"
PACK_CID = "COMP-alice-1753769423"
MODULE_CID = "COMP-alice-1753769424"
LCT_APP_PACK = "lct_00000000000000000000000000000001"
LCT_PACK_MODULE = "lct_00000000000000000000000000000002"
UNIQUE_ID = 0x1E6AC1
MODULE_ID = 5
X25519_PRIVATE = {
    "app": bytes(range(0x10, 0x30)),
    "pack (bootstrap)": bytes(range(0x30, 0x50)),
    "pack (pairing)": bytes(range(0x50, 0x70)),
    "module": bytes(range(0x70, 0x90)),
}
GCM_NONCES = {
    "key_delivery": bytes(range(0x01, 0x0D)),
    "key_ack": bytes(range(0x11, 0x1D)),
    "pair_delivery": bytes(range(0x21, 0x2D)),
    "pair_ack": bytes(range(0x31, 0x3D)),
}
HANDSHAKE_NONCES = {
    "app": bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"),
    "pack (app link)": bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"),
    "pack (module link)": bytes.fromhex("d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"),
    "module": bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"),
}


def half(first: int) -> str:
    """A 64-byte synthetic key half, in hex."""
    return bytes((first + n) % 256 for n in range(64)).hex()


HALVES = {
    "app_device_key_half": half(0x80),  # the app-pack LCT's half A (the app's)
    "app_lct_key_half": half(0x90),
    "pack_device_key_half": half(0x00),  # its half B (the pack's)
    "pack_lct_key_half": half(0x10),
    "pack_module_device_key_half": half(0x20),  # the pack-module LCT's half A (the pack's)
    "pack_module_lct_key_half": half(0x30),
    "module_device_key_half": half(0x40),  # its half B (the module's)
    "module_lct_key_half": half(0x50),
}


def ephemeral(name: str) -> Ephemeral:
    return Ephemeral(X25519PrivateKey.from_private_bytes(X25519_PRIVATE[name]))


def fixed(nonce: bytes) -> Any:
    """A random source that returns `nonce` once (a handshake end draws one nonce)."""
    return lambda n: nonce[:n]


def isotp_frames(payload: bytes) -> list[bytes]:
    """ISO 15765-2 frames of one payload, classic CAN, normal addressing, no padding."""
    if len(payload) <= 7:
        return [bytes([len(payload)]) + payload]
    frames = [bytes([0x10 | len(payload) >> 8, len(payload) & 0xFF]) + payload[:6]]
    rest, sequence = payload[6:], 1
    while rest:
        frames.append(bytes([0x20 | sequence]) + rest[:7])
        rest, sequence = rest[7:], (sequence + 1) % 16
    return frames


def control(txid: int, message: dict[str, Any]) -> dict[str, Any]:
    """A plain control message: its JSON bytes, the ISO-TP payload and the frames."""
    data = encode(message)
    payload = with_check(data)
    return {
        "message": message,
        "bytes": data.hex(),
        "isotp_payload": payload.hex(),
        "frames": [{"can_id": txid, "data": f.hex()} for f in isotp_frames(payload)],
    }


def sealed_control(txid: int, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    """A sealed control message (§4.4) on `txid` with E set: stream = the plain `txid`."""
    data = encode(message)
    sealed = session.seal_message(txid, data)
    payload = with_check(sealed)
    can_id = set_encrypted(txid)
    return {
        "message": message,
        "bytes": data.hex(),
        "stream": txid,
        "sealed": sealed.hex(),
        "isotp_payload": payload.hex(),
        "frames": [{"can_id": can_id, "data": f.hex()} for f in isotp_frames(payload)],
    }


def wire(frames: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    return [{"can_id": can_id, "data": data.hex()} for can_id, data in frames]


def key_exchange(
    initiator: str, initiator_id: str, responder: str, responder_id_: str
) -> tuple[Ephemeral, Ephemeral, bytes, dict[str, Any]]:
    a, b = ephemeral(initiator), ephemeral(responder)
    shared = a.shared_secret(b.public)
    assert shared == b.shared_secret(a.public)
    keys = delivery_keys(shared, initiator_id, responder_id_, a.public, b.public)
    return (
        a,
        b,
        shared,
        {
            "initiator_id": initiator_id,
            "responder_id": responder_id_,
            "initiator_private": X25519_PRIVATE[initiator].hex(),
            "initiator_public": a.public.hex(),
            "responder_private": X25519_PRIVATE[responder].hex(),
            "responder_public": b.public.hex(),
            "shared_secret": shared.hex(),
            "delivery_key": keys.delivery.hex(),
            "acknowledgement_key": keys.acknowledgement.hex(),
        },
    )


def handshake(
    link: LinkKey,
    initiator_id: str,
    responder_id_: str,
    nonces: tuple[bytes, bytes],
    link_inputs: tuple[bytes, str, bytes, str, bytes],
) -> tuple[Session, Session, dict[str, Any]]:
    init_end = Initiator(link, initiator_id, responder_id_, fixed(nonces[0]))
    resp_end = Responder(link, responder_id_, initiator_id, fixed(nonces[1]))
    init = init_end.start()
    response = resp_end.on_init(init)
    finish, initiator_session = init_end.on_response(response)
    responder_session = resp_end.on_finish(finish)
    key = ref.derive_link_key(*link_inputs)
    a_to_b = ref.derive_direction_keys(key, initiator_id, responder_id_, *nonces)
    b_to_a = ref.derive_direction_keys(key, responder_id_, initiator_id, nonces[1], nonces[0])
    return (
        initiator_session,
        responder_session,
        {
            "initiator_id": initiator_id,
            "responder_id": responder_id_,
            "link_key": key.hex(),
            "fingerprint": link.fingerprint,
            "initiator_nonce": nonces[0].hex(),
            "responder_nonce": nonces[1].hex(),
            "init": init.hex(),
            "response": response.hex(),
            "finish": finish.hex(),
            "initiator_to_responder": {"enc_key": a_to_b[0].hex(), "mac_key": a_to_b[1].hex()},
            "responder_to_initiator": {"enc_key": b_to_a[0].hex(), "mac_key": b_to_a[1].hex()},
        },
    )


def build() -> dict[str, Any]:
    """Every exchange of the chain, as the JSON file holds it."""
    out: dict[str, Any] = {}

    # --- bootstrap: app -> pack on CAN 1 (PROTOCOL.md §2.4, §8b) ---------------------------
    app_eph, pack_eph, shared, exchange = key_exchange(
        "app", APP_HOST_ID, "pack (bootstrap)", PACK_SERIAL
    )
    delivery_payload = {
        "app_component_id": APP_CID,
        "app_device_key_half": HALVES["app_device_key_half"],
        "lct_id": LCT_APP_PACK,
        "pack_component_id": PACK_CID,
        "pack_device_key_half": HALVES["pack_device_key_half"],
        "pack_lct_key_half": HALVES["pack_lct_key_half"],
    }
    key_delivery = seal(
        bytes.fromhex(exchange["delivery_key"]),
        DELIVERY_LABEL,
        delivery_payload,
        GCM_NONCES["key_delivery"],
    )
    app_inputs = (
        bytes.fromhex(HALVES["app_device_key_half"]),
        APP_CID,
        bytes.fromhex(HALVES["pack_device_key_half"]),
        PACK_CID,
        shared,
    )
    app_link = LinkKey(*app_inputs)
    ack_payload = {"link": app_link.fingerprint, "status": "stored"}
    key_ack = seal(
        bytes.fromhex(exchange["acknowledgement_key"]),
        ACK_LABEL,
        ack_payload,
        GCM_NONCES["key_ack"],
    )
    out["bootstrap"] = {
        **exchange,
        "delivery_label": DELIVERY_LABEL.decode(),
        "acknowledgement_label": ACK_LABEL.decode(),
        "key_delivery_payload": delivery_payload,
        "key_delivery_nonce": GCM_NONCES["key_delivery"].hex(),
        "key_delivery_sealed": key_delivery.hex(),
        "key_ack_payload": ack_payload,
        "key_ack_nonce": GCM_NONCES["key_ack"].hex(),
        "key_ack_sealed": key_ack.hex(),
        "messages": [
            control(
                APP_TO_PACK,
                {
                    "type": "bootstrap_hello",
                    "app_id": APP_HOST_ID,
                    "public_key": app_eph.public.hex(),
                    "rid": "0001",
                },
            ),
            control(
                PACK_TO_APP,
                {
                    "type": "bootstrap_hello_ack",
                    "public_key": pack_eph.public.hex(),
                    "serial": PACK_SERIAL,
                    "rid": "0001",
                },
            ),
            control(
                APP_TO_PACK, {"type": "key_delivery", "sealed": key_delivery.hex(), "rid": "02"}
            ),
            control(PACK_TO_APP, {"type": "key_ack", "sealed": key_ack.hex(), "rid": "02"}),
        ],
    }

    # --- the app link's handshake, and the pack's first sealed answer ----------------------
    app_session, pack_app_session, hs = handshake(
        app_link,
        APP_CID,
        PACK_CID,
        (HANDSHAKE_NONCES["app"], HANDSHAKE_NONCES["pack (app link)"]),
        app_inputs,
    )
    upgraded = {"type": "upgraded", "security_level": 1, "state": 2, "rid": "03"}
    out["handshake"] = {
        **hs,
        "link_inputs": "the bootstrap's: app and pack device halves, X25519 shared secret",
        "messages": [
            control(APP_TO_PACK, {"type": "handshake_init", "data": hs["init"], "rid": "03"}),
            control(
                PACK_TO_APP, {"type": "handshake_response", "data": hs["response"], "rid": "03"}
            ),
            control(APP_TO_PACK, {"type": "handshake_finish", "data": hs["finish"], "rid": "04"}),
            sealed_control(PACK_TO_APP, pack_app_session, {**upgraded, "rid": "04"}),
        ],
    }

    # --- pairing: pack -> module on CAN 2, over the module's channel (§8c) -----------------
    to_module, to_pack = module_channel_ids(MODULE_ID)
    pack_eph2, module_eph, shared2, exchange2 = key_exchange(
        "pack (pairing)", PACK_CID, "module", responder_id(UNIQUE_ID)
    )
    pair_payload = {
        "module_component_id": MODULE_CID,
        "module_device_key_half": HALVES["module_device_key_half"],
        "module_lct_key_half": HALVES["module_lct_key_half"],
        "pack_component_id": PACK_CID,
        "pack_device_key_half": HALVES["pack_module_device_key_half"],
    }
    pair_delivery = seal(
        bytes.fromhex(exchange2["delivery_key"]),
        DELIVERY_LABEL,
        pair_payload,
        GCM_NONCES["pair_delivery"],
    )
    module_inputs = (
        bytes.fromhex(HALVES["pack_module_device_key_half"]),
        PACK_CID,
        bytes.fromhex(HALVES["module_device_key_half"]),
        MODULE_CID,
        shared2,
    )
    module_link = LinkKey(*module_inputs)
    pair_ack_payload = {"link": module_link.fingerprint}
    pair_ack = seal(
        bytes.fromhex(exchange2["acknowledgement_key"]),
        ACK_LABEL,
        pair_ack_payload,
        GCM_NONCES["pair_ack"],
    )
    pack_module_session, module_session, hs2 = handshake(
        module_link,
        PACK_CID,
        MODULE_CID,
        (HANDSHAKE_NONCES["pack (module link)"], HANDSHAKE_NONCES["module"]),
        module_inputs,
    )
    out["pairing"] = {
        **exchange2,
        "unique_id": UNIQUE_ID,
        "module_id": MODULE_ID,
        "pair_delivery_payload": pair_payload,
        "pair_delivery_nonce": GCM_NONCES["pair_delivery"].hex(),
        "pair_delivery_sealed": pair_delivery.hex(),
        "pair_ack_payload": pair_ack_payload,
        "pair_ack_nonce": GCM_NONCES["pair_ack"].hex(),
        "pair_ack_sealed": pair_ack.hex(),
        "handshake": hs2,
        "messages": [
            control(
                to_module,
                {
                    "type": "pair_hello",
                    "pack_id": PACK_CID,
                    "public_key": pack_eph2.public.hex(),
                    "rid": "10",
                },
            ),
            control(
                to_pack,
                {
                    "type": "pair_hello_ack",
                    "public_key": module_eph.public.hex(),
                    "unique_id": UNIQUE_ID,
                    "rid": "10",
                },
            ),
            control(
                to_module, {"type": "pair_delivery", "sealed": pair_delivery.hex(), "rid": "11"}
            ),
            control(to_pack, {"type": "pair_ack", "sealed": pair_ack.hex(), "rid": "11"}),
            control(to_module, {"type": "handshake_init", "data": hs2["init"], "rid": "12"}),
            control(to_pack, {"type": "handshake_response", "data": hs2["response"], "rid": "12"}),
            control(to_module, {"type": "handshake_finish", "data": hs2["finish"], "rid": "13"}),
            sealed_control(
                to_pack, module_session, {"type": "upgraded", "unique_id": UNIQUE_ID, "rid": "13"}
            ),
        ],
    }

    # --- the paired module's traffic: a sealed command to it, its telemetry to the app -----
    db = catalogue()
    command_id, command = db.encode(
        "STATE_CHANGE", MODULE_ID, {"ModuleId": MODULE_ID, "RequestedState": 3}
    )
    secured_id = command_id ^ SECURED_COMMAND_XOR
    command_frames = frames_of(pack_module_session.seal(secured_id, command))
    assert module_session.open(*command_frames[0]) == command
    gateway = Gateway(cut_through=True)
    routing_rules(gateway, [MODULE_ID], bridge_unpaired=False)
    gateway.install_session(APP_LINK, pack_app_session)
    gateway.install_session(MODULE_ID, pack_module_session)
    status_id = compose_id(0x502, MODULE_ID)
    statuses = [bytes.fromhex("03002c0e247bf812"), bytes.fromhex("03002c0e287bfa12")]
    steps: list[dict[str, Any]] = []
    for payload in statuses:
        for can_id, data in frames_of(module_session.seal(status_id, payload)):
            outputs = gateway.step(CAN2, can_id, data)
            steps.append(
                {
                    "in": {"can_id": can_id, "data": data.hex()},
                    "out": [{"bus": bus, "can_id": i, "data": d.hex()} for bus, i, d in outputs],
                }
            )
    opened = []
    for step in steps:
        for frame in step["out"]:
            plain = app_session.open(frame["can_id"], bytes.fromhex(frame["data"]))
            if plain is not None:
                opened.append(plain)
    assert opened == statuses, opened
    out["module_traffic"] = {
        "command": {
            "name": "STATE_CHANGE On to module 5, on its secured base (0x514 XOR 0x050 = 0x544)",
            "logical_id": secured_id,
            "payload": command.hex(),
            "freshness": 0,
            "wire": wire(command_frames),
        },
        "cut_through": {
            "name": "two STATUS_1 from module 5 through the gateway to the app; the second "
            "message's data frame is forwarded before its authenticator arrives",
            "logical_id": status_id,
            "payloads": [p.hex() for p in statuses],
            "steps": steps,
        },
    }
    return out


def compact(value: Any) -> str:
    """Canonical JSON (PROTOCOL.md §8a), as text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def markdown(vectors: dict[str, Any]) -> str:
    """PROTOCOL.md §9a: the same values, laid out for a reader."""
    lines: list[str] = []

    def block(title: str, rows: list[str]) -> None:
        lines.extend([f"#### {title}", "", "```text", *rows, "```", ""])

    def frames(message: dict[str, Any]) -> list[str]:
        rows = [f"json            {message['bytes']}"]
        if "sealed" in message:
            rows.append(f"sealed (§4.4)   stream 0x{message['stream']:08X}: {message['sealed']}")
        rows.append(f"isotp payload   {message['isotp_payload']}")
        rows += [
            f"  0x{f['can_id']:08X}  [{len(f['data']) // 2}] {f['data']}" for f in message["frames"]
        ]
        return rows

    boot = vectors["bootstrap"]
    block(
        "Bootstrap key agreement (app → pack), §2.4",
        [
            f"initiator id     {boot['initiator_id']}",
            f"responder id     {boot['responder_id']}",
            f"app private      {boot['initiator_private']}",
            f"app public       {boot['initiator_public']}",
            f"pack private     {boot['responder_private']}",
            f"pack public      {boot['responder_public']}",
            f"shared secret    {boot['shared_secret']}",
            f"delivery key     {boot['delivery_key']}",
            f"ack key          {boot['acknowledgement_key']}",
            f"key_delivery     nonce {boot['key_delivery_nonce']}",
            f"  payload        {compact(boot['key_delivery_payload'])}",
            f"  sealed         {boot['key_delivery_sealed']}",
            f"key_ack          nonce {boot['key_ack_nonce']}",
            f"  payload        {compact(boot['key_ack_payload'])}",
            f"  sealed         {boot['key_ack_sealed']}",
        ],
    )
    for message in boot["messages"]:
        block(f"Bootstrap: `{message['message']['type']}`", frames(message))
    for title, hs in (
        ("App link handshake (app → pack), §2.3", vectors["handshake"]),
        ("Module link handshake (pack → module 5), §2.3", vectors["pairing"]["handshake"]),
    ):
        block(
            title,
            [
                f"initiator        {hs['initiator_id']}  nonce {hs['initiator_nonce']}",
                f"responder        {hs['responder_id']}  nonce {hs['responder_nonce']}",
                f"link key         {hs['link_key']}  (fingerprint {hs['fingerprint']})",
                f"INIT             {hs['init']}",
                f"RESPONSE         {hs['response']}",
                f"FINISH           {hs['finish']}",
                f"i→r enc / mac    {hs['initiator_to_responder']['enc_key']} / "
                f"{hs['initiator_to_responder']['mac_key']}",
                f"r→i enc / mac    {hs['responder_to_initiator']['enc_key']} / "
                f"{hs['responder_to_initiator']['mac_key']}",
            ],
        )
    for message in vectors["handshake"]["messages"]:
        block(f"App link: `{message['message']['type']}`", frames(message))
    pair = vectors["pairing"]
    block(
        "Pairing key agreement (pack → module, unique id 0x1E6AC1, module id 5), §8c",
        [
            f"initiator id     {pair['initiator_id']}",
            f"responder id     {pair['responder_id']}",
            f"pack private     {pair['initiator_private']}",
            f"pack public      {pair['initiator_public']}",
            f"module private   {pair['responder_private']}",
            f"module public    {pair['responder_public']}",
            f"shared secret    {pair['shared_secret']}",
            f"delivery key     {pair['delivery_key']}",
            f"ack key          {pair['acknowledgement_key']}",
            f"pair_delivery    nonce {pair['pair_delivery_nonce']}",
            f"  payload        {compact(pair['pair_delivery_payload'])}",
            f"  sealed         {pair['pair_delivery_sealed']}",
            f"pair_ack         nonce {pair['pair_ack_nonce']}",
            f"  payload        {compact(pair['pair_ack_payload'])}",
            f"  sealed         {pair['pair_ack_sealed']}",
        ],
    )
    for message in pair["messages"]:
        block(f"Pairing channel: `{message['message']['type']}`", frames(message))
    command = vectors["module_traffic"]["command"]
    block(
        command["name"],
        [
            f"logical id       0x{command['logical_id']:08X}   payload {command['payload']}",
            *(
                f"on the wire      0x{w['can_id']:08X}  [{len(w['data']) // 2}] {w['data']}"
                for w in command["wire"]
            ),
        ],
    )
    cut = vectors["module_traffic"]["cut_through"]
    rows = [f"logical id       0x{cut['logical_id']:08X}   payloads {', '.join(cut['payloads'])}"]
    for step in cut["steps"]:
        rows.append(f"CAN 2 in         0x{step['in']['can_id']:08X}  {step['in']['data']}")
        rows += [f"  CAN 1 out      0x{o['can_id']:08X}  {o['data']}" for o in step["out"]] or [
            "  (held)"
        ]
    block(cut["name"], rows)
    return "\n".join(lines)


def main() -> None:
    """Print the vectors as JSON (or, with --markdown, as PROTOCOL.md §9a)."""
    vectors = build()
    if "--markdown" in sys.argv[1:]:
        print(markdown(vectors))
    else:
        print(json.dumps(vectors, indent=2))


if __name__ == "__main__":
    main()
