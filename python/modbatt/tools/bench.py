"""``modbatt bench frame-path``: what the frame path costs, against baselines of the same run.

Every figure is measured here, now, on the same inputs: nothing is remembered from another
run. Each timed loop runs the operation ``n`` times inside a function with local names (so the
loop's own overhead is the same for the Rust path and for its baselines); a figure is the
median over ``repeats`` such loops. After each loop the results are checked (every sealed
message opened, every gateway step forwarded), so a figure can never come from frames that
were silently dropped.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modbatt import Gateway, LinkKey, Session, compose_id
from modbatt.protocol.frames import Sealed, frames_of
from modbatt.protocol.reference import ReferenceSession, derive_link_key

PAYLOAD = bytes(range(0x11, 0x19))  # 8 bytes: a full classic frame, the module bus's case
SHORT_PAYLOAD = PAYLOAD[:3]  # fits the single-frame form
STATUS_1_ID = compose_id(0x502, 5)
BATCH_FRAMES = 65_536

# Targets of issue 2 on this machine kind (2 cores).
TARGETS = {
    "seal_vs_aesgcm": 0.5,
    "open_vs_aesgcm": 0.5,
    "batch_frames_per_s": 5_000_000,
    "gateway_step_ns": 1_000,
}


def _median_ns(loop: Callable[[int], int], n: int, repeats: int) -> float:
    """Median over `repeats` runs of `loop(n)` (which returns elapsed ns), per operation."""
    loop(max(1, n // 10))  # warm up caches and branch predictors
    return statistics.median(loop(n) / n for _ in range(repeats))


def _key_material() -> tuple[bytes, bytes, bytes, bytes]:
    """Two device key halves and two nonces, random: the figures do not depend on them."""
    return os.urandom(64), os.urandom(64), os.urandom(16), os.urandom(16)


def _sessions() -> tuple[Session, Session, ReferenceSession, ReferenceSession]:
    """Both ends of a fresh session, in Rust and in the reference, on the same keys.

    Each benchmark takes fresh sessions: a sender that sealed far ahead of its receiver
    (more than 65,535 messages on one stream) is, correctly, no longer accepted.
    """
    half_a, half_b, nonce_a, nonce_b = _key_material()
    link = LinkKey(half_a, "COMP-a", half_b, "COMP-b")
    ref_key = derive_link_key(half_a, "COMP-a", half_b, "COMP-b")
    return (
        Session(link, "COMP-a", "COMP-b", nonce_a, nonce_b),
        Session(link, "COMP-b", "COMP-a", nonce_b, nonce_a),
        ReferenceSession(ref_key, "COMP-a", "COMP-b", nonce_a, nonce_b),
        ReferenceSession(ref_key, "COMP-b", "COMP-a", nonce_b, nonce_a),
    )


def _seal_loop(
    seal: Callable[[int, bytes], object], can_id: int, payload: bytes
) -> Callable[[int], int]:
    def loop(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(n):
            seal(can_id, payload)
        return time.perf_counter_ns() - start

    return loop


def _aead_loop(payload: bytes) -> Callable[[int], int]:
    encrypt = AESGCM(os.urandom(16)).encrypt
    nonce = os.urandom(12)

    def loop(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(n):
            encrypt(nonce, payload, None)
        return time.perf_counter_ns() - start

    return loop


def _open_loop(
    sender_seal: Callable[[int, bytes], Sealed],
    receiver_open: Callable[[int, bytes], bytes | None],
    opened_count: Callable[[], int],
) -> Callable[[int], int]:
    """Open whole 8-byte messages: both frames of each pair, one frame at a time.

    Frames are fed as a bus delivers them; the messages delivered are counted afterwards,
    outside the timing.
    """

    def loop(n: int) -> int:
        frames = [frame for _ in range(n) for frame in frames_of(sender_seal(STATUS_1_ID, PAYLOAD))]
        before = opened_count()
        start = time.perf_counter_ns()
        for can_id, data in frames:
            receiver_open(can_id, data)
        elapsed = time.perf_counter_ns() - start
        opened = opened_count() - before
        if opened != n:
            raise RuntimeError(f"open benchmark: {opened} of {n} messages opened")
        return elapsed

    return loop


def _batch_loop(session: Session) -> Callable[[int], int]:
    def loop(n: int) -> int:
        ids = np.full(n, STATUS_1_ID, dtype=np.uint32)
        lens = np.full(n, len(PAYLOAD), dtype=np.uint8)
        data = np.zeros((n, 64), dtype=np.uint8)
        data[:, : len(PAYLOAD)] = np.frombuffer(PAYLOAD, dtype=np.uint8)
        start = time.perf_counter_ns()
        _out_ids, _out_lens, _out_data, status = session.seal_batch(ids, lens, data)
        elapsed = time.perf_counter_ns() - start
        if int(np.count_nonzero(status)) != 0:
            raise RuntimeError("batch benchmark: some frames were not sealed")
        return elapsed

    return loop


def _gateway_loop(payload: bytes) -> tuple[Callable[[int], int], Gateway]:
    """A pack gateway: CAN 2 -> CAN 1, opened with the module's session, resealed for the app."""
    half_m, half_p, nonce_m, nonce_p = _key_material()
    module_link = LinkKey(half_m, "COMP-module", half_p, "COMP-pack")
    app_link = LinkKey(os.urandom(64), "COMP-app", os.urandom(64), "COMP-pack")
    module = Session(module_link, "COMP-module", "COMP-pack", nonce_m, nonce_p)
    gateway = Gateway()
    gateway.install_session(1, Session(module_link, "COMP-pack", "COMP-module", nonce_p, nonce_m))
    gateway.install_session(
        0, Session(app_link, "COMP-pack", "COMP-app", os.urandom(16), os.urandom(16))
    )
    gateway.add_rule(1, compose_id(0x500, 0), 0x7F0 << 18, 0, inbound=1, outbound=0)
    step = gateway.step
    seal = module.seal

    def loop(n: int) -> int:
        frames = [frame for _ in range(n) for frame in frames_of(seal(STATUS_1_ID, payload))]
        before = gateway.stats()["forwarded"]
        start = time.perf_counter_ns()
        for can_id, data in frames:
            step(1, can_id, data)
        elapsed = time.perf_counter_ns() - start
        forwarded = gateway.stats()["forwarded"] - before
        if forwarded != n:
            raise RuntimeError(f"gateway benchmark: {forwarded} of {n} messages forwarded")
        return elapsed

    return loop, gateway


