"""The Optuna integration driven by a real Optuna study: each trial a run of the sweep, read back from ClickHouse.

A study of 10 trials with the real MedianPruner (trials enqueued with fixed params, so which ones are
pruned does not depend on the sampler's luck) runs a tracked objective that reports an intermediate
value per step, logs a training loss through `current_run()`, and fails in two ways (an exception,
a NaN return). The spool is ingested through the consumer's sink into chDB, and every run is compared
with what Optuna itself recorded (`study.trials`): params, intermediate values at their steps, the
final value, the status that says complete, pruned or failed; stored points counted with and without
FINAL.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from databases import fresh_database_dsn

optuna = pytest.importorskip("optuna", reason="the dev extra installs optuna: pip install 'runstream[dev]'")

from runstream.analysis import queries  # noqa: E402 - after the importorskip
from runstream.consumer import ClickHouseSink, ingest_spool  # noqa: E402
from runstream.consumer.dsn import connect  # noqa: E402
from runstream.producer.integrations.optuna import current_run, track  # noqa: E402

pytestmark = pytest.mark.integration
STEPS = 8
# x near 1 is good; the later, far-off trials fall behind the median at step 2 and are pruned
XS = [1.0, 1.2, 0.8, 1.1, 4.0, -3.0, 0.9, 1.05, 5.0, 0.95]
FAILS, RETURNS_NAN = 6, 7


def objective(trial: Any) -> float:
    x = trial.suggest_float("x", -6.0, 6.0)
    layers = trial.suggest_int("layers", 1, 4)
    run = current_run()
    assert run is not None and run.sweep == trial.study.study_name
    value = 0.0
    for step in range(STEPS):
        value = (x - 1.0) ** 2 + 1.0 / (step + 1) + 0.01 * layers
        run.log({"train_loss": value * 2}, step=step)
        trial.report(value, step)
        with pytest.warns(UserWarning, match="already reported"):  # Optuna keeps the first; so must the run
            trial.report(value + 100.0, step)
        if trial.number == FAILS and step == 3:
            raise RuntimeError("out of memory (simulated)")
        if trial.should_prune():
            raise optuna.TrialPruned()
    return math.nan if trial.number == RETURNS_NAN else value


@pytest.fixture(scope="module")
def study_db(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spool = tmp_path_factory.mktemp("optuna-spool")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="lr-sweep", direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    for number, x in enumerate(XS):
        study.enqueue_trial({"x": x, "layers": 1 + number % 4})
    tracked = track(objective, "tuning", group="resnet", job_type="trial", metric="val_loss",
                    intermediate_metric="val_loss_epoch", params={"dataset": "cifar10"}, spool=str(spool),
                    sample_interval=0)
    study.optimize(tracked, n_trials=len(XS), catch=(RuntimeError,))
    dsn = fresh_database_dsn(clickhouse_base, "optuna")
    report = ingest_spool(spool, ClickHouseSink(dsn))
    assert not report.rejected, report.rejected
    client, db = connect(dsn)
    return {"study": study, "client": client, "db": db, "dsn": dsn}


STATUS = {"COMPLETE": "ok", "PRUNED": "pruned", "FAIL": "failed"}


def runs_by_trial(study_db: dict[str, Any]) -> dict[int, dict[str, Any]]:
    table = queries.runs(study_db["client"], study_db["db"], project="tuning", sweep="lr-sweep")
    return {int(r["name"].rsplit("-", 1)[1]): r for r in table.records()}


def points(study_db: dict[str, Any], run_id: str, metric: str, final: bool = True) -> list[tuple[int, float]]:
    client, db = study_db["client"], study_db["db"]
    rows = client.query(f"SELECT step, value FROM {db}.metric_points {'FINAL' if final else ''} "
                        "WHERE run_id = {r:String} AND metric = {m:String} ORDER BY step",
                        parameters={"r": run_id, "m": metric}).result_rows
    return [(int(s), float(v)) for s, v in rows]


def test_the_study_pruned_and_failed_some_trials(study_db: dict[str, Any]) -> None:
    states = [t.state.name for t in study_db["study"].trials]
    # the far-off x (4, -3, 5) fall behind the median of the earlier trials once past the warm-up steps
    assert states == ["COMPLETE"] * 4 + ["PRUNED", "PRUNED", "FAIL", "FAIL", "PRUNED", "COMPLETE"], states


def test_each_trial_is_a_run_of_the_sweep_with_its_params_labels_and_status(study_db: dict[str, Any]) -> None:
    trials = study_db["study"].trials
    runs = runs_by_trial(study_db)
    assert sorted(runs) == [t.number for t in trials]
    for trial in trials:
        row = runs[trial.number]
        assert row["name"] == f"lr-sweep-trial-{trial.number}"
        assert (row["sweep"], row["group"], row["job_type"]) == ("lr-sweep", "resnet", "trial")
        assert row["status"] == STATUS[trial.state.name], (trial.number, trial.state)
        assert row["params.x"] == trial.params["x"] and row["params.layers"] == trial.params["layers"]
        assert row["params.dataset"] == "cifar10"
    client, db = study_db["client"], study_db["db"]
    errors = dict(client.query(f"SELECT r.run_name, f.error FROM {db}.run_finishes AS f FINAL "
                               f"INNER JOIN {db}.runs AS r FINAL ON f.run_id = r.run_id "
                               "WHERE r.project = 'tuning'").result_rows)
    assert errors[f"lr-sweep-trial-{FAILS}"] == "RuntimeError: out of memory (simulated)"
    assert "NaN" in errors[f"lr-sweep-trial-{RETURNS_NAN}"]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert errors[f"lr-sweep-trial-{pruned[0].number}"] == f"pruned at step {pruned[0].last_step}"
    tags = dict(client.query(f"SELECT run_name, tags FROM {db}.runs FINAL WHERE project = 'tuning'").result_rows)
    assert tags["lr-sweep-trial-3"]["optuna.trial"] == "3" and tags["lr-sweep-trial-3"]["optuna.study"] == "lr-sweep"
    assert tags["lr-sweep-trial-3"]["optuna.direction"] == "minimize"


def test_intermediate_and_final_values_are_points_at_their_steps(study_db: dict[str, Any]) -> None:
    trials = study_db["study"].trials
    runs = runs_by_trial(study_db)
    stored = 0
    for trial in trials:
        run_id = runs[trial.number]["run_id"]
        intermediate = points(study_db, run_id, "val_loss_epoch")
        assert intermediate == sorted(trial.intermediate_values.items()), trial.number  # the first report per step
        assert points(study_db, run_id, "val_loss_epoch", final=False) == intermediate  # each stored once
        assert len(points(study_db, run_id, "train_loss")) == len(intermediate)
        final = points(study_db, run_id, "val_loss")
        if trial.state.name == "COMPLETE":
            assert final == [(trial.last_step, trial.value)]
            assert runs[trial.number]["metrics.val_loss"] == trial.value
        else:
            assert final == []  # a pruned or failed trial has no objective value
        stored += len(intermediate) + len(final)
    logged = sum(len(t.intermediate_values) + (t.state.name == "COMPLETE") for t in trials)
    client, db = study_db["client"], study_db["db"]
    ids = [r["run_id"] for r in runs.values()]
    for final_clause in ("FINAL", ""):
        sql = (f"SELECT count() FROM {db}.metric_points {final_clause} WHERE metric != 'train_loss' "
               "AND has({ids:Array(String)}, toString(run_id))")
        count = client.query(sql, parameters={"ids": ids}).result_rows[0][0]
        assert count == stored == logged


def test_leaderboard_of_the_sweep_is_the_studys_best_trial(study_db: dict[str, Any]) -> None:
    study = study_db["study"]
    board = queries.leaderboard(study_db["client"], study_db["db"], "tuning", "val_loss", "min").records()
    assert board[0]["name"] == f"lr-sweep-trial-{study.best_trial.number}"
    assert board[0]["val_loss min"] == study.best_value
    assert len(board) == sum(t.state.name == "COMPLETE" for t in study.trials)


def test_multi_objective_values_get_a_metric_each(tmp_path: Path, clickhouse_base: str) -> None:
    study = optuna.create_study(study_name="pareto", directions=["minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))

    def two(trial: Any) -> tuple[float, float]:
        x = trial.suggest_float("x", 0.0, 1.0)
        return x * x, 1.0 - x

    study.optimize(track(two, "tuning-mo", metric=["loss", "acc"], spool=str(tmp_path), sample_interval=0),
                   n_trials=3)
    dsn = fresh_database_dsn(clickhouse_base, "optuna_mo")
    assert not ingest_spool(tmp_path, ClickHouseSink(dsn)).rejected
    client, db = connect(dsn)
    rows = {int(r["name"].rsplit("-", 1)[1]): r for r in queries.runs(client, db, sweep="pareto").records()}
    assert sorted(rows) == [0, 1, 2]
    for trial in study.trials:
        assert (rows[trial.number]["metrics.loss"], rows[trial.number]["metrics.acc"]) == tuple(trial.values)
        assert rows[trial.number]["status"] == "ok"


def test_bad_arguments_are_refused_before_any_trial() -> None:
    with pytest.raises(ValueError, match="^project: expected a non-empty string, got ''"):
        track(objective, "")
    with pytest.raises(TypeError, match="^objective: expected a function of the trial, got int"):
        track(3, "p")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^metric: expected a metric name, got ''"):
        track(objective, "p", metric=["loss", ""])


def test_without_optuna_the_import_names_the_extra() -> None:
    """In a fresh interpreter where optuna cannot be imported (sys.modules entry None), as without it."""
    code = ("import sys; sys.modules['optuna'] = None\n"
            "import runstream.producer.integrations.optuna\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "ImportError" in done.stderr and "pip install 'runstream[optuna]'" in done.stderr, done.stderr


def test_a_sweep_through_kafka_arrives_whole(kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str) -> None:
    """The same integration on the real broker and consumer group: every trial's run, its status and points."""
    import threading

    from runstream.consumer import ConsumerService, ConsumerSettings
    from runstream.producer.run import producer_stats

    study = optuna.create_study(study_name="kafka-sweep", direction="minimize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
    for number, x in enumerate([1.1, 1.2, 1.0, 4.0]):  # the last falls behind the median: pruned
        study.enqueue_trial({"x": x, "layers": 1 + number})
    before = producer_stats()["sent_events"]

    def quiet(trial: Any) -> float:  # the module's objective without its failures and double reports
        x, value = trial.suggest_float("x", -6.0, 6.0), 0.0
        for step in range(STEPS):
            value = (x - 1.0) ** 2 + 1.0 / (step + 1)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(track(quiet, "tuning", group="kafka", metric="val_loss", kafka=kafka_bootstrap,
                         topic_prefix=topic_prefix, sample_interval=0), n_trials=4)
    events = producer_stats()["sent_events"] - before
    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix))
    stop = threading.Event()
    timer = threading.Timer(60.0, stop.set)
    timer.start()
    try:
        stats = service.run(stop, stop_when=lambda s: s.events + s.dead_letters >= events)
    finally:
        timer.cancel()
    assert stats.dead_letters == 0 and stats.events >= events
    logged = sum(len(t.intermediate_values) + (t.state.name == "COMPLETE") for t in study.trials)
    assert stats.points == logged
    client, db = service.sink.client, service.sink.database
    rows = {r["name"]: r for r in queries.runs(client, db, sweep="kafka-sweep").records()}
    assert {name: row["status"] for name, row in rows.items()} == \
        {f"kafka-sweep-trial-{t.number}": STATUS[t.state.name] for t in study.trials}
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    for t in study.trials:
        assert rows[f"kafka-sweep-trial-{t.number}"]["group"] == "kafka"
        assert rows[f"kafka-sweep-trial-{t.number}"]["params.x"] == t.params["x"]
    for final_clause in ("FINAL", ""):
        stored = client.query(f"SELECT count() FROM {db}.metric_points {final_clause}").result_rows[0][0]
        assert stored == logged
