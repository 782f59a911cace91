"""The app's side of CAN 1 under bad input: whatever the pack sends is checked before use.

CAN 1 is not trusted (docs/SECURITY.md), so neither is anything that claims to come from the
pack controller: an answer to a control request, a status or alert frame, an ISO-TP payload.
The app refuses a bad answer with an `AppError` that names the step and the problem (never a
KeyError, TypeError or ValueError from deep inside, never key bytes), and its frame handler,
which runs on the bus's notifier thread, never raises. The store and flash files each role
reads back at start-up are held to the same rule with `StoreCorruptError`.

Sans-I/O throughout: the app's control endpoint is a `Peer` answered in process by a genuine
`ControlHandlers.handle` over the pack's keys, one of whose answers is replaced by a malformed
one; the API-Bridge is a stand-in that hands out random key halves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import SecretBytes

from modbatt import compose_id
from modbatt.api_bridge.client import ApiBridgeClient
from modbatt.app.app import App, AppError
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.isotp_link import MessageChannel, with_check, without_check
from modbatt.cli.app_commands import act
from modbatt.errors import FrameRejectedError, InvalidArgumentError
from modbatt.pack.control import ControlHandlers, Handler
from modbatt.pack.keys import PackKeys
from modbatt.protocol.bootstrap import ACK_LABEL, delivery_keys
from modbatt.protocol.catalogue import catalogue
from modbatt.protocol.control import APP_TO_PACK, PACK_TO_APP, AnswerCache, decode, encode
from modbatt.protocol.status import StatusFrameError, parse_alert, parse_pack_status
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
from modbatt.state.stores import HEADER, MAGIC, AuditLog, StoreCorruptError, encode_record
from tests.conftest import make_ends

# --- strategies: any JSON, and values close to a valid answer ----------------------------------

SPECIAL: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 10**100, 1.5, float("inf"),
     float("nan"), "", "zz", "0", "0g" * 32, "00" * 32, "ff" * 64, "AB" * 16, [], {}, [1]]
)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | SPECIAL,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
JSON_OBJECTS = st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6)


def near(value: Any) -> st.SearchStrategy[Any]:
    """Values close to a valid one: off by one, huge, negative, truncated, extended, bad hex."""
    if isinstance(value, dict):
        return mutated_object(value).map(lambda mutation: mutation[0])
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return st.integers(0, len(value) - 1).flatmap(
            lambda i: near(value[i]).map(lambda item: [*value[:i], item, *value[i + 1 :]])
        ) | st.just([*value, *value, *value])
    if isinstance(value, bool):
        return st.sampled_from([not value, int(value), str(value).lower(), None])
    if isinstance(value, int):
        return st.sampled_from(
            [value - 1, value + 1, -value, -1, value + 2**32, value * 2**64 + 1, float(value),
             str(value), 10**4000]
        )  # fmt: skip
    if isinstance(value, str):
        other = {"0": "1"}  # same length, other content: hex that decodes to other bytes
        return st.sampled_from(
            [value[:-1], value[:-2], value + "0", value + "00", value.upper(), value[1:],
             " " + value, "g" + value[1:], "", value * 40, value[::-1],
             other.get(value[:1], "0") + value[1:], value[:-1] + other.get(value[-1:], "0")]
        )  # fmt: skip
    return JSON_VALUES


def mutated_object(valid: dict[str, Any]) -> st.SearchStrategy[tuple[dict[str, Any], str | None]]:
    """A JSON object close to `valid`, and the field that was changed (None: not one field).

    A field missing, a field of any JSON type or close to its valid value, extra fields, or
    any object with the same field names.
    """
    fields = sorted(name for name in valid if name != "type")
    options: list[st.SearchStrategy[tuple[dict[str, Any], str | None]]] = [
        st.dictionaries(
            st.text(max_size=12).filter(lambda name: name not in valid),
            JSON_VALUES,
            min_size=1,
            max_size=3,
        ).map(lambda extra: ({**extra, **valid}, None)),
        st.dictionaries(st.sampled_from(fields) | st.text(max_size=8), JSON_VALUES, max_size=6).map(
            lambda other: ({**other, **{k: v for k, v in valid.items() if k == "type"}}, None)
        )
        if fields
        else st.nothing(),
    ]
    if fields:
        options.append(
            st.sampled_from(fields).map(
                lambda name: ({k: v for k, v in valid.items() if k != name}, name)
            )
        )
        options.append(
            st.sampled_from(fields).flatmap(
                lambda name: (JSON_VALUES | near(valid[name])).map(
                    lambda value: ({**valid, name: value}, name)
                )
            )
        )
    return st.one_of(options)


def mutated_answer(valid: dict[str, Any]) -> st.SearchStrategy[tuple[dict[str, Any], str | None]]:
    """An answer close to `valid`, or an answer of another type (an error with any reason...)."""
    other_type = st.builds(
        lambda kind, rest: ({**rest, "type": kind}, None),
        st.sampled_from(["error", "device_info", "upgraded", "key_ack", "", "no_such_answer"]),
        st.fixed_dictionaries({}, optional={"reason": JSON_VALUES, "in_reply_to": JSON_VALUES}),
    )
    return mutated_object(valid) | other_type


# --- the app's surroundings, in process -----------------------------------------------------

Respond = Callable[[dict[str, Any]], dict[str, Any] | None]


class Peer:
    """The app's control endpoint, answered in process; every message goes through its JSON."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.session: Any = None
        self.dropped: Counter[str] = Counter()
        self.answers = AnswerCache()  # echoes the request id, as the pack's runtime does
        self._answer: bytes | None = None

    def send(self, message: dict[str, Any], *, plain: bool = False) -> None:
        answer = self.answers.respond(decode(encode(message)), self.respond)
        self._answer = None if answer is None else encode(answer)

    def recv(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        data, self._answer = self._answer, None
        return None if data is None else decode(data)


class Bridge:
    """The API-Bridge calls the app makes: components by name, LCTs with random halves."""

    config = SimpleNamespace(base_url="in-process")

    def __init__(self) -> None:
        self.secrets: list[bytes] = []
        self.lcts: dict[str, tuple[str, str]] = {}  # lct id -> its two components

    def register_component(self, component_data: str, context: str = "") -> Any:
        digest = hashlib.sha256(component_data.encode()).hexdigest()[:12]
        return SimpleNamespace(component_id=f"COMP-fuzz-{digest}")

    def create_lct(self, component_a: str, component_b: str, context: str = "") -> Any:
        halves = [os.urandom(64) for _ in range(4)]
        self.secrets += halves
        names = ("device_key_half_a", "lct_key_half_a", "device_key_half_b", "lct_key_half_b")
        keys = SimpleNamespace(**{n: SecretBytes(h) for n, h in zip(names, halves, strict=True)})
        lct_id = f"lct_{uuid.uuid4().hex}"
        self.lcts[lct_id] = (component_a, component_b)
        record = SimpleNamespace(lct_id=lct_id, component_a=component_a, component_b=component_b)
        return SimpleNamespace(record=record, keys=keys)

    def replace_lct(self, lct_id: str, context: str = "") -> Any:
        """A new LCT between the same two components (the old one revoked)."""
        return self.create_lct(*self.lcts[lct_id], context)

    def update_lct_status(self, lct_id: str, status: str, context: str = "") -> Any:
        return SimpleNamespace(lct_id=lct_id, status=status)


def new_app(state_dir: Path, peer: Peer, bridge: Bridge) -> App:
    return App(
        state_dir,
        cast(ControlEndpoint, peer),
        cast(ApiBridgeClient, bridge),
        AuditLog(state_dir / "audit.jsonl"),
    )


STEPS = {
    "discover", "bootstrap_hello", "key_delivery", "handshake_init", "handshake_finish",
    "connect", "pair_module", "configure", "diagnostics", "firmware_begin", "firmware_chunk",
    "firmware_end", "bootstrap", "recover",
}  # fmt: skip


def secrets_of(app: App, bridge: Bridge) -> list[bytes]:
    keys = app.keystore.load()
    if keys is None or keys.link_dh_secret is None:
        return bridge.secrets
    return [*bridge.secrets, bytes.fromhex(keys.link_dh_secret)]


def assert_clear(exc: AppError, field: str | None, secrets: Iterable[bytes]) -> None:
    """The message names the step, the field when one was malformed, and no key bytes."""
    text = str(exc)
    event(f"refused: {text.split('(', maxsplit=1)[0][:70]}")
    assert text.split(":", 1)[0] in STEPS, text
    if field is not None and "malformed" in text:
        assert field in text, (field, text)
    for secret in secrets:
        for start in range(0, len(secret) - 7, 8):
            assert secret[start : start + 8].hex() not in text.lower()
            assert repr(secret[start : start + 8])[2:-1] not in text


# --- answers during the bootstrap ---------------------------------------------------------

MODULE_ROWS = [
    {"module_id": 1, "unique_id": 500, "online": True, "paired": False, "state": "Standby"},
    {"module_id": 2, "unique_id": 501, "online": False, "paired": True, "state": "Off"},
]


@settings(max_examples=150, deadline=None)
@given(
    step=st.sampled_from(
        ["discover", "bootstrap_hello", "key_delivery", "handshake_init", "handshake_finish"]
    ),
    data=st.data(),
)
def test_every_answer_during_the_bootstrap_is_checked(step: str, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = PackKeys("PACK-fuzz", Path(tmp) / "pack", modules_view=lambda: MODULE_ROWS)
        pack = ControlHandlers(keys, keys.handlers())
        changed: list[str | None] = [None]

        def respond(message: dict[str, Any]) -> dict[str, Any] | None:
            answer = pack.handle(message)
            if message["type"] == step and answer is not None:
                answer, changed[0] = data.draw(mutated_answer(answer), label=step)
            return answer

        bridge = Bridge()
        app = new_app(Path(tmp) / "app", Peer(respond), bridge)
        try:
            # a refused step starts the bootstrap again after a pause: no pause in process
            with mock.patch("modbatt.app.bootstrap.BOOTSTRAP_RETRY_S", 0.0):
                upgraded = app.bootstrap()
        except AppError as exc:
            assert_clear(exc, changed[0], secrets_of(app, bridge))
        else:
            assert upgraded["type"] == "upgraded" and app.session is not None


KEY_ACK_BODIES = st.one_of(
    st.binary(max_size=120),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    JSON_OBJECTS.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"status": JSON_VALUES, "link": JSON_VALUES}).map(
        lambda value: json.dumps(value).encode()
    ),
    st.integers(1000, 3000).map(lambda depth: b"[" * depth),
)


