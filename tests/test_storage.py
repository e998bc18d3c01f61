"""The storage model in the real engine (chDB): migrations, deduplication, rollups and the cluster DDL."""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from runstream.consumer.batch import Batch
from runstream.consumer.clickhouse_sink import ClickHouseSink
from runstream.consumer.cluster import DEFAULT_SHARDING_KEY, cluster_ddl
from runstream.consumer.dsn import connect
from runstream.consumer.migrations import MIGRATIONS, TABLES, ddl, migrate
from runstream.consumer.table_spec import BY_RUN, EVERY_NODE
from runstream.monitoring.gpu_hours import gpu_seconds_by_run_sql

pytestmark = pytest.mark.integration

HOUR_US = 3600 * 1_000_000
# 2024-01-31 22:00 UTC: the points and samples below straddle the January/February partitions.
T0 = 1_706_738_400_000_000


def metric_steps(run_id: str, points: list[tuple[str, int, float, int]], event_id: str = "e") -> dict[str, Any]:
    """A metric_steps event as the decoder hands it over: (metric, step, value, time_us) columns."""
    names = sorted({metric for metric, _, _, _ in points})
    return {
        "event_id": event_id, "run_id": run_id, "timestamp_us": T0, "metric_names": names,
        "metric_index": [names.index(metric) for metric, _, _, _ in points],
        "steps": [step for _, step, _, _ in points], "values": [value for _, _, value, _ in points],
        "times_us": [t for _, _, _, t in points],
    }


def gpu_event(run_id: str, host: str, samples: list[tuple[int, int, float, float]]) -> dict[str, Any]:
    """A gpu_samples event: (gpu_index, time_us, utilization_pct, power_w) per sample."""
    return {
        "event_id": "g", "run_id": run_id, "timestamp_us": T0, "host": host,
        "samples": [
            {"time_us": t, "gpu_index": gpu, "gpu_uuid": f"GPU-{host}-{gpu}", "gpu_model": "H100",
             "utilization_pct": util, "memory_used_bytes": 1 << 30, "memory_total_bytes": 80 << 30,
             "power_w": power, "temperature_c": 60.0, "sm_clock_mhz": 1980, "memory_clock_mhz": 2619,
             "power_limit_w": 700.0, "throttle_reasons": 0, "process_memory_bytes": 1 << 29}
            for gpu, t, util, power in samples
        ],
        "host_cpu_pct": None, "host_memory_used_bytes": None, "host_memory_total_bytes": None,
        "process_rss_bytes": None,
    }


def batch_of(*events: tuple[str, dict[str, Any]]) -> Batch:
    batch = Batch()
    for event_type, record in events:
        batch.add(event_type, record, now_us=T0 + 100 * HOUR_US)
    return batch


def scalar(client: Any, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def test_migrations_are_idempotent_and_create_every_table_the_consumer_writes(clickhouse_dsn: str) -> None:
    from runstream.consumer.batch import TABLE_COLUMNS

    client, db = connect(clickhouse_dsn)
    assert migrate(client, db) == [m.version for m in MIGRATIONS]
    assert migrate(client, db) == [], "a second run applies nothing"
    assert migrate(client, db) == []
    assert scalar(client, f"SELECT count() FROM {db}.schema_migrations FINAL") == len(MIGRATIONS)
    # The tables of the run-tracking contract (other subsystems' tables come with their own migrations).
    for table in ("runs", "run_params", "run_data_versions", "metric_points", "gpu_samples", "host_samples",
                  "run_finishes"):
        columns = TABLE_COLUMNS[table]
        present = {row[0] for row in client.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
            parameters={"db": db, "t": table}).result_rows}
        assert set(columns) <= present, f"{table} lacks {set(columns) - present}"
    engines = dict(client.query("SELECT name, engine FROM system.tables WHERE database = {db:String}",
                                parameters={"db": db}).result_rows)
    assert engines["metric_summary_mv"] == engines["gpu_usage_hourly_mv"] == "MaterializedView"
    assert engines["metric_summary_states"] == engines["gpu_usage_hourly_states"] == "AggregatingMergeTree"
    for table in ("metric_points", "gpu_samples", "host_samples"):
        key = scalar(client, f"SELECT partition_key FROM system.tables WHERE database = '{db}' AND name = '{table}'")
        assert key == "toYYYYMM(time)"
    # The same statements `runstream migrate --print` shows build the same database elsewhere.
    assert any("ORDER BY (run_id, metric, step)" in statement for statement in ddl(db))


