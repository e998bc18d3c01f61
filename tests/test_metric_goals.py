"""Declared goals (`run.define_metric`, `init(metrics=...)`): every ranking follows them; the name rule stays default.

Runs are logged through the real SDK into a spool folder and ingested through the consumer's sink into
chDB (one small test goes through the Kafka broker and the consumer service). The workload declares two
metrics against their names: `val/score` (the name rule says max) declared min, and `loss_gain` (the
name rule says min, it contains "loss") declared max; `acc` and `val_loss` stay undeclared (max and min
by the name rule), and `val_loss` is even re-defined without a goal, which declares no direction. The
leaderboard (`queries.leaderboard`, `runstream best`, the `leaderboard` view with mode ''), compare,
importance, the report, the run list's best values, `run_overview` and the dashboards' leaderboard
panel are each compared with a Python sort of what was logged. Only finite values rank
(runstream.monitoring.finite_values): one run logs `val/score` as NaN only and is left out.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from consuming import run_until
from databases import fresh_database_dsn, spool_workload_dsn
from spool_reader import spooled

import runstream
from runstream.analysis import queries
from runstream.analysis.importance import importance
from runstream.analysis.report import collect
from runstream.cli import main
from runstream.comparison import compare_project
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.monitoring.metric_direction import declared_goals, goal_of, lower_is_better

pytestmark = pytest.mark.integration
NAN = float("nan")
PROJECT = "goals"
STEPS = 12
#: What the workload declares, against the name rule for both.
DECLARED = {"val/score": "min", "loss_gain": "max"}
METRICS = ("val/score", "loss_gain", "acc", "val_loss")
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def _curves(seed: int) -> dict[str, list[tuple[int, float]]]:
    rng = np.random.default_rng(seed)
    return {metric: [(step, float(rng.normal(seed, 3.0))) for step in range(STEPS)] for metric in METRICS}


#: name -> (params, curves); the last run's val/score is NaN at every step (never ranked).
RUNS: dict[str, tuple[dict[str, Any], dict[str, list[tuple[int, float]]]]] = {
    f"lr{i}": ({"lr": lr, "opt": "adam" if i % 2 else "sgd"}, _curves(i)) for i, lr in enumerate(LRS)
}
RUNS["lr5"][1]["val/score"] = [(step, NAN) for step in range(STEPS)]


def log_workload(spool: Path) -> None:
    for i, (name, (params, curves)) in enumerate(RUNS.items()):
        # run lr0 declares in init, lr1 with define_metric; the others declare nothing of their own
        metrics = {"val/score": {"goal": "min", "summary": ["min", "last"]}} if i == 0 else None
        run = runstream.init(PROJECT, name, params=params, spool=str(spool), sample_interval=0, metrics=metrics)
        if i == 1:
            run.define_metric("loss_gain", goal="max", summary=("max",))
        if i == 2:
            run.define_metric("val_loss", summary=["last"])  # no goal: the name rule still decides
        for metric, points in curves.items():
            for step, value in points:
                run.log({metric: value}, step=step)
        run.finish("ok")


def best_of(points: list[tuple[int, float]], goal: str) -> tuple[float, int] | None:
    """The best finite value and the earliest step reaching it, None when no value is finite."""
    finite = [(value, step) for step, value in points if math.isfinite(value)]
    if not finite:
        return None
    value = min(v for v, _ in finite) if goal == "min" else max(v for v, _ in finite)
    return value, min(step for v, step in finite if v == value)


def expected_board(metric: str, goal: str) -> list[tuple[str, float, int]]:
    """(name, best, step) ranked as every ranking must: best first, ties to the earlier step."""
    rows = []
    for name, (_params, curves) in RUNS.items():
        best = best_of(curves[metric], goal)
        if best is not None:
            rows.append((name, best[0], best[1]))
    return sorted(rows, key=lambda r: (r[1] if goal == "min" else -r[1], r[2]))


def goal(metric: str) -> str:
    return DECLARED.get(metric) or ("min" if lower_is_better(metric) else "max")


@pytest.fixture(scope="module")
def dsn(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return spool_workload_dsn(clickhouse_base, tmp_path_factory, "goals", log_workload)


# --- the SDK -------------------------------------------------------------------------------------

def test_each_event_carries_every_definition_so_far_and_bad_ones_are_refused_at_the_call(tmp_path: Path) -> None:
    run = runstream.init(PROJECT, "defs", spool=str(tmp_path), sample_interval=0, metrics={"val/score": "min"})
    run.define_metric("loss_gain", goal="max", summary=["max", "last", "max"], step_metric="epoch")
    refused = [
        ({"goal": "best"}, ValueError, "define_metric('val/acc'): goal must be 'min', 'max' or None, got 'best'"),
        ({"goal": "MIN"}, ValueError, "goal must be 'min', 'max' or None, got 'MIN'"),
        ({"summary": ["min", "median"]}, ValueError, "summary items must be among min, max, last, first, mean, "
                                                     "got 'median'"),
        ({"summary": 3}, TypeError, "define_metric('val/acc'): summary must be a list of"),
        ({"step_metric": 7}, TypeError, "step_metric must be a metric name or None, got int 7"),
        ({"step_metric": "val/acc"}, ValueError, "step_metric cannot be the metric itself, got 'val/acc'"),
    ]
    for kwargs, error, message in refused:
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            run.define_metric("val/acc", **kwargs)
    with pytest.raises(ValueError, match="metric key is empty"):
        run.define_metric("", goal="min")
    run.define_metric("val/score", goal="max")  # defined again: replaces the earlier definition
    run.finish("ok")
    events = spooled(tmp_path, "metric_definitions")
    assert [[d["metric"] for d in e["definitions"]] for e in events] == [
        ["val/score"], ["val/score", "loss_gain"], ["val/score", "loss_gain"]]
    assert events[1]["definitions"][1] == {"metric": "loss_gain", "goal": "max", "summary": ["max", "last"],
                                           "step_metric": "epoch"}
    assert [e["definitions"][0]["goal"] for e in events] == ["min", "min", "max"]  # nothing refused got through
    assert all(e["run_id"] == run.run_id and e["attempt"] == 1 for e in events)


def test_init_refuses_bad_metrics_before_the_run_starts(tmp_path: Path) -> None:
    for metrics, fragment in (({"val/score": {"goal": "up"}}, r"define_metric\('val/score'\): goal must be"),
                              ({"val/score": {"gaol": "min"}}, r"metrics\['val/score'\]: unknown key 'gaol'"),
                              ({"val/score": 3}, r"metrics\['val/score'\]: expected a mapping"),
                              (["val/score"], "metrics: expected a mapping")):
        with pytest.raises((ValueError, TypeError), match=fragment):
            runstream.init(PROJECT, "bad", spool=str(tmp_path), sample_interval=0, metrics=metrics)  # type: ignore[arg-type]
    assert not list(tmp_path.rglob("*.avro")), "a refused init sent something"


# --- the stored declarations --------------------------------------------------------------------

def test_declared_goals_are_what_was_declared_and_stored_once_per_run_and_metric(db: tuple[Any, str]) -> None:
    client, database = db
    assert declared_goals(client, database) == DECLARED
    assert declared_goals(client, database, ["val/score", "acc"]) == {"val/score": "min"}
    assert declared_goals(client, database, []) == {}
    assert {m: goal_of(m, declared_goals(client, database)) for m in METRICS} == {m: goal(m) for m in METRICS}
    # lr0: 1 event of 1 definition; lr1: 1 of 1; lr2: 1 of 1 (val_loss, no goal)
    final = client.query(f"SELECT run_id, metric, goal, summary FROM {database}.metric_definitions FINAL "
                         "ORDER BY metric").result_rows
    assert [(m, g, list(s)) for _r, m, g, s in final] == [
        ("loss_gain", "max", ["max"]), ("val/score", "min", ["min", "last"]), ("val_loss", "", ["last"])]
    raw = client.query(f"SELECT count() FROM {database}.metric_definitions").result_rows[0][0]
    assert raw == len(final)  # one event each: nothing to collapse


# --- every ranking follows the declaration -------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
def test_leaderboard_follows_the_declared_goal_else_the_name_rule(db: tuple[Any, str], metric: str) -> None:
    client, database = db
    board = queries.leaderboard(client, database, PROJECT, metric)
    want = expected_board(metric, goal(metric))
    assert board.columns[4] == f"{metric} {goal(metric)}"
    assert [(r[2], r[4], r[5]) for r in board.rows] == want
    assert [r[0] for r in board.rows] == list(range(1, len(want) + 1))
    assert board.left_out == (1 if metric == "val/score" else 0)
    # --mode still overrides the declaration
    other = "max" if goal(metric) == "min" else "min"
    forced = queries.leaderboard(client, database, PROJECT, metric, other)
    assert [(r[2], r[4], r[5]) for r in forced.rows] == expected_board(metric, other)


def test_runstream_best_without_mode_ranks_by_the_declaration(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["best", "--project", PROJECT, "--metric", "loss_gain", "--format", "json", "--limit", "0",
                 "--clickhouse", dsn]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["loss_gain max"]) for r in rows] == [(n, v) for n, v, _ in expected_board("loss_gain", "max")]
    assert main(["best", "--project", PROJECT, "--metric", "loss_gain", "--mode", "min", "--format", "json",
                 "--limit", "0", "--clickhouse", dsn]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [n for n, _, _ in expected_board("loss_gain", "min")]


@pytest.mark.parametrize("metric", METRICS)
def test_leaderboard_view_with_mode_empty_ranks_by_the_declaration(db: tuple[Any, str], metric: str) -> None:
    client, database = db
    sql = (f"SELECT run_name, value, step FROM {database}.leaderboard(project={{p:String}}, metric={{m:String}}, "
           "mode={mode:String}) ORDER BY rank")
    for mode, want in (("", goal(metric)), ("min", "min"), ("max", "max")):
        rows = client.query(sql, parameters={"p": PROJECT, "m": metric, "mode": mode}).result_rows
        assert [tuple(r) for r in rows] == expected_board(metric, want), mode


def test_compare_takes_best_on_the_declared_side(db: tuple[Any, str]) -> None:
    client, database = db
    names = list(RUNS)
    table = queries.compare(client, database, names)
    by_field = {row[0]: row[1:-1] for row in table.rows}
    for metric in METRICS:
        want = [best_of(RUNS[n][1][metric], goal(metric)) for n in names]
        assert by_field[f"{metric} best ({goal(metric)})"] == [w[0] if w else None for w in want]
        assert by_field[f"{metric} best step"] == [w[1] if w else None for w in want]
    demo = compare_project(client, database, PROJECT)
    column = {name: demo.columns.index(f"{name} best") for name in METRICS}
    for row in demo.rows:
        for metric, index in column.items():
            best = best_of(RUNS[row[0]][1][metric], goal(metric))
            assert row[index] == (best[0] if best else None), (row[0], metric)


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


@pytest.mark.parametrize("metric", ["val/score", "loss_gain", "acc"])
def test_importance_correlates_with_the_declared_best(db: tuple[Any, str], metric: str) -> None:
    client, database = db
    table = importance(client, database, PROJECT, metric)
    scored = [(RUNS[n][0]["lr"], best_of(RUNS[n][1][metric], goal(metric))) for n in RUNS]
    xs, ys = [lr for lr, b in scored if b], [b[0] for _lr, b in scored if b]
    rho = {row[0]: row[4] for row in table.rows}["params.lr"]
    assert math.isclose(rho, _spearman(xs, ys), rel_tol=1e-12, abs_tol=1e-12)
    assert table.left_out == (1 if metric == "val/score" else 0)
    other = importance(client, database, PROJECT, metric, "max" if goal(metric) == "min" else "min")
    ys_other = [best_of(RUNS[n][1][metric], "max" if goal(metric) == "min" else "min") for n in RUNS]
    rho_other = {row[0]: row[4] for row in other.rows}["params.lr"]
    assert math.isclose(rho_other, _spearman(xs, [b[0] for b in ys_other if b]), rel_tol=1e-12, abs_tol=1e-12)


def test_run_list_overview_and_report_take_best_on_the_declared_side(db: tuple[Any, str]) -> None:
    client, database = db
    table = queries.runs(client, database, project=PROJECT)
    for record in table.records():
        for metric in METRICS:
            best = best_of(RUNS[record["name"]][1][metric], goal(metric))
            assert record[f"best.{metric}"] == (best[0] if best else None), (record["name"], metric)
    # the filter and the sort on best.X read the same values
    ranked = queries.runs(client, database, project=PROJECT, sort="best.loss_gain")
    assert [r[1] for r in ranked.rows] == [n for n, _, _ in reversed(expected_board("loss_gain", "max"))]
    board = expected_board("loss_gain", "max")
    threshold = board[len(board) // 2][1]
    kept = queries.runs(client, database, project=PROJECT, where=f"best.loss_gain >= {threshold!r}")
    assert sorted(r[1] for r in kept.rows) == sorted(n for n, v, _ in board if v >= threshold)
    overview = {r[0]: (r[1], r[2]) for r in client.query(
        f"SELECT run_name, best, best_step FROM {database}.run_overview WHERE project = 'goals'").result_rows}
    for name, (best, step) in overview.items():
        for metric in METRICS:
            want = best_of(RUNS[name][1][metric], goal(metric))
            assert (best.get(metric), step.get(metric)) == (want if want else (None, None)), (name, metric)
    data = collect(client, database, PROJECT, metric="val/score")
    assert data["mode"] == "min"
    assert [r["name"] for r in data["leaderboard"]] == [n for n, _, _ in expected_board("val/score", "min")]
    assert data["left_out"] == 1


def test_dashboard_leaderboard_panel_follows_the_declaration(db: tuple[Any, str]) -> None:
    from runstream.dashboards import build, preview

    client, database = db
    panel = next(q for q in build.RUNS if q.title == "Leaderboard")
    ids = [r[0] for r in client.query(f"SELECT run_id FROM {database}.runs FINAL WHERE project = 'goals'").result_rows]
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    variables = {"project": [PROJECT], "run": ids, "metric": list(METRICS)}
    rows = client.query(preview.expand(panel.sql, database, variables, end - dt.timedelta(days=1), end)).result_rows
    for metric in METRICS:
        got = [(r[0], r[5]) for r in rows if r[1] == metric]
        assert got == [(n, v) for n, v, _ in expected_board(metric, goal(metric))], metric


# --- which declaration wins ----------------------------------------------------------------------

def test_latest_declaration_across_runs_wins(clickhouse_base: str, tmp_path: Path) -> None:
    """Runs of one database share declarations: the latest event declaring a goal wins. A run's event
    re-states all its definitions, so a run that defines anything later declares its goals again; a
    definition without a goal declares no direction and leaves the others' in force."""
    dsn = fresh_database_dsn(clickhouse_base, "goals_latest")
    sink = ClickHouseSink(dsn)
    client, database = sink.client, sink.database

    def declare(name: str, **metrics: Any) -> None:
        spool = tmp_path / name  # one folder per run: each ingest reads that run's events once
        run = runstream.init("latest", name, spool=str(spool), sample_interval=0, metrics=metrics or None)
        run.log({"val/score": 1.0 + len(name)}, step=0)
        if name == "fourth":
            run.define_metric("acc", goal="max")
            run.define_metric("val/score", goal="max")  # this event re-states acc too
        run.finish("ok")
        ingest_spool(spool, sink)

    declare("first", **{"val/score": "max"})
    assert declared_goals(client, database) == {"val/score": "max"}
    declare("second", **{"val/score": "min"})
    assert declared_goals(client, database) == {"val/score": "min"}
    assert queries.leaderboard(client, database, "latest", "val/score").columns[4] == "val/score min"
    declare("third", **{"val/score": {"summary": ["last"]}})  # no goal: declares no direction
    assert declared_goals(client, database) == {"val/score": "min"}
    declare("fourth")
    assert declared_goals(client, database) == {"val/score": "max", "acc": "max"}
    board = queries.leaderboard(client, database, "latest", "val/score")
    assert board.columns[4] == "val/score max"
    # values 1 + len(name): 7 for second and fourth (second started first), 6 for first and third
    assert [r[2] for r in board.rows] == ["second", "fourth", "first", "third"]
    # per (run, metric) the latest row wins with FINAL; without it every event's rows stay until a merge
    final = client.query(f"SELECT count() FROM {database}.metric_definitions FINAL").result_rows[0][0]
    raw = client.query(f"SELECT count() FROM {database}.metric_definitions").result_rows[0][0]
    assert final == 5  # first, second, third: val/score; fourth: acc and val/score
    assert final <= raw <= 6  # fourth sent acc twice