@settings(max_examples=60, deadline=None)
@given(body=KEY_ACK_BODIES)
def test_a_key_acknowledgement_that_verifies_but_says_anything_else_is_refused(
    body: bytes,
) -> None:
    """Sealed with the right key, so it opens: its content is checked all the same."""
    with tempfile.TemporaryDirectory() as tmp:
        pack_keys = PackKeys("PACK-fuzz", Path(tmp) / "pack")
        pack = ControlHandlers(pack_keys, pack_keys.handlers())

        def respond(message: dict[str, Any]) -> dict[str, Any] | None:
            if message["type"] != "key_delivery" or pack_keys._bootstrap is None:
                return pack.handle(message)
            ephemeral, app_id, shared = pack_keys._bootstrap
            keys = delivery_keys(
                shared, app_id, pack_keys.serial, pack_keys._app_public, ephemeral.public
            )
            pack.handle(message)
            nonce = os.urandom(12)
            sealed = nonce + AESGCM(keys.acknowledgement).encrypt(nonce, body, ACK_LABEL)
            return {"type": "key_ack", "sealed": sealed.hex()}

        bridge = Bridge()
        app = new_app(Path(tmp) / "app", Peer(respond), bridge)
        with pytest.raises(AppError) as refused:
            app.bootstrap()
        assert_clear(refused.value, None, secrets_of(app, bridge))


