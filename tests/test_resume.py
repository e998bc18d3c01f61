"""Preemption-safe resume: attempts, the steps a later attempt logs again, and every attempt queryable.

A real training process logging through the real broker is killed -9 at step 700 after a checkpoint at
500, then restarted with `resume=RUN_ID` and logs 500-1000 again with other values: every view (the run
list and leaderboard over run_summary, metric_summary, metric_points FINAL, `runstream curve`) shows
attempt 2's values for 500-1000 and attempt 1's for 0-499, and `curve --attempts` still shows what the
crashed attempt logged past its checkpoint. The same through the spool (`runstream ingest`), with the
ingest killed -9 between the copy of the superseded points and the insert. Crafted events (chDB only)
cover a resume a month later, both attempts in one batch, a redelivered batch, the status and labels of
a resumed run; `resume="auto"` ids come from fake SLURM / torchelastic / Kubernetes environments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from consuming import run_until

import runstream
from runstream.analysis.curves import curve
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.batch import Batch, InvalidEvent
from runstream.consumer.superseded import FAULT_AFTER_COPY_ENV
from runstream.producer.ids import uuid7
from runstream.producer.resume import UnknownRunError
from runstream.schemas.spool import read_spool_file, spool_files

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
PROJECT = "resume"
SECOND_US = 1_000_000
DAY_US = 86_400 * SECOND_US
JAN = 1_705_000_000 * SECOND_US  # 2024-01-11
FEB = JAN + 30 * DAY_US  # 2024-02-10: another month partition of metric_points
METRICS = ("loss", "acc")


def first_value(metric: str, step: int) -> float:
    """Attempt 1's values: loss falls, acc rises."""
    return 1.0 / (1 + step) if metric == "loss" else step / 2000


def second_value(metric: str, step: int) -> float:
    """Attempt 2's values of the same steps, all different from attempt 1's."""
    return 3.0 + step / 1000 if metric == "loss" else 0.9 - step / 10_000


def shown(metric: str, step: int, checkpoint: int = 500) -> float:
    return first_value(metric, step) if step < checkpoint else second_value(metric, step)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --- crafted events, chDB only ---------------------------------------------------------------------


def started_record(template: dict[str, Any], run_id: str, time_us: int, *, attempt: int, resumed: bool,
                   **fields: Any) -> dict[str, Any]:
    return {**template, "event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": time_us,
            "project": PROJECT, "attempt": attempt, "resumed": resumed, "params": [], **fields}


def steps_record(run_id: str, attempt: int, steps: range, value: Callable[[str, int], float],
                 time_us: int) -> dict[str, Any]:
    points = [(metric, step) for step in steps for metric in METRICS]
    return {"event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": time_us, "attempt": attempt,
            "metric_names": list(METRICS), "metric_index": [METRICS.index(m) for m, _ in points],
            "steps": [s for _, s in points], "values": [value(m, s) for m, s in points],
            "times_us": [time_us + s * 1000 for _, s in points]}


