"""Every `modbatt` command through click's test runner (issue 8), in this process.

Each command has its --help, refuses bad input with exit status 2 before anything runs, and
is run for real here: the app's actions against a running pack, two modules and the
embedded API-Bridge on loopback; the roles on virtual buses; decode on a log written here.
`test_every_command_is_run_here` reads this file: a command that no test here runs fails it.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import can
import click
import httpx
import pytest
from click.testing import CliRunner, Result

from modbatt.bus.nodes import NodeLoop
from modbatt.bus.transport import CanPort
from modbatt.cli.base import EXIT_USAGE
from modbatt.cli.commands import cli
from modbatt.module.pairing import PairingAgent, SecureModule
from modbatt.module.simulator import modules_for
from modbatt.protocol.catalogue import catalogue
from modbatt.tools.demo import free_port
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import Lifecycle, lose_the_packs_flash, running_lifecycle, wait_for


def modbatt(*args: str) -> Result:
    """`modbatt ARGS` through the runner; stdout and stderr apart."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _command_of(args: tuple[str, ...]) -> tuple[str, ...]:
    """The command that `args` names (its path in the tree, options skipped)."""
    path: list[str] = []
    command: click.Command = cli
    words = iter(args)
    for word in words:
        if not isinstance(command, click.Group):
            break
        if word.startswith("-"):
            option = next(p for p in command.params if word in p.opts)
            if isinstance(option, click.Option) and not option.is_flag and not option.count:
                next(words, None)  # its value
            continue
        command = command.commands[word]
        path.append(word)
    return tuple(path)


