"""`ApiBridgeClient`: the app's client for the Web4 API-Bridge, on httpx.

It speaks the public API-Bridge's REST contract (and modbatt's extensions when the server has
them), validates every answer against :mod:`modbatt.api_bridge.models`, refuses key material
that is missing, a placeholder, not hex or the wrong length (:class:`~modbatt.errors.KeyHalfError`,
before the caller can store anything), and retries what may succeed on a second try.

Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
full jitter, bounded both in attempts and in total time, each retry logged; other 4xx are not
retried. Retrying a write is safe: ``register`` is idempotent on (creator, component_data) on
modbatt's API-Bridge, and ``lct/create`` carries an ``Idempotency-Key`` that stays the same
across the retries of one call, so a lost answer never leaves a duplicate behind. (The public
Go API-Bridge has neither; against it a lost register answer can leave a duplicate.)
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, SecretBytes, ValidationError

from modbatt.api_bridge import models
from modbatt.errors import (
    ApiBridgeRequestError,
    ApiBridgeResponseError,
    ApiBridgeUnavailableError,
    KeyHalfError,
)

log = logging.getLogger("modbatt.api_bridge.client")

DEFAULT_URL = "http://127.0.0.1:8082"
DEFAULT_CREATOR = "alice"
ENV_URL = "MODBATT_API_BRIDGE_URL"
ENV_CREATOR = "MODBATT_CREATOR"
ENV_TOKEN = "MODBATT_API_BRIDGE_TOKEN"  # noqa: S105 (the variable's name, not a token)
ENV_TIMEOUT = "MODBATT_API_BRIDGE_TIMEOUT"

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: at most `attempts` tries within `total_time_s` seconds."""

    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 2.0
    total_time_s: float = 15.0

    def delay(self, attempt: int, jitter: float) -> float:
        """Full-jitter exponential backoff before try `attempt + 1` (jitter in [0, 1))."""
        backoff: float = self.base_delay_s * 2.0 ** (attempt - 1)
        return min(self.max_delay_s, backoff) * jitter


