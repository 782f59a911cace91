"""Any control message a bus can carry gets an answer, never an exception: from the pack
(app bus) and from a module's pairing agent (module bus).

A control message is JSON from an untrusted bus: every field may have any JSON type. The pack
must answer with its reply or an `error` naming the problem; an exception would end its
control thread and leave the pack deaf to the app.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modbatt.bus.control_channel import ControlEndpoint
from modbatt.bus.nodes import NodeLoop
from modbatt.bus.transport import CanPort
from modbatt.module.pairing import PairingAgent, SecureModule
from modbatt.module.simulator import modules_for
from modbatt.pack.controller import PackController

KINDS = [
    "discover",
    "bootstrap_hello",
    "key_delivery",
    "handshake_init",
    "handshake_finish",
    "pair_module",
    "configure",
    "diagnostics",
    "firmware_begin",
    "firmware_chunk",
    "firmware_end",
    "pair_hello",
    "pair_delivery",
    "no_such_message",
]
FIELDS = [
    "public_key", "app_id", "sealed", "data", "max_state", "bridge_unpaired_modules",
    "unique_id", "module_component_id", "pack_device_key_half", "pack_lct_key_half",
    "module_device_key_half", "module_lct_key_half", "lct_id", "version", "size", "sha256",
    "index", "configuration",
]  # fmt: skip
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=80)
    | st.sampled_from(["00" * 32, "ff" * 64, "1.2.3", "1e400", "0" * 64]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
MESSAGES = st.builds(
    lambda kind, fields: {**fields, "type": kind},
    st.sampled_from(KINDS),
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6),
)


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackController]:
    run = uuid.uuid4().hex[:8]
    ports = [
        CanPort(can.Bus(interface="virtual", channel=f"fuzz-{bus}-{run}"), bus)
        for bus in ("can1", "can2")
    ]
    state_dir: Path = tmp_path_factory.mktemp("pack")
    runtime = PackController(f"PACK-{run}", state_dir, ports[0], ports[1])
    yield runtime  # not started: the handlers are called directly
    runtime.control.endpoint.close()
    for port in ports:
        port.close()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=MESSAGES)
def test_every_control_message_gets_an_answer(
    pack: PackController, message: dict[str, Any]
) -> None:
    answer = pack.handle(message)
    assert answer is not None and isinstance(answer.get("type"), str)
    if answer["type"] == "error":
        assert answer["in_reply_to"] == message["type"] and answer["reason"]


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PairingAgent, ControlEndpoint]]:
    port = CanPort(can.Bus(interface="virtual", channel=f"fuzz-module-{uuid.uuid4().hex[:8]}"), "m")
    secure = SecureModule(
        modules_for(4242, 1, 8, time.monotonic())[0], tmp_path_factory.mktemp("module")
    )
    agent = PairingAgent(port, [secure], NodeLoop(port, [secure]))  # not started
    endpoint = ControlEndpoint.open(port, 0x1, 0x2)
    yield agent, endpoint
    endpoint.close()
    port.close()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=MESSAGES)
def test_every_pairing_message_gets_an_answer(
    agent: tuple[PairingAgent, ControlEndpoint], message: dict[str, Any]
) -> None:
    pairing_agent, endpoint = agent
    answer = pairing_agent._handle(pairing_agent.modules[0], endpoint, message)
    assert answer is not None and isinstance(answer.get("type"), str)
    if answer["type"] == "error":
        assert answer["in_reply_to"] == message["type"] and answer["reason"]
