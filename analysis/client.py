"""`runstream.Client`: the analysis questions from a notebook, as pandas DataFrames or Arrow tables.

    import runstream
    rs = runstream.Client("chdb:///home/me/.runstream/clickhouse")
    rs.runs(project="vision", where="params.lr < 0.01", sort="-metrics.acc")
    rs.metric_history(["run-a", "run-b"], "loss", points=1000)

The same SQL as the CLI answers (analysis/queries.py), so a notebook and a terminal agree. pandas is
imported here, not by `import runstream`, so training jobs that only log never pay for it.

Values are exact and NaN is never confused with "not logged": in Arrow, a logged NaN is NaN and a
value never logged is null; in pandas, numeric columns that have missing values are pyarrow-backed
(`double[pyarrow]`), where missing is <NA> and NaN stays NaN.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from runstream.analysis import curation, queries
from runstream.analysis.importance import importance
from runstream.analysis.reproduce import reproduce
from runstream.output import csv_cell

Output = Literal["pandas", "arrow"]

try:  # imported by name: pandas ships no type stubs, and DataFrames are Any to callers anyway
    pd: Any = importlib.import_module("pandas")
except ImportError as error:  # pragma: no cover - pandas comes with the analysis dependencies
    raise ImportError("runstream.Client needs pandas: pip install pandas (or runstream[analysis])") from error


def _arrow_column(name: str, values: list[Any]) -> pa.Array:
    """Python values to Arrow without pandas' NaN-is-missing rule: NaN stays NaN, None becomes null.
    A column mixing kinds (a param that is a number in one run and text in another) becomes text,
    written as the CSV format writes it (runstream.output.csv_cell), nulls kept."""
    try:
        return pa.array(values, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else csv_cell(v) for v in values], type=pa.string())


def to_arrow(table: queries.Table) -> pa.Table:
    """The rows as an Arrow table; NaN (logged) and null (not logged) stay distinct. Built from arrays,
    not a dict, so a run labelled like another column (`compare` of a run named "field") keeps both."""
    columns = [list(column) for column in zip(*table.rows, strict=True)] if table.rows else [[] for _ in table.columns]
    arrays = [_arrow_column(name, values) for name, values in zip(table.columns, columns, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(table.columns))


def arrow_to_pandas(table: pa.Table) -> Any:
    """A DataFrame that keeps NaN distinct from null: numeric columns with nulls become pyarrow-backed
    (null is <NA>, NaN is NaN; a numpy float column would turn both into NaN, an int column into floats);
    other columns convert as usual (text nulls stay None)."""
    series = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if column.null_count and (pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            series.append(pd.Series(pd.arrays.ArrowExtensionArray(column), name=name))
        else:
            series.append(pd.Series(column.to_pandas(), name=name))
    if not series:
        return pd.DataFrame()
    return pd.concat(series, axis=1)


def _frame(table: queries.Table, output: Output) -> Any:
    if output not in ("pandas", "arrow"):
        raise ValueError(f"output: expected 'pandas' or 'arrow', got {output!r}")
    arrow = to_arrow(table)
    return arrow if output == "arrow" else arrow_to_pandas(arrow)


def _with_left_out(result: Any, left_out: int) -> Any:
    """Attach a ranking's count of runs left out for having no finite value (queries.Table.left_out)."""
    if isinstance(result, pa.Table):
        return result.replace_schema_metadata({**(result.schema.metadata or {}), b"left_out": str(left_out).encode()})
    result.attrs["left_out"] = left_out
    return result