# --- answers once the link is up ------------------------------------------------------------

IMAGE = bytes(range(256)) * 10  # three chunks of 1 KiB


# Valid answers to what a running pack controller answers beyond its keys (its module side,
# configuration, diagnostics, firmware): the app's side of them is what is fuzzed here.
CANNED: dict[str, Handler] = {
    "pair_module": lambda m: {
        "type": "pair_result", "module_id": 1, "unique_id": m["unique_id"],
        "link": "0123456789abcdef", "state": 4, "security_level": 3,
    },
    "configure": lambda m: {"type": "configured", "max_state": 1},
    "diagnostics": lambda m: {
        "type": "diagnostics", "gateway": {"received": 1}, "links": {"0": {"replay": 0}},
        "flash_problem": None, "audit_log": "intact", "firmware": [],
    },
    "firmware_begin": lambda m: {"type": "firmware_ready", "chunk": 1024},
    "firmware_chunk": lambda m: {"type": "firmware_chunk_ok", "index": m["index"]},
    "firmware_end": lambda m: {"type": "firmware_stored", "version": "1.2.3", "size": 2560},
}  # fmt: skip


@dataclass
class Linked:
    app: App
    pack: ControlHandlers
    peer: Peer
    bridge: Bridge


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Linked]:
    """An app bootstrapped with a pack controller, in process."""
    state_dir = tmp_path_factory.mktemp("linked")
    keys = PackKeys("PACK-linked", state_dir / "pack", modules_view=lambda: MODULE_ROWS)
    pack = ControlHandlers(keys, {**keys.handlers(), **CANNED})
    peer, bridge = Peer(pack.handle), Bridge()
    app = new_app(state_dir / "app", peer, bridge)
    app.bootstrap()
    yield Linked(app, pack, peer, bridge)


