"""Configuration files: a TOML file per role (``--config FILE``) holding its command-line options.

Keys are the options' names as on the command line, without the dashes in front
(``state-dir``, ``can2``, ``unique-id``); an option given on the command line wins over the
file. A relative ``state-dir``, ``log`` or ``report`` is relative to the file's directory. A
file is checked whole at start-up: every unknown key, wrong type or impossible value is
named, with the problem, before anything runs.

```toml
# pack.toml: modbatt pack run --config pack.toml
can1 = "socketcan:can0"
can2 = "socketcan:can1"
state-dir = "/var/lib/modbatt/pack"
serial = "PACK-0001"
log = "/var/log/modbatt/pack.blf"
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from modbatt.bus.traffic import check_log_path
from modbatt.bus.transport import parse_bus_spec
from modbatt.errors import InvalidArgumentError
from modbatt.protocol.firmware import MAX_CELLS


class ConfigError(InvalidArgumentError):
    """A configuration file that cannot be used; the message names each key and problem."""


SERIAL_MAX = 64  # characters of a pack controller's serial number


def check_url(text: str) -> str:
    """`text` when it is an http:// or https:// URL (an API-Bridge's base URL)."""
    if not text.startswith(("http://", "https://")):
        raise InvalidArgumentError(f"{text!r} is not an http:// or https:// URL")
    return text


def check_serial(text: str) -> str:
    """`text` when it can be a pack controller's serial number (1 to SERIAL_MAX characters)."""
    if not 1 <= len(text) <= SERIAL_MAX:
        raise InvalidArgumentError(f"a serial number has 1 to {SERIAL_MAX} characters")
    return text


T = TypeVar("T")


def _checked(check: Callable[[T], object]) -> AfterValidator:
    """One of modbatt's own checks (the command line uses the same) as a pydantic validator."""

    def validate(value: T) -> T:
        try:
            check(value)
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None
        return value

    return AfterValidator(validate)


Bus = Annotated[str, _checked(parse_bus_spec)]
LogFile = Annotated[Path, _checked(check_log_path)]
Url = Annotated[str, _checked(check_url)]
Serial = Annotated[str, _checked(check_serial)]


class RoleConfig(BaseModel):
    """What every role's file may hold; each role adds its own options."""

    model_config = ConfigDict(
        extra="forbid", strict=True, alias_generator=lambda name: name.replace("_", "-")
    )

    log: LogFile | None = None

    def options(self) -> dict[str, Any]:
        """The values set in the file, by the name of their option's parameter (`state_dir`)."""
        return self.model_dump(exclude_unset=True)


class PackConfig(RoleConfig):
    """``modbatt pack run``."""

    can1: Bus | None = None
    can2: Bus | None = None
    state_dir: Path | None = None
    serial: Serial | None = None
    fd: bool | None = None
    duration: Annotated[float, Field(gt=0)] | None = None


class ModuleConfig(RoleConfig):
    """``modbatt module run``."""

    can: Bus | None = None
    unique_id: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    cells: Annotated[int, Field(ge=1, le=MAX_CELLS)] | None = None
    count: Annotated[int, Field(ge=1, le=255)] | None = None
    kind: Literal["secured", "legacy"] | None = None
    fd: bool | None = None
    state_dir: Path | None = None
    report: Path | None = None
    duration: Annotated[float, Field(gt=0)] | None = None


class AppConfig(RoleConfig):
    """``modbatt app`` (the options before the action)."""

    can: Bus | None = None
    state_dir: Path | None = None
    api_bridge: Url | None = None
    creator: Annotated[str, Field(min_length=1)] | None = None
    token: Annotated[str, Field(min_length=1)] | None = None


class MonitorConfig(AppConfig):
    """``modbatt monitor``: the app's options and the view's own."""

    duration: Annotated[float, Field(gt=0)] | None = None
    interval: Annotated[float, Field(ge=0.05)] | None = None


ConfigT = TypeVar("ConfigT", bound=RoleConfig)

MODELS: dict[str, type[RoleConfig]] = {
    "app": AppConfig,
    "monitor": MonitorConfig,
    "module": ModuleConfig,
    "pack": PackConfig,
}


def model_for(role: str) -> type[RoleConfig]:
    """What the configuration file of `role` may hold (`app`, `monitor`, `module`, `pack`)."""
    return MODELS[role]


def load_config(path: Path, model: type[ConfigT]) -> ConfigT:
    """The file at `path`, checked against `model`; ConfigError names every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: cannot be read ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from None
    # Paths are strings in TOML: turn them into Paths before the strict check. A relative
    # one is relative to the file, wherever the command is started from (as in a unit file).
    for key in ("state-dir", "log", "report"):
        if isinstance(data.get(key), str):
            data[key] = path.parent / Path(data[key]).expanduser()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        known = ", ".join(sorted(field.alias or name for name, field in model.model_fields.items()))
        problems = [_problem(error, known) for error in exc.errors(include_input=False)]
        raise ConfigError(f"config {path}:\n  " + "\n  ".join(problems)) from None


def _problem(error: Any, known: str) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(the file)"
    if error["type"] == "extra_forbidden":
        return f"key {key!r}: not an option of this role (its keys: {known})"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"key {key!r}: {message}"
