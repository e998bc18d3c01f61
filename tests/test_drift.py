"""Drift monitoring: reference and prediction samples through the SDK's spool into ClickHouse, and the
drift scores computed in SQL checked against numpy (PSI) and scipy (KS) on the same data."""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import ks_2samp

import runstream
from runstream.consumer import ClickHouseSink, connect, ingest_spool
from runstream.consumer.migrations import migrate
from runstream.monitoring import drift
from runstream.producer.drift_sampler import feature_reference, stream_id
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

pytestmark = pytest.mark.integration

WINDOW_S = 60
SHIFTS = (0.0, 0.5, 1.5)  # the numeric feature's mean in each window: none, moderate, strong drift
CATEGORY_P = ((0.5, 0.3, 0.2, 0.0), (0.4, 0.3, 0.2, 0.1), (0.1, 0.2, 0.3, 0.4))


def _numpy_psi(expected: np.ndarray[Any, Any], observed: np.ndarray[Any, Any]) -> float:
    e = np.maximum(expected / expected.sum(), drift.PSI_EPSILON)
    o = np.maximum(observed / observed.sum(), drift.PSI_EPSILON)
    return float(np.sum((o - e) * np.log(o / e)))


def _sink(dsn: str) -> tuple[Any, str, ClickHouseSink]:
    client, db = connect(dsn)
    migrate(client, db)
    return client, db, ClickHouseSink(dsn, client=client, database=db)


