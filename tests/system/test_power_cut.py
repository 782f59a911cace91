"""Power loss at every write point of each role's store (issue 6).

The app's keystore, the pack controller's flash store and a module's flash store are
`TwoSlotStore` files. These tests cut the power at every OS call a save makes, truncate and
corrupt every slot file, SIGKILL a real process in the middle of its saves, and start each
role on a store that no longer verifies. Each time, a fresh store object (a restart) must load
the last good record or the new one, exactly, or report the damage (`StoreCorruptError`, and
the role's factory state / key recovery): never a different record.

Key bytes never reach the output: records are compared with `==` (their reprs hide every key
field, which `test_reprs_and_errors_never_show_key_bytes` checks), and messages name
generations and steps, not values.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modbatt import LinkKey
from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig
from modbatt.app.app import App, AppError
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.nodes import NodeLoop
from modbatt.bus.transport import CanPort
from modbatt.cli.commands import main as cli_main
from modbatt.module.pairing import PairingAgent, SecureModule
from modbatt.module.simulator import modules_for
from modbatt.pack.control import ControlHandlers
from modbatt.pack.keys import PackKeys, PackState
from modbatt.protocol.bootstrap import DELIVERY_LABEL, Ephemeral, delivery_keys, seal
from modbatt.protocol.control import APP_TO_PACK, PACK_TO_APP
from modbatt.protocol.handshake import Initiator
from modbatt.protocol.pairing import responder_id
from modbatt.state import stores as stores_module
from modbatt.state.keystores import (
    AppKeys,
    ModuleFlash,
    PackFlash,
    PairedModule,
    Record,
    TypedStore,
    app_keystore,
    module_flash,
    pack_flash,
)
from modbatt.state.stores import DIGEST_LEN, HEADER, AuditLog, StoreCorruptError, StoreError

ROOT = Path(__file__).parents[2]

# --- the records: realistic, deterministic per (role, generation) -----------------------------

KINDS = ("app", "pack", "module")
FACTORIES: dict[str, Callable[[Path], TypedStore[Any]]] = {
    "app": app_keystore,
    "pack": pack_flash,
    "module": module_flash,
}


def open_store(kind: str, directory: Path) -> TypedStore[Any]:
    """A new store object on `directory`: what a restarted role does."""
    return FACTORIES[kind](directory)


def make_record(kind: str, n: int) -> Record:
    """Generation `n` of a role's record: new key halves, ids and size each generation."""
    rng = random.Random(f"power-cut/{kind}/{n}")

    def half() -> str:
        return rng.randbytes(64).hex()

    def dh() -> str:
        return rng.randbytes(32).hex()

    if kind == "app":
        return AppKeys(
            host_id="host-6f1c2a0e-8d4b-4c1e-9a7d-3e2f1b0c9d8e",
            app_component_id=f"COMP-alice-{1753769000 + n}",
            app_device_key_half=half(),
            app_lct_key_half=half(),
            pack_component_id=f"COMP-alice-{1753769100 + n}",
            lct_id=f"lct_{n}",
            pack_device_key_half=half(),
            link_dh_secret=dh(),
            module_lcts={str(500 + m): f"lct_{n}_{m}" for m in range(n % 5)},
        )
    if kind == "pack":
        pack_id = f"COMP-alice-{1753769100 + n}"
        modules = {
            f"COMP-alice-{1753770000 + m}": PairedModule(
                module_component_id=f"COMP-alice-{1753770000 + m}",
                pack_device_key_half=half(),
                pack_lct_key_half=half(),
                module_device_key_half=half(),
                dh_secret=dh(),
                lct_id=f"lct_{n}_{m}",
                unique_id=500 + m,
            )
            for m in range(n % 4)
        }
        return PackFlash(
            pack_component_id=pack_id,
            pack_device_key_half=half(),
            pack_lct_key_half=half(),
            app_device_key_half=half(),
            configuration={"max_state": n % 4, "bridge_unpaired_modules": n % 2 == 0},
            modules=modules,
            app_component_id=f"COMP-alice-{1753769000 + n}",
            app_link_dh_secret=dh(),
            lct_id=f"lct_{n}",
        )
    return ModuleFlash(
        module_component_id=f"COMP-alice-{1753770000 + n}",
        module_device_key_half=half(),
        module_lct_key_half=half(),
        pack_device_key_half=half(),
        pack_component_id=f"COMP-alice-{1753769100 + n}",
        dh_secret=dh(),
    )


