"""Module pairing (seed Workflow A) on the module bus, and the module's encrypted operation.

The pack controller pairs a registered module over the module's ISO-TP channel (base 0x530
pack -> module, 0x531 module -> pack, node = module id), after the app delivered the keys
of their LCT through the sealed control channel:

```text
pack                                             module (registered, id m)
 pair_hello {pack_id, public_key}           ->
                                            <-   pair_hello_ack {public_key, unique_id}
 pair_delivery {sealed: module halves, pack device half, component ids}  ->
                                                 module flash
                                            <-   pair_ack {sealed: link fingerprint}
 handshake_init / _response / _finish (docs/PROTOCOL.md §2.3)
                                            <-   upgraded (sealed under the new session)
```

Once paired, a module with a session seals everything it sends (its ANNOUNCEMENT is sent only
while unregistered, when it has none), and takes commands only sealed by the pack on its own
id, on the **secured command bases** 0x540-0x54F (a command's base XOR 0x050): the module
firmware dispatches on 0x510-0x51F and ignores the node byte and bit 17, so a sealed frame on
a command base would be read as a plain command by every legacy module on the bus. The pack's
broadcasts reach a paired module the same way, one sealed copy per module (MAX_STATE,
SET_TIME, DEREGISTER for ALL_DEREGISTER, ALL_ISOLATE). Plain commands are dropped and counted
while it has a session: `downgrade` when addressed to it (its id, or a REGISTRATION with its
unique id), `plain_broadcast` otherwise (the firmware would have taken it all the same).
Without a session (before pairing, or after its own reboot or timeout) it behaves exactly as
the firmware does, except that it never acts on a frame with E set.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from modbatt import Session, frames_of, is_encrypted, logical_id
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.isotp_link import TransferError
from modbatt.bus.nodes import Frames, NodeLoop
from modbatt.bus.transport import CanPort
from modbatt.errors import FrameRejectedError, SessionError
from modbatt.module.simulator import ANNOUNCE_REQUEST_BASE, REGISTRATION_BASE, BatteryModule
from modbatt.protocol.bootstrap import (
    ACK_LABEL,
    DELIVERY_LABEL,
    Ephemeral,
    delivery_keys,
    seal,
    unseal,
)
from modbatt.protocol.catalogue import (
    ANNOUNCEMENT,
    SECURED_COMMAND_BASES,
    STATE_NAMES,
    catalogue,
    secured_command_id,
)
from modbatt.protocol.control import MALFORMED_FIELD_ERRORS, AnswerCache, error_answer
from modbatt.protocol.firmware import accepts
from modbatt.protocol.handshake import HandshakeError, Responder
from modbatt.protocol.pairing import module_channel_ids, responder_id
from modbatt.state.keystores import ModuleFlash, module_flash, module_link_key
from modbatt.state.stores import AuditLog, StoreCorruptError

log = logging.getLogger("modbatt.module.pairing")


@dataclass
class SecureModule:
    """A simulated module with its pairing state: a `Node` wrapping `BatteryModule`."""

    module: BatteryModule
    state_dir: Path | None = None
    session: Session | None = None
    dropped: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.flash = None if self.state_dir is None else module_flash(self.state_dir)
        self.audit = None if self.state_dir is None else AuditLog(self.state_dir / "audit.jsonl")
        self.flash_problem: str | None = None
        if self.flash is not None:
            # Verify the flash at start-up, as the pack does: a damaged slot is reported; with
            # no slot verifying the module's keys are lost and it must be paired again (the
            # pack's handshake is refused naming the damage, never run with other keys).
            try:
                self.flash.load()
                self.flash_problem = "; ".join(self.flash.damaged) or None
            except StoreCorruptError as exc:
                self.flash_problem = str(exc)
                self.record("flash.corrupt", problem=str(exc))
                log.error(
                    "module %d: flash store corrupt: %s (pair it again)",
                    self.module.config.unique_id,
                    exc,
                )

    def record(self, event: str, **fields: str | int | bool | None) -> None:
        """Write a key operation to the module's audit log (fingerprints only)."""
        if self.audit is not None:
            self.audit.record(
                event, role="module", unique_id=self.module.config.unique_id, **fields
            )

    def on_frame(self, can_id: int, data: bytes, now: float) -> Frames:
        """Open the pack's sealed commands for this module; refuse plain ones while linked."""
        base, node = can_id >> 18, can_id & 0xFF
        if is_encrypted(can_id):
            # Other modules' sealed telemetry and other links' frames share the bus: only
            # the pack's commands on our own id are ours to open.
            mine = node == self.module.module_id and base in SECURED_COMMAND_BASES
            if self.session is None or not mine:
                return []
            try:
                plain = self.session.open(can_id, data)
            except FrameRejectedError as exc:
                self.dropped[exc.reason] += 1
                return []
            except SessionError:
                self.dropped["no_session"] += 1
                return []
            if plain is None:
                return []
            command = secured_command_id(logical_id(can_id))
            return self._seal(self.module.on_frame(command, plain, now))
        if self.session is not None:
            # counted when the firmware would have acted on it (a registered module ignores
            # ANNOUNCE_REQUEST, so the pack's periodic one for newcomers is no drop)
            if accepts(base, len(data), registered=True) and base != ANNOUNCE_REQUEST_BASE:
                unique_id = self.module.config.unique_id.to_bytes(4, "little")
                mine = node == self.module.module_id or (
                    base == REGISTRATION_BASE and data[4:8] == unique_id
                )
                self.dropped["downgrade" if mine else "plain_broadcast"] += 1
            return []
        return self.module.on_frame(can_id, data, now)

    def tick(self, now: float) -> Frames:
        """The module's periodic frames, sealed while linked."""
        return self._seal(self.module.tick(now))

    def _seal(self, frames: Frames) -> Frames:
        if self.session is not None and self.module.module_id is None:
            # deregistered (by the pack, or its 11.1 s timeout): the session ends with the
            # registration, and the pack links the module again once it is registered
            self.session = None
            self.record("session.ended", reason="deregistered")
        if self.session is None:
            return frames
        out: Frames = []
        for can_id, data in frames:
            decoded = catalogue().decode(can_id, data)
            if decoded is not None and decoded.name == ANNOUNCEMENT:
                out.append((can_id, data))  # announcements stay plain: registration needs them
            else:
                out.extend(frames_of(self.session.seal(can_id, data)))
        return out


