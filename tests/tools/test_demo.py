"""`modbatt demo`: the whole lifecycle, in one process, ends Operational after a recovery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from modbatt.tools.demo import run_demo


def test_the_demo_walks_the_whole_lifecycle() -> None:
    lines: list[str] = []
    summary = run_demo(modules=3, duration_s=1.0, out=lines.append)
    assert summary.pack_state == "Operational" and summary.security_level == 3
    assert summary.modules_paired == 3 and summary.recovery_ok
    assert summary.telemetry_frames_received > 0
    text = "\n".join(lines)
    for phase in (
        "discovery",
        "bootstrap",
        "paired module",
        "operational",
        "flash is lost",
        "recovered",
    ):
        assert phase in text, phase


def test_the_demo_command_writes_its_summary_for_a_mixed_pack(tmp_path: Path) -> None:
    """Four secured modules and two legacy ones on one CAN 2 (issue 14): the legacy ones stay
    plain, the app hears every module, and no legacy module acts on a sealed frame."""
    out = tmp_path / "summary.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "modbatt",
            "demo",
            "--modules",
            "4",
            "--legacy-modules",
            "2",
            "--duration",
            "0.5",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(out.read_text())
    for key in (
        "pack_state",
        "security_level",
        "modules_paired",
        "telemetry_frames_received",
        "frames_dropped",
        "recovery_ok",
    ):
        assert key in summary
    assert summary["pack_state"] == "Operational" and summary["recovery_ok"] is True
    assert isinstance(summary["frames_dropped"], dict)
    assert summary["modules_paired"] == 4
    modules = summary["modules"]
    assert sorted(m["kind"] for m in modules) == ["legacy"] * 2 + ["secured"] * 4
    for module in modules:
        assert set(module) >= {
            "unique_id",
            "kind",
            "paired",
            "state",
            "telemetry_frames",
            "sealed_frames_acted_on",
        }
        assert module["paired"] == (module["kind"] == "secured"), module
        assert module["telemetry_frames"] > 0, module
        assert module["sealed_frames_acted_on"] == 0, module
    assert len({m["unique_id"] for m in modules}) == 6


def test_the_demo_refuses_more_than_31_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modbatt", "demo", "--modules", "30", "--legacy-modules", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "at most 31" in result.stderr


def test_a_full_pack_of_31_modules() -> None:
    summary = run_demo(modules=31, duration_s=0.5, out=lambda _line: None)
    assert summary.modules_paired == 31
    assert summary.pack_state == "Operational" and summary.security_level == 3
    assert summary.recovery_ok


def test_the_demo_with_every_role_in_its_own_process(tmp_path: Path) -> None:
    summary = run_demo(
        modules=2,
        duration_s=0.5,
        out=lambda _line: None,
        interface="udp_multicast",
        legacy_modules=1,
    )
    assert summary.pack_state == "Operational" and summary.security_level == 3
    assert summary.modules_paired == 2 and summary.recovery_ok
    assert summary.telemetry_frames_received > 0
    # each module process reported its modules as it stopped
    assert sorted(m["kind"] for m in summary.modules) == ["legacy", "secured", "secured"]
    assert all(m["sealed_frames_acted_on"] == 0 for m in summary.modules)
