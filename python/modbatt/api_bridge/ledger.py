"""The ledger: every state change of the embedded API-Bridge, hash-chained.

Each record's ``txhash`` is ``SHA-256(previous txhash ‖ LF ‖ kind ‖ LF ‖ body)`` in hex,
where ``body`` is the change as canonical JSON (sorted keys, no spaces) and the first record's
previous txhash is 64 zeros. A record that is edited, removed or reordered breaks the chain;
a state table edited without a matching record no longer equals the ledger's replay. A
record removed from the *end* leaves a shorter chain that is still whole, so the server also
keeps the ledger's head (its last record's number and txhash) in a file outside the database,
rewritten after every write: a ledger that no longer reaches its head was truncated or rolled
back. All three are what ``modbatt api-bridge verify`` checks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modbatt.state import stores

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


def idempotency_commitment(key: str) -> str:
    """What the ledger keeps of an Idempotency-Key: its SHA-256 (a replay hands out halves)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Head:
    """The ledger's last record: its number (0 for an empty ledger) and txhash."""

    seq: int
    txhash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.txhash}"


EMPTY = Head(0, GENESIS)


class LedgerHeadError(stores.StoreError):
    """The ledger does not reach the head kept outside the database, or that head is gone."""


class HeadFileError(LedgerHeadError):
    """A head file that cannot be read as one."""


def head_path(db: Path) -> Path:
    """Where the head of the ledger in `db` is kept unless the operator says otherwise."""
    return db.with_name(db.name + ".head")


def write_head(path: Path, head: Head) -> None:
    """Replace the head file atomically (fsynced before the write is acknowledged)."""
    stores.atomic_write(path, (canonical({"seq": head.seq, "txhash": head.txhash}) + "\n").encode())


def read_head(path: Path) -> Head | None:
    """The head kept in `path`, or None when there is no such file."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadFileError(f"{path}: cannot read the ledger head ({exc})") from exc
    try:
        fields = json.loads(text)
        head = Head(int(fields["seq"]), str(fields["txhash"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise HeadFileError(f"{path}: not a ledger head file") from exc
    if head.seq < 0 or len(head.txhash) != 64:
        raise HeadFileError(f"{path}: not a ledger head file")
    return head
