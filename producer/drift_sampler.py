"""Drift monitoring from the SDK: reference statistics at training time, sampled predictions in serving.

`Run.log_reference()` turns training data (or statistics computed elsewhere) into one
`drift_reference` event: per feature the reference bins and their counts, summary statistics and
a bounded sample for the Kolmogorov-Smirnov distance. `runstream.monitor(model=..., version=...)`
returns a `DriftSampler` whose `log()` keeps a random `sample_rate` of the requests it sees and sends
them in batches as `prediction_samples` events through the same background worker and sinks as
runs (Kafka, or the spool). An unsampled call costs one random draw; a sampled one appends to a
list. Events are keyed by a stream id derived from the model name, so one model's samples stay
in order on one partition.
"""

from __future__ import annotations

import atexit
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runstream.producer import metadata
from runstream.producer.ids import event_id
from runstream.producer.settings import ProducerSettings

#: Namespace of the model stream ids (UUIDv5 of the model name).
STREAM_NAMESPACE = uuid.UUID("5b0b6a47-2c1e-4f0b-9a3e-6d1f0c7a9e21")
DEFAULT_BINS = 10
DEFAULT_MAX_CATEGORIES = 50
DEFAULT_SAMPLE_SIZE = 2000
#: The feature name under which predictions are stored, so their distribution is compared like a feature's.
PREDICTION_FEATURE = "prediction"


def stream_id(model: str) -> str:
    """The Kafka key (and spool folder) of a model's prediction samples."""
    return str(uuid.uuid5(STREAM_NAMESPACE, model))


