"""The Modbatt app: discovery, bootstrap, the channel upgrade, and status.

An :class:`App` drives a pack controller over the app bus control channel and the API-Bridge:

- ``discover()``: what the pack says about itself (plain, allowed at any level);
- ``bootstrap()``: register the app (component data = its host id) and the pack (component
  data = ``MODBATT-PACK-<serial>``), create their LCT, run the X25519 exchange, deliver the
  pack's key halves and the app's device half sealed, store the app's keystore, then upgrade;
- ``connect()``: the channel upgrade alone (after a restart of either side): the session
  handshake that proves both hold the link key, then ``upgraded`` under the new session;
- ``status()``: discovery again, under the session once it is up.

Refusals by the pack come back as :class:`AppError` naming the step, and so do answers that
break the protocol: everything the pack sends is checked before the app uses it (the answer
models below, the status and alert frame parsers), since CAN 1 is not trusted.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from modbatt import LinkKey, Session, frames_of, is_encrypted, logical_id
from modbatt.api_bridge.client import ApiBridgeClient
from modbatt.bus.control_channel import ControlEndpoint, request
from modbatt.errors import FrameRejectedError, KeyHalfError, ModbattError, SessionError
from modbatt.progress import NO_PROGRESS, Progress
from modbatt.protocol.bootstrap import (
    ACK_LABEL,
    DELIVERY_LABEL,
    Ephemeral,
    KeyAgreementError,
    delivery_keys,
    seal,
    unseal,
)
from modbatt.protocol.catalogue import MAX_MODULES, catalogue
from modbatt.protocol.control import REQUEST_ID, new_request_id
from modbatt.protocol.firmware import PACK_CONTROLLER_TIMEOUT_S
from modbatt.protocol.handshake import CONFIRM_LEN, NONCE_LEN, HandshakeError, Initiator
from modbatt.protocol.status import (
    ALERT_BASE,
    STATUS_BASE,
    StatusFrameError,
    parse_alert,
    parse_pack_status,
)
from modbatt.state.keystores import AppKeys, TypedStore, app_keystore, app_link_key, host_id
from modbatt.state.stores import AuditLog, StoreCorruptError

log = logging.getLogger("modbatt.app.app")

REPLY_TIMEOUT_S = 2.0  # per attempt; a request is sent up to REPLY_ATTEMPTS times
REPLY_ATTEMPTS = 3
BOOTSTRAP_ATTEMPTS, BOOTSTRAP_RETRY_S = 3, 1.0  # whole exchanges, when one is cut short
# At key recovery: how long a known module has to register again. A paired module takes
# commands only sealed by the pack that lost its keys, so it comes back when its own
# pack-controller timeout (11.1 s, the firmware's) runs out and it announces (within 0.6 s),
# or sooner when the pack's start-up deregistration reached it (a module not yet linked).
MODULES_BACK_S = PACK_CONTROLLER_TIMEOUT_S + 3.0
LINK_SILENCE_S = 3.5  # three missed status frames (one a second) and a half: the link is gone


class AppError(ModbattError):
    """A step of the app's workflow failed; the message names the step and the reason."""


class PlainCommandError(AppError):
    """A command to an unpaired module would reach every unpaired module: not confirmed."""


class KeystoreLostError(AppError, StoreCorruptError):
    """The app's keystore has no slot that verifies: its keys are lost (exit status 4)."""


class PackSilentError(AppError):
    """The pack controller did not answer a request, through every retry."""


class PackRefusedError(AppError):
    """The pack controller answered a request with an `error`."""


HexBytes = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-fA-F]{2})+$")]
PublicKeyHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
HandshakeResponseHex = Annotated[
    str, StringConstraints(pattern=rf"^[0-9a-fA-F]{{{2 * (2 + NONCE_LEN + CONFIRM_LEN)}}}$")
]
FingerprintHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class Answer(BaseModel):
    """A pack's answer: the fields the app reads, with their JSON types checked strictly.

    Fields the app does not read pass through unchecked (a newer pack may send more).
    """

    model_config = ConfigDict(extra="allow", strict=True)


class ModuleRow(Answer):
    """One module in `device_info`'s module table."""

    module_id: int = Field(ge=0, le=0xFF)
    unique_id: int = Field(ge=0, le=0xFFFF_FFFF)
    online: bool
    paired: bool


