"""The firmware update on the pack's side (seed Workflow B.1)."""

from __future__ import annotations

import hashlib
from typing import Any

from modbatt.pack.keys import PackKeys
from modbatt.state.stores import atomic_write


class FirmwareReceiver:
    """The firmware update (Workflow B.1): a chunked transfer with an integrity check.

    ``firmware_begin`` {version, size, sha256} opens a transfer; ``firmware_chunk`` {index,
    data (hex, at most 1024 bytes)} must come in order; ``firmware_end`` checks the size and
    the SHA-256 and only then stores the image atomically as ``firmware/<version>.bin`` in the
    pack's state directory. A missing, repeated, reordered or altered chunk fails the transfer
    and nothing is stored. (Installing the image on the controller is the hardware's job.)
    """

    MAX_SIZE = 4 << 20
    CHUNK = 1024

    def __init__(self, keys: PackKeys) -> None:
        self.keys = keys
        self.directory = keys.state_dir / "firmware"
        self._transfer: dict[str, Any] | None = None

    def begin(self, message: dict[str, Any]) -> dict[str, Any]:
        """Open a transfer."""
        version, size, digest = (
            str(message["version"]),
            int(message["size"]),
            str(message["sha256"]),
        )
        if not version.replace(".", "").replace("-", "").isalnum() or len(version) > 32:
            raise ValueError("firmware version: letters, digits, dots and dashes, at most 32")
        if not 0 < size <= self.MAX_SIZE or len(digest) != 64:
            raise ValueError(f"firmware size 1..{self.MAX_SIZE} bytes and a 64-hex SHA-256")
        self._transfer = {
            "version": version,
            "size": size,
            "sha256": digest,
            "next": 0,
            "data": bytearray(),
        }
        return {"type": "firmware_ready", "chunk": self.CHUNK}

    def chunk(self, message: dict[str, Any]) -> dict[str, Any]:
        """Take the next chunk, in order."""
        transfer = self._transfer
        if transfer is None:
            raise ValueError("no firmware transfer open")
        index, data = int(message["index"]), bytes.fromhex(message["data"])
        if index != transfer["next"] or not 0 < len(data) <= self.CHUNK:
            self._transfer = None
            raise ValueError(
                f"firmware chunk {index}: expected chunk {transfer['next']} of at "
                f"most {self.CHUNK} bytes; transfer abandoned"
            )
        transfer["data"] += data
        transfer["next"] += 1
        if len(transfer["data"]) > transfer["size"]:
            self._transfer = None
            raise ValueError("firmware: more data than announced; transfer abandoned")
        return {"type": "firmware_chunk_ok", "index": index}

    def end(self, _message: dict[str, Any]) -> dict[str, Any]:
        """Check the whole image and store it."""
        transfer, self._transfer = self._transfer, None
        if transfer is None:
            raise ValueError("no firmware transfer open")
        image = bytes(transfer["data"])
        if (
            len(image) != transfer["size"]
            or hashlib.sha256(image).hexdigest() != transfer["sha256"]
        ):
            self.keys.record("firmware.rejected", version=transfer["version"])
            raise ValueError("firmware: size or SHA-256 mismatch; nothing stored")
        atomic_write(self.directory / f"{transfer['version']}.bin", image)
        self.keys.record("firmware.stored", version=transfer["version"], sha256=transfer["sha256"])
        return {"type": "firmware_stored", "version": transfer["version"], "size": len(image)}

    def installed(self) -> list[str]:
        """The firmware images stored, by version."""
        return sorted(p.stem for p in self.directory.glob("*.bin"))
