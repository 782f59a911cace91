"""The pairing channel's names on the wire (seed Workflow A, docs/PROTOCOL.md §8c).

The pack pairs a registered module over the module's own ISO-TP channel on CAN 2: base 0x530
pack -> module and 0x531 module -> pack, node = module id. Until it has keys, a module goes by
a name made from its unique id in the pairing's key derivation.
"""

from __future__ import annotations

from modbatt import compose_id

PACK_TO_MODULE = 0x530
MODULE_TO_PACK = 0x531


def module_channel_ids(module_id: int) -> tuple[int, int]:
    """(pack -> module, module -> pack) ISO-TP ids of a module's pairing channel."""
    return compose_id(PACK_TO_MODULE, module_id), compose_id(MODULE_TO_PACK, module_id)


def responder_id(unique_id: int) -> str:
    """The name a module goes by in the pairing's key derivation, before it has keys."""
    return f"module-{unique_id}"
