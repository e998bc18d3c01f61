"""Where the producer's worker puts events: Kafka, with the local spool as its fallback, or the spool alone.

The Kafka sink sends Avro single-object messages keyed by run id. An event Kafka could not take
(delivery timed out, local queue full while the broker is away) is decoded back and written to
the spool, never dropped; once a later delivery succeeds, the sealed spool files are replayed
in order and removed. The spool sink appends Avro object container files that any Avro tool
reads and that `runstream ingest` or `runstream sync` load later.

Sinks are not thread-safe: the worker calls them under its lock.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import IO, Any, Protocol

import fastavro

from runstream.producer.sync import replay_files
from runstream.schemas import Decoder, Encoder, bundled_catalogue, topic_for
from runstream.schemas.spool import OPEN_SUFFIX, SPOOL_SUFFIX

log = logging.getLogger(__name__)

#: How long `send` waits for room in librdkafka's queue before spooling the event instead.
QUEUE_FULL_WAIT_S = 1.0
#: How long a replay waits for the broker to acknowledge the replayed events.
REPLAY_TIMEOUT_S = 30.0


class EventSink(Protocol):
    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None: ...

    def flush(self, timeout: float) -> int:
        """Push out what is buffered; return how many events are still undelivered."""
        ...

    def close_run(self, run_id: str) -> object:
        """The run finished: nothing more will be sent for it."""
        ...

    def close(self, timeout: float) -> None: ...


class SpoolSink:
    """Appends events to `<spool>/<run_id>/<event_type>.<segment>.avro.open`, renamed to `.avro` when sealed.

    Each flush writes the buffered records as a container-file block and fsyncs, so a crash
    loses at most what arrived since the last flush.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._catalogue = bundled_catalogue()
        self._writers: dict[tuple[str, str], tuple[IO[bytes], Any, Path]] = {}
        self.written = 0

    def _writer(self, event_type: str, run_id: str) -> Any:
        key = (run_id, event_type)
        entry = self._writers.get(key)
        if entry is None:
            run_folder = self.folder / run_id
            run_folder.mkdir(parents=True, exist_ok=True)
            segment = 0
            while any((run_folder / f"{event_type}.{segment:04d}{suffix}").exists()
                      for suffix in (SPOOL_SUFFIX, OPEN_SUFFIX)):
                segment += 1
            path = run_folder / f"{event_type}.{segment:04d}{OPEN_SUFFIX}"
            handle = open(path, "wb")  # kept open across flushes, closed when sealed  # noqa: SIM115
            schema = self._catalogue.latest(event_type)
            writer = fastavro.write.Writer(handle, schema.parsed, codec="null")
            entry = (handle, writer, path)
            self._writers[key] = entry
        return entry[1]

    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        self._writer(event_type, run_id).write(record)
        self.written += 1

    @property
    def has_open_files(self) -> bool:
        return bool(self._writers)

    def flush(self, timeout: float) -> int:
        for handle, writer, _path in self._writers.values():
            writer.flush()
            handle.flush()
            os.fsync(handle.fileno())
        return 0

    def close_run(self, run_id: str) -> list[Path]:
        """Seal a run's files so that ingest and sync pick them up; return the sealed paths."""
        sealed = []
        for key in sorted(k for k in self._writers if k[0] == run_id):
            handle, writer, path = self._writers.pop(key)
            writer.flush()
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            final = path.with_name(path.name[: -len(OPEN_SUFFIX)] + SPOOL_SUFFIX)
            path.rename(final)
            sealed.append(final)
        return sealed

    def seal_all(self) -> list[Path]:
        sealed = []
        for run_id in sorted({k[0] for k in self._writers}):
            sealed.extend(self.close_run(run_id))
        return sealed

    def close(self, timeout: float) -> None:
        self.seal_all()


class KafkaSink:
    """Idempotent, compressed, acks=all delivery to one topic per event type, spooling what fails."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic_prefix: str,
        fallback: SpoolSink,
        *,
        delivery_timeout_s: float = 30.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "zstd",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "message.max.bytes": 8_000_000,
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            "client.id": "runstream-producer",
        }
        self.config.update(extra_config or {})
        self._producer = Producer(self.config)
        self._catalogue = bundled_catalogue()
        self._encoder = Encoder(self._catalogue)
        self._decoder = Decoder(self._catalogue)
        self._prefix = topic_prefix
        self.fallback = fallback
        self._undelivered: list[bytes] = []
        self._to_replay: list[Path] = []
        self._last_failure = 0.0
        self._last_success = 0.0
        self.delivered = 0
        self.spooled = 0
        self.replayed = 0

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is None:
            self.delivered += 1
            self._last_success = time.monotonic()
        else:
            self._last_failure = time.monotonic()
            self._undelivered.append(message.value())
            if len(self._undelivered) == 1:
                log.warning("runstream: Kafka delivery failed (%s); spooling to %s", error, self.fallback.folder)

    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        value = self._encoder.encode(event_type, record)
        topic = topic_for(self._prefix, event_type)
        deadline = time.monotonic() + QUEUE_FULL_WAIT_S
        while True:
            try:
                self._producer.produce(topic, value=value, key=run_id.encode(), on_delivery=self._on_delivery)
                break
            except BufferError:
                # librdkafka's queue is full (the broker is slow or away): serve reports, then give up to the spool.
                if time.monotonic() >= deadline:
                    self._last_failure = time.monotonic()
                    self._spool(event_type, run_id, record)
                    break
                self._producer.poll(0.05)
        self._producer.poll(0)
        self._spool_undelivered()

    def _spool(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        self.fallback.send(event_type, run_id, record)
        self.spooled += 1

    def _spool_undelivered(self) -> None:
        failed, self._undelivered = self._undelivered, []
        for value in failed:
            event_type, record = self._decoder.decode(value)
            self._spool(event_type, record["run_id"], record)

    def flush(self, timeout: float) -> int:
        remaining = int(self._producer.flush(timeout))
        self._spool_undelivered()
        self.fallback.flush(timeout)
        if self._broker_is_back():
            self._replay()
        return remaining

    def _broker_is_back(self) -> bool:
        pending = bool(self._to_replay) or self.fallback.has_open_files
        return pending and self._last_success > self._last_failure

    def _replay(self) -> None:
        """Send the spooled events again, in their files' order, and remove each file once acknowledged."""
        self._to_replay.extend(self.fallback.seal_all())
        files, self._to_replay = self._to_replay, []
        report = replay_files(files, self._producer, self._prefix, REPLAY_TIMEOUT_S)
        self.replayed += report.events
        self._to_replay.extend(report.left)
        if report.left:
            log.warning("runstream: %d spool files not replayed yet; will retry", len(report.left))
        else:
            log.info("runstream: replayed %d spooled events to Kafka", report.events)

    def close_run(self, run_id: str) -> None:
        self._to_replay.extend(self.fallback.close_run(run_id))

    def close(self, timeout: float) -> None:
        remaining = self.flush(timeout)
        self._to_replay.extend(self.fallback.seal_all())
        if remaining or self._to_replay:
            log.error(
                "runstream: %d events undelivered and %d spool files left in %s; upload them later with "
                "`runstream sync %s --kafka ...`",
                remaining, len(self._to_replay), self.fallback.folder, self.fallback.folder,
            )