def record_or_none(kind: str, n: int) -> Record | None:
    """Generation `n`, or nothing stored (generation 0)."""
    return None if n == 0 else make_record(kind, n)


def secrets_of(record: Record) -> list[str]:
    """Every key half and X25519 secret in `record`, as stored (hex)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, str) and len(value) in (64, 128):
            found.append(value)

    walk(record.model_dump(mode="json"))
    return found


def assert_no_secret(text: str, *records: Record | None) -> None:
    """`text` holds no key half or secret of `records`, not even a 16-character piece."""
    for record in records:
        if record is None:
            continue
        for secret in secrets_of(record):
            for start in range(0, len(secret) - 15, 16):
                assert secret[start : start + 16] not in text, "key bytes in the output"


def read_dir(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def write_dir(directory: Path, files: dict[str, bytes]) -> None:
    """Make `directory` hold exactly `files` (the disk as a power cut left it)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        path.unlink()
    for name, data in files.items():
        (directory / name).write_bytes(data)


# --- the fault injector: the OS calls of `stores.atomic_write` -----------------------------------


class PowerCut(BaseException):
    """The power went: no `except Exception` may catch it, as none outlives a dying process."""


@dataclass
class Disk:
    """What the disk holds at the moment of a cut, and what the cut may still take away."""

    files: dict[str, bytes]
    unsynced: dict[str, bytes]  # file -> everything written to it but not yet fsynced
    renames: list[tuple[str, str, bytes | None]]  # (from, to, old `to`) not yet made durable


@dataclass
class Faults:
    """Counts the OS calls of a save; at call number `cut_at` the power goes (or, with
    `error`, the call fails with EIO and the process lives on)."""

    directory: Path
    cut_at: int | None = None
    error: bool = False
    steps: list[tuple[str, str]] = field(default_factory=list)  # (call, file)
    disk: Disk | None = None
    fds: dict[int, str] = field(default_factory=dict)
    directories: set[int] = field(default_factory=set)
    unsynced: dict[str, bytes] = field(default_factory=dict)
    renames: list[tuple[str, str, bytes | None]] = field(default_factory=list)

    def step(self, call: str, name: str) -> None:
        index = len(self.steps)
        self.steps.append((call, name))
        if index != self.cut_at:
            return
        if self.error:
            raise OSError(errno.EIO, f"injected I/O error at {call}({name})")
        self.disk = Disk(read_dir(self.directory), dict(self.unsynced), list(self.renames))
        raise PowerCut(f"{call}({name})")


class FaultyFile:
    """The file object `os.fdopen` returns, with its write, flush and close counted."""

    def __init__(self, real: Any, faults: Faults, name: str) -> None:
        self._real, self._faults, self._name = real, faults, name

    def write(self, data: bytes) -> int:
        self._faults.step("write", self._name)
        written = int(self._real.write(data))
        self._faults.unsynced[self._name] = self._faults.unsynced.get(self._name, b"") + data
        return written

    def flush(self) -> None:
        self._faults.step("flush", self._name)
        self._real.flush()

    def fileno(self) -> int:
        return int(self._real.fileno())

    def __enter__(self) -> FaultyFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._faults.step("close", self._name)
        finally:
            self._real.close()


