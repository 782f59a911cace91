"""``modbatt decode``: a traffic log read back through the protocol, decrypted where keys allow.

What ``candump | cantools decode`` does for plain traffic, for the secure stack too. Each frame
of a log (BLF, ASC or candump ``.log``, :mod:`modbatt.bus.traffic`) is named: module bus
messages through the DBC (:mod:`modbatt.protocol.catalogue`), the pack's status and alert
frames, the frames of the control and pairing channels, whose ISO-TP messages are
reassembled (can-isotp, listening only) and shown as the control messages they carry.

With ``--keystore DIR`` (a state directory of the app, the pack or a module), sealed traffic
is decrypted: the session handshakes in the log give the nonces, and a handshake whose
responder's confirmation verifies under one of the keystore's link keys names the link, so the
decoder derives both directions of that session the way the two ends did (PROTOCOL.md §2). A
log that starts inside a session has no handshake for it: its sealed frames are named, not
opened. Key bytes are never printed.

A log names each frame's bus by its channel. modbatt's own logs call them ``can1`` and
``can2``; a log of network interfaces (``candump -L`` of ``can0``/``can1`` on a pack board,
or ``vcan0``/``vcan1``) names interfaces, which say nothing of which bus is which: those are
given as ``buses`` (``modbatt decode --can1 vcan0 --can2 vcan1``), and a frame on a channel
neither names is an error, never a guess.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import isotp

from modbatt import LinkKey, Session, is_encrypted, logical_id, split_id
from modbatt._core import frame_format
from modbatt.bus.isotp_link import CHECK_LEN, MAX_MESSAGE, without_check
from modbatt.bus.traffic import check_log_path
from modbatt.errors import FrameRejectedError, ModbattError
from modbatt.protocol.catalogue import catalogue
from modbatt.protocol.control import ControlError
from modbatt.protocol.control import decode as decode_control
from modbatt.protocol.handshake import INIT, NONCE_LEN, RESPONSE, VERSION
from modbatt.protocol.status import (
    ALERT_BASE,
    STATUS_BASE,
    StatusFrameError,
    parse_alert,
    parse_pack_status,
)
from modbatt.state.keystores import (
    app_keystore,
    app_link_key,
    module_flash,
    module_link_key,
    pack_app_link_key,
    pack_flash,
    paired_module_link_key,
)
from modbatt.state.stores import StoreCorruptError

CONTROL_BASES = {0x460: "app -> pack", 0x461: "pack -> app"}  # CAN 1 (PROTOCOL.md §8a)
PAIRING_BASES = {0x530: "pack -> module", 0x531: "module -> pack"}  # CAN 2 (§8c)
SECURE_FORMATS = {0: "single", 1: "pair data", 2: "pair auth", 3: "FD"}
DECODE_FAILURE_BUDGET = 2**31  # a decoding session tries frames of both directions
# What modbatt's own logs call the buses (TrafficLog channels; 1 and 2 in ASC and BLF).
MODBATT_CHANNELS: dict[str, int] = {"can1": 1, "can2": 2, "1": 1, "2": 2}


def bus_map(can1: str | None = None, can2: str | None = None) -> dict[str, int]:
    """Log channel -> bus (1 or 2): the interfaces given, else modbatt's own channel names."""
    if can1 is None and can2 is None:
        return dict(MODBATT_CHANNELS)
    if can1 is not None and can1 == can2:
        raise ModbattError(f"{can1!r} cannot be both CAN 1 and CAN 2")
    given = {can1: 1, can2: 2}
    return {channel: bus for channel, bus in given.items() if channel is not None}


@dataclass(frozen=True)
class KnownLink:
    """A link key from a keystore, and the component ids it was derived for."""

    name: str
    key: LinkKey
    ids: tuple[str, str]


def links_in(directory: Path) -> list[KnownLink]:
    """Every link key the stores in `directory` (and its subdirectories) can rebuild."""
    found: list[KnownLink] = []
    for folder in [directory, *sorted(p for p in directory.rglob("*") if p.is_dir())]:
        try:
            found += _links_of(folder)
        except StoreCorruptError as exc:
            raise ModbattError(f"keystore in {folder}: {exc}") from None
    return found


