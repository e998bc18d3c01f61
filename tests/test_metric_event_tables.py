"""The richer-metrics events (rank_metric_steps, metric_histogram, metric_definitions) through the
contract's encoder and decoder, the consumer's batch and the sink, into chDB, and the refusals that
name the event, the field and the value."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest

from runstream.consumer import ClickHouseSink
from runstream.consumer.batch import Batch, InvalidEvent
from runstream.schemas import Decoder, Encoder, bundled_catalogue

NOW_US = time.time_ns() // 1000


def _through_the_contract(event_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    catalogue = bundled_catalogue()
    event_type, decoded = Decoder(catalogue).decode(Encoder(catalogue).encode(event_type, record))
    return event_type, decoded


def _base(run_id: str) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "run_id": run_id, "timestamp_us": NOW_US, "attempt": 1}


def _rank_steps(run_id: str, rank: int, values: list[float]) -> dict[str, Any]:
    return {**_base(run_id), "rank": rank, "node": f"node-{rank // 2}", "metric_names": ["step_time", "loss"],
            "metric_index": [0, 1] * (len(values) // 2), "steps": [i // 2 for i in range(len(values))],
            "values": values, "times_us": [NOW_US + i for i in range(len(values))]}


def _histogram(run_id: str, step: int, edges: list[float], counts: list[int]) -> dict[str, Any]:
    return {**_base(run_id), "rank": 0, "node": "n0", "metric": "grad/norm", "step": step, "time_us": NOW_US,
            "edges": edges, "counts": counts, "nan_count": 2, "neg_inf_count": 1, "pos_inf_count": 0}


def test_each_new_event_is_stored_as_logged_and_a_redelivery_collapses(clickhouse_dsn: str) -> None:
    run_id = str(uuid.uuid4())
    rng = np.random.default_rng(7)
    ranks = {rank: [float(v) for v in rng.normal(size=8)] for rank in (1, 2, 3)}
    events = [("rank_metric_steps", _rank_steps(run_id, rank, values)) for rank, values in ranks.items()]
    events.append(("metric_histogram", _histogram(run_id, 5, [0.0, 0.5, 1.0, 2.0], [3, 0, 7])))
    events.append(("metric_definitions", {**_base(run_id), "definitions": [
        {"metric": "val/loss", "goal": "min", "summary": ["min", "last"], "step_metric": None},
        {"metric": "val/acc", "goal": "max", "summary": [], "step_metric": "epoch"},
    ]}))
    sink = ClickHouseSink(clickhouse_dsn)
    try:
        for _delivery in range(2):  # at-least-once: the same events twice
            batch = Batch()
            for event_type, record in events:
                batch.add(*_through_the_contract(event_type, record), now_us=NOW_US)
            sink.write(batch)
        db = sink.database
        stored = sink.client.query(
            f"SELECT rank, node, metric, step, value FROM {db}.rank_metric_points FINAL "  # noqa: S608
            f"WHERE run_id = '{run_id}' ORDER BY rank, step, metric").result_rows
        expected = sorted(
            (rank, f"node-{rank // 2}", ("step_time", "loss")[i % 2], i // 2, value)
            for rank, values in ranks.items() for i, value in enumerate(values))
        assert sorted(stored) == expected
        raw = sink.client.query(f"SELECT count(), sum(value) FROM {db}.rank_metric_points "  # noqa: S608
                                f"WHERE run_id = '{run_id}'").result_rows[0]
        assert raw[0] in (24, 48)  # before or after a merge: never more than the two deliveries
        histogram = sink.client.query(
            f"SELECT edges, counts, nan_count, neg_inf_count FROM {db}.metric_histograms FINAL "  # noqa: S608
            f"WHERE run_id = '{run_id}'").result_rows
        assert histogram == [([0.0, 0.5, 1.0, 2.0], [3, 0, 7], 2, 1)]
        definitions = sink.client.query(
            f"SELECT metric, goal, summary, step_metric FROM {db}.metric_definitions FINAL "  # noqa: S608
            f"WHERE run_id = '{run_id}' ORDER BY metric").result_rows
        assert definitions == [("val/acc", "max", [], "epoch"), ("val/loss", "min", ["min", "last"], "")]
    finally:
        sink.close()


@pytest.mark.parametrize(("event_type", "record", "reason", "named"), [
    ("metric_histogram", _histogram("r", 1, [0.0, 1.0], [1, 2]), "bad_histogram_bins", "2 edges for 2 counts"),
    ("metric_histogram", _histogram("r", 1, [0.0, 2.0, 1.0], [1, 2]), "bad_histogram_edges", "strictly increasing"),
    ("metric_definitions", {**_base("r"), "definitions": [
        {"metric": "loss", "goal": "lowest", "summary": [], "step_metric": None}]}, "bad_metric_goal", "'lowest'"),
    ("rank_metric_steps", {**_rank_steps("r", 1, [1.0, 2.0]), "steps": [0, -4]}, "negative_step", "-4"),
])
def test_a_bad_event_is_refused_naming_what_is_wrong_and_leaves_the_batch_as_it_was(
        event_type: str, record: dict[str, Any], reason: str, named: str) -> None:
    batch = Batch()
    with pytest.raises(InvalidEvent) as raised:
        batch.add(*_through_the_contract(event_type, record), now_us=NOW_US)
    assert raised.value.reason == reason
    assert named in str(raised.value)
    assert batch.events == 0 and batch.table_rows() == {}
