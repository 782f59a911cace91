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
    # every record arrived, and every one of the data plane's resealed pairs opened intact
    assert figures["lost_frames"] == 0
    assert set(figures["lost_by_bridge"]) == {"direct", "plain", "rust", "rust_plain_route"}
    assert "rust_bridge_fps / plain_bridge_fps" in result.output