def leaf_commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every command that does something (not a group), by its path."""
    found: set[tuple[str, ...]] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= leaf_commands(command, (*path, name))
        else:
            found.add((*path, name))
    return found


@pytest.mark.parametrize("path", sorted(leaf_commands()), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: modbatt {' '.join(path)} ")
    assert "-v, --verbose" in result.stdout and "-q, --quiet" in result.stdout
    assert "\\b" not in result.stdout  # click's no-rewrap marker is a real backspace


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["pack", "run", "--can2", "nosuchbus:x"], "'nosuchbus'"),
        (["pack", "run", "--can2", "virtual:x", "--log", "pack.txt"], "the extension must be"),
        (["module", "run", "--can", "virtual:x", "--unique-id", "-1"], "--unique-id"),
        (["demo", "--modules", "32"], "--modules"),
        (["soak", "--rate", "0"], "--rate"),
        (["bench", "no-such-benchmark"], "no-such-benchmark"),
        (["app", "--can", "virtual:x", "pair"], "give either --unique-id or --all"),
        (["app", "--can", "virtual:x", "command", "--module", "32", "--state", "on"], "--module"),
        (["app", "--can", "virtual:x", "configure"], "--max-state and/or --bridge-unpaired"),
        (["decode", "no-such.asc"], "does not exist"),
        (["decode", "."], "is a directory"),
        (["api-bridge", "health", "--url", "bridge.local"], "http://"),
        (["app", "--can", "virtual:x", "--api-bridge", "bridge.local", "status"], "http://"),
        (["pack", "run", "--can2", "virtual:x", "--serial", "S" * 65], "1 to 64 characters"),
        (
            ["module", "run", "--can", "virtual:x", "--unique-id", str(2**32 - 1), "--count", "2"],
            "go past 2^32 - 1",
        ),
        (["api-bridge", "serve", "--port", "0"], "--port"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(
    argv: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == EXIT_USAGE, result.output
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was created


def test_verbosity_counts_wherever_it_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise RuntimeError("unexpected")

    monkeypatch.setattr("modbatt.protocol.catalogue.dbc_path", broken)
    quiet = modbatt("dbc")
    assert quiet.exit_code == 70 and "run again with -v" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    for argv in (["-v", "dbc"], ["dbc", "-v"], ["-v", "-q", "-v", "dbc"]):
        told = modbatt(*argv)  # -v: the traceback is the user's, the status still a bug's
        assert told.exit_code == 70 and "Traceback" in told.stderr, argv
        assert "RuntimeError: unexpected" in told.stderr
    assert "Traceback" not in modbatt("-v", "-q", "dbc").stderr


def test_dbc() -> None:
    result = modbatt("dbc")
    assert result.exit_code == 0
    assert Path(result.stdout.strip()).suffix == ".dbc"
    assert Path(result.stdout.strip()).exists()


def test_decode_a_log_written_here(tmp_path: Path) -> None:
    log = tmp_path / "can2.asc"
    values = {"State": 3, "Status": 0, "SOC": 55, "SOH": 98, "CellCount": 14}
    can_id, payload = catalogue().encode(
        "STATUS_1", 3, {**values, "Current": -2.5, "ModuleVoltage": 51.2}
    )
    with can.Logger(str(log)) as writer:
        writer.on_message_received(
            can.Message(arbitration_id=can_id, data=payload, is_extended_id=True, channel="can2")
        )
    result = modbatt("decode", str(log))
    assert result.exit_code == 0, result.output
    assert "STATUS_1 node 3: State 3, Status 0, SOC 55" in result.stdout


def test_api_bridge_serve_health_and_verify(tmp_path: Path) -> None:
    db, port = tmp_path / "bridge.sqlite3", free_port()
    url = f"http://127.0.0.1:{port}"
    answered: list[bool] = []

    def interrupt_once_up() -> None:
        answered.append(wait_for(lambda: _up(url), 20.0))
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as an operator stops it

    tokens = tmp_path / "tokens.json"
    made = modbatt("api-bridge", "add-token", "--tokens", str(tokens), "alice")
    assert made.exit_code == 0 and "added alice's token" in made.stderr
    threading.Thread(target=interrupt_once_up, daemon=True).start()
    served = modbatt(
        "api-bridge", "serve", "--db", str(db), "--port", str(port), "--tokens", str(tokens)
    )
    assert answered == [True]
    assert served.exit_code == 0, served.output  # Ctrl-C is how a server is stopped
    assert "access: per-creator tokens (1 creator)" in served.stderr
    assert made.stdout.strip() not in served.output
    assert db.exists()
    verified = modbatt("api-bridge", "verify", "--db", str(db))
    assert verified.exit_code == 0 and "ledger intact" in verified.stdout
    assert modbatt("api-bridge", "verify", "--db", str(tmp_path / "none")).exit_code == 2
    down = modbatt("api-bridge", "health", "--url", url)
    assert down.exit_code == 3, down.output


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_api_bridge_health_of_a_running_one(api_bridge: BridgeProcess) -> None:
    result = modbatt("api-bridge", "health", "--url", api_bridge.url)
    assert result.exit_code == 0, result.output
    assert f"API-Bridge at {api_bridge.url}: healthy" in result.stdout


def test_module_run_registers_with_a_pack(tmp_path: Path, api_bridge: BridgeProcess) -> None:
    with running_lifecycle(tmp_path, api_bridge) as life:
        result = modbatt(
            "module", "run", "--can", f"virtual:{life.can2_channel}", "--unique-id", "77",
            "--duration", "2.5",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "unique id 77: registered as module" in result.stdout


@pytest.fixture
def two_modules() -> Iterator[str]:
    """Two simulated modules on a fresh virtual CAN 2; yields its channel."""
    channel = f"modbatt-runner-can2-{uuid.uuid4().hex[:8]}"
    port = CanPort(can.Bus(interface="virtual", channel=channel), "modules")
    modules = [SecureModule(m, None) for m in modules_for(4100, 2, 8, time.monotonic())]
    loop = NodeLoop(port, modules).start()
    agent = PairingAgent(port, modules, loop).start()
    try:
        yield channel
    finally:
        agent.stop()
        loop.stop()
        port.close()


def test_pack_run_registers_modules(tmp_path: Path, two_modules: str) -> None:
    result = modbatt(
        "pack", "run", "--can1", f"virtual:runner-can1-{uuid.uuid4().hex[:8]}",
        "--can2", f"virtual:{two_modules}", "--state-dir", str(tmp_path / "pack"),
        "--duration", "2.5", "--log", str(tmp_path / "pack.log"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "state 1 Factory Default, security level 0" in result.stdout
    assert "module 1" in result.stdout and "module 2" in result.stdout
    assert (tmp_path / "pack").is_dir() and (tmp_path / "pack.log").stat().st_size > 0


def test_pack_run_module_side_only(two_modules: str) -> None:
    result = modbatt("pack", "run", "--can2", f"virtual:{two_modules}", "--duration", "2")
    assert result.exit_code == 0, result.output
    assert "module bus (CAN 2)" in result.stdout and "module 2" in result.stdout


def test_every_app_action_against_a_running_pack(tmp_path: Path, api_bridge: BridgeProcess) -> None:
    """The app's whole life through the runner, each command a fresh app as from a shell."""
    with running_lifecycle(tmp_path, api_bridge) as life:
        life.app.endpoint.close()  # the fixture's own app steps aside for the command line's
        run = _app_runner(life, tmp_path / "app-cli", api_bridge.url)

        found = json.loads(run("discover").stdout)
        assert found["state_name"] == "Factory Default"
        assert run("status").exit_code == 0  # before bootstrap: the pack's plain answer
        refused = run("diagnose")
        assert refused.exit_code == 1 and refused.stdout == ""  # stdout: answers only
        assert "run bootstrap" in refused.stderr

        booted = run("bootstrap")
        assert json.loads(booted.stdout)["security_level"] >= 1
        assert "bootstrap: bootstrapped, security level" in booted.stderr  # the result line

        assert wait_for(lambda: _online(run) == 2, 6.0)
        paired = run("pair", "--all")
        answers = [json.loads(line) for line in paired.stdout.splitlines()]
        assert [answer["type"] for answer in answers] == ["pair_result"] * 2
        assert "pair: 2 module(s) paired" in paired.stderr

        status = json.loads(run("status").stdout)
        assert status["state_name"] == "Operational" and status["security_level"] == 3
        module_id = str(status["modules"][0]["module_id"])
        assert json.loads(run("configure", "--max-state", "3").stdout)["type"] == "configured"
        commanded = run("command", "--module", module_id, "--state", "standby")
        assert json.loads(commanded.stdout) == {"module": int(module_id), "requested_state": 1}
        isolated = json.loads(run("isolate").stdout)
        assert isolated["type"] == "isolated" and isolated["plain"] is True
        assert isolated["sealed"] == sorted(int(m["module_id"]) for m in status["modules"])
        diagnosed = json.loads(run("diagnose").stdout)
        assert diagnosed["audit_log"] == "intact" and diagnosed["api_bridge"]["problems"] == []
        offline = modbatt(  # in the field without the API-Bridge: the pack's view all the same
            "app", "--can", f"virtual:{_can1(life)}", "--state-dir", str(tmp_path / "app-cli"),
            "--api-bridge", "http://127.0.0.1:9", "diagnose",
        )  # fmt: skip
        assert offline.exit_code == 0 and json.loads(offline.stdout)["audit_log"] == "intact"
        assert "API-Bridge: not reachable" in offline.stderr
        image = tmp_path / "image.bin"
        image.write_bytes(os.urandom(3000))
        stored = run("firmware", "--image", str(image), "--version", "1.2.3")
        assert "firmware 1.2.3 stored in the pack (3000 bytes)" in stored.stderr, stored.output

        watched = run("monitor", "--duration", "2", "--interval", "0.5")
        assert "Operational" in watched.stdout and "telemetry frames decrypted" in watched.stderr
        config = tmp_path / "monitor.toml"  # the options from a file this time
        config.write_text(
            f'can = "virtual:{_can1(life)}"\nstate-dir = "{tmp_path / "app-cli"}"\n'
            f'api-bridge = "{api_bridge.url}"\nduration = 1.5\ninterval = 0.5\n'
        )
        alone = modbatt("monitor", "--config", str(config))
        assert alone.exit_code == 0 and "security level 3" in alone.stdout, alone.output

        recovered = run("recover")  # the pack kept its keys: the channel upgrade alone
        assert recovered.exit_code == 0 and "recovered, security level 3" in recovered.stderr
        lose_the_packs_flash(life)  # now a new bootstrap is needed: the operator's word first
        unconfirmed = run("recover")
        assert unconfirmed.exit_code == 1 and "--confirm-rebootstrap" in unconfirmed.stderr
        rebuilt = run("recover", "--confirm-rebootstrap")
        assert "security level 3, 2 module(s) paired again" in rebuilt.stderr, rebuilt.output
        quiet = run("status", "-q")
        assert quiet.exit_code == 0 and quiet.stderr == ""  # -q: the answer, no result line


