"""The `modbatt` command line: bench writes every figure the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import modbatt.cli.base as cli_base
import modbatt.cli.commands as cli

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


def test_exit_status_says_what_failed(tmp_path: Path) -> None:
    """Scripts can tell the failure classes apart (`modbatt --help` lists them)."""
    no_bus = _run(
        "app", "--can", "socketcan:modbatt-no-such-if", "--state-dir", str(tmp_path), "status"
    )
    assert no_bus.returncode == cli_base.EXIT_BUS, no_bus.stderr
    assert "cannot open bus" in no_bus.stderr and "ip link" in no_bus.stderr
    assert "Traceback" not in no_bus.stderr
    no_bridge = _run("api-bridge", "health", "--url", "http://127.0.0.1:9")
    assert no_bridge.returncode == cli_base.EXIT_API_BRIDGE
    assert _run("pack", "run", "--no-such-option").returncode == cli_base.EXIT_USAGE
    help_text = _run("--help").stdout
    for code, meaning in cli.EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in help_text


def test_a_bug_is_a_short_paragraph_and_its_traceback_needs_v(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: object) -> int:
        raise RuntimeError("something modbatt did not expect")

    monkeypatch.setattr("modbatt.protocol.catalogue.dbc_path", broken)
    assert cli.main(["dbc"]) == cli_base.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "something modbatt did not expect" in err and "run again with -v" in err
    assert "Traceback" not in err
    # -v anywhere on the line: the traceback is the user's, and the exit status still 70
    assert cli.main(["dbc", "-v"]) == cli_base.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "something modbatt did not expect" in err


def test_state_lives_in_the_platform_data_directory_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert cli_base.default_state_dir("app") == tmp_path / "modbatt" / "app"
    assert cli_base.default_db_path() == tmp_path / "modbatt" / "api-bridge.sqlite3"
