"""Durable local state: atomic files, the two-slot flash store, and the hash-chained audit log.

Used by every role: the app's keystore, the pack controller's flash key store and each
module's flash store are :class:`TwoSlotStore` files; every key operation is written to an
:class:`AuditLog`.

**Atomic writes** (:func:`atomic_write`): write a temporary file in the same directory (mode
0600), fsync it, rename it over the target, fsync the directory. A reader sees the old file or
the new one, never a mixture.

**Two slots** (:class:`TwoSlotStore`): ``NAME.slot0`` and ``NAME.slot1``, each one record::

    magic "MODBATT1" (8) ‖ sequence number (8, BE) ‖ payload length (4, BE) ‖ payload (JSON)
    ‖ SHA-256 over everything before it (32)

A write goes to the slot that does not hold the newest good record, with the next sequence
number, atomically; so a power cut at any point of a write leaves the last good record
intact in the other slot. Loading verifies both slots and returns the newest good one; a slot
that exists but does not verify is reported (``damaged``); when slots exist and none
verifies, :class:`StoreCorruptError` is raised and the caller runs key recovery (Workflow C).

The checksum detects corruption and edits by anyone without a way to rewrite it consistently;
it is no defence against someone who can rewrite the whole file (who can equally replace the
software). On pack hardware, the flash would sit behind the MCU's secure storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modbatt.errors import ModbattError

MAGIC = b"MODBATT1"
HEADER = struct.Struct(">8sQI")
DIGEST_LEN = 32
MAX_PAYLOAD = 1 << 20


class StoreError(ModbattError):
    """A store could not be read or written."""


class StoreCorruptError(StoreError, ValueError):
    """A store exists but no copy of it verifies: its keys are lost (run key recovery)."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: temporary file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def encode_record(sequence: int, payload: Mapping[str, Any]) -> bytes:
    """One slot's bytes: header, JSON payload and its SHA-256."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    head = HEADER.pack(MAGIC, sequence, len(body)) + body
    return head + hashlib.sha256(head).digest()


def decode_record(data: bytes) -> tuple[int, dict[str, Any]]:
    """(sequence, payload) of a slot's bytes; ValueError says what is wrong."""
    if len(data) < HEADER.size + DIGEST_LEN:
        raise ValueError(f"too short ({len(data)} bytes)")
    magic, sequence, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a modbatt store record (bad magic)")
    if length > MAX_PAYLOAD or len(data) != HEADER.size + length + DIGEST_LEN:
        raise ValueError(f"length field {length} does not match the file size {len(data)}")
    head, digest = data[:-DIGEST_LEN], data[-DIGEST_LEN:]
    if hashlib.sha256(head).digest() != digest:
        raise ValueError("checksum mismatch")
    try:
        payload = json.loads(head[HEADER.size :])
    except UnicodeDecodeError:
        raise ValueError("payload is not UTF-8 text") from None
    except RecursionError:
        raise ValueError("payload is nested too deeply") from None
    if not isinstance(payload, dict):
        raise ValueError("payload is not a JSON object")
    return sequence, payload


@dataclass(frozen=True)
class Loaded:
    """What `TwoSlotStore.load` found: the newest good payload and any damaged slots."""

    payload: dict[str, Any] | None
    sequence: int
    damaged: tuple[str, ...] = ()


class TwoSlotStore:
    """A record kept in two slot files, so that a failed write never loses the last good one."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = name
        self.slots = (self.directory / f"{name}.slot0", self.directory / f"{name}.slot1")

    def _read(self) -> tuple[list[tuple[int, int, dict[str, Any]]], list[str]]:
        good: list[tuple[int, int, dict[str, Any]]] = []
        damaged: list[str] = []
        for index, slot in enumerate(self.slots):
            try:
                data = slot.read_bytes()
            except FileNotFoundError:
                continue
            try:
                sequence, payload = decode_record(data)
            except ValueError as exc:
                damaged.append(f"{slot.name}: {exc}")
                continue
            good.append((sequence, index, payload))
        return good, damaged

    def load(self) -> Loaded:
        """The newest good record; nothing stored yet gives a None payload."""
        good, damaged = self._read()
        if not good:
            if damaged:
                raise StoreCorruptError(
                    f"{self.name}: no slot verifies (" + "; ".join(damaged) + ")"
                )
            return Loaded(None, 0)
        sequence, _index, payload = max(good)
        return Loaded(payload, sequence, tuple(damaged))

    def save(self, payload: Mapping[str, Any]) -> int:
        """Write a new record into the older slot; returns its sequence number."""
        good, _damaged = self._read()
        if good:
            newest_sequence, newest_index, _ = max(good)
            target = self.slots[1 - newest_index]
            sequence = newest_sequence + 1
        else:
            target, sequence = self.slots[0], 1
        data = encode_record(sequence, payload)
        atomic_write(target, data)
        # Read back what is on the disk: a write that does not verify is an error now,
        # not a surprise at the next start-up.
        if decode_record(target.read_bytes()) != (sequence, json.loads(json.dumps(payload))):
            raise StoreError(f"{target}: the record written does not read back")
        return sequence

    def erase(self) -> None:
        """Remove both slots (a factory reset)."""
        for slot in self.slots:
            slot.unlink(missing_ok=True)
        if self.directory.exists():
            _fsync_dir(self.directory)


def fingerprint(secret: bytes) -> str:
    """The loggable name of a secret: 16 hex digits of a labelled SHA-256."""
    return hashlib.sha256(b"modbatt/v1 fingerprint" + secret).hexdigest()[:16]


AuditValue = str | int | float | bool | None


class AuditLog:
    """A JSON-lines log of key operations, each line hash-chained to the one before.

    Each line is ``{"seq", "time", "event", "fields", "prev", "hash"}`` where ``hash`` is the
    SHA-256 of the line without it. Values must be text, numbers, booleans or None: key bytes
    cannot be logged by accident (pass `fingerprint(key)`).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _last(self) -> tuple[int, str]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return 0, "0" * 64
        if not lines:
            return 0, "0" * 64
        last = json.loads(lines[-1])
        return int(last["seq"]), str(last["hash"])

    def record(self, event: str, **fields: AuditValue) -> dict[str, Any]:
        """Append one event."""
        for name, value in fields.items():
            if isinstance(value, (bytes, bytearray, memoryview)) or not isinstance(
                value, (str, int, float, bool, type(None))
            ):
                raise TypeError(
                    f"audit field {name!r}: log a fingerprint, not {type(value).__name__}"
                )
        sequence, prev = self._last()
        entry: dict[str, Any] = {
            "seq": sequence + 1,
            "time": round(time.time(), 3),
            "event": event,
            "fields": fields,
            "prev": prev,
        }
        entry["hash"] = _entry_hash(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return entry

    def verify(self) -> str | None:
        """None when the chain is intact, else the first bad line, named."""
        prev = "0" * 64
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return None
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                claimed = entry.pop("hash")
            except (ValueError, KeyError, AttributeError):
                return f"line {number}: not an audit record"
            if entry.get("seq") != number:
                return f"line {number}: sequence {entry.get('seq')} (a line was removed or moved)"
            if entry.get("prev") != prev:
                return f"line {number}: does not follow line {number - 1}"
            if _entry_hash(entry) != claimed:
                return f"line {number}: its hash does not match its contents"
            prev = claimed
        return None


def _entry_hash(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
