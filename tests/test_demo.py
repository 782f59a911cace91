"""`modbatt demo` delivers both messages intact over virtual buses and drops the attack."""

from __future__ import annotations

import subprocess
import sys

from modbatt.demo import run_demo


def test_demo_delivers_and_drops() -> None:
    lines: list[str] = []
    report = run_demo(out=lines.append)
    assert report.command_received == report.command_sent != b""
    assert report.telemetry_received == report.telemetry_sent != b""
    assert report.gateway_stats["replay"] == 1
    assert report.gateway_stats["downgrade"] == 1
    assert report.gateway_stats["forwarded"] == 2
    assert any("both messages delivered intact" in line for line in lines)


def test_demo_command_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modbatt", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "both messages delivered intact" in result.stdout
