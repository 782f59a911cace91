"""The bootstrap (seed Workflow "Bootstrap"): a factory-default pack gets its keys, sealed.

Register the app (component data = its host id) and the pack (``MODBATT-PACK-<serial>``) on
the API-Bridge, create their LCT, run an X25519 exchange with the pack, deliver the pack's key
halves and the app's device half sealed under it, keep the app's keys (pending, then
delivered), then upgrade the channel. With `replaces` (key recovery), the old app-pack LCT is
replaced instead of a new one being created.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from modbatt.app.errors import AppError, PackRefusedError, PackSilentError
from modbatt.app.link import AppLink
from modbatt.app.parts import AppParts
from modbatt.errors import KeyHalfError
from modbatt.protocol.bootstrap import (
    ACK_LABEL,
    DELIVERY_LABEL,
    Ephemeral,
    KeyAgreementError,
    delivery_keys,
    seal,
    unseal,
)
from modbatt.state.keystores import AppKeys

log = logging.getLogger("modbatt.app.bootstrap")

BOOTSTRAP_ATTEMPTS, BOOTSTRAP_RETRY_S = 3, 1.0  # whole exchanges, when one is cut short


class Bootstrap:
    """The bootstrap, from the app's side."""

    def __init__(self, parts: AppParts, link: AppLink) -> None:
        self.parts = parts
        self.link = link

    def run(self, *, replaces: str | None = None) -> dict[str, Any]:
        """Bring a factory-default pack to Bootstrap Complete with an encrypted app link.

        With `replaces` (key recovery), the old app-pack LCT is revoked and replaced instead
        of a new one being created.

        A transfer cut short (the pack restarted, its answers lost through every retry) is
        started again from discovery, up to BOOTSTRAP_ATTEMPTS times. The app stores the keys
        as pending before it sends them, so each new attempt knows where the last one got to:
        a pack in factory state never stored them (the pending LCT is replaced and the
        exchange runs again); a pack holding keys stored ours and only its acknowledgement
        was lost, which the handshake proves without any key crossing the bus.
        """
        for attempt in range(1, BOOTSTRAP_ATTEMPTS + 1):
            try:
                step = "bootstrap" + (
                    f" (attempt {attempt} of {BOOTSTRAP_ATTEMPTS})" if attempt > 1 else ""
                )
                with self.parts.progress.waiting(step):
                    return self._bootstrap_once(replaces, resuming=attempt > 1)
            except (PackSilentError, PackRefusedError) as exc:
                if attempt == BOOTSTRAP_ATTEMPTS:
                    raise
                log.warning("bootstrap attempt %d cut short (%s): starting again", attempt, exc)
                self.parts.record("bootstrap.retried", attempt=attempt, reason=str(exc))
                time.sleep(BOOTSTRAP_RETRY_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def _bootstrap_once(self, replaces: str | None, *, resuming: bool) -> dict[str, Any]:
        info = self.parts.ask(
            {"type": "discover"}, "device_info", plain=self.parts.channel.session is None
        )
        stored = self.parts.keystore.load()
        has_keys = stored is not None and stored.lct_id is not None
        pending = stored if has_keys and stored is not None and not stored.delivered else None
        if info["state"] != 1 and (pending is not None or (resuming and has_keys)):
            # our delivery reached the pack; the handshake proves it holds the same link key
            answer = self.link.connect()
            if pending is not None:
                self.parts.keystore.save(pending.model_copy(update={"delivered": True}))
                self.parts.record(
                    "keys.delivered", link=self.link.key().fingerprint, lct_id=pending.lct_id
                )
            return answer
        if info["state"] != 1:
            raise AppError(
                f"bootstrap: the pack is in state {info['state']} ({info['state_name']}),"
                " not Factory Default"
            )
        serial = str(info["serial"])
        with self.parts.api_bridge("registering the app and the pack"):
            app = self.parts.bridge.register_component(self.parts.host_id, "modbatt app")
            pack = self.parts.bridge.register_component(
                f"MODBATT-PACK-{serial}", "modbatt pack controller"
            )
        # A pending LCT never reached a pack (it is in factory state): replace it rather than
        # leave it active on the API-Bridge.
        old_lct = pending.lct_id if pending is not None else replaces
        try:
            with self.parts.api_bridge("creating the app-pack LCT"):
                if old_lct is None:
                    created = self.parts.bridge.create_lct(
                        app.component_id, pack.component_id, "app-pack"
                    )
                else:
                    reason = "key recovery" if pending is None else "bootstrap retried"
                    created = self.parts.bridge.replace_lct(old_lct, reason)
        except KeyHalfError as exc:
            # Say exactly what is kept: the keystore has held the app's host id since the app
            # first ran (its identity on the API-Bridge, so that a retry registers the same
            # component); no key and no pending LCT were written, and the pack is untouched.
            raise KeyHalfError(
                exc.field,
                exc.problem,
                kept=f"no key was stored and the pack was not changed; the app's keystore "
                f"keeps only its host id {self.parts.host_id} (not a key), as before",
            ) from None
        keys = created.keys
        self.parts.record(
            "lct.created",
            lct_id=created.record.lct_id,
            app=app.component_id,
            pack=pack.component_id,
        )
        ephemeral = Ephemeral()
        hello = self.parts.ask(
            {
                "type": "bootstrap_hello",
                "app_id": self.parts.host_id,
                "public_key": ephemeral.public.hex(),
            },
            "bootstrap_hello_ack",
        )
        pack_public = bytes.fromhex(hello["public_key"])
        try:
            shared = ephemeral.shared_secret(pack_public)
        except KeyAgreementError as exc:
            raise AppError(f"bootstrap_hello: {exc}") from None
        sealing = delivery_keys(shared, self.parts.host_id, serial, ephemeral.public, pack_public)
        delivery = seal(
            sealing.delivery,
            DELIVERY_LABEL,
            {
                "pack_component_id": pack.component_id,
                "pack_device_key_half": keys.device_key_half_b.get_secret_value().hex(),
                "pack_lct_key_half": keys.lct_key_half_b.get_secret_value().hex(),
                "app_device_key_half": keys.device_key_half_a.get_secret_value().hex(),
                "app_component_id": app.component_id,
                "lct_id": created.record.lct_id,
            },
        )
        record = AppKeys(
            host_id=self.parts.host_id,
            app_component_id=app.component_id,
            app_device_key_half=keys.device_key_half_a.get_secret_value().hex(),
            app_lct_key_half=keys.lct_key_half_a.get_secret_value().hex(),
            pack_component_id=pack.component_id,
            lct_id=created.record.lct_id,
            pack_device_key_half=keys.device_key_half_b.get_secret_value().hex(),
            link_dh_secret=shared.hex(),
            delivered=False,
        )
        self.parts.keystore.save(record)  # pending: whatever happens next, the app knows its keys
        ack = self.parts.ask({"type": "key_delivery", "sealed": delivery.hex()}, "key_ack")
        try:
            receipt = unseal(sealing.acknowledgement, ACK_LABEL, bytes.fromhex(ack["sealed"]))
        except KeyAgreementError as exc:
            raise AppError(f"key_delivery: the key acknowledgement: {exc}") from None
        link = self.link.key()
        if receipt.get("link") != link.fingerprint:
            raise AppError("bootstrap: the pack derived another link key than the app")
        self.parts.keystore.save(record.model_copy(update={"delivered": True}))
        self.parts.record("keys.delivered", link=link.fingerprint, lct_id=created.record.lct_id)
        return self.link.connect()
