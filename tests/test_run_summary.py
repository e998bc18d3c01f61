"""The compact per-run summary (`run_summary`) stays exact: re-logged steps, redelivered batches, a
consumer killed -9 between its insert and the summary write, NaN/±Inf/-0.0, params logged as None.

Every check compares the summary with a Python computation over what was logged (the latest value
of each step wins, as FINAL keeps it; min/max over finite values, ties to the earliest step), and
counts: distinct points in the summary = count() with FINAL, and the rows without FINAL are at least
as many. The answers read from the summary (runs, filter, leaderboard, compare, importance) are also
compared with the per-read views that migration 6 released (computed from the rollup and FINAL).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from metric_events import Point, write_points
from test_consumer_faults import PARTITIONS, ConsumerProcess, uncommitted, wait_for

import runstream
from runstream.analysis import queries
from runstream.analysis.importance import importance
from runstream.analysis.views import LEADERBOARD_V6, RUN_OVERVIEW_V6
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.clickhouse_sink import FAULT_BEFORE_SUMMARY_ENV
from runstream.consumer.migrations import create_view_sql, migrate
from runstream.consumer.run_summary import BACKFILL_SQL
from runstream.consumer.table_spec import View
from runstream.consumer.topics_admin import ensure_topics
from runstream.monitoring.metric_direction import lower_is_better

pytestmark = pytest.mark.integration

SECOND_US = 1_000_000
T0 = 1_735_689_600 * SECOND_US  # 2025-01-01 UTC
NOW = T0 + 400 * 86_400 * SECOND_US

#: (run_id, metric, step, value, time_us) in delivery order.
#: metric -> its summary columns, as the run_summary maps hold them.
Expected = dict[str, dict[str, Any]]


# --- Python's answer -------------------------------------------------------------------------------

def latest(points: list[Point]) -> dict[str, dict[str, dict[int, float]]]:
    """run -> metric -> step -> the value FINAL keeps (highest time; on equal times the later delivery)."""
    kept: dict[tuple[str, str], dict[int, tuple[int, float]]] = defaultdict(dict)
    for run_id, metric, step, value, t in points:
        held = kept[run_id, metric].get(step)
        if held is None or t >= held[0]:
            kept[run_id, metric][step] = (t, value)
    out: dict[str, dict[str, dict[int, float]]] = defaultdict(dict)
    for (run_id, metric), by_step in kept.items():
        out[run_id][metric] = {step: tv[1] for step, tv in by_step.items()}
    return out


def expected(points: list[Point]) -> dict[str, Expected]:
    """run -> metric -> final, last_step, min/max (finite values only) with the earliest step, best, points."""
    out: dict[str, Expected] = {}
    for run_id, metrics in latest(points).items():
        out[run_id] = {}
        for metric, by_step in metrics.items():
            steps = sorted(by_step)
            finite = [(by_step[s], s) for s in steps if math.isfinite(by_step[s])]
            low = min(finite, key=lambda vs: (vs[0], vs[1]), default=None)
            high = min(finite, key=lambda vs: (-vs[0], vs[1]), default=None)
            best = low if lower_is_better(metric) else high
            out[run_id][metric] = {
                "final": by_step[steps[-1]], "last_step": steps[-1],
                "min_value": low[0] if low else None, "min_step": low[1] if low else None,
                "max_value": high[0] if high else None, "max_step": high[1] if high else None,
                "best": best[0] if best else None, "best_step": best[1] if best else None,
                "points": len(steps),
            }
    return out


MAPS = ("final", "last_step", "min_value", "min_step", "max_value", "max_step", "best", "best_step", "points")


def stored_summary(client: Any, db: str) -> dict[str, Expected]:
    """run -> metric -> the run_summary maps' values (None where a map lacks the metric)."""
    rows = client.query(f"SELECT run_id, {', '.join(MAPS)} FROM {db}.run_summary FINAL").result_rows  # noqa: S608
    out: dict[str, Expected] = {}
    for run_id, *maps in rows:
        columns = dict(zip(MAPS, maps, strict=True))
        out[run_id] = {metric: {name: columns[name].get(metric) for name in MAPS} for metric in columns["final"]}
    return out


