"""Turns decoded events into columns, one set per ClickHouse table, checking each event's invariants.

Metric steps arrive columnar already, so a batch extends its columns with whole arrays rather
than building a Python object per point. Every value an event adds is checked against its
column's ClickHouse type (`column_checks.py`) before it joins the batch: an event that the insert
would reject raises InvalidEvent and leaves the batch as it was, so it alone is dead-lettered.

Small metric_steps and gpu_samples events, most messages of a busy fleet, are added a poll at a time
(`add_messages`): decoded together (`schemas/columnar.py` `decode_many`), checked together with the
same column checks, and kept as Arrow tables, so that no Python object is made per value. Any
message the bulk path flags goes through `add` alone, which decides as it always did.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from runstream.consumer.column_checks import TableChecks, Violation, build_checks
from runstream.consumer.lifecycle_tables import LIFECYCLE_EVENT_TABLES
from runstream.consumer.metric_tables import METRIC_EVENT_TABLES
from runstream.consumer.migrations import FACT_TABLES
from runstream.consumer.monitoring_tables import DRIFT_TABLES
from runstream.consumer.run_projects import SINK_FILLED_COLUMNS
from runstream.schemas import DecodeError, Decoder
from runstream.schemas.codec import COLUMNAR_MIN_BYTES, HEADER_SIZE
from runstream.schemas.columnar import Column, ManyDecoded

MAX_FUTURE_US = 24 * 3600 * 1_000_000  # an event dated more than a day ahead is rejected

#: The tables events are written to and their columns in insert order, read from the table specs
#: (consumer/migrations.py, consumer/monitoring_tables.py): adding a column is one edit of its spec.
#: The columns the sink fills (the raw rows' project: consumer/run_projects.py) are not the batch's.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    table.name: tuple(name for name in table.column_names if name not in SINK_FILLED_COLUMNS.get(table.name, ()))
    for table in (*FACT_TABLES, *DRIFT_TABLES, *LIFECYCLE_EVENT_TABLES, *METRIC_EVENT_TABLES)
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

    def __init__(self, fork_check: Callable[[Batch, dict[str, Any]], None] | None = None,
                 resume_check: Callable[[Batch, dict[str, Any]], None] | None = None) -> None:
        #: Called for each run_started before it joins the batch: refuses a resume of an unknown run and
        #: fills in what a later attempt's start left out (runstream.consumer.resumed_runs).
        self.resume_check = resume_check
        #: Called for each run_started naming a fork, before it joins the batch; raises InvalidEvent
        #: when the parent is unknown or never logged the fork step (runstream.consumer.fork_checks).
        self.fork_check = fork_check
        self.columns: dict[str, dict[str, list[Any]]] = {
            table: {name: [] for name in names} for table, names in TABLE_COLUMNS.items()
        }
        self.events = 0
        self.points = 0
        self.event_counts: Counter[str] = Counter()
        # Metric points stay as each event's arrays until the insert: no Python object per point.
        self._metric_events: list[tuple[str, list[str], Any, Any, Any, Any, int]] = []
        #: Rows decoded in bulk (`add_messages`), as Arrow tables per ClickHouse table.
        self._bulk: dict[str, list[pa.Table]] = defaultdict(list)
        self._bulk_rows: Counter[str] = Counter()
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
        return len(self.columns[table][TABLE_COLUMNS[table][0]]) + self._bulk_rows[table]

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
        parts = list(self._bulk["metric_points"])
        if self._metric_events or not parts:
            parts.insert(0, self._metric_events_table())
        return _concat(parts)

    def arrow_table(self, table: str) -> pa.Table | None:
        """The table's rows as one Arrow table when some were decoded in bulk (None otherwise: the
        rows are Python lists in `columns`, written as such)."""
        if table == "metric_points":
            return self.metric_points_table()
        parts = self._bulk.get(table)
        if not parts:
            return None
        columns = self.columns[table]
        if columns[TABLE_COLUMNS[table][0]]:
            parts = [*parts, _lists_table(columns, parts[0].schema)]
        return _concat(parts)

    def _metric_events_table(self) -> pa.Table:
        run_ids: dict[str, int] = {}
        metric_ids: dict[str, int] = {}
        run_index, metric_index, steps, values, times, attempts = [], [], [], [], [], []
        for run_id, names, index, event_steps, event_values, event_times, attempt in self._metric_events:
            attempts.append(np.full(len(event_steps), attempt, dtype=np.uint32))
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
            "attempt": pa.array(joined(attempts, np.uint32)),
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

    # -- many messages at once ---------------------------------------------------------------

    def add_messages(self, decoder: Decoder, messages: Sequence[Any], now_us: int | None = None
                     ) -> list[tuple[Any, DecodeError | InvalidEvent]]:
        """Decode, check and append a poll's messages; return those rejected, each with its error.

        Messages of one writer schema that `decode_many` reads (metric_steps, gpu_samples) are
        decoded and checked together, a few numpy calls per field for all of them. Any message that
        the bulk path flags — a layout it does not read, or a value some check refuses — is then
        decoded and added alone by `add`, which names exactly what is wrong with it (or accepts it),
        so the bulk path dead-letters exactly the messages the one-by-one path would.
        """
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        values = [message.value() for message in messages]
        groups: dict[bytes, list[int]] = defaultdict(list)
        for position, value in enumerate(values):
            # A large body is decoded alone: the per-message columnar decoder's numpy calls are
            # already few per point there, and its fast paths suit long arrays better.
            groups[value[:_HEADER] if value and len(value) < COLUMNAR_MIN_BYTES else b""].append(position)
        alone: list[int] = []
        for header, positions in groups.items():
            plan = decoder.batch_plan(header) if len(positions) >= BULK_MIN_MESSAGES else None
            bulk = None if plan is None else _BULK.get(plan[0])
            if plan is None or bulk is None:
                alone.extend(positions)
                continue
            decoded = decoder.decode_many(plan[1], [values[position] for position in positions])
            bad = bulk(self, decoded, now_us)
            if bad is None:
                alone.extend(positions)
            else:
                alone.extend(positions[i] for i in np.flatnonzero(bad).tolist())
        rejected: list[tuple[Any, DecodeError | InvalidEvent]] = []
        for position in sorted(alone):
            message = messages[position]
            try:
                self.add(*decoder.decode(values[position], partition=message.partition(), offset=message.offset()),
                         now_us)
            except (DecodeError, InvalidEvent) as error:
                rejected.append((message, error))
        return rejected

    def _bulk_metric_steps(self, decoded: ManyDecoded, now_us: int) -> np.ndarray[Any, Any]:
        """Append the good events of a bulk-decoded set of metric_steps; return which to add alone."""
        f, buffer = decoded.fields, decoded.buffer
        bad = decoded.bad.copy()
        run, names = f["run_id"], f["metric_names"]
        index, steps, values, times = f["metric_index"], f["steps"], f["values"], f["times_us"]
        bad |= (run.lengths == 0) | (f["timestamp_us"].values > now_us + MAX_FUTURE_US)
        bad |= (index.counts != steps.counts) | (values.counts != steps.counts) | (times.counts != steps.counts)
        assert names.items is not None
        _flag_every_bad_string(decoded, bad)

        def kept(column: Column) -> np.ndarray[Any, Any]:
            assert column.items is not None
            return column.items.values[~bad[column.owner]]  # type: ignore[no-any-return]

        owner = steps.owner[~bad[steps.owner]]
        point_index, point_steps, point_times = kept(index), kept(steps), kept(times)
        wrong = (point_steps < 0) | (point_index < 0) | (point_index >= names.counts[owner])
        wrong |= point_times > now_us + MAX_FUTURE_US
        bad[owner[wrong]] = True
        checks = COLUMN_CHECKS["metric_points"]
        _flag_checks(checks, "time", kept(times), steps.owner[~bad[steps.owner]], bad)
        good = ~bad
        if not good.any():
            return bad
        owner = steps.owner[good[steps.owner]]
        point_index, point_steps, point_times = kept(index), kept(steps), kept(times)
        point_values = kept(values)
        # Writers before metric_steps v2 read as attempt 1 (the schema's default).
        attempts = f["attempt"].values[owner] if "attempt" in f else np.ones(len(owner), np.int64)
        slot = np.cumsum(good) - 1  # a good message's place among the good ones
        runs = _strings(buffer, run.starts[good], run.lengths[good]).dictionary_encode()
        run_codes = runs.indices.to_numpy()[slot[owner]]
        name_good = good[names.owner]
        metric_names = _strings(buffer, names.items.starts[name_good], names.items.lengths[name_good])
        encoded = metric_names.dictionary_encode()
        kept_counts = np.where(good, names.counts, 0)
        first_name = np.cumsum(kept_counts) - kept_counts
        metric_codes = encoded.indices.to_numpy()[first_name[owner] + point_index]
        self._bulk["metric_points"].append(pa.table({
            "run_id": pa.DictionaryArray.from_arrays(pa.array(run_codes.astype(np.int32)), runs.dictionary),
            "metric": pa.DictionaryArray.from_arrays(pa.array(metric_codes.astype(np.int32)), encoded.dictionary),
            "step": pa.array(point_steps),
            "value": pa.array(point_values),
            "time": pa.array(point_times).cast(_TIME),
            "attempt": pa.array(attempts.astype(np.uint32)),
        }))
        events = int(good.sum())
        self.points += len(point_steps)
        self.events += events
        self.event_counts["metric_steps"] += events
        return bad

    def _bulk_gpu_samples(self, decoded: ManyDecoded, now_us: int) -> np.ndarray[Any, Any] | None:
        """Append the good events of a bulk-decoded set of gpu_samples; return which to add alone
        (None: all of them, when the writer's record lacks a column's field)."""
        f, buffer = decoded.fields, decoded.buffer
        samples = f["samples"]
        host_fields = TABLE_COLUMNS["host_samples"][3:]
        if any(name not in samples.fields for name in _GPU_SAMPLE_FIELDS + ("time_us",)) or any(
                name not in f for name in host_fields):
            return None
        bad = decoded.bad.copy()
        bad |= (f["run_id"].lengths == 0) | (f["timestamp_us"].values > now_us + MAX_FUTURE_US)
        _flag_every_bad_string(decoded, bad)
        gpu_checks, host_checks = COLUMN_CHECKS["gpu_samples"], COLUMN_CHECKS["host_samples"]
        for column, source in (("time", "time_us"), *((name, name) for name in _GPU_SAMPLE_FIELDS)):
            field = samples.fields[source]
            if field.starts is None:  # strings: checked above
                _flag_checks(gpu_checks, column, field.values, samples.owner, bad, field.valid)
        everyone = np.arange(len(bad))
        for name in host_fields:
            _flag_checks(host_checks, name, f[name].values, everyone, bad, f[name].valid)
        _flag_checks(host_checks, "time", f["timestamp_us"].values, everyone, bad)
        good = ~bad
        if not good.any():
            return bad
        slot = np.cumsum(good) - 1
        per_event = {name: _strings(buffer, f[name].starts[good], f[name].lengths[good]).dictionary_encode()
                     for name in ("run_id", "host")}

        def repeated(name: str, owners: np.ndarray[Any, Any]) -> pa.Array:
            codes = per_event[name].indices.to_numpy()[slot[owners]].astype(np.int32)
            return pa.DictionaryArray.from_arrays(pa.array(codes), per_event[name].dictionary)

        keep = good[samples.owner]
        if keep.any():
            rows: dict[str, pa.Array] = {}
            for column in TABLE_COLUMNS["gpu_samples"]:
                if column in ("run_id", "host"):
                    rows[column] = repeated(column, samples.owner[keep])
                else:
                    field = samples.fields["time_us" if column == "time" else column]
                    rows[column] = _arrow_column(buffer, field, keep, _ARROW_TYPES_OF["gpu_samples"][column])
            self._append_bulk("gpu_samples", pa.table(rows))
        with_host = good & np.logical_or.reduce([f[name].valid for name in host_fields])
        if with_host.any():
            rows = {"run_id": repeated("run_id", np.flatnonzero(with_host)),
                    "host": repeated("host", np.flatnonzero(with_host)),
                    "time": _arrow_column(buffer, f["timestamp_us"], with_host, _TIME)}
            for name in host_fields:
                rows[name] = _arrow_column(buffer, f[name], with_host, _ARROW_TYPES_OF["host_samples"][name])
            self._append_bulk("host_samples", pa.table(rows))
        events = int(good.sum())
        self.events += events
        self.event_counts["gpu_samples"] += events
        return bad

    def _append_bulk(self, table: str, data: pa.Table) -> None:
        self._bulk[table].append(data)
        self._bulk_rows[table] += data.num_rows

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
        if self.resume_check is not None:  # first: a fork's resume inherits its fork_from/fork_step
            self.resume_check(self, r)
        if self.fork_check is not None and (r.get("fork_from") is not None or r.get("fork_step") is not None):
            self.fork_check(self, r)
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
            ("resumed", r["resumed"]), ("attempt", r.get("attempt", 1)), ("run_group", r.get("run_group") or ""),
            ("job_type", r.get("job_type") or ""), ("sweep", r.get("sweep") or ""),
            ("fork_from", r.get("fork_from")), ("fork_step", r.get("fork_step")),
        ):
            cols[name].append(value)
        attempts = self.columns["run_attempts"]
        for name, value in (("run_id", r["run_id"]), ("attempt", r.get("attempt", 1)),
                            ("started_at", r["timestamp_us"]), ("host", r["host"]), ("scheduler", r["scheduler"]),
                            ("event_id", r["event_id"])):
            attempts[name].append(value)
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
        names, index, steps, values, times = _point_columns(r, f"metric_steps of run {r['run_id']}", now_us)
        n = len(steps)
        checks = COLUMN_CHECKS["metric_points"]
        violation = (checks.value("run_id", r["run_id"]) or checks.column("metric", names)
                     or checks.array("step", steps) or checks.array("value", values) or checks.array("time", times))
        if violation is not None:
            raise InvalidEvent.of("metric_steps", r, violation)
        attempt = r.get("attempt", 1)
        violation = checks.value("attempt", attempt)
        if violation is not None:
            raise InvalidEvent.of("metric_steps", r, violation)
        self._metric_events.append((r["run_id"], names, index, steps, values, times, attempt))
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
            ("attempt", r.get("attempt", 1)),
        ):
            cols[name].append(value)

    def _add_run_heartbeat(self, r: dict[str, Any], _now: int) -> None:
        cols = self.columns["run_heartbeats"]
        for name, value in (
            ("run_id", r["run_id"]), ("attempt", r.get("attempt", 1)), ("time", r["timestamp_us"]),
            ("interval_s", r["interval_s"]), ("last_step", r["last_step"]), ("last_step_at", r["last_step_us"]),
            ("steps_per_s", r["steps_per_s"]),
        ):
            cols[name].append(value)

    def _add_run_curation(self, r: dict[str, Any], _now: int) -> None:
        cols = self.columns["run_curation"]
        for name, value in (
            ("run_id", r["run_id"]), ("updated_at", r["timestamp_us"]), ("action", r["action"]),
            ("actor", r["actor"]), ("tags", r["tags"]), ("note", r["note"]), ("archived", r["archived"]),
            ("deleted", r["deleted"]), ("event_id", r["event_id"]),
        ):
            cols[name].append(value)

    def _add_rank_metric_steps(self, r: dict[str, Any], now_us: int) -> None:
        label = f"rank_metric_steps of run {r['run_id']} rank {r['rank']}"
        names, index, steps, values, times = _point_columns(r, label, now_us)
        n = len(steps)
        cols = self.columns["rank_metric_points"]
        cols["run_id"].extend([r["run_id"]] * n)
        cols["metric"].extend([names[i] for i in index.tolist()])
        cols["step"].extend(steps.tolist())
        cols["rank"].extend([r["rank"]] * n)
        cols["node"].extend([r["node"]] * n)
        cols["value"].extend(values.tolist())
        cols["time"].extend(times.tolist())
        cols["attempt"].extend([r.get("attempt", 1)] * n)

    def _add_metric_histogram(self, r: dict[str, Any], _now: int) -> None:
        label = f"metric_histogram {r['metric']!r} of run {r['run_id']} at step {r['step']}"
        edges, counts = r["edges"], r["counts"]
        if len(edges) != len(counts) + 1:
            raise InvalidEvent("bad_histogram_bins", f"{label}: {len(edges)} edges for {len(counts)} counts "
                                                     "(edges must be one more than counts)")
        edge_array = np.asarray(edges, dtype=np.float64)
        if not np.isfinite(edge_array).all() or (len(edges) > 1 and not (np.diff(edge_array) > 0).all()):
            raise InvalidEvent("bad_histogram_edges", f"{label}: edges must be finite and strictly increasing")
        if r["step"] < 0:
            raise InvalidEvent("negative_step", f"{label}: step {r['step']} < 0")
        cols = self.columns["metric_histograms"]
        for name, value in (
            ("run_id", r["run_id"]), ("metric", r["metric"]), ("step", r["step"]), ("rank", r["rank"]),
            ("node", r["node"]), ("time", r["time_us"]), ("edges", edges), ("counts", counts),
            ("nan_count", r["nan_count"]), ("neg_inf_count", r["neg_inf_count"]),
            ("pos_inf_count", r["pos_inf_count"]), ("attempt", r.get("attempt", 1)),
        ):
            cols[name].append(value)

    def _add_metric_definitions(self, r: dict[str, Any], _now: int) -> None:
        cols = self.columns["metric_definitions"]
        for definition in r["definitions"]:
            goal = definition["goal"] or ""
            if goal not in ("", "min", "max"):
                raise InvalidEvent("bad_metric_goal", f"metric_definitions of run {r['run_id']}: metric "
                                                      f"{definition['metric']!r} has goal {goal!r}, not min or max")
        for definition in r["definitions"]:
            for name, value in (
                ("run_id", r["run_id"]), ("metric", definition["metric"]), ("goal", definition["goal"] or ""),
                ("summary", definition["summary"]), ("step_metric", definition["step_metric"] or ""),
                ("defined_at", r["timestamp_us"]),
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


def _point_columns(r: dict[str, Any], label: str, now_us: int) -> tuple[list[str], Any, Any, Any, Any]:
    """A columnar points event's (names, metric_index, steps, values, times_us) as numpy arrays, after the
    checks every such event must pass (equal lengths, steps >= 0, indices into the names, no future
    point); InvalidEvent names the event by `label`."""
    names = r["metric_names"]
    index = np.asarray(r["metric_index"], dtype=np.int64)
    steps = np.asarray(r["steps"], dtype=np.int64)
    values = np.asarray(r["values"], dtype=np.float64)
    times = np.asarray(r["times_us"], dtype=np.int64)
    n = len(steps)
    if not (len(index) == len(values) == len(times) == n):
        raise InvalidEvent("ragged_columns", f"{label}: column lengths differ "
                                             f"(steps {n}, metric_index {len(index)}, values {len(values)}, "
                                             f"times_us {len(times)})")
    if n and int(steps.min()) < 0:
        raise InvalidEvent("negative_step", f"{label}: step {int(steps.min())} < 0")
    if n and (int(index.min()) < 0 or int(index.max()) >= len(names)):
        raise InvalidEvent("bad_metric_index", f"{label}: metric_index outside 0..{len(names) - 1}")
    if n and int(times.max()) > now_us + MAX_FUTURE_US:
        raise InvalidEvent("future_timestamp", f"{label}: a point is in the future")
    return names, index, steps, values, times


# -- bulk helpers --------------------------------------------------------------------------------

#: Fewer messages of one schema than this in a poll are decoded one by one: the bulk decoder's
#: fixed cost (a few hundred numpy calls) is worth paying from a few dozen messages on.
BULK_MIN_MESSAGES = 16
_HEADER = HEADER_SIZE
_TIME = pa.timestamp("us", tz="UTC")
_BULK: dict[str, Callable[[Batch, ManyDecoded, int], np.ndarray[Any, Any] | None]] = {
    "metric_steps": Batch._bulk_metric_steps,
    "gpu_samples": Batch._bulk_gpu_samples,
}
_PLAIN_TYPES: dict[str, pa.DataType] = {
    "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
    "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
    "Float32": pa.float32(), "Float64": pa.float64(), "String": pa.string(), "DateTime64(6, 'UTC')": _TIME,
}


def _arrow_type(declared: str) -> pa.DataType | None:
    """The Arrow type a bulk-built column is sent as, from the column's ClickHouse type."""
    inner = declared
    for wrapper in ("Nullable(", "LowCardinality("):
        if inner.startswith(wrapper) and inner.endswith(")"):
            inner = inner[len(wrapper):-1]
    return _PLAIN_TYPES.get(inner)


