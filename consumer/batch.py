"""Turns decoded events into columns, one set per ClickHouse table, checking each event's invariants.

Metric steps arrive columnar already, so a batch extends its columns with whole arrays rather
than building a Python object per point. Every value an event adds is checked against its
column's ClickHouse type (`column_checks.py`) before it joins the batch: an event that the insert
would reject raises InvalidEvent and leaves the batch as it was, so it alone is dead-lettered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Hashable
from typing import Any

import numpy as np
import pyarrow as pa

from runstream.consumer.column_checks import TableChecks, Violation, build_checks
from runstream.consumer.migrations import FACT_TABLES
from runstream.consumer.monitoring_tables import DRIFT_TABLES

MAX_FUTURE_US = 24 * 3600 * 1_000_000  # an event dated more than a day ahead is rejected

#: The tables events are written to and their columns in insert order, read from the table specs
#: (consumer/migrations.py, consumer/monitoring_tables.py): adding a column is one edit of its spec.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    table.name: table.column_names for table in (*FACT_TABLES, *DRIFT_TABLES)
}


#: Each written column's ClickHouse type as a check, from the DDL in migrations.py (built once).
COLUMN_CHECKS: dict[str, TableChecks] = build_checks(TABLE_COLUMNS)

#: gpu_samples columns that come straight from a GpuSample record's field of the same name.
_GPU_SAMPLE_FIELDS = tuple(name for name in TABLE_COLUMNS["gpu_samples"] if name not in ("run_id", "host", "time"))


class InvalidEvent(ValueError):
    """An event that decoded but breaks the contract's invariants; it goes to the dead-letter topic."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @classmethod
    def of(cls, event_type: str, record: dict[str, Any], violation: Violation) -> InvalidEvent:
        """A value the column's type cannot hold, named with its event, table, column and value."""
        owner = record.get("run_id") or record.get("model") or "?"
        return cls(violation.reason, f"{event_type} event {record.get('event_id')!r} of {owner}: {violation}")


def _param_columns(value: Any) -> tuple[str, float | None, str]:
    if value is None:
        return "null", None, ""
    if isinstance(value, bool):
        return "bool", float(value), "true" if value else "false"
    if isinstance(value, int):
        return "int", float(value), str(value)
    if isinstance(value, float):
        return "float", value, repr(value)
    return "string", None, str(value)


