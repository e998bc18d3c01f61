"""The analysis questions as SQL over the views (analysis/views.py), answered as plain rows.

The CLI renders these rows and the notebook `Client` turns them into DataFrames, so both give the
same numbers; nothing here imports pandas. The run list, the filter, `compare`, the leaderboard and
importance read the compact per-run summary `run_summary` (runstream.consumer.run_summary: one row
per run, kept exact by the consumer), never the raw points: at 100 runs a question is a read of a
100-row table. Values always travel as bound query parameters; the
only text pasted into a statement is the validated database name and SQL from `filters.py`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from runstream.analysis.filters import (
    PREFIXES,
    FilterError,
    Translator,
    Vocabulary,
    tokenize,
    translate,
    vocabulary_from_rows,
)
from runstream.monitoring.metric_direction import declared_best_sql, declared_goals, goal_of
from runstream.monitoring.run_status import honest_statuses, run_status_sql, status_parameters

MODES = ("min", "max")
_PROJECT = "({project:String} = '' OR project = {project:String})"
#: Archived runs (runstream.analysis.curation) are hidden from the run list, the filter and the leaderboard.
_NOT_ARCHIVED = "NOT archived"


@dataclass
class Table:
    """Rows with their column names: what every question returns.

    `left_out`: for rankings (leaderboard, importance), the runs that logged the metric but never a
    finite value of it (runstream.monitoring.finite_values), so no rank; the outputs that have room
    for it say how many.
    """

    columns: list[str]
    rows: list[list[Any]]
    left_out: int = 0

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def open_database(dsn: str) -> tuple[Any, str]:
    """Connect, and refuse a database that lacks the views (`runstream migrate` creates them; a read never does)."""
    from runstream.consumer.dsn import connect
    from runstream.consumer.migrations import require_migrated

    client, database = connect(dsn, create_database=False)
    require_migrated(client, database)
    return client, database


def _rows(client: Any, sql: str, parameters: dict[str, Any]) -> list[Any]:
    return list(client.query(sql, parameters=parameters).result_rows)


def check_mode(mode: str | None, metric: str, declared: dict[str, str] | None = None) -> str:
    """`mode` when given (it overrides a declared goal), else the metric's goal (`goal_of`: the declared
    one, else the name rule)."""
    if mode is None:
        return goal_of(metric, declared)
    if mode not in MODES:
        raise ValueError(f"mode: expected min or max, got {mode!r}")
    return mode


def vocabulary(client: Any, db: str, project: str | None) -> Vocabulary:
    """The param keys (with kinds), metric names and tag keys the project's runs have: a read of the
    small `run_keys` table (runstream.consumer.run_summary), not of every run.

    A param key is text-kind where some run has it without a number (text, or logged as None), and
    number-kind where some run has it as a number (ints, floats, bools as 1/0)."""
    sql = f"SELECT DISTINCT toString(kind), key FROM {db}.run_keys WHERE {_PROJECT}"  # noqa: S608
    return _vocabulary_of(_rows(client, sql, {"project": project or ""}))


def _vocabulary_of(rows: Iterable[tuple[str, str]]) -> Vocabulary:
    """A Vocabulary from run_keys' (kind, key) rows."""
    rows = list(rows)
    return vocabulary_from_rows(((key, "string" if kind == "param_text" else "float")
                                 for kind, key in rows if kind.startswith("param")),
                                (key for kind, key in rows if kind == "metric"),
                                (key for kind, key in rows if kind == "tag"))


def _named(where: str | None, sort: str | None) -> Vocabulary | None:
    """Every param, metric and tag key that the filter and sort name, each with every kind: what an
    optimistic translation assumes. None when they name none (attributes only) or do not tokenise."""
    texts = [where or ""] + [item.strip().lstrip("+-").strip() for item in (sort or "").split(",")]
    named = Vocabulary()
    try:
        tokens = [token for text in texts for token in tokenize(text)]
    except FilterError:
        return None
    for token in tokens:
        if token.kind != "field" or len(token.value) < 2 or token.value[0] not in PREFIXES:
            continue
        prefix, key = token.value[0], ".".join(token.value[1:])
        if prefix == "params":
            named.param_kinds[key] = {"number", "string"}
        elif prefix == "tags":
            named.tags.add(key)
        else:
            named.metrics.add(key)
    return named if named.param_kinds or named.metrics or named.tags else None


