"""A step logged again: the latest value of each step wins in every per-run summary, as it does in FINAL.

`metric_points` keeps the latest `time` of each (run, metric, step) (ReplacingMergeTree, read with
FINAL); the `metric_summary` rollup's materialized view saw the superseded value too. These tests
re-log step 10 of a run from 0.9999 to 0.1 (and its loss from 0.0001 to 1.5) in a later insert, in
the same insert, redelivered, and across a month boundary of the point's time, and check best,
min/max, the leaderboard rank, `run_overview` and importance against Python over the latest values;
then a seeded random workload (out-of-order, re-logged, redelivered, gapped, NaN/±Inf/-0.0/denormal)
compares every summary column with Python and with a FINAL computation over `metric_points`.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from metric_events import Point, write_points

import runstream
from runstream.analysis import queries
from runstream.analysis.importance import importance
from runstream.analysis.views import RUN_METRICS_FROM_POINTS_SQL
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.migrations import METRIC_SUMMARY_V2, SUSPECT_PAIRS, create_view_sql
from runstream.consumer.table_spec import View
from runstream.monitoring.metric_direction import LOWER_IS_BETTER_SQL, lower_is_better

pytestmark = pytest.mark.integration

SECOND_US = 1_000_000
HOUR_US = 3600 * SECOND_US
DAY_US = 24 * HOUR_US
T0 = 1_706_738_400 * SECOND_US  # 2024-01-31 22:00 UTC
MONTH_END = 1_706_745_599 * SECOND_US  # 2024-01-31 23:59:59 UTC: one second later it is February
NOW = T0 + 400 * DAY_US  # the consumer's clock: every point lies in its past

#: (run_id, metric, step, value, time_us), in delivery order.
Summary = dict[str, Any]
SUMMARY_COLUMNS = ("first_value", "last_value", "min_value", "max_value", "step_of_min", "step_of_max",
                   "first_step", "last_step", "points", "best_value", "best_step")


# --- What was logged, summarised in Python ------------------------------------------------------

def latest(delivered: list[Point]) -> dict[tuple[str, str], dict[int, float]]:
    """What FINAL keeps: per step, the value with the highest time (on equal times, the later delivery)."""
    kept: dict[tuple[str, str], dict[int, tuple[int, float]]] = defaultdict(dict)
    for run_id, metric, step, value, t in delivered:
        held = kept[run_id, metric].get(step)
        if held is None or t >= held[0]:
            kept[run_id, metric][step] = (t, value)
    return {key: {step: tv[1] for step, tv in by_step.items()} for key, by_step in kept.items()}


def summarise(metric: str, by_step: dict[int, float]) -> Summary:
    """metric_summary's columns, as documented: min/max skip NaN (±Inf count), ties to the earliest step."""
    steps = sorted(by_step)
    numbers = [(by_step[s], s) for s in steps if not math.isnan(by_step[s])]
    low = min(numbers, key=lambda vs: (vs[0], vs[1]), default=None)
    high = min(numbers, key=lambda vs: (-vs[0], vs[1]), default=None)
    best = low if lower_is_better(metric) else high
    return {
        "first_value": by_step[steps[0]], "last_value": by_step[steps[-1]],
        "min_value": low[0] if low else None, "max_value": high[0] if high else None,
        "step_of_min": low[1] if low else None, "step_of_max": high[1] if high else None,
        "first_step": steps[0], "last_step": steps[-1], "points": len(steps),
        "best_value": best[0] if best else None, "best_step": best[1] if best else None,
    }


def expected_summaries(delivered: list[Point]) -> dict[tuple[str, str], Summary]:
    return {key: summarise(key[1], by_step) for key, by_step in latest(delivered).items()}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def assert_summaries_equal(got: dict[tuple[str, str], Summary], want: dict[tuple[str, str], Summary],
                           label: str) -> None:
    assert got.keys() == want.keys(), label
    wrong = [(key, column, got[key][column], want[key][column]) for key in sorted(want) for column in want[key]
             if not same(got[key][column], want[key][column])]
    assert not wrong, f"{label}: {len(wrong)} cells differ, first: {wrong[:5]}"


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho with average ranks for ties, written out here so the expectation is independent."""
    def ranks(values: list[float]) -> list[float]:
        out = [0.0] * len(values)
        for value in set(values):
            at = [i for i, v in enumerate(values) if v == value]
            below = sum(1 for v in values if v < value)
            for i in at:
                out[i] = below + (len(at) + 1) / 2
        return out
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


# --- Writing points as the consumer does ---------------------------------------------------------

def read_summaries(client: Any, sql: str) -> dict[tuple[str, str], Summary]:
    """(run_id, metric) -> every other column of the query's rows."""
    result = client.query(sql)
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    return {(row.pop("run_id"), row.pop("metric")): row for row in rows}


