"""Creates the contract's topics before consuming, so a fresh broker needs no manual set-up.

It owns the topics' durability settings: the replication factor (default: the brokers' own
`default.replication.factor`) and `min.insync.replicas` (default 2 once the factor is 3 or more),
which together with the producers' acks=all decide how many broker losses lose nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from runstream.producer.kafka_settings import ErrorWatch, KafkaSettings
from runstream.schemas import CURATION_EVENT_TYPE, EVENT_TYPES, dead_letter_topic, topic_for

log = logging.getLogger(__name__)

#: min.insync.replicas given to new topics when the effective replication factor is at least this.
DURABLE_FACTOR = 3
DURABLE_MIN_INSYNC = 2


def default_min_insync(replication_factor: int | None) -> int | None:
    """2 for a factor of 3 or more (one broker may be lost without refusing writes); otherwise leave the
    broker's default, since requiring 2 of 1 or 2 replicas would stop writes at the first broker loss."""
    if replication_factor is not None and replication_factor >= DURABLE_FACTOR:
        return DURABLE_MIN_INSYNC
    return None


def ensure_topics(
    kafka: str | KafkaSettings,
    topic_prefix: str,
    *,
    partitions: int = 6,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
    extra_config: dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create missing topics (one per event type, plus dead letters); return the names created.

    `replication_factor` None uses the brokers' default; `min_insync_replicas` None means 2 when the
    effective factor is >= 3. Topics that already exist are left as they are (a warning says when they
    have fewer replicas than asked). Credentials the brokers refuse raise `KafkaAuthenticationError`.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    if replication_factor is not None and (isinstance(replication_factor, bool) or replication_factor < 1):
        raise ValueError(f"replication_factor: expected at least 1 (or none for the brokers' default), "
                         f"got {replication_factor!r}")
    if min_insync_replicas is not None and (isinstance(min_insync_replicas, bool) or min_insync_replicas < 1):
        raise ValueError(f"min_insync_replicas: expected at least 1, got {min_insync_replicas!r}")
    if replication_factor is not None and min_insync_replicas is not None and min_insync_replicas > replication_factor:
        raise ValueError(f"min_insync_replicas: {min_insync_replicas} is more than replication_factor "
                         f"{replication_factor}: no write could ever be acknowledged")
    settings = KafkaSettings.of(kafka, extra_config)
    errors = ErrorWatch(settings, "admin")
    config = settings.admin_config({"client.id": "runstream-admin"})
    config["error_cb"] = errors
    admin = settings.build(AdminClient, config, "admin client")
    metadata = _metadata(admin, errors, timeout)
    names = [topic_for(topic_prefix, t) for t in EVENT_TYPES] + [dead_letter_topic(topic_prefix)]
    if replication_factor is not None:
        _warn_if_fewer_replicas(metadata, [n for n in names if n in metadata.topics], replication_factor)
    missing = [n for n in names if n not in metadata.topics]
    if not missing:
        return []
    factor = replication_factor or _broker_default_factor(admin, metadata, timeout)
    min_insync = min_insync_replicas if min_insync_replicas is not None else default_min_insync(factor)
    if factor is not None and min_insync is not None and min_insync > factor:
        raise ValueError(f"min_insync_replicas: {min_insync} is more than the brokers' default replication factor "
                         f"{factor}: no write could ever be acknowledged")
    topic_config = {"min.insync.replicas": str(min_insync)} if min_insync is not None else {}
    # Curation messages carry a run's whole curated state, so compaction (the last per run id) loses nothing.
    compacted = topic_for(topic_prefix, CURATION_EVENT_TYPE)
    wanted = [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor or -1,
                       config={**topic_config, "cleanup.policy": "compact"} if n == compacted else topic_config)
              for n in missing]
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    if created:
        log.info("created topics %s (replication factor %s, min.insync.replicas %s)", ", ".join(created),
                 factor if factor is not None else "broker default",
                 min_insync if min_insync is not None else "broker default")
    return created


def _metadata(admin: Any, errors: ErrorWatch, timeout: float) -> Any:
    """The cluster's metadata; a refused login raises at once rather than after `timeout`."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        except KafkaException:
            admin.poll(0.1)  # serves error_cb, which records an authentication failure
            errors.check()
            if time.monotonic() >= deadline:
                raise


def _broker_default_factor(admin: Any, metadata: Any, timeout: float) -> int | None:
    """`default.replication.factor` of a broker (what replication factor -1 gives), or None if it cannot be read
    (e.g. no DescribeConfigs permission); then min.insync.replicas is left to the brokers."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    if not metadata.brokers:
        return None
    broker = str(min(metadata.brokers))
    try:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.BROKER, broker)],
                                         request_timeout=timeout)
        entries = next(iter(futures.values())).result(timeout)
        return int(entries["default.replication.factor"].value)
    except (KafkaException, KeyError, ValueError, TypeError) as error:
        log.warning("could not read the brokers' default.replication.factor (%s); new topics get the brokers' "
                    "defaults for replication and min.insync.replicas", error)
        return None


def _warn_if_fewer_replicas(metadata: Any, names: list[str], factor: int) -> None:
    for name in names:
        partitions = metadata.topics[name].partitions.values()
        fewest = min((len(p.replicas) for p in partitions), default=factor)
        if fewest < factor:
            log.warning("topic %s exists with %d replica(s) per partition, fewer than the replication factor %d "
                        "asked for; runstream does not change existing topics (use kafka-reassign-partitions)",
                        name, fewest, factor)
