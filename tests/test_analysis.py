"""The analysis commands against runs logged through the SDK, checked with values computed here in Python.

The project holds the awkward cases on purpose: two runs reaching the same best accuracy at
different steps (a tie), a run that never logged accuracy, a run whose accuracy is all NaN, a run
with a NaN in the middle and at the end of a curve, and a run that never finished (its process
died: no run_finished event, status 'running').
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from databases import fresh_database_dsn
from headless_browser import dump_dom
from logged_runs import log_run

import runstream
from runstream.analysis import queries
from runstream.analysis.filters import FilterError, Translator, Vocabulary, translate
from runstream.analysis.importance import importance
from runstream.analysis.reproduce import reproduce
from runstream.analysis.views import RUN_METRICS, RUN_METRICS_FROM_POINTS_SQL
from runstream.cli import main
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.migrations import create_view_sql
from runstream.producer import metadata

pytestmark = pytest.mark.integration
NAN = float("nan")


@dataclass
class Logged:
    """What a test run logged, kept here so expectations never come from the database."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, list[tuple[int, float]]]
    status: str | None  # None: never finished
    project: str = "vision"
    data_versions: list[dict[str, str]] = field(default_factory=list)

    def final(self, metric: str) -> float | None:
        points = self.metrics.get(metric)
        return max(points)[1] if points else None

    def best(self, metric: str, mode: str) -> tuple[float, int] | None:
        finite = [(v, s) for s, v in self.metrics.get(metric, []) if not math.isnan(v)]
        if not finite:
            return None
        value = max(v for v, _ in finite) if mode == "max" else min(v for v, _ in finite)
        return value, min(s for v, s in finite if v == value)


def curve(values: list[float]) -> list[tuple[int, float]]:
    return list(enumerate(values))


RUNS = [
    Logged("alpha", {"lr": 0.001, "batch_size": 32, "optimizer": {"name": "adamw"}, "amp": True},
           {"acc": curve([0.1, 0.5, 0.9, 0.85]), "loss": curve([2.0, 1.0, 0.4, 0.45])}, "ok",
           data_versions=[{"name": "imagenet", "version": "v2", "uri": "s3://data/imagenet"}]),
    # ties alpha's best acc (0.9) one step earlier: ranks first
    Logged("beta", {"lr": 0.01, "batch_size": 64, "optimizer": {"name": "sgd"}, "amp": False},
           {"acc": curve([0.2, 0.9, 0.7, 0.8]), "loss": curve([1.5, 0.5, 0.6, 0.55])}, "ok"),
    # NaN inside the acc curve and as the final loss; never finished
    Logged("gamma", {"lr": 0.0001, "batch_size": 32, "optimizer": {"name": "sgd"}, "amp": True},
           {"acc": curve([0.3, NAN, 0.6]), "loss": curve([1.8, 1.2, NAN])}, None),
    # never logged acc
    Logged("delta", {"lr": 0.003, "batch_size": 128, "optimizer": {"name": "adamw"}, "amp": False},
           {"loss": curve([1.0, 0.3])}, "failed"),
    # acc only ever NaN
    Logged("epsilon", {"lr": 0.0003, "batch_size": 64, "optimizer": {"name": "adamw"}, "amp": True},
           {"acc": curve([NAN, NAN]), "loss": curve([0.9, 0.8])}, "ok"),
    # another project, better than all: must never show up in vision's answers
    Logged("other", {"lr": 0.001, "batch_size": 32, "optimizer": {"name": "adamw"}, "amp": True},
           {"acc": curve([0.99]), "loss": curve([0.01])}, "ok", project="audio"),
]
VISION = [r for r in RUNS if r.project == "vision"]
BY_NAME = {r.name: r for r in RUNS}

def log_runs(spool: Path) -> None:
    for spec in RUNS:
        log_run(spool, spec.project, spec.name, spec.params, spec.metrics, spec.status, spec.data_versions)


