"""The frame path's construction in plain Python, written from ``docs/PROTOCOL.md``.

This module is the executable form of the wire contract: clear, unoptimised code built on the
``cryptography`` package, which the tests compare with the Rust core byte for byte. It is not
for production use: Python cannot wipe the key bytes it holds. Use :class:`modbatt.Session`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import cmac, constant_time
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modbatt import errors
from modbatt.protocol.frames import Sealed

# --- identifiers (PROTOCOL.md §1) ---------------------------------------------------------
EXTENDED_ID_MASK = 0x1FFF_FFFF
ENCRYPTION_FLAG = 1 << 17
FORMAT_SHIFT = 15
FORMAT_MASK = 0b11 << FORMAT_SHIFT
SECURE_BITS = ENCRYPTION_FLAG | FORMAT_MASK

FORMAT_SINGLE, FORMAT_PAIR_DATA, FORMAT_PAIR_AUTH, FORMAT_FD = 0, 1, 2, 3
# The first byte of the MAC input: one code per form (both frames of a pair share one).
MAC_CODE = {FORMAT_SINGLE: 0, FORMAT_PAIR_DATA: 1, FORMAT_PAIR_AUTH: 1, FORMAT_FD: 3}

# --- key schedule (PROTOCOL.md §2) -------------------------------------------------------
KEY_HALF_LEN = 64
NONCE_LEN = 16
DH_SECRET_LEN = 32
LINK_SALT = b"modbatt/v1 link"
LINK_INFO = b"modbatt/v1 link key"
SESSION_SALT = b"modbatt/v1 session"
SESSION_INFO = b"modbatt/v1 session keys"

# --- frame forms (PROTOCOL.md §3) --------------------------------------------------------
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
SINGLE_MAX_PAYLOAD = 3
PAIR_MAX_PAYLOAD = 8
FD_MAX_PAYLOAD = 51
DEFAULT_MAX_FAILURES = 16
DEFAULT_PAIR_WINDOW = 32
MAX_PENDING_PAIRS = 32


def length_prefixed(value: bytes) -> bytes:
    """``lp(x)``: x preceded by its length in one byte."""
    if not 1 <= len(value) <= 255:
        raise errors.InvalidArgumentError("a component id must be 1 to 255 bytes long")
    return bytes([len(value)]) + value


def _check_secret(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise errors.KeyMaterialError(f"{name} must be {length} bytes, got {len(value)}")
    if not any(value):
        raise errors.KeyMaterialError(f"{name} is all zero bytes")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869), extract and expand."""
    return HKDF(algorithm=SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_link_key(
    half_a: bytes, id_a: str, half_b: bytes, id_b: str, dh_secret: bytes | None = None
) -> bytes:
    """The 32-byte link key of two components from their 64-byte device key halves."""
    _check_secret("device key half A", half_a, KEY_HALF_LEN)
    _check_secret("device key half B", half_b, KEY_HALF_LEN)
    if id_a == id_b:
        raise errors.InvalidArgumentError("a link needs two different component ids")
    if half_a == half_b:
        raise errors.KeyMaterialError("the two device key halves are identical")
    if dh_secret is not None:
        _check_secret("X25519 shared secret", dh_secret, DH_SECRET_LEN)
    # Canonical order: by component id, bytewise, so both ends feed HKDF the same bytes.
    (lo_id, lo_half), (hi_id, hi_half) = sorted(
        [(id_a.encode(), half_a), (id_b.encode(), half_b)], key=lambda pair: pair[0]
    )
    ikm = lo_half + hi_half + (dh_secret or b"")
    info = LINK_INFO + length_prefixed(lo_id) + length_prefixed(hi_id)
    return hkdf_sha256(ikm, LINK_SALT, info)


def derive_direction_keys(
    link_key: bytes, src_id: str, dst_id: str, src_nonce: bytes, dst_nonce: bytes
) -> tuple[bytes, bytes]:
    """(encryption key, MAC key) for the direction ``src -> dst`` of one session."""
    info = (
        SESSION_INFO
        + length_prefixed(src_id.encode())
        + length_prefixed(dst_id.encode())
        + src_nonce
        + dst_nonce
    )
    okm = hkdf_sha256(link_key, SESSION_SALT, info)
    return okm[:16], okm[16:]


def confirmation(
    link_key: bytes, src_id: str, dst_id: str, src_nonce: bytes, dst_nonce: bytes
) -> bytes:
    """The 16-byte key confirmation value of `src` for the handshake with `dst`."""
    info = (
        b"modbatt/v1 key confirmation"
        + length_prefixed(src_id.encode())
        + length_prefixed(dst_id.encode())
        + src_nonce
        + dst_nonce
    )
    return hkdf_sha256(link_key, b"modbatt/v1 confirm", info, 16)


def counter_block(logical_id: int, freshness: int) -> bytes:
    """The initial CTR counter block: logical id ‖ freshness ‖ 32-bit block counter 0."""
    return logical_id.to_bytes(4, "big") + freshness.to_bytes(8, "big") + bytes(4)


def aes_ctr(enc_key: bytes, logical_id: int, freshness: int, data: bytes) -> bytes:
    """AES-128-CTR keystream XOR (encrypt and decrypt are the same)."""
    mode = modes.CTR(counter_block(logical_id, freshness))
    encryptor = Cipher(algorithms.AES(enc_key), mode).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def mac_input(code: int, logical_id: int, freshness: int, ciphertext: bytes) -> bytes:
    """Form code ‖ logical id ‖ length ‖ freshness ‖ 0x0000 ‖ ciphertext."""
    return (
        bytes([code])
        + logical_id.to_bytes(4, "big")
        + bytes([len(ciphertext)])
        + freshness.to_bytes(8, "big")
        + bytes(2)
        + ciphertext
    )


def aes_cmac(mac_key: bytes, message: bytes) -> bytes:
    """The full 16-byte AES-CMAC (RFC 4493)."""
    mac = cmac.CMAC(algorithms.AES(mac_key))
    mac.update(message)
    return mac.finalize()


MESSAGE_CODE = 4
MESSAGE_MAX = 4096
MESSAGE_OVERHEAD = 1 + 8 + 16


def message_mac_input(stream: int, freshness: int, ciphertext: bytes) -> bytes:
    """0x04 ‖ stream ‖ length (2) ‖ freshness ‖ 0x00 ‖ ciphertext."""
    return (
        bytes([MESSAGE_CODE])
        + stream.to_bytes(4, "big")
        + len(ciphertext).to_bytes(2, "big")
        + freshness.to_bytes(8, "big")
        + bytes(1)
        + ciphertext
    )


def fd_frame_len(length: int) -> int:
    """The smallest CAN FD data length that holds ``length`` bytes."""
    for candidate in FD_LENGTHS:
        if candidate >= length:
            return candidate
    raise errors.InvalidArgumentError(f"{length} bytes do not fit a CAN FD frame")


def rebuild_forward(floor: int, low: int, bits: int) -> int | None:
    """Smallest ``v >= floor`` with ``v mod 2**bits == low`` (None past 2**64 - 1)."""
    modulus = 1 << bits
    value = (floor & ~(modulus - 1)) | low
    if value < floor:
        value += modulus
    return value if value < 1 << 64 else None


def rebuild_backward(floor: int, low: int, bits: int) -> int | None:
    """Largest ``v < floor`` with ``v mod 2**bits == low``."""
    modulus = 1 << bits
    value = (floor & ~(modulus - 1)) | low
    if value >= floor:
        value -= modulus
    return value if value >= 0 else None


@dataclass
class _Pending:
    ciphertext: bytes
    arrived: int  # the session's frame number when the data frame arrived


@dataclass
class ReferenceSession:
    """One end of one session: seals ``local -> peer`` and opens ``peer -> local``."""

    link_key: bytes
    local_id: str
    peer_id: str
    local_nonce: bytes
    peer_nonce: bytes
    max_failures: int = DEFAULT_MAX_FAILURES
    pair_window: int = DEFAULT_PAIR_WINDOW
    # State, not inputs:
    failures: int = field(default=0, init=False)
    opened: int = field(default=0, init=False)
    frames_received: int = field(default=0, init=False)
    expired: bool = field(default=False, init=False)
    _tx_next: dict[int, int] = field(default_factory=dict, init=False)
    _rx_floor: dict[int, int] = field(default_factory=dict, init=False)
    _pending: dict[int, _Pending] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        _check_secret("local nonce", self.local_nonce, NONCE_LEN)
        _check_secret("peer nonce", self.peer_nonce, NONCE_LEN)
        self.tx_enc, self.tx_mac = derive_direction_keys(
            self.link_key, self.local_id, self.peer_id, self.local_nonce, self.peer_nonce
        )
        self.rx_enc, self.rx_mac = derive_direction_keys(
            self.link_key, self.peer_id, self.local_id, self.peer_nonce, self.local_nonce
        )

    def __repr__(self) -> str:
        return f"ReferenceSession(local={self.local_id!r}, peer={self.peer_id!r}, keys=<redacted>)"

    def _check_alive(self) -> None:
        if self.expired:
            raise errors.SessionExpiredError("the session was torn down")

    def seal(self, can_id: int, data: bytes, fd: bool = False) -> Sealed:
        """Seal ``data`` for a logical id: ``(id, data, auth_id, auth)`` as `Session.seal`."""
        self._check_alive()
        if not 0 <= can_id <= EXTENDED_ID_MASK or can_id & SECURE_BITS:
            raise errors.InvalidArgumentError(f"0x{can_id:X} is not a logical 29-bit id")
        n = len(data)
        if fd:
            if n > FD_MAX_PAYLOAD:
                raise errors.InvalidArgumentError(f"FD carries at most 51 bytes, got {n}")
            form = FORMAT_FD
        elif n <= SINGLE_MAX_PAYLOAD:
            form = FORMAT_SINGLE
        elif n <= PAIR_MAX_PAYLOAD:
            form = FORMAT_PAIR_DATA
        else:
            raise errors.InvalidArgumentError(f"classic CAN carries at most 8 bytes, got {n}")
        freshness = self._tx_next.get(can_id, 0)
        if freshness >= (1 << 64) - 1:
            raise errors.CounterExhaustedError("freshness counter exhausted")
        self._tx_next[can_id] = freshness + 1
        ct = aes_ctr(self.tx_enc, can_id, freshness, data)
        tag = aes_cmac(self.tx_mac, mac_input(MAC_CODE[form], can_id, freshness, ct))
        secured = can_id | ENCRYPTION_FLAG
        if form == FORMAT_SINGLE:
            frame = ct + bytes([freshness & 0xFF]) + tag[:4]
            return (secured | FORMAT_SINGLE << FORMAT_SHIFT, frame, None, None)
        if form == FORMAT_PAIR_DATA:
            auth = (freshness & 0xFFFF).to_bytes(2, "big") + tag[:6]
            return (
                secured | FORMAT_PAIR_DATA << FORMAT_SHIFT,
                ct,
                secured | FORMAT_PAIR_AUTH << FORMAT_SHIFT,
                auth,
            )
        total = fd_frame_len(1 + n + 4 + 8)
        padding = bytes(total - (1 + n + 4 + 8))
        frame = bytes([n]) + ct + padding + (freshness & 0xFFFF_FFFF).to_bytes(4, "big") + tag[:8]
        return (secured | FORMAT_FD << FORMAT_SHIFT, frame, None, None)

    def seal_message(self, stream: int, data: bytes) -> bytes:
        """Seal a message of up to 4096 bytes on `stream` (docs/PROTOCOL.md §4.5)."""
        self._check_alive()
        if not 0 <= stream <= EXTENDED_ID_MASK or stream & SECURE_BITS:
            raise errors.InvalidArgumentError(f"0x{stream:X} is not a logical 29-bit id")
        if len(data) > MESSAGE_MAX:
            raise errors.InvalidArgumentError("a sealed message carries at most 4096 bytes")
        freshness = self._tx_next.get(stream, 0)
        self._tx_next[stream] = freshness + 1
        ct = aes_ctr(self.tx_enc, stream, freshness, data)
        tag = aes_cmac(self.tx_mac, message_mac_input(stream, freshness, ct))
        return bytes([MESSAGE_CODE]) + freshness.to_bytes(8, "big") + ct + tag

    def open_message(self, stream: int, data: bytes) -> bytes:
        """Open a sealed message received on `stream`."""
        self._check_alive()
        if (
            not MESSAGE_OVERHEAD <= len(data) <= MESSAGE_MAX + MESSAGE_OVERHEAD
            or data[0] != MESSAGE_CODE
        ):
            raise errors.MalformedFrameError("not a sealed message")
        freshness = int.from_bytes(data[1:9], "big")
        ct, tag = data[9:-16], data[-16:]
        full = aes_cmac(self.rx_mac, message_mac_input(stream, freshness, ct))
        if not constant_time.bytes_eq(full, tag):
            self.failures += 1
            if self.failures >= self.max_failures:
                self.expired = True
            raise errors.AuthenticationError(f"authentication failed for stream 0x{stream:08X}")
        if freshness < self._rx_floor.get(stream, 0):
            raise errors.ReplayError(f"message replays freshness value {freshness}")
        self._rx_floor[stream] = freshness + 1
        self.opened += 1
        return aes_ctr(self.rx_enc, stream, freshness, ct)

    def open(self, can_id: int, data: bytes) -> bytes | None:
        """Open a received frame: its plaintext, or None for a held pair data frame."""
        self.frames_received += 1
        self._check_alive()
        if not 0 <= can_id <= EXTENDED_ID_MASK or len(data) > 64:
            raise errors.MalformedFrameError("not a CAN frame")
        if not can_id & ENCRYPTION_FLAG:
            raise errors.DowngradeError(f"plain frame 0x{can_id:08X} on a secured link")
        logical = can_id & ~SECURE_BITS
        form = (can_id & FORMAT_MASK) >> FORMAT_SHIFT
        if form == FORMAT_SINGLE:
            if not 5 <= len(data) <= 8:
                raise errors.MalformedFrameError("a single-frame message is 5 to 8 bytes")
            n = len(data) - 5
            return self._verify(form, logical, data[:n], data[n], 8, data[n + 1 :])
        if form == FORMAT_FD:
            if len(data) < 13:
                raise errors.MalformedFrameError("an FD message is at least 13 bytes")
            n = data[0]
            if n > FD_MAX_PAYLOAD or fd_frame_len(n + 13) != len(data):
                raise errors.MalformedFrameError("FD length does not match the payload")
            tail = len(data) - 12
            if any(data[1 + n : tail]):
                raise errors.MalformedFrameError("FD padding is not zero")
            low = int.from_bytes(data[tail : tail + 4], "big")
            return self._verify(form, logical, data[1 : 1 + n], low, 32, data[tail + 4 :])
        if form == FORMAT_PAIR_DATA:
            if not 4 <= len(data) <= 8:
                raise errors.MalformedFrameError("a pair's data frame is 4 to 8 bytes")
            if logical not in self._pending and len(self._pending) == MAX_PENDING_PAIRS:
                oldest = min(self._pending, key=lambda k: self._pending[k].arrived)
                del self._pending[oldest]
            self._pending[logical] = _Pending(bytes(data), self.frames_received)
            return None
        if len(data) != 8:
            raise errors.MalformedFrameError("a pair's authenticator frame is 8 bytes")
        pending = self._pending.get(logical)
        if pending is None:
            raise errors.UnpairedFrameError(f"authenticator 0x{can_id:08X} has no data frame")
        if self.frames_received - pending.arrived > self.pair_window:
            del self._pending[logical]
            raise errors.UnpairedFrameError("authenticator came after the pair window")
        low = int.from_bytes(data[:2], "big")
        opened = self._verify(form, logical, pending.ciphertext, low, 16, data[2:])
        del self._pending[logical]
        return opened

    def _verify(self, form: int, logical: int, ct: bytes, low: int, bits: int, tag: bytes) -> bytes:
        code = MAC_CODE[form]
        floor = self._rx_floor.get(logical, 0)
        freshness = rebuild_forward(floor, low, bits)
        if freshness is not None and self._tag_matches(code, logical, freshness, ct, tag):
            self._rx_floor[logical] = freshness + 1
            self.opened += 1
            return aes_ctr(self.rx_enc, logical, freshness, ct)
        old = rebuild_backward(floor, low, bits)
        if old is not None and self._tag_matches(code, logical, old, ct, tag):
            raise errors.ReplayError(f"frame 0x{logical:08X} replays freshness value {old}")
        self.failures += 1
        if self.failures >= self.max_failures:
            self.expired = True
            self._pending.clear()
        raise errors.AuthenticationError(f"authentication failed for 0x{logical:08X}")

    def _tag_matches(self, code: int, logical: int, freshness: int, ct: bytes, tag: bytes) -> bool:
        full = aes_cmac(self.rx_mac, mac_input(code, logical, freshness, ct))
        return constant_time.bytes_eq(full[: len(tag)], tag)