def cli(command: str, **options: Any) -> Callable[[App], Any]:
    """`modbatt app COMMAND` as `app_cli` runs it (after the app's own handshake)."""
    return lambda app: act(app, command, lambda _line: None, **options)


FACTORY_DEFAULT = {
    "type": "device_info", "serial": "PACK-linked", "component_id": None, "registered": False,
    "state": 1, "state_name": "Factory Default", "security_level": 0,
    "flash_problem": "pack-flash: no slot verifies (checksum mismatch)", "modules": MODULE_ROWS,
}  # fmt: skip
# what the app does -> (the requests whose answers may be bad, answers that replace the pack's)
OPERATIONS: dict[str, tuple[Callable[[App], Any], list[str], dict[str, dict[str, Any]]]] = {
    "connect": (App.connect, ["handshake_init", "handshake_finish"], {}),
    "status": (App.status, ["discover"], {}),
    "pair": (lambda app: app.pair(500), ["pair_module"], {}),
    "configure": (lambda app: app.configure(max_state=1), ["configure"], {}),
    "diagnostics": (App.diagnostics, ["diagnostics"], {}),
    "firmware": (
        lambda app: app.update_firmware(IMAGE, "1.2.3"),
        ["firmware_begin", "firmware_chunk", "firmware_end"],
        {},
    ),
    "recover": (
        lambda app: app.recover(confirm=False),
        ["discover"],
        {"discover": FACTORY_DEFAULT},
    ),
    "recover --confirm-rebootstrap": (
        lambda app: app.recover(confirm=True),
        ["discover"],
        {"discover": FACTORY_DEFAULT},
    ),
    "cli status": (cli("status"), ["discover"], {}),
    "cli pair --all": (cli("pair", unique_id=None), ["discover", "pair_module"], {}),
}