def _links_of(folder: Path) -> list[KnownLink]:
    links = []
    app = app_keystore(folder).load()
    if app is not None and (key := app_link_key(app)) is not None:
        assert app.app_component_id and app.pack_component_id
        links.append(KnownLink("app", key, (app.app_component_id, app.pack_component_id)))
    flash = pack_flash(folder).load()
    if flash is not None:
        ids = (flash.app_component_id, flash.pack_component_id)
        links.append(KnownLink("app", pack_app_link_key(flash), ids))
        for paired in flash.modules.values():
            ids = (paired.module_component_id, flash.pack_component_id)
            key = paired_module_link_key(flash, paired)
            links.append(KnownLink(f"module {paired.module_component_id}", key, ids))
    module = module_flash(folder).load()
    if module is not None:
        ids = (module.module_component_id, module.pack_component_id)
        links.append(
            KnownLink(f"module {module.module_component_id}", module_link_key(module), ids)
        )
    return links


@dataclass
class Decoded:
    """One frame of the log, named; `messages` are the control messages it completed."""

    timestamp: float
    bus: int
    received: bool
    can_id: int
    data: bytes
    what: str
    messages: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The frame as candump shows it, what it is, and any message it completed."""
        direction = "R" if self.received else "T"
        head = (
            f"{self.timestamp:17.6f}  can{self.bus}  {direction}  {self.can_id:08X}  "
            f"[{len(self.data)}]  {self.data.hex(' ').upper():<23}  {self.what}"
        )
        return [head, *(f"{'':>19}-> {m}" for m in self.messages)]


@dataclass
class _Handshake:
    init_nonce: bytes | None = None


@dataclass
class _Sessions:
    """Both directions of one link's session, as the decoder rebuilt them."""

    link: str
    openers: tuple[Session, Session]


_QUIET = logging.getLogger("modbatt.tools.decode.isotp")
_QUIET.setLevel(logging.ERROR)


class _Reassembler:
    """can-isotp listening (no flow control sent) to one ISO-TP id of the log."""

    def __init__(self, can_id: int) -> None:
        self._pending: list[isotp.CanMessage] = []
        address = isotp.Address(isotp.AddressingMode.Normal_29bits, txid=can_id ^ 1, rxid=can_id)
        self._stack = isotp.TransportLayerLogic(
            rxfn=self._next,
            txfn=lambda _msg: None,
            address=address,
            error_handler=lambda _error: None,  # a damaged transfer is simply not completed
            params={"listen_mode": True, "max_frame_size": MAX_MESSAGE + CHECK_LEN},
        )
        # A listener sees both directions' frames of its id (data one way, flow control the
        # other): can-isotp's warnings about the latter are noise here.
        self._stack.logger = _QUIET

    def _next(self, _timeout: float) -> isotp.CanMessage | None:
        return self._pending.pop(0) if self._pending else None

    def feed(self, can_id: int, data: bytes) -> list[bytes]:
        self._pending.append(isotp.CanMessage(arbitration_id=can_id, data=data, extended_id=True))
        self._stack.process()
        done = []
        while (payload := self._stack.recv()) is not None:
            done.append(bytes(payload))
        return done