def _can1(life: Lifecycle) -> str:
    return life.can2_channel.replace("can2", "can1")


def _app_runner(life: Lifecycle, state_dir: Path, url: str):  # type: ignore[no-untyped-def]
    def run(*action: str) -> Result:
        result = modbatt(
            "app", "--can", f"virtual:{_can1(life)}", "--state-dir", str(state_dir),
            "--api-bridge", url, *action,
        )  # fmt: skip
        assert result.exit_code in (0, 1), result.output
        return result

    return run


def _online(run) -> int:  # type: ignore[no-untyped-def]
    return sum(m["online"] for m in json.loads(run("status", "-q").stdout)["modules"])


def test_demo(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    result = modbatt("demo", "--modules", "1", "--duration", "0.5", "--json", str(summary))
    assert result.exit_code == 0, result.output
    assert json.loads(summary.read_text())["recovery_ok"] is True


def test_bench_and_soak(tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    bench = modbatt("bench", "frame-path", "--quick", "--json", str(figures))
    assert bench.exit_code == 0, bench.output
    assert json.loads(figures.read_text())["seal_ns_rust"] > 0
    # SocketCAN's benchmark runs where vcan0/vcan1 are (tests/socketcan); elsewhere it says so
    if not Path("/sys/class/net/vcan0").exists():
        elsewhere = modbatt("bench", "gateway", "--interface", "socketcan", "--quick")
        assert elsewhere.exit_code == 1
        assert "no SocketCAN buses vcan0/vcan1 here: run it in the guest" in elsewhere.output
    soak = modbatt("soak", "--seconds", "1", "--rate", "500", "--modules", "1")
    assert soak.exit_code == 0, soak.output
    assert "FAILED" not in soak.stdout


def test_every_command_is_run_here() -> None:
    """Each command is run by a test in this file: `modbatt(...)` with its name, or
    `run(...)` with an app action's (the app runner's)."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    invoked: set[tuple[str, ...]] = set()
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            continue
        words = []
        for argument in call.args:
            if not isinstance(argument, ast.Constant) or not isinstance(argument.value, str):
                break
            words.append(argument.value)
        if call.func.id == "modbatt" and words:
            invoked.add(_command_of(tuple(words)))
        elif call.func.id == "run" and words:
            invoked.add(("app", words[0]))
    assert leaf_commands() - invoked == set()
