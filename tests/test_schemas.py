"""The event contract: fingerprints, single-object encoding, schema evolution both ways, decode errors."""

from __future__ import annotations

import copy
import json
import struct

import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint

from runstream.schemas import EVENT_TYPES, Catalogue, DecodeError, Decoder, Encoder, SchemaVersion, bundled_catalogue
from runstream.schemas.catalogue import load_bundled_versions
from runstream.schemas.codec import MAGIC
from runstream.schemas.fingerprint import crc64_avro


def sample(event_type: str) -> dict[str, object]:
    common = {"event_id": "e-1", "run_id": "r-1", "timestamp_us": 1_700_000_000_000_000}
    bodies: dict[str, dict[str, object]] = {
        "run_started": {
            "project": "p", "run_name": "n", "user": "u", "host": "h",
            "params": [{"key": "lr", "value": 0.1}, {"key": "layers", "value": 4}, {"key": "opt", "value": "adam"},
                       {"key": "amp", "value": True}, {"key": "none", "value": None}],
            "tags": {"team": "vision"},
            "git": {"commit": "abc", "branch": "main", "dirty": True, "diff_sha256": "ab" * 32},
            "data_versions": [{"name": "imagenet", "version": "v2", "uri": None, "digest": "sha256:00"}],
            "hardware": {"cpu_model": "x", "cpu_count": 2, "memory_bytes": 1, "gpu_driver_version": None,
                         "cuda_version": None, "gpus": [{"index": 0, "uuid": "GPU-1", "model": "H100",
                                                         "memory_total_bytes": 80}]},
            "framework_versions": {"python": "3.11"},
            "command_line": ["python", "train.py"],
            "rank": 0, "local_rank": 0, "world_size": 8, "scheduler": {"slurm_job_id": "42"}, "resumed": True,
            "attempt": 2, "run_group": "seeds", "job_type": "train", "sweep": "lr-sweep",
            "fork_from": "01a2363d-1929-7668-9292-b5f7bcdf3f4f", "fork_step": 500,
        },
        "run_heartbeat": {"attempt": 2, "interval_s": 30.0, "last_step": 700, "last_step_us": 5, "steps_per_s": 1.5},
        "run_curation": {"action": "tag", "actor": "ana", "tags": {"keep": ""}, "note": "best so far",
                         "archived": False, "deleted": False},
        "drift_reference": {"model": "churn", "version": "3", "features": [
            {"name": "age", "kind": "numeric", "cut_points": [30.0, 50.0], "categories": [], "counts": [10, 20, 5],
             "count": 35, "missing": 1, "mean": 41.0, "std": 9.5, "min": 18.0, "max": 90.0, "sample": [25.0, 44.0]},
            {"name": "country", "kind": "categorical", "cut_points": [], "categories": ["de", "fr"],
             "counts": [7, 3, 1], "count": 11, "missing": 0, "mean": None, "std": None, "min": None, "max": None,
             "sample": []}],
            "baseline_metrics": {"accuracy": 0.91}},
        "prediction_samples": {"model": "churn", "version": "3", "host": "h", "sample_rate": 0.05, "samples": [
            {"sample_id": "s-1", "time_us": 1, "numeric": {"age": 41.0, "income": None},
             "categorical": {"country": "de"}, "prediction": "stay", "label": None},
            {"sample_id": "s-2", "time_us": 2, "numeric": {}, "categorical": {}, "prediction": 0.7, "label": 1.0}]},
        "run_updated": {"params": [{"key": "lr", "value": 0.05}],
                        "data_versions": [{"name": "val", "version": None, "uri": "s3://b/val", "digest": None}],
                        "attempt": 3},
        "metric_steps": {"metric_names": ["loss", "acc"], "metric_index": [0, 1, 0], "steps": [1, 1, 2],
                         "values": [0.5, float("inf"), -1.0], "times_us": [1, 2, 3], "attempt": 2},
        "gpu_samples": {"host": "h", "samples": [{"time_us": 1, "gpu_index": 0, "gpu_uuid": "GPU-1",
                                                  "gpu_model": "H100", "utilization_pct": 50.0,
                                                  "memory_used_bytes": None, "memory_total_bytes": None,
                                                  "power_w": None, "temperature_c": None, "sm_clock_mhz": None,
                                                  "memory_clock_mhz": None, "power_limit_w": 700.0,
                                                  "throttle_reasons": 4, "process_memory_bytes": 0}],
                        "host_cpu_pct": 12.5, "host_memory_used_bytes": 5, "host_memory_total_bytes": 10,
                        "process_rss_bytes": 3, "attempt": 1},
        "run_finished": {"status": "ok", "exit_code": 0, "error": None, "summary": {"loss": 0.1}, "attempt": 2},
        "rank_metric_steps": {"rank": 3, "node": "gpu-node-1", "metric_names": ["step_time"], "metric_index": [0, 0],
                              "steps": [1, 2], "values": [0.25, float("-inf")], "times_us": [1, 2], "attempt": 1},
        "metric_histogram": {"rank": 0, "node": "h", "metric": "grad/norm", "step": 9, "time_us": 1,
                             "edges": [0.0, 1.0, 2.0], "counts": [4, 1], "nan_count": 1, "neg_inf_count": 0,
                             "pos_inf_count": 2, "attempt": 1},
        "metric_definitions": {"attempt": 1, "definitions": [
            {"metric": "val/loss", "goal": "min", "summary": ["min", "last"], "step_metric": "epoch"},
            {"metric": "lr", "goal": None, "summary": [], "step_metric": None}]},
    }
    return {**common, **bodies[event_type]}