@pytest.fixture(scope="module")
def dsn(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    dsn = fresh_database_dsn(clickhouse_base)
    spool = tmp_path_factory.mktemp("analysis-spool")
    log_runs(spool)
    sink = ClickHouseSink(dsn)
    report = ingest_spool(spool, sink)
    assert not report.rejected, report.rejected
    return dsn


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expected_order(metric: str, mode: str) -> list[tuple[str, float, int]]:
    ranked = [(r.name, *best) for r in VISION if (best := r.best(metric, mode)) is not None]
    return sorted(ranked, key=lambda t: ((-t[1] if mode == "max" else t[1]), t[2]))


# --- leaderboard -------------------------------------------------------------------------------

@pytest.mark.parametrize(("metric", "mode"), [("acc", "max"), ("loss", "min"), ("acc", "min"), ("loss", "max")])
def test_best_ranks_by_best_value_ties_by_earlier_step(dsn: str, capsys: pytest.CaptureFixture[str],
                                                       metric: str, mode: str) -> None:
    code, out, _ = run_cli(capsys, "best", "--project", "vision", "--metric", metric, "--mode", mode,
                           "--format", "json", "--limit", "0", "--clickhouse", dsn)
    assert code == 0
    rows = json.loads(out)
    got = [(row["name"], row[f"{metric} {mode}"], row["at step"]) for row in rows]
    assert got == expected_order(metric, mode)
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    statuses = {row["name"]: row["status"] for row in rows}
    for name, status in statuses.items():
        assert status == (BY_NAME[name].status or "running")
    finals = {row["name"]: row[f"{metric} final"] for row in rows}
    for name, final in finals.items():
        want = BY_NAME[name].final(metric)
        assert (isinstance(final, str) and math.isnan(float(final))) if math.isnan(want or 0.0) else final == want


def test_best_acc_tie_goes_to_the_earlier_step_and_skips_runs_without_values(db: tuple[Any, str]) -> None:
    table = queries.leaderboard(*db, "vision", "acc")  # mode from the name: max
    names = [row[2] for row in table.rows]
    assert names == ["beta", "alpha", "gamma"]  # delta never logged acc; epsilon only NaN
    assert table.rows[0][4] == table.rows[1][4] == 0.9 and table.rows[0][5] < table.rows[1][5]


def test_leaderboard_from_raw_points_agrees_with_the_rollup(db: tuple[Any, str]) -> None:
    client, database = db
    from_rollup = queries.leaderboard(client, database, "vision", "loss", "min").rows
    replace = f"CREATE OR REPLACE VIEW {database}.run_metrics AS "
    client.command(replace + RUN_METRICS_FROM_POINTS_SQL.replace("{db}", database))
    try:
        from_points = queries.leaderboard(client, database, "vision", "loss", "min").rows
        overview = queries.runs(client, database, project="vision").rows
    finally:
        restore = create_view_sql(RUN_METRICS, database)
        client.command(restore.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW"))
    assert repr(from_points) == repr(from_rollup)  # repr: NaN equals NaN
    assert [r[:4] for r in overview] == [r[:4] for r in queries.runs(client, database, project="vision").rows]


def test_best_errors_name_the_field(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "best", "--project", "vision", "--metric", "accuracy", "--clickhouse", dsn)
    assert code == 2 and "metric 'accuracy'" in err and "acc" in err
    code, _, err = run_cli(capsys, "best", "--project", "visoin", "--metric", "acc", "--clickhouse", dsn)
    assert code == 2 and "project 'visoin'" in err and "vision" in err


# --- runs and the filter language --------------------------------------------------------------

def test_runs_lists_params_final_and_best_metrics(db: tuple[Any, str]) -> None:
    table = queries.runs(*db, project="vision")
    records = {r["name"]: r for r in table.records()}
    assert set(records) == {r.name for r in VISION}
    for spec in VISION:
        row = records[spec.name]
        assert row["status"] == (spec.status or "running")
        assert row["params.lr"] == spec.params["lr"] and row["params.batch_size"] == spec.params["batch_size"]
        assert row["params.optimizer.name"] == spec.params["optimizer"]["name"]
        assert row["params.amp"] is spec.params["amp"]
        for metric, mode in (("acc", "max"), ("loss", "min")):
            final = spec.final(metric)
            got = row[f"metrics.{metric}"]
            if final is None:
                assert got is None
            elif math.isnan(final):
                assert math.isnan(got)
            else:
                assert got == final
            best = spec.best(metric, mode)
            assert row[f"best.{metric}"] == (best[0] if best else None)


@pytest.mark.parametrize("where", [
    "params.lr < 0.005 and metrics.acc > 0.7",
    "params.optimizer.name = 'sgd' or best.loss <= 0.4",
    "not params.batch_size in (32, 64)",
    "params.batch_size not in (32) and status != 'failed'",
    "(params.lr >= 0.001 or metrics.acc is null) and params.amp = false",
    "name like '%a' and best.acc is not null",
    "status = 'running'",
])
def test_filters_select_what_python_selects(db: tuple[Any, str], where: str) -> None:
    def value(spec: Logged, key: str) -> Any:
        kind, _, name = key.partition(".")
        if kind == "params":
            node: Any = spec.params
            for part in name.split("."):
                node = node[part]
            return node
        if kind == "metrics":
            return spec.final(name)
        best = spec.best(name, "min" if name == "loss" else "max")
        return best[0] if best else None

    def lt(a: Any, b: Any) -> bool:
        return a is not None and a < b

    def gt(a: Any, b: Any) -> bool:
        return a is not None and a > b

    predicates = {
        "params.lr < 0.005 and metrics.acc > 0.7":
            lambda r: value(r, "params.lr") < 0.005 and gt(value(r, "metrics.acc"), 0.7),
        "params.optimizer.name = 'sgd' or best.loss <= 0.4":
            lambda r: value(r, "params.optimizer.name") == "sgd" or not gt(value(r, "best.loss"), 0.4),
        "not params.batch_size in (32, 64)": lambda r: value(r, "params.batch_size") not in (32, 64),
        "params.batch_size not in (32) and status != 'failed'":
            lambda r: value(r, "params.batch_size") != 32 and r.status != "failed",
        "(params.lr >= 0.001 or metrics.acc is null) and params.amp = false":
            lambda r: (value(r, "params.lr") >= 0.001 or value(r, "metrics.acc") is None) and not r.params["amp"],
        "name like '%a' and best.acc is not null": lambda r: r.name.endswith("a") and value(r, "best.acc") is not None,
        "status = 'running'": lambda r: r.status is None,
    }
    got = sorted(r["name"] for r in queries.runs(*db, project="vision", where=where).records())
    assert got == sorted(r.name for r in VISION if predicates[where](r))
    assert not lt(None, 1)


def test_sort_descending_puts_nan_then_missing_last(db: tuple[Any, str]) -> None:
    names = [r["name"] for r in queries.runs(*db, project="vision", sort="-metrics.acc").records()]
    finite = sorted((r for r in VISION if r.final("acc") is not None and not math.isnan(r.final("acc") or 0.0)),
                    key=lambda r: -(r.final("acc") or 0.0))
    assert names[: len(finite)] == [r.name for r in finite]
    assert set(names[len(finite):]) == {"epsilon", "delta"}  # final acc NaN, no acc at all
    assert names[-1] == "delta", "a run without the metric sorts after the NaN ones"
    limited = queries.runs(*db, project="vision", sort="params.lr", limit=2).records()
    assert [r["name"] for r in limited] == [r.name for r in sorted(VISION, key=lambda r: r.params["lr"])][:2]


def test_runs_cli_sort_with_leading_minus_and_csv(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "runs", "--project", "vision", "--where", "params.lr < 0.005 and metrics.acc > 0.7",
                           "--sort", "-metrics.acc", "--format", "csv", "--clickhouse", dsn)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("run_id,name,project,status")
    assert [line.split(",")[1] for line in lines[1:]] == ["alpha"]


@pytest.mark.parametrize(("where", "fragment"), [
    ("params.lrr < 0.01", "unknown field 'params.lrr'; did you mean params.lr"),
    ("metrics.lr < 0.01", "did you mean params.lr"),
    ("metrics.accuracy > 0.9", "did you mean metrics.acc"),
    ("foo < 1", "Fields are params.KEY"),
    ("params.optimizer.name < 0.5", "params.optimizer.name holds text"),
    ("params.lr = 'high'", "params.lr holds numbers"),
    ("params.lr <", "ends too early"),
    ("params.lr < 0.1 metrics.acc > 1", "unexpected 'metrics.acc'"),
])
def test_filter_errors_name_the_field(db: tuple[Any, str], where: str, fragment: str) -> None:
    with pytest.raises(FilterError, match=None) as error:
        queries.runs(*db, project="vision", where=where)
    assert fragment in str(error.value)


INJECTIONS = [
    "params.lr < 0.01; DROP TABLE runs",
    "params.lr < 0.01 -- comment",
    "params.lr < 0.01 /* x */",
    "params.lr < 0.01) OR (1 = 1",
    "params.lr < 0.01 OR 1 = 1",
    "params.`lr'] OR 1=1 OR params['x` < 1",
    "params.lr < 0.01 UNION SELECT * FROM system.users",
    "params.lr < sleep(3)",
    "params.lr < 0.01 and name = 'a' || 'b'",
    "params.lr < 0x10",
    "params.lr < {x:String}",
    "name = 'a\x00'",
]


@pytest.mark.parametrize("where", INJECTIONS)
def test_filter_rejects_injection_attempts(db: tuple[Any, str], where: str) -> None:
    with pytest.raises(FilterError):
        queries.runs(*db, project="vision", where=where)


def test_filter_values_are_bound_never_pasted(db: tuple[Any, str]) -> None:
    vocabulary = Vocabulary({"lr": {"number"}, "optimizer.name": {"string"}}, {"acc"}, set())
    hostile = "x' OR 1=1 OR name = '"
    sql, parameters = translate(f"params.optimizer.name = \"{hostile}\" and params.lr < 1e-2", vocabulary)
    assert hostile not in sql and "optimizer.name" not in sql and "0.01" not in sql
    assert hostile in parameters.values() and "optimizer.name" in parameters.values()
    assert 0.01 in parameters.values()
    # and against the database: the hostile text is just a name nobody has; the tables are intact
    rows = queries.runs(*db, project="vision", where=f"name = '{hostile.replace(chr(39), chr(39) * 2)}' or name = 'x'")
    assert rows.rows == []
    assert len(queries.runs(*db, project="vision").rows) == len(VISION)


def test_sort_rejects_expressions() -> None:
    translator = Translator(Vocabulary({"lr": {"number"}}, {"acc"}, set()))
    for spec in ("-metrics.acc; DROP TABLE runs", "rand()", "params.lr desc", "1"):
        with pytest.raises(FilterError):
            translator.sort_sql(spec)


# --- compare -----------------------------------------------------------------------------------

def test_compare_marks_differing_params_and_shows_final_and_best(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "compare", "alpha", "beta", "gamma", "--format", "json", "--clickhouse", dsn)
    assert code == 0
    rows = {row["field"]: row for row in json.loads(out)}
    names = ["alpha", "beta", "gamma"]
    assert rows["params.lr"]["differs"] == "*" and [rows["params.lr"][n] for n in names] == [0.001, 0.01, 0.0001]
    assert [rows["status"][n] for n in names] == ["ok", "ok", "running"]
    for metric, mode in (("acc", "max"), ("loss", "min")):
        finals = [rows[f"{metric} final"][n] for n in names]
        for name, got in zip(names, finals, strict=True):
            want = BY_NAME[name].final(metric)
            assert got == "NaN" if want is not None and math.isnan(want) else got == want
        best = [rows[f"{metric} best ({mode})"][n] for n in names]
        assert best == [BY_NAME[n].best(metric, mode)[0] for n in names]  # type: ignore[index]
        steps = [rows[f"{metric} best step"][n] for n in names]
        assert steps == [BY_NAME[n].best(metric, mode)[1] for n in names]  # type: ignore[index]
    two = run_cli(capsys, "compare", "alpha", "epsilon", "--metric", "acc", "--clickhouse", dsn)[1]
    amp = next(line for line in two.splitlines() if line.startswith("params.amp"))
    assert amp.split()[1:] == ["true", "true"], "same value: no mark"
    lr = next(line for line in two.splitlines() if line.startswith("params.lr"))
    assert lr.rstrip().endswith("*")
    assert "loss" not in two


def test_compare_unknown_run_is_a_readable_error(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "compare", "alpha", "alhpa", "--clickhouse", dsn)
    assert code == 2 and "run 'alhpa'" in err and "did you mean alpha" in err


# --- importance --------------------------------------------------------------------------------

def _ranks(values: list[float]) -> list[float]:
    return [sum(v < x for v in values) + (sum(v == x for v in values) + 1) / 2 for x in values]


def test_importance_is_spearman_for_numbers_and_group_means_for_categories(
        dsn: str, db: tuple[Any, str], capsys: pytest.CaptureFixture[str]) -> None:
    table = importance(*db, "vision", "acc")
    rows = {row[0]: row for row in table.rows}
    scored = [r for r in VISION if r.best("acc", "max") is not None]
    ys = [r.best("acc", "max")[0] for r in scored]  # type: ignore[index]
    for key in ("lr", "batch_size"):
        xs = [float(r.params[key]) for r in scored]
        want = statistics.correlation(_ranks(xs), _ranks(ys))
        assert rows[f"params.{key}"][1] == "numeric" and rows[f"params.{key}"][2] == len(scored)
        assert rows[f"params.{key}"][4] == pytest.approx(want)
    optimizer = rows["params.optimizer.name"]
    assert optimizer[1] == "categorical"
    groups: dict[str, list[float]] = {}
    for r, y in zip(scored, ys, strict=True):
        groups.setdefault(r.params["optimizer"]["name"], []).append(y)
    for name, values in groups.items():
        assert f"{name}: mean {statistics.mean(values):.4g} (n={len(values)})" in optimizer[5]
    grand = statistics.mean(ys)
    eta = sum(len(v) * (statistics.mean(v) - grand) ** 2 for v in groups.values()) / sum((y - grand) ** 2 for y in ys)
    assert optimizer[4] == pytest.approx(eta)
    code, out, err = run_cli(capsys, "importance", "--project", "vision", "--metric", "acc", "--clickhouse", dsn)
    assert code == 0 and "not causation" in out
    code, out, err = run_cli(capsys, "importance", "--project", "vision", "--metric", "acc", "--format", "json",
                             "--clickhouse", dsn)
    assert json.loads(out) and "not causation" in err


# --- reproduce ---------------------------------------------------------------------------------

def test_reproduce_gives_commit_command_config_and_data(dsn: str, db: tuple[Any, str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    info = reproduce(*db, "alpha")
    spec = BY_NAME["alpha"]
    assert info["config"] == spec.params
    assert info["git"]["commit"] == metadata.git_info()["commit"]
    assert info["command_line"] == metadata.command_line()
    assert info["data_versions"] == [{"name": "imagenet", "version": "v2", "uri": "s3://data/imagenet",
                                      "digest": None}]
    assert info["status"] == "ok" and info["hardware"]["cpu_count"] is not None
    config = tmp_path / "config.json"
    code, out, _ = run_cli(capsys, "reproduce", "gamma", "--format", "json", "--config-out", str(config),
                           "--clickhouse", dsn)
    assert code == 0
    shown = json.loads(out)
    assert shown["status"] == "running" and json.loads(config.read_text()) == BY_NAME["gamma"].params
    if shown["git"]["commit"]:
        assert shown["launch"].startswith(f"git checkout {shown['git']['commit']}")


# --- Python client -----------------------------------------------------------------------------

def test_client_returns_dataframes_and_arrow(dsn: str) -> None:
    client = runstream.Client(dsn)
    frame = client.runs("vision", where="params.amp = true", sort="name")
    assert list(frame["name"]) == sorted(r.name for r in VISION if r.params["amp"])
    arrow = client.runs("vision", output="arrow")
    assert arrow.num_rows == len(VISION) and "params.lr" in arrow.column_names
    history = client.metric_history(["alpha", "gamma"], "acc")
    got = {(n, s): v for n, s, v in zip(history["name"], history["step"], history["value"], strict=True)}
    for name in ("alpha", "gamma"):
        for step, value in BY_NAME[name].metrics["acc"]:
            assert math.isnan(got[(name, step)]) if math.isnan(value) else got[(name, step)] == value
    small = client.metric_history(["alpha", "beta"], ["acc", "loss"], points=3)
    assert small.groupby(["name", "metric"]).size().max() <= 3
    for (name, metric), group in small.groupby(["name", "metric"]):
        steps = [s for s, _ in BY_NAME[name].metrics[metric]]
        assert group["x"].min() == steps[0] and group["last_x"].max() == steps[-1]  # buckets span the curve
    compared = client.compare(["alpha", "beta"])
    assert compared.set_index("field").loc["params.lr", "differs"] == "*"
    assert list(client.best("vision", "acc")["name"]) == ["beta", "alpha", "gamma"]
    client.close()


def test_import_runstream_stays_light() -> None:
    probe = "import sys, runstream; print('pandas' in sys.modules, 'runstream.analysis.client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- report ------------------------------------------------------------------------------------

def test_report_renders_its_plots_in_headless_chromium(dsn: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("headless Chromium not installed: `make test` installs it (scripts/install-system-packages.sh)")
    out = tmp_path / "report.html"
    code, stdout, _ = run_cli(capsys, "report", "--project", "vision", "--out", str(out), "--metric", "acc",
                              "--clickhouse", dsn)
    assert code == 0 and str(out) in stdout
    page = out.read_text()
    assert "<svg" not in page, "the plots are drawn by the page's script, so finding them proves it ran"
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    done = dump_dom(browser, out, tmp_path / "profile")
    dom = done.stdout
    assert 'data-rendered="yes"' in dom, done.stderr[-2000:]
    assert '<div id="errors"></div>' in dom, "the page's script reported an error"
    assert dom.count('class="curve-plot"') == 2  # acc and loss
    assert dom.count('class="parallel-plot"') == 1 and dom.count('class="gpu-plot"') == 1
    curves_with_points = sum(
        any(not math.isnan(v) for _, v in r.metrics.get(m, [])) for r in VISION for m in ("acc", "loss"))
    parallel_lines = sum(r.best("acc", "max") is not None for r in VISION)
    assert dom.count("<polyline") == curves_with_points + parallel_lines
    assert dom.count("<rect") == len(VISION)
    for spec in VISION:
        assert spec.name in dom
    assert "other" not in dom, "runs of another project stay out"
