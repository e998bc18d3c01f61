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
        """Messages that arrived (possibly none); broker errors other than end-of-partition raise."""
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
            else:
                raise KafkaException(error)
        return good

    def commit(self, messages: list[Any]) -> None:
        """Commit the offsets after these messages, synchronously."""
        from confluent_kafka import TopicPartition

        latest: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            latest[key] = max(latest.get(key, -1), message.offset())
        if latest:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in latest.items()], asynchronous=False
            )

    def close(self) -> None:
        self._consumer.close()