def _evidence(rows: list[Any], named: Vocabulary) -> Vocabulary:
    """The named params and metrics as the returned rows show them: keys and kinds the database
    certainly holds (a subset of its vocabulary). Tags are not in the rows, so never shown."""
    shown = Vocabulary()
    for row in rows:
        texts, numbers, final = row[5], row[6], row[7]
        for key in named.param_kinds:
            if key in numbers:
                shown.param_kinds.setdefault(key, set()).add("number")
            elif key in texts:
                shown.param_kinds.setdefault(key, set()).add("string")
        shown.metrics.update(name for name in named.metrics if name in final)
    return shown


def _translate(vocab: Vocabulary, where: str | None, sort: str | None) -> tuple[Translator, str | None, str]:
    translator = Translator(vocab)
    condition = translate(where, vocab, translator)[0] if where else None
    return translator, condition, translator.sort_sql(sort) if sort else ""


def _translated(client: Any, db: str, project: str | None, where: str | None,
                sort: str | None) -> tuple[Translator, str | None, str]:
    """The filter's condition and sort terms. A filter or sort on run attributes alone (status, name,
    started_at...) needs no vocabulary; any other is translated against the project's (a FilterError
    then comes from that translation, whichever field it names)."""
    try:
        return _translate(Vocabulary(), where, sort)
    except FilterError:
        return _translate(vocabulary(client, db, project), where, sort)


def check_metric(vocab: Vocabulary, metric: str, project: str | None) -> None:
    if metric not in vocab.metrics:
        close = difflib.get_close_matches(metric, sorted(vocab.metrics), n=5, cutoff=0.5)
        where = f"project {project!r}" if project else "this database"
        known = ", ".join(close or sorted(vocab.metrics)[:10]) or "none"
        raise ValueError(f"metric {metric!r}: no run of {where} logged it (did you mean: {known})")


def check_project(client: Any, db: str, project: str | None) -> None:
    if not project:
        return
    known = [p for (p,) in _rows(client, f"SELECT DISTINCT project FROM {db}.runs", {})]  # noqa: S608
    if project not in known:
        close = difflib.get_close_matches(project, known, n=5, cutoff=0.5)
        raise ValueError(f"project {project!r}: no runs in this database (projects: "
                         f"{', '.join(close or sorted(known)[:10]) or 'none'})")


def param_value(text: str | None, number: float | None) -> Any:
    """A param as logged: numbers as numbers (ints stay ints), anything else as its text."""
    if number is None:
        return text
    if text is not None and text.lstrip("-").isdigit():
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    return number


