"""Load: both buses at the full classic rate through a running pack (issue 6, `make soak`).

`make test` runs each for 5 s; `make soak` runs `modbatt soak` for 60 s. The report's
`problems()` are the requirements: nothing lost or reordered per stream, every frame stepped
by the gateway, the backlog drained, resident memory flat.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modbatt.cli.commands import main
from modbatt.tools.soak import FULL_CLASSIC_RATE, SoakReport, run_soak

SECONDS = 5.0


def _check(report: SoakReport) -> None:
    print("\n".join(report.lines()))  # figures only: the soak's keys are random and never shown
    assert report.problems() == []
    # two buses at the full rate, two frames a message: exactly what the rate asks for
    assert report.frames_sent == 2 * SECONDS * FULL_CLASSIC_RATE
    assert report.streams == 8 and report.lost == 0 and report.reordered == 0


def test_both_buses_at_full_rate_lose_and_reorder_nothing() -> None:
    report = run_soak(SECONDS)
    _check(report)
    assert report.garbage_sent == 0 and not any(report.gateway_dropped.values())


def test_a_garbage_flood_at_full_rate_leaves_bridging_and_memory_alone() -> None:
    report = run_soak(SECONDS, garbage_rate=FULL_CLASSIC_RATE)
    _check(report)
    assert report.garbage_sent == 2 * SECONDS * FULL_CLASSIC_RATE
    dropped = sum(report.gateway_dropped.values())
    # every garbage frame the gateway stepped was dropped, or bridged as plain module traffic
    # (unpaired ids 0x500-0x51F, which the policy allows); none spent a link's budget
    bridged_plain = report.frames_forwarded - report.messages_sent
    assert dropped + bridged_plain == report.garbage_to_gateway
    assert report.gateway_dropped["bad_tag"] == 0


def test_the_problems_name_what_failed() -> None:
    report = SoakReport(1.0, 10, 0, 1, "virtual", frames_sent=20, messages_sent=10)
    report.messages_delivered, report.lost, report.frames_received = 8, 2, 20
    report.rss_start_kib, report.rss_end_kib = 1000, 1000 + 64 * 1024
    report.pack_errors = 1
    problems = report.problems()
    assert "2 messages lost" in problems
    assert "8 of 10 messages delivered" in problems
    assert any("resident memory grew" in p for p in problems)
    assert "the pack logged 1 errors (see the log)" in problems


def test_the_soak_command_reports_and_exits_zero(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    assert main(["soak", "--seconds", "1", "--rate", "1000", "--json", str(figures)]) == 0
    written = json.loads(figures.read_text())
    assert written["lost"] == 0 and written["messages_delivered"] == written["messages_sent"]


@pytest.mark.parametrize("argv", [["--modules", "0"], ["--seconds", "0"], ["--rate", "-1"]])
def test_the_soak_command_refuses_bad_options(argv: list[str]) -> None:
    assert main(["soak", *argv]) == 2
