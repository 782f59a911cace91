"""CAN I/O: bus names, opening buses, one receiving thread per bus, and the message conversion.

The Rust core takes plain ints and bytes; every role converts a received ``can.Message`` with
:func:`from_message` and builds an outgoing one with :func:`to_message`, so the conversion
rules (extended ids only, FD when the payload needs it) live here alone. A bus is named as
``INTERFACE:CHANNEL[@BITRATE]`` (:func:`parse_bus_spec`) and shared through a :class:`CanPort`.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import can

from modbatt.bus.traffic import TrafficLog
from modbatt.errors import BusOpenError, InvalidArgumentError, MalformedFrameError

log = logging.getLogger("modbatt.bus.transport")

CLASSIC_MAX_DATA = 8


def to_message(can_id: int, data: bytes, *, fd: bool = False, check: bool = True) -> can.Message:
    """A 29-bit data frame; CAN FD when asked for or when the payload needs it.

    `check=False` skips python-can's validation, for frames the Rust core built (valid by
    construction: it refuses ids over 29 bits and lengths a frame cannot carry).
    """
    is_fd = fd or len(data) > CLASSIC_MAX_DATA
    return can.Message(
        arbitration_id=can_id,
        data=data,
        is_extended_id=True,
        is_fd=is_fd,
        bitrate_switch=is_fd,
        check=check,
    )


def from_message(message: can.Message) -> tuple[int, bytes]:
    """(id, payload) of a received data frame; remote, error and 11-bit frames are refused."""
    if message.is_error_frame or message.is_remote_frame:
        raise MalformedFrameError("error and remote frames carry no payload for the frame path")
    if not message.is_extended_id:
        raise MalformedFrameError(
            f"11-bit id 0x{message.arbitration_id:03X}: modbatt buses use 29-bit ids"
        )
    return message.arbitration_id, bytes(message.data)


@dataclass(frozen=True)
class BusSpec:
    """A bus as named on the command line: ``INTERFACE:CHANNEL[@BITRATE]``, or ``config``.

    Examples: ``virtual:modules``, ``udp_multicast:239.74.163.10``, ``socketcan:can1@500000``,
    ``pcan:PCAN_USBBUS1@500000``, ``slcan:/dev/ttyACM0@500000``. Interface options follow
    as ``,key=value`` (``udp_multicast:239.74.163.10,port=43114``: two udp_multicast buses
    on one host need two ports, since a socket receives every group joined on its port).
    ``config`` (or
    ``config:CONTEXT``) leaves everything to python-can's own configuration (``~/.canrc``,
    ``can.ini``, ``CAN_INTERFACE``/``CAN_CHANNEL``/``CAN_BITRATE``).
    """

    interface: str | None
    channel: str | None
    bitrate: int | None = None
    fd: bool = False
    context: str | None = None
    options: tuple[tuple[str, str | int | bool], ...] = ()

    def __str__(self) -> str:
        if self.interface is None:
            return "config" + (f":{self.context}" if self.context else "")
        rate = f"@{self.bitrate}" if self.bitrate else ""
        options = "".join(f",{k}={v}" for k, v in self.options)
        return f"{self.interface}:{self.channel}{rate}{options}" + (" (FD)" if self.fd else "")


def parse_bus_spec(text: str, fd: bool = False) -> BusSpec:
    """Parse ``INTERFACE:CHANNEL[@BITRATE]`` (the channel may itself contain ``:``)."""
    if text == "config" or text.startswith("config:"):
        return BusSpec(None, None, fd=fd, context=text.partition(":")[2] or None)
    text, *option_texts = text.split(",")
    options: list[tuple[str, str | int | bool]] = []
    for option in option_texts:
        key, eq, value = option.partition("=")
        if not eq or not key.isidentifier():
            raise InvalidArgumentError(f"bus option {option!r}: expected key=value")
        parsed: str | int | bool = value
        if value.isdigit():
            parsed = int(value)
        elif value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        options.append((key, parsed))
    interface, sep, rest = text.partition(":")
    if not sep or not interface or not rest:
        raise InvalidArgumentError(
            f"bus {text!r}: expected INTERFACE:CHANNEL[@BITRATE], e.g. virtual:modules, "
            "socketcan:can1@500000, udp_multicast:239.74.163.10, or 'config'"
        )
    channel, at, rate = rest.rpartition("@")
    if not at:
        channel, rate = rest, ""
    bitrate = None
    if rate:
        if not rate.isdigit() or int(rate) == 0:
            raise InvalidArgumentError(f"bus {text!r}: bitrate {rate!r} is not a positive integer")
        bitrate = int(rate)
    if interface not in can.VALID_INTERFACES:
        raise InvalidArgumentError(
            f"bus {text!r}: unknown python-can interface {interface!r}; known: "
            + ", ".join(sorted(can.VALID_INTERFACES))
        )
    return BusSpec(interface, channel, bitrate, fd, options=tuple(options))


def open_bus(spec: BusSpec) -> can.BusABC:
    """Open the bus `spec` names, through python-can."""
    kwargs: dict[str, Any] = dict(spec.options)
    if spec.bitrate is not None:
        kwargs["bitrate"] = spec.bitrate
    if spec.fd:
        kwargs["fd"] = True
    try:
        if spec.interface is None:
            return can.Bus(context=spec.context, **kwargs)
        bus = can.Bus(interface=spec.interface, channel=spec.channel, **kwargs)
    except (can.CanError, OSError, ImportError) as exc:
        raise BusOpenError(f"cannot open bus {str(spec)!r}: {exc}") from None
    return WithoutEchoes(bus) if spec.interface in ECHOING_INTERFACES else bus


# Interfaces that hand a node back the frames it sent: python-can's udp_multicast, through
# the multicast loopback that processes on one host need in order to hear each other.
ECHOING_INTERFACES = frozenset({"udp_multicast"})
# A received copy of a frame this node sent this recently is the interface's echo. Echoes
# come back at once, but a busy process (a flash write, the collector) may take its time to
# read them: the window is generous, and costs nothing when frames carry direction in their
# ids, as modbatt's do (no other node sends the same id).
ECHO_WINDOW_S = 2.0
ECHO_KEYS_MAX = 4096  # frames awaiting their echo before the expired ones are swept out


class WithoutEchoes(can.BusABC):
    """`inner` without the copies of its own frames its interface hands back.

    A CAN controller does not give a node its own frames (unless asked to), and every part
    of modbatt expects that: a pack that heard itself would step its own frames into the
    gateway (as drops), and a traffic log would record them twice. A received frame is an
    echo when the same id and data were sent within ECHO_WINDOW_S and not echoed yet.
    """

    def __init__(self, inner: can.BusABC, **kwargs: Any) -> None:
        self.inner = inner
        self.channel_info = inner.channel_info
        # (id, data) -> when each copy not yet echoed was sent, oldest first
        self._awaited: dict[tuple[int, bytes], deque[float]] = {}
        self._lock = threading.Lock()
        super().__init__(channel=inner.channel_info, **kwargs)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        """Send through the inner bus, and expect its echo."""
        key, now = (msg.arbitration_id, bytes(msg.data)), time.monotonic()
        with self._lock:  # before the send: the echo may be received before it returns
            self._awaited.setdefault(key, deque()).append(now)
            if len(self._awaited) > ECHO_KEYS_MAX:
                self._sweep(now)
        try:
            self.inner.send(msg, timeout)
        except BaseException:
            with self._lock:
                self._take(key, now=None)
            raise

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = self.inner.recv(left)
            if msg is None:
                return None, True
            with self._lock:
                echo = self._take((msg.arbitration_id, bytes(msg.data)), time.monotonic())
            if not echo:
                return msg, True  # the inner bus has applied its filters
            if deadline is not None and time.monotonic() >= deadline:
                return None, True

    def _apply_filters(self, filters: can.typechecking.CanFilters | None) -> None:
        self.inner.set_filters(filters)  # the inner bus filters (see `filters_below_python`)

    def _take(self, key: tuple[int, bytes], now: float | None) -> bool:
        """Whether a copy of `key` awaited its echo (now: not expired at `now`); it is taken."""
        times = self._awaited.get(key)
        if times is None:
            return False
        while now is not None and times and now - times[0] >= ECHO_WINDOW_S:
            times.popleft()  # its echo never came
        taken = bool(times)
        if taken:
            times.popleft()
        if not times:
            del self._awaited[key]
        return taken

    def _sweep(self, now: float) -> None:
        for key in [k for k, times in self._awaited.items() if now - times[-1] >= ECHO_WINDOW_S]:
            del self._awaited[key]

    def shutdown(self) -> None:
        """Shut the inner bus down too."""
        super().shutdown()
        self.inner.shutdown()


RECEIVE_WAKE_S = 0.1  # an idle port's thread wakes this often to see whether it is closed

# What a bus lost below the frame path, by reason (`CanPort.losses`).
TX_QUEUE_FULL = "tx_queue_full"  # a send refused: the interface's transmit queue was full
RX_OVERFLOW = "rx_overflow"  # frames the kernel dropped: the socket's receive queue was full
LOSS_LOG_EVERY_S = 10.0  # a port logs its losses at most this often (they come in floods)
# getsockopt(SOL_SOCKET, SO_MEMINFO): the socket's memory counters, u32 each; the last of the
# nine is sk_drops, the per-socket count of frames dropped for a full receive queue. It is the
# counter SO_RXQ_OVFL hands out with each received frame, read here without changing how
# python-can receives.
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
SK_MEMINFO_DROPS = 8
_MEMINFO = struct.Struct("9I")


def kernel_socket(bus: can.BusABC) -> socket.socket | None:
    """The SocketCAN socket under `bus` (through modbatt's wrappers), or None."""
    for _ in range(4):  # WithoutEchoes, RecordingBus, FaultyBus: a few layers at most
        sock = getattr(bus, "socket", None)
        if isinstance(sock, socket.socket) and sock.family == getattr(socket, "AF_CAN", -1):
            return sock
        inner = getattr(bus, "inner", None)
        if not isinstance(inner, can.BusABC):
            return None
        bus = inner
    return None


def receive_overflows(bus: can.BusABC) -> int | None:
    """Frames the kernel dropped for `bus`'s socket since it was opened, or None.

    The receive queue was full: the reader fell behind. None where the interface does not tell.
    """
    sock = kernel_socket(bus)
    if sock is None:
        return None
    try:
        return int(
            _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))[
                SK_MEMINFO_DROPS
            ]
        )
    except OSError:  # closed, or a kernel without SO_MEMINFO (before 4.6)
        return None


