"""What a bus loses below the frame path, in a real kernel: a reader that falls behind (the
kernel drops frames for a full receive queue) and a transmit queue that stays full (`ENOBUFS`,
as on a bus where no node acknowledges). The pack keeps running, keeps its control channel,
and counts both in `bus_losses`, which the monitor shows."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import can
import pytest

from modbatt.bus.transport import kernel_socket, receive_overflows
from modbatt.pack.keys import PackState
from modbatt.protocol.pairing import module_channel_ids
from modbatt.tools.monitor import render, view_of
from tests.api_bridge_server import BridgeProcess
from tests.module.test_pairing import running_lifecycle, wait_for
from tests.socketcan.kernel import SLOW, operational_pack

pytestmark = pytest.mark.socketcan

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
# A frame to a pairing channel no pairing has open: it passes the pack's kernel filters (so
# it fills the pack's receive queue) and is refused by the gateway as `no_route`.
STRAY_ID = module_channel_ids(31)[1]


def test_receive_overflows_are_the_count_so_rxq_ovfl_reports() -> None:
    """`receive_overflows` (SO_MEMINFO) reads the very counter the kernel hands out with
    SO_RXQ_OVFL, the way candump reports its drops."""
    reader = can.Bus(interface="socketcan", channel="vcan0")
    sender = can.Bus(interface="socketcan", channel="vcan0")
    try:
        sock = kernel_socket(reader)
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the kernel's minimum
        assert receive_overflows(reader) == 0
        for n in range(300):
            sender.send(can.Message(arbitration_id=0x18FF_0000 | n, data=bytes(8)))
        dropped = receive_overflows(reader)
        assert dropped is not None and dropped > 0
        sock.setblocking(False)
        queued = 0
        while True:
            try:
                sock.recv(72)
            except BlockingIOError:
                break
            queued += 1
        assert queued + dropped == 300
        # the next frame carries the socket's drop count as SO_RXQ_OVFL ancillary data
        sender.send(can.Message(arbitration_id=0x18FF_FFFF, data=bytes(8)))
        time.sleep(0.1)
        _frame, ancillary, _flags, _addr = sock.recvmsg(72, 1024)
        counts = [struct.unpack("=I", d)[0] for _lvl, kind, d in ancillary if kind == SO_RXQ_OVFL]
        assert counts == [dropped]
    finally:
        reader.shutdown()
        sender.shutdown()


@contextmanager
def transmit_queue_stuck(bus: str) -> Iterator[None]:
    """`bus`'s transmit queue holds one frame and never empties, as a CAN controller's does
    when no other node acknowledges: every further send is refused with ENOBUFS."""
    tc = ["/usr/sbin/tc", "qdisc"]
    subprocess.run(
        [*tc, "replace", "dev", bus, "root", "tbf", "rate", "8bit", "burst", "16", "limit", "16"],
        check=True,
    )
    try:
        yield
    finally:
        subprocess.run([*tc, "del", "dev", bus, "root"], check=True)


def test_a_pack_that_falls_behind_or_cannot_send_keeps_running_and_says_so(
    tmp_path: Path, api_bridge: BridgeProcess
) -> None:
    with running_lifecycle(tmp_path, api_bridge, interface="socketcan") as life:
        app = life.app
        operational_pack(life)
        # the python-can sockets' losses and the data plane's (tx_failed: its other failures)
        nothing = {"tx_queue_full": 0, "rx_overflow": 0, "tx_failed": 0}
        assert app.status()["bus_losses"] == {"can1": nothing, "can2": nothing}
        # 1. the pack's CAN 2 reader falls behind: a burst at full rate into a small queue
        pack_socket = kernel_socket(life.ports["pack2"].bus)
        assert pack_socket is not None
        pack_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        subprocess.run(
            ["cangen", "vcan1", "-e", "-g", "0", "-n", "3000", "-I", f"{STRAY_ID:X}", "-L", "8"],
            check=True,
        )
        overflowed = app.status()["bus_losses"]["can2"]["rx_overflow"]
        assert overflowed > 0
        # 2. CAN 2's transmit queue stays full: the pack's polls are refused
        with transmit_queue_stuck("vcan1"):
            assert wait_for(
                lambda: app.status()["bus_losses"]["can2"]["tx_queue_full"] > 0, 5.0 * SLOW
            )
            # the control channel (CAN 1) answers all the while
            status = app.status()
            assert status["state"] == PackState.OPERATIONAL
        refused = status["bus_losses"]["can2"]["tx_queue_full"]
        assert status["bus_losses"]["can1"] == nothing
        # the monitor shows both
        shown = "\n".join(render(view_of(app, status, 0.0)))
        assert f"CAN 2 rx_overflow {overflowed}" in shown
        assert f"CAN 2 tx_queue_full {refused}" in shown
        # and once the bus carries again, so does the pack: telemetry from every module
        app.telemetry.clear()
        ids = {m.module.module_id for m in life.modules}
        assert wait_for(lambda: ids <= set(app.telemetry), 6.0 * SLOW)
        assert app.status()["state"] == PackState.OPERATIONAL
