"""Every rank of a distributed run: real rank processes (as torchrun starts them: RANK, WORLD_SIZE,
LOCAL_RANK and a shared RUNSTREAM_RUN_ID) log through the SDK with log_all_ranks, to the spool (ingested
into chDB by the consumer's sink) or to Kafka (consumed by the consumer service). Every answer (what each
rank stored, the per-step spread, each rank's median, the straggler, the exporter's ratio) is compared
with numpy over what each rank logged, never read back from the database.

The workload holds the awkward cases on purpose: rank 2 is the straggler by its logged step_time values
(2.5x, no sleeping), a NaN and a +Inf among the values, a step where no rank has a finite loss, steps one
rank skipped, a step logged twice (the later value wins), a call made with all_ranks=False (not stored).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from consuming import consume_until
from databases import fresh_database_dsn

import runstream
from runstream.analysis import ranks
from runstream.cli import main
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.dsn import connect
from runstream.monitoring import rank_skew
from runstream.monitoring.exporter import SnapshotCollector
from runstream.monitoring.settings import ExporterSettings

pytestmark = pytest.mark.integration
NAN, INF = float("nan"), float("inf")
WORLD = 4
STEPS = 40
SLOW_RANK = 2
PROJECT = "ddp"
HOST = socket.gethostname()

# One rank of a torchrun job: log_all_ranks comes from the environment (RUNSTREAM_LOG_ALL_RANKS=1). Values
# travel as repr() text so that NaN and ±Inf reach the child as they are. Prints what the SDK says of itself.
_RANK_PROCESS = """
import json, sys
import runstream
from runstream.producer.run import producer_stats
spec = json.loads(sys.argv[1])
run = runstream.init(spec["project"], spec["name"], spool=spec["spool"], sample_interval=0)
for step, metrics in spec["points"]:
    run.log({name: float(value) for name, value in metrics.items()}, step=step)
for step, metrics in spec["dropped"]:
    run.log({name: float(value) for name, value in metrics.items()}, step=step, all_ranks=False)
run.finish("ok")
print(json.dumps({"rank": run.rank, "node": run.node, "run_id": run.run_id, "lead": run.is_lead,
                  **producer_stats()}))
"""


@dataclass
class Rank:
    rank: int
    calls: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # logged, in order
    dropped: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # logged with all_ranks=False

    def stored(self, metric: str) -> dict[int, float]:
        """step -> value of `metric` as every view shows it: a step logged again keeps the later value."""
        values: dict[int, float] = {}
        for step, metrics in self.calls:
            if metric in metrics:
                values[step] = metrics[metric]
        return values

    def logged_points(self, metric: str) -> int:
        return sum(metric in metrics for _step, metrics in self.calls)


def workload(steps: int = STEPS) -> list[Rank]:
    out = []
    for rank in range(WORLD):
        rng = np.random.default_rng(100 + rank)
        spec = Rank(rank)
        for step in range(steps):
            metrics: dict[str, float] = {}
            if not (rank == 1 and 30 <= step < 35):  # rank 1 skips the step time of five steps
                base = 0.25 if rank == SLOW_RANK else 0.1
                metrics["step_time"] = float(base * rng.uniform(0.9, 1.1))
            metrics["loss"] = float(rng.normal(1.0 / (step + 1), 0.01))
            if step == 20:
                metrics["loss"] = NAN  # no rank has a finite loss at step 20
            spec.calls.append((step, metrics))
        if steps > 11:
            if rank == 1:
                spec.calls[7][1]["step_time"] = NAN
                spec.calls.append((5, {"loss": 0.123456789}))  # step 5 logged again: the later value wins
            if rank == 3:
                spec.calls[11][1]["loss"] = INF
                spec.dropped.append((3, {"debug": 1.0}))
        out.append(spec)
    return out


def _spec_json(spec: Rank, spool: Path, name: str) -> str:
    return json.dumps({"project": PROJECT, "name": name, "spool": str(spool),
                       "points": [[s, {k: repr(v) for k, v in m.items()}] for s, m in spec.calls],
                       "dropped": [[s, {k: repr(v) for k, v in m.items()}] for s, m in spec.dropped]})


def run_ranks(specs: list[Rank], spool: Path, run_id: str, name: str, extra_env: dict[str, str] | None = None,
              timeout: float = 120.0) -> list[dict[str, Any]]:
    """Start every rank as its own process, as torchrun would, and wait for all of them (bounded)."""
    children = []
    inherited = {k: v for k, v in os.environ.items() if k not in ("RUNSTREAM_KAFKA", "RUNSTREAM_TOPIC_PREFIX")}
    for spec in specs:
        env = {**inherited, "RANK": str(spec.rank), "LOCAL_RANK": str(spec.rank), "WORLD_SIZE": str(len(specs)),
               "RUNSTREAM_RUN_ID": run_id, "RUNSTREAM_LOG_ALL_RANKS": "1", "RUNSTREAM_HEARTBEAT_INTERVAL": "0",
               **(extra_env or {})}
        children.append(subprocess.Popen(  # noqa: S603 - this interpreter, our own script
            [sys.executable, "-c", textwrap.dedent(_RANK_PROCESS), _spec_json(spec, spool, name)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    reports = []
    deadline = time.monotonic() + timeout
    try:
        for child in children:
            out, err = child.communicate(timeout=max(deadline - time.monotonic(), 1.0))
            assert child.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return reports


# --- numpy references ----------------------------------------------------------------------------------

def expected_spread(specs: list[Rank], metric: str) -> list[tuple[Any, ...]]:
    """(step, ranks, min, median, max, max_rank, max_node) over the ranks' finite values, per step."""
    steps = sorted({step for spec in specs for step in spec.stored(metric)})
    rows = []
    for step in steps:
        pairs = [(spec.rank, spec.stored(metric)[step]) for spec in specs if step in spec.stored(metric)]
        finite = [(rank, value) for rank, value in pairs if math.isfinite(value)]
        if not finite:
            rows.append((step, 0, None, None, None, None, None))
            continue
        values = np.array([v for _r, v in finite])
        top = finite[int(np.argmax(values))][0]  # the first maximum: the lower rank on a tie
        rows.append((step, len(finite), float(values.min()), float(np.median(values)), float(values.max()), top,
                     HOST))
    return rows


