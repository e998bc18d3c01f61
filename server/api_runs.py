"""The run questions of the HTTP API: projects, the run list with the filter language, one run, compare,
the leaderboard and param importance. Each route calls the function the CLI and `runstream.Client` call
(runstream.analysis.queries, importance, reproduce), so the three give the same numbers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from runstream.analysis import queries
from runstream.analysis.importance import NOTE as IMPORTANCE_NOTE
from runstream.analysis.importance import importance as importance_table
from runstream.analysis.reproduce import reproduce
from runstream.server.api_errors import UnknownRun
from runstream.server.api_tables import Format, FormatQuery, json_response, resolve, table_response
from runstream.server.state import Server, ServerState

router = APIRouter()

#: The most rows one request may ask for (`limit`): beyond it, 422.
MAX_ROWS = 10_000
Limit = Annotated[int | None, Query(ge=1, le=MAX_ROWS, description=f"at most this many rows (1-{MAX_ROWS})")]
Mode = Annotated[str | None, Query(pattern="^(min|max)$", description="min or max is best (default: the goal)")]
Runs = Annotated[list[str], Query(alias="run", min_length=1, description="run id or unique name (repeatable)")]
#: Column prefixes of the run list whose columns exist only when some listed run has the field.
_FIELD_PREFIXES = ("params.", "metrics.", "best.")


@router.get("/api/projects", summary="projects with their number of runs (archived left out)")
def projects(server: Server) -> Response:
    rows = server.client.query(
        f"SELECT project, count() AS runs, max(started_at) AS last_started "  # noqa: S608 - the checked name
        f"FROM {server.database}.run_summary FINAL WHERE NOT archived GROUP BY project ORDER BY project").result_rows
    return json_response({"projects": [{"project": p, "runs": n, "last_started": t} for p, n, t in rows]})


def _compare(server: ServerState, run_ids: list[str], metrics: list[str] | None = None) -> queries.Table:
    """queries.compare; a run whose start is stored but whose summary is not yet (the loaders are writing it,
    milliseconds) is a 404 saying so, not a server error."""
    try:
        return queries.compare(server.client, server.database, run_ids, metrics)
    except KeyError as error:
        raise UnknownRun(f"run {error.args[0]!r}: its summary is not stored yet (being loaded); ask again") from None


def _choose(table: queries.Table, columns: str | None) -> queries.Table:
    """The named columns, in the order named; a params/metrics/best column no listed run has is all nulls
    (a run lacking a field), any other unknown name a 400 naming it."""
    if not columns:
        return table
    wanted = [name.strip() for name in columns.split(",") if name.strip()]
    index = {name: i for i, name in enumerate(table.columns)}
    for name in wanted:
        if name not in index and not name.startswith(_FIELD_PREFIXES):
            raise ValueError(f"columns: unknown column {name!r} (known: {', '.join(table.columns)})")
    rows = [[row[index[name]] if name in index else None for name in wanted] for row in table.rows]
    return queries.Table(wanted, rows, table.left_out)


@router.get("/api/runs", summary="the run list: params, final and best metrics, filtered and sorted")
def runs(server: Server, project: str | None = None,
         where: Annotated[str | None, Query(description="filter, e.g. params.lr < 0.01 and metrics.acc > 0.9")] = None,
         sort: Annotated[str | None, Query(description="comma-separated fields, '-' for descending")] = None,
         limit: Limit = None, columns: Annotated[str | None, Query(description="comma-separated columns")] = None,
         group: str | None = None, sweep: str | None = None, archived: bool = False,
         fmt: FormatQuery = Format.json) -> Response:
    table = queries.runs(server.client, server.database, project=project or None, where=where or None,
                         sort=sort or None, limit=limit, group=group, sweep=sweep, include_archived=archived)
    return table_response(_choose(table, columns), fmt)


@router.get("/api/runs/{run}", summary="one run: what reproduce shows, and its summary as compare shows it")
def run(server: Server, run: Annotated[str, Path(description="run id or unique name")]) -> Response:
    ((run_id, _name),) = resolve(server.client, server.database, [run])
    info: dict[str, Any] = reproduce(server.client, server.database, run_id)
    summary = _compare(server, [run_id])
    info["summary"] = {row[0]: row[1] for row in summary.rows}
    info["status"] = info["summary"].get("status", info["status"])  # the honest one (running, stalled, lost...)
    return json_response(info)


@router.get("/api/compare", summary="params side by side (differences marked), each metric's final and best")
def compare(server: Server, runs: Runs,
            metric: Annotated[list[str] | None, Query(description="only this metric (repeatable)")] = None,
            fmt: FormatQuery = Format.json) -> Response:
    ids = [run_id for run_id, _ in resolve(server.client, server.database, runs)]
    return table_response(_compare(server, ids, metric or None), fmt)


@router.get("/api/best", summary="the leaderboard of a project by a metric")
def best(server: Server, project: str, metric: str, mode: Mode = None,
         limit: Annotated[int, Query(ge=0, le=MAX_ROWS, description=f"rows (0: all, at most {MAX_ROWS})")] = 10,
         archived: bool = False, fmt: FormatQuery = Format.json) -> Response:
    table = queries.leaderboard(server.client, server.database, project, metric, mode, limit or None,
                                include_archived=archived)
    return table_response(table, fmt, left_out=table.left_out, note=queries.left_out_note(metric, table.left_out))


@router.get("/api/importance", summary="which params go along with a metric (correlation, not causation)")
def importance(server: Server, project: str, metric: str, mode: Mode = None,
               fmt: FormatQuery = Format.json) -> Response:
    table = importance_table(server.client, server.database, project, metric, mode)
    return table_response(table, fmt, left_out=table.left_out, note=IMPORTANCE_NOTE)
