"""Histograms (`Run.log_histogram`): binned in the SDK, through the spool and `runstream ingest` and through
the real broker into chDB, read back by `Client.histograms`, `runstream histograms`, the report and the
Grafana heatmap panel.

Every expectation is computed here with numpy from what was logged: stored counts equal
`numpy.histogram` of the finite values on the stored edges, NaN/+Inf/-Inf counts equal numpy's counts,
each histogram is stored once with FINAL (a step logged again keeps the later one) and every logged
one without it. Bad input raises naming the metric and the value, records nothing, and loses nothing
logged before.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from consuming import consume_until
from databases import fresh_database_dsn
from headless_browser import dump_dom
from spool_reader import spooled

import runstream
from runstream.analysis.histograms import HISTOGRAM_COLUMNS, histograms, latest_histograms, sparkline
from runstream.cli import main
from runstream.consumer.dsn import connect
from runstream.producer.histograms import MAX_BINS, histogram_fields
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

NAN, INF = float("nan"), float("inf")
RNG = np.random.default_rng(14)


def _settings(spool: Path, **extra: Any) -> ProducerSettings:
    return ProducerSettings(spool=spool, sample_interval_s=0, heartbeat_interval_s=0, **extra)


def _numpy_histogram(values: Any, edges: list[float]) -> tuple[list[int], int, int, int]:
    """What numpy says of these values on these edges: (counts of the finite values, nan, -inf, +inf)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    return (np.histogram(finite, bins=np.asarray(edges))[0].tolist(), int(np.isnan(array).sum()),
            int(np.isneginf(array).sum()), int(np.isposinf(array).sum()))


# -- binning in the SDK ---------------------------------------------------------------------------------------

class _DetachedOnly:
    """The torch protocol `log_histogram` relies on (torch is not in the test environment: helper F's
    framework tests log real gradient tensors): `.numpy()` works only after `.detach().cpu()`, and for a
    bfloat16 tensor only after `.float()`, with torch's own errors."""

    def __init__(self, array: np.ndarray[Any, Any], detached: bool = False, bfloat16: bool = False) -> None:
        self.array, self.detached, self.bfloat16 = array, detached, bfloat16

    def detach(self) -> _DetachedOnly:
        return _DetachedOnly(self.array, detached=True, bfloat16=self.bfloat16)

    def cpu(self) -> _DetachedOnly:
        return self

    def float(self) -> _DetachedOnly:
        return _DetachedOnly(self.array, detached=self.detached)

    def numpy(self) -> np.ndarray[Any, Any]:
        if not self.detached:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad")
        if self.bfloat16:
            raise TypeError("Got unsupported ScalarType BFloat16")
        return self.array


WITH_NON_FINITE = np.concatenate([RNG.normal(0, 1, 997), [NAN, INF, -INF, NAN]])
INPUTS = {
    "list": (RNG.normal(3, 2, 500).tolist(), {}),
    "float32 matrix": (RNG.lognormal(0, 1, (40, 25)).astype(np.float32), {"bins": 10}),
    "ints": (RNG.integers(-5, 5, 300), {"bins": 7}),
    "nan and inf": (WITH_NON_FINITE, {}),
    "auto": (WITH_NON_FINITE, {"bins": "auto"}),
    "sturges": (RNG.exponential(1, 2000), {"bins": "sturges"}),
    "edges as bins": (WITH_NON_FINITE, {"bins": [-1.0, 0.0, 0.5, 4.0]}),
    "edges": (WITH_NON_FINITE, {"edges": [-10, -1, 0, 1, 10]}),
    "one value": ([2.5, 2.5, 2.5], {"bins": 4}),
    "a range of one ulp": ([1.0, float(np.nextafter(1.0, 2.0))], {}),
    "only non-finite": ([NAN, INF, INF], {}),
    "jax": (jnp.linspace(-2.0, 2.0, 101), {"bins": 8}),
    "tensor protocol": (_DetachedOnly(RNG.normal(0, 1, 64)), {"bins": 5}),
    "bfloat16 tensor protocol": (_DetachedOnly(RNG.normal(0, 1, 64), bfloat16=True), {"bins": 5}),
}


