"""Optuna: `track(objective, project)` records every trial of a study as a run of the sweep.

    import optuna
    from runstream.producer.integrations.optuna import track

    study = optuna.create_study(study_name="lr-sweep", direction="minimize", pruner=optuna.pruners.MedianPruner())
    study.optimize(track(objective, "vision", group="resnet50", metric="val_loss"), n_trials=50)

Each trial is one run: `sweep` is the study's name, the run is named `<study>-trial-<number>` and
tagged `optuna.study` / `optuna.trial` / `optuna.direction`, `group` and `job_type` are yours. The
trial's params (what `trial.suggest_*` returned) are the run's params, every `trial.report(value,
step)` is a point of `intermediate_metric` at that step, the objective's return value is a point of
`metric` (one per objective, `<metric>_<i>`, for a multi-objective study, or the study's
`metric_names`) at the trial's last reported step, and the run ends with the trial's state: `ok`
(complete), `pruned` (the objective raised `optuna.TrialPruned`), `failed` (it raised, or returned
what Optuna refuses: NaN, the wrong number of values) or `killed` (KeyboardInterrupt).
Then `runstream runs --sweep lr-sweep --sort metrics.val_loss` is the study's table, and
`runstream curve --group resnet50` the band of its trials.

Why an objective wrapper and not an Optuna callback: `study.optimize(callbacks=...)` calls back
only after a trial ended, so its intermediate values would arrive at once at the end, the run
would not span the trial (nor its GPU samples), and a crashed worker would leave nothing. The
wrapper starts the run when the trial starts and sends each reported value as it is reported, so a
long trial is watched live and its pruning seen when it happens. Exceptions pass through unchanged:
Optuna sees exactly what the objective raised or returned. Inside the objective, `current_run()` is
the trial's run, for logging more than the objective value (training loss per batch...).

Optuna is not a dependency of the SDK: importing this module without it raises an ImportError
naming the extra, `pip install 'runstream[optuna]'`.
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    import optuna
except ImportError as error:
    raise ImportError(
        "runstream.producer.integrations.optuna needs Optuna; install it with: pip install 'runstream[optuna]'"
    ) from error

from runstream.producer.kafka_settings import normalise_options
from runstream.producer.run import Run, init

Objective = Callable[[Any], Any]

_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("runstream_optuna_run", default=None)


def current_run() -> Run | None:
    """The run of the trial this objective call is evaluating (None outside a tracked objective).

    Per call (a context variable), so `study.optimize(..., n_jobs=4)` gives each thread its own trial's run."""
    return _current.get()


def _metric_names(study: Any, metric: str | Sequence[str]) -> list[str]:
    """One name per objective: `metric` for a single objective; for several, the names given, else the
    study's `metric_names`, else `<metric>_<i>`."""
    count = len(study.directions)
    if isinstance(metric, str):
        if count == 1:
            return [metric]
        named = getattr(study, "metric_names", None)
        return list(named) if named else [f"{metric}_{i}" for i in range(count)]
    names = list(metric)
    if len(names) != count:
        raise ValueError(f"metric: the study has {count} objectives, got {len(names)} names {names!r}")
    return names


def _final_values(returned: Any, count: int) -> list[float] | str:
    """The objective's values as floats, or why Optuna will fail the trial (its own checks: a number per
    direction, none of them NaN)."""
    values = list(returned) if isinstance(returned, Sequence) and not isinstance(returned, str) else [returned]
    if len(values) != count:
        return f"objective returned {len(values)} values for {count} objectives: {returned!r}"
    floats = []
    for value in values:
        try:
            number = float(value)  # as Optuna converts it: numpy and torch scalars too
        except (TypeError, ValueError):
            return f"objective returned {value!r}, not a number"
        if math.isnan(number):
            return f"objective returned {returned!r}: Optuna fails a trial whose value is NaN"
        floats.append(number)
    return floats


