"""What a run declares about its metrics (`Run.define_metric`, `init(metrics=...)`): checked here, at the call.

A definition says whether lower or higher is better (`goal`), which summaries to show (`summary`)
and which logged axis to plot against (`step_metric`). The readers rank by the declared goal
first and by the name rule second (runstream.monitoring.metric_direction). Each
`metric_definitions` event carries every definition the run has made so far, so the last one is
the whole state; a definition made again replaces the earlier one of that metric.

A bad definition raises naming the metric and the value before anything is sent, so the run's
earlier definitions stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from runstream.producer.encodable import shown
from runstream.producer.params import check_key

#: The goals a metric may declare (runstream.monitoring.metric_direction reads them).
GOALS: tuple[str, ...] = ("min", "max")
#: The summaries a metric may ask to show.
SUMMARIES: tuple[str, ...] = ("min", "max", "last", "first", "mean")
#: The keys of one entry of `init(metrics={name: {...}})`: define_metric's keyword arguments.
DEFINITION_KEYS: tuple[str, ...] = ("goal", "summary", "step_metric")


def definition(name: Any, *, goal: Any = None, summary: Any = (), step_metric: Any = None) -> dict[str, Any]:
    """The `MetricDefinition` record of one declaration, or ValueError/TypeError naming the metric and value."""
    if not isinstance(name, str):
        raise TypeError(f"define_metric: the metric name must be a string, got {type(name).__name__} {shown(name)}")
    check_key("metric", name)
    where = f"define_metric({name!r})"
    if goal is not None and (not isinstance(goal, str) or goal not in GOALS):
        raise ValueError(f"{where}: goal must be 'min', 'max' or None, got {shown(goal)}")
    items: Iterable[Any] = (summary,) if isinstance(summary, str) else summary
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"{where}: summary must be a list of {', '.join(SUMMARIES)}, got "
                        f"{type(summary).__name__} {shown(summary)}") from None
    chosen: list[str] = []
    for item in items:
        if not isinstance(item, str) or item not in SUMMARIES:
            raise ValueError(f"{where}: summary items must be among {', '.join(SUMMARIES)}, got {shown(item)}")
        if item not in chosen:
            chosen.append(item)
    if step_metric is not None:
        if not isinstance(step_metric, str):
            raise TypeError(f"{where}: step_metric must be a metric name or None, got "
                            f"{type(step_metric).__name__} {shown(step_metric)}")
        check_key("metric", step_metric)
        if step_metric == name:
            raise ValueError(f"{where}: step_metric cannot be the metric itself, got {step_metric!r}")
    return {"metric": name, "goal": goal, "summary": chosen, "step_metric": step_metric}


def definitions_of(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The records of `init(metrics={name: {"goal": ..., "summary": [...], "step_metric": ...}})`, all
    checked before any is used; a value may also be just the goal ("min" or "max")."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics: expected a mapping of metric name to its definition, got "
                        f"{type(metrics).__name__} {shown(metrics)}")
    records: dict[str, dict[str, Any]] = {}
    for name, spec in metrics.items():
        if isinstance(spec, str) or spec is None:
            spec = {"goal": spec}
        if not isinstance(spec, Mapping):
            raise TypeError(f"metrics[{name!r}]: expected a mapping with goal, summary, step_metric or a goal "
                            f"string, got {type(spec).__name__} {shown(spec)}")
        unknown = sorted(str(key) for key in spec if key not in DEFINITION_KEYS)
        if unknown:
            raise ValueError(f"metrics[{name!r}]: unknown key {unknown[0]!r} (expected {', '.join(DEFINITION_KEYS)})")
        records[name] = definition(name, **spec)
    return records
