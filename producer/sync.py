"""Uploading spooled runs to Kafka: the producer's replay after an outage, and `runstream sync`.

A spool file is removed only after every event in it was acknowledged by the broker, so an
interrupted upload is simply run again (the consumer's deduplication absorbs the repeats).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.schemas import Encoder, bundled_catalogue, topic_for
from runstream.schemas.spool import read_spool_file, spool_files

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    files: int = 0
    events: int = 0
    left: list[Path] = field(default_factory=list)


def replay_files(files: list[Path], producer: Any, topic_prefix: str, timeout: float) -> SyncReport:
    """Produce every event of `files` in order; delete each file whose events were all acknowledged."""
    encoder = Encoder(bundled_catalogue())
    report = SyncReport()
    for path in files:
        failures: list[str] = []

        def on_delivery(error: Any, _message: Any, failures: list[str] = failures) -> None:
            if error is not None:
                failures.append(str(error))

        count = 0
        for event_type, record in read_spool_file(path):
            value = encoder.encode(event_type, record)
            topic = topic_for(topic_prefix, event_type)
            while True:
                try:
                    producer.produce(topic, value=value, key=record["run_id"].encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
        remaining = producer.flush(timeout)
        if remaining or failures:
            log.warning("spool file %s: %d unacknowledged, %d failed; kept", path, remaining, len(failures))
            report.left.append(path)
            continue
        path.unlink()
        report.files += 1
        report.events += count
        if path.parent.exists() and not any(path.parent.iterdir()):
            path.parent.rmdir()
    return report


def sync_spool(folder: Path, bootstrap_servers: str, topic_prefix: str, *, timeout: float = 60.0,
               extra_config: dict[str, Any] | None = None) -> SyncReport:
    """Upload every sealed spool file under `folder` (runs logged offline or during an outage)."""
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "zstd",
        "linger.ms": 50,
        "client.id": "runstream-sync",
        **(extra_config or {}),
    })
    return replay_files(spool_files(folder), producer, topic_prefix, timeout)