def finished_record(run_id: str, attempt: int, status: str, time_us: int) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": time_us, "status": status,
            "exit_code": None, "error": None, "summary": {}, "attempt": attempt}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run_started record as the SDK writes it (read back from its spool file)."""
    spool = tmp_path_factory.mktemp("template")
    runstream.init(PROJECT, "template", spool=str(spool), sample_interval=0).finish()
    (path,) = [p for p in spool_files(spool) if p.name.startswith("run_started")]
    return next(record for _type, record in read_spool_file(path))


def write(sink: ClickHouseSink, *events: tuple[str, dict[str, Any]]) -> None:
    batch = Batch(fork_check=sink.fork_checks, resume_check=sink.resume_checks)
    for event_type, record in events:
        batch.add(event_type, record, now_us=FEB + 400 * DAY_US)
    sink.write(batch)


def rows(client: Any, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in client.query(sql, parameters=parameters).result_rows]


def check_views(client: Any, db: str, run_id: str, *, checkpoint: int, crashed_at: int, last: int) -> None:
    """Every view shows attempt 2 from the checkpoint on and attempt 1 before it; the crashed attempt's
    steps past the checkpoint are in `curve --attempts`; counts exact with FINAL."""
    for metric in METRICS:
        kept = rows(client, f"SELECT step, value, attempt FROM {db}.metric_points FINAL "
                            "WHERE run_id = {r:String} AND metric = {m:String} ORDER BY step", r=run_id, m=metric)
        assert [(s, v, a) for s, v, a in kept] == [
            (s, shown(metric, s, checkpoint), 1 if s < checkpoint else 2) for s in range(last + 1)]
        superseded = rows(client, f"SELECT step, value FROM {db}.metric_points_superseded FINAL "
                                  "WHERE run_id = {r:String} AND metric = {m:String} AND attempt = 1 ORDER BY step",
                          r=run_id, m=metric)
        assert superseded == [(s, first_value(metric, s)) for s in range(checkpoint, crashed_at + 1)]
    summary = rows(client, f"SELECT final, last_step, points, min_value, max_value, status, attempt "
                           f"FROM {db}.run_summary FINAL WHERE run_id = {{r:String}}", r=run_id)
    (final, last_step, points, min_value, max_value, status, attempt), = summary
    for metric in METRICS:
        values = [shown(metric, s, checkpoint) for s in range(last + 1)]
        assert final[metric] == values[-1] and last_step[metric] == last and points[metric] == last + 1
        assert min_value[metric] == min(values) and max_value[metric] == max(values)
    assert (status, attempt) == ("ok", 2)
    view = rows(client, f"SELECT metric, points, last_value FROM {db}.metric_summary WHERE run_id = {{r:String}} "
                        "ORDER BY metric", r=run_id)
    assert view == [(m, last + 1, shown(m, last, checkpoint)) for m in sorted(METRICS)]
    plain = curve(client, db, run_id, metrics=["loss"])
    assert [(r[1], r[2], r[3]) for r in plain.rows] == [(s, shown("loss", s, checkpoint), run_id)
                                                         for s in range(last + 1)]
    every = curve(client, db, run_id, metrics=["loss"], attempts=True)
    assert every.columns == ["metric", "step", "attempt", "value", "shown_attempt"]
    expected = sorted([(s, 1, first_value("loss", s), 1 if s < checkpoint else 2)
                       for s in range(crashed_at + 1)]
                      + [(s, 2, second_value("loss", s), 2) for s in range(checkpoint, last + 1)])
    assert [tuple(r[1:]) for r in every.rows] == expected


@pytest.mark.parametrize("case", ["same_month", "next_month", "one_batch", "redelivered"])
def test_a_later_attempt_wins_everywhere_and_the_earlier_stays_queryable(
    clickhouse_dsn: str, template: dict[str, Any], case: str,
) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    run_id = uuid7()
    t1 = JAN
    t2 = FEB if case == "next_month" else JAN + 3600 * SECOND_US
    first = [("run_started", started_record(template, run_id, t1, attempt=1, resumed=False, run_name="alpha",
                                            run_group="seeds", sweep="lr", tags={"team": "a", "kind": "x"})),
             ("metric_steps", steps_record(run_id, 1, range(0, 500), first_value, t1)),
             ("metric_steps", steps_record(run_id, 1, range(500, 701), first_value, t1 + 500 * 1000)),
             ("run_finished", finished_record(run_id, 1, "killed", t1 + 800 * 1000))]
    # The resume repeats neither the name nor the labels; it adds a tag and overrides one.
    second = [("run_started", started_record(template, run_id, t2, attempt=2, resumed=True, run_name="",
                                             run_group=None, sweep=None, tags={"kind": "y", "resumed": "yes"})),
              ("metric_steps", steps_record(run_id, 2, range(500, 1001), second_value, t2))]
    if case == "one_batch":
        write(sink, *first, *second[:1], ("run_finished", finished_record(run_id, 2, "ok", t2 + DAY_US // 2)),
              *second[1:])
    else:
        write(sink, *first)
        write(sink, *second[:1])
        status = rows(client, f"SELECT status, attempt FROM {db}.run_summary FINAL WHERE run_id = {{r:String}}",
                      r=run_id)
        assert status == [("running", 2)], "attempt 1 finished (killed) and attempt 2 started after it"
        write(sink, *second[1:])
        if case == "redelivered":
            write(sink, *second[1:])
        write(sink, ("run_finished", finished_record(run_id, 2, "ok", t2 + DAY_US // 2)))
    check_views(client, db, run_id, checkpoint=500, crashed_at=700, last=1000)
    name, group, sweep, tags, status = rows(
        client, f"SELECT run_name, run_group, sweep, tags, status FROM {db}.run_summary FINAL "
                "WHERE run_id = {r:String}", r=run_id)[0]
    assert (name, group, sweep, status) == ("alpha", "seeds", "lr", "ok")
    assert tags == {"team": "a", "kind": "y", "resumed": "yes"}
    assert rows(client, f"SELECT run_name, run_group FROM {db}.runs FINAL WHERE run_id = {{r:String}}",
                r=run_id) == [("alpha", "seeds")]
    assert rows(client, f"SELECT attempt FROM {db}.run_attempts FINAL WHERE run_id = {{r:String}} ORDER BY attempt",
                r=run_id) == [(1,), (2,)]
    # Without FINAL: the superseded rows of a redelivered batch collapse with their twins at the next merge;
    # metric_points keeps two rows per re-logged step only across month partitions (FINAL merges those).
    client.command(f"OPTIMIZE TABLE {db}.metric_points FINAL")
    client.command(f"OPTIMIZE TABLE {db}.metric_points_superseded FINAL")
    raw = rows(client, f"SELECT count() FROM {db}.metric_points WHERE run_id = {{r:String}}", r=run_id)[0][0]
    assert raw == len(METRICS) * (1001 + (201 if case == "next_month" else 0))
    assert rows(client, f"SELECT count() FROM {db}.metric_points_superseded WHERE run_id = {{r:String}}",
                r=run_id)[0][0] == len(METRICS) * 201
    if case == "redelivered":
        assert sink.superseded.store_copies == 1, "the per-process cache skips the copy for the redelivery"
    if case == "same_month":  # the Client's curve and the group's: the same answers
        with runstream.Client(clickhouse_dsn) as rs:
            every = rs.curve(run_id, ["loss"], attempts=True, output="arrow")
            assert every.num_rows == 1001 + 201
            assert every.column_names == ["metric", "step", "attempt", "value", "shown_attempt"]
            assert sum(every.column("attempt").to_pylist()) == 701 + 2 * 501
            group = rs.curve(group="seeds", metrics=["acc"], output="arrow")
            assert group.column("mean").to_pylist() == [shown("acc", s) for s in range(1001)]
            assert set(group.column("count").to_pylist()) == {1}
        with pytest.raises(ValueError, match="give a run or a group, not both"):
            curve(client, db, run_id, group="seeds")
        with pytest.raises(ValueError, match="name a run"):
            curve(client, db)
        with pytest.raises(ValueError, match="run 'nope': no run has this id or name"):
            curve(client, db, "nope", attempts=True)


def test_a_resume_of_an_unknown_run_is_refused_by_the_consumer_and_nothing_is_written(
    clickhouse_dsn: str, template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    ghost, known = uuid7(), uuid7()
    batch = Batch(resume_check=sink.resume_checks)
    with pytest.raises(InvalidEvent) as refused:
        batch.add("run_started", started_record(template, ghost, JAN, attempt=2, resumed=True))
    assert refused.value.reason == "unknown_resumed_run" and ghost in str(refused.value)
    assert (batch.rows("runs"), batch.rows("run_attempts"), batch.events) == (0, 0, 0)
    # Known from earlier in the same batch: accepted; then into another project: refused.
    batch.add("run_started", started_record(template, known, JAN, attempt=1, resumed=False))
    batch.add("run_started", started_record(template, known, JAN + 1, attempt=2, resumed=True))
    with pytest.raises(InvalidEvent) as refused:
        batch.add("run_started", {**started_record(template, known, JAN + 2, attempt=3, resumed=True),
                                  "project": "elsewhere"})
    assert refused.value.reason == "resumed_in_other_project"
    sink.write(batch)
    # Through the spool: `runstream ingest` reports the refused start, stores nothing of it.
    spool = tmp_path / "spool"
    monkeypatch.delenv("RUNSTREAM_CLICKHOUSE", raising=False)
    ghost_run = runstream.init(PROJECT, "ghost", resume=uuid7(), spool=str(spool / "a"), sample_interval=0)
    ghost_run.log({"loss": 1.0}, step=0)
    ghost_run.finish()
    # A spool folder that saw the run's first attempt lets the SDK through; this one never did, and no
    # ClickHouse was named: the SDK accepted it, the consumer refuses it.
    report = ingest_spool(spool / "a", sink)
    assert len(report.rejected) == 1
    assert ghost_run.run_id in report.rejected[0] and "is not stored" in report.rejected[0]
    for table in ("runs", "run_attempts", "run_summary"):
        assert rows(client, f"SELECT count() FROM {db}.{table} WHERE run_id = {{r:String}}",
                    r=ghost_run.run_id) == [(0,)], table
    assert rows(client, f"SELECT count() FROM {db}.runs FINAL WHERE run_id = {{r:String}}", r=known) == [(1,)]


def test_the_sdk_refuses_what_it_can_know(clickhouse_dsn: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "spool"
    with pytest.raises(ValueError, match="resume: run id 'run-42': expected a UUID"):
        runstream.init(PROJECT, resume="run-42", spool=str(spool), sample_interval=0)
    with pytest.raises(TypeError, match="resume: expected a run id"):
        runstream.init(PROJECT, resume=42, spool=str(spool), sample_interval=0)  # type: ignore[arg-type]
    ClickHouseSink(clickhouse_dsn)  # the database, migrated
    monkeypatch.setenv("RUNSTREAM_CLICKHOUSE", clickhouse_dsn)
    unknown = uuid7()
    with pytest.raises(UnknownRunError, match=f"resume: run {unknown} is not in the spool folder"):
        runstream.init(PROJECT, resume=unknown, spool=str(spool), sample_interval=0)
    assert not spool.exists() or not any(spool.rglob(f"*{unknown}*")), "nothing written for a refused resume"
    # The spool saw it (its first attempt ran here): no need to ask the store.
    first = runstream.init(PROJECT, "local", spool=str(spool), sample_interval=0)
    first.finish("killed")
    again = runstream.init(PROJECT, resume=first.run_id, spool=str(spool), sample_interval=0)
    assert (again.attempt, again.resumed, again.name) == (2, True, "")
    again.finish()


# --- resume="auto" under fake schedulers -----------------------------------------------------------

_AUTO = """
import json, logging, sys, runstream
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
run = runstream.init("resume", resume="auto", spool=sys.argv[1], sample_interval=0)
run.finish("killed")
print(json.dumps({"run_id": run.run_id, "attempt": run.attempt, "name": run.name, "resumed": run.resumed}))
"""

_SCHEDULER_VARIABLES = ("SLURM_", "TORCHELASTIC_", "KUBERNETES_", "JOB_", "POD_", "RUNSTREAM_")


def auto(spool: Path, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_SCHEDULER_VARIABLES)}
    done = subprocess.run([sys.executable, "-c", _AUTO, str(spool)], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    result["log"] = done.stderr
    return result


def test_resume_auto_takes_the_run_id_from_the_scheduler(tmp_path: Path) -> None:
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "alps"}
    first = auto(tmp_path / "a", **slurm, SLURM_RESTART_COUNT="0")
    requeued = auto(tmp_path / "b", **slurm, SLURM_RESTART_COUNT="1")  # another node: another spool
    assert (first["run_id"], first["attempt"]) == (requeued["run_id"], 1) and requeued["attempt"] == 2
    assert first["name"] == requeued["name"] != "" and not requeued["resumed"]
    assert str(uuid.uuid5(uuid.UUID("6f1c9d1e-8a57-4c8e-9b0e-3b7d2f3c1a90"), "resume:slurm:alps:4242")) \
        == first["run_id"]
    other_cluster = auto(tmp_path / "c", SLURM_JOB_ID="4242", SLURM_CLUSTER_NAME="daint")
    array = {"SLURM_JOB_ID": "5001", "SLURM_ARRAY_JOB_ID": "5000", "SLURM_ARRAY_TASK_ID": "3"}
    task = auto(tmp_path / "d", **array)
    task_again = auto(tmp_path / "d", **{**array, "SLURM_JOB_ID": "5001"}, SLURM_RESTART_COUNT="2")
    other_task = auto(tmp_path / "d", **{**array, "SLURM_ARRAY_TASK_ID": "4", "SLURM_JOB_ID": "5002"})
    assert task["run_id"] == task_again["run_id"] and task_again["attempt"] == 3
    assert len({first["run_id"], other_cluster["run_id"], task["run_id"], other_task["run_id"]}) == 4

    elastic = auto(tmp_path / "e", TORCHELASTIC_RUN_ID="rdzv-7", TORCHELASTIC_RESTART_COUNT="0")
    restarted = auto(tmp_path / "e", TORCHELASTIC_RUN_ID="rdzv-7", TORCHELASTIC_RESTART_COUNT="2")
    assert elastic["run_id"] == restarted["run_id"] and (elastic["attempt"], restarted["attempt"]) == (1, 3)

    # A Kubernetes Indexed Job: the replacement pod has another random suffix; the spool (a volume) counts.
    k8s = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAMESPACE": "ml", "JOB_COMPLETION_INDEX": "7"}
    pod = auto(tmp_path / "k", **k8s, POD_NAME="train-llm-7-x2k9q")
    replacement = auto(tmp_path / "k", **k8s, POD_NAME="train-llm-7-b81zz")
    by_job_name = auto(tmp_path / "k", **k8s, POD_NAME="whatever", JOB_NAME="train-llm")
    other_index = auto(tmp_path / "k", **{**k8s, "JOB_COMPLETION_INDEX": "6"}, POD_NAME="train-llm-6-aaaaa")
    assert pod["run_id"] == replacement["run_id"] == by_job_name["run_id"] != other_index["run_id"]
    assert (pod["attempt"], replacement["attempt"], by_job_name["attempt"]) == (1, 2, 3)

    # No scheduler: a new run each time, attempt 1, and the log says why.
    alone, alone_again = auto(tmp_path / "n"), auto(tmp_path / "n")
    assert alone["run_id"] != alone_again["run_id"] and alone["attempt"] == alone_again["attempt"] == 1
    assert "found no scheduler identity" in alone["log"]
    bare_pod = auto(tmp_path / "p", KUBERNETES_SERVICE_HOST="10.0.0.1", POD_NAME="notebook")
    assert bare_pod["attempt"] == 1 and "found no scheduler identity" in bare_pod["log"]


# --- a real training process killed -9, resumed -----------------------------------------------------

_TRAIN = """
import json, sys, time, runstream
sys.path.insert(0, sys.argv[2])
from test_resume import first_value, second_value
config = json.loads(sys.argv[1])
sink = {"kafka": config.get("kafka"), "topic_prefix": config.get("prefix"), "spool": config["spool"]}
if config.get("resume") is None:  # attempt 1: a checkpoint at 500, killed -9 at 700
    run = runstream.init("resume", "trainer", group="seeds", tags={"team": "vision"}, sample_interval=0, **sink)
    print(run.run_id, flush=True)
    for step in range(0, 701):
        run.log({m: first_value(m, step) for m in ("loss", "acc")}, step=step)
        if step == 499:
            run.flush()  # the checkpoint: training state saved after step 499
    run.flush()
    print("at 700", flush=True)
    time.sleep(600)  # killed here
