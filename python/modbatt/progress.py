"""What a long step is waiting for, told to the operator: spinners, progress bars, result lines.

The protocol code (:class:`~modbatt.app.app.App`) reports its long steps through a
:class:`Progress` and never draws anything itself. The base class reports nothing: that is
what a library user and the tests get. The command line hands the app a
:class:`ConsoleProgress`, which draws with rich on stderr, so stdout stays the command's
answer (JSON) for scripts:

- on a terminal, a spinner for each step of unknown length, saying what it waits for
  ("key_delivery: waiting for the pack controller"), and a bar for each counted one
  (pairing N modules, a firmware image's bytes); both vanish when the step ends;
- then one result line per command ("bootstrap: done in 2.1 s ...");
- when stderr is not a terminal (a log file, a pipe), only the result lines.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress
from rich.progress_bar import ProgressBar
from rich.table import Column
from rich.text import Text

Advance = Callable[[int], None]


class Progress:
    """Where long steps report; this base reports nothing (library use and tests)."""

    @contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """A step of unknown length; `what` says what it waits for."""
        yield

    @contextmanager
    def counting(self, what: str, total: int) -> Iterator[Advance]:
        """A step of `total` units; the caller calls the advance function with units done."""
        yield _ignore

    def result(self, line: str) -> None:
        """The one line that says how a command ended."""


def _ignore(_done: int) -> None:
    pass


NO_PROGRESS = Progress()


class _OnlyWhenCounted(BarColumn):
    """A bar for counted steps; nothing for spinners (rich would draw a pulsing bar)."""

    def render(self, task: Task) -> ProgressBar | Text:  # type: ignore[override]
        return Text("") if task.total is None else super().render(task)


class _CountWhenCounted(MofNCompleteColumn):
    def render(self, task: Task) -> Text:
        return Text("") if task.total is None else super().render(task)


class ConsoleProgress(Progress):
    """Spinners and bars on `console` (a terminal), result lines always unless `quiet`.

    One rich display holds every step in progress, so nested steps show as lines under
    each other ("bootstrap" above "key_delivery: waiting for the pack controller").
    """

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._lock = threading.Lock()
        self._steps = 0
        self._display = RichProgress(
            SpinnerColumn(),
            # the description is cut short, never wrapped, leaving room for the spinner and
            # the time: a step stays one line on a narrow terminal
            TextColumn(
                "{task.description}",
                markup=False,
                table_column=Column(
                    no_wrap=True, overflow="ellipsis", max_width=max(24, console.width - 42)
                ),
            ),
            _OnlyWhenCounted(bar_width=20),
            _CountWhenCounted(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            # stdout is the command's answer: never draw it into the display on stderr
            redirect_stdout=False,
        )

    @property
    def drawing(self) -> bool:
        """Whether spinners and bars are drawn (stderr is a terminal and -q was not given)."""
        return self.console.is_terminal and not self.quiet

    @contextmanager
    def _step(self, what: str, total: int | None) -> Iterator[Advance]:
        if not self.drawing:
            yield _ignore
            return
        with self._lock:
            if self._steps == 0:
                self._display.start()
            self._steps += 1
            task = self._display.add_task(what, total=total)
        try:
            yield lambda done: self._display.advance(task, done)
        finally:
            with self._lock:
                self._display.remove_task(task)
                self._steps -= 1
                if self._steps == 0:
                    self._display.stop()

    @contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """A spinner saying `what`, until the block ends."""
        with self._step(what, None):
            yield

    @contextmanager
    def counting(self, what: str, total: int) -> Iterator[Advance]:
        """A bar of `total` units saying `what`, until the block ends."""
        with self._step(what, total) as advance:
            yield advance

    def answer(self, text: str) -> None:
        """`text` on stdout, the command's answer; the display is lifted while it is written.

        With stdout on the same terminal, a line written under a live display would be
        drawn over; the display is taken down first and drawn again after.
        """
        with self._lock:
            lift = self._steps > 0 and sys.stdout.isatty()
            if lift:
                self._display.stop()
            print(text, flush=True)
            if lift:
                self._display.start()

    def result(self, line: str) -> None:
        """`line` on the console, unless -q."""
        if not self.quiet:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
