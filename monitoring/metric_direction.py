"""Which metrics are better when lower: the one definition, in Python and as its SQL twin.

A metric whose name contains one of `LOWER_IS_BETTER` (case-insensitive) is ranked by its minimum,
any other by its maximum: the comparison table's "best" column, the `metric_summary` rollup's
`best_value`, the `run_overview` view's `best` map and the leaderboard's default mode all ask here.
"""

from __future__ import annotations

LOWER_IS_BETTER: tuple[str, ...] = ("loss", "error", "err", "perplexity", "mse", "mae", "rmse")


def lower_is_better(metric: str) -> bool:
    """True for loss-like names, so that "best" means the minimum."""
    name = metric.lower()
    return any(part in name for part in LOWER_IS_BETTER)


def lower_is_better_sql(column: str = "metric") -> str:
    """The SQL twin of `lower_is_better` over a String column (the parts are fixed literals, never input)."""
    parts = ", ".join(f"'{part}'" for part in LOWER_IS_BETTER)
    return f"multiSearchAny(lower({column}), [{parts}])"


#: `lower_is_better_sql()` over the `metric` column, as the views use it.
LOWER_IS_BETTER_SQL = lower_is_better_sql()
