"""The whole bridge path, secure and plain (mirrors `modbatt bench gateway`).

`make test` runs each once (benchmarks disabled) so they cannot rot; `make bench` measures.
Each round bridges a batch of 8-byte frames end to end on python-can virtual buses and
returns what was delivered, which is checked: no round can time a lost frame.
"""

from __future__ import annotations

from typing import Any

from modbatt.tools.bench_gateway import (
    PACED_FPS,
    plain_paced,
    plain_saturated,
    secure_paced,
    secure_saturated,
)

FRAMES = 2_000  # per round
PACED = 700  # 0.1 s at the paced rate


def test_plain_bridge_saturated(benchmark: Any) -> None:
    result = benchmark.pedantic(plain_saturated, args=(FRAMES,), rounds=3, iterations=1)
    assert result.delivered == result.sent == FRAMES


def test_secure_bridge_saturated(benchmark: Any) -> None:
    result = benchmark.pedantic(secure_saturated, args=(FRAMES,), rounds=3, iterations=1)
    assert result.delivered == result.sent == FRAMES


def test_plain_bridge_paced(benchmark: Any) -> None:
    result = benchmark.pedantic(plain_paced, args=(PACED, PACED_FPS), rounds=1, iterations=1)
    assert result.delivered == result.sent == PACED


def test_secure_bridge_paced(benchmark: Any) -> None:
    result = benchmark.pedantic(secure_paced, args=(PACED, PACED_FPS), rounds=1, iterations=1)
    assert result.delivered == result.sent == PACED
