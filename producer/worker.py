"""The background worker between `Run.log()` and a sink.

The training thread only appends to a deque bounded in bytes; this worker drains it every
`flush_interval_s` (or sooner when woken), packs metric points of each run into columnar
`metric_steps` events (a distributed rank other than 0 logging with `log_all_ranks`: into
`rank_metric_steps` events carrying its rank and node, batched per flush the same way), and hands
every event to the sink in the order it was logged.

Three rules keep a training job safe from its tracker:

- Memory is bounded in bytes. Each queued item carries an estimate of what it holds (see
  `points_item_bytes`, calibrated against tracemalloc); past `queue_capacity_bytes` a `put` waits
  up to `FULL_QUEUE_WAIT_S` for the worker to make room, then drops the item and counts it.
- Only the worker thread touches the sink. `flush()` and `close()` post a request and wait for
  the worker's answer on a lock of their own, and wake-ups are raw locks released by the ringer.
  The training thread therefore holds no lock the worker needs, so a SIGTERM handler that
  interrupts it anywhere (inside `flush()`, inside `put()`) can still finish the runs: it queues
  and waits like any caller, within the shutdown deadline (`lifecycle.shutdown_deadline`).
- One event that cannot be encoded or sent is isolated: written with its reason to
  `<spool>/rejected/<run_id>.jsonl`, counted in `rejected_events`, logged once; the events around
  it, and other runs', go on. A columnar metric batch is split until the bad points are alone.
  Events are checked against the contract before the sink sees them (`_precheck`): a record
  that fails half-way through fastavro's container writer would leave a torn record in the
  spool file's block, corrupting its neighbours.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.producer import lifecycle
from runstream.producer.encodable import LONG_MAX, check_event, check_text
from runstream.producer.ids import event_id
from runstream.producer.settings import ProducerSettings
from runstream.producer.sinks import EventSink

log = logging.getLogger(__name__)

# Queue items, each ending with its estimated size in bytes:
# ("points", run_id, step, time_us, {name: value}, size), the same as "rank_points" for a rank > 0's
# points (`rank_metric_steps`), ("event", event_type, run_id, record, size), or ("close", run_id, size)
# for a run that ends without a run_finished event of its own.
QueueItem = tuple[Any, ...]

#: How long `put` waits for room in a full queue before it drops and counts the item.
FULL_QUEUE_WAIT_S = 0.5
#: The longest single wait on the sink, so that new requests (a SIGTERM's) are seen promptly.
FLUSH_SLICE_S = 0.1
#: How long a flush caller waits beyond its own timeout for a drain already under way.
DRAIN_GRACE_S = 2.0
#: Items drained between two updates of the byte count (each update lets a waiting `put` go on).
ROOM_EVERY = 1024
#: The last seconds before a SIGTERM's deadline belong to the ends of runs: from then on, points
#: still queued (logged after the last flush, so never acknowledged) are skipped and counted, so
#: that each run's run_finished `killed` is sent instead of waiting behind them.
SHUTDOWN_RESERVE_S = 2.0
#: Bytes of a points item besides its dict: the 6-slot tuple, step and time ints, floats' headers.
_POINTS_FIXED_BYTES = 144
_FLOAT_BYTES = 24
_points_sizes: dict[int, int] = {}
_live_workers: weakref.WeakSet[EventWorker] = weakref.WeakSet()


def _mark_forked() -> None:
    """In a forked child every inherited worker is its parent's: `put` drops (a flag, not a getpid
    per `log()` call, which costs a system call)."""
    for worker in list(_live_workers):
        worker._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked)


def points_item_bytes(count: int) -> int:
    """Estimated bytes one `log()` call of `count` metrics keeps alive while queued.

    Calibrated with tracemalloc (CPython 3.11, values dicts built key by key as `log()` does, fresh
    floats): within 1% of traced memory for 1, 2, 5, 8, 10, 20 and 50 metrics. Computed once per
    count: the hot path pays one dict lookup.
    """
    size = _points_sizes.get(count)
    if size is None:
        sample: dict[str, float] = {}
        for index in range(count):
            sample[f"k{index}"] = 0.0
        size = _points_sizes[count] = sys.getsizeof(sample) + _FLOAT_BYTES * count + _POINTS_FIXED_BYTES
    return size


def _deep_bytes(value: Any, depth: int = 0) -> int:
    """A rough size of an event record (rare items: GPU samples, params, references)."""
    size = sys.getsizeof(value)
    if depth > 6:
        return size
    if isinstance(value, dict):
        return size + sum(_deep_bytes(k, depth + 1) + _deep_bytes(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return size + sum(_deep_bytes(item, depth + 1) for item in value)
    return size


class _Bell:
    """A wake-up that never blocks whoever rings it: a raw lock, held while nobody has rung.

    `threading.Event` and `Condition` take an internal lock to set or wait; a signal handler that
    interrupted its own thread inside one would deadlock on it. Releasing a raw lock takes none.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def ring(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already rung and not yet heard
            pass

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=max(timeout, 0.0))


