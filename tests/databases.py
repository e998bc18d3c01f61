"""A DSN naming a database of its own: per test (the `clickhouse_dsn` fixture) or per module (module fixtures
that load one workload for many tests), so no test sees another's rows."""

from __future__ import annotations

import uuid


def fresh_database_dsn(clickhouse_base: str, prefix: str = "t") -> str:
    """`clickhouse_base` (chdb:///path or http(s)://host:port) with a new database `<prefix>_<12 hex>`."""
    database = f"{prefix}_{uuid.uuid4().hex[:12]}"
    if clickhouse_base.startswith("chdb:"):
        return f"{clickhouse_base}?database={database}"
    return f"{clickhouse_base}/{database}"