@pytest.mark.parametrize(("values", "options"), INPUTS.values(), ids=INPUTS.keys())
def test_bins_are_numpys_on_the_stored_edges(values: Any, options: dict[str, Any]) -> None:
    fields = histogram_fields("grad/norm", values, **options)
    edges, counts = fields["edges"], fields["counts"]
    raw = values.array if isinstance(values, _DetachedOnly) else np.asarray(values)
    assert len(edges) == len(counts) + 1 and np.all(np.diff(edges) > 0) and np.all(np.isfinite(edges))
    assert (counts, fields["nan_count"], fields["neg_inf_count"], fields["pos_inf_count"]) == \
        _numpy_histogram(raw, edges)
    finite = np.asarray(raw, dtype=np.float64)[np.isfinite(np.asarray(raw, dtype=np.float64))]
    given = options.get("edges", options.get("bins"))
    if isinstance(given, list):
        assert edges == [float(e) for e in given]
    elif finite.size and np.ptp(finite) > 1e-9:  # a bin count or rule: numpy's own edges
        assert edges == np.histogram_bin_edges(finite, bins=given or 64).tolist()
        assert sum(counts) == finite.size, "every finite value is in a bin"


def test_given_edges_and_counts_are_kept_and_huge_rules_are_cut() -> None:
    fields = histogram_fields("act", edges=[0, 1, 2.5], counts=np.array([3.0, 4.0]))
    assert fields == {"edges": [0.0, 1.0, 2.5], "counts": [3, 4], "nan_count": 0, "neg_inf_count": 0,
                      "pos_inf_count": 0}
    # numpy's 'fd' asks for ~10^10 bins here (a tight bulk, far outliers; 95 GB of edges): cut to MAX_BINS
    # equal bins before numpy allocates anything
    values = np.concatenate([RNG.normal(0, 1e-6, 5000), [-1e3, 1e3]])
    cut = histogram_fields("act", values, bins="fd")
    assert cut["edges"] == np.histogram_bin_edges(values, MAX_BINS).tolist() and sum(cut["counts"]) == values.size


def test_sparkline_draws_the_counts() -> None:
    assert sparkline([0, 1, 4, 8]) == " ▁▄█"
    assert sparkline([0, 0]) == "  "


# -- bad input ------------------------------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"values": []}, ValueError, r"'w/fc1'\): values is empty"),
    ({"values": np.zeros((3, 0))}, ValueError, r"'w/fc1'\): values is empty \(shape \(3, 0\)\)"),
    ({"values": ["a", "b"]}, TypeError,
     r"'w/fc1'\): values must be numbers, got an array of dtype <U1 \(\['a', 'b'\]\)"),
    ({"values": [1.0, None]}, TypeError, r"'w/fc1'\): values must be numbers, got an array of dtype object"),
    ({"values": [[1, 2], [3]]}, TypeError,
     r"'w/fc1'\): values must be an array of numbers, got list \[\[1, 2\], \[3\]\]"),
    ({"values": [1j]}, TypeError, r"'w/fc1'\): values must be numbers, got an array of dtype complex128"),
    ({"values": [1.0], "bins": 0}, ValueError, r"'w/fc1'\): bins must be between 1 and 10000, got 0"),
    ({"values": [1.0], "bins": -3}, ValueError, r"'w/fc1'\): bins must be between 1 and 10000, got -3"),
    ({"values": [1.0], "bins": "many"}, ValueError, r"'w/fc1'\): bins must be .* got 'many'"),
    ({"values": [1.0], "edges": [1, 0]}, ValueError, r"'w/fc1'\): edges must be strictly increasing, got \[1, 0\]"),
    ({"values": [1.0], "edges": [0, 1, 1]}, ValueError, r"edges must be strictly increasing, got \[0, 1, 1\]"),
    ({"values": [1.0], "edges": [0, NAN]}, ValueError, r"'w/fc1'\): edges must be finite, got \[0, nan\]"),
    ({"values": [1.0], "edges": [0, INF]}, ValueError, r"'w/fc1'\): edges must be finite, got \[0, inf\]"),
    ({"values": [1.0], "edges": [0]}, ValueError, r"'w/fc1'\): edges must be a list of at least 2 numbers"),
    ({"edges": [0, 1, 2], "counts": [1]}, ValueError, r"'w/fc1'\): 1 counts for 3 edges"),
    ({"edges": [0, 1], "counts": [-1]}, ValueError, r"'w/fc1'\): counts must be integers >= 0, got -1 in \[-1\]"),
    ({"edges": [0, 1], "counts": [1.5]}, TypeError, r"'w/fc1'\): counts must be integers, got \[1.5\]"),
    ({"edges": [0, 1], "counts": [1], "values": [1.0]}, ValueError, "give values or edges with counts, not both"),
    ({"counts": [1]}, ValueError, r"'w/fc1'\): counts need their edges"),
    ({}, ValueError, r"'w/fc1'\): give values"),
    ({"values": [-1e308, 1e308]}, ValueError, r"range \[-1e\+308, 1e\+308\] is wider than a double holds"),
    ({"values": [1.0], "step": -1}, ValueError, r"'w/fc1'\): step: expected an integer from 0 to 2\*\*63-1, got -1"),
    ({"values": [1.0], "step": 1.5}, TypeError, r"'w/fc1'\): step: expected an integer, got float 1.5"),
]


