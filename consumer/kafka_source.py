"""The Kafka source: a consumer-group member that never commits on its own.

Offsets are committed explicitly, after the sink has written the batch that contains them,
so a crash re-delivers at most the batch in hand (and ClickHouse collapses the duplicates).
"""

from __future__ import annotations

import logging
from typing import Any

from runstream.schemas import EVENT_TYPES, topic_for

log = logging.getLogger(__name__)


class KafkaSource:
    def __init__(
        self,
        bootstrap_servers: str,
        topic_prefix: str,
        group_id: str,
        *,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        from confluent_kafka import Consumer

        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "client.id": "runstream-consumer",
        }
        config.update(extra_config or {})
        self.topics = [topic_for(topic_prefix, event_type) for event_type in EVENT_TYPES]
        self._consumer = Consumer(config)
        self._consumer.subscribe(self.topics)

    def poll(self, max_messages: int, timeout: float) -> list[Any]:
        """Messages that arrived (possibly none). A broker that is away is logged and waited out
        (librdkafka reconnects by itself); only fatal client errors raise."""
        from confluent_kafka import KafkaError, KafkaException

        messages = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.debug("topic not created yet: %s", error)
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("Kafka: %s (the client retries by itself)", error)
        return good

    def commit(self, messages: list[Any]) -> bool:
        """Commit the offsets after these messages, synchronously; False when the group moved on.

        A commit refused because the partitions were reassigned (rebalance) is not an error:
        their new owner re-reads from the last commit and ClickHouse collapses the repeats.
        """
        from confluent_kafka import KafkaException, TopicPartition

        latest: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            latest[key] = max(latest.get(key, -1), message.offset())
        if not latest:
            return False
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]
        for attempt in range(5):
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
                return True
            except KafkaException as error:
                kafka_error = error.args[0]
                if kafka_error.retriable() and attempt < 4:
                    log.warning("commit failed (%s); retrying", kafka_error)
                    self._consumer.poll(0.5 * (attempt + 1))
                    continue
                log.warning("commit not accepted (%s); the next owner of these partitions re-reads them",
                            kafka_error)
                return False
        return False

    def keepalive(self, seconds: float) -> None:
        """Stay in the group while a write is being retried: pause fetching, serve the protocol."""
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
        try:
            self._consumer.consume(num_messages=1, timeout=seconds)
        finally:
            if assignment:
                self._consumer.resume(assignment)

    def lag(self, messages: list[Any]) -> dict[tuple[str, int], int]:
        """Messages between the last one handled and the partition's high watermark (as last fetched)."""
        from confluent_kafka import TopicPartition

        latest: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            latest[key] = max(latest.get(key, -1), message.offset())
        lags = {}
        for (topic, partition), offset in latest.items():
            try:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except Exception as error:
                log.debug("no watermark for %s[%d]: %s", topic, partition, error)
                continue
            if high >= 0:
                lags[(topic, partition)] = max(0, high - offset - 1)
        return lags

    def close(self) -> None:
        self._consumer.close()
