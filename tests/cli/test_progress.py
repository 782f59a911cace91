"""Progress (issue 8): the app's long steps say what they wait for; the console draws it.

The app reports through `modbatt.progress.Progress`; the tests record what it reports
during a real bootstrap, pairing and firmware transfer, and check what `ConsoleProgress`
draws on a terminal and writes elsewhere.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console

from modbatt.progress import Advance, ConsoleProgress, Progress
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import online_count, running_lifecycle, wait_for


class Recording(Progress):
    """Every step reported, in order, with the units counted."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.counted: dict[str, tuple[int, int]] = {}  # what -> (total, units advanced)

    @contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        self.steps.append(what)
        yield

    @contextmanager
    def counting(self, what: str, total: int) -> Iterator[Advance]:
        self.steps.append(what)
        self.counted[what] = (total, 0)

        def advance(done: int) -> None:
            self.counted[what] = (total, self.counted[what][1] + done)

        yield advance


def test_the_apps_long_steps_say_what_they_wait_for(
    tmp_path: Path, api_bridge: BridgeProcess
) -> None:
    with running_lifecycle(tmp_path, api_bridge) as life:
        recording = Recording()
        life.app.progress = recording
        life.app.bootstrap()
        url = api_bridge.url
        for step in (
            "bootstrap",
            "discover: waiting for the pack controller",
            f"registering the app and the pack: waiting for the API-Bridge at {url}",
            f"creating the app-pack LCT: waiting for the API-Bridge at {url}",
            "bootstrap_hello: waiting for the pack controller",
            "key_delivery: waiting for the pack controller",
            "the channel upgrade (session handshake)",
            "handshake_finish: waiting for the pack controller",
        ):
            assert step in recording.steps, (step, recording.steps)
        assert wait_for(lambda: online_count(life) == 2, 5.0)
        unique_id = life.modules[0].module.config.unique_id
        life.app.pair(unique_id)
        assert f"pairing module {unique_id}" in recording.steps
        assert "pair_module: waiting for the pack controller" in recording.steps
        image = os.urandom(2500)
        life.app.update_firmware(image, "9.9.9")
        assert recording.counted["firmware 9.9.9: bytes sent"] == (2500, 2500)


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    written = io.StringIO()
    return Console(file=written, force_terminal=terminal, width=100), written


def test_a_terminal_shows_spinners_and_bars_then_the_result_line() -> None:
    console, written = _console(terminal=True)
    progress = ConsoleProgress(console)
    assert progress.drawing
    with progress.waiting("key_delivery: waiting for the pack controller"):
        with progress.counting("pairing modules", 3) as advance:
            advance(2)
            progress._display.refresh()
            drawn = written.getvalue()
    assert "key_delivery: waiting for the pack controller" in drawn
    assert "pairing modules" in drawn and "2/3" in drawn
    progress.result("pair: 3 module(s) paired (4.2 s)")
    assert written.getvalue().endswith("pair: 3 module(s) paired (4.2 s)\n")


def test_elsewhere_only_the_result_line_and_quiet_not_even_that() -> None:
    console, written = _console(terminal=False)
    progress = ConsoleProgress(console)
    with progress.waiting("bootstrap"), progress.counting("pairing modules", 2) as advance:
        advance(2)
    progress.result("bootstrap: bootstrapped, security level 3 (2.0 s)")
    assert written.getvalue() == "bootstrap: bootstrapped, security level 3 (2.0 s)\n"
    console, written = _console(terminal=True)
    quiet = ConsoleProgress(console, quiet=True)
    with quiet.waiting("bootstrap"):
        pass
    quiet.result("bootstrap: done")
    assert written.getvalue() == ""


def test_the_answer_stays_on_stdout_while_a_step_is_drawn(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pair --all > pairs.json` on a terminal: the answers go to the file, not the display."""
    console, written = _console(terminal=True)
    progress = ConsoleProgress(console)
    with progress.counting("pairing modules", 2) as advance:
        progress.answer('{"type": "pair_result"}')
        print('{"type": "pair_result"}')  # a plain print too
        advance(2)
    assert capsys.readouterr().out == '{"type": "pair_result"}\n' * 2
    assert "pair_result" not in written.getvalue()
