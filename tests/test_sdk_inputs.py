"""Nothing the SDK accepts is lost: what cannot be encoded is refused at the call, naming the key and
the value; what still fails in the worker is isolated to its event, kept in `rejected/` and counted.

Issue 10, test 9: each bad input between two good steps, in a process with two runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fastavro
import pytest
from spool_reader import read_spool

from runstream.producer.ids import event_id
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings
from runstream.producer.sinks import SpoolSink
from runstream.producer.worker import EventWorker, points_item_bytes

# Each case: (name, the call, what its error must contain). `a` and `b` are the two runs; the call
# runs between a good step 2*i and a good step 2*i+1 of run `a`, while run `b` logs step i.
TWO_RUNS_JOB = r'''
import json, sys
import numpy as np
import runstream

spool = sys.argv[1]
a = runstream.init("inputs", "a", spool=spool, sample_interval=0)
b = runstream.init("inputs", "b", spool=spool, sample_interval=0)
gpu = {"time_us": 1, "gpu_index": 0, "gpu_uuid": "GPU-1", "gpu_model": "H200"}
cases = [
    ("int beyond float range", lambda s: a.log({"good": 1.0, "huge": 10**400}, step=s)),
    ("int beyond float range, implicit step", lambda s: a.log({"huge": -(10**309)})),
    ("step beyond Int64", lambda s: a.log({"good": 1.0}, step=2**63)),
    ("lone surrogate in a metric key", lambda s: a.log({"good": 1.0, "\ud800x": 1.0}, step=s)),
    ("array as a metric value", lambda s: a.log({"good": 1.0, "arr": np.zeros(3)}, step=s)),
    ("2-d array as a metric value", lambda s: a.log({"grid": np.ones((2, 2))}, step=s)),
    ("lone surrogate in a param key", lambda s: a.log_params({"opt": {"\udc80lr": 0.1}})),
    ("lone surrogate in a param value", lambda s: a.log_params({"pk": "v\ud800"})),
    ("lone surrogate in a data version name", lambda s: a.log_data_version("train\ud800")),
    ("lone surrogate in a data version uri", lambda s: a.log_data_version("train", uri="s3://x/\udcff")),
    ("lone surrogate in a tag", lambda s: runstream.init("inputs", tags={"team": "\ud800"}, spool=spool)),
    ("lone surrogate in a run name", lambda s: runstream.init("inputs", "n\ud800", spool=spool)),
    ("GPU index beyond Avro int", lambda s: a.log_gpu_samples([dict(gpu, gpu_index=2**40)])),
    ("GPU uuid with a lone surrogate", lambda s: a.log_gpu_samples([dict(gpu, gpu_uuid="GPU-\ud800")])),
    ("exit code beyond Avro int", lambda s: runstream.Run(project="inputs", settings=a.settings).finish(
        exit_code=2**40)),
]
errors = {}
for i, (name, call) in enumerate(cases):
    a.log({"good": float(2 * i)}, step=2 * i)
    b.log({"other": float(i)}, step=i)
    try:
        call(2 * i)
    except (ValueError, TypeError) as error:
        errors[name] = f"{type(error).__name__}: {error}"
    a.log({"good": float(2 * i + 1)}, step=2 * i + 1)
a.log_params({"pk": "fine"})
a.finish()
b.finish()
stats = runstream.producer.run.producer_stats()
print(json.dumps({"errors": errors, "cases": len(cases), "stats": stats, "run_a": a.run_id, "run_b": b.run_id}))
'''

EXPECTED = {  # the key (or field) and the value each error must name
    "int beyond float range": ("'huge'", "401 digits"),
    "int beyond float range, implicit step": ("'huge'", "310 digits"),
    "step beyond Int64": ("step", "9223372036854775808"),
    "lone surrogate in a metric key": ("metric key", r"'\ud800x'"),
    "array as a metric value": ("'arr'", "shape (3,)"),
    "2-d array as a metric value": ("'grid'", "shape (2, 2)"),
    "lone surrogate in a param key": ("param key", r"'opt.\udc80lr'"),
    "lone surrogate in a param value": ("param 'pk'", r"'v\ud800'"),
    "lone surrogate in a data version name": ("data version name", r"'train\ud800'"),
    "lone surrogate in a data version uri": ("uri", r"'s3://x/\udcff'"),
    "lone surrogate in a tag": ("tag 'team'", r"'\ud800'"),
    "lone surrogate in a run name": ("name", r"'n\ud800'"),
    "GPU index beyond Avro int": ("gpu_index", "1099511627776"),
    "GPU uuid with a lone surrogate": ("gpu_uuid", r"'GPU-\ud800'"),
    "exit code beyond Avro int": ("exit_code", "1099511627776"),
}


def points_of(batches: list[dict[str, Any]], run_id: str) -> list[tuple[int, str, float]]:
    return sorted(
        (step, batch["metric_names"][index], value)
        for batch in batches if batch["run_id"] == run_id
        for step, index, value in zip(batch["steps"], batch["metric_index"], batch["values"], strict=True)
    )


def test_each_bad_input_raises_naming_it_and_loses_nothing_around_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    done = subprocess.run([sys.executable, "-c", TWO_RUNS_JOB, str(spool)], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    errors: dict[str, str] = report["errors"]
    assert set(errors) == set(EXPECTED), f"calls that did not raise: {set(EXPECTED) - set(errors)}"
    for name, (key, value) in EXPECTED.items():
        assert key in errors[name] and value in errors[name], f"{name}: {errors[name]!r} names {key} and {value}"
    assert report["stats"]["rejected_events"] == 0 and report["stats"]["dropped_items"] == 0

    events = read_spool(spool)
    cases = report["cases"]
    run_a, run_b = report["run_a"], report["run_b"]
    assert points_of(events["metric_steps"], run_a) == [(s, "good", float(s)) for s in range(2 * cases)], \
        "both neighbours of every bad call are stored, and nothing of the bad call"
    assert points_of(events["metric_steps"], run_b) == [(s, "other", float(s)) for s in range(cases)]
    finished = {f["run_id"]: f for f in events["run_finished"]}
    assert finished[run_a]["status"] == "ok" and finished[run_b]["status"] == "ok", "both runs finish"
    assert finished[run_a]["summary"] == {"good": float(2 * cases - 1)}
    updates = [p for u in events.get("run_updated", []) if u["run_id"] == run_a for p in u["params"]]
    assert updates == [{"key": "pk", "value": "fine"}], "no refused param or data version was recorded"
    assert not [u for u in events.get("run_updated", []) if u["data_versions"]]
    assert not events.get("gpu_samples"), "no refused GPU sample was recorded"
    started_names = sorted(s["run_name"] for s in events["run_started"])
    assert "a" in started_names and "b" in started_names
    assert not any("\ud800" in name for name in started_names)
    assert not (spool / "rejected").exists()


def settings_for(spool: Path) -> ProducerSettings:
    return ProducerSettings(spool=spool, sample_interval_s=0, flush_interval_s=60)


def updated(run_id: str, **params: Any) -> tuple[Any, ...]:
    record = {"event_id": event_id(), "run_id": run_id, "timestamp_us": time.time_ns() // 1000,
              "params": [{"key": k, "value": v} for k, v in params.items()], "data_versions": []}
    return ("event", "run_updated", run_id, record)


def finished(run_id: str) -> tuple[Any, ...]:
    record = {"event_id": event_id(), "run_id": run_id, "timestamp_us": time.time_ns() // 1000,
              "status": "ok", "exit_code": None, "error": None, "summary": None}
    return ("event", "run_finished", run_id, record)


def test_the_worker_isolates_an_event_it_cannot_encode(spool_dir: Path) -> None:
    """Events that bypass the SDK's checks (queued straight into the worker): each bad one is kept in
    rejected/ with its reason and counted; its neighbours, in the same spool file, are delivered."""
    worker = EventWorker(SpoolSink(spool_dir), settings_for(spool_dir))
    mine, other = "run-isolated", "run-other"
    worker.put_points(mine, 0, 1, {"x": 0.0})
    worker.put(updated(mine, before=1))
    worker.put(updated(mine, bad="v\ud800"))  # UTF-8 cannot carry it: fastavro would fail mid-record
    worker.put(updated(mine, huge=10**400))  # a Param value no Avro number holds
    worker.put_points(other, 0, 1, {"y": 1.0})
    worker.put_points(mine, 1, 1, {"x": 1.0})
    worker.put_points(mine, 2, 1, {"x": 10**400})  # one bad point inside a columnar batch  # type: ignore[dict-item]
    worker.put_points(mine, 3, 1, {"x": 3.0, "z": 10**400})  # type: ignore[dict-item]  # z's last value: bad
    worker.put_points(mine, 4, 1, {"x": 4.0})
    worker.put(updated(mine, after=2))
    worker.put(finished(mine), bounded=False)
    worker.put(finished(other), bounded=False)
    assert worker.flush(30) == 0, "flush does not fail because of a rejected event"
    assert worker.close(30) == 0

    assert worker.rejected_events == 4
    lines = [json.loads(line) for line in (spool_dir / "rejected" / f"{mine}.jsonl").read_text().splitlines()]
    assert [line["event_type"] for line in lines] == ["run_updated", "run_updated", "metric_steps", "metric_steps"]
    assert "not valid UTF-8" in lines[0]["reason"] and r"'v\ud800'" in lines[0]["reason"]
    assert "beyond the range" in lines[1]["reason"]
    assert lines[2]["record"]["steps"] == [2], "the batch was split until the bad point was alone"
    assert lines[3]["record"]["steps"] == [3] and lines[3]["record"]["values"] == ["<int of 1329 bits>"]
    assert all(line["run_id"] == mine for line in lines)

    events = read_spool(spool_dir)
    assert points_of(events["metric_steps"], mine) == [(0, "x", 0.0), (1, "x", 1.0), (3, "x", 3.0), (4, "x", 4.0)]
    assert points_of(events["metric_steps"], other) == [(0, "y", 1.0)]
    keys = [p["key"] for u in events["run_updated"] for p in u["params"]]
    assert keys == ["before", "after"]
    assert {f["run_id"] for f in events["run_finished"]} == {mine, other}, "both runs end"
    assert {f["run_id"]: f["summary"] for f in events["run_finished"]}[mine] == {"x": 4.0}
    for path in spool_dir.rglob("*.avro"):  # every spool file still reads to its end
        with open(path, "rb") as handle:
            assert list(fastavro.reader(handle)) is not None


@pytest.mark.integration
def test_an_event_kafka_refuses_is_isolated(kafka_bootstrap: str, topic_prefix: str, spool_dir: Path) -> None:
    """A message larger than the producer may send (`message.max.bytes`) fails in produce(), after
    encoding: it is rejected, the events around it go to Kafka, nothing is spooled for it."""
    from runstream.producer.sinks import KafkaSink

    sink = KafkaSink(kafka_bootstrap, topic_prefix, SpoolSink(spool_dir))
    worker = EventWorker(sink, settings_for(spool_dir))
    run_id = "run-kafka-isolated"
    worker.put(updated(run_id, before=1))
    worker.put(updated(run_id, blob="x" * 9_000_000))
    worker.put(updated(run_id, after=2))
    worker.put(finished(run_id), bounded=False)
    assert worker.close(60) == 0
    assert worker.rejected_events == 1 and worker.sent_events == 3
    [line] = [json.loads(x) for x in (spool_dir / "rejected" / f"{run_id}.jsonl").read_text().splitlines()]
    assert line["event_type"] == "run_updated" and "MSG_SIZE_TOO_LARGE" in line["reason"]
    assert sink.delivered == 3 and sink.spooled == 0


def test_the_queue_is_bounded_in_bytes_and_its_estimate_matches_tracemalloc(spool_dir: Path) -> None:
    """With the worker stuck, `log()` fills the queue up to `queue_capacity_bytes` (as estimated on the
    training thread), then waits 0.5 s and drops; the estimate is what the queue really holds."""
    import tracemalloc

    bound = 2 * 1024 * 1024
    settings = ProducerSettings(spool=spool_dir, sample_interval_s=0, flush_interval_s=60, queue_capacity_bytes=bound)
    run = Run(project="bounded", settings=settings)
    worker = run._worker
    assert worker.flush(30) == 0
    names = [f"metric/{i}" for i in range(10)]
    tracemalloc.start()
    try:
        with worker._flush_lock:  # the worker is stuck (a disk that stalls): nothing drains
            before = tracemalloc.get_traced_memory()[0]
            step = 0
            while worker.dropped_items == 0 and step < 100_000:
                run.log({name: step + i / 10 for i, name in enumerate(names)}, step=step)
                step += 1
            held = tracemalloc.get_traced_memory()[0] - before
            queued = worker.queued_bytes
    finally:
        tracemalloc.stop()
    accepted = step - 1  # the last call was the one dropped
    assert worker.dropped_items == 1 and accepted > 1000
    assert bound - points_item_bytes(10) < queued <= bound, "filled up to the bound, never past it"
    assert 0.8 * queued <= held <= 1.25 * queued, f"estimate {queued:,} bytes vs {held:,} traced"
    run.finish()
    steps = sorted({s for b in read_spool(spool_dir)["metric_steps"] for s in b["steps"]})
    assert steps == list(range(accepted)), "everything accepted before the drop is delivered"
