"""The consume loop: source → decode → batch → sink, then commit.

Nothing is committed before the sink returned, and nothing undecodable is committed before its
dead letter was acknowledged: a crash anywhere re-delivers, never loses.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.consumer.batch import TABLE_COLUMNS, Batch, InvalidEvent
from runstream.consumer.clickhouse_sink import ClickHouseSink, blames_the_rows
from runstream.consumer.config import (
    DEFAULT_BATCH_MAX_MESSAGES,
    DEFAULT_BATCH_MAX_POINTS,
    DEFAULT_BATCH_MAX_WAIT_S,
    DEFAULT_GROUP,
    DEFAULT_PARTITIONS,
)
from runstream.consumer.dead_letters import DeadLetters
from runstream.consumer.kafka_source import KafkaSource
from runstream.consumer.metrics import ConsumerMetrics
from runstream.consumer.retry import RetryPolicy, ShutdownRequested, is_retryable, retry, retry_reason
from runstream.consumer.topics_admin import ensure_topics
from runstream.producer.kafka_settings import Options
from runstream.schemas import DEFAULT_TOPIC_PREFIX, DecodeError, Decoder, bundled_catalogue

log = logging.getLogger(__name__)

#: The dead-letter reason of an event that passed the checks but that ClickHouse (or its client)
#: refused in the insert; the error code goes in the `runstream.error_code` header.
REJECTED_BY_CLICKHOUSE = "rejected_by_clickhouse"


def _message_key(message: Any) -> tuple[str, int, int]:
    return (message.topic(), message.partition(), message.offset())


#: The fewest bytes a metric point takes in a metric_steps body (a one-byte index, step and time, and
#: an 8-byte value): a chunk of N bytes holds at most N / MIN_POINT_BYTES points.
MIN_POINT_BYTES = 11


def _chunk_size(messages: list[Any], message_room: int, point_room: int) -> int:
    """How many of `messages` to add to the batch at once: no more than it has room for, in messages
    and (bounded by their size, before decoding) in points; always at least one."""
    budget = max(point_room, 0) * MIN_POINT_BYTES
    take = size = 0
    for message in messages[: max(message_room, 1)]:
        value = message.value()
        size += len(value) if value else 0
        if take and size > budget:
            break
        take += 1
    return take

#: The consumer's write retries: no attempt limit and no deadline, because a storage outage (a full
#: disk, a read-only volume, ClickHouse restarting) may last longer than any give-up, and exiting
#: would only move the same wait to a restarted process. The back-off stays short so that writes
#: resume within seconds of the fault clearing.
CONSUMER_RETRY = RetryPolicy(attempts=None, deadline_s=None, initial_backoff_s=0.5, max_backoff_s=5.0)

#: After a stop request, how long the batch in hand may still be retried before the consumer leaves
#: it uncommitted (Kafka redelivers it): well inside Kubernetes' default 30 s grace period.
FINAL_WRITE_GRACE_S = 10.0

#: Fault injection for the crash tests (as Kafka's system tests do): when set to a path, the service
#: writes that file after its first successful insert and then waits, without committing, until the
#: process is killed. Read once per process; never set it in production.
FAULT_AFTER_INSERT_ENV = "RUNSTREAM_FAULT_AFTER_INSERT"


@dataclass(frozen=True)
class ConsumerSettings:
    kafka: str
    clickhouse: str = field(repr=False)  # may hold a password
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    group_id: str = DEFAULT_GROUP
    batch_max_points: int = DEFAULT_BATCH_MAX_POINTS
    batch_max_messages: int = DEFAULT_BATCH_MAX_MESSAGES
    batch_max_wait_s: float = DEFAULT_BATCH_MAX_WAIT_S
    poll_timeout_s: float = 0.25
    partitions: int = DEFAULT_PARTITIONS
    #: `group.instance.id` (static membership): a restarted consumer with the same id takes its
    #: partitions back at once; None or "" = dynamic membership. Must be unique within the group.
    instance_id: str | None = None
    #: librdkafka options passed through (security.protocol, sasl.*, ssl.*, ...); secrets are `Secret`s.
    kafka_options: Options = field(default=(), repr=False)
    #: Topics this consumer creates: None = the broker's default factor; min.insync.replicas None = 2 when
    #: the effective factor is >= 3.
    replication_factor: int | None = None
    min_insync_replicas: int | None = None

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
    rank_points: int = 0  # other ranks' points (log_all_ranks), stored apart from the runs' curves
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
        self.retry_policy = retry_policy or CONSUMER_RETRY
        self.sink = sink or ClickHouseSink(settings.clickhouse)
        kafka_options = dict(settings.kafka_options)
        if source is None:
            ensure_topics(settings.kafka, settings.topic_prefix, partitions=settings.partitions,
                          replication_factor=settings.replication_factor,
                          min_insync_replicas=settings.min_insync_replicas, extra_config=kafka_options)
        self.source = source or KafkaSource(settings.kafka, settings.topic_prefix, settings.group_id,
                                            extra_config=kafka_options, instance_id=settings.instance_id)
        self.dead_letters = dead_letters or DeadLetters(settings.kafka, settings.topic_prefix, kafka_options)
        self.decoder = Decoder(bundled_catalogue())
        self.stats = ConsumeStats()
        self._stop = threading.Event()
        self.last_loop_at = time.monotonic()
        self.writing_blocked = False
        self._fault_after_insert = os.environ.get(FAULT_AFTER_INSERT_ENV) or None

    def _new_batch(self) -> Batch:
        """A batch that checks forked starts against the store, when the sink offers the check
        (runstream.consumer.fork_checks)."""
        return Batch(fork_check=getattr(self.sink, "fork_checks", None),
                     resume_check=getattr(self.sink, "resume_checks", None))

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
        batch = self._new_batch()
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
                rest = messages
                while rest:
                    if not held:
                        opened = now
                    take = _chunk_size(rest, s.batch_max_messages - len(held), s.batch_max_points - batch.points)
                    chunk, rest = rest[:take], rest[take:]
                    self._add_messages(batch, chunk)
                    held.extend(chunk)
                    if batch.points >= s.batch_max_points or len(held) >= s.batch_max_messages:
                        self._write_and_commit(batch, held)
                        batch, held = self._new_batch(), []
                if held and time.monotonic() - opened >= s.batch_max_wait_s:
                    self._write_and_commit(batch, held)
                    batch, held = self._new_batch(), []
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

    def _add_messages(self, batch: Batch, messages: list[Any]) -> None:
        """Add a chunk of a poll to the batch (decoded and checked together, see `Batch.add_messages`)
        and dead-letter exactly the messages it rejects; the message counter moves once per topic."""
        self.stats.messages += len(messages)
        for topic, count in Counter([message.topic() for message in messages]).items():
            self.metrics.messages_of(topic).inc(count)
        for message, error in batch.add_messages(self.decoder, messages):
            batch.rejected.add(_message_key(message))
            self._dead_letter(message, error.reason, str(error))

    def _dead_letter(self, message: Any, reason: str, error: str, *, code: int | None = None) -> None:
        self.dead_letters.send(message, reason, error, code=code)
        self.metrics.dead_letters.labels(reason).inc()
        self.stats.dead_letters += 1

    # -- isolating what ClickHouse rejects ----------------------------------------------------

    def _write_isolating(self, batch: Batch, held: list[Any]) -> None:
        """Write the batch; when ClickHouse rejects it for its rows, split it until the rejected
        events are found, dead-letter those and write the rest.

        The column checks in `Batch.add` catch what the column types forbid; this catches what only
        the server knows (a constraint, a limit). Retryable errors, and errors that blame the table
        or the account rather than the rows, propagate unchanged: the retry around this call backs
        off and calls it again, and then messages isolated by an earlier attempt stay out (they are
        in `batch.rejected`) and are not dead-lettered twice. Splitting bisects the held messages,
        re-decoding each half into a batch of its own, and writes each half only from the table
        whose insert failed on (the tables before it were written whole), so a rejected event costs
        O(log n) extra inserts. An event whose insert failed on its second table keeps its rows of
        the first (ClickHouse has no multi-table transaction); its bytes are in the dead letter.
        """
        if batch.isolating:  # a retry after an isolation began: the whole batch is known to fail
            self._write_split(batch, self._rebatch(batch, held), held, 0)
        else:
            self._write_split(batch, batch, held, 0)

    def _write_split(self, whole: Batch, part: Batch, messages: list[Any], first_table: int) -> None:
        tables = tuple(TABLE_COLUMNS)[first_table:]
        try:
            if part is whole and first_table == 0:
                self.sink.write(part)  # the plain call: any Sink, and the common case
            else:
                self.sink.write(part, tables)
        except Exception as error:
            if is_retryable(error) or not blames_the_rows(error):
                raise
            completed = getattr(self.sink, "completed", ())
            failed_at = first_table + len([table for table in completed if table in tables])
            whole.isolating = True
            self._split(whole, messages, failed_at, error)

    def _split(self, whole: Batch, messages: list[Any], failed_at: int, error: BaseException) -> None:
        live = [message for message in messages if _message_key(message) not in whole.rejected]
        if len(live) <= 1:
            if not live:  # nothing left to blame: not a row problem after all
                raise error
            self._reject_after_insert(whole, live[0], tuple(TABLE_COLUMNS)[failed_at], error)
            return
        middle = len(live) // 2
        for half in (live[:middle], live[middle:]):
            self._write_split(whole, self._rebatch(whole, half), half, failed_at)

    def _rebatch(self, whole: Batch, messages: list[Any]) -> Batch:
        """The events of `messages` decoded again into a batch of their own (minus those rejected)."""
        part = self._new_batch()
        for message in messages:
            if _message_key(message) in whole.rejected:
                continue
            try:
                part.add(*self.decoder.decode(message.value(), partition=message.partition(),
                                              offset=message.offset()))
            except (DecodeError, InvalidEvent) as error:  # passed before; a clock step could change that
                whole.rejected.add(_message_key(message))
                self._dead_letter(message, error.reason, str(error))
        return part

    def _reject_after_insert(self, whole: Batch, message: Any, table: str, error: BaseException) -> None:
        own = self._rebatch(whole, [message])
        whole.rejected.add(_message_key(message))
        whole.discount(own)
        code = getattr(error, "code", None)
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        what = f"ClickHouse error {code}" if code is not None else type(error).__name__
        detail = " ".join(str(error).split())[:500]
        self._dead_letter(message, REJECTED_BY_CLICKHOUSE, f"insert into {table} rejected ({what}): {detail}",
                          code=code)

    def _write_and_commit(self, batch: Batch, held: list[Any], *, final: bool = False) -> None:
        started = time.monotonic()
        # On the final write after a stop request, retries must not wait on the (set) stop event,
        # but they are bounded: a stop during an outage leaves the batch uncommitted for redelivery.
        stop = threading.Event() if final else self._stop
        policy = self.retry_policy
        if final:
            grace = FINAL_WRITE_GRACE_S if policy.deadline_s is None else min(policy.deadline_s, FINAL_WRITE_GRACE_S)
            policy = dataclasses.replace(policy, deadline_s=grace)

        def on_failure(error: BaseException) -> None:
            if not self.writing_blocked:
                self.writing_blocked = True
                self.metrics.write_blocked.set(1)
            self.metrics.write_retries.inc()
            self.metrics.write_retry_reasons.labels(retry_reason(error)).inc()

        def on_wait(seconds: float) -> None:
            self.last_loop_at = time.monotonic()
            handed_back = self.source.keepalive(seconds)
            if handed_back:
                self.metrics.sought_back.inc(handed_back)

        try:
            retry(lambda: self._write_isolating(batch, held), policy=policy, stop=stop, what="ClickHouse insert",
                  on_wait=on_wait, on_failure=on_failure)
        except Exception as error:
            if final and is_retryable(error):
                raise ShutdownRequested(
                    f"ClickHouse insert: still failing {FINAL_WRITE_GRACE_S:.0f}s after the stop request "
                    f"({retry_reason(error)})"
                ) from error
            raise
        finally:
            if self.writing_blocked:
                self.writing_blocked = False
                self.metrics.write_blocked.set(0)
                self.metrics.write_blocked_seconds.inc(time.monotonic() - started)
        self.source.resume()
        inserted = time.monotonic()
        if self._fault_after_insert:
            self._crash_window(self._fault_after_insert)
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
        self.stats.rank_points += batch.rows("rank_metric_points")
        self.stats.batches += 1
        log.info(
            "wrote %d events (%d points) from %d messages in %.3fs",
            batch.events, batch.points, len(held), time.monotonic() - started,
        )


    def _crash_window(self, path: str) -> None:
        """The fault-injection hook (see FAULT_AFTER_INSERT_ENV): written, not committed, waiting to be killed."""
        Path(path).write_text(f"{os.getpid()}\n", encoding="utf-8")
        log.warning("fault injection: inserted, not committed; waiting to be killed")
        while True:
            threading.Event().wait(3600)
