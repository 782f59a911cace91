"""The Modbatt app: the one class that is "the app", and what it is made of.

An :class:`App` drives a pack controller over the app bus control channel and the API-Bridge.
It makes its parts from what it is given (a state directory, the control endpoint on CAN 1,
an API-Bridge client, an audit log, a progress display) and hands them to each workflow,
each a unit of its own:

- the control channel to the pack (:mod:`modbatt.app.channel`: requests, retries, answers
  checked by :mod:`modbatt.app.answers`);
- the link (:mod:`modbatt.app.link`: the session handshake, ``connect``, and the link keeper);
- the bootstrap (:mod:`modbatt.app.bootstrap`), module pairing (:mod:`modbatt.app.pairing`),
  key recovery (:mod:`modbatt.app.recovery`), the firmware update
  (:mod:`modbatt.app.firmware`) and operating a pack (:mod:`modbatt.app.operations`);
- what it hears on CAN 1 (:mod:`modbatt.app.telemetry`).

Refusals by the pack come back as :class:`~modbatt.app.errors.AppError` naming the step, and
so do answers that break the protocol: everything the pack sends is checked before the app
uses it, since CAN 1 is not trusted.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from modbatt import LinkKey, Session
from modbatt.api_bridge.client import ApiBridgeClient
from modbatt.app.bootstrap import Bootstrap
from modbatt.app.channel import PackChannel
from modbatt.app.errors import (
    AppError,
    KeystoreLostError,
    PackRefusedError,
    PackSilentError,
    PlainCommandError,
)
from modbatt.app.firmware import FirmwareUpload
from modbatt.app.link import AppLink
from modbatt.app.operations import Operations
from modbatt.app.pairing import Pairing
from modbatt.app.parts import AppParts
from modbatt.app.recovery import Recovery
from modbatt.app.telemetry import Telemetry
from modbatt.bus.control_channel import ControlEndpoint
from modbatt.progress import NO_PROGRESS, Progress
from modbatt.state.keystores import app_keystore, host_id
from modbatt.state.stores import AuditLog, StoreCorruptError

__all__ = [
    "App",
    "AppError",
    "KeystoreLostError",
    "PackRefusedError",
    "PackSilentError",
    "PlainCommandError",
]

log = logging.getLogger("modbatt.app.app")


class App:
    """The app's side: its keystore, the API-Bridge and the control channel to the pack."""

    def __init__(
        self,
        state_dir: Path,
        endpoint: ControlEndpoint,
        bridge: ApiBridgeClient,
        audit: AuditLog | None = None,
        progress: Progress = NO_PROGRESS,
    ) -> None:
        self.state_dir = state_dir
        self.endpoint = endpoint
        self.audit = audit
        self.keystore = app_keystore(state_dir)
        try:
            self.host_id = host_id(self.keystore)
        except StoreCorruptError as exc:
            # No slot verifies: the app's keys are lost. Say so and stop; never write a new
            # identity over the damaged keystore.
            if audit is not None:
                audit.record("keystore.corrupt", role="app", problem=str(exc))
            log.error("keystore corrupt: %s (key recovery needed)", exc)
            raise KeystoreLostError(
                f"the app's keystore is damaged and its keys are lost ({exc});"
                " key recovery (Workflow C) is needed"
            ) from None

        # The channel re-establishes the link when a sealed request goes unanswered, and gives
        # up early while the link is silent: both are the link's, which is made just below
        # (it sends its handshake over this channel).
        def link_silent() -> bool:
            return self.link.silent()

        def reconnect() -> object:
            return self.link.connect()

        channel = PackChannel(endpoint, link_silent=link_silent, reconnect=reconnect)
        self.parts = AppParts(self.keystore, self.host_id, bridge, channel, audit, progress)
        self.link = AppLink(self.parts)
        self.heard = Telemetry(channel, self.link)
        self.bootstrapping = Bootstrap(self.parts, self.link)
        self.pairing = Pairing(self.parts, self.link)
        self.recovery = Recovery(self.parts, self.link, self.bootstrapping, self.pairing)
        self.firmware = FirmwareUpload(self.parts, self.link)
        self.operations = Operations(self.parts, self.link)

    # --- its parts, as the tools read and replace them ----------------------------------------

    @property
    def bridge(self) -> ApiBridgeClient:
        """The API-Bridge client every workflow uses."""
        return self.parts.bridge

    @bridge.setter
    def bridge(self, bridge: ApiBridgeClient) -> None:
        self.parts.bridge = bridge

    @property
    def progress(self) -> Progress:
        """What long steps report to (the command line draws it)."""
        return self.parts.progress

    @progress.setter
    def progress(self, progress: Progress) -> None:
        self.parts.progress = progress

    @property
    def session(self) -> Session | None:
        """The app link's session, once the channel is upgraded."""
        return self.parts.channel.session

    @session.setter
    def session(self, session: Session | None) -> None:
        self.parts.channel.session = session

    @property
    def connected_at(self) -> float | None:
        """Monotonic time of the last handshake."""
        return self.link.connected_at

    @property
    def last_status_at(self) -> float | None:
        """Monotonic time of the last sealed status frame from the pack."""
        return self.link.last_status_at

    @property
    def listening(self) -> bool:
        """Whether the bus's frames are fed to `on_frame`."""
        return self.link.listening

    @property
    def telemetry(self) -> dict[int, dict[str, dict[str, Any]]]:
        """The latest values of each module's messages, by module id and message name."""
        return self.heard.values

    @property
    def telemetry_frames(self) -> int:
        """Telemetry frames opened and decoded."""
        return self.heard.frames

    @telemetry_frames.setter
    def telemetry_frames(self, count: int) -> None:
        self.heard.frames = count

    @property
    def telemetry_frames_by_module(self) -> Counter[int]:
        """Telemetry frames by the module id they name."""
        return self.heard.frames_by_module

    @property
    def dropped(self) -> Counter[str]:
        """Frames from CAN 1 dropped, by reason."""
        return self.heard.dropped

    @property
    def pack_status(self) -> dict[str, int]:
        """The pack's latest status frame."""
        return self.heard.pack_status

    @pack_status.setter
    def pack_status(self, status: dict[str, int]) -> None:
        self.heard.pack_status = status

    @property
    def alerts(self) -> list[dict[str, int]]:
        """The pack's alerts, in the order they came."""
        return self.heard.alerts

    @alerts.setter
    def alerts(self, alerts: list[dict[str, int]]) -> None:
        self.heard.alerts = alerts

    # --- what it does: each workflow's entry point ------------------------------------------

    def discover(self) -> dict[str, Any]:
        """Ask the pack who and how it is (plain when no session is up)."""
        return self.parts.discover()

    def status(self) -> dict[str, Any]:
        """The pack's device information, sealed once the channel is upgraded."""
        return self.parts.discover()

    def bootstrap(self, *, replaces: str | None = None) -> dict[str, Any]:
        """Bring a factory-default pack to Bootstrap Complete with an encrypted app link."""
        return self.bootstrapping.run(replaces=replaces)

    def link_key(self) -> LinkKey:
        """The app link's key, rebuilt from the keystore (its fingerprint names it)."""
        return self.link.key()

    def connect(self) -> dict[str, Any]:
        """Run the session handshake and check the upgraded channel (the communication test)."""
        return self.link.connect()

    def link_silent(self) -> bool:
        """Whether the link is up on our side but the pack's sealed status frames stopped."""
        return self.link.silent()

    def keep_link(self) -> bool:
        """Run the handshake again when the link went silent; True when it did."""
        return self.link.keep()

    def start_link_keeper(self, interval_s: float = 1.0) -> threading.Event:
        """Call `keep_link` every `interval_s` from a thread; set the returned event to stop."""
        return self.link.start_keeper(interval_s)

    def pair(self, unique_id: int, *, replaces: str | None = None) -> dict[str, Any]:
        """Pair a registered module (seed Workflow A)."""
        return self.pairing.run(unique_id, replaces=replaces)

    def recover(self, *, confirm: bool) -> dict[str, Any]:
        """Workflow C: bring back a pack that lost its keys."""
        return self.recovery.run(confirm=confirm)

    def update_firmware(self, image: bytes, version: str) -> dict[str, Any]:
        """Send a firmware image in sealed chunks; the pack stores it only if it verifies."""
        return self.firmware.send(image, version)

    def configure(
        self, *, max_state: int | None = None, bridge_unpaired_modules: bool | None = None
    ) -> dict[str, Any]:
        """Operational parameters and security policy (Workflow B.1), sealed, kept in flash."""
        return self.operations.configure(
            max_state=max_state, bridge_unpaired_modules=bridge_unpaired_modules
        )

    def isolate_all(self) -> dict[str, Any]:
        """Every module Off at once (ALL_ISOLATE), the emergency stop."""
        return self.operations.isolate_all()

    def command_state(
        self,
        module_id: int,
        state: int,
        hv_bus_voltage: float = 0.0,
        *,
        every_plain_module: bool = False,
    ) -> None:
        """Ask a module for a state (Off 0 ... On 3) (Workflow B.3)."""
        self.operations.command_state(
            module_id, state, hv_bus_voltage, every_plain_module=every_plain_module
        )

    def diagnostics(self) -> dict[str, Any]:
        """Counters, links, flash and audit log health, firmware images (sealed)."""
        return self.operations.diagnostics()

    def registrations(self) -> dict[str, Any]:
        """What the API-Bridge holds for the app's pack (read only), and its problems."""
        return self.operations.registrations()

    def on_frame(self, can_id: int, data: bytes, timestamp: float = 0.0) -> None:
        """One frame from CAN 1: telemetry, the pack's status or an alert (never raises)."""
        self.heard.on_frame(can_id, data, timestamp)
