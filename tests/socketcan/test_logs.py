"""Traffic logs and can-utils, in a real kernel: a `candump -L` log of a lifecycle read back by
`modbatt decode --keystore` (sealed traffic decrypted), and a log modbatt wrote replayed onto
the buses by `canplayer`, frame for frame."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import can
import pytest

from modbatt.bus.traffic import TrafficLog
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import Lifecycle, running_lifecycle, wait_for
from tests.socketcan.kernel import SLOW, operational_pack

pytestmark = pytest.mark.socketcan

MODBATT = [sys.executable, "-m", "modbatt"]


@contextmanager
def candump(path: Path, *interfaces: str) -> Iterator[None]:
    """can-utils' candump recording `interfaces` to `path` in its -L format."""
    with path.open("w") as out:
        # -r: a receive buffer large enough that candump keeps up under emulation
        dump = subprocess.Popen(["candump", "-L", "-r", "8000000", *interfaces], stdout=out)
        time.sleep(1.0)  # candump has bound its sockets
        try:
            yield
        finally:
            time.sleep(1.0)
            dump.terminate()
            dump.wait(timeout=10)


def paired_with_telemetry(life: Lifecycle) -> None:
    operational_pack(life)
    ids = {m.module.module_id for m in life.modules}
    assert wait_for(lambda: ids <= set(life.app.telemetry), 4.0 * SLOW)


def test_a_candump_log_is_decoded_and_decrypted(tmp_path: Path, api_bridge: BridgeProcess) -> None:
    record = tmp_path / "lifecycle.log"
    with running_lifecycle(tmp_path, api_bridge, interface="socketcan") as life:
        with candump(record, "vcan0", "vcan1"):
            paired_with_telemetry(life)
    # candump names interfaces: without saying which bus each is, decode refuses to guess
    guessed = subprocess.run(
        [*MODBATT, "decode", str(record)], check=False, capture_output=True, text=True
    )
    assert guessed.returncode != 0 and "which is neither bus" in guessed.stderr
    assert "say which bus it is, e.g. --can1 vcan" in guessed.stderr
    keystore = ["--keystore", str(tmp_path / "pack")]
    decoded = subprocess.run(
        [*MODBATT, "decode", str(record), *keystore, "--can1", "vcan0", "--can2", "vcan1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    on_can1 = [line for line in decoded if "  can1  " in line]
    on_can2 = [line for line in decoded if "  can2  " in line]
    # the handshakes were followed: the app link's and each module's session
    assert any("decrypted (app): pack status" in line for line in on_can1)
    assert any("decrypted (app): STATUS_1 node" in line for line in on_can1)
    module_links = {
        line.split("decrypted (")[1].split(")")[0]
        for line in on_can2
        if "decrypted (module" in line and "STATUS_1 node" in line
    }
    assert len(module_links) == 2
    assert any('"type": "pair_delivery"' in line for line in decoded)  # a message line
    assert not [line for line in decoded if "does not open" in line]


def test_a_log_modbatt_wrote_is_replayed_by_canplayer(
    tmp_path: Path, api_bridge: BridgeProcess
) -> None:
    written = tmp_path / "pack.log"
    log = TrafficLog(written)
    with running_lifecycle(tmp_path, api_bridge, log=log, interface="socketcan") as life:
        paired_with_telemetry(life)
    log.close()
    frames = [(str(m.channel), m.arbitration_id, bytes(m.data)) for m in can.LogReader(written)]
    assert frames
    # canplayer sends each frame on the interface its log channel is assigned to
    replayed = tmp_path / "replayed.log"
    with candump(replayed, "vcan0", "vcan1"):
        subprocess.run(
            ["canplayer", "-I", str(written), "-t", "vcan0=can1", "vcan1=can2"], check=True
        )
    seen = [(str(m.channel), m.arbitration_id, bytes(m.data)) for m in can.LogReader(replayed)]
    interfaces = {"can1": "vcan0", "can2": "vcan1"}
    assert Counter(seen) == Counter((interfaces[ch], i, d) for ch, i, d in frames)
    # in order, per bus
    for channel, interface in interfaces.items():
        assert [f[1:] for f in seen if f[0] == interface] == [
            f[1:] for f in frames if f[0] == channel
        ]
