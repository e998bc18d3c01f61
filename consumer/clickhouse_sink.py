"""The ClickHouse sink: one columnar insert per table per batch, through clickhouse-connect."""

from __future__ import annotations

import logging
from typing import Any

from runstream.consumer.batch import TABLE_COLUMNS, Batch
from runstream.consumer.dsn import connect
from runstream.consumer.migrations import migrate

log = logging.getLogger(__name__)


class ClickHouseSink:
    """Writes batches; `write` returns only once every table's insert was acknowledged."""

    def __init__(self, dsn: str, *, client: Any | None = None, database: str | None = None) -> None:
        if client is None:
            client, database = connect(dsn)
        assert database is not None
        self.client = client
        self.database = database
        migrate(client, database)
        self.rows_written: dict[str, int] = dict.fromkeys(TABLE_COLUMNS, 0)

    def write(self, batch: Batch) -> None:
        for table, names in TABLE_COLUMNS.items():
            rows = batch.rows(table)
            if not rows:
                continue
            if table == "metric_points":
                self.client.insert_arrow(f"{self.database}.{table}", batch.metric_points_table())
                self.rows_written[table] += rows
                continue
            columns = batch.columns[table]
            self.client.insert(
                f"{self.database}.{table}",
                [columns[name] for name in names],
                column_names=list(names),
                column_oriented=True,
            )
            self.rows_written[table] += rows

    def flush(self) -> None:
        """Inserts are synchronous; nothing is held back."""

    def close(self) -> None:
        self.client.close()
