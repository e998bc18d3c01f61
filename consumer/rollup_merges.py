"""How the per-(run, metric) rollup `metric_summary_states` is merged back into values: one list, read by
the `metric_summary` view (migrations 2 and 6) and by the run summary's refresh (`run_summary.py`).

Each entry is (alias, merge expression over the state columns); an expression may name an alias before
it (ClickHouse resolves aliases in the same SELECT). Released view texts are rendered from this list, and
tests check them byte for byte, so an entry is never edited in place: a new state gets a new entry.
"""

from __future__ import annotations

from collections.abc import Sequence

ROLLUP_MERGES: tuple[tuple[str, str], ...] = (
    ("first_value", "argMinMerge(first_value_state)"),
    ("last_value", "argMaxMerge(last_value_state)"),
    ("min_value", "min(min_value_state)"),
    ("max_value", "max(max_value_state)"),
    ("step_of_min", "if(min_value IS NULL, NULL, argMinMerge(step_of_min_state))"),
    ("step_of_max", "if(max_value IS NULL, NULL, argMaxMerge(step_of_max_state))"),
    ("first_step", "min(first_step_state)"),
    ("last_step", "max(last_step_state)"),
    ("points", "groupBitmapMerge(steps_state)"),
    ("deliveries", "sum(deliveries_state)"),
    ("last_time", "max(last_time_state)"),
)
MERGE: dict[str, str] = dict(ROLLUP_MERGES)


def merged_columns(names: Sequence[str] | None = None, *, indent: str = "        ") -> str:
    """`expression AS alias` lines (comma-terminated) for `names` (default: every merged column)."""
    chosen = [(alias, MERGE[alias]) for alias in names] if names is not None else list(ROLLUP_MERGES)
    return "".join(f"{indent}{expression} AS {alias},\n" for alias, expression in chosen)
