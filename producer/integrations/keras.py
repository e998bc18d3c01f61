"""Keras 3: `RunstreamKerasCallback`, a callback that records a `model.fit()` as a runstream run.

    from runstream.producer.integrations.keras import RunstreamKerasCallback
    model.fit(x, y, epochs=10, callbacks=[RunstreamKerasCallback("vision", log_every_n_batches=50)])

Works with any Keras 3 backend (JAX, TensorFlow, PyTorch). The run starts at `on_train_begin`,
once the model is compiled and `fit` has said how long it will run, so the optimizer's config
(`optimizer.learning_rate`, `optimizer.name`...), `epochs`, `steps_per_epoch` and the model's size
can be recorded as params without the training script repeating them.

Steps are optimizer steps (batches trained so far in this run), for batch and epoch logs alike, so
both sit on one axis; epoch logs also carry `epoch` (Keras's 0-based epoch index).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

try:
    import keras
except ImportError as error:
    raise ImportError(
        "runstream.producer.integrations.keras needs Keras 3; install it with: pip install 'runstream[keras]' "
        "(plus a backend: jax, tensorflow or torch)"
    ) from error

import numpy as np

from runstream.producer.integrations._common import numeric_entries
from runstream.producer.kafka_settings import normalise_options
from runstream.producer.run import Run, init

log = logging.getLogger(__name__)


class RunstreamKerasCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Keras callback: epoch logs (and every n-th batch's, if asked) become metric points.

    Pass `run=` to log into a run you manage (the callback then never finishes it); otherwise it
    starts one from `project`, `name`, `params`, `tags` and the sink settings, and `on_train_end`
    finishes it. `params` given here win over the ones collected from the model.

    Keras calls no callback when `fit` raises, so a failed fit leaves the run open until the
    interpreter exits (recorded `failed` if the exception was uncaught); pass a run used as a
    context manager (`with runstream.init(...) as run:`) to record a caught failure too.
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | Sequence[str] | None = None,
        run: Run | None = None,
        log_every_n_batches: int | None = None,
        kafka: str | None = None,
        kafka_options: Mapping[str, Any] | None = None,
        spool: str | None = None,
        topic_prefix: str | None = None,
        sample_interval: float | None = None,
    ) -> None:
        super().__init__()
        if run is None and (not isinstance(project, str) or not project.strip()):
            raise ValueError(f"project: expected a non-empty string (or a run=), got {project!r}")
        if log_every_n_batches is not None and (
            isinstance(log_every_n_batches, bool) or not isinstance(log_every_n_batches, int) or log_every_n_batches < 1
        ):
            raise ValueError(f"log_every_n_batches: expected a positive integer or None, got {log_every_n_batches!r}")
        self._project = project
        self._name = name
        self._params = dict(params or {})
        self._tags = tags
        self._sink: dict[str, Any] = {
            "kafka": kafka, "kafka_options": dict(normalise_options(kafka_options or {})), "spool": spool,
            "topic_prefix": topic_prefix, "sample_interval": sample_interval,
        }
        self._every = log_every_n_batches
        self._run = run
        self._owns_run = run is None
        self._steps_done = 0
        self._epoch_start = 0
        self._last_logged = 0

    @property
    def run(self) -> Run | None:
        """The current run; None before training began."""
        return self._run

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        current = self._run
        if current is not None and not (current.finished and self._owns_run):
            return  # a run handed in (or still open from an earlier fit) keeps counting steps
        assert self._project is not None  # checked in __init__ when no run was given
        params = {**self._collected_params(), **self._params}
        self._run = init(self._project, self._name, params=params, tags=self._tags, **self._sink)
        self._steps_done = self._epoch_start = self._last_logged = 0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch_start = self._steps_done

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """`batch` is the index within the epoch (the last one of the group with `steps_per_execution`),
        so the step comes from it rather than from counting calls."""
        self._steps_done = self._epoch_start + int(batch) + 1
        if self._every is None or self._steps_done - self._last_logged < self._every:
            return
        values = numeric_entries(logs)
        if values and self._run is not None:
            self._run.log(values, step=self._steps_done)
            self._last_logged = self._steps_done

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._run is None:
            return
        values = numeric_entries(logs)
        values["epoch"] = int(epoch)
        self._run.log(values, step=self._steps_done)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        current = self._run
        if current is not None and self._owns_run and not current.finished:
            current.finish("ok")

    def _collected_params(self) -> dict[str, Any]:
        """Best effort: a custom optimizer without `get_config`, or an unbuilt model, only costs its params."""
        collected: dict[str, Any] = {}
        fit = getattr(self, "params", None) or {}
        if fit.get("epochs") is not None:
            collected["epochs"] = fit["epochs"]
        if fit.get("steps") is not None:
            collected["steps_per_epoch"] = fit["steps"]
        model = getattr(self, "model", None)
        if model is None:
            return collected
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None:
            try:
                collected["optimizer"] = {key: _float32_tidy(value) for key, value in optimizer.get_config().items()}
            except Exception as error:
                log.debug("runstream: no optimizer config from %r: %s", optimizer, error)
        described: dict[str, Any] = {"name": model.name}
        try:
            described["parameters"] = int(model.count_params())
        except Exception as error:
            log.debug("runstream: no parameter count for model %r: %s", model.name, error)
        collected["model"] = described
        loss = getattr(model, "loss", None)
        if loss is not None:
            collected["loss"] = loss if isinstance(loss, str) else getattr(loss, "name", type(loss).__name__)
        return collected


def _float32_tidy(value: Any) -> Any:
    """Keras keeps the learning rate in a float32 variable, so 0.01 comes back as 0.009999999776482582;
    recorded as such, runs could not be compared by `optimizer.learning_rate = 0.01`. A float that a
    float32 holds exactly is recorded as the shortest decimal that float32 reads back the same."""
    if isinstance(value, float) and np.isfinite(value) and float(np.float32(value)) == value:
        return float(str(np.float32(value)))
    if isinstance(value, Mapping):
        return {key: _float32_tidy(item) for key, item in value.items()}
    return value
