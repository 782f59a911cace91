"""`modbatt bench gateway --interface socketcan` runs in a real kernel and reports what it
says it does (its figures are printed by the command, not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.socketcan

KEYS = (
    "cangw_fps",
    "plain_bridge_fps",
    "secure_bridge_fps",
    "cangw_latency_p50_us",
    "cangw_latency_p99_us",
    "plain_latency_p50_us",
    "plain_latency_p99_us",
    "secure_latency_p50_us",
    "secure_latency_p99_us",
    "rust_bridge_fps",  # the pack with its Rust data plane (issue 18)
    "rust_latency_p50_us",
    "rust_latency_p99_us",
    "cpu_percent_2x1mbit",  # the pack's CPU, both buses loaded at once
    "rust_cpu_percent_2x1mbit",
    "lost_frames",
)


def test_the_socketcan_gateway_benchmark_measures_every_bridge(tmp_path: Path) -> None:
    written = tmp_path / "figures.json"
    command = ["bench", "gateway", "--interface", "socketcan", "--quick", "--json", str(written)]
    shown = subprocess.run(
        [sys.executable, "-m", "modbatt", *command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures = json.loads(written.read_text())
    assert figures["interface"] == "socketcan"
    assert all(isinstance(figures[key], (int, float)) and figures[key] >= 0 for key in KEYS)
    assert all(figures[key] > 0 for key in KEYS if key != "lost_frames")
    # every frame of every run arrived (the bridges' input buffers hold a whole burst)
    assert figures["lost_frames"] == 0
    assert set(figures["lost_by_bridge"]) == {"cangw", "plain", "secure", "rust"}
    # latency from alternating rounds (one in --quick), each percentile the rounds' median
    rounds = figures["conditions"]["paced_rounds"]
    assert rounds == 1 and len(figures["rust_latency_p99_us_runs"]) == rounds
    # with two CPUs or more the bridges run on one and canplayer on the others
    conditions = figures["conditions"]
    if conditions["cpus"] >= 2:
        assert len(conditions["bridges_on_cpus"]) == 1
        assert not set(conditions["bridges_on_cpus"]) & set(conditions["canplayer_on_cpus"])
    # no cangw rule is left behind
    rules = subprocess.run(["cangw", "-L"], capture_output=True, text=True, check=False).stdout
    assert "-s vcan0" not in rules
    assert "cangw_fps" in shown and "secure_bridge_fps / plain_bridge_fps" in shown
    # each of issue 18's targets is judged in the output, met or not
    assert set(figures["targets"]) == {
        "rust_bridge_fps >= 2 * plain_bridge_fps",
        "rust_bridge_fps >= 0.5 * cangw_fps",
        "rust_latency_p99_us <= 0.5 * plain_latency_p99_us",
        "rust_cpu_percent_2x1mbit <= 0.2 * cpu_percent_2x1mbit",
        "lost_frames == 0",
    }
    assert shown.count("target ") == len(figures["targets"])
