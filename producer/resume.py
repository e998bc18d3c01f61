"""What `init(resume=...)` continues: the run id, whether it is a resume, and this process's attempt.

- `resume=RUN_ID`: that run (a UUID; anything else raises naming it). The SDK cannot see the store, so it
  refuses an unknown id only where it can know: the run is fine when this host's spool folder has seen it
  (its attempt counter or its spool files); else, when RUNSTREAM_CLICKHOUSE names a ClickHouse and the
  server extra is installed, the run must have a row in `runs` there (a ClickHouse that cannot be reached
  is logged and the resume accepted: a training job never stops for the store); otherwise it is accepted
  and the consumer decides (a resume of a run it has never seen is dead-lettered, `unknown_resumed_run`).
- `resume="auto"`: the run id comes from the scheduler's identity of the job (producer/ids.py
  `scheduler_identity`: SLURM job, torchelastic run, Kubernetes Job), so a requeued or restarted job
  continues the same run, and the attempt from the scheduler's restart counter (or the spool's). With no
  scheduler identity it starts a new run, attempt 1, and says why at INFO: a script that opts in runs
  unchanged on a laptop. Its start is not marked `resumed` (the first attempt the store sees may be any):
  later attempts are told apart by their attempt number.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runstream.producer.attempts import resolve_attempt, spool_knows_run
from runstream.producer.ids import AUTO, resolve_run_id, scheduler_identity

log = logging.getLogger(__name__)

CLICKHOUSE_ENV = "RUNSTREAM_CLICKHOUSE"


class UnknownRunError(ValueError):
    """`resume=RUN_ID` names a run the store does not have."""


def resolve_resume(resume: str | None, world_size: int | None, spool: str | Path) -> tuple[str, bool, int]:
    """(run id, resumed, attempt) of a run starting with `init(resume=resume)`."""
    auto = resume == AUTO
    run_id = resolve_run_id(resume, world_size)
    if auto:
        if scheduler_identity() is None:
            log.info("runstream: resume='auto' found no scheduler identity of this job (SLURM_JOB_ID, "
                     "TORCHELASTIC_RUN_ID, a Kubernetes Job's pod): starting a new run %s", run_id)
            return run_id, False, resolve_attempt(run_id, resumed=False, spool=spool)
        attempt = resolve_attempt(run_id, resumed=False, spool=spool, auto=True)
        log.info("runstream: resume='auto': run %s, attempt %d", run_id, attempt)
        return run_id, False, attempt
    resumed = resume is not None
    if resumed:
        check_resumable(run_id, spool)
    return run_id, resumed, resolve_attempt(run_id, resumed=resumed, spool=spool)


def check_resumable(run_id: str, spool: str | Path, environ: dict[str, str] | None = None) -> None:
    """Raise UnknownRunError when a store the SDK can see says the run does not exist (see the module)."""
    if spool_knows_run(run_id, spool):
        return
    dsn = (environ if environ is not None else os.environ).get(CLICKHOUSE_ENV)
    if not dsn:
        log.debug("runstream: resume of run %s: not in the spool, no ClickHouse to ask; the consumer decides", run_id)
        return
    try:
        from runstream.consumer.clickhouse_settings import ClickHouseSettings

        settings = ClickHouseSettings.load({"dsn": dsn})
        client, database = settings.connect()
    except ImportError:
        log.debug("runstream: resume of run %s: the server extra is not installed; the consumer decides", run_id)
        return
    except Exception as error:
        log.warning("runstream: resume of run %s: cannot ask ClickHouse (%s); resuming without the check",
                    run_id, error)
        return
    try:
        stored = client.query(f"SELECT count() FROM {database}.runs WHERE run_id = {{run:String}}",  # noqa: S608
                              parameters={"run": run_id}).result_rows[0][0]
    except Exception as error:
        log.warning("runstream: resume of run %s: cannot ask ClickHouse (%s); resuming without the check",
                    run_id, error)
        return
    finally:
        client.close()
    if not stored:
        raise UnknownRunError(f"resume: run {run_id} is not in the spool folder {str(spool)!r} nor stored in "
                              f"ClickHouse at {settings.redacted()}: check the run id (runstream runs lists them)")
