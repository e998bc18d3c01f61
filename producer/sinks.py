"""Where the producer's worker puts encoded events: a Kafka topic, or the local spool.

Both sinks take event records of the bundled contract; the Kafka sink sends them as Avro
single-object messages keyed by run id, the spool sink appends them to Avro object
container files that any Avro tool reads and that `runstream ingest` or `runstream sync`
load later.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import IO, Any, Protocol

import fastavro

from runstream.schemas import Encoder, bundled_catalogue, topic_for

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".avro"
OPEN_SUFFIX = ".avro.open"


class EventSink(Protocol):
    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None: ...

    def flush(self, timeout: float) -> int:
        """Push out what is buffered; return how many events are still undelivered."""
        ...

    def close(self, timeout: float) -> None: ...


class KafkaSink:
    """Idempotent, compressed, acks=all delivery to one topic per event type."""

    def __init__(self, bootstrap_servers: str, topic_prefix: str, extra_config: dict[str, Any] | None = None):
        from confluent_kafka import Producer

        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "zstd",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "message.max.bytes": 8_000_000,
            "client.id": "runstream-producer",
        }
        config.update(extra_config or {})
        self._producer = Producer(config)
        self._encoder = Encoder(bundled_catalogue())
        self._prefix = topic_prefix
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1
            log.error("runstream: event delivery failed: %s", error)

    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        value = self._encoder.encode(event_type, record)
        topic = topic_for(self._prefix, event_type)
        while True:
            try:
                self._producer.produce(topic, value=value, key=run_id.encode(), on_delivery=self._on_delivery)
                break
            except BufferError:
                # librdkafka's local queue is full: serve delivery reports to make room.
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))

    def close(self, timeout: float) -> None:
        remaining = self.flush(timeout)
        if remaining:
            log.error("runstream: %d events were not delivered to Kafka within %.1fs", remaining, timeout)


class SpoolSink:
    """Appends events to `<spool>/<run_id>/<event_type>.avro.open`, renamed to `.avro` when closed.

    Each flush writes the buffered records as a container-file block and fsyncs, so a crash
    loses at most what arrived since the last flush.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = Path(folder)
        self._catalogue = bundled_catalogue()
        self._writers: dict[tuple[str, str], tuple[IO[bytes], Any, Path]] = {}

    def _writer(self, event_type: str, run_id: str) -> Any:
        key = (run_id, event_type)
        entry = self._writers.get(key)
        if entry is None:
            run_folder = self._folder / run_id
            run_folder.mkdir(parents=True, exist_ok=True)
            segment = 0
            while (run_folder / f"{event_type}.{segment:04d}{SPOOL_SUFFIX}").exists():
                segment += 1
            path = run_folder / f"{event_type}.{segment:04d}{OPEN_SUFFIX}"
            handle = open(path, "wb")  # noqa: SIM115 - kept open across flushes, closed in close()
            schema = self._catalogue.latest(event_type)
            writer = fastavro.write.Writer(handle, schema.parsed, codec="null")
            entry = (handle, writer, path)
            self._writers[key] = entry
        return entry[1]

    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        self._writer(event_type, run_id).write(record)

    def flush(self, timeout: float) -> int:
        for handle, writer, _path in self._writers.values():
            writer.flush()
            handle.flush()
            os.fsync(handle.fileno())
        return 0

    def close_run(self, run_id: str) -> None:
        """Seal a run's files so that ingest picks them up."""
        for key in [k for k in self._writers if k[0] == run_id]:
            handle, writer, path = self._writers.pop(key)
            writer.flush()
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            path.rename(path.with_name(path.name[: -len(OPEN_SUFFIX)] + SPOOL_SUFFIX))

    def close(self, timeout: float) -> None:
        for run_id in {k[0] for k in self._writers}:
            self.close_run(run_id)