def _transmit_queue_full(exc: can.CanError) -> bool:
    """Whether a failed send means only that the transmit queue was full.

    ENOBUFS from SocketCAN, or python-can's own "Transmit buffer full": the frame is lost, the
    bus is fine.
    """
    return getattr(exc, "error_code", None) == errno.ENOBUFS or "buffer full" in str(exc)


def filters_below_python(bus: can.BusABC) -> bool:
    """Whether `bus`'s interface applies receive filters itself.

    In the kernel (SocketCAN) or in the adapter (Kvaser, Vector, SYSTEC, ETAS): only there do
    filters spare Python any work. modbatt's wrappers (a traffic log, echo removal, fault
    injection) hand filters to the bus they wrap: theirs is the answer.
    """
    inner = getattr(bus, "inner", None)
    if isinstance(inner, can.BusABC):
        return filters_below_python(inner)
    return type(bus)._apply_filters is not can.BusABC._apply_filters


FrameHandler = Callable[[int, bytes, float], None]
# (message, owned): `owned` when no other listener of the port kept the message object
MessageHandler = Callable[[can.Message, bool], None]
# (mask, value): the frames whose id & mask == value
IdFilter = tuple[int, int]
ALL_IDS: IdFilter = (0, 0)


class CanPort:
    """One bus with its one receiving thread, shared by every reader of the bus.

    Two readers polling the same bus steal each other's frames (and python-can allows one
    active Notifier per bus), so every role subscribes here. The thread does what
    `can.Notifier` does, receive and hand each message on, without its lock and listener
    layers: it is the first half of the pack's bridge. A listener that raises is logged and
    the thread goes on. Frames the frame path cannot carry reach only the raw listeners.
    """

    def __init__(self, bus: can.BusABC, name: str = "", fd: bool = False) -> None:
        self.bus = bus
        self.name = name or str(bus.channel_info)
        self.fd = fd
        # The receiving thread dispatches every frame: to the stacks that want its id (one
        # dictionary lookup for all of them), to the readers, and to the handlers (converted
        # once). The collections are replaced, never changed in place, so the thread reads
        # them without a lock.
        self._by_id: dict[int, tuple[Callable[[can.Message], None], ...]] = {}
        self._readers: tuple[tuple[can.BufferedReader, int, int], ...] = ()
        self._handlers: tuple[FrameHandler, ...] = ()
        self._message_handler: MessageHandler | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._tx_queue_full = 0
        self._loss_logged_at = -LOSS_LOG_EVERY_S
        self._thread = threading.Thread(
            target=self._receive, name=f"can-rx {self.name}", daemon=True
        )
        self._thread.start()

    @property
    def thread_id(self) -> int | None:
        """The native id of the thread that reads the bus (for CPU accounting)."""
        return self._thread.native_id

    def _receive(self) -> None:
        bus, dispatch = self.bus, self._dispatch
        while not self._closing:
            try:
                message = bus.recv(RECEIVE_WAKE_S)
            except can.CanError as exc:
                if self._closing:
                    return
                log.warning("receive on %s failed: %s", self.name, exc)
                time.sleep(RECEIVE_WAKE_S)  # a bus in error: do not spin
                continue
            if message is None:
                continue
            try:
                dispatch(message)
            except Exception:  # one listener's bug must not deafen the others
                log.exception("a listener of %s failed on 0x%X", self.name, message.arbitration_id)

    @classmethod
    def open(cls, spec: BusSpec, log: TrafficLog | None = None, log_channel: str = "") -> CanPort:
        """Open the bus `spec` names; with `log`, its traffic is recorded as `log_channel`."""
        bus = open_bus(spec)
        if log is not None:
            bus = log.wrap(bus, log_channel or str(spec))
        return cls(bus, str(spec), fd=spec.fd)

    def subscribe(self, handler: FrameHandler) -> FrameHandler:
        """Call `handler(id, payload, timestamp)` for every data frame received.

        Returns what `unsubscribe` takes.
        """
        with self._lock:
            self._handlers = (*self._handlers, handler)
        return handler

    def set_receive_filters(self, wanted: Iterable[IdFilter]) -> bool:
        """Have the interface drop the frames that match none of `wanted`, where it can.

        Where the interface filters below Python (`filters_below_python`) the frames are
        dropped before Python sees them; returns whether filters were set. Elsewhere nothing
        is set: python-can would filter in Python, at about the cost of the port's own
        dispatch dropping the frame. Every listener's frames must be wanted.
        """
        if not filters_below_python(self.bus):
            return False
        self.bus.set_filters(
            [
                {"can_id": value, "can_mask": mask, "extended": True}
                for mask, value in sorted(set(wanted))
            ]
        )
        return True

    def subscribe_messages(self, handler: MessageHandler) -> MessageHandler:
        """Call `handler(message, owned)` for every 29-bit data frame received, last of all.

        For a bridge: it gets python-can's message object itself, and `owned` says that no
        other listener of this port kept it, so the handler may reuse the object to send
        (see `send_built`). Frames on the ids of this node's ISO-TP stacks (`id_notifier`)
        are the node's own and are not handed to it. One such handler per port. Returns what
        `unsubscribe` takes.
        """
        with self._lock:
            if self._message_handler is not None:
                raise InvalidArgumentError(f"{self.name} already has a message handler")
            self._message_handler = handler
        return handler

    def unsubscribe(self, listener: FrameHandler | MessageHandler | can.BufferedReader) -> None:
        """Stop calling a subscribed handler, or feeding a reader."""
        with self._lock:
            self._handlers = tuple(h for h in self._handlers if h is not listener)
            self._readers = tuple(r for r in self._readers if r[0] is not listener)
            if self._message_handler is listener:
                self._message_handler = None

    def reader(self, ids: IdFilter = ALL_IDS) -> can.BufferedReader:
        """A queue of received messages, fed by this port's thread.

        With `ids` = (mask, value), only the messages whose id & mask == value are queued: a
        reader that wants a few frames of a busy bus is then not woken for every frame.
        """
        reader = can.BufferedReader()
        mask, value = ids
        with self._lock:
            self._readers = (*self._readers, (reader, mask, value))
        return reader

    def id_notifier(self, *can_ids: int) -> can.Notifier:
        """A notifier for a stack that only wants frames with `can_ids` (can-isotp's).

        It hands its listeners only those frames: one dictionary lookup per frame on the
        port for all of them, instead of a call and a queued copy per frame per stack.
        """
        return _IdNotifier(self, can_ids)

    def _route_by_id(self, can_id: int, listener: Callable[[can.Message], None]) -> None:
        with self._lock:
            routes = dict(self._by_id)
            routes[can_id] = (*routes.get(can_id, ()), listener)
            self._by_id = routes

    def _unroute(self, listener: Callable[[can.Message], None]) -> None:
        with self._lock:
            routes = {}
            for can_id, listeners in self._by_id.items():
                kept = tuple(other for other in listeners if other != listener)
                if kept:
                    routes[can_id] = kept
            self._by_id = routes

    def _dispatch(self, msg: can.Message) -> None:
        # Called for every frame on the bus: kept to plain lookups and comparisons.
        can_id = msg.arbitration_id
        kept = False  # whether a listener holds on to the message object
        routed = self._by_id.get(can_id)
        if routed is not None:
            kept = True
            for listener in routed:
                listener(msg)
        for reader, mask, value in self._readers:
            if can_id & mask == value:
                kept = True
                reader.on_message_received(msg)
        handlers = self._handlers
        message_handler = self._message_handler
        if not handlers and message_handler is None:
            return
        if msg.is_error_frame or msg.is_remote_frame or not msg.is_extended_id:
            return  # no payload for the frame path, or an 11-bit id: modbatt buses use 29
        if handlers:
            data, timestamp = bytes(msg.data), msg.timestamp
            for handler in handlers:
                handler(can_id, data, timestamp)
        if message_handler is not None and routed is None:
            # a frame for one of this node's ISO-TP stacks is its own, not one to bridge
            message_handler(msg, not kept)

    def send(self, can_id: int, data: bytes) -> None:
        """Send one frame (CAN FD when this port is FD or the payload needs it).

        A frame the interface refuses because its transmit queue is full is lost and counted
        (`losses`), as a busy bus loses it: the sender goes on. Any other failure raises.
        """
        self._send(to_message(can_id, data, fd=self.fd))

    def send_built(self, can_id: int, data: bytes, reuse: can.Message | None = None) -> None:
        """Send one frame the Rust core built: the bridge's hot path skips re-validation.

        `reuse`, a received message no one else holds (see `subscribe_messages`), is turned
        into the outgoing one instead of building a new object: the interface copies what it
        sends, as it does when `can.bridge` forwards the received object itself. A full
        transmit queue is counted as in `send`.
        """
        if reuse is None or self.fd or len(data) > CLASSIC_MAX_DATA:
            self._send(to_message(can_id, data, fd=self.fd, check=False))
            return
        reuse.arbitration_id = can_id
        reuse.data = bytearray(data)
        reuse.dlc = len(data)
        reuse.is_fd = reuse.bitrate_switch = reuse.is_rx = False
        reuse.channel = None
        self._send(reuse)

    def _send(self, message: can.Message) -> None:
        try:
            self.bus.send(message)
        except can.CanError as exc:
            if not _transmit_queue_full(exc):
                raise
            with self._lock:
                self._tx_queue_full += 1
                now = time.monotonic()
                if now - self._loss_logged_at < LOSS_LOG_EVERY_S:
                    return
                self._loss_logged_at = now
                lost = self._tx_queue_full
            log.warning(
                "%s: transmit queue full, frames lost (%d so far): the bus is busier than it "
                "can carry, or no other node acknowledges (see OPERATIONS.md, txqueuelen)",
                self.name,
                lost,
            )

    def losses(self) -> dict[str, int]:
        """What this bus lost below the frame path, by reason.

        `tx_queue_full`: sends the interface refused. `rx_overflow`, where the kernel tells
        (SocketCAN): frames it dropped because this port's reader fell behind.
        """
        lost = {TX_QUEUE_FULL: self._tx_queue_full}
        overflows = receive_overflows(self.bus)
        if overflows is not None:
            lost[RX_OVERFLOW] = overflows
        return lost

    def close(self) -> None:
        """Stop the receiving thread and shut the bus down."""
        self._closing = True
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * RECEIVE_WAKE_S + 1)
        self.bus.shutdown()

    def __enter__(self) -> CanPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _IdNotifier(can.Notifier):
    """What can-isotp needs of a notifier (add and remove a listener), routed by id.

    No thread of its own: the port's thread reads the bus and `CanPort._dispatch` calls these
    listeners for their ids only.
    """

    def __init__(self, port: CanPort, can_ids: tuple[int, ...]) -> None:  # no super(): no thread
        self.port = port
        self.can_ids = can_ids

    def add_listener(self, listener: Any) -> None:
        for can_id in self.can_ids:
            self.port._route_by_id(can_id, listener)

    def remove_listener(self, listener: Any) -> None:
        self.port._unroute(listener)

    def stop(self, timeout: float = 5.0) -> None:
        return None
