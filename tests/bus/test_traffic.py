"""Traffic logs (issue 8): what a role sends and receives, written through python-can's
writers, and `modbatt decode` reading it back, decrypted where the keys allow."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modbatt.bus.isotp_link import with_check
from modbatt.bus.traffic import FORMATS, TrafficLog, check_log_path
from modbatt.errors import InvalidArgumentError, ModbattError
from modbatt.protocol.control import encode as encode_control
from modbatt.state.keystores import pack_flash
from modbatt.tools.decode import MODBATT_CHANNELS, Decoded, Decoder, bus_map, decode_log, links_in
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import bring_up, running_lifecycle, wait_for


def test_a_log_needs_an_extension_that_names_its_format(tmp_path: Path) -> None:
    for suffix in FORMATS:
        assert check_log_path(tmp_path / f"x{suffix}")
    with pytest.raises(InvalidArgumentError, match=r"\.blf.*\.asc.*\.log"):
        check_log_path(tmp_path / "x.txt")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A whole lifecycle recorded on the pack's two buses: (the BLF log, the pack's state)."""
    tmp_path = tmp_path_factory.mktemp("traffic")
    bridge = BridgeProcess(tmp_path / "bridge.sqlite3").start()
    log = TrafficLog(tmp_path / "pack.blf")
    try:
        with running_lifecycle(tmp_path, bridge, log=log) as life:
            bring_up(life)
            app = life.app
            ids = {m.module.module_id for m in life.modules}
            app.telemetry.clear()
            assert wait_for(lambda: ids <= set(app.telemetry), 4.0)
            first = life.modules[0]
            app.command_state(first.module.module_id or 0, 3, 400.0)
            assert wait_for(lambda: first.module.state == 3, 3.0)
            time.sleep(1.2)  # a pack status frame (one a second) on the sealed app bus
    finally:
        log.close()
        bridge.stop()
    assert log.frames > 100
    return tmp_path / "pack.blf", tmp_path / "pack"


def _messages(decoded: list[Decoded]) -> list[str]:
    return [m for d in decoded for m in d.messages]


def test_the_pack_keystore_decrypts_both_buses(recorded: tuple[Path, Path]) -> None:
    path, pack_state = recorded
    decoded = list(decode_log(path, [pack_state]))
    whats = [d.what for d in decoded]
    # the handshakes that gave the sessions, reassembled from ISO-TP
    assert any('"type": "handshake_init"' in m for m in _messages(decoded))
    # telemetry on CAN 2 (module link), the same resealed on CAN 1 (app link), and a command
    assert any(
        d.bus == 2 and "decrypted (module" in d.what and "STATUS_1 node" in d.what for d in decoded
    ), whats
    assert any(d.bus == 1 and "decrypted (app)" in d.what and "STATUS_1" in d.what for d in decoded)
    assert any("decrypted" in w and "STATE_CHANGE" in w and "RequestedState 3" in w for w in whats)
    assert any("decrypted (app)" in w and "pack status" in w for w in whats)
    # sealed control messages after the upgrade open too
    assert any("decrypted (app):" in m and "pair_result" in m for m in _messages(decoded))
    # no key bytes anywhere in the output
    flash = pack_flash(pack_state).load()
    assert flash is not None
    secrets = [flash.pack_device_key_half, flash.pack_lct_key_half, flash.app_device_key_half]
    secrets += [m.module_device_key_half for m in flash.modules.values()]
    text = "\n".join(line for d in decoded for line in d.lines())
    assert not any(secret.lower() in text.lower() for secret in secrets)


def test_without_keys_sealed_frames_are_named_not_opened(recorded: tuple[Path, Path]) -> None:
    path, _ = recorded
    decoded = list(decode_log(path))
    assert not any("decrypted" in d.what for d in decoded)
    assert any("sealed pair auth, STATUS_1 node" in d.what for d in decoded)
    assert any("no session in this log" in d.what for d in decoded)
    # plain traffic still decodes: registration and announcements through the DBC
    assert any(d.what.startswith("ANNOUNCEMENT node") for d in decoded)


@pytest.mark.parametrize("suffix", [".asc", ".log"])
def test_every_format_reads_back_the_same(
    recorded: tuple[Path, Path], tmp_path: Path, suffix: str
) -> None:
    path, pack_state = recorded
    other = tmp_path / f"pack{suffix}"
    writer = can.Logger(str(other))
    for message in can.LogReader(str(path)):
        writer.on_message_received(message)
    writer.stop()
    expected = [
        (d.bus, d.received, d.can_id, d.data, d.what) for d in decode_log(path, [pack_state])
    ]
    got = [(d.bus, d.received, d.can_id, d.data, d.what) for d in decode_log(other, [pack_state])]
    assert got == expected


