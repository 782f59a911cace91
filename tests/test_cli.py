"""The `modbatt` command line: bench writes every figure the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEYS = [
    "seal_ns_rust",
    "open_ns_rust",
    "aesgcm_ns_anchor",
    "seal_ns_reference",
    "open_ns_reference",
    "batch_frames_per_s",
    "gateway_step_ns",
]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modbatt", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_bench_frame_path_json(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = _run("bench", "frame-path", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    for key in KEYS:
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert figures["conditions"]["quick"] is True
    for key in KEYS:
        assert key in result.stdout


GATEWAY_KEYS = [
    "plain_bridge_fps",
    "secure_bridge_fps",
    "secure_latency_p50_us",
    "secure_latency_p99_us",
    "plain_latency_p50_us",
    "plain_latency_p99_us",
    "lost_frames",
    "cpu_percent_2x1mbit",
]


def test_bench_gateway_json(tmp_path: Path) -> None:
    out = tmp_path / "gateway.json"
    result = _run("bench", "gateway", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    for key in GATEWAY_KEYS:
        assert isinstance(figures[key], int | float), key
        assert key in result.stdout
    assert figures["plain_bridge_fps"] > 0 and figures["secure_bridge_fps"] > 0
    assert figures["secure_latency_p99_us"] >= figures["secure_latency_p50_us"] > 0
    assert figures["lost_frames"] == 0


def test_bench_without_a_name_runs_everything(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    result = _run("bench", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "seal_ns_rust" in result.stdout and "secure_bridge_fps" in result.stdout
    figures = json.loads(out.read_text())
    assert set(figures) == {"frame_path", "gateway"}


def test_no_command_prints_help_and_fails() -> None:
    result = _run()
    assert result.returncode == 2
    assert "demo" in result.stderr


def test_version() -> None:
    result = _run("--version")
    assert result.stdout.startswith("modbatt ")
