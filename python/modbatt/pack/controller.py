"""The pack controller on its two buses: the one class that is "the pack".

:class:`PackController` makes and runs every part of the pack from what it is given (serial,
state directory, the CAN 1 and CAN 2 ports, an audit log): its keys and states
(:mod:`modbatt.pack.keys`), its control channel (:mod:`modbatt.pack.control`), the module side
(:mod:`modbatt.pack.modules` in a `NodeLoop`), module pairing and re-linking (seed Workflow A,
here), configuration, isolation, diagnostics, the firmware receiver
(:mod:`modbatt.pack.firmware`), the status and alert frames to the app, and the bridge: every
frame received on either bus goes through the Rust `Gateway` (open, route, reseal, E flag).
A control message flows one way: the control server hands it to the handlers, which name the
workflow that answers it.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import can

from modbatt import ENCRYPTION_FLAG, Gateway, Session, is_encrypted
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.nodes import NodeLoop
from modbatt.bus.transport import CanPort, IdFilter
from modbatt.errors import ModbattError
from modbatt.pack.control import ControlHandlers, ControlServer
from modbatt.pack.data_plane import KernelDataPlane
from modbatt.pack.firmware import FirmwareReceiver
from modbatt.pack.keys import APP_LINK, PackKeys, PackState
from modbatt.pack.modules import ModuleManager
from modbatt.pack.pairing import handshake_over, pair_over, same_pairing
from modbatt.protocol.bootstrap import (
    KeyAgreementError,
)
from modbatt.protocol.catalogue import SECURED_COMMAND_BASES, SECURED_COMMAND_XOR
from modbatt.protocol.control import (
    APP_TO_PACK,
    PACK_TO_APP,
)
from modbatt.protocol.firmware import ON
from modbatt.protocol.handshake import HandshakeError
from modbatt.protocol.pairing import module_channel_ids
from modbatt.protocol.status import (
    ALERT_FLASH_PROBLEM,
    ALERT_FOREIGN_COMMAND,
    ALERT_ID,
    ALERT_MODULE_INCOMPATIBLE,
    ALERT_MODULE_LATCHED,
    ALERT_MODULE_RETURNED,
    ALERT_MODULE_SILENT,
    ALERT_REPLAYS,
    ALERT_SESSION_TORN_DOWN,
    FLAG_FLASH_PROBLEM,
    FLAG_NO_KEYS,
    STATUS_ID,
    alert_payload,
    status_payload,
)
from modbatt.state.keystores import (
    PackFlash,
    PairedModule,
    paired_module_link_key,
)
from modbatt.state.stores import AuditLog, atomic_write

log = logging.getLogger("modbatt.pack.controller")

MODULE_BASE_MASK = 0x7F0 << 18
NODE_MASK = 0xFF
TELEMETRY_BASE = 0x500 << 18  # module -> pack messages, 0x500-0x50F
COMMAND_BASE = 0x510 << 18  # pack -> module messages, 0x510-0x51F
CAN1, CAN2 = 0, 1


# Requests to a module over its pairing channel: each attempt waits this long for the answer.
def routing_rules(gateway: Gateway, paired: list[int], bridge_unpaired: bool = True) -> None:
    """The pack's routing table: paired modules' links first, then plain module traffic.

    Module telemetry (0x500-0x50F) from CAN 2 goes to CAN 1 sealed with the app link: opened
    with the module's link when it is paired, taken plain otherwise; app commands to modules
    (0x510-0x51F) go the other way. Anything else is dropped (default deny).
    """
    gateway.clear_rules()
    node = MODULE_BASE_MASK | NODE_MASK
    for module_id in paired:
        gateway.add_rule(
            CAN2, TELEMETRY_BASE | module_id, node, CAN1, inbound=module_id, outbound=APP_LINK
        )
        gateway.add_rule(  # sealed for the module on its secured command base (§8c)
            CAN1,
            COMMAND_BASE | module_id,
            node,
            CAN2,
            inbound=APP_LINK,
            outbound=module_id,
            id_xor=SECURED_COMMAND_XOR,
        )
    if bridge_unpaired:  # the security policy may forbid plain module traffic altogether
        gateway.add_rule(CAN2, TELEMETRY_BASE, MODULE_BASE_MASK, CAN1, outbound=APP_LINK)
        gateway.add_rule(CAN1, COMMAND_BASE, MODULE_BASE_MASK, CAN2, inbound=APP_LINK)


class _ModuleBus:
    """The pack's module side as a node of its CAN 2 loop.

    The module table is fed with what the gateway opened (its tap), and its commands to
    linked modules are sealed.

    The manager addresses a module it reaches through a session on the secured command
    bases (0x540-0x54F); those frames are sealed here with the module's link. One whose
    session has just gone is not sent: the module would drop it plain.
    """

    def __init__(self, gateway: Gateway, manager: ModuleManager) -> None:
        self.gateway, self.manager = gateway, manager

    def on_frame(self, can_id: int, data: bytes, now: float) -> list[tuple[int, bytes]]:
        return self.sealed(self.manager.on_frame(can_id, data, now))

    def tick(self, now: float) -> list[tuple[int, bytes]]:
        replies = []
        for logical_id, plain in self.gateway.take_tapped():
            replies += self.manager.on_frame(logical_id, plain, now)
        return self.sealed(replies + self.manager.tick(now))

    def sealed(self, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """The manager's frames as they go on CAN 2: those on secured bases sealed."""
        out = []
        for can_id, data in frames:
            if (can_id >> 18) not in SECURED_COMMAND_BASES:
                out.append((can_id, data))
                continue
            link = can_id & NODE_MASK
            if self.gateway.has_session(link):
                out += self.gateway.seal_frame(link, can_id, data)
        return out