class _Trial:
    """One trial's run: the hooked `trial.report`, the params seen so far, the end."""

    def __init__(self, trial: Any, run: Run, intermediate_metric: str) -> None:
        self.trial = trial
        self.run = run
        self.intermediate_metric = intermediate_metric
        self.reported: set[int] = set()
        self.params: dict[str, Any] = dict(run.params)

    def log_new_params(self) -> None:
        """Params suggested since the last look (suggestions happen during the objective, not before)."""
        new = {key: value for key, value in self.trial.params.items()
               if key not in self.params or self.params[key] != value}
        if new:
            self.params.update(new)
            self.run.log_params(new)

    def report(self, original: Callable[[float, int], None], value: float, step: int) -> None:
        original(value, step)  # Optuna's own checks first: what it refuses is not logged either
        if step in self.reported:  # Optuna keeps the first value reported at a step, and so does the run
            return
        self.reported.add(step)
        self.log_new_params()
        self.run.log({self.intermediate_metric: float(value)}, step=int(step))

    @property
    def last_step(self) -> int:
        return max(self.reported) if self.reported else 0


def track(
    objective: Objective,
    project: str,
    *,
    group: str | None = None,
    job_type: str | None = None,
    metric: str | Sequence[str] = "value",
    intermediate_metric: str = "intermediate_value",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    kafka: str | None = None,
    kafka_options: Mapping[str, Any] | None = None,
    spool: str | None = None,
    topic_prefix: str | None = None,
    sample_interval: float | None = None,
) -> Objective:
    """Wrap `objective` so that every trial it evaluates is recorded as a run of the study's sweep.

    `metric` names the objective's value (give a loss-like name such as `val_loss` for a minimised
    objective, so that `runstream best` ranks by the minimum), `intermediate_metric` the values of
    `trial.report`. `params` are recorded with each trial's own params (the trial's win), `tags` with the
    optuna.* tags. The sink settings are those of `runstream.init`.
    """
    if not callable(objective):
        raise TypeError(f"objective: expected a function of the trial, got {type(objective).__name__}")
    if not isinstance(project, str) or not project.strip():
        raise ValueError(f"project: expected a non-empty string, got {project!r}")
    for field, name in (("intermediate_metric", intermediate_metric),
                        *(("metric", m) for m in ([metric] if isinstance(metric, str) else metric))):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{field}: expected a metric name, got {name!r}")
    fixed = dict(params or {})
    extra_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    sink: dict[str, Any] = {"kafka": kafka, "kafka_options": dict(normalise_options(kafka_options or {})),
                            "spool": spool, "topic_prefix": topic_prefix, "sample_interval": sample_interval}

    @functools.wraps(objective)
    def tracked(trial: Any) -> Any:
        study = trial.study
        names = _metric_names(study, metric)
        directions = ",".join(d.name.lower() for d in study.directions)
        run = init(project, f"{study.study_name}-trial-{trial.number}", params={**fixed, **trial.params},
                   tags={**extra_tags, "optuna.study": study.study_name, "optuna.trial": str(trial.number),
                         "optuna.direction": directions},
                   group=group, job_type=job_type, sweep=study.study_name, **sink)
        state = _Trial(trial, run, intermediate_metric)
        original = trial.report
        trial.report = functools.partial(state.report, original)
        token = _current.set(run)
        try:
            returned = objective(trial)
        except optuna.TrialPruned:
            _end(state, "pruned", f"pruned at step {state.last_step}" if state.reported else "pruned")
            raise
        except KeyboardInterrupt:
            _end(state, "killed", "KeyboardInterrupt")
            raise
        except BaseException as error:
            _end(state, "failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            _current.reset(token)
            try:
                del trial.report  # the trial's own method again
            except AttributeError:
                pass
        values = _final_values(returned, len(names))
        if isinstance(values, str):
            _end(state, "failed", values)
        else:
            state.log_new_params()
            run.log(dict(zip(names, values, strict=True)), step=state.last_step)
            _end(state, "ok", None)
        return returned

    return tracked


def _end(state: _Trial, status: str, note: str | None) -> None:
    """Record the params the objective suggested, then finish the run with the trial's state."""
    if not state.run.finished:
        state.log_new_params()
        state.run.finish(status, error=note if status != "ok" else None)
