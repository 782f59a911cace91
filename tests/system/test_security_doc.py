"""docs/SECURITY.md names real tests: every `file::test` it cites exists where it says."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
SECURITY = (ROOT / "docs" / "SECURITY.md").read_text()
CITATION = re.compile(r"`(\w+\.(?:py|rs))(?:::(\w+))?`")


def _source(file_name: str) -> Path:
    if not file_name.endswith(".rs"):
        # tests/ mirrors python/modbatt: a test file is cited by its name, found in its folder
        found = sorted((ROOT / "tests").rglob(file_name))
        return found[0] if len(found) == 1 else ROOT / "tests" / file_name
    # Rust tests live in rust/tests; the libFuzzer targets in fuzz/fuzz_targets.
    in_tests = ROOT / "rust" / "tests" / file_name
    return in_tests if in_tests.is_file() else ROOT / "fuzz" / "fuzz_targets" / file_name


def test_every_cited_test_exists() -> None:
    citations = CITATION.findall(SECURITY)
    assert len(citations) > 40  # the tables are there and the pattern still matches them
    missing = []
    for file_name, test_name in citations:
        source = _source(file_name)
        if not source.is_file():
            missing.append(file_name)
            continue
        if test_name and not re.search(
            rf"\bfn {test_name}\(|\bdef {test_name}\(", source.read_text()
        ):
            missing.append(f"{file_name}::{test_name}")
    assert missing == []