def test_bad_input_is_refused_naming_the_metric_and_value_and_nothing_is_lost(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    run = Run(project="hist", name="bad", settings=_settings(spool))
    run.log_histogram("w/fc1", [1.0, 2.0, NAN], step=0)
    for options, error, message in BAD:
        with pytest.raises(error, match=message):
            run.log_histogram("w/fc1", **options)
    with pytest.raises(ValueError, match="histogram key is empty"):
        run.log_histogram("", [1.0])
    run.log_histogram("w/fc1", [3.0], step=1)
    run.finish()
    with pytest.raises(RuntimeError, match="is finished"):
        run.log_histogram("w/fc1", [1.0])
    records = spooled(spool, "metric_histogram")
    assert [(r["metric"], r["step"], sum(r["counts"]), r["nan_count"]) for r in records] == [
        ("w/fc1", 0, 2, 1), ("w/fc1", 1, 1, 0)]


def test_other_ranks_log_histograms_only_with_log_all_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RUNSTREAM_RUN_ID", "0199a0d0-0000-7000-8000-000000000014")
    for all_ranks, spool in ((False, tmp_path / "lead-only"), (True, tmp_path / "all")):
        run = Run(project="hist", settings=_settings(spool, log_all_ranks=all_ranks))
        run.log_histogram("grad/norm", [1.0, 2.0], step=5)
        if all_ranks:  # a rank that records checks its input; one that records nothing does not bin it (as log())
            with pytest.raises(ValueError, match=r"log_histogram\('grad/norm'\): values is empty"):
                run.log_histogram("grad/norm", [], step=5)
        run.finish()
        records = spooled(spool, "metric_histogram")
        if all_ranks:
            assert [(r["rank"], r["node"], r["step"], r["counts"][0] + r["counts"][-1]) for r in records] == [
                (3, socket.gethostname(), 5, 2)]
        else:
            assert records == []


@pytest.mark.integration
def test_a_histogram_another_producer_got_wrong_is_rejected_at_ingest_and_the_rest_stored(
        tmp_path: Path, clickhouse_dsn: str) -> None:
    from runstream.consumer import ClickHouseSink, ingest_spool
    from runstream.producer.ids import event_id

    spool = tmp_path / "spool"
    run = Run(project="hist", name="poison", settings=_settings(spool))
    run.log_histogram("ok", [1.0, 2.0, NAN], step=0, bins=2)
    now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1e6)
    base = {"run_id": run.run_id, "timestamp_us": now_us, "attempt": 1, "rank": 0, "node": "n", "step": 1,
            "time_us": now_us, "nan_count": 0, "neg_inf_count": 0, "pos_inf_count": 0}
    for metric, edges, counts in (("negative", [0.0, 1.0], [-5]), ("mismatched", [0.0, 1.0, 2.0], [1]),
                                  ("decreasing", [1.0, 0.0], [1])):  # what the SDK refuses, sent around it
        run._worker.put(("event", "metric_histogram", run.run_id,
                         {**base, "event_id": event_id(), "metric": metric, "edges": edges, "counts": counts}))
    run.finish()
    report = ingest_spool(spool, ClickHouseSink(clickhouse_dsn))
    assert len(report.rejected) == 3 and all("metric_histogram" in line for line in report.rejected)
    client, db = connect(clickhouse_dsn, create_database=False)
    assert [h["metric"] for h in histograms(client, db, run.run_id)] == ["ok"]
    assert histograms(client, db, run.run_id)[0]["counts"] == [1, 1]


