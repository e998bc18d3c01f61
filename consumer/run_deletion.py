"""Deleting a run's rows when a `run_curation` event says `deleted=true` (`runstream delete RUN --yes`).

The sink calls `apply_deletions` after a batch's inserts and before the run summaries are rewritten
and the consumer commits. For each deleted run it:

1. counts the run's rows, as stored (before merges), in every table that has a `run_id` column — the
   list comes from the table specs (`migrations.TABLES`), so a table added later is covered without
   an edit here — except the audit table itself;
2. writes the audit row (`run_deletions`: run, event, actor, rows per table) unless this event's audit
   row is already there;
3. removes the rows with ClickHouse's lightweight `DELETE FROM t WHERE run_id = ...` (rows are masked at
   once and dropped by the next merges), falling back to a synchronous `ALTER TABLE t DELETE` mutation
   where the server refuses the lightweight form (NOT_IMPLEMENTED / SUPPORT_IS_DISABLED, e.g. a
   table with projections on an older server).

The audit row goes first, so that it always holds the counts of the first attempt: a consumer killed
between the audit and the deletes, or between the deletes and its commit, gets the message again; the
redelivered event finds its audit row (keyed by run and event id) and keeps it, and deletes again
whatever is left (the rows its own batch inserted again, at most). Deleting twice is harmless.

A deleted run stays deleted: rows that arrive for it later (a run still logging, or a replica replaying
the other topics from the start after the compacted curation topic) are deleted again by the batch that
brings them (`already_deleted`: one small query per batch, against the audit table). A database laid out
for a cluster (`migrate --cluster`, Distributed tables) is skipped with a warning, since a DELETE must
run ON CLUSTER against the shards' local tables there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from runstream.consumer.lifecycle_tables import RUN_DELETIONS
from runstream.consumer.migrations import TABLES, is_cluster_managed
from runstream.consumer.retry import is_retryable

log = logging.getLogger(__name__)

AUDIT_TABLE = RUN_DELETIONS.name

#: Every table that holds rows of a run (it has a run_id column), from the specs; the audit table keeps its rows.
RUN_TABLES: tuple[str, ...] = tuple(
    table.name for table in TABLES if "run_id" in table.column_names and table.name != AUDIT_TABLE
)

#: ClickHouse codes for "this table cannot take a lightweight DELETE": 48 NOT_IMPLEMENTED, 344 SUPPORT_IS_DISABLED.
LIGHTWEIGHT_REFUSED_CODES = frozenset({48, 344})


@dataclass(frozen=True)
class Deletion:
    """One `run_curation` event with deleted=true."""

    run_id: str
    event_id: str
    actor: str
    timestamp_us: int


def deletions_of(columns: dict[str, list[Any]]) -> list[Deletion]:
    """The deletes among a batch's `run_curation` rows (its columns as the batch holds them)."""
    return [
        Deletion(run_id, event_id, actor, int(timestamp))
        for run_id, event_id, actor, timestamp, deleted in zip(
            columns["run_id"], columns["event_id"], columns["actor"], columns["updated_at"], columns["deleted"],
            strict=True)
        if deleted
    ]


def count_rows(client: Any, database: str, run_id: str) -> dict[str, int]:
    """Rows of the run in every table of RUN_TABLES, as stored (without FINAL: what a delete removes)."""
    sql = " UNION ALL ".join(
        f"SELECT '{name}' AS t, count() AS n FROM {database}.{name} WHERE run_id = {{run:String}}"  # noqa: S608
        for name in RUN_TABLES
    )
    rows = client.query(sql, parameters={"run": run_id}).result_rows
    counts = {str(name): int(n) for name, n in rows}
    return {name: counts.get(name, 0) for name in RUN_TABLES}


def _audited(client: Any, database: str, deletion: Deletion) -> bool:
    sql = (f"SELECT count() FROM {database}.{AUDIT_TABLE} "  # noqa: S608
           "WHERE run_id = {run:String} AND event_id = {event:String}")
    return bool(client.query(sql, parameters={"run": deletion.run_id, "event": deletion.event_id}).result_rows[0][0])


