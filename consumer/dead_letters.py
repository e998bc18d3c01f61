"""The dead-letter topic: every message the consumer cannot store, with its bytes and the reason."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from runstream.schemas import dead_letter_topic

log = logging.getLogger(__name__)


class DeadLetters:
    """Produces rejected messages (original key and value) with headers saying where and why."""

    def __init__(self, bootstrap_servers: str, topic_prefix: str, extra_config: dict[str, Any] | None = None):
        from confluent_kafka import Producer

        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "client.id": "runstream-dead-letters",
        }
        config.update(extra_config or {})
        self._producer = Producer(config)
        self.topic = dead_letter_topic(topic_prefix)
        self.counts: Counter[str] = Counter()
        self._failed = 0

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._failed += 1

    def send(self, message: Any, reason: str, error: str) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("runstream.reason", reason.encode()),
            ("runstream.error", error.encode()),
            ("runstream.topic", str(message.topic()).encode()),
            ("runstream.partition", str(message.partition()).encode()),
            ("runstream.offset", str(message.offset()).encode()),
        ]
        self._producer.produce(
            self.topic, value=message.value(), key=message.key(), headers=headers, on_delivery=self._on_delivery
        )
        self._producer.poll(0)
        self.counts[reason] += 1
        log.warning(
            "dead-lettered %s[%s]@%s: %s", message.topic(), message.partition(), message.offset(), error
        )

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every dead letter is acknowledged: the source's offsets are committed after this."""
        remaining = self._producer.flush(timeout)
        if remaining or self._failed:
            failed, self._failed = self._failed, 0
            raise RuntimeError(f"dead-letter topic {self.topic}: {remaining} pending, {failed} failed deliveries")