class DeviceInfo(Answer):
    """`device_info`, the answer to `discover`."""

    serial: str = Field(min_length=1, max_length=64)
    state: int = Field(ge=1, le=4)
    state_name: str = Field(max_length=64)
    security_level: int = Field(ge=0, le=3)
    flash_problem: str | None
    modules: list[ModuleRow] = Field(max_length=MAX_MODULES)


class BootstrapHelloAck(Answer):
    """The pack's X25519 public key."""

    public_key: PublicKeyHex


class KeyAck(Answer):
    """The sealed acknowledgement of the key delivery."""

    sealed: HexBytes


class HandshakeResponse(Answer):
    """The handshake's RESPONSE message."""

    data: HandshakeResponseHex


class Upgraded(Answer):
    """The first sealed message of a new session."""

    security_level: int = Field(ge=0, le=3)
    state: int = Field(ge=1, le=4)


class PairResult(Answer):
    """A module paired."""

    module_id: int = Field(ge=1, le=MAX_MODULES)
    unique_id: int
    link: FingerprintHex


class Isolated(Answer):
    """ALL_ISOLATE sent: plain, and sealed to these linked modules."""

    plain: bool
    sealed: list[Annotated[int, Field(ge=1, le=MAX_MODULES)]]


class FirmwareReady(Answer):
    """The chunk size the pack takes (at most 1 KiB, PROTOCOL.md §8a)."""

    chunk: int = Field(ge=1, le=1024)


class FirmwareChunkOk(Answer):
    """One chunk taken."""

    index: int


ANSWERS: dict[str, type[Answer]] = {
    "device_info": DeviceInfo,
    "bootstrap_hello_ack": BootstrapHelloAck,
    "key_ack": KeyAck,
    "handshake_response": HandshakeResponse,
    "upgraded": Upgraded,
    "pair_result": PairResult,
    "configured": Answer,
    "isolated": Isolated,
    "diagnostics": Answer,
    "firmware_ready": FirmwareReady,
    "firmware_chunk_ok": FirmwareChunkOk,
    "firmware_stored": Answer,
}
"""What the app checks in each answer it expects."""


def check_answer(request: str, expect: str, answer: dict[str, Any] | None) -> dict[str, Any]:
    """The pack's answer to `request`, of type `expect`, checked before the app reads it.

    AppError names the request and the problem (the field, never its value) for no answer,
    a refusal, another type or a malformed answer.
    """
    if answer is None:
        raise PackSilentError(f"{request}: no answer from the pack controller")
    if answer["type"] == "error":
        raise PackRefusedError(f"{request}: the pack refused: {answer.get('reason')}")
    if answer["type"] != expect:
        raise AppError(f"{request}: expected {expect!r}, got {answer['type']!r}")
    try:
        ANSWERS[expect].model_validate(answer)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
            for error in exc.errors(include_input=False)[:3]
        )
        raise AppError(f"{request}: a malformed {expect!r} ({problems})") from None
    return answer


