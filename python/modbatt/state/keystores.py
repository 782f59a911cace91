"""What each role keeps, exactly as the seed lists it, in a two-slot store.

The store is :class:`~modbatt.state.stores.TwoSlotStore`.

- App (``app.slot0/1`` in the app's state directory): host id, the app's component id, the
  app's device key half and LCT key half, and the references needed to recover them (the pack
  controller's component id, the LCT id).
- Pack controller flash (``pack-flash.slot0/1``): the pack's device key half and LCT key half,
  the app's device key half, the pack's component id, the device configuration, and per paired
  module its component id and the pack's halves for it (seed Workflow A.1 step 3).
- Battery module flash (``module-flash.slot0/1``): its component id and key halves, the
  pack's device key half and component id.

Each role also keeps, per link, what it needs to rebuild the link key after a restart and the
seed does not list: the peer's device key half and the X25519 secret of the bootstrap or
pairing that created the link (docs/PROTOCOL.md §2.4).

Key halves are stored as hex and never shown: every key field has ``repr=False``, and logs
carry `modbatt.state.stores.fingerprint` only.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from modbatt._core import LinkKey
from modbatt.state.stores import StoreCorruptError, TwoSlotStore

KeyHalfHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]
SecretHex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def key_field(default: Any = ...) -> Any:
    """A key half: 128 lowercase hex characters, hidden from reprs."""
    return Field(default, repr=False)


class Record(BaseModel):
    """A stored record: unknown fields are refused, so a damaged file cannot pass as valid."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AppKeys(Record):
    """The app's keystore (seed §2.4, Modbatt App Local Storage)."""

    host_id: str
    app_component_id: str | None = None
    app_device_key_half: KeyHalfHex | None = key_field(None)
    app_lct_key_half: KeyHalfHex | None = key_field(None)
    pack_component_id: str | None = None
    lct_id: str | None = None
    # Beyond the seed's list: without the pack's device half and the bootstrap's X25519
    # secret the app could not rebuild the link key after a restart (docs/PROTOCOL.md §2.4).
    pack_device_key_half: KeyHalfHex | None = key_field(None)
    link_dh_secret: SecretHex32 | None = key_field(None)
    # The LCT of each module the app paired (by unique id), for key recovery.
    module_lcts: dict[str, str] = Field(default_factory=dict)
    # False between storing the keys and the pack's acknowledgement of their delivery: the
    # next bootstrap then checks whether the pack holds them (PROTOCOL.md §8b).
    delivered: bool = True


class PairedModule(Record):
    """One paired module's keys in the pack's flash (seed Workflow A.1 step 3).

    Also what the pack needs to rebuild the link: the module's device half and the pairing's
    X25519 secret.
    """

    module_component_id: str
    pack_device_key_half: KeyHalfHex = key_field()
    pack_lct_key_half: KeyHalfHex = key_field()
    module_device_key_half: KeyHalfHex = key_field()
    dh_secret: SecretHex32 = key_field()
    lct_id: str
    unique_id: int


class PackFlash(Record):
    """The pack controller's flash key store (seed §2.4, Pack Controller Flash Storage)."""

    pack_component_id: str
    pack_device_key_half: KeyHalfHex = key_field()
    pack_lct_key_half: KeyHalfHex = key_field()
    app_device_key_half: KeyHalfHex = key_field()
    configuration: dict[str, str | int | float | bool] = Field(default_factory=dict)
    modules: dict[str, PairedModule] = Field(default_factory=dict)
    # Beyond the seed's list, to rebuild the app link after a restart (PROTOCOL.md §2.4).
    app_component_id: str
    app_link_dh_secret: SecretHex32 = key_field()
    lct_id: str


class ModuleFlash(Record):
    """A battery module's flash store: what it needs to rebuild its link to the pack."""

    module_component_id: str
    module_device_key_half: KeyHalfHex = key_field()
    module_lct_key_half: KeyHalfHex = key_field()
    pack_device_key_half: KeyHalfHex = key_field()
    pack_component_id: str
    dh_secret: SecretHex32 = key_field()


RecordT = TypeVar("RecordT", bound=Record)


