"""The lifecycle with every role in its own process over udp_multicast, started as a user
would start them: the API-Bridge, the pack controller, the modules, and app commands."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api_bridge_server import BridgeProcess

MODBATT = [sys.executable, "-u", "-m", "modbatt"]


def app(args: list[str], can1: str, state: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODBATT_API_BRIDGE_URL": url}
    return subprocess.run(
        [*MODBATT, "app", "--can", can1, "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_bootstrap_pairing_monitoring_across_processes(tmp_path: Path) -> None:
    pytest.importorskip("msgpack")
    group = f"239.74.{random.randint(0, 255)}"
    port = random.randint(43200, 43900)
    can1 = f"udp_multicast:{group}.1,port={port}"
    can2 = f"udp_multicast:{group}.2,port={port + 1}"
    bridge = BridgeProcess(tmp_path / "bridge.sqlite3").start()
    pack = subprocess.Popen(
        [
            *MODBATT,
            "pack",
            "run",
            "--can1",
            can1,
            "--can2",
            can2,
            "--state-dir",
            str(tmp_path / "pack"),
            "--log",
            str(tmp_path / "pack.asc"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    modules = subprocess.Popen(
        [
            *MODBATT,
            "module",
            "run",
            "--can",
            can2,
            "--unique-id",
            "700",
            "--count",
            "2",
            "--state-dir",
            str(tmp_path / "modules"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "app"
    try:
        time.sleep(2.0)  # the modules announce and register
        boot = app(["bootstrap"], can1, state, bridge.url)
        assert boot.returncode == 0, boot.stdout + boot.stderr
        assert json.loads(boot.stdout)["security_level"] == 1
        paired = app(["pair", "--all"], can1, state, bridge.url)
        assert paired.returncode == 0, paired.stdout + paired.stderr
        results: list[dict[str, Any]] = [json.loads(line) for line in paired.stdout.splitlines()]
        assert {r["unique_id"] for r in results} == {700, 701}
        status = app(["status"], can1, state, bridge.url)
        info = json.loads(status.stdout)
        assert info["state"] == 4 and info["security_level"] == 3
        # every action the README shows runs as written
        module_id = str(min(m["module_id"] for m in info["modules"]))
        image = tmp_path / "firmware.bin"
        image.write_bytes(os.urandom(3000))
        for action in (
            ["configure", "--max-state", "3", "--bridge-unpaired", "no"],
            ["command", "--module", module_id, "--state", "standby"],
            ["diagnose"],
            ["firmware", "--image", str(image), "--version", "1.2.3"],
        ):
            done = app(action, can1, state, bridge.url)
            assert done.returncode == 0, (action, done.stdout + done.stderr)
            assert isinstance(json.loads(done.stdout), dict), action
        vague = app(["configure"], can1, state, bridge.url)
        assert vague.returncode == 2 and "--bridge-unpaired" in vague.stderr  # a usage mistake
        monitor = app(["monitor", "--duration", "2"], can1, state, bridge.url)
        assert monitor.returncode == 0
        # the result line, on stderr: "monitor: N telemetry frames decrypted (2.3 s)"
        counted = re.search(r"monitor: (\d+) telemetry frames decrypted", monitor.stderr)
        assert counted is not None and int(counted.group(1)) > 10, monitor.stderr
    finally:
        for process in (modules, pack):
            process.terminate()
        for process in (modules, pack):
            process.wait(timeout=10)
        log = pack.stdout.read() if pack.stdout else ""
        if pack.stdout:
            pack.stdout.close()
        bridge.stop()
    assert "state 4 Operational, security level 3" in log, log
    # the pack's traffic log reads back, decrypted with the pack's keys
    decoded = subprocess.run(
        [*MODBATT, "decode", str(tmp_path / "pack.asc"), "--keystore", str(tmp_path / "pack")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert decoded.returncode == 0, decoded.stderr
    assert "decrypted (app)" in decoded.stdout and "decrypted (module" in decoded.stdout


def test_ctrl_c_stops_a_role_at_once_whatever_its_duration() -> None:
    """A --duration's timer does not keep the process alive after Ctrl-C."""
    role = subprocess.Popen(
        [*MODBATT, "module", "run", "--can", f"virtual:ctrl-c-{random.randint(0, 10**9)}",
         "--unique-id", "1", "--duration", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert role.stdout is not None and "module(s)" in role.stdout.readline()
        interrupted = time.monotonic()
        role.send_signal(signal.SIGINT)
        assert role.wait(timeout=30) == 0
        assert time.monotonic() - interrupted < 10
    finally:
        role.kill()
        if role.stdout is not None:
            role.stdout.close()
