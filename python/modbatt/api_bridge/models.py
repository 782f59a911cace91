"""The API-Bridge's REST contract as pydantic models, shared by the client and the server.

Field names, paths and required fields follow the public Go API-Bridge (REFERENCE §3). What
modbatt adds is marked in the OpenAPI schema with ``x-modbatt-extension: true`` and named so
that nobody mistakes it for a public field: component_b's key halves, the LCT key recovery
route, ``replaces`` for an LCT's replacement, and ``already_registered``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

EXTENSION: dict[str, Any] = {"x-modbatt-extension": True}

# Identifiers appear inside other identifiers (COMP-<creator>-<seconds>) and in URLs: keep
# them to a safe alphabet.
CREATOR_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
Creator = Annotated[str, StringConstraints(pattern=f"^{CREATOR_PATTERN.pattern}$")]
ComponentId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
LctId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,160}$")]
Text = Annotated[str, StringConstraints(max_length=1024)]
TxHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
KeyHalfHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]
LctStatus = Literal["active", "suspended", "revoked"]


class Request(BaseModel):
    """A request body: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    """A response body. Clients accept fields they do not know (the server may be newer)."""

    model_config = ConfigDict(extra="ignore")


class ErrorBody(Response):
    """Every 4xx and 5xx answer: what is wrong, in words, and the details when there are some."""

    error: str
    detail: list[dict[str, Any]] | None = None


class Health(Response):
    """``GET /health``."""

    status: str
    service: str = "modbatt-api-bridge"
    version: str = ""


class RegisterRequest(Request):
    """``POST /api/v1/components/register``."""

    creator: Creator
    component_data: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    context: Text = ""


class Component(Response):
    """A registered component, as register and ``GET /api/v1/components/{id}`` return it."""

    component_id: ComponentId
    component_identity: ComponentId
    lct_id: LctId
    status: str
    txhash: TxHash
    creator: Creator
    component_data: str
    context: str = ""
    created_at: str = ""
    already_registered: bool = Field(
        default=False,
        description="modbatt extension: true when register found the component already "
        "registered for this creator and component_data (register is idempotent).",
        json_schema_extra=EXTENSION,
    )


class Identity(Response):
    """``GET /api/v1/components/{id}/identity``."""

    component_id: ComponentId
    component_identity: ComponentId
    creator: Creator
    status: str
    txhash: TxHash


class VerifyRequest(Request):
    """``POST /api/v1/components/{id}/verify``."""

    verifier: Creator
    context: Text = ""


class Verification(Response):
    """The result of a verification."""

    component_id: ComponentId
    verifier: Creator
    verified: bool
    status: str
    verified_at: str
    txhash: TxHash


class LctCreateRequest(Request):
    """``POST /api/v1/lct/create``."""

    creator: Creator
    component_a: ComponentId
    component_b: ComponentId
    context: Text = ""
    proxy_id: Text = ""
    replaces: LctId | None = Field(
        default=None,
        description="modbatt extension: the id of a revoked LCT between the same two "
        "components that this one replaces (key recovery). Creating the replacement of an "
        "LCT that already has one returns that replacement.",
        json_schema_extra=EXTENSION,
    )


class LctRecord(Response):
    """``GET /api/v1/lct/{id}``: an LCT without its key halves."""

    lct_id: LctId
    component_a: ComponentId
    component_b: ComponentId
    context: str = ""
    proxy_id: str = ""
    status: LctStatus
    created_at: str
    updated_at: str = ""
    creator: Creator
    txhash: TxHash
    replaces: LctId | None = Field(default=None, json_schema_extra=EXTENSION)
    replaced_by: LctId | None = Field(default=None, json_schema_extra=EXTENSION)


class LctKeys(Response):
    """The four 64-byte key halves of an LCT, as 128 lowercase hex characters each.

    ``device_key_half`` and ``lct_key_half`` are component_a's (the public fields);
    component_b's pair travels in the extension fields.
    """

    device_key_half: KeyHalfHex = Field(description="component_a's device key half")
    lct_key_half: KeyHalfHex = Field(description="component_a's LCT key half")
    component_b_device_key_half: KeyHalfHex = Field(
        description="modbatt extension: component_b's device key half",
        json_schema_extra=EXTENSION,
    )
    component_b_lct_key_half: KeyHalfHex = Field(
        description="modbatt extension: component_b's LCT key half",
        json_schema_extra=EXTENSION,
    )


class LctCreated(LctRecord, LctKeys):
    """The answer to ``POST /api/v1/lct/create``: the LCT and its four key halves."""


class LctKeysResponse(LctKeys):
    """modbatt extension ``GET /api/v1/lct/{id}/keys``: an active LCT's halves, again."""

    lct_id: LctId
    component_a: ComponentId
    component_b: ComponentId


class LctStatusRequest(Request):
    """``PUT /api/v1/lct/{id}/status``."""

    creator: Creator
    status: LctStatus
    context: Text = ""


class LctStatusChanged(Response):
    """The answer to a status update."""

    lct_id: LctId
    status: LctStatus
    previous_status: LctStatus
    updated_at: str
    txhash: TxHash


KEY_HALF_FIELDS = (
    "device_key_half",
    "lct_key_half",
    "component_b_device_key_half",
    "component_b_lct_key_half",
)
"""The response fields that carry key halves."""

PLACEHOLDER_HALVES = frozenset({"generated_device_key_half", "generated_lct_key_half"})
"""What the public Go API-Bridge returns instead of key halves."""
