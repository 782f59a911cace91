"""The exception hierarchy of modbatt, rooted at :class:`ModbattError`.

The Rust core raises these classes (``rust/src/py/errors.rs`` maps its one error enum onto
them by name), and the Python code raises them too. Each class mixes in the builtin that a
caller would naturally catch, as python-can does (``CanTimeoutError(CanError, TimeoutError)``).
No message ever carries key bytes.
"""

from __future__ import annotations

from typing import ClassVar


class ModbattError(Exception):
    """Base class of every error modbatt raises on purpose."""


class InvalidArgumentError(ModbattError, ValueError):
    """A value outside its domain: an id over 29 bits, a payload too long, a bad shape."""


class KeyMaterialError(ModbattError, ValueError):
    """Key material with the wrong length or a degenerate value (all zero, both halves equal)."""


class FrameRejectedError(ModbattError):
    """A received frame was dropped. ``reason`` names the drop counter it increments."""

    reason: ClassVar[str] = "rejected"


class NoRouteError(FrameRejectedError, LookupError):
    """No routing rule admits the frame (the gateway denies by default)."""

    reason = "no_route"


class AuthenticationError(FrameRejectedError):
    """The authentication tag did not verify; counts against the session's failure budget."""

    reason = "bad_tag"


class ReplayError(FrameRejectedError):
    """The frame is genuine but its freshness value was already used."""

    reason = "replay"


class DowngradeError(FrameRejectedError):
    """A plain frame (E = 0) arrived on a secured link."""

    reason = "downgrade"


class MalformedFrameError(FrameRejectedError, ValueError):
    """The frame breaks the wire format (length, padding, reserved id bits)."""

    reason = "malformed"


class UnpairedFrameError(FrameRejectedError):
    """One frame of a classic pair arrived without its partner, or after the pair timeout."""

    reason = "unpaired"


class NoSessionError(FrameRejectedError):
    """The frame's link has no session in the gateway, or its session was torn down."""

    reason = "no_session"


class SessionError(ModbattError):
    """The session can no longer be used and must be re-established."""


class SessionExpiredError(SessionError):
    """The session was torn down after too many verification failures."""


class CounterExhaustedError(SessionError):
    """A freshness counter reached its limit; a new session is needed."""


class ApiBridgeError(ModbattError):
    """A call to the API-Bridge failed."""


class ApiBridgeUnavailableError(ApiBridgeError, ConnectionError):
    """The API-Bridge could not be reached, or kept failing, within the retry bounds."""


class ApiBridgeRequestError(ApiBridgeError):
    """The API-Bridge refused the request (a 4xx other than 429); `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"API-Bridge answered {status}: {message}")
        self.status = status


class ApiBridgeResponseError(ApiBridgeError, ValueError):
    """The API-Bridge's answer is not what the contract says (bad JSON, missing fields...)."""


class KeyHalfError(ApiBridgeResponseError):
    """A key half in an answer is missing, a placeholder, not hex or the wrong length.

    `field` names the response field; the message says what is wrong without the value, and
    what the caller kept (`kept`: by default, that no key was stored).
    """

    def __init__(self, field: str, problem: str, kept: str = "no key was stored") -> None:
        super().__init__(f"key half {field!r} {problem}; {kept}")
        self.field = field
        self.problem = problem


class BusOpenError(ModbattError):
    """A CAN bus could not be opened (no such interface, adapter or driver)."""


__all__ = [
    "ApiBridgeError",
    "ApiBridgeRequestError",
    "ApiBridgeResponseError",
    "ApiBridgeUnavailableError",
    "AuthenticationError",
    "BusOpenError",
    "CounterExhaustedError",
    "DowngradeError",
    "FrameRejectedError",
    "InvalidArgumentError",
    "KeyHalfError",
    "KeyMaterialError",
    "MalformedFrameError",
    "ModbattError",
    "NoRouteError",
    "NoSessionError",
    "ReplayError",
    "SessionError",
    "SessionExpiredError",
    "UnpairedFrameError",
]