MODULE_TICK_S = 0.05  # the module table's tick (heartbeat every 200 ms, silence after 2 s)


class PackController:
    """The pack controller on its two buses: control channel, module side, gateway.

    Everything it is made of is made here, from what it is given: its keys
    (:class:`~modbatt.pack.keys.PackKeys`, whose discovery reports this pack's module table),
    the module side (a `NodeLoop` on CAN 2 around the `ModuleManager`), the firmware
    receiver, and the control channel on CAN 1, whose :class:`ControlHandlers` name every
    control message it answers and the workflow that answers it. `start` runs it; `stop` stops
    it and leaves the ports open, so a restarted pack can take them over.
    """

    def __init__(
        self,
        serial: str,
        state_dir: Path,
        can1: CanPort,
        can2: CanPort,
        audit: AuditLog | None = None,
        *,
        data_plane: bool = True,
    ) -> None:
        self.keys = keys = PackKeys(
            serial, state_dir, audit, modules_view=self.modules_view, bus_losses=self.bus_losses
        )
        self.can1, self.can2 = can1, can2
        self.manager = ModuleManager()
        # The module table reads the plain frames (registration, announcements); sealed
        # traffic reaches it through the gateway's tap, so its thread is not woken for it.
        # Its periodic work is a 200 ms heartbeat, polls and a 4 s silence timeout: a 50 ms tick is
        # ample, and every wake-up takes the interpreter from the bridge for a moment.
        # What the gateway opens on its way through (sealed telemetry) reaches the table at
        # the loop's tick, from the gateway's tap: nothing of the table on the bridge's path.
        keys.gateway.set_tap(TELEMETRY_BASE, MODULE_BASE_MASK)
        self.module_bus = _ModuleBus(keys.gateway, self.manager)
        self.module_loop = NodeLoop(
            can2,
            [self.module_bus],
            tick_s=MODULE_TICK_S,
            ids=(ENCRYPTION_FLAG, 0),  # plain frames only
        )
        self.firmware = FirmwareReceiver(keys)
        # Every control message the pack answers, and the workflow that answers it.
        self.handlers = ControlHandlers(
            keys,
            {
                **keys.handlers(),  # discovery, bootstrap, the app link's handshake
                "pair_module": self.pair_module,
                "configure": self.configure,
                "isolate": self.isolate,
                "diagnostics": self.diagnostics,
                "firmware_begin": self.firmware.begin,
                "firmware_chunk": self.firmware.chunk,
                "firmware_end": self.firmware.end,
            },
        )
        endpoint = ControlEndpoint.open(can1, PACK_TO_APP, APP_TO_PACK)
        self.control = ControlServer(endpoint, self.handlers, keys.app_sealer)
        # The operator's cap (On until configured otherwise), sent once the start-up round is
        # over: the MAX_STATE on the bus starts Off (`ModuleManager.heartbeat_state`).
        configuration = {} if keys.flash is None else keys.flash.configuration
        self.manager.max_state = int(configuration.get("max_state", ON))
        self._step = keys.gateway.step  # looked up once: called for every frame
        self._ports = {CAN1: can1, CAN2: can2}
        # On SocketCAN the routed frames are carried in Rust (`pack.data_plane`); elsewhere,
        # or when asked not to, by `_bridge` on the ports' receiving threads.
        self._data_plane_wanted = data_plane
        self.data_plane = KernelDataPlane.open(keys.gateway, can1, can2) if data_plane else None
        self._restore_module_links()
        self._expect_paired_modules()
        self._rules()
        self._listeners = (
            []
            if self.data_plane is not None
            else [
                (can1, can1.subscribe_messages(functools.partial(self._bridge, CAN1))),
                (can2, can2.subscribe_messages(functools.partial(self._bridge, CAN2))),
            ]
        )

    # --- what it is, read through its keys ------------------------------------------------

    @property
    def serial(self) -> str:
        """The pack's serial number."""
        return self.keys.serial

    @property
    def state_dir(self) -> Path:
        """Where its flash, audit log and firmware images are kept."""
        return self.keys.state_dir

    @property
    def audit(self) -> AuditLog | None:
        """Its audit log, when it keeps one."""
        return self.keys.audit

    @property
    def gateway(self) -> Gateway:
        """The Rust gateway: its sessions (link 0 = the app), routes, tap and drop counters."""
        return self.keys.gateway

    @property
    def flash(self) -> PackFlash | None:
        """What its flash holds (None: factory default)."""
        return self.keys.flash

    @property
    def flash_problem(self) -> str | None:
        """What is wrong with its flash store, if anything."""
        return self.keys.flash_problem

    def module_links(self) -> list[int]:
        """The module ids whose link has a session."""
        return self.keys.module_links()

    @property
    def state(self) -> PackState:
        """Its state (seed, Implementation States)."""
        return self.keys.state

    @property
    def security_level(self) -> int:
        """0 none, 1 CAN 1 encrypted, 2 CAN 2 encrypted, 3 both."""
        return self.keys.security_level

    def handle(self, message: dict[str, Any], *, sealed: bool = True) -> dict[str, Any] | None:
        """Answer one control message as the control channel does (sans I/O)."""
        return self.handlers.handle(message, sealed=sealed)

    def start(self) -> PackController:
        """Start the control channel, the module side and the re-linking of paired modules."""
        self.module_loop.start()
        self.control.start()
        self._relinker.start()
        return self

    def started_again(self) -> PackController:
        """A new pack controller on the same flash, ports and audit log, started.

        A power cycle, once this one is stopped: the flash is read again and no session
        survives it.
        """
        return PackController(
            self.serial,
            self.state_dir,
            self.can1,
            self.can2,
            self.audit,
            data_plane=self._data_plane_wanted,
        ).start()

    def stop(self) -> None:
        """Stop both (the ports stay open: a restarted runtime can take them over)."""
        for port, listener in self._listeners:
            port.unsubscribe(listener)
        if self.data_plane is not None:
            self.data_plane.stop()
        self._relink_stop.set()
        self._relinker.join(timeout=5)
        self.control.stop()
        self.module_loop.stop()
        self.control.endpoint.close()

    def _restore_module_links(self) -> None:
        """After a restart no module has a session.

        `relink_once` (every second) brings each paired module back as soon as it is
        registered again.
        """
        self.keys.paired_links.clear()
        self._pairing_lock = threading.Lock()
        self._retry_at: dict[int, float] = {}
        self._linked_at: dict[int, float] = {}  # module id -> when its session was installed
        self._relink_stop = threading.Event()
        self._events: list[Any] = []
        self._flash_alerted = False
        self._replays_seen: dict[int, int] = {}  # link -> replay drops already alerted
        self._torn_down_alerted: set[int] = set()
        self._relinker = threading.Thread(target=self._relink_loop, name="relink", daemon=True)

    def bus_losses(self) -> dict[str, dict[str, int]]:
        """What each bus lost below the frame path (full transmit queue, receive overflow)."""
        losses = {"can1": self.can1.losses(), "can2": self.can2.losses()}
        if self.data_plane is not None:  # its own sockets lose frames too: added in
            for bus, name in ((CAN1, "can1"), (CAN2, "can2")):
                for reason, lost in self.data_plane.losses(bus).items():
                    losses[name][reason] = losses[name].get(reason, 0) + lost
        return losses

    def modules_view(self) -> list[dict[str, Any]]:
        """The module table as device_info reports it."""
        with self.module_loop.lock:
            entries = self.manager.snapshot()
        paired = set(self.keys.module_links())
        return [
            {
                "module_id": m.module_id,
                "unique_id": m.unique_id,
                "online": m.online,
                "paired": m.module_id in paired,
                "state": m.state_name,
            }
            for m in entries
        ]

    # --- the gateway, frame by frame --------------------------------------------------------

    def _bridge(self, bus: int, msg: can.Message, owned: bool) -> None:
        """Carry one frame received on `bus` through the gateway (the bridge's hot path)."""
        if bus == CAN1 and not msg.arbitration_id & ENCRYPTION_FLAG:
            return  # plain frames on CAN 1 are the control channel's, not the gateway's
        outputs = self._step(bus, msg.arbitration_id, bytes(msg.data))
        if len(outputs) == 1:
            # One frame out for one in (the usual case, with cut-through): the received
            # message object becomes the sent one when no one else holds it, as `can.bridge`
            # sends the object it received.
            dst, can_id, data = outputs[0]
            self._ports[dst].send_built(can_id, data, msg if owned else None)
            return
        for dst, can_id, data in outputs:
            self._ports[dst].send_built(can_id, data)

    def link_module(self, module_id: int, session: Session) -> None:
        """Put a module's established session into the gateway and route its traffic sealed.

        The last step of a pairing and of a re-link after a restart. The module's sealed
        route is in the table before its session is in the gateway, so a frame that comes
        in between is counted for what it is (`no_session`), never stepped through the
        plain route (where it counted as `malformed`).
        """
        self.keys.paired_links.add(module_id)
        self._rules()
        self._linked_at[module_id] = time.monotonic()
        self.keys.gateway.install_session(module_id, session)
        with self.module_loop.lock:
            self.manager.set_sealed(module_id, True)  # polled sealed from now on
            entry = self.manager.table.get(module_id)
        if entry is not None:
            self._remember_module_id(entry.unique_id, module_id)

    # --- module ids across a restart --------------------------------------------------------

    @property
    def _module_ids_path(self) -> Path:
        return self.keys.state_dir / "module_ids.json"

    def _remember_module_id(self, unique_id: int, module_id: int) -> None:
        """Keep a linked module's id, so that a restarted pack can link it again at once."""
        known = self._module_ids()
        if known.get(unique_id) == module_id:
            return
        known[unique_id] = module_id
        data = json.dumps({str(u): m for u, m in sorted(known.items())}).encode()
        try:
            atomic_write(self._module_ids_path, data)
        except OSError as exc:  # only a restart's shortcut: the module times out and returns
            log.warning("module ids not kept: %s", exc)

    def _module_ids(self) -> dict[int, int]:
        """Unique id -> module id of the modules linked before (no secret: ids only)."""
        try:
            raw = json.loads(self._module_ids_path.read_text())
            return {int(u): int(m) for u, m in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("module ids unreadable (%s): modules return after their timeout", exc)
            return {}

    def _expect_paired_modules(self) -> None:
        """After a restart, the paired modules are where they were (see `ModuleManager.expect`)."""
        flash = self.keys.flash
        if flash is None:
            return
        known = self._module_ids()
        now = time.monotonic()
        with self.module_loop.lock:
            for paired in flash.modules.values():
                module_id = known.get(paired.unique_id)
                if module_id is not None:
                    self.manager.expect(paired.unique_id, module_id, now)

    def release_module(self, module_id: int) -> None:
        """Undo `link_module` on both ends.

        A sealed DEREGISTER first, while the session still seals it, so that the module ends
        its session too (a linked module refuses to be paired again) and registers again at
        the next ANNOUNCE_REQUEST.
        """
        with self.module_loop.lock:
            frames = self.module_bus.sealed(self.manager.deregister(module_id))
        self.module_loop.send(frames)
        self.unlink_module(module_id)

    def unlink_module(self, module_id: int) -> None:
        """Undo `link_module`: the module's session and sealed route are gone."""
        self.keys.gateway.remove_session(module_id)
        self.keys.paired_links.discard(module_id)
        with self.module_loop.lock:
            self.manager.set_sealed(module_id, False)
        self._rules()

    def _rules(self) -> None:
        flash = self.keys.flash
        bridge = (
            True
            if flash is None
            else bool(flash.configuration.get("bridge_unpaired_modules", True))
        )
        routing_rules(self.keys.gateway, sorted(self.keys.paired_links), bridge)
        for bus, wanted in self.receive_filters().items():
            self._ports[bus].set_receive_filters(wanted)
        if self.data_plane is not None:
            for bus, routed in self.route_filters().items():
                self.data_plane.set_filters(bus, routed)

    def route_filters(self) -> dict[int, list[IdFilter]]:
        """The routing table's sources on each bus, as (mask, value) pairs.

        E and the format bits are never in a rule's mask, so plain and secured frames of a
        routed id both pass; the data plane's CAN 1 socket takes only the sealed ones (the
        plain ones there are the control channel's).
        """
        routed: dict[int, list[IdFilter]] = {CAN1: [], CAN2: []}
        for rule in self.keys.gateway.rules():
            mask, match = int(rule["mask"]), int(rule["match_id"])  # type: ignore[arg-type]
            routed[int(rule["src_bus"])].append((mask, match & mask))  # type: ignore[arg-type]
        if self.data_plane is not None:
            routed[CAN1] = [(m | ENCRYPTION_FLAG, v | ENCRYPTION_FLAG) for m, v in routed[CAN1]]
        return routed

    def receive_filters(self) -> dict[int, list[IdFilter]]:
        """What each bus must let through to Python, as (mask, value) pairs.

        The pack's own listeners: the control channel on CAN 1; the module messages and the
        pairing channels on CAN 2. Without a data plane the routing table's sources too (the
        bridge runs in Python); with one, only the module messages the module table reads,
        the plain ones (sealed ones reach it through the gateway's tap).
        """
        node_any = MODULE_BASE_MASK | 0x0F << 18  # one 11-bit base, any node
        module_messages = (
            (MODULE_BASE_MASK | ENCRYPTION_FLAG, TELEMETRY_BASE)  # plain 0x500-0x50F
            if self.data_plane is not None
            else (MODULE_BASE_MASK, TELEMETRY_BASE)  # every module message, both forms
        )
        wanted: dict[int, list[IdFilter]] = {
            CAN1: [(node_any | NODE_MASK, APP_TO_PACK)],
            CAN2: [
                module_messages,
                # pack commands, plain and secured: only another sender's reach us (alerts)
                (MODULE_BASE_MASK, COMMAND_BASE),
                (MODULE_BASE_MASK, SECURED_COMMAND_BASES.start << 18),
                (node_any, module_channel_ids(0)[1]),  # pairing channels, module -> pack
            ],
        }
        if self.data_plane is None:
            for bus, routed in self.route_filters().items():
                wanted[bus] += routed
        return wanted

    def configure(self, message: dict[str, Any]) -> dict[str, Any]:
        """Operational parameters and security policy from the app (sealed).

        ``max_state`` (0-3) and ``bridge_unpaired_modules`` (bool), applied and kept in flash.
        """
        flash = self.keys.flash
        if flash is None:
            raise KeyAgreementError("not bootstrapped")
        changes: dict[str, int | bool] = {}
        if "max_state" in message:
            max_state = message["max_state"]
            if (
                not isinstance(max_state, int)
                or isinstance(max_state, bool)
                or not 0 <= max_state <= 3
            ):
                raise ValueError("max_state is 0 (Off) to 3 (On)")
            changes["max_state"] = max_state
        if "bridge_unpaired_modules" in message:
            if not isinstance(message["bridge_unpaired_modules"], bool):
                raise ValueError("bridge_unpaired_modules is true or false")
            changes["bridge_unpaired_modules"] = message["bridge_unpaired_modules"]
        if not changes:
            raise ValueError("nothing to configure (max_state, bridge_unpaired_modules)")
        record = flash.model_copy(update={"configuration": {**flash.configuration, **changes}})
        self.keys.flash_store.save(record)
        self.keys.flash = record
        with self.module_loop.lock:
            self.manager.configure_max_state(int(record.configuration.get("max_state", ON)))
        self._rules()
        self.keys.record("pack.configured", **changes)
        return {"type": "configured", **record.configuration}

    def isolate(self, _message: dict[str, Any]) -> dict[str, Any]:
        """Every module Off at once (ALL_ISOLATE), from the app (sealed): the emergency stop.

        Sent here, on the control thread, not at the module loop's next tick: one plain frame
        for the modules reached plain and a sealed copy per linked module (MODULE_BUS.md).
        """
        if self.keys.flash is None:
            raise KeyAgreementError("not bootstrapped")
        with self.module_loop.lock:
            frames = self.module_bus.sealed(self.manager.isolate_all())
        self.module_loop.send(frames)
        linked = sorted(can_id & NODE_MASK for can_id, _ in frames if is_encrypted(can_id))
        self.keys.record("pack.isolated", sealed_copies=len(set(linked)))
        log.warning("ALL_ISOLATE sent: plain, and sealed to modules %s", linked or "none")
        return {"type": "isolated", "plain": True, "sealed": sorted(set(linked))}

    def diagnostics(self, _message: dict[str, Any]) -> dict[str, Any]:
        """What a technician needs to see: counters, links, flash and audit log health."""
        gateway = self.keys.gateway
        links = {
            str(link): gateway.session_stats(link) for link in [APP_LINK, *self.keys.module_links()]
        }
        audit = self.keys.audit
        return {
            "type": "diagnostics",
            "gateway": gateway.stats(),
            "bus_losses": self.bus_losses(),
            "data_plane": None if self.data_plane is None else self.data_plane.stats(),
            "links": links,
            "flash_problem": self.keys.flash_problem,
            "audit_log": None if audit is None else (audit.verify() or "intact"),
            "firmware": self.firmware.installed(),
        }

    # --- pairing (seed Workflow A) ----------------------------------------------------------

    def pair_module(self, message: dict[str, Any]) -> dict[str, Any]:
        """Pair a registered module with the keys the app delivered (sealed)."""
        keys = self.keys
        flash = keys.flash
        if flash is None:
            raise KeyAgreementError("not bootstrapped")
        unique_id = int(message["unique_id"])
        with self.module_loop.lock:
            entry = self.manager.by_unique_id(unique_id)
        if entry is None:
            raise KeyAgreementError(f"module {unique_id} is not registered")
        module_id = entry.module_id
        stored = flash.modules.get(str(message.get("module_component_id")))
        if stored is not None and same_pairing(stored, message, unique_id):
            # A retry of a pairing this pack stored before a restart lost its answer: the
            # module holds these keys and refuses new ones while linked; the link comes back
            # by itself (`relink_once`). Answer as the first time, pair nothing again.
            keys.record("module.pairing_repeated", module_id=module_id, unique_id=unique_id)
            return {
                "type": "pair_result",
                "module_id": module_id,
                "unique_id": unique_id,
                "link": paired_module_link_key(flash, stored).fingerprint,
                "state": int(keys.state),
                "security_level": keys.security_level,
            }
        to_module, to_pack = module_channel_ids(module_id)
        with self._pairing_lock:
            endpoint = ControlEndpoint.open(self.can2, to_module, to_pack, timeout_s=0.5)
            try:
                link, session, shared = pair_over(endpoint, flash, message, unique_id)
                # The module seals from now on: its frames are opened at once, not after the
                # channel's close and the flash write (until then they were dropped, as
                # `no_session`). Undone below if the pairing cannot be stored.
                self.link_module(module_id, session)
            finally:
                endpoint.close()
        paired = PairedModule(
            module_component_id=message["module_component_id"],
            pack_device_key_half=message["pack_device_key_half"],
            pack_lct_key_half=message["pack_lct_key_half"],
            module_device_key_half=message["module_device_key_half"],
            dh_secret=shared.hex(),
            unique_id=unique_id,
            lct_id=message["lct_id"],
        )
        record = flash.model_copy(
            update={"modules": {**flash.modules, paired.module_component_id: paired}}
        )
        try:
            keys.flash_store.save(record)
        except BaseException:
            self.release_module(module_id)  # nothing bridged for a pairing the pack lost
            raise
        keys.flash = record
        keys.record(
            "module.paired",
            module_id=module_id,
            unique_id=unique_id,
            link=link.fingerprint,
            lct_id=paired.lct_id,
        )
        return {
            "type": "pair_result",
            "module_id": module_id,
            "unique_id": unique_id,
            "link": link.fingerprint,
            "state": int(keys.state),
            "security_level": keys.security_level,
        }

    # --- links back after a restart ---------------------------------------------------------

    def _relink_loop(self) -> None:
        while not self._relink_stop.wait(1.0):
            try:
                # security alerts first: relinking replaces a torn-down session, and with it
                # the evidence
                self._security_alerts()
                self._alerts_from_events()
                self.relink_once()
                self.send_status()
            except Exception:  # the loop must survive a failed attempt
                log.exception("module links, status or alerts failed")

    def send_status(self) -> None:
        """The pack status frame on CAN 1 (once a second): sealed once the app link is up."""
        keys = self.keys
        with self.module_loop.lock:
            entries = self.manager.snapshot()
        flags = (FLAG_FLASH_PROBLEM if keys.flash_problem else 0) | (
            FLAG_NO_KEYS if keys.flash is None else 0
        )
        payload = status_payload(
            int(keys.state),
            keys.security_level,
            registered=len(entries),
            paired=len(keys.module_links()),
            online=sum(1 for e in entries if e.online),
            flags=flags,
        )
        self._send_app_frame(STATUS_ID, payload)

    def _alerts_from_events(self) -> None:
        with self.module_loop.lock:
            events = self.manager.drain_events()
        self._events.extend(events)
        for event in events:
            if event.kind == "silent":
                self.send_alert(ALERT_MODULE_SILENT, event.module_id)
            elif event.kind == "returned":
                self.send_alert(ALERT_MODULE_RETURNED, event.module_id)
            elif event.kind == "foreign_command":
                total = sum(self.manager.foreign_commands.values())
                log.warning("CAN 2: %s", event.detail)
                self.keys.record("bus.foreign_command", detail=event.detail)
                self.send_alert(ALERT_FOREIGN_COMMAND, event.module_id, min(total, 0xFFFF))
            elif event.kind == "incompatible":
                log.warning("%s", event)
                self.send_alert(ALERT_MODULE_INCOMPATIBLE, event.module_id)
            elif event.kind == "latched":
                log.warning("%s", event)
                self.send_alert(ALERT_MODULE_LATCHED, event.module_id)
            elif (
                event.kind == "rebooted"
                and event.module_id in self.keys.paired_links
                # a registration from before its current session (the one that came before a
                # new pairing, say) says nothing about that session
                and event.at > self._linked_at.get(event.module_id, 0.0)
            ):
                # it kept its keys in flash but lost its session: drop ours so that
                # relink_once runs the handshake again (a forged announcement costs one
                # handshake, nothing more: the module keeps its session until it verifies)
                self.keys.gateway.remove_session(event.module_id)
                self.keys.record("module.rebooted", module_id=event.module_id)
        if self.keys.flash_problem and not self._flash_alerted:
            self._flash_alerted = True
            self.send_alert(ALERT_FLASH_PROBLEM)

    def _security_alerts(self) -> None:
        """Alert the app to replays and to sessions the failure budget tore down.

        Read from each link's session counters; a replaced session starts again from zero.
        An alert for the app link itself can only be sent while that link is up; every event
        also goes to the audit log.
        """
        gateway = self.keys.gateway
        for link in [APP_LINK, *sorted(self.keys.paired_links)]:
            stats = gateway.session_stats(link)
            if stats is None:
                continue
            seen = self._replays_seen.get(link, 0)
            if stats["replay"] < seen:  # a new session
                seen = 0
            if stats["replay"] > seen:
                new = stats["replay"] - seen
                self.keys.record("link.replays", link=link, count=new)
                self.send_alert(ALERT_REPLAYS, link, min(new, 0xFFFF))
            self._replays_seen[link] = stats["replay"]
            if not stats["expired"]:
                self._torn_down_alerted.discard(link)
            elif link not in self._torn_down_alerted:
                self._torn_down_alerted.add(link)
                log.warning("link %d: session torn down after %d bad tags", link, stats["failures"])
                self.keys.record("link.torn_down", link=link, failures=stats["failures"])
                self.send_alert(ALERT_SESSION_TORN_DOWN, link, min(stats["failures"], 0xFFFF))

    def take_events(self) -> list[Any]:
        """The module events since the last call (for whoever prints them)."""
        events, self._events = self._events, []
        return events

    def send_alert(self, code: int, module_id: int = 0, value: int = 0) -> None:
        """An alert frame on CAN 1: code, module id, a 16-bit value (sealed once upgraded)."""
        self._send_app_frame(ALERT_ID, alert_payload(code, module_id, value))

    def _send_app_frame(self, can_id: int, payload: bytes) -> None:
        gateway = self.keys.gateway
        if gateway.has_session(APP_LINK):
            for frame_id, data in gateway.seal_frame(APP_LINK, can_id, payload):
                self.can1.send(frame_id, data)
        else:
            self.can1.send(can_id, payload)

    def relink_once(self) -> int:
        """Re-establish the session of every paired module that is registered but has none.

        That is after the pack restarted, or a module did; returns how many came back.
        """
        flash = self.keys.flash
        if flash is None:
            return 0
        restored = 0
        for paired in flash.modules.values():
            with self.module_loop.lock:
                entry = self.manager.by_unique_id(paired.unique_id)
            if entry is None or self.keys.gateway.has_session(entry.module_id):
                continue
            if time.monotonic() < self._retry_at.get(paired.unique_id, 0.0):
                continue
            link = paired_module_link_key(flash, paired)
            to_module, to_pack = module_channel_ids(entry.module_id)
            with self._pairing_lock:
                if self.keys.gateway.has_session(entry.module_id):
                    continue  # a pairing linked it while this waited for the lock
                endpoint = ControlEndpoint.open(self.can2, to_module, to_pack, timeout_s=0.5)
                try:
                    session = handshake_over(
                        endpoint, link, flash.pack_component_id, paired.module_component_id
                    )
                except (KeyAgreementError, HandshakeError, ModbattError) as exc:
                    self._retry_at[paired.unique_id] = time.monotonic() + 5.0
                    log.info("module %d: link not re-established (%s)", entry.module_id, exc)
                    continue
                finally:
                    endpoint.close()
                self.link_module(entry.module_id, session)
            self.keys.record(
                "module.relinked",
                module_id=entry.module_id,
                unique_id=paired.unique_id,
                link=link.fingerprint,
            )
            restored += 1
        return restored