def test_every_event_type_is_bundled_and_carries_the_common_fields() -> None:
    catalogue = bundled_catalogue()
    assert sorted(EVENT_TYPES) == catalogue.event_types
    for event_type in EVENT_TYPES:
        names = [f["name"] for f in catalogue.latest(event_type).raw["fields"]]
        assert names[:3] == ["event_id", "run_id", "timestamp_us"], event_type


def test_fingerprint_is_crc64_avro_little_endian() -> None:
    # The spec's empty-input value is the algorithm's seed.
    assert crc64_avro(b"") == 0xC15D213AA4D7A795
    for version in bundled_catalogue().versions():
        # fastavro's independent implementation prints the same 8 bytes, in the same (little-endian) order.
        assert version.fingerprint.hex() == fastavro_fingerprint(version.canonical_form, "CRC-64-AVRO")
        assert version.fingerprint == crc64_avro(version.canonical_form.encode()).to_bytes(8, "little")


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_round_trip_through_single_object_encoding(event_type: str) -> None:
    catalogue = bundled_catalogue()
    data = Encoder(catalogue).encode(event_type, sample(event_type))
    assert data[:2] == MAGIC
    assert data[2:10] == catalogue.latest(event_type).fingerprint
    decoded_type, record = Decoder(catalogue).decode(data)
    assert decoded_type == event_type
    plain = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in record.items()}  # metric_steps: numpy columns
    assert plain == sample(event_type)


def _evolved(event_type: str, version: int, change: str) -> SchemaVersion:
    raw = copy.deepcopy(bundled_catalogue().latest(event_type).raw)
    if change == "add_field":
        raw["fields"].append({"name": "added_later", "type": "string", "default": "n/a"})
    elif change == "drop_optional_fields":
        raw["fields"] = [f for f in raw["fields"] if f["name"] not in ("error", "summary")]
    return SchemaVersion.from_json(event_type, version, raw)


def test_newer_reader_reads_what_the_current_producer_writes() -> None:
    current = load_bundled_versions()
    data = Encoder(Catalogue(current)).encode("run_finished", sample("run_finished"))
    # A future consumer: its catalogue holds today's schemas plus a v2 that adds a field with a default.
    future = Catalogue(current)
    future.register(_evolved("run_finished", bundled_catalogue().latest("run_finished").version + 1, "add_field"))
    event_type, record = Decoder(future).decode(data)
    assert event_type == "run_finished"
    assert record["added_later"] == "n/a"
    assert record["summary"] == {"loss": 0.1}


