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


def test_bench_without_a_name_runs_everything() -> None:
    result = _run("bench", "--quick")
    assert result.returncode == 0, result.stderr
    assert "seal_ns_rust" in result.stdout


def test_no_command_prints_help_and_fails() -> None:
    result = _run()
    assert result.returncode == 2
    assert "demo" in result.stderr


def test_version() -> None:
    result = _run("--version")
    assert result.stdout.startswith("modbatt ")
