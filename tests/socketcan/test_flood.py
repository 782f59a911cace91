"""A garbage flood at full rate on CAN 2 while the pack bridges, in a real kernel: can-utils'
`cangen` sends random 29-bit ids as fast as the kernel takes them. The pack's kernel filters
keep most of it out of Python; what they let through is counted by reason; and every frame
the modules sent meanwhile reached the pack."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import can
import pytest

from modbatt import DROP_REASONS
from modbatt.pack.controller import CAN2
from modbatt.pack.keys import PackState
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import running_lifecycle, wait_for
from tests.socketcan.kernel import SLOW, operational_pack

pytestmark = pytest.mark.socketcan

GARBAGE = bytes.fromhex("DEADBEEFDEADBEEF")  # cangen's payload: tells its frames apart
FLOOD_FRAMES = 20_000


def test_a_garbage_flood_on_can2_loses_nothing_routed_and_is_counted(
    tmp_path: Path, api_bridge: BridgeProcess
) -> None:
    with running_lifecycle(tmp_path, api_bridge, interface="socketcan") as life:
        app = life.app
        operational_pack(life)
        pack2 = life.ports["pack2"]
        filters = life.pack.receive_filters()[CAN2]  # Python's sockets
        routed = life.pack.route_filters()[CAN2]  # the data plane's (issue 18)
        assert life.pack.data_plane is not None
        plane_before = life.pack.data_plane.stats()[CAN2]["received"]
        # Everything that reaches the pack's Python on CAN 2, from before candump starts
        # until after it stops: candump's record is then a window of it.
        reached: list[tuple[int, bytes]] = []
        pack2.subscribe(lambda can_id, data, _at: reached.append((can_id, data)))
        before = life.pack.gateway.stats()
        record = tmp_path / "can2.log"
        with record.open("w") as out:
            # candump -L: every frame on vcan1, in the log format python-can reads; a large
            # receive buffer (-r) so that candump itself keeps up with the flood
            candump = subprocess.Popen(["candump", "-L", "-r", "8000000", "vcan1"], stdout=out)
            try:
                time.sleep(1.0)
                flood = [
                    "cangen", "vcan1", "-e", "-g", "0", "-n", str(FLOOD_FRAMES),
                    "-L", "8", "-D", GARBAGE.hex().upper(),
                ]  # fmt: skip
                started = time.monotonic()
                subprocess.run(flood, check=True)
                flood_s = time.monotonic() - started
                time.sleep(2.0)  # the pack works through what the kernel let through
            finally:
                candump.terminate()
                candump.wait(timeout=10)
        time.sleep(1.0)
        after = life.pack.gateway.stats()
        on_the_bus = [(m.arbitration_id, bytes(m.data)) for m in can.LogReader(str(record))]
        garbage = [f for f in on_the_bus if f[1] == GARBAGE]
        assert len(garbage) == FLOOD_FRAMES  # candump saw all of it
        print(f"flood: {FLOOD_FRAMES} frames in {flood_s:.2f} s ({FLOOD_FRAMES / flood_s:.0f}/s)")

        # Nothing was lost below the pack, on python-can's sockets or the data plane's: no
        # receive overflow, no refused send.
        losses = app.status()["bus_losses"]
        assert losses["can2"] == {"tx_queue_full": 0, "rx_overflow": 0, "tx_failed": 0}
        assert losses["can1"]["rx_overflow"] == 0

        def admitted(frame: tuple[int, bytes], wanted: list[tuple[int, int]]) -> bool:
            return any(frame[0] & mask == value for mask, value in wanted)

        # The kernel let through to Python exactly the garbage its filters admit, no more.
        wanted = [f for f in garbage if admitted(f, filters)]
        garbage_reached = [f for f in reached if f[1] == GARBAGE]
        assert sorted(garbage_reached) == sorted(wanted)
        to_gateway = [f for f in garbage if admitted(f, routed)]
        assert len(wanted) + len(to_gateway) < FLOOD_FRAMES / 10
        # Every frame the modules sent meanwhile that Python listens to reached it (once
        # each); the rest went to the data plane, whose socket overflowed no more than
        # Python's did (above): the kernel gave it all of them.
        from_modules = [f for f in on_the_bus if f[1] != GARBAGE and (f[0] >> 18) < 0x510]
        assert from_modules, "no module traffic during the flood"
        reached_counts: dict[tuple[int, bytes], int] = {}
        for frame in reached:
            reached_counts[frame] = reached_counts.get(frame, 0) + 1
        missing = [f for f in from_modules if admitted(f, filters) and not reached_counts.get(f)]
        assert not missing
        plane_received = life.pack.data_plane.stats()[CAN2]["received"] - plane_before
        assert plane_received >= len(to_gateway) + sum(admitted(f, routed) for f in from_modules)
        # The garbage the gateway refused is counted by reason; nothing else was refused:
        # no replay, no unpaired pair, no link left without its session.
        refused = {name: after[name] - before[name] for _, name in DROP_REASONS}
        print("refused by reason:", {k: v for k, v in refused.items() if v})
        assert 0 < sum(refused.values()) <= len(to_gateway)
        assert refused["replay"] == 0
        assert after["link_down"] == before["link_down"]
        # and the pack is as it was: operational, telemetry from every module
        app.telemetry.clear()
        ids = {m.module.module_id for m in life.modules}
        assert wait_for(lambda: ids <= set(app.telemetry), 4.0 * SLOW)
        assert app.status()["state"] == PackState.OPERATIONAL
