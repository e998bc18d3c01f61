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
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

from runstream.consumer.dsn import default_dsn
from runstream.consumer.service import ConsumerSettings
from runstream.producer.kafka_settings import KafkaConfigError, read_config_file, resolve_options
from runstream.schemas import DEFAULT_TOPIC_PREFIX

#: Consumer keys: (type, environment variable, default).
CONSUMER_KEYS: dict[str, tuple[type, str, Any]] = {
    "kafka": (str, "RUNSTREAM_KAFKA", None),
    "clickhouse": (str, "RUNSTREAM_CLICKHOUSE", None),
    "topic_prefix": (str, "RUNSTREAM_TOPIC_PREFIX", DEFAULT_TOPIC_PREFIX),
    "group": (str, "RUNSTREAM_GROUP", "runstream-consumer"),
    "batch_max_points": (int, "RUNSTREAM_BATCH_MAX_POINTS", 500_000),
    "batch_max_messages": (int, "RUNSTREAM_BATCH_MAX_MESSAGES", 20_000),
    "batch_max_wait": (float, "RUNSTREAM_BATCH_MAX_WAIT", 1.0),
    "partitions": (int, "RUNSTREAM_PARTITIONS", 6),
    # topics this consumer creates: None = the broker's default replication factor; min.insync.replicas
    # None = 2 when the effective factor is >= 3 (see topics_admin.ensure_topics)
    "replication_factor": (int, "RUNSTREAM_REPLICATION_FACTOR", None),
    "min_insync_replicas": (int, "RUNSTREAM_MIN_INSYNC_REPLICAS", None),
    "listen": (str, "RUNSTREAM_LISTEN", None),
    "idle_exit": (float, "RUNSTREAM_IDLE_EXIT", None),
    # None = derived from the host name (see default_instance_id); "" = no static membership.
    "instance_id": (str, "RUNSTREAM_INSTANCE_ID", None),
}

#: librdkafka options (`[kafka]` table, RUNSTREAM_KAFKA_* variables, --kafka-option) are resolved by
#: runstream.producer.kafka_settings, the definition every Kafka client of runstream shares.

CLICKHOUSE_KEYS = {"user": "RUNSTREAM_CLICKHOUSE_USER", "password": "RUNSTREAM_CLICKHOUSE_PASSWORD"}
SECTIONS = ("consumer", "kafka", "clickhouse")


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it (never a secret's value)."""


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


def _coerce(key: str, kind: type, value: Any, where: str) -> Any:
    if value is None:
        return None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {type(value).__name__}")
        return value
    try:
        if isinstance(value, bool):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {value!r}") from None


def read_file(path: Path) -> dict[str, Any]:
    data = read_config_file(path, ConfigError)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config file {str(path)!r}: unknown section(s) {', '.join(unknown)}; "
                          f"expected {', '.join(SECTIONS)}")
    consumer = data.get("consumer", {})
    bad = sorted(set(consumer) - set(CONSUMER_KEYS))
    if bad:
        raise ConfigError(f"config file {str(path)!r}: unknown key(s) in [consumer]: {', '.join(bad)}; "
                          f"known: {', '.join(CONSUMER_KEYS)}")
    clickhouse = data.get("clickhouse", {})
    bad = sorted(set(clickhouse) - set(CLICKHOUSE_KEYS))
    if bad:
        raise ConfigError(f"config file {str(path)!r}: unknown key(s) in [clickhouse]: {', '.join(bad)}; "
                          f"known: {', '.join(CLICKHOUSE_KEYS)}")
    for key, value in data.get("kafka", {}).items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"config file {str(path)!r}: [kafka] {key} must be a scalar")
    return data


def with_credentials(dsn: str, user: str | None, password: str | None) -> str:
    """The DSN with a user and password put in (percent-encoded), for credentials kept out of DSNs."""
    if not user and not password:
        return dsn
    parsed = urlparse(dsn)
    if parsed.scheme not in ("http", "https"):
        raise ConfigError("clickhouse user/password apply to http(s) DSNs only")
    user = user or parsed.username or "default"
    host = parsed.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password or parsed.password or '', safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def load_consumer_config(
    arguments: Mapping[str, Any],
    environment: Mapping[str, str],
    file: Path | None = None,
    kafka_arguments: Mapping[str, str] | None = None,
) -> ConsumerConfig:
    """Merge the three sources; `arguments` holds only options given on the command line (None = not given)."""
    data = read_file(file) if file else {}
    from_file = data.get("consumer", {})
    merged: dict[str, Any] = {}
    for key, (kind, env_name, default) in CONSUMER_KEYS.items():
        if arguments.get(key) is not None:
            merged[key] = _coerce(key, kind, arguments[key], "command line")
        elif environment.get(env_name):
            merged[key] = _coerce(key, kind, environment[env_name], f"environment {env_name}")
        elif key in from_file:
            merged[key] = _coerce(key, kind, from_file[key], f"config file [consumer] {key}")
        else:
            merged[key] = default
    if arguments.get("instance_id") is None and environment.get("RUNSTREAM_INSTANCE_ID") == "":
        merged["instance_id"] = ""  # set but empty: static membership off
    if not merged["kafka"]:
        raise ConfigError("kafka: bootstrap servers are required (--kafka, RUNSTREAM_KAFKA or [consumer] kafka)")
    try:  # per option: command line > RUNSTREAM_KAFKA_* > [kafka]; reserved and unknown options rejected
        kafka_options = resolve_options(kafka_arguments, environ=environment, file_options=data.get("kafka", {}),
                                        file_name=f"config file {str(file)!r}" if file else "config file")
    except KafkaConfigError as error:
        raise ConfigError(str(error)) from None
    clickhouse_file = data.get("clickhouse", {})
    user = environment.get(CLICKHOUSE_KEYS["user"]) or clickhouse_file.get("user")
    password = environment.get(CLICKHOUSE_KEYS["password"]) or clickhouse_file.get("password")
    dsn = with_credentials(merged["clickhouse"] or default_dsn(), user, password)
    try:
        settings = ConsumerSettings(
            kafka=merged["kafka"], clickhouse=dsn, topic_prefix=merged["topic_prefix"], group_id=merged["group"],
            batch_max_points=merged["batch_max_points"], batch_max_messages=merged["batch_max_messages"],
            batch_max_wait_s=merged["batch_max_wait"], partitions=merged["partitions"],
            instance_id=default_instance_id() if merged["instance_id"] is None else merged["instance_id"] or None,
            replication_factor=merged["replication_factor"], min_insync_replicas=merged["min_insync_replicas"],
            kafka_options=kafka_options,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return ConsumerConfig(settings, merged["listen"], merged["idle_exit"])
