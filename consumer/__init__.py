"""The consumer: Kafka (or spool files) into ClickHouse, committing only after the write.

It needs the server extra (`pip install 'runstream[server]'`: pyarrow, clickhouse-connect, chDB,
prometheus-client). Only the DSN helpers are imported with the package, so that the CLI's help and the
bare SDK can import `runstream.consumer.dsn`; the other names load on first use and, when the extra is
missing, raise an ImportError naming it (runstream.extras).
"""

from typing import TYPE_CHECKING, Any

from runstream.consumer.dsn import connect, default_dsn, parse_dsn, redact
from runstream.extras import lazy_attribute

if TYPE_CHECKING:
    from runstream.consumer.clickhouse_sink import ClickHouseSink
    from runstream.consumer.ingest import IngestReport, ingest_spool
    from runstream.consumer.service import ConsumerService, ConsumerSettings

_LAZY = {
    "ClickHouseSink": "runstream.consumer.clickhouse_sink",
    "ConsumerService": "runstream.consumer.service",
    "ConsumerSettings": "runstream.consumer.service",
    "IngestReport": "runstream.consumer.ingest",
    "ingest_spool": "runstream.consumer.ingest",
}

__all__ = [
    "ClickHouseSink",
    "ConsumerService",
    "ConsumerSettings",
    "IngestReport",
    "connect",
    "default_dsn",
    "ingest_spool",
    "parse_dsn",
    "redact",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runstream.consumer' has no attribute {name!r}")
    value = lazy_attribute("runstream.consumer", name, module)
    globals()[name] = value
    return value