def bits(value: Any) -> Any:
    """Compare floats by their bits (NaN equals NaN, -0.0 differs from 0.0); anything else as is."""
    return ("float", float(value).hex()) if isinstance(value, float) else value


def assert_exact(got: dict[str, Expected], want: dict[str, Expected], label: str) -> None:
    assert want.keys() <= got.keys(), f"{label}: runs {sorted(got)} vs {sorted(want)}"
    want = {run: want.get(run, {}) for run in got}  # a started run without points has an empty summary
    wrong = [(run, metric, name, got[run].get(metric, {}).get(name), value)
             for run in sorted(want) for metric, columns in want[run].items() for name, value in columns.items()
             if bits(got[run].get(metric, {}).get(name)) != bits(value)]
    assert not wrong, f"{label}: {len(wrong)} cells differ, first: {wrong[:5]}"
    assert all(got[run].keys() == want[run].keys() for run in want), f"{label}: metric sets differ"


def assert_counts(client: Any, db: str, points: list[Point]) -> None:
    """Distinct points: Python = count() with FINAL = the summaries' sum; rows without FINAL >= that; sums agree."""
    kept = latest(points)
    distinct = sum(len(by_step) for metrics in kept.values() for by_step in metrics.values())
    finite_sum = math.fsum(v for metrics in kept.values() for by_step in metrics.values() for v in by_step.values()
                           if math.isfinite(v))
    final, final_sum = client.query(f"SELECT count(), sumIf(value, isFinite(value)) FROM {db}.metric_points FINAL"  # noqa: S608
                                    ).result_rows[0]
    raw = client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0]  # noqa: S608
    summarised = client.query(f"SELECT sum(arraySum(mapValues(points))) FROM {db}.run_summary FINAL"  # noqa: S608
                              ).result_rows[0][0]
    assert final == distinct == summarised, (final, distinct, summarised)
    assert raw >= final
    assert final_sum == pytest.approx(finite_sum, rel=1e-12)


# --- Writing as the consumer does ------------------------------------------------------------------

PARAMS = [{"lr": 1e-3, "note": None, "opt": "adam"}, {"lr": 3e-3, "opt": "sgd"},
          {"lr": 1e-2, "note": "warm", "opt": "adam"}, {"lr": 3e-4, "note": None, "opt": "sgd", "flag": True}]


def start_runs(sink: ClickHouseSink, spool: Path, project: str) -> list[str]:
    """Runs started (params, one logged as None) and finished through the SDK's spool and `ingest`."""
    ids = []
    for number, params in enumerate(PARAMS):
        run = runstream.init(project, f"trial-{number}", params=params, spool=str(spool), sample_interval=0)
        run.finish("ok" if number != 2 else "failed")
        ids.append(run.run_id)
    report = ingest_spool(spool, sink)
    assert not report.rejected, report.rejected
    return ids


def workload(ids: list[str], seed: int) -> list[list[Point]]:
    """Batches: the curves; the same batch again (a redelivery); re-logged steps (later times, new values,
    one of them the best of its run); NaN/±Inf/-0.0 and a metric that is only NaN."""
    rng = random.Random(seed)
    curves: list[Point] = []
    for number, run_id in enumerate(ids):
        for step in range(40):
            t = T0 + step * SECOND_US
            curves.append((run_id, "acc", step, round(0.3 + 0.01 * step + 0.05 * number + rng.random() / 100, 6), t))
            curves.append((run_id, "loss", step, 2.0 - 0.04 * step + rng.random() / 10, t))
        curves.append((run_id, "acc", 7, math.nan, T0 + 7 * SECOND_US + 1))  # NaN supersedes step 7
        curves.append((run_id, "grad", 0, math.nan, T0))
    odd: list[Point] = [(ids[0], "loss", 3, math.inf, T0 + 3 * SECOND_US + 5), (ids[1], "acc", 12, -math.inf, T0),
                        (ids[1], "loss", 45, -0.0, T0 + 45 * SECOND_US), (ids[2], "acc", 41, 5e-324, T0)]
    relog: list[Point] = [(ids[0], "acc", 10, 0.99999, T0 + 3600 * SECOND_US),  # becomes run 0's best
                          (ids[3], "acc", 39, 0.01, T0 + 3600 * SECOND_US),  # its best was step 39: no longer
                          (ids[2], "loss", 0, -1.0, T0 + 3600 * SECOND_US)]
    late = [(ids[0], "acc", 10, 0.5, T0 + 7200 * SECOND_US)]  # and superseded again
    return [curves, curves, odd, relog, late, relog]


