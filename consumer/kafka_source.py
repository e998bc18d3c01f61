"""The Kafka source: a consumer-group member that never commits on its own.

Offsets are committed explicitly, after the sink has written the batch that contains them,
so a crash re-delivers at most the batch in hand (and ClickHouse collapses the duplicates).

While a write is being retried the source stays in the group without consuming: every assigned
partition is paused, including partitions a rebalance assigns during the wait, and a message a
poll still returns is sought back, never dropped. With a `group.instance.id` (static membership)
a restarted consumer takes its partitions back at once instead of waiting out its dead
predecessor's session (45 s by default).
"""

from __future__ import annotations

import logging
from typing import Any

from runstream.producer.kafka_settings import KafkaSettings
from runstream.schemas import EVENT_TYPES, topic_for

log = logging.getLogger(__name__)

#: session.timeout.ms for a static member unless the options set it. A static member does not leave
#: the group when it stops (KIP-345; librdkafka has no way to), so a consumer removed by a scale-down
#: or a rollout holds its partitions, and stalls any rebalance, until its session expires: 10 s
#: instead of librdkafka's 45 s bounds that, while a restart within it still rejoins at once.
#: Heartbeats come from librdkafka's own thread, so a long write retry never expires the session.
STATIC_SESSION_TIMEOUT_MS = 10_000


class KafkaSource:
    def __init__(
        self,
        kafka: str | KafkaSettings,
        topic_prefix: str,
        group_id: str,
        *,
        extra_config: dict[str, Any] | None = None,
        instance_id: str | None = None,
    ) -> None:
        """`kafka`: the shared client settings (or bootstrap servers plus `extra_config` librdkafka options);
        the group id and manual offset commits come from `KafkaSettings.consumer_config`, never from options."""
        from confluent_kafka import Consumer

        settings = KafkaSettings.of(kafka, extra_config)
        config = settings.consumer_config(group_id, {
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "client.id": "runstream-consumer",
        })
        if instance_id:
            config["group.instance.id"] = instance_id
            config.setdefault("session.timeout.ms", STATIC_SESSION_TIMEOUT_MS)
        self.topics = [topic_for(topic_prefix, event_type) for event_type in EVENT_TYPES]
        self._paused = False
        #: The (topic, partition) pairs this member owns now, as the rebalance callbacks last set them
        #: (replaced whole, so another thread reads a consistent snapshot): for tests and diagnostics.
        self.assigned: frozenset[tuple[str, int]] = frozenset()
        # The callbacks below take the assignment themselves, which differs by rebalance protocol.
        self._cooperative = "cooperative" in str(config.get("partition.assignment.strategy", ""))
        self._consumer = settings.build(Consumer, config, "consumer")
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    # -- rebalance callbacks (run inside consume()/poll(), on the loop's own thread) -----------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """A partition assigned while a write is being retried starts paused, so nothing is fetched
        that the consumer could not keep."""
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        given = _pairs(partitions)
        self.assigned = self.assigned | given if self._cooperative else given
        if self._paused and partitions:
            consumer.pause(partitions)
            log.info("assigned %d partition(s) during a write retry; they stay paused", len(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Nothing to flush here: offsets are committed only after a write, and `commit` leaves out
        partitions this member no longer owns (their new owner re-reads from the last commit and
        ClickHouse collapses the repeats)."""
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        # from the callback's own list: the client may be closing, when asking it for its assignment fails
        self.assigned = self.assigned - _pairs(partitions) if self._cooperative else frozenset()

    def poll(self, max_messages: int, timeout: float) -> list[Any]:
        """Messages that arrived (possibly none). A broker that is away is logged and waited out
        (librdkafka reconnects by itself); only fatal client errors raise.

        Whatever is already fetched is taken at once, and the wait (up to `timeout`) is only for a
        first message when none is: librdkafka's `consume` would otherwise hold the loop until
        `max_messages` arrived or the timeout passed, idle while messages wait to be decoded."""
        from confluent_kafka import KafkaError, KafkaException

        messages = self._consumer.consume(num_messages=max_messages, timeout=0)
        if not messages:
            first = self._consumer.poll(timeout)
            if first is None:
                return []
            messages = [first]
            if max_messages > 1:
                messages += self._consumer.consume(num_messages=max_messages - 1, timeout=0)
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
        # A partition revoked between the write and this commit belongs to another member now:
        # committing for it could move its new owner's offset back; it re-reads from the last commit.
        owned = _pairs(self._consumer.assignment())
        revoked = [key for key in latest if key not in owned]
        for key in revoked:
            del latest[key]
        if revoked:
            log.info("not committing %d partition(s) revoked since their messages were read", len(revoked))
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

    def keepalive(self, seconds: float) -> int:
        """Stay in the group while a write is being retried: pause every assigned partition (and, via
        `_on_assign`, any assigned during the wait), serve the group protocol, and seek back anything a
        poll still returns, so that no message is consumed and then passed by a later commit."""
        if not self._paused:
            self._paused = True
            assignment = self._consumer.assignment()
            if assignment:
                self._consumer.pause(assignment)
        return self.seek_back(self._consumer.consume(num_messages=1, timeout=seconds))

    def seek_back(self, messages: list[Any]) -> int:
        """Rewind each partition to the first of these messages, so they are fetched again later
        (after a resume); returns how many messages were handed back."""
        from confluent_kafka import TopicPartition

        first: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is not None:
                continue
            key = (message.topic(), message.partition())
            first[key] = min(first.get(key, message.offset()), message.offset())
        for (topic, partition), offset in first.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))
            log.info("sought %s[%d] back to offset %d during a write retry", topic, partition, offset)
        return sum(1 for m in messages if m.error() is None)

    @property
    def paused(self) -> bool:
        return self._paused

    def resume(self) -> None:
        """Fetch again after a write retry ended: every partition assigned now, paused or not."""
        if not self._paused:
            return
        self._paused = False
        assignment = self._consumer.assignment()
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


def _pairs(partitions: list[Any]) -> frozenset[tuple[str, int]]:
    return frozenset((tp.topic, tp.partition) for tp in partitions)
