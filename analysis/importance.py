"""Which params go along with a metric across a project's runs: rank correlation and grouped means.

This is correlation across the runs that happen to exist, not causation: params chosen together
(a sweep that raised lr and batch size at once) are indistinguishable, and a param nobody varied
explains nothing. The note printed with the result says so.

- Numeric params: Spearman's rank correlation with the metric (average ranks for ties, so a
  param with a few repeated values such as a batch size is handled exactly), in [-1, 1].
- Categorical params (strings, bools, or a key holding mixed kinds): the metric's mean per value,
  and eta² (share of the metric's variance between the groups), in [0, 1].
Runs without a finite value of the metric (never logged, or only NaN/±Inf: runstream.monitoring.finite_values)
are left out, and the table counts them (`Table.left_out`); so is a run lacking the param.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from runstream.analysis.queries import (
    Table,
    check_metric,
    check_mode,
    check_project,
    no_finite_value,
    param_value,
    vocabulary,
)
from runstream.monitoring.finite_values import finite_sql, ranks
from runstream.monitoring.metric_direction import declared_goals

NOTE = ("Correlation across existing runs, not causation: params varied together cannot be told apart, "
        "and an unvaried param shows nothing. Spearman rho for numeric params (sign: the metric rises with "
        "the param), eta² for categorical ones (share of the metric's variance between the param's values).")


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span (as Spearman's rho requires)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """None when either side is constant (the correlation is undefined, not zero)."""
    return pearson(average_ranks(x), average_ranks(y))


def eta_squared(groups: dict[str, list[float]]) -> float | None:
    values = [v for group in groups.values() for v in group]
    if len(values) < 2 or len(groups) < 2:
        return None
    mean = sum(values) / len(values)
    total = sum((v - mean) ** 2 for v in values)
    if total == 0:
        return None
    between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
    return between / total


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Per param key, the scored runs that have it, as parallel arrays in run_id order: the metric's best
# finite value (y), the param's number (NaN where it has none, `has_number` says which) and text ('' for
# a param logged as None, as importance always grouped it). One round trip, and a handful of arrays
# instead of a Python dict per run: at 100,000 runs moving every run's params maps into Python took
# 1.7-4.9 s (measured), the arrays ~0.2 s. groupArray skips NULLs, so nullable values travel filled
# in. The count of runs left out rides along (as in the leaderboard).
_PARAM_ARRAYS = """
SELECT
    key,
    arraySort((v, r) -> r, groupArray(y), groupArray(run_id)) AS ys,
    arraySort((v, r) -> r, groupArray(ifNull(num, nan)), groupArray(run_id)) AS numbers,
    arraySort((v, r) -> r, groupArray(num IS NOT NULL), groupArray(run_id)) AS has_number,
    arraySort((v, r) -> r, groupArray(ifNull(text, '')), groupArray(run_id)) AS texts,
    ({left_out}) AS left_out
FROM (
    SELECT run_id, y, key, params[key] AS text, params_num[key] AS num
    FROM (
        SELECT run_id, if({{mode:String}} = 'max', max_value[{{metric:String}}], min_value[{{metric:String}}]) AS y,
               params, params_num
        FROM {db}.run_summary FINAL
        WHERE project = {{project:String}} AND mapContains(final, {{metric:String}}) AND {finite}
    )
    ARRAY JOIN mapKeys(params) AS key
)
GROUP BY key
ORDER BY key
"""  # noqa: S608 - the module's own text and the validated database name

_LEFT_OUT = ("SELECT count() FROM {db}.run_summary FINAL WHERE project = {{project:String}} "
             "AND mapContains(final, {{metric:String}}) AND NOT mapContains(min_value, {{metric:String}})")


def _ranks_np(values: np.ndarray) -> np.ndarray:
    """average_ranks for an array: the same ranks (exact halves), in numpy."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)] - 1
    per_tie = (starts + ends) / 2 + 1
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(per_tie, ends - starts + 1)
    return ranks


def _pearson_np(x: np.ndarray, y: np.ndarray) -> float | None:
    """pearson for arrays; sums are sequential (cumsum), as Python's sum() adds, so figures keep their bits."""
    n = len(x)
    if n < 2:
        return None
    mx, my = float(np.cumsum(x)[-1]) / n, float(np.cumsum(y)[-1]) / n
    dx, dy = x - mx, y - my
    sxx, syy = float(np.cumsum(dx * dx)[-1]), float(np.cumsum(dy * dy)[-1])
    if sxx == 0 or syy == 0:
        return None
    return float(np.cumsum(dx * dy)[-1]) / math.sqrt(sxx * syy)


def _numbers(texts: list[str], numbers: np.ndarray, has_number: np.ndarray) -> np.ndarray | None:
    """The param as numbers when every run has a finite, non-bool number that `param_value` would give
    back unchanged (ints below 2**53 included); None sends the key down the per-value path."""
    if not bool(np.all(has_number)) or not bool(np.all(np.isfinite(numbers))):
        return None
    if bool(np.any(np.abs(numbers) >= 2.0**53)) or "true" in texts or "false" in texts:
        return None
    return numbers


