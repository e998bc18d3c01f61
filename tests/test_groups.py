"""Groups and sweeps: group-aggregated curves against numpy, and the labels in the run list and its filter.

Runs are logged through the real SDK into a spool folder and ingested through the consumer's sink into
chDB. The group holds the awkward cases on purpose: a run missing some steps, a shorter run, a NaN and
a +Inf among the values, a step logged twice (the later value wins, as in every view), a step where no
run has a finite value, and runs that must stay out (same group in another project, another group in
the project, no group). Expectations are computed here with numpy from what was logged, never read
back from the database.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from databases import spool_workload_dsn
from headless_browser import dump_dom

import runstream
from runstream.analysis import queries
from runstream.analysis.group_curves import group_curve
from runstream.cli import main

pytestmark = pytest.mark.integration
NAN, INF = float("nan"), float("inf")
GROUP = "seeds-lr3e-4"


@dataclass
class Spec:
    name: str
    project: str
    group: str | None
    sweep: str | None
    job_type: str | None
    # (metric, step, value) in logging order; a step logged twice keeps the later value
    points: list[tuple[str, int, float]] = field(default_factory=list)

    def curve(self, metric: str) -> dict[int, float]:
        values: dict[int, float] = {}
        for name, step, value in self.points:
            if name == metric:
                values[step] = value
        return values


def _seeded(seed: int, steps: range, skip: set[int] = frozenset(), special: dict[int, float] | None = None,
            metrics: tuple[str, ...] = ("loss", "acc")) -> list[tuple[str, int, float]]:
    rng = np.random.default_rng(seed)
    points = []
    for step in steps:
        if step in skip:
            continue
        for metric in metrics:
            value = float(rng.normal(1.0 / (step + 1), 0.05)) if metric == "loss" else float(rng.uniform(0, 1))
            if special and metric == "loss" and step in special:
                value = special[step]
            points.append((metric, step, value))
    return points


SPECS = [
    Spec("seed-0", "vision", GROUP, "lr", "train", _seeded(0, range(20), special={19: NAN})),
    # missing steps 5-7, a NaN at step 3, the last step NaN too, and step 4 logged again with a new value
    Spec("seed-1", "vision", GROUP, "lr", "train",
         _seeded(1, range(20), skip={5, 6, 7}, special={3: NAN, 19: NAN}) + [("loss", 4, 0.123456789)]),
    # shorter, with a +Inf at step 10 (a diverged step: left out like NaN); never logged acc
    Spec("seed-2", "vision", GROUP, "lr", "train", _seeded(2, range(15), special={10: INF}, metrics=("loss",))),
    # same group name in another project: only counted when no project is given
    Spec("seed-audio", "audio", GROUP, "lr", "train", _seeded(3, range(20))),
    Spec("other-group", "vision", "seeds-lr1e-3", "lr", "eval", _seeded(4, range(20))),
    Spec("unlabelled", "vision", None, None, None, _seeded(5, range(20))),
]


def log_specs(spool: Path) -> None:
    for spec in SPECS:
        run = runstream.init(spec.project, spec.name, group=spec.group, sweep=spec.sweep, job_type=spec.job_type,
                             params={"seed": SPECS.index(spec)}, spool=str(spool), sample_interval=0)
        for metric, step, value in spec.points:
            run.log({metric: value}, step=step)
        run.finish("ok")


def expected(group: str, project: str | None, metrics: tuple[str, ...] = ("acc", "loss")) -> list[tuple[Any, ...]]:
    """The aggregate computed with numpy from what was logged: per (metric, step), the finite values."""
    members = [s for s in SPECS if s.group == group and (project is None or s.project == project)]
    rows = []
    for metric in sorted(metrics):
        steps = sorted({step for s in members for step in s.curve(metric)})
        for step in steps:
            values = np.array([s.curve(metric)[step] for s in members if step in s.curve(metric)], dtype=float)
            finite = values[np.isfinite(values)]
            if finite.size:
                rows.append((metric, step, float(np.mean(finite)), float(np.min(finite)), float(np.max(finite)),
                             int(finite.size)))
            else:
                rows.append((metric, step, None, None, None, 0))
    return rows


@pytest.fixture(scope="module")
def dsn(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return spool_workload_dsn(clickhouse_base, tmp_path_factory, "groups", log_specs)


def assert_rows_match(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    assert [(m, s, n) for m, s, *_, n in got] == [(m, s, n) for m, s, *_, n in want]
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g[2:5], w[2:5], strict=True):
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (g, w)


# --- group_curve ---------------------------------------------------------------------------------

def test_group_curve_equals_numpy_over_the_finite_values(db: tuple[Any, str]) -> None:
    got = group_curve(*db, GROUP, project="vision")
    want = expected(GROUP, "vision")
    assert_rows_match(got, want)
    by_key = {(m, s): row for m, s, *row in got}
    # the cases the workload was built for, spelled out
    assert by_key[("loss", 19)] == [None, None, None, 0]  # every run's value is NaN, or it never logged it
    assert by_key[("loss", 6)][3] == 2  # seed-1 skipped the step
    assert by_key[("loss", 3)][3] == 2  # seed-1's NaN left out
    assert by_key[("loss", 10)][3] == 2  # seed-2's +Inf left out
    assert by_key[("loss", 16)][3] == 2  # seed-2 is shorter: seed-0 and seed-1 only
    assert by_key[("acc", 5)][3] == 1  # seed-2 never logged acc, seed-1 skipped step 5
    # the re-logged step counts once, with its later value
    seed0, seed1, seed2 = (s.curve("loss")[4] for s in SPECS[:3])
    assert seed1 == 0.123456789
    assert math.isclose(by_key[("loss", 4)][0], (seed0 + seed1 + seed2) / 3, rel_tol=1e-12)
    assert by_key[("loss", 4)][3] == 3


def test_group_curve_counts_match_the_stored_points_with_and_without_final(db: tuple[Any, str]) -> None:
    """Count what was logged against what was stored: the aggregate's counts plus the non-finite values
    equal the distinct points of the group's runs (FINAL), and the raw table holds one more row (the re-logged
    step) until a merge."""
    client, database = db
    got = group_curve(client, database, GROUP, project="vision")
    members = [s for s in SPECS[:3]]
    distinct = sum(len(s.curve(m)) for s in members for m in ("loss", "acc"))
    non_finite = sum(1 for s in members for m in ("loss", "acc") for v in s.curve(m).values() if not math.isfinite(v))
    assert sum(row[5] for row in got) + non_finite == distinct
    ids = [row[0] for row in client.query(
        f"SELECT run_id FROM {database}.runs FINAL WHERE run_group = {{g:String}} AND project = 'vision'",
        parameters={"g": GROUP}).result_rows]
    final_rows = client.query(f"SELECT count() FROM {database}.metric_points FINAL WHERE has({{ids:Array(String)}}, "
                              "toString(run_id))", parameters={"ids": ids}).result_rows[0][0]
    raw_rows = client.query(f"SELECT count() FROM {database}.metric_points WHERE has({{ids:Array(String)}}, "
                            "toString(run_id))", parameters={"ids": ids}).result_rows[0][0]
    assert final_rows == distinct
    assert raw_rows in (distinct, distinct + 1)  # the twin of the re-logged step, until merged away


def test_group_curve_without_project_takes_the_group_in_every_project(db: tuple[Any, str]) -> None:
    assert_rows_match(group_curve(*db, GROUP), expected(GROUP, None))


def test_group_curve_selects_metrics(db: tuple[Any, str]) -> None:
    got = group_curve(*db, GROUP, metrics=["acc"], project="vision")
    assert_rows_match(got, expected(GROUP, "vision", ("acc",)))
    assert {row[0] for row in got} == {"acc"}


@pytest.mark.parametrize(("group", "metrics", "project", "fragment"), [
    ("seeds-lr3e4", None, None, "group 'seeds-lr3e4': no run has this group (groups: seeds-lr3e-4"),
    (GROUP, ["accuracy"], "vision", "metric 'accuracy': no run of group 'seeds-lr3e-4' in project 'vision'"),
    ("seeds-lr1e-3", None, "audio", "group 'seeds-lr1e-3': no run in project 'audio' has this group"),
    ("", None, None, "group: expected a group name"),
    ("g" * 129, None, None, "group: at most 128 characters, got 129"),
])
def test_group_curve_errors_name_the_value(db: tuple[Any, str], group: str, metrics: list[str] | None,
                                           project: str | None, fragment: str) -> None:
    with pytest.raises(ValueError, match="^" + fragment.replace("(", r"\(").replace(".", r"\.")):
        group_curve(*db, group, metrics, project)


# --- labels in the run list and its filter ---------------------------------------------------------

def names(table: queries.Table) -> set[str]:
    return {row["name"] for row in table.records()}


def test_run_list_shows_group_job_type_and_sweep(db: tuple[Any, str]) -> None:
    table = queries.runs(*db, project="vision")
    assert table.columns[5:8] == ["group", "job_type", "sweep"]
    records = {r["name"]: r for r in table.records()}
    for spec in SPECS:
        if spec.project == "vision":
            assert (records[spec.name]["group"], records[spec.name]["job_type"], records[spec.name]["sweep"]) == \
                (spec.group, spec.job_type, spec.sweep)


@pytest.mark.parametrize(("where", "keep"), [
    (f"group = '{GROUP}' and sweep = 'lr'", lambda s: s.group == GROUP and s.sweep == "lr"),
    ("group like 'seeds-%' and job_type = 'eval'", lambda s: (s.group or "").startswith("seeds-")
     and s.job_type == "eval"),
    ("group is null", lambda s: s.group is None),
    (f"group != '{GROUP}'", lambda s: s.group is not None and s.group != GROUP),  # a run without one never matches
    ("sweep in ('lr', 'wd') and not job_type = 'eval'", lambda s: s.sweep in ("lr", "wd") and s.job_type != "eval"),
])
def test_filter_on_labels_selects_what_python_selects(db: tuple[Any, str], where: str, keep: Any) -> None:
    assert names(queries.runs(*db, project="vision", where=where)) == \
        {s.name for s in SPECS if s.project == "vision" and keep(s)}


def test_group_and_sweep_shortcuts_and_sort(db: tuple[Any, str]) -> None:
    assert names(queries.runs(*db, group=GROUP)) == {"seed-0", "seed-1", "seed-2", "seed-audio"}
    assert names(queries.runs(*db, group=GROUP, sweep="lr", project="vision")) == {"seed-0", "seed-1", "seed-2"}
    assert names(queries.runs(*db, sweep="nope")) == set()
    ordered = [r["name"] for r in queries.runs(*db, project="vision", sort="-group,name").records()]
    assert ordered == ["seed-0", "seed-1", "seed-2", "other-group", "unlabelled"]  # no group sorts last
    with pytest.raises(ValueError, match="^group: expected a non-empty label, got ''"):
        queries.runs(*db, group="")


def test_runs_without_labels_keep_their_columns(db: tuple[Any, str]) -> None:
    table = queries.runs(*db, project="vision", where="group is null")
    assert "group" not in table.columns and "sweep" not in table.columns
    assert names(table) == {"unlabelled"}


def test_runs_cli_group_and_sweep(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["runs", "--project", "vision", "--group", GROUP, "--sweep", "lr", "--format", "csv",
                 "--clickhouse", dsn])
    out = capsys.readouterr().out
    assert code == 0
    header, *lines = out.strip().splitlines()
    assert header.split(",")[5:8] == ["group", "job_type", "sweep"]
    assert sorted(line.split(",")[1] for line in lines) == ["seed-0", "seed-1", "seed-2"]


# --- the report's group section ---------------------------------------------------------------------

def test_report_has_a_group_section_with_the_aggregates(db: tuple[Any, str], dsn: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from runstream.analysis.report import collect

    data = collect(*db, "vision", points=500)
    groups = {g["group"]: g for g in data["groups"]}
    assert set(groups) == {GROUP, "seeds-lr1e-3"} and data["groups_more"] == 0
    assert (groups[GROUP]["runs"], groups["seeds-lr1e-3"]["runs"]) == (3, 1)
    drawn = [(metric, *row) for metric, rows in sorted(groups[GROUP]["curves"].items()) for row in rows]
    assert_rows_match([tuple(row) for row in drawn], expected(GROUP, "vision"))
    thinned = collect(*db, "vision", points=5)["groups"]
    curve = next(g for g in thinned if g["group"] == GROUP)["curves"]["loss"]
    assert [row[0] for row in curve] == [0, 5, 10, 14, 19]  # evenly spaced, first and last kept

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("headless Chromium not installed: `make test` installs it (scripts/install-system-packages.sh)")
    out = tmp_path / "report.html"
    assert main(["report", "--project", "vision", "--out", str(out), "--clickhouse", dsn]) == 0
    capsys.readouterr()
    done = dump_dom(browser, out, tmp_path / "profile")
    dom = done.stdout
    assert 'data-rendered="yes"' in dom and '<div id="errors"></div>' in dom, done.stderr[-2000:]
    # one band chart per (group, metric): seeds-lr3e-4 logged loss and acc, seeds-lr1e-3 too
    assert dom.count('class="group-plot"') == 4
    assert dom.count('class="band"') == dom.count('class="mean"') == 4
    assert f"{GROUP} · loss" in dom
