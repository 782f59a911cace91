"""Type stubs for the Rust extension ``modbatt._core`` (rust/src/py/)."""

from typing import Protocol, Self, TypeAlias, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

__all__ = [
    "DH_SECRET_LEN",
    "DROP_REASONS",
    "ENCRYPTION_FLAG",
    "EXTENDED_ID_MASK",
    "FD_MAX_PAYLOAD",
    "FORMAT_MASK",
    "KEY_HALF_LEN",
    "MAX_DATA_LEN",
    "MESSAGE_MAX",
    "NONCE_LEN",
    "SECURE_BITS",
    "STATUS_FORWARDED",
    "STATUS_LINK_DOWN",
    "STATUS_PENDING",
    "DataPlane",
    "Gateway",
    "LinkKey",
    "Session",
    "clear_encrypted",
    "compose_id",
    "frame_format",
    "is_encrypted",
    "logical_id",
    "set_encrypted",
    "split_id",
]

ENCRYPTION_FLAG: int
FORMAT_MASK: int
SECURE_BITS: int
EXTENDED_ID_MASK: int
KEY_HALF_LEN: int
NONCE_LEN: int
DH_SECRET_LEN: int
MAX_DATA_LEN: int
FD_MAX_PAYLOAD: int
MESSAGE_MAX: int
STATUS_FORWARDED: int
STATUS_PENDING: int
STATUS_LINK_DOWN: int
DROP_REASONS: list[tuple[int, str]]

def compose_id(base: int, node: int) -> int: ...
def split_id(can_id: int) -> tuple[int, int]: ...
def is_encrypted(can_id: int) -> bool: ...
def set_encrypted(can_id: int) -> int: ...
def clear_encrypted(can_id: int) -> int: ...
def logical_id(can_id: int) -> int: ...
def frame_format(can_id: int) -> int: ...

@final
class LinkKey:
    def __new__(
        cls,
        half_a: Buffer,
        id_a: str,
        half_b: Buffer,
        id_b: str,
        dh_secret: Buffer | None = None,
    ) -> Self: ...
    @property
    def fingerprint(self) -> str: ...
    def confirmation(
        self, src_id: str, dst_id: str, src_nonce: bytes, dst_nonce: bytes
    ) -> bytes: ...
    def verify_confirmation(
        self, src_id: str, dst_id: str, src_nonce: bytes, dst_nonce: bytes, tag: bytes
    ) -> bool: ...

_U8: TypeAlias = npt.NDArray[np.uint8]
_U32: TypeAlias = npt.NDArray[np.uint32]

@final
class Session:
    def __new__(
        cls,
        link_key: LinkKey,
        local_id: str,
        peer_id: str,
        local_nonce: Buffer,
        peer_nonce: Buffer,
        *,
        max_failures: int = ...,  # 16
        pair_window: int = ...,  # 32
    ) -> Self: ...
    def seal(
        self, can_id: int, data: bytes, fd: bool = False
    ) -> tuple[int, bytes, int | None, bytes | None]: ...
    def open(self, can_id: int, data: bytes) -> bytes | None: ...
    def seal_message(self, stream: int, data: bytes) -> bytes: ...
    def open_message(self, stream: int, data: bytes) -> bytes: ...
    def seal_batch(
        self, ids: _U32, lens: _U8, data: _U8, fd: bool = False
    ) -> tuple[_U32, _U8, _U8, _U8]: ...
    def open_batch(self, ids: _U32, lens: _U8, data: _U8) -> tuple[_U32, _U8, _U8, _U8]: ...
    @property
    def local_id(self) -> str: ...
    @property
    def peer_id(self) -> str: ...
    @property
    def expired(self) -> bool: ...
    def stats(self) -> dict[str, int]: ...

@final
class Gateway:
    def __new__(cls, *, cut_through: bool = True) -> Self: ...
    @property
    def cut_through(self) -> bool: ...
    def add_rule(
        self,
        src_bus: int,
        match_id: int,
        mask: int,
        dst_bus: int,
        *,
        inbound: int | None = None,
        outbound: int | None = None,
        fd: bool = False,
        id_and: int | None = None,
        id_or: int = 0,
        id_xor: int = 0,
        id_set: int | None = None,
    ) -> None: ...
    def clear_rules(self) -> None: ...
    def rules(self) -> list[dict[str, int | bool | None]]: ...
    def install_session(self, link: int, session: Session) -> None: ...
    def remove_session(self, link: int) -> bool: ...
    def session_stats(self, link: int) -> dict[str, int] | None: ...
    def step(self, bus: int, can_id: int, data: bytes) -> list[tuple[int, int, bytes]]: ...
    def step_checked(self, bus: int, can_id: int, data: bytes) -> list[tuple[int, int, bytes]]: ...
    def set_tap(self, match_id: int, mask: int) -> None: ...
    def take_tapped(self) -> list[tuple[int, bytes]]: ...
    def seal_message(self, link: int, stream: int, data: bytes) -> bytes: ...
    def open_message(self, link: int, stream: int, data: bytes) -> bytes: ...
    def seal_frame(
        self, link: int, can_id: int, data: bytes, fd: bool = False
    ) -> list[tuple[int, bytes]]: ...
    def has_session(self, link: int) -> bool: ...
    def step_batch(
        self, buses: _U8, ids: _U32, lens: _U8, data: _U8
    ) -> tuple[_U8, _U32, _U8, _U8, _U8]: ...
    def stats(self) -> dict[str, int]: ...

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

@final
class DataPlane:
    """Threads that carry routed frames between two sockets through a gateway, GIL-free.

    Linux only. Bus 0 is CAN 1, bus 1 CAN 2, as in the gateway. The sockets `can1` and
    `can2` are read blocking with a 50 ms receive timeout from then on: they are the plane's.
    """

    def __new__(
        cls,
        gateway: Gateway,
        can1: _HasFileno,
        can2: _HasFileno,
        *,
        can_fd: tuple[bool, bool] = ...,  # (False, False)
        sealed_only: tuple[bool, bool] = ...,  # (True, False)
        send_via: tuple[_HasFileno | None, _HasFileno | None] = ...,  # (None, None)
        priority: int | None = None,
    ) -> DataPlane: ...
    @property
    def running(self) -> bool: ...
    @property
    def realtime(self) -> bool: ...
    def stop(self) -> None: ...
    def stats(self) -> list[dict[str, int]]: ...
    def __enter__(self) -> DataPlane: ...
    def __exit__(self, _exc_type: object, _exc: object, _tb: object) -> None: ...
