"""The run's heartbeat: every `heartbeat_interval_s`, one small `run_heartbeat` event saying the
process is alive, the highest step it logged, when that step last advanced and the step rate.

Readers compute the run's status from the last heartbeat at read time (runstream.monitoring.run_status):
heartbeats that stop without a `run_finished` make the run `lost` (the process died unseen: SIGKILL,
OOM killer, a node gone), heartbeats whose step does not advance make it `stalled` (a hung collective,
a dead data loader). Only the lead rank runs one, like it sends the run's start and end.

The thread follows the project's background-worker shape (see `system_sampler.py`): a daemon woken by
an event, the first beat at once (a run killed within its first interval is still seen), `stop()` at
finish, nothing that can raise into the training job. It blocks SIGTERM/SIGINT so that the kernel
hands those to the training thread, whose handler finishes the run. A forked child has no thread (it
is not copied by fork) and its inherited runs are forgotten (`lifecycle`); a run it starts gets its own.

`Run.log()` pays for it with one comparison and two attribute stores when the step advances; the
thread reads those attributes without a lock (each is one reference; a beat that reads between the
two stores pairs the new step with the previous step's time, one step early, which no status notices).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from runstream.producer.ids import event_id

log = logging.getLogger(__name__)

#: (highest step logged so far or None, when it last advanced in µs since the epoch or None)
StepReader = Callable[[], tuple["int | None", "int | None"]]


def heartbeat_record(
    run_id: str, attempt: int, interval_s: float, *, now_us: int, last_step: int | None,
    last_step_us: int | None, steps_per_s: float | None,
) -> dict[str, Any]:
    """One `run_heartbeat` event (schemas/avro/run_heartbeat.v1.avsc)."""
    return {
        "event_id": event_id(),
        "run_id": run_id,
        "timestamp_us": now_us,
        "attempt": attempt,
        "interval_s": float(interval_s),
        "last_step": last_step,
        "last_step_us": last_step_us,
        "steps_per_s": steps_per_s,
    }


class Heartbeat:
    """The heartbeat thread of one run.

    `read_steps` gives the run's (last_step, last_step_us); `emit` queues a record (it must not raise
    into this thread's loop, but a failure is caught and counted anyway). `clock` (monotonic seconds)
    and `wall_us` (µs since the epoch) are injectable so that the step rate can be tested without sleeping.
    """

    def __init__(
        self,
        run_id: str,
        attempt: int,
        interval_s: float,
        read_steps: StepReader,
        emit: Callable[[dict[str, Any]], object],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"heartbeat_interval_s: expected a positive number of seconds, got {interval_s!r}")
        self.run_id = run_id
        self.attempt = attempt
        self.interval_s = interval_s
        self._read_steps = read_steps
        self._emit = emit
        self._clock = clock
        self._wall_us = wall_us
        self._stop = threading.Event()
        self._stopped = False  # a plain flag: `stop()` from a signal handler sets it before anything that locks
        self._previous: tuple[float, int] | None = None  # (clock, last_step) at the previous beat
        self.beats = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="runstream-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self) -> dict[str, Any]:
        """The next beat's record; the step rate is over the time since the previous beat."""
        last_step, last_step_us = self._read_steps()
        now = self._clock()
        rate: float | None = None
        previous = self._previous
        if last_step is not None:
            if previous is not None and now > previous[0]:
                rate = max(last_step - previous[1], 0) / (now - previous[0])
            self._previous = (now, last_step)
        return heartbeat_record(self.run_id, self.attempt, self.interval_s, now_us=self._wall_us(),
                                last_step=last_step, last_step_us=last_step_us, steps_per_s=rate)

    def beat(self) -> None:
        """Send one heartbeat now; errors are counted and logged once, never raised."""
        if self._stopped:
            return
        try:
            self._emit(self.record())
            self.beats += 1
        except Exception as error:
            self.errors += 1
            if self.errors == 1:
                log.warning("runstream: heartbeat of run %s failed (further failures at debug level): %s",
                            self.run_id, error)
            else:
                log.debug("runstream: heartbeat of run %s failed: %s", self.run_id, error)

    def _loop(self) -> None:
        if hasattr(signal, "pthread_sigmask"):  # POSIX: leave SIGTERM/SIGINT to the training thread
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        self.beat()
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self, timeout: float = 1.0, *, wait: bool = True) -> None:
        """No beat after this returns (the run's end follows it). `wait=False` is for a finish nested in
        a signal handler: it only sets the flag, taking no lock the interrupted code may hold."""
        self._stopped = True
        if not wait:
            return
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
