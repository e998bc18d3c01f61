"""The consumer's Prometheus metrics, on a registry of its own so tests and processes never share one."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter("runstream_consumer_messages", "Kafka messages consumed", ["topic"], registry=r)
        self._messages_of: dict[str, Any] = {}
        self.events = Counter("runstream_consumer_events", "Events stored, by type", ["event_type"], registry=r)
        self.points = Counter("runstream_consumer_metric_points", "Metric points stored", registry=r)
        self.rows = Counter("runstream_consumer_rows_inserted", "Rows inserted, by table", ["table"], registry=r)
        self.dead_letters = Counter(
            "runstream_consumer_dead_letters", "Messages sent to the dead-letter topic, by reason", ["reason"],
            registry=r,
        )
        self.batch_messages = Histogram(
            "runstream_consumer_batch_messages", "Messages per written batch",
            buckets=(1, 10, 100, 1_000, 5_000, 20_000, 100_000), registry=r,
        )
        self.batch_points = Histogram(
            "runstream_consumer_batch_points", "Metric points per written batch",
            buckets=(0, 1_000, 10_000, 100_000, 500_000, 1_000_000, 5_000_000), registry=r,
        )
        self.insert_seconds = Histogram(
            "runstream_consumer_insert_seconds", "Time to write one batch to ClickHouse",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )
        self.write_retries = Counter(
            "runstream_consumer_write_retries", "Batch writes or commits that failed and were retried", registry=r
        )
        self.write_retry_reasons = Counter(
            "runstream_consumer_write_retry_reasons",
            "Failed batch writes that will be retried, by reason (storage_243 = disk full, storage_1001 = "
            "filesystem error, connection, timeout, clickhouse_CODE)", ["reason"], registry=r,
        )
        self.write_blocked = Gauge(
            "runstream_consumer_write_blocked",
            "1 while a batch write is being retried (nothing is consumed or committed; /readyz fails)", registry=r,
        )
        self.write_blocked_seconds = Counter(
            "runstream_consumer_write_blocked_seconds", "Time spent with a batch write blocked in retries",
            registry=r,
        )
        self.sought_back = Counter(
            "runstream_consumer_messages_sought_back",
            "Messages a poll returned during a write retry, handed back to Kafka (sought back) instead of dropped",
            registry=r,
        )
        self.lag = Gauge(
            "runstream_consumer_lag", "Messages behind the partition's high watermark", ["topic", "partition"],
            registry=r,
        )
        self.last_commit = Gauge(
            "runstream_consumer_last_commit_timestamp_seconds", "Unix time of the last successful commit", registry=r
        )

    def messages_of(self, topic: str) -> Any:
        """The message counter of one topic, looked up once (a label lookup takes a lock and a hash)."""
        child = self._messages_of.get(topic)
        if child is None:
            child = self._messages_of[topic] = self.messages.labels(topic)
        return child
