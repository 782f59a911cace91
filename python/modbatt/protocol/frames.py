"""What `Session.seal` returns, and the frames it stands for.

`Session.seal` returns one flat tuple, ``(id, data, auth_id, auth)``: the frame to send and,
for a classic message of 4 to 8 bytes, the authenticator frame to send right after it
(``None, None`` otherwise). :func:`frames_of` turns it into the list of frames to send.
"""

from __future__ import annotations

from typing import TypeAlias

Sealed: TypeAlias = tuple[int, bytes, int | None, bytes | None]


def frames_of(sealed: Sealed) -> list[tuple[int, bytes]]:
    """The (id, data) frames of a sealed message, in the order to send them."""
    can_id, data, auth_id, auth = sealed
    if auth_id is None or auth is None:
        return [(can_id, data)]
    return [(can_id, data), (auth_id, auth)]
