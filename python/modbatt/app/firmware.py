"""The firmware update (seed Workflow B.1), from the app's side: sealed chunks, checked."""

from __future__ import annotations

import hashlib
from typing import Any

from modbatt.app.errors import AppError
from modbatt.app.link import AppLink
from modbatt.app.parts import AppParts


class FirmwareUpload:
    """Sends a firmware image to the pack, which stores it only if it verifies."""

    def __init__(self, parts: AppParts, link: AppLink) -> None:
        self.parts = parts
        self.link = link

    def send(self, image: bytes, version: str) -> dict[str, Any]:
        """Send a firmware image in sealed chunks; the pack stores it only if it verifies."""
        self.link.up("firmware")
        digest = hashlib.sha256(image).hexdigest()
        ready = self.parts.ask(
            {"type": "firmware_begin", "version": version, "size": len(image), "sha256": digest},
            "firmware_ready",
        )
        size = int(ready["chunk"])
        with self.parts.progress.counting(f"firmware {version}: bytes sent", len(image)) as advance:
            for index, start in enumerate(range(0, len(image), size)):
                chunk = image[start : start + size]
                taken = self.parts.ask(
                    {"type": "firmware_chunk", "index": index, "data": chunk.hex()},
                    "firmware_chunk_ok",
                )
                if taken["index"] != index:
                    raise AppError(
                        f"firmware_chunk: sent chunk {index}, the pack took {taken['index']}"
                    )
                advance(len(chunk))
        stored = self.parts.ask({"type": "firmware_end"}, "firmware_stored")
        self.parts.record("firmware.sent", version=version, sha256=digest)
        return stored
