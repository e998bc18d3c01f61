"""The `runstream` command as a user runs it: a separate process, real output."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runstream.consumer.dsn import parse_dsn, redact


def runstream(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "runstream.cli", *args], capture_output=True, text=True,
                          check=False, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"runstream {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def table_rows(output: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("("))
    return [line.split() for line in lines[start + 2 : end]]


def test_demo_prints_a_comparison_that_sql_agrees_with(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}"
    runs, steps = 4, 120
    done = runstream("demo", "--runs", str(runs), "--steps", str(steps), "--clickhouse", dsn,
                     "--spool", str(tmp_path / "sp"))
    rows = table_rows(done.stdout)
    assert len(rows) == runs + 2, "the fleet, a preempted and resumed run, and a fork of it"
    # per metric: the fleet's steps; the preempted run's attempt 1 (to 70%) and attempt 2 (from 50%); the fork's
    crash_at, checkpoint, fork_step = steps * 7 // 10, steps // 2, steps * 3 // 4
    logged = runs * steps + crash_at + (steps - checkpoint) + (steps - fork_step - 1)
    kept = runs * steps + steps + (steps - fork_step - 1)  # a step logged again by attempt 2 counts once
    assert f"{2 * logged} metric points stored" in done.stdout
    assert "attempt 2 resumed from the checkpoint" in done.stdout and f"forked at step {fork_step}" in done.stdout
    # The table's best final accuracy belongs to the run the query command finds.
    header = next(line for line in done.stdout.splitlines() if line.startswith("run "))
    assert "acc final" in header and "gpu_hours" in header
    best = runstream(
        "query", "SELECT r.run_name FROM runs AS r FINAL JOIN (SELECT run_id, argMax(value, step) AS acc FROM "
        "metric_points FINAL WHERE metric = 'acc' GROUP BY run_id) AS m USING run_id ORDER BY m.acc DESC LIMIT 1",
        "--format", "json", "--clickhouse", dsn,
    )
    best_name = json.loads(best.stdout)[0]["run_name"]
    assert best_name.startswith("lr0.001-"), "the simulated optimum is lr=1e-3"
    counts = runstream("query", "SELECT metric, count() AS n FROM metric_points FINAL GROUP BY metric ORDER BY metric",
                       "--format", "csv", "--clickhouse", dsn)
    assert list(csv.reader(io.StringIO(counts.stdout))) == [["metric", "n"], ["acc", str(kept)], ["loss", str(kept)]]
    superseded = runstream("query", "SELECT attempt, count() AS n FROM metric_points_superseded FINAL GROUP BY attempt",
                           "--format", "json", "--clickhouse", dsn)
    assert json.loads(superseded.stdout) == [{"attempt": 1, "n": 2 * (crash_at - checkpoint)}], "attempt 1 kept"

    again = runstream("ingest", str(tmp_path / "sp"), "--clickhouse", dsn)
    assert "ingested" in again.stdout
    recount = runstream("query", "SELECT count() AS n FROM metric_points FINAL", "--format", "json",
                        "--clickhouse", dsn)
    assert json.loads(recount.stdout) == [{"n": 2 * kept}], "ingesting the same spool twice stores nothing twice"


def test_help_explains_every_command() -> None:
    top = runstream("--help").stdout
    for command in ("demo", "consume", "ingest", "migrate", "query"):
        assert command in top
    consume = runstream("consume", "--help").stdout
    for option in ("--kafka", "--clickhouse", "--group", "--batch-max-points", "--batch-max-wait", "RUNSTREAM_KAFKA"):
        assert option in consume


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    done = runstream("query", "SELECT 1", "--clickhouse", "mysql://u:hunter2@db/x", check=False)
    assert done.returncode == 2
    assert "unsupported scheme 'mysql'" in done.stderr and "hunter2" not in done.stderr
    missing = runstream("ingest", str(tmp_path / "nope"), "--clickhouse", f"chdb://{tmp_path / 'c'}", check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_kafka = runstream("consume", "--clickhouse", f"chdb://{tmp_path / 'c'}", check=False)
    assert no_kafka.returncode != 0 and "--kafka" in no_kafka.stderr
    wrong_runs = runstream("demo", "--runs", "0", "--clickhouse", f"chdb://{tmp_path / 'c'}", check=False)
    assert wrong_runs.returncode == 2 and "--runs" in wrong_runs.stderr


def test_dsn_parsing_and_redaction() -> None:
    embedded = parse_dsn("chdb:///data/ch?database=team")
    assert (embedded.client_dsn, embedded.database, embedded.embedded) == ("chdb:///data/ch", "team", True)
    server = parse_dsn("https://alice:s3cret@ch.example:8443/metrics")
    assert server.database == "metrics" and not server.embedded
    assert "s3cret" not in repr(server)
    assert redact("https://alice:s3cret@ch.example:8443/metrics") == "https://alice:***@ch.example:8443/metrics"
    with pytest.raises(ValueError, match="invalid database name"):
        parse_dsn("chdb:///data/ch?database=x;DROP")
    with pytest.raises(ValueError, match="must be absolute"):
        parse_dsn("chdb://relative/path")
