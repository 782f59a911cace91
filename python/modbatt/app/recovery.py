"""Key recovery (seed Workflow C): bring back a pack that lost its keys."""

from __future__ import annotations

import time
from typing import Any

from modbatt.app.bootstrap import Bootstrap
from modbatt.app.errors import AppError
from modbatt.app.link import AppLink
from modbatt.app.pairing import Pairing
from modbatt.app.parts import AppParts
from modbatt.protocol.firmware import PACK_CONTROLLER_TIMEOUT_S

# How long a known module has to register again. A paired module takes commands only sealed
# by the pack that lost its keys, so it comes back when its own pack-controller timeout
# (11.1 s, the firmware's) runs out and it announces (within 0.6 s), or sooner when the
# pack's start-up deregistration reached it (a module not yet linked).
MODULES_BACK_S = PACK_CONTROLLER_TIMEOUT_S + 3.0


class Recovery:
    """Key recovery, from the app's side: a handshake, or a confirmed new bootstrap."""

    def __init__(
        self, parts: AppParts, link: AppLink, bootstrap: Bootstrap, pairing: Pairing
    ) -> None:
        self.parts = parts
        self.link = link
        self.bootstrap = bootstrap
        self.pairing = pairing

    def run(self, *, confirm: bool) -> dict[str, Any]:
        """Workflow C: bring back a pack that lost its keys.

        A pack that still holds its keys only needs the channel upgrade again. A pack back in
        Factory Default (lost or corrupt flash) needs a new bootstrap: that is never automatic
        and needs the operator's `confirm`; it replaces the LCTs on the API-Bridge (the old
        keys are revoked), delivers new keys in a fresh X25519 exchange, and pairs again every
        module the app had paired.
        """
        self.parts.channel.session = None
        info = self.parts.discover()
        if info["state"] != 1:
            return self.link.connect()
        if not confirm:
            raise AppError(
                "recover: the pack is in Factory Default"
                + (f" ({info['flash_problem']})" if info.get("flash_problem") else "")
                + "; a new bootstrap needs the operator's confirmation (--confirm-rebootstrap)"
            )
        keys = self.parts.keystore.load()
        old_lct = None if keys is None else keys.lct_id
        self.parts.record(
            "rebootstrap.confirmed",
            lct_id=old_lct,
            serial=str(info["serial"]),
            flash_problem=info.get("flash_problem"),
        )
        upgraded = self.bootstrap.run(replaces=old_lct)
        modules = {} if keys is None else dict(keys.module_lcts)
        paired: list[int] = []
        offline: list[int] = []
        if modules:
            online = self._modules_back({int(unique) for unique in modules})
            with self.parts.progress.counting("pairing the modules again", len(modules)) as advance:
                for unique, lct_id in modules.items():
                    if int(unique) in online:
                        self.pairing.run(int(unique), replaces=lct_id)
                        paired.append(int(unique))
                    else:
                        self.pairing.retire(int(unique), lct_id)
                        offline.append(int(unique))
                    advance(1)
        if paired:  # the pack's state and level now, not the bootstrap's
            now = self.parts.discover()
            upgraded = {**upgraded, "state": now["state"], "security_level": now["security_level"]}
        return {**upgraded, "repaired_modules": len(paired), "offline_modules": offline}

    def _modules_back(self, expected: set[int]) -> set[int]:
        """Which of `expected` the restarted pack has registered again, waiting a while.

        The pack's module table starts empty when it restarts, so a module in it has
        announced itself since: it is on the bus. Its "online" flag is no guide here, since
        the pack cannot open a paired module's sealed telemetry until it is paired again.
        A module still missing after MODULES_BACK_S is taken as unplugged.
        """
        deadline = time.monotonic() + MODULES_BACK_S
        with self.parts.progress.waiting("waiting for the modules to register with the pack again"):
            while True:
                listed = {int(m["unique_id"]) for m in self.parts.discover()["modules"]} & expected
                if listed == expected or time.monotonic() >= deadline:
                    return listed
                time.sleep(0.25)
