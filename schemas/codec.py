"""Avro single-object encoding: `C3 01`, the writer schema's 8-byte fingerprint, then the body.

The fingerprint lets a consumer pick the writer's schema from the catalogue and resolve it
into the newest reader schema, so producers and consumers can upgrade independently.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro

from runstream.schemas.catalogue import Catalogue, SchemaVersion
from runstream.schemas.columnar import (
    COLUMNAR_METRIC_STEPS_VERSIONS,
    ColumnarDecodeError,
    FieldPlan,
    ManyDecoded,
    decode_many,
    decode_metric_steps,
    encode_metric_steps,
    record_plan,
)

MAGIC = b"\xc3\x01"
#: Below this size a metric_steps body holds a few hundred points at most, and fastavro's one call
#: costs less than the vectorised decoder's fixed numpy overhead per array.
COLUMNAR_MIN_BYTES = 4096
HEADER_SIZE = len(MAGIC) + 8


class DecodeError(Exception):
    """A message that cannot be decoded; carries where it came from, for the dead-letter topic."""

    def __init__(self, reason: str, message: str, *, partition: int | None = None, offset: int | None = None):
        where = f" (partition {partition}, offset {offset})" if partition is not None else ""
        super().__init__(f"{message}{where}")
        self.reason = reason
        self.partition = partition
        self.offset = offset


class Encoder:
    """Encodes event records with the newest schema of their type."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue

    def schema(self, event_type: str) -> SchemaVersion:
        return self._catalogue.latest(event_type)

    def encode(self, event_type: str, record: dict[str, Any]) -> bytes:
        version = self._catalogue.latest(event_type)
        if event_type == "metric_steps" and version.version in COLUMNAR_METRIC_STEPS_VERSIONS:
            return MAGIC + version.fingerprint + encode_metric_steps(record, version.version)
        buffer = io.BytesIO()
        buffer.write(MAGIC)
        buffer.write(version.fingerprint)
        fastavro.schemaless_writer(buffer, version.parsed, record)
        return buffer.getvalue()


class Decoder:
    """Decodes single-object messages into the newest known version of their event type.

    `metric_steps` bodies, most of the traffic, are decoded column by column into numpy
    arrays (`columnar.py`); everything else through fastavro into plain Python values.
    """

    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._plans: dict[bytes, tuple[str, tuple[FieldPlan, ...]] | None] = {}

    def batch_plan(self, header: bytes) -> tuple[str, tuple[FieldPlan, ...]] | None:
        """(event type, plan) for bodies behind this 10-byte header that `decode_many` can read together:
        a known writer schema that is its type's newest (nothing to resolve) and of a flat layout."""
        try:
            return self._plans[header]
        except KeyError:
            pass
        found = None
        if len(header) == HEADER_SIZE and header[:2] == MAGIC:
            writer = self._catalogue.by_fingerprint(bytes(header[2:]))
            if writer is not None and self._catalogue.latest(writer.event_type) is writer:
                plan = record_plan(writer.parsed)
                found = None if plan is None else (writer.event_type, plan)
        if len(self._plans) < 1024:  # bounded: headers are few (one per schema version) unless garbage
            self._plans[bytes(header)] = found
        return found

    @staticmethod
    def decode_many(plan: tuple[FieldPlan, ...], bodies: list[bytes]) -> ManyDecoded:
        """Many single-object messages of one writer schema (see `batch_plan`), decoded together;
        bodies flagged in `bad` are to be decoded one by one with `decode`, which says what is wrong."""
        return decode_many(plan, bodies, HEADER_SIZE)

    def decode(
        self, data: bytes | None, *, partition: int | None = None, offset: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Return (event_type, record); raise DecodeError naming what was wrong.

        A message without a value (a tombstone, or a producer that sent none) and an empty value
        have reasons of their own, so that the dead-letter topic and its metric tell them from
        corrupt bytes: neither is an event, and neither may stop the consumer.
        """
        if data is None:
            raise DecodeError("null_value", "message has no value (null, as a tombstone)",
                              partition=partition, offset=offset)
        if len(data) == 0:
            raise DecodeError("empty_value", "message value is empty (0 bytes)", partition=partition, offset=offset)
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DecodeError(
                "not_single_object",
                f"message of {len(data)} bytes does not start with the Avro single-object marker C3 01",
                partition=partition,
                offset=offset,
            )
        writer = self._catalogue.by_fingerprint(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise DecodeError(
                "unknown_fingerprint",
                f"unknown writer schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()}",
                partition=partition,
                offset=offset,
            )
        reader = self._catalogue.latest(writer.event_type)
        if (writer.event_type == "metric_steps" and writer.version in COLUMNAR_METRIC_STEPS_VERSIONS
                and reader.version in COLUMNAR_METRIC_STEPS_VERSIONS and len(data) >= COLUMNAR_MIN_BYTES):
            try:
                return writer.event_type, decode_metric_steps(bytes(data), HEADER_SIZE, writer.version)
            except ColumnarDecodeError as error:
                raise DecodeError(error.reason, f"metric_steps v{writer.version}: cannot decode body: {error}",
                                  partition=partition, offset=offset) from error
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            if reader.fingerprint == writer.fingerprint:
                record = fastavro.schemaless_reader(body, writer.parsed, None)
            else:
                record = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as error:  # fastavro raises many types on corrupt input
            raise DecodeError(
                "corrupt_body",
                f"{writer.event_type} v{writer.version}: cannot decode body: {type(error).__name__}: {error}",
                partition=partition,
                offset=offset,
            ) from error
        if body.tell() != len(data):
            raise DecodeError(
                "trailing_bytes",
                f"{writer.event_type} v{writer.version}: {len(data) - body.tell()} bytes left after the record",
                partition=partition,
                offset=offset,
            )
        if not isinstance(record, dict):
            raise DecodeError("corrupt_body", "decoded value is not a record", partition=partition, offset=offset)
        return writer.event_type, record
