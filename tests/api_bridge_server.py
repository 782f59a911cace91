"""Test helper: the real `modbatt api-bridge serve`, in a subprocess on a loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from modbatt.tools.demo import free_port

STARTUP_LIMIT_S = 2.0
# How long `start` waits for /health: far longer in the SocketCAN guest, where Python runs
# 10-30 times slower under emulation.
START_WAIT_S = 180.0 if os.environ.get("MODBATT_SOCKETCAN_GUEST") else 10.0


class BridgeProcess:
    """`modbatt api-bridge serve --db DB --port PORT [--token T | --tokens FILE]`, started and
    stopped by tests; `stderr` holds what it printed once it is stopped."""

    def __init__(self, db: Path, token: str | None = None, tokens: Path | None = None) -> None:
        self.db = db
        self.token = token
        self.tokens = tokens
        self.stderr = ""
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BridgeProcess:
        command = [
            sys.executable,
            "-m",
            "modbatt",
            "api-bridge",
            "serve",
            "--db",
            str(self.db),
            "--port",
            str(self.port),
        ]
        env = dict(os.environ)
        env.pop("MODBATT_API_BRIDGE_TOKEN", None)
        if self.token is not None:
            command += ["--token", self.token]
        if self.tokens is not None:
            command += ["--tokens", str(self.tokens)]
        started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        while time.monotonic() - started < START_WAIT_S:
            if self.process.poll() is not None:
                raise RuntimeError(f"api-bridge exited: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/health", timeout=0.2).status_code == 200:
                    self.startup_s = time.monotonic() - started
                    return self
            except httpx.TransportError:
                time.sleep(0.02)
        raise RuntimeError(f"api-bridge did not answer /health within {START_WAIT_S:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.stderr = self.process.stderr.read().decode(errors="replace")
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """Stop it the hard way, as a power cut would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.stop()
