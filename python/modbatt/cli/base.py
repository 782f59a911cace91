"""What every ``modbatt`` command shares: -v / -q, exit codes, errors, bus and file options.

Each command is a :class:`ModbattCommand` (click), which gives it:

- ``-v`` / ``-q`` wherever they are typed on the line (each command level counts them into
  the same place);
- logging set up from them, and a :class:`~modbatt.progress.ConsoleProgress` on stderr;
- the exit status a script can trust (:data:`EXIT_CODES`): a failure becomes a short
  paragraph on stderr, what went wrong and what to do, with the traceback only under -v.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import platformdirs
from rich.console import Console
from rich.logging import RichHandler

from modbatt.api_bridge.access import AccessConfigError
from modbatt.api_bridge.ledger import LedgerHeadError
from modbatt.api_bridge.store import DatabaseUnusableError
from modbatt.app.app import PackSilentError
from modbatt.bus.traffic import LOG_HELP, check_log_path
from modbatt.bus.transport import parse_bus_spec
from modbatt.cli.config import ConfigError, check_serial, check_url, load_config, model_for
from modbatt.errors import ApiBridgeError, BusOpenError, InvalidArgumentError, ModbattError
from modbatt.progress import ConsoleProgress
from modbatt.state.stores import StoreError

# What the exit status says, for scripts (also in `modbatt --help` and docs/OPERATIONS.md).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API_BRIDGE, EXIT_STATE, EXIT_BUS = 0, 1, 2, 3, 4, 5
EXIT_INTERNAL, EXIT_INTERRUPTED = 70, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the operation failed (refused, unanswered, or a check did not pass)",
    EXIT_USAGE: "a mistake on the command line or in a --config file",
    EXIT_API_BRIDGE: "the API-Bridge could not be reached or answered wrongly",
    EXIT_STATE: "local state (keystore, flash) damaged",
    EXIT_BUS: "a CAN bus could not be opened",
    EXIT_INTERNAL: "an internal error (a bug: run again with -v and report the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

BUS_HELP = (
    "INTERFACE:CHANNEL[@BITRATE], e.g. virtual:modules, udp_multicast:239.74.163.10, "
    "socketcan:can1@500000, pcan:PCAN_USBBUS1@500000, slcan:/dev/ttyACM0@500000; or 'config' "
    "for python-can's configuration file"
)
CONFIG_HELP = (
    "A TOML file with this command's options (keys as the options are spelled, e.g. "
    'state-dir = "pack"); options given on the command line win over it.'
)
_VERBOSITY = "modbatt.verbosity"  # in click's ctx.meta, which every level of a command shares
_PROGRESS = "modbatt.progress"


def default_state_dir(role: str) -> Path:
    """Where a role keeps its state unless told otherwise.

    The platform's data directory: ``~/.local/share/modbatt/ROLE`` on Linux (or under
    ``$XDG_DATA_HOME``), the local application data folder on Windows and macOS.
    """
    return platformdirs.user_data_path("modbatt", appauthor=False) / role


def default_db_path() -> Path:
    """Where `modbatt api-bridge serve` keeps its database unless told otherwise."""
    return platformdirs.user_data_path("modbatt", appauthor=False) / "api-bridge.sqlite3"


def _count(ctx: click.Context, param: click.Parameter, value: int) -> None:
    sign = -1 if param.name == "quiet" else 1
    ctx.meta[_VERBOSITY] = ctx.meta.get(_VERBOSITY, 0) + sign * value


VERBOSITY_OPTIONS = (
    ("-v", "--verbose", "Say more: -v what the roles do, -vv everything; tracebacks on errors."),
    ("-q", "--quiet", "Quieter: log errors only; no progress display, no result line."),
)


def _verbosity_options() -> list[click.Parameter]:
    return [
        click.Option([short, long], count=True, expose_value=False, callback=_count, help=text)
        for short, long, text in VERBOSITY_OPTIONS
    ]


class ModbattCommand(click.Command):
    """A leaf command: -v / -q, logging, progress, and failures turned into exit codes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_verbosity_options())

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; its int result, or the failure's class, becomes the exit status."""
        verbosity = ctx.meta.get(_VERBOSITY, 0)
        console = Console(stderr=True)
        ctx.meta[_PROGRESS] = ConsoleProgress(console, quiet=verbosity < 0)
        _set_up_logging(verbosity, console)
        try:
            code = super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except Exception as exc:
            code, hint = classify(exc, verbose=verbosity > 0)
            if verbosity > 0 and code == EXIT_INTERNAL:
                # the traceback is the user's to report; the exit status stays the bug's
                click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
            click.echo(f"modbatt: {exc}", err=True)
            if hint:
                click.echo(hint, err=True)
        ctx.exit(code or EXIT_OK)


class ModbattGroup(click.Group):
    """A group of commands; its commands and subgroups are modbatt's own classes."""

    command_class = ModbattCommand
    group_class = type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_verbosity_options())


