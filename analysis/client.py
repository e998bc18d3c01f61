"""`runstream.Client`: the analysis questions from a notebook, as pandas DataFrames or Arrow tables.

    import runstream
    rs = runstream.Client("chdb:///home/me/.runstream/clickhouse")
    rs.runs(project="vision", where="params.lr < 0.01", sort="-metrics.acc")
    rs.metric_history(["run-a", "run-b"], "loss", points=1000)

The same SQL as the CLI answers (analysis/queries.py), so a notebook and a terminal agree. pandas is
imported here, not by `import runstream`, so training jobs that only log never pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

import pyarrow as pa

from runstream.analysis import queries
from runstream.analysis.importance import importance
from runstream.analysis.reproduce import reproduce

Output = Literal["pandas", "arrow"]

try:  # imported by name: pandas ships no type stubs, and DataFrames are Any to callers anyway
    pd: Any = importlib.import_module("pandas")
except ImportError as error:  # pragma: no cover - pandas comes with the analysis dependencies
    raise ImportError("runstream.Client needs pandas: pip install pandas (or runstream[analysis])") from error


def _frame(table: queries.Table, output: Output) -> Any:
    frame = pd.DataFrame(table.rows, columns=table.columns)
    if output == "arrow":
        return pa.Table.from_pandas(frame, preserve_index=False)
    if output != "pandas":
        raise ValueError(f"output: expected 'pandas' or 'arrow', got {output!r}")
    return frame


class Client:
    """A connection to runstream's ClickHouse database, as `runstream migrate` (or the consumer) laid it out."""

    def __init__(self, dsn: str | None = None) -> None:
        from runstream.consumer.dsn import default_dsn

        self.dsn = dsn or default_dsn()
        self.client, self.database = queries.open_database(self.dsn)

    def runs(self, project: str | None = None, *, where: str | None = None, sort: str | None = None,
             limit: int | None = None, output: Output = "pandas") -> Any:
        """One row per run: run_id, name, project, status, started_at, params.*, metrics.* (final), best.*,
        gpu_hours. `where` and `sort` take the CLI's filter language (`runstream runs --help`)."""
        return _frame(queries.runs(self.client, self.database, project=project, where=where, sort=sort,
                                   limit=limit), output)

    def metric_history(self, runs: str | list[str], metrics: str | list[str], *, points: int | None = None,
                       output: Output = "pandas") -> Any:
        """Long form: run_id, run name, metric, step, value. `points` downsamples each curve in ClickHouse
        (largestTriangleThreeBuckets; NaN/Inf dropped); without it every stored point comes back."""
        refs = [runs] if isinstance(runs, str) else list(runs)
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        resolved = queries.resolve_runs(self.client, self.database, refs)
        ids = [run_id for run_id, _ in resolved]
        if not points and output == "arrow":  # the raw points straight from ClickHouse, no Python rows
            sql = (f"SELECT run_id, metric, step, value FROM {self.database}.metric_points FINAL "  # noqa: S608
                   "WHERE run_id IN {runs:Array(String)} AND metric IN {metrics:Array(String)} "
                   "ORDER BY run_id, metric, step")
            return self.client.query_arrow(sql, parameters={"runs": ids, "metrics": names})
        table = queries.metric_history(self.client, self.database, ids, names, points=points)
        frame = pd.DataFrame(table.rows, columns=table.columns)
        frame.insert(1, "name", frame["run_id"].map(dict(resolved)))
        return pa.Table.from_pandas(frame, preserve_index=False) if output == "arrow" else frame

    def compare(self, runs: list[str], metrics: list[str] | None = None, *, output: Output = "pandas") -> Any:
        """Rows: fields (params, each metric at final and best step, GPU-hours); columns: one per run,
        and `differs` ('*' where the runs disagree)."""
        return _frame(queries.compare(self.client, self.database, list(runs), metrics), output)

    def best(self, project: str, metric: str, mode: str | None = None, *, limit: int | None = None,
             output: Output = "pandas") -> Any:
        """The leaderboard: ranked by best value, ties to the earlier step."""
        return _frame(queries.leaderboard(self.client, self.database, project, metric, mode, limit), output)

    def importance(self, project: str, metric: str, mode: str | None = None, *, output: Output = "pandas") -> Any:
        """Spearman rho / eta² per param: correlation across runs, not causation."""
        return _frame(importance(self.client, self.database, project, metric, mode), output)

    def reproduce(self, run: str) -> dict[str, Any]:
        """Commit, command line, config, data versions and hardware of a run, and a `launch` line."""
        return reproduce(self.client, self.database, run)

    def sql(self, query: str, parameters: dict[str, Any] | None = None, *, output: Output = "pandas") -> Any:
        """Any SQL over the tables and views (see docs/sql.md); values belong in `parameters`."""
        if output == "arrow":
            return self.client.query_arrow(query, parameters=parameters or {})
        result = self.client.query(query, parameters=parameters or {})
        return pd.DataFrame(result.result_rows, columns=list(result.column_names))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
