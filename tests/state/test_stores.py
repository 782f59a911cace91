"""Durable state: two-slot stores under power cuts and tampering, keystores, the audit log."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modbatt.state.keystores import (
    AppKeys,
    ModuleFlash,
    PackFlash,
    PairedModule,
    app_keystore,
    host_id,
    module_flash,
    pack_flash,
)
from modbatt.state.stores import (
    AuditLog,
    StoreCorruptError,
    TwoSlotStore,
    atomic_write,
    decode_record,
    encode_record,
    fingerprint,
)

HALF_A, HALF_B, HALF_C = "ab" * 64, "cd" * 64, "ef" * 64
DH = "12" * 32


def pack_record(n: int = 0) -> PackFlash:
    module = PairedModule(
        module_component_id="COMP-alice-9",
        pack_device_key_half=HALF_B,
        pack_lct_key_half=HALF_C,
        module_device_key_half=HALF_A,
        dh_secret=DH,
        lct_id="lct_1",
        unique_id=9,
    )
    return PackFlash(
        pack_component_id=f"COMP-alice-{n}",
        pack_device_key_half=HALF_A,
        pack_lct_key_half=HALF_B,
        app_device_key_half=HALF_C,
        configuration={"max_state": 3},
        app_component_id="COMP-alice-0",
        app_link_dh_secret=DH,
        lct_id="lct_0",
        modules={"COMP-alice-9": module},
    )


def test_files_are_private_and_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "x"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temporary left behind


def test_each_store_survives_a_restart(tmp_path: Path) -> None:
    flash = pack_flash(tmp_path)
    assert flash.load() is None
    flash.save(pack_record(1))
    flash.save(pack_record(2))
    again = pack_flash(tmp_path).load()  # a new process: a new object on the same files
    assert again == pack_record(2)
    app = app_keystore(tmp_path)
    hid = host_id(app)
    assert host_id(app_keystore(tmp_path)) == hid  # generated once, then persisted
    module = module_flash(tmp_path)
    record = ModuleFlash(
        module_component_id="m",
        module_device_key_half=HALF_A,
        module_lct_key_half=HALF_C,
        pack_device_key_half=HALF_B,
        pack_component_id="p",
        dh_secret=DH,
    )
    module.save(record)
    assert module_flash(tmp_path).load() == record


def test_writes_alternate_slots_and_the_newest_wins(tmp_path: Path) -> None:
    store = TwoSlotStore(tmp_path, "s")
    for n in range(1, 6):
        assert store.save({"n": n}) == n
    assert store.load().payload == {"n": 5}
    sequences = sorted(decode_record(slot.read_bytes())[0] for slot in store.slots)
    assert sequences == [4, 5]


@pytest.mark.parametrize("cut_at", ["truncated", "garbage", "empty", "zeroed", "half_written"])
def test_a_power_cut_during_a_write_keeps_the_last_good_record(tmp_path: Path, cut_at: str) -> None:
    store = TwoSlotStore(tmp_path, "s")
    store.save({"n": 1})
    store.save({"n": 2})
    # The next write goes to the slot holding n=1; the cut leaves that slot damaged.
    victim = next(s for s in store.slots if decode_record(s.read_bytes())[1] == {"n": 1})
    new = encode_record(3, {"n": 3})
    damaged = {
        "truncated": new[: len(new) // 2],
        "garbage": os.urandom(len(new)),
        "empty": b"",
        "zeroed": bytes(len(new)),
        "half_written": new[:20] + bytes(len(new) - 20),
    }[cut_at]
    victim.write_bytes(damaged)
    loaded = TwoSlotStore(tmp_path, "s").load()
    assert loaded.payload == {"n": 2}
    assert loaded.damaged and victim.name in loaded.damaged[0]
    # and writing again repairs the damaged slot
    store.save({"n": 3})
    assert TwoSlotStore(tmp_path, "s").load() == type(loaded)({"n": 3}, 3, ())


def test_a_leftover_temporary_file_changes_nothing(tmp_path: Path) -> None:
    store = TwoSlotStore(tmp_path, "s")
    store.save({"n": 1})
    (tmp_path / ".s.slot1.999.tmp").write_bytes(b"partial")  # killed before the rename
    assert store.load().payload == {"n": 1}


def test_tampering_is_refused(tmp_path: Path) -> None:
    flash = pack_flash(tmp_path)
    flash.save(pack_record(1))
    slot = flash.slots.slots[0]
    data = bytearray(slot.read_bytes())
    position = data.index(HALF_A.encode())
    data[position] ^= 0x01  # one key byte edited in place
    slot.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match="checksum"):
        flash.load()


def test_a_record_that_verifies_but_does_not_validate_is_refused(tmp_path: Path) -> None:
    store = pack_flash(tmp_path)
    store.slots.save({"pack_component_id": "x", "pack_device_key_half": "not hex"})
    with pytest.raises(StoreCorruptError, match="does not validate"):
        store.load()


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_record(data)


def test_reprs_hide_key_halves() -> None:
    shown = repr(pack_record()) + repr(AppKeys(host_id="h", app_device_key_half=HALF_A))
    for half in (HALF_A, HALF_B, HALF_C, DH):
        assert half not in shown


def test_the_audit_log_is_chained_and_takes_no_key_bytes(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("lct.created", lct_id="lct_1", link_key=fingerprint(b"k" * 32))
    log.record("keys.delivered", to="COMP-alice-1", ok=True)
    with pytest.raises(TypeError, match="fingerprint"):
        log.record("oops", key=b"\x01" * 64)  # type: ignore[arg-type]
    assert log.verify() is None
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    lines = log.path.read_text().splitlines()
    entry: dict[str, Any] = json.loads(lines[0])
    entry["fields"]["lct_id"] = "lct_2"
    log.path.write_text("\n".join([json.dumps(entry), lines[1]]) + "\n")
    assert "line 1" in (log.verify() or "")
    log.path.write_text(lines[1] + "\n")
    assert "line 1" in (log.verify() or "")


@pytest.mark.parametrize("factory", [app_keystore, pack_flash, module_flash])
def test_every_role_store_refuses_a_tampered_file(tmp_path: Path, factory: Any) -> None:
    store = factory(tmp_path)
    record = {
        app_keystore: AppKeys(host_id="host-1", app_device_key_half=HALF_A),
        pack_flash: pack_record(1),
        module_flash: ModuleFlash(
            module_component_id="m",
            module_device_key_half=HALF_A,
            module_lct_key_half=HALF_C,
            pack_device_key_half=HALF_B,
            pack_component_id="p",
            dh_secret=DH,
        ),
    }[factory]
    store.save(record)
    assert factory(tmp_path).load() == record  # survives a restart
    slot = store.slots.slots[0]
    data = bytearray(slot.read_bytes())
    data[data.index(HALF_A.encode())] ^= 0x02
    slot.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError):
        factory(tmp_path).load()