def final_summaries_sql(db: str) -> str:
    """The summary columns computed from the raw points with FINAL: the reference the rollup must equal."""
    return f"""
        SELECT run_id, metric,
            argMin(value, step) AS first_value, argMax(value, step) AS last_value,
            min(if(isNaN(value), NULL, value)) AS min_value, max(if(isNaN(value), NULL, value)) AS max_value,
            if(min_value IS NULL, NULL, argMin(step, (isNaN(value), value, step))) AS step_of_min,
            if(max_value IS NULL, NULL, argMax(step, (NOT isNaN(value), value, -step))) AS step_of_max,
            min(step) AS first_step, max(step) AS last_step, count() AS points,
            if({LOWER_IS_BETTER_SQL}, min_value, max_value) AS best_value,
            if({LOWER_IS_BETTER_SQL}, step_of_min, step_of_max) AS best_step
        FROM {db}.metric_points FINAL GROUP BY run_id, metric
    """  # noqa: S608 - test text


def released_summary(client: Any, db: str) -> str:
    """Migration 2's metric_summary (the rollup alone) as a view of its own, to compare with."""
    view = View("metric_summary_released", METRIC_SUMMARY_V2.select)
    client.command(create_view_sql(view, db))
    return f"{db}.metric_summary_released"


def recomputed(client: Any, db: str) -> set[tuple[str, str]]:
    """The pairs the view summarises from FINAL (a step delivered twice); it answers the others from the rollup."""
    sql = SUSPECT_PAIRS.format(metric_summary_states=f"{db}.metric_summary_states")
    return {(run_id, metric) for run_id, metric in client.query(sql).result_rows}


# --- Step 10 logged again --------------------------------------------------------------------------

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
TARGET = 3  # the run that re-logs step 10


def start_runs(sink: ClickHouseSink, spool: Path, project: str) -> list[str]:
    """Runs with params, started and finished through the SDK's spool (their points come separately)."""
    ids = []
    for number, lr in enumerate(LRS):
        run = runstream.init(project, f"trial-{number}", params={"lr": lr, "seed": number}, spool=str(spool),
                             sample_interval=0)
        run.finish("ok")
        ids.append(run.run_id)
    report = ingest_spool(spool, sink)
    assert not report.rejected, report.rejected
    return ids


def original_points(ids: list[str], start_us: int) -> list[Point]:
    """acc rises to about 0.5-0.9, loss falls; the target run's step 10 is the best of both, by far."""
    points: list[Point] = []
    for number, run_id in enumerate(ids):
        for step in range(20):
            acc = 0.3 + 0.07 * number + 0.01 * step
            loss = 2.0 - 0.05 * step + 0.03 * number
            if number == TARGET and step == 10:
                acc, loss = 0.9999, 0.0001
            t = start_us + step * SECOND_US // 2
            points += [(run_id, "acc", step, acc, t), (run_id, "loss", step, loss, t)]
    return points


def relogged_points(ids: list[str], at_us: int) -> list[Point]:
    return [(ids[TARGET], "acc", 10, 0.1, at_us), (ids[TARGET], "loss", 10, 1.5, at_us)]


def deliveries(case: str, ids: list[str]) -> list[list[Point]]:
    """The inserts of each case, in order."""
    if case == "across a month boundary":  # the point in January's partition, its re-log in February's
        return [original_points(ids, MONTH_END - 10 * SECOND_US), relogged_points(ids, MONTH_END + 2 * SECOND_US)]
    original, again = original_points(ids, T0), relogged_points(ids, T0 + HOUR_US)
    return {
        "in a later insert": [original, again],
        "in the same insert": [original + again],
        "redelivered twice": [original, again, original, again, again],
        "never (redelivered only)": [original, original],
    }[case]


