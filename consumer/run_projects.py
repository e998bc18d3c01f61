"""The `project` column of the raw tables (points, samples, other ranks' points, histograms), filled by the sink.

Per-project retention (`runstream.consumer.retention`) is a TTL rule per project on the raw tables,
`... DELETE WHERE project = 'p'`, so each raw row carries its run's project. Events of points and
samples do not carry it (they are the hot path and name the run only); the sink knows it from the run's
`run_started`: from the batch itself (the `runs` rows are inserted before the points), else from a
per-process cache, else from one lookup in `runs` per batch for the run ids still unknown.

A point whose run's start is not stored yet (points that overtook their start) is written with the
project '' (as is every raw row stored before migration 8) and is never expired by a project's rule (no
rule can drop a row of another project); `runstream retention set` assigns those rows their project
before it applies the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: The raw tables that a retention rule may expire; their rollups and the run facts stay.
RAW_TABLES: tuple[str, ...] = ("metric_points", "gpu_samples", "host_samples", "rank_metric_points",
                               "metric_histograms")
#: The column the sink fills in, and its definition in each raw table's spec (migration 8 adds it; the
#: tables of migration 9 have it from the start).
PROJECT_COLUMN = "project"
PROJECT_COLUMN_SPEC = "project LowCardinality(String) DEFAULT '' CODEC(ZSTD(1))"
#: Columns of the raw tables that the sink fills (not the batch): `consumer/batch.py` leaves them out.
SINK_FILLED_COLUMNS: dict[str, tuple[str, ...]] = {table: (PROJECT_COLUMN,) for table in RAW_TABLES}


class RunProjects:
    """run_id -> project, cached per process (a run's project never changes), looked up per batch."""

    def __init__(self, client: Any, database: str, *, limit: int = 200_000) -> None:
        self.client = client
        self.database = database
        self.limit = limit
        self._known: dict[str, str] = {}
        #: Lookups made in `runs` (one per batch with unknown runs at most): the bench and tests read it.
        self.lookups = 0

    def resolve(self, run_ids: Iterable[str], started: Mapping[str, str] | None = None) -> dict[str, str]:
        """The project of each run id ('' when its start is not stored yet); `started` is the batch's own
        run_id -> project from its `run_started` rows."""
        ids = set(run_ids)
        if started:
            self._remember({run_id: project for run_id, project in started.items() if run_id in ids})
        unknown = sorted(run_id for run_id in ids if run_id not in self._known)
        if unknown:
            self.lookups += 1
            rows = self.client.query(
                f"SELECT run_id, argMax(project, started_at) FROM {self.database}.runs "  # noqa: S608
                "WHERE run_id IN {ids:Array(String)} GROUP BY run_id",
                parameters={"ids": unknown},
            ).result_rows
            self._remember({str(run_id): str(project) for run_id, project in rows})
        return {run_id: self._known.get(run_id, "") for run_id in ids}

    def _remember(self, projects: Mapping[str, str]) -> None:
        if len(self._known) + len(projects) > self.limit:
            self._known.clear()  # a bound, not an LRU: a refill costs one lookup per batch
        self._known.update(projects)

    def with_project(self, data: Any, started: Mapping[str, str] | None = None) -> Any:
        """The Arrow table `data` with its `project` column appended (dictionary-encoded like run_id when
        run_id is)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = data.column("run_id").combine_chunks()
        if pa.types.is_dictionary(column.type):
            names = [str(value) for value in column.dictionary.to_pylist()]
            projects = self.resolve(names, started)
            distinct = sorted(set(projects.values()))  # a dictionary holds each value once (ClickHouse checks)
            slot = {project: number for number, project in enumerate(distinct)}
            of_run = pa.array([slot[projects[name]] for name in names], pa.int32())
            values: Any = pa.DictionaryArray.from_arrays(pc.take(of_run, column.indices),
                                                         pa.array(distinct, pa.string()))
        else:
            names = [str(value) for value in pc.unique(column).to_pylist()]
            projects = self.resolve(names, started)
            keys = pa.array(names, pa.string())
            looked_up = pa.array([projects[name] for name in names], pa.string())
            values = pc.take(looked_up, pc.index_in(column.cast(pa.string()), value_set=keys))
        return data.append_column(PROJECT_COLUMN, values)

    def column(self, run_ids: list[Any], started: Mapping[str, str] | None = None) -> list[str]:
        """The project of each row of a list-of-values batch column."""
        projects = self.resolve((str(run_id) for run_id in run_ids), started)
        return [projects[str(run_id)] for run_id in run_ids]
