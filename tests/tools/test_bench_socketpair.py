"""`modbatt bench gateway --interface socketpair` runs natively and measures what it says (its
figures are printed by the command, not judged here)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli_runner import modbatt


def test_the_socketpair_benchmark_carries_every_frame_through_both_bridges(
    tmp_path: Path,
) -> None:
    written = tmp_path / "figures.json"
    result = modbatt(
        "bench", "gateway", "--interface", "socketpair", "--quick", "--json", str(written)
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(written.read_text())
    assert figures["interface"] == "socketpair"
    for key in ("direct_fps", "plain_bridge_fps", "rust_bridge_fps", "rust_plain_route_fps"):
        assert figures[key] > 0
    for key in ("plain", "rust"):
        assert 0 < figures[f"{key}_latency_p50_us"] <= figures[f"{key}_latency_p99_us"]
        # the bridge's own threads worked, and not for more than the two cores there are
        assert 0 < figures[f"{key}_cpu_percent_paced"] < 200
    lost, dropped = figures["lost_by_bridge"], figures["dropped_by_plane"]
    assert set(lost) == {"direct", "plain", "rust", "rust_plain_route"}
    # blocking sends lose nothing; the data plane loses only what it dropped and counted (the
    # sink's socket full for over a millisecond), at most a pair per frame dropped; every
    # other resealed pair opened intact at the far end
    assert lost["direct"] == lost["plain"] == 0
    assert dropped["rust_plain_route"] == lost["rust_plain_route"]
    assert dropped["rust"] <= lost["rust"] <= 2 * dropped["rust"]
    assert "rust_bridge_fps / plain_bridge_fps" in result.output
