"""Versioned, idempotent DDL for runstream's tables; applied on consumer start and by `runstream migrate`.

Every table is a ReplacingMergeTree keyed on what identifies a fact (a run, a param of a run,
a metric of a run at a step, a GPU of a host at an instant), so an event delivered twice
(at-least-once from Kafka, or a spool file ingested again) collapses to one row. Queries
read with FINAL or aggregate so they never count a duplicate that has not merged yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "contract v1 tables",
        (
            """
            CREATE TABLE IF NOT EXISTS {db}.runs (
                run_id String,
                project LowCardinality(String),
                run_name String,
                user LowCardinality(String),
                host LowCardinality(String),
                started_at DateTime64(6, 'UTC'),
                git_commit Nullable(String),
                git_branch Nullable(String),
                git_dirty Nullable(Bool),
                tags Map(String, String),
                framework_versions Map(String, String),
                command_line Array(String),
                cpu_model Nullable(String),
                cpu_count Nullable(UInt32),
                memory_bytes Nullable(UInt64),
                gpu_count UInt32,
                data_versions Array(Tuple(name String, version Nullable(String),
                                          uri Nullable(String), digest Nullable(String))),
                event_id String
            ) ENGINE = ReplacingMergeTree(started_at)
            ORDER BY run_id
            """,
            """
            CREATE TABLE IF NOT EXISTS {db}.run_params (
                run_id String,
                key String,
                value_type LowCardinality(String),
                value_number Nullable(Float64),
                value_string String,
                updated_at DateTime64(6, 'UTC')
            ) ENGINE = ReplacingMergeTree(updated_at)
            ORDER BY (run_id, key)
            """,
            """
            CREATE TABLE IF NOT EXISTS {db}.metric_points (
                run_id String,
                metric LowCardinality(String),
                step Int64,
                value Float64,
                time DateTime64(6, 'UTC')
            ) ENGINE = ReplacingMergeTree(time)
            ORDER BY (run_id, metric, step)
            """,
            """
            CREATE TABLE IF NOT EXISTS {db}.gpu_samples (
                run_id String,
                host LowCardinality(String),
                gpu_index UInt16,
                time DateTime64(6, 'UTC'),
                gpu_uuid String,
                gpu_model LowCardinality(String),
                utilization_pct Nullable(Float32),
                memory_used_bytes Nullable(UInt64),
                memory_total_bytes Nullable(UInt64),
                power_w Nullable(Float32),
                temperature_c Nullable(Float32),
                sm_clock_mhz Nullable(UInt32),
                memory_clock_mhz Nullable(UInt32)
            ) ENGINE = ReplacingMergeTree
            ORDER BY (run_id, host, gpu_index, time)
            """,
            """
            CREATE TABLE IF NOT EXISTS {db}.run_finishes (
                run_id String,
                finished_at DateTime64(6, 'UTC'),
                status LowCardinality(String),
                exit_code Nullable(Int32),
                error Nullable(String),
                summary Map(String, Float64)
            ) ENGINE = ReplacingMergeTree(finished_at)
            ORDER BY run_id
            """,
        ),
    ),
    Migration(
        2,
        "gpu_samples v2: power limit, throttle reasons, process GPU memory; host samples",
        (
            """
            ALTER TABLE {db}.gpu_samples
                ADD COLUMN IF NOT EXISTS power_limit_w Nullable(Float32),
                ADD COLUMN IF NOT EXISTS throttle_reasons Nullable(UInt64),
                ADD COLUMN IF NOT EXISTS process_memory_bytes Nullable(UInt64)
            """,
            """
            CREATE TABLE IF NOT EXISTS {db}.host_samples (
                run_id String,
                host LowCardinality(String),
                time DateTime64(6, 'UTC'),
                host_cpu_pct Nullable(Float32),
                host_memory_used_bytes Nullable(UInt64),
                host_memory_total_bytes Nullable(UInt64),
                process_rss_bytes Nullable(UInt64)
            ) ENGINE = ReplacingMergeTree
            ORDER BY (run_id, host, time)
            """,
        ),
    ),
    Migration(
        3,
        "run_started v2 (distributed ranks, scheduler ids, diff hash, resume) and run_updated",
        (
            """
            ALTER TABLE {db}.runs
                ADD COLUMN IF NOT EXISTS git_diff_sha256 Nullable(String),
                ADD COLUMN IF NOT EXISTS rank Nullable(Int32),
                ADD COLUMN IF NOT EXISTS local_rank Nullable(Int32),
                ADD COLUMN IF NOT EXISTS world_size Nullable(Int32),
                ADD COLUMN IF NOT EXISTS scheduler Map(String, String),
                ADD COLUMN IF NOT EXISTS resumed Bool DEFAULT false
            """,
            """
            CREATE TABLE IF NOT EXISTS {db}.run_data_versions (
                run_id String,
                name String,
                version Nullable(String),
                uri Nullable(String),
                digest Nullable(String),
                logged_at DateTime64(6, 'UTC')
            ) ENGINE = ReplacingMergeTree(logged_at)
            ORDER BY (run_id, name)
            """,
        ),
    ),
)

_LEDGER = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY version
"""


def applied_versions(client: Any, database: str) -> set[int]:
    client.command(_LEDGER.format(db=database))
    query = f"SELECT DISTINCT version FROM {database}.schema_migrations"  # noqa: S608 - validated name
    rows = client.query(query).result_rows
    return {int(row[0]) for row in rows}


def migrate(client: Any, database: str) -> list[int]:
    """Apply the migrations this database lacks; return their versions (empty when up to date)."""
    done = applied_versions(client, database)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement.format(db=database))
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version], [migration.name]],
            column_names=["version", "name"],
            column_oriented=True,
        )
        log.info("applied migration %d (%s) to %s", migration.version, migration.name, database)
        applied.append(migration.version)
    return applied
