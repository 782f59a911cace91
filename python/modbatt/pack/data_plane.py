"""The pack's routed traffic in Rust on SocketCAN: frames that only cross never enter Python.

On two SocketCAN buses the pack opens a raw CAN socket of its own on each, with kernel
filters that admit only the routing table's sources, and hands both to
:class:`modbatt._core.DataPlane`: a thread per bus that reads in batches, steps the pack's own
:class:`~modbatt._core.Gateway` (the one Python configures: sessions, rules, the tap, the
counters) and sends what comes out, without the GIL, on python-can's socket of that bus (so
that the pack's own listeners do not receive what it forwarded, as on the Python path).
Everything else stays where it was, on python-can's sockets with their own filters: the
control channel, the module table (fed from the gateway's tap), pairing. Other interfaces
(virtual, udp_multicast, adapters without kernel sockets) and buses wrapped for a traffic log
or fault injection keep the Python path: a log must see every frame.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterable

import can

from modbatt._core import DataPlane, Gateway
from modbatt.bus.transport import CanPort, IdFilter, kernel_socket

log = logging.getLogger("modbatt.pack.data_plane")

CAN_EFF_FLAG = 0x8000_0000
CAN_RTR_FLAG = 0x4000_0000
_FILTER = struct.Struct("=II")  # struct can_filter: can_id, can_mask


def kernel_interface(port: CanPort) -> str | None:
    """The interface of `port` when it is python-can's SocketCAN bus itself (unwrapped)."""
    bus = port.bus
    if type(bus).__name__ != "SocketcanBus":  # a log or fault wrapper: the Python path
        return None
    sock = kernel_socket(bus)
    if sock is None:
        return None
    name = sock.getsockname()
    return str(name[0] if isinstance(name, tuple) else name)


def can_filters(wanted: Iterable[IdFilter]) -> bytes:
    """`wanted` (mask, value) pairs as the kernel's CAN_RAW_FILTER option.

    29-bit data frames whose id & mask == value pass; with no filter at all, nothing does.
    """
    return b"".join(
        _FILTER.pack(value | CAN_EFF_FLAG, mask | CAN_EFF_FLAG | CAN_RTR_FLAG)
        for mask, value in sorted(set(wanted))
    )


def _raw_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    try:
        sock.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FILTER, b"")  # nothing until set
        sock.bind((interface,))
    except OSError:
        sock.close()
        raise
    return sock


class KernelDataPlane:
    """The Rust data plane on the pack's two SocketCAN buses, and the sockets it reads."""

    def __init__(self, gateway: Gateway, ports: tuple[CanPort, CanPort], interfaces: list[str]):
        self.interfaces = interfaces
        self.sockets = [_raw_socket(name) for name in interfaces]
        try:
            # CAN 1: only sealed frames are the gateway's (plain ones are the control channel's).
            # The plane sends on python-can's own sockets: what it forwards is then the pack's
            # own frames, which the kernel does not hand back to the pack's listeners (an app
            # command forwarded to CAN 2 is not another sender's command there).
            self.plane = DataPlane(
                gateway,
                self.sockets[0],
                self.sockets[1],
                can_fd=(ports[0].fd, ports[1].fd),
                sealed_only=(True, False),
                send_via=(kernel_socket(ports[0].bus), kernel_socket(ports[1].bus)),
                # Normal priority: a real-time one (DataPlane's `priority`, measured in
                # PERFORMANCE.md) shortens the latency tail under load, but each frame then
                # preempts its sender, batches shrink and the CPU per frame grows.
            )
        except BaseException:
            self.close_sockets()
            raise
        log.info("data plane: routed frames between %s carried in Rust", " and ".join(interfaces))

    @classmethod
    def open(cls, gateway: Gateway, can1: CanPort, can2: CanPort) -> KernelDataPlane | None:
        """A data plane on both buses when both are SocketCAN; None otherwise."""
        interfaces = [kernel_interface(port) for port in (can1, can2)]
        if not all(interfaces) or not hasattr(socket, "AF_CAN"):
            return None  # not SocketCAN (and so not Linux, where DataPlane is built)
        try:
            return cls(gateway, (can1, can2), [name for name in interfaces if name])
        except (OSError, can.CanError) as exc:
            log.warning("data plane not started (%s): routed frames go through Python", exc)
            return None

    def set_filters(self, bus: int, wanted: Iterable[IdFilter]) -> None:
        """Let only `wanted` reach the plane's socket on `bus` (the routing table's sources)."""
        self.sockets[bus].setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FILTER, can_filters(wanted))

    def losses(self, bus: int) -> dict[str, int]:
        """What the plane's socket on `bus` lost (see `CanPort.losses`)."""
        stats = self.plane.stats()[bus]
        return {key: stats[key] for key in ("rx_overflow", "tx_queue_full", "tx_failed")}

    def stats(self) -> list[dict[str, int]]:
        """The plane's counters per bus (received, sent, skipped, and the losses)."""
        return self.plane.stats()

    def stop(self) -> None:
        """Stop the threads and close the sockets."""
        self.plane.stop()
        self.close_sockets()

    def close_sockets(self) -> None:
        """Close the plane's sockets (its threads work on duplicates until stopped)."""
        for sock in self.sockets:
            sock.close()
