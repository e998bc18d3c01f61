"""PyTorch Lightning: `RunstreamLogger`, a Lightning logger that records into a runstream run.

    from runstream.producer.integrations.lightning import RunstreamLogger
    trainer = Trainer(logger=RunstreamLogger("vision", "resnet-lr3e-4"))

Either package name works: `lightning` (lightning.pytorch) is used when installed, else
`pytorch_lightning`. Lightning's trainers duck-type their loggers, so one class serves both.

When the run starts: Lightning touches `logger.experiment` while it sets up (ModelCheckpoint also
asks for `version` to name its folder), before it hands over the module's hyperparameters. So the
run starts there, with the params given to the constructor plus any hyperparameters logged before,
and the model's hyperparameters arrive right after through `Run.log_params` (a `run_updated`
event; later values win). `version` is the run id, so default checkpoints land in
`<default_root_dir>/<project>/<run id>/checkpoints` and can be matched to their run.

Resuming from a checkpoint continues the same run: `RunstreamLogger(..., resume=run_id)` with
`trainer.fit(model, ckpt_path=...)` (the run id is the checkpoint folder's name by default); the
resumed attempt's points land in that run at the steps Lightning restores. Goals: `metrics=` (as
`runstream.init`), `logger.define_metric(...)`, and a `ModelCheckpoint(monitor=..., mode=...)` declares
its monitored metric's goal at its first save unless one was declared. In distributed training
(torchrun, SLURM) every rank's logger joins the one run; `log_all_ranks=True` stores every rank's
metrics with its rank and node.
"""

from __future__ import annotations

import logging
import sys
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from lightning.pytorch.loggers import Logger
except ImportError:
    try:
        from pytorch_lightning.loggers import Logger
    except ImportError as error:
        raise ImportError(
            "runstream.producer.integrations.lightning needs PyTorch Lightning (`lightning` or `pytorch_lightning`); "
            "install it with: pip install 'runstream[lightning]'"
        ) from error

from runstream.producer.kafka_settings import normalise_options
from runstream.producer.metric_definitions import definitions_of
from runstream.producer.run import Run, init

log = logging.getLogger(__name__)

#: Lightning's finalize statuses: "success" after a stage, "failed" on an exception or Ctrl-C,
#: "finished" from the SLURM requeue handler (the job is being preempted, not done).
_STATUSES = {"success": "ok", "failed": "failed", "finished": "killed", "aborted": "killed"}


