"""`runstream.init()` and the `Run` a training job logs to.

`log()` validates and enqueues, nothing more: the network and the disk are the worker's job.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from runstream.producer import lifecycle, metadata
from runstream.producer.encodable import (
    FLOAT_INT_LIMIT,
    LONG_MAX,
    check_event,
    check_step,
    check_text,
    scrub,
    shown,
)
from runstream.producer.gpu import GPU_FIELDS, NvmlGpus
from runstream.producer.heartbeat import Heartbeat
from runstream.producer.host import HostReader
from runstream.producer.ids import event_id, run_name
from runstream.producer.kafka_settings import KafkaSettings
from runstream.producer.metric_definitions import definition, definitions_of
from runstream.producer.params import check_key, flatten_params, param_records
from runstream.producer.resume import resolve_resume
from runstream.producer.settings import ProducerSettings
from runstream.producer.sinks import EventSink, KafkaSink, SpoolSink
from runstream.producer.system_sampler import SystemSampler
from runstream.producer.worker import EventWorker
from runstream.schemas.catalogue import BUILTIN_AXES, RUN_END_STATUSES

log = logging.getLogger(__name__)

RUN_STATUSES = RUN_END_STATUSES
#: Longest group, job type and sweep name (characters): they are labels, shown in lists and legends.
MAX_LABEL_CHARS = 128
_GPU_REQUIRED = ("time_us", "gpu_index", "gpu_uuid", "gpu_model")
_GPU_FIELDS = _GPU_REQUIRED + tuple(f.name for f in GPU_FIELDS) + ("process_memory_bytes",)
_HOST_FIELDS = ("host_cpu_pct", "host_memory_used_bytes", "host_memory_total_bytes", "process_rss_bytes")

_workers: dict[ProducerSettings, EventWorker] = {}
_workers_lock = threading.Lock()
_active_runs: list[Run] = []


def _worker_for(settings: ProducerSettings) -> EventWorker:
    with _workers_lock:
        worker = _workers.get(settings)
        if worker is None:
            spool = SpoolSink(settings.spool)
            sink: EventSink = spool
            kafka = settings.kafka_settings
            if kafka is not None:
                sink = KafkaSink(kafka, settings.topic_prefix, spool, delivery_timeout_s=settings.delivery_timeout_s)
            worker = _workers[settings] = EventWorker(sink, settings)
        return worker


def _now_us() -> int:
    return time.time_ns() // 1000


def _as_tags(tags: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if isinstance(tags, str):
        raise TypeError(f"tags: expected a mapping or a list of strings, got the string {tags!r}")
    pairs = [(str(k), str(v)) for k, v in tags.items()] if isinstance(tags, Mapping) else [(str(t), "") for t in tags]
    for key, value in pairs:
        check_text("tag key", key)
        check_text(f"tag {key!r}", value)
    return dict(pairs)


def _label(name: str, value: str | None) -> str | None:
    """A group, job type or sweep name: a non-empty string of at most MAX_LABEL_CHARS, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    if len(value) > MAX_LABEL_CHARS:
        raise ValueError(f"{name}: {len(value)} characters, more than the {MAX_LABEL_CHARS} allowed "
                         f"({value[:40]!r}...)")
    check_text(name, value)
    return value


def _fork(run_id: str, fork_from: str | None, fork_step: int | None) -> tuple[str | None, int | None]:
    """The parent run id (normalised) and step of a fork; both or neither must be given."""
    if fork_from is None and fork_step is None:
        return None, None
    if fork_from is None or fork_step is None:
        raise ValueError(f"fork_from and fork_step go together: got fork_from={fork_from!r}, fork_step={fork_step!r}")
    if type(fork_step) is not int or not 0 <= fork_step <= LONG_MAX:
        raise ValueError(f"fork_step: expected a step (an integer >= 0), got {shown(fork_step)}")
    try:
        parent = str(uuid.UUID(fork_from))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"fork_from: expected a run id (a UUID such as one printed by runstream), "
                         f"got {fork_from!r}") from None
    if parent == run_id:
        raise ValueError(f"fork_from: run {parent} cannot be forked from itself")
    return parent, fork_step