class TypedStore(Generic[RecordT]):
    """A `TwoSlotStore` holding one validated record type."""

    def __init__(self, directory: Path, name: str, model: type[RecordT]) -> None:
        self.slots = TwoSlotStore(directory, name)
        self.model = model
        self.damaged: tuple[str, ...] = ()

    def load(self) -> RecordT | None:
        """The stored record, None when nothing is stored; StoreCorruptError when it is lost."""
        loaded = self.slots.load()
        self.damaged = loaded.damaged
        if loaded.payload is None:
            return None
        try:
            return self.model.model_validate(loaded.payload)
        except ValidationError as exc:
            raise StoreCorruptError(
                f"{self.slots.name}: the record does not validate ({exc.error_count()} errors: "
                f"{_problem_fields(exc, self.model)})"
            ) from None

    def save(self, record: RecordT) -> int:
        """Store `record` (two slots, atomic); returns its sequence number."""
        return self.slots.save(record.model_dump(mode="json"))

    def erase(self) -> None:
        """Forget everything (a factory reset)."""
        self.slots.erase()


def _problem_fields(exc: ValidationError, model: type[Record]) -> str:
    """The top-level fields that failed, named only when the model knows them.

    Never a value, nor a name taken from the file (a dict key could be anything, even key
    material).
    """
    names = set()
    for error in exc.errors(include_input=False):
        top = error["loc"][0] if error["loc"] else None
        if top is None:
            names.add("the record itself")
        else:
            names.add(str(top) if top in model.model_fields else "an unknown field")
    return ", ".join(sorted(names))


def app_keystore(directory: Path) -> TypedStore[AppKeys]:
    """The app's keystore in `directory`."""
    return TypedStore(directory, "app", AppKeys)


def pack_flash(directory: Path) -> TypedStore[PackFlash]:
    """The pack controller's flash store in `directory`."""
    return TypedStore(directory, "pack-flash", PackFlash)


def module_flash(directory: Path) -> TypedStore[ModuleFlash]:
    """A battery module's flash store in `directory`."""
    return TypedStore(directory, "module-flash", ModuleFlash)


# --- the link keys, rebuilt from what each store holds (PROTOCOL.md §2.1) --------------------


def _link_key(own_half: str, own_id: str, peer_half: str, peer_id: str, dh_secret: str) -> LinkKey:
    """A link key from what a store keeps, in hex.

    This end's device half and component id, the peer's, and the X25519 secret of their key
    agreement.
    """
    return LinkKey(
        bytes.fromhex(own_half), own_id, bytes.fromhex(peer_half), peer_id, bytes.fromhex(dh_secret)
    )


def app_link_key(keys: AppKeys) -> LinkKey | None:
    """The app link's key from the app's keystore; None before the app has its keys."""
    if not (keys.app_device_key_half and keys.pack_device_key_half and keys.link_dh_secret):
        return None
    assert keys.app_component_id and keys.pack_component_id  # stored with the halves
    return _link_key(
        keys.app_device_key_half,
        keys.app_component_id,
        keys.pack_device_key_half,
        keys.pack_component_id,
        keys.link_dh_secret,
    )


def pack_app_link_key(flash: PackFlash) -> LinkKey:
    """The app link's key from the pack's flash."""
    return _link_key(
        flash.pack_device_key_half,
        flash.pack_component_id,
        flash.app_device_key_half,
        flash.app_component_id,
        flash.app_link_dh_secret,
    )


def paired_module_link_key(flash: PackFlash, paired: PairedModule) -> LinkKey:
    """A paired module's link key from the pack's flash."""
    return _link_key(
        paired.pack_device_key_half,
        flash.pack_component_id,
        paired.module_device_key_half,
        paired.module_component_id,
        paired.dh_secret,
    )


def module_link_key(record: ModuleFlash) -> LinkKey:
    """The module's link key from its own flash."""
    return _link_key(
        record.module_device_key_half,
        record.module_component_id,
        record.pack_device_key_half,
        record.pack_component_id,
        record.dh_secret,
    )


def host_id(store: TypedStore[AppKeys]) -> str:
    """The app's host id: generated once (a random UUID) and kept in the keystore."""
    keys = store.load()
    if keys is not None:
        return keys.host_id
    new = f"host-{uuid.uuid4()}"
    store.save(AppKeys(host_id=new))
    return new
