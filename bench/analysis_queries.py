"""Benchmark of the analysis questions on a synthetic project generated directly inside ClickHouse.

    .venv/bin/python bench/analysis_queries.py                       # 1,000 runs x 100,000 steps x 2 metrics
    .venv/bin/python bench/analysis_queries.py --points 10000000     # a quick run: fewer steps per run
    .venv/bin/python bench/analysis_queries.py --points 10000000 --redeliver-runs 1000 --relog-runs 100
    /tmp/mlvenv/bin/python bench/analysis_queries.py --mlflow --reuse      # + MLflow side by side

The project is written with INSERT ... SELECT FROM numbers() into the real tables (so the consumer's
materialized views run as they do in production), in slices of runs to bound memory. Each question is
timed as the CLI answers it (the same Python functions, including their validation queries), after
one warm-up, and the median of --repeat runs is printed as a markdown table.

The rows go in around the consumer, so once they are in, every run's `run_summary` row (what the run
list, the filter, the leaderboard and importance read) is computed once, as migration 7 fills it
(`runstream.consumer.run_summary.refresh_all`); the consumer rewrites a run's row after each batch.

--redeliver-runs N delivers the last tenth of the steps of N runs a second time (a consumer that
crashed before committing); --relog-runs M has M runs resume and log the last fifth of their steps
again a day later with other values. Those (run, metric) pairs are then summarised from
`metric_points FINAL` instead of the rollup when their run's summary is written: the run checks that
the leaderboard equals one computed from FINAL and prints what rewriting one run's summary costs the
writer, for a clean run and for one with a step delivered twice.

The questions include "run list: the 100 newest runs" (`runs --sort -started_at --limit 100`): the
first page of a run table.

The curve overlay is timed twice: as released before issue 14 (largestTriangleThreeBuckets, one point per
bucket: the `metric_curve` view of migrations 5-8) and as every path draws curves now (min, max and last per
bucket, NaN/±Inf counted: runstream.analysis.curves). Then a probe database holds one run of 200,000 steps
with a +1000 and a -1000 spike three steps apart (issue 14's case), and both ways say which spikes a 50- to
20,000-point curve of it still shows.

--mlflow (needs `pip install mlflow scipy`): a smaller project (--mlflow-runs x --mlflow-steps x
--metrics, default 100 x 2,000 x 2 = 400,000 points) is generated the same way into a second
database of the same chDB, then copied point for point into an MLflow sqlite store
(MlflowClient.log_batch, 1,000 metrics a call; params logged as MLflow stores them, as text). The
same questions are timed on both, in this process: runstream through the CLI's functions, MLflow
through its own client API plus the Python a user would write around it (mlflow_* below). The
answers are compared, and a markdown table with the ratio is printed before the large-scale one.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runstream.analysis import queries
from runstream.analysis.curves import history
from runstream.analysis.importance import eta_squared, importance
from runstream.analysis.views import METRIC_CURVE_V6, RUN_METRICS_FROM_POINTS_SQL
from runstream.consumer import ClickHouseSink
from runstream.consumer.migrations import SUSPECT_PAIRS
from runstream.consumer.run_summary import refresh, refresh_all

PROJECT = "bench"
METRICS = ("acc", "loss", "lr_sched", "grad_norm")
WHERE = "params.lr < 0.01 and metrics.acc > 0.9"

# Params derived from the run number r, in SQL, so points and params agree without a round trip.
_LR = "pow(10, -5 + 3 * ((r * 7919) % 1000) / 1000)"
_BATCH = "[32, 64, 128, 256][(r % 4) + 1]"
_OPTIMIZER = "['adamw', 'sgd', 'lion'][(r % 3) + 1]"
_DROPOUT = "((r * 104729) % 50) / 100"
# quality peaks at lr = 1e-3 and falls with batch size; acc rises to it, loss falls, plus noise
_QUALITY = f"exp(-pow(log10({_LR}) + 3, 2)) * (1 - 0.05 * log2({_BATCH} / 32))"
_VALUES = {
    "acc": f"0.1 + 0.85 * {_QUALITY} * (1 - exp(-5 * (step + 1) / {{steps}})) + (randCanonical() - 0.5) / 100",
    "loss": f"2.5 * exp(-5 * {_QUALITY} * (step + 1) / {{steps}}) + 0.1 + (randCanonical() - 0.5) / 50",
    "lr_sched": f"{_LR} * (1 - step / {{steps}})",
    "grad_norm": "1 + randCanonical()",
}


#: Shifts of a re-logged value by metric: a resumed run does not retrace its curve exactly.
_RELOGGED = {"acc": "value - 0.02", "loss": "value + 0.05", "lr_sched": "value", "grad_norm": "value * 1.1"}


def redeliveries(runs: int, steps: int, metrics: int, redeliver_runs: int, relog_runs: int) -> int:
    """Rows the faults add to the points generated: what `deliveries` sums to on top of runs x steps x metrics."""
    return (min(redeliver_runs, runs) * (steps - steps * 9 // 10) + min(relog_runs, runs) * (steps - steps * 4 // 5)) \
        * metrics


def add_faults(client: Any, db: str, runs: int, steps: int, redeliver_runs: int, relog_runs: int) -> None:
    """Deliver the tail of the first N runs again (same rows), and have the last M runs re-log their last fifth."""
    run_id = "concat('run-', leftPad(toString(number), 6, '0'))"
    if redeliver_runs:
        client.command(
            f"INSERT INTO {db}.metric_points (run_id, metric, step, value, time) "  # noqa: S608
            f"SELECT run_id, metric, step, value, time FROM {db}.metric_points FINAL "
            f"WHERE run_id IN (SELECT {run_id} FROM numbers({min(redeliver_runs, runs)})) "
            f"AND step >= {steps * 9 // 10}")
    if relog_runs:
        shifted = "multiIf(" + ", ".join(f"metric = '{m}', {e}" for m, e in _RELOGGED.items()) + ", value)"
        client.command(
            f"INSERT INTO {db}.metric_points (run_id, metric, step, value, time) "  # noqa: S608
            f"SELECT run_id, metric, step, {shifted}, time + toIntervalDay(1) FROM {db}.metric_points FINAL "
            f"WHERE run_id IN (SELECT {run_id} FROM numbers({runs - min(relog_runs, runs)}, {min(relog_runs, runs)})) "
            f"AND step >= {steps * 4 // 5}")


def generate(client: Any, db: str, runs: int, steps: int, metrics: int, slice_runs: int) -> None:
    started = time.monotonic()
    run_id = "concat('run-', leftPad(toString(r), 6, '0'))"
    client.command(
        f"INSERT INTO {db}.runs (run_id, project, run_name, user, host, started_at, event_id, gpu_count) "  # noqa: S608
        f"SELECT {run_id}, '{PROJECT}', concat('trial-', toString(r)), 'bench', 'node-' || toString(r % 16), "
        f"toDateTime64('2025-01-01 00:00:00', 6, 'UTC') + toIntervalSecond(r * 60), generateUUIDv4(), 8 "
        f"FROM (SELECT number AS r FROM numbers({runs}))")
    params = [("lr", "float", _LR, f"toString({_LR})"), ("batch_size", "int", _BATCH, f"toString({_BATCH})"),
              ("optimizer", "string", "NULL", _OPTIMIZER), ("dropout", "float", _DROPOUT, f"toString({_DROPOUT})")]
    for key, kind, number, text in params:
        client.command(
            f"INSERT INTO {db}.run_params (run_id, key, value_type, value_number, value_string, updated_at) "  # noqa: S608
            f"SELECT {run_id}, '{key}', '{kind}', {number}, {text}, toDateTime64('2025-01-01 00:00:00', 6, 'UTC') "
            f"FROM (SELECT number AS r FROM numbers({runs}))")
    client.command(
        f"INSERT INTO {db}.run_finishes (run_id, finished_at, status) "  # noqa: S608
        f"SELECT {run_id}, toDateTime64('2025-01-02 00:00:00', 6, 'UTC'), if(r % 10 = 9, 'failed', 'ok') "
        f"FROM (SELECT number AS r FROM numbers({runs})) WHERE r % 20 != 7")  # 5% never finished
    done = 0
    for first in range(0, runs, slice_runs):
        count = min(slice_runs, runs - first)
        for metric in METRICS[:metrics]:
            value = _VALUES[metric].format(steps=steps)
            client.command(
                f"INSERT INTO {db}.metric_points (run_id, metric, step, value, time) "  # noqa: S608
                f"SELECT {run_id}, '{metric}', step, {value}, "
                f"toDateTime64('2025-01-01 00:00:00', 6, 'UTC') + toIntervalMillisecond(step * 100) "
                f"FROM (SELECT {first} + intDiv(number, {steps}) AS r, toInt64(number % {steps}) AS step "
                f"FROM numbers({count * steps}))",
                settings={"max_insert_threads": 2, "max_threads": 2})
            done += count * steps
        rate = done / (time.monotonic() - started)
        print(f"\r  generated {done:,} points ({rate / 1e6:.1f} M/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    client.command(f"OPTIMIZE TABLE {db}.metric_summary_states FINAL")


def check_faults(client: Any, db: str, board: Any) -> str:
    """How many summaries the faults made suspect (recomputed from FINAL); the leaderboard checked against FINAL."""
    delivered = client.query(f"SELECT sum(deliveries_state) FROM {db}.metric_summary_states").result_rows[0][0]  # noqa: S608
    suspect = SUSPECT_PAIRS.format(metric_summary_states=f"{db}.metric_summary_states")
    recomputed = client.query(f"SELECT count() FROM ({suspect})").result_rows[0][0]  # noqa: S608
    exact = client.query(
        f"SELECT run_id, max_value FROM ({RUN_METRICS_FROM_POINTS_SQL.replace('{db}', db)}) "  # noqa: S608
        f"WHERE metric = 'acc' AND max_value IS NOT NULL ORDER BY max_value DESC, step_of_max, run_id LIMIT 10"
    ).result_rows
    if [(row[1], row[4]) for row in board.rows] != [tuple(row) for row in exact]:
        raise SystemExit(f"the leaderboard disagrees with FINAL over metric_points: {board.rows} vs {exact}")
    # What the consumer pays after a batch: rewriting one run's summary, clean or with a step delivered twice.
    suspect_run = client.query(f"SELECT any(run_id) FROM ({suspect})").result_rows[0][0]  # noqa: S608
    clean_run = client.query(f"SELECT any(run_id) FROM {db}.metric_summary_states "  # noqa: S608
                             f"WHERE run_id NOT IN (SELECT run_id FROM ({suspect}))").result_rows[0][0]
    costs = {name: timed(lambda run=run: refresh(client, db, [run]), 5)[0]
             for name, run in (("clean", clean_run), ("redelivered", suspect_run)) if run}
    return (f"; {delivered:,} rows delivered, {recomputed:,} (run, metric) pairs with a step delivered twice "
            f"(summarised from FINAL when their run's summary is rewritten: one run's rewrite "
            + ", ".join(f"{name} {ms:.1f} ms" for name, ms in costs.items())
            + "); leaderboard equal to FINAL's")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    result = fn()  # warm-up (and the result, for the sanity column)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def prepare(client: Any, db: str, runs: int, steps: int, metrics: int, slice_runs: int,
            reuse: bool, redeliver_runs: int = 0, relog_runs: int = 0) -> tuple[int, int]:
    """Generate the project into `db` (unless --reuse finds one of this size and these faults); points and
    bytes on disk."""
    want = runs * steps * metrics
    delivered = want + redeliveries(runs, steps, metrics, redeliver_runs, relog_runs)
    have = client.query(f"SELECT count() FROM {db}.metric_points FINAL").result_rows[0][0]  # noqa: S608
    had = client.query(f"SELECT sum(deliveries_state) FROM {db}.metric_summary_states").result_rows[0][0]  # noqa: S608
    if not (reuse and have == want and had == delivered):
        for table in ("runs", "run_params", "run_finishes", "metric_points", "metric_summary_states", "run_summary"):
            client.command(f"TRUNCATE TABLE {db}.{table}")
        print(f"generating {runs:,} runs x {steps:,} steps x {metrics} metrics = {want:,} points into {db} ...",
              file=sys.stderr)
        start = time.monotonic()
        generate(client, db, runs, steps, metrics, slice_runs)
        add_faults(client, db, runs, steps, redeliver_runs, relog_runs)
        client.command(f"OPTIMIZE TABLE {db}.metric_summary_states FINAL")  # merged, as background merges leave it
        # The rows went in around the consumer, so the per-run summary is computed once here, as
        # migration 7 fills it (the consumer rewrites a run's row after each batch that touches it).
        summary_start = time.monotonic()
        refresh_all(client, db)
        print(f"  generated in {time.monotonic() - start:.0f}s (run_summary of every run: "
              f"{time.monotonic() - summary_start:.1f}s)", file=sys.stderr)
    points = client.query(f"SELECT count() FROM {db}.metric_points FINAL").result_rows[0][0]  # noqa: S608
    size = client.query("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {db:String} AND active",
                        parameters={"db": db}).result_rows[0][0]
    return points, size


def overlay_runs(runs: int) -> list[str]:
    return [f"run-{i:06d}" for i in range(0, runs, max(1, runs // 10))][:10]


Question = tuple[str, Callable[[], Any], Callable[[Any], str]]


def lttb_overlay(client: Any, db: str, run_ids: list[str], metric: str, points: int) -> list[Any]:
    """The overlay as released before issue 14: the `metric_curve` view of migrations 5-8 (largest triangle
    three buckets, one point per bucket, NaN/±Inf left out), its SQL run inline."""
    select = METRIC_CURVE_V6.select.format(metric_points=f"{db}.metric_points")
    return list(client.query(select, parameters={"metric": metric, "runs": run_ids, "points": points}).result_rows)


def runstream_questions(client: Any, db: str, runs: int) -> list[Question]:
    overlay = overlay_runs(runs)
    return [
        ("leaderboard (best acc, top 10)", lambda: queries.leaderboard(client, db, PROJECT, "acc", "max", 10),
         lambda t: f"#1 {t.rows[0][2]} acc={t.rows[0][4]:.4f}"),
        ("10-run curve overlay, 1,000 buckets each: min, max, last (spikes kept)",
         lambda: queries.metric_history(client, db, overlay, ["acc"], points=1000),
         lambda t: f"{len(t.rows)} buckets"),
        (f"filter `{WHERE}`, sorted, limit 20",
         lambda: queries.runs(client, db, project=PROJECT, where=WHERE, sort="-metrics.acc", limit=20),
         lambda t: f"{len(t.rows)} runs"),
        ("importance of params for acc", lambda: importance(client, db, PROJECT, "acc"),
         lambda t: f"top: {t.rows[0][0]} {t.rows[0][4]:+.2f}"),
        ("run list: the 100 newest runs",
         lambda: queries.runs(client, db, project=PROJECT, sort="-started_at", limit=100),
         lambda t: f"{len(t.rows)} runs"),
    ]


LTTB_LABEL = "10-run curve overlay, 1,000 points each: largestTriangleThreeBuckets (before issue 14)"


def lttb_question(client: Any, db: str, runs: int) -> Question:
    return (LTTB_LABEL, lambda: lttb_overlay(client, db, overlay_runs(runs), "acc", 1000),
            lambda rows: f"{len(rows)} points")


def spike_recall(client: Any, dsn: str, base_db: str, steps: int = 200_000) -> str:
    """One run of `steps` steps with a +1000 and a -1000 spike three steps apart mid-way, in a database of its
    own: which of them a curve of 50 to 20,000 points shows, the old way (LTTB) and the bucketed way."""
    db = f"{base_db}_spike_probe"
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    ClickHouseSink(dsn, client=client, database=db)  # migrated like the project's database
    client.command(f"TRUNCATE TABLE {db}.metric_points")
    up, down = steps // 2, steps // 2 + 3
    client.command(
        f"INSERT INTO {db}.metric_points (run_id, metric, step, value, time) "  # noqa: S608
        f"SELECT 'probe', 'acc', number, multiIf(number = {up}, 1000, number = {down}, -1000, "
        f"0.5 + (randCanonical() - 0.5) / 100), toDateTime64('2025-01-01 00:00:00', 6, 'UTC') "
        f"+ toIntervalMillisecond(number * 100) FROM numbers({steps})")
    seen = []
    for points in (50, 500, 2000, 20_000):
        if points >= steps:
            continue
        old = [value for _run, _step, value in lttb_overlay(client, db, ["probe"], "acc", points)]
        new = history(client, db, ["probe"], ["acc"], points=points).rows
        shown = [name for name, ok in (("+1000", 1000.0 in old), ("-1000", -1000.0 in old)) if ok]
        kept = [name for name, ok in (("+1000", any(r[6] == 1000.0 for r in new)),
                                      ("-1000", any(r[5] == -1000.0 for r in new))) if ok]
        seen.append(f"{points:,} points: LTTB shows {' and '.join(shown) or 'neither'}, "
                    f"min/max/last buckets show {' and '.join(kept) or 'neither'}")
    return f"spikes +1000 and -1000 three steps apart in {steps:,} steps: " + "; ".join(seen)


def time_all(questions: list[Question], repeat: int, side: str) -> list[tuple[str, float, Any, str]]:
    results = []
    for label, fn, check in questions:
        median_ms, result = timed(fn, repeat)
        results.append((label, median_ms, result, check(result)))
        print(f"  {side}: {label}: {median_ms:.1f} ms", file=sys.stderr)
    return results


# --- MLflow: the same runs in a local sqlite store, the same questions through MLflow's client API ---

MLFLOW_EXPERIMENT = "runstream-bench"


def load_mlflow(client: Any, db: str, store: Path) -> tuple[Any, str, dict[str, str], float]:
    """Copy every run of `db` (params, status, every metric point) into a fresh MLflow sqlite store.
    Returns the MlflowClient, the experiment id, runstream run_id -> MLflow run id, and load seconds."""
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient

    if store.exists():
        for path in sorted(store.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    store.mkdir(parents=True, exist_ok=True)
    ml = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = ml.create_experiment(MLFLOW_EXPERIMENT, artifact_location=(store / "artifacts").as_uri())
    params: dict[str, list[Any]] = {}
    for run_id, key, text, number in client.query(
            f"SELECT run_id, key, value_string, value_number FROM {db}.run_params FINAL").result_rows:  # noqa: S608
        # what mlflow.log_param(key, value) stores: str() of the value the training script had
        params.setdefault(run_id, []).append(Param(key, str(queries.param_value(text, number))))
    status = dict(client.query(f"SELECT run_id, status FROM {db}.run_finishes FINAL").result_rows)  # noqa: S608
    runs = client.query(f"SELECT run_id, toUnixTimestamp64Milli(started_at) FROM {db}.runs FINAL "  # noqa: S608
                        "ORDER BY run_id").result_rows
    started = time.monotonic()
    ids: dict[str, str] = {}
    points = 0
    for run_id, start_ms in runs:
        info = ml.create_run(experiment, start_time=start_ms, run_name=run_id).info
        ids[run_id] = info.run_id
        ml.log_batch(info.run_id, params=params.get(run_id, []))
        rows = client.query(
            f"SELECT metric, step, value, toUnixTimestamp64Milli(time) FROM {db}.metric_points "  # noqa: S608
            "WHERE run_id = {run:String} ORDER BY metric, step", parameters={"run": run_id}).result_rows
        for first in range(0, len(rows), 1000):  # MLflow's limit: 1,000 metrics per log_batch
            ml.log_batch(info.run_id, metrics=[Metric(m, float(v), int(t), int(step))
                                               for m, step, v, t in rows[first:first + 1000]])
        points += len(rows)
        if run_id in status:
            ml.set_terminated(info.run_id, "FINISHED" if status[run_id] == "ok" else "FAILED",
                              end_time=start_ms + 86_400_000)
        else:
            assert ml.get_run(info.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING)
        if len(ids) % 10 and len(ids) != len(runs):
            continue
        rate = points / (time.monotonic() - started)
        print(f"\r  MLflow: loaded {len(ids):,} runs, {points:,} points ({rate:,.0f} points/s)", end="",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return ml, experiment, ids, time.monotonic() - started


def mlflow_all_runs(ml: Any, experiment: str, filter_string: str = "", order_by: list[str] | None = None) -> list[Any]:
    """search_runs, every page (what a user must do to see all runs)."""
    out, token = [], None
    while True:
        page = ml.search_runs([experiment], filter_string, max_results=1000, order_by=order_by, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def mlflow_best(ml: Any, run_id: str, metric: str) -> tuple[float, int] | None:
    """A run's best (max) value and the first step reaching it: MLflow keeps only the LAST value per run
    (run.data.metrics), so the best needs the run's whole history."""
    best = None
    for m in ml.get_metric_history(run_id, metric):
        if math.isfinite(m.value) and (best is None or m.value > best[0] or (m.value == best[0] and m.step < best[1])):
            best = (m.value, m.step)
    return best