class Run:
    """One training run. Use `runstream.init()` to create one; usable as a context manager."""

    def __init__(
        self,
        *,
        project: str,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        settings: ProducerSettings | None = None,
        gpus: NvmlGpus | None = None,
        resume: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        sweep: str | None = None,
        fork_from: str | None = None,
        fork_step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """`gpus` is the NVML source (tests without a GPU pass a fake); by default pynvml is used
        when sampling is on (`settings.sample_interval_s` > 0). `resume` continues an earlier run id.
        `group`, `job_type` and `sweep` label the run; `fork_from`/`fork_step` make it a fork.

        In distributed training every rank samples its GPUs into the same run, but only rank 0
        records the run's start, params and end. Rank 0's metrics are the run's curve; the other
        ranks' are recorded only with `settings.log_all_ranks` (or `log(..., all_ranks=True)`), each
        point with the rank and node (`self.rank`, `self.node`) that logged it.
        """
        if not isinstance(project, str) or not project.strip():
            raise ValueError(f"project: expected a non-empty string, got {project!r}")
        check_text("project", project)
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"name: expected a string, got {type(name).__name__} {name!r}")
            check_text("name", name)
        self.group = _label("group", group)
        self.job_type = _label("job_type", job_type)
        self.sweep = _label("sweep", sweep)
        # init(metrics=...): checked before anything of the run is sent (producer/metric_definitions.py)
        self._definitions = definitions_of(metrics)
        self.settings = settings or ProducerSettings.resolve()
        self.distributed = metadata.distributed()
        rank = self.distributed["rank"]
        #: The global rank (0 outside distributed training) and the host it runs on: what a point
        #: or histogram of this process is stored with.
        self.rank: int = rank or 0
        self.node: str = scrub(metadata.host_name())
        # Only rank 0 sends the run's start, params, heartbeats and end, whatever `log_all_ranks` says.
        self.is_lead = self.rank == 0
        # producer/resume.py: an explicit resume of a run the spool or the store knows not is refused there
        self.run_id, self.resumed, self.attempt = resolve_resume(resume, self.distributed["world_size"],
                                                                 self.settings.spool)
        self.fork_from, self.fork_step = _fork(self.run_id, fork_from, fork_step)
        self.project = project
        # A resume without a name keeps the run's (the consumer fills it in); `resume="auto"` names every
        # attempt alike.
        self.name = name or ("" if self.resumed else run_name(self.run_id if resume == "auto" else None))
        flat = flatten_params(config)
        flat.update(flatten_params(params))
        self.params = flat
        self.tags = _as_tags(tags)
        self.finished = False
        self._finishing = False
        self._step = 0
        # What the heartbeat reports (producer/heartbeat.py): the highest step logged and when it advanced.
        self._last_step = -1
        self._last_step_us: int | None = None
        self._heartbeat: Heartbeat | None = None
        self._known_keys: set[str] = set()
        lifecycle.install(_finish_all, _forget_in_child, _shutdown_timeout_s)
        self._worker = _worker_for(self.settings)
        self._worker.attempts[self.run_id] = self.attempt
        if not self.is_lead:
            self._worker.ranks[self.run_id] = (self.rank, self.node)
        self._sampler: SystemSampler | None = None
        if self.settings.sample_interval_s > 0:
            self._sampler = SystemSampler(
                self._emit_system_sample, self.settings.sample_interval_s, gpus or NvmlGpus(), _host_reader()
            )
        inventory = self._sampler.gpus.inventory() if self._sampler else (gpus.inventory() if gpus else None)
        if self.is_lead:  # a run's start, like its end, gets through a full queue
            self._worker.put(("event", "run_started", self.run_id, self._started_record(inventory)), bounded=False)
            if self._definitions:
                self._put_definitions()
        _active_runs.append(self)
        if self._sampler is not None:
            self._sampler.start()
        if self.is_lead and self.settings.heartbeat_interval_s > 0:
            self._heartbeat = Heartbeat(self.run_id, self.attempt, self.settings.heartbeat_interval_s,
                                        self._heartbeat_steps, self._emit_heartbeat)
            self._heartbeat.start()

    def _heartbeat_steps(self) -> tuple[int | None, int | None]:
        last = self._last_step
        return (last if last >= 0 else None), self._last_step_us

    def _emit_heartbeat(self, record: dict[str, Any]) -> None:
        # Never waits for room: a heartbeat is a few dozen bytes every interval, and its thread must not
        # sit in a full queue's wait while a SIGTERM handler finishes the run (it joins this thread).
        if not self.finished:
            self._worker.put(("event", "run_heartbeat", self.run_id, record), bounded=False)

    def _emit_system_sample(self, samples: list[dict[str, Any]], host: dict[str, Any]) -> None:
        if not self.finished:
            self.log_gpu_samples(samples, host_metrics=host)

    def _started_record(self, gpu_inventory: dict[str, Any] | None) -> dict[str, Any]:
        # What the SDK reads from the machine (argv with undecodable bytes, odd hostnames) is
        # repaired, not refused: the training job did nothing wrong.
        return {
            "event_id": event_id(),
            "run_id": self.run_id,
            "timestamp_us": _now_us(),
            "project": self.project,
            "run_name": self.name,
            "user": scrub(metadata.current_user()),
            "host": scrub(metadata.host_name()),
            "params": param_records(self.params),
            "tags": self.tags,
            "git": scrub(metadata.git_info()),
            "data_versions": [],
            "hardware": scrub({**metadata.hardware(), **(gpu_inventory or {})}),
            "framework_versions": scrub(metadata.framework_versions()),
            "command_line": scrub(metadata.command_line()),
            **self.distributed,
            "scheduler": scrub(metadata.scheduler_ids()),
            "resumed": self.resumed,
            "attempt": self.attempt,
            "run_group": self.group,
            "job_type": self.job_type,
            "sweep": self.sweep,
            "fork_from": self.fork_from,
            "fork_step": self.fork_step,
        }

    def define_metric(self, name: str, *, goal: str | None = None, summary: Sequence[str] = (),
                      step_metric: str | None = None) -> None:
        """Declare how `name` is judged, so that no reader has to guess from its name: `goal` "min" or
        "max" ranks the leaderboard, `runstream best`, compare, importance, the report and the dashboards
        without `--mode` (undeclared metrics keep the name rule: runstream.monitoring.metric_direction);
        `summary` lists what to show of it (min, max, last, first, mean); `step_metric` names the logged
        axis to plot it against. Calling it again replaces the metric's definition. A bad goal, summary
        or name raises naming the metric and value, and nothing is sent. Only rank 0 sends definitions
        (every rank checks them).
        """
        if self.finished:
            raise RuntimeError(f"run {self.run_id} is finished; start a new run to log more")
        record = definition(name, goal=goal, summary=summary, step_metric=step_metric)
        if not self.is_lead:
            return
        self._definitions[name] = record
        self._put_definitions()

    def _put_definitions(self) -> None:
        # every definition so far: the latest event is the run's whole state (metric_definitions.v1.avsc)
        record = {
            "event_id": event_id(),
            "run_id": self.run_id,
            "timestamp_us": _now_us(),
            "attempt": self.attempt,
            "definitions": [dict(d) for d in self._definitions.values()],
        }
        self._worker.put(("event", "metric_definitions", self.run_id, record))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Add or change params after the start (nested dicts flattened, types kept); a later value wins."""
        if self.finished:
            raise RuntimeError(f"run {self.run_id} is finished; start a new run to log more")
        flat = flatten_params(params)
        if not flat or not self.is_lead:
            return
        self.params.update(flat)
        self._put_update(params=param_records(flat))

    def log_data_version(
        self, name: str, *, version: str | None = None, uri: str | None = None, digest: str | None = None
    ) -> None:
        """Record which version of a data set the run read (see `runstream.hash_path` for a digest)."""
        if self.finished:
            raise RuntimeError(f"run {self.run_id} is finished; start a new run to log more")
        if not isinstance(name, str) or not name:
            raise ValueError(f"data version name: expected a non-empty string, got {name!r}")
        check_text("data version name", name)
        for field_name, value in (("version", version), ("uri", uri), ("digest", digest)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"data version {name!r}: {field_name} must be a string, got {type(value).__name__}")
            if value is not None:
                check_text(f"data version {name!r} {field_name}", value)
        if self.is_lead:
            self._put_update(data_versions=[{"name": name, "version": version, "uri": uri, "digest": digest}])

    def log_reference(
        self,
        features: Mapping[str, Any],
        *,
        model: str,
        version: str,
        predictions: Sequence[Any] | None = None,
        baseline_metrics: Mapping[str, float] | None = None,
        bins: int = 10,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        """Record what `model` `version` was trained on, the reference of drift monitoring.

        `features` maps a feature name to its training values (numbers: quantile bins and a bounded
        sample; strings: the most frequent categories) or to statistics computed elsewhere (a mapping
        with `counts` and `cut_points` or `categories`). `predictions` on the same data and
        `baseline_metrics` (e.g. validation accuracy) are the baselines of prediction and performance drift.
        """
        from runstream.producer.drift_sampler import reference_record

        if self.finished:
            raise RuntimeError(f"run {self.run_id} is finished; start a new run to log more")
        record = reference_record(self.run_id, model, version, features, predictions=predictions,
                                  baseline_metrics=baseline_metrics, bins=bins, kinds=kinds)
        check_event("drift_reference", record)
        if self.is_lead:
            self._worker.put(("event", "drift_reference", self.run_id, record))

    def _put_update(self, *, params: list[dict[str, Any]] | None = None,
                    data_versions: list[dict[str, Any]] | None = None) -> None:
        record = {
            "event_id": event_id(),
            "run_id": self.run_id,
            "timestamp_us": _now_us(),
            "params": params or [],
            "data_versions": data_versions or [],
            "attempt": self.attempt,
        }
        self._worker.put(("event", "run_updated", self.run_id, record))

    def log(self, metrics: Mapping[str, float], step: int | None = None, *, all_ranks: bool | None = None,
            axes: Mapping[str, float] | None = None) -> None:
        """Record metric values at a step (the next step after the last one when omitted).

        NaN and ±Inf are kept. A non-numeric value raises TypeError naming the key, and nothing
        of that call is recorded; what was logged before stays.

        In distributed training rank 0's values are the run's curve. Another rank's are recorded,
        with its rank and node, when `all_ranks` is True, or when it is None (the default) and the
        run logs every rank (`init(log_all_ranks=True)`, RUNSTREAM_LOG_ALL_RANKS=1); otherwise dropped.

        `axes` ({"epoch": 3.0, "tokens": 1.2e9}): x-axis values of this step, stored as metric points of
        those names, so any curve can be drawn against them (`runstream curve --x tokens`). An axis value
        must be a finite number (NaN/Inf cannot place a point; bools and None are refused), and its name
        not step/time/relative (the built-in axes); otherwise ValueError/TypeError naming the axis and
        the value, and nothing of the call is recorded.
        """
        if self.finished:
            raise RuntimeError(f"run {self.run_id} is finished; start a new run to log more")
        if all_ranks is not None and all_ranks is not True and all_ranks is not False:
            raise TypeError(f"all_ranks: expected True, False or None, got {type(all_ranks).__name__} {all_ranks!r}")
        if not self.is_lead and not (self.settings.log_all_ranks if all_ranks is None else all_ranks):
            return
        if step is None:
            step = self._step
        elif type(step) is not int:
            if isinstance(step, bool) or not hasattr(step, "__index__"):
                raise TypeError(f"step: expected an integer, got {type(step).__name__} {step!r}")
            step = int(step)
        if not 0 <= step <= LONG_MAX:
            check_step(step)
        values: dict[str, float] = {}
        known = self._known_keys
        for key, value in metrics.items():
            if key not in known:
                if not isinstance(key, str):
                    raise TypeError(f"metric key {key!r}: expected a string, got {type(key).__name__}")
                check_key("metric", key)
                known.add(key)
            if type(value) is not float:  # ints too: 10**400 must fail here, not in the worker
                value = _coerce_number(key, value)
            values[key] = value
        if axes:
            _add_axes(values, axes, known)
        self._step = step + 1
        now_us = _now_us()
        if step > self._last_step:  # the heartbeat's "when the step last advanced": two stores, no lock
            self._last_step = step
            self._last_step_us = now_us
        if self.is_lead:
            self._worker.put_points(self.run_id, step, now_us, values)
        else:  # a rank > 0 logging (log_all_ranks): its own table, never the run's curve
            self._worker.put_points(self.run_id, step, now_us, values, "rank_points")

    def log_histogram(self, name: str, values: Any = None, *, step: int | None = None,
                      bins: int | str | Sequence[float] = 64, edges: Sequence[float] | None = None,
                      counts: Sequence[int] | None = None) -> None:
        """Record the distribution of `values` (a list, numpy array or torch tensor: gradient norms,
        activations, weights) at a step, binned here so that only the bins travel.

        `bins`: a number of equal bins over the finite values' range (default 64), a numpy rule name
        ("auto", "fd", "sturges"...) or a list of edges; or `edges=[...]`; or `edges` with `counts`
        for a histogram computed elsewhere. NaN, +Inf and -Inf are counted apart, never binned.
        `step` None: the step a `log()` without a step would record now; pass `step=` to put the
        histogram at a step you logged. Empty arrays, non-numeric values, bad edges or counts and
        bins <= 0 raise naming the metric and the value, and nothing is recorded
        (runstream.producer.histograms has the rules). In distributed training only rank 0's are
        recorded, unless the run logs every rank (`log_all_ranks`): then with this rank and node.
        """
        from runstream.producer.histograms import histogram_fields

        if self.finished:
            raise RuntimeError(f"run {self.run_id} is finished; start a new run to log more")
        if not isinstance(name, str):
            raise TypeError(f"histogram name {name!r}: expected a string, got {type(name).__name__}")
        check_key("histogram", name)
        if step is None:
            step = self._step
        elif type(step) is not int:
            if isinstance(step, bool) or not hasattr(step, "__index__"):
                raise TypeError(f"log_histogram({name!r}): step: expected an integer, got {type(step).__name__} "
                                f"{step!r}")
            step = int(step)
        if not 0 <= step <= LONG_MAX:
            raise ValueError(f"log_histogram({name!r}): step: expected an integer from 0 to 2**63-1, got {shown(step)}")
        if not self.is_lead and not self.settings.log_all_ranks:
            return
        fields = histogram_fields(name, values, bins=bins, edges=edges, counts=counts)
        now_us = _now_us()
        record = {"event_id": event_id(), "run_id": self.run_id, "timestamp_us": now_us, "attempt": self.attempt,
                  "rank": self.rank, "node": self.node, "metric": name, "step": step, "time_us": now_us, **fields}
        self._worker.put(("event", "metric_histogram", self.run_id, record))

    def log_gpu_samples(
        self,
        samples: Sequence[Mapping[str, Any]],
        *,
        host: str | None = None,
        host_metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Record GPU samples (the `GpuSample` fields of the contract) and host readings (host_cpu_pct,
        host_memory_used_bytes, host_memory_total_bytes, process_rss_bytes); the system sampler calls
        this, and so can code that reads GPUs itself.

        A sample lacking a required field (time_us, gpu_index, gpu_uuid, gpu_model) raises
        ValueError naming it; optional readings default to null.
        """
        if self.finished:
            raise RuntimeError(f"run {self.run_id} is finished; start a new run to log more")
        rows = []
        for position, sample in enumerate(samples):
            missing = [name for name in _GPU_REQUIRED if sample.get(name) is None]
            if missing:
                raise ValueError(f"GPU sample {position}: missing {', '.join(missing)}")
            rows.append({name: sample.get(name) for name in _GPU_FIELDS})
        record = {
            "event_id": event_id(),
            "run_id": self.run_id,
            "timestamp_us": _now_us(),
            "host": host or scrub(metadata.host_name()),
            "samples": rows,
            "attempt": self.attempt,
            **{name: (host_metrics or {}).get(name) for name in _HOST_FIELDS},
        }
        check_event("gpu_samples", record)
        self._worker.put(("event", "gpu_samples", self.run_id, record))

    def flush(self, timeout: float | None = None) -> int:
        """Block until what was logged so far is delivered; return the number still undelivered."""
        return self._worker.flush(timeout)

    def finish(self, status: str = "ok", *, exit_code: int | None = None, error: str | None = None) -> None:
        """Mark the run ended and flush; calling it twice is harmless."""
        if self.finished:
            return
        if status not in RUN_STATUSES:
            raise ValueError(f"status: expected one of {', '.join(RUN_STATUSES)}, got {status!r}")
        if exit_code is not None and (type(exit_code) is not int or not -(2**31) <= exit_code < 2**31):
            raise ValueError(f"exit_code: expected an integer within Avro int range or None, got {shown(exit_code)}")
        if error is not None and not isinstance(error, str):
            raise TypeError(f"error: expected a string or None, got {type(error).__name__}")
        # A SIGTERM handler may call finish() while an earlier finish() is stopping the sampler
        # (holding its locks): the nested call leaves the sampler alone and just queues the end.
        nested, self._finishing = self._finishing, True
        if self._heartbeat is not None:  # no heartbeat after the run's end
            self._heartbeat.stop(wait=not nested)
        if self._sampler is not None and not nested:
            self._sampler.shutdown()  # takes a final sample, so short runs have one
        record = {
            "event_id": event_id(),
            "run_id": self.run_id,
            "timestamp_us": _now_us(),
            "status": status,
            "exit_code": exit_code,
            "error": scrub(error),  # exception text may carry anything: repaired, never refused
            "summary": None,  # filled by the worker: the last value of each metric logged before
            "attempt": self.attempt,
        }
        # Marked finished and queued before the flush waits, so that a SIGTERM landing there finds
        # the run's end already queued and does not start over. Not bounded by the queue's byte
        # limit: the end of a run must get through a full queue, and a SIGTERM handler finishing
        # runs must never wait for room.
        self.finished = True
        if self.is_lead:
            self._worker.put(("event", "run_finished", self.run_id, record), bounded=False)
        else:
            self._worker.put(("close", self.run_id), bounded=False)
        undelivered = self._worker.flush()
        if undelivered:
            log.error("runstream: run %s finished with %d events undelivered", self.run_id, undelivered)
        if self in _active_runs:
            _active_runs.remove(self)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish("ok")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("killed", error=exc_type.__name__)
        else:
            self.finish("failed", error=f"{exc_type.__name__}: {exc}")