def expected_medians(specs: list[Rank], metric: str) -> dict[int, tuple[float, int]]:
    """rank -> (median of its finite values, how many)."""
    out = {}
    for spec in specs:
        values = np.array([v for v in spec.stored(metric).values() if math.isfinite(v)])
        out[spec.rank] = (float(np.median(values)), int(values.size))
    return out


def close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-15)


def same_sum(got: float, want: float) -> bool:
    """Sums of the same values in another order: close, or both NaN, or the same infinity."""
    return (math.isnan(got) and math.isnan(want)) or got == want or close(got, want)


def assert_rows_close(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        for a, b in zip(g, w, strict=True):
            assert (close(a, b) if isinstance(b, float) else a == b), (g, w)


# --- the spool workload --------------------------------------------------------------------------------

@dataclass
class Logged:
    dsn: str
    run_id: str
    specs: list[Rank]
    reports: list[dict[str, Any]]
    percall_run: str
    logged_at: float


@pytest.fixture(scope="module")
def logged(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    dsn = fresh_database_dsn(clickhouse_base, "ranks")
    spool = tmp_path_factory.mktemp("ranks-spool")
    run_id = str(uuid.uuid4())
    specs = workload()
    reports = run_ranks(specs, spool, run_id, "bert-ddp")
    logged_at = time.time()
    percall_run = str(uuid.uuid4())
    _log_per_call(spool, percall_run)
    report = ingest_spool(spool, ClickHouseSink(dsn))
    assert not report.rejected, report.rejected
    # `runstream ingest` counts the other ranks' points apart from the runs' curves (3: the per-call run's rank 1)
    assert report.rank_points == sum(len(metrics) for spec in specs if spec.rank > 0
                                     for _, metrics in spec.calls) + 3
    return Logged(dsn, run_id, specs, reports, percall_run, logged_at)


def _log_per_call(spool: Path, run_id: str) -> None:
    """A 2-rank run without log_all_ranks: rank 1 logs `eval/acc` with all_ranks=True, `loss` without."""
    spec = json.dumps({"project": "ddp-percall", "name": "percall", "spool": str(spool), "points": [],
                       "dropped": []})
    script = textwrap.dedent("""
        import json, sys
        import runstream
        spec = json.loads(sys.argv[1])
        run = runstream.init(spec["project"], spec["name"], spool=spec["spool"], sample_interval=0)
        for step in range(3):
            run.log({"loss": 1.0 + step}, step=step)
            run.log({"eval/acc": 0.5 + run.rank + step / 10}, step=step, all_ranks=True)
        try:
            run.log({"loss": 9.0}, step=9, all_ranks="yes")
        except TypeError as error:
            print(error, file=sys.stderr)
        run.finish("ok")
    """)
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "RUNSTREAM_RUN_ID": run_id,
               "RUNSTREAM_HEARTBEAT_INTERVAL": "0"}
        env.pop("RUNSTREAM_LOG_ALL_RANKS", None)
        done = subprocess.run([sys.executable, "-c", script, spec], env=env, capture_output=True, text=True,  # noqa: S603
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert "all_ranks: expected True, False or None, got str 'yes'" in done.stderr


@pytest.fixture(scope="module")
def db(logged: Logged) -> Iterator[tuple[Any, str]]:
    client, database = connect(logged.dsn)
    yield client, database


def _query(db: tuple[Any, str], sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
    client, database = db
    return [tuple(row) for row in client.query(sql.replace("{db}", database), parameters=parameters).result_rows]


def test_every_rank_knows_its_rank_and_node_and_only_rank_0_leads(logged: Logged) -> None:
    assert [(r["rank"], r["node"], r["run_id"], r["lead"]) for r in logged.reports] == [
        (rank, HOST, logged.run_id, rank == 0) for rank in range(WORLD)]
    # every rank > 0 sent its points as few batches, not one event per log() call
    for report in logged.reports[1:]:
        assert 1 <= report["sent_events"] <= 3, report
        assert report["rejected_events"] == 0 and report["dropped_items"] == 0


def test_one_run_started_and_one_run_finished_for_all_ranks(logged: Logged, db: tuple[Any, str]) -> None:
    started = _query(db, "SELECT rank, world_size, host, project FROM {db}.runs WHERE run_id = {r:String}",
                     r=logged.run_id)
    assert started == [(0, WORLD, HOST, PROJECT)]
    finished = _query(db, "SELECT status FROM {db}.run_finishes WHERE run_id = {r:String}", r=logged.run_id)
    assert finished == [("ok",)]


@pytest.mark.parametrize("final", ["FINAL", ""])
def test_each_ranks_points_are_stored_with_its_rank_and_node(logged: Logged, db: tuple[Any, str],
                                                             final: str) -> None:
    by_rank = {
        (rank, node, metric): (count, total)
        for rank, node, metric, count, total in _query(
            db, f"SELECT rank, toString(node), metric, count(), sum(value) FROM {{db}}.rank_metric_points {final} "
            "WHERE run_id = {r:String} GROUP BY rank, node, metric", r=logged.run_id)}
    rank0 = {metric: (count, total) for metric, count, total in _query(
        db, f"SELECT metric, count(), sum(value) FROM {{db}}.metric_points {final} WHERE run_id = {{r:String}} "
        "GROUP BY metric", r=logged.run_id)}
    for spec in logged.specs:
        for metric in ("step_time", "loss"):
            values = np.array(list(spec.stored(metric).values()))
            want_count, want_sum = values.size, float(np.sum(values))
            got = rank0.get(metric) if spec.rank == 0 else by_rank.get((spec.rank, HOST, metric))
            assert got is not None, (spec.rank, metric)
            if final or spec.logged_points(metric) == values.size:
                assert got[0] == want_count, (spec.rank, metric, got)
            else:  # rank 1's step logged twice: both rows until a merge (or insert) collapses them
                assert got[0] in (want_count, spec.logged_points(metric)), (spec.rank, metric, got)
                continue
            assert same_sum(got[1], want_sum), (spec.rank, metric, got, want_sum)
    assert 0 not in {rank for rank, _node, _metric in by_rank}, "rank 0's points are the run's curve, not a rank's"
    assert {metric for _rank, _node, metric in by_rank} == {"step_time", "loss"}  # the all_ranks=False call is not
    relogged = _query(db, "SELECT value FROM {db}.rank_metric_points FINAL WHERE run_id = {r:String} AND rank = 1 "
                      "AND metric = 'loss' AND step = 5", r=logged.run_id)
    assert relogged == [(0.123456789,)]


def test_per_call_all_ranks_logs_one_call_from_a_rank_without_log_all_ranks(logged: Logged,
                                                                            db: tuple[Any, str]) -> None:
    points = _query(db, "SELECT rank, metric, step, value FROM {db}.rank_metric_points FINAL WHERE run_id = {r:String} "
                    "ORDER BY metric, step", r=logged.percall_run)
    assert points == [(1, "eval/acc", step, 1.5 + step / 10) for step in range(3)]
    curve = _query(db, "SELECT metric, step, value FROM {db}.metric_points FINAL WHERE run_id = {r:String} "
                   "ORDER BY metric, step", r=logged.percall_run)
    assert curve == [("eval/acc", s, 0.5 + s / 10) for s in range(3)] + [("loss", s, 1.0 + s) for s in range(3)]
    assert _query(db, "SELECT count() FROM {db}.runs WHERE run_id = {r:String}", r=logged.percall_run) == [(1,)]


@pytest.mark.parametrize("metric", ["step_time", "loss"])
def test_the_spread_per_step_equals_numpy_across_the_ranks(logged: Logged, db: tuple[Any, str], metric: str) -> None:
    got = ranks.rank_spread(*db, logged.run_id, metric)
    assert got.columns == ranks.SPREAD_COLUMNS
    want = expected_spread(logged.specs, metric)
    assert_rows_close([tuple(row) for row in got.rows], want)
    by_step = {row[0]: row for row in got.rows}
    if metric == "step_time":
        assert all(by_step[s][1] == WORLD - 1 for s in range(30, 35))  # rank 1 skipped them
        assert by_step[7][1] == WORLD - 1  # rank 1's NaN is left out
        assert sum(row[5] == SLOW_RANK for row in got.rows) == STEPS  # the slow rank holds the max every step
    else:
        assert by_step[20][1:] == [0, None, None, None, None, None]  # no finite loss at step 20: a row, no numbers
        assert by_step[11][1] == WORLD - 1  # rank 3's +Inf is left out
    # the view users query answers the same
    view = _query(db, "SELECT * FROM {db}.rank_spread(run={r:String}, metric={m:String})", r=logged.run_id, m=metric)
    assert_rows_close(view, want)


def test_each_ranks_median_and_the_straggler_equal_numpy(logged: Logged, db: tuple[Any, str]) -> None:
    medians = expected_medians(logged.specs, "step_time")
    run_median = float(np.median([m for m, _n in medians.values()]))
    summary = ranks.rank_summary(*db, "bert-ddp", "step_time")
    assert summary.columns == ranks.SKEW_COLUMNS
    assert_rows_close([tuple(row) for row in summary.rows], [
        (logged.run_id, "bert-ddp", PROJECT, rank, HOST, median, run_median, median / run_median, WORLD, count)
        for rank, (median, count) in sorted(medians.items())])
    slowest = max(medians, key=lambda rank: (medians[rank][0], -rank))
    assert slowest == SLOW_RANK
    want = (logged.run_id, "bert-ddp", PROJECT, SLOW_RANK, HOST, medians[SLOW_RANK][0], run_median,
            medians[SLOW_RANK][0] / run_median, WORLD, medians[SLOW_RANK][1])
    for project in (PROJECT, None):
        assert_rows_close([tuple(row) for row in ranks.stragglers(*db, project).rows], [want])
    assert ranks.stragglers(*db, "another-project").rows == []
    assert ranks.stragglers(*db, PROJECT, metric="eval/acc").rows == []  # logged by another run, in another project
    view = _query(db, "SELECT * FROM {db}.stragglers(metric='step_time', project='')")
    assert_rows_close(view, [want])


def test_the_client_and_the_cli_answer_the_same(logged: Logged, db: tuple[Any, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spread = ranks.rank_spread(*db, logged.run_id, "step_time")
    with runstream.Client(logged.dsn) as client:
        arrow = client.rank_spread(logged.run_id, "step_time", output="arrow")
        assert isinstance(arrow, pa.Table) and arrow.column_names == ranks.SPREAD_COLUMNS
        assert_rows_close([tuple(row.values()) for row in arrow.to_pylist()], [tuple(r) for r in spread.rows])
        frame = client.stragglers(PROJECT)
        assert list(frame["rank"]) == [SLOW_RANK] and list(frame["node"]) == [HOST]
        by_rank = client.rank_spread("bert-ddp", by_rank=True)
        assert list(by_rank["rank"]) == list(range(WORLD))
    assert main(["ranks", "bert-ddp", "--metric", "step_time", "--clickhouse", logged.dsn, "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert_rows_close([tuple(row.values()) for row in printed], [tuple(r) for r in spread.rows])
    assert main(["stragglers", "--project", PROJECT, "--clickhouse", logged.dsn, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split(",") == ranks.SKEW_COLUMNS and len(lines) == 2
    assert lines[1].split(",")[3:5] == [str(SLOW_RANK), HOST]
    assert main(["ranks", "bert-ddp", "--metric", "lr", "--clickhouse", logged.dsn]) == 2
    err = capsys.readouterr().err
    assert "metric 'lr': no rank other than 0 of run" in err and "they logged: loss, step_time" in err


def test_the_exporter_gauges_each_ranks_ratio_over_the_trailing_window(logged: Logged, db: tuple[Any, str]) -> None:
    import datetime as dt

    medians = expected_medians(logged.specs, "step_time")
    run_median = float(np.median([m for m, _n in medians.values()]))
    at = dt.datetime.fromtimestamp(logged.logged_at, dt.UTC) + dt.timedelta(seconds=1)
    collector = SnapshotCollector(*db, ExporterSettings(), now=lambda: at)
    collector.refresh()
    gauges = {family.name: family for family in collector.collect()}
    samples = gauges["runstream_rank_step_time_ratio"].samples
    got = {int(s.labels["rank"]): (s.labels["node"], s.labels["run_name"], s.value) for s in samples
           if s.labels["run_id"] == logged.run_id}
    assert set(got) == set(range(WORLD))
    for rank, (median, _count) in medians.items():
        node, name, value = got[rank]
        assert (node, name) == (HOST, "bert-ddp") and close(value, median / run_median), (rank, value)
    assert got[SLOW_RANK][2] > rank_skew.STRAGGLER_RATIO  # what the alert fires on, held for 10 minutes
    assert all(value < rank_skew.STRAGGLER_RATIO for rank, (_n, _m, value) in got.items() if rank != SLOW_RANK)
    later = at + dt.timedelta(seconds=rank_skew.RANK_WINDOW_S + 5)  # nothing logged in the window: no series
    assert rank_skew.recent_rank_skew(*db, now=later) == []


# --- through Kafka ---------------------------------------------------------------------------------------

def test_every_rank_through_kafka(tmp_path: Path, clickhouse_dsn: str, kafka_bootstrap: str,
                                  topic_prefix: str) -> None:
    """Three rank processes send to the broker; the consumer service stores every rank's points."""
    from runstream.consumer import ConsumerService, ConsumerSettings

    specs = workload(steps=12)[:3]
    run_id = str(uuid.uuid4())
    # A long flush interval: the worker drains only at finish, so each rank > 0 sends its 12 calls as one event.
    reports = run_ranks(specs, tmp_path / "spool", run_id, "kafka-ddp", extra_env={
        "RUNSTREAM_KAFKA": kafka_bootstrap, "RUNSTREAM_TOPIC_PREFIX": topic_prefix, "RUNSTREAM_FLUSH_INTERVAL": "60"})
    assert [r["sent_events"] for r in reports[1:]] == [1, 1]
    events = sum(r["sent_events"] for r in reports)  # run_started, metric_steps, run_finished + one per rank > 0
    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix))
    stats = consume_until(service, events)
    assert stats.events >= events and stats.dead_letters == 0
    client, database = connect(clickhouse_dsn)
    stored = client.query(f"SELECT rank, toString(node), count(), sum(value) FROM {database}.rank_metric_points "  # noqa: S608
                          "FINAL WHERE run_id = {r:String} AND metric = 'step_time' GROUP BY rank, node ORDER BY rank",
                          parameters={"r": run_id}).result_rows
    want = []
    for spec in specs[1:]:
        values = np.array(list(spec.stored("step_time").values()))
        want.append((spec.rank, HOST, values.size, float(np.sum(values))))
    assert [(r, n, c) for r, n, c, _s in stored] == [(r, n, c) for r, n, c, _s in want]
    for (*_, got_sum), (*_, want_sum) in zip(stored, want, strict=True):
        assert same_sum(got_sum, want_sum), (got_sum, want_sum)
    spread = ranks.rank_spread(client, database, run_id, "step_time")
    assert_rows_close([tuple(r) for r in spread.rows], expected_spread(specs, "step_time"))
