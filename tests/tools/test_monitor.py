"""`modbatt monitor` (issue 8): the live view of a pack, rendered from a known snapshot, and
gathered from a running pack by the app."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig, RetryPolicy
from modbatt.tools.monitor import (
    ModuleRow,
    MonitorView,
    RegistrationsCheck,
    render,
    run_monitor,
    view_of,
)
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import bring_up, running_lifecycle, wait_for

SNAPSHOT = MonitorView(
    pack="PACK-0001",
    state="Operational",
    security_level=3,
    app_link=True,
    modules=[
        ModuleRow(1, 500, True, True, "On", 74.5, 52.31, -1.25, 3.866, 3.886, 24.2, 25.9),
        ModuleRow(2, 501, False, False, "?"),
    ],
    telemetry_fps=38.4,
    app_drops={"unpaired": 1},
    gateway_drops={"bad_tag": 2, "no_route": 7},
    bus_losses={"CAN 2 rx_overflow": 12},
    link_down=40,
    alerts=["module silent: module 2, value 0"],
)


def test_a_known_snapshot_renders_as_expected() -> None:
    assert render(SNAPSHOT) == [
        "pack PACK-0001: Operational, security level 3 (both encrypted)",
        "app link (CAN 1): sealed session; telemetry 38 messages/s",
        "",
        " id  unique id link      online state     SOC %       V       A  cell V min-max"
        "  °C min-max",
        "  1        500 sealed    yes    On         74.5   52.31   -1.25     3.866-3.886"
        "   24.2-25.9",
        "  2        501 plain     no     ?             -       -       -               -"
        "           -",
        "",
        "dropped: bad_tag 2, no_route 7, CAN 2 rx_overflow 12, app: unpaired 1",
        "not sent, no session on their way out (app away): 40",
        "alerts: module silent: module 2, value 0",
    ]
    assert all(len(line) <= 100 for line in render(SNAPSHOT))
    checked = replace(SNAPSHOT, registrations="the module 501 LCT is revoked (checked 10:42:07)")
    assert render(checked)[-1] == "API-Bridge: the module 501 LCT is revoked (checked 10:42:07)"


def test_an_empty_pack_says_so() -> None:
    empty = MonitorView("PACK-0002", "Bootstrap Complete", 1, True, [], 0.0)
    lines = render(empty)
    assert "  (no module registered)" in lines
    assert lines[-2:] == ["dropped: nothing", "alerts: none"]


def test_the_view_of_a_running_pack(tmp_path: Path, api_bridge: BridgeProcess) -> None:
    with running_lifecycle(tmp_path, api_bridge) as life:
        bring_up(life)
        ids = {m.module.module_id for m in life.modules}
        assert wait_for(lambda: ids <= set(life.app.telemetry), 4.0)
        time.sleep(0.5)  # every STATUS message once at least
        view = view_of(life.app, life.app.status(), 10.0)
        assert (view.state, view.security_level, view.app_link) == ("Operational", 3, True)
        assert {row.module_id for row in view.modules} == ids
        assert all(row.paired and row.online for row in view.modules)
        # on `virtual` only sends can be lost (no kernel reports receive overflows): none were
        assert life.app.status()["bus_losses"] == {
            "can1": {"tx_queue_full": 0},
            "can2": {"tx_queue_full": 0},
        }
        assert view.bus_losses == {}
        # the module firmware sends SOC 0 (it does not estimate it): shown as "-", not 0 %
        assert all(row.soc is None for row in view.modules)
        assert all(row.cell_min_v is not None and row.temp_max is not None for row in view.modules)
        # the loop redraws in place on a terminal, one block a refresh otherwise
        shown: list[str] = []
        assert run_monitor(life.app, 0.25, 0.1, shown.append, redraw=False) == 0
        assert shown and shown[-1].startswith("pack PACK-")
        shown.clear()
        run_monitor(life.app, 0.15, 0.1, shown.append, redraw=True)
        assert shown[-1].startswith("\x1b[H\x1b[2J")


def test_the_monitor_checks_the_registrations_now_and_then(
    tmp_path: Path, api_bridge: BridgeProcess
) -> None:
    with running_lifecycle(tmp_path, api_bridge) as life:
        bring_up(life)
        app = life.app
        check = RegistrationsCheck(app)
        assert check.check_once().startswith("registrations and LCTs in order (checked ")
        keys = app.keystore.load()
        assert keys is not None and keys.lct_id is not None
        life.bridge.update_lct_status(keys.lct_id, "suspended", "incident")
        assert check.check_once().startswith("the app-pack LCT is suspended (checked ")
        # the running view carries the check's word, from its own thread
        shown: list[str] = []
        run_monitor(app, 1.0, 0.2, shown.append, redraw=False)
        assert "API-Bridge: the app-pack LCT is suspended" in shown[-1]
        # an API-Bridge that does not answer is said so, and the view goes on
        app.bridge = ApiBridgeClient(
            ApiBridgeConfig(base_url="http://127.0.0.1:9", retry=RetryPolicy(attempts=1))
        )
        assert check.check_once() == "not reachable (ApiBridgeUnavailableError)"
        app.bridge.close()
