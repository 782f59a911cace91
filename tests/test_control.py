"""The control channel: plain before the upgrade, sealed after it, downgrades dropped."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from modbatt import LinkKey, Session
from modbatt.control import (
    APP_TO_PACK,
    PACK_TO_APP,
    ControlEndpoint,
    ControlError,
    decode,
    encode,
)
from modbatt.transport import CanPort, parse_bus_spec

APP, PACK = "COMP-alice-1", "COMP-alice-2"


@pytest.fixture
def endpoints() -> Iterator[tuple[ControlEndpoint, ControlEndpoint]]:
    name = f"virtual:modbatt-control-{uuid.uuid4().hex[:8]}"
    app_port, pack_port = CanPort.open(parse_bus_spec(name)), CanPort.open(parse_bus_spec(name))
    app = ControlEndpoint.open(app_port, APP_TO_PACK, PACK_TO_APP)
    pack = ControlEndpoint.open(pack_port, PACK_TO_APP, APP_TO_PACK)
    yield app, pack
    for endpoint in (app, pack):
        endpoint.close()
    app_port.close()
    pack_port.close()


def exchange(
    sender: ControlEndpoint, receiver: ControlEndpoint, message: dict[str, Any], plain: bool = False
) -> dict[str, Any] | None:
    got: list[dict[str, Any] | None] = []
    thread = threading.Thread(target=lambda: got.append(receiver.recv(1.0)))
    thread.start()
    sender.send(message, plain=plain)
    thread.join()
    return got[0]


def upgrade(app: ControlEndpoint, pack: ControlEndpoint) -> None:
    link = LinkKey(b"\x01" * 64, APP, b"\x02" * 64, PACK)
    app.session = Session(link, APP, PACK, b"\x0a" * 16, b"\x0b" * 16)
    pack.session = Session(link, PACK, APP, b"\x0b" * 16, b"\x0a" * 16)


def test_discovery_travels_plain_before_the_upgrade(
    endpoints: tuple[ControlEndpoint, ControlEndpoint],
) -> None:
    app, pack = endpoints
    assert exchange(app, pack, {"type": "discover"}) == {"type": "discover"}
    info = {"type": "device_info", "serial": "PACK-0001", "state": 1, "levels": [0, 0]}
    assert exchange(pack, app, info) == info


def test_after_the_upgrade_messages_are_sealed_and_plain_ones_dropped(
    endpoints: tuple[ControlEndpoint, ControlEndpoint],
) -> None:
    app, pack = endpoints
    upgrade(app, pack)
    configure = {"type": "configure", "max_state": 3}
    assert exchange(app, pack, configure) == configure
    # an attacker (or a confused peer) sends a plain configure: dropped and counted
    bare = ControlEndpoint(app.channel, APP_TO_PACK, PACK_TO_APP)
    assert exchange(bare, pack, configure) is None
    assert pack.dropped["downgrade"] == 1
    # discovery stays possible in plain: a pack that lost its keys must still answer
    assert exchange(app, pack, {"type": "discover"}, plain=True) == {"type": "discover"}
    with pytest.raises(ControlError, match="may not travel plain"):
        app.send(configure, plain=True)


def test_a_replayed_sealed_message_is_dropped(
    endpoints: tuple[ControlEndpoint, ControlEndpoint],
) -> None:
    app, pack = endpoints
    upgrade(app, pack)
    sealed = app.session.seal_message(APP_TO_PACK, encode({"type": "configure"}))  # type: ignore[union-attr]
    got: list[dict[str, Any] | None] = []
    thread = threading.Thread(target=lambda: got.extend([pack.recv(1.0), pack.recv(0.5)]))
    thread.start()
    app.channel.send(sealed)
    app.channel.send(sealed)
    thread.join()
    assert got == [{"type": "configure"}, None]
    assert pack.dropped["replay"] == 1


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"type": 3}', b"\xff\xfe", b"not json"])
def test_malformed_control_messages_are_refused(data: bytes) -> None:
    with pytest.raises(ControlError):
        decode(data)
