"""The bootstrap key agreement: an ephemeral X25519 exchange, and key halves delivered sealed.

A passive listener who records every frame from factory state on must not learn any key. So
each bootstrap (app ↔ pack) and each pairing (pack ↔ module) starts with an ephemeral X25519
exchange; the shared secret is

- mixed into the link key (``LinkKey(..., dh_secret=shared)``, docs/PROTOCOL.md §2.1), and
- used to derive the keys that seal the key delivery, so no key half crosses a bus in the
  clear::

    k = HKDF-SHA256(salt = "modbatt/v1 bootstrap", ikm = shared,
                    info = "modbatt/v1 key delivery" ‖ lp(initiator) ‖ lp(responder)
                           ‖ initiator public key ‖ responder public key, L = 64)
    delivery key (initiator -> responder) = k[0..32], acknowledgement key = k[32..64]
    sealed = nonce (12, random) ‖ AES-256-GCM(key, nonce, JSON payload, aad = label)

Each key seals one message, with its full 16-byte tag. A low-order public key (an all-zero
shared secret) is refused. What this does not stop is an active attacker who sits between
app and pack during the bootstrap itself: that first contact rests on the physical security
the seed asks for, and on the operator confirming a re-bootstrap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from modbatt.errors import ModbattError
from modbatt.protocol.reference import hkdf_sha256, length_prefixed

PUBLIC_KEY_LEN = 32
GCM_NONCE_LEN = 12
DELIVERY_LABEL = b"modbatt/v1 sealed key delivery"
ACK_LABEL = b"modbatt/v1 sealed key acknowledgement"


class KeyAgreementError(ModbattError, ValueError):
    """A public key is malformed or of low order, or a sealed message does not open."""


@dataclass
class Ephemeral:
    """One side's ephemeral X25519 key pair, used for a single bootstrap or pairing."""

    _private: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)

    @property
    def public(self) -> bytes:
        """The 32-byte public key to send."""
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def shared_secret(self, peer_public: bytes) -> bytes:
        """X25519 with the peer's public key; refuses low-order points."""
        if len(peer_public) != PUBLIC_KEY_LEN:
            raise KeyAgreementError(
                f"an X25519 public key is {PUBLIC_KEY_LEN} bytes, got {len(peer_public)}"
            )
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise KeyAgreementError("the peer's public key is of low order") from None
        if not any(shared):
            raise KeyAgreementError("the peer's public key is of low order")
        return shared


@dataclass(frozen=True)
class DeliveryKeys:
    """The two single-use keys of one sealed key delivery. Never printed."""

    delivery: bytes = field(repr=False)
    acknowledgement: bytes = field(repr=False)


def delivery_keys(
    shared: bytes,
    initiator_id: str,
    responder_id: str,
    initiator_public: bytes,
    responder_public: bytes,
) -> DeliveryKeys:
    """Derive the delivery and acknowledgement keys of one exchange."""
    info = (
        b"modbatt/v1 key delivery"
        + length_prefixed(initiator_id.encode())
        + length_prefixed(responder_id.encode())
        + initiator_public
        + responder_public
    )
    okm = hkdf_sha256(shared, b"modbatt/v1 bootstrap", info, 64)
    return DeliveryKeys(okm[:32], okm[32:])


def seal(key: bytes, label: bytes, payload: Mapping[str, Any], nonce: bytes | None = None) -> bytes:
    """Nonce ‖ AES-256-GCM(payload as canonical JSON), the label as associated data.

    The nonce is random; `nonce` fixes it for known-answer vectors only (each key seals one
    message, so a fixed nonce is never reused under a key in use).
    """
    nonce = os.urandom(GCM_NONCE_LEN) if nonce is None else nonce
    if len(nonce) != GCM_NONCE_LEN:
        raise KeyAgreementError(f"a GCM nonce is {GCM_NONCE_LEN} bytes, got {len(nonce)}")
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return nonce + AESGCM(key).encrypt(nonce, body, label)


def unseal(key: bytes, label: bytes, sealed: bytes) -> dict[str, Any]:
    """Open a sealed message; any change to it, or the wrong key, is refused."""
    if len(sealed) < GCM_NONCE_LEN + 16:
        raise KeyAgreementError(f"a sealed message is at least 28 bytes, got {len(sealed)}")
    try:
        body = AESGCM(key).decrypt(sealed[:GCM_NONCE_LEN], sealed[GCM_NONCE_LEN:], label)
    except InvalidTag:
        raise KeyAgreementError("the sealed message does not verify") from None
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise KeyAgreementError("the sealed message is not a JSON object")
    return payload
