"""The pack's answers as the app reads them: every field it uses checked before use.

CAN 1 is not trusted (docs/SECURITY.md): an answer that is missing, a refusal, of another type
or malformed is an :class:`~modbatt.app.errors.AppError` naming the request and the problem
(the field, never its value).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from modbatt.app.errors import AppError, PackRefusedError, PackSilentError
from modbatt.protocol.catalogue import MAX_MODULES
from modbatt.protocol.handshake import CONFIRM_LEN, NONCE_LEN

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
