"""The embedded API-Bridge's store: ids, idempotency, transactions and the ledger check."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import modbatt.cli as cli
import modbatt.cli_base as cli_base
from modbatt.api_bridge.store import ConflictError, DatabaseUnusableError, NotFoundError, Store

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "bridge.sqlite3")
    yield s
    s.close()


def populate(store: Store) -> tuple[str, str, str]:
    a, _ = store.register("alice", "A", "", now=NOW)
    b, _ = store.register("alice", "B", "", now=NOW)
    lct = store.create_lct("alice", a["component_id"], b["component_id"], now=NOW)
    store.set_lct_status(lct["lct_id"], "alice", "suspended", now=NOW)
    return a["component_id"], b["component_id"], lct["lct_id"]


def test_the_database_is_private(store: Store) -> None:
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_ids_in_one_second_stay_unique_and_in_format(store: Store) -> None:
    ids = [store.register("alice", f"M{n}", "", now=NOW)[0]["component_id"] for n in range(5)]
    seconds = int(NOW.timestamp())
    assert ids == [f"COMP-alice-{seconds + n}" for n in range(5)]
    assert store.register("bob", "M0", "", now=NOW)[0]["component_id"] == f"COMP-bob-{seconds}"


def test_a_failed_write_leaves_nothing(store: Store) -> None:
    a, _ = store.register("alice", "A", "", now=NOW)
    with pytest.raises(NotFoundError):
        store.create_lct("alice", a["component_id"], "COMP-alice-0", now=NOW)
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM lcts").fetchone()[0] == 0
    assert store.verify() is None


def test_revoked_is_final(store: Store) -> None:
    _, _, lct = populate(store)
    store.set_lct_status(lct, "alice", "revoked", now=NOW)
    with pytest.raises(ConflictError):
        store.set_lct_status(lct, "alice", "active", now=NOW)


def test_an_intact_database_verifies(store: Store) -> None:
    populate(store)
    assert store.verify() is None


def _edit(sql: str, *args: object) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with sqlite3.connect(path) as db:
            db.execute(sql, args)

    return apply


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            _edit("UPDATE components SET component_data = 'X' WHERE component_data = 'A'"),
            "component_data",
        ),
        (_edit("UPDATE lcts SET status = 'active'"), "status"),
        (_edit("UPDATE lcts SET device_key_half = ?", "11" * 64), "key halves"),
        (_edit("DELETE FROM components WHERE component_data = 'B'"), "missing from the database"),
        (
            _edit(
                "INSERT INTO components VALUES ('COMP-eve-1', 'eve', 'E', '', 'registered', "
                "'lct_COMP-eve-1', '2026-11-28T00:00:00Z', 1, ?)",
                "0" * 64,
            ),
            "not in the ledger",
        ),
        (
            _edit("UPDATE ledger SET body = replace(body, '\"B\"', '\"Z\"') WHERE seq = 2"),
            "ledger record 2",
        ),
        (_edit("UPDATE ledger SET txhash = ? WHERE seq = 3", "f" * 64), "ledger record 3"),
        (_edit("DELETE FROM ledger WHERE seq = 2"), "removed"),
    ],
)
def test_an_edit_behind_the_servers_back_is_found(
    store: Store, edit: Callable[[Path], None], named: str
) -> None:
    populate(store)
    edit(store.path)
    problem = store.verify()
    assert problem is not None
    assert named in str(problem)


class _NoSharedMemory(sqlite3.Connection):
    """A connection on a filesystem whose WAL shared memory fails (as a 9p mount's did):
    reads work, the first write is a disk I/O error."""

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql.lstrip().upper().startswith(("INSERT", "DELETE")):
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)  # type: ignore[arg-type]


def test_a_database_the_filesystem_cannot_serve_is_named_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`api-bridge serve` once started and answered every write with "disk I/O error ...
    This is a bug in modbatt"; it must refuse to start, say why and what to do, and exit
    with the local-state status."""
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, **kwargs, factory=_NoSharedMemory)

    monkeypatch.setattr(sqlite3, "connect", connect)
    db = tmp_path / "on-9p.sqlite3"
    with pytest.raises(DatabaseUnusableError, match="local disk"):
        Store(db)
    code = cli.main(["api-bridge", "serve", "--db", str(db), "--port", "1"])
    assert code == cli_base.EXIT_STATE
    err = capsys.readouterr().err
    assert "disk I/O error" in err and "local disk" in err and "bug" not in err