def mlflow_leaderboard(ml: Any, experiment: str, metric: str, limit: int) -> list[tuple[str, float, int]]:
    ranked = []
    for run in mlflow_all_runs(ml, experiment):
        best = mlflow_best(ml, run.info.run_id, metric)
        if best is not None:
            ranked.append((-best[0], best[1], run.info.start_time, run.info.run_name))
    ranked.sort()
    return [(name, -value, step) for value, step, _, name in ranked[:limit]]


def min_max_last(steps: list[int], values: list[float], points: int) -> list[list[Any]]:
    """runstream.analysis.curves' buckets by step, in plain Python: bucket floor((x - lo) / (hi - lo) * N);
    per bucket first and last x, finite min and max, last value, and the point/NaN/+Inf/-Inf counts."""
    lo, hi = float(steps[0]), float(steps[-1])
    buckets: dict[int, list[tuple[int, float]]] = {}
    for step, value in zip(steps, values, strict=True):
        b = min(points - 1, math.floor((step - lo) / (hi - lo) * points)) if hi > lo else 0
        buckets.setdefault(b, []).append((step, value))
    out = []
    for b in sorted(buckets):
        pts = buckets[b]
        finite = [v for _, v in pts if math.isfinite(v)]
        out.append([float(pts[0][0]), float(pts[-1][0]), min(finite, default=None), max(finite, default=None),
                    pts[-1][1], len(pts), sum(math.isnan(v) for _, v in pts), sum(v == math.inf for _, v in pts),
                    sum(v == -math.inf for _, v in pts)])
    return out