class Client:
    """A connection to runstream's ClickHouse database, as `runstream migrate` (or the consumer) laid it out."""

    def __init__(self, dsn: str | None = None, *, user: str | None = None, password: str | None = None,
                 config_file: str | Path | None = None) -> None:
        """`dsn`, `user`, `password` as given, else RUNSTREAM_CLICKHOUSE, RUNSTREAM_CLICKHOUSE_USER and
        RUNSTREAM_CLICKHOUSE_PASSWORD, else the [clickhouse] table of `config_file` / RUNSTREAM_CONFIG
        (runstream.consumer.clickhouse_settings, as for every command)."""
        from runstream.consumer.clickhouse_settings import ClickHouseSettings

        settings = ClickHouseSettings.load({"dsn": dsn, "user": user, "password": password}, config_file=config_file)
        self.dsn = settings.redacted()  # for display; the password stays in the settings' SecretStr
        self.client, self.database = queries.open_database(settings.authenticated_dsn())

    def runs(self, project: str | None = None, *, where: str | None = None, sort: str | None = None,
             limit: int | None = None, group: str | None = None, sweep: str | None = None,
             include_archived: bool = False, output: Output = "pandas") -> Any:
        """One row per run: run_id, name, project, status, started_at, group/job_type/sweep (when some run has
        them), params.*, metrics.* (final), best.*, gpu_hours. `where` and `sort` take the CLI's filter
        language (`runstream runs --help`); `group`/`sweep` keep the runs with that label. Archived runs
        (`archive`) are left out unless `include_archived`."""
        return _frame(queries.runs(self.client, self.database, project=project, where=where, sort=sort,
                                   limit=limit, group=group, sweep=sweep, include_archived=include_archived), output)

    def status(self, project: str | None = None, *, now: Any = None, stall_after_s: float | None = None,
               output: Output = "pandas") -> Any:
        """Each run's honest status (running, stalled, lost, ok, failed, killed; runstream.monitoring.run_status)
        as of `now` (a timezone-aware datetime; default the current time), with what decided it: attempt,
        last_heartbeat_at, step_advanced_at, steps_per_s, stalled_s, archived. `runs()` shows the same status."""
        from runstream.monitoring.run_status import run_statuses

        rows = run_statuses(self.client, self.database, now=now, stall_after_s=stall_after_s, project=project)
        columns = ["run_id", "run_name", "project", "status", "attempt", "last_heartbeat_at", "step_advanced_at",
                   "steps_per_s", "stalled_s", "archived"]
        return _frame(queries.Table(columns, [[row[c] for c in columns] for row in rows]), output)

    def metric_history(self, runs: str | list[str], metrics: str | list[str], *, points: int | None = None,
                       x: str | None = None, output: Output = "pandas") -> Any:
        """Long form: run_id, run name, metric, and per point step and value; `points` cuts each curve into at
        most that many buckets in ClickHouse and gives per bucket x, last_x, min, max, last and the count of
        points, NaN, +Inf and -Inf among them (spikes kept; runstream.analysis.curves). `x`: step, time,
        relative (seconds since the run's first point) or a logged metric such as tokens (run.log(axes=...));
        default each metric's declared step_metric, else the step. Without points, every stored point."""
        from runstream.analysis.curves import curve_axes

        refs = [runs] if isinstance(runs, str) else list(runs)
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        resolved = queries.resolve_runs(self.client, self.database, refs)
        ids = [run_id for run_id, _ in resolved]
        if not points and output == "arrow" and set(curve_axes(self.client, self.database, ids, names, x)) == {"step"}:
            sql = (f"SELECT run_id, metric, step, value FROM {self.database}.metric_points FINAL "  # noqa: S608
                   "WHERE run_id IN {runs:Array(String)} AND metric IN {metrics:Array(String)} "
                   "ORDER BY run_id, metric, step")  # the raw points straight from ClickHouse, no Python rows
            return self.client.query_arrow(sql, parameters={"runs": ids, "metrics": names})
        table = queries.metric_history(self.client, self.database, ids, names, points=points, x=x)
        run_names = dict(resolved)
        named = queries.Table([table.columns[0], "name", *table.columns[1:]],
                              [[row[0], run_names.get(row[0]), *row[1:]] for row in table.rows])
        return _frame(named, output)

    def compare(self, runs: list[str], metrics: list[str] | None = None, *, output: Output = "pandas") -> Any:
        """Rows: fields (params, each metric at final and best step, GPU-hours); columns: one per run,
        and `differs` ('*' where the runs disagree)."""
        return _frame(queries.compare(self.client, self.database, list(runs), metrics), output)

    def best(self, project: str, metric: str, mode: str | None = None, *, limit: int | None = None,
             include_archived: bool = False, output: Output = "pandas") -> Any:
        """The leaderboard: ranked by best finite value, ties to the earlier step. Runs that logged the
        metric but never a finite value are left out; how many is `.attrs["left_out"]` (pandas) or the
        schema metadata `left_out` (Arrow). Archived runs are left out unless `include_archived`."""
        table = queries.leaderboard(self.client, self.database, project, metric, mode, limit, include_archived)
        return _with_left_out(_frame(table, output), table.left_out)

    def importance(self, project: str, metric: str, mode: str | None = None, *, output: Output = "pandas") -> Any:
        """Spearman rho / eta² per param: correlation across runs, not causation. Runs without a finite
        value of the metric are left out, counted as in `best`."""
        table = importance(self.client, self.database, project, metric, mode)
        return _with_left_out(_frame(table, output), table.left_out)

    def reproduce(self, run: str) -> dict[str, Any]:
        """Commit, command line, config, data versions and hardware of a run, and a `launch` line."""
        return reproduce(self.client, self.database, run)

    def lineage(self, run: str, *, output: Output = "pandas") -> Any:
        """The fork tree of `run` (id or unique name), as `runstream lineage` prints it: one row per run
        (run_id, name, fork_from, fork_step, status, depth from the root, relation: ancestor/self/descendant)."""
        from runstream.analysis.lineage import LINEAGE_COLUMNS, lineage

        run_id = queries.resolve_runs(self.client, self.database, [run])[0][0]
        nodes = lineage(self.client, self.database, run_id)
        return _frame(queries.Table(list(LINEAGE_COLUMNS), [node.row() for node in nodes]), output)

    # -- curation after the fact (runstream.analysis.curation): each change is a run_curation event, sent
    # through Kafka when `kafka` (or RUNSTREAM_KAFKA) is set, else written to this database directly;
    # `wait` seconds: wait until the consumer applied it. Each returns what was done, as a dict.

    def tag(self, run: str, tags: Mapping[str, str] | Sequence[str] | None = None, *, remove: Sequence[str] = (),
            kafka: str | None = None, wait: float | None = None) -> dict[str, Any]:
        """Set `tags` (a mapping, or keys with empty values) and remove the keys in `remove`."""
        return curation.curate_via(self.client, self.database, run, "tag", tags=curation.tags_argument(tags),
                                   remove=list(remove), kafka=kafka, wait=wait)

    def untag(self, run: str, keys: str | Sequence[str], *, kafka: str | None = None,
              wait: float | None = None) -> dict[str, Any]:
        """Remove tags by key (a tag the run does not have is refused, nothing sent)."""
        remove = [keys] if isinstance(keys, str) else list(keys)
        return curation.curate_via(self.client, self.database, run, "untag", remove=remove, kafka=kafka, wait=wait)

    def note(self, run: str, text: str, *, kafka: str | None = None, wait: float | None = None) -> dict[str, Any]:
        """Set the run's note ('' clears it)."""
        return curation.curate_via(self.client, self.database, run, "note", note=text, kafka=kafka, wait=wait)

    def archive(self, run: str, *, kafka: str | None = None, wait: float | None = None) -> dict[str, Any]:
        """Hide the run from `runs` and `best` (its data stays)."""
        return curation.curate_via(self.client, self.database, run, "archive", kafka=kafka, wait=wait)

    def unarchive(self, run: str, *, kafka: str | None = None, wait: float | None = None) -> dict[str, Any]:
        return curation.curate_via(self.client, self.database, run, "unarchive", kafka=kafka, wait=wait)

    def delete(self, run: str, *, kafka: str | None = None, wait: float | None = None) -> dict[str, Any]:
        """Delete the run's rows from every table (an audit row stays in run_deletions); `rows_deleted`
        says how many per table once applied."""
        return curation.curate_via(self.client, self.database, run, "delete", kafka=kafka, wait=wait)

    def curve(self, run: str | None = None, metrics: Sequence[str] | None = None, *, attempts: bool = False,
              group: str | None = None, project: str | None = None, points: int | None = None,
              x: str | None = None, output: Output = "pandas") -> Any:
        """`runstream curve`: a run's curve (metric, step, value, source_run_id; a fork's starts with its
        parent's), every attempt's value of each step (`attempts=True`: metric, step, attempt, value,
        shown_attempt), or a group's per-step mean/min/max/count (`group=`). With `points` or `x`: the
        run's own points against x, in at most `points` buckets with min/max/last (as `metric_history`)."""
        from runstream.analysis.curves import curve

        return _frame(curve(self.client, self.database, run, metrics=metrics, attempts=attempts, group=group,
                            project=project, points=points, x=x), output)

    def histograms(self, run: str, metric: str | None = None, rank: int | None = None, *,
                   step: int | None = None) -> list[dict[str, Any]]:
        """The run's histograms (`Run.log_histogram`), by metric, step and rank, one dict each: run_id,
        metric, step, rank, node, time, attempt, edges, counts (finite values per bin) and nan_count,
        neg_inf_count, pos_inf_count; `metric`, `rank`, `step` keep only those (runstream.analysis.histograms)."""
        from runstream.analysis.histograms import histograms

        return histograms(self.client, self.database, run, metric=metric, rank=rank, step=step)

    def rank_spread(self, run: str, metric: str = "step_time", *, by_rank: bool = False, project: str | None = None,
                    output: Output = "pandas") -> Any:
        """A run logged from every rank (`log_all_ranks`): per step, ranks, min, median, max, max_rank and max_node
        across its ranks' finite values of `metric`; `by_rank=True`: per rank, its median, the run's median
        and their ratio (runstream.analysis.ranks)."""
        from runstream.analysis import ranks

        query = ranks.rank_summary if by_rank else ranks.rank_spread
        return _frame(query(self.client, self.database, run, metric, project=project), output)

    def stragglers(self, project: str | None = None, metric: str = "step_time", *, output: Output = "pandas") -> Any:
        """Per run logged from every rank: its slowest rank (highest median of `metric`), node, median, the
        run's median and their ratio, the most skewed run first (`runstream stragglers`)."""
        from runstream.analysis import ranks

        return _frame(ranks.stragglers(self.client, self.database, project, metric), output)

    def points_arrow(self, runs: str | Sequence[str] | None = None, metrics: str | Sequence[str] | None = None, *,
                     project: str | None = None, where: str | None = None, include_archived: bool = False) -> pa.Table:
        """Every stored point, full resolution, as Arrow: run_id, metric, step, value, time, attempt (a step
        logged again keeps its latest value), exactly what `export` writes to its points file. `runs` (ids or
        unique names), else the runs of `project` matching `where`, as `runs()` lists them."""
        from runstream.analysis import export

        if runs is not None:
            refs = [runs] if isinstance(runs, str) else list(runs)
            ids = [run_id for run_id, _ in queries.resolve_runs(self.client, self.database, refs, project)]
        else:
            listed = export.selected_runs(self.client, self.database, project=project, where=where,
                                          include_archived=include_archived)
            ids = [row[0] for row in listed.rows]
        names = None if metrics is None else ([metrics] if isinstance(metrics, str) else list(metrics))
        return export.points_arrow(self.client, self.database, ids, names)

    def export(self, out: str | Path, project: str | None = None, *, where: str | None = None,
               format: str = "parquet", partition_by: str | None = None, overwrite: bool = False,
               include_archived: bool = False, progress: bool | None = False) -> Any:
        """`runstream export`: the runs of `project` matching `where`, their params and every point (and
        histograms, other ranks' points, declared metrics) as parquet, csv or jsonl files under `out`, one
        per table or one folder per run (`partition_by="run"`). Returns what was written
        (runstream.analysis.export.ExportSummary: files, rows, bytes)."""
        from runstream.analysis import export

        return export.export(self.client, self.database, out, project=project, where=where, fmt=format,
                             partition_by=partition_by, overwrite=overwrite, include_archived=include_archived,
                             progress=progress)

    def sql(self, query: str, parameters: dict[str, Any] | None = None, *, output: Output = "pandas") -> Any:
        """Any SQL over the tables and views (see docs/sql.md); values belong in `parameters`."""
        if output == "arrow":
            return self.client.query_arrow(query, parameters=parameters or {})
        result = self.client.query(query, parameters=parameters or {})
        return _frame(queries.Table(list(result.column_names), [list(row) for row in result.result_rows]), output)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
