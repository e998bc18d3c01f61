"""The dead-letter topic: every message the consumer cannot store, with its bytes and the reason."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from runstream.producer.kafka_settings import KafkaSettings
from runstream.schemas import dead_letter_topic

log = logging.getLogger(__name__)


class DeadLetters:
    """Produces rejected messages (original key and value) with headers saying where and why."""

    def __init__(self, kafka: str | KafkaSettings, topic_prefix: str, extra_config: dict[str, Any] | None = None):
        """`kafka`: the shared client settings (or bootstrap servers plus `extra_config` librdkafka options);
        acks=all and idempotence come from `KafkaSettings.producer_config` and cannot be overridden."""
        from confluent_kafka import Producer

        settings = KafkaSettings.of(kafka, extra_config)
        config = settings.producer_config({"client.id": "runstream-dead-letters"})
        self._producer = settings.build(Producer, config, "dead-letter producer")
        self.topic = dead_letter_topic(topic_prefix)
        self.counts: Counter[str] = Counter()
        self._failed = 0

    def _on_delivery(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._failed += 1

    def send(self, message: Any, reason: str, error: str, *, code: int | None = None) -> None:
        """Produce the message's original key and value (None stays None: a tombstone is kept as one)
        with headers saying where it came from and why; `code` is the ClickHouse error code, if any."""
        headers: list[tuple[str, str | bytes | None]] = [
            ("runstream.reason", reason.encode()),
            ("runstream.error", error.encode("utf-8", "backslashreplace")),
            ("runstream.topic", str(message.topic()).encode()),
            ("runstream.partition", str(message.partition()).encode()),
            ("runstream.offset", str(message.offset()).encode()),
        ]
        if code is not None:
            headers.append(("runstream.error_code", str(code).encode()))
        while True:
            try:
                self._producer.produce(
                    self.topic, value=message.value(), key=message.key(), headers=headers,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:  # the local queue is full (a burst of poison): let deliveries drain
                self._producer.poll(0.1)
        self._producer.poll(0)
        self.counts[reason] += 1
        log.warning(
            "dead-lettered %s[%s]@%s (%s): %s", message.topic(), message.partition(), message.offset(), reason, error
        )

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every dead letter is acknowledged: the source's offsets are committed after this."""
        remaining = self._producer.flush(timeout)
        if remaining or self._failed:
            failed, self._failed = self._failed, 0
            raise RuntimeError(f"dead-letter topic {self.topic}: {remaining} pending, {failed} failed deliveries")