def mlflow_overlay(ml: Any, run_ids: list[str], metric: str, points: int) -> list[list[Any]]:
    """What runstream's overlay answers (min, max and last per bucket), from MLflow's metric history."""
    out = []
    for run_id in run_ids:
        history = sorted((m.step, m.value) for m in ml.get_metric_history(run_id, metric))
        out.extend([run_id, *bucket] for bucket in min_max_last([s for s, _ in history], [v for _, v in history],
                                                                 points))
    return out


MLFLOW_FILTER = "params.lr < '0.01' and metrics.acc > 0.9"


def mlflow_filter(ml: Any, experiment: str, limit: int) -> list[str]:
    """MLflow's search grammar rejects `<` on params (they are strings: only =, !=, LIKE, ILIKE), so the
    metric half runs in the store and the lr half in Python, on float(params.lr)."""
    runs = mlflow_all_runs(ml, experiment, "metrics.acc > 0.9", ["metrics.acc DESC", "attributes.start_time ASC"])
    return [run.info.run_name for run in runs if float(run.data.params["lr"]) < 0.01][:limit]


def correlations(params: dict[str, dict[str, str]], values: dict[str, float]) -> dict[str, float | None]:
    """Spearman rho (scipy) for params that all parse as numbers, eta² over the values for the rest."""
    from scipy.stats import spearmanr

    out: dict[str, float | None] = {}
    for key in sorted({key for run in params.values() for key in run}):
        present = [run for run in values if key in params[run]]
        texts, ys = [params[run][key] for run in present], [values[run] for run in present]
        try:
            xs = [float(t) for t in texts]
        except ValueError:
            groups: dict[str, list[float]] = {}
            for text, y in zip(texts, ys, strict=True):
                groups.setdefault(text, []).append(y)
            out[key] = eta_squared(groups)
            continue
        rho = spearmanr(xs, ys).statistic if len(set(xs)) > 1 else None
        out[key] = None if rho is None or math.isnan(rho) else float(rho)
    return out


