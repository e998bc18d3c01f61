"""Hugging Face transformers: `RunstreamCallback`, a `TrainerCallback` that records a Trainer's run.

    from runstream.producer.integrations.huggingface import RunstreamCallback
    trainer = Trainer(..., args=TrainingArguments(..., report_to="none"), callbacks=[RunstreamCallback("nlp")])

The run starts at `on_train_begin`, when the Trainer hands over everything a comparison needs:
its `TrainingArguments` (as top-level params: `learning_rate`, `per_device_train_batch_size`...),
the model's config (under `model.`) and, in a hyperparameter search, the trial's params. What the
Trainer logs (`on_log`) becomes metric points at `state.global_step`; `on_train_end` finishes it.

Goals: `TrainingArguments(metric_for_best_model=..., greater_is_better=...)` already says which way the
Trainer's best-model metric is better, so the run declares that goal for it (`eval_`-prefixed, as the
Trainer logs it) unless `metrics=` declares that metric otherwise. `resume=run_id` continues an earlier
run (with `trainer.train(resume_from_checkpoint=...)`); `log_all_ranks=True` stores every rank's logs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as error:
    raise ImportError(
        "runstream.producer.integrations.huggingface needs Hugging Face transformers; "
        "install it with: pip install 'runstream[huggingface]'"
    ) from error

from runstream.producer.integrations._common import numeric_entries
from runstream.producer.kafka_settings import normalise_options
from runstream.producer.metric_definitions import definitions_of
from runstream.producer.run import Run, init

log = logging.getLogger(__name__)


class RunstreamCallback(TrainerCallback):  # type: ignore[misc]
    """Trainer callback: training arguments and model config become params, logs become metrics.

    Pass `run=` to log into a run you manage (the callback then never finishes it); otherwise it
    starts one from `project`, `name`, `params`, `tags`, `metrics` (declared goals, as in
    `runstream.init`), `resume`, `log_all_ranks` and the sink settings. `params` given here win
    over the collected ones. Every rank calls the callback and gets the run (each samples its
    GPUs); the `Run` records params, metrics and the end from rank 0 only.

    The Trainer calls no callback when training raises, so a failed `train()` leaves the run open
    until the interpreter exits (recorded `failed` if the exception was uncaught); pass a run used
    as a context manager (`with runstream.init(...) as run:`) to record a caught failure too.
    Logs that arrive after `on_train_end` (a later `trainer.evaluate()`) start a new run with the
    same name and params, as a finished run takes no more points.
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | Sequence[str] | None = None,
        run: Run | None = None,
        kafka: str | None = None,
        kafka_options: Mapping[str, Any] | None = None,
        spool: str | None = None,
        topic_prefix: str | None = None,
        sample_interval: float | None = None,
        resume: str | None = None,
        log_all_ranks: bool | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        if run is None and (not isinstance(project, str) or not project.strip()):
            raise ValueError(f"project: expected a non-empty string (or a run=), got {project!r}")
        self._project = project
        self._name = name
        self._params = dict(params or {})
        self._tags = tags
        self._sink: dict[str, Any] = {
            "kafka": kafka, "kafka_options": dict(normalise_options(kafka_options or {})), "spool": spool,
            "topic_prefix": topic_prefix, "sample_interval": sample_interval, "log_all_ranks": log_all_ranks,
        }
        declared = definitions_of(metrics)  # a bad goal fails the script here, before training starts
        if run is not None:  # a handed-in run: declared on it now, as init(metrics=...) would have
            for metric, record in declared.items():
                run.define_metric(metric, goal=record["goal"], summary=record["summary"],
                                  step_metric=record["step_metric"])
        self._metrics: dict[str, Any] = dict(metrics or {})
        self._resume = resume
        self._run = run
        self._owns_run = run is None

    @property
    def run(self) -> Run | None:
        """The current run; None before training began."""
        return self._run

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._ensure_run(args, state, model)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, model: Any = None,
        **kwargs: Any,
    ) -> None:
        """Numbers only: the Trainer's logs can carry strings, which are not metrics."""
        values = numeric_entries(logs)
        if values:
            self._ensure_run(args, state, model).log(values, step=int(state.global_step))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        current = self._run
        if current is not None and self._owns_run and not current.finished:
            current.finish("ok")

    def _ensure_run(self, args: Any, state: Any, model: Any) -> Run:
        current = self._run
        if current is not None and not (current.finished and self._owns_run):
            return current
        assert self._project is not None  # checked in __init__ when no run was given
        resume, self._resume = self._resume, None  # the first run only: a later trial is a run of its own
        metrics = {**_best_model_goal(args), **self._metrics}
        started = init(self._project, self._name, params=self._collect_params(args, state, model),
                       tags=self._tags, resume=resume, metrics=metrics or None, **self._sink)
        self._run = started
        return started

    def _collect_params(self, args: Any, state: Any, model: Any) -> dict[str, Any]:
        """`args.to_dict()` rather than `to_sanitized_dict()`: the latter needs torch for batch sizes, and
        the former already masks `*_token` values."""
        collected: dict[str, Any] = {}
        config = getattr(model, "config", None)
        if config is not None and callable(getattr(config, "to_dict", None)):
            collected["model"] = _string_keys(config.to_dict())
        if args is not None and callable(getattr(args, "to_dict", None)):
            collected.update(_string_keys(args.to_dict()))
        trial = getattr(state, "trial_params", None)
        if isinstance(trial, Mapping):
            collected.update(_string_keys(trial))
        collected.update(_string_keys(self._params))
        return collected


def _best_model_goal(args: Any) -> dict[str, Any]:
    """{eval metric: goal} from `metric_for_best_model` and `greater_is_better`, named as the Trainer logs it
    (it prefixes `eval_`); TrainingArguments has already defaulted `greater_is_better` (False for a *loss)."""
    metric = getattr(args, "metric_for_best_model", None)
    if not isinstance(metric, str) or not metric:
        return {}
    greater = getattr(args, "greater_is_better", None)
    if greater is None:
        greater = not metric.endswith("loss")
    name = metric if metric.startswith("eval_") else f"eval_{metric}"
    return {name: {"goal": "max" if greater else "min"}}


def _string_keys(value: Any) -> Any:
    """Model configs key some dicts by int (`id2label`); runstream param keys are strings."""
    if isinstance(value, Mapping):
        return {str(key): _string_keys(item) for key, item in value.items()}
    return value