class Batch:
    """Columns awaiting one insert per table; `points` counts metric points for throughput figures."""

    def __init__(self) -> None:
        self.columns: dict[str, dict[str, list[Any]]] = {
            table: {name: [] for name in names} for table, names in TABLE_COLUMNS.items()
        }
        self.events = 0
        self.points = 0
        self.event_counts: Counter[str] = Counter()
        # Metric points stay as each event's arrays until the insert: no Python object per point.
        self._metric_events: list[tuple[str, list[str], Any, Any, Any, Any]] = []
        #: Source messages (keys) of this batch that were dead-lettered: a batch split to isolate
        #: an insert failure re-batches only the others, and dead-letters none of them twice.
        self.rejected: set[Hashable] = set()
        #: An insert of this batch was rejected for its rows and its messages are being isolated.
        self.isolating = False
        self._rows_rejected: Counter[str] = Counter()

    def __len__(self) -> int:
        return self.events

    def rows(self, table: str) -> int:
        if table == "metric_points":
            return self.points
        return len(self.columns[table][TABLE_COLUMNS[table][0]])

    def table_rows(self) -> dict[str, int]:
        """Rows per table as stored: without the rows of events dead-lettered after an insert failed."""
        rows = {table: self.rows(table) - self._rows_rejected[table] for table in TABLE_COLUMNS}
        return {table: count for table, count in rows.items() if count > 0}

    def discount(self, part: Batch) -> None:
        """Take `part`'s events out of this batch's counts: they were dead-lettered after the insert
        failed (the columns keep them; the sink writes what it was given, the counts say what was stored)."""
        self.events -= part.events
        self.points -= part.points
        self.event_counts.subtract(part.event_counts)
        self.event_counts = +self.event_counts  # drop the zeros
        for table in TABLE_COLUMNS:
            self._rows_rejected[table] += part.rows(table)

    def metric_points_table(self) -> pa.Table:
        """The batch's metric points as an Arrow table: run ids and metric names dictionary-encoded
        from the events' own name tables and indices, numbers concatenated array by array."""
        run_ids: dict[str, int] = {}
        metric_ids: dict[str, int] = {}
        run_index, metric_index, steps, values, times = [], [], [], [], []
        for run_id, names, index, event_steps, event_values, event_times in self._metric_events:
            run_index.append(np.full(len(event_steps), run_ids.setdefault(run_id, len(run_ids)), dtype=np.int32))
            remap = np.array([metric_ids.setdefault(name, len(metric_ids)) for name in names], dtype=np.int32)
            metric_index.append(remap[index] if len(index) else np.empty(0, np.int32))
            steps.append(event_steps)
            values.append(event_values)
            times.append(event_times)

        def joined(parts: list[np.ndarray[Any, Any]], dtype: Any) -> np.ndarray[Any, Any]:
            return np.concatenate(parts) if parts else np.empty(0, dtype)

        def dictionary(indices: list[np.ndarray[Any, Any]], names: dict[str, int]) -> pa.DictionaryArray:
            codes = pa.array(joined(indices, np.int32))
            return pa.DictionaryArray.from_arrays(codes, pa.array(list(names), pa.string()))

        return pa.table({
            "run_id": dictionary(run_index, run_ids),
            "metric": dictionary(metric_index, metric_ids),
            "step": pa.array(joined(steps, np.int64)),
            "value": pa.array(joined(values, np.float64)),
            "time": pa.array(joined(times, np.int64)).cast(pa.timestamp("us", tz="UTC")),
        })

    def add(self, event_type: str, record: dict[str, Any], now_us: int | None = None) -> None:
        """Validate and append one event; raise InvalidEvent (nothing appended) when it breaks a rule."""
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        run_id = record.get("run_id")
        if not run_id:
            raise InvalidEvent("missing_run_id", f"{event_type} event {record.get('event_id')!r} has no run_id")
        timestamp = record.get("timestamp_us", 0)
        if timestamp > now_us + MAX_FUTURE_US:
            raise InvalidEvent(
                "future_timestamp", f"{event_type} event of run {run_id}: timestamp_us {timestamp} is in the future"
            )
        handler = getattr(self, f"_add_{event_type}", None)
        if handler is None:
            raise InvalidEvent("unknown_event_type", f"no table for event type {event_type!r}")
        if event_type == "metric_steps":  # checked array by array inside, before anything is appended
            handler(record, now_us)
        else:
            self._add_checked(handler, event_type, record, now_us)
        self.events += 1
        self.event_counts[event_type] += 1

    def _add_checked(self, handler: Any, event_type: str, record: dict[str, Any], now_us: int) -> None:
        """Run `handler`, then check every row it appended against the column types; on any failure
        cut each column back to where it was, so the batch holds whole events only."""
        starts = {table: len(columns[TABLE_COLUMNS[table][0]]) for table, columns in self.columns.items()}
        try:
            handler(record, now_us)
            for table, start in starts.items():
                columns = self.columns[table]
                if len(columns[TABLE_COLUMNS[table][0]]) > start:
                    violation = COLUMN_CHECKS[table].rows(columns, start)
                    if violation is not None:
                        raise InvalidEvent.of(event_type, record, violation)
        except BaseException:
            for table, start in starts.items():
                for values in self.columns[table].values():
                    del values[start:]
            raise

    def _add_run_started(self, r: dict[str, Any], _now: int) -> None:
        git = r["git"]
        hw = r["hardware"]
        cols = self.columns["runs"]
        for name, value in (
            ("run_id", r["run_id"]), ("project", r["project"]), ("run_name", r["run_name"]),
            ("user", r["user"]), ("host", r["host"]), ("started_at", r["timestamp_us"]),
            ("git_commit", git["commit"]), ("git_branch", git["branch"]), ("git_dirty", git["dirty"]),
            ("tags", r["tags"]), ("framework_versions", r["framework_versions"]),
            ("command_line", r["command_line"]), ("cpu_model", hw["cpu_model"]),
            ("cpu_count", hw["cpu_count"]), ("memory_bytes", hw["memory_bytes"]),
            ("gpu_count", len(hw["gpus"])),
            ("data_versions", [(d["name"], d["version"], d["uri"], d["digest"]) for d in r["data_versions"]]),
            ("event_id", r["event_id"]), ("git_diff_sha256", git["diff_sha256"]), ("rank", r["rank"]),
            ("local_rank", r["local_rank"]), ("world_size", r["world_size"]), ("scheduler", r["scheduler"]),
            ("resumed", r["resumed"]),
        ):
            cols[name].append(value)
        self._add_params(r["run_id"], r["params"], r["timestamp_us"])
        self._add_data_versions(r["run_id"], r["data_versions"], r["timestamp_us"])

    def _add_run_updated(self, r: dict[str, Any], _now: int) -> None:
        self._add_params(r["run_id"], r["params"], r["timestamp_us"])
        self._add_data_versions(r["run_id"], r["data_versions"], r["timestamp_us"])

    def _add_params(self, run_id: str, params: list[dict[str, Any]], time_us: int) -> None:
        cols = self.columns["run_params"]
        for param in params:
            value_type, number, text = _param_columns(param["value"])
            cols["run_id"].append(run_id)
            cols["key"].append(param["key"])
            cols["value_type"].append(value_type)
            cols["value_number"].append(number)
            cols["value_string"].append(text)
            cols["updated_at"].append(time_us)

    def _add_data_versions(self, run_id: str, versions: list[dict[str, Any]], time_us: int) -> None:
        cols = self.columns["run_data_versions"]
        for version in versions:
            cols["run_id"].append(run_id)
            for name in ("name", "version", "uri", "digest"):
                cols[name].append(version[name])
            cols["logged_at"].append(time_us)

    def _add_metric_steps(self, r: dict[str, Any], now_us: int) -> None:
        names = r["metric_names"]
        index = np.asarray(r["metric_index"], dtype=np.int64)
        steps = np.asarray(r["steps"], dtype=np.int64)
        values = np.asarray(r["values"], dtype=np.float64)
        times = np.asarray(r["times_us"], dtype=np.int64)
        n = len(steps)
        if not (len(index) == len(values) == len(times) == n):
            raise InvalidEvent(
                "ragged_columns",
                f"metric_steps of run {r['run_id']}: column lengths differ "
                f"(steps {n}, metric_index {len(index)}, values {len(values)}, times_us {len(times)})",
            )
        if n and int(steps.min()) < 0:
            raise InvalidEvent("negative_step", f"metric_steps of run {r['run_id']}: step {int(steps.min())} < 0")
        if n and (int(index.min()) < 0 or int(index.max()) >= len(names)):
            raise InvalidEvent(
                "bad_metric_index",
                f"metric_steps of run {r['run_id']}: metric_index outside 0..{len(names) - 1}",
            )
        if n and int(times.max()) > now_us + MAX_FUTURE_US:
            raise InvalidEvent("future_timestamp", f"metric_steps of run {r['run_id']}: a point is in the future")
        checks = COLUMN_CHECKS["metric_points"]
        violation = (checks.value("run_id", r["run_id"]) or checks.column("metric", names)
                     or checks.array("step", steps) or checks.array("value", values) or checks.array("time", times))
        if violation is not None:
            raise InvalidEvent.of("metric_steps", r, violation)
        self._metric_events.append((r["run_id"], names, index, steps, values, times))
        self.points += n

    def _add_gpu_samples(self, r: dict[str, Any], _now: int) -> None:
        cols = self.columns["gpu_samples"]
        samples = r["samples"]
        if samples:
            # Column by column: one list extension per column rather than a dict per sample.
            cols["run_id"].extend([r["run_id"]] * len(samples))
            cols["host"].extend([r["host"]] * len(samples))
            cols["time"].extend([sample["time_us"] for sample in samples])
            for name in _GPU_SAMPLE_FIELDS:
                cols[name].extend([sample[name] for sample in samples])
        if any(r.get(name) is not None for name in TABLE_COLUMNS["host_samples"][3:]):
            host = self.columns["host_samples"]
            row = dict(r, time=r["timestamp_us"])
            for name in TABLE_COLUMNS["host_samples"]:
                host[name].append(row.get(name))

    def _add_run_finished(self, r: dict[str, Any], _now: int) -> None:
        cols = self.columns["run_finishes"]
        for name, value in (
            ("run_id", r["run_id"]), ("finished_at", r["timestamp_us"]), ("status", r["status"]),
            ("exit_code", r["exit_code"]), ("error", r["error"]), ("summary", r["summary"]),
        ):
            cols[name].append(value)

    def _add_drift_reference(self, r: dict[str, Any], _now: int) -> None:
        cols = self.columns["drift_references"]
        for feature in r["features"]:
            edges = feature["categories"] if feature["kind"] == "categorical" else feature["cut_points"]
            bins = len(edges) + 1
            if len(feature["counts"]) != bins:
                raise InvalidEvent(
                    "bad_reference_bins",
                    f"drift_reference of {r['model']} {r['version']}: feature {feature['name']!r} has "
                    f"{len(feature['counts'])} counts for {bins} bins",
                )
        for feature in r["features"]:
            for name, value in (
                ("model", r["model"]), ("version", r["version"]), ("feature", feature["name"]),
                ("kind", feature["kind"]), ("run_id", r["run_id"]), ("logged_at", r["timestamp_us"]),
                ("cut_points", feature["cut_points"]), ("categories", feature["categories"]),
                ("counts", feature["counts"]), ("total", feature["count"]), ("missing", feature["missing"]),
                ("mean", feature["mean"]), ("std", feature["std"]), ("min", feature["min"]),
                ("max", feature["max"]), ("sample", feature["sample"]),
            ):
                cols[name].append(value)
        base = self.columns["drift_baselines"]
        for metric, value in r["baseline_metrics"].items():
            for name, item in (("model", r["model"]), ("version", r["version"]), ("metric", metric),
                               ("value", value), ("run_id", r["run_id"]), ("logged_at", r["timestamp_us"])):
                base[name].append(item)

    def _add_prediction_samples(self, r: dict[str, Any], now_us: int) -> None:
        if any(sample["time_us"] > now_us + MAX_FUTURE_US for sample in r["samples"]):
            raise InvalidEvent(
                "future_timestamp", f"prediction_samples of {r['model']} {r['version']}: a sample is in the future"
            )
        model, version = r["model"], r["version"]
        samples = self.columns["prediction_samples"]
        features = self.columns["prediction_features"]

        def feature_row(name: str, time_us: int, sample_id: str, value: float | None, category: str | None) -> None:
            for column, item in (("model", model), ("version", version), ("feature", name), ("time", time_us),
                                 ("sample_id", sample_id), ("value", value), ("category", category)):
                features[column].append(item)

        for sample in r["samples"]:
            prediction, label = sample["prediction"], sample["label"]
            for column, item in (
                ("model", model), ("version", version), ("time", sample["time_us"]),
                ("sample_id", sample["sample_id"]), ("host", r["host"]), ("sample_rate", r["sample_rate"]),
                ("prediction_value", prediction if isinstance(prediction, float) else None),
                ("prediction_class", prediction if isinstance(prediction, str) else None),
                ("label_value", label if isinstance(label, float) else None),
                ("label_class", label if isinstance(label, str) else None),
            ):
                samples[column].append(item)
            for name, value in sample["numeric"].items():
                feature_row(name, sample["time_us"], sample["sample_id"], value, None)
            for name, category in sample["categorical"].items():
                feature_row(name, sample["time_us"], sample["sample_id"], None, category)
            if prediction is not None:  # the prediction's distribution is compared like a feature's
                feature_row("prediction", sample["time_us"], sample["sample_id"],
                            prediction if isinstance(prediction, float) else None,
                            prediction if isinstance(prediction, str) else None)