@dataclass(frozen=True)
class ApiBridgeConfig:
    """Where the API-Bridge is and who we are to it. The token never appears in a repr."""

    base_url: str = DEFAULT_URL
    creator: str = DEFAULT_CREATOR
    timeout_s: float = 5.0
    token: str | None = field(default=None, repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ApiBridgeConfig:
        """Defaults, then the environment, then explicit overrides (those that are not None)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if ENV_URL in env:
            values["base_url"] = env[ENV_URL]
        if ENV_CREATOR in env:
            values["creator"] = env[ENV_CREATOR]
        if ENV_TOKEN in env:
            values["token"] = env[ENV_TOKEN]
        if ENV_TIMEOUT in env:
            values["timeout_s"] = float(env[ENV_TIMEOUT])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class LctKeys:
    """An LCT's four 64-byte key halves. Each prints as ``SecretBytes('**********')``."""

    lct_id: str
    component_a: str
    component_b: str
    device_key_half_a: SecretBytes
    lct_key_half_a: SecretBytes
    device_key_half_b: SecretBytes
    lct_key_half_b: SecretBytes


@dataclass(frozen=True)
class CreatedLct:
    """What ``lct/create`` returns: the LCT's record and its key halves."""

    record: models.LctRecord
    keys: LctKeys


def check_key_halves(data: Mapping[str, Any]) -> None:
    """Refuse an answer whose key halves are not four real 64-byte halves.

    The message names the field and the problem, never the value.
    """
    for name in models.KEY_HALF_FIELDS:
        value = data.get(name)
        if value is None:
            hint = (
                " (the public API-Bridge returns only component_a's halves; "
                "use modbatt's API-Bridge)"
                if name.startswith("component_b")
                else ""
            )
            raise KeyHalfError(name, f"is missing{hint}")
        if not isinstance(value, str):
            raise KeyHalfError(name, f"is a {type(value).__name__}, not a hex string")
        if value in models.PLACEHOLDER_HALVES:
            raise KeyHalfError(name, f"is the placeholder {value!r}, not key material")
        if any(c not in "0123456789abcdef" for c in value):
            raise KeyHalfError(name, "is not lowercase hexadecimal")
        if len(value) != 128:
            raise KeyHalfError(name, f"is {len(value)} hex characters, not 128 (64 bytes)")
        if set(value) == {"0"}:
            raise KeyHalfError(name, "is all zero bytes")


def _keys(data: Mapping[str, Any], lct_id: str, component_a: str, component_b: str) -> LctKeys:
    check_key_halves(data)
    half = {name: SecretBytes(bytes.fromhex(data[name])) for name in models.KEY_HALF_FIELDS}
    return LctKeys(
        lct_id=lct_id,
        component_a=component_a,
        component_b=component_b,
        device_key_half_a=half["device_key_half"],
        lct_key_half_a=half["lct_key_half"],
        device_key_half_b=half["component_b_device_key_half"],
        lct_key_half_b=half["component_b_lct_key_half"],
    )


def _parse(model: type[Model], data: Any, what: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiBridgeResponseError(
            f"{what}: the answer's {where!r} is invalid: {first['msg']}"
        ) from None


class ApiBridgeClient:
    """A client for one API-Bridge, acting as `config.creator`."""

    def __init__(
        self,
        config: ApiBridgeConfig | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.config = config or ApiBridgeConfig.from_env()
        headers = {"Accept": "application/json"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        self._http = httpx.Client(
            base_url=self.config.base_url, headers=headers, transport=transport
        )
        self._sleep = sleep
        self._jitter = jitter

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiBridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ApiBridgeClient({self.config.base_url!r}, creator={self.config.creator!r})"

    # --- the calls -----------------------------------------------------------------------

    def health(self) -> models.Health:
        """``GET /health``."""
        return _parse(models.Health, self._request("GET", "/health"), "health")

    def register_component(self, component_data: str, context: str = "") -> models.Component:
        """Register a component (or find it already registered: register is idempotent)."""
        body = {
            "creator": self.config.creator,
            "component_data": component_data,
            "context": context,
        }
        data = self._request("POST", "/api/v1/components/register", json=body)
        return _parse(models.Component, data, "register")

    def get_component(self, component_id: str) -> models.Component:
        """A component's record."""
        data = self._request("GET", f"/api/v1/components/{component_id}")
        return _parse(models.Component, data, "get component")

    def get_identity(self, component_id: str) -> models.Identity:
        """A component's identity record."""
        data = self._request("GET", f"/api/v1/components/{component_id}/identity")
        return _parse(models.Identity, data, "identity")

    def verify_component(self, component_id: str, context: str = "") -> models.Verification:
        """Verify a component, as this creator."""
        body = {"verifier": self.config.creator, "context": context}
        data = self._request("POST", f"/api/v1/components/{component_id}/verify", json=body)
        return _parse(models.Verification, data, "verify")

    def create_lct(
        self,
        component_a: str,
        component_b: str,
        context: str = "",
        proxy_id: str = "",
        replaces: str | None = None,
    ) -> CreatedLct:
        """Create an LCT between two components; returns its record and four key halves."""
        body: dict[str, Any] = {
            "creator": self.config.creator,
            "component_a": component_a,
            "component_b": component_b,
            "context": context,
            "proxy_id": proxy_id,
        }
        if replaces is not None:
            body["replaces"] = replaces
        data = self._request(
            "POST", "/api/v1/lct/create", json=body, idempotency_key=str(uuid.uuid4())
        )
        if not isinstance(data, dict):
            raise ApiBridgeResponseError("lct/create: the answer is not a JSON object")
        keys = _keys(data, str(data.get("lct_id")), component_a, component_b)
        record = _parse(models.LctRecord, data, "lct/create")
        return CreatedLct(record=record, keys=keys)

    def get_lct(self, lct_id: str) -> models.LctRecord:
        """An LCT's record (without keys)."""
        return _parse(models.LctRecord, self._request("GET", f"/api/v1/lct/{lct_id}"), "get LCT")

    def update_lct_status(
        self, lct_id: str, status: models.LctStatus, context: str = ""
    ) -> models.LctStatusChanged:
        """Set an LCT's status (active, suspended, revoked)."""
        body = {"creator": self.config.creator, "status": status, "context": context}
        data = self._request("PUT", f"/api/v1/lct/{lct_id}/status", json=body)
        return _parse(models.LctStatusChanged, data, "LCT status")

    def recover_lct_keys(self, lct_id: str) -> LctKeys:
        """An active LCT's key halves again, for its creator (modbatt extension)."""
        data = self._request(
            "GET", f"/api/v1/lct/{lct_id}/keys", params={"creator": self.config.creator}
        )
        if not isinstance(data, dict):
            raise ApiBridgeResponseError("lct keys: the answer is not a JSON object")
        keys = _keys(data, lct_id, str(data.get("component_a")), str(data.get("component_b")))
        _parse(models.LctKeysResponse, data, "lct keys")
        return keys

    def replace_lct(self, lct_id: str, context: str = "") -> CreatedLct:
        """Revoke an LCT (if it is not revoked yet) and create its replacement.

        Safe to call again after any failure: a revoked LCT stays revoked, and creating the
        replacement of an LCT that has one returns that replacement.
        """
        old = self.get_lct(lct_id)
        if old.status != "revoked":
            self.update_lct_status(lct_id, "revoked", context)
        return self.create_lct(
            old.component_a,
            old.component_b,
            context=context or old.context,
            proxy_id=old.proxy_id,
            replaces=lct_id,
        )

    # --- transport -----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """One call with bounded retries; returns the parsed JSON answer."""
        policy = self.config.retry
        headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        started = time.monotonic()
        deadline = started + policy.total_time_s
        for attempt in range(1, policy.attempts + 1):
            timeout = max(0.05, min(self.config.timeout_s, deadline - time.monotonic()))
            retry_after = 0.0
            try:
                response = self._http.request(
                    method, path, json=json, params=params, headers=headers, timeout=timeout
                )
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc or 'no detail'}"
            else:
                status = response.status_code
                if status < 400:
                    return _json(response, method, path)
                if status != 429 and status < 500:
                    raise ApiBridgeRequestError(status, _error_message(response))
                reason = f"HTTP {status}"
                retry_after = _retry_after(response)
            delay = max(policy.delay(attempt, self._jitter()), retry_after)
            elapsed = time.monotonic() - started
            if attempt == policy.attempts or time.monotonic() + delay >= deadline:
                raise ApiBridgeUnavailableError(
                    f"{method} {self.config.base_url}{path}: gave up after {attempt} "
                    f"attempt(s) in {elapsed:.1f} s; last: {reason}"
                )
            log.warning(
                "API-Bridge %s %s: %s; retry %d of %d in %.2f s",
                method,
                path,
                reason,
                attempt,
                policy.attempts - 1,
                delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _json(response: httpx.Response, method: str, path: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ApiBridgeResponseError(
            f"{method} {path}: the answer is not valid JSON ({len(response.content)} bytes)"
        ) from None


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body)[:500]
    return str(body)[:500]


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0