def _check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 250:
        raise ValueError(f"{what}: expected a non-empty string of at most 250 characters, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def feature_reference(
    name: str,
    values: Sequence[Any] | np.ndarray[Any, Any] | Mapping[str, Any],
    *,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    kind: str | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """One `FeatureReference` of the contract from raw training values, or from statistics computed
    elsewhere (a mapping with `counts` and `cut_points` or `categories`)."""
    _check_name("feature name", name)
    if isinstance(values, Mapping):
        return _given_reference(name, values)
    rng = rng or np.random.default_rng(0)
    items = list(values) if not isinstance(values, np.ndarray) else values
    if kind is None:
        if isinstance(items, np.ndarray):
            kind = "numeric" if items.dtype.kind in "iuf" else "categorical"
        else:
            kind = "numeric" if all(v is None or _is_number(v) for v in items) else "categorical"
    if kind == "numeric":
        array = np.asarray([np.nan if v is None else v for v in items] if not isinstance(items, np.ndarray)
                           else items, dtype=np.float64)
        present = array[~np.isnan(array)]
        if present.size == 0:
            raise ValueError(f"feature {name!r}: no numeric values to build a reference from")
        if bins < 2:
            raise ValueError(f"bins: expected at least 2, got {bins!r}")
        # Quantile cut points: equal-population bins, the usual choice for PSI.
        cuts = np.unique(np.quantile(present, np.arange(1, bins) / bins))
        counts = np.bincount(np.searchsorted(cuts, present, side="right"), minlength=len(cuts) + 1)
        sample = present if present.size <= sample_size else rng.choice(present, sample_size, replace=False)
        return {
            "name": name, "kind": "numeric", "cut_points": cuts.tolist(), "categories": [],
            "counts": counts.tolist(), "count": int(present.size), "missing": int(array.size - present.size),
            "mean": float(present.mean()), "std": float(present.std()), "min": float(present.min()),
            "max": float(present.max()), "sample": np.sort(sample).tolist(),
        }
    if kind != "categorical":
        raise ValueError(f"feature {name!r}: kind must be 'numeric' or 'categorical', got {kind!r}")
    labels = [None if v is None else str(v) for v in items]
    present_labels = [v for v in labels if v is not None]
    frequent = Counter(present_labels).most_common(max_categories)
    categories = sorted(category for category, _ in frequent)
    kept = set(categories)
    counts_by = Counter(present_labels)
    category_counts = [counts_by[c] for c in categories] + [sum(n for c, n in counts_by.items() if c not in kept)]
    return {
        "name": name, "kind": "categorical", "cut_points": [], "categories": categories, "counts": category_counts,
        "count": len(present_labels), "missing": len(labels) - len(present_labels), "mean": None, "std": None,
        "min": None, "max": None, "sample": [],
    }


def _given_reference(name: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    cuts = [float(c) for c in stats.get("cut_points", [])]
    categories = [str(c) for c in stats.get("categories", [])]
    counts = [int(c) for c in stats.get("counts", [])]
    kind = "categorical" if categories else "numeric"
    expected = len(categories) + 1 if categories else len(cuts) + 1
    if len(counts) != expected:
        raise ValueError(f"feature {name!r}: expected {expected} counts for its bins, got {len(counts)}")
    if cuts != sorted(cuts):
        raise ValueError(f"feature {name!r}: cut_points must ascend, got {cuts}")
    return {
        "name": name, "kind": kind, "cut_points": cuts, "categories": categories, "counts": counts,
        "count": int(stats.get("count", sum(counts))), "missing": int(stats.get("missing", 0)),
        **{key: (None if stats.get(key) is None else float(stats[key])) for key in ("mean", "std", "min", "max")},
        "sample": [float(v) for v in stats.get("sample", [])],
    }


def reference_record(
    run_id: str,
    model: str,
    version: str,
    features: Mapping[str, Any],
    *,
    predictions: Sequence[Any] | None = None,
    baseline_metrics: Mapping[str, float] | None = None,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    kinds: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A `drift_reference` event record (see `Run.log_reference`)."""
    _check_name("model", model)
    _check_name("version", version)
    rng = np.random.default_rng(seed)
    columns = dict(features)
    if predictions is not None:
        columns[PREDICTION_FEATURE] = predictions
    if not columns:
        raise ValueError("log_reference: no features given")
    references = [
        feature_reference(name, values, bins=bins, max_categories=max_categories, sample_size=sample_size,
                          kind=(kinds or {}).get(name), rng=rng)
        for name, values in columns.items()
    ]
    baseline = {}
    for key, value in (baseline_metrics or {}).items():
        if not _is_number(value):
            raise TypeError(f"baseline metric {key!r}: expected a number, got {type(value).__name__} {value!r}")
        baseline[_check_name("baseline metric", key)] = float(value)
    return {
        "event_id": event_id(), "run_id": run_id, "timestamp_us": time.time_ns() // 1000, "model": model,
        "version": version, "features": references, "baseline_metrics": baseline,
    }


def _value(value: Any) -> float | str | None:
    if value is None:
        return None
    if _is_number(value):
        number = float(value)
        return None if math.isnan(number) else number
    if hasattr(value, "item") and callable(value.item):
        return _value(value.item())
    return str(value)


class DriftSampler:
    """Samples a serving process's requests of one model version into `prediction_samples` events.

    Thread-safe: request threads may call `log()` concurrently.
    """

    def __init__(
        self,
        model: str,
        version: str,
        *,
        sample_rate: float = 0.1,
        batch_size: int = 500,
        flush_interval_s: float = 5.0,
        settings: ProducerSettings | None = None,
        seed: int | None = None,
    ) -> None:
        from runstream.producer.run import _worker_for

        self.model = _check_name("model", model)
        self.version = _check_name("version", version)
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate: expected a fraction in (0, 1], got {sample_rate!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size!r}")
        self.sample_rate = float(sample_rate)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.settings = settings or ProducerSettings.resolve()
        self.stream_id = stream_id(model)
        self.host = metadata.host_name()
        self._random = random.Random(seed).random  # noqa: S311 - sampling, not security
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._first_pending = 0.0
        self._worker = _worker_for(self.settings)
        self.seen = 0
        self.sampled = 0
        self.closed = False
        atexit.register(self.close)

    def log(
        self,
        features: Mapping[str, Any],
        prediction: Any = None,
        label: Any = None,
        *,
        sample_id: str | None = None,
        time_us: int | None = None,
    ) -> str | None:
        """Offer one request; return its sample id when it was sampled, else None.

        Numbers (NaN becomes null) go to the numeric features, strings and bools to the categorical
        ones; `prediction` and `label` may be numbers or class names.
        """
        self.seen += 1
        if self.sample_rate < 1.0 and self._random() >= self.sample_rate:
            return None
        if self.closed:
            raise RuntimeError(f"monitor of {self.model} {self.version} is closed")
        numeric: dict[str, float | None] = {}
        categorical: dict[str, str | None] = {}
        for key, raw in features.items():
            if isinstance(raw, bool | np.bool_):
                categorical[key] = "true" if raw else "false"
                continue
            value = _value(raw)
            if isinstance(value, str):
                categorical[key] = value
            else:
                numeric[key] = value
        sid = sample_id or uuid.uuid4().hex
        sample = {
            "sample_id": sid, "time_us": time_us if time_us is not None else time.time_ns() // 1000,
            "numeric": numeric, "categorical": categorical, "prediction": _value(prediction), "label": _value(label),
        }
        with self._lock:
            if not self._pending:
                self._first_pending = time.monotonic()
            self._pending.append(sample)
            self.sampled += 1
            due = (len(self._pending) >= self.batch_size
                   or time.monotonic() - self._first_pending >= self.flush_interval_s)
            if due:
                self._emit_locked()
        return sid

    def _emit_locked(self) -> None:
        if not self._pending:
            return
        record = {
            "event_id": event_id(), "run_id": self.stream_id, "timestamp_us": time.time_ns() // 1000,
            "model": self.model, "version": self.version, "host": self.host, "sample_rate": self.sample_rate,
            "samples": self._pending,
        }
        self._pending = []
        self._worker.put(("event", "prediction_samples", self.stream_id, record))

    def flush(self, timeout: float | None = None) -> int:
        """Send the samples held so far and wait for the sink; return the number undelivered."""
        with self._lock:
            self._emit_locked()
        return self._worker.flush(timeout)

    def close(self, timeout: float | None = None) -> int:
        """Send what is held and seal this stream's spool files (so `runstream ingest` loads them)."""
        if self.closed:
            return 0
        with self._lock:
            self._emit_locked()
            self.closed = True
        self._worker.put(("close", self.stream_id))
        atexit.unregister(self.close)
        return self._worker.flush(timeout)

    def __enter__(self) -> DriftSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def monitor(
    model: str,
    version: str,
    *,
    sample_rate: float = 0.1,
    batch_size: int = 500,
    flush_interval_s: float = 5.0,
    kafka: str | None = None,
    spool: str | None = None,
    topic_prefix: str | None = None,
    seed: int | None = None,
) -> DriftSampler:
    """A drift monitor for one model version in a serving process: `monitor(...).log(features=..., prediction=...)`.

    Events go where runs' go (`kafka` or `RUNSTREAM_KAFKA`, else the spool folder).
    """
    settings = ProducerSettings.resolve(kafka=kafka, spool=spool, topic_prefix=topic_prefix, sample_interval_s=0)
    return DriftSampler(model, version, sample_rate=sample_rate, batch_size=batch_size,
                        flush_interval_s=flush_interval_s, settings=settings, seed=seed)