#: The longest single wait of a caller (the training thread). The kernel hands a process-directed
#: SIGTERM to any thread that does not block it, often the worker's; the main thread then runs the
#: Python handler only when its own wait returns, so a caller never waits longer than this at once.
SIGNAL_CHECK_S = 0.1


def _acquire_by(lock: Any, until: float) -> bool:
    """Acquire `lock` by the monotonic time `until`, waking every SIGNAL_CHECK_S so that a signal
    delivered to another thread is handled within that time, not after the whole wait."""
    while True:
        left = until - time.monotonic()
        if lock.acquire(timeout=max(min(left, SIGNAL_CHECK_S), 0.0)):
            return True
        if left <= SIGNAL_CHECK_S:
            return False


@dataclass
class _Request:
    """A flush (or close) waiting for the worker: answered by releasing `done`."""

    deadline: float
    close: bool = False
    undelivered: int = 0
    done: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.done.acquire()


class _PointColumns:
    """Metric points of one run not yet sent, column by column."""

    __slots__ = ("names", "layouts", "metric_index", "steps", "values", "times_us")

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        # A training loop logs the same keys step after step: map each key tuple to its indices once.
        self.layouts: dict[tuple[str, ...], list[int]] = {}
        self.metric_index: list[int] = []
        self.steps: list[int] = []
        self.values: list[float] = []
        self.times_us: list[int] = []

    def add(self, step: int, time_us: int, metrics: dict[str, float]) -> None:
        keys = tuple(metrics)
        indices = self.layouts.get(keys)
        if indices is None:
            names = self.names
            indices = self.layouts[keys] = [names.setdefault(name, len(names)) for name in keys]
        count = len(indices)
        self.metric_index.extend(indices)
        self.values.extend(metrics.values())
        self.steps.extend([step] * count)
        self.times_us.extend([time_us] * count)

    def __len__(self) -> int:
        return len(self.steps)

    def to_record(self, run_id: str, attempt: int, rank: tuple[int, str] | None = None) -> dict[str, Any]:
        """A `metric_steps` record, or with `rank` (rank, node) a `rank_metric_steps` one."""
        placed = {} if rank is None else {"rank": rank[0], "node": rank[1]}
        return {
            **placed,
            "attempt": attempt,
            "event_id": event_id(),
            "run_id": run_id,
            "timestamp_us": time.time_ns() // 1000,
            "metric_names": list(self.names),
            "metric_index": self.metric_index,
            "steps": self.steps,
            "values": self.values,
            "times_us": self.times_us,
        }


