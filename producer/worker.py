"""The background worker between `Run.log()` and a sink.

The training thread only appends to a bounded deque; this worker drains it every
`flush_interval_s` (or sooner when woken), packs metric points of each run into columnar
`metric_steps` events, and hands every event to the sink in the order it was logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

from runstream.producer.ids import event_id
from runstream.producer.settings import ProducerSettings
from runstream.producer.sinks import EventSink

log = logging.getLogger(__name__)

# Queue items: ("points", run_id, step, time_us, {name: value}), ("event", event_type, run_id, record),
# or ("close", run_id) for a run that ends without a run_finished event of its own.
QueueItem = tuple[Any, ...]

#: How long `put` waits for room in a full queue before it drops and counts the item.
FULL_QUEUE_WAIT_S = 0.5


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

    def to_record(self, run_id: str) -> dict[str, Any]:
        return {
            "event_id": event_id(),
            "run_id": run_id,
            "timestamp_us": time.time_ns() // 1000,
            "metric_names": list(self.names),
            "metric_index": self.metric_index,
            "steps": self.steps,
            "values": self.values,
            "times_us": self.times_us,
        }


class EventWorker:
    """Owns the queue, the worker thread and the sink for every run of one process and setting."""

    def __init__(self, sink: EventSink, settings: ProducerSettings) -> None:
        self._sink = sink
        self._settings = settings
        self._queue: deque[QueueItem] = deque()
        self._wake = threading.Event()
        self._room = threading.Condition()
        # Re-entrant: a SIGTERM handler may finish runs while the main thread is inside a drain.
        self._flush_lock = threading.RLock()
        self._stopping = False
        self._last_values: dict[str, dict[str, float]] = {}
        self.dropped_items = 0
        self.sent_events = 0
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, name="runstream-worker", daemon=True)
        self._thread.start()

    # -- training-thread side -------------------------------------------------------------

    def put(self, item: QueueItem) -> bool:
        """Enqueue without waiting on the network; False when the item was dropped (counted)."""
        if self._pid != os.getpid():
            # A forked child must not send its parent's events twice, nor write to its files.
            self.dropped_items += 1
            if self.dropped_items == 1:
                log.debug("runstream: logging from a forked child to its parent's run is ignored")
            return False
        if len(self._queue) >= self._settings.queue_capacity_points:
            self._wake.set()
            deadline = time.monotonic() + FULL_QUEUE_WAIT_S
            with self._room:
                while len(self._queue) >= self._settings.queue_capacity_points:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stopping:
                        self.dropped_items += 1
                        if self.dropped_items == 1:
                            log.warning(
                                "runstream: queue full (%d items); dropping and counting items",
                                self._settings.queue_capacity_points,
                            )
                        return False
                    self._room.wait(left)
        self._queue.append(item)
        return True

    def last_values(self, run_id: str) -> dict[str, float]:
        return dict(self._last_values.get(run_id, {}))

    def flush(self, timeout: float | None = None) -> int:
        """Send everything queued so far and wait for the sink; return undelivered events."""
        timeout = self._settings.flush_timeout_s if timeout is None else timeout
        if self._pid != os.getpid():
            return 0
        with self._flush_lock:
            self._drain()
            return self._sink.flush(timeout)

    def close(self, timeout: float | None = None) -> int:
        timeout = self._settings.flush_timeout_s if timeout is None else timeout
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        remaining = self.flush(timeout)
        with self._flush_lock:
            self._sink.close(timeout)
        return remaining

    # -- worker side -------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait(self._settings.flush_interval_s)
            self._wake.clear()
            try:
                with self._flush_lock:
                    self._drain()
                    self._sink.flush(0)
            except Exception:  # the worker must survive anything so the training job never notices
                log.exception("runstream: worker failed to send a batch")

    def _drain(self) -> None:
        """Move everything queued to the sink, keeping each run's order."""
        with self._flush_lock:
            pending: dict[str, _PointColumns] = {}
            limit = self._settings.max_points_per_event
            queue = self._queue
            while queue:
                item = queue.popleft()
                if item[0] == "points":
                    _, run_id, step, time_us, metrics = item
                    columns = pending.get(run_id)
                    if columns is None:
                        columns = pending[run_id] = _PointColumns()
                    columns.add(step, time_us, metrics)
                    self._last_values.setdefault(run_id, {}).update(metrics)
                    if len(columns) >= limit:
                        self._send("metric_steps", run_id, columns.to_record(run_id))
                        del pending[run_id]
                elif item[0] == "close":  # a run that ends without a run_finished event (ranks > 0)
                    run_id = item[1]
                    columns = pending.pop(run_id, None)
                    if columns is not None:
                        self._send("metric_steps", run_id, columns.to_record(run_id))
                    self._last_values.pop(run_id, None)
                    self._sink.close_run(run_id)
                else:
                    _, event_type, run_id, record = item
                    columns = pending.pop(run_id, None)
                    if columns is not None:
                        self._send("metric_steps", run_id, columns.to_record(run_id))
                    self._send(event_type, run_id, record)
                    if event_type == "run_finished":
                        self._last_values.pop(run_id, None)
                        self._sink.close_run(run_id)
            for run_id, columns in pending.items():
                self._send("metric_steps", run_id, columns.to_record(run_id))
            with self._room:
                self._room.notify_all()

    def _send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        self._sink.send(event_type, run_id, record)
        self.sent_events += 1
