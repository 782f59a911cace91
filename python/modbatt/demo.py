"""``modbatt demo``: the secure frame path at work on two python-can ``virtual`` buses.

An app on CAN 1 sends a module command through the pack controller's gateway to a battery
module on CAN 2; the module answers with telemetry the other way; then an attacker on CAN 2
replays the module's frames and sends a plain (downgraded) frame, and the gateway drops both.
Key halves are random here; in the full system they come from the API-Bridge (a later issue).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import can

from modbatt import Gateway, LinkKey, Session, compose_id, frames_of, logical_id
from modbatt.transport import from_message, to_message

APP_ID = "COMP-alice-app"
PACK_ID = "COMP-alice-pack"
MODULE_ID = "COMP-alice-module-5"
CAN1, CAN2 = 0, 1
LINK_APP, LINK_MODULE = 0, 1
STATE_CHANGE = 0x514
STATUS_1 = 0x502
BASE_MASK = 0x7FF << 18
MODULE_RANGE_MASK = 0x7F0 << 18
RECV_TIMEOUT_S = 1.0


@dataclass
class DemoReport:
    """What the demo delivered and dropped, for the tests."""

    command_sent: bytes = b""
    command_received: bytes = b""
    telemetry_sent: bytes = b""
    telemetry_received: bytes = b""
    gateway_stats: dict[str, int] = field(default_factory=dict)


def _hex(data: bytes) -> str:
    return data.hex(" ") if data else "-"


def _receive(bus: can.BusABC, count: int) -> list[tuple[int, bytes]]:
    frames = []
    for _ in range(count):
        message = bus.recv(timeout=RECV_TIMEOUT_S)
        if message is None:
            raise TimeoutError(f"expected {count} frames on {bus.channel_info}")
        frames.append(from_message(message))
    return frames


def _gateway_pump(
    gateway: Gateway,
    source: can.BusABC,
    source_index: int,
    buses: dict[int, can.BusABC],
    count: int,
) -> list[tuple[int, bytes]]:
    """Receive `count` frames on one side of the pack, step each and send what comes out."""
    received = _receive(source, count)
    for can_id, data in received:
        for bus_index, out_id, out_data in gateway.step(source_index, can_id, data):
            buses[bus_index].send(to_message(out_id, out_data))
    return received


def run_demo(out: Callable[[str], object] = print) -> DemoReport:
    """Run the demo, narrating to `out`; returns what was delivered."""
    report = DemoReport()
    run = uuid.uuid4().hex[:8]
    channels = (f"modbatt-demo-{run}-can1", f"modbatt-demo-{run}-can2")
    out("modbatt demo: the secure frame path on python-can virtual buses")
    out(
        f"  CAN 1 (app <-> pack) = virtual:{channels[0]}\n"
        f"  CAN 2 (pack <-> modules) = virtual:{channels[1]}"
    )

    # Device key halves: random here, from the API-Bridge in the full system.
    app_pack = LinkKey(os.urandom(64), APP_ID, os.urandom(64), PACK_ID)
    pack_module = LinkKey(os.urandom(64), PACK_ID, os.urandom(64), MODULE_ID)
    out(f"  link keys: app<->pack {app_pack.fingerprint}, pack<->module {pack_module.fingerprint}")
    out("  (fingerprints only: key bytes never leave the Rust core)")

    # One session per link, from nonces both ends contribute.
    nonce = {name: os.urandom(16) for name in ("app", "pack_app", "pack_module", "module")}
    app = Session(app_pack, APP_ID, PACK_ID, nonce["app"], nonce["pack_app"])
    module = Session(pack_module, MODULE_ID, PACK_ID, nonce["module"], nonce["pack_module"])
    gateway = Gateway()
    gateway.install_session(
        LINK_APP, Session(app_pack, PACK_ID, APP_ID, nonce["pack_app"], nonce["app"])
    )
    gateway.install_session(
        LINK_MODULE, Session(pack_module, PACK_ID, MODULE_ID, nonce["pack_module"], nonce["module"])
    )
    # App commands to modules go CAN 1 -> CAN 2; module messages (0x500-0x50F) go back.
    gateway.add_rule(
        CAN1, compose_id(STATE_CHANGE, 0), BASE_MASK, CAN2, inbound=LINK_APP, outbound=LINK_MODULE
    )
    gateway.add_rule(
        CAN2, compose_id(0x500, 0), MODULE_RANGE_MASK, CAN1, inbound=LINK_MODULE, outbound=LINK_APP
    )

    with (
        can.Bus(interface="virtual", channel=channels[0]) as app_bus,
        can.Bus(interface="virtual", channel=channels[0]) as pack_can1,
        can.Bus(interface="virtual", channel=channels[1]) as pack_can2,
        can.Bus(interface="virtual", channel=channels[1]) as module_bus,
        can.Bus(interface="virtual", channel=channels[1]) as attacker,
    ):
        buses = {CAN1: pack_can1, CAN2: pack_can2}

        out(
            "\n1. The app commands module 5 to On "
            "(STATE_CHANGE, 4 bytes: module 5, state 3, HV 400.0 V)"
        )
        report.command_sent = bytes([5, 3]) + (4000).to_bytes(2, "little")
        frames = frames_of(app.seal(compose_id(STATE_CHANGE, 5), report.command_sent))
        for can_id, data in frames:
            out(f"   CAN 1  0x{can_id:08X}  [{len(data)}] {_hex(data)}")
            app_bus.send(to_message(can_id, data))
        _gateway_pump(gateway, pack_can1, CAN1, buses, len(frames))
        for can_id, data in _receive(module_bus, len(frames)):
            out(f"   CAN 2  0x{can_id:08X}  [{len(data)}] {_hex(data)}")
            opened = module.open(can_id, data)
            if opened is not None:
                report.command_received = opened
                out(f"   module opens 0x{logical_id(can_id):08X}: {_hex(opened)}")

        out(
            "\n2. Module 5 reports STATUS_1 "
            "(8 bytes: state On, SOC 80 %, 14 cells, -20.0 A, 50.4 V)"
        )
        current = round((-20.0 + 655.36) / 0.02)
        report.telemetry_sent = (
            bytes([0x03, 160, 200, 14])
            + current.to_bytes(2, "little")
            + (3360).to_bytes(2, "little")
        )
        frames = frames_of(module.seal(compose_id(STATUS_1, 5), report.telemetry_sent))
        for can_id, data in frames:
            out(f"   CAN 2  0x{can_id:08X}  [{len(data)}] {_hex(data)}")
            module_bus.send(to_message(can_id, data))
        captured = _gateway_pump(gateway, pack_can2, CAN2, buses, len(frames))
        for can_id, data in _receive(app_bus, len(frames)):
            out(f"   CAN 1  0x{can_id:08X}  [{len(data)}] {_hex(data)}")
            opened = app.open(can_id, data)
            if opened is not None:
                report.telemetry_received = opened
                out(f"   app opens 0x{logical_id(can_id):08X}: {_hex(opened)}")

        out("\n3. An attacker on CAN 2 replays the module's frames, then sends a plain STATUS_1")
        for can_id, data in captured:
            attacker.send(to_message(can_id, data))
        plain = compose_id(STATUS_1, 5)
        attacker.send(to_message(plain, report.telemetry_sent))
        _gateway_pump(gateway, pack_can2, CAN2, buses, len(captured) + 1)
        leaked = app_bus.recv(timeout=0.2)
        out(f"   frames reaching CAN 1: {0 if leaked is None else 1}")

    report.gateway_stats = gateway.stats()
    dropped = {
        k: v
        for k, v in report.gateway_stats.items()
        if v and k not in ("received", "forwarded", "pending")
    }
    out(
        f"\ngateway counters: received {report.gateway_stats['received']}, "
        f"forwarded {report.gateway_stats['forwarded']}, held for their authenticator "
        f"{report.gateway_stats['pending']}, dropped {dropped}"
    )
    delivered = (
        report.command_received == report.command_sent
        and report.telemetry_received == report.telemetry_sent
    )
    out(
        "result: "
        + (
            "both messages delivered intact; the attack was dropped"
            if delivered
            else "FAILED: a message did not arrive intact"
        )
    )
    return report