CASES = ["in a later insert", "in the same insert", "redelivered twice", "across a month boundary",
         "never (redelivered only)"]


@pytest.mark.parametrize("case", CASES)
def test_a_relogged_step_changes_best_min_max_rank_and_importance_exactly(
    clickhouse_dsn: str, tmp_path: Path, case: str,
) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    ids = start_runs(sink, tmp_path / "spool", "p")
    delivered: list[Point] = []
    for points in deliveries(case, ids):
        write_points(sink, points, NOW)
        delivered += points
    relogged = case != "never (redelivered only)"
    by_step = latest(delivered)
    assert by_step[ids[TARGET], "acc"][10] == (0.1 if relogged else 0.9999)

    # Every column of every (run, metric), against Python over the latest values and against FINAL.
    want = expected_summaries(delivered)
    got = read_summaries(client, f"SELECT * FROM {db}.metric_summary")
    assert_summaries_equal(got, want, "metric_summary vs Python")
    assert_summaries_equal(read_summaries(client, final_summaries_sql(db)), want, "FINAL vs Python")
    target = got[ids[TARGET], "acc"]
    if relogged:
        assert (target["max_value"], target["step_of_max"]) == (0.3 + 0.07 * TARGET + 0.01 * 19, 19)
        assert (got[ids[TARGET], "loss"]["min_value"], got[ids[TARGET], "loss"]["step_of_min"]) == \
            (2.0 - 0.05 * 19 + 0.03 * TARGET, 19)
        twice = {(ids[TARGET], "acc"), (ids[TARGET], "loss")} if case != "redelivered twice" else set(want)
        assert recomputed(client, db) == twice, "pairs with every step delivered once are answered by the rollup"
    else:
        assert (target["max_value"], target["step_of_max"]) == (0.9999, 10)
        released = read_summaries(client, f"SELECT * FROM {released_summary(client, db)}")
        assert_summaries_equal(released, got, "without re-logs: the released rollup's answers, cell for cell")
    if case == "across a month boundary":
        partitions = client.query(f"SELECT DISTINCT _partition_id FROM {db}.metric_points "
                                  "WHERE step = 10 ORDER BY 1").result_rows
        assert partitions == [("202401",), ("202402",)]

    # The leaderboard (max acc, min loss) and the best map of run_overview.
    for metric, mode in (("acc", "max"), ("loss", "min")):
        best = {run_id: summary["best_value"] for (run_id, name), summary in want.items() if name == metric}
        order = sorted(ids, key=lambda r: ((-best[r] if mode == "max" else best[r]), want[r, metric]["best_step"],
                                           ids.index(r)))
        board = queries.leaderboard(client, db, "p", metric, mode)
        assert [row[1] for row in board.rows] == order, (metric, case)
        assert [row[4] for row in board.rows] == [best[r] for r in order]
        rank = order.index(ids[TARGET]) + 1
        assert rank == (1 if not relogged else {"acc": 3, "loss": 4}[metric]), (metric, rank)
    overview = dict(client.query(f"SELECT run_id, best FROM {db}.run_overview").result_rows)
    assert {r: overview[r]["acc"] for r in ids} == {r: want[r, "acc"]["best_value"] for r in ids}

    # Importance: Spearman's rho of lr with the best acc, as Python computes it from the latest values.
    table = importance(client, db, "p", "acc")
    rho = {row[0]: row[4] for row in table.rows}["params.lr"]
    assert rho == pytest.approx(spearman(LRS, [want[r, "acc"]["best_value"] for r in ids]), abs=1e-12)
    if relogged:  # and the released rollup would have said otherwise: the test can fail
        released = read_summaries(client, f"SELECT * FROM {released_summary(client, db)}")
        assert released[ids[TARGET], "acc"]["max_value"] == 0.9999


