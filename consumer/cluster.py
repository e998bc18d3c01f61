"""Cluster DDL: runstream's tables, rollups and views as ON CLUSTER statements over Replicated engines.

Each table of `migrations.py` becomes `<table>_local`, a Replicated* table on every replica of
every shard (ZooKeeper path '/clickhouse/tables/{shard}/{database}/{table}'), plus a Distributed
table under the plain name, so the consumer inserts into `metric_points` and users query
`metric_points FINAL` exactly as on one server. Materialized views read the local tables and
write local rollup states; the plain views read the Distributed tables.

Sharding key: cityHash64(run_id) by default, for every table. All rows of a run (its points,
samples, params, start and finish) then live on one shard, which is what keeps the single-server
guarantees true on a cluster:

- deduplication: a redelivered row is routed to the shard of its twin, where ReplacingMergeTree
  and FINAL collapse it (a rand() key would send it elsewhere, and FINAL never compares shards);
- rollups: each shard's MV sees every point of the runs it holds, so a run's summary state is
  complete on one shard;
- queries: `run_id IN (SELECT run_id FROM runs ...)` and joins on run_id are shard-local, so
  `distributed_product_mode = 'local'` is correct, and `optimize_skip_unused_shards = 1` sends a
  one-run query to one shard.

The cost is skew when one run is huge; runs are small next to a cluster, and hashing the run id
(a UUIDv7, time-ordered) spreads consecutive runs evenly.

Tables without a run (drift, cost) say how they spread in their spec (`table_spec.Table.sharding`):
drift facts by model and version, the small price and budget tables whole on every node.
"""

from __future__ import annotations

import re

from runstream.consumer.migrations import (
    MATERIALIZED_VIEWS,
    TABLES,
    VIEWS,
    create_materialized_view_sql,
    create_table_sql,
    create_view_sql,
    ttl_clause,
)
from runstream.consumer.table_spec import BY_RUN, EVERY_NODE

DEFAULT_SHARDING_KEY = "cityHash64(run_id)"
REPLICATED_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
#: Tables kept whole on every node share one replication path across shards; a replica's name must then be
#: unique across the cluster, hence the shard in it.
EVERY_NODE_PATH = "/clickhouse/tables/all/{database}/{table}"
EVERY_NODE_REPLICA = "{shard}-{replica}"
LOCAL_SUFFIX = "_local"

_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def cluster_ddl(
    database: str, cluster: str, sharding_key: str = DEFAULT_SHARDING_KEY, *, sample_ttl_days: int | None = None
) -> list[str]:
    """Every statement that lays `database` out on `cluster`, in order; each is idempotent (IF NOT EXISTS).

    `sample_ttl_days` (> 0) keeps raw GPU/host samples that many days, both for new tables and,
    through ALTER ... MODIFY TTL, for existing ones.
    """
    if not _DATABASE_NAME.match(database):
        raise ValueError(f"database {database!r}: expected letters, digits and underscores")
    if not _CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster {cluster!r}: expected letters, digits, '_', '.' and '-'")
    if not sharding_key.strip():
        raise ValueError("sharding key: expected an expression over run_id such as cityHash64(run_id), got ''")
    if sample_ttl_days is not None and sample_ttl_days < 0:
        raise ValueError(f"sample_ttl_days: expected days >= 0, got {sample_ttl_days!r}")
    on = f" ON CLUSTER `{cluster}`"
    statements = [f"CREATE DATABASE IF NOT EXISTS {database}{on}"]
    for table in TABLES:
        if table.sharding == EVERY_NODE:
            statements.append(create_table_sql(
                table, f"{database}.{table.name}", on_cluster=on, replicated_path=EVERY_NODE_PATH,
                replica_name=EVERY_NODE_REPLICA, sample_ttl_days=sample_ttl_days,
            ))
            continue
        local = f"{table.name}{LOCAL_SUFFIX}"
        key = sharding_key if table.sharding == BY_RUN else table.sharding
        statements.append(create_table_sql(
            table, f"{database}.{local}", on_cluster=on, replicated_path=REPLICATED_PATH,
            sample_ttl_days=sample_ttl_days,
        ))
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {database}.{table.name}{on} AS {database}.{local}\n"
            f"ENGINE = Distributed('{cluster}', '{database}', '{local}', {key})"
        )
        if table.expires and sample_ttl_days:
            statements.append(f"ALTER TABLE {database}.{local}{on} MODIFY {ttl_clause(sample_ttl_days)}")
    for mv in MATERIALIZED_VIEWS:
        statements.append(create_materialized_view_sql(
            mv, database, on_cluster=on, source=f"{mv.source}{LOCAL_SUFFIX}", target=f"{mv.target}{LOCAL_SUFFIX}",
        ))
    for view in VIEWS:
        statements.append(create_view_sql(view, database, on_cluster=on))
    return statements
