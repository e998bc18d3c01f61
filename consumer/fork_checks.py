"""The consumer's check of a fork's start: its parent exists and logged the fork step.

`init(fork_from=PARENT, fork_step=N)` cannot see the store, so the SDK checks only the shape of the
arguments (a UUID, a step >= 0, not the run itself). The consumer checks the rest before the
run_started event joins a batch: the parent must be a known run (a run_started row, or points) and
must have a point at exactly step N in some metric, since a fork's curve is the parent's up to N
(runstream.analysis.lineage). Otherwise the event is refused with InvalidEvent, naming the value:

- `unknown_fork_parent`: no run_started and no point of the parent is stored or in the batch;
- `fork_step_not_logged`: the parent has no point at the fork step (the message says which steps
  it did log);
- `fork_of_itself`: fork_from is the run's own id (only a forged event has it; the SDK refuses it).

The consumer dead-letters the refused event (its bytes and the reason), and nothing of it is written;
`runstream ingest` reports it as rejected. The parent is looked up in the store and in the batch the
event joins (what came before it in the same poll), so a fork whose parent's point is still on its
way (another partition, not consumed yet) is refused too: fork from a step that has been stored.
Forks are rare, so a lookup per forked start is cheap; parents found good are remembered.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from runstream.consumer.batch import Batch, InvalidEvent

#: How many (parent, step) pairs found good are remembered before the memory starts over.
KNOWN_PAIRS_MAX = 10_000


class ForkChecks:
    """Called by `Batch` for every run_started that names a fork (`Batch(fork_check=...)`)."""

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.database = database
        self._known: set[tuple[str, int]] = set()

    def __call__(self, batch: Batch, record: dict[str, Any]) -> None:
        """Raise InvalidEvent when the fork's parent is unknown or never logged the fork step."""
        run_id, parent, step = record.get("run_id"), record.get("fork_from"), record.get("fork_step")
        what = f"run_started event {record.get('event_id')!r} of run {run_id}"
        if parent is None or step is None:
            if parent is None and step is None:
                return
            raise InvalidEvent("bad_fork", f"{what}: fork_from and fork_step go together, got "
                                           f"fork_from={parent!r}, fork_step={step!r}")
        if parent == run_id:
            raise InvalidEvent("fork_of_itself", f"{what}: fork_from {parent!r} is the run itself")
        if (parent, step) in self._known:
            return
        if _batch_has_point(batch, parent, step) or self._stored_point(parent, step):
            if len(self._known) >= KNOWN_PAIRS_MAX:
                self._known.clear()
            self._known.add((parent, step))
            return
        started = parent in batch.columns["runs"]["run_id"] or self._stored_start(parent)
        logged = self._stored_steps(parent)
        in_batch = _batch_steps(batch, parent)
        if in_batch is not None:
            logged = in_batch if logged is None else (min(logged[0], in_batch[0]), max(logged[1], in_batch[1]))
        if not started and logged is None:
            raise InvalidEvent("unknown_fork_parent", f"{what}: fork_from {parent!r} is not a known run "
                                                      "(no run_started and no point of it is stored)")
        steps = "it logged no points" if logged is None else f"it logged steps {logged[0]}..{logged[1]}"
        raise InvalidEvent("fork_step_not_logged", f"{what}: fork_step {step}: parent run {parent} never logged "
                                                   f"step {step} in any metric ({steps})")

    def _scalar(self, sql: str, parameters: dict[str, Any]) -> Any:
        rows = self.client.query(sql, parameters=parameters).result_rows
        return rows[0][0] if rows else None

    def _stored_point(self, parent: str, step: int) -> bool:
        sql = (f"SELECT count() FROM {self.database}.metric_points "  # noqa: S608
               "WHERE run_id = {run:String} AND step = {step:Int64}")
        return bool(self._scalar(sql, {"run": parent, "step": step}))

    def _stored_start(self, parent: str) -> bool:
        sql = f"SELECT count() FROM {self.database}.runs WHERE run_id = {{run:String}}"  # noqa: S608
        return bool(self._scalar(sql, {"run": parent}))

    def _stored_steps(self, parent: str) -> tuple[int, int] | None:
        """The lowest and highest step the parent logged (any metric), None when it logged none."""
        rows = self.client.query(
            f"SELECT count(), min(step), max(step) FROM {self.database}.metric_points "  # noqa: S608
            "WHERE run_id = {run:String}", parameters={"run": parent}).result_rows
        if not rows or not rows[0][0]:
            return None
        return int(rows[0][1]), int(rows[0][2])


def _parent_steps(batch: Batch, parent: str) -> pa.Array:
    """The steps of the parent's points already in the batch (not yet written)."""
    if not batch.points:
        return pa.array([], pa.int64())
    table = batch.metric_points_table()
    runs = table.column("run_id").cast(pa.string())
    return table.column("step").filter(pc.equal(runs, parent)).combine_chunks()


def _batch_has_point(batch: Batch, parent: str, step: int) -> bool:
    steps = _parent_steps(batch, parent)
    return len(steps) > 0 and bool(pc.any(pc.equal(steps, step)).as_py())


def _batch_steps(batch: Batch, parent: str) -> tuple[int, int] | None:
    steps = _parent_steps(batch, parent)
    if len(steps) == 0:
        return None
    bounds = pc.min_max(steps)
    return int(bounds["min"].as_py()), int(bounds["max"].as_py())