def test_a_resumed_run_relogging_through_the_sdk_ranks_by_its_latest_values(
    clickhouse_dsn: str, tmp_path: Path,
) -> None:
    """The whole path: the SDK logs, the run resumes and logs step 10 again, the spool is ingested."""
    spool = tmp_path / "spool"
    logged: dict[str, dict[int, float]] = {}
    for number in range(3):
        run = runstream.init("sdk", f"trial-{number}", params={"lr": LRS[number]}, spool=str(spool),
                             sample_interval=0)
        curve = {step: 0.5 + 0.1 * number + 0.01 * step for step in range(20)}
        if number == 0:
            curve[10] = 0.9999
        for step, value in curve.items():
            run.log({"acc": value}, step=step)
        run.finish("failed" if number == 0 else "ok")
        if number == 0:
            resumed = runstream.init("sdk", "trial-0", spool=str(spool), sample_interval=0, resume=run.run_id)
            resumed.log({"acc": 0.1}, step=10)
            curve[10] = 0.1
            resumed.finish("ok")
        logged[run.run_id] = curve
    sink = ClickHouseSink(clickhouse_dsn)
    assert not ingest_spool(spool, sink).rejected
    client, db = sink.client, sink.database
    best = {run_id: max(curve.values()) for run_id, curve in logged.items()}
    board = runstream.Client(clickhouse_dsn).best("sdk", "acc")
    assert list(board["run_id"]) == sorted(best, key=lambda r: -best[r])
    assert list(board["run_id"])[-1] == next(iter(logged)), "the re-logged run is last, not first"
    got = read_summaries(client, f"SELECT * FROM {db}.metric_summary")
    assert_summaries_equal(got, {(r, "acc"): summarise("acc", c) for r, c in logged.items()}, "SDK path")


# --- A seeded random workload ------------------------------------------------------------------

SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, -5e-324, 1e308, -1e308, 2.2250738585072014e-308]


