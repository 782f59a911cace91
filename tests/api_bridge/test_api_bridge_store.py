"""The embedded API-Bridge's store: ids, idempotency, transactions and the ledger check."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import modbatt.cli.base as cli_base
import modbatt.cli.commands as cli
from modbatt.api_bridge.ledger import GENESIS, LedgerHeadError, canonical, chain_hash, read_head
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


# --- the ledger's length: a head kept outside the database (issue 15, part 2) -------------


def lifecycle(store: Store) -> dict[str, str]:
    """Writes as a pack's bootstrap makes them, ending with a component.verify."""
    a, _ = store.register("alice", "A", "", now=NOW)
    b, _ = store.register("alice", "B", "", now=NOW)
    first = store.create_lct(
        "alice", a["component_id"], b["component_id"], idempotency=("k1", "r1"), now=NOW
    )
    c, _ = store.register("alice", "C", "", now=NOW)
    second = store.create_lct(
        "alice", a["component_id"], c["component_id"], idempotency=("k2", "r2"), now=NOW
    )
    verified = store.verify_component(a["component_id"], "bob", "", now=NOW)
    return {"first": first["lct_id"], "second": second["lct_id"], "last": verified["txhash"]}


def _roll_back_the_last_lct(path: Path) -> None:
    """A whole write undone consistently: its ledger records, its LCT and its key all gone."""
    with sqlite3.connect(path) as db:
        seq, body = db.execute(
            "SELECT seq, body FROM ledger WHERE kind = 'lct.create' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        lct_id = json.loads(body)["lct_id"]
        db.execute("DELETE FROM ledger WHERE seq >= ?", (seq,))
        db.execute("DELETE FROM lcts WHERE lct_id = ?", (lct_id,))
        db.execute("DELETE FROM idempotency WHERE lct_id = ?", (lct_id,))


def _point_a_key_at_another_lct(path: Path) -> None:
    with sqlite3.connect(path) as db:
        other = db.execute("SELECT lct_id FROM idempotency WHERE key = 'k2'").fetchone()[0]
        db.execute("UPDATE idempotency SET lct_id = ? WHERE key = 'k1'", (other,))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_edit("DELETE FROM ledger WHERE seq = (SELECT MAX(seq) FROM ledger)"), "its end"),
        (_roll_back_the_last_lct, "its end"),
        (_point_a_key_at_another_lct, "field 'lct_id' differs"),
        (_edit("DELETE FROM idempotency WHERE key = 'k1'"), "missing from the database"),
        (
            _edit("INSERT INTO idempotency VALUES ('k3', 'alice', 'r3', 'lct_x')"),
            "not in the ledger",
        ),
    ],
    ids=[
        "last-record-deleted",
        "last-lct-rolled-back",
        "key-repointed",
        "key-removed",
        "key-added",
    ],
)
def test_a_shortened_ledger_or_an_edited_idempotency_table_is_found(
    store: Store, edit: Callable[[Path], None], named: str
) -> None:
    """Each of these verified as intact: the chain proved order and content, not length, and
    the idempotency table (which decides what a replayed create hands out) was in no record."""
    lifecycle(store)
    assert store.verify() is None
    edit(store.path)
    problem = store.verify()
    assert problem is not None
    assert named in str(problem)


def test_a_server_does_not_start_on_a_ledger_cut_short(store: Store) -> None:
    lifecycle(store)
    store.close()
    _roll_back_the_last_lct(store.path)
    with pytest.raises(LedgerHeadError, match="records were removed from its end"):
        Store(store.path)


def test_a_write_that_returned_a_txhash_can_be_checked_for(store: Store) -> None:
    written = lifecycle(store)
    assert store.verify(expect=[written["last"]]) is None
    # The head moved elsewhere, so only the txhash the client kept can tell.
    outside = store.path.with_name("elsewhere.head")
    store.head_file.rename(outside)
    _edit("DELETE FROM ledger WHERE seq = (SELECT MAX(seq) FROM ledger)")(store.path)
    problem = store.verify(expect=[written["last"]], check_head=False)
    assert problem is not None and written["last"] in str(problem)
    moved = Store(store.path, head=outside, read_only=True)
    try:
        found = moved.verify()
        assert found is not None and "its end" in str(found)
    finally:
        moved.close()