@settings(max_examples=300, deadline=None)
@given(operation=st.sampled_from(sorted(OPERATIONS)), data=st.data())
def test_every_answer_once_the_link_is_up_is_checked(
    linked: Linked, operation: str, data: st.DataObject
) -> None:
    run, requests, replaced = OPERATIONS[operation]
    linked.peer.respond = linked.pack.handle
    linked.app.connect()
    target = data.draw(st.sampled_from(requests), label="bad answer to")
    nth = data.draw(st.integers(0, 2), label="which one of them")
    seen: Counter[str] = Counter()
    changed: list[str | None] = [None]

    def respond(message: dict[str, Any]) -> dict[str, Any] | None:
        kind = message["type"]
        seen[kind] += 1
        answer = linked.pack.handle(message)
        if kind in replaced and seen[kind] == 1:
            answer = replaced[kind]
        if kind == target and seen[kind] == nth + 1 and answer is not None:
            answer, changed[0] = data.draw(mutated_answer(answer), label=kind)
        return answer

    linked.peer.respond = respond
    try:
        run(linked.app)
    except AppError as exc:
        assert_clear(exc, changed[0], secrets_of(linked.app, linked.bridge))


# --- frames: the pack status, alerts and bridged telemetry ----------------------------------

VALID_STATUS = st.tuples(
    st.integers(1, 4),
    st.integers(0, 3),
    st.integers(0, 31),
    st.integers(0, 31),
    st.integers(0, 31),
    st.integers(0, 3),
).map(bytes)
VALID_ALERT = st.tuples(
    st.integers(1, 5), st.integers(0, 31), st.binary(min_size=2, max_size=2)
).map(lambda alert: bytes(alert[:2]) + alert[2])


def one_byte_off(frame: bytes) -> st.SearchStrategy[bytes]:
    return st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)).map(
        lambda edit: frame[: edit[0]] + bytes([edit[1]]) + frame[edit[0] + 1 :]
    )


FRAME_BYTES = st.one_of(
    st.binary(max_size=64),
    VALID_STATUS,
    VALID_ALERT,
    VALID_STATUS.flatmap(one_byte_off),
    VALID_ALERT.flatmap(one_byte_off),
)


def assert_status(status: dict[str, int]) -> None:
    assert 1 <= status["state"] <= 4 and 0 <= status["security_level"] <= 3
    assert max(status["registered"], status["paired"], status["online"]) <= 31
    assert status["flags"] in range(4)


def assert_alert(alert: dict[str, int]) -> None:
    assert alert["code"] in range(1, 9) and 0 <= alert["module_id"] <= 31
    assert 0 <= alert["value"] <= 0xFFFF


@given(data=FRAME_BYTES)
def test_status_and_alert_frames_parse_or_name_the_problem(data: bytes) -> None:
    for parse, check, name in (
        (parse_pack_status, assert_status, "pack status"),
        (parse_alert, assert_alert, "alert"),
    ):
        try:
            parsed = parse(data)
        except StatusFrameError as exc:
            assert str(exc).startswith(f"{name}: ")
        else:
            check(parsed)


@pytest.fixture(scope="module")
def listening(tmp_path_factory: pytest.TempPathFactory) -> App:
    """An app whose frame handler is fed directly."""
    return new_app(tmp_path_factory.mktemp("frames"), Peer(lambda _m: None), Bridge())


BASES = st.sampled_from([0x470, 0x471]) | st.sampled_from([*range(0x500, 0x510), 0x461, 0x510])
SEALED_FRAMES = st.tuples(st.just("sealed"), BASES, st.integers(0, 0xFF), FRAME_BYTES)
RAW_FRAMES = st.tuples(
    st.just("raw"),
    BASES | st.integers(0, 0x7FF),
    st.integers(0, 0x3FFFF),
    st.binary(max_size=64),
)


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(st.one_of(SEALED_FRAMES, SEALED_FRAMES, RAW_FRAMES), max_size=24))
def test_the_frame_handler_never_raises_and_keeps_only_good_frames(
    listening: App, frames: list[tuple[str, int, int, bytes]]
) -> None:
    """Sealed by the genuine pack (with any content) or forged; E set or not; any length."""
    app, ends = listening, make_ends()
    app.session, app.alerts = ends.a, []
    names = {message.name for message in catalogue().database.messages}
    for kind, base, low, payload in frames:
        app.pack_status = {}
        app.telemetry.clear()
        if kind == "raw":
            app.on_frame((base << 18 | low) & 0x1FFF_FFFF, payload)
        else:
            try:
                sealed = ends.b.seal(compose_id(base, low), payload, fd=len(payload) > 8)
            except InvalidArgumentError:
                continue  # a length the sender cannot seal
            app.on_frame(sealed[0], sealed[1])
            if sealed[2] is not None and sealed[3] is not None:
                app.on_frame(sealed[2], sealed[3])
        if app.pack_status:
            assert_status(app.pack_status)
            event("a status frame taken")
        for alert in app.alerts:
            assert_alert(alert)
        assert all(set(by_name) <= names for by_name in app.telemetry.values())


