"""Producer settings: one frozen object, from arguments first, then `RUNSTREAM_*` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from runstream.schemas import DEFAULT_TOPIC_PREFIX

DEFAULT_SPOOL = Path.home() / ".runstream" / "spool"


@dataclass(frozen=True)
class ProducerSettings:
    """Where events go and how they are batched.

    With no `kafka` bootstrap servers the run is offline: events are written to the spool
    folder as Avro object container files, to be loaded with `runstream ingest` or
    uploaded with `runstream sync`.
    """

    kafka: str | None = None
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    spool: Path = DEFAULT_SPOOL
    flush_interval_s: float = 0.2
    max_points_per_event: int = 50_000
    queue_capacity_points: int = 5_000_000
    flush_timeout_s: float = 30.0
    sample_interval_s: float = 5.0
    delivery_timeout_s: float = 30.0
    log_all_ranks: bool = False

    def __post_init__(self) -> None:
        if self.flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s: expected a positive number of seconds, got {self.flush_interval_s!r}")
        if self.max_points_per_event < 1:
            raise ValueError(f"max_points_per_event: expected at least 1, got {self.max_points_per_event!r}")
        if self.sample_interval_s < 0:
            raise ValueError(
                f"sample_interval_s: expected seconds >= 0 (0 turns sampling off), got {self.sample_interval_s!r}"
            )
        if self.queue_capacity_points < 1:
            raise ValueError(f"queue_capacity_points: expected at least 1, got {self.queue_capacity_points!r}")

    @classmethod
    def resolve(cls, **overrides: Any) -> ProducerSettings:
        """Arguments win over the environment (`RUNSTREAM_KAFKA`, `RUNSTREAM_TOPIC_PREFIX`, `RUNSTREAM_SPOOL`,
        `RUNSTREAM_SAMPLE_INTERVAL` in seconds, 0 for off)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown producer setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        env_kafka = os.environ.get("RUNSTREAM_KAFKA") or None
        env_prefix = os.environ.get("RUNSTREAM_TOPIC_PREFIX")
        env_spool = os.environ.get("RUNSTREAM_SPOOL")
        if env_kafka is not None:
            values["kafka"] = env_kafka
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
        for key, value in overrides.items():
            if value is not None:
                values[key] = Path(value) if key == "spool" else value
        return cls(**values)