_ARROW_TYPES_OF: dict[str, dict[str, pa.DataType | None]] = {
    table: {name: _arrow_type(COLUMN_CHECKS[table].declared[name]) for name in TABLE_COLUMNS[table]}
    for table in ("gpu_samples", "host_samples")
}


def _strings(buffer: np.ndarray[Any, Any], starts: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any]) -> pa.Array:
    """An Arrow string array of the byte ranges (`starts`, `lengths`) of `buffer`, without a Python
    object per string; not yet checked to be UTF-8."""
    offsets = np.zeros(len(starts) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    index = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1] - starts, lengths)
    return pa.StringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(buffer[index]))


def _flag_bad_strings(buffer: np.ndarray[Any, Any], column: Column, bad: np.ndarray[Any, Any],
                      owners: np.ndarray[Any, Any] | None) -> None:
    """Flag the messages whose strings in `column` are not UTF-8 (fastavro refuses to decode them)."""
    owners = np.arange(len(column.starts)) if owners is None else owners
    keep = ~bad[owners]
    try:
        _strings(buffer, column.starts[keep], column.lengths[keep]).validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    for row in np.flatnonzero(keep).tolist():
        start = int(column.starts[row])
        try:
            bytes(buffer[start:start + int(column.lengths[row])]).decode("utf-8")
        except UnicodeDecodeError:
            bad[owners[row]] = True