class Decoder:
    """Names, reassembles and, with keys, opens the frames of a log in order."""

    def __init__(
        self, links: Iterable[KnownLink] = (), buses: dict[str, int] | None = None
    ) -> None:
        self.links = list(links)
        self.buses = bus_map() if buses is None else buses
        self.db = catalogue()
        self._reassemblers: dict[tuple[int, int], _Reassembler] = {}
        self._handshakes: dict[tuple[int, int], _Handshake] = {}
        self._sessions: dict[tuple[int, int], _Sessions] = {}

    def feed(self, message: can.Message) -> Decoded:
        """The frame `message` (from a log, its channel the bus), decoded."""
        bus = self._bus_of(message.channel)
        can_id, data = message.arbitration_id, bytes(message.data)
        decoded = Decoded(message.timestamp, bus, bool(message.is_rx), can_id, data, "")
        if message.is_error_frame or message.is_remote_frame or not message.is_extended_id:
            decoded.what = "not a modbatt frame (error, remote or 11-bit)"
            return decoded
        base, node = split_id(logical_id(can_id))
        channels = CONTROL_BASES if bus == 1 else PAIRING_BASES
        if base in channels:
            decoded.what = f"ISO-TP, {channels[base]}" + (
                " (sealed channel)" if is_encrypted(can_id) else ""
            )
            decoded.messages = self._control(bus, base, node, can_id, data)
        elif is_encrypted(can_id):
            decoded.what = self._sealed(bus, node, can_id, data)
        else:
            decoded.what = self._name(can_id, data)
        return decoded

    def _bus_of(self, channel: Any) -> int:
        """The bus of a log channel (a frame without a channel is taken as CAN 1)."""
        if channel is None:
            return 1
        bus = self.buses.get(str(channel))
        if bus is None:
            known = ", ".join(sorted(self.buses)) or "none"
            raise ModbattError(
                f"a frame on channel {channel!r}, which is neither bus (known: {known}): say "
                f"which bus it is, e.g. --can1 {channel} or --can2 {channel}"
            )
        return bus

    # --- plain frames -------------------------------------------------------------------

    def _name(self, logical_id: int, plain: bytes) -> str:
        base, _node = split_id(logical_id)
        if base == STATUS_BASE:
            try:
                return f"pack status {json.dumps(parse_pack_status(plain))}"
            except StatusFrameError as exc:
                return f"pack status, malformed: {exc}"
        if base == ALERT_BASE:
            try:
                return f"pack alert {json.dumps(parse_alert(plain))}"
            except StatusFrameError as exc:
                return f"pack alert, malformed: {exc}"
        message = self.db.decode(logical_id, plain)
        if message is None:
            return "unknown id"
        values = ", ".join(f"{k} {_value(v)}" for k, v in message.values.items())
        return f"{message.name} node {message.node}" + (f": {values}" if values else "")

    # --- sealed frames ------------------------------------------------------------------

    def _sealed(self, bus: int, node: int, can_id: int, data: bytes) -> str:
        form = SECURE_FORMATS[frame_format(can_id)]
        logical = logical_id(can_id)
        name = self._message_name(logical)
        sessions = self._sessions.get((bus, 0 if bus == 1 else node))
        if sessions is None:
            return f"sealed {form}, {name}: no session in this log for its link"
        # Each opener opens one direction: both hold a pair's data frame, one of them opens.
        opened, waiting = None, False
        for opener in sessions.openers:
            try:
                plain = opener.open(can_id, data)
            except FrameRejectedError:
                continue
            if plain is None:
                waiting = True
            elif opened is None:
                opened = plain
        if opened is not None:
            return f"sealed {form}, decrypted ({sessions.link}): {self._name(logical, opened)}"
        if waiting:
            return f"sealed {form}, {name}: waits for its authenticator"
        return f"sealed {form}, {name}: does not open with the {sessions.link} session"

    def _message_name(self, logical_id: int) -> str:
        base, node = split_id(logical_id)
        if base == STATUS_BASE:
            return "pack status"
        if base == ALERT_BASE:
            return "pack alert"
        name = self.db.name_of(base)
        return f"{name} node {node}" if name is not None else "unknown id"

    # --- control and pairing channels ---------------------------------------------------

    def _control(self, bus: int, base: int, node: int, can_id: int, data: bytes) -> list[str]:
        reassembler = self._reassemblers.setdefault((bus, can_id), _Reassembler(can_id))
        out = []
        for payload in reassembler.feed(can_id, data):
            message = without_check(payload)
            if message is None:
                out.append("a message whose end-to-end check fails (damaged)")
                continue
            out.append(self._control_message(bus, base, node, can_id, message))
        return out

    def _control_message(self, bus: int, base: int, node: int, can_id: int, data: bytes) -> str:
        key = (bus, 0 if bus == 1 else node)
        if data[:1] == b"\x04":  # a sealed message (PROTOCOL.md §4.4)
            sessions = self._sessions.get(key)
            if sessions is None:
                return f"sealed message ({len(data)} bytes): no session in this log for its link"
            stream = logical_id(can_id)
            for opener in sessions.openers:
                try:
                    plain = opener.open_message(stream, data)
                except (FrameRejectedError, ModbattError):
                    continue
                return f"decrypted ({sessions.link}): {_show(plain)}"
            return f"sealed message ({len(data)} bytes): does not open with {sessions.link}"
        try:
            message = decode_control(data)
        except ControlError as exc:
            return f"not a control message: {exc}"
        self._follow_handshake(key, message)
        return _show_message(message)

    def _follow_handshake(self, key: tuple[int, int], message: dict[str, Any]) -> None:
        kind, hex_data = message.get("type"), message.get("data")
        if not isinstance(hex_data, str):
            return
        try:
            raw = bytes.fromhex(hex_data)
        except ValueError:
            return
        # Only well-formed handshake messages count (a log is anyone's input).
        if kind == "handshake_init" and raw[:2] == bytes([VERSION, INIT]):
            if len(raw) == 2 + NONCE_LEN:
                self._handshakes[key] = _Handshake(init_nonce=raw[2:])
        elif kind == "handshake_response" and raw[:2] == bytes([VERSION, RESPONSE]):
            if len(raw) != 2 + 2 * NONCE_LEN:  # nonce ‖ confirmation, 16 bytes each
                return
            started = self._handshakes.pop(key, None)
            if started is None or started.init_nonce is None:
                return
            nonce_b, confirm = raw[2 : 2 + NONCE_LEN], raw[2 + NONCE_LEN :]
            sessions = self._identify(started.init_nonce, nonce_b, confirm)
            if sessions is not None:
                self._sessions[key] = sessions

    def _identify(self, nonce_a: bytes, nonce_b: bytes, confirm: bytes) -> _Sessions | None:
        """The known link (and which end began) whose responder confirmation verifies."""
        for link in self.links:
            for a, b in (link.ids, link.ids[::-1]):
                try:
                    confirmed = link.key.verify_confirmation(b, a, nonce_b, nonce_a, confirm)
                except ModbattError:  # not a nonce or a confirmation at all
                    return None
                if confirmed:
                    limit = {"max_failures": DECODE_FAILURE_BUDGET}
                    opens_b_to_a = Session(link.key, a, b, nonce_a, nonce_b, **limit)
                    opens_a_to_b = Session(link.key, b, a, nonce_b, nonce_a, **limit)
                    return _Sessions(link.name, (opens_a_to_b, opens_b_to_a))
        return None


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show(plain: bytes) -> str:
    try:
        return _show_message(decode_control(plain))
    except ControlError:
        return f"{len(plain)} bytes"


LONG_FIELD = 96  # hex characters: a longer field (a sealed key delivery, an image chunk) is sized


def _show_message(message: dict[str, Any]) -> str:
    """A control message, with its sealed and bulky fields given as sizes."""
    shown = {
        k: (
            f"<{len(v) // 2} bytes>"
            if isinstance(v, str) and (k == "sealed" or len(v) > LONG_FIELD)
            else v
        )
        for k, v in message.items()
    }
    return json.dumps(shown, sort_keys=True)


def read_log(path: Path) -> Iterator[can.Message]:
    """The frames of a traffic log, in order."""
    check_log_path(path)
    if not path.is_file():
        raise ModbattError(f"no traffic log at {path}")
    yield from can.LogReader(str(path))


def decode_log(
    path: Path, keystores: Iterable[Path] = (), buses: dict[str, int] | None = None
) -> Iterator[Decoded]:
    """Every frame of the log at `path`, decoded with the keys found in `keystores`.

    `buses` maps the log's channels to CAN 1 and CAN 2 (see `bus_map`).
    """
    links = [link for directory in keystores for link in links_in(directory)]
    decoder = Decoder(links, buses)
    for message in read_log(path):
        yield decoder.feed(message)
