"""The ClickHouse sink: one columnar insert per table per batch, through clickhouse-connect.

An insert block may touch at most `max_partitions_per_insert_block` partitions (100 by default);
a batch whose rows span more months of a monthly-partitioned table (one event can: a run resumed
from years of history) is written as several inserts of at most that many months each, rather
than failing with TOO_MANY_PARTS on every retry. The sink also says which of its errors blame
the rows (`blames_the_rows`), so that the consumer splits a batch only when that can help.

After a batch's inserts, the sink rewrites the compact per-run summary of every run the batch
touched (`runstream.consumer.run_summary.refresh`), before `write` returns and so before the
consumer commits: a crash between the two gets the batch redelivered, which recomputes.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from runstream.consumer.batch import TABLE_COLUMNS, Batch
from runstream.consumer.column_checks import partition_columns
from runstream.consumer.dsn import connect
from runstream.consumer.fork_checks import ForkChecks
from runstream.consumer.migrations import migrate
from runstream.consumer.resumed_runs import ResumedRuns
from runstream.consumer.retry import is_retryable
from runstream.consumer.run_deletion import apply_deletions
from runstream.consumer.run_projects import PROJECT_COLUMN, RAW_TABLES, RunProjects
from runstream.consumer.run_summary import SOURCE_TABLES, refresh
from runstream.consumer.superseded import SupersededCopier

log = logging.getLogger(__name__)

#: ClickHouse's default `max_partitions_per_insert_block`, used when the server's value cannot be read.
DEFAULT_MAX_PARTITIONS_PER_INSERT = 100

#: Fault injection for the crash tests, as the service's RUNSTREAM_FAULT_AFTER_INSERT: when set to a path,
#: the sink writes that file after a batch's inserts, before the summary refresh, and waits to be
#: killed (the window between the two). Read once per sink; never set it in production.
FAULT_BEFORE_SUMMARY_ENV = "RUNSTREAM_FAULT_BEFORE_SUMMARY"

#: Tables partitioned by the month of a column: table -> that column (from the DDL).
MONTH_PARTITIONED: dict[str, str] = partition_columns(TABLE_COLUMNS)

#: ClickHouse error codes that blame values of the rows inserted (checked with errorCodeToName): a
#: batch failing with one of these is split to find the rows. Any other non-retryable code (an unknown
#: table, a missing column, a refused account, a fault nobody listed) propagates: splitting could not
#: help, and dead-lettering message after message would throw good data away.
#: 6 CANNOT_PARSE_TEXT, 26 CANNOT_PARSE_QUOTED_STRING, 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED,
#: 36 BAD_ARGUMENTS, 38 CANNOT_PARSE_DATE, 41 CANNOT_PARSE_DATETIME, 43 ILLEGAL_TYPE_OF_ARGUMENT,
#: 44 ILLEGAL_COLUMN, 53 TYPE_MISMATCH, 69 ARGUMENT_OUT_OF_BOUND, 70 CANNOT_CONVERT_TYPE, 72 CANNOT_PARSE_NUMBER,
#: 117 INCORRECT_DATA, 128 TOO_LARGE_ARRAY_SIZE, 131 TOO_LARGE_STRING_SIZE, 153 ILLEGAL_DIVISION,
#: 190 SIZES_OF_ARRAYS_DONT_MATCH, 321 VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, 349 CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN,
#: 395 FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (a throwIf in a materialized view), 407 DECIMAL_OVERFLOW,
#: 469 VIOLATED_CONSTRAINT.
ROW_ERROR_CODES = frozenset({6, 26, 27, 36, 38, 41, 43, 44, 53, 69, 70, 72, 117, 128, 131, 153, 190, 321, 349,
                             395, 407, 469})


def blames_the_rows(error: BaseException) -> bool:
    """Whether a non-retryable insert error comes from the values of some rows (a server-side check
    such as a CHECK constraint, a value the client cannot serialise), so that splitting the batch
    can find them; errors about the table, the schema or the account cannot be split away."""
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError

    if isinstance(error, DataError):  # the client could not serialise a value
        return True
    if isinstance(error, DatabaseError):
        code = getattr(error, "code", None)
        return isinstance(code, int) and code in ROW_ERROR_CODES
    # What the client raises while serialising one value (out of range, not encodable, not a number).
    return isinstance(error, ValueError | OverflowError | struct.error | pa.ArrowException)


def _months(times: Any) -> np.ndarray[Any, Any]:
    """Month numbers (months since 1970-01, UTC) of microsecond timestamps, as toYYYYMM partitions them."""
    micros = np.asarray(times, dtype=np.int64)
    return micros.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)


def partition_groups(times: Any, limit: int) -> list[np.ndarray[Any, Any]] | None:
    """Row indices in groups spanning at most `limit` months each, or None when one insert may hold
    every row (limit 0 means no limit, as in ClickHouse)."""
    if limit <= 0 or len(times) == 0:
        return None
    micros = np.asarray(times, dtype=np.int64)
    first, last = _months([micros.min(), micros.max()]).tolist()
    if last - first < limit:  # cheap: fewer months in the span than the limit, whatever is between
        return None
    months = _months(micros)
    distinct, group_of_month = np.unique(months, return_inverse=True)
    if len(distinct) <= limit:
        return None
    group = group_of_month // limit
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    return list(np.split(order, bounds))


class SummaryWriteError(RuntimeError):
    """The per-run summary could not be rewritten after an insert (the batch stays uncommitted)."""


def _run_ids_of(data: pa.Table) -> list[str]:
    """The distinct run ids of an Arrow batch of points (dictionary-encoded or plain)."""
    column = data.column("run_id").combine_chunks()
    if pa.types.is_dictionary(column.type):
        return [str(value) for value in column.dictionary.to_pylist()]
    return [str(value) for value in column.unique().to_pylist()]


def _wait_to_be_killed(path: str) -> None:
    """The FAULT_BEFORE_SUMMARY_ENV hook: inserted, summary not written, waiting for SIGKILL."""
    Path(path).write_text("inserted\n")
    log.warning("fault injection: inserted, summary not written; waiting to be killed")
    while True:
        time.sleep(1)


class ClickHouseSink:
    """Writes batches; `write` returns only once every table's insert was acknowledged."""

    def __init__(
        self, dsn: str, *, client: Any | None = None, database: str | None = None,
        max_partitions_per_insert: int | None = None,
    ) -> None:
        if client is None:
            client, database = connect(dsn)
        assert database is not None
        self.client = client
        self.database = database
        migrate(client, database)
        #: Checks each forked run_started against the store before it joins a batch (`Batch(fork_check=...)`).
        self.fork_checks = ForkChecks(client, database)
        #: Checks and completes each resumed run_started before it joins a batch (`Batch(resume_check=...)`).
        self.resume_checks = ResumedRuns(client, database)
        #: Copies the points a later attempt supersedes aside before they are inserted (consumer/superseded.py).
        self.superseded = SupersededCopier(client, database)
        #: run_id -> project for the raw rows' `project` column (per-project retention: consumer/retention.py).
        self.run_projects = RunProjects(client, database)
        self.rows_written: dict[str, int] = dict.fromkeys(TABLE_COLUMNS, 0)
        self.max_partitions_per_insert = (
            self._server_partition_limit() if max_partitions_per_insert is None else max_partitions_per_insert
        )
        #: The tables the last `write` finished, in order, before it returned or raised: after a
        #: rejected insert the consumer re-writes only the tables from the failed one on.
        self.completed: tuple[str, ...] = ()
        #: Time spent rewriting run summaries, and how many refreshes (bench/consumer_throughput.py reads them).
        self.summary_seconds = 0.0
        self.summary_refreshes = 0
        self._fault_before_summary = os.environ.get(FAULT_BEFORE_SUMMARY_ENV) or None

    def _server_partition_limit(self) -> int:
        try:
            rows = self.client.query(
                "SELECT value FROM system.settings WHERE name = 'max_partitions_per_insert_block'"
            ).result_rows
            return int(rows[0][0]) if rows else DEFAULT_MAX_PARTITIONS_PER_INSERT
        except Exception as error:  # an older server or a restricted account: assume the default
            log.debug("cannot read max_partitions_per_insert_block (%s); assuming %d",
                      type(error).__name__, DEFAULT_MAX_PARTITIONS_PER_INSERT)
            return DEFAULT_MAX_PARTITIONS_PER_INSERT

    def write(self, batch: Batch, tables: Sequence[str] | None = None) -> None:
        """Insert the batch's rows of every table (or of `tables` only), in TABLE_COLUMNS order."""
        self.completed = ()
        done: list[str] = []
        touched: set[str] = set()
        for table, names in TABLE_COLUMNS.items():
            if tables is not None and table not in tables:
                continue
            rows = batch.rows(table)
            if rows:
                # the raw rows carry their run's project (the batch's own run starts were inserted first)
                started = dict(zip(batch.columns["runs"]["run_id"], batch.columns["runs"]["project"], strict=True))
                if table == "metric_points":
                    data = batch.metric_points_table()
                    self.superseded.before_insert(data)  # every attempt stays queryable
                    self._insert_arrow(table, self.run_projects.with_project(data, started))
                    touched.update(_run_ids_of(data))
                elif (bulk := batch.arrow_table(table)) is not None:  # rows decoded in bulk, as Arrow
                    if table in RAW_TABLES:
                        bulk = self.run_projects.with_project(bulk, started)
                    self._insert_arrow(table, bulk)
                    if table in SOURCE_TABLES:
                        touched.update(_run_ids_of(bulk))
                elif table in RAW_TABLES:
                    columns = batch.columns[table]
                    self._insert_columns(table, (*names, PROJECT_COLUMN), {
                        **columns, PROJECT_COLUMN: self.run_projects.column(columns["run_id"], started)})
                    if table in SOURCE_TABLES:
                        touched.update(columns["run_id"])
                else:
                    self._insert_columns(table, names, batch.columns[table])
                    if table in SOURCE_TABLES:
                        touched.update(batch.columns[table]["run_id"])
                self.rows_written[table] += rows
            done.append(table)
            self.completed = tuple(done)
        # `runstream delete` (and rows that arrive for a run deleted before): after the inserts, so a batch's own go too
        touched.update(apply_deletions(self.client, self.database, batch.columns["run_curation"], touched))
        if touched:
            if self._fault_before_summary:
                _wait_to_be_killed(self._fault_before_summary)
            self.refresh_summaries(touched)

    def refresh_summaries(self, run_ids: set[str]) -> None:
        """Rewrite the per-run summaries of `run_ids` (exact; idempotent, so a retry may repeat it).

        A failure here is never the rows' fault: a non-retryable one is raised as SummaryWriteError, so
        that the consumer does not split the batch and dead-letter events that were stored fine."""
        try:
            self.summary_seconds += refresh(self.client, self.database, run_ids)
        except Exception as error:
            if is_retryable(error):
                raise
            raise SummaryWriteError(f"run_summary: rewriting the summary of {len(run_ids)} runs failed: "
                                    f"{type(error).__name__}: {' '.join(str(error).split())[:500]}") from error
        self.summary_refreshes += 1

    def _insert_arrow(self, table: str, data: pa.Table) -> None:
        column = MONTH_PARTITIONED.get(table)
        groups = None if column is None else partition_groups(
            data.column(column).cast(pa.int64()).to_numpy(), self.max_partitions_per_insert)
        if groups is None:
            self.client.insert_arrow(f"{self.database}.{table}", data)
            return
        log.info("%s: %d rows span more than %d months; writing them in %d inserts",
                 table, data.num_rows, self.max_partitions_per_insert, len(groups))
        for indices in groups:
            self.client.insert_arrow(f"{self.database}.{table}", data.take(pa.array(indices)))

    def _insert_columns(self, table: str, names: Sequence[str], columns: dict[str, list[Any]]) -> None:
        column = MONTH_PARTITIONED.get(table)
        groups = None if column is None else partition_groups(columns[column], self.max_partitions_per_insert)
        if groups is None:
            parts = [[columns[name] for name in names]]
        else:
            log.info("%s: %d rows span more than %d months; writing them in %d inserts",
                     table, len(columns[names[0]]), self.max_partitions_per_insert, len(groups))
            parts = [[[columns[name][i] for i in indices.tolist()] for name in names] for indices in groups]
        for data in parts:
            self.client.insert(f"{self.database}.{table}", data, column_names=list(names), column_oriented=True)

    def flush(self) -> None:
        """Inserts are synchronous; nothing is held back."""

    def close(self) -> None:
        self.client.close()
