"""Where `modbatt bench gateway --interface socketcan` runs its bridges and its source.

The benchmark itself needs SocketCAN (tests/socketcan/test_bench.py runs it in the guest);
its placement is plain Linux and is checked here.
"""

from __future__ import annotations

import os

import pytest

from modbatt.tools.bench_socketcan import _on_cpus, placement


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        ({0}, (None, None)),  # one CPU: the source and the bridges share it
        ({0, 1}, ({0}, {1})),
        ({2, 5, 7}, ({2}, {5, 7})),  # the bridges on one, canplayer on every other
    ],
)
def test_the_bridges_get_one_cpu_and_the_source_the_others(
    monkeypatch: pytest.MonkeyPatch,
    allowed: set[int],
    expected: tuple[set[int] | None, set[int] | None],
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: allowed)
    assert placement() == expected


def test_a_placement_holds_for_its_block_and_is_undone_after() -> None:
    before = os.sched_getaffinity(0)
    one = {min(before)}
    with _on_cpus(one):
        assert os.sched_getaffinity(0) == one
    assert os.sched_getaffinity(0) == before
    with _on_cpus(None):  # one CPU in all: nothing to place
        assert os.sched_getaffinity(0) == before