# --- ISO-TP payloads and the control messages in them ---------------------------------------


@given(data=st.binary(max_size=300))
def test_an_isotp_payload_is_its_message_or_nothing(data: bytes) -> None:
    message = without_check(data)
    assert message is None or with_check(message) == data
    assert without_check(with_check(data)) == data


@given(message=st.binary(max_size=100), where=st.integers(0), flip=st.integers(1, 255))
def test_a_changed_isotp_payload_is_discarded(message: bytes, where: int, flip: int) -> None:
    data = bytearray(with_check(message))
    data[where % len(data)] ^= flip
    assert without_check(bytes(data)) is None
    assert without_check(bytes(data[:-1])) is None


class OneMessage:
    """A `MessageChannel` that delivers one ISO-TP message (already checked end to end)."""

    timeout_s = 0.0

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data
        self.arrived = threading.Event()

    def recv(self, timeout_s: float | None = None) -> bytes | None:
        data, self.data = self.data, None
        return data


DEEP = st.integers(1000, 3000)
CONTROL_PAYLOADS = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=120).map(lambda data: b"\x04" + data),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.builds(
        lambda kind, rest: json.dumps({**rest, "type": kind}).encode(),
        JSON_VALUES,
        JSON_OBJECTS,
    ),
    DEEP.map(lambda depth: b"[" * depth),
    DEEP.map(lambda depth: b'{"type": "device_info", "modules": ' + b"[" * depth),
)


@settings(max_examples=200, deadline=None)
@given(
    payload=CONTROL_PAYLOADS,
    sealed=st.booleans(),
    upgraded=st.booleans(),
    spent=st.booleans(),
)
def test_any_isotp_payload_is_a_control_message_or_dropped(
    payload: bytes, sealed: bool, upgraded: bool, spent: bool
) -> None:
    """Plain or sealed by the peer, on a link with or without a session, or a torn-down one."""
    ends = make_ends()
    if spent:  # the failure budget of the app's session is spent: it is torn down
        for _ in range(16):
            with contextlib.suppress(FrameRejectedError):
                ends.a.open_message(PACK_TO_APP, b"\x04" + bytes(40))
        assert ends.a.expired
    if sealed:
        try:
            payload = ends.b.seal_message(PACK_TO_APP, payload)
        except InvalidArgumentError:
            return  # too long to seal
    endpoint = ControlEndpoint(
        cast(MessageChannel, OneMessage(payload)),
        APP_TO_PACK,
        PACK_TO_APP,
        session=ends.a if upgraded else None,
    )
    message = endpoint.recv(0.0)
    if message is None:
        assert sum(endpoint.dropped.values()) == 1
    else:
        assert isinstance(message["type"], str) and not endpoint.dropped


# --- the keystore and flash files -------------------------------------------------------------


def half(label: str) -> str:
    return hashlib.sha512(label.encode()).hexdigest()