@pytest.fixture
def drift_data(tmp_path: Path, clickhouse_dsn: str) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    spool = tmp_path / "spool"
    settings = ProducerSettings.resolve(spool=str(spool), sample_interval_s=0)
    ref_x = rng.normal(0.0, 1.0, 1500)  # under the sample size: the reference sample is every value
    ref_c = rng.choice(["a", "b", "c"], 1500, p=[0.5, 0.3, 0.2])
    with Run(project="serving", settings=settings) as run:
        run.log_reference({"x": ref_x, "country": list(ref_c)}, model="churn", version="3",
                          predictions=list(rng.choice(["stay", "leave"], 1500, p=[0.7, 0.3])),
                          baseline_metrics={"accuracy": 0.9})
    t0 = (int(time.time()) // WINDOW_S - 10) * WINDOW_S
    windows = []
    monitor = runstream.monitor("churn", "3", sample_rate=1.0, batch_size=300, spool=str(spool))
    for w, (shift, p) in enumerate(zip(SHIFTS, CATEGORY_P, strict=True)):
        xs = rng.normal(shift, 1.0, 400 + 100 * w)
        cs = rng.choice(["a", "b", "c", "d"], len(xs), p=p)
        correct = rng.random(len(xs)) < (0.9 - 0.2 * w)
        for i, (x, c, ok) in enumerate(zip(xs, cs, correct, strict=True)):
            monitor.log({"x": float(x), "country": str(c)}, prediction="stay", label="stay" if ok else "leave",
                        time_us=(t0 + w * WINDOW_S) * 1_000_000 + i * 1000)
        windows.append({"x": xs, "country": cs, "accuracy": float(correct.mean())})
    monitor.close()
    client, db, sink = _sink(clickhouse_dsn)
    report = ingest_spool(spool, sink)
    assert not report.rejected
    ingest_spool(spool, sink, replay=True)  # loaded twice, e.g. after a crash: nothing may count twice
    return {"client": client, "db": db, "t0": t0, "ref_x": ref_x, "ref_c": ref_c, "windows": windows}


def _scores(data: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    start = dt.datetime.fromtimestamp(data["t0"], dt.UTC)
    rows = drift.drift_scores(data["client"], data["db"], start=start,
                              end=start + dt.timedelta(seconds=len(SHIFTS) * WINDOW_S), window_s=WINDOW_S)
    out = {}
    for row in rows:
        window = (int(row["window_start"].replace(tzinfo=dt.UTC).timestamp()) - data["t0"]) // WINDOW_S
        out[(row["feature"], window)] = row
    return out


def test_psi_and_ks_computed_in_clickhouse_match_numpy_and_scipy(drift_data: dict[str, Any]) -> None:
    scores = _scores(drift_data)
    ref_x, ref_c = drift_data["ref_x"], drift_data["ref_c"]
    cuts = np.unique(np.quantile(ref_x, np.arange(1, 10) / 10))
    expected_x = np.bincount(np.searchsorted(cuts, ref_x, side="right"), minlength=len(cuts) + 1)
    categories = ["a", "b", "c"]
    expected_c = np.array([np.sum(ref_c == c) for c in categories] + [0])
    psis = []
    for w, window in enumerate(drift_data["windows"]):
        xs, cs = window["x"], window["country"]
        row = scores[("x", w)]
        assert row["samples"] == len(xs), "duplicates of the second ingest must not count"
        observed_x = np.bincount(np.searchsorted(cuts, xs, side="right"), minlength=len(cuts) + 1)
        assert row["psi"] == pytest.approx(_numpy_psi(expected_x, observed_x), rel=1e-9, abs=1e-12)
        assert row["ks"] == pytest.approx(ks_2samp(ref_x, xs).statistic, abs=1e-9)
        psis.append(row["psi"])
        cat = scores[("country", w)]
        observed_c = np.array([np.sum(cs == c) for c in categories] + [np.sum(~np.isin(cs, categories))])
        assert cat["kind"] == "categorical" and cat["ks"] is None
        assert cat["psi"] == pytest.approx(_numpy_psi(expected_c, observed_c), rel=1e-9, abs=1e-12)
    assert psis[0] < 0.1 < drift.PSI_ALERT_THRESHOLD < psis[2], psis
    assert psis == sorted(psis)
    assert ("prediction", 0) in scores  # the prediction distribution is compared with the reference too


def test_performance_drift_against_the_training_baseline(drift_data: dict[str, Any]) -> None:
    start = dt.datetime.fromtimestamp(drift_data["t0"], dt.UTC)
    rows = drift.performance(drift_data["client"], drift_data["db"], start=start,
                             end=start + dt.timedelta(seconds=len(SHIFTS) * WINDOW_S), window_s=WINDOW_S)
    accuracy = [row for row in rows if row["metric"] == "accuracy"]
    assert [row["value"] for row in accuracy] == pytest.approx([w["accuracy"] for w in drift_data["windows"]])
    assert {row["baseline"] for row in accuracy} == {0.9}
    assert [row["labelled"] for row in accuracy] == [len(w["x"]) for w in drift_data["windows"]]


def test_reference_statistics() -> None:
    values = np.arange(1000, dtype=float)
    ref = feature_reference("x", list(values) + [None, math.nan], bins=4, sample_size=100)
    assert ref["kind"] == "numeric" and ref["missing"] == 2 and ref["count"] == 1000
    assert ref["cut_points"] == pytest.approx(list(np.quantile(values, [0.25, 0.5, 0.75])))
    assert sum(ref["counts"]) == 1000 and len(ref["counts"]) == 4
    assert len(ref["sample"]) == 100 and ref["sample"] == sorted(ref["sample"])
    cat = feature_reference("c", ["a"] * 5 + ["b"] * 3 + ["z"], max_categories=2)
    assert cat["categories"] == ["a", "b"] and cat["counts"] == [5, 3, 1]
    given = feature_reference("g", {"cut_points": [0.0, 1.0], "counts": [1, 2, 3]})
    assert given["counts"] == [1, 2, 3] and given["count"] == 6
    with pytest.raises(ValueError, match="expected 3 counts"):
        feature_reference("g", {"cut_points": [0.0, 1.0], "counts": [1, 2]})


def test_monitor_samples_requests_and_keys_by_model(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    monitor = runstream.monitor("ranker", "7", sample_rate=0.1, seed=3, spool=str(spool))
    kept = [monitor.log({"q": float(i)}, prediction=0.5) for i in range(20_000)]
    monitor.close()
    assert monitor.seen == 20_000
    assert 1_700 < monitor.sampled < 2_300
    assert sum(sid is not None for sid in kept) == monitor.sampled
    files = sorted((spool / stream_id("ranker")).glob("prediction_samples.*.avro"))
    assert files, "the monitor's samples are sealed into the model's spool folder"
    with pytest.raises(ValueError, match="sample_rate"):
        runstream.monitor("ranker", "7", sample_rate=0, spool=str(spool))