# -- stored: spool + `runstream ingest`, Client, CLI, report, heatmap -------------------------------------------

def _log_workload(spool: Path) -> tuple[str, dict[tuple[str, int], tuple[list[float], list[int], int, int, int]]]:
    """Two runs' histograms; returns run A's id and its expected (metric, step) -> (edges, counts, nan, -inf, +inf),
    the later one where a step is logged twice."""
    expected: dict[tuple[str, int], tuple[list[float], list[int], int, int, int]] = {}
    run = Run(project="hist", name="hist-a", settings=_settings(spool))
    for step in range(0, 50, 10):
        grads = RNG.lognormal(-step / 20, 0.5, 2000)
        grads[:step // 10] = NAN  # 0..4 NaN, one +Inf from step 20
        if step >= 20:
            grads[-1] = INF
        run.log({"loss": float(np.mean(grads[np.isfinite(grads)]))}, step=step)
        run.log_histogram("grad/norm", grads, step=step, bins="auto")
        fields = histogram_fields("grad/norm", grads, bins="auto")
        assert (fields["counts"], fields["nan_count"], fields["neg_inf_count"], fields["pos_inf_count"]) == \
            _numpy_histogram(grads, fields["edges"])
        expected[("grad/norm", step)] = (fields["edges"], *_numpy_histogram(grads, fields["edges"]))
    acts = RNG.normal(0, 1, (64, 32))
    acts[0, 0] = -INF
    run.log_histogram("act/relu", acts, step=0, edges=[-3, -1, 0, 1, 3])
    expected[("act/relu", 0)] = ([-3.0, -1.0, 0.0, 1.0, 3.0], *_numpy_histogram(acts, [-3, -1, 0, 1, 3]))
    run.log_histogram("act/relu", [5.0], step=1, bins=2)  # replaced by the next: the later histogram wins
    run.log_histogram("act/relu", edges=[0.0, 0.5, 1.0], counts=[7, 9], step=1)
    expected[("act/relu", 1)] = ([0.0, 0.5, 1.0], [7, 9], 0, 0, 0)
    run.finish()
    other = Run(project="hist", name="hist-b", settings=_settings(spool))
    other.log_histogram("grad/norm", RNG.normal(0, 1, 100), step=3, bins=16)
    other.finish()
    return run.run_id, expected


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, clickhouse_base: str) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("histograms")
    spool = tmp / "spool"
    run_id, expected = _log_workload(spool)
    dsn = fresh_database_dsn(clickhouse_base, "hist")
    assert main(["ingest", str(spool), "--clickhouse", dsn]) == 0
    client, db = connect(dsn, create_database=False)
    return {"dsn": dsn, "client": client, "db": db, "run_id": run_id, "expected": expected, "tmp": tmp}


