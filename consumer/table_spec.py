"""The shapes of runstream's ClickHouse objects: tables, materialized views and plain views.

A spec is rendered for one server by `migrations.py` and for a cluster by `cluster.py`; keeping the
shape apart from both lets every group of tables (run facts, rollups, drift, cost) declare its specs
in its own module while the renderers stay the only place that writes DDL.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Spread a table's rows over shards by the cluster's run sharding key (cityHash64(run_id) unless
#: `migrate --cluster --sharding-key` says otherwise): every row of a run lives on one shard.
BY_RUN = "by_run"
#: Keep a small table whole on every node of the cluster (one replication path for all shards), so that
#: a shard-local join with it (a price list, budgets) sees every row.
EVERY_NODE = "every_node"


def column_name(definition: str) -> str:
    """The name of a column definition such as "attempt UInt32 DEFAULT 1" (it starts with the name)."""
    return definition.split(None, 1)[0]


def column_type(definition: str) -> str:
    """What follows the name in a column definition: its type, and any DEFAULT ("UInt32 DEFAULT 1")."""
    return definition.split(None, 1)[1]


@dataclass(frozen=True)
class Table:
    """A MergeTree-family table.

    `engine` is the family without the `Replicated` prefix; `version` is the ReplacingMergeTree
    version column (the row with the highest one survives). `expires` marks raw-sample tables
    whose rows a TTL may drop (`sample_ttl_days`). `sharding` says how a cluster spreads the rows:
    BY_RUN, EVERY_NODE, or a sharding expression of the table's own (it must send a redelivered row
    to the shard of its twin, so it may only use columns of the sorting key).
    """

    name: str
    columns: tuple[str, ...]
    engine: str
    order_by: str
    version: str | None = None
    partition_by: str | None = None
    expires: bool = False
    settings: tuple[str, ...] = ()
    sharding: str = BY_RUN

    @property
    def column_names(self) -> tuple[str, ...]:
        """The columns' names in declaration order (each definition starts with its name)."""
        return tuple(column_name(definition) for definition in self.columns)


@dataclass(frozen=True)
class MaterializedView:
    """An MV that writes the rows `select` computes from each block inserted into `source` into `target`.

    `select` names tables as {source}, so that a cluster renders it over the local table.
    """

    name: str
    source: str
    target: str
    select: str


@dataclass(frozen=True)
class View:
    """A plain view over {tables} (a cluster renders it over the Distributed tables).

    {lower_is_better} is the SQL twin of `runstream.monitoring.metric_direction.lower_is_better(metric)`.
    """

    name: str
    select: str