def released_views(client: Any, db: str) -> tuple[str, str]:
    """Migration 6's run_overview and leaderboard (computed per read from the rollup and FINAL), as views
    of their own next to the ones that read run_summary."""
    overview = View("run_overview_v6", RUN_OVERVIEW_V6.select)
    board = View("leaderboard_v6", LEADERBOARD_V6.select)
    for view in (overview, board):
        client.command(create_view_sql(view, db))
    return f"{db}.run_overview_v6", f"{db}.leaderboard_v6"


# --- Tests ---------------------------------------------------------------------------------------------

def test_summary_is_exact_after_every_batch_and_answers_as_the_released_views(
    clickhouse_dsn: str, spool_dir: Path
) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    ids = start_runs(sink, spool_dir, "summary")
    overview_v6, board_v6 = released_views(client, db)
    delivered: list[Point] = []
    for number, batch in enumerate(workload(ids, seed=11)):
        write_points(sink, batch, NOW)
        delivered += batch
        assert_exact(stored_summary(client, db), expected(delivered), f"after batch {number}")
        assert_counts(client, db, delivered)
    assert sink.summary_refreshes == 6 + 1  # the ingest's batch, then one per write

    # The answers: what the released per-read views give, and what Python gives.
    for metric, mode in (("acc", "max"), ("loss", "min"), ("acc", "min"), ("grad", None)):
        board = queries.leaderboard(client, db, "summary", metric, mode)
        resolved = queries.check_mode(mode, metric)
        old = client.query(f"SELECT * FROM {board_v6}(project='summary', metric={{m:String}}, mode={{o:String}})",  # noqa: S608
                           parameters={"m": metric, "o": resolved}).result_rows
        assert repr(board.rows) == repr([list(row) for row in old]), (metric, mode)
        view = client.query(f"SELECT * FROM {db}.leaderboard(project='summary', metric={{m:String}}, "  # noqa: S608
                            "mode={o:String})", parameters={"m": metric, "o": resolved}).result_rows
        assert repr(board.rows) == repr([list(row) for row in view]), "the view over run_summary ranks alike"
        want = expected(delivered)
        ranked = sorted((r for r in ids if want[r][metric][f"{resolved}_value"] is not None),
                        key=lambda r: ((-1 if resolved == "max" else 1) * want[r][metric][f"{resolved}_value"],
                                       want[r][metric][f"{resolved}_step"]))
        assert [row[1] for row in board.rows] == ranked
        assert board.left_out == len(ids) - len(ranked)
    board = queries.leaderboard(client, db, "summary", "acc")
    assert board.rows[0][1] == ids[3] and board.rows[0][5] == 38, "run 3's step 39 was re-logged down to 0.01"
    assert ids[0] != board.rows[0][1], "run 0's 0.99999 was re-logged to 0.5 (its redelivery is older)"

    columns = "run_id, project, run_name, user, host, started_at, finished_at, status, git_commit, tags, " \
              "params_num, final, best, best_step, last_step, gpu_hours"
    new = client.query(f"SELECT {columns} FROM {db}.run_overview ORDER BY run_id").result_rows  # noqa: S608
    old = client.query(f"SELECT {columns} FROM {overview_v6} ORDER BY run_id").result_rows  # noqa: S608
    def ordered(rows: list[Any]) -> str:  # maps compare by content: their key order is not part of the answer
        return repr([[sorted(v.items()) if isinstance(v, dict) else v for v in row] for row in rows])
    assert ordered(new) == ordered(old)
    # params: the released view showed a None param as ""; the summary holds NULL, as for a param never logged
    params = dict(client.query(f"SELECT run_id, params FROM {db}.run_overview").result_rows)  # noqa: S608
    assert params[ids[0]]["note"] is None and "note" not in params[ids[1]] and params[ids[2]]["note"] == "warm"

    # the filter: `is null` matches a param logged as None and one never logged
    found = queries.runs(client, db, project="summary", where="params.note is null")
    assert sorted(row[0] for row in found.rows) == sorted([ids[0], ids[1], ids[3]])
    found = queries.runs(client, db, project="summary", where="params.note is not null or params.flag = true")
    assert sorted(row[0] for row in found.rows) == sorted([ids[2], ids[3]])
    # a sort on a text-only param (the optimistic translation sorted by number: run again by text), a kind error
    found = queries.runs(client, db, project="summary", where="params.lr < 0.005", sort="-params.opt,params.lr")
    assert [row[0] for row in found.rows] == [ids[3], ids[1], ids[0]]
    with pytest.raises(ValueError, match="params.lr"):
        queries.runs(client, db, project="summary", where="params.lrr < 0.005")
    with pytest.raises(ValueError, match="holds text"):
        queries.runs(client, db, project="summary", where="params.opt < 1")
    listed = queries.runs(client, db, project="summary", sort="-started_at", limit=2)
    assert [row[0] for row in listed.rows] == ids[::-1][:2]
    # compare: None and absent are the same, not marked as differing (docs/sql.md)
    table = queries.compare(client, db, [ids[0], ids[1]])
    note = next(row for row in table.rows if row[0] == "params.note")
    assert note == ["params.note", None, None, ""]
    # importance reads the summary: Spearman of lr against the best loss, from Python's numbers
    got = {row[0]: row[4] for row in importance(client, db, "summary", "loss").rows}
    want = expected(delivered)
    lrs = [PARAMS[i]["lr"] for i in range(len(ids))]
    losses = [want[r]["loss"]["min_value"] for r in ids]
    order = sorted(range(len(ids)), key=lambda i: lrs[i])
    by_loss = sorted(range(len(ids)), key=lambda i: losses[i])
    rank_lr, rank_loss = [order.index(i) for i in range(len(ids))], [by_loss.index(i) for i in range(len(ids))]
    n = len(ids)
    rho = 1 - 6 * sum((a - b) ** 2 for a, b in zip(rank_lr, rank_loss, strict=True)) / (n * (n * n - 1))
    assert got["params.lr"] == pytest.approx(rho)

    # Migration 7's backfill recomputes the same rows as the per-batch refreshes wrote.
    before = client.query(f"SELECT * EXCEPT updated_at FROM {db}.run_summary FINAL ORDER BY run_id").result_rows  # noqa: S608
    client.command(f"TRUNCATE TABLE {db}.run_summary")
    client.command(BACKFILL_SQL.replace("{db}", db))
    after = client.query(f"SELECT * EXCEPT updated_at FROM {db}.run_summary FINAL ORDER BY run_id").result_rows  # noqa: S608
    assert repr(after) == repr(before)


