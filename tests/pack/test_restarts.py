"""The pack controller restarts in the middle of a bootstrap and of a pairing (issue 6).

A `Crash` makes the running pack die at a chosen point of one control message: on receiving
it (nothing stored), or after handling it and before its answer goes out (stored, never
acknowledged). A helper thread then reboots it from its flash, on the same buses, as power
coming back would. The app must get back to Operational by itself: nothing half-stored, no
key recovery, no operator.
"""

from __future__ import annotations

import threading
from typing import Any

from modbatt.pack.keys import PackState
from modbatt.state.keystores import app_keystore
from tests.module.test_pairing import Lifecycle, lifecycle, online_count, wait_for

__all__ = ["lifecycle"]  # the fixture, shared with test_pairing.py


class Crash:
    """The pack dies at the first `kind` message it receives, and comes back up."""

    def __init__(self, life: Lifecycle, kind: str, *, after_handling: bool) -> None:
        self.life, self.kind, self.after_handling = life, kind, after_handling
        self.fired, self.rebooted = threading.Event(), threading.Event()
        self.dead = False
        handlers = life.pack.handlers
        handle = handlers.handle

        def dying(message: dict[str, Any], *, sealed: bool = True) -> dict[str, Any] | None:
            if self.dead:
                return None  # a dead pack answers nothing
            if message.get("type") == kind and not self.fired.is_set():
                if after_handling:
                    handle(message, sealed=sealed)  # stored; the answer never leaves
                self.dead = True
                self.fired.set()
                return None
            return handle(message, sealed=sealed)

        handlers.handle = dying  # type: ignore[method-assign]
        threading.Thread(target=self._reboot, daemon=True).start()

    def _reboot(self) -> None:
        if not self.fired.wait(60):
            return
        self.life.pack.stop()
        self.life.pack = self.life.pack.started_again()
        self.rebooted.set()


def _app_lct(life: Lifecycle) -> str | None:
    keys = app_keystore(life.state_dir / "app").load()
    return None if keys is None else keys.lct_id


def _audit(life: Lifecycle) -> str:
    return (life.state_dir / "audit.jsonl").read_text()


def test_a_pack_that_dies_on_receiving_the_keys_is_bootstrapped_again(
    lifecycle: Lifecycle,
) -> None:
    crash = Crash(lifecycle, "key_delivery", after_handling=False)
    answer = lifecycle.app.bootstrap()
    assert crash.rebooted.is_set() and answer["type"] == "upgraded"
    flash = lifecycle.pack.flash
    assert flash is not None and flash.lct_id == _app_lct(lifecycle)
    audit = _audit(lifecycle)
    # the first LCT never reached a pack: it was replaced, not left active
    assert '"bootstrap.retried"' in audit and audit.count('"lct.created"') == 2
    keys = app_keystore(lifecycle.state_dir / "app").load()
    assert keys is not None and keys.delivered


def test_a_pack_that_dies_before_acknowledging_the_keys_is_resumed_by_handshake(
    lifecycle: Lifecycle,
) -> None:
    crash = Crash(lifecycle, "key_delivery", after_handling=True)
    answer = lifecycle.app.bootstrap()
    assert crash.rebooted.is_set() and answer["type"] == "upgraded"
    # the pack kept the keys it stored; the app found out with a handshake, not a new LCT
    flash = lifecycle.pack.flash
    assert flash is not None and flash.lct_id == _app_lct(lifecycle)
    assert _audit(lifecycle).count('"lct.created"') == 1
    keys = app_keystore(lifecycle.state_dir / "app").load()
    assert keys is not None and keys.delivered


def _bootstrapped(life: Lifecycle) -> None:
    life.app.bootstrap()
    assert wait_for(lambda: online_count(life) == 2, 5.0)


def test_a_pack_that_dies_on_receiving_a_pairing_request_pairs_after_its_restart(
    lifecycle: Lifecycle,
) -> None:
    _bootstrapped(lifecycle)
    first, second = lifecycle.modules
    lifecycle.app.pair(first.module.config.unique_id)
    crash = Crash(lifecycle, "pair_module", after_handling=False)
    result = lifecycle.app.pair(second.module.config.unique_id)
    assert crash.rebooted.is_set() and result["module_id"] == second.module.module_id
    status = lifecycle.app.status()
    assert status["state"] == PackState.OPERATIONAL and all(m["paired"] for m in status["modules"])
    assert wait_for(lambda: status["security_level"] == 3, 1.0)


def test_a_pack_that_dies_before_answering_a_pairing_ends_up_paired_once(
    lifecycle: Lifecycle,
) -> None:
    _bootstrapped(lifecycle)
    first, second = lifecycle.modules
    lifecycle.app.pair(first.module.config.unique_id)
    crash = Crash(lifecycle, "pair_module", after_handling=True)
    result = lifecycle.app.pair(second.module.config.unique_id)
    assert crash.rebooted.is_set() and result["module_id"] == second.module.module_id
    # one pairing record per module in the pack's flash, and the module's link matches it
    flash = lifecycle.pack.flash
    assert flash is not None and len(flash.modules) == 2
    assert wait_for(lambda: lifecycle.app.status()["state"] == PackState.OPERATIONAL, 10.0)
    lifecycle.app.telemetry.clear()
    ids = {m.module.module_id for m in lifecycle.modules}
    assert wait_for(lambda: ids <= set(lifecycle.app.telemetry), 4.0)
