"""The app's end of the control channel to the pack: requests with retries, and the link's return.

A request goes up to REPLY_ATTEMPTS times, REPLY_TIMEOUT_S each, under the same request id
(the pack answers a retry from its answer cache). A sealed request that goes unanswered through
every retry, or while the link is silent, means the pack may have lost its end of the session
(it restarted): the channel asks for the link to be re-established (`reconnect`, a handshake:
no key crosses the bus) and sends the request once more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from modbatt import Session
from modbatt.app.errors import AppError, PackSilentError
from modbatt.bus.control_channel import ControlEndpoint, request

log = logging.getLogger("modbatt.app.channel")

REPLY_TIMEOUT_S = 2.0  # per attempt; a request is sent up to REPLY_ATTEMPTS times
REPLY_ATTEMPTS = 3


class PackChannel:
    """Requests to the pack over a control endpoint; `session` seals them once the link is up.

    `link_silent` says whether the pack's status frames stopped (a sealed request then gives up
    early); `reconnect` runs the handshake again.
    """

    def __init__(
        self,
        endpoint: ControlEndpoint,
        *,
        link_silent: Callable[[], bool],
        reconnect: Callable[[], object],
    ) -> None:
        self.endpoint = endpoint
        self._link_silent = link_silent
        self._reconnect = reconnect
        self._session: Session | None = None

    @property
    def session(self) -> Session | None:
        """The app link's session, once the channel is upgraded."""
        return self._session

    @session.setter
    def session(self, session: Session | None) -> None:
        self._session = session
        self.endpoint.session = session

    def request(
        self, message: dict[str, Any], *, plain: bool, timeout_s: float
    ) -> dict[str, Any] | None:
        """The answer to `message` (which carries its request id), or None: no answer."""
        sealed = self.session is not None and not plain
        answer = request(
            self.endpoint,
            message,
            attempts=REPLY_ATTEMPTS,
            timeout_s=timeout_s,
            plain=plain,
            give_up=self._link_silent if sealed else None,
        )
        if answer is None and sealed:
            log.warning("%s: no answer on the sealed link; re-establishing it", message["type"])
            try:
                self._reconnect()
            except AppError as exc:
                raise PackSilentError(
                    f"{message['type']}: no answer from the pack controller, and the link "
                    f"could not be re-established ({exc})"
                ) from None
            answer = request(self.endpoint, message, attempts=REPLY_ATTEMPTS, timeout_s=timeout_s)
        return answer
