"""The control channel: plain before the upgrade, sealed after it, downgrades dropped."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from modbatt import LinkKey, Session, set_encrypted
from modbatt.bus.control_channel import ControlEndpoint, request
from modbatt.bus.isotp_link import MessageChannel
from modbatt.bus.transport import CanPort, parse_bus_spec
from modbatt.protocol.control import (
    APP_TO_PACK,
    PACK_TO_APP,
    REQUEST_ID,
    AnswerCache,
    ControlError,
    decode,
    encode,
)

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


# --- retries with request ids (PROTOCOL.md §8a) ---------------------------------------------


def test_a_retried_request_is_answered_again_not_handled_again() -> None:
    handled: list[dict[str, Any]] = []

    def handle(message: dict[str, Any]) -> dict[str, Any]:
        handled.append(message)
        return {"type": "key_ack", "n": len(handled)}

    cache = AnswerCache(size=2)
    delivery = {"type": "key_delivery", "sealed": "00", REQUEST_ID: "a1"}
    first = cache.respond(delivery, handle)
    assert first == {"type": "key_ack", "n": 1, REQUEST_ID: "a1"}
    assert cache.respond(dict(delivery), handle) == first  # the retry: same answer
    assert len(handled) == 1 and cache.replayed == 1
    # the same request id on another message is refused, not answered with another's answer
    reused = cache.respond({**delivery, "sealed": "01"}, handle)
    assert reused is not None and reused["type"] == "error" and "rid" in reused["reason"]
    # without a request id every message is handled; a malformed one is refused
    assert cache.respond({"type": "discover"}, handle) == {"type": "key_ack", "n": 2}
    for bad in (7, "", "XYZ", "a" * 33, ["a1"]):
        answer = cache.respond({"type": "discover", REQUEST_ID: bad}, handle)
        assert answer is not None and answer["type"] == "error", bad
    # bounded: the oldest answers are forgotten
    for rid in ("b1", "b2", "b3"):
        cache.respond({"type": "status", REQUEST_ID: rid}, handle)
    count = len(handled)
    cache.respond(dict(delivery), handle)
    assert len(handled) == count + 1


def test_a_request_is_retried_until_answered_and_skips_stale_answers(
    endpoints: tuple[ControlEndpoint, ControlEndpoint],
) -> None:
    app, pack = endpoints
    cache = AnswerCache()
    seen: list[dict[str, Any]] = []

    def serve() -> None:
        # the first attempt goes unanswered (as if its last frame were lost); before the
        # retry's answer, a stale answer to some earlier request arrives
        while len(seen) < 2:
            message = pack.recv(3.0)
            if message is None:
                return
            seen.append(message)
            if len(seen) == 2:
                pack.send({"type": "status", "state": 0, REQUEST_ID: "0badc0de"})
                answer = cache.respond(message, lambda m: {"type": "status", "state": 4})
                assert answer is not None
                pack.send(answer)

    server = threading.Thread(target=serve)
    server.start()
    answer = request(app, {"type": "status"}, attempts=3, timeout_s=0.5)
    server.join()
    assert answer is not None and answer["state"] == 4
    assert seen[0][REQUEST_ID] == seen[1][REQUEST_ID]
    assert answer == {"type": "status", "state": 4}  # the request id stays in the channel
    assert app.dropped["stale_answer"] == 1


def test_a_request_nobody_answers_gives_up_after_its_attempts(
    endpoints: tuple[ControlEndpoint, ControlEndpoint],
) -> None:
    app, pack = endpoints
    assert request(app, {"type": "status"}, attempts=2, timeout_s=0.2) is None
    first, second = pack.recv(0.5), pack.recv(0.5)
    assert first is not None and second is not None and first == second  # one request, twice
    assert pack.recv(0.3) is None


def test_an_upgraded_endpoint_wakes_for_a_message_on_either_channel(
    endpoints: tuple[ControlEndpoint, ControlEndpoint],
) -> None:
    # `recv` sleeps on one event both channels set, instead of polling them in turn: a plain
    # handshake message and a sealed one each wake it at once.
    app, pack = endpoints
    upgrade(app, pack)
    for message, plain in (({"type": "handshake_init"}, True), ({"type": "device_info"}, False)):
        got: list[tuple[dict[str, Any] | None, float]] = []

        def receive(into: list[tuple[dict[str, Any] | None, float]]) -> None:
            started = time.monotonic()
            into.append((pack.recv(5.0), time.monotonic() - started))

        thread = threading.Thread(target=receive, args=(got,))
        thread.start()
        time.sleep(0.05)
        app.send(message, plain=plain)
        thread.join()
        received, waited = got[0]
        assert received is not None and received["type"] == message["type"]
        assert waited < 1.0


def test_a_waiting_endpoint_sleeps_until_a_message_or_an_interrupt(
    endpoints: tuple[ControlEndpoint, ControlEndpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No polling: an idle half second looks at each channel before its wait and after it (a
    # 5 ms poll looked 100 times), and `interrupt` ends the wait at once.
    _, pack = endpoints
    assert pack.secure is not None
    looks: list[float | None] = []
    real_recv = pack.secure.recv

    def counted(timeout_s: float | None = None) -> bytes | None:
        looks.append(timeout_s)
        return real_recv(timeout_s)

    monkeypatch.setattr(pack.secure, "recv", counted)
    assert pack.recv(0.5) is None
    assert len(looks) <= 2, looks  # before the wait and after it
    got: list[float] = []

    def receive() -> None:
        started = time.monotonic()
        assert pack.recv(5.0) is None
        got.append(time.monotonic() - started)

    thread = threading.Thread(target=receive)
    thread.start()
    time.sleep(0.1)
    pack.interrupt()
    thread.join()
    assert got[0] < 1.0


def test_an_endpoint_whose_channels_signal_apart_is_refused() -> None:
    name = f"virtual:modbatt-control-{uuid.uuid4().hex[:8]}"
    port = CanPort.open(parse_bus_spec(name))
    plain = MessageChannel(port, APP_TO_PACK, PACK_TO_APP)
    secure = MessageChannel(port, set_encrypted(APP_TO_PACK), set_encrypted(PACK_TO_APP))
    try:
        with pytest.raises(ValueError, match="share one arrival event"):
            ControlEndpoint(plain, APP_TO_PACK, PACK_TO_APP, secure=secure)
    finally:
        plain.close()
        secure.close()
        port.close()
