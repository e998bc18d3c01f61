"""Kafka topic names: one topic per event type, so new event types never reach old consumers.

Every message is keyed by run id, so one run's events of a type stay in order on one partition.
"""

from __future__ import annotations

DEFAULT_TOPIC_PREFIX = "runstream."


def topic_for(prefix: str, event_type: str) -> str:
    return f"{prefix}{event_type}"


def dead_letter_topic(prefix: str) -> str:
    return f"{prefix}dead_letter"
