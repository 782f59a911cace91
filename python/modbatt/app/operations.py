"""Operating a bootstrapped pack (seed Workflow B): configure, command, isolate, diagnose.

Every request here goes sealed under the app link (it is brought up first when needed).
"""

from __future__ import annotations

from typing import Any

from modbatt import frames_of
from modbatt.app.errors import AppError, PlainCommandError
from modbatt.app.link import AppLink
from modbatt.app.parts import AppParts
from modbatt.protocol.catalogue import catalogue


class Operations:
    """What an operator does with a pack once it has keys."""

    def __init__(self, parts: AppParts, link: AppLink) -> None:
        self.parts = parts
        self.link = link

    def configure(
        self, *, max_state: int | None = None, bridge_unpaired_modules: bool | None = None
    ) -> dict[str, Any]:
        """Operational parameters and security policy (Workflow B.1), sealed, kept in flash."""
        self.link.up("configure")
        request: dict[str, Any] = {"type": "configure"}
        if max_state is not None:
            request["max_state"] = max_state
        if bridge_unpaired_modules is not None:
            request["bridge_unpaired_modules"] = bridge_unpaired_modules
        answer = self.parts.ask(request, "configured")
        self.parts.record(
            "pack.configured", max_state=max_state, bridge_unpaired_modules=bridge_unpaired_modules
        )
        return answer

    def isolate_all(self) -> dict[str, Any]:
        """Every module Off at once (ALL_ISOLATE), the emergency stop.

        The pack sends it at once: plain for the modules it reaches plain, and a sealed copy
        to each paired module (which takes no plain one).
        """
        self.link.up("isolate")
        answer = self.parts.ask({"type": "isolate"}, "isolated")
        self.parts.record("pack.isolated", sealed_copies=len(answer["sealed"]))
        return answer

    def command_state(
        self,
        module_id: int,
        state: int,
        hv_bus_voltage: float = 0.0,
        *,
        every_plain_module: bool = False,
    ) -> None:
        """Ask a module for a state (Off 0 ... On 3) (Workflow B.3).

        A module that is not paired takes the command plain, and the module firmware ignores
        the module id in it: every other unpaired module on CAN 2 takes it too. Then the
        command is refused (`PlainCommandError`, naming them) unless `every_plain_module`
        says the operator wants exactly that.

        A STATE_CHANGE sealed with the app link, which the pack's gateway reseals for the
        module's own link. It has two bytes, module id and state, as the module firmware takes
        it (it ignores any other length); `hv_bus_voltage` is kept for callers of earlier
        versions and not sent.
        """
        del hv_bus_voltage  # the firmware's STATE_CHANGE has no room for it (DLC 2)
        session = self.link.up("command")
        modules = {int(m["module_id"]): m for m in self.parts.discover()["modules"]}
        target = modules.get(module_id)
        if target is not None and not target["paired"]:
            also = sorted(i for i, m in modules.items() if i != module_id and not m["paired"])
            if also and not every_plain_module:
                raise PlainCommandError(
                    f"module {module_id} is not paired: a plain command reaches every unpaired "
                    f"module (the module firmware ignores the id in it), here also modules "
                    f"{', '.join(map(str, also))}. Pair them, or confirm that all of them "
                    "should change state (--every-plain-module)."
                )
        can_id, payload = catalogue().encode(
            "STATE_CHANGE", module_id, {"ModuleId": module_id, "RequestedState": state}
        )
        for frame_id, data in frames_of(session.seal(can_id, payload)):
            self.parts.channel.endpoint.channel.port.send(frame_id, data)
        self.parts.record("module.commanded", module_id=module_id, state=state)

    def diagnostics(self) -> dict[str, Any]:
        """Counters, links, flash and audit log health, firmware images (sealed)."""
        self.link.up("diagnostics")
        return self.parts.ask({"type": "diagnostics"}, "diagnostics")

    def registrations(self) -> dict[str, Any]:
        """What the API-Bridge holds for the app's pack: the workflow's "blockchain sync".

        Read only: the app's and the pack's components (their status) and the status of
        every LCT the app uses (app-pack, and each paired module's). `problems` lists each
        one that is not as it should be (a component not registered, an LCT suspended or
        revoked elsewhere), for a technician to act on before keys stop working.
        """
        keys = self.parts.keystore.load()
        if keys is None or keys.lct_id is None:
            raise AppError("registrations: bootstrap first (the app holds no keys for a pack)")
        components = {"app": keys.app_component_id, "pack": keys.pack_component_id}
        lcts = {"app-pack": keys.lct_id} | {
            f"module {unique_id}": lct_id for unique_id, lct_id in keys.module_lcts.items()
        }
        with self.parts.api_bridge("checking the registrations and LCTs"):
            component_status = {
                name: self.parts.bridge.get_component(component_id).status
                for name, component_id in components.items()
                if component_id is not None
            }
            lct_status = {
                name: self.parts.bridge.get_lct(lct_id).status for name, lct_id in lcts.items()
            }
        problems = [
            f"the {name} component is {status}"
            for name, status in component_status.items()
            if status != "registered"
        ] + [
            f"the {name} LCT is {status}"
            for name, status in lct_status.items()
            if status != "active"
        ]
        return {"components": component_status, "lcts": lct_status, "problems": problems}