def _split_points(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two halves of a columnar batch, each a new event (the whole one was never sent)."""
    half = len(record["steps"]) // 2
    parts = []
    for cut in (slice(None, half), slice(half, None)):
        part = dict(record, event_id=event_id())
        for column in ("metric_index", "steps", "values", "times_us"):
            part[column] = record[column][cut]
        parts.append(part)
    return parts[0], parts[1]


def _check_points(record: dict[str, Any]) -> None:
    """What `log()` already guarantees, checked again cheaply (C loops, a few ns a point) because
    the columns are the one event too large for a full validation on every batch."""
    for name in record["metric_names"]:
        check_text("metric name", name)
    steps, times = record["steps"], record["times_us"]
    if steps and not (0 <= min(steps) and max(steps) <= LONG_MAX and -LONG_MAX <= min(times)
                      and max(times) <= LONG_MAX):
        raise ValueError("metric points: a step or time is outside the Avro long range")
    total = sum(record["values"], 0.0)  # TypeError for a non-number, OverflowError for a huge int
    if not isinstance(total, float):
        raise TypeError(f"metric points: values must be numbers, got a sum of type {type(total).__name__}")


def _jsonable(value: Any) -> Any:
    """A record as JSON can always write it: huge ints and odd objects as text (the reason says why)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return f"<{type(value).__name__}>"


class EventWorker:
    """Owns the queue, the worker thread and the sink for every run of one process and setting."""

    def __init__(self, sink: EventSink, settings: ProducerSettings) -> None:
        self._sink = sink
        self._settings = settings
        self._capacity = settings.queue_capacity_bytes
        self._queue: deque[QueueItem] = deque()
        # Queued bytes = _put_bytes - _taken_bytes. Each counter has its own writers (logging
        # threads; the worker), so neither side waits on the other. Two logging threads racing on
        # `+=` could lose one item's estimate: the bound is an estimate either way.
        self._put_bytes = 0
        self._taken_bytes = 0
        self._bell = _Bell()  # wakes the worker
        self._room = _Bell()  # rung by the worker when it has freed queue room
        self._requests: deque[_Request] = deque()
        # Held by whoever touches the sink: the worker thread, or a caller once that thread is gone.
        self._flush_lock = threading.Lock()
        self._stopping = False
        self._last_values: dict[str, dict[str, float]] = {}
        #: The attempt of each run this process logs to (set by `Run`); its metric_steps carry it.
        self.attempts: dict[str, int] = {}
        #: (rank, node) of each run this process logs to as a rank other than 0 (set by `Run`); its
        #: rank_metric_steps carry them.
        self.ranks: dict[str, tuple[int, str]] = {}
        self.dropped_items = 0
        self.sent_events = 0
        self.rejected_events = 0
        self.rejected_folder = Path(settings.spool) / "rejected"
        self._pid = os.getpid()
        self._forked = False
        _live_workers.add(self)
        self._thread = threading.Thread(target=self._loop, name="runstream-worker", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        """The estimated bytes queued now (for tests and the benchmark)."""
        return self._put_bytes - self._taken_bytes

    # -- training-thread side -------------------------------------------------------------

    def put_points(self, run_id: str, step: int, time_us: int, values: dict[str, float],
                   kind: str = "points") -> bool:
        """Enqueue one `log()` call; the hot path: a dict lookup, a comparison, an append. `kind`
        "rank_points" is a rank other than 0 (`log_all_ranks`): sent as `rank_metric_steps` with the
        (rank, node) of `ranks[run_id]`, batched per flush like the run's own points."""
        size = _points_sizes.get(len(values)) or points_item_bytes(len(values))
        if self._forked:
            return self._drop_in_child()
        queued = self._put_bytes - self._taken_bytes
        if queued > 0 and queued + size > self._capacity and not self._wait_for_room(size):
            return False
        self._queue.append((kind, run_id, step, time_us, values, size))
        self._put_bytes += size
        return True

    def put(self, item: QueueItem, *, bounded: bool = True) -> bool:
        """Enqueue an event or a close without waiting on the network; False when dropped (counted).

        `bounded=False` is for what ends a run (run_finished, close): it is small, and a SIGTERM
        handler must be able to queue it even when the queue is full.
        """
        if self._forked or self._pid != os.getpid():
            return self._drop_in_child()
        size = _deep_bytes(item[3]) if item[0] == "event" else 64
        if bounded:
            queued = self._put_bytes - self._taken_bytes
            if queued > 0 and queued + size > self._capacity and not self._wait_for_room(size):
                return False
        self._queue.append((*item, size))
        self._put_bytes += size
        return True

    def _drop_in_child(self) -> bool:
        # A forked child must not send its parent's events twice, nor write to its files.
        self.dropped_items += 1
        if self.dropped_items == 1:
            log.debug("runstream: logging from a forked child to its parent's run is ignored")
        return False

    def _wait_for_room(self, size: int) -> bool:
        """The documented full-queue policy: wait up to FULL_QUEUE_WAIT_S, then drop and count."""
        self._bell.ring()
        deadline = time.monotonic() + FULL_QUEUE_WAIT_S
        while True:
            queued = self._put_bytes - self._taken_bytes
            if queued <= 0 or queued + size <= self._capacity:
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping:
                self.dropped_items += 1
                if self.dropped_items == 1:
                    log.warning(
                        "runstream: queue full (%d bytes queued, bound %d); dropping and counting items",
                        queued, self._capacity,
                    )
                return False
            self._room.wait(min(left, 0.05))

    def last_values(self, run_id: str) -> dict[str, float]:
        return dict(self._last_values.get(run_id, {}))

    def flush(self, timeout: float | None = None) -> int:
        """Have the worker send everything queued so far and wait for the sink; return undelivered events."""
        if self._pid != os.getpid():
            return 0
        return self._request(self._settings.flush_timeout_s if timeout is None else timeout, close=False)

    def close(self, timeout: float | None = None) -> int:
        """Flush, close the sink and stop the worker thread; return undelivered events."""
        if self._pid != os.getpid():
            return 0
        self._stopping = True
        return self._request(self._settings.flush_timeout_s if timeout is None else timeout, close=True)

    def _request(self, timeout: float, *, close: bool) -> int:
        now = time.monotonic()
        deadline = now + max(timeout, 0.0)
        shutdown = lifecycle.shutdown_deadline()
        if shutdown is not None:
            deadline = min(deadline, shutdown)
        request = _Request(deadline, close=close)
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return self._serve_inline(request)
        self._requests.append(request)
        self._bell.ring()
        wait_until = deadline + DRAIN_GRACE_S if shutdown is None else shutdown
        if _acquire_by(request.done, wait_until):
            return request.undelivered
        log.warning("runstream: the worker did not finish a flush in time; %d items still queued", len(self._queue))
        return max(1, len(self._queue))

    def _serve_inline(self, request: _Request) -> int:
        """The worker thread is gone (closed, or never started in this process): do its work here."""
        if not _acquire_by(self._flush_lock, request.deadline):
            return max(1, len(self._queue))
        try:
            self._serve([request])
        finally:
            self._flush_lock.release()
        return request.undelivered

    # -- worker side -------------------------------------------------------------------

    def _loop(self) -> None:
        # Leave SIGTERM and SIGINT to the training thread, whose handler acts on them at once
        # (Python runs handlers in the main thread only; a signal the kernel gave this thread waits
        # for the main thread's next check).
        if hasattr(signal, "pthread_sigmask"):  # POSIX
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        while True:
            self._bell.wait(self._settings.flush_interval_s)
            with self._flush_lock:
                if self._serve(self._take_requests()):
                    return

    def _take_requests(self) -> list[_Request]:
        taken = []
        while self._requests:
            taken.append(self._requests.popleft())
        return taken

    def _serve(self, waiting: list[_Request]) -> bool:
        """Drain, then flush the sink in short slices until every waiting request is answered;
        True when one of them closed the sink.

        New requests and newly queued items (a SIGTERM handler's run_finished) are picked up
        between slices, so a long flush never hides a later, shorter deadline.
        """
        self._drain_safely()
        if not waiting:
            self._sink_flush(0.0)
            return False
        closed = False
        purged = False
        while waiting:
            left = min(request.deadline for request in waiting) - time.monotonic()
            remaining = self._sink_flush(min(max(left, 0.0), FLUSH_SLICE_S))
            now = time.monotonic()
            shutdown = lifecycle.shutdown_deadline()
            if remaining and not purged and shutdown is not None and now >= shutdown - SHUTDOWN_RESERVE_S:
                remaining, purged = self._purge_to_spool(remaining), True
            for request in list(waiting):
                if remaining == 0 or request.deadline <= now:
                    if request.close:
                        self._close_sink(request.deadline)
                        closed = True
                    request.undelivered = remaining
                    waiting.remove(request)
                    request.done.release()
            if self._queue or self._requests:
                waiting.extend(self._take_requests())
                self._drain_safely()
        return closed

    def _purge_to_spool(self, remaining: int) -> int:
        """A SIGTERM's deadline is near: what the sink still holds unsent goes to the local spool
        (a sink without that ability, the spool itself, has nothing to give back)."""
        purge = getattr(self._sink, "purge_to_spool", None)
        if purge is None:
            return remaining
        try:
            left = int(purge())
        except Exception:
            log.exception("runstream: could not move unsent events to the spool at shutdown")
            return remaining
        log.warning("runstream: shutting down: %d unsent events moved to the spool (upload them with "
                    "`runstream sync`), %d still in flight", max(remaining - left, 0), left)
        return left

    def _sink_flush(self, timeout: float) -> int:
        try:
            return self._sink.flush(timeout)
        except Exception:
            log.exception("runstream: the sink failed to flush")
            return 1

    def _close_sink(self, deadline: float) -> None:
        try:
            self._sink.close(max(deadline - time.monotonic(), 0.0))
        except Exception:
            log.exception("runstream: the sink failed to close")

    def _drain_safely(self) -> None:
        try:
            self._drain()
        except Exception:  # the worker must survive anything so the training job never notices
            log.exception("runstream: worker failed to send a batch")

    def _drain(self) -> None:
        """Move everything queued to the sink, keeping each run's order."""
        # Points awaiting their event, by (kind, run): "points" become metric_steps, "rank_points" (a rank > 0
        # logging with log_all_ranks) rank_metric_steps.
        pending: dict[tuple[str, str], _PointColumns] = {}
        limit = self._settings.max_points_per_event
        queue = self._queue
        freed = 0
        counted = 0
        while queue:
            item = queue.popleft()
            freed += item[-1]
            counted += 1
            if counted >= ROOM_EVERY:
                self._taken_bytes += freed
                freed = counted = 0
                self._room.ring()
                shutdown = lifecycle.shutdown_deadline()
                if shutdown is not None and time.monotonic() >= shutdown - SHUTDOWN_RESERVE_S:
                    self._skip_points_for_shutdown()
            kind = item[0]
            if kind == "points" or kind == "rank_points":
                _, run_id, step, time_us, metrics, _size = item
                key = (kind, run_id)
                columns = pending.get(key)
                if columns is None:
                    columns = pending[key] = _PointColumns()
                columns.add(step, time_us, metrics)
                if kind == "points":
                    self._last_values.setdefault(run_id, {}).update(metrics)
                if len(columns) >= limit:
                    self._send_columns(kind, run_id, pending.pop(key))
            elif kind == "close":  # a run that ends without a run_finished event (ranks > 0)
                run_id = item[1]
                self._send_pending(pending, run_id)
                self._last_values.pop(run_id, None)
                self._close_run(run_id)
            else:
                _, event_type, run_id, record, _size = item
                self._send_pending(pending, run_id)
                if event_type == "run_finished":
                    # The summary is the last value of each metric logged before the finish.
                    if record.get("summary") is None:  # (only what a double holds: a run must end)
                        last = self._last_values.get(run_id, {})
                        record["summary"] = {k: v for k, v in last.items() if isinstance(v, float)}
                    self._send(event_type, run_id, record)
                    self._last_values.pop(run_id, None)
                    self._close_run(run_id)
                else:
                    self._send(event_type, run_id, record)
        for (kind, run_id), columns in pending.items():
            self._send_columns(kind, run_id, columns)
        self._taken_bytes += freed
        self._room.ring()

    def _skip_points_for_shutdown(self) -> None:
        """Leave the points still queued (never acknowledged) and keep what ends runs, in order."""
        queue = self._queue
        kept: list[QueueItem] = []
        skipped = freed = 0
        while queue:
            item = queue.popleft()
            if item[0] in ("points", "rank_points"):
                skipped += 1
                freed += item[-1]
            else:
                kept.append(item)
        queue.extendleft(reversed(kept))
        self._taken_bytes += freed
        if skipped:
            self.dropped_items += skipped
            log.warning("runstream: shutting down: %d log() calls made after the last flush were not sent", skipped)

    def _close_run(self, run_id: str) -> None:
        try:
            self._sink.close_run(run_id)
        except Exception:
            log.exception("runstream: could not seal the spool files of run %s", run_id)

    def _send(self, event_type: str, run_id: str, record: dict[str, Any]) -> bool:
        """Hand one event to the sink; an event that fails is isolated (rejected), never the batch."""
        try:
            check_event(event_type, record)
            self._sink.send(event_type, run_id, record)
        except Exception as error:
            self._reject(event_type, run_id, record, error)
            return False
        self.sent_events += 1
        return True

    def _send_pending(self, pending: dict[tuple[str, str], _PointColumns], run_id: str) -> None:
        """Send the run's points still pending, before an event of the run that must follow them."""
        for kind in ("points", "rank_points"):
            columns = pending.pop((kind, run_id), None)
            if columns is not None:
                self._send_columns(kind, run_id, columns)

    def _send_columns(self, kind: str, run_id: str, columns: _PointColumns) -> None:
        """A batch of points as one event: `metric_steps`, or for "rank_points" `rank_metric_steps` with the
        (rank, node) of `ranks`."""
        attempt = self.attempts.get(run_id, 1)
        if kind == "points":
            self._send_points(run_id, columns.to_record(run_id, attempt))
        else:
            self._send_points(run_id, columns.to_record(run_id, attempt, self.ranks.get(run_id, (0, ""))),
                              "rank_metric_steps")

    def _send_points(self, run_id: str, record: dict[str, Any], event_type: str = "metric_steps") -> None:
        """Send a columnar batch; if it fails, split it so that only the points at fault are rejected."""
        try:
            _check_points(record)
            self._sink.send(event_type, run_id, record)
        except Exception as error:
            if len(record["steps"]) <= 1:
                self._reject(event_type, run_id, record, error)
                return
            for part in _split_points(record):
                self._send_points(run_id, part, event_type)
            return
        self.sent_events += 1

    def _reject(self, event_type: str, run_id: str, record: dict[str, Any], error: BaseException) -> None:
        """Keep the event, with why it failed, in `<spool>/rejected/<run_id>.jsonl` (JSON lines)."""
        self.rejected_events += 1
        reason = f"{type(error).__name__}: {error}"[:1000]
        line = {"event_type": event_type, "run_id": run_id, "reason": reason, "record": _jsonable(record)}
        path = self.rejected_folder / f"{''.join(c if c.isalnum() or c in '-_' else '_' for c in run_id)}.jsonl"
        try:
            self.rejected_folder.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        except (OSError, ValueError) as write_error:
            log.error("runstream: could not keep a rejected %s event of run %s: %s", event_type, run_id, write_error)
        if self.rejected_events == 1:
            log.error(
                "runstream: a %s event of run %s could not be sent (%s); kept in %s and counted in "
                "producer_stats()['rejected_events']; later ones are counted without a log line",
                event_type, run_id, reason, path,
            )
