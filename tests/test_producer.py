"""The SDK on its offline path: what a run records, its errors, and the spool files it leaves."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from spool_reader import read_spool

import runstream
from runstream.producer.params import flatten_params
from runstream.producer.settings import ProducerSettings
from runstream.producer.worker import points_item_bytes


def test_run_writes_standard_avro_container_files(spool_dir: Path) -> None:
    run = runstream.init(
        "proj", "first", params={"lr": 0.01, "model": {"layers": 12, "act": "gelu"}, "aug": ["flip", "crop"]},
        tags=["baseline"], spool=str(spool_dir),
    )
    for step in range(100):
        run.log({"loss": 1.0 / (step + 1), "acc": step / 100}, step=step)
    run.log({"loss": float("nan"), "grad_norm": float("inf")})  # step defaults to the next one: 100
    run.finish()

    events = read_spool(spool_dir)
    assert not list(spool_dir.rglob("*.open")), "finished runs leave no open spool files"
    [started] = events["run_started"]
    assert started["run_id"] == run.run_id and started["project"] == "proj" and started["run_name"] == "first"
    params = {p["key"]: p["value"] for p in started["params"]}  # type: ignore[union-attr, index]
    assert params == {"lr": 0.01, "model.layers": 12, "model.act": "gelu", "aug": '["flip", "crop"]'}
    assert started["tags"] == {"baseline": ""}
    assert started["framework_versions"]["python"]  # type: ignore[index]
    assert started["command_line"]
    points = [
        (step, batch["metric_names"][index], value)  # type: ignore[index]
        for batch in events["metric_steps"]
        for step, index, value in zip(batch["steps"], batch["metric_index"], batch["values"], strict=True)  # type: ignore[call-overload]
    ]
    assert len(points) == 202
    last = {name: value for step, name, value in points if step == 100}
    assert math.isnan(last["loss"]) and last["grad_norm"] == float("inf")
    [finished] = events["run_finished"]
    assert finished["status"] == "ok"
    assert finished["summary"]["acc"] == pytest.approx(0.99)  # type: ignore[index]


def test_bad_metric_values_raise_naming_the_key_and_lose_nothing(spool_dir: Path) -> None:
    run = runstream.init("proj", spool=str(spool_dir))
    run.log({"loss": 0.5}, step=0)
    with pytest.raises(TypeError, match="metric 'note': expected a number, got str 'abc'"):
        run.log({"loss": 0.4, "note": "abc"}, step=1)
    with pytest.raises(ValueError, match="contains control characters"):
        run.log({"bad\nkey": 1.0}, step=1)
    with pytest.raises(ValueError, match="longer than 250"):
        run.log({"k" * 300: 1.0}, step=1)
    with pytest.raises(ValueError, match="step: expected a non-negative integer, got -1"):
        run.log({"loss": 0.4}, step=-1)
    with pytest.raises(TypeError, match="step: expected an integer, got str"):
        run.log({"loss": 0.4}, step="3")  # type: ignore[arg-type]
    run.log({"loss": 0.3, "flag": True}, step=2)
    run.finish()
    batches = read_spool(spool_dir)["metric_steps"]
    steps = sorted(s for b in batches for s in b["steps"])  # type: ignore[attr-defined]
    assert steps == [0, 2, 2]


def test_exception_in_context_marks_the_run_failed(spool_dir: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with runstream.init("proj", spool=str(spool_dir)) as run:
            run.log({"loss": 1.0}, step=0)
            _ = 1 / 0
    [finished] = read_spool(spool_dir)["run_finished"]
    assert finished["status"] == "failed"
    assert str(finished["error"]).startswith("ZeroDivisionError")


def test_uncaught_exception_at_interpreter_exit_is_recorded(spool_dir: Path) -> None:
    script = (
        "import runstream\n"
        f"run = runstream.init('proj', spool={str(spool_dir)!r})\n"
        "run.log({'loss': 1.0}, step=0)\n"
        "raise RuntimeError('boom')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "boom" in done.stderr
    events = read_spool(spool_dir)
    assert events["run_finished"][0]["status"] == "failed"
    assert events["run_finished"][0]["error"] == "RuntimeError: boom"
    assert events["metric_steps"][0]["values"] == [1.0]


def test_flatten_params_keeps_types_and_rejects_bad_keys() -> None:
    assert flatten_params({"a": {"b": {"c": 1}}, "d": False, "e": None, "f": 2**70}) == {
        "a.b.c": 1, "d": False, "e": None, "f": str(2**70)
    }
    with pytest.raises(TypeError, match="param key 3"):
        flatten_params({3: 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="expected a mapping"):
        flatten_params([1, 2])  # type: ignore[arg-type]


def test_settings_come_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RUNSTREAM_KAFKA", "broker:9092")
    monkeypatch.setenv("RUNSTREAM_TOPIC_PREFIX", "team.")
    monkeypatch.setenv("RUNSTREAM_SPOOL", str(tmp_path))
    from_env = ProducerSettings.resolve()
    assert (from_env.kafka, from_env.topic_prefix, from_env.spool) == ("broker:9092", "team.", tmp_path)
    assert ProducerSettings.resolve(kafka="other:1").kafka == "other:1"
    with pytest.raises(TypeError, match="unknown producer setting"):
        ProducerSettings.resolve(kafak="x")
    with pytest.raises(ValueError, match="flush_interval_s"):
        ProducerSettings(flush_interval_s=0)


def test_project_must_be_named(spool_dir: Path) -> None:
    with pytest.raises(ValueError, match="project: expected a non-empty string"):
        runstream.init("  ", spool=str(spool_dir))


def test_a_full_queue_waits_briefly_then_drops_and_counts(spool_dir: Path) -> None:
    """The documented policy when the worker cannot keep up: block up to 0.5 s, then drop and count."""
    room_for_three = 3 * points_item_bytes(1)  # the queue is bounded in bytes: room for three one-metric calls
    settings = ProducerSettings(spool=spool_dir, queue_capacity_bytes=room_for_three, sample_interval_s=0,
                                flush_interval_s=60)
    run = runstream.Run(project="p", settings=settings)
    worker = run._worker
    worker.flush()  # run_started out of the queue, so it holds only what this test logs
    with worker._flush_lock:  # the worker is stuck (e.g. a disk that stalls): it cannot drain
        for step in range(3):
            run.log({"loss": float(step)}, step=step)
        started = time.monotonic()
        run.log({"loss": 3.0}, step=3)  # the fourth item does not fit
        waited = time.monotonic() - started
    assert worker.dropped_items == 1
    assert 0.4 <= waited < 5.0, "it waited for room before giving up"
    run.finish()
    steps = sorted(s for b in read_spool(spool_dir)["metric_steps"] for s in b["steps"])
    assert steps == [0, 1, 2], "what was queued before the drop is delivered"
