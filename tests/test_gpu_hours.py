"""One definition of GPU-hours: the comparison table, the analysis views, the GPU rollup and cost give
the same number on a run with long pauses, and it is the capped one (a day's pause is not a day of GPU
time). Also: read commands run no DDL on a database that was never migrated, and migration 5 brings an
older rollup up to the definition from the raw samples."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import pytest

from runstream.analysis import queries
from runstream.cli import main
from runstream.comparison import compare_project
from runstream.consumer import ClickHouseSink, connect, ingest_spool
from runstream.consumer.migrations import MIGRATIONS, migrate
from runstream.monitoring import cost
from runstream.monitoring.gpu_hours import MAX_GAP_MS, MAX_GAP_S, SLOT_MS, gpu_seconds_by_run_sql, held_seconds
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

pytestmark = pytest.mark.integration

T0 = dt.datetime(2025, 3, 15, 10, 55, tzinfo=dt.UTC)  # five minutes before an hour boundary
DAY_S = 86_400
# GPU 0: ten minutes busy; a gap of exactly the cap (held); a day's pause (not held); five minutes
# busy; one more sample a second past the cap (not held). GPU 1: twenty minutes without a pause.
GPU0_S = [*range(0, 600, 10), 890, 890 + DAY_S, *range(890 + DAY_S + 10, 890 + DAY_S + 300, 10)]
GPU0_S.append(GPU0_S[-1] + MAX_GAP_S + 1)
GPU1_S = list(range(0, 1200, 10))
HELD_S = (590 + MAX_GAP_S + 290) + 1190  # by hand: the gaps of at most MAX_GAP_S
UNCAPPED_S = GPU0_S[-1] + GPU1_S[-1]  # last minus first sample: what the old definitions gave


def _gpu_samples(gpu: int, offsets: list[int]) -> list[dict[str, Any]]:
    start_us = int(T0.timestamp() * 1_000_000)
    return [{"time_us": start_us + s * 1_000_000 + 123, "gpu_index": gpu, "gpu_uuid": f"GPU-{gpu}",
             "gpu_model": "H100", "utilization_pct": 50.0, "power_w": 300.0} for s in offsets]


@pytest.fixture
def paused_run(tmp_path: Path, clickhouse_dsn: str) -> tuple[Any, str, str]:
    spool = tmp_path / "spool"
    with Run(project="pauses", name="paused", settings=ProducerSettings.resolve(spool=str(spool),
                                                                                sample_interval_s=0)) as run:
        run.log({"loss": 1.0}, step=0)
        run.log_gpu_samples(_gpu_samples(0, GPU0_S) + _gpu_samples(1, GPU1_S), host="node-1")
    sink = ClickHouseSink(clickhouse_dsn)
    for replay in (False, True):  # delivered twice: FINAL hides the twin, the rollup's min/max never count it
        assert not ingest_spool(spool, sink, replay=replay).rejected
    client, db = sink.client, sink.database
    assert client.query(f"SELECT count() FROM {db}.gpu_samples").result_rows[0][0] == 2 * (len(GPU0_S) + len(GPU1_S))
    return client, db, run.run_id


def test_first_and_last_sample_per_slot_are_all_the_definition_needs() -> None:
    """What the GPU rollup relies on (runstream.monitoring.gpu_hours.SLOT_MS), over random pauses."""
    rng = random.Random(7)
    for _ in range(200):
        times, t = [], rng.randrange(0, 10**12)
        for _ in range(rng.randrange(1, 300)):
            times.append(t)
            t += rng.choice([rng.randrange(0, 20_000), rng.randrange(0, 2 * MAX_GAP_MS), MAX_GAP_MS,
                             MAX_GAP_MS + 1, rng.randrange(0, 10**8)])
        slots: dict[int, list[int]] = {}
        for time_ms in times:
            slot = slots.setdefault(time_ms // SLOT_MS, [time_ms, time_ms])
            slot[0], slot[1] = min(slot[0], time_ms), max(slot[1], time_ms)
        held_ms, previous_last = 0, None
        for first, last in (slots[k] for k in sorted(slots)):
            gap = 0 if previous_last is None else first - previous_last
            held_ms += last - first + (gap if gap <= MAX_GAP_MS else 0)
            previous_last = last
        assert held_ms / 1000 == held_seconds(times)


def four_readers(client: Any, db: str, run_id: str) -> dict[str, float]:
    """GPU-hours of the run as each user of the definition reads it."""
    table = compare_project(client, db, "pauses")
    end = T0 + dt.timedelta(days=2)
    (by_cost,) = cost.cost_by(client, db, "run_id", start=T0 - dt.timedelta(hours=1), end=end)
    hourly = client.query(f"SELECT sum(gpu_seconds) FROM {db}.gpu_usage_hourly WHERE run_id = {{r:String}}",
                          parameters={"r": run_id}).result_rows[0][0]
    return {
        "comparison": table.rows[0][table.columns.index("gpu_hours")],
        "run_overview": queries.gpu_hours(client, db, [run_id])[run_id],
        "rollup by run": client.query(f"SELECT gpu_hours FROM {db}.gpu_usage_by_run").result_rows[0][0],
        "rollup hourly": hourly / 3600,
        "cost": by_cost["gpu_hours"],
    }


def test_every_reader_gives_the_capped_gpu_hours_of_a_paused_run(paused_run: tuple[Any, str, str]) -> None:
    client, db, run_id = paused_run
    start_ms = int(T0.timestamp() * 1000)
    twin = held_seconds([start_ms + s * 1000 for s in GPU0_S]) + held_seconds([start_ms + s * 1000 for s in GPU1_S])
    assert twin == HELD_S
    readers = four_readers(client, db, run_id)
    assert readers == pytest.approx(dict.fromkeys(readers, HELD_S / 3600), rel=1e-12), readers
    assert abs(readers["comparison"] - UNCAPPED_S / 3600) > 20, "the day's pause is not GPU time"
    # The rollup's hours split the run at the hour boundary and still add up to it.
    hours = client.query(f"SELECT count() FROM {db}.gpu_usage_hourly").result_rows[0][0]
    assert hours >= 3


def test_migration_5_brings_an_older_gpu_rollup_to_the_definition(paused_run: tuple[Any, str, str]) -> None:
    client, db, run_id = paused_run
    # Lay the database out as versions 1-4 did: no gpu_held_slots, views over first/last sample.
    for statement in (f"DROP VIEW {db}.gpu_usage_by_run", f"DROP VIEW {db}.gpu_usage_hourly",
                      f"DROP VIEW {db}.gpu_held_slots_mv", f"DROP TABLE {db}.gpu_held_slots",
                      f"ALTER TABLE {db}.schema_migrations DELETE WHERE version = 5 SETTINGS mutations_sync = 1"):
        client.command(statement)
    assert migrate(client, db) == [5]
    assert migrate(client, db) == []
    readers = four_readers(client, db, run_id)
    assert readers == pytest.approx(dict.fromkeys(readers, HELD_S / 3600), rel=1e-12), readers
    raw = client.query(f"SELECT gpu_seconds FROM ({gpu_seconds_by_run_sql(f'{db}.gpu_samples')})").result_rows
    assert raw == [(pytest.approx(HELD_S, rel=1e-12),)]


@pytest.mark.parametrize("command", [["runs"], ["best", "--project", "p", "--metric", "loss"],
                                     ["cost", "report"], ["cost", "budgets"], ["drift"]])
def test_read_commands_run_no_ddl_and_say_to_migrate(
    clickhouse_dsn: str, command: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    database = clickhouse_dsn.rsplit("=", 1)[-1] if "?database=" in clickhouse_dsn else clickhouse_dsn.rsplit("/")[-1]

    def exists() -> bool:
        probe, _ = connect(clickhouse_dsn.replace(database, "default"))
        found = probe.query("SELECT count() FROM system.databases WHERE name = {d:String}",
                            parameters={"d": database}).result_rows[0][0]
        return bool(found)

    assert main([*command, "--clickhouse", clickhouse_dsn]) == 2
    err = capsys.readouterr().err
    assert "runstream migrate" in err and repr(database) in err, err
    assert not exists(), "a read command created the database"
    # A database that exists but was never migrated: the same advice, and still no tables made.
    client, _ = connect(clickhouse_dsn)
    assert main([*command, "--clickhouse", clickhouse_dsn]) == 2
    err = capsys.readouterr().err
    assert "runstream migrate" in err and f"migration(s) 1 ({MIGRATIONS[0].name})" in err, err
    assert client.query("SELECT count() FROM system.tables WHERE database = {d:String}",
                        parameters={"d": database}).result_rows[0][0] == 0