def random_workload(rng: random.Random, runs: int) -> list[list[Point]]:
    """Inserts of a project: shuffled arrival, gapped steps, resumed runs re-logging a range of steps
    (some with the very same values), batches redelivered before and after the re-logs."""
    inserts: list[list[Point]] = []
    for number in range(runs):
        run_id = f"run-{number:02d}"
        for metric, stride in (("acc", 1), ("loss", 1), ("val_loss", 7)):
            steps = list(range(0, rng.randint(5, 120) * stride, stride))
            rng.shuffle(steps)

            def value() -> float:
                roll = rng.random()
                if roll < 0.08:
                    return rng.choice(SPECIAL)
                if roll < 0.3:
                    return rng.choice([0.25, 0.5, 0.75])  # ties on min and max
                return rng.uniform(-2.0, 2.0)

            points = [(run_id, metric, step, value(), T0 + step * 60 * SECOND_US) for step in steps]
            first_values = {p[2]: p[3] for p in points}
            chunks = [points[i:i + rng.randint(5, 40)] for i in range(0, len(points), 40)]
            inserts += chunks
            if rng.random() < 0.5:  # resumed: a range of steps logged again, hours or days later
                low = rng.randrange(len(steps))
                again = sorted(steps)[low:low + rng.randint(1, 30)]
                later = rng.choice([HOUR_US, 3 * DAY_US, 40 * DAY_US])  # days later: another month
                keep = rng.random() < 0.3  # the same values again, only the time is later
                inserts.append([(run_id, metric, step, first_values[step] if keep else value(),
                                 T0 + step * 60 * SECOND_US + later) for step in again])
    rng.shuffle(inserts)
    for chunk in rng.sample(inserts, len(inserts) // 4):  # redeliveries, anywhere in the stream
        inserts.insert(rng.randrange(len(inserts) + 1), list(chunk))
    return inserts


def test_every_summary_column_equals_final_on_a_seeded_random_workload(clickhouse_dsn: str) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    rng = random.Random(20261202)
    delivered: list[Point] = []
    inserts = random_workload(rng, 30)
    for start in range(0, len(inserts), 6):  # a few events per consumer write, as a batch would carry
        points = [p for chunk in inserts[start:start + 6] for p in chunk]
        write_points(sink, points, NOW)
        delivered += points
    want = expected_summaries(delivered)
    from_final = read_summaries(client, final_summaries_sql(db))
    assert_summaries_equal(from_final, want, "FINAL vs Python")
    got = read_summaries(client, f"SELECT * FROM {db}.metric_summary")
    assert_summaries_equal(got, want, "metric_summary vs Python")
    # deliveries counts every row delivered (merges may already have collapsed some in metric_points);
    # points every step once, as count() with FINAL.
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for run_id, metric, *_ in delivered:
        counts[run_id, metric] += 1
    assert {key: row["deliveries"] for key, row in got.items()} == counts
    assert sum(s["points"] for s in got.values()) == client.query(
        f"SELECT count() FROM {db}.metric_points FINAL").result_rows[0][0]

    # The workload does what it says: re-logs that change an answer, and pairs merely redelivered.
    released = read_summaries(client, f"SELECT * FROM {released_summary(client, db)}")
    stale = {key for key in want if any(not same(released[key][c], want[key][c]) for c in want[key])}
    suspect = {key for key, n in counts.items() if n > want[key]["points"]}
    assert stale and stale <= suspect and recomputed(client, db) == suspect, \
        "every pair with a step delivered twice is recomputed, and only those"
    assert len(suspect) < len(want), "some pairs are answered by the rollup alone"

    # run_metrics (what best, the leaderboard, importance and runs read) equals its FINAL definition.
    views = read_summaries(client, f"SELECT * FROM {db}.run_metrics")
    final_views = read_summaries(client, RUN_METRICS_FROM_POINTS_SQL.replace("{db}", db))
    assert_summaries_equal(views, final_views, "run_metrics vs its FINAL definition")
    # Merged states give the same answers as unmerged ones.
    client.command(f"OPTIMIZE TABLE {db}.metric_summary_states FINAL")
    client.command(f"OPTIMIZE TABLE {db}.metric_points FINAL")
    assert_summaries_equal(read_summaries(client, f"SELECT * FROM {db}.metric_summary"), want, "after merges")


def test_a_relog_at_the_very_same_time_follows_final(clickhouse_dsn: str) -> None:
    """Two values of a step with one timestamp: FINAL keeps the later insert; so does every summary."""
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    t = T0 + 10 * SECOND_US
    write_points(sink, [("run-t", "acc", step, 0.5 + step / 100, T0 + step * SECOND_US) for step in range(20)]
                 + [("run-t", "acc", 25, 0.9999, t)], NOW)
    write_points(sink, [("run-t", "acc", 25, -0.0, t)], NOW)
    final = read_summaries(client, final_summaries_sql(db))
    assert final["run-t", "acc"]["last_value"] == 0.0 and final["run-t", "acc"]["max_value"] == 0.69
    got = read_summaries(client, f"SELECT * FROM {db}.metric_summary")
    assert_summaries_equal(got, final, "same time")
    assert math.copysign(1.0, got["run-t", "acc"]["last_value"]) == -1.0, "-0.0 as FINAL keeps it, not 0.0"


def test_migration_6_makes_an_existing_database_exact(clickhouse_dsn: str) -> None:
    """A database laid out by migrations 1-5 (the released rollup view) holding a re-logged step."""
    from runstream.consumer.dsn import connect
    from runstream.consumer.migrations import MIGRATIONS, applied_migrations, migrate

    client, db = connect(clickhouse_dsn)
    applied_migrations(client, db)  # the ledger
    for migration in MIGRATIONS[:5]:
        for statement in migration.statements:
            client.command(statement.replace("{db}", db))
        client.insert(f"{db}.schema_migrations", [[migration.version, migration.name]],
                      column_names=["version", "name"])
    columns = ["run_id", "metric", "step", "value", "time"]
    client.insert(f"{db}.metric_points", [["run-m", "acc", step, 0.5 + step / 100, T0 + step * SECOND_US]
                                          for step in range(20)], column_names=columns)
    client.insert(f"{db}.metric_points", [["run-m", "acc", 10, 0.1, T0 + DAY_US]], column_names=columns)
    # A late copy with an older time (a clock behind): FINAL keeps 0.62 at step 12.
    client.insert(f"{db}.metric_points", [["run-m", "acc", 12, 0.9999, T0 + 12 * SECOND_US - 1]], column_names=columns)
    stale = client.query(f"SELECT max_value FROM {db}.metric_summary").result_rows
    assert stale == [(0.9999,)], "the released view kept a value FINAL dropped"
    # 7: the per-run summary, filled from what is stored; 8: lifecycle; 9 on: whatever came since
    assert migrate(client, db) == [migration.version for migration in MIGRATIONS[5:]]
    got = read_summaries(client, f"SELECT * FROM {db}.metric_summary")
    assert_summaries_equal(got, read_summaries(client, final_summaries_sql(db)), "after migration 6")
    assert (got["run-m", "acc"]["max_value"], got["run-m", "acc"]["step_of_max"]) == (0.69, 19)
