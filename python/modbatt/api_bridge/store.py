"""Persistent state of the embedded API-Bridge: SQLite in WAL mode, one transaction per write.

Tables hold the current state (components, LCTs with their key halves); the ``ledger`` table
holds every change, hash-chained (see :mod:`modbatt.api_bridge.ledger`). A write changes the
state and appends its ledger record in the same transaction, with ``synchronous=FULL``, so an
acknowledged write survives a crash or power cut and a failed one leaves nothing behind.
After each commit, before the write is acknowledged, the ledger's head is written to a file
outside the database (``<db>.head`` unless the operator puts it elsewhere), so a ledger cut
short or rolled back is found too. The database file is created with mode 0600: it holds key
halves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modbatt.api_bridge.ledger import (
    EMPTY,
    GENESIS,
    Head,
    LedgerHeadError,
    canonical,
    chain_hash,
    head_path,
    idempotency_commitment,
    keys_commitment,
    read_head,
    write_head,
)
from modbatt.state import stores

log = logging.getLogger("modbatt.api_bridge.store")

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of a database whose idempotency keys are in the ledger and whose
head is kept outside it; version 0 is an earlier modbatt's (adopted on first open)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS components (
    component_id   TEXT PRIMARY KEY,
    creator        TEXT NOT NULL,
    component_data TEXT NOT NULL,
    context        TEXT NOT NULL,
    status         TEXT NOT NULL,
    lct_id         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    seconds        INTEGER NOT NULL,
    txhash         TEXT NOT NULL,
    UNIQUE (creator, component_data)
);
CREATE TABLE IF NOT EXISTS lcts (
    lct_id                      TEXT PRIMARY KEY,
    creator                     TEXT NOT NULL,
    component_a                 TEXT NOT NULL,
    component_b                 TEXT NOT NULL,
    context                     TEXT NOT NULL,
    proxy_id                    TEXT NOT NULL,
    status                      TEXT NOT NULL,
    created_at                  TEXT NOT NULL,
    updated_at                  TEXT NOT NULL,
    txhash                      TEXT NOT NULL,
    replaces                    TEXT,
    replaced_by                 TEXT,
    device_key_half             TEXT NOT NULL,
    lct_key_half                TEXT NOT NULL,
    component_b_device_key_half TEXT NOT NULL,
    component_b_lct_key_half    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key            TEXT PRIMARY KEY,
    creator        TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    lct_id         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    seq    INTEGER PRIMARY KEY,
    kind   TEXT NOT NULL,
    body   TEXT NOT NULL,
    prev   TEXT NOT NULL,
    txhash TEXT NOT NULL
);
"""

COMPONENT_FIELDS = (
    "component_id",
    "creator",
    "component_data",
    "context",
    "status",
    "lct_id",
    "created_at",
    "seconds",
)
LCT_FIELDS = (
    "lct_id",
    "creator",
    "component_a",
    "component_b",
    "context",
    "proxy_id",
    "status",
    "created_at",
    "updated_at",
    "replaces",
    "replaced_by",
)
KEY_FIELDS = (
    "device_key_half",
    "lct_key_half",
    "component_b_device_key_half",
    "component_b_lct_key_half",
)


class DatabaseUnusableError(stores.StoreError):
    """SQLite cannot read and write the database where it is (found at start-up)."""


class StoreError(Exception):
    """A request the state does not allow; `status` is the HTTP status it maps to."""

    status = 400


class NotFoundError(StoreError):
    """An id that does not exist."""

    status = 404


class ForbiddenError(StoreError):
    """A creator acting on something that is not theirs."""

    status = 403


