"""Consumer configuration: command-line arguments, then `RUNSTREAM_*` environment variables, then a TOML file.

Unknown keys are rejected with the key named. Secrets (Kafka SASL/SSL passwords, the ClickHouse
password) may come from the file or the environment; they are kept out of every repr, log line
and error message.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from runstream.consumer.clickhouse_settings import ClickHouseSettings
from runstream.producer.kafka_settings import KafkaConfigError, resolve_options
from runstream.producer.settings_layer import Settings, SettingsError, env, read_config_file
from runstream.schemas import DEFAULT_TOPIC_PREFIX

#: The consumer's defaults, one definition shared by `ConsumerOptions` (what users set) and
#: `ConsumerSettings` (what the service runs with), kept here so that `runstream config` loads without
#: the server extra. The batch wait was chosen by bench/freshness.py: the longest wait (fewest inserts)
#: whose p99 from `log()` to a queryable row stays under 2 s (bench/results/freshness.md).
DEFAULT_GROUP = "runstream-consumer"
DEFAULT_BATCH_MAX_POINTS = 500_000
DEFAULT_BATCH_MAX_MESSAGES = 20_000
DEFAULT_BATCH_MAX_WAIT_S = 0.5
DEFAULT_PARTITIONS = 6

if TYPE_CHECKING:  # the service needs the server extra; the settings model (`runstream config`) does not
    from runstream.consumer.service import ConsumerSettings

#: Tables a runstream config file may hold (one file serves the SDK, the consumer and the monitor).
SECTIONS = ("consumer", "kafka", "clickhouse", "producer", "monitor")


class ConfigError(SettingsError):
    """A configuration value or key that cannot be used; the message names it (never a secret's value)."""


class ConsumerOptions(Settings):
    """The consumer's own settings: each is `--<name>` (dashes), `RUNSTREAM_<NAME>` and `[consumer] <name>`.

    librdkafka options (`[kafka]` table, RUNSTREAM_KAFKA_* variables, --kafka-option) are resolved by
    runstream.producer.kafka_settings, and ClickHouse (`--clickhouse`, the DSN and its credentials) by
    runstream.consumer.clickhouse_settings, as for every other command.
    """

    config_table = "consumer"
    component = "consumer"

    kafka: str | None = Field(default=None, description="bootstrap servers (required)")
    topic_prefix: str = Field(default=DEFAULT_TOPIC_PREFIX, description="prefix of the topic names")
    group: str = Field(default=DEFAULT_GROUP, description="consumer group id")
    batch_max_points: int = Field(default=DEFAULT_BATCH_MAX_POINTS,
                                   description="write a batch once it holds this many points")
    batch_max_messages: int = Field(default=DEFAULT_BATCH_MAX_MESSAGES,
                                     description="write a batch once it holds this many messages")
    batch_max_wait: float = Field(default=DEFAULT_BATCH_MAX_WAIT_S,
                                   description="seconds after a batch's first message it is written")
    partitions: int = Field(default=DEFAULT_PARTITIONS,
                             description="partitions of topics this consumer creates")
    replication_factor: int | None = Field(
        default=None, description="replication factor of topics created (None: the brokers' default)")
    min_insync_replicas: int | None = Field(
        default=None, description="min.insync.replicas of topics created (None: 2 when the factor is >= 3)")
    listen: str | None = Field(default=None, description="HOST:PORT serving /metrics, /healthz, /readyz")
    idle_exit: float | None = Field(default=None, description="exit after this many seconds without messages")
    instance_id: str | None = Field(
        default=None, json_schema_extra=env("RUNSTREAM_INSTANCE_ID"),
        description="group.instance.id (None: the host name; '' or RUNSTREAM_INSTANCE_ID='': no static membership)")


@dataclass(frozen=True)
class ConsumerConfig:
    settings: ConsumerSettings
    listen: str | None
    idle_exit: float | None

    def describe(self) -> str:
        """A log-safe summary."""
        from runstream.consumer.dsn import redact

        s = self.settings
        options = ", ".join(f"{k}={v}" for k, v in s.kafka_options)
        return (f"kafka={s.kafka} group={s.group_id} instance={s.instance_id or '(dynamic)'} "
                f"prefix={s.topic_prefix} clickhouse={redact(s.clickhouse)} kafka options: {options or 'none'}")


def default_instance_id() -> str:
    """The host name: stable across restarts where it matters (a Kubernetes StatefulSet's pod name,
    a VM), so a restarted consumer rejoins its group as the same static member at once. Several
    consumers of one group on one host need distinct `--instance-id`s (a duplicate is fenced)."""
    return socket.gethostname() or "runstream-consumer"


def read_file(path: Path) -> dict[str, Any]:
    """The config file, its tables checked by name (the keys of each are checked by its settings model)."""
    data = read_config_file(path, ConfigError)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config file {str(path)!r}: unknown section(s) {', '.join(unknown)}; "
                          f"expected {', '.join(SECTIONS)}")
    for section in SECTIONS:
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"config file {str(path)!r}: [{section}] must be a table")
    for key, value in data.get("kafka", {}).items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"config file {str(path)!r}: [kafka] {key} must be a scalar")
    return data


def load_consumer_config(
    arguments: Mapping[str, Any],
    environment: Mapping[str, str],
    file: Path | None = None,
    kafka_arguments: Mapping[str, str] | None = None,
) -> ConsumerConfig:
    """Merge the three sources; `arguments` holds only options given on the command line (None = not given)."""
    from runstream.consumer.service import ConsumerSettings

    data = read_file(file) if file else {}
    if "clickhouse" in data.get("consumer", {}):
        raise ConfigError(f"config file {str(file)!r}: [consumer] clickhouse: the DSN is one setting for every "
                          "command, [clickhouse] dsn (with user and password beside it)")
    consumer_arguments = {key: value for key, value in arguments.items() if key != "clickhouse"}
    try:
        options = ConsumerOptions.load(consumer_arguments, environ=environment, config_file=file,
                                       table=data.get("consumer", {}))
        clickhouse = ClickHouseSettings.load({"dsn": arguments.get("clickhouse")}, environ=environment,
                                             config_file=file, table=data.get("clickhouse", {}))
    except SettingsError as error:
        raise ConfigError(str(error)) from None
    instance_id = options.instance_id
    if arguments.get("instance_id") is None and environment.get("RUNSTREAM_INSTANCE_ID") == "":
        instance_id = ""  # set but empty: static membership off
    if not options.kafka:
        raise ConfigError("kafka: bootstrap servers are required (--kafka, RUNSTREAM_KAFKA or [consumer] kafka)")
    try:  # per option: command line > RUNSTREAM_KAFKA_* > [kafka]; reserved and unknown options rejected
        kafka_options = resolve_options(kafka_arguments, environ=environment, file_options=data.get("kafka", {}),
                                        file_name=f"config file {str(file)!r}" if file else "config file")
    except KafkaConfigError as error:
        raise ConfigError(str(error)) from None
    try:
        settings = ConsumerSettings(
            kafka=options.kafka, clickhouse=clickhouse.authenticated_dsn(), topic_prefix=options.topic_prefix,
            group_id=options.group, batch_max_points=options.batch_max_points,
            batch_max_messages=options.batch_max_messages, batch_max_wait_s=options.batch_max_wait,
            partitions=options.partitions,
            instance_id=default_instance_id() if instance_id is None else instance_id or None,
            replication_factor=options.replication_factor, min_insync_replicas=options.min_insync_replicas,
            kafka_options=kafka_options,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return ConsumerConfig(settings, options.listen, options.idle_exit)