def _write_audit(client: Any, database: str, deletion: Deletion, counts: dict[str, int]) -> None:
    client.insert(
        f"{database}.{AUDIT_TABLE}",
        [[deletion.run_id], [deletion.timestamp_us], [deletion.actor], [deletion.event_id],
         [{name: n for name, n in counts.items() if n}]],
        column_names=list(RUN_DELETIONS.column_names), column_oriented=True,
    )


def delete_rows(client: Any, database: str, table: str, run_id: str) -> str:
    """Remove the run's rows from one table; returns the mechanism used ('lightweight' or 'mutation')."""
    try:
        client.command(f"DELETE FROM {database}.{table} WHERE run_id = {{run:String}}",  # noqa: S608
                       parameters={"run": run_id})
        return "lightweight"
    except Exception as error:
        if is_retryable(error) or getattr(error, "code", None) not in LIGHTWEIGHT_REFUSED_CODES:
            raise
    log.info("%s.%s refuses a lightweight DELETE; deleting run %s with a synchronous mutation", database, table, run_id)
    client.command(f"ALTER TABLE {database}.{table} DELETE WHERE run_id = {{run:String}} "
                   "SETTINGS mutations_sync = 2", parameters={"run": run_id})
    return "mutation"


def delete_run(client: Any, database: str, deletion: Deletion) -> dict[str, int]:
    """Audit (once per event), then delete the run's rows from every table; returns the rows found per table."""
    counts = count_rows(client, database, deletion.run_id)
    if not _audited(client, database, deletion):
        _write_audit(client, database, deletion, counts)
    for table, rows in counts.items():
        if rows:
            delete_rows(client, database, table, deletion.run_id)
    log.info("deleted run %s (event %s by %s): %d rows from %d tables", deletion.run_id, deletion.event_id,
             deletion.actor, sum(counts.values()), sum(1 for n in counts.values() if n))
    return counts


def already_deleted(client: Any, database: str, run_ids: Iterable[str]) -> list[str]:
    """The runs among `run_ids` that an earlier delete removed (they have an audit row)."""
    ids = sorted(set(run_ids))
    if not ids:
        return []
    sql = f"SELECT DISTINCT run_id FROM {database}.{AUDIT_TABLE} WHERE run_id IN {{ids:Array(String)}}"  # noqa: S608
    return sorted(str(run_id) for (run_id,) in client.query(sql, parameters={"ids": ids}).result_rows)


def apply_deletions(client: Any, database: str, curation_columns: dict[str, list[Any]],
                    touched: Iterable[str] = ()) -> set[str]:
    """Carry out every delete of a batch's `run_curation` rows, and delete again the rows this batch
    stored for runs deleted before (a run that logged on after its delete, or a replica that replays
    the run's events after the compacted curation topic): a deleted run stays deleted. Returns the
    ids of the runs deleted (their summaries need no refresh, but one is harmless)."""
    deletions = deletions_of(curation_columns) if curation_columns["run_id"] else []
    ids = {deletion.run_id for deletion in deletions}
    late = already_deleted(client, database, set(touched) - ids)
    if not deletions and not late:
        return set()
    if is_cluster_managed(client, database):
        log.warning("%s is laid out for a cluster: run deletes must run ON CLUSTER there; %d runs not deleted (%s)",
                    database, len(ids) + len(late), ", ".join(sorted(ids) + late))
        return set()
    for deletion in deletions:
        delete_run(client, database, deletion)
    for run_id in late:
        found = count_rows(client, database, run_id)
        for table, rows in found.items():
            if rows:
                delete_rows(client, database, table, run_id)
        log.warning("run %s was deleted before: %d rows that arrived since were deleted too", run_id,
                    sum(found.values()))
    return ids | set(late)
