"""Creates the contract's topics before consuming, so a fresh broker needs no manual set-up."""

from __future__ import annotations

import logging
from typing import Any

from runstream.schemas import EVENT_TYPES, dead_letter_topic, topic_for

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap_servers: str,
    topic_prefix: str,
    *,
    partitions: int = 6,
    replication_factor: int = 1,
    extra_config: dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create missing topics (one per event type, plus dead letters); return the names created."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **(extra_config or {})})
    names = [topic_for(topic_prefix, t) for t in EVENT_TYPES] + [dead_letter_topic(topic_prefix)]
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor)
              for n in names if n not in existing]
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items() if wanted else []:
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    if created:
        log.info("created topics %s", ", ".join(created))
    return created
