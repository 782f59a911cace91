"""App and pack controller end to end on a virtual CAN 1, with the real embedded API-Bridge."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import can
import pytest

from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig, RetryPolicy
from modbatt.app.app import App, AppError
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.transport import CanPort
from modbatt.errors import KeyHalfError
from modbatt.pack.controller import PackController
from modbatt.pack.keys import PackState
from modbatt.protocol.control import APP_TO_PACK, PACK_TO_APP
from modbatt.state.keystores import AppKeys
from modbatt.state.stores import AuditLog
from tests.api_bridge.test_api_bridge_faults import COMPONENT, LCT, Answer, FaultServer
from tests.api_bridge_server import BridgeProcess


@dataclass
class System:
    app: App
    pack: PackController
    recorded: can.BufferedReader
    bridge: ApiBridgeClient
    audit: AuditLog
    channel: str  # CAN 1's virtual channel, for another node on it


@pytest.fixture
def system(tmp_path: Path, api_bridge: BridgeProcess) -> Iterator[System]:
    channel = f"modbatt-can1-{uuid.uuid4().hex[:8]}"
    app_port = CanPort(can.Bus(interface="virtual", channel=channel), "app")
    pack_port = CanPort(can.Bus(interface="virtual", channel=channel), "pack")
    listener_bus = can.Bus(interface="virtual", channel=channel)  # a passive listener
    recorded = can.BufferedReader()
    listener = can.Notifier(listener_bus, [recorded])
    audit = AuditLog(tmp_path / "audit.jsonl")
    bridge = ApiBridgeClient(
        ApiBridgeConfig(base_url=api_bridge.url, retry=RetryPolicy(attempts=2))
    )
    # The pack's CAN 2 has no module on it: these tests are about the app link.
    can2_port = CanPort(can.Bus(interface="virtual", channel=f"{channel}-can2"), "pack2")
    serial = f"PACK-{uuid.uuid4().hex[:6]}"
    pack = PackController(serial, tmp_path / "pack", pack_port, can2_port, audit).start()
    app = App(
        tmp_path / "app",
        ControlEndpoint.open(app_port, APP_TO_PACK, PACK_TO_APP),
        bridge,
        audit,
    )
    system = System(app, pack, recorded, bridge, audit, channel)
    yield system
    system.pack.stop()
    app.endpoint.close()
    can2_port.close()
    listener.stop()
    listener_bus.shutdown()
    bridge.close()
    app_port.close()
    pack_port.close()


def test_discovery_of_a_factory_default_pack(system: System) -> None:
    info = system.app.discover()
    assert info["state"] == PackState.FACTORY_DEFAULT
    assert info["security_level"] == 0 and not info["registered"]
    assert info["capabilities"]["max_modules"] == 31


def test_bootstrap_upgrades_the_app_link(system: System) -> None:
    upgraded = system.app.bootstrap()
    assert upgraded["security_level"] == 1
    assert upgraded["state"] == PackState.BOOTSTRAP_COMPLETE
    status = system.app.status()  # now asked and answered sealed
    assert status["state"] == PackState.BOOTSTRAP_COMPLETE and status["links"]["can1"]
    assert system.app.endpoint.last_sealed
    assert system.audit.verify() is None
    events = [line for line in system.audit.path.read_text().splitlines()]
    assert any('"keys.stored"' in line for line in events)


def test_no_key_half_crosses_the_bus(system: System) -> None:
    system.app.bootstrap()
    keys = system.app.keystore.load()
    assert keys is not None and keys.lct_id is not None
    recovered = system.bridge.recover_lct_keys(keys.lct_id)
    secrets = [
        h.get_secret_value()
        for h in (
            recovered.device_key_half_a,
            recovered.lct_key_half_a,
            recovered.device_key_half_b,
            recovered.lct_key_half_b,
        )
    ]
    wire = b""
    while (message := system.recorded.get_message(timeout=0.2)) is not None:
        wire += bytes(message.data)
    assert len(wire) > 500  # the whole bootstrap was recorded
    for secret in secrets:
        for start in range(0, 64 - 7, 8):  # not even 8 bytes of any half, in any frame
            assert secret[start : start + 8] not in wire
        assert secret.hex().encode()[:16] not in wire


def restart(system: System) -> PackController:
    """The pack reboots: a new pack controller on the same flash and ports, no session."""
    system.pack.stop()
    system.pack = system.pack.started_again()
    return system.pack


def test_both_sides_reconnect_after_a_restart(system: System) -> None:
    system.app.bootstrap()
    reborn = restart(system)
    assert reborn.state == PackState.BOOTSTRAP_COMPLETE and reborn.security_level == 0
    assert system.app.connect()["security_level"] == 1


def test_a_restarted_pack_takes_no_plain_request_but_discovery_and_the_handshake(
    system: System,
) -> None:
    """Between a pack's restart and the app's handshake its endpoint has no session: a
    stranger's plain request (a pairing with its own keys, a configuration) is refused, and
    discovery still answers (PROTOCOL.md §8a)."""
    system.app.bootstrap()
    restart(system)
    stranger_port = CanPort(can.Bus(interface="virtual", channel=system.channel), "stranger")
    stranger = ControlEndpoint.open(stranger_port, APP_TO_PACK, PACK_TO_APP)
    try:
        for message in (
            {"type": "configure", "max_state": 3, "rid": "01"},
            {"type": "pair_module", "unique_id": 7, "rid": "02"},
            {"type": "diagnostics", "rid": "03"},
        ):
            stranger.send(message)
            answer = stranger.recv(3.0)
            assert answer is not None and answer["type"] == "error", answer
            assert "only sealed" in answer["reason"]
        stranger.send({"type": "discover", "rid": "04"})
        answer = stranger.recv(3.0)
        assert answer is not None and answer["type"] == "device_info"
    finally:
        stranger.close()
        stranger_port.close()
    assert system.audit.path.read_text().count('"control.refused"') >= 3
    assert system.app.connect()["security_level"] == 1  # the app's handshake still works


def test_a_second_bootstrap_is_refused(system: System) -> None:
    system.app.bootstrap()
    with pytest.raises(AppError, match="not Factory Default"):
        system.app.bootstrap()


def test_a_corrupt_flash_is_reported_as_factory_state(system: System) -> None:
    system.app.bootstrap()
    for slot in system.pack.keys.flash_store.slots.slots:
        if slot.exists():
            slot.write_bytes(slot.read_bytes()[:-1] + b"\x00")
    restart(system)
    system.app.session = None
    info = system.app.discover()
    assert info["state"] == PackState.FACTORY_DEFAULT
    assert "no slot verifies" in info["flash_problem"]


def test_a_bootstrap_refused_for_placeholder_halves_says_what_it_kept(system: System) -> None:
    """The public API-Bridge's placeholder halves are refused; the message once said
    "nothing was stored" while the keystore held the app's host id. It now names what is
    kept, and that is all there is: the host id, no key, no LCT, a factory-default pack."""
    public = {k: v for k, v in LCT.items() if not k.startswith("component_b_")}
    public.update(
        device_key_half="generated_device_key_half", lct_key_half="generated_lct_key_half"
    )
    answers = [Answer(200, COMPONENT), Answer(200, COMPONENT), Answer(200, public)]
    with FaultServer(answers) as server:
        system.app.bridge = ApiBridgeClient(ApiBridgeConfig(base_url=server.url))
        try:
            with pytest.raises(KeyHalfError, match="placeholder") as caught:
                system.app.bootstrap()
        finally:
            system.app.bridge.close()
    message = str(caught.value)
    assert "nothing was stored" not in message
    assert f"keeps only its host id {system.app.host_id}" in message
    assert system.app.keystore.load() == AppKeys(host_id=system.app.host_id)
    assert system.app.discover()["state"] == PackState.FACTORY_DEFAULT
