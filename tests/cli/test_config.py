"""Configuration files per role (issue 8): `--config FILE` holds the role's options, the command
line wins, and a bad file is refused at start-up with every key and problem named."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from modbatt.cli.commands import main as cli_main
from modbatt.cli.config import (
    AppConfig,
    ConfigError,
    ModuleConfig,
    MonitorConfig,
    PackConfig,
    load_config,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "role.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_pack_runs_from_its_file_and_the_command_line_wins(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    config = _write(
        tmp_path,
        f'can1 = "virtual:cfg-can1-{run}"\ncan2 = "virtual:cfg-can2-{run}"\n'
        f'state-dir = "{tmp_path / "pack"}"\nserial = "PACK-FROM-FILE"\nduration = 0.5\n',
    )
    command = [sys.executable, "-m", "modbatt", "pack", "run", "--config", str(config)]
    result = subprocess.run(
        [*command, "--serial", "PACK-FROM-CLI"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pack controller PACK-FROM-CLI" in result.stdout
    assert f"CAN 2 on virtual:cfg-can2-{run}" in result.stdout
    assert (tmp_path / "pack" / "audit.jsonl").parent.is_dir()


@pytest.mark.parametrize(
    ("model", "text", "named"),
    [
        (PackConfig, 'can2 = "nonsense"\n', ["key 'can2'", "INTERFACE:CHANNEL"]),
        (PackConfig, "bitrate = 500000\n", ["key 'bitrate'", "not an option", "state-dir"]),
        (PackConfig, "serial = 7\nduration = -1\n", ["key 'serial'", "key 'duration'"]),
        (PackConfig, 'log = "pack.txt"\n', ["key 'log'", ".blf"]),
        (ModuleConfig, "cells = 0\ncount = 300\n", ["key 'cells'", "key 'count'"]),
        (ModuleConfig, 'unique-id = "five"\n', ["key 'unique-id'"]),
        (AppConfig, 'api-bridge = "bridge.local"\n', ["key 'api-bridge'", "http"]),
        (AppConfig, "can = \n", ["not valid TOML", "line 1"]),
        (AppConfig, "interval = 2.0\n", ["key 'interval'", "not an option"]),
        (MonitorConfig, "interval = 0.01\n", ["key 'interval'", "0.05"]),
    ],
)
def test_a_bad_file_names_each_key_and_problem(
    tmp_path: Path, model: type[PackConfig], text: str, named: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text), model)
    for part in named:
        assert part in str(caught.value)


def test_the_command_line_refuses_a_bad_file_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, 'can2 = "virtual:x"\nstate-dir = 3\n')
    assert cli_main(["pack", "run", "--config", str(config)]) == 2
    assert "key 'state-dir'" in capsys.readouterr().err
    assert not (tmp_path / "3").exists()


def test_a_required_option_comes_from_the_line_or_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, option in (
        (["pack", "run"], "--can2"),
        (["module", "run", "--can", "virtual:x"], "--unique-id"),
        (["app", "discover"], "--can"),
    ):
        assert cli_main(argv) == 2
        assert f"Missing option '{option}'" in capsys.readouterr().err
    config = _write(tmp_path, 'can = "virtual:x"\n')
    assert cli_main(["module", "run", "--config", str(config)]) == 2
    assert "Missing option '--unique-id'" in capsys.readouterr().err


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "absent.toml", AppConfig)


def test_the_monitor_takes_its_view_options_from_a_file(tmp_path: Path) -> None:
    config = _write(tmp_path, 'can = "virtual:x"\ninterval = 0.5\nduration = 3.0\n')
    loaded = load_config(config, MonitorConfig)
    assert loaded.options() == {"can": "virtual:x", "interval": 0.5, "duration": 3.0}
    assert cli_main(["app", "--config", str(config), "status"]) == 2  # not the app's keys


def test_relative_paths_in_a_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "pack.toml"
    config.write_text('state-dir = "state"\nlog = "/var/log/pack.blf"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # started from elsewhere, as systemd would
    loaded = load_config(config, PackConfig)
    assert loaded.state_dir == tmp_path / "etc" / "state"
    assert loaded.log == Path("/var/log/pack.blf")