_HOST_READER: list[HostReader] = []


def _host_reader() -> HostReader | None:
    """One reader per process (psutil's CPU baseline is per reader); None where psutil fails."""
    if not _HOST_READER:
        try:
            _HOST_READER.append(HostReader())
        except Exception as error:
            log.debug("runstream: host metrics unavailable: %s", error)
            return None
    return _HOST_READER[0]


def _add_axes(values: dict[str, float], axes: Mapping[str, Any], known: set[str]) -> None:
    """`log(..., axes=...)`: each axis value joins the step's points under its name, after checks that
    leave `values` untouched when one fails (the caller records nothing then)."""
    checked: dict[str, float] = {}
    for name, raw in axes.items():
        if not isinstance(name, str):
            raise TypeError(f"axis {name!r}: expected a string name, got {type(name).__name__}")
        if name in BUILTIN_AXES:
            raise ValueError(f"axis {name!r}: {', '.join(BUILTIN_AXES)} are built-in x-axes; log it under another name")
        if name not in known:
            check_key("axis", name)
        if isinstance(raw, bool) or raw is None or isinstance(raw, str | bytes):
            raise TypeError(f"axis {name!r}: expected a number, got {type(raw).__name__} {shown(raw)}")
        value = raw if type(raw) is float else _coerce_number(name, raw)
        if not math.isfinite(value):
            raise ValueError(f"axis {name!r}: expected a finite number, got {value!r} "
                             "(NaN and ±Inf cannot place a point)")
        if name in values and not values[name] == value:
            raise ValueError(f"axis {name!r}: logged as {value!r} and as the metric value {values[name]!r} in one call")
        checked[name] = value
    values.update(checked)
    known.update(checked)