else:  # attempt 2: from the checkpoint, steps 500-1000 with other values
    run = runstream.init("resume", resume=config["resume"], sample_interval=0, **sink)
    print(run.run_id, run.attempt, flush=True)
    for step in range(500, 1001):
        run.log({m: second_value(m, step) for m in ("loss", "acc")}, step=step)
    run.finish()
"""


def train_and_crash(config: dict[str, Any]) -> str:
    """Attempt 1 in a process of its own, killed -9 once it logged (and flushed) step 700; its run id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCHEDULER_VARIABLES)}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_TRAIN), json.dumps(config),
                                str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        run_id = process.stdout.readline().strip()
        assert process.stdout.readline().strip() == "at 700", "the training process died before step 700"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return run_id


def train_resumed(config: dict[str, Any], run_id: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCHEDULER_VARIABLES)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_TRAIN), json.dumps({**config, "resume": run_id}),
                           str(Path(__file__).parent)], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [run_id, "2"]


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    from runstream.cli import main

    capsys.readouterr()
    assert main([*argv, "--format", "json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def check_cli(capsys: pytest.CaptureFixture[str], dsn: str, run_id: str) -> None:
    """`runstream runs`, `best` and `curve --attempts` answer with attempt 2 from step 500 on."""
    (listed,) = cli_json(capsys, "runs", "--project", PROJECT, "--clickhouse", dsn)
    assert (listed["run_id"], listed["name"], listed["status"]) == (run_id, "trainer", "ok")
    assert listed["metrics.loss"] == second_value("loss", 1000)
    best = cli_json(capsys, "best", "--project", PROJECT, "--metric", "loss", "--clickhouse", dsn)
    assert [(row["run_id"], row["loss min"], row["at step"], row["loss final"]) for row in best] == [
        (run_id, first_value("loss", 499), 499, second_value("loss", 1000))]
    every = cli_json(capsys, "curve", run_id, "--attempts", "--metric", "acc", "--clickhouse", dsn)
    assert len(every) == 1001 + 201
    crashed = [row for row in every if row["attempt"] == 1 and row["step"] >= 500]
    assert [(r["step"], r["value"], r["shown_attempt"]) for r in crashed] == [
        (s, first_value("acc", s), 2) for s in range(500, 701)]


def test_a_training_process_killed_at_700_and_resumed_from_500_through_kafka(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from runstream.consumer import ConsumerService, ConsumerSettings

    config = {"kafka": kafka_bootstrap, "prefix": topic_prefix, "spool": str(tmp_path / "spool")}
    settings = ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn, topic_prefix=topic_prefix,
                                batch_max_wait_s=0.2, group_id=f"g-{topic_prefix}")
    service = ConsumerService(settings)
    client, db = service.sink.client, service.sink.database

    def stored(run_id: str, points: int) -> Callable[[Any], bool]:
        def done(_stats: Any) -> bool:
            return bool(rows(client, f"SELECT count() = {points} FROM {db}.metric_points FINAL "  # noqa: S608
                                     "WHERE run_id = {r:String}", r=run_id)[0][0])
        return done

    def consume(service: ConsumerService, until: Callable[[Any], bool]) -> None:
        run_until(service, until)
        assert until(None), "timed out consuming"

    run_id = train_and_crash(config)
    consume(service, stored(run_id, 2 * 701))  # the store has attempt 1 when attempt 2's points arrive
    service = ConsumerService(settings)  # a consumer restarted: its sink has not copied anything yet
    train_resumed(config, run_id)
    # A resume of a run nobody ever started: the SDK cannot know (no spool, no ClickHouse named)...
    ghost = runstream.init(PROJECT, resume=uuid7(), kafka=kafka_bootstrap, topic_prefix=topic_prefix,
                           spool=str(tmp_path / "other"), sample_interval=0)
    ghost.finish()
    consume(service, lambda stats: stored(run_id, 2 * 1001)(stats) and bool(rows(
        client, f"SELECT count() FROM {db}.run_summary FINAL WHERE run_id = {{r:String}} AND status = 'ok'",
        r=run_id)[0][0]) and service.dead_letters.counts["unknown_resumed_run"] == 1)
    # ... the consumer dead-letters its start, and nothing of it is written.
    assert rows(client, f"SELECT count() FROM {db}.runs WHERE run_id = {{r:String}}", r=ghost.run_id) == [(0,)]
    assert service.sink.superseded.store_copies >= 1
    check_views(client, db, run_id, checkpoint=500, crashed_at=700, last=1000)
    check_cli(capsys, clickhouse_dsn, run_id)
    (group, tags), = rows(client, f"SELECT run_group, tags FROM {db}.run_summary FINAL WHERE run_id = {{r:String}}",
                          r=run_id)
    assert (group, tags) == ("seeds", {"team": "vision"}), "what the resume did not repeat is kept"


_INGEST = """
import sys
from pathlib import Path
from runstream.consumer import ClickHouseSink, ingest_spool
ingest_spool(Path(sys.argv[1]), ClickHouseSink(sys.argv[2]), batch_max_points=int(sys.argv[3]))
"""


@pytest.mark.parametrize("batch_points", [None, 1])
def test_the_same_through_the_spool_with_the_ingest_killed_between_copy_and_insert(
    tmp_path: Path, batch_points: int | None,
) -> None:
    """`runstream ingest` (None): both attempts land in one batch, and the superseded points are copied
    from the batch itself. A batch per event (batch_max_points=1): attempt 1's points are stored first
    and copied from the store. The first ingest is killed -9 after the copy, before the points' insert;
    the second stores everything exactly. The ingests run in processes of their own (chDB: one folder
    per process)."""
    config = {"spool": str(tmp_path / "spool")}
    run_id = train_and_crash(config)
    train_resumed(config, run_id)
    dsn = f"chdb://{tmp_path / 'ch'}"
    marker = tmp_path / "copied"
    command = [sys.executable, "-m", "runstream.cli", "ingest", str(tmp_path / "spool"), "--clickhouse", dsn]
    if batch_points is not None:
        command = [sys.executable, "-c", _INGEST, str(tmp_path / "spool"), dsn, str(batch_points)]
    crashing = subprocess.Popen(command, env={**os.environ, FAULT_AFTER_COPY_ENV: str(marker)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: marker.exists() or crashing.poll() is not None, 120, "the copy of the superseded points")
        assert marker.exists(), crashing.communicate()[1][-3000:]
        os.kill(crashing.pid, signal.SIGKILL)
        crashing.communicate(timeout=30)
    finally:
        if crashing.poll() is None:
            crashing.kill()
            crashing.communicate(timeout=30)
    assert crashing.returncode == -signal.SIGKILL
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    check = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[3])
        from runstream.consumer.dsn import connect
        from test_resume import check_views
        client, db = connect(sys.argv[1])
        check_views(client, db, sys.argv[2], checkpoint=500, crashed_at=700, last=1000)
        for table in ("metric_points", "metric_points_superseded"):
            final = client.query(f"SELECT count() FROM {db}.{table} FINAL").result_rows[0][0]
            client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
            print(table, final, client.query(f"SELECT count() FROM {db}.{table}").result_rows[0][0])
    """)
    verified = subprocess.run([sys.executable, "-c", check, dsn, run_id, str(Path(__file__).parent)],
                              capture_output=True, text=True, timeout=180, check=False)
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert verified.stdout.split("\n")[:2] == ["metric_points 2002 2002", "metric_points_superseded 402 402"]


def test_runstream_run_takes_resume_too(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCHEDULER_VARIABLES)}
    env.update(SLURM_JOB_ID="77", SLURM_CLUSTER_NAME="c1", SLURM_RESTART_COUNT="1")
    base = [sys.executable, "-m", "runstream.cli", "run", "--project", PROJECT, "--sample-interval", "0"]
    child = [sys.executable, "-c", "print('step=3 loss=0.5')"]
    spool = tmp_path / "spool"
    done = subprocess.run([*base, "--spool", str(spool), "--resume", "auto", "--metric-pattern",
                           r"step=(?P<step>\d+) loss=(?P<loss>\S+)", "--", *child],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    (path,) = [p for p in spool_files(spool) if p.name.startswith("run_started")]
    (start,) = [record for _type, record in read_spool_file(path)]
    expected = str(uuid.uuid5(uuid.UUID("6f1c9d1e-8a57-4c8e-9b0e-3b7d2f3c1a90"), "resume:slurm:c1:77"))
    assert (start["run_id"], start["attempt"], start["resumed"]) == (expected, 2, False)
    assert start["scheduler"]["slurm_restart_count"] == "1"
    refused = subprocess.run([*base, "--spool", str(tmp_path / "other"), "--resume", "run-7", "--", *child],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "resume: run id 'run-7': expected a UUID" in refused.stderr
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").rglob("*.avro*"))
