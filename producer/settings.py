"""Producer settings: one frozen object (the SDK's, `runstream run`'s and the integrations'), on the
project's settings layer (runstream.producer.settings_layer): arguments > `RUNSTREAM_*` environment >
the `[producer]` table of the config file (`RUNSTREAM_CONFIG`) > defaults.

The Kafka part (bootstrap servers, security and other librdkafka options) is resolved by
`runstream.producer.kafka_settings`, the one definition every Kafka client shares.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from runstream.producer.kafka_settings import KafkaSettings, Options, normalise_options, resolve_options
from runstream.producer.settings_layer import Settings, env, positive_seconds
from runstream.schemas import DEFAULT_TOPIC_PREFIX

DEFAULT_SPOOL = Path.home() / ".runstream" / "spool"


class ProducerSettings(Settings):
    """Where events go and how they are batched.

    With no `kafka` bootstrap servers the run is offline: events are written to the spool
    folder as Avro object container files, to be loaded with `runstream ingest` or
    uploaded with `runstream sync`. `kafka_options` are librdkafka options (security.protocol,
    sasl.*, ssl.*, ...), secrets held in a type that never prints; the settings stay hashable
    (they key the process's workers).
    """

    config_table = "producer"
    component = "producer"

    kafka: str | None = Field(default=None, json_schema_extra=env(None, file=False),
                              description="bootstrap servers (argument or RUNSTREAM_KAFKA, resolved by "
                              "kafka_settings); None: offline")
    kafka_options: Options = Field(default=(), json_schema_extra=env(None, file=False),
                                   description="librdkafka options (arguments, RUNSTREAM_KAFKA_*, [kafka] table)")
    topic_prefix: str = Field(default=DEFAULT_TOPIC_PREFIX, description="prefix of the topic names")
    spool: Path = Field(default=DEFAULT_SPOOL, description="folder for offline runs and Kafka outages")
    flush_interval_s: float = Field(default=0.2, json_schema_extra=env("RUNSTREAM_FLUSH_INTERVAL"),
                                    description="seconds between flushes of buffered points")
    max_points_per_event: int = Field(default=50_000, description="points per metric_steps event at most")
    queue_capacity_bytes: int = Field(
        default=64 * 1024 * 1024,
        description="bytes the queue between log() and the worker may hold (estimated on the training thread, "
        "see worker.item_bytes); at the bound log() waits briefly, then drops and counts")
    flush_timeout_s: float = Field(default=30.0, json_schema_extra=env("RUNSTREAM_FLUSH_TIMEOUT"),
                                   description="seconds flush() waits for the broker")
    shutdown_timeout_s: float = Field(
        default=10.0, json_schema_extra=env("RUNSTREAM_SHUTDOWN_TIMEOUT"),
        description="seconds SIGTERM may take to finish open runs and flush, wherever it lands")
    sample_interval_s: float = Field(default=5.0, json_schema_extra=env("RUNSTREAM_SAMPLE_INTERVAL"),
                                     description="seconds between GPU and host samples; 0 turns sampling off")
    heartbeat_interval_s: float = Field(
        default=30.0, json_schema_extra=env("RUNSTREAM_HEARTBEAT_INTERVAL"),
        description="seconds between run_heartbeat events (the run is alive, its last step and step rate); "
        "readers call a run lost after 3 missed intervals; 0 turns heartbeats off")
    delivery_timeout_s: float = Field(default=30.0, json_schema_extra=env("RUNSTREAM_DELIVERY_TIMEOUT"),
                                      description="seconds the broker may take to acknowledge an event")
    log_all_ranks: bool = Field(default=False, description="log from every distributed rank, not rank 0 only")

    @field_validator("kafka_options", mode="wrap")
    @classmethod
    def _options(cls, value: Any, _handler: Any) -> Options:
        """Sorted strings, secrets wrapped, reserved keys refused (kafka_settings), not pydantic's coercion."""
        return normalise_options(value)

    _positive = field_validator("flush_interval_s", "shutdown_timeout_s")(positive_seconds)

    @field_validator("max_points_per_event", "queue_capacity_bytes")
    @classmethod
    def _at_least_one(cls, value: int, info: ValidationInfo) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name}: expected at least 1, got {value!r}")
        return value

    @field_validator("sample_interval_s", "heartbeat_interval_s")
    @classmethod
    def _interval(cls, value: float, info: ValidationInfo) -> float:
        if not 0 <= value < math.inf:  # NaN and infinity too: a thread cannot wait that long
            what = "sampling" if info.field_name == "sample_interval_s" else "heartbeats"
            raise ValueError(f"{info.field_name}: expected finite seconds >= 0 (0 turns {what} off), got {value!r}")
        return value

    @property
    def kafka_settings(self) -> KafkaSettings | None:
        """The Kafka client settings, or None for an offline run."""
        return KafkaSettings(self.kafka, self.kafka_options) if self.kafka else None

    @classmethod
    def resolve(cls, *, config_file: Path | str | None = None, **overrides: Any) -> ProducerSettings:
        """Arguments win over the environment (`RUNSTREAM_TOPIC_PREFIX`, `RUNSTREAM_SPOOL`,
        `RUNSTREAM_SAMPLE_INTERVAL`, ...: each field's variable, see `describe_fields()`), which wins over the
        `[producer]` table of `config_file` or `RUNSTREAM_CONFIG`. Kafka: `kafka` (or `RUNSTREAM_KAFKA`) and
        `kafka_options` (a mapping), then `RUNSTREAM_KAFKA_*` variables, then the file's `[kafka]` table;
        `kafka` may also be a whole `KafkaSettings`."""
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"unknown producer setting(s): {', '.join(unknown)}; known: {', '.join(cls.model_fields)}")
        kafka = overrides.pop("kafka", None)
        options = overrides.pop("kafka_options", None)
        if isinstance(kafka, KafkaSettings):
            overrides["kafka"], overrides["kafka_options"] = kafka.bootstrap_servers, kafka.options
            if options:
                overrides["kafka_options"] = KafkaSettings(kafka.bootstrap_servers,
                                                           (*kafka.options, *dict(options).items())).options
        else:
            resolved = KafkaSettings.resolve(kafka, options, config_file=config_file)
            overrides["kafka_options"] = resolve_options(options) if resolved is None else resolved.options
            overrides["kafka"] = None if resolved is None else resolved.bootstrap_servers
        return cls.load(overrides, config_file=config_file)
