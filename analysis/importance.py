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

from runstream.analysis.queries import Table, check_metric, check_mode, check_project, run_values, vocabulary

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


def importance(client: Any, db: str, project: str, metric: str, mode: str | None = None) -> Table:
    """One row per param, strongest association first (|rho| or eta²)."""
    mode = check_mode(mode, metric)
    run_ids, values, params, left_out = run_values(client, db, project, metric, mode)
    if not run_ids and not left_out:  # say why: a typo in the project or metric reads better than an empty table
        check_project(client, db, project)
        check_metric(vocabulary(client, db, project), metric, project)
    rows: list[list[Any]] = []
    for key, by_run in params.items():
        present = [run_id for run_id in run_ids if run_id in by_run]
        ys = [values[run_id] for run_id in present]
        xs = [by_run[run_id] for run_id in present]
        if xs and all(_is_number(x) for x in xs):
            rho = spearman([float(x) for x in xs], ys)
            distinct = len(set(xs))
            detail = f"{distinct} distinct value{'s' if distinct != 1 else ''}"
            rows.append([f"params.{key}", "numeric", len(present), "spearman_rho", rho, detail])
        else:
            groups: dict[str, list[float]] = {}
            for x, y in zip(xs, ys, strict=True):
                groups.setdefault(str(x).lower() if isinstance(x, bool) else str(x), []).append(y)
            eta = eta_squared(groups)
            means = sorted(((sum(g) / len(g), name, len(g)) for name, g in groups.items()),
                           reverse=(mode == "max"))
            detail = "; ".join(f"{name}: mean {mean:.4g} (n={n})" for mean, name, n in means)
            rows.append([f"params.{key}", "categorical", len(present), "eta_squared", eta, detail])
    rows.sort(key=lambda r: (r[4] is None, -abs(r[4]) if r[4] is not None else 0.0, r[0]))
    return Table(["param", "kind", "runs", "measure", "strength", "detail"], rows, left_out)
