"""The `runstream` command: demo, run, consume, ingest, sync, migrate, query.

Every option that names a service also reads an environment variable (shown in --help), so the
same command works in a shell, a container or a Kubernetes pod.

Only light modules are imported here, to build the parser: each command imports what it needs when it
runs, so `runstream run`, `runstream sync` and every --help work on the bare SDK, and a command whose
extra is missing says which one to install (runstream.extras).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from runstream import __version__, progress
from runstream.analysis import cli as analysis_cli
from runstream.consumer import retention as retention_cli
from runstream.consumer.clickhouse_settings import (
    ClickHouseSettings,
    add_clickhouse_option,
    add_config_option,
    clickhouse_settings,
    connect_clickhouse,
)
from runstream.dashboards import cli as dashboards_cli
from runstream.extras import command_error
from runstream.monitoring import cli as monitoring_cli
from runstream.output import FORMATS, render
from runstream.schemas import DEFAULT_TOPIC_PREFIX
from runstream.server import cli as server_cli

log = logging.getLogger("runstream")


_add_clickhouse = add_clickhouse_option  # one --clickhouse (and its credentials) for every command


def _add_topic_prefix(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topic-prefix",
        default=None,
        help=f"prefix of the topic names, one topic per event type (default {DEFAULT_TOPIC_PREFIX}) "
        "[env RUNSTREAM_TOPIC_PREFIX, config file topic_prefix]",
    )


def _producer_topic_prefix(args: argparse.Namespace) -> str:
    """--topic-prefix, else the producer settings' (environment, then the config file's [producer] table)."""
    from runstream.producer.settings import ProducerSettings

    return ProducerSettings.load({"topic_prefix": args.topic_prefix},
                                 config_file=getattr(args, "config", None)).topic_prefix


_KAFKA_OPTION_HELP = (
    "a librdkafka option, e.g. security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512, ssl.ca.location=FILE "
    "(repeatable). Each option can also come from a RUNSTREAM_KAFKA_* variable (RUNSTREAM_KAFKA_SASL_USERNAME, "
    "RUNSTREAM_KAFKA_SASL_PASSWORD, ...: the option's name in capitals, dots as underscores) or the [kafka] table "
    "of the config file; here wins over the environment, which wins over the file. Keep passwords in the "
    "environment or the file, not on a command line. Options that would break delivery guarantees "
    "(acks, enable.idempotence, enable.auto.commit, enable.auto.offset.store, group.id, bootstrap.servers) "
    "are refused"
)


def _add_kafka_client(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    """The Kafka client options every Kafka-using command shares (see runstream.producer.kafka_settings)."""
    parser.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE", help=_KAFKA_OPTION_HELP)
    if config:
        add_config_option(parser)


def _add_topic_durability(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replication-factor", type=int, metavar="N",
                        help="replication factor of the topics created when missing (default: the brokers' "
                        "default.replication.factor; production: 3) [env RUNSTREAM_REPLICATION_FACTOR]")
    parser.add_argument("--min-insync-replicas", type=int, metavar="N",
                        help="min.insync.replicas of the topics created (default 2 when the replication factor is "
                        "3 or more, else the brokers' default) [env RUNSTREAM_MIN_INSYNC_REPLICAS]")


_RUN_DESCRIPTION = """\
Start a run, run COMMAND as a child process and end the run the way COMMAND ended:
  ok       COMMAND exited 0
  failed   COMMAND exited non-zero (recorded as the run's exit_code)
  killed   COMMAND died of a signal, or this wrapper got SIGTERM/SIGINT (it forwards both to COMMAND)
The run records COMMAND as its command line; GPUs and the host are sampled as for any run.
COMMAND's stdout and stderr pass through unchanged; with --metric-pattern, matching stdout lines
become metric points. Exits with COMMAND's exit code (128+N when COMMAND died of signal N).
"""

_RUN_EXAMPLE = r"""example:
  runstream run --project vision --param lr=3e-4 --param epochs=10 --tag baseline \
      --metric-pattern 'step=(?P<step>\d+) loss=(?P<loss>[0-9.eE+-]+) acc=(?P<acc>[0-9.]+)' \
      -- python train.py --lr 3e-4
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runstream",
        description="Streaming experiment tracking: training jobs -> Kafka (Avro) -> ClickHouse -> SQL.",
    )
    parser.add_argument("--version", action="version", version=f"runstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="simulate a small fleet of runs, stream them through the pipeline and compare them",
        description="Simulate several runs of one project with different learning rates and batch sizes, "
        "log them through the SDK (to a spool folder, or to Kafka with --kafka), load them into "
        "ClickHouse and print a comparison table computed in SQL.",
    )
    demo.add_argument("--runs", type=int, default=6, help="number of runs (default %(default)s)")
    demo.add_argument("--steps", type=int, default=500, help="training steps per run (default %(default)s)")
    demo.add_argument("--project", default="demo", help="project name (default %(default)s)")
    demo.add_argument("--kafka", default=None, metavar="HOST:PORT",
                      help="stream through this Kafka broker instead of the spool")
    demo.add_argument("--spool", type=Path, default=None,
                      help="spool folder for the offline path (default: a new temporary folder)")
    _add_clickhouse(demo)
    _add_topic_prefix(demo)
    progress.add_option(demo)

    run = commands.add_parser(
        "run",
        help="track any command (an unmodified training script) as a run",
        usage="%(prog)s [OPTIONS] -- COMMAND [ARGS...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_RUN_DESCRIPTION,
        epilog=_RUN_EXAMPLE,
    )
    run.add_argument("--project", default="default", help="project name (default: %(default)s)")
    run.add_argument("--name", default=None, help="run name (default: a generated one)")
    run.add_argument("--resume", default=None, metavar="RUN_ID|auto",
                     help="continue an earlier run (its next attempt), or 'auto': the run of this scheduler job "
                     "(SLURM job, torchelastic run, Kubernetes Job), a new one outside a scheduler")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a hyperparameter to record, repeatable; the value is typed from its text: 10 is an "
                     "int, 0.01 and 3e-4 floats, true/false bools, anything else a string")
    run.add_argument("--tag", action="append", default=[], metavar="TAG",
                     help="a tag, repeatable: NAME, or NAME=VALUE")
    run.add_argument("--metric-pattern", default=None, metavar="REGEX",
                     help="Python regular expression searched in each stdout line; its named groups are "
                     "metric values, the group 'step' (optional) the integer step. A matching line with a "
                     "non-numeric value is reported once on stderr and skipped")
    run.add_argument("--kafka", default=None, metavar="HOST:PORT",
                     help="send events to these bootstrap servers [env RUNSTREAM_KAFKA]; without it the run "
                     "is offline and spooled")
    _add_kafka_client(run)
    _add_topic_prefix(run)
    run.add_argument("--spool", type=Path, default=None, metavar="DIR",
                     help="spool folder for offline runs and Kafka outages [env RUNSTREAM_SPOOL] "
                     "(default ~/.runstream/spool)")
    run.add_argument("--sample-interval", type=float, default=None, metavar="SECONDS",
                     help="seconds between GPU and host samples, 0 for none [env RUNSTREAM_SAMPLE_INTERVAL] "
                     "(default 5)")
    run.add_argument("wrapped", nargs=argparse.REMAINDER, metavar="COMMAND",
                     help="the command to run and its arguments, after '--'")

    consume = commands.add_parser(
        "consume",
        help="run a consumer-group member: Kafka -> ClickHouse, committing after each write",
        description="Consume runstream events from Kafka and write them to ClickHouse in columnar batches. "
        "Offsets are committed only after the batch is written; undecodable or invalid messages go to "
        "the dead-letter topic. Stops cleanly on SIGTERM/SIGINT after writing the batch in hand.",
    )
    consume.add_argument("--kafka", metavar="HOST:PORT", help="bootstrap servers [env RUNSTREAM_KAFKA] (required)")
    _add_clickhouse(consume)
    consume.add_argument("--topic-prefix", help=f"prefix of the topic names (default {DEFAULT_TOPIC_PREFIX}) "
                         "[env RUNSTREAM_TOPIC_PREFIX]")
    consume.add_argument("--group", help="consumer group id (default runstream-consumer) [env RUNSTREAM_GROUP]")
    consume.add_argument("--batch-max-points", type=int,
                         help="write a batch once it holds this many metric points (default 500000)")
    consume.add_argument("--batch-max-messages", type=int,
                         help="write a batch once it holds this many messages (default 20000)")
    consume.add_argument("--batch-max-wait", type=float, metavar="SECONDS",
                         help="write a batch at the latest this long after its first message (default 1.0)")
    consume.add_argument("--partitions", type=int,
                         help="partitions of topics this consumer creates when missing (default 6)")
    _add_topic_durability(consume)
    _add_kafka_client(consume, config=False)
    consume.add_argument("--listen", metavar="HOST:PORT",
                         help="serve /metrics, /healthz and /readyz here, e.g. :9108 [env RUNSTREAM_LISTEN]")
    consume.add_argument("--idle-exit", type=float, metavar="SECONDS",
                         help="exit after this long without messages (default: run until signalled)")
    consume.add_argument("--instance-id", metavar="NAME",
                         help="group.instance.id for static group membership, unique in the group: a restarted "
                              "consumer takes its partitions back at once (default: the host name, stable for a "
                              "StatefulSet pod; '' turns it off) [env RUNSTREAM_INSTANCE_ID]")

    ingest = commands.add_parser(
        "ingest",
        help="load spooled runs (Avro container files) into ClickHouse",
        description="Load every sealed spool file (*.avro) under SPOOL_DIR into ClickHouse, after sealing the "
        "files that killed processes left open (*.avro.open whose writer is gone; a torn last block is cut and "
        "counted; files of running processes are left alone). What was loaded is recorded in the database "
        "(spool_progress, shared with `runstream server --spool`): files already loaded are skipped, a file the "
        "server loaded part of is read from there, so loading the same files again stores nothing twice.",
    )
    ingest.add_argument("spool_dir", type=Path, metavar="SPOOL_DIR")
    _add_clickhouse(ingest)
    progress.add_option(ingest)

    sync = commands.add_parser(
        "sync",
        help="upload spooled runs (offline runs, or events spooled during a Kafka outage) to Kafka",
        description="Send every sealed spool file (*.avro) under SPOOL_DIR to Kafka, in order, and remove each "
        "file once the broker acknowledged all its events. Files that killed processes left open are sealed "
        "first; files of running processes are left alone. An interrupted sync can simply be run again: "
        "the consumer stores each event once.",
    )
    sync.add_argument("spool_dir", type=Path, metavar="SPOOL_DIR")
    sync.add_argument("--kafka", default=None, metavar="HOST:PORT",
                      help="bootstrap servers [env RUNSTREAM_KAFKA] (required)")
    _add_kafka_client(sync)
    _add_topic_prefix(sync)
    sync.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                      help="how long to wait for the broker to acknowledge each file (default %(default)s)")
    progress.add_option(sync)

    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade runstream's tables",
        description="Apply the schema migrations the database lacks (idempotent). With --cluster, create the "
        "tables on every node of a ClickHouse cluster instead (ON CLUSTER DDL: Replicated tables named "
        "<table>_local plus Distributed tables under the plain names), printing each statement as it runs. "
        "--print only prints the DDL, connecting to nothing.",
    )
    _add_clickhouse(migrate)
    migrate.add_argument("--cluster", default=None, metavar="NAME",
                         help="ClickHouse cluster (remote_servers) to lay the tables out on [env RUNSTREAM_CLUSTER; "
                         "[clickhouse] cluster of the config file]")
    migrate.add_argument("--sharding-key", default=None, metavar="EXPR",
                         help="with --cluster: the Distributed tables' sharding key (default cityHash64(run_id), "
                         "which keeps each run, and so each fact's duplicates, on one shard)")
    migrate.add_argument("--sample-ttl-days", type=int, default=None, metavar="DAYS",
                         help="keep raw GPU and host samples this many days (their hourly rollup stays); "
                         "0 keeps them forever; default: leave the current setting")
    migrate.add_argument("--print", dest="print_only", action="store_true",
                         help="print the DDL instead of applying it")
    migrate.add_argument("--kafka", default=None, metavar="HOST:PORT",
                         help="also create the Kafka topics missing at these bootstrap servers, with the "
                         "replication options below (not read from the environment: migrate touches Kafka only "
                         "when asked)")
    migrate.add_argument("--partitions", type=int, default=6, help="with --kafka: partitions per topic (default 6)")
    _add_topic_durability(migrate)
    _add_kafka_client(migrate)
    _add_topic_prefix(migrate)

    query = commands.add_parser(
        "query",
        help="run SQL against runstream's ClickHouse database",
        description="Run one SQL statement; tables of the runstream database may be named bare "
        "(runs, run_params, metric_points, gpu_samples, run_finishes).",
    )
    query.add_argument("sql", metavar="SQL")
    query.add_argument("--format", choices=FORMATS, default="table", help="output format (default %(default)s)")
    _add_clickhouse(query)
    commands.add_parser(
        "config", help="list every setting: config-file key, environment variable, default, meaning",
        description="Every setting of the SDK (producer), the consumer, ClickHouse and the monitor, as a Markdown "
        "table generated from the settings models. Each is taken from, in decreasing precedence: the command's "
        "option or the argument in Python, the environment variable, the [table] of the config file "
        "(--config or RUNSTREAM_CONFIG); librdkafka options come from --kafka-option, RUNSTREAM_KAFKA_* and [kafka].")
    analysis_cli.add_parsers(commands)
    monitoring_cli.add_parsers(commands)
    dashboards_cli.add_parsers(commands)
    retention_cli.add_parsers(commands)
    server_cli.add_parsers(commands)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from runstream.demo import run_demo

    return run_demo(
        runs=args.runs, steps=args.steps, kafka=args.kafka, clickhouse=clickhouse_settings(args).authenticated_dsn(),
        project=args.project, spool=args.spool, topic_prefix=_producer_topic_prefix(args), progress=args.progress,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from runstream.producer.command_wrapper import parse_params, parse_tags, run_command
    from runstream.producer.settings import ProducerSettings

    command = list(args.wrapped)  # not args.command: that names the subcommand
    if command and command[0] == "--":  # argparse keeps the separator in a REMAINDER argument
        command = command[1:]
    settings = ProducerSettings.resolve(kafka=args.kafka, kafka_options=_kafka_options(args.kafka_option),
                                        config_file=args.config, spool=args.spool, topic_prefix=args.topic_prefix,
                                        sample_interval_s=args.sample_interval)
    return run_command(
        command, project=args.project, name=args.name, params=parse_params(args.param),
        tags=parse_tags(args.tag), metric_pattern=args.metric_pattern, settings=settings, resume=args.resume,
    )


def _kafka_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--kafka-option {pair.split('=')[0]!r}: expected KEY=VALUE")
        options[key.strip()] = value
    return options


def _cmd_consume(args: argparse.Namespace) -> int:
    from runstream.consumer import ConsumerService
    from runstream.consumer.config import load_consumer_config
    from runstream.consumer.health_server import HealthServer

    given = {
        "kafka": args.kafka, "clickhouse": args.clickhouse, "topic_prefix": args.topic_prefix, "group": args.group,
        "batch_max_points": args.batch_max_points, "batch_max_messages": args.batch_max_messages,
        "batch_max_wait": args.batch_max_wait, "partitions": args.partitions, "listen": args.listen,
        "idle_exit": args.idle_exit, "instance_id": args.instance_id,
        "replication_factor": args.replication_factor, "min_insync_replicas": args.min_insync_replicas,
    }
    config = load_consumer_config(given, os.environ, args.config, _kafka_options(args.kafka_option))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("consumer configuration: %s", config.describe())
    service = ConsumerService(config.settings)
    server = None
    if config.listen:
        server = HealthServer(config.listen, service.metrics.registry, alive=service.alive, ready=service.ready)
        server.start()
        print(f"serving /metrics, /healthz, /readyz on port {server.port}", flush=True)
    try:
        stats = service.run(stop, idle_exit_s=config.idle_exit)
    finally:
        if server is not None:
            server.stop()
    print(
        f"consumed {stats.messages} messages: {stats.events} events, {stats.points} metric points"
        f"{_other_ranks(stats.rank_points)}, {stats.dead_letters} dead letters, {stats.batches} batches", flush=True
    )
    return 0


def _other_ranks(points: int) -> str:
    """The other ranks' points of a load (log_all_ranks), when there were any: they are not the runs' curves."""
    return f" (and {points} of other ranks)" if points else ""


def _cmd_ingest(args: argparse.Namespace) -> int:
    from runstream.consumer import ClickHouseSink, ingest_spool

    sink = ClickHouseSink(clickhouse_settings(args).authenticated_dsn())
    report = ingest_spool(args.spool_dir, sink, progress=args.progress)
    sink.close()
    print(f"ingested {report.files} files: {report.events} events, {report.points} metric points"
          f"{_other_ranks(report.rank_points)}; skipped {report.skipped} files already loaded")
    print(f"recovered {report.recovered} files left open by dead processes ({report.cut_bytes} torn bytes cut, "
          f"{report.cut_records} records in them); left {report.live} files of running processes alone")
    for path in report.unreadable:
        print(f"not a spool file, left as it is: {path}", file=sys.stderr)
    for line in report.rejected:
        print(f"rejected: {line}", file=sys.stderr)
    return 1 if report.rejected or report.unreadable else 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from runstream.producer.kafka_settings import KafkaSettings
    from runstream.producer.sync import sync_spool

    kafka = KafkaSettings.resolve(args.kafka, _kafka_options(args.kafka_option), config_file=args.config)
    if kafka is None:
        raise SystemExit("runstream sync: --kafka (or RUNSTREAM_KAFKA) is required")
    report = sync_spool(args.spool_dir, kafka, _producer_topic_prefix(args), timeout=args.timeout,
                        progress=args.progress)
    print(f"synced {report.files} files ({report.events} events) to {kafka.bootstrap_servers}")
    print(f"recovered {report.recovered} files left open by dead processes ({report.cut_bytes} torn bytes cut); "
          f"left {report.live} files of running processes alone")
    for path in report.busy:
        print(f"being uploaded by another process, skipped: {path}", file=sys.stderr)
    for path in report.left:
        print(f"not acknowledged, kept: {path}", file=sys.stderr)
    return 1 if report.left else 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from runstream.consumer.cluster import DEFAULT_SHARDING_KEY, cluster_ddl
    from runstream.consumer.migrations import ddl, migrate

    settings = clickhouse_settings(args)  # --cluster > RUNSTREAM_CLUSTER > [clickhouse] cluster, like the DSN
    cluster = settings.cluster
    if args.sharding_key and not cluster:
        raise ValueError("--sharding-key: only meaningful with --cluster")
    if args.kafka and not args.print_only:
        from runstream.consumer.config import ConsumerOptions
        from runstream.consumer.topics_admin import ensure_topics
        from runstream.producer.kafka_settings import KafkaSettings

        kafka = KafkaSettings.resolve(args.kafka, _kafka_options(args.kafka_option), config_file=args.config)
        assert kafka is not None  # --kafka was given
        # the same settings as the consumer's: option > RUNSTREAM_* > [consumer] table
        durability = ConsumerOptions.load({"replication_factor": args.replication_factor,
                                           "min_insync_replicas": args.min_insync_replicas,
                                           "topic_prefix": args.topic_prefix}, config_file=args.config)
        created = ensure_topics(
            kafka, durability.topic_prefix, partitions=args.partitions,
            replication_factor=durability.replication_factor, min_insync_replicas=durability.min_insync_replicas,
        )
        print(f"created topics: {', '.join(created)}" if created else "Kafka topics: all present")

    def cluster_statements(database: str, cluster: str) -> list[str]:
        return cluster_ddl(database, cluster, args.sharding_key or DEFAULT_SHARDING_KEY,
                           sample_ttl_days=args.sample_ttl_days)

    if args.print_only:
        database = settings.database
        if cluster:
            statements = cluster_statements(database, cluster)
        else:
            statements = ddl(database, sample_ttl_days=args.sample_ttl_days)
        print("\n\n".join(f"{statement};" for statement in statements))
        return 0
    client, database = settings.connect(create_database=True)
    if cluster:
        statements = cluster_statements(database, cluster)
        for statement in statements:
            print(f"{statement};\n", flush=True)
            client.command(statement)
        print(f"laid out {database} on cluster {cluster}: {len(statements)} statements")
        return 0
    applied = migrate(client, database, sample_ttl_days=args.sample_ttl_days)
    print(f"applied migrations {applied} to {database}" if applied else f"{database} is up to date")
    return 0


@analysis_cli.clickhouse_errors  # bad SQL: ClickHouse's message and code in one line, exit 2
def _cmd_query(args: argparse.Namespace) -> int:
    client, _database = connect_clickhouse(args, create_database=True)
    result = client.query(args.sql)
    print(render(list(result.column_names), result.result_rows, args.format))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from runstream.consumer.config import ConsumerOptions
    from runstream.monitoring.settings import ExporterSettings
    from runstream.producer.settings import ProducerSettings
    from runstream.producer.settings_layer import markdown_table
    from runstream.server.settings import ServerSettings

    print(markdown_table([ProducerSettings, ConsumerOptions, ClickHouseSettings, ExporterSettings, ServerSettings]))
    return 0


try:  # the consumer's fatal Kafka errors are reported like the others
    from confluent_kafka import KafkaException as KafkaError
except ImportError:  # pragma: no cover - confluent-kafka is a dependency
    KafkaError = RuntimeError  # type: ignore[assignment,misc]


COMMANDS = {
    "demo": _cmd_demo,
    "run": _cmd_run,
    "consume": _cmd_consume,
    "ingest": _cmd_ingest,
    "sync": _cmd_sync,
    "migrate": _cmd_migrate,
    "query": _cmd_query,
    "config": _cmd_config,
    **analysis_cli.COMMANDS,
    **monitoring_cli.COMMANDS,
    **dashboards_cli.COMMANDS,
    **retention_cli.COMMANDS,
    **server_cli.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, ConnectionError, RuntimeError, KafkaError) as error:
        print(f"runstream {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        # Commands import what they need when they run (the SDK commands need no extra); a module an
        # optional extra brings is reported as that extra, in one line. Any other ImportError is a bug.
        message = command_error(args.command, error)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