def test_current_reader_reads_what_an_older_producer_wrote() -> None:
    latest = bundled_catalogue().latest("run_finished")
    older = SchemaVersion.from_json("run_finished", 0, _evolved("run_finished", 0, "drop_optional_fields").raw)
    # The older producer's catalogue knows only its own version.
    old_record = {k: v for k, v in sample("run_finished").items() if k not in ("error", "summary")}
    data = Encoder(Catalogue([older])).encode("run_finished", old_record)
    assert data[2:10] == older.fingerprint != latest.fingerprint
    consumer = Catalogue(load_bundled_versions())
    consumer.register(older)  # bundled history includes every older version
    _, record = Decoder(consumer).decode(data)
    assert record["error"] is None and record["summary"] == {}
    assert record["status"] == "ok"


def test_bundled_gpu_samples_v1_events_read_as_the_latest() -> None:
    """The bundled history itself: an event from a producer still on gpu_samples v1 reads into the latest."""
    catalogue = bundled_catalogue()
    v1 = next(v for v in catalogue.versions() if v.event_type == "gpu_samples" and v.version == 1)
    assert catalogue.latest("gpu_samples").version > 1
    v1_record = sample("gpu_samples")
    for name in ("host_cpu_pct", "host_memory_used_bytes", "host_memory_total_bytes", "process_rss_bytes"):
        del v1_record[name]
    for gpu in v1_record["samples"]:  # type: ignore[attr-defined]
        for name in ("power_limit_w", "throttle_reasons", "process_memory_bytes"):
            del gpu[name]
    data = Encoder(Catalogue([v1])).encode("gpu_samples", v1_record)
    assert data[2:10] == v1.fingerprint
    _, record = Decoder(catalogue).decode(data)
    assert record["host_cpu_pct"] is None and record["samples"][0]["power_limit_w"] is None
    assert record["attempt"] == 1
    assert record["samples"][0]["utilization_pct"] == 50.0


def test_decode_errors_name_the_problem_and_the_offset() -> None:
    decoder = Decoder(bundled_catalogue())
    with pytest.raises(DecodeError, match="single-object marker") as caught:
        decoder.decode(b"{\"not\": \"avro\"}", partition=3, offset=17)
    assert caught.value.reason == "not_single_object" and "partition 3, offset 17" in str(caught.value)
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint") as caught:
        decoder.decode(MAGIC + b"\x00" * 8 + b"\x02")
    assert caught.value.reason == "unknown_fingerprint"
    good = Encoder(bundled_catalogue()).encode("metric_steps", sample("metric_steps"))
    with pytest.raises(DecodeError) as caught:
        decoder.decode(good[:-5])
    assert caught.value.reason == "corrupt_body"
    with pytest.raises(DecodeError) as caught:
        decoder.decode(good + b"\x00")
    assert caught.value.reason == "trailing_bytes"


def test_catalogue_rejects_two_versions_with_one_fingerprint() -> None:
    version = bundled_catalogue().latest("gpu_samples")
    catalogue = Catalogue([version])
    clash = SchemaVersion.from_json("gpu_samples", 9, json.loads(json.dumps(version.raw)))
    with pytest.raises(ValueError, match="same fingerprint"):
        catalogue.register(clash)


def test_bundled_run_started_v1_events_read_as_v2() -> None:
    catalogue = bundled_catalogue()
    v1 = next(v for v in catalogue.versions() if v.event_type == "run_started" and v.version == 1)
    old = sample("run_started")
    for name in ("rank", "local_rank", "world_size", "scheduler", "resumed"):
        del old[name]
    old["git"] = {"commit": "abc", "branch": "main", "dirty": False}
    _, record = Decoder(catalogue).decode(Encoder(Catalogue([v1])).encode("run_started", old))
    assert record["resumed"] is False and record["scheduler"] == {} and record["rank"] is None
    assert record["git"] == {"commit": "abc", "branch": "main", "dirty": False, "diff_sha256": None}