def test_sample_ttl_is_off_by_default_and_set_by_migrate(clickhouse_dsn: str) -> None:
    client, db = connect(clickhouse_dsn)

    def ttl(table: str) -> bool:
        query = scalar(client, "SELECT create_table_query FROM system.tables "
                               f"WHERE database = '{db}' AND name = '{table}'")
        return "TTL toDateTime(time) + toIntervalDay(30)" in query

    migrate(client, db)
    assert not ttl("gpu_samples") and not ttl("host_samples")
    migrate(client, db, sample_ttl_days=30)
    assert ttl("gpu_samples") and ttl("host_samples") and not ttl("metric_points")
    migrate(client, db)
    assert ttl("gpu_samples"), "the consumer's own migrate() on start leaves the setting alone"
    migrate(client, db, sample_ttl_days=0)
    assert not ttl("gpu_samples") and not ttl("host_samples")
    migrate(client, db, sample_ttl_days=0)
    with pytest.raises(ValueError, match="sample_ttl_days"):
        migrate(client, db, sample_ttl_days=-1)


def test_a_database_of_the_pre_release_layout_is_refused_with_the_fix(clickhouse_dsn: str) -> None:
    client, db = connect(clickhouse_dsn)
    client.command(f"CREATE TABLE {db}.schema_migrations (version UInt32, name String, applied_at DateTime64(3, 'UTC') "
                   "DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version")
    client.command(f"INSERT INTO {db}.schema_migrations (version, name) VALUES (1, 'contract v1 tables')")
    with pytest.raises(RuntimeError, match=f"DROP DATABASE {db}"):
        migrate(client, db)


def test_a_redelivered_batch_counts_once_with_final(clickhouse_dsn: str) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    # Points on both sides of a month boundary: a duplicate lands in its twin's partition.
    points = [(metric, step, step * 0.5 + (metric == "acc"), T0 + step * HOUR_US)
              for step in range(4) for metric in ("loss", "acc")]
    samples = [(gpu, T0 + i * 30 * 60 * 1_000_000, 90.0, 400.0) for gpu in range(2) for i in range(6)]
    batch = batch_of(("metric_steps", metric_steps("run-a", points)),
                     ("gpu_samples", gpu_event("run-a", "h1", samples)))
    sink.write(batch)
    summary_once = client.query(f"SELECT * FROM {db}.metric_summary ORDER BY metric").result_rows
    usage_sql = f"SELECT gpu_hours, avg_utilization_pct, energy_wh FROM {db}.gpu_usage_by_run"
    usage_once = client.query(usage_sql).result_rows
    sink.write(batch)  # the consumer crashed before committing: the same batch again

    assert scalar(client, f"SELECT count() FROM {db}.metric_points") == 2 * len(points), "both deliveries stored"
    assert scalar(client, f"SELECT count() FROM {db}.metric_points FINAL") == len(points)
    assert scalar(client, f"SELECT count() FROM {db}.gpu_samples FINAL") == len(samples)
    assert scalar(client, f"SELECT uniqExact(_partition_id) FROM {db}.metric_points") == 2
    client.command(f"OPTIMIZE TABLE {db}.metric_points FINAL")
    assert scalar(client, f"SELECT count() FROM {db}.metric_points") == len(points), "merges collapse them too"

    # The metric rollup is exact under redelivery; only its delivery counter shows the duplicate.
    summary = client.query(f"SELECT * FROM {db}.metric_summary ORDER BY metric").result_rows
    names = list(client.query(f"SELECT * FROM {db}.metric_summary LIMIT 0").column_names)
    deliveries = names.index("deliveries")
    for once, twice in zip(summary_once, summary, strict=True):
        assert once[:deliveries] + once[deliveries + 1 :] == twice[:deliveries] + twice[deliveries + 1 :]
        assert twice[deliveries] == 2 * once[deliveries]
    assert {row[names.index("points")] for row in summary} == {4}
    # GPU-seconds come from first/last sample: exact. With every sample doubled, the means are too.
    usage = client.query(usage_sql).result_rows
    assert usage == usage_once


