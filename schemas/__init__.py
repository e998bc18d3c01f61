"""The Avro event contract: bundled schema history, fingerprints and the single-object codec."""

from runstream.schemas.catalogue import (
    BUILTIN_AXES,
    CURATION_EVENT_TYPE,
    EVENT_TYPES,
    RUN_END_STATUSES,
    Catalogue,
    SchemaVersion,
    bundled_catalogue,
)
from runstream.schemas.codec import DecodeError, Decoder, Encoder
from runstream.schemas.topics import DEFAULT_TOPIC_PREFIX, dead_letter_topic, topic_for

__all__ = [
    "BUILTIN_AXES",
    "DEFAULT_TOPIC_PREFIX",
    "CURATION_EVENT_TYPE",
    "EVENT_TYPES",
    "RUN_END_STATUSES",
    "Catalogue",
    "DecodeError",
    "Decoder",
    "Encoder",
    "SchemaVersion",
    "bundled_catalogue",
    "dead_letter_topic",
    "topic_for",
]