def _zigzag(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = raw & 0x7F
        raw >>= 7
        if raw:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _blocked(items: list[bytes], split: int) -> bytes:
    """An Avro array written as two blocks, the second with a negative count and its byte size."""
    first, second = items[:split], items[split:]
    out = _zigzag(len(first)) + b"".join(first)
    body = b"".join(second)
    out += _zigzag(-len(second)) + _zigzag(len(body)) + body
    return out + _zigzag(0)


def test_columnar_metric_steps_decoder_agrees_with_fastavro_on_every_block_layout() -> None:
    import io
    import random

    import fastavro

    rng = random.Random(3)
    n = 500
    steps = [rng.choice([0, 1, 127, 128, 2**40, -(2**63), 2**63 - 1, rng.randrange(10**6)]) for _ in range(n)]
    index = [rng.randrange(3) for _ in range(n)]
    values = [rng.choice([0.5, -1e300, float("inf"), rng.random()]) for _ in range(n)]
    times = [1_795_680_000_000_000 + rng.randrange(10**9) for _ in range(n)]
    body = (
        _zigzag(3) + b"e-1" + _zigzag(3) + b"r-1" + _zigzag(-7)
        + _blocked([_zigzag(4) + b"loss", _zigzag(3) + b"acc", _zigzag(2) + b"lr"], 1)
        + _blocked([_zigzag(i) for i in index], 200)
        + _blocked([_zigzag(s) for s in steps], 1)
        + _blocked([struct.pack("<d", v) for v in values], 499)
        + _blocked([_zigzag(t) for t in times], 250)
        + _zigzag(3)  # attempt (v2)
    )
    catalogue = bundled_catalogue()
    version = catalogue.latest("metric_steps")
    expected = fastavro.schemaless_reader(io.BytesIO(body), version.parsed, None)
    _, record = Decoder(catalogue).decode(MAGIC + version.fingerprint + body)
    assert record["metric_names"] == expected["metric_names"] == ["loss", "acc", "lr"]
    assert record["timestamp_us"] == -7
    assert record["attempt"] == expected["attempt"] == 3
    for column in ("metric_index", "steps", "values", "times_us"):
        assert record[column].tolist() == expected[column], column
    with pytest.raises(DecodeError, match="metric_steps v2"):
        Decoder(catalogue).decode(MAGIC + version.fingerprint + body[:-40])


def test_columnar_metric_steps_encoder_writes_exactly_what_fastavro_writes() -> None:
    import io
    import random

    import fastavro

    from runstream.schemas.columnar import encode_metric_steps

    rng = random.Random(5)
    version = bundled_catalogue().latest("metric_steps")
    edge = [0, 1, -1, 63, 64, -64, -65, 2**62, -(2**63), 2**63 - 1]
    cases = [
        [rng.randrange(10**6) for _ in range(300)],          # mixed widths
        [100_000 + i for i in range(300)],                    # one width
        edge * 30,                                            # the extremes
        [],                                                   # empty arrays
    ]
    for steps in cases:
        n = len(steps)
        record = {
            "event_id": "e-ü", "run_id": "r-1", "timestamp_us": -3, "metric_names": ["loss", "ä"] if n else [],
            "metric_index": [i % 2 for i in range(n)], "steps": steps,
            "values": [rng.choice([1, 0.25, float("nan"), float("-inf"), -1e-300]) for _ in range(n)],
            "times_us": [1_795_680_000_000_000 + rng.randrange(10**7) for _ in range(n)], "attempt": n + 1,
        }
        expected = io.BytesIO()
        fastavro.schemaless_writer(expected, version.parsed, record)
        assert encode_metric_steps(record, version.version) == expected.getvalue(), f"{n} points"
