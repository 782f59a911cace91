"""Module pairing (seed Workflow A), from the app's side.

Register the module, create the pack-module LCT, and hand its keys to the pack sealed under
the app link; the pack pairs the module on CAN 2. At key recovery an offline module's LCT is
retired instead (its pack half is gone).
"""

from __future__ import annotations

from typing import Any

from modbatt.app.errors import AppError
from modbatt.app.link import AppLink
from modbatt.app.parts import AppParts
from modbatt.state.keystores import AppKeys

PAIR_TIMEOUT_S = 10.0  # the pack runs a whole exchange with the module before it answers


class Pairing:
    """Pairing modules, from the app's side."""

    def __init__(self, parts: AppParts, link: AppLink) -> None:
        self.parts = parts
        self.link = link

    def run(self, unique_id: int, *, replaces: str | None = None) -> dict[str, Any]:
        """Pair a registered module (seed Workflow A).

        Register it, create the pack-module LCT, and hand its keys to the pack, sealed; the
        pack pairs the module on CAN 2.
        """
        self.link.up("pair")
        keys = self.parts.keystore.load()
        if keys is None or keys.pack_component_id is None:
            raise AppError("pair: bootstrap first")
        with self.parts.progress.waiting(f"pairing module {unique_id}"):
            return self._pair(keys, keys.pack_component_id, unique_id, replaces)

    def _pair(
        self, keys: AppKeys, pack: str, unique_id: int, replaces: str | None
    ) -> dict[str, Any]:
        with self.parts.api_bridge(f"registering module {unique_id} and its LCT"):
            if replaces is None:
                module = self.parts.bridge.register_component(
                    f"MODBATT-MODULE-{unique_id}", "battery module"
                ).component_id
                created = self.parts.bridge.create_lct(pack, module, "pack-module")
            else:  # key recovery: the old LCT is revoked, its replacement joins the same two
                created = self.parts.bridge.replace_lct(replaces, "key recovery")
                module = created.record.component_b
        halves = created.keys
        self.parts.record(
            "lct.created",
            lct_id=created.record.lct_id,
            pack=pack,
            module=module,
        )
        result = self.parts.ask(
            {
                "type": "pair_module",
                "unique_id": unique_id,
                "module_component_id": module,
                "lct_id": created.record.lct_id,
                "pack_device_key_half": halves.device_key_half_a.get_secret_value().hex(),
                "pack_lct_key_half": halves.lct_key_half_a.get_secret_value().hex(),
                "module_device_key_half": halves.device_key_half_b.get_secret_value().hex(),
                "module_lct_key_half": halves.lct_key_half_b.get_secret_value().hex(),
            },
            "pair_result",
            timeout_s=PAIR_TIMEOUT_S,
        )
        if result["unique_id"] != unique_id:
            raise AppError(f"pair_module: the pack paired module {result['unique_id']}")
        keys = self.parts.keystore.load() or keys
        self.parts.keystore.save(
            keys.model_copy(
                update={"module_lcts": {**keys.module_lcts, str(unique_id): created.record.lct_id}}
            )
        )
        self.parts.record(
            "module.paired",
            unique_id=unique_id,
            module_id=int(result["module_id"]),
            link=str(result["link"]),
        )
        return result

    def retire(self, unique_id: int, lct_id: str) -> None:
        """An offline module's LCT at key recovery: its pack half is gone, so it is revoked.

        The module is forgotten by the app too: once it is back, it is paired as a new one
        (`pair --all` finds it), under a new LCT.
        """
        with self.parts.api_bridge(f"revoking the LCT of offline module {unique_id}"):
            self.parts.bridge.update_lct_status(lct_id, "revoked", "key recovery: module offline")
        keys = self.parts.keystore.load()
        if keys is not None:
            remaining = {k: v for k, v in keys.module_lcts.items() if k != str(unique_id)}
            self.parts.keystore.save(keys.model_copy(update={"module_lcts": remaining}))
        self.parts.record(
            "lct.revoked", lct_id=lct_id, unique_id=unique_id, reason="module offline"
        )
