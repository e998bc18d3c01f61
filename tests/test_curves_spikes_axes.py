"""Charts that keep spikes, against any x-axis (issue 14), checked against numpy on what was logged.

A +1000 and a -1000 spike three steps apart in 200,000 steps (logged through the SDK to the spool and
ingested) and in 10^6 steps (written to chDB with numpy) must both show in every downsampled path: the
Client, `runstream curve --points`, the report's data, the `metric_curve` view and each Grafana curve
panel's SQL (variables substituted), at 50, 500 and 2,000 buckets. Each bucket's x, min, max, last and
point/NaN/+Inf/-Inf counts equal numpy's on the same points with the same bucket rule, twice over.
Two runs whose batch sizes differ 2x line up when drawn against the tokens they logged as an axis.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from databases import fresh_database_dsn
from headless_browser import dump_dom

import runstream
from runstream.analysis import queries
from runstream.analysis.curves import BUCKET_COLUMNS, history
from runstream.analysis.report import collect, write_report
from runstream.cli import main
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.dashboards import build, preview

pytestmark = pytest.mark.integration
PROJECT = "spikes"
STEPS = 200_000
UP, DOWN = 100_000, 100_003  # +1000 and -1000, three steps apart
MILLION = 1_000_000
BUCKET_COUNTS = (50, 500, 2000)


def spiky_values(n: int, seed: int) -> np.ndarray:
    """A noisy curve with both spikes, a NaN early, +Inf and -Inf mid-way and NaN as the very last value."""
    values = 1.0 + np.random.default_rng(seed).normal(0.0, 0.01, n)
    values[[n // 2, n // 2 + 3]] = [1000.0, -1000.0]
    values[[7, 3 * n // 4, 3 * n // 4 + 1, n - 1]] = [np.nan, np.inf, -np.inf, np.nan]
    return values


def numpy_buckets(x: np.ndarray, steps: np.ndarray, values: np.ndarray, n: int) -> list[list[Any]]:
    """The bucket rule of runstream.analysis.curves, in numpy: bucket = floor((x - lo) / (hi - lo) * n),
    the greatest x in bucket n - 1; per bucket first x, last x, finite min/max, the value at the greatest
    (x, step), and the point, NaN, +Inf and -Inf counts."""
    lo, hi = x.min(), x.max()
    bucket = (np.minimum(n - 1, np.floor((x - lo) / (hi - lo) * n)).astype(np.int64) if hi > lo
              else np.zeros(len(x), dtype=np.int64))
    if not (np.all(np.diff(x) >= 0) and np.all(np.diff(steps) > 0)):  # logged in x order already: no sort
        order = np.lexsort((steps, x, bucket))
        bucket, x, steps, values = bucket[order], x[order], steps[order], values[order]
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    out = []
    for start, end in zip(starts, [*starts[1:], len(bucket)], strict=True):
        v = values[start:end]
        finite = v[np.isfinite(v)]
        out.append([float(x[start:end].min()), float(x[end - 1]),
                    float(finite.min()) if finite.size else None, float(finite.max()) if finite.size else None,
                    float(v[-1]), end - start, int(np.isnan(v).sum()), int((v == np.inf).sum()),
                    int((v == -np.inf).sum())])
    return out


def same(got: list[Any], want: list[Any]) -> bool:
    return len(got) == len(want) and all(
        (a is None and b is None) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
        or a == b for a, b in zip(got, want, strict=True))


def assert_buckets(got: list[list[Any]], want: list[list[Any]], what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} buckets, numpy {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert same(g, w), f"{what}, bucket {i}: got {g}, numpy {w}"


def both_spikes(maxima: list[Any], minima: list[Any]) -> bool:
    return max(v for v in maxima if v is not None) == 1000.0 and min(v for v in minima if v is not None) == -1000.0


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, clickhouse_base: str) -> dict[str, Any]:
    """Through the SDK and the spool: the 200,000-step spiky run, two runs with batch sizes 2x apart
    logging tokens as an axis, and a run whose refused axis calls must leave no trace. Then, straight
    into chDB with numpy: a 10^6-step spiky run with known wall times."""
    spool = tmp_path_factory.mktemp("spikes") / "spool"
    values = spiky_values(STEPS, 1)
    run = runstream.init(PROJECT, "spiky", spool=str(spool), sample_interval=0)
    for step, value in enumerate(values.tolist()):
        run.log({"loss": value}, step=step)
    run.finish()
    ids = {"spiky": run.run_id}
    token_runs = {"small-batch": (1024, 2000), "big-batch": (2048, 1000)}  # tokens per step, steps: same tokens
    for name, (per_step, steps) in token_runs.items():
        run = runstream.init(PROJECT, name, spool=str(spool), sample_interval=0)
        if name == "big-batch":
            run.define_metric("loss", step_metric="tokens")  # drawn against tokens unless asked otherwise
        for step in range(steps):
            tokens = per_step * (step + 1)
            run.log({"loss": 1.0 / (1.0 + tokens / 1e5)}, step=step, axes={"tokens": tokens})
        run.finish()
        ids[name] = run.run_id
    run = runstream.init(PROJECT, "refusals", spool=str(spool), sample_interval=0)
    run.log({"loss": 1.0}, axes={"tokens": 10})
    refused = []
    for axes in ({"tokens": "abc"}, {"tokens": None}, {"tokens": True}, {"tokens": math.nan}, {"tokens": -math.inf},
                 {"step": 3}, {"tokens": 2.0, "epoch": [1, 2]}, {"loss": 5.0}):
        with pytest.raises((TypeError, ValueError)) as error:
            run.log({"loss": 2.0}, axes=axes)
        refused.append(str(error.value))
    run.log({"loss": 3.0}, axes={"tokens": 20})  # step 1: the refused calls did not advance the step
    run.finish()
    ids["refusals"] = run.run_id

    dsn = fresh_database_dsn(clickhouse_base, "spikes")
    sink = ClickHouseSink(dsn)
    ingest_spool(spool, sink)
    client, db = sink.client, sink.database
    million = spiky_values(MILLION, 2)
    t0 = int(time.time() * 1e6) - 2_000_000_000  # 1 ms per step, ending ~16 min ago: inside the dashboards' 24 h
    times = t0 + np.arange(MILLION, dtype=np.int64) * 1000 + (np.arange(MILLION) % 7)  # uneven gaps
    client.insert_arrow(f"{db}.metric_points", pa.table({
        "run_id": pa.array(["million"] * MILLION), "metric": pa.array(["loss"] * MILLION),
        "step": np.arange(MILLION, dtype=np.int64), "value": million,
        "time": pa.array(times, type=pa.timestamp("us", tz="UTC"))}))
    client.insert(f"{db}.runs", [["million", PROJECT, "million"]], column_names=["run_id", "project", "run_name"])
    return {"dsn": dsn, "client": client, "db": db, "ids": ids, "values": values, "million": million,
            "times": times, "refused": refused, "token_runs": token_runs}


def test_every_path_shows_both_spikes_and_equals_numpy(logged: dict[str, Any],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    client, db, dsn, spiky = logged["client"], logged["db"], logged["dsn"], logged["ids"]["spiky"]
    values = logged["values"]
    steps = np.arange(STEPS, dtype=np.int64)
    rs = runstream.Client(dsn)
    for n in BUCKET_COUNTS:
        want = numpy_buckets(steps.astype(np.float64), steps, values, n)
        assert both_spikes([w[3] for w in want], [w[2] for w in want])  # the reference itself sees them
        assert all(math.isnan(w[4]) for w in want[-1:]) and sum(w[6] + w[7] + w[8] for w in want) == 4
        # Client: every bucket equals numpy's (non-finite points counted, the NaN last value kept)
        frame = rs.metric_history("spiky", "loss", points=n, output="arrow")
        got = [list(row) for row in zip(*(frame.column(c).to_pylist() for c in BUCKET_COLUMNS), strict=True)]
        assert_buckets(got, want, f"Client, {n} buckets")
        assert set(frame.column("axis").to_pylist()) == {"step"}
        # CLI
        assert main(["curve", "spiky", "--metric", "loss", "--points", str(n), "--format", "json",
                     "--clickhouse", dsn]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert len(printed) == len(want) and both_spikes([r["max"] for r in printed], [r["min"] for r in printed])
        assert sum(r["nan_count"] for r in printed) == 2 and sum(r["count"] for r in printed) == STEPS
        # the report's data: [x, last_x, min, max, last, count, nan, +inf, -inf] per bucket
        report = collect(client, db, PROJECT, points=n)["curves"]["loss"][spiky]
        assert len(report) == len(want) and both_spikes([b[3] for b in report], [b[2] for b in report])
        assert report == [[None if isinstance(v, float) and not math.isfinite(v) else v for v in w] for w in want]
        assert report[-1][4] is None and report[-1][6] == 1, "the NaN last value: a gap in the line, marked"
        # the metric_curve view (migration 9)
        view = client.query(f"SELECT first_step, step, value, min, max, count, nan_count, pos_inf_count, "
                            f"neg_inf_count FROM {db}.metric_curve(metric = 'loss', runs = [{spiky!r}], "
                            f"points = {n}) ORDER BY step").result_rows
        assert_buckets([[float(r[0]), float(r[1]), r[3], r[4], r[2], *r[5:]] for r in view], want, f"view, {n}")
    rs.close()


def test_a_million_steps_in_one_query_equal_numpy_at_every_bucket_count_twice(logged: dict[str, Any]) -> None:
    client, db, values = logged["client"], logged["db"], logged["million"]
    steps = np.arange(MILLION, dtype=np.int64)
    for n in BUCKET_COUNTS:
        want = numpy_buckets(steps.astype(np.float64), steps, values, n)
        first = history(client, db, ["million"], ["loss"], points=n)
        again = history(client, db, ["million"], ["loss"], points=n)
        assert first.rows == [] or first.columns == ["run_id", "metric", "axis", *BUCKET_COLUMNS]
        assert_buckets([row[3:] for row in first.rows], want, f"10^6 steps, {n} buckets")
        assert_buckets([row[3:] for row in again.rows], [row[3:] for row in first.rows], "the same question twice")
        assert both_spikes([r[6] for r in first.rows], [r[5] for r in first.rows])


def test_time_and_relative_axes_equal_numpy(logged: dict[str, Any]) -> None:
    client, db, values, times = logged["client"], logged["db"], logged["million"], logged["times"]
    steps = np.arange(MILLION, dtype=np.int64)
    seconds = times.astype(np.float64) / 1e6
    relative = (times - times.min()).astype(np.float64) / 1e6
    for axis, x in (("time", seconds), ("relative", relative)):
        want = numpy_buckets(x, steps, values, 500)
        got = history(client, db, ["million"], ["loss"], points=500, x=axis).rows
        if axis == "time":  # datetimes, exact to the microsecond
            for row, w in zip(got, want, strict=True):
                assert row[3] == dt.datetime.fromtimestamp(0, dt.UTC) + dt.timedelta(microseconds=round(w[0] * 1e6))
            got = [[w[0], w[1], *row[5:]] for row, w in zip(got, want, strict=True)]
        else:
            got = [row[3:] for row in got]
        assert_buckets(got, want, f"x={axis}")
        assert both_spikes([w[3] for w in want], [w[2] for w in want])


def test_curves_by_tokens_line_up_across_batch_sizes(logged: dict[str, Any]) -> None:
    client, db, ids = logged["client"], logged["db"], logged["ids"]
    rs = runstream.Client(logged["dsn"])
    raw = rs.metric_history(["small-batch", "big-batch"], "loss", x="tokens")
    by_run = {name: dict(zip(group["x"], group["value"], strict=True)) for name, group in raw.groupby("name")}
    for name, (per_step, steps) in logged["token_runs"].items():
        tokens = per_step * (np.arange(steps) + 1.0)
        assert by_run[name] == dict(zip(tokens.tolist(), (1.0 / (1.0 + tokens / 1e5)).tolist(), strict=True))
    shared = set(by_run["small-batch"]) & set(by_run["big-batch"])
    assert len(shared) == 1000 and all(by_run["small-batch"][t] == by_run["big-batch"][t] for t in shared)
    # bucketed by tokens: both runs span the same tokens, so the same buckets hold the same values
    table = queries.metric_history(client, db, [ids["small-batch"], ids["big-batch"]], ["loss"], points=50,
                                   x="tokens")
    for name, (per_step, steps) in logged["token_runs"].items():
        tokens = per_step * (np.arange(steps) + 1.0)
        want = numpy_buckets(tokens, np.arange(steps), 1.0 / (1.0 + tokens / 1e5), 50)
        assert_buckets([row[3:] for row in table.rows if row[0] == ids[name]], want, f"{name} by tokens")
    # no x given: big-batch declared step_metric tokens (define_metric), small-batch did not
    default = queries.metric_history(client, db, [ids["small-batch"], ids["big-batch"]], ["loss"], points=50)
    assert {(row[0], row[2]) for row in default.rows} == {(ids["small-batch"], "step"), (ids["big-batch"], "tokens")}
    with pytest.raises(ValueError, match="x 'tokns': none of the runs logged a metric of that name"):
        queries.metric_history(client, db, [ids["small-batch"]], ["loss"], points=50, x="tokns")
    rs.close()


def test_refused_axis_values_name_the_axis_and_record_nothing(logged: dict[str, Any]) -> None:
    refused = logged["refused"]
    assert refused[0] == "axis 'tokens': expected a number, got str 'abc'"
    assert refused[1].startswith("axis 'tokens': expected a number, got NoneType")
    assert refused[2].startswith("axis 'tokens': expected a number, got bool")
    assert refused[3].startswith("axis 'tokens': expected a finite number, got nan")
    assert refused[4].startswith("axis 'tokens': expected a finite number, got -inf")
    assert refused[5].startswith("axis 'step': step, time, relative are built-in x-axes")
    assert refused[6].startswith("metric 'epoch': expected")
    assert refused[7] == "axis 'loss': logged as 5.0 and as the metric value 2.0 in one call"
    client, db, run_id = logged["client"], logged["db"], logged["ids"]["refusals"]
    stored = client.query(f"SELECT metric, step, value FROM {db}.metric_points FINAL WHERE run_id = {{r:String}} "
                          "ORDER BY metric, step", parameters={"r": run_id}).result_rows
    assert [tuple(row) for row in stored] == [("loss", 0, 1.0), ("loss", 1, 3.0), ("tokens", 0, 10.0),
                                              ("tokens", 1, 20.0)]


def _grafana_sql(sql: str, db: str, variables: dict[str, list[str]], start: dt.datetime, end: dt.datetime,
                 interval_us: int) -> str:
    """The panel's SQL as Grafana sends it, with $__timeInterval at `interval_us` (Grafana picks it from the
    panel width and the time range; any value must keep the spikes)."""
    sql = re.sub(r"\$__timeInterval\(([^)]+)\)",
                 lambda m: f"toStartOfInterval({m[1]}, INTERVAL {interval_us} microsecond)", sql)
    return preview.expand(sql, db, variables, start, end)


def test_every_grafana_curve_panel_shows_both_spikes(logged: dict[str, Any]) -> None:
    client, db = logged["client"], logged["db"]
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    start = end - dt.timedelta(hours=24)
    variables = preview.variable_values(client, db, build.RUNS_VARIABLES, start, end)
    assert variables["x_axis"] == ["step"] and variables["curve_points"] == ["1000"]
    variables.update(project=[PROJECT], run=["million", logged["ids"]["spiky"]], metric=["loss"])
    panels = [q for q in build.RUNS if q.panel in ("curves", "curves_time")]
    assert {q.title for q in panels} == {"Metric curves, overlaid",
                                         "Metric curves by x_axis: min, max, last per bucket"}
    span_us = int(logged["times"][-1] - logged["times"][0])
    steps = np.arange(MILLION, dtype=np.int64)
    for n in BUCKET_COUNTS:
        variables["curve_points"] = [str(n)]
        for query in panels:
            result = client.query(_grafana_sql(query.sql, db, variables, start, end, max(1, span_us // n)))
            assert tuple(result.column_names) == query.columns
            rows = [dict(zip(query.columns, row, strict=True)) for row in result.result_rows]
            for series in ("million loss", "spiky loss"):
                mine = [r for r in rows if r["series"] == series]
                assert both_spikes([r["max"] for r in mine], [r["min"] for r in mine]), f"{query.title}, {series}, {n}"
                assert sum(r["non_finite"] for r in mine) == 4, "NaN and ±Inf marked, not dropped"
            if query.panel == "curves":  # the same buckets as the Client's
                want = numpy_buckets(steps.astype(np.float64), steps, logged["million"], n)
                mine = [r for r in rows if r["series"] == "million loss"]
                assert [(r["x"], r["min"], r["max"]) for r in mine] == [(w[0], w[2], w[3]) for w in want]
                assert all(same([r["last"]], [w[4]]) for r, w in zip(mine, want, strict=True))
    # the x_axis variable offers any logged metric: tokens against the token runs
    variables.update(run=[logged["ids"]["small-batch"]], x_axis=["tokens"], curve_points=["50"])
    by_tokens = next(q for q in panels if q.panel == "curves")
    rows = client.query(_grafana_sql(by_tokens.sql, db, variables, start, end, 1000)).result_rows
    tokens = 1024 * (np.arange(2000) + 1.0)
    want = numpy_buckets(tokens, np.arange(2000), 1.0 / (1.0 + tokens / 1e5), 50)
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [(w[0], w[2], w[3], w[4]) for w in want]


def test_points_must_be_a_positive_integer(logged: dict[str, Any]) -> None:
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=r"points: expected a number of buckets per curve \(an integer >= 1\)"):
            history(logged["client"], logged["db"], ["million"], ["loss"], points=bad)


def test_the_report_draws_bands_marks_non_finite_points_and_takes_any_axis(logged: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    """In headless Chromium: per curve a min-max band (the spikes are its edges) and a line of last values;
    a marker for each bucket holding NaN/±Inf, titled with the counts; the x-axis named as asked."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("headless Chromium not installed: `make test` installs it (scripts/install-system-packages.sh)")
    client, db, ids = logged["client"], logged["db"], logged["ids"]
    page = write_report(client, db, PROJECT, tmp_path / "report.html", points=50)
    dom = dump_dom(browser, page, tmp_path / "profile").stdout
    assert 'data-rendered="yes"' in dom and '<div id="errors"></div>' in dom
    data = collect(client, db, PROJECT, points=50)
    curves = [(run_id, buckets) for by_run in data["curves"].values() for run_id, buckets in by_run.items()]
    assert dom.count('class="curve-band"') == sum(any(b[2] is not None for b in buckets) for _, buckets in curves)
    marked = [b for run_id, buckets in curves if run_id == ids["spiky"] for b in buckets if any(b[6:])]
    assert len(marked) >= 2 and dom.count('class="non-finite"') == sum(
        any(b[6:]) for _, buckets in curves for b in buckets)
    assert "spiky: 1 NaN" in dom and "1 +Inf, 1 -Inf" in dom
    assert ">step</text>" in dom
    by_tokens = write_report(client, db, PROJECT, tmp_path / "tokens.html", points=50, x="tokens")
    dom = dump_dom(browser, by_tokens, tmp_path / "profile2").stdout
    assert '<div id="errors"></div>' in dom and ">tokens</text>" in dom
