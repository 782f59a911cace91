"""An attacker on a running pack, end to end (issue 6): impersonation and leaked keys.

The attacker holds everything one paired module holds (its flash and its live session: the
worst case of a module taken apart) and a node on each bus. With that it tries to read and to
forge another module's traffic and the app's. Every attempt must fail at the part that checks
it, be counted there, and change nothing: the other module keeps its state, nothing forged
reaches the app, and no link is torn down by a handful of attempts.
"""

from __future__ import annotations

import os
import time

import can

from modbatt import LinkKey, Session, compose_id, is_encrypted, set_encrypted
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.transport import CanPort
from modbatt.errors import FrameRejectedError
from modbatt.module.pairing import SecureModule
from modbatt.pack.keys import APP_LINK
from modbatt.protocol.catalogue import SECURED_COMMAND_BASES, catalogue, secured_command_id
from modbatt.protocol.control import APP_TO_PACK, PACK_TO_APP
from modbatt.protocol.frames import frames_of
from modbatt.protocol.handshake import Initiator
from tests.module.test_pairing import Lifecycle, bring_up, lifecycle, wait_for

__all__ = ["lifecycle"]  # the fixture, shared with test_pairing.py

COMMAND_BASE_RANGE = SECURED_COMMAND_BASES  # pack -> paired module commands on CAN 2
TELEMETRY_BASE_RANGE = range(0x500, 0x510)


def _drain(log: can.BufferedReader) -> list[can.Message]:
    """Everything a listener saw since the last drain."""
    seen = []
    while (message := log.get_message(timeout=0)) is not None:
        seen.append(message)
    return seen


def _sealed_frames(seen: list[can.Message], node: int, bases: range) -> list[can.Message]:
    """The sealed frames for or from module `node` on the given id bases."""
    return [
        m
        for m in seen
        if is_encrypted(m.arbitration_id)
        and m.arbitration_id & 0xFF == node
        and m.arbitration_id >> 18 in bases
    ]


def _verdicts(session: Session, frames: list[can.Message]) -> list[str]:
    """What `session` makes of each frame: "opened", "waiting" (a pair's data frame), or the
    reason it was rejected. A replay verdict means the tag verified (§5): only the right keys
    get that far."""
    verdicts = []
    for frame in frames:
        try:
            plain = session.open(frame.arbitration_id, bytes(frame.data))
        except FrameRejectedError as exc:
            verdicts.append(exc.reason)
            continue
        verdicts.append("waiting" if plain is None else "opened")
    return verdicts


def _send(bus: can.BusABC, frames: list[tuple[int, bytes]]) -> None:
    for can_id, data in frames:
        bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=True))


def _pair_both(lifecycle: Lifecycle) -> tuple[SecureModule, SecureModule, int, int]:
    bring_up(lifecycle)
    thief, victim = lifecycle.modules
    thief_id, victim_id = thief.module.module_id, victim.module.module_id
    assert thief_id is not None and victim_id is not None and thief.session is not None
    return thief, victim, thief_id, victim_id