@pytest.mark.integration
def test_stored_counts_are_numpys_with_and_without_final(stored: dict[str, Any]) -> None:
    client, db, run_id = stored["client"], stored["db"], stored["run_id"]
    rows = client.query(f"SELECT metric, step, edges, counts, nan_count, neg_inf_count, pos_inf_count "
                        f"FROM {db}.metric_histograms FINAL WHERE run_id = {{r:String}}",
                        parameters={"r": run_id}).result_rows
    got = {(m, s): (list(e), [int(c) for c in cs], n, ni, pi) for m, s, e, cs, n, ni, pi in rows}
    assert got == stored["expected"]
    # Without FINAL: every row is a histogram that was logged; the one logged over (act/relu at step 1 with
    # bins=2 around 5.0) is there too unless the insert already collapsed it (optimize_on_insert).
    every = client.query(f"SELECT metric, step, edges, counts FROM {db}.metric_histograms "
                         "WHERE run_id = {r:String}", parameters={"r": run_id}).result_rows
    replaced = ("act/relu", 1, [4.5, 5.0, 5.5], [0, 1])
    kept = [row for row in ((m, s, list(e), [int(c) for c in cs]) for m, s, e, cs in every) if row != replaced]
    assert len(every) - len(kept) in (0, 1)
    assert sorted((m, s) for m, s, *_ in kept) == sorted(stored["expected"])
    assert sum(sum(cs) for *_, cs in kept) == sum(sum(v[1]) for v in stored["expected"].values())


