"""The whole lifecycle with every role on SocketCAN: CAN 1 is vcan0, CAN 2 vcan1.

The same roles and the same steps as on python-can's `virtual` bus (tests/module), here through
a real kernel's CAN stack, its receive filters and its socket buffers, under emulation (slow:
the waits are generous). One test, one pack: bootstrap, pairing, telemetry, a command, a pack
restart, key recovery.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modbatt import DROP_REASONS
from modbatt.app.errors import AppError
from modbatt.pack.keys import PackState
from modbatt.pack.modules import START_SETTLE_S
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import (
    Lifecycle,
    lose_the_packs_flash,
    online_count,
    running_lifecycle,
    wait_for,
)
from tests.socketcan.kernel import SLOW

pytestmark = pytest.mark.socketcan


def telemetry_from_every_module(life: Lifecycle) -> bool:
    ids = {m.module.module_id for m in life.modules}
    return ids <= {n for n, t in life.app.telemetry.items() if "STATUS_1" in t}


def operational(life: Lifecycle) -> bool:
    status = life.app.status()
    return bool(status["state"] == PackState.OPERATIONAL and status["security_level"] == 3)


def test_the_whole_lifecycle_on_socketcan(tmp_path: Path, api_bridge: BridgeProcess) -> None:
    with running_lifecycle(tmp_path, api_bridge, interface="socketcan") as life:
        app, modules = life.app, life.modules
        # bootstrap and pairing
        app.bootstrap()
        assert wait_for(lambda: online_count(life) == 2, 5.0 * SLOW)
        for module in modules:
            assert app.pair(module.module.config.unique_id)["module_id"] == module.module.module_id
        assert operational(life)
        # telemetry, decrypted by the app after two reseals in the pack's gateway
        assert wait_for(lambda: telemetry_from_every_module(life), 3.0 * SLOW)
        assert life.pack.gateway.stats()["malformed"] == 0
        # on SocketCAN the routed frames are the Rust data plane's (issue 18), not Python's
        plane = life.pack.data_plane
        assert plane is not None
        can1_plane, can2_plane = plane.stats()
        assert can2_plane["received"] > 0 and can1_plane["sent"] > 0
        # the counters tell the truth: an operational pack refuses none of its own traffic
        before = life.pack.gateway.stats()
        time.sleep(5.0)
        after = life.pack.gateway.stats()
        assert after["forwarded"] > before["forwarded"]
        assert {n: after[n] - before[n] for _, n in DROP_REASONS} == dict.fromkeys(
            (n for _, n in DROP_REASONS), 0
        )
        # a command to one module
        target, other = modules
        app.command_state(target.module.module_id or 0, 3)
        assert wait_for(lambda: target.module.state == 3, (2.0 + START_SETTLE_S) * SLOW)
        assert other.module.state == 0
        # the data plane forwarded it on the pack's own socket: not another sender's command
        assert not life.pack.manager.foreign_commands
        # the pack restarts on its flash: the app's handshake, the modules come back by themselves
        life.pack.stop()
        life.pack = life.pack.started_again()
        app.connect()
        assert wait_for(lambda: operational(life), 10.0 * SLOW)
        # key recovery after the pack lost its flash
        lose_the_packs_flash(life)
        with pytest.raises(AppError, match="confirm"):
            app.recover(confirm=False)
        assert app.recover(confirm=True)["repaired_modules"] == 2
        assert operational(life)
        app.telemetry.clear()
        assert wait_for(lambda: telemetry_from_every_module(life), 3.0 * SLOW)
