"""Producer settings: one frozen object, from arguments first, then `RUNSTREAM_*` environment variables.

The Kafka part (bootstrap servers, security and other librdkafka options) is resolved by
`runstream.producer.kafka_settings`, the one definition every Kafka client shares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runstream.producer.kafka_settings import KafkaSettings, Options, normalise_options, resolve_options
from runstream.schemas import DEFAULT_TOPIC_PREFIX

DEFAULT_SPOOL = Path.home() / ".runstream" / "spool"
#: Queue and shutdown settings read from the environment: (variable, setting, type).
_NUMERIC_ENV: tuple[tuple[str, str, type[int] | type[float]], ...] = (
    ("RUNSTREAM_QUEUE_CAPACITY_BYTES", "queue_capacity_bytes", int),
    ("RUNSTREAM_SHUTDOWN_TIMEOUT", "shutdown_timeout_s", float),
)


@dataclass(frozen=True)
class ProducerSettings:
    """Where events go and how they are batched.

    With no `kafka` bootstrap servers the run is offline: events are written to the spool
    folder as Avro object container files, to be loaded with `runstream ingest` or
    uploaded with `runstream sync`. `kafka_options` are librdkafka options (security.protocol,
    sasl.*, ssl.*, ...), secrets held in a type that never prints; the settings stay hashable
    (they key the process's workers).
    """

    kafka: str | None = None
    kafka_options: Options = field(default=())
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    spool: Path = DEFAULT_SPOOL
    flush_interval_s: float = 0.2
    max_points_per_event: int = 50_000
    #: Bytes the queue between `log()` and the worker may hold (an estimate made on the training
    #: thread, see `worker.item_bytes`); at the bound `log()` waits briefly, then drops and counts.
    queue_capacity_bytes: int = 64 * 1024 * 1024
    flush_timeout_s: float = 30.0
    #: How long SIGTERM may take to finish open runs and flush, wherever it lands (even inside `flush()`).
    shutdown_timeout_s: float = 10.0
    sample_interval_s: float = 5.0
    delivery_timeout_s: float = 30.0
    log_all_ranks: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kafka_options", normalise_options(self.kafka_options))
        if self.flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s: expected a positive number of seconds, got {self.flush_interval_s!r}")
        if self.max_points_per_event < 1:
            raise ValueError(f"max_points_per_event: expected at least 1, got {self.max_points_per_event!r}")
        if self.sample_interval_s < 0:
            raise ValueError(
                f"sample_interval_s: expected seconds >= 0 (0 turns sampling off), got {self.sample_interval_s!r}"
            )
        if self.queue_capacity_bytes < 1:
            raise ValueError(f"queue_capacity_bytes: expected at least 1, got {self.queue_capacity_bytes!r}")
        if not self.shutdown_timeout_s > 0:
            raise ValueError(
                f"shutdown_timeout_s: expected a positive number of seconds, got {self.shutdown_timeout_s!r}"
            )

    @property
    def kafka_settings(self) -> KafkaSettings | None:
        """The Kafka client settings, or None for an offline run."""
        return KafkaSettings(self.kafka, self.kafka_options) if self.kafka else None

    @classmethod
    def resolve(cls, *, config_file: Path | str | None = None, **overrides: Any) -> ProducerSettings:
        """Arguments win over the environment (`RUNSTREAM_KAFKA`, `RUNSTREAM_TOPIC_PREFIX`, `RUNSTREAM_SPOOL`,
        `RUNSTREAM_SAMPLE_INTERVAL` in seconds, 0 for off, `RUNSTREAM_QUEUE_CAPACITY_BYTES`,
        `RUNSTREAM_SHUTDOWN_TIMEOUT` in seconds). Kafka options: `kafka_options` (a mapping), then
        `RUNSTREAM_KAFKA_*` variables, then the `[kafka]` table of `config_file` or `RUNSTREAM_CONFIG`;
        `kafka` may also be a whole `KafkaSettings`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown producer setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        kafka = overrides.pop("kafka", None)
        options = overrides.pop("kafka_options", None)
        if isinstance(kafka, KafkaSettings):
            values["kafka"], values["kafka_options"] = kafka.bootstrap_servers, kafka.options
            if options:
                values["kafka_options"] = KafkaSettings(kafka.bootstrap_servers,
                                                        (*kafka.options, *dict(options).items())).options
        else:
            resolved = KafkaSettings.resolve(kafka, options, config_file=config_file)
            values["kafka_options"] = resolve_options(options) if resolved is None else resolved.options
            if resolved is not None:
                values["kafka"] = resolved.bootstrap_servers
        env_prefix = os.environ.get("RUNSTREAM_TOPIC_PREFIX")
        env_spool = os.environ.get("RUNSTREAM_SPOOL")
        if env_prefix is not None:
            values["topic_prefix"] = env_prefix
        if env_spool:
            values["spool"] = Path(env_spool)
        env_interval = os.environ.get("RUNSTREAM_SAMPLE_INTERVAL")
        if env_interval:
            try:
                values["sample_interval_s"] = float(env_interval)
            except ValueError:
                raise ValueError(f"RUNSTREAM_SAMPLE_INTERVAL: expected seconds, got {env_interval!r}") from None
        for variable, name, kind in _NUMERIC_ENV:
            raw = os.environ.get(variable)
            if raw:
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise ValueError(f"{variable}: expected {kind.__name__}, got {raw!r}") from None
        for key, value in overrides.items():
            if value is not None:
                values[key] = Path(value) if key == "spool" else value
        return cls(**values)