def runs(client: Any, db: str, *, project: str | None = None, where: str | None = None,
         sort: str | None = None, limit: int | None = None, group: str | None = None,
         sweep: str | None = None, now: dt.datetime | None = None, stall_after_s: float | None = None,
         include_archived: bool = False) -> Table:
    """One row per run: attributes, every param, final metrics (metrics.X), best metrics (best.X).

    `group` and `sweep` keep the runs with that label (the shortcuts of `--where "group = 'G'"`). The
    label columns (group, job_type, sweep) are there when some listed run has the label, as params are.

    `status` (in the rows and in `where`) is the honest one of runstream.monitoring.run_status (running,
    stalled, lost, ok, failed, killed) as of `now` (default: the current time), `stall_after_s` (default:
    the `[monitor] stall_after_s` setting).

    Archived runs (`runstream archive`) are left out unless `include_archived`."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive number of runs, got {limit}")
    status_now = status_parameters(now, stall_after_s)
    labels = _label_conditions(group=group, sweep=sweep)
    # best (in the rows, the filter and the sort): each metric's declared goal, else the name rule
    best, goal_parameters = declared_best_sql(declared_goals(client, db))

    def query(translator: Translator, condition: str | None, order: str) -> list[Any]:
        conditions = ([_PROJECT, *labels] + ([] if include_archived else [_NOT_ARCHIVED])
                      + ([condition] if condition else []))
        parameters = {**translator.parameters, **status_now, **goal_parameters, "project": project or "",
                      **{name: value for name, value in (("group", group), ("sweep", sweep)) if value is not None}}
        # The honest status joins every run's last heartbeat (~7 ms at 100 runs, measured): only a filter or
        # sort on status pays it in the query; otherwise the summary is read alone and the few runs it says
        # are running get their honest status (stalled, lost) from a second, small query.
        on_status = "status" in (condition or "") or "status" in order
        source = f"({run_status_sql(db)})" if on_status else f"{db}.run_summary FINAL"
        sql = (
            f"SELECT run_id, run_name, project, status, started_at, params, params_num, final, "  # noqa: S608
            f"{best if best == 'best' else f'{best} AS best'}, gpu_hours, "
            f"run_group, job_type, sweep "
            f"FROM {source} WHERE {' AND '.join(conditions)} "
            f"ORDER BY {f'{order}, ' if order else ''}started_at, run_id" + (f" LIMIT {int(limit)}" if limit else "")
        )
        found = _rows(client, sql, parameters)
        if on_status:
            return found
        honest = honest_statuses(client, db, [row[0] for row in found if row[3] == "running"], now=now,
                                 stall_after_s=stall_after_s)
        return [(*row[:3], honest.get(row[0], row[3]), *row[4:]) for row in found]

    def same(a: tuple[Translator, str | None, str], b: tuple[Translator, str | None, str]) -> bool:
        return (a[1], a[2], a[0].parameters) == (b[1], b[2], b[0].parameters)

    # Fields are checked against the project's names (run_keys) before an answer is given. A round trip
    # for them first measured as much as the query itself at 100 runs (~2 ms), so the query runs first,
    # translated as if every named key existed in every kind. When the rows it returns show every named
    # field, with kinds that translate to the very same SQL, they prove the check (the database holds
    # at least what its rows show, and more kinds only allow more). Otherwise (no rows, a tag, a key
    # not shown, a sort whose kind the rows cannot tell) the names are read and checked as before:
    # an error names the closest fields, and a different translation runs again.
    named = _named(where, sort)
    try:
        optimistic = _translate(named, where, sort) if named else None
    except FilterError:
        optimistic = None
    if optimistic is None:
        rows = query(*_translated(client, db, project, where, sort))
    else:
        assert named is not None
        rows = query(*optimistic)
        try:
            proven = bool(rows) and same(_translate(_evidence(rows, named), where, sort), optimistic)
        except FilterError:
            proven = False
        if not proven:
            checked = _translated(client, db, project, where, sort)  # raises, naming the closest fields
            if not same(checked, optimistic):
                rows = query(*checked)
    if not rows:
        check_project(client, db, project)
    param_keys = sorted({key for row in rows for key in row[5]})
    metric_names = sorted({name for row in rows for name in row[7]})
    shown_labels = [i for i, _ in enumerate(LABELS) if any(row[10 + i] for row in rows)]
    columns = ["run_id", "name", "project", "status", "started_at"] + [LABELS[i] for i in shown_labels]
    columns += [f"params.{key}" for key in param_keys]
    columns += [f"metrics.{name}" for name in metric_names] + [f"best.{name}" for name in metric_names]
    columns.append("gpu_hours")
    out = []
    for run_id, name, proj, status, started, params, numbers, final, best, gpu_hours, *label_values in rows:
        row: list[Any] = [run_id, name, proj, status, started] + [label_values[i] or None for i in shown_labels]
        # a param logged as None is NULL in the summary: None, as a param never logged
        row += [param_value(params.get(key), numbers.get(key)) for key in param_keys]
        row += [final.get(name) for name in metric_names] + [best.get(name) for name in metric_names]
        row.append(gpu_hours if gpu_hours is not None else 0.0)
        out.append(row)
    return Table(columns, out)


#: The run labels of `init(group=, job_type=, sweep=)`, as the run list names its columns.
LABELS = ("group", "job_type", "sweep")


def _label_conditions(*, group: str | None, sweep: str | None) -> list[str]:
    """The run list's `--group`/`--sweep` conditions (bound as {group}/{sweep}); an empty label is refused,
    since no run is labelled '' (a run without the label has none)."""
    for field, value in (("group", group), ("sweep", sweep)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{field}: expected a non-empty label, got {value!r}")
    return ((["run_group = {group:String}"] if group is not None else [])
            + (["sweep = {sweep:String}"] if sweep is not None else []))


def resolve_runs(client: Any, db: str, refs: list[str], project: str | None = None) -> list[tuple[str, str]]:
    """(run_id, run_name) for each reference: a run id, or a run name that is unique (in `project`)."""
    if not refs:
        raise ValueError("runs: name at least one run id or run name")
    rows = _rows(client, f"SELECT run_id, run_name, project FROM {db}.runs FINAL "  # noqa: S608
                 "WHERE has({refs:Array(String)}, run_id) OR has({refs:Array(String)}, run_name)", {"refs": refs})
    resolved = []
    for ref in refs:
        by_id = [(r, n) for r, n, _p in rows if r == ref]
        by_name = [(r, n) for r, n, p in rows if n == ref and (not project or p == project)]
        if by_id:
            resolved.append(by_id[0])
        elif len(by_name) == 1:
            resolved.append(by_name[0])
        elif by_name:
            ids = ", ".join(r for r, _ in by_name)
            raise ValueError(f"run {ref!r}: {len(by_name)} runs have this name ({ids}); name one by its run id")
        else:
            known = [n for (n,) in _rows(client, f"SELECT DISTINCT run_name FROM {db}.runs", {})]  # noqa: S608
            close = difflib.get_close_matches(ref, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"run {ref!r}: no run has this id or name{hint}")
    return resolved


def _same(values: list[Any]) -> bool:
    def key(value: Any) -> Any:
        return "nan" if isinstance(value, float) and math.isnan(value) else value
    return len({repr(key(v)) for v in values}) <= 1


def compare(client: Any, db: str, refs: list[str], metrics: list[str] | None = None) -> Table:
    """Params side by side (a `differs` mark where the runs disagree), then each metric at its
    final and best step: one column per run, so differences read across a row."""
    resolved = resolve_runs(client, db, refs)
    ids = [run_id for run_id, _ in resolved]
    rows = {r[0]: r for r in _rows(
        client,
        f"SELECT run_id, status, params, params_num, final, best, best_step, last_step, gpu_hours, "  # noqa: S608
        f"fork_from, fork_step, min_value, min_step, max_value, max_step "
        f"FROM {db}.run_summary FINAL WHERE has({{ids:Array(String)}}, run_id)", {"ids": ids})}
    wanted = metrics or sorted({name for r in rows.values() for name in r[4]})
    for name in metrics or []:
        if not any(name in r[4] for r in rows.values()):
            known = sorted({n for r in rows.values() for n in r[4]})
            raise ValueError(f"metric {name!r}: none of these runs logged it (they logged: {', '.join(known)})")
    labels = [name for _, name in resolved]
    if len(set(labels)) < len(labels):  # the same name twice: label by id too
        labels = [f"{name} ({run_id[:8]})" for run_id, name in resolved]
    out: list[list[Any]] = []

    def add(field: str, values: list[Any], diff: bool = True) -> None:
        out.append([field, *values, "*" if diff and not _same(values) else ""])

    add("run_id", ids, diff=False)
    honest = honest_statuses(client, db, [i for i in ids if rows[i][1] == "running"])
    add("status", [honest.get(i, rows[i][1]) for i in ids])
    if any(rows[i][9] is not None for i in ids):  # a fork: where it branched off (runstream lineage shows the tree)
        add("fork_from", [rows[i][9] for i in ids])
        add("fork_step", [rows[i][10] for i in ids])
    keys = sorted({key for i in ids for key in rows[i][2]})
    for key in keys:  # a param logged as None (NULL in the summary) and one never logged: both None, not differing
        add(f"params.{key}", [param_value(rows[i][2].get(key), rows[i][3].get(key)) for i in ids])
    declared = declared_goals(client, db, wanted)  # best: the declared goal's side, else the name rule's
    for name in wanted:
        goal = goal_of(name, declared)
        value, step = (11, 12) if goal == "min" else (13, 14)
        add(f"{name} final", [rows[i][4].get(name) for i in ids])
        add(f"{name} final step", [rows[i][7].get(name) for i in ids])
        add(f"{name} best ({goal})", [rows[i][value].get(name) for i in ids])
        add(f"{name} best step", [rows[i][step].get(name) for i in ids])
    add("gpu_hours", [rows[i][8] or 0.0 for i in ids])
    return Table(["field", *labels, "differs"], out)


def leaderboard(client: Any, db: str, project: str, metric: str, mode: str | None = None,
                limit: int | None = None, include_archived: bool = False) -> Table:
    """Runs ranked by their best value of `metric`; equal values rank by the earlier step reaching them.
    Without `mode`, best is the metric's declared goal, else the name rule (runstream.monitoring.metric_direction).
    Archived runs are neither ranked nor counted as left out unless `include_archived`."""
    mode = check_mode(mode, metric, declared_goals(client, db, [metric]) if mode is None else None)
    hidden = "" if include_archived else f" AND {_NOT_ARCHIVED}"
    best, step = ("max_value", "max_step") if mode == "max" else ("min_value", "min_step")
    # The `leaderboard` view's ranking, read straight from run_summary: the rank is the row's place in
    # ORDER BY (a window function over every run cost more than the rest of the query), and the count
    # of runs left out rides along as a scalar subquery (one round trip).
    sql = (f"SELECT run_id, run_name, status, {best}[{{metric:String}}] AS value, "  # noqa: S608
           f"{step}[{{metric:String}}] AS at_step, final[{{metric:String}}], last_step[{{metric:String}}], "
           f"({_LEFT_OUT.format(db=db)}{hidden}) AS left_out "
           f"FROM {db}.run_summary FINAL WHERE project = {{project:String}} AND mapContains({best}, {{metric:String}}) "
           f"AND isFinite(value){hidden} ORDER BY {'-value' if mode == 'max' else 'value'}, at_step, started_at, run_id"
           + (f" LIMIT {int(limit)}" if limit else ""))
    found = _rows(client, sql, {"project": project, "metric": metric})
    # run_summary says `running` until a run ends; which of those are stalled or lost is read for them alone
    honest = honest_statuses(client, db, [row[0] for row in found if row[2] == "running"])
    rows = [[rank, row[0], row[1], honest.get(row[0], row[2]), *row[3:-1]] for rank, row in enumerate(found, 1)]
    left_out = int(found[0][-1]) if found else no_finite_value(client, db, project, metric, include_archived)
    if not rows and not left_out:  # say why: a typo in the project or metric reads better than an empty table
        check_project(client, db, project)
        check_metric(vocabulary(client, db, project), metric, project)
    columns = ["rank", "run_id", "name", "status", f"{metric} {mode}", "at step", f"{metric} final", "last step"]
    return Table(columns, rows, left_out)


# Runs of the project that logged the metric but never a finite value of it (no finite min, so no max).
_LEFT_OUT = ("SELECT count() FROM {db}.run_summary FINAL WHERE project = {{project:String}} "
             "AND mapContains(final, {{metric:String}}) AND NOT mapContains(min_value, {{metric:String}})")


def no_finite_value(client: Any, db: str, project: str, metric: str, include_archived: bool = True) -> int:
    """How many runs of `project` logged `metric` but never a finite value of it: the runs every
    ranking leaves out (the summary keeps a finite min and max exactly for the others, in either mode)."""
    sql = _LEFT_OUT.format(db=db) + ("" if include_archived else f" AND {_NOT_ARCHIVED}")
    return int(_rows(client, sql, {"project": project, "metric": metric})[0][0])


def left_out_note(metric: str, left_out: int) -> str:
    """The line outputs print under a ranking that left runs out ('' when none was)."""
    if not left_out:
        return ""
    runs = "run" if left_out == 1 else "runs"
    return (f"{left_out} {runs} left out: logged {metric!r} but never a finite value of it "
            "(NaN and ±Inf are stored and shown as final values, never ranked)")


def metric_history(client: Any, db: str, run_ids: list[str], metrics: list[str],
                   points: int | None = None, x: str | None = None) -> Table:
    """Long form curves (runstream.analysis.curves `history`): with `points`, each curve cut into at most
    that many buckets with min, max and last per bucket and the NaN/±Inf points counted (spikes kept);
    without, every point. `x`: step, time, relative or a logged metric (default: the declared step_metric,
    else the step)."""
    from runstream.analysis.curves import history

    return history(client, db, run_ids, metrics, points=points, x=x)


def gpu_hours(client: Any, db: str, run_ids: list[str]) -> dict[str, float]:
    sql = f"SELECT run_id, gpu_hours FROM {db}.run_summary FINAL WHERE has({{ids:Array(String)}}, run_id)"  # noqa: S608
    return {run_id: float(hours or 0.0) for run_id, hours in _rows(client, sql, {"ids": run_ids})}