def test_ingesting_a_spool_twice_keeps_the_summary_exact(clickhouse_dsn: str, spool_dir: Path) -> None:
    """`runstream ingest` of the same folder twice (every point delivered twice) and a re-logged step."""
    run = runstream.init("twice", "resumed", params={"lr": 0.1}, spool=str(spool_dir), sample_interval=0)
    for step in range(30):
        run.log({"acc": step / 30, "loss": 1 - step / 30}, step=step)
    run.log({"acc": 0.0}, step=29)  # logged again, later: the final and the max move back
    run.finish()
    sink = ClickHouseSink(clickhouse_dsn)
    for replay in (False, True):  # every point delivered twice (replay: past the spool's record of what it loaded)
        report = ingest_spool(spool_dir, sink, replay=replay)
        assert not report.rejected
    got = stored_summary(sink.client, sink.database)[run.run_id]
    assert got["acc"]["final"] == 0.0 and got["acc"]["max_value"] == 28 / 30 and got["acc"]["max_step"] == 28
    assert got["acc"]["points"] == got["loss"]["points"] == 30
    final = sink.client.query(f"SELECT count() FROM {sink.database}.metric_points FINAL").result_rows[0][0]  # noqa: S608
    raw = sink.client.query(f"SELECT count() FROM {sink.database}.metric_points").result_rows[0][0]  # noqa: S608
    assert final == 60 and raw >= final