def test_a_step_logged_again_keeps_its_latest_value_in_final_and_in_the_summary(clickhouse_dsn: str) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    first = [("loss", step, 1.0 - step / 10, T0 + step * 1_000_000) for step in range(5)]
    # A resumed run logs steps 3 and 4 again, a day later (another partition for step 4's new time).
    again = [("loss", 3, 0.75, T0 + 24 * HOUR_US), ("loss", 4, 0.65, T0 + 48 * HOUR_US)]
    sink.write(batch_of(("metric_steps", metric_steps("run-r", first))))
    sink.write(batch_of(("metric_steps", metric_steps("run-r", again))))
    rows = client.query(f"SELECT step, value FROM {db}.metric_points FINAL ORDER BY step").result_rows
    assert rows == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.75), (4, 0.65)]
    first_value, last_value, points = client.query(
        f"SELECT first_value, last_value, points FROM {db}.metric_summary").result_rows[0]
    assert (first_value, last_value, points) == (1.0, 0.65, 5)


def expected_summary(delivered: list[tuple[str, str, int, float, int]]) -> dict[tuple[str, str], dict[str, Any]]:
    """What FINAL keeps (latest time per step), summarised in Python, as metric_summary defines it."""
    kept: dict[tuple[str, str], dict[int, tuple[int, float]]] = defaultdict(dict)
    deliveries: dict[tuple[str, str], int] = defaultdict(int)
    for run_id, metric, step, value, t in delivered:
        key = (run_id, metric)
        deliveries[key] += 1
        if step not in kept[key] or t >= kept[key][step][0]:
            kept[key][step] = (t, value)
    out = {}
    for key, by_step in kept.items():
        steps = sorted(by_step)
        numbers = [(by_step[s][1], s) for s in steps if not math.isnan(by_step[s][1])]
        low = min(numbers, key=lambda vs: (vs[0], vs[1]))
        high = min(numbers, key=lambda vs: (-vs[0], vs[1]))
        lower_is_better = "loss" in key[1]
        out[key] = {
            "first_value": by_step[steps[0]][1], "last_value": by_step[steps[-1]][1],
            "min_value": low[0], "max_value": high[0], "step_of_min": low[1], "step_of_max": high[1],
            "first_step": steps[0], "last_step": steps[-1], "points": len(steps), "deliveries": deliveries[key],
            "best_value": low[0] if lower_is_better else high[0],
            "best_step": low[1] if lower_is_better else high[1],
        }
    return out


def test_metric_summary_equals_python_over_the_inserted_points(clickhouse_dsn: str) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    rng = random.Random(7)
    delivered: list[tuple[str, str, int, float, int]] = []
    batches = []
    for run in range(3):
        run_id = f"run-{run}"
        for metric in ("loss", "acc", "lr"):
            steps = list(range(0, 300, 1 + run))
            rng.shuffle(steps)  # arrival order is not step order
            for chunk in range(0, len(steps), 70):
                points = []
                for step in steps[chunk : chunk + 70]:
                    # Values in a few levels so that ties on min and max happen; NaN and inf as the SDK keeps them.
                    value = rng.choice([0.25, 0.5, 0.75, 1.0, 0.3 + 0.4 * rng.random()])
                    if step == 17:
                        value = math.nan
                    if metric == "acc" and step == 200:
                        value = math.inf
                    points.append((metric, step, value, T0 + step * 600_000_000))
                batches.append((run_id, points))
    for run_id, points in batches:
        sink.write(batch_of(("metric_steps", metric_steps(run_id, points))))
        delivered += [(run_id, *point) for point in points]
    for run_id, points in batches[::5]:  # redeliver some batches
        sink.write(batch_of(("metric_steps", metric_steps(run_id, points))))
        delivered += [(run_id, *point) for point in points]

    expected = expected_summary(delivered)
    result = client.query(f"SELECT * FROM {db}.metric_summary")
    got = {(row["run_id"], row["metric"]): row for row in (dict(zip(result.column_names, r, strict=True))
                                                           for r in result.result_rows)}
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        have = {name: got[key][name] for name in want}
        assert have == want, key
    # And the raw points with FINAL, as the comparison query reads them, agree with both.
    final = dict(((r, m), (v, n)) for r, m, v, n in client.query(
        f"SELECT run_id, metric, argMax(value, step), count() FROM {db}.metric_points FINAL GROUP BY run_id, metric"
    ).result_rows)
    assert final == {key: (want["last_value"], want["points"]) for key, want in expected.items()}