def mlflow_importance(ml: Any, experiment: str, metric: str, best: bool) -> dict[str, float | None]:
    """best=True: per-run best from get_metric_history (what runstream's `importance` ranks by);
    best=False: the last value search_runs already returns (one call, a different question)."""
    params, values = {}, {}
    for run in mlflow_all_runs(ml, experiment):
        if best:
            found = mlflow_best(ml, run.info.run_id, metric)
            value = found[0] if found else None
        else:
            value = run.data.metrics.get(metric)
        if value is not None and math.isfinite(value):
            params[run.info.run_name], values[run.info.run_name] = dict(run.data.params), value
    return correlations(params, values)


def runstream_final_importance(client: Any, db: str, metric: str) -> dict[str, float | None]:
    """The final-value variant on the runstream side: one `runs` query, then the same Python as MLflow's."""
    table = queries.runs(client, db, project=PROJECT)
    keys = [c for c in table.columns if c.startswith("params.")]
    params, values = {}, {}
    for record in table.records():
        value = record.get(f"metrics.{metric}")
        if value is not None and math.isfinite(value):
            params[record["run_id"]] = {k[7:]: str(record[k]) for k in keys if record[k] is not None}
            values[record["run_id"]] = value
    return correlations(params, values)


def close(a: dict[str, float | None], b: dict[str, float | None]) -> bool:
    return a.keys() == b.keys() and all(
        (a[k] is None) == (b[k] is None) and (a[k] is None or abs(a[k] - b[k]) < 1e-9) for k in a)  # type: ignore[operator]