@dataclass
class App:
    """The app's side: its keystore, the API-Bridge and the control channel to the pack."""

    state_dir: Path
    endpoint: ControlEndpoint
    bridge: ApiBridgeClient
    audit: AuditLog | None = None
    progress: Progress = field(default=NO_PROGRESS, repr=False)  # what long steps wait for
    keystore: TypedStore[AppKeys] = field(init=False)
    host_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.keystore = app_keystore(self.state_dir)
        try:
            self.host_id = host_id(self.keystore)
        except StoreCorruptError as exc:
            # No slot verifies: the app's keys are lost. Say so and stop; never write a new
            # identity over the damaged keystore.
            if self.audit is not None:
                self.audit.record("keystore.corrupt", role="app", problem=str(exc))
            log.error("keystore corrupt: %s (key recovery needed)", exc)
            raise KeystoreLostError(
                f"the app's keystore is damaged and its keys are lost ({exc});"
                " key recovery (Workflow C) is needed"
            ) from None
        self._session: Session | None = None
        self.telemetry: dict[int, dict[str, dict[str, Any]]] = {}
        self.telemetry_frames = 0
        self.telemetry_frames_by_module: Counter[int] = Counter()  # by the module id it names
        self.dropped: Counter[str] = Counter()
        self.pack_status: dict[str, int] = {}
        self.alerts: list[dict[str, int]] = []
        self.last_status_at: float | None = None  # monotonic time of the last sealed status
        self.connected_at: float | None = None  # monotonic time of the last handshake
        self.listening = False  # whether on_frame is fed with the bus's frames

    def _audit(self, event: str, **fields: str | int | bool | None) -> None:
        if self.audit is not None:
            self.audit.record(event, role="app", host=self.host_id, **fields)

    def _ask(
        self,
        message: dict[str, Any],
        expect: str,
        *,
        plain: bool = False,
        timeout_s: float = REPLY_TIMEOUT_S,
    ) -> dict[str, Any]:
        message = {**message, REQUEST_ID: new_request_id()}  # the same id for every retry
        with self.progress.waiting(f"{message['type']}: waiting for the pack controller"):
            answer = self._request(message, plain=plain, timeout_s=timeout_s)
        return check_answer(message["type"], expect, answer)

    def _request(
        self, message: dict[str, Any], *, plain: bool, timeout_s: float
    ) -> dict[str, Any] | None:
        sealed = self.session is not None and not plain
        answer = request(
            self.endpoint,
            message,
            attempts=REPLY_ATTEMPTS,
            timeout_s=timeout_s,
            plain=plain,
            give_up=self.link_silent if sealed else None,
        )
        if answer is None and sealed:
            # A sealed request went unanswered through every retry: the pack may have lost
            # its end of the session (it restarted). A handshake brings the link back without
            # any key on the bus; then the request goes once more, under the same request id.
            log.warning("%s: no answer on the sealed link; re-establishing it", message["type"])
            try:
                self.connect()
            except AppError as exc:
                raise PackSilentError(
                    f"{message['type']}: no answer from the pack controller, and the link "
                    f"could not be re-established ({exc})"
                ) from None
            answer = request(self.endpoint, message, attempts=REPLY_ATTEMPTS, timeout_s=timeout_s)
        return answer

    def _api_bridge(self, what: str) -> AbstractContextManager[None]:
        """A progress step around a call to the API-Bridge (it retries a while when down)."""
        return self.progress.waiting(
            f"{what}: waiting for the API-Bridge at {self.bridge.config.base_url}"
        )

    @property
    def session(self) -> Session | None:
        """The app link's session, once the channel is upgraded."""
        return self._session

    @session.setter
    def session(self, session: Session | None) -> None:
        self._session = session
        self.endpoint.session = session

    def discover(self) -> dict[str, Any]:
        """Ask the pack who and how it is (plain when no session is up)."""
        return self._ask({"type": "discover"}, "device_info", plain=self.session is None)

    def bootstrap(self, *, replaces: str | None = None) -> dict[str, Any]:
        """Bring a factory-default pack to Bootstrap Complete with an encrypted app link.

        With `replaces` (key recovery), the old app-pack LCT is revoked and replaced instead
        of a new one being created.

        A transfer cut short (the pack restarted, its answers lost through every retry) is
        started again from discovery, up to BOOTSTRAP_ATTEMPTS times. The app stores the keys
        as pending before it sends them, so each new attempt knows where the last one got to:
        a pack in factory state never stored them (the pending LCT is replaced and the
        exchange runs again); a pack holding keys stored ours and only its acknowledgement
        was lost, which the handshake proves without any key crossing the bus.
        """
        for attempt in range(1, BOOTSTRAP_ATTEMPTS + 1):
            try:
                step = "bootstrap" + (
                    f" (attempt {attempt} of {BOOTSTRAP_ATTEMPTS})" if attempt > 1 else ""
                )
                with self.progress.waiting(step):
                    return self._bootstrap_once(replaces, resuming=attempt > 1)
            except (PackSilentError, PackRefusedError) as exc:
                if attempt == BOOTSTRAP_ATTEMPTS:
                    raise
                log.warning("bootstrap attempt %d cut short (%s): starting again", attempt, exc)
                self._audit("bootstrap.retried", attempt=attempt, reason=str(exc))
                time.sleep(BOOTSTRAP_RETRY_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def _bootstrap_once(self, replaces: str | None, *, resuming: bool) -> dict[str, Any]:
        info = self.discover()
        stored = self.keystore.load()
        has_keys = stored is not None and stored.lct_id is not None
        pending = stored if has_keys and stored is not None and not stored.delivered else None
        if info["state"] != 1 and (pending is not None or (resuming and has_keys)):
            # our delivery reached the pack; the handshake proves it holds the same link key
            answer = self.connect()
            if pending is not None:
                self.keystore.save(pending.model_copy(update={"delivered": True}))
                self._audit("keys.delivered", link=self.link().fingerprint, lct_id=pending.lct_id)
            return answer
        if info["state"] != 1:
            raise AppError(
                f"bootstrap: the pack is in state {info['state']} ({info['state_name']}),"
                " not Factory Default"
            )
        serial = str(info["serial"])
        with self._api_bridge("registering the app and the pack"):
            app = self.bridge.register_component(self.host_id, "modbatt app")
            pack = self.bridge.register_component(
                f"MODBATT-PACK-{serial}", "modbatt pack controller"
            )
        # A pending LCT never reached a pack (it is in factory state): replace it rather than
        # leave it active on the API-Bridge.
        old_lct = pending.lct_id if pending is not None else replaces
        try:
            with self._api_bridge("creating the app-pack LCT"):
                if old_lct is None:
                    created = self.bridge.create_lct(
                        app.component_id, pack.component_id, "app-pack"
                    )
                else:
                    reason = "key recovery" if pending is None else "bootstrap retried"
                    created = self.bridge.replace_lct(old_lct, reason)
        except KeyHalfError as exc:
            # Say exactly what is kept: the keystore has held the app's host id since the app
            # first ran (its identity on the API-Bridge, so that a retry registers the same
            # component); no key and no pending LCT were written, and the pack is untouched.
            raise KeyHalfError(
                exc.field,
                exc.problem,
                kept=f"no key was stored and the pack was not changed; the app's keystore "
                f"keeps only its host id {self.host_id} (not a key), as before",
            ) from None
        keys = created.keys
        self._audit(
            "lct.created",
            lct_id=created.record.lct_id,
            app=app.component_id,
            pack=pack.component_id,
        )
        ephemeral = Ephemeral()
        hello = self._ask(
            {
                "type": "bootstrap_hello",
                "app_id": self.host_id,
                "public_key": ephemeral.public.hex(),
            },
            "bootstrap_hello_ack",
        )
        pack_public = bytes.fromhex(hello["public_key"])
        try:
            shared = ephemeral.shared_secret(pack_public)
        except KeyAgreementError as exc:
            raise AppError(f"bootstrap_hello: {exc}") from None
        sealing = delivery_keys(shared, self.host_id, serial, ephemeral.public, pack_public)
        delivery = seal(
            sealing.delivery,
            DELIVERY_LABEL,
            {
                "pack_component_id": pack.component_id,
                "pack_device_key_half": keys.device_key_half_b.get_secret_value().hex(),
                "pack_lct_key_half": keys.lct_key_half_b.get_secret_value().hex(),
                "app_device_key_half": keys.device_key_half_a.get_secret_value().hex(),
                "app_component_id": app.component_id,
                "lct_id": created.record.lct_id,
            },
        )
        record = AppKeys(
            host_id=self.host_id,
            app_component_id=app.component_id,
            app_device_key_half=keys.device_key_half_a.get_secret_value().hex(),
            app_lct_key_half=keys.lct_key_half_a.get_secret_value().hex(),
            pack_component_id=pack.component_id,
            lct_id=created.record.lct_id,
            pack_device_key_half=keys.device_key_half_b.get_secret_value().hex(),
            link_dh_secret=shared.hex(),
            delivered=False,
        )
        self.keystore.save(record)  # pending: whatever happens next, the app knows its keys
        ack = self._ask({"type": "key_delivery", "sealed": delivery.hex()}, "key_ack")
        try:
            receipt = unseal(sealing.acknowledgement, ACK_LABEL, bytes.fromhex(ack["sealed"]))
        except KeyAgreementError as exc:
            raise AppError(f"key_delivery: the key acknowledgement: {exc}") from None
        link = self.link()
        if receipt.get("link") != link.fingerprint:
            raise AppError("bootstrap: the pack derived another link key than the app")
        self.keystore.save(record.model_copy(update={"delivered": True}))
        self._audit("keys.delivered", link=link.fingerprint, lct_id=created.record.lct_id)
        return self.connect()

    def link(self) -> LinkKey:
        """The app link's key, rebuilt from the keystore."""
        keys = self.keystore.load()
        link = None if keys is None else app_link_key(keys)
        if link is None:
            raise AppError("no app link keys in the keystore: bootstrap first")
        return link

    def connect(self) -> dict[str, Any]:
        """Run the session handshake and check the upgraded channel (the communication test)."""
        keys = self.keystore.load()
        assert keys is not None and keys.app_component_id and keys.pack_component_id
        self.session = None
        self.last_status_at = None  # the new session's status frames are due from now
        with self.progress.waiting("the channel upgrade (session handshake)"):
            return self._connect(keys)

    def _connect(self, keys: AppKeys) -> dict[str, Any]:
        assert keys.app_component_id and keys.pack_component_id
        initiator = Initiator(self.link(), keys.app_component_id, keys.pack_component_id)
        response = self._ask(
            {"type": "handshake_init", "data": initiator.start().hex()},
            "handshake_response",
            plain=True,
        )
        try:
            finish, session = initiator.on_response(bytes.fromhex(response["data"]))
        except HandshakeError as exc:
            raise AppError(f"handshake_init: {exc}") from None
        self.session = session  # the answer must come sealed under the new session
        try:
            answer = self._ask(
                {"type": "handshake_finish", "data": finish.hex()}, "upgraded", plain=True
            )
        except AppError as exc:
            self.session = None
            raise AppError(f"connect: the upgraded channel did not answer: {exc}") from None
        self.connected_at = time.monotonic()
        self._audit(
            "session.established", link=self.link().fingerprint, level=int(answer["security_level"])
        )
        return answer

    def _linked(self, step: str) -> Session:
        """Make sure the app link is up before a sealed request.

        Connects (a handshake) when the app holds delivered keys but no session, as after a
        failed reconnect; AppError when it holds no keys for a pack.
        """
        if self.session is None:
            keys = self.keystore.load()
            if keys is None or keys.lct_id is None or not keys.delivered:
                raise AppError(f"{step}: bootstrap first (the app holds no keys for a pack)")
            self.connect()
        if self.session is None:  # connect raises when it fails; this is for the type checker
            raise AppError(f"{step}: the link is not up")
        return self.session

    def link_silent(self) -> bool:
        """Whether the link is up on our side but the pack's sealed status frames stopped.

        The pack seals one a second (PROTOCOL.md §8a). Silence for LINK_SILENCE_S, counted
        from the last one or from the handshake, means its end of the session is gone: torn
        down by forgeries on CAN 1 (it cannot seal an alert then), or the pack restarted. An
        app that does not listen to the bus (`on_frame` never called) cannot tell, and never
        calls its link silent.
        """
        if self.session is None or not self.listening or self.connected_at is None:
            return False
        since = self.connected_at if self.last_status_at is None else self.last_status_at
        return time.monotonic() - since > LINK_SILENCE_S

    def keep_link(self) -> bool:
        """Run the handshake again when the link went silent; True when it did.

        No key crosses the bus, so no operator is needed. AppError when the pack does not
        answer (the next call tries again).
        """
        if not self.link_silent():
            return False
        log.warning("no status from the pack for %.0f s: re-establishing the link", LINK_SILENCE_S)
        self._audit("link.silent", silent_ms=int(LINK_SILENCE_S * 1000))
        self.connect()
        return True

    def start_link_keeper(self, interval_s: float = 1.0) -> threading.Event:
        """Call `keep_link` every `interval_s` from a thread; set the returned event to stop."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval_s):
                try:
                    self.keep_link()
                except ModbattError as exc:
                    log.warning("link not re-established yet: %s", exc)

        threading.Thread(target=run, name="app-link-keeper", daemon=True).start()
        return stop

    def pair(self, unique_id: int, *, replaces: str | None = None) -> dict[str, Any]:
        """Pair a registered module (seed Workflow A).

        Register it, create the pack-module LCT, and hand its keys to the pack, sealed; the
        pack pairs the module on CAN 2.
        """
        self._linked("pair")
        keys = self.keystore.load()
        if keys is None or keys.pack_component_id is None:
            raise AppError("pair: bootstrap first")
        with self.progress.waiting(f"pairing module {unique_id}"):
            return self._pair(keys, keys.pack_component_id, unique_id, replaces)

    def _pair(
        self, keys: AppKeys, pack: str, unique_id: int, replaces: str | None
    ) -> dict[str, Any]:
        with self._api_bridge(f"registering module {unique_id} and its LCT"):
            if replaces is None:
                module = self.bridge.register_component(
                    f"MODBATT-MODULE-{unique_id}", "battery module"
                ).component_id
                created = self.bridge.create_lct(pack, module, "pack-module")
            else:  # key recovery: the old LCT is revoked, its replacement joins the same two
                created = self.bridge.replace_lct(replaces, "key recovery")
                module = created.record.component_b
        halves = created.keys
        self._audit(
            "lct.created",
            lct_id=created.record.lct_id,
            pack=pack,
            module=module,
        )
        result = self._ask(
            {
                "type": "pair_module",
                "unique_id": unique_id,
                "module_component_id": module,
                "lct_id": created.record.lct_id,
                "pack_device_key_half": halves.device_key_half_a.get_secret_value().hex(),
                "pack_lct_key_half": halves.lct_key_half_a.get_secret_value().hex(),
                "module_device_key_half": halves.device_key_half_b.get_secret_value().hex(),
                "module_lct_key_half": halves.lct_key_half_b.get_secret_value().hex(),
            },
            "pair_result",
            timeout_s=10.0,
        )
        if result["unique_id"] != unique_id:
            raise AppError(f"pair_module: the pack paired module {result['unique_id']}")
        keys = self.keystore.load() or keys
        self.keystore.save(
            keys.model_copy(
                update={"module_lcts": {**keys.module_lcts, str(unique_id): created.record.lct_id}}
            )
        )
        self._audit(
            "module.paired",
            unique_id=unique_id,
            module_id=int(result["module_id"]),
            link=str(result["link"]),
        )
        return result

    def configure(
        self, *, max_state: int | None = None, bridge_unpaired_modules: bool | None = None
    ) -> dict[str, Any]:
        """Operational parameters and security policy (Workflow B.1), sealed, kept in flash."""
        self._linked("configure")
        request: dict[str, Any] = {"type": "configure"}
        if max_state is not None:
            request["max_state"] = max_state
        if bridge_unpaired_modules is not None:
            request["bridge_unpaired_modules"] = bridge_unpaired_modules
        answer = self._ask(request, "configured")
        self._audit(
            "pack.configured", max_state=max_state, bridge_unpaired_modules=bridge_unpaired_modules
        )
        return answer

    def isolate_all(self) -> dict[str, Any]:
        """Every module Off at once (ALL_ISOLATE), the emergency stop.

        The pack sends it at once: plain for the modules it reaches plain, and a sealed copy
        to each paired module (which takes no plain one).
        """
        self._linked("isolate")
        answer = self._ask({"type": "isolate"}, "isolated")
        self._audit("pack.isolated", sealed_copies=len(answer["sealed"]))
        return answer

    def command_state(
        self,
        module_id: int,
        state: int,
        hv_bus_voltage: float = 0.0,
        *,
        every_plain_module: bool = False,
    ) -> None:
        """Ask a module for a state (Off 0 ... On 3) (Workflow B.3).

        A module that is not paired takes the command plain, and the module firmware ignores
        the module id in it: every other unpaired module on CAN 2 takes it too. Then the
        command is refused (`PlainCommandError`, naming them) unless `every_plain_module`
        says the operator wants exactly that.

        A STATE_CHANGE sealed with the app link, which the pack's gateway reseals for the
        module's own link. It has two bytes, module id and state, as the module firmware takes
        it (it ignores any other length); `hv_bus_voltage` is kept for callers of earlier
        versions and not sent.
        """
        del hv_bus_voltage  # the firmware's STATE_CHANGE has no room for it (DLC 2)
        session = self._linked("command")
        modules = {int(m["module_id"]): m for m in self.status()["modules"]}
        target = modules.get(module_id)
        if target is not None and not target["paired"]:
            also = sorted(i for i, m in modules.items() if i != module_id and not m["paired"])
            if also and not every_plain_module:
                raise PlainCommandError(
                    f"module {module_id} is not paired: a plain command reaches every unpaired "
                    f"module (the module firmware ignores the id in it), here also modules "
                    f"{', '.join(map(str, also))}. Pair them, or confirm that all of them "
                    "should change state (--every-plain-module)."
                )
        can_id, payload = catalogue().encode(
            "STATE_CHANGE", module_id, {"ModuleId": module_id, "RequestedState": state}
        )
        for frame_id, data in frames_of(session.seal(can_id, payload)):
            self.endpoint.channel.port.send(frame_id, data)
        self._audit("module.commanded", module_id=module_id, state=state)

    def diagnostics(self) -> dict[str, Any]:
        """Counters, links, flash and audit log health, firmware images (sealed)."""
        self._linked("diagnostics")
        return self._ask({"type": "diagnostics"}, "diagnostics")

    def registrations(self) -> dict[str, Any]:
        """What the API-Bridge holds for the app's pack: the workflow's "blockchain sync".

        Read only: the app's and the pack's components (their status) and the status of
        every LCT the app uses (app-pack, and each paired module's). `problems` lists each
        one that is not as it should be (a component not registered, an LCT suspended or
        revoked elsewhere), for a technician to act on before keys stop working.
        """
        keys = self.keystore.load()
        if keys is None or keys.lct_id is None:
            raise AppError("registrations: bootstrap first (the app holds no keys for a pack)")
        components = {"app": keys.app_component_id, "pack": keys.pack_component_id}
        lcts = {"app-pack": keys.lct_id} | {
            f"module {unique_id}": lct_id for unique_id, lct_id in keys.module_lcts.items()
        }
        with self._api_bridge("checking the registrations and LCTs"):
            component_status = {
                name: self.bridge.get_component(component_id).status
                for name, component_id in components.items()
                if component_id is not None
            }
            lct_status = {name: self.bridge.get_lct(lct_id).status for name, lct_id in lcts.items()}
        problems = [
            f"the {name} component is {status}"
            for name, status in component_status.items()
            if status != "registered"
        ] + [
            f"the {name} LCT is {status}"
            for name, status in lct_status.items()
            if status != "active"
        ]
        return {"components": component_status, "lcts": lct_status, "problems": problems}

    def update_firmware(self, image: bytes, version: str) -> dict[str, Any]:
        """Send a firmware image in sealed chunks; the pack stores it only if it verifies."""
        self._linked("firmware")
        digest = hashlib.sha256(image).hexdigest()
        ready = self._ask(
            {"type": "firmware_begin", "version": version, "size": len(image), "sha256": digest},
            "firmware_ready",
        )
        size = int(ready["chunk"])
        with self.progress.counting(f"firmware {version}: bytes sent", len(image)) as advance:
            for index, start in enumerate(range(0, len(image), size)):
                chunk = image[start : start + size]
                taken = self._ask(
                    {"type": "firmware_chunk", "index": index, "data": chunk.hex()},
                    "firmware_chunk_ok",
                )
                if taken["index"] != index:
                    raise AppError(
                        f"firmware_chunk: sent chunk {index}, the pack took {taken['index']}"
                    )
                advance(len(chunk))
        stored = self._ask({"type": "firmware_end"}, "firmware_stored")
        self._audit("firmware.sent", version=version, sha256=digest)
        return stored

    def on_frame(self, can_id: int, data: bytes, _timestamp: float = 0.0) -> None:
        """Telemetry bridged by the pack (sealed with the app link): open, decode, keep."""
        self.listening = True
        session = self.session
        base = can_id >> 18
        if session is not None and base in (STATUS_BASE, ALERT_BASE) and is_encrypted(can_id):
            self._pack_frame(session, can_id, data)
            return
        if session is None or not 0x500 <= base < 0x510:
            return
        if not is_encrypted(can_id):
            self.dropped["downgrade"] += 1  # plain telemetry on an upgraded app bus
            return
        try:
            plain = session.open(can_id, data)
        except FrameRejectedError as exc:
            self.dropped[exc.reason] += 1
            return
        except SessionError:
            self.dropped["no_session"] += 1  # torn down: `connect` sets up a new one
            return
        if plain is None:
            return
        decoded = catalogue().decode(logical_id(can_id), plain)
        if decoded is not None:
            self.telemetry.setdefault(decoded.node, {})[decoded.name] = decoded.values
            self.telemetry_frames += 1
            self.telemetry_frames_by_module[decoded.node] += 1

    def recover(self, *, confirm: bool) -> dict[str, Any]:
        """Workflow C: bring back a pack that lost its keys.

        A pack that still holds its keys only needs the channel upgrade again. A pack back in
        Factory Default (lost or corrupt flash) needs a new bootstrap: that is never automatic
        and needs the operator's `confirm`; it replaces the LCTs on the API-Bridge (the old
        keys are revoked), delivers new keys in a fresh X25519 exchange, and pairs again every
        module the app had paired.
        """
        self.session = None
        info = self.discover()
        if info["state"] != 1:
            return self.connect()
        if not confirm:
            raise AppError(
                "recover: the pack is in Factory Default"
                + (f" ({info['flash_problem']})" if info.get("flash_problem") else "")
                + "; a new bootstrap needs the operator's confirmation (--confirm-rebootstrap)"
            )
        keys = self.keystore.load()
        old_lct = None if keys is None else keys.lct_id
        self._audit(
            "rebootstrap.confirmed",
            lct_id=old_lct,
            serial=str(info["serial"]),
            flash_problem=info.get("flash_problem"),
        )
        upgraded = self.bootstrap(replaces=old_lct)
        modules = {} if keys is None else dict(keys.module_lcts)
        paired: list[int] = []
        offline: list[int] = []
        if modules:
            online = self._modules_back({int(unique) for unique in modules})
            with self.progress.counting("pairing the modules again", len(modules)) as advance:
                for unique, lct_id in modules.items():
                    if int(unique) in online:
                        self.pair(int(unique), replaces=lct_id)
                        paired.append(int(unique))
                    else:
                        self._retire_module_lct(int(unique), lct_id)
                        offline.append(int(unique))
                    advance(1)
        if paired:  # the pack's state and level now, not the bootstrap's
            now = self.status()
            upgraded = {**upgraded, "state": now["state"], "security_level": now["security_level"]}
        return {**upgraded, "repaired_modules": len(paired), "offline_modules": offline}

    def _modules_back(self, expected: set[int]) -> set[int]:
        """Which of `expected` the restarted pack has registered again, waiting a while.

        The pack's module table starts empty when it restarts, so a module in it has
        announced itself since: it is on the bus. Its "online" flag is no guide here, since
        the pack cannot open a paired module's sealed telemetry until it is paired again.
        A module still missing after MODULES_BACK_S is taken as unplugged.
        """
        deadline = time.monotonic() + MODULES_BACK_S
        with self.progress.waiting("waiting for the modules to register with the pack again"):
            while True:
                listed = {int(m["unique_id"]) for m in self.status()["modules"]} & expected
                if listed == expected or time.monotonic() >= deadline:
                    return listed
                time.sleep(0.25)

    def _retire_module_lct(self, unique_id: int, lct_id: str) -> None:
        """An offline module's LCT at key recovery: its pack half is gone, so it is revoked.

        The module is forgotten by the app too: once it is back, it is paired as a new one
        (`pair --all` finds it), under a new LCT.
        """
        with self._api_bridge(f"revoking the LCT of offline module {unique_id}"):
            self.bridge.update_lct_status(lct_id, "revoked", "key recovery: module offline")
        keys = self.keystore.load()
        if keys is not None:
            remaining = {k: v for k, v in keys.module_lcts.items() if k != str(unique_id)}
            self.keystore.save(keys.model_copy(update={"module_lcts": remaining}))
        self._audit("lct.revoked", lct_id=lct_id, unique_id=unique_id, reason="module offline")

    def _pack_frame(self, session: Session, can_id: int, data: bytes) -> None:
        try:
            plain = session.open(can_id, data)
        except (FrameRejectedError, SessionError) as exc:
            self.dropped[getattr(exc, "reason", "no_session")] += 1
            return
        if plain is None:
            return
        try:
            if can_id >> 18 == STATUS_BASE:
                self.pack_status = parse_pack_status(plain)
                self.last_status_at = time.monotonic()
            else:
                self.alerts.append(parse_alert(plain))
        except StatusFrameError as exc:
            self.dropped["malformed"] += 1
            log.warning("%s (dropped)", exc)

    def status(self) -> dict[str, Any]:
        """The pack's device information, sealed once the channel is upgraded."""
        return self.discover()
