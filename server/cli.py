"""`runstream server`: one process that owns the embedded ClickHouse folder, loads the spool (and Kafka)
as it grows, and serves the HTTP API, /metrics and the web UI (server/app.py).

Start-up: connect (creating the database) and migrate; refuse a folder another live server holds; bind
the socket (port 0: any free port); write the discovery file (server/discovery.py) so that read commands
pointed at the same folder go through this server; start the loaders in threads (the spool follower,
server/spool_follower.py; the Kafka consumer service, server/kafka_loader.py); serve with uvicorn in the
main thread; print the ready line `runstream server: URL (data DSN, spool DIR)` on stdout.

Shut-down, on SIGTERM or SIGINT: uvicorn stops serving, the loaders are told to stop and joined (each
finishes and stores the batch in hand), the discovery file is removed, the client closed; exit 0.

The API has no authentication: it binds to loopback unless told otherwise, and logs a WARNING saying
so when it is not.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runstream.consumer.clickhouse_settings import add_clickhouse_option, clickhouse_settings
from runstream.extras import EXTRA_OF_MODULE, MissingExtraError

log = logging.getLogger("runstream.server")

#: How long the loaders get to finish the batch in hand at shut-down.
STOP_TIMEOUT_S = 60.0
#: The modules of the server extra (runstream.extras names each extra's modules once).
_SERVER_MODULES = {module for module, extra in EXTRA_OF_MODULE.items() if extra == "server"}


def add_parsers(commands: Any) -> None:
    """`runstream server`, registered from runstream/cli.py."""
    server = commands.add_parser(
        "server", help="serve the web UI and HTTP API over the experiment database, loading runs as they log",
        description="One process that owns the embedded ClickHouse folder (or talks to a ClickHouse server), "
        "loads the spool folder continuously (new files, growing files and the open files of live runs, each "
        "record stored once) and/or consumes Kafka, and serves the web UI (/), the HTTP API (/api/..., JSON or "
        "Arrow; /openapi.json describes it), read-only SQL (POST /api/sql) and the monitor's Prometheus gauges "
        "(/metrics). "
        "While it runs, read commands (runs, compare, query, ...) pointed at the same folder go through it. "
        "The API has no authentication: it listens on 127.0.0.1 unless --host says otherwise. "
        "Stops cleanly on SIGTERM/SIGINT.")
    add_clickhouse_option(server)
    server.add_argument("--spool", type=Path, default=None, metavar="DIR",
                        help="spool folder to load continuously [env RUNSTREAM_SERVER_SPOOL; [server] spool] "
                        "(default: the SDK's spool folder, RUNSTREAM_SPOOL or ~/.runstream/spool, unless --kafka "
                        "is given)")
    server.add_argument("--no-spool", action="store_true", help="load no spool folder (serve what is stored)")
    server.add_argument("--kafka", default=None, metavar="BOOTSTRAP",
                        help="also consume runstream's topics from these Kafka bootstrap servers, as `runstream "
                        "consume` does (group runstream-consumer unless --group)")
    # runstream.cli builds the parser, so it is loaded by now: one set of Kafka options for every command.
    from runstream.cli import _add_kafka_client, _add_topic_prefix

    _add_kafka_client(server, config=False)  # --config came with --clickhouse
    _add_topic_prefix(server)
    server.add_argument("--group", default=None, help="with --kafka: consumer group id (default runstream-consumer) "
                        "[env RUNSTREAM_GROUP]")
    server.add_argument("--host", default=None, help="interface to listen on (default 127.0.0.1: this machine only; "
                        "anything else exposes an API without authentication) [env RUNSTREAM_SERVER_HOST]")
    server.add_argument("--port", type=int, default=None, help="TCP port (default 8765; 0: any free port, printed "
                        "on the ready line) [env RUNSTREAM_SERVER_PORT]")
    server.add_argument("--open", action="store_true", help="open the web UI in a browser once serving")
    server.add_argument("--metrics-interval", type=float, default=None, metavar="SECONDS",
                        help="seconds between refreshes of the /metrics gauges (default: [monitor] interval_s, 30) "
                        "[env RUNSTREAM_SERVER_METRICS_INTERVAL]")


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before serving so that port 0 resolves to a port the ready line can name."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as error:
        raise ConnectionError(f"--host {host!r} --port {port}: cannot listen there: {error}") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    """The URL this machine reaches the server at (a wildcard address is reached on loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _ready_server(config: Any, on_ready: Callable[[], None]) -> Any:
    """A uvicorn Server that calls `on_ready` once it listens (its own `started` flag is set then too)."""
    import uvicorn

    class ReadyServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                on_ready()

    return ReadyServer(config)


def cmd_server(args: argparse.Namespace) -> int:
    try:  # the web stack comes with the server extra (fastapi, uvicorn, plotly); a bare SDK gets one line
        import uvicorn

        from runstream.server.app import create_app
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] not in _SERVER_MODULES:
            raise
        raise MissingExtraError("runstream server", "server", error.name.split(".")[0]) from error
    from runstream.consumer.clickhouse_sink import ClickHouseSink
    from runstream.consumer.dsn import parse_dsn, redact
    from runstream.consumer.migrations import migrate
    from runstream.server.discovery import announce, running_server
    from runstream.server.read_only import read_only_client
    from runstream.server.settings import ServerSettings
    from runstream.server.state import ServerState

    settings = ServerSettings.load({"host": args.host, "port": args.port, "spool": args.spool,
                                    "metrics_interval_s": args.metrics_interval}, config_file=args.config)
    clickhouse = clickhouse_settings(args)
    target = parse_dsn(clickhouse.dsn)
    folder = (Path(target.client_dsn[len("chdb://"):]) if target.embedded and target.client_dsn != "chdb://memory"
              else None)
    if folder is not None:
        other = running_server(folder)
        if other is not None:
            raise RuntimeError(f"--clickhouse {clickhouse.dsn}: another runstream server (pid {other.pid}, "
                               f"{other.url}) holds this folder; browse that one, or stop it first")
    spool = None if args.no_spool else settings.spool
    if spool is None and not args.no_spool and not args.kafka:  # the SDK's folder: runs will create it anyway
        from runstream.producer.settings import ProducerSettings

        spool = ProducerSettings.load({}, config_file=args.config).spool
        spool.mkdir(parents=True, exist_ok=True)
    if spool is not None and not spool.is_dir():
        raise FileNotFoundError(f"--spool {str(spool)!r}: no such folder (runs create it when they log; "
                                "give --no-spool to serve what is stored)")

    client, database = clickhouse.connect(create_database=True)  # the loaders' client: they write
    migrate(client, database)
    reader = read_only_client(clickhouse.authenticated_dsn())  # the API's: every statement under readonly=2
    sink = ClickHouseSink(clickhouse.authenticated_dsn(), client=client, database=database)
    stop = threading.Event()
    loaders: dict[str, Callable[[], Any]] = {}
    threads: list[threading.Thread] = []
    if spool is not None:
        from runstream.server.spool_follower import SpoolFollower

        follower = SpoolFollower(spool, sink, poll_s=settings.poll_s)
        loaders["spool"] = follower.counts
        threads.append(threading.Thread(target=follower.run, args=(stop,), name="runstream-spool", daemon=True))
    if args.kafka:
        from runstream.server.kafka_loader import start_kafka_loader

        loader = start_kafka_loader(args, sink, stop)
        loaders["kafka"] = loader.counts
        threads.append(loader.thread)

    sock = _bind(settings.host, settings.port)
    url = _url(settings.host, sock.getsockname()[1])
    if not settings.loopback:
        log.warning("runstream server: listening on %s (port %d): the API and UI have NO authentication and anyone "
                    "who can reach that interface can read every run and run read-only SQL; use the default "
                    "--host 127.0.0.1 unless the network is trusted", settings.host, sock.getsockname()[1])
    state = ServerState(reader, database, loaders=loaders, exporter_interval_s=settings.metrics_interval_s)
    level = "info" if log.getEffectiveLevel() <= logging.INFO else "warning"
    config = uvicorn.Config(create_app(state), log_level=level, access_log=level == "info", lifespan="on")

    def ready() -> None:
        where = f"data {redact(clickhouse.dsn)}, spool {spool if spool is not None else 'none'}"
        print(f"runstream server: {url} ({where}{f', kafka {args.kafka}' if args.kafka else ''})", flush=True)
        if args.open:
            webbrowser.open(url)

    server = _ready_server(config, ready)

    def on_signal(*_: object) -> None:  # uvicorn's own handlers run while it serves; this one after
        stop.set()
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    with contextlib.ExitStack() as cleanup:
        if folder is not None:
            cleanup.enter_context(announce(folder, url, database))
        for thread in threads:
            thread.start()
        try:
            server.run(sockets=[sock])
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=STOP_TIMEOUT_S)
                if thread.is_alive():
                    log.error("runstream server: %s did not stop within %.0f s", thread.name, STOP_TIMEOUT_S)
            sock.close()
    reader.close()
    client.close()
    if not server.started:
        print(f"runstream server: could not serve on {url}", file=sys.stderr)
        return 1
    return 0


#: Handlers by command name (runstream/cli.py merges them).
COMMANDS = {"server": cmd_server}
