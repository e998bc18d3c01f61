"""Every attempt of a resumed run stays queryable: the points a later attempt logs again are copied aside first.

`metric_points` keeps one row per (run, metric, step): the latest logged wins (ReplacingMergeTree by
time), so every view shows the later attempt's value of a step logged again. A merge would drop the
earlier attempt's row, and `optimize_on_insert` already collapses two attempts of one step that arrive in
one insert. So, before the sink inserts a batch's points of attempt N > 1 of a run, it copies into
`metric_points_superseded` (keyed with the attempt, so nothing there collapses across attempts):

- the stored points of that run of attempts < N at steps >= the lowest step of attempt N in the batch
  (one `INSERT ... SELECT` for the whole batch, reading every month partition: a resume a month later
  finds the crashed attempt's points wherever they are), and
- the batch's own points of attempts < N at those steps (a consumer that was behind, or `runstream
  ingest` of a spool folder holding both attempts, gets both in one batch).

Both are idempotent: a redelivered batch (the consumer killed between the copy and the insert, or after
the insert and before the commit) copies the same rows again, which collapse with their twins (FINAL, or
the next merge). A per-process cache remembers, per (run, attempt), the lowest step copied, so a long
resumed run does not repeat the copy for every batch: it is redone only when a batch starts lower.

Not covered: points of an earlier attempt arriving after a later attempt's points of the same steps were
stored (an old spool synced late); they lose to the later attempt in every view all the same (their time
is older), but are not copied aside.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

TABLE = "metric_points_superseded"
COLUMNS = ("run_id", "metric", "attempt", "step", "value", "time")

#: Fault injection for the crash tests: when set to a path, the sink writes that file after copying a
#: batch's superseded points and before inserting its points, and waits to be killed. Never in production.
FAULT_AFTER_COPY_ENV = "RUNSTREAM_FAULT_AFTER_SUPERSEDED_COPY"

#: (run, attempt) pairs remembered by the per-process cache.
CACHE_SIZE = 100_000

_COPY_SQL = """
INSERT INTO {db}.metric_points_superseded (run_id, metric, attempt, step, value, time)
SELECT run_id, metric, attempt, step, value, time
FROM {db}.metric_points
WHERE run_id IN {{runs:Array(String)}}
  AND arrayExists((r, n, lo) -> run_id = r AND attempt < n AND step >= lo,
                  {{runs:Array(String)}}, {{attempts:Array(UInt32)}}, {{lows:Array(Int64)}})
"""  # noqa: S608 - the module's own text; the database name comes from the DSN check


class SupersededCopier:
    """Copies what a batch's later attempts supersede (see the module docstring); one per sink."""

    def __init__(self, client: Any, database: str, *, cache_size: int = CACHE_SIZE) -> None:
        self.client = client
        self.database = database
        self.cache_size = cache_size
        #: (run_id, attempt) -> the lowest step from which earlier attempts' stored points were copied.
        self._copied: OrderedDict[tuple[str, int], int] = OrderedDict()
        #: Copy statements run and batch rows copied, for tests and figures.
        self.store_copies = 0
        self.batch_rows_copied = 0
        self._fault_after_copy = os.environ.get(FAULT_AFTER_COPY_ENV) or None

    def before_insert(self, points: pa.Table) -> None:
        """Copy aside what the batch's points of attempts > 1 supersede; a no-op for first attempts."""
        attempts = points.column("attempt")
        if points.num_rows == 0 or pc.max(attempts).as_py() <= 1:  # nearly every batch
            return
        later = points.filter(pc.greater(attempts, 1))
        runs = later.column("run_id").combine_chunks()
        if not pa.types.is_dictionary(runs.type):
            runs = runs.dictionary_encode()
        # Grouped on the run ids' dictionary codes (integers): 5x faster than on the strings.
        lowest = pa.table({"run": runs.indices, "attempt": later.column("attempt"), "step": later.column("step")}
                          ).group_by(["run", "attempt"]).aggregate([("step", "min")])
        names = runs.dictionary.to_pylist()
        plan: dict[str, list[tuple[int, int]]] = {}
        for code, attempt, low in zip(lowest.column("run").to_pylist(), lowest.column("attempt").to_pylist(),
                                      lowest.column("step_min").to_pylist(), strict=True):
            plan.setdefault(str(names[code]), []).append((int(attempt), int(low)))
        self._copy_stored(plan)
        self._copy_batch(points, plan)
        if self._fault_after_copy:
            _wait_to_be_killed(self._fault_after_copy)

    def _copy_stored(self, plan: dict[str, list[tuple[int, int]]]) -> None:
        """One INSERT ... SELECT for the (run, attempt, lowest step) not yet copied as low."""
        todo = [(run_id, attempt, low) for run_id, pairs in plan.items() for attempt, low in pairs
                if self._copied.get((run_id, attempt), low + 1) > low]
        if not todo:
            return
        runs, attempts, lows = (list(column) for column in zip(*todo, strict=True))
        self.client.command(_COPY_SQL.format(db=self.database),
                            parameters={"runs": runs, "attempts": attempts, "lows": lows})
        self.store_copies += 1
        for run_id, attempt, low in todo:
            self._copied[(run_id, attempt)] = low
            self._copied.move_to_end((run_id, attempt))
        while len(self._copied) > self.cache_size:
            self._copied.popitem(last=False)
        log.info("copied earlier attempts' points of %d runs aside before their later attempts' points", len(runs))

    def _copy_batch(self, points: pa.Table, plan: dict[str, list[tuple[int, int]]]) -> None:
        """The batch's own points that a later attempt in the same batch supersedes."""
        attempts = points.column("attempt").to_numpy()
        if attempts.min() >= max(attempt for pairs in plan.values() for attempt, _ in pairs):
            return  # one attempt per batch, the steady state of a resumed run: nothing of an earlier one here
        run_ids = points.column("run_id").cast(pa.string())
        steps = points.column("step").to_numpy()
        keep = np.zeros(points.num_rows, dtype=bool)
        for run_id, pairs in plan.items():
            of_run = pc.equal(run_ids, run_id).to_numpy(zero_copy_only=False)
            for attempt, low in pairs:
                keep |= of_run & (attempts < attempt) & (steps >= low)
        if not keep.any():
            return
        rows = points.filter(pa.array(keep))
        data = pa.table({
            "run_id": rows.column("run_id").cast(pa.string()), "metric": rows.column("metric").cast(pa.string()),
            "attempt": rows.column("attempt").cast(pa.uint32()), "step": rows.column("step"),
            "value": rows.column("value"), "time": rows.column("time"),
        })
        self.client.insert_arrow(f"{self.database}.{TABLE}", data)
        self.batch_rows_copied += data.num_rows


def _wait_to_be_killed(path: str) -> None:
    """The FAULT_AFTER_COPY_ENV hook: copied, points not inserted, waiting for SIGKILL."""
    Path(path).write_text(f"{os.getpid()}\n", encoding="utf-8")
    log.warning("fault injection: superseded points copied, points not inserted; waiting to be killed")
    while True:
        time.sleep(1)