class FaultyOS:
    """Stands in for `os` inside `modbatt.state.stores`: every call that writes is a fault point.

    fsync is counted but not done: what it would make durable is modelled by `Disk` (and
    skipping it keeps hundreds of cut saves fast).
    """

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        name = Path(path).name
        self._faults.step("open", name)
        fd = os.open(path, flags, mode)
        self._faults.fds[fd] = name
        if Path(path).is_dir():
            self._faults.directories.add(fd)
        elif flags & os.O_TRUNC:
            self._faults.unsynced[name] = b""
        return fd

    def fdopen(self, fd: int, *args: Any, **kwargs: Any) -> FaultyFile:
        return FaultyFile(os.fdopen(fd, *args, **kwargs), self._faults, self._faults.fds[fd])

    def fsync(self, fd: int) -> None:
        name = self._faults.fds.get(fd, "?")
        self._faults.step("fsync", name)
        if fd in self._faults.directories:
            self._faults.renames.clear()  # the renames in it are durable now
        else:
            self._faults.unsynced.pop(name, None)

    def chmod(self, path: Any, mode: int) -> None:
        self._faults.step("chmod", Path(path).name)
        os.chmod(path, mode)

    def replace(self, source: Any, target: Any) -> None:
        src, dst = Path(source), Path(target)
        self._faults.step("replace", f"{src.name}->{dst.name}")
        before = dst.read_bytes() if dst.exists() else None
        os.replace(source, target)
        self._faults.renames.append((src.name, dst.name, before))
        if src.name in self._faults.unsynced:
            self._faults.unsynced[dst.name] = self._faults.unsynced.pop(src.name)

    def close(self, fd: int) -> None:
        try:
            self._faults.step("close", self._faults.fds.get(fd, "?"))
        finally:
            os.close(fd)
            self._faults.directories.discard(fd)


