"""The consumer's check of a resumed run's start: the run exists, and what the resume left out is kept.

`init(resume=RUN_ID)` continues an earlier run; the SDK refuses an unknown id only where it can see it
(its spool folder, or a ClickHouse named by RUNSTREAM_CLICKHOUSE). The consumer checks the rest before
the run_started event joins a batch (`Batch(resume_check=...)`):

- `unknown_resumed_run`: a start with resumed=true whose run has no start stored and none earlier in
  the same batch is refused with InvalidEvent naming the run id; the consumer dead-letters it (its bytes
  and the reason) and nothing of it is written; `runstream ingest` reports it as rejected.
- `resumed_in_other_project`: a resume naming another project than the run's would split the run in
  two rows of every per-project table; refused the same way.

A later attempt's start (resumed, or attempt > 1: `resume="auto"` under a scheduler) becomes the run's
row of `runs` (ReplacingMergeTree by start time). What it does not repeat is taken from the earlier
start, so that every reader of `runs` and `run_summary` keeps it: the run name (a resume without a name
sends ""), the group, job type and sweep, the fork's parent and step (a fork's resume is still a fork),
and the tags (the earlier ones, overridden key by key by the resume's). Runs found are remembered with
what they carry, so a long-resumed fleet costs one lookup per run and process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from runstream.consumer.batch import Batch, InvalidEvent

#: Runs remembered (with their inherited fields) before the oldest are forgotten.
KNOWN_RUNS_MAX = 100_000

#: Fields of run_started a later attempt inherits when it leaves them empty, by their `runs` column.
INHERITED = {"run_name": "run_name", "run_group": "run_group", "job_type": "job_type", "sweep": "sweep",
             "fork_from": "fork_from", "fork_step": "fork_step"}


def _empty(value: Any) -> bool:
    return value is None or value == ""


class ResumedRuns:
    """Called by `Batch` for every run_started; checks and completes the starts of later attempts."""

    def __init__(self, client: Any, database: str, *, known_max: int = KNOWN_RUNS_MAX) -> None:
        self.client = client
        self.database = database
        self.known_max = known_max
        #: run_id -> the run's project, tags and INHERITED fields as last seen.
        self._known: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __call__(self, batch: Batch, record: dict[str, Any]) -> None:
        """Raise InvalidEvent for a resume of an unknown run (or into another project); fill in what a
        later attempt's start left out from the earlier start; remember the run."""
        run_id = record["run_id"]
        later = bool(record.get("resumed")) or int(record.get("attempt", 1) or 1) > 1
        earlier = self._earlier(batch, run_id) if later else None
        if earlier is None and record.get("resumed"):
            raise InvalidEvent(
                "unknown_resumed_run",
                f"run_started event {record.get('event_id')!r}: resumed run {run_id} is not stored and did not "
                "start earlier in this batch (a mistyped resume id, or a run whose start was lost)")
        if earlier is not None:
            if earlier["project"] != record["project"]:
                raise InvalidEvent(
                    "resumed_in_other_project",
                    f"run_started event {record.get('event_id')!r}: run {run_id} of project {earlier['project']!r} "
                    f"resumed in project {record['project']!r}")
            for field in INHERITED:
                if _empty(record.get(field)) and not _empty(earlier.get(field)):
                    record[field] = earlier[field]
            record["tags"] = {**(earlier.get("tags") or {}), **(record.get("tags") or {})}
        self._remember(run_id, {"project": record["project"], "tags": dict(record.get("tags") or {}),
                                **{field: record.get(field) for field in INHERITED}})

    def _remember(self, run_id: str, fields: dict[str, Any]) -> None:
        self._known[run_id] = fields
        self._known.move_to_end(run_id)
        while len(self._known) > self.known_max:
            self._known.popitem(last=False)

    def _earlier(self, batch: Batch, run_id: str) -> dict[str, Any] | None:
        """The run's latest start: earlier in this batch, else remembered, else stored; None if none."""
        runs = batch.columns["runs"]
        ids = runs["run_id"]
        for row in range(len(ids) - 1, -1, -1):
            if ids[row] == run_id:
                return {name: runs[name][row] for name in ("project", "tags", *INHERITED.values())}
        if run_id in self._known:
            return self._known[run_id]
        rows = self.client.query(
            f"SELECT project, tags, {', '.join(INHERITED.values())} FROM {self.database}.runs FINAL "  # noqa: S608
            "WHERE run_id = {run:String}", parameters={"run": run_id}).result_rows
        if not rows:
            return None
        return dict(zip(("project", "tags", *INHERITED.values()), rows[0], strict=True))
