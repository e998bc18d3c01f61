"""Which attempt of a run this process is: 1 for a run's first process, +1 for each resume.

A run restarted from a checkpoint (a preempted SLURM job requeued, torchrun restarting its workers,
a Kubernetes Job's new pod) continues the same run id; every event it sends carries its attempt, so
that `runstream curve RUN --attempts` can tell the attempts' points apart. Which value of a step wins
does not depend on the number (the latest logged wins), so a wrong guess never changes an answer,
only how attempts are labelled.

The number comes from, in order: `RUNSTREAM_ATTEMPT`; the scheduler's own restart count
(`SLURM_RESTART_COUNT`, `TORCHELASTIC_RESTART_COUNT`) + 1; a counter the spool folder keeps per run
(`<spool>/attempts/<run_id>`, locked; a process that finds the attempt's recorder still alive — another
rank of the same launch on this host — shares its attempt); else 2 for a resume on a host that never
saw the run. With `resume="auto"` (producer/ids.py `scheduler_identity`) the scheduler's counters come
first too; a Kubernetes Job has none, so its pods count with the spool's counter.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from runstream.processes import process_alive

#: Environment variables of schedulers that count restarts from 0 (first start).
RESTART_COUNTERS = ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")
MAX_ATTEMPT = 2**31 - 1


def _positive_int(name: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {text!r}") from None
    if not minimum <= value <= MAX_ATTEMPT:
        raise ValueError(f"{name}: expected an integer from {minimum} to {MAX_ATTEMPT}, got {value}")
    return value


def scheduler_attempt() -> int | None:
    """The attempt the scheduler's restart counter says, or None when no counter is set."""
    explicit = os.environ.get("RUNSTREAM_ATTEMPT")
    if explicit:
        return _positive_int("RUNSTREAM_ATTEMPT", explicit, minimum=1)
    for name in RESTART_COUNTERS:
        text = os.environ.get(name)
        if text:
            return _positive_int(name, text, minimum=0) + 1
    return None


def spool_knows_run(run_id: str, spool: str | Path) -> bool:
    """Whether this host's spool folder has seen the run: its attempt counter or its spool files."""
    folder = Path(spool)
    return (folder / "attempts" / run_id).is_file() or (folder / run_id).is_dir()


def resolve_attempt(run_id: str, *, resumed: bool, spool: str | Path, auto: bool = False) -> int:
    """This process's attempt of `run_id`; recorded in the spool's counter so the next resume counts on.

    `auto` (`resume="auto"`, the id from the scheduler): without a scheduler counter, the spool's
    counter decides alone: 1 on a host that never saw the run (a Kubernetes Job's pod on a fresh
    node: keep the spool on a persistent volume, or set RUNSTREAM_ATTEMPT), else the next attempt."""
    folder = Path(spool) / "attempts"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / run_id, "a+", encoding="ascii") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        number, _, recorder = counter.read().strip().partition(" ")
        previous = int(number) if number.isdigit() else None
        attempt = scheduler_attempt()
        if attempt is None:
            if previous is not None and recorder.isdigit() and _alive(int(recorder)):
                attempt = previous  # another rank of this launch got here first
            elif auto:
                attempt = previous + 1 if previous is not None else 1
            elif resumed:
                attempt = previous + 1 if previous is not None else 2
            else:
                attempt = 1
        counter.seek(0)
        counter.truncate()
        counter.write(f"{max(attempt, previous or 0)} {os.getpid()}")
        return attempt


def _alive(pid: int) -> bool:
    # this process starting a new attempt of its own run (a resume in-process) does not hold it
    return pid != os.getpid() and process_alive(pid)