@contextlib.contextmanager
def faulty_os(faults: Faults) -> Iterator[Faults]:
    """`modbatt.state.stores` calls the OS through `faults` for the duration."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stores_module, "os", FaultyOS(faults))
        yield faults


def power_cut_outcomes(disk: Disk) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Every state a power cut at this moment may leave on the disk (ext4-like semantics).

    The files as they were; each file written but not yet fsynced holding any prefix of what
    was written to it (a spread of lengths around the header and the digest), or its tail
    as zeros; and renames not yet made durable by the directory's fsync undone.
    """
    yield "the files as they were", disk.files
    for name, intended in disk.unsynced.items():
        if name not in disk.files:
            continue
        size = len(intended)
        lengths = {0, 1, HEADER.size - 1, HEADER.size, size // 2, size - DIGEST_LEN, size - 1}
        for length in sorted(n for n in lengths if 0 <= n <= size):
            yield (
                f"{name} holding {length} of its {size} bytes",
                {
                    **disk.files,
                    name: intended[:length],
                },
            )
        zeros = intended[: size // 2] + bytes(size - size // 2)
        yield f"{name} with its second half zeros", {**disk.files, name: zeros}
    if disk.renames:
        files = dict(disk.files)
        for source, target, before in reversed(disk.renames):
            files[source] = files.pop(target)
            if before is not None:
                files[target] = before
        yield "the rename lost (the directory was not yet fsynced)", files


def prepared(kind: str, earlier: int, directory: Path) -> dict[str, bytes]:
    """The store after `earlier` complete saves (generations 1..earlier), as files."""
    directory.mkdir(parents=True, exist_ok=True)
    with faulty_os(Faults(directory)):
        store = open_store(kind, directory)
        for n in range(1, earlier + 1):
            store.save(make_record(kind, n))
    return read_dir(directory)


def load_fresh(kind: str, directory: Path, where: str) -> Record | None:
    """What a restarted role loads; a store error fails the test, saying where."""
    try:
        loaded: Record | None = open_store(kind, directory).load()
    except StoreError as exc:
        pytest.fail(f"{where}: the store did not load: {exc}")
    return loaded


# --- 1. a power cut, or an I/O error, at every write point of a save -----------------------------


@pytest.mark.parametrize("earlier", [0, 1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_a_power_cut_at_every_write_point_keeps_the_previous_or_the_new_record(
    kind: str, earlier: int, tmp_path: Path
) -> None:
    previous, new = record_or_none(kind, earlier), make_record(kind, earlier + 1)
    directory = tmp_path / "store"
    start = prepared(kind, earlier, directory)
    cut_at = 0
    while True:
        write_dir(directory, start)
        faults = Faults(directory, cut_at=cut_at)
        with faulty_os(faults):
            try:
                open_store(kind, directory).save(new)
            except PowerCut:
                pass
            else:
                break
        assert faults.disk is not None
        call, name = faults.steps[cut_at]
        for label, files in power_cut_outcomes(faults.disk):
            where = f"{kind} after {earlier} saves, power cut at {call}({name}), {label}"
            write_dir(directory, files)
            loaded = load_fresh(kind, directory, where)
            assert loaded in (previous, new), f"{where}: neither the last good record nor the new"
            # the restarted role saves again: that save completes and is what loads next
            with faulty_os(Faults(directory)):
                open_store(kind, directory).save(new)
            assert load_fresh(kind, directory, where) == new, f"{where}: the next save is lost"
        cut_at += 1
    # the save that was not cut made exactly `cut_at` calls: every one of them was a cut point
    assert len(faults.steps) == cut_at
    calls = {call for call, _ in faults.steps}
    assert {"open", "write", "fsync", "replace"} <= calls, "the save no longer goes through os"
    # once save returns, the new record survives a power cut: nothing is left unsynced
    done = Disk(read_dir(directory), dict(faults.unsynced), list(faults.renames))
    for label, files in power_cut_outcomes(done):
        where = f"{kind} after {earlier} saves, power cut after the save returned, {label}"
        write_dir(directory, files)
        assert load_fresh(kind, directory, where) == new, f"{where}: the saved record is lost"


@pytest.mark.parametrize("earlier", [0, 1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_an_io_error_at_every_write_point_leaves_a_usable_store(
    kind: str, earlier: int, tmp_path: Path
) -> None:
    previous, new = record_or_none(kind, earlier), make_record(kind, earlier + 1)
    directory = tmp_path / "store"
    start = prepared(kind, earlier, directory)
    fail_at = 0
    while True:
        write_dir(directory, start)
        store = open_store(kind, directory)
        faults = Faults(directory, cut_at=fail_at, error=True)
        with faulty_os(faults):
            try:
                store.save(new)
            except OSError:
                pass
            else:
                break
        call, name = faults.steps[fail_at]
        where = f"{kind} after {earlier} saves, EIO at {call}({name})"
        leftovers = [n for n in read_dir(directory) if n.endswith(".tmp")]
        assert leftovers == [], f"{where}: a temporary file was left behind"
        loaded = load_fresh(kind, directory, where)
        assert loaded in (previous, new), f"{where}: neither the last good record nor the new"
        assert store.load() == loaded, f"{where}: the running role sees another record"
        with faulty_os(Faults(directory)):
            store.save(new)  # the same store object retries, and succeeds
        assert load_fresh(kind, directory, where) == new, f"{where}: the retried save is lost"
        fail_at += 1
    assert len(faults.steps) == fail_at >= 8


# --- 2. every slot truncated and corrupted ------------------------------------------------------


@functools.cache
def slot_bytes(kind: str) -> tuple[bytes, bytes]:
    """The slot files after generations 1 and 2 were saved (slot0 holds 1, slot1 holds 2)."""
    with tempfile.TemporaryDirectory() as name:
        store = open_store(kind, Path(name))
        assert store.save(make_record(kind, 1)) == 1
        assert store.save(make_record(kind, 2)) == 2
        older, newer = (slot.read_bytes() for slot in store.slots.slots)
    return older, newer


def load_slots(kind: str, directory: Path, contents: tuple[bytes | None, bytes | None]) -> Any:
    """Write the two slot files (None: absent) and load them with a new store object."""
    store = open_store(kind, directory)
    for slot, data in zip(store.slots.slots, contents, strict=True):
        if data is None:
            slot.unlink(missing_ok=True)
        else:
            slot.write_bytes(data)
    return store.load(), store.damaged


def flipped(data: bytes, position: int, mask: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= mask
    return bytes(changed)


@pytest.mark.parametrize("kind", KINDS)
def test_a_slot_truncated_at_any_length_gives_the_other_slots_record(
    kind: str, tmp_path: Path
) -> None:
    older, newer = slot_bytes(kind)
    names = [slot.name for slot in open_store(kind, tmp_path).slots.slots]
    for victim, survivor in ((1, 1), (0, 2)):
        original = (older, newer)[victim]
        for length in range(len(original)):
            contents = [older, newer]
            contents[victim] = original[:length]
            loaded, damaged = load_slots(kind, tmp_path, (contents[0], contents[1]))
            where = f"{kind}: {names[victim]} cut to {length} bytes"
            assert loaded == make_record(kind, survivor), f"{where}: not generation {survivor}"
            assert len(damaged) == 1 and damaged[0].startswith(names[victim]), where
    # with no other slot, every truncation is reported as lost keys, never as a record
    for length in range(len(older)):
        with pytest.raises(StoreCorruptError, match="no slot verifies") as caught:
            load_slots(kind, tmp_path, (older[:length], None))
        assert_no_secret(str(caught.value), make_record(kind, 1))


@pytest.mark.parametrize("kind", KINDS)
def test_a_byte_flipped_anywhere_gives_the_other_slots_record_or_lost_keys(
    kind: str, tmp_path: Path
) -> None:
    older, newer = slot_bytes(kind)
    for position in range(max(len(older), len(newer))):
        mask = 1 << (position % 8)
        where = f"{kind}: bit {position % 8} of byte {position} flipped"
        if position < len(newer):
            loaded, _ = load_slots(kind, tmp_path, (older, flipped(newer, position, mask)))
            assert loaded == make_record(kind, 1), f"{where} in slot1: not generation 1"
        if position < len(older):
            loaded, _ = load_slots(kind, tmp_path, (flipped(older, position, mask), newer))
            assert loaded == make_record(kind, 2), f"{where} in slot0: not generation 2"
            with pytest.raises(StoreCorruptError) as caught:
                load_slots(kind, tmp_path, (flipped(older, position, mask), None))
            assert_no_secret(str(caught.value), make_record(kind, 1))
        if position < min(len(older), len(newer)):
            with pytest.raises(StoreCorruptError):
                load_slots(
                    kind, tmp_path, (flipped(older, position, mask), flipped(newer, position, 0xFF))
                )


# any byte, or a hex digit: an edit that keeps a key field well-formed must be caught too
BYTE_VALUES = st.integers(0, 255) | st.sampled_from(b"0123456789abcdef")


@st.composite
def damaged_slot(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with some bytes overwritten, cut short, or extended: any damage, or none."""
    data = bytearray(original)
    for position, value in draw(
        st.lists(st.tuples(st.integers(0, len(data) - 1), BYTE_VALUES), max_size=4)
    ):
        data[position] = value
    cut = draw(st.none() | st.integers(0, len(data)))
    tail = draw(st.binary(max_size=8))
    return bytes(data if cut is None else data[:cut]) + tail


@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_any_damage_to_the_slots_gives_the_newest_intact_record_or_lost_keys(
    data: st.DataObject, kind: str
) -> None:
    older, newer = slot_bytes(kind)
    slot0, slot1 = data.draw(damaged_slot(older)), data.draw(damaged_slot(newer))
    intact = [
        generation
        for generation, (now, was) in ((2, (slot1, newer)), (1, (slot0, older)))
        if now == was
    ]
    with tempfile.TemporaryDirectory() as name:
        if not intact:
            with pytest.raises(StoreCorruptError) as caught:
                load_slots(kind, Path(name), (slot0, slot1))
            assert_no_secret(str(caught.value), make_record(kind, 1), make_record(kind, 2))
            return
        loaded, _ = load_slots(kind, Path(name), (slot0, slot1))
    assert loaded == make_record(kind, intact[0]), f"{kind}: not generation {intact[0]}"


def test_reprs_and_errors_never_show_key_bytes(tmp_path: Path) -> None:
    for kind in KINDS:
        record = make_record(kind, 3)
        assert len(secrets_of(record)) >= 4
        assert_no_secret(repr(record) + str(record) + f"{record!r} {record}", record)
        store = open_store(kind, tmp_path / kind)
        store.save(record)
        loaded = open_store(kind, tmp_path / kind).load()
        assert loaded == record
        assert_no_secret(repr(loaded), record)
        # an edit that still verifies but does not validate: the error names no value
        store.slots.save({**record.model_dump(mode="json"), "extra": secrets_of(record)[0]})
        with pytest.raises(StoreCorruptError, match="does not validate") as caught:
            open_store(kind, tmp_path / kind).load()
        assert_no_secret(str(caught.value), record)


# --- 3. a real process, killed at random moments in its saves -----------------------------------

CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.system.test_power_cut import KINDS, make_record, open_store
directory, generation = Path(sys.argv[2]), json.loads(sys.argv[3])
order = KINDS[int(sys.argv[4]):] + KINDS[:int(sys.argv[4])]
print("ready", flush=True)
while True:
    for kind in order:
        n = generation[kind] + 1
        print("writing", kind, n, flush=True)
        open_store(kind, directory).save(make_record(kind, n))
        print("wrote", kind, n, flush=True)
        generation[kind] = n
"""


def test_a_process_killed_during_its_saves_restarts_on_a_record_it_wrote(tmp_path: Path) -> None:
    rng = random.Random(0x6B1)
    directory = tmp_path / "state"
    generation = dict.fromkeys(KINDS, 0)  # what the last restart loaded
    killed_mid_save = 0
    for round_ in range(6):
        errors = tmp_path / f"child-{round_}.err"
        with errors.open("w") as stderr:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(ROOT),
                    str(directory),
                    json.dumps(generation),
                    str(round_ % len(KINDS)),
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert child.stdout is not None
        with child.stdout:
            try:
                assert child.stdout.readline() == "ready\n", errors.read_text()[-2000:]
                time.sleep(rng.uniform(0.01, 0.12))
            finally:
                os.kill(child.pid, signal.SIGKILL)
            out = child.stdout.read()  # to the end, with what readline buffered
        assert child.wait(timeout=30) == -signal.SIGKILL, errors.read_text()[-2000:]
        wrote, writing = dict(generation), dict(generation)
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # the kill cut the line short
            verb, kind, n = line.split()
            (wrote if verb == "wrote" else writing)[kind] = int(n)
        for kind in KINDS:
            allowed = sorted({wrote[kind], writing[kind]})
            where = f"round {round_}: {kind} (written {wrote[kind]}, being written {writing[kind]})"
            loaded = load_fresh(kind, directory, where)
            matches = [n for n in allowed if loaded == record_or_none(kind, n)]
            assert matches, f"{where}: loaded none of generations {allowed}"
            killed_mid_save += writing[kind] > wrote[kind]
            generation[kind] = matches[0]
    assert killed_mid_save >= 1, "no kill landed in a save"
    assert sum(generation.values()) > 0, "no save ever completed"


# --- 4. each role starting on a store that does not verify ---------------------------------------


def damage(path: Path) -> None:
    """A bit flipped in the middle of a slot file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def audit_events(audit: AuditLog) -> list[str]:
    assert audit.verify() is None
    return [json.loads(line)["event"] for line in audit.path.read_text().splitlines()]


def test_a_pack_whose_flash_does_not_verify_starts_in_factory_state_and_says_why(
    tmp_path: Path,
) -> None:
    state_dir, audit = tmp_path / "pack", AuditLog(tmp_path / "audit.jsonl")
    flash = open_store("pack", state_dir)
    last_good, newest = make_record("pack", 2), make_record("pack", 3)
    flash.save(last_good)
    flash.save(newest)
    older_slot, newer_slot = flash.slots.slots
    # the newest slot damaged (a cut write): the pack runs on the last good keys
    damage(newer_slot)
    pack = PackKeys("PACK-cut", state_dir, audit)
    assert pack.flash == last_good
    assert pack.state == PackState.PAIRED
    assert pack.flash_problem is not None and pack.flash_problem.startswith(newer_slot.name)
    # both damaged: factory state, the damage reported and audited, ready for a new bootstrap
    damage(older_slot)
    pack = PackKeys("PACK-cut", state_dir, audit)
    assert pack.flash is None and pack.state == PackState.FACTORY_DEFAULT
    assert pack.flash_problem is not None and "no slot verifies" in pack.flash_problem
    info = pack.device_info()
    assert info["state"] == PackState.FACTORY_DEFAULT and not info["registered"]
    assert info["flash_problem"] == pack.flash_problem
    assert_no_secret(json.dumps(info, default=str), last_good, newest)
    answer = ControlHandlers(pack, pack.handlers()).handle  # what the control channel runs
    refused = answer({"type": "handshake_init", "data": "01" * 18})
    assert refused is not None and refused["type"] == "error"
    assert "factory state" in refused["reason"]
    hello = answer(
        {"type": "bootstrap_hello", "app_id": "host-x", "public_key": Ephemeral().public.hex()}
    )
    assert hello is not None and hello["type"] == "bootstrap_hello_ack"  # Workflow C can start
    assert "flash.corrupt" in audit_events(audit)
    assert_no_secret(audit.path.read_text(), last_good, newest)


@pytest.fixture
def app_wiring() -> Iterator[tuple[ControlEndpoint, ApiBridgeClient]]:
    port = CanPort(can.Bus(interface="virtual", channel=f"power-cut-{uuid.uuid4().hex[:8]}"), "app")
    endpoint = ControlEndpoint.open(port, APP_TO_PACK, PACK_TO_APP)
    bridge = ApiBridgeClient(ApiBridgeConfig(base_url="http://127.0.0.1:9"))
    yield endpoint, bridge
    bridge.close()
    endpoint.close()
    port.close()


def app_link_of(keys: AppKeys) -> LinkKey:
    assert keys.app_device_key_half and keys.pack_device_key_half and keys.link_dh_secret
    assert keys.app_component_id and keys.pack_component_id
    return LinkKey(
        bytes.fromhex(keys.app_device_key_half),
        keys.app_component_id,
        bytes.fromhex(keys.pack_device_key_half),
        keys.pack_component_id,
        bytes.fromhex(keys.link_dh_secret),
    )


def test_an_app_whose_keystore_does_not_verify_refuses_to_start_and_says_why(
    tmp_path: Path,
    app_wiring: tuple[ControlEndpoint, ApiBridgeClient],
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint, bridge = app_wiring
    state_dir, audit = tmp_path / "app", AuditLog(tmp_path / "audit.jsonl")
    keystore = open_store("app", state_dir)
    last_good, newest = make_record("app", 2), make_record("app", 3)
    assert isinstance(last_good, AppKeys)
    keystore.save(last_good)
    keystore.save(newest)
    older_slot, newer_slot = keystore.slots.slots
    # the newest slot damaged (a cut write): the app starts on the last good keys
    damage(newer_slot)
    app = App(state_dir, endpoint, bridge, audit)
    assert app.host_id == last_good.host_id
    assert app.link_key().fingerprint == app_link_of(last_good).fingerprint
    # both damaged: the app says its keys are lost and stops, writing nothing over them
    damage(older_slot)
    slots_before = [slot.read_bytes() for slot in keystore.slots.slots]
    with pytest.raises(AppError) as caught:
        App(state_dir, endpoint, bridge, audit)
    message = str(caught.value)
    assert "keystore is damaged" in message and "no slot verifies" in message
    assert "key recovery" in message
    assert_no_secret(message, last_good, newest)
    assert [slot.read_bytes() for slot in keystore.slots.slots] == slots_before
    assert "keystore.corrupt" in audit_events(audit)
    # and the command line reports it on stderr (exit status 4: local state), no traceback
    bus = f"virtual:power-cut-{uuid.uuid4().hex[:8]}"
    assert cli_main(["app", "--can", bus, "--state-dir", str(state_dir), "discover"]) == 4
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.startswith("modbatt: the app's keystore is damaged")
    assert "restore them from a backup" in said.err and "Traceback" not in said.err
    assert_no_secret(said.err, last_good, newest)
    assert [slot.read_bytes() for slot in keystore.slots.slots] == slots_before


def module_link_of(keys: ModuleFlash) -> LinkKey:
    """The link as the pack builds it for its handshake with the module."""
    return LinkKey(
        bytes.fromhex(keys.pack_device_key_half),
        keys.pack_component_id,
        bytes.fromhex(keys.module_device_key_half),
        keys.module_component_id,
        bytes.fromhex(keys.dh_secret),
    )


def test_a_module_whose_flash_does_not_verify_says_so_and_is_paired_again(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "module"
    flash = module_flash(state_dir)
    last_good, newest = make_record("module", 2), make_record("module", 3)
    assert isinstance(last_good, ModuleFlash) and isinstance(newest, ModuleFlash)
    flash.save(last_good)
    flash.save(newest)
    older_slot, newer_slot = flash.slots.slots
    port = CanPort(can.Bus(interface="virtual", channel=f"power-cut-{uuid.uuid4().hex[:8]}"), "m")
    endpoint = ControlEndpoint.open(port, 0x1, 0x2)
    try:
        # the newest slot damaged (a cut write): the module answers the pack with its last
        # good keys: the pack's handshake on that link goes through
        damage(newer_slot)
        secure = SecureModule(modules_for(4711, 1, 8, time.monotonic())[0], state_dir)
        assert secure.flash_problem is not None
        assert secure.flash_problem.startswith(newer_slot.name)
        agent = PairingAgent(port, [secure], NodeLoop(port, [secure]))  # not started
        initiator = Initiator(
            module_link_of(last_good), last_good.pack_component_id, last_good.module_component_id
        )
        answer = agent._handle(
            secure, endpoint, {"type": "handshake_init", "data": initiator.start().hex()}
        )
        assert answer is not None and answer["type"] == "handshake_response"
        initiator.on_response(bytes.fromhex(answer["data"]))  # the module proved the link key
        # both damaged: the module reports it at start-up and refuses the old link by name
        damage(older_slot)
        secure = SecureModule(modules_for(4711, 1, 8, time.monotonic())[0], state_dir)
        assert secure.flash_problem is not None and "no slot verifies" in secure.flash_problem
        assert secure.audit is not None and "flash.corrupt" in audit_events(secure.audit)
        agent = PairingAgent(port, [secure], NodeLoop(port, [secure]))
        initiator = Initiator(
            module_link_of(newest), newest.pack_component_id, newest.module_component_id
        )
        answer = agent._handle(
            secure, endpoint, {"type": "handshake_init", "data": initiator.start().hex()}
        )
        assert answer is not None and answer["type"] == "error"
        assert "no slot verifies" in answer["reason"] and secure.session is None
        assert_no_secret(json.dumps(answer) + secure.flash_problem, last_good, newest)
        # pairing it again (the module's key recovery) stores new keys over the damage
        fresh = make_record("module", 4)
        assert isinstance(fresh, ModuleFlash)
        ephemeral = Ephemeral()
        hello = agent._handle(
            secure,
            endpoint,
            {
                "type": "pair_hello",
                "pack_id": fresh.pack_component_id,
                "public_key": ephemeral.public.hex(),
            },
        )
        assert hello is not None and hello["type"] == "pair_hello_ack"
        module_public = bytes.fromhex(hello["public_key"])
        shared = ephemeral.shared_secret(module_public)
        keys = delivery_keys(
            shared,
            fresh.pack_component_id,
            responder_id(secure.module.config.unique_id),
            ephemeral.public,
            module_public,
        )
        fields = fresh.model_dump(exclude={"dh_secret"})
        sealed = seal(keys.delivery, DELIVERY_LABEL, fields)
        ack = agent._handle(secure, endpoint, {"type": "pair_delivery", "sealed": sealed.hex()})
        assert ack is not None and ack["type"] == "pair_ack"
        assert module_flash(state_dir).load() == fresh.model_copy(
            update={"dh_secret": shared.hex()}
        )
    finally:
        endpoint.close()
        port.close()