def frame_path(quick: bool = False) -> dict[str, Any]:
    """Measure the frame path; returns the figures (the numeric keys of issue 2 and more)."""
    n, repeats = (2_000, 3) if quick else (50_000, 9)
    batch_n = 4_096 if quick else BATCH_FRAMES
    figures: dict[str, Any] = {}
    figures["aesgcm_ns_anchor"] = _median_ns(_aead_loop(PAYLOAD), n, repeats)
    sender, _, _, _ = _sessions()
    figures["seal_ns_rust"] = _median_ns(_seal_loop(sender.seal, STATUS_1_ID, PAYLOAD), n, repeats)
    sender, receiver, ref_sender, ref_receiver = _sessions()
    figures["open_ns_rust"] = _median_ns(
        _open_loop(sender.seal, receiver.open, lambda: receiver.stats()["opened"]), n, repeats
    )
    ref_n = max(1, n // 10)
    figures["seal_ns_reference"] = _median_ns(
        _seal_loop(ref_sender.seal, STATUS_1_ID, PAYLOAD), ref_n, repeats
    )
    _, _, ref_sender, ref_receiver = _sessions()
    figures["open_ns_reference"] = _median_ns(
        _open_loop(ref_sender.seal, ref_receiver.open, lambda: ref_receiver.opened), ref_n, repeats
    )
    sender, _, _, _ = _sessions()
    batch_ns = _median_ns(_batch_loop(sender), batch_n, repeats) * batch_n
    figures["batch_frames_per_s"] = batch_n / (batch_ns / 1e9)
    step_loop, _ = _gateway_loop(PAYLOAD)
    figures["gateway_step_ns"] = _median_ns(step_loop, n, repeats)
    single_loop, _ = _gateway_loop(SHORT_PAYLOAD)
    figures["gateway_step_single_ns"] = _median_ns(single_loop, n, repeats)
    figures["seal_single_ns_rust"] = _median_ns(
        _seal_loop(sender.seal, STATUS_1_ID, SHORT_PAYLOAD), n, repeats
    )

    anchor = figures["aesgcm_ns_anchor"]
    figures["seal_vs_aesgcm"] = figures["seal_ns_rust"] / anchor
    figures["open_vs_aesgcm"] = figures["open_ns_rust"] / anchor
    figures["meets_targets"] = {
        "seal_ns_rust <= 0.5 * aesgcm_ns_anchor": figures["seal_vs_aesgcm"]
        <= TARGETS["seal_vs_aesgcm"],
        "open_ns_rust <= 0.5 * aesgcm_ns_anchor": figures["open_vs_aesgcm"]
        <= TARGETS["open_vs_aesgcm"],
        "batch_frames_per_s >= 5,000,000": figures["batch_frames_per_s"]
        >= TARGETS["batch_frames_per_s"],
        "gateway_step_ns <= 1,000": figures["gateway_step_ns"] <= TARGETS["gateway_step_ns"],
    }
    figures["conditions"] = {
        "iterations": n,
        "reference_iterations": ref_n,
        "repeats": repeats,
        "batch_frames": batch_n,
        "payload_bytes": len(PAYLOAD),
        "quick": quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "notes": "open_* and gateway_step_ns are per 8-byte message: both frames of the "
        "classic pair (data + authenticator); gateway_step_single_ns is one 3-byte "
        "single-frame message, one step.",
    }
    return figures


ROWS = [
    ("aesgcm_ns_anchor", "AESGCM.encrypt, 8 B (baseline)", "ns/call"),
    ("seal_ns_rust", "seal 8 B -> pair (Rust, per-frame API)", "ns/message"),
    ("seal_single_ns_rust", "seal 3 B -> single frame (Rust)", "ns/message"),
    ("open_ns_rust", "open 8 B pair, both frames (Rust)", "ns/message"),
    ("seal_ns_reference", "seal 8 B (modbatt.protocol.reference)", "ns/message"),
    ("open_ns_reference", "open 8 B pair (modbatt.protocol.reference)", "ns/message"),
    ("batch_frames_per_s", "seal_batch, 8 B frames (numpy API)", "messages/s"),
    ("gateway_step_ns", "gateway step, 8 B pair in and out", "ns/message"),
    ("gateway_step_single_ns", "gateway step, 3 B single frame", "ns/message"),
    ("seal_vs_aesgcm", "seal / AESGCM", "ratio"),
    ("open_vs_aesgcm", "open / AESGCM", "ratio"),
]


def print_table(figures: dict[str, Any], out: Callable[[str], object] = print) -> None:
    """Print the figures as a table, then the targets met or missed."""
    out(f"{'figure':<26} {'what':<42} {'value':>14}  unit")
    for key, what, unit in ROWS:
        value = figures[key]
        shown = f"{value:,.2f}" if unit == "ratio" else f"{value:,.0f}"
        out(f"{key:<26} {what:<42} {shown:>14}  {unit}")
    for target, met in figures["meets_targets"].items():
        out(f"  {'met   ' if met else 'MISSED'} {target}")


def write_json(figures: dict[str, Any], path: Path) -> None:
    """Write the figures as JSON."""
    path.write_text(json.dumps(figures, indent=2) + "\n")
