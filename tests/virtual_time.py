"""Test helper: sans-I/O nodes on an in-memory bus, on virtual time (no threads, no sleeps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from modbatt.bus.nodes import Frames, Node


@dataclass
class VirtualBus:
    """Every frame a node sends reaches every other node attached, at the same instant."""

    nodes: list[Node] = field(default_factory=list)
    now: float = 0.0
    log: list[tuple[float, int, bytes]] = field(default_factory=list)
    drop: Callable[[Node, int, bytes], bool] = lambda _node, _id, _data: False

    def attach(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def detach(self, node: Node) -> None:
        self.nodes.remove(node)

    def _deliver(self, sender: Node, frames: Frames) -> list[tuple[Node, Frames]]:
        replies = []
        for can_id, data in frames:
            self.log.append((self.now, can_id, data))
            for node in list(self.nodes):
                if node is not sender and not self.drop(node, can_id, data):
                    out = node.on_frame(can_id, data, self.now)
                    if out:
                        replies.append((node, out))
        return replies

    def step(self, dt: float = 0.01) -> None:
        self.now += dt
        pending = [(node, node.tick(self.now)) for node in list(self.nodes)]
        for _ in range(10):  # replies to replies, bounded
            pending = [r for sender, frames in pending for r in self._deliver(sender, frames)]
            if not pending:
                break

    def run(self, seconds: float, dt: float = 0.01) -> None:
        for _ in range(round(seconds / dt)):
            self.step(dt)