def test_migration_12_retypes_the_map_keys_of_a_filled_summary_and_keeps_every_value(
        clickhouse_dsn: str, spool_dir: Path) -> None:
    """A database as migration 11 left it (String map keys) with summaries in it: migration 12 gives every map
    LowCardinality(String) keys, every value unchanged to the bit; the next batch's rewrite writes the new type."""
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    ids = start_runs(sink, spool_dir, "retype")
    batches = workload(ids, seed=12)
    for batch in batches[:3]:
        write_points(sink, batch, NOW)

    def map_types() -> dict[str, str]:
        rows = client.query("SELECT name, type FROM system.columns WHERE database = {db:String} "
                            "AND table = 'run_summary' AND type LIKE 'Map(%'", parameters={"db": db}).result_rows
        return {str(name): str(kind) for name, kind in rows}

    def everything() -> list[tuple[Any, ...]]:
        columns = ", ".join(["run_id", "tags", "params", "params_num", *MAPS])
        return [tuple(bits(v) if not isinstance(v, dict) else {k: bits(x) for k, x in v.items()} for v in row)
                for row in client.query(f"SELECT {columns} FROM {db}.run_summary FINAL ORDER BY run_id").result_rows]

    assert map_types() and all(kind.startswith("Map(LowCardinality(String),") for kind in map_types().values())
    old = ", ".join(f"MODIFY COLUMN {name} {kind.replace('Map(LowCardinality(String),', 'Map(String,', 1)}"
                    for name, kind in map_types().items())
    client.command(f"ALTER TABLE {db}.run_summary {old} SETTINGS mutations_sync = 1")
    client.command(f"ALTER TABLE {db}.schema_migrations DELETE WHERE version = 12 SETTINGS mutations_sync = 1")
    assert all(kind.startswith("Map(String,") for kind in map_types().values())
    before = everything()
    assert len(before) == len(ids) and any(row[4] for row in before), "the summaries hold params and metrics"

    assert migrate(client, db) == [12]
    assert all(kind.startswith("Map(LowCardinality(String),") for kind in map_types().values()), map_types()
    assert everything() == before
    for batch in batches[3:]:
        write_points(sink, batch, NOW)
    assert_exact(stored_summary(client, db), expected([p for batch in batches for p in batch]), "after migration 12")


# --- kill -9 between the insert and the summary write, through Kafka ------------------------------------

READ_BACK = textwrap.dedent("""
    import json, sys
    from runstream.consumer.dsn import connect
    client, db = connect(sys.argv[1], create_database=False)
    out = {}
    for name, sql in json.loads(sys.argv[2]).items():
        out[name] = [[repr(v) if isinstance(v, float) else v for v in row]
                     for row in client.query(sql.replace("{db}", db)).result_rows]
    print(json.dumps(out, default=repr))
""")