def _coerce_number(key: str, value: Any) -> float:
    """Anything but a plain float: ints (within double range), bools, numpy/torch scalars and
    one-element arrays; refused naming the key otherwise, so the worker never meets it."""
    if isinstance(value, bool):
        return float(value)
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars, one-element arrays
        try:
            value = value.item()
        except Exception:  # numpy: ValueError, torch: RuntimeError, both without the key
            shape = getattr(value, "shape", None)
            raise ValueError(
                f"metric {key!r}: expected a single number, got {type(value).__name__}"
                + (f" of shape {tuple(shape)}" if shape is not None else "")
            ) from None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        if abs(value) > FLOAT_INT_LIMIT:
            raise ValueError(f"metric {key!r}: {shown(value)} is beyond the range of a double")
        return float(value)
    raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__} {shown(value)}")


def init(
    project: str,
    name: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    kafka: str | KafkaSettings | None = None,
    kafka_options: Mapping[str, Any] | None = None,
    spool: str | None = None,
    topic_prefix: str | None = None,
    sample_interval: float | None = None,
    resume: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    sweep: str | None = None,
    fork_from: str | None = None,
    fork_step: int | None = None,
    log_all_ranks: bool | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Run:
    """Start a run. `config` (nested, e.g. a Hydra config) and `params` are both recorded as params.

    Events go to Kafka when `kafka` or `RUNSTREAM_KAFKA` names bootstrap servers, else to the
    spool folder (`spool`, `RUNSTREAM_SPOOL`, default ~/.runstream/spool). GPUs and the host are
    sampled every `sample_interval` seconds (`RUNSTREAM_SAMPLE_INTERVAL`, default 5; 0 turns it off).
    `resume=RUN_ID` continues an earlier run: same id, its start recorded again as resumed, with the
    next attempt number (steps it logs again win over the earlier attempt's; both stay queryable);
    the name, labels and tags it does not repeat are kept. `resume="auto"` continues the run of this
    scheduler job (SLURM job, torchelastic run, Kubernetes Job), or starts a new one outside a scheduler.
    `group` (e.g. the seeds of one experiment), `job_type` and `sweep` label the run (128 characters
    at most); `fork_from=RUN_ID, fork_step=N` starts a fork whose curves are the parent's up to step N.
    A secured Kafka takes librdkafka options: `kafka_options={"security.protocol": "SASL_SSL", ...}`,
    `RUNSTREAM_KAFKA_*` variables (`RUNSTREAM_KAFKA_SASL_PASSWORD` is `sasl.password`) or the `[kafka]`
    table of the `RUNSTREAM_CONFIG` file; `kafka` may also be a `KafkaSettings`.
    In distributed training (torchrun, SLURM) every rank calls `init` and all share one run;
    `log_all_ranks=True` (or RUNSTREAM_LOG_ALL_RANKS=1) records every rank's `log()` with its rank
    and node (`runstream ranks RUN`, `runstream stragglers`), not rank 0's only.
    `metrics={"val/score": {"goal": "max", "summary": ["max", "last"]}}` declares metrics as
    `Run.define_metric` does (a value may be just the goal: `{"val/score": "max"}`).
    """
    settings = ProducerSettings.resolve(
        kafka=kafka, kafka_options=kafka_options, spool=spool, topic_prefix=topic_prefix,
        sample_interval_s=sample_interval, log_all_ranks=log_all_ranks,
    )
    return Run(project=project, name=name, params=params, tags=tags, config=config, settings=settings, resume=resume,
               group=group, job_type=job_type, sweep=sweep, fork_from=fork_from, fork_step=fork_step,
               metrics=metrics)


def _shutdown_timeout_s() -> float:
    """How long a SIGTERM may take: the longest `shutdown_timeout_s` of this process's workers."""
    return max((settings.shutdown_timeout_s for settings in list(_workers)), default=10.0)


def _finish_all(status: str, error: str | None) -> None:
    """Finish every open run with this status, then close the workers (exit and signal paths)."""
    for run in list(_active_runs):
        try:
            run.finish(status, error=error)
        except Exception:
            log.exception("runstream: could not finish run %s", run.run_id)
    for worker in list(_workers.values()):
        worker.close()


def _forget_in_child() -> None:
    """After fork: the child owns none of its parent's runs, workers or open files."""
    _active_runs.clear()
    _workers.clear()
    _HOST_READER.clear()


def producer_stats() -> dict[str, int]:
    """Events sent, queue items dropped (full queue, forked child) and events rejected (could not be
    encoded or sent; kept in `<spool>/rejected/`) by this process's workers."""
    workers = list(_workers.values())
    return {
        "sent_events": sum(w.sent_events for w in workers),
        "dropped_items": sum(w.dropped_items for w in workers),
        "rejected_events": sum(w.rejected_events for w in workers),
        "queued_bytes": sum(w.queued_bytes for w in workers),
    }