def test_a_lost_head_file_is_refused_until_the_ledger_is_anchored_again(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    lifecycle(store)
    store.close()
    store.head_file.unlink()
    with pytest.raises(LedgerHeadError, match="--anchor-head"):
        Store(store.path)
    verify = ["api-bridge", "verify", "--db", str(store.path)]
    assert cli.main(verify) == cli_base.EXIT_FAILED
    assert "no head file" in capsys.readouterr().err
    assert cli.main([*verify, "--anchor-head"]) == cli_base.EXIT_OK
    assert "head anchored at 6:" in capsys.readouterr().out
    assert cli.main(verify) == cli_base.EXIT_OK
    Store(store.path).close()


def test_a_crash_between_a_commit_and_its_head_is_accepted(store: Store) -> None:
    """The head is written after the commit: a power cut in between leaves a ledger one
    record longer than its head, which is whole."""
    lifecycle(store)
    before = store.head_file.read_bytes()
    store.register("alice", "D", "", now=NOW)
    store.close()
    store.head_file.write_bytes(before)
    reopened = Store(store.path)
    try:
        assert reopened.verify() is None
        assert read_head(reopened.head_file) == reopened.head()
        assert reopened.head().seq == 7
    finally:
        reopened.close()


def test_a_failed_write_moves_no_head(store: Store) -> None:
    lifecycle(store)
    before = store.head_file.read_bytes()
    with pytest.raises(NotFoundError):
        store.create_lct("alice", "COMP-alice-0", "COMP-alice-1", now=NOW)
    assert store.head_file.read_bytes() == before


def test_verify_writes_nothing(store: Store) -> None:
    lifecycle(store)
    store.close()
    files = sorted(store.path.parent.iterdir())
    contents = {f: f.read_bytes() for f in files}
    assert cli.main(["api-bridge", "verify", "--db", str(store.path)]) == cli_base.EXIT_OK
    assert {f: f.read_bytes() for f in files} == contents


def test_a_database_from_an_earlier_modbatt_is_adopted(store: Store) -> None:
    """Before issue 15 the ledger held no idempotency keys and no head was kept."""
    lifecycle(store)
    store.close()
    with sqlite3.connect(store.path) as db:
        for seq, body in db.execute("SELECT seq, body FROM ledger").fetchall():
            old = json.loads(body)
            old.pop("idempotency", None)
            db.execute("UPDATE ledger SET body = ? WHERE seq = ?", (canonical(old), seq))
        rechain(db)
        db.execute("PRAGMA user_version = 0")
    store.head_file.unlink()
    old = Store(store.path, read_only=True)
    try:
        problem = old.verify()
        assert problem is not None and "earlier modbatt" in str(problem)
    finally:
        old.close()
    adopted = Store(store.path)
    try:
        assert adopted.verify() is None
        assert adopted.head().seq == 7  # one idempotency.adopt record
        again = adopted.create_lct(
            "alice", "COMP-alice-1764331200", "COMP-alice-1764331201", idempotency=("k1", "r1")
        )
        assert (
            again["lct_id"]
            == json.loads(
                adopted._db.execute("SELECT body FROM ledger WHERE seq = 3").fetchone()[0]
            )["lct_id"]
        )
    finally:
        adopted.close()


def rechain(db: sqlite3.Connection) -> None:
    """Recompute every txhash (and the state rows' copies) after an edit, as an earlier
    modbatt would have written them."""
    prev = GENESIS
    for seq, kind, body, old_hash in db.execute(
        "SELECT seq, kind, body, txhash FROM ledger ORDER BY seq"
    ).fetchall():
        txhash = chain_hash(prev, kind, body)
        db.execute("UPDATE ledger SET prev = ?, txhash = ? WHERE seq = ?", (prev, txhash, seq))
        for table in ("components", "lcts"):
            db.execute(
                f"UPDATE {table} SET txhash = ? WHERE txhash = ?",
                (txhash, old_hash),
            )
        prev = txhash
