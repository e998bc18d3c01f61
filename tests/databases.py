"""A DSN naming a database of its own: per test (the `clickhouse_dsn` fixture) or per module (module fixtures
that load one workload for many tests), so no test sees another's rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest


def fresh_database_dsn(clickhouse_base: str, prefix: str = "t") -> str:
    """`clickhouse_base` (chdb:///path or http(s)://host:port) with a new database `<prefix>_<12 hex>`."""
    database = f"{prefix}_{uuid.uuid4().hex[:12]}"
    if clickhouse_base.startswith("chdb:"):
        return f"{clickhouse_base}?database={database}"
    return f"{clickhouse_base}/{database}"


def spool_workload_dsn(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory, prefix: str,
                       log: Callable[[Path], None]) -> str:
    """A fresh database holding what `log` wrote to a spool folder of its own, loaded as users load it
    (`runstream ingest`: the consumer's sink); a module's workload for its `dsn` fixture."""
    from runstream.consumer import ClickHouseSink, ingest_spool

    dsn = fresh_database_dsn(clickhouse_base, prefix)
    spool = tmp_path_factory.mktemp(f"{prefix}-spool")
    log(spool)
    report = ingest_spool(spool, ClickHouseSink(dsn))
    assert not report.rejected, report.rejected
    return dsn