class PairingAgent:
    """The module side of pairing: one thread serving the pairing channels of its modules."""

    def __init__(self, port: CanPort, modules: list[SecureModule], loop: NodeLoop) -> None:
        self.port = port
        self.modules = modules
        self.loop = loop
        self._channels: dict[int, tuple[int, ControlEndpoint]] = {}  # unique id -> (id, ep)
        self._state: dict[int, dict[str, Any]] = {}
        self._answers: dict[int, AnswerCache] = {}  # unique id -> recent answers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pairing", daemon=True)

    def start(self) -> PairingAgent:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the channels."""
        self._stop.set()
        self._thread.join(timeout=5)
        for _, endpoint in self._channels.values():
            endpoint.close()

    def _endpoint(self, secure: SecureModule) -> ControlEndpoint | None:
        module_id = secure.module.module_id
        unique = secure.module.config.unique_id
        current = self._channels.get(unique)
        if current is not None and current[0] == module_id:
            return current[1]
        if current is not None:
            current[1].close()
            del self._channels[unique]
        if module_id is None:
            return None
        to_module, to_pack = module_channel_ids(module_id)
        endpoint = ControlEndpoint.open(self.port, to_pack, to_module, timeout_s=0.5)
        self._channels[unique] = (module_id, endpoint)
        return endpoint

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = False
            for secure in self.modules:
                with self.loop.lock:
                    endpoint = self._endpoint(secure)
                if endpoint is None:
                    continue
                message = endpoint.recv(0.0)
                if message is None:
                    continue
                busy = True
                answers = self._answers.setdefault(secure.module.config.unique_id, AnswerCache())
                with self.loop.lock:
                    answer = answers.respond(message, partial(self._guarded, secure, endpoint))
                if answer is None:
                    continue
                # "upgraded" travels sealed under the new session (again, for a retry); the
                # channel itself stays plain: the session belongs to the module's frames
                upgraded = answer["type"] == "upgraded"
                endpoint.session = secure.session if upgraded else None
                try:
                    endpoint.send(answer, plain=not upgraded)
                except TransferError as exc:  # lost on the bus: the pack's retry gets it again
                    log.info("pairing answer %r not sent: %s", answer["type"], exc)
                finally:
                    endpoint.session = None
            if not busy:
                self._stop.wait(0.005)

    def _guarded(
        self, secure: SecureModule, endpoint: ControlEndpoint, message: dict[str, Any]
    ) -> dict[str, Any] | None:
        try:
            return self._handle(secure, endpoint, message)
        except Exception:  # a bug must not stop every module's pairing channel
            log.exception("pairing message %r failed", message.get("type"))
            return error_answer(message["type"], "internal")

    def _handle(
        self, secure: SecureModule, endpoint: ControlEndpoint, message: dict[str, Any]
    ) -> dict[str, Any] | None:
        unique = secure.module.config.unique_id
        state = self._state.setdefault(unique, {})
        kind = message["type"]
        if kind in ("pair_hello", "pair_delivery") and secure.session is not None:
            # The pairing channel is plain and its key agreement unauthenticated: a linked
            # module taking new keys from anyone on CAN 2 would be one a stranger could take
            # over. Its pack reaches it sealed; a pack that lost its keys falls silent to it,
            # and after 11.1 s the module times out, ends its session and can be paired again.
            secure.record("pairing.refused", reason="linked")
            return error_answer(
                kind, "paired and linked: pairing again waits until its link is down"
            )
        try:
            if kind == "pair_hello":
                ephemeral = Ephemeral()
                pack_public = bytes.fromhex(message["public_key"])
                state.update(
                    ephemeral=ephemeral,
                    pack_public=pack_public,
                    pack_id=str(message["pack_id"]),
                    shared=ephemeral.shared_secret(pack_public),
                )
                return {
                    "type": "pair_hello_ack",
                    "public_key": ephemeral.public.hex(),
                    "unique_id": unique,
                }
            if kind == "pair_delivery":
                keys = delivery_keys(
                    state["shared"],
                    state["pack_id"],
                    responder_id(unique),
                    state["pack_public"],
                    state["ephemeral"].public,
                )
                payload = unseal(keys.delivery, DELIVERY_LABEL, bytes.fromhex(message["sealed"]))
                record = ModuleFlash(
                    module_component_id=payload["module_component_id"],
                    module_device_key_half=payload["module_device_key_half"],
                    module_lct_key_half=payload["module_lct_key_half"],
                    pack_device_key_half=payload["pack_device_key_half"],
                    pack_component_id=payload["pack_component_id"],
                    dh_secret=state["shared"].hex(),
                )
                if secure.flash is not None:
                    secure.flash.save(record)
                state["record"] = record
                link = module_link_key(record)
                secure.record("keys.stored", link=link.fingerprint, pack=record.pack_component_id)
                ack = seal(keys.acknowledgement, ACK_LABEL, {"link": link.fingerprint})
                return {"type": "pair_ack", "sealed": ack.hex()}
            if kind == "handshake_init":
                stored = state.get("record") or (secure.flash.load() if secure.flash else None)
                if not isinstance(stored, ModuleFlash):
                    raise HandshakeError("not paired")
                state["record"] = record = stored
                # the current session stays until handshake_finish proves the peer holds the
                # link key: a plain init from anyone on the bus must not cut the module off
                responder = Responder(
                    module_link_key(record), record.module_component_id, record.pack_component_id
                )
                state["responder"] = responder
                response = responder.on_init(bytes.fromhex(message["data"]))
                return {"type": "handshake_response", "data": response.hex()}
            if kind == "handshake_finish":
                session = state.pop("responder").on_finish(bytes.fromhex(message["data"]))
                secure.session = session
                secure.record("session.established", module_id=secure.module.module_id)
                return {"type": "upgraded", "unique_id": unique}
        except (HandshakeError, *MALFORMED_FIELD_ERRORS) as exc:
            return error_answer(kind, str(exc))
        return error_answer(kind, "unexpected message")


def simulator_report(node: BatteryModule | SecureModule) -> dict[str, Any]:
    """What a simulated module says of itself: `module run --report` and the demo's JSON.

    `sealed_frames_acted_on` counts commands a module took from frames with E set; a legacy
    module reads them as plain when their base is one it knows, so on a safe bus it stays 0.
    """
    secured = isinstance(node, SecureModule)
    module = node.module if isinstance(node, SecureModule) else node
    return {
        "unique_id": module.config.unique_id,
        "kind": "secured" if secured else "legacy",
        "module_id": module.module_id,
        "paired": isinstance(node, SecureModule) and node.session is not None,
        "state": STATE_NAMES.get(module.state, str(module.state)),
        "sealed_frames_acted_on": module.sealed_frames_acted_on,
    }
