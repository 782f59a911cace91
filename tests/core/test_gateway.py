"""The gateway through the Python API: rules, the security transform, counters, batches."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from modbatt import (
    DROP_REASONS,
    Gateway,
    LinkKey,
    Sealed,
    Session,
    compose_id,
    errors,
    frames_of,
)
from modbatt._core import STATUS_LINK_DOWN

CAN1, CAN2 = 0, 1
APP, PACK, MODULE = "COMP-app", "COMP-pack", "COMP-module-5"
STATUS_1 = compose_id(0x502, 5)
STATE_CHANGE = compose_id(0x514, 5)


class Pack:
    """A gateway with an app link (0) and a module link (1), and the far ends of both."""

    def __init__(self, seed: int | None = None, cut_through: bool = True) -> None:
        def material(length: int, label: str) -> bytes:
            if seed is None:
                return os.urandom(length)
            return hashlib.shake_256(f"{seed}/{label}".encode()).digest(length)

        app_link = LinkKey(material(64, "app"), APP, material(64, "pack"), PACK)
        module_link = LinkKey(material(64, "pack2"), PACK, material(64, "mod"), MODULE)
        n = {k: material(16, k) for k in ("app", "pack_app", "pack_mod", "mod")}
        self.app = Session(app_link, APP, PACK, n["app"], n["pack_app"])
        self.module = Session(module_link, MODULE, PACK, n["mod"], n["pack_mod"])
        self.gateway = Gateway(cut_through=cut_through)
        self.gateway.install_session(0, Session(app_link, PACK, APP, n["pack_app"], n["app"]))
        self.gateway.install_session(1, Session(module_link, PACK, MODULE, n["pack_mod"], n["mod"]))
        self.gateway.add_rule(CAN1, compose_id(0x514, 0), 0x7FF << 18, CAN2, inbound=0, outbound=1)
        self.gateway.add_rule(CAN2, compose_id(0x500, 0), 0x7F0 << 18, CAN1, inbound=1, outbound=0)

    def carry(self, bus: int, sealed: Sealed) -> list[tuple[int, int, bytes]]:
        frames = frames_of(sealed)
        return [out for can_id, data in frames for out in self.gateway.step(bus, can_id, data)]


def test_a_command_crosses_resealed_and_telemetry_comes_back() -> None:
    pack = Pack()
    out = pack.carry(CAN1, pack.app.seal(STATE_CHANGE, b"\x05\x03\xa0\x0f"))
    assert {bus for bus, _, _ in out} == {CAN2}
    assert [pack.module.open(i, d) for _, i, d in out][-1] == b"\x05\x03\xa0\x0f"
    out = pack.carry(CAN2, pack.module.seal(STATUS_1, bytes(range(8))))
    assert [pack.app.open(i, d) for _, i, d in out][-1] == bytes(range(8))
    stats = pack.gateway.stats()
    assert (stats["received"], stats["forwarded"], stats["pending"]) == (4, 2, 2)


def test_every_drop_is_counted_by_reason() -> None:
    pack = Pack()
    pack.gateway.step(CAN1, compose_id(0x400, 0), b"")  # no rule
    pack.gateway.step(CAN2, STATUS_1, bytes(8))  # plain on a secured link
    frames = pack.module.seal(STATUS_1, b"\x01")
    pack.carry(CAN2, frames)
    pack.carry(CAN2, frames)  # replay
    forged = pack.module.seal(STATE_CHANGE, b"\x05\x03\x00\x00")  # module keys, app's route
    pack.carry(CAN1, forged)
    stats = pack.gateway.stats()
    assert stats["no_route"] == 1
    assert stats["downgrade"] == 1
    assert stats["replay"] == 1
    assert stats["bad_tag"] == 1
    assert pack.gateway.session_stats(0)["failures"] == 1  # type: ignore[index]


def test_rules_are_listed_and_validated() -> None:
    gateway = Gateway()
    gateway.add_rule(CAN2, compose_id(0x500, 0), 0x7F0 << 18, CAN1, id_or=0x07)
    [rule] = gateway.rules()
    assert rule["id_or"] == 0x07 and rule["inbound"] is None
    with pytest.raises(errors.InvalidArgumentError):
        gateway.add_rule(0, 1 << 17, 0, 1)
    with pytest.raises(errors.InvalidArgumentError):
        gateway.add_rule(0, 0, 0, 1, id_set=1 << 17)
    gateway.clear_rules()
    assert gateway.rules() == []


def test_plain_route_with_rewrite() -> None:
    gateway = Gateway()
    gateway.add_rule(CAN2, compose_id(0x500, 0), 0x7F0 << 18, CAN1, id_and=0x1FFC_7F00, id_or=7)
    assert gateway.step(CAN2, STATUS_1, b"\x01") == [(CAN1, compose_id(0x502, 7), b"\x01")]


def test_step_batch_matches_step() -> None:
    one, two = Pack(seed=7), Pack(seed=7)  # same keys and nonces: two identical gateways
    frames = [
        f
        for i in range(200)
        for f in frames_of(one.module.seal(STATUS_1 + i % 2, bytes([i]) * (i % 9)))
    ]
    frames += [(STATUS_1, b"\x00"), (compose_id(0x400, 0), b"")]
    per_frame = [out for can_id, data in frames for out in one.gateway.step(CAN2, can_id, data)]
    n = len(frames)
    data = np.zeros((n, 64), dtype=np.uint8)
    for k, (_, d) in enumerate(frames):
        data[k, : len(d)] = np.frombuffer(d, dtype=np.uint8)
    out_bus, out_ids, out_lens, out_data, status = two.gateway.step_batch(
        np.full(n, CAN2, dtype=np.uint8),
        np.array([i for i, _ in frames], dtype=np.uint32),
        np.array([len(d) for _, d in frames], dtype=np.uint8),
        data,
    )
    batch = [
        (int(b), int(i), bytes(out_data[k, : out_lens[k]]))
        for k, (b, i) in enumerate(zip(out_bus, out_ids, strict=True))
    ]
    assert batch == per_frame
    assert list(status[-2:]) == [5, 2]  # downgrade, no route
    assert one.gateway.stats() == two.gateway.stats()


def test_a_destination_without_a_session_is_link_down_not_a_drop() -> None:
    """An operational pack whose app is not connected still opens its modules' reports (the
    tap feeds its module table) but has no one to send them to: `link_down`, no drop."""
    pack = Pack(seed=3)
    twin = Pack(seed=3)
    pack.gateway.set_tap(compose_id(0x500, 0), 0x7F0 << 18)
    for gateway in (pack.gateway, twin.gateway):
        gateway.remove_session(0)
    assert pack.carry(CAN2, pack.module.seal(STATUS_1, b"\x07\x07\x07")) == []
    stats = pack.gateway.stats()
    assert (stats["received"], stats["forwarded"], stats["link_down"]) == (1, 0, 1)
    assert not any(stats[name] for _, name in DROP_REASONS)
    assert pack.gateway.take_tapped() == [(STATUS_1, b"\x07\x07\x07")]
    # the batch API reports it with its own status, apart from the drop reasons
    twin_frames = frames_of(twin.module.seal(STATUS_1, b"\x07\x07\x07"))
    ((can_id, data),) = twin_frames
    *_, status = twin.gateway.step_batch(
        np.array([CAN2], dtype=np.uint8),
        np.array([can_id], dtype=np.uint32),
        np.array([len(data)], dtype=np.uint8),
        np.frombuffer(data.ljust(64, b"\x00"), dtype=np.uint8).reshape(1, 64).copy(),
    )
    assert list(status) == [STATUS_LINK_DOWN]
    assert STATUS_LINK_DOWN not in {code for code, _ in DROP_REASONS}
