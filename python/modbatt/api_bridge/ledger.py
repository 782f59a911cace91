"""The ledger: every state change of the embedded API-Bridge, hash-chained.

Each record's ``txhash`` is ``SHA-256(previous txhash ‖ LF ‖ kind ‖ LF ‖ body)`` in hex,
where ``body`` is the change as canonical JSON (sorted keys, no spaces) and the first record's
previous txhash is 64 zeros. A record that is edited, removed or reordered breaks the chain;
a state table edited without a matching record no longer equals the ledger's replay. Both
are what ``modbatt api-bridge verify`` checks.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64


def canonical(body: dict[str, Any]) -> str:
    """The one JSON text of a record body that its hash covers."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def chain_hash(prev: str, kind: str, body: str) -> str:
    """The txhash of a record that follows `prev`."""
    return hashlib.sha256(f"{prev}\n{kind}\n{body}".encode()).hexdigest()


def keys_commitment(*halves_hex: str) -> str:
    """What the ledger keeps of an LCT's key halves: a SHA-256 over them, never the halves."""
    return hashlib.sha256("".join(halves_hex).encode()).hexdigest()
