"""The consume loop: source → decode → batch → sink, then commit.

Nothing is committed before the sink returned, and nothing undecodable is committed before its
dead letter was acknowledged: a crash anywhere re-delivers, never loses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.consumer.batch import Batch, InvalidEvent
from runstream.consumer.clickhouse_sink import ClickHouseSink
from runstream.consumer.dead_letters import DeadLetters
from runstream.consumer.kafka_source import KafkaSource
from runstream.consumer.metrics import ConsumerMetrics
from runstream.consumer.retry import RetryPolicy, ShutdownRequested, retry
from runstream.consumer.topics_admin import ensure_topics
from runstream.schemas import DEFAULT_TOPIC_PREFIX, DecodeError, Decoder, bundled_catalogue
from runstream.schemas.spool import read_spool_file, spool_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerSettings:
    kafka: str
    clickhouse: str = field(repr=False)  # may hold a password
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    group_id: str = "runstream-consumer"
    batch_max_points: int = 500_000
    batch_max_messages: int = 20_000
    batch_max_wait_s: float = 1.0
    poll_timeout_s: float = 0.25
    partitions: int = 6
    #: librdkafka options passed through as given (security.protocol, sasl.*, ssl.*, ...).
    kafka_options: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold SASL secrets

    def __post_init__(self) -> None:
        for name in ("batch_max_points", "batch_max_messages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected at least 1, got {getattr(self, name)!r}")
        if self.partitions < 1:
            raise ValueError(f"partitions: expected at least 1, got {self.partitions!r}")
        if self.batch_max_wait_s <= 0:
            raise ValueError(f"batch_max_wait_s: expected a positive number, got {self.batch_max_wait_s!r}")


@dataclass
class ConsumeStats:
    messages: int = 0
    events: int = 0
    points: int = 0
    batches: int = 0
    dead_letters: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    first_message_at: float | None = None  # time.monotonic() of the first message, for throughput figures


class ConsumerService:
    def __init__(
        self,
        settings: ConsumerSettings,
        *,
        source: KafkaSource | None = None,
        sink: ClickHouseSink | None = None,
        dead_letters: DeadLetters | None = None,
        metrics: ConsumerMetrics | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ConsumerMetrics()
        self.retry_policy = retry_policy or RetryPolicy()
        self.sink = sink or ClickHouseSink(settings.clickhouse)
        kafka_options = dict(settings.kafka_options)
        if source is None:
            ensure_topics(settings.kafka, settings.topic_prefix, partitions=settings.partitions,
                          extra_config=kafka_options)
        self.source = source or KafkaSource(settings.kafka, settings.topic_prefix, settings.group_id,
                                            extra_config=kafka_options)
        self.dead_letters = dead_letters or DeadLetters(settings.kafka, settings.topic_prefix, kafka_options)
        self.decoder = Decoder(bundled_catalogue())
        self.stats = ConsumeStats()
        self._stop = threading.Event()
        self.last_loop_at = time.monotonic()
        self.writing_blocked = False

    # -- health --------------------------------------------------------------------------

    def alive(self, stall_s: float = 120.0) -> bool:
        """The loop turned recently (a write stuck in retries still turns it through keepalive)."""
        return time.monotonic() - self.last_loop_at < stall_s

    def ready(self) -> bool:
        return not self.writing_blocked and not self._stop.is_set()

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        idle_exit_s: float | None = None,
        stop_when: Callable[[ConsumeStats], bool] | None = None,
    ) -> ConsumeStats:
        """Consume until `stop` is set, no message arrived for `idle_exit_s` seconds, or `stop_when`
        holds after a commit (the demo and tests stop once they have seen what they produced).

        On stop, the batch in hand is written and committed before the source closes, unless the
        write itself is what was being retried: then nothing is committed and Kafka redelivers it.
        """
        self._stop = stop = stop or threading.Event()
        batch = Batch()
        held: list[Any] = []
        opened = time.monotonic()
        last_message = time.monotonic()
        s = self.settings
        try:
            while not stop.is_set():
                self.last_loop_at = time.monotonic()
                messages = self.source.poll(s.batch_max_messages, s.poll_timeout_s)
                now = time.monotonic()
                if messages:
                    last_message = now
                    if self.stats.first_message_at is None:
                        self.stats.first_message_at = now
                for message in messages:
                    if not held:
                        opened = now
                    self._add(batch, message)
                    held.append(message)
                    if batch.points >= s.batch_max_points or len(held) >= s.batch_max_messages:
                        self._write_and_commit(batch, held)
                        batch, held = Batch(), []
                if held and time.monotonic() - opened >= s.batch_max_wait_s:
                    self._write_and_commit(batch, held)
                    batch, held = Batch(), []
                if stop_when is not None and not held and stop_when(self.stats):
                    break
                if idle_exit_s is not None and not held and now - last_message >= idle_exit_s:
                    break
            if held:
                self._write_and_commit(batch, held, final=True)
        except ShutdownRequested as error:
            log.warning("%s; the batch in hand was not committed and will be redelivered", error)
        finally:
            self.source.close()
        self.stats.rows = dict(self.sink.rows_written)
        return self.stats

    def _add(self, batch: Batch, message: Any) -> None:
        self.stats.messages += 1
        self.metrics.messages.labels(message.topic()).inc()
        try:
            event_type, record = self.decoder.decode(
                message.value(), partition=message.partition(), offset=message.offset()
            )
            batch.add(event_type, record)
        except (DecodeError, InvalidEvent) as error:
            self.dead_letters.send(message, error.reason, str(error))
            self.metrics.dead_letters.labels(error.reason).inc()
            self.stats.dead_letters += 1

    def _write_and_commit(self, batch: Batch, held: list[Any], *, final: bool = False) -> None:
        started = time.monotonic()
        # On the final write after a stop request, retries must not wait on the (set) stop event.
        stop = threading.Event() if final else self._stop

        def on_failure(_error: BaseException) -> None:
            self.writing_blocked = True
            self.metrics.write_retries.inc()

        def on_wait(seconds: float) -> None:
            self.last_loop_at = time.monotonic()
            self.source.keepalive(seconds)

        retry(lambda: self.sink.write(batch), policy=self.retry_policy, stop=stop, what="ClickHouse insert",
              on_wait=on_wait, on_failure=on_failure)
        self.writing_blocked = False
        inserted = time.monotonic()
        self.dead_letters.flush()
        committed = self.source.commit(held)
        self.metrics.insert_seconds.observe(inserted - started)
        self.metrics.batch_messages.observe(len(held))
        self.metrics.batch_points.observe(batch.points)
        self.metrics.points.inc(batch.points)
        for event_type, count in batch.event_counts.items():
            self.metrics.events.labels(event_type).inc(count)
        for table, rows in batch.table_rows().items():
            self.metrics.rows.labels(table).inc(rows)
        if committed:
            self.metrics.last_commit.set_to_current_time()
        for (topic, partition), lag in self.source.lag(held).items():
            self.metrics.lag.labels(topic, str(partition)).set(lag)
        self.stats.events += batch.events
        self.stats.points += batch.points
        self.stats.batches += 1
        log.info(
            "wrote %d events (%d points) from %d messages in %.3fs",
            batch.events, batch.points, len(held), time.monotonic() - started,
        )


@dataclass
class IngestReport:
    files: int = 0
    events: int = 0
    points: int = 0
    rejected: list[str] = field(default_factory=list)


def ingest_spool(folder: Path, sink: ClickHouseSink, *, batch_max_points: int = 500_000) -> IngestReport:
    """Load every sealed spool file under `folder`. Loading the same files twice stores nothing twice."""
    report = IngestReport()
    batch = Batch()
    for path in spool_files(folder):
        report.files += 1
        for event_type, record in read_spool_file(path):
            try:
                batch.add(event_type, record)
            except InvalidEvent as error:
                report.rejected.append(f"{path}: {error}")
                log.error("rejected an event in %s: %s", path, error)
            if batch.points >= batch_max_points:
                _write(sink, batch, report)
                batch = Batch()
    _write(sink, batch, report)
    return report


def _write(sink: ClickHouseSink, batch: Batch, report: IngestReport) -> None:
    if batch.events:
        sink.write(batch)
        report.events += batch.events
        report.points += batch.points