class ConflictError(StoreError):
    """A change the current state forbids (a revoked LCT, a reused idempotency key...)."""

    status = 409


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Problem:
    """The first thing `Store.verify` found wrong, naming the record."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class Store:
    """The embedded API-Bridge's database. Thread-safe: one connection behind a lock."""

    def __init__(self, path: Path, head: Path | None = None, read_only: bool = False) -> None:
        """Open (or create) the database at `path`, its ledger head kept in `head`.

        Opening for writing checks that the ledger reaches its head and refuses a database
        that does not (`LedgerHeadError`). `read_only` opens an existing database without
        writing a byte, as ``verify`` does.
        """
        path = Path(path)
        self.path = path
        self.head_file = Path(head) if head is not None else head_path(path)
        self._lock = threading.Lock()
        self._new_head: Head | None = None
        if read_only:
            self._open_read_only()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Create it 0600 before SQLite writes a byte: it will hold key halves.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._probe()
        except sqlite3.Error as exc:
            # Found now, not as "disk I/O error" on a client's first write: WAL needs shared
            # memory (the -shm file mapped) that network and 9p filesystems often refuse.
            raise DatabaseUnusableError(
                f"{path}: SQLite cannot use this database here ({exc}). WAL mode needs a "
                "filesystem with working shared memory and locks: put --db on a local disk "
                "(network, 9p and some container mounts do not serve it)"
            ) from exc
        self._check_head_at_start()

    def _open_read_only(self) -> None:
        try:
            self._db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            raise DatabaseUnusableError(f"{self.path}: SQLite cannot read it ({exc})") from exc
        if not {"components", "lcts", "idempotency", "ledger"} <= tables:
            self._db.close()
            raise DatabaseUnusableError(f"{self.path}: not an API-Bridge database")

    def _probe(self) -> None:
        """Write and commit once, as every client write will.

        The WAL, its shared-memory index and the locks all take part.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("CREATE TABLE IF NOT EXISTS startup_probe (opened_at TEXT)")
            self._db.execute("DELETE FROM startup_probe")
            self._db.execute("INSERT INTO startup_probe VALUES (?)", (iso(utc_now()),))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _check_head_at_start(self) -> None:
        """Refuse a ledger that does not reach its head; adopt an earlier modbatt's database.

        A ledger *longer* than its head is accepted and the head moved on: a crash between a
        write's commit and its head update leaves exactly that.
        """
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        last = self.head()
        if version < SCHEMA_VERSION:
            self._adopt(last)
            return
        kept = read_head(self.head_file)
        if kept is None:
            if last != EMPTY:
                raise LedgerHeadError(
                    f"{self.path}: its ledger has {last.seq} records but its head file "
                    f"{self.head_file} is missing, so records removed from its end could not "
                    "be found. Restore the head file (or pass --head where it is kept); to "
                    "trust the ledger as it is now, run 'modbatt api-bridge verify --db "
                    f"{self.path} --anchor-head'"
                )
            write_head(self.head_file, last)
            return
        problem = _reaches(self._db, kept)
        if problem is not None:
            raise LedgerHeadError(
                f"{self.path}: {problem}. Not serving from a ledger cut short or rolled back: "
                "restore the database from where it was, or run 'modbatt api-bridge verify' "
                "to see what is wrong"
            )
        if last != kept:
            write_head(self.head_file, last)

    def _adopt(self, last: Head) -> None:
        """Bring a database from before head files and hashed idempotency keys into the ledger.

        Its idempotency keys go into one ledger record, and the head is taken as it is now
        (said in the log: records before it were not anchored).
        """
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM idempotency ORDER BY key").fetchall()
            if rows:
                entries = [
                    {
                        "key_sha256": idempotency_commitment(r["key"]),
                        "creator": r["creator"],
                        "request_sha256": r["request_sha256"],
                        "lct_id": r["lct_id"],
                    }
                    for r in rows
                ]
                self._append(db, "idempotency.adopt", {"entries": entries})
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if last != EMPTY or rows:
            log.warning(
                "%s: a database from an earlier modbatt; its ledger is anchored from record "
                "%d on (head kept in %s)",
                self.path,
                self.head().seq,
                self.head_file,
            )
        write_head(self.head_file, self.head())

    def head(self) -> Head:
        """The ledger's last record as it is in the database."""
        last = self._db.execute(
            "SELECT seq, txhash FROM ledger ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return EMPTY if last is None else Head(last["seq"], last["txhash"])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                self._new_head = None
                raise
            self._db.execute("COMMIT")
            # The head moves on after the commit, never before it: a crash in between leaves
            # a ledger one record longer than its head, which start-up accepts.
            new_head, self._new_head = self._new_head, None
            if new_head is not None:
                write_head(self.head_file, new_head)

    def _append(self, db: sqlite3.Connection, kind: str, body: dict[str, Any]) -> str:
        last = db.execute("SELECT txhash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        prev = last["txhash"] if last else GENESIS
        text = canonical(body)
        txhash = chain_hash(prev, kind, text)
        cursor = db.execute(
            "INSERT INTO ledger (kind, body, prev, txhash) VALUES (?, ?, ?, ?)",
            (kind, text, prev, txhash),
        )
        assert cursor.lastrowid is not None
        self._new_head = Head(cursor.lastrowid, txhash)
        return txhash

    # --- reads -------------------------------------------------------------------------

    def component(self, component_id: str) -> dict[str, Any]:
        """A component's record."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM components WHERE component_id = ?", (component_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"unknown component {component_id!r}")
        return dict(row)

    def lct(self, lct_id: str) -> dict[str, Any]:
        """An LCT's record, key halves included (the server decides what to show)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM lcts WHERE lct_id = ?", (lct_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown LCT {lct_id!r}")
        return dict(row)

    def lct_keys(self, lct_id: str, creator: str) -> dict[str, Any]:
        """An active LCT's record with its key halves, for its creator only (key recovery)."""
        with self._lock:
            return _deliverable(self._db, lct_id, creator)

    # --- writes ------------------------------------------------------------------------

    def register(
        self, creator: str, component_data: str, context: str, now: datetime | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Register a component; idempotent on (creator, component_data).

        Returns the record and whether it was already registered. The id is
        ``COMP-<creator>-<unix seconds>``, moved to a later second when the creator already
        has a component registered at that second, so ids stay unique and in that format.
        """
        moment = now or utc_now()
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM components WHERE creator = ? AND component_data = ?",
                (creator, component_data),
            ).fetchone()
            if row is not None:
                return dict(row), True
            latest = db.execute(
                "SELECT MAX(seconds) FROM components WHERE creator = ?", (creator,)
            ).fetchone()[0]
            seconds = int(moment.timestamp())
            if latest is not None and latest >= seconds:
                seconds = latest + 1
            component_id = f"COMP-{creator}-{seconds}"
            record = {
                "component_id": component_id,
                "creator": creator,
                "component_data": component_data,
                "context": context,
                "status": "registered",
                "lct_id": f"lct_{component_id}",
                "created_at": iso(moment),
                "seconds": seconds,
            }
            txhash = self._append(db, "component.register", record)
            columns = (*COMPONENT_FIELDS, "txhash")
            db.execute(
                f"INSERT INTO components ({', '.join(columns)})"  # noqa: S608 (constant names)
                f" VALUES ({', '.join('?' * len(columns))})",
                (*(record[f] for f in COMPONENT_FIELDS), txhash),
            )
            return {**record, "txhash": txhash}, False

    def verify_component(
        self, component_id: str, verifier: str, context: str, now: datetime | None = None
    ) -> dict[str, Any]:
        """Record that `verifier` checked a component; returns the verification."""
        moment = now or utc_now()
        with self._transaction() as db:
            row = db.execute(
                "SELECT status FROM components WHERE component_id = ?", (component_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"unknown component {component_id!r}")
            body = {
                "component_id": component_id,
                "verifier": verifier,
                "verified": row["status"] == "registered",
                "status": row["status"],
                "context": context,
                "verified_at": iso(moment),
            }
            txhash = self._append(db, "component.verify", body)
        return {**body, "txhash": txhash}

    def create_lct(
        self,
        creator: str,
        component_a: str,
        component_b: str,
        context: str = "",
        proxy_id: str = "",
        replaces: str | None = None,
        idempotency: tuple[str, str] | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Create an LCT with four fresh 64-byte key halves (CSPRNG).

        `idempotency` is (Idempotency-Key, SHA-256 of the request): the same key with the same
        request returns the LCT it created the first time; with another request, a conflict.
        Creating the replacement of an LCT that already has one returns that replacement.
        """
        if component_a == component_b:
            raise ConflictError("component_a and component_b must be two different components")
        moment = now or utc_now()
        with self._transaction() as db:
            if idempotency is not None:
                seen = db.execute(
                    "SELECT * FROM idempotency WHERE key = ?", (idempotency[0],)
                ).fetchone()
                if seen is not None:
                    if (seen["creator"], seen["request_sha256"]) != (creator, idempotency[1]):
                        raise ConflictError("Idempotency-Key was used for a different request")
                    return _deliverable(db, seen["lct_id"])
            for component_id in (component_a, component_b):
                if (
                    db.execute(
                        "SELECT 1 FROM components WHERE component_id = ?", (component_id,)
                    ).fetchone()
                    is None
                ):
                    raise NotFoundError(f"unknown component {component_id!r}")
            if replaces is not None:
                old = db.execute("SELECT * FROM lcts WHERE lct_id = ?", (replaces,)).fetchone()
                if old is None:
                    raise NotFoundError(f"unknown LCT {replaces!r}")
                if old["creator"] != creator:
                    raise ForbiddenError(f"LCT {replaces!r} belongs to another creator")
                if {old["component_a"], old["component_b"]} != {component_a, component_b}:
                    raise ConflictError(f"LCT {replaces!r} joins other components")
                if old["replaced_by"] is not None:
                    return _deliverable(db, old["replaced_by"])
                if old["status"] != "revoked":
                    raise ConflictError(f"LCT {replaces!r} must be revoked before it is replaced")
            lct_id = f"lct_{secrets.token_hex(16)}"
            halves = {field: secrets.token_bytes(64).hex() for field in KEY_FIELDS}
            record = {
                "lct_id": lct_id,
                "creator": creator,
                "component_a": component_a,
                "component_b": component_b,
                "context": context,
                "proxy_id": proxy_id,
                "status": "active",
                "created_at": iso(moment),
                "updated_at": iso(moment),
                "replaces": replaces,
                "replaced_by": None,
            }
            body = {
                **record,
                "keys_sha256": keys_commitment(*(halves[f] for f in KEY_FIELDS)),
                # The key decides what a replay hands out, so the ledger covers it too.
                "idempotency": None
                if idempotency is None
                else {
                    "key_sha256": idempotency_commitment(idempotency[0]),
                    "request_sha256": idempotency[1],
                },
            }
            txhash = self._append(db, "lct.create", body)
            columns = (*LCT_FIELDS, "txhash", *KEY_FIELDS)
            db.execute(
                f"INSERT INTO lcts ({', '.join(columns)})"  # noqa: S608 (constant names)
                f" VALUES ({', '.join('?' * len(columns))})",
                (*(record[f] for f in LCT_FIELDS), txhash, *(halves[f] for f in KEY_FIELDS)),
            )
            if replaces is not None:
                db.execute("UPDATE lcts SET replaced_by = ? WHERE lct_id = ?", (lct_id, replaces))
            if idempotency is not None:
                db.execute(
                    "INSERT INTO idempotency (key, creator, request_sha256, lct_id)"
                    " VALUES (?, ?, ?, ?)",
                    (idempotency[0], creator, idempotency[1], lct_id),
                )
            return {**record, "txhash": txhash, **halves}

    def set_lct_status(
        self,
        lct_id: str,
        creator: str,
        status: str,
        context: str = "",
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Change an LCT's status; only its creator may, and revoked is final."""
        moment = now or utc_now()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM lcts WHERE lct_id = ?", (lct_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown LCT {lct_id!r}")
            if row["creator"] != creator:
                raise ForbiddenError(f"LCT {lct_id!r} belongs to another creator")
            if row["status"] == "revoked" and status != "revoked":
                raise ConflictError(f"LCT {lct_id!r} is revoked; create its replacement instead")
            body = {
                "lct_id": lct_id,
                "status": status,
                "previous_status": row["status"],
                "by": creator,
                "context": context,
                "updated_at": iso(moment),
            }
            txhash = self._append(db, "lct.status", body)
            db.execute(
                "UPDATE lcts SET status = ?, updated_at = ?, txhash = ? WHERE lct_id = ?",
                (status, body["updated_at"], txhash, lct_id),
            )
        return {**body, "txhash": txhash}

    # --- integrity ---------------------------------------------------------------------

    def verify(self, expect: Sequence[str] = (), check_head: bool = True) -> Problem | None:
        """Check the hash chain, the state against the ledger's replay, and the ledger's length.

        The ledger must reach the head kept in `head_file` (unless not `check_head`) and
        contain every txhash in `expect` (ones that writes returned, or heads recorded
        elsewhere). Returns the first problem found, or None when the database is intact.
        """
        # The head file first: it is written after each commit, so the database read next is
        # at least as new as it even while a server is writing.
        kept = read_head(self.head_file) if check_head else EMPTY
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot for every table
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                ledger = self._db.execute("SELECT * FROM ledger ORDER BY seq").fetchall()
                components = {
                    r["component_id"]: dict(r) for r in self._db.execute("SELECT * FROM components")
                }
                lcts = {r["lct_id"]: dict(r) for r in self._db.execute("SELECT * FROM lcts")}
                keys = {
                    idempotency_commitment(r["key"]): dict(r)
                    for r in self._db.execute("SELECT * FROM idempotency")
                }
                short = None if kept is None else _reaches(self._db, kept)
            finally:
                self._db.execute("COMMIT")
        if version < SCHEMA_VERSION and ledger:
            return Problem(
                "database",
                "made by an earlier modbatt, before its ledger covered idempotency keys and "
                "had a head: run 'modbatt api-bridge serve' on it once to bring it in",
            )
        return (
            _check_chain(ledger)
            or _check_state(ledger, components, lcts, keys)
            or _check_length(ledger, kept, short, self.head_file, expect)
        )

    def anchor_head(self) -> Head:
        """Take the ledger's end as it is now for its head (after `verify` found it intact)."""
        with self._lock:
            head = self.head()
        write_head(self.head_file, head)
        return head


def _deliverable(db: sqlite3.Connection, lct_id: str, creator: str | None = None) -> dict[str, Any]:
    """An LCT with its key halves, for a route that hands them out: the one rule for all.

    Only while it is active (no route hands out a suspended or revoked LCT's halves), and,
    with `creator`, only to its creator.
    """
    row = db.execute("SELECT * FROM lcts WHERE lct_id = ?", (lct_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"unknown LCT {lct_id!r}")
    if creator is not None and row["creator"] != creator:
        raise ForbiddenError(f"LCT {lct_id!r} belongs to another creator")
    if row["status"] != "active":
        raise ConflictError(f"LCT {lct_id!r} is {row['status']}: its keys are not delivered")
    return dict(row)


def _reaches(db: sqlite3.Connection, kept: Head) -> str | None:
    """Why the ledger in `db` does not reach `kept`, or None when it does."""
    if kept == EMPTY:
        return None
    row = db.execute("SELECT txhash FROM ledger WHERE seq = ?", (kept.seq,)).fetchone()
    if row is None:
        last = db.execute("SELECT MAX(seq) FROM ledger").fetchone()[0] or 0
        return (
            f"the ledger ends at record {last} but its head is record {kept.seq}: "
            "records were removed from its end"
        )
    if row["txhash"] != kept.txhash:
        return (
            f"ledger record {kept.seq} is not the one its head names: the ledger was rolled "
            "back or rewritten from there"
        )
    return None


def _check_length(
    ledger: list[sqlite3.Row],
    kept: Head | None,
    short: str | None,
    head_file: Path,
    expect: Sequence[str],
) -> Problem | None:
    """Whether the ledger is as long as it was: it reaches its head and every expected txhash."""
    if kept is None and ledger:
        return Problem(
            "ledger head",
            f"no head file at {head_file}: records removed from the ledger's end could not "
            "be found (pass --head where it is kept, or --anchor-head to trust the ledger "
            "as it is now)",
        )
    if short is not None:
        return Problem("ledger head", f"{short} (head kept in {head_file})")
    present = {record["txhash"] for record in ledger}
    for txhash in expect:
        if txhash not in present:
            return Problem(
                f"txhash {txhash}",
                "is not in the ledger: the write that returned it was removed or rolled back",
            )
    return None


def _check_chain(ledger: list[sqlite3.Row]) -> Problem | None:
    prev = GENESIS
    for number, record in enumerate(ledger, 1):
        where = f"ledger record {record['seq']} ({record['kind']})"
        if record["seq"] != number:
            return Problem(where, f"expected record number {number}: a record was removed")
        if record["prev"] != prev:
            return Problem(where, "does not follow the previous record")
        if chain_hash(prev, record["kind"], record["body"]) != record["txhash"]:
            return Problem(where, "its txhash does not match its contents")
        prev = record["txhash"]
    return None


def _replay(
    ledger: list[sqlite3.Row],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The state the ledger describes.

    Components, LCTs (with their key commitment) and idempotency keys (by their SHA-256).
    """
    components: dict[str, dict[str, Any]] = {}
    lcts: dict[str, dict[str, Any]] = {}
    keys: dict[str, dict[str, Any]] = {}
    for record in ledger:
        body = json.loads(record["body"])
        if record["kind"] == "component.register":
            components[body["component_id"]] = {**body, "txhash": record["txhash"]}
        elif record["kind"] == "lct.create":
            idempotency = body.pop("idempotency", None)
            lcts[body["lct_id"]] = {**body, "txhash": record["txhash"]}
            if body["replaces"] in lcts:
                lcts[body["replaces"]]["replaced_by"] = body["lct_id"]
            if idempotency is not None:
                keys[idempotency["key_sha256"]] = {
                    "creator": body["creator"],
                    "request_sha256": idempotency["request_sha256"],
                    "lct_id": body["lct_id"],
                }
        elif record["kind"] == "lct.status" and body["lct_id"] in lcts:
            lcts[body["lct_id"]].update(
                status=body["status"], updated_at=body["updated_at"], txhash=record["txhash"]
            )
        elif record["kind"] == "idempotency.adopt":
            for entry in body["entries"]:
                keys[entry.pop("key_sha256")] = entry
    return components, lcts, keys


def _check_state(
    ledger: list[sqlite3.Row],
    components: dict[str, dict[str, Any]],
    lcts: dict[str, dict[str, Any]],
    keys: dict[str, dict[str, Any]],
) -> Problem | None:
    want_components, want_lcts, want_keys = _replay(ledger)
    for kind, have, want in (
        ("component", components, want_components),
        ("LCT", lcts, want_lcts),
        ("idempotency key with SHA-256", keys, want_keys),
    ):
        for key in sorted(set(have) | set(want)):
            where = f"{kind} {key!r}"
            if key not in want:
                return Problem(where, "is in the database but not in the ledger")
            if key not in have:
                return Problem(where, "is in the ledger but missing from the database")
            row, expected = dict(have[key]), dict(want[key])
            if kind == "LCT":
                commitment = keys_commitment(*(row.pop(f) for f in KEY_FIELDS))
                if commitment != expected.pop("keys_sha256"):
                    return Problem(
                        where, "its key halves differ from the ones the ledger committed to"
                    )
            for field, value in expected.items():
                if row.get(field) != value:
                    return Problem(where, f"field {field!r} differs from the ledger")
    return None