@pytest.mark.integration
def test_client_and_cli_return_the_same_histograms(stored: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rs = runstream.Client(stored["dsn"])
    found = rs.histograms("hist-a")
    assert [(h["metric"], h["step"]) for h in found] == sorted(stored["expected"])
    for h in found:
        assert (h["edges"], h["counts"], h["nan_count"], h["neg_inf_count"], h["pos_inf_count"]) == \
            stored["expected"][(h["metric"], h["step"])]
        assert (h["run_id"], h["rank"], h["node"], h["attempt"]) == (stored["run_id"], 0, socket.gethostname(), 1)
        assert h["time"].tzinfo is dt.UTC
    assert [h["step"] for h in rs.histograms(stored["run_id"], "grad/norm")] == [0, 10, 20, 30, 40]
    assert rs.histograms("hist-a", "grad/norm", 0, step=20) == [h for h in found if h["step"] == 20
                                                                and h["metric"] == "grad/norm"]
    assert main(["histograms", "hist-a", "--format", "json", "--clickhouse", stored["dsn"]]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert all(list(row) == list(HISTOGRAM_COLUMNS) for row in printed)
    assert printed == [{**h, "time": h["time"].isoformat()} for h in found]
    assert main(["histograms", "hist-a", "--metric", "act/relu", "--clickhouse", stored["dsn"]]) == 0
    table = capsys.readouterr().out
    assert "act/relu" in table and "grad/norm" not in table and "(2 rows)" in table
    assert main(["histograms", "hist-a", "--metric", "grad/nrom", "--clickhouse", stored["dsn"]]) == 2
    err = capsys.readouterr().err
    assert "no histogram with metric 'grad/nrom'" in err and "grad/norm: ranks [0], steps 0..40 (5)" in err
    with pytest.raises(ValueError, match="rank: expected an integer >= 0, got -1"):
        rs.histograms("hist-a", rank=-1)
    with pytest.raises(ValueError, match="no histogram with rank 1"):
        rs.histograms("hist-a", rank=1)


@pytest.mark.integration
def test_report_draws_the_latest_histogram_of_each_metric_per_run(stored: dict[str, Any],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    client, db = stored["client"], stored["db"]
    from runstream.analysis.report import collect

    data = collect(client, db, "hist")
    latest = {(h["run_id"], h["metric"]): h for h in data["histograms"]}
    run_id, expected = stored["run_id"], stored["expected"]
    assert latest[(run_id, "grad/norm")]["step"] == 40 and latest[(run_id, "grad/norm")]["logged"] == 5
    assert latest[(run_id, "grad/norm")]["counts"] == expected[("grad/norm", 40)][1]
    assert latest[(run_id, "grad/norm")]["non_finite"] == 4 + 1
    assert latest[(run_id, "act/relu")]["counts"] == [7, 9]
    assert len(latest) == 3 and latest == {(h["run_id"], h["metric"]): h for h in
                                           latest_histograms(client, db, list({k[0] for k in latest}))}
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("headless Chromium not installed: `make test` installs it (scripts/install-system-packages.sh)")
    out = stored["tmp"] / "report.html"
    assert main(["report", "--project", "hist", "--out", str(out), "--clickhouse", stored["dsn"]]) == 0
    capsys.readouterr()
    dom = dump_dom(browser, out, stored["tmp"] / "profile").stdout
    assert 'data-rendered="yes"' in dom and '<div id="errors"></div>' in dom
    assert dom.count('class="histogram-plot"') == 3
    drawn = sum(1 for h in data["histograms"] for c in h["counts"] if c > 0)
    assert dom.count("data-count=") == drawn


@pytest.mark.integration
def test_heatmap_panel_sql_runs_on_chdb_and_keeps_every_value(stored: dict[str, Any]) -> None:
    from runstream.dashboards import build, preview

    [panel] = [q for q in build.RUNS if q.title == "Histogram over time"]
    client, db = stored["client"], stored["db"]
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    variables = {"project": ["hist"], "run": [stored["run_id"]], "histogram": ["grad/norm"]}
    result = client.query(preview.expand(panel.sql, db, variables, end - dt.timedelta(hours=1), end))
    assert tuple(result.column_names) == panel.columns == ("time", "bucket", "count")
    total = sum(int(row[2]) for row in result.result_rows)
    assert total == sum(sum(counts) for (metric, _), (_, counts, *_) in stored["expected"].items()
                        if metric == "grad/norm")
    bounds = sorted({float(row[1]) for row in result.result_rows})
    assert 1 < len(bounds) <= 24
    finite_max = max(edges[-1] for (metric, _), (edges, *_) in stored["expected"].items() if metric == "grad/norm")
    assert bounds[-1] == pytest.approx(finite_max, rel=1e-4)
    variable = next(v for v in build.RUNS_VARIABLES if v.name == "histogram")
    listed = client.query(preview.expand(variable.sql, db, variables, end - dt.timedelta(hours=1), end)).result_rows
    assert [row[0] for row in listed] == ["act/relu", "grad/norm"]


# -- through the broker ----------------------------------------------------------------------------------------

@pytest.mark.integration
def test_histograms_travel_through_kafka(tmp_path: Path, clickhouse_dsn: str, kafka_bootstrap: str,
                                         topic_prefix: str) -> None:
    from runstream.consumer import ConsumerService, ConsumerSettings

    settings = _settings(tmp_path / "spool", kafka=kafka_bootstrap, topic_prefix=topic_prefix, flush_interval_s=0.05)
    values = np.concatenate([RNG.gamma(2.0, 1.0, 10_000), [NAN, NAN, INF]])
    run = Run(project="hist", name="kafka", settings=settings)
    run.log_histogram("grad/norm", values, step=7)
    run.log_histogram("grad/norm", values * 2, step=8, bins="fd")
    run.finish()
    assert run.flush(timeout=30) == 0
    assert spooled(tmp_path / "spool", "metric_histogram") == [], "sent to Kafka, not spooled"
    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix))
    stats = consume_until(service, 4)  # run_started, two histograms, run_finished
    assert stats.dead_letters == 0
    found = histograms(service.sink.client, service.sink.database, run.run_id)
    assert [h["step"] for h in found] == [7, 8]
    for h, sent in zip(found, (values, values * 2), strict=True):
        assert (h["counts"], h["nan_count"], h["neg_inf_count"], h["pos_inf_count"]) == \
            _numpy_histogram(sent, h["edges"])
    assert found[0]["edges"] == np.histogram_bin_edges(values[np.isfinite(values)], 64).tolist()
    assert found[1]["edges"] == np.histogram_bin_edges((values * 2)[np.isfinite(values)], "fd").tolist()
    assert os.environ.get("RANK") is None and found[0]["rank"] == 0