def progress_of(ctx: click.Context) -> ConsoleProgress:
    """The progress display of the running command."""
    progress: ConsoleProgress = ctx.meta[_PROGRESS]
    return progress


def _set_up_logging(verbosity: int, console: Console) -> None:
    """-v: what the roles do (INFO), -vv: everything (DEBUG), -q: errors only."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        max(-1, min(verbosity, 2)), logging.DEBUG
    )
    if console.is_terminal:  # through the console, so log lines print above the spinners
        handler: logging.Handler = RichHandler(
            console=console, show_time=False, show_path=False, markup=False
        )
        logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # can-isotp warns about every lost frame of a transfer; modbatt retries and says so itself
    logging.getLogger("isotp").setLevel(logging.DEBUG if verbosity >= 2 else logging.ERROR)


# What each class of failure exits with, and what to do about it; the first match counts.
ADVICE: tuple[tuple[type[BaseException], int, str], ...] = (
    (
        BusOpenError,
        EXIT_BUS,
        "Check the bus name (INTERFACE:CHANNEL[@BITRATE]), that the adapter is plugged in "
        "and its driver installed; 'ip link' lists SocketCAN interfaces.",
    ),
    (
        ApiBridgeError,
        EXIT_API_BRIDGE,
        "Check --api-bridge (or MODBATT_API_BRIDGE_URL) and --token; "
        "'modbatt api-bridge health' tells whether the API-Bridge is up.",
    ),
    (
        DatabaseUnusableError,
        EXIT_STATE,
        "Move the database to a local disk (--db), or check its directory's permissions.",
    ),
    (
        AccessConfigError,
        EXIT_USAGE,
        "'modbatt api-bridge add-token --tokens FILE CREATOR' gives a creator a token; "
        "docs/API_BRIDGE.md describes the access modes.",
    ),
    (
        LedgerHeadError,
        EXIT_STATE,
        "'modbatt api-bridge verify --db FILE' says what is wrong; a database and its head "
        "file are restored together, from the same moment (docs/API_BRIDGE.md).",
    ),
    (
        StoreError,
        EXIT_STATE,
        "The state directory's stores do not verify: restore them from a backup, or run "
        "key recovery (docs/OPERATIONS.md).",
    ),
    (
        PackSilentError,
        EXIT_FAILED,
        "Check that the pack controller is running and on this bus (--can), that the bit "
        "rates match and that the bus is terminated; 'modbatt app ... discover' asks it "
        "plainly.",
    ),
    (ModbattError, EXIT_FAILED, "Run again with -v for what led to it."),
    (  # a state directory or file that cannot be made or written
        OSError,
        EXIT_STATE,
        "Check the path given (--state-dir, --log, ...) and its permissions.",
    ),
)


def classify(exc: BaseException, *, verbose: bool = False) -> tuple[int, str]:
    """The exit status of a failure, and what to do about it (`verbose`: -v was given)."""
    for kind, code, advice in ADVICE:
        if isinstance(exc, kind):
            # advice to run again with -v says nothing to someone who did
            return code, "" if verbose and "-v" in advice else advice
    return EXIT_INTERNAL, (
        "This is a bug in modbatt: please report it with the traceback above."
        if verbose
        else "This is a bug in modbatt: run again with -v for the traceback."
    )


class Checked(click.ParamType[str]):
    """Text checked when the command line is read, by the check --config files use too."""

    def __init__(self, name: str, check: Callable[[str], object]) -> None:
        self.name = name
        self._check = check

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """`value` itself, once it passed the check; a usage error naming the option if not."""
        try:
            self._check(str(value))
        except InvalidArgumentError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


BUS = Checked("BUS", parse_bus_spec)  # python-can has the interface; the channel and rate parse
URL = Checked("URL", check_url)
SERIAL = Checked("TEXT", check_serial)
PATH = click.Path(path_type=Path)


def check_log(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A click callback: `value` when its extension names a traffic log format."""
    if value is None:
        return None
    try:
        return check_log_path(value)
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


F = TypeVar("F", bound=Callable[..., Any])


def log_option(function: F) -> F:
    """``--log FILE``: the traffic log of a role."""
    return click.option("--log", type=PATH, metavar="FILE", callback=check_log, help=LOG_HELP)(
        function
    )


def config_option(role: str) -> Callable[[F], F]:
    """``--config FILE``: the role's TOML file, under whatever the command line gives.

    The file is read first (an eager option) and becomes click's default map for the
    command, so an option given on the line still wins, and required options may come from
    either place.
    """

    def load(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
        if value is None:
            return
        try:
            config = load_config(value, model_for(role))
        except ConfigError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        ctx.default_map = {**(ctx.default_map or {}), **config.options()}

    return click.option(
        "--config",
        type=PATH,
        metavar="FILE",
        is_eager=True,
        expose_value=False,
        callback=load,
        help=CONFIG_HELP,
    )