def test_gpu_usage_rollup_equals_python_over_the_inserted_samples(clickhouse_dsn: str) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    rng = random.Random(11)
    samples: dict[str, list[tuple[int, int, float, float]]] = {}
    for run in ("run-x", "run-y"):
        start = T0 + rng.randrange(0, 3600) * 1_000_000
        samples[run] = [
            (gpu, start + i * 5_000_000 + rng.randrange(0, 1000), float(rng.randrange(0, 101)),
             rng.randrange(1200, 2800) / 4)  # whole percents, quarter watts: exact in Float32
            for gpu in range(2) for i in range(1500)  # about two hours, three hour buckets
        ]
        for chunk in range(0, len(samples[run]), 400):
            sink.write(batch_of(("gpu_samples", gpu_event(run, "node-1", samples[run][chunk : chunk + 400]))))

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    by_run = {row[0]: row[1:] for row in client.query(
        f"SELECT run_id, gpus, gpu_hours, avg_utilization_pct, energy_wh, samples FROM {db}.gpu_usage_by_run"
    ).result_rows}
    hourly = {(row[0], row[1]): row[2:] for row in client.query(
        f"SELECT run_id, toUnixTimestamp(hour), gpus, gpu_seconds, avg_utilization_pct, energy_wh "
        f"FROM {db}.gpu_usage_hourly").result_rows}
    # GPU-hours count whole milliseconds (runstream.monitoring.gpu_hours); these samples are 5 s apart,
    # far below the gap cap, so a GPU's held time is its last sample minus its first.
    for run, rows in samples.items():
        per_gpu: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
        for gpu, t, util, power in rows:
            per_gpu[gpu].append((t // 1000, util, power))
        spans = {g: (max(t for t, _, _ in s) - min(t for t, _, _ in s)) / 1e3 for g, s in per_gpu.items()}
        energy = sum(mean([p for _, _, p in s]) * spans[g] / 3600 for g, s in per_gpu.items())
        gpus, gpu_hours, util, energy_wh, count = by_run[run]
        assert (gpus, count) == (2, len(rows))
        assert gpu_hours == pytest.approx(sum(spans.values()) / 3600, rel=1e-12)
        assert util == pytest.approx(mean([u for _, _, u, _ in rows]), rel=1e-12)
        assert energy_wh == pytest.approx(energy, rel=1e-9)
        # Each sample stands for the time since its GPU's previous sample, which may lie in the hour before:
        # the hours add up to the run.
        held: dict[tuple[int, int], float] = {}  # (gpu, time us) -> seconds since the GPU's previous sample
        for g, s in per_gpu.items():
            ordered = sorted(t for t, _, _ in s)
            held.update({(g, t): (t - prev) / 1e3 for prev, t in zip([ordered[0], *ordered], ordered, strict=False)})
        buckets: dict[int, list[tuple[int, int, float, float]]] = defaultdict(list)
        for sample in rows:
            buckets[sample[1] // HOUR_US * 3600].append(sample)
        assert {hour for r, hour in hourly if r == run} == set(buckets)
        assert sum(hourly[(run, hour)][1] for hour in buckets) == pytest.approx(gpu_hours * 3600, rel=1e-12)
        for hour, in_hour in buckets.items():
            gpus_h, seconds, util_h, energy_h = hourly[(run, hour)]
            groups: dict[int, list[tuple[float, float]]] = defaultdict(list)
            for gpu, t, _, power in in_hour:
                groups[gpu].append((held[(gpu, t // 1000)], power))
            assert gpus_h == len(groups)
            assert seconds == pytest.approx(sum(h for s in groups.values() for h, _ in s), rel=1e-12)
            assert util_h == pytest.approx(mean([u for _, _, u, _ in in_hour]), rel=1e-12)
            assert energy_h == pytest.approx(sum(mean([p for _, p in s]) * sum(h for h, _ in s) / 3600
                                                 for s in groups.values()), rel=1e-9)
    # The per-run GPU-hours are those of the comparison table and run_overview (the raw samples with FINAL).
    comparison = dict(client.query(
        f"SELECT run_id, gpu_seconds / 3600 FROM ({gpu_seconds_by_run_sql(f'{db}.gpu_samples')})").result_rows)
    assert comparison == pytest.approx({run: row[1] for run, row in by_run.items()}, rel=1e-12)


def assert_parses(client: Any, statement: str) -> str:
    """ClickHouse's own parser, through formatQuery: nothing is executed."""
    return str(client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0])


def test_cluster_ddl_is_accepted_by_the_clickhouse_parser(clickhouse_dsn: str) -> None:
    client, _ = connect(clickhouse_dsn)
    statements = cluster_ddl("runstream", "fleet-1", sample_ttl_days=14)
    with pytest.raises(Exception, match="Syntax error"):
        assert_parses(client, statements[1].replace("ORDER BY", "ORDER"))  # the check can fail
    for statement in statements:
        assert "ON CLUSTER `fleet-1`" in assert_parses(client, statement)
    text = "\n".join(statements)
    for table in TABLES:
        if table.sharding == EVERY_NODE:
            whole = next(s for s in statements if f"runstream.{table.name} ON CLUSTER" in s)
            assert f"ENGINE = Replicated{table.engine}('/clickhouse/tables/all/{{database}}/{{table}}', " \
                   "'{shard}-{replica}'" in whole
            assert f"{table.name}_local" not in text
            continue
        replicated = next(s for s in statements if f"runstream.{table.name}_local ON CLUSTER" in s)
        assert f"ENGINE = Replicated{table.engine}('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', " \
               "'{replica}'" in replicated
        key = DEFAULT_SHARDING_KEY if table.sharding == BY_RUN else table.sharding
        assert (f"CREATE TABLE IF NOT EXISTS runstream.{table.name} ON CLUSTER `fleet-1` "
                f"AS runstream.{table.name}_local\n"
                f"ENGINE = Distributed('fleet-1', 'runstream', '{table.name}_local', {key})") in text
        if table.sharding != BY_RUN:  # a table's own key may only use its sorting key, or twins part ways
            used = set(re.findall(r"\w+", key)) - {"cityHash64"}
            assert used <= set(re.findall(r"\w+", table.order_by)), (table.name, key)
    assert "FROM runstream.metric_points_local" in text and "TO runstream.metric_summary_states_local" in text
    assert "TTL toDateTime(time) + INTERVAL 14 DAY" in next(s for s in statements if "gpu_samples_local ON" in s)
    with pytest.raises(ValueError, match="cluster"):
        cluster_ddl("runstream", "x; DROP TABLE y")


def test_cluster_ddl_creates_every_table_and_view_of_the_single_server_migrations(clickhouse_dsn: str) -> None:
    client, database = connect(clickhouse_dsn)
    migrate(client, database)
    single = {
        name: engine for name, engine in client.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String} AND name != 'schema_migrations'",
            parameters={"db": database}).result_rows
    }
    assert {"drift_references", "prediction_features", "gpu_prices", "current_budgets"} <= set(single)
    created = re.findall(r"CREATE (TABLE|VIEW|MATERIALIZED VIEW) IF NOT EXISTS runstream\.(\w+) ON CLUSTER",
                         "\n".join(cluster_ddl("runstream", "fleet-1")))
    on_cluster = {name.removesuffix("_local") for _kind, name in created}
    assert on_cluster == set(single)
    kinds = {name.removesuffix("_local"): kind for kind, name in created}
    for name, engine in single.items():
        expected = {"View": "VIEW", "MaterializedView": "MATERIALIZED VIEW"}.get(engine, "TABLE")
        assert kinds[name] == expected, (name, engine)


def test_migrate_cluster_print_prints_on_cluster_ddl_and_connects_to_nothing(
    clickhouse_dsn: str, tmp_path: Path
) -> None:
    never = tmp_path / "never-created"
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "migrate", "--cluster", "x", "--print",
         "--clickhouse", f"chdb://{never}?database=tracking"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    statements = [s.strip() for s in done.stdout.split(";\n") if s.strip()]
    assert statements == [s.rstrip(";") for s in cluster_ddl("tracking", "x")]
    assert all("ON CLUSTER `x`" in s for s in statements)
    assert "CREATE TABLE IF NOT EXISTS tracking.metric_points_local ON CLUSTER `x`" in done.stdout
    assert not never.exists(), "--print does not connect"
    client, _ = connect(clickhouse_dsn)
    for statement in statements:
        assert_parses(client, statement)


def test_migrate_takes_the_cluster_from_the_environment_or_the_config_file_like_the_dsn(tmp_path: Path) -> None:
    """The cluster is a [clickhouse] setting (consumer/clickhouse_settings.py): --cluster > RUNSTREAM_CLUSTER >
    the config file's [clickhouse] cluster, as the DSN and its credentials."""
    never = tmp_path / "never-created"
    config = tmp_path / "runstream.toml"
    config.write_text('[clickhouse]\ncluster = "from-file"\n', encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if k not in ("RUNSTREAM_CLUSTER", "RUNSTREAM_CONFIG")}

    def printed(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runstream.cli", "migrate", "--print",
                               "--clickhouse", f"chdb://{never}?database=tracking", *args],
                              capture_output=True, text=True, check=False, timeout=120, env={**base, **env})

    def cluster_of(done: subprocess.CompletedProcess[str]) -> str | None:
        assert done.returncode == 0, done.stderr
        names = set(re.findall(r"ON CLUSTER `([^`]+)`", done.stdout))
        assert len(names) <= 1, names
        return names.pop() if names else None

    assert cluster_of(printed()) is None
    assert cluster_of(printed(RUNSTREAM_CLUSTER="from-env")) == "from-env"
    assert cluster_of(printed("--config", str(config))) == "from-file"
    assert cluster_of(printed("--config", str(config), RUNSTREAM_CLUSTER="from-env")) == "from-env"
    assert cluster_of(printed("--cluster", "from-option", "--config", str(config),
                              RUNSTREAM_CLUSTER="from-env")) == "from-option"
    refused = printed("--sharding-key", "rand()")
    assert refused.returncode == 2 and "--sharding-key: only meaningful with --cluster" in refused.stderr
    assert not never.exists(), "--print connects to nothing"


def test_migrate_command_sets_the_sample_ttl_and_prints_single_server_ddl(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}?database=tracking"

    def runstream(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "runstream.cli", *args], capture_output=True, text=True,
                              check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    applied = runstream("migrate", "--clickhouse", dsn, "--sample-ttl-days", "7")
    assert f"applied migrations {[m.version for m in MIGRATIONS]} to tracking" in applied
    assert "tracking is up to date" in runstream("migrate", "--clickhouse", dsn)
    created = runstream("query", "SELECT create_table_query FROM system.tables WHERE database = 'tracking' "
                        "AND name = 'gpu_samples'", "--format", "csv", "--clickhouse", dsn)
    assert "TTL toDateTime(time) + toIntervalDay(7)" in created
    printed = runstream("migrate", "--print", "--clickhouse", dsn)
    assert "CREATE TABLE IF NOT EXISTS tracking.metric_points (" in printed and "ON CLUSTER" not in printed