def test_a_modules_leaked_keys_neither_read_nor_forge_another_link(lifecycle: Lifecycle) -> None:
    app, pack = lifecycle.app, lifecycle.pack
    thief, victim, _, victim_id = _pair_both(lifecycle)
    leaked = thief.session
    assert leaked is not None and thief.flash is not None and thief.flash.load() is not None
    gateway = pack.gateway

    # Record: the app commands the victim (On), and the victim's telemetry crosses to the app.
    _drain(lifecycle.can1_log), _drain(lifecycle.can2_log)
    app.command_state(victim_id, 3, 400.0)
    assert wait_for(lambda: victim.module.state == 3, 2.0)
    victims_session = victim.session  # the one that opened the recording
    time.sleep(0.5)
    seen2, seen1 = _drain(lifecycle.can2_log), _drain(lifecycle.can1_log)
    # a few frames of each kind: every failed open spends the thief's own failure budget
    on_can2 = _sealed_frames(seen2, victim_id, COMMAND_BASE_RANGE)[:4]
    on_can2 += _sealed_frames(seen2, victim_id, TELEMETRY_BASE_RANGE)[:4]
    on_can1 = _sealed_frames(seen1, victim_id, TELEMETRY_BASE_RANGE)[:4]
    assert on_can2 and on_can1  # the recording holds the victim's traffic on both buses

    # Read: no tag of the victim's traffic verifies under the thief's keys, on either bus
    # (bad_tag, not replay) ...
    for recorded in (on_can2, on_can1):
        verdicts = _verdicts(leaked, recorded)
        assert "bad_tag" in verdicts and set(verdicts) <= {"bad_tag", "waiting"}, verdicts
    # ... while under the victim's own keys the commands it received do verify (and are
    # replays now): the recording is genuine, the thief's keys are the reason.
    commands = [f for f in on_can2 if f.arbitration_id >> 18 in COMMAND_BASE_RANGE]
    assert victims_session is not None and commands
    own = _verdicts(victims_session, commands)
    assert "replay" in own and set(own) <= {"replay", "waiting"}, own

    attacker1 = can.Bus(interface="virtual", channel=lifecycle.can2_channel.replace("can2", "can1"))
    attacker2 = can.Bus(interface="virtual", channel=lifecycle.can2_channel)
    try:
        victim_bad_tags = gateway.session_stats(victim_id)["bad_tag"]  # type: ignore[index]
        app_bad_tags = gateway.session_stats(APP_LINK)["bad_tag"]  # type: ignore[index]
        victim_drops = victim.dropped["bad_tag"]
        status_id, status = catalogue().encode(
            "STATUS_1",
            victim_id,
            {
                "State": 0,
                "Status": 0,
                "SOC": 1.0,
                "SOH": 1.0,
                "CellCount": 1,
                "Current": 0.0,
                "ModuleVoltage": 1.5,
            },
        )
        off_id, off = catalogue().encode(
            "STATE_CHANGE",
            victim_id,
            {"ModuleId": victim_id, "RequestedState": 0},
        )
        # Forge the victim's telemetry toward the pack (CAN 2), sealed with the leaked keys:
        # the gateway opens the victim's ids only with the victim's session.
        _send(attacker2, frames_of(leaked.seal(status_id, status)))
        # Forge an app command to the victim (CAN 1): the gateway opens it with the app link.
        _send(attacker1, frames_of(leaked.seal(off_id, off)))
        # Impersonate the pack toward the victim (CAN 2, on the secured command base a paired
        # module reads): the victim opens it with its link.
        _send(attacker2, frames_of(leaked.seal(secured_command_id(off_id), off)))

        assert wait_for(
            lambda: (
                gateway.session_stats(victim_id)["bad_tag"] == victim_bad_tags + 1  # type: ignore[index]
                and gateway.session_stats(APP_LINK)["bad_tag"] == app_bad_tags + 1  # type: ignore[index]
                and victim.dropped["bad_tag"] == victim_drops + 1
            ),
            3.0,
        ), (gateway.session_stats(victim_id), gateway.session_stats(APP_LINK), victim.dropped)
        time.sleep(1.2)  # a full telemetry period: the forged SOC would have reached the app
        assert victim.module.state == 3  # still On: no forged Off got through
        assert app.telemetry[victim_id]["STATUS_1"]["SOC"] != 1.0
        # A handful of attempts spends budget but tears nothing down: the links stay up.
        assert gateway.has_session(victim_id) and gateway.has_session(APP_LINK)
        app.telemetry.clear()
        assert wait_for(lambda: "STATUS_1" in app.telemetry.get(victim_id, {}), 3.0)
    finally:
        attacker1.shutdown()
        attacker2.shutdown()


