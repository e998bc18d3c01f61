"""Finite-value rules the same everywhere: NaN and ±Inf are stored and shown, never ranked.

Runs logged through the SDK (spool, then `ingest_spool`) whose metric only ever was NaN, only +Inf,
only -Inf, NaN mixed with finite values, and infinities mixed with finite values, for a min-metric
(`loss`) and a max-metric (`acc`), in both modes. Every ranking answer (the CLI's `best` as table,
CSV and JSON; `Client.best` in pandas and Arrow; the leaderboard view; importance; the report; the
demo's comparison; the dashboards' Leaderboard panel; `run_overview`'s best map) must leave the
non-finite-only runs out, count them where it has room, and rank the rest exactly as the Python
below does on the logged values.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from databases import fresh_database_dsn

import runstream
from runstream.analysis import queries
from runstream.analysis.importance import importance
from runstream.analysis.report import collect, render_html
from runstream.analysis.views import RUN_METRICS_FROM_POINTS_SQL
from runstream.cli import main
from runstream.comparison import compare_project
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.monitoring.finite_values import ranks

pytestmark = pytest.mark.integration
NAN, INF = math.nan, math.inf
PROJECT = "finite"


@dataclass
class Logged:
    name: str
    params: dict[str, Any]
    metrics: dict[str, list[float]]  # the value each step 0, 1, 2, ... holds in the end
    project: str = PROJECT
    superseded: dict[str, dict[int, float]] = field(default_factory=dict)  # logged first, then logged again

    def best(self, metric: str, mode: str) -> tuple[float, int] | None:
        """The best finite value and the earliest step reaching it; None when no value was finite."""
        finite = [(v, s) for s, v in enumerate(self.metrics.get(metric, [])) if math.isfinite(v)]
        if not finite:
            return None
        value = (max if mode == "max" else min)(v for v, _ in finite)
        return value, min(s for v, s in finite if v == value)

    def final(self, metric: str) -> float:
        return self.metrics[metric][-1]


RUNS = [
    Logged("only-nan", {"lr": 0.1, "opt": "sgd"}, {"loss": [NAN, NAN, NAN], "acc": [NAN, NAN]}),
    Logged("only-pinf", {"lr": 0.2, "opt": "adam"}, {"loss": [INF, INF], "acc": [INF, INF, INF]}),
    Logged("only-ninf", {"lr": 0.3, "opt": "sgd"}, {"loss": [-INF, -INF], "acc": [-INF]}),
    Logged("nan-and-finite", {"lr": 0.01, "opt": "adam"},
           {"loss": [NAN, 0.7, NAN, 0.45, NAN], "acc": [NAN, 0.62, NAN, 0.64, NAN]}),
    # infinities on the side that would win: the rollup's min/max are infinite here, the finite ones are not
    Logged("inf-and-finite", {"lr": 0.02, "opt": "sgd"},
           {"loss": [-INF, 0.4, INF, 0.41], "acc": [INF, 0.8, -INF, NAN, 0.79]}),
    Logged("plain", {"lr": 0.003, "opt": "adam"}, {"loss": [1.0, 0.3, 0.35], "acc": [0.5, 0.9, 0.85]}),
    # ties plain's best loss and acc one step later: ranks after it
    Logged("tie-later", {"lr": 0.005, "opt": "sgd"}, {"loss": [0.9, 0.8, 0.3], "acc": [0.1, 0.2, 0.9]}),
    # a finite loss, an acc that never was finite: ranked for loss, left out for acc
    Logged("finite-loss-only", {"lr": 0.04, "opt": "adam"}, {"loss": [0.6, 0.55], "acc": [NAN, INF]}),
    # steps logged again: an infinity replaced by a finite value, and a best value replaced by an infinity
    Logged("relogged", {"lr": 0.008, "opt": "adam"}, {"loss": [0.5, 0.52, 0.51], "acc": [0.3, INF, 0.2]},
           superseded={"loss": {1: -INF}, "acc": {1: 0.95}}),
    # never logged acc: neither ranked nor counted as left out for acc
    Logged("no-acc", {"lr": 0.0007, "opt": "sgd"}, {"loss": [0.25, 0.2]}),
    # another project: never in this project's answers or counts
    Logged("elsewhere", {"lr": 0.5, "opt": "sgd"}, {"loss": [NAN], "acc": [INF]}, project="other"),
]
MINE = [r for r in RUNS if r.project == PROJECT]
CASES = [("loss", "min"), ("loss", "max"), ("acc", "max"), ("acc", "min")]


def expected_board(metric: str, mode: str) -> list[tuple[str, float, int]]:
    """(name, best, step) in rank order: best value, then earlier step, then earlier start (log order)."""
    ranked = [(r.name, *best, i) for i, r in enumerate(MINE) if (best := r.best(metric, mode)) is not None]
    ranked.sort(key=lambda t: (-t[1] if mode == "max" else t[1], t[2], t[3]))
    return [(name, value, step) for name, value, step, _ in ranked]


def best_value(spec: Logged, metric: str, mode: str) -> float | None:
    best = spec.best(metric, mode)
    return best[0] if best else None


def expected_left_out(metric: str) -> list[str]:
    return [r.name for r in MINE if metric in r.metrics and r.best(metric, "min") is None]


def same(a: Any, b: float) -> bool:
    """Equal as logged, NaN equal to NaN; a JSON/CSV string such as "NaN" or "inf" read as its float."""
    value = float(a) if isinstance(a, str) else a
    return repr(value) == repr(b)


@pytest.fixture(scope="module")
def dsn(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    dsn = fresh_database_dsn(clickhouse_base, "fin")
    spool = tmp_path_factory.mktemp("finite-spool")
    for spec in RUNS:
        run = runstream.init(spec.project, spec.name, params=spec.params, spool=str(spool), sample_interval=0)
        for metric, relogged in spec.superseded.items():
            for step, value in relogged.items():
                run.log({metric: value}, step=step)
            run.flush()  # a later delivery replaces it
        for metric, values in spec.metrics.items():
            for step, value in enumerate(values):
                run.log({metric: value}, step=step)
        run.finish("ok")
    report = ingest_spool(spool, ClickHouseSink(dsn))
    assert not report.rejected, report.rejected
    return dsn


def ids_by_name(db: tuple[Any, str]) -> dict[str, str]:
    client, database = db
    rows = client.query(f"SELECT run_name, run_id FROM {database}.runs FINAL").result_rows  # noqa: S608
    return {name: run_id for name, run_id in rows}


def test_the_workload_was_stored_as_logged(db: tuple[Any, str]) -> None:
    """NaN and ±Inf are stored: each value with its step with FINAL; without it, superseded rows may remain."""
    client, database = db
    names = {v: k for k, v in ids_by_name(db).items()}
    logged = sorted((r.name, m, s, repr(v)) for r in RUNS for m, vs in r.metrics.items() for s, v in enumerate(vs))
    replaced = {(r.name, m, s, repr(v)) for r in RUNS for m, vs in r.superseded.items() for s, v in vs.items()}
    rows = client.query(f"SELECT run_id, metric, step, value FROM {database}.metric_points FINAL").result_rows
    assert sorted((names[r], m, s, repr(v)) for r, m, s, v in rows) == logged
    rows = client.query(f"SELECT run_id, metric, step, value FROM {database}.metric_points").result_rows
    stored = {(names[r], m, s, repr(v)) for r, m, s, v in rows}
    assert set(logged) <= stored <= set(logged) | replaced and len(rows) == len(stored)


# --- the rule in the views ---------------------------------------------------------------------

def test_run_metrics_min_max_are_finite_and_agree_with_the_raw_points(db: tuple[Any, str]) -> None:
    client, database = db
    names = {v: k for k, v in ids_by_name(db).items()}
    columns = "run_id, metric, final_value, last_step, min_value, max_value, step_of_min, step_of_max"
    view = client.query(f"SELECT {columns} FROM {database}.run_metrics").result_rows  # noqa: S608
    raw = client.query(RUN_METRICS_FROM_POINTS_SQL.replace("{db}", database)).result_rows
    assert sorted(map(repr, view)) == sorted(map(repr, raw))  # repr: NaN equals NaN
    for run_id, metric, final, last_step, low, high, step_low, step_high in view:
        spec = next(r for r in RUNS if r.name == names[run_id])
        assert same(final, spec.final(metric)) and last_step == len(spec.metrics[metric]) - 1
        want_low, want_high = spec.best(metric, "min"), spec.best(metric, "max")
        assert (low, step_low) == (want_low or (None, None))
        assert (high, step_high) == (want_high or (None, None))


def test_run_overview_best_map_leaves_non_finite_only_metrics_out(db: tuple[Any, str]) -> None:
    table = queries.runs(*db, project=PROJECT)
    for record in table.records():
        spec = next(r for r in MINE if r.name == record["name"])
        for metric, mode in (("loss", "min"), ("acc", "max")):
            best = spec.best(metric, mode)
            assert record[f"best.{metric}"] == (best[0] if best else None), (spec.name, metric)
            if metric in spec.metrics:
                assert same(record[f"metrics.{metric}"], spec.final(metric))  # shown as logged


@pytest.mark.parametrize(("metric", "mode"), CASES)
def test_leaderboard_ranks_finite_values_and_counts_the_runs_left_out(db: tuple[Any, str], metric: str,
                                                                      mode: str) -> None:
    table = queries.leaderboard(*db, PROJECT, metric, mode)
    got = [(row[2], row[4], row[5]) for row in table.rows]
    assert got == expected_board(metric, mode)
    assert [row[0] for row in table.rows] == list(range(1, len(got) + 1))
    assert table.left_out == len(expected_left_out(metric))
    for row in table.rows:  # the final value stays as logged, whatever it is
        assert same(row[6], next(r for r in MINE if r.name == row[2]).final(metric))


# --- the CLI -----------------------------------------------------------------------------------

def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("metric", "mode"), CASES)
def test_cli_best_json_and_csv(dsn: str, capsys: pytest.CaptureFixture[str], metric: str, mode: str) -> None:
    want = expected_board(metric, mode)
    left_out = len(expected_left_out(metric))
    base = ("best", "--project", PROJECT, "--metric", metric, "--mode", mode, "--limit", "0", "--clickhouse", dsn)
    code, out, err = run_cli(capsys, *base, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["name"], r[f"{metric} {mode}"], r["at step"]) for r in rows] == want
    assert f"{left_out} runs left out" in err and "finite" in err
    code, out, err = run_cli(capsys, *base, "--format", "csv")
    assert code == 0
    records = list(csv.DictReader(io.StringIO(out)))
    assert [(r["name"], float(r[f"{metric} {mode}"]), int(r["at step"])) for r in records] == want
    assert f"{left_out} runs left out" in err


def test_cli_best_table_leaves_runs_out_and_says_how_many(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "best", "--project", PROJECT, "--metric", "acc", "--limit", "0",
                           "--clickhouse", dsn)
    assert code == 0
    ranked = [name for name, _, _ in expected_board("acc", "max")]
    lines = out.splitlines()
    positions = [next(i for i, line in enumerate(lines) if f" {name} " in f" {line} ") for name in ranked]
    assert positions == sorted(positions)
    for name in expected_left_out("acc"):
        assert not any(f" {name} " in f" {line} " for line in lines), name
    assert any(line.startswith("4 runs left out: logged 'acc' but never a finite value") for line in lines), out


def test_cli_importance_counts_the_runs_left_out(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "importance", "--project", PROJECT, "--metric", "loss", "--format", "json",
                             "--clickhouse", dsn)
    assert code == 0 and json.loads(out)
    assert "3 runs left out: logged 'loss'" in err


# --- importance --------------------------------------------------------------------------------

def _ranks(values: list[float]) -> list[float]:
    return [sum(1 for w in values if w < v) + (sum(1 for w in values if w == v) + 1) / 2 for v in values]


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def _eta_squared(groups: dict[str, list[float]]) -> float:
    values = [v for g in groups.values() for v in g]
    mean = sum(values) / len(values)
    between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
    return between / sum((v - mean) ** 2 for v in values)


@pytest.mark.parametrize(("metric", "mode"), CASES)
def test_importance_uses_only_runs_with_a_finite_value(db: tuple[Any, str], metric: str, mode: str) -> None:
    table = importance(*db, PROJECT, metric, mode)
    kept = [(r, best[0]) for r in MINE if (best := r.best(metric, mode)) is not None]
    rows = {row[0]: row for row in table.rows}
    lr = rows["params.lr"]
    assert lr[2] == len(kept)
    assert lr[4] == pytest.approx(_spearman([r.params["lr"] for r, _ in kept], [v for _, v in kept]), rel=1e-12)
    groups: dict[str, list[float]] = {}
    for r, value in kept:
        groups.setdefault(r.params["opt"], []).append(value)
    opt = rows["params.opt"]
    assert opt[2] == len(kept) and opt[4] == pytest.approx(_eta_squared(groups), rel=1e-12)
    assert table.left_out == len(expected_left_out(metric))


# --- the Client --------------------------------------------------------------------------------

@pytest.mark.parametrize(("metric", "mode"), CASES)
def test_client_best_pandas_and_arrow(dsn: str, metric: str, mode: str) -> None:
    want = expected_board(metric, mode)
    left_out = len(expected_left_out(metric))
    with runstream.Client(dsn) as rs:
        frame = rs.best(PROJECT, metric, mode)
        assert list(zip(frame["name"], frame[f"{metric} {mode}"], frame["at step"], strict=True)) == want
        assert frame.attrs["left_out"] == left_out
        table = rs.best(PROJECT, metric, mode, output="arrow")
        got = list(zip(table.column("name").to_pylist(), table.column(f"{metric} {mode}").to_pylist(),
                       table.column("at step").to_pylist(), strict=True))
        assert got == want
        assert table.schema.metadata[b"left_out"] == str(left_out).encode()
        assert all(ranks(v) for v in table.column(f"{metric} {mode}").to_pylist())
        assert rs.importance(PROJECT, metric, mode).attrs["left_out"] == left_out


# --- report, comparison, dashboards ------------------------------------------------------------

@pytest.mark.parametrize(("metric", "mode"), [("acc", None), ("loss", None), ("loss", "max")])
def test_report_ranks_like_best_and_says_what_it_left_out(db: tuple[Any, str], metric: str, mode: str | None) -> None:
    data = collect(*db, PROJECT, metric=metric, mode=mode)
    chosen = data["mode"]
    board = [(r["name"], r[f"{metric} {chosen}"], r["at step"]) for r in data["leaderboard"]]
    assert board == expected_board(metric, chosen)
    assert data["left_out"] == len(expected_left_out(metric))
    assert f"{data['left_out']} runs left out" in data["left_out_note"]
    assert json.dumps(data["left_out_note"])[1:-1] in render_html(data)  # the page carries the note
    for run in data["runs"]:
        spec = next(r for r in MINE if r.name == run["name"])
        best = spec.best(metric, "min" if metric == "loss" else "max")
        assert run["best"][metric] == (best[0] if best else None)


def test_demo_comparison_best_column_is_finite(db: tuple[Any, str]) -> None:
    comparison = compare_project(*db, PROJECT)
    index = {c: i for i, c in enumerate(comparison.columns)}
    for row in comparison.rows:
        spec = next(r for r in MINE if r.name == row[0])
        for metric, mode in (("loss", "min"), ("acc", "max")):
            best = spec.best(metric, mode)
            assert row[index[f"{metric} best"]] == (best[0] if best else None), (spec.name, metric)


def test_dashboard_leaderboard_panel_ranks_finite_values(db: tuple[Any, str]) -> None:
    pytest.importorskip("grafanalib")
    from runstream.dashboards import build, preview

    client, database = db
    panel = next(q for q in build.RUNS if q.title == "Leaderboard")
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    variables = {"project": [PROJECT], "run": list(ids_by_name(db).values()), "metric": ["acc", "loss"]}
    result = client.query(preview.expand(panel.sql, database, variables, end - dt.timedelta(days=1), end))
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    for metric, mode in (("acc", "max"), ("loss", "min")):
        got = [(r["run"], r["best"]) for r in rows if r["metric"] == metric]
        assert got == [(name, value) for name, value, _ in expected_board(metric, mode)]
        for r in rows:
            spec = next(s for s in MINE if s.name == r["run"])
            if r["metric"] == metric:
                assert (r["min_value"], r["max_value"]) == (best_value(spec, metric, "min"),
                                                            best_value(spec, metric, "max"))
                assert same(r["final"], spec.final(metric))


def test_the_rule_is_written_down_where_users_read(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/sql.md states the rule and `best --help` repeats it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "sql.md").read_text(encoding="utf-8")
    assert "## Finite values" in text and "runstream.monitoring.finite_values" in text
    with pytest.raises(SystemExit):
        main(["best", "--help"])
    assert "never logged a finite value of METRIC are left out" in " ".join(capsys.readouterr().out.split())