class RunstreamLogger(Logger):  # type: ignore[misc]
    """Lightning logger: hyperparameters become params, logged metrics become metric points.

    Pass `run=` to log into a run you manage (this logger then never finishes it); otherwise the
    logger starts one from `project`, `name`, `params`, `tags`, `metrics` (declared goals, as in
    `runstream.init`), `resume` (a run id to continue), `log_all_ranks` and the sink settings, and
    `finalize` finishes it with Lightning's status. Every Trainer entry point (`fit`, `validate`,
    `test`) ends with `finalize`, and a finished run takes no more points, so a later stage that
    logs starts a new run with the same name and params.
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
        super().__init__()
        if run is None and (not isinstance(project, str) or not project.strip()):
            raise ValueError(f"project: expected a non-empty string (or a run=), got {project!r}")
        self._project = project if run is None else run.project
        self._name = name
        self._params: dict[str, Any] = _plain(params or {})
        self._tags = tags
        self._sink: dict[str, Any] = {
            "kafka": kafka, "kafka_options": dict(normalise_options(kafka_options or {})), "spool": spool,
            "topic_prefix": topic_prefix, "sample_interval": sample_interval, "log_all_ranks": log_all_ranks,
        }
        # checked now, so a bad goal fails the script before training starts (and before a run exists)
        declared = definitions_of(metrics)
        if run is not None:
            _declare(run, declared)
        self._metrics: dict[str, Any] = dict(metrics or {})
        self._explicit_goals = set(self._metrics)
        self._resume = resume
        self._run = run
        self._owns_run = run is None

    @property
    def run(self) -> Run:
        """The run, started on first use; after `finalize`, the finished run until a stage logs again."""
        return self._run if self._run is not None else self._start()

    #: Lightning's name for the logger's underlying object.
    experiment = run

    @property
    def name(self) -> str | None:
        """The project: Lightning's `name` groups versions, as a project groups runs."""
        return self._project

    @property
    def version(self) -> str:
        """The run id; asking starts the run (ModelCheckpoint asks during setup)."""
        return self.run.run_id

    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Kept for the start while no run is open; sent with `Run.log_params` to an open one."""
        plain = _plain(params)
        self._params.update(plain)
        current = self._run
        if current is not None and not current.finished and plain:
            current.log_params(plain)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        current = self._run
        if current is None or (current.finished and self._owns_run):
            current = self._start()
        current.log(metrics, step=step)

    def define_metric(self, name: str, *, goal: str | None = None, summary: Sequence[str] = (),
                      step_metric: str | None = None) -> None:
        """`Run.define_metric` on this logger's run (started if need be), kept for the runs of later stages."""
        self.run.define_metric(name, goal=goal, summary=summary, step_metric=step_metric)
        self._metrics[name] = {"goal": goal, "summary": list(summary), "step_metric": step_metric}
        self._explicit_goals.add(name)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """A ModelCheckpoint's `monitor` and `mode` say which way its metric is better: declared once, unless
        the script declared that metric itself."""
        monitor = getattr(checkpoint_callback, "monitor", None)
        mode = getattr(checkpoint_callback, "mode", None)
        if not isinstance(monitor, str) or mode not in ("min", "max") or monitor in self._explicit_goals:
            return
        current = self._run
        if current is None or current.finished:
            return
        known = self._metrics.get(monitor)
        if isinstance(known, Mapping) and known.get("goal") == mode:
            return
        current.define_metric(monitor, goal=mode)
        self._metrics[monitor] = {"goal": mode}

    def _start(self) -> Run:
        if self._run is not None:
            log.info("runstream: run %s ended at Lightning's finalize; this stage logs into a new run",
                     self._run.run_id)
        assert self._project is not None  # checked in __init__ when no run was given
        # `resume` continues the run of the checkpoint once: a later stage after finalize is a run of its own
        resume, self._resume = self._resume, None
        self._run = init(self._project, self._name, params=self._params, tags=self._tags, resume=resume,
                         metrics=self._metrics or None, **self._sink)
        self._owns_run = True
        return self._run

    def finalize(self, status: str) -> None:
        """Finish the run this logger started, with the exception being handled as the error.

        Lightning calls finalize("failed") from inside its `except` block, so `sys.exc_info()`
        still names the exception; a KeyboardInterrupt there means the user stopped the run.
        """
        super().finalize(status)
        current = self._run
        if current is None or current.finished or not self._owns_run:
            return
        outcome = _STATUSES.get(status, "failed")
        kind, error, _ = sys.exc_info()
        message = None
        if outcome != "ok":
            if kind is not None and issubclass(kind, KeyboardInterrupt):
                outcome = "killed"
            message = f"{kind.__name__}: {error}" if kind is not None else f"Lightning finalize status {status!r}"
        current.finish(outcome, error=message)

    def __getstate__(self) -> dict[str, Any]:
        """Spawned workers (ddp_spawn) get the logger pickled; a run holds threads and files, so it stays behind
        and each process starts its own (the Run records only from rank 0)."""
        state = self.__dict__.copy()
        state["_run"] = None
        state["_owns_run"] = True
        return state


def _declare(run: Run, declared: Mapping[str, Mapping[str, Any]]) -> None:
    """`metrics=` given with a handed-in run: declared on it at once, as `init(metrics=...)` would have."""
    for name, record in declared.items():
        run.define_metric(name, goal=record["goal"], summary=record["summary"], step_metric=record["step_metric"])


def _plain(params: Mapping[str, Any] | Namespace) -> dict[str, Any]:
    """Lightning hands hyperparameters as a Namespace or a dict that may nest Namespaces or use
    non-string keys; runstream params are string-keyed mappings."""
    if isinstance(params, Namespace):
        params = vars(params)
    plain: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Namespace | Mapping):
            value = _plain(value)
        plain[str(key)] = value
    return plain
