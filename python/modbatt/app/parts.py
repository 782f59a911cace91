"""What every workflow of the app works with, in one place.

The :class:`~modbatt.app.app.App` makes one :class:`AppParts` and hands it to each workflow
(bootstrap, pairing, recovery, firmware update, operations, the link): its keystore and host
id, the API-Bridge client, the control channel to the pack, its audit log and its progress
display. A part the operator's tools replace (the API-Bridge client, the progress display) is
replaced here, for every workflow at once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from modbatt.api_bridge.client import ApiBridgeClient
from modbatt.app.answers import check_answer
from modbatt.app.channel import REPLY_TIMEOUT_S, PackChannel
from modbatt.progress import NO_PROGRESS, Progress
from modbatt.protocol.control import REQUEST_ID, new_request_id
from modbatt.state.keystores import AppKeys, TypedStore
from modbatt.state.stores import AuditLog


@dataclass
class AppParts:
    """The app's keystore, API-Bridge, channel to the pack, audit log and progress display."""

    keystore: TypedStore[AppKeys]
    host_id: str
    bridge: ApiBridgeClient
    channel: PackChannel
    audit: AuditLog | None = None
    progress: Progress = field(default=NO_PROGRESS, repr=False)  # what long steps wait for

    def record(self, event: str, **fields: str | int | bool | None) -> None:
        """An entry in the app's audit log (when it keeps one)."""
        if self.audit is not None:
            self.audit.record(event, role="app", host=self.host_id, **fields)

    def ask(
        self,
        message: dict[str, Any],
        expect: str,
        *,
        plain: bool = False,
        timeout_s: float = REPLY_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send a request to the pack and return its answer of type `expect`, checked."""
        message = {**message, REQUEST_ID: new_request_id()}  # the same id for every retry
        with self.progress.waiting(f"{message['type']}: waiting for the pack controller"):
            answer = self.channel.request(message, plain=plain, timeout_s=timeout_s)
        return check_answer(message["type"], expect, answer)

    def discover(self) -> dict[str, Any]:
        """Ask the pack who and how it is (plain while no session is up)."""
        return self.ask({"type": "discover"}, "device_info", plain=self.channel.session is None)

    def api_bridge(self, what: str) -> AbstractContextManager[None]:
        """A progress step around a call to the API-Bridge (it retries a while when down)."""
        return self.progress.waiting(
            f"{what}: waiting for the API-Bridge at {self.bridge.config.base_url}"
        )