#: Up to this many runs, importance reads one row per run (params as maps) and groups them in Python:
#: cheaper than the grouped arrays' ARRAY JOIN and sorts at 100 runs (~5 ms against ~10 ms, measured);
#: past it the arrays win (at 100,000 runs 0.5 s against 1.7-4.9 s).
ROW_READ_RUNS = 1000

_RUN_ROWS = ("SELECT run_id, if({{mode:String}} = 'max', max_value[{{metric:String}}], "
             "min_value[{{metric:String}}]) AS v, params, params_num FROM {db}.run_summary FINAL "
             "WHERE project = {{project:String}} AND mapContains(final, {{metric:String}}) ORDER BY run_id "
             "LIMIT {limit}")  # noqa: S608 - the module's own text and the validated database name

KeyArrays = tuple[str, Sequence[float], Sequence[float], Sequence[bool], Sequence[str]]


def _param_arrays(client: Any, db: str, project: str, metric: str, mode: str,
                  row_read_runs: int = ROW_READ_RUNS) -> tuple[list[KeyArrays], int]:
    """Per param key (in key order): the scored runs' metric values, the param's numbers (NaN where
    none), whether each has one, and its texts, all in run_id order; and the runs left out (logged the
    metric, never a finite value). Both reads give the same arrays, so the same figures."""
    parameters = {"project": project, "metric": metric, "mode": mode}
    found = list(client.query(_RUN_ROWS.format(db=db, limit=int(row_read_runs) + 1), parameters=parameters).result_rows)
    if len(found) <= row_read_runs:
        per_key: dict[str, tuple[list[float], list[float], list[bool], list[str]]] = {}
        scored = 0
        for _run_id, value, texts, numbers in found:
            if not ranks(value):
                continue
            scored += 1
            for key, text in texts.items():
                ys, values, has, shown = per_key.setdefault(key, ([], [], [], []))
                number = numbers.get(key)
                ys.append(float(value))
                values.append(math.nan if number is None else float(number))
                has.append(number is not None)
                shown.append("" if text is None else text)  # a param logged as None groups as ""
        return [(key, *per_key[key]) for key in sorted(per_key)], len(found) - scored
    sql = _PARAM_ARRAYS.format(db=db, left_out=_LEFT_OUT.format(db=db), finite=finite_sql("y"))
    rows = list(client.query(sql, parameters=parameters).result_rows)
    left_out = int(rows[0][-1]) if rows else no_finite_value(client, db, project, metric)
    return [(key, ys, numbers, has, texts) for key, ys, numbers, has, texts, _ in rows], left_out


def importance(client: Any, db: str, project: str, metric: str, mode: str | None = None, *,
               row_read_runs: int = ROW_READ_RUNS) -> Table:
    """One row per param, strongest association first (|rho| or eta²). `row_read_runs`: up to how many
    runs the per-run read is used (ROW_READ_RUNS; the answer is the same either way)."""
    # which best of each run: `mode`, else the metric's declared goal, else the name rule
    mode = check_mode(mode, metric, declared_goals(client, db, [metric]) if mode is None else None)
    found, left_out = _param_arrays(client, db, project, metric, mode, row_read_runs)
    if not found and not left_out:  # say why: a typo in the project or metric reads better than an empty table
        check_project(client, db, project)
        check_metric(vocabulary(client, db, project), metric, project)
    rows: list[list[Any]] = []
    for key, ys_raw, numbers_raw, has_raw, texts in found:
        ys_array = np.asarray(ys_raw, dtype=np.float64)
        numbers_array = np.asarray(numbers_raw, dtype=np.float64)
        has_number = np.asarray(has_raw, dtype=bool)
        fast = _numbers(list(texts), numbers_array, has_number)
        if fast is not None:
            rho = _pearson_np(_ranks_np(fast), _ranks_np(ys_array))
            distinct = len(np.unique(fast))
            detail = f"{distinct} distinct value{'s' if distinct != 1 else ''}"
            rows.append([f"params.{key}", "numeric", len(fast), "spearman_rho", rho, detail])
            continue
        ys = [float(y) for y in ys_array]
        xs = [param_value(text, float(number) if has else None)
              for text, number, has in zip(texts, numbers_array, has_number, strict=True)]
        if xs and all(_is_number(x) for x in xs):
            rho = spearman([float(x) for x in xs], ys)
            distinct = len(set(xs))
            detail = f"{distinct} distinct value{'s' if distinct != 1 else ''}"
            rows.append([f"params.{key}", "numeric", len(xs), "spearman_rho", rho, detail])
        else:
            groups: dict[str, list[float]] = {}
            for x, y in zip(xs, ys, strict=True):
                groups.setdefault(str(x).lower() if isinstance(x, bool) else str(x), []).append(y)
            eta = eta_squared(groups)
            means = sorted(((sum(g) / len(g), name, len(g)) for name, g in groups.items()),
                           reverse=(mode == "max"))
            detail = "; ".join(f"{name}: mean {mean:.4g} (n={n})" for mean, name, n in means)
            rows.append([f"params.{key}", "categorical", len(xs), "eta_squared", eta, detail])
    rows.sort(key=lambda r: (r[4] is None, -abs(r[4]) if r[4] is not None else 0.0, r[0]))
    return Table(["param", "kind", "runs", "measure", "strength", "detail"], rows, left_out)
