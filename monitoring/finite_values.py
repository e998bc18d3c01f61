"""Which metric values count when runs are ranked: the one definition, in Python and as its SQL twin.

Every value a run logs is stored and shown as logged, NaN and ±Inf included (a final value of NaN
is what the run ended on). Only finite values are ranked: best, min and max, the leaderboard,
importance, the report's leaderboard and the dashboards' ranking panels take the finite values of
a metric and nothing else. A run whose metric only ever was NaN or ±Inf has no best value: it is
left out of the ranking, and outputs with room for it say how many runs were left out.

An infinity is a diverged or broken run, not a record: ranking +Inf first in a max-metric (or
-Inf first in a min-metric) would put exactly the runs nobody wants at the top.
"""

from __future__ import annotations

import math


def ranks(value: float | None) -> bool:
    """True when `value` takes part in best/min/max and rankings: a finite number."""
    return value is not None and math.isfinite(value)


def finite_sql(column: str = "value") -> str:
    """The SQL twin of `ranks` over a Float64 column or expression (module text, never user input)."""
    return f"isFinite({column})"


def finite_or_null_sql(column: str = "value") -> str:
    """`column` where it is finite, NULL where it is NaN or ±Inf: what min()/max() may aggregate."""
    return f"if({finite_sql(column)}, {column}, NULL)"


def finite_min_sql(column: str = "value") -> str:
    """The least finite value, NULL when there is none (plain min() would take -Inf, or 0 on no rows)."""
    return f"min({finite_or_null_sql(column)})"


def finite_max_sql(column: str = "value") -> str:
    """The greatest finite value, NULL when there is none."""
    return f"max({finite_or_null_sql(column)})"


def step_of_min_sql(value: str = "value", step: str = "step") -> str:
    """The earliest step reaching the least finite value (NULL-safe only under an `IS NULL` guard)."""
    return f"argMin({step}, (NOT {finite_sql(value)}, {value}, {step}))"


def step_of_max_sql(value: str = "value", step: str = "step") -> str:
    """The earliest step reaching the greatest finite value."""
    return f"argMax({step}, ({finite_sql(value)}, {value}, -{step}))"