def test_modbatt_decode_on_the_command_line(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    path, pack_state = recorded
    command = [sys.executable, "-m", "modbatt", "decode", str(path), "--keystore", str(pack_state)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "decrypted (app)" in result.stdout and "can2  R" in result.stdout
    (tmp_path / "nothing.txt").write_text("")
    bad = subprocess.run(
        [sys.executable, "-m", "modbatt", "decode", str(tmp_path / "nothing.txt")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "extension" in bad.stderr


frames = st.builds(
    can.Message,
    arbitration_id=st.one_of(
        st.integers(0, 0x1FFF_FFFF),
        st.sampled_from([0x460, 0x461, 0x470, 0x471, 0x500, 0x502, 0x514, 0x530, 0x531]).map(
            lambda base: base << 18 | 1
        ),
    ).map(lambda can_id: can_id | (0x2_0000 if can_id % 3 == 0 else 0)),
    data=st.binary(max_size=8),
    is_extended_id=st.booleans(),
    is_remote_frame=st.just(False),
    is_rx=st.booleans(),
    channel=st.sampled_from(["can1", "can2", 1, 2, None, "vcan0"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=60))
def test_any_log_decodes_without_an_exception(messages: list[can.Message]) -> None:
    # A log is input like any other: a crafted one must not stop the decoder.
    decoder = Decoder(buses={**MODBATT_CHANNELS, "vcan0": 2})
    for message in messages:
        assert decoder.feed(message).lines()


def test_interfaces_are_mapped_to_the_buses_never_guessed() -> None:
    pairing = can.Message(arbitration_id=0x531 << 18 | 1, data=b"\x02\x00", channel="vcan1")
    control = can.Message(arbitration_id=0x460 << 18, data=b"\x02\x00", channel="vcan0")
    # a candump log of vcan0/vcan1 (or can0/can1 on a pack board) says nothing of the buses
    with pytest.raises(ModbattError, match="--can1 vcan1 or --can2 vcan1"):
        Decoder().feed(pairing)
    decoder = Decoder(buses=bus_map("vcan0", "vcan1"))
    assert (decoder.feed(control).bus, decoder.feed(pairing).bus) == (1, 2)
    assert "module -> pack" in decoder.feed(pairing).what
    # modbatt's own logs name them can1 and can2 (1 and 2 in ASC and BLF)
    assert bus_map() == {"can1": 1, "can2": 2, "1": 1, "2": 2}
    assert bus_map(can2="can0") == {"can0": 2}
    with pytest.raises(ModbattError, match="both CAN 1 and CAN 2"):
        bus_map("can0", "can0")


def test_a_forged_handshake_in_a_log_names_no_link(recorded: tuple[Path, Path]) -> None:
    _, pack_state = recorded
    decoder = Decoder(links_in(pack_state))
    init = {"type": "handshake_init", "data": "0101" + "11" * 16}
    response = {"type": "handshake_response", "data": "0102" + "22" * 16 + "33" * 16}
    short_init = {"type": "handshake_init", "data": "0101" + "11" * 3}
    short_response = {"type": "handshake_response", "data": "0102" + "22" * 3}
    exchange = [(init, 0x460 << 18), (response, 0x461 << 18)]
    exchange += [(short_init, 0x460 << 18), (short_response, 0x461 << 18)]
    for message, can_id in exchange:
        payload = with_check(encode_control(message))
        single = bytes([len(payload)]) + payload if len(payload) <= 7 else None
        assert single is None  # each needs ISO-TP segmentation: feed its frames
        for frame in _isotp_frames(payload):
            decoder.feed(can.Message(arbitration_id=can_id, data=frame, channel="can1"))
    assert decoder.feed(
        can.Message(arbitration_id=0x470 << 18 | 0x2_0000, data=bytes(8), channel="can1")
    ).what.endswith("no session in this log for its link")


def _isotp_frames(payload: bytes) -> list[bytes]:
    """ISO-TP first and consecutive frames of `payload` (classic, 8 bytes)."""
    out = [bytes([0x10 | len(payload) >> 8, len(payload) & 0xFF]) + payload[:6]]
    rest, index = payload[6:], 1
    while rest:
        out.append(bytes([0x20 | index & 0x0F]) + rest[:7])
        rest, index = rest[7:], index + 1
    return out
