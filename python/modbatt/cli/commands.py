"""The ``modbatt`` command line (click).

``modbatt demo`` runs the whole system in one process; ``pack run``, ``module run`` and
``app ...`` are the three roles; ``monitor`` is the live view of a pack; ``decode`` reads a
traffic log back; ``api-bridge`` serves or checks an API-Bridge; ``bench`` and ``soak``
measure. What every command shares (-v / -q, exit codes, bus and file options) is in
:mod:`modbatt.cli.base`; the app's commands are in :mod:`modbatt.cli.app_commands`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from modbatt import __version__
from modbatt.api_bridge.client import DEFAULT_URL, ENV_TOKEN, ENV_URL
from modbatt.cli.app_commands import app, monitor
from modbatt.cli.base import (
    BUS,
    BUS_HELP,
    EXIT_API_BRIDGE,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PATH,
    SERIAL,
    URL,
    ModbattGroup,
    check_log,
    config_option,
    default_db_path,
    default_state_dir,
    log_option,
    progress_of,
)
from modbatt.protocol.firmware import MAX_CELLS

__all__ = ["EXIT_CODES", "cli", "default_db_path", "default_state_dir", "main"]

# Help text is wrapped by click; "\b" keeps the exit codes one per line.
EPILOG = "\b\nExit status:\n" + "\n".join(
    f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()
)
SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
STOP_AFTER = click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).",
)
FIGURES_JSON = click.option(
    "--json", "json_path", type=PATH, metavar="FILE", help="Also write the figures here."
)


@click.group("modbatt", cls=ModbattGroup, context_settings=SETTINGS, epilog=EPILOG)
@click.version_option(__version__, prog_name="modbatt", message="%(prog)s %(version)s")
def cli() -> None:
    """The Modbatt secure dual-CAN communications stack.

    An app on a laptop talks over CAN 1 to a pack controller, which bridges CAN 2 to up to
    31 battery modules; keys come from a Web4 API-Bridge. modbatt plays all three roles,
    and serves an API-Bridge of its own.
    """


@cli.command()
@click.option(
    "--modules",
    type=click.IntRange(1, 31),
    default=4,
    show_default=True,
    help="Secured battery modules (paired with the pack).",
)
@click.option(
    "--legacy-modules",
    type=click.IntRange(0, 30),
    default=0,
    show_default=True,
    help="Legacy modules (the module firmware as shipped, plain) on the same CAN 2.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=10.0,
    show_default=True,
    help="Seconds of operational telemetry.",
)
@click.option("--json", "json_path", type=PATH, metavar="FILE", help="Write the summary here.")
@click.option(
    "--interface",
    type=click.Choice(["virtual", "udp_multicast"]),
    default="virtual",
    show_default=True,
    help="virtual: one process; udp_multicast: each role in its own process.",
)
@click.pass_context
def demo(
    ctx: click.Context,
    modules: int,
    legacy_modules: int,
    duration: float,
    json_path: Path | None,
    interface: str,
) -> int:
    """The whole system on one machine: API-Bridge, pack, modules and app.

    The embedded API-Bridge, a pack controller, N battery modules and the app, in one
    process on two virtual buses (or each role in its own process): discovery, bootstrap,
    pairing, encrypted operation with live telemetry, a lost flash and its recovery, then a
    summary. Legacy modules, if any, share CAN 2 and stay plain; the demo fails if one of
    them acts on a sealed frame.
    """
    from modbatt.tools.demo import run_demo

    if modules + legacy_modules > 31:
        raise click.BadParameter(
            f"{modules} + {legacy_modules} modules: a pack has at most 31",
            param_hint="'--modules' / '--legacy-modules'",
        )
    summary = run_demo(
        modules,
        duration,
        json_path,
        out=print,
        interface=interface,
        progress=progress_of(ctx),
        legacy_modules=legacy_modules,
    )
    safe = all(m["sealed_frames_acted_on"] == 0 for m in summary.modules)
    ok = summary.recovery_ok and summary.security_level == 3 and safe
    return EXIT_OK if ok else EXIT_FAILED


@cli.command()
def dbc() -> int:
    """Print the path of the module bus DBC file (for cantools, SavvyCAN, ...)."""
    from modbatt.protocol.catalogue import dbc_path

    click.echo(dbc_path())
    return EXIT_OK


@cli.group()
def module() -> None:
    """The battery module simulator."""


@module.command("run")
@config_option("module")
@click.option("--can", type=BUS, required=True, metavar="BUS", help="The module bus. " + BUS_HELP)
@click.option(
    "--unique-id",
    type=click.IntRange(0, 2**32 - 1),
    required=True,
    help="The first module's unique id.",
)
@click.option(
    "--cells",
    type=click.IntRange(1, MAX_CELLS),
    default=14,
    show_default=True,
    help="Cells per module (the firmware's limit is 94).",
)
@click.option(
    "--kind",
    type=click.Choice(["secured", "legacy"]),
    default="secured",
    show_default=True,
    help="secured: the firmware's behaviour plus modbatt's pairing and sealed frames once "
    "paired (what a secure pack expects). legacy: the module firmware as shipped today, "
    "plain only (for a pack that must also serve unmodified modules).",
)
@click.option(
    "--count",
    type=click.IntRange(1, 255),
    default=1,
    show_default=True,
    help="Modules in this process, with consecutive unique ids.",
)
@click.option("--fd", is_flag=True, help="Open the bus as CAN FD.")
@click.option(
    "--state-dir",
    type=PATH,
    help="Keep each module's flash store (pairing keys) here; without it, pairings are "
    "forgotten on exit.",
)
@click.option(
    "--report",
    type=PATH,
    metavar="FILE",
    help="On exit, write each module's unique id, kind, module id, pairing, state and "
    "sealed_frames_acted_on (commands taken from frames with E set) here as JSON.",
)
@STOP_AFTER
@log_option
def module_run(
    can: str,
    unique_id: int,
    cells: int,
    kind: str,
    count: int,
    fd: bool,
    state_dir: Path | None,
    report: Path | None,
    duration: float | None,
    log: Path | None,
) -> int:
    """Simulate one or more battery modules on a bus.

    Behaves as the Modbatt module firmware (build 8278) on the module bus: announces on node
    0, takes the id the pack assigns, answers the pack's requests (status, cell details,
    hardware), obeys its commands, and deregisters after 11.1 s without one. A secured
    module (the default) also pairs with the pack and, once paired, seals what it sends and
    takes commands only sealed by the pack; a legacy module stays plain.
    """
    from modbatt.bus.transport import parse_bus_spec
    from modbatt.tools.roles import run_modules

    if unique_id + count - 1 >= 2**32:
        raise click.BadParameter(
            f"unique ids {unique_id}..{unique_id + count - 1} go past 2^32 - 1",
            param_hint="'--unique-id' / '--count'",
        )
    return run_modules(
        parse_bus_spec(can, fd=fd),
        unique_id,
        count,
        cells,
        duration,
        state_dir=state_dir,
        log_path=log,
        legacy=kind == "legacy",
        report_path=report,
    )


@cli.group()
def pack() -> None:
    """The pack controller."""


@pack.command("run")
@config_option("pack")
@click.option(
    "--can1",
    type=BUS,
    metavar="BUS",
    help="The app bus; without it only the module side runs. " + BUS_HELP,
)
@click.option("--can2", type=BUS, required=True, metavar="BUS", help="The module bus. " + BUS_HELP)
@click.option(
    "--state-dir",
    type=PATH,
    help="The pack's flash and audit log (default: the platform's data directory, "
    "e.g. ~/.local/share/modbatt/pack).",
)
@click.option(
    "--serial",
    type=SERIAL,
    default="PACK-0001",
    show_default=True,
    help="The pack controller's serial number.",
)
@click.option("--fd", is_flag=True, help="Open the buses as CAN FD.")
@STOP_AFTER
@log_option
def pack_run(
    can1: str | None,
    can2: str,
    state_dir: Path | None,
    serial: str,
    fd: bool,
    duration: float | None,
    log: Path | None,
) -> int:
    """Run the pack controller: CAN 1 to the app, CAN 2 to the modules.

    Registers announcing modules (ids 1-31), answers the app's control channel, bridges
    sealed traffic between the buses, and prints the module table as it changes.
    """
    from modbatt.bus.transport import parse_bus_spec
    from modbatt.tools.roles import run_pack, run_pack_module_side

    module_bus = parse_bus_spec(can2, fd=fd)
    if can1 is None:
        return run_pack_module_side(module_bus, duration, log_path=log)
    return run_pack(
        parse_bus_spec(can1, fd=fd),
        module_bus,
        state_dir or default_state_dir("pack"),
        serial,
        duration,
        log_path=log,
    )


cli.add_command(app)
cli.add_command(monitor)


@cli.command()
@click.argument(
    "file", type=click.Path(path_type=Path, exists=True, dir_okay=False), callback=check_log
)
@click.option(
    "--keystore",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    multiple=True,
    metavar="DIR",
    help="A state directory of the app, the pack or a module (may be given again).",
)
@click.option("--can1", metavar="CHANNEL", help="The log's channel that is CAN 1 (e.g. vcan0).")
@click.option("--can2", metavar="CHANNEL", help="The log's channel that is CAN 2 (e.g. vcan1).")
def decode(file: Path, keystore: tuple[Path, ...], can1: str | None, can2: str | None) -> int:
    """Read a traffic log back through the protocol (decrypted where keys allow).

    Every frame of a log written with --log (or any BLF, ASC or candump log of modbatt
    buses), named: module messages through the DBC, pack status and alerts, control and
    pairing messages reassembled from ISO-TP. With --keystore, sealed traffic is decrypted
    from the session handshakes in the log. A log of network interfaces (candump -L of
    can0/can1) needs --can1 and --can2: interface names do not say which bus is which.
    """
    from modbatt.errors import ModbattError
    from modbatt.tools.decode import bus_map, decode_log

    try:
        for decoded in decode_log(file, list(keystore), bus_map(can1, can2)):
            for line in decoded.lines():
                click.echo(line)
    except (ModbattError, OSError, ValueError) as exc:  # a log that cannot be read through
        click.echo(f"decode: {file}: {exc}", err=True)
        return EXIT_FAILED
    return EXIT_OK


@cli.group("api-bridge")
def api_bridge() -> None:
    """The embedded Web4 API-Bridge: serve it, verify its ledger, or ask one if it is up.

    modbatt's own API-Bridge keeps the public REST contract, persisted in SQLite with a
    hash-chained ledger.
    """


def _db_option(function: Any) -> Any:
    return click.option(
        "--db",
        type=PATH,
        default=default_db_path,
        show_default="the platform's data directory",
        help="The SQLite file.",
    )(function)


def _head_option(function: Any) -> Any:
    return click.option(
        "--head",
        type=PATH,
        show_default="the database's path + .head",
        help="The file that keeps the ledger's head, outside the database.",
    )(function)


@api_bridge.command()
@_db_option
@_head_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8082, show_default=True)
@click.option(
    "--tokens",
    "tokens_file",
    type=PATH,
    help="Per-creator tokens (made with 'api-bridge add-token'): each client acts only as its "
    "token's creator. Required to serve on an address other than loopback.",
)
@click.option(
    "--token",
    envvar=ENV_TOKEN,
    help="Development: one token for every creator, 'Authorization: Bearer TOKEN' on /api/v1 "
    f"(default: ${ENV_TOKEN}).",
)
def serve(
    db: Path,
    head: Path | None,
    host: str,
    port: int,
    tokens_file: Path | None,
    token: str | None,
) -> int:
    """Run the API-Bridge server.

    Access: per-creator tokens (--tokens), one shared token (--token, development) or open
    (neither; loopback only, development). The startup line says which.
    """
    from modbatt.api_bridge.access import Access, load_tokens
    from modbatt.api_bridge.server import serve as serve_api_bridge

    if tokens_file is not None and token is not None:
        raise click.UsageError(
            f"--tokens and --token (or ${ENV_TOKEN}) are two access modes: give one"
        )
    if tokens_file is not None:
        access = Access(creator_digests=load_tokens(tokens_file))
    else:
        access = Access(shared_token=token)
    serve_api_bridge(db, host, port, access, head=head)
    return EXIT_OK


@api_bridge.command("add-token")
@click.option("--tokens", "tokens_file", type=PATH, required=True, help="The tokens file.")
@click.argument("creator")
def add_token(tokens_file: Path, creator: str) -> int:
    """Make a new bearer token for CREATOR and print it once.

    The tokens file keeps only its SHA-256; a creator that had a token gets a new one (the old
    one stops working when the server restarts).
    """
    from modbatt.api_bridge.access import add_token as make_token

    token, replaced = make_token(tokens_file, creator)
    click.echo(
        f"{'replaced' if replaced else 'added'} {creator}'s token in {tokens_file}", err=True
    )
    click.echo(token)
    return EXIT_OK


@api_bridge.command()
@_db_option
@_head_option
@click.option(
    "--expect",
    "expected",
    multiple=True,
    metavar="TXHASH",
    help="A txhash the ledger must contain: one a write returned, or a head recorded "
    "elsewhere. Repeatable.",
)
@click.option(
    "--anchor-head",
    is_flag=True,
    help="When everything else verifies, take the ledger's end as it is now for its head "
    "(a database from before head files, or a head file lost).",
)
def verify(db: Path, head: Path | None, expected: tuple[str, ...], anchor_head: bool) -> int:
    """Check the ledger's hash chain, the state against it, and that nothing was cut off.

    Reads the database without writing to it.
    """
    from modbatt.api_bridge.store import Store

    if not db.exists():
        click.echo(f"no database at {db}", err=True)
        return EXIT_USAGE
    store = Store(db, head=head, read_only=True)
    try:
        problem = store.verify(expected, check_head=not anchor_head)
        if anchor_head and problem is None:
            replaced = store.verify(expected)
            if replaced is not None:
                click.echo(f"{db}: the head no longer holds: {replaced}", err=True)
            click.echo(f"{db}: head anchored at {store.anchor_head()} in {store.head_file}")
        end = store.head()
    finally:
        store.close()
    if problem is not None:
        click.echo(f"{db}: ledger check FAILED: {problem}", err=True)
        return EXIT_FAILED
    click.echo(f"{db}: ledger intact, {end.seq} records, head {end.txhash}")
    return EXIT_OK


@api_bridge.command()
@click.option("--url", type=URL, help=f"Base URL (default: ${ENV_URL} or {DEFAULT_URL}).")
@click.option("--token", help=f"Bearer token (default: ${ENV_TOKEN}).")
@click.pass_context
def health(ctx: click.Context, url: str | None, token: str | None) -> int:
    """Ask an API-Bridge whether it is up."""
    from modbatt.api_bridge.client import ApiBridgeClient, ApiBridgeConfig
    from modbatt.errors import ApiBridgeError

    config = ApiBridgeConfig.from_env(base_url=url, token=token)
    with (
        ApiBridgeClient(config) as client,
        progress_of(ctx).waiting(f"waiting for the API-Bridge at {config.base_url}"),
    ):
        try:
            answer = client.health()
        except ApiBridgeError as exc:
            click.echo(f"API-Bridge at {config.base_url}: {exc}", err=True)
            return EXIT_API_BRIDGE
    click.echo(
        f"API-Bridge at {config.base_url}: {answer.status} ({answer.service} {answer.version})"
    )
    return EXIT_OK


BENCHMARKS = {"frame-path": "frame_path", "gateway": "gateway"}


@cli.command()
@click.argument("benchmark", type=click.Choice(list(BENCHMARKS)), required=False)
@FIGURES_JSON
@click.option(
    "--quick",
    is_flag=True,
    help="Small sizes: checks that the benchmark runs; the figures mean little.",
)
@click.option(
    "--interface",
    type=click.Choice(["virtual", "socketcan", "socketpair"]),
    default="virtual",
    show_default=True,
    help="gateway: python-can virtual buses in one process; SocketCAN vcan0 -> vcan1 "
    "with the kernel's cangw as the floor (in the guest: make vm-run CMD='...'); or "
    "socketpairs carrying CAN frames, the Rust data plane against python-can's calls.",
)
def bench(benchmark: str | None, json_path: Path | None, quick: bool, interface: str) -> int:
    """Measure the frame path (figures, not a test); with no BENCHMARK named, run them all.

    frame-path: seal, open, batch seal and gateway step, against baselines measured in the
    same run (AES-GCM, a pure-Python reference).

    gateway: the whole bridge (python-can in, Rust gateway, python-can out) against
    python-can's own can.bridge, on the same buses; with --interface socketcan, on vcan0 ->
    vcan1 against the kernel's cangw too.
    """
    names = (BENCHMARKS[benchmark],) if benchmark else tuple(BENCHMARKS.values())
    return _bench(names, json_path, quick, interface)


def _bench(names: Sequence[str], json_path: Path | None, quick: bool, interface: str) -> int:
    from modbatt.errors import ModbattError
    from modbatt.tools import bench as frame_path_bench
    from modbatt.tools import bench_gateway as gateway_bench
    from modbatt.tools import bench_socketcan, bench_socketpair

    figures: dict[str, Any] = {}
    if "frame_path" in names:
        figures["frame_path"] = frame_path_bench.frame_path(quick=quick)
        frame_path_bench.print_table(figures["frame_path"], out=click.echo)
    if "gateway" in names and interface == "socketcan":
        try:
            figures["gateway"] = bench_socketcan.gateway_socketcan(quick=quick)
        except ModbattError as exc:
            click.echo(f"bench gateway: {exc}", err=True)
            return EXIT_FAILED
        bench_socketcan.print_table(figures["gateway"], out=click.echo)
    elif "gateway" in names and interface == "socketpair":
        figures["gateway"] = bench_socketpair.gateway_socketpair(quick=quick)
        bench_socketpair.print_table(figures["gateway"], out=click.echo)
    elif "gateway" in names:
        figures["gateway"] = gateway_bench.gateway(quick=quick)
        gateway_bench.print_table(figures["gateway"], out=click.echo)
    if json_path is not None:
        # one benchmark: its figures at the top level; both: one object per benchmark
        written = next(iter(figures.values())) if len(figures) == 1 else figures
        frame_path_bench.write_json(written, json_path)
        click.echo(f"figures written to {json_path}")
    return EXIT_OK


@cli.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=60.0,
    show_default=True,
    help="How long.",
)
@click.option(
    "--rate",
    type=click.IntRange(min=1),
    default=6250,
    show_default=True,
    help="Frames/s of sealed traffic per bus.",
)
@click.option(
    "--garbage-rate",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Frames/s of random frames per bus.",
)
@click.option(
    "--modules", type=click.IntRange(1, 31), default=2, show_default=True, help="Module links."
)
@FIGURES_JSON
def soak(seconds: float, rate: int, garbage_rate: int, modules: int, json_path: Path | None) -> int:
    """Both buses at full rate through a running pack: loss, order, memory, CPU.

    Bridges sealed traffic on both buses through a pack controller at the full rate of a
    classic 1 Mbit/s bus (optionally with a garbage flood) and checks that no message is
    lost or reordered and memory stays flat. Exit status 1 when not.
    """
    from modbatt.tools.bench import write_json
    from modbatt.tools.soak import run_soak

    report = run_soak(seconds, rate, garbage_rate, modules)
    for line in report.lines():
        click.echo(line)
    if json_path is not None:
        write_json(report.as_dict(), json_path)
    problems = report.problems()
    for problem in problems:
        click.echo(f"FAILED: {problem}")
    return EXIT_FAILED if problems else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status (EXIT_CODES)."""
    try:
        status = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="modbatt",
            standalone_mode=False,
        )
    except click.ClickException as exc:  # a usage mistake: click says which, exit status 2
        exc.show()
        return exc.exit_code
    except click.Abort:
        return EXIT_INTERRUPTED
    return int(status or EXIT_OK)