def test_forgeries_on_can1_tear_the_app_link_down_and_the_app_brings_it_back(
    lifecycle: Lifecycle,
) -> None:
    """The failure budget on the app link: the pack cannot seal an alert to the app once its
    end of the session is gone, so the app notices its sealed status frames stopped and runs
    the handshake again, without an operator (PROTOCOL.md §6, §8c)."""
    app, pack = lifecycle.app, lifecycle.pack
    _, victim, _, victim_id = _pair_both(lifecycle)
    gateway = pack.gateway
    keeper = app.start_link_keeper(0.2)
    attacker = can.Bus(interface="virtual", channel=lifecycle.can2_channel.replace("can2", "can1"))
    try:
        assert wait_for(lambda: app.pack_status.get("state") == 4, 3.0)  # Operational
        command_id = set_encrypted(compose_id(0x514, victim_id))  # STATE_CHANGE to the victim
        forged = [
            (command_id, os.urandom(8))  # a single-frame form: 3 bytes, freshness, 32-bit tag
            for _ in range(20)
        ]
        _send(attacker, forged)
        assert wait_for(lambda: not gateway.has_session(APP_LINK), 2.0)
        assert gateway.session_stats(APP_LINK)["failures"] == 16  # type: ignore[index]
        # the app notices the silence and the link comes back, with status and telemetry
        assert wait_for(lambda: gateway.has_session(APP_LINK), 10.0)
        assert wait_for(lambda: app.pack_status.get("security_level") == 3, 3.0)
        app.telemetry.clear()
        assert wait_for(lambda: victim_id in app.telemetry, 3.0)
        app.command_state(victim_id, 3, 400.0)
        assert wait_for(lambda: victim.module.state == 3, 3.0)
        app_audit = (lifecycle.state_dir / "audit.jsonl").read_text()
        assert '"link.torn_down"' in app_audit and '"link.silent"' in app_audit
    finally:
        keeper.set()
        attacker.shutdown()


def test_a_plain_handshake_init_on_can1_does_not_cut_the_app_off(lifecycle: Lifecycle) -> None:
    """Handshake messages may travel plain (a pack that restarted needs them), so anyone on
    CAN 1 can send one: the pack keeps the app's session until a handshake_finish verifies."""
    app, pack = lifecycle.app, lifecycle.pack
    app.bootstrap()
    connected_at = app.connected_at
    port = CanPort(
        can.Bus(interface="virtual", channel=lifecycle.can2_channel.replace("can2", "can1")),
        "attacker",
    )
    attacker = ControlEndpoint.open(port, APP_TO_PACK, PACK_TO_APP)
    try:
        intruder = Initiator(
            LinkKey(os.urandom(64), "COMP-x-1", os.urandom(64), "COMP-x-2"), "COMP-x-1", "COMP-x-2"
        )
        attacker.send({"type": "handshake_init", "data": intruder.start().hex()}, plain=True)
        answer = attacker.recv(2.0)
        assert answer is not None and answer["type"] == "handshake_response"
        # the app's link is untouched: its sealed requests and the status frames go on
        assert pack.gateway.has_session(APP_LINK)
        assert app.status()["security_level"] >= 1
        time.sleep(1.5)
        assert not app.link_silent() and app.connected_at == connected_at  # no reconnect
    finally:
        attacker.close()
        port.close()


def test_frames_recorded_before_a_new_session_are_dropped_and_shown_to_the_app(
    lifecycle: Lifecycle,
) -> None:
    """Replay after a reboot into a new session: the old session's frames fail the new
    session's tag, are dropped, and the app sees them counted in the link's diagnostics."""
    app, pack = lifecycle.app, lifecycle.pack
    _, victim, _, victim_id = _pair_both(lifecycle)
    gateway = pack.gateway
    _drain(lifecycle.can2_log)
    time.sleep(0.5)
    recorded = _sealed_frames(_drain(lifecycle.can2_log), victim_id, TELEMETRY_BASE_RANGE)[:2]
    assert len(recorded) == 2
    # the link gets a new session, as after a reboot of either end
    old_session = victim.session
    gateway.remove_session(victim_id)
    assert wait_for(lambda: gateway.has_session(victim_id), 8.0)
    assert wait_for(lambda: victim.session is not old_session, 2.0)
    assert gateway.session_stats(victim_id)["bad_tag"] == 0  # type: ignore[index]
    attacker = can.Bus(interface="virtual", channel=lifecycle.can2_channel)
    try:
        for frame in recorded:
            attacker.send(frame)
        assert wait_for(lambda: app.diagnostics()["links"][str(victim_id)]["bad_tag"] >= 1, 3.0), (
            app.diagnostics()["links"]
        )
    finally:
        attacker.shutdown()
    # and the link itself is unharmed
    app.telemetry.clear()
    assert wait_for(lambda: victim_id in app.telemetry, 3.0)
