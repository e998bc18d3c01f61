"""The consumer: Kafka (or spool files) into ClickHouse, committing only after the write."""

from runstream.consumer.clickhouse_sink import ClickHouseSink
from runstream.consumer.dsn import connect, default_dsn, parse_dsn, redact
from runstream.consumer.service import ConsumerService, ConsumerSettings, ingest_spool

__all__ = [
    "ClickHouseSink",
    "ConsumerService",
    "ConsumerSettings",
    "connect",
    "default_dsn",
    "ingest_spool",
    "parse_dsn",
    "redact",
]
