"""Multi-frame messages over ISO-TP (ISO 15765-2, the can-isotp package), checked end to end.

Key halves, component ids, X25519 public keys and firmware images do not fit a CAN frame.
A :class:`MessageChannel` carries them between two 29-bit ids over the bus's one notifier,
and appends an 8-byte end-to-end check (the first 8 bytes of the message's SHA-256): ISO-TP
already refuses a consecutive frame out of sequence, and the check catches what is left, so
a lost, duplicated or reordered frame costs the message (the caller retries or fails
cleanly), never delivers a wrong one.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from typing import Any

import isotp

from modbatt.bus.transport import CanPort
from modbatt.errors import ModbattError

log = logging.getLogger("modbatt.isotp")

CHECK_LEN = 8
MAX_MESSAGE = 4095 - CHECK_LEN


class TransferError(ModbattError):
    """A multi-frame message could not be sent, or arrived damaged (and was discarded)."""


def _check(message: bytes) -> bytes:
    return hashlib.sha256(b"modbatt/v1 isotp" + message).digest()[:CHECK_LEN]


def with_check(message: bytes) -> bytes:
    """The ISO-TP payload that carries `message`: the message and its end-to-end check."""
    return message + _check(message)


def without_check(data: bytes | bytearray) -> bytes | None:
    """The message in a received ISO-TP payload, or None when its end-to-end check fails."""
    if len(data) < CHECK_LEN:
        return None
    payload, check = bytes(data[:-CHECK_LEN]), bytes(data[-CHECK_LEN:])
    return payload if _check(payload) == check else None


class _SignallingQueue(queue.Queue[bytearray]):
    """A stack's output queue that also sets `arrived` for every message put on it."""

    def __init__(self, arrived: threading.Event) -> None:
        super().__init__()
        self.arrived = arrived

    def put(self, item: bytearray, block: bool = True, timeout: float | None = None) -> None:
        """Queue a completed message, then say so."""
        super().put(item, block, timeout)
        self.arrived.set()


class MessageChannel:
    """One ISO-TP conversation: we send on `txid`, we listen on `rxid`.

    `arrived` is set whenever a message completes (clear it before looking at `recv(0)`);
    given one event, several channels share it, and a reader waits for all of them at once
    instead of polling each in turn.
    """

    def __init__(
        self,
        port: CanPort,
        txid: int,
        rxid: int,
        *,
        fd: bool = False,
        timeout_s: float = 1.0,
        arrived: threading.Event | None = None,
    ) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.arrived = arrived if arrived is not None else threading.Event()
        self.errors: list[str] = []
        self.discarded = 0
        address = isotp.Address(isotp.AddressingMode.Normal_29bits, txid=txid, rxid=rxid)
        params: dict[str, Any] = {
            "blocking_send": True,
            "can_fd": fd,
            "tx_data_length": 64 if fd else 8,
            "max_frame_size": MAX_MESSAGE + CHECK_LEN,
            "blocksize": 8,
            "stmin": 0,
            "rx_flowcontrol_timeout": int(timeout_s * 1000),
            "rx_consecutive_frame_timeout": int(timeout_s * 1000),
        }
        self._stack = isotp.NotifierBasedCanStack(
            port.bus,
            port.id_notifier(rxid),  # only its own frames: one lookup per frame, not a copy
            address=address,
            params=params,
            error_handler=self._on_error,
        )
        # can-isotp puts every completed message on its `rx_queue` (declared in its
        # TransportLayerLogic), where its `recv` takes them; ours also signals `arrived`.
        self._stack.rx_queue = _SignallingQueue(self.arrived)
        self._stack.start()

    def _on_error(self, error: Exception) -> None:
        self.errors.append(type(error).__name__)
        log.debug("ISO-TP on %s: %s", self.port.name, error)

    def send(self, message: bytes) -> None:
        """Send one message and wait until it is out; TransferError when it is not."""
        if len(message) > MAX_MESSAGE:
            raise TransferError(f"a message is at most {MAX_MESSAGE} bytes, got {len(message)}")
        try:
            self._stack.send(with_check(message), send_timeout=self.timeout_s * 4)
        except (isotp.BlockingSendFailure, isotp.BlockingSendTimeout) as exc:
            raise TransferError(f"ISO-TP send failed: {type(exc).__name__}") from None

    def recv(self, timeout_s: float | None = None) -> bytes | None:
        """The next intact message, or None if none arrives in time.

        Damaged messages are counted in `discarded` and skipped.
        """
        wait = self.timeout_s if timeout_s is None else timeout_s
        data = self._stack.recv(block=True, timeout=wait)
        while data is not None:
            payload = without_check(data)
            if payload is not None:
                return payload
            self.discarded += 1
            data = self._stack.recv(block=False)
        return None

    def close(self) -> None:
        """Stop the ISO-TP stack (the port stays open)."""
        self._stack.stop()