def secret(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


STORES: dict[str, tuple[Callable[[Path], TypedStore[Any]], Record]] = {
    "app": (
        app_keystore,
        AppKeys(
            host_id="host-1", app_component_id="COMP-a", app_device_key_half=half("a1"),
            app_lct_key_half=half("a2"), pack_component_id="COMP-p", lct_id="lct_1",
            pack_device_key_half=half("a3"), link_dh_secret=secret("a4"),
            module_lcts={"500": "lct_2"},
        ),
    ),
    "pack-flash": (
        pack_flash,
        PackFlash(
            pack_component_id="COMP-p", pack_device_key_half=half("p1"),
            pack_lct_key_half=half("p2"), app_device_key_half=half("p3"),
            configuration={"max_state": 3, "bridge_unpaired_modules": True},
            modules={
                "COMP-m": PairedModule(
                    module_component_id="COMP-m", pack_device_key_half=half("p4"),
                    pack_lct_key_half=half("p5"), module_device_key_half=half("p6"),
                    dh_secret=secret("p7"), lct_id="lct_2", unique_id=500,
                )
            },
            app_component_id="COMP-a", app_link_dh_secret=secret("p8"), lct_id="lct_1",
        ),
    ),
    "module-flash": (
        module_flash,
        ModuleFlash(
            module_component_id="COMP-m", module_device_key_half=half("m1"),
            module_lct_key_half=half("m2"), pack_device_key_half=half("m3"),
            pack_component_id="COMP-p", dh_secret=secret("m4"),
        ),
    ),
}  # fmt: skip
STORE_SECRETS = [
    bytes.fromhex(value)
    for _factory, record in STORES.values()
    for value in json.dumps(record.model_dump(mode="json")).split('"')
    if len(value) in (64, 128) and all(c in "0123456789abcdef" for c in value)
]


def raw_record(sequence: int, body: bytes) -> bytes:
    """A slot whose checksum verifies, whatever its payload."""
    head = HEADER.pack(MAGIC, sequence, len(body)) + body
    return head + hashlib.sha256(head).digest()


def slot_contents(valid: dict[str, Any], sequence: int) -> st.SearchStrategy[bytes | None]:
    good = encode_record(sequence, valid)
    return st.one_of(
        st.none(),
        st.just(good),
        st.binary(max_size=300),
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),
        st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)).map(
            lambda edit: good[: edit[0]] + bytes([good[edit[0]] ^ edit[1]]) + good[edit[0] + 1 :]
        ),
        mutated_object(valid).map(lambda mutation: encode_record(sequence, mutation[0])),
        JSON_OBJECTS.map(lambda payload: encode_record(sequence, payload)),
        JSON_VALUES.map(lambda value: raw_record(sequence, json.dumps(value).encode())),
        st.binary(max_size=80).map(lambda body: raw_record(sequence, body)),
        DEEP.map(lambda depth: raw_record(sequence, b'{"host_id": ' + b"[" * depth)),
    )


def assert_no_secret(text: str) -> None:
    for key in STORE_SECRETS:
        for start in range(0, len(key) - 7, 8):
            assert key[start : start + 8].hex() not in text.lower()


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(STORES)), data=st.data())
def test_any_store_file_loads_or_is_refused_as_corrupt(name: str, data: st.DataObject) -> None:
    """Both slots of each role's store hold anything: a record, nothing, or StoreCorruptError."""
    factory, record = STORES[name]
    with tempfile.TemporaryDirectory() as tmp:
        store = factory(Path(tmp))
        for sequence, slot in enumerate(store.slots.slots, 1):
            content = data.draw(slot_contents(record.model_dump(mode="json"), sequence), slot.name)
            if content is not None:
                slot.write_bytes(content)
        try:
            loaded = store.load()
        except StoreCorruptError as exc:
            assert str(exc).startswith(f"{name}: ")
            assert_no_secret(str(exc))
        else:
            assert loaded is None or isinstance(loaded, store.model)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(STORES)), data=st.data())
def test_a_record_that_verifies_but_does_not_validate_names_the_field(
    name: str, data: st.DataObject
) -> None:
    factory, record = STORES[name]
    payload, changed = data.draw(mutated_object(record.model_dump(mode="json")))
    with tempfile.TemporaryDirectory() as tmp:
        store = factory(Path(tmp))
        store.slots.slots[0].write_bytes(encode_record(1, payload))
        try:
            loaded = store.load()
        except StoreCorruptError as exc:
            text = str(exc)
            assert text.startswith(f"{name}: the record does not validate"), text
            assert changed is None or changed in text
            assert_no_secret(text)
        else:
            assert isinstance(loaded, store.model)