def compare_mlflow(args: argparse.Namespace, client: Any, base_db: str) -> list[str]:
    """Side by side on the same runs; returns the markdown lines to print."""
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db = f"{base_db}_mlflow_size"
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    ClickHouseSink(args.clickhouse, client=client, database=db)
    points, _ = prepare(client, db, args.mlflow_runs, args.mlflow_steps, args.metrics, args.slice_runs, args.reuse)
    ml, experiment, ids, load_s = load_mlflow(client, db, Path(args.mlflow_dir))
    overlay = overlay_runs(args.mlflow_runs)
    overlay_ml = [ids[run_id] for run_id in overlay]

    ours = time_all([*runstream_questions(client, db, args.mlflow_runs),
                     ("leaderboard by the final value (MLflow's own `order_by`)",
                      lambda: queries.runs(client, db, project=PROJECT, sort="-metrics.acc", limit=10),
                      lambda t: f"#1 {t.rows[0][0]}"),
                     ("importance on the final value", lambda: runstream_final_importance(client, db, "acc"),
                      lambda r: f"{len(r)} params")], args.repeat, "runstream")
    # (the MLflow list below follows the order of runstream_questions, then the two extras)
    theirs = time_all([
        ("leaderboard", lambda: mlflow_leaderboard(ml, experiment, "acc", 10), lambda r: f"#1 {r[0][0]}"),
        ("overlay", lambda: mlflow_overlay(ml, overlay_ml, "acc", 1000), lambda r: f"{len(r)} buckets"),
        ("filter", lambda: mlflow_filter(ml, experiment, 20), lambda r: f"{len(r)} runs"),
        ("importance", lambda: mlflow_importance(ml, experiment, "acc", best=True), lambda r: f"{len(r)} params"),
        ("run list", lambda: [r.info.run_name for r in ml.search_runs(
            [experiment], order_by=["attributes.start_time DESC"], max_results=100)], lambda r: f"{len(r)} runs"),
        ("leaderboard by final", lambda: [r.info.run_name for r in ml.search_runs(
            [experiment], order_by=["metrics.acc DESC", "attributes.start_time ASC"], max_results=10)],
         lambda r: f"#1 {r[0]}"),
        ("importance final", lambda: mlflow_importance(ml, experiment, "acc", best=False),
         lambda r: f"{len(r)} params"),
    ], args.mlflow_repeat, "MLflow")

    # the same answers? (so the ratio compares equal work)
    board, curve, found, imp, listed, final_board, final_imp = (r[2] for r in ours)
    m_board, m_curve, m_found, m_imp, m_listed, m_final_board, m_final_imp = (r[2] for r in theirs)
    by_id = {v: k for k, v in ids.items()}
    curve_ml = [[by_id[run], *bucket] for run, *bucket in m_curve]
    same = [
        [(row[1], row[4], row[5]) for row in board.rows] == m_board,
        sorted(curve_ml, key=str) == sorted(([row[0], *row[3:]] for row in curve.rows), key=str),
        [row[0] for row in found.rows] == m_found,
        close({row[0][7:]: row[4] for row in imp.rows}, m_imp),
        [row[0] for row in listed.rows] == m_listed,
        [row[0] for row in final_board.rows] == m_final_board,
        close(final_imp, m_final_imp),
    ]
    try:
        ml.search_runs([experiment], MLFLOW_FILTER)
        string_filter = "accepted"
    except Exception as error:  # noqa: BLE001 - report whatever MLflow says
        string_filter = f"rejected: {str(error).splitlines()[0]}"

    lines = [f"\nrunstream vs MLflow on the same runs: {args.mlflow_runs:,} runs x {args.mlflow_steps:,} steps x "
             f"{args.metrics} metrics = {points:,} points; MLflow {mlflow.__version__} sqlite store "
             f"({Path(args.mlflow_dir) / 'mlflow.db'}, loaded in {load_s:.0f}s = {points / load_s:,.0f} points/s "
             f"by log_batch); runstream in chDB {client.query('SELECT version()').result_rows[0][0]} "
             f"(database {db}); medians of {args.repeat} (runstream) and {args.mlflow_repeat} (MLflow) "
             "after one warm-up each; ratio = MLflow / runstream (above 1: runstream is faster)\n",
             "| question | runstream ms | MLflow ms | ratio | same answer |", "|---|---:|---:|---:|---|"]
    for (label, ours_ms, _, _), (_, theirs_ms, _, _), ok in zip(ours, theirs, same, strict=True):
        ratio = theirs_ms / ours_ms
        shown = f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2f}x"
        lines.append(f"| {label} | {ours_ms:.1f} | {theirs_ms:.1f} | {shown} | {'yes' if ok else 'NO'} |")
    lines.append(f"\nMLflow's `search_runs(filter_string=\"{MLFLOW_FILTER}\")`: {string_filter}; the MLflow "
                 "filter above runs `metrics.acc > 0.9` in the store and `float(params.lr) < 0.01` in Python.")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clickhouse", default=f"chdb://{Path(tempfile.gettempdir()) / 'runstream-bench-analysis'}"
                        "?database=bench_analysis")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=2, choices=range(1, len(METRICS) + 1))
    parser.add_argument("--points", type=int, default=None,
                        help="total points instead of --steps (steps = points / runs / metrics)")
    parser.add_argument("--slice-runs", type=int, default=50, help="runs per INSERT (bounds memory)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="keep an already generated project")
    parser.add_argument("--mlflow", action="store_true",
                        help="also answer the questions through MLflow on a smaller copy of the project")
    parser.add_argument("--mlflow-runs", type=int, default=100)
    parser.add_argument("--mlflow-steps", type=int, default=2000)
    parser.add_argument("--mlflow-repeat", type=int, default=3)
    parser.add_argument("--mlflow-dir", default=str(Path(tempfile.gettempdir()) / "runstream-bench-mlflow"),
                        help="folder of the MLflow sqlite store (emptied and reloaded every run)")
    parser.add_argument("--no-large", action="store_true", help="with --mlflow: skip the large-scale runstream table")
    parser.add_argument("--redeliver-runs", type=int, default=0,
                        help="deliver the last tenth of the steps of this many runs twice")
    parser.add_argument("--relog-runs", type=int, default=0,
                        help="this many runs log the last fifth of their steps again, a day later, other values")
    args = parser.parse_args()
    steps = args.points // (args.runs * args.metrics) if args.points else args.steps

    sink = ClickHouseSink(args.clickhouse)
    client, db = sink.client, sink.database
    side_by_side = compare_mlflow(args, client, db) if args.mlflow else []
    if args.mlflow and args.no_large:
        print("\n".join(side_by_side))
        return 0
    points, size = prepare(client, db, args.runs, steps, args.metrics, args.slice_runs, args.reuse,
                           args.redeliver_runs, args.relog_runs)
    results = time_all(runstream_questions(client, db, args.runs), args.repeat, "runstream")
    results[2:2] = time_all([lttb_question(client, db, args.runs)], args.repeat, "runstream")  # next to the overlay
    faults = check_faults(client, db, results[0][2]) if args.redeliver_runs or args.relog_runs else ""
    recall = spike_recall(client, args.clickhouse, db)

    print("\n".join(side_by_side))
    print(f"\nrunstream analysis queries: {points:,} points, {args.runs:,} runs, {steps:,} steps x {args.metrics} "
          f"metrics ({size / 2**30:.2f} GiB on disk), chDB {client.query('SELECT version()').result_rows[0][0]}, "
          f"median of {args.repeat}{faults}\n")
    print("| question | runstream median (ms) | result |")
    print("|---|---:|---|")
    for label, median_ms, _, shown in results:
        print(f"| {label} | {median_ms:.1f} | {shown} |")
    print(f"\n{recall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