def _flag_every_bad_string(decoded: ManyDecoded, bad: np.ndarray[Any, Any]) -> None:
    """Flag the messages with a string that is not UTF-8 in any field, stored or not (as event_id):
    the one-by-one path cannot decode them, so neither may the bulk path keep them."""
    for column in decoded.fields.values():
        if column.starts is not None:
            _flag_bad_strings(decoded.buffer, column, bad, None)
        elif column.items is not None and column.items.starts is not None:
            _flag_bad_strings(decoded.buffer, column.items, bad, column.owner)
        for field in column.fields.values():
            if field.starts is not None:
                _flag_bad_strings(decoded.buffer, field, bad, column.owner)


def _flag_checks(checks: TableChecks, column: str, values: np.ndarray[Any, Any], owners: np.ndarray[Any, Any],
                 bad: np.ndarray[Any, Any], valid: np.ndarray[Any, Any] | None = None) -> None:
    """Flag every message with a value its column cannot hold (the check finds one at a time: a
    message found is left out and the rest checked again)."""
    check = checks.checks[column]
    while True:
        keep = ~bad[owners]
        if valid is not None:
            keep &= valid
        found = check.array(values[keep])
        if found is None:
            return
        bad[owners[keep][found[0]]] = True


def _arrow_column(buffer: np.ndarray[Any, Any], field: Column, keep: np.ndarray[Any, Any],
                  arrow_type: pa.DataType | None) -> pa.Array:
    if field.starts is not None:
        return _strings(buffer, field.starts[keep], field.lengths[keep]).dictionary_encode()
    mask = None if field.valid is None else ~field.valid[keep]
    array = pa.array(field.values[keep], mask=mask)
    return array if arrow_type is None else array.cast(arrow_type)


def _lists_table(columns: dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    """Rows added one by one, as an Arrow table of the bulk rows' schema, to be written with them."""
    arrays = []
    for field in schema:
        values = columns[field.name]
        if pa.types.is_dictionary(field.type):
            arrays.append(pa.array(values, pa.string()).dictionary_encode())
        elif pa.types.is_timestamp(field.type):
            arrays.append(pa.array(values, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _concat(parts: list[pa.Table]) -> pa.Table:
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts).unify_dictionaries().combine_chunks()