# --- through Kafka -------------------------------------------------------------------------------

def test_declarations_travel_through_kafka_to_the_leaderboard(tmp_path: Path, clickhouse_dsn: str,
                                                              kafka_bootstrap: str, topic_prefix: str) -> None:
    from runstream.consumer import ConsumerService, ConsumerSettings

    values = {"a": [3.0, 1.0, 2.0], "b": [0.5, 4.0, 0.7], "c": [2.5, 2.0, NAN]}
    for name, points in values.items():
        run = runstream.init("kafka-goals", name, kafka=kafka_bootstrap, topic_prefix=topic_prefix,
                             spool=str(tmp_path / "spool"), sample_interval=0,
                             metrics={"val/score": {"goal": "min"}} if name == "b" else None)
        for step, value in enumerate(points):
            run.log({"val/score": value}, step=step)
        run.finish("ok")
        assert run.flush(30) == 0
    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix))
    client, database = service.sink.client, service.sink.database

    def stored(_stats: Any) -> bool:
        ranked = client.query(f"SELECT count() FROM {database}.run_summary FINAL WHERE project = 'kafka-goals' "
                              "AND status = 'ok'").result_rows[0][0]
        return ranked == len(values) and declared_goals(client, database) == {"val/score": "min"}

    run_until(service, stored)
    assert declared_goals(client, database) == {"val/score": "min"}
    board = queries.leaderboard(client, database, "kafka-goals", "val/score")
    want = sorted(((n, min(v for v in pts if math.isfinite(v))) for n, pts in values.items()), key=lambda r: r[1])
    assert [(r[2], r[4]) for r in board.rows] == want
    assert board.columns[4] == "val/score min"