def read_back(dsn: str, queries_by_name: dict[str, str]) -> dict[str, list[list[Any]]]:
    """Rows of each query, read in a process of its own (chDB opens a folder in one process at a time);
    floats travel as repr, so NaN, -0.0 and every digit come back exactly."""
    done = subprocess.run([sys.executable, "-c", READ_BACK, dsn, json.dumps(queries_by_name)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def flat_summary(rows: list[list[Any]]) -> dict[str, Expected]:
    out: dict[str, Expected] = defaultdict(dict)
    for run_id, metric, *values in rows:
        out[run_id][metric] = {name: float(v) if isinstance(v, str) else v
                               for name, v in zip(MAPS, values, strict=True)}
    return dict(out)


FLAT = ("SELECT run_id, k, " + ", ".join(f"{name}[k]" for name in MAPS)
        + " FROM {db}.run_summary FINAL ARRAY JOIN mapKeys(final) AS k ORDER BY run_id, k")


def log_through_kafka(kafka: str, prefix: str) -> tuple[list[Point], list[str]]:
    """Three runs through the SDK to Kafka, with a step logged again later, NaN and +Inf; what was logged."""
    logged: list[Point] = []
    ids = []
    clock = 0
    for number in range(3):
        params = {"lr": 10.0 ** -(number + 2), "note": None} if number != 1 else {"lr": 0.5}
        run = runstream.init("killed", f"run-{number}", params=params, kafka=kafka, topic_prefix=prefix,
                             sample_interval=0)
        for step in range(60):
            values = {"acc": step / 100 + number / 10, "loss": 3.0 - step / 30}
            if step == 5 and number == 0:
                values["loss"] = math.inf
            if step == 9:
                values["acc"] = math.nan
            run.log(values, step=step)
            logged += [(run.run_id, name, step, value, clock) for name, value in values.items()]
            clock += 1
        run.log({"acc": 0.0}, step=30)  # logged again with another value: the max moves off it
        logged.append((run.run_id, "acc", 30, 0.0, clock))
        clock += 1
        run.finish()
        ids.append(run.run_id)
    return logged, ids


@pytest.mark.fault
def test_consumer_killed_between_insert_and_summary_write_recomputes_on_redelivery(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    logged, ids = log_through_kafka(kafka_bootstrap, topic_prefix)
    dsn = f"chdb://{tmp_path / 'ch'}"
    group = f"g-{topic_prefix.rstrip('.')}"
    marker = tmp_path / "inserted"
    first = ConsumerProcess(kafka_bootstrap, topic_prefix, dsn, group, instance_id="c0",
                            env={FAULT_BEFORE_SUMMARY_ENV: str(marker)})
    try:
        wait_for(marker.exists, 90, "the first insert (fault-injection marker)", first.stderr)
        os.kill(first.process.pid, signal.SIGKILL)
    finally:
        first.kill()
    assert first.process.returncode == -signal.SIGKILL
    assert uncommitted(kafka_bootstrap, topic_prefix, group) > 0, "the killed consumer committed nothing"
    window = read_back(dsn, {"points": "SELECT count() FROM {db}.metric_points",
                             "summaries": "SELECT count() FROM {db}.run_summary"})
    assert window["points"][0][0] > 0 and window["summaries"][0][0] == 0, "killed after the insert, before the summary"

    again = ConsumerProcess(kafka_bootstrap, topic_prefix, dsn, group, instance_id="c0")
    try:  # the consumer commits a batch only once its summaries are written: nothing uncommitted = all summarised
        wait_for(lambda: again.points() > 0 and uncommitted(kafka_bootstrap, topic_prefix, group) == 0, 120,
                 "every event written, summarised and committed after the restart", again.stderr)
        code, _out, err = again.stop()
        assert code == 0, err[-2000:]
    finally:
        again.kill()

    want_points = len({(p[0], p[1], p[2]) for p in logged})
    rows = read_back(dsn, {
        "flat": FLAT,
        "counts": "SELECT (SELECT count() FROM {db}.metric_points FINAL), (SELECT count() FROM {db}.metric_points), "
                  "(SELECT sum(arraySum(mapValues(points))) FROM {db}.run_summary FINAL)",
        "params": "SELECT run_id, toJSONString(params) FROM {db}.run_summary FINAL ORDER BY run_id",
        "status": "SELECT run_id, status FROM {db}.run_summary FINAL ORDER BY run_id",
    })
    assert_exact(flat_summary(rows["flat"]), expected(logged), "after kill -9 and redelivery")
    final, raw, summarised = rows["counts"][0]
    assert final == summarised == want_points and raw >= final
    params = {run_id: json.loads(text) for run_id, text in rows["params"]}
    assert params[ids[0]] == {"lr": "0.01", "note": None} and params[ids[1]] == {"lr": "0.5"}
    assert {run_id: status for run_id, status in rows["status"]} == dict.fromkeys(ids, "ok")
