"""Forks through the real pipeline: a fork's curve is its parent's up to the fork step and its own
after (a fork of a fork too), with no point copied; `runstream lineage` prints the tree; compare and
the Runs dashboard show the fork point; and a fork whose parent is unknown or never logged the fork
step is refused by the consumer (dead-lettered through Kafka, rejected by `runstream ingest`) with
the value named and nothing of its start stored.

Runs are logged with the SDK to spool folders and loaded with `runstream ingest` in phases, parents
before their forks, as a fork is started after its parent logged the step it forks from.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from databases import fresh_database_dsn

import runstream
from runstream.analysis import queries
from runstream.analysis.lineage import MAX_DEPTH, ForkChainTooDeep, ancestry, lineage, render_tree, run_curve
from runstream.cli import main
from runstream.consumer import ClickHouseSink, ConsumerService, ConsumerSettings, ingest_spool
from runstream.consumer.batch import Batch, InvalidEvent
from runstream.dashboards import build, preview
from runstream.producer.ids import uuid7
from runstream.producer.run import producer_stats
from runstream.schemas import dead_letter_topic
from runstream.schemas.spool import read_spool_file, spool_files

pytestmark = pytest.mark.integration

PROJECT = "forks"
Curve = dict[str, dict[int, float]]  # metric -> step -> value


def parent_curve() -> Curve:
    return {"loss": {s: 1.0 / (s + 1) for s in range(100)}, "acc": {s: s / 200 for s in range(100)}}


def log(spool: Path, name: str, curve: Curve, status: str | None = "ok", **fork: Any) -> str:
    """Log a run through the SDK to `spool`; its id."""
    run = runstream.init(PROJECT, name, params={"name": name}, spool=str(spool), sample_interval=0, **fork)
    steps = sorted({step for points in curve.values() for step in points})
    for step in steps:
        run.log({metric: points[step] for metric, points in curve.items() if step in points}, step=step)
    run.finish(status or "ok")
    return run.run_id


def expected_curve(parts: list[tuple[str, Curve, int | None, int | None]]) -> list[tuple[str, int, float, str]]:
    """(run_id, curve, lowest step excluded, highest step included) per source, as rows of run_curve."""
    rows = []
    for run_id, curve, lower, upper in parts:
        for metric, points in curve.items():
            rows += [(metric, step, value, run_id) for step, value in points.items()
                     if (lower is None or step > lower) and (upper is None or step <= upper)]
    return sorted(rows)


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory, clickhouse_base: str) -> dict[str, Any]:
    """A parent, two forks of it (one failed), a fork of a fork, and two refused forks."""
    tmp = tmp_path_factory.mktemp("forks")
    dsn = fresh_database_dsn(clickhouse_base, "forks")
    sink = ClickHouseSink(dsn)
    curves: dict[str, Curve] = {}
    ids: dict[str, str] = {}

    ids["base"] = log(tmp / "1", "base", parent := parent_curve())
    curves["base"] = parent
    assert not (report := ingest_spool(tmp / "1", sink)).rejected, report.rejected

    # Fork A re-logs step 50 with its own values: the parent's step 50 is the curve's, not A's.
    curves["fork-a"] = {"loss": {s: 2.0 + s / 1000 for s in range(50, 130)},
                        "acc": {s: 0.9 - s / 1000 for s in range(50, 130)}}
    ids["fork-a"] = log(tmp / "2", "fork-a", curves["fork-a"], fork_from=ids["base"], fork_step=50)
    curves["fork-b"] = {"loss": {s: 3.0 + s for s in range(21, 61)}}
    ids["fork-b"] = log(tmp / "2", "fork-b", curves["fork-b"], "failed", fork_from=ids["base"], fork_step=20)
    ids["bad-step"] = log(tmp / "2", "bad-step", {}, fork_from=ids["base"], fork_step=1000)
    ids["ghost"] = uuid7()
    ids["bad-parent"] = log(tmp / "2", "bad-parent", {}, fork_from=ids["ghost"], fork_step=5)
    phase2 = ingest_spool(tmp / "2", sink)

    curves["fork-of-fork"] = {"loss": {s: 5.0 - s / 100 for s in range(81, 150)},
                              "acc": {s: s / 1000 for s in range(81, 150)}}
    ids["fork-of-fork"] = log(tmp / "3", "fork-of-fork", curves["fork-of-fork"], fork_from=ids["fork-a"],
                              fork_step=80)
    assert not (report := ingest_spool(tmp / "3", sink)).rejected, report.rejected
    return {"dsn": dsn, "client": sink.client, "db": sink.database, "ids": ids, "curves": curves,
            "rejected": phase2.rejected}


def test_a_forks_curve_is_the_parents_up_to_the_fork_step_then_its_own(forks: dict[str, Any]) -> None:
    client, db, ids, curves = forks["client"], forks["db"], forks["ids"], forks["curves"]
    got = run_curve(client, db, ids["fork-a"])
    want = expected_curve([(ids["base"], curves["base"], None, 50), (ids["fork-a"], curves["fork-a"], 50, None)])
    assert got == want
    sources = {source: sum(1 for row in got if row[3] == source) for source in {row[3] for row in got}}
    assert sources == {ids["base"]: 2 * 51, ids["fork-a"]: 2 * 79}
    assert sum(value for _m, _s, value, _r in got) == pytest.approx(sum(value for *_, value, _r in want), rel=1e-15)
    # Only the fork's own points are stored (nothing copied), with FINAL and without.
    for final in ("FINAL", ""):
        stored = client.query(f"SELECT count() FROM {db}.metric_points {final} WHERE run_id = {{r:String}}",
                              parameters={"r": ids["fork-a"]}).result_rows[0][0]
        assert stored == 2 * 80, final
    # One metric only; a root's curve is its own points.
    assert run_curve(client, db, ids["fork-a"], ["loss"]) == [row for row in want if row[0] == "loss"]
    assert run_curve(client, db, ids["base"]) == expected_curve([(ids["base"], curves["base"], None, None)])
    assert run_curve(client, db, ids["fork-b"]) == expected_curve(
        [(ids["base"], curves["base"], None, 20), (ids["fork-b"], curves["fork-b"], 20, None)])


def test_a_fork_of_a_fork_reads_through_both_parents(forks: dict[str, Any]) -> None:
    client, db, ids, curves = forks["client"], forks["db"], forks["ids"], forks["curves"]
    got = run_curve(client, db, ids["fork-of-fork"])
    want = expected_curve([(ids["base"], curves["base"], None, 50), (ids["fork-a"], curves["fork-a"], 50, 80),
                           (ids["fork-of-fork"], curves["fork-of-fork"], 80, None)])
    assert got == want
    assert [sum(1 for row in got if row[3] == ids[name]) for name in ("base", "fork-a", "fork-of-fork")] == \
        [2 * 51, 2 * 30, 2 * 69]
    steps = [step for metric, step, _v, _r in got if metric == "loss"]
    assert steps == list(range(150)), "one point per step, no gap and no step twice"


def test_lineage_shows_the_tree_with_fork_steps_names_and_status(forks: dict[str, Any], capsys: Any) -> None:
    client, db, ids = forks["client"], forks["db"], forks["ids"]
    base, a, b, aa = ids["base"], ids["fork-a"], ids["fork-b"], ids["fork-of-fork"]
    tree = lineage(client, db, base)
    assert [(n.name, n.fork_from, n.fork_step, n.status, n.depth, n.relation) for n in tree] == [
        ("base", None, None, "ok", 0, "self"),
        ("fork-a", base, 50, "ok", 1, "descendant"),
        ("fork-of-fork", a, 80, "ok", 2, "descendant"),
        ("fork-b", base, 20, "failed", 1, "descendant"),
    ]
    assert render_tree(tree).splitlines() == [
        f"base  {base}  [ok]  <- this run",
        f"├─ fork-a  {a}  [ok]  forked at step 50",
        f"│  └─ fork-of-fork  {aa}  [ok]  forked at step 80",
        f"└─ fork-b  {b}  [failed]  forked at step 20",
    ]
    # From the fork of a fork: its ancestors up to the root, not its parent's siblings.
    assert [(n.name, n.relation) for n in lineage(client, db, aa)] == [
        ("base", "ancestor"), ("fork-a", "ancestor"), ("fork-of-fork", "self")]

    assert main(["lineage", "fork-a", "--clickhouse", forks["dsn"]]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"base  {base}  [ok]",
        f"└─ fork-a  {a}  [ok]  forked at step 50  <- this run",
        f"   └─ fork-of-fork  {aa}  [ok]  forked at step 80",
    ]
    assert main(["lineage", aa, "--clickhouse", forks["dsn"], "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["fork_from"], r["fork_step"], r["depth"]) for r in rows] == [
        (base, None, None, 0), (a, base, 50, 1), (aa, a, 80, 2)]
    assert main(["lineage", "fork-b", "--clickhouse", forks["dsn"], "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "run_id,name,fork_from,fork_step,status,depth,relation"
    frame = runstream.Client(forks["dsn"]).lineage("fork-b")
    assert list(frame["name"]) == ["base", "fork-b"] and list(frame["relation"]) == ["ancestor", "self"]
    assert main(["lineage", "no-such-run", "--clickhouse", forks["dsn"]]) == 2
    assert "no-such-run" in capsys.readouterr().err


def test_compare_shows_the_fork_point(forks: dict[str, Any]) -> None:
    client, db, ids = forks["client"], forks["db"], forks["ids"]
    table = queries.compare(client, db, ["base", "fork-a", "fork-of-fork"])
    fields = {row[0]: row[1:] for row in table.rows}
    assert fields["fork_from"] == [None, ids["base"], ids["fork-a"], "*"]
    assert fields["fork_step"] == [None, 50, 80, "*"]
    assert [row[0] for row in table.rows][:4] == ["run_id", "status", "fork_from", "fork_step"]
    plain = queries.compare(client, db, ["base"])
    assert "fork_from" not in [row[0] for row in plain.rows]


def test_the_runs_dashboard_marks_the_fork_point_on_the_curves(forks: dict[str, Any]) -> None:
    client, db, ids, curves = forks["client"], forks["db"], forks["ids"], forks["curves"]
    panel = next(q for q in build.RUNS if q.title == "Metric curves, overlaid")
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    variables = {"project": [PROJECT], "run": [ids["fork-a"], ids["fork-b"]], "metric": ["loss"]}
    rows = client.query(preview.expand(panel.sql, db, variables, end - dt.timedelta(hours=1), end)).result_rows
    # per bucket min, max, last, points, non_finite (runstream.analysis.curves); a marker is one point
    markers = {series: last for _time, series, _min, _max, last, _points, _nf in rows if "forks off" in series}
    assert markers == {"fork-a forks off at step 50 (loss)": curves["base"]["loss"][50],
                       "fork-b forks off at step 20 (loss)": curves["base"]["loss"][20]}
    parent_time = client.query(f"SELECT time FROM {db}.metric_points FINAL WHERE run_id = {{r:String}} "
                               "AND metric = 'loss' AND step = 50", parameters={"r": ids["base"]}).result_rows[0][0]
    assert [row[0] for row in rows if row[1].startswith("fork-a forks")] == [parent_time]
    assert sum(row[5] for row in rows if "forks off" not in row[1]) == 80 + 40


def test_a_fork_from_an_unknown_parent_or_an_unlogged_step_is_refused_and_nothing_stored(
    forks: dict[str, Any],
) -> None:
    client, db, ids = forks["client"], forks["db"], forks["ids"]
    rejected = forks["rejected"]
    assert len(rejected) == 2, rejected
    (step_error,) = [r for r in rejected if ids["bad-step"] in r]
    assert f"fork_step 1000: parent run {ids['base']} never logged step 1000" in step_error
    assert "it logged steps 0..99" in step_error
    (parent_error,) = [r for r in rejected if ids["bad-parent"] in r]
    assert f"fork_from {ids['ghost']!r} is not a known run" in parent_error
    bad = [ids["bad-step"], ids["bad-parent"]]
    for table in ("runs", "run_attempts", "run_params", "run_summary"):
        for final in ("FINAL", ""):
            count = client.query(f"SELECT count() FROM {db}.{table} {final} WHERE has({{ids:Array(String)}}, run_id)",
                                 parameters={"ids": bad}).result_rows[0][0]
            assert count == 0, (table, final)
    good = client.query(f"SELECT count() FROM {db}.runs FINAL").result_rows[0][0]
    assert good == 4


def _run_started(tmp: Path, **fork: Any) -> dict[str, Any]:
    """A run_started record as the SDK wrote it (read back from its spool file)."""
    runstream.init(PROJECT, "probe", spool=str(tmp), sample_interval=0, **fork).finish()
    (path,) = [p for p in spool_files(tmp) if p.name.startswith("run_started")]
    return next(record for _type, record in read_spool_file(path))


def test_a_parent_point_earlier_in_the_same_batch_counts_and_a_refused_start_leaves_the_batch_whole(
    forks: dict[str, Any], tmp_path: Path,
) -> None:
    sink = ClickHouseSink(forks["dsn"])
    parent = uuid7()
    record = _run_started(tmp_path, fork_from=parent, fork_step=7)
    batch = Batch(fork_check=sink.fork_checks)
    with pytest.raises(InvalidEvent) as refused:
        batch.add("run_started", record)
    assert refused.value.reason == "unknown_fork_parent" and parent in str(refused.value)
    batch.add("metric_steps", {"event_id": "e1", "run_id": parent, "timestamp_us": record["timestamp_us"],
                               "metric_names": ["loss"], "metric_index": [0, 0], "steps": [6, 8],
                               "values": [0.5, 0.4], "times_us": [record["timestamp_us"]] * 2})
    with pytest.raises(InvalidEvent) as refused:
        batch.add("run_started", record)
    assert refused.value.reason == "fork_step_not_logged"
    assert "fork_step 7" in str(refused.value) and "steps 6..8" in str(refused.value)
    assert (batch.rows("runs"), batch.rows("run_attempts"), batch.events) == (0, 0, 1)
    batch.add("run_started", dict(record, fork_step=8))  # the parent's step 8, not yet stored
    assert (batch.rows("runs"), batch.events) == (1, 2)
    with pytest.raises(InvalidEvent) as refused:
        batch.add("run_started", dict(record, fork_from=record["run_id"]))
    assert refused.value.reason == "fork_of_itself"


def test_the_chain_walk_is_bounded_and_cycle_safe(clickhouse_dsn: str) -> None:
    """Chains only forged rows can make: a cycle, and one deeper than MAX_DEPTH (written straight to runs)."""
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    chain = [f"deep-{i:02d}" for i in range(MAX_DEPTH + 5)]
    rows = [[run, PROJECT, run, None if i == 0 else chain[i - 1], None if i == 0 else i] for i, run in enumerate(chain)]
    rows += [["loop-a", PROJECT, "loop-a", "loop-b", 1], ["loop-b", PROJECT, "loop-b", "loop-a", 2]]
    client.insert(f"{db}.runs", rows, column_names=["run_id", "project", "run_name", "fork_from", "fork_step"])
    links, cut = ancestry(client, db, "loop-a")
    assert ([link.run_id for link in links], cut) == (["loop-a", "loop-b"], False)
    assert links[-1].fork_from is None, "the walk stops where the cycle closes"
    assert run_curve(client, db, "loop-a") == []
    links, cut = ancestry(client, db, chain[-1])
    assert (len(links), cut) == (MAX_DEPTH, True)
    with pytest.raises(ForkChainTooDeep, match=f"{chain[-1]}.*longer than {MAX_DEPTH}"):
        run_curve(client, db, chain[-1])
    assert [link.run_id for link in ancestry(client, db, chain[MAX_DEPTH - 1])[0]][-1] == chain[0]


def test_through_kafka_a_fork_is_stored_and_a_bad_one_dead_lettered_with_its_reason(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str,
) -> None:
    group = f"forks-{uuid.uuid4().hex[:8]}"
    settings = ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn, topic_prefix=topic_prefix,
                                group_id=group, batch_max_wait_s=0.5, partitions=2)

    def send(name: str, curve: Curve, **fork: Any) -> tuple[str, int]:
        before = producer_stats()["sent_events"]
        run = runstream.init(PROJECT, name, kafka=kafka_bootstrap, topic_prefix=topic_prefix, sample_interval=0,
                             **fork)
        for step in sorted({s for points in curve.values() for s in points}):
            run.log({m: points[step] for m, points in curve.items() if step in points}, step=step)
        run.finish()
        return run.run_id, producer_stats()["sent_events"] - before

    def consume(events: int) -> ConsumerService:
        service = ConsumerService(settings)
        stop = threading.Event()
        timer = threading.Timer(60, stop.set)
        timer.start()
        try:
            service.run(stop, stop_when=lambda s: s.events + s.dead_letters >= events)
        finally:
            timer.cancel()
        assert not stop.is_set(), "the consumer did not get through its messages in 60 s"
        return service

    base_curve = parent_curve()
    base, sent = send("k-base", base_curve)
    consume(sent)  # the parent is stored before its fork starts
    child_curve: Curve = {"loss": {s: 7.0 + s for s in range(31, 45)}}
    child, sent_child = send("k-fork", child_curve, fork_from=base, fork_step=30)
    bad, sent_bad = send("k-bad", {}, fork_from=base, fork_step=999)
    service = consume(sent_child + sent_bad)
    assert service.dead_letters.counts == {"fork_step_not_logged": 1}
    client, db = service.sink.client, service.sink.database
    want = expected_curve([(base, base_curve, None, 30), (child, child_curve, 30, None)])
    assert run_curve(client, db, child) == want
    assert client.query(f"SELECT count() FROM {db}.runs WHERE run_id = {{r:String}}",
                        parameters={"r": bad}).result_rows[0][0] == 0

    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"dlq-{uuid.uuid4().hex[:8]}",
                       "auto.offset.reset": "earliest"})
    reader.subscribe([dead_letter_topic(topic_prefix)])
    letters: list[Any] = []
    timer_stop = threading.Event()
    timer = threading.Timer(30, timer_stop.set)
    timer.start()
    try:
        while not letters and not timer_stop.is_set():
            letters += [m for m in reader.consume(10, 0.5) if m.error() is None]
    finally:
        timer.cancel()
        reader.close()
    assert len(letters) == 1
    headers = dict(letters[0].headers() or [])
    assert headers["runstream.reason"] == b"fork_step_not_logged"
    assert f"fork_step 999: parent run {base} never logged step 999".encode() in headers["runstream.error"]
