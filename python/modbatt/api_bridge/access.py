"""Who may use the embedded API-Bridge's ``/api/v1``: the three access modes.

- **per-creator tokens** (``--tokens FILE``): each creator has its own bearer token; a request
  acts as the creator its token belongs to and reads only that creator's LCTs. The mode for a
  bridge other machines can reach.
- **one shared token** (``--token``): any holder may act as any creator (development).
- **open**: no token; any client may act as any creator. Loopback addresses only (development).

The tokens file holds each creator's token as a SHA-256, never the token itself, so reading
the file does not give a token away; ``modbatt api-bridge add-token`` makes a token, stores its
hash and prints the token once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from modbatt.api_bridge import models
from modbatt.errors import ModbattError
from modbatt.state import stores

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


class AccessConfigError(ModbattError):
    """A tokens file that cannot be used, or a mode the address does not allow."""


def token_digest(token: str) -> str:
    """What the tokens file keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (a name other than localhost counts as not)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The access mode of a running API-Bridge."""

    shared_token: str | None = field(default=None, repr=False)
    creator_digests: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def mode(self) -> str:
        """``per-creator``, ``shared-token`` or ``open``."""
        if self.creator_digests:
            return "per-creator"
        return "shared-token" if self.shared_token is not None else "open"

    @property
    def needs_token(self) -> bool:
        """Whether /api/v1 requires a bearer token."""
        return self.mode != "open"

    def describe(self) -> str:
        """The access mode in words, for the startup line."""
        if self.mode == "per-creator":
            count = len(self.creator_digests)
            return (
                f"per-creator tokens ({count} creator{'' if count == 1 else 's'}): each client "
                "acts only as its token's creator"
            )
        if self.mode == "shared-token":
            return "one shared token (development): any holder may act as any creator"
        return "open (development, loopback only): any local client may act as any creator"

    def check_address(self, host: str) -> None:
        """Refuse an open bridge on an address other machines can reach."""
        if self.mode == "open" and not is_loopback(host):
            raise AccessConfigError(
                f"refusing to serve on {host} without tokens: anyone who can reach it could "
                "read every creator's key halves. Give each creator a token (--tokens FILE, "
                "made with 'modbatt api-bridge add-token'), or bind to 127.0.0.1"
            )

    def caller(self, presented: str | None) -> str | None:
        """The creator a request acts as (None: any creator); `PermissionError` when refused.

        Every comparison takes constant time, and in per-creator mode every creator's digest
        is compared, so the time taken says nothing about which token was close.
        """
        given = (presented or "").encode()
        if self.mode == "open":
            return None
        if self.mode == "shared-token":
            assert self.shared_token is not None
            if presented is None or not hmac.compare_digest(given, self.shared_token.encode()):
                raise PermissionError
            return None
        digest = token_digest(presented or "").encode()
        found = None
        for creator, expected in self.creator_digests.items():
            if hmac.compare_digest(digest, expected.encode()):
                found = creator
        if presented is None or found is None:
            raise PermissionError
        return found


def load_tokens(path: Path) -> dict[str, str]:
    """The creators and token digests in a tokens file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AccessConfigError(
            f"{path}: no tokens file (make one with 'modbatt api-bridge add-token')"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AccessConfigError(f"{path}: cannot read the tokens file ({exc})") from exc
    try:
        creators = json.loads(text)["creators"]
        digests = {str(c): str(d["sha256"]) for c, d in creators.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AccessConfigError(
            f'{path}: not a tokens file (expected {{"creators": {{NAME: {{"sha256": HEX}}}}}})'
        ) from exc
    for creator, digest in digests.items():
        if not _valid_creator(creator) or len(digest) != 64 or not _is_hex(digest):
            raise AccessConfigError(f"{path}: creator {creator!r}: not a valid entry")
    if not digests:
        raise AccessConfigError(
            f"{path}: no creators (add one with 'modbatt api-bridge add-token')"
        )
    return digests


def add_token(path: Path, creator: str) -> tuple[str, bool]:
    """Make a new token for `creator`, store its digest; returns it and whether one was replaced.

    The file is written atomically (mode 0600); a running server reads it at start-up.
    """
    if not _valid_creator(creator):
        raise AccessConfigError(f"{creator!r} is not a creator name (letters, digits, _ . -)")
    digests = load_tokens(path) if path.exists() else {}
    replaced = creator in digests
    token = secrets.token_urlsafe(32)
    digests[creator] = token_digest(token)
    body = {"creators": {c: {"sha256": d} for c, d in sorted(digests.items())}}
    stores.atomic_write(path, (json.dumps(body, indent=2) + "\n").encode())
    return token, replaced


def _valid_creator(name: str) -> bool:
    return models.CREATOR_PATTERN.fullmatch(name) is not None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
